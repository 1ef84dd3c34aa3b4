"""Same command, same numbers: what makes a run's floating-point results independent of the thread count.

Measured on a 2-core AVX2 CPU (torch 2.14, see README "Reproducibility"):

* **MKL GEMMs** split small matrix products (a linear layer's weight gradient, [C, B] x [B, D]) over
  the reduction dimension when more threads are available, so 1 and 2 threads round differently.
  MKL's strict conditional-numerical-reproducibility mode (``MKL_CBWR=AVX2,STRICT``) fixes the
  code path and the reduction order for any thread count; it is set when ``ltr_core`` is imported,
  before torch loads MKL (a value the user set is kept). It must be set before the first MKL call of
  the process, so import ``ltr_core`` before running torch code in a notebook.
* **oneDNN convolutions** reduce the weight gradient over the batch per thread on very small feature
  maps (2x2: the last stage of ResNet-32 on 8x8 digits), which again depends on the thread count; at
  CIFAR's 32x32 input the results were bitwise equal for 1 and 2 threads. :func:`pin_threads` runs
  datasets below :data:`SMALL_IMAGE` pixels on one intra-op thread (they are tiny: one thread is
  as fast there), and leaves larger inputs to the process's thread count.
* Across machines: MKL's path is pinned to AVX2 (identical on every AVX2 x86 CPU); oneDNN picks its
  kernels by instruction set (AVX2 / AVX-512 / AMX), so numbers can differ between CPU generations.
  ``ONEDNN_MAX_CPU_ISA=AVX2`` (set by ``make study``) pins that too; GPUs are not covered.
"""

from __future__ import annotations

import os

SMALL_IMAGE = 16  # datasets with images below this size run on one intra-op thread
CBWR = "AVX2,STRICT"

_saved_threads: list[int] = []


def set_environment() -> None:
    """Set ``MKL_CBWR`` (unless the user set it). Called by ``ltr_core/__init__`` before torch is imported."""
    os.environ.setdefault("MKL_CBWR", CBWR)


def pin_threads(data) -> None:
    """One intra-op thread for datasets of images smaller than :data:`SMALL_IMAGE` (see the module doc)."""
    import torch

    if getattr(data, "image_size", SMALL_IMAGE) < SMALL_IMAGE and torch.get_num_threads() != 1:
        _saved_threads.append(torch.get_num_threads())
        torch.set_num_threads(1)


def unpin_threads() -> None:
    """Restore the thread count :func:`pin_threads` changed (a notebook kernel runs several runs)."""
    import torch

    while _saved_threads:
        torch.set_num_threads(_saved_threads.pop())


def describe() -> dict:
    """What results.json records about the numerics of the run."""
    import torch

    return {"mkl_cbwr": os.environ.get("MKL_CBWR", ""), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
            "intra_op_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
