"""Strict run configuration built from a flat dict of notebook parameters.

A run is described by one flat mapping (a notebook's ``parameters`` cell, a params YAML file, or
``--set key=value`` overrides). :func:`from_params` routes every key to the section dataclass that
owns it, checks its type, and fails loudly on anything it does not know:

* an unknown key raises :class:`ConfigError` naming the closest valid keys and listing all of them
  (papermill only *warns* on unknown parameters, so a typo would otherwise be silently ignored);
* a value of the wrong type raises :class:`ConfigError` naming the key, the expected type and the value;
* numeric strings are coerced for float fields, so ``lr: 1e-3`` (which YAML 1.1 reads as the string
  ``'1e-3'``) becomes ``0.001``.

Flat keys are unique across sections, so ``cfg.optim.lr`` is set by the flat key ``lr``.
Params files may name a ``base`` file (or a list of them) that is loaded first and shallow-merged
(later keys win), which gives LIFT-style layering without nested dicts.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml


class ConfigError(ValueError):
    """A parameter is unknown, mistyped or out of its allowed set."""


@dataclass(frozen=True)
class RunSection:
    method: str = "erm"  # method family: see ltr_core.methods.METHODS
    seed: int = 0  # seeds model init, data order and augmentation (not the LT subset: lt_seed)
    name: str = ""  # run name; the run id is "<dataset>-<method>-<name>-s<seed>"; empty: "default"
    suite: str = "interactive"  # results/<suite>/<run_id>/ groups runs of one table
    results_root: str = "results"  # where run directories live (relative to the repo root)
    run_dir: str = ""  # explicit run directory (the runner sets it); empty: derived
    figures_dir: str = ""  # where notebooks save figures; empty: figures/<suite>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    interactive: bool = False  # tqdm bars (True in JupyterLab); papermill runs log one line per epoch
    tensorboard: bool = True  # TensorBoard scalars under <run_dir>/tb
    save_logits: bool = True  # logits.npz of the evaluation split in the run directory
    init_run: str = ""  # a finished run (directory, or run id in this suite) whose weights start this one; "{seed}" -> seed
    resume_from: str = ""  # a run directory whose last good checkpoint starts this (new) run, e.g. after a NaN stop with a lower lr


@dataclass(frozen=True)
class DataSection:
    dataset: str = "digits_lt"  # digits_lt | cifar10_lt | cifar100_lt | imagenet_lt | places_lt | inat18 | image_list
    data_root: str = ""  # images; empty: $LTR_DATA_ROOT, then data/<dataset>
    split_dir: str = ""  # split lists (ImageNet-LT/Places-LT/iNat); empty: <data_root>
    imbalance_ratio: float = 100.0  # IR = n_max / n_min of the long-tailed train split
    lt_profile: str = "exp"  # exp: n_c = floor(n_max * IR^(-c/(C-1))); step: half n_max, half n_max/IR
    lt_seed: int = 0  # seed of the LT subset selection (LDAM-DRW protocol: 0)
    n_max: int = 0  # images of the head class; 0: dataset default (CIFAR-10 5000, CIFAR-100 500)
    image_size: int = 0  # network input size; 0: dataset default
    augment: bool = True  # train-time augmentation (crop with padding + flip on small images)
    crop_padding: int = 4  # zero padding before the random crop on the small-image path
    augment_mode: str = "crop_pad"  # small-image path: crop_pad (pad + crop + flip) | rrc (RandomResizedCrop + flip)
    rrc_scale_min: float = 0.08  # rrc: smallest crop area fraction (torchvision's scale=(0.08, 1))
    sampler: str = "instance"  # instance | class_balanced | sqrt | class_aware (4 per class visit) | progressive
    num_workers: int = 2  # DataLoader workers on the file path (the small-image path needs none)
    download: bool = False  # let torchvision download CIFAR where a network exists
    cache_dir: str = "data/cache"  # decoded uint8 caches of small-image datasets
    digits_test_per_class: int = 50  # digits-LT: balanced held-out test images per class
    shot_many: int = 100  # many-shot: n_c > shot_many training images
    shot_few: int = 20  # few-shot: n_c < shot_few; medium in between (inclusive)
    eval_split: str = "test"  # split reported in results.json: test | val
    split_from_ir: float = 0.0  # shot groups from the counts of the same profile at this IR (PEL CIFAR-100-LT: 100 for every IR); 0: the run's own counts
    open_classes: tuple[int, ...] = ()  # *_open datasets: held-out classes (their test images = open set, label -1); empty: dataset default (8, 9)
    open_theta: float = 0.1  # open set: reject (predict -1) when max softmax < open_theta (OLTR 0.1; never rejects when C <= 10)
    file_backend: str = "pil"  # file splits (ImageNet-LT, Places-LT, iNat): pil (PIL workers, faithful) | uint8_cache (decode once to a pre-resized uint8 cache, RandomResizedCrop/flip on the device; a labelled speed variant) | torchcodec (batched JPEG decode on the GPU; falls back to pil)
    cache_size: int = 0  # uint8_cache: side S of the cached square (shorter side -> S, centre crop S x S); 0: int(image_size / 0.875) = 256 at 224


@dataclass(frozen=True)
class ModelSection:
    model: str = "resnet32"  # resnet32 (CIFAR) or any timm model name
    pretrained: str = ""  # timm pretrained tag or a local weights file; empty: random init
    head: str = "linear"  # linear | cosine
    cosine_scale: float = 16.0  # logit scale s of the cosine head: z = s * cos(f, w)
    drop_rate: float = 0.0  # dropout before the head
    channels_last: str = "auto"  # auto (CNNs on CUDA) | on | off


@dataclass(frozen=True)
class LossSection:
    loss: str = "ce"  # see ltr_core.losses.LOSSES
    label_smoothing: float = 0.0  # epsilon of label smoothing (ce, bal_bce; other losses reject it)
    focal_gamma: float = 1.0  # focal (and cb with cb_loss=focal): gamma of -(1-p_y)^gamma log p_y
    cb_beta: float = 0.9999  # cb: beta of the effective number, w_c = (1-beta)/(1-beta^n_c), sum w = C
    cb_loss: str = "ce"  # cb: loss the class-balanced weights multiply: ce | focal
    ldam_max_margin: float = 0.5  # ldam, ldam_drw: margin of the rarest class (m_c ~ n_c^-1/4)
    ldam_scale: float = 30.0  # ldam, ldam_drw: logit scale s on cosine logits (use head=cosine, cosine_scale=1)
    drw_epoch: int = 160  # ldam_drw: first (0-based) epoch with class-balanced weights (80% of the schedule)
    drw_beta: float = 0.9999  # ldam_drw: beta of the deferred class-balanced weights
    la_tau: float = 1.0  # logit_adjusted: tau of CE(z + tau log prior)
    bal_bce_tau: float = 1.0  # bal_bce: tau of the prior log-odds added to the logits
    mislas_eps_head: float = 0.3  # mislas: smoothing of the most frequent class
    mislas_eps_tail: float = 0.0  # mislas: smoothing of the rarest class
    mislas_shape: str = "concave"  # mislas: concave | linear | convex interpolation in n_c
    lade_alpha: float = 0.1  # lade: weight alpha of the LADE regulariser on the PC-softmax CE


@dataclass(frozen=True)
class OptimSection:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 2e-4  # decoupled for AdamW, L2 for SGD
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    schedule: str = "step"  # step | cosine | constant
    warmup_epochs: float = 0.0  # linear warm-up length in epochs (per step)
    lr_milestones: tuple[int, ...] = ()  # step schedule: epochs where lr is multiplied by lr_gamma
    lr_gamma: float = 0.1  # step schedule factor
    min_lr: float = 0.0  # cosine floor


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 200  # training epochs
    batch_size: int = 128  # images per optimiser step (split over accum_steps micro-batches)
    accum_steps: int = 1  # gradient accumulation micro-batches per step
    eval_batch_size: int = 512  # evaluation batch
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    grad_clip: float = 0.0  # max gradient norm; 0: off
    eval_every: int = 1  # evaluate every N epochs (the last epoch always); 0: last only
    max_steps_per_epoch: int = 0  # cap steps per epoch (smoke tests); 0: full epoch
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune
    drop_last: bool = False  # drop the last partial training batch: static shapes for graphs/compile (stated in results)
    cudnn_benchmark: str = "auto"  # auto (on for CUDA with drop_last) | on | off
    checkpoint_every: int = 1  # save the resume checkpoint every N epochs (and at the last); resume is exact either way
    checkpoint_async: bool = False  # write checkpoints from a background thread after one flat device->host copy


# ----------------------------------------------------------------------------------------------
# Method-family sections. Each lists the methods it belongs to in ``METHODS``: its keys enter the
# config hash of those methods only, so tuning one family never invalidates another family's runs.
# Keys are flat and unique across all sections (prefix them with the family name).


@dataclass(frozen=True)
class DecoupleSection:
    """Two-stage classifier re-balancing on a frozen stage-1 backbone (Kang et al., ICLR 2020)."""

    METHODS: ClassVar[tuple[str, ...]] = ("decouple",)
    decouple_mode: str = "crt"  # stage 2 on init_run: crt | lws | tau_norm | posthoc_la | ncm
    crt_features: str = "online"  # crt/lws: online (frozen backbone, augmented input) | cached (features, no augmentation; variant)
    crt_bn_mode: str = "train"  # crt/lws online: train (BN stats keep updating, classifier-balancing) | eval (truly frozen)
    decouple_scheduler_step: str = "post_epoch"  # crt/lws epoch-wise lr: post_epoch | pre_epoch (classifier-balancing; last epoch lr 0)
    decouple_tau: float = -1.0  # tau_norm / posthoc_la knob; < 0: chosen on val (no val: on test, "oracle"); LA paper 1.0
    decouple_tau_grid: tuple[float, ...] = ()  # tau values swept and recorded; empty: 0, 0.1, ..., 2.0
    ncm_metric: str = "cl2n_l2"  # ncm: cl2n_l2 (-||x^ - c||^2 on centred, L2-normalised features; classifier-balancing) | cosine (cos(f, raw class mean))


@dataclass(frozen=True)
class OLTRSection:
    """OLTR: modulated attention + dynamic meta-embedding (Liu et al., CVPR 2019)."""

    METHODS: ClassVar[tuple[str, ...]] = ("oltr",)
    # stage 1: the plain model (backbone [+ fc] + linear classifier, CE, instance-balanced sampling)
    oltr_stage1_epochs: int = 30  # stage-1 epochs inside this run (paper 30); unused when init_run names a finished stage-1/CE run
    oltr_stage1_lr: float = 0.1  # stage-1 classifier lr (paper 0.1)
    oltr_stage1_feature_lr: float = 0.0  # stage-1 backbone (+ fc) lr; 0: oltr_stage1_lr (ImageNet-LT 0.1, Places-LT 0.001)
    oltr_stage1_milestones: tuple[int, ...] = (10, 20)  # stage-1 step-schedule epochs (x lr_gamma); paper StepLR(10, 0.1)
    oltr_stage1_fc: bool = False  # stage 1 has the fc layer too, loaded in stage 2 (Places-LT True, ImageNet-LT False)
    # stage 2: modulated attention + dynamic meta-embedding + cosine-norm classifier (lr = classifier lr)
    oltr_fc_dim: int = 0  # fc after pooling: Linear(num_features -> dim) + ReLU; 0: none (paper 512: ImageNet-LT, Places-LT)
    oltr_feature_lr: float = 0.01  # stage-2 lr of backbone, attention and fc (ImageNet-LT 0.01, Places-LT 1e-4)
    oltr_centroid_lr: float = 0.01  # stage-2 lr of the centroid memory M (own SGD group, same schedule; paper 0.01)
    oltr_centroid_weight: float = 0.01  # weight of the discriminative centroid loss in CE + w * (L_att + 0.01 L_rep) (paper 0.01)
    oltr_centroid_input: str = "direct"  # feature the centroid loss pulls: direct (f, original code) | meta (v_meta, paper Eq. 7)
    oltr_centroid_grad_scaled: bool = False  # scale the centroid update by oltr_centroid_weight (False: original code, unscaled)
    oltr_reach_scale: float = 10.0  # reachability gamma = scale / min_c ||f - M_c|| (paper 10)
    oltr_attention: bool = True  # modulated attention on the last feature map (use_modulatedatt; ablation: False)
    oltr_freeze_backbone: bool = False  # stage 2 trains only attention, fc, classifier, centroids (Places-LT True)


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


@dataclass(frozen=True)
class ClipSection:
    """A CLIP model through open_clip, shared by every CLIP-based family."""

    METHODS: ClassVar[tuple[str, ...]] = ("pel", "zeroshot", "vlltr", "tailclip")
    clip_model: str = "ViT-B-16"  # open_clip model name (OpenAI weights: a -quickgelu name or pretrained=openai)
    clip_pretrained: str = ""  # open_clip pretrained tag (e.g. openai) or a local checkpoint file; empty: random init
    clip_interpolation: str = "bicubic"  # resize interpolation of the image preprocessing: bicubic | bilinear
    clip_prompt: str = "a photo of a {}."  # text template of the class prompts


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


@dataclass(frozen=True)
class DistSection:
    """Multi-GPU and cluster execution (not part of what a run computes)."""

    METHODS: ClassVar[tuple[str, ...]] = ()
    dist_nproc: int = 1  # processes (GPUs) per run; > 1: `ltr run` launches torchrun DDP in a subprocess (same as --nproc N)
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    dist_sync_bn: bool = True  # DDP on CUDA: BatchNorm -> SyncBatchNorm (global-batch statistics, as on one GPU); CPU/gloo: per-rank statistics
    dist_find_unused: bool = False  # DDP find_unused_parameters (models with parameters a step does not use)


CORE_SECTIONS: dict[str, type] = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "loss": LossSection,
    "optim": OptimSection,
    "train": TrainSection,
}
FAMILY_SECTIONS: dict[str, type] = {
    "decouple": DecoupleSection,
    "oltr": OLTRSection,
    "livt": LiVTSection,
    "clip": ClipSection,
    "pel": PELSection,
    "vlltr": VLLTRSection,
    "tailclip": TailCLIPSection,
    "dist": DistSection,
}
SECTIONS: dict[str, type] = {**CORE_SECTIONS, **FAMILY_SECTIONS}

CHOICES: dict[str, tuple[str, ...]] = {
    "lt_profile": ("exp", "step"),
    "sampler": ("instance", "class_balanced", "sqrt", "progressive", "class_aware"),
    "head": ("linear", "cosine"),
    "channels_last": ("auto", "on", "off"),
    "optimizer": ("sgd", "adamw"),
    "schedule": ("step", "cosine", "constant"),
    "precision": ("auto", "bf16", "fp32"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune"),
    "cudnn_benchmark": ("auto", "on", "off"),
    "eval_split": ("test", "val"),
    "clip_interpolation": ("bicubic", "bilinear"),
    "tailclip_mode": ("finetune", "zeroshot"),
    "tailclip_loss": ("bal", "asl", "db_focal", "bce"),
    "tailclip_sampler": ("occurrence", "instance"),
    "tailclip_peft": ("", "adaptformer", "adapter", "lora", "vpt_shallow", "vpt_deep", "bitfit", "ssf", "ln_tuning",
                      "full", "linear_probe"),
    "augment_mode": ("crop_pad", "rrc"),
    "file_backend": ("pil", "uint8_cache", "torchcodec"),
    "dist_backend": ("auto", "nccl", "gloo"),
    "pel_peft": ("adaptformer", "adapter", "lora", "vpt_shallow", "vpt_deep", "bitfit", "ssf", "ln_tuning", "full",
                 "linear_probe"),
    "pel_init": ("text", "random"),
    "pel_templates": ("single", "ensemble"),
    "pel_lr_step": ("epoch", "step"),
    "vlltr_anss_split": ("auto", "train", "val"),
    "vlltr_stage2_input": ("cached", "online"),
    "oltr_centroid_input": ("direct", "meta"),
    "livt_global_pool": ("avg", "token"),
    "decouple_mode": ("crt", "lws", "tau_norm", "posthoc_la", "ncm"),
    "crt_features": ("online", "cached"),
    "crt_bn_mode": ("train", "eval"),
    "decouple_scheduler_step": ("post_epoch", "pre_epoch"),
    "ncm_metric": ("cl2n_l2", "cosine"),
}

# Keys that name where or how a run executes, not what it computes: left out of the config hash,
# so moving the data or the results folder does not invalidate finished runs.
NON_SEMANTIC_KEYS = frozenset(
    {"name", "suite", "results_root", "run_dir", "figures_dir", "device", "interactive", "tensorboard",
     "data_root", "split_dir", "num_workers", "download", "cache_dir", "eval_batch_size", "vlltr_text_root",
     "checkpoint_every", "checkpoint_async"}
)

# The run identity (:func:`config_hash`) covers the semantic keys whose value differs from its
# default, plus SCHEMA_VERSION: adding a key (with a default that keeps the old behaviour) never changes
# the hash of a finished run. Changing an existing default changes what every run that left the key at
# its default computes, so it must bump SCHEMA_VERSION (tests/test_config.py checks the defaults
# against tests/data/config_defaults.json and says so).
SCHEMA_VERSION = 2

# Notebook globals that are never parameters.
_NOTEBOOK_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved run: one frozen dataclass per concern."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    decouple: DecoupleSection = field(default_factory=DecoupleSection)
    oltr: OLTRSection = field(default_factory=OLTRSection)
    livt: LiVTSection = field(default_factory=LiVTSection)
    clip: ClipSection = field(default_factory=ClipSection)
    pel: PELSection = field(default_factory=PELSection)
    vlltr: VLLTRSection = field(default_factory=VLLTRSection)
    tailclip: TailCLIPSection = field(default_factory=TailCLIPSection)
    dist: DistSection = field(default_factory=DistSection)

    @property
    def run_id(self) -> str:
        """Deterministic run name: ``<dataset>-<method>-<name>-s<seed>``."""
        name = self.run.name or "default"
        return f"{self.data.dataset}-{self.run.method}-{name}-s{self.run.seed}"

    def figures_path(self) -> Path:
        """Where this run's notebook saves figures: ``figures_dir`` or ``figures/<suite>``."""
        return Path(self.run.figures_dir or Path("figures") / self.run.suite)

    def run_path(self) -> Path:
        """The run directory: ``run_dir`` if set, else ``<results_root>/<suite>/<run_id>``."""
        if self.run.run_dir:
            return Path(self.run.run_dir)
        return Path(self.run.results_root) / self.run.suite / self.run_id


