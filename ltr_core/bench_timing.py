"""Honest timing for ``ltr bench``: warm-up by time, several samples, medians, variants alternated.

Noisy machines (shared CPUs, GPU clocks that ramp for the first second) make one short timed loop
meaningless, and timing variant A before variant B puts all the drift on one side. :func:`alternate`

1. warms every variant up for at least ``warmup_s`` seconds *and* ``warmup_calls`` calls (compile,
   cuDNN autotuning, allocator growth, clock ramp), measuring each variant's seconds per call;
2. sizes each sample to about ``sample_s`` seconds of that variant (at least one call);
3. takes ``samples`` rounds, each round timing every variant once in turn (A B C, A B C, ...), so a
   slow phase of the machine hits every variant alike;
4. reports the median images/s per variant, with the samples and their spread (max/min).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping

Step = Callable[[], int]  # one call: some training work; returns the images it processed


def _timed(fn: Step, calls: int, sync: Callable[[], None]) -> tuple[float, int]:
    sync()
    t0 = time.perf_counter()
    images = sum(fn() for _ in range(calls))
    sync()
    return time.perf_counter() - t0, images


def alternate(variants: Mapping[str, Step], *, warmup_s: float = 2.0, warmup_calls: int = 3, samples: int = 5,
              sample_s: float = 1.0, sync: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """{name: {"median", "samples", "spread", "calls_per_sample"}} in images/s (see the module doc)."""
    per_call = {}
    for name, fn in variants.items():
        start, calls = time.perf_counter(), 0
        while calls < max(1, warmup_calls) or time.perf_counter() - start < warmup_s:  # >= 1 call sizes the samples
            seconds, _ = _timed(fn, 1, sync)
            calls += 1
        per_call[name] = max(seconds, 1e-6)
    sizes = {name: max(1, round(sample_s / per_call[name])) for name in variants}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(samples):
        for name, fn in variants.items():
            seconds, images = _timed(fn, sizes[name], sync)
            rates[name].append(images / seconds)
    return {name: {"median": statistics.median(r), "samples": r, "spread": max(r) / min(r),
                   "calls_per_sample": sizes[name]} for name, r in rates.items()}
