"""The run directory contract, ``results.json`` schema, suite collection and tables (conventions.md §5-6).

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
import glob
import io
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

REQUIRED_RESULT_KEYS: tuple[str, ...] = (
    "run_id", "dataset", "method", "seed", "config_hash", "metrics", "class_counts", "per_class",
    "shot_groups", "train_seconds", "images_per_second", "device", "versions", "status",
)
REQUIRED_METRIC_KEYS: tuple[str, ...] = ("top1", "many", "medium", "few", "ece")
REQUIRED_VERSION_KEYS: tuple[str, ...] = ("python", "torch", "ltr_core")

# Table headers (conventions.md §6: Many | Medium | Few | All).
DISPLAY_NAMES: dict[str, str] = {
    "many": "Many", "medium": "Medium", "few": "Few", "top1": "All",
    "mean_per_class": "Class mean", "ece": "ECE", "mce": "MCE", "macro_f1": "Macro-F1",
    "worst_class": "Worst", "hmean": "H-mean", "gmean": "G-mean", "f_measure": "F",
    "map": "mAP", "map_head": "Head", "map_medium": "Medium", "map_tail": "Tail",
    "map_softmax": "mAP (softmax)",
    "dataset": "Dataset", "method": "Method", "name": "Name", "n_seeds": "Seeds",
    "no_tte_top1": "All (no TTE)", "pdc": "PDC",
}
LOWER_IS_BETTER = frozenset({"ece", "mce", "pdc"})
DASH = "–"  # printed for an empty group / missing number (never 0)


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
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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
# collecting a suite

BASE_COLUMNS = ("run_id", "dataset", "method", "seed", "name", "config_hash", "status")
TAIL_COLUMNS = ("train_seconds", "images_per_second", "device", "path")
EXTRA_SCALARS = ("loss", "model", "eval_split", "epochs", "selection", "stage")


def _result_files(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """results.json files named by files, directories (searched recursively) or glob patterns."""
    items = [paths_or_globs] if isinstance(paths_or_globs, (str, os.PathLike)) else list(paths_or_globs)
    found: dict[Path, None] = {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            matches = sorted(p.glob("**/results.json"))
        elif p.is_file():
            matches = [p]
        else:
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            matches = [m / "results.json" if m.is_dir() else m for m in matches]
        for m in matches:
            if m.is_file():
                found[m.resolve()] = None
    return list(found)


def run_name(results: Mapping[str, Any]) -> str:
    """``results["name"]``, else the <name> part of ``<dataset>-<method>-<name>-s<seed>``, else the run id."""
    if results.get("name"):
        return str(results["name"])
    run_id = str(results.get("run_id", ""))
    prefix = f"{results.get('dataset')}-{results.get('method')}-"
    suffix = f"-s{results.get('seed')}"
    if run_id.startswith(prefix) and run_id.endswith(suffix) and len(run_id) > len(prefix) + len(suffix):
        return run_id[len(prefix):-len(suffix)]
    return run_id


def _flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars as they are (null -> NaN); one level of nested dicts as ``<key>_<sub>``; lists dropped."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for sub, v in value.items():
                if not isinstance(v, (Mapping, list)):
                    flat[f"{key}_{sub}"] = np.nan if v is None else v
        elif not isinstance(value, list):
            flat[key] = np.nan if value is None else value
    return flat


def _row(results: Mapping[str, Any], path: Path) -> dict[str, Any]:
    row = {k: results.get(k) for k in BASE_COLUMNS}
    row["name"] = run_name(results)
    row.update({k: results[k] for k in EXTRA_SCALARS if k in results})
    metrics = results.get("metrics")
    row.update(_flatten_metrics(metrics if isinstance(metrics, Mapping) else {}))
    row.update({k: results.get(k) for k in TAIL_COLUMNS})
    row["path"] = str(path.parent)
    return row


def collect(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike], *,
            include_incomplete: bool = False, include_stages: bool = False) -> pd.DataFrame:
    """One row per results.json: run_id, dataset, method, seed, name, config_hash, status, [loss, model,
    eval_split, epochs, selection], every metrics key (nested dicts flattened as ``group_sizes_many``),
    train_seconds, images_per_second, device, path (the run directory).

    Accepts files, run/suite directories (searched recursively) and glob patterns (``**`` allowed).
    Runs whose status is not "complete" (or whose results.json does not parse) are dropped with a warning
    unless ``include_incomplete``. Results of intermediate stages of multi-stage runs (a ``stage`` key,
    see :mod:`ltr_core.stages`) are left out unless ``include_stages``. Null metrics (empty groups) are
    NaN. Rows are sorted by dataset, method, name, seed.
    """
    rows, skipped = [], []
    for path in _result_files(paths_or_globs):
        res = RunDir(path.parent).read_results()
        if res is None:
            skipped.append(f"{path} (unreadable)")
            if include_incomplete:
                rows.append({"status": "unreadable", "path": str(path.parent)})
            continue
        if res.get("stage") and not include_stages:
            continue
        if res.get("status") != "complete":
            skipped.append(f"{path} (status {res.get('status')!r})")
            if not include_incomplete:
                continue
        rows.append(_row(res, path))
    if skipped and not include_incomplete:
        warnings.warn(f"collect: skipped {len(skipped)} incomplete run(s): " + "; ".join(skipped), stacklevel=2)
    df = pd.DataFrame(rows)
    for col in (*BASE_COLUMNS, *TAIL_COLUMNS):
        if col not in df.columns:
            df[col] = pd.Series(dtype=object)
    order = [*BASE_COLUMNS, *[c for c in df.columns if c not in BASE_COLUMNS and c not in TAIL_COLUMNS],
             *TAIL_COLUMNS]
    df = df[order]
    if len(df):
        df = df.sort_values(["dataset", "method", "name", "seed"], kind="stable", na_position="last")
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# tables


def format_mean_std(mean: float, std: float, n: int, decimals: int = 1) -> str:
    """"m ± s" with ``decimals`` decimals; only "m" for a single seed; "–" when there is no number."""
    if n == 0 or mean is None or not np.isfinite(mean):
        return DASH
    if n == 1 or std is None or not np.isfinite(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def summary_numeric(df: pd.DataFrame, by: Sequence[str] = ("dataset", "method", "name"),
                    metrics: Sequence[str] = ("many", "medium", "few", "top1")) -> pd.DataFrame:
    """Per group of ``by``: ``<metric>`` = mean over seeds, ``<metric>_std`` (ddof=1, NaN for one seed),
    ``<metric>_n`` (seeds with a finite value) and ``n_seeds`` (runs in the group). NaN values are ignored."""
    by, metrics = list(by), [m for m in metrics if m in df.columns]
    if "seed" in df.columns and df.duplicated([*by, "seed"]).any():
        warnings.warn("summary: some (group, seed) pairs appear more than once; std mixes duplicates",
                      stacklevel=2)
    rows = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce").astype(float)
            row[m] = v.mean()
            row[f"{m}_std"] = v.std(ddof=1)
            row[f"{m}_n"] = int(v.notna().sum())
        row["n_seeds"] = len(g)
        rows.append(row)
    cols = [*by, *metrics, *[f"{m}_std" for m in metrics], *[f"{m}_n" for m in metrics], "n_seeds"]
    return pd.DataFrame(rows, columns=cols)


def summary_table(df: pd.DataFrame, by: Sequence[str] = ("dataset", "method", "name"),
                  metrics: Sequence[str] = ("many", "medium", "few", "top1"), decimals: int = 1) -> pd.DataFrame:
    """The ``by`` columns, one "mean ± std" string per metric (std over seeds, ddof=1; a single seed
    prints the mean; no finite value prints "–") and ``n_seeds``. Same rows as :func:`summary_numeric`."""
    num = summary_numeric(df, by, metrics)
    metrics = [m for m in metrics if m in num.columns]
    out = num[list(by)].copy()
    for m in metrics:
        out[m] = [format_mean_std(a, s, n, decimals) for a, s, n in zip(num[m], num[f"{m}_std"], num[f"{m}_n"])]
    out["n_seeds"] = num["n_seeds"]
    return out


def _split_columns(summary_df: pd.DataFrame, numeric_df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(label columns, metric columns) of a summary table."""
    metrics = [c for c in summary_df.columns if c in numeric_df.columns and f"{c}_std" in numeric_df.columns]
    labels = [c for c in summary_df.columns if c not in metrics and c != "n_seeds"]
    return labels, metrics