def _key_owner() -> dict[str, str]:
    owner: dict[str, str] = {}
    for section_name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in owner, f"duplicate flat key {f.name}"
            owner[f.name] = section_name
    return owner


KEY_OWNER = _key_owner()


def param_names() -> list[str]:
    """All valid flat parameter names."""
    return sorted(KEY_OWNER)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; coerce what is unambiguous."""
    bad = ConfigError(
        f"parameter {key!r} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else []
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp, *_rest) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise bad
    return value


def _unknown_key_error(keys: list[str]) -> ConfigError:
    lines = []
    for key in keys:
        close = difflib.get_close_matches(key, KEY_OWNER, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        lines.append(f"unknown parameter {key!r}{hint}")
    lines.append("valid parameters: " + ", ".join(param_names()))
    return ConfigError("\n".join(lines))


def from_params(params: Mapping[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from a flat mapping; strict about keys, types and choices."""
    unknown = [k for k in params if k not in KEY_OWNER]
    if unknown:
        raise _unknown_key_error(unknown)
    per_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in params.items():
        section = KEY_OWNER[key]
        tp = _field_types(SECTIONS[section])[key]
        value = _coerce(key, value, tp)
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"parameter {key!r} must be one of {CHOICES[key]}, got {value!r}")
        per_section[section][key] = value
    cfg = RunConfig(**{name: SECTIONS[name](**kw) for name, kw in per_section.items()})
    _check_ranges(cfg)
    return cfg


