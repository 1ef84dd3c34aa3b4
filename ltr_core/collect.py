"""Collecting runs into a DataFrame: exactly the runs of a suite, or every ``results.json`` under a path.

A suite report counts exactly the runs its suite file resolves to *today*: every run x seed of the
suite (:func:`ltr_core.runner.expand_runs`, with the same overrides) gives a run directory and a
config hash (:func:`ltr_core.config.config_hash`); :func:`collect_suite` reads exactly those
directories, never a glob of the suite folder. An expected run is counted only when its
``results.json`` is complete and was produced by that config hash; otherwise it is listed as

* ``missing``: no run directory or no ``results.json`` yet;
* ``unreadable``: ``results.json`` is not valid JSON (truncated, e.g. a copy cut short);
* ``incomplete``: its status is not ``"complete"`` (running, failed);
* ``stale``: it was produced by another config (the params file, the suite's ``set`` or the code's
  defaults changed since; re-run it).

Folders of the suite folder that are no run of the suite are never counted and are listed as
``archived`` (``<run>.old-<time>/``, left by ``ltr run --force``) or ``stray`` (a run of an older
suite file, of other overrides, or made by hand). A complete ``results.json`` that parses but
breaks the schema (missing keys, wrong types) is an error naming the file (:class:`MalformedResults`),
raised before anything is written.

:func:`collect` (files, directories, globs) is the ad-hoc collector the method notebooks use on
their own run; it leaves archived folders out too.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .results import REQUIRED_METRIC_KEYS, RunDir, missing_result_keys

BASE_COLUMNS = ("run_id", "dataset", "method", "seed", "name", "config_hash", "status")
TAIL_COLUMNS = ("train_seconds", "images_per_second", "device", "path")
EXTRA_SCALARS = ("loss", "model", "eval_split", "epochs", "selection", "stage")
# <run>.old-%Y%m%d-%H%M%S (ltr run --force, older versions) and <results_root>/.archive/ (results.archive_run_dir)
ARCHIVED = re.compile(r"\.old-\d{8}-\d{6}(~\d+)?$|^\.archive$")


class MalformedResults(ValueError):
    """A complete results.json that parses but does not follow the schema (the message names the file)."""


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies below it (reports are committed), else as is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def is_archived(path: str | os.PathLike) -> bool:
    """True for a folder moved aside by ``ltr run --force`` (or anything inside one)."""
    return any(ARCHIVED.search(part) for part in Path(path).parts)


# ----------------------------------------------------------------------------------------------
# rows


def run_name(results: Mapping[str, Any]) -> str:
    """``results["name"]``, else the <name> part of ``<dataset>-<method>-<name>-s<seed>``, else the run id."""
    if results.get("name"):
        return str(results["name"])
    run_id = str(results.get("run_id", ""))
    prefix = f"{results.get('dataset')}-{results.get('method')}-"
    suffix = f"-s{results.get('seed')}"
    if run_id.startswith(prefix) and run_id.endswith(suffix) and len(run_id) > len(prefix) + len(suffix):
        return run_id[len(prefix):-len(suffix)]
    return run_id


def _flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars as they are (null -> NaN); one level of nested dicts as ``<key>_<sub>``; lists dropped."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for sub, v in value.items():
                if not isinstance(v, (Mapping, list)):
                    flat[f"{key}_{sub}"] = np.nan if v is None else v
        elif not isinstance(value, list):
            flat[key] = np.nan if value is None else value
    return flat


def evaluated_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` that carry a test evaluation (a finite top-1), by epoch ascending
    (a later record of the same epoch wins; a torn last line of a killed run is skipped)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        top1 = record.get("top1") if isinstance(record, dict) else None
        if isinstance(top1, (int, float)) and np.isfinite(top1) and isinstance(record.get("epoch"), int):
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def best_evaluated_top1(run_dir: Path) -> float:
    """The highest top-1 over the epochs ``metrics.jsonl`` evaluated (NaN without one): selected on the test
    split, as LDAM-DRW's code reports, so a column for comparison with such numbers, never our result."""
    evaluated = evaluated_epochs(run_dir)
    return max(r["top1"] for r in evaluated) if evaluated else np.nan


def _row(results: Mapping[str, Any], path: Path) -> dict[str, Any]:
    row = {k: results.get(k) for k in BASE_COLUMNS}
    row["name"] = run_name(results)
    row.update({k: results[k] for k in EXTRA_SCALARS if k in results})
    metrics = results.get("metrics")
    row.update(_flatten_metrics(metrics if isinstance(metrics, Mapping) else {}))
    row["best_eval_top1"] = best_evaluated_top1(path.parent)
    row.update({k: results.get(k) for k in TAIL_COLUMNS})
    row["path"] = str(path.parent)
    return row


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in (*BASE_COLUMNS, *TAIL_COLUMNS):
        if col not in df.columns:
            df[col] = pd.Series(dtype=object)
    order = [*BASE_COLUMNS, *[c for c in df.columns if c not in BASE_COLUMNS and c not in TAIL_COLUMNS],
             *TAIL_COLUMNS]
    df = df[order]
    if len(df):
        df = df.sort_values(["dataset", "method", "name", "seed"], kind="stable", na_position="last")
    return df.reset_index(drop=True)


