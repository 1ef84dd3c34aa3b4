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


def tau_normalized(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """τ-norm (Kang et al., ICLR 2020): w̃_c = w_c / ‖w_c‖^τ (rows = classes); τ = 0 keeps W, τ = 1 unit rows.

    The τ-normalised classifier drops the bias: z_c = w̃_c · f.
    """
    return weight / weight.norm(dim=1, keepdim=True).pow(tau)


class LWSHead(nn.Module):
    """Learnable weight scaling (Kang et al., ICLR 2020): z_c = g_c · (w_c · f + b_c).

    ``base`` (the stage-1 classifier, weights and bias) is frozen; only the per-class scale g
    (initialised to 1, so the head starts equal to ``base``) is trained.
    """

    def __init__(self, base: nn.Module, num_classes: int):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(num_classes))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * self.base(f)
