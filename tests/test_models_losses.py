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


def test_head_init_unit_norm_is_ldam_normed_linear():
    """LDAM-DRW's NormedLinear draws U(-1, 1) and renorms every class vector to norm 1; the default cosine head
    keeps U(-1, 1) (norm ~ sqrt(d/3) = 4.6 at d = 64). Same draw, so the same logits at init; the weight
    gradient scales with 1/|w_c|, so it is |w_c| times larger per class at the unit-norm init."""
    heads, grads = {}, {}
    x = torch.randn(8, 3, 32, 32)
    for init in ("default", "unit_norm"):
        torch.manual_seed(0)
        model = build_model(from_params({"model": "resnet32", "head": "cosine", "cosine_scale": 1.0,
                                         "head_init": init}).model, 10, image_size=32)
        model.eval()
        z = model(x)
        (30 * z).logsumexp(1).sum().backward()
        heads[init], grads[init] = (model.head.weight.detach().clone(), z.detach()), model.head.weight.grad.norm(dim=1)
    norms = heads["default"][0].norm(dim=1)
    assert torch.allclose(heads["unit_norm"][0].norm(dim=1), torch.ones(10), atol=1e-6)
    assert norms.mean().item() == pytest.approx((64 / 3) ** 0.5, rel=0.1)
    assert torch.allclose(heads["unit_norm"][1], heads["default"][1], atol=1e-5)
    assert torch.allclose(grads["unit_norm"], grads["default"] * norms, rtol=1e-4)
    with pytest.raises(ModelError, match="cosine head"):
        build_model(from_params({"model": "resnet32", "head_init": "unit_norm"}).model, 10, image_size=32)


def test_head_init_sigmoid_prior_and_no_decay_on_the_head_bias():
    """The CB repository's sigmoid/focal head: bias -log(C - 1) (sigmoid 1/C for every class), Glorot-uniform
    weight (bound sqrt(6 / (d + C))); head_bias_decay: false puts that bias alone in a group without weight
    decay, so one SGD step on a zero loss moves every other tensor by -lr * wd * p and leaves the bias."""
    from ltr_core.engine import build_optimizer
    from ltr_core.optim import model_param_groups

    cfg = from_params({"model": "resnet32", "head_init": "sigmoid_prior", "head_bias_decay": False,
                       "weight_decay": 0.5, "lr": 0.1, "momentum": 0.0})
    torch.manual_seed(0)
    model = build_model(cfg.model, 10, image_size=32)
    assert torch.allclose(model.head.bias, torch.full((10,), -float(np.log(9))))
    assert torch.sigmoid(model.head.bias).detach().numpy() == pytest.approx(np.full(10, 0.1))
    bound = (6 / (64 + 10)) ** 0.5
    assert model.head.weight.abs().max() <= bound and model.head.weight.abs().max() > 0.9 * bound
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model_param_groups(model, cfg.optim), cfg.optim)
    (0 * model(torch.randn(2, 3, 32, 32)).sum()).backward()
    opt.step()
    for n, p in model.named_parameters():
        factor = 1.0 if n == "head.bias" else 1 - 0.1 * 0.5
        assert torch.allclose(p.detach(), factor * before[n]), n
    # the default keeps one group (weight decay on the bias too); a head without a bias is refused
    assert len(build_optimizer(model_param_groups(model, from_params({}).optim), cfg.optim).param_groups) == 1
    cosine = build_model(from_params({"model": "resnet32", "head": "cosine"}).model, 10, image_size=32)
    with pytest.raises(ValueError, match="head_bias_decay"):
        model_param_groups(cosine, cfg.optim)
    with pytest.raises(ModelError, match="linear head"):
        build_model(from_params({"model": "resnet32", "head": "cosine", "head_init": "sigmoid_prior"}).model, 10,
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
