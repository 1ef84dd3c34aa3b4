"""MGP: a masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022)
around a timm ViT encoder — the pre-training stage of LiVT (Xu et al., CVPR 2023; methods.md §4.1).

For an image x cut into N patches of p×p pixels:

1. **per-sample random masking**: noise u ~ U(0, 1)^N, ``ids_shuffle = argsort(u)``,
   ``ids_restore = argsort(ids_shuffle)``; the first K = round((1 − r)·N) shuffled patches are kept
   (r = mask ratio, 0.75), ``mask`` = 1 on the N − K removed patches (in the original order);
2. **encoder** (the timm ViT): patch embedding + fixed sin-cos position embedding, keep the K visible
   tokens, prepend the cls token, transformer blocks, final LayerNorm;
3. **decoder** (light, width D_d, depth L_d): linear D → D_d, append N − K copies of a learnable mask
   token, un-shuffle with ``ids_restore``, add the decoder's fixed sin-cos position embedding, blocks,
   LayerNorm, linear to p²·C pixel values per patch;
4. **loss**: MSE per patch averaged over its p²·C values, averaged over the **masked** patches only,
   L = Σ_i mask_i · mean((ŷ_i − t_i)²) / Σ_i mask_i, with per-patch normalised targets
   t_i = (x_i − mean(x_i)) / sqrt(var(x_i) + 1e-6) (unbiased variance over the patch's p²·C values,
   as the MAE code) when ``norm_pix_loss``, else t_i = x_i.

The encoder is exactly the fine-tuning ViT (same timm class and keys), so its state dict is what BFT
loads (:func:`ltr_core.models.vit.load_encoder`). The random masking draws from the global torch RNG,
which the engine reseeds every epoch, so a resumed MGP run sees the same masks.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .vit import ViTError, sincos_pos_embed


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p·p·C], patches in row-major order, values ordered (row, col, channel)."""
    b, c, h, w = imgs.shape
    if h % p or w % p:
        raise ViTError(f"image {h}x{w} is not a multiple of the patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, N, p·p·C] -> [B, C, H, W]."""
    h, w = grid
    x = x.reshape(x.shape[0], h, w, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], channels, h * p, w * p)


