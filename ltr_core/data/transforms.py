"""File-path transforms (the standard ImageNet recipe, e.g. Kang et al. ICLR 2020; Liu et al. 2019).

train: RandomResizedCrop(S) -> RandomHorizontalFlip -> tensor in [0, 1] -> Normalize(mean, std)
eval:  Resize(int(S / 0.875)) -> CenterCrop(S) -> tensor -> Normalize   (S = 224: Resize 256)
Interpolation: bilinear (torchvision's default), recorded here so results state it.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATION = "bilinear"


def _to_normalised(mean, std) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """RandomResizedCrop + horizontal flip + normalise (PIL image -> float32 [3, S, S])."""
    return v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(),
                       *_to_normalised(mean, std)])


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Resize(int(S/0.875)) + CenterCrop(S) + normalise."""
    return v2.Compose([v2.Resize(int(image_size / 0.875), antialias=True), v2.CenterCrop(image_size),
                       *_to_normalised(mean, std)])
