"""The config section of the decoupling methods (ltr_core.methods.decouple): its keys, defaults and help, beside the method.

Imported by :mod:`ltr_core.config` (torch-free, as config validation must be); the keys enter the config
hash of the methods listed in ``METHODS`` only (:mod:`ltr_core.config_families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class DecoupleSection:
    """Two-stage classifier re-balancing on a frozen stage-1 backbone (Kang et al., ICLR 2020)."""

    METHODS: ClassVar[tuple[str, ...]] = ("decouple",)
    decouple_mode: str = "crt"  # stage 2 on init_run (ltr_core.methods.decouple_modes.MODES): crt | lws | tau_norm | posthoc_la | ncm | maxnorm
    crt_features: str = "online"  # crt/lws: online (frozen backbone, augmented input) | cached (features, no augmentation; variant)
    crt_bn_mode: str = "train"  # crt/lws online: train (BN stats keep updating, classifier-balancing) | eval (truly frozen)
    decouple_scheduler_step: str = "post_epoch"  # crt/lws epoch-wise lr: post_epoch | pre_epoch (classifier-balancing; last epoch lr 0)
    decouple_tau: float = -1.0  # tau_norm / posthoc_la knob (maxnorm: the quantile q in [0, 1]); < 0: chosen on val (no val: on test, "oracle"); LA paper 1.0
    decouple_tau_grid: tuple[float, ...] = ()  # tau values swept and recorded; empty: 0, 0.1, ..., 2.0 (maxnorm: 0, 0.1, ..., 1.0)
    ncm_metric: str = "cl2n_l2"  # ncm: cl2n_l2 (-||x^ - c||^2 on centred, L2-normalised features; classifier-balancing) | cosine (cos(f, raw class mean))
