"""CIFAR-10-LT and CIFAR-100-LT (LDAM-DRW protocol, Cao et al., NeurIPS 2019).

The full training set is decoded once to a uint8 tensor [N, 3, 32, 32] and cached in
``cache_dir``; the long-tailed subset is then drawn with :func:`select_lt_indices`
(n_c = floor(n_max * IR^(-c/(C-1))), n_max 5000 / 500, seed ``lt_seed`` = 0). The test set is the
full balanced test set (1,000 / 100 per class). Train sizes: CIFAR-10 IR100 12,406, IR10 20,431;
CIFAR-100 IR100 10,847, IR10 19,573.

Sources, auto-detected under ``data_root`` in this order:

(a) ``torchvision`` — torchvision's own files ``cifar-10-batches-py/`` / ``cifar-100-python/``
    (the official pickled batches; read here directly, so no md5 check blocks a re-packed copy;
    torchvision is used only to download them when ``download=True``). Image order = the official
    order, i.e. exactly the LDAM-DRW subset.
(b) ``image_folder`` — ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``; class folders sorted
    alphabetically give the label order, files in natural (numeric-aware) name order.
(c) ``tar`` — ``train.tar.gz`` + ``test.tar.gz`` of such a tree (``../shared/data/cifar10``),
    extracted once into ``<cache_dir>/<name>_extracted-<archives' stamp>/`` and read as (b).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DataError, LTData, Split
from .profiles import lt_counts, select_lt_indices

CACHE_VERSION = 2  # 2: trees extracted before the completion mark are decoded again
GENERATOR = "ltr_core.data.cifar v1 (LDAM-DRW: RandomState(lt_seed), per-class shuffle, first n_c)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


@dataclass(frozen=True)
class CifarSpec:
    """What differs between CIFAR-10 and CIFAR-100."""

    name: str
    num_classes: int
    n_max: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tv_folder: str
    tv_train: tuple[str, ...]
    tv_test: tuple[str, ...]
    tv_meta: str
    tv_label_key: str
    tv_names_key: str


SPECS = {
    "cifar10_lt": CifarSpec("cifar10_lt", 10, 5000, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                            "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                            ("test_batch",), "batches.meta", "labels", "label_names"),
    "cifar100_lt": CifarSpec("cifar100_lt", 100, 500, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                             "cifar-100-python", ("train",), ("test",), "meta", "fine_labels",
                             "fine_label_names"),
}


# ----------------------------------------------------------------------------- source detection

def find_source(root: Path, spec: CifarSpec) -> tuple[str, Path]:
    """(kind, path) of the first source found under ``root``; DataError listing every path looked at."""
    candidates = [
        ("torchvision", root / spec.tv_folder, lambda p: (p / spec.tv_train[0]).is_file()),
        ("torchvision", root, lambda p: p.name == spec.tv_folder and (p / spec.tv_train[0]).is_file()),
        ("image_folder", root, lambda p: (p / "train").is_dir() and (p / "test").is_dir()),
        ("tar", root, lambda p: (p / "train.tar.gz").is_file() and (p / "test.tar.gz").is_file()),
    ]
    for kind, path, ok in candidates:
        if ok(path):
            return kind, path
    raise missing_source_error(root, spec)


def missing_source_error(root: Path, spec: CifarSpec, cause: str = "") -> DataError:
    looked = [root / spec.tv_folder / spec.tv_train[0], root / "train", root / "test",
              root / "train.tar.gz", root / "test.tar.gz"]
    looked_s = "\n".join(f"  - {p}" for p in looked)
    return DataError(
        f"no {spec.name} images found under data_root={root}{cause}. Looked for:\n{looked_s}\n"
        f"Set the folder with data_root= (params / --set data_root=...), --data-root, or $LTR_DATA_ROOT. "
        f"To get the data: where a network exists use download=True (torchvision writes "
        f"{spec.tv_folder}/ under data_root); or point data_root at a folder holding train.tar.gz + "
        f"test.tar.gz (e.g. ../shared/data/cifar10, extracted once into cache_dir), or at an extracted "
        f"train/<class>/ + test/<class>/ tree (tar -xzf train.tar.gz -C DEST; tar -xzf test.tar.gz -C DEST).")


def download_torchvision(root: Path, spec: CifarSpec) -> None:
    """Let torchvision download the official files into ``root``; DataError if that fails (offline)."""
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if spec.num_classes == 10 else tvd.CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors, checksum errors, permissions
        raise missing_source_error(root, spec, f" and download=True failed ({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------- readers

def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise DataError(f"cannot read CIFAR batch file {path} ({type(exc).__name__}: {exc}); "
                        f"delete the folder and re-download it (download=True)") from exc
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def read_torchvision_batches(folder: Path, spec: CifarSpec, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Official pickled batches -> (uint8 [N, 3, 32, 32], int64 [N]) in file order."""
    xs, ys = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"missing CIFAR batch file {path}; re-download the dataset (download=True)")
        entry = _unpickle(path)
        data = np.asarray(entry.get("data"), dtype=np.uint8)
        labels = np.asarray(entry.get(spec.tv_label_key, entry.get("labels", [])), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"{path}: expected 'data' uint8 [N, 3072] and N '{spec.tv_label_key}', got "
                            f"{data.shape} and {len(labels)} labels; re-download the dataset (download=True)")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def read_torchvision_names(folder: Path, spec: CifarSpec) -> list[str]:
    meta = _unpickle(folder / spec.tv_meta) if (folder / spec.tv_meta).is_file() else {}
    names = meta.get(spec.tv_names_key)
    if names is None:
        raise DataError(f"{folder / spec.tv_meta}: missing or lacks '{spec.tv_names_key}'; "
                        f"re-download the dataset (download=True)")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def natural_key(name: str) -> list:
    """Sort key that orders '2.jpg' before '10.jpg' (digit runs compare as integers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_image_folder(split_dir: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """(class names, image paths, labels): class folders sorted, files in natural order."""
    if not split_dir.is_dir():
        raise DataError(f"image folder {split_dir} does not exist; expected {split_dir}/<class>/<image>.jpg")
    classes = sorted(d.name for d in os.scandir(split_dir) if d.is_dir())
    if not classes:
        raise DataError(f"image folder {split_dir} has no class sub-folders; expected {split_dir}/<class>/<image>.jpg")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        names = sorted((e.name for e in os.scandir(split_dir / cls)
                        if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)), key=natural_key)
        paths += [split_dir / cls / n for n in names]
        labels += [label] * len(names)
    return classes, paths, np.asarray(labels, dtype=np.int64)


def decode_image(path: Path, size: int = 32) -> np.ndarray:
    """One image file -> uint8 [3, size, size]; DataError naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"cannot decode image {path} ({type(exc).__name__}: {exc}); the file is corrupt or "
                        f"truncated: re-extract the archive (delete the *_extracted-* folder in cache_dir) "
                        f"or re-download the dataset") from exc
    if arr.shape[:2] != (size, size):
        raise DataError(f"image {path} is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size} for CIFAR; "
                        f"point data_root at the original 32x32 CIFAR images")
    return arr.transpose(2, 0, 1)


