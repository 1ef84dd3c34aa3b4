"""Strict run configuration built from a flat dict of notebook parameters.

A run is described by one flat mapping (a notebook's ``parameters`` cell, a params YAML file, or
``--set key=value`` overrides). :func:`from_params` routes every key to the section dataclass that
owns it, checks its type, and fails loudly on anything it does not know:

* an unknown key raises :class:`ConfigError` naming the closest valid keys and listing all of them
  (papermill only *warns* on unknown parameters, so a typo would otherwise be silently ignored);
* a value of the wrong type raises :class:`ConfigError` naming the key, the expected type and the value;
* numeric strings are coerced for float fields, so ``lr: 1e-3`` (which YAML 1.1 reads as the string
  ``'1e-3'``) becomes ``0.001``.

Flat keys are unique across sections, so ``cfg.optim.lr`` is set by the flat key ``lr``.
Params files may name a ``base`` file (or a list of them) that is loaded first and shallow-merged
(later keys win), which gives LIFT-style layering without nested dicts.

Module layout: the section dataclasses are in :mod:`ltr_core.config_sections` (core) and
``ltr_core/methods/<family>_config.py`` (each family beside its method; gathered in :mod:`ltr_core.config_families`), the validation tables and checks (``CHOICES``, ``RANGES``,
type coercion) in :mod:`ltr_core.config_checks`; every name is importable from here.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .config_checks import (_SAFE_NAME, CHOICES, DECOUPLE_MODES, NONNEGATIVE, RANGES,  # noqa: F401 (re-exported)
                            ConfigError, _check_names, _check_numeric, _coerce, _type_name, in_interval)
from .config_families import (FAMILY_SECTIONS, ClipSection, DecoupleSection, DistSection,  # noqa: F401 (re-exported)
                              KNNSection, LiVTSection, OLTRSection, PELSection, TailCLIPSection, VLLTRSection)
from .config_sections import (CORE_SECTIONS, DataSection, LossSection, ModelSection,  # noqa: F401 (re-exported)
                              OptimSection, RunSection, TrainSection)

SECTIONS: dict[str, type] = {**CORE_SECTIONS, **FAMILY_SECTIONS}

# Keys that name where or how a run executes, not what it computes: left out of the config hash,
# so moving the data or the results folder does not invalidate finished runs.
NON_SEMANTIC_KEYS = frozenset(
    {"name", "suite", "results_root", "run_dir", "figures_dir", "device", "interactive", "tensorboard",
     "data_root", "split_dir", "num_workers", "download", "cache_dir", "eval_batch_size", "vlltr_text_root",
     "checkpoint_every", "checkpoint_async"}
)

# The run identity (:func:`config_hash`) covers the semantic keys whose value differs from its
# default, plus SCHEMA_VERSION: adding a key (with a default that keeps the old behaviour) never changes
# the hash of a finished run. Changing an existing default changes what every run that left the key at
# its default computes, so it must bump SCHEMA_VERSION (tests/test_config.py checks the defaults
# against tests/data/config_defaults.json and says so).
SCHEMA_VERSION = 2

# Notebook globals that are never parameters.
_NOTEBOOK_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved run: one frozen dataclass per concern."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    decouple: DecoupleSection = field(default_factory=DecoupleSection)
    knn: KNNSection = field(default_factory=KNNSection)
    oltr: OLTRSection = field(default_factory=OLTRSection)
    livt: LiVTSection = field(default_factory=LiVTSection)
    clip: ClipSection = field(default_factory=ClipSection)
    pel: PELSection = field(default_factory=PELSection)
    vlltr: VLLTRSection = field(default_factory=VLLTRSection)
    tailclip: TailCLIPSection = field(default_factory=TailCLIPSection)
    dist: DistSection = field(default_factory=DistSection)

    @property
    def run_id(self) -> str:
        """Deterministic run name: ``<dataset>-<method>-<name>-s<seed>``."""
        name = self.run.name or "default"
        return f"{self.data.dataset}-{self.run.method}-{name}-s{self.run.seed}"

    def figures_path(self) -> Path:
        """Where this run's notebook saves figures: ``figures_dir`` or ``figures/<suite>``."""
        return Path(self.run.figures_dir or Path("figures") / self.run.suite)

    def run_path(self) -> Path:
        """The run directory: ``run_dir`` if set, else ``<results_root>/<suite>/<run_id>``."""
        if self.run.run_dir:
            return Path(self.run.run_dir)
        return Path(self.run.results_root) / self.run.suite / self.run_id


def _key_owner() -> dict[str, str]:
    owner: dict[str, str] = {}
    for section_name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in owner, f"duplicate flat key {f.name}"
            owner[f.name] = section_name
    return owner


