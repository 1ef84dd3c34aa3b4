"""Every training loss of the study, one small ``nn.Module`` each, in one flat module.

A loss is called as ``loss(logits, target)`` with ``target`` the int64 labels [B] (or soft targets
[B, C] where the loss supports them). Losses that depend on the training distribution receive the
per-class training counts ``n`` at construction (LIFT/PEL style); losses whose behaviour changes
over training (DRW) implement ``set_epoch(epoch)``, which the engine calls before every epoch.
:func:`build_loss` is the factory used by every method; register new losses in :data:`LOSSES`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropy(nn.Module):
    """Softmax cross-entropy with label smoothing (Szegedy et al., CVPR 2016, §7).

    L = -sum_j q_j log softmax(z)_j,  q = (1 - eps) * onehot(y) + eps / C.
    eps = 0 gives the plain CE / ERM baseline.
    """

    def __init__(self, class_counts=None, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)


def _ce(loss_cfg, counts: np.ndarray) -> nn.Module:
    return CrossEntropy(counts, label_smoothing=loss_cfg.label_smoothing)


LOSSES: dict[str, Callable[..., nn.Module]] = {"ce": _ce}


def build_loss(loss_cfg, class_counts) -> nn.Module:
    """The loss named ``loss_cfg.loss``, given the training class counts."""
    if loss_cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {loss_cfg.loss!r}; valid losses: {sorted(LOSSES)}")
    return LOSSES[loss_cfg.loss](loss_cfg, np.asarray(class_counts, dtype=np.int64))
