"""Results you can trust: a crash at any write, a second writer, stale inputs, or the thread count never
changes a recorded number; a run is either right or refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, killed_at_epoch, tiny_params
from ltr_core import engine, faults
from ltr_core.config import from_params
from ltr_core.methods import erm
from ltr_core.results import RunBusy, RunDir, acquire_run_lock, release_run_lock

TIMING = ("epoch_seconds", "images_per_second")


def _numbers(run_dir: Path) -> dict:
    """What a table takes from a run: the metrics, per-class values and the per-epoch records (no timings)."""
    res = json.loads((run_dir / "results.json").read_text())
    epochs = [{k: v for k, v in r.items() if k not in TIMING} for r in RunDir(run_dir).read_metrics()]
    return {"metrics": res["metrics"], "per_class": res["per_class"], "epochs": epochs,
            "per_class_csv": (run_dir / "per_class.csv").read_text(), "status": res["status"]}


def _forked_run(params: dict, fault_at: int | None = None, log: Path | None = None) -> int:
    """Run ``erm.run`` in a forked child (optionally dying at crash point ``fault_at``); its exit code."""
    pid = os.fork()
    if pid == 0:  # child: no cleanup on the way out, like a kill
        code = 0
        try:
            faults._calls = 0
            os.environ.pop("LTR_FAULT_AT", None)
            os.environ.pop("LTR_FAULT_LOG", None)
            if fault_at is not None:
                os.environ["LTR_FAULT_AT"] = str(fault_at)
            if log is not None:
                os.environ["LTR_FAULT_LOG"] = str(log)
            erm.run(from_params(params))
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_crash_at_every_write_then_a_rerun_gives_the_uninterrupted_numbers(tmp_path):
    """Every point between two file operations of the checkpoints, the run's files and results.json."""
    params = tiny_params(tmp_path, epochs=3, max_steps_per_epoch=2, name="f")
    ref = {**params, "results_root": str(tmp_path / "ref")}
    log = tmp_path / "points.txt"
    assert _forked_run(ref, log=log) == 0
    points = log.read_text().splitlines()
    names = {p.split(" ", 1)[1] for p in points}
    assert {"checkpoint weights written", "checkpoint optimizer written", "checkpoint directory renamed",
            "before replace LATEST", "after replace LATEST", "old checkpoint removed",
            "before replace results.json", "before replace model.safetensors"} <= names, names
    want = _numbers(from_params(ref).run_path())
    for n in range(1, len(points) + 1):
        trial = {**params, "results_root": str(tmp_path / f"k{n}")}
        assert _forked_run(trial, fault_at=n) == 137, f"point {n} ({points[n - 1]}) did not fire"
        run_dir = from_params(trial).run_path()
        res = RunDir(run_dir).read_results()
        assert res is None or n == len(points), f"a crash at point {n} left a results.json"
        assert _forked_run(trial) == 0, f"rerun after a crash at point {n} ({points[n - 1]}) failed"
        assert _numbers(run_dir) == want, f"crash at point {n} ({points[n - 1]}) changed the numbers"
        assert not list(run_dir.rglob("*.tmp*")), f"temporary files left after point {n}"


