"""Fast input for large images: a decoded uint8 cache at the evaluation resize, augmented on the device.

``file_backend=uint8_cache`` decodes every JPEG of a split **once** (PIL, threads) and stores it as it
is after the evaluation transform's first step, ``Resize(S)`` (shorter side -> S, torchvision's rule,
PIL antialias; S = int(image_size / 0.875), 256 at 224), **keeping the aspect ratio**: the whole
image, not a centre square. Only the longer side is capped at ``MAX_ASPECT`` x S = 2S by a centre crop
(panoramas: ~1 % of ImageNet). The images of a split lie in one flat uint8 file
(``<cache_dir>/uint8/<dataset>-<split>-<S>px-<key>.npy``, memory-mapped when read) with an index
``.index.npy`` of (offset, h, w) per image (:class:`RaggedImages`); batches are gathered from it and
augmented on the device, so training never waits for JPEG decode.

* **eval** = ``CenterCrop(image_size)`` of the stored image: the stored pixels are exactly the PIL
  path's ``Resize(S)`` output, and the 2S cap is centred, so the crop lands on the same pixels as the
  file path's ``Resize(S) + CenterCrop(image_size)`` (:func:`ltr_core.data.crops.center_box`):
  identical uint8 input (normalisation differs by float rounding only);
* **train** = RandomResizedCrop(image_size, scale=(rrc_scale_min, 1)) by torchvision's box rule
  (:func:`ltr_core.data.crops.rrc_box`) over the **whole** stored image, resized with antialiased
  bilinear on the device, flipped with p = 1/2. The box covers the same part of the image as the PIL
  path's box would (same rule, relative to the image); what differs is the source resolution: a
  crop is resampled from the S-px image instead of the original, so boxes smaller than
  ``image_size`` px of the stored image are upsampled from fewer pixels (FFCV's ``max_res`` trade,
  performance.md §5), and the ~1 % of images wider than 2:1 lose their outer parts. The boxes come
  from a CPU generator seeded by (seed, epoch), so an epoch is reproducible on any device.

The cache key is sha256 of (resize rule, S, split-file sha256 when the dataset records one, sha256 of
the image paths and labels), so a different list, root, size or rule never reuses a cache. Files are
written to temporary names and renamed when complete (index first, then the data).

``file_backend=auto`` (:func:`resolve_file_backend`): the cache where it fits on the cache folder's
disk (estimated from a sample of image headers, with a 20 % margin), the PIL path otherwise; the
choice is printed and recorded in the run's inputs (:func:`input_path_record`).

Placement: on CUDA the whole cache is copied to the GPU when it fits (``on_device=None``: under 60 %
of free memory; ImageNet-LT train at 256 px ~ 30 GB), else images are gathered on the host from the
memory map into one pinned buffer per batch and copied asynchronously (iNat18), one batch ahead in a
background thread.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DataError
from .crops import resize_center_crop, rrc_flip, shorter_side_size
from .device_loader import EpochBatches, normaliser
from .samplers import EpochSampler, epoch_generator

CACHE_VERSION = 2
MAX_ASPECT = 2  # the longer side is centre-cropped to at most MAX_ASPECT x the shorter side S
RESIZE_RULE = "torchvision.v2 Resize(S) (antialias) on PIL, aspect kept, longer side centre-cropped to <= 2S"
EVAL_RATIO = 0.875  # Resize(int(S / 0.875)) + CenterCrop(S): 256 -> 224
FIT_MARGIN = 1.2  # auto: the estimated cache must fit 1.2 times into the free disk
HEADER_SAMPLE = 2000  # auto: image headers read to estimate the cache's size


def default_cache_size(image_size: int) -> int:
    """S = int(image_size / 0.875): the Resize of the evaluation transform (256 for 224)."""
    return int(image_size / EVAL_RATIO)


def stored_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(h, w) of an image of ``width`` x ``height`` in the cache: Resize(S), longer side capped at 2S."""
    h, w = shorter_side_size(height, width, size)
    return min(h, MAX_ASPECT * size), min(w, MAX_ASPECT * size)


def cache_key(paths: list[str], labels, size: int, split_sha: str | None = None,
              interpolation: str = "bilinear") -> str:
    """16 hex chars of sha256(rule, interpolation, version, S, split-file sha, sha of paths + labels)."""
    h = hashlib.sha256()
    for p, y in zip(paths, np.asarray(labels).tolist()):
        h.update(f"{p}\t{y}\n".encode())
    doc = {"rule": RESIZE_RULE, "interpolation": interpolation, "version": CACHE_VERSION, "size": int(size),
           "split_sha256": split_sha, "paths_sha256": h.hexdigest()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir, name: str, size: int, key: str) -> Path:
    return Path(cache_dir) / "uint8" / f"{name}-{size}px-{key}.npy"


