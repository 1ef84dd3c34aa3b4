"""VOC-MLT / COCO-MLT from the real split lists (+ a few generated images), the restricted unpickler,
the carved validation split and TailCLIP's class-occurrence sampler."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from ltr_core.config import from_params
from ltr_core.data import DataError, build_data
from ltr_core.data import multilabel as ML


def _lists(shared_data, name):
    spec = ML.MLT_SPECS[name]
    d = shared_data / "splits" / spec.folder
    names = ML.read_label_names(d / spec.class_list)
    rel, t = ML.read_multilabel_list(d / spec.train_list, len(names))
    rel_test, t_test = ML.read_multilabel_list(d / spec.test_list, len(names))
    return spec, d, names, (rel, t), (rel_test, t_test)


@pytest.mark.parametrize("name", ["voc_mlt", "coco_mlt"])
def test_lists_give_the_published_sizes_groups_and_match_the_shipped_pickles(shared_data, name):
    spec, d, names, (rel, t), (rel_test, t_test) = _lists(shared_data, name)
    assert len(names) == spec.num_classes and t.shape == (spec.train_images, spec.num_classes)
    assert t_test.shape == (spec.test_images, spec.num_classes)
    groups = ML.multilabel_groups(t.sum(0))
    assert tuple(len(groups[g]) for g in ("head", "medium", "tail")) == spec.group_sizes
    report = ML.check_against_shipped(d, t, names)  # raises on any difference
    assert report["class_freq"]["match"] and report["class_split"]["match"]
    if name == "voc_mlt":
        counts = dict(zip(names, t.sum(0).tolist()))
        assert counts["person"] == 775 and counts["pottedplant"] == 100 and counts["cow"] == 4
        assert names.index("pottedplant") in groups["head"]
    else:
        assert int((t_test.sum(1) == 0).sum()) == 48 and names[9] == "traffic light"


def test_a_tampered_list_fails_the_shipped_check(shared_data, tmp_path):
    spec, d, names, (rel, t), _ = _lists(shared_data, "voc_mlt")
    t2 = t.copy()
    t2[0, names.index("cow")] = 1  # one more cow
    with pytest.raises(DataError, match="differ from .*class_freq.pkl.*cow"):
        ML.check_against_shipped(d, t2, names)


def test_restricted_unpickler_refuses_anything_but_numpy(tmp_path):
    good, bad = tmp_path / "good.pkl", tmp_path / "bad.pkl"
    good.write_bytes(pickle.dumps({"a": np.arange(3), "s": {1, 2}}, protocol=2))
    assert ML.load_numpy_pickle(good)["a"].tolist() == [0, 1, 2]
    bad.write_bytes(pickle.dumps(OrderedDict(x=1)))
    with pytest.raises(DataError, match="refusing to unpickle collections.OrderedDict"):
        ML.load_numpy_pickle(bad)


def _write_images(root, rels, size=(40, 30)):
    rng = np.random.default_rng(0)
    for r in rels:
        p = root / r
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)


def test_voc_mlt_builds_from_a_user_root_and_loads_multi_hot_batches(shared_data, tmp_path):
    _, d, names, (rel, t), (rel_test, t_test) = _lists(shared_data, "voc_mlt")
    _write_images(tmp_path / "voc", rel[:4] + rel_test[:4])
    cfg = from_params({"dataset": "voc_mlt", "split_dir": str(d), "data_root": str(tmp_path / "voc")})
    data = build_data(cfg.data)
    assert data.is_multilabel and data.train.n == 1142 and data.test.n == 4952
    assert data.class_counts.tolist() == t.sum(0).tolist() and data.test_counts.tolist() == t_test.sum(0).tolist()
    assert data.train.paths[0].endswith("VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg")
    assert data.provenance["shipped_check"]["class_split"]["match"]
    # rarest label: image 0 has person (775), bottle (154), tvmonitor (64) -> tvmonitor
    assert names[int(data.train.labels[0])] == "tvmonitor"
    small = ML.LTData(name="voc_mlt", class_names=names, train=ML._subset(data.train, np.arange(4)),
                      test=ML._subset(data.test, np.arange(4)), mean=data.mean, std=data.std, image_size=32)
    loader = ML.make_multilabel_loader(small, "train", train=True, batch_size=4, device="cpu", image_size=32,
                                       mean=data.mean, std=data.std, sampler="occurrence", power=1.0, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 20) and y.dtype == torch.int64
    rows = {tuple(r) for r in t[:4].tolist()}
    assert all(tuple(r) in rows for r in y.tolist())
    ev = ML.make_multilabel_loader(small, "test", train=False, batch_size=3, device="cpu", image_size=32,
                                   mean=data.mean, std=data.std, num_workers=0)
    ys = torch.cat([b[1] for b in ev])
    assert ys.tolist() == t_test[:4].tolist()


def test_missing_images_and_lists_say_where_they_were_looked_for(shared_data, tmp_path):
    d = shared_data / "splits" / "VOC_MLT"
    cfg = from_params({"dataset": "voc_mlt", "split_dir": str(d), "data_root": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match=r"(?s)images not found.*VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg"
                                        r".*VOCdevkit/VOC2007/JPEGImages/000001.jpg.*data_root"):
        build_data(cfg.data)
    cfg = from_params({"dataset": "coco_mlt", "data_root": str(tmp_path)})
    with pytest.raises(DataError, match=r"split lists not found.*coco_lt_train.txt.*split_dir.*COCO_MLT"):
        build_data(cfg.data)


def _toy_data(n=300, c=6, seed=0):
    rng = np.random.default_rng(seed)
    p = np.array([0.6, 0.4, 0.2, 0.08, 0.04, 0.02])[:c]
    t = (rng.random((n, c)) < p).astype(np.uint8)
    t[t.sum(1) == 0, 0] = 1
    for k in range(c):  # every class at least twice
        t[2 * k:2 * k + 2, k] = 1
    labels = ML.rarest_labels(t, t.sum(0))
    split = ML.Split(labels=torch.from_numpy(labels), images=torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
                     targets=torch.from_numpy(t))
    test = ML.Split(labels=torch.from_numpy(labels[:10]), images=torch.zeros(10, 3, 4, 4, dtype=torch.uint8),
                    targets=torch.from_numpy(t[:10]))
    return ML.LTData(name="toy", class_names=[str(k) for k in range(c)], train=split, test=test,
                     mean=(0.5,) * 3, std=(0.5,) * 3, image_size=4), t


def test_carved_val_split_is_stratified_disjoint_and_seeded():
    data, t = _toy_data()
    out = ML.carve_val_split(data, 0.2, seed=3)
    val_idx = np.asarray(out.provenance["val"]["indices"])
    assert out.train.n + out.val.n == data.train.n and out.val.n == val_idx.size
    assert torch.equal(out.val.targets, data.train.targets[torch.from_numpy(val_idx)])
    rarest = data.train.labels.numpy()
    for c in np.unique(rarest):
        n_c, v_c = (rarest == c).sum(), (rarest[val_idx] == c).sum()
        assert v_c == min(int(np.floor(0.2 * n_c + 0.5)), n_c - 1)  # stratified, never the whole stratum
    assert out.provenance["group_counts"] == data.class_counts.tolist()  # groups from the full list
    assert ML.group_counts(out).tolist() == data.class_counts.tolist()
    again = ML.carve_val_split(data, 0.2, seed=3).provenance["val"]["indices"]
    other = ML.carve_val_split(data, 0.2, seed=4).provenance["val"]["indices"]
    assert again == val_idx.tolist() and other != val_idx.tolist()


def test_occurrence_sampler_draws_classes_at_the_rate_its_weights_give():
    data, t = _toy_data(seed=1)
    s = 1.35
    n_c = t.sum(0)
    raw = (t @ (t.shape[0] / n_c)) ** s
    u = ML.image_occurrence_weights(t, s)
    assert u == pytest.approx(raw / raw.max())
    sampler = ML.OccurrenceSampler(torch.from_numpy(t), seed=0, power=s, num_samples=60000)
    idx = sampler.indices(0).numpy()
    empirical = t[idx].mean(0)
    expected = (u[:, None] * t).sum(0) / u.sum()
    assert empirical == pytest.approx(expected, abs=0.01)
    assert (empirical[-1] / empirical[0]) > 3 * (n_c[-1] / n_c[0])  # the tail class is strongly over-drawn
    assert torch.equal(sampler.indices(0), sampler.indices(0)) and not torch.equal(sampler.indices(0), sampler.indices(1))
    loader = ML.make_multilabel_loader(data, "train", train=True, batch_size=50, device="cpu", image_size=4,
                                       mean=data.mean, std=data.std, power=s)
    assert len(loader) == 6 and next(iter(loader))[1].shape == (50, 6)
