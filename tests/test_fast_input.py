"""Large-image fast input: the uint8 cache (eval equals the PIL path), its key and reuse, the device
augmentation it feeds, the TorchCodec loader logic with a CPU decoder, and the clean fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ltr_core.data import LTData, Split, make_loader
from ltr_core.data.crops import rrc_box
from ltr_core.data.gpu_decode import GPUDecodeLoader, pil_decoder
from ltr_core.data.loaders import FileLoader, SeededKeySampler
from ltr_core.data.samplers import build_sampler
from ltr_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ltr_core.data.samplers import epoch_generator
from ltr_core.data.uint8_cache import (CachedImageLoader, RaggedImages, cache_key, default_cache_size, load_or_build,
                                       resolve_file_backend, stored_size)
from ltr_core.identity import data_identity

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
    assert default_cache_size(28) == 32 and len(cached.images) == 12
    # the whole image at shorter side 32, aspect kept; the 29 x 60 portrait's longer side capped at 64 (centred)
    shapes = [tuple(cached.images.image(i).shape[1:]) for i in range(6)]
    assert shapes == [(32, 43), (50, 32), (32, 42), (32, 32), (32, 55), (64, 32)]
    (xp, yp), (xc, yc) = _all(pil), _all(cached)
    assert torch.equal(yp, yc)
    assert xp.shape == xc.shape == (12, 3, 28, 28)
    assert (xp - xc).abs().max().item() < 1e-5  # float rounding of the normalisation only


def test_cache_is_built_once_and_keyed(jpegs, tmp_path):
    labels = np.arange(len(jpegs)) % 3
    a = load_or_build(jpegs, labels, size=32, cache_dir=tmp_path / "c", name="x")
    files = sorted(p for p in (tmp_path / "c" / "uint8").glob("*.npy") if not p.name.endswith(".index.npy"))
    assert len(files) == 1 and files[0].with_suffix(".index.npy").is_file()
    mtime = files[0].stat().st_mtime_ns
    b = load_or_build(jpegs, labels, size=32, cache_dir=tmp_path / "c", name="x")
    assert torch.equal(a.data, b.data) and a.index == b.index and files[0].stat().st_mtime_ns == mtime  # reused
    keys = {cache_key(jpegs, labels, 32), cache_key(jpegs, labels, 36), cache_key(jpegs[::-1], labels, 32),
            cache_key(jpegs, labels, 32, split_sha="abc"), cache_key(jpegs, labels, 32, interpolation="bicubic")}
    assert len(keys) == 5  # size, list, split file and resize rule each change the key
    info = files[0].with_suffix(".json").read_text()
    assert '"n": 12' in info and "build_images_per_second" in info and '"version": 2' in info
    files[0].with_suffix(".index.npy").write_bytes(b"")  # a damaged index: refused with the fix, never misread
    np.save(files[0].with_suffix(".index.npy"), np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(Exception, match="delete"):
        load_or_build(jpegs, labels, size=32, cache_dir=tmp_path / "c", name="x")


def test_cache_stores_pils_resize_of_the_whole_image(jpegs, tmp_path):
    """Each stored image is exactly PIL's Resize(S) output (aspect kept), the longer side centre-cropped to 2S."""
    from torchvision.transforms import v2

    images = load_or_build(jpegs, np.zeros(12), size=32, cache_dir=tmp_path / "c", name="s")
    for i, path in enumerate(jpegs[:6]):
        with Image.open(path) as im:
            ref = torch.from_numpy(np.asarray(v2.Resize(32, antialias=True)(im.convert("RGB")))).permute(2, 0, 1)
            assert stored_size(*im.size, 32) == tuple(images.image(i).shape[1:])
        h, w = images.image(i).shape[1:]
        top, left = int(round((ref.shape[1] - h) / 2)), int(round((ref.shape[2] - w) / 2))
        assert torch.equal(images.image(i), ref[:, top:top + h, left:left + w])


