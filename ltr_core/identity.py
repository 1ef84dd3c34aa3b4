"""What a run read, beyond its config: the digests that make "complete" mean "complete for these inputs".

The config hash (:func:`ltr_core.config.config_hash`) says *what* a run computes; two runs of one
config can still read different things: another copy of CIFAR, edited split lists, a stage-1 run that
was re-run with other settings, other class-text files. :func:`run_inputs` digests what was actually
read:

* ``data``: per split, sha256 over the labels (and multi-hot targets) plus the decoded pixels
  (in-memory splits: CIFAR, digits, mosaics) or the file manifest (relative path, byte size) of
  file splits (ImageNet-LT, Places-LT, iNat, VOC/COCO-MLT), the sha256 of every split/class list
  file the builder recorded in its provenance, and, for file splits not read by the PIL path, how
  they are read (``input_path``: backend, cache rule and size; ``file_backend: auto`` resolves per
  machine, so its choice is recorded here);
* ``init_run``: the stage-1 run a later stage starts from, by its config hash and the sha256 of its
  weights file;
* ``extra``: anything a family reads besides (e.g. VL-LTR's class-text files).

``digest`` (sha256 of the rest) is recorded in ``results.json`` and in each checkpoint; a complete run
whose inputs digest differs is stale and is re-run, a checkpoint of other inputs is never resumed.
A checkpoint that differs only in the machine's settings (:func:`machine_change`: a compiled CPU run's
thread count, the CPU kernels) is not dropped either: the run is refused with the settings that resume it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

SPLITS = ("train", "val", "test", "open")


def sha256_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _array_bytes(x: Any) -> bytes:
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.ascontiguousarray(arr).tobytes()


def _manifest(paths) -> bytes:
    """(path, byte size) of every file of a file split; a missing file is recorded as size -1."""
    lines = []
    for p in paths:
        try:
            size = os.stat(p).st_size
        except OSError:
            size = -1
        lines.append(f"{p}\t{size}")
    return "\n".join(lines).encode()


def split_digest(split) -> str:
    """sha256 of one split: labels, targets, and pixels (in memory) or the file manifest."""
    parts = [_array_bytes(split.labels)]
    if getattr(split, "targets", None) is not None:
        parts.append(_array_bytes(split.targets))
    if getattr(split, "images", None) is not None:
        parts.append(_array_bytes(split.images))
    elif getattr(split, "paths", None) is not None:
        parts.append(_manifest(split.paths))
    return sha256_bytes(*parts)


def _listed_files(provenance: Mapping[str, Any]) -> dict[str, str]:
    """The sha256 of every split/class list the data builder recorded (image-list datasets)."""
    out = {f"split_file:{s}": v["sha256"] for s, v in (provenance.get("split_files") or {}).items()
           if isinstance(v, Mapping) and v.get("sha256")}
    cls = provenance.get("class_list")
    if isinstance(cls, Mapping) and cls.get("sha256"):
        out["class_list"] = cls["sha256"]
    return out


def data_identity(data) -> dict[str, Any]:
    """{"splits": {name: {"n", "digest"}}, "files": {...}, "digest"} of an :class:`~ltr_core.data.LTData`."""
    splits = {}
    for name in SPLITS:
        split = getattr(data, name, None)
        if split is not None:
            splits[name] = {"n": int(split.n), "digest": split_digest(split)}
    out = {"dataset": data.name, "num_classes": data.num_classes, "splits": splits,
           "files": _listed_files(data.provenance or {})}
    path = _input_path(data)
    if path is not None:  # absent for the PIL path and in-memory data: their digests are unchanged
        out["input_path"] = path
    out["digest"] = digest_of(out)
    return out


def _input_path(data) -> dict | None:
    """How the file splits are read when it is not the PIL path (:func:`ltr_core.data.uint8_cache.input_path_record`)."""
    splits = [getattr(data, n, None) for n in SPLITS]
    if not any(s is not None and s.images is None and s.paths is not None for s in splits):
        return None
    from .data.uint8_cache import input_path_record

    return input_path_record(getattr(data, "input_options", None) or {})


def init_run_identity(run_dir) -> dict[str, Any]:
    """{"run", "config_hash", "weights_sha256"} of a finished stage-1 run directory."""
    res = run_dir.read_results() or {}
    weights = Path(run_dir.path) / "model.safetensors"
    return {"run": Path(run_dir.path).name, "config_hash": res.get("config_hash"),
            "weights_sha256": sha256_file(weights) if weights.is_file() else None}


def digest_of(obj: Any) -> str:
    """sha256 (16 hex chars) of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_inputs(data, init_run=None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The inputs record of a run: data identity, the stage-1 run (a RunDir or None), family extras."""
    out: dict[str, Any] = {"data": data_identity(data)}
    if init_run is not None:
        out["init_run"] = init_run_identity(init_run)
    if extra:
        out["extra"] = dict(extra)
    out["digest"] = digest_of({k: (v["digest"] if k == "data" else v) for k, v in out.items()})
    return out


def describe_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """Which inputs differ between two records, in words (for the stale-run message)."""
    if not old:
        return "the finished run recorded no inputs (made by an older ltr_core)"
    what = []
    old_data, new_data = old.get("data") or {}, new.get("data") or {}
    for split in sorted(set(old_data.get("splits", {})) | set(new_data.get("splits", {}))):
        a, b = old_data.get("splits", {}).get(split), new_data.get("splits", {}).get(split)
        if a != b:
            what.append(f"the {split} split ({(a or {}).get('n')} -> {(b or {}).get('n')} samples, content differs)")
    if old_data.get("files") != new_data.get("files"):
        what.append("the split/class list files")
    if old_data.get("input_path") != new_data.get("input_path"):
        what.append(f"how the image files are read ({(old_data.get('input_path') or {}).get('file_backend', 'pil')} -> "
                    f"{(new_data.get('input_path') or {}).get('file_backend', 'pil')})")
    if old.get("init_run") != new.get("init_run"):
        a, b = old.get("init_run") or {}, new.get("init_run") or {}
        what.append(f"the stage-1 run {b.get('run')} (config {a.get('config_hash')} -> {b.get('config_hash')}, "
                    f"weights {str(a.get('weights_sha256'))[:12]} -> {str(b.get('weights_sha256'))[:12]})")
    if old.get("extra") != new.get("extra"):
        what.append("the method's extra inputs (" + ", ".join(sorted(set(old.get("extra") or {}) | set(new.get("extra") or {}))) + ")")
    return "; ".join(what) or "the inputs digest"


def machine_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str | None:
    """How to compute like ``old`` again, when two input records differ only in what the machine computes
    with (a compiled CPU run's thread count, the CPU kernels: :func:`ltr_core.numerics.kernels_identity`),
    else None. A partial run of such other inputs could be resumed here under the old settings."""
    if not old or {k: v for k, v in old.items() if k not in ("extra", "digest")} != \
            {k: v for k, v in new.items() if k not in ("extra", "digest")}:
        return None
    a, b = dict(old.get("extra") or {}), dict(new.get("extra") or {})
    how = []
    if a.get("compiled_cpu_threads") != b.get("compiled_cpu_threads"):
        how.append(f"{a.get('compiled_cpu_threads', 'no compiled')} CPU threads (this process: "
                   f"{b.get('compiled_cpu_threads', 'not compiled')}; set OMP_NUM_THREADS={a.get('compiled_cpu_threads')})")
    if a.get("cpu_kernels") != b.get("cpu_kernels"):
        want, have = a.get("cpu_kernels"), b.get("cpu_kernels")
        how.append(f"the CPU kernels {want or 'AVX2 (the default pins)'} (this process: {have or 'AVX2'}; "
                   + ("unset LTR_NATIVE_ISA" if not want else "LTR_NATIVE_ISA=1 on a CPU with those kernels") + ")")
    for key in ("compiled_cpu_threads", "cpu_kernels", "cpu_autocast"):  # cpu_autocast follows the kernels
        a.pop(key, None), b.pop(key, None)
    return " and ".join(how) if how and a == b else None
