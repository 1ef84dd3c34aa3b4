"""LiVT (Xu et al., "Learning Imbalanced Data with Vision Transformers", CVPR 2023; methods.md §4).

A ViT trained from scratch on the long-tailed training set only, in two stages, both with
instance-balanced sampling (the re-balancing lives in the loss):

1. **MGP** — masked generative pre-training: an MAE (:mod:`ltr_core.models.mae`) on the training images
   without labels; 75 % of the patches masked per image, MSE on the masked patches against per-patch
   normalised pixels; AdamW β = (0.9, 0.95), lr = blr · batch / 256 (blr 1.5e-4), warm-up then
   half-cycle cosine to 0, wd 0.05 (none on 1-D params); RandomResizedCrop (scale 0.2–1) + flip.
   Kept in ``<run_dir>/mgp/`` with its own checkpoint (a killed run resumes inside MGP), then
   ``encoder.safetensors`` (the ViT encoder, what BFT loads), ``mae.safetensors`` (encoder + decoder,
   for the reconstruction figure) and ``mgp.json`` (written last: the stage is complete).
2. **BFT** — balanced fine-tuning of the encoder: global average pooling of the patch tokens →
   ``fc_norm`` → linear head (trunc-normal std 2e-5), Bal-BCE
   L = Σ_{i,j} BCE(z_ij + τ·(log π_j − log(1 − π_j)), t_ij) / B (methods.md §2.7, τ honoured),
   AdamW with layer-wise lr decay (layer l gets lr · decay^(L+1−l)), drop path, RandAugment
   rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / cutmix 1.0 with soft targets (label smoothing
   inside the targets), warm-up + cosine to min_lr. Raw logits at test.

BFT starts from this run's MGP (``livt_mgp_epochs > 0``), from an earlier run's MGP (``init_run``: a run
directory or run id of a LiVT run, or an ``encoder.safetensors`` file; ``livt_mgp_epochs`` must then be
0) or from random initialisation (``livt_mgp_epochs: 0`` without ``init_run``: the "no MGP" rows of the
paper's ablation). ``loss`` picks Bal-BCE (LiVT) or CE (the ablation's CE rows).

RandAugment/erasing/mixup run on the device in ``engine.fit``'s ``batch_transform`` for both input
paths (see :mod:`ltr_core.augment` for the vectorised per-image RandAugment and how it differs from
timm's PIL one).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

from .. import engine
from ..augment import BatchAugment
from ..config import ConfigError, RunConfig
from ..data import LTData, make_loader
from ..losses import build_loss
from ..models import Classifier
from ..models.heads import build_head
from ..models.mae import MGPLoss, mae_forward_macs, vit_forward_macs
from ..models.vit import build_vit, layer_decay_groups, load_encoder
from ..stages import StageError  # noqa: F401 (livt.StageError: what find_mgp raises)
from ..study import Plan, RunContext, in_channels, loader_kwargs, run_family, supervised_plan, train_loader
from .livt_mgp import (ENCODER_FILE, MAE_FILE, MGP_STAGE, MGP_SUMMARY, build_mae, check_mgp_source,  # noqa: F401
                       example_indices, find_mgp, mgp_config, mgp_data, mgp_lr, mgp_param_groups, mgp_source,
                       mgp_stage_dir, reconstructions, run_mgp, vit_shape)

NOTEBOOK = "livt.ipynb"
SOFT_TARGET_LOSSES = ("bal_bce", "ce")  # losses that take mixup/cutmix soft targets [B, C]


# ---------------------------------------------------------------------------------------------- BFT


def build_classifier(cfg: RunConfig, data: LTData, encoder: Path | None = None) -> tuple[Classifier, dict]:
    """ViT (global-average-pool + fc_norm, drop path) from the MGP encoder (if any) + linear head."""
    if cfg.model.pretrained:
        raise ConfigError("LiVT starts from its own MGP encoder: leave pretrained empty and use init_run "
                          "(a LiVT run or an encoder .safetensors file) to start from another run's MGP")
    lv = cfg.livt
    vit = build_vit(cfg.model.model, image_size=data.image_size, drop_path=lv.livt_drop_path,
                    global_pool=lv.livt_global_pool, in_chans=in_channels(data), **vit_shape(cfg))
    info = load_encoder(vit, encoder) if encoder is not None else {"loaded": 0}
    head = build_head(cfg.model.head, vit.num_features, data.num_classes, cosine_scale=cfg.model.cosine_scale)
    if isinstance(head, nn.Linear):
        nn.init.trunc_normal_(head.weight, std=lv.livt_head_init_std)
        nn.init.zeros_(head.bias)
    return Classifier(vit, head, cfg.model.drop_rate), info


def batch_augment(cfg: RunConfig, data: LTData) -> BatchAugment:
    """The BFT batch transform from the livt knobs (label smoothing goes into the mixed targets)."""
    lv = cfg.livt
    return BatchAugment(mean=data.mean, std=data.std, num_classes=data.num_classes,
                        randaug_ops=lv.livt_randaug_ops, randaug_magnitude=lv.livt_randaug_magnitude,
                        randaug_mstd=lv.livt_randaug_mstd, randaug_prob=lv.livt_randaug_prob, reprob=lv.livt_reprob,
                        mixup_alpha=lv.livt_mixup_alpha, cutmix_alpha=lv.livt_cutmix_alpha,
                        mixup_prob=lv.livt_mixup_prob, switch_prob=lv.livt_mixup_switch_prob,
                        smoothing=cfg.loss.label_smoothing)


def build_bft_loss(cfg: RunConfig, data: LTData, mixing: bool) -> nn.Module:
    """The loss from the loss params; with mixup/cutmix its label smoothing is 0 (the soft targets carry it)."""
    if mixing and cfg.loss.loss not in SOFT_TARGET_LOSSES:
        raise ConfigError(f"loss {cfg.loss.loss!r} does not take the soft targets of mixup/cutmix; use one of "
                          f"{SOFT_TARGET_LOSSES} or set livt_mixup_alpha: 0 and livt_cutmix_alpha: 0")
    loss_cfg = dataclasses.replace(cfg.loss, label_smoothing=0.0) if mixing else cfg.loss
    return build_loss(loss_cfg, data.class_counts)


def bft_param_groups(model: Classifier, cfg: RunConfig) -> list[dict]:
    """Layer-wise lr decay groups of the fine-tuning ViT + head (peak lr = ``lr``)."""
    return layer_decay_groups(model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                              layer_decay=cfg.livt.livt_layer_decay, num_blocks=len(model.backbone.blocks))


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """MGP (or an earlier run's MGP, or none) then BFT; returns the results.json dict."""
    if cfg.run.method != "livt":
        raise ConfigError(f"ltr_core.methods.livt runs method 'livt', got {cfg.run.method!r}")
    check_mgp_source(cfg)
    return run_family(cfg, bft_plan, data=data)


def bft_plan(ctx: RunContext) -> Plan:
    """This run's MGP (inside the claimed run directory) or the encoder it starts from, then BFT end to end."""
    cfg, data = ctx.cfg, ctx.data
    encoder, mgp = mgp_source(cfg, data)
    augment = batch_augment(cfg, data)
    probe = build_vit(cfg.model.model, image_size=data.image_size, in_chans=in_channels(data), **vit_shape(cfg))
    gmacs = vit_forward_macs(probe) / 1e9
    del probe
    engine.seed_everything(cfg.run.seed)  # the classifier's initialisation does not depend on MGP having run
    model, loaded = build_classifier(cfg, data, encoder)
    extra = {
        "livt": {
            "mgp": mgp, "init": "mgp encoder" if encoder is not None else "random",
            "encoder": str(encoder) if encoder is not None else None, "loaded": loaded,
            "bft_forward_gmacs_per_image": gmacs,
            "randaugment": "ltr_core.augment (vectorised rand-m9-mstd0.5-inc1)",
        },
        "mgp_images_per_second": mgp.get("images_per_second") if mgp else None,
        "mgp_train_seconds": mgp.get("train_seconds") if mgp else None,
    }
    return supervised_plan(ctx, model, build_bft_loss(cfg, data, augment.mixing), batch_transform=augment,
                           make_optimizer=lambda m: engine.build_optimizer(bft_param_groups(m, cfg), cfg.optim),
                           extra=extra)


# ---------------------------------------------------------------------------------------------- throughput

H100_BF16_FLOPS = 790e12  # measured dense bf16 peak used for every bound (performance.md §3)


def h100_bound(forward_macs: float, mfu: float = 0.5) -> float:
    """Training images/s bound on one H100: mfu · 790e12 / (3 · 2 · MACs) (performance.md §10)."""
    return mfu * H100_BF16_FLOPS / (3 * 2 * forward_macs)


def stage_throughput(cfg: RunConfig, data: LTData, steps: int = 5, warmup: int = 1) -> dict:
    """Training images/s of both stages on ``cfg.run.device`` with the real input path, optimizer and
    augmentation (MGP: MAE step on the loader's RRC batches; BFT: classifier step after RandAugment /
    erasing / mixup), ``steps`` timed steps after ``warmup`` untimed ones; no evaluation, nothing written.
    Returns images/s (wall clock; and per CPU-second of this process, which on a shared CPU with one
    thread is the unloaded single-core rate), forward GMACs per image and the H100 bounds at 100 % and
    50 % MFU."""
    device = engine.resolve_device(cfg.run.device)
    out: dict = {"device": str(device), "threads": torch.get_num_threads()}
    mcfg = mgp_config(cfg)
    mdata = mgp_data(mcfg, data)

    def timed(model, criterion, loader, optimizer, batch_transform, precision_cfg):
        model.to(device).train()
        dtype = engine.autocast_dtype(precision_cfg.train.precision, device)
        it = iter(loader)
        seen, t0, c0 = 0, 0.0, 0.0
        for i in range(warmup + steps):
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            if i == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
            if batch_transform is not None:
                x, y = batch_transform(x, y)
            with engine.autocast(device, dtype):
                loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= warmup:
                seen += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"images_per_second": seen / wall, "images_per_cpu_second": seen / cpu if cpu > 0 else float("nan"),
                "steps": steps, "images": seen}

    torch.manual_seed(cfg.run.seed)
    mae = build_mae(mcfg, mdata.image_size, in_channels(data))
    loader = train_loader(mcfg, mdata, device)
    opt = engine.build_optimizer(mgp_param_groups(mae, mcfg.optim.weight_decay), mcfg.optim)
    macs = mae_forward_macs(mae.encoder, mcfg.livt.livt_decoder_width, mcfg.livt.livt_decoder_depth,
                            mcfg.livt.livt_mask_ratio)
    out["mgp"] = {"batch_size": mcfg.train.batch_size, "image_size": mdata.image_size,
                  "patch_size": mae.patch_size, "tokens": 1 + int(round((1 - mae.mask_ratio) * mae.num_patches)),
                  "params_m": sum(p.numel() for p in mae.parameters()) / 1e6,
                  **timed(mae, MGPLoss(), loader, opt, None, mcfg),
                  "forward_gmacs_per_image": macs / 1e9, "h100_bound_100": h100_bound(macs, 1.0),
                  "h100_bound_50": h100_bound(macs, 0.5)}
    del mae, opt
    augment = batch_augment(cfg, data)
    model, _ = build_classifier(cfg, data)
    criterion = build_bft_loss(cfg, data, augment.mixing)
    loader = make_loader(data, "train", device=device, **{**loader_kwargs(cfg), "sampler": "instance", "augment": True})
    opt = engine.build_optimizer(bft_param_groups(model, cfg), cfg.optim)
    macs = vit_forward_macs(model.backbone)
    pe = model.backbone.patch_embed
    out["bft"] = {"batch_size": cfg.train.batch_size, "image_size": data.image_size,
                  "patch_size": int(pe.patch_size[0]), "tokens": 1 + int(pe.num_patches),
                  "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                  **timed(model, criterion, loader, opt, augment, cfg),
                  "forward_gmacs_per_image": macs / 1e9, "h100_bound_100": h100_bound(macs, 1.0),
                  "h100_bound_50": h100_bound(macs, 0.5)}
    return out
