"""The stage-1 (CVLP) losses of VL-LTR (:mod:`ltr_core.models.vlltr`): the class-wise contrastive loss on
smoothed same-class targets and the distillation from the frozen initial CLIP (formulas: that module's docstring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` over the process group, keeping the gradient of this rank's slice.

    Identity in a single process (the batch is already global); under DDP every rank gets the
    global batch [world·B, ...] with its own rows still attached to its graph.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE_soft(Z, P) = −(1/B) Σ_i Σ_j P_ij log softmax(Z_i)_j (rows of P sum to 1)."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def classwise_targets(labels: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """M̃ = (1 − ε) M + ε/B with M_ij = 1[y_i = y_j] row-normalised; [B, B] float."""
    same = (labels[:, None] == labels[None, :]).float()
    m = same / same.sum(1, keepdim=True)
    return (1.0 - smoothing) * m + smoothing / labels.numel()


def classwise_contrastive_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float,
                               smoothing: float = 0.1) -> torch.Tensor:
    """L_cls = ½ [CE_soft(S, M̃) + CE_soft(Sᵀ, M̃)], S = scale · image textᵀ (inputs L2-normalised, gathered)."""
    s = scale * image.float() @ text.float().t()
    m = classwise_targets(labels, smoothing)
    return 0.5 * (soft_cross_entropy(s, m) + soft_cross_entropy(s.t(), m.t()))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_kd = ½ [CE_soft(S, softmax(S⁰)) + CE_soft(Sᵀ, softmax(S⁰ᵀ))] for similarity matrices S, S⁰ [B, B]."""
    teacher = teacher.float().detach()
    return 0.5 * (soft_cross_entropy(student, teacher.softmax(-1)) + soft_cross_entropy(student.t(), teacher.t().softmax(-1)))


def cvlp_loss(image, text, labels, scale, teacher_image=None, teacher_text=None, teacher_scale=None, *,
              beta: float = 0.5, smoothing: float = 0.1) -> dict[str, torch.Tensor]:
    """{"loss": (1 − β) L_cls + β L_kd, "cls": L_cls, "kd": L_kd} on gathered, normalised features.

    Without teacher features (or β = 0) the loss is L_cls alone.
    """
    cls = classwise_contrastive_loss(image, text, labels, scale, smoothing)
    if teacher_image is None or beta == 0:
        return {"loss": cls, "cls": cls, "kd": torch.zeros_like(cls)}
    s = scale * image.float() @ text.float().t()
    s0 = teacher_scale * teacher_image.float() @ teacher_text.float().t()
    kd = distillation_loss(s, s0)
    return {"loss": (1.0 - beta) * cls + beta * kd, "cls": cls, "kd": kd}
