"""Long-tail profiles, shot groups and the LDAM-DRW subset selection.

* Exponential profile (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
  CVPR 2019; Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
  NeurIPS 2019): n_c = floor(n_max * IR^(-c/(C-1))), c = 0..C-1, class 0 is the head.
* Step profile (Buda et al. 2018, as in the LDAM-DRW generator): the first C//2 classes keep
  n_max images, the others floor(n_max / IR).
* Shot groups (Liu et al., OLTR, CVPR 2019): many n_c > 100, medium 20 <= n_c <= 100, few n_c < 20.
"""

from __future__ import annotations

import numpy as np

from ..metrics import shot_groups  # noqa: F401  (one definition, re-exported here)
from .base import DataError

PROFILES = ("exp", "step")


def lt_counts(n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exp") -> list[int]:
    """Per-class training counts of a long-tailed split.

    exp:  n_c = int(n_max * (1/IR)**(c/(C-1)))  (float64, exactly the LDAM-DRW expression);
    step: n_c = n_max for c < C//2, else int(n_max / IR).  IR = 1 gives n_max for every class.
    E.g. CIFAR-10, IR 100: 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 (sum 12,406).
    """
    if num_classes < 1 or n_max < 1:
        raise DataError(f"lt_counts needs num_classes >= 1 and n_max >= 1, got {num_classes}, {n_max}")
    if imbalance_ratio < 1:
        raise DataError(f"imbalance_ratio must be >= 1 (n_max / n_min), got {imbalance_ratio}")
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        inv = 1.0 / float(imbalance_ratio)
        counts = [int(n_max * inv ** (c / (num_classes - 1))) for c in range(num_classes)]
    elif profile == "step":
        half = num_classes // 2
        counts = [int(n_max)] * half + [int(n_max / float(imbalance_ratio))] * (num_classes - half)
    else:
        raise DataError(f"unknown lt_profile {profile!r}; use one of {PROFILES}")
    if min(counts) < 1:
        raise DataError(
            f"imbalance_ratio {imbalance_ratio} with n_max {n_max} leaves {counts.count(0)} class(es) without "
            f"training images (counts {counts}); use imbalance_ratio <= {n_max} or a larger n_max"
        )
    return counts


def select_lt_indices(labels: np.ndarray, counts: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    """LDAM-DRW selection: one ``RandomState(seed)``; per class c ascending, shuffle its indices
    (in the order of the original array) and keep the first ``counts[c]``.

    Returns {c: int64 indices into ``labels``}. DataError if a class has fewer images than asked.
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.RandomState(seed)
    selected: dict[int, np.ndarray] = {}
    for c, n_c in enumerate(counts):
        idx = np.where(labels == c)[0]
        if len(idx) < n_c:
            raise DataError(f"class {c} has {len(idx)} training images but the long-tail profile asks "
                            f"for {n_c}; lower n_max (or check that the training split is complete)")
        rng.shuffle(idx)
        selected[c] = idx[:n_c].astype(np.int64)
    return selected
