"""Multi-stage runs: find a finished run, rebuild its config, load its weights, derive stage configs.

Several methods train in stages (cRT / τ-norm / LWS on a stage-1 backbone, OLTR stage 1 → 2,
LiVT MGP → BFT, VL-LTR CVLP → LGR). A later stage starts either

* from **another run** named by ``init_run`` — a run directory path, or a run id looked up under
  ``<results_root>/<suite>/`` and then every other suite of ``<results_root>`` (``"{seed}"`` in the
  reference is replaced by this run's seed, so a 3-seed suite pairs stage 2 of seed s with stage 1
  of seed s); or
* from an **earlier stage of the same run**, kept in a sub-directory ``<run_dir>/<stage>/`` with its
  own checkpoint (so a killed multi-stage notebook resumes inside the stage it was in) and, for
  stages that classify, its own ``results.json`` marked ``"stage": <name>`` (``results.collect``
  leaves such rows out of suite tables unless asked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError, RunConfig, from_params, to_flat
from .results import RunDir


class StageError(RuntimeError):
    """A referenced earlier run or stage is missing, unfinished, or does not fit this run."""


def format_ref(ref: str, cfg: RunConfig) -> str:
    """``ref`` with ``{seed}`` replaced by this run's seed."""
    try:
        return ref.format(seed=cfg.run.seed)
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"init_run {ref!r}: only the placeholder {{seed}} is allowed ({err})") from None


def resolve_run(ref: str, cfg: RunConfig) -> RunDir:
    """The run directory named by ``ref`` (a path, or a run id searched under ``results_root``).

    Raises :class:`StageError` saying where it looked and how to produce the run.
    """
    ref = format_ref(ref, cfg)
    path = Path(ref).expanduser()
    if path.is_dir():
        return RunDir(path)
    root = Path(cfg.run.results_root)
    candidates = [root / cfg.run.suite / ref]
    if root.is_dir():
        candidates += sorted(p for p in root.glob(f"*/{ref}") if p.parent.name != cfg.run.suite)
    found = [c for c in candidates if c.is_dir()]
    if not found:
        raise StageError(
            f"init_run {ref!r} is neither a run directory nor a run id under {root}/<suite>/ "
            f"(looked in {candidates[0]} and every suite of {root}); run the earlier stage first "
            f"(`ltr run <its params>.yaml --suite {cfg.run.suite}`) or give the path of its run directory")
    return RunDir(found[0])


def require_complete(run_dir: RunDir, what: str = "results.json") -> dict:
    """The parsed results.json of a finished run; StageError if it is missing or unfinished."""
    res = run_dir.read_results()
    if not res or res.get("status") != "complete":
        raise StageError(f"{run_dir.path} has no complete {what}: the run was interrupted or failed; "
                         f"resume it with `ltr run` on its params before starting a later stage")
    return res


def load_run_config(run_dir: RunDir) -> RunConfig:
    """The resolved :class:`RunConfig` recorded in ``<run_dir>/config.yaml``.

    Keys that this version of ltr_core no longer knows are an error naming them.
    """
    doc = run_dir.read_config()
    if not doc or "params" not in doc:
        raise StageError(f"{run_dir.config_path} is missing or unreadable; is {run_dir.path} a run directory?")
    try:
        return from_params(doc["params"])
    except ConfigError as err:
        raise StageError(f"{run_dir.config_path} does not build a config with this ltr_core: {err}") from None


def load_weights(module: nn.Module, path: str | Path, *, prefix: str = "", strict: bool = True,
                 skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Load a safetensors state dict into ``module``.

    ``prefix`` selects and strips a key prefix (``"backbone."`` loads a classifier's backbone into a
    bare backbone); keys starting with any of ``skip`` are dropped (e.g. ``("head.",)`` for cRT, which
    re-initialises the classifier). With ``strict`` every remaining key must match in name and shape.
    Returns {"missing": [...], "unexpected": [...]}.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise StageError(f"weights file not found: {path}")
    state = load_file(str(path))
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise StageError(f"{path} holds no weights under the prefix {prefix!r}")
    state = {k: v for k, v in state.items() if not k.startswith(skip)} if skip else state
    own = module.state_dict()
    shape_errors = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape_errors:
        raise StageError(f"{path} does not fit the model: " + "; ".join(shape_errors[:5]))
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(skip)] if skip else list(missing)
    if strict and (missing or unexpected):
        raise StageError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return {"missing": list(missing), "unexpected": list(unexpected)}


def stage_dir(cfg: RunConfig, stage: str) -> Path:
    """``<run_dir>/<stage>``: where an earlier stage of this run keeps its checkpoint and results."""
    return cfg.run_path() / stage


def stage_config(cfg: RunConfig, stage: str, **overrides: Any) -> RunConfig:
    """This run's config with ``overrides`` (flat keys) and ``run_dir`` set to :func:`stage_dir`."""
    flat = {**to_flat(cfg), **overrides, "run_dir": str(stage_dir(cfg, stage))}
    return from_params(flat)


def state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of a module's state (what safetensors files hold)."""
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
