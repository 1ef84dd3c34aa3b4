"""Multi-label loaders: the class-occurrence sampler of TailCLIP (:class:`OccurrenceSampler`), TailCLIP's
squash preprocessing, and :func:`make_multilabel_loader` over a split of :mod:`ltr_core.data.multilabel`
(samplers by name: :data:`ltr_core.registries.ML_SAMPLER_REGISTRY`)."""

from __future__ import annotations

import numpy as np
import torch

from ..registries import ML_SAMPLER_REGISTRY, factory
from .base import DataError, LTData, Split
from .device_loader import DeviceTensorLoader
from .image_list import ImageFileDataset
from .loaders import FileLoader
from .samplers import EpochSampler, InstanceSampler, epoch_generator
from .transforms import IMAGENET_MEAN, IMAGENET_STD

ML_SAMPLERS = tuple(ML_SAMPLER_REGISTRY)  # ("occurrence", "instance")


# ----------------------------------------------------------------------------- sampler

def image_occurrence_weights(targets, power: float, class_counts=None) -> np.ndarray:
    """u_i = (Σ_{c∈Y_i} N / n_c)^s / max_j (...)  (TailCLIP's sampler; N images, n_c containing c).

    Images without labels get weight 0. ``class_counts`` defaults to the column sums of ``targets``.
    """
    t = np.asarray(targets, dtype=np.float64) > 0
    n = np.asarray(class_counts if class_counts is not None else t.sum(axis=0), dtype=np.float64)
    if (n[t.any(axis=0)] < 1).any():
        raise DataError("image_occurrence_weights: a class with positives has count 0")
    inv = np.where(n > 0, t.shape[0] / np.maximum(n, 1), 0.0)
    raw = np.power(t.astype(np.float64) @ inv, float(power))
    raw[~t.any(axis=1)] = 0.0
    if raw.max() <= 0:
        raise DataError("image_occurrence_weights: no image has a label")
    return raw / raw.max()


class OccurrenceSampler(EpochSampler):
    """Class-occurrence-based sampling (TailCLIP): ``num_samples`` (default N) draws with replacement,
    image i with probability u_i / Σ_j u_j (:func:`image_occurrence_weights`), order a pure function of
    (seed, epoch). The expected share of drawn images containing class c is Σ_i u_i [c ∈ Y_i] / Σ_i u_i.
    """

    def __init__(self, targets, *, seed: int, power: float, num_samples: int | None = None) -> None:
        t = torch.as_tensor(np.asarray(targets))
        super().__init__(torch.zeros(t.shape[0], dtype=torch.int64), seed=seed, num_samples=num_samples)
        self.power = float(power)
        self.weights = torch.as_tensor(image_occurrence_weights(t.numpy(), power), dtype=torch.float64)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)


def occurrence_sampler(split: Split, *, seed: int, power: float) -> EpochSampler:
    """``occurrence``: :class:`OccurrenceSampler` over the split's multi-hot targets (TailCLIP)."""
    return OccurrenceSampler(split.targets, seed=seed, power=power)


def instance_ml_sampler(split: Split, *, seed: int, power: float) -> EpochSampler:
    """``instance``: a random permutation of the images each epoch (``power`` unused)."""
    return InstanceSampler(split.labels, seed=seed)


class _InOrder(EpochSampler):
    """0, 1, ..., N-1 (evaluation order; the device loader counts samples by its sampler, not by the
    [N, C] targets it carries)."""

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        return torch.arange(self.num_samples, dtype=torch.int64)


# ----------------------------------------------------------------------------- loaders

class MultiLabelFileDataset(ImageFileDataset):
    """(image, multi-hot target [C]) from absolute paths; keys as :class:`ImageFileDataset` (index or (index, seed))."""

    def target(self, i: int):
        return self.labels[i]


def squash_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, flip: bool,
                     interpolation: str = "bilinear"):
    """TailCLIP's preprocessing: Resize((S, S)) (squash, no crop), optional horizontal flip, normalise."""
    from torchvision.transforms import v2  # on first use: see ltr_core.data.transforms

    mode = v2.InterpolationMode(interpolation)
    steps = [v2.Resize((image_size, image_size), interpolation=mode, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def make_multilabel_loader(data: LTData, split: str, *, train: bool, batch_size: int, device, image_size: int,
                           mean, std, sampler: str = "occurrence", power: float = 1.0, seed: int = 0,
                           num_workers: int = 2, flip: bool = True, interpolation: str = "bilinear"):
    """A loader yielding (x [B, 3, S, S], targets int64 [B, C]) on ``device``.

    train: ``sampler`` occurrence (:class:`OccurrenceSampler`, power s) or instance (a permutation),
    horizontal flip; eval: sequential, no augmentation. Images are squashed to S × S (no crop).
    In-memory splits (mosaic-MLT) use the device loader (bilinear resize on the device); file splits
    (VOC/COCO) PIL workers with ``interpolation``.
    """
    part = data.split(split)
    if part.targets is None:
        raise DataError(f"split {split!r} of {data.name} has no multi-hot targets; build a multi-label dataset "
                        f"(voc_mlt, coco_mlt, mosaic_mlt, ...)")
    if sampler not in ML_SAMPLER_REGISTRY:
        raise DataError(f"unknown multi-label sampler {sampler!r}; use one of {ML_SAMPLERS}")
    epoch_sampler = factory(ML_SAMPLER_REGISTRY, sampler)(part, seed=seed, power=power) if train else None
    targets = part.targets.to(torch.int64)
    if part.images is not None:
        return DeviceTensorLoader(part.images, targets, batch_size=batch_size, device=device, train=train,
                                  sampler=epoch_sampler or _InOrder(part.labels, seed=seed), mean=mean, std=std, image_size=image_size, crop_padding=0,
                                  flip=flip, augment=train and flip, seed=seed)
    if part.paths is None:
        raise DataError(f"split {split!r} of {data.name} holds neither images nor paths; rebuild it with build_data")
    transform = squash_transform(image_size, mean, std, flip=train and flip, interpolation=interpolation)
    dataset = MultiLabelFileDataset(part.paths, targets, transform)
    return FileLoader(dataset, batch_size=batch_size, device=device, sampler=epoch_sampler, seed=seed,
                      num_workers=num_workers)
