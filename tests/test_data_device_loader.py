"""DeviceTensorLoader: exact normalisation, crop = zero-padded shift, flips, determinism, speed."""

import math

import torch
import torch.nn.functional as F

from ltr_core.config import DataSection
from ltr_core.data import build_data, build_sampler, make_loader
from ltr_core.data.device_loader import DeviceTensorLoader, crop_flip, loader_images_per_second

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def images(n=64, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def normalise(u8):
    return (u8.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def loader(x, **kw):
    args = dict(batch_size=16, device="cpu", train=True, sampler=None, mean=MEAN, std=STD, image_size=32)
    args.update(kw)
    return DeviceTensorLoader(x, torch.arange(len(x)) % 10, **args)


def test_no_augmentation_is_exact_normalisation():
    x = images()
    out = torch.cat([b for b, _ in loader(x, augment=False)])
    assert out.dtype == torch.float32 and torch.allclose(out, normalise(x), atol=1e-5)
    ys = torch.cat([y for _, y in loader(x, train=False)])
    assert ys.dtype == torch.int64 and torch.equal(ys, torch.arange(64) % 10)


def test_crop_is_zero_padded_shift_by_hand():
    img = torch.arange(3 * 5 * 5, dtype=torch.uint8).view(1, 3, 5, 5)
    p = 2
    # oy = 0, ox = 4: shift content down by 2 rows and left by 2 columns
    out = crop_flip(img, torch.tensor([0]), torch.tensor([0]), torch.tensor([4]), torch.tensor([False]), p)[0]
    expected = torch.zeros(3, 5, 5, dtype=torch.uint8)
    expected[:, 2:, :3] = img[0, :, :3, 2:]
    assert torch.equal(out, expected)
    assert out[0, 2, 0] == img[0, 0, 0, 2] and out[0, 0, 0] == 0
    # centre offset (p, p) is the identity; flip mirrors columns
    same = crop_flip(img, torch.tensor([0]), torch.tensor([p]), torch.tensor([p]), torch.tensor([True]), p)[0]
    assert torch.equal(same, img[0].flip(-1))


def test_crop_flip_matches_pad_and_slice():
    x = images(8)
    p = 4
    oy, ox = torch.tensor([0, 8, 3, 4, 1, 7, 2, 5]), torch.tensor([8, 0, 4, 4, 6, 1, 3, 0])
    fl = torch.tensor([True, False, True, False, False, True, True, False])
    idx = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])
    out = crop_flip(x, idx, oy, ox, fl, p)
    for b in range(8):
        ref = F.pad(x[idx[b]], (p, p, p, p))[:, oy[b]:oy[b] + 32, ox[b]:ox[b] + 32]
        assert torch.equal(out[b], ref.flip(-1) if fl[b] else ref)


def test_loader_outputs_are_shifted_flipped_copies():
    x = images(32)
    L = loader(x, crop_padding=4)
    batch = torch.cat([b for b, _ in L])
    oy, ox, fl = torch.meshgrid(torch.arange(9), torch.arange(9), torch.arange(2), indexing="ij")
    oy, ox, fl = oy.reshape(-1), ox.reshape(-1), fl.reshape(-1).bool()  # all 162 crop/flip choices
    for b in range(32):
        cands = normalise(crop_flip(x, torch.full((162,), b), oy, ox, fl, 4))
        err = (cands - batch[b]).abs().amax(dim=(1, 2, 3))
        assert err.min() < 1e-5, f"image {b} is not a padded crop/flip of its source"
    # and the crops are not all the identity
    assert not torch.allclose(batch, normalise(x), atol=1e-5)


def test_flip_probability_about_half():
    x = images(2000, size=8)
    out = torch.cat([b for b, _ in loader(x, crop_padding=0, batch_size=500, image_size=8)])
    ref = normalise(x)
    flipped = (out - ref.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    kept = (out - ref).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((flipped ^ kept).all())
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_determinism_per_seed_and_epoch():
    x = images(100)
    s = build_sampler("instance", torch.arange(100) % 10, seed=1)

    def epoch_batches(seed, epoch):
        L = loader(x, sampler=build_sampler("instance", torch.arange(100) % 10, seed=seed), seed=seed)
        L.set_epoch(epoch)
        return [(b.clone(), y.clone()) for b, y in L]

    a, b, c = epoch_batches(1, 3), epoch_batches(1, 3), epoch_batches(1, 4)
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    L = loader(x, sampler=s, seed=1)
    L.set_epoch(3)
    assert s.epoch == 3 and torch.equal(next(iter(L))[0], a[0][0])


def test_len_drop_last_and_resize():
    x = images(50, size=8)
    assert len(loader(x, batch_size=16)) == 4
    L = loader(x, batch_size=16, drop_last=True, image_size=16, augment=False)
    batches = list(L)
    assert len(L) == 3 == len(batches) and batches[0][0].shape == (16, 3, 16, 16)
    ref = F.interpolate(normalise(x[:16]), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(batches[0][0], ref, atol=1e-4)


def test_make_loader_on_digits():
    d = build_data(DataSection(imbalance_ratio=25))
    train = make_loader(d, "train", train=True, batch_size=64, device="cpu", sampler="class_balanced", seed=0)
    assert len(train) == math.ceil(383 / 64)
    x, y = next(iter(train))
    assert x.shape == (64, 3, 16, 16) and y.dtype == torch.int64
    ev = make_loader(d, "test", train=False, batch_size=128, device="cpu")
    ys = torch.cat([y for _, y in ev])
    assert torch.equal(ys, d.test.labels)


def test_images_per_second_helper():
    x = images(512)
    L = loader(x, sampler=build_sampler("instance", torch.arange(512) % 10, seed=0), batch_size=128)
    assert loader_images_per_second(L, 6) > 1000  # wraps around the 4-batch epoch


def test_random_resized_crop_full_box_is_identity_and_flip_mirrors():
    from ltr_core.data.device_loader import random_resized_crop_flip

    x = torch.rand(4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    same = random_resized_crop_flip(x, 8, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(same, x, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_flip(x, 8, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    for o, xi in zip(out, x):  # every image is either itself or its mirror image
        assert torch.allclose(o, xi, atol=1e-5) or torch.allclose(o, xi.flip(-1), atol=1e-5)


def test_random_resized_crop_zooms_into_a_sub_box():
    from ltr_core.data.device_loader import random_resized_crop_flip

    # a horizontal ramp: a crop of area a < 1 spans less than the full range of values
    ramp = torch.linspace(0, 1, 32).expand(2, 3, 32, 32).contiguous()
    g = torch.Generator().manual_seed(1)
    out = random_resized_crop_flip(ramp, 64, g, scale=(0.25, 0.25), ratio=(1.0, 1.0), flip=False)
    assert out.shape == (2, 3, 64, 64)
    span = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    assert torch.all((span > 0.4) & (span < 0.6))  # side sqrt(0.25) = 1/2 of the image


def test_loader_rrc_mode_output_size_and_determinism():
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(20) % 4
    from ltr_core.data.samplers import build_sampler

    def batches():
        loader = DeviceTensorLoader(images, labels, batch_size=8, device="cpu", train=True,
                                    sampler=build_sampler("instance", labels, seed=0), mean=(0.5,) * 3,
                                    std=(0.5,) * 3, image_size=16, augment_mode="rrc")
        return [x for x, _ in loader]

    a, b = batches(), batches()
    assert a[0].shape == (8, 3, 16, 16) and all(torch.equal(u, v) for u, v in zip(a, b))
