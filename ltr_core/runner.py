"""Drive the notebooks headlessly with papermill: one run per params file, suites of runs, reports.

Rules from conventions.md §2 that this module enforces:

* the params are validated by :func:`ltr_core.config.from_params` *before* a kernel starts, so an
  unknown or mistyped key fails fast with the list of valid keys (papermill would only warn);
* papermill always gets an explicit kernel (``python3``), ``cwd`` = the repository root and
  absolute input/output paths;
* a notebook that "succeeds" without writing its artefact (``results.json`` for a run) is a
  failed run; a dead kernel (OOM) is recorded as failed and a suite goes on with the next run;
* a run whose directory already holds a complete ``results.json`` for the same config hash is
  skipped; an interrupted one resumes from its checkpoint (the engine does that).

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

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, RunConfig, config_hash, from_params, load_params, to_flat
from .methods import get_method
from .results import RunDir

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL = "python3"

# Overrides that say where/how a run executes; they do not change the run's name.
_PLACEMENT_KEYS = {"suite", "results_root", "run_dir", "figures_dir", "device", "interactive", "data_root",
                   "split_dir", "num_workers", "download", "cache_dir", "seed", "tensorboard",
                   "dist_nproc", "dist_backend", "dist_sync_bn", "dist_find_unused", "vlltr_text_root"}


class RunFailed(RuntimeError):
    """A notebook raised, its kernel died, or it finished without writing its artefact."""


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
    p = Path(path)
    return p if p.is_absolute() else (REPO_ROOT / p)


def resolve_params(params_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], RunConfig]:
    """Load a params file, apply overrides, derive the run name, and validate strictly.

    The run name is the params file's stem (or its ``name`` key); overrides that change what is
    computed append a short hash of themselves, so ``--set epochs=2`` never lands in the directory
    of the full run.
    """
    path = _abs(params_path)
    params = load_params(path)
    params.setdefault("name", path.stem)
    semantic = {k: v for k, v in (overrides or {}).items() if k not in _PLACEMENT_KEYS}
    if semantic:
        digest = hashlib.sha1(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:6]
        params["name"] = f"{params['name']}-{digest}"
    params.update(overrides or {})
    params.setdefault("interactive", False)  # one log line per epoch in executed notebooks
    params["results_root"] = str(_abs(params.get("results_root", "results")))
    cfg = from_params(params)
    params["run_dir"] = str(_abs(cfg.run_path()))
    if not params.get("figures_dir"):
        params["figures_dir"] = str(_abs(cfg.figures_path()))
    cfg = from_params(params)
    # Inject every key, not only those in the file: a notebook's parameters-cell defaults (tuned for
    # interactive use) must never leak into a run that the params file does not mention.
    return to_flat(cfg), cfg


def _archive(run_dir: Path) -> Path | None:
    if not run_dir.exists():
        return None
    dest = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(run_dir), dest)
    return dest


class _DropUnknownParameterWarnings(logging.Filter):
    """papermill warns for every injected key its parameters cell does not list; we inject the whole
    resolved config on purpose (and check unknown keys strictly ourselves), so those lines are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Passed unknown parameter" not in record.getMessage()


