"""ResNet-32 shape/size, the timm factory, heads, and the CE loss against its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltr_core.config import from_params
from ltr_core.losses import CrossEntropy, build_loss
from ltr_core.models import CosineHead, ModelError, build_backbone, build_model, is_cnn, resnet32


def test_resnet32_is_the_ldam_backbone():
    m = resnet32()
    assert sum(p.numel() for p in m.parameters()) == 463_504  # 0.46 M, no shortcut parameters
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert m.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)
    convs = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 31  # 1 stem + 3 stages x 5 blocks x 2 convs (+ the linear head = 32 layers)


def test_timm_backbone_any_name_and_clear_error():
    b = build_backbone("resnet10t", image_size=32)
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, b.num_features)
    vit = build_backbone("vit_tiny_patch16_224", image_size=32)
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 192)
    assert is_cnn(b) and not is_cnn(vit)
    with pytest.raises(ModelError, match="unknown model 'resnet_33'"):
        build_backbone("resnet_33")


def test_local_pretrained_file_roundtrip(tmp_path):
    from safetensors.torch import save_file

    src = resnet32()
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = build_backbone("resnet32", pretrained=str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    src.eval(); dst.eval()
    assert torch.allclose(src(x), dst(x))
    with pytest.raises(ModelError, match="not found"):
        build_backbone("resnet32", pretrained=str(tmp_path / "nope.safetensors"))


def test_cosine_head_formula():
    head = CosineHead(4, 3, scale=16.0)
    f = torch.randn(5, 4)
    expected = 16.0 * (f / f.norm(dim=1, keepdim=True)) @ (head.weight / head.weight.norm(dim=1, keepdim=True)).T
    assert torch.allclose(head(f), expected, atol=1e-5)


def test_build_model_classifier():
    cfg = from_params({"model": "resnet32", "head": "cosine"})
    m = build_model(cfg.model, 7, image_size=32)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_head_init_kaiming_normal_is_the_ldam_code_fc_init():
    """LDAM-DRW's CIFAR ResNet applies kaiming_normal_ to its fc layer too: weight ~ N(0, 2/d), d = 64; the
    default keeps nn.Linear's U(-1/sqrt(d), 1/sqrt(d)) (std 1/sqrt(3d)). Wide head so the std is measurable."""
    stds = {}
    for init in ("default", "kaiming_normal"):
        torch.manual_seed(0)
        model = build_model(from_params({"model": "resnet32", "head_init": init}).model, 4000, image_size=32)
        w = model.head.weight.detach()
        stds[init] = (w.std().item(), w.abs().max().item())
    assert stds["kaiming_normal"][0] == pytest.approx((2 / 64) ** 0.5, rel=0.02)
    assert stds["default"][0] == pytest.approx((1 / (3 * 64)) ** 0.5, rel=0.02) and stds["default"][1] <= 1 / 8
    with pytest.raises(ModelError, match="linear head"):
        build_model(from_params({"model": "resnet32", "head": "cosine", "head_init": "kaiming_normal"}).model, 10,
                    image_size=32)


def test_cross_entropy_matches_formula():
    torch.manual_seed(0)
    z, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    logp = z - z.logsumexp(1, keepdim=True)
    plain = -logp[torch.arange(6), y].mean()
    assert torch.allclose(CrossEntropy()(z, y), plain, atol=1e-6)
    eps = 0.1
    q = torch.full((6, 5), eps / 5)
    q[torch.arange(6), y] += 1 - eps
    smoothed = -(q * logp).sum(1).mean()
    assert torch.allclose(CrossEntropy(label_smoothing=eps)(z, y), smoothed, atol=1e-6)


def test_build_loss_unknown_name():
    cfg = from_params({"loss": "ce"})
    assert isinstance(build_loss(cfg.loss, np.array([5, 3])), CrossEntropy)
    with pytest.raises(ValueError, match="valid losses"):
        build_loss(type("L", (), {"loss": "nope"})(), [1])
