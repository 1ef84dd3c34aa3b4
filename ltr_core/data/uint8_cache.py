"""Fast input for large images: a pre-resized uint8 cache, augmented on the device.

``file_backend=uint8_cache`` decodes every JPEG of a split **once** (PIL, threads) into one uint8 array
[N, 3, S, S] on disk (``<cache_dir>/uint8/<dataset>-<split>-<S>px-<key>.npy``, memory-mapped when read),
then batches are gathered from it and augmented on the device, so training never waits for JPEG decode.

Resize rule (``RESIZE_RULE``), applied to the PIL image with torchvision's own ops:
``Resize(S)`` (shorter side to S, bilinear, PIL antialias) then ``CenterCrop(S)``. With the default
S = int(image_size / 0.875) (256 at 224) these are exactly the first pixels of the evaluation
transform Resize(256) + CenterCrop(224), so:

* **eval** = centre crop ``image_size`` of the cached square. Because the square's own crop offset is
  round((W' - S)/2) and (S - image_size)/2 is an even integer, the crop lands on the same pixels as
  the file path's CenterCrop: identical uint8 input (normalisation differs by float rounding only);
* **train** = RandomResizedCrop(image_size, scale=(rrc_scale_min, 1), ratio=(3/4, 4/3)) + flip on the
  device (:func:`ltr_core.data.device_loader.random_resized_crop_flip`, bilinear without antialias)
  **from the S x S square**, not from the original image: crops see the centre square at reduced
  resolution. This is the FFCV / DailyMAE trade (performance.md §5) — a labelled speed variant;
  ``file_backend=pil`` stays the faithful path.

The cache key is sha256 of (resize rule, S, split-file sha256 when the dataset records one, sha256 of
the image paths and labels), so a different list, root, size or rule never reuses a cache. The file
is written to a temporary name and renamed when complete.

Placement: on CUDA the whole array is copied to the GPU when it fits (``on_device=None``: under 60 %
of free memory; ImageNet-LT 256 px = 22.8 GB), else batches are gathered on the host from the
memory map into pinned memory and copied asynchronously (iNat18 256 px = 86 GB), one batch ahead
in a background thread.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .base import DataError
from .device_loader import EpochBatches, normaliser, random_resized_crop_flip
from .samplers import EpochSampler, epoch_generator

CACHE_VERSION = 1
RESIZE_RULE = "torchvision.v2 Resize(S) (antialias) on PIL, CenterCrop(S)"
EVAL_RATIO = 0.875  # Resize(int(S / 0.875)) + CenterCrop(S): 256 -> 224


def default_cache_size(image_size: int) -> int:
    """S = int(image_size / 0.875): the Resize of the evaluation transform (256 for 224)."""
    return int(image_size / EVAL_RATIO)


def cache_key(paths: list[str], labels, size: int, split_sha: str | None = None,
              interpolation: str = "bilinear") -> str:
    """16 hex chars of sha256(rule, interpolation, version, S, split-file sha, sha of paths + labels)."""
    h = hashlib.sha256()
    for p, y in zip(paths, np.asarray(labels).tolist()):
        h.update(f"{p}\t{y}\n".encode())
    doc = {"rule": RESIZE_RULE, "interpolation": interpolation, "version": CACHE_VERSION, "size": int(size),
           "split_sha256": split_sha, "paths_sha256": h.hexdigest()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def resize_square(image: Image.Image, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """The cache's resize rule on one PIL image -> uint8 [3, S, S]."""
    from torchvision.transforms import v2

    resize = v2.Resize(size, interpolation=v2.InterpolationMode(interpolation), antialias=True)
    out = v2.CenterCrop(size)(resize(image.convert("RGB")))
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def _decode_into(out: np.ndarray, paths: list[str], lo: int, hi: int, size: int, interpolation: str) -> None:
    for i in range(lo, hi):
        try:
            with Image.open(paths[i]) as im:
                out[i] = resize_square(im, size, interpolation)
        except Exception as exc:
            raise DataError(f"uint8 cache: cannot read image {paths[i]} ({type(exc).__name__}: {exc}); the file is "
                            f"missing, truncated or corrupt: copy it again or drop it from the list") from exc


