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
:func:`dump_json` uses ``allow_nan=False`` to catch accidents.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import yaml

from . import faults

REQUIRED_RESULT_KEYS: tuple[str, ...] = (
    "run_id", "dataset", "method", "seed", "config_hash", "metrics", "class_counts", "per_class",
    "shot_groups", "train_seconds", "images_per_second", "device", "versions", "status",
)
REQUIRED_METRIC_KEYS: tuple[str, ...] = ("top1", "many", "medium", "few", "ece")
REQUIRED_VERSION_KEYS: tuple[str, ...] = ("python", "torch", "ltr_core")


# ----------------------------------------------------------------------------------------------
# atomic files and JSON


@contextlib.contextmanager
def _atomic_open(path: str | os.PathLike) -> Iterator[io.BufferedWriter]:
    """Yield a binary file in ``path``'s directory; on success fsync it and ``os.replace`` it onto ``path``.

    On any exception (including a failing ``os.replace``) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a run folder is shared as the umask says
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"before replace {path.name}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    faults.point(f"after replace {path.name}")


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (best effort; not possible on every platform)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``)."""
    with _atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, torch tensors, paths, tuples, sets and dataclasses.

    Non-finite floats (NaN, inf) become ``None`` (JSON ``null``), e.g. an empty shot group.
    """
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str(obj)  # plain str, also for subclasses such as torch.__version__ (TorchVersion)
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON: {obj!r}")


def dump_json(obj: Any, indent: int | None = 2) -> str:
    """``json.dumps(to_jsonable(obj), allow_nan=False)``; ``indent=None`` gives one line."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------
# provenance


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def git_sha(path: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (default: the ltr_core package).

    "+dirty" is appended when ``git status --porcelain`` is non-empty; "unknown" when the package is
    not in a git checkout (installed wheel, ignored folder such as a venv, no commit yet, no git).
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    head = _run(["git", "rev-parse", "HEAD"], where)
    if head is None or head.returncode != 0:
        return "unknown"
    ignored = _run(["git", "check-ignore", "-q", str(where)], where)
    if ignored is not None and ignored.returncode == 0:  # e.g. site-packages inside a repo's .venv
        return "unknown"
    sha = head.stdout.strip()
    status = _run(["git", "status", "--porcelain"], where)
    if status is not None and status.returncode == 0 and status.stdout.strip():
        sha += "+dirty"
    return sha


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    """Software and machine provenance for config.yaml / results.json.

    Keys: python, torch, torchvision, timm, open_clip (None when not installed), numpy, cuda
    (``torch.version.cuda``), cuda_device (name, only when CUDA is already initialised in this process,
    so calling this never initialises CUDA), ltr_core (package version), git_sha, hostname, platform.
    Package versions are read from installed metadata, not by importing the packages.
    """
    import torch

    from . import __version__

    device = None
    if torch.cuda.is_initialized():
        with contextlib.suppress(Exception):
            device = torch.cuda.get_device_name(torch.cuda.current_device())
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": _dist_version("torchvision"),
        "timm": _dist_version("timm"),
        "open_clip": _dist_version("open_clip_torch"),
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cuda_device": device,
        "ltr_core": __version__,
        "git_sha": git_sha(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }


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


class RunBusy(RuntimeError):
    """Another live process holds this run directory's lock."""


_HELD_LOCKS: dict[str, int] = {}  # resolved run dir -> open lock-file descriptor (this process)


def acquire_run_lock(path: str | os.PathLike) -> None:
    """Make this process the one writer of the run directory ``path`` (re-entrant within a process).

    ``fcntl.flock`` on ``<path>/.lock``: the kernel releases it when the holder dies (also on SIGKILL),
    so a crashed run never blocks the next one. The file records the holder (pid, host, start time,
    command); a second process gets :class:`RunBusy` naming it. No-op where ``fcntl`` is missing.
    """
    key = str(Path(path).resolve())
    if key in _HELD_LOCKS:
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    lock_path = Path(path) / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise RunBusy(f"{path} is being written by another process ({holder}); wait for it to finish "
                      f"(or stop it), then run again: a run directory has one writer at a time") from None
    import sys
    import time

    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"{' '.join(sys.argv)[:300]}\n".encode())
    _HELD_LOCKS[key] = fd


def release_run_lock(path: str | os.PathLike) -> None:
    """Release this process's lock on ``path`` (no-op if not held)."""
    fd = _HELD_LOCKS.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def release_all_run_locks() -> None:
    for key in list(_HELD_LOCKS):
        release_run_lock(key)


ARCHIVE_DIR = ".archive"  # <results_root>/.archive/: runs moved aside (--force, stale inputs); never collected


def archive_run_dir(path: str | os.PathLike, results_root: str | os.PathLike) -> Path | None:
    """Move a run directory to ``<results_root>/.archive/<its path under results_root>-<time>/`` (one
    rename; nothing is deleted) and return the new path; None if ``path`` does not exist. Reports never
    look there, so an archived run is never counted in a table."""
    import time

    path, root = Path(path), Path(results_root)
    if not path.exists():
        return None
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(path.name)
    target = root / ARCHIVE_DIR / rel.parent / f"{rel.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        target = target.with_name(f"{target.name.split('~')[0]}~{n}")
        n += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


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
