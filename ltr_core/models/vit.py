"""timm Vision Transformers for LiVT: construction, fixed 2-D sin-cos position embeddings, layer-wise lr
decay groups and loading an MGP encoder into a fine-tuning ViT.

* :func:`build_vit` — any timm ``VisionTransformer`` (``vit_base_patch16_224`` ...) at any input size and
  patch size, optionally with a custom width / depth / heads (tiny test and CIFAR models).
* :func:`sincos_pos_embed` — the fixed 2-D sin-cos embedding of MAE (He et al., CVPR 2022): half of
  the D channels encode the row, half the column; for a coordinate u and d = D/4 frequencies
  ω_k = 1 / 10000^(k/d), emb(u) = [sin(u ω_0..d-1), cos(u ω_0..d-1)]; the cls position is all zeros.
* :func:`layer_decay_groups` — BEiT/MAE layer-wise lr decay (Bao et al., ICLR 2022): with L blocks,
  patch-embed / cls / pos-embed are layer 0, block k is layer k+1, everything after the blocks
  (fc_norm, norm, head) layer L+1; layer l gets lr · decay^(L+1−l); no weight decay on 1-D tensors
  (biases, norms), ``pos_embed`` and ``cls_token``.
* :func:`load_encoder` — strict key/shape check, bicubic resampling of the patch-grid position
  embedding when the resolution changes (iNat MGP 128 px → BFT 224 px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class ViTError(ValueError):
    """A model that is not a usable ViT, or an encoder checkpoint that does not fit it."""


def build_vit(name: str, *, image_size: int, patch_size: int = 0, width: int = 0, depth: int = 0, heads: int = 0,
              drop_path: float = 0.0, global_pool: str = "token", in_chans: int = 3) -> nn.Module:
    """A timm VisionTransformer without classifier (``num_classes=0``).

    ``patch_size``/``width``/``depth``/``heads`` of 0 keep the named model's values. ``global_pool``
    ``avg`` pools the patch tokens (cls excluded) and adds timm's ``fc_norm`` LayerNorm (the LiVT/MAE
    fine-tuning head); ``token`` uses the cls token after the final ``norm`` (the MAE encoder).
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    base = name.split(".")[0]
    if not timm.is_model(base):
        raise ViTError(f"unknown timm model {name!r}; LiVT needs a ViT, e.g. vit_base_patch16_224 or vit_tiny_patch16_224")
    kwargs = {"img_size": image_size, "num_classes": 0, "global_pool": global_pool, "drop_path_rate": drop_path,
              "in_chans": in_chans}
    for key, value in (("patch_size", patch_size), ("embed_dim", width), ("depth", depth), ("num_heads", heads)):
        if value:
            kwargs[key] = value
    try:
        model = timm.create_model(base, pretrained=False, **kwargs)
    except TypeError as err:
        raise ViTError(f"{name!r} does not take ViT arguments ({err}); LiVT needs a timm VisionTransformer") from None
    if not isinstance(model, VisionTransformer):
        raise ViTError(f"{name!r} is a {type(model).__name__}, not a timm VisionTransformer; LiVT needs a ViT")
    if not model.has_class_token or model.num_prefix_tokens != 1 or model.no_embed_class:
        raise ViTError(f"{name!r}: LiVT needs a ViT with one cls token embedded with the patches "
                       f"(no register tokens, no_embed_class=False)")
    grid = model.patch_embed.grid_size
    if image_size % model.patch_embed.patch_size[0]:
        raise ViTError(f"image_size {image_size} is not a multiple of the patch size {model.patch_embed.patch_size[0]}")
    if grid[0] * grid[1] < 1:
        raise ViTError(f"image_size {image_size} gives no patches")
    return model


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim]: sin(u ω_k) for k < dim/2, then cos(u ω_k); ω_k = 1/10000^(2k/dim)."""
    if dim % 2:
        raise ViTError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [1, (1 +) H·W, dim], row-major over the H×W patch grid.

    The first dim/2 channels encode the column (x) index, the last dim/2 the row (y) index (MAE's
    layout); the cls token (first row) is zeros.
    """
    if dim % 4:
        raise ViTError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    h, w = grid
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, xs), sincos_1d(dim // 2, ys)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def layer_id(name: str, num_blocks: int) -> int:
    """Layer index of a ViT parameter name (a ``backbone.`` prefix is ignored): 0 for cls_token /
    pos_embed / patch_embed, k+1 for ``blocks.k``, num_blocks+1 for anything else (norms, head)."""
    parts = name.split(".")
    if parts[0] == "backbone":
        parts = parts[1:]
    if parts[0] in ("cls_token", "pos_embed", "patch_embed", "reg_token"):
        return 0
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    return num_blocks + 1


NO_WEIGHT_DECAY = ("pos_embed", "cls_token")


def layer_decay_groups(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: float,
                       num_blocks: int) -> list[dict]:
    """AdamW parameter groups with layer-wise lr decay (see the module doc).

    One group per (layer, decay?) pair: {"params", "lr" = lr·decay^(L+1−l), "weight_decay",
    "lr_scale", "layer"}; frozen parameters are left out.
    """
    if not 0 < layer_decay <= 1:
        raise ViTError(f"layer decay must be in (0, 1], got {layer_decay}")
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_id(name, num_blocks)
        no_wd = p.ndim == 1 or name.split(".")[-1] in NO_WEIGHT_DECAY
        scale = layer_decay ** (num_blocks + 1 - layer)
        g = groups.setdefault((layer, no_wd), {"params": [], "lr": lr * scale, "lr_scale": scale, "layer": layer,
                                               "weight_decay": 0.0 if no_wd else weight_decay})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """[1, 1+h·w, D] -> [1, 1+H·W, D]: bicubic resampling of the patch grid, cls position kept."""
    from timm.layers import resample_abs_pos_embed

    n = pos_embed.shape[1] - 1
    old = int(round(n ** 0.5))
    if old * old != n:
        raise ViTError(f"cannot resample a position embedding of {n} patches (not a square grid)")
    if (old, old) == tuple(new_grid):
        return pos_embed
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=[old, old], num_prefix_tokens=1,
                                  interpolation="bicubic", antialias=False)


