"""The per-epoch log: TensorBoard tags by split, progress bars only when interactive, the live curve."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_params
from ltr_core import epochlog, live
from ltr_core.config import from_params
from ltr_core.methods import get_method
from ltr_core.results import RunDir

RECORDS = [{"epoch": e, "train_loss": 2.0 - e / 2, "lr": 0.1, "epoch_seconds": 1.0, "images_per_second": 100.0,
            "top1": 10.0 + 20 * e, "many": 50.0, "medium": 20.0 + e, "few": float("nan"), "ece": 9.0} for e in range(3)]


def test_tensorboard_tags_are_grouped_by_split():
    assert epochlog.tb_tag("train_loss", "test") == "train/loss"
    assert [epochlog.tb_tag(k, "test") for k in ("lr", "epoch_seconds", "images_per_second")] == [
        "train/lr", "train/epoch_seconds", "train/images_per_second"]
    assert epochlog.tb_tag("top1", "test") == "test/top1" and epochlog.tb_tag("few", "val") == "val/few"
    assert epochlog.tb_tag("val_map", "test") == "val/map"


def test_a_run_writes_train_and_eval_split_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = from_params(tiny_params(tmp_path, epochs=2, max_steps_per_epoch=2, tensorboard=True))
    get_method("erm").run(cfg)
    acc = EventAccumulator(str(cfg.run_path() / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "test/top1", "test/many", "test/medium", "test/few", "test/ece"} <= tags
    assert not {t for t in tags if "/" not in t}, tags


def test_progress_bar_only_in_interactive_runs():
    loader = [1, 2, 3]
    assert epochlog._progress(loader, False, 0) is loader
    bar = epochlog._progress(loader, True, 0)
    assert list(bar) == loader and type(bar).__module__.startswith("tqdm")


def test_live_curve_renders_loss_and_shot_group_accuracy():
    png = live.render(RECORDS, "test", "a run")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert [k for k, _ in live._accuracy_keys(RECORDS)] == ["top1", "many", "medium", "few"]
    shown = []
    curve = live.LiveCurve("test", show=shown.append)
    for r in RECORDS:
        curve.update(r)
    assert len(shown) == 3 and len(curve.records) == 3


def test_epoch_logger_drives_the_live_curve_only_in_an_interactive_kernel(tmp_path, monkeypatch):
    rd = RunDir(tmp_path / "run")
    Path(rd.path).mkdir()
    assert epochlog.EpochLogger(rd, False, interactive=True).live is None  # pytest is no kernel
    monkeypatch.setattr(live, "in_kernel", lambda: True)
    assert epochlog.EpochLogger(rd, False, interactive=False).live is None
    logger = epochlog.EpochLogger(rd, False, interactive=True, eval_split="val")
    shown = []
    logger.live._show = shown.append
    logger.log(RECORDS[0])
    assert len(shown) == 1 and logger.live.split == "val"
    assert len(rd.read_metrics()) == 1


@pytest.mark.parametrize("interactive", [True, False])
def test_epoch_logger_reads_interactive_and_split_from_the_run_config(tmp_path, monkeypatch, interactive):
    monkeypatch.setattr(live, "in_kernel", lambda: True)
    cfg = from_params(tiny_params(tmp_path, interactive=interactive, eval_split="test"))
    rd = RunDir(cfg.run_path())
    rd.write_config({"interactive": interactive, "eval_split": "test"}, "x", cfg.run_id)
    logger = epochlog.EpochLogger(rd, False)
    assert (logger.live is not None) == interactive and logger.eval_split == "test"
