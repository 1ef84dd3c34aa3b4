"""Data-parallel training over N processes (one per GPU): process group, DDP, rank shards, gathers.

Launch: ``ltr run --nproc N`` / :func:`ltr_core.launch.run_distributed` start
``torchrun --standalone --nproc_per_node=N -m ltr_core.train`` as a subprocess, and ``ltr_core.train``
calls :func:`init_from_env`. The process group comes from the environment: torchrun's
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (+ ``MASTER_ADDR`` / ``MASTER_PORT``), else SLURM's
``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` (one task per GPU, srun); backend nccl on
CUDA, gloo on the CPU. Without those variables (or with one process) nothing is initialised and
every helper here is the identity, so a single-process run executes exactly the code it always did.

What makes an N-process run the same experiment as the one-process run of the same config:

* **batch**: ``batch_size`` is the global batch B; each rank takes b = B / N (B must divide);
* **sampling**: every rank computes the same epoch order (``sampler.indices(epoch)``, a pure function
  of (seed, epoch)) and keeps the strided slice ``order[rank::N]``; step k of rank r then holds
  positions kB + r, kB + r + N, ... so the union of the ranks' step-k batches is the single-process
  batch k (:class:`ltr_core.data.samplers.RankSlicedSampler`);
* **gradients**: DDP averages the ranks' gradients of their batch-mean losses = the gradient of the
  global-batch mean when the rank batches are equal (an epoch's last, partial batch is weighted as
  the mean of the rank means);
* **evaluation**: each rank predicts the strided slice ``r::N`` of the evaluation split;
  :func:`gather_strided` all-gathers logits and labels (shards padded to equal length), interleaves
  them back into the original order and drops the padding, so the metrics see the single-process
  logits;
* **BatchNorm**: with ``dist_sync_bn`` on CUDA the BN layers become SyncBatchNorm (statistics over
  the global batch, as on one GPU); on the CPU (gloo) SyncBatchNorm does not exist and each rank
  normalises with its own batch statistics. Buffers are broadcast from rank 0 after every epoch, so
  evaluation and checkpoints use one set of running statistics;
* **randomness**: the device augmentation generator and the global RNG (dropout, mixup) get a
  per-rank seed (:func:`rank_seed`, rank 0 keeps the single-process seed); on the file path each
  sample's augmentation seed comes from its global position, so crops equal the one-process crops;
* **files**: only rank 0 writes (config, metrics, checkpoints, results); every rank resumes from the
  same checkpoint.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

import torch
from torch import nn

_SEED_MIX = 0x9E3779B1  # odd constant: rank r > 0 gets seed * 1_000_003 + r * _SEED_MIX (mod 2^63)


@dataclass(frozen=True)
class EnvRanks:
    """Rank, world size and local rank as the launcher's environment states them."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "none"  # torchrun | slurm | none


def env_ranks(environ=None) -> EnvRanks:
    """Read torchrun variables first (they win inside a SLURM job that runs torchrun), then SLURM's."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return EnvRanks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env and int(env["SLURM_NTASKS"]) > 1:
        return EnvRanks(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm")
    return EnvRanks()


def _slurm_master(env) -> tuple[str, str]:
    """MASTER_ADDR / MASTER_PORT for srun-launched tasks: the job's first host, a port from the job id."""
    addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "")
    port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    return addr or "127.0.0.1", port


def first_host(nodelist: str) -> str:
    """First host of a compressed SLURM node list: ``gpu[03-05,07],cpu1`` -> ``gpu03``; ``a,b`` -> ``a``."""
    m = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist)
    prefix, ranges = m.group(1), m.group(2)
    return prefix + re.split(r"[-,]", ranges)[0] if ranges else prefix


