"""The evaluation protocol of a run: metrics of a set of logits, the open-set F-measure, what a results
writer takes from them.

An *evaluator* turns (logits, labels) into the metrics dict of the protocol and knows how its evaluation
lands in the run directory (logits.npz, per_class.csv, the per-class fields of results.json):
:class:`SingleLabel` (top-1, per-class accuracy, many/medium/few, ECE, ... :func:`ltr_core.metrics.evaluate`)
and :class:`MultiLabel` (per-class AP, mAP total/head/medium/tail, :func:`ltr_core.metrics.multilabel_evaluate`).
:func:`ltr_core.study.run_family` uses one of them for every family.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .config import RunConfig
from .data import LTData
from .results import RunDir, atomic_write_bytes

LOG_KEYS = ("top1", "mean_per_class", "many", "medium", "few", "ece")  # logged per epoch (metrics.jsonl)
SUMMARY_KEYS = LOG_KEYS  # what an extra view (e.g. PEL's ``no_tte``) records of its metrics


@dataclass
class Evaluation:
    """Logits, labels and the metrics dict of one evaluation pass."""

    epoch: int
    logits: torch.Tensor
    labels: torch.Tensor
    metrics: dict


def shot_group_counts(data: LTData, cfg: RunConfig) -> np.ndarray:
    """The counts that define the shot groups: the training counts n_c, or with ``split_from_ir`` > 0
    the counts of the same profile at that IR (PEL/LIFT take CIFAR-100-LT groups from IR 100 for every IR)."""
    ir = cfg.data.split_from_ir
    if not ir:
        return data.class_counts
    from .data import DataError, lt_counts

    n_max = data.provenance.get("n_max")
    if not n_max:
        raise DataError(f"split_from_ir={ir} needs a dataset built from a long-tail profile (CIFAR-LT, digits-LT); "
                        f"{data.name} has fixed split lists: set split_from_ir to 0")
    profile = data.provenance.get("lt_profile", cfg.data.lt_profile)
    return np.asarray(lt_counts(int(n_max), data.num_classes, float(ir), profile), dtype=np.int64)


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, data: LTData, cfg: RunConfig) -> dict:
    """The protocol's metrics (top-1, per-class, many/medium/few, ECE, ...) of a set of logits."""
    return metrics.evaluate(logits.numpy(), labels.numpy(), shot_group_counts(data, cfg),
                            many=cfg.data.shot_many, few=cfg.data.shot_few)


def scalars(m: dict, keys=LOG_KEYS) -> dict[str, float]:
    """``keys`` of a metrics dict as floats (NaN where missing: an empty shot group)."""
    return {k: (float(m[k]) if m.get(k) is not None else float("nan")) for k in keys}


def summary(m: dict, keys=SUMMARY_KEYS) -> dict:
    """``keys`` of a metrics dict as they are (what an extra view records)."""
    return {k: m.get(k) for k in keys}


def add_open_set_metrics(cfg: RunConfig, data: LTData, ev: Evaluation, open_logits: torch.Tensor,
                         run_dir: RunDir | None = None) -> dict:
    """Add the open-set metrics (methods.md §1.5, :func:`ltr_core.metrics.open_set_metrics`: f_measure
    post- and pre-fix at theta = open_theta (0.1), open-set many/medium/few after thresholding, the theta sweep) of the
    evaluated known samples ``ev`` plus ``open_logits`` to ``ev.metrics`` (closed-set numbers untouched).

    :func:`ltr_core.study.run_family` calls it for every family when ``data.open`` exists; with
    ``cfg.run.save_logits`` the open logits go to ``<run_dir>/logits_open.npz``.
    """
    m = metrics.open_set_metrics(ev.logits.numpy(), ev.labels.numpy(), open_logits.numpy(),
                                 shot_group_counts(data, cfg), theta=cfg.data.open_theta, many=cfg.data.shot_many,
                                 few=cfg.data.shot_few)
    m["open_known_split"] = cfg.data.eval_split
    ev.metrics.update(m)
    if run_dir is not None and cfg.run.save_logits:
        buf = io.BytesIO()
        np.savez(buf, logits=open_logits.numpy().astype(np.float32), labels=np.full(len(open_logits), -1, np.int64),
                 split=np.array("open"))
        atomic_write_bytes(Path(run_dir.path) / "logits_open.npz", buf.getvalue())
    return m


