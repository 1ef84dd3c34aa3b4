"""LiVT: MGP masking and loss, per-patch targets, sin-cos embeddings, encoder loading, layer-wise lr decay,
batch augmentations (mixup/cutmix soft targets, erasing, RandAugment), PDC, and a tiny MGP → BFT run
under papermill (CPU, tiny ViTs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO
from ltr_core import augment, config, metrics, runner
from ltr_core.methods import livt
from ltr_core.models.mae import (MaskedAutoencoder, MGPLoss, masked_mse, normalised_targets, patchify,
                                 random_masking, unpatchify)
from ltr_core.models.vit import ViTError, build_vit, layer_id, load_encoder, sincos_pos_embed

TINY = dict(patch_size=4, width=32, depth=2, heads=2)


def tiny_vit(image_size=16, **kw):
    return build_vit("vit_tiny_patch16_224", image_size=image_size, **{**TINY, **kw})


def tiny_mae(image_size=16, **kw):
    return MaskedAutoencoder(tiny_vit(image_size), decoder_width=16, decoder_depth=1, decoder_heads=2, **kw)


# ---------------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("n", [16, 49, 64, 196])
def test_masking_keeps_round_quarter_and_restore_inverts(n):
    torch.manual_seed(0)
    ids_keep, mask, ids_restore = random_masking(5, n, 0.75)
    keep = round(0.25 * n)
    assert ids_keep.shape == (5, keep)
    assert (mask.sum(1) == n - keep).all() and ((mask == 0) | (mask == 1)).all()
    # kept patches are exactly the unmasked ones
    for b in range(5):
        assert set(ids_keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    # un-shuffling (kept, removed) with ids_restore gives back the original order
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(n).expand(5, n))
    tokens = torch.arange(n).float().expand(5, n)
    shuffled = torch.gather(tokens, 1, ids_shuffle)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), tokens)
    # masks differ between samples (per-sample noise)
    assert not torch.equal(mask[0], mask[1])


def test_patchify_round_trip_and_layout():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    # patch (row 1, col 2) holds pixels x[:, :, 4:8, 8:12] ordered (row, col, channel)
    assert torch.equal(p[:, 1 * 3 + 2].reshape(2, 4, 4, 3), x[:, :, 4:8, 8:12].permute(0, 2, 3, 1))
    assert torch.equal(unpatchify(p, 4, 3, (2, 3)), x)


def test_per_patch_normalised_targets_against_direct_formula():
    torch.manual_seed(1)
    patches = torch.randn(3, 7, 48) * 3 + 5
    t = normalised_targets(patches)
    for b, i in [(0, 0), (2, 6), (1, 3)]:
        v = patches[b, i].double()
        mean, var = v.mean(), ((v - v.mean()) ** 2).sum() / (v.numel() - 1)  # unbiased, as MAE
        assert torch.allclose(t[b, i].double(), (v - mean) / math.sqrt(var + 1e-6), atol=1e-5)
    mae = tiny_mae(norm_pix_loss=True)
    imgs = torch.randn(2, 3, 16, 16)
    assert torch.allclose(mae.targets(imgs), normalised_targets(patchify(imgs, 4)))
    assert torch.equal(tiny_mae(norm_pix_loss=False).targets(imgs), patchify(imgs, 4))


def test_reconstruction_loss_ignores_visible_patches():
    torch.manual_seed(2)
    pred, target = torch.randn(4, 16, 48), torch.randn(4, 16, 48)
    _, mask, _ = random_masking(4, 16, 0.75)
    loss = masked_mse(pred, target, mask)
    direct = sum(((pred[b, i] - target[b, i]) ** 2).mean() for b in range(4) for i in range(16) if mask[b, i]) / mask.sum()
    assert torch.allclose(loss, direct, atol=1e-6)
    changed = torch.where(mask.bool().unsqueeze(-1), pred, pred + 100 * torch.randn_like(pred))
    assert torch.allclose(masked_mse(changed, target, mask), loss, atol=1e-6)  # visible predictions do not count
    worse = torch.where(mask.bool().unsqueeze(-1), pred + 1.0, pred)
    assert masked_mse(worse, target, mask) > loss + 0.5  # masked predictions do


def test_mae_forward_gradients_reach_encoder_not_fixed_pos_embed():
    torch.manual_seed(3)
    mae = tiny_mae()
    pred, target, mask = mae(torch.randn(3, 3, 16, 16))
    assert pred.shape == target.shape == (3, 16, 48) and mask.shape == (3, 16)
    assert (mask.sum(1) == 12).all()
    MGPLoss()((pred, target, mask), None).backward()
    assert mae.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert mae.mask_token.grad.abs().sum() > 0
    assert not mae.encoder.pos_embed.requires_grad and mae.encoder.pos_embed.grad is None
    assert torch.allclose(mae.encoder.pos_embed, sincos_pos_embed(32, (4, 4)))


def test_sincos_pos_embed_formula():
    emb = sincos_pos_embed(8, (2, 3))
    assert emb.shape == (1, 7, 8) and torch.equal(emb[0, 0], torch.zeros(8))
    # patch (row 1, col 2): first half encodes the column, second half the row; omega_k = 1/10000^(k/2)
    omega = [1.0, 1.0 / 100.0]
    want = [math.sin(2 * omega[0]), math.sin(2 * omega[1]), math.cos(2 * omega[0]), math.cos(2 * omega[1]),
            math.sin(1 * omega[0]), math.sin(1 * omega[1]), math.cos(1 * omega[0]), math.cos(1 * omega[1])]
    assert torch.allclose(emb[0, 1 + 1 * 3 + 2], torch.tensor(want), atol=1e-6)


# ---------------------------------------------------------------------------------------------- encoder / BFT


def test_encoder_loads_strictly_and_resamples_pos_embed(tmp_path):
    mae = tiny_mae(image_size=16)
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in mae.encoder.state_dict().items()}, str(path))
    same = tiny_vit(16, global_pool="avg")
    info = load_encoder(same, path)
    assert sorted(info["skipped"]) == ["norm.bias", "norm.weight"] and sorted(info["fresh"]) == ["fc_norm.bias", "fc_norm.weight"]
    assert torch.equal(same.blocks[1].mlp.fc2.weight, mae.encoder.blocks[1].mlp.fc2.weight)
    assert not info["pos_embed_resampled"]
    bigger = tiny_vit(32, global_pool="avg")  # 4x4 -> 8x8 patch grid
    info = load_encoder(bigger, path)
    assert info["pos_embed_resampled"] and bigger.pos_embed.shape == (1, 65, 32)
    assert torch.equal(bigger.pos_embed[0, 0], mae.encoder.pos_embed[0, 0])
    with pytest.raises(ViTError, match="does not fit"):
        load_encoder(tiny_vit(16, width=64, heads=2), path)
    with pytest.raises(ViTError, match="missing"):
        load_encoder(tiny_vit(16, depth=3), path)
    with pytest.raises(ViTError, match="not found"):
        load_encoder(same, tmp_path / "nowhere.safetensors")


def test_layer_decay_groups_scales_per_block_and_no_weight_decay():
    cfg = config.from_params({"method": "livt", "model": "vit_tiny_patch16_224", "livt_patch_size": 4,
                              "livt_vit_width": 32, "livt_vit_depth": 3, "livt_vit_heads": 2, "lr": 1.0,
                              "weight_decay": 0.05, "livt_layer_decay": 0.5, "image_size": 16})
    data = type("D", (), {"image_size": 16, "num_classes": 5, "train": type("S", (), {"images": None})()})()
    model, _ = livt.build_classifier(cfg, data)
    groups = livt.bft_param_groups(model, cfg)
    L = 3
    seen = set()
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            seen.add(n)
            want_layer = 0 if n.startswith(("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed")) else (
                int(n.split(".")[2]) + 1 if n.startswith("backbone.blocks.") else L + 1)
            assert g["layer"] == want_layer == layer_id(n, L), n
            assert g["lr"] == pytest.approx(0.5 ** (L + 1 - want_layer)), n
            no_wd = p.ndim == 1 or n.endswith(("pos_embed", "cls_token"))
            assert g["weight_decay"] == (0.0 if no_wd else 0.05), n
    assert seen == set(names.values())
    head = next(g for g in groups if any(p is model.head.weight for p in g["params"]))
    assert head["lr"] == 1.0 and head["weight_decay"] == 0.05
    assert model.head.weight.std() < 1e-4 and torch.equal(model.head.bias, torch.zeros(5))
    # the optimizer the engine builds keeps the per-group lr
    opt = livt.engine.build_optimizer(groups, cfg.optim)
    assert sorted({g["lr"] for g in opt.param_groups}) == sorted({0.5 ** k for k in range(L + 2)})


# ---------------------------------------------------------------------------------------------- augmentation


def test_mixup_and_cutmix_soft_targets():
    torch.manual_seed(4)
    x = torch.randn(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for mix, cut in ((1.0, 0.0), (0.0, 1.0)):
        out, t, lam, mode = augment.mixup_cutmix(x, y, 5, mixup_alpha=mix, cutmix_alpha=cut, smoothing=0.1)
        assert torch.allclose(t.sum(1), torch.ones(6))
        s = augment.smooth_one_hot(y, 5, 0.1)
        assert torch.allclose(t, lam * s + (1 - lam) * s.flip(0))
        assert s[0, 0] == pytest.approx(0.9 + 0.02) and s[0, 1] == pytest.approx(0.02)
        if mode == "mixup":
            assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0))
        else:  # λ is the fraction of pixels that still come from the image itself
            assert mode == "cutmix"
            own = (out == x).all(1).float().mean(dim=(1, 2))
            assert torch.allclose(own[:3], torch.full((3,), lam), atol=1e-6)
    _, t, lam, mode = augment.mixup_cutmix(x, y, 5, prob=0.0, smoothing=0.0)
    assert mode == "none" and lam == 1.0 and torch.equal(t, torch.nn.functional.one_hot(y, 5).float())


def test_random_erasing_boxes():
    torch.manual_seed(5)
    x = torch.zeros(200, 3, 16, 16)
    out = augment.random_erasing(x, 0.25)
    erased = (out != 0).any(1)
    frac = erased.any(-1).any(-1).float().mean()
    assert 0.12 < frac < 0.4
    for b in torch.nonzero(erased.any(-1).any(-1)).flatten()[:10]:
        ys, xs = torch.nonzero(erased[b], as_tuple=True)
        area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert area == erased[b].sum()  # one solid rectangle
        assert 0.02 * 256 * 0.5 <= area <= 256 / 3 * 1.5
    assert torch.equal(augment.random_erasing(x, 0.0), x)


def test_rand_augment_ops_and_batch_transform():
    torch.manual_seed(6)
    u = torch.randint(0, 256, (4, 3, 8, 8)).float()
    lvl, sgn = torch.full((4,), 0.9), torch.ones(4)
    assert torch.equal(augment.apply_op("Invert", u, lvl, sgn), 255 - u)
    assert torch.equal(augment.apply_op("PosterizeIncreasing", u, lvl, sgn), torch.floor(u / 128) * 128)  # 1 bit at m=9
    assert torch.equal(augment.apply_op("SolarizeIncreasing", u, lvl, sgn), torch.where(u >= 26, 255 - u, u))
    assert torch.equal(augment.apply_op("BrightnessIncreasing", u, lvl, sgn), (u * 1.81).clamp(0, 255).round())
    shifted = augment.apply_op("TranslateXRel", u, torch.full((4,), 0.5), sgn)  # 0.225 * 8 = 1.8 px
    assert shifted.shape == u.shape and not torch.equal(shifted, u)
    for name in augment.RAND_OPS:
        out = augment.apply_op(name, u, lvl, -sgn, fill=torch.tensor([128.0, 128.0, 128.0]))
        assert out.shape == u.shape and out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round()), name
    ba = augment.BatchAugment(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=3, smoothing=0.1)
    x, t = ba(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,)))
    assert x.shape == (8, 3, 8, 8) and t.shape == (8, 3) and torch.allclose(t.sum(1), torch.ones(8))
    off = augment.BatchAugment(mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=3, randaug_ops=0, reprob=0.0,
                               mixup_alpha=0.0, cutmix_alpha=0.0)
    xin, yin = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    xo, yo = off(xin, yin)
    assert torch.equal(xo, xin) and torch.equal(yo, yin) and not off.mixing


def test_soft_target_loss_rules():
    cfg = config.from_params({"method": "livt", "loss": "focal"})
    data = type("D", (), {"class_counts": np.array([10, 5, 2])})()
    with pytest.raises(config.ConfigError, match="soft targets"):
        livt.build_bft_loss(cfg, data, mixing=True)
    cfg = config.from_params({"method": "livt", "loss": "bal_bce", "label_smoothing": 0.1})
    assert livt.build_bft_loss(cfg, data, mixing=True).label_smoothing == 0.0  # the targets carry it
    assert livt.build_bft_loss(cfg, data, mixing=False).label_smoothing == 0.1


# ---------------------------------------------------------------------------------------------- PDC


def test_pdc_hand_computed():
    # 4 test images (2 per class), train prior (0.75, 0.25); predictions: three of class 0, one of class 1
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 0, 0, 1])
    eps = 1e-6
    p_test, q, p_train = np.array([0.5, 0.5]), np.array([0.75, 0.25]), np.array([0.75, 0.25])
    kl = lambda p, r: float(np.sum(p * (np.log(p + eps) - np.log(r + eps))))  # noqa: E731
    assert kl(p_test, q) / kl(p_test, p_train) == pytest.approx(1.0)
    assert metrics.pdc(preds, labels, [30, 10]) == pytest.approx(1.0)
    # by hand: KL(0.5,0.5 || 0.75,0.25) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.143841
    assert kl(p_test, q) == pytest.approx(0.143841, abs=1e-5)
    assert metrics.pdc(np.array([0, 1, 0, 1]), labels, [30, 10]) == pytest.approx(0.0, abs=1e-9)  # balanced predictions
    assert math.isnan(metrics.pdc(preds, labels, [10, 10]))  # train prior = test distribution: undefined
    logits = np.array([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    out = metrics.evaluate(logits, np.array([0, 0, 1, 1, -1]), [30, 10])  # the open-set sample is ignored
    assert out["pdc"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- end to end


def test_init_run_and_mgp_epochs_are_exclusive(tmp_path):
    cfg = config.from_params({"method": "livt", "init_run": "x", "livt_mgp_epochs": 5,
                              "results_root": str(tmp_path)})
    with pytest.raises(config.ConfigError, match="livt_mgp_epochs: 0"):
        livt.mgp_source(cfg, None)
    cfg = config.from_params({"method": "livt", "init_run": "missing-run", "livt_mgp_epochs": 0,
                              "results_root": str(tmp_path)})
    with pytest.raises(livt.StageError, match="missing-run"):
        livt.mgp_source(cfg, None)


@pytest.fixture(scope="module")
def tiny_livt_run(tmp_path_factory):
    """params/smoke/digits_livt.yaml (MGP → BFT) through papermill, then BFT from its MGP via init_run."""
    tmp = tmp_path_factory.mktemp("livt")
    runner.ensure_kernel()
    ov = {"results_root": str(tmp / "results"), "figures_dir": str(tmp / "figures"), "cache_dir": str(tmp / "cache")}
    first = runner.run_params("params/smoke/digits_livt.yaml", ov)
    second = runner.run_params("params/smoke/digits_livt.yaml",
                               {**ov, "livt_mgp_epochs": 0, "loss": "ce", "init_run": str(first.run_dir)})
    return tmp, first, second


def test_tiny_mgp_then_bft_under_papermill(tiny_livt_run):
    tmp, out, _ = tiny_livt_run
    assert out.status == "complete", out.error
    res = json.loads((out.run_dir / "results.json").read_text())
    assert res["method"] == "livt" and res["loss"] == "bal_bce" and res["epochs"] == 2
    for k in ("top1", "many", "medium", "few", "ece", "mce", "pdc"):
        assert k in res["metrics"]
    mgp = res["livt"]["mgp"]
    assert mgp["source"] == "this run" and mgp["epochs"] == 2 and mgp["num_patches"] == 16
    assert res["livt"]["init"] == "mgp encoder" and sorted(res["livt"]["loaded"]["fresh"]) == ["fc_norm.bias", "fc_norm.weight"]
    assert res["mgp_images_per_second"] > 0 and res["images_per_second"] > 0
    stage = out.run_dir / "mgp"
    for f in ("encoder.safetensors", "mae.safetensors", "mgp.json", "metrics.jsonl", "config.yaml",
              "checkpoint/LATEST"):
        assert (stage / f).is_file(), f
    assert len((stage / "metrics.jsonl").read_text().splitlines()) == 2
    for f in ("reconstruction.png", "reconstruction.pdf", "model.safetensors", "notebook.ipynb"):
        assert (out.run_dir / f).is_file() and (out.run_dir / f).stat().st_size > 0, f
    assert (tmp / "figures" / f"livt_reconstruction_{res['run_id']}.png").is_file()
    # a re-run is skipped
    again = runner.run_params("params/smoke/digits_livt.yaml", {"results_root": str(tmp / "results"),
                                                                 "figures_dir": str(tmp / "figures"),
                                                                 "cache_dir": str(tmp / "cache")})
    assert again.status == "skipped"


def test_bft_from_an_earlier_mgp_run(tiny_livt_run):
    _, first, second = tiny_livt_run
    assert second.status == "complete", second.error
    res = json.loads((second.run_dir / "results.json").read_text())
    assert res["loss"] == "ce" and res["livt"]["mgp"]["source"] == "init_run"
    assert res["livt"]["encoder"] == str(first.run_dir / "mgp" / "encoder.safetensors")
    assert not (second.run_dir / "mgp").exists()  # no MGP of its own
    assert (second.run_dir / "reconstruction.png").is_file()  # the figure uses the referenced run's MAE


def test_livt_params_files_validate():
    paths = [p for p in sorted((REPO / "params").glob("*/livt*.yaml")) if p.parent.name != "suites"]
    assert len(paths) >= 12
    for p in paths:
        _, cfg = runner.resolve_params(p)
        assert cfg.run.method == "livt", p
    for name in ("livt_cifar10_lt", "livt_digits"):
        runner.expand_runs(runner.load_suite(f"params/suites/{name}.yaml"))


def test_throughput_probe_and_h100_bounds(tmp_path):
    # performance.md §3: MAE ViT-B @224 (9.69 GMAC forward) 13,588 / 6,794 img/s at 100 / 50 % MFU;
    # ViT-B/16 @224 full fine-tuning (17.58 GMAC) 3,745 at 50 %
    assert livt.h100_bound(9.69e9, 1.0) == pytest.approx(13588, abs=1)
    assert livt.h100_bound(9.69e9, 0.5) == pytest.approx(6794, abs=1)
    assert livt.h100_bound(17.58e9, 0.5) == pytest.approx(3745, abs=1)
    import pandas as pd

    from ltr_core import bench, cli

    # `ltr bench --livt`: both stages through livt.stage_throughput, bounds from the forward MACs
    out = tmp_path / "perf"
    assert cli.main(["bench", "--livt", "params/smoke/digits_livt.yaml", "--set", "batch_size=16", "--set",
                     "livt_mgp_batch_size=16", "--steps", "1", "--warmup", "1", "--device", "cpu",
                     "--out", str(out)]) == 0
    rows = pd.read_csv(out / "livt_throughput.csv").to_dict("records")
    assert [r["stage"] for r in rows] == ["MGP (MAE)", "BFT (ViT)"]
    for r in rows:
        assert r["images_per_second"] > 0 and r["images_per_cpu_second"] > 0 and r["batch_size"] == 16
        assert r["h100_bound_50"] == pytest.approx(r["h100_bound_100"] / 2, rel=1e-5)
        assert r["train_gflop_per_image"] == pytest.approx(6 * r["forward_gmacs_per_image"], rel=1e-5)
        assert r["h100_bound_100"] == pytest.approx(790e12 / (r["train_gflop_per_image"] * 1e9), rel=1e-5)
        assert r["fraction_of_bound"] == pytest.approx(
            r["images_per_cpu_second"] * r["train_gflop_per_image"] / (r["peak_tflops"] * 1e3), rel=1e-4)
    assert rows[0]["encoder_tokens"] == 1 + 4 and rows[1]["encoder_tokens"] == 1 + 16  # 16 patches, 75 % masked
    md = (out / "livt_throughput.md").read_text()
    assert "| MGP (MAE) | 16 | 4 | 5 | 16 |" in md and "Command: `ltr " in md
    with pytest.raises(ValueError, match="method: livt"):
        bench.bench_livt(REPO / "params/digits_lt/ce.yaml", steps=1, warmup=0, device="cpu")
    # the MAE forward is cheaper than the full ViT forward (encoder on a quarter of the patches)
    enc = build_vit("vit_base_patch16_224", image_size=224)
    from ltr_core.models.mae import mae_forward_macs, vit_forward_macs
    assert vit_forward_macs(enc) / 1e9 == pytest.approx(17.56, abs=0.01)  # performance.md §10
    assert mae_forward_macs(enc, 512, 8, 0.75) / 1e9 == pytest.approx(9.69 + 0.087, abs=0.01)  # + patch embed of all 196
