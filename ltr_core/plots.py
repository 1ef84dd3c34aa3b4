"""Figures of the study (conventions.md §7): class profile, sample grid, many/medium/few bars, per-class curves.

Every function returns the matplotlib Figure; :func:`save` writes it as PNG and PDF. Call
:func:`set_style` once first (seaborn "paper" theme, TrueType fonts in PDFs, no LaTeX). Figures are
3.25 in (one column) or 6.75 in (two columns) wide. Shot-group boundaries follow the project rule of
methods.md §1.1 (many n > ``many``, medium ``few`` <= n <= ``many``, few n < ``few``) and are drawn as
dash-dot vertical lines between classes sorted by training count, descending.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.figure import Figure

from .metrics import shot_groups
from .results import atomic_write_bytes

COLUMN_WIDTH = 3.25  # inches, one column
PAGE_WIDTH = 6.75  # inches, two columns
# Many blue, Medium green, Few orange, All black (classifier-balancing figures), colorblind-palette hues.
GROUP_COLORS: dict[str, str] = {"many": "#0173B2", "medium": "#029E73", "few": "#DE8F05", "all": "#000000"}
GROUP_LABELS: dict[str, str] = {"many": "Many", "medium": "Medium", "few": "Few", "top1": "All"}
# multi-label suites (mAP by head / medium / tail, report metrics map*)
GROUP_LABELS.update({"map_head": "Head", "map_medium": "Medium", "map_tail": "Tail", "map": "mAP"})
GROUP_COLORS.update({"map_head": GROUP_COLORS["many"], "map_medium": GROUP_COLORS["medium"],
                     "map_tail": GROUP_COLORS["few"], "map": GROUP_COLORS["all"]})
BOUNDARY_STYLE = dict(color="0.3", linestyle="-.", linewidth=0.8)


def _palette(n: int) -> list:
    """seaborn's colour-blind palette with ``n`` colours."""
    import seaborn as sns

    return sns.color_palette("colorblind", n)


def set_style() -> None:
    """seaborn paper/whitegrid/colorblind theme; TrueType (Type 42) fonts; tight 300-dpi saves; no usetex."""
    import seaborn as sns  # imported on first use (it pulls in scipy.stats, ~1 s per notebook kernel)

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
    matplotlib.rcParams.update({
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "savefig.bbox": "tight",
        "savefig.dpi": 300,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "text.usetex": False,
    })


def render(fig: Figure, name: str) -> dict[str, bytes]:
    """``{"<name>.png": bytes, "<name>.pdf": bytes}`` of ``fig``, in memory (a report writes them later); no
    creation date or software stamp is embedded, so an unchanged figure gives byte-identical files."""
    stamps = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}
    out = {}
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=stamps[fmt])
        out[f"{name}.{fmt}"] = buf.getvalue()
    return out


