"""Open-set variants of the small-image datasets: some classes are held out of training and their
test images become the open set (label -1), as in OLTR's open-world protocol (Liu et al., CVPR 2019).

* ``cifar10_lt_open`` (CIFAR-10-LT-open): train on a long-tailed CIFAR-10 of the *known* classes;
  the test images of the held-out classes (1,000 each) are the open set.
* ``digits_lt_open`` (digits-LT-open): the same on scikit-learn's digits (tests, quickstart).

``open_classes`` (a data parameter) names the held-out classes by their original label; empty
gives the default **(8, 9)**: CIFAR-10 ship and truck, digits 8 and 9. The known classes keep their
original order and are relabelled 0..K-1, so the long-tail profile runs over them in label order:
n_c = floor(n_max * IR^(-c/(K-1))) (class 0 is the head). CIFAR-10-LT-open IR 100 with the default:
5000, 2589, 1341, 694, 359, 186, 96, 50 (airplane ... horse; 10,315 train images; 8,000 known test
images + 2,000 open). The subset is drawn with the LDAM-DRW rule (:func:`select_lt_indices`,
``RandomState(lt_seed)``, one shuffle per known class in ascending order).

digits-LT-open: per known class (relabelled), the digits-LT construction of
:func:`ltr_core.data.digits.split_digits` (``digits_test_per_class`` test images, then n_c train
images, n_max 120); per held-out digit, ascending, a second ``RandomState(lt_seed)`` shuffles its
images and the first ``digits_test_per_class`` (50) go to the open set. IR 25 with the default:
120, 75, 47, 30, 19, 12, 7, 4 (many / medium / few = 1 / 3 / 4 classes), 400 known test + 100 open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import DataError, LTData, Split
from .cifar import SPECS, load_raw
from .digits import DEFAULT_IMAGE_SIZE as DIGITS_IMAGE_SIZE
from .digits import DEFAULT_N_MAX as DIGITS_N_MAX
from .digits import DIGITS_MEAN, DIGITS_STD, _to_uint8_rgb, load_digits_cached, split_digits
from .profiles import lt_counts, select_lt_indices

DEFAULT_OPEN_CLASSES = {"cifar10_lt_open": (8, 9), "digits_lt_open": (8, 9)}
GENERATOR = "ltr_core.data.open_set v1 (held-out classes -> open set; known classes relabelled in order)"


def split_classes(dataset: str, num_classes: int, open_classes, class_names=None) -> tuple[list[int], list[int]]:
    """(known, held-out) original class indices; DataError for out-of-range, repeated or too many classes."""
    held = list(open_classes) if open_classes else list(DEFAULT_OPEN_CLASSES[dataset])
    where = f"{dataset}: open_classes={held}"
    bad = [c for c in held if not isinstance(c, (int, np.integer)) or not 0 <= int(c) < num_classes]
    if bad:
        names = f" ({', '.join(f'{i} {n}' for i, n in enumerate(class_names))})" if class_names else ""
        raise DataError(f"{where}: {bad} not class indices in [0, {num_classes}){names}; "
                        f"name the held-out classes by their original label")
    if len(set(held)) != len(held):
        raise DataError(f"{where}: a class is listed twice; list each held-out class once")
    known = [c for c in range(num_classes) if c not in set(held)]
    if len(known) < 2:
        raise DataError(f"{where} leaves {len(known)} known class(es); hold out at most {num_classes - 2} "
                        f"of the {num_classes} classes")
    return known, sorted(int(c) for c in held)


def relabel(labels: np.ndarray, known: list[int]) -> np.ndarray:
    """Original labels -> 0..K-1 for known classes, -1 for held-out ones."""
    lut = np.full(int(labels.max()) + 1 if labels.size else 1, -1, dtype=np.int64)
    lut[known] = np.arange(len(known))
    return lut[labels]


def build_cifar10_lt_open(cfg, data_root: Path) -> LTData:
    """CIFAR-10-LT-open from a DataSection (same sources and cache as ``cifar10_lt``)."""
    spec = SPECS["cifar10_lt"]
    kind, path, raw, cpath = load_raw(cfg, data_root, spec)
    names = list(raw["class_names"])
    known, held = split_classes("cifar10_lt_open", len(names), cfg.open_classes, names)
    train_y = relabel(raw["train_labels"].numpy(), known)
    test_y = relabel(raw["test_labels"].numpy(), known)
    n_max = cfg.n_max or spec.n_max
    counts = lt_counts(n_max, len(known), cfg.imbalance_ratio, cfg.lt_profile)
    selected = select_lt_indices(train_y, counts, seed=cfg.lt_seed)
    idx = torch.from_numpy(np.concatenate([selected[c] for c in range(len(known))]))
    test_known = torch.from_numpy(np.flatnonzero(test_y >= 0))
    test_open = torch.from_numpy(np.flatnonzero(test_y < 0))
    provenance = {
        "dataset": "cifar10_lt_open", "source": {"kind": kind, "path": str(path.resolve())}, "cache": str(cpath),
        "generator": GENERATOR, "imbalance_ratio": cfg.imbalance_ratio, "lt_profile": cfg.lt_profile,
        "n_max": n_max, "lt_seed": cfg.lt_seed, "counts": counts,
        "known_classes": {str(i): names[c] for i, c in enumerate(known)},
        "open_classes": {str(c): names[c] for c in held},
        "indices": {str(c): selected[c].tolist() for c in range(len(known))},
    }
    return LTData(
        name="cifar10_lt_open", class_names=[names[c] for c in known],
        train=Split(labels=torch.from_numpy(train_y)[idx], images=raw["train_images"][idx]),
        test=Split(labels=torch.from_numpy(test_y)[test_known], images=raw["test_images"][test_known]),
        open=Split(labels=torch.full((len(test_open),), -1, dtype=torch.int64), images=raw["test_images"][test_open]),
        mean=spec.mean, std=spec.std, image_size=cfg.image_size or 32, provenance=provenance,
    )


def build_digits_lt_open(cfg, data_root=None) -> LTData:
    """digits-LT-open from a DataSection (``data_root`` is not used)."""
    digits = load_digits_cached(cfg.cache_dir)
    targets = np.asarray(digits.target, dtype=np.int64)
    known, held = split_classes("digits_lt_open", 10, cfg.open_classes)
    n_max = cfg.n_max or DIGITS_N_MAX
    smallest = int(np.bincount(targets)[known].min()) - cfg.digits_test_per_class
    if n_max > smallest:
        raise DataError(f"digits_lt_open: n_max={n_max} exceeds the {smallest} images left in the smallest known "
                        f"class after holding out digits_test_per_class={cfg.digits_test_per_class}; "
                        f"use n_max <= {smallest} (0 gives {DIGITS_N_MAX})")
    counts = lt_counts(n_max, len(known), cfg.imbalance_ratio, cfg.lt_profile)
    relabelled = relabel(targets, known)
    train_idx, test_idx = split_digits(relabelled, counts, cfg.digits_test_per_class, cfg.lt_seed)
    rng = np.random.RandomState(cfg.lt_seed)
    open_idx = {}
    for c in held:
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        open_idx[c] = idx[:cfg.digits_test_per_class].astype(np.int64)
    images = _to_uint8_rgb(digits.images)
    tr = np.concatenate([train_idx[c] for c in range(len(known))])
    te = np.concatenate([test_idx[c] for c in range(len(known))])
    op = np.concatenate([open_idx[c] for c in held])
    provenance = {
        "dataset": "digits_lt_open", "source": {"kind": "sklearn.datasets.load_digits", "path": ""},
        "generator": GENERATOR, "imbalance_ratio": cfg.imbalance_ratio, "lt_profile": cfg.lt_profile,
        "n_max": n_max, "lt_seed": cfg.lt_seed, "counts": counts, "test_per_class": cfg.digits_test_per_class,
        "known_classes": {str(i): str(c) for i, c in enumerate(known)}, "open_classes": {str(c): str(c) for c in held},
        "indices": {str(c): train_idx[c].tolist() for c in range(len(known))},
        "test_indices": {str(c): test_idx[c].tolist() for c in range(len(known))},
        "open_indices": {str(c): open_idx[c].tolist() for c in held},
    }
    return LTData(
        name="digits_lt_open", class_names=[str(c) for c in known],
        train=Split(labels=torch.from_numpy(relabelled[tr]), images=images[tr]),
        test=Split(labels=torch.from_numpy(relabelled[te]), images=images[te]),
        open=Split(labels=torch.full((len(op),), -1, dtype=torch.int64), images=images[op]),
        mean=DIGITS_MEAN, std=DIGITS_STD, image_size=cfg.image_size or DIGITS_IMAGE_SIZE, provenance=provenance,
    )
