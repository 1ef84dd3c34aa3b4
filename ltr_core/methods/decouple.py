"""Decoupling representation and classifier (Kang et al., "Decoupling Representation and Classifier
for Long-Tailed Recognition", ICLR 2020; methods.md §2.8-2.11), plus post-hoc logit adjustment
(Menon et al., ICLR 2021, §2.5) and NCM.

Stage 1 is an ERM run (``init_run``: its run directory, or its run id with ``{seed}``). Stage 2
re-balances only the classifier on the frozen stage-1 backbone f(x), chosen by ``decouple_mode``:

* ``crt``  — classifier re-training: a re-initialised linear classifier z = W f + b trained with
  the loss (CE) under the class-aware sampler; the backbone gets no gradient.
* ``lws``  — learnable weight scaling: z_c = g_c (w_c·f + b_c) with the stage-1 W, b frozen and g
  (init 1) trained like cRT.
* ``tau_norm`` — no training: z_c = w_c·f / ‖w_c‖^τ (bias dropped), τ swept over ``decouple_tau_grid``.
* ``posthoc_la`` — no training: z = W f + b − τ log π (π the training prior), τ swept.
* ``maxnorm`` — no training: the stage-1 class weights capped at the q-quantile of their norms
  (:mod:`ltr_core.methods.decouple_maxnorm`), q swept like τ.
* ``ncm``  — nearest class mean (``ncm_metric``): ``cl2n_l2`` (classifier-balancing's default, the 47.3 on
  ImageNet-LT) z_c = −‖x̂ − c_c‖², x̂ = (f − μ)/‖f − μ‖ with μ the mean training feature and c_c the mean
  of the x̂ of class c; ``cosine`` z_c = cos(f, μ_c), μ_c the mean raw training feature of class c.

cRT/LWS run ``online`` by default (images through the frozen backbone with train-time augmentation;
``crt_bn_mode=train`` lets BatchNorm running statistics keep updating as classifier-balancing does, ``eval``
freezes them), or on ``cached`` features (evaluation transform, no augmentation: a variant, labelled
"[cached features]" in the run name shown in tables). The stage-1 features of every split are computed
once and cached in ``<stage-1 run>/features/`` (keyed by the stage-1 weights digest, split and transform),
which is all that τ-norm, post-hoc LA, NCM and the cached variants read. The lr schedule of cRT/LWS is
epoch-wise, stepped before (``pre_epoch``, classifier-balancing: the last epoch runs at lr 0) or after
(``post_epoch``) each epoch.

The modes are a registry, :data:`ltr_core.methods.decouple_modes.MODES` (name -> the class that builds
the stage-2 plan, whether it trains); ``decouple_mode`` is validated against it.

τ selection (``decouple_tau`` < 0): on the val split where the dataset has one (and it is not the
reported split), else the best τ on the reported split, labelled "oracle". The whole sweep (Many /
Medium / Few / All per τ, on every evaluated split) is recorded in results.json as ``tau_sweep``.
"""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import engine
from ..config import ConfigError, RunConfig
from ..data import LTData
from ..features import cached_features, eval_feature_loader, train_feature_loader, weights_digest
from ..losses import build_loss
from ..models import Classifier, build_model
from ..models.heads import LinearHead, LWSHead, tau_normalized
from ..results import RunDir
from ..stages import StageError, load_run_config, load_weights, require_complete, resolve_run
from ..study import (Plan, RunContext, SplitLoaders, eval_loader, evaluate_logits, in_channels, run_family,
                     train_loader)
from .decouple_heads import (NCM_METRICS, FrozenBackboneClassifier, NCMHead, centred_l2n, class_means,  # noqa: F401
                             log_prior, ncm_centroids, ncm_logits, posthoc_la_logits, tau_norm_logits)
from .decouple_modes import MODES, Mode

NOTEBOOK = "decouple.ipynb"
DEFAULT_TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))  # 0, 0.1, ..., 2.0
# data keys that must agree with stage 1 (they define the training set the backbone saw)
MATCHING_DATA_KEYS = ("dataset", "imbalance_ratio", "lt_profile", "lt_seed", "n_max", "image_size",
                      "digits_test_per_class")
