"""Optimizers and learning-rate schedules by name: :data:`OPTIMIZERS` (``optimizer``) and :data:`SCHEDULES`
(``schedule``), plain dicts name -> factory; register a new one with one entry.

torch is imported only when an optimizer is built, so :mod:`ltr_core.config` takes the valid ``optimizer``
and ``schedule`` values from these keys without importing torch. The engine (:mod:`ltr_core.engine`) sets
every step's lr from :func:`lr_factor` and builds the default optimizer with :func:`build_optimizer`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch


# ----------------------------------------------------------------------------------------------
# lr schedules: (epoch, t, optim_cfg, epochs) -> multiplier of the peak lr after the warm-up


def step_factor(epoch: int, t: float, optim_cfg, epochs: int) -> float:
    """gamma ** #{m in milestones : epoch >= m}, whole epochs (LDAM-DRW: x0.01 from epoch 160, x0.0001
    from 180, 0-based)."""
    passed = sum(1 for m in optim_cfg.lr_milestones if epoch >= m)
    return optim_cfg.lr_gamma**passed


def cosine_factor(epoch: int, t: float, optim_cfg, epochs: int) -> float:
    """r + (1 - r) * (1 + cos(pi * (t - w) / (E - w))) / 2 with r = min_lr / lr (Loshchilov & Hutter, SGDR,
    ICLR 2017, without restarts)."""
    w = optim_cfg.warmup_epochs
    r = optim_cfg.min_lr / optim_cfg.lr
    progress = min(1.0, (t - w) / max(epochs - w, 1e-8))
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress))


def constant_factor(epoch: int, t: float, optim_cfg, epochs: int) -> float:
    """1: the peak lr throughout."""
    return 1.0


SCHEDULES: dict[str, Callable[[int, float, object, int], float]] = {
    "step": step_factor,
    "cosine": cosine_factor,
    "constant": constant_factor,
}


def _registered(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; valid {what}s: {sorted(registry)}")
    return registry[name]


def lr_factor(epoch: int, frac: float, optim_cfg, epochs: int) -> float:
    """Multiplier of the peak lr for the step that ends a fraction ``frac`` (0 < frac <= 1) into ``epoch``.

    With t = epoch + frac (training progress in epochs at the end of the step):
    warm-up: t / warmup_epochs while t < warmup_epochs (LDAM-DRW: lr * e / 5 in epochs e = 1..5);
    step:    gamma ** #{m in milestones : epoch >= m}, whole epochs (LDAM-DRW: x0.01 from epoch 160,
             x0.0001 from 180, 0-based);
    cosine:  r + (1 - r) * (1 + cos(pi * (t - w) / (E - w))) / 2 with r = min_lr / lr
             (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts).
    The schedule is ``SCHEDULES[optim_cfg.schedule]``.
    """
    t = epoch + frac
    w = optim_cfg.warmup_epochs
    if w > 0 and t < w:
        return t / w
    return _registered(SCHEDULES, optim_cfg.schedule, "schedule")(epoch, t, optim_cfg, epochs)


# ----------------------------------------------------------------------------------------------
# optimizers: (param groups, optim_cfg, fused kwargs) -> torch.optim.Optimizer


def sgd(params, optim_cfg, fused: dict) -> torch.optim.Optimizer:
    """SGD with momentum (optionally Nesterov); weight decay as L2."""
    from torch.optim import SGD

    return SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov,
               weight_decay=optim_cfg.weight_decay, **fused)


def adamw(params, optim_cfg, fused: dict) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) with betas (adam_beta1, adam_beta2)."""
    from torch.optim import AdamW

    return AdamW(params, lr=optim_cfg.lr, betas=(optim_cfg.adam_beta1, optim_cfg.adam_beta2),
                 weight_decay=optim_cfg.weight_decay, **fused)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": sgd,
    "adamw": adamw,
}


def model_param_groups(model, optim_cfg):
    """The default optimizer groups of ``model``: all its parameters, or with ``head_bias_decay: false`` two
    groups, the classifier's bias (``model.head.bias``) without weight decay and the rest with it (Cui et
    al.'s class-balanced code trains its sigmoid / focal runs so, the bias holding the class prior)."""
    from torch import nn

    if getattr(optim_cfg, "head_bias_decay", True):
        return model.parameters()
    bias = getattr(getattr(model, "head", None), "bias", None)
    if not isinstance(bias, nn.Parameter):
        raise ValueError("head_bias_decay: false needs a classifier head with a bias (head: linear); "
                         "this model has none: leave head_bias_decay at true")
    rest = [p for p in model.parameters() if p is not bias]
    return [{"params": rest}, {"params": [bias], "weight_decay": 0.0}]


def build_optimizer(params, optim_cfg) -> torch.optim.Optimizer:
    """SGD or AdamW (``OPTIMIZERS[optim_cfg.optimizer]``) over the trainable parameters.

    ``params`` is an iterable of tensors, or of param-group dicts (``{"params": [...], "lr": ...,
    "weight_decay": ...}``: per-group settings override ``optim_cfg``; used for layer-wise lr decay,
    separate classifier/feature learning rates, no weight decay on norms). Frozen tensors
    (``requires_grad=False``) are left out; groups left empty are dropped.
    """
    make = _registered(OPTIMIZERS, optim_cfg.optimizer, "optimizer")
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return make(params, optim_cfg, _fused_kwargs(params))


def _fused_kwargs(params) -> dict:
    """``fused=True`` (one kernel for the whole update) when every trainable tensor is a floating CUDA
    tensor, i.e. the model was moved to the GPU before the optimizer was built (``fit`` does); else the
    default (foreach) implementation. The lr stays a Python float: only the model is compiled, never
    the optimizer, so the per-step lr change cannot trigger recompiles (pytorch#121857)."""
    tensors = [p for g in params for p in g["params"]] if isinstance(params[0], dict) else params
    ok = all(p.is_cuda and p.is_floating_point() for p in tensors)
    return {"fused": True} if ok else {}
