"""A suite's report: collect its ``results.json`` files, write the tables and the figures.

Called by ``notebooks/report.ipynb`` (which ``ltr report`` / ``ltr suite`` execute). Output, under
the suite's figures folder (``figures/<suite>/`` by default):

* ``summary.{md,tex,csv}``: rows = dataset / method / run name, columns Many | Medium | Few | All
  (+ ECE), mean ± std over seeds, best in bold, published numbers (the suite's ``report.published``
  list) below ours marked "(published)";
* ``runs.csv``: every run, one row each (the numbers behind the table);
* ``shot_bars_<dataset>.{png,pdf}``: many/medium/few/all grouped bars, error bars over seeds;
* ``per_class_<dataset>.{png,pdf}``: per-class accuracy against classes sorted by training count.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import plots
from .results import atomic_write_text, collect, summary_numeric, summary_table, write_tables

TABLE_METRICS = ("many", "medium", "few", "top1", "ece")


def dataset_profile(lt, many: int = 100, few: int = 20) -> dict[str, Any]:
    """What ``dataset.ipynb`` records in ``profile.json``: sizes, class counts and shot groups."""
    from .metrics import shot_groups

    groups = shot_groups(lt.class_counts, many=many, few=few)
    return {
        "dataset": lt.name,
        "num_classes": lt.num_classes,
        "train_images": int(lt.train.n),
        "test_images": int(lt.test.n),
        "val_images": int(lt.val.n) if lt.val is not None else None,
        "open_images": int(lt.open.n) if lt.open is not None else None,
        "imbalance_ratio": float(lt.class_counts.max() / max(lt.class_counts.min(), 1)),
        "class_counts": [int(c) for c in lt.class_counts],
        "shot_rule": {"many": f">{many}", "medium": f"{few}-{many}", "few": f"<{few}"},
        "group_sizes": {k: int(len(v)) for k, v in groups.items()},
        "shot_groups": {k: [int(i) for i in v] for k, v in groups.items()},
    }


def profile_table(lt, many: int = 100, few: int = 20) -> pd.DataFrame:
    """One row per class: name, train count, test count, shot group (sorted by train count)."""
    from .metrics import shot_groups

    group_of = {int(i): g for g, idx in shot_groups(lt.class_counts, many=many, few=few).items() for i in idx}
    test_counts = np.bincount(lt.test.labels.numpy(), minlength=lt.num_classes)
    df = pd.DataFrame({"class": lt.class_names, "train": lt.class_counts, "test": test_counts,
                       "group": [group_of[i] for i in range(lt.num_classes)]})
    return df.sort_values("train", ascending=False, kind="stable")


def published_frame(entries: list[dict[str, Any]] | None) -> pd.DataFrame | None:
    """The suite's published numbers as rows (``method`` label + metric columns + ``source``)."""
    if not entries:
        return None
    rows = []
    for e in entries:
        row = {"dataset": e.get("dataset", ""), "method": e.get("method", e.get("row", "")), "name": e.get("name", "")}
        row.update({m: e.get(m, np.nan) for m in sorted(set(TABLE_METRICS) | set(e) - {"dataset", "method", "row", "name"})})
        rows.append(row)
    return pd.DataFrame(rows)


