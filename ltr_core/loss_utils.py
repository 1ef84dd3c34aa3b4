"""Helpers shared by the training losses (:mod:`ltr_core.losses`, :mod:`ltr_core.losses_margin`): checked class
counts, float32 buffers, the class-balanced weights of Cui et al. and the per-sample softmax and sigmoid focal
losses."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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


def _sigmoid_focal_per_sample(z: torch.Tensor, target: torch.Tensor, gamma: float,
                              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample sigmoid focal loss over all C classes (one-vs-all), with an optional class weight w: the
    ``sigmoid`` (γ = 0) and ``focal`` losses of Cui et al.'s class-balanced loss code, where the sample's
    weight w_{y_i} multiplies all C of its binary terms:

        loss_i = w_{y_i} · Σ_j (1 − q_ij)^γ · BCE(z_ij, t_ij),   t_ij = [j = y_i],
        q_ij = σ(z_ij) if t_ij = 1 else 1 − σ(z_ij)   (the probability given to the right binary answer).

    With s_ij = 2 t_ij − 1: BCE = −log σ(s z) and 1 − q = σ(−s z), so the modulator is
    exp(γ · log σ(−s z)), finite for every logit (the stable form of that code). The sum over samples
    divided by B is that code's normalisation by the number of positive labels (one per image).
    """
    sign = 2.0 * F.one_hot(target, z.shape[1]).to(z.dtype) - 1.0
    terms = -F.logsigmoid(sign * z)
    if gamma != 0:
        terms = torch.exp(gamma * F.logsigmoid(-sign * z)) * terms
    loss = terms.sum(dim=1)
    return loss if weight is None else weight.to(z.device)[target] * loss
