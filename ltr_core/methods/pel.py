"""PEL / LIFT: parameter-efficient fine-tuning of CLIP for long-tailed recognition, and zero-shot CLIP.

Shi et al., "Parameter-Efficient Long-Tailed Recognition" / "Long-Tail Learning with Foundation
Model: Heavy Fine-Tuning Hurts" (arXiv 2309.10019, ICML 2024); methods.md §5. Two methods:

``pel`` — a frozen CLIP visual tower with a PEFT module (:mod:`ltr_core.models.peft`, AdaptFormer by
default) and a cosine classifier on the feature **before** the visual projection
(ViT: f = ln_post(CLS), 768-d for ViT-B/16; ResNet: the attention-pool output):

    z_c = s · cos(f(x), w_c),  s = 25,  w_c = normalize(t_c Pᵀ)   (ResNet: w_c = t_c)
    t_c = normalize(TextEnc("a photo of a {class}."))          P: the visual projection [width, embed]
    L = CE(z + τ log π, y),  τ = 1  (logit adjustment, π the training class prior)

trained with SGD (lr 0.01, momentum 0.9, wd 5e-4, batch 128, cosine stepped per epoch as the original's
``CosineAnnealingLR(T_max=epochs)`` (``pel_lr_step``), 10 epochs; 20 on iNat18),
RandomResizedCrop + flip at CLIP's input size with CLIP's mean/std, and evaluated at the last
epoch with test-time ensembling (resize to S + 24, five crops, logits averaged; ``pel_tte``) —
the metrics without TTE are recorded too (``metrics.no_tte``; equal to the headline when TTE is off). Only the tuners and the classifier
train; checkpoints and ``model.safetensors`` hold those tensors (the frozen tower is rebuilt from
``clip_model`` / ``clip_pretrained``). ``pel_peft=linear_probe`` trains the classifier alone; by
default on features of the frozen tower computed once and cached (``ltr_core.features``, no train
augmentation: a labelled variant), so repeated runs take seconds.

``zeroshot`` — CLIP's own classifier, no training:  z_c = 100 · cos(f(x) P, t_c)  (100 = OpenAI
CLIP's learnt exp(logit_scale)); t_c from one template (``clip_prompt``) or the 80-template
ensemble (``pel_templates=ensemble``); projected image features are cached.

The text-initialised classifier and zero-shot CLIP agree at step 0 up to per-class factors:
z_c^head · |t_c Pᵀ| · |f| / 25 = z_c^zs · |f P| / 100, so they make the same predictions when P has
orthonormal columns (and always on ResNet towers, where w_c = t_c).
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from .. import engine
from ..config import ConfigError, RunConfig
from ..data import LTData
from ..data.device_loader import DeviceTensorLoader
from ..data.image_list import ImageFileDataset
from ..data.loaders import FileLoader
from ..data.transforms import eval_transform, five_crop_transform
from ..features import cached_features, feature_key, train_feature_loader, weights_digest
from ..losses import build_loss
from ..models.clip import Clip
from ..models.peft import apply_peft, count_parameters, peft_info
from ..study import Evaluation, Plan, RunContext, SplitLoaders, run_family
from ..tte import ViewLoader, stack_views
from .pel_model import (ZERO_SHOT_SCALE, ClipClassifier, ZeroShotHead, build_head, build_model,  # noqa: F401
                        clip_data, clip_loader, head_init, load_run_clip, templates, text_weights, visual_features)

NOTEBOOK = "pel.ipynb"


def lr_schedule(cfg: RunConfig) -> Callable[[int, float], float] | None:
    """The lr factor for ``engine.fit``: ``pel_lr_step=epoch`` (PEL/LIFT, ``CosineAnnealingLR(T_max=E)``
    stepped after every epoch) holds epoch e at the schedule's value at its start, for the cosine
    factor(e) = ½ (1 + cos(π e / E)) (epoch 0 at the peak lr, never 0); ``step``: None, the engine's
    per-step schedule (factor at e + fraction of the epoch done).
    """
    if cfg.pel.pel_lr_step == "step":
        return None
    if cfg.optim.warmup_epochs > 0:
        raise ConfigError("pel_lr_step=epoch (PEL/LIFT: the lr moves once per epoch) has no warm-up; "
                          "set warmup_epochs: 0.0, or pel_lr_step: step")
    return lambda epoch, frac: engine.lr_factor(epoch, 0.0, cfg.optim, cfg.train.epochs)


# ----------------------------------------------------------------------------------------------
# loaders


def train_loader(cfg: RunConfig, data: LTData, device):
    """RandomResizedCrop + flip at CLIP's input size (:func:`~ltr_core.methods.pel_model.clip_loader`)."""
    return clip_loader(cfg, data, "train", train=True, device=device)


