"""``ltr bench``: how close the training loop runs to the model's own speed and to the GPU's limit.

For each row (a model at an input size and batch), on the same device, batch and precision:

* **model step**: forward + backward + optimizer step on one fixed batch already on the device
  (our optimizer: :func:`ltr_core.engine.build_optimizer`, fused on CUDA) — the ceiling;
* **full step**: the engine's real ``train_one_epoch`` fed by our input path: for ``resnet32`` the
  small-image path (uint8 on the device, pad-crop + flip + normalise there); for 224-px models the
  large-image fast path (:class:`~ltr_core.data.uint8_cache.CachedImageLoader`: uint8 images cached at
  shorter side int(S/0.875), per-image RandomResizedCrop + flip, normalise on the device) — with the per-step lr schedule
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

import json
import sys
from pathlib import Path

from .bench_common import (BOUND_TFLOPS_BF16, _cell, _device_label, _sync, bound_tflops,  # noqa: F401 (re-exported)
                           machine_line, note_lines)
from .bench_livt import (LIVT_COLUMNS, bench_livt, cpu_matmul_gflops, cpu_model,  # noqa: F401 (re-exported)
                         format_livt_rows, write_livt_outputs)
from .bench_loaders import bench_loaders, format_loader_rows, make_jpegs, write_loader_outputs  # noqa: F401
from .bench_models import (CLIP_PREFIX, PRESET, ClipPeftClassifier, RowSpec, _count,  # noqa: F401 (re-exported)
                           _full_loader, bench_row, build_peer, build_row_model, default_classes, full_epoch_fn,
                           model_step_fn, parse_models, peer_optimizer, row_spec, run_bench, train_flops)
from .bench_output import COLUMNS, format_rows, format_table, legend, plot_rows, write_outputs  # noqa: F401


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
