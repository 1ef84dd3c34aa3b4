"""Batch augmentations on the device with per-sample randomness: RandAugment, random erasing, mixup / cutmix.

They run in ``engine.fit``'s ``batch_transform(x, y) -> (x, t)`` hook on the normalised batch the loader
yields (both the small-image device path and the file path), in the order of the DeiT/MAE fine-tuning
recipe that LiVT uses (methods.md §4.2): RandomResizedCrop + flip (the loader) → RandAugment →
normalise → random erasing → mixup/cutmix with soft targets. Every random draw comes from the global
torch RNG, which the engine reseeds every epoch, so a resumed run sees the same augmentation.

**RandAugment** ``rand-m9-mstd0.5-inc1`` (Cubuk et al., NeurIPS 2020, in timm's variant): for each
image, ``num_ops`` = 2 times: pick one of the 15 ops below uniformly, apply it with probability 0.5, at
magnitude m ~ N(9, 0.5²) clipped to [0, 10] (redrawn per image and op), level f = m / 10; signed ops
take a random sign. The "increasing" op set (timm ``_RAND_INCREASING_TRANSFORMS``), on uint8-valued
pixels u ∈ [0, 255] (rounded after every op, as PIL would):

=====================  ===========================================================================
AutoContrast           per image and channel, (u − min)·255 / (max − min)
Equalize               per image and channel histogram equalisation (torchvision)
Invert                 255 − u
Rotate                 ±30·f degrees about the centre
PosterizeIncreasing    keep the top 4 − ⌊4f⌋ bits
SolarizeIncreasing     u ≥ 256 − ⌊256 f⌋ → 255 − u
SolarizeAdd            u < 128 → min(u + ⌊110 f⌋, 255)
Color/Contrast/        blend(degenerate, u, 1 ± 0.9 f) with degenerate = grey image / its mean grey
Brightness/Sharpness   / black / the 3×3 SMOOTH filter (weights 1,1,1;1,5,1;1,1,1 / 13, border kept)
ShearX / ShearY        shear ±0.3 f (x' = x + s·y, resp. y' = y + s·x)
TranslateX/YRel        ±0.45 f of the image side
=====================  ===========================================================================

Geometric ops resample bilinearly and fill uncovered pixels with the dataset mean colour (timm fills
with the mean too). Differences from timm's PIL implementation: bilinear instead of PIL bicubic, and
continuous (sub-pixel) grids; the op set, probabilities and magnitude rules are the same.

**Random erasing** (Zhong et al., AAAI 2020; timm ``RandomErasing(mode="pixel", count=1)``): with
probability p per image, one box of area fraction a ~ U(0.02, 1/3) and aspect log r ~ U(log 0.3, log 1/0.3)
(h = round(√(a·HW·r)), w = round(√(a·HW/r)), up to 10 draws until it fits), filled with N(0, 1) noise
in normalised pixel space.

**Mixup / cutmix** (Zhang et al., ICLR 2018; Yun et al., ICCV 2019; timm ``Mixup``, batch mode): with
probability ``prob`` the batch is mixed with its reverse x.flip(0): cutmix with probability ``switch_prob``
(when both α > 0), λ ~ Beta(α, α); mixup x = λ x + (1 − λ) x.flip(0); cutmix pastes a box of side
√(1 − λ)·(H, W) centred uniformly (clipped at the border) from x.flip(0) and sets λ = 1 − box area / HW.
Targets t = λ·s(y) + (1 − λ)·s(y.flip(0)) with smoothed one-hot s(y) = ε/C everywhere and 1 − ε + ε/C at
y, so every row of t sums to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
            "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
            "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


# ---------------------------------------------------------------------------------------------- ops
# each op: (u [n, C, H, W] float in [0, 255], level f [n] in [0, 1], sign [n] in {-1, 1}, fill [C]) -> u


def _grey(u: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma L = 0.299 R + 0.587 G + 0.114 B (PIL's convert("L")), [n, 1, H, W]."""
    if u.shape[1] != 3:
        return u.mean(dim=1, keepdim=True)
    w = torch.tensor([0.299, 0.587, 0.114], device=u.device, dtype=u.dtype).view(1, 3, 1, 1)
    return (u * w).sum(dim=1, keepdim=True)