# keys a fine-tuning ViT may lack or have that an MGP encoder has not (and vice versa)
ENCODER_ONLY = ("norm.",)  # the MAE encoder's final LayerNorm (unused by global-average-pool fine-tuning)
FINETUNE_ONLY = ("fc_norm.", "head.")  # created fresh for fine-tuning


def load_encoder(vit: nn.Module, path: str | Path) -> dict:
    """Load an MGP encoder (safetensors, the keys of :func:`build_vit`) into ``vit``.

    Strict: every key of the file must exist in ``vit`` and every key of ``vit`` must be in the
    file, except the documented differences between a pre-training and a fine-tuning ViT
    (the encoder's ``norm.*`` when ``vit`` pools with fc_norm; ``fc_norm.*``/``head.*`` which
    fine-tuning creates fresh). Shapes must match, except ``pos_embed``, which is resampled
    bicubically when the patch grid differs. Returns {"loaded", "skipped", "fresh", "pos_embed_resampled"}.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ViTError(f"MGP encoder not found: {path}; run MGP first (livt_mgp_epochs > 0) or point init_run "
                       f"at a LiVT run (or an encoder .safetensors file)")
    state = load_file(str(path))
    own = vit.state_dict()
    skipped = [k for k in state if k not in own and k.startswith(ENCODER_ONLY)]
    unexpected = [k for k in state if k not in own and k not in skipped]
    fresh = [k for k in own if k not in state and k.startswith(FINETUNE_ONLY)]
    missing = [k for k in own if k not in state and k not in fresh]
    if unexpected or missing:
        raise ViTError(f"{path} does not fit the model: missing {missing[:6]}, unexpected {unexpected[:6]} "
                       f"(same timm model, width, depth and patch size as the MGP run?)")
    resampled = False
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], tuple(vit.patch_embed.grid_size))
        resampled = True
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in state if k in own and state[k].shape != own[k].shape]
    if bad:
        raise ViTError(f"{path} does not fit the model: " + "; ".join(bad[:5]))
    vit.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"loaded": len(state) - len(skipped), "skipped": skipped, "fresh": fresh, "pos_embed_resampled": resampled}
