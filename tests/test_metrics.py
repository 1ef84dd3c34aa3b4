"""ltr_core.metrics against numbers computed by hand (methods.md §1)."""

import math

import numpy as np
import pytest
import torch

from ltr_core import metrics as M

# A 3-class case. Training counts 150 / 50 / 30 -> many = {0}, medium = {1, 2}, few = {} (empty -> NaN).
COUNTS = np.array([150, 50, 30])
LABELS = np.array([0, 0, 0, 1, 1, 2])
PROBS = np.array([
    [0.90, 0.05, 0.05],  # y=0, pred 0, correct, conf 0.90 -> bin 13 (0.867, 0.933]
    [0.62, 0.28, 0.10],  # y=0, pred 0, correct, conf 0.62 -> bin 9  (0.600, 0.667]
    [0.20, 0.70, 0.10],  # y=0, pred 1, wrong,   conf 0.70 -> bin 10 (0.667, 0.733]
    [0.05, 0.85, 0.10],  # y=1, pred 1, correct, conf 0.85 -> bin 12 (0.800, 0.867]
    [0.50, 0.40, 0.10],  # y=1, pred 0, wrong,   conf 0.50 -> bin 7  (0.467, 0.533]
    [0.05, 0.10, 0.85],  # y=2, pred 2, correct, conf 0.85 -> bin 12
])
# By hand:
#   top-1 = 4/6 = 66.667 %; per class: 2/3, 1/2, 1/1 -> 66.667, 50, 100 %; class mean 72.222 %
#   many = 66.667, medium = (50 + 100)/2 = 75, few = NaN
#   ECE = 1/6 (|1-.90| + |1-.62| + |0-.70| + |0-.50|) + 2/6 |1-.85| = 1.68/6 + 0.05 = 0.33 -> 33.0 %
#   MCE = 0.70 -> 70.0 %
#   F1: class 0 TP 2, 3 true, 3 predicted -> 4/6; class 1 TP 1, 2 true, 2 predicted -> 2/4; class 2 -> 1
#       macro = (2/3 + 1/2 + 1)/3 = 72.222 %
#   worst 50; harmonic 3 / (1/66.667 + 1/50 + 1/100) = 3/0.045 = 66.667; geometric (66.667*50*100)^(1/3)
PER_CLASS = [200 / 3, 50.0, 100.0]


def test_shot_groups_boundaries():
    g = M.shot_groups([101, 100, 50, 20, 19, 0, 500], many=100, few=20)
    assert g["many"].tolist() == [0, 6]
    assert g["medium"].tolist() == [1, 2, 3]
    assert g["few"].tolist() == [4, 5]
    assert all(v.dtype == np.int64 for v in g.values())
    g = M.shot_groups(np.array([30, 10]), many=25, few=15)
    assert g["many"].tolist() == [0] and g["medium"].tolist() == [] and g["few"].tolist() == [1]


def test_top1_and_per_class_by_hand():
    assert M.top1(PROBS, LABELS) == pytest.approx(66.6666667)
    assert M.top1(PROBS.argmax(1), LABELS) == pytest.approx(66.6666667)
    np.testing.assert_allclose(M.per_class_accuracy(PROBS.argmax(1), LABELS, 3), PER_CLASS)


def test_per_class_nan_for_class_without_test_samples():
    acc = M.per_class_accuracy(np.array([0, 1]), np.array([0, 0]), 3)
    assert acc[0] == 50.0 and math.isnan(acc[1]) and math.isnan(acc[2])


def test_group_accuracy_empty_group_is_nan_not_zero():
    groups = M.shot_groups(COUNTS)
    assert groups["few"].size == 0
    acc = M.group_accuracy(np.array(PER_CLASS), groups)
    assert acc["many"] == pytest.approx(66.6666667)
    assert acc["medium"] == pytest.approx(75.0)
    assert math.isnan(acc["few"])
    # a class without test samples does not pull its group to 0
    acc = M.group_accuracy(np.array([80.0, np.nan]), {"g": np.array([0, 1]), "h": np.array([1])})
    assert acc["g"] == 80.0 and math.isnan(acc["h"])


def test_calibration_by_hand():
    cal = M.calibration(PROBS, LABELS, n_bins=15)
    assert cal["ece"] == pytest.approx(33.0)
    assert cal["mce"] == pytest.approx(70.0)


