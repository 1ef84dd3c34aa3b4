"""Cluster sweeps: one job per run of a suite through submitit (a SLURM job array), or its local backend.

    ltr suite params/suites/S.yaml                                   # local: runs one after another (default)
    ltr suite params/suites/S.yaml --executor slurm --partition gpu --timeout-min 240 --array-parallelism 8
    ltr suite params/suites/S.yaml --executor submitit-local         # same jobs, as local processes

Each job is :class:`RunJob`: it changes to the project folder it was submitted from and runs the **same papermill path** as
``ltr run`` (:func:`ltr_core.runner.run_params`: explicit ``python3`` kernel, cwd = the project, the executed
notebook in the run directory), so results land in the usual ``results/<suite>/<run_id>/`` and
``ltr report`` works unchanged; a run whose params ask for ``dist_nproc`` > 1 uses torchrun inside its
job (:mod:`ltr_core.launch`). Jobs are grouped by their number of processes; each group is one array
(submitit ``executor.batch()``) with ``gpus_per_node = nproc``, at most ``slurm_array_parallelism``
running at once. Profiles (dataset.ipynb) are jobs of the first array; the report runs in the calling
process once every job has finished. A job killed at its time limit or preempted requeues itself
(:meth:`RunJob.checkpoint`) and the engine resumes the run from its last epoch checkpoint.

The job folder (``--jobs-folder``, default ``logs/submitit/<suite>``) holds submitit's pickles and each
job's stdout/stderr; on a cluster it and the repository must be on a shared filesystem. submitit
(1.5.4) is imported only here, only for these executors.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runner
from .params import find_project
from .config import ConfigError

EXECUTORS = ("local", "submitit-local", "slurm")


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm / submitit-local needs submitit: pip install 'submitit>=1.5' "
                          "(or pip install -e '.[cluster]'); --executor local needs nothing") from None
    return submitit


@dataclass
class ClusterOptions:
    """Resources of every job (``gpus_per_node`` is each run's ``dist_nproc``)."""

    folder: str = ""  # submitit folder; empty: logs/submitit/<suite>
    partition: str = ""  # SLURM partition; empty: the cluster's default
    timeout_min: int = 240  # wall-clock limit of one job (requeued from its checkpoint when hit)
    array_parallelism: int = 16  # slurm_array_parallelism: jobs of an array running at once
    cpus_per_task: int = 8  # CPU cores of one job (data loading workers)
    mem_gb: int = 0  # memory of one job; 0: the cluster's default
    slurm: dict[str, Any] = field(default_factory=dict)  # further slurm_* parameters (constraint, account, ...)


class RunJob:
    """One suite entry as a picklable job: a run (``kind="run"``) or a dataset profile (``kind="profile"``)."""

    def __init__(self, kind: str, params_path: str, overrides: dict[str, Any], use_notebook: bool = True) -> None:
        self.kind, self.params_path, self.overrides = kind, params_path, dict(overrides)
        self.use_notebook = use_notebook
        self.project = str(find_project())  # the job runs where the suite was submitted from

    def __call__(self) -> runner.RunOutcome:
        os.chdir(self.project)
        if self.use_notebook or self.kind == "profile":
            runner.ensure_kernel()
        if self.kind == "profile":
            return runner.run_profile(self.params_path, self.overrides)
        return runner.run_params(self.params_path, self.overrides, use_notebook=self.use_notebook)

    def checkpoint(self, *args, **kwargs):
        """submitit calls this at a timeout or preemption: requeue the same run (it resumes from its checkpoint)."""
        return import_submitit().helpers.DelayedSubmission(RunJob(self.kind, self.params_path, self.overrides,
                                                                  self.use_notebook))

    def __repr__(self) -> str:
        return f"RunJob({self.kind}, {self.params_path}, seed={self.overrides.get('seed')})"


def make_executor(kind: str, folder: Path, options: ClusterOptions, nproc: int, name: str):
    """A submitit AutoExecutor for ``slurm`` or ``submitit-local`` with the job resources set."""
    submitit = import_submitit()
    if kind not in ("slurm", "submitit-local"):
        raise ConfigError(f"unknown executor {kind!r}; use one of {EXECUTORS}")
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm" if kind == "slurm" else "local")
    params: dict[str, Any] = {"timeout_min": options.timeout_min, "nodes": 1, "tasks_per_node": 1,
                              "gpus_per_node": nproc, "cpus_per_task": options.cpus_per_task, "name": name}
    if options.mem_gb:
        params["mem_gb"] = options.mem_gb
    if kind == "slurm":
        params["slurm_array_parallelism"] = options.array_parallelism
        if options.partition:
            params["slurm_partition"] = options.partition
        params.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in options.slurm.items()})
    ex.update_parameters(**params)
    return ex


