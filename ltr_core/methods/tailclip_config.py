"""The config section of TailCLIP (ltr_core.methods.tailclip): its keys, defaults and help, beside the method.

Imported by :mod:`ltr_core.config` (torch-free, as config validation must be); the keys enter the config
hash of the methods listed in ``METHODS`` only (:mod:`ltr_core.config_families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class TailCLIPSection:
    """TailCLIP / LM-CLIP: multi-label long tail with CLIP (Timmermann et al.)."""

    METHODS: ClassVar[tuple[str, ...]] = ("tailclip",)
    tailclip_mode: str = "finetune"  # finetune (TailCLIP training) | zeroshot (CLIP zero-shot multi-label: no training, z = exp(t) cos(image, prompt_c))
    tailclip_loss: str = "bal"  # classification loss on z: bal (TailCLIP's Balanced Asymmetric Loss) | asl | db_focal | bce (ltr_core.multilabel_losses)
    tailclip_lambda: float = 0.4  # lambda of L = L_contrastive + lambda L_cls (VOC ViT-B/16 0.4, VOC RN50 0.2, COCO ViT-B/16 5, COCO RN50 6)
    tailclip_contrastive: float = 1.0  # weight of the CLIP contrastive loss on synthetic captions "a photo of a dog, person" (TailCLIP 1); 0: off
    tailclip_gamma_neg: float = 9.8  # gamma- of bal / asl (TailCLIP 9.8, VOC RN50 12; ASL paper 4)
    tailclip_gamma_pos: float = 0.0  # gamma+ of bal / asl (TailCLIP and ASL paper 0)
    tailclip_clip: float = 0.05  # probability margin m of bal / asl: q = min(1 - p + m, 1) (0.05)
    tailclip_label_smoothing: float = 0.1  # epsilon of bal: y~ = (1 - eps) y + eps / K (0.1; VOC RN50 0.01)
    tailclip_power: float = 1.35  # s: sampler weight (sum_{c in Y_i} N/n_c)^s and BAL class weight (N/n_c)^s (VOC ViT 1.35, VOC RN50 0.7, COCO ViT 1.6, COCO RN50 1.35)
    tailclip_sampler: str = "occurrence"  # occurrence (TailCLIP: image weights u_i, with replacement, N draws per epoch) | instance
    tailclip_peft: str = ""  # empty: full fine-tuning of both towers and the logit scale (TailCLIP); a PEFT method of ltr_core.models.peft: tuners in the visual tower, text tower frozen
    tailclip_val_fraction: float = 0.0  # held-out val split carved from train (stratified by rarest label, seed lt_seed), evaluated every eval_every epochs; 0: none (never select on test)
    tailclip_clip_preprocess: bool = False  # False: ImageNet mean/std + squash resize (the original); True: CLIP's own mean/std
    tailclip_adam_eps: float = 1.0e-9  # AdamW epsilon (TailCLIP 1e-9; betas from adam_beta1 / adam_beta2: 0.9 / 0.98)