def decode_images(paths: list[Path], workers: int | None = None) -> np.ndarray:
    """Decode many small images with PIL on a thread pool -> uint8 [N, 3, 32, 32]."""
    out = np.empty((len(paths), 3, 32, 32), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i])

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(work, range(len(paths)), chunksize=256):
            pass
    return out


def read_image_folder_tree(root: Path) -> dict:
    """Decode ``root/train`` and ``root/test`` ImageFolder trees into the cache dict."""
    train_classes, train_paths, train_y = list_image_folder(root / "train")
    test_classes, test_paths, test_y = list_image_folder(root / "test")
    if train_classes != test_classes:
        raise DataError(f"class folders differ between {root / 'train'} ({len(train_classes)}) and "
                        f"{root / 'test'} ({len(test_classes)}); both must hold the same <class>/ folders")
    return {"train_images": decode_images(train_paths), "train_labels": train_y,
            "test_images": decode_images(test_paths), "test_labels": test_y, "class_names": train_classes}


EXTRACTED_MARK = ".complete.json"


def tar_stamp(folder: Path) -> list:
    """(name, size, mtime) of the two archives: an extracted tree is valid only for the archives it came from."""
    return [[n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns] for n in ("train.tar.gz", "test.tar.gz")]


def extracted_ok(dest: Path, stamp: list) -> bool:
    """True when ``dest`` is a finished extraction (its mark is written last) of the archives ``stamp`` names."""
    try:
        return json.loads((dest / EXTRACTED_MARK).read_text()) == stamp
    except (OSError, ValueError):
        return False


