"""The tuner modules of :mod:`ltr_core.models.peft`: AdaptFormer / Adapter bottlenecks, LoRA, SSF, and
:class:`TunedBlock`, the open_clip ``ResidualAttentionBlock`` they sit in (formulas: the peft module docstring)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PeftError(ValueError):
    """An unknown PEFT method or option, or a tower the method cannot be applied to."""


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