class SingleLabel:
    """The single-label protocol: metrics, logged scalars, logits.npz, per_class.csv (accuracy) and the
    per-class fields of results.json."""

    task: str | None = None  # results.json "task" (absent for single-label runs)
    value_name = "acc"  # the per_class.csv column
    extra_per_class: tuple[str, ...] = ()  # per-class lists besides "per_class" (kept out of "metrics")

    def __init__(self, cfg: RunConfig, data: LTData) -> None:
        self.cfg, self.data = cfg, data

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        return evaluate_logits(logits, labels, self.data, self.cfg)

    def scalars(self, m: dict) -> dict[str, float]:
        return scalars(m)

    def class_counts(self) -> np.ndarray:
        """The counts results.json and per_class.csv report per class (they define the shot groups)."""
        return self.data.class_counts

    def eval_counts(self, labels: torch.Tensor) -> np.ndarray:
        y = labels.numpy()
        return np.bincount(y[y >= 0], minlength=self.data.num_classes)

    def save_logits(self, run_dir: RunDir, ev: Evaluation) -> None:
        run_dir.save_logits(ev.logits.numpy(), ev.labels.numpy(), self.cfg.data.eval_split)

    def more_fields(self) -> dict:
        return {}

    def write(self, run_dir: RunDir, ev: Evaluation) -> dict:
        """logits.npz (with ``save_logits``) and per_class.csv; returns the metrics and per-class fields of
        results.json."""
        if self.cfg.run.save_logits:
            self.save_logits(run_dir, ev)
        m, counts = ev.metrics, self.class_counts()
        run_dir.write_per_class(self.data.class_names, counts, self.eval_counts(ev.labels), m["per_class"],
                                m["shot_groups"], value_name=self.value_name)
        per_class = {k: m[k] for k in ("per_class", *self.extra_per_class, "shot_groups")}
        out = {"metrics": {k: v for k, v in m.items() if k not in per_class},
               "class_counts": [int(c) for c in counts], **self.more_fields(), **per_class}
        if self.task:
            out["task"] = self.task
        return out


class MultiLabel(SingleLabel):
    """Multi-label protocol (:func:`ltr_core.metrics.multilabel_evaluate`): per-class AP, ``map`` (sigmoid scores)
    and ``map_softmax``, head / medium / tail by the full training list's counts (``class_counts``;
    ``train_class_counts`` is what the model trained on); ``many``/``medium``/``few`` are the group mAPs,
    ``top1`` precision@1. logits.npz holds multi-hot ``targets`` instead of labels."""

    task = "multilabel"
    value_name = "ap"
    extra_per_class = ("per_class_softmax",)

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict:
        return metrics.multilabel_evaluate(logits.numpy(), targets.numpy(), self.class_counts(),
                                           head=self.cfg.data.shot_many, tail=self.cfg.data.shot_few)

    def class_counts(self) -> np.ndarray:
        from .data.multilabel import group_counts

        return group_counts(self.data)

    def eval_counts(self, targets: torch.Tensor) -> np.ndarray:
        return targets.numpy().astype(np.int64).sum(axis=0)

    def save_logits(self, run_dir: RunDir, ev: Evaluation) -> None:
        """logits.npz with ``logits`` float32 [N, C], ``targets`` uint8 [N, C] (multi-hot) and ``split``."""
        buf = io.BytesIO()
        np.savez(buf, logits=ev.logits.numpy().astype(np.float32), targets=ev.labels.numpy().astype(np.uint8),
                 split=np.array(self.cfg.data.eval_split))
        atomic_write_bytes(run_dir.logits_path, buf.getvalue())

    def more_fields(self) -> dict:
        return {"train_class_counts": [int(c) for c in self.data.class_counts]}
