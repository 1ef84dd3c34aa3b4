"""Evaluation views on the device: centre crop and five-crop test-time ensembling (TTE).

PEL/LIFT evaluate with (methods.md §5.1, item 10)

* no TTE: Resize(int(S / 0.875)) of the shorter side + CenterCrop(S)   (S = 224: Resize 256);
* TTE:    Resize(S + expand) of the shorter side + FiveCrop(S) (expand 24: 248 -> 224), and the
  **logits** of the five crops are averaged: z(x) = (1/5) Σ_v z(crop_v(x)).

The file path does this on PIL images (``ltr_core.data.transforms.eval_transform`` /
``five_crop_transform``); the small-image path (CIFAR, digits: uint8 on the device) does it here, on a
normalised float batch, with the same geometry (torchvision's crop offsets: centre top =
round((H - S) / 2), five crops in the order top-left, top-right, bottom-left, bottom-right, centre).
Resizing after normalising is exact: bilinear and bicubic weights sum to 1.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def resize_shorter(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize [B, C, H, W] so that the shorter side is ``size`` (longer: int(size * long / short), torchvision's rule)."""
    h, w = x.shape[-2:]
    if h <= w:
        new = (size, int(size * w / h))
    else:
        new = (int(size * h / w), size)
    if new == (h, w):
        return x
    return F.interpolate(x, size=new, mode=interpolation, align_corners=False,
                         antialias=interpolation in ("bilinear", "bicubic") and new[0] < h)


def _crop(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return x[..., top:top + size, left:left + size]


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre S x S crop (top = round((H - S) / 2), left likewise), as torchvision's CenterCrop."""
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the image {h}x{w}")
    return _crop(x, int(round((h - size) / 2.0)), int(round((w - size) / 2.0)), size)


def five_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, 5, C, S, S]: top-left, top-right, bottom-left, bottom-right, centre."""
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the image {h}x{w}")
    views = [_crop(x, 0, 0, size), _crop(x, 0, w - size, size), _crop(x, h - size, 0, size),
             _crop(x, h - size, w - size, size), center_crop(x, size)]
    return torch.stack(views, dim=1)


def eval_views(x: torch.Tensor, size: int, *, tte: bool, expand: int = 24, interpolation: str = "bilinear") -> torch.Tensor:
    """No TTE: resize to int(S / 0.875) + centre crop -> [B, C, S, S]; TTE: resize to S + expand + five crops
    -> [B, 5, C, S, S]."""
    if tte:
        return five_crop(resize_shorter(x, size + expand, interpolation), size)
    return center_crop(resize_shorter(x, int(size / 0.875), interpolation), size)


def average_views(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn(x) for a batch [B, C, H, W]; the mean of fn over the views of [B, V, C, H, W] (one view at a time)."""
    if x.ndim == 4:
        return fn(x)
    if x.ndim != 5:
        raise ValueError(f"expected images [B, C, H, W] or views [B, V, C, H, W], got {tuple(x.shape)}")
    out = fn(x[:, 0])
    for v in range(1, x.shape[1]):
        out = out + fn(x[:, v])
    return out / x.shape[1]


def stack_views(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn per view: [B, C, H, W] -> fn(x); [B, V, C, H, W] -> [B, V, ...] (features cached per crop)."""
    if x.ndim == 4:
        return fn(x)
    return torch.stack([fn(x[:, v]) for v in range(x.shape[1])], dim=1)


class ViewLoader:
    """Wraps an evaluation loader of full images (the small-image path) and yields (eval_views(x), y)."""

    def __init__(self, loader, size: int, *, tte: bool, expand: int = 24, interpolation: str = "bilinear") -> None:
        self.loader, self.size, self.tte, self.expand, self.interpolation = loader, int(size), bool(tte), int(expand), interpolation

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield eval_views(x, self.size, tte=self.tte, expand=self.expand, interpolation=self.interpolation), y
