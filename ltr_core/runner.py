"""Drive the notebooks headlessly with papermill: one run per params file, suites of runs, reports.

Rules from conventions.md §2 that this module enforces:

* the params are validated by :func:`ltr_core.config.from_params` *before* a kernel starts, so an
  unknown or mistyped key fails fast with the list of valid keys (papermill would only warn);
* params resolve through :mod:`ltr_core.params` (the one resolver: ``base`` layering, run names, paths
  relative to the current folder, results/figures/data under the project folder);
* papermill always gets an explicit kernel (``python3``), ``cwd`` = the project folder and absolute
  input/output paths, and injects only the keys the notebook declares (:mod:`ltr_core.nbexec`); the
  executed copy becomes ``<run_dir>/notebook.ipynb`` only once this process owns the run;
* a notebook that "succeeds" without writing its artefact (``results.json`` for a run) is a
  failed run; a dead kernel (OOM) is recorded as failed and a suite goes on with the next run;
* a run with a complete ``results.json`` of the same config hash is skipped; an interrupted one resumes.

A suite file (``params/suites/<name>.yaml``)::

    name: quickstart
    profiles:                       # dataset.ipynb once per params file
      - params/digits_lt/ce.yaml
    runs:
      - params: params/digits_lt/ce.yaml
        seeds: [0, 1, 2]
        set: {epochs: 30}           # optional overrides for this entry
    report:                         # optional; see ltr_core.report
      title: "CE on digits-LT"
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import params as params_mod
from .config import ConfigError, RunConfig, config_hash
from .methods import get_method
from .placement import _worker_init, visible_gpus, worker_env  # noqa: F401 (re-exported)
from .nbexec import KERNEL, RunFailed, ensure_kernel, execute_notebook, run_in_notebook  # noqa: F401 (re-exported)
from .results import RunDir, archive_run_dir
from .run_lock import held_elsewhere

# Overrides that say where/how a run executes (ltr_core.report's suite digest leaves them out; run names
# use ltr_core.params.semantic_keys of the run's method).
_PLACEMENT_KEYS = {"suite", "results_root", "run_dir", "figures_dir", "device", "interactive", "data_root",
                   "split_dir", "num_workers", "download", "cache_dir", "seed", "tensorboard",
                   "dist_nproc", "dist_backend", "dist_sync_bn", "dist_find_unused", "vlltr_text_root"}


@dataclass
class RunOutcome:
    run_id: str
    run_dir: Path
    status: str  # complete | skipped | failed
    seconds: float = 0.0
    error: str = ""


@dataclass
class Suite:
    name: str
    path: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def _abs(path: str | Path) -> Path:
    """``path``, relative ones under the project folder (:func:`ltr_core.params.find_project`)."""
    p = Path(path)
    return p if p.is_absolute() else (params_mod.find_project() / p)


def resolve_params(params_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], RunConfig]:
    """Load a params file, apply overrides, derive the run name, and validate strictly: the one resolver,
    :func:`ltr_core.params.resolve` (every key of the config, absolute paths, ``run_dir`` set)."""
    return params_mod.resolve(params_path, overrides)


def _execute(cfg: RunConfig, flat: dict[str, Any], run_dir: Path, use_notebook: bool) -> None:
    """torchrun (dist_nproc > 1), the method's notebook, or the method in this process."""
    method = get_method(cfg.run.method)
    if cfg.dist.dist_nproc > 1:  # torchrun DDP in a subprocess (ltr_core.launch); no notebook copy
        from .launch import launch_resolved

        launch_resolved(flat, log_path=run_dir / "stdout.log", echo=False)
    elif use_notebook:
        run_in_notebook(method.NOTEBOOK, run_dir, flat)
    else:
        method.run(cfg)
    results = RunDir(run_dir).read_results()
    if not results or results.get("status") != "complete":
        raise RunFailed(f"{method.NOTEBOOK} finished without writing a complete {run_dir / 'results.json'}")