def per_class_matrix(df: pd.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{method-name: [seeds, C] per-class accuracy} and the class counts, for one dataset."""
    curves: dict[str, list] = {}
    counts = None
    for _, row in df.iterrows():
        res = json.loads((Path(row["path"]) / "results.json").read_text())
        label = f"{row['method']}-{row['name']}" if df["name"].nunique() > 1 else str(row["method"])
        curves.setdefault(label, []).append([np.nan if v is None else v for v in res["per_class"]])
        counts = np.asarray(res["class_counts"])
    return {k: np.asarray(v, dtype=float) for k, v in curves.items()}, counts


def open_set_sweeps(df: pd.DataFrame) -> dict[str, dict[str, list[float]]]:
    """{method-name: open-set theta sweep (metrics.f_measure_sweep) averaged over seeds}, for one dataset;
    runs without an open-set evaluation are left out (empty dict: none has one)."""
    runs: dict[str, list[dict]] = {}
    for _, row in df.iterrows():
        res = json.loads((Path(row["path"]) / "results.json").read_text())
        sweep = (res.get("metrics") or {}).get("f_measure_sweep")
        if sweep:
            label = f"{row['method']}-{row['name']}" if df["name"].nunique() > 1 else str(row["method"])
            runs.setdefault(label, []).append(sweep)
    with warnings.catch_warnings():  # a threshold where every seed is NaN (nothing accepted) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return {label: {k: np.nanmean(np.asarray([s[k] for s in sw], dtype=float), axis=0).tolist() for k in sw[0]}
                for label, sw in runs.items()}


REPORT_OPTIONS = ("title", "published", "metrics", "figures_dir", "columns_by", "row_labels")


def build_suite_report(suite, results_root: str | Path, figures_dir: str | Path | None = None) -> dict:
    """:func:`build_report` with the options of a suite file's ``report:`` block.

    Valid options: ``title``, ``published`` (list of rows: dataset, method, metric values),
    ``metrics`` (table columns, default many, medium, few, top1, ece; e.g. add f_measure or use
    map, map_head, map_medium, map_tail), ``figures_dir``, ``columns_by`` (a flat run parameter, e.g.
    ``imbalance_ratio``, whose values become column blocks: rows = methods, columns Many | Medium | Few |
    All per IR; published rows then carry that key) with ``row_labels`` ({run name without the IR token:
    row label}, also the row order; without ``columns_by``: {run name: row label}). An unknown option is an
    error naming them.
    """
    opts = dict(suite.report or {})
    unknown = sorted(set(opts) - set(REPORT_OPTIONS))
    if unknown:
        raise ValueError(f"{suite.path}: unknown report options {unknown}; valid: {', '.join(REPORT_OPTIONS)}")
    figures_dir = figures_dir or opts.get("figures_dir") or f"figures/{suite.name}"
    return build_report(suite.name, results_root, figures_dir, title=opts.get("title", ""),
                        published=opts.get("published"), metrics=tuple(opts.get("metrics") or TABLE_METRICS),
                        columns_by=opts.get("columns_by", ""), row_labels=opts.get("row_labels"))


def build_report(suite_name: str, results_root: str | Path, figures_dir: str | Path, *,
                 title: str = "", published: list[dict] | None = None, many: int = 100, few: int = 20,
                 metrics: tuple[str, ...] = TABLE_METRICS, columns_by: str = "",
                 row_labels: dict[str, str] | None = None) -> dict:
    """Write the suite's tables and figures; returns {"runs": DataFrame, "summary": DataFrame, "files": [...]}.

    With ``columns_by`` the summary is :func:`pivot_tables` (one block of columns per value of that run
    parameter) and the one-row-per-run-name table goes to ``summary_by_run.*`` (without published rows).
    """
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    df = collect(Path(results_root) / suite_name)
    if df.empty:
        raise FileNotFoundError(
            f"no complete results.json under {Path(results_root) / suite_name}; run `ltr suite` for this suite first"
        )
    files: list[Path] = []
    files.append(atomic_write_text(figures_dir / "runs.csv", df.drop(columns=["path"]).to_csv(index=False)))
    by = ("dataset", "method", "name")
    numeric = summary_numeric(df, by, metrics)
    shown = summary_table(df, by, metrics)
    caption = title or f"{suite_name}: top-1 accuracy (%) by shot group, mean ± std over seeds"
    caption += f"; many > {many}, medium {few}–{many}, few < {few} training images; ECE (%) 15 bins."
    if "f_measure" in metrics:
        caption += (" F: open-set F-measure (%), known test + open images, reject when max softmax < theta "
                    "(open_theta, OLTR 0.1), rejected known images count as false positives (post-fix).")
    multilabel = "map" in metrics  # multi-label suites (VOC/COCO/mosaic-MLT): mAP by head / medium / tail
    if multilabel:
        caption = (title or f"{suite_name}: mAP (%)") + (
            f"; per-class AP averaged, head >= {many}, medium {few}–{many - 1}, tail < {few} training images "
            f"containing the class; mean ± std over seeds.")
    if columns_by:  # e.g. imbalance_ratio: rows = methods, column blocks IR 100 | 50 | 10
        files += write_tables(shown, numeric, figures_dir, "summary_by_run", caption, f"tab:{suite_name}-runs").values()
        pivot_metrics = tuple(m for m in metrics if m != "ece")
        pivots = pivot_tables(df, columns_by, pivot_metrics, row_labels, published)
        caption = (title or f"{suite_name}: top-1 accuracy (%)") + (
            f"; mean ± std over seeds; many > {many}, medium {few}–{many}, few < {few} training images; "
            f"shot groups empty at every setting are left out; (published) = number from the paper or repository.")
        files += write_pivot_tables(pivots, figures_dir, "summary", caption, f"tab:{suite_name}")
        shown = pd.concat({d: p["shown"] for d, p in pivots.items()}, names=["dataset", None])
    else:
        if row_labels:
            shown, numeric = labelled_rows(shown, row_labels), labelled_rows(numeric, row_labels)
        files += write_tables(shown, numeric, figures_dir, "summary", caption, f"tab:{suite_name}",
                              published=published_frame(published)).values()
    plots.set_style()
    for dataset, sub in df.groupby("dataset"):
        fig = plots.plot_shot_bars(sub, **({"metrics": ("map_head", "map_medium", "map_tail", "map")} if multilabel else {}))
        if multilabel:
            fig.axes[0].set_ylabel("mAP (%)")
        files += plots.save(fig, figures_dir, f"shot_bars_{dataset}")
        curves, counts = per_class_matrix(sub)
        fig = plots.plot_per_class_vs_count(curves, counts, many=many - 1 if multilabel else many, few=few)
        if multilabel:  # per_class holds AP; head is n_c >= many, i.e. n_c > many - 1
            fig.axes[0].set_ylabel("per-class AP (%)")
        files += plots.save(fig, figures_dir, f"per_class_{dataset}")
        sweeps = open_set_sweeps(sub)
        if sweeps:  # datasets with an open split: F-measure and accuracy against the threshold
            files += plots.save(plots.plot_open_set_sweep(sweeps), figures_dir, f"open_set_sweep_{dataset}")
        for run_name, runs in posthoc_sweeps(sub).items():  # τ-norm / post-hoc LA: accuracy against τ
            fig = plots.plot_posthoc_sweep(runs, runs[0]["_split"], chosen=runs[0]["_tau"], label=runs[0]["_how"],
                                           knob=runs[0]["_mode"], title=f"{dataset} {run_name}")
            files += plots.save(fig, figures_dir, f"posthoc_{dataset}_{run_name.replace(' ', '_')}")
        plt.close("all")
    return {"runs": df, "summary": shown, "files": files, "files_dir": figures_dir}


def labelled_rows(table: pd.DataFrame, row_labels: dict[str, str]) -> pd.DataFrame:
    """Rows whose run name is a key of ``row_labels`` first, in that order, named by its value; the others after."""
    order = {name: i for i, name in enumerate(row_labels)}
    rank = table["name"].map(lambda n: order.get(n, len(order)))
    out = table.assign(_rank=rank.to_numpy()).sort_values("_rank", kind="stable").drop(columns="_rank")
    out["name"] = out["name"].map(lambda n: row_labels.get(n, n))
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# tables with a run parameter pivoted into column blocks (the classic CIFAR-LT table: IR 100 | 50 | 10)

PIVOT_TOKENS = {"imbalance_ratio": "ir"}  # imbalance_ratio 100 appears as "ir100" in run names


def run_param(df: pd.DataFrame, key: str) -> pd.Series:
    """The flat parameter ``key`` of every collected run: a results.json column when every run has it,
    else read from each run's ``config.yaml`` (so it works for runs recorded before the key existed)."""
    if key in df.columns and df[key].notna().all():
        return df[key]
    from .results import RunDir

    values = []
    for path in df["path"]:
        doc = RunDir(path).read_config() or {}
        params = doc.get("params") or {}
        if key not in params:
            raise KeyError(f"{path}/config.yaml has no parameter {key!r}; columns_by must be a flat parameter name")
        values.append(params[key])
    return pd.Series(values, index=df.index)


def _pivot_value_label(key: str, value: Any) -> str:
    text = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return f"IR {text}" if key == "imbalance_ratio" else f"{key} = {text}"


def pivot_row_key(name: str, key: str, value: Any) -> str:
    """A run name without the token of its column value (``ce_ir100`` -> ``ce`` for imbalance_ratio 100;
    ``crt_ir10 [cached features]`` -> ``crt [cached features]``), so the runs of one method at every
    value share a row. A name that is only the token stays as it is."""
    import re

    text = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    token = PIVOT_TOKENS.get(key, "") + text
    stripped = re.sub(rf"(^|[_\-]){re.escape(token)}(?=$|[_\-\s])", "", str(name)).strip("_- ")
    return stripped or str(name)


def pivot_tables(df: pd.DataFrame, columns_by: str, metrics: tuple[str, ...] = ("many", "medium", "few", "top1"),
                 row_labels: dict[str, str] | None = None, published: list[dict] | None = None,
                 decimals: int = 1) -> dict[str, dict]:
    """Per dataset: rows = methods, column blocks = values of the run parameter ``columns_by`` (e.g. IR),
    each block the ``metrics`` (Many | Medium | Few | All), cells "mean ± std" over seeds.

    A row is a run name without its column token (:func:`pivot_row_key`), shown as ``row_labels[key]``
    (rows in the order of ``row_labels``, then the others sorted). ``published`` rows (dataset, method,
    ``columns_by`` value, metric values) follow ours, labelled "(published)". Blocks are ordered by
    decreasing value (IR 100 | 50 | 10); a (block, metric) column empty in every row is dropped.
    Returns {dataset: {"shown", "values", "columns", "n_ours", "n_seeds"}} with flat column names
    ``"<block label>|<metric>"``.
    """
    from .results import DASH, format_mean_std

    row_labels = dict(row_labels or {})
    df = df.assign(_col=run_param(df, columns_by).to_numpy())
    df = df.assign(_row=[pivot_row_key(n, columns_by, v) for n, v in zip(df["name"], df["_col"])])
    numeric = summary_numeric(df, ("dataset", "_row", "_col"), metrics)
    pub = []
    for e in published or []:
        if columns_by not in e or "method" not in e:
            raise ValueError(f"published row {e} needs 'method' and {columns_by!r} (the column block it belongs to)")
        pub.append(e)
    out: dict[str, dict] = {}
    for dataset in sorted(set(numeric["dataset"]) | {e.get("dataset", "") for e in pub} - {""}):
        ours = numeric[numeric["dataset"] == dataset]
        mine = [e for e in pub if e.get("dataset", dataset) == dataset]
        blocks = sorted(set(ours["_col"]) | {e[columns_by] for e in mine},
                        key=lambda v: (-float(v)) if isinstance(v, (int, float)) else str(v))
        keys = [k for k in row_labels if k in set(ours["_row"])] + sorted(set(ours["_row"]) - set(row_labels))
        columns = [f"{_pivot_value_label(columns_by, b)}|{m}" for b in blocks for m in metrics]
        shown_rows, value_rows, seeds = [], [], []
        for key in keys:
            sub = ours[ours["_row"] == key]
            shown, values = {"method": row_labels.get(key, key)}, {"method": row_labels.get(key, key)}
            for b in blocks:
                cell = sub[sub["_col"] == b]
                for m in metrics:
                    col = f"{_pivot_value_label(columns_by, b)}|{m}"
                    if len(cell) and m in cell:
                        r = cell.iloc[0]
                        values[col] = r[m]
                        shown[col] = format_mean_std(r[m], r[f"{m}_std"], int(r[f"{m}_n"]), decimals)
                    else:
                        values[col], shown[col] = np.nan, DASH
            seeds.append(int(sub["n_seeds"].max()) if len(sub) else 0)
            shown_rows.append(shown)
            value_rows.append(values)
        for method in dict.fromkeys(e["method"] for e in mine):
            label = f"{method} (published)"
            shown, values = {"method": label}, {"method": label}
            for col in columns:
                shown[col], values[col] = DASH, np.nan
            for e in (e for e in mine if e["method"] == method):
                for m in metrics:
                    if e.get(m) is not None:
                        col = f"{_pivot_value_label(columns_by, e[columns_by])}|{m}"
                        values[col] = float(e[m])
                        shown[col] = format_mean_std(float(e[m]), np.nan, 1, decimals)
            shown_rows.append(shown)
            value_rows.append(values)
        values_df = pd.DataFrame(value_rows, columns=["method", *columns])
        keep = [c for c in columns if pd.to_numeric(values_df[c], errors="coerce").notna().any()]
        out[dataset] = {"shown": pd.DataFrame(shown_rows, columns=["method", *columns])[["method", *keep]],
                        "values": values_df[["method", *keep]], "columns": keep, "n_ours": len(keys),
                        "n_seeds": seeds}
    return out


def write_pivot_tables(pivots: dict[str, dict], out_dir: str | Path, name: str, caption: str,
                       label: str, decimals: int = 1) -> list[Path]:
    """``<name>.md`` (one table per dataset), ``<name>_<dataset>.tex`` (booktabs, one multi-column header
    per block) and ``<name>.csv`` (numbers, published rows with source = "published"); best per column bold."""
    from .results import DASH, DISPLAY_NAMES, _best_mask

    out_dir = Path(out_dir)
    md_parts, csv_parts, files = [caption, ""], [], []
    for dataset, p in pivots.items():
        shown, values, cols, n_ours = p["shown"], p["values"], p["columns"], p["n_ours"]
        bold = _best_mask(values, cols, decimals)
        md = shown.copy()
        for c in cols:
            md[c] = [f"**{s}**" if b else s for s, b in zip(md[c], bold[c])]
        md["Seeds"] = [str(n) for n in p["n_seeds"]] + [""] * (len(md) - n_ours)
        header = {"method": "Method", **{c: f"{c.split('|')[0]} {DISPLAY_NAMES.get(c.split('|')[1], c.split('|')[1])}"
                                          for c in cols}}
        md_parts += [f"**{dataset}**", "", md.rename(columns=header).to_markdown(index=False), ""]
        multi = pd.MultiIndex.from_tuples([("", "Method")] + [(c.split("|")[0], DISPLAY_NAMES.get(c.split("|")[1],
                                                                                                   c.split("|")[1]))
                                                              for c in cols])
        table = pd.DataFrame(shown[["method", *cols]].to_numpy(), columns=multi)
        css = pd.DataFrame(np.column_stack([np.full(len(shown), ""),
                                            np.where(bold[cols].to_numpy(dtype=bool), "font-weight: bold;", "")]),
                           columns=multi)
        styler = (table.style.hide(axis="index").apply(lambda _: css, axis=None)
                  .format(escape="latex").format_index(escape="latex", axis=1))
        tex = styler.to_latex(hrules=True, convert_css=True, multicol_align="c", position_float="centering",
                              caption=f"{caption} ({dataset})".replace("%", r"\%").replace("_", r"\_"),
                              label=f"{label}-{dataset}",
                              column_format="l" + "r" * len(cols))
        tex = tex.replace("±", r"$\pm$").replace(DASH, "--")
        if n_ours < len(shown):
            lines = tex.split("\n")
            body = lines.index(r"\midrule") + 1
            lines.insert(body + n_ours, r"\midrule")
            tex = "\n".join(lines)
        files.append(atomic_write_text(out_dir / f"{name}_{dataset}.tex", tex))
        csv_parts.append(values.assign(dataset=dataset, source=["ours"] * n_ours + ["published"] * (len(values) - n_ours),
                                       n_seeds=p["n_seeds"] + [None] * (len(values) - n_ours)))
    files.insert(0, atomic_write_text(out_dir / f"{name}.md", "\n".join(md_parts) + "\n"))
    csv = pd.concat(csv_parts, ignore_index=True) if csv_parts else pd.DataFrame()
    if len(csv):
        csv = csv[["dataset", "method", "source", "n_seeds", *[c for c in csv.columns
                                                             if c not in ("dataset", "method", "source", "n_seeds")]]]
        csv["n_seeds"] = csv["n_seeds"].astype("Int64")
    files.append(atomic_write_text(out_dir / f"{name}.csv", csv.to_csv(index=False)))
    return files


def posthoc_sweeps(df: pd.DataFrame) -> dict[str, list[dict]]:
    """{run name: [tau_sweep of each seed]} for the runs of one dataset that record a post-hoc τ sweep
    (decouple τ-norm / post-hoc LA), with the chosen τ and how it was chosen of the first seed."""
    runs: dict[str, list[dict]] = {}
    for _, row in df.iterrows():
        res = json.loads((Path(row["path"]) / "results.json").read_text())
        if res.get("tau_sweep"):
            runs.setdefault(str(row["name"]), []).append({**res["tau_sweep"], "_tau": res.get("tau"),
                                                          "_how": res.get("tau_selection", ""),
                                                          "_mode": res.get("decouple_mode", ""),
                                                          "_split": res.get("eval_split", "test")})
    return runs
