"""Frozen parts computed once: features of a frozen backbone cached as safetensors.

Where a backbone is frozen and its input deterministic (evaluation transform, no augmentation),
its features are a pure function of (weights, split, transform). :func:`cached_features` stores
them in ``<dir>/features/<name>-<key>.safetensors`` (``key`` = sha256 of a description of exactly
those inputs), so re-training a classifier on them (cRT/LWS "cached" variants, τ-norm, NCM,
zero-shot CLIP, linear probes, text-feature init) takes seconds on the second run.
Cached features skip train-time augmentation: results computed from them are a labelled variant.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file

from .results import atomic_write_text, to_jsonable
from .stages import save_weights, state_dict_cpu


def feature_key(description: Mapping[str, Any]) -> str:
    """sha256 (16 hex chars) of a JSON description (model identity, split, transform, ...)."""
    text = json.dumps(to_jsonable(dict(description)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 (16 hex chars) over a module's state dict (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()[:16]


def cached_features(directory: str | os.PathLike, name: str, description: Mapping[str, Any],
                    compute: Callable[[], Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Load ``<directory>/features/<name>-<key>.safetensors`` or ``compute()`` and store it atomically.

    ``compute`` returns named CPU tensors (e.g. {"features": [N, D], "labels": [N]}); the description
    is stored beside them in ``<...>.json`` so a cache file says what it holds.
    """
    folder = Path(directory) / "features"
    key = feature_key(description)
    path = folder / f"{name}-{key}.safetensors"
    if path.is_file():
        return dict(load_file(str(path)))
    tensors = state_dict_cpu(dict(compute()))
    save_weights(tensors, path)  # atomic, unique temp file: DDP ranks may write the same cache
    atomic_write_text(folder / f"{name}-{key}.json", json.dumps(to_jsonable(dict(description)), indent=1,
                                                                 sort_keys=True))
    return tensors


class FeatureLoader:
    """Batches of cached features in the order of an epoch sampler: ``(features[idx], labels[idx])`` on ``device``.

    The loader interface of :func:`ltr_core.data.make_loader` (``set_epoch``, ``__len__`` in batches),
    so ``engine.fit`` trains a classifier on cached features like on images. ``sampler`` is an
    :class:`~ltr_core.data.samplers.EpochSampler` (order of epoch e a pure function of (seed, e));
    None iterates in the stored order (evaluation).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, *, batch_size: int, device="cpu",
                 sampler=None) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"FeatureLoader: {features.shape[0]} feature rows for {labels.shape[0]} labels")
        self.device = torch.device(device)
        self.features = features.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = int(batch_size)
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> torch.Tensor:
        if self.sampler is None:
            return torch.arange(self.labels.shape[0])
        return self.sampler.indices(self.epoch)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else int(self.labels.shape[0])
        return -(-n // self.batch_size)

    def __iter__(self):
        order = self._order().to(self.device)
        for start in range(0, order.numel(), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.features.index_select(0, idx), self.labels.index_select(0, idx)


def train_feature_loader(cfg, feats: Mapping[str, torch.Tensor], device) -> FeatureLoader:
    """Cached ``{"features", "labels"}`` batched like the run's training loader (its sampler, seed, batch size)."""
    from .data.samplers import build_sampler

    sampler = build_sampler(cfg.data.sampler, feats["labels"], seed=cfg.run.seed, epochs=cfg.train.epochs)
    return FeatureLoader(feats["features"], feats["labels"], batch_size=cfg.train.batch_size, device=device,
                         sampler=sampler)


def eval_feature_loader(cfg, feats: Mapping[str, torch.Tensor], device) -> FeatureLoader:
    """Cached ``{"features", "labels"}`` in stored order, ``eval_batch_size`` rows a batch."""
    return FeatureLoader(feats["features"], feats["labels"], batch_size=cfg.train.eval_batch_size, device=device)
