"""mosaic-MLT: exact long-tailed class occurrence, label unions of real tiles, balanced test mosaics, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltr_core.config import from_params
from ltr_core.data import DataError, build_data, lt_counts
from ltr_core.data import mosaic as MO
from ltr_core.data.digits import build_digits_lt


def _cfg(**kw):
    return from_params({"dataset": "mosaic_digits_mlt", "imbalance_ratio": 20.0, "n_max": 40, **kw}).data


@pytest.fixture(scope="module")
def built():
    cfg = _cfg()
    return cfg, build_data(cfg)


def test_label_sets_have_exact_occurrence_and_one_to_four_labels():
    counts = lt_counts(500, 10, 100.0)
    sets = MO.mosaic_label_sets(counts, np.random.RandomState(0))
    assert sets.sum(0).tolist() == counts
    per_row = sets.sum(1)
    assert per_row.min() >= 1 and per_row.max() <= 4
    with pytest.raises(DataError, match=">= 1 for every class"):
        MO.mosaic_label_sets([3, 0], np.random.RandomState(0))


def test_mosaic_occurrence_follows_the_profile(built):
    cfg, data = built
    counts = lt_counts(40, 10, 20.0)
    assert data.class_counts.tolist() == counts  # images containing each class, exactly
    assert data.class_counts.max() / data.class_counts.min() == pytest.approx(20.0)
    assert data.train.images.shape[1:] == (3, 16, 16) and data.image_size == 16
    assert data.train.targets.sum(1).min() >= 1 and data.train.targets.sum(1).max() <= 4


def test_every_mosaic_is_the_union_of_its_real_tiles(built):
    cfg, data = built
    import dataclasses

    src = build_digits_lt(dataclasses.replace(cfg, dataset="digits_lt", imbalance_ratio=1.0, n_max=0, image_size=0))
    for split, key, source in (("train", "train_tiles", src.train), ("test", "test_tiles", src.test)):
        tiles = np.asarray(data.provenance[key])
        part = data.split(split)
        union = np.zeros((tiles.shape[0], 10), dtype=np.uint8)
        np.put_along_axis(union, source.labels.numpy()[tiles], 1, axis=1)
        assert np.array_equal(union, part.targets.numpy())
        for i in (0, tiles.shape[0] // 2, tiles.shape[0] - 1):  # the pixels are the source images, 2 x 2
            m = part.images[i]
            quads = [m[:, :8, :8], m[:, :8, 8:], m[:, 8:, :8], m[:, 8:, 8:]]
            for q, j in zip(quads, tiles[i]):
                assert torch.equal(q, source.images[j])


def test_test_mosaics_use_every_test_image_once(built):
    cfg, data = built
    tiles = np.asarray(data.provenance["test_tiles"])
    assert tiles.shape == (500 // 4, 4) and np.unique(tiles).size == tiles.size  # digits: 50 test images x 10
    t = data.test.targets.numpy()
    assert t.sum(0).min() >= 0.7 * t.sum(0).max()  # balanced-ish class occurrence


def test_deterministic_by_seed():
    a, b, c = build_data(_cfg()), build_data(_cfg()), build_data(_cfg(lt_seed=1))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.targets, b.train.targets)
    assert a.provenance["train_tiles"] == b.provenance["train_tiles"]
    assert a.provenance["train_tiles"] != c.provenance["train_tiles"]


def test_compose_layout_and_bad_profile():
    imgs = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    out = MO.compose_mosaics(imgs, np.array([[0, 1, 2, 3]]))
    assert out[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    with pytest.raises(DataError, match="leaves .* without training images"):
        build_data(_cfg(imbalance_ratio=100.0))
