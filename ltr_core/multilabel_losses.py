"""Multi-label losses: TailCLIP's Balanced Asymmetric Loss, ASL, DB-Focal, plain BCE, CLIP contrastive.

Every classification loss here is called as ``loss(logits, targets)`` with logits z [B, C] and
multi-hot targets y [B, C] (any dtype, 0/1), and returns the **mean over the B × C elements** (the
TailCLIP code's reduction; a constant factor between losses is absorbed by the weight λ). Losses that
depend on the training distribution get the per-class counts n_c (training images *containing* c)
and the number of training images N at construction. Logits are computed in float32.

Registered names (:data:`MULTILABEL_LOSSES`, :func:`build_multilabel_loss`): ``bal``, ``asl``,
``db_focal``, ``bce``. The single-label losses live in :mod:`ltr_core.losses`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _counts(class_counts, num_images: int, name: str) -> np.ndarray:
    n = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    if n.size == 0 or (n < 1).any():
        raise ValueError(f"{name}: every class needs >= 1 training image containing it "
                         f"(classes without one: {np.flatnonzero(n < 1).tolist()}); the weights use N / n_c")
    if num_images < n.max():
        raise ValueError(f"{name}: num_images N = {num_images} is smaller than the largest class count "
                         f"{int(n.max())}; pass the number of training images")
    return n


def occurrence_class_weights(class_counts, num_images: int, power: float) -> torch.Tensor:
    """w_c = (N / n_c)^s / max_k (N / n_k)^s ∈ (0, 1]: the rarest class gets 1 (TailCLIP, methods.md §7.1)."""
    n = _counts(class_counts, num_images, "occurrence_class_weights")
    w = np.power(num_images / n, float(power))
    return torch.as_tensor(w / w.max(), dtype=torch.float32)


def asymmetric_terms(x: torch.Tensor, y: torch.Tensor, *, gamma_pos: float, gamma_neg: float, clip: float,
                     label_smoothing: float = 0.0, pos_weight: torch.Tensor | None = None,
                     eps: float = 1e-8) -> torch.Tensor:
    """Per-element asymmetric loss [B, C] on (already normalised) logits x (Ridnik et al., ICCV 2021):

    p = σ(x), q = min(1 − p + m, 1) (m = ``clip``; m = 0: q = 1 − p), ỹ = (1 − ε) y + ε / K,
    ℓ = −[(1 + w_c) ỹ log p + (1 − y) log q] · (1 − p ỹ − q (1 − y))^(γ₊ ỹ + γ₋ (1 − y)),
    with w_c = 0 when ``pos_weight`` is None and logs clamped at ``eps``. The focusing base is clamped at
    0: it is negative only for a negative element with p < m / (1 − ε/K) (x below about −2.9), where the
    original code's fractional power returns NaN; everywhere else the values are identical.
    """
    y = y.to(x.dtype)
    k = x.shape[-1]
    y_s = (1.0 - label_smoothing) * y + label_smoothing / k if label_smoothing > 0 else y
    p = torch.sigmoid(x)
    q = (1.0 - p + clip).clamp(max=1.0) if clip > 0 else 1.0 - p
    log_pos = y_s * torch.log(p.clamp(min=eps))
    if pos_weight is not None:
        log_pos = log_pos * (1.0 + pos_weight.to(x.device, x.dtype))
    loss = log_pos + (1.0 - y) * torch.log(q.clamp(min=eps))
    if gamma_pos > 0 or gamma_neg > 0:
        base = (1.0 - p * y_s - q * (1.0 - y)).clamp(min=0.0)
        loss = loss * torch.pow(base, gamma_pos * y_s + gamma_neg * (1.0 - y))
    return -loss


class BalancedAsymmetricLoss(nn.Module):
    """Balanced Asymmetric Loss (BAL) of TailCLIP / LM-CLIP (Timmermann et al.; methods.md §7.1).

    On CLIP scores z = exp(t)·cos(image, text_c), with N training images and n_c containing class c:
    x̃ = z / max(z) (the **batch maximum** over all B × C scores, not detached: sigmoid would saturate
    on raw scores ~ 100·cos), p = σ(x̃), q = min(1 − p + m, 1), ỹ = (1 − ε) y + ε / K,
    w_c = (N / n_c)^s / max_k (N / n_k)^s, and per element
    ℓ = −[(1 + w_c) ỹ log p + (1 − y) log q] · (1 − p ỹ − q (1 − y))^(γ₊ ỹ + γ₋ (1 − y));
    L = mean over B × C. With γ₊ = 0 positives get plain class-weighted BCE (rare positives up to × 2).
    Defaults: the VOC ViT-B/16 config (γ₋ 9.8, γ₊ 0, m 0.05, ε 0.1, s 1.35). The loss depends on the
    batch (through max z), so it is batch-size sensitive by construction.
    """

    def __init__(self, class_counts, num_images: int, *, gamma_pos: float = 0.0, gamma_neg: float = 9.8,
                 clip: float = 0.05, label_smoothing: float = 0.1, power: float = 1.35, eps: float = 1e-8):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"BAL label_smoothing must be in [0, 1), got {label_smoothing}")
        self.register_buffer("class_weight", occurrence_class_weights(class_counts, num_images, power))
        self.gamma_pos, self.gamma_neg, self.clip = float(gamma_pos), float(gamma_neg), float(clip)
        self.label_smoothing, self.power, self.eps = float(label_smoothing), float(power), float(eps)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        x = z / z.max()
        return asymmetric_terms(x, targets, gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, clip=self.clip,
                                label_smoothing=self.label_smoothing, pos_weight=self.class_weight,
                                eps=self.eps).mean()


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021) on the raw logits:

    p = σ(z), p_m = max(p − m, 0),  ℓ = −[y (1 − p)^γ₊ log p + (1 − y) p_m^γ₋ log(1 − p_m)],
    mean over B × C (the paper sums; lm-clip's variant averages). Paper defaults γ₊ 0, γ₋ 4, m 0.05.
    It is :func:`asymmetric_terms` without smoothing, class weights or batch-max normalisation.
    """

    def __init__(self, *, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        self.gamma_pos, self.gamma_neg, self.clip, self.eps = float(gamma_pos), float(gamma_neg), float(clip), eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return asymmetric_terms(logits.float(), targets, gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg,
                                clip=self.clip, eps=self.eps).mean()


class DistributionBalancedLoss(nn.Module):
    """DB-Focal: distribution-balanced loss (Wu et al., "Distribution-Balanced Loss for Multi-Label
    Classification in Long-Tailed Datasets", ECCV 2020), from the paper's formulas.

    *Re-balanced weighting.* Under class-aware re-sampling an image i with label set Y_i is drawn with
    P^I_i ∝ Σ_{c∈Y_i} 1/n_c, while the class-level expectation for class k is ∝ 1/n_k; their ratio
    r_ik = (1/n_k) / Σ_{c∈Y_i} (1/n_c) is smoothed to r̂_ik = α + σ(β (r_ik − μ)) and weights every
    element (i, k) of the image's row (positives and negatives alike).
    *Negative-tolerant regularisation.* A class-specific bias from the prior log-odds
    b̂_k = −log(N/n_k − 1) shifts the logit, z' = z − ν_k with ν_k = −(κ/λ) b̂_k, and negatives get a
    steeper sigmoid (scale λ, so their shift is κ b̂_k) and a 1/λ weight; with the focal factor:
    ℓ_ik = −B r̂_ik [ y (1 − q)^γ log q + (1/λ)(1 − y) q^γ log(1 − q) ],
    q = σ(z') for y = 1 and q = σ(λ z') for y = 0; L = mean over B × C.
    The bias scaling κ/λ and the balance factor B = 2 are those of the released code
    (wutong16/DistributionBalancedLoss, ``ResampleLoss``). Defaults = its COCO-MLT config: α 0.1, β 10,
    μ 0.2, κ 0.05, λ 2, γ 2, B 2 (its VOC-MLT config: μ 0.3, λ 5). Needs 0 < n_k < N for every class.
    """

    def __init__(self, class_counts, num_images: int, *, alpha: float = 0.1, beta: float = 10.0, mu: float = 0.2,
                 kappa: float = 0.05, neg_scale: float = 2.0, gamma: float = 2.0, balance: float = 2.0):
        super().__init__()
        n = _counts(class_counts, num_images, "DistributionBalancedLoss")
        if (n >= num_images).any():
            raise ValueError(f"DistributionBalancedLoss: classes {np.flatnonzero(n >= num_images).tolist()} occur in "
                             f"every training image; the prior log-odds -log(N/n_k - 1) is infinite")
        self.register_buffer("inv_freq", torch.as_tensor(1.0 / n, dtype=torch.float32))
        nu = (kappa / neg_scale) * np.log(num_images / n - 1.0)  # ν = −(κ/λ) b̂
        self.register_buffer("nu", torch.as_tensor(nu, dtype=torch.float32))
        self.alpha, self.beta, self.mu = float(alpha), float(beta), float(mu)
        self.neg_scale, self.gamma, self.balance = float(neg_scale), float(gamma), float(balance)

    def rebalance_weight(self, targets: torch.Tensor) -> torch.Tensor:
        """r̂_ik = α + σ(β (r_ik − μ)), r_ik = (1/n_k) / Σ_{c∈Y_i} 1/n_c  ([B, C]; rows without labels: r = 0)."""
        y = targets.float()
        inv = self.inv_freq.to(y.device)
        repeat = (y * inv).sum(dim=1, keepdim=True)
        r = torch.where(repeat > 0, inv / repeat.clamp(min=1e-12), torch.zeros_like(repeat))
        return self.alpha + torch.sigmoid(self.beta * (r - self.mu))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float() - self.nu.to(logits.device)  # z' = z − ν
        y = targets.float()
        lam = self.neg_scale
        pos = F.logsigmoid(z)  # log σ(z')
        q_pos = pos.exp()
        neg_logit = lam * z
        neg = F.logsigmoid(-neg_logit)  # log(1 − σ(λ z'))
        q_neg = torch.sigmoid(neg_logit)
        loss = y * (1 - q_pos).pow(self.gamma) * pos + (1 - y) / lam * q_neg.pow(self.gamma) * neg
        return -self.balance * (self.rebalance_weight(y) * loss).mean()


class MultiLabelBCE(nn.Module):
    """Plain binary cross-entropy on the logits: ℓ = −[y log σ(z) + (1 − y) log(1 − σ(z))], mean over B × C."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def clip_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric CLIP InfoNCE over a batch of (image, caption) pairs (Radford et al., ICML 2021):

    S = scale · Î T̂^T (rows L2-normalised), L = ½ [CE(S, arange B) + CE(S^T, arange B)].
    Pair i is the only positive of row i: two images with the same label set are negatives of each other
    (as in TailCLIP's synthetic-caption loss).
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image and caption embeddings must both be [B, D], got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    sim = scale * img @ txt.t()
    target = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))


def _bal(class_counts, num_images, p: dict) -> nn.Module:
    return BalancedAsymmetricLoss(class_counts, num_images, gamma_pos=p.get("gamma_pos", 0.0),
                                  gamma_neg=p.get("gamma_neg", 9.8), clip=p.get("clip", 0.05),
                                  label_smoothing=p.get("label_smoothing", 0.1), power=p.get("power", 1.35))


def _asl(class_counts, num_images, p: dict) -> nn.Module:
    return AsymmetricLoss(gamma_pos=p.get("gamma_pos", 0.0), gamma_neg=p.get("gamma_neg", 4.0),
                          clip=p.get("clip", 0.05))


MULTILABEL_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bal": _bal,
    "asl": _asl,
    "db_focal": lambda counts, num_images, p: DistributionBalancedLoss(counts, num_images),  # COCO-MLT config
    "bce": lambda counts, num_images, p: MultiLabelBCE(),
}


def build_multilabel_loss(name: str, class_counts, num_images: int, **params) -> nn.Module:
    """The multi-label loss ``name`` (bal | asl | db_focal | bce) for the training counts.

    ``params`` (used by bal / asl, ignored by the others): gamma_pos, gamma_neg, clip,
    label_smoothing (bal), power (bal: the exponent s of the class weights).
    """
    if name not in MULTILABEL_LOSSES:
        raise ValueError(f"unknown multi-label loss {name!r}; valid: {', '.join(MULTILABEL_LOSSES)}")
    return MULTILABEL_LOSSES[name](np.asarray(class_counts, dtype=np.int64), int(num_images), params)
