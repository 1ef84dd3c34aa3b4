"""Multi-stage plumbing: finding earlier runs, loading their weights, stage dirs, feature caches, hooks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import tiny_params
from ltr_core import engine, features, stages
from ltr_core.config import from_params
from ltr_core.methods import get_method
from ltr_core.results import RunDir, collect


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s1")
    cfg = from_params(tiny_params(tmp, suite="s", name="base", epochs=1))
    get_method("erm").run(cfg)
    return cfg


def test_resolve_run_by_id_seed_template_and_path(stage1, tmp_path):
    cfg = from_params({**tiny_params(tmp_path), "results_root": stage1.run.results_root, "suite": "s",
                       "seed": 0})
    by_id = stages.resolve_run("digits_lt-erm-base-s{seed}", cfg)
    assert by_id.path == stage1.run_path()
    assert stages.resolve_run(str(stage1.run_path()), cfg).path == stage1.run_path()
    other_suite = from_params({**tiny_params(tmp_path), "results_root": stage1.run.results_root, "suite": "t"})
    assert stages.resolve_run("digits_lt-erm-base-s0", other_suite).path == stage1.run_path()
    with pytest.raises(stages.StageError, match="run the earlier stage first"):
        stages.resolve_run("digits_lt-erm-base-s{seed}", from_params({**tiny_params(tmp_path), "seed": 7}))
    assert stages.require_complete(by_id)["status"] == "complete"
    assert stages.load_run_config(by_id) == stage1


def test_load_weights_prefix_skip_and_shape_errors(stage1):
    from ltr_core.data import build_data
    from ltr_core.methods.erm import build

    data = build_data(stage1.data)
    fresh, _ = build(stage1, data)
    path = stage1.run_path() / "model.safetensors"
    stages.load_weights(fresh.backbone, path, prefix="backbone.")
    saved = RunDir(stage1.run_path())
    from safetensors.torch import load_file

    state = load_file(str(saved.model_path))
    assert torch.equal(fresh.backbone.conv1.weight, state["backbone.conv1.weight"])
    before = fresh.head.weight.clone()
    report = stages.load_weights(fresh, path, skip=("head.",))
    assert torch.equal(fresh.head.weight, before) and report["missing"] == []
    wrong = nn.Linear(64, 3)
    with pytest.raises(stages.StageError, match="does not fit"):
        stages.load_weights(wrong, path, prefix="head.")


def test_stage_results_are_left_out_of_tables(stage1, tmp_path):
    cfg = from_params(tiny_params(tmp_path, suite="m", name="two", epochs=1))
    s1 = stages.stage_config(cfg, "stage1", epochs=1)
    assert s1.run_path() == cfg.run_path() / "stage1"
    from ltr_core.methods.erm import build
    from ltr_core.study import run_supervised

    run_supervised(s1, build, stage="stage1")
    suite = cfg.run_path().parent
    assert collect(suite).empty
    rows = collect(suite, include_stages=True)
    assert list(rows["stage"]) == ["stage1"]


def test_cached_features_compute_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"features": torch.arange(6.0).view(3, 2), "labels": torch.tensor([0, 1, 1])}

    desc = {"model": "m", "split": "train", "weights": "abc"}
    a = features.cached_features(tmp_path, "train", desc, compute)
    b = features.cached_features(tmp_path, "train", desc, compute)
    c = features.cached_features(tmp_path, "train", {**desc, "split": "test"}, compute)
    assert len(calls) == 2 and torch.equal(a["features"], b["features"]) and torch.equal(a["labels"], c["labels"])
    m = nn.Linear(2, 2)
    d1 = features.weights_digest(m)
    with torch.no_grad():
        m.weight[0, 0] += 1
    assert features.weights_digest(m) != d1


def test_optimizer_param_groups_and_frozen_parts():
    cfg = from_params({"lr": 0.1, "weight_decay": 1e-4})
    a, b, frozen = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
    frozen.requires_grad_(False)
    opt = engine.build_optimizer([{"params": a.parameters(), "lr": 0.01},
                                  {"params": b.parameters(), "weight_decay": 0.0},
                                  {"params": frozen.parameters()}], cfg.optim)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_batch_transform_hook_sees_every_batch(tmp_path):
    cfg = from_params(tiny_params(tmp_path, epochs=1))
    from ltr_core.data import build_data, make_loader
    from ltr_core.methods.erm import build

    data = build_data(cfg.data)
    model, crit = build(cfg, data)
    loader = make_loader(data, "train", train=True, batch_size=32, device="cpu")
    seen = []

    def soft(x, y):
        seen.append(x.shape[0])
        return x, torch.nn.functional.one_hot(y, 10).float()  # CE accepts class probabilities

    opt = engine.build_optimizer(model.parameters(), cfg.optim)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    loss, images = engine.train_one_epoch(model, crit, loader, opt, cfg=cfg, epoch=0, device=torch.device("cpu"),
                                          channels_last=False, batch_transform=soft)
    assert len(seen) == 4 and images == sum(seen)
