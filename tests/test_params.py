"""The one params resolver (ltr_core.params): layering, run names, paths, project folder, stage chaining,
packaging of the notebooks, no import cycle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from ltr_core import params, runner, stages
from ltr_core.config import ConfigError, config_hash
from ltr_core.results import RunDir

ALL_PARAMS = sorted(p for p in (REPO / "params").rglob("*.yaml")
                    if p.parent.name != "suites" and "runs" not in (yaml.safe_load(p.read_text()) or {}))
WITH_BASE = [p for p in ALL_PARAMS if "base" in (yaml.safe_load(p.read_text()) or {})]


def test_every_params_file_resolves_with_its_base_and_its_own_name():
    assert len(WITH_BASE) > 100  # most files layer on a base file
    for path in ALL_PARAMS:
        flat, cfg = params.resolve(path)
        assert cfg.run.name == path.stem or (yaml.safe_load(path.read_text()) or {}).get("name"), path
        assert Path(flat["run_dir"]).is_absolute() and Path(flat["results_root"]) == REPO / "results"


def test_train_names_two_params_files_apart(tmp_path):
    """python -m ltr_core.train used to name every run `default`: two files collided (RunDirConflict)."""
    from ltr_core import train

    args = ["--set", f"results_root={tmp_path}", "--set", "epochs=1", "--set", "max_steps_per_epoch=1",
            "--set", "device=cpu", "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "tensorboard=false"]
    assert train.main(["params/digits_lt/ce.yaml", *args]) == 0
    assert train.main(["params/digits_lt/la.yaml", *args]) == 0
    names = sorted(p.name for p in (tmp_path / "interactive").iterdir())
    assert [n.split("-")[2] for n in names] == ["ce", "la"], names


def test_overrides_name_the_run_and_placement_does_not(tmp_path):
    ov = {"results_root": str(tmp_path)}
    base = params.resolve("params/digits_lt/ce.yaml", ov)[1]
    assert base.run_id == "digits_lt-erm-ce-s0"
    assert params.resolve("params/digits_lt/ce.yaml", {**ov, "epochs": 2})[1].run_id == "digits_lt-erm-ce-b75f48-s0"
    assert params.resolve("params/digits_lt/ce.yaml", {**ov, "device": "cpu", "seed": 1})[1].run_id == "digits_lt-erm-ce-s1"
    # a key another family reads changes nothing an erm run computes: same run
    assert params.resolve("params/digits_lt/ce.yaml", {**ov, "crt_features": "cached"})[1].run_id == base.run_id
    assert params.resolve("params/digits_lt/ce.yaml", {**ov, "name": "mine", "epochs": 2})[1].run.name == "mine"


def test_paths_are_relative_to_the_current_folder_never_the_package(tmp_path, monkeypatch):
    """cd elsewhere && ltr run my.yaml: the params file, --data-root and the results are here."""
    (tmp_path / "my.yaml").write_text(f"base: {REPO / 'params/digits_lt/ce.yaml'}\nepochs: 3\n")
    (tmp_path / "lists").mkdir()
    monkeypatch.chdir(tmp_path)
    flat, cfg = params.resolve("my.yaml", {"split_dir": "lists"})
    assert cfg.run_id == "digits_lt-erm-my-s0" and cfg.train.epochs == 3 and cfg.train.batch_size == 32
    assert flat["results_root"] == str(tmp_path / "results") and flat["split_dir"] == str(tmp_path / "lists")
    assert flat["cache_dir"] == str(tmp_path / "data" / "cache")
    assert flat["figures_dir"] == str(tmp_path / "figures" / "interactive")
    with pytest.raises(ConfigError, match="base file 'nope.yaml' not found"):
        (tmp_path / "bad.yaml").write_text("base: nope.yaml\n")
        params.resolve("bad.yaml")


def test_a_path_in_a_params_file_is_relative_to_that_file_or_its_project(tmp_path):
    voc = next(p for p in ALL_PARAMS if "split_dir" in p.read_text() and p.parent.name == "voc_mlt")
    raw = yaml.safe_load(voc.read_text())["split_dir"]  # ../shared/data/splits/VOC_MLT: the project's
    assert params.load_layered(voc)["split_dir"] == str((REPO / raw).resolve())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.yaml").write_text("data_root: imgs\n")
    (tmp_path / "sub" / "imgs").mkdir()
    assert params.load_layered(tmp_path / "sub" / "x.yaml")["data_root"] == str(tmp_path / "sub" / "imgs")


def test_project_folder_is_found_from_the_current_folder(tmp_path):
    assert params.find_project(REPO / "notebooks") == REPO
    assert params.find_project(REPO / "params" / "digits_lt") == REPO
    (tmp_path / "proj" / "deep").mkdir(parents=True)
    (tmp_path / "proj" / "pyproject.toml").write_text('[project]\nname = "ltr-study"\n')
    assert params.find_project(tmp_path / "proj" / "deep") == tmp_path / "proj"
    (tmp_path / "plain").mkdir()
    assert params.find_project(tmp_path / "plain") == tmp_path / "plain"


def test_notebooks_come_from_the_project_else_the_package(tmp_path):
    assert params.notebook_path("erm.ipynb", REPO) == REPO / "notebooks" / "erm.ipynb"
    packaged = params.notebook_path("erm.ipynb", tmp_path)
    assert packaged.is_file() and packaged.parent == params.packaged_notebooks()
    (tmp_path / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "erm.ipynb", tmp_path / "notebooks" / "erm.ipynb")
    assert params.notebook_path("erm.ipynb", tmp_path) == tmp_path / "notebooks" / "erm.ipynb"


def test_pyproject_ships_every_package_and_the_notebooks():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ltr_core").rglob("__init__.py")}
    on_disk |= {".".join(p.relative_to(REPO).parts) for p in (REPO / "ltr_core").rglob("*")
                if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.json"))}
    assert on_disk | {"ltr_core.notebooks"} == set(cfg["packages"])
    assert cfg["package-dir"]["ltr_core.notebooks"] == "notebooks"
    assert cfg["package-data"]["ltr_core.notebooks"] == ["*.ipynb"]


def test_no_import_cycle_between_launch_and_runner():
    code = "import sys, ltr_core.launch, ltr_core.train; print('ltr_core.runner' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr


# ----------------------------------------------------------------------------------------------
# stage chaining (issue: `--set epochs=2` left the cRT rows without their CE run)


def test_stage2_finds_the_stage1_run_made_with_the_same_overrides():
    ce = params.resolve("params/digits_lt/ce.yaml", {"epochs": 2, "seed": 1})[1]
    crt = params.resolve("params/digits_lt/crt.yaml", {"epochs": 2, "seed": 1})[1]
    assert crt.run.init_run.format(seed=1) == ce.run_id == "digits_lt-erm-ce-b75f48-s1"
    # stage-2-only keys do not move the stage-1 run; an explicit init_run is kept
    assert params.resolve("params/digits_lt/crt.yaml", {"crt_features": "cached"})[1].run.init_run == "digits_lt-erm-ce-s{seed}"
    mine = params.resolve("params/digits_lt/crt.yaml", {"epochs": 2, "init_run": "digits_lt-erm-ce-s{seed}"})[1]
    assert mine.run.init_run == "digits_lt-erm-ce-s{seed}"


def test_quickstart_with_overrides_links_every_crt_run_to_its_ce_run():
    jobs = runner.expand_runs(runner.load_suite("params/suites/quickstart.yaml"), {"epochs": 2})
    ids = [runner.resolve_params(p, o)[1].run_id for p, o in jobs]
    parents = runner.job_parents(jobs)
    crt = [i for i, name in enumerate(ids) if "-decouple-crt-" in name]
    assert len(crt) == 3
    for i in crt:
        assert parents[i] is not None and ids[parents[i]] == ids[i].replace("-decouple-crt-", "-erm-ce-")


def test_missing_stage1_run_says_which_runs_exist_and_how_to_point_at_one(tmp_path):
    made = []
    for ov in ({}, {"epochs": 5}):
        flat, cfg = params.resolve("params/digits_lt/ce.yaml", {"results_root": str(tmp_path), **ov})
        RunDir(flat["run_dir"]).write_config(flat, config_hash(cfg), cfg.run_id)
        made.append(flat["run_dir"])
    _, crt = params.resolve("params/digits_lt/crt.yaml", {"results_root": str(tmp_path), "epochs": 2})
    with pytest.raises(stages.StageError) as err:
        stages.resolve_run(crt.run.init_run, crt)
    msg = str(err.value)
    assert "digits_lt-erm-ce-b75f48-s0" in msg and "same overrides" in msg
    assert f"exists: {made[0]} (not complete; epochs=100)" in msg and f"exists: {made[1]} (not complete; epochs=5)" in msg
    assert "--set init_run=digits_lt-erm-ce-s{seed}" in msg and "params/digits_lt/ce.yaml" in msg


def test_cd_elsewhere_ltr_run_writes_there(tmp_path):
    """`cd elsewhere && ltr run my.yaml`: found, run, and results/ are under elsewhere (in-process path)."""
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({
        "base": str(REPO / "params/digits_lt/ce.yaml"), "epochs": 1, "max_steps_per_epoch": 2,
        "tensorboard": False, "device": "cpu"}))
    out = subprocess.run([sys.executable, "-m", "ltr_core.cli", "run", "my.yaml", "--no-notebook"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "results" / "interactive" / "digits_lt-erm-my-s0" / "results.json").read_text())
    assert res["status"] == "complete"


def test_a_non_editable_install_runs_its_packaged_notebooks(tmp_path):
    """A wheel installed elsewhere (not editable): `ltr run params/...` in a project folder that has params/
    but no notebooks/ runs the notebook shipped in the package and writes under that folder."""
    src = tmp_path / "src"
    for name in ("ltr_core", "notebooks"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, cwd=src)
    wheel = next((tmp_path / "dist").glob("ltr_study-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   capture_output=True)
    assert (tmp_path / "site" / "ltr_core" / "notebooks" / "erm.ipynb").is_file()
    proj = tmp_path / "proj"
    shutil.copytree(REPO / "params" / "smoke", proj / "params" / "smoke")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "ltr_core.cli", "run", "params/smoke/digits_ce.yaml", "--set", "epochs=1"],
                         cwd=proj, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    run = next((proj / "results" / "interactive").glob("digits_lt-erm-digits_ce-*-s0"))
    assert (run / "results.json").is_file() and (run / "notebook.ipynb").is_file()
    assert f"Input Notebook:  {tmp_path / 'site' / 'ltr_core' / 'notebooks' / 'erm.ipynb'}" in (run / "stdout.log").read_text()
