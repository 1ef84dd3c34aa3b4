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

import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import engine
from ..config import ConfigError, RunConfig
from ..data import LTData, make_loader
from ..data.base import DataError
from ..data.device_loader import DeviceTensorLoader
from ..data.image_list import ImageFileDataset
from ..data.loaders import FileLoader
from ..data.samplers import build_sampler
from ..data.transforms import eval_transform, five_crop_transform, train_transform
from ..features import FeatureLoader, cached_features, feature_key, weights_digest
from ..losses import build_loss
from ..models.clip import Clip, load_clip, text_classifier, visual_projection
from ..models.heads import CosineHead
from ..models.peft import apply_peft, count_parameters, peft_info
from ..results import RunDir
from ..study import Evaluation, add_open_set_metrics, begin_run, completed_results, evaluate_logits, write_run_results
from ..tte import ViewLoader, average_views, stack_views

NOTEBOOK = "pel.ipynb"
ZERO_SHOT_SCALE = 100.0
SUMMARY_KEYS = ("top1", "mean_per_class", "many", "medium", "few", "ece")


# ----------------------------------------------------------------------------------------------
# CLIP, data and text


def load_run_clip(cfg: RunConfig, device) -> Clip:
    """The run's CLIP (``clip_model``, ``clip_pretrained``, ``clip_interpolation``) on ``device``."""
    return load_clip(cfg.clip.clip_model, cfg.clip.clip_pretrained, device=device,
                     interpolation=cfg.clip.clip_interpolation)


def clip_data(data: LTData, clip: Clip) -> LTData:
    """The dataset with CLIP's normalisation and input size (what the towers were trained with)."""
    if data.train.images is not None and data.train.images.shape[1] != 3:
        raise DataError(f"{data.name}: CLIP needs 3-channel images, got {data.train.images.shape[1]} channels")
    return dataclasses.replace(data, mean=tuple(clip.mean), std=tuple(clip.std), image_size=clip.image_size)


def templates(cfg: RunConfig) -> tuple[str, ...]:
    """``clip_prompt`` alone, or CLIP's 80 ImageNet templates (open_clip's OPENAI_IMAGENET_TEMPLATES)."""
    if cfg.pel.pel_templates == "single":
        return (cfg.clip.clip_prompt,)
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def text_weights(clip: Clip, class_names, cfg: RunConfig, device) -> torch.Tensor:
    """t_c [C, embed_dim], L2-normalised (template ensemble averaged, then renormalised)."""
    empty = [i for i, n in enumerate(class_names) if not str(n).strip()]
    if empty:
        raise DataError(f"classes {empty[:10]} have no name: CLIP needs a text for every class "
                        f"(fix the dataset's class list)")
    return text_classifier(clip, list(class_names), templates(cfg), device=device)


def head_init(clip: Clip, t: torch.Tensor) -> torch.Tensor:
    """Classifier weights from text features: w_c = normalize(t_c Pᵀ) (ViT) or t_c (ResNet)."""
    proj = visual_projection(clip)
    w = t if proj is None else t @ proj.detach().to(t.dtype).T
    return F.normalize(w, dim=-1)


def visual_features(visual: nn.Module, x: torch.Tensor, *, is_vit: bool, project: bool = False) -> torch.Tensor:
    """Pre-projection feature (ViT: ln_post(CLS); ResNet: attention pool), or the projected embedding."""
    if project or not is_vit:
        return visual(x)
    return visual._pool(visual.transformer(visual._embeds(x)))[0]


# ----------------------------------------------------------------------------------------------
# model