def execute_notebook(notebook: str | Path, output: Path, parameters: dict[str, Any], log_path: Path | None = None) -> None:
    """papermill with an explicit kernel, cwd = repo root, absolute paths; raises RunFailed."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb = _abs(Path("notebooks") / notebook) if not Path(notebook).is_absolute() else Path(notebook)
    if not nb.is_file():
        raise RunFailed(f"notebook not found: {nb}")
    output.parent.mkdir(parents=True, exist_ok=True)
    handler = None
    pm_logger = logging.getLogger("papermill")
    if not any(isinstance(f, _DropUnknownParameterWarnings) for f in pm_logger.filters):
        pm_logger.addFilter(_DropUnknownParameterWarnings())
    if log_path is not None:
        handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter("%(message)s"))
        pm_logger.addHandler(handler)
        pm_logger.setLevel(logging.INFO)
    try:
        pm.execute_notebook(str(nb), str(output), parameters=parameters, kernel_name=KERNEL, cwd=str(REPO_ROOT),
                            progress_bar=False, log_output=log_path is not None, start_timeout=300)
    except PapermillExecutionError as err:
        raise RunFailed(f"{nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}") from None
    except Exception as err:  # DeadKernelError (OOM), kernel start failures
        name = type(err).__name__
        hint = " (kernel died: out of memory?)" if "DeadKernel" in name else ""
        raise RunFailed(f"{nb.name}: {name}: {err}{hint}") from None
    finally:
        if handler is not None:
            pm_logger.removeHandler(handler)
            handler.close()


def run_params(params_path: str | Path, overrides: dict[str, Any] | None = None, *, force: bool = False,
               use_notebook: bool = True) -> RunOutcome:
    """Run one params file through its method's notebook (or in-process); never raises on a failed run."""
    params, cfg = resolve_params(params_path, overrides)
    run_dir = Path(params["run_dir"])
    if force:
        archived = _archive(run_dir)
        if archived:
            print(f"--force: moved the old run to {archived}", flush=True)
    rd = RunDir(run_dir)
    if rd.is_complete(config_hash(cfg)):
        print(f"skip  {cfg.run_id} (complete)", flush=True)
        return RunOutcome(cfg.run_id, run_dir, "skipped")
    method = get_method(cfg.run.method)
    print(f"run   {cfg.run_id} -> {run_dir}", flush=True)
    t0 = time.perf_counter()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.dist.dist_nproc > 1:  # torchrun DDP in a subprocess (ltr_core.launch); no notebook copy
            from .launch import launch_resolved

            launch_resolved(params, log_path=run_dir / "stdout.log", echo=False)
        elif use_notebook:
            execute_notebook(method.NOTEBOOK, run_dir / "notebook.ipynb", params, log_path=run_dir / "stdout.log")
        else:
            method.run(cfg)
        results = rd.read_results()
        if not results or results.get("status") != "complete":
            raise RunFailed(f"{method.NOTEBOOK} finished without writing a complete {run_dir / 'results.json'}")
    except (RunFailed, Exception) as err:  # a suite goes on with its next run
        msg = str(err)
        print(f"FAIL  {cfg.run_id}: {msg}\n      log: {run_dir / 'stdout.log'}", file=sys.stderr, flush=True)
        return RunOutcome(cfg.run_id, run_dir, "failed", time.perf_counter() - t0, msg)
    seconds = time.perf_counter() - t0
    print(f"done  {cfg.run_id} top1={results['metrics']['top1']:.2f} ({seconds:.0f} s)", flush=True)
    return RunOutcome(cfg.run_id, run_dir, "complete", seconds)


def load_suite(path: str | Path) -> Suite:
    """Parse and check a suite file; every params file it names must exist and validate."""
    path = _abs(path)
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a suite file must be a mapping with name, runs, profiles, report")
    unknown = set(raw) - {"name", "runs", "profiles", "report", "description"}
    if unknown:
        raise ConfigError(f"{path}: unknown suite keys {sorted(unknown)}; valid: name, description, runs, profiles, report")
    suite = Suite(name=raw.get("name", path.stem), path=path, profiles=list(raw.get("profiles", [])),
                  report=dict(raw.get("report", {}) or {}))
    for i, entry in enumerate(raw.get("runs", [])):
        if isinstance(entry, str):
            entry = {"params": entry}
        bad = set(entry) - {"params", "seeds", "set"}
        if bad or "params" not in entry:
            raise ConfigError(f"{path}: runs[{i}] must have 'params' and optional 'seeds', 'set'; got {sorted(entry)}")
        entry.setdefault("seeds", [0])
        entry.setdefault("set", {})
        suite.runs.append(entry)
    return suite


