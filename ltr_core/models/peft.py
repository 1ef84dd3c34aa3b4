"""Parameter-efficient fine-tuning (PEFT) of a frozen open_clip visual tower (PEL/LIFT, arXiv 2309.10019).

One entry point, :func:`apply_peft(clip, method, num_classes=K, **options)`: it freezes the visual
tower, adds the method's tuners **in place** and returns the trainable tensors (the text tower is
left as it is). Methods (:data:`PEFT_METHODS`; methods.md §5.2), with h the residual stream
entering a transformer block and L the number of blocks:

* ``adaptformer`` (PEL/LIFT default; Chen et al., NeurIPS 2022), parallel to every MLP:
  h' = h + MLP(LN2(h)) + s · Up(ReLU(Down(LN_a(h)))), own LayerNorm LN_a, Down d→r
  (Kaiming-normal with a = √5 as PEL/LIFT ``peft_modules.py``: N(0, 1/(3d)); zero bias), Up r→d
  **zero-initialised**, learnable scalar s (init 1): the tower is unchanged at init;
* ``adapter`` (Houlsby et al., ICML 2019), sequential on the MLP output:
  m = MLP(LN2(h)), m' = m + Up(ReLU(Down(LN_a(m)))) (Up zero-initialised, no scale): unchanged at init;
* ``lora`` (Hu et al., ICLR 2022) on the query and value projections:
  q = W_q x + (1/r) B_q A_q x, v likewise; A ~ U(±1/√r) (PEL/LIFT's Kaiming-uniform, a = √5, on A stored
  as [d, r], so fan-in = r), B = 0 (scaling 1/r, no α): unchanged at init;
* ``vpt_shallow`` / ``vpt_deep`` (Jia et al., ECCV 2022): ``vpt_length`` (10) learnable tokens appended
  after the patch tokens at the first block (shallow) or replaced at every block (deep), dropped
  before pooling; init U(±√(6 / (3·p² + d))), p the patch size;
* ``bitfit`` (Ben Zaken et al., ACL 2022): every bias of the blocks (attention in/out projections,
  MLP, LayerNorms);
* ``ssf`` (Lian et al., NeurIPS 2022): y = γ ⊙ x + β after qkv, the attention output projection,
  fc1, fc2, LN1 and LN2, γ ~ N(1, 0.02²), β ~ N(0, 0.02²);
* ``ln_tuning``: weight and bias of the blocks' LayerNorms (BatchNorm affine on ResNet towers);
* ``full``: every parameter of the blocks (not patch embedding, ln_pre, ln_post, projection);
* ``linear_probe``: nothing in the tower (only the classifier trains).

Bottleneck r (adaptformer, adapter; LoRA rank): ``bottleneck`` or by default
r = 2^⌊log2(K / (2L))⌋ (at least 1): ImageNet-LT r = 32 (617,868 AdaptFormer parameters for ViT-B/16),
Places-LT 8, iNat18 256, CIFAR-100-LT 4. ``partial=k`` puts tuners (and, for bitfit / ln_tuning /
full, the trainable tensors) in the last k blocks only.

ResNet towers (ModifiedResNet) support ``full``, ``linear_probe``, ``bitfit`` and ``ln_tuning``;
their "blocks" are the bottlenecks of layer1..layer4.

Tuned ViT blocks are wrapped by :class:`TunedBlock` (``resblocks.<i>.block.*`` holds the original
weights, the tuners sit beside it); with no tuner it computes exactly what open_clip's
``ResidualAttentionBlock`` computes. The tuner modules and TunedBlock: :mod:`ltr_core.models.peft_modules`;
one function per method adds them (:data:`ltr_core.registries.PEFT_REGISTRY`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..registries import PEFT_REGISTRY, factory
from .peft_modules import (DOWN_INITS, LORA_FAN_INS, SSF, SSF_SITES, Bottleneck, LoRA,  # noqa: F401 (re-exported)
                           PeftError, TunedBlock)

if TYPE_CHECKING:
    from .clip import Clip

PEFT_METHODS = tuple(PEFT_REGISTRY)  # the names; each adds its tuners through its function below (ltr_core.registries)
ZERO_INIT_METHODS = ("adaptformer", "adapter", "lora", "bitfit", "ln_tuning", "full", "linear_probe")
RESNET_METHODS = ("full", "linear_probe", "bitfit", "ln_tuning")
WRAPPING_METHODS = ("adaptformer", "adapter", "lora", "vpt_shallow", "vpt_deep", "ssf")
OPTIONS = ("bottleneck", "vpt_length", "partial")


def default_bottleneck(num_classes: int, num_layers: int) -> int:
    """r = 2^⌊log2(K / (2L))⌋, at least 1 (PEL/LIFT: K = 1000, L = 12 -> 32)."""
    if num_classes < 1 or num_layers < 1:
        raise PeftError(f"default_bottleneck needs num_classes >= 1 and num_layers >= 1, got {num_classes}, {num_layers}")
    return max(1, 2 ** math.floor(math.log2(num_classes / (2 * num_layers))))


def count_parameters(params) -> int:
    """Number of scalars in ``params`` (tensors counted once even if listed twice)."""
    seen, total = set(), 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# ----------------------------------------------------------------------------------------------
# applying a method


def _is_vit(visual: nn.Module) -> bool:
    return hasattr(visual, "transformer") and hasattr(visual, "class_embedding")


def tower_blocks(visual: nn.Module) -> list[nn.Module]:
    """The tower's blocks: transformer resblocks (ViT) or the bottlenecks of layer1..layer4 (ResNet)."""
    if _is_vit(visual):
        return list(visual.transformer.resblocks)
    if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):
        return [blk for i in range(1, 5) for blk in getattr(visual, f"layer{i}")]
    raise PeftError(f"unknown visual tower {type(visual).__name__}: expected an open_clip VisionTransformer "
                    f"or ModifiedResNet")


