"""The per-epoch log of a training run (used by :func:`ltr_core.engine.fit`, importable as
``ltr_core.engine.EpochLogger``): ``metrics.jsonl``, TensorBoard scalars grouped ``train/...``, ``val/...``,
``test/...``, one printed line per epoch, progress bars and a live curve in interactive runs."""

from __future__ import annotations

import math
from pathlib import Path

from .results import RunDir

TRAIN_KEYS = ("lr", "epoch_seconds", "images_per_second")  # logged under train/ in TensorBoard


def tb_tag(key: str, eval_split: str) -> str:
    """TensorBoard tag of a record key, grouped by split: ``train_loss`` -> ``train/loss``, ``lr`` ->
    ``train/lr``, ``val_map`` -> ``val/map``; evaluation metrics -> ``<eval_split>/<key>`` (``test/top1``)."""
    for split in ("train", "val", "test"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    return f"train/{key}" if key in TRAIN_KEYS else f"{eval_split}/{key}"


class EpochLogger:
    """One record per epoch to metrics.jsonl, TensorBoard (optional, tags by split: :func:`tb_tag`), one
    printed line, and in interactive runs inside a kernel a live curve (:class:`ltr_core.live.LiveCurve`).

    ``eval_split`` and ``interactive`` default to the run's config.yaml (written before training starts).
    """

    def __init__(self, run_dir: RunDir, tensorboard: bool, *, eval_split: str | None = None,
                 interactive: bool | None = None):
        self.run_dir = run_dir
        recorded = (run_dir.read_config() or {}).get("params", {}) if eval_split is None or interactive is None else {}
        self.eval_split = eval_split or recorded.get("eval_split") or "test"
        self.writer = self.live = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir.path) / "tb"))
            except ImportError:  # tensorboard is optional on bare GPU boxes
                self.writer = None
        if (recorded.get("interactive", False) if interactive is None else interactive):
            from . import live

            if live.in_kernel():
                self.live = live.LiveCurve(self.eval_split, title=Path(run_dir.path).name)

    def log(self, record: dict) -> None:
        self.run_dir.append_metrics(record)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch" and math.isfinite(value):
                    self.writer.add_scalar(tb_tag(key, self.eval_split), value, record["epoch"])
            self.writer.flush()
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
        )
        print(shown, flush=True)
        if self.live is not None:
            self.live.update(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _progress(loader, enabled: bool, epoch: int):
    """``loader`` with a progress bar when ``enabled`` (interactive runs): tqdm.auto, a widget bar in
    JupyterLab (ipywidgets), a text bar in a terminal; papermill and ``ltr run`` logs get none, only the
    one line per epoch of :class:`EpochLogger`."""
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, mininterval=0.5)
