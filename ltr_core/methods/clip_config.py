"""The config section of the CLIP backbone shared by PEL, zero-shot CLIP, VL-LTR and TailCLIP: its keys, defaults and help, beside the method.

Imported by :mod:`ltr_core.config` (torch-free, as config validation must be); the keys enter the config
hash of the methods listed in ``METHODS`` only (:mod:`ltr_core.config_families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ClipSection:
    """A CLIP model through open_clip, shared by every CLIP-based family."""

    METHODS: ClassVar[tuple[str, ...]] = ("pel", "zeroshot", "vlltr", "tailclip")
    clip_model: str = "ViT-B-16"  # open_clip model name (OpenAI weights: a -quickgelu name or pretrained=openai)
    clip_pretrained: str = ""  # open_clip pretrained tag (e.g. openai) or a local checkpoint file; empty: random init
    clip_interpolation: str = "bicubic"  # resize interpolation of the image preprocessing: bicubic | bilinear
    clip_prompt: str = "a photo of a {}."  # text template of the class prompts