def test_calibration_bins_are_right_closed():
    # conf exactly 1/15 belongs to the first bin (0, 1/15]; conf 1 to the last bin
    rb = M.reliability_bins(np.array([[1 / 15, 14 / 15], [1.0, 0.0]]), np.array([1, 0]), n_bins=15)
    assert rb["count"][13] == 1 and rb["count"][14] == 1
    rb = M.reliability_bins(np.array([[1 / 15] * 15]), np.array([0]), n_bins=15)
    assert rb["count"][0] == 1


def test_ece_of_perfectly_calibrated_data_is_near_zero():
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(rng.uniform(size=n) < conf, 0, 1)  # P(correct | conf) = conf
    assert M.calibration(probs, labels)["ece"] < 0.5
    # the same predictions with labels always 0 are under-confident by ~25 points
    assert M.calibration(probs, np.zeros(n, dtype=int))["ece"] == pytest.approx(25.0, abs=0.5)


def test_summary_statistics_by_hand():
    assert M.macro_f1(PROBS.argmax(1), LABELS, 3) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3 * 100)
    assert M.worst_class(PER_CLASS) == 50.0
    assert M.harmonic_mean(PER_CLASS) == pytest.approx(3 / 0.045)
    assert M.geometric_mean(PER_CLASS) == pytest.approx(100 / 3 ** (1 / 3))
    assert M.harmonic_mean([0.0, 90.0]) == 0.0 and M.geometric_mean([0.0, 90.0]) == 0.0
    assert M.worst_class([np.nan, 40.0, 60.0]) == 40.0


def test_macro_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 7, 300), rng.integers(0, 8, 300)  # class 7 predicted but never a label
    ours = M.macro_f1(p, y, 8)
    ref = 100 * f1_score(y, p, average="macro", labels=np.unique(y), zero_division=0)
    assert ours == pytest.approx(ref)


def test_evaluate_by_hand_with_logits_and_torch():
    logits = torch.log(torch.tensor(PROBS, dtype=torch.float32))
    m = M.evaluate(logits, torch.tensor(LABELS), COUNTS, many=100, few=20)
    assert m["top1"] == pytest.approx(66.6666667)
    assert m["mean_per_class"] == pytest.approx(72.2222222)
    assert m["many"] == pytest.approx(66.6666667) and m["medium"] == pytest.approx(75.0)
    assert math.isnan(m["few"])
    assert m["ece"] == pytest.approx(33.0, abs=1e-4) and m["mce"] == pytest.approx(70.0, abs=1e-4)
    assert m["macro_f1"] == pytest.approx(72.2222222)
    assert m["worst_class"] == 50.0 and m["hmean"] == pytest.approx(66.6666667)
    assert m["per_class"] == pytest.approx(PER_CLASS)
    assert m["shot_groups"] == {"many": [0], "medium": [1, 2], "few": []}
    assert m["group_sizes"] == {"many": 1, "medium": 2, "few": 0}
    assert m["shot_rule"]["many"] == ">100" and m["shot_rule"]["few"] == "<20"
    for key in ("top1", "mean_per_class", "many", "medium", "few", "ece", "mce", "macro_f1",
                "worst_class", "hmean", "gmean"):
        assert type(m[key]) is float, key


def test_sample_top1_differs_from_class_mean_on_unbalanced_test_set():
    # class 0: 90 test images, all right; class 1: 10 test images, all wrong
    labels = np.array([0] * 90 + [1] * 10)
    preds = np.zeros(100, dtype=int)
    logits = np.eye(2)[preds] * 5
    m = M.evaluate(logits, labels, [500, 10])
    assert m["top1"] == pytest.approx(90.0)
    assert m["mean_per_class"] == pytest.approx(50.0)
    assert m["many"] == 100.0 and m["few"] == 0.0 and math.isnan(m["medium"])


def test_open_set_labels_are_ignored_and_shapes_checked():
    assert M.top1(np.array([0, 1, 1]), np.array([0, 1, -1])) == 100.0
    with pytest.raises(ValueError):
        M.top1(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        M.evaluate(np.zeros((3, 2)), np.zeros(3, dtype=int), [10, 10, 10])
