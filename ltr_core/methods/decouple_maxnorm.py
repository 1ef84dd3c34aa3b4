"""Post-hoc max-norm: the MaxNorm constraint of Alshammari et al. ("Long-Tailed Recognition via Weight Balancing",
CVPR 2022) applied once to the stage-1 linear classifier, not after each step of a stage-2 training. Head classes
grow large weight norms; the cap leaves the tail's alone and keeps the bias (unlike τ-norm):
    w'_c = w_c · min(1, δ_q / ‖w_c‖₂),  z_c = w'_c · f + b_c,  δ_q = the q-quantile of {‖w_c‖₂}
q = 1 is the stage-1 classifier, q = 0 gives every class the smallest norm; q is swept over 0, 0.1, ..., 1
(``decouple_tau_grid``) and chosen like τ (``decouple_tau``)."""

import copy

import torch

from ..config import ConfigError
from .decouple import TauSweep, tau_grid


def maxnorm_weights(weight: torch.Tensor, q: float) -> torch.Tensor:
    """Each row w_c scaled by min(1, δ_q / ‖w_c‖), δ_q = ``torch.quantile`` (linear) of the row norms at q."""
    norms = weight.norm(dim=1)
    return weight * (torch.quantile(norms, q) / norms).clamp(max=1.0)[:, None]


class MaxNorm(TauSweep):
    knob = "q"

    def grid(self, cfg):
        grid = tau_grid(cfg, default=tuple(i / 10 for i in range(11)))
        if max(grid) > 1:
            raise ConfigError(f"maxnorm: decouple_tau / decouple_tau_grid are quantiles in [0, 1], got {grid}")
        return grid

    def logits_at(self, model, feats, data, evaluated):
        w, b = model.head.weight.detach(), model.head.bias.detach()
        return lambda q, split: feats[split]["features"] @ maxnorm_weights(w, q).T + b

    def adjusted_head(self, model, q, data):
        head = copy.deepcopy(model.head)
        with torch.no_grad():
            head.weight.copy_(maxnorm_weights(model.head.weight.detach(), q))
        return head
