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
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import engine
from ..augment import BatchAugment
from ..config import ConfigError, RunConfig, config_hash, to_flat
from ..data import LTData, Split, build_data, make_loader
from ..losses import build_loss
from ..models import Classifier
from ..models.heads import build_head
from ..models.mae import MaskedAutoencoder, MGPLoss, mae_forward_macs, vit_forward_macs
from ..models.vit import build_vit, layer_decay_groups, load_encoder
from ..results import RunDir, atomic_write_text, dump_json
from ..stages import (StageError, format_ref, load_run_config, resolve_run, stage_config, stage_dir,
                      state_dict_cpu)
from ..study import completed_results, prepare_run_dir, run_supervised

NOTEBOOK = "livt.ipynb"
MGP_STAGE = "mgp"
ENCODER_FILE = "encoder.safetensors"
MAE_FILE = "mae.safetensors"
MGP_SUMMARY = "mgp.json"
SOFT_TARGET_LOSSES = ("bal_bce", "ce")  # losses that take mixup/cutmix soft targets [B, C]


# ---------------------------------------------------------------------------------------------- MGP


def mgp_lr(cfg: RunConfig) -> float:
    """MGP absolute lr = livt_mgp_blr · livt_mgp_batch_size / 256 (the MAE linear scaling rule)."""
    return cfg.livt.livt_mgp_blr * cfg.livt.livt_mgp_batch_size / 256.0


def mgp_config(cfg: RunConfig) -> RunConfig:
    """The MGP stage's config: this run's with the MGP schedule, optimizer and crop, run_dir = <run_dir>/mgp."""
    lv = cfg.livt
    return stage_config(
        cfg, MGP_STAGE, epochs=lv.livt_mgp_epochs, batch_size=lv.livt_mgp_batch_size,
        accum_steps=lv.livt_mgp_accum_steps, lr=mgp_lr(cfg), optimizer="adamw", adam_beta1=0.9,
        adam_beta2=lv.livt_mgp_beta2, weight_decay=lv.livt_mgp_weight_decay, schedule="cosine",
        warmup_epochs=lv.livt_mgp_warmup_epochs, min_lr=0.0, image_size=lv.livt_mgp_image_size or cfg.data.image_size,
        augment=True, augment_mode="rrc", rrc_scale_min=lv.livt_mgp_rrc_scale_min, sampler="instance",
        grad_clip=0.0, eval_every=0)


def vit_shape(cfg: RunConfig) -> dict:
    """The ViT overrides of the livt section (0 keeps the timm model's value)."""
    lv = cfg.livt
    return {"patch_size": lv.livt_patch_size, "width": lv.livt_vit_width, "depth": lv.livt_vit_depth,
            "heads": lv.livt_vit_heads}


def in_channels(data: LTData) -> int:
    return int(data.train.images.shape[1]) if data.train.images is not None else 3


def build_mae(mcfg: RunConfig, image_size: int, in_chans: int = 3) -> MaskedAutoencoder:
    """The MAE of an MGP stage config (encoder = the fine-tuning ViT with the cls-token head)."""
    lv = mcfg.livt
    encoder = build_vit(mcfg.model.model, image_size=image_size, global_pool="token", in_chans=in_chans,
                        **vit_shape(mcfg))
    return MaskedAutoencoder(encoder, decoder_width=lv.livt_decoder_width, decoder_depth=lv.livt_decoder_depth,
                             decoder_heads=lv.livt_decoder_heads, mask_ratio=lv.livt_mask_ratio,
                             norm_pix_loss=lv.livt_norm_pix_loss)


def mgp_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on ≥2-D tensors, none on 1-D ones (biases, LayerNorms); frozen
    tensors (the fixed sin-cos position embedding) are left out."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _mgp_data(mcfg: RunConfig, data: LTData) -> LTData:
    return dataclasses.replace(data, image_size=mcfg.data.image_size or data.image_size)


