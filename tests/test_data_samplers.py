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
    assert SAMPLERS == ("instance", "class_balanced", "sqrt", "progressive", "class_aware")
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


def _assert_freqs(f, p, n):
    sigma = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(f - p) < 5 * sigma + 1e-12), (f, p)


def test_progressive_moves_from_instance_to_class_balanced():
    E, n = 10, 40000
    s = build_sampler("progressive", LABELS, seed=0, num_samples=n, epochs=E)
    inst, unif = COUNTS / COUNTS.sum(), np.full(4, 0.25)
    for e in (0, 3, 5, E):
        t = e / E
        p = (1 - t) * inst + t * unif
        assert np.allclose(s.class_probs_at(e).numpy(), p)
        f, _ = freqs(s, e)
        _assert_freqs(f, p, n)
    f0, _ = freqs(s, 0)
    fE, _ = freqs(s, E)
    _assert_freqs(f0, inst, n)  # e = 0: instance-balanced
    _assert_freqs(fE, unif, n)  # e = E: class-balanced
    assert np.allclose(s.class_probs_at(2 * E).numpy(), unif)  # clipped past the end
    # within a class, instances are uniform
    idx = s.indices(E)
    per = np.bincount(idx[LABELS[idx] == 2].numpy() - 1100, minlength=10)
    assert per.min() > 0.6 * per.mean() and per.max() < 1.4 * per.mean()


def test_progressive_determinism_and_needs_epochs():
    s = build_sampler("progressive", LABELS, seed=5, epochs=4)
    assert len(s) == len(LABELS)
    assert torch.equal(s.indices(2), build_sampler("progressive", LABELS, seed=5, epochs=4).indices(2))
    assert not torch.equal(s.indices(2), s.indices(3))
    s.set_epoch(2)
    assert list(iter(s)) == s.indices(2).tolist()
    # empty classes get no probability in either part of the mixture
    g = build_sampler("progressive", torch.tensor([0, 0, 0, 2]), seed=0, epochs=2)
    assert np.allclose(g.class_probs_at(1).numpy(), [0.5 * 0.75 + 0.25, 0.0, 0.5 * 0.25 + 0.25])
    with pytest.raises(DataError, match="needs the total number of epochs"):
        build_sampler("progressive", LABELS, seed=0)
    with pytest.raises(DataError, match="labels >= 0"):
        build_sampler("progressive", torch.tensor([0, -1]), seed=0, epochs=3)


def test_make_loader_passes_epochs_to_the_progressive_sampler():
    from ltr_core.data import LTData, Split, make_loader

    split = Split(labels=torch.tensor([0] * 9 + [1] * 3), images=torch.zeros(12, 3, 8, 8, dtype=torch.uint8))
    data = LTData(name="tiny", class_names=["a", "b"], train=split, test=split, mean=(0.5,) * 3, std=(0.25,) * 3,
                  image_size=8)
    with pytest.raises(DataError, match="epochs"):
        make_loader(data, "train", train=True, batch_size=4, device="cpu", sampler="progressive")
    loader = make_loader(data, "train", train=True, batch_size=4, device="cpu", sampler="progressive", epochs=3,
                         augment=False)
    assert loader.sampler.epochs == 3 and len(loader) == 3
    loader.set_epoch(1)
    assert sum(int(y.numel()) for _, y in loader) == 12


def test_class_aware_takes_runs_of_four_from_a_shuffled_class_cycle():
    labels = torch.tensor([0] * 50 + [1] * 7 + [2] * 0 + [3] * 3)
    s = build_sampler("class_aware", labels, seed=3)
    idx = s.indices(0)
    assert len(idx) == len(labels) == 60
    runs = labels[idx].view(-1, 4)
    assert (runs == runs[:, :1]).all()  # each visit: 4 images of one class
    visits = runs[:, 0].tolist()
    for k in range(0, 15 - 2, 3):  # every block of C=3 visits is a permutation of the non-empty classes
        assert sorted(visits[k:k + 3]) == [0, 1, 3]
    # a class's images come from its own reshuffled cycle: all 3 images of class 3 before any repeats
    c3 = idx[labels[idx] == 3].tolist()
    assert sorted(c3[:3]) == [57, 58, 59]
    assert torch.equal(idx, build_sampler("class_aware", labels, seed=3).indices(0))
    assert not torch.equal(idx, s.indices(1))
