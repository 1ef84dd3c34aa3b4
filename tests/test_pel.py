"""PEL/LIFT and zero-shot CLIP on tiny random open_clip models (no weights are downloaded)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import v2

from conftest import REPO
from ltr_core import config, runner, tte
from ltr_core.data import build_data, lt_counts
from ltr_core.data.transforms import five_crop_transform
from ltr_core.methods import get_method, pel
from ltr_core.models import clip as C
from ltr_core.models import peft as P
from ltr_core.models.heads import CosineHead
from ltr_core.study import shot_group_counts


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return C.load_clip("ltr-tiny-vit")


def fresh(clip: C.Clip) -> C.Clip:
    return C.Clip(**{**clip.__dict__, "model": copy.deepcopy(clip.model)})


def features(clip, x):
    with torch.no_grad():
        return C.image_features(clip, x, project=False)


# ---------------------------------------------------------------------------------------------- PEFT modules


@pytest.mark.parametrize("method", P.ZERO_INIT_METHODS)
def test_zero_init_methods_leave_the_tower_unchanged(tiny, method):
    x = torch.randn(3, 3, 32, 32)
    ref = features(tiny, x)
    c = fresh(tiny)
    P.apply_peft(c, method, num_classes=10)
    c.model.visual.train()  # dropout is 0: train mode must give the same function too
    assert torch.allclose(features(c, x), ref, atol=1e-5)


@pytest.mark.parametrize("method,tuner", [("adaptformer", "adaptformer.up.weight"), ("adapter", "adapter.up.weight"),
                                          ("lora", "lora_v.B")])
def test_the_zero_initialised_tensor_is_what_keeps_the_output(tiny, method, tuner):
    x = torch.randn(3, 3, 32, 32)
    c = fresh(tiny)
    P.apply_peft(c, method, num_classes=10)
    named = dict(c.model.visual.named_parameters())
    assert torch.count_nonzero(named[f"transformer.resblocks.1.{tuner}"]) == 0
    with torch.no_grad():
        named[f"transformer.resblocks.1.{tuner}"].normal_()
    assert not torch.allclose(features(c, x), features(tiny, x), atol=1e-3)


@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep", "ssf"])
def test_vpt_and_ssf_change_the_output_and_keep_its_shape(tiny, method):
    x = torch.randn(2, 3, 32, 32)
    c = fresh(tiny)
    P.apply_peft(c, method, num_classes=10)
    v = c.model.visual
    with torch.no_grad():
        tokens = v.transformer(v._embeds(x))
    assert tokens.shape == (2, 17, 64)  # prompts are dropped after the last block
    assert not torch.allclose(features(c, x), features(tiny, x), atol=1e-4)


BLOCK = r"transformer\.resblocks\.(\d+)\."
EXPECTED = {  # method -> regex of every trainable name (visual tower), trainable tensors per block
    "adaptformer": (BLOCK + r"adaptformer\.(scale|ln\.weight|ln\.bias|down\.weight|down\.bias|up\.weight|up\.bias)$", 7),
    "adapter": (BLOCK + r"adapter\.(ln\.weight|ln\.bias|down\.weight|down\.bias|up\.weight|up\.bias)$", 6),
    "lora": (BLOCK + r"lora_[qv]\.[AB]$", 4),
    "vpt_deep": (BLOCK + r"prompt$", 1),
    "ssf": (BLOCK + r"ssf\.(qkv|attn_out|fc1|fc2|ln_1|ln_2)\.(scale|shift)$", 12),
    "bitfit": (BLOCK + r"(ln_1\.bias|ln_2\.bias|attn\.in_proj_bias|attn\.out_proj\.bias|mlp\.c_fc\.bias|mlp\.c_proj\.bias)$", 6),
    "ln_tuning": (BLOCK + r"ln_[12]\.(weight|bias)$", 4),
    "full": (BLOCK + r"(ln_[12]\.(weight|bias)|attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
             r"|mlp\.c_(fc|proj)\.(weight|bias))$", 12),
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_only_the_intended_parameters_train(tiny, method):
    c = fresh(tiny)
    params = P.apply_peft(c, method, num_classes=10)
    names = P.trainable_names(c.model.visual)
    pattern, per_block = EXPECTED[method]
    assert names and all(re.match(pattern, n) for n in names), names
    assert len(names) == per_block * 2 == len(params)
    assert {int(re.match(pattern, n).group(1)) for n in names} == {0, 1}
    assert not any(p.requires_grad for n, p in c.model.visual.named_parameters() if n not in names)
    # gradients reach exactly those tensors through the classifier
    model = pel.ClipClassifier(c.model.visual, CosineHead(64, 10, 25.0), is_vit=True)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    with_grad = {n for n, p in model.visual.named_parameters() if p.grad is not None}
    assert with_grad == set(names)


def test_vpt_shallow_linear_probe_and_partial(tiny):
    c = fresh(tiny)
    assert P.trainable_names(c.model.visual) and P.apply_peft(c, "linear_probe", num_classes=10) == []
    assert P.trainable_names(c.model.visual) == []
    c = fresh(tiny)
    P.apply_peft(c, "vpt_shallow", num_classes=10, vpt_length=3)
    assert P.trainable_names(c.model.visual) == ["transformer.resblocks.0.prompt"]
    assert P.peft_info(c)["vpt_length"] == 3
    c = fresh(tiny)
    P.apply_peft(c, "adaptformer", num_classes=10, partial=1, bottleneck=8)
    names = P.trainable_names(c.model.visual)
    assert all(n.startswith("transformer.resblocks.1.adaptformer") for n in names)
    assert P.peft_info(c)["blocks"] == [1] and P.peft_info(c)["bottleneck"] == 8
    # 64-d: LN 128 + down 64*8+8 + up 8*64+64 + scale 1
    assert P.peft_info(c)["trainable_params"] == 128 + 520 + 576 + 1


def test_default_bottleneck_matches_the_paper():
    assert [P.default_bottleneck(k, 12) for k in (1000, 365, 8142, 100, 10)] == [32, 8, 256, 4, 1]


def test_adaptformer_down_projection_init_matches_lift():
    """PEL/LIFT peft_modules.py: kaiming_normal_(down, a=√5) -> N(0, 1/(3 fan_in)), fan_in = d; the uniform
    option (AdaptFormer's own kaiming_uniform_(a=√5)) is U(±1/√d) with the same variance."""
    torch.manual_seed(0)
    d, r = 768, 64
    for learnable in (True, False):  # AdaptFormer and Adapter share the init
        b = P.Bottleneck(d, r, learnable_scale=learnable)
        w = b.down.weight.detach().double()
        assert w.shape == (r, d) and abs(float(w.std()) * math.sqrt(3 * d) - 1) < 0.02 and abs(float(w.mean())) < 1e-3
        assert not b.down.bias.any() and not b.up.weight.any() and not b.up.bias.any()
    u = P.Bottleneck(d, r, learnable_scale=True, down_init="uniform").down.weight.detach().double()
    bound = 1 / math.sqrt(d)
    assert float(u.abs().max()) <= bound and float(u.abs().max()) > 0.99 * bound
    assert abs(float(u.std()) * math.sqrt(3 * d) - 1) < 0.02
    with pytest.raises(P.PeftError, match="down_init"):
        P.Bottleneck(d, r, learnable_scale=True, down_init="xavier")


def test_lora_a_init_takes_its_fan_in_from_the_rank():
    """PEL/LIFT store lora_A as [d_in, r], so kaiming_uniform_(a=√5) has fan_in = r: A ~ U(±1/√r)."""
    torch.manual_seed(0)
    d, r = 768, 16
    lora = P.LoRA(d, d, r)
    a = lora.A.detach().double()
    bound = 1 / math.sqrt(r)
    assert a.shape == (r, d) and float(a.abs().max()) <= bound and float(a.abs().max()) > 0.99 * bound
    assert abs(float(a.std()) * math.sqrt(3 * r) - 1) < 0.03 and not lora.B.any() and lora.scaling == 1 / r
    ref = torch.empty(d, r)  # the original's layout and call
    torch.nn.init.kaiming_uniform_(ref, a=math.sqrt(5))
    assert float(ref.abs().max()) <= bound and float(ref.abs().max()) > 0.99 * bound
    wide = P.LoRA(d, d, r, fan_in="input").A.detach()
    assert float(wide.abs().max()) <= 1 / math.sqrt(d)


def test_lr_schedule_is_stepped_per_epoch_as_lift():
    """pel_lr_step=epoch: the lr of epoch e is CosineAnnealingLR(T_max=E) after e scheduler steps, for every step."""
    epochs, lr = 5, 0.01
    cfg = config.from_params({"method": "pel", "schedule": "cosine", "lr": lr, "epochs": epochs})
    assert cfg.pel.pel_lr_step == "epoch"
    schedule = pel.lr_schedule(cfg)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for e in range(epochs):
        for frac in (0.25, 1.0):
            assert lr * schedule(e, frac) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        sched.step()
    assert pel.lr_schedule(config.from_params({"method": "pel", "pel_lr_step": "step"})) is None
    with pytest.raises(config.ConfigError, match="warm-up"):
        pel.lr_schedule(config.from_params({"method": "pel", "schedule": "cosine", "warmup_epochs": 1.0}))


def test_adaptformer_parameter_counts_of_vit_b16():
    """methods.md §5.2: 617,868 (ImageNet-LT, r = 32) and 175,212 (Places-LT, r = 8), built on the meta device."""
    from types import SimpleNamespace

    from open_clip.transformer import VisionTransformer

    for k, expected in ((1000, 617_868), (365, 175_212)):
        with torch.device("meta"):
            visual = VisionTransformer(224, 16, 768, 12, 12, 4.0, output_dim=512)
        clip = SimpleNamespace(model=SimpleNamespace(visual=visual))
        assert P.count_parameters(P.apply_peft(clip, "adaptformer", num_classes=k)) == expected


def test_resnet_tower_supports_the_norm_and_bias_methods():
    torch.manual_seed(0)
    rn = C.load_clip("ltr-tiny-rn")
    c = fresh(rn)
    P.apply_peft(c, "bitfit", num_classes=10)
    names = P.trainable_names(c.model.visual)
    assert names and all(re.match(r"layer[1-4]\.\d+\..*bias$", n) for n in names)
    c = fresh(rn)
    P.apply_peft(c, "ln_tuning", num_classes=10)
    assert all(re.search(r"(bn\d|downsample\.1)\.(weight|bias)$", n) for n in P.trainable_names(c.model.visual))
    with pytest.raises(P.PeftError, match="needs a ViT tower"):
        P.apply_peft(fresh(rn), "adaptformer", num_classes=10)


def test_bad_peft_input_is_explained(tiny):
    with pytest.raises(P.PeftError, match="unknown PEFT method 'adaptformr'"):
        P.apply_peft(fresh(tiny), "adaptformr", num_classes=10)
    with pytest.raises(P.PeftError, match="unknown PEFT options"):
        P.apply_peft(fresh(tiny), "lora", num_classes=10, rank=4)
    with pytest.raises(P.PeftError, match="partial=5"):
        P.apply_peft(fresh(tiny), "lora", num_classes=10, partial=5)
    c = fresh(tiny)
    P.apply_peft(c, "lora", num_classes=10)
    with pytest.raises(P.PeftError, match="already applied"):
        P.apply_peft(c, "adapter", num_classes=10)


def test_config_choices_list_every_peft_method():
    assert config.CHOICES["pel_peft"] == P.PEFT_METHODS


# ---------------------------------------------------------------------------------------------- classifier


def test_text_initialised_head_is_zero_shot_clip_at_step_0(tiny):
    """z_head * |t_c P^T| * |f| / 25 = z_zs * |f P| / 100 for any P; same predictions when P^T P = I."""
    names = [str(i) for i in range(10)]
    cfg = config.from_params({})
    x = torch.randn(16, 3, 32, 32)
    for orthonormal in (False, True):
        c = fresh(tiny)
        if orthonormal:
            q, _ = torch.linalg.qr(torch.randn(64, 32))
            c.model.visual.proj.data.copy_(q)
        t = pel.text_weights(c, names, cfg, "cpu")
        head = CosineHead(64, 10, 25.0)
        head.weight.data.copy_(pel.head_init(c, t))
        model = pel.ClipClassifier(c.model.visual, head, is_vit=True).eval()
        with torch.no_grad():
            z_head = model(x)
            f = C.image_features(c, x, project=False)
            e = C.image_features(c, x, project=True)
            z_zs = pel.ZeroShotHead(t)(e)
        proj = C.visual_projection(c)
        lhs = z_head * (t @ proj.T).norm(dim=1) * f.norm(dim=1, keepdim=True) / 25
        assert torch.allclose(lhs, z_zs * e.norm(dim=1, keepdim=True) / 100, atol=1e-4)
        if orthonormal:
            assert torch.equal(z_head.argmax(1), z_zs.argmax(1))
            ratio = z_zs / z_head
            assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)


