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
# open-set recognition (OLTR protocol, Liu et al., CVPR 2019; methods.md §1.5)

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


# ----------------------------------------------------------------------------------------------
# multi-label recognition (VOC-MLT, COCO-MLT, mosaic-MLT; methods.md §1.7)

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
