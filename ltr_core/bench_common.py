"""Helpers shared by the ``ltr bench`` benchmarks (:mod:`ltr_core.bench`): the device's name and bf16 bound,
device synchronisation, table cells, the machine line and the closing notes of a report."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import numpy as np
import torch

# dense bf16 bound: the H100's measured peak (performance.md §3); the H200 has the same Hopper tensor cores
# (its datasheet rate equals the H100's; it differs in memory). Any other device: "unknown", said plainly.
BOUND_TFLOPS_BF16 = {"H100": 790.0, "H200": 790.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_label(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    n = torch.get_num_threads()
    return f"cpu ({os.cpu_count()} cores, {n} thread{'s' if n != 1 else ''})"


def bound_tflops(dev: torch.device, precision: str) -> float | None:
    """The bf16 dense bound of the device (H100: 790 TFLOP/s); None on the CPU, in fp32, or if unknown."""
    if dev.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in BOUND_TFLOPS_BF16.items() if k in name), None)


def _cell(value, fmt: str) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        return "n/a"
    return fmt.format(value)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows`` under ``columns`` = (key, header, format); the first column left-aligned,
    n/a where a value is missing or not finite."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(_cell(r.get(k, float("nan")), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(rows: list[dict]) -> str:
    dev = rows[0]["device"] if rows else "?"
    return (f"{dev}; {cpu_model()}; torch {torch.__version__}; "
            f"python {platform.python_version()}; {datetime.date.today().isoformat()}")


def note_lines(rows: list[dict], note: str, cpu_note: str) -> list[str]:
    """Markdown lines closing a bench report: ``note``, then ``cpu_note`` when the rows were measured on a CPU."""
    parts = [note] if note else []
    if rows and rows[0]["device"].startswith("cpu"):
        parts.append(cpu_note)
    return ["", "\n\n".join(parts)] if parts else []