def run_mgp(cfg: RunConfig, data: LTData) -> dict:
    """Train (or resume, or skip when complete) the MGP stage of this run; returns its ``mgp.json`` summary."""
    mcfg = mgp_config(cfg)
    sdir = RunDir(stage_dir(cfg, MGP_STAGE))
    chash = config_hash(mcfg)
    summary_path = sdir / MGP_SUMMARY
    if summary_path.is_file():
        done = sdir.read_json(MGP_SUMMARY)
        if done.get("status") == "complete" and done.get("config_hash") == chash:
            print(f"skip MGP: {sdir.path} is complete", flush=True)
            return done
    sdir.mkdir()
    sdir.write_config(to_flat(mcfg), chash, f"{cfg.run_id}/{MGP_STAGE}")
    device = engine.resolve_device(cfg.run.device)
    mdata = _mgp_data(mcfg, data)
    engine.seed_everything(cfg.run.seed)
    mae = build_mae(mcfg, mdata.image_size, in_channels(data))
    loader = make_loader(mdata, "train", train=True, batch_size=mcfg.train.batch_size, device=device,
                         sampler="instance", seed=cfg.run.seed, num_workers=cfg.data.num_workers, augment=True,
                         drop_last=False, epochs=mcfg.train.epochs, augment_mode="rrc",
                         rrc_scale_min=mcfg.data.rrc_scale_min)
    optimizer = engine.build_optimizer(mgp_param_groups(mae, mcfg.optim.weight_decay), mcfg.optim)
    fit = engine.fit(mae, MGPLoss(), loader, cfg=mcfg, run_dir=sdir, device=device, optimizer=optimizer)
    save_safetensors(state_dict_cpu(mae.encoder), sdir / ENCODER_FILE)
    save_safetensors(state_dict_cpu(mae), sdir / MAE_FILE)
    history = sdir.read_metrics()
    macs = mae_forward_macs(mae.encoder, mcfg.livt.livt_decoder_width, mcfg.livt.livt_decoder_depth,
                            mcfg.livt.livt_mask_ratio)
    summary = {
        "status": "complete", "config_hash": chash, "run_id": f"{cfg.run_id}/{MGP_STAGE}",
        "epochs": mcfg.train.epochs, "batch_size": mcfg.train.batch_size, "lr": mcfg.optim.lr,
        "image_size": mdata.image_size, "patch_size": mae.patch_size, "num_patches": mae.num_patches,
        "mask_ratio": mae.mask_ratio, "train_images": int(data.train.n),
        "final_loss": history[-1]["train_loss"] if history else None,
        "first_loss": history[0]["train_loss"] if history else None,
        "train_seconds": round(fit.train_seconds, 3), "images_per_second": fit.images_per_second,
        "forward_gmacs_per_image": macs / 1e9, "encoder": str(Path(sdir.path) / ENCODER_FILE),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(summary_path, dump_json(summary) + "\n")
    return summary


def save_safetensors(state: dict, path: Path) -> None:
    """Atomic safetensors write."""
    tmp = Path(f"{path}.tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def find_mgp(ref: str, cfg: RunConfig) -> tuple[Path, Path | None]:
    """(encoder file, MGP stage dir or None) named by ``init_run``: an encoder .safetensors file, or a
    LiVT run (directory or run id) whose ``mgp/`` stage is complete."""
    ref_path = Path(format_ref(ref, cfg)).expanduser()
    if ref_path.is_file():
        return ref_path, None
    run = resolve_run(ref, cfg)
    for sdir in (Path(run.path) / MGP_STAGE, Path(run.path)):
        if (sdir / MGP_SUMMARY).is_file():
            done = json_load(sdir / MGP_SUMMARY)
            if done.get("status") != "complete" or not (sdir / ENCODER_FILE).is_file():
                break
            return sdir / ENCODER_FILE, sdir
    raise StageError(f"init_run {ref!r} ({run.path}) holds no complete MGP stage ({MGP_STAGE}/{MGP_SUMMARY} and "
                     f"{ENCODER_FILE}); run that LiVT run to the end first, or give an encoder .safetensors file")


def json_load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def mgp_source(cfg: RunConfig, data: LTData) -> tuple[Path | None, dict | None]:
    """Where BFT starts: (encoder file, MGP summary) from this run's MGP, ``init_run``, or (None, None)."""
    if cfg.run.init_run and cfg.livt.livt_mgp_epochs > 0:
        raise ConfigError(f"init_run={cfg.run.init_run!r} and livt_mgp_epochs={cfg.livt.livt_mgp_epochs} both ask "
                          f"for an MGP encoder: set livt_mgp_epochs: 0 to fine-tune from init_run, or clear "
                          f"init_run to run MGP in this run")
    if cfg.run.init_run:
        encoder, sdir = find_mgp(cfg.run.init_run, cfg)
        summary = json_load(sdir / MGP_SUMMARY) if sdir is not None else {"encoder": str(encoder)}
        return encoder, {**summary, "source": "init_run", "init_run": cfg.run.init_run}
    if cfg.livt.livt_mgp_epochs > 0:
        summary = run_mgp(cfg, data)
        return Path(stage_dir(cfg, MGP_STAGE)) / ENCODER_FILE, {**summary, "source": "this run"}
    return None, None


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
    done = completed_results(cfg)
    if done is not None:
        return done
    prepare_run_dir(cfg)
    if data is None:
        engine.seed_everything(cfg.run.seed)
        data = build_data(cfg.data)
    encoder, mgp = mgp_source(cfg, data)
    augment = batch_augment(cfg, data)
    loaded: dict = {}

    def build(cfg_: RunConfig, data_: LTData):
        model, info = build_classifier(cfg_, data_, encoder)
        loaded.update(info)
        return model, build_bft_loss(cfg_, data_, augment.mixing)

    def make_optimizer(model: Classifier):
        return engine.build_optimizer(bft_param_groups(model, cfg), cfg.optim)

    probe = build_vit(cfg.model.model, image_size=data.image_size, in_chans=in_channels(data), **vit_shape(cfg))
    extra = {
        "livt": {
            "mgp": mgp, "init": "mgp encoder" if encoder is not None else "random",
            "encoder": str(encoder) if encoder is not None else None, "loaded": loaded,
            "bft_forward_gmacs_per_image": vit_forward_macs(probe) / 1e9,
            "randaugment": "ltr_core.augment (vectorised rand-m9-mstd0.5-inc1)",
        },
        "mgp_images_per_second": mgp.get("images_per_second") if mgp else None,
        "mgp_train_seconds": mgp.get("train_seconds") if mgp else None,
    }
    del probe
    return run_supervised(cfg, build, data=data, make_optimizer=make_optimizer, batch_transform=augment, extra=extra)


# ---------------------------------------------------------------------------------------------- figure


def mgp_stage_dir(cfg: RunConfig) -> Path | None:
    """The MGP stage directory whose MAE explains this run (its own, or init_run's), if it has one."""
    if cfg.run.init_run:
        try:
            _, sdir = find_mgp(cfg.run.init_run, cfg)
        except StageError:
            return None
        return sdir
    sdir = Path(stage_dir(cfg, MGP_STAGE))
    return sdir if (sdir / MAE_FILE).is_file() else None


def example_indices(labels: np.ndarray, n: int) -> list[int]:
    """``n`` sample indices: the first sample of each class in label order, then the next samples in order."""
    first = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels[labels >= 0])]
    rest = [i for i in range(len(labels)) if i not in set(first)]
    return (first + rest)[:n]


