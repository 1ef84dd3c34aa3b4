"""Multi-label long-tailed data: VOC-MLT and COCO-MLT (Wu et al., "Distribution-Balanced Loss for
Multi-Label Classification in Long-Tailed Datasets", ECCV 2020), the class-occurrence sampler of
TailCLIP, a held-out validation split carved from train, and the multi-label loaders (the sampler and the
loaders: :mod:`ltr_core.data.multilabel_loaders`, still importable from here).

Lists (``split_dir``; in this project ``../shared/data/splits/VOC_MLT`` / ``COCO_MLT``): one image per
line, ``relative/path.jpg l1 l2 ...`` (LMPT's ``voc_lt_{train,test}.txt`` / ``coco_lt_{train,test}.txt``),
and a class list ``name id`` per line (``voc_labels.txt`` / ``coco_labels.txt``; raw VOC names such as
"diningtable" are kept: TailCLIP prompts with them). Images (``data_root``): the folder the list paths
start from, i.e. the folder holding ``VOCdevkit/`` (VOC2012 train images, VOC2007 test images) or the
COCO 2017 root holding ``train2017/`` and ``val2017/``.

* VOC-MLT: 20 classes, 1,142 train images, 4,952 test images (VOC2007 test), head/medium/tail 6/6/8;
* COCO-MLT: 80 classes, 1,909 train images, 5,000 test images (COCO val2017; 48 have no label and stay
  in the pool as negatives for every class), 22/33/25.

n_c = training images containing class c; head n_c >= 100, medium 20-99, tail < 20
(:func:`ltr_core.metrics.multilabel_groups`). Both are computed from the lists and checked against the
DB repository's ``class_freq.pkl`` / ``class_split.pkl`` when those files sit in ``split_dir``; the
pickles are read with a restricted unpickler that only builds numpy arrays, sets and builtin scalars.

A split's ``targets`` is the multi-hot uint8 matrix [N, C]; its ``labels`` the rarest label of each image
(the class with the fewest training images among its labels; -1 for an image without labels).
"""

from __future__ import annotations

import codecs
import importlib
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..metrics_multilabel import multilabel_groups
from .base import DataError, LTData, Split
from .image_list import sha256_file
from .multilabel_loaders import (ML_SAMPLERS, MultiLabelFileDataset, OccurrenceSampler,  # noqa: F401 (re-exported)
                                 _InOrder, image_occurrence_weights, make_multilabel_loader, squash_transform)
from .transforms import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_IMAGE_SIZE = 224


@dataclass(frozen=True)
class MLTSpec:
    """Files and published facts of one multi-label long-tailed benchmark."""

    name: str
    folder: str  # the folder name in ../shared/data/splits
    train_list: str
    test_list: str
    class_list: str
    num_classes: int
    train_images: int
    test_images: int
    group_sizes: tuple[int, int, int]  # head, medium, tail
    image_layout: str


MLT_SPECS = {
    "voc_mlt": MLTSpec("voc_mlt", "VOC_MLT", "voc_lt_train.txt", "voc_lt_test.txt", "voc_labels.txt", 20, 1142, 4952,
                       (6, 6, 8), "the folder that holds VOCdevkit/ (VOCdevkit/VOC2012/JPEGImages/ for the train "
                       "list, VOCdevkit/VOC2007/JPEGImages/ for the test list)"),
    "coco_mlt": MLTSpec("coco_mlt", "COCO_MLT", "coco_lt_train.txt", "coco_lt_test.txt", "coco_labels.txt", 80, 1909,
                        5000, (22, 33, 25), "the COCO 2017 root that holds train2017/ and val2017/"),
}


# ----------------------------------------------------------------------------- list files

