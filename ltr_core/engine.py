"""The one training and evaluation loop shared by every method.

``fit`` trains a model with a loss on a loader for ``cfg.train.epochs`` epochs:

* SGD (momentum, optional Nesterov) or AdamW; the learning rate is set every step from
  :func:`lr_factor` (linear warm-up, then step decay at epoch milestones or cosine annealing;
  optimizers and schedules by name: :mod:`ltr_core.optim`);
* bf16 autocast on CUDA (and on CPUs with native bf16 run on their own kernels), else fp32; gradient
  accumulation over micro-batches;
  channels_last for CNNs on CUDA; optional ``torch.compile`` (``compile_mode``), cuDNN autotuning;
* deterministic: the global RNG is reseeded from (seed, epoch) at the start of every epoch and the
  loaders derive their order and augmentation from (seed, epoch), so a run resumed from the
  checkpoint of epoch e ends with the same weights and metrics as an uninterrupted run;
* a crash-consistent checkpoint (:mod:`ltr_core.checkpoint`) every ``checkpoint_every`` epochs,
  optionally from a background thread; a non-finite loss stops training with
  :class:`NonFiniteLossError`, keeps the last good checkpoint and says how to go on (``resume_from``);
* the running loss is accumulated on the device and read every ``NAN_CHECK_EVERY`` steps, so the
  inner loop does not wait on the host;
* one log line per epoch (tqdm bars only when ``interactive``), ``metrics.jsonl`` and TensorBoard;
* fused SGD/AdamW when the parameters are on CUDA; under torchrun (:mod:`ltr_core.dist`) the model runs
  wrapped in DDP (SyncBatchNorm on CUDA), ``predict`` gathers the ranks' shards, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import dist as _dist
from .config import RunConfig, config_hash
from .models import is_cnn
from .epochlog import EpochLogger, _progress, tb_tag  # noqa: F401 (the per-epoch log; engine.EpochLogger)
from .checkpoint import AsyncCheckpointWriter, Checkpoint, CheckpointError  # noqa: F401 - engine.Checkpoint
from .optim import build_optimizer, lr_factor, model_param_groups
from .results import RunDir

NAN_CHECK_EVERY = 25


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was asked for but CUDA is not available; use device=cpu or auto")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``: None (fp32) for ``fp32``, bf16 for ``bf16``;
    ``auto`` is bf16 on CUDA, and on a CPU bf16 only where :func:`cpu_auto_bf16` (native bf16 arithmetic
    and the native kernels that use it), fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "auto" and device.type != "cuda" and not cpu_auto_bf16():
        return None
    return torch.bfloat16


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX-512 BF16 or AMX tiles)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def cpu_auto_bf16() -> bool:
    """Whether ``precision: auto`` trains a CPU run under bf16 autocast: on a CPU with native bf16
    (:func:`cpu_has_native_bf16`) running its own kernels (``LTR_NATIVE_ISA=1``; the default AVX2 pins
    emulate bf16, ~15x slower than fp32). Measured before it became the default (figures/cifar10_lt_bf16_cpu8/):
    CE and the LA loss on CIFAR-10-LT IR 100, 3 seeds each, bf16 against fp32 within seed noise, and ~2x faster (``ltr bench
    --variants``, figures/perf/variants.md). Such a run records ``cpu_autocast: bf16`` in its inputs."""
    from . import numerics

    return numerics.native_isa_requested() and cpu_has_native_bf16()


def compiled(forward, cfg: RunConfig):
    """``torch.compile`` of the forward (one graph per batch shape; ``compile_mode`` reduce-overhead =
    CUDA graphs), or ``forward`` itself when ``compile`` is off."""
    if not cfg.train.compile:
        return forward
    mode = None if cfg.train.compile_mode == "default" else cfg.train.compile_mode
    return torch.compile(forward, mode=mode, dynamic=False)


def set_cudnn_benchmark(cfg: RunConfig, device: torch.device) -> bool:
    """cuDNN autotuning: ``auto`` turns it on for CUDA runs with static shapes (``drop_last``)."""
    on = cfg.train.cudnn_benchmark == "on" or (cfg.train.cudnn_benchmark == "auto" and cfg.train.drop_last)
    on = on and device.type == "cuda"
    torch.backends.cudnn.benchmark = on
    return on


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The global seed used for epoch ``epoch`` (dropout, drop-path, any global-RNG draw)."""
    return seed * 1_000_003 + epoch + 1


