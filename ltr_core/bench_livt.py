"""``ltr bench --livt PARAMS``: training images/s of LiVT's two stages, MGP (MAE pre-training) and BFT
(balanced fine-tuning), against the bound img/s = peak / (3 · 2 · forward MACs per image) (:func:`bench_livt`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from . import engine
from .bench_common import _device_label, cpu_model, markdown_table, bound_tflops, machine_line, note_lines

def cpu_matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    """Measured fp32 matmul GFLOP per CPU-second of this process (2·n³ FLOPs per n×n product): the CPU's
    practical peak per core, the analogue of the H100's measured 790 TFLOP/s for a CPU MFU. CPU time
    rather than wall time, so that other processes on a shared machine do not lower it."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t0 = time.process_time()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.process_time() - t0) / 1e9


def bench_livt(params: str | Path, *, steps: int = 20, warmup: int = 3, device: str = "auto",
               overrides: dict | None = None) -> list[dict]:
    """Training images/s of LiVT's two stages for a LiVT params file (:func:`ltr_core.methods.livt.stage_throughput`:
    the real input path, optimizer and augmentation; no evaluation, nothing written) at the params' batch sizes
    (``livt_mgp_batch_size``, ``batch_size``: one step = one whole batch, no accumulation) unless ``overrides``
    change them. Each row: measured images/s, train GFLOP per image (3 × 2 × forward
    MACs of performance.md §10), achieved TFLOP/s, the device's peak (H100: 790 bf16; CPU: measured fp32 matmul),
    the bound images/s = peak / train FLOPs per image (100 % MFU; performance.md §3 at 50 % is half) and the
    measured fraction of it, plus the H100 bounds at 100 % / 50 % MFU for comparison. On the CPU the peak and
    the fraction are per CPU-second (matmul GFLOP per CPU-second vs images per CPU-second): the per-core MFU,
    independent of other load on a shared machine."""
    from . import runner
    from .data import build_data
    from .methods import livt

    ov = {**(overrides or {}), "device": device}
    _, cfg = runner.resolve_params(params, ov)
    if cfg.run.method != "livt":
        raise ValueError(f"--livt needs a LiVT params file (method: livt), got method {cfg.run.method!r} in {params}")
    engine.seed_everything(cfg.run.seed)
    data = build_data(cfg.data)
    out = livt.stage_throughput(cfg, data, steps=steps, warmup=warmup)
    dev = engine.resolve_device(device)
    prec = "bf16" if engine.autocast_dtype(cfg.train.precision, dev) is not None else "fp32"
    peak = bound_tflops(dev, prec)
    peak_note = "H100 bf16 (measured dense peak)"
    if dev.type == "cpu":
        peak, peak_note = cpu_matmul_gflops() / 1e3, "CPU fp32 matmul per CPU-second (measured)"
    rows = []
    for stage, label in (("mgp", "MGP (MAE)"), ("bft", "BFT (ViT)")):
        r = out[stage]
        train_flops = 3 * 2 * r["forward_gmacs_per_image"] * 1e9
        bound = peak * 1e12 / train_flops if peak else float("nan")
        rate = r["images_per_cpu_second"] if dev.type == "cpu" else r["images_per_second"]
        rows.append({
            "stage": label, "params": str(params), "image_size": r["image_size"], "patch_size": r["patch_size"],
            "encoder_tokens": r["tokens"], "batch_size": r["batch_size"], "params_m": r["params_m"],
            "forward_gmacs_per_image": r["forward_gmacs_per_image"], "train_gflop_per_image": train_flops / 1e9,
            "images_per_second": r["images_per_second"], "images_per_cpu_second": r["images_per_cpu_second"],
            "achieved_tflops": train_flops * r["images_per_second"] / 1e12, "peak_tflops": peak or float("nan"),
            "peak": peak_note if peak else "n/a", "bound_images_per_second": bound,
            "fraction_of_bound": rate / bound if peak else float("nan"),
            "h100_bound_100": r["h100_bound_100"], "h100_bound_50": r["h100_bound_50"],
            "of_h100_bound_50": r["images_per_second"] / r["h100_bound_50"],
            "device": _device_label(dev), "precision": prec, "steps": r["steps"], "torch": str(torch.__version__),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
            "cpu_model": cpu_model(),
        })
    return rows


LIVT_COLUMNS = [  # (csv key, Markdown header, format)
    ("stage", "Stage", "{}"), ("image_size", "Input", "{}"), ("patch_size", "Patch", "{}"),
    ("encoder_tokens", "Enc. tokens", "{}"), ("batch_size", "Batch", "{}"), ("params_m", "Params M", "{:.1f}"),
    ("train_gflop_per_image", "GFLOP/img (train)", "{:.3g}"), ("images_per_second", "img/s", "{:,.1f}"),
    ("images_per_cpu_second", "img/CPU-s", "{:,.1f}"), ("achieved_tflops", "TFLOP/s", "{:.3g}"),
    ("peak_tflops", "Peak TFLOP/s", "{:.3g}"), ("bound_images_per_second", "Bound img/s (100 %)", "{:,.0f}"),
    ("fraction_of_bound", "Of bound", "{:.1%}"), ("h100_bound_50", "H100 bound img/s (50 %)", "{:,.0f}"),
]


def format_livt_rows(rows: list[dict]) -> str:
    """A Markdown table of :func:`bench_livt` rows."""
    return markdown_table(rows, LIVT_COLUMNS)


def write_livt_outputs(rows: list[dict], out_dir: str | Path, note: str = "") -> list[Path]:
    """``<out_dir>/livt_throughput.md`` (machine line, table, formula) and ``livt_throughput.csv``."""
    import pandas as pd

    from .results import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# ltr bench --livt: LiVT MGP and BFT training throughput", "",
          f"Machine: {machine_line(rows)}; CPU {rows[0].get('cpu_model', '?')}, "
          f"load average {rows[-1]['load_average']:.1f}; params `{rows[0]['params']}` "
          f"({rows[0]['precision']}, {rows[0]['steps']} timed steps per stage)", "", format_livt_rows(rows), "",
          "Bound (performance.md §3/§10): img/s = MFU · peak / (3 · 2 · forward MACs per image); here at MFU 1 "
          "with the device's peak (H100: 790 TFLOP/s bf16; CPU: the measured fp32 matmul GFLOP per CPU-second); "
          "`Of bound` = measured / bound = the MFU reached (CPU: img/CPU-s against the per-CPU-second peak). "
          "img/CPU-s = images per CPU-second of the process (the unloaded rate of a one-thread run on a shared "
          "CPU)."]
    md += note_lines(rows, note, "CPU run: fp32 and reduced batches; the H100 column is the performance.md bound of this "
                     "configuration at 50 % MFU, for scale. Regenerate on a GPU with the params' own batches, e.g. "
                     "`ltr bench --livt params/cifar10_lt/livt_ir100.yaml --set data_root=<CIFAR-10 root> "
                     "--out figures/perf/`.")
    return [atomic_write_text(out / "livt_throughput.md", "\n".join(md) + "\n"),
            atomic_write_text(out / "livt_throughput.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))]
