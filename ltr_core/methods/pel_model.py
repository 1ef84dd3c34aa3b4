"""The CLIP pieces of the CLIP families (PEL/LIFT, zero-shot CLIP, VL-LTR): the run's CLIP, the data at
CLIP's input size and normalisation, its loaders, text classifiers, the pre-projection feature and PEL's
classifier module (tuned tower + cosine head; formulas in :mod:`ltr_core.methods.pel`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from ..data import LTData, make_loader
from ..data.base import DataError
from ..data.image_list import ImageFileDataset
from ..data.loaders import FileLoader
from ..data.samplers import build_sampler
from ..data.transforms import eval_transform, train_transform
from ..models.clip import Clip, load_clip, text_classifier, visual_projection
from ..models.heads import CosineHead
from ..models.peft import apply_peft, count_parameters
from ..study import loader_kwargs
from ..tte import average_views

ZERO_SHOT_SCALE = 100.0


# ----------------------------------------------------------------------------------------------
# CLIP, data, loaders and text


def load_run_clip(cfg: RunConfig, device) -> Clip:
    """The run's CLIP (``clip_model``, ``clip_pretrained``, ``clip_interpolation``) on ``device``."""
    return load_clip(cfg.clip.clip_model, cfg.clip.clip_pretrained, device=device,
                     interpolation=cfg.clip.clip_interpolation)


def clip_data(data: LTData, clip: Clip) -> LTData:
    """The dataset with CLIP's normalisation and input size (what the towers were trained with)."""
    if data.train.images is not None and data.train.images.shape[1] != 3:
        raise DataError(f"{data.name}: CLIP needs 3-channel images, got {data.train.images.shape[1]} channels")
    return dataclasses.replace(data, mean=tuple(clip.mean), std=tuple(clip.std), image_size=int(clip.image_size))


def clip_loader(cfg: RunConfig, data: LTData, split: str, *, train: bool, device):
    """Loader at CLIP's input size and normalisation (``data`` from :func:`clip_data`), the run's batch sizes.

    Small images (CIFAR, digits): the device path (``augment_mode``, e.g. rrc 32 -> 224; bilinear). Image
    files: ``make_loader`` (its backends and DDP sharding) when ``clip_interpolation`` is bilinear, else PIL
    workers with bicubic RandomResizedCrop + flip (train) / Resize(S/0.875) + CenterCrop(S) (eval).
    """
    part = data.split(split)
    if part.images is not None or cfg.clip.clip_interpolation == "bilinear":
        return make_loader(data, split, device=device, **loader_kwargs(cfg, train=train))
    interp = cfg.clip.clip_interpolation
    backend = (getattr(data, "input_options", None) or {}).get("file_backend", "pil")
    if backend != "pil":
        raise DataError(f"file_backend={backend} resizes bilinearly, but clip_interpolation={interp}: set "
                        f"clip_interpolation: bilinear to read the files that way, or file_backend: pil for {interp}")
    if train and cfg.data.augment:
        transform = train_transform(data.image_size, data.mean, data.std, scale=(cfg.data.rrc_scale_min, 1.0),
                                    interpolation=interp)
    else:
        transform = eval_transform(data.image_size, data.mean, data.std, interpolation=interp)
    sampler = build_sampler(cfg.data.sampler, part.labels, seed=cfg.run.seed, epochs=cfg.train.epochs) if train else None
    return FileLoader(ImageFileDataset(part.paths, part.labels, transform), device=device, sampler=sampler,
                      batch_size=cfg.train.batch_size if train else cfg.train.eval_batch_size, seed=cfg.run.seed,
                      num_workers=cfg.data.num_workers)


def templates(cfg: RunConfig) -> tuple[str, ...]:
    """``clip_prompt`` alone, or CLIP's 80 ImageNet templates (open_clip's OPENAI_IMAGENET_TEMPLATES)."""
    if cfg.pel.pel_templates == "single":
        return (cfg.clip.clip_prompt,)
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def text_weights(clip: Clip, class_names, cfg: RunConfig, device) -> torch.Tensor:
    """t_c [C, embed_dim], L2-normalised (template ensemble averaged, then renormalised)."""
    empty = [i for i, n in enumerate(class_names) if not str(n).strip()]
    if empty:
        raise DataError(f"classes {empty[:10]} have no name: CLIP needs a text for every class "
                        f"(fix the dataset's class list)")
    return text_classifier(clip, list(class_names), templates(cfg), device=device)


