"""Epoch-deterministic samplers: instance-balanced, class-balanced, square-root and progressive sampling.

Every sampler's order for epoch e is a pure function of (seed, e): it draws from
``torch.Generator().manual_seed(seed * 1_000_003 + e)``, so a run resumed at epoch e sees exactly
the order an uninterrupted run would have seen.

* instance: a random permutation of the N indices (repeated if ``num_samples`` > N).
* class-power sampling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
  Recognition", ICLR 2020, eq. 1): p(c) = n_c^q / sum_k n_k^q, then an instance of c uniformly,
  with replacement; q = 0 is class-balanced, q = 1/2 square-root sampling (Mahajan et al. 2018).
  N draws per epoch by default. (classifier-balancing's own class-aware sampler instead cycles a
  shuffled class list taking 4 images per visit; its marginal class distribution is the same
  uniform one.)
* class-aware sampling as in classifier-balancing and OLTR (Shen et al. 2016; Kang et al. 2020):
  cycle a shuffled list of the non-empty classes; each visit of class c takes the next
  ``per_class`` (4) indices of c's own cycle (its indices reshuffled whenever exhausted); N draws
  per epoch, i.e. the original trainer's truncation to about N/B steps. The cycles restart every
  epoch (the original's iterators carry over between epochs) so an epoch is a pure function of
  (seed, e).
* progressive-balanced sampling (Kang et al., ICLR 2020, §3): at epoch e of E,
  p_c(e) = (1 - e/E) * n_c/N + (e/E) * 1/C (instance-balanced -> class-balanced, e/E clipped to
  [0, 1], C the non-empty classes), then an instance of c uniformly, with replacement; needs E.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler

from ..registries import SAMPLER_REGISTRY, factory
from .base import DataError

SAMPLERS = tuple(SAMPLER_REGISTRY)  # the names; each builds through its factory below (ltr_core.registries)
SEED_STRIDE = 1_000_003


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of (seed, epoch): ``manual_seed(seed * 1_000_003 + epoch)``."""
    return torch.Generator(device=device).manual_seed(int(seed) * SEED_STRIDE + int(epoch))


class EpochSampler(Sampler[int]):
    """Base: ``indices(epoch)`` (int64 tensor) is a pure function of (seed, epoch); ``set_epoch`` picks it."""

    def __init__(self, labels, *, seed: int, num_samples: int | None = None) -> None:
        labels = labels.detach().cpu() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if self.labels.numel() == 0:
            raise DataError("cannot build a sampler over an empty split (no labels)")
        self.seed = int(seed)
        self.num_samples = int(num_samples) if num_samples is not None else int(self.labels.numel())
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __iter__(self):
        return iter(self.indices(self.epoch).tolist())

    def __len__(self) -> int:
        return self.num_samples


