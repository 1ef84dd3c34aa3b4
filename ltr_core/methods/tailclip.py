"""TailCLIP / LM-CLIP: multi-label long-tailed recognition by fine-tuning CLIP (Timmermann et al.;
damilab/lm-clip; methods.md §7).

Scores z_ic = exp(t) · cos(E_img(x_i), E_txt("a photo of a <c>")), the prompts recomputed through the
text tower every step (:class:`ltr_core.models.tailclip.TailCLIPNet`). Objective

    L = w · L_clip(images, synthetic captions "a photo of a dog, person") + λ · L_cls(z, y),

L_clip the symmetric CLIP InfoNCE over the batch, L_cls the Balanced Asymmetric Loss (``tailclip_loss:
bal``; or the baselines asl, db_focal, bce: :mod:`ltr_core.multilabel_losses`). Images are drawn with
replacement with weights u_i ∝ (Σ_{c∈Y_i} N/n_c)^s (``tailclip_sampler: occurrence``). Everything in
CLIP trains (both towers, the logit scale), or a PEFT module in the visual tower (``tailclip_peft``).
AdamW (β 0.9 / 0.98, ε 1e-9, wd 0.01), batch 8, 50 epochs, cosine over epochs stepped once per epoch
(CosineAnnealingLR), squash resize to the CLIP input size + flip, ImageNet mean/std (the original's
choice; ``tailclip_clip_preprocess`` switches to CLIP's).

``tailclip_mode: zeroshot`` evaluates CLIP without training (the zero-shot multi-label baseline).

Evaluation (:func:`ltr_core.metrics.multilabel_evaluate`): per-class AP, ``map`` with sigmoid scores
(headline) and ``map_softmax`` (the TailCLIP/LMPT score), head / medium / tail with n_c >= ``shot_many``
/ ``shot_few``..``shot_many``−1 / < ``shot_few`` (defaults 100 / 20: the published 6/6/8 and 22/33/25
groups, from the full training list even when a val split is carved). Model selection: the last
epoch. The original selects checkpoints and runs its 500-trial HPO on the *test* split; we never
look at test before the end — the optional ``tailclip_val_fraction`` split carved from train is what
is monitored (``val_map`` in metrics.jsonl) and what a user should tune on.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn

from .. import engine, metrics
from ..config import RunConfig
from ..data import LTData, build_data
from ..data.multilabel import carve_val_split, group_counts, make_multilabel_loader
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..evaluation import MultiLabel
from ..models.clip import load_clip
from ..models.tailclip import TailCLIPNet, TailCLIPOutput
from ..multilabel_losses import build_multilabel_loss, clip_contrastive_loss
from ..study import Plan, RunContext, SplitLoaders, run_family

NOTEBOOK = "tailclip.ipynb"
SELECTION = "last epoch (no selection on test; TailCLIP / LMPT select checkpoints on the test split)"


class TailCLIPObjective(nn.Module):
    """L = w · L_clip(image_emb, captions(targets)) + λ · L_cls(logits, targets) on a :class:`TailCLIPOutput`."""

    def __init__(self, cls_loss: nn.Module, encode_captions, *, lam: float, contrastive: float) -> None:
        super().__init__()
        self.cls_loss = cls_loss
        self.encode_captions = encode_captions
        self.lam, self.contrastive = float(lam), float(contrastive)

    def forward(self, out: TailCLIPOutput, targets: torch.Tensor) -> torch.Tensor:
        loss = self.lam * self.cls_loss(out.logits, targets)
        if self.contrastive > 0:
            loss = loss + self.contrastive * clip_contrastive_loss(out.image_emb, self.encode_captions(targets),
                                                                   out.scale)
        return loss


# ----------------------------------------------------------------------------- pieces

def prepare_data(cfg: RunConfig, data: LTData | None = None) -> LTData:
    """The multi-label dataset of ``cfg`` (+ the carved val split when ``tailclip_val_fraction`` > 0)."""
    data = data if data is not None else build_data(cfg.data)
    if not data.is_multilabel:
        raise ValueError(f"tailclip needs a multi-label dataset (voc_mlt, coco_mlt, mosaic_mlt, mosaic_digits_mlt); "
                         f"{data.name} has single labels")
    if cfg.tailclip.tailclip_val_fraction > 0 and data.val is None:
        data = carve_val_split(data, cfg.tailclip.tailclip_val_fraction, seed=cfg.data.lt_seed)
    return data


def build_network(cfg: RunConfig, data: LTData, device) -> tuple[TailCLIPNet, object, list[nn.Parameter]]:
    """(network, Clip, trainable parameters): full fine-tuning, or PEFT tuners in the visual tower
    (text tower frozen, logit scale trainable) when ``tailclip_peft`` is set."""
    c = cfg.clip
    clip = load_clip(c.clip_model, c.clip_pretrained, device="cpu", interpolation=c.clip_interpolation)
    if cfg.data.image_size and cfg.data.image_size != clip.image_size:
        raise ValueError(f"image_size={cfg.data.image_size} but {c.clip_model} takes {clip.image_size} px inputs; "
                         f"leave image_size at 0 (the CLIP input size is used)")
    if cfg.tailclip.tailclip_peft:
        from ..models.peft import apply_peft

        for p in clip.model.parameters():
            p.requires_grad_(False)
        params = apply_peft(clip, cfg.tailclip.tailclip_peft, num_classes=data.num_classes)
        clip.model.logit_scale.requires_grad_(True)
        params = [*params, clip.model.logit_scale]
    else:
        params = [p for p in clip.model.parameters() if p.requires_grad]
    net = TailCLIPNet(clip, data.class_names, c.clip_prompt).to(device)
    return net, clip, params


def build_objective(cfg: RunConfig, data: LTData, net: TailCLIPNet) -> TailCLIPObjective:
    t = cfg.tailclip
    cls = build_multilabel_loss(t.tailclip_loss, data.class_counts, data.train.n, gamma_pos=t.tailclip_gamma_pos,
                                gamma_neg=t.tailclip_gamma_neg, clip=t.tailclip_clip,
                                label_smoothing=t.tailclip_label_smoothing, power=t.tailclip_power)
    return TailCLIPObjective(cls, net.encode_captions, lam=t.tailclip_lambda, contrastive=t.tailclip_contrastive)


def input_stats(cfg: RunConfig, clip) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std (TailCLIP's choice), or CLIP's own with ``tailclip_clip_preprocess``."""
    return (tuple(clip.mean), tuple(clip.std)) if cfg.tailclip.tailclip_clip_preprocess else (IMAGENET_MEAN, IMAGENET_STD)


