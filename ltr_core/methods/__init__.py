"""Method families: a plain dict maps each name to its module.

A method module exposes ``NOTEBOOK`` (the notebook ``ltr run`` executes for it) and
``run(cfg, data=None) -> results dict`` (what the notebook and ``python -m ltr_core.train`` call).
"""

from __future__ import annotations

from types import ModuleType

from . import erm

METHODS: dict[str, ModuleType] = {"erm": erm}


def get_method(name: str) -> ModuleType:
    """The module of method ``name``; a clear error lists the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {sorted(METHODS)}")
    return METHODS[name]