def use_channels_last(model: nn.Module, setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda" and is_cnn(model))


# ----------------------------------------------------------------------------------------------
# resume


def _resume(ckpt: Checkpoint, model, optimizer, device, chash: str, cfg: RunConfig,
            result: FitResult) -> tuple[dict | None, bool]:
    """Restore this run's own checkpoint, else (``resume_from``) another run's last good one; returns the
    state restored (None: start from scratch) and whether it is this run's own. The peak lrs stay this
    run's (``resume_from`` with ``--set lr=...`` after a NaN stop is the point)."""
    base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    own = ckpt.load_state()
    if own is not None:
        if own.get("config_hash") != chash:
            raise RuntimeError(f"{ckpt.dir} holds a checkpoint of a different config (hash {own.get('config_hash')}, "
                               f"this run {chash}); delete the run directory or give the run another name")
        state = ckpt.restore(model, optimizer, device)
        result.origin = state.get("origin")
        print(f"resuming {ckpt.dir.parent} after epoch {state['epoch']}", flush=True)
    elif cfg.run.resume_from:
        src = Checkpoint(RunDir(cfg.run.resume_from))
        if src.load_state() is None:
            raise CheckpointError(f"resume_from={cfg.run.resume_from!r} has no checkpoint ({src.dir}); "
                                  f"name the run directory of the run that stopped")
        state = src.restore(model, optimizer, device)
        result.origin = {"run": str(cfg.run.resume_from), "epoch": state["epoch"],
                         "config_hash": state.get("config_hash")}
        print(f"starting from epoch {state['epoch']} of {cfg.run.resume_from} ({src.used})", flush=True)
    else:
        return None, False
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["initial_lr"] = base
    result.train_seconds, result.images = state["train_seconds"], state["images"]
    result.resumed_from = state["epoch"]
    return state, own is not None


def _recovery_advice(ckpt: Checkpoint, state: dict | None, run_dir: RunDir) -> str:
    """What to do after a non-finite loss: a path that works (a changed lr is another config, so the run
    itself cannot be resumed with it; ``resume_from`` starts a new run from the last good checkpoint)."""
    if state is None:
        return ("No checkpoint was written yet: lower lr, add warm-up or grad_clip, or check the data, and run "
                "again (e.g. `ltr run PARAMS --set lr=0.05`).")
    return (f"The checkpoint of epoch {state['epoch']} is kept in {ckpt.dir}. To go on from it with other "
            f"settings: `ltr run PARAMS --set lr=<lower> --set resume_from={run_dir.path}` (a new run that starts "
            f"from that checkpoint and records its origin); or add warm-up/grad_clip the same way.")


# ----------------------------------------------------------------------------------------------
# logging


# ----------------------------------------------------------------------------------------------
# loops


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, precision: str = "auto",
            channels_last: bool = False, fn: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (float32, CPU) and labels (CPU) over a loader, ``model`` in eval mode.

    The outputs are ``fn(x)`` (default ``model(x)``, the logits); e.g. ``fn=model.features`` gives
    the pooled features (what :mod:`ltr_core.features` caches).
    """
    was_training = model.training
    model.eval()
    fn = model if fn is None else fn
    dtype = autocast_dtype(precision, device)
    logits, labels = [], []
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            logits.append(fn(x).float())
        labels.append(y)
    model.train(was_training)
    out, lab = torch.cat(logits), torch.cat(labels)
    if getattr(loader, "shard", None):  # a DDP rank shard (make_loader): gather all ranks, original order
        out, lab = _dist.gather_strided(out, lab.to(out.device))
    return out.cpu(), lab.cpu()


@dataclass
class FitResult:
    """What ``fit`` reports: wall time and images of the training passes only (no evaluation)."""

    train_seconds: float = 0.0
    images: int = 0
    epochs_run: int = 0
    resumed_from: int | None = None
    origin: dict | None = None  # resume_from: the run and epoch whose checkpoint started this run
    wall_seconds: float = 0.0  # this fit call end to end: training, evaluation and checkpoints
    history: list[dict] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.train_seconds > 0 else float("nan")


def train_one_epoch(model, criterion, loader, optimizer, *, cfg: RunConfig, epoch: int, device: torch.device,
                    channels_last: bool, forward: Callable | None = None,
                    batch_transform: Callable | None = None,
                    lr_schedule: Callable[[int, float], float] | None = None) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean loss, images seen). Raises NonFiniteLossError.

    ``lr_schedule(epoch, frac) -> factor`` replaces :func:`lr_factor` (default) as the multiplier of
    each group's peak lr at the step ending ``frac`` into ``epoch`` (e.g. epoch-wise cosine stepped
    before the epoch, as classifier-balancing's stage 2 does).

    ``batch_transform(x, y) -> (x, t)`` runs on the device before the forward pass (mixup/cutmix with
    soft targets t [B, C], RandAugment on the device, ...); the loss is ``criterion(forward(x), t)``.
    """
    model.train()
    forward = model if forward is None else forward
    dtype = autocast_dtype(cfg.train.precision, device)
    steps = len(loader)
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    loss_sum = torch.zeros((), device=device)
    images = 0
    accum = cfg.train.accum_steps
    for i, (x, y) in enumerate(_progress(loader, cfg.run.interactive, epoch)):
        if i >= steps:
            break
        factor = (lr_schedule(epoch, (i + 1) / steps) if lr_schedule is not None
                  else lr_factor(epoch, (i + 1) / steps, cfg.optim, cfg.train.epochs))
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor
        if batch_transform is not None:
            x, y = batch_transform(x, y)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for xs, ys in zip(x.chunk(accum), y.chunk(accum)):
            with autocast(device, dtype):
                loss = criterion(forward(xs), ys)
            (loss * xs.shape[0] / x.shape[0]).backward()
            loss_sum += loss.detach() * xs.shape[0]
        if cfg.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        images += x.shape[0]
        if (i + 1) % NAN_CHECK_EVERY == 0 and not _dist.all_finite(loss_sum):  # all ranks stop together
            raise NonFiniteLossError(f"loss became non-finite at epoch {epoch}, step {i + 1}")
    if _dist.is_distributed():  # DDP: loss and images over all ranks (one all-reduce per epoch)
        loss_sum = _dist.all_reduce_sum(loss_sum)
        images = int(_dist.all_reduce_sum(torch.tensor(images, device=device)).item())
    mean_loss = (loss_sum / max(images, 1)).item()
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"loss became non-finite during epoch {epoch}")
    return mean_loss, images


