"""The one training and evaluation loop shared by every method.

``fit`` trains a model with a loss on a loader for ``cfg.train.epochs`` epochs:

* SGD (momentum, optional Nesterov) or AdamW; the learning rate is set every step from
  :func:`lr_factor` (linear warm-up, then step decay at epoch milestones or cosine annealing);
* bf16 autocast on CUDA, fp32 on the CPU; gradient accumulation over micro-batches;
  channels_last for CNNs on CUDA; optional ``torch.compile``;
* deterministic: the global RNG is reseeded from (seed, epoch) at the start of every epoch and the
  loaders derive their order and augmentation from (seed, epoch), so a run resumed from the
  checkpoint of epoch e ends with the same weights and metrics as an uninterrupted run;
* a checkpoint (weights as safetensors, optimizer state, a JSON state file written last as the
  commit point) after every epoch; a non-finite loss stops training with
  :class:`NonFiniteLossError` and leaves the last good checkpoint in place;
* the running loss is accumulated on the device and read every ``NAN_CHECK_EVERY`` steps, so the
  inner loop does not wait on the host;
* one log line per epoch (tqdm bars only when ``interactive``), ``metrics.jsonl`` and TensorBoard;
* fused SGD/AdamW when the parameters are on CUDA; under torchrun (:mod:`ltr_core.dist`) the model runs
  wrapped in DDP (SyncBatchNorm on CUDA), ``predict`` gathers the ranks' shards, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import dist as _dist
from .config import RunConfig, config_hash
from .models import is_cnn
from .results import RunDir, atomic_write_text

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
    """bf16 on CUDA for ``auto``/``bf16``; None (fp32) on the CPU or for ``fp32``."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


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


def lr_factor(epoch: int, frac: float, optim_cfg, epochs: int) -> float:
    """Multiplier of the peak lr for the step that ends a fraction ``frac`` (0 < frac <= 1) into ``epoch``.

    With t = epoch + frac (training progress in epochs at the end of the step):
    warm-up: t / warmup_epochs while t < warmup_epochs (LDAM-DRW: lr * e / 5 in epochs e = 1..5);
    step:    gamma ** #{m in milestones : epoch >= m}, whole epochs (LDAM-DRW: x0.01 from epoch 160,
             x0.0001 from 180, 0-based);
    cosine:  r + (1 - r) * (1 + cos(pi * (t - w) / (E - w))) / 2 with r = min_lr / lr
             (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts).
    """
    t = epoch + frac
    w = optim_cfg.warmup_epochs
    if w > 0 and t < w:
        return t / w
    if optim_cfg.schedule == "step":
        passed = sum(1 for m in optim_cfg.lr_milestones if epoch >= m)
        return optim_cfg.lr_gamma**passed
    if optim_cfg.schedule == "cosine":
        r = optim_cfg.min_lr / optim_cfg.lr
        progress = min(1.0, (t - w) / max(epochs - w, 1e-8))
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def build_optimizer(params, optim_cfg) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters.

    ``params`` is an iterable of tensors, or of param-group dicts (``{"params": [...], "lr": ...,
    "weight_decay": ...}``: per-group settings override ``optim_cfg``; used for layer-wise lr decay,
    separate classifier/feature learning rates, no weight decay on norms). Frozen tensors
    (``requires_grad=False``) are left out; groups left empty are dropped.
    """
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    fused = _fused_kwargs(params)
    if optim_cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                               nesterov=optim_cfg.nesterov, weight_decay=optim_cfg.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=optim_cfg.lr, betas=(optim_cfg.adam_beta1, optim_cfg.adam_beta2),
                             weight_decay=optim_cfg.weight_decay, **fused)


def _fused_kwargs(params) -> dict:
    """``fused=True`` (one kernel for the whole update) when every trainable tensor is a floating CUDA
    tensor, i.e. the model was moved to the GPU before the optimizer was built (``fit`` does); else the
    default (foreach) implementation. The lr stays a Python float: only the model is compiled, never
    the optimizer, so the per-step lr change cannot trigger recompiles (pytorch#121857)."""
    tensors = [p for g in params for p in g["params"]] if isinstance(params[0], dict) else params
    ok = all(p.is_cuda and p.is_floating_point() for p in tensors)
    return {"fused": True} if ok else {}


def use_channels_last(model: nn.Module, setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda" and is_cnn(model))


# ----------------------------------------------------------------------------------------------
# checkpoints


class Checkpoint:
    """``<run_dir>/checkpoint/``: model.safetensors, optim.pt, state.json (written last)."""

    def __init__(self, run_dir: RunDir):
        self.dir = Path(run_dir.path) / "checkpoint"
        self.state_path = self.dir / "state.json"

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "model.safetensors.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, self.dir / "model.safetensors")
        tmp = self.dir / "optim.pt.tmp"
        torch.save(optimizer.state_dict(), tmp)
        os.replace(tmp, self.dir / "optim.pt")
        atomic_write_text(self.state_path, json.dumps(state, indent=1))

    def load_state(self) -> dict | None:
        if not self.state_path.is_file():
            return None
        return json.loads(self.state_path.read_text())

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device) -> None:
        model.load_state_dict(load_file(str(self.dir / "model.safetensors"), device=str(device)))
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(self.dir / "optim.pt", map_location=device, weights_only=True))