def random_masking(batch: int, num_patches: int, mask_ratio: float, device=None,
                   generator: torch.Generator | None = None):
    """Per-sample random masking: (ids_keep [B, K], mask [B, N] (1 = removed), ids_restore [B, N]).

    K = round((1 − mask_ratio)·N), at least 1. ``ids_restore`` inverts the shuffle:
    ``cat(kept, removed)[ids_restore]`` is the original order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ViTError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    keep = max(1, int(round((1.0 - mask_ratio) * num_patches)))
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def normalised_targets(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised pixels: (x − mean) / sqrt(var + eps) over the last axis (unbiased var)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_i mask_i · mean_j (pred_ij − target_ij)² / Σ_i mask_i over all patches i of the batch."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


class MaskedAutoencoder(nn.Module):
    """Encoder = a timm ViT (cls token, fixed sin-cos pos-emb), decoder = light transformer (see module doc).

    ``forward(imgs) -> (pred [B, N, p²C], target [B, N, p²C], mask [B, N])``; :class:`MGPLoss` turns that
    into the masked reconstruction loss.
    """

    def __init__(self, encoder: nn.Module, *, decoder_width: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, mask_ratio: float = 0.75, norm_pix_loss: bool = True):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.encoder = encoder
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        pe = encoder.patch_embed
        self.patch_size = int(pe.patch_size[0])
        self.grid = tuple(int(g) for g in pe.grid_size)
        self.in_chans = int(pe.proj.in_channels)
        num_patches = self.grid[0] * self.grid[1]
        dim = encoder.embed_dim
        if decoder_width % decoder_heads:
            raise ViTError(f"decoder width {decoder_width} is not divisible by its {decoder_heads} heads")
        # fixed sin-cos position embedding in the encoder (MAE), frozen during pre-training
        with torch.no_grad():
            encoder.pos_embed.copy_(sincos_pos_embed(dim, self.grid))
        encoder.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(dim, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(decoder_width, self.grid), persistent=True)
        norm = functools.partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.Sequential(*[
            Block(decoder_width, decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm(decoder_width)
        self.decoder_pred = nn.Linear(decoder_width, self.patch_size ** 2 * self.in_chans)
        assert num_patches == encoder.pos_embed.shape[1] - 1
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE init: xavier-uniform linear layers (patch projection as a linear map), zero biases,
        LayerNorm 1/0, cls and mask tokens N(0, 0.02²)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def encode(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encoder on the kept patches: [B, 1 + K, D] (cls first), after the final norm."""
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:, :]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        return enc.norm(x)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Decoder: [B, 1 + K, D] -> pixel predictions [B, N, p²C] in the original patch order."""
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        masked = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:, :], masked], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:, :]

    def targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets [B, N, p²C]: per-patch normalised pixels (norm_pix_loss) or raw pixels."""
        t = patchify(imgs.float(), self.patch_size)
        return normalised_targets(t) if self.norm_pix_loss else t

    def forward(self, imgs: torch.Tensor, generator: torch.Generator | None = None):
        ids_keep, mask, ids_restore = random_masking(imgs.shape[0], self.num_patches, self.mask_ratio,
                                                     imgs.device, generator)
        pred = self.decode(self.encode(imgs, ids_keep), ids_restore)
        return pred, self.targets(imgs), mask

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, generator: torch.Generator | None = None):
        """(masked input, reconstruction, reconstruction with the visible patches pasted back) as images
        [B, C, H, W] in the input's (normalised) pixel space; masked patches of the first are 0.

        With ``norm_pix_loss`` the prediction is per-patch normalised, so it is mapped back with the
        mean and std of the original patch (the MAE visualisation convention).
        """
        pred, _, mask = self.forward(imgs, generator)
        pred = pred.float()
        patches = patchify(imgs.float(), self.patch_size)
        if self.norm_pix_loss:
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        m = mask.unsqueeze(-1)
        shape = (self.patch_size, self.in_chans, self.grid)
        masked_in = unpatchify(patches * (1 - m), *shape)
        recon = unpatchify(pred, *shape)
        pasted = unpatchify(patches * (1 - m) + pred * m, *shape)
        return masked_in, recon, pasted


class MGPLoss(nn.Module):
    """Criterion for ``engine.fit``: the masked reconstruction MSE of :func:`masked_mse`; labels are ignored."""

    def forward(self, output, _labels=None) -> torch.Tensor:
        pred, target, mask = output
        return masked_mse(pred, target, mask)


def mae_forward_macs(encoder: nn.Module, decoder_width: int, decoder_depth: int, mask_ratio: float) -> float:
    """Multiply-accumulates of one MAE forward pass (performance.md §10 formula, MLP ratio 4):
    encoder on 1+K tokens L·(12·D²·T + 2·T²·D) + patch embedding, decoder on 1+N tokens with its embed and
    prediction layers. Training ≈ 3× forward."""
    pe = encoder.patch_embed
    p, c = pe.patch_size[0], pe.proj.in_channels
    n = pe.grid_size[0] * pe.grid_size[1]
    d, depth = encoder.embed_dim, len(encoder.blocks)
    keep = max(1, int(round((1 - mask_ratio) * n)))
    t = keep + 1
    enc = depth * (12 * d * d * t + 2 * t * t * d) + d * c * p * p * n
    td, dd = n + 1, decoder_width
    dec = decoder_depth * (12 * dd * dd * td + 2 * td * td * dd) + t * d * dd + td * dd * p * p * c
    return float(enc + dec)


def vit_forward_macs(encoder: nn.Module) -> float:
    """MACs of one ViT forward on all 1+N tokens (performance.md §10): L·(12·D²·T + 2·T²·D) + patch embedding."""
    pe = encoder.patch_embed
    p, c = pe.patch_size[0], pe.proj.in_channels
    n = pe.grid_size[0] * pe.grid_size[1]
    d, depth = encoder.embed_dim, len(encoder.blocks)
    t = n + 1
    return float(depth * (12 * d * d * t + 2 * t * t * d) + d * c * p * p * n)


__all__ = ["MaskedAutoencoder", "MGPLoss", "masked_mse", "normalised_targets", "patchify", "unpatchify",
           "random_masking", "mae_forward_macs", "vit_forward_macs"]
