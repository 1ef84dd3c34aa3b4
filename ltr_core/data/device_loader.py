"""The small-image path: a uint8 dataset held on the device, augmented there a whole batch at once.

CIFAR-LT (and digits-LT) fit in accelerator memory as uint8 (CIFAR-10 train 154 MB), so the loop
never waits on CPU workers or PIL. Per batch, on the device and vectorised (no per-image loop):

1. random crop with zero padding p and random horizontal flip (one windowed gather):
   out[b, :, i, j] = P[idx_b, :, oy_b + i, ox_b + j'],  P = image zero-padded by p on each side,
   oy_b, ox_b ~ U{0..2p},  j' = W-1-j if flip_b else j  (flip_b ~ Bernoulli(1/2))
   (torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, He et al. 2016);
2. uint8 -> float, normalise (x/255 - mean)/std;
3. bilinear resize to ``image_size`` when it differs from the stored size (normalising first is
   exact: bilinear weights sum to 1).

With ``augment_mode="rrc"`` step 1 is instead a RandomResizedCrop + flip straight to ``image_size``
(the ImageNet recipe that CLIP/ViT methods use on upsampled CIFAR, e.g. PEL/LIFT 32 -> 224):
area fraction a ~ U(scale), aspect ratio r with log r ~ U(log ratio), box (w, h) = (sqrt(a r), sqrt(a / r))
of the image side (each clipped to 1: torchvision's rejection loop falls back to a centre crop
instead), centre uniform over the positions that keep the box inside the image, sampled bilinearly
with one ``affine_grid`` / ``grid_sample`` for the whole batch.

The order (sampler) and the augmentation (a device ``torch.Generator``) are seeded from
(seed, epoch), so an epoch is reproducible and a resumed run sees the same batches.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .base import DataError
from .samplers import EpochSampler, epoch_generator


def crop_flip(images: torch.Tensor, idx: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
              flip: torch.Tensor, padding: int) -> torch.Tensor:
    """Gather images[idx] cropped at offsets (oy, ox) of the p-zero-padded image, then flipped.

    images uint8 [N, C, H, W]; idx, oy, ox int64 [B] (offsets in 0..2p); flip bool [B] -> uint8 [B, C, H, W]
    with out[b, :, i, j] = P_b[:, oy_b + i, ox_b + j'], j' = W-1-j if flip_b else j.
    Vectorised: pad the gathered batch, view every (2p+1)^2 window with ``unfold`` (no copy) and
    pick one window per image by advanced indexing (faster than a flat index-grid ``take``).
    """
    x = F.pad(images.index_select(0, idx), (padding,) * 4)
    b, _, hp, wp = x.shape
    h, w = hp - 2 * padding, wp - 2 * padding
    windows = x.unfold(2, h, 1).unfold(3, w, 1)  # [B, C, 2p+1, 2p+1, H, W]
    out = windows[torch.arange(b, device=x.device), :, oy, ox]  # [B, C, H, W]
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


AUGMENT_MODES = ("crop_pad", "rrc")


def random_resized_crop_flip(x: torch.Tensor, size: int, gen: torch.Generator, scale=(0.08, 1.0),
                             ratio=(3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """RandomResizedCrop(size, scale, ratio) + horizontal flip of a float batch [B, C, H, W] (see module doc)."""
    b, dev = x.shape[0], x.device
    area = torch.empty(b, device=dev).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=gen, device=dev) * (1 - w) + w / 2) * 2 - 1  # box centre in [-1, 1]
    cy = (torch.rand(b, generator=gen, device=dev) * (1 - h) + h / 2) * 2 - 1
    sign = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def normaliser(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x = u8 * scale + shift = (u8 / 255 - mean) / std, shaped [1, C, 1, 1]."""
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std_t), -mean_t / std_t


class EpochBatches:
    """Batch counting and epoch plumbing shared by the tensor loaders (``sampler``, ``labels``,
    ``batch_size``, ``drop_last`` and ``epoch`` are set by the loader)."""

    @property
    def num_samples(self) -> int:
        return len(self.sampler) if self.sampler is not None else int(self.labels.numel())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)


class DeviceTensorLoader(EpochBatches):
    """Batches (x float32 normalised [B, C, S, S], y int64 [B]) from a uint8 tensor kept on ``device``."""

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor, *, batch_size: int, device,
                 train: bool, sampler: EpochSampler | None, mean, std, image_size: int,
                 crop_padding: int = 4, flip: bool = True, augment: bool = True,
                 drop_last: bool = False, seed: int = 0, augment_mode: str = "crop_pad",
                 rrc_scale: tuple[float, float] = (0.08, 1.0)) -> None:
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            raise DataError(f"DeviceTensorLoader needs uint8 [N, C, H, W] images, got "
                            f"{images_uint8.dtype} {tuple(images_uint8.shape)}")
        channels = images_uint8.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"mean/std have {len(mean)}/{len(std)} values for {channels}-channel images")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if augment_mode not in AUGMENT_MODES:
            raise DataError(f"augment_mode must be one of {AUGMENT_MODES}, got {augment_mode!r}")
        self.augment_mode, self.rrc_scale = augment_mode, tuple(rrc_scale)
        self.device = torch.device(device)
        self.images = images_uint8.to(self.device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.batch_size, self.train, self.sampler = int(batch_size), bool(train), sampler
        self.image_size, self.crop_padding, self.flip = int(image_size), int(crop_padding), bool(flip)
        self.augment, self.drop_last, self.seed, self.epoch = bool(augment), bool(drop_last), int(seed), 0
        self.scale, self.shift = normaliser(mean, std, self.device)

    def _order(self) -> torch.Tensor:
        if self.sampler is None:
            return torch.arange(self.labels.numel(), device=self.device)
        return self.sampler.indices(self.epoch).to(self.device)

    def _batch(self, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if gen is not None and self.augment_mode == "rrc":
            x = self.images.index_select(0, idx).float().mul_(self.scale).add_(self.shift)
            return random_resized_crop_flip(x, self.image_size, gen, scale=self.rrc_scale, flip=self.flip)
        if gen is None:
            x = self.images.index_select(0, idx)
        else:
            b, p = idx.numel(), self.crop_padding
            oy = torch.randint(0, 2 * p + 1, (b,), generator=gen, device=self.device)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=gen, device=self.device)
            fl = torch.rand(b, generator=gen, device=self.device) < 0.5
            if not self.flip:
                fl = torch.zeros_like(fl)
            x = crop_flip(self.images, idx, oy, ox, fl, p)
        x = x.float().mul_(self.scale).add_(self.shift)
        h, w = x.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=self.image_size < min(h, w))
        return x

    def __iter__(self):
        order = self._order()
        gen = epoch_generator(self.seed, self.epoch, self.device) if self.train and self.augment else None
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self._batch(idx, gen), self.labels.index_select(0, idx)


def loader_images_per_second(loader, n_batches: int) -> float:
    """Images per second over ``n_batches`` batches (after one untimed warm-up batch)."""
    def sync(dev):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    it = iter(loader)
    x, _ = next(it)
    sync(x.device)
    seen, start = 0, time.perf_counter()
    for _ in range(n_batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        seen += x.shape[0]
    sync(x.device)
    return seen / max(time.perf_counter() - start, 1e-9)
