"""The config section of LiVT (ltr_core.methods.livt): its keys, defaults and help, beside the method.

Imported by :mod:`ltr_core.config` (torch-free, as config validation must be); the keys enter the config
hash of the methods listed in ``METHODS`` only (:mod:`ltr_core.config_families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class LiVTSection:
    """LiVT: masked generative pretraining + balanced fine-tuning (Xu et al., CVPR 2023)."""

    METHODS: ClassVar[tuple[str, ...]] = ("livt",)
    # ViT shape (the timm `model` with these overrides; 0: the model's own value)
    livt_patch_size: int = 0  # patch size p (CIFAR 4 or 8 at 32/64 px); 0: the timm model's (16)
    livt_vit_width: int = 0  # embedding width D of a custom-size ViT; 0: the model's (ViT-B 768)
    livt_vit_depth: int = 0  # encoder blocks L; 0: the model's (ViT-B 12)
    livt_vit_heads: int = 0  # attention heads; 0: the model's (ViT-B 12)
    # MGP: masked generative pre-training (MAE on the long-tailed train images, no labels)
    livt_mgp_epochs: int = 800  # MGP epochs (paper 800); 0: no MGP (BFT from init_run, or from scratch)
    livt_mgp_batch_size: int = 4096  # MGP effective batch (paper 4096 ImageNet-LT, 3072 iNat)
    livt_mgp_accum_steps: int = 1  # MGP micro-batches per step (batch split on the device)
    livt_mgp_blr: float = 1.5e-4  # MGP base lr: lr = blr * livt_mgp_batch_size / 256 (paper 1.5e-4)
    livt_mgp_warmup_epochs: float = 40.0  # MGP linear warm-up epochs, then half-cycle cosine to 0 (paper 40)
    livt_mgp_weight_decay: float = 0.05  # MGP AdamW weight decay, none on 1-D params (paper 0.05)
    livt_mgp_beta2: float = 0.95  # MGP AdamW beta2 (beta1 0.9; paper 0.95)
    livt_mgp_image_size: int = 0  # MGP input size; 0: image_size (iNat 128 then BFT 224, pos-emb resampled)
    livt_mgp_rrc_scale_min: float = 0.2  # MGP RandomResizedCrop smallest area fraction (paper 0.2)
    livt_mask_ratio: float = 0.75  # fraction of patches masked per image (paper 0.75)
    livt_norm_pix_loss: bool = True  # targets = per-patch normalised pixels (p - mean) / sqrt(var + 1e-6)
    livt_decoder_width: int = 512  # MAE decoder width (paper 512)
    livt_decoder_depth: int = 8  # MAE decoder blocks (paper 8)
    livt_decoder_heads: int = 16  # MAE decoder attention heads (paper 16)
    # BFT: balanced fine-tuning (loss = bal_bce with bal_bce_tau; lr, epochs, ... are the core keys)
    livt_layer_decay: float = 0.75  # layer-wise lr decay: block l gets lr * decay^(L+1-l) (IN-LT 0.75, iNat/CIFAR 0.65)
    livt_drop_path: float = 0.1  # stochastic depth rate of the last block (linear in depth; paper 0.1, iNat-384 0.2)
    livt_global_pool: str = "avg"  # avg: mean of patch tokens (cls excluded) -> fc_norm -> head | token: cls token
    livt_head_init_std: float = 2e-5  # trunc-normal std of the classifier weights (MAE fine-tuning 2e-5)
    livt_randaug_ops: int = 2  # RandAugment ops per image (rand-m9-mstd0.5-inc1: 2); 0: off
    livt_randaug_magnitude: float = 9.0  # RandAugment magnitude m of 10 (paper 9)
    livt_randaug_mstd: float = 0.5  # std of the Gaussian noise on m per op (paper 0.5)
    livt_randaug_prob: float = 0.5  # probability that each drawn op is applied (timm 0.5)
    livt_reprob: float = 0.25  # random erasing probability per image (pixel mode, 1 box; paper 0.25)
    livt_mixup_alpha: float = 0.8  # mixup Beta(alpha, alpha); 0: off (paper 0.8)
    livt_cutmix_alpha: float = 1.0  # cutmix Beta(alpha, alpha); 0: off (paper 1.0)
    livt_mixup_prob: float = 1.0  # probability of mixing a batch (paper 1.0)
    livt_mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on (paper 0.5)
