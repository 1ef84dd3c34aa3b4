"""Library vs app (issue 16 §4): registries are the valid config choices, modules stay small, the library
(ltr_core/data, ltr_core/models) imports nothing from the app modules, config validation stays torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ltr_core import config, optim, registries
from ltr_core.methods.decouple_modes import MODES

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "ltr_core"
APP = {"runner", "cli", "sweep", "launch", "report"}  # plus every bench* module
MAX_LINES = 400


def test_config_choices_are_the_registry_keys():
    assert config.CHOICES["sampler"] == tuple(registries.SAMPLER_REGISTRY)
    assert config.CHOICES["tailclip_sampler"] == tuple(registries.ML_SAMPLER_REGISTRY)
    assert config.CHOICES["pel_peft"] == tuple(registries.PEFT_REGISTRY)
    assert config.CHOICES["tailclip_peft"] == ("", *registries.PEFT_REGISTRY)
    assert config.CHOICES["optimizer"] == tuple(optim.OPTIMIZERS)
    assert config.CHOICES["schedule"] == tuple(optim.SCHEDULES)
    assert config.CHOICES["decouple_mode"] == tuple(MODES)


@pytest.mark.parametrize("registry", [registries.SAMPLER_REGISTRY, registries.ML_SAMPLER_REGISTRY,
                                      registries.PEFT_REGISTRY])
def test_every_registry_entry_resolves(registry):
    for name in registry:
        assert callable(registries.factory(registry, name)), name


def test_unknown_optimizer_and_schedule_name_the_valid_ones():
    import torch

    cfg = config.from_params({}).optim
    with pytest.raises(ValueError, match=r"unknown optimizer 'sgdx'; valid optimizers: \['adamw', 'sgd'\]"):
        optim.build_optimizer([torch.nn.Parameter(torch.zeros(2))], SimpleNamespace(**{**vars(cfg), "optimizer": "sgdx"}))
    with pytest.raises(ValueError, match=r"unknown schedule 'linear'; valid schedules: \['constant', 'cosine', 'step'\]"):
        optim.lr_factor(0, 1.0, SimpleNamespace(**{**vars(cfg), "schedule": "linear"}), 10)
    sgd = optim.build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == cfg.momentum


def test_config_validation_imports_no_torch():
    code = ("import sys; from ltr_core.config import from_params; "
            "from_params({'sampler': 'sqrt', 'optimizer': 'adamw', 'schedule': 'cosine', 'pel_peft': 'lora'}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (issue 16 §4: at most {MAX_LINES} lines): {long}"


def _imported(path: Path) -> set[str]:
    """ltr_core module names imported anywhere in ``path`` (module level or inside functions)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("ltr_core")}


def test_library_imports_no_app_module():
    bad = {}
    for folder in ("data", "models"):
        for path in (PKG / folder).rglob("*.py"):
            app = sorted(n for n in _imported(path) if len(n.split(".")) > 1 and (
                n.split(".")[1] in APP or n.split(".")[1].startswith("bench")))
            if app:
                bad[str(path.relative_to(REPO))] = app
    assert not bad, f"ltr_core/data and ltr_core/models must not import app modules: {bad}"


def test_each_family_section_lives_beside_its_method():
    """Issue 16 §2: a family's config section is ltr_core/methods/<family>_config.py, torch-free, for methods
    that exist; only the execution-only DistSection stays in config_families.py."""
    import inspect

    from ltr_core.methods import METHODS

    for family, section in config.FAMILY_SECTIONS.items():
        path = Path(inspect.getsourcefile(section))
        if family == "dist":
            assert path.name == "config_families.py"
            continue
        assert path == PKG / "methods" / f"{family}_config.py", (family, path)
        assert section.METHODS and set(section.METHODS) <= set(METHODS), family
        imports = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in imports for a in n.names} | {n.module or "" for n in imports if isinstance(n, ast.ImportFrom)}
        assert not {n for n in names if n.split(".")[0] == "torch"}, path
