"""Open-set recognition metrics: the OLTR protocol (Liu et al., CVPR 2019; methods.md §1.5).

A known-class test sample is rejected ("unknown", -1) when its max softmax is below ``theta``; the open
test samples should be. Inputs and outputs follow :mod:`ltr_core.metrics` (numpy or torch in, % out).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import _np, group_accuracy, per_class_accuracy, shot_groups

OPEN_THETA = 0.1  # the protocol's fixed max-softmax threshold (never tuned)
OPEN_THETAS = tuple(round(0.05 * i, 2) for i in range(19))  # the sweep: 0, 0.05, ..., 0.9
F_VARIANTS = ("post_fix", "pre_fix")


def max_softmax(logits: Any, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(conf, argmax) with conf_i = max_j softmax(z_i)_j = 1 / sum_j exp(z_ij - max_k z_ik), row chunks in float64."""
    z = _np(logits)
    if z.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {z.shape}")
    conf = np.empty(z.shape[0], dtype=np.float64)
    for s in range(0, z.shape[0], chunk):
        block = z[s:s + chunk].astype(np.float64)
        conf[s:s + chunk] = 1.0 / np.exp(block - block.max(axis=1, keepdims=True)).sum(axis=1)
    return conf, z.argmax(axis=1)


def open_set_predictions(logits: Any, theta: float = OPEN_THETA) -> np.ndarray:
    """yhat_i = argmax_j softmax(z_i)_j, replaced by -1 ("unknown") where max_j softmax(z_i)_j < theta."""
    conf, pred = max_softmax(logits)
    pred = pred.astype(np.int64)
    pred[conf < theta] = -1
    return pred


def _check_open_inputs(logits_known: Any, labels_known: Any, logits_open: Any) -> tuple:
    zk, zo = _np(logits_known), _np(logits_open)
    y = _np(labels_known).astype(np.int64).reshape(-1)
    if zk.ndim != 2 or zo.ndim != 2 or zk.shape[1] != zo.shape[1]:
        raise ValueError(f"logits_known and logits_open must be [N, C] with the same C, got {zk.shape} and {zo.shape}")
    if zk.shape[0] != y.shape[0]:
        raise ValueError(f"{zk.shape[0]} known-class logits for {y.shape[0]} labels")
    if (y < 0).any():
        raise ValueError("labels_known holds negative (open-set) labels; pass open-set samples as logits_open")
    return zk, y, zo


def _f_from_counts(tp: int, fp: int, fn: int) -> float:
    """F = 2PR/(P+R) with P = TP/(TP+FP), R = TP/(TP+FN), i.e. 2TP/(2TP+FP+FN), in %; 0 when TP = 0."""
    denom = 2 * tp + fp + fn
    return float(100.0 * 2 * tp / denom) if denom else float("nan")


def open_set_counts(pred_known: np.ndarray, labels_known: np.ndarray, pred_open: np.ndarray) -> dict[str, int]:
    """TP, FP (post-fix: every misclassified known sample, rejected ones included), FP pre-fix (rejected
    known samples not counted), FN (open samples accepted as a known class). TN is not used."""
    wrong = pred_known != labels_known
    return {"tp": int((~wrong).sum()), "fp": int(wrong.sum()), "fp_pre_fix": int((wrong & (pred_known != -1)).sum()),
            "fn": int((pred_open != -1).sum())}


def open_set_f_measure(logits_known: Any, labels_known: Any, logits_open: Any, theta: float = OPEN_THETA,
                       variant: str = "post_fix") -> float:
    """Open-set F-measure in % (OLTR, Liu et al. CVPR 2019; definition of OpenMax, Bendale & Boult 2016).

    Test pool = known-class samples (labels >= 0) and open samples; yhat = argmax softmax, -1 where
    max softmax < ``theta``. TP = known samples with yhat = y; FN = open samples with yhat != -1;
    FP (``post_fix``, the OLTR code since commit 7decb38, 2020-01-29) = known samples with yhat != y,
    **including those rejected as -1**; FP (``pre_fix``, the earlier OLTR code and classifier-balancing's
    ``F_measure``) leaves rejected known samples out, which inflates precision.
    F = 2PR/(P+R) = 2TP/(2TP+FP+FN).
    """
    if variant not in F_VARIANTS:
        raise ValueError(f"variant must be one of {F_VARIANTS}, got {variant!r}")
    zk, y, zo = _check_open_inputs(logits_known, labels_known, logits_open)
    c = open_set_counts(open_set_predictions(zk, theta), y, open_set_predictions(zo, theta))
    return _f_from_counts(c["tp"], c["fp"] if variant == "post_fix" else c["fp_pre_fix"], c["fn"])


