"""Every training loss of the study, one small ``nn.Module`` each, and the registry that builds them.

A loss is called as ``loss(logits, target)`` with ``target`` the int64 labels [B] (or soft targets
[B, C] where the loss supports them). Losses that depend on the training distribution receive the
per-class training counts ``n`` at construction (LIFT/PEL style); losses whose behaviour changes
over training (DRW) implement ``set_epoch(epoch)``, which the engine calls before every epoch.
:func:`build_loss` is the factory used by every method; register new losses in :data:`LOSSES`.

Conventions shared by all losses here (methods.md §2):

* logits are cast to float32 (``logits.float()``), so the loss is computed in fp32 under bf16 autocast;
* class statistics are float32 buffers, moved to the logits' device on use (the engine does not move
  the criterion), so every loss runs on CPU and CUDA alike;
* π = n / N is the training class prior; C the number of classes; B the batch size;
* "mean" is over the batch (÷ B). The one exception is softmax CE with a class weight (CB-CE,
  LDAM-DRW): PyTorch's ``cross_entropy(weight=w)`` rule Σ_i w_{y_i} l_i / Σ_i w_{y_i}, as the LDAM-DRW
  code (``nn.CrossEntropyLoss(weight)``) trains it (methods.md §2.3). The weighted focal loss (CB-focal)
  divides by B, as LDAM-DRW's ``FocalLoss`` does (``focal_loss(...).mean()``).

Registered names (:data:`LOSSES`): ce, focal, cb, ldam, ldam_drw, logit_adjusted, balanced_softmax,
bal_bce, mislas, lade, ib. The margin and logit-offset losses (LDAM, LA, Balanced Softmax, Bal-BCE, LADE) are in
:mod:`ltr_core.losses_margin`, the shared helpers in :mod:`ltr_core.loss_utils`; all are importable from here.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .loss_utils import (FOCAL_FORMS, _buffer, _counts, _focal_per_sample,  # noqa: F401 (re-exported)
                         _sigmoid_focal_per_sample, class_balanced_weights)
from .losses_margin import BalancedBCE, BalancedSoftmax, LADELoss, LDAMLoss, LogitAdjustedLoss

MISLAS_SHAPES = ("concave", "linear", "convex")
CB_BASES = ("ce", "focal", "sigmoid", "sigmoid_focal")


# --------------------------------------------------------------------------- losses


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


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), in the
    LDAM-DRW form (methods.md §2.2).

    L = (1/B) Σ_i (1 − p_i)^γ · l_i with l_i = w_{y_i} · CE_i and p_i = exp(−l_i), the code of LDAM-DRW
    (``focal_loss(F.cross_entropy(z, y, weight, reduction='none'), γ).mean()``): divided by the batch
    size B, not by Σ w_{y_i}. Without a class weight l_i = −log p_{y_i}. γ = 0 is CE (weighted: Σ w l / B).
    ``form="paper"`` keeps the weight outside the modulator, −w_y (1 − p_y)^γ log p_y with the true
    softmax p_y (the α-balanced focal loss of the paper), also divided by B.
    """

    def __init__(self, class_counts=None, gamma: float = 1.0, weight: torch.Tensor | None = None,
                 form: str = "ldam"):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        if form not in FOCAL_FORMS:
            raise ValueError(f"focal form must be one of {FOCAL_FORMS}, got {form!r}")
        self.gamma, self.form = float(gamma), form
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _focal_per_sample(logits.float(), target, self.gamma, self.weight, self.form).mean()


class ClassBalancedLoss(nn.Module):
    """Class-balanced loss (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019).

    w_c = (1 - β) / (1 - β^{n_c}), normalised so Σ_c w_c = C (methods.md §2.3), applied as LDAM-DRW's
    ``Reweight`` rule does (the code of the LDAM paper's CB re-runs):

    * ``base="ce"``: PyTorch weighted CE, L = Σ_i w_{y_i} CE_i / Σ_i w_{y_i} (``nn.CrossEntropyLoss(weight)``);
    * ``base="focal"``: LDAM-DRW's weighted focal loss (:class:`FocalLoss`, exponent γ), divided by B:
      L = (1/B) Σ_i (1 − e^{−l_i})^γ l_i, l_i = w_{y_i} CE_i. ``focal_form="paper"``: the weight outside the
      modulator, (1/B) Σ_i −w_{y_i} (1 − p_{y_i})^γ log p_{y_i}.
    * ``base="sigmoid_focal"`` / ``"sigmoid"`` (γ = 0): the one-vs-all sigmoid focal loss of Cui et al.'s own
      code (the code behind the CB paper's CIFAR numbers, e.g. CB-focal 74.57 on CIFAR-10-LT IR 100),
      L = (1/B) Σ_i w_{y_i} Σ_j (1 − q_ij)^γ BCE(z_ij, [j = y_i]) (:func:`_sigmoid_focal_per_sample`). That
      code also starts the classifier's bias at −log(C − 1) (``head_init: sigmoid_prior``) and keeps
      weight decay off it (``head_bias_decay: false``).
    """

    def __init__(self, class_counts, beta: float = 0.9999, base: str = "ce", gamma: float = 1.0,
                 focal_form: str = "ldam"):
        super().__init__()
        if base not in CB_BASES:
            raise ValueError(f"cb_loss must be one of {CB_BASES}, got {base!r}")
        self.base = base
        self.register_buffer("weight", class_balanced_weights(class_counts, beta))
        if gamma < 0 or focal_form not in FOCAL_FORMS:
            raise ValueError(f"CB focal needs gamma >= 0 and a form in {FOCAL_FORMS}, got {gamma}, {focal_form!r}")
        self.gamma, self.focal_form = float(gamma), focal_form

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        w = self.weight.to(z.device)
        if self.base == "ce":
            return F.cross_entropy(z, target, weight=w)
        if self.base in ("sigmoid", "sigmoid_focal"):
            return _sigmoid_focal_per_sample(z, target, self.gamma if self.base == "sigmoid_focal" else 0.0, w).mean()
        return _focal_per_sample(z, target, self.gamma, w, self.focal_form).mean()


