"""Execute one notebook with papermill, the way ``ltr run`` / ``ltr suite`` need it.

* an explicit kernel (``python3``), ``cwd`` = the project folder, absolute input/output paths; the
  notebook is ``<project>/notebooks/<name>`` or the installed copy (:func:`ltr_core.params.notebook_path`);
* only the keys the notebook's parameters cell declares are injected (plus any other key set to a
  non-default value), so papermill warns only about keys the notebook does not read;
* the kernel runs quietly: its own log records ("Kernel is running over TCP without encryption",
  "KeyboardInterrupt caught in kernel") are raised to CRITICAL, so they never reach ``ltr`` output;
* a run's executed notebook is written beside the run directory's files under a temporary name and
  becomes ``<run_dir>/notebook.ipynb`` only when this process did the run (it claimed the run directory;
  another process running the same run keeps its notebook.ipynb): :func:`run_in_notebook`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from . import params as params_mod
from .config import RunConfig, to_flat

KERNEL = "python3"
QUIET_KERNEL = ["--IPKernelApp.log_level=CRITICAL"]
BUSY_ERRORS = ("RunBusy",)  # ltr_core.results: another live process holds the run directory's lock


class RunFailed(RuntimeError):
    """A notebook raised, its kernel died, or it finished without writing its artefact."""

    def __init__(self, message: str, ename: str = ""):
        super().__init__(message)
        self.ename = ename

    @property
    def busy(self) -> bool:
        """The run directory belongs to another live process (nothing of it was touched)."""
        return self.ename in BUSY_ERRORS


def notebook_parameters(notebook: str, flat: Mapping[str, Any]) -> dict[str, Any]:
    """What to inject into ``notebook`` for a resolved run: its declared keys, and (method notebooks)
    every other key whose value is not the default."""
    from .notebook import NOTEBOOKS, declared_keys

    name = Path(notebook).name
    if name not in NOTEBOOKS:
        return dict(flat)
    keys = set(declared_keys(name)) - {"base"}
    out = {k: v for k, v in flat.items() if k in keys}
    if NOTEBOOKS[name][0]:  # not dataset.ipynb
        defaults = to_flat(RunConfig())
        out.update({k: v for k, v in flat.items() if k not in keys and v != defaults.get(k)})
    return out


def execute_notebook(notebook: str | Path, output: Path, parameters: dict[str, Any], log_path: Path | None = None,
                     project: Path | None = None) -> None:
    """papermill with an explicit kernel, cwd = the project folder, absolute paths; raises RunFailed."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    project = project or params_mod.find_project()
    nb = params_mod.notebook_path(notebook, project)
    if not nb.is_file():
        raise RunFailed(f"notebook not found: {nb}")
    output.parent.mkdir(parents=True, exist_ok=True)
    handler = None
    pm_logger = logging.getLogger("papermill")
    if log_path is not None:
        handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter("%(message)s"))
        pm_logger.addHandler(handler)
        pm_logger.setLevel(logging.INFO)
    try:
        pm.execute_notebook(str(nb), str(output), parameters=parameters, kernel_name=KERNEL, cwd=str(project),
                            progress_bar=False, log_output=log_path is not None, start_timeout=300,
                            extra_arguments=list(QUIET_KERNEL))
    except PapermillExecutionError as err:
        raise RunFailed(f"{nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}", err.ename) from None
    except Exception as err:  # DeadKernelError (OOM), kernel start failures
        name = type(err).__name__
        hint = " (kernel died: out of memory?)" if "DeadKernel" in name else ""
        raise RunFailed(f"{nb.name}: {name}: {err}{hint}", name) from None
    finally:
        if handler is not None:
            pm_logger.removeHandler(handler)
            handler.close()


def _skipped(executed: Path) -> bool:
    """Whether the executed notebook found the run already complete (another process finished it first)."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # noqa: BLE001 - unreadable: not ours to keep
        return True
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return "skip: " in text and " is complete" in text


def run_in_notebook(notebook: str, run_dir: Path, flat: Mapping[str, Any], project: Path | None = None) -> None:
    """Execute a run's notebook; its executed copy becomes ``<run_dir>/notebook.ipynb`` unless another
    process owns the run (busy) or finished it first. Raises :class:`RunFailed`."""
    tmp = run_dir / f".notebook-{os.getpid()}.ipynb"
    error: RunFailed | None = None
    try:
        execute_notebook(notebook, tmp, notebook_parameters(notebook, flat), log_path=run_dir / "stdout.log",
                         project=project)
    except RunFailed as err:
        error = err
    if tmp.exists():
        if (error is not None and error.busy) or (error is None and _skipped(tmp)):
            tmp.unlink()
        else:
            os.replace(tmp, run_dir / "notebook.ipynb")
    if error is not None:
        raise error


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
