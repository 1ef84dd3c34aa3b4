"""The config section of PEL/LIFT and zero-shot CLIP (ltr_core.methods.pel): its keys, defaults and help, beside the method.

Imported by :mod:`ltr_core.config` (torch-free, as config validation must be); the keys enter the config
hash of the methods listed in ``METHODS`` only (:mod:`ltr_core.config_families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class PELSection:
    """PEL/LIFT: parameter-efficient fine-tuning of CLIP (Shi et al., arXiv 2309.10019)."""

    METHODS: ClassVar[tuple[str, ...]] = ("pel", "zeroshot")
    pel_peft: str = "adaptformer"  # PEFT module: adaptformer | adapter | lora | vpt_shallow | vpt_deep | bitfit | ssf | ln_tuning | full | linear_probe (paper: adaptformer)
    pel_bottleneck: int = 0  # adaptformer/adapter bottleneck r and LoRA rank; 0: 2^floor(log2(K/(2L))) (ImageNet-LT 32, CIFAR-100 4)
    pel_vpt_length: int = 10  # VPT prompt tokens (paper 10)
    pel_partial: int = 0  # put tuners only in the last k blocks; 0: all blocks (paper)
    pel_scale: float = 25.0  # cosine classifier logit scale s, z = s cos(f, w) (paper 25)
    pel_init: str = "text"  # classifier init: text (w_c = normalize(t_c P^T), paper) | random
    pel_templates: str = "single"  # class text: single (clip_prompt, paper) | ensemble (CLIP's 80 ImageNet templates averaged)
    pel_tte: bool = True  # test-time ensembling: resize to S + pel_tte_expand, five crops, mean logits (PEL: on; no-TTE metrics are recorded too)
    pel_tte_expand: int = 24  # TTE resize = input size + expand (224 + 24 = 248; paper uses 21 for ViT-L/14)
    pel_cached_features: bool = True  # linear_probe: train the head on frozen-tower features computed once (no train augmentation); False: online with augmentation
    pel_lr_step: str = "epoch"  # when the lr schedule moves: epoch (PEL/LIFT CosineAnnealingLR stepped after each epoch, lr constant within it) | step (every optimiser step)