def _blend(degenerate: torch.Tensor, u: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: degenerate + factor·(u − degenerate), clipped to [0, 255]."""
    f = factor.view(-1, 1, 1, 1)
    return (degenerate + f * (u - degenerate)).clamp(0, 255)


def _enhance_factor(level, sign):
    return 1.0 + 0.9 * level * sign


def _autocontrast(u, level, sign, fill):
    lo = u.amin(dim=(2, 3), keepdim=True)
    hi = u.amax(dim=(2, 3), keepdim=True)
    scaled = ((u - lo) * 255.0 / (hi - lo).clamp_min(1e-6)).floor()
    return torch.where(hi > lo, scaled, u)


def _equalize(u, level, sign, fill):
    from torchvision.transforms.v2 import functional as TF

    return TF.equalize(u.round().clamp(0, 255).to(torch.uint8)).float()


def _invert(u, level, sign, fill):
    return 255.0 - u


def _posterize(u, level, sign, fill):
    bits = 4 - torch.floor(4 * level)
    step = (2.0 ** (8 - bits)).view(-1, 1, 1, 1)
    return torch.floor(u / step) * step


def _solarize(u, level, sign, fill):
    thresh = (256 - torch.floor(256 * level)).view(-1, 1, 1, 1)
    return torch.where(u >= thresh, 255.0 - u, u)


def _solarize_add(u, level, sign, fill):
    add = torch.floor(110 * level).view(-1, 1, 1, 1)
    return torch.where(u < 128, (u + add).clamp(max=255), u)


def _color(u, level, sign, fill):
    return _blend(_grey(u).expand_as(u), u, _enhance_factor(level, sign))


def _contrast(u, level, sign, fill):
    mean = torch.floor(_grey(u).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean.expand_as(u), u, _enhance_factor(level, sign))


def _brightness(u, level, sign, fill):
    return _blend(torch.zeros_like(u), u, _enhance_factor(level, sign))


def _sharpness(u, level, sign, fill):
    c = u.shape[1]
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=u.device) / 13.0
    smooth = F.conv2d(u, k.view(1, 1, 3, 3).repeat(c, 1, 1, 1), padding=1, groups=c).round()
    border = torch.ones_like(u[:1, :1], dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    degenerate = torch.where(border, u, smooth)
    return _blend(degenerate, u, _enhance_factor(level, sign))


def _affine(u: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Resample u at in = M·[x, y, 1] for every output pixel centre (x, y) (pixel units, PIL's AFFINE
    convention), bilinear, uncovered pixels = fill. ``matrix`` [n, 2, 3]."""
    n, _, h, w = u.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=u.device, dtype=u.dtype) + 0.5,
                            torch.arange(w, device=u.device, dtype=u.dtype) + 0.5, indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(1, h * w, 3)
    src = pts @ matrix.transpose(1, 2)  # [n, HW, 2]
    grid = torch.stack([src[..., 0] * 2 / w - 1, src[..., 1] * 2 / h - 1], dim=-1).view(n, h, w, 2)
    f = fill.view(1, -1, 1, 1).to(u.dtype)
    out = F.grid_sample(u - f, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + f
    return out.clamp(0, 255)


def _eye(n, device, dtype):
    m = torch.zeros(n, 2, 3, device=device, dtype=dtype)
    m[:, 0, 0] = 1
    m[:, 1, 1] = 1
    return m


def _rotate(u, level, sign, fill):
    n, _, h, w = u.shape
    theta = torch.deg2rad(30.0 * level * sign)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    m = torch.stack([torch.stack([cos, -sin, cx - cos * cx + sin * cy], -1),
                     torch.stack([sin, cos, cy - sin * cx - cos * cy], -1)], dim=1)
    return _affine(u, m, fill)


def _shear_x(u, level, sign, fill):
    m = _eye(u.shape[0], u.device, u.dtype)
    m[:, 0, 1] = 0.3 * level * sign
    return _affine(u, m, fill)


def _shear_y(u, level, sign, fill):
    m = _eye(u.shape[0], u.device, u.dtype)
    m[:, 1, 0] = 0.3 * level * sign
    return _affine(u, m, fill)


def _translate_x(u, level, sign, fill):
    m = _eye(u.shape[0], u.device, u.dtype)
    m[:, 0, 2] = 0.45 * level * sign * u.shape[3]
    return _affine(u, m, fill)


def _translate_y(u, level, sign, fill):
    m = _eye(u.shape[0], u.device, u.dtype)
    m[:, 1, 2] = 0.45 * level * sign * u.shape[2]
    return _affine(u, m, fill)


OP_FUNCTIONS = {
    "AutoContrast": _autocontrast, "Equalize": _equalize, "Invert": _invert, "Rotate": _rotate,
    "PosterizeIncreasing": _posterize, "SolarizeIncreasing": _solarize, "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _color, "ContrastIncreasing": _contrast, "BrightnessIncreasing": _brightness,
    "SharpnessIncreasing": _sharpness, "ShearX": _shear_x, "ShearY": _shear_y,
    "TranslateXRel": _translate_x, "TranslateYRel": _translate_y,
}


def apply_op(name: str, u: torch.Tensor, level: torch.Tensor, sign: torch.Tensor,
             fill: torch.Tensor | None = None) -> torch.Tensor:
    """One RandAugment op on a batch of uint8-valued float images (see the module table)."""
    if name not in OP_FUNCTIONS:
        raise ValueError(f"unknown RandAugment op {name!r}; valid: {', '.join(RAND_OPS)}")
    fill = torch.zeros(u.shape[1], device=u.device) if fill is None else fill.to(u.device)
    return OP_FUNCTIONS[name](u, level.to(u.dtype), sign.to(u.dtype), fill).round().clamp(0, 255)


def rand_augment(u: torch.Tensor, *, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 prob: float = 0.5, fill: torch.Tensor | None = None, ops: Sequence[str] = RAND_OPS) -> torch.Tensor:
    """RandAugment with per-image op choice, application and magnitude (see the module doc).

    ``u``: float [B, C, H, W] with uint8 values in [0, 255]; returns the same.
    """
    if num_ops <= 0:
        return u
    b, dev = u.shape[0], u.device
    u = u.clone()
    for _ in range(num_ops):
        choice = torch.randint(0, len(ops), (b,), device=dev)
        applied = torch.rand(b, device=dev) < prob
        mag = torch.full((b,), float(magnitude), device=dev)
        if magnitude_std > 0:
            mag = mag + magnitude_std * torch.randn(b, device=dev)
        level = mag.clamp(0.0, 10.0) / 10.0
        sign = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
        for k, name in enumerate(ops):
            idx = torch.nonzero((choice == k) & applied).flatten()
            if idx.numel():
                u[idx] = apply_op(name, u[idx], level[idx], sign[idx], fill)
    return u


def random_erasing(x: torch.Tensor, prob: float = 0.25, *, min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3, attempts: int = 10) -> torch.Tensor:
    """timm RandomErasing(mode="pixel", count=1) per image of a normalised batch (see the module doc)."""
    if prob <= 0:
        return x
    b, c, h, w = x.shape
    dev = x.device
    erase = torch.rand(b, device=dev) < prob
    area = torch.empty(b, attempts, device=dev).uniform_(min_area, max_area) * h * w
    log_r = torch.empty(b, attempts, device=dev).uniform_(math.log(min_aspect), math.log(1 / min_aspect))
    r = log_r.exp()
    bh = torch.round(torch.sqrt(area * r)).long()
    bw = torch.round(torch.sqrt(area / r)).long()
    fits = (bh < h) & (bw < w) & (bh > 0) & (bw > 0)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.zeros(b, dtype=torch.long, device=dev))
    erase = erase & fits.any(1)
    bh = bh.gather(1, first[:, None]).squeeze(1)
    bw = bw.gather(1, first[:, None]).squeeze(1)
    top = (torch.rand(b, device=dev) * (h - bh + 1).clamp_min(1)).long()
    left = (torch.rand(b, device=dev) * (w - bw + 1).clamp_min(1)).long()
    yy = torch.arange(h, device=dev).view(1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, w)
    box = ((yy >= top.view(-1, 1, 1)) & (yy < (top + bh).view(-1, 1, 1)) &
           (xx >= left.view(-1, 1, 1)) & (xx < (left + bw).view(-1, 1, 1)) & erase.view(-1, 1, 1))
    noise = torch.randn_like(x)
    return torch.where(box.unsqueeze(1), noise, x)


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """ε/C everywhere, 1 − ε + ε/C at the label."""
    off = smoothing / num_classes
    t = torch.full((y.shape[0], num_classes), off, device=y.device)
    return t.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


