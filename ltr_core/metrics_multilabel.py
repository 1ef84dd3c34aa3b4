"""Multi-label long-tailed metrics: mAP over head / medium / tail classes, precision@1 and the top-1
calibration (VOC-MLT, COCO-MLT, mosaic-MLT; methods.md §1.7). Inputs and outputs follow
:mod:`ltr_core.metrics` (numpy or torch in, % out).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .metrics import _nanmean, _np, calibration, softmax

ML_GROUPS = ("head", "medium", "tail")


def multilabel_groups(class_counts: Any, head: int = 100, tail: int = 20) -> dict[str, np.ndarray]:
    """Head / medium / tail class indices of the multi-label protocol (methods.md §1.7; DB-Focal, LMPT).

    n_c = training images *containing* class c: head n_c >= ``head``, medium ``tail`` <= n_c < ``head``,
    tail n_c < ``tail`` (VOC-MLT 6 / 6 / 8, COCO-MLT 22 / 33 / 25). Note the ``>=`` at the head boundary:
    the single-label rule (> 100) would put VOC's potted plant (exactly 100) in medium.
    """
    n = _np(class_counts).reshape(-1)
    return {
        "head": np.flatnonzero(n >= head).astype(np.int64),
        "medium": np.flatnonzero((n >= tail) & (n < head)).astype(np.int64),
        "tail": np.flatnonzero(n < tail).astype(np.int64),
    }


def average_precision(scores: Any, targets: Any) -> float:
    """Non-interpolated average precision of one class, in %: AP = Σ_n (R_n − R_{n−1}) P_n.

    The images are ranked by decreasing score; n runs over the distinct score values (tied images
    enter together), P_n and R_n are the precision and recall of the images scoring >= the n-th value.
    Equals scikit-learn's ``average_precision_score``. NaN when the class has no positive image.
    """
    s = _np(scores).astype(np.float64).reshape(-1)
    y = _np(targets).reshape(-1) > 0
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and targets ({y.shape[0]}) must have the same length")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of every distinct score
    tp = np.cumsum(y)[last_of_value].astype(np.float64)
    precision = tp / (last_of_value + 1)
    recall = tp / n_pos
    return float(100.0 * np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_ap(scores: Any, targets: Any) -> np.ndarray:
    """AP_c in % for every column c of scores [N, C] against multi-hot targets [N, C] (NaN: no positive)."""
    s, t = _np(scores), _np(targets)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores and targets must both be [N, C], got {s.shape} and {t.shape}")
    return np.array([average_precision(s[:, c], t[:, c]) for c in range(s.shape[1])], dtype=np.float64)


def sigmoid(logits: Any) -> np.ndarray:
    """σ(z) = 1 / (1 + exp(−z)) in float64 (saturates to 1.0 for z > 36: rank with the logits instead)."""
    z = _np(logits).astype(np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def precision_at_1(scores: Any, targets: Any) -> float:
    """% of images (with at least one label) whose top-scoring class is one of their labels.

    The multi-label reading of top-1 accuracy ("is the first guess right?"); images without labels
    (48 COCO val images) are left out.
    """
    s, t = _np(scores), _np(targets) > 0
    keep = t.any(axis=1)
    if not keep.any():
        return float("nan")
    top = s[keep].argmax(axis=1)
    return float(100.0 * t[keep][np.arange(top.size), top].mean())


def top1_calibration(logits: Any, targets: Any, n_bins: int = 15) -> dict[str, float]:
    """ECE / MCE in % of the top-1 guess: conf_i = max_j softmax(z_i)_j, correct_i = [argmax_j z_ij ∈ Y_i].

    The single-label protocol's calibration (:func:`calibration`, 15 bins) with "correct" meaning the
    top class is one of the image's labels; images without labels are left out.
    """
    z, t = _np(logits), _np(targets) > 0
    keep = t.any(axis=1)
    if not keep.any():
        return {"ece": float("nan"), "mce": float("nan")}
    z, t = z[keep], t[keep]
    top = z.argmax(axis=1)
    # relabel: the top class where it is right, another (wrong) class where it is not
    wrong = (top + 1) % z.shape[1]
    y = np.where(t[np.arange(top.size), top], top, wrong)
    return calibration(softmax(z), y, n_bins=n_bins)


def _ap_summary(ap: np.ndarray, groups: Mapping[str, np.ndarray], prefix: str) -> dict[str, float]:
    out = {prefix: _nanmean(ap)}
    out.update({f"{prefix}_{g}": _nanmean(ap[idx]) for g, idx in groups.items()})
    return out


def multilabel_evaluate(logits: Any, targets: Any, class_counts: Any, *, head: int = 100, tail: int = 20,
                        n_bins: int = 15) -> dict:
    """Every multi-label metric for logits [N, C] and multi-hot targets [N, C] (methods.md §1.7), in %.

    * ``map`` (headline) = nanmean_c AP_c with **sigmoid scores** σ(z) (DB-Focal's protocol). σ is monotone,
      so AP is computed on z itself, which keeps the ranking exact where σ saturates (CLIP logits ~ 100·cos);
      ``map_head`` / ``map_medium`` / ``map_tail`` over :func:`multilabel_groups` (>= head / tail..head−1 /
      < tail images containing the class; an empty group is NaN);
    * ``map_softmax`` (+ ``_head`` / ``_medium`` / ``_tail``) with softmax-over-classes scores, the score of
      the TailCLIP / LM-CLIP and LMPT zero-shot code (comparable with their numbers);
    * the keys every results.json carries, given a multi-label meaning: ``many`` / ``medium`` / ``few`` =
      ``map_head`` / ``map_medium`` / ``map_tail``; ``top1`` = precision@1 (:func:`precision_at_1`);
      ``mean_per_class`` = ``map``; ``ece`` / ``mce`` of the top-1 guess (:func:`top1_calibration`);
    * ``per_class`` (sigmoid AP), ``per_class_softmax``, ``shot_groups`` ({head, medium, tail} index
      lists), ``group_sizes``, ``shot_rule``, ``score`` ("sigmoid"), num_classes, num_samples,
      ``num_unlabelled`` (test images without any label: negatives for every class).
    """
    z = _np(logits).astype(np.float64)
    t = (_np(targets) > 0).astype(np.int64)
    counts = _np(class_counts).reshape(-1)
    num_classes = int(counts.size)
    if z.ndim != 2 or z.shape[1] != num_classes or t.shape != z.shape:
        raise ValueError(f"logits and targets must both be [N, {num_classes}] (one column per class), "
                         f"got {z.shape} and {t.shape}")
    groups = multilabel_groups(counts, head=head, tail=tail)
    ap = per_class_ap(z, t)
    ap_soft = per_class_ap(softmax(z), t)
    out: dict[str, Any] = _ap_summary(ap, groups, "map")
    out.update(_ap_summary(ap_soft, groups, "map_softmax"))
    out.update({"many": out["map_head"], "medium": out["map_medium"], "few": out["map_tail"],
                "top1": precision_at_1(z, t), "mean_per_class": out["map"]})
    out.update(top1_calibration(z, t, n_bins=n_bins))
    out.update({
        "score": "sigmoid",
        "num_classes": num_classes,
        "num_samples": int(z.shape[0]),
        "num_unlabelled": int((t.sum(axis=1) == 0).sum()),
        "per_class": [float(a) for a in ap],
        "per_class_softmax": [float(a) for a in ap_soft],
        "shot_groups": {g: [int(i) for i in idx] for g, idx in groups.items()},
        "group_sizes": {g: int(idx.size) for g, idx in groups.items()},
        "shot_rule": {"head": f">={head}", "medium": f"{tail}-{head - 1}", "tail": f"<{tail}"},
    })
    return out
