"""The notebooks' parameters: the generated ``parameters`` cell and the first code cell after it.

Every method notebook's ``parameters`` cell declares every key its family reads (core, ``dist_*`` and its
family sections of :mod:`ltr_core.config`, with their comments as help), so ``papermill --help-notebook``
documents it and valid keys draw no "Passed unknown parameter" warning. The values are those of the
notebook's default params file (``base``, e.g. ``params/digits_lt/ce.yaml``): :func:`parameters_source`
generates the cell, ``python -m ltr_core.notebook --write`` rewrites it, a test checks that they match.

The next cell is ``cfg = notebook.configure(globals(), "<notebook>")``. It resolves the parameters through
:mod:`ltr_core.params`, the resolver of ``ltr run``, so each way of running a notebook is the same run:

* **ltr run / ltr suite** inject the resolved config (``run_dir`` set): taken as it is;
* **papermill** ``-f PARAMS.yaml [-p KEY VALUE ...]``: the params file (read off papermill's command line,
  or found under ``params/`` by its content) is resolved with ``base`` layering and named after its stem,
  ``-p`` values are overrides: the same config, run id and run directory as ``ltr run PARAMS.yaml --set ...``;
* **JupyterLab**: values edited in the cell are overrides of ``base``, so an edited run gets a new name
  (a digest of the edited keys) and the old run is kept; results go to the project's ``results/``
  wherever the kernel was started.

Which cell assigned what is read from IPython's input history (``In``): papermill's injected cell starts
with ``# Parameters``, the generated cell with ``# Parameters of``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import os
import tokenize
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import config, params
from .config import KEY_OWNER, RunConfig, from_params, to_flat

# notebook -> (methods it runs, sections it declares besides core + dist, its default params file)
NOTEBOOKS: dict[str, tuple[tuple[str, ...], str]] = {
    "erm.ipynb": (("erm",), "params/digits_lt/ce.yaml"),
    "decouple.ipynb": (("decouple",), "params/digits_lt/crt.yaml"),
    "knn.ipynb": (("knn",), "params/digits_lt/knn.yaml"),
    "oltr.ipynb": (("oltr",), "params/digits_lt/oltr.yaml"),
    "livt.ipynb": (("livt",), "params/digits_lt/livt.yaml"),
    "pel.ipynb": (("pel", "zeroshot"), "params/digits_lt/pel_tiny.yaml"),
    "vlltr.ipynb": (("vlltr",), "params/smoke/vlltr_tiny.yaml"),
    "tailclip.ipynb": (("tailclip",), "params/mosaic_mlt/cpu_bal.yaml"),
    "dataset.ipynb": ((), "params/digits_lt/ce.yaml"),
}
DATASET_SECTIONS = ("run", "data", "vlltr")  # dataset.ipynb: the data, plus VL-LTR's class text
CELL_MARK = "# Parameters of "
INJECTED_MARK = "# Parameters"


# ----------------------------------------------------------------------------------------------
# the generated parameters cell


def sections_of(notebook: str) -> list[str]:
    """The config sections a notebook declares: core + dist + the families of its methods."""
    methods, _ = NOTEBOOKS[notebook]
    if not methods:
        return list(DATASET_SECTIONS)
    return [name for name, cls in config.SECTIONS.items()
            if name in config.CORE_SECTIONS or name == "dist" or set(methods) & set(cls.METHODS)]


def declared_keys(notebook: str) -> list[str]:
    """Every key the notebook's parameters cell declares (``base`` first)."""
    return ["base"] + [f.name for s in sections_of(notebook) for f in dataclasses.fields(config.SECTIONS[s])]


def field_comments() -> dict[str, str]:
    """The trailing comment of every config field (its help text), read from the source of the modules that
    define the config sections (ltr_core/config_sections.py, ltr_core/methods/*_config.py)."""
    out: dict[str, str] = {}
    for path in sorted({inspect.getsourcefile(cls) for cls in config.SECTIONS.values()}):
        source = Path(path).read_text()
        lines = source.splitlines()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            code = lines[tok.start[0] - 1][: tok.start[1]]
            name = code.strip().split(":", 1)[0]
            if code.startswith("    ") and ":" in code and "=" in code and name in KEY_OWNER and name not in out:
                out[name] = tok.string.lstrip("#").strip()
    return out


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _annotation(key: str) -> str:
    tp = typing.get_type_hints(config.SECTIONS[KEY_OWNER[key]])[key]
    return "list" if typing.get_origin(tp) in (tuple, list) else getattr(tp, "__name__", "str")


def default_values(notebook: str, project: Path | None = None) -> dict[str, Any]:
    """The cell's values: its default params file resolved (layering, name = stem), not placed."""
    _, base = NOTEBOOKS[notebook]
    path = (project or params.find_project(Path(__file__).parent)) / base
    raw = params.load_layered(path, anchor=False)
    raw.setdefault("name", path.stem)
    flat = to_flat(from_params(raw))
    flat["interactive"] = True  # tqdm bars and the live curve in JupyterLab; papermill and ltr run: False
    return flat