def read_label_names(path: Path) -> list[str]:
    """``name id`` lines (the name may contain spaces; CRLF and trailing blanks allowed) -> names by id 0..C-1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class list {path} not found; put it in split_dir (set split_dir= to the folder holding "
                        f"the MLT lists, e.g. ../shared/data/splits/VOC_MLT)")
    by_id: dict[int, str] = {}
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.strip().rsplit(maxsplit=1)
        if not parts:
            continue
        try:
            name, idx = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise DataError(f"{path}:{no}: expected 'class name id', got {line.strip()!r}") from None
        if idx in by_id:
            raise DataError(f"{path}:{no}: class id {idx} appears twice ({by_id[idx]!r} and {name!r})")
        by_id[idx] = name
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{path}: class ids must be 0..C-1 without gaps, got {sorted(by_id)[:10]}...")
    return [by_id[i] for i in range(len(by_id))]


def read_multilabel_list(path: Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    """``relative/path l1 l2 ...`` lines -> (relative paths, multi-hot uint8 [N, C]); a line may have no label."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} not found; set split_dir= to the folder holding the MLT lists "
                        f"(e.g. ../shared/data/splits/VOC_MLT)")
    rel, rows = [], []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            labels = [int(t) for t in parts[1:]]
        except ValueError:
            raise DataError(f"{path}:{no}: expected 'relative/path.jpg label label ...', got {line.strip()[:120]!r}") from None
        bad = [c for c in labels if not 0 <= c < num_classes]
        if bad:
            raise DataError(f"{path}:{no}: labels {bad} are not in [0, {num_classes}) (the class list has "
                            f"{num_classes} classes); use the list and class list of the same dataset")
        row = np.zeros(num_classes, dtype=np.uint8)
        row[labels] = 1
        rel.append(parts[0])
        rows.append(row)
    return rel, (np.stack(rows) if rows else np.zeros((0, num_classes), dtype=np.uint8))


def rarest_labels(targets, class_counts) -> np.ndarray:
    """Per image, the label with the smallest n_c (ties: the lower class index); -1 without labels."""
    t = np.asarray(targets) > 0
    n = np.asarray(class_counts, dtype=np.float64)
    masked = np.where(t, n[None, :], np.inf)
    out = masked.argmin(axis=1).astype(np.int64)
    out[~t.any(axis=1)] = -1
    return out


# ----------------------------------------------------------------------------- shipped pickles

