"""What every benchmark here times with: the median wall time of warm calls."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def median_seconds(fn: Callable[[], object], repeats: int, wait: bool = True) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one untimed call (compilation, caches), each
    call waited for until its arrays are ready. ``wait=False`` for calls whose results are on the host
    already: ``jax.block_until_ready`` walks every leaf of a result, and over the 256 numpy scalars of
    Pythia-1B's fits that walk took 0.3-0.7 ms on the H200's host, more than the call's own host work."""
    ready = jax.block_until_ready if wait else (lambda result: result)
    ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)
