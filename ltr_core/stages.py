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
from safetensors.torch import save
from torch import nn

from .config import ConfigError, RunConfig, from_params, to_flat
from .results import RunDir, atomic_write_bytes


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
        raise StageError(missing_run_message(ref, cfg, root, candidates[0]))
    return RunDir(found[0])


def _differing(dirs: list[Path]) -> dict[Path, str]:
    """For each run directory, the semantic settings in which the runs differ (``epochs=2, lr=0.05``)."""
    from .config import NON_SEMANTIC_KEYS

    cfgs = {d: ((RunDir(d).read_config() or {}).get("params") or {}) for d in dirs}
    keys = sorted({k for c in cfgs.values() for k in c if k not in NON_SEMANTIC_KEYS and k not in ("init_run",)
                   and len({json_key(c2.get(k)) for c2 in cfgs.values()}) > 1})
    return {d: ", ".join(f"{k}={c.get(k)!r}" for k in keys) for d, c in cfgs.items()}


def json_key(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def missing_run_message(ref: str, cfg: RunConfig, root: Path, first: Path) -> str:
    """Why ``init_run`` ``ref`` was not found, which stage-1 runs of that name exist, how to point at one."""
    from .params import find_project, split_run_id

    parts = split_run_id(ref)
    lines = [f"init_run {ref!r} is neither a run directory nor a run id under {root}/<suite>/ "
             f"(looked in {first} and every suite of {root})."]
    if parts and parts[1]:
        lines.append(f"It names the stage-1 run made with the same overrides as this run (the -{parts[1]} "
                     f"digest of the overrides that apply to stage 1).")
    if parts:
        stem, _, seed = parts
        runs = sorted(p for p in root.glob(f"*/{stem}*-s{seed}") if p.is_dir() and split_run_id(p.name)
                      and split_run_id(p.name)[0] == stem) if root.is_dir() else []
        notes = _differing(runs)
        for p in runs:
            state = "complete" if (RunDir(p).read_results() or {}).get("status") == "complete" else "not complete"
            lines.append(f"  exists: {p} ({state}{'; ' + notes[p] if notes[p] else ''})")
        if not runs:
            lines.append(f"No run {stem}[-<digest>]-s{seed} exists under {root}.")
        tokens = stem.split("-")
        guess = find_project() / "params" / tokens[0] / f"{'-'.join(tokens[2:])}.yaml" if len(tokens) > 2 else None
        how = f"`ltr run {guess}` with the same --set overrides" if guess and guess.is_file() else "its params file"
        ids = sorted({f"{stem}{'-' + split_run_id(p.name)[1] if split_run_id(p.name)[1] else ''}-s{{seed}}" for p in runs})
        lines.append(f"To go on, run the earlier stage first ({how}, --suite {cfg.run.suite}), or point at an existing run: "
                     + " or ".join(f"`--set init_run={i}`" for i in (ids or [f"{stem}-s{{seed}}"]))
                     + " ({seed} pairs each seed with its own stage 1), or `--set init_run=<run directory>`.")
    else:
        lines.append(f"To go on, run the earlier stage first (`ltr run <its params>.yaml --suite {cfg.run.suite}`) "
                     f"or give the path of its run directory.")
    return "\n".join(lines)


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


def state_dict_cpu(module: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of a module's state (or of a state dict): what safetensors files hold."""
    state = module if isinstance(module, dict) else module.state_dict()
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_weights(module: nn.Module | dict[str, torch.Tensor], path: str | Path) -> Path:
    """The one weights writer: ``module``'s state (or a state dict) as safetensors at ``path``, atomically
    (:func:`ltr_core.results.atomic_write_bytes`: temp file, fsync, rename)."""
    return atomic_write_bytes(path, save(state_dict_cpu(module)))
