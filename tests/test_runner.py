"""papermill runs, suites, reports and the CLI's bad-input handling (CPU, tiny settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import REPO
from ltr_core import cli, runner
from ltr_core.config import config_hash


def ltr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltr_core.cli", *args], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def smoke_suite(tmp_path_factory):
    """The smoke suite (profile + 2 seeds + report) run once through papermill."""
    tmp = tmp_path_factory.mktemp("suite")
    runner.ensure_kernel()
    ov = {"results_root": str(tmp / "results"), "figures_dir": str(tmp / "figures"), "cache_dir": str(tmp / "cache")}
    outcomes = runner.run_suite("params/smoke/suite.yaml", ov)
    return tmp, ov, outcomes


def test_suite_runs_profile_seeds_and_report(smoke_suite):
    tmp, _, outcomes = smoke_suite
    assert [o.status for o in outcomes] == ["complete"] * 4, [o.error for o in outcomes]
    runs = sorted((tmp / "results" / "smoke").glob("digits_lt-erm-digits_ce-s*"))
    assert [r.name[-2:] for r in runs] == ["s0", "s1"]
    for r in runs:
        res = json.loads((r / "results.json").read_text())
        assert res["status"] == "complete"
        # the run computed exactly the params file's config: no parameters-cell default leaked in
        # (erm.ipynb's cell says image_size = 8 and epochs = 100, the smoke params file says otherwise)
        _, cfg = runner.resolve_params("params/smoke/digits_ce.yaml", {"seed": res["seed"], "suite": "smoke"})
        assert res["config_hash"] == config_hash(cfg) and res["epochs"] == 2
        nb = nbformat.read(r / "notebook.ipynb", as_version=4)  # the executed copy lives in the run dir
        assert nb.metadata.papermill.parameters["seed"] == int(r.name[-1])
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    figs = tmp / "figures"
    for f in ("summary.md", "summary.tex", "summary.csv", "runs.csv", "shot_bars_digits_lt.png",
              "shot_bars_digits_lt.pdf", "per_class_digits_lt.png", "dataset_digits_lt_profile.pdf",
              "dataset_digits_lt_samples.png"):
        assert (figs / f).is_file() and (figs / f).stat().st_size > 0, f
    assert "\\toprule" in (figs / "summary.tex").read_text()
    profile = json.loads((tmp / "results" / "smoke" / "profile-digits_lt" / "profile.json").read_text())
    assert profile["group_sizes"] == {"many": 1, "medium": 5, "few": 4}


def test_suite_rerun_skips_complete_runs(smoke_suite):
    _, ov, _ = smoke_suite
    jobs = runner.expand_runs(runner.load_suite("params/smoke/suite.yaml"), ov)
    outcomes = [runner.run_params(p, o) for p, o in jobs]
    assert [o.status for o in outcomes] == ["skipped", "skipped"]


def test_notebook_that_writes_nothing_is_a_failed_run(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "empty.ipynb")
    fake = type("M", (), {"NOTEBOOK": str(tmp_path / "empty.ipynb")})
    monkeypatch.setattr(runner, "get_method", lambda name: fake)
    out = runner.run_params("params/smoke/digits_ce.yaml", {"results_root": str(tmp_path / "r")})
    assert out.status == "failed" and "without writing a complete" in out.error


def test_failing_cell_is_reported(tmp_path):
    out = runner.run_params("params/smoke/digits_ce.yaml",
                            {"results_root": str(tmp_path / "r"), "imbalance_ratio": 1000.0})
    assert out.status == "failed"
    assert (out.run_dir / "notebook.ipynb").is_file()  # the executed notebook shows the failing cell


def test_cli_unknown_param_fails_before_any_kernel(tmp_path):
    out = ltr("run", "params/smoke/digits_ce.yaml", "--set", "lrr=0.1", "--results-root", str(tmp_path))
    assert out.returncode == 2
    assert "unknown parameter 'lrr'" in out.stderr and "did you mean 'lr'" in out.stderr
    assert not any(tmp_path.iterdir())
    out = ltr("run", "params/smoke/digits_ce.yaml", "--set", "epochs=two", "--results-root", str(tmp_path))
    assert out.returncode == 2 and "'epochs' must be int" in out.stderr


def test_cli_missing_data_root_says_where_and_how(tmp_path):
    out = ltr("run", "params/cifar10_lt/ce_ir100.yaml", "--no-notebook", "--data-root", str(tmp_path / "nowhere"),
              "--results-root", str(tmp_path / "r"), "--set", "cache_dir=" + str(tmp_path / "c"))
    assert out.returncode == 1
    assert str(tmp_path / "nowhere") in out.stderr and "data_root" in out.stderr


def test_overrides_change_run_name_but_placement_does_not(tmp_path):
    base, _ = runner.resolve_params("params/smoke/digits_ce.yaml", {"results_root": str(tmp_path)})
    placed, _ = runner.resolve_params("params/smoke/digits_ce.yaml", {"results_root": str(tmp_path), "device": "cpu"})
    changed, _ = runner.resolve_params("params/smoke/digits_ce.yaml", {"results_root": str(tmp_path), "epochs": 5})
    assert base["run_dir"] == placed["run_dir"] != changed["run_dir"]
    assert Path(base["run_dir"]).is_absolute()


def test_bad_suite_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "runz": []}))
    with pytest.raises(Exception, match="unknown suite keys"):
        runner.load_suite(p)
    p.write_text(yaml.safe_dump({"name": "x", "runs": [{"params": "params/smoke/digits_ce.yaml", "set": {"lrr": 1}}]}))
    with pytest.raises(Exception, match="lrr"):
        runner.expand_runs(runner.load_suite(p))


def test_bench_prints_table(capsys):
    args = cli.build_parser().parse_args(["bench", "--image-size", "16", "--batch-size", "8", "--steps", "2",
                                          "--warmup", "1", "--device", "cpu"])
    assert cli.main(["bench", "--image-size", "16", "--batch-size", "8", "--steps", "2", "--warmup", "1",
                     "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "pipeline_ratio" in out and "model_step_images_per_s" in out and args.model == "resnet32"


@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_thin_parameterised_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None
            assert not any(line.lstrip().startswith(("def ", "class ")) for line in c.source.splitlines())
    assert nb.metadata.kernelspec.name == "python3"


def test_job_parents_link_stage2_runs_to_their_stage1_run_of_the_same_seed():
    jobs = runner.expand_runs(runner.load_suite("params/suites/quickstart.yaml"))
    names = [runner.resolve_params(p, o)[1].run_id for p, o in jobs]
    parents = runner.job_parents(jobs)
    for i, name in enumerate(names):
        if "-decouple-crt-" in name:
            assert names[parents[i]] == name.replace("-decouple-crt-", "-erm-ce-")
        else:
            assert parents[i] is None, name


def test_parallel_suite_runs_stage2_after_its_stage1(tmp_path):
    ov = {"results_root": str(tmp_path / "results"), "figures_dir": str(tmp_path / "figures"),
          "cache_dir": str(tmp_path / "cache")}
    outcomes = runner.run_suite("params/smoke/suite_stage2.yaml", ov, workers=2)
    assert [o.status for o in outcomes] == ["complete"] * 4, [o.error for o in outcomes]
    assert [o.run_id for o in outcomes][:3] == ["profile-digits_lt", "digits_lt-erm-digits_ce-s0",
                                               "digits_lt-decouple-digits_tau_norm-s0"]
    ce = tmp_path / "results" / "smoke_stage2" / "digits_lt-erm-digits_ce-s0" / "results.json"
    tau = tmp_path / "results" / "smoke_stage2" / "digits_lt-decouple-digits_tau_norm-s0" / "config.yaml"
    assert ce.stat().st_mtime <= tau.stat().st_mtime  # stage 2 opened its run directory after stage 1 finished
    assert (tmp_path / "figures" / "summary.md").is_file()


def test_pack_trains_the_seeds_as_one_network_then_stage2_and_equals_the_lone_runs(tmp_path):
    """`ltr suite --pack`: the two CE seeds train as one packed network (results.json says with which run),
    their numbers are the lone runs' (CPU: bit for bit), the stage-2 run starts from the packed CE run,
    and a second --pack run skips everything."""
    suite = tmp_path / "pack.yaml"
    suite.write_text(yaml.safe_dump({"name": "pack", "runs": [
        {"params": str(REPO / "params/smoke/digits_ce.yaml"), "seeds": [0, 1]},
        {"params": str(REPO / "params/smoke/digits_tau_norm.yaml"), "seeds": [0]}]}))
    ov = lambda root: {"results_root": str(tmp_path / root), "cache_dir": str(tmp_path / "cache")}  # noqa: E731
    packed = runner.run_suite(suite, ov("packed"), report=False, use_notebook=False, pack=True)
    assert [o.status for o in packed] == ["complete"] * 3, [o.error for o in packed]
    assert [o.run_id for o in packed] == ["digits_lt-erm-digits_ce-s0", "digits_lt-erm-digits_ce-s1",
                                          "digits_lt-decouple-digits_tau_norm-s0"]
    lone = runner.run_suite(suite, ov("lone"), report=False, use_notebook=False)
    assert [o.status for o in lone] == ["complete"] * 3
    for o_p, o_l in zip(packed, lone):
        r_p, r_l = (json.loads((o.run_dir / "results.json").read_text()) for o in (o_p, o_l))
        assert r_p["metrics"]["top1"] == r_l["metrics"]["top1"] and r_p["per_class"] == r_l["per_class"], o_p.run_id
        assert "packed_with" not in r_l
    ce0 = json.loads((packed[0].run_dir / "results.json").read_text())
    assert ce0["packed_with"] == ["digits_lt-erm-digits_ce-s1"]
    again = runner.run_suite(suite, ov("packed"), report=False, use_notebook=False, pack=True)
    assert [o.status for o in again] == ["skipped"] * 3


BLOCK_JUPYTER = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('papermill', 'jupyter_client', 'ipykernel', 'nbclient'):
            raise ImportError(f'{name} is blocked: this test runs a suite without Jupyter')
sys.meta_path.insert(0, _Blocked())
"""


