"""Method families: a plain dict maps each name to the module that implements it.

A method module exposes ``NOTEBOOK`` (the notebook ``ltr run`` executes for it) and
``run(cfg, data=None) -> results dict`` (what the notebook and ``python -m ltr_core.train`` call). ``run``
describes what the family trains as a :class:`ltr_core.study.Plan` and hands it to
:func:`ltr_core.study.run_family` (skip-if-complete, run directory, fit, evaluation, open-set and
multi-label metrics, the one results writer); an end-to-end network is ``study.run_supervised(cfg, build)``.
Modules are imported on first use, so a family's optional dependencies (open_clip, ...) load only
when that family runs. Register a new family with one line in :data:`METHODS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

METHODS: dict[str, str] = {
    "erm": "ltr_core.methods.erm",
    "tailclip": "ltr_core.methods.tailclip",
    "oltr": "ltr_core.methods.oltr",
    "pel": "ltr_core.methods.pel",
    "zeroshot": "ltr_core.methods.pel",
    "vlltr": "ltr_core.methods.vlltr",
    "livt": "ltr_core.methods.livt",
    "decouple": "ltr_core.methods.decouple",
    "knn": "ltr_core.methods.knn",
}


def get_method(name: str) -> ModuleType:
    """The module of method ``name``; a clear error lists the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {sorted(METHODS)}")
    return importlib.import_module(METHODS[name])
