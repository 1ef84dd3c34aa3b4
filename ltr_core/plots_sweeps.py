"""Line plots of a metric against a knob or the training epoch (conventions.md §7): the open-set threshold
sweep (OLTR), VL-LTR's alpha sweep, the post-hoc tau sweep (tau-norm, post-hoc LA) and the test accuracy
at every evaluated epoch. Styles, widths and group colours are :mod:`ltr_core.plots`' (which re-exports
these functions); each returns the matplotlib Figure.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.figure import Figure

from .plots import BOUNDARY_STYLE, COLUMN_WIDTH, GROUP_COLORS, GROUP_LABELS, PAGE_WIDTH, _new_ax, _palette


def plot_open_set_sweep(sweeps: Mapping[str, Mapping[str, Sequence[float]]], theta: float | None = 0.1) -> Figure:
    """Open-set threshold sweep (methods.md §1.5): left, the F-measure against the max-softmax threshold
    theta, post-fix (solid) and pre-fix (dashed); right, the closed-set accuracy under rejection
    (rejected known samples count as wrong) and the % of open samples rejected (dotted), one colour per label.

    Each value of ``sweeps`` is a ``metrics.open_set_sweep`` dict (theta, f_measure, f_measure_pre_fix,
    closed_accuracy, open_rejection), e.g. ``results["metrics"]["f_measure_sweep"]``. A vertical
    dash-dot line marks ``theta`` (the protocol's 0.1; None: no line).
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 2.4), sharex=True)
    colors = _palette(max(len(sweeps), 1))
    for color, (label, sw) in zip(colors, sweeps.items()):
        t = np.asarray(sw["theta"], dtype=float)
        for ax, key, style, text in ((left, "f_measure", "-", " (post-fix)"),
                                     (left, "f_measure_pre_fix", "--", " (pre-fix)"),
                                     (right, "closed_accuracy", "-", ": known accuracy"),
                                     (right, "open_rejection", ":", ": open rejected")):
            ax.plot(t, np.asarray(sw[key], dtype=float), color=color, linestyle=style, label=label + text)
    for ax in (left, right):
        if theta is not None:
            ax.axvline(theta, **BOUNDARY_STYLE)
        ax.set_xlabel(r"threshold $\theta$ on max softmax")
        ax.legend(fontsize="x-small")
    left.set_ylabel("open-set F-measure (%)")
    right.set_ylabel("%")
    return fig


