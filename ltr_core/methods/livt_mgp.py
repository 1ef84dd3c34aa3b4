"""LiVT's masked generative pre-training (MGP) stage, where BFT finds its encoder, and the reconstruction
figure. Formulas and defaults: :mod:`ltr_core.methods.livt`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from .. import engine
from ..config import ConfigError, RunConfig, config_hash, to_flat
from ..data import LTData, Split, make_loader
from ..models.mae import MaskedAutoencoder, MGPLoss, mae_forward_macs
from ..models.vit import build_vit
from ..results import RunDir, atomic_write_text, dump_json
from ..stages import StageError, format_ref, load_run_config, resolve_run, save_weights, stage_config, stage_dir
from ..study import decay_groups, in_channels, train_loader

MGP_STAGE = "mgp"
ENCODER_FILE = "encoder.safetensors"
MAE_FILE = "mae.safetensors"
MGP_SUMMARY = "mgp.json"


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
    return decay_groups(model.parameters(), weight_decay)


def mgp_data(mcfg: RunConfig, data: LTData) -> LTData:
    """The data at the MGP crop size (``livt_mgp_image_size``, 0: the run's)."""
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
    mdata = mgp_data(mcfg, data)
    engine.seed_everything(cfg.run.seed)
    mae = build_mae(mcfg, mdata.image_size, in_channels(data))
    loader = train_loader(mcfg, mdata, device)  # instance sampler, RandomResizedCrop + flip (mgp_config)
    optimizer = engine.build_optimizer(mgp_param_groups(mae, mcfg.optim.weight_decay), mcfg.optim)
    fit = engine.fit(mae, MGPLoss(), loader, cfg=mcfg, run_dir=sdir, device=device, optimizer=optimizer)
    save_weights(mae.encoder, sdir / ENCODER_FILE)
    save_weights(mae, sdir / MAE_FILE)
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


def check_mgp_source(cfg: RunConfig) -> None:
    """``init_run`` and ``livt_mgp_epochs`` > 0 both ask for an MGP encoder: a ConfigError naming the fix."""
    if cfg.run.init_run and cfg.livt.livt_mgp_epochs > 0:
        raise ConfigError(f"init_run={cfg.run.init_run!r} and livt_mgp_epochs={cfg.livt.livt_mgp_epochs} both ask "
                          f"for an MGP encoder: set livt_mgp_epochs: 0 to fine-tune from init_run, or clear "
                          f"init_run to run MGP in this run")


def mgp_source(cfg: RunConfig, data: LTData) -> tuple[Path | None, dict | None]:
    """Where BFT starts: (encoder file, MGP summary) from this run's MGP, ``init_run``, or (None, None)."""
    check_mgp_source(cfg)
    if cfg.run.init_run:
        encoder, sdir = find_mgp(cfg.run.init_run, cfg)
        summary = json_load(sdir / MGP_SUMMARY) if sdir is not None else {"encoder": str(encoder)}
        return encoder, {**summary, "source": "init_run", "init_run": cfg.run.init_run}
    if cfg.livt.livt_mgp_epochs > 0:
        summary = run_mgp(cfg, data)
        return Path(stage_dir(cfg, MGP_STAGE)) / ENCODER_FILE, {**summary, "source": "this run"}
    return None, None


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
    mdata = mgp_data(mcfg, data)
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