def test_sigkill_at_random_instants_then_resume_matches(tmp_path):
    params = tiny_params(tmp_path, epochs=6, max_steps_per_epoch=6)
    ref = from_params({**params, "name": "ref"})
    erm.run(ref)
    want = _numbers(ref.run_path())
    started = time.time()
    p = tmp_path / "probe.yaml"
    p.write_text(yaml.safe_dump({**params, "name": "probe"}))
    subprocess.run([sys.executable, "-m", "ltr_core.train", str(p)], cwd=REPO, check=True, capture_output=True)
    span = time.time() - started
    rng = random.Random(0)
    for i, at in enumerate(sorted(rng.uniform(0.3, 1.0) * span for _ in range(4))):
        name = f"kill{i}"
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({**params, "name": name}))
        proc = subprocess.Popen([sys.executable, "-m", "ltr_core.train", str(p)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(at)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        out = subprocess.run([sys.executable, "-m", "ltr_core.train", str(p)], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        assert _numbers(from_params({**params, "name": name}).run_path()) == want, f"killed at {at:.2f} s"


def test_a_damaged_checkpoint_falls_back_to_the_previous_epoch_or_is_named(tmp_path, monkeypatch):
    params = tiny_params(tmp_path, epochs=4, name="dmg")
    ref = from_params({**params, "results_root": str(tmp_path / "ref")})
    erm.run(ref)
    killed_at_epoch(params, 3, monkeypatch)
    cfg = from_params(params)
    ckpt = cfg.run_path() / "checkpoint"
    (ckpt / "epoch-000002" / "model.safetensors").write_bytes(b"torn")
    res = erm.run(cfg)  # falls back to epoch 1 and trains 2 and 3 again: same numbers
    assert res["resumed_from_epoch"] == 1
    assert _numbers(cfg.run_path()) == _numbers(ref.run_path())
    # nothing loadable: the error names the files and the fix
    killed_at_epoch({**params, "name": "dmg2"}, 3, monkeypatch)
    cfg2 = from_params({**params, "name": "dmg2"})
    for d in (cfg2.run_path() / "checkpoint").glob("epoch-*"):
        (d / "model.safetensors").write_bytes(b"torn")
    with pytest.raises(engine.CheckpointError) as err:
        erm.run(cfg2)
    msg = str(err.value)
    assert str(cfg2.run_path() / "checkpoint") in msg and "--force" in msg and "epoch-000002" in msg


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    cfg = from_params(tiny_params(tmp_path, name="busy"))
    run_dir = cfg.run_path()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ltr_core.results import acquire_run_lock; "
        f"acquire_run_lock({str(run_dir)!r}); print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy) as err:
            erm.run(cfg)
        assert f"pid {holder.pid}" in str(err.value)
        assert RunDir(run_dir).read_metrics() == [] and not (run_dir / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    res = erm.run(cfg)  # the lock died with its holder
    assert res["status"] == "complete"
    acquire_run_lock(run_dir)  # re-entrant in one process, released explicitly
    acquire_run_lock(run_dir)
    release_run_lock(run_dir)


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        cfg, _ = from_params(tiny_params(tmp_path, epochs=1, name="perm")), None
        erm.run(cfg)
        for f in ("results.json", "config.yaml", "per_class.csv", "model.safetensors"):
            assert (cfg.run_path() / f).stat().st_mode & 0o777 == 0o644, f
    finally:
        os.umask(old)


def test_a_stale_stage_one_makes_stage_two_run_again(tmp_path, capsys):
    base = tiny_params(tmp_path, epochs=2, name="ce")
    erm.run(from_params(base))
    from ltr_core.methods import decouple

    stage2 = tiny_params(tmp_path, method="decouple", decouple_mode="crt", init_run="digits_lt-erm-ce-s0",
                         epochs=1, warmup_epochs=0.0, name="crt")
    first = decouple.run(from_params(stage2))
    assert first["inputs"]["init_run"]["run"] == "digits_lt-erm-ce-s0"
    results_file = from_params(stage2).run_path() / "results.json"
    mtime = results_file.stat().st_mtime_ns
    decouple.run(from_params(stage2))
    assert results_file.stat().st_mtime_ns == mtime  # skipped: same inputs
    # stage 1 re-run with another config under the same run id (what `ltr run --force --set lr=...` does)
    from ltr_core.results import archive_run_dir

    archive_run_dir(from_params(base).run_path(), base["results_root"])
    erm.run(from_params({**base, "lr": 0.01}))
    capsys.readouterr()
    again = decouple.run(from_params(stage2))
    out = capsys.readouterr().out
    assert "stale:" in out and "stage-1 run digits_lt-erm-ce-s0" in out
    assert again["inputs"]["init_run"]["weights_sha256"] != first["inputs"]["init_run"]["weights_sha256"]
    archived = list((Path(base["results_root"]) / ".archive").rglob("results.json"))
    assert len(archived) == 2  # the old stage 1 and the stale stage 2 are kept, outside the suite folder


def _jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_changed_split_lists_are_other_inputs(tmp_path, capsys):
    root = tmp_path / "imgs"
    for i in range(12):
        _jpeg(root / f"im{i}.jpg", 20 * i)
    (root / "train.txt").write_text("".join(f"im{i}.jpg {i % 2}\n" for i in range(8)))
    (root / "test.txt").write_text("".join(f"im{i}.jpg {i % 2}\n" for i in range(8, 12)))
    params = tiny_params(tmp_path, dataset="image_list", data_root=str(root), image_size=8, epochs=1,
                         num_workers=0, imbalance_ratio=1.0, name="lists")
    first = erm.run(from_params(params))
    assert first["inputs"]["data"]["files"]  # the list files' sha256 are recorded
    (root / "train.txt").write_text("".join(f"im{i}.jpg {i % 2}\n" for i in range(7)))  # one image fewer
    capsys.readouterr()
    second = erm.run(from_params(params))
    assert "stale:" in capsys.readouterr().out
    assert second["inputs"]["digest"] != first["inputs"]["digest"]
    assert second["inputs"]["data"]["splits"]["train"]["n"] == 7


def _run_with_threads(tmp_path: Path, params: dict, threads: int) -> dict:
    p = tmp_path / f"t{threads}.yaml"
    params = {**params, "results_root": str(tmp_path / f"t{threads}")}
    p.write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("MKL_CBWR", None)
    out = subprocess.run([sys.executable, "-m", "ltr_core.train", str(p)], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return _numbers(from_params(params).run_path())


def test_the_thread_count_does_not_change_the_numbers_digits(tmp_path):
    params = tiny_params(tmp_path, loss="balanced_softmax", epochs=4, max_steps_per_epoch=0, name="bs")
    assert _run_with_threads(tmp_path, params, 1) == _run_with_threads(tmp_path, params, 2)


def test_the_thread_count_does_not_change_the_numbers_cifar(tmp_path, shared_data):
    params = tiny_params(tmp_path, dataset="cifar10_lt", data_root=str(shared_data / "cifar10"), image_size=32,
                         crop_padding=4, batch_size=64, epochs=2, max_steps_per_epoch=4, name="c",
                         cache_dir=str(REPO / "data" / "cache"))
    assert _run_with_threads(tmp_path, params, 1) == _run_with_threads(tmp_path, params, 2)


def test_async_and_sparse_checkpoints_resume_to_the_same_numbers(tmp_path, monkeypatch):
    """checkpoint_async (one flat host copy, background writer) and checkpoint_every=2 change nothing
    measured; a kill after epoch 2 resumes from the epoch-1 checkpoint."""
    params = tiny_params(tmp_path, epochs=4, name="ref")
    erm.run(from_params(params))
    fast = {**params, "name": "async", "checkpoint_async": True, "checkpoint_every": 2}
    assert from_params(fast).run_path() != from_params(params).run_path()
    killed_at_epoch(fast, 3, monkeypatch)
    assert engine.Checkpoint(RunDir(from_params(fast).run_path())).load_state()["epoch"] == 1
    res = erm.run(from_params(fast))
    assert res["resumed_from_epoch"] == 1
    assert _numbers(from_params(fast).run_path()) == _numbers(from_params(params).run_path())


def test_host_snapshot_is_one_copy_per_dtype_and_exact():
    import torch

    from ltr_core.checkpoint import host_snapshot

    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, 2, 2)}
    snap = host_snapshot(tensors)
    assert all(torch.equal(snap[k], tensors[k]) and snap[k].shape == tensors[k].shape for k in tensors)
    assert snap["a"].untyped_storage().data_ptr() == snap["c"].untyped_storage().data_ptr()  # one buffer


def _fresh_numerics(**env_extra: str) -> dict:
    """What a fresh process that imports ltr_core computes with (the ISA variables of this one removed)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "LTR_NATIVE_ISA", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(env_extra)
    code = ("import json, os, ltr_core, torch; from ltr_core import numerics; x = torch.randn(64); (x * 2).sum(); "
            "print(json.dumps({'aten': torch.backends.cpu.get_cpu_capability(), "
            "'onednn': os.environ.get('ONEDNN_MAX_CPU_ISA'), 'identity': numerics.kernels_identity(), "
            "'inductor_cache': os.environ.get('TORCHINDUCTOR_CACHE_DIR', '')}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="the AVX2 pins are for x86 CPUs")
def test_every_x86_cpu_runs_the_avx2_kernels_unless_told_otherwise():
    pinned = _fresh_numerics()
    assert pinned.pop("inductor_cache").endswith("-avx2")  # never a graph compiled for another ISA (SIGSEGV)
    assert pinned == {"aten": "AVX2", "onednn": "AVX2", "identity": {}}  # also on AVX-512 / AMX CPUs
    assert _fresh_numerics(ONEDNN_MAX_CPU_ISA="AVX512_CORE")["onednn"] == "AVX512_CORE"  # the user's value is kept
    native = _fresh_numerics(LTR_NATIVE_ISA="1")
    assert native["onednn"] is None and native["inductor_cache"] == ""
    # a run on the CPU's own kernels is another identity: never resumed or skipped on another CPU's kernels
    assert native["identity"] == {"cpu_kernels": {"aten": native["aten"], "onednn_max_cpu_isa": "native"}}


def test_precision_auto_is_bf16_on_a_cpu_only_with_native_bf16_and_native_kernels(tmp_path, monkeypatch):
    import torch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("LTR_NATIVE_ISA", raising=False)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert engine.autocast_dtype("auto", cpu) is None  # the AVX2 pins emulate bf16: fp32
    assert engine.autocast_dtype("auto", cuda) is torch.bfloat16 and engine.autocast_dtype("bf16", cpu) is torch.bfloat16
    params = tiny_params(tmp_path, epochs=1, name="p")
    assert "cpu_autocast" not in lifecycle_inputs(params)
    monkeypatch.setenv("LTR_NATIVE_ISA", "1")
    assert engine.autocast_dtype("auto", cpu) is torch.bfloat16 and engine.autocast_dtype("fp32", cpu) is None
    assert lifecycle_inputs(params)["cpu_autocast"] == "bf16"  # another identity: auto means bf16 here
    assert "cpu_autocast" not in lifecycle_inputs({**params, "precision": "fp32"})
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    assert engine.autocast_dtype("auto", cpu) is None and "cpu_autocast" not in lifecycle_inputs(params)


def lifecycle_inputs(params: dict) -> dict:
    """The method's extra inputs of the run of ``params`` on its data (what ``inputs_of`` records)."""
    from ltr_core.lifecycle import build_data, inputs_of

    cfg = from_params(params)
    return inputs_of(cfg, build_data(cfg.data)).get("extra") or {}


def test_the_kernels_are_part_of_a_cpu_runs_inputs_only_when_not_the_default(tmp_path, monkeypatch):
    params = tiny_params(tmp_path, epochs=1, name="k")
    default = erm.run(from_params(params))
    assert "cpu_kernels" not in json.dumps(default["inputs"])  # AVX2 everywhere: the digest of earlier runs
    import torch

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    cfg = from_params({**params, "results_root": str(tmp_path / "native")})
    res = erm.run(cfg)
    assert res["inputs"]["digest"] != default["inputs"]["digest"]
    assert '"cpu_kernels": {"aten": "AVX512"' in json.dumps(res["inputs"])


def test_a_partial_run_of_other_machine_settings_is_refused_not_dropped(tmp_path, monkeypatch):
    """A checkpoint that differs from this process only in the CPU kernels (or a compiled run's threads) is
    resumable under those settings: the run is refused with how to resume it, and nothing is moved."""
    import torch

    params = tiny_params(tmp_path, epochs=3, name="m")
    killed_at_epoch(params, 2, monkeypatch)
    run = from_params(params).run_path()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    from ltr_core.lifecycle import ResumableElsewhere

    with pytest.raises(ResumableElsewhere, match=r"after epoch 1\) computed with the CPU kernels AVX2.*unset LTR_NATIVE_ISA.*--force"):
        erm.run(from_params(params))
    assert engine.Checkpoint(RunDir(run)).load_state()["epoch"] == 1 and not (tmp_path / "results" / ".archive").exists()
    monkeypatch.undo()
    assert erm.run(from_params(params))["resumed_from_epoch"] == 1


def test_machine_change_names_only_a_change_of_machine_settings():
    from ltr_core.identity import machine_change

    base = {"data": {"digest": "a"}, "extra": {"compiled_cpu_threads": 2}, "digest": "x"}
    assert "set OMP_NUM_THREADS=2" in machine_change(base, {**base, "extra": {"compiled_cpu_threads": 1}, "digest": "y"})
    assert machine_change(base, {**base, "data": {"digest": "b"}, "extra": {"compiled_cpu_threads": 1}}) is None
    assert machine_change(base, {**base, "extra": {"compiled_cpu_threads": 2, "texts": "t"}}) is None
    assert machine_change(None, base) is None
