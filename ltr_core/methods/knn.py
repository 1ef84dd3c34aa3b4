"""Cosine k-nearest-neighbour classifier on the frozen features of a finished stage-1 run (no training).

The weighted kNN of Wu et al. (CVPR 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination"; DINO's k-NN evaluation): with f̂ = f / ‖f‖ the stage-1 features (evaluation transform,
cached in ``<stage-1 run>/features/`` like the decoupling modes), N_k(x) the ``knn_k`` training images of
highest cosine s_j = f̂(x) · f̂_j and T = ``knn_temperature``,

    p_c(x) = Σ_{j ∈ N_k(x), y_j = c} e^{s_j / T} / Σ_{j ∈ N_k(x)} e^{s_j / T},   z_c = log(p_c + 1e-12) − τ log π_c

τ = ``knn_tau`` (0: the plain vote, whose neighbours come mostly from the head classes; 1: the vote share
divided by the training prior π, the balanced posterior). softmax(z) = p at τ = 0, so ECE is the vote's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data import LTData
from ..study import Plan, RunContext, run_family
from .decouple import load_stage1, load_stage1_model, stage1_features, stage1_record
from .decouple_heads import log_prior

NOTEBOOK = "knn.ipynb"


def knn_logits(query: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, num_classes: int, k: int,
               temperature: float, chunk: int = 1024) -> torch.Tensor:
    """z_c = log(p_c + 1e-12) of the module doc for every row of ``query`` [N, D] against ``keys`` [M, D]."""
    keys = F.normalize(keys.float(), dim=1)
    out = []
    for start in range(0, query.shape[0], chunk):  # [chunk, M] similarities at a time
        sims = F.normalize(query[start:start + chunk].float(), dim=1) @ keys.T
        top, idx = sims.topk(min(k, keys.shape[0]), dim=1)
        votes = torch.zeros(top.shape[0], num_classes, dtype=top.dtype, device=top.device)
        votes.scatter_add_(1, key_labels.to(idx.device)[idx], torch.softmax(top / temperature, dim=1))
        out.append(torch.log(votes + 1e-12))
    return torch.cat(out)


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """kNN on the stage-1 run ``init_run``; writes and returns results.json."""
    stage1_dir, res1, cfg1 = load_stage1(cfg)
    k, temperature, tau = cfg.knn.knn_k, cfg.knn.knn_temperature, cfg.knn.knn_tau

    def plan(ctx: RunContext) -> Plan:
        model = load_stage1_model(stage1_dir, cfg1, ctx.data)
        train = stage1_features(stage1_dir, model, ctx.data, "train", cfg, ctx.device)
        keys, key_labels = train["features"].to(ctx.device), train["labels"].to(ctx.device)
        shift = tau * log_prior(ctx.data.class_counts).to(ctx.device)

        def predict(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            f = stage1_features(stage1_dir, model, ctx.data, split, cfg, ctx.device)
            z = knn_logits(f["features"].to(ctx.device), keys, key_labels, ctx.data.num_classes, k, temperature)
            return (z - shift).cpu(), f["labels"]

        extra = {"stage1": stage1_record(stage1_dir, res1, model), "epochs": 0, "knn_k": k,
                 "knn_temperature": temperature, "knn_tau": tau, "knn_keys": int(key_labels.numel()),
                 "variant": "cosine kNN on cached stage-1 features (no training)"}
        return Plan(None, predict, extra=extra)

    return run_family(cfg, plan, data=data)
