"""Open-set evaluation (OLTR protocol, methods.md §1.5) and the held-out-class open-set datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_params
from ltr_core import metrics, plots
from ltr_core.config import DataSection, config_hash, from_params, semantic_params
from ltr_core.data import DataError, build_data, lt_counts, select_lt_indices
from ltr_core.methods import get_method
from test_data_cifar import write_torchvision_cifar10

# ----------------------------------------------------------------------------- the F-measure by hand
# 3 known classes; known samples (label, softmax) and open samples (softmax):
KNOWN = [(0, [0.80, 0.10, 0.10]),  # right, confident
         (1, [0.60, 0.30, 0.10]),  # wrong (predicted 0), conf 0.60
         (2, [0.34, 0.33, 0.33]),  # wrong (predicted 0), conf 0.34: rejected at theta 0.5
         (1, [0.10, 0.46, 0.44]),  # right, conf 0.46: rejected at theta 0.5
         (2, [0.10, 0.10, 0.80])]  # right, confident
OPEN = [[0.90, 0.05, 0.05],  # accepted (false negative)
        [0.40, 0.30, 0.30],  # rejected at theta 0.5
        [0.20, 0.20, 0.60]]  # accepted
ZK = np.log(np.array([p for _, p in KNOWN]))
YK = np.array([y for y, _ in KNOWN])
ZO = np.log(np.array(OPEN))


def test_f_measure_post_and_pre_fix_by_hand():
    # theta 0.5: TP = 2 (samples 1, 5); FP post-fix = 3 (2 wrong, 3 and 4 rejected); FP pre-fix = 1;
    # FN = 2 open samples accepted. post: P = 2/5, R = 2/4, F = 4/9; pre: P = 2/3, R = 1/2, F = 4/7.
    assert metrics.open_set_f_measure(ZK, YK, ZO, theta=0.5) == pytest.approx(100 * 4 / 9)
    assert metrics.open_set_f_measure(ZK, YK, ZO, theta=0.5, variant="pre_fix") == pytest.approx(100 * 4 / 7)
    # theta 0.1 < 1/3: nothing rejected; TP 3, FP 2, FN 3 -> F = 6/11 for both variants
    for variant in metrics.F_VARIANTS:
        assert metrics.open_set_f_measure(ZK, YK, ZO, theta=0.1, variant=variant) == pytest.approx(100 * 6 / 11)
    assert metrics.open_set_predictions(ZK, 0.5).tolist() == [0, 0, -1, -1, 2]
    with pytest.raises(ValueError, match="variant"):
        metrics.open_set_f_measure(ZK, YK, ZO, variant="post")
    with pytest.raises(ValueError, match="open-set"):
        metrics.open_set_f_measure(ZK, np.array([0, 1, 2, 1, -1]), ZO)
    with pytest.raises(ValueError, match="same C"):
        metrics.open_set_f_measure(ZK, YK, ZO[:, :2])


def test_open_set_metrics_groups_after_thresholding_and_sweep():
    counts = [200, 50, 5]  # many {0}, medium {1}, few {2}
    m = metrics.open_set_metrics(ZK, YK, ZO, counts, theta=0.5, thetas=(0.0, 0.5, 0.95))
    assert m["f_measure"] == pytest.approx(100 * 4 / 9) and m["f_measure_pre_fix"] == pytest.approx(100 * 4 / 7)
    assert m["open_precision"] == pytest.approx(40.0) and m["open_recall"] == pytest.approx(50.0)
    # after thresholding: class 0 1/1, class 1 0/2 (one wrong, one rejected), class 2 1/2
    assert (m["open_many"], m["open_medium"], m["open_few"]) == pytest.approx((100.0, 0.0, 50.0))
    assert m["open_top1"] == pytest.approx(40.0)
    assert m["open_rejection"] == pytest.approx(100 / 3) and m["known_rejection"] == pytest.approx(40.0)
    closed = metrics.evaluate(ZK, YK, counts)  # closed-set groups stay without rejection
    assert (closed["many"], closed["medium"], closed["few"]) == pytest.approx((100.0, 50.0, 50.0))
    sw = m["f_measure_sweep"]
    assert sw["theta"] == [0.0, 0.5, 0.95]
    assert sw["f_measure"] == pytest.approx([100 * 6 / 11, 100 * 4 / 9, 0.0])  # 0.95: everything rejected, TP 0
    assert sw["f_measure_pre_fix"][1] == pytest.approx(100 * 4 / 7)
    assert sw["closed_accuracy"] == pytest.approx([60.0, 40.0, 0.0])
    assert sw["open_rejection"] == pytest.approx([0.0, 100 / 3, 100.0])
    assert list(metrics.OPEN_THETAS)[:3] == [0.0, 0.05, 0.1] and metrics.OPEN_THETAS[-1] == 0.9


def test_sweep_plot(tmp_path):
    plots.set_style()
    sw = metrics.open_set_sweep(ZK, YK, ZO)
    fig = plots.plot_open_set_sweep({"a": sw, "b": sw})
    left, right = fig.axes[:2]
    assert len(left.lines) == 5 and len(right.lines) == 5  # 2 runs x 2 curves + the theta line
    paths = plots.save(fig, tmp_path, "sweep")
    assert all(p.stat().st_size > 0 for p in paths)


# ----------------------------------------------------------------------------- datasets


def test_digits_lt_open_holds_out_digits():
    d = build_data(DataSection(dataset="digits_lt_open", imbalance_ratio=25.0))
    assert d.class_names == [str(c) for c in range(8)]
    assert d.class_counts.tolist() == [120, 75, 47, 30, 19, 12, 7, 4] == lt_counts(120, 8, 25.0)
    assert d.test.n == 400 and d.test_counts.tolist() == [50] * 8
    assert d.open.n == 100 and set(d.open.labels.tolist()) == {-1}
    from sklearn.datasets import load_digits

    targets = load_digits().target
    open_idx = sum(d.provenance["open_indices"].values(), [])
    assert sorted(set(targets[open_idx].tolist())) == [8, 9]
    train_idx = sum(d.provenance["indices"].values(), [])
    assert set(targets[train_idx].tolist()) == set(range(8)) and not set(open_idx) & set(train_idx)
    d2 = build_data(DataSection(dataset="digits_lt_open", imbalance_ratio=25.0, open_classes=(0, 5, 7)))
    assert d2.class_names == ["1", "2", "3", "4", "6", "8", "9"] and d2.open.n == 150


@pytest.mark.parametrize("held, message", [((10,), r"not class indices in \[0, 10\)"),
                                           ((3, 3), "listed twice"),
                                           (tuple(range(9)), "leaves 1 known class")])
def test_bad_open_classes(held, message):
    with pytest.raises(DataError, match=message):
        build_data(DataSection(dataset="digits_lt_open", open_classes=held))


def test_open_classes_only_for_open_datasets():
    with pytest.raises(DataError, match="applies to the held-out-class open-set datasets"):
        build_data(DataSection(dataset="digits_lt", open_classes=(8,)))


def test_open_keys_enter_the_hash_only_when_set():
    base = from_params({})
    assert "open_classes" not in semantic_params(base) and "open_theta" not in semantic_params(base)
    assert config_hash(from_params({"open_classes": [1, 2]})) != config_hash(base)
    assert config_hash(from_params({"open_theta": 0.5})) != config_hash(base)


def test_cifar10_lt_open_from_official_files(tmp_path):
    data, labels, test, test_labels = write_torchvision_cifar10(tmp_path / "root")
    d = build_data(DataSection(dataset="cifar10_lt_open", data_root=str(tmp_path / "root"),
                               cache_dir=str(tmp_path / "cache"), n_max=10, imbalance_ratio=10, open_classes=(1, 4)))
    known = [0, 2, 3, 5, 6, 7, 8, 9]
    assert d.class_names == ["airplane", "bird", "cat", "dog", "frog", "horse", "ship", "truck"]
    counts = lt_counts(10, 8, 10.0)
    assert d.class_counts.tolist() == counts
    relabelled = np.array([known.index(c) if c in known else -1 for c in labels])
    sel = select_lt_indices(relabelled, counts, seed=0)
    idx = np.concatenate([sel[c] for c in range(8)])
    assert np.array_equal(d.train.images.numpy(), data[idx])
    assert np.array_equal(d.train.labels.numpy(), relabelled[idx])
    is_open = np.isin(test_labels, [1, 4])
    assert np.array_equal(d.open.images.numpy(), test[is_open]) and d.open.n == 6
    assert np.array_equal(d.test.images.numpy(), test[~is_open])
    assert d.test.labels.tolist() == [known.index(c) for c in test_labels[~is_open]]
    assert d.provenance["open_classes"] == {"1": "automobile", "4": "deer"}
    with pytest.raises(DataError, match="airplane"):  # bad class: the error lists the class names
        build_data(DataSection(dataset="cifar10_lt_open", data_root=str(tmp_path / "root"),
                               cache_dir=str(tmp_path / "cache"), n_max=10, open_classes=(12,)))


# ----------------------------------------------------------------------------- every method gets it


def test_erm_run_on_an_open_dataset_records_the_open_set_metrics(tmp_path):
    cfg = from_params(tiny_params(tmp_path, dataset="digits_lt_open", epochs=1, max_steps_per_epoch=2))
    res = get_method("erm").run(cfg)
    m = res["metrics"]
    for key in ("f_measure", "f_measure_pre_fix", "open_many", "open_medium", "open_few", "open_rejection"):
        assert key in m
    assert m["open_samples"] == 100 and m["open_theta"] == 0.1 and m["open_known_split"] == "test"
    assert len(m["f_measure_sweep"]["theta"]) == len(metrics.OPEN_THETAS)
    z = np.load(cfg.run_path() / "logits.npz")
    zo = np.load(cfg.run_path() / "logits_open.npz")
    assert zo["logits"].shape == (100, 8) and set(zo["labels"].tolist()) == {-1}
    assert m["f_measure"] == pytest.approx(metrics.open_set_f_measure(z["logits"], z["labels"], zo["logits"]))
    saved = json.loads((cfg.run_path() / "results.json").read_text())
    assert saved["metrics"]["f_measure"] == pytest.approx(m["f_measure"])
    closed = get_method("erm").run(from_params(tiny_params(tmp_path, epochs=1, max_steps_per_epoch=2)))
    assert "f_measure" not in closed["metrics"]  # no open split, no open-set numbers


def test_vlltr_run_on_an_open_dataset_records_the_open_set_metrics(tmp_path):
    from ltr_core.config import load_params

    params = load_params("params/smoke/vlltr_tiny.yaml")
    params.update(dataset="digits_lt_open", results_root=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"))
    cfg = from_params(params)
    m = get_method("vlltr").run(cfg)["metrics"]
    assert m["open_samples"] == 40  # digits 8 and 9, digits_test_per_class = 20 each
    z = np.load(cfg.run_path() / "logits.npz")
    zo = np.load(cfg.run_path() / "logits_open.npz")
    assert zo["logits"].shape == (40, 8)
    assert m["f_measure"] == pytest.approx(metrics.open_set_f_measure(z["logits"], z["labels"], zo["logits"]))
    assert len(m["f_measure_sweep"]["theta"]) == len(metrics.OPEN_THETAS)