def eval_loader(cfg: RunConfig, data: LTData, split: str, device, *, tte: bool):
    """Evaluation views: Resize(S/0.875) + CenterCrop(S), or (TTE) Resize(S + expand) + FiveCrop(S)
    -> x [B, 5, 3, S, S]; same geometry on the small-image path (on the device) and for files."""
    part = data.split(split)
    size, expand, interp = data.image_size, cfg.pel.pel_tte_expand, cfg.clip.clip_interpolation
    if part.images is not None:
        base = DeviceTensorLoader(part.images, part.labels, batch_size=cfg.train.eval_batch_size, device=device,
                                  train=False, sampler=None, mean=data.mean, std=data.std,
                                  image_size=int(part.images.shape[-1]), augment=False)
        return ViewLoader(base, size, tte=tte, expand=expand, interpolation=interp)
    transform = (five_crop_transform(size, data.mean, data.std, expand=expand, interpolation=interp) if tte
                 else eval_transform(size, data.mean, data.std, interpolation=interp))
    return FileLoader(ImageFileDataset(part.paths, part.labels, transform), batch_size=cfg.train.eval_batch_size,
                      device=device, sampler=None, num_workers=cfg.data.num_workers)


def tte_record(cfg: RunConfig, data: LTData) -> dict:
    s = data.image_size
    return {"enabled": cfg.pel.pel_tte, "resize": s + cfg.pel.pel_tte_expand, "crops": 5, "crop": s,
            "no_tte_resize": int(s / 0.875), "interpolation": cfg.clip.clip_interpolation, "average": "logits"}


# ----------------------------------------------------------------------------------------------
# cached features of the frozen tower


def frozen_features(cfg: RunConfig, clip: Clip, data: LTData, split: str, device, *, tte: bool,
                    project: bool) -> dict[str, torch.Tensor]:
    """{"features": [N, D] or [N, 5, D] (TTE crops), "labels": [N]} of the frozen tower, computed once
    and cached under ``<cache_dir>/features`` (key: tower weights, data, split, view, precision)."""
    visual = clip.model.visual
    dtype = engine.autocast_dtype(cfg.train.precision, device)
    description = {
        "kind": "clip_visual_features", "version": 1, "clip": clip.record(), "weights": weights_digest(visual),
        "project": project, "dataset": data.name, "provenance": feature_key(data.provenance), "split": split,
        "samples": data.split(split).n, "mean": list(data.mean), "std": list(data.std),
        "view": {**tte_record(cfg, data), "enabled": tte}, "precision": str(dtype),
    }

    def compute():
        loader = eval_loader(cfg, data, split, device, tte=tte)
        fn = lambda x: stack_views(lambda v: visual_features(visual, v, is_vit=clip.is_vit, project=project), x)  # noqa: E731
        feats, labels = engine.predict(visual, loader, device, cfg.train.precision, fn=fn)
        return {"features": feats, "labels": labels}

    t0 = time.perf_counter()
    out = cached_features(cfg.data.cache_dir, f"clip-{data.name}-{split}{'-tte' if tte else ''}", description, compute)
    print(f"features {split}{' (TTE)' if tte else ''}: {tuple(out['features'].shape)} in {time.perf_counter() - t0:.1f} s",
          flush=True)
    return out


@torch.no_grad()
def head_logits(head: nn.Module, feats: torch.Tensor, device, chunk: int = 4096) -> torch.Tensor:
    """head(f) for [N, D], mean over crops of head(f_v) for [N, V, D]; float32 on the CPU."""
    was = head.training
    head.eval()
    out = []
    for i in range(0, feats.shape[0], chunk):
        f = feats[i:i + chunk].to(device)
        z = head(f.flatten(0, 1)).view(*f.shape[:-1], -1) if f.ndim == 3 else head(f)
        out.append((z.mean(1) if f.ndim == 3 else z).float().cpu())
    head.train(was)
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# runs: one plan per variant, run by ltr_core.study.run_family


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """Train (pel) or just evaluate (zeroshot); write the run directory; returns the results.json dict."""
    if cfg.run.method == "pel":
        lr_schedule(cfg)  # a warm-up with the epoch-wise schedule fails before anything is written
    if cfg.run.method == "zeroshot":
        build = zeroshot_plan
    elif cfg.pel.pel_peft == "linear_probe" and cfg.pel.pel_cached_features:
        build = cached_probe_plan
    else:
        build = finetune_plan
    return run_family(cfg, lambda ctx: build(ctx, run_clip(ctx)), data=data)


