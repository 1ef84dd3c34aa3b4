"""Decoupling (cRT, LWS, τ-norm, post-hoc LA, NCM) on a frozen stage-1 run, and the IR-pivot table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_params
from ltr_core import collect, plots, report, results, runner, stages
from ltr_core.config import ConfigError, from_params
from ltr_core.methods import decouple, get_method
from ltr_core.models.heads import LinearHead, LWSHead, tau_normalized


# -- formulas ---------------------------------------------------------------------------------------


def test_tau_norm_is_its_formula_at_tau_0_and_1():
    g = torch.Generator().manual_seed(0)
    f, w = torch.randn(7, 5, generator=g), torch.randn(4, 5, generator=g) * 3
    assert torch.allclose(decouple.tau_norm_logits(f, w, 0.0), f @ w.T)  # the joint classifier without bias
    unit = torch.stack([row / math.sqrt(float((row ** 2).sum())) for row in w])
    assert torch.allclose(decouple.tau_norm_logits(f, w, 1.0), f @ unit.T, atol=1e-6)
    assert torch.allclose(tau_normalized(w, 1.0).norm(dim=1), torch.ones(4))
    half = torch.stack([row / float((row ** 2).sum()) ** 0.25 for row in w])
    assert torch.allclose(decouple.tau_norm_logits(f, w, 0.5), f @ half.T, atol=1e-6)


def test_lws_with_unit_scale_equals_the_stage1_logits_and_trains_only_g():
    base = LinearHead(5, 3)
    f = torch.randn(6, 5)
    head = LWSHead(base, 3)
    assert torch.equal(head(f), base(f))
    assert [n for n, p in head.named_parameters() if p.requires_grad] == ["scale"]
    with torch.no_grad():
        head.scale.copy_(torch.tensor([2.0, 0.5, -1.0]))
    assert torch.allclose(head(f), base(f) * torch.tensor([2.0, 0.5, -1.0]))  # g multiplies the bias too


def test_posthoc_la_shifts_logits_by_tau_log_prior():
    counts = np.array([500, 120, 30, 4])
    z = torch.randn(8, 4)
    for tau in (0.0, 0.5, 1.0, 2.0):
        shift = decouple.posthoc_la_logits(z, counts, tau) - z
        expected = torch.tensor([-tau * math.log(n / counts.sum()) for n in counts], dtype=torch.float32)
        assert torch.allclose(shift, expected.expand_as(shift), atol=1e-5)
    with pytest.raises(ValueError, match="n_c >= 1"):
        decouple.posthoc_la_logits(z, np.array([5, 0, 3, 1]), 1.0)


def test_ncm_class_means_and_cosine():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 1])
    means = decouple.class_means(f, y, 2)
    assert torch.allclose(means, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    mean0, cos_means = decouple.ncm_centroids(f, y, 2, "cosine")
    assert torch.allclose(cos_means, means) and not mean0.any()
    assert torch.allclose(decouple.ncm_logits(torch.tensor([[1.0, 1.0]]), means, "cosine"),
                          torch.tensor([[0.5 ** 0.5] * 2]))
    with pytest.raises(ValueError, match="no training feature"):
        decouple.class_means(f, y, 3)
    with pytest.raises(ValueError, match="ncm_metric"):
        decouple.ncm_centroids(f, y, 2, "l1")


def test_ncm_cl2n_l2_by_hand():
    """classifier-balancing NCM (feat_type cl2n, dist_type l2) on 2-D points, computed by hand.

    Train f = (2,0), (4,0), (0,3) with y = 0, 0, 1: mu = (2, 1); centred (0,-1), (2,-1), (-2,2);
    normalised (0,-1), (2,-1)/√5, (-1,1)/√2; c_0 = ((2/√5)/2, (-1 - 1/√5)/2), c_1 = (-1/√2, 1/√2).
    Test f = (3, 1): x̂ = (1, 0); z_c = -‖x̂ - c_c‖².
    """
    f = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1])
    mean, centroids = decouple.ncm_centroids(f, y, 2)  # default metric cl2n_l2
    r5, r2 = math.sqrt(5.0), math.sqrt(2.0)
    c0 = (1 / r5, (-1 - 1 / r5) / 2)
    c1 = (-1 / r2, 1 / r2)
    assert torch.allclose(mean, torch.tensor([2.0, 1.0]))
    assert torch.allclose(centroids, torch.tensor([c0, c1]), atol=1e-6)
    z = decouple.ncm_logits(torch.tensor([[3.0, 1.0]]), centroids, "cl2n_l2", mean)
    hand = [-((1 - c0[0]) ** 2 + c0[1] ** 2), -((1 - c1[0]) ** 2 + c1[1] ** 2)]
    assert torch.allclose(z, torch.tensor([hand]), atol=1e-6)
    # the centroids are means of normalised features, not re-normalised (|c_0| < 1)
    assert float(centroids[0].norm()) < 0.99
    head = decouple.NCMHead(centroids, mean)
    assert torch.allclose(head(torch.tensor([[3.0, 1.0]])), z)
    assert set(head.state_dict()) == {"centroids", "feature_mean"}
    assert from_params({"method": "decouple"}).decouple.ncm_metric == "cl2n_l2"


def test_epoch_lr_schedule_pre_and_post_epoch(tmp_path):
    base = tiny_params(tmp_path, method="decouple", init_run="x", epochs=4, schedule="cosine", warmup_epochs=0.0)
    post = decouple.epoch_lr_schedule(from_params({**base, "decouple_scheduler_step": "post_epoch"}))
    pre = decouple.epoch_lr_schedule(from_params({**base, "decouple_scheduler_step": "pre_epoch"}))
    cos = [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(5)]
    assert [post(e, 0.5) for e in range(4)] == pytest.approx(cos[:4])  # constant within an epoch, starts at 1
    assert [pre(e, 0.9) for e in range(4)] == pytest.approx(cos[1:])  # classifier-balancing: last epoch lr 0
    assert pre(3, 0.1) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="warm-up"):
        decouple.epoch_lr_schedule(from_params({**base, "warmup_epochs": 1.0}))


# -- stage 2 on a tiny stage-1 run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decouple")
    cfg = from_params(tiny_params(tmp, suite="d", name="ce", epochs=2))
    get_method("erm").run(cfg)
    return cfg


def stage2(stage1, name, **overrides):
    tmp = Path(stage1.run.results_root).parent  # tiny_params puts results and the data cache under it
    params = {**tiny_params(tmp), "suite": "d", "method": "decouple", "name": name,
              "init_run": "digits_lt-erm-ce-s{seed}", "sampler": "class_aware", "warmup_epochs": 0.0, "epochs": 2,
              "decouple_tau_grid": [0.0, 0.5, 1.0, 1.5, 2.0], **overrides}
    cfg = from_params(params)
    return cfg, get_method("decouple").run(cfg)


def backbone_state(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("backbone.")}


def test_crt_trains_only_the_classifier(stage1):
    before = backbone_state(stage1.run_path() / "model.safetensors")
    head1 = load_file(str(stage1.run_path() / "model.safetensors"))["head.weight"]
    cfg, res = stage2(stage1, "crt_eval", decouple_mode="crt", crt_bn_mode="eval")
    after = backbone_state(cfg.run_path() / "model.safetensors")
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert not torch.equal(load_file(str(cfg.run_path() / "model.safetensors"))["head.weight"], head1)
    assert res["trainable_parameters"] == 64 * 10 + 10 and res["variant"].startswith("online")
    # BN in train mode (classifier-balancing): weights stay, only the BN running statistics move
    cfg, res = stage2(stage1, "crt_train", decouple_mode="crt", crt_bn_mode="train")
    after = backbone_state(cfg.run_path() / "model.safetensors")
    stats = [k for k in before if "running" in k or "num_batches" in k]
    assert all(torch.equal(before[k], after[k]) for k in before if k not in stats)
    assert any(not torch.equal(before[k], after[k]) for k in stats)


def test_posthoc_la_at_tau_0_reproduces_stage1_and_records_the_sweep(stage1):
    res1 = results.RunDir(stage1.run_path()).read_results()
    cfg, res = stage2(stage1, "la0", decouple_mode="posthoc_la", decouple_tau=0.0)
    assert res["metrics"]["top1"] == pytest.approx(res1["metrics"]["top1"])  # cached features == stage-1 logits
    assert res["per_class"] == pytest.approx(res1["per_class"], nan_ok=True)
    cache = list((stage1.run_path() / "features").glob("*.json"))
    assert cache and "backbone_weights" in json.loads(cache[0].read_text())
    cfg, res = stage2(stage1, "la1", decouple_mode="posthoc_la", decouple_tau=1.0)
    assert res["tau"] == 1.0 and res["tau_selection"] == "fixed" and res["epochs"] == 0
    sweep = res["tau_sweep"]
    assert sweep["tau"] == [0.0, 0.5, 1.0, 1.5, 2.0] and len(sweep["test"]["few"]) == 5
    assert sweep["test"]["top1"][2] == pytest.approx(res["metrics"]["top1"])
    w1 = load_file(str(stage1.run_path() / "model.safetensors"))
    w2 = load_file(str(cfg.run_path() / "model.safetensors"))  # the saved head is the adjusted classifier
    prior = torch.tensor(res["class_counts"], dtype=torch.float64)
    assert torch.allclose(w2["head.bias"], w1["head.bias"] - (prior / prior.sum()).log().float(), atol=1e-5)


def test_tau_norm_oracle_without_val_and_saved_head(stage1):
    cfg, res = stage2(stage1, "tn", decouple_mode="tau_norm")
    sweep = res["tau_sweep"]["test"]["mean_per_class"]
    assert res["tau_selection"].startswith("oracle") and "oracle" in res["selection"]
    assert sweep[res["tau_sweep"]["tau"].index(res["tau"])] == max(sweep)
    w1 = load_file(str(stage1.run_path() / "model.safetensors"))["head.weight"]
    w2 = load_file(str(cfg.run_path() / "model.safetensors"))
    assert torch.allclose(w2["head.weight"], tau_normalized(w1, res["tau"])) and not w2["head.bias"].any()


def test_cached_variant_is_labelled_and_lws_ncm_run(stage1):
    cfg, res = stage2(stage1, "crt_c", decouple_mode="crt", crt_features="cached")
    assert res["name"] == "crt_c [cached features]" and res["variant"].startswith("cached")
    cfg, res = stage2(stage1, "lws", decouple_mode="lws", crt_features="cached")
    assert len(res["lws_scale"]) == 10 and res["trainable_parameters"] == 10
    cfg, res = stage2(stage1, "ncm", decouple_mode="ncm")
    assert 0 <= res["metrics"]["top1"] <= 100 and res["ncm_metric"] == "cl2n_l2"
    cfg, res = stage2(stage1, "ncm_cos", decouple_mode="ncm", ncm_metric="cosine")
    assert 0 <= res["metrics"]["top1"] <= 100 and res["ncm_metric"] == "cosine"
    names = set(results.collect(stage1.run_path().parent)["name"])
    assert {"crt_c [cached features]", "lws [cached features]", "ncm", "ce"} <= names


def test_stage1_mismatch_and_missing_init_run_are_clear_errors(stage1):
    with pytest.raises(stages.StageError, match="imbalance_ratio"):
        stage2(stage1, "bad", decouple_mode="ncm", imbalance_ratio=10.0)
    with pytest.raises(ConfigError, match="needs init_run"):
        stage2(stage1, "none", decouple_mode="ncm", init_run="")


# -- the notebook under papermill ------------------------------------------------------------------


def test_decouple_notebook_runs_from_a_stage1_run(tmp_path):
    ov = {"results_root": str(tmp_path / "r"), "figures_dir": str(tmp_path / "f"), "cache_dir": str(tmp_path / "c"),
          "suite": "nb"}
    assert runner.run_params("params/smoke/digits_ce.yaml", ov).status == "complete"
    out = runner.run_params("params/smoke/digits_tau_norm.yaml", ov)
    assert out.status == "complete", out.error
    res = json.loads((out.run_dir / "results.json").read_text())
    assert res["method"] == "decouple" and res["stage1"]["run_id"] == "digits_lt-erm-digits_ce-s0"
    assert res["tau_sweep"]["tau"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert (out.run_dir / "tau_sweep.png").stat().st_size > 1000 and (out.run_dir / "tau_sweep.pdf").is_file()
    assert (out.run_dir / "notebook.ipynb").is_file()


# -- the IR-pivot table -----------------------------------------------------------------------------


def fake_run(root, dataset, method, name, ir, seed, top1, many=None, few=None, tau_sweep=None):
    rid = f"{dataset}-{method}-{name}-s{seed}"
    rd = results.RunDir(root / rid)
    rd.write_config({"imbalance_ratio": float(ir), "dataset": dataset}, "h", rid)
    res = {"run_id": rid, "name": name, "dataset": dataset, "method": method, "seed": seed, "config_hash": "h",
           "metrics": {"top1": top1, "many": many, "medium": 50.0, "few": few, "ece": 1.0},
           "class_counts": [500, 50, 5], "per_class": [80.0, 50.0, 10.0],
           "shot_groups": {"many": [0], "medium": [1], "few": [2]}, "train_seconds": 1.0,
           "images_per_second": 1.0, "device": "cpu", "versions": {"python": "3", "torch": "2", "ltr_core": "x"},
           "status": "complete", "eval_split": "test"}
    if tau_sweep:
        res.update(tau_sweep=tau_sweep, tau=1.0, tau_selection="oracle (best on test)", decouple_mode="tau_norm")
    rd.write_results(res)


def test_ir_pivot_table_renders_with_published_rows(tmp_path):
    root = tmp_path / "results" / "piv"
    sweep = {"tau": [0.0, 1.0, 2.0], "test": {"top1": [40.0, 50.0, 45.0], "many": [80.0, 70.0, 60.0],
                                              "medium": [30.0, 45.0, 50.0], "few": [None, None, None]}}
    for seed, delta in ((0, 0.0), (1, 2.0)):
        for ir, base in ((100, 40.0), (10, 60.0)):
            fake_run(root, "cifar100_lt", "erm", f"ce_ir{ir}", ir, seed, base + delta, many=70.0, few=10.0 + delta)
            fake_run(root, "cifar100_lt", "decouple", f"tau_norm_ir{ir}", ir, seed, base + 5 + delta, many=65.0,
                     tau_sweep=sweep)
    published = [{"dataset": "cifar100_lt", "method": "CE, paper", "imbalance_ratio": 100, "top1": 38.3},
                 {"dataset": "cifar100_lt", "method": "CE, paper", "imbalance_ratio": 10, "top1": 55.7}]
    suite = runner.Suite(name="piv", path=tmp_path / "s.yaml", report={
        "columns_by": "imbalance_ratio", "metrics": ["many", "medium", "few", "top1"], "published": published,
        "row_labels": {"tau_norm": "τ-norm (oracle τ)", "ce": "CE"}})
    out = report.build_suite_report(suite, tmp_path / "results", tmp_path / "figs",
                                    runs=collect.folder_expected_runs(root))  # the suite lists no params files
    md = (tmp_path / "figs" / "summary.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert "IR 100 Many" in lines[0] and "IR 10 All" in lines[0]
    assert lines[0].index("IR 100") < lines[0].index("IR 10 ")  # blocks by decreasing IR
    tau_row = next(line for line in lines if "τ-norm" in line)
    ce_row = next(line for line in lines if line.startswith("| CE ") and "published" not in line)
    assert lines.index(tau_row) < lines.index(ce_row)  # row_labels give the order
    assert "46.0 ± 1.4" in tau_row and "**66.0 ± 1.4**" in tau_row  # IR 100 and IR 10 all, mean ± std (ddof 1)
    assert "41.0 ± 1.4" in ce_row and "11.0 ± 1.4" in ce_row  # few of CE at IR 100
    pub = next(line for line in lines if "(published)" in line)
    assert "CE, paper (published)" in pub and "38.3" in pub and "55.7" in pub
    assert lines[0].count("Few") == 2  # the few column exists (CE has it) for both blocks
    tex = (tmp_path / "figs" / "summary_cifar100_lt.tex").read_text()
    assert r"\multicolumn{4}{c}{IR 100}" in tex and r"\bfseries" in tex and tex.count(r"\midrule") == 2
    csv = (tmp_path / "figs" / "summary.csv").read_text()
    assert "published" in csv and "IR 100|top1" in csv
    assert (tmp_path / "figs" / "summary_by_run.md").is_file()
    assert (tmp_path / "figs" / "posthoc_cifar100_lt_tau_norm_ir100.png").is_file()
    assert set(out["summary"].index.get_level_values("dataset")) == {"cifar100_lt"}
    with pytest.raises(ValueError, match="needs 'method' and 'imbalance_ratio'"):
        report.pivot_tables(results.collect(root), "imbalance_ratio", published=[{"method": "x", "top1": 1.0}])


def test_pivot_row_key_strips_only_the_column_token():
    assert report.pivot_row_key("ce_ir100", "imbalance_ratio", 100.0) == "ce"
    assert report.pivot_row_key("crt_ir10 [cached features]", "imbalance_ratio", 10) == "crt [cached features]"
    assert report.pivot_row_key("crt_ir100_short", "imbalance_ratio", 100.0) == "crt_short"
    assert report.pivot_row_key("ce_ir100", "imbalance_ratio", 10.0) == "ce_ir100"  # ir10 is not ir100
    assert report.pivot_row_key("ir50", "imbalance_ratio", 50.0) == "ir50"


def test_posthoc_sweep_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    plots.set_style()
    sweep = {"tau": [0.0, 1.0, 2.0], "test": {"top1": [40.0, 50.0, 45.0], "many": [80.0, 70.0, 60.0],
                                              "medium": [30.0, 45.0, 50.0], "few": [None, None, None]}}
    fig = plots.plot_posthoc_sweep([sweep, sweep], chosen=1.0, label="oracle", knob="tau_norm")
    labels = [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labels == ["Many", "Medium", "All"]  # the empty few group is not drawn
    colors = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
    assert colors["Many"] == plots.GROUP_COLORS["many"] and colors["All"] == plots.GROUP_COLORS["all"]
    paths = plots.save(fig, tmp_path, "sweep")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    with pytest.raises(ValueError, match="no split 'val'"):
        plots.plot_posthoc_sweep(sweep, "val")


def test_engine_lr_schedule_hook_and_feature_loader(tmp_path):
    from ltr_core import engine
    from ltr_core.data.samplers import build_sampler
    from ltr_core.features import FeatureLoader

    cfg = from_params(tiny_params(tmp_path, method="decouple", init_run="x", epochs=3, schedule="cosine",
                                  warmup_epochs=0.0, decouple_scheduler_step="pre_epoch", max_steps_per_epoch=0))
    feats, labels = torch.randn(40, 6), torch.arange(40) % 4
    sampler = build_sampler("class_aware", labels, seed=0)
    loader = FeatureLoader(feats, labels, batch_size=16, sampler=sampler)
    assert len(loader) == 3 and sum(len(y) for _, y in loader) == 40
    loader.set_epoch(1)
    first = torch.cat([y for _, y in loader])
    assert torch.equal(first, labels[sampler.indices(1)])  # the sampler's order of that epoch
    head = torch.nn.Linear(6, 4)
    rd = results.RunDir(tmp_path / "run")
    fit = engine.fit(head, torch.nn.CrossEntropyLoss(), loader, cfg=cfg, run_dir=rd, device=torch.device("cpu"),
                     lr_schedule=decouple.epoch_lr_schedule(cfg))
    lrs = [r["lr"] for r in rd.read_metrics()]
    assert lrs == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in (1, 2, 3)], abs=1e-9)
    assert fit.epochs_run == 3
