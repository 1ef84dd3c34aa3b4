"""Summary tables of collected runs (conventions.md §6): mean ± std over seeds as Markdown, LaTeX, CSV, HTML.

Columns Many | Medium | Few | All (see :data:`DISPLAY_NAMES`), best value per column in bold over
every row shown (lowest for :data:`LOWER_IS_BETTER`; ties all bold), "–" for an empty group, published
numbers below ours marked "(published)". The LaTeX comes from :mod:`ltr_core.latex` (escaped, fits
the text block); the render functions return text, so a report can compute every file before it
writes any.
"""

from __future__ import annotations

import html
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import latex
from .results import atomic_write_text

# Table headers (conventions.md §6: Many | Medium | Few | All).
DISPLAY_NAMES: dict[str, str] = {
    "many": "Many", "medium": "Medium", "few": "Few", "top1": "All",
    "mean_per_class": "Class mean", "ece": "ECE", "mce": "MCE", "macro_f1": "Macro-F1",
    "worst_class": "Worst", "hmean": "H-mean", "gmean": "G-mean", "f_measure": "F",
    "map": "mAP", "map_head": "Head", "map_medium": "Medium", "map_tail": "Tail",
    "map_softmax": "mAP (softmax)",
    "dataset": "Dataset", "method": "Method", "name": "Name", "n_seeds": "Seeds",
    "no_tte_top1": "All (no TTE)", "pdc": "PDC", "best_eval_top1": "Best test epoch",
}
LOWER_IS_BETTER = frozenset({"ece", "mce", "pdc"})
DASH = "–"  # printed for an empty group / missing number (never 0)


