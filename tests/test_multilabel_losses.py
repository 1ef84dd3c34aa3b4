"""Multi-label losses against direct computations of their formulas (float64 numpy, random inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltr_core.multilabel_losses import (AsymmetricLoss, BalancedAsymmetricLoss, DistributionBalancedLoss,
                                        MultiLabelBCE, build_multilabel_loss, clip_contrastive_loss,
                                        occurrence_class_weights)

COUNTS = np.array([300, 120, 45, 12, 3])
N = 400


def _batch(seed: int, b: int = 7, c: int = 5, center: float = 20.0, spread: float = 8.0):
    rng = np.random.default_rng(seed)
    z = center + spread * rng.standard_normal((b, c))  # CLIP-like scores exp(t) cos ~ 20 +- 8
    y = (rng.random((b, c)) < 0.35).astype(np.float64)
    y[np.arange(b), rng.integers(0, c, b)] = 1.0
    return z, y


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def bal_direct(z, y, counts, n_images, gp, gn, m, eps, s):
    """methods.md §7.1, term by term."""
    x = z / z.max()
    p = _sig(x)
    q = np.minimum(1 - p + m, 1.0)
    k = z.shape[1]
    ys = (1 - eps) * y + eps / k
    w = (n_images / counts) ** s
    w = w / w.max()
    ell = -((1 + w) * ys * np.log(p) + (1 - y) * np.log(q)) * (1 - p * ys - q * (1 - y)) ** (gp * ys + gn * (1 - y))
    return ell.mean()


@pytest.mark.parametrize("gp,gn,m,eps,s", [(0.0, 9.8, 0.05, 0.1, 1.35), (1.0, 4.0, 0.05, 0.01, 0.7),
                                           (0.0, 12.0, 0.0, 0.0, 1.0)])
def test_bal_matches_its_formula(gp, gn, m, eps, s):
    for seed in range(3):
        z, y = _batch(seed)
        loss = BalancedAsymmetricLoss(COUNTS, N, gamma_pos=gp, gamma_neg=gn, clip=m, label_smoothing=eps, power=s)
        got = loss(torch.tensor(z, dtype=torch.float32), torch.tensor(y)).item()
        assert got == pytest.approx(bal_direct(z, y, COUNTS, N, gp, gn, m, eps, s), rel=1e-5)


def test_bal_class_weights_and_batch_max_normalisation():
    w = occurrence_class_weights(COUNTS, N, 1.35).numpy()
    assert w[-1] == pytest.approx(1.0) and w.max() == pytest.approx(1.0)
    assert w == pytest.approx((COUNTS[-1] / COUNTS) ** 1.35, rel=1e-6)  # (N/n_c)^s / max = (n_min/n_c)^s
    z, y = _batch(0)
    loss = BalancedAsymmetricLoss(COUNTS, N)
    zt, yt = torch.tensor(z, dtype=torch.float32), torch.tensor(y)
    assert loss(3.0 * zt, yt).item() == pytest.approx(loss(zt, yt).item(), rel=1e-5)  # z / max z: scale-free
    zt.requires_grad_(True)
    loss(zt, yt).backward()
    assert torch.isfinite(zt.grad).all() and zt.grad.abs().sum() > 0


def test_asl_matches_the_paper_formula():
    z, y = _batch(1, center=0.0, spread=3.0)
    gp, gn, m = 1.0, 4.0, 0.05
    p = _sig(z)
    pm = np.maximum(p - m, 0.0)
    direct = -(y * (1 - p) ** gp * np.log(p) + (1 - y) * pm ** gn * np.log(1 - pm)).mean()
    got = AsymmetricLoss(gamma_pos=gp, gamma_neg=gn, clip=m)(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
    assert got.item() == pytest.approx(direct, rel=1e-5)


def test_db_focal_matches_the_paper_formulas():
    z, y = _batch(2, center=0.0, spread=3.0)
    alpha, beta, mu, kappa, lam, gamma, balance = 0.1, 10.0, 0.2, 0.05, 2.0, 2.0, 2.0
    inv = 1.0 / COUNTS
    r = inv[None, :] / (y * inv[None, :]).sum(axis=1, keepdims=True)  # P^C / P^I for every (i, k)
    r_hat = alpha + _sig(beta * (r - mu))
    b_hat = -np.log(N / COUNTS - 1)  # prior log-odds
    zp = z + (kappa / lam) * b_hat  # z - nu, nu = -(kappa / lambda) b_hat
    q_pos, q_neg = _sig(zp), _sig(lam * zp)  # negatives: lambda z + kappa b_hat
    ell = -balance * r_hat * (y * (1 - q_pos) ** gamma * np.log(q_pos)
                              + (1 / lam) * (1 - y) * q_neg ** gamma * np.log(1 - q_neg))
    got = DistributionBalancedLoss(COUNTS, N)(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
    assert got.item() == pytest.approx(ell.mean(), rel=1e-5)
    voc = DistributionBalancedLoss(COUNTS, N, mu=0.3, neg_scale=5.0)  # the VOC-MLT config
    assert voc(torch.tensor(z, dtype=torch.float32), torch.tensor(y)).item() != pytest.approx(got.item())


def test_bce_and_contrastive_match_direct_computations():
    z, y = _batch(3, center=0.0, spread=2.0)
    direct = -(y * np.log(_sig(z)) + (1 - y) * np.log(1 - _sig(z))).mean()
    assert MultiLabelBCE()(torch.tensor(z), torch.tensor(y)).item() == pytest.approx(direct, rel=1e-6)
    rng = np.random.default_rng(0)
    img, txt = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    a = img / np.linalg.norm(img, axis=1, keepdims=True)
    b = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    s = 14.0 * a @ b.T

    def ce(logits):
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        return (lse - np.diag(logits)).mean()

    got = clip_contrastive_loss(torch.tensor(img), torch.tensor(txt), 14.0).item()
    assert got == pytest.approx(0.5 * (ce(s) + ce(s.T)), rel=1e-5)


def test_factory_and_bad_input():
    assert isinstance(build_multilabel_loss("bal", COUNTS, N, gamma_neg=4.0), BalancedAsymmetricLoss)
    assert build_multilabel_loss("asl", COUNTS, N, gamma_neg=3.0).gamma_neg == 3.0
    with pytest.raises(ValueError, match="unknown multi-label loss 'focal'.*bal, asl, db_focal, bce"):
        build_multilabel_loss("focal", COUNTS, N)
    with pytest.raises(ValueError, match="every class needs >= 1"):
        BalancedAsymmetricLoss([5, 0], 10)
    with pytest.raises(ValueError, match="occur in every training image"):
        DistributionBalancedLoss([10, 3], 10)
    with pytest.raises(ValueError, match="must both be"):
        clip_contrastive_loss(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)
