"""Losses that shift or rescale the logits by class statistics (conventions: :mod:`ltr_core.losses`):
LDAM(-DRW) margins m_c ~ n_c^-1/4, the logit-adjusted loss, Balanced Softmax, Bal-BCE (the prior log-odds)
and LADE (PC-softmax CE + the LADE regulariser). All are registered in :data:`ltr_core.losses.LOSSES`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .loss_utils import _buffer, _counts, class_balanced_weights


class LDAMLoss(nn.Module):
    """LDAM loss with optional deferred re-weighting (Cao et al., "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019; methods.md §2.4).

    m_c = C_m / n_c^{1/4} with C_m chosen so max_c m_c = ``max_margin`` (the rarest class);
    L = CE(s · (z − m_y · onehot(y)), y, weight = w(epoch)), s = ``scale``.

    **z must be cosine logits** z_c = cos(f, w_c) in [-1, 1] (LDAM's normalised linear layer): use
    ``head: cosine`` with ``cosine_scale: 1.0`` so that s multiplies plain cosines.

    DRW (``drw_epoch`` not None): weights all 1 for epochs < ``drw_epoch``, then the class-balanced
    weights of β = ``drw_beta`` normalised to Σ w = C (:func:`class_balanced_weights`); the engine
    selects the phase through :meth:`set_epoch` (0-based epochs, as LDAM's ``epoch // 160``).
    Weights all 1 give the plain batch mean.
    """

    def __init__(self, class_counts, max_margin: float = 0.5, scale: float = 30.0, drw_epoch: int | None = None,
                 drw_beta: float = 0.9999):
        super().__init__()
        if max_margin < 0 or scale <= 0:
            raise ValueError(f"LDAM needs max_margin >= 0 and scale > 0, got {max_margin}, {scale}")
        n = _counts(class_counts, "LDAM", positive=True)
        m = n ** -0.25
        self.register_buffer("margins", _buffer(max_margin * m / m.max()))
        self.scale = float(scale)
        self.drw_epoch = None if drw_epoch is None else int(drw_epoch)
        self.register_buffer("drw_weight", class_balanced_weights(n, drw_beta) if drw_epoch is not None else None)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def weight(self) -> torch.Tensor | None:
        """The class weight of the current epoch (None: all ones)."""
        if self.drw_epoch is None or self.epoch < self.drw_epoch:
            return None
        return self.drw_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        margin = self.margins.to(z.device)[target]
        z = z - F.one_hot(target, z.shape[1]).to(z.dtype) * margin[:, None]
        w = self.weight
        return F.cross_entropy(self.scale * z, target, weight=None if w is None else w.to(z.device))


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted loss (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021; methods.md §2.5).

    L = CE(z + log(π^τ + 1e-12), y), π = n / N (the 1e-12 of the reference code keeps empty classes
    finite). τ = 0 is plain CE (a constant shift). Raw z at test.
    """

    def __init__(self, class_counts, tau: float = 1.0):
        super().__init__()
        n = _counts(class_counts, "logit_adjusted", positive=False)
        self.register_buffer("offset", _buffer(np.log(np.power(n / n.sum(), tau) + 1e-12)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        return F.cross_entropy(z + self.offset.to(z.device), target)


class BalancedSoftmax(nn.Module):
    """Balanced Softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
    NeurIPS 2020; methods.md §2.6).

    L = CE(z + log n, y) — the LA loss with τ = 1 (log n = log π + log N, a constant shift per row,
    so the value is the same). Raw z at test.
    """

    def __init__(self, class_counts):
        super().__init__()
        self.register_buffer("offset", _buffer(np.log(_counts(class_counts, "balanced_softmax", positive=True))))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        return F.cross_entropy(z + self.offset.to(z.device), target)


class BalancedBCE(nn.Module):
    """Bal-BCE (Xu et al., "Learning Imbalanced Data with Vision Transformers" (LiVT), CVPR 2023; methods.md §2.7).

    z̃_j = z_j + τ · (log π_j − log(1 − π_j)) (the prior log-odds, scaled by τ);
    L = Σ_{i,j} BCEWithLogits(z̃_ij, t_ij) / B.
    Targets t: soft targets [B, C] as given (mixup/cutmix), else one-hot smoothed to
    off = ε/C, on = 1 − ε + ε/C (ε = ``label_smoothing``). τ is applied (the LiVT release hard-codes
    τ = 1 and ignores ``--bal_tau``; τ = 1 reproduces it). Raw z at test.
    """

    def __init__(self, class_counts, tau: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        n = _counts(class_counts, "bal_bce", positive=True)
        if n.size < 2:
            raise ValueError("bal_bce needs >= 2 classes (log(1 - π) is -inf for a single class)")
        prior = n / n.sum()
        self.tau = float(tau)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("offset", _buffer(self.tau * (np.log(prior) - np.log1p(-prior))))

    def targets(self, target: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Soft targets as given, or smoothed one-hot of the int labels."""
        if target.dim() == 2:
            return target.float()
        eps = self.label_smoothing
        t = torch.full((target.shape[0], num_classes), eps / num_classes, device=target.device)
        return t.scatter_(1, target[:, None], 1.0 - eps + eps / num_classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        t = self.targets(target, z.shape[1])
        return F.binary_cross_entropy_with_logits(z + self.offset.to(z.device), t, reduction="sum") / z.shape[0]


class LADELoss(nn.Module):
    """LADE (Hong et al., "Disentangling Label Distribution for Long-tailed Visual Recognition", CVPR 2021),
    as hyperconnect/LADE trains it (``PriorCELoss`` weight 1 + ``LADELoss`` weight α on the same logits).

    L = L_PC + α · L_LADE, π = n / N the training prior, B the batch, C the classes, n_c^B the
    number of samples of class c in the batch:

      L_PC   = CE(z + log(π + 1e-9), y)                                 (PC-softmax CE = Balanced Softmax)
      L_LADE = −Σ_{c=1..C} π_c · [ F_c − S_c − λ · S_c² ]               (REMINE lower bound, λ = remine_lambda)
      F_c    = Σ_{i: y_i = c} z_ic / (n_c^B + 1e-8)                     (0 for a class absent from the batch)
      S_c    = log( (1/B) Σ_{i=1..B} exp(z_ic − log(π_c + 1e-9) + log(1/C + 1e-9)) )

    F_c − S_c is the Donsker–Varadhan bound on the log-likelihood ratio of class c; S_c takes the
    expectation under the balanced (uniform-prior) marginal by the importance factor (1/C)/π_c; λ S_c²
    is the REMINE regulariser (original default λ = 0.1, α = 0.1). As in the original code the sum runs
    over **all** C classes (absent ones contribute π_c (S_c + λ S_c²)). Raw z at test (uniform target prior).
    """

    def __init__(self, class_counts, alpha: float = 0.1, remine_lambda: float = 0.1):
        super().__init__()
        n = _counts(class_counts, "lade", positive=True)
        prior = n / n.sum()
        self.alpha, self.remine_lambda = float(alpha), float(remine_lambda)
        self.register_buffer("prior", _buffer(prior))
        self.register_buffer("log_prior", _buffer(np.log(prior + 1e-9)))
        self.log_balanced = math.log(1.0 / n.size + 1e-9)

    def regulariser(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_LADE of the docstring for float32 logits ``z`` [B, C]."""
        onehot = F.one_hot(target, z.shape[1]).to(z.dtype)
        first = (onehot * z).sum(0) / (onehot.sum(0) + 1e-8)
        shifted = z - self.log_prior.to(z.device) + self.log_balanced
        second = torch.logsumexp(shifted, dim=0) - math.log(z.shape[0])
        bound = first - second - self.remine_lambda * second.pow(2)
        return -(self.prior.to(z.device) * bound).sum()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        pc = F.cross_entropy(z + self.log_prior.to(z.device), target)
        return pc + self.alpha * self.regulariser(z, target)