def expand_runs(suite: Suite, overrides: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(params path, overrides) for every run x seed of the suite; validates each one up front."""
    jobs = []
    for entry in suite.runs:
        for seed in entry["seeds"]:
            ov = {**entry["set"], **(overrides or {}), "seed": seed, "suite": suite.name}
            resolve_params(entry["params"], ov)  # fail before any kernel starts
            jobs.append((entry["params"], ov))
    return jobs


def _run_artifact_notebook(label: str, notebook: str, out_dir: Path, params: dict[str, Any],
                           artifact: Path) -> RunOutcome:
    """Execute ``notebook`` into ``out_dir``; the run failed unless it wrote ``artifact``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        execute_notebook(notebook, out_dir / "notebook.ipynb", params, log_path=out_dir / "stdout.log")
        if not artifact.is_file():
            raise RunFailed(f"{notebook} finished without writing {artifact}")
    except RunFailed as err:
        print(f"FAIL  {label}: {err}", file=sys.stderr, flush=True)
        return RunOutcome(label, out_dir, "failed", time.perf_counter() - t0, str(err))
    print(f"done  {label} ({time.perf_counter() - t0:.0f} s) -> {artifact.parent}", flush=True)
    return RunOutcome(label, out_dir, "complete", time.perf_counter() - t0)


def run_profile(params_path: str, overrides: dict[str, Any]) -> RunOutcome:
    """dataset.ipynb for one params file: class-count profile, shot groups, sample grid."""
    params, cfg = resolve_params(params_path, overrides)
    out_dir = Path(params["results_root"]) / cfg.run.suite / f"profile-{cfg.data.dataset}"
    params["run_dir"] = str(out_dir)
    return _run_artifact_notebook(f"profile-{cfg.data.dataset}", "dataset.ipynb", out_dir, params,
                                  out_dir / "profile.json")


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


def _worker_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the papermill kernels this worker starts


def _run_parallel(jobs: list[tuple[str, dict[str, Any]]], workers: int, use_notebook: bool,
                  profiles: list[tuple[str, dict[str, Any]]] = ()) -> list[RunOutcome]:
    """Every job, at most ``workers`` at a time in spawned processes, each with cores // workers BLAS/OpenMP
    threads unless OMP_NUM_THREADS is set. A job starts once the job it starts from has finished; ready
    stage-2 jobs go first, then the others in the suite's order; ``profiles`` (dataset.ipynb) run
    alongside. Outcomes come back in the order profiles, then jobs."""
    import concurrent.futures as cf
    import multiprocessing as mp

    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // workers))
    tasks = [(run_profile, path, ov, {}) for path, ov in profiles]
    tasks += [(run_params, path, ov, {"use_notebook": use_notebook}) for path, ov in jobs]
    parents = [None] * len(profiles) + [None if p is None else p + len(profiles) for p in job_parents(jobs)]
    waiting, running, outcomes = list(range(len(tasks))), {}, {}
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                initargs=(threads,)) as pool:
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


def run_suite(suite_path: str | Path, overrides: dict[str, Any] | None = None, *, report: bool = True,
              use_notebook: bool = True, workers: int = 1) -> list[RunOutcome]:
    """Profiles, every run x seed (skipping complete ones), then the report notebook.

    ``workers`` > 1 runs independent runs concurrently on this machine (stage-2 runs after the runs
    they start from); the default runs them one after another in the suite's order.
    """
    suite = load_suite(suite_path)
    jobs = expand_runs(suite, overrides)
    profiles = [(params_path, {**(overrides or {}), "suite": suite.name}) for params_path in suite.profiles]
    outcomes = []
    if workers > 1:
        outcomes.extend(_run_parallel(jobs, workers, use_notebook, profiles))
    else:
        outcomes.extend(run_profile(*profile) for profile in profiles)
        for params_path, ov in jobs:
            outcomes.append(run_params(params_path, ov, use_notebook=use_notebook))
    if report:
        outcomes.append(run_report(suite_path, overrides))
    failed = [o for o in outcomes if o.status == "failed"]
    print(f"suite {suite.name}: {len(outcomes) - len(failed)} ok, {len(failed)} failed", flush=True)
    return outcomes


def run_report(suite_path: str | Path, overrides: dict[str, Any] | None = None) -> RunOutcome:
    """report.ipynb over the suite's results: tables and figures under figures/<suite>/."""
    suite = load_suite(suite_path)
    results_root = _abs((overrides or {}).get("results_root", "results"))
    figures_dir = _abs((overrides or {}).get("figures_dir") or suite.report.get("figures_dir", f"figures/{suite.name}"))
    params = {"suite_file": str(suite.path), "results_root": str(results_root), "figures_dir": str(figures_dir)}
    return _run_artifact_notebook(f"report-{suite.name}", "report.ipynb", results_root / suite.name / "report",
                                  params, figures_dir / "summary.md")


def ensure_kernel() -> None:
    """Register a ``python3`` kernel in this environment if none exists (fresh venvs, CI).

    jupyter_client runs a kernelspec whose argv starts with ``python`` with ``sys.executable``, so
    the kernel uses the same interpreter (and packages) as the ``ltr`` command.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix, kernel_name=KERNEL)