def _best_mask(values: pd.DataFrame, metrics: Sequence[str], decimals: int) -> pd.DataFrame:
    """True where a cell equals its column's best value at the printed precision (ties all bold)."""
    mask = pd.DataFrame(False, index=values.index, columns=list(metrics))
    for m in metrics:
        v = pd.to_numeric(values[m], errors="coerce").round(decimals)
        if v.notna().any():
            best = v.min() if m in LOWER_IS_BETTER else v.max()
            mask[m] = v == best
    return mask


def _table_frames(summary_df: pd.DataFrame, numeric_df: pd.DataFrame, published: pd.DataFrame | None,
                  decimals: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str], int]:
    """Display strings and numeric values of ours + published rows; label columns that vary; #ours."""
    labels, metrics = _split_columns(summary_df, numeric_df)
    shown = summary_df[labels + metrics].reset_index(drop=True).astype(object)
    values = numeric_df[labels + metrics].reset_index(drop=True)
    n_ours = len(shown)
    varying = [c for c in labels if shown[c].astype(str).nunique() > 1]
    varying = varying or (["method"] if "method" in labels else labels[-1:])
    if published is not None and len(published):
        pub = published.reset_index(drop=True).copy()
        for c in labels:
            if c not in pub.columns:
                pub[c] = ""
        # the published row's label goes where our rows show their identity (the last varying column)
        source = "method" if "method" in pub.columns else varying[-1]
        pub[varying[-1]] = pub[source].astype(str) + " (published)"
        pub_vals = pd.DataFrame({c: pub[c] for c in labels}
                                | {m: pd.to_numeric(pub[m], errors="coerce") if m in pub.columns
                                   else np.nan for m in metrics})
        pub_shown = pub_vals.astype(object).copy()
        for m in metrics:
            pub_shown[m] = [format_mean_std(v, np.nan, 1, decimals) for v in pub_vals[m]]
        shown = pd.concat([shown, pub_shown], ignore_index=True)
        values = pd.concat([values, pub_vals], ignore_index=True)
    return shown, values, varying, metrics, n_ours


