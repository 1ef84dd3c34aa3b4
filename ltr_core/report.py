"""A suite's report: collect exactly its runs, write the tables, the figures and one ``index.html``.

Called by ``notebooks/report.ipynb`` (which ``ltr report`` / ``ltr suite`` execute). Output, in the
report folder (:func:`report_dir`: ``figures/<suite>/`` for the suite as committed; a suite run with
overrides goes to ``results/<suite>-<override digest>/report/`` so it never overwrites the committed
figures; ``ltr report --out DIR`` anywhere):

* ``summary.{md,tex,csv}``: rows = dataset / method / run name, columns Many | Medium | Few | All
  (+ ECE), mean ± std over seeds, best in bold, published numbers (the suite's ``report.published``
  list) below ours marked "(published)"; summary.md starts with which runs were counted;
* ``runs.csv``: every counted run, one row each (the numbers behind the table);
* ``shot_bars_<dataset>.{png,pdf}``: many/medium/few/all grouped bars, error bars over seeds;
* ``per_class_<dataset>.{png,pdf}``: per-class accuracy against classes sorted by training count;
* ``eval_curves_<dataset>.{png,pdf}``: test accuracy at every evaluated epoch of the stage-1 runs (and
  the open-set / post-hoc sweeps where runs have them: :mod:`ltr_core.figure_data`);
* ``index.html``: the tables and every PNG of the folder on one page (relative links, no network);
* ``report.json``: the files written, the runs counted and every run not counted, with why.

Which runs count: :mod:`ltr_core.collect` (exactly the suite's run x seed directories, complete and
with today's config hash). Every file is computed in memory first and written (atomically, one by
one) only after all of them were computed, so a report that fails leaves the previous one intact.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .collect import ExpectedRun, collect_suite, folder_expected_runs, shown_path, suite_expected_runs
from .figure_data import eval_curves, open_set_sweeps, per_class_matrix, posthoc_sweeps, report_figures  # noqa: F401
from .paired import other_runs, paired_frame, paired_options, render_paired
from .pivot import pivot_row_key, pivot_tables, pivots_from_csv, render_pivot_tables, run_param  # noqa: F401
from .results import atomic_write_bytes, dump_json
from .tables import frames_from_csv, render_frames, render_tables, summary_numeric, summary_table

TABLE_METRICS = ("many", "medium", "few", "top1", "ece")
REPORT_OPTIONS = ("title", "published", "metrics", "figures_dir", "columns_by", "row_labels", "keep_runs", "notes",
                  "paired")
KEPT_FILES = ("results.json", "per_class.csv", "config.yaml", "metrics.jsonl")  # a run's small outputs (keep_runs)
MANIFEST = "report.json"


def dataset_profile(lt, many: int = 100, few: int = 20) -> dict[str, Any]:
    """What ``dataset.ipynb`` records in ``profile.json``: sizes, class counts and shot groups."""
    from .metrics import shot_groups

    groups = shot_groups(lt.class_counts, many=many, few=few)
    return {
        "dataset": lt.name, "num_classes": lt.num_classes, "train_images": int(lt.train.n),
        "test_images": int(lt.test.n), "val_images": int(lt.val.n) if lt.val is not None else None,
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


def labelled_rows(table: pd.DataFrame, row_labels: dict[str, str]) -> pd.DataFrame:
    """Rows whose run name is a key of ``row_labels`` first, in that order, named by its value; the others after."""
    order = {name: i for i, name in enumerate(row_labels)}
    rank = table["name"].map(lambda n: order.get(n, len(order)))
    out = table.assign(_rank=rank.to_numpy()).sort_values("_rank", kind="stable").drop(columns="_rank")
    out["name"] = out["name"].map(lambda n: row_labels.get(n, n))
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# suites: options, where the report goes


def report_options(suite) -> dict[str, Any]:
    """The keyword arguments of :func:`build_report` from a suite file's ``report:`` block (see
    :func:`build_suite_report`); an unknown option is an error naming the valid ones."""
    opts = dict(suite.report or {})
    unknown = sorted(set(opts) - set(REPORT_OPTIONS))
    if unknown:
        raise ValueError(f"{suite.path}: unknown report options {unknown}; valid: {', '.join(REPORT_OPTIONS)}")
    return {"title": opts.get("title", ""), "published": opts.get("published"),
            "metrics": tuple(opts.get("metrics") or TABLE_METRICS), "columns_by": opts.get("columns_by", ""),
            "row_labels": opts.get("row_labels"), "keep_runs": bool(opts.get("keep_runs", False)),
            "notes": [str(n) for n in opts.get("notes") or []],
            "paired": paired_options(opts.get("paired"), str(suite.path))}


def _semantic(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    from .runner import _PLACEMENT_KEYS

    return {k: v for k, v in (overrides or {}).items() if k not in _PLACEMENT_KEYS}


def override_digest(overrides: Mapping[str, Any] | None) -> str:
    """6 hex chars naming the overrides of a report's runs ("" when every override only says where or how runs
    execute, :data:`ltr_core.runner._PLACEMENT_KEYS`): the ``<suite>-<digest>`` of :func:`report_dir`."""
    semantic = _semantic(overrides)
    if not semantic:
        return ""
    return hashlib.sha1(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:6]


def report_dir(suite, overrides: Mapping[str, Any] | None = None, out: str | os.PathLike | None = None,
               results_root: str | os.PathLike = "results") -> Path:
    """Where a report of ``suite`` goes: ``out``; else the ``figures_dir`` override; else, when the
    overrides change what runs compute, ``<results_root>/<suite>-<digest>/report`` (never the committed
    figures); else the suite's ``report.figures_dir`` or ``figures/<suite>``."""
    if out:
        return Path(out)
    ov = dict(overrides or {})
    if ov.get("figures_dir"):
        return Path(ov["figures_dir"])
    digest = override_digest(ov)
    if digest:
        return Path(results_root) / f"{suite.name}-{digest}" / "report"
    return Path((suite.report or {}).get("figures_dir") or f"figures/{suite.name}")


