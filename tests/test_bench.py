"""``ltr bench`` at tiny sizes on the CPU: the table and its files, the FLOP counts behind TFLOP/s
(against performance.md's analytic numbers), and the large-image loader bench."""

from __future__ import annotations

import math

import pytest

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from ltr_core import bench, cli
from ltr_core.config import from_params
from ltr_core.models import build_model


def test_bench_rows_print_and_write_table_csv_figure(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "perf"
    rc = cli.main(["bench", "--models", "resnet32,test_vit,clip_peft:ltr-tiny-vit", "--image-size", "32",
                   "--batch-size", "4", "--steps", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| Model | Input | Batch |" in text and "Full / model" in text and "timm peer img/s" in text
    assert "pipeline_ratio" in text and "model_step_images_per_s" in text  # the legend names the CSV columns
    for name in ("bench.md", "bench.csv", "bench.png", "bench.pdf"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    df = pd.read_csv(out / "bench.csv")
    assert list(df["model"]) == ["resnet32", "test_vit", "clip_peft:ltr-tiny-vit"]
    for col in ("model_step_images_per_s", "full_step_images_per_s", "full_step_tflops"):
        assert (df[col] > 0).all(), col
    assert df.peer_images_per_s.isna().tolist() == [True, False, True]  # only the timm row has a real peer
    assert ((df.pipeline_ratio - df.full_step_images_per_s / df.model_step_images_per_s).abs() < 1e-3).all()
    assert df.bound_tflops.isna().all() and df.fraction_of_bound.isna().all()  # no bound on the CPU
    assert "| n/a | n/a |" in (out / "bench.md").read_text() and "Machine: cpu" in (out / "bench.md").read_text()
    peft = df.set_index("model").loc["clip_peft:ltr-tiny-vit"]
    assert 0 < peft.trained_params_m < peft.params_m  # frozen tower, adapters + head train
    none = "none: timm and torchvision have no model of this architecture"
    assert list(df.peer) == [none, "timm.create_model (eager, timm's optimizer: the reference step)", none]


def _forward_flops(model, x) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def test_flop_counts_behind_tflops():
    """ResNet-32 at 32 px: 0.069 GMAC forward (performance.md §2) -> 0.41 GFLOP per training image (3x);
    a frozen tower with adapters costs about 2x its forward, a fully trained one about 3x."""
    torch.manual_seed(0)
    crit = torch.nn.CrossEntropyLoss()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    cfg = from_params({"model": "resnet32"})
    r32 = build_model(cfg.model, 10, image_size=32)
    per_image = bench.train_flops(r32, x, y, crit) / 2
    assert math.isclose(_forward_flops(r32, x) / 2, 2 * 0.069e9, rel_tol=0.03)
    assert math.isclose(per_image, 3 * 2 * 0.069e9, rel_tol=0.05)
    vit = bench.build_row_model(bench.row_spec("test_vit", 32), 10, from_params({"model": "test_vit"}))
    ratio_full = bench.train_flops(vit, x, y, crit) / _forward_flops(vit, x)
    peft = bench.build_row_model(bench.row_spec("clip_peft:ltr-tiny-vit", 32), 10, cfg)
    ratio_peft = bench.train_flops(peft, x, y, crit) / _forward_flops(peft, x)
    # PEFT: no weight gradients of the frozen tower, and none of the first block's input gradient either
    # (nothing before it trains), so about 1 + (L - 1) / L forward costs: 1.5 for this 2-block tower, 1.9 for ViT-B
    assert 2.6 < ratio_full <= 3.0 and 1.3 < ratio_peft < 1.8, (ratio_full, ratio_peft)


def test_bound_and_model_list():
    assert bench.bound_tflops(torch.device("cpu"), "bf16") is None
    assert bench.parse_models("all") == list(bench.PRESET)
    assert bench.parse_models("", "resnet32") == ["resnet32"]
    assert bench.row_spec("vit_base_patch16_224").optimizer == "adamw" and bench.row_spec("resnet50").image_size == 224
    assert bench.row_spec("resnet32").image_size == 32


def test_loader_bench_measures_every_input_path(tmp_path):
    rows = bench.bench_loaders(16, image_size=32, batch_size=8, num_workers=1, device="cpu", folder=tmp_path,
                               jpeg_size=(60, 45))
    assert [(r["path"].split(" ")[0], r["phase"]) for r in rows] == [
        ("PIL", "train"), ("PIL", "eval"), ("uint8", "build"), ("uint8", "train"), ("uint8", "eval")]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "| input path | phase | images/s |" in bench.format_loader_rows(rows)


def test_alternate_takes_medians_of_interleaved_samples():
    from ltr_core.bench_timing import alternate

    order = []

    def make(name, images):
        def step():
            order.append(name)
            return images
        return step

    out = alternate({"a": make("a", 10), "b": make("b", 20)}, warmup_s=0.0, warmup_calls=2, samples=3, sample_s=0.0)
    assert order[:4] == ["a", "a", "b", "b"]  # warm-up per variant
    assert order[4:] == ["a", "b"] * 3  # then one sample of each in turn, three rounds
    assert out["a"]["calls_per_sample"] == 1 and len(out["b"]["samples"]) == 3
    assert out["b"]["median"] > 0 and out["a"]["spread"] >= 1.0


def test_variants_parse_and_run_side_by_side():
    from ltr_core.bench_variants import bench_variants, parse_variant

    assert parse_variant("bf16+compile:reduce-overhead") == ("bf16", "reduce-overhead")
    assert parse_variant("fp32") == ("fp32", None)
    with pytest.raises(ValueError, match="precision"):
        parse_variant("fp16")
    rows = bench_variants("resnet32", ("fp32", "fp32"), batch_size=8, steps_per_call=1, device="cpu", samples=2,
                          warmup_s=0.0, sample_s=0.0)
    assert [r["variant"] for r in rows] == ["fp32", "fp32"] and rows[0]["vs_first"] == 1.0
    assert rows[1]["images_per_s"] > 0 and isinstance(rows[0]["native_bf16"], bool)
