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
``ResidualAttentionBlock`` computes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .clip import Clip

PEFT_METHODS = ("adaptformer", "adapter", "lora", "vpt_shallow", "vpt_deep", "bitfit", "ssf", "ln_tuning",
                "full", "linear_probe")
ZERO_INIT_METHODS = ("adaptformer", "adapter", "lora", "bitfit", "ln_tuning", "full", "linear_probe")
RESNET_METHODS = ("full", "linear_probe", "bitfit", "ln_tuning")
WRAPPING_METHODS = ("adaptformer", "adapter", "lora", "vpt_shallow", "vpt_deep", "ssf")
OPTIONS = ("bottleneck", "vpt_length", "partial")


class PeftError(ValueError):
    """An unknown PEFT method or option, or a tower the method cannot be applied to."""


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
# tuner modules


DOWN_INITS = ("normal", "uniform")


class Bottleneck(nn.Module):
    """y = s · Up(ReLU(Down(LN(x)))): AdaptFormer (learnable scalar s, init 1) or Adapter (s = 1 fixed).

    Down d→r with zero bias, Up r→d zero-initialised, so y = 0 at init. Down weight, fan-in d, gain
    √(2/(1+a²)) = 1/√3 for a = √5:
    ``normal`` (PEL/LIFT ``kaiming_normal_(a=√5)``, default): N(0, σ²), σ = 1/√(3d);
    ``uniform`` (AdaptFormer's own code, Chen et al. NeurIPS 2022, ``kaiming_uniform_(a=√5)``): U(±1/√d),
    the same variance 1/(3d).
    """

    def __init__(self, dim: int, r: int, *, learnable_scale: bool, down_init: str = "normal", dtype=None,
                 device=None):
        super().__init__()
        if down_init not in DOWN_INITS:
            raise PeftError(f"down_init must be one of {DOWN_INITS}, got {down_init!r}")
        kw = {"dtype": dtype, "device": device}
        self.ln = nn.LayerNorm(dim, **kw)
        self.down = nn.Linear(dim, r, **kw)
        self.up = nn.Linear(r, dim, **kw)
        self.scale = nn.Parameter(torch.ones(1, **kw)) if learnable_scale else None
        init = nn.init.kaiming_normal_ if down_init == "normal" else nn.init.kaiming_uniform_
        init(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(F.relu(self.down(self.ln(x))))
        return y * self.scale if self.scale is not None else y


LORA_FAN_INS = ("rank", "input")


class LoRA(nn.Module):
    """Δ(x) = (1/r) · B A x with A [r, d_in], B [d_out, r] = 0 (so Δ = 0 at init).

    A ~ U(±1/√fan_in) (Kaiming-uniform, a = √5): ``fan_in="rank"`` (default) fan-in r, bound 1/√r, as
    PEL/LIFT (``lora_A`` stored as [d_in, r], so ``kaiming_uniform_`` takes its fan-in from r);
    ``"input"``: fan-in d_in, bound 1/√d_in (loralib / HF peft, A stored [r, d_in]).
    """

    def __init__(self, d_in: int, d_out: int, r: int, *, fan_in: str = "rank", dtype=None, device=None):
        super().__init__()
        if fan_in not in LORA_FAN_INS:
            raise PeftError(f"LoRA fan_in must be one of {LORA_FAN_INS}, got {fan_in!r}")
        self.A = nn.Parameter(torch.empty(r, d_in, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(d_out, r, dtype=dtype, device=device))
        bound = 1.0 / math.sqrt(r if fan_in == "rank" else d_in)
        nn.init.uniform_(self.A, -bound, bound)
        self.scaling = 1.0 / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B) * self.scaling


class SSF(nn.Module):
    """y = γ ⊙ x + β (scale and shift over the last dimension), γ ~ N(1, 0.02²), β ~ N(0, 0.02²)."""

    def __init__(self, dim: int, *, dtype=None, device=None):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim, dtype=dtype, device=device).normal_(1.0, 0.02))
        self.shift = nn.Parameter(torch.empty(dim, dtype=dtype, device=device).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


SSF_SITES = ("qkv", "attn_out", "fc1", "fc2", "ln_1", "ln_2")


class TunedBlock(nn.Module):
    """An open_clip ``ResidualAttentionBlock`` with optional tuners (see the module docstring).

    forward (batch-first tokens x [B, N, d]):
        x ← [x, P] (VPT: append the prompts P, or replace the previous block's prompts)
        a = Attn(SSF_ln1(LN1(x)))   with LoRA on q and v, SSF after qkv and the output projection
        x1 = x + a
        m = MLP(SSF_ln2(LN2(x1)))   with SSF after fc1 and fc2;  Adapter: m ← m + Adapter(m)
        out = x1 + m (+ AdaptFormer(x1));  the last block drops the prompt tokens
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        _check_block(block)
        self.block = block
        self.adaptformer: Bottleneck | None = None
        self.adapter: Bottleneck | None = None
        self.lora_q: LoRA | None = None
        self.lora_v: LoRA | None = None
        self.ssf: nn.ModuleDict | None = None
        self.prompt: nn.Parameter | None = None
        self.prompt_mode = ""  # "append" (first prompted block) | "replace" (VPT deep, later blocks)
        self.strip_prompts = 0  # tokens dropped at the end of this block (the last block under VPT)

    def get_weight_dtype(self) -> torch.dtype:
        return self.block.mlp.c_fc.weight.dtype

    def _ssf(self, site: str, x: torch.Tensor) -> torch.Tensor:
        return self.ssf[site](x) if self.ssf is not None else x

    def _attention(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        attn = self.block.attn
        b, n, d = x.shape
        heads = attn.num_heads
        qkv = self._ssf("qkv", F.linear(x, attn.in_proj_weight, attn.in_proj_bias))
        q, k, v = qkv.chunk(3, dim=-1)
        if self.lora_q is not None:
            q = q + self.lora_q(x)
            v = v + self.lora_v(x)
        q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype) if attn_mask.is_floating_point() else ~attn_mask
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=attn.dropout if self.training else 0.0)
        o = o.transpose(1, 2).reshape(b, n, d)
        return self._ssf("attn_out", attn.out_proj(o))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.block.mlp
        if self.ssf is None:
            return mlp(x)
        return self._ssf("fc2", mlp.c_proj(mlp.gelu(self._ssf("fc1", mlp.c_fc(x)))))

    def _with_prompts(self, x: torch.Tensor) -> torch.Tensor:
        if self.prompt is None:
            return x
        p = self.prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        if self.prompt_mode == "replace":
            x = x[:, :-p.shape[1]]
        return torch.cat([x, p], dim=1)

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if k_x is not None or v_x is not None:
            raise PeftError("TunedBlock supports self-attention only (the visual tower); got k_x / v_x")
        b = self.block
        x = self._with_prompts(q_x)
        x = x + b.ls_1(self._attention(self._ssf("ln_1", b.ln_1(x)), attn_mask))
        m = self._mlp(self._ssf("ln_2", b.ln_2(x)))
        if self.adapter is not None:
            m = m + self.adapter(m)
        out = x + b.ls_2(m)
        if self.adaptformer is not None:
            out = out + self.adaptformer(x)
        if self.strip_prompts:
            out = out[:, :-self.strip_prompts]
        return out


def _check_block(block: nn.Module) -> None:
    attn = getattr(block, "attn", None)
    mlp = getattr(block, "mlp", None)
    ok = (isinstance(attn, nn.MultiheadAttention) and attn.batch_first and attn._qkv_same_embed_dim
          and mlp is not None and all(hasattr(mlp, n) for n in ("c_fc", "gelu", "c_proj"))
          and hasattr(block, "ln_1") and hasattr(block, "ln_2") and not hasattr(block, "ln_1_kv"))
    if not ok:
        raise PeftError(f"cannot tune a {type(block).__name__}: PEFT modules support open_clip's standard "
                        f"ResidualAttentionBlock (batch-first nn.MultiheadAttention + c_fc/gelu/c_proj MLP); "
                        f"use method 'full', 'bitfit', 'ln_tuning' or 'linear_probe' for this tower")


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

    if method in ("full", "bitfit", "ln_tuning"):
        norm_types = (nn.LayerNorm, nn.BatchNorm2d)
        for i in selected:
            for mod in blocks[i].modules():
                for name, p in mod.named_parameters(recurse=False):
                    if method == "full" or (method == "bitfit" and name.endswith("bias")) or (
                            method == "ln_tuning" and isinstance(mod, norm_types)):
                        p.requires_grad_(True)
    elif method in WRAPPING_METHODS:
        width, patch_area = _width_patch(visual)
        ref = visual.class_embedding
        kw = {"dtype": ref.dtype, "device": ref.device}
        if method == "vpt_shallow":
            selected = selected[:1]
        for pos, i in enumerate(selected):
            tb = _wrap(visual, i)
            if method == "adaptformer":
                tb.adaptformer = Bottleneck(width, r, learnable_scale=True, **kw)
            elif method == "adapter":
                tb.adapter = Bottleneck(width, r, learnable_scale=False, **kw)
            elif method == "lora":
                tb.lora_q, tb.lora_v = LoRA(width, width, r, **kw), LoRA(width, width, r, **kw)
            elif method == "ssf":
                dims = {"qkv": 3 * width, "attn_out": width, "fc1": tb.block.mlp.c_fc.out_features,
                        "fc2": width, "ln_1": width, "ln_2": width}
                tb.ssf = nn.ModuleDict({s: SSF(dims[s], **kw) for s in SSF_SITES})
            else:  # vpt
                bound = math.sqrt(6.0 / (3 * patch_area + width))
                tb.prompt = nn.Parameter(torch.empty(vpt_length, width, **kw).uniform_(-bound, bound))
                tb.prompt_mode = "append" if pos == 0 else "replace"
        if method.startswith("vpt"):
            _wrap(visual, len(blocks) - 1).strip_prompts = vpt_length
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