def format_mean_std(mean: float, std: float, n: int, decimals: int = 1) -> str:
    """"m ± s" with ``decimals`` decimals; only "m" for a single seed; "–" when there is no number."""
    if n == 0 or mean is None or not np.isfinite(mean):
        return DASH
    if n == 1 or std is None or not np.isfinite(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def summary_numeric(df: pd.DataFrame, by: Sequence[str] = ("dataset", "method", "name"),
                    metrics: Sequence[str] = ("many", "medium", "few", "top1")) -> pd.DataFrame:
    """Per group of ``by``: ``<metric>`` = mean over seeds, ``<metric>_std`` (ddof=1, NaN for one seed),
    ``<metric>_n`` (seeds with a finite value) and ``n_seeds`` (runs in the group). NaN values are ignored."""
    by, metrics = list(by), [m for m in metrics if m in df.columns]
    if "seed" in df.columns and df.duplicated([*by, "seed"]).any():
        warnings.warn("summary: some (group, seed) pairs appear more than once; std mixes duplicates",
                      stacklevel=2)
    rows = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce").astype(float)
            row[m] = v.mean()
            row[f"{m}_std"] = v.std(ddof=1)
            row[f"{m}_n"] = int(v.notna().sum())
        row["n_seeds"] = len(g)
        rows.append(row)
    cols = [*by, *metrics, *[f"{m}_std" for m in metrics], *[f"{m}_n" for m in metrics], "n_seeds"]
    return pd.DataFrame(rows, columns=cols)


def summary_table(df: pd.DataFrame, by: Sequence[str] = ("dataset", "method", "name"),
                  metrics: Sequence[str] = ("many", "medium", "few", "top1"), decimals: int = 1) -> pd.DataFrame:
    """The ``by`` columns, one "mean ± std" string per metric (std over seeds, ddof=1; a single seed
    prints the mean; no finite value prints "–") and ``n_seeds``. Same rows as :func:`summary_numeric`."""
    num = summary_numeric(df, by, metrics)
    metrics = [m for m in metrics if m in num.columns]
    out = num[list(by)].copy()
    for m in metrics:
        out[m] = [format_mean_std(a, s, n, decimals) for a, s, n in zip(num[m], num[f"{m}_std"], num[f"{m}_n"])]
    out["n_seeds"] = num["n_seeds"]
    return out


def _split_columns(summary_df: pd.DataFrame, numeric_df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(label columns, metric columns) of a summary table."""
    metrics = [c for c in summary_df.columns if c in numeric_df.columns and f"{c}_std" in numeric_df.columns]
    labels = [c for c in summary_df.columns if c not in metrics and c != "n_seeds"]
    return labels, metrics


def _best_mask(values: pd.DataFrame, metrics: Sequence[str], decimals: int) -> pd.DataFrame:
    """True where a cell equals its column's best value at the printed precision (ties all bold)."""
    mask = pd.DataFrame(False, index=values.index, columns=list(metrics))
    for m in metrics:
        v = pd.to_numeric(values[m], errors="coerce").round(decimals)
        if v.notna().any():
            best = v.min() if m.split("|")[-1] in LOWER_IS_BETTER else v.max()
            mask[m] = v == best
    return mask


def _varying(shown: pd.DataFrame, labels: list[str]) -> list[str]:
    varying = [c for c in labels if shown[c].astype(str).nunique() > 1]
    return varying or (["method"] if "method" in labels else labels[-1:])


def _table_frames(summary_df: pd.DataFrame, numeric_df: pd.DataFrame, published: pd.DataFrame | None,
                  decimals: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str], int]:
    """Display strings and numeric values of ours + published rows; label columns that vary; #ours."""
    labels, metrics = _split_columns(summary_df, numeric_df)
    shown = summary_df[labels + metrics].reset_index(drop=True).astype(object)
    values = numeric_df[labels + metrics].reset_index(drop=True)
    n_ours = len(shown)
    varying = _varying(shown, labels)
    if published is not None and len(published):
        pub = published.reset_index(drop=True).copy()
        for c in labels:
            if c not in pub.columns:
                pub[c] = ""
        # the published row's label goes where our rows show their identity (the last varying column)
        # (a row naming its own method in ``name`` keeps its source, e.g. the paper, in ``method``)
        source = "method" if "method" in pub.columns else varying[-1]
        label = pub[source].astype(str)
        if varying[-1] == "name" and "name" in pub.columns:
            named = pub["name"].fillna("").astype(str)
            label = named.where(named != "", label)
        pub[varying[-1]] = label + " (published)"
        pub_vals = pd.DataFrame({c: pub[c] for c in labels}
                                | {m: pd.to_numeric(pub[m], errors="coerce") if m in pub.columns
                                   else np.nan for m in metrics})
        pub_shown = pub_vals.astype(object).copy()
        for m in metrics:
            pub_shown[m] = [format_mean_std(v, np.nan, 1, decimals) for v in pub_vals[m]]
        shown = pd.concat([shown, pub_shown], ignore_index=True)
        values = pd.concat([values, pub_vals], ignore_index=True)
    return shown, values, varying, metrics, n_ours


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], bold: Sequence[Sequence[bool]], *,
               n_label: int, caption: str = "", groups: Sequence[tuple[str, int]] = (),
               rule_before: int | None = None) -> str:
    """An HTML ``<table>`` (escaped; bold cells ``<strong>``; published rows with class ``published``)."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<thead>")
    if groups:
        out.append("<tr>" + "".join(f'<th colspan="{span}">{html.escape(t)}</th>' for t, span in groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead><tbody>")
    for i, (row, marks) in enumerate(zip(rows, bold)):
        cls = ' class="published"' if rule_before is not None and i >= rule_before else ""
        cells = [(f'<td class="{"label" if j < n_label else "num"}">'
                  + (f"<strong>{html.escape(s)}</strong>" if b else html.escape(s)) + "</td>")
                 for j, (s, b) in enumerate(zip(row, marks))]
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def render_frames(shown: pd.DataFrame, values: pd.DataFrame, labels: list[str], metrics: list[str], n_ours: int,
                  seeds: list | None, caption: str, label: str, decimals: int = 1,
                  comment: Sequence[str] = ()) -> dict[str, str]:
    """{"md", "tex", "html"} of a summary from display strings + numbers (ours first, then published)."""
    bold = _best_mask(values, metrics, decimals)
    md = shown[labels + metrics].copy()
    for m in metrics:
        md[m] = [f"**{s}**" if b else s for s, b in zip(md[m], bold[m])]
    if seeds is not None:
        md["n_seeds"] = list(seeds) + [""] * (len(md) - n_ours)
    md_text = md.rename(columns=DISPLAY_NAMES).to_markdown(index=False)
    columns = [DISPLAY_NAMES.get(c, c) for c in labels + metrics]
    rows = [["" if pd.isna(v) else str(v) for v in r] for r in shown[labels + metrics].itertuples(index=False)]
    marks = [[False] * len(labels) + list(b) for b in bold[metrics].itertuples(index=False)]
    kw = dict(n_label=len(labels), rule_before=n_ours if n_ours < len(rows) else None)
    return {"md": f"{caption}\n\n{md_text}\n",
            "tex": latex.table(columns, rows, marks, caption=caption, label=label, comment=comment, **kw),
            "html": html_table(columns, rows, marks, **kw)}


def render_tables(summary_df: pd.DataFrame, numeric_df: pd.DataFrame, name: str, caption: str, label: str,
                  published: pd.DataFrame | None = None, decimals: int = 1,
                  comment: Sequence[str] = ()) -> dict[str, str]:
    """``{"<name>.md", "<name>.tex", "<name>.csv": text, "html": an HTML table}`` of a summary.

    Label columns that are constant over our rows are left out of the .md/.tex/HTML (state them in
    the caption). The CSV holds the numbers: means, stds, seed counts, and published rows with
    ``source = "published"``; :func:`frames_from_csv` reads it back.
    """
    shown, values, labels, metrics, n_ours = _table_frames(summary_df, numeric_df, published, decimals)
    seeds = list(summary_df["n_seeds"]) if "n_seeds" in summary_df.columns else None
    out = render_frames(shown, values, labels, metrics, n_ours, seeds, caption, label, decimals, comment)
    csv_df = numeric_df.assign(source="ours")
    if n_ours < len(values):
        all_labels, _ = _split_columns(summary_df, numeric_df)
        pub_rows = values.iloc[n_ours:].assign(source="published")
        csv_df = pd.concat([csv_df, pub_rows[[c for c in pub_rows.columns if c in csv_df.columns
                                              or c in all_labels]]], ignore_index=True)
    for col in [c for c in csv_df.columns if c.endswith("_n") or c == "n_seeds"]:
        csv_df[col] = csv_df[col].astype("Int64")
    return {f"{name}.md": out["md"], f"{name}.tex": out["tex"], f"{name}.csv": csv_df.to_csv(index=False),
            "html": out["html"]}


def write_tables(summary_df: pd.DataFrame, numeric_df: pd.DataFrame, out_dir: str | os.PathLike, name: str,
                 caption: str, label: str, published: pd.DataFrame | None = None,
                 decimals: int = 1) -> dict[str, Path]:
    """:func:`render_tables` written to ``<out_dir>/<name>.md|.tex|.csv`` (each atomically);
    returns {"md", "tex", "csv": path}. ``published`` (label columns such as ``method`` plus numeric
    metric columns) adds rows marked "(published)" below ours, after a ``\\midrule``."""
    texts = render_tables(summary_df, numeric_df, name, caption, label, published, decimals)
    return {ext: atomic_write_text(Path(out_dir) / f"{name}.{ext}", texts[f"{name}.{ext}"])
            for ext in ("md", "tex", "csv")}


def frames_from_csv(csv_df: pd.DataFrame, decimals: int = 1):
    """(shown, values, labels, metrics, n_ours, seeds) of a summary from its CSV (:func:`render_tables`),
    for re-rendering committed tables without the runs. Our rows (``source == "ours"``) come first."""
    metrics = [c for c in csv_df.columns if f"{c}_std" in csv_df.columns and f"{c}_n" in csv_df.columns]
    labels = [c for c in csv_df.columns if c in ("dataset", "method", "name")]
    ours = csv_df[csv_df["source"] == "ours"].reset_index(drop=True)
    pub = csv_df[csv_df["source"] != "ours"].reset_index(drop=True)
    shown = ours[labels].astype(object).copy()
    for m in metrics:
        shown[m] = [format_mean_std(a, s, int(n), decimals) for a, s, n in zip(ours[m], ours[f"{m}_std"],
                                                                                ours[f"{m}_n"].fillna(0))]
    varying = _varying(shown, labels)
    pub_shown = pub[labels].fillna("").astype(object).copy()
    for i, row in pub_shown.iterrows():  # the "(published)" label goes where our rows show their identity
        tagged = [c for c in labels if str(row[c]).endswith("(published)")]
        if tagged and tagged[0] != varying[-1]:
            pub_shown.loc[i, varying[-1]], pub_shown.loc[i, tagged[0]] = row[tagged[0]], ""
    for m in metrics:
        pub_shown[m] = [format_mean_std(v, np.nan, 1, decimals) for v in pd.to_numeric(pub[m], errors="coerce")]
    shown = pd.concat([shown, pub_shown], ignore_index=True)[varying + metrics]
    values = pd.concat([ours, pub], ignore_index=True)[varying + metrics]
    seeds = [int(n) for n in ours["n_seeds"]] if "n_seeds" in ours.columns else None
    return shown, values, varying, metrics, len(ours), seeds