def _numpy_global(module: str, name: str):
    for mod in (module.replace("numpy.core", "numpy._core"), module):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"numpy has no {module}.{name}")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"), ("numpy", "ndarray"),
    ("numpy", "dtype"), ("_codecs", "encode"), ("__builtin__", "set"), ("builtins", "set"),
    ("__builtin__", "frozenset"), ("builtins", "frozenset"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays / scalars, sets and builtin containers only; any other global is refused."""

    def find_class(self, module: str, name: str):
        module = module.replace("numpy._core", "numpy.core")  # numpy >= 2 writes numpy._core
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"refusing to unpickle {module}.{name}: the MLT .pkl files only hold numpy arrays "
                            f"and sets (this file is not one of them)")
        if module == "_codecs":
            return codecs.encode
        if module in ("__builtin__", "builtins"):
            return {"set": set, "frozenset": frozenset}[name]
        return _numpy_global(module, name)


def load_numpy_pickle(path: Path):
    """Read a (Python 2) pickle of numpy arrays / sets with :class:`_NumpyOnlyUnpickler` (latin1 strings)."""
    with open(path, "rb") as f:
        try:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc})") from exc


def check_against_shipped(split_dir: Path, targets: np.ndarray, class_names: list[str]) -> dict:
    """Compare the counts and head/medium/tail groups computed from the train list with the DB
    repository's ``class_freq.pkl`` / ``class_split.pkl`` (when present); DataError on any difference."""
    counts = targets.sum(axis=0).astype(np.int64)
    report: dict = {"class_freq": None, "class_split": None}
    freq_file, split_file = Path(split_dir) / "class_freq.pkl", Path(split_dir) / "class_split.pkl"
    if freq_file.is_file():
        shipped = load_numpy_pickle(freq_file)
        freq = np.asarray(shipped["class_freq"]).astype(np.int64).reshape(-1)
        gt = np.asarray(shipped["gt_labels"])
        if freq.shape != counts.shape or not np.array_equal(freq, counts):
            diff = [class_names[c] for c in np.flatnonzero(freq != counts)] if freq.shape == counts.shape else "shape"
            raise DataError(f"class frequencies from the train list differ from {freq_file} ({diff}); the list and "
                            f"the pickle belong to different versions of the benchmark")
        if gt.shape != targets.shape or not np.array_equal(gt.sum(axis=0), counts):
            raise DataError(f"{freq_file} gt_labels {gt.shape} does not match the train list {targets.shape}")
        report["class_freq"] = {"path": str(freq_file), "sha256": sha256_file(freq_file), "match": True}
    if split_file.is_file():
        shipped = load_numpy_pickle(split_file)
        ours = multilabel_groups(counts)
        for db_key, key in (("head", "head"), ("middle", "medium"), ("tail", "tail")):
            theirs = sorted(int(c) for c in shipped[db_key])
            if theirs != sorted(ours[key].tolist()):
                raise DataError(f"{key} classes computed from the train list ({sorted(ours[key].tolist())}) differ "
                                f"from {split_file} ({theirs})")
        report["class_split"] = {"path": str(split_file), "sha256": sha256_file(split_file), "match": True}
    return report


# ----------------------------------------------------------------------------- builders

def _find_lists(cfg, data_root: Path, spec: MLTSpec) -> Path:
    split_dir = Path(cfg.split_dir) if cfg.split_dir else Path(data_root)
    files = [spec.train_list, spec.test_list, spec.class_list]
    if not all((split_dir / f).is_file() for f in files):
        missing = [str(split_dir / f) for f in files if not (split_dir / f).is_file()]
        raise DataError(f"{spec.name}: split lists not found: {', '.join(missing)}. Set split_dir= to the folder "
                        f"holding {', '.join(files)} (in this project ../shared/data/splits/{spec.folder})")
    return split_dir


def check_mlt_images(data_root: Path, spec: MLTSpec, firsts: dict[str, str]) -> Path:
    """``data_root`` must exist and hold the first image of the train and of the test list."""
    data_root = Path(data_root)
    looked = {s: data_root / rel for s, rel in firsts.items()}
    missing = {s: p for s, p in looked.items() if not p.is_file()}
    if data_root.is_dir() and not missing:
        return data_root
    where = "\n".join(f"  - {s}: {p}" for s, p in looked.items())
    raise DataError(f"{spec.name}: images not found under data_root={data_root} (resolved {data_root.resolve()}). "
                    f"Looked for the first image of each list:\n{where}\n"
                    f"data_root must be {spec.image_layout}. Set it with data_root= (params / --set data_root=...), "
                    f"--data-root or $LTR_DATA_ROOT; the images are not in ../shared/data (only the split lists).")


def build_mlt(cfg, data_root: Path, name: str) -> LTData:
    """VOC-MLT / COCO-MLT from the split lists (``split_dir``) and a user's image root (``data_root``)."""
    spec = MLT_SPECS[name]
    split_dir = _find_lists(cfg, data_root, spec)
    class_names = read_label_names(split_dir / spec.class_list)
    rel_train, t_train = read_multilabel_list(split_dir / spec.train_list, len(class_names))
    rel_test, t_test = read_multilabel_list(split_dir / spec.test_list, len(class_names))
    counts = t_train.sum(axis=0).astype(np.int64)
    if (counts == 0).any():
        raise DataError(f"{spec.name}: classes {[class_names[c] for c in np.flatnonzero(counts == 0)]} have no "
                        f"training image in {split_dir / spec.train_list}")
    shipped = check_against_shipped(split_dir, t_train, class_names)
    root = check_mlt_images(Path(data_root), spec, {"train": rel_train[0], "test": rel_test[0]})
    base = str(root.resolve())
    groups = multilabel_groups(counts)
    splits = {}
    for s, rel, t in (("train", rel_train, t_train), ("test", rel_test, t_test)):
        splits[s] = Split(labels=torch.from_numpy(rarest_labels(t, counts)), paths=[f"{base}/{r}" for r in rel],
                          targets=torch.from_numpy(t))
    provenance = {
        "dataset": name, "source": {"kind": "multilabel_list", "path": str(root.resolve()),
                                    "split_dir": str(split_dir.resolve())},
        "split_files": {s: {"path": str(split_dir / f), "sha256": sha256_file(split_dir / f)}
                        for s, f in (("train", spec.train_list), ("test", spec.test_list), ("classes", spec.class_list))},
        "sizes": {"train": len(rel_train), "test": len(rel_test), "test_unlabelled": int((t_test.sum(1) == 0).sum())},
        "published_sizes": {"train": spec.train_images, "test": spec.test_images,
                            "groups": dict(zip(("head", "medium", "tail"), spec.group_sizes))},
        "class_counts": counts.tolist(), "group_counts": counts.tolist(),
        "groups": {g: idx.tolist() for g, idx in groups.items()},
        "shipped_check": shipped,
        "difficult": "VOC difficult objects count as positives (the DB loader's rule; methods.md §1.7)",
    }
    return LTData(name=name, class_names=class_names, train=splits["train"], test=splits["test"],
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=cfg.image_size or DEFAULT_IMAGE_SIZE,
                  provenance=provenance)


# ----------------------------------------------------------------------------- validation split

def _subset(split: Split, idx: np.ndarray) -> Split:
    t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    return Split(labels=split.labels[t], images=split.images[t] if split.images is not None else None,
                 paths=[split.paths[i] for i in idx] if split.paths is not None else None,
                 targets=split.targets[t] if split.targets is not None else None)


def carve_val_indices(rarest: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices, stratified by the rarest label: each stratum of n images gives
    min(floor(fraction n + 1/2), n − 1) random images to val (never all of it), with ``RandomState(seed)``."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.RandomState(seed)
    val = []
    for c in np.unique(rarest):
        members = np.flatnonzero(rarest == c)
        k = min(int(math.floor(fraction * members.size + 0.5)), members.size - 1)
        if k > 0:
            val.append(rng.permutation(members)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(rarest.size), val_idx)
    return train_idx, val_idx


def carve_val_split(data: LTData, fraction: float, seed: int) -> LTData:
    """A copy of ``data`` whose train split loses a stratified ``fraction`` to a new ``val`` split.

    The shot groups stay those of the full training list (``provenance["group_counts"]``, the
    published protocol); the loss weights and the sampler then see the reduced counts. TailCLIP and
    LMPT select checkpoints (and TailCLIP its hyperparameters) on the *test* split; this held-out split
    is what we monitor and tune on instead.
    """
    if data.train.targets is None:
        raise DataError(f"carve_val_split is for multi-label data; {data.name} has no targets")
    train_idx, val_idx = carve_val_indices(data.train.labels.numpy(), fraction, seed)
    provenance = dict(data.provenance)
    provenance.setdefault("group_counts", [int(c) for c in data.class_counts])
    provenance["val"] = {"fraction": fraction, "seed": seed, "rule": "stratified by rarest label",
                         "indices": val_idx.tolist()}
    out = LTData(name=data.name, class_names=list(data.class_names), train=_subset(data.train, train_idx),
                 test=data.test, val=_subset(data.train, val_idx), open=data.open, mean=data.mean, std=data.std,
                 image_size=data.image_size, provenance=provenance)
    empty = np.flatnonzero(out.class_counts == 0)
    if empty.size:
        raise DataError(f"the validation split took every training image of classes {empty.tolist()}; "
                        f"use a smaller validation fraction")
    return out


def group_counts(data: LTData) -> np.ndarray:
    """The counts that define head/medium/tail: the full training list's (before any val carving)."""
    return np.asarray(data.provenance.get("group_counts", data.class_counts), dtype=np.int64)
