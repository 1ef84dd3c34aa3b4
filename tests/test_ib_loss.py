"""The influence-balanced loss (CONTRIBUTING.md example a): a hand computation, and a run through the feature hook."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_params
from ltr_core.config import from_params
from ltr_core.losses import InfluenceBalancedLoss, build_loss
from ltr_core.methods import get_method


def test_ib_loss_on_a_three_sample_batch_by_hand():
    """Counts (4, 2, 1): w = 3 n^-1 / sum n^-1 = (3/7, 6/7, 12/7).

    sample  z              y  p                  |p - y|_1  CE      h        |h|_1  influence
    1       (0, 0, 0)      0  (1/3, 1/3, 1/3)    4/3        log 3   (1, -2)  3      4
    2       (log 2, 0, 0)  1  (1/2, 1/4, 1/4)    3/2        log 4   (.5, .5) 1      3/2
    3       (0, 0, log 2)  2  (1/4, 1/4, 1/2)    1          log 2   (2, 0)   2      2
    L = (1/3) sum_i w_{y_i} * 1000 / (influence_i + 1e-3) * CE_i
    """
    loss = InfluenceBalancedLoss([4, 2, 1], alpha=1000.0, start_epoch=1)
    ln2 = math.log(2.0)
    z = torch.tensor([[0.0, 0.0, 0.0], [ln2, 0.0, 0.0], [0.0, 0.0, ln2]])
    y = torch.tensor([0, 1, 2])
    h = torch.tensor([[1.0, -2.0], [0.5, 0.5], [2.0, 0.0]], requires_grad=True)
    hand = (3 / 7 * 1000 / (4 + 1e-3) * math.log(3) + 6 / 7 * 1000 / (1.5 + 1e-3) * math.log(4)
            + 12 / 7 * 1000 / (2 + 1e-3) * math.log(2)) / 3
    loss.set_epoch(0)  # the warm-up: plain mean CE, features unused
    assert float(loss(z, y, features=h)) == pytest.approx((math.log(3) + math.log(4) + math.log(2)) / 3, rel=1e-6)
    loss.set_epoch(1)
    value = loss(z, y, features=h)
    assert float(value.detach()) == pytest.approx(hand, rel=1e-6)
    value.backward()  # the influence is not detached (as the original): the features get a gradient
    assert h.grad is not None and h.grad.abs().sum() > 0
    built = build_loss(from_params({"loss": "ib", "ib_alpha": 500.0, "ib_start_epoch": 3}).loss, [4, 2, 1])
    assert isinstance(built, InfluenceBalancedLoss) and (built.alpha, built.start_epoch) == (500.0, 3)
    assert torch.allclose(built.weight, torch.tensor([3 / 7, 6 / 7, 12 / 7]))
    with pytest.raises(ValueError, match="label_smoothing"):
        build_loss(from_params({"loss": "ib", "label_smoothing": 0.1}).loss, [4, 2, 1])


def test_ib_run_gets_the_head_input_through_the_feature_hook(tmp_path):
    cfg = from_params(tiny_params(tmp_path, name="ib", loss="ib", ib_start_epoch=1, epochs=2))
    res = get_method("erm").run(cfg)
    assert res["status"] == "complete" and res["epochs"] == 2 and 0 <= res["metrics"]["top1"] <= 100
