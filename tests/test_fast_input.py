"""Large-image fast input: the uint8 cache (eval equals the PIL path), its key and reuse, the device
augmentation it feeds, the TorchCodec loader logic with a CPU decoder, and the clean fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ltr_core.data import LTData, Split, make_loader
from ltr_core.data.gpu_decode import GPUDecodeLoader, pil_decoder, rrc_box
from ltr_core.data.loaders import FileLoader, SeededKeySampler
from ltr_core.data.samplers import build_sampler
from ltr_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ltr_core.data.uint8_cache import CachedImageLoader, cache_key, default_cache_size, load_or_build

SIZES = [(41, 30), (30, 47), (64, 48), (33, 33), (50, 29), (29, 60)]  # landscape, portrait, square, odd sizes


@pytest.fixture
def jpegs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES * 2):
        small = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
        img = np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.int16) + rng.integers(-10, 11, (h, w, 3))
        p = tmp_path / "img" / f"{i:03d}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def _data(paths, tmp_path, image_size=28, backend="uint8_cache"):
    labels = torch.arange(len(paths)) % 3
    split = Split(labels=labels, paths=paths)
    return LTData(name="jpegs", class_names=["a", "b", "c"], train=split, test=Split(labels=labels, paths=paths),
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size,
                  input_options={"file_backend": backend, "cache_size": 0, "cache_dir": str(tmp_path / "cache")})


def _all(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def test_cached_eval_equals_pil_eval(jpegs, tmp_path):
    """Resize(32) + CenterCrop(28) from the file and centre crop 28 of the 32-px cache: same pixels."""
    data = _data(jpegs, tmp_path)
    pil = make_loader(data, "test", train=False, batch_size=5, device="cpu", num_workers=0, file_backend="pil")
    cached = make_loader(data, "test", train=False, batch_size=5, device="cpu", num_workers=0)
    assert isinstance(pil, FileLoader) and isinstance(cached, CachedImageLoader)
    assert cached.images.shape == (len(jpegs), 3, default_cache_size(28), default_cache_size(28)) == (12, 3, 32, 32)
    (xp, yp), (xc, yc) = _all(pil), _all(cached)
    assert torch.equal(yp, yc)
    assert xp.shape == xc.shape == (12, 3, 28, 28)
    assert (xp - xc).abs().max().item() < 1e-5  # float rounding of the normalisation only


def test_cache_is_built_once_and_keyed(jpegs, tmp_path):
    labels = np.arange(len(jpegs)) % 3
    a = load_or_build(jpegs, labels, size=32, cache_dir=tmp_path / "c", name="x")
    files = sorted((tmp_path / "c" / "uint8").glob("*.npy"))
    mtime = files[0].stat().st_mtime_ns
    b = load_or_build(jpegs, labels, size=32, cache_dir=tmp_path / "c", name="x")
    assert torch.equal(a, b) and files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    keys = {cache_key(jpegs, labels, 32), cache_key(jpegs, labels, 36), cache_key(jpegs[::-1], labels, 32),
            cache_key(jpegs, labels, 32, split_sha="abc"), cache_key(jpegs, labels, 32, interpolation="bicubic")}
    assert len(keys) == 5  # size, list, split file and resize rule each change the key
    info = files[0].with_suffix(".json").read_text()
    assert '"n": 12' in info and "build_images_per_second" in info


def test_cached_train_augments_on_the_device_deterministically(jpegs, tmp_path):
    data = _data(jpegs, tmp_path)
    loader = make_loader(data, "train", train=True, batch_size=4, device="cpu", seed=3, num_workers=0)
    loader.set_epoch(1)
    x1, y1 = _all(loader)
    x2, y2 = _all(loader)
    loader.set_epoch(2)
    x3, _ = _all(loader)
    assert x1.shape == (12, 3, 28, 28) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)  # another epoch: another order and other crops
    order = build_sampler("instance", data.train.labels, seed=3).indices(1)
    assert torch.equal(y1, data.train.labels[order])


def test_host_cache_path_prefetches_the_same_batches(jpegs, tmp_path):
    """A cache kept off the device (the iNat case) yields what the on-device path yields."""
    images = load_or_build(jpegs, np.zeros(len(jpegs)), size=32, cache_dir=tmp_path / "c", name="h")
    labels = torch.arange(len(jpegs)) % 3
    kw = dict(batch_size=5, device="cpu", train=False, sampler=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              image_size=28)
    on = CachedImageLoader(images, labels, **kw)
    off = CachedImageLoader(images, labels, on_device=False, **kw)  # host gather + background prefetch
    assert on.on_device and not off.on_device
    assert torch.equal(_all(on)[0], _all(off)[0])
    sampler = build_sampler("instance", labels, seed=0)
    tr = {**kw, "train": True, "sampler": sampler}
    assert torch.equal(_all(CachedImageLoader(images, labels, **tr))[0],
                       _all(CachedImageLoader(images, labels, on_device=False, **tr))[0])
    with pytest.raises(Exception, match="smaller than image_size"):
        CachedImageLoader(images, labels, **{**kw, "image_size": 40})


def test_torchcodec_backend_falls_back_to_pil_without_cuda(jpegs, tmp_path, capsys):
    data = _data(jpegs, tmp_path, backend="torchcodec")
    loader = make_loader(data, "test", train=False, batch_size=6, device="cpu", num_workers=0)
    assert isinstance(loader, FileLoader)
    assert "using the PIL DataLoader" in capsys.readouterr().out
    with pytest.raises(Exception, match="unknown file_backend"):
        make_loader(data, "test", train=False, batch_size=6, device="cpu", file_backend="dali")


def test_gpu_decode_loader_logic_with_a_cpu_decoder(jpegs, tmp_path):
    """The batched-decode loader (nvJPEG on a GPU) run with a PIL decode function on the CPU."""
    data = _data(jpegs, tmp_path, backend="pil")
    pil = make_loader(data, "test", train=False, batch_size=6, device="cpu", num_workers=0)
    gpu = GPUDecodeLoader(jpegs, data.test.labels, batch_size=6, device="cpu", train=False, augment=False,
                          sampler=None, key_sampler=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=28,
                          num_workers=0, decode_fn=pil_decoder)
    (xp, yp), (xg, yg) = _all(pil), _all(gpu)
    assert torch.equal(yp, yg) and xg.shape == xp.shape
    assert (xp - xg).abs().mean().item() < 0.05  # torch's antialiased bilinear resize vs PIL's: close, not equal
    sampler = build_sampler("instance", data.train.labels, seed=0)
    train = GPUDecodeLoader(jpegs, data.train.labels, batch_size=4, device="cpu", train=True, augment=True,
                            sampler=sampler, key_sampler=SeededKeySampler(sampler, 0), mean=IMAGENET_MEAN,
                            std=IMAGENET_STD, image_size=28, num_workers=0, decode_fn=pil_decoder)
    train.set_epoch(0)
    a, b = _all(train), _all(train)
    assert a[0].shape == (12, 3, 28, 28) and torch.equal(a[0], b[0])


def test_rrc_box_follows_torchvisions_rule():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = rrc_box(30, 50, g, scale=(0.08, 1.0))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h > 0 and w > 0
        assert 0.08 * 1500 * 0.8 <= h * w <= 1500
    # impossible area -> fallback: the whole image clamped to the ratio bounds, centred
    assert rrc_box(10, 100, g, scale=(2.0, 2.0)) == (0, (100 - 13) // 2, 10, 13)
