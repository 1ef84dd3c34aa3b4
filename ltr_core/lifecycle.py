"""The life of a run directory: skip when complete, claim, record inputs, write results last, release.

* :func:`completed_results` — a run is skipped only when ``results.json`` is complete for the same config
  hash *and* the same inputs digest (:func:`ltr_core.identity.run_inputs`: data pixels / manifests,
  split-list sha256, the ``init_run`` stage-1 run's config hash and weights sha256, family extras); a
  stale complete run is archived (:func:`ltr_core.results.archive_run_dir`) and run again.
* :func:`begin_run` — claims the directory (:func:`prepare_run_dir`: the fcntl run lock, temporaries of a
  killed writer removed, config.yaml), builds the data under the run's seed, records split_indices.json
  and inputs.json (a partial run made from other inputs is archived first: its checkpoint is never
  resumed), pins the numerics (:func:`ltr_core.numerics.pin_threads`).
* :func:`write_run_results` — model.safetensors, logits.npz, per_class.csv, then (last, atomically)
  results.json with ``inputs``, ``numerics`` and ``resumed_from_run``; releases the lock, unpins threads.
* :func:`end_run` — the same release when a run raises (``run_family`` calls it in ``finally``).

:func:`ltr_core.study.run_family` is the one caller for every method family.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import dist, engine, identity, numerics
from .config import RunConfig, config_hash, to_flat
from .data import LTData, build_data
from .evaluation import Evaluation, SingleLabel
from .results import RunDir, acquire_run_lock, archive_run_dir, release_run_lock, versions
from .checkpoint import Checkpoint
from .stages import format_ref, resolve_run, save_weights

ExtraInputs = dict | Callable[[LTData], dict] | None


@dataclass
class RunContext:
    """A claimed run: its config, data, device, directory, config hash and inputs record."""

    cfg: RunConfig
    data: LTData
    device: torch.device
    run_dir: RunDir
    chash: str
    inputs: dict | None = None


class RunDirConflict(RuntimeError):
    """The run directory holds a run of a different configuration."""


def prepare_run_dir(cfg: RunConfig) -> tuple[RunDir, str]:
    """Claim the run directory (one writer: :func:`ltr_core.results.acquire_run_lock`), write config.yaml;
    refuse a directory holding another config."""
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
        acquire_run_lock(run_dir.path)
        remove_temporaries(run_dir.path)
        run_dir.write_config(to_flat(cfg), chash, cfg.run_id)
    return run_dir, chash


def remove_temporaries(path: Path) -> None:
    """Delete what a killed writer left half-written under ``path`` (``.<name>.*.tmp`` files, temporary
    checkpoint directories); only called while holding the run's lock, so nobody else is writing them."""
    for p in sorted(Path(path).rglob(".*.tmp*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def init_file(cfg: RunConfig) -> Path | None:
    """``init_run`` when it names a weights file rather than a run (LiVT: an encoder .safetensors)."""
    if not cfg.run.init_run:
        return None
    path = Path(format_ref(cfg.run.init_run, cfg)).expanduser()
    return path if path.is_file() else None


def init_run_dir(cfg: RunConfig) -> RunDir | None:
    """The stage-1 run named by ``init_run`` (None when the run starts from scratch or from a weights file)."""
    if not cfg.run.init_run or init_file(cfg) is not None:
        return None
    return resolve_run(cfg.run.init_run, cfg)


def inputs_of(cfg: RunConfig, data: LTData, extra: ExtraInputs = None) -> dict:
    """The inputs record (:func:`ltr_core.identity.run_inputs`) of this run on ``data``; ``extra`` is a dict
    or a function of the data (a family's other inputs, e.g. VL-LTR's class-text files).

    A run compiled for the CPU also records its intra-op thread count: inductor's generated CPU
    reductions split by thread, so (unlike the eager kernels, :mod:`ltr_core.numerics`) their
    rounding depends on it. A CPU run on other kernels than the default AVX2 ones (``LTR_NATIVE_ISA=1``)
    records them (:func:`ltr_core.numerics.kernels_identity`), and ``cpu_autocast: bf16`` where ``precision:
    auto`` resolves to bf16 there (:func:`ltr_core.engine.cpu_auto_bf16`)."""
    extra = dict((extra(data) if callable(extra) else extra) or {})
    device = engine.resolve_device(cfg.run.device)
    if device.type == "cpu":
        if cfg.train.compile:
            extra["compiled_cpu_threads"] = torch.get_num_threads()
        extra.update(numerics.kernels_identity())
        if cfg.train.precision == "auto" and engine.autocast_dtype("auto", device) is not None:
            extra["cpu_autocast"] = "bf16"  # auto resolved to bf16 here (native kernels, native bf16)
    weights = init_file(cfg)
    if weights is not None:
        extra["init_file"] = {"path": str(weights), "sha256": identity.sha256_file(weights)}
    return identity.run_inputs(data, init_run_dir(cfg), extra or None)


def completed_results(cfg: RunConfig, data: LTData | None = None, load: Callable[[], LTData] | None = None,
                      extra_inputs: ExtraInputs = None) -> dict | None:
    """results.json of a complete run of this exact config *and inputs* (the run is then skipped), else None.

    A complete run of the same config whose recorded inputs differ (other data, split lists, stage-1
    run) is stale: it is moved to ``<results_root>/.archive/`` with a message saying what changed, and
    None is returned so that it is run again. The data is built only when a complete run exists.
    """
    existing, chash = RunDir(cfg.run_path()), config_hash(cfg)
    if not existing.is_complete(chash):
        return None
    res = existing.read_results()
    if data is None:
        engine.seed_everything(cfg.run.seed)
        data = load() if load is not None else build_data(cfg.data)
    now = inputs_of(cfg, data, extra_inputs)
    if (res.get("inputs") or {}).get("digest") == now["digest"]:
        print(f"skip: {existing.path} is complete (config {chash})", flush=True)
        return res
    moved = archive_run_dir(existing.path, cfg.run.results_root)
    print(f"stale: {existing.path} was made from other inputs ({identity.describe_change(res.get('inputs'), now)}); "
          f"running it again (the old run is kept in {moved})", flush=True)
    return None


class ResumableElsewhere(RuntimeError):
    """A partial run whose checkpoint this process would compute differently only because of the machine's
    settings (threads of a compiled CPU run, CPU kernels): resumable with those settings, so not dropped."""


def refuse_to_drop_a_resumable_run(run_dir: RunDir, recorded: dict, inputs: dict) -> None:
    """Raise :class:`ResumableElsewhere` (releasing the lock) when ``run_dir`` holds a checkpoint of inputs
    that differ from ``inputs`` only in the machine's settings: starting afresh would throw away hours a
    changed environment variable keeps. ``ltr run --force`` starts afresh (the old run moved aside)."""
    how = identity.machine_change(recorded, inputs)
    epoch = (Checkpoint(run_dir).load_state() or {}).get("epoch")
    if how is None or epoch is None:
        return
    release_run_lock(run_dir.path)
    raise ResumableElsewhere(
        f"{run_dir.path} holds a partial run (checkpoint after epoch {epoch}) computed with {how}. "
        f"Resume it with those settings; or pass --force to start afresh here (the partial run is moved "
        f"aside, not deleted)")


def begin_run(cfg: RunConfig, data: LTData | None = None, load: Callable[[], LTData] | None = None,
              extra_inputs: ExtraInputs = None) -> RunContext:
    """Open the run directory (config.yaml), pick the device, build the data under the run's seed
    (``data`` as given, else ``load()``, else ``build_data(cfg.data)``), record split_indices.json and
    inputs.json, pin the numerics (:func:`ltr_core.numerics.pin_threads`), and re-seed so that model
    initialisation does not depend on how the data was built. A partial run (checkpoint) made from
    other inputs is moved aside first: its checkpoint is never resumed."""
    run_dir, chash = prepare_run_dir(cfg)
    device = engine.resolve_device(cfg.run.device)
    engine.seed_everything(cfg.run.seed)
    if data is None:
        data = load() if load is not None else build_data(cfg.data)
    inputs = None
    if dist.is_main():
        inputs = inputs_of(cfg, data, extra_inputs)
        recorded = run_dir.read_json("inputs.json") if (run_dir.path / "inputs.json").is_file() else None
        if recorded is not None and recorded.get("digest") != inputs["digest"]:
            refuse_to_drop_a_resumable_run(run_dir, recorded, inputs)
            release_run_lock(run_dir.path)
            moved = archive_run_dir(run_dir.path, cfg.run.results_root)
            print(f"stale partial run: {run_dir.path} was started from other inputs "
                  f"({identity.describe_change(recorded, inputs)}); starting afresh (old files in {moved})", flush=True)
            run_dir, chash = prepare_run_dir(cfg)
        run_dir.write_json("split_indices.json", data.provenance)
        run_dir.write_json("inputs.json", inputs)
    numerics.pin_threads(data)
    engine.seed_everything(cfg.run.seed)
    return RunContext(cfg, data, device, run_dir, chash, inputs)


def end_run(cfg: RunConfig) -> None:
    """Release this process's lock on the run directory and the pinned thread count (no-op when not held)."""
    release_run_lock(cfg.run_path())
    numerics.unpin_threads()


def write_run_results(cfg: RunConfig, run_dir: RunDir, chash: str, data: LTData, model: nn.Module | None,
                      ev: Evaluation, fit: engine.FitResult, device: torch.device, *,
                      stage: str | None = None, extra: dict | None = None, extra_inputs: ExtraInputs = None,
                      inputs: dict | None = None, evaluator: SingleLabel | None = None) -> dict:
    """Weights (``model``; None: none), logits, per_class.csv and (last, atomically) results.json.

    ``stage`` marks the results of an intermediate stage (left out of suite tables); ``extra`` adds
    method-specific top-level keys (e.g. the selected τ, trainable-parameter counts); ``inputs`` is the
    record :func:`begin_run` made (else computed with ``extra_inputs``); ``evaluator`` writes the
    logits and per-class files and fields (default :class:`~ltr_core.evaluation.SingleLabel`).
    Under DDP only rank 0 writes; the other ranks get the metrics without touching files.
    """
    if not dist.is_main():
        return {"run_id": cfg.run_id, "config_hash": chash, "metrics": dict(ev.metrics), "status": "not written (rank > 0)"}
    evaluator = evaluator or SingleLabel(cfg, data)
    if model is not None:
        save_weights(model, Path(run_dir.path) / "model.safetensors")
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
        **evaluator.write(run_dir, ev),  # metrics, class_counts, per_class, shot_groups (+ task, multi-label)
        "train_seconds": round(fit.train_seconds, 3),
        "images_per_second": fit.images_per_second,
        "resumed_from_epoch": fit.resumed_from,
        "resumed_from_run": fit.origin,
        "inputs": inputs if inputs is not None else inputs_of(cfg, data, extra_inputs),
        "numerics": numerics.describe(),
        "device": device_name(device),
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
    end_run(cfg)
    return results


def device_name(device: torch.device) -> str:
    """What results.json records as the device (GPU name, or CPU cores and threads)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