class ClipClassifier(nn.Module):
    """logits = head(f(x)), f the (tuned) visual tower's pre-projection feature; views [B, V, C, H, W]
    are averaged in logit space (TTE).

    ``state_dict`` holds only trainable tensors and buffers (tuners, head; the whole blocks for
    ``full``); ``load_state_dict`` accepts that and insists only on the trainable ones. BatchNorm
    statistics of a frozen ResNet tower stay fixed in training (``freeze_norm_stats``).
    """

    def __init__(self, visual: nn.Module, head: nn.Module, *, is_vit: bool, freeze_norm_stats: bool = True):
        super().__init__()
        self.visual, self.head = visual, head
        self.is_vit, self.freeze_norm_stats = is_vit, freeze_norm_stats

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return visual_features(self.visual, x, is_vit=self.is_vit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return average_views(lambda v: self.head(self.features(v)), x)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_norm_stats:
            for m in self.visual.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _frozen(self) -> set[str]:
        return {n for n, p in self.named_parameters() if not p.requires_grad}

    def state_dict(self, *args, **kwargs):
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        frozen = {prefix + n for n in self._frozen()}
        for k in [k for k in full if k in frozen]:
            del full[k]
        return full

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        missing, unexpected = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = self._frozen()
        missing = [k for k in missing if k not in frozen]
        if strict and (missing or unexpected):
            raise RuntimeError(f"ClipClassifier.load_state_dict: missing trainable tensors {missing[:5]}, "
                               f"unexpected {unexpected[:5]} (was the checkpoint made with another pel_peft?)")
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


def build_head(cfg: RunConfig, clip: Clip, class_names, device) -> tuple[CosineHead, torch.Tensor | None]:
    """Cosine head (scale ``pel_scale``) on the pre-projection feature, text-initialised unless ``pel_init=random``."""
    head = CosineHead(clip.feature_dim, len(class_names), scale=cfg.pel.pel_scale).to(device)
    t = None
    if cfg.pel.pel_init == "text":
        t = text_weights(clip, class_names, cfg, device)
        with torch.no_grad():
            head.weight.copy_(head_init(clip, t))
    return head, t


def build_model(cfg: RunConfig, clip: Clip, data: LTData, device) -> tuple[ClipClassifier, dict]:
    """apply_peft(pel_peft) on the visual tower + the text-initialised cosine head; returns (model, counts)."""
    tower = apply_peft(clip, cfg.pel.pel_peft, num_classes=data.num_classes, bottleneck=cfg.pel.pel_bottleneck,
                       vpt_length=cfg.pel.pel_vpt_length, partial=cfg.pel.pel_partial)
    head, _ = build_head(cfg, clip, data.class_names, device)
    model = ClipClassifier(clip.model.visual, head, is_vit=clip.is_vit,
                           freeze_norm_stats=cfg.pel.pel_peft != "full").to(device)
    counts = {"tower": count_parameters(tower), "head": count_parameters(head.parameters())}
    counts["total"] = counts["tower"] + counts["head"]
    return model, counts


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
    """RandomResizedCrop + flip at CLIP's input size: on the device for small images (``augment_mode``,
    e.g. rrc 32 -> 224); image files through ``make_loader`` (bilinear, its backends and DDP sharding),
    or PIL workers with bicubic RandomResizedCrop when ``clip_interpolation=bicubic``."""
    part = data.train
    if part.images is not None or cfg.clip.clip_interpolation == "bilinear":
        return make_loader(data, "train", train=True, batch_size=cfg.train.batch_size, device=device,
                           sampler=cfg.data.sampler, seed=cfg.run.seed, augment=cfg.data.augment,
                           crop_padding=cfg.data.crop_padding, epochs=cfg.train.epochs,
                           augment_mode=cfg.data.augment_mode, rrc_scale_min=cfg.data.rrc_scale_min)
    transform = (train_transform(data.image_size, data.mean, data.std, scale=(cfg.data.rrc_scale_min, 1.0),
                                 interpolation=cfg.clip.clip_interpolation) if cfg.data.augment
                 else eval_transform(data.image_size, data.mean, data.std, interpolation=cfg.clip.clip_interpolation))
    sampler = build_sampler(cfg.data.sampler, part.labels, seed=cfg.run.seed, epochs=cfg.train.epochs)
    return FileLoader(ImageFileDataset(part.paths, part.labels, transform), batch_size=cfg.train.batch_size,
                      device=device, sampler=sampler, seed=cfg.run.seed, num_workers=cfg.data.num_workers)


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


class ZeroShotHead(nn.Module):
    """z_c = scale · cos(e, t_c) on the projected image embedding e (CLIP's zero-shot classifier)."""

    def __init__(self, text: torch.Tensor, scale: float = ZERO_SHOT_SCALE):
        super().__init__()
        self.register_buffer("weight", F.normalize(text.float(), dim=-1))
        self.scale = scale

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(e.float(), dim=-1) @ self.weight.T


# ----------------------------------------------------------------------------------------------
# runs


def _summary(m: dict) -> dict:
    return {k: m.get(k) for k in SUMMARY_KEYS}


def _scalars(m: dict) -> dict:
    return {k: (float(m[k]) if m.get(k) is not None else float("nan")) for k in ("top1", "many", "medium", "few", "ece")}


def _extra(cfg: RunConfig, clip: Clip, data: LTData, features: str, counts: dict | None = None) -> dict:
    extra = {"model": f"clip:{clip.name}", "clip": clip.record(), "peft": peft_info(clip),
             "tte": tte_record(cfg, data), "features": features, "text_templates": len(templates(cfg))}
    if counts is not None:
        extra["trainable_params"] = counts
    return extra


def _open_set(cfg: RunConfig, clip: Clip, data: LTData, ev: Evaluation, head: nn.Module, run_dir: RunDir, device, *,
              project: bool) -> None:
    """Open-set metrics (OLTR protocol) from cached open-split features when the dataset has an open split."""
    if data.open is None:
        return
    feats = frozen_features(cfg, clip, data, "open", device, tte=cfg.pel.pel_tte, project=project)
    add_open_set_metrics(cfg, data, ev, head_logits(head, feats["features"], device), run_dir)


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """Train (pel) or just evaluate (zeroshot); write the run directory; returns the results.json dict."""
    done = completed_results(cfg)
    if done is not None:
        return done
    if cfg.run.method == "pel":
        lr_schedule(cfg)  # a warm-up with the epoch-wise schedule fails before anything is written
    run_dir, chash, device, data = begin_run(cfg, data)
    clip = load_run_clip(cfg, device)
    clip.model.requires_grad_(False)
    data = clip_data(data, clip)
    print(f"CLIP {clip.name} ({clip.pretrained or 'random init'}), {clip.activation}, input {clip.image_size} px, "
          f"{clip.interpolation}; feature {clip.feature_dim}-d", flush=True)
    if cfg.run.method == "zeroshot":
        return run_zeroshot(cfg, clip, data, run_dir, chash, device)
    if cfg.pel.pel_peft == "linear_probe" and cfg.pel.pel_cached_features:
        return run_cached_probe(cfg, clip, data, run_dir, chash, device)
    return run_finetune(cfg, clip, data, run_dir, chash, device)


def _last_epoch_evaluation(cfg: RunConfig, last: list[Evaluation], evaluate: Callable[[int], dict]) -> Evaluation:
    """The last epoch's evaluation (run now where ``eval_every`` skipped it), its summary kept as ``no_tte``
    until a test-time-ensembling run replaces that with the plain view's numbers."""
    if not last or last[0].epoch != cfg.train.epochs - 1:
        evaluate(cfg.train.epochs - 1)
    ev = last[0]
    ev.metrics["no_tte"] = _summary(ev.metrics)
    return ev


def run_finetune(cfg: RunConfig, clip: Clip, data: LTData, run_dir: RunDir, chash: str, device) -> dict:
    """PEFT (or full / head-only) training through ``engine.fit`` on augmented images; last-epoch evaluation."""
    model, counts = build_model(cfg, clip, data, device)
    print(f"pel_peft={cfg.pel.pel_peft}: trainable {counts}", flush=True)
    criterion = build_loss(cfg.loss, data.class_counts)
    loader = train_loader(cfg, data, device)
    headline = eval_loader(cfg, data, cfg.data.eval_split, device, tte=cfg.pel.pel_tte)
    last: list[Evaluation] = []

    def evaluate(epoch: int) -> dict:
        logits, labels = engine.predict(model, headline, device, cfg.train.precision)
        last[:] = [Evaluation(epoch, logits, labels, evaluate_logits(logits, labels, data, cfg))]
        return _scalars(last[0].metrics)

    fit = engine.fit(model, criterion, loader, cfg=cfg, run_dir=run_dir, device=device, evaluate=evaluate,
                     lr_schedule=lr_schedule(cfg))
    ev = _last_epoch_evaluation(cfg, last, evaluate)
    if cfg.pel.pel_tte:
        plain = eval_loader(cfg, data, cfg.data.eval_split, device, tte=False)
        logits, labels = engine.predict(model, plain, device, cfg.train.precision)
        ev.metrics["no_tte"] = _summary(evaluate_logits(logits, labels, data, cfg))
    if data.open is not None:  # OLTR open-set protocol, with the headline's views
        open_logits, _ = engine.predict(model, eval_loader(cfg, data, "open", device, tte=cfg.pel.pel_tte), device,
                                        cfg.train.precision)
        add_open_set_metrics(cfg, data, ev, open_logits, run_dir)
    ev.metrics["trainable"] = counts
    return write_run_results(cfg, run_dir, chash, data, model, ev, fit, device,
                             extra=_extra(cfg, clip, data, "online", counts))


def run_cached_probe(cfg: RunConfig, clip: Clip, data: LTData, run_dir: RunDir, chash: str, device) -> dict:
    """Classifier-only training on cached frozen-tower features (no train augmentation: a labelled variant)."""
    apply_peft(clip, "linear_probe", num_classes=data.num_classes)
    train = frozen_features(cfg, clip, data, "train", device, tte=False, project=False)
    views = {tte: frozen_features(cfg, clip, data, cfg.data.eval_split, device, tte=tte, project=False)
             for tte in ({cfg.pel.pel_tte, False})}
    head, _ = build_head(cfg, clip, data.class_names, device)
    counts = {"tower": 0, "head": count_parameters(head.parameters())}
    counts["total"] = counts["head"]
    sampler = build_sampler(cfg.data.sampler, train["labels"], seed=cfg.run.seed, epochs=cfg.train.epochs)
    loader = FeatureLoader(train["features"], train["labels"], batch_size=cfg.train.batch_size, device=device,
                           sampler=sampler)
    criterion = build_loss(cfg.loss, data.class_counts)
    test = views[cfg.pel.pel_tte]
    last: list[Evaluation] = []

    def evaluate(epoch: int) -> dict:
        logits = head_logits(head, test["features"], device)
        last[:] = [Evaluation(epoch, logits, test["labels"], evaluate_logits(logits, test["labels"], data, cfg))]
        return _scalars(last[0].metrics)

    fit = engine.fit(head, criterion, loader, cfg=cfg, run_dir=run_dir, device=device, evaluate=evaluate,
                     lr_schedule=lr_schedule(cfg))
    ev = _last_epoch_evaluation(cfg, last, evaluate)
    if cfg.pel.pel_tte:
        plain = views[False]
        ev.metrics["no_tte"] = _summary(evaluate_logits(head_logits(head, plain["features"], device),
                                                        plain["labels"], data, cfg))
    _open_set(cfg, clip, data, ev, head, run_dir, device, project=False)
    ev.metrics["trainable"] = counts
    return write_run_results(cfg, run_dir, chash, data, head, ev, fit, device,
                             extra=_extra(cfg, clip, data, "cached (frozen tower, no train augmentation)", counts))


def run_zeroshot(cfg: RunConfig, clip: Clip, data: LTData, run_dir: RunDir, chash: str, device) -> dict:
    """z = 100 · cos(f P, t_c) on cached projected features; no training."""
    t0 = time.perf_counter()
    head = ZeroShotHead(text_weights(clip, data.class_names, cfg, device)).to(device)
    views = {tte: frozen_features(cfg, clip, data, cfg.data.eval_split, device, tte=tte, project=True)
             for tte in ({cfg.pel.pel_tte, False})}
    test = views[cfg.pel.pel_tte]
    logits = head_logits(head, test["features"], device)
    ev = Evaluation(0, logits, test["labels"], evaluate_logits(logits, test["labels"], data, cfg))
    ev.metrics["no_tte"] = _summary(ev.metrics)
    if cfg.pel.pel_tte:
        plain = views[False]
        ev.metrics["no_tte"] = _summary(evaluate_logits(head_logits(head, plain["features"], device),
                                                        plain["labels"], data, cfg))
    _open_set(cfg, clip, data, ev, head, run_dir, device, project=True)
    ev.metrics["trainable"] = {"tower": 0, "head": 0, "total": 0}
    fit = engine.FitResult(train_seconds=time.perf_counter() - t0)
    extra = _extra(cfg, clip, data, "cached (frozen tower)")
    extra.update({"epochs": 0, "selection": "no training", "zero_shot_scale": head.scale})
    return write_run_results(cfg, run_dir, chash, data, head, ev, fit, device, extra=extra)