# ---------------------------------------------------------------------------------------------- TTE


def test_device_five_crop_matches_torchvision_and_averages_logits(tiny):
    x = torch.randn(2, 3, 8, 8)
    views = tte.eval_views(x, 32, tte=True, expand=8, interpolation="bilinear")
    big = F.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)
    manual = torch.stack([torch.stack(v2.functional.five_crop(img, [32, 32])) for img in big])
    assert views.shape == (2, 5, 3, 32, 32) and torch.equal(views, manual)
    plain = tte.eval_views(x, 32, tte=False, interpolation="bilinear")  # Resize(36) + CenterCrop(32)
    assert torch.equal(plain, v2.functional.center_crop(F.interpolate(x, size=(36, 36), mode="bilinear",
                                                                      align_corners=False), [32, 32]))
    model = pel.ClipClassifier(fresh(tiny).model.visual, CosineHead(64, 10, 25.0), is_vit=True).eval()
    with torch.no_grad():
        averaged = model(views)
        by_hand = sum(model(manual[:, k]) for k in range(5)) / 5
    assert torch.allclose(averaged, by_hand, atol=1e-5)


def test_file_five_crop_transform_matches_a_manual_five_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    out = five_crop_transform(32, mean=(0.5,) * 3, std=(0.25,) * 3, expand=4)(image)
    resized = v2.functional.resize(image, 36, antialias=True)  # shorter side 36 -> 36 x 50
    crops = v2.functional.five_crop(resized, [32, 32])
    manual = torch.stack([(v2.functional.pil_to_tensor(c).float() / 255 - 0.5) / 0.25 for c in crops])
    assert out.shape == (5, 3, 32, 32) and torch.allclose(out, manual, atol=1e-6)