def plot_alpha_sweep(sweep: Sequence[Mapping[str, Any]], alpha: float | None = None, *, ax=None,
                     title: str = "") -> Figure:
    """Accuracy of a two-branch mixture p = α p_visual + (1 − α) p_linguistic against α (VL-LTR's LGR head).

    ``sweep``: rows {alpha, top1, many, medium, few} in %; one line per shot group (group colours) and
    All (black); a dashed vertical line marks the α the run uses. α = 0 is the linguistic branch alone,
    α = 1 the visual branch alone. Empty groups (NaN) are not drawn.
    """
    df = pd.DataFrame(list(sweep)).sort_values("alpha")
    fig, ax = _new_ax(ax, COLUMN_WIDTH, 2.4)
    for key, group in (("many", "many"), ("medium", "medium"), ("few", "few"), ("top1", "all")):
        if key in df and df[key].notna().any():
            ax.plot(df["alpha"], df[key], color=GROUP_COLORS[group], label=GROUP_LABELS[key],
                    linewidth=1.6 if key == "top1" else 1.0, marker="o", markersize=2)
    if alpha is not None:
        ax.axvline(alpha, color="0.3", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(r"$\alpha$ (0: linguistic branch, 1: visual branch)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize="small")
    ax.legend(fontsize="small", ncols=2)
    return fig


POSTHOC_KNOBS: dict[str, str] = {
    "tau_norm": r"$\tau$ of $\tau$-norm: $z_c = w_c^\top f / \|w_c\|^\tau$",
    "posthoc_la": r"$\tau$ of post-hoc logit adjustment: $z - \tau \log \pi$",
}


def plot_posthoc_sweep(sweeps: Mapping[str, Any] | Sequence[Mapping[str, Any]], split: str = "test", *,
                       chosen: float | None = None, knob: str = "", label: str = "", ax=None,
                       title: str = "") -> Figure:
    """Many / Medium / Few / All accuracy as a post-hoc knob τ varies (τ-norm, post-hoc logit adjustment;
    the classifier-balancing ``tau_norm`` figure, conventions.md §7).

    ``sweeps``: one ``tau_sweep`` record of a decouple run ({"tau": [...], <split>: {"many": [...], ...}})
    or a list of them (seeds: the line is the mean, the band ± the std). Lines in the group colours
    (Many blue, Medium green, Few orange, All black); empty groups (None/NaN) are not drawn; a dashed
    vertical line marks the ``chosen`` τ (``label`` says how it was chosen, e.g. "oracle"). ``knob`` is
    ``tau_norm`` or ``posthoc_la`` (x-axis label) or any text.
    """
    runs = [sweeps] if isinstance(sweeps, Mapping) else list(sweeps)
    if not runs:
        raise ValueError("plot_posthoc_sweep needs at least one sweep record")
    taus = np.asarray(runs[0]["tau"], dtype=np.float64)
    for r in runs:
        if split not in r:
            raise ValueError(f"sweep has no split {split!r}; it holds {[k for k in r if k != 'tau']}")
        if not np.allclose(np.asarray(r["tau"], dtype=np.float64), taus):
            raise ValueError("plot_posthoc_sweep: the sweeps use different tau grids")
    fig, ax = _new_ax(ax, COLUMN_WIDTH, 2.4)
    for key, group in (("many", "many"), ("medium", "medium"), ("few", "few"), ("top1", "all")):
        values = np.asarray([[np.nan if v is None else v for v in r[split].get(key, [])] or [np.nan] * len(taus)
                             for r in runs], dtype=np.float64)
        if not np.isfinite(values).any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(values, axis=0)
            std = np.nanstd(values, axis=0, ddof=1) if len(runs) > 1 else None
        ax.plot(taus, mean, color=GROUP_COLORS[group], label=GROUP_LABELS[key],
                linewidth=1.6 if key == "top1" else 1.0, marker="o", markersize=2)
        if std is not None:
            ax.fill_between(taus, mean - std, mean + std, color=GROUP_COLORS[group], alpha=0.15, linewidth=0)
    if chosen is not None:
        ax.axvline(chosen, color="0.3", linestyle="--", linewidth=0.8)
        text = rf"$\tau$ = {chosen:g}" + (f" ({label})" if label else "")
        ax.text(chosen, 0.02, " " + text, transform=transforms.blended_transform_factory(ax.transData, ax.transAxes),
                ha="left", va="bottom", fontsize="x-small", color="0.3")
    ax.set_xlim(taus.min(), taus.max())
    ax.set_xlabel(POSTHOC_KNOBS.get(knob, knob or r"$\tau$"))
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(title, fontsize="small")
    ax.legend(fontsize="small", ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    return fig


CURVE_METRICS = ("top1", "many", "medium", "few")


def plot_eval_curves(curves: Mapping[str, Mapping[str, Sequence[Any]]],
                     metrics: Sequence[str] = ("top1", "medium", "few")) -> Figure:
    """Test accuracy at every evaluated epoch of each stage-1 run: one panel per metric of ``metrics``
    that has a value (All, Medium, Few: a group with no class, e.g. Few on CIFAR-10-LT IR 100, is left
    out), one line per label. Shows what a last-epoch number hides: the lr steps, the DRW switch, and how
    far the last epoch sits from the best evaluated one.

    ``curves``: {label: {"epoch": [...], <metric>: [...] (%, None for an empty group)}}, e.g. the means
    over seeds of :func:`ltr_core.figure_data.eval_curves`.
    """
    if not curves:
        raise ValueError("plot_eval_curves needs at least one curve")

    def values(curve, key):
        return np.asarray([np.nan if v is None else v for v in curve.get(key, [])], dtype=np.float64)

    shown = [m for m in metrics if any(np.isfinite(values(c, m)).any() for c in curves.values())]
    fig, axes = plt.subplots(1, len(shown), figsize=(PAGE_WIDTH if len(shown) > 1 else COLUMN_WIDTH, 2.4),
                             squeeze=False, sharex=True, layout="constrained")
    colors = _palette(len(curves))
    for ax, metric in zip(axes[0], shown):
        for color, (label, curve) in zip(colors, curves.items()):
            ax.plot(np.asarray(curve["epoch"]) + 1, values(curve, metric), color=color, label=label,
                    linewidth=1.0, marker="o", markersize=2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test {GROUP_LABELS.get(metric, metric)} (%)")
    axes[0][0].legend(fontsize="x-small", loc="lower right")
    return fig
