"""CLIP through open_clip: loading, preprocessing facts, text features, visual features.

One entry point, :func:`load_clip(name, pretrained)`, shared by every CLIP family (zero-shot,
PEL/LIFT, VL-LTR, TailCLIP):

* ``name`` is any open_clip model name (``open_clip.list_models()``) or one of the tiny random
  configs shipped here for tests (``ltr-tiny-vit``, ``ltr-tiny-rn``: 32 px, a few layers);
* ``pretrained`` is empty (random init), an open_clip tag (``openai``, ``laion2b_s34b_b88k``, ...;
  downloaded where a network exists), or a local checkpoint file;
* OpenAI weights were trained with **QuickGELU**: open_clip's plain ``ViT-B-16`` config uses GELU,
  so ``pretrained="openai"`` on a non-``-quickgelu`` name is loaded with ``force_quick_gelu`` and
  the activation actually built is recorded (:attr:`Clip.activation`) — a fine-tuned OpenAI
  checkpoint reloaded under a GELU config would silently change the network (open_clip#771);
* preprocessing (mean, std, input size, resize interpolation) comes from the model's own config;
  the interpolation can be overridden and is always recorded (bilinear vs bicubic moves zero-shot
  ImageNet-LT accuracy by ≈0.6 point, LIFT#13).

Text side: ``class_prompts`` fills a template per class ("a photo of a {}." with underscores as
spaces); :func:`encode_text` returns L2-normalised text embeddings t_c; :func:`text_classifier`
averages normalised embeddings over templates and renormalises (the prompt-ensemble zero-shot
classifier of Radford et al., ICML 2021). Visual side: :func:`image_features` gives the projected
embedding (what zero-shot CLIP compares with t_c) or, with ``project=False``, the feature before
the visual projection (``ln_post`` of the CLS token for ViTs: PEL's head input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parent / "clip_configs"
TINY_MODELS = ("ltr-tiny-vit", "ltr-tiny-rn")
OPENAI_TAG = "openai"


class ClipError(ValueError):
    """An unknown CLIP model, an unusable pretrained tag or file, or a tower this code does not know."""


def _open_clip():
    import open_clip

    if not getattr(open_clip, "_ltr_tiny_registered", False):
        open_clip.add_model_config(CONFIG_DIR)
        open_clip._ltr_tiny_registered = True
    return open_clip


@dataclass
class Clip:
    """A loaded CLIP: the open_clip model, its tokenizer and the preprocessing it expects."""

    model: nn.Module
    tokenizer: object
    name: str
    pretrained: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    activation: str
    info: dict = field(default_factory=dict)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def is_vit(self) -> bool:
        return hasattr(self.model.visual, "transformer") and hasattr(self.model.visual, "class_embedding")

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text space."""
        return int(self.model.text_projection.shape[1]) if isinstance(self.model.text_projection, torch.Tensor) \
            else int(self.model.visual.output_dim)

    @property
    def feature_dim(self) -> int:
        """Dimension of :func:`image_features` with ``project=False`` (768 for ViT-B/16, 1024 for RN50)."""
        v = self.model.visual
        if self.is_vit and getattr(v, "proj", None) is not None:
            return int(v.proj.shape[0])
        return int(v.output_dim)

    def record(self) -> dict:
        """What results.json / config records about this CLIP."""
        return {"clip_model": self.name, "clip_pretrained": self.pretrained, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                "activation": self.activation, **self.info}


def activation_name(model: nn.Module) -> str:
    """``QuickGELU`` or ``GELU``: the MLP activation the towers were built with."""
    names = {type(m).__name__ for m in model.modules()}
    if "QuickGELU" in names:
        return "QuickGELU"
    return "GELU" if "GELU" in names else "other"


def _resolve_pretrained(oc, name: str, pretrained: str) -> tuple[str | None, dict]:
    """(what open_clip.create_model gets, extra kwargs) for a tag, a file or nothing."""
    if not pretrained:
        return None, {}
    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser()), {}
    if pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or "/" in pretrained:
        raise ClipError(f"clip_pretrained {pretrained!r} looks like a file but does not exist")
    tags = oc.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ClipError(f"open_clip has no pretrained tag {pretrained!r} for {name!r}; "
                        f"tags for this model: {tags or 'none'} (or give a local checkpoint file)")
    kwargs = {}
    if pretrained == OPENAI_TAG and not name.endswith("-quickgelu"):
        kwargs["force_quick_gelu"] = True
    return pretrained, kwargs


