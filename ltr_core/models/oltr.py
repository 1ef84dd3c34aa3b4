"""OLTR's modules (Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019),
written from the formulas of methods.md §3.1 (the algorithm as the original code implements it).

* :class:`ModulatedAttention`, on the last feature map x [B, C, H, W] (any H x W, fixed at build time):
  SA(x) = W_z(softmax_row(theta(x)^T phi(x)) g(x)) (embedded-Gaussian non-local block: theta, phi, g
  1x1 convs C -> C/2, Kaiming-normal; W_z a bias-free 1x1 conv C/2 -> C, **zero-initialised**),
  MA(x) = softmax over the H*W positions of Linear(C*H*W -> H*W)(flatten x), broadcast over channels;
  x_att = x + MA(x) ⊙ SA(x), the identity when stage 2 starts.
* :class:`MetaEmbedding` (dynamic meta-embedding + cosine-norm classifier), on the direct feature f [B, d]
  and the (detached) centroid memory M [C, d]:
  gamma = s_r / min_c ||f - M_c||_2 (reachability, s_r = 10); o = softmax(W_h f + b_h) (hallucinator,
  initialised from the stage-1 classifier); v_mem = o^T M; e = tanh(W_s f + b_s) (concept selector);
  v_meta = gamma * (f + e ⊙ v_mem); logit_j = s * (||v||/(1+||v||)) * <v/||v||, w_j/||w_j||> (s = 16).
* :func:`discriminative_centroid_loss` = L_att + 0.01 L_rep with
  L_att = (1/2B) sum_i ||f_i - M_{y_i}||^2 (hand-written backward, :class:`AttractLoss`: feature gradient
  (f_i - M_{y_i})/B times the upstream gradient; centroid gradient sum_{i: y_i = c} (M_c - f_i) / ((1 + n_c) B)
  with n_c the class's count in the batch, **not** multiplied by the upstream gradient unless
  ``grad_scaled``, as in the original code) and
  L_rep = max(0, 10 - sum_i sum_{j != y_i} ||f_i - M_j||^2 / (B C)) (plain autograd).
  Stage-2 objective: CE(logits, y) + 0.01 (L_att + 0.01 L_rep) (:class:`OLTRLoss`), the centroid loss on
  f (``centroid_input="direct"``, the original code, default) or on v_meta (``"meta"``, the paper's Eq. 7).

Everything is device-agnostic; the centroid memory is a parameter of :class:`OLTRModel` (so checkpoints
hold it and DDP all-reduces its gradient); the classifier only sees a detached copy, so CE never moves M.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

REPEL_MARGIN = 10.0  # margin of L_rep (original code)
REPEL_WEIGHT = 0.01  # weight of L_rep inside the centroid loss (original code)


class OLTRError(ValueError):
    """A model or feature map that OLTR's modules cannot handle."""


# ----------------------------------------------------------------------------------------------
# modulated attention