def _latex(shown: pd.DataFrame, bold: pd.DataFrame, labels: list[str], metrics: list[str], n_ours: int,
           caption: str, label: str) -> str:
    """booktabs LaTeX via ``Styler.to_latex(hrules=True, convert_css=True)``; bold = ``\\bfseries``."""
    table = shown[labels + metrics].rename(columns=DISPLAY_NAMES)
    css = pd.DataFrame(np.where(bold.to_numpy(dtype=bool), "font-weight: bold;", ""),
                       columns=[DISPLAY_NAMES.get(m, m) for m in bold.columns])
    styler = (table.style.hide(axis="index")
              .apply(lambda col: css[col.name] if col.name in css.columns else [""] * len(col), axis=0)
              .format(escape="latex").format_index(escape="latex", axis=1))
    tex = styler.to_latex(hrules=True, convert_css=True, caption=caption, label=label,
                          column_format="l" * len(labels) + "r" * len(metrics), position_float="centering")
    tex = tex.replace("±", r"$\pm$").replace(DASH, "--")
    if n_ours < len(shown):  # a rule between our rows and the published ones
        lines = tex.split("\n")
        body = lines.index(r"\midrule") + 1
        lines.insert(body + n_ours, r"\midrule")
        tex = "\n".join(lines)
    return tex


def write_tables(summary_df: pd.DataFrame, numeric_df: pd.DataFrame, out_dir: str | os.PathLike, name: str,
                 caption: str, label: str, published: pd.DataFrame | None = None,
                 decimals: int = 1) -> dict[str, Path]:
    """``<name>.md`` / ``.tex`` / ``.csv`` of a summary (conventions.md §6).

    Columns Many | Medium | Few | All (see :data:`DISPLAY_NAMES`); best value per column in bold
    (``\\bfseries`` in LaTeX, ``**`` in Markdown; lowest for :data:`LOWER_IS_BETTER`; ties all bold), computed over every
    row shown; "–" for empty groups. ``published`` (label columns such as ``method`` plus numeric metric
    columns) adds rows marked "(published)" below ours, after a ``\\midrule``. Label columns that are
    constant over our rows are left out of the .md/.tex (state them in the caption). The CSV holds the
    numbers: means, stds, seed counts, and published rows with ``source = "published"``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown, values, labels, metrics, n_ours = _table_frames(summary_df, numeric_df, published, decimals)
    bold = _best_mask(values, metrics, decimals)
    md = shown[labels + metrics].copy()
    for m in metrics:
        md[m] = [f"**{s}**" if b else s for s, b in zip(md[m], bold[m])]
    if "n_seeds" in summary_df.columns:
        md["n_seeds"] = list(summary_df["n_seeds"]) + [""] * (len(md) - n_ours)
    md_text = md.rename(columns=DISPLAY_NAMES).to_markdown(index=False)
    csv_df = numeric_df.assign(source="ours")
    if n_ours < len(values):
        all_labels, _ = _split_columns(summary_df, numeric_df)
        pub_rows = values.iloc[n_ours:].assign(source="published")
        csv_df = pd.concat([csv_df, pub_rows[[c for c in pub_rows.columns if c in csv_df.columns
                                              or c in all_labels]]], ignore_index=True)
    for col in [c for c in csv_df.columns if c.endswith("_n") or c == "n_seeds"]:
        csv_df[col] = csv_df[col].astype("Int64")
    paths = {
        "md": atomic_write_text(out_dir / f"{name}.md", f"{caption}\n\n{md_text}\n"),
        "tex": atomic_write_text(out_dir / f"{name}.tex",
                                 _latex(shown, bold, labels, metrics, n_ours, caption, label)),
        "csv": atomic_write_text(out_dir / f"{name}.csv", csv_df.to_csv(index=False)),
    }
    return paths