def reconstructions(cfg: RunConfig, data: LTData, n: int = 8, seed: int = 0) -> dict | None:
    """MAE reconstructions of ``n`` test images (one per class first) for the figure, or None without MGP.

    Returns {"original", "masked", "reconstruction", "pasted"}: float arrays [n, H, W, C] in [0, 1]
    (de-normalised), plus "mask_ratio", "loss" (masked MSE of these images) and "image_size".
    """
    sdir = mgp_stage_dir(cfg)
    if sdir is None or not (sdir / MAE_FILE).is_file():
        return None
    mcfg = load_run_config(RunDir(sdir))
    mdata = _mgp_data(mcfg, data)
    mae = build_mae(mcfg, mdata.image_size, in_channels(data))
    mae.load_state_dict(load_file(str(sdir / MAE_FILE)))
    mae.eval()
    picks = example_indices(data.test.labels.numpy(), n)
    test = data.test
    subset = Split(labels=test.labels[picks], images=None if test.images is None else test.images[picks],
                   paths=None if test.paths is None else [test.paths[i] for i in picks])
    loader = make_loader(dataclasses.replace(mdata, test=subset), "test", train=False, batch_size=len(picks),
                         device="cpu", num_workers=0)
    imgs = torch.cat([x for x, _ in loader])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pred, target, mask = mae(imgs, generator=torch.Generator().manual_seed(seed))
        loss = float(MGPLoss()((pred, target, mask)))
        masked, recon, pasted = mae.reconstruct(imgs, generator=gen)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)

    def show(t: torch.Tensor, blank: torch.Tensor | None = None) -> np.ndarray:
        out = (t * std + mean).clamp(0, 1)
        if blank is not None:  # masked patches shown grey
            out = torch.where(blank, torch.full_like(out, 0.5), out)
        return out.permute(0, 2, 3, 1).numpy()

    p = mae.patch_size
    pix_mask = mask.view(-1, 1, *mae.grid).repeat_interleave(p, 2).repeat_interleave(p, 3).bool()
    return {"original": show(imgs), "masked": show(masked, pix_mask.expand_as(masked)),
            "reconstruction": show(recon), "pasted": show(pasted), "mask_ratio": mae.mask_ratio,
            "loss": loss, "image_size": mdata.image_size}


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
    mdata = _mgp_data(mcfg, data)

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
    loader = make_loader(mdata, "train", train=True, batch_size=mcfg.train.batch_size, device=device,
                         seed=cfg.run.seed, augment=True, augment_mode="rrc", rrc_scale_min=mcfg.data.rrc_scale_min,
                         num_workers=cfg.data.num_workers)
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
    loader = make_loader(data, "train", train=True, batch_size=cfg.train.batch_size, device=device,
                         seed=cfg.run.seed, augment=True, augment_mode=cfg.data.augment_mode,
                         rrc_scale_min=cfg.data.rrc_scale_min, crop_padding=cfg.data.crop_padding,
                         num_workers=cfg.data.num_workers)
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