def index_path(path: Path) -> Path:
    return path.with_suffix(".index.npy")


class RaggedImages:
    """N uint8 images of different sizes in one flat buffer: image i is
    ``data[off_i : off_i + 3 h_i w_i]`` viewed as [3, h_i, w_i] (``index[i] = (off_i, h_i, w_i)``)."""

    def __init__(self, data: torch.Tensor, index) -> None:
        self.data = data
        self.index = [tuple(int(v) for v in row) for row in np.asarray(index).tolist()]

    @classmethod
    def from_dense(cls, images: torch.Tensor) -> "RaggedImages":
        """Equal-size images uint8 [N, 3, H, W] as a RaggedImages (a view, no copy)."""
        n, c, h, w = images.shape
        step = c * h * w
        return cls(images.reshape(-1), [(i * step, h, w) for i in range(n)])

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> torch.Tensor:
        off, h, w = self.index[i]
        return self.data[off:off + 3 * h * w].view(3, h, w)

    @property
    def min_side(self) -> int:
        return min((min(h, w) for _, h, w in self.index), default=0)

    def to(self, device) -> "RaggedImages":
        out = RaggedImages.__new__(RaggedImages)
        out.data, out.index = self.data.to(device), self.index
        return out


def decode_stored(path: str, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """The cache's rule on one image file -> uint8 [3, h, w] (:func:`stored_size`)."""
    from torchvision.transforms import v2

    with Image.open(path) as im:
        resized = v2.Resize(size, interpolation=v2.InterpolationMode(interpolation), antialias=True)(im.convert("RGB"))
    h, w = stored_size(resized.width, resized.height, size)
    out = np.asarray(v2.CenterCrop((h, w))(resized), dtype=np.uint8)
    return out.transpose(2, 0, 1)


def image_sizes(paths: list[str], num_workers: int = 0) -> list[tuple[int, int]]:
    """(width, height) of every image from its header (PIL reads no pixels)."""
    def one(p: str) -> tuple[int, int]:
        try:
            with Image.open(p) as im:
                return im.size
        except Exception as exc:
            raise DataError(f"uint8 cache: cannot read image {p} ({type(exc).__name__}: {exc}); the file is "
                            f"missing, truncated or corrupt: copy it again or drop it from the list") from exc

    with ThreadPoolExecutor(max(1, num_workers or (os.cpu_count() or 1))) as pool:
        return list(pool.map(one, paths, chunksize=256))


def _decode_into(flat: np.ndarray, paths: list[str], index: np.ndarray, lo: int, hi: int, size: int,
                 interpolation: str) -> None:
    for i in range(lo, hi):
        off, h, w = (int(v) for v in index[i])
        try:
            img = decode_stored(paths[i], size, interpolation)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"uint8 cache: cannot read image {paths[i]} ({type(exc).__name__}: {exc}); the file is "
                            f"missing, truncated or corrupt: copy it again or drop it from the list") from exc
        if img.shape != (3, h, w):
            raise DataError(f"uint8 cache: {paths[i]} decoded to {img.shape[1:]} but its header says {(h, w)} "
                            f"after Resize({size}); the file changed while the cache was built: build it again")
        flat[off:off + img.size] = img.reshape(-1)