def build_suite_report(suite, results_root: str | Path, figures_dir: str | Path | None = None, *,
                       overrides: Mapping[str, Any] | None = None, runs: Sequence[ExpectedRun] | None = None) -> dict:
    """:func:`build_report` of exactly the runs ``suite`` resolves to with ``overrides`` (or ``runs``),
    with the options of its ``report:`` block, into ``figures_dir`` (default :func:`report_dir`).

    Valid options: ``title``, ``published`` (list of rows: dataset, method, metric values),
    ``metrics`` (table columns, default many, medium, few, top1, ece; e.g. add f_measure or use
    map, map_head, map_medium, map_tail), ``figures_dir``, ``columns_by`` (a flat run parameter, e.g.
    ``imbalance_ratio``, whose values become column blocks: rows = methods, columns Many | Medium | Few |
    All per IR; published rows then carry that key) with ``row_labels`` ({run name without the IR token:
    row label}, also the row order; without ``columns_by``: {run name: row label}).
    """
    opts = report_options(suite)
    ov = {**dict(overrides or {}), "results_root": str(results_root)}
    expected = list(runs) if runs is not None else suite_expected_runs(suite, ov)
    figures_dir = figures_dir or report_dir(suite, ov, None, results_root)
    return build_report(suite.name, results_root, figures_dir, runs=expected, overrides=overrides, **opts)


# ----------------------------------------------------------------------------------------------
# the report


def captions(suite_name: str, title: str, metrics: Sequence[str], many: int = 100, few: int = 20) -> dict[str, str]:
    """{"summary": the one-row-per-run table's caption, "pivot": the column-block table's caption}."""
    caption = title or f"{suite_name}: top-1 accuracy (%) by shot group, mean ± std over seeds"
    caption += f"; many > {many}, medium {few}–{many}, few < {few} training images; ECE (%) 15 bins."
    if "f_measure" in metrics:
        caption += (" F: open-set F-measure (%), known test + open images, reject when max softmax < theta "
                    "(open_theta, OLTR 0.1), rejected known images count as false positives (post-fix).")
    if "map" in metrics:  # multi-label suites (VOC/COCO/mosaic-MLT): mAP by head / medium / tail
        caption = (title or f"{suite_name}: mAP (%)") + (
            f"; per-class AP averaged, head >= {many}, medium {few}–{many - 1}, tail < {few} training images "
            f"containing the class; mean ± std over seeds.")
    pivot = (title or f"{suite_name}: top-1 accuracy (%)") + (
        f"; mean ± std over seeds; many > {many}, medium {few}–{many}, few < {few} training images; "
        f"shot groups empty at every setting are left out; (published) = number from the paper or repository.")
    return {"summary": caption, "pivot": pivot}


