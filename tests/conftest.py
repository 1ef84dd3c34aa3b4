"""Shared fixtures: repo paths, the shared data folder, a tiny digits-LT run config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LTR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set LTR_SHARED_DATA)")
    return SHARED_DATA


def tiny_params(tmp_path: Path, **overrides) -> dict:
    """A digits-LT CE run that takes a second or two on the CPU."""
    params = {
        "dataset": "digits_lt", "imbalance_ratio": 25.0, "image_size": 8, "crop_padding": 1,
        "model": "resnet32", "epochs": 3, "batch_size": 32, "eval_batch_size": 500, "lr": 0.05,
        "schedule": "cosine", "warmup_epochs": 1.0, "max_steps_per_epoch": 4, "device": "cpu",
        "tensorboard": False, "results_root": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache"),
    }
    params.update(overrides)
    return params


def killed_at_epoch(params: dict, epoch: int, monkeypatch) -> None:
    """Run the ERM run of ``params`` until ``epoch`` starts, then die like a kill (the checkpoint of
    ``epoch - 1`` is committed, no results.json)."""
    from ltr_core import engine
    from ltr_core.config import from_params
    from ltr_core.methods import erm

    original = engine.train_one_epoch

    def dies(*args, **kwargs):
        if kwargs["epoch"] == epoch:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        erm.run(from_params(params))
    monkeypatch.setattr(engine, "train_one_epoch", original)