SWEEP_METRICS = ("top1", "mean_per_class", "many", "medium", "few")


def epoch_lr_schedule(cfg: RunConfig) -> Callable[[int, float], float]:
    """Epoch-wise lr factor of stage 2: the engine's schedule evaluated at whole epochs.

    post_epoch: epoch e runs at factor(e) (first epoch at the peak lr); pre_epoch: at factor(e + 1), the
    pre-PyTorch-1.1 order of classifier-balancing (cosine over E epochs: the last epoch runs at min_lr).
    """
    if cfg.optim.warmup_epochs > 0:
        raise ConfigError("decouple stage 2 uses an epoch-wise lr schedule without warm-up; set warmup_epochs: 0.0")
    shift = 1 if cfg.decouple.decouple_scheduler_step == "pre_epoch" else 0
    return lambda epoch, frac: engine.lr_factor(epoch + shift, 0.0, cfg.optim, cfg.train.epochs)


def linear_weights(head: nn.Module, init_run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(head, nn.Linear):
        raise StageError(f"τ-norm and post-hoc LA adjust a linear stage-1 classifier, but {init_run} has a "
                         f"{type(head).__name__}; train stage 1 with head: linear")
    bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
    return head.weight.detach().clone(), bias.detach().clone()


# ----------------------------------------------------------------------------------------------
# stage 1


def load_stage1(cfg: RunConfig) -> tuple[RunDir, dict, RunConfig]:
    """(run directory, results.json, config) of the finished stage-1 run named by ``init_run``."""
    if not cfg.run.init_run:
        raise ConfigError(f"method {cfg.run.method!r} needs init_run: the stage-1 run directory or run id "
                          "(e.g. init_run: cifar10_lt-erm-ce_ir100-s{seed})")
    run_dir = resolve_run(cfg.run.init_run, cfg)
    res = require_complete(run_dir)
    cfg1 = load_run_config(run_dir)
    bad = [f"{k}: stage 1 {getattr(cfg1.data, k)!r}, this run {getattr(cfg.data, k)!r}"
           for k in MATCHING_DATA_KEYS if getattr(cfg1.data, k) != getattr(cfg.data, k)]
    if bad:
        raise StageError(f"{run_dir.path} was trained on other data than this stage-2 run ({'; '.join(bad)}); "
                         f"use the stage-1 params file as `base:` of the stage-2 params")
    return run_dir, res, cfg1


def load_stage1_model(run_dir: RunDir, cfg1: RunConfig, data: LTData) -> Classifier:
    """The stage-1 classifier with its final weights (CPU, eval mode)."""
    model = build_model(cfg1.model, data.num_classes, image_size=data.image_size, in_chans=in_channels(data))
    load_weights(model, Path(run_dir.path) / "model.safetensors")
    return model.eval()


def stage1_features(run_dir: RunDir, model: Classifier, data: LTData, split: str, cfg: RunConfig,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """{"features": [N, D], "labels": [N]} of ``split`` through the frozen stage-1 backbone (evaluation
    transform), cached in ``<stage-1 run>/features/`` under a key of (backbone weights digest, split, transform)."""
    part = data.split(split)
    description = {
        "backbone_weights": weights_digest(model.backbone), "dataset": data.name, "split": split, "n": part.n,
        "labels_sha256": hashlib.sha256(part.labels.numpy().tobytes()).hexdigest()[:16],
        "transform": "eval (no augmentation)", "image_size": data.image_size, "mean": list(data.mean),
        "std": list(data.std), "precision": cfg.train.precision,
    }

    def compute() -> dict[str, torch.Tensor]:
        model.to(device)
        feats, labels = engine.predict(model, eval_loader(cfg, data, split, device), device, cfg.train.precision,
                                       fn=model.features)
        model.cpu()
        return {"features": feats, "labels": labels}

    return cached_features(run_dir.path, f"{data.name}-{split}", description, compute)


def stage1_record(stage1_dir: RunDir, res1: dict, model: Classifier) -> dict:
    """The results.json ``stage1`` entry: which finished run (and weights) this stage started from."""
    return {"run_dir": str(stage1_dir.path), "run_id": res1.get("run_id"), "config_hash": res1.get("config_hash"),
            "weights_digest": weights_digest(model), "top1": res1["metrics"]["top1"]}


def features_of(stage1_dir: RunDir, model: Classifier, data: LTData, cfg: RunConfig, device: torch.device,
                splits: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`stage1_features` of several splits."""
    return {s: stage1_features(stage1_dir, model, data, s, cfg, device) for s in splits}


# ----------------------------------------------------------------------------------------------
# τ sweeps


def tau_grid(cfg: RunConfig, default: tuple[float, ...] = DEFAULT_TAU_GRID) -> list[float]:
    """The swept τ values (``decouple_tau_grid`` or ``default``: 0, 0.1, ..., 2.0) plus a fixed ``decouple_tau``."""
    grid = [float(t) for t in (cfg.decouple.decouple_tau_grid or default)]
    if cfg.decouple.decouple_tau >= 0 and cfg.decouple.decouple_tau not in grid:
        grid.append(float(cfg.decouple.decouple_tau))
    return sorted(grid)


def _sweep_scalars(m: dict) -> dict[str, float | None]:
    return {k: (None if m.get(k) is None or not np.isfinite(m[k]) else float(m[k])) for k in SWEEP_METRICS}


def sweep(logits_at: Callable[[float, str], torch.Tensor], splits: dict[str, torch.Tensor], taus: list[float],
          data: LTData, cfg: RunConfig) -> dict:
    """{"tau": [...], <split>: {metric: [value per τ]}} for every split in ``splits`` (name -> labels)."""
    out: dict = {"tau": taus}
    for split, labels in splits.items():
        rows = [_sweep_scalars(evaluate_logits(logits_at(t, split), labels, data, cfg)) for t in taus]
        out[split] = {k: [r[k] for r in rows] for k in SWEEP_METRICS}
    return out


def choose_tau(cfg: RunConfig, swept: dict, data: LTData) -> tuple[float, str]:
    """(τ, how it was chosen): fixed ``decouple_tau``; else best val top-1 (mean per class); else oracle."""
    if cfg.decouple.decouple_tau >= 0:
        return float(cfg.decouple.decouple_tau), "fixed"
    on = "val" if data.val is not None and cfg.data.eval_split != "val" else cfg.data.eval_split
    scores = [(-1.0 if v is None else v) for v in swept[on]["mean_per_class"]]
    tau = float(swept["tau"][int(np.argmax(scores))])
    return tau, ("val" if on == "val" else f"oracle (best on {on})")


def _splits_to_evaluate(data: LTData, cfg: RunConfig) -> list[str]:
    splits = [cfg.data.eval_split]
    if data.val is not None and "val" not in splits:
        splits.append("val")
    return splits


# ----------------------------------------------------------------------------------------------
# the modes: decouple_mode -> a small class that builds the stage-2 plan (registered in decouple_modes.MODES)


class Retrain:
    """cRT / LWS: a classifier trained through ``engine.fit`` on the frozen backbone, ``online`` (images,
    augmentation, BN per ``crt_bn_mode``) or on ``cached`` stage-1 features."""

    def head(self, model: Classifier, data: LTData) -> nn.Module:
        raise NotImplementedError

    def record(self, head: nn.Module) -> dict:
        return {}

    def plan(self, ctx: RunContext, model: Classifier, stage1_dir: RunDir) -> Plan:
        cfg, data, device = ctx.cfg, ctx.data, ctx.device
        cached = cfg.decouple.crt_features == "cached"
        engine.seed_everything(cfg.run.seed)
        head = self.head(model, data)
        net = FrozenBackboneClassifier(model.backbone, head, cfg.decouple.crt_bn_mode)
        if cached:
            feats = features_of(stage1_dir, model, data, cfg, device, ["train", cfg.data.eval_split])
            loader, trained = train_feature_loader(cfg, feats["train"], device), head
            loaders = SplitLoaders(lambda s: eval_feature_loader(cfg, stage1_features(stage1_dir, model, data, s, cfg,
                                                                                      device), device))
            loaders[cfg.data.eval_split] = eval_feature_loader(cfg, feats[cfg.data.eval_split], device)
        else:
            loader, trained = train_loader(cfg, data, device), net
            loaders = SplitLoaders(lambda s: eval_loader(cfg, data, s, device), eager=(cfg.data.eval_split,))

        def predict(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            return engine.predict(trained, loaders[split], device, cfg.train.precision)

        info = {"variant": ("cached features (no augmentation)" if cached
                            else f"online (frozen backbone, augmented input, BN {cfg.decouple.crt_bn_mode})"),
                "scheduler_step": cfg.decouple.decouple_scheduler_step,
                "trainable_parameters": int(sum(p.numel() for p in trained.parameters() if p.requires_grad))}
        if cached:
            name = cfg.run.name or "default"
            info["name"] = name if "cached" in name else f"{name} [cached features]"
        return Plan(net, predict, criterion=build_loss(cfg.loss, data.class_counts), train_loader=loader,
                    trained=trained, lr_schedule=epoch_lr_schedule(cfg), extra=info,
                    finish=lambda ev: self.record(head))


class CRT(Retrain):
    """Classifier re-training: a re-initialised linear classifier (nn.Linear init)."""

    def head(self, model: Classifier, data: LTData) -> nn.Module:
        return LinearHead(model.backbone.num_features, data.num_classes)


class LWS(Retrain):
    """Learnable weight scaling: z_c = g_c (w_c·f + b_c), stage-1 W, b frozen, g = 1 at the start."""

    def head(self, model: Classifier, data: LTData) -> nn.Module:
        return LWSHead(model.head, data.num_classes)

    def record(self, head: nn.Module) -> dict:
        return {"lws_scale": [float(v) for v in head.scale.detach().cpu()]}


class PostHoc:
    """No training: a head computed from the cached stage-1 features (τ-norm, post-hoc LA, NCM)."""

    needs_train = False  # also the train split's features

    def solve(self, ctx: RunContext, model: Classifier, feats: dict, labels: dict,
              stage1_dir: RunDir) -> tuple[nn.Module, torch.Tensor, dict]:
        """(head, logits of the reported split, results keys)."""
        raise NotImplementedError

    def plan(self, ctx: RunContext, model: Classifier, stage1_dir: RunDir) -> Plan:
        cfg, data, device = ctx.cfg, ctx.data, ctx.device
        t0 = time.perf_counter()
        evaluated = _splits_to_evaluate(data, cfg)
        feats = features_of(stage1_dir, model, data, cfg, device, evaluated + (["train"] if self.needs_train else []))
        labels = {s: feats[s]["labels"] for s in evaluated}
        head, logits, info = self.solve(ctx, model, feats, labels, stage1_dir)

        def predict(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            if split == cfg.data.eval_split:
                return logits.float(), labels[split]
            f = stage1_features(stage1_dir, model, data, split, cfg, device)  # the same head on that split
            with torch.no_grad():
                return head(f["features"]).float().cpu(), f["labels"]

        info = {"variant": "post-hoc on cached stage-1 features (no training)", "epochs": 0, **info,
                "stage2_seconds": round(time.perf_counter() - t0, 3)}
        return Plan(Classifier(model.backbone, head), predict, extra=info)


class NCM(PostHoc):
    """Nearest class mean on the stage-1 train features (``ncm_metric``)."""

    needs_train = True

    def solve(self, ctx, model, feats, labels, stage1_dir):
        metric = ctx.cfg.decouple.ncm_metric
        mean, centroids = ncm_centroids(feats["train"]["features"], feats["train"]["labels"], ctx.data.num_classes,
                                        metric)
        head = NCMHead(centroids, mean, metric)
        return head, head(feats[ctx.cfg.data.eval_split]["features"]), {
            "ncm_metric": metric, "selection": f"training-free (class means of the stage-1 train features, {metric})"}


class TauSweep(PostHoc):
    """A τ-family of adjusted classifiers: swept over ``grid(cfg)``, τ chosen by :func:`choose_tau`."""

    knob = "tau"  # the knob's name in the ``selection`` text

    def grid(self, cfg: RunConfig) -> list[float]:
        return tau_grid(cfg)

    def logits_at(self, model: Classifier, feats: dict, data: LTData, evaluated) -> Callable[[float, str], torch.Tensor]:
        raise NotImplementedError

    def adjusted_head(self, model: Classifier, tau: float, data: LTData) -> nn.Module:
        raise NotImplementedError

    def solve(self, ctx, model, feats, labels, stage1_dir):
        cfg, data = ctx.cfg, ctx.data
        linear_weights(model.head, Path(stage1_dir.path))  # both adjust (and save) the linear stage-1 classifier
        logits_at = self.logits_at(model, feats, data, list(labels))
        swept = sweep(logits_at, labels, self.grid(cfg), data, cfg)
        tau, how = choose_tau(cfg, swept, data)
        head = self.adjusted_head(model, tau, data)
        return head, logits_at(tau, cfg.data.eval_split), {"tau": tau, "tau_selection": how, "tau_sweep": swept,
                                                            "selection": f"{self.knob} = {tau:g} ({how})"}


class TauNorm(TauSweep):
    """z_c = w_c·f / ‖w_c‖^τ (bias dropped)."""

    def logits_at(self, model, feats, data, evaluated):
        weight = model.head.weight.detach().clone()
        return lambda tau, split: tau_norm_logits(feats[split]["features"], weight, tau)

    def adjusted_head(self, model, tau, data):
        head = LinearHead(model.head.in_features, data.num_classes)
        with torch.no_grad():
            head.weight.copy_(tau_normalized(model.head.weight.detach(), tau))
            head.bias.zero_()
        return head


class PosthocLA(TauSweep):
    """z = W f + b − τ log π (the stage-1 logits adjusted by the training prior)."""

    def logits_at(self, model, feats, data, evaluated):
        with torch.no_grad():
            stage1_logits = {s: model.head(feats[s]["features"]) for s in evaluated}
        return lambda tau, split: posthoc_la_logits(stage1_logits[split], data.class_counts, tau)

    def adjusted_head(self, model, tau, data):
        head = copy.deepcopy(model.head)
        with torch.no_grad():
            head.bias.sub_(tau * log_prior(data.class_counts))
        return head


TRAINED_MODES = tuple(k for k, m in MODES.items() if m.trains)


def mode_class(name: str) -> type:
    """The class of ``decouple_mode`` ``name`` (:data:`MODES`), checked against its entry."""
    if name not in MODES:
        raise ConfigError(f"decouple_mode must be one of {sorted(MODES)}, got {name!r}")
    spec: Mode = MODES[name]
    cls = spec.load()
    if issubclass(cls, Retrain) != spec.trains or not issubclass(cls, (Retrain, PostHoc)):
        raise TypeError(f"decouple mode {name!r}: {spec.impl} must subclass "
                        f"{'Retrain' if spec.trains else 'PostHoc'} (trains={spec.trains})")
    return cls


# ----------------------------------------------------------------------------------------------
# the run


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """Stage 2 on the stage-1 run ``init_run``; writes and returns results.json (see the module doc)."""
    name = cfg.decouple.decouple_mode
    mode = mode_class(name)()
    if MODES[name].trains:
        epoch_lr_schedule(cfg)  # fail on a warm-up before anything is written
    if isinstance(mode, TauSweep):
        mode.grid(cfg)  # likewise on a grid the mode rejects
    stage1_dir, res1, cfg1 = load_stage1(cfg)

    def plan(ctx: RunContext) -> Plan:
        model = load_stage1_model(stage1_dir, cfg1, ctx.data)
        p = mode.plan(ctx, model, stage1_dir)
        p.extra = {"decouple_mode": name, "stage1": stage1_record(stage1_dir, res1, model), **p.extra}
        return p

    return run_family(cfg, plan, data=data)
