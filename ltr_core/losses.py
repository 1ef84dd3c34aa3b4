"""Every training loss of the study, one small ``nn.Module`` each, in one flat module.

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
bal_bce, mislas, lade.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MISLAS_SHAPES = ("concave", "linear", "convex")
CB_BASES = ("ce", "focal")


# --------------------------------------------------------------------------- helpers


def _counts(class_counts, name: str, *, positive: bool) -> np.ndarray:
    """The class counts as a 1-D float64 array; ``positive`` requires n_c >= 1 for every class."""
    n = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    if n.size == 0 or (n < 0).any():
        raise ValueError(f"{name}: class counts must be a non-empty array of non-negative integers, got {n}")
    if positive and (n < 1).any():
        empty = np.flatnonzero(n < 1).tolist()
        raise ValueError(f"{name}: every class needs >= 1 training image (empty classes {empty}); "
                         f"the formula uses log n_c or 1/n_c")
    if n.sum() <= 0:
        raise ValueError(f"{name}: class counts sum to 0")
    return n


def _buffer(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32)


def class_balanced_weights(class_counts, beta: float) -> torch.Tensor:
    """Cui et al. (CVPR 2019) effective-number weights, w_c = (1-β)/(1-β^{n_c}), normalised to Σ_c w_c = C.

    β = 0 gives w_c = 1 for every class (the "no re-weighting" phase of DRW).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced beta must be in [0, 1), got {beta}")
    n = _counts(class_counts, "class-balanced weights", positive=True)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return _buffer(w * n.size / w.sum())


FOCAL_FORMS = ("ldam", "paper")


def _focal_per_sample(z: torch.Tensor, target: torch.Tensor, gamma: float, weight: torch.Tensor | None = None,
                      form: str = "ldam") -> torch.Tensor:
    """Per-sample softmax focal loss, with an optional class weight w (all ones when None).

    ``ldam`` (LDAM-DRW ``losses.FocalLoss``, the code of the LDAM paper's focal / CB-focal rows):
        l_i = w_{y_i} · CE_i,  p_i = exp(−l_i),  loss_i = (1 − p_i)^γ · l_i   (p_i = p_{y_i}^{w_{y_i}})
    ``paper`` (the α-balanced focal loss of Lin et al. with α = w; Cui et al. likewise put their weight
    outside the modulator, on the sigmoid focal loss):
        loss_i = −w_{y_i} · (1 − p_{y_i})^γ · log p_{y_i},  p = softmax(z)
    The two agree when w = 1.
    """
    if form not in FOCAL_FORMS:
        raise ValueError(f"focal form must be one of {FOCAL_FORMS}, got {form!r}")
    nll = -F.log_softmax(z, dim=1).gather(1, target[:, None]).squeeze(1)
    w = None if weight is None else weight.to(z.device)[target]
    if form == "ldam" and w is not None:
        nll, w = w * nll, None
    loss = nll if gamma == 0 else (1.0 - torch.exp(-nll)).clamp_min(0.0).pow(gamma) * nll
    return loss if w is None else w * loss


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
        return _focal_per_sample(z, target, self.gamma, w, self.focal_form).mean()


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
}


def build_loss(loss_cfg, class_counts) -> nn.Module:
    """The loss named ``loss_cfg.loss``, given the training class counts."""
    if loss_cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {loss_cfg.loss!r}; valid losses: {sorted(LOSSES)}")
    return LOSSES[loss_cfg.loss](loss_cfg, np.asarray(class_counts, dtype=np.int64))