def run_params(params_path: str | Path, overrides: dict[str, Any] | None = None, *, force: bool = False,
               use_notebook: bool = True) -> RunOutcome:
    """Run one params file through its method's notebook (or in-process); never raises on a failed run."""
    flat, cfg = resolve_params(params_path, overrides)
    run_dir = Path(flat["run_dir"])
    busy = held_elsewhere(run_dir)
    if busy:
        print(f"FAIL  {cfg.run_id}: {busy}", file=sys.stderr, flush=True)
        return RunOutcome(cfg.run_id, run_dir, "failed", 0.0, busy)
    if force:
        archived = archive_run_dir(run_dir, cfg.run.results_root)
        if archived:
            print(f"--force: moved the old run to {archived}", flush=True)
    if RunDir(run_dir).is_complete(config_hash(cfg)):
        print(f"skip  {cfg.run_id} (complete) {run_dir}", flush=True)
        return RunOutcome(cfg.run_id, run_dir, "skipped")
    print(f"run   {cfg.run_id} -> {run_dir}", flush=True)
    t0 = time.perf_counter()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _execute(cfg, flat, run_dir, use_notebook)
    except (RunFailed, Exception) as err:  # a suite goes on with its next run
        msg, log = (str(err) if isinstance(err, RunFailed) else f"{type(err).__name__}: {err}"), run_dir / "stdout.log"
        if not log.is_file():  # in-process (--no-notebook): the traceback is nowhere else
            traceback.print_exception(err, file=sys.stderr)
        print(f"FAIL  {cfg.run_id}: {msg}" + (f"\n      log: {log}" * log.is_file()), file=sys.stderr, flush=True)
        return RunOutcome(cfg.run_id, run_dir, "failed", time.perf_counter() - t0, msg)
    seconds = time.perf_counter() - t0
    top1 = RunDir(run_dir).read_results()["metrics"]["top1"]
    print(f"done  {cfg.run_id} top1={top1:.2f} ({seconds:.0f} s) -> {run_dir}", flush=True)
    return RunOutcome(cfg.run_id, run_dir, "complete", seconds)


def load_suite(path: str | Path) -> Suite:
    """Parse and check a suite file. Its params paths are relative to the suite file, else to its project
    folder (``params/digits_lt/ce.yaml`` in ``params/suites/``); they are stored absolute."""
    path = params_mod.cli_path(path)
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a suite file must be a mapping with name, runs, profiles, report")
    unknown = set(raw) - {"name", "runs", "profiles", "report", "description"}
    if unknown:
        raise ConfigError(f"{path}: unknown suite keys {sorted(unknown)}; valid: name, description, runs, profiles, report")
    suite = Suite(name=raw.get("name", path.stem), path=path, report=dict(raw.get("report", {}) or {}),
                  profiles=[params_mod.file_path(str(p), path) for p in raw.get("profiles", [])])
    for i, entry in enumerate(raw.get("runs", [])):
        if isinstance(entry, str):
            entry = {"params": entry}
        bad = set(entry) - {"params", "seeds", "set"}
        if bad or "params" not in entry:
            raise ConfigError(f"{path}: runs[{i}] must have 'params' and optional 'seeds', 'set'; got {sorted(entry)}")
        entry.setdefault("seeds", [0])
        entry.setdefault("set", {})
        entry["params"] = params_mod.file_path(str(entry["params"]), path)
        suite.runs.append(entry)
    return suite


