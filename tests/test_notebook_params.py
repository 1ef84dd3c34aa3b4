"""The notebooks' parameters (ltr_core.notebook): the generated cell, and one run whichever way a notebook
runs: ltr run, papermill -f (base layering), JupyterLab with edited values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from conftest import REPO
from ltr_core import nbexec, notebook, params, runner
from ltr_core.config import config_hash


def _cell(name: str) -> str:
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


def _namespace(name: str, injected: dict | None = None, **edits) -> dict:
    """The globals of a kernel that ran the imports, the parameters cell (with ``edits``) and papermill's
    injected cell (``injected``), as IPython records them in ``In``."""
    source = _cell(name)
    for key, value in edits.items():
        source += f"\n{key} = {value!r}"
    ns: dict = {}
    exec(source, ns)
    history = ["", "from ltr_core import notebook", source]
    if injected is not None:
        inj = "# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in injected.items())
        exec(inj, ns)
        history.append(inj)
    ns.pop("__builtins__")
    ns["In"] = history + ["cfg = notebook.configure(globals(), ...)"]
    return ns


@pytest.mark.parametrize("name", sorted(notebook.NOTEBOOKS))
def test_parameters_cell_is_generated_from_the_config_and_declares_every_key(name):
    assert _cell(name) == notebook.parameters_source(name), (
        f"{name}: the parameters cell is out of date; run `python -m ltr_core.notebook --write`")
    inferred = pm.inspect_notebook(str(REPO / "notebooks" / name))  # what papermill --help-notebook lists
    assert list(inferred) == notebook.declared_keys(name)
    assert all(p["help"] for k, p in inferred.items() if k != "base"), "every key has its help text"


def test_help_notebook_documents_the_keys():
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", "notebooks/erm.ipynb"], cwd=REPO,
                         capture_output=True, text=True)
    assert "epochs: int (default 100)" in out.stdout and "la_tau: float" in out.stdout and "Unable to parse" not in out.stderr


def test_unedited_notebook_is_the_run_of_its_base_and_writes_under_the_project(monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")  # JupyterLab starts kernels in the notebook's folder
    cfg = notebook.configure(_namespace("erm.ipynb"), "erm.ipynb")
    _, ref = params.resolve(REPO / "params/digits_lt/ce.yaml")
    assert cfg.run_id == ref.run_id == "digits_lt-erm-ce-s0" and config_hash(cfg) == config_hash(ref)
    assert cfg.run_path() == REPO / "results" / "interactive" / "digits_lt-erm-ce-s0"
    assert cfg.run.interactive and Path(cfg.data.cache_dir) == REPO / "data" / "cache"


def test_editing_a_value_makes_a_new_run_and_keeps_the_old_one(monkeypatch, capsys):
    monkeypatch.chdir(REPO / "notebooks")
    cfg = notebook.configure(_namespace("erm.ipynb", epochs=7, device="cpu"), "erm.ipynb")
    _, ref = params.resolve(REPO / "params/digits_lt/ce.yaml", {"epochs": 7})
    assert cfg.run_id == ref.run_id != "digits_lt-erm-ce-s0" and cfg.train.epochs == 7
    assert "epochs=7" in capsys.readouterr().out  # it says what was overridden and where it writes
    # another base: the cell's other values are not taken as edits
    cfg = notebook.configure(_namespace("erm.ipynb", base="params/digits_lt/la.yaml"), "erm.ipynb")
    assert cfg.run_id == "digits_lt-erm-la-s0" and cfg.loss.loss == "logit_adjusted"


@pytest.mark.parametrize("rel", ["params/digits_lt/la.yaml", "params/digits_lt/crt.yaml", "params/smoke/digits_tau_norm.yaml",
                                 "params/places_lt/livt.yaml", "params/cifar100_lt/pel_ir100_lora.yaml"])
def test_papermill_f_gives_the_config_and_run_id_of_ltr_run(rel, monkeypatch):
    """papermill -f FILE injects FILE's raw keys (``base`` included); the notebook resolves them like ltr run."""
    path = REPO / rel
    if not path.is_file():
        pytest.skip(f"{rel} not in this checkout")
    raw = yaml.safe_load(path.read_text())
    name = next(nb for nb, (methods, _) in notebook.NOTEBOOKS.items()
                if params.resolve(path)[1].run.method in methods)
    monkeypatch.setattr(notebook, "papermill_invocation", lambda: None)  # found by content under params/
    cfg = notebook.configure(_namespace(name, injected=raw), name)
    _, ref = params.resolve(path)
    assert (cfg.run_id, config_hash(cfg), cfg.run_path()) == (ref.run_id, config_hash(ref), ref.run_path())
    assert not cfg.run.interactive
    # with -p overrides read off papermill's command line: the run of `ltr run FILE --set epochs=1`
    monkeypatch.setattr(notebook, "papermill_invocation", lambda: ([path], {"epochs"}))
    cfg = notebook.configure(_namespace(name, injected={**raw, "epochs": 1}), name)
    _, ref = params.resolve(path, {"epochs": 1})
    assert (cfg.run_id, config_hash(cfg)) == (ref.run_id, config_hash(ref))


