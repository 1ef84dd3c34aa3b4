"""``ltr bench --variants``: the same model's full training step under several precisions / compile
settings, timed side by side in one process (:func:`ltr_core.bench_timing.alternate`).

A variant is ``<precision>[+compile[:<mode>]]``: ``fp32``, ``bf16``, ``fp32+compile``,
``bf16+compile:reduce-overhead`` (CUDA graphs on a GPU). Each variant trains its own copy of one
initialisation with the engine's real :func:`~ltr_core.engine.train_one_epoch` over the row's input
path (for ResNet-32: uint8 CIFAR-sized images on the device, pad-crop + flip + normalise there), so the
ratio to the first variant (the fp32 eager reference) is what a run would gain. Results:
``<out>/variants.md`` and ``.csv`` with the machine, the CPU's bf16 support and each median's spread.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from . import engine
from .bench_common import _device_label, machine_line
from .bench_models import _full_loader, build_row_model, row_spec
from .bench_timing import alternate
from .config import from_params
from .losses import build_loss

DEFAULT_VARIANTS = ("fp32", "fp32+compile", "bf16", "bf16+compile")


def parse_variant(text: str) -> tuple[str, str | None]:
    """``"bf16+compile:reduce-overhead"`` -> ("bf16", "reduce-overhead"); no compile -> mode None."""
    precision, _, rest = text.partition("+")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"variant {text!r}: the precision must be fp32 or bf16 (e.g. fp32+compile)")
    if not rest:
        return precision, None
    word, _, mode = rest.partition(":")
    if word != "compile":
        raise ValueError(f"variant {text!r}: after '+' only 'compile[:mode]' is known")
    return precision, mode or "default"


def _epoch_fn(model, criterion, optimizer, loader, cfg, device, forward):
    """One call = one pass of the engine's training epoch over ``loader``; returns its images."""
    state = {"epoch": 0}

    def run() -> int:
        loader.set_epoch(state["epoch"])
        _, images = engine.train_one_epoch(model, criterion, loader, optimizer, cfg=cfg, epoch=state["epoch"],
                                           device=device, channels_last=False, forward=forward)
        state["epoch"] += 1
        return images

    return run


def bench_variants(model_name: str = "resnet32", variants=DEFAULT_VARIANTS, *, batch_size: int = 128,
                   steps_per_call: int = 4, num_classes: int = 10, device: str = "auto", samples: int = 5,
                   warmup_s: float = 3.0, sample_s: float = 2.0) -> list[dict]:
    """One row per variant: median full-step images/s, its spread, and the ratio to the first variant."""
    dev = engine.resolve_device(device)
    spec = row_spec(model_name)
    cfg = from_params({"model": spec.name, "batch_size": batch_size, "epochs": 1000, "schedule": "constant",
                       "optimizer": spec.optimizer, "lr": spec.lr, "weight_decay": spec.weight_decay,
                       "device": str(dev)})
    engine.seed_everything(0)
    base = build_row_model(spec, num_classes, cfg)
    criterion = build_loss(cfg.loss, [1] * num_classes)
    fns, parsed = {}, {}
    for text in variants:
        precision, mode = parse_variant(text)
        parsed[text] = (precision, mode)
        vcfg = from_params({**_flat(cfg), "precision": precision})
        model = copy.deepcopy(base).to(dev)
        optimizer = engine.build_optimizer(model.parameters(), vcfg.optim)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        forward = torch.compile(model, mode=mode, dynamic=False) if mode else model
        loader = _full_loader(spec, batch_size * steps_per_call, batch_size, num_classes, dev)
        fns[text] = _epoch_fn(model, criterion, optimizer, loader, vcfg, dev, forward)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    timed = alternate(fns, warmup_s=warmup_s, samples=samples, sample_s=sample_s, sync=sync)
    ref = timed[variants[0]]["median"]
    rows = []
    for text in variants:
        precision, mode = parsed[text]
        t = timed[text]
        rows.append({"model": spec.name, "variant": text, "precision": precision, "compile": mode or "off",
                     "batch_size": batch_size, "images_per_s": t["median"], "spread": t["spread"],
                     "samples": len(t["samples"]), "vs_first": t["median"] / ref,
                     "device": engine_device_label(dev), "native_bf16": engine.cpu_has_native_bf16()})
    return rows


def _flat(cfg) -> dict:
    from .config import to_flat

    return to_flat(cfg)


def engine_device_label(dev: torch.device) -> str:
    return _device_label(dev)


def format_variant_rows(rows: list[dict]) -> str:
    lines = ["| variant | full step img/s (median) | spread (max/min) | vs " + rows[0]["variant"] + " |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['images_per_s']:,.1f} | {r['spread']:.2f} | {r['vs_first']:.2f}x |" for r in rows]
    return "\n".join(lines)


def write_variant_outputs(rows: list[dict], out_dir: str | Path, command: str = "") -> list[Path]:
    import pandas as pd

    from .results import atomic_write_text

    out = Path(out_dir)
    native = rows[0]["native_bf16"]
    md = [f"# ltr bench --variants: {rows[0]['model']}, batch {rows[0]['batch_size']}", "",
          f"Machine: {machine_line(rows)}; CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {'yes' if native else 'no'}", "",
          format_variant_rows(rows), "",
          "Each variant trains its own copy of one initialisation with the engine's training epoch over the "
          "row's input path; the variants are timed in alternation after a timed warm-up (compile included), "
          f"{rows[0]['samples']} samples each, median shown (ltr_core.bench_timing)."]
    if command:
        md += ["", f"Command: `{command}`"]
    return [atomic_write_text(out / "variants.md", "\n".join(md) + "\n"),
            atomic_write_text(out / "variants.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))]
