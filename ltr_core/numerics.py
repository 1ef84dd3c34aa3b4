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
* Across machines: every x86 CPU runs the AVX2 kernels unless told otherwise. MKL's path is pinned by
  ``MKL_CBWR``; oneDNN (convolutions) and ATen (elementwise ops, batch norm, reductions; also the vector
  ISA of inductor's generated CPU code) pick kernels by instruction set, AVX2 / AVX-512 / AMX, with
  other vector widths and hence other rounding. :func:`set_environment` sets ``ONEDNN_MAX_CPU_ISA=AVX2``
  and ``ATEN_CPU_CAPABILITY=avx2`` too. Measured: the CIFAR-10-LT IR 100 unit-init LDAM-DRW run
  (seed 0) gave top-1 39.67 after epoch 9 on a 2-core Zen 4 EPYC with its native AVX-512 kernels,
  39.3 on a Zen 2 (AVX2) with the same code, and 39.28 with the AVX2 pins on the Zen 4 (epochs 19,
  29, 39: 43.84, 48.19, 57.78 against the Zen 2's 43.8, 48.2, 57.8); the thread-count test of a CIFAR
  run (``tests/test_integrity.py``) failed on the Zen 4's native kernels and passes with the pins. ``LTR_NATIVE_ISA=1`` keeps each library's own choice (faster on AVX-512/AMX CPUs,
  needed for fast bf16 there); such a run records the kernels in its inputs
  (:func:`kernels_identity`), so it is never resumed or skipped on a CPU that would compute it
  differently. GPUs are not covered.
"""

from __future__ import annotations

import os

SMALL_IMAGE = 16  # datasets with images below this size run on one intra-op thread
CBWR = "AVX2,STRICT"

_saved_threads: list[int] = []


PINNED_ISA = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}  # x86: the AVX2 kernels everywhere


def native_isa_requested() -> bool:
    """``LTR_NATIVE_ISA=1``: each library picks its kernels for this CPU (not the same numbers everywhere)."""
    return os.environ.get("LTR_NATIVE_ISA", "").strip().lower() in ("1", "true", "yes")


def set_environment() -> None:
    """Set ``MKL_CBWR`` and, on x86 unless ``LTR_NATIVE_ISA=1``, :data:`PINNED_ISA` (a value the user set
    is kept). Called by ``ltr_core/__init__`` before torch is imported."""
    import platform

    os.environ.setdefault("MKL_CBWR", CBWR)
    if platform.machine().lower() in ("x86_64", "amd64") and not native_isa_requested():
        for key, value in PINNED_ISA.items():
            os.environ.setdefault(key, value)
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if capability and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # inductor's cache key leaves the vector ISA out: a graph compiled for AVX-512 was reused under
        # ATEN_CPU_CAPABILITY=avx2 and crashed (SIGSEGV in a generated backward kernel, torch 2.14):
        # one cache folder per capability
        import getpass
        import tempfile

        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container user without a name
            user = str(os.getuid())
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}-{capability}")


def kernels_identity() -> dict:
    """The run-identity entry of the CPU kernels: empty for the AVX2 kernels every x86 CPU runs by default
    (so runs made before this record existed keep their digest), else what this process computes with."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    if capability == "AVX2" and onednn.upper() == "AVX2":
        return {}
    return {"cpu_kernels": {"aten": capability, "onednn_max_cpu_isa": onednn or "native"}}


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
