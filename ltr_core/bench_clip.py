"""Training speed of PEFT vs full fine-tuning of a CLIP visual tower (random init, nothing downloaded).

For each PEFT method: a fresh copy of the tower, :func:`ltr_core.models.peft.apply_peft`, the PEL
classifier (cosine head on the pre-projection feature) and SGD over the trainable tensors; then
``ltr_core.bench_models.model_step_fn`` (forward + backward + step on one fixed batch on the device,
bf16 autocast on CUDA) gives images/s. Reported per method: train images/s, trainable parameters,
peak device memory (CUDA) and the speed relative to ``full``.

performance.md §4 expects PEFT to save memory and optimiser state, not wall-clock (the backward
still runs through every block): AdaptFormer ran at 2:30 min/epoch vs 2:00 for full fine-tuning on
an RTX 3090 (ShoufaChen/AdaptFormer#36).

    python -m ltr_core.bench_clip --clip-model ViT-B-16 --methods adaptformer,lora,full,linear_probe \
        --batch-size 128 --steps 20            # on a GPU (the issue's measurement)
    python -m ltr_core.bench_clip --clip-model ViT-B-16 --image-size 64 --batch-size 8 --steps 3 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch

from . import engine
from .bench_common import _sync
from .bench_models import model_step_fn
from .bench_timing import alternate
from .config import from_params
from .losses import LogitAdjustedLoss
from .models.clip import Clip, _open_clip, activation_name
from .models.heads import CosineHead
from .models.peft import PEFT_METHODS, apply_peft, count_parameters


def random_clip(name: str, image_size: int | None = None, device="cpu") -> Clip:
    """A randomly initialised open_clip model (optionally at another input size, pos. embedding resized)."""
    oc = _open_clip()
    kwargs = {"force_image_size": image_size} if image_size else {}
    model = oc.create_model(name, pretrained=None, device=device, **kwargs)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return Clip(model=model, tokenizer=None, name=name, pretrained="", image_size=size,
                mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
                interpolation="bilinear", activation=activation_name(model))


def run_peft_bench(clip_model: str = "ViT-B-16", methods=("adaptformer", "lora", "full", "linear_probe"), *,
                   image_size: int | None = None, batch_size: int = 128, num_classes: int = 1000, steps: int = 20,
                   warmup: int = 3, device: str = "auto", precision: str = "auto") -> list[dict]:
    """One row per PEFT method: train images/s (model step), trainable parameters, peak memory."""
    from .methods.pel import ClipClassifier

    unknown = [m for m in methods if m not in PEFT_METHODS]
    if unknown:
        raise ValueError(f"unknown PEFT methods {unknown}; valid: {', '.join(PEFT_METHODS)}")
    dev = engine.resolve_device(device)
    cfg = from_params({"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "precision": precision})
    dtype = engine.autocast_dtype(precision, dev)
    torch.manual_seed(0)
    base = random_clip(clip_model, image_size)
    base.model.transformer = None  # the text tower plays no part in training speed
    size = base.image_size
    x = torch.randn(batch_size, 3, size, size, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    criterion = LogitAdjustedLoss(torch.arange(num_classes, 0, -1).numpy()).to(dev)
    rows = []
    for method in methods:
        clip = Clip(**{**base.__dict__, "model": copy.deepcopy(base.model)})
        tower = apply_peft(clip, method, num_classes=num_classes)
        head = CosineHead(clip.feature_dim, num_classes, 25.0)
        model = ClipClassifier(clip.model.visual, head, is_vit=clip.is_vit,
                               freeze_norm_stats=method != "full").to(dev)
        optimizer = engine.build_optimizer(model.parameters(), cfg.optim)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        step = model_step_fn(model, criterion, optimizer, x, y, device=dev, dtype=dtype, channels_last=False)
        ips = alternate({"step": step}, warmup_calls=warmup, warmup_s=0.0, samples=3,
                        sample_s=0.0 if steps <= 3 else 1.0, sync=lambda: _sync(dev))["step"]["median"]
        row = {"clip_model": clip_model, "method": method, "image_size": size, "batch_size": batch_size,
               "train_images_per_s": ips, "trainable_tower": count_parameters(tower),
               "trainable_head": count_parameters(head.parameters()),
               "precision": "bf16" if dtype is not None else "fp32", "device": _device_label(dev),
               "torch": torch.__version__}
        if dev.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        rows.append(row)
        del model, optimizer, clip
    full = next((r["train_images_per_s"] for r in rows if r["method"] == "full"), None)
    for r in rows:
        r["speed_vs_full"] = r["train_images_per_s"] / full if full else None
    return rows


def _device_label(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def format_rows(rows: list[dict]) -> str:
    """A Markdown table: method, images/s, relative speed, trainable parameters (and peak memory on CUDA)."""
    mem = any("peak_memory_gib" in r for r in rows)
    head = "| method | train img/s | vs full | trainable tower | trainable head |" + (" peak GiB |" if mem else "")
    lines = [head, "|---|---|---|---|---|" + ("---|" if mem else "")]
    for r in rows:
        rel = f"{r['speed_vs_full']:.2f}" if r.get("speed_vs_full") else "–"
        line = (f"| {r['method']} | {r['train_images_per_s']:,.1f} | {rel} | {r['trainable_tower']:,} | "
                f"{r['trainable_head']:,} |")
        if mem:
            line += f" {r.get('peak_memory_gib', float('nan')):.1f} |"
        lines.append(line)
    r0 = rows[0] if rows else {}
    lines.append(f"\n{r0.get('clip_model')} at {r0.get('image_size')} px, batch {r0.get('batch_size')}, "
                 f"{r0.get('precision')}, {r0.get('device')}, torch {r0.get('torch')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip-model", default="ViT-B-16")
    ap.add_argument("--methods", default="adaptformer,lora,full,linear_probe")
    ap.add_argument("--image-size", type=int, default=0, help="input size (0: the model's own)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = run_peft_bench(args.clip_model, tuple(m for m in args.methods.split(",") if m),
                          image_size=args.image_size or None, batch_size=args.batch_size,
                          num_classes=args.num_classes, steps=args.steps, warmup=args.warmup, device=args.device,
                          precision=args.precision)
    print(format_rows(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
