"""VL-LTR building blocks (Tian et al., ECCV 2022, arXiv 2111.13579; methods.md §6).

Stage 1, class-wise visual-linguistic pre-training (CVLP). Image i (label y_i) is paired with a random
sentence of its class; Î, T̂ are the L2-normalised image / text embeddings of the (all-gathered)
batch, s = exp(logit_scale) (learnable, CLIP init, clamped at 100 as in CLIP):

    S = s · Î T̂ᵀ,   M_ij = 1[y_i = y_j] / Σ_k 1[y_i = y_k],   M̃ = (1 − ε) M + ε / B   (ε = 0.1)
    L_cls = ½ [CE_soft(S, M̃) + CE_soft(Sᵀ, M̃)],        CE_soft(Z, P) = −(1/B) Σ_i Σ_j P_ij log softmax(Z_i)_j
    L_kd  = ½ [CE_soft(S, softmax(S⁰)) + CE_soft(Sᵀ, softmax(S⁰ᵀ))]   (S⁰ from the frozen initial CLIP)
    L     = (1 − β) L_cls + β L_kd,  β = 0.5.

(M is symmetric, so the text→image direction uses the same target.) The smoothing spreads ε
uniformly over the B columns, timm's soft-target smoothing.

Anchor sentence selection (AnSS). For sentence t of class c, over the images v_j of the AnSS split:

    L_lin(t) = −(1/|I_c|) Σ_{j ∈ I_c} log [exp(s cos(t, v_j)) / Σ_k exp(s cos(t, v_k))]
             = logsumexp_k(s t̂·v̂_k) − s t̂·mean_{j ∈ I_c} v̂_j

and the M (64) sentences with the lowest L_lin are the anchors of class c (padded and masked when fewer).

Stage 2, language-guided recognition (LGR) head on the image feature f (the projected CLIP embedding),
as ChangyaoTian/VL-LTR ``models/finetune.py`` (``Attention``, ``Block(op_type='two_branch')``, ``LGR``):

    a_{c,m} = softmax_m( (W_q LN_q(f)) · (W_k LN_k(t_{c,m})) / √d )   (W_q, W_k bias-free, identity-initialised, masked m)
    v_c = Σ_m a_{c,m} t_{c,m},   z^l_c = s_l · cos(f, v_c),   z^v = MLP(f)  (d → 4d → K, ReLU)
    L = CE(z^v, y) + CE(z^l, y);   p = α softmax(z^v) + (1 − α) softmax(z^l)   (α = 0.2; 0.7 on iNat).

t_{c,m} are the **raw** (un-normalised) CVLP text embeddings of the anchors (the original's
``txt_embed.npy``: ``encode_text`` outputs), used as keys (through LN_k) and as the attention values;
s_l = exp(logit_scale) of the CVLP checkpoint, frozen (``use_norm=True`` loads ``logit_scale`` with the
visual weights; 100 for an unchanged OpenAI CLIP).

cos(f, v_c) is computed without materialising v_c ([B, C, d]): with P_{bcm} = f̂_b · t_{c,m} and the
anchor Gram matrices G_c = T_c T_cᵀ, f̂·v_c = Σ_m a_{bcm} P_{bcm} and |v_c|² = a_bcᵀ G_c a_bc.

The CVLP losses: :mod:`ltr_core.models.vlltr_losses` (still importable from here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .vlltr_losses import (classwise_contrastive_loss, classwise_targets, cvlp_loss,  # noqa: F401 (re-exported)
                           distillation_loss, gather_with_grad, soft_cross_entropy)

MAX_LOGIT_SCALE = 100.0


# ----------------------------------------------------------------------------------------------
# stage 1 model


def clamped_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """s = exp(logit_scale), at most 100 (CLIP's clamp)."""
    return logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


class CVLP(nn.Module):
    """Stage-1 model: the trainable CLIP (``self.clip``, the only saved state) + a sentence bank.

    ``tokens`` [S, L] (all sentences of all classes, tokenised) and ``sentence_labels`` [S] are
    non-persistent buffers; ``teacher`` (the frozen initial CLIP, not a submodule, never saved) and
    its normalised text embeddings of every sentence (``teacher_text``, precomputed once since the
    teacher is frozen) give the distillation targets.
    ``forward(x)`` returns the normalised image embeddings of the student (and of the teacher);
    :meth:`loss` takes them and ``(labels, sentence index)`` pairs from :meth:`pair_sentences`.
    With ``eval_mode`` the towers stay in eval mode while training (VL-LTR: ``train_mode=False``;
    freezes BatchNorm statistics of ResNet towers, no-op for ViTs, which have no dropout in CLIP).
    """

    def __init__(self, clip_model: nn.Module, tokens: torch.Tensor, sentence_labels: torch.Tensor,
                 num_classes: int, *, teacher: nn.Module | None = None, teacher_text: torch.Tensor | None = None,
                 beta: float = 0.5, smoothing: float = 0.1, eval_mode: bool = True):
        super().__init__()
        self.clip = clip_model
        self.register_buffer("tokens", tokens.long(), persistent=False)
        self.register_buffer("sentence_labels", sentence_labels.long(), persistent=False)
        counts = torch.bincount(sentence_labels.long(), minlength=num_classes)
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"CVLP: classes {missing[:10]} have no sentence; every class needs text")
        order = torch.argsort(sentence_labels.long(), stable=True)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("starts", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self._teacher = [teacher] if teacher is not None else []  # not a submodule: frozen, not checkpointed
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()
        self.register_buffer("teacher_text", teacher_text if teacher_text is not None else torch.empty(0),
                             persistent=False)
        self.beta, self.smoothing, self.eval_mode = float(beta), float(smoothing), bool(eval_mode)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.eval_mode:
            self.clip.eval()
        return self

    def pair_sentences(self, labels: torch.Tensor) -> torch.Tensor:
        """One random sentence index of each image's class: [B] into the bank (global torch RNG,
        reseeded by the engine every epoch)."""
        counts = self.counts[labels]
        u = torch.rand(labels.shape, device=labels.device)
        offset = torch.minimum((u * counts).long(), counts - 1)
        return self.order[self.starts[labels] + offset]

    def batch_transform(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """engine hook: (images, labels) -> (images, [labels, sentence index] [B, 2])."""
        return x, torch.stack([y, self.pair_sentences(y)], 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"image": F.normalize(self.clip.encode_image(x).float(), dim=-1)}
        if self.teacher is not None and self.beta > 0:
            with torch.no_grad():
                out["teacher_image"] = F.normalize(self.teacher.encode_image(x).float(), dim=-1)
        return out

    def encode_sentences(self, index: torch.Tensor) -> torch.Tensor:
        """Normalised student text embeddings of bank sentences ``index``."""
        return F.normalize(self.clip.encode_text(self.tokens[index]).float(), dim=-1)

    def loss(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """(1 − β) L_cls + β L_kd over the all-gathered batch (engine criterion)."""
        labels, index = target[:, 0], target[:, 1]
        text = self.encode_sentences(index)
        image = gather_with_grad(out["image"])
        text, labels_all = gather_with_grad(text), gather_with_grad(labels)
        t_img = t_txt = t_scale = None
        if "teacher_image" in out:
            t_img = gather_with_grad(out["teacher_image"])
            t_txt = gather_with_grad(self.teacher_text[index])
            t_scale = clamped_scale(self.teacher.logit_scale).detach()
        terms = cvlp_loss(image, text, labels_all, clamped_scale(self.clip.logit_scale), t_img, t_txt, t_scale,
                          beta=self.beta, smoothing=self.smoothing)
        return terms["loss"]


# ----------------------------------------------------------------------------------------------
# anchor sentence selection


@torch.no_grad()
def anss_losses(text: torch.Tensor, text_labels: torch.Tensor, image: torch.Tensor, image_labels: torch.Tensor,
                scale: float, num_classes: int, chunk: int = 0) -> torch.Tensor:
    """L_lin of every sentence [S] (module doc); ``text``/``image`` L2-normalised, chunked over sentences
    (default: chunks of ~2^28 similarity entries)."""
    text, image = text.float(), image.float()
    chunk = chunk or max(1, (1 << 28) // max(image.shape[0], 1))
    counts = torch.bincount(image_labels, minlength=num_classes)
    lacking = torch.nonzero(counts[torch.unique(text_labels)] == 0)
    if len(lacking):
        raise ValueError(f"AnSS: classes {torch.unique(text_labels)[lacking.flatten()][:10].tolist()} have no image "
                         f"in the AnSS split; use a split with images of every class (vlltr_anss_split)")
    means = torch.zeros(num_classes, image.shape[1], device=image.device).index_add_(0, image_labels, image)
    means /= counts.clamp(min=1)[:, None].float()
    out = []
    for i in range(0, text.shape[0], chunk):
        t, c = text[i:i + chunk], text_labels[i:i + chunk]
        lse = torch.logsumexp(scale * t @ image.t(), dim=1)
        out.append(lse - scale * (t * means[c]).sum(1))
    return torch.cat(out) if out else torch.empty(0, device=text.device)


def select_anchors(losses: torch.Tensor, text_labels: torch.Tensor, num_classes: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the indices of its ``k`` lowest-loss sentences, ascending: ([C, k] long, -1 = pad; [C, k] bool mask)."""
    losses, text_labels = losses.cpu().double(), text_labels.cpu().long()
    by_loss = torch.argsort(losses, stable=True)
    order = by_loss[torch.argsort(text_labels[by_loss], stable=True)]  # grouped by class, ascending L_lin
    counts = torch.bincount(text_labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    labels_sorted = text_labels[order]
    rank = torch.arange(order.numel()) - starts[labels_sorted]
    keep = rank < k
    index = torch.full((num_classes, k), -1, dtype=torch.long)
    index[labels_sorted[keep], rank[keep]] = order[keep]
    return index, index >= 0


def gather_anchors(text: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Anchor embeddings [C, k, d] (zeros at padded slots)."""
    out = text[index.clamp(min=0)]
    return out * (index >= 0)[..., None].to(out.dtype)


# ----------------------------------------------------------------------------------------------
# stage 2: language-guided recognition


class LGRHead(nn.Module):
    """Linguistic branch (attention over fixed anchors) + visual MLP branch; see the module doc.

    ``anchors`` [C, M, d]: the raw CVLP text embeddings of the anchor sentences (zeros at padded slots);
    ``scale``: s_l = exp(logit_scale) of the CVLP model. ``forward(f)`` returns the branch logits stacked,
    [B, 2, K] (visual, linguistic). ``detach_text_norm`` detaches |v_c| (VL-LTR's iNat variant with a
    trainable encoder).
    """

    def __init__(self, anchors: torch.Tensor, mask: torch.Tensor, *, scale: float = 100.0,
                 detach_text_norm: bool = False, hidden_mult: int = 4):
        super().__init__()
        num_classes, _, d = anchors.shape
        self.register_buffer("anchors", anchors.float())
        self.register_buffer("anchor_mask", mask.bool())
        self.register_buffer("gram", torch.einsum("cmd,cnd->cmn", self.anchors, self.anchors), persistent=False)
        self.ln_q, self.ln_k = nn.LayerNorm(d), nn.LayerNorm(d)
        self.w_q, self.w_k = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)  # qkv_bias=False
        for lin in (self.w_q, self.w_k):
            nn.init.eye_(lin.weight)
        self.visual = nn.Sequential(nn.Linear(d, hidden_mult * d), nn.ReLU(inplace=True),
                                    nn.Linear(hidden_mult * d, num_classes))
        self.scale, self.detach_text_norm, self.dim = float(scale), bool(detach_text_norm), d

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """a [B, C, M]: softmax over each class's (unmasked) anchors."""
        q = self.w_q(self.ln_q(f.float()))
        k = self.w_k(self.ln_k(self.anchors))
        scores = torch.einsum("bd,cmd->bcm", q, k) / math.sqrt(self.dim)
        return scores.masked_fill(~self.anchor_mask, float("-inf")).softmax(-1)

    def linguistic_logits(self, f: torch.Tensor) -> torch.Tensor:
        """z^l = s · cos(f, v_c), v_c = Σ_m a_{c,m} t_{c,m}, without building v ([B, C, d])."""
        a = self.attention(f)
        f_hat = F.normalize(f.float(), dim=-1)
        dots = torch.einsum("bd,cmd->bcm", f_hat, self.anchors)
        num = (a * dots).sum(-1)
        norm2 = torch.einsum("bcm,cmn,bcn->bc", a, self.gram, a)
        norm = norm2.clamp(min=1e-12).sqrt()
        if self.detach_text_norm:
            norm = norm.detach()
        return self.scale * num / norm

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.visual(f.float()), self.linguistic_logits(f)], 1)


def mix_probabilities(branch_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """p = α softmax(z^v) + (1 − α) softmax(z^l) from [B, 2, K] branch logits."""
    return alpha * branch_logits[:, 0].softmax(-1) + (1.0 - alpha) * branch_logits[:, 1].softmax(-1)


class LGRModel(nn.Module):
    """encoder (CLIP image tower, or None on cached features) → :class:`LGRHead`.

    Training: branch logits [B, 2, K]. Eval: log p of the α-mixture (so softmax gives p back and the
    evaluation's argmax / ECE see the mixture). ``branch_logits(x)`` always gives [B, 2, K].
    A frozen encoder (``train_encoder=False``) runs in eval mode under ``no_grad``.
    """

    def __init__(self, head: LGRHead, alpha: float, encoder: nn.Module | None = None, train_encoder: bool = False):
        super().__init__()
        self.encoder, self.head, self.alpha = encoder, head, float(alpha)
        self.train_encoder = bool(train_encoder)
        if encoder is not None and not train_encoder:
            for p in encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None and not self.train_encoder:
            self.encoder.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            return x
        if self.train_encoder:
            return self.encoder(x)
        with torch.no_grad():
            return self.encoder(x)

    def branch_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.branch_logits(x)
        if self.training:
            return z
        return mix_probabilities(z.float(), self.alpha).clamp(min=1e-12).log()


class ImageEncoder(nn.Module):
    """The projected CLIP image embedding f = E_img(x) (unnormalised) of a CLIP image tower (``clip.visual``)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x).float()


class LGRLoss(nn.Module):
    """CE(z^v, t) + CE(z^l, t); t int labels (optionally smoothed by ε) or soft targets [B, K] (mixup/cutmix)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, branch_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        zv, zl = branch_logits[:, 0].float(), branch_logits[:, 1].float()
        if target.dim() == 2:
            return soft_cross_entropy(zv, target) + soft_cross_entropy(zl, target)
        return (F.cross_entropy(zv, target, label_smoothing=self.label_smoothing)
                + F.cross_entropy(zl, target, label_smoothing=self.label_smoothing))


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0,
              smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mixup / cutmix with the flipped batch (timm ``Mixup``, mode "batch", switch prob 0.5).

    λ ~ Beta(a, a); mixup: x = λ x + (1 − λ) x.flip(0); cutmix: a box of area (1 − λ) pasted from
    x.flip(0), λ corrected to the pasted area; targets λ ỹ + (1 − λ) ỹ.flip(0) with ỹ one-hot
    smoothed (off ε/K, on 1 − ε + ε/K). With both alphas 0 only the smoothing applies.
    Draws from the global torch RNG (the engine reseeds it every epoch, so resumed runs match).
    """
    off = smoothing / num_classes
    one_hot = torch.full((y.shape[0], num_classes), off, device=x.device).scatter_(1, y[:, None], 1.0 - smoothing + off)
    if mixup <= 0 and cutmix <= 0:
        return x, one_hot
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()).item() < 0.5)
    a = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(a, a).sample())
    if use_cutmix:
        h, w = x.shape[-2:]
        rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - rh // 2, 0), min(cy + rh // 2, h)
        x0, x1 = max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        x = lam * x + (1.0 - lam) * x.flip(0)
    return x, lam * one_hot + (1.0 - lam) * one_hot.flip(0)
