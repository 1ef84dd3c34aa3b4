"""Seed packing (ltr_core.packing): M runs as one grouped network give the M lone runs."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_params
from ltr_core import engine, params
from ltr_core.config import from_params
from ltr_core.methods import erm
from ltr_core.models import build_model
from ltr_core.packing import PackingError, can_pack, pack_models, stack_inputs, train_packed, unpack_state
from ltr_core.results import RunDir

M = 3


def _members(seed: int = 0, head: str = "linear"):
    torch.manual_seed(seed)
    cfg = from_params({"model": "resnet32", "head": head})
    return [build_model(cfg.model, 10, image_size=16) for _ in range(M)]


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_packed_forward_equals_each_member_in_train_and_eval_mode():
    models = _members()
    packed = pack_models(copy.deepcopy(models))
    xs = [torch.randn(8, 3, 16, 16) for _ in range(M)]
    out = packed(stack_inputs(xs))  # train mode: batch statistics per member
    assert out.shape == (8, M, 10)
    for m, model in enumerate(models):
        _close(out[:, m], model(xs[m]))
    packed.eval()
    out = packed(stack_inputs(xs))  # eval mode: the running statistics the train pass updated
    for m, model in enumerate(models):
        _close(out[:, m], model.eval()(xs[m]))


def test_one_optimizer_over_the_packed_net_equals_separate_sgd_steps():
    # float64: the algebra alone (in float32 a pre-activation within rounding of 0 can flip a ReLU, and
    # grouped and plain convolutions round differently)
    models = [m.double() for m in _members(1)]
    packed = pack_models(copy.deepcopy(models))
    optim_cfg = from_params({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                             "weight_decay": 5e-4}).optim
    opt_packed = engine.build_optimizer(packed.parameters(), optim_cfg)
    opts = [engine.build_optimizer(m.parameters(), optim_cfg) for m in models]
    loss = torch.nn.functional.cross_entropy
    for _ in range(2):  # the second step uses the momentum buffers
        xs = [torch.randn(8, 3, 16, 16, dtype=torch.float64) for _ in range(M)]
        ys = [torch.randint(0, 10, (8,)) for _ in range(M)]
        out = packed(stack_inputs(xs))
        sum(loss(out[:, m], ys[m]) for m in range(M)).backward()
        opt_packed.step()
        opt_packed.zero_grad()
        for model, opt, x, y in zip(models, opts, xs, ys):
            loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    for state, model in zip(unpack_state(packed, M), models):
        for key, value in model.state_dict().items():
            _close(state[key], value)


def test_unpack_state_round_trips_names_and_values():
    models = _members(2, head="cosine")
    states = unpack_state(pack_models(models), M)
    for state, model in zip(states, models):
        own = model.state_dict()
        assert list(state) == list(own)  # the lone run's key names, in its order
        for key in own:
            assert torch.equal(state[key], own[key]), key
        fresh = copy.deepcopy(model)
        fresh.load_state_dict(state)  # strict: loads into a lone model


# ---------------------------------------------------------------------------------------------- whole runs


def _group(root):
    """params/digits_lt/ce.yaml for 2 epochs: two CE seeds and an LDAM-DRW member (cosine head, DRW from
    epoch 1) on one ResNet-32 backbone, resolved as `ltr run ... --set` resolves them."""
    common = {"epochs": 2, "eval_every": 1, "device": "cpu", "tensorboard": False, "results_root": str(root),
              "cache_dir": str(root / "cache")}
    members = [{"seed": 0}, {"seed": 1}, {"seed": 0, "name": "ldam", "loss": "ldam_drw", "drw_epoch": 1,
                                          "head": "cosine", "cosine_scale": 1.0}]
    return [params.resolve(REPO / "params/digits_lt/ce.yaml", {**common, **m})[1] for m in members]


def test_packed_runs_equal_the_lone_runs(tmp_path):
    lone_cfgs, packed_cfgs = _group(tmp_path / "lone"), _group(tmp_path / "packed")
    assert can_pack(packed_cfgs) is None
    lone = [erm.run(cfg) for cfg in lone_cfgs]
    packed = train_packed(packed_cfgs)
    for cfg_l, cfg_p, res_l, res_p in zip(lone_cfgs, packed_cfgs, lone, packed):
        assert res_p["run_id"] == res_l["run_id"] and res_p["config_hash"] == res_l["config_hash"]
        assert res_p["packed_with"] == [c.run_id for c in packed_cfgs if c is not cfg_p]
        assert res_p["inputs"] == res_l["inputs"] and res_p["numerics"] == res_l["numerics"]
        on_disk = json.loads((cfg_p.run_path() / "results.json").read_text())
        assert on_disk["packed_with"] == res_p["packed_with"] and on_disk["status"] == "complete"
        z_l, z_p = RunDir(cfg_l.run_path()).load_logits(), RunDir(cfg_p.run_path()).load_logits()
        np.testing.assert_allclose(z_p["logits"], z_l["logits"], atol=1e-3, rtol=1e-4)
        np.testing.assert_array_equal(z_p["labels"], z_l["labels"])
        ties = np.sort(z_l["logits"], axis=1)[:, -2:]
        if not np.any(ties[:, 1] - ties[:, 0] < 1e-3):  # no near-tie that float rounding could flip
            assert res_p["metrics"]["top1"] == res_l["metrics"]["top1"]
            assert res_p["per_class"] == res_l["per_class"]
        for key in ("many", "medium", "few", "ece"):
            assert res_p["metrics"][key] == pytest.approx(res_l["metrics"][key], abs=0.5), key
        assert res_p["class_counts"] == res_l["class_counts"] and res_p["shot_groups"] == res_l["shot_groups"]
        w_l, w_p = load_file(cfg_l.run_path() / "model.safetensors"), load_file(cfg_p.run_path() / "model.safetensors")
        assert list(w_p) == list(w_l)
        for key in w_l:
            np.testing.assert_allclose(w_p[key].float().numpy(), w_l[key].float().numpy(), atol=1e-3, rtol=1e-3)
        rec_l, rec_p = RunDir(cfg_l.run_path()).read_metrics(), RunDir(cfg_p.run_path()).read_metrics()
        assert [r["epoch"] for r in rec_p] == [r["epoch"] for r in rec_l] == [0, 1]
        for a, b in zip(rec_l, rec_p):
            assert set(a) == set(b) and b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-5)
            assert b["lr"] == a["lr"]
    # complete members are skipped, as lone runs are
    again = train_packed(packed_cfgs)
    assert [r["finished_at"] for r in again] == [r["finished_at"] for r in packed]


# ---------------------------------------------------------------------------------------------- refusals


def test_can_pack_refuses_with_a_readable_reason(tmp_path):
    base = tiny_params(tmp_path)
    seeds = [from_params({**base, "seed": s}) for s in range(2)]
    assert can_pack(seeds) is None
    vit = [from_params({**base, "seed": s, "model": "vit_tiny_patch16_224"}) for s in range(2)]
    assert "vit_tiny_patch16_224" in can_pack(vit) and "ResNet-32" in can_pack(vit)
    sched = [seeds[0], from_params({**base, "seed": 1, "schedule": "step"})]
    assert "differ in schedule" in can_pack(sched)
    clip = [from_params({**base, "seed": s, "grad_clip": 1.0}) for s in range(2)]
    assert "grad_clip" in can_pack(clip)
    assert "fewer than two" in can_pack(seeds[:1])
    with pytest.raises(PackingError, match="differ in schedule"):
        train_packed(sched)


def test_pack_models_refuses_a_timm_vit():
    cfg = from_params({"model": "vit_tiny_patch16_224"})
    vits = [build_model(cfg.model, 10, image_size=32) for _ in range(2)]
    with pytest.raises(PackingError, match="VisionTransformer cannot be packed"):
        pack_models(vits)
    dropped = [build_model(from_params({"model": "resnet32", "drop_rate": 0.1}).model, 10, image_size=32)]
    with pytest.raises(PackingError, match="dropout"):
        pack_models(dropped)
