"""Evaluation protocol of the study: top-1, per-class, many/medium/few, calibration (methods.md §1).

Inputs are numpy arrays or torch tensors (converted on entry); outputs are python floats in %
(or numpy arrays of %). Conventions that matter for comparability:

* **Shot groups** by the number of *training* images n_c (methods.md §1.1, the rule of Kang et al.,
  "Decoupling Representation and Classifier", ICLR 2020): many n_c > ``many``, medium
  ``few`` <= n_c <= ``many``, few n_c < ``few``; a group's accuracy is the mean of its classes'
  per-class accuracies; **an empty group is NaN, never 0** (classifier-balancing reports 0).
* **Sample top-1** (sum correct / N) and **mean per-class accuracy** are both reported; they differ
  on an unbalanced test set.
* **ECE / MCE** with 15 equal-width confidence bins (0, 1/15], ..., (14/15, 1] over
  conf_i = max_j softmax(z_i)_j (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017;
  the LiVT ``calibration()`` protocol).
* Samples with a negative label (the open-set label -1) are ignored by the closed-set metrics.

Open-set metrics: :mod:`ltr_core.metrics_open`; multi-label metrics: :mod:`ltr_core.metrics_multilabel`
(both still importable from here).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

GROUPS = ("many", "medium", "few")


def _np(x: Any) -> np.ndarray:
    """A numpy view of ``x`` (torch tensors are detached, moved to CPU, bf16/fp16 upcast)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _preds(logits_or_preds: Any) -> np.ndarray:
    """Predicted labels: argmax over the last axis of [N, C] scores, or the [N] labels themselves."""
    a = _np(logits_or_preds)
    return a.argmax(axis=-1) if a.ndim == 2 else a.astype(np.int64).reshape(-1)


