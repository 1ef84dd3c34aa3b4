"""Optional: batched JPEG decode on the GPU with TorchCodec (``file_backend=torchcodec``).

Workers only read file bytes (no decode, no PIL); the main process decodes a whole batch in one call,
``torchcodec.decoders.decode_jpeg([bytes, ...], mode="RGB", device="cuda")`` (nvJPEG; one batched call
is what makes GPU decode pay: 4.5x a per-image GPU loop, ~20x one CPU thread, performance.md §5), then
per image on the GPU:

* train: a RandomResizedCrop box drawn with torchvision's rule (area fraction ~ U(scale), log aspect
  ~ U(log 3/4, log 4/3), w = round(sqrt(a r)), h = round(sqrt(a / r)), up to 10 tries, else the
  ratio-clamped centre box) from a generator seeded with the sample's own seed (a function of seed,
  epoch and global position, as on the PIL path), resized to S (bilinear, antialias) and flipped
  with probability 1/2;
* eval: Resize(int(S / 0.875)) (shorter side, bilinear, antialias) + CenterCrop(S);

then the batch is normalised. Requires torchcodec >= 0.16 (image decoders) with CUDA; the import check
is :func:`torchcodec_decoder`. ``make_loader`` falls back to the PIL DataLoader, saying so once, when
torchcodec is missing or the run is not on CUDA. No GPU was available where this was written: the
tests run this loader with a CPU decode function (``decode_fn``), not nvJPEG itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .crops import resize_center_crop, rrc_flip
from .samplers import EpochSampler

DecodeFn = Callable[[list, torch.device], list]


def torchcodec_decoder() -> DecodeFn | None:
    """``decode(list_of_uint8_byte_tensors, device) -> list of uint8 [3, H, W]`` via TorchCodec, or None."""
    try:
        from torchcodec.decoders import decode_jpeg
    except Exception:  # not installed, or its native libraries do not load
        return None
    import inspect

    try:
        if "device" not in inspect.signature(decode_jpeg).parameters:
            return None  # torchcodec < 0.16-era signature: CPU only
    except (TypeError, ValueError):
        return None

    def decode(datas: list, device: torch.device) -> list:
        out = decode_jpeg(list(datas), mode="RGB", device=str(device))
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return decode


def pil_decoder(datas: list, device: torch.device) -> list:
    """CPU reference decode (PIL, RGB) with the same interface; used by the tests and as documentation."""
    import io

    from PIL import Image

    out = []
    for d in datas:
        with Image.open(io.BytesIO(d.numpy().tobytes())) as im:
            out.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).to(device))
    return out


class RawFileDataset(Dataset):
    """(file bytes as a uint8 tensor, label, sample seed) for a key ``i`` or ``(i, seed)``."""

    def __init__(self, paths: list[str], labels) -> None:
        self.paths, self.labels = list(paths), torch.as_tensor(np.asarray(labels), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, 0)
        data = torch.frombuffer(bytearray(Path(self.paths[int(i)]).read_bytes()), dtype=torch.uint8)
        return data, int(self.labels[int(i)]), int(seed)


def _collate_raw(batch):
    datas, labels, seeds = zip(*batch)
    return list(datas), torch.tensor(labels, dtype=torch.int64), list(seeds)


class GPUDecodeLoader:
    """File bytes from workers -> one batched decode on ``device`` -> crop/resize/flip/normalise there."""

    def __init__(self, paths: list[str], labels, *, batch_size: int, device, train: bool, augment: bool,
                 sampler: EpochSampler | None, key_sampler, mean, std, image_size: int, num_workers: int = 2,
                 drop_last: bool = False, decode_fn: DecodeFn | None = None, rrc_scale=(0.08, 1.0)) -> None:
        self.device = torch.device(device)
        self.decode = decode_fn or torchcodec_decoder()
        if self.decode is None:
            raise RuntimeError("torchcodec (>= 0.16, with CUDA) is not available; use file_backend=pil")
        self.sampler, self.train, self.augment = sampler, bool(train), bool(augment)
        self.image_size, self.rrc_scale = int(image_size), tuple(rrc_scale)
        self.loader = DataLoader(RawFileDataset(paths, labels), batch_size=batch_size, sampler=key_sampler,
                                 shuffle=False, num_workers=num_workers, collate_fn=_collate_raw,
                                 persistent_workers=num_workers > 0, drop_last=drop_last)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def _one(self, img: torch.Tensor, seed: int) -> torch.Tensor:
        s = self.image_size
        if self.train and self.augment:
            return rrc_flip(img, s, torch.Generator().manual_seed(seed), self.rrc_scale)
        return resize_center_crop(img, int(s / 0.875), s)

    def __iter__(self):
        for datas, y, seeds in self.loader:
            images = self.decode(datas, self.device)
            x = torch.stack([self._one(img, seed) for img, seed in zip(images, seeds)])
            yield x.mul_(self.scale).add_(self.shift), y.to(self.device, non_blocking=True)
