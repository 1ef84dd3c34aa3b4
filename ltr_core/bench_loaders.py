"""``ltr bench --loaders``: images/s of the large-image input paths on generated JPEGs (:func:`bench_loaders`)."""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import engine
from .bench_common import _device_label
from .data.device_loader import loader_images_per_second
from .data.samplers import build_sampler

def make_jpegs(folder: str | Path, n: int, size: tuple[int, int] = (500, 375), quality: int = 90,
               seed: int = 0) -> list[str]:
    """``n`` ImageNet-like JPEGs (smooth random content + noise, ``size`` w x h, quality 90) -> paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        img = np.asarray(small.resize(size, Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(img).save(p, quality=quality)
        paths.append(str(p))
    return paths


def bench_loaders(n_images: int = 512, *, image_size: int = 224, batch_size: int = 64, num_workers: int = 0,
                  device: str = "auto", folder: str | Path | None = None, jpeg_size=(500, 375)) -> list[dict]:
    """Images/s of the large-image input paths over ``n_images`` generated JPEGs (one pass each):
    PIL DataLoader train (RandomResizedCrop + flip) and eval (Resize + CenterCrop) with ``num_workers``
    workers (0: all cores), the one-time uint8 cache build, and the cached path train (device RRC + flip)
    and eval (centre crop)."""
    from .data.image_list import ImageFileDataset
    from .data.loaders import FileLoader
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
    from .data.uint8_cache import CachedImageLoader, default_cache_size, load_or_build

    dev = engine.resolve_device(device)
    workers = num_workers or (os.cpu_count() or 1)
    tmp = tempfile.TemporaryDirectory() if folder is None else None
    root = Path(folder or tmp.name)
    try:
        paths = make_jpegs(root / "jpeg", n_images, size=jpeg_size)
        labels = np.arange(n_images) % 10
        n_batches = max(1, n_images // batch_size - 1)
        rows = []

        def row(path: str, phase: str, ips: float, note: str) -> None:
            rows.append({"path": path, "phase": phase, "images_per_s": ips, "note": note, "device": _device_label(dev),
                         "image_size": image_size, "batch_size": batch_size, "n_images": n_images,
                         "jpeg": f"{jpeg_size[0]}x{jpeg_size[1]} q90"})

        for phase, make in (("train", train_transform), ("eval", eval_transform)):
            ds = ImageFileDataset(paths, labels, make(image_size, IMAGENET_MEAN, IMAGENET_STD))
            sampler = build_sampler("instance", torch.as_tensor(labels), seed=0)
            loader = FileLoader(ds, batch_size=batch_size, device=dev, sampler=sampler, num_workers=workers)
            how = "RandomResizedCrop + flip" if phase == "train" else "Resize + CenterCrop"
            row("PIL DataLoader (file_backend=pil)", phase, loader_images_per_second(loader, n_batches),
                f"{workers} worker processes, decode + {how} per image")
            del loader
        side = default_cache_size(image_size)
        t0 = time.perf_counter()
        images = load_or_build(paths, labels, size=side, cache_dir=root / "cache", name="bench", num_workers=workers)
        row("uint8 cache build (once)", "build", n_images / (time.perf_counter() - t0),
            f"{workers} threads, decode + Resize({side}) (aspect kept, longer side <= {2 * side}), written as .npy")
        for phase, train in (("train", True), ("eval", False)):
            sampler = build_sampler("instance", torch.as_tensor(labels), seed=0) if train else None
            loader = CachedImageLoader(images, labels, batch_size=batch_size, device=dev, train=train, sampler=sampler,
                                       mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size)
            row("uint8 cache + device augmentation (file_backend=uint8_cache)", phase,
                loader_images_per_second(loader, n_batches),
                f"memory-mapped cache, {'RandomResizedCrop of the whole image + flip' if train else 'centre crop'} "
                f"+ normalise on {dev.type}")
        return rows
    finally:
        if tmp is not None:
            tmp.cleanup()


def format_loader_rows(rows: list[dict]) -> str:
    lines = ["| input path | phase | images/s | how |", "|---|---|---:|---|"]
    lines += [f"| {r['path']} | {r['phase']} | {r['images_per_s']:,.0f} | {r['note']} |" for r in rows]
    return "\n".join(lines)


def write_loader_outputs(rows: list[dict], out_dir: str | Path) -> list[Path]:
    import pandas as pd

    from .results import atomic_write_text

    out = Path(out_dir)
    md = ["# Large-image input paths", "", f"Machine: {rows[0]['device']}; torch {torch.__version__}; "
          f"{datetime.date.today().isoformat()}; {rows[0]['n_images']} generated JPEGs {rows[0]['jpeg']} -> "
          f"{rows[0]['image_size']} px, batch {rows[0]['batch_size']}", "", format_loader_rows(rows)]
    return [atomic_write_text(out / "loaders.md", "\n".join(md) + "\n"),
            atomic_write_text(out / "loaders.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))]
