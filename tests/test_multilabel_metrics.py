"""Multi-label metrics: AP against scikit-learn and hand cases, groups, the multi-label evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ltr_core import metrics

VOC_COUNTS = [6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5, 82, 7, 64]


def test_ap_matches_sklearn_with_and_without_ties():
    rng = np.random.default_rng(0)
    for k in range(300):
        n = int(rng.integers(2, 80))
        y = rng.random(n) < rng.uniform(0.05, 0.9)
        y[rng.integers(n)] = True
        s = rng.integers(0, 4, n).astype(float) if k % 3 == 0 else rng.standard_normal(n)
        assert metrics.average_precision(s, y) == pytest.approx(100 * average_precision_score(y, s), abs=1e-9)


def test_ap_hand_case_and_nan_for_a_class_without_positives():
    # ranked: + - + -  -> AP = 1/2 * 1 + 1/2 * 2/3
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(100 * (0.5 + 1 / 3))
    ap = metrics.per_class_ap(np.array([[0.2, 0.9], [0.8, 0.1]]), np.array([[0, 0], [1, 0]]))
    assert ap[0] == pytest.approx(100.0) and np.isnan(ap[1])


def test_multilabel_groups_use_the_ge_100_rule():
    g = metrics.multilabel_groups(VOC_COUNTS)
    assert {k: len(v) for k, v in g.items()} == {"head": 6, "medium": 6, "tail": 8}
    assert 15 in g["head"]  # potted plant: exactly 100 training images
    single = metrics.shot_groups(VOC_COUNTS)
    assert {k: len(v) for k, v in single.items()} == {"many": 5, "medium": 7, "few": 8}


def test_multilabel_evaluate_scores_groups_and_required_keys():
    rng = np.random.default_rng(1)
    n, c = 60, 5
    counts = np.array([150, 100, 40, 19, 3])
    t = (rng.random((n, c)) < 0.3).astype(np.int64)
    t[0] = 0  # an image without labels stays as a negative for every class
    z = 3.0 * rng.standard_normal((n, c)) + 2.0 * t
    m = metrics.multilabel_evaluate(z, t, counts)
    sk = [100 * average_precision_score(t[:, k], metrics.sigmoid(z)[:, k]) for k in range(c)]
    soft = [100 * average_precision_score(t[:, k], metrics.softmax(z)[:, k]) for k in range(c)]
    assert m["per_class"] == pytest.approx(sk) and m["map"] == pytest.approx(np.mean(sk))
    assert m["per_class_softmax"] == pytest.approx(soft) and m["map_softmax"] == pytest.approx(np.mean(soft))
    assert m["shot_groups"] == {"head": [0, 1], "medium": [2], "tail": [3, 4]}
    assert m["map_head"] == pytest.approx(np.mean(sk[:2])) and m["map_tail"] == pytest.approx(np.mean(sk[3:]))
    assert (m["many"], m["medium"], m["few"]) == (m["map_head"], m["map_medium"], m["map_tail"])
    top = z.argmax(1)
    has = t.sum(1) > 0
    assert m["top1"] == pytest.approx(100 * t[np.arange(n), top][has].mean())
    assert m["num_unlabelled"] == int((~has).sum()) >= 1
    assert {"ece", "mce", "mean_per_class"} <= set(m)


def test_sigmoid_map_ranks_by_logits_where_sigmoid_saturates():
    z = np.array([[60.0], [50.0], [40.0]])  # sigmoid(z) == 1.0 for all three in float64
    t = np.array([[1], [1], [0]])
    assert metrics.multilabel_evaluate(z, t, [100])["map"] == pytest.approx(100.0)
    assert 100 * average_precision_score(t[:, 0], metrics.sigmoid(z)[:, 0]) < 100.0  # the tie sklearn would see


def test_empty_group_is_nan_and_shapes_are_checked():
    m = metrics.multilabel_evaluate(np.zeros((4, 2)), np.array([[1, 0], [0, 1], [1, 1], [0, 0]]), [200, 150])
    assert np.isnan(m["map_medium"]) and np.isnan(m["map_tail"])
    with pytest.raises(ValueError, match="one column per class"):
        metrics.multilabel_evaluate(np.zeros((4, 3)), np.zeros((4, 3)), [1, 2])
