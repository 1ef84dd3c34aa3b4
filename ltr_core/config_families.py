"""Method-family sections of the run configuration (:mod:`ltr_core.config`).

Each lists the methods it belongs to in ``METHODS``: its keys enter the config hash of those methods only,
so tuning one family never invalidates another family's runs. Keys are flat and unique across all sections
(prefix them with the family name); each is a typed field with its default and a help comment, as in
:mod:`ltr_core.config_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class DecoupleSection:
    """Two-stage classifier re-balancing on a frozen stage-1 backbone (Kang et al., ICLR 2020)."""

    METHODS: ClassVar[tuple[str, ...]] = ("decouple",)
    decouple_mode: str = "crt"  # stage 2 on init_run (ltr_core.methods.decouple_modes.MODES): crt | lws | tau_norm | posthoc_la | ncm | maxnorm
    crt_features: str = "online"  # crt/lws: online (frozen backbone, augmented input) | cached (features, no augmentation; variant)
    crt_bn_mode: str = "train"  # crt/lws online: train (BN stats keep updating, classifier-balancing) | eval (truly frozen)
    decouple_scheduler_step: str = "post_epoch"  # crt/lws epoch-wise lr: post_epoch | pre_epoch (classifier-balancing; last epoch lr 0)
    decouple_tau: float = -1.0  # tau_norm / posthoc_la knob (maxnorm: the quantile q in [0, 1]); < 0: chosen on val (no val: on test, "oracle"); LA paper 1.0
    decouple_tau_grid: tuple[float, ...] = ()  # tau values swept and recorded; empty: 0, 0.1, ..., 2.0 (maxnorm: 0, 0.1, ..., 1.0)
    ncm_metric: str = "cl2n_l2"  # ncm: cl2n_l2 (-||x^ - c||^2 on centred, L2-normalised features; classifier-balancing) | cosine (cos(f, raw class mean))


@dataclass(frozen=True)
class KNNSection:
    """Cosine k-nearest-neighbour classifier on the frozen features of a stage-1 run (ltr_core.methods.knn)."""

    METHODS: ClassVar[tuple[str, ...]] = ("knn",)
    knn_k: int = 20  # neighbours that vote (DINO's k-NN evaluation: 20)
    knn_temperature: float = 0.07  # vote weight exp(cos(f, f_j) / T) (Wu et al. 2018, DINO: 0.07)
    knn_tau: float = 0.0  # z = log p_knn - tau log pi: 0 the plain vote, 1 the vote share divided by the class prior


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


FAMILY_SECTIONS: dict[str, type] = {
    "decouple": DecoupleSection,
    "knn": KNNSection,
    "oltr": OLTRSection,
    "livt": LiVTSection,
    "clip": ClipSection,
    "pel": PELSection,
    "vlltr": VLLTRSection,
    "tailclip": TailCLIPSection,
    "dist": DistSection,
}