def schema_errors(res: Any) -> list[str]:
    """What makes a parsed *complete* results.json unusable for a report (empty list: fine)."""
    if not isinstance(res, Mapping):
        return [f"the top level is a {type(res).__name__}, not an object"]
    errors = [f"missing {k}" for k in missing_result_keys(res)]
    metrics = res.get("metrics")
    if isinstance(metrics, Mapping):
        errors += [f"metrics.{k} is {metrics[k]!r}, not a number or null" for k in REQUIRED_METRIC_KEYS
                   if k in metrics and not (metrics[k] is None or _is_number(metrics[k]))]
    elif "metrics" in res:
        errors.append("metrics is not an object")
    for key in ("per_class", "class_counts"):
        value = res.get(key)
        if key in res and not (isinstance(value, list) and all(v is None or _is_number(v) for v in value)):
            errors.append(f"{key} is not a list of numbers")
    if (isinstance(res.get("per_class"), list) and isinstance(res.get("class_counts"), list)
            and len(res["per_class"]) != len(res["class_counts"])):
        errors.append(f"per_class has {len(res['per_class'])} entries, class_counts {len(res['class_counts'])}")
    if "shot_groups" in res and not isinstance(res["shot_groups"], Mapping):
        errors.append("shot_groups is not an object")
    if "seed" in res and not (isinstance(res["seed"], int) and not isinstance(res["seed"], bool)):
        errors.append(f"seed is {res['seed']!r}, not an integer")
    for key in ("run_id", "dataset", "method"):
        if key in res and not isinstance(res[key], str):
            errors.append(f"{key} is not a string")
    return errors


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------------------
# exactly the runs of a suite


@dataclass(frozen=True)
class ExpectedRun:
    """A run directory a report should count; ``config_hash`` None accepts any complete run."""

    run_id: str
    path: Path
    config_hash: str | None = None


@dataclass(frozen=True)
class Problem:
    """An expected run that is not counted, or a folder of the suite folder that is no run of the suite."""

    run_id: str
    path: Path
    reason: str  # missing | unreadable | incomplete | stale | archived | stray
    detail: str = ""

    def line(self) -> str:
        return f"{self.run_id}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class SuiteRuns:
    """What :func:`collect_suite` found: the counted runs (``frame``, ``results``) and what it left out."""

    suite: str
    folder: Path | None
    expected: list[ExpectedRun]
    frame: pd.DataFrame
    results: dict[str, dict] = field(default_factory=dict)  # run directory (str) -> parsed results.json
    problems: list[Problem] = field(default_factory=list)  # expected runs not counted
    not_counted: list[Problem] = field(default_factory=list)  # archived and stray folders

    @property
    def n_counted(self) -> int:
        return len(self.frame)

    def header_lines(self) -> list[str]:
        """Plain-text lines for the top of a report (and the terminal): counted, not counted, left out."""
        where = f" in {shown_path(self.folder)}" if self.folder else ""
        lines = [f"Runs: {self.n_counted} of {len(self.expected)} expected runs of suite {self.suite} counted{where}"
                 + (" (every expected run is complete and matches today's config)." if not self.problems else ".")]
        if self.problems:
            lines.append(f"Not counted ({len(self.problems)}): " + "; ".join(p.line() for p in self.problems) + ".")
        if self.not_counted:
            lines.append(f"Left out, not runs of the suite ({len(self.not_counted)}): "
                         + "; ".join(p.line() for p in self.not_counted) + ".")
        return lines

    def to_json(self) -> dict[str, Any]:
        def item(p: Problem) -> dict[str, str]:
            return {"run_id": p.run_id, "path": shown_path(p.path), "reason": p.reason, "detail": p.detail}

        return {"suite": self.suite, "folder": shown_path(self.folder) if self.folder else None,
                "expected": len(self.expected), "counted": [str(r) for r in self.frame["run_id"]],
                "problems": [item(p) for p in self.problems], "not_counted": [item(p) for p in self.not_counted]}


def suite_expected_runs(suite, overrides: Mapping[str, Any] | None = None) -> list[ExpectedRun]:
    """Run id, run directory and config hash of every run x seed of ``suite`` (a :class:`runner.Suite`)
    as ``ltr suite`` with these ``overrides`` resolves them now (each run once, in the suite's order)."""
    from .config import config_hash
    from .runner import expand_runs, resolve_params

    out: dict[str, ExpectedRun] = {}
    for params_path, ov in expand_runs(suite, dict(overrides or {})):
        params, cfg = resolve_params(params_path, ov)
        out.setdefault(params["run_dir"], ExpectedRun(cfg.run_id, Path(params["run_dir"]), config_hash(cfg)))
    return list(out.values())


