"""One run, end to end: run directory -> data -> model + loss -> ``engine.fit`` -> evaluation -> results.

Every method family calls :func:`run_supervised` with its own ``build(cfg, data) -> (model, loss)``
hook (and may post-process the final logits), so the run-directory contract, skipping of complete
runs, resuming of interrupted ones and the ``results.json`` schema live in one place.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from . import dist, engine, metrics
from .config import RunConfig, config_hash, to_flat
from .data import LTData, build_data, make_loader
from .results import RunDir, atomic_write_bytes, versions

BuildFn = Callable[[RunConfig, LTData], tuple[nn.Module, nn.Module]]


@dataclass
class Evaluation:
    """Logits, labels and the metrics dict of one evaluation pass."""

    epoch: int
    logits: torch.Tensor
    labels: torch.Tensor
    metrics: dict


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, data: LTData, cfg: RunConfig) -> dict:
    """The protocol's metrics (top-1, per-class, many/medium/few, ECE, ...) of a set of logits."""
    return metrics.evaluate(logits.numpy(), labels.numpy(), shot_group_counts(data, cfg),
                            many=cfg.data.shot_many, few=cfg.data.shot_few)


def shot_group_counts(data: LTData, cfg: RunConfig) -> np.ndarray:
    """The counts that define the shot groups: the training counts n_c, or with ``split_from_ir`` > 0
    the counts of the same profile at that IR (PEL/LIFT take CIFAR-100-LT groups from IR 100 for every IR)."""
    ir = cfg.data.split_from_ir
    if not ir:
        return data.class_counts
    from .data import DataError, lt_counts

    n_max = data.provenance.get("n_max")
    if not n_max:
        raise DataError(f"split_from_ir={ir} needs a dataset built from a long-tail profile (CIFAR-LT, digits-LT); "
                        f"{data.name} has fixed split lists: set split_from_ir to 0")
    profile = data.provenance.get("lt_profile", cfg.data.lt_profile)
    return np.asarray(lt_counts(int(n_max), data.num_classes, float(ir), profile), dtype=np.int64)


