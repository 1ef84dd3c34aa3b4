"""ERM: one network trained end to end with a (long-tail-aware or plain) loss.

The plain cross-entropy baseline (CE / "ERM" / "Softmax") minimises
L = -log softmax(W f(x) + b)_y with instance-balanced sampling. The loss and the sampler are
parameters (``loss``, ``sampler``), so the loss-based baselines (focal, class-balanced, LDAM-DRW,
logit adjustment, balanced softmax) are ERM runs with another ``loss``.
"""

from __future__ import annotations

from torch import nn

from ..config import RunConfig
from ..data import LTData
from ..losses import build_loss
from ..models import build_model
from ..study import in_channels, run_supervised

NOTEBOOK = "erm.ipynb"


def build(cfg: RunConfig, data: LTData) -> tuple[nn.Module, nn.Module]:
    """Backbone + head from the model params, loss from the loss params and the train class counts."""
    model = build_model(cfg.model, data.num_classes, image_size=data.image_size, in_chans=in_channels(data))
    return model, build_loss(cfg.loss, data.class_counts)


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """Train and evaluate; returns the results.json dict."""
    return run_supervised(cfg, build, data=data)