def expand_runs(suite: Suite, overrides: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(params path, overrides) for every run x seed of the suite; validates each one up front. Entries
    that resolve to the same run (a repeated seed, the same file listed twice) are one job: a suite never
    starts one run twice."""
    jobs, seen = [], {}
    for entry in suite.runs:
        for seed in entry["seeds"]:
            ov = {**entry["set"], **(overrides or {}), "seed": seed, "suite": suite.name}
            flat, cfg = resolve_params(entry["params"], ov)  # fail before any kernel starts
            if flat["run_dir"] in seen:
                print(f"note  {suite.path}: {Path(entry['params']).name} seed {seed} is the run "
                      f"{cfg.run_id} listed before ({seen[flat['run_dir']]}); running it once", flush=True)
                continue
            seen[flat["run_dir"]] = f"{Path(entry['params']).name} seed {seed}"
            jobs.append((entry["params"], ov))
    return jobs


def _run_artifact_notebook(label: str, notebook: str, out_dir: Path, params: dict[str, Any],
                           artifact: Path) -> RunOutcome:
    """Execute ``notebook`` into ``out_dir``; the run failed unless it wrote ``artifact``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        from .nbexec import notebook_parameters

        execute_notebook(notebook, out_dir / "notebook.ipynb", notebook_parameters(notebook, params),
                         log_path=out_dir / "stdout.log")
        if not artifact.is_file():
            raise RunFailed(f"{notebook} finished without writing {artifact}")
    except RunFailed as err:
        print(f"FAIL  {label}: {err}", file=sys.stderr, flush=True)
        return RunOutcome(label, out_dir, "failed", time.perf_counter() - t0, str(err))
    print(f"done  {label} ({time.perf_counter() - t0:.0f} s) -> {artifact.parent}", flush=True)
    return RunOutcome(label, out_dir, "complete", time.perf_counter() - t0)


def run_profile(params_path: str, overrides: dict[str, Any], use_notebook: bool = True) -> RunOutcome:
    """dataset.ipynb for one params file: class-count profile, shot groups, sample grid (``use_notebook``
    False: the same files written in-process by :func:`write_profile`, no papermill or Jupyter needed)."""
    params, cfg = resolve_params(params_path, overrides)
    out_dir = Path(params["results_root"]) / cfg.run.suite / f"profile-{cfg.data.dataset}"
    params["run_dir"] = str(out_dir)
    label = f"profile-{cfg.data.dataset}"
    if use_notebook:
        return _run_artifact_notebook(label, "dataset.ipynb", out_dir, params, out_dir / "profile.json")
    t0 = time.perf_counter()
    try:
        write_profile(cfg, out_dir)
    except Exception as err:  # a suite goes on with its runs
        print(f"FAIL  {label}: {err}", file=sys.stderr, flush=True)
        return RunOutcome(label, out_dir, "failed", time.perf_counter() - t0, str(err))
    print(f"done  {label} ({time.perf_counter() - t0:.0f} s) -> {out_dir}", flush=True)
    return RunOutcome(label, out_dir, "complete", time.perf_counter() - t0)


def write_profile(cfg: RunConfig, out_dir: Path) -> dict:
    """What dataset.ipynb writes, in this process: the class-count profile and sample-grid figures under
    the run's figures folder, ``profile.json`` in ``out_dir`` (written last)."""
    from . import data, plots, report

    lt = data.build_data(cfg.data)
    profile = report.dataset_profile(lt, cfg.data.shot_many, cfg.data.shot_few)
    plots.set_style()
    fig = plots.plot_class_profile(lt.class_counts, cfg.data.shot_many, cfg.data.shot_few, lt.class_names)
    plots.save(fig, cfg.figures_path(), f"dataset_{cfg.data.dataset}_profile")
    if lt.train.images is not None:
        fig = plots.plot_sample_grid(lt.train.images, lt.train.labels, lt.class_names, per_class=8)
        plots.save(fig, cfg.figures_path(), f"dataset_{cfg.data.dataset}_samples")
    RunDir(out_dir).write_json("profile.json", profile)
    return profile


def job_parents(jobs: list[tuple[str, dict[str, Any]]]) -> list[int | None]:
    """For each job, the index of the job of the list whose run its ``init_run`` names (by run id or run
    directory), else None: that job must finish first."""
    run_ids, inits = [], []
    for path, ov in jobs:
        _, cfg = resolve_params(path, ov)
        run_ids.append(cfg.run_id)
        inits.append(Path(cfg.run.init_run.format(seed=cfg.run.seed)).name if cfg.run.init_run else "")
    index = {run_id: i for i, run_id in enumerate(run_ids)}
    return [index.get(init) if init and index.get(init) != i else None for i, init in enumerate(inits)]


def _run_parallel(jobs: list[tuple[str, dict[str, Any]]], workers: int, use_notebook: bool,
                  profiles: list[tuple[str, dict[str, Any]]] = ()) -> list[RunOutcome]:
    """Every job, at most ``workers`` at a time in spawned processes, each with cores // workers BLAS/OpenMP
    threads unless OMP_NUM_THREADS is set. A job starts once the job it starts from has finished; ready
    stage-2 jobs go first, then the others in the suite's order; ``profiles`` (dataset.ipynb) run
    alongside. Outcomes come back in the order profiles, then jobs."""
    import concurrent.futures as cf
    import multiprocessing as mp

    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // workers))
    gpus = visible_gpus()
    if gpus:
        print(f"workers: {workers} on GPUs {','.join(gpus)} round-robin "
              f"({-(-workers // len(gpus))} per GPU at most)", flush=True)
    tasks = [(run_profile, path, ov, {"use_notebook": use_notebook}) for path, ov in profiles]
    tasks += [(run_params, path, ov, {"use_notebook": use_notebook}) for path, ov in jobs]
    parents = [None] * len(profiles) + [None if p is None else p + len(profiles) for p in job_parents(jobs)]
    waiting, running, outcomes = list(range(len(tasks))), {}, {}
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                initargs=(threads, gpus, ctx.Value("i", 0))) as pool:
        while waiting or running:
            ready = [i for i in waiting if parents[i] is None or parents[i] in outcomes]
            ready = ready or ([] if running else waiting[:1])  # a cycle of init_runs: run in order, it fails clearly
            ready.sort(key=lambda i: (parents[i] is None, i))
            for i in ready[:max(0, workers - len(running))]:
                waiting.remove(i)
                fn, path, ov, kwargs = tasks[i]
                running[pool.submit(fn, path, ov, **kwargs)] = i
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                outcomes[running.pop(fut)] = fut.result()
    return [outcomes[i] for i in range(len(tasks))]


