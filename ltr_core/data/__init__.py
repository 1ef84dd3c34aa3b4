"""Long-tailed datasets, samplers and loaders.

``build_data(cfg.data) -> LTData`` builds a dataset by name (:data:`DATASETS`);
``make_loader(data, split, ...)`` returns a loader yielding ``(x, y)`` on the device.
Profiles: n_c = floor(n_max * IR^(-c/(C-1))); shot groups many > 100, medium 20-100, few < 20.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from .base import DataError, LTData, Split
from .cifar import build_cifar_lt
from .digits import build_digits_lt
from .image_list import build_inat18, build_list_dataset
from .loaders import make_loader
from .mosaic import build_mosaic_mlt
from .multilabel import build_mlt
from .open_set import DEFAULT_OPEN_CLASSES, build_cifar10_lt_open, build_digits_lt_open
from .profiles import lt_counts, select_lt_indices, shot_groups
from .samplers import SAMPLERS, build_sampler

__all__ = ["Split", "LTData", "DataError", "build_data", "make_loader", "lt_counts", "shot_groups",
           "select_lt_indices", "build_sampler", "SAMPLERS", "DATASETS", "resolve_data_root"]

# name -> builder(cfg: DataSection, data_root: Path) -> LTData
DATASETS = {
    "digits_lt": build_digits_lt,
    "cifar10_lt": partial(build_cifar_lt, name="cifar10_lt"),
    "cifar100_lt": partial(build_cifar_lt, name="cifar100_lt"),
    "imagenet_lt": partial(build_list_dataset, name="imagenet_lt"),
    "places_lt": partial(build_list_dataset, name="places_lt"),
    "inat18": build_inat18,
    "image_list": partial(build_list_dataset, name="image_list"),
    # multi-label (Split.targets; data/multilabel.py, data/mosaic.py)
    "voc_mlt": partial(build_mlt, name="voc_mlt"),
    "coco_mlt": partial(build_mlt, name="coco_mlt"),
    "mosaic_mlt": partial(build_mosaic_mlt, source="cifar10_lt", name="mosaic_mlt"),
    "mosaic_digits_mlt": partial(build_mosaic_mlt, source="digits_lt", name="mosaic_digits_mlt"),
    "cifar10_lt_open": build_cifar10_lt_open,  # CIFAR-10-LT-open: held-out classes -> open set (data/open_set.py)
    "digits_lt_open": build_digits_lt_open,
}


def resolve_data_root(cfg) -> Path:
    """``cfg.data_root``, else ``$LTR_DATA_ROOT``, else ``data/<dataset>``."""
    return Path(cfg.data_root or os.environ.get("LTR_DATA_ROOT") or Path("data") / cfg.dataset)


def build_data(cfg) -> LTData:
    """Build the dataset named by ``cfg.dataset`` (a :class:`ltr_core.config.DataSection`)."""
    if cfg.dataset not in DATASETS:
        raise DataError(f"unknown dataset {cfg.dataset!r}; available: {', '.join(DATASETS)}")
    if getattr(cfg, "open_classes", ()) and cfg.dataset not in DEFAULT_OPEN_CLASSES:
        raise DataError(f"open_classes={list(cfg.open_classes)} applies to the held-out-class open-set datasets "
                        f"({', '.join(DEFAULT_OPEN_CLASSES)}), not to {cfg.dataset!r}; use one of them or drop open_classes")
    data = DATASETS[cfg.dataset](cfg, resolve_data_root(cfg))
    data.input_options = {k: getattr(cfg, k) for k in ("file_backend", "cache_size", "cache_dir") if hasattr(cfg, k)}
    if data.input_options.get("file_backend") == "auto":
        from .uint8_cache import resolve_file_backend

        resolve_file_backend(data)  # once per run, recorded in its inputs (identity.data_identity)
    return data
