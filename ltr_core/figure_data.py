"""What a suite report draws, from its collected runs: the per-class curves, the open-set and post-hoc
sweeps, the test accuracy over training, and :func:`report_figures` (every figure of a report as
PNG/PDF bytes, :mod:`ltr_core.plots` doing the drawing). Each function takes one dataset's rows of the
collected runs (:func:`ltr_core.collect.collect_suite`) and, optionally, their parsed results.json by
run directory."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from . import plots
from .collect import evaluated_epochs


def _results(row, cache: Mapping[str, dict] | None) -> dict:
    if cache is not None and str(row["path"]) in cache:
        return cache[str(row["path"])]
    return json.loads((Path(row["path"]) / "results.json").read_text())


def _curve_label(df: pd.DataFrame, row) -> str:
    return f"{row['method']}-{row['name']}" if df["name"].nunique() > 1 else str(row["method"])


def per_class_matrix(df: pd.DataFrame,
                     results: Mapping[str, dict] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{method-name: [seeds, C] per-class accuracy} and the class counts, for one dataset (``results``:
    parsed results.json by run directory, else read from disk)."""
    curves: dict[str, list] = {}
    counts = None
    for _, row in df.iterrows():
        res = _results(row, results)
        curves.setdefault(_curve_label(df, row), []).append([np.nan if v is None else v for v in res["per_class"]])
        counts = np.asarray(res["class_counts"])
    return {k: np.asarray(v, dtype=float) for k, v in curves.items()}, counts


def open_set_sweeps(df: pd.DataFrame, results: Mapping[str, dict] | None = None) -> dict[str, dict[str, list[float]]]:
    """{method-name: open-set theta sweep (metrics.f_measure_sweep) averaged over seeds}, for one dataset;
    runs without an open-set evaluation are left out (empty dict: none has one)."""
    runs: dict[str, list[dict]] = {}
    for _, row in df.iterrows():
        sweep = (_results(row, results).get("metrics") or {}).get("f_measure_sweep")
        if sweep:
            runs.setdefault(_curve_label(df, row), []).append(sweep)
    with warnings.catch_warnings():  # a threshold where every seed is NaN (nothing accepted) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return {label: {k: np.nanmean(np.asarray([s[k] for s in sw], dtype=float), axis=0).tolist() for k in sw[0]}
                for label, sw in runs.items()}


def eval_curves(df: pd.DataFrame, results: Mapping[str, dict] | None = None) -> dict[str, dict[str, list]]:
    """{method-name: {"epoch": [...], "top1"/"many"/"medium"/"few": [...]}} of the stage-1 runs of one
    dataset that evaluated at three or more epochs (``metrics.jsonl``; two points are the table's last
    epoch and one more, no curve), the mean over seeds at the epochs every seed evaluated; stage-2 runs
    (their own short schedule on a stage-1 model) are left out."""
    runs: dict[str, list[dict[int, dict]]] = {}
    for _, row in df.iterrows():
        evaluated = evaluated_epochs(Path(row["path"]))
        if len(evaluated) >= 3 and not _results(row, results).get("stage1"):
            runs.setdefault(_curve_label(df, row), []).append({r["epoch"]: r for r in evaluated})
    curves = {}
    for label, seeds in runs.items():
        epochs = sorted(set.intersection(*(set(s) for s in seeds)))
        curve: dict[str, list] = {"epoch": epochs}
        for key in plots.CURVE_METRICS:
            with warnings.catch_warnings():  # a group every seed leaves empty stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                curve[key] = [float(np.nanmean([np.nan if s[e].get(key) is None else s[e][key] for s in seeds]))
                              for e in epochs]
        curves[label] = curve
    return curves


def posthoc_sweeps(df: pd.DataFrame, results: Mapping[str, dict] | None = None) -> dict[str, list[dict]]:
    """{run name: [tau_sweep of each seed]} for the runs of one dataset that record a post-hoc τ sweep
    (decouple τ-norm / post-hoc LA), with the chosen τ and how it was chosen of the first seed."""
    runs: dict[str, list[dict]] = {}
    for _, row in df.iterrows():
        res = _results(row, results)
        if res.get("tau_sweep"):
            runs.setdefault(str(row["name"]), []).append({**res["tau_sweep"], "_tau": res.get("tau"),
                                                          "_how": res.get("tau_selection", ""),
                                                          "_mode": res.get("decouple_mode", ""),
                                                          "_split": res.get("eval_split", "test")})
    return runs


def report_figures(df: pd.DataFrame, results: Mapping[str, dict], many: int, few: int, multilabel: bool) -> dict[str, bytes]:
    """Every figure of the report as {file name: PNG/PDF bytes}."""
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    plots.set_style()
    for dataset, sub in df.groupby("dataset"):
        fig = plots.plot_shot_bars(sub, **({"metrics": ("map_head", "map_medium", "map_tail", "map")} if multilabel else {}))
        if multilabel:
            fig.axes[0].set_ylabel("mAP (%)")
        out.update(plots.render(fig, f"shot_bars_{dataset}"))
        curves, counts = per_class_matrix(sub, results)
        fig = plots.plot_per_class_vs_count(curves, counts, many=many - 1 if multilabel else many, few=few)
        if multilabel:  # per_class holds AP; head is n_c >= many, i.e. n_c > many - 1
            fig.axes[0].set_ylabel("per-class AP (%)")
        out.update(plots.render(fig, f"per_class_{dataset}"))
        sweeps = open_set_sweeps(sub, results)
        if sweeps:  # datasets with an open split: F-measure and accuracy against the threshold
            out.update(plots.render(plots.plot_open_set_sweep(sweeps), f"open_set_sweep_{dataset}"))
        curves = eval_curves(sub, results)
        if curves:  # test accuracy over training of the stage-1 runs
            out.update(plots.render(plots.plot_eval_curves(curves), f"eval_curves_{dataset}"))
        for run_name, runs in posthoc_sweeps(sub, results).items():  # τ-norm / post-hoc LA: accuracy against τ
            fig = plots.plot_posthoc_sweep(runs, runs[0]["_split"], chosen=runs[0]["_tau"], label=runs[0]["_how"],
                                           knob=runs[0]["_mode"], title=f"{dataset} {run_name}")
            out.update(plots.render(fig, f"posthoc_{dataset}_{run_name.replace(' ', '_')}"))
        plt.close("all")
    return out
