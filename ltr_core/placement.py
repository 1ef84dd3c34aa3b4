"""Where a suite's local workers run: their thread count and, with GPUs, one GPU each round-robin
(``ltr suite --workers N``). Plain environment variables, set before a worker imports torch."""

from __future__ import annotations

import os


def visible_gpus() -> list[str]:
    """The GPUs runs may be placed on: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device (none: [])."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA build: CPU only
        return []


def worker_env(slot: int, threads: int, gpus: list[str]) -> dict[str, str]:
    """The environment of worker ``slot``: ``threads`` BLAS/OpenMP threads and, with GPUs, one of them
    round-robin (``CUDA_VISIBLE_DEVICES``: slot 0 -> gpus[0], slot 1 -> gpus[1], ...; more workers than
    GPUs put several runs on one GPU, which suits small models such as ResNet-32 where memory allows)."""
    env = {"OMP_NUM_THREADS": str(threads)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def _worker_init(threads: int, gpus: list[str], counter) -> None:
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    os.environ.update(worker_env(slot, threads, gpus))  # inherited by the papermill kernels this worker starts