def extract_tars(folder: Path, dest_stem: Path) -> Path:
    """Extract ``train.tar.gz`` and ``test.tar.gz`` once into ``<dest_stem>-<archives' stamp>``; safe with
    concurrent runs.

    Each call extracts into its own temporary folder beside the destination, writes the completion mark
    last and renames the folder into place, so the destination is either absent or finished: a run never
    reads another's half-written files (two runs starting together did, before), and other archives get
    another folder. When another run finished first, its tree is used and this call's copy is dropped.
    """
    stamp = tar_stamp(folder)
    dest = dest_stem.with_name(f"{dest_stem.name}-{hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:12]}")
    if extracted_ok(dest, stamp):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{dest.name}.partial-", dir=dest.parent))
    try:
        for name in ("train.tar.gz", "test.tar.gz"):
            try:
                with tarfile.open(folder / name, "r:gz") as tar:
                    tar.extractall(partial, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(f"cannot extract {folder / name} ({type(exc).__name__}: {exc}); the archive is "
                                f"corrupt or incomplete: copy it again (compare its sha256 with SOURCES.md)") from exc
        (partial / EXTRACTED_MARK).write_text(json.dumps(stamp))
        try:
            os.replace(partial, dest)
        except OSError as exc:  # another run renamed its finished tree into place first
            if not extracted_ok(dest, stamp):
                raise DataError(f"{dest} exists but is not a finished extraction of {folder}; delete it and "
                                f"run again") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


# ----------------------------------------------------------------------------- cache

def _stamp(kind: str, path: Path, spec: CifarSpec) -> list:
    """Cheap fingerprint of the source (sizes + mtimes) so an edited source invalidates the cache."""
    if kind == "torchvision":
        files = [path / f for f in spec.tv_train + spec.tv_test]
    elif kind == "tar":
        files = [path / "train.tar.gz", path / "test.tar.gz"]
    else:
        files = [Path(e.path) for s in ("train", "test") for e in os.scandir(path / s) if e.is_dir()]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def cache_path(cache_dir: Path, spec: CifarSpec, kind: str, path: Path) -> Path:
    key = json.dumps({"kind": kind, "path": str(path.resolve()), "version": CACHE_VERSION,
                      "stamp": _stamp(kind, path, spec)}, sort_keys=True)
    return cache_dir / f"{spec.name}_{kind}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def load_source(kind: str, path: Path, spec: CifarSpec, cache_dir: Path) -> tuple[dict, Path]:
    """The decoded dataset dict, from the cache when present, else decoded and cached (atomic write)."""
    cpath = cache_path(cache_dir, spec, kind, path)
    if cpath.is_file():
        try:
            return torch.load(cpath, weights_only=True), cpath
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            warnings.warn(f"ignoring unreadable cache {cpath} ({exc}); decoding again")
    if kind == "torchvision":
        tx, ty = read_torchvision_batches(path, spec, spec.tv_train)
        vx, vy = read_torchvision_batches(path, spec, spec.tv_test)
        raw = {"train_images": tx, "train_labels": ty, "test_images": vx, "test_labels": vy,
               "class_names": read_torchvision_names(path, spec)}
    else:
        tree = extract_tars(path, cache_dir / f"{spec.name}_extracted") if kind == "tar" else path
        raw = read_image_folder_tree(tree)
    data = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
            for k, v in raw.items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cpath.with_suffix(f".tmp{os.getpid()}")
    torch.save(data, tmp)
    os.replace(tmp, cpath)
    return data, cpath


# ----------------------------------------------------------------------------- builder

def load_raw(cfg, data_root: Path, spec: CifarSpec) -> tuple[str, Path, dict, Path]:
    """(source kind, source path, decoded uint8 arrays, cache path) of ``spec`` under ``data_root``,
    downloading torchvision's files first when none is found and ``cfg.download`` is set."""
    data_root = Path(data_root)
    try:
        kind, path = find_source(data_root, spec)
    except DataError:
        if not cfg.download:
            raise
        download_torchvision(data_root, spec)
        kind, path = find_source(data_root, spec)
    raw, cpath = load_source(kind, path, spec, Path(cfg.cache_dir))
    return kind, path, raw, cpath


def build_cifar_lt(cfg, data_root: Path, name: str) -> LTData:
    """CIFAR-10-LT / CIFAR-100-LT from a DataSection (``name`` is cifar10_lt or cifar100_lt)."""
    spec = SPECS[name]
    kind, path, raw, cpath = load_raw(cfg, data_root, spec)
    class_names = list(raw["class_names"])
    if len(class_names) != spec.num_classes:
        raise DataError(f"{path} ({kind}) has {len(class_names)} classes, {spec.name} needs {spec.num_classes}; "
                        f"check that data_root points at the right dataset")
    train_y = raw["train_labels"].numpy()
    n_max = cfg.n_max or spec.n_max
    counts = lt_counts(n_max, spec.num_classes, cfg.imbalance_ratio, cfg.lt_profile)
    selected = select_lt_indices(train_y, counts, seed=cfg.lt_seed)
    idx = torch.from_numpy(np.concatenate([selected[c] for c in range(spec.num_classes)]))
    provenance = {
        "dataset": name, "source": {"kind": kind, "path": str(path.resolve())}, "cache": str(cpath),
        "generator": GENERATOR, "imbalance_ratio": cfg.imbalance_ratio, "lt_profile": cfg.lt_profile,
        "n_max": n_max, "lt_seed": cfg.lt_seed, "counts": counts,
        "indices": {str(c): selected[c].tolist() for c in range(spec.num_classes)},
    }
    return LTData(
        name=name, class_names=class_names,
        train=Split(labels=raw["train_labels"][idx], images=raw["train_images"][idx]),
        test=Split(labels=raw["test_labels"], images=raw["test_images"]),
        mean=spec.mean, std=spec.std, image_size=cfg.image_size or 32, provenance=provenance,
    )
