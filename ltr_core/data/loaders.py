"""``make_loader``: one interface over both input paths.

* split with ``images`` (uint8 in memory) -> :class:`DeviceTensorLoader` (data and augmentation on the device);
* split with ``paths`` -> :class:`FileLoader`, a thin wrapper of ``torch.utils.data.DataLoader`` over
  :class:`ImageFileDataset` (PIL in workers, pinned memory on CUDA, persistent workers).

Both have ``set_epoch(e)``, ``__len__`` (batches) and yield ``(x, y)`` on the device. The order of
epoch e is a pure function of (seed, e); on the file path each sample also gets its own
augmentation seed f(seed, e, position), so resumed runs see the same crops whatever the workers.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from .base import DataError, LTData
from .device_loader import DeviceTensorLoader
from .image_list import ImageFileDataset
from .samplers import SEED_STRIDE, EpochSampler, build_sampler
from .transforms import eval_transform, train_transform

_POSITION_STRIDE = 1_000_000_007


class SeededKeySampler(Sampler):
    """Yields (index, sample_seed) with sample_seed = ((seed*1_000_003 + epoch)*1_000_000_007 + pos) mod 2^63."""

    def __init__(self, base: EpochSampler, seed: int) -> None:
        self.base, self.seed = base, int(seed)

    def __iter__(self):
        epoch = self.base.epoch
        start = (self.seed * SEED_STRIDE + epoch) * _POSITION_STRIDE
        for pos, i in enumerate(self.base.indices(epoch).tolist()):
            yield i, (start + pos) % (1 << 63)

    def __len__(self) -> int:
        return len(self.base)


class FileLoader:
    """DataLoader over image files with the DeviceTensorLoader interface."""

    def __init__(self, dataset: ImageFileDataset, *, batch_size: int, device, sampler: EpochSampler | None,
                 seed: int = 0, num_workers: int = 2, drop_last: bool = False) -> None:
        self.device = torch.device(device)
        self.sampler = sampler
        self.loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False,
            sampler=SeededKeySampler(sampler, seed) if sampler is not None else None,
            num_workers=num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def make_loader(data: LTData, split: str, *, train: bool, batch_size: int, device, sampler: str = "instance",
                seed: int = 0, num_workers: int = 2, augment: bool = True, crop_padding: int = 4,
                drop_last: bool = False, epochs: int | None = None, augment_mode: str = "crop_pad",
                rrc_scale_min: float = 0.08):
    """A loader over ``data.split(split)``: train -> sampler order + augmentation; eval -> sequential, none.

    ``epochs`` (the run's total epochs) is required by the ``progressive`` sampler and ignored otherwise.
    ``augment_mode`` (small-image path): ``crop_pad`` (pad + random crop + flip) or ``rrc``
    (RandomResizedCrop with scale (rrc_scale_min, 1) + flip, straight to the input size).
    """
    part = data.split(split)
    epoch_sampler = build_sampler(sampler, part.labels, seed=seed, epochs=epochs) if train else None
    if part.images is not None:
        return DeviceTensorLoader(part.images, part.labels, batch_size=batch_size, device=device, train=train,
                                  sampler=epoch_sampler, mean=data.mean, std=data.std, image_size=data.image_size,
                                  crop_padding=crop_padding, augment=augment, drop_last=drop_last, seed=seed,
                                  augment_mode=augment_mode, rrc_scale=(rrc_scale_min, 1.0))
    if part.paths is None:
        raise DataError(f"split {split!r} of {data.name} holds neither images nor paths; rebuild it with build_data")
    make = train_transform if train and augment else eval_transform
    dataset = ImageFileDataset(part.paths, part.labels, make(data.image_size, data.mean, data.std))
    return FileLoader(dataset, batch_size=batch_size, device=device, sampler=epoch_sampler, seed=seed,
                      num_workers=num_workers, drop_last=drop_last)