# ----------------------------------------------------------------------------------------------
# logging


class EpochLogger:
    """One record per epoch to metrics.jsonl, TensorBoard (optional) and one printed line."""

    def __init__(self, run_dir: RunDir, tensorboard: bool):
        self.run_dir = run_dir
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir.path) / "tb"))
            except ImportError:  # tensorboard is optional on bare GPU boxes
                self.writer = None

    def log(self, record: dict) -> None:
        self.run_dir.append_metrics(record)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch" and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
        )
        print(shown, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    history: list[dict] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.train_seconds > 0 else float("nan")


def _progress(loader, enabled: bool, epoch: int):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"epoch {epoch}", leave=False)


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
    optimizer = optimizer or build_optimizer(model.parameters(), cfg.optim)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    forward = _dist.wrap_model(model, device, find_unused=cfg.dist.dist_find_unused)
    forward = torch.compile(forward) if cfg.train.compile else forward
    main = _dist.is_main()  # only rank 0 writes metrics, TensorBoard and checkpoints
    ckpt = Checkpoint(run_dir)
    result = FitResult()
    chash = config_hash(cfg)
    start_epoch = 0
    state = ckpt.load_state()
    if state is not None:
        if state.get("config_hash") != chash:
            raise RuntimeError(
                f"{ckpt.dir} holds a checkpoint of a different config (hash {state.get('config_hash')}, "
                f"this run {chash}); delete the run directory or give the run another name"
            )
        ckpt.restore(model, optimizer, device)
        start_epoch = state["epoch"] + 1
        result.train_seconds, result.images = state["train_seconds"], state["images"]
        result.resumed_from = state["epoch"]
        if main:
            run_dir.truncate_metrics(state["epoch"])
            print(f"resuming {run_dir.path} after epoch {state['epoch']}", flush=True)
    logger = EpochLogger(run_dir, cfg.run.tensorboard and main)
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
                last = state["epoch"] if state else None
                where = f"the checkpoint of epoch {last} in {ckpt.dir}" if last is not None else "no checkpoint yet"
                raise NonFiniteLossError(
                    f"{err}; training stopped, kept {where}. Lower lr, add warm-up or grad_clip, "
                    f"or check the data, then run again to resume"
                ) from None
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
                     "images": result.images}
            if main:
                ckpt.save(model, optimizer, state)
            result.history.append(record)
            result.epochs_run += 1
    finally:
        logger.close()
    return result
