"""``ltr bench`` model rows: model step, full step (our input path and loop) and timm peer of one model at
one input size and batch, with FLOPs and the fraction of the device's bound (see :mod:`ltr_core.bench`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from . import engine
from .bench_common import _device_label, _sync, bound_tflops
from .bench_timing import alternate
from .config import from_params
from .data.device_loader import DeviceTensorLoader
from .data.samplers import build_sampler
from .losses import build_loss
from .models import build_model, is_cnn

PRESET = ("resnet32", "resnet50", "vit_base_patch16_224", "clip_peft:ViT-B-16")
CLIP_PREFIX = "clip_peft:"


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