def init_from_env(device: str = "auto", backend: str = "auto", timeout_minutes: float = 30.0) -> bool:
    """Initialise the default process group from the environment; False (and nothing done) for one process.

    ``backend`` auto: nccl when the run uses CUDA, gloo otherwise. On CUDA the process binds to GPU
    ``LOCAL_RANK`` (``device=auto|cuda`` then means that GPU).
    """
    import torch.distributed as td

    ranks = env_ranks()
    if ranks.world_size <= 1:
        return False
    if td.is_initialized():
        return True
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(ranks.local_rank)
    if ranks.source == "slurm":
        addr, port = _slurm_master(os.environ)
        os.environ.setdefault("MASTER_ADDR", addr)
        os.environ.setdefault("MASTER_PORT", port)
    td.init_process_group(backend=backend, rank=ranks.rank, world_size=ranks.world_size,
                          timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def destroy() -> None:
    """Tear the process group down (end of ``ltr_core.train``)."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    import torch.distributed as td

    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank() -> int:
    import torch.distributed as td

    return td.get_rank() if is_distributed() else 0


def world_size() -> int:
    import torch.distributed as td

    return td.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one process that writes files."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        import torch.distributed as td

        td.barrier()


def rank_seed(seed: int) -> int:
    """``seed`` on rank 0 (= the single-process seed); a distinct, deterministic seed on ranks > 0."""
    r = rank()
    return int(seed) if r == 0 else (int(seed) * 1_000_003 + r * _SEED_MIX) % (1 << 63)


def convert_sync_bn(model: nn.Module, device: torch.device, enabled: bool) -> nn.Module:
    """BatchNorm -> SyncBatchNorm under DDP on CUDA (same Parameter objects; state-dict keys unchanged)."""
    if not (enabled and is_distributed() and device.type == "cuda"):
        return model
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_model(model: nn.Module, device: torch.device, *, find_unused: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` inside a process group, else ``model`` itself."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def sync_buffers(model: nn.Module) -> None:
    """Broadcast every floating buffer (BN running statistics, ...) from rank 0 to all ranks."""
    if not is_distributed():
        return
    import torch.distributed as td

    for buf in model.buffers():
        td.broadcast(buf.data, src=0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a copy; ``t`` itself is left alone). Identity for one process."""
    if not is_distributed():
        return t
    import torch.distributed as td

    out = t.detach().clone()
    td.all_reduce(out, op=td.ReduceOp.SUM)
    return out


def gather_strided(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Undo a strided split: rank r holds rows r, r+N, r+2N, ... of each full tensor.

    Each rank's shard (n_r rows, n_r = ceil((n - r) / N)) is padded to m = max n_r rows, all-gathered
    to [N, m, ...], transposed to [m, N, ...] and flattened: row j*N + r is the j-th row of rank r,
    i.e. the original row order; the first n = sum n_r rows are kept, which drops exactly the padding
    (a padded slot (m-1)*N + r of a short rank lies at or past n). Identity for one process.
    """
    if not is_distributed():
        return tensors
    import torch.distributed as td

    world = td.get_world_size()
    first = tensors[0]
    n_local = torch.tensor([first.shape[0]], device=first.device, dtype=torch.int64)
    counts = [torch.zeros_like(n_local) for _ in range(world)]
    td.all_gather(counts, n_local)
    counts = [int(c.item()) for c in counts]
    total, m = sum(counts), max(counts)
    out = []
    for t in tensors:
        if t.shape[0] != first.shape[0]:
            raise ValueError(f"gather_strided: tensors have {t.shape[0]} and {first.shape[0]} rows; "
                             f"give one row per sample")
        pad = torch.zeros((m - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        shard = torch.cat([t, pad]).contiguous()
        parts = [torch.empty_like(shard) for _ in range(world)]
        td.all_gather(parts, shard)
        out.append(unstride(parts, total))
    return tuple(out)


def unstride(parts: list[torch.Tensor], total: int) -> torch.Tensor:
    """Rows of the full tensor from equal-length (padded) strided shards: row j*N + r = parts[r][j]; first ``total``."""
    m, world = parts[0].shape[0], len(parts)
    return torch.stack(parts, 1).reshape(m * world, *parts[0].shape[1:])[:total]


def all_finite(t: torch.Tensor) -> bool:
    """``torch.isfinite(t).all()`` on every rank (so all ranks stop together on a NaN loss)."""
    bad = (~torch.isfinite(t)).any().to(torch.float32).reshape(1)
    return not bool(all_reduce_sum(bad).item() > 0)