def _run_packed(jobs: list[tuple[str, dict[str, Any]]]) -> tuple[list[RunOutcome], list[tuple[str, dict[str, Any]]]]:
    """``--pack``: the jobs that train as one packed network (ltr_core.packing; in-process, bit for bit the lone
    runs on the CPU) -> their outcomes and the jobs left to run one by one (a group that fails to pack runs so)."""
    from . import packing

    cfgs = [resolve_params(path, ov)[1] for path, ov in jobs]
    outcomes, left = [], set(range(len(jobs)))
    for group in packing.packable_groups(cfgs):
        todo = [i for i in group if not RunDir(cfgs[i].run_path()).is_complete(config_hash(cfgs[i]))]
        if len(todo) < 2:
            continue  # complete ones are skipped below; one alone runs alone
        print(f"pack  {len(todo)} runs as one network: {', '.join(cfgs[i].run_id for i in todo)}", flush=True)
        t0 = time.perf_counter()
        try:
            results = packing.train_packed([cfgs[i] for i in todo])
        except Exception as err:  # e.g. a loss that wants features: these run one by one
            print(f"      not packed ({err}); they run one by one", file=sys.stderr, flush=True)
            continue
        seconds = time.perf_counter() - t0
        for i, res in zip(todo, results):
            run_dir = cfgs[i].run_path()
            print(f"done  {cfgs[i].run_id} top1={res['metrics']['top1']:.2f} (packed, {seconds:.0f} s) -> {run_dir}",
                  flush=True)
            outcomes.append(RunOutcome(cfgs[i].run_id, run_dir, "complete", seconds))
        left -= set(todo)
    return outcomes, [jobs[i] for i in sorted(left)]


