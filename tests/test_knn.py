"""The kNN family (CONTRIBUTING.md example c): the vote by hand, and `ltr run` after a tiny CE run."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from safetensors.torch import load_file

from conftest import REPO
from ltr_core import cli
from ltr_core.methods.knn import knn_logits

STANDARD_KEYS = {"run_id", "dataset", "method", "seed", "config_hash", "metrics", "class_counts", "per_class",
                 "shot_groups", "train_seconds", "images_per_second", "device", "versions"}


def test_knn_vote_by_hand():
    """Keys (1, 0) y0, (0, 1) y1, (1, 1) y1, (-1, 0) y2; k = 2, T = 0.5.
    Query (2, 0): cosines 1, 0, 1/sqrt 2, -1 -> neighbours y0 (s = 1), y1 (s = 0.7071):
    p = (e^2, e^1.4142, 0) / (e^2 + e^1.4142). Query (0, 3): neighbours y1 (1), y1 (0.7071): p = (0, 1, 0)."""
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    z = knn_logits(query, keys, labels, 3, k=2, temperature=0.5)
    a, b = math.exp(2.0), math.exp(2 * 2 ** -0.5)
    hand = torch.log(torch.tensor([[a / (a + b), b / (a + b), 0.0], [0.0, 1.0, 0.0]]) + 1e-12)
    assert torch.allclose(z, hand, atol=1e-6)
    assert torch.allclose(z.softmax(1)[0], torch.tensor([a / (a + b), b / (a + b), 0.0]), atol=1e-6)
    assert torch.equal(knn_logits(query, keys, labels, 3, k=2, temperature=0.5, chunk=1), z)  # chunked the same
    everyone = knn_logits(query, keys, labels, 3, k=99, temperature=0.5)  # k > keys: all of them vote
    assert torch.all(everyone.exp().sum(1) - 1 < 1e-5) and float(everyone[0].exp()[2]) > 0


def test_ltr_run_knn_after_a_tiny_ce_run_writes_complete_results(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    root = tmp_path / "results"
    common = ["--no-notebook", "--results-root", str(root), "--device", "cpu", "--set", "epochs=1",
              "--set", "max_steps_per_epoch=2", "--set", "tensorboard=false", "--set", f"cache_dir={tmp_path / 'cache'}"]
    assert cli.main(["run", "params/digits_lt/ce.yaml", *common]) == 0
    assert cli.main(["run", "params/digits_lt/knn.yaml", *common, "--set", "knn_tau=1.0"]) == 0
    (run,) = (root / "interactive").glob("digits_lt-knn-knn-*-s0")
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete" and STANDARD_KEYS <= set(res), STANDARD_KEYS - set(res)
    assert {"top1", "many", "medium", "few", "ece"} <= set(res["metrics"]) and len(res["per_class"]) == 10
    assert res["method"] == "knn" and (res["knn_k"], res["knn_tau"]) == (20, 1.0) and res["knn_keys"] == 383
    (ce,) = (root / "interactive").glob("digits_lt-erm-ce-*-s0")
    assert res["stage1"]["run_dir"] == str(ce) and not (run / "model.safetensors").exists()
    # the recorded logits are the formula on the stage-1 run's cached features: log p_knn - log prior
    feats = {s: load_file(str(next((ce / "features").glob(f"digits_lt-{s}-*.safetensors")))) for s in ("train", "test")}
    counts = torch.tensor(res["class_counts"], dtype=torch.float64)
    expect = knn_logits(feats["test"]["features"], feats["train"]["features"], feats["train"]["labels"], 10, 20, 0.07)
    expect = expect - (counts / counts.sum()).log().float()
    logits = np.load(run / "logits.npz")["logits"]
    assert np.allclose(logits, expect.numpy(), atol=1e-5)
    assert cli.main(["run", "params/digits_lt/knn.yaml", *common, "--set", "knn_tau=1.0"]) == 0  # complete: skipped
    assert json.loads((run / "results.json").read_text())["finished_at"] == res["finished_at"]
