"""digits-LT: a long-tailed split of scikit-learn's 8x8 handwritten digits (no download needed).

Source: ``sklearn.datasets.load_digits()`` (UCI optical recognition of handwritten digits,
Alpaydin & Kaynak 1998): 1,797 images, 8x8, values 0..16, 174..183 per class.

Construction (deterministic, one ``np.random.RandomState(lt_seed)``), per class c ascending:
shuffle the class's images, hold out the first ``digits_test_per_class`` (50) as the balanced test
set, then keep the first n_c of the remainder, n_c from :func:`lt_counts` (exp profile,
n_max = 120 when ``n_max`` is 0; the smallest remainder is 174 - 50 = 124).
Pixels: uint8 = round(v * 255 / 16), replicated to 3 channels, stored at 8x8 (the loader resizes
to ``image_size``, default 16, on the device).

With imbalance_ratio 25 (the quickstart) the train counts are
120, 83, 58, 41, 28, 20, 14, 9, 6, 4 (383 images): many {0}, medium {1..5}, few {6..9}
(1 / 5 / 4 classes), so every shot group is non-empty. With IR 100 (the config default):
120, 71, 43, 25, 15, 9, 5, 3, 2, 1 (1 / 3 / 6 classes).

Normalisation: mean 0.3053 / std 0.3759 per channel, computed once over all 1,797 images.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .base import DataError, LTData, Split
from .profiles import lt_counts

DIGITS_MEAN = (0.3053, 0.3053, 0.3053)
DIGITS_STD = (0.3759, 0.3759, 0.3759)
DEFAULT_N_MAX = 120
DEFAULT_IMAGE_SIZE = 16
GENERATOR = "ltr_core.data.digits v1"


def _to_uint8_rgb(images: np.ndarray) -> torch.Tensor:
    """[N, 8, 8] floats 0..16 -> uint8 [N, 3, 8, 8] 0..255."""
    u8 = np.round(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(np.repeat(u8[:, None], 3, axis=1).copy())


def split_digits(targets: np.ndarray, counts: list[int], test_per_class: int,
                 seed: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per-class (train, test) index arrays: shuffle, first ``test_per_class`` -> test, next n_c -> train."""
    rng = np.random.RandomState(seed)
    train, test = {}, {}
    for c, n_c in enumerate(counts):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        rest = len(idx) - test_per_class
        if rest < n_c:
            raise DataError(f"digits-LT: class {c} has {len(idx)} images; after holding out "
                            f"{test_per_class} for the test set only {rest} remain but n_max asks for "
                            f"{n_c}; set n_max <= {max(rest, 0)} or lower digits_test_per_class")
        test[c] = idx[:test_per_class].astype(np.int64)
        train[c] = idx[test_per_class:test_per_class + n_c].astype(np.int64)
    return train, test


def load_digits_cached(cache_dir: str | os.PathLike | None = None) -> SimpleNamespace:
    """scikit-learn's digits (``images`` float [1797, 8, 8] in 0..16, ``target`` [1797]); with ``cache_dir`` the
    arrays are kept in ``<cache_dir>/sklearn_digits.npz`` (written atomically), so later runs skip importing
    scikit-learn's dataset module (~1.5 s per notebook kernel). Same arrays either way."""
    path = Path(cache_dir) / "sklearn_digits.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return SimpleNamespace(images=z["images"], target=z["target"])
    from sklearn.datasets import load_digits

    digits = load_digits()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
        np.savez(tmp, images=digits.images, target=digits.target)
        os.replace(tmp, path)
    return SimpleNamespace(images=digits.images, target=digits.target)


def build_digits_lt(cfg, data_root=None) -> LTData:
    """digits-LT from a :class:`~ltr_core.config.DataSection` (``data_root`` is not used)."""
    digits = load_digits_cached(cfg.cache_dir)
    targets = np.asarray(digits.target, dtype=np.int64)
    n_max = cfg.n_max or DEFAULT_N_MAX
    smallest = int(np.bincount(targets).min()) - cfg.digits_test_per_class
    if n_max > smallest:
        raise DataError(f"digits-LT: n_max={n_max} exceeds the {smallest} images left in the smallest "
                        f"class after holding out digits_test_per_class={cfg.digits_test_per_class}; "
                        f"use n_max <= {smallest} (0 gives {DEFAULT_N_MAX})")
    counts = lt_counts(n_max, 10, cfg.imbalance_ratio, cfg.lt_profile)
    train_idx, test_idx = split_digits(targets, counts, cfg.digits_test_per_class, cfg.lt_seed)
    images = _to_uint8_rgb(digits.images)
    tr = np.concatenate([train_idx[c] for c in range(10)])
    te = np.concatenate([test_idx[c] for c in range(10)])
    provenance = {
        "dataset": "digits_lt", "source": {"kind": "sklearn.datasets.load_digits", "path": ""},
        "generator": GENERATOR, "imbalance_ratio": cfg.imbalance_ratio, "lt_profile": cfg.lt_profile,
        "n_max": n_max, "lt_seed": cfg.lt_seed, "counts": counts,
        "test_per_class": cfg.digits_test_per_class,
        "indices": {str(c): train_idx[c].tolist() for c in range(10)},
        "test_indices": {str(c): test_idx[c].tolist() for c in range(10)},
    }
    return LTData(
        name="digits_lt", class_names=[str(c) for c in range(10)],
        train=Split(labels=torch.from_numpy(targets[tr]), images=images[tr]),
        test=Split(labels=torch.from_numpy(targets[te]), images=images[te]),
        mean=DIGITS_MEAN, std=DIGITS_STD, image_size=cfg.image_size or DEFAULT_IMAGE_SIZE,
        provenance=provenance,
    )