def folder_expected_runs(folder: str | os.PathLike) -> list[ExpectedRun]:
    """Every run folder directly under ``folder`` (one with a results.json), archived ones left out;
    for reports without a suite file (notebooks, tests): any complete run is accepted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [ExpectedRun(p.name, p) for p in sorted(folder.iterdir())
            if p.is_dir() and not is_archived(p) and (p / "results.json").exists()]


def collect_suite(expected: Sequence[ExpectedRun], folder: str | os.PathLike | None = None,
                  suite: str = "") -> SuiteRuns:
    """Read exactly the ``expected`` run directories (see the module docstring for what is counted);
    list the archived and stray run folders of ``folder`` (the suite folder). Raises
    :class:`MalformedResults` naming the file for a complete results.json that breaks the schema.
    Intermediate-stage results (a ``stage`` key) are never counted."""
    rows, results, problems = [], {}, []
    for run in expected:
        path = run.path / "results.json"
        if not path.is_file():
            problems.append(Problem(run.run_id, run.path, "missing",
                                    "no results.json" if run.path.is_dir() else "no run directory"))
            continue
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            problems.append(Problem(run.run_id, run.path, "unreadable",
                                    f"{shown_path(path)}: {type(err).__name__}: {err}"))
            continue
        if not isinstance(res, dict):
            raise MalformedResults(f"{path}: the top level is a {type(res).__name__}, not an object")
        if res.get("status") != "complete":
            problems.append(Problem(run.run_id, run.path, "incomplete", f"status {res.get('status')!r}"))
            continue
        if run.config_hash is not None and res.get("config_hash") != run.config_hash:
            problems.append(Problem(run.run_id, run.path, "stale",
                                    f"config hash {res.get('config_hash')}, the suite resolves to {run.config_hash}"))
            continue
        errors = schema_errors(res)
        if errors:
            raise MalformedResults(f"{path}: malformed results.json: " + "; ".join(errors))
        if res.get("stage"):
            continue
        rows.append(_row(res, path))
        results[str(run.path)] = res
    found = SuiteRuns(suite, Path(folder) if folder else None, list(expected), _frame(rows), results, problems)
    if folder is not None and Path(folder).is_dir():
        wanted = {Path(os.path.abspath(r.path)) for r in expected}
        for p in sorted(Path(folder).iterdir()):
            if not p.is_dir() or Path(os.path.abspath(p)) in wanted:
                continue
            if is_archived(p):
                found.not_counted.append(Problem(p.name, p, "archived", "moved aside by ltr run --force"))
            elif (p / "results.json").exists():
                found.not_counted.append(Problem(p.name, p, "stray", "not one of the runs the suite resolves "
                                                                     "to now (params, seeds, overrides)"))
    return found


# ----------------------------------------------------------------------------------------------
# ad hoc: every results.json under some paths


def _result_files(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """results.json files named by files, directories (searched recursively, archived runs left out) or globs."""
    items = [paths_or_globs] if isinstance(paths_or_globs, (str, os.PathLike)) else list(paths_or_globs)
    found: dict[Path, None] = {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            matches = [m for m in sorted(p.glob("**/results.json")) if not is_archived(m.relative_to(p))]
        elif p.is_file():
            matches = [p]
        else:
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            matches = [m / "results.json" if m.is_dir() else m for m in matches]
        for m in matches:
            if m.is_file():
                found[m.resolve()] = None
    return list(found)


def collect(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike], *,
            include_incomplete: bool = False, include_stages: bool = False) -> pd.DataFrame:
    """One row per results.json: run_id, dataset, method, seed, name, config_hash, status, [loss, model,
    eval_split, epochs, selection], every metrics key (nested dicts flattened as ``group_sizes_many``),
    train_seconds, images_per_second, device, path (the run directory).

    Accepts files, run/suite directories (searched recursively; ``.old-<time>`` archives left out) and
    glob patterns (``**`` allowed). Runs whose status is not "complete" (or whose results.json does not
    parse) are dropped with a warning unless ``include_incomplete``. Results of intermediate stages of
    multi-stage runs (a ``stage`` key, see :mod:`ltr_core.stages`) are left out unless ``include_stages``.
    Null metrics (empty groups) are NaN. Rows are sorted by dataset, method, name, seed. A suite's
    report uses :func:`collect_suite` instead (exactly the suite's runs).
    """
    rows, skipped = [], []
    for path in _result_files(paths_or_globs):
        res = RunDir(path.parent).read_results()
        if res is None:
            skipped.append(f"{path} (unreadable)")
            if include_incomplete:
                rows.append({"status": "unreadable", "path": str(path.parent)})
            continue
        if res.get("stage") and not include_stages:
            continue
        if res.get("status") != "complete":
            skipped.append(f"{path} (status {res.get('status')!r})")
            if not include_incomplete:
                continue
        rows.append(_row(res, path))
    if skipped and not include_incomplete:
        warnings.warn(f"collect: skipped {len(skipped)} incomplete run(s): " + "; ".join(skipped), stacklevel=2)
    return _frame(rows)