def head_init(clip: Clip, t: torch.Tensor) -> torch.Tensor:
    """Classifier weights from text features: w_c = normalize(t_c Pᵀ) (ViT) or t_c (ResNet)."""
    proj = visual_projection(clip)
    w = t if proj is None else t @ proj.detach().to(t.dtype).T
    return F.normalize(w, dim=-1)


def visual_features(visual: nn.Module, x: torch.Tensor, *, is_vit: bool, project: bool = False) -> torch.Tensor:
    """Pre-projection feature (ViT: ln_post(CLS); ResNet: attention pool), or the projected embedding."""
    if project or not is_vit:
        return visual(x)
    return visual._pool(visual.transformer(visual._embeds(x)))[0]


# ----------------------------------------------------------------------------------------------
# PEL's classifier


class ClipClassifier(nn.Module):
    """logits = head(f(x)), f the (tuned) visual tower's pre-projection feature; views [B, V, C, H, W]
    are averaged in logit space (TTE).

    ``state_dict`` holds only trainable tensors and buffers (tuners, head; the whole blocks for
    ``full``); ``load_state_dict`` accepts that and insists only on the trainable ones. BatchNorm
    statistics of a frozen ResNet tower stay fixed in training (``freeze_norm_stats``).
    """

    def __init__(self, visual: nn.Module, head: nn.Module, *, is_vit: bool, freeze_norm_stats: bool = True):
        super().__init__()
        self.visual, self.head = visual, head
        self.is_vit, self.freeze_norm_stats = is_vit, freeze_norm_stats

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return visual_features(self.visual, x, is_vit=self.is_vit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return average_views(lambda v: self.head(self.features(v)), x)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_norm_stats:
            for m in self.visual.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _frozen(self) -> set[str]:
        return {n for n, p in self.named_parameters() if not p.requires_grad}

    def state_dict(self, *args, **kwargs):
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        frozen = {prefix + n for n in self._frozen()}
        for k in [k for k in full if k in frozen]:
            del full[k]
        return full

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        missing, unexpected = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = self._frozen()
        missing = [k for k in missing if k not in frozen]
        if strict and (missing or unexpected):
            raise RuntimeError(f"ClipClassifier.load_state_dict: missing trainable tensors {missing[:5]}, "
                               f"unexpected {unexpected[:5]} (was the checkpoint made with another pel_peft?)")
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


def build_head(cfg: RunConfig, clip: Clip, class_names, device) -> tuple[CosineHead, torch.Tensor | None]:
    """Cosine head (scale ``pel_scale``) on the pre-projection feature, text-initialised unless ``pel_init=random``."""
    head = CosineHead(clip.feature_dim, len(class_names), scale=cfg.pel.pel_scale).to(device)
    t = None
    if cfg.pel.pel_init == "text":
        t = text_weights(clip, class_names, cfg, device)
        with torch.no_grad():
            head.weight.copy_(head_init(clip, t))
    return head, t


def build_model(cfg: RunConfig, clip: Clip, data: LTData, device) -> tuple[ClipClassifier, dict]:
    """apply_peft(pel_peft) on the visual tower + the text-initialised cosine head; returns (model, counts)."""
    tower = apply_peft(clip, cfg.pel.pel_peft, num_classes=data.num_classes, bottleneck=cfg.pel.pel_bottleneck,
                       vpt_length=cfg.pel.pel_vpt_length, partial=cfg.pel.pel_partial)
    head, _ = build_head(cfg, clip, data.class_names, device)
    model = ClipClassifier(clip.model.visual, head, is_vit=clip.is_vit,
                           freeze_norm_stats=cfg.pel.pel_peft != "full").to(device)
    counts = {"tower": count_parameters(tower), "head": count_parameters(head.parameters())}
    counts["total"] = counts["tower"] + counts["head"]
    return model, counts


class ZeroShotHead(nn.Module):
    """z_c = scale · cos(e, t_c) on the projected image embedding e (CLIP's zero-shot classifier)."""

    def __init__(self, text: torch.Tensor, scale: float = ZERO_SHOT_SCALE):
        super().__init__()
        self.register_buffer("weight", F.normalize(text.float(), dim=-1))
        self.scale = scale

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(e.float(), dim=-1) @ self.weight.T