def parameters_source(notebook: str, project: Path | None = None) -> str:
    """The source of ``notebook``'s generated parameters cell."""
    _, base = NOTEBOOKS[notebook]
    values, comments = default_values(notebook, project), field_comments()
    lines = [f"{CELL_MARK}{notebook}: every key it reads, with the values of `base` (generated from",
             "# ltr_core.config: python -m ltr_core.notebook --write). Edit a value and run the notebook: the run gets",
             "# a new name (a digest of the edited keys) and the old one is kept. papermill -f / ltr run inject after this.",
             f'base: str = "{base}"  # the params file these values come from (relative to the project folder)']
    for section in sections_of(notebook):
        lines.append(f"# {section}")
        for f in dataclasses.fields(config.SECTIONS[section]):
            value = _literal(values[f.name])
            if "=" in value:
                raise ValueError(f"{f.name}: a value with '=' breaks papermill's parameter inspection: {value}")
            help_text = comments.get(f.name, "").replace("=", "\uff1d")  # papermill skips lines with 2 '='
            lines.append(f"{f.name}: {_annotation(f.name)} = {value}" + (f"  # {help_text}" if help_text else ""))
    return "\n".join(lines)


def write_cells(folder: Path, check: bool = False) -> list[str]:
    """Rewrite (or with ``check`` only compare) the parameters cell of every notebook in ``folder``;
    returns the notebooks whose cell differed."""
    import nbformat

    changed = []
    for name in NOTEBOOKS:
        path = folder / name
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        source = parameters_source(name, folder.parent)
        if cell.source != source:
            changed.append(name)
            if not check:
                cell.source = source
                nbformat.write(nb, path)
    return changed


# ----------------------------------------------------------------------------------------------
# the first code cell after the parameters cell


