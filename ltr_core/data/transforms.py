"""File-path transforms (the standard ImageNet recipe, e.g. Kang et al. ICLR 2020; Liu et al. 2019).

train: RandomResizedCrop(S) -> RandomHorizontalFlip -> tensor in [0, 1] -> Normalize(mean, std)
eval:  Resize(int(S / 0.875)) -> CenterCrop(S) -> tensor -> Normalize   (S = 224: Resize 256)
Interpolation: bilinear (torchvision's default) unless ``interpolation="bicubic"``; recorded so results state it.
Test-time ensembling (PEL/LIFT): Resize(S + 24) -> FiveCrop(S) -> [5, 3, S, S] (:func:`five_crop_transform`).
"""

from __future__ import annotations

import torch

# torchvision is imported on first use (it pulls in torch._dynamo, ~2 s): runs on the uint8 tensor path
# (CIFAR, digits) never need it.


def _v2():
    from torchvision.transforms import v2

    return v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATION = "bilinear"


INTERPOLATIONS = ("bilinear", "bicubic")


def _mode(interpolation: str):
    """torchvision's InterpolationMode for ``bilinear`` / ``bicubic``."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    return _v2().InterpolationMode(interpolation)


def _to_normalised(mean, std) -> list:
    v2 = _v2()
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=(0.08, 1.0),
                    interpolation: str = INTERPOLATION):
    """RandomResizedCrop(scale) + horizontal flip + normalise (PIL image -> float32 [3, S, S])."""
    v2 = _v2()
    return v2.Compose([v2.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=_mode(interpolation),
                                           antialias=True), v2.RandomHorizontalFlip(),
                       *_to_normalised(mean, std)])


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   interpolation: str = INTERPOLATION):
    """Resize(int(S/0.875)) + CenterCrop(S) + normalise."""
    v2 = _v2()
    return v2.Compose([v2.Resize(int(image_size / 0.875), interpolation=_mode(interpolation), antialias=True),
                       v2.CenterCrop(image_size), *_to_normalised(mean, std)])


class FiveCropStack:
    """Test-time ensembling views (PEL/LIFT, methods.md §5.1): Resize(S + expand) of the shorter side,
    FiveCrop(S) (top-left, top-right, bottom-left, bottom-right, centre: torchvision's order), each
    normalised -> float32 [5, 3, S, S]. Picklable, so it runs in DataLoader workers."""

    def __init__(self, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, expand: int = 24,
                 interpolation: str = INTERPOLATION) -> None:
        v2 = _v2()
        self.size = int(image_size)
        self.resize = v2.Resize(self.size + int(expand), interpolation=_mode(interpolation), antialias=True)
        self.normalise = v2.Compose(_to_normalised(mean, std))

    def __call__(self, image) -> torch.Tensor:
        crops = _v2().functional.five_crop(self.resize(image), [self.size, self.size])
        return torch.stack([self.normalise(c) for c in crops])


def five_crop_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, expand: int = 24,
                        interpolation: str = INTERPOLATION) -> FiveCropStack:
    """Resize(S + expand) + FiveCrop(S) + normalise: a PIL image -> float32 [5, 3, S, S]."""
    return FiveCropStack(image_size, mean, std, expand, interpolation)
