"""OLTR (methods.md §3): stage-2 modules against their formulas, the centroid loss and its hand-written
backward, stage 1 -> 2 wiring (init_run, weight loading, centroids, resume), and the notebook under papermill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_params
from ltr_core import engine, metrics, report, runner, stages
from ltr_core.config import ConfigError, from_params
from ltr_core.data import build_data, make_loader
from ltr_core.methods import get_method
from ltr_core.methods import oltr as oltr_method
from ltr_core.models import build_backbone, resnet32
from ltr_core.models.oltr import (CosNormClassifier, MetaEmbedding, ModulatedAttention, OLTRError, OLTRLoss,
                                  OLTRModel, OLTROutput, attract_loss, discriminative_centroid_loss,
                                  probe_map_size, repel_loss)
from ltr_core.results import RunDir

# ----------------------------------------------------------------------------- modulated attention


@pytest.mark.parametrize("size", [(2, 2), (7, 7), (8, 8), (4, 6)])
def test_attention_is_identity_at_init_for_any_map_size(size):
    torch.manual_seed(0)
    att = ModulatedAttention(16, size)
    x = torch.randn(3, 16, *size, requires_grad=True)
    y = att(x)
    assert y.shape == x.shape and torch.equal(y, x)
    (y * torch.randn_like(y)).sum().backward()
    # W_z = 0: only W_z gets a gradient at init; theta, phi, g and the spatial fc are gated by it
    assert att.out.weight.grad.abs().sum() > 0
    for p in (att.theta.weight, att.phi.weight, att.g.weight, att.spatial.weight):
        assert p.grad is None or p.grad.abs().sum() == 0


def test_attention_matches_its_formula_and_trains_everything():
    torch.manual_seed(1)
    c, h, w = 8, 3, 5
    att = ModulatedAttention(c, (h, w))
    torch.nn.init.normal_(att.out.weight)
    x = torch.randn(2, c, h, w)
    y = att(x)
    flat = x.flatten(2)  # [B, C, HW]
    t = torch.einsum("oc,bcn->bon", att.theta.weight[:, :, 0, 0], flat)
    p = torch.einsum("oc,bcn->bon", att.phi.weight[:, :, 0, 0], flat)
    g = torch.einsum("oc,bcn->bon", att.g.weight[:, :, 0, 0], flat)
    a = torch.softmax(torch.einsum("bom,bon->bmn", t, p), dim=-1)  # rows: query position m
    sa = torch.einsum("co,bon->bcn", att.out.weight[:, :, 0, 0], torch.einsum("bmn,bon->bom", a, g))
    ma = torch.softmax(x.reshape(2, -1) @ att.spatial.weight.t() + att.spatial.bias, dim=1)  # [B, HW]
    expected = (flat + ma[:, None, :] * sa).view_as(x)
    assert torch.allclose(y, expected, atol=1e-5)
    y.square().sum().backward()
    for prm in att.parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0
    with pytest.raises(OLTRError, match="same image_size"):
        att(torch.randn(1, c, h + 1, w))


def test_attention_on_real_backbone_maps():
    assert probe_map_size(resnet32(), 32) == (64, 8, 8)  # CIFAR
    assert probe_map_size(resnet32(), 8) == (64, 2, 2)  # digits
    r10 = build_backbone("resnet10")
    assert r10.num_features == 512 and probe_map_size(r10, 224) == (512, 7, 7)  # OLTR's ImageNet-LT map


# ----------------------------------------------------------------------------- meta-embedding, classifier


def test_cosnorm_classifier_formula_and_init():
    torch.manual_seed(2)
    clf = CosNormClassifier(6, 4, scale=16.0)
    assert clf.weight.abs().max() <= 1 / 6 ** 0.5
    v = torch.randn(5, 6) * torch.tensor([[0.01], [0.1], [1.0], [10.0], [100.0]])
    norm = v.norm(dim=1, keepdim=True)
    expected = 16 * norm / (1 + norm) * F.cosine_similarity(v[:, None, :], clf.weight[None], dim=2)
    assert torch.allclose(clf(v), expected, atol=1e-5)
    # squashing: a small ||v|| (far from every centroid after reachability) gives low logits / confidence
    bound = 16 * norm[:, 0] / (1 + norm[:, 0])
    assert (clf(v).abs().max(dim=1).values <= bound + 1e-6).all() and bound[0] < 0.5 and bound[-1] > 15.8


def test_meta_embedding_formula():
    torch.manual_seed(3)
    meta = MetaEmbedding(6, 4, cosine_scale=16.0, reach_scale=10.0)
    f, m = torch.randn(5, 6), torch.randn(4, 6)
    logits, v = meta(f, m)
    gamma = 10.0 / torch.cdist(f, m).min(dim=1).values
    v_mem = torch.softmax(f @ meta.hallucinator.weight.t() + meta.hallucinator.bias, dim=1) @ m
    e = torch.tanh(f @ meta.selector.weight.t() + meta.selector.bias)
    expected_v = gamma[:, None] * (f + e * v_mem)
    assert torch.allclose(v, expected_v, atol=1e-4)
    assert torch.allclose(logits, meta.classifier(expected_v), atol=1e-4) and logits.shape == (5, 4)


def test_model_output_and_ce_never_moves_the_centroids():
    torch.manual_seed(4)
    model = OLTRModel(resnet32(), 5, map_size=(2, 2), attention=True, fc_dim=12)
    model.centroids.data.normal_()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    out = model(x)
    assert isinstance(out, OLTROutput) and out.logits.shape == (6, 5) and out.direct.shape == (6, 12)
    assert out.centroids is model.centroids
    F.cross_entropy(out.logits, y).backward()
    assert model.centroids.grad is None  # the classifier sees a detached memory
    assert model.meta.hallucinator.weight.grad is not None and model.backbone.conv1.weight.grad is not None
    OLTRLoss()(model(x), y).backward()
    assert model.centroids.grad.abs().sum() > 0
    model.eval()
    assert model(x).shape == (6, 5)
    with pytest.raises(OLTRError, match="training mode"):
        OLTRLoss()(model(x), y)


# ----------------------------------------------------------------------------- the centroid loss


def test_centroid_loss_value_and_hand_written_gradients():
    torch.manual_seed(5)
    b, c, d = 7, 4, 3
    f = torch.randn(b, d, requires_grad=True)
    m = torch.randn(c, d, requires_grad=True)
    y = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    att = attract_loss(f, y, m)
    assert att.item() == pytest.approx(((f - m[y]) ** 2).sum().item() / (2 * b), rel=1e-6)
    (0.01 * att).backward()  # upstream gradient 0.01, as inside CE + 0.01 * centroid loss
    diff = (f - m[y]).detach()
    assert torch.allclose(f.grad, 0.01 * diff / b, atol=1e-7)
    n = torch.bincount(y, minlength=c).float()
    expected = torch.stack([(-diff[y == k]).sum(0) / (1 + n[k]) / b for k in range(c)])
    assert torch.allclose(m.grad, expected, atol=1e-6)  # NOT multiplied by 0.01 (original code)
    m.grad = None
    (0.01 * attract_loss(f, y, m, grad_scaled=True)).backward()
    assert torch.allclose(m.grad, 0.01 * expected, atol=1e-7)


def test_repel_loss_and_total_against_the_formula():
    torch.manual_seed(6)
    b, c, d = 6, 3, 4
    f = (0.3 * torch.randn(b, d)).requires_grad_()
    m = (0.3 * torch.randn(c, d)).requires_grad_()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    d2 = ((f[:, None, :] - m[None]) ** 2).sum(-1)
    mean_neg = d2.masked_fill(F.one_hot(y, c).bool(), 0).sum() / (b * c)
    assert mean_neg < 10  # the margin is active
    rep = repel_loss(f, y, m)
    assert rep.item() == pytest.approx((10 - mean_neg).item(), rel=1e-5)
    g_f, g_m = torch.autograd.grad(rep, (f, m))
    e_f, e_m = torch.autograd.grad(10 - mean_neg, (f, m))
    assert torch.allclose(g_f, e_f, atol=1e-5) and torch.allclose(g_m, e_m, atol=1e-5)
    far = repel_loss(100 * f, y, m)
    assert far.item() == 0.0
    total = discriminative_centroid_loss(f, y, m)
    assert total.item() == pytest.approx(attract_loss(f, y, m).item() + 0.01 * rep.item(), rel=1e-6)
    logits = torch.randn(b, c)
    out = OLTROutput(logits, f, 2 * f, m)
    assert OLTRLoss(0.01, "direct")(out, y).item() == pytest.approx(
        (F.cross_entropy(logits, y) + 0.01 * total).item(), rel=1e-6)
    meta = OLTRLoss(0.01, "meta")(out, y)
    assert meta.item() == pytest.approx(
        (F.cross_entropy(logits, y) + 0.01 * discriminative_centroid_loss(2 * f, y, m)).item(), rel=1e-6)


# ----------------------------------------------------------------------------- stages


def oltr_params(tmp_path, **kw):
    p = tiny_params(tmp_path, method="oltr", dataset="digits_lt_open", sampler="class_aware", epochs=1,
                    max_steps_per_epoch=2, oltr_stage1_epochs=2, oltr_stage1_milestones=[], lr_milestones=[],
                    eval_every=0, lr=0.05, oltr_stage1_lr=0.05)
    p.update(kw)
    return p


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
    """A tiny linear-head CE run on digits-LT-open: a valid OLTR stage 1 (init_run)."""
    tmp = tmp_path_factory.mktemp("ce")
    cfg = from_params(tiny_params(tmp, dataset="digits_lt_open", suite="s", name="ce", epochs=2))
    get_method("erm").run(cfg)
    return cfg


def test_stage2_from_a_ce_run_loads_weights_and_class_means(ce_run, tmp_path):
    cfg = from_params(oltr_params(tmp_path, results_root=ce_run.run.results_root, suite="s",
                                  init_run="digits_lt_open-erm-ce-s{seed}", oltr_fc_dim=0))
    data = build_data(cfg.data)
    weights, res1 = oltr_method.prepare_stage1(cfg, data)
    assert weights == RunDir(ce_run.run_path()).model_path and res1["method"] == "erm"
    model, loss = oltr_method.build_stage2(cfg, data, weights=weights)
    from safetensors.torch import load_file

    state = load_file(str(weights))
    assert torch.equal(model.meta.hallucinator.weight, state["head.weight"])
    assert torch.equal(model.meta.hallucinator.bias, state["head.bias"])
    assert torch.equal(model.backbone.conv1.weight, state["backbone.conv1.weight"])
    loader = make_loader(data, "train", train=False, batch_size=500, device="cpu")
    f, y = engine.predict(model, loader, torch.device("cpu"), fn=model.features)
    means = torch.stack([f[y == c].mean(0) for c in range(data.num_classes)])
    assert torch.allclose(model.centroids, means, atol=1e-5)
    x, yb = next(iter(make_loader(data, "test", train=False, batch_size=4, device="cpu")))
    model.eval()
    plain = get_method("erm").build(ce_run, data)[0]
    stages.load_weights(plain, weights)
    plain.eval()
    # stage 2 starts from stage 1: identity attention, so f is the stage-1 feature
    assert torch.allclose(model.features(x), plain.features(x), atol=1e-5)
    assert isinstance(loss, OLTRLoss) and loss.weight == 0.01 and loss.centroid_input == "direct"  # original code
    res = oltr_method.run(cfg, data=data)
    assert res["status"] == "complete" and res["stage1_run"] == str(ce_run.run_path())
    assert "f_measure" in res["metrics"] and res["stage1_metrics"]["top1"] == res1["metrics"]["top1"]


def test_bad_stage_settings(ce_run, tmp_path):
    with pytest.raises(ConfigError, match="needs a stage 1"):
        oltr_method.check_config(from_params(oltr_params(tmp_path, oltr_stage1_epochs=0)))
    with pytest.raises(ConfigError, match="oltr_stage1_fc=True needs oltr_fc_dim"):
        oltr_method.check_config(from_params(oltr_params(tmp_path, oltr_stage1_fc=True)))
    cfg = from_params(oltr_params(tmp_path, results_root=ce_run.run.results_root, suite="s", dataset="digits_lt",
                                  init_run=str(ce_run.run_path())))
    with pytest.raises(stages.StageError, match="same dataset and model"):
        oltr_method.prepare_stage1(cfg, build_data(cfg.data))
    cfg = from_params(oltr_params(tmp_path, init_run=str(ce_run.run_path()), oltr_fc_dim=32))
    data = build_data(cfg.data)
    with pytest.raises(stages.StageError, match="use oltr_fc_dim = 64 or 0"):
        oltr_method.build_stage2(cfg, data, weights=RunDir(ce_run.run_path()).model_path)


def test_resume_keeps_the_checkpointed_centroids(ce_run, tmp_path, monkeypatch):
    cfg = from_params(oltr_params(tmp_path, init_run=str(ce_run.run_path())))
    data = build_data(cfg.data)
    weights = RunDir(ce_run.run_path()).model_path
    from ltr_core.study import prepare_run_dir

    run_dir, chash = prepare_run_dir(cfg)
    model, _ = oltr_method.build_stage2(cfg, data, weights=weights)
    engine.Checkpoint(run_dir).save(model, torch.optim.SGD(model.parameters(), lr=0.1), {"epoch": 0, "config_hash": chash})

    def fail(*a, **k):
        raise AssertionError("centroids recomputed although the checkpoint holds them")

    monkeypatch.setattr(oltr_method, "class_centroids", fail)
    oltr_method.build_stage2(cfg, data, weights=weights)  # resuming: no centroid pass


def test_stage2_trains_attention_classifier_and_centroids_with_their_lrs(tmp_path):
    cfg = from_params(oltr_params(tmp_path, oltr_feature_lr=0.01, oltr_centroid_lr=0.02, lr=0.1,
                                  oltr_freeze_backbone=True))
    model = OLTRModel(resnet32(), 8, map_size=(2, 2))
    model.backbone.requires_grad_(False)
    opt = oltr_method.stage2_optimizer(model, cfg)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01, 0.02]
    assert opt.param_groups[2]["params"][0] is model.centroids
    feature_ids = {id(p) for p in opt.param_groups[1]["params"]}
    assert feature_ids == {id(p) for p in model.attention.parameters()}  # frozen backbone left out


# ----------------------------------------------------------------------------- the notebook


def test_oltr_notebook_stage1_stage2_closed_and_open_under_papermill(tmp_path):
    runner.ensure_kernel()
    ov = {"results_root": str(tmp_path / "results"), "figures_dir": str(tmp_path / "figures"),
          "cache_dir": str(tmp_path / "cache"), "suite": "oltr_smoke"}
    out = runner.run_params("params/smoke/digits_oltr.yaml", ov)
    assert out.status == "complete", out.error
    res = json.loads((out.run_dir / "results.json").read_text())
    s1 = json.loads((out.run_dir / "stage1" / "results.json").read_text())
    assert res["method"] == "oltr" and res["epochs"] == 2 and s1["stage"] == "stage1" and s1["epochs"] == 6
    m = res["metrics"]
    for key in ("top1", "many", "medium", "few", "f_measure", "f_measure_pre_fix", "open_many", "open_few"):
        assert key in m
    assert m["open_samples"] == 100 and res["stage1_metrics"]["f_measure"] == s1["metrics"]["f_measure"]
    z, zo = RunDir(out.run_dir).load_logits(), np.load(out.run_dir / "logits_open.npz")
    assert m["f_measure"] == pytest.approx(metrics.open_set_f_measure(z["logits"], z["labels"], zo["logits"]))
    for f in ("open_set_sweep.png", "open_set_sweep.pdf", "notebook.ipynb", "stage1/model.safetensors"):
        assert (out.run_dir / f).is_file(), f
    rep = report.build_report("oltr_smoke", tmp_path / "results", tmp_path / "figures",
                              metrics=("many", "medium", "few", "top1", "f_measure"),
                              published=[{"dataset": "digits_lt_open", "method": "OLTR (paper)", "f_measure": 44.6}])
    md = (tmp_path / "figures" / "summary.md").read_text()
    assert "| F " in md and "(published)" in md and "open-set F-measure" in md
    assert len(rep["runs"]) == 1  # the stage-1 sub-run is left out of the table
    assert (tmp_path / "figures" / "open_set_sweep_digits_lt_open.png").is_file()