def mislas_epsilons(class_counts, eps_head: float, eps_tail: float, shape: str) -> np.ndarray:
    """Per-class smoothing ε_c of MiSLAS label-aware smoothing (Zhong et al., CVPR 2021).

    r_c = (n_c − n_min) / (n_max − n_min) ∈ [0, 1] (r = 1 for every class when all counts are equal);
    concave: ε_c = ε_tail + (ε_head − ε_tail) · sin(π r_c / 2)
    linear:  ε_c = ε_tail + (ε_head − ε_tail) · r_c
    convex:  ε_c = ε_tail + (ε_head − ε_tail) · (1 − cos(π r_c / 2))
             (= ε_head + (ε_head − ε_tail) · sin(3π/2 + π r_c / 2), the paper's writing)
    so the head class gets ε_head and the rarest class ε_tail.
    """
    if shape not in MISLAS_SHAPES:
        raise ValueError(f"mislas_shape must be one of {MISLAS_SHAPES}, got {shape!r}")
    if not (0.0 <= eps_head < 1.0 and 0.0 <= eps_tail < 1.0):
        raise ValueError(f"MiSLAS epsilons must be in [0, 1), got head {eps_head}, tail {eps_tail}")
    n = _counts(class_counts, "mislas", positive=False)
    span = n.max() - n.min()
    r = (n - n.min()) / span if span > 0 else np.ones_like(n)
    f = {"concave": np.sin(0.5 * math.pi * r), "linear": r, "convex": 1.0 - np.cos(0.5 * math.pi * r)}[shape]
    return eps_tail + (eps_head - eps_tail) * f