def build_report(suite_name: str, results_root: str | Path, figures_dir: str | Path, *,
                 runs: Sequence[ExpectedRun] | None = None, title: str = "", published: list[dict] | None = None,
                 many: int = 100, few: int = 20, metrics: tuple[str, ...] = TABLE_METRICS, columns_by: str = "",
                 row_labels: dict[str, str] | None = None, overrides: Mapping[str, Any] | None = None,
                 keep_runs: bool = False, notes: Sequence[str] = (), paired: Mapping[str, Any] | None = None) -> dict:
    """Write the tables, figures, index.html and report.json of ``runs`` (default: every run folder of
    ``<results_root>/<suite_name>``, archived ones left out); returns {"runs": DataFrame, "summary":
    DataFrame, "files": [...], "files_dir", "collection": :class:`ltr_core.collect.SuiteRuns`, "header"}.

    With ``columns_by`` the summary is :func:`pivot_tables` (one block of columns per value of that run
    parameter) and the one-row-per-run-name table goes to ``summary_by_run.*`` (without published rows).
    Nothing is written unless every file could be computed (a malformed results.json raises first).
    ``keep_runs`` also copies each counted run's small outputs (:data:`KEPT_FILES`) to
    ``<figures_dir>/runs/<suite>/<run id>/``, a results root that rebuilds the report on a fresh clone
    (``ltr report SUITE --results-root <figures_dir>/runs``) when the machine and its results/ are gone.
    ``notes`` (e.g. why a row misses its published number) are listed under the tables (summary.md, index.html).
    ``paired`` (:func:`ltr_core.paired.paired_options`) adds ``paired.{md,csv}``: these runs beside the runs of
    another suite that differ in one thing (e.g. the data copy), with the difference; also under the table.
    """
    figures_dir, folder = Path(figures_dir), Path(results_root) / suite_name
    found = collect_suite(folder_expected_runs(folder) if runs is None else list(runs), folder, suite_name)
    header, df = found.header_lines(), found.frame
    if df.empty:
        raise FileNotFoundError(f"no complete run of suite {suite_name} to report under {folder}; run `ltr suite` "
                                "for this suite first.\n" + "\n".join(header))
    files: dict[str, str | bytes] = {"runs.csv": df.drop(columns=["path"]).to_csv(index=False)}
    comment = (f"ltr report {suite_name}: {found.n_counted} of {len(found.expected)} expected runs counted",
               "needs \\usepackage{booktabs} and \\usepackage{graphicx}")
    by, caps, html_tables = ("dataset", "method", "name"), captions(suite_name, title, metrics, many, few), []
    numeric, shown = summary_numeric(df, by, metrics), summary_table(df, by, metrics)
    if columns_by:  # e.g. imbalance_ratio: rows = methods, column blocks IR 100 | 50 | 10
        files.update(render_tables(shown, numeric, "summary_by_run", caps["summary"], f"tab:{suite_name}-runs",
                                   comment=comment))
        by_run = files.pop("html")
        pivots = pivot_tables(df, columns_by, tuple(m for m in metrics if m != "ece"), row_labels, published)
        files.update(render_pivot_tables(pivots, "summary", caps["pivot"], f"tab:{suite_name}", comment=comment))
        html_tables += [files.pop("html"), by_run]
        shown = pd.concat({d: p["shown"] for d, p in pivots.items()}, names=["dataset", None])
    else:
        if row_labels:
            shown, numeric = labelled_rows(shown, row_labels), labelled_rows(numeric, row_labels)
        files.update(render_tables(shown, numeric, "summary", caps["summary"], f"tab:{suite_name}",
                                   published=published_frame(published), comment=comment))
        html_tables.append(files.pop("html"))
    files["summary.md"] = "\n".join(header) + "\n\n" + files["summary.md"]
    if paired:
        files.update(paired_files(df, paired, [m for m in metrics if m != "ece"], row_labels))
        files["summary.md"] = files["summary.md"].rstrip("\n") + "\n\n" + files["paired.md"]
        html_tables.append(files.pop("html"))
    if notes:
        files["summary.md"] = files["summary.md"].rstrip("\n") + "\n\nNotes:\n\n" + "".join(f"- {n}\n" for n in notes)
        html_tables.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if keep_runs:
        files.update(kept_run_files(df, figures_dir, suite_name))
    files.update(report_figures(df, found.results, many, few, multilabel="map" in metrics))
    others = {p.name for p in figures_dir.glob("*.png")} - previous_files(figures_dir)  # e.g. dataset profiles
    files["index.html"] = index_html(suite_name, caps["pivot" if columns_by else "summary"], header, html_tables,
                                     sorted({*(f for f in files if f.endswith(".png")), *others}),
                                     sorted([*files, MANIFEST]))
    manifest = {"suite": suite_name, "out": shown_path(figures_dir), "overrides": _semantic(overrides), "header": header,
                "collection": found.to_json(), "files": sorted([*files, MANIFEST])}
    written = write_files(figures_dir, files, manifest)
    return {"runs": df, "summary": shown, "files": written, "files_dir": figures_dir, "collection": found,
            "header": header}


def paired_files(df: pd.DataFrame, paired: Mapping[str, Any], metrics: Sequence[str],
                 row_labels: Mapping[str, str] | None) -> dict[str, str]:
    """paired.md / .csv / html of these runs against the other suite's (the metrics either side has)."""
    other = other_runs(paired)
    shown = [m for m in metrics if any(m in d.columns and pd.to_numeric(d[m], errors="coerce").notna().any()
                                       for d in (df, other))]
    frame = paired_frame(df, other, paired["runs"], shown)
    return render_paired(frame, shown, paired["this_label"], paired["label"], row_labels)