def submit_jobs(jobs: list[RunJob], nprocs: list[int], kind: str, folder: Path, options: ClusterOptions,
                name: str) -> list[tuple[RunJob, Any]]:
    """One array per distinct nproc; returns (job, submitit handle) in the order of ``jobs``."""
    handles: dict[int, Any] = {}
    for nproc in sorted(set(nprocs)):
        idx = [i for i, n in enumerate(nprocs) if n == nproc]
        ex = make_executor(kind, folder, options, nproc, f"{name}-{nproc}gpu")
        with ex.batch():
            submitted = [ex.submit(jobs[i]) for i in idx]
        handles.update(zip(idx, submitted))
        print(f"submitted {len(idx)} job(s) with {nproc} GPU(s) each ({kind}) -> {folder}", flush=True)
    return [(jobs[i], handles[i]) for i in range(len(jobs))]


def _outcome(job: RunJob, handle) -> runner.RunOutcome:
    try:
        return handle.result()
    except Exception as err:  # the job itself died (node failure, timeout without requeue, unpicklable error)
        log = getattr(getattr(handle, "paths", None), "stderr", "")
        msg = f"job {getattr(handle, 'job_id', '?')} failed: {type(err).__name__}: {str(err).strip()[-500:]}"
        print(f"FAIL  {job}: {msg}\n      job log: {log}", flush=True)
        return runner.RunOutcome(str(job), Path(log).parent if log else Path("."), "failed", 0.0, msg)


def run_suite_cluster(suite_path: str | Path, overrides: dict[str, Any] | None = None, *, executor: str = "slurm",
                      options: ClusterOptions | None = None, report: bool = True,
                      use_notebook: bool = True) -> list[runner.RunOutcome]:
    """Every profile and run x seed of a suite as submitit jobs; waits for them, then runs the report here."""
    if executor == "local":
        return runner.run_suite(suite_path, overrides, report=report, use_notebook=use_notebook)
    options = options or ClusterOptions()
    suite = runner.load_suite(suite_path)
    entries = runner.expand_runs(suite, overrides)  # validates every run before anything is submitted
    jobs, nprocs = [], []
    for params_path in suite.profiles:
        jobs.append(RunJob("profile", params_path, {**(overrides or {}), "suite": suite.name}))
        nprocs.append(1)
    for params_path, ov in entries:
        _, cfg = runner.resolve_params(params_path, ov)
        jobs.append(RunJob("run", params_path, ov, use_notebook))
        nprocs.append(max(1, cfg.dist.dist_nproc))
    folder = Path(options.folder) if options.folder else find_project() / "logs" / "submitit" / suite.name
    t0 = time.perf_counter()
    pairs = submit_jobs(jobs, nprocs, executor, folder, options, f"ltr-{suite.name}")
    outcomes = [_outcome(job, handle) for job, handle in pairs]
    print(f"suite {suite.name}: {len(jobs)} job(s) finished in {time.perf_counter() - t0:.0f} s", flush=True)
    if report:
        outcomes.append(runner.run_report(suite_path, overrides))
    failed = [o for o in outcomes if o.status == "failed"]
    print(f"suite {suite.name}: {len(outcomes) - len(failed)} ok, {len(failed)} failed", flush=True)
    return outcomes