def fit(model: nn.Module, criterion: nn.Module, train_loader, *, cfg: RunConfig, run_dir: RunDir,
        device: torch.device, evaluate: Callable[[int], dict] | None = None,
        optimizer: torch.optim.Optimizer | None = None, batch_transform: Callable | None = None,
        lr_schedule: Callable[[int, float], float] | None = None) -> FitResult:
    """Train for ``cfg.train.epochs`` epochs, checkpointing each epoch and resuming if a checkpoint exists.

    ``evaluate(epoch)`` returns scalar metrics to log (called every ``eval_every`` epochs and after the
    last one). ``optimizer`` replaces the default one (param groups, frozen parts); ``batch_transform``
    and ``lr_schedule`` see :func:`train_one_epoch`. Everything the loss keeps as state must live in
    ``model`` (it is what the checkpoint saves). The model is left with the final weights.
    """
    channels_last = use_channels_last(model, cfg.model.channels_last, device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # DDP (ltr_core.dist; identity for one process): SyncBatchNorm on CUDA, then the DDP wrapper is what
    # runs forward/backward (gradient all-reduce); ``model`` stays the plain module that is saved
    _dist.convert_sync_bn(model, device, cfg.dist.dist_sync_bn)
    optimizer = optimizer or build_optimizer(model_param_groups(model, cfg.optim), cfg.optim)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    forward = _dist.wrap_model(model, device, find_unused=cfg.dist.dist_find_unused)
    forward = compiled(forward, cfg)
    set_cudnn_benchmark(cfg, device)
    main = _dist.is_main()  # only rank 0 writes metrics, TensorBoard and checkpoints
    ckpt = Checkpoint(run_dir)
    result = FitResult()
    chash = config_hash(cfg)
    state, own = _resume(ckpt, model, optimizer, device, chash, cfg, result)
    start_epoch = state["epoch"] + 1 if state else 0
    if main:  # records past the restored epoch (or all, on a fresh start) were written by a killed attempt
        run_dir.truncate_metrics(state["epoch"] if own else -1)
    logger = EpochLogger(run_dir, cfg.run.tensorboard and main)
    writer = AsyncCheckpointWriter(ckpt) if cfg.train.checkpoint_async else ckpt
    fit_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            torch.manual_seed(_dist.rank_seed(epoch_seed(cfg.run.seed, epoch)))
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            if hasattr(criterion, "set_epoch"):
                criterion.set_epoch(epoch)
            t0 = time.perf_counter()
            try:
                loss, images = train_one_epoch(model, criterion, train_loader, optimizer, cfg=cfg, epoch=epoch,
                                               device=device, channels_last=channels_last, forward=forward,
                                               batch_transform=batch_transform, lr_schedule=lr_schedule)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(f"{err}; training stopped. {_recovery_advice(ckpt, state, run_dir)}") from None
            _dist.sync_buffers(model)  # DDP: rank 0's BN statistics for evaluation and the checkpoint
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            result.train_seconds += seconds
            result.images += images
            record = {"epoch": epoch, "train_loss": loss, "lr": optimizer.param_groups[0]["lr"],
                      "epoch_seconds": round(seconds, 3), "images_per_second": images / seconds}
            last_epoch = epoch == cfg.train.epochs - 1
            if evaluate is not None and (last_epoch or (cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0)):
                record.update(evaluate(epoch))
            if main:
                logger.log(record)  # before the checkpoint: a resume truncates records past its epoch
            state = {"epoch": epoch, "config_hash": chash, "train_seconds": result.train_seconds,
                     "images": result.images, "origin": result.origin}
            if main and (last_epoch or (epoch + 1) % cfg.train.checkpoint_every == 0):
                writer.save(model, optimizer, state)
            result.history.append(record)
            result.epochs_run += 1
    finally:
        if writer is not ckpt:
            writer.close()
        logger.close()
    result.wall_seconds = time.perf_counter() - fit_start
    return result