def mixup_cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                 smoothing: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, float, str]:
    """Batch-mode mixup/cutmix (see the module doc): (mixed x, soft targets [B, C], λ, "mixup"|"cutmix"|"none")."""
    lam, mode = 1.0, "none"
    if (mixup_alpha > 0 or cutmix_alpha > 0) and float(torch.rand(())) < prob:
        use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand(())) < switch_prob)
        alpha = cutmix_alpha if use_cutmix else mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        mode = "cutmix" if use_cutmix else "mixup"
    x = x.clone()
    if mode == "mixup":
        x = lam * x + (1.0 - lam) * x.flip(0)
    elif mode == "cutmix":
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
        y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x[:, :, y1:y2, x1:x2] = x.flip(0)[:, :, y1:y2, x1:x2]
        lam = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)
    t = lam * smooth_one_hot(y, num_classes, smoothing) + (1.0 - lam) * smooth_one_hot(y.flip(0), num_classes, smoothing)
    return x, t, lam, mode


@dataclass
class BatchAugment:
    """The BFT ``batch_transform``: RandAugment → random erasing → mixup/cutmix on a normalised batch.

    ``mean``/``std`` are the loader's normalisation (RandAugment works on uint8-valued pixels, so the
    batch is mapped back to [0, 255], rounded, augmented and re-normalised). Returns (x, soft targets)
    when mixing is on (``mixup_alpha`` or ``cutmix_alpha`` > 0: targets carry the label smoothing), else
    (x, int labels) and the loss applies its own smoothing.
    """

    mean: Sequence[float]
    std: Sequence[float]
    num_classes: int
    randaug_ops: int = 2
    randaug_magnitude: float = 9.0
    randaug_mstd: float = 0.5
    randaug_prob: float = 0.5
    reprob: float = 0.25
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1

    @property
    def mixing(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mixup_prob > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if self.randaug_ops > 0:
            mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
            u = ((x.float() * std + mean) * 255.0).round().clamp(0, 255)
            u = rand_augment(u, num_ops=self.randaug_ops, magnitude=self.randaug_magnitude,
                             magnitude_std=self.randaug_mstd, prob=self.randaug_prob,
                             fill=(mean.flatten() * 255.0).round())
            x = (u / 255.0 - mean) / std
        x = random_erasing(x, self.reprob)
        if not self.mixing:
            return x, y
        x, t, _, _ = mixup_cutmix(x, y, self.num_classes, mixup_alpha=self.mixup_alpha,
                                  cutmix_alpha=self.cutmix_alpha, prob=self.mixup_prob,
                                  switch_prob=self.switch_prob, smoothing=self.smoothing)
        return x, t
