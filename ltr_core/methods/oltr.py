"""OLTR: open long-tailed recognition (Liu et al., "Large-Scale Long-Tailed Recognition in an Open
World", CVPR 2019), as the original code trains it (methods.md §3).

Stage 1, the plain model: backbone [+ fc] + linear classifier, CE, instance-balanced sampling
(``oltr_stage1_*`` keys; kept in ``<run_dir>/stage1/``), or a finished run named by ``init_run``
(an OLTR stage-1 directory or a linear-head CE run of the same dataset and model).

Stage 2 (this run's ``epochs``, ``lr``, ``sampler`` = class_aware): load the stage-1 backbone [and fc];
the hallucinator starts as the stage-1 classifier; the centroid memory M starts as the class means of
the direct features f of the whole train split (evaluation transform, stage-2 network right after
loading: identity attention, fresh fc if stage 1 had none); then train
    gamma = 10 / min_c ||f - M_c||;  o = softmax(W_h f);  e = tanh(W_s f)
    v = gamma * (f + e * (o @ M));   logits = 16 * |v|/(1+|v|) * cos(v, W)
    loss = CE(logits, y) + 0.01 * (L_att(f, M) + 0.01 * L_rep(f, M))
(the centroid loss on the direct feature f as the original code does, ``oltr_centroid_input`` = direct, the
default: ``run_networks.py`` calls ``FeatureLoss(self.features, labels)``; ``meta`` puts it on v_meta as the
paper's Eq. 7)
with SGD groups: feature model (backbone, attention, fc) ``oltr_feature_lr``, classifier (hallucinator,
selector, cosine classifier) ``lr``, centroids ``oltr_centroid_lr`` (updated only by the centroid loss),
one schedule for all. Evaluation: closed-set metrics and, where the dataset has an open split, the
open-set F-measure (threshold 0.1 on max softmax), as for every method.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .. import engine, stages
from ..config import ConfigError, RunConfig, config_hash
from ..data import LTData, build_data
from ..losses import build_loss
from ..models import build_backbone
from ..models.oltr import OLTRLoss, OLTRModel, PlainModel, probe_map_size
from ..results import RunDir
from ..study import completed_results, eval_loader, in_channels, run_supervised

NOTEBOOK = "oltr.ipynb"
STAGE1 = "stage1"


def check_config(cfg: RunConfig) -> None:
    """Errors for settings that cannot run."""
    o = cfg.oltr
    if not cfg.run.init_run and o.oltr_stage1_epochs < 1:
        raise ConfigError("OLTR needs a stage 1: set oltr_stage1_epochs >= 1 (trained inside this run) or "
                          "init_run to a finished stage-1 / linear-head CE run of the same dataset and model")
    if o.oltr_fc_dim < 0:
        raise ConfigError(f"oltr_fc_dim must be >= 0 (0: no fc layer), got {o.oltr_fc_dim}")
    if o.oltr_stage1_fc and not o.oltr_fc_dim:
        raise ConfigError("oltr_stage1_fc=True needs oltr_fc_dim > 0 (the fc layer both stages share)")


# ----------------------------------------------------------------------------------------------
# stage 1


def stage1_config(cfg: RunConfig) -> RunConfig:
    """The stage-1 sub-run: <run_dir>/stage1, oltr_stage1_* schedule, instance-balanced sampling."""
    o = cfg.oltr
    return stages.stage_config(cfg, STAGE1, epochs=o.oltr_stage1_epochs, lr=o.oltr_stage1_lr,
                               lr_milestones=list(o.oltr_stage1_milestones), sampler="instance", init_run="")


def build_stage1(cfg: RunConfig, data: LTData) -> tuple[nn.Module, nn.Module]:
    """Plain model (backbone [+ fc] + linear) and the ``loss`` (paper: ce) on the train counts."""
    backbone = build_backbone(cfg.model.model, pretrained=cfg.model.pretrained, image_size=data.image_size,
                              in_chans=in_channels(data))
    fc_dim = cfg.oltr.oltr_fc_dim if cfg.oltr.oltr_stage1_fc else 0
    return PlainModel(backbone, data.num_classes, fc_dim), build_loss(cfg.loss, data.class_counts)


def stage1_optimizer(model: PlainModel, cfg: RunConfig):
    """SGD groups: classifier at the stage-1 lr, backbone (+ fc) at oltr_stage1_feature_lr (0: same)."""
    feature_lr = cfg.oltr.oltr_stage1_feature_lr or cfg.optim.lr
    features = list(model.backbone.parameters()) + (list(model.fc.parameters()) if model.fc is not None else [])
    return engine.build_optimizer([{"params": list(model.head.parameters()), "lr": cfg.optim.lr},
                                   {"params": features, "lr": feature_lr}], cfg.optim)


def weight_keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def prepare_stage1(cfg: RunConfig, data: LTData) -> tuple[Path, dict]:
    """(stage-1 weights file, results.json of stage 1): from ``init_run`` or trained in <run_dir>/stage1."""
    if cfg.run.init_run:
        run_dir = stages.resolve_run(cfg.run.init_run, cfg)
        results = stages.require_complete(run_dir)
        s1 = stages.load_run_config(run_dir)
        if (s1.data.dataset, s1.model.model) != (cfg.data.dataset, cfg.model.model):
            raise stages.StageError(
                f"init_run {run_dir.path} trained {s1.model.model} on {s1.data.dataset}; this OLTR run needs "
                f"{cfg.model.model} on {cfg.data.dataset}: name a stage-1 run of the same dataset and model")
        print(f"stage 1: {run_dir.path} (init_run)", flush=True)
        return run_dir.model_path, results
    s1cfg = stage1_config(cfg)
    results = run_supervised(s1cfg, build_stage1, data=data, stage=STAGE1,
                             make_optimizer=partial(stage1_optimizer, cfg=s1cfg))
    return RunDir(s1cfg.run_path()).model_path, results


# ----------------------------------------------------------------------------------------------
# stage 2


def build_oltr_model(cfg: RunConfig, data: LTData) -> OLTRModel:
    """The stage-2 network (random init; :func:`load_stage1` fills it)."""
    o = cfg.oltr
    backbone = build_backbone(cfg.model.model, pretrained="", image_size=data.image_size, in_chans=in_channels(data))
    map_size = probe_map_size(backbone, data.image_size, in_channels(data))[1:] if o.oltr_attention else None
    return OLTRModel(backbone, data.num_classes, map_size=map_size, attention=o.oltr_attention, fc_dim=o.oltr_fc_dim,
                     cosine_scale=cfg.model.cosine_scale, reach_scale=o.oltr_reach_scale)


def load_stage1(model: OLTRModel, weights: Path) -> dict:
    """Backbone [and fc] from stage 1; the hallucinator (W_h, b_h) from the stage-1 linear classifier."""
    keys = weight_keys(weights)
    if "head.weight" not in keys or "head.bias" not in keys:
        raise stages.StageError(f"{weights} has no linear classifier (head.weight, head.bias): the stage-1 run must "
                                f"be an OLTR stage 1 or a CE run with head=linear, not {sorted(keys)[:3]}...")
    stages.load_weights(model.backbone, weights, prefix="backbone.")
    stage1_fc = any(k.startswith("fc.") for k in keys)
    if stage1_fc and model.fc is None:
        raise stages.StageError(f"{weights} has an fc layer but this run has oltr_fc_dim=0; set oltr_fc_dim to its size")
    if stage1_fc:
        stages.load_weights(model.fc, weights, prefix="fc.")
    with safe_open(str(weights), framework="pt") as f:
        in_dim = f.get_slice("head.weight").get_shape()[1]
    if in_dim != model.feat_dim:
        raise stages.StageError(
            f"the stage-1 classifier takes {in_dim}-d features but the stage-2 direct feature is {model.feat_dim}-d "
            f"(oltr_fc_dim={model.fc[0].out_features if model.fc is not None else 0}); the hallucinator is initialised "
            f"from it, so use oltr_fc_dim = {in_dim} or 0")
    stages.load_weights(model.meta.hallucinator, weights, prefix="head.")
    return {"fc_from_stage1": stage1_fc}


def class_centroids(model: OLTRModel, cfg: RunConfig, data: LTData, device) -> torch.Tensor:
    """M_c = mean of the direct features f of class c over the whole train split (eval transform, no sampler)."""
    feats, labels = engine.predict(model, eval_loader(cfg, data, "train", device), device, cfg.train.precision,
                                   fn=model.features)
    sums = feats.new_zeros(data.num_classes, feats.shape[1]).index_add_(0, labels, feats)
    counts = labels.bincount(minlength=data.num_classes).clamp_min(1).to(feats.dtype)
    return sums / counts[:, None]


def build_stage2(cfg: RunConfig, data: LTData, *, weights: Path) -> tuple[nn.Module, nn.Module]:
    """OLTR model from stage 1 + centroids (skipped when resuming: the checkpoint holds them) + the OLTR loss."""
    o = cfg.oltr
    model = build_oltr_model(cfg, data)
    load_stage1(model, weights)
    if o.oltr_freeze_backbone:
        model.backbone.requires_grad_(False)
    state = engine.Checkpoint(RunDir(cfg.run_path())).load_state()
    if state is None or state.get("config_hash") != config_hash(cfg):
        device = engine.resolve_device(cfg.run.device)
        model.to(device)
        model.centroids.data.copy_(class_centroids(model, cfg, data, device).to(device))
        norms = model.centroids.detach().norm(dim=1)
        print(f"centroids: {tuple(model.centroids.shape)}, ||M_c|| mean {norms.mean():.3g} (min {norms.min():.3g}, "
              f"max {norms.max():.3g}), from the train split with the evaluation transform", flush=True)
    loss = OLTRLoss(o.oltr_centroid_weight, o.oltr_centroid_input, o.oltr_centroid_grad_scaled)
    return model, loss


def stage2_optimizer(model: OLTRModel, cfg: RunConfig):
    """SGD groups: classifier (lr), feature model (oltr_feature_lr), centroids (oltr_centroid_lr); one wd."""
    return engine.build_optimizer([{"params": model.classifier_parameters(), "lr": cfg.optim.lr},
                                   {"params": model.feature_parameters(), "lr": cfg.oltr.oltr_feature_lr},
                                   {"params": [model.centroids], "lr": cfg.oltr.oltr_centroid_lr}], cfg.optim)


STAGE1_SUMMARY = ("top1", "many", "medium", "few", "ece", "f_measure", "f_measure_pre_fix")


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """Stage 1 (or init_run) -> stage 2 -> closed- and open-set evaluation; returns the results.json dict."""
    check_config(cfg)
    done = completed_results(cfg)
    if done is not None:
        return done
    if cfg.data.sampler != "class_aware":
        print(f"note: stage 2 samples with {cfg.data.sampler!r}; OLTR's is class_aware (4 per class visit)", flush=True)
    data = data if data is not None else build_data(cfg.data)
    weights, stage1_results = prepare_stage1(cfg, data)
    extra = {"stage1_run": str(Path(weights).parent),
             "stage1_metrics": {k: stage1_results["metrics"].get(k) for k in STAGE1_SUMMARY}}
    return run_supervised(cfg, partial(build_stage2, weights=weights), data=data,
                          make_optimizer=partial(stage2_optimizer, cfg=cfg), extra=extra)
