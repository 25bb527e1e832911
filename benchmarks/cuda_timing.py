"""CUDA-event timings of a callable (the benchmarks' timing helpers): the fastest, the median."""
from __future__ import annotations

import torch


def times_s(fn, repeats: int, warmup: int, before=None) -> list[float]:
    """Seconds of each of `repeats` calls of fn (CUDA events around each), after `warmup` calls;
    `before()`, when given, runs before each timed call's start event (e.g. a spin kernel that keeps
    the GPU busy while the host queues fn)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def best_s(fn, repeats: int = 20) -> float:
    """Seconds of the fastest of `repeats` calls of fn (CUDA events, after one warm-up call)."""
    return min(times_s(fn, repeats, 1))


def median_s(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Seconds of the median of `repeats` calls of fn (CUDA events, after `warmup` calls)."""
    return sorted(times_s(fn, repeats, warmup))[(repeats - 1) // 2]
