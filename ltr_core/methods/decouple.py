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
from ..data import LTData, build_data, make_loader
from ..data.samplers import build_sampler
from ..features import FeatureLoader, cached_features, weights_digest
from ..losses import build_loss
from ..models import Classifier, build_model
from ..models.heads import LinearHead, LWSHead, tau_normalized
from ..results import RunDir
from ..stages import StageError, load_run_config, load_weights, require_complete, resolve_run
from ..study import (Evaluation, add_open_set_metrics, completed_results, evaluate_logits, predict_split, prepare_run_dir,
                     write_run_results)

NOTEBOOK = "decouple.ipynb"
DEFAULT_TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))  # 0, 0.1, ..., 2.0
TRAINED_MODES = ("crt", "lws")
SWEEP_MODES = ("tau_norm", "posthoc_la")
NCM_METRICS = ("cl2n_l2", "cosine")
# data keys that must agree with stage 1 (they define the training set the backbone saw)
MATCHING_DATA_KEYS = ("dataset", "imbalance_ratio", "lt_profile", "lt_seed", "n_max", "image_size",
                      "digits_test_per_class")
SWEEP_METRICS = ("top1", "mean_per_class", "many", "medium", "few")


# ----------------------------------------------------------------------------------------------
# the formulas


def tau_norm_logits(features: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    """z_c = f · w_c / ‖w_c‖^τ (bias dropped)."""
    return features @ tau_normalized(weight, tau).T


def log_prior(class_counts) -> torch.Tensor:
    """log π_c = log(n_c / Σ n); every class needs at least one training image."""
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    if (counts <= 0).any():
        empty = torch.nonzero(counts <= 0).flatten().tolist()
        raise ValueError(f"post-hoc logit adjustment needs n_c >= 1 for every class; classes {empty[:10]} "
                         f"have no training image (log prior = -inf)")
    return (counts / counts.sum()).log().float()


def posthoc_la_logits(logits: torch.Tensor, class_counts, tau: float) -> torch.Tensor:
    """z − τ log π (Menon et al., ICLR 2021, post-hoc form; the model was trained with plain CE)."""
    return logits - tau * log_prior(class_counts)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """μ_c = mean of the features of class c ([C, D]); a class without samples is an error."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(
        0, labels, features.double())
    counts = torch.bincount(labels, minlength=num_classes).double()
    if (counts == 0).any():
        raise ValueError(f"NCM: classes {torch.nonzero(counts == 0).flatten().tolist()[:10]} have no training feature")
    return (sums / counts[:, None]).float()


def centred_l2n(features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """x̂ = (f − μ) / ‖f − μ‖₂ (classifier-balancing ``feat_type='cl2n'``)."""
    return nn.functional.normalize(features - mean, dim=1)


def ncm_centroids(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  metric: str = "cl2n_l2") -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, centroids [C, D]) of the training features for :func:`ncm_logits`.

    cl2n_l2: μ = mean of all training features (over samples), c_c = mean_{i: y_i = c} x̂_i, the mean of
    the centred and L2-normalised features (not re-normalised; classifier-balancing
    ``get_knncentroids`` ``cl2ncs``). cosine: μ = 0, c_c = mean raw feature of class c.
    """
    if metric not in NCM_METRICS:
        raise ValueError(f"ncm_metric must be one of {NCM_METRICS}, got {metric!r}")
    if metric == "cosine":
        return torch.zeros(features.shape[1]), class_means(features, labels, num_classes)
    mean = features.double().mean(0).float()
    return mean, class_means(centred_l2n(features, mean), labels, num_classes)


def ncm_logits(features: torch.Tensor, centroids: torch.Tensor, metric: str = "cl2n_l2",
               mean: torch.Tensor | None = None) -> torch.Tensor:
    """NCM logits (Kang et al., ICLR 2020, nearest class mean classifier).

    cl2n_l2 (classifier-balancing ``KNNClassifier(feat_type='cl2n', dist_type='l2')``):
    z_c = −‖x̂ − c_c‖², x̂ = (f − μ)/‖f − μ‖; cosine: z_c = cos(f, c_c).
    """
    if metric == "cosine":
        return nn.functional.normalize(features, dim=1) @ nn.functional.normalize(centroids, dim=1).T
    if metric != "cl2n_l2":
        raise ValueError(f"ncm_metric must be one of {NCM_METRICS}, got {metric!r}")
    x = centred_l2n(features, torch.zeros(features.shape[1]) if mean is None else mean.to(features))
    c = centroids.to(x)
    return -((x * x).sum(1, keepdim=True) + (c * c).sum(1)[None, :] - 2.0 * x @ c.T)


class NCMHead(nn.Module):
    """The NCM classifier as a head: :func:`ncm_logits` with fixed (buffer) μ and centroids."""

    def __init__(self, centroids: torch.Tensor, mean: torch.Tensor, metric: str = "cl2n_l2"):
        super().__init__()
        self.metric = metric
        self.register_buffer("centroids", centroids.detach().clone().float())
        self.register_buffer("feature_mean", mean.detach().clone().float())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return ncm_logits(f, self.centroids, self.metric, self.feature_mean)


def epoch_lr_schedule(cfg: RunConfig) -> Callable[[int, float], float]:
    """Epoch-wise lr factor of stage 2: the engine's schedule evaluated at whole epochs.

    post_epoch: epoch e runs at factor(e) (first epoch at the peak lr); pre_epoch: at factor(e + 1), the
    pre-PyTorch-1.1 order of classifier-balancing (cosine over E epochs: the last epoch runs at min_lr).
    """
    if cfg.optim.warmup_epochs > 0:
        raise ConfigError("decouple stage 2 uses an epoch-wise lr schedule without warm-up; set warmup_epochs: 0.0")
    shift = 1 if cfg.decouple.decouple_scheduler_step == "pre_epoch" else 0
    return lambda epoch, frac: engine.lr_factor(epoch + shift, 0.0, cfg.optim, cfg.train.epochs)


# ----------------------------------------------------------------------------------------------
# models


class FrozenBackboneClassifier(Classifier):
    """head(backbone(x)) with a frozen backbone: no gradients reach it (``torch.no_grad``, params frozen).

    ``bn_mode="train"`` leaves the backbone in train mode while training, so its BatchNorm running
    statistics follow the stage-2 sampler (classifier-balancing); ``"eval"`` keeps it in eval mode
    (the backbone state stays bit-identical).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, bn_mode: str = "train"):
        super().__init__(backbone, head)
        if bn_mode not in ("train", "eval"):
            raise ValueError(f"bn_mode must be train or eval, got {bn_mode!r}")
        self.bn_mode = bn_mode
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.bn_mode == "eval":
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _linear_weights(head: nn.Module, init_run: Path) -> tuple[torch.Tensor, torch.Tensor]:
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
        raise ConfigError("method 'decouple' needs init_run: the stage-1 run directory or run id "
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
    in_chans = int(data.train.images.shape[1]) if data.train.images is not None else 3
    model = build_model(cfg1.model, data.num_classes, image_size=data.image_size, in_chans=in_chans)
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
        loader = make_loader(data, split, train=False, batch_size=cfg.train.eval_batch_size, device=device,
                             num_workers=cfg.data.num_workers)
        model.to(device)
        feats, labels = engine.predict(model, loader, device, cfg.train.precision, fn=model.features)
        model.cpu()
        return {"features": feats, "labels": labels}

    return cached_features(run_dir.path, f"{data.name}-{split}", description, compute)


# ----------------------------------------------------------------------------------------------
# stage 2


def tau_grid(cfg: RunConfig) -> list[float]:
    """The swept τ values (``decouple_tau_grid`` or 0, 0.1, ..., 2.0) plus a fixed ``decouple_tau``."""
    grid = [float(t) for t in (cfg.decouple.decouple_tau_grid or DEFAULT_TAU_GRID)]
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


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """Stage 2 on the stage-1 run ``init_run``; writes and returns results.json (see the module doc)."""
    done = completed_results(cfg)
    if done is not None:
        return done
    mode = cfg.decouple.decouple_mode
    if mode in TRAINED_MODES:
        epoch_lr_schedule(cfg)  # fail on a warm-up before anything is written
    stage1_dir, res1, cfg1 = load_stage1(cfg)
    run_dir, chash = prepare_run_dir(cfg)
    device = engine.resolve_device(cfg.run.device)
    engine.seed_everything(cfg.run.seed)
    data = data if data is not None else build_data(cfg.data)
    run_dir.write_json("split_indices.json", data.provenance)
    model = load_stage1_model(stage1_dir, cfg1, data)
    extra: dict = {
        "decouple_mode": mode,
        "stage1": {"run_dir": str(stage1_dir.path), "run_id": res1.get("run_id"),
                   "config_hash": res1.get("config_hash"), "weights_digest": weights_digest(model),
                   "top1": res1["metrics"]["top1"]},
    }
    if mode in TRAINED_MODES:
        net, ev, fit, info = _train_classifier(cfg, data, model, stage1_dir, device)
    else:
        net, ev, fit, info = _post_hoc(cfg, data, model, stage1_dir, device)
    extra.update(info)
    if data.open is not None:  # open-set protocol (OLTR F-measure) where the dataset has an open split
        if mode in TRAINED_MODES and cfg.decouple.crt_features == "online":
            open_logits, _ = predict_split(cfg, data, net.to(device), device, "open")
            net.cpu()
        else:  # the final head on the cached stage-1 features (the same formula as the evaluated logits)
            with torch.no_grad():
                open_logits = net.head(stage1_features(stage1_dir, model, data, "open", cfg, device)["features"])
        add_open_set_metrics(cfg, data, ev, open_logits.float().cpu(), run_dir)
    return write_run_results(cfg, run_dir, chash, data, net, ev, fit, device, extra=extra)


def _features_of(stage1_dir: RunDir, model: Classifier, data: LTData, cfg: RunConfig, device: torch.device,
                 splits: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    return {s: stage1_features(stage1_dir, model, data, s, cfg, device) for s in splits}


def _post_hoc(cfg: RunConfig, data: LTData, model: Classifier, stage1_dir: RunDir, device: torch.device):
    """τ-norm, post-hoc LA or NCM on cached stage-1 features: no training."""
    mode = cfg.decouple.decouple_mode
    t0 = time.perf_counter()
    evaluated = _splits_to_evaluate(data, cfg)
    feats = _features_of(stage1_dir, model, data, cfg, device, evaluated + (["train"] if mode == "ncm" else []))
    labels = {s: feats[s]["labels"] for s in evaluated}
    info: dict = {"variant": "post-hoc on cached stage-1 features (no training)", "epochs": 0}
    if mode == "ncm":
        metric = cfg.decouple.ncm_metric
        mean, centroids = ncm_centroids(feats["train"]["features"], feats["train"]["labels"], data.num_classes, metric)
        head = NCMHead(centroids, mean, metric)
        logits = head(feats[cfg.data.eval_split]["features"])
        info.update({"ncm_metric": metric,
                     "selection": f"training-free (class means of the stage-1 train features, {metric})"})
    else:
        with torch.no_grad():
            stage1_logits = {s: model.head(feats[s]["features"]) for s in evaluated}
        if mode == "tau_norm":
            weight, _ = _linear_weights(model.head, Path(stage1_dir.path))

            def logits_at(tau: float, split: str) -> torch.Tensor:
                return tau_norm_logits(feats[split]["features"], weight, tau)
        else:
            def logits_at(tau: float, split: str) -> torch.Tensor:
                return posthoc_la_logits(stage1_logits[split], data.class_counts, tau)

        swept = sweep(logits_at, labels, tau_grid(cfg), data, cfg)
        tau, how = choose_tau(cfg, swept, data)
        logits = logits_at(tau, cfg.data.eval_split)
        _linear_weights(model.head, Path(stage1_dir.path))  # the saved model holds the adjusted classifier
        head = LinearHead(model.head.in_features, data.num_classes) if mode == "tau_norm" else copy.deepcopy(model.head)
        with torch.no_grad():
            if mode == "tau_norm":
                head.weight.copy_(tau_normalized(weight, tau))
                head.bias.zero_()
            else:
                head.bias.sub_(tau * log_prior(data.class_counts))
        info.update({"tau": tau, "tau_selection": how, "tau_sweep": swept,
                     "selection": f"tau = {tau:g} ({how})"})
    net = Classifier(model.backbone, head)
    ev = Evaluation(0, logits.float(), labels[cfg.data.eval_split],
                    evaluate_logits(logits.float(), labels[cfg.data.eval_split], data, cfg))
    fit = engine.FitResult(train_seconds=0.0)
    info["stage2_seconds"] = round(time.perf_counter() - t0, 3)
    return net, ev, fit, info


def _train_classifier(cfg: RunConfig, data: LTData, model: Classifier, stage1_dir: RunDir, device: torch.device):
    """cRT or LWS through ``engine.fit``: online (images, frozen backbone) or on cached features."""
    mode, cached = cfg.decouple.decouple_mode, cfg.decouple.crt_features == "cached"
    engine.seed_everything(cfg.run.seed)
    if mode == "crt":
        head = LinearHead(model.backbone.num_features, data.num_classes)  # re-initialised (nn.Linear init)
    else:
        head = LWSHead(model.head, data.num_classes)  # stage-1 classifier frozen, g = 1
    net = FrozenBackboneClassifier(model.backbone, head, cfg.decouple.crt_bn_mode)
    criterion = build_loss(cfg.loss, data.class_counts)
    run_dir = RunDir(cfg.run_path())
    last: list[Evaluation] = []
    if cached:
        feats = _features_of(stage1_dir, model, data, cfg, device, ["train", cfg.data.eval_split])
        train = feats["train"]
        sampler = build_sampler(cfg.data.sampler, train["labels"], seed=cfg.run.seed, epochs=cfg.train.epochs)
        loader = FeatureLoader(train["features"], train["labels"], batch_size=cfg.train.batch_size,
                               device=device, sampler=sampler)
        eval_loader = FeatureLoader(feats[cfg.data.eval_split]["features"], feats[cfg.data.eval_split]["labels"],
                                    batch_size=cfg.train.eval_batch_size, device=device)
        trained, predict_with = head, head
    else:
        loader = make_loader(data, "train", train=True, batch_size=cfg.train.batch_size, device=device,
                             sampler=cfg.data.sampler, seed=cfg.run.seed, num_workers=cfg.data.num_workers,
                             augment=cfg.data.augment, crop_padding=cfg.data.crop_padding,
                             epochs=cfg.train.epochs, augment_mode=cfg.data.augment_mode,
                             rrc_scale_min=cfg.data.rrc_scale_min)
        eval_loader = make_loader(data, cfg.data.eval_split, train=False, batch_size=cfg.train.eval_batch_size,
                                  device=device, num_workers=cfg.data.num_workers)
        trained, predict_with = net, net

    def evaluate(epoch: int) -> dict:
        logits, labels = engine.predict(predict_with, eval_loader, device, cfg.train.precision)
        last[:] = [Evaluation(epoch, logits, labels, evaluate_logits(logits, labels, data, cfg))]
        m = last[0].metrics
        return {k: (float(m[k]) if m.get(k) is not None else float("nan")) for k in ("top1", "many", "medium", "few")}

    fit = engine.fit(trained, criterion, loader, cfg=cfg, run_dir=run_dir, device=device, evaluate=evaluate,
                     lr_schedule=epoch_lr_schedule(cfg))
    if not last or last[0].epoch != cfg.train.epochs - 1:
        evaluate(cfg.train.epochs - 1)
    info = {
        "variant": ("cached features (no augmentation)" if cached
                    else f"online (frozen backbone, augmented input, BN {cfg.decouple.crt_bn_mode})"),
        "scheduler_step": cfg.decouple.decouple_scheduler_step,
        "trainable_parameters": int(sum(p.numel() for p in trained.parameters() if p.requires_grad)),
    }
    if cached:
        name = cfg.run.name or "default"
        info["name"] = name if "cached" in name else f"{name} [cached features]"
    if mode == "lws":
        info["lws_scale"] = [float(v) for v in head.scale.detach().cpu()]
    return net.cpu(), last[0], fit, info
