"""Every loss of ltr_core.losses against an independent (numpy, loop) computation of its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltr_core.config import from_params
from ltr_core.losses import (LOSSES, BalancedBCE, BalancedSoftmax, ClassBalancedLoss, CrossEntropy, FocalLoss,
                             LADELoss, LDAMLoss, LogitAdjustedLoss, MiSLASLoss, build_loss,
                             class_balanced_weights, mislas_epsilons)

COUNTS = np.array([500, 120, 40, 9, 3], dtype=np.int64)
C = len(COUNTS)
B = 7


def batch(seed: int = 0, b: int = B):
    torch.manual_seed(seed)
    z = torch.randn(b, C, dtype=torch.float64).float() * 2
    y = torch.tensor([0, 1, 2, 3, 4, 0, 2, 1, 4, 3][:b], dtype=torch.int64)
    return z, y


def np_log_softmax(row: np.ndarray) -> np.ndarray:
    m = row.max()
    return row - m - math.log(np.exp(row - m).sum())


def np_ce(z: np.ndarray, y: np.ndarray, weight=None, offset=None) -> float:
    """(weighted) softmax CE, loop over samples; PyTorch weighted-mean normalisation."""
    num = den = 0.0
    for i in range(len(y)):
        row = z[i] + (0.0 if offset is None else offset)
        w = 1.0 if weight is None else weight[y[i]]
        num += -w * np_log_softmax(row)[y[i]]
        den += w
    return num / den


def np_cb_weights(n, beta):
    w = np.array([(1 - beta) / (1 - beta ** int(k)) for k in n])
    return w * len(n) / w.sum()


def close(a: torch.Tensor, b: float, tol: float = 1e-5) -> bool:
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


# --------------------------------------------------------------------------- formulas


def test_focal_matches_formula():
    z, y = batch(1)
    zn, yn = z.double().numpy(), y.numpy()
    for gamma in (0.0, 1.0, 2.0):
        expected = 0.0
        for i in range(B):
            lp = np_log_softmax(zn[i])[yn[i]]
            expected += -((1 - math.exp(lp)) ** gamma) * lp
        assert close(FocalLoss(COUNTS, gamma=gamma)(z, y), expected / B)
    assert close(FocalLoss(COUNTS, gamma=0.0)(z, y), np_ce(zn, yn))


def test_cb_weights_sum_to_c_and_cb_losses():
    for beta in (0.0, 0.9, 0.999, 0.9999):
        w = class_balanced_weights(COUNTS, beta)
        assert abs(float(w.sum()) - C) < 1e-4
        assert np.allclose(w.numpy(), np_cb_weights(COUNTS, beta), rtol=1e-5)
    assert torch.allclose(class_balanced_weights(COUNTS, 0.0), torch.ones(C))
    w = np_cb_weights(COUNTS, 0.9999)
    assert np.all(np.diff(w) > 0)  # rarer classes weigh more
    z, y = batch(2)
    zn, yn = z.double().numpy(), y.numpy()
    assert close(ClassBalancedLoss(COUNTS, beta=0.9999)(z, y), np_ce(zn, yn, weight=w))
    ldam = paper = 0.0  # LDAM-DRW FocalLoss: l = w CE, p = exp(-l), mean over B of (1-p)^g l
    for i in range(B):
        lp = np_log_softmax(zn[i])[yn[i]]
        l_w = -w[yn[i]] * lp
        ldam += (1 - math.exp(-l_w)) ** 2.0 * l_w
        paper += w[yn[i]] * -((1 - math.exp(lp)) ** 2.0) * lp
    assert close(ClassBalancedLoss(COUNTS, beta=0.9999, base="focal", gamma=2.0)(z, y), ldam / B)
    assert close(ClassBalancedLoss(COUNTS, beta=0.9999, base="focal", gamma=2.0, focal_form="paper")(z, y),
                 paper / B)
    with pytest.raises(ValueError, match="cb_loss"):
        ClassBalancedLoss(COUNTS, base="bce")


def test_cb_focal_hand_value_and_batch_normalisation():
    """Two samples with zero logits (CE = log 2 each), weights (0.5, 1.5), gamma = 1, by hand:
    l = (0.5, 1.5) log 2, p = 2^-0.5, 2^-1.5; L = [(1 - 2^-0.5) 0.5 + (1 - 2^-1.5) 1.5] log 2 / 2."""
    w = torch.tensor([0.5, 1.5])
    z, y = torch.zeros(2, 2), torch.tensor([0, 1])
    hand = ((1 - 2 ** -0.5) * 0.5 + (1 - 2 ** -1.5) * 1.5) * math.log(2) / 2
    assert close(FocalLoss(gamma=1.0, weight=w)(z, y), hand, tol=1e-6)
    # gamma = 0: weighted focal is Σ w l / B, weighted CE (CB-CE) keeps PyTorch's Σ w l / Σ w
    assert close(FocalLoss(gamma=0.0, weight=w)(z, y), (0.5 + 1.5) * math.log(2) / 2, tol=1e-6)
    # the gradient ratio to the old Σ w_y normalisation is Σ_i w_{y_i} / B; on CIFAR-10-LT IR100 with instance
    # sampling E[w_y] = Σ_c π_c w_c = 0.171, so the old normalisation trained at ~5.8x the gradient
    n10 = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    assert abs(1 / float((n10 / n10.sum()) @ np_cb_weights(n10, 0.9999)) - 5.85) < 0.01
    cb = ClassBalancedLoss(COUNTS, beta=0.9999, base="focal", gamma=0.0)
    zz, yy = batch(3)
    zz.requires_grad_(True)
    cb(zz, yy).backward()
    g_new = zz.grad.clone()
    zz.grad = None
    torch.nn.functional.cross_entropy(zz, yy, weight=cb.weight).backward()
    ratio = float(cb.weight[yy].sum()) / B
    assert torch.allclose(g_new, ratio * zz.grad, rtol=1e-5, atol=1e-7)
    assert close(ClassBalancedLoss(COUNTS, beta=0.9999, base="ce")(zz.detach(), yy),
                 float(torch.nn.functional.cross_entropy(zz.detach(), yy, weight=cb.weight)))


def test_cb_sigmoid_focal_is_the_cb_code_loss():
    """Cui et al.'s code (loss types 'sigmoid' and 'focal'): one-vs-all sigmoid terms over all C classes, the
    sample's weight w_y on every term, summed and divided by the number of positives (B), loop against numpy:
    BCE(x, t) = -log q, q = sigmoid(x) if t else 1 - sigmoid(x); focal modulator (1 - q)^gamma."""
    z, y = batch(11)
    w = np_cb_weights(COUNTS, 0.999)
    zn = z.double().numpy()

    def loop(gamma):
        total = 0.0
        for i in range(B):
            for j in range(C):
                p = 1.0 / (1.0 + math.exp(-zn[i, j]))
                q = p if j == int(y[i]) else 1.0 - p
                total += w[int(y[i])] * (1.0 - q) ** gamma * -math.log(q)
        return total / B

    for gamma in (1.0, 2.0):
        assert close(ClassBalancedLoss(COUNTS, beta=0.999, base="sigmoid_focal", gamma=gamma)(z, y), loop(gamma))
    assert close(ClassBalancedLoss(COUNTS, beta=0.999, base="sigmoid", gamma=2.0)(z, y), loop(0.0))  # gamma unused
    # by hand, two classes, zero logits: every term is log 2 with modulator 1/2; weights (0.5, 1.5), gamma 1:
    # L = [0.5 (2 * 0.5 log 2) + 1.5 (2 * 0.5 log 2)] / 2 = log 2
    cb = ClassBalancedLoss([10, 10], beta=0.5, base="sigmoid_focal", gamma=1.0)
    cb.weight = torch.tensor([0.5, 1.5])
    assert close(cb(torch.zeros(2, 2), torch.tensor([0, 1])), math.log(2), tol=1e-6)
    # the stable modulator stays finite (and the loss exact) at logits far beyond float32's exp range
    big = torch.tensor([[120.0, -120.0], [-120.0, 120.0]], requires_grad=True)
    cb = ClassBalancedLoss([10, 10], beta=0.5, base="sigmoid_focal", gamma=1.0)
    out = cb(big, torch.tensor([1, 0]))  # both wrong by 120: each term ~ 120 (modulator ~1), weights 1
    out.backward()
    assert close(out.detach(), 240.0, tol=1e-3) and torch.isfinite(big.grad).all()


def test_ldam_margins_and_formula():
    loss = LDAMLoss(COUNTS, max_margin=0.5, scale=30.0)
    m = loss.margins.numpy()
    assert abs(m.max() - 0.5) < 1e-6 and int(m.argmax()) == int(COUNTS.argmin())
    expected_m = [0.5 * (k ** -0.25) / (COUNTS.min() ** -0.25) for k in COUNTS]
    assert np.allclose(m, expected_m, rtol=1e-6)
    z, y = batch(3)
    z = torch.tanh(z)  # cosine-like logits
    zn, yn = z.double().numpy(), y.numpy()
    expected = 0.0
    for i in range(B):
        row = zn[i].copy()
        row[yn[i]] -= expected_m[yn[i]]
        expected += -np_log_softmax(30.0 * row)[yn[i]]
    assert close(loss(z, y), expected / B)


def test_drw_weights_switch_exactly_at_drw_epoch():
    loss = LDAMLoss(COUNTS, drw_epoch=160, drw_beta=0.9999)
    z, y = batch(4)
    z = torch.tanh(z)
    plain = LDAMLoss(COUNTS)(z, y)
    for epoch in (0, 1, 159):
        loss.set_epoch(epoch)
        assert loss.weight is None and torch.equal(loss(z, y), plain)
    w = np_cb_weights(COUNTS, 0.9999)
    zn, yn = z.double().numpy(), y.numpy()
    margins = loss.margins.double().numpy()
    num = den = 0.0
    for i in range(B):
        row = zn[i].copy()
        row[yn[i]] -= margins[yn[i]]
        num += -w[yn[i]] * np_log_softmax(30.0 * row)[yn[i]]
        den += w[yn[i]]
    for epoch in (160, 161, 199):
        loss.set_epoch(epoch)
        assert np.allclose(loss.weight.numpy(), w, rtol=1e-5)
        assert close(loss(z, y), num / den)
    assert not close(loss(z, y), float(plain))


def test_logit_adjusted_formula_and_tau0_is_ce():
    z, y = batch(5)
    zn, yn = z.double().numpy(), y.numpy()
    prior = COUNTS / COUNTS.sum()
    for tau in (0.5, 1.0, 2.0):
        offset = np.log(prior ** tau + 1e-12)
        assert close(LogitAdjustedLoss(COUNTS, tau=tau)(z, y), np_ce(zn, yn, offset=offset))
    assert close(LogitAdjustedLoss(COUNTS, tau=0.0)(z, y), float(CrossEntropy()(z, y)))
    assert torch.isfinite(LogitAdjustedLoss(np.array([10, 0, 3]), tau=1.0)(z[:, :3], y.clamp(max=2) * 0))


def test_balanced_softmax_formula_and_equals_la_tau1():
    z, y = batch(6)
    zn, yn = z.double().numpy(), y.numpy()
    bs = BalancedSoftmax(COUNTS)(z, y)
    assert close(bs, np_ce(zn, yn, offset=np.log(COUNTS.astype(float))))
    assert close(bs, float(LogitAdjustedLoss(COUNTS, tau=1.0)(z, y)))


def np_bal_bce(z, t, counts, tau):
    prior = counts / counts.sum()
    total = 0.0
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            x = z[i, j] + tau * (math.log(prior[j]) - math.log(1 - prior[j]))
            p = 1 / (1 + math.exp(-x))
            total += -(t[i, j] * math.log(p) + (1 - t[i, j]) * math.log(1 - p))
    return total / z.shape[0]


def test_bal_bce_formula_smoothing_soft_targets_and_tau():
    z, y = batch(7)
    zn, yn = z.double().numpy(), y.numpy()
    eps = 0.1
    t = np.full((B, C), eps / C)
    t[np.arange(B), yn] = 1 - eps + eps / C
    one = BalancedBCE(COUNTS, tau=1.0, label_smoothing=eps)(z, y)
    two = BalancedBCE(COUNTS, tau=2.0, label_smoothing=eps)(z, y)
    assert close(one, np_bal_bce(zn, t, COUNTS, 1.0))
    assert close(two, np_bal_bce(zn, t, COUNTS, 2.0))
    assert abs(float(one) - float(two)) > 1e-3  # tau is applied
    hard = np.eye(C)[yn]
    assert close(BalancedBCE(COUNTS)(z, y), np_bal_bce(zn, hard, COUNTS, 1.0))
    torch.manual_seed(0)
    soft = torch.softmax(torch.randn(B, C), dim=1)
    assert close(BalancedBCE(COUNTS, tau=1.5, label_smoothing=eps)(z, soft),
                 np_bal_bce(zn, soft.double().numpy(), COUNTS, 1.5))  # soft targets used as given


def test_mislas_epsilons_shapes():
    n = np.array([100, 55, 10], dtype=np.int64)
    r = np.array([1.0, 0.5, 0.0])
    head, tail = 0.4, 0.1
    assert np.allclose(mislas_epsilons(n, head, tail, "linear"), tail + (head - tail) * r)
    assert np.allclose(mislas_epsilons(n, head, tail, "concave"),
                       [tail + (head - tail) * math.sin(math.pi / 2 * v) for v in r])
    assert np.allclose(mislas_epsilons(n, head, tail, "convex"),
                       [head + (head - tail) * math.sin(3 * math.pi / 2 + math.pi / 2 * v) for v in r])
    for shape in ("concave", "linear", "convex"):
        e = mislas_epsilons(n, head, tail, shape)
        assert abs(e[0] - head) < 1e-12 and abs(e[-1] - tail) < 1e-12
    mid = {s: mislas_epsilons(n, head, tail, s)[1] for s in ("concave", "linear", "convex")}
    assert mid["concave"] > mid["linear"] > mid["convex"]
    with pytest.raises(ValueError, match="mislas_shape"):
        mislas_epsilons(n, head, tail, "cubic")


def test_mislas_loss_formula():
    z, y = batch(8)
    zn, yn = z.double().numpy(), y.numpy()
    eps = mislas_epsilons(COUNTS, 0.3, 0.0, "concave")
    expected = 0.0
    for i in range(B):
        q = np.full(C, eps[yn[i]] / C)
        q[yn[i]] += 1 - eps[yn[i]]
        expected += -(q * np_log_softmax(zn[i])).sum()
    assert close(MiSLASLoss(COUNTS, 0.3, 0.0, "concave")(z, y), expected / B)
    # equal epsilons reduce to CE label smoothing
    flat = MiSLASLoss(COUNTS, eps_head=0.2, eps_tail=0.2, shape="linear")(z, y)
    assert close(flat, float(CrossEntropy(label_smoothing=0.2)(z, y)))


def np_lade_regulariser(zn, ln, prior, remine_lambda):
    """hyperconnect/LADE LADELoss re-derived with loops: -Σ_c π_c [F_c - S_c - λ S_c²] over all classes."""
    total = 0.0
    for c in range(C):
        rows = [i for i in range(len(ln)) if ln[i] == c]
        first = sum(zn[i, c] for i in rows) / (len(rows) + 1e-8)
        shifted = [zn[i, c] - math.log(prior[c] + 1e-9) + math.log(1 / C + 1e-9) for i in range(len(ln))]
        second = math.log(np.mean(np.exp(shifted)))
        total += -prior[c] * (first - second - remine_lambda * second ** 2)
    return total


def test_lade_formula():
    z, y = batch(9)
    zn = z.double().numpy()
    y2 = torch.tensor([0, 0, 2, 2, 4, 0, 2])  # classes 1 and 3 absent from the batch: they still count
    prior = COUNTS / COUNTS.sum()
    for labels in (y, y2):
        ln = labels.numpy()
        pc = np_ce(zn, ln, offset=np.log(prior + 1e-9))
        for lam in (0.1, 0.0):
            reg = np_lade_regulariser(zn, ln, prior, lam)
            assert close(LADELoss(COUNTS, alpha=0.1, remine_lambda=lam).regulariser(z, labels), reg)
            assert close(LADELoss(COUNTS, alpha=0.1, remine_lambda=lam)(z, labels), pc + 0.1 * reg)
        assert close(LADELoss(COUNTS, alpha=0.0)(z, labels), float(BalancedSoftmax(COUNTS)(z, labels)))
    # defaults of the original configs: alpha (RouteWeightLoss weight) 0.1, remine_lambda 0.1
    assert LADELoss(COUNTS).alpha == 0.1 and LADELoss(COUNTS).remine_lambda == 0.1


# --------------------------------------------------------------------------- registry


def test_registered_names():
    assert set(LOSSES) == {"ce", "focal", "cb", "ldam", "ldam_drw", "logit_adjusted", "balanced_softmax",
                           "bal_bce", "mislas", "lade", "ib"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_builds_from_default_config_and_backprops(name):
    cfg = from_params({"loss": name})
    loss = build_loss(cfg.loss, COUNTS)
    if hasattr(loss, "set_epoch"):
        loss.set_epoch(cfg.loss.drw_epoch)  # DRW phase on for ldam_drw (and the IB phase for ib)
    torch.manual_seed(0)
    z = torch.randn(9, C, requires_grad=True)
    z_in = torch.tanh(z) if name.startswith("ldam") else z
    y = torch.randint(0, C, (9,), dtype=torch.int64)
    kw = {"features": torch.rand(9, 4)} if getattr(loss, "wants_features", False) else {}  # ib: the head's input
    value = loss(z_in, y, **kw)
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # bf16 logits (autocast output) are computed in float32
    assert torch.isfinite(loss(z_in.detach().bfloat16(), y, **kw)) and loss(z_in.detach().bfloat16(), y, **kw).dtype == torch.float32


def test_build_loss_reads_the_config_keys():
    cfg = from_params({"loss": "cb", "cb_loss": "focal", "cb_beta": 0.99, "focal_gamma": 2.0})
    loss = build_loss(cfg.loss, COUNTS)
    assert loss.base == "focal" and loss.gamma == 2.0
    assert np.allclose(loss.weight.numpy(), np_cb_weights(COUNTS, 0.99), rtol=1e-5)
    cfg = from_params({"loss": "ldam_drw", "drw_epoch": 72, "ldam_scale": 25.0, "ldam_max_margin": 0.3})
    loss = build_loss(cfg.loss, COUNTS)
    assert loss.drw_epoch == 72 and loss.scale == 25.0 and abs(float(loss.margins.max()) - 0.3) < 1e-6
    assert build_loss(from_params({"loss": "ldam"}).loss, COUNTS).drw_epoch is None
    assert build_loss(from_params({"loss": "bal_bce", "bal_bce_tau": 1.05}).loss, COUNTS).tau == 1.05
    with pytest.raises(ValueError, match="label_smoothing"):
        build_loss(from_params({"loss": "focal", "label_smoothing": 0.1}).loss, COUNTS)
    with pytest.raises(ValueError, match="mislas_shape"):
        build_loss(from_params({"loss": "mislas", "mislas_shape": "cubic"}).loss, COUNTS)


def test_empty_class_is_a_clear_error():
    with pytest.raises(ValueError, match="empty classes \\[1\\]"):
        BalancedSoftmax(np.array([5, 0, 2]))
