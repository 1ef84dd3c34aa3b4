"""One run skeleton: every method family describes *what* it trains, :func:`run_family` runs it.

A family's ``build(ctx) -> Plan`` gets a :class:`RunContext` (config, data, device, claimed run directory)
and returns a :class:`Plan`: the model to save, the criterion (or None: nothing to train), the train
loader, optimizer / lr schedule / batch transform, how to predict a split, extra views (PEL's TTE-free
numbers), its evaluator (single- or multi-label) and the results.json extras. :func:`run_family` does
the rest, the same way for every family:

    completed_results (skip) -> begin_run (lock, config.yaml, data, inputs.json, pinned threads)
    -> build -> engine.fit -> last-epoch evaluation -> extra views -> open-set metrics -> finish
    -> write_run_results (weights, logits, per_class.csv, results.json last) -> lock released

(the lock and the thread pinning are released also when the run raises). The run-directory functions
live in :mod:`ltr_core.lifecycle`, the evaluators in :mod:`ltr_core.evaluation`.

A criterion with ``wants_features = True`` is called ``criterion(logits, target, features=f)``, ``f``
the input of the model's head (``Plan.feature_module``) in the same forward pass: a loss that needs
features (influence-balanced, centroid losses) plugs in without touching the engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from . import engine
from .config import RunConfig
from .data import LTData, make_loader
from .evaluation import (Evaluation, SingleLabel, add_open_set_metrics, evaluate_logits,  # noqa: F401 (re-exported)
                         shot_group_counts, summary)
from .lifecycle import (RunContext, RunDirConflict, begin_run, completed_results, device_name,  # noqa: F401
                        end_run, init_run_dir, inputs_of, prepare_run_dir, remove_temporaries, write_run_results)

BuildFn = Callable[[RunConfig, LTData], tuple[nn.Module, nn.Module]]
HEADLINE = "headline"  # Plan.monitor default: evaluate the reported split after the logged epochs


# ----------------------------------------------------------------------------------------------
# loaders from a config


def loader_kwargs(cfg: RunConfig, *, train: bool = True) -> dict:
    """The :func:`ltr_core.data.make_loader` keywords of a run's training (or evaluation) loader."""
    if not train:
        return {"train": False, "batch_size": cfg.train.eval_batch_size, "num_workers": cfg.data.num_workers}
    d = cfg.data
    return {"train": True, "batch_size": cfg.train.batch_size, "sampler": d.sampler, "seed": cfg.run.seed,
            "num_workers": d.num_workers, "augment": d.augment, "crop_padding": d.crop_padding,
            "epochs": cfg.train.epochs, "augment_mode": d.augment_mode, "rrc_scale_min": d.rrc_scale_min,
            "drop_last": cfg.train.drop_last}


def train_loader(cfg: RunConfig, data: LTData, device, split: str = "train"):
    """The run's training loader: its sampler, augmentation, batch size, seed."""
    return make_loader(data, split, device=device, **loader_kwargs(cfg))


def eval_loader(cfg: RunConfig, data: LTData, split: str, device):
    """``data.split(split)`` in order, evaluation transform, ``eval_batch_size``."""
    return make_loader(data, split, device=device, **loader_kwargs(cfg, train=False))


def decay_groups(named_params, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Two optimizer groups of the trainable tensors of ``named_params`` ((name, param) pairs or params):
    weight decay on matrices, none on 1-D tensors (biases, norms) and scalars (timm's / MAE's rule);
    ``lr`` sets the groups' peak lr (None: the optimizer's)."""
    decay, no_decay = [], []
    for item in named_params:
        p = item[1] if isinstance(item, tuple) else item
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [{**g, "lr": lr} for g in groups] if lr is not None else groups


class SplitLoaders(dict):
    """Evaluation loaders by split, ``make(split)`` on first use (``eager`` splits at once)."""

    def __init__(self, make: Callable[[str], Any], eager: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.make = make
        for split in eager:
            self[split] = make(split)

    def __missing__(self, split: str):
        self[split] = loader = self.make(split)
        return loader


def in_channels(data: LTData) -> int:
    """Image channels of the training split (3 for image files)."""
    return int(data.train.images.shape[1]) if data.train.images is not None else 3


def predict_split(cfg: RunConfig, data: LTData, model: nn.Module, device: torch.device, split: str, *,
                  channels_last: bool = False, fn: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (default: logits) and labels of ``model`` over ``data.split(split)`` (eval transform, in order)."""
    return engine.predict(model, eval_loader(cfg, data, split, device), device, cfg.train.precision, channels_last,
                          fn=fn)


