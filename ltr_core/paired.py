"""Paired rows of two suites: the same method, seed and recipe under one change (e.g. the lossless
official CIFAR-10 against the shared JPEG copy), side by side with the difference, so that what the change
costs is a number the report computes from runs, not a sentence typed into its notes.

A suite's ``report: paired:`` block::

    paired:
      label: JPEG copy                              # the other suite's column header
      this_label: lossless                          # (optional) this suite's column header
      suite: cifar10_lt_ir100                       # the other suite: its runs are <results_root>/<suite>/<run id>/
      results_root: figures/cifar10_lt_ir100/runs   # e.g. its committed small outputs (report option keep_runs)
      runs: {ce_ir100-f76f55: ce_ir100_bf16}        # this suite's run name -> the other suite's run name

For every pair and metric m, over the seeds both sides have (a seed only one side has is left out and the
"Seeds" column says how many were paired):

    m = mean_s m_this(s),   m (other) = mean_s m_other(s),   Δ m = mean_s (m_this(s) − m_other(s)).

A pair with no common seed prints "–" (never 0). The other suite's runs are read with
:func:`ltr_core.collect.collect_suite` (complete runs only), so a stale or partial run never enters the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .collect import collect_suite, folder_expected_runs
from .tables import DASH, DISPLAY_NAMES, html_table

PAIRED_KEYS = ("label", "suite", "results_root", "runs")
OPTIONAL_KEYS = ("this_label",)


def paired_options(block: Any, where: str) -> dict[str, Any] | None:
    """The checked ``paired:`` block of a suite's report (None when absent); a wrong block is a ValueError
    that names the key and shows the expected shape."""
    if block is None:
        return None
    shape = ("paired: {label: <column header>, this_label (optional), suite: <other suite name>, "
             "results_root: <folder holding <suite>/<run id>/>, runs: {<this run name>: <other run name>}}")
    if not isinstance(block, Mapping):
        raise ValueError(f"{where}: report option 'paired' must be a mapping; expected {shape}")
    unknown = sorted(set(block) - set(PAIRED_KEYS) - set(OPTIONAL_KEYS))
    missing = [k for k in PAIRED_KEYS if k not in block]
    if unknown or missing:
        raise ValueError(f"{where}: report option 'paired': unknown keys {unknown}, missing keys {missing}; "
                         f"expected {shape}")
    runs = block["runs"]
    if not isinstance(runs, Mapping) or not runs or not all(isinstance(k, str) and isinstance(v, str)
                                                             for k, v in runs.items()):
        raise ValueError(f"{where}: report option 'paired': 'runs' must map this suite's run names to the "
                         f"other suite's run names (strings), got {runs!r}")
    return {"label": str(block["label"]), "this_label": str(block.get("this_label", "this suite")),
            "suite": str(block["suite"]), "results_root": str(block["results_root"]), "runs": dict(runs)}


def other_runs(options: Mapping[str, Any]) -> pd.DataFrame:
    """One row per complete run of the other suite (:func:`ltr_core.collect.collect_suite` of its folder)."""
    folder = Path(options["results_root"]) / options["suite"]
    if not folder.is_dir():
        raise FileNotFoundError(f"report option 'paired': no folder {folder} holding the runs of suite "
                                f"{options['suite']}; set results_root to where they are "
                                f"(e.g. figures/{options['suite']}/runs, written by its report's keep_runs)")
    return collect_suite(folder_expected_runs(folder), folder, options["suite"]).frame


def _runs_named(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The runs of ``df`` with run name ``name``, indexed by seed."""
    return df[df["name"] == name].set_index("seed")


def _values(runs: pd.DataFrame, metric: str, seeds: Sequence[int]) -> pd.Series:
    """``metric`` of ``runs`` at ``seeds`` as floats (NaN where a run lacks it)."""
    if metric not in runs.columns:
        return pd.Series(np.nan, index=list(seeds), dtype=float)
    return pd.to_numeric(runs[metric], errors="coerce").astype(float).reindex(seeds)


def paired_frame(this: pd.DataFrame, other: pd.DataFrame, runs: Mapping[str, str],
                 metrics: Sequence[str]) -> pd.DataFrame:
    """Per pair (``runs``: this run name -> other run name): ``seeds`` paired, and per metric ``m`` (this
    suite), ``m_other`` and ``m_delta`` (mean over the common seeds of this − other); NaN without one."""
    rows = []
    for name, other_name in runs.items():
        mine, theirs = _runs_named(this, name), _runs_named(other, other_name)
        seeds = sorted(set(mine.index) & set(theirs.index))
        row: dict[str, Any] = {"name": name, "other_name": other_name, "seeds": len(seeds)}
        for m in metrics:
            a, b = _values(mine, m, seeds), _values(theirs, m, seeds)
            row[m], row[f"{m}_other"], row[f"{m}_delta"] = a.mean(), b.mean(), (a - b).mean()
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: float, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return DASH
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def render_paired(frame: pd.DataFrame, metrics: Sequence[str], this_label: str, other_label: str,
                  row_labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """{"paired.md", "paired.csv", "html"}: one row per pair; per metric three columns (this suite, the
    other, Δ = this − other); rows named by ``row_labels`` where given."""
    labels = dict(row_labels or {})
    columns = ["Name", "Paired with"]
    for m in metrics:
        head = DISPLAY_NAMES.get(m, m)
        columns += [f"{head} ({this_label})", f"{head} ({other_label})", f"Δ {head}"]
    columns.append("Seeds")
    rows = []
    for r in frame.to_dict("records"):
        cells = [labels.get(r["name"], r["name"]), r["other_name"]]
        for m in metrics:
            cells += [_cell(r[m]), _cell(r[f"{m}_other"]), _cell(r[f"{m}_delta"], signed=True)]
        rows.append(cells + [str(r["seeds"])])
    caption = (f"Paired runs: {this_label} against {other_label} (same method, seed and recipe); "
               f"Δ = {this_label} − {other_label}, mean over the seeds both have.")
    md = pd.DataFrame(rows, columns=columns).to_markdown(index=False, disable_numparse=True,  # keep "+4.5"
                                                         colalign=["left"] * 2 + ["right"] * (len(columns) - 2))
    html = html_table(columns, rows, [[False] * len(columns)] * len(rows), n_label=2, caption=caption)
    return {"paired.md": f"{caption}\n\n{md}\n", "paired.csv": frame.to_csv(index=False), "html": html}