def _selected(n_blocks: int, partial: int) -> list[int]:
    if partial < 0 or partial > n_blocks:
        raise PeftError(f"partial={partial} must be between 0 (all blocks) and the {n_blocks} blocks of the tower")
    return list(range(n_blocks - partial if partial else 0, n_blocks))


def _wrap(visual: nn.Module, i: int) -> TunedBlock:
    blocks = visual.transformer.resblocks
    if not isinstance(blocks[i], TunedBlock):
        blocks[i] = TunedBlock(blocks[i])
    return blocks[i]


def _width_patch(visual: nn.Module) -> tuple[int, int]:
    width = int(visual.class_embedding.shape[0])
    patch = visual.conv1.kernel_size
    return width, int(patch[0] * patch[1])


# one function per method (:data:`ltr_core.registries.PEFT_REGISTRY`): (visual, blocks, selected, *, bottleneck,
# vpt_length) -> the indices of the blocks it tuned; the tower is frozen before, the tuners are added in place


def _unfreeze(blocks: list[nn.Module], selected: list[int], keep) -> list[int]:
    """requires_grad on the parameters p (named ``name``, of module ``mod``) of the selected blocks with keep(mod, name)."""
    for i in selected:
        for mod in blocks[i].modules():
            for name, p in mod.named_parameters(recurse=False):
                if keep(mod, name):
                    p.requires_grad_(True)
    return selected