def build_cache(paths: list[str], path: Path, size: int, *, num_workers: int = 0, meta: dict | None = None,
                interpolation: str = "bilinear") -> dict:
    """Decode + resize every image into ``path`` (flat uint8 .npy) and its ``.index.npy`` (offset, h, w);
    returns the metadata written next to them (``.json``: rule, size, n, bytes, build seconds, images/s).
    Threads: PIL releases the GIL while decoding and resizing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    workers = max(1, num_workers or (os.cpu_count() or 1))
    shapes = np.array([stored_size(w, h, size) for w, h in image_sizes(paths, workers)], dtype=np.int64).reshape(-1, 2)
    counts = 3 * shapes[:, 0] * shapes[:, 1]
    index = np.stack([np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64), shapes[:, 0], shapes[:, 1]], 1)
    tmp, tmp_index = (path.with_name(f".{p.name}.{os.getpid()}.tmp") for p in (path, index_path(path)))
    flat = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(int(counts.sum()),))
    n = len(paths)
    chunk = max(1, math.ceil(n / (workers * 8)))
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_decode_into, flat, paths, index, lo, min(lo + chunk, n), size, interpolation)
                   for lo in range(0, n, chunk)]
        for f in futures:
            f.result()
    flat.flush()
    del flat
    with open(tmp_index, "wb") as f:
        np.save(f, index)
    seconds = time.perf_counter() - t0
    info = {"rule": RESIZE_RULE, "interpolation": interpolation, "version": CACHE_VERSION, "size": size, "n": n,
            "bytes": int(counts.sum()), "build_seconds": round(seconds, 3),
            "build_images_per_second": n / max(seconds, 1e-9), "threads": workers, **(meta or {})}
    os.replace(tmp_index, index_path(path))
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return info


def load_or_build(paths: list[str], labels, *, size: int, cache_dir: str | os.PathLike, name: str,
                  split_sha: str | None = None, num_workers: int = 0, interpolation: str = "bilinear") -> RaggedImages:
    """The cached images of ``paths`` (memory-mapped), building the cache on first use."""
    key = cache_key(paths, labels, size, split_sha, interpolation)
    path = cache_path(cache_dir, name, size, key)
    if not (path.is_file() and index_path(path).is_file()):
        print(f"uint8 cache: decoding {len(paths)} images once into {path} ({RESIZE_RULE}, S={size})", flush=True)
        info = build_cache(paths, path, size, num_workers=num_workers, interpolation=interpolation,
                           meta={"name": name, "key": key, "split_sha256": split_sha})
        print(f"uint8 cache: {info['n']} images, {info['bytes'] / 1e9:.2f} GB in {info['build_seconds']:.1f} s "
              f"({info['build_images_per_second']:.0f} img/s)", flush=True)
    flat = np.load(path, mmap_mode="c")  # copy-on-write map: a writable view, the file is never modified
    index = np.load(index_path(path))
    if index.shape != (len(paths), 3) or (len(index) and int(index[-1, 0] + 3 * index[-1, 1] * index[-1, 2]) != flat.size):
        raise DataError(f"uint8 cache {path} (index {index.shape}, {flat.size} bytes) does not match the "
                        f"{len(paths)} images of the split: delete {path} and {index_path(path)}; it is rebuilt")
    return RaggedImages(torch.from_numpy(flat), index)


def estimate_bytes(paths: list[str], size: int, sample: int = HEADER_SAMPLE) -> int:
    """The cache's size in bytes, from the headers of an evenly spaced sample of ``paths``."""
    if not paths:
        return 0
    step = max(1, len(paths) // sample)
    picked = paths[::step]
    stored = [stored_size(w, h, size) for w, h in image_sizes(picked)]
    return int(sum(3 * h * w for h, w in stored) * len(paths) / len(picked))


def _free_bytes(folder: Path) -> int:
    probe = Path(folder).absolute()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def resolve_file_backend(data) -> str:
    """``data.input_options['file_backend']`` with ``auto`` resolved (see module doc); writes it back.

    auto -> ``uint8_cache`` when every file split's cache is built already or all missing ones fit
    ``FIT_MARGIN`` times into the free disk of ``cache_dir``; else ``pil`` (said once). Datasets with no
    single-label file split (in memory, multi-label) resolve to ``pil``: the cache does not apply."""
    options = data.input_options
    if options.get("file_backend", "pil") != "auto":
        return options.get("file_backend", "pil")
    splits = [(name, data.split(name)) for name in ("train", "val", "test", "open") if getattr(data, name, None) is not None]
    files = [(name, s) for name, s in splits if s.images is None and s.paths is not None and getattr(s, "targets", None) is None]
    choice, why = "pil", "no single-label file split"
    if files:
        size = int(options.get("cache_size") or 0) or default_cache_size(data.image_size)
        cache_dir = options.get("cache_dir") or "data/cache"
        needed = 0
        for name, s in files:
            key = cache_key(s.paths, s.labels.numpy(), size, split_sha_of(data, name))
            if not cache_path(cache_dir, f"{data.name}-{name}", size, key).is_file():
                needed += estimate_bytes(s.paths, size)
        free = _free_bytes(Path(cache_dir))
        fits = needed * FIT_MARGIN <= free
        choice = "uint8_cache" if fits else "pil"
        why = (f"caches to build {needed / 1e9:.1f} GB, {free / 1e9:.1f} GB free in {cache_dir}"
               + ("" if fits else f"; set cache_dir to a disk with {needed * FIT_MARGIN / 1e9:.0f} GB free to use the cache"))
    print(f"file_backend=auto -> {choice} ({why})", flush=True)
    options["file_backend"], options["file_backend_auto"] = choice, True
    return choice


def split_sha_of(data, split: str) -> str | None:
    return ((data.provenance or {}).get("split_files") or {}).get(split, {}).get("sha256")


def input_path_record(options: dict) -> dict | None:
    """What the run's inputs record about how file splits are read: the cache's rule, version and size
    when they are read from the uint8 cache (explicitly or by ``auto``), else None (the PIL path, whose
    inputs stay what they always were; ``torchcodec`` is named by the config itself)."""
    if options.get("file_backend") != "uint8_cache":
        return None
    return {"file_backend": "uint8_cache", "auto": bool(options.get("file_backend_auto")), "rule": RESIZE_RULE,
            "version": CACHE_VERSION, "cache_size": int(options.get("cache_size") or 0)}


class CachedImageLoader(EpochBatches):
    """Batches (x float32 normalised [B, 3, s, s], y) from cached uint8 images, augmented on the device.

    Same interface as :class:`~ltr_core.data.device_loader.DeviceTensorLoader`: ``set_epoch``,
    ``__len__``, ``sampler``; the order comes from ``sampler.indices(epoch)`` and the crops from a CPU
    generator seeded by (seed, epoch). ``images``: :class:`RaggedImages`, or equal-size uint8
    [N, 3, H, W] (wrapped by :meth:`RaggedImages.from_dense`).
    """

    def __init__(self, images: RaggedImages | torch.Tensor, labels, *, batch_size: int, device, train: bool,
                 sampler: EpochSampler | None, mean, std, image_size: int, augment: bool = True,
                 drop_last: bool = False, seed: int = 0, rrc_scale: tuple[float, float] = (0.08, 1.0),
                 flip: bool = True, on_device: bool | None = None) -> None:
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
                raise DataError(f"CachedImageLoader needs uint8 [N, 3, H, W] images or RaggedImages, got "
                                f"{images.dtype} {tuple(images.shape)}")
            images = RaggedImages.from_dense(images)
        if images.min_side < image_size:
            raise DataError(f"cache side {images.min_side} is smaller than image_size {image_size}; "
                            f"use cache_size >= image_size (0 picks int(image_size / 0.875))")
        self.device = torch.device(device)
        if on_device is None:
            on_device = self.device.type != "cuda" or _fits_on_gpu(images.data, self.device)
        self.on_device = bool(on_device)
        self.images = images.to(self.device) if self.on_device else images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.labels_dev = self.labels.to(self.device)
        self.batch_size, self.train, self.sampler = int(batch_size), bool(train), sampler
        self.image_size, self.augment, self.drop_last = int(image_size), bool(augment), bool(drop_last)
        self.seed, self.epoch, self.rrc_scale, self.flip = int(seed), 0, tuple(rrc_scale), bool(flip)
        self.scale, self.shift = normaliser(mean, std, self.device)
        self.eval_resize = default_cache_size(self.image_size)

    def _gather(self, idx: list[int]) -> list[torch.Tensor]:
        """The batch's uint8 [3, h, w] images on the device (host cache: one pinned buffer, one async copy)."""
        parts = [self.images.image(i) for i in idx]
        if self.on_device:
            return parts
        flat = torch.cat([p.reshape(-1) for p in parts])
        if self.device.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(self.device, non_blocking=True)
        out, k = [], 0
        for p in parts:
            out.append(flat[k:k + p.numel()].view(p.shape))
            k += p.numel()
        return out

    def _transform(self, images: list[torch.Tensor], gen: torch.Generator | None) -> torch.Tensor:
        s = self.image_size
        if gen is not None:
            crops = [rrc_flip(im, s, gen, self.rrc_scale, self.flip) for im in images]
        else:
            crops = [resize_center_crop(im, self.eval_resize, s) for im in images]
        return torch.stack(crops).mul_(self.scale).add_(self.shift)

    def __iter__(self):
        order = (self.sampler.indices(self.epoch) if self.sampler is not None
                 else torch.arange(self.labels.numel())).cpu()
        gen = epoch_generator(self.seed, self.epoch) if self.train and self.augment else None
        batches = [order[k * self.batch_size:(k + 1) * self.batch_size] for k in range(len(self))]
        if self.on_device:
            for idx in batches:
                yield self._transform(self._gather(idx.tolist()), gen), self.labels_dev.index_select(0, idx.to(self.device))
            return
        # host cache: gather the next batch in a background thread while this one trains
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._gather, batches[0].tolist()) if batches else None
            for k, idx in enumerate(batches):
                images = pending.result()
                if k + 1 < len(batches):
                    pending = pool.submit(self._gather, batches[k + 1].tolist())
                yield self._transform(images, gen), self.labels_dev.index_select(0, idx.to(self.device))


def _fits_on_gpu(data: torch.Tensor, device: torch.device, fraction: float = 0.6) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return data.numel() < fraction * free
