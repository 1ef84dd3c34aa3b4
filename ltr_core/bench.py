"""``ltr bench``: how close the training loop runs to the model's own speed and to the GPU's limit.

For each row (a model at an input size and batch), on the same device, batch and precision:

* **model step**: forward + backward + optimizer step on one fixed batch already on the device
  (our optimizer: :func:`ltr_core.engine.build_optimizer`, fused on CUDA) — the ceiling;
* **full step**: the engine's real ``train_one_epoch`` fed by our input path: for ``resnet32`` the
  small-image path (uint8 on the device, pad-crop + flip + normalise there); for 224-px models the
  large-image fast path (:class:`~ltr_core.data.uint8_cache.CachedImageLoader`: uint8 images cached at
  int(S/0.875), RandomResizedCrop + flip + normalise on the device) — with the per-step lr schedule
  and the loss accumulated on the device;
* **timm peer**: timm's own training step on the same architecture and batch, built only from timm's
  public utilities (``timm.create_model``, ``timm.optim.create_optimizer_v2`` with its defaults, no
  ``timm.data.Mixup``) in a plain loop; for models timm does not have (the CIFAR ResNet-32, CLIP with
  PEFT adapters) the peer runs a copy of our module with timm's optimizer;
* **FLOPs**: one forward + backward counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
  convolutions, attention: the usual "model FLOPs"; a frozen tower with adapters in all L blocks costs
  ≈ 1 + (L-1)/L forwards instead of 3: no weight gradients, and no input gradient of the first block
  since nothing before it trains — 1.9x for ViT-B/16) → achieved TFLOP/s = FLOPs/image x
  images/s, and its fraction of the bound: bf16 790 TFLOP/s on an H100 (measured dense peak,
  performance.md §3); n/a on the CPU, in fp32 and on GPUs without a recorded bound.

Rows: ``resnet32``, any timm model name, ``clip_peft:<open_clip name>`` (the CLIP image tower with
PEL's AdaptFormer adapters from :func:`ltr_core.models.peft.apply_peft` and a linear head on the
pre-projection feature; backbone frozen). ``--models all`` = ResNet-32/CIFAR, ResNet-50, ViT-B/16 and
CLIP ViT-B/16 PEFT. ``--out DIR`` writes ``bench.md``, ``bench.csv`` and ``bench.png/.pdf``.
``--loaders`` instead measures the large-image input paths on generated JPEGs (:func:`bench_loaders`).
``--livt PARAMS`` instead measures LiVT's two stages, MGP (MAE pre-training) and BFT, for a LiVT params file
against the bound img/s = peak / (3 · 2 · forward MACs per image) (:func:`bench_livt`; ``--out DIR`` writes
``livt_throughput.md/.csv``).
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import engine
from .bench_timing import alternate
from .config import from_params
from .data.device_loader import DeviceTensorLoader, loader_images_per_second
from .data.samplers import build_sampler
from .losses import build_loss
from .models import build_model, is_cnn

PRESET = ("resnet32", "resnet50", "vit_base_patch16_224", "clip_peft:ViT-B-16")
# dense bf16 bound: the H100's measured peak (performance.md §3); the H200 has the same Hopper tensor cores
# (its datasheet rate equals the H100's; it differs in memory). Any other device: "unknown", said plainly.
BOUND_TFLOPS_BF16 = {"H100": 790.0, "H200": 790.0}
CLIP_PREFIX = "clip_peft:"


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


def model_step_fn(model, criterion, optimizer, x, y, *, device, dtype, channels_last: bool):
    """One call = forward + backward + step on one fixed batch already on the device (the ceiling)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> int:
        model.train()
        with engine.autocast(device, dtype):
            loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return x.shape[0]

    return step


def full_epoch_fn(model, criterion, optimizer, loader, cfg, *, device, channels_last: bool, forward=None):
    """One call = the engine's training epoch over ``loader`` (our input path, lr schedule, loss on device)."""
    epoch = [0]

    def run() -> int:
        loader.set_epoch(epoch[0])
        _, images = engine.train_one_epoch(model, criterion, loader, optimizer, cfg=cfg, epoch=epoch[0],
                                           device=device, channels_last=channels_last, forward=forward)
        epoch[0] += 1
        return images

    return run


# ----------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class RowSpec:
    """One bench row: what to build and how to train it."""

    name: str
    kind: str  # resnet32 | timm | clip_peft
    image_size: int
    optimizer: str
    lr: float
    weight_decay: float

    @property
    def label(self) -> str:
        names = {"resnet32": "ResNet-32 (CIFAR)", "resnet50": "ResNet-50", "vit_base_patch16_224": "ViT-B/16",
                 "clip_peft:ViT-B-16": "CLIP ViT-B/16 PEFT"}
        return names.get(self.name, self.name)