class InstanceSampler(EpochSampler):
    """Instance-balanced sampling: each image once per epoch, in a random order."""

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        n = self.labels.numel()
        reps = -(-self.num_samples // n)
        return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[: self.num_samples]


class _ClassDrawSampler(EpochSampler):
    """Base of the class-aware samplers: draw a class from ``class_probs_at(epoch)``, then a uniform
    instance of it (with replacement)."""

    def __init__(self, labels, *, seed: int, num_samples: int | None = None) -> None:
        super().__init__(labels, seed=seed, num_samples=num_samples)
        if (self.labels < 0).any():
            raise DataError("class-aware sampling needs labels >= 0 (an open-set split has label -1)")
        counts = torch.bincount(self.labels).to(torch.float64)
        self.counts = counts.to(torch.int64)
        self.order = torch.argsort(self.labels, stable=True)  # indices grouped by class
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # first slot of each class in `order`

    def class_probs_at(self, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        epoch = self.epoch if epoch is None else epoch
        g = epoch_generator(self.seed, epoch)
        classes = torch.multinomial(self.class_probs_at(epoch), self.num_samples, replacement=True, generator=g)
        offset = (torch.rand(self.num_samples, generator=g, dtype=torch.float64) * self.counts[classes]).long()
        offset = torch.minimum(offset, self.counts[classes] - 1)
        return self.order[self.starts[classes] + offset]


class ClassPowerSampler(_ClassDrawSampler):
    """p(c) ∝ n_c^q, then a uniform instance of c (with replacement); q=0 class-balanced, q=0.5 sqrt."""

    def __init__(self, labels, *, seed: int, power: float, num_samples: int | None = None) -> None:
        super().__init__(labels, seed=seed, num_samples=num_samples)
        self.power = float(power)
        counts = self.counts.to(torch.float64)
        weights = torch.where(counts > 0, counts.pow(self.power), torch.zeros_like(counts))
        self.class_probs = weights / weights.sum()

    def class_probs_at(self, epoch: int) -> torch.Tensor:
        return self.class_probs


class ProgressiveSampler(_ClassDrawSampler):
    """Progressive-balanced sampling (Kang et al., ICLR 2020): p_c(e) = (1 - e/E) n_c/N + (e/E) / C.

    e is the 0-based epoch, E = ``epochs`` (e/E clipped to [0, 1]); C counts the non-empty classes.
    """

    def __init__(self, labels, *, seed: int, epochs: int, num_samples: int | None = None) -> None:
        super().__init__(labels, seed=seed, num_samples=num_samples)
        if epochs is None or int(epochs) < 1:
            raise DataError(f"the progressive sampler needs the total number of epochs >= 1, got {epochs!r}")
        self.epochs = int(epochs)
        counts = self.counts.to(torch.float64)
        self.instance_probs = counts / counts.sum()
        present = (counts > 0).to(torch.float64)
        self.uniform_probs = present / present.sum()

    def class_probs_at(self, epoch: int) -> torch.Tensor:
        t = min(max(float(epoch) / self.epochs, 0.0), 1.0)
        return (1.0 - t) * self.instance_probs + t * self.uniform_probs


def _cycle(n: int, length: int, g: torch.Generator) -> torch.Tensor:
    """``length`` entries of concatenated random permutations of range(n)."""
    reps = -(-length // n)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:length]


class ClassAwareSampler(EpochSampler):
    """classifier-balancing's class-aware sampler: shuffled class cycle, ``per_class`` images per visit."""

    def __init__(self, labels, *, seed: int, per_class: int = 4, num_samples: int | None = None) -> None:
        super().__init__(labels, seed=seed, num_samples=num_samples)
        if (self.labels < 0).any():
            raise DataError("class-aware sampling needs labels >= 0 (an open-set split has label -1)")
        if per_class < 1:
            raise DataError(f"class-aware sampling needs per_class >= 1, got {per_class}")
        self.per_class = int(per_class)
        self.members = [torch.nonzero(self.labels == c).flatten() for c in range(int(self.labels.max()) + 1)]
        self.classes = torch.tensor([c for c, m in enumerate(self.members) if m.numel()], dtype=torch.int64)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        visits = -(-self.num_samples // self.per_class)
        order = self.classes[_cycle(self.classes.numel(), visits, g)]  # class of each visit
        out = torch.empty(visits, self.per_class, dtype=torch.int64)
        for c in order.unique().tolist():
            slots = torch.nonzero(order == c).flatten()
            members = self.members[c]
            out[slots] = members[_cycle(members.numel(), slots.numel() * self.per_class, g)].view(-1, self.per_class)
        return out.reshape(-1)[: self.num_samples]


def instance_sampler(labels, *, seed: int, num_samples: int | None = None, epochs: int | None = None) -> EpochSampler:
    """``instance``: each image once per epoch, in a random order."""
    return InstanceSampler(labels, seed=seed, num_samples=num_samples)


def class_balanced_sampler(labels, *, seed: int, num_samples: int | None = None,
                           epochs: int | None = None) -> EpochSampler:
    """``class_balanced``: class-power sampling with q = 0."""
    return ClassPowerSampler(labels, seed=seed, power=0.0, num_samples=num_samples)


def sqrt_sampler(labels, *, seed: int, num_samples: int | None = None, epochs: int | None = None) -> EpochSampler:
    """``sqrt``: class-power sampling with q = 1/2."""
    return ClassPowerSampler(labels, seed=seed, power=0.5, num_samples=num_samples)


def class_aware_sampler(labels, *, seed: int, num_samples: int | None = None,
                        epochs: int | None = None) -> EpochSampler:
    """``class_aware``: classifier-balancing's class cycle, 4 images per class visit."""
    return ClassAwareSampler(labels, seed=seed, num_samples=num_samples)


def progressive_sampler(labels, *, seed: int, num_samples: int | None = None,
                        epochs: int | None = None) -> EpochSampler:
    """``progressive``: instance- to class-balanced over ``epochs`` (required)."""
    if epochs is None:
        raise DataError("sampler 'progressive' needs the total number of epochs: pass epochs=cfg.train.epochs "
                        "to build_sampler / make_loader")
    return ProgressiveSampler(labels, seed=seed, epochs=epochs, num_samples=num_samples)


def build_sampler(name: str, labels, *, seed: int, num_samples: int | None = None,
                  epochs: int | None = None) -> EpochSampler:
    """Sampler by name (:data:`ltr_core.registries.SAMPLER_REGISTRY`): instance | class_balanced (q=0) |
    sqrt (q=1/2) | class_aware (4 per class visit) | progressive (needs ``epochs``)."""
    if name not in SAMPLER_REGISTRY:
        raise DataError(f"unknown sampler {name!r}; use one of {SAMPLERS}")
    return factory(SAMPLER_REGISTRY, name)(labels, seed=seed, num_samples=num_samples, epochs=epochs)


class SequentialEpochSampler(EpochSampler):
    """0, 1, ..., N-1 every epoch (evaluation order; what a rank shard of an eval split slices)."""

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        return torch.arange(self.num_samples, dtype=torch.int64) % self.labels.numel()


class RankSlicedSampler(EpochSampler):
    """Rank r of N keeps the strided slice ``base.indices(e)[r::N]`` of the shared epoch order (DDP).

    Every rank computes the same order (a pure function of (seed, e)), so the N slices are disjoint,
    their union is the single-process epoch, and with a per-rank batch of B/N the ranks' step-k
    batches together are the single-process batch k. ``rank``/``world_size`` also give the global
    position of local position p: r + N p (the file loader seeds each sample's augmentation with it).
    """

    def __init__(self, base: EpochSampler, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.base, self.rank, self.world_size = base, int(rank), int(world_size)
        self.labels, self.seed, self.epoch = base.labels, base.seed, base.epoch
        self.num_samples = len(range(self.rank, len(base), self.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        return self.base.indices(self.epoch if epoch is None else epoch)[self.rank::self.world_size]
