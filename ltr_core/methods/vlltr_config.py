"""The config section of VL-LTR (ltr_core.methods.vlltr): its keys, defaults and help, beside the method.

Imported by :mod:`ltr_core.config` (torch-free, as config validation must be); the keys enter the config
hash of the methods listed in ``METHODS`` only (:mod:`ltr_core.config_families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class VLLTRSection:
    """VL-LTR: class-wise visual-linguistic pretraining + language-guided head (Tian et al., ECCV 2022)."""

    METHODS: ClassVar[tuple[str, ...]] = ("vlltr",)
    vlltr_text_sources: tuple[str, ...] = ()  # class text: templates (80 CLIP prompts) | wiki:<dir> | json:<file>[|fmt] | tsv:<file>[|fmt] (ltr_core.data.class_text); paper: templates + Wikipedia
    vlltr_text_root: str = ""  # folder of relative text paths; empty: $LTR_TEXT_ROOT, then data/class_text
    vlltr_max_tokens: int = 75  # sentences longer than this many CLIP BPE tokens are split (paper 75 = context 77 - SOT/EOT)
    vlltr_stage1_epochs: int = 50  # CVLP epochs (paper 50 ImageNet-LT/Places-LT, 100 iNat); 0: no CVLP (initial CLIP, or init_run)
    vlltr_stage1_lr: float = 3.5e-5  # CVLP AdamW lr (paper ViT-B/16: 3.5e-5 IN-LT, 1e-5 Places, 3.5e-4 iNat)
    vlltr_stage1_batch_size: int = 128  # CVLP batch = the contrastive batch (paper 128/GPU x 8 GPUs = 1024 gathered)
    vlltr_stage1_warmup_epochs: float = 5.0  # CVLP linear warm-up epochs, then cosine to 0 (paper 5)
    vlltr_stage1_weight_decay: float = 0.05  # CVLP AdamW weight decay (none on biases, norms, scalars; paper 0.05)
    vlltr_contrast_smoothing: float = 0.1  # label smoothing of the class-wise contrastive target (paper 0.1)
    vlltr_distill_weight: float = 0.5  # beta of L = (1-beta) L_cls + beta L_kd, distillation from the frozen initial CLIP (paper 0.5)
    vlltr_clip_eval_mode: bool = True  # CVLP towers in eval mode while training (paper: train_mode=False; freezes RN BatchNorm)
    vlltr_anss_split: str = "auto"  # images that score sentences: auto (val if the dataset has one, else train) | train | val
    vlltr_anss_per_class: int = 50  # at most this many images per class feed AnSS (paper: iNat train capped at 50)
    vlltr_anchors: int = 64  # M anchor sentences kept per class (lowest L_lin; padded and masked when fewer; paper 64)
    vlltr_alpha: float = 0.2  # p = alpha softmax(z_visual) + (1-alpha) softmax(z_linguistic) (paper 0.2 IN-LT/Places, 0.7 iNat)
    vlltr_lgr_scale: float = 0.0  # scale s of the linguistic logits s cos(f, v_c), frozen; 0: exp(logit_scale) of the CVLP model (original code: the CVLP checkpoint's logit_scale; 100 for an unchanged OpenAI CLIP); > 0: this fixed value
    vlltr_text_lr: float = 1.0e-6  # stage-2 lr of the attention (W_q, W_k, LNs); the visual MLP (and encoder) get lr (paper 1e-6)
    vlltr_stage2_input: str = "cached"  # cached (frozen encoder, features of un-augmented images computed once) | online (encoder in the loop, augmented)
    vlltr_train_visual: bool = False  # stage 2 fine-tunes the CLIP image encoder (needs online; paper: iNat only)
    vlltr_detach_text_norm: bool = False  # detach |v_c| in the linguistic cosine (paper's iNat variant)
    vlltr_mixup: float = 0.0  # stage 2 online: mixup alpha (the original fine-tune inherits timm's 0.8)
    vlltr_cutmix: float = 0.0  # stage 2 online: cutmix alpha (original 1.0; with mixup: switch prob 0.5)
