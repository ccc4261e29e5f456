"""Shared by the benchmark scripts."""

from __future__ import annotations

import time


def best_of(fn, repeats: int) -> tuple[float, object]:
    """(minimum wall time over ``repeats`` calls, the last result): min-of-N, as this machine's speed swings."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