def save(fig: Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` and ``.pdf`` (:func:`render`, each atomically; the folder is created)."""
    return [atomic_write_bytes(Path(out_dir) / fname, data) for fname, data in render(fig, name).items()]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _new_ax(ax, width: float, height: float):
    return (ax.figure, ax) if ax is not None else plt.subplots(figsize=(width, height))


def _draw_boundaries(ax, sorted_counts: np.ndarray, many: int, few: int) -> None:
    """Dash-dot lines between groups of classes sorted by count (descending) and Many/Medium/Few labels.

    A boundary is drawn only where classes lie on both sides; a group's label only when it has classes.
    """
    n = len(sorted_counts)
    sizes = {g: len(idx) for g, idx in shot_groups(sorted_counts, many=many, few=few).items()}
    starts = {"many": 0, "medium": sizes["many"], "few": sizes["many"] + sizes["medium"]}
    for x in sorted({sizes["many"], n - sizes["few"]}):
        if 0 < x < n:
            ax.axvline(x - 0.5, **BOUNDARY_STYLE)
    transform = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for group, size in sizes.items():
        if size:
            center = starts[group] + (size - 1) / 2
            ax.text(center, 0.98, GROUP_LABELS[group], transform=transform, ha="center", va="top",
                    fontsize="small", color=GROUP_COLORS[group])


def plot_class_profile(class_counts: Any, many: int = 100, few: int = 20,
                       class_names: Sequence[str] | None = None, ax=None) -> Figure:
    """Training images per class, sorted descending, bars coloured by shot group; log-y when max/min > 50."""
    counts = _np(class_counts).astype(np.int64).reshape(-1)
    order = np.argsort(-counts, kind="stable")
    sorted_counts = counts[order]
    fig, ax = _new_ax(ax, COLUMN_WIDTH, 2.2)
    group_of = np.empty(len(counts), dtype=object)
    for g, idx in shot_groups(sorted_counts, many=many, few=few).items():
        group_of[idx] = g
    x = np.arange(len(counts))
    ax.bar(x, sorted_counts, width=1.0 if len(counts) > 50 else 0.8,
           color=[GROUP_COLORS[g] for g in group_of], linewidth=0)
    positive = sorted_counts[sorted_counts > 0]
    if positive.size and positive.max() / positive.min() > 50:
        ax.set_yscale("log")
    _draw_boundaries(ax, sorted_counts, many, few)
    if class_names is not None and len(counts) <= 30:
        ax.set_xticks(x, [str(class_names[i]) for i in order], rotation=90)
        ax.set_xlabel("class (sorted by training count)")
    else:
        ax.set_xlabel("class index (sorted by training count)")
    ax.set_ylabel("training images")
    ax.set_xlim(-0.5, len(counts) - 0.5)
    ax.grid(axis="x", visible=False)
    return fig


def _to_hwc(img: np.ndarray) -> np.ndarray:
    """[C, H, W] uint8/float -> [H, W, C] (or [H, W] for one channel) for imshow."""
    img = np.transpose(img, (1, 2, 0)) if img.ndim == 3 else img
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return img


def plot_sample_grid(images: Any, labels: Any, class_names: Sequence[str] | None = None, per_class: int = 8,
                     max_classes: int = 10, class_counts: Any = None) -> Figure:
    """A grid of ``per_class`` images per row, one row per class (the first ``max_classes`` classes present,
    in label order), each row titled with its class name and, when ``class_counts`` is given, its train count.

    ``images``: [N, C, H, W] uint8 (torch or numpy), C = 1 or 3; floats in [0, 1] work too.
    """
    imgs = _np(images)
    y = _np(labels).astype(np.int64).reshape(-1)
    counts = None if class_counts is None else _np(class_counts).reshape(-1)
    classes = [c for c in np.unique(y) if c >= 0][:max_classes]
    cell = PAGE_WIDTH / (per_class + 1.5)
    fig, axes = plt.subplots(max(len(classes), 1), per_class, squeeze=False,
                             figsize=(PAGE_WIDTH, cell * max(len(classes), 1) + 0.2))
    for ax in axes.ravel():
        ax.set_axis_off()
    for row, c in enumerate(classes):
        idx = np.flatnonzero(y == c)[:per_class]
        for col, i in enumerate(idx):
            img = _to_hwc(imgs[i])
            axes[row, col].imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        name = str(class_names[c]) if class_names is not None else f"class {c}"
        title = f"{name}\n(n={int(counts[c])})" if counts is not None else name
        axes[row, 0].text(-0.08, 0.5, title, transform=axes[row, 0].transAxes, ha="right", va="center",
                          fontsize="small")
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def _bar_labels(df: pd.DataFrame) -> pd.Series:
    """"method" when every run has the same name, else "method-name"."""
    names = df["name"].astype(str) if "name" in df.columns else pd.Series("", index=df.index)
    if names.nunique() <= 1:
        return df["method"].astype(str)
    return df["method"].astype(str) + "-" + names


def plot_shot_bars(df: pd.DataFrame, metrics: Sequence[str] = ("many", "medium", "few", "top1"),
                   ax=None) -> Figure:
    """Grouped bars: one group per metric (Many, Medium, Few, All = top1), one bar per method(-name);
    bar = mean over seeds, error bar = std over seeds (ddof=1). NaN groups (empty) are simply absent.

    ``df`` comes from :func:`ltr_core.collect.collect`, filtered to one dataset.
    """
    if "dataset" in df.columns and df["dataset"].nunique() > 1:
        raise ValueError(f"plot_shot_bars needs one dataset, got {sorted(df['dataset'].unique())}; filter df first")
    metrics = [m for m in metrics if m in df.columns]
    labels = _bar_labels(df)
    order = list(dict.fromkeys(labels))
    colors = dict(zip(order, _palette(len(order))))
    fig, ax = _new_ax(ax, COLUMN_WIDTH if len(order) <= 4 else PAGE_WIDTH, 2.2)
    width = 0.8 / max(len(order), 1)
    for j, label in enumerate(order):
        rows = df[labels == label]
        vals = rows[list(metrics)].apply(pd.to_numeric, errors="coerce")
        mean, std = vals.mean(), vals.std(ddof=1)
        x = np.arange(len(metrics)) - 0.4 + width * (j + 0.5)
        keep = mean.notna().to_numpy()
        ax.bar(x[keep], mean.to_numpy()[keep], width=width, color=colors[label], label=label,
               yerr=np.nan_to_num(std.to_numpy()[keep]), capsize=2, error_kw={"linewidth": 0.8})
    ax.set_xticks(np.arange(len(metrics)), [GROUP_LABELS.get(m, m) for m in metrics])
    for tick, m in zip(ax.get_xticklabels(), metrics):
        tick.set_color(GROUP_COLORS.get("all" if m == "top1" else m, "black"))
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="x", visible=False)
    ax.legend(fontsize="small", ncols=min(len(order), 4), loc="upper center", bbox_to_anchor=(0.5, -0.15))
    return fig


def plot_reconstructions(original: Any, masked: Any, reconstruction: Any, pasted: Any | None = None,
                         mask_ratio: float | None = None, max_images: int = 8) -> Figure:
    """Masked-autoencoder reconstructions (He et al., CVPR 2022, Fig. 2 layout): one column per image,
    rows original / masked input (masked patches grey) / reconstruction / reconstruction with the
    visible patches pasted back. Images are [N, H, W, C] (or [N, C, H, W]) floats in [0, 1].
    """
    rows = [("original", original), (f"masked {100 * mask_ratio:.0f} %" if mask_ratio is not None else "masked", masked),
            ("reconstruction", reconstruction)]
    if pasted is not None:
        rows.append(("reconstruction\n+ visible", pasted))
    arrays = []
    for _, imgs in rows:
        a = _np(imgs).astype(np.float64)[:max_images]
        if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a.transpose(0, 2, 3, 1)
        arrays.append(np.clip(a, 0.0, 1.0))
    n = arrays[0].shape[0]
    cell = PAGE_WIDTH / (max(n, 1) + 1.2)
    fig, axes = plt.subplots(len(rows), max(n, 1), squeeze=False, figsize=(PAGE_WIDTH, cell * len(rows) + 0.1))
    for r, ((label, _), a) in enumerate(zip(rows, arrays)):
        for c in range(axes.shape[1]):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < a.shape[0]:
                img = a[c][..., 0] if a.shape[-1] == 1 else a[c]
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center",
                        fontsize="small")
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centered rolling mean (NaN ignored) for curves over thousands of classes."""
    return pd.Series(values).rolling(window, center=True, min_periods=1).mean().to_numpy()


def plot_per_class_vs_count(per_class_acc: Mapping[str, Any], class_counts: Any, many: int = 100, few: int = 20,
                            ax=None, window: int | None = None) -> Figure:
    """Per-class accuracy against classes sorted by training count (descending), one line per label.

    Each value of ``per_class_acc`` is [seeds, C] or [C] in %: the line is the mean over seeds, the band
    ± the std over seeds. The training-count curve is dotted on a secondary log axis; dash-dot lines mark
    the Many/Medium/Few boundaries. With C > 1000 classes, curves are rolling means over ``window``
    classes (default C // 100).
    """
    counts = _np(class_counts).reshape(-1)
    n = len(counts)
    order = np.argsort(-counts, kind="stable")
    smooth = n > 1000
    window = window or max(n // 100, 1)
    fig, ax = _new_ax(ax, PAGE_WIDTH if n > 100 else COLUMN_WIDTH, 2.4)
    x = np.arange(n)
    colors = _palette(len(per_class_acc))
    for color, (label, acc) in zip(colors, per_class_acc.items()):
        a = np.atleast_2d(_np(acc).astype(np.float64))[:, order]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # classes without test samples are NaN
            mean = np.nanmean(a, axis=0)
            std = np.nanstd(a, axis=0, ddof=1) if a.shape[0] > 1 else None
        if smooth:
            mean = _smooth(mean, window)
            std = None if std is None else _smooth(std, window)
        ax.plot(x, mean, color=color, label=label, linewidth=1.0, rasterized=smooth)
        if std is not None:
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0, rasterized=smooth)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("class index (sorted by training count)")
    ax.set_ylabel("per-class accuracy (%)" + (f", rolling mean ({window})" if smooth else ""))
    _draw_boundaries(ax, counts[order], many, few)
    twin = ax.twinx()
    twin.plot(x, counts[order], linestyle=":", color="0.4", linewidth=1.0, label="train count")
    twin.set_yscale("log")
    twin.set_ylabel("training images")
    twin.grid(False)
    twin.spines["right"].set_visible(True)
    ax.legend(fontsize="small", loc="lower left")
    return fig


# the line plots of a metric against a knob or the epoch live in plots_sweeps; re-exported here
from .plots_sweeps import (CURVE_METRICS, POSTHOC_KNOBS, plot_alpha_sweep, plot_eval_curves,  # noqa: E402,F401
                           plot_open_set_sweep, plot_posthoc_sweep)
