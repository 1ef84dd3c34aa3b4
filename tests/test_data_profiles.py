"""Long-tail profiles, shot groups and the LDAM-DRW subset selection (methods.md §1.1, §1.3)."""

import numpy as np
import pytest

from ltr_core.data import DataError, lt_counts, select_lt_indices, shot_groups

CIFAR10_IR100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR10_IR10 = [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]


def test_cifar10_counts_exact():
    assert lt_counts(5000, 10, 100) == CIFAR10_IR100
    assert lt_counts(5000, 10, 10) == CIFAR10_IR10
    assert sum(CIFAR10_IR100) == 12406 and sum(CIFAR10_IR10) == 20431


@pytest.mark.parametrize("n_max,classes,ir,total,tail", [
    (5000, 10, 100, 12406, 50), (5000, 10, 50, 13996, 100), (5000, 10, 10, 20431, 500),
    (5000, 10, 200, 11203, 25), (500, 100, 100, 10847, 5), (500, 100, 50, 12608, 10),
    (500, 100, 10, 19573, 50), (500, 100, 200, 9502, 2),
])
def test_cifar_lt_sizes(n_max, classes, ir, total, tail):
    counts = lt_counts(n_max, classes, ir)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == tail
    assert counts == sorted(counts, reverse=True)


def test_cifar100_shot_groups_match_reference():
    g = shot_groups(lt_counts(500, 100, 100))
    assert [len(g[k]) for k in ("many", "medium", "few")] == [35, 35, 30]
    g10 = shot_groups(lt_counts(500, 100, 10))
    assert [len(g10[k]) for k in ("many", "medium", "few")] == [69, 31, 0]


def test_ir_one_and_step_profile():
    assert lt_counts(7, 4, 1.0) == [7, 7, 7, 7]
    assert lt_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert lt_counts(500, 5, 10, "step") == [500, 500, 50, 50, 50]
    assert lt_counts(9, 1, 100) == [9]


def test_bad_profile_and_ratio():
    with pytest.raises(DataError, match="lt_profile"):
        lt_counts(10, 3, 10, "pareto")
    with pytest.raises(DataError, match="imbalance_ratio"):
        lt_counts(10, 3, 0.5)


def test_shot_groups_boundaries():
    counts = [101, 100, 20, 19, 0, 500]
    g = shot_groups(counts)
    assert g["many"].tolist() == [0, 5]
    assert g["medium"].tolist() == [1, 2]  # 20 <= n <= 100 inclusive
    assert g["few"].tolist() == [3, 4]
    assert all(v.dtype == np.int64 for v in g.values())
    g2 = shot_groups(counts, many=19, few=1)
    assert g2["many"].tolist() == [0, 1, 2, 5] and g2["few"].tolist() == [4]


def test_shot_groups_empty_group_is_empty_array():
    g = shot_groups(lt_counts(5000, 10, 10))
    assert len(g["many"]) == 10 and g["medium"].size == 0 and g["few"].size == 0


def test_select_lt_indices_matches_ldam_protocol_by_hand():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    counts = [4, 2, 1]
    got = select_lt_indices(labels, counts, seed=0)
    rng = np.random.RandomState(0)  # one stream, consumed class by class
    for c in range(3):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        assert got[c].tolist() == idx[:counts[c]].tolist()
    assert sorted(got[0].tolist()) == [0, 3, 6, 9]
    assert all(labels[got[c]].tolist() == [c] * counts[c] for c in range(3))


def test_select_lt_indices_deterministic_and_seeded():
    labels = np.repeat(np.arange(5), 50)
    counts = lt_counts(50, 5, 10)
    a, b = select_lt_indices(labels, counts, 0), select_lt_indices(labels, counts, 0)
    c = select_lt_indices(labels, counts, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert [len(a[k]) for k in range(5)] == counts


def test_select_lt_indices_too_few_images():
    with pytest.raises(DataError, match="class 1 has 2 training images"):
        select_lt_indices(np.array([0, 0, 0, 1, 1]), [3, 3])


def test_ratio_that_empties_a_class_is_an_error():
    with pytest.raises(DataError, match="without training images"):
        lt_counts(120, 10, 1000.0)