def _assigned(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def executed_cells(namespace: Mapping[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    """(names the parameters cell assigned, names papermill's injected cell assigned) from ``In``;
    None where that cell was not run (no ``In``: not IPython)."""
    history = namespace.get("In")
    if not isinstance(history, list):
        return None, None
    cell = injected = None
    for source in history:
        if source.startswith(CELL_MARK):
            cell, injected = _assigned(source), None
        elif source.split("\n", 1)[0].strip() == INJECTED_MARK and cell is not None:
            injected = (injected or []) + _assigned(source)
    return cell, injected


def papermill_invocation() -> tuple[list[Path], set[str]] | None:
    """(params files given with -f, names given with -p/-r/-y/-b) of the papermill command that started
    this kernel, read from the parent process (Linux /proc); None when it is not papermill's CLI."""
    ppid = os.getppid()
    try:
        argv = Path(f"/proc/{ppid}/cmdline").read_bytes().decode().split("\0")
        cwd = Path(os.readlink(f"/proc/{ppid}/cwd"))
    except OSError:
        return None
    at = next((i for i, a in enumerate(argv) if Path(a).name == "papermill" or a == "papermill"), None)
    if at is None:
        return None
    files, names, args, i = [], set(), argv[at + 1:], 0
    while i < len(args):
        a = args[i]
        if a in ("-f", "--parameters_file") and i + 1 < len(args):
            files.append(cwd / args[i + 1])
            i += 2
        elif a in ("-p", "--parameters", "-r", "--parameters_raw") and i + 2 < len(args):
            names.add(args[i + 1])
            i += 3
        elif a in ("-y", "--parameters_yaml", "-b", "--parameters_base64") and i + 1 < len(args):
            text = args[i + 1]
            if a.startswith("-b") or a == "--parameters_base64":
                import base64

                text = base64.b64decode(text).decode()
            names |= set(yaml.safe_load(text) or {})
            i += 2
        else:
            i += 1
    return files, names


def find_params_file(values: Mapping[str, Any], project: Path) -> Path | None:
    """The params file under ``<project>/params`` whose own keys all appear in ``values`` with the same
    values (the most keys wins): where a papermill ``-f`` run's injected values came from. Files with the
    same content that resolve to different runs (``cifar10_lt/la_ir100.yaml``, ``cifar100_lt/...``) are
    an error naming them."""
    best: list[Path] = []
    best_n = 0
    for path in sorted((project / "params").rglob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(raw, dict) or not raw or len(raw) < best_n \
                or not all(k in values and values[k] == v for k, v in raw.items()):
            continue
        best, best_n = ([path], len(raw)) if len(raw) > best_n else (best + [path], best_n)
    runs = {params.resolve(p, project=project)[1].run_id: p for p in best}
    if len(runs) > 1:
        raise config.ConfigError(
            "papermill: the injected parameters match several params files that are different runs ("
            + ", ".join(str(p.relative_to(project)) for p in best) + ") and papermill's command line could not be "
            "read; run one with `ltr run <file>` (or papermill -f <file> from a shell)")
    return best[0] if best else None


def _from_papermill(values: dict[str, Any], project: Path) -> tuple[dict, RunConfig, str]:
    """papermill -f FILE [-p ...]: FILE resolved like ``ltr run FILE --set ...``."""
    inv = papermill_invocation()
    files = inv[0] if inv else []
    path = files[0] if files else find_params_file(values, project)
    if path is None:  # -p only (or an unknown source): overrides of the notebook's own values
        return {}, None, ""
    raw = yaml.safe_load(path.read_text()) or {}
    explicit = inv[1] if inv and files else set()
    for extra in files[1:]:
        explicit |= set(yaml.safe_load(extra.read_text()) or {})
    overrides = {k: v for k, v in values.items() if k != "base" and (k in explicit or k not in raw)}
    overrides.setdefault("interactive", False)  # one log line per epoch in an executed notebook
    flat, cfg = params.resolve(path, overrides, project=project)
    return flat, cfg, str(path)


def _edited(notebook: str, values: dict[str, Any], project: Path) -> dict[str, Any]:
    """The cell values that differ from the generated ones (what the user edited)."""
    try:
        generated = default_values(notebook, project)
    except config.ConfigError:
        return {}
    keys = [k for k in values if k in KEY_OWNER]
    checked = to_flat(from_params({k: values[k] for k in keys}))
    return {k: values[k] for k in keys if checked[k] != generated.get(k)}


def configure(namespace: Mapping[str, Any], notebook: str) -> RunConfig:
    """The run config of a notebook from its globals after the parameters cell (see the module docstring);
    prints the run id, where the run writes, and what was overridden."""
    project = params.find_project()
    cell, injected = executed_cells(namespace)
    names = cell if cell is not None else [k for k in declared_keys(notebook) if k in namespace]
    names = list(dict.fromkeys([*names, *(injected or [])]))
    values = {k: namespace[k] for k in names if k in namespace}
    unknown = params.unknown_keys(values)
    if unknown:
        from_params({k: values[k] for k in unknown})  # raises naming the valid keys
    if injected and "run_dir" in injected and values.get("run_dir"):  # ltr run / ltr suite: already resolved
        cfg = from_params({k: v for k, v in values.items() if k != "base"})
        source = "ltr run"
    else:
        _, cfg, source = _from_papermill({k: values[k] for k in injected}, project) if injected else ({}, None, "")
        if cfg is None:
            edits = _edited(notebook, values, project)
            edits.update({k: values[k] for k in injected or [] if k != "base"})
            # the cell's interactive (True: bars and the live curve); executed by papermill: one line per epoch
            edits["interactive"] = bool(values.get("interactive", True)) if not injected or "interactive" in injected else False
            cfg, source = _from_base(notebook, values, edits, project)
    if notebook == "dataset.ipynb" and not values.get("run_dir"):
        cfg = from_params({**to_flat(cfg), "run_dir": str(Path(cfg.run.results_root) / cfg.run.suite
                                                          / f"profile-{cfg.data.dataset}")})
    print(f"run {cfg.run_id} ({source}) -> {cfg.run_path()}", flush=True)
    return cfg


def _from_base(notebook: str, values: dict[str, Any], edits: dict[str, Any], project: Path) -> tuple[RunConfig, str]:
    """The cell's ``base`` resolved with the edited values as overrides (JupyterLab, papermill -p)."""
    base = str(values.get("base") or NOTEBOOKS[notebook][1])
    path = params.cli_path(base, project)
    if path.is_file():
        semantic = {k: v for k, v in edits.items() if k in params.semantic_keys(str(values.get("method", "")))}
        _, cfg = params.resolve(path, edits, project=project)
        shown = ", ".join(f"{k}={v!r}" for k, v in semantic.items())
        return cfg, f"{base}" + (f" + {shown}" if shown else "")
    kept = {k: v for k, v in values.items() if k in KEY_OWNER}  # no params file here: the cell is the params
    _, cfg = params.resolve_mapping(kept, {}, project=project, anchor_overrides=False)
    return cfg, f"the parameters cell ({base} not found under {project})"


def main(argv: list[str] | None = None) -> int:
    """``python -m ltr_core.notebook [--write|--check]``: regenerate or check the parameters cells."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ltr_core.notebook", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the cells (default: only check)")
    parser.add_argument("--folder", default=str(params.find_project() / "notebooks"))
    args = parser.parse_args(argv)
    changed = write_cells(Path(args.folder), check=not args.write)
    print(("rewrote " if args.write else "out of date: ") + (", ".join(changed) or "none"))
    return 1 if changed and not args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())