def run_clip(ctx: RunContext) -> Clip:
    """The run's frozen CLIP; ``ctx.data`` moves to CLIP's input size and normalisation."""
    clip = load_run_clip(ctx.cfg, ctx.device)
    clip.model.requires_grad_(False)
    ctx.data = clip_data(ctx.data, clip)
    print(f"CLIP {clip.name} ({clip.pretrained or 'random init'}), {clip.activation}, input {clip.image_size} px, "
          f"{clip.interpolation}; feature {clip.feature_dim}-d", flush=True)
    return clip


def _extra(cfg: RunConfig, clip: Clip, data: LTData, features: str, counts: dict | None = None) -> dict:
    extra = {"model": f"clip:{clip.name}", "clip": clip.record(), "peft": peft_info(clip),
             "tte": tte_record(cfg, data), "features": features, "text_templates": len(templates(cfg))}
    if counts is not None:
        extra["trainable_params"] = counts
    return extra


def _record_trainable(counts: dict) -> Callable[[Evaluation], None]:
    def finish(ev: Evaluation) -> None:
        ev.metrics["trainable"] = counts
    return finish


def _cached_predictor(cfg: RunConfig, clip: Clip, data: LTData, head: nn.Module, device, *, project: bool):
    """(predict(split), no-TTE view) of ``head`` on cached frozen-tower features: the headline's views
    (TTE crops averaged when ``pel_tte``) and, with TTE on, the plain centre crop as ``no_tte``."""
    tte = cfg.pel.pel_tte
    views = {t: frozen_features(cfg, clip, data, cfg.data.eval_split, device, tte=t, project=project) for t in {tte, False}}

    def predict(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        f = views[tte] if split == cfg.data.eval_split else frozen_features(cfg, clip, data, split, device, tte=tte,
                                                                             project=project)
        return head_logits(head, f["features"], device), f["labels"]

    plain = (lambda: (head_logits(head, views[False]["features"], device), views[False]["labels"])) if tte else None
    return predict, plain


def finetune_plan(ctx: RunContext, clip: Clip) -> Plan:
    """PEFT (or full / head-only) training on augmented images; last-epoch evaluation with the headline views."""
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    model, counts = build_model(cfg, clip, data, device)
    print(f"pel_peft={cfg.pel.pel_peft}: trainable {counts}", flush=True)
    criterion = build_loss(cfg.loss, data.class_counts)
    loader = train_loader(cfg, data, device)
    headline = SplitLoaders(lambda s: eval_loader(cfg, data, s, device, tte=cfg.pel.pel_tte), eager=(cfg.data.eval_split,))

    def predict(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return engine.predict(model, headline[split], device, cfg.train.precision)

    no_tte = (lambda: engine.predict(model, eval_loader(cfg, data, cfg.data.eval_split, device, tte=False), device,
                                     cfg.train.precision)) if cfg.pel.pel_tte else None
    return Plan(model, predict, criterion=criterion, train_loader=loader, lr_schedule=lr_schedule(cfg),
                views={"no_tte": no_tte}, finish=_record_trainable(counts),
                extra=_extra(cfg, clip, data, "online", counts))


def cached_probe_plan(ctx: RunContext, clip: Clip) -> Plan:
    """Classifier-only training on cached frozen-tower features (no train augmentation: a labelled variant)."""
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    apply_peft(clip, "linear_probe", num_classes=data.num_classes)
    train = frozen_features(cfg, clip, data, "train", device, tte=False, project=False)
    head, _ = build_head(cfg, clip, data.class_names, device)
    predict, plain = _cached_predictor(cfg, clip, data, head, device, project=False)
    counts = {"tower": 0, "head": count_parameters(head.parameters())}
    counts["total"] = counts["head"]
    return Plan(head, predict, criterion=build_loss(cfg.loss, data.class_counts),
                train_loader=train_feature_loader(cfg, train, device), lr_schedule=lr_schedule(cfg),
                views={"no_tte": plain}, finish=_record_trainable(counts),
                extra=_extra(cfg, clip, data, "cached (frozen tower, no train augmentation)", counts))


def zeroshot_plan(ctx: RunContext, clip: Clip) -> Plan:
    """z = 100 · cos(f P, t_c) on cached projected features; no training."""
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    t0 = time.perf_counter()
    head = ZeroShotHead(text_weights(clip, data.class_names, cfg, device)).to(device)
    predict, plain = _cached_predictor(cfg, clip, data, head, device, project=True)
    extra = _extra(cfg, clip, data, "cached (frozen tower)")
    extra.update({"epochs": 0, "selection": "no training", "zero_shot_scale": head.scale})
    return Plan(head, predict, views={"no_tte": plain}, finish=_record_trainable({"tower": 0, "head": 0, "total": 0}),
                extra=extra, train_seconds=time.perf_counter() - t0)