class MiSLASLoss(nn.Module):
    """Label-aware smoothing of MiSLAS (Zhong et al., "Improving Calibration for Long-Tailed
    Recognition", CVPR 2021).

    ε_y from :func:`mislas_epsilons`; target q = (1 − ε_y) · onehot(y) + ε_y / C (uniform over all C
    classes, the convention of our ``ce`` label smoothing), L = mean_i −Σ_j q_ij log softmax(z_i)_j.
    (The paper's equation spreads ε_y over the C − 1 other classes instead; the two differ by
    replacing ε_y with ε_y · C / (C − 1).)
    """

    def __init__(self, class_counts, eps_head: float = 0.3, eps_tail: float = 0.0, shape: str = "concave"):
        super().__init__()
        self.register_buffer("eps", _buffer(mislas_epsilons(class_counts, eps_head, eps_tail, shape)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        eps = self.eps.to(logp.device)[target]
        nll = -logp.gather(1, target[:, None]).squeeze(1)
        uniform = -logp.mean(dim=1)  # -Σ_j (1/C) log p_j
        return ((1.0 - eps) * nll + eps * uniform).mean()


class InfluenceBalancedLoss(nn.Module):
    """Influence-balanced loss (Park et al., "Influence-Balanced Loss for Imbalanced Visual Classification",
    ICCV 2021): each sample's class-weighted CE divided by its influence on the head W, the entrywise L1 norm
    of ∂CE/∂W = (p − onehot(y)) hᵀ (h the head's input), which is ‖p − onehot(y)‖₁ · ‖h‖₁:
      L = (1/B) Σ_i w_{y_i} · α / (‖p_i − onehot(y_i)‖₁ · ‖h_i‖₁ + ε) · CE(z_i, y_i),  w_c = C n_c⁻¹ / Σ_j n_j⁻¹,
    α = ``alpha`` (paper 1000), ε = 1e-3, the influence not detached (as the original); CE before ``start_epoch``."""

    wants_features = True  # called loss(z, y, features=h) through study.FeatureTap

    def __init__(self, class_counts, alpha: float = 1000.0, start_epoch: int = 0, eps: float = 1e-3):
        super().__init__()
        inv = 1.0 / _counts(class_counts, "ib", positive=True)
        self.register_buffer("weight", _buffer(inv * inv.size / inv.sum()))
        self.alpha, self.start_epoch, self.eps, self.epoch = float(alpha), int(start_epoch), float(eps), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        if self.epoch < self.start_epoch:
            return F.cross_entropy(z, target)
        grad = (z.softmax(1) - F.one_hot(target, z.shape[1])).abs().sum(1)  # ‖p − y‖₁
        influence = grad * features.float().flatten(1).abs().sum(1)  # · ‖h‖₁
        ce = F.cross_entropy(z, target, weight=self.weight.to(z.device), reduction="none")  # w_{y_i} CE_i
        return (ce * self.alpha / (influence + self.eps)).mean()


# --------------------------------------------------------------------------- registry


def _smoothing_unused(loss_cfg) -> None:
    if getattr(loss_cfg, "label_smoothing", 0.0):
        raise ValueError(f"label_smoothing={loss_cfg.label_smoothing} is not used by loss {loss_cfg.loss!r}; "
                         f"only 'ce' and 'bal_bce' apply it (set it to 0)")


def _ce(loss_cfg, counts: np.ndarray) -> nn.Module:
    return CrossEntropy(counts, label_smoothing=loss_cfg.label_smoothing)


def _focal(loss_cfg, counts: np.ndarray) -> nn.Module:
    _smoothing_unused(loss_cfg)
    return FocalLoss(counts, gamma=loss_cfg.focal_gamma)


def _cb(loss_cfg, counts: np.ndarray) -> nn.Module:
    _smoothing_unused(loss_cfg)
    return ClassBalancedLoss(counts, beta=loss_cfg.cb_beta, base=loss_cfg.cb_loss, gamma=loss_cfg.focal_gamma)


def _ldam(loss_cfg, counts: np.ndarray) -> nn.Module:
    _smoothing_unused(loss_cfg)
    return LDAMLoss(counts, max_margin=loss_cfg.ldam_max_margin, scale=loss_cfg.ldam_scale)


def _ldam_drw(loss_cfg, counts: np.ndarray) -> nn.Module:
    _smoothing_unused(loss_cfg)
    return LDAMLoss(counts, max_margin=loss_cfg.ldam_max_margin, scale=loss_cfg.ldam_scale,
                    drw_epoch=loss_cfg.drw_epoch, drw_beta=loss_cfg.drw_beta)


def _logit_adjusted(loss_cfg, counts: np.ndarray) -> nn.Module:
    _smoothing_unused(loss_cfg)
    return LogitAdjustedLoss(counts, tau=loss_cfg.la_tau)


def _balanced_softmax(loss_cfg, counts: np.ndarray) -> nn.Module:
    _smoothing_unused(loss_cfg)
    return BalancedSoftmax(counts)


def _bal_bce(loss_cfg, counts: np.ndarray) -> nn.Module:
    return BalancedBCE(counts, tau=loss_cfg.bal_bce_tau, label_smoothing=loss_cfg.label_smoothing)


def _mislas(loss_cfg, counts: np.ndarray) -> nn.Module:
    _smoothing_unused(loss_cfg)
    return MiSLASLoss(counts, eps_head=loss_cfg.mislas_eps_head, eps_tail=loss_cfg.mislas_eps_tail,
                      shape=loss_cfg.mislas_shape)


def _lade(loss_cfg, counts: np.ndarray) -> nn.Module:
    _smoothing_unused(loss_cfg)
    return LADELoss(counts, alpha=loss_cfg.lade_alpha)


def _ib(loss_cfg, counts: np.ndarray) -> nn.Module:
    _smoothing_unused(loss_cfg)
    return InfluenceBalancedLoss(counts, alpha=loss_cfg.ib_alpha, start_epoch=loss_cfg.ib_start_epoch)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": _ce,
    "focal": _focal,
    "cb": _cb,
    "ldam": _ldam,
    "ldam_drw": _ldam_drw,
    "logit_adjusted": _logit_adjusted,
    "balanced_softmax": _balanced_softmax,
    "bal_bce": _bal_bce,
    "mislas": _mislas,
    "lade": _lade,
    "ib": _ib,
}


def build_loss(loss_cfg, class_counts) -> nn.Module:
    """The loss named ``loss_cfg.loss``, given the training class counts."""
    if loss_cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {loss_cfg.loss!r}; valid losses: {sorted(LOSSES)}")
    return LOSSES[loss_cfg.loss](loss_cfg, np.asarray(class_counts, dtype=np.int64))
