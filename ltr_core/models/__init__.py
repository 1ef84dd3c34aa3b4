"""Backbones (the CIFAR ResNet-32 and any timm model), heads, and the classifier that joins them.

``build_model(model_cfg, num_classes, image_size)`` is the one factory; a backbone is any module
mapping images to pooled features with a ``num_features`` attribute.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .heads import HEADS, CosineHead, LinearHead, build_head
from .resnet10 import resnet10
from .resnet_cifar import CifarResNet, resnet32

LOCAL_BACKBONES = {"resnet32": resnet32, "resnet10": resnet10}  # resnet10: OLTR ImageNet-LT (BasicBlock [1,1,1,1])


class ModelError(ValueError):
    """An unknown model name or unusable pretrained weights."""


class Classifier(nn.Module):
    """logits = head(dropout(backbone(x))); ``features(x)`` gives the pooled feature."""

    def __init__(self, backbone: nn.Module, head: nn.Module, drop_rate: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


def build_backbone(name: str, *, pretrained: str = "", image_size: int = 224, in_chans: int = 3) -> nn.Module:
    """A feature extractor by name: ``resnet32`` or any timm model (pooled features, no classifier).

    ``pretrained`` is empty (random init), a local weights file (.safetensors / .pth), or a timm
    pretrained tag (``resnet50`` + ``a1_in1k`` -> ``resnet50.a1_in1k``, downloaded where a network exists).
    """
    if name in LOCAL_BACKBONES:
        backbone = LOCAL_BACKBONES[name](in_chans=in_chans)
        if pretrained:
            _load_local(backbone, pretrained)
        return backbone
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise ModelError(
            f"unknown model {name!r}: use one of {sorted(LOCAL_BACKBONES)} or a timm model name "
            f"(timm.list_models('resnet*') lists them)"
        )
    kwargs: dict = {"num_classes": 0, "in_chans": in_chans}
    if pretrained and Path(pretrained).is_file():
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
    elif pretrained:
        name = f"{name}.{pretrained}"
        kwargs.update(pretrained=True)
    try:
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError:  # models without an img_size argument (CNNs)
        return timm.create_model(name, **kwargs)


def _load_local(module: nn.Module, path: str) -> None:
    if not Path(path).is_file():
        raise ModelError(f"pretrained weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected:
        raise ModelError(f"{path}: weights do not match the model (unexpected keys {unexpected[:5]}...)")


def is_cnn(model: nn.Module) -> bool:
    """True when the model has conv layers and no attention (channels_last helps these)."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    has_attn = any("attn" in n.split(".")[-1] for n, _ in model.named_modules())
    return has_conv and not has_attn


def build_model(model_cfg, num_classes: int, *, image_size: int, in_chans: int = 3) -> Classifier:
    """Backbone from ``model_cfg.model`` + head from ``model_cfg.head``; ``head_init: kaiming_normal`` draws the
    linear head's weight from N(0, 2/d) as LDAM-DRW's CIFAR ResNet code does (its init covers the fc layer);
    ``head_init: unit_norm`` starts the cosine head's class vectors at ‖w_c‖ = 1, as LDAM-DRW's NormedLinear
    (U(-1, 1) renormed; the default U(-1, 1) gives ‖w_c‖ ≈ √(d/3), 4.6 at d = 64). The cosine's gradient
    in w_c scales with 1/‖w_c‖, so the class vectors' angular step scales with 1/‖w_c‖²: about 21x smaller
    at the default init under the same lr, and weight decay shrinks ‖w_c‖ only slowly (×0.7 over 200 epochs).
    ``head_init: sigmoid_prior`` is the linear head of Cui et al.'s class-balanced code for its sigmoid and focal
    losses: Glorot-uniform weight (TensorFlow's dense default) and bias b = −log(C − 1), so every class's sigmoid
    starts at 1/C instead of 1/2 (the π = 1/C prior of the CB paper, §4)."""
    backbone = build_backbone(model_cfg.model, pretrained=model_cfg.pretrained, image_size=image_size, in_chans=in_chans)
    head = build_head(model_cfg.head, backbone.num_features, num_classes, cosine_scale=model_cfg.cosine_scale)
    init = getattr(model_cfg, "head_init", "default")
    if init == "kaiming_normal":
        if not isinstance(head, LinearHead):
            raise ModelError(f"head_init: kaiming_normal applies to the linear head, not {model_cfg.head!r}")
        nn.init.kaiming_normal_(head.weight)
    elif init == "unit_norm":
        if not isinstance(head, CosineHead):
            raise ModelError(f"head_init: unit_norm applies to the cosine head, not {model_cfg.head!r}")
        with torch.no_grad():  # LDAM-DRW's NormedLinear: U(-1, 1), then every class vector rescaled to norm 1
            head.weight.div_(head.weight.norm(dim=1, keepdim=True))
    elif init == "sigmoid_prior":
        if not isinstance(head, LinearHead) or head.bias is None:
            raise ModelError(f"head_init: sigmoid_prior applies to the linear head with a bias, not {model_cfg.head!r}")
        nn.init.xavier_uniform_(head.weight)
        nn.init.constant_(head.bias, -math.log(num_classes - 1))
    return Classifier(backbone, head, model_cfg.drop_rate)


__all__ = [
    "Classifier", "CifarResNet", "CosineHead", "HEADS", "LinearHead", "ModelError",
    "build_backbone", "build_head", "build_model", "is_cnn", "resnet32",
]
