"""Launch one run on N GPUs (or N CPU processes) with torchrun, from the CLI or from a notebook.

    ltr run PARAMS.yaml --nproc 4                      # CLI (or dist_nproc: 4 in the params file)
    from ltr_core.launch import run_distributed        # notebook / script
    results = run_distributed("params/imagenet_lt/ce.yaml", 4, {"epochs": 2})

The calling process (a Jupyter kernel, papermill, a SLURM job) never forks workers and never touches
CUDA: it writes the resolved flat params to ``<run_dir>/launch.yaml``, runs

    python -m torch.distributed.run --standalone --nproc_per_node=N -m ltr_core.train <run_dir>/launch.yaml

(``torchrun``, with this interpreter) as a subprocess, streams its output line by line into
``<run_dir>/stdout.log`` (and to the caller's stdout), and returns ``<run_dir>/results.json`` when it is
complete. A crash or an out-of-memory in any rank ends the subprocess, not the kernel (conventions.md §8).
The run directory, config hash, skipping and resuming are those of the one-process run (``dist_*`` keys
are placement, not part of the hash), so a run can be resumed with another number of processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

from .config import ConfigError, config_hash, from_params
from .params import find_project, resolve
from .results import RunDir


class LaunchFailed(RuntimeError):
    """torchrun exited non-zero, or finished without a complete results.json."""


def torchrun_command(params_file: str | Path, nproc: int, *, python: str | None = None) -> list[str]:
    """The torchrun command line for one run (``--standalone``: a single node, a free rendezvous port)."""
    if nproc < 1:
        raise ConfigError(f"nproc must be >= 1, got {nproc}")
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ltr_core.train", str(params_file)]


def _stream(cmd: list[str], log_path: Path, echo: bool, env: Mapping[str, str], cwd: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if echo:
                print(line, end="", flush=True)
        return proc.wait()


def launch_resolved(params: Mapping[str, Any], nproc: int | None = None, *, log_path: str | Path | None = None,
                    echo: bool = True) -> dict:
    """torchrun over an already resolved flat params dict (:func:`ltr_core.params.resolve`); returns
    results.json. ``nproc`` defaults to the params' ``dist_nproc``. Raises :class:`LaunchFailed` with the
    log's path. torchrun runs in the project folder (:func:`ltr_core.params.find_project`).
    """
    project = find_project()
    params = dict(params)
    cfg = from_params(params)
    nproc = int(nproc or cfg.dist.dist_nproc)
    params["dist_nproc"] = nproc
    params["interactive"] = False  # one log line per epoch, no progress bars in a log file
    run_dir = Path(params.get("run_dir") or cfg.run_path())
    if not run_dir.is_absolute():
        run_dir = project / run_dir
    params["run_dir"] = str(run_dir)
    rd = RunDir(run_dir)
    if rd.is_complete(config_hash(cfg)):
        return rd.read_results()
    run_dir.mkdir(parents=True, exist_ok=True)
    launch_file = run_dir / "launch.yaml"
    launch_file.write_text("# resolved params of this run, as torchrun's ltr_core.train reads them\n"
                           + yaml.safe_dump(params, sort_keys=False))
    log = Path(log_path) if log_path else run_dir / "stdout.log"
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env["PYTHONUNBUFFERED"] = "1"
    rc = _stream(torchrun_command(launch_file, nproc), log, echo, env, project)
    results = rd.read_results()
    if rc != 0 or not results or results.get("status") != "complete":
        raise LaunchFailed(f"torchrun ({nproc} processes) exited with status {rc} "
                           f"{'and no complete results.json' if not results else ''}; log: {log}")
    return results


def run_distributed(params: str | Path | Mapping[str, Any], nproc: int, overrides: Mapping[str, Any] | None = None,
                    *, log_path: str | Path | None = None, echo: bool = True) -> dict:
    """Run a params file (with ``overrides``, resolved like ``ltr run``) or a flat params dict on ``nproc``
    processes through torchrun in a subprocess; returns the run's results.json dict."""
    if isinstance(params, Mapping):
        flat = {**params, **(overrides or {})}
        from_params(flat)  # fail here, before a subprocess starts
    else:
        flat, _ = resolve(params, dict(overrides or {}))
    return launch_resolved(flat, nproc, log_path=log_path, echo=echo)