def test_papermill_f_works_for_every_params_file_with_a_base(monkeypatch):
    """Each of the params files with `base:` (146 of 189 when this was written) through papermill -f."""
    files = [p for p in sorted((REPO / "params").rglob("*.yaml"))
             if "base" in (yaml.safe_load(p.read_text()) or {}) and "runs" not in yaml.safe_load(p.read_text())]
    assert len(files) > 100
    for path in files:
        _, ref = params.resolve(path)
        name = next(nb for nb, (methods, _) in notebook.NOTEBOOKS.items() if ref.run.method in methods)
        monkeypatch.setattr(notebook, "papermill_invocation", lambda: ([path], set()))
        cfg = notebook.configure(_namespace(name, injected=yaml.safe_load(path.read_text())), name)
        assert (cfg.run_id, config_hash(cfg)) == (ref.run_id, config_hash(ref)), path


def test_papermill_values_of_twin_files_need_the_command_line(monkeypatch):
    raw = yaml.safe_load((REPO / "params/cifar10_lt/la_ir100.yaml").read_text())
    assert raw == yaml.safe_load((REPO / "params/cifar100_lt/la_ir100.yaml").read_text())
    monkeypatch.setattr(notebook, "papermill_invocation", lambda: None)
    with pytest.raises(Exception, match="cifar10_lt/la_ir100.yaml.*cifar100_lt/la_ir100.yaml|cifar100_lt/la_ir100.yaml.*cifar10_lt"):
        notebook.configure(_namespace("erm.ipynb", injected=raw), "erm.ipynb")
    path = REPO / "params/cifar10_lt/la_ir100.yaml"
    monkeypatch.setattr(notebook, "papermill_invocation", lambda: ([path], set()))  # read off papermill's argv
    assert notebook.configure(_namespace("erm.ipynb", injected=raw), "erm.ipynb").run_id == params.resolve(path)[1].run_id


def test_ltr_run_injection_is_taken_as_resolved():
    flat, ref = params.resolve("params/digits_lt/la.yaml", {"epochs": 3, "seed": 2})
    injected = nbexec.notebook_parameters("erm.ipynb", flat)
    assert "base" not in injected and set(injected) <= set(notebook.declared_keys("erm.ipynb"))
    cfg = notebook.configure(_namespace("erm.ipynb", injected=injected), "erm.ipynb")
    assert (cfg.run_id, config_hash(cfg), str(cfg.run_path())) == (ref.run_id, config_hash(ref), flat["run_dir"])


def test_papermill_cli_f_with_base_is_one_run_with_ltr_run(tmp_path):
    """`papermill notebooks/erm.ipynb out.ipynb -f params/digits_lt/la.yaml` (146 of 189 files have a base)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    place = ["-p", "results_root", str(tmp_path / "results"), "-p", "cache_dir", str(tmp_path / "cache"),
             "-p", "device", "cpu", "-p", "tensorboard", "False"]
    out = subprocess.run([sys.executable, "-m", "papermill", "notebooks/erm.ipynb", str(tmp_path / "out.ipynb"),
                          "-f", "params/digits_lt/la.yaml", "-p", "epochs", "1", "-p", "max_steps_per_epoch", "2",
                          *place], cwd=REPO, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Passed unknown parameter" not in out.stderr
    ov = {"epochs": 1, "max_steps_per_epoch": 2, "results_root": str(tmp_path / "results"),
          "cache_dir": str(tmp_path / "cache"), "device": "cpu", "tensorboard": False}
    flat, ref = params.resolve("params/digits_lt/la.yaml", ov)
    res = json.loads((Path(flat["run_dir"]) / "results.json").read_text())
    assert (res["run_id"], res["config_hash"]) == (ref.run_id, config_hash(ref)) and res["loss"] == "logit_adjusted"
    assert not (Path(flat["run_dir"]) / "notebook.ipynb").exists()  # papermill's copy is where it was asked
    assert runner.run_params("params/digits_lt/la.yaml", ov).status == "skipped"  # one run, not two


def test_a_busy_run_keeps_the_other_process_notebook(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notebook.ipynb").write_text("theirs")

    def busy(nb, output, parameters, log_path=None, project=None):
        output.write_text("ours")
        raise nbexec.RunFailed("erm.ipynb failed in cell 5: RunBusy: held", "RunBusy")

    monkeypatch.setattr(nbexec, "execute_notebook", busy)
    with pytest.raises(nbexec.RunFailed):
        nbexec.run_in_notebook("erm.ipynb", run_dir, {})
    assert (run_dir / "notebook.ipynb").read_text() == "theirs" and not list(run_dir.glob(".notebook-*"))


def test_ltr_run_refuses_a_run_directory_another_process_is_writing(tmp_path):
    ov = {"results_root": str(tmp_path), "epochs": 1}
    flat, _ = params.resolve("params/digits_lt/ce.yaml", ov)
    run_dir = Path(flat["run_dir"])
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ltr_core.results import acquire_run_lock; "
                               f"acquire_run_lock({str(run_dir)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (run_dir / "notebook.ipynb").write_text("theirs")
        out = runner.run_params("params/digits_lt/ce.yaml", ov)
        assert out.status == "failed" and "another process" in out.error
        assert (run_dir / "notebook.ipynb").read_text() == "theirs"
    finally:
        holder.kill()
        holder.wait()
