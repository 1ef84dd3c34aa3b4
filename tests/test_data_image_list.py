"""Image-list datasets: the real ImageNet-LT / Places-LT lists, validation errors, lazy file loading, iNat18."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltr_core.config import DataSection
from ltr_core.data import DataError, build_data, make_loader, shot_groups
from ltr_core.data.image_list import ImageFileDataset, read_class_names, read_image_list, read_list_splits
from ltr_core.data.transforms import eval_transform, train_transform

SHARED = Path(os.environ.get("LTR_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SPLITS = SHARED / "splits"
needs_splits = pytest.mark.skipif(not (SPLITS / "Places_LT").is_dir(),
                                  reason=f"split lists not found at {SPLITS} (set LTR_SHARED_DATA)")


# ----------------------------------------------------------------------------- the real lists

@needs_splits
def test_places_lt_real_lists():
    lists = read_list_splits(SPLITS / "Places_LT", "places_lt")  # validates labels, open -1, coverage
    rel, labels, _ = lists["splits"]["train"]
    assert len(rel) == 62500 and len(lists["class_names"]) == 365
    counts = np.bincount(labels, minlength=365)
    assert counts.max() == 4980 and counts.min() == 5
    g = shot_groups(counts)
    assert [len(g[k]) for k in ("many", "medium", "few")] == [131, 163, 71]
    sizes = {s: len(v[0]) for s, v in lists["splits"].items()}
    assert sizes == {"train": 62500, "val": 7300, "test": 36500, "open": 6600}
    assert set(lists["splits"]["open"][1].tolist()) == {-1}
    assert np.bincount(lists["splits"]["test"][1]).tolist() == [100] * 365
    assert lists["class_ids"][0] == "airfield" and rel[0] == "train/airfield/00004851.jpg"
    derived = np.loadtxt(SPLITS / "Places_LT" / "class_count_Places_LT.txt", dtype=np.int64)
    assert np.array_equal(derived[:, 1], counts)


@needs_splits
def test_imagenet_lt_real_lists_and_counts():
    counts = np.loadtxt(SPLITS / "ImageNet_LT" / "class_count_ImageNet_LT.txt", dtype=np.int64)[:, 1]
    assert counts.sum() == 115846 and len(counts) == 1000
    g = shot_groups(counts)
    assert [len(g[k]) for k in ("many", "medium", "few")] == [385, 479, 136]
    ids, names = read_class_names(SPLITS / "ImageNet_LT" / "classnames.txt")
    assert len(ids) == 1000 and ids[0] == "n01440764" and names[2] == "great white shark"
    rel, labels = read_image_list(SPLITS / "ImageNet_LT" / "ImageNet_LT_test.txt")
    assert len(rel) == 50000 and np.bincount(labels).tolist() == [50] * 1000
    _, open_labels = read_image_list(SPLITS / "ImageNet_LT" / "ImageNet_LT_open.txt")
    assert len(open_labels) == 18000 and set(open_labels.tolist()) == {-1}


@needs_splits
def test_imagenet_lt_missing_train_list_is_named(tmp_path):
    c = DataSection(dataset="imagenet_lt", data_root=str(tmp_path), split_dir=str(SPLITS / "ImageNet_LT"))
    with pytest.raises(DataError) as err:
        build_data(c)
    assert str(SPLITS / "ImageNet_LT" / "ImageNet_LT_train.txt") in str(err.value)


# ----------------------------------------------------------------------------- generated data

def jpeg(path: Path, value: int, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path, quality=95)


def places_tree(root: Path, train=(6, 3, 1), test=2):
    """A tiny Places-LT layout: images under root, lists + classnames.txt in root/lists."""
    classes = ["airfield", "bakery-shop", "canyon"]
    lists = root / "lists"
    lists.mkdir(parents=True)
    (lists / "classnames.txt").write_text("".join(f"{c} {c}\n" for c in classes))
    lines = {"train": [], "val": [], "test": [], "open": []}
    for ci, c in enumerate(classes):
        for k in range(train[ci]):
            jpeg(root / "train" / c / f"{k:08d}.jpg", 40 * ci + k)
            lines["train"].append(f"train/{c}/{k:08d}.jpg {ci}")
        for k in range(test):
            jpeg(root / "val" / c / f"v{k}.jpg", 40 * ci)
            lines["test"].append(f"val/{c}/v{k}.jpg {ci}")
        lines["val"].append(f"train/{c}/{0:08d}.jpg {ci}")
    jpeg(root / "open_0.jpg", 7)
    lines["open"].append("open_0.jpg -1")
    for s, ls in lines.items():
        (lists / f"Places_LT_{s}.txt").write_text("\n".join(ls) + "\n\n")
    return DataSection(dataset="places_lt", data_root=str(root), split_dir=str(lists), image_size=32)


def test_places_layout_builds_with_paths(tmp_path):
    d = build_data(places_tree(tmp_path))
    assert d.class_counts.tolist() == [6, 3, 1] and d.test_counts.tolist() == [2, 2, 2]
    assert d.val.n == 3 and d.open.n == 1 and d.open.labels.tolist() == [-1]
    assert d.train.images is None and Path(d.train.paths[0]).is_absolute() and Path(d.train.paths[-1]).is_file()
    assert d.class_names == ["airfield", "bakery-shop", "canyon"] and d.image_size == 32
    assert d.mean == (0.485, 0.456, 0.406)
    prov = json.loads(json.dumps(d.provenance))
    assert len(prov["split_files"]["train"]["sha256"]) == 64 and prov["class_list"]["sha256"]


def test_file_loader_interface_and_determinism(tmp_path):
    d = build_data(places_tree(tmp_path))
    ev = make_loader(d, "test", train=False, batch_size=4, device="cpu", num_workers=0)
    assert len(ev) == 2
    xs, ys = zip(*ev)
    assert xs[0].shape == (4, 3, 32, 32) and xs[0].dtype == torch.float32
    assert torch.cat(ys).tolist() == [0, 0, 1, 1, 2, 2]

    def epoch(workers, e):
        L = make_loader(d, "train", train=True, batch_size=4, device="cpu", sampler="class_balanced",
                        seed=5, num_workers=workers)
        L.set_epoch(e)
        return [(x, y) for x, y in L]

    a, b, c = epoch(0, 1), epoch(2, 1), epoch(0, 2)
    assert len(a) == 3 and a[0][0].shape == (4, 3, 32, 32)
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(a, b))  # workers don't matter
    assert not all(torch.equal(u[0], v[0]) for u, v in zip(a, c))


def test_transforms_shapes():
    im = Image.fromarray(np.zeros((300, 400, 3), np.uint8))
    assert train_transform(224)(im).shape == (3, 224, 224)
    ev = eval_transform(224)
    assert ev(im).shape == (3, 224, 224) and ev.transforms[0].size == [256]


def test_truncated_jpeg_names_the_file(tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    bad.write_bytes(good.read_bytes()[:400])
    ds = ImageFileDataset([str(good), str(bad)], [0, 1], eval_transform(32))
    assert ds[0][0].shape == (3, 32, 32) and ds[0][1] == 0
    with pytest.raises(DataError) as err:
        ds[1]
    assert str(bad) in str(err.value) and "truncated" in str(err.value)


def test_corrupt_image_through_the_loader(tmp_path):
    c = places_tree(tmp_path)
    (tmp_path / "val" / "canyon" / "v1.jpg").write_bytes(b"not a jpeg")
    d = build_data(c)
    with pytest.raises(DataError, match="v1.jpg"):
        list(make_loader(d, "test", train=False, batch_size=2, device="cpu", num_workers=0))


def test_malformed_line_names_file_and_line(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("a.jpg 0\n\nb.jpg one\n")
    with pytest.raises(DataError, match=r"x\.txt:3: expected 'relative/path.jpg label'"):
        read_image_list(f)
    f.write_text("a.jpg 0\nb.jpg 1 2\n")
    with pytest.raises(DataError, match=r"x\.txt:2"):
        read_image_list(f)
    f.write_text("a.jpg 0\n\n  \nb.jpg 1\n")
    rel, labels = read_image_list(f)
    assert rel == ["a.jpg", "b.jpg"] and labels.tolist() == [0, 1] and labels.dtype == np.int64


def test_label_out_of_range_names_file_line_and_class_list(tmp_path):
    c = places_tree(tmp_path)
    test_list = tmp_path / "lists" / "Places_LT_test.txt"
    test_list.write_text(test_list.read_text().replace("val/canyon/v1.jpg 2", "val/canyon/v1.jpg 3"))
    with pytest.raises(DataError) as err:
        build_data(c)
    msg = str(err.value)
    assert f"{test_list}:6" in msg and "label 3" in msg and "classnames.txt" in msg


def test_open_labels_must_be_minus_one(tmp_path):
    c = places_tree(tmp_path)
    (tmp_path / "lists" / "Places_LT_open.txt").write_text("open_0.jpg 2\n")
    with pytest.raises(DataError, match=r"Places_LT_open\.txt:1: label 2 must be -1"):
        build_data(c)


def test_train_must_cover_every_class(tmp_path):
    c = places_tree(tmp_path)
    train = tmp_path / "lists" / "Places_LT_train.txt"
    train.write_text("".join(l + "\n" for l in train.read_text().splitlines() if l and not l.endswith(" 2")))
    with pytest.raises(DataError, match="has labels for 2 classes but the class list .*classnames.txt has 3"):
        build_data(c)


def test_missing_image_root(tmp_path, monkeypatch):
    c = places_tree(tmp_path / "real")
    missing = tmp_path / "elsewhere"
    with pytest.raises(DataError) as err:
        build_data(DataSection(dataset="places_lt", data_root=str(missing), split_dir=c.split_dir))
    assert str(missing) in str(err.value) and "LTR_DATA_ROOT" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="first image of .*Places_LT_train.txt is not at"):
        build_data(DataSection(dataset="places_lt", data_root=str(tmp_path / "empty"), split_dir=c.split_dir))


def test_generic_image_list_without_classnames(tmp_path):
    for i in range(3):
        jpeg(tmp_path / f"im{i}.jpg", 10 * i)
    (tmp_path / "train.txt").write_text("im0.jpg 0\nim1.jpg 1\nim2.jpg 1\n")
    (tmp_path / "test.txt").write_text("im2.jpg 1\nim0.jpg 0\n")
    d = build_data(DataSection(dataset="image_list", data_root=str(tmp_path)))
    assert d.class_names == ["0", "1"] and d.class_counts.tolist() == [1, 2] and d.val is None
    assert d.image_size == 224


# ----------------------------------------------------------------------------- iNaturalist 2018

def inat_json(path: Path, cats, samples):
    data = {"images": [{"id": i, "file_name": f} for i, (f, _) in enumerate(samples)],
            "annotations": [{"image_id": i, "category_id": c} for i, (_, c) in enumerate(samples)],
            "categories": [{"id": c, "name": f"species {c}", "kingdom": "Plantae"} for c in cats]}
    path.write_text(json.dumps(data))


def test_inat18_labels_follow_sorted_category_ids(tmp_path):
    cats = [9, 2, 5]  # deliberately unsorted
    train = [("train_val2018/Plantae/9/a.jpg", 9), ("train_val2018/Plantae/2/b.jpg", 2),
             ("train_val2018/Plantae/5/c.jpg", 5), ("train_val2018/Plantae/2/d.jpg", 2)]
    for f, _ in train:
        jpeg(tmp_path / f, 3)
    inat_json(tmp_path / "train2018.json", cats, train)
    inat_json(tmp_path / "val2018.json", cats, [("val/x.jpg", 5), ("val/y.jpg", 9)])
    d = build_data(DataSection(dataset="inat18", data_root=str(tmp_path)))
    assert d.class_names == ["species 2", "species 5", "species 9"]
    assert d.train.labels.tolist() == [2, 0, 1, 0] and d.class_counts.tolist() == [2, 1, 1]
    assert d.test.labels.tolist() == [1, 2] and d.test.paths[0].endswith("val/x.jpg")
    inat_json(tmp_path / "val2018.json", cats, [("val/x.jpg", 77)])
    with pytest.raises(DataError, match=r"val2018\.json: image val/x\.jpg has category_id 77"):
        build_data(DataSection(dataset="inat18", data_root=str(tmp_path)))


def test_inat18_missing_json(tmp_path):
    with pytest.raises(DataError, match="train2018.json not found"):
        build_data(DataSection(dataset="inat18", data_root=str(tmp_path)))
