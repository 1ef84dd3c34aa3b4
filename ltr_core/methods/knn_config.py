"""The config section of the kNN family (ltr_core.methods.knn): its keys, defaults and help, beside the method.

Imported by :mod:`ltr_core.config` (torch-free, as config validation must be); the keys enter the config
hash of the methods listed in ``METHODS`` only (:mod:`ltr_core.config_families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class KNNSection:
    """Cosine k-nearest-neighbour classifier on the frozen features of a stage-1 run (ltr_core.methods.knn)."""

    METHODS: ClassVar[tuple[str, ...]] = ("knn",)
    knn_k: int = 20  # neighbours that vote (DINO's k-NN evaluation: 20)
    knn_temperature: float = 0.07  # vote weight exp(cos(f, f_j) / T) (Wu et al. 2018, DINO: 0.07)
    knn_tau: float = 0.0  # z = log p_knn - tau log pi: 0 the plain vote, 1 the vote share divided by the class prior