def test_suite_no_notebook_needs_neither_papermill_nor_jupyter(tmp_path):
    """A bare GPU image: `ltr suite --no-notebook` with papermill, jupyter_client and ipykernel unimportable
    runs the profile, the runs (a seed listed twice runs once) and the report, all in-process."""
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_JUPYTER)
    suite = tmp_path / "dup.yaml"
    suite.write_text(yaml.safe_dump({"name": "dup", "profiles": [str(REPO / "params/smoke/digits_ce.yaml")],
                                     "runs": [{"params": str(REPO / "params/smoke/digits_ce.yaml"), "seeds": [0, 0]}]}))
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path / 'block'}:{REPO}"}
    proc = subprocess.run([sys.executable, "-m", "ltr_core.cli", "suite", str(suite), "--no-notebook",
                           "--set", f"results_root={tmp_path / 'results'}", "--set", f"figures_dir={tmp_path / 'figs'}",
                           "--set", f"cache_dir={tmp_path / 'cache'}"], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "running it once" in proc.stdout and "suite dup: 3 ok, 0 failed" in proc.stdout, proc.stdout
    assert (tmp_path / "results" / "dup" / "profile-digits_lt" / "profile.json").is_file()
    assert (tmp_path / "figs" / "dataset_digits_lt_profile.png").is_file()
    assert not (tmp_path / "results" / "dup" / "digits_lt-erm-digits_ce-s0" / "notebook.ipynb").exists()
    report = json.loads((tmp_path / "figs" / "report.json").read_text())
    assert report["collection"]["counted"] == ["digits_lt-erm-digits_ce-s0"]
    proc = subprocess.run([sys.executable, "-c", "import papermill"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0  # the block did hold


def test_workers_get_gpus_round_robin(monkeypatch):
    assert runner.worker_env(0, 4, []) == {"OMP_NUM_THREADS": "4"}
    slots = [runner.worker_env(i, 2, ["0", "1"])["CUDA_VISIBLE_DEVICES"] for i in range(5)]
    assert slots == ["0", "1", "0", "1", "0"]  # 5 workers on 2 GPUs: 3 on GPU 0, 2 on GPU 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert runner.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runner.visible_gpus() == []


def test_pack_is_automatic_only_in_process_on_a_cuda_machine(monkeypatch):
    """pack=None: packs in-process runs where GPUs are visible; notebook runs and CPU-only machines run alone."""
    calls = []
    monkeypatch.setattr(runner, "_run_packed", lambda jobs: (calls.append(len(jobs)), ([], []))[1])
    monkeypatch.setattr(runner, "run_params", lambda *a, **k: runner.RunOutcome("x", Path("."), "skipped"))
    monkeypatch.setattr(runner, "run_profile", lambda *a, **k: runner.RunOutcome("p", Path("."), "skipped"))
    for gpus, use_notebook, packed in ((["0"], False, True), ([], False, False), (["0"], True, False)):
        calls.clear()
        monkeypatch.setattr(runner, "visible_gpus", lambda g=gpus: g)
        runner.run_suite("params/smoke/suite_stage2.yaml", {}, report=False, use_notebook=use_notebook)
        assert bool(calls) == packed, (gpus, use_notebook)