def kept_run_files(df: pd.DataFrame, figures_dir: Path, suite_name: str) -> dict[str, bytes]:
    """{"runs/<suite>/<run id>/<file>": bytes} of the counted runs' :data:`KEPT_FILES` (none when the
    report is being rebuilt from that very folder)."""
    kept = (figures_dir / "runs").resolve()
    out = {}
    for run_id, path in zip(df["run_id"], df["path"]):
        if kept in Path(path).resolve().parents:
            continue
        for name in KEPT_FILES:
            if (Path(path) / name).is_file():
                out[f"runs/{suite_name}/{run_id}/{name}"] = (Path(path) / name).read_bytes()
    return out


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}caption{text-align:left;font-weight:bold}"
        "th,td{padding:2px 8px;border-bottom:1px solid #ddd}td.num{text-align:right}"
        "tr.published td{color:#555;font-style:italic}.runs{background:#f6f6f6;padding:.5em 1em}"
        "figure{display:inline-block;margin:1em;vertical-align:top}img{max-width:100%}")


def index_html(suite_name: str, caption: str, header: Sequence[str], tables: Sequence[str],
               figures: Sequence[str], files: Sequence[str]) -> str:
    """One self-contained page: which runs were counted, the tables, every figure (relative links)."""
    esc = html.escape
    figs = "\n".join(f'<figure><a href="{esc(f)}"><img src="{esc(f)}" alt="{esc(f)}"></a>'
                     f"<figcaption>{esc(f)}</figcaption></figure>" for f in figures)
    links = " · ".join(f'<a href="{esc(f)}">{esc(f)}</a>' for f in files if f != "index.html")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(suite_name)} report</title>'
            f"<style>{_CSS}</style></head><body>\n<h1>{esc(suite_name)}</h1>\n"
            f'<div class="runs">{"".join(f"<p>{esc(line)}</p>" for line in header)}</div>\n'
            f"<p>{esc(caption)}</p>\n" + "\n".join(tables) + f"\n<h2>Figures</h2>\n{figs}\n"
            f"<h2>Files</h2>\n<p>{links}</p>\n</body></html>\n")


def previous_files(out_dir: str | Path) -> set[str]:
    """The files the report previously written to ``out_dir`` listed in its report.json (empty if none)."""
    try:
        return set(json.loads((Path(out_dir) / MANIFEST).read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        return set()


def write_files(out_dir: str | Path, files: Mapping[str, str | bytes], manifest: Mapping[str, Any]) -> list[Path]:
    """Write ``files`` into ``out_dir`` (each atomically), then ``report.json`` (the manifest, last); remove
    the files the previous manifest listed that this report no longer writes. Other files stay."""
    out_dir = Path(out_dir)
    previous = previous_files(out_dir)
    written = [atomic_write_bytes(out_dir / name, data.encode() if isinstance(data, str) else data)
               for name, data in files.items()]
    written.append(atomic_write_bytes(out_dir / MANIFEST, (dump_json(manifest) + "\n").encode()))
    for name in previous - set(files) - {MANIFEST}:
        if name == Path(name).name and (out_dir / name).is_file():  # plain names only, never a path
            (out_dir / name).unlink()
    return written


def rerender_tex(suite, figures_dir: str | Path | None = None, many: int = 100, few: int = 20) -> list[Path]:
    """Re-render the LaTeX tables of a committed report from its CSVs (no runs, no training): summary.tex,
    or summary_<dataset>.tex + summary_by_run.tex for a ``columns_by`` suite. Returns the files written."""
    opts = report_options(suite)
    figures_dir = Path(figures_dir or report_dir(suite))
    caps = captions(suite.name, opts["title"], opts["metrics"], many, few)
    comment = (f"ltr report {suite.name}: re-rendered from the committed CSV",
               "needs \\usepackage{booktabs} and \\usepackage{graphicx}")
    texts: dict[str, str] = {}
    single = "summary_by_run" if opts["columns_by"] else "summary"
    shown, values, labels, metrics, n_ours, seeds = frames_from_csv(pd.read_csv(figures_dir / f"{single}.csv"))
    label = f"tab:{suite.name}" + ("-runs" if opts["columns_by"] else "")
    texts[f"{single}.tex"] = render_frames(shown, values, labels, metrics, n_ours, seeds, caps["summary"], label,
                                           comment=comment)["tex"]
    if opts["columns_by"]:
        pivots = pivots_from_csv(pd.read_csv(figures_dir / "summary.csv"))
        rendered = render_pivot_tables(pivots, "summary", caps["pivot"], f"tab:{suite.name}", comment=comment)
        texts.update({k: v for k, v in rendered.items() if k.endswith(".tex")})
    return [atomic_write_bytes(figures_dir / name, text.encode()) for name, text in texts.items()]
