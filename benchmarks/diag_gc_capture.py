"""Does a garbage collection inside a CUDA graph capture fail the capture? (GPU diagnostic)

The executor's gate capture failed once in a long GPU test run with "operation not permitted when
stream is capturing" and never again (benchmarks/HISTORY.md, run-aa). The hypothesis: Python's
cyclic collector ran inside the capture and destroyed an earlier, dead graph (its memory pool
released while this thread captured). This script builds a dead reference cycle holding what a
dropped layer holds (a captured graph with its private pool, or plain CUDA tensors), then captures
a new graph with plain `torch.cuda.graph` and forces one collection inside the capture, in each
capture error mode; it prints whether the capture survived. `lshsim.cuda_graph.capture` collects
before a capture and pauses the collector during it, so the collection cannot happen there.

    python benchmarks/diag_gc_capture.py
"""

from __future__ import annotations

import gc

import torch


class _Cycle:
    def __init__(self):
        self.me = self


def trial(holds: str, mode: str, collect_inside: bool) -> str:
    x = torch.arange(1 << 20, device="cuda", dtype=torch.float32)
    gc.collect()
    gc.disable()
    try:
        holder = _Cycle()
        if holds == "graph":
            holder.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(holder.graph, pool=torch.cuda.graph_pool_handle()):
                holder.y = x * 2
        else:
            holder.y = torch.empty(1 << 24, device="cuda")
        del holder
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode=mode):
                y = x + 1
                if collect_inside:
                    gc.collect()
                z = y * 3
            graph.replay()
            torch.cuda.synchronize()
            ok = torch.equal(z, (x + 1) * 3)
            return "captured, replay " + ("correct" if ok else "WRONG")
        except RuntimeError as err:
            return "FAILED: " + " ".join(str(err).split())[:90]
    finally:
        gc.enable()
        torch.cuda.synchronize()
        gc.collect()


def main() -> None:
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| dead cycle holds | capture_error_mode | gc inside the capture | result |")
    print("|---|---|---|---|")
    for holds in ("graph", "tensor"):
        for mode in ("global", "thread_local", "relaxed"):
            for inside in (False, True):
                try:
                    result = trial(holds, mode, inside)
                except RuntimeError as err:  # a failed capture can leave the context unusable
                    result = "ERROR after: " + " ".join(str(err).split())[:80]
                print(f"| {holds} | {mode} | {'yes' if inside else 'no'} | {result} |", flush=True)


if __name__ == "__main__":
    main()
