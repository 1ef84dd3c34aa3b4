"""The run directory contract and the ``results.json`` schema (conventions.md §5).

Collecting runs: :mod:`ltr_core.collect`; tables: :mod:`ltr_core.tables`.

A run lives in ``results/<suite>/<run_id>/``::

    config.yaml        resolved flat params + config hash + run id + versions()
    split_indices.json provenance of the train/test split (CIFAR-LT indices, split-file hashes)
    metrics.jsonl      one JSON object per epoch (flushed line by line)
    results.json       final metrics; written last and atomically, so its presence means "done"
    per_class.csv      class_id,name,train_count,test_count,acc,group
    logits.npz         float32 logits + int64 labels of the evaluation split
    model.safetensors  final weights
    notebook.ipynb     the executed notebook (papermill)
    tb/                TensorBoard scalars
    checkpoint/        resume state (engine)

Every file is written through :func:`atomic_write_bytes` (temp file in the same directory, fsync,
``os.replace``), so a killed process leaves either the old or the new file, never half of one.
JSON never holds NaN: :func:`to_jsonable` maps NaN/inf to ``null`` (an empty shot group) and
:func:`dump_json` uses ``allow_nan=False`` to catch accidents (:mod:`ltr_core.atomic_io`). Provenance
(:func:`versions`): :mod:`ltr_core.provenance`; the one-writer lock and archiving: :mod:`ltr_core.run_lock`
(all still importable from here).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from .atomic_io import (_atomic_open, _fsync_dir, atomic_write_bytes, atomic_write_text,  # noqa: F401 (re-exported)
                        current_umask, dump_json, to_jsonable)
from .provenance import _dist_version, _run, git_sha, versions  # noqa: F401 (re-exported)
from .run_lock import (_HELD_LOCKS, ARCHIVE_DIR, RunBusy, acquire_run_lock,  # noqa: F401 (re-exported)
                       archive_run_dir, release_all_run_locks, release_run_lock)

REQUIRED_RESULT_KEYS: tuple[str, ...] = (
    "run_id", "dataset", "method", "seed", "config_hash", "metrics", "class_counts", "per_class",
    "shot_groups", "train_seconds", "images_per_second", "device", "versions", "status",
)
REQUIRED_METRIC_KEYS: tuple[str, ...] = ("top1", "many", "medium", "few", "ece")
REQUIRED_VERSION_KEYS: tuple[str, ...] = ("python", "torch", "ltr_core")


# ----------------------------------------------------------------------------------------------
# the run directory


def missing_result_keys(results: Mapping[str, Any]) -> list[str]:
    """Required keys absent from ``results`` (nested ones as ``metrics.top1``, ``versions.torch``)."""
    missing = [k for k in REQUIRED_RESULT_KEYS if k not in results]
    for parent, keys in (("metrics", REQUIRED_METRIC_KEYS), ("versions", REQUIRED_VERSION_KEYS)):
        sub = results.get(parent)
        if isinstance(sub, Mapping):
            missing += [f"{parent}.{k}" for k in keys if k not in sub]
        elif parent in results:
            missing += [f"{parent}.{k}" for k in keys]
    return missing


class RunDir:
    """One run directory ``results/<suite>/<run_id>/`` and the files in it (path-like)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.results_path = self.path / "results.json"
        self.per_class_path = self.path / "per_class.csv"
        self.logits_path = self.path / "logits.npz"
        self.model_path = self.path / "model.safetensors"
        self.notebook_path = self.path / "notebook.ipynb"
        self.split_indices_path = self.path / "split_indices.json"
        self.tb_dir = self.path / "tb"
        self.checkpoint_dir = self.path / "checkpoint"

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def mkdir(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # -- config ----------------------------------------------------------------------------------
    def write_config(self, flat_params: Mapping[str, Any], config_hash: str, run_id: str) -> Path:
        """config.yaml = {params, config_hash, run_id, versions}."""
        doc = {"params": to_jsonable(dict(flat_params)), "config_hash": config_hash, "run_id": run_id,
               "versions": to_jsonable(versions())}
        return atomic_write_text(self.config_path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))

    def read_config(self) -> dict | None:
        try:
            return yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return None

    # -- metrics.jsonl ---------------------------------------------------------------------------
    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line (an epoch record); flushed and fsynced so a crash loses at most this line."""
        line = dump_json(record, indent=None) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        """All parseable records of metrics.jsonl (a torn last line from a crash is skipped)."""
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if line.strip():
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        records.append(rec)
        return records

    def truncate_metrics(self, after_epoch: int) -> None:
        """Drop records with ``epoch > after_epoch`` (and torn lines); used when resuming from a checkpoint."""
        if not self.metrics_path.is_file():
            return
        kept = [r for r in self.read_metrics() if not (isinstance(r.get("epoch"), (int, float))
                                                      and r["epoch"] > after_epoch)]
        atomic_write_text(self.metrics_path, "".join(dump_json(r, indent=None) + "\n" for r in kept))

    # -- results.json ----------------------------------------------------------------------------
    def write_results(self, results: Mapping[str, Any]) -> Path:
        """Validate the required keys (ValueError naming the missing ones) and write results.json atomically."""
        missing = missing_result_keys(results)
        if missing:
            raise ValueError(f"results.json is missing required keys: {', '.join(missing)}")
        return atomic_write_text(self.results_path, dump_json(results) + "\n")

    def read_results(self) -> dict | None:
        """The parsed results.json, or None when it is missing or unparsable."""
        try:
            data = json.loads(self.results_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def is_complete(self, config_hash: str) -> bool:
        """True when results.json parses, has status "complete" and was produced by ``config_hash``."""
        res = self.read_results()
        return bool(res) and res.get("status") == "complete" and res.get("config_hash") == config_hash

    # -- other files -----------------------------------------------------------------------------
    def write_per_class(self, class_names: Sequence[str] | None, train_counts: Sequence[int],
                        test_counts: Sequence[int] | None, values: Sequence[float],
                        groups: Mapping[str, Sequence[int]], value_name: str = "acc") -> Path:
        """per_class.csv: class_id,name,train_count,test_count,<value_name>,group (NaN written empty)."""
        values = np.asarray(to_jsonable(list(values)), dtype=object)
        n = len(values)
        group_of = [""] * n
        for group, idx in groups.items():
            for i in to_jsonable(list(idx)):
                group_of[int(i)] = group
        names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
        train = to_jsonable(list(train_counts))
        test = to_jsonable(list(test_counts)) if test_counts is not None else [""] * n
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["class_id", "name", "train_count", "test_count", value_name, "group"])
        for c in range(n):
            v = values[c]
            writer.writerow([c, names[c], train[c], test[c], "" if v is None else repr(float(v)), group_of[c]])
        return atomic_write_text(self.per_class_path, buf.getvalue())

    def save_logits(self, logits: Any, labels: Any, split: str) -> Path:
        """logits.npz with ``logits`` (float32 [N, C]), ``labels`` (int64 [N]) and ``split``, atomically."""
        z = _numpy(logits).astype(np.float32)
        y = _numpy(labels).astype(np.int64)
        with _atomic_open(self.logits_path) as f:
            np.savez(f, logits=z, labels=y, split=np.array(split))
        return self.logits_path

    def load_logits(self) -> dict[str, Any]:
        """{"logits", "labels", "split"} from logits.npz."""
        with np.load(self.logits_path) as npz:
            return {"logits": npz["logits"], "labels": npz["labels"], "split": str(npz["split"])}

    def write_json(self, name: str, obj: Any) -> Path:
        """``<run_dir>/<name>`` as JSON (e.g. split_indices.json), atomically."""
        return atomic_write_text(self.path / name, dump_json(obj) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------
# moved: suite collection (ltr_core.collect) and tables (ltr_core.tables); the names other modules and
# notebooks use from here still work

_MOVED = {"collect": "collect", "run_name": "collect", "summary_table": "tables", "summary_numeric": "tables",
          "write_tables": "tables", "format_mean_std": "tables"}


def __getattr__(name: str) -> Any:  # PEP 562: lazy, so ltr_core.collect/tables can import this module
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
