"""TailCLIP with a tiny random CLIP: the scorer, the objective, whole runs (fine-tune, zero-shot, PEFT),
the multi-label suite report and the notebook under papermill (CPU, seconds)."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from ltr_core import report, runner
from ltr_core.config import config_hash, from_params
from ltr_core.methods import get_method
from ltr_core.methods.tailclip import TailCLIPObjective
from ltr_core.models.clip import load_clip
from ltr_core.models.tailclip import TailCLIPNet, caption
from ltr_core.multilabel_losses import BalancedAsymmetricLoss, clip_contrastive_loss
from ltr_core.results import REQUIRED_RESULT_KEYS

NAMES = ["dog", "person", "dining_table"]


def tiny_run_params(tmp_path, **kw) -> dict:
    p = {"method": "tailclip", "dataset": "mosaic_digits_mlt", "imbalance_ratio": 20.0, "n_max": 40,
         "shot_many": 20, "shot_few": 5, "clip_model": "ltr-tiny-vit", "clip_prompt": "a photo of a {}",
         "epochs": 1, "max_steps_per_epoch": 2, "batch_size": 8, "eval_batch_size": 128, "optimizer": "adamw",
         "lr": 3e-4, "device": "cpu", "tensorboard": False, "suite": "tc", "results_root": str(tmp_path / "results")}
    p.update(kw)
    return p


def test_scores_are_scaled_cosines_with_the_text_tower_in_the_loop():
    torch.manual_seed(0)
    clip = load_clip("ltr-tiny-vit")
    net = TailCLIPNet(clip, NAMES)
    x = torch.randn(4, 3, 32, 32)
    out = net(x)
    m = clip.model
    text = F.normalize(m.encode_text(clip.tokenizer(["a photo of a dog", "a photo of a person",
                                                     "a photo of a dining table"])), dim=-1)
    img = F.normalize(m.encode_image(x), dim=-1)
    assert torch.allclose(out.logits, m.logit_scale.exp() * img @ text.t(), atol=1e-5)
    y = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])
    assert net.captions(y) == ["a photo of a dog, person", "a photo of a person", "a photo of a dining table",
                               "a photo of a dog, dining table"]
    obj = TailCLIPObjective(BalancedAsymmetricLoss([30, 20, 5], 40), net.encode_captions, lam=0.4, contrastive=1.0)
    loss = obj(out, y)
    expected = 0.4 * BalancedAsymmetricLoss([30, 20, 5], 40)(out.logits, y) + clip_contrastive_loss(
        out.image_emb, F.normalize(m.encode_text(clip.tokenizer(net.captions(y))), dim=-1), out.scale)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert m.token_embedding.weight.grad.abs().sum() > 0 and m.logit_scale.grad is not None
    with torch.no_grad():  # the class prompts go through the text tower on every call
        m.text_projection.add_(0.5 * torch.randn_like(m.text_projection))
    assert not torch.allclose(net.logits(x), out.logits.detach())
    assert caption(["traffic_light", "person"]) == "a photo of a traffic light, person"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tailclip")
    method = get_method("tailclip")
    ft = from_params(tiny_run_params(tmp, name="bal", tailclip_val_fraction=0.2))
    zs = from_params(tiny_run_params(tmp, name="zeroshot", tailclip_mode="zeroshot"))
    return tmp, ft, method.run(ft), zs, method.run(zs)


def test_finetune_run_writes_a_complete_multilabel_run_directory(runs):
    tmp, cfg, res, _, _ = runs
    run_dir = cfg.run_path()
    assert set(REQUIRED_RESULT_KEYS) <= set(res) and res["status"] == "complete"
    m = res["metrics"]
    for k in ("map", "map_head", "map_medium", "map_tail", "map_softmax", "top1", "many", "medium", "few", "ece"):
        assert isinstance(m[k], float) and 0.0 <= m[k] <= 100.0, k
    assert (m["many"], m["medium"], m["few"]) == (m["map_head"], m["map_medium"], m["map_tail"])
    assert res["shot_groups"] == {"head": [0, 1, 2], "medium": [3, 4, 5, 6], "tail": [7, 8, 9]}
    assert res["class_counts"] == [40, 28, 20, 14, 10, 7, 5, 3, 2, 2]  # groups from the full train list
    assert sum(res["train_class_counts"]) < sum(res["class_counts"])  # the val split was carved out of it
    assert np.nanmean(res["per_class"]) == pytest.approx(m["map"])
    assert set(res["val_metrics"]) >= {"val_map", "val_map_tail"} and res["peft"] == "full fine-tuning"
    assert "test" not in res["selection"].split("(")[0]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "val_map" in records[-1]
    npz = np.load(run_dir / "logits.npz")
    assert npz["logits"].shape == npz["targets"].shape == (125, 10)
    csv = (run_dir / "per_class.csv").read_text().splitlines()
    assert csv[0] == "class_id,name,train_count,test_count,ap,group" and csv[1].endswith(",head")
    assert (run_dir / "model.safetensors").is_file()
    again = get_method("tailclip").run(cfg)  # complete: skipped, same results
    assert again["finished_at"] == res["finished_at"]


def test_zeroshot_run_trains_nothing(runs):
    _, _, ft, cfg, res = runs
    assert res["mode"] == "zeroshot" and res["train_seconds"] == 0 and res["epochs"] == 0
    assert not (cfg.run_path() / "model.safetensors").exists() and not (cfg.run_path() / "checkpoint").exists()
    assert res["per_class"] != ft["per_class"]


def test_multilabel_suite_report_has_map_columns_and_published_rows(runs, tmp_path):
    tmp, *_ = runs
    out = report.build_report("tc", tmp / "results", tmp_path / "figs", title="tiny", many=20, few=5,
                              metrics=("map", "map_head", "map_medium", "map_tail", "map_softmax"),
                              published=[{"dataset": "mosaic_digits_mlt", "method": "DB-Focal", "map": 50.0}])
    md = (tmp_path / "figs" / "summary.md").read_text()
    assert "| Head " in md and "| Tail " in md and "DB-Focal (published)" in md and "head >= 20" in md
    assert "| mAP (softmax) " in md
    assert (tmp_path / "figs" / "shot_bars_mosaic_digits_mlt.png").is_file()
    assert len(out["summary"]) == 2


def test_peft_option_trains_only_tuners_and_the_scale(tmp_path):
    cfg = from_params(tiny_run_params(tmp_path, name="lora", tailclip_peft="lora", max_steps_per_epoch=1,
                                      lr=1e-2))
    torch.manual_seed(cfg.run.seed)
    res = get_method("tailclip").run(cfg)
    full = sum(p.numel() for p in load_clip("ltr-tiny-vit").model.parameters())
    assert res["peft"] == "lora" and 0 < res["trainable_params"] < full / 10
    from safetensors.torch import load_file

    w = load_file(str(cfg.run_path() / "model.safetensors"))
    assert any("lora" in k for k in w)


def test_bad_input_is_explained(tmp_path):
    with pytest.raises(ValueError, match="tailclip needs a multi-label dataset.*digits_lt"):
        get_method("tailclip").run(from_params(tiny_run_params(tmp_path, dataset="digits_lt")))
    with pytest.raises(ValueError, match="image_size=64 but ltr-tiny-vit takes 32 px"):
        get_method("tailclip").run(from_params(tiny_run_params(tmp_path, name="x", image_size=64)))
    with pytest.raises(Exception, match="tailclip_loss"):
        from_params(tiny_run_params(tmp_path, tailclip_loss="focal"))


def test_notebook_runs_under_papermill(tmp_path, monkeypatch):
    runner.ensure_kernel()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: one torch thread is far faster on 2 shared cores
    ov = {"results_root": str(tmp_path / "results"), "figures_dir": str(tmp_path / "figs")}
    outcome = runner.run_params("params/smoke/tailclip_mosaic.yaml", ov)
    assert outcome.status == "complete", outcome.error
    res = json.loads((outcome.run_dir / "results.json").read_text())
    _, cfg = runner.resolve_params(REPO / "params/smoke/tailclip_mosaic.yaml", ov)
    # the params file's config ran (lr 3e-4, 2 epochs), not the notebook cell's defaults (1e-4, 3 epochs)
    assert res["config_hash"] == config_hash(cfg) and res["epochs"] == 2 and cfg.optim.lr == 3e-4
    assert res["metrics"]["map"] > 0 and "val_metrics" in res
    nb = nbformat.read(outcome.run_dir / "notebook.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert (outcome.run_dir / "per_class_ap.png").stat().st_size > 0
