"""Containers shared by every dataset: :class:`Split`, :class:`LTData` and :class:`DataError`.

A dataset is one :class:`LTData`: class names, a long-tailed ``train`` split, a balanced ``test``
split, optional ``val`` and ``open`` (open-set images, label -1) splits, the normalisation
statistics, the network input size and a json-serialisable ``provenance`` record (which files,
which subset) that the runner writes next to the results.

A split either holds its pixels (``images``: uint8 [N, C, H, W] on the CPU — the small-image path
that the device loader keeps on the accelerator) or absolute image ``paths`` (the file path, read
by workers with PIL).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SPLIT_NAMES = ("train", "val", "test", "open")


class DataError(Exception):
    """Bad input to the data package: the message says what was wrong, where, and how to fix it."""


@dataclass
class Split:
    """One split: int64 labels [N] plus either uint8 images [N, C, H, W] or N absolute paths.

    Multi-label splits (VOC-MLT, COCO-MLT, mosaic-MLT) also hold ``targets``, the multi-hot label
    matrix uint8 [N, C] (1 where the image contains the class); their ``labels`` are then each image's
    *rarest* label (the class with the fewest training images among its labels, -1 for an image
    without labels), which stratifies splits and keeps single-label samplers usable.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    paths: list[str] | None = None
    targets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        n = self.labels.numel()
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[0] != n:
                raise DataError(
                    f"Split.images must be uint8 [N, C, H, W] with N = {n} labels, got "
                    f"{self.images.dtype} {tuple(self.images.shape)}; convert the decoded images "
                    f"with torch.as_tensor(array, dtype=torch.uint8).permute(0, 3, 1, 2)")
        if self.paths is not None and len(self.paths) != n:
            raise DataError(f"Split.paths has {len(self.paths)} entries for {n} labels; "
                            f"every image needs exactly one label")
        if self.targets is not None:
            self.targets = torch.as_tensor(self.targets).to(torch.uint8)
            if self.targets.ndim != 2 or self.targets.shape[0] != n or bool((self.targets > 1).any()):
                raise DataError(f"Split.targets must be a multi-hot 0/1 matrix [N, C] with N = {n} rows, got "
                                f"{tuple(self.targets.shape)}; build it with torch.zeros(N, C) and set 1 per label")

    @property
    def n(self) -> int:
        """Number of samples N."""
        return int(self.labels.numel())


@dataclass
class LTData:
    """A long-tailed dataset: splits, class names, normalisation, input size and provenance."""

    name: str
    class_names: list[str]
    train: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    val: Split | None = None
    open: Split | None = None
    provenance: dict = field(default_factory=dict)
    input_options: dict = field(default_factory=dict)  # how file splits are read: file_backend, cache_size, cache_dir (build_data)

    @property
    def num_classes(self) -> int:
        """C = number of class names."""
        return len(self.class_names)

    @property
    def is_multilabel(self) -> bool:
        """True when the splits carry multi-hot ``targets`` (n_c then counts images containing c)."""
        return self.train.targets is not None

    @property
    def class_counts(self) -> np.ndarray:
        """n_c: training images per class (int64 [C]); drives priors, losses and shot groups.

        Multi-label data: n_c = number of training images that contain class c."""
        if self.train.targets is not None:
            return self.train.targets.sum(0, dtype=torch.int64).numpy()
        return _bincount(self.train.labels, self.num_classes)

    @property
    def test_counts(self) -> np.ndarray:
        """Test images per class (int64 [C]); open-set labels (-1) are not counted.

        Multi-label data: test images that contain class c."""
        if self.test.targets is not None:
            return self.test.targets.sum(0, dtype=torch.int64).numpy()
        return _bincount(self.test.labels, self.num_classes)

    def split(self, name: str) -> Split:
        """The split called ``name`` (train | val | test | open); DataError if it is absent."""
        split = getattr(self, name, None) if name in SPLIT_NAMES else None
        if not isinstance(split, Split):
            available = [s for s in SPLIT_NAMES if getattr(self, s) is not None]
            raise DataError(f"dataset {self.name!r} has no split {name!r}; available splits: "
                            f"{', '.join(available)} (set eval_split to one of them)")
        return split


def _bincount(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    y = labels.numpy()
    return np.bincount(y[y >= 0], minlength=num_classes).astype(np.int64)