def default_classes(spec: RowSpec) -> int:
    """10 (CIFAR-10) for resnet32, 1000 (ImageNet-LT) otherwise: the head size, and PEL's adapter width
    r = 2^floor(log2(K / 2L)) (32 for ViT-B/16 at K = 1000)."""
    return 10 if spec.kind == "resnet32" else 1000


def row_spec(name: str, image_size: int = 0) -> RowSpec:
    """Defaults per row: SGD (lr 0.1, wd 5e-4) for CNNs, AdamW (lr 1e-4, wd 0.05) for transformers/CLIP.
    ``name@S`` sets this row's input size S (it wins over ``image_size``)."""
    if "@" in name:
        name, size = name.rsplit("@", 1)
        image_size = int(size)
    if name.startswith(CLIP_PREFIX):
        return RowSpec(name, "clip_peft", image_size or 224, "adamw", 1e-3, 1e-4)
    kind = "resnet32" if name == "resnet32" else "timm"
    size = image_size or (32 if kind == "resnet32" else 224)
    transformer = any(t in name for t in ("vit", "deit", "swin", "eva", "beit"))
    if transformer:
        return RowSpec(name, kind, size, "adamw", 1e-4, 0.05)
    return RowSpec(name, kind, size, "sgd", 0.1, 5e-4)


class ClipPeftClassifier(nn.Module):
    """CLIP image tower with PEFT tuners + a linear head on the pre-projection feature (PEL's head input)."""

    def __init__(self, clip, num_classes: int) -> None:
        super().__init__()
        from .models.clip import image_features

        self.visual = clip.model.visual
        self._clip = [clip]  # not a submodule: the text tower is not part of this model
        self._features = image_features
        self.head = nn.Linear(clip.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(self._clip[0], x, project=False))


def build_row_model(spec: RowSpec, num_classes: int, cfg) -> nn.Module:
    """Our model for a row: ``build_model`` (resnet32 / timm backbone + linear head) or CLIP + AdaptFormer."""
    if spec.kind == "clip_peft":
        from .models.clip import load_clip
        from .models.peft import apply_peft

        clip = load_clip(spec.name[len(CLIP_PREFIX):], "")
        if clip.image_size != spec.image_size:  # another input size (small CPU runs): rebuild at that size
            from .models.clip import _open_clip

            clip.model = _open_clip().create_model(clip.name, pretrained=None, force_image_size=spec.image_size)
            clip.image_size = spec.image_size
        apply_peft(clip, "adaptformer", num_classes=num_classes)
        return ClipPeftClassifier(clip, num_classes)
    return build_model(cfg.model, num_classes, image_size=spec.image_size)


def build_peer(spec: RowSpec, num_classes: int, ours: nn.Module) -> tuple[nn.Module, str]:
    """timm's model for timm rows (``timm.create_model``); a copy of ours otherwise. Returns (model, note)."""
    import timm

    if spec.kind == "timm":
        try:
            return timm.create_model(spec.name, num_classes=num_classes, img_size=spec.image_size), "timm.create_model"
        except TypeError:
            return timm.create_model(spec.name, num_classes=num_classes), "timm.create_model"
    return copy.deepcopy(ours), "our module (not in timm)"


def peer_optimizer(spec: RowSpec, model: nn.Module):
    """``timm.optim.create_optimizer_v2`` with timm's defaults (``sgd`` = Nesterov momentum 0.9, no weight
    decay on biases and norms)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=spec.optimizer, lr=spec.lr, weight_decay=spec.weight_decay)


def _full_loader(spec: RowSpec, n: int, batch_size: int, num_classes: int, device: torch.device):
    """Our input path for the row over ``n`` random uint8 images (see module doc)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    sampler = build_sampler("instance", labels, seed=0)
    mean, std = (0.5,) * 3, (0.25,) * 3
    if spec.kind == "resnet32":
        images = torch.randint(0, 256, (n, 3, spec.image_size, spec.image_size), dtype=torch.uint8, generator=g)
        return DeviceTensorLoader(images, labels, batch_size=batch_size, device=device, train=True, sampler=sampler,
                                  mean=mean, std=std, image_size=spec.image_size, crop_padding=4, drop_last=True)
    from .data.uint8_cache import CachedImageLoader, default_cache_size

    side = default_cache_size(spec.image_size)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    return CachedImageLoader(images, labels, batch_size=batch_size, device=device, train=True, sampler=sampler,
                             mean=mean, std=std, image_size=spec.image_size, drop_last=True)