class ModulatedAttention(nn.Module):
    """x_att = x + MA(x) ⊙ SA(x) on a [B, C, H, W] map of the size given at construction (see module doc)."""

    def __init__(self, channels: int, map_size: tuple[int, int]):
        super().__init__()
        h, w = int(map_size[0]), int(map_size[1])
        if channels < 1 or h < 1 or w < 1:
            raise OLTRError(f"ModulatedAttention needs channels >= 1 and a map size >= 1x1, got {channels}, {map_size}")
        self.channels, self.map_size = channels, (h, w)
        inter = max(channels // 2, 1)
        self.theta = nn.Conv2d(channels, inter, 1, bias=False)
        self.phi = nn.Conv2d(channels, inter, 1, bias=False)
        self.g = nn.Conv2d(channels, inter, 1, bias=False)
        self.out = nn.Conv2d(inter, channels, 1, bias=False)  # W_z
        self.spatial = nn.Linear(channels * h * w, h * w)  # MA logits over the H*W positions
        for conv in (self.theta, self.phi, self.g):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.zeros_(self.out.weight)

    def self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """SA(x) = W_z(A g(x)), A = softmax_row(theta(x)^T phi(x)) over the H*W positions."""
        b, _, h, w = x.shape
        t = self.theta(x).flatten(2).transpose(1, 2)  # [B, HW, C']
        p = self.phi(x).flatten(2)  # [B, C', HW]
        g = self.g(x).flatten(2).transpose(1, 2)  # [B, HW, C']
        a = torch.softmax(t @ p, dim=-1)
        y = (a @ g).transpose(1, 2).reshape(b, -1, h, w)
        return self.out(y)

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """MA(x) [B, 1, H, W]: softmax over positions of Linear(C*H*W -> H*W)(x flattened channel-major)."""
        b, _, h, w = x.shape
        return torch.softmax(self.spatial(x.flatten(1)), dim=1).view(b, 1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels or tuple(x.shape[2:]) != self.map_size:
            raise OLTRError(
                f"ModulatedAttention was built for [B, {self.channels}, {self.map_size[0]}, {self.map_size[1]}] "
                f"feature maps, got {tuple(x.shape)}; the spatial attention's Linear depends on the map size, "
                f"so train and evaluate at the same image_size (or set oltr_attention=False)")
        return x + self.spatial_attention(x) * self.self_attention(x)


# ----------------------------------------------------------------------------------------------
# dynamic meta-embedding and the cosine-norm classifier


class CosNormClassifier(nn.Module):
    """logit_j = s * (||v||/(1+||v||)) * <v/||v||, w_j/||w_j||>; w ~ U(-1/sqrt(d), 1/sqrt(d)); no bias."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-bound, bound))
        self.scale = float(scale)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        norm = v.norm(dim=1, keepdim=True)
        squashed = (norm / (1 + norm)) * (v / norm.clamp_min(1e-12))
        return self.scale * F.linear(squashed, F.normalize(self.weight, dim=1))


def nearest_centroid_distance(f: torch.Tensor, centroids: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """min_c ||f_i - M_c||_2 [B] in float32 (||f||^2 + ||M||^2 - 2 f.M, clamped at eps before the root)."""
    with torch.autocast(device_type=f.device.type, enabled=False):
        f32, m32 = f.float(), centroids.float()
        d2 = (f32.pow(2).sum(1, keepdim=True) + m32.pow(2).sum(1)[None] - 2 * f32 @ m32.t()).clamp_min(eps)
        return d2.min(dim=1).values.sqrt()


class MetaEmbedding(nn.Module):
    """v_meta = gamma * (f + tanh(W_s f + b_s) ⊙ softmax(W_h f + b_h)^T M), logits = CosNorm(v_meta)."""

    def __init__(self, feat_dim: int, num_classes: int, *, cosine_scale: float = 16.0, reach_scale: float = 10.0):
        super().__init__()
        self.hallucinator = nn.Linear(feat_dim, num_classes)  # W_h, b_h (from the stage-1 classifier)
        self.selector = nn.Linear(feat_dim, feat_dim)  # W_s, b_s
        self.classifier = CosNormClassifier(feat_dim, num_classes, cosine_scale)
        self.reach_scale = float(reach_scale)

    def forward(self, f: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, C], v_meta [B, d]) for the direct feature f [B, d] and the memory M [C, d]."""
        gamma = self.reach_scale / nearest_centroid_distance(f, centroids)
        memory = torch.softmax(self.hallucinator(f), dim=1) @ centroids.to(f.dtype)
        selector = torch.tanh(self.selector(f))
        v = gamma.to(f.dtype)[:, None] * (f + selector * memory)
        return self.classifier(v), v


# ----------------------------------------------------------------------------------------------
# the models of the two stages


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map [B, C, H, W] (``forward_features``: resnet32, timm CNNs)."""
    if not hasattr(backbone, "forward_features"):
        raise OLTRError(f"{type(backbone).__name__} has no forward_features(); OLTR's attention needs the last "
                        f"feature map: use resnet32, resnet10 or a timm CNN, or set oltr_attention=False")
    m = backbone.forward_features(x)
    if m.ndim != 4:
        raise OLTRError(f"{type(backbone).__name__}.forward_features gives shape {tuple(m.shape)}, not a CNN map "
                        f"[B, C, H, W]; OLTR's modulated attention needs one: use a CNN or set oltr_attention=False")
    return m


@torch.no_grad()
def probe_map_size(backbone: nn.Module, image_size: int, in_chans: int = 3) -> tuple[int, int, int]:
    """(C, H, W) of the last feature map at ``image_size`` (one forward of zeros in eval mode)."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    m = feature_map(backbone, torch.zeros(1, in_chans, image_size, image_size, device=device))
    backbone.train(was_training)
    return int(m.shape[1]), int(m.shape[2]), int(m.shape[3])


def fc_layer(in_features: int, dim: int) -> nn.Module:
    """OLTR's ``fc_add``: Linear(in -> dim) + ReLU after pooling."""
    return nn.Sequential(nn.Linear(in_features, dim), nn.ReLU(inplace=True))


class PlainModel(nn.Module):
    """Stage 1 ("plain model"): logits = W fc(pool(backbone(x))) + b; without fc its state-dict keys
    (``backbone.*``, ``head.*``) are those of a linear-head ERM :class:`~ltr_core.models.Classifier`."""

    def __init__(self, backbone: nn.Module, num_classes: int, fc_dim: int = 0):
        super().__init__()
        self.backbone = backbone
        self.fc = fc_layer(backbone.num_features, fc_dim) if fc_dim else None
        self.head = nn.Linear(fc_dim or backbone.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return self.fc(f) if self.fc is not None else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class OLTROutput(NamedTuple):
    """What :class:`OLTRModel` returns in training mode (the loss needs all of it)."""

    logits: torch.Tensor
    direct: torch.Tensor  # f, the direct feature
    meta: torch.Tensor  # v_meta
    centroids: torch.Tensor  # the memory M (the parameter itself: the centroid loss updates it)


class OLTRModel(nn.Module):
    """Stage 2: backbone -> [modulated attention] -> avg pool -> [fc + ReLU] = f -> meta-embedding -> logits.

    ``centroids`` (M, [C, d]) is a parameter updated only by the centroid loss; the classifier uses
    ``M.detach()``. ``forward`` returns the logits in eval mode and an :class:`OLTROutput` in training mode.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, map_size: tuple[int, int] | None = None,
                 attention: bool = True, fc_dim: int = 0, cosine_scale: float = 16.0, reach_scale: float = 10.0):
        super().__init__()
        self.backbone = backbone
        channels = backbone.num_features
        if attention and map_size is None:
            raise OLTRError("OLTRModel with attention needs the feature-map size (probe_map_size)")
        self.attention = ModulatedAttention(channels, map_size) if attention else None
        self.fc = fc_layer(channels, fc_dim) if fc_dim else None
        self.feat_dim = fc_dim or channels
        self.meta = MetaEmbedding(self.feat_dim, num_classes, cosine_scale=cosine_scale, reach_scale=reach_scale)
        self.centroids = nn.Parameter(torch.zeros(num_classes, self.feat_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The direct feature f [B, d]."""
        if self.attention is not None:
            f = self.attention(feature_map(self.backbone, x)).mean(dim=(2, 3))
        else:
            f = self.backbone(x)
        return self.fc(f) if self.fc is not None else f

    def forward(self, x: torch.Tensor):
        f = self.features(x)
        logits, v = self.meta(f, self.centroids.detach())
        if self.training:
            return OLTROutput(logits, f, v, self.centroids)
        return logits

    def feature_parameters(self) -> list[nn.Parameter]:
        """Backbone, attention and fc (OLTR's "feature model", lr ``oltr_feature_lr``)."""
        mods = [self.backbone, self.attention, self.fc]
        return [p for m in mods if m is not None for p in m.parameters()]

    def classifier_parameters(self) -> list[nn.Parameter]:
        """Hallucinator, concept selector and cosine-norm classifier (lr ``lr``)."""
        return list(self.meta.parameters())


# ----------------------------------------------------------------------------------------------
# the discriminative centroid loss


class AttractLoss(torch.autograd.Function):
    """L_att = (1/2B) sum_i ||f_i - M_{y_i}||^2 with OLTR's hand-written backward (see module doc)."""

    @staticmethod
    def forward(ctx, feat: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, grad_scaled: bool = False):
        ctx.save_for_backward(feat, labels, centroids)
        ctx.grad_scaled = bool(grad_scaled)
        diff = feat - centroids.index_select(0, labels)
        return diff.pow(2).sum() / (2.0 * feat.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        feat, labels, centroids = ctx.saved_tensors
        b = feat.shape[0]
        diff = feat - centroids.index_select(0, labels)  # f_i - M_{y_i}
        grad_feat = grad_output * diff / b if ctx.needs_input_grad[0] else None
        grad_centroids = None
        if ctx.needs_input_grad[2]:
            counts = 1.0 + torch.bincount(labels, minlength=centroids.shape[0]).to(centroids.dtype)
            summed = torch.zeros_like(centroids).index_add_(0, labels, -diff.to(centroids.dtype))
            grad_centroids = summed / counts[:, None] / b  # sum_{i: y_i = c} (M_c - f_i) / ((1 + n_c) B)
            if ctx.grad_scaled:
                grad_centroids = grad_centroids * grad_output
        return grad_feat, None, grad_centroids, None


def attract_loss(feat: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
                 grad_scaled: bool = False) -> torch.Tensor:
    """L_att with the hand-written backward of :class:`AttractLoss`."""
    return AttractLoss.apply(feat, labels, centroids, grad_scaled)


def repel_loss(feat: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
               margin: float = REPEL_MARGIN) -> torch.Tensor:
    """L_rep = max(0, margin - sum_i sum_{j != y_i} ||f_i - M_j||^2 / (B C)) (autograd)."""
    d2 = feat.pow(2).sum(1, keepdim=True) + centroids.pow(2).sum(1)[None] - 2 * feat @ centroids.t()  # [B, C]
    own = F.one_hot(labels, centroids.shape[0]).bool()
    mean_neg = d2.masked_fill(own, 0.0).sum() / (feat.shape[0] * centroids.shape[0])
    return torch.clamp(margin - mean_neg, min=0.0)


def discriminative_centroid_loss(feat: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, *,
                                 grad_scaled: bool = False, margin: float = REPEL_MARGIN,
                                 repel_weight: float = REPEL_WEIGHT) -> torch.Tensor:
    """L_att + 0.01 L_rep on float32 features (see module doc)."""
    feat, centroids_f = feat.float(), centroids.float()
    if feat.shape[1] != centroids.shape[1]:
        raise OLTRError(f"features of dimension {feat.shape[1]} for centroids of dimension {centroids.shape[1]}")
    return (attract_loss(feat, labels, centroids_f, grad_scaled)
            + repel_weight * repel_loss(feat, labels, centroids_f, margin))


class OLTRLoss(nn.Module):
    """Stage-2 objective: CE(logits, y) + weight * (L_att + 0.01 L_rep) on f (``direct``, the original code,
    default) or on v_meta (``meta``, the paper's Eq. 7)."""

    def __init__(self, weight: float = 0.01, centroid_input: str = "direct", grad_scaled: bool = False):
        super().__init__()
        if centroid_input not in ("direct", "meta"):
            raise OLTRError(f"centroid_input must be direct or meta, got {centroid_input!r}")
        self.weight, self.centroid_input, self.grad_scaled = float(weight), centroid_input, bool(grad_scaled)

    def forward(self, out: OLTROutput, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, OLTROutput):
            raise OLTRError("OLTRLoss needs the OLTROutput of an OLTRModel in training mode")
        ce = F.cross_entropy(out.logits.float(), labels)
        if self.weight == 0:
            return ce
        feat = out.direct if self.centroid_input == "direct" else out.meta
        return ce + self.weight * discriminative_centroid_loss(feat, labels, out.centroids,
                                                               grad_scaled=self.grad_scaled)