def predict_split(cfg: RunConfig, data: LTData, model: nn.Module, device: torch.device, split: str, *,
                  channels_last: bool = False, fn: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (default: logits) and labels of ``model`` over ``data.split(split)`` (eval transform, in order)."""
    loader = make_loader(data, split, train=False, batch_size=cfg.train.eval_batch_size, device=device,
                         num_workers=cfg.data.num_workers)
    return engine.predict(model, loader, device, cfg.train.precision, channels_last, fn=fn)


def add_open_set_metrics(cfg: RunConfig, data: LTData, ev: Evaluation, open_logits: torch.Tensor,
                         run_dir: RunDir | None = None) -> dict:
    """Add the open-set metrics (methods.md §1.5, :func:`ltr_core.metrics.open_set_metrics`: f_measure
    post- and pre-fix at theta = open_theta (0.1), open-set many/medium/few after thresholding, the theta sweep) of the
    evaluated known samples ``ev`` plus ``open_logits`` to ``ev.metrics`` (closed-set numbers untouched).

    Every method family calls it when ``data.open`` exists (run_supervised does); with
    ``cfg.run.save_logits`` the open logits go to ``<run_dir>/logits_open.npz``.
    """
    m = metrics.open_set_metrics(ev.logits.numpy(), ev.labels.numpy(), open_logits.numpy(),
                                 shot_group_counts(data, cfg), theta=cfg.data.open_theta, many=cfg.data.shot_many,
                                 few=cfg.data.shot_few)
    m["open_known_split"] = cfg.data.eval_split
    ev.metrics.update(m)
    if run_dir is not None and cfg.run.save_logits:
        buf = io.BytesIO()
        np.savez(buf, logits=open_logits.numpy().astype(np.float32), labels=np.full(len(open_logits), -1, np.int64),
                 split=np.array("open"))
        atomic_write_bytes(Path(run_dir.path) / "logits_open.npz", buf.getvalue())
    return m


class RunDirConflict(RuntimeError):
    """The run directory holds a run of a different configuration."""


def prepare_run_dir(cfg: RunConfig) -> tuple[RunDir, str]:
    """Create the run directory and write config.yaml; refuse a directory holding another config."""
    run_dir = RunDir(cfg.run_path())
    chash = config_hash(cfg)
    old = run_dir.read_config()
    if old and old.get("config_hash") != chash:
        raise RunDirConflict(
            f"{run_dir.path} holds a run of a different config (hash {old.get('config_hash')}, this run {chash}); "
            f"give this run another name, or re-run with `ltr run --force` (moves the old directory aside)"
        )
    Path(run_dir.path).mkdir(parents=True, exist_ok=True)
    if dist.is_main():  # DDP: rank 0 writes the run directory
        run_dir.write_config(to_flat(cfg), chash, cfg.run_id)
    return run_dir, chash


def completed_results(cfg: RunConfig) -> dict | None:
    """results.json of a complete run of this exact config (the run is then skipped), else None."""
    existing, chash = RunDir(cfg.run_path()), config_hash(cfg)
    if existing.is_complete(chash):
        print(f"skip: {existing.path} is complete (config {chash})", flush=True)
        return existing.read_results()
    return None


def begin_run(cfg: RunConfig, data: LTData | None = None,
              load: Callable[[], LTData] | None = None) -> tuple[RunDir, str, torch.device, LTData]:
    """Open the run directory (config.yaml), pick the device, build the data under the run's seed
    (``data`` as given, else ``load()``, else ``build_data(cfg.data)``), record split_indices.json,
    and re-seed so that model initialisation does not depend on how the data was built."""
    run_dir, chash = prepare_run_dir(cfg)
    device = engine.resolve_device(cfg.run.device)
    engine.seed_everything(cfg.run.seed)
    if data is None:
        data = load() if load is not None else build_data(cfg.data)
    if dist.is_main():
        run_dir.write_json("split_indices.json", data.provenance)
    engine.seed_everything(cfg.run.seed)
    return run_dir, chash, device, data


def _log_scalars(m: dict) -> dict:
    keys = ("top1", "mean_per_class", "many", "medium", "few", "ece")
    return {k: (float(m[k]) if m.get(k) is not None else float("nan")) for k in keys}


def run_supervised(cfg: RunConfig, build: BuildFn, *, data: LTData | None = None,
                   postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   stage: str | None = None,
                   make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
                   batch_transform: Callable | None = None, extra: dict | None = None) -> dict:
    """Train ``build(cfg, data)`` with the shared engine and write the complete run directory.

    A run directory that already holds a complete ``results.json`` for the same config hash is not
    re-run: its results are returned. An interrupted one resumes from its last checkpoint.
    ``stage`` marks an intermediate stage of a multi-stage run (see :mod:`ltr_core.stages`).
    ``make_optimizer(model)`` replaces the default optimizer (param groups: layer-wise lr decay, no
    weight decay on norms); ``batch_transform`` see :func:`ltr_core.engine.train_one_epoch`;
    ``extra`` adds top-level keys to results.json (see :func:`write_run_results`).
    """
    done = completed_results(cfg)
    if done is not None:
        return done
    run_dir, chash, device, data = begin_run(cfg, data)
    model, criterion = build(cfg, data)
    train_loader = make_loader(data, "train", train=True, batch_size=cfg.train.batch_size, device=device,
                               sampler=cfg.data.sampler, seed=cfg.run.seed, num_workers=cfg.data.num_workers,
                               augment=cfg.data.augment, crop_padding=cfg.data.crop_padding, drop_last=False,
                               epochs=cfg.train.epochs, augment_mode=cfg.data.augment_mode,
                               rrc_scale_min=cfg.data.rrc_scale_min)
    eval_loader = make_loader(data, cfg.data.eval_split, train=False, batch_size=cfg.train.eval_batch_size,
                              device=device, num_workers=cfg.data.num_workers)
    channels_last = engine.use_channels_last(model, cfg.model.channels_last, device)
    last: list[Evaluation] = []

    def evaluate(epoch: int) -> dict:
        logits, labels = engine.predict(model, eval_loader, device, cfg.train.precision, channels_last)
        if postprocess is not None:
            logits = postprocess(logits)
        last[:] = [Evaluation(epoch, logits, labels, evaluate_logits(logits, labels, data, cfg))]
        return _log_scalars(last[0].metrics)

    optimizer = make_optimizer(model) if make_optimizer is not None else None
    fit = engine.fit(model, criterion, train_loader, cfg=cfg, run_dir=run_dir, device=device, evaluate=evaluate,
                     optimizer=optimizer, batch_transform=batch_transform)
    final_epoch = cfg.train.epochs - 1
    if not last or last[0].epoch != final_epoch:
        evaluate(final_epoch)
    if data.open is not None:  # open-set protocol (OLTR) for every method on a dataset with an open split
        open_logits, _ = predict_split(cfg, data, model, device, "open", channels_last=channels_last)
        add_open_set_metrics(cfg, data, last[0], postprocess(open_logits) if postprocess else open_logits, run_dir)
    return write_run_results(cfg, run_dir, chash, data, model, last[0], fit, device, stage=stage, extra=extra)


def write_run_results(cfg: RunConfig, run_dir: RunDir, chash: str, data: LTData, model: nn.Module,
                      ev: Evaluation, fit: engine.FitResult, device: torch.device, *,
                      stage: str | None = None, extra: dict | None = None) -> dict:
    """Weights, logits, per_class.csv and (last, atomically) results.json.

    ``stage`` marks the results of an intermediate stage (left out of suite tables); ``extra`` adds
    method-specific top-level keys (e.g. the selected τ, trainable-parameter counts).
    Under DDP only rank 0 writes; the other ranks get the metrics without touching files.
    """
    if not dist.is_main():
        return {"run_id": cfg.run_id, "config_hash": chash, "metrics": dict(ev.metrics), "status": "not written (rank > 0)"}
    path = Path(run_dir.path)
    tmp = path / "model.safetensors.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path / "model.safetensors")
    if cfg.run.save_logits:
        run_dir.save_logits(ev.logits.numpy(), ev.labels.numpy(), cfg.data.eval_split)
    m = ev.metrics
    eval_counts = np.bincount(ev.labels.numpy()[ev.labels.numpy() >= 0], minlength=data.num_classes)
    run_dir.write_per_class(data.class_names, data.class_counts, eval_counts, m["per_class"], m["shot_groups"])
    results = {
        "run_id": cfg.run_id,
        "name": cfg.run.name or "default",
        "dataset": cfg.data.dataset,
        "method": cfg.run.method,
        "loss": cfg.loss.loss,
        "model": cfg.model.model,
        "seed": cfg.run.seed,
        "config_hash": chash,
        "eval_split": cfg.data.eval_split,
        "selection": "last epoch",
        "epochs": cfg.train.epochs,
        "metrics": {k: v for k, v in m.items() if k not in ("per_class", "shot_groups")},
        "class_counts": [int(c) for c in data.class_counts],
        "per_class": m["per_class"],
        "shot_groups": m["shot_groups"],
        "train_seconds": round(fit.train_seconds, 3),
        "images_per_second": fit.images_per_second,
        "resumed_from_epoch": fit.resumed_from,
        "device": _device_name(device),
        "processes": dist.world_size(),  # DDP ranks that trained the run (1: a single process)
        "versions": versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "complete",
    }
    if stage:
        results["stage"] = stage
    if extra:
        results.update(extra)
    run_dir.write_results(results)
    return results


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