def _count(params) -> float:
    return sum(p.numel() for p in params) / 1e6


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


def bench_row(spec: RowSpec, *, batch_size: int, num_classes: int = 10, steps: int = 20, warmup: int = 3,
              device: str = "auto", precision: str = "auto", compile: bool = False, peer: bool = True,
              samples: int = 5) -> dict:
    """Model step, full step and timm peer of one row; returns the row's numbers (see :func:`format_rows`)."""
    dev = engine.resolve_device(device)
    cfg = from_params({"model": spec.name if spec.kind != "clip_peft" else "resnet32", "batch_size": batch_size,
                       "epochs": 2, "precision": precision, "schedule": "constant", "device": str(dev),
                       "optimizer": spec.optimizer, "lr": spec.lr, "weight_decay": spec.weight_decay,
                       "compile": compile})
    engine.seed_everything(0)
    model = build_row_model(spec, num_classes, cfg).to(dev)
    channels_last = engine.use_channels_last(model, cfg.model.channels_last, dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = build_loss(cfg.loss, [1] * num_classes)
    dtype = engine.autocast_dtype(precision, dev)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, 3, spec.image_size, spec.image_size, generator=g).to(dev)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(dev)
    flops = train_flops(model, x[:2], y[:2], criterion) / 2
    optimizer = engine.build_optimizer(model.parameters(), cfg.optim)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    forward = torch.compile(model) if compile else model
    loader = _full_loader(spec, batch_size * max(2, steps // 4), batch_size, num_classes, dev)
    timed = alternate({"model": model_step_fn(forward, criterion, optimizer, x, y, device=dev, dtype=dtype,
                                              channels_last=channels_last),
                       "full": full_epoch_fn(model, criterion, optimizer, loader, cfg, device=dev,
                                             channels_last=channels_last, forward=forward)},
                      warmup_calls=warmup, samples=samples, sync=lambda: _sync(dev))
    model_ips, full_ips = timed["model"]["median"], timed["full"]["median"]
    params_m, trained_m = _count(model.parameters()), _count(p for p in model.parameters() if p.requires_grad)
    peer_ips, peer_note = float("nan"), "skipped"
    if peer and spec.kind != "timm":
        peer_note = "none: timm and torchvision have no model of this architecture"
    elif peer:
        peer_model, peer_note = build_peer(spec, num_classes, model)
        del optimizer, forward, loader
        peer_model.to(dev)
        peer_cl = dev.type == "cuda" and is_cnn(peer_model)  # timm train.py --channels-last on CNNs
        if peer_cl:
            peer_model.to(memory_format=torch.channels_last)
        peer_opt = peer_optimizer(spec, peer_model)
        peer_ips = alternate({"peer": model_step_fn(peer_model, criterion, peer_opt, x, y, device=dev, dtype=dtype,
                                                    channels_last=peer_cl)},
                             warmup_calls=warmup, samples=samples, sync=lambda: _sync(dev))["peer"]["median"]
        peer_note += " (eager, timm's optimizer: the reference step)"
    prec = "bf16" if dtype is not None else "fp32"
    bound = bound_tflops(dev, prec)
    full_tflops = flops * full_ips / 1e12
    import timm

    return {
        "model": spec.name, "label": spec.label, "image_size": spec.image_size, "batch_size": batch_size,
        "num_classes": num_classes,
        "device": _device_label(dev), "precision": prec, "compile": compile, "channels_last": channels_last,
        "optimizer": spec.optimizer, "params_m": params_m, "trained_params_m": trained_m,
        "train_gflop_per_image": flops / 1e9,
        "model_step_images_per_s": model_ips, "full_step_images_per_s": full_ips,
        "pipeline_ratio": full_ips / model_ips,
        "peer_images_per_s": peer_ips, "full_vs_peer": full_ips / peer_ips if peer else float("nan"),
        "peer": peer_note,
        "model_step_tflops": flops * model_ips / 1e12, "full_step_tflops": full_tflops,
        "peer_tflops": flops * peer_ips / 1e12,
        "bound_tflops": bound if bound is not None else float("nan"),
        "fraction_of_bound": full_tflops / bound if bound else float("nan"),
        "torch": str(torch.__version__), "timm": timm.__version__,
    }


def run_bench(model_name: str = "resnet32", *, image_size: int = 32, batch_size: int = 128, num_classes: int = 10,
              steps: int = 20, warmup: int = 3, device: str = "auto", precision: str = "auto",
              compile: bool = False, peer: bool = True) -> dict:
    """One row (the original ``ltr bench`` entry point)."""
    return bench_row(row_spec(model_name, image_size), batch_size=batch_size, num_classes=num_classes, steps=steps,
                     warmup=warmup, device=device, precision=precision, compile=compile, peer=peer)


def parse_models(models: str, fallback: str = "resnet32") -> list[str]:
    """``a,b,c`` or ``all`` (= :data:`PRESET`) -> row names."""
    if not models:
        return [fallback]
    if models.strip() == "all":
        return list(PRESET)
    return [m.strip() for m in models.split(",") if m.strip()]


# ----------------------------------------------------------------------------------------------
# output


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


def _cell(value, fmt: str) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        return "n/a"
    return fmt.format(value)


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of the rows (n/a where a bound or peer does not apply)."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "label" else "---:" for k, _, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r.get(k, float("nan")), f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


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


def machine_line(rows: list[dict]) -> str:
    dev = rows[0]["device"] if rows else "?"
    return (f"{dev}; {platform.processor() or platform.machine()}; torch {torch.__version__}; "
            f"python {platform.python_version()}; {datetime.date.today().isoformat()}")


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


def note_lines(rows: list[dict], note: str, cpu_note: str) -> list[str]:
    """Markdown lines closing a bench report: ``note``, then ``cpu_note`` when the rows were measured on a CPU."""
    parts = [note] if note else []
    if rows and rows[0]["device"].startswith("cpu"):
        parts.append(cpu_note)
    return ["", "\n\n".join(parts)] if parts else []


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


# ----------------------------------------------------------------------------------------------
# input paths for large images


def make_jpegs(folder: str | Path, n: int, size: tuple[int, int] = (500, 375), quality: int = 90,
               seed: int = 0) -> list[str]:
    """``n`` ImageNet-like JPEGs (smooth random content + noise, ``size`` w x h, quality 90) -> paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        img = np.asarray(small.resize(size, Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(img).save(p, quality=quality)
        paths.append(str(p))
    return paths


def bench_loaders(n_images: int = 512, *, image_size: int = 224, batch_size: int = 64, num_workers: int = 0,
                  device: str = "auto", folder: str | Path | None = None, jpeg_size=(500, 375)) -> list[dict]:
    """Images/s of the large-image input paths over ``n_images`` generated JPEGs (one pass each):
    PIL DataLoader train (RandomResizedCrop + flip) and eval (Resize + CenterCrop) with ``num_workers``
    workers (0: all cores), the one-time uint8 cache build, and the cached path train (device RRC + flip)
    and eval (centre crop)."""
    from .data.image_list import ImageFileDataset
    from .data.loaders import FileLoader
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
    from .data.uint8_cache import CachedImageLoader, default_cache_size, load_or_build

    dev = engine.resolve_device(device)
    workers = num_workers or (os.cpu_count() or 1)
    tmp = tempfile.TemporaryDirectory() if folder is None else None
    root = Path(folder or tmp.name)
    try:
        paths = make_jpegs(root / "jpeg", n_images, size=jpeg_size)
        labels = np.arange(n_images) % 10
        n_batches = max(1, n_images // batch_size - 1)
        rows = []

        def row(path: str, phase: str, ips: float, note: str) -> None:
            rows.append({"path": path, "phase": phase, "images_per_s": ips, "note": note, "device": _device_label(dev),
                         "image_size": image_size, "batch_size": batch_size, "n_images": n_images,
                         "jpeg": f"{jpeg_size[0]}x{jpeg_size[1]} q90"})

        for phase, make in (("train", train_transform), ("eval", eval_transform)):
            ds = ImageFileDataset(paths, labels, make(image_size, IMAGENET_MEAN, IMAGENET_STD))
            sampler = build_sampler("instance", torch.as_tensor(labels), seed=0)
            loader = FileLoader(ds, batch_size=batch_size, device=dev, sampler=sampler, num_workers=workers)
            how = "RandomResizedCrop + flip" if phase == "train" else "Resize + CenterCrop"
            row("PIL DataLoader (file_backend=pil)", phase, loader_images_per_second(loader, n_batches),
                f"{workers} worker processes, decode + {how} per image")
            del loader
        side = default_cache_size(image_size)
        t0 = time.perf_counter()
        images = load_or_build(paths, labels, size=side, cache_dir=root / "cache", name="bench", num_workers=workers)
        row("uint8 cache build (once)", "build", n_images / (time.perf_counter() - t0),
            f"{workers} threads, decode + Resize({side}) + CenterCrop({side}), written as .npy")
        for phase, train in (("train", True), ("eval", False)):
            sampler = build_sampler("instance", torch.as_tensor(labels), seed=0) if train else None
            loader = CachedImageLoader(images, labels, batch_size=batch_size, device=dev, train=train, sampler=sampler,
                                       mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size)
            row("uint8 cache + device augmentation (file_backend=uint8_cache)", phase,
                loader_images_per_second(loader, n_batches),
                f"memory-mapped cache, {'RandomResizedCrop + flip' if train else 'centre crop'} + normalise "
                f"on {dev.type}")
        return rows
    finally:
        if tmp is not None:
            tmp.cleanup()


def format_loader_rows(rows: list[dict]) -> str:
    lines = ["| input path | phase | images/s | how |", "|---|---|---:|---|"]
    lines += [f"| {r['path']} | {r['phase']} | {r['images_per_s']:,.0f} | {r['note']} |" for r in rows]
    return "\n".join(lines)


def write_loader_outputs(rows: list[dict], out_dir: str | Path) -> list[Path]:
    import pandas as pd

    from .results import atomic_write_text

    out = Path(out_dir)
    md = ["# Large-image input paths", "", f"Machine: {rows[0]['device']}; torch {torch.__version__}; "
          f"{datetime.date.today().isoformat()}; {rows[0]['n_images']} generated JPEGs {rows[0]['jpeg']} -> "
          f"{rows[0]['image_size']} px, batch {rows[0]['batch_size']}", "", format_loader_rows(rows)]
    return [atomic_write_text(out / "loaders.md", "\n".join(md) + "\n"),
            atomic_write_text(out / "loaders.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))]


# ----------------------------------------------------------------------------------------------
# LiVT stages: MGP (MAE pre-training) and BFT (balanced fine-tuning)


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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    head = "| " + " | ".join(h for _, h, _ in LIVT_COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "stage" else "---:" for k, _, _ in LIVT_COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r.get(k, float("nan")), f) for k, _, f in LIVT_COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


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


def main(args) -> int:
    out = getattr(args, "out", None)
    if getattr(args, "livt", ""):
        from .config import parse_overrides

        rows = bench_livt(args.livt, steps=args.steps, warmup=args.warmup, device=args.device,
                          overrides=parse_overrides(getattr(args, "overrides", []) or []))
        print(f"Machine: {machine_line(rows)}")
        print(format_livt_rows(rows))
        if out:
            for p in write_livt_outputs(rows, out, note=f"Command: `ltr {' '.join(sys.argv[1:])}`"):
                print(f"wrote {p}")
        return 0
    if getattr(args, "variants", ""):
        from .bench_variants import DEFAULT_VARIANTS, bench_variants, format_variant_rows, write_variant_outputs

        names = DEFAULT_VARIANTS if args.variants == "default" else tuple(v.strip() for v in args.variants.split(","))
        rows = bench_variants(args.model, names, batch_size=args.batch_size, num_classes=args.num_classes or 10,
                              device=args.device)
        print(f"Machine: {machine_line(rows)}")
        print(format_variant_rows(rows))
        for p in (write_variant_outputs(rows, out, command=f"ltr {' '.join(sys.argv[1:])}") if out else []):
            print(f"wrote {p}")
        return 0
    if getattr(args, "loaders", False):
        rows = bench_loaders(args.n_images, image_size=args.image_size or 224, batch_size=args.batch_size,
                             num_workers=args.num_workers, device=args.device)
        print(format_loader_rows(rows))
        if out:
            write_loader_outputs(rows, out)
        return 0
    rows = []
    for name in parse_models(getattr(args, "models", ""), args.model):
        spec = row_spec(name, args.image_size)
        rows.append(bench_row(spec, batch_size=args.batch_size, num_classes=args.num_classes or default_classes(spec),
                              steps=args.steps, warmup=args.warmup, device=args.device,
                              precision=args.precision, compile=getattr(args, "compile", False),
                              peer=not getattr(args, "no_peer", False)))
        print(f"done {name}", flush=True)
    print(f"Machine: {machine_line(rows)}")
    print(format_rows(rows))
    print(legend())
    if out and str(out).endswith(".json"):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows if len(rows) > 1 else rows[0], indent=1))
    elif out:
        for p in write_outputs(rows, out):
            print(f"wrote {p}")
    return 0