# The allowed interval of each numeric key ("[" / "]" closed, "(" / ")" open); every numeric key not
# named here must be >= 0 (NONNEGATIVE). A value outside is a ConfigError naming key, interval and value.
NONNEGATIVE = "[0, inf)"
RANGES: dict[str, str] = {
    "imbalance_ratio": "[1, inf)", "rrc_scale_min": "(0, 1]", "digits_test_per_class": "[1, inf)",
    "open_theta": "[0, 1]", "cosine_scale": "(0, inf)", "drop_rate": "[0, 1)", "label_smoothing": "[0, 1)",
    "cb_beta": "[0, 1)", "ldam_scale": "(0, inf)", "drw_beta": "[0, 1)", "mislas_eps_head": "[0, 1)",
    "mislas_eps_tail": "[0, 1)", "lr": "(0, inf)", "momentum": "[0, 1)", "adam_beta1": "[0, 1)",
    "adam_beta2": "[0, 1)", "lr_gamma": "(0, 1]", "epochs": "[1, inf)", "batch_size": "[1, inf)",
    "accum_steps": "[1, inf)", "eval_batch_size": "[1, inf)", "decouple_tau": "[-1, inf)",
    "oltr_reach_scale": "(0, inf)", "livt_mgp_batch_size": "[1, inf)", "livt_mgp_accum_steps": "[1, inf)",
    "livt_mgp_blr": "(0, inf)", "livt_mgp_beta2": "[0, 1)", "livt_mgp_rrc_scale_min": "(0, 1]",
    "livt_mask_ratio": "[0, 1)", "livt_decoder_width": "[1, inf)", "livt_decoder_depth": "[1, inf)",
    "livt_decoder_heads": "[1, inf)", "livt_layer_decay": "(0, 1]", "livt_drop_path": "[0, 1)",
    "livt_randaug_prob": "[0, 1]", "livt_reprob": "[0, 1]", "livt_mixup_prob": "[0, 1]",
    "livt_mixup_switch_prob": "[0, 1]", "pel_scale": "(0, inf)", "pel_tte_expand": "[0, inf)",
    "vlltr_stage1_batch_size": "[1, inf)", "vlltr_contrast_smoothing": "[0, 1)", "vlltr_alpha": "[0, 1]",
    "vlltr_max_tokens": "[1, inf)", "tailclip_val_fraction": "[0, 1)", "tailclip_label_smoothing": "[0, 1)",
    "tailclip_clip": "[0, 1)", "tailclip_adam_eps": "(0, inf)", "dist_nproc": "[1, inf)", "checkpoint_every": "[1, inf)",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")


def in_interval(value: float, interval: str) -> bool:
    """Whether ``value`` lies in an interval written like ``"(0, 1]"``."""
    lo_br, hi_br = interval[0], interval[-1]
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    above = value > lo or (lo_br == "[" and value == lo)
    below = value < hi or (hi_br == "]" and value == hi)
    return above and below


def _check_numeric(flat: Mapping[str, Any]) -> None:
    for key, value in flat.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        interval = RANGES.get(key, NONNEGATIVE)
        if not (math.isfinite(value) and in_interval(value, interval)):
            raise ConfigError(f"parameter {key!r} must be in {interval}, got {value!r}")


def _check_names(cfg: RunConfig) -> None:
    """Run names and suites become folder names under results_root: no separators, no '..', no absolute path."""
    if cfg.run.name and not _SAFE_NAME.match(cfg.run.name):
        raise ConfigError(f"parameter 'name' must be a plain folder name (letters, digits, _ . + = -, not "
                          f"starting with '.'), got {cfg.run.name!r}")
    parts = cfg.run.suite.split("/")
    if not cfg.run.suite or not all(_SAFE_NAME.match(p) for p in parts):
        raise ConfigError(f"parameter 'suite' must be a folder name under results_root (segments of letters, "
                          f"digits, _ . + = -, joined by '/', no '..' or absolute path), got {cfg.run.suite!r}")


def _check_ranges(cfg: RunConfig) -> None:
    _check_numeric(to_flat(cfg))
    _check_names(cfg)
    checks = [
        (cfg.data.split_from_ir == 0 or cfg.data.split_from_ir >= 1, "split_from_ir must be 0 (off) or >= 1"),
        (cfg.train.epochs >= 1, "epochs must be >= 1"),
        (cfg.train.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.train.accum_steps >= 1, "accum_steps must be >= 1"),
        (cfg.train.batch_size % cfg.train.accum_steps == 0,
         f"batch_size ({cfg.train.batch_size}) must be divisible by accum_steps ({cfg.train.accum_steps})"),
        (cfg.data.imbalance_ratio >= 1, "imbalance_ratio must be >= 1"),
        (cfg.data.shot_few <= cfg.data.shot_many, "shot_few must be <= shot_many"),
        (cfg.optim.lr > 0, "lr must be > 0"),
        (0 <= cfg.loss.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (list(cfg.optim.lr_milestones) == sorted(cfg.optim.lr_milestones), "lr_milestones must be increasing"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    from .methods import METHODS  # the registry imports nothing heavy

    if cfg.run.method not in METHODS:
        raise ConfigError(f"parameter 'method' must be one of {sorted(METHODS)}, got {cfg.run.method!r}")


def from_notebook(namespace: Mapping[str, Any]) -> RunConfig:
    """Build the config from a notebook's globals after the parameters cell.

    Every public global holding a plain value (the parameters cell's literals and papermill's
    injected overrides) is a parameter; modules, functions and IPython's own names are skipped.
    A mistyped injected parameter therefore fails here instead of being ignored.
    """
    params = {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and k not in _NOTEBOOK_NAMES
        and isinstance(v, (str, int, float, bool, list, tuple, type(None)))
    }
    return from_params(params)


def to_flat(cfg: RunConfig) -> dict[str, Any]:
    """The flat parameter dict (tuples as lists) that rebuilds ``cfg`` via :func:`from_params`."""
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            flat[key] = list(value) if isinstance(value, tuple) else value
    return flat


def default_flat() -> dict[str, Any]:
    """Every flat key with its default value (as :func:`to_flat` writes it)."""
    return to_flat(RunConfig())


def semantic_params(cfg: RunConfig) -> dict[str, Any]:
    """The flat parameters that define what a run computes and differ from their defaults: the
    core-section keys and the keys of the family sections whose ``METHODS`` include ``cfg.run.method``,
    minus :data:`NON_SEMANTIC_KEYS`, plus ``schema`` = :data:`SCHEMA_VERSION`."""
    keys = [f.name for name, cls in SECTIONS.items()
            if name in CORE_SECTIONS or cfg.run.method in cls.METHODS for f in dataclasses.fields(cls)]
    flat, defaults = to_flat(cfg), default_flat()
    out = {k: flat[k] for k in keys if k not in NON_SEMANTIC_KEYS and flat[k] != defaults[k]}
    out["schema"] = SCHEMA_VERSION
    return out


def config_hash(cfg: RunConfig) -> str:
    """sha256 (16 hex chars) of :func:`semantic_params`; equal hashes mean the same experiment."""
    flat = semantic_params(cfg)
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def load_params(path: str | Path) -> dict[str, Any]:
    """Read a flat params YAML file, resolving its optional ``base`` file(s) first (relative to the file
    that names them) and anchoring its relative paths to it: :func:`ltr_core.params.load_layered`. To
    resolve a run (name, overrides, working folders) use :func:`ltr_core.params.resolve`."""
    from .params import load_layered  # params imports this module

    return load_layered(path)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values read as YAML, so ``epochs=2`` is an int)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out