# ---------------------------------------------------------------------------------------------- runs


def tiny_pel(tmp_path: Path, **overrides) -> dict:
    params = config.load_params(REPO / "params/smoke/pel_tiny.yaml")
    params.update(results_root=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"), **overrides)
    return params


def test_pel_notebook_runs_under_papermill(tmp_path):
    runner.ensure_kernel()
    out = runner.run_params("params/smoke/pel_tiny.yaml", {"results_root": str(tmp_path / "r"),
                                                            "cache_dir": str(tmp_path / "c")})
    assert out.status == "complete", out.error
    res = json.loads((out.run_dir / "results.json").read_text())
    _, cfg = runner.resolve_params("params/smoke/pel_tiny.yaml", {"results_root": str(tmp_path / "r")})
    assert res["config_hash"] == config.config_hash(cfg) and res["epochs"] == 2  # notebook says 5: no leak
    assert res["method"] == "pel" and res["model"] == "clip:ltr-tiny-vit" and res["clip"]["activation"] == "QuickGELU"
    assert res["tte"]["enabled"] and res["tte"]["resize"] == 40  # smoke file: expand 8 (notebook says 4)
    assert set(res["metrics"]["no_tte"]) >= {"top1", "many", "medium", "few"}
    assert res["trainable_params"] == {"tower": 902, "head": 640, "total": 1542} == res["metrics"]["trainable"]
    saved = load_file(str(out.run_dir / "model.safetensors"))  # tuners + head only, not the frozen tower
    assert len(saved) == 2 * 7 + 1 and all(".adaptformer." in k or k == "head.weight" for k in saved)
    nb = (out.run_dir / "notebook.ipynb").read_text()
    assert "injected-parameters" in nb


def test_zeroshot_and_cached_linear_probe(tmp_path):
    cfg = config.from_params(tiny_pel(tmp_path, method="zeroshot", pel_tte=False, name="zs"))
    res = get_method("zeroshot").run(cfg)
    assert res["epochs"] == 0 and res["selection"] == "no training"
    assert res["metrics"]["no_tte"]["top1"] == res["metrics"]["top1"]  # TTE off: the headline is the no-TTE number
    assert res["metrics"]["trainable"]["total"] == 0
    cache = tmp_path / "cache" / "features"
    assert len(list(cache.glob("clip-digits_lt-test-*.safetensors"))) == 1
    probe = tiny_pel(tmp_path, pel_peft="linear_probe", name="probe", lr=0.02)
    res = pel.run(config.from_params(probe))
    assert res["features"].startswith("cached") and res["trainable_params"]["tower"] == 0
    logged = [json.loads(line) for line in (config.from_params(probe).run_path() / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in logged if "lr" in r]  # epoch-wise cosine over 2 epochs: 0.02, then 0.01
    assert lrs == pytest.approx([0.02, 0.01])
    files = sorted(p.name for p in cache.glob("*.safetensors"))
    assert len(files) == 4  # zero-shot (projected) test + train, test, test-TTE of the pre-projection feature
    res2 = pel.run(config.from_params({**probe, "lr": 0.05, "name": "probe2"}))  # features come from the cache
    assert sorted(p.name for p in cache.glob("*.safetensors")) == files
    assert res2["run_id"] != res["run_id"]


def test_state_dict_round_trip_holds_only_trainable_tensors(tiny):
    c = fresh(tiny)
    P.apply_peft(c, "lora", num_classes=10)
    model = pel.ClipClassifier(c.model.visual, CosineHead(64, 10, 25.0), is_vit=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_()
    state = model.state_dict()
    assert set(state) == {f"visual.{n}" for n in P.trainable_names(c.model.visual)} | {"head.weight"}
    other = fresh(tiny)
    P.apply_peft(other, "lora", num_classes=10)
    again = pel.ClipClassifier(other.model.visual, CosineHead(64, 10, 25.0), is_vit=True)
    again.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), again.eval()(x), atol=1e-6)
    with pytest.raises(RuntimeError, match="missing trainable"):
        again.load_state_dict({"head.weight": state["head.weight"]})


def test_split_from_ir_takes_shot_groups_from_other_counts(tmp_path):
    cfg = config.from_params({"imbalance_ratio": 10.0, "split_from_ir": 100.0, "cache_dir": str(tmp_path)})
    data = build_data(cfg.data)
    assert list(shot_group_counts(data, cfg)) == lt_counts(120, 10, 100.0)
    assert list(data.class_counts) == lt_counts(120, 10, 10.0)
    plain = config.from_params({"imbalance_ratio": 10.0, "cache_dir": str(tmp_path)})
    assert list(shot_group_counts(data, plain)) == list(data.class_counts)
    data.provenance.pop("n_max")
    with pytest.raises(Exception, match="split_from_ir"):
        shot_group_counts(data, cfg)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for d in ("cifar100_lt", "imagenet_lt", "places_lt",
                                                                            "inat18", "digits_lt")
                                        for p in (REPO / "params" / d).glob("*.yaml")
                                        if "pel" in p.name or "zeroshot" in p.name))
