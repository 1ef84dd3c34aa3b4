"""mosaic-MLT: an offline multi-label long-tailed benchmark built from any single-label dataset.

Each image is a 2 × 2 mosaic of four real images of the source dataset (default CIFAR-10, 32 px ->
64 px mosaics; ``mosaic_digits_mlt`` uses the embedded scikit-learn digits, 8 px -> 16 px); its label
set is the union of the four tiles' labels. Construction (deterministic: one
``np.random.RandomState(lt_seed)``, used in this order):

1. **Occurrence profile.** n_c = the long-tail profile of the single-label sets
   (:func:`ltr_core.data.profiles.lt_counts`: ``n_max`` images contain the head class, IR =
   ``imbalance_ratio``, ``lt_profile`` exp or step): n_c is the number of *train mosaics containing
   class c*, exactly.
2. **Label sets** (:func:`mosaic_label_sets`). A pool of P = n_max + ceil(T / 4) empty mosaics
   (T = Σ n_c); classes in decreasing n_c each join n_c distinct mosaics drawn uniformly among those
   with fewer than 4 labels (there are always >= n_max of them, so this never fails); mosaics left
   empty are dropped and the rest shuffled. Every mosaic has 1-4 distinct labels; label co-occurrence
   is random.
3. **Tiles** (:func:`mosaic_tiles`). A mosaic with label set Y gets one tile per class of Y plus
   4 − |Y| tiles of classes drawn uniformly from Y (so the union is exactly Y), in random positions;
   each tile is the next image of its class in a shuffled cycle over the source *train* images of that
   class (reshuffled when exhausted; the number of reuses is recorded).
4. **Test mosaics** (balanced-ish): every source *test* image exactly once, in random groups of four
   (a remainder < 4 is dropped), labels = union; every class fills the same number of tiles.

Defaults for ``n_max`` (0): CIFAR-10 800 (IR 100: 800, 479, 287, 172, 103, 61, 37, 22, 13, 8 mosaics
containing each class, ~1,100 train mosaics; groups head >= 100 / medium 20-99 / tail < 20 = 5 / 3 / 2),
CIFAR-100 200, digits 40. The train split is drawn from the source's *full* train set (IR 1) and the
test split from its test set, so no test pixel is seen in training.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from .base import DataError, LTData, Split
from .multilabel import rarest_labels
from .profiles import lt_counts

TILES = 4
DEFAULT_N_MAX = {"cifar10_lt": 800, "cifar100_lt": 200, "digits_lt": 40}
GENERATOR = "ltr_core.data.mosaic v1 (occurrence profile -> label sets -> tiles; test: all test images in fours)"


def mosaic_label_sets(counts, rng: np.random.RandomState, tiles: int = TILES) -> np.ndarray:
    """Multi-hot label sets (bool [M, C]) in which class c occurs in exactly ``counts[c]`` rows and every
    row has 1..``tiles`` labels (step 2 of the module doc)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 1).any():
        raise DataError(f"mosaic occurrence counts must be >= 1 for every class, got {counts.tolist()}")
    pool = int(counts.max() + math.ceil(counts.sum() / tiles))
    member = np.zeros((pool, counts.size), dtype=bool)
    fill = np.zeros(pool, dtype=np.int64)
    for c in np.argsort(-counts, kind="stable"):
        open_rows = np.flatnonzero(fill < tiles)
        chosen = rng.choice(open_rows, size=int(counts[c]), replace=False)
        member[chosen, c] = True
        fill[chosen] += 1
    member = member[fill > 0]
    return member[rng.permutation(member.shape[0])]


def _class_cycles(labels: np.ndarray, num_classes: int, rng: np.random.RandomState):
    """``take(c)``: the next source index of class c from a shuffled cycle over its images (reshuffled
    when exhausted), and a dict counting the reshuffles after the first pass ("reuses")."""
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
    queues: list[list[int]] = [[] for _ in range(num_classes)]
    passes = [0] * num_classes
    state = {"reuses": 0}

    def take(c: int) -> int:
        if not members[c].size:
            raise DataError(f"the source dataset has no image of class {c}; every class needs at least one")
        if not queues[c]:
            state["reuses"] += passes[c] > 0
            passes[c] += 1
            queues[c] = rng.permutation(members[c]).tolist()[::-1]
        return queues[c].pop()

    return take, state


def mosaic_tiles(label_sets: np.ndarray, source_labels: np.ndarray, rng: np.random.RandomState,
                 tiles: int = TILES) -> tuple[np.ndarray, np.ndarray, int]:
    """(tile classes int64 [M, tiles], source indices int64 [M, tiles], cycle reuses) for the label sets
    (step 3 of the module doc); the union of a row's tile classes is its label set."""
    take, state = _class_cycles(np.asarray(source_labels), label_sets.shape[1], rng)
    classes = np.empty((label_sets.shape[0], tiles), dtype=np.int64)
    for i, row in enumerate(label_sets):
        present = np.flatnonzero(row)
        extra = rng.choice(present, size=tiles - present.size, replace=True) if present.size < tiles else []
        classes[i] = rng.permutation(np.concatenate([present, np.asarray(extra, dtype=np.int64)]))
    sources = np.array([[take(int(c)) for c in row] for row in classes], dtype=np.int64).reshape(classes.shape)
    return classes, sources, state["reuses"]