# ----------------------------------------------------------------------------------------------
# the skeleton


@dataclass
class Plan:
    """What a family trains and how it is evaluated (built by the family, run by :func:`run_family`).

    ``model`` is what ``model.safetensors`` holds (None: nothing saved); ``predict(split)`` gives the
    final outputs (logits or scores) and labels of a split (the reported one, and ``open`` where the data
    has it). ``criterion`` None: no training (post-hoc, zero-shot; ``train_seconds`` is reported).
    ``trained`` is what ``engine.fit`` trains (default ``model``; e.g. a head on cached features).
    ``monitor(epoch) -> scalars`` is what ``fit`` logs (default: the reported split through the
    evaluator, kept as the final evaluation at the last epoch; None: nothing). ``views`` adds the
    summary of other predictions to the metrics (name -> ``() -> (logits, labels)``; None: the headline's).
    ``finish(ev)`` runs after the evaluation and returns more results.json keys. ``scalars(ev)`` replaces
    the evaluator's logged scalars; ``feature_module`` is the module whose input a ``wants_features``
    criterion gets (default: ``trained.head``).
    """

    model: nn.Module | None
    predict: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    criterion: nn.Module | None = None
    train_loader: Any = None
    trained: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    lr_schedule: Callable[[int, float], float] | None = None
    batch_transform: Callable | None = None
    evaluator: SingleLabel | None = None
    monitor: Callable[[int], dict] | str | None = HEADLINE
    views: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]] | None] = field(default_factory=dict)
    finish: Callable[[Evaluation], dict | None] | None = None
    scalars: Callable[[Evaluation], dict] | None = None
    feature_module: nn.Module | None = None
    extra: dict = field(default_factory=dict)
    train_seconds: float = 0.0


class FeatureTap(nn.Module):
    """``criterion(outputs, target, features=f)`` with ``f`` the input of ``module`` in the training forward
    pass that made ``outputs`` (a forward pre-hook; nothing changes in the model or its checkpoint)."""

    def __init__(self, criterion: nn.Module, module: nn.Module) -> None:
        super().__init__()
        self.criterion = criterion
        self.features: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self.keep)

    def keep(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self.features = args[0]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.criterion, "set_epoch"):
            self.criterion.set_epoch(epoch)

    def forward(self, outputs, target):
        return self.criterion(outputs, target, features=self.features)

    def remove(self) -> None:
        self.handle.remove()
        self.features = None


def run_family(cfg: RunConfig, build: Callable[[RunContext], Plan], *, data: LTData | None = None,
               load: Callable[[], LTData] | None = None, extra_inputs: dict | Callable | None = None,
               stage: str | None = None) -> dict:
    """Run ``build``'s plan end to end and return the results.json dict (see the module doc).

    ``data`` / ``load`` give the data (default ``build_data(cfg.data)``); ``extra_inputs`` (a dict, or a
    function of the data) is what the run reads besides data and init_run (recorded in inputs.json and
    results.json, part of the inputs digest that decides skipping); ``stage`` marks an intermediate stage.
    """
    done = completed_results(cfg, data, load, extra_inputs)
    if done is not None:
        return done
    started = time.perf_counter()
    try:
        ctx = begin_run(cfg, data, load, extra_inputs)
        plan = build(ctx)
        ev, fit, evaluator = train_and_evaluate(ctx, plan)
        extra = {**plan.extra, **((plan.finish(ev) if plan.finish is not None else None) or {})}
        extra.setdefault("last_batch", "dropped" if cfg.train.drop_last else "kept")  # drop_last: static shapes
        # what a user waits for in this process: data, model build, training, evaluation, checkpoints
        # (not the results files written next); train_seconds / images_per_second count training steps only
        extra.setdefault("wall_seconds", round(time.perf_counter() - started, 3))
        return write_run_results(cfg, ctx.run_dir, ctx.chash, ctx.data, plan.model, ev, fit, ctx.device, stage=stage,
                                 extra=extra, inputs=ctx.inputs, evaluator=evaluator)
    finally:
        end_run(cfg)


