"""CIFAR-10/100-LT: the three sources, the decoded cache, bad input, and the real CIFAR-10 copy."""

import os
import pickle
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltr_core.config import DataSection
from ltr_core.data import DataError, build_data, select_lt_indices
from ltr_core.data import cifar

SHARED = Path(os.environ.get("LTR_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
CIFAR10_IR100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR10_IR10 = [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cfg(root, cache, **kw):
    return DataSection(dataset=kw.pop("dataset", "cifar10_lt"), data_root=str(root), cache_dir=str(cache), **kw)


def fake_images(n, seed):
    return np.random.RandomState(seed).randint(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def write_torchvision_cifar10(root: Path, per_class_train=10, per_class_test=3):
    """The official format: pickled dicts with b'data' uint8 [N, 3072] and b'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.tile(np.arange(10), per_class_train)
    data = fake_images(len(labels), 0)
    for b, chunk in enumerate(np.array_split(np.arange(len(labels)), 5), 1):
        entry = {b"batch_label": b"training batch", b"labels": labels[chunk].tolist(),
                 b"data": data[chunk].reshape(len(chunk), 3072), b"filenames": [b"x.png"] * len(chunk)}
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(entry, protocol=2))
    test_labels = np.tile(np.arange(10), per_class_test)
    test = fake_images(len(test_labels), 1)
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"labels": test_labels.tolist(), b"data": test.reshape(-1, 3072)}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in NAMES]}, protocol=2))
    return data, labels, test, test_labels


def write_image_folder(root: Path, classes=("b_cls", "a_cls", "c_cls"), per_class=(5, 12, 4), test_per_class=2):
    """PNG (lossless) tree; file names 1.png .. N.png so natural order != string order."""
    pixels = {}
    for split, counts in (("train", per_class), ("test", [test_per_class] * len(classes))):
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            imgs = fake_images(counts[ci], hash((split, cls)) % 1000)
            for k in range(counts[ci]):
                Image.fromarray(imgs[k].transpose(1, 2, 0)).save(d / f"{k + 1}.png")
                pixels[(split, cls, k + 1)] = imgs[k]
    return pixels


# ----------------------------------------------------------------------------- torchvision files

def test_torchvision_source_reads_official_format(tmp_path):
    data, labels, test, test_labels = write_torchvision_cifar10(tmp_path / "root")
    d = build_data(cfg(tmp_path / "root", tmp_path / "cache", n_max=10, imbalance_ratio=10))
    assert d.provenance["source"]["kind"] == "torchvision"
    assert d.class_names == NAMES
    assert d.class_counts.tolist() == [10, 7, 5, 4, 3, 2, 2, 1, 1, 1]
    sel = select_lt_indices(labels, [10, 7, 5, 4, 3, 2, 2, 1, 1, 1], seed=0)
    idx = np.concatenate([sel[c] for c in range(10)])
    assert np.array_equal(d.train.images.numpy(), data[idx])
    assert np.array_equal(d.train.labels.numpy(), labels[idx])
    assert np.array_equal(d.test.images.numpy(), test) and d.test.n == 30
    assert d.provenance["indices"]["1"] == sel[1].tolist()
    assert d.mean == (0.4914, 0.4822, 0.4465) and d.std == (0.2023, 0.1994, 0.2010) and d.image_size == 32


def test_torchvision_corrupt_batch(tmp_path):
    write_torchvision_cifar10(tmp_path / "root")
    (tmp_path / "root" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3.*re-download"):
        build_data(cfg(tmp_path / "root", tmp_path / "cache", n_max=10))


def test_cifar100_torchvision_format(tmp_path):
    folder = tmp_path / "root" / "cifar-100-python"
    folder.mkdir(parents=True)
    labels = np.tile(np.arange(100), 3)
    data = fake_images(300, 2)
    (folder / "train").write_bytes(pickle.dumps({b"fine_labels": labels.tolist(), b"coarse_labels": [0] * 300,
                                                 b"data": data.reshape(300, 3072)}))
    (folder / "test").write_bytes(pickle.dumps({b"fine_labels": list(range(100)),
                                                b"data": fake_images(100, 3).reshape(100, 3072)}))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))
    d = build_data(cfg(tmp_path / "root", tmp_path / "cache", dataset="cifar100_lt", n_max=3, imbalance_ratio=3))
    assert d.num_classes == 100 and d.class_names[7] == "c7"
    assert d.class_counts[0] == 3 and d.class_counts[-1] == 1 and d.mean == (0.5071, 0.4865, 0.4409)


# ----------------------------------------------------------------------------- image folder + tar

def test_image_folder_order_and_pixels(tmp_path):
    pixels = write_image_folder(tmp_path / "tree")
    with pytest.raises(DataError, match="has 3 classes, cifar10_lt needs 10"):
        build_data(cfg(tmp_path / "tree", tmp_path / "cache", n_max=4))
    classes, paths, labels = cifar.list_image_folder(tmp_path / "tree" / "train")
    assert classes == ["a_cls", "b_cls", "c_cls"]  # alphabetical = label order
    a_names = [p.name for p in paths if p.parent.name == "a_cls"]
    assert a_names == [f"{k}.png" for k in range(1, 13)]  # natural: 2 before 10
    assert labels.tolist() == [0] * 12 + [1] * 5 + [2] * 4
    raw = cifar.read_image_folder_tree(tmp_path / "tree")
    assert np.array_equal(raw["train_images"][12], pixels[("train", "b_cls", 1)])
    assert np.array_equal(raw["test_images"][-1], pixels[("test", "c_cls", 2)])


def write_ten_class_tree(root: Path, train_per_class=6, test_per_class=2):
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for ci, cls in enumerate(NAMES):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                img = np.full((32, 32, 3), ci * 20 + k, dtype=np.uint8)
                Image.fromarray(img).save(d / f"{k:04d}.jpg", quality=95)


def make_tars(tree: Path, dest: Path):
    dest.mkdir(parents=True)
    for split in ("train", "test"):
        with tarfile.open(dest / f"{split}.tar.gz", "w:gz") as tar:
            tar.add(tree / split, arcname=split)


def test_tar_source_extracts_once_and_caches(tmp_path, monkeypatch):
    write_ten_class_tree(tmp_path / "tree")
    make_tars(tmp_path / "tree", tmp_path / "tars")
    c = cfg(tmp_path / "tars", tmp_path / "cache", n_max=6, imbalance_ratio=6)
    d1 = build_data(c)
    assert d1.provenance["source"]["kind"] == "tar"
    (tree,) = (tmp_path / "cache").glob("cifar10_lt_extracted-*")
    assert (tree / "train" / "truck" / "0005.jpg").is_file() and (tree / cifar.EXTRACTED_MARK).is_file()
    assert d1.class_counts.tolist() == [6, 4, 4, 3, 2, 2, 1, 1, 1, 1] and d1.test.n == 20
    assert list((tmp_path / "cache").glob("cifar10_lt_tar_*.pt"))
    # JPEG round trip of flat images is (near) exact: label c has value ~20c
    means = d1.test.images.float().mean(dim=(1, 2, 3))
    assert torch.allclose(means, (d1.test.labels * 20 + torch.arange(20) % 2).float(), atol=1.5)

    def boom(*a, **k):
        raise AssertionError("second build must not decode")

    monkeypatch.setattr(cifar, "decode_images", boom)
    monkeypatch.setattr(cifar, "extract_tars", boom)
    t = time.perf_counter()
    d2 = build_data(c)
    assert time.perf_counter() - t < 1.0
    assert torch.equal(d1.train.images, d2.train.images) and torch.equal(d1.train.labels, d2.train.labels)
    assert d1.provenance["indices"] == d2.provenance["indices"]


def test_two_runs_extracting_at_once_never_read_a_half_written_tree(tmp_path, monkeypatch):
    """Two runs started together once shared one ``.partial`` folder: the second deleted and refilled it
    while the first was extracting, the first renamed the half-filled folder into place and cached 4,928
    airplanes instead of 5,000. Here a second extraction runs to completion *inside* the first one's
    extraction of train.tar.gz (as a concurrent run would); both must return a complete tree."""
    write_ten_class_tree(tmp_path / "tree", train_per_class=4, test_per_class=2)
    make_tars(tmp_path / "tree", tmp_path / "tars")
    stem = tmp_path / "cache" / "cifar10_lt_extracted"
    real_open = tarfile.open
    inner = {}

    def open_and_race(path, *a, **k):
        if not inner and Path(path).name == "train.tar.gz":
            inner["tree"] = None
            inner["tree"] = cifar.extract_tars(tmp_path / "tars", stem)  # the other run, start to finish
        return real_open(path, *a, **k)

    monkeypatch.setattr(cifar.tarfile, "open", open_and_race)
    outer = cifar.extract_tars(tmp_path / "tars", stem)
    assert outer == inner["tree"]
    assert len(list((outer / "train").rglob("*.jpg"))) == 40 and len(list((outer / "test").rglob("*.jpg"))) == 20
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [outer.name]  # no partial left behind


def test_unfinished_or_other_archives_tree_is_extracted_again(tmp_path):
    write_ten_class_tree(tmp_path / "tree", train_per_class=3, test_per_class=1)
    make_tars(tmp_path / "tree", tmp_path / "tars")
    stem = tmp_path / "cache" / "cifar10_lt_extracted"
    first = cifar.extract_tars(tmp_path / "tars", stem)
    (first / cifar.EXTRACTED_MARK).unlink()  # as if killed before the mark: never read, the user is told
    with pytest.raises(DataError, match="not a finished extraction.*delete it"):
        cifar.extract_tars(tmp_path / "tars", stem)
    shutil.rmtree(first)
    assert cifar.extract_tars(tmp_path / "tars", stem) == first
    # other archives (one more image per class) get their own tree, not the old one
    shutil.rmtree(tmp_path / "tars")
    write_ten_class_tree(tmp_path / "tree2", train_per_class=4, test_per_class=1)
    make_tars(tmp_path / "tree2", tmp_path / "tars")
    second = cifar.extract_tars(tmp_path / "tars", stem)
    assert second != first and len(list((second / "train").rglob("*.jpg"))) == 40


def test_image_folder_source_kind(tmp_path):
    write_ten_class_tree(tmp_path / "tree", train_per_class=3, test_per_class=1)
    d = build_data(cfg(tmp_path / "tree", tmp_path / "cache", n_max=3, imbalance_ratio=3))
    assert d.provenance["source"]["kind"] == "image_folder" and d.class_names == NAMES


def test_corrupt_jpeg_names_the_file(tmp_path):
    write_ten_class_tree(tmp_path / "tree", train_per_class=3, test_per_class=1)
    bad = tmp_path / "tree" / "train" / "cat" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(DataError) as err:
        build_data(cfg(tmp_path / "tree", tmp_path / "cache", n_max=3))
    assert str(bad) in str(err.value) and "re-extract" in str(err.value)


def test_wrong_image_size(tmp_path):
    write_ten_class_tree(tmp_path / "tree", train_per_class=2, test_per_class=1)
    odd = tmp_path / "tree" / "test" / "dog" / "0000.jpg"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(odd)
    with pytest.raises(DataError, match="0000.jpg is 24x20, expected 32x32"):
        build_data(cfg(tmp_path / "tree", tmp_path / "cache", n_max=2))


def test_missing_root_lists_paths(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        build_data(cfg(root, tmp_path / "cache"))
    msg = str(err.value)
    for p in (root / "cifar-10-batches-py" / "data_batch_1", root / "train", root / "test.tar.gz"):
        assert str(p) in msg
    assert "LTR_DATA_ROOT" in msg and "download=True" in msg and "shared/data/cifar10" in msg


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)
    with pytest.raises(DataError, match="download=True failed.*unreachable"):
        build_data(cfg(tmp_path / "dl", tmp_path / "cache", download=True))


# ----------------------------------------------------------------------------- the real CIFAR-10 copy

@pytest.fixture
def persistent_cache(request, tmp_path_factory):
    """Decoded CIFAR-10 cache kept across test runs (the first run decodes 60k JPEGs)."""
    if os.environ.get("LTR_TEST_CACHE"):
        return Path(os.environ["LTR_TEST_CACHE"])
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("ltr_data_cache")) if cache is not None else tmp_path_factory.mktemp("ltr_cache")


@pytest.mark.skipif(not (SHARED / "cifar10" / "train.tar.gz").is_file(),
                    reason=f"real CIFAR-10 copy not found at {SHARED / 'cifar10'} (set LTR_SHARED_DATA)")
def test_real_cifar10_lt(persistent_cache):
    c100 = cfg(SHARED / "cifar10", persistent_cache, imbalance_ratio=100)
    d = build_data(c100)  # first run: extract + decode (~20-60 s), then cached
    assert d.class_names == NAMES
    assert d.class_counts.tolist() == CIFAR10_IR100 and d.train.n == 12406
    assert d.test_counts.tolist() == [1000] * 10 and d.test.images.shape == (10000, 3, 32, 32)
    t = time.perf_counter()
    d10 = build_data(cfg(SHARED / "cifar10", persistent_cache, imbalance_ratio=10))
    assert time.perf_counter() - t < 1.0
    assert d10.class_counts.tolist() == CIFAR10_IR10 and d10.train.n == 20431
    # provenance indices point at the images that were kept, in the ImageFolder order
    raw = torch.load(d.provenance["cache"], weights_only=True)
    idx = np.concatenate([d.provenance["indices"][str(c)] for c in range(10)])
    assert torch.equal(raw["train_images"][idx], d.train.images)
    assert raw["train_labels"].bincount().tolist() == [5000] * 10
    # LDAM selection with seed 0 on this copy's per-class order
    assert d.provenance["indices"]["9"] == select_lt_indices(raw["train_labels"].numpy(), CIFAR10_IR100)[9].tolist()
