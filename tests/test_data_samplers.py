"""Samplers: target class frequencies, within-class uniformity, determinism per (seed, epoch)."""

import numpy as np
import pytest
import torch

from ltr_core.data import SAMPLERS, DataError, build_sampler

LABELS = torch.tensor([0] * 1000 + [1] * 100 + [2] * 10 + [3] * 1)
COUNTS = np.array([1000, 100, 10, 1], dtype=float)


def freqs(sampler, epoch=0):
    idx = sampler.indices(epoch)
    return np.bincount(LABELS[idx].numpy(), minlength=4) / len(idx), idx


def test_names():
    assert SAMPLERS == ("instance", "class_balanced", "sqrt")
    with pytest.raises(DataError, match="unknown sampler 'balanced'"):
        build_sampler("balanced", LABELS, seed=0)


def test_instance_is_a_permutation_per_epoch():
    s = build_sampler("instance", LABELS, seed=3)
    a, b = s.indices(0), s.indices(1)
    assert sorted(a.tolist()) == list(range(len(LABELS))) and len(s) == len(LABELS)
    assert not torch.equal(a, b)
    assert torch.equal(a, build_sampler("instance", LABELS, seed=3).indices(0))
    s.set_epoch(1)
    assert list(iter(s)) == b.tolist()
    longer = build_sampler("instance", LABELS, seed=3, num_samples=2500)
    assert np.bincount(longer.indices(0).numpy()).min() == 2  # every image twice, then a partial pass


@pytest.mark.parametrize("name,power", [("class_balanced", 0.0), ("sqrt", 0.5)])
def test_class_frequencies_match_target(name, power):
    s = build_sampler(name, LABELS, seed=0, num_samples=40000)
    p = COUNTS ** power / (COUNTS ** power).sum()
    f, idx = freqs(s)
    sigma = np.sqrt(p * (1 - p) / 40000)
    assert np.all(np.abs(f - p) < 5 * sigma + 1e-12), (f, p)
    # chi-square against the target (3 dof; 99.9% quantile 16.27)
    observed = f * 40000
    chi2 = ((observed - 40000 * p) ** 2 / (40000 * p)).sum()
    assert chi2 < 16.27
    # within a class, instances are uniform: the 10 images of class 2
    tail = idx[LABELS[idx] == 2].numpy()
    per = np.bincount(tail - 1100, minlength=10)
    assert per.min() > 0.6 * per.mean() and per.max() < 1.4 * per.mean()


def test_class_power_default_length_and_determinism():
    s = build_sampler("class_balanced", LABELS, seed=7)
    assert len(s) == len(LABELS) and len(s.indices(0)) == len(LABELS)
    assert torch.equal(s.indices(4), build_sampler("class_balanced", LABELS, seed=7).indices(4))
    assert not torch.equal(s.indices(4), s.indices(5))
    assert not torch.equal(s.indices(4), build_sampler("class_balanced", LABELS, seed=8).indices(4))
    s.set_epoch(4)
    assert list(iter(s)) == s.indices(4).tolist()


def test_class_power_skips_empty_classes_and_rejects_open_labels():
    s = build_sampler("class_balanced", torch.tensor([0, 0, 2, 2, 2]), seed=0, num_samples=1000)
    assert set(s.indices(0).tolist()) <= {0, 1, 2, 3, 4}
    assert s.class_probs.tolist() == [0.5, 0.0, 0.5]
    with pytest.raises(DataError, match="labels >= 0"):
        build_sampler("sqrt", torch.tensor([0, -1]), seed=0)