def compose_mosaics(images: torch.Tensor, sources: np.ndarray) -> torch.Tensor:
    """uint8 [N, 3, H, W] source images and indices [M, 4] -> uint8 [M, 3, 2H, 2W]
    (tiles 0, 1 on top, 2, 3 below, left to right)."""
    idx = torch.as_tensor(np.asarray(sources, dtype=np.int64))
    t = images[idx.reshape(-1)].reshape(idx.shape[0], 2, 2, *images.shape[1:])  # [M, row, col, C, H, W]
    return t.permute(0, 3, 1, 4, 2, 5).reshape(idx.shape[0], images.shape[1], 2 * images.shape[2], 2 * images.shape[3])


def targets_from_tiles(tile_classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot uint8 [M, C]: the union of each row's tile classes."""
    out = np.zeros((tile_classes.shape[0], num_classes), dtype=np.uint8)
    np.put_along_axis(out, tile_classes, 1, axis=1)
    return out


def group_test_mosaics(num_images: int, rng: np.random.RandomState, tiles: int = TILES) -> np.ndarray:
    """Source test indices [floor(N / 4), 4]: every test image once, in random groups of four."""
    order = rng.permutation(num_images)
    m = num_images // tiles
    return order[: m * tiles].reshape(m, tiles).astype(np.int64)


def build_mosaic_mlt(cfg, data_root: Path, source: str, name: str) -> LTData:
    """mosaic-MLT from the single-label dataset ``source`` (a :data:`ltr_core.data.DATASETS` name whose
    splits hold images in memory). Uses ``n_max``, ``imbalance_ratio``, ``lt_profile`` and ``lt_seed``
    for the mosaics; the source is built at IR 1 from ``data_root`` (CIFAR: the CIFAR-10 root)."""
    from . import DATASETS  # late: the registry imports this module

    if source not in DATASETS:
        raise DataError(f"mosaic source {source!r} is not a dataset; available: {', '.join(DATASETS)}")
    src_cfg = dataclasses.replace(cfg, dataset=source, imbalance_ratio=1.0, n_max=0, lt_profile="exp", image_size=0)
    src = DATASETS[source](src_cfg, data_root)
    if src.train.images is None or src.test.images is None:
        raise DataError(f"mosaic-MLT needs a source whose images are held in memory (CIFAR, digits); "
                        f"{source} reads files")
    num_classes = src.num_classes
    n_max = cfg.n_max or DEFAULT_N_MAX.get(source, 100)
    counts = lt_counts(n_max, num_classes, cfg.imbalance_ratio, cfg.lt_profile)
    rng = np.random.RandomState(cfg.lt_seed)
    label_sets = mosaic_label_sets(counts, rng)
    train_classes, train_sources, reuses = mosaic_tiles(label_sets, src.train.labels.numpy(), rng)
    train_targets = targets_from_tiles(train_classes, num_classes)
    assert np.array_equal(train_targets.astype(bool), label_sets)
    test_sources = group_test_mosaics(src.test.n, rng)
    test_targets = targets_from_tiles(src.test.labels.numpy()[test_sources], num_classes)
    counts_arr = np.asarray(counts, dtype=np.int64)
    train = Split(labels=torch.from_numpy(rarest_labels(train_targets, counts_arr)),
                  images=compose_mosaics(src.train.images, train_sources), targets=torch.from_numpy(train_targets))
    test = Split(labels=torch.from_numpy(rarest_labels(test_targets, counts_arr)),
                 images=compose_mosaics(src.test.images, test_sources), targets=torch.from_numpy(test_targets))
    h = int(src.train.images.shape[2])
    provenance = {
        "dataset": name, "source_dataset": source, "source": src.provenance.get("source"), "generator": GENERATOR,
        "imbalance_ratio": cfg.imbalance_ratio, "lt_profile": cfg.lt_profile, "n_max": n_max, "lt_seed": cfg.lt_seed,
        "counts": counts, "group_counts": counts, "train_mosaics": int(train.n), "test_mosaics": int(test.n),
        "labels_per_mosaic": {"train": float(train_targets.sum(1).mean()), "test": float(test_targets.sum(1).mean())},
        "tile_reuse_cycles": reuses,
        "train_tiles": train_sources.tolist(), "test_tiles": test_sources.tolist(),
        "source_train_indices": "indices into the source's full train split (IR 1, lt_seed order)",
    }
    return LTData(name=name, class_names=list(src.class_names), train=train, test=test, mean=src.mean, std=src.std,
                  image_size=cfg.image_size or 2 * h, provenance=provenance)
