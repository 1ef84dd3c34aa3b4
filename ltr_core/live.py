"""A small live-updating training curve for interactive runs in JupyterLab.

:class:`LiveCurve` keeps the epoch records of a run and redraws one compact figure after each epoch:
the training loss (left) and the evaluated split's accuracy, overall and per shot group (right). The
figure is rendered off-screen (Agg) to a PNG and shown through one IPython display handle that is
updated in place, so it needs no widget backend and leaves exactly one figure in the cell's output.
:class:`ltr_core.engine.EpochLogger` drives it when the run is ``interactive`` and a kernel is present.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

LOSS_KEYS = ("train_loss",)
ACCURACY_KEYS = ("top1", "many", "medium", "few", "map", "map_head", "map_medium", "map_tail")


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (where rich output is shown)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], float(r[key])) for r in records
           if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _accuracy_keys(records: list[dict]) -> list[tuple[str, str]]:
    """(record key, label) of the accuracy series present, plain or with a val_/test_ prefix."""
    out = []
    for key in ACCURACY_KEYS:
        for prefix in ("", "val_", "test_"):
            if any(prefix + key in r for r in records):
                out.append((prefix + key, prefix.replace("_", " ") + key))
    return out


def render(records: list[dict], split: str = "test", title: str = "") -> bytes:
    """PNG bytes of the loss and accuracy curves of ``records`` (one dict per epoch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 2.6), dpi=90)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key in LOSS_KEYS:
        x, y = _series(records, key)
        if x:
            ax_loss.plot(x, y, marker=".", label=key.replace("_", " "))
    ax_loss.set(xlabel="epoch", title="training loss")
    for key, label in _accuracy_keys(records):
        x, y = _series(records, key)
        if x:
            ax_acc.plot(x, y, marker=".", label=label)
    ax_acc.set(xlabel="epoch", ylabel="%", title=f"{split} accuracy by shot group")
    if ax_acc.lines:
        ax_acc.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class LiveCurve:
    """One figure that follows a run epoch by epoch (see the module docstring)."""

    def __init__(self, split: str = "test", title: str = "", show: Callable[..., Any] | None = None):
        self.split, self.title, self.records = split, title, []
        self._show = show
        self._handle = None

    def _display(self, png: bytes) -> None:
        from IPython.display import Image, display

        image = Image(data=png, format="png")
        if self._show is not None:
            self._show(image)
        elif self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)

    def update(self, record: dict) -> None:
        """Add an epoch record and redraw."""
        self.records.append(dict(record))
        self._display(render(self.records, self.split, self.title))