KEY_OWNER = _key_owner()


def param_names() -> list[str]:
    """All valid flat parameter names."""
    return sorted(KEY_OWNER)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key_error(keys: list[str]) -> ConfigError:
    lines = []
    for key in keys:
        close = difflib.get_close_matches(key, KEY_OWNER, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        lines.append(f"unknown parameter {key!r}{hint}")
    lines.append("valid parameters: " + ", ".join(param_names()))
    return ConfigError("\n".join(lines))


def from_params(params: Mapping[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from a flat mapping; strict about keys, types and choices."""
    unknown = [k for k in params if k not in KEY_OWNER]
    if unknown:
        raise _unknown_key_error(unknown)
    per_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in params.items():
        section = KEY_OWNER[key]
        tp = _field_types(SECTIONS[section])[key]
        value = _coerce(key, value, tp)
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"parameter {key!r} must be one of {CHOICES[key]}, got {value!r}")
        per_section[section][key] = value
    cfg = RunConfig(**{name: SECTIONS[name](**kw) for name, kw in per_section.items()})
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: RunConfig) -> None:
    _check_numeric(to_flat(cfg))
    _check_names(cfg)
    checks = [
        (cfg.data.split_from_ir == 0 or cfg.data.split_from_ir >= 1, "split_from_ir must be 0 (off) or >= 1"),
        (cfg.train.epochs >= 1, "epochs must be >= 1"),
        (cfg.train.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.train.accum_steps >= 1, "accum_steps must be >= 1"),
        (cfg.train.batch_size % cfg.train.accum_steps == 0,
         f"batch_size ({cfg.train.batch_size}) must be divisible by accum_steps ({cfg.train.accum_steps})"),
        (cfg.data.imbalance_ratio >= 1, "imbalance_ratio must be >= 1"),
        (cfg.data.shot_few <= cfg.data.shot_many, "shot_few must be <= shot_many"),
        (cfg.optim.lr > 0, "lr must be > 0"),
        (0 <= cfg.loss.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (list(cfg.optim.lr_milestones) == sorted(cfg.optim.lr_milestones), "lr_milestones must be increasing"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    from .methods import METHODS  # the registry imports nothing heavy

    if cfg.run.method not in METHODS:
        raise ConfigError(f"parameter 'method' must be one of {sorted(METHODS)}, got {cfg.run.method!r}")


def from_notebook(namespace: Mapping[str, Any]) -> RunConfig:
    """Build the config from a notebook's globals after the parameters cell.

    Every public global holding a plain value (the parameters cell's literals and papermill's
    injected overrides) is a parameter; modules, functions and IPython's own names are skipped.
    A mistyped injected parameter therefore fails here instead of being ignored.
    """
    params = {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and k not in _NOTEBOOK_NAMES
        and isinstance(v, (str, int, float, bool, list, tuple, type(None)))
    }
    return from_params(params)


def to_flat(cfg: RunConfig) -> dict[str, Any]:
    """The flat parameter dict (tuples as lists) that rebuilds ``cfg`` via :func:`from_params`."""
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            flat[key] = list(value) if isinstance(value, tuple) else value
    return flat


def default_flat() -> dict[str, Any]:
    """Every flat key with its default value (as :func:`to_flat` writes it)."""
    return to_flat(RunConfig())


def semantic_params(cfg: RunConfig) -> dict[str, Any]:
    """The flat parameters that define what a run computes and differ from their defaults: the
    core-section keys and the keys of the family sections whose ``METHODS`` include ``cfg.run.method``,
    minus :data:`NON_SEMANTIC_KEYS`, plus ``schema`` = :data:`SCHEMA_VERSION`."""
    keys = [f.name for name, cls in SECTIONS.items()
            if name in CORE_SECTIONS or cfg.run.method in cls.METHODS for f in dataclasses.fields(cls)]
    flat, defaults = to_flat(cfg), default_flat()
    out = {k: flat[k] for k in keys if k not in NON_SEMANTIC_KEYS and flat[k] != defaults[k]}
    out["schema"] = SCHEMA_VERSION
    return out


def config_hash(cfg: RunConfig) -> str:
    """sha256 (16 hex chars) of :func:`semantic_params`; equal hashes mean the same experiment."""
    flat = semantic_params(cfg)
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def load_params(path: str | Path) -> dict[str, Any]:
    """Read a flat params YAML file, resolving its optional ``base`` file(s) first (relative to the file
    that names them) and anchoring its relative paths to it: :func:`ltr_core.params.load_layered`. To
    resolve a run (name, overrides, working folders) use :func:`ltr_core.params.resolve`."""
    from .params import load_layered  # params imports this module

    return load_layered(path)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values read as YAML, so ``epochs=2`` is an int)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out