def load_clip(name: str, pretrained: str = "", *, device: str | torch.device = "cpu",
              interpolation: str | None = None, cache_dir: str | None = None) -> Clip:
    """Build an open_clip model by name with weights from a tag, a file, or none (random init).

    Raises :class:`ClipError` with the valid names/tags, or how to fetch the weights offline.
    """
    oc = _open_clip()
    if name not in oc.list_models():
        raise ClipError(f"unknown CLIP model {name!r}; open_clip models include "
                        f"{', '.join(m for m in oc.list_models() if m.startswith(('ViT-B', 'RN50')))} ... "
                        f"and the tiny test configs {TINY_MODELS}")
    weights, kwargs = _resolve_pretrained(oc, name, pretrained)
    try:
        model = oc.create_model(name, pretrained=weights, device=device, cache_dir=cache_dir, **kwargs)
    except (OSError, RuntimeError) as err:
        if weights and not Path(weights).is_file():
            raise ClipError(
                f"could not fetch the open_clip weights {name}/{pretrained} ({type(err).__name__}: {err}); "
                f"without a network, download them elsewhere and pass the file as clip_pretrained") from None
        raise ClipError(f"could not load {weights or 'a random'} checkpoint into {name}: {err}") from None
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", model.visual.image_size)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return Clip(model=model, tokenizer=oc.get_tokenizer(name), name=name, pretrained=pretrained, image_size=size,
                mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
                interpolation=interpolation or cfg.get("interpolation", "bicubic"),
                activation=activation_name(model))


def class_prompts(class_names: Sequence[str], template: str = "a photo of a {}.") -> list[str]:
    """One prompt per class: ``template`` filled with the class name, underscores as spaces."""
    if "{}" not in template:
        raise ClipError(f"prompt template {template!r} needs a '{{}}' where the class name goes")
    return [template.format(str(c).replace("_", " ").strip()) for c in class_names]


@torch.no_grad()
def encode_text(clip: Clip, texts: Sequence[str], *, device: str | torch.device = "cpu",
                batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
    """Text embeddings [len(texts), embed_dim] (float32, on ``device``), L2-normalised by default."""
    was_training = clip.model.training
    clip.model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(list(texts[i:i + batch_size])).to(device)
        out.append(clip.model.encode_text(tokens).float())
    clip.model.train(was_training)
    t = torch.cat(out) if out else torch.empty(0, clip.embed_dim, device=device)
    return F.normalize(t, dim=-1) if normalize else t


def text_classifier(clip: Clip, class_names: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",),
                    *, device: str | torch.device = "cpu") -> torch.Tensor:
    """Zero-shot weights [C, embed_dim]: t_c = normalize(mean_k normalize(E_text(template_k(c))))."""
    per_template = torch.stack([encode_text(clip, class_prompts(class_names, t), device=device) for t in templates])
    return F.normalize(per_template.mean(0), dim=-1)


def image_features(clip: Clip, x: torch.Tensor, *, project: bool = True) -> torch.Tensor:
    """Image embedding [B, embed_dim] (``project=True``) or the feature before the visual projection.

    For ViTs the unprojected feature is ``ln_post`` of the pooled (CLS) token, [B, width]; ResNet
    towers end in an attention pool that already projects, so both are the same there.
    Uses open_clip's ``VisionTransformer._embeds / transformer / _pool`` (open_clip >= 2.24).
    """
    v = clip.model.visual
    if project or not clip.is_vit:
        return v(x)
    tokens = v.transformer(v._embeds(x))
    pooled, _ = v._pool(tokens)
    return pooled


def visual_projection(clip: Clip) -> torch.Tensor | None:
    """The visual projection P [width, embed_dim] of a ViT tower (None for ResNet towers)."""
    return getattr(clip.model.visual, "proj", None) if clip.is_vit else None


def logit_scale(clip: Clip) -> torch.Tensor:
    """exp(logit_scale): the learnt temperature of CLIP's cosine logits (100 for OpenAI weights)."""
    return clip.model.logit_scale.exp()
