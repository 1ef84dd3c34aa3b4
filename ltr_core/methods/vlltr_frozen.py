"""VL-LTR's frozen quantities: where the CVLP towers come from (:class:`Stage1`), what they compute once
(image and text embeddings of a split, cached beside the CVLP weights under ``features/``, keyed by the
weights file's sha256) and the anchor sentence selection (AnSS) on them. See :mod:`ltr_core.methods.vlltr`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import engine, stages
from ..config import RunConfig
from ..data import LTData
from ..data.base import Split
from ..data.class_text import ClassText
from ..features import cached_features
from ..identity import sha256_file
from ..models import clip as clip_core
from ..models.vlltr import anss_losses, clamped_scale, gather_anchors, select_anchors
from ..results import to_jsonable
from .pel_model import clip_data, clip_loader


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# the CVLP towers


@dataclass
class Stage1:
    """Where the CVLP weights come from: ``cvlp`` (trained in this run), ``init_run`` or ``none`` (initial CLIP)."""

    source: str
    weights: Path | None
    directory: Path
    record: dict = field(default_factory=dict)
    _clip: clip_core.Clip | None = None

    def key(self, cfg: RunConfig) -> dict:
        """Identity of the towers (for feature caches): weights file sha256, or the initial CLIP."""
        base = {"clip_model": cfg.clip.clip_model, "clip_pretrained": cfg.clip.clip_pretrained}
        if self.weights is None:
            if not cfg.clip.clip_pretrained:
                base["random_init_seed"] = cfg.run.seed  # a random CLIP differs per seed
            return base
        if "weights_sha256" not in self.record:
            self.record["weights_sha256"] = sha256_file(self.weights)[:16]
        return {**base, "weights_sha256": self.record["weights_sha256"]}

    def load(self, cfg: RunConfig, device) -> clip_core.Clip:
        """The CLIP with the CVLP weights (loaded once)."""
        if self._clip is None:
            torch.manual_seed(cfg.run.seed)
            clip = clip_core.load_clip(cfg.clip.clip_model, cfg.clip.clip_pretrained, device="cpu",
                                       interpolation=cfg.clip.clip_interpolation)
            if self.weights is not None:
                stages.load_weights(clip.model, self.weights, prefix="clip.")
            clip.model.to(device).eval()
            self._clip = clip
        return self._clip


@torch.no_grad()
def encode_tokens(model: nn.Module, tokens: torch.Tensor, device, precision: str = "auto", batch: int = 1024,
                  normalize: bool = True) -> torch.Tensor:
    """Text embeddings [S, d] (float32, on ``device``) of token rows through ``model.encode_text``,
    L2-normalised unless ``normalize=False``."""
    dtype = engine.autocast_dtype(precision, torch.device(device))
    out = []
    was = model.training
    model.eval()
    for i in range(0, tokens.shape[0], batch):
        with engine.autocast(torch.device(device), dtype):
            emb = model.encode_text(tokens[i:i + batch].to(device)).float()
        out.append(F.normalize(emb, dim=-1) if normalize else emb)
    model.train(was)
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# frozen features (cached beside the CVLP weights)


def capped_indices(labels: torch.Tensor, cap: int) -> torch.Tensor:
    """Indices of the first ``cap`` samples of every class, in split order (all when cap is 0)."""
    if cap <= 0:
        return torch.arange(labels.numel())
    keep, seen = [], {}
    for i, y in enumerate(labels.tolist()):
        if seen.get(y, 0) < cap:
            keep.append(i)
            seen[y] = seen.get(y, 0) + 1
    return torch.as_tensor(keep, dtype=torch.long)


def _subset(split: Split, idx: torch.Tensor) -> Split:
    return Split(labels=split.labels[idx], images=split.images[idx] if split.images is not None else None,
                 paths=[split.paths[i] for i in idx.tolist()] if split.paths is not None else None)


def image_features(cfg: RunConfig, lt: LTData, stage1: Stage1, split: str, *, cap: int = 0, normalize: bool = False,
                   device=None) -> dict[str, torch.Tensor]:
    """{"features": [N, d], "labels": [N]} of the CVLP image encoder on ``split`` (eval transform, no
    augmentation; the first ``cap`` images per class when cap > 0), cached beside the CVLP weights."""
    device = device or engine.resolve_device(cfg.run.device)
    part = lt.split(split)
    idx = capped_indices(part.labels, cap)
    if cap and split == "train" and cfg.vlltr.vlltr_stage2_input == "cached":  # stage 2 needs the whole split anyway
        full = image_features(cfg, lt, stage1, split, device=device)
        feats = full["features"][idx]
        return {"features": F.normalize(feats.float(), dim=-1) if normalize else feats, "labels": full["labels"][idx]}
    desc = {"what": "clip image embedding", "towers": stage1.key(cfg), "dataset": lt.name, "split": split,
            "cap": cap, "data": _digest(lt.provenance), "n": int(idx.numel()),
            "interpolation": cfg.clip.clip_interpolation}

    def compute():
        clip = stage1.load(cfg, device)
        data = clip_data(dataclasses.replace(lt, test=_subset(part, idx)), clip)
        loader = clip_loader(cfg, data, "test", train=False, device=device)
        feats, labels = engine.predict(clip.model, loader, device, cfg.train.precision,
                                       fn=lambda x: clip.model.encode_image(x).float())
        return {"features": feats, "labels": labels}

    out = cached_features(stage1.directory, f"img-{split}{f'-cap{cap}' if cap else ''}", desc, compute)
    if normalize:
        out = {**out, "features": F.normalize(out["features"].float(), dim=-1)}
    return out


def text_features(cfg: RunConfig, text: ClassText, stage1: Stage1, *, device=None) -> dict[str, torch.Tensor]:
    """{"features": [S, d] normalised (AnSS), "raw": [S, d] un-normalised (the LGR anchors), "labels": [S],
    "scale": [exp(logit_scale)]} of every sentence through the CVLP text tower (cached)."""
    device = device or engine.resolve_device(cfg.run.device)
    sentences, labels = text.flat()
    desc = {"what": "clip text embedding (raw and normalised)", "towers": stage1.key(cfg),
            "sentences": _digest(sentences), "labels": _digest(labels)}

    def compute():
        clip = stage1.load(cfg, device)
        raw = encode_tokens(clip.model, clip.tokenizer(sentences), device, cfg.train.precision, normalize=False)
        scale = torch.tensor([float(clamped_scale(clip.model.logit_scale).detach())])
        return {"features": F.normalize(raw, dim=-1).cpu(), "raw": raw.cpu(),
                "labels": torch.as_tensor(labels, dtype=torch.long), "scale": scale}

    return cached_features(stage1.directory, "text", desc, compute)


# ----------------------------------------------------------------------------------------------
# AnSS


@dataclass
class Anchors:
    """Anchor sentences: ``index`` [C, k] into the flat sentence list (-1 = pad), ``mask``, ``embeddings``
    [C, k, d] (raw, un-normalised CVLP text embeddings), every sentence's L_lin (``losses``), what results
    record, and ``scale`` = exp(logit_scale) of the CVLP model (AnSS and the LGR linguistic scale)."""

    index: torch.Tensor
    mask: torch.Tensor
    embeddings: torch.Tensor
    losses: torch.Tensor
    record: dict
    scale: float

    def table(self, text: ClassText, classes=None, per_class: int = 3):
        """DataFrame of the best anchors (class, rank, L_lin, sentence) for display."""
        import pandas as pd

        sentences, _ = text.flat()
        rows = []
        for c in classes if classes is not None else range(self.index.shape[0]):
            for r, i in enumerate(self.index[c, :per_class].tolist()):
                if i >= 0:
                    rows.append({"class": c, "name": text.class_names[c], "rank": r,
                                 "L_lin": round(float(self.losses[i]), 4), "sentence": sentences[i]})
        return pd.DataFrame(rows)


def anss_split(cfg: RunConfig, lt: LTData) -> str:
    """The split that feeds AnSS: ``vlltr_anss_split``, where ``auto`` = val if the dataset has one, else train."""
    choice = cfg.vlltr.vlltr_anss_split
    if choice == "auto":
        return "val" if lt.val is not None else "train"
    lt.split(choice)  # DataError naming the available splits
    return choice


def select_anchor_sentences(cfg: RunConfig, lt: LTData, text: ClassText, stage1: Stage1, *, device=None) -> Anchors:
    """AnSS with the CVLP towers: L_lin of every sentence over the AnSS images, k best per class."""
    v = cfg.vlltr
    split = anss_split(cfg, lt)
    img = image_features(cfg, lt, stage1, split, cap=v.vlltr_anss_per_class, normalize=True, device=device)
    txt = text_features(cfg, text, stage1, device=device)
    scale = float(txt["scale"][0])
    losses = anss_losses(txt["features"], txt["labels"], img["features"], img["labels"], scale, lt.num_classes)
    index, mask = select_anchors(losses, txt["labels"], lt.num_classes, v.vlltr_anchors)
    kept = mask.sum(1)
    record = {"split": split, "rule": v.vlltr_anss_split, "images": int(img["labels"].numel()),
              "per_class_cap": v.vlltr_anss_per_class, "k": v.vlltr_anchors, "scale": scale,
              "min_anchors": int(kept.min()), "classes_padded": int((kept < v.vlltr_anchors).sum()),
              "mean_L_lin_kept": float(losses[index[mask]].mean()), "mean_L_lin_all": float(losses.mean())}
    return Anchors(index, mask, gather_anchors(txt["raw"], index), losses, record, scale)
