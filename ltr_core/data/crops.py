"""Per-image crops on tensors, shared by the device-side file paths (uint8 cache, GPU decode).

* :func:`rrc_box`: a RandomResizedCrop box by torchvision's sampling rule (Szegedy et al. 2015's
  "Inception" crop): area fraction a ~ U(scale), log aspect r ~ U(log 3/4, log 4/3),
  w = round(sqrt(a r A)), h = round(sqrt(a A / r)) of the image area A, up to 10 tries, else the
  whole image clamped to the ratio bounds, centred; the top-left corner uniform over the positions
  that keep the box inside the image;
* :func:`resize_bilinear`: bilinear resize with antialias when shrinking (what torchvision's
  tensor Resize does; close to PIL's, not bit-equal);
* :func:`shorter_side_size`: torchvision's ``Resize(int)`` output size, shorter side -> S,
  longer side -> int(S * long / short);
* :func:`center_box`: torchvision's ``CenterCrop`` offsets, ``int(round((H - h) / 2))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rrc_box(height: int, width: int, gen: torch.Generator, scale=(0.08, 1.0),
            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop box (torchvision's sampling rule, see module doc)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item())
        aspect = math.exp(log_lo + (log_hi - log_lo) * torch.rand(1, generator=gen).item())
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_bilinear(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] (any dtype) -> float [C, h, w], bilinear, antialias when either side shrinks."""
    x = img.unsqueeze(0).float()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                         antialias=size[0] < img.shape[-2] or size[1] < img.shape[-1])[0]


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` on an H x W image: (h, w) with the shorter side = size."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_box(height: int, width: int, h: int, w: int) -> tuple[int, int]:
    """(top, left) of torchvision's ``CenterCrop((h, w))`` on an H x W image."""
    return int(round((height - h) / 2.0)), int(round((width - w) / 2.0))


def rrc_flip(img: torch.Tensor, size: int, gen: torch.Generator, scale=(0.08, 1.0), flip: bool = True) -> torch.Tensor:
    """RandomResizedCrop(size, scale) + horizontal flip (p = 1/2; ``flip=False``: none) of one [C, H, W]
    image -> float [C, S, S]. Draws from ``gen``: the box (:func:`rrc_box`), then the flip."""
    top, left, h, w = rrc_box(img.shape[-2], img.shape[-1], gen, scale)
    out = resize_bilinear(img[:, top:top + h, left:left + w], (size, size))
    return out.flip(-1) if flip and torch.rand(1, generator=gen).item() < 0.5 else out


def resize_center_crop(img: torch.Tensor, resize: int, size: int) -> torch.Tensor:
    """Resize(resize) (shorter side) + CenterCrop(size) of one [C, H, W] image -> float [C, S, S];
    no resample when the shorter side already is ``resize`` (then the crop is the stored pixels)."""
    hh, ww = img.shape[-2:]
    if min(hh, ww) != resize:
        img = resize_bilinear(img, shorter_side_size(hh, ww, resize))
        hh, ww = img.shape[-2:]
    top, left = center_box(hh, ww, size, size)
    return img[:, top:top + size, left:left + size].float()
