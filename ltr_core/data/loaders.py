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

from .. import dist as _dist

from .base import DataError, LTData
from .device_loader import DeviceTensorLoader
from .image_list import ImageFileDataset
from .samplers import SEED_STRIDE, EpochSampler, RankSlicedSampler, SequentialEpochSampler, build_sampler
from .transforms import eval_transform, train_transform

_POSITION_STRIDE = 1_000_000_007


class SeededKeySampler(Sampler):
    """Yields (index, sample_seed) with sample_seed = ((seed*1_000_003 + epoch)*1_000_000_007 + pos) mod 2^63."""

    def __init__(self, base: EpochSampler, seed: int) -> None:
        self.base, self.seed = base, int(seed)

    def __iter__(self):
        epoch = self.base.epoch
        start = (self.seed * SEED_STRIDE + epoch) * _POSITION_STRIDE
        # DDP (RankSlicedSampler): local position p is global position rank + world_size * p, so every
        # sample gets the seed it has in the single-process epoch
        offset, stride = getattr(self.base, "rank", 0), getattr(self.base, "world_size", 1)
        for pos, i in enumerate(self.base.indices(epoch).tolist()):
            yield i, (start + offset + stride * pos) % (1 << 63)

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
                rrc_scale_min: float = 0.08, shard: bool = True, file_backend: str | None = None):
    """A loader over ``data.split(split)``: train -> sampler order + augmentation; eval -> sequential, none.

    ``epochs`` (the run's total epochs) is required by the ``progressive`` sampler and ignored otherwise.
    ``augment_mode`` (small-image path): ``crop_pad`` (pad + random crop + flip) or ``rrc``
    (RandomResizedCrop with scale (rrc_scale_min, 1) + flip, straight to the input size).

    Under DDP (:mod:`ltr_core.dist`, ``shard=True``) the loader yields this rank's strided slice of the
    epoch (train and eval) with a per-rank batch of ``batch_size / world_size``; it is marked
    ``loader.shard = (rank, world_size)`` and :func:`ltr_core.engine.predict` all-gathers its outputs
    back into the full split in order. ``shard=False`` gives every rank the whole split.
    ``file_backend`` (file splits; default: ``data.input_options`` from the config, else ``pil``):
    ``pil`` (PIL workers, the faithful path) | ``uint8_cache`` (:mod:`ltr_core.data.uint8_cache`) |
    ``auto`` (the cache where it fits on disk, else ``pil``: :func:`~ltr_core.data.uint8_cache.resolve_file_backend`) |
    ``torchcodec`` (:mod:`ltr_core.data.gpu_decode`, falls back to ``pil`` without CUDA/torchcodec).
    """
    part = data.split(split)
    epoch_sampler = build_sampler(sampler, part.labels, seed=seed, epochs=epochs) if train else None
    rank, world = (_dist.rank(), _dist.world_size()) if shard else (0, 1)
    aug_seed = _dist.rank_seed(seed) if shard else seed  # device augmentation stream: per rank (rank 0 = seed)
    if world > 1:
        if train and batch_size % world:
            raise DataError(f"batch_size {batch_size} must be divisible by the {world} DDP processes "
                            f"(each rank takes batch_size / {world}); change batch_size or --nproc")
        batch_size = batch_size // world if train else -(-batch_size // world)
        epoch_sampler = RankSlicedSampler(epoch_sampler or SequentialEpochSampler(part.labels, seed=seed), rank, world)
    if part.images is not None:
        return _mark_shard(DeviceTensorLoader(
            part.images, part.labels, batch_size=batch_size, device=device, train=train,
            sampler=epoch_sampler, mean=data.mean, std=data.std, image_size=data.image_size,
            crop_padding=crop_padding, augment=augment, drop_last=drop_last, seed=aug_seed,
            augment_mode=augment_mode, rrc_scale=(rrc_scale_min, 1.0)), rank, world)
    if part.paths is None:
        raise DataError(f"split {split!r} of {data.name} holds neither images nor paths; rebuild it with build_data")
    options = getattr(data, "input_options", None) or {}
    backend = file_backend or options.get("file_backend", "pil")
    if backend == "auto":  # data built without build_data (which resolves it once)
        from .uint8_cache import resolve_file_backend

        data.input_options = options
        backend = resolve_file_backend(data)
    if backend == "uint8_cache":
        return _mark_shard(_cached_loader(data, split, options, train=train, augment=augment, batch_size=batch_size,
                                          device=device, sampler=epoch_sampler, seed=aug_seed, drop_last=drop_last,
                                          rrc_scale_min=rrc_scale_min), rank, world)
    if backend == "torchcodec":
        gpu = _gpu_decode_loader(data, part, train=train, augment=augment, batch_size=batch_size, device=device,
                                 sampler=epoch_sampler, seed=seed, num_workers=num_workers, drop_last=drop_last,
                                 rrc_scale_min=rrc_scale_min)
        if gpu is not None:
            return _mark_shard(gpu, rank, world)
    elif backend != "pil":
        raise DataError(f"unknown file_backend {backend!r}; use pil, uint8_cache, auto or torchcodec")
    if train and augment:  # rrc_scale_min also sets the file path's RandomResizedCrop scale (default 0.08)
        transform = train_transform(data.image_size, data.mean, data.std, scale=(rrc_scale_min, 1.0))
    else:
        transform = eval_transform(data.image_size, data.mean, data.std)
    dataset = ImageFileDataset(part.paths, part.labels, transform)
    return _mark_shard(FileLoader(dataset, batch_size=batch_size, device=device, sampler=epoch_sampler, seed=seed,
                                  num_workers=num_workers, drop_last=drop_last), rank, world)


