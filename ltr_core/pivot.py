"""Tables with a run parameter pivoted into column blocks (the classic CIFAR-LT table: IR 100 | 50 | 10)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from . import latex
from .tables import DASH, DISPLAY_NAMES, _best_mask, format_mean_std, html_table, summary_numeric

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
    Returns {dataset: {"shown", "values", "stds", "ns", "columns", "n_ours", "n_seeds"}} with flat column
    names ``"<block label>|<metric>"`` (``values`` the means, ``stds``/``ns`` std and finite seeds per cell).
    """
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
        shown_rows, value_rows, std_rows, n_rows, seeds = [], [], [], [], []
        for key in keys:
            sub = ours[ours["_row"] == key]
            label = row_labels.get(key, key)
            shown, values, stds, ns = {"method": label}, {"method": label}, {"method": label}, {"method": label}
            for b in blocks:
                cell = sub[sub["_col"] == b]
                for m in metrics:
                    col = f"{_pivot_value_label(columns_by, b)}|{m}"
                    if len(cell) and m in cell:
                        r = cell.iloc[0]
                        values[col], stds[col], ns[col] = r[m], r[f"{m}_std"], int(r[f"{m}_n"])
                        shown[col] = format_mean_std(r[m], r[f"{m}_std"], int(r[f"{m}_n"]), decimals)
                    else:
                        values[col], stds[col], ns[col], shown[col] = np.nan, np.nan, 0, DASH
            seeds.append(int(sub["n_seeds"].max()) if len(sub) else 0)
            for rows, row in ((shown_rows, shown), (value_rows, values), (std_rows, stds), (n_rows, ns)):
                rows.append(row)
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
            std_rows.append({"method": label, **{c: np.nan for c in columns}})
            n_rows.append({"method": label, **{c: 1 if np.isfinite(values[c]) else 0 for c in columns}})
        values_df = pd.DataFrame(value_rows, columns=["method", *columns])
        keep = [c for c in columns if pd.to_numeric(values_df[c], errors="coerce").notna().any()]
        frame = {"shown": shown_rows, "values": value_rows, "stds": std_rows, "ns": n_rows}
        out[dataset] = {k: pd.DataFrame(v, columns=["method", *columns])[["method", *keep]] for k, v in frame.items()}
        out[dataset].update(columns=keep, n_ours=len(keys), n_seeds=seeds)
    return out


def _header(col: str) -> tuple[str, str]:
    block, metric = col.split("|", 1)
    return block, DISPLAY_NAMES.get(metric, metric)


def render_pivot_tables(pivots: dict[str, dict], name: str, caption: str, label: str, decimals: int = 1,
                        comment: tuple[str, ...] = ()) -> dict[str, str]:
    """{"<name>.md" (one table per dataset), "<name>_<dataset>.tex" (booktabs, one multi-column header per
    block), "<name>.csv" (means, ``<col>_std``, ``<col>_n``; published rows with source = "published"),
    "html"}; best per column bold."""
    md_parts, csv_parts, html_parts, files = [caption, ""], [], [], {}
    for dataset, p in pivots.items():
        shown, values, cols, n_ours = p["shown"], p["values"], p["columns"], p["n_ours"]
        bold = _best_mask(values, cols, decimals)
        md = shown.copy()
        for c in cols:
            md[c] = [f"**{s}**" if b else s for s, b in zip(md[c], bold[c])]
        md["Seeds"] = [str(n) for n in p["n_seeds"]] + [""] * (len(md) - n_ours)
        header = {"method": "Method", **{c: " ".join(_header(c)) for c in cols}}
        md_parts += [f"**{dataset}**", "", md.rename(columns=header).to_markdown(index=False), ""]
        groups = [("", 1)] + [(block, sum(1 for c in cols if c.split("|", 1)[0] == block))
                              for block in dict.fromkeys(c.split("|", 1)[0] for c in cols)]
        columns = ["Method"] + [_header(c)[1] for c in cols]
        rows = [[str(v) for v in r] for r in shown[["method", *cols]].itertuples(index=False)]
        marks = [[False] + list(b) for b in bold[cols].itertuples(index=False)]
        kw = dict(n_label=1, groups=groups, rule_before=n_ours if n_ours < len(rows) else None)
        files[f"{name}_{dataset}.tex"] = latex.table(columns, rows, marks, caption=f"{caption} ({dataset})",
                                                     label=f"{label}-{dataset}", comment=comment, **kw)
        html_parts.append(html_table(columns, rows, marks, caption=dataset, **kw))
        numbers = values.copy()
        for c in cols:
            numbers[f"{c}_std"] = p["stds"][c] if "stds" in p else np.nan
            numbers[f"{c}_n"] = (p["ns"][c] if "ns" in p else pd.Series([np.nan] * len(values))).astype("Int64")
        csv_parts.append(numbers.assign(dataset=dataset,
                                        source=["ours"] * n_ours + ["published"] * (len(values) - n_ours),
                                        n_seeds=p["n_seeds"] + [None] * (len(values) - n_ours)))
    csv = pd.concat(csv_parts, ignore_index=True) if csv_parts else pd.DataFrame()
    if len(csv):
        csv = csv[["dataset", "method", "source", "n_seeds", *[c for c in csv.columns
                                                             if c not in ("dataset", "method", "source", "n_seeds")]]]
        csv["n_seeds"] = csv["n_seeds"].astype("Int64")
    return {f"{name}.md": "\n".join(md_parts) + "\n", **files, f"{name}.csv": csv.to_csv(index=False),
            "html": "\n".join(html_parts)}


def pivots_from_csv(csv_df: pd.DataFrame, decimals: int = 1) -> dict[str, dict]:
    """The :func:`pivot_tables` structure back from a pivot CSV (for re-rendering committed tables).
    A CSV without ``<col>_std`` columns (older reports) works only where every row has one seed."""
    meta = {"dataset", "method", "source", "n_seeds"}
    cols = [c for c in csv_df.columns if c not in meta and not c.endswith(("_std", "_n"))]
    out = {}
    for dataset, d in csv_df.groupby("dataset", sort=False):
        d = d.reset_index(drop=True)
        ours = d["source"] == "ours"
        n_ours = int(ours.sum())
        seeds = [int(n) for n in d.loc[ours, "n_seeds"]]
        keep = [c for c in cols if pd.to_numeric(d[c], errors="coerce").notna().any()]
        shown, stds, ns = d[["method"]].copy(), d[["method"]].copy(), d[["method"]].copy()
        for c in keep:
            mean = pd.to_numeric(d[c], errors="coerce")
            if f"{c}_std" in d.columns:
                std, n = pd.to_numeric(d[f"{c}_std"], errors="coerce"), d[f"{c}_n"].fillna(0).astype(int)
            elif max(seeds, default=1) <= 1:
                std, n = pd.Series(np.nan, index=d.index), mean.notna().astype(int)
            else:
                raise ValueError(f"{dataset}: the CSV has no {c}_std column and rows with several seeds; "
                                 "re-run `ltr report` to regenerate this table")
            shown[c] = [format_mean_std(a, s, k, decimals) for a, s, k in zip(mean, std, n)]
            stds[c], ns[c] = std, n
        out[dataset] = {"shown": shown, "values": d[["method", *keep]], "stds": stds, "ns": ns, "columns": keep,
                        "n_ours": n_ours, "n_seeds": seeds}
    return out