def make_optimizer(params, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW(lr, betas (adam_beta1, adam_beta2), eps tailclip_adam_eps, weight_decay) over every trainable tensor."""
    o = cfg.optim
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=o.lr, betas=(o.adam_beta1, o.adam_beta2),
                             eps=cfg.tailclip.tailclip_adam_eps, weight_decay=o.weight_decay)


def epoch_cosine(cfg: RunConfig):
    """CosineAnnealingLR(T_max = epochs, eta_min = min_lr) stepped once per epoch (the original):
    lr(e) = min_lr + (lr − min_lr)(1 + cos(π e / E)) / 2 for the whole epoch e. None (engine default)
    unless ``schedule`` is cosine."""
    if cfg.optim.schedule != "cosine":
        return None
    if cfg.optim.warmup_epochs > 0:
        raise ValueError("tailclip's cosine schedule is stepped per epoch without warm-up (the original); "
                         "set warmup_epochs=0 or use schedule=constant / step")
    r = cfg.optim.min_lr / cfg.optim.lr
    epochs = cfg.train.epochs
    return lambda epoch, frac: r + (1 - r) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def loader(cfg: RunConfig, data: LTData, split: str, *, train: bool, device, clip):
    mean, std = input_stats(cfg, clip)
    return make_multilabel_loader(
        data, split, train=train, batch_size=cfg.train.batch_size if train else cfg.train.eval_batch_size,
        device=device, image_size=clip.image_size, mean=mean, std=std, sampler=cfg.tailclip.tailclip_sampler,
        power=cfg.tailclip.tailclip_power, seed=cfg.run.seed, num_workers=cfg.data.num_workers,
        flip=cfg.data.augment, interpolation=cfg.clip.clip_interpolation)


def profile_table(data: LTData, head: int = 100, tail: int = 20) -> pd.DataFrame:
    """One row per class: name, training images containing it, test images containing it, group."""
    counts = group_counts(data)
    group_of = {int(i): g for g, idx in metrics.multilabel_groups(counts, head, tail).items() for i in idx}
    df = pd.DataFrame({"class": data.class_names, "train": counts, "test": data.test_counts,
                       "group": [group_of[i] for i in range(data.num_classes)]})
    return df.sort_values("train", ascending=False, kind="stable")


# ----------------------------------------------------------------------------- run

def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """Fine-tune (or zero-shot evaluate) CLIP on a multi-label dataset; returns the results.json dict."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise ValueError("tailclip runs on one device (the original trains with batch 8 on one GPU); use dist_nproc=1")
    if cfg.data.eval_split == "val" and cfg.tailclip.tailclip_val_fraction <= 0:
        raise ValueError("eval_split=val needs a val split: set tailclip_val_fraction > 0")
    return run_family(cfg, plan, load=lambda: prepare_data(cfg, data))


def plan(ctx: RunContext) -> Plan:
    """The network, its objective and loaders (finetune), multi-label evaluation of the reported split; the
    carved val split (if any) is what is monitored per epoch (``val_*`` in metrics.jsonl)."""
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    t = cfg.tailclip
    net, clip, params = build_network(cfg, data, device)
    loaders = SplitLoaders(lambda s: loader(cfg, data, s, train=False, device=device, clip=clip),
                           eager=(cfg.data.eval_split,))
    evaluator = MultiLabel(cfg, data)

    def predict(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return engine.predict(net, loaders[split], device, cfg.train.precision, fn=net.logits)

    def evaluate_val(epoch: int) -> dict:
        m = evaluator.metrics(*predict("val"))
        return {f"val_{k}": float(m[k]) if m[k] is not None else float("nan")
                for k in ("map", "map_head", "map_medium", "map_tail", "map_softmax")}

    finetune = t.tailclip_mode == "finetune"
    extra = {"loss": t.tailclip_loss if finetune else "none", "model": cfg.clip.clip_model, "selection": SELECTION,
             "epochs": cfg.train.epochs if finetune else 0, "clip": clip.record(), "mode": t.tailclip_mode,
             "score": "sigmoid (map); softmax (map_softmax)",
             "shot_rule": {"head": f">={cfg.data.shot_many}", "medium": f"{cfg.data.shot_few}-{cfg.data.shot_many - 1}",
                           "tail": f"<{cfg.data.shot_few}"}}
    if not finetune:
        return Plan(None, predict, evaluator=evaluator, extra=extra)
    extra.update({"trainable_params": sum(p.numel() for p in params if p.requires_grad),
                  "peft": t.tailclip_peft or "full fine-tuning"})
    has_val = data.val is not None
    return Plan(net, predict, criterion=build_objective(cfg, data, net), evaluator=evaluator,
                train_loader=loader(cfg, data, "train", train=True, device=device, clip=clip),
                optimizer=make_optimizer(params, cfg), lr_schedule=epoch_cosine(cfg),
                monitor=evaluate_val if has_val else None, extra=extra,
                finish=(lambda ev: {"val_metrics": evaluate_val(cfg.train.epochs - 1)}) if has_val else None)