def test_pel_params_resolve(path):
    _, cfg = runner.resolve_params(path, {"results_root": "/tmp/unused"})
    assert cfg.run.method in ("pel", "zeroshot")
    if cfg.clip.clip_model == "ViT-B-16":
        assert cfg.clip.clip_pretrained == "openai" and cfg.clip.clip_interpolation == "bilinear"
        assert cfg.loss.loss == "logit_adjusted" and cfg.train.batch_size == 128
        assert cfg.train.epochs == (20 if cfg.data.dataset == "inat18" else 10)


def test_peft_vs_full_benchmark_rows():
    from ltr_core import bench_clip

    rows = bench_clip.run_peft_bench("ltr-tiny-vit", ("adaptformer", "full", "linear_probe"), batch_size=4,
                                     num_classes=10, steps=1, warmup=0, device="cpu")
    by = {r["method"]: r for r in rows}
    assert by["adaptformer"]["trainable_tower"] == 902 and by["linear_probe"]["trainable_tower"] == 0
    assert by["full"]["trainable_tower"] == 99_968 and by["full"]["speed_vs_full"] == 1.0
    assert all(r["train_images_per_s"] > 0 and r["trainable_head"] == 640 for r in rows)
    assert "| adaptformer |" in bench_clip.format_rows(rows)
