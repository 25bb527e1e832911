"""CUDA graph capture with Python's cyclic garbage collector kept out of it.

`capture(graph, **kwargs)` is `torch.cuda.graph(graph, **kwargs)` with one difference: Python's
cyclic garbage collector runs once before the capture begins and is paused until it ends.

Why: the collector runs whenever Python allocates enough objects, which a capture does. If it
runs inside a capture and finds a dead reference cycle that holds an earlier CUDA graph (a layer
of an earlier run, a gate's graph cache), destroying that graph releases its memory pool, and a
CUDA call made for that while this thread captures fails the capture with "operation not
permitted when stream is capturing". Whether that happens depends on when the collector last
ran, so the failure comes and goes with the order of earlier work. torch's own
`torch.cuda.graph` collected before every capture until it made that optional
(`torch.compiler.config.force_cudagraph_gc`, off by default, because collecting is slow when
many graphs are captured in a row); the executor captures a handful of graphs per layer, once,
so the collection costs little here.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def capture(graph, **kwargs) -> Iterator[None]:
    """`torch.cuda.graph(graph, **kwargs)`, collecting dead cycles first and none during it."""
    import torch

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, **kwargs):
            yield
    finally:
        if was_enabled:
            gc.enable()