def test_cached_train_crops_are_torchvisions_rrc_on_the_stored_image(jpegs, tmp_path):
    """Epoch e = per image in the sampler's order, a RandomResizedCrop box by torchvision's rule over the
    whole stored image (from the (seed, epoch) generator), torchvision's antialiased resized_crop, then
    the flip draw, then normalisation."""
    from torchvision.transforms.v2 import functional as TF

    data = _data(jpegs, tmp_path)
    loader = make_loader(data, "train", train=True, batch_size=4, device="cpu", seed=5, num_workers=0)
    loader.set_epoch(2)
    x, _ = _all(loader)
    gen = epoch_generator(5, 2)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for j, i in enumerate(build_sampler("instance", data.train.labels, seed=5).indices(2).tolist()):
        img = loader.images.image(i)
        top, left, h, w = rrc_box(img.shape[1], img.shape[2], gen, (0.08, 1.0))
        ref = TF.resized_crop(img.float(), top, left, h, w, [28, 28], antialias=True)
        ref = ref.flip(-1) if torch.rand(1, generator=gen).item() < 0.5 else ref
        assert (x[j] - (ref / 255 - mean) / std).abs().max().item() < 1e-4, j


def test_auto_backend_takes_the_cache_where_it_fits_and_records_it(jpegs, tmp_path, monkeypatch, capsys):
    from ltr_core.data import uint8_cache

    data = _data(jpegs, tmp_path, backend="auto")
    assert resolve_file_backend(data) == "uint8_cache" and data.input_options["file_backend_auto"]
    assert "file_backend=auto -> uint8_cache" in capsys.readouterr().out
    cached = data_identity(data)
    assert cached["input_path"]["file_backend"] == "uint8_cache" and cached["input_path"]["version"] == 2
    monkeypatch.setattr(uint8_cache, "_free_bytes", lambda folder: 1000)  # 12 images of ~3-6 kB: do not fit
    small = _data(jpegs, tmp_path, backend="auto")
    assert resolve_file_backend(small) == "pil"
    out = capsys.readouterr().out
    assert "file_backend=auto -> pil" in out and "set cache_dir to a disk with" in out
    assert isinstance(make_loader(small, "test", train=False, batch_size=5, device="cpu", num_workers=0), FileLoader)
    pil = data_identity(small)
    assert "input_path" not in pil and pil["digest"] == data_identity(_data(jpegs, tmp_path, backend="pil"))["digest"]
    assert pil["digest"] != cached["digest"]  # the cache's run and the PIL run are different inputs
    load_or_build(jpegs, data.test.labels.numpy(), size=32, cache_dir=tmp_path / "cache", name="jpegs-train")
    load_or_build(jpegs, data.test.labels.numpy(), size=32, cache_dir=tmp_path / "cache", name="jpegs-test")
    assert resolve_file_backend(_data(jpegs, tmp_path, backend="auto")) == "uint8_cache"  # built: nothing to fit


def test_ragged_images_from_dense_is_a_view():
    dense = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    r = RaggedImages.from_dense(dense)
    assert len(r) == 2 and r.min_side == 4 and torch.equal(r.image(1), dense[1])
    assert r.data.data_ptr() == dense.data_ptr()


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
    from torchvision import transforms as T

    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = rrc_box(30, 50, g, scale=(0.08, 1.0))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h > 0 and w > 0
        assert 0.08 * 1500 * 0.8 <= h * w <= 1500
    img = torch.zeros(3, 30, 50)  # the same seed gives torchvision's own box
    for k in range(100):
        torch.manual_seed(k)
        expected = tuple(T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]))
        assert rrc_box(30, 50, torch.Generator().manual_seed(k), (0.08, 1.0)) == expected
    # impossible area -> fallback: the whole image clamped to the ratio bounds, centred
    assert rrc_box(10, 100, g, scale=(2.0, 2.0)) == (0, (100 - 13) // 2, 10, 13)
