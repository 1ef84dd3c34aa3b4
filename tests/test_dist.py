"""Data parallel: rank slicing of every sampler, the strided gather, the launcher wiring, and a torchrun
run with 2 gloo processes that resumes a 1-process checkpoint and ends with the 1-process logits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ltr_core import cli, dist, engine, launch, runner
from ltr_core.config import from_params
from ltr_core.data.loaders import SeededKeySampler
from ltr_core.data.samplers import SAMPLERS, RankSlicedSampler, SequentialEpochSampler, build_sampler
from ltr_core.methods import get_method
from ltr_core.results import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_params  # noqa: E402

LABELS = torch.tensor([0] * 30 + [1] * 12 + [2] * 5 + [3])  # 48 samples, long-tailed


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("world", [2, 3])
def test_rank_slices_partition_the_epoch_and_its_batches(name, world):
    base = build_sampler(name, LABELS, seed=7, epochs=10)
    full = base.indices(4)
    shards = [RankSlicedSampler(build_sampler(name, LABELS, seed=7, epochs=10), r, world) for r in range(world)]
    local = [s.indices(4) for s in shards]
    assert sum(len(s) for s in shards) == len(full) and [len(s) for s in shards] == [len(x) for x in local]
    # position p of rank r is global position r + world * p
    for r, x in enumerate(local):
        assert torch.equal(x, full[r::world])
    # per-rank batch b = B / world: the ranks' step-k batches together are the global batch k
    B, b = 6 * world, 6
    for k in range(len(full) // B):
        union = torch.cat([x[k * b:(k + 1) * b] for x in local])
        assert sorted(union.tolist()) == sorted(full[k * B:(k + 1) * B].tolist())


def test_file_path_sample_seeds_are_the_global_positions():
    base = build_sampler("instance", LABELS, seed=1)
    one = list(SeededKeySampler(base, 1))
    two = [list(SeededKeySampler(RankSlicedSampler(build_sampler("instance", LABELS, seed=1), r, 2), 1))
           for r in (0, 1)]
    assert sorted(two[0] + two[1]) == sorted(one) and two[0] == one[0::2] and two[1] == one[1::2]


def test_unstride_restores_order_and_drops_padding():
    full = torch.arange(11 * 3).reshape(11, 3)  # 11 rows over 3 ranks: shards of 4, 4, 3 (+1 pad)
    parts = [torch.cat([full[r::3], torch.full((4 - len(full[r::3]), 3), -1)]) for r in range(3)]
    assert torch.equal(dist.unstride(parts, 11), full)
    assert dist.gather_strided(full)[0] is full  # one process: identity
    assert SequentialEpochSampler(LABELS, seed=0).indices(3).tolist() == list(range(48))


def test_env_ranks_and_slurm_host():
    assert dist.env_ranks({}) == dist.EnvRanks()
    assert dist.env_ranks({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_NTASKS": "1",
                           "SLURM_PROCID": "0"}).source == "torchrun"  # torchrun inside a SLURM job wins
    r = dist.env_ranks({"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"})
    assert (r.rank, r.world_size, r.local_rank, r.source) == (5, 8, 1, "slurm")
    assert dist.first_host("gpu[03-05,07],cpu1") == "gpu03" and dist.first_host("a,b") == "a"
    assert dist.rank_seed(5) == 5 and not dist.is_distributed()


def test_torchrun_command_and_cli_nproc_wiring(tmp_path, monkeypatch):
    cmd = launch.torchrun_command("/x/launch.yaml", 4)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "ltr_core.train",
                       "/x/launch.yaml"]
    seen = {}

    def fake_launch(params, nproc=None, *, log_path=None, echo=True):
        seen.update(params=params, log=log_path)
        raise launch.LaunchFailed("stub")

    monkeypatch.setattr(launch, "launch_resolved", fake_launch)
    rc = cli.main(["run", "params/smoke/digits_ce.yaml", "--nproc", "2", "--results-root", str(tmp_path)])
    assert rc == 1 and seen["params"]["dist_nproc"] == 2 and seen["log"].name == "stdout.log"
    plain, _ = runner.resolve_params("params/smoke/digits_ce.yaml", {"results_root": str(tmp_path)})
    assert seen["params"]["run_dir"] == plain["run_dir"]  # --nproc is placement: same run directory and hash


class _Stop(Exception):
    pass


def test_two_gloo_processes_resume_and_match_one_process(tmp_path, monkeypatch):
    """Same global batch (32 = 2 ranks x 16), no BatchNorm (SyncBatchNorm needs CUDA), augmentation off so the
    inputs are sample-identical: the 2-process run resumed from a 1-process checkpoint ends with the logits of
    an uninterrupted 1-process run up to float reduction order (tolerance 1e-4 on logits of scale ~1-5)."""
    torch.set_num_threads(1)
    p = tiny_params(tmp_path, model="test_vit", image_size=32, augment=False, optimizer="adamw", lr=1e-3,
                    weight_decay=0.0, epochs=3, max_steps_per_epoch=4, eval_every=0)
    one = get_method("erm").run(from_params({**p, "name": "one"}))

    saves = []
    original = engine.Checkpoint.save

    def save_then_stop(self, model, optimizer, state):
        original(self, model, optimizer, state)
        saves.append(state["epoch"])
        raise _Stop  # "killed" right after the checkpoint of epoch 0

    monkeypatch.setattr(engine.Checkpoint, "save", save_then_stop)
    with pytest.raises(_Stop):
        get_method("erm").run(from_params({**p, "name": "two"}))
    monkeypatch.setattr(engine.Checkpoint, "save", original)
    assert saves == [0]

    two = launch.run_distributed({**p, "name": "two"}, 2, echo=False)
    assert two["resumed_from_epoch"] == 0 and one["resumed_from_epoch"] is None
    assert two["config_hash"] == one["config_hash"]
    d1, d2 = (RunDir(Path(p["results_root"]) / "interactive" / r["run_id"]) for r in (one, two))
    a, b = d1.load_logits(), d2.load_logits()
    assert np.array_equal(a["labels"], b["labels"])
    assert np.abs(a["logits"] - b["logits"]).max() < 1e-4
    assert two["metrics"]["top1"] == one["metrics"]["top1"]
    log = (Path(d2.path) / "stdout.log").read_text()
    assert "nproc_per_node=2" in log and "resuming" in log
    losses = [[r["train_loss"] for r in d.read_metrics()] for d in (d1, d2)]
    assert len(losses[1]) == 3 and np.allclose(losses[0], losses[1], atol=1e-5)  # per-epoch loss over all ranks
