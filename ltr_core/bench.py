"""``ltr bench``: how close the training loop runs to the model's own speed.

Two numbers on the same model, batch and device:

* **model step**: forward + backward + optimizer step on one fixed batch already on the device
  (the ceiling: no data movement, no augmentation, no schedule);
* **full step**: the engine's real ``train_one_epoch`` fed by the small-image path
  (``DeviceTensorLoader``: uint8 on the device, random crop with padding + flip + normalise on the
  device, sampler order), with the per-step lr schedule and the loss accumulated on the device.

``pipeline ratio = full images/s / model images/s`` is the overhead of everything around the
model (goal >= 0.9 on the small-image path). On CUDA the achieved TFLOP/s of the model step is
printed too (FLOPs of one forward + backward counted by ``torch.utils.flop_counter``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import engine
from .config import from_params
from .data.device_loader import DeviceTensorLoader
from .data.samplers import build_sampler
from .losses import build_loss
from .models import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_flops(model, x, y, criterion) -> float:
    """FLOPs of one forward + backward on (x, y), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        criterion(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_model_step(model, criterion, optimizer, x, y, *, device, dtype, steps: int, warmup: int,
                     channels_last: bool) -> float:
    """Images/s of forward + backward + step on one fixed batch."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        with engine.autocast(device, dtype):
            loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - t0)


def bench_full_step(model, criterion, optimizer, loader, cfg, *, device, channels_last: bool) -> float:
    """Images/s of the engine's training epoch over ``loader`` (one untimed warm-up epoch first)."""
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    times = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        _sync(device)
        t0 = time.perf_counter()
        _, images = engine.train_one_epoch(model, criterion, loader, optimizer, cfg=cfg, epoch=epoch,
                                           device=device, channels_last=channels_last)
        _sync(device)
        times.append(images / (time.perf_counter() - t0))
    return times[-1]


def run_bench(model_name: str = "resnet32", *, image_size: int = 32, batch_size: int = 128, num_classes: int = 10,
              steps: int = 20, warmup: int = 3, device: str = "auto", precision: str = "auto") -> dict:
    """Measure both steps; returns a dict of the table's numbers."""
    dev = engine.resolve_device(device)
    cfg = from_params({"model": model_name, "batch_size": batch_size, "epochs": 2, "precision": precision,
                       "schedule": "constant", "device": str(dev), "lr": 0.01})
    engine.seed_everything(0)
    model = build_model(cfg.model, num_classes, image_size=image_size).to(dev)
    channels_last = engine.use_channels_last(model, cfg.model.channels_last, dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = build_loss(cfg.loss, [1] * num_classes)
    optimizer = engine.build_optimizer(model.parameters(), cfg.optim)
    dtype = engine.autocast_dtype(precision, dev)
    n = batch_size * steps
    images = torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,))
    x = ((images[:batch_size].float() / 255 - 0.5) / 0.25).to(dev)
    y = labels[:batch_size].to(dev)
    model_ips = bench_model_step(model, criterion, optimizer, x, y, device=dev, dtype=dtype, steps=steps,
                                 warmup=warmup, channels_last=channels_last)
    loader = DeviceTensorLoader(images, labels, batch_size=batch_size, device=dev, train=True,
                                sampler=build_sampler("instance", labels, seed=0), mean=(0.5,) * 3, std=(0.25,) * 3,
                                image_size=image_size, crop_padding=4, drop_last=True)
    full_ips = bench_full_step(model, criterion, optimizer, loader, cfg, device=dev, channels_last=channels_last)
    out = {
        "model": model_name, "image_size": image_size, "batch_size": batch_size, "device": _device_label(dev),
        "precision": "bf16" if dtype is not None else "fp32", "channels_last": channels_last,
        "model_step_images_per_s": model_ips, "full_step_images_per_s": full_ips,
        "pipeline_ratio": full_ips / model_ips,
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        flops = train_flops(model, x, y, criterion) / batch_size
        out["train_gflop_per_image"] = flops / 1e9
        out["model_step_tflops"] = flops * model_ips / 1e12
        out["full_step_tflops"] = flops * full_ips / 1e12
    return out


def _device_label(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import os

    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def format_table(row: dict) -> str:
    """A two-column Markdown table of one benchmark row."""
    lines = ["| quantity | value |", "|---|---|"]
    for key, value in row.items():
        shown = f"{value:,.1f}" if isinstance(value, float) and key != "pipeline_ratio" else (
            f"{value:.3f}" if key == "pipeline_ratio" else str(value))
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


def main(args) -> int:
    row = run_bench(args.model, image_size=args.image_size, batch_size=args.batch_size, num_classes=args.num_classes,
                    steps=args.steps, warmup=args.warmup, device=args.device, precision=args.precision)
    print(format_table(row))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(row, indent=1))
    return 0