def train_and_evaluate(ctx: RunContext, plan: Plan) -> tuple[Evaluation, engine.FitResult, SingleLabel]:
    """``engine.fit`` (when the plan trains), the last-epoch evaluation, extra views and open-set metrics."""
    cfg, data = ctx.cfg, ctx.data
    evaluator = plan.evaluator or SingleLabel(cfg, data)
    last: list[Evaluation] = []

    def evaluate(epoch: int) -> dict:
        logits, labels = plan.predict(cfg.data.eval_split)
        last[:] = [Evaluation(epoch, logits, labels, evaluator.metrics(logits, labels))]
        return plan.scalars(last[0]) if plan.scalars is not None else evaluator.scalars(last[0].metrics)

    fit = engine.FitResult(train_seconds=plan.train_seconds)
    if plan.criterion is not None:
        trained = plan.trained or plan.model
        criterion = plan.criterion
        if getattr(criterion, "wants_features", False):
            module = plan.feature_module or getattr(trained, "head", None)
            if module is None:
                raise TypeError(f"{type(criterion).__name__} wants features, but {type(trained).__name__} has no "
                                f"head: set Plan.feature_module to the module whose input is the feature")
            criterion = FeatureTap(criterion, module)
        try:
            fit = engine.fit(trained, criterion, plan.train_loader, cfg=cfg, run_dir=ctx.run_dir, device=ctx.device,
                             evaluate=evaluate if plan.monitor == HEADLINE else plan.monitor,
                             optimizer=plan.optimizer, batch_transform=plan.batch_transform,
                             lr_schedule=plan.lr_schedule)
        finally:
            if isinstance(criterion, FeatureTap):
                criterion.remove()
    if not last or last[0].epoch != cfg.train.epochs - 1:
        evaluate(cfg.train.epochs - 1)
    ev = last[0]
    for name, view in plan.views.items():
        ev.metrics[name] = summary(ev.metrics if view is None else evaluator.metrics(*view()))
    if data.open is not None:  # the open-set protocol (OLTR) for every method on a dataset with an open split
        add_open_set_metrics(cfg, data, ev, plan.predict("open")[0], ctx.run_dir)
    return ev, fit, evaluator


def supervised_plan(ctx: RunContext, model: nn.Module, criterion: nn.Module, *,
                    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
                    batch_transform: Callable | None = None, lr_schedule: Callable | None = None,
                    extra: dict | None = None) -> Plan:
    """A network trained end to end on images: the run's train loader, logits (``postprocess``-ed) per split."""
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    loader = train_loader(cfg, data, device)
    loaders = SplitLoaders(lambda split: eval_loader(cfg, data, split, device), eager=(cfg.data.eval_split,))
    channels_last = engine.use_channels_last(model, cfg.model.channels_last, device)

    def predict(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits, labels = engine.predict(model, loaders[split], device, cfg.train.precision, channels_last)
        return (postprocess(logits) if postprocess is not None else logits), labels

    return Plan(model, predict, criterion=criterion, train_loader=loader,
                optimizer=make_optimizer(model) if make_optimizer is not None else None,
                batch_transform=batch_transform, lr_schedule=lr_schedule, extra=dict(extra or {}))


def run_supervised(cfg: RunConfig, build: BuildFn, *, data: LTData | None = None,
                   postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   stage: str | None = None,
                   make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
                   batch_transform: Callable | None = None, extra: dict | None = None) -> dict:
    """Train ``build(cfg, data) -> (model, loss)`` end to end through :func:`run_family` (ERM, OLTR's stages).

    ``make_optimizer(model)`` replaces the default optimizer (param groups); ``batch_transform`` see
    :func:`ltr_core.engine.train_one_epoch`; ``extra`` adds top-level keys to results.json.
    """
    def plan(ctx: RunContext) -> Plan:
        model, criterion = build(ctx.cfg, ctx.data)
        return supervised_plan(ctx, model, criterion, postprocess=postprocess, make_optimizer=make_optimizer,
                               batch_transform=batch_transform, extra=extra)

    return run_family(cfg, plan, data=data, stage=stage)