def run_suite(suite_path: str | Path, overrides: dict[str, Any] | None = None, *, report: bool = True,
              use_notebook: bool = True, workers: int = 1, pack: bool | None = None) -> list[RunOutcome]:
    """Profiles, every run x seed (skipping complete ones), then the report notebook.

    ``pack`` first trains the runs that differ only in seed, loss settings, head or sampler (ResNet-32 ERM)
    as one packed network each, in this process (ltr_core.packing); None: only where it pays, in-process runs on
    a CUDA machine (a 2-core CPU measured 0.93x, figures/perf/packing.md).

    ``workers`` > 1 runs independent runs concurrently on this machine (stage-2 runs after the runs
    they start from); the default runs them one after another in the suite's order.
    """
    suite = load_suite(suite_path)
    jobs = expand_runs(suite, overrides)
    profiles = [(params_path, {**(overrides or {}), "suite": suite.name}) for params_path in suite.profiles]
    outcomes = []
    if pack is None:
        pack = not use_notebook and bool(visible_gpus())
    if pack:
        outcomes, jobs = _run_packed(jobs)
    if workers > 1:
        outcomes.extend(_run_parallel(jobs, workers, use_notebook, profiles))
    else:
        outcomes.extend(run_profile(*profile, use_notebook=use_notebook) for profile in profiles)
        for params_path, ov in jobs:
            outcomes.append(run_params(params_path, ov, use_notebook=use_notebook))
    if report:
        outcomes.append(run_report(suite_path, overrides, use_notebook=use_notebook))
    failed = [o for o in outcomes if o.status == "failed"]
    print(f"suite {suite.name}: {len(outcomes) - len(failed)} ok, {len(failed)} failed", flush=True)
    return outcomes


def run_report(suite_path: str | Path, overrides: dict[str, Any] | None = None, *, out: str | Path | None = None,
               strict: bool = False, use_notebook: bool = True) -> RunOutcome:
    """report.ipynb over exactly the suite's runs (:mod:`ltr_core.report`): tables, figures and index.html in
    :func:`ltr_core.report.report_dir` (``figures/<suite>/``; ``results/<suite>-<digest>/report/`` for
    overrides that change what runs compute; ``out``). Prints which runs were counted and which not
    (missing, stale, ...); ``strict`` makes a report with an uncounted run a failed one; ``use_notebook``
    False builds it in this process (:func:`ltr_core.report.build_suite_report`, no papermill or Jupyter)."""
    from .report import MANIFEST, override_digest, report_dir

    suite = load_suite(suite_path)
    ov = dict(overrides or {})
    results_root = _abs(ov.get("results_root", "results"))
    out_dir = _abs(report_dir(suite, ov, out, results_root))
    params = {"suite_file": str(suite.path), "results_root": str(results_root), "figures_dir": str(out_dir),
              "overrides": ov}
    digest = override_digest(ov)
    started = time.time()
    if use_notebook:
        outcome = _run_artifact_notebook(f"report-{suite.name}", "report.ipynb",
                                         results_root / suite.name / (f"report-{digest}" if digest else "report"),
                                         params, out_dir / MANIFEST)
    else:
        outcome = _report_in_process(suite, results_root, out_dir, ov)
    if outcome.status != "complete":
        return outcome
    manifest = json.loads((out_dir / MANIFEST).read_text())
    if (out_dir / MANIFEST).stat().st_mtime < started - 1:
        outcome.status, outcome.error = "failed", f"report.ipynb did not rewrite {out_dir / MANIFEST}"
    for line in manifest.get("header", []):
        print(f"      {line}", flush=True)
    print(f"      report: {out_dir / 'index.html'}", flush=True)
    if strict and manifest.get("collection", {}).get("problems"):
        outcome.status, outcome.error = "failed", "--strict: some expected runs were not counted (listed above)"
        print(f"FAIL  report-{suite.name}: {outcome.error}", file=sys.stderr, flush=True)
    return outcome


def _report_in_process(suite: Suite, results_root: Path, out_dir: Path, overrides: dict[str, Any]) -> RunOutcome:
    """What report.ipynb does, in this process (``ltr suite/report --no-notebook``)."""
    from .report import build_suite_report

    label, t0 = f"report-{suite.name}", time.perf_counter()
    try:
        build_suite_report(suite, results_root, out_dir, overrides=overrides)
    except Exception as err:  # malformed results, no run to report: the previous report stays as it was
        print(f"FAIL  {label}: {err}", file=sys.stderr, flush=True)
        return RunOutcome(label, out_dir, "failed", time.perf_counter() - t0, str(err))
    print(f"done  {label} ({time.perf_counter() - t0:.0f} s) -> {out_dir}", flush=True)
    return RunOutcome(label, out_dir, "complete", time.perf_counter() - t0)