def open_set_sweep(logits_known: Any, labels_known: Any, logits_open: Any,
                   thetas: tuple[float, ...] = OPEN_THETAS) -> dict[str, list[float]]:
    """F-measure (post- and pre-fix), closed-set accuracy under rejection (rejected known samples
    count as wrong; = post-fix precision) and the % of open samples rejected, for each threshold."""
    zk, y, zo = _check_open_inputs(logits_known, labels_known, logits_open)
    conf_k, pred_k = max_softmax(zk)
    conf_o, _ = max_softmax(zo)
    out: dict[str, list[float]] = {"theta": [], "f_measure": [], "f_measure_pre_fix": [], "closed_accuracy": [],
                                   "open_rejection": []}
    for theta in thetas:
        pk = np.where(conf_k < theta, -1, pred_k)
        po = np.where(conf_o < theta, -1, 0)
        c = open_set_counts(pk, y, po)
        out["theta"].append(float(theta))
        out["f_measure"].append(_f_from_counts(c["tp"], c["fp"], c["fn"]))
        out["f_measure_pre_fix"].append(_f_from_counts(c["tp"], c["fp_pre_fix"], c["fn"]))
        out["closed_accuracy"].append(float(100.0 * c["tp"] / y.size) if y.size else float("nan"))
        out["open_rejection"].append(float(100.0 * (po == -1).mean()) if po.size else float("nan"))
    return out


def open_set_metrics(logits_known: Any, labels_known: Any, logits_open: Any, class_counts: Any, *,
                     theta: float = OPEN_THETA, many: int = 100, few: int = 20,
                     thetas: tuple[float, ...] = OPEN_THETAS) -> dict:
    """Every open-set number of the protocol (methods.md §1.5), in %:

    f_measure (post-fix, the headline), f_measure_pre_fix, open_precision / open_recall (post-fix),
    open_top1 (known-sample accuracy with rejection), open_many / open_medium / open_few (shot groups
    after thresholding: a rejected known sample is wrong; NaN for an empty group), open_rejection
    (% of open samples rejected, the OLTR code's "openset accuracy"), known_rejection (% of known
    samples rejected), open_theta, open_samples, and f_measure_sweep (:func:`open_set_sweep`).
    The closed-set metrics of :func:`evaluate` stay computed without rejection.
    """
    zk, y, zo = _check_open_inputs(logits_known, labels_known, logits_open)
    counts = _np(class_counts).reshape(-1)
    pk, po = open_set_predictions(zk, theta), open_set_predictions(zo, theta)
    c = open_set_counts(pk, y, po)
    acc = per_class_accuracy(pk, y, int(counts.size))
    groups = group_accuracy(acc, shot_groups(counts, many=many, few=few))
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    return {
        "f_measure": _f_from_counts(tp, fp, fn),
        "f_measure_pre_fix": _f_from_counts(tp, c["fp_pre_fix"], fn),
        "open_precision": float(100.0 * tp / (tp + fp)) if tp + fp else float("nan"),
        "open_recall": float(100.0 * tp / (tp + fn)) if tp + fn else float("nan"),
        "open_top1": float(100.0 * tp / y.size) if y.size else float("nan"),
        **{f"open_{g}": v for g, v in groups.items()},
        "open_rejection": float(100.0 * (po == -1).mean()) if po.size else float("nan"),
        "known_rejection": float(100.0 * (pk == -1).mean()) if pk.size else float("nan"),
        "open_theta": float(theta),
        "open_samples": int(zo.shape[0]),
        "f_measure_sweep": open_set_sweep(zk, y, zo, thetas),
    }
