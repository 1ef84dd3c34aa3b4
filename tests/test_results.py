"""The run-directory contract: atomic files, results.json schema, collection and tables."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ltr_core import results as R


def fake_results(run_id="cifar100_lt-erm-default-s0", dataset="cifar100_lt", method="erm", seed=0,
                 top1=70.0, many=80.0, medium=60.0, few=float("nan"), status="complete", config_hash="h1",
                 name=None):
    res = {
        "run_id": run_id, "dataset": dataset, "method": method, "seed": seed, "config_hash": config_hash,
        "metrics": {"top1": top1, "many": many, "medium": medium, "few": few, "ece": 5.0,
                    "mean_per_class": top1, "group_sizes": {"many": 2, "medium": 1, "few": 0}},
        "class_counts": [500, 200, 50], "per_class": [80.0, 80.0, 60.0],
        "shot_groups": {"many": [0, 1], "medium": [2], "few": []},
        "train_seconds": 12.5, "images_per_second": np.float32(1000.0), "device": "cpu",
        "versions": {"python": "3.11", "torch": "2.4", "ltr_core": "0.1.0"}, "status": status,
    }
    if name is not None:
        res["name"] = name
    return res


# -- atomic writes ----------------------------------------------------------------------------------


def test_atomic_write_keeps_old_file_when_replace_fails(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    R.atomic_write_text(target, "old content")

    def dying_replace(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(OSError):
        R.atomic_write_text(target, "new content that must never appear half-written")
    assert target.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temp file left behind


def test_atomic_write_keeps_old_file_when_writer_dies_mid_write(tmp_path, monkeypatch):
    target = tmp_path / "logits.npz"
    R.atomic_write_bytes(target, b"old")
    rd = R.RunDir(tmp_path)

    def dying_savez(f, **arrays):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        rd.save_logits(np.zeros((2, 3)), np.zeros(2), "test")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npz"]


def test_atomic_write_creates_parent_and_replaces(tmp_path):
    p = R.atomic_write_bytes(tmp_path / "a" / "b.bin", b"1")
    R.atomic_write_bytes(p, b"22")
    assert p.read_bytes() == b"22"


# -- JSON -------------------------------------------------------------------------------------------


def test_to_jsonable_and_dump_json_never_emit_nan():
    obj = {"a": float("nan"), "b": np.float32("inf"), "c": np.array([1.0, np.nan]), "d": np.int64(3),
           "e": torch.tensor([1.5, float("nan")]), "f": (1, 2), "g": np.bool_(True), 1: -math.inf}
    text = R.dump_json(obj)
    assert json.loads(text) == {"a": None, "b": None, "c": [1.0, None], "d": 3, "e": [1.5, None],
                                "f": [1, 2], "g": True, "1": None}
    assert "\n" not in R.dump_json(obj, indent=None)
    with pytest.raises(TypeError):
        R.to_jsonable(object())


def test_nan_metric_is_null_in_results_json(tmp_path):
    rd = R.RunDir(tmp_path / "run")
    rd.write_results(fake_results(few=float("nan")))
    text = rd.results_path.read_text()
    assert "NaN" not in text and '"few": null' in text
    assert rd.read_results()["metrics"]["few"] is None


def test_missing_keys_raise_naming_them(tmp_path):
    res = fake_results()
    del res["seed"]
    del res["metrics"]["ece"]
    del res["versions"]["torch"]
    with pytest.raises(ValueError) as err:
        R.RunDir(tmp_path).write_results(res)
    msg = str(err.value)
    assert "seed" in msg and "metrics.ece" in msg and "versions.torch" in msg
    assert not (tmp_path / "results.json").exists()


def test_is_complete(tmp_path):
    rd = R.RunDir(tmp_path / "run")
    assert not rd.is_complete("h1") and rd.read_results() is None
    rd.write_results(fake_results(config_hash="h1"))
    assert rd.is_complete("h1")
    assert not rd.is_complete("other-hash")
    rd.write_results(fake_results(config_hash="h1", status="running"))
    assert not rd.is_complete("h1")
    rd.results_path.write_text('{"run_id": "trunc')  # torn file from an old non-atomic writer
    assert rd.read_results() is None and not rd.is_complete("h1")


# -- other run-directory files --------------------------------------------------------------------


def test_metrics_jsonl_append_read_truncate(tmp_path):
    rd = R.RunDir(tmp_path / "run")
    for epoch in range(5):
        rd.append_metrics({"epoch": epoch, "loss": 1.0 / (epoch + 1), "few": float("nan")})
    with open(rd.metrics_path, "a") as f:
        f.write('{"epoch": 5, "lo')  # a crash mid-line
    recs = rd.read_metrics()
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3, 4] and recs[0]["few"] is None
    rd.truncate_metrics(2)
    assert [r["epoch"] for r in rd.read_metrics()] == [0, 1, 2]
    assert len(rd.metrics_path.read_text().splitlines()) == 3


def test_write_config(tmp_path):
    rd = R.RunDir(tmp_path / "run")
    rd.write_config({"lr": 0.1, "lr_milestones": (160, 180)}, "abc", "x-erm-default-s0")
    doc = yaml.safe_load(rd.config_path.read_text())
    assert doc["params"] == {"lr": 0.1, "lr_milestones": [160, 180]}
    assert doc["config_hash"] == "abc" and doc["run_id"] == "x-erm-default-s0"
    assert {"python", "torch", "ltr_core", "git_sha", "hostname", "platform"} <= set(doc["versions"])


def test_versions():
    v = R.versions()
    for key in ("python", "torch", "torchvision", "timm", "open_clip", "numpy", "cuda", "ltr_core",
                "git_sha", "hostname", "platform"):
        assert key in v
    assert v["git_sha"] == "unknown" or len(v["git_sha"].split("+")[0]) == 40


def test_per_class_csv_logits_and_json(tmp_path):
    rd = R.RunDir(tmp_path)
    rd.write_per_class(["cat", "dog", "eel"], [500, 50, 5], [10, 10, 0], [90.0, 50.0, float("nan")],
                       {"many": [0], "medium": [1], "few": [2]})
    df = pd.read_csv(rd.per_class_path)
    assert list(df.columns) == ["class_id", "name", "train_count", "test_count", "acc", "group"]
    assert df["group"].tolist() == ["many", "medium", "few"] and math.isnan(df["acc"][2])
    rd.save_logits(torch.randn(4, 3, dtype=torch.bfloat16), torch.tensor([0, 1, 2, -1]), "test")
    saved = rd.load_logits()
    assert saved["logits"].dtype == np.float32 and saved["logits"].shape == (4, 3)
    assert saved["labels"].tolist() == [0, 1, 2, -1] and saved["split"] == "test"
    rd.write_json("split_indices.json", {"idx": np.arange(3)})
    assert rd.read_json("split_indices.json") == {"idx": [0, 1, 2]}
    assert os.fspath(rd) == str(tmp_path) and rd / "tb" == tmp_path / "tb"


# -- collect, summary, tables ---------------------------------------------------------------------


@pytest.fixture
def suite(tmp_path):
    root = tmp_path / "results" / "tab1"
    for seed, top1 in zip(range(3), (70.0, 72.0, 77.0)):
        rid = f"cifar100_lt-la_loss-tau1-s{seed}"
        R.RunDir(root / rid).write_results(fake_results(rid, method="la_loss", seed=seed, top1=top1,
                                                        many=80.0 + seed))
    R.RunDir(root / "cifar100_lt-erm-default-s0").write_results(fake_results(top1=60.04, many=85.0))
    R.RunDir(root / "cifar100_lt-erm-default-s1").write_results(fake_results(seed=1, status="running"))
    return root


def test_collect(suite):
    with pytest.warns(UserWarning, match="incomplete"):
        df = R.collect(str(suite / "**" / "results.json"))
    assert len(df) == 4
    for col in ("run_id", "dataset", "method", "seed", "name", "config_hash", "top1", "many", "medium",
                "few", "ece", "mean_per_class", "group_sizes_many", "train_seconds", "images_per_second",
                "device", "path", "status"):
        assert col in df.columns, col
    assert set(df["name"]) == {"tau1", "default"}
    assert df["few"].isna().all()
    with pytest.warns(UserWarning):
        assert len(R.collect(suite)) == 4  # a directory is searched recursively
    with pytest.warns(UserWarning):
        both = R.collect([suite, str(suite / "*")])  # the same runs twice are counted once
    assert len(both) == 4
    assert len(R.collect(suite, include_incomplete=True)) == 5


def test_name_from_results_wins():
    assert R.run_name(fake_results(run_id="d-m-x-s0", dataset="d", method="m", name="given")) == "given"
    assert R.run_name(fake_results(run_id="d-m-a-b-s3", dataset="d", method="m", seed=3)) == "a-b"


def test_summary_table_mean_std_by_hand(suite):
    with pytest.warns(UserWarning):
        df = R.collect(suite)
    table = R.summary_table(df)
    la = table[table["method"] == "la_loss"].iloc[0]
    # top-1 70, 72, 77: mean 73.0; std (ddof=1) = sqrt((9 + 1 + 16)/2) = sqrt(13) = 3.606
    assert la["top1"] == "73.0 ± 3.6"
    assert la["many"] == "81.0 ± 1.0"  # 80, 81, 82
    assert la["few"] == "–"  # empty group in every seed
    assert la["n_seeds"] == 3
    erm = table[table["method"] == "erm"].iloc[0]
    assert erm["top1"] == "60.0" and erm["n_seeds"] == 1  # one seed: the mean only
    num = R.summary_numeric(df)
    assert num.loc[num["method"] == "la_loss", "top1"].item() == pytest.approx(73.0)
    assert num.loc[num["method"] == "la_loss", "top1_std"].item() == pytest.approx(math.sqrt(13))


def test_write_tables(suite, tmp_path):
    with pytest.warns(UserWarning):
        df = R.collect(suite)
    table, num = R.summary_table(df), R.summary_numeric(df)
    published = pd.DataFrame({"method": ["LDAM-DRW"], "many": [61.5], "medium": [41.7], "few": [np.nan],
                              "top1": [42.0]})
    paths = R.write_tables(table, num, tmp_path / "tables", "tab1", "CIFAR-100-LT, IR 100.", "tab:c100",
                           published=published)
    tex = paths["tex"].read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert "Many & Medium & Few & All" in tex
    la_line = next(line for line in tex.splitlines() if line.startswith(r"la\_loss"))
    assert r"\bfseries 73.0\,{\scriptsize$\pm$3.6}" in la_line  # best All (std in a smaller font)
    erm_line = next(line for line in tex.splitlines() if line.startswith("erm"))
    assert r"\bfseries 85.0" in erm_line  # best Many
    pub_line = next(line for line in tex.splitlines() if "(published)" in line)
    assert "--" in pub_line and r"\bfseries 61.5" not in pub_line
    assert tex.count(r"\midrule") == 2  # header rule + the rule before published rows
    md = paths["md"].read_text()
    assert "**73.0 ± 3.6**" in md and "LDAM-DRW (published)" in md
    csv = pd.read_csv(paths["csv"])
    assert set(csv["source"]) == {"ours", "published"}


def test_published_label_lands_in_the_column_that_names_our_rows(tmp_path):
    # our rows differ only by run name (one method), so the table shows a Name column: the published
    # row's label must appear there, not in the hidden Method column
    df = pd.DataFrame({"dataset": ["c10"] * 2, "method": ["erm"] * 2, "name": ["ir100", "ir10"],
                       "seed": [0, 0], "top1": [70.0, 86.0]})
    numeric = R.summary_numeric(df, metrics=("top1",))
    shown = R.summary_table(df, metrics=("top1",))
    published = pd.DataFrame({"method": ["CE, LDAM-DRW paper"], "top1": [70.36]})
    paths = R.write_tables(shown, numeric, tmp_path, "t", "cap", "tab:t", published=published)
    md = paths["md"].read_text()
    row = next(line for line in md.splitlines() if "70.4" in line)
    assert "CE, LDAM-DRW paper (published)" in row
