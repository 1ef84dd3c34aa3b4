"""Registries of the components a run names by a string key and :mod:`ltr_core.config` validates.

Each registry is a plain dict name -> factory, the factory given as ``"module:function"`` and imported on
first use (:func:`factory`), as :data:`ltr_core.methods.METHODS` names modules. This module imports nothing,
so the config takes the valid values of ``sampler``, ``tailclip_sampler``, ``pel_peft`` and ``tailclip_peft``
from these keys without importing torch. A new sampler or PEFT method is its function plus one line here.

* :data:`SAMPLER_REGISTRY` (``sampler``): ``f(labels, *, seed, num_samples, epochs) -> EpochSampler``
  (:func:`ltr_core.data.samplers.build_sampler`);
* :data:`ML_SAMPLER_REGISTRY` (``tailclip_sampler``): ``f(split, *, seed, power) -> EpochSampler`` over a
  multi-label split (:func:`ltr_core.data.multilabel_loaders.make_multilabel_loader`);
* :data:`PEFT_REGISTRY` (``pel_peft``, ``tailclip_peft``): ``f(visual, blocks, selected, *, bottleneck,
  vpt_length) -> tuned block indices``, adding the method's tuners in place
  (:func:`ltr_core.models.peft.apply_peft`).

Optimizers and lr schedules: :data:`ltr_core.optim.OPTIMIZERS` / :data:`ltr_core.optim.SCHEDULES` (torch-free
themselves); decoupling modes: :data:`ltr_core.methods.decouple_modes.MODES`.
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping

_SAMPLERS = "ltr_core.data.samplers"
SAMPLER_REGISTRY: dict[str, str] = {
    "instance": f"{_SAMPLERS}:instance_sampler",
    "class_balanced": f"{_SAMPLERS}:class_balanced_sampler",
    "sqrt": f"{_SAMPLERS}:sqrt_sampler",
    "progressive": f"{_SAMPLERS}:progressive_sampler",
    "class_aware": f"{_SAMPLERS}:class_aware_sampler",
}

_ML = "ltr_core.data.multilabel_loaders"
ML_SAMPLER_REGISTRY: dict[str, str] = {
    "occurrence": f"{_ML}:occurrence_sampler",
    "instance": f"{_ML}:instance_ml_sampler",
}

_PEFT = "ltr_core.models.peft"
PEFT_REGISTRY: dict[str, str] = {
    "adaptformer": f"{_PEFT}:add_adaptformer",
    "adapter": f"{_PEFT}:add_adapter",
    "lora": f"{_PEFT}:add_lora",
    "vpt_shallow": f"{_PEFT}:add_vpt_shallow",
    "vpt_deep": f"{_PEFT}:add_vpt_deep",
    "bitfit": f"{_PEFT}:add_bitfit",
    "ssf": f"{_PEFT}:add_ssf",
    "ln_tuning": f"{_PEFT}:add_ln_tuning",
    "full": f"{_PEFT}:add_full",
    "linear_probe": f"{_PEFT}:add_linear_probe",
}


def factory(registry: Mapping[str, str], name: str) -> Callable:
    """The function registered as ``name`` (its module imported now); callers check ``name`` first, so that
    their own error lists the valid names."""
    module, attr = registry[name].split(":")
    return getattr(importlib.import_module(module), attr)
