"""Method-family sections of the run configuration (:mod:`ltr_core.config`), gathered.

Each family declares its section beside its method, in ``ltr_core/methods/<family>_config.py`` (a light,
torch-free module); this module only collects them (plus the execution-only :class:`DistSection`). Each
lists the methods it belongs to in ``METHODS``: its keys enter the config hash of those methods only, so
tuning one family never invalidates another family's runs. Keys are flat and unique across all sections
(prefix them with the family name); each is a typed field with its default and a help comment, as in
:mod:`ltr_core.config_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .methods.decouple_config import DecoupleSection
from .methods.knn_config import KNNSection
from .methods.oltr_config import OLTRSection
from .methods.livt_config import LiVTSection
from .methods.clip_config import ClipSection
from .methods.pel_config import PELSection
from .methods.vlltr_config import VLLTRSection
from .methods.tailclip_config import TailCLIPSection


@dataclass(frozen=True)
class DistSection:
    """Multi-GPU and cluster execution (not part of what a run computes)."""

    METHODS: ClassVar[tuple[str, ...]] = ()
    dist_nproc: int = 1  # processes (GPUs) per run; > 1: `ltr run` launches torchrun DDP in a subprocess (same as --nproc N)
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    dist_sync_bn: bool = True  # DDP on CUDA: BatchNorm -> SyncBatchNorm (global-batch statistics, as on one GPU); CPU/gloo: per-rank statistics
    dist_find_unused: bool = False  # DDP find_unused_parameters (models with parameters a step does not use)


FAMILY_SECTIONS: dict[str, type] = {
    "decouple": DecoupleSection,
    "knn": KNNSection,
    "oltr": OLTRSection,
    "livt": LiVTSection,
    "clip": ClipSection,
    "pel": PELSection,
    "vlltr": VLLTRSection,
    "tailclip": TailCLIPSection,
    "dist": DistSection,
}