def _closed(preds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop open-set samples (label < 0); check the shapes agree."""
    labels = _np(labels).astype(np.int64).reshape(-1)
    if preds.shape[0] != labels.shape[0]:
        raise ValueError(f"{preds.shape[0]} predictions for {labels.shape[0]} labels")
    keep = labels >= 0
    return preds[keep], labels[keep]


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN (no warning) when nothing is left."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def softmax(logits: Any) -> np.ndarray:
    """p_ij = exp(z_ij - max_k z_ik) / sum_k exp(z_ik - max_k z_ik), in float64."""
    z = _np(logits).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def shot_groups(class_counts: Any, many: int = 100, few: int = 20) -> dict[str, np.ndarray]:
    """Class indices per shot group from the training counts n_c (methods.md §1.1).

    many: n_c > many;  medium: few <= n_c <= many;  few: n_c < few   (int64 index arrays).
    """
    n = _np(class_counts).reshape(-1)
    return {
        "many": np.flatnonzero(n > many).astype(np.int64),
        "medium": np.flatnonzero((n >= few) & (n <= many)).astype(np.int64),
        "few": np.flatnonzero(n < few).astype(np.int64),
    }


def shot_rule(many: int = 100, few: int = 20) -> dict[str, str]:
    """Human-readable thresholds, e.g. {"many": ">100", "medium": "20-100", "few": "<20"}."""
    return {"many": f">{many}", "medium": f"{few}-{many}", "few": f"<{few}"}


def top1(logits_or_preds: Any, labels: Any) -> float:
    """Sample-level top-1 accuracy in %:  100 * sum_i [yhat_i = y_i] / N  (NaN when N = 0)."""
    preds, labels = _closed(_preds(logits_or_preds), labels)
    return float(100.0 * np.mean(preds == labels)) if labels.size else float("nan")


def per_class_accuracy(preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """acc_c = 100 * #{i: y_i = c, yhat_i = c} / #{i: y_i = c}, in %; NaN for a class with no test sample.

    ``preds`` may also be [N, C] logits (argmax is taken).
    """
    preds, labels = _closed(_preds(preds), labels)
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"label {labels.max()} out of range for {num_classes} classes")
    total = np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.float64)
    correct = np.bincount(labels[preds == labels], minlength=num_classes)[:num_classes].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = 100.0 * correct / total
    acc[total == 0] = np.nan
    return acc


def group_accuracy(per_class: Any, groups: Mapping[str, Any]) -> dict[str, float]:
    """Mean per-class accuracy over each group's classes: acc_G = (1/|G|) sum_{c in G} acc_c.

    An empty group (or one whose classes all lack test samples) is NaN, never 0.
    """
    acc = _np(per_class).astype(np.float64)
    return {name: _nanmean(acc[_np(idx).astype(np.int64)]) for name, idx in groups.items()}


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin statistics of a reliability diagram (Guo et al., ICML 2017).

    conf_i = max_j p_ij, correct_i = [argmax_j p_ij = y_i]; bin b holds conf in (b/n_bins, (b+1)/n_bins]
    (conf = 0 falls in the first bin). Returns count[b], acc[b] and conf[b] (fractions, NaN when empty)
    and the bin edges.
    """
    p = _np(probs).astype(np.float64)
    y = _np(labels).astype(np.int64).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be [N, C] with N = {y.shape[0]} labels, got {p.shape}")
    p, y = p[y >= 0], y[y >= 0]
    conf = p.max(axis=-1)
    correct = (p.argmax(axis=-1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # number of interior edges strictly below conf -> right-closed bins (lo, hi]
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return {"count": count, "acc": acc, "conf": mean_conf, "edges": edges}


def calibration(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, float]:
    """Expected and maximum calibration error in % (Guo et al., ICML 2017; methods.md §1.6).

    ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|;   MCE = max over non-empty bins of |acc(B_b) - conf(B_b)|.
    ``probs`` are class probabilities [N, C] (softmax of the logits).
    """
    rb = reliability_bins(probs, labels, n_bins)
    nonempty = rb["count"] > 0
    if not nonempty.any():
        return {"ece": float("nan"), "mce": float("nan")}
    gap = np.abs(rb["acc"][nonempty] - rb["conf"][nonempty])
    weight = rb["count"][nonempty] / rb["count"].sum()
    return {"ece": float(100.0 * np.sum(weight * gap)), "mce": float(100.0 * gap.max())}


def pdc(preds: Any, labels: Any, class_counts: Any, eps: float = 1e-6) -> float:
    """Prediction distribution consistency (Xu et al., arXiv 2302.14284; methods.md §1.6); lower is better.

    PDC = KL(p_test ‖ q_pred) / KL(p_test ‖ p_train), with p_test the test label histogram, q_pred the
    histogram of the predicted labels and p_train = n_c / N the training prior, all normalised to sum 1;
    KL(p ‖ q) = Σ_c p_c (log(p_c + ε) − log(q_c + ε)) with ε = 1e-6 (the LiVT evaluation code's
    smoothing, which keeps empty predicted classes finite). 0: the predictions follow the test
    distribution; 1: as far from it as the training prior. NaN when the training prior equals the test
    distribution (denominator 0). Open-set samples (label < 0) are ignored. ``preds`` may be [N, C] logits.
    """
    counts = _np(class_counts).astype(np.float64).reshape(-1)
    num_classes = counts.size
    preds, labels = _closed(_preds(preds), labels)
    if not labels.size:
        return float("nan")
    p_test = np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.float64)
    q_pred = np.bincount(preds[(preds >= 0) & (preds < num_classes)], minlength=num_classes)[:num_classes]
    p_test, q_pred, p_train = p_test / p_test.sum(), q_pred / max(q_pred.sum(), 1), counts / counts.sum()

    def kl(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.sum(p * (np.log(p + eps) - np.log(q + eps))))

    denominator = kl(p_test, p_train)
    if abs(denominator) < 1e-12:
        return float("nan")
    return kl(p_test, q_pred) / denominator


def macro_f1(preds: Any, labels: Any, num_classes: int) -> float:
    """Macro F1 in %: mean over classes with >= 1 test sample of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c).

    Equals sklearn ``f1_score(y, yhat, average="macro", labels=<classes present in y>)`` with
    zero_division=0. ``preds`` may be [N, C] logits.
    """
    preds, labels = _closed(_preds(preds), labels)
    tp = np.bincount(labels[preds == labels], minlength=num_classes)[:num_classes]
    n_true = np.bincount(labels, minlength=num_classes)[:num_classes]
    n_pred = np.bincount(preds[(preds >= 0) & (preds < num_classes)], minlength=num_classes)[:num_classes]
    present = n_true > 0
    if not present.any():
        return float("nan")
    f1 = 2.0 * tp[present] / (n_true[present] + n_pred[present])  # 2TP+FP+FN = n_true + n_pred
    return float(100.0 * f1.mean())


def worst_class(per_class: Any) -> float:
    """min_c acc_c over classes with test samples (in %)."""
    acc = _np(per_class).astype(np.float64)
    acc = acc[~np.isnan(acc)]
    return float(acc.min()) if acc.size else float("nan")


def _mean_of_positive(per_class: Any, mean) -> float:
    """``mean`` of the per-class accuracies with test samples; NaN if none, 0 if any class is at 0."""
    acc = _np(per_class).astype(np.float64)
    acc = acc[~np.isnan(acc)]
    if not acc.size:
        return float("nan")
    if np.any(acc <= 0):
        return 0.0
    return float(mean(acc))


def harmonic_mean(per_class: Any) -> float:
    """H = K / sum_c (1 / acc_c) over the K classes with test samples, in %; 0 if any acc_c = 0."""
    return _mean_of_positive(per_class, lambda a: a.size / np.sum(1.0 / a))


def geometric_mean(per_class: Any) -> float:
    """G = (prod_c acc_c)^(1/K) = exp(mean_c log acc_c) over classes with test samples, in %; 0 if any acc_c = 0."""
    return _mean_of_positive(per_class, lambda a: np.exp(np.mean(np.log(a))))


def evaluate(logits: Any, labels: Any, class_counts: Any, *, many: int = 100, few: int = 20,
             n_bins: int = 15) -> dict:
    """Every closed-set metric of the protocol for logits [N, C] and labels [N] (methods.md §1.1-1.6).

    Returns floats in % (NaN for an empty group): top1, mean_per_class, many, medium, few, ece, mce,
    pdc (a ratio, not %),
    macro_f1, worst_class, hmean, gmean; per_class (list, NaN allowed), shot_groups (index lists),
    group_sizes (classes per group), shot_rule (thresholds used), num_classes, num_samples.
    Calibration uses softmax(logits).
    """
    z = _np(logits)
    y = _np(labels).astype(np.int64).reshape(-1)
    counts = _np(class_counts).reshape(-1)
    num_classes = int(counts.size)
    if z.ndim != 2 or z.shape[1] != num_classes:
        raise ValueError(f"logits must be [N, {num_classes}] (one column per class), got {z.shape}")
    preds = z.argmax(axis=1)
    acc = per_class_accuracy(preds, y, num_classes)
    groups = shot_groups(counts, many=many, few=few)
    out: dict[str, Any] = {"top1": top1(preds, y), "mean_per_class": _nanmean(acc)}
    out.update(group_accuracy(acc, groups))
    out.update(calibration(softmax(z), y, n_bins=n_bins))
    out["pdc"] = pdc(preds, y, counts)  # prediction distribution consistency (methods.md §1.6), lower is better
    out.update({
        "macro_f1": macro_f1(preds, y, num_classes),
        "worst_class": worst_class(acc),
        "hmean": harmonic_mean(acc),
        "gmean": geometric_mean(acc),
        "num_classes": num_classes,
        "num_samples": int((y >= 0).sum()),
        "per_class": [float(a) for a in acc],
        "shot_groups": {g: [int(i) for i in idx] for g, idx in groups.items()},
        "group_sizes": {g: int(idx.size) for g, idx in groups.items()},
        "shot_rule": shot_rule(many, few),
    })
    return out


# ----------------------------------------------------------------------------------------------
# moved: open-set (ltr_core.metrics_open) and multi-label (ltr_core.metrics_multilabel) metrics; the
# names other modules, tests and notebooks use from here still work

_MOVED = {
    **dict.fromkeys((
        "OPEN_THETA", "OPEN_THETAS", "F_VARIANTS", "max_softmax", "open_set_predictions", "_check_open_inputs",
        "_f_from_counts", "open_set_counts", "open_set_f_measure", "open_set_sweep", "open_set_metrics",
    ), "metrics_open"),
    **dict.fromkeys((
        "ML_GROUPS", "multilabel_groups", "average_precision", "per_class_ap", "sigmoid", "precision_at_1",
        "top1_calibration", "_ap_summary", "multilabel_evaluate",
    ), "metrics_multilabel"),
}


def __getattr__(name: str) -> Any:  # PEP 562: lazy, so the moved modules can import this one
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
