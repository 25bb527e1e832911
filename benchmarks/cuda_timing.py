"""The fastest of several CUDA-event timings of a callable (the benchmarks' one timing helper)."""
from __future__ import annotations

import torch


def best_s(fn, repeats: int = 20) -> float:
    """Seconds of the fastest of `repeats` calls of fn (CUDA events, after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return min(times)