def _mark_shard(loader, rank: int, world: int):
    """Tag a DDP rank shard (``engine.predict`` gathers the shards of a tagged loader)."""
    if world > 1:
        loader.shard = (rank, world)
    return loader


def _cached_loader(data: LTData, split: str, options: dict, *, train: bool, augment: bool, batch_size: int, device,
                   sampler, seed: int, drop_last: bool, rrc_scale_min: float):
    """The uint8-cache loader of a file split (cache built once, by rank 0 under DDP)."""
    from .uint8_cache import CachedImageLoader, default_cache_size, load_or_build, split_sha_of

    part = data.split(split)
    size = int(options.get("cache_size") or 0) or default_cache_size(data.image_size)
    split_sha = split_sha_of(data, split)
    build = dict(size=size, cache_dir=options.get("cache_dir") or "data/cache", name=f"{data.name}-{split}",
                 split_sha=split_sha, interpolation=options.get("interpolation") or "bilinear")
    if _dist.is_distributed() and not _dist.is_main():
        _dist.barrier()  # rank 0 builds the cache first
    images = load_or_build(part.paths, part.labels.numpy(), **build)
    if _dist.is_distributed() and _dist.is_main():
        _dist.barrier()
    return CachedImageLoader(images, part.labels, batch_size=batch_size, device=device, train=train, sampler=sampler,
                             mean=data.mean, std=data.std, image_size=data.image_size, augment=augment,
                             drop_last=drop_last, seed=seed, rrc_scale=(rrc_scale_min, 1.0))


_FALLBACK_SAID: set = set()


def _gpu_decode_loader(data: LTData, part, *, train: bool, augment: bool, batch_size: int, device, sampler, seed: int,
                       num_workers: int, drop_last: bool, rrc_scale_min: float):
    """TorchCodec GPU-decode loader, or None (PIL fallback, said once) without CUDA or torchcodec."""
    from .gpu_decode import GPUDecodeLoader, torchcodec_decoder

    decode = torchcodec_decoder() if torch.device(device).type == "cuda" else None
    if decode is None:
        if "torchcodec" not in _FALLBACK_SAID:
            _FALLBACK_SAID.add("torchcodec")
            on_cuda = torch.device(device).type == "cuda"
            why = "torchcodec >= 0.16 is not installed" if on_cuda else "the run is not on CUDA"
            print(f"file_backend=torchcodec: {why}; using the PIL DataLoader (file_backend=pil)", flush=True)
        return None
    keys = SeededKeySampler(sampler, seed) if sampler is not None else None
    return GPUDecodeLoader(part.paths, part.labels, batch_size=batch_size, device=device, train=train, augment=augment,
                           sampler=sampler, key_sampler=keys, mean=data.mean, std=data.std,
                           image_size=data.image_size, num_workers=num_workers, drop_last=drop_last,
                           decode_fn=decode, rrc_scale=(rrc_scale_min, 1.0))
