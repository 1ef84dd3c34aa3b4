"""Validation of the run configuration (:mod:`ltr_core.config`): the allowed values of string keys
(:data:`CHOICES`), the intervals of numeric keys (:data:`RANGES`), type coercion of one value
(:func:`_coerce`) and the folder-name checks of ``name`` and ``suite``; every failure is a
:class:`ConfigError` naming the key, what is allowed and the value.

Where a registry exists, a key's choices are its keys (samplers, PEFT methods: :mod:`ltr_core.registries`;
optimizers, lr schedules: :mod:`ltr_core.optim`; decoupling modes: :mod:`ltr_core.methods.decouple_modes`),
all torch-free, so validating a config never imports torch.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import TYPE_CHECKING, Any, Mapping

import yaml

from .methods.decouple_modes import MODES as DECOUPLE_MODES  # torch-free registry
from .optim import OPTIMIZERS, SCHEDULES  # torch-free registries
from .registries import ML_SAMPLER_REGISTRY, PEFT_REGISTRY, SAMPLER_REGISTRY

if TYPE_CHECKING:
    from .config import RunConfig


class ConfigError(ValueError):
    """A parameter is unknown, mistyped or out of its allowed set."""


CHOICES: dict[str, tuple[str, ...]] = {
    "lt_profile": ("exp", "step"),
    "sampler": tuple(SAMPLER_REGISTRY),
    "head": ("linear", "cosine"),
    "head_init": ("default", "kaiming_normal", "unit_norm", "sigmoid_prior"),
    "channels_last": ("auto", "on", "off"),
    "optimizer": tuple(OPTIMIZERS),
    "schedule": tuple(SCHEDULES),
    "precision": ("auto", "bf16", "fp32"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune"),
    "cudnn_benchmark": ("auto", "on", "off"),
    "eval_split": ("test", "val"),
    "clip_interpolation": ("bicubic", "bilinear"),
    "tailclip_mode": ("finetune", "zeroshot"),
    "tailclip_loss": ("bal", "asl", "db_focal", "bce"),
    "tailclip_sampler": tuple(ML_SAMPLER_REGISTRY),
    "tailclip_peft": ("", *PEFT_REGISTRY),
    "augment_mode": ("crop_pad", "rrc"),
    "file_backend": ("pil", "uint8_cache", "auto", "torchcodec"),
    "dist_backend": ("auto", "nccl", "gloo"),
    "pel_peft": tuple(PEFT_REGISTRY),
    "pel_init": ("text", "random"),
    "pel_templates": ("single", "ensemble"),
    "pel_lr_step": ("epoch", "step"),
    "vlltr_anss_split": ("auto", "train", "val"),
    "vlltr_stage2_input": ("cached", "online"),
    "oltr_centroid_input": ("direct", "meta"),
    "livt_global_pool": ("avg", "token"),
    "decouple_mode": tuple(DECOUPLE_MODES),
    "crt_features": ("online", "cached"),
    "crt_bn_mode": ("train", "eval"),
    "decouple_scheduler_step": ("post_epoch", "pre_epoch"),
    "ncm_metric": ("cl2n_l2", "cosine"),
}


# The allowed interval of each numeric key ("[" / "]" closed, "(" / ")" open); every numeric key not
# named here must be >= 0 (NONNEGATIVE). A value outside is a ConfigError naming key, interval and value.
NONNEGATIVE = "[0, inf)"
RANGES: dict[str, str] = {
    "imbalance_ratio": "[1, inf)", "rrc_scale_min": "(0, 1]", "digits_test_per_class": "[1, inf)",
    "open_theta": "[0, 1]", "cosine_scale": "(0, inf)", "drop_rate": "[0, 1)", "label_smoothing": "[0, 1)",
    "cb_beta": "[0, 1)", "ldam_scale": "(0, inf)", "drw_beta": "[0, 1)", "mislas_eps_head": "[0, 1)",
    "mislas_eps_tail": "[0, 1)", "lr": "(0, inf)", "momentum": "[0, 1)", "adam_beta1": "[0, 1)",
    "adam_beta2": "[0, 1)", "lr_gamma": "(0, 1]", "epochs": "[1, inf)", "batch_size": "[1, inf)",
    "accum_steps": "[1, inf)", "eval_batch_size": "[1, inf)", "decouple_tau": "[-1, inf)",
    "oltr_reach_scale": "(0, inf)", "livt_mgp_batch_size": "[1, inf)", "livt_mgp_accum_steps": "[1, inf)",
    "livt_mgp_blr": "(0, inf)", "livt_mgp_beta2": "[0, 1)", "livt_mgp_rrc_scale_min": "(0, 1]",
    "livt_mask_ratio": "[0, 1)", "livt_decoder_width": "[1, inf)", "livt_decoder_depth": "[1, inf)",
    "livt_decoder_heads": "[1, inf)", "livt_layer_decay": "(0, 1]", "livt_drop_path": "[0, 1)",
    "livt_randaug_prob": "[0, 1]", "livt_reprob": "[0, 1]", "livt_mixup_prob": "[0, 1]",
    "livt_mixup_switch_prob": "[0, 1]", "pel_scale": "(0, inf)", "pel_tte_expand": "[0, inf)",
    "vlltr_stage1_batch_size": "[1, inf)", "vlltr_contrast_smoothing": "[0, 1)", "vlltr_alpha": "[0, 1]",
    "vlltr_max_tokens": "[1, inf)", "tailclip_val_fraction": "[0, 1)", "tailclip_label_smoothing": "[0, 1)",
    "tailclip_clip": "[0, 1)", "tailclip_adam_eps": "(0, inf)", "dist_nproc": "[1, inf)", "checkpoint_every": "[1, inf)",
    "knn_k": "[1, inf)", "knn_temperature": "(0, inf)", "ib_alpha": "(0, inf)",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")


def in_interval(value: float, interval: str) -> bool:
    """Whether ``value`` lies in an interval written like ``"(0, 1]"``."""
    lo_br, hi_br = interval[0], interval[-1]
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    above = value > lo or (lo_br == "[" and value == lo)
    below = value < hi or (hi_br == "]" and value == hi)
    return above and below


def _check_numeric(flat: Mapping[str, Any]) -> None:
    for key, value in flat.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        interval = RANGES.get(key, NONNEGATIVE)
        if not (math.isfinite(value) and in_interval(value, interval)):
            raise ConfigError(f"parameter {key!r} must be in {interval}, got {value!r}")


def _check_names(cfg: RunConfig) -> None:
    """Run names and suites become folder names under results_root: no separators, no '..', no absolute path."""
    if cfg.run.name and not _SAFE_NAME.match(cfg.run.name):
        raise ConfigError(f"parameter 'name' must be a plain folder name (letters, digits, _ . + = -, not "
                          f"starting with '.'), got {cfg.run.name!r}")
    parts = cfg.run.suite.split("/")
    if not cfg.run.suite or not all(_SAFE_NAME.match(p) for p in parts):
        raise ConfigError(f"parameter 'suite' must be a folder name under results_root (segments of letters, "
                          f"digits, _ . + = -, joined by '/', no '..' or absolute path), got {cfg.run.suite!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; coerce what is unambiguous."""
    bad = ConfigError(
        f"parameter {key!r} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else []
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp, *_rest) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise bad
    return value