def add_full(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``full``: every parameter of the selected blocks."""
    return _unfreeze(blocks, selected, lambda mod, name: True)


def add_bitfit(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``bitfit``: every bias of the selected blocks."""
    return _unfreeze(blocks, selected, lambda mod, name: name.endswith("bias"))


def add_ln_tuning(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``ln_tuning``: the LayerNorms (BatchNorm affine on ResNet towers) of the selected blocks."""
    return _unfreeze(blocks, selected, lambda mod, name: isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d)))


def add_linear_probe(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``linear_probe``: nothing in the tower (only the classifier trains)."""
    return selected


def _tensor_kw(visual: nn.Module) -> dict:
    ref = visual.class_embedding
    return {"dtype": ref.dtype, "device": ref.device}


def _add_bottlenecks(visual, selected, attr: str, r: int, learnable_scale: bool) -> list[int]:
    width, _ = _width_patch(visual)
    kw = _tensor_kw(visual)
    for i in selected:
        setattr(_wrap(visual, i), attr, Bottleneck(width, r, learnable_scale=learnable_scale, **kw))
    return selected


def add_adaptformer(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``adaptformer``: a scaled bottleneck parallel to every selected MLP."""
    return _add_bottlenecks(visual, selected, "adaptformer", bottleneck, learnable_scale=True)


def add_adapter(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``adapter``: a bottleneck sequential on every selected MLP output."""
    return _add_bottlenecks(visual, selected, "adapter", bottleneck, learnable_scale=False)


def add_lora(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``lora``: rank-r updates of the query and value projections of the selected blocks."""
    width, _ = _width_patch(visual)
    kw = _tensor_kw(visual)
    for i in selected:
        tb = _wrap(visual, i)
        tb.lora_q, tb.lora_v = LoRA(width, width, bottleneck, **kw), LoRA(width, width, bottleneck, **kw)
    return selected


def add_ssf(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``ssf``: scale and shift after qkv, the attention output, fc1, fc2, LN1 and LN2 of the selected blocks."""
    width, _ = _width_patch(visual)
    kw = _tensor_kw(visual)
    for i in selected:
        tb = _wrap(visual, i)
        dims = {"qkv": 3 * width, "attn_out": width, "fc1": tb.block.mlp.c_fc.out_features,
                "fc2": width, "ln_1": width, "ln_2": width}
        tb.ssf = nn.ModuleDict({s: SSF(dims[s], **kw) for s in SSF_SITES})
    return selected


def _add_prompts(visual, blocks, selected, vpt_length: int) -> list[int]:
    """VPT: prompts appended at the first selected block, replaced at the later ones, dropped after the last."""
    width, patch_area = _width_patch(visual)
    kw = _tensor_kw(visual)
    bound = math.sqrt(6.0 / (3 * patch_area + width))
    for pos, i in enumerate(selected):
        tb = _wrap(visual, i)
        tb.prompt = nn.Parameter(torch.empty(vpt_length, width, **kw).uniform_(-bound, bound))
        tb.prompt_mode = "append" if pos == 0 else "replace"
    _wrap(visual, len(blocks) - 1).strip_prompts = vpt_length
    return selected


def add_vpt_shallow(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``vpt_shallow``: prompt tokens at the first selected block only."""
    return _add_prompts(visual, blocks, selected[:1], vpt_length)


def add_vpt_deep(visual, blocks, selected, *, bottleneck: int, vpt_length: int) -> list[int]:
    """``vpt_deep``: new prompt tokens at every selected block."""
    return _add_prompts(visual, blocks, selected, vpt_length)


def apply_peft(clip: Clip, method: str, *, num_classes: int, **options) -> list[nn.Parameter]:
    """Freeze ``clip``'s visual tower, add the tuners of ``method`` in place, return the trainable tensors.

    ``options``: ``bottleneck`` (int, 0 = 2^⌊log2(K/(2L))⌋; adaptformer/adapter width, LoRA rank),
    ``vpt_length`` (int, 10), ``partial`` (int, 0 = all blocks, k = the last k blocks).
    The returned list (in ``named_parameters`` order of the tower) holds exactly the tower tensors
    with ``requires_grad=True``; the classifier is not included. What was applied is recorded in
    ``clip.visual.ltr_peft`` (see :func:`peft_info`). Applying twice raises.
    """
    if method not in PEFT_METHODS:
        raise PeftError(f"unknown PEFT method {method!r}; valid: {', '.join(PEFT_METHODS)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise PeftError(f"unknown PEFT options {unknown}; valid: {', '.join(OPTIONS)}")
    visual = clip.model.visual
    if getattr(visual, "ltr_peft", None):
        raise PeftError(f"PEFT ({visual.ltr_peft['method']}) was already applied to this tower; load a fresh CLIP")
    vit = _is_vit(visual)
    if not vit and method not in RESNET_METHODS:
        raise PeftError(f"PEFT method {method!r} needs a ViT tower; a ResNet tower supports {RESNET_METHODS}")
    blocks = tower_blocks(visual)
    selected = _selected(len(blocks), int(options.get("partial", 0) or 0))
    r = int(options.get("bottleneck", 0) or 0) or default_bottleneck(num_classes, len(blocks))
    vpt_length = int(options.get("vpt_length", 10))
    if vpt_length < 1 and method.startswith("vpt"):
        raise PeftError(f"vpt_length must be >= 1, got {vpt_length}")
    for p in visual.parameters():
        p.requires_grad_(False)
    selected = factory(PEFT_REGISTRY, method)(visual, blocks, selected, bottleneck=r, vpt_length=vpt_length)
    visual.ltr_peft = {"method": method, "blocks": selected,
                       "bottleneck": r if method in ("adaptformer", "adapter", "lora") else None,
                       "vpt_length": vpt_length if method.startswith("vpt") else None}
    params = [p for p in visual.parameters() if p.requires_grad]
    visual.ltr_peft["trainable_params"] = count_parameters(params)
    return params


def peft_info(clip: Clip) -> dict:
    """What :func:`apply_peft` did to this tower: method, blocks, bottleneck, vpt_length, trainable_params."""
    info = getattr(clip.model.visual, "ltr_peft", None)
    return dict(info) if info else {"method": None, "trainable_params": 0}


def trainable_names(module: nn.Module) -> list[str]:
    """Names of the parameters of ``module`` with ``requires_grad=True``."""
    return [n for n, p in module.named_parameters() if p.requires_grad]
