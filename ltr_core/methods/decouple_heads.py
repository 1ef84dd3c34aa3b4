"""The formulas of the decoupling methods (τ-norm, post-hoc logit adjustment, NCM) and the stage-2 models:
a classifier on a frozen backbone, the NCM head. See :mod:`ltr_core.methods.decouple`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models import Classifier
from ..models.heads import tau_normalized

NCM_METRICS = ("cl2n_l2", "cosine")


def tau_norm_logits(features: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    """z_c = f · w_c / ‖w_c‖^τ (bias dropped)."""
    return features @ tau_normalized(weight, tau).T


def log_prior(class_counts) -> torch.Tensor:
    """log π_c = log(n_c / Σ n); every class needs at least one training image."""
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    if (counts <= 0).any():
        empty = torch.nonzero(counts <= 0).flatten().tolist()
        raise ValueError(f"post-hoc logit adjustment needs n_c >= 1 for every class; classes {empty[:10]} "
                         f"have no training image (log prior = -inf)")
    return (counts / counts.sum()).log().float()


def posthoc_la_logits(logits: torch.Tensor, class_counts, tau: float) -> torch.Tensor:
    """z − τ log π (Menon et al., ICLR 2021, post-hoc form; the model was trained with plain CE)."""
    return logits - tau * log_prior(class_counts)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """μ_c = mean of the features of class c ([C, D]); a class without samples is an error."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(
        0, labels, features.double())
    counts = torch.bincount(labels, minlength=num_classes).double()
    if (counts == 0).any():
        raise ValueError(f"NCM: classes {torch.nonzero(counts == 0).flatten().tolist()[:10]} have no training feature")
    return (sums / counts[:, None]).float()


def centred_l2n(features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """x̂ = (f − μ) / ‖f − μ‖₂ (classifier-balancing ``feat_type='cl2n'``)."""
    return nn.functional.normalize(features - mean, dim=1)


def ncm_centroids(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  metric: str = "cl2n_l2") -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, centroids [C, D]) of the training features for :func:`ncm_logits`.

    cl2n_l2: μ = mean of all training features (over samples), c_c = mean_{i: y_i = c} x̂_i, the mean of
    the centred and L2-normalised features (not re-normalised; classifier-balancing
    ``get_knncentroids`` ``cl2ncs``). cosine: μ = 0, c_c = mean raw feature of class c.
    """
    if metric not in NCM_METRICS:
        raise ValueError(f"ncm_metric must be one of {NCM_METRICS}, got {metric!r}")
    if metric == "cosine":
        return torch.zeros(features.shape[1]), class_means(features, labels, num_classes)
    mean = features.double().mean(0).float()
    return mean, class_means(centred_l2n(features, mean), labels, num_classes)


def ncm_logits(features: torch.Tensor, centroids: torch.Tensor, metric: str = "cl2n_l2",
               mean: torch.Tensor | None = None) -> torch.Tensor:
    """NCM logits (Kang et al., ICLR 2020, nearest class mean classifier).

    cl2n_l2 (classifier-balancing ``KNNClassifier(feat_type='cl2n', dist_type='l2')``):
    z_c = −‖x̂ − c_c‖², x̂ = (f − μ)/‖f − μ‖; cosine: z_c = cos(f, c_c).
    """
    if metric == "cosine":
        return nn.functional.normalize(features, dim=1) @ nn.functional.normalize(centroids, dim=1).T
    if metric != "cl2n_l2":
        raise ValueError(f"ncm_metric must be one of {NCM_METRICS}, got {metric!r}")
    x = centred_l2n(features, torch.zeros(features.shape[1]) if mean is None else mean.to(features))
    c = centroids.to(x)
    return -((x * x).sum(1, keepdim=True) + (c * c).sum(1)[None, :] - 2.0 * x @ c.T)


class NCMHead(nn.Module):
    """The NCM classifier as a head: :func:`ncm_logits` with fixed (buffer) μ and centroids."""

    def __init__(self, centroids: torch.Tensor, mean: torch.Tensor, metric: str = "cl2n_l2"):
        super().__init__()
        self.metric = metric
        self.register_buffer("centroids", centroids.detach().clone().float())
        self.register_buffer("feature_mean", mean.detach().clone().float())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return ncm_logits(f, self.centroids, self.metric, self.feature_mean)


class FrozenBackboneClassifier(Classifier):
    """head(backbone(x)) with a frozen backbone: no gradients reach it (``torch.no_grad``, params frozen).

    ``bn_mode="train"`` leaves the backbone in train mode while training, so its BatchNorm running
    statistics follow the stage-2 sampler (classifier-balancing); ``"eval"`` keeps it in eval mode
    (the backbone state stays bit-identical).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, bn_mode: str = "train"):
        super().__init__(backbone, head)
        if bn_mode not in ("train", "eval"):
            raise ValueError(f"bn_mode must be train or eval, got {bn_mode!r}")
        self.bn_mode = bn_mode
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.bn_mode == "eval":
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
