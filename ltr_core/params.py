"""The one params resolver: a params file + overrides -> the flat params and the :class:`RunConfig` of a run.

``ltr run``, ``ltr suite``, ``python -m ltr_core.train``, torchrun (``ltr_core.launch``) and the notebooks
(papermill ``-f`` and JupyterLab, through :mod:`ltr_core.notebook`) all resolve here, so one params file
with one set of overrides is one run (one name, one config hash, one run directory) whichever way it runs.

* **Layering.** A params file may name ``base`` file(s), loaded first (later keys win); relative to the
  file that names them.
* **Run name.** The file's stem (or its ``name`` key). Overrides of keys that change what the run computes
  (:func:`semantic_keys` of its method) append a short digest of themselves (``ce-b75f48``), so
  ``--set epochs=2`` never lands in the directory of the full run; an explicit ``name`` override wins.
* **Stage chaining.** A stage-2 file whose ``init_run`` is a run id (``digits_lt-erm-ce-s{seed}``) gets the
  digest of the overrides that apply to the stage-1 method too, so it starts from the stage-1 run made
  with the same overrides and seed (:func:`chain_init_run`).
* **Paths.** A path given on the command line (the params file, ``--data-root``, ``--set x_dir=...``) is
  relative to the current folder; one written in a params file, to that file's folder (else its project).
  Never to the installed package. ``results/``, ``figures/`` and ``data/`` default to the project folder.
* **Project folder** (:func:`find_project`): from the current folder upwards, the first folder holding
  ``params/`` or a ``pyproject.toml`` that names ltr-study; else the current folder.
* **Notebooks** (:func:`notebook_path`): ``<project>/notebooks/<name>`` when there, else the copy
  installed with the package (``ltr_core/notebooks/``, package data).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from .config import (CORE_SECTIONS, KEY_OWNER, NON_SEMANTIC_KEYS, SECTIONS, ConfigError, RunConfig, from_params,
                     to_flat)

PROJECT_NAME = "ltr-study"
# keys whose values are file-system paths (anchored as described above); init_run/resume_from only when
# they name an existing directory (init_run is usually a run id)
PATH_KEYS = ("data_root", "split_dir", "cache_dir", "results_root", "figures_dir", "run_dir", "vlltr_text_root")
RUN_PATH_KEYS = ("init_run", "resume_from")
_RUN_ID = re.compile(r"^(?P<stem>.+?)(?:-(?P<digest>[0-9a-f]{6}))?-s(?P<seed>\{seed\}|\d+)$")


# ----------------------------------------------------------------------------------------------
# the project folder and paths


def _is_project(folder: Path) -> bool:
    if (folder / "params").is_dir():
        return True
    py = folder / "pyproject.toml"
    try:
        return py.is_file() and re.search(rf"""name\s*=\s*["']{PROJECT_NAME}["']""", py.read_text()) is not None
    except OSError:
        return False


def find_project(start: str | os.PathLike | None = None) -> Path:
    """The project folder: ``start`` (default: the current folder) or the nearest parent holding
    ``params/`` or a pyproject.toml naming ltr-study; ``start`` itself when none does."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if _is_project(folder):
            return folder
    return here


def cli_path(path: str | os.PathLike, project: Path | None = None) -> Path:
    """An absolute path for a path given on the command line: relative to the current folder, or (when
    nothing is there) to the project folder, so ``params/...`` also works from ``notebooks/``."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    here = Path.cwd() / p
    if here.exists():
        return here.resolve()
    alt = (project or find_project()) / p
    return alt.resolve() if alt.exists() else here.resolve()


def file_path(value: str, file: Path) -> str:
    """A relative path written in params/suite file ``file``: relative to the file's folder when that exists,
    else to the file's project folder (``split_dir: ../shared/data/...`` in ``params/voc_mlt/``), else to the
    current folder or its project; none existing: the file's project folder."""
    p = Path(value).expanduser()
    if not value or p.is_absolute():
        return str(p) if value else value
    bases = (file.parent, find_project(file.parent), Path.cwd(), find_project())
    near = next((b / p for b in bases if (b / p).exists()), bases[1] / p)
    return str(near.resolve())


def _anchor(params: dict[str, Any], where: Path | None) -> dict[str, Any]:
    """``params`` with its relative path values made absolute: against ``where`` (a params file), or
    against the current folder (``where`` None: command-line overrides)."""
    out = dict(params)
    for key in (*PATH_KEYS, *RUN_PATH_KEYS):
        value = out.get(key)
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            continue
        if key in RUN_PATH_KEYS:  # a run id stays a run id; a relative run directory becomes absolute
            base = where.parent if where else Path.cwd()
            if (base / value).is_dir():
                out[key] = str((base / value).resolve())
        elif where is not None:
            out[key] = file_path(value, where)
        else:
            out[key] = str((Path.cwd() / Path(value).expanduser()).resolve())
    return out


def anchor_cli(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line overrides with their relative path values made absolute against the current folder."""
    return _anchor(dict(overrides), None)


def load_layered(path: str | os.PathLike, *, anchor: bool = True) -> dict[str, Any]:
    """A flat params file with its ``base`` file(s) merged underneath; with ``anchor`` its relative path
    values are made absolute per file (see :func:`file_path`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a params file must be a flat mapping of key: value")
    bases = raw.pop("base", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: base file {base!r} not found (looked for {base_path}; a base is relative "
                              f"to the file that names it)")
        merged.update(load_layered(base_path, anchor=anchor))
    nested = [k for k, v in raw.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"{path}: params must be flat, but {nested} hold nested mappings")
    merged.update(_anchor(raw, path) if anchor else raw)
    return merged


# ----------------------------------------------------------------------------------------------
# run names and stage chaining


def semantic_keys(method: str) -> set[str]:
    """Keys that change what a run of ``method`` computes (they enter its config hash): the core keys
    and its family's, minus placement keys, ``name`` and ``seed`` (the run id has the seed)."""
    keys = {f for name, cls in SECTIONS.items() if name in CORE_SECTIONS or method in cls.METHODS
            for f in cls.__dataclass_fields__}
    return keys - set(NON_SEMANTIC_KEYS) - {"seed", "name"}


def digest(values: Mapping[str, Any]) -> str:
    """Six hex characters naming a set of overrides (sha1 of their sorted JSON)."""
    return hashlib.sha1(json.dumps(dict(values), sort_keys=True, default=str).encode()).hexdigest()[:6]


def naming_overrides(overrides: Mapping[str, Any], flat: Mapping[str, Any], method: str,
                     exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The overrides that rename a run of ``method``: its semantic keys, with their checked values."""
    keys = semantic_keys(method) - set(exclude)
    return {k: flat[k] for k in overrides if k in keys}


def run_name(base_name: str, overrides: Mapping[str, Any], flat: Mapping[str, Any]) -> str:
    """``base_name``, plus ``-<digest>`` of the overrides that change what the run computes."""
    if "name" in overrides and overrides["name"]:
        return str(overrides["name"])
    named = naming_overrides(overrides, flat, flat["method"])
    return f"{base_name}-{digest(named)}" if named else base_name


def chain_init_run(init_run: str, overrides: Mapping[str, Any], flat: Mapping[str, Any]) -> str:
    """The stage-1 run id a stage-2 run made with ``overrides`` starts from.

    ``init_run`` (from the params file) names the stage-1 run made without overrides; the stage-1 run made
    with the same overrides carries their digest (restricted to the keys that change the stage-1 method).
    A path, an ``init_run`` given as an override, or a reference that is not a run id is left as it is.
    """
    from .methods import METHODS

    if not init_run or "init_run" in overrides or Path(init_run).expanduser().is_absolute() or "/" in init_run:
        return init_run
    match = _RUN_ID.match(init_run)
    if not match or match["digest"]:
        return init_run
    methods = [t for t in match["stem"].split("-")[1:] if t in METHODS]  # <dataset>-<method>-<name>
    if not methods:
        return init_run
    named = naming_overrides(overrides, flat, methods[0], exclude=("init_run", "method"))
    return f"{match['stem']}-{digest(named)}-s{match['seed']}" if named else init_run


def split_run_id(run_id: str) -> tuple[str, str, str] | None:
    """(stem, digest or "", seed) of a run id ``<dataset>-<method>-<name>[-<digest>]-s<seed>``."""
    match = _RUN_ID.match(run_id)
    return (match["stem"], match["digest"] or "", match["seed"]) if match else None


# ----------------------------------------------------------------------------------------------
# resolution


def _place(params: dict[str, Any], project: Path, dataset: str) -> dict[str, Any]:
    """Default and relative working folders under the project: results/, figures/<suite>, data/."""
    out = dict(params)
    for key, default in (("results_root", "results"), ("cache_dir", "data/cache")):
        value = Path(str(out.get(key) or default)).expanduser()
        out[key] = str(value if value.is_absolute() else project / value)
    if out.get("figures_dir") and not Path(out["figures_dir"]).is_absolute():
        out["figures_dir"] = str(project / out["figures_dir"])
    if not out.get("data_root") and not os.environ.get("LTR_DATA_ROOT"):
        out["data_root"] = str(project / "data" / dataset)
    uses_text = out.get("method") == "vlltr" or out.get("vlltr_text_sources")  # VL-LTR's class text
    if uses_text and not out.get("vlltr_text_root") and not os.environ.get("LTR_TEXT_ROOT"):
        out["vlltr_text_root"] = str(project / "data" / "class_text")
    for key in ("data_root", "split_dir", "run_dir", "vlltr_text_root"):
        if out.get(key) and not Path(out[key]).expanduser().is_absolute():
            out[key] = str(project / out[key])
    return out


def resolve_mapping(params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
                    project: str | os.PathLike | None = None, anchor_overrides: bool = True
                    ) -> tuple[dict[str, Any], RunConfig]:
    """Resolve already loaded params (``name`` = the run's base name) with ``overrides``; strict.

    Returns every key (the flat dict that rebuilds the config, absolute paths, ``run_dir`` set) and the config.
    """
    project = Path(project) if project else find_project()
    overrides = _anchor(dict(overrides or {}), None) if anchor_overrides else dict(overrides or {})
    params = dict(params)
    params.setdefault("name", "default")
    from_params(params)  # the file's own keys and types first: its errors name the file's keys
    merged = {**params, **overrides}
    flat = to_flat(from_params(merged))
    merged["name"] = run_name(str(params["name"]), overrides, flat)
    if merged.get("init_run"):
        merged["init_run"] = chain_init_run(str(merged["init_run"]), overrides, flat)
    merged = _place(merged, project, flat["dataset"])
    cfg = from_params(merged)
    merged["run_dir"] = str(cfg.run_path() if cfg.run_path().is_absolute() else project / cfg.run_path())
    if not merged.get("figures_dir"):
        merged["figures_dir"] = str(project / cfg.figures_path())
    cfg = from_params(merged)
    return to_flat(cfg), cfg


def resolve(params_path: str | os.PathLike, overrides: Mapping[str, Any] | None = None, *,
            project: str | os.PathLike | None = None) -> tuple[dict[str, Any], RunConfig]:
    """Load a params file (``base`` layering), name the run after its stem, apply ``overrides``, validate.

    ``params_path`` is relative to the current folder (or the project folder); see the module docstring.
    """
    project = Path(project) if project else find_project()
    path = cli_path(params_path, project)
    params = load_layered(path)
    params.setdefault("name", path.stem)
    return resolve_mapping(params, overrides, project=project)


def unknown_keys(params: Mapping[str, Any]) -> list[str]:
    """Keys of ``params`` that are not parameters (``base`` is a params-file key, not a parameter)."""
    return [k for k in params if k not in KEY_OWNER and k != "base"]


# ----------------------------------------------------------------------------------------------
# notebooks


def packaged_notebooks() -> Path:
    """The notebooks installed with ltr_core (package data), or the source checkout's ``notebooks/``."""
    pkg = Path(__file__).resolve().parent
    for folder in (pkg / "notebooks", pkg.parent / "notebooks"):
        if folder.is_dir():
            return folder
    return pkg / "notebooks"


def notebook_path(name: str | os.PathLike, project: str | os.PathLike | None = None) -> Path:
    """``<project>/notebooks/<name>`` when it exists, else the installed copy; an absolute path as given."""
    p = Path(name)
    if p.is_absolute():
        return p
    own = Path(project or find_project()) / "notebooks" / p.name
    return own if own.is_file() else packaged_notebooks() / p.name
