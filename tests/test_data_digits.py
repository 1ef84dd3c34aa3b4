"""digits-LT (the embedded default), LTData/Split behaviour and build_data dispatch."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltr_core.config import DataSection
from ltr_core.data import DATASETS, DataError, LTData, Split, build_data, shot_groups
from ltr_core.data import resolve_data_root


@pytest.fixture(scope="module")
def quick():
    return build_data(DataSection(dataset="digits_lt", imbalance_ratio=25))


def test_quickstart_counts_and_groups(quick):
    assert quick.class_counts.tolist() == [120, 83, 58, 41, 28, 20, 14, 9, 6, 4]
    g = shot_groups(quick.class_counts)
    assert g["many"].tolist() == [0] and g["medium"].tolist() == [1, 2, 3, 4, 5]
    assert g["few"].tolist() == [6, 7, 8, 9]
    assert quick.test_counts.tolist() == [50] * 10
    assert quick.class_counts.dtype == np.int64


def test_shapes_types_and_stats(quick):
    assert quick.num_classes == 10 and quick.class_names == [str(i) for i in range(10)]
    assert quick.train.images.dtype == torch.uint8 and quick.train.images.shape == (383, 3, 8, 8)
    assert quick.test.images.shape == (500, 3, 8, 8)
    assert quick.train.labels.dtype == torch.int64 and quick.train.n == 383
    assert int(quick.train.images.max()) == 255 and int(quick.train.images.min()) == 0
    assert torch.equal(quick.train.images[:, 0], quick.train.images[:, 2])  # grey replicated
    assert quick.image_size == 16 and len(quick.mean) == 3 and len(quick.std) == 3
    x = quick.train.images.float() / 255
    assert abs(x.mean().item() - quick.mean[0]) < 0.03  # train mean ~ whole-dataset constant


def test_pixels_come_from_sklearn_and_train_test_disjoint(quick):
    from sklearn.datasets import load_digits
    d = load_digits()
    tr = np.concatenate([quick.provenance["indices"][str(c)] for c in range(10)])
    te = np.concatenate([quick.provenance["test_indices"][str(c)] for c in range(10)])
    assert not set(tr.tolist()) & set(te.tolist())
    expected = np.round(d.images[tr] * 255 / 16).astype(np.uint8)
    assert np.array_equal(quick.train.images[:, 1].numpy(), expected)
    assert np.array_equal(quick.train.labels.numpy(), d.target[tr])


def test_deterministic_and_seeded(quick):
    again = build_data(DataSection(dataset="digits_lt", imbalance_ratio=25))
    assert torch.equal(again.train.images, quick.train.images) and torch.equal(again.test.labels, quick.test.labels)
    other = build_data(DataSection(dataset="digits_lt", imbalance_ratio=25, lt_seed=1))
    assert not torch.equal(other.train.images, quick.train.images)


def test_provenance_is_json(quick):
    text = json.dumps(quick.provenance)
    back = json.loads(text)
    assert back["imbalance_ratio"] == 25 and back["lt_seed"] == 0 and back["generator"]
    assert [len(back["indices"][str(c)]) for c in range(10)] == quick.class_counts.tolist()


def test_default_ir100_and_image_size():
    d = build_data(DataSection())
    assert d.class_counts.tolist() == [120, 71, 43, 25, 15, 9, 5, 3, 2, 1]
    assert build_data(DataSection(image_size=32)).image_size == 32


def test_n_max_too_large():
    with pytest.raises(DataError, match="n_max=130 exceeds the 124 images"):
        build_data(DataSection(n_max=130))


def test_split_lookup(quick):
    assert quick.split("train") is quick.train and quick.split("test") is quick.test
    with pytest.raises(DataError, match="available splits: train, test"):
        quick.split("val")
    with pytest.raises(DataError, match="no split 'bogus'"):
        quick.split("bogus")


def test_split_validation():
    with pytest.raises(DataError, match="uint8"):
        Split(labels=torch.zeros(2, dtype=torch.int64), images=torch.zeros(2, 3, 4, 4))
    with pytest.raises(DataError, match="2 entries for 3 labels"):
        Split(labels=torch.zeros(3, dtype=torch.int64), paths=["a", "b"])
    s = Split(labels=[3, -1])
    assert s.labels.dtype == torch.int64 and s.n == 2
    d = LTData("x", ["a", "b", "c", "d"], s, s, (0.5,), (0.5,), 8)
    assert d.class_counts.tolist() == [0, 0, 0, 1] and d.test_counts.tolist() == [0, 0, 0, 1]


def test_unknown_dataset_lists_all():
    with pytest.raises(DataError) as err:
        build_data(DataSection(dataset="mnist_lt"))
    for name in DATASETS:
        assert name in str(err.value)
    assert set(DATASETS) == {"digits_lt", "cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt",
                             "inat18", "image_list", "cifar10_lt_open", "digits_lt_open", "voc_mlt", "coco_mlt",
                             "mosaic_mlt", "mosaic_digits_mlt"}


def test_resolve_data_root(monkeypatch):
    monkeypatch.delenv("LTR_DATA_ROOT", raising=False)
    assert resolve_data_root(DataSection(dataset="cifar10_lt")) == Path("data/cifar10_lt")
    monkeypatch.setenv("LTR_DATA_ROOT", "/somewhere")
    assert resolve_data_root(DataSection(dataset="cifar10_lt")) == Path("/somewhere")
    assert resolve_data_root(DataSection(dataset="cifar10_lt", data_root="/x")) == Path("/x")


def test_digits_cache_holds_exactly_sklearns_arrays(tmp_path):
    from sklearn.datasets import load_digits

    from ltr_core.data.digits import load_digits_cached

    first = load_digits_cached(tmp_path)  # builds the cache
    assert (tmp_path / "sklearn_digits.npz").is_file()
    second = load_digits_cached(tmp_path)  # reads it
    ref = load_digits()
    for got in (first, second):
        np.testing.assert_array_equal(got.images, ref.images)
        np.testing.assert_array_equal(got.target, ref.target)
