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


REPORT_OPTIONS = ("title", "published", "metrics", "figures_dir")


def build_suite_report(suite, results_root: str | Path, figures_dir: str | Path | None = None) -> dict:
    """:func:`build_report` with the options of a suite file's ``report:`` block.

    Valid options: ``title``, ``published`` (list of rows: dataset, method, metric values),
    ``metrics`` (table columns, default many, medium, few, top1, ece; e.g. add f_measure or use
    map, map_head, map_medium, map_tail), ``figures_dir``. An unknown option is an error naming them.
    """
    opts = dict(suite.report or {})
    unknown = sorted(set(opts) - set(REPORT_OPTIONS))
    if unknown:
        raise ValueError(f"{suite.path}: unknown report options {unknown}; valid: {', '.join(REPORT_OPTIONS)}")
    figures_dir = figures_dir or opts.get("figures_dir") or f"figures/{suite.name}"
    return build_report(suite.name, results_root, figures_dir, title=opts.get("title", ""),
                        published=opts.get("published"), metrics=tuple(opts.get("metrics") or TABLE_METRICS))


def build_report(suite_name: str, results_root: str | Path, figures_dir: str | Path, *,
                 title: str = "", published: list[dict] | None = None, many: int = 100, few: int = 20,
                 metrics: tuple[str, ...] = TABLE_METRICS) -> dict:
    """Write the suite's tables and figures; returns {"runs": DataFrame, "summary": DataFrame, "files": [...]}."""
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
    files += write_tables(shown, numeric, figures_dir, "summary", caption, f"tab:{suite_name}",
                          published=published_frame(published)).values()
    plots.set_style()
    for dataset, sub in df.groupby("dataset"):
        fig = plots.plot_shot_bars(sub)
        files += plots.save(fig, figures_dir, f"shot_bars_{dataset}")
        curves, counts = per_class_matrix(sub)
        fig = plots.plot_per_class_vs_count(curves, counts, many=many, few=few)
        files += plots.save(fig, figures_dir, f"per_class_{dataset}")
        plt.close("all")
    return {"runs": df, "summary": shown, "files": files, "files_dir": figures_dir}
