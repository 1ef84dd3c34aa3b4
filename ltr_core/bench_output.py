"""``ltr bench`` model rows as a Markdown table, a CSV and a bar figure (:func:`write_outputs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bench_common import machine_line, markdown_table, note_lines

COLUMNS = [  # (csv key, Markdown header, format)
    ("label", "Model", "{}"), ("image_size", "Input", "{}"), ("batch_size", "Batch", "{}"),
    ("trained_params_m", "Trained M", "{:.3g}"), ("params_m", "Params M", "{:.1f}"),
    ("train_gflop_per_image", "GFLOP/img (fwd+bwd)", "{:.3g}"),
    ("model_step_images_per_s", "Model step img/s", "{:,.1f}"),
    ("full_step_images_per_s", "Full step img/s", "{:,.1f}"),
    ("pipeline_ratio", "Full / model", "{:.2f}"), ("peer_images_per_s", "timm peer img/s", "{:,.1f}"),
    ("full_vs_peer", "Full / peer", "{:.2f}"), ("full_step_tflops", "TFLOP/s (full)", "{:.3g}"),
    ("bound_tflops", "Bound TFLOP/s", "{:.0f}"), ("fraction_of_bound", "Of bound", "{:.1%}"),
]


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of the rows (n/a where a bound or peer does not apply)."""
    return markdown_table(rows, COLUMNS)


def legend() -> str:
    """Which CSV column each header is (the CSV holds the raw numbers)."""
    return "columns: " + ", ".join(f"{h} = {k}" for k, h, _ in COLUMNS)


def format_table(row: dict) -> str:
    """A two-column Markdown table of one benchmark row."""
    lines = ["| quantity | value |", "|---|---|"]
    for key, value in row.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


def plot_rows(rows: list[dict]):
    """Grouped horizontal bars (log scale): model step, full step and timm peer images/s per row."""
    import matplotlib.pyplot as plt

    from . import plots

    plots.set_style()
    labels = [f"{r['label']} @{r['image_size']}" for r in rows]
    series = [("model_step_images_per_s", "model step"), ("full_step_images_per_s", "full step (ours)"),
              ("peer_images_per_s", "timm peer")]
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 0.5 + 0.55 * len(rows)))
    height = 0.8 / len(series)
    ypos = np.arange(len(rows))
    for j, (key, name) in enumerate(series):
        vals = [r.get(key, float("nan")) for r in rows]
        ax.barh(ypos + (j - 1) * height, vals, height=height, label=name)
    ax.set_yticks(ypos, labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    finite = [r.get(k) for r in rows for k, _ in series if np.isfinite(r.get(k, float("nan")))]
    if finite:
        ax.set_xlim(10 ** np.floor(np.log10(min(finite))), 10 ** np.ceil(np.log10(max(finite)) + 0.05))
    ax.set_xlabel("training images / s")
    ax.set_title(rows[0]["device"] if rows else "", fontsize=8)
    ax.legend(loc="lower right", fontsize=7)
    return fig


def write_outputs(rows: list[dict], out_dir: str | Path, name: str = "bench", note: str = "") -> list[Path]:
    """``<out_dir>/<name>.md`` (machine line, table, legend, note), ``.csv`` and the bar figure (PNG + PDF)."""
    import pandas as pd

    from . import plots
    from .results import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# ltr bench" + (f": {name}" if name != "bench" else ""), "", f"Machine: {machine_line(rows)}", "", format_rows(rows), "", legend()]
    md += note_lines(rows, note, "CPU run: sizes are reduced, the precision is fp32 and there is no TFLOP/s bound (n/a); "
                     "the bound (bf16 790 TFLOP/s on an H100) applies to GPU runs. Regenerate on a GPU with "
                     "`ltr bench --models all --batch-size 256 --out figures/perf/`.")
    paths = [atomic_write_text(out / f"{name}.md", "\n".join(md) + "\n")]
    buf = pd.DataFrame(rows).to_csv(index=False, float_format="%.6g")
    paths.append(atomic_write_text(out / f"{name}.csv", buf))
    fig = plot_rows(rows)
    paths += plots.save(fig, out, name)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths
