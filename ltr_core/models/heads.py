"""Classifier heads on top of a pooled feature f.

* linear: z = W f + b.
* cosine: z_c = s * cos(f, w_c) = s * <f/|f|, w_c/|w_c|> (the normalised classifier of LDAM-DRW,
  Cao et al. NeurIPS 2019, and OLTR's cosine-norm classifier, Liu et al. CVPR 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Linear):
    """z = W f + b."""


class CosineHead(nn.Module):
    """z_c = scale * cos(f, w_c); no bias."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-1, 1))
        self.scale = scale

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))


def build_head(name: str, in_features: int, num_classes: int, *, cosine_scale: float = 16.0) -> nn.Module:
    """Factory over :data:`HEADS`."""
    if name == "linear":
        return LinearHead(in_features, num_classes)
    if name == "cosine":
        return CosineHead(in_features, num_classes, cosine_scale)
    raise ValueError(f"unknown head {name!r}; valid heads: {HEADS}")


HEADS = ("linear", "cosine")
