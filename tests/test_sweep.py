"""Cluster sweeps through submitit: the job object, the executor parameters, and a tiny digits suite run by
submitit's local backend (the same papermill path, results in the usual run directories, then the report)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from ltr_core import cli, runner
from ltr_core.results import RunDir

submitit = pytest.importorskip("submitit")
from ltr_core.sweep import ClusterOptions, RunJob, make_executor, run_suite_cluster  # noqa: E402


def test_run_job_pickles_and_requeues_itself():
    job = RunJob("run", "params/smoke/digits_ce.yaml", {"seed": 1, "suite": "s"})
    back = pickle.loads(pickle.dumps(job))
    assert (back.kind, back.params_path) == ("run", "params/smoke/digits_ce.yaml")
    assert back.overrides == {"seed": 1, "suite": "s"}
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function.overrides == job.overrides


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")  # submitit looks for srun
    opts = ClusterOptions(partition="gpu", timeout_min=90, array_parallelism=4, cpus_per_task=16, mem_gb=64,
                          slurm={"constraint": "h100"})
    ex = make_executor("slurm", tmp_path, opts, nproc=4, name="ltr-x")
    p = ex._executor.parameters
    assert (p["gpus_per_node"], p["partition"], p["array_parallelism"], p["time"], p["cpus_per_task"]) == \
        (4, "gpu", 4, 90, 16)
    assert p["constraint"] == "h100" and p["mem"] == "64GB"
    sbatch = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --constraint=h100", "#SBATCH --job-name=ltr-x"):
        assert line in sbatch
    with pytest.raises(Exception, match="unknown executor"):
        make_executor("ray", tmp_path, opts, 1, "x")
    args = cli.build_parser().parse_args(["suite", "s.yaml", "--executor", "slurm", "--slurm", "account=abc"])
    assert args.executor == "slurm" and args.slurm_params == ["account=abc"]


def test_submitit_local_suite_lands_in_the_usual_run_dirs(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump({"name": "tinysweep", "runs": [{"params": "params/smoke/digits_ce.yaml",
                                                                     "seeds": [0]}]}))
    ov = {"results_root": str(tmp_path / "results"), "figures_dir": str(tmp_path / "figures")}
    runner.ensure_kernel()
    outcomes = run_suite_cluster(suite, ov, executor="submitit-local",
                                 options=ClusterOptions(folder=str(tmp_path / "jobs"), timeout_min=10))
    assert [o.status for o in outcomes] == ["complete", "complete"], outcomes  # the run job, then the report
    params, cfg = runner.resolve_params("params/smoke/digits_ce.yaml", {**ov, "seed": 0, "suite": "tinysweep"})
    run_dir = Path(params["run_dir"])
    assert run_dir == tmp_path / "results" / "tinysweep" / cfg.run_id
    results = RunDir(run_dir).read_results()
    assert results["status"] == "complete" and (run_dir / "notebook.ipynb").is_file()  # the papermill path
    assert (tmp_path / "figures" / "summary.md").is_file()  # ltr report over the same directories
    assert list((tmp_path / "jobs").glob("*_result.pkl"))  # submitit's own job records
