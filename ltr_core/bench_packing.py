"""Seed packing throughput: M ResNet-32 runs as one packed network vs the same M runs one after another.

Both variants do the same work per call, ``steps`` full training steps of each of the M members (their own
uint8 batches on the device, pad-crop + flip + normalise there, forward, loss, backward, SGD with momentum
and weight decay) through the engine's :func:`~ltr_core.engine.train_one_epoch`:

* ``sequential``: the M lone models, each over its own loader;
* ``packed``: :func:`ltr_core.packing.pack_models` of the same M models over the members' loaders in lockstep
  (:class:`~ltr_core.packing.PackedLoader`, :class:`~ltr_core.packing.PackedLoss`).

Images/s counts every member's images; the variants are timed in alternation after a warm-up, median of
``samples`` (:func:`ltr_core.bench_timing.alternate`). ``python -m ltr_core.bench_packing --help``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys

import torch

from . import engine
from .bench import _device_label
from .bench_timing import alternate
from .config import from_params
from .data.device_loader import DeviceTensorLoader
from .data.samplers import build_sampler
from .losses import build_loss
from .models import build_model
from .packing import PackedLoader, PackedLoss, pack_models


def _loader(seed: int, n: int, batch_size: int, image_size: int, device) -> DeviceTensorLoader:
    """A member's training input path over ``n`` random uint8 images (10 classes)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=g)
    return DeviceTensorLoader(images, labels, batch_size=batch_size, device=device, train=True,
                              sampler=build_sampler("instance", labels, seed=seed), mean=(0.5,) * 3, std=(0.25,) * 3,
                              image_size=image_size, crop_padding=4, drop_last=True, seed=seed)


def _trainer(model, criterion, loader, cfg, device):
    """One call: one pass of the engine's training epoch over ``loader``; returns the images it trained on."""
    optimizer = engine.build_optimizer(model.parameters(), cfg.optim)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    state = {"epoch": 0}

    def step() -> int:
        loader.set_epoch(state["epoch"])
        _, images = engine.train_one_epoch(model, criterion, loader, optimizer, cfg=cfg, epoch=state["epoch"],
                                           device=device, channels_last=engine.use_channels_last(model, "auto", device))
        state["epoch"] += 1
        return images

    return step


def bench_packing(members: int = 3, batch_size: int = 128, image_size: int = 32, steps: int = 1,
                  device: str = "auto", samples: int = 5, warmup_s: float = 3.0, sample_s: float = 1.0) -> dict:
    """{variant: {"median", "samples", "spread", ...}} in images/s over all members (see the module doc)."""
    dev = engine.resolve_device(device)
    cfg = from_params({"model": "resnet32", "batch_size": batch_size, "epochs": 1000, "schedule": "constant",
                       "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "device": str(dev)})
    engine.seed_everything(0)
    models = [build_model(cfg.model, 10, image_size=image_size).to(dev) for _ in range(members)]
    criteria = [build_loss(cfg.loss, [1] * 10) for _ in range(members)]
    loaders = [_loader(m, batch_size * steps, batch_size, image_size, dev) for m in range(members)]
    lone = [_trainer(copy.deepcopy(m), c, ld, cfg, dev) for m, c, ld in zip(models, criteria, loaders)]
    packed = _trainer(pack_models(models).to(dev), PackedLoss(criteria), PackedLoader(loaders), cfg, dev)
    variants = {"sequential": lambda: sum(fn() for fn in lone), "packed": lambda: packed() * members}
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    return alternate(variants, warmup_s=warmup_s, samples=samples, sample_s=sample_s, sync=sync)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128, help="per member")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1, help="training steps per member per timed call")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    timed = bench_packing(args.members, args.batch_size, args.image_size, args.steps, args.device, args.samples)
    dev = engine.resolve_device(args.device)
    ref = timed["sequential"]["median"]
    print(f"# seed packing: ResNet-32, M={args.members}, batch {args.batch_size} per member, {args.image_size}px\n")
    print(f"Machine: {_device_label(dev)}; {platform.machine()}; CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}; {datetime.date.today()}\n")
    print("| variant | img/s over all members (median) | spread (max/min) | samples | vs sequential |")
    print("|---|---:|---:|---:|---:|")
    for name, t in timed.items():
        print(f"| {name} | {t['median']:,.1f} | {t['spread']:.2f} | {len(t['samples'])} | {t['median'] / ref:.2f}x |")
    print(f"\nCommand: `python -m ltr_core.bench_packing {' '.join(argv if argv is not None else sys.argv[1:])}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