def build_cache(paths: list[str], path: Path, size: int, *, num_workers: int = 0, meta: dict | None = None,
                interpolation: str = "bilinear") -> dict:
    """Decode + resize every image into ``path`` (.npy, uint8 [N, 3, S, S]); returns the metadata written
    next to it (``.json``: rule, size, n, build seconds and images/s). Threads: PIL releases the GIL
    while decoding and resizing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = len(paths)
    t0 = time.perf_counter()
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    workers = max(1, num_workers or (os.cpu_count() or 1))
    chunk = max(1, math.ceil(n / (workers * 8)))
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_decode_into, arr, paths, lo, min(lo + chunk, n), size, interpolation)
                   for lo in range(0, n, chunk)]
        for f in futures:
            f.result()
    arr.flush()
    del arr
    seconds = time.perf_counter() - t0
    info = {"rule": RESIZE_RULE, "interpolation": interpolation, "version": CACHE_VERSION, "size": size, "n": n,
            "build_seconds": round(seconds, 3), "build_images_per_second": n / max(seconds, 1e-9), "threads": workers,
            **(meta or {})}
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return info


def load_or_build(paths: list[str], labels, *, size: int, cache_dir: str | os.PathLike, name: str,
                  split_sha: str | None = None, num_workers: int = 0, interpolation: str = "bilinear") -> torch.Tensor:
    """The cached uint8 [N, 3, S, S] of ``paths`` (memory-mapped CPU tensor), building it on first use."""
    key = cache_key(paths, labels, size, split_sha, interpolation)
    path = Path(cache_dir) / "uint8" / f"{name}-{size}px-{key}.npy"
    if not path.is_file():
        print(f"uint8 cache: decoding {len(paths)} images once into {path} ({RESIZE_RULE}, S={size})", flush=True)
        info = build_cache(paths, path, size, num_workers=num_workers, interpolation=interpolation,
                           meta={"name": name, "key": key, "split_sha256": split_sha})
        print(f"uint8 cache: {info['n']} images in {info['build_seconds']:.1f} s "
              f"({info['build_images_per_second']:.0f} img/s)", flush=True)
    arr = np.load(path, mmap_mode="c")  # copy-on-write map: a writable view, the file is never modified
    if arr.shape != (len(paths), 3, size, size):
        raise DataError(f"uint8 cache {path} holds {arr.shape}, expected {(len(paths), 3, size, size)}; delete it")
    return torch.from_numpy(arr)


class CachedImageLoader(EpochBatches):
    """Batches (x float32 normalised [B, 3, s, s], y) from a uint8 [N, 3, S, S] cache, augmented on the device.

    Same interface as :class:`~ltr_core.data.device_loader.DeviceTensorLoader`: ``set_epoch``,
    ``__len__``, ``sampler``; the order comes from ``sampler.indices(epoch)`` and the augmentation from
    a device generator seeded by (seed, epoch).
    """

    def __init__(self, images_uint8: torch.Tensor, labels, *, batch_size: int, device, train: bool,
                 sampler: EpochSampler | None, mean, std, image_size: int, augment: bool = True,
                 drop_last: bool = False, seed: int = 0, rrc_scale: tuple[float, float] = (0.08, 1.0),
                 flip: bool = True, on_device: bool | None = None) -> None:
        shape = tuple(images_uint8.shape)
        if images_uint8.dtype != torch.uint8 or len(shape) != 4 or shape[-1] != shape[-2]:
            raise DataError(f"CachedImageLoader needs square uint8 [N, C, S, S] images, got "
                            f"{images_uint8.dtype} {tuple(images_uint8.shape)}")
        if images_uint8.shape[-1] < image_size:
            raise DataError(f"cache side {images_uint8.shape[-1]} is smaller than image_size {image_size}; "
                            f"use cache_size >= image_size (0 picks int(image_size / 0.875))")
        self.device = torch.device(device)
        if on_device is None:
            on_device = self.device.type != "cuda" or _fits_on_gpu(images_uint8, self.device)
        self.on_device = bool(on_device)
        self.images = images_uint8.to(self.device) if self.on_device else images_uint8
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.labels_dev = self.labels.to(self.device)
        self.batch_size, self.train, self.sampler = int(batch_size), bool(train), sampler
        self.image_size, self.augment, self.drop_last = int(image_size), bool(augment), bool(drop_last)
        self.seed, self.epoch, self.rrc_scale, self.flip = int(seed), 0, tuple(rrc_scale), bool(flip)
        self.scale, self.shift = normaliser(mean, std, self.device)
        self.eval_resize = default_cache_size(self.image_size)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] on the device: index on the device, or on the host + pinned async copy."""
        if self.on_device:
            return self.images.index_select(0, idx.to(self.device))
        u8 = self.images.index_select(0, idx)
        if self.device.type == "cuda":
            u8 = u8.pin_memory()
        return u8.to(self.device, non_blocking=True)

    def _transform(self, u8: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        s = self.image_size
        if gen is not None:
            x = u8.float().mul_(self.scale).add_(self.shift)
            return random_resized_crop_flip(x, s, gen, scale=self.rrc_scale, flip=self.flip)
        side = u8.shape[-1]
        if side != self.eval_resize:  # another cache size: resize the square to int(s / 0.875) first
            x = u8.float().mul_(self.scale).add_(self.shift)
            x = F.interpolate(x, size=(self.eval_resize, self.eval_resize), mode="bilinear", align_corners=False,
                              antialias=self.eval_resize < side)
            top = int(round((self.eval_resize - s) / 2.0))
            return x[:, :, top:top + s, top:top + s].contiguous()
        top = int(round((side - s) / 2.0))
        return u8[:, :, top:top + s, top:top + s].float().mul_(self.scale).add_(self.shift)

    def __iter__(self):
        order = (self.sampler.indices(self.epoch) if self.sampler is not None
                 else torch.arange(self.labels.numel())).cpu()
        gen = epoch_generator(self.seed, self.epoch, self.device) if self.train and self.augment else None
        batches = [order[k * self.batch_size:(k + 1) * self.batch_size] for k in range(len(self))]
        if self.on_device:
            for idx in batches:
                yield self._transform(self._gather(idx), gen), self.labels_dev.index_select(0, idx.to(self.device))
            return
        # host cache: gather the next batch in a background thread while this one trains
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._gather, batches[0]) if batches else None
            for k, idx in enumerate(batches):
                u8 = pending.result()
                if k + 1 < len(batches):
                    pending = pool.submit(self._gather, batches[k + 1])
                yield self._transform(u8, gen), self.labels_dev.index_select(0, idx.to(self.device))


def _fits_on_gpu(images: torch.Tensor, device: torch.device, fraction: float = 0.6) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() < fraction * free

