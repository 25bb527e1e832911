"""Host and GPU time of the pieces of the layer's gate on one GPU (a diagnosis, not a benchmark).

    python benchmarks/diag_gate.py [--tokens 4096] [--d-model 1024] [--experts 8] [--k 2]

Last, the whole gate of a forward without LSH (`GraphedGate`, what the layer's "gate" phase holds)
on the legacy and the fast path (`LSHSIM_GATE_PATH`), three ways, medians of 30 calls:
host = host time of the call; idle = CUDA events around the call with the GPU idle before it (the
layer's benchmark convention: the phase then lasts as long as the host takes to launch it); held =
the same events with the GPU held busy by a 0.5 ms spin first, so that the host has queued the
whole gate before the GPU reaches the first event: the gate's GPU time, as inside a training step
where earlier kernels keep the GPU busy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lshsim.dispatch import RouterConfig  # noqa: E402
from lshsim.executor.moe_layer import DistributedMoE, MoEContext, _gate_inputs, rank_inputs  # noqa: E402
from lshsim.executor.moe_ops import gather_choices  # noqa: E402
from lshsim.executor.timing import PhaseTimer  # noqa: E402
from lshsim.executor.workload import WorkloadConfig  # noqa: E402


def per_call_s(fn, calls: int) -> tuple[float, float]:
    """(host seconds per call, seconds per call until the GPU is done) of `calls` calls back to back."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter()
    torch.cuda.synchronize()
    return (host - start) / calls, (time.perf_counter() - start) / calls


def gate_times(layer, x0: torch.Tensor, ids: torch.Tensor, calls: int = 30) -> tuple[float, float, float]:
    """Medians of (host s, CUDA-event s with the GPU idle before, CUDA-event s with the GPU held)."""
    import statistics

    x = x0.detach().requires_grad_(True)
    for _ in range(3):
        layer.gate_graph(x, ids)
    host, idle, held = [], [], []
    for hold in (False, True) * calls:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        if hold:
            torch.cuda._sleep(1_000_000)  # ~0.5 ms at 1.98 GHz
        start.record()
        t0 = time.perf_counter()
        layer.gate_graph(x, ids)
        end.record()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        (held if hold else idle).append(start.elapsed_time(end) / 1e3)
        if not hold:
            host.append(t1 - t0)
    return statistics.median(host), statistics.median(idle), statistics.median(held)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--d-ffn", type=int, default=None, help="default 2 d_model")
    args = parser.parse_args()
    device = torch.device("cuda")
    workload = WorkloadConfig(name="diag", tokens_per_rank=args.tokens, d_model=args.d_model, d_ffn=args.d_ffn or 2 * args.d_model,
                              num_experts=args.experts, router=RouterConfig("topk", k=args.k, capacity_factor=1.25))
    timer = PhaseTimer(device)
    ctx = MoEContext(rank=0, world_size=1, device=device, timer=timer)
    model = DistributedMoE(workload, ctx, torch.bfloat16)
    x0, ids = rank_inputs(workload, 0, device, torch.bfloat16)
    for _ in range(5):
        timer.start_iteration()
        out = model.forward(x0.detach().requires_grad_(True), ids)
        out.y.float().sum().backward()
        timer.finish_iteration()
    rows = []
    for _ in range(10):
        x = x0.detach().requires_grad_(True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        inputs = _gate_inputs(workload, model.gate, x, with_bias=False)
        t1 = time.perf_counter()
        plan, order, inv, counts, token_of_row = model.routing({"token_ids": ids, **inputs})
        t2 = time.perf_counter()
        send = gather_choices(x, order, inv, plan.num_choices, token_of_row)
        t3 = time.perf_counter()
        torch.cuda.synchronize()
        t4 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
    rows.sort(key=lambda r: sum(r))
    med = rows[len(rows) // 2]
    print(f"host us: gate_inputs {med[0]*1e6:.1f} routing {med[1]*1e6:.1f} gather {med[2]*1e6:.1f} "
          f"then GPU drain {med[3]*1e6:.1f}; replays {model.routing.replays}")
    # the routing call alone, back to back (host cost per call)
    host_s, done_s = per_call_s(lambda: model.routing({"token_ids": ids, **inputs}), 50)
    print(f"routing x50: host {host_s * 1e6:.1f} us per call, all done after {done_s * 1e6:.1f} us per call")
    # phase timer on the forward
    times = []
    for _ in range(10):
        timer.start_iteration()
        model.forward(x0.detach().requires_grad_(True), ids)
        times.append(timer.finish_iteration()[("gate", "forward")])
    gate = sorted(t[1] - t[0] for t in times)[5]
    print(f"gate phase (CUDA events) {gate * 1e6:.1f} us")
    for path in ("legacy", "fast"):
        os.environ["LSHSIM_GATE_PATH"] = path
        try:
            layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=device), torch.bfloat16)
        finally:
            os.environ.pop("LSHSIM_GATE_PATH")
        host_s, idle_s, held_s = gate_times(layer, x0, ids)
        print(f"gate ({path}): host {host_s * 1e6:.1f} us, events idle {idle_s * 1e6:.1f} us, "
              f"events held (GPU time) {held_s * 1e6:.1f} us; replays {layer.gate_graph.replays}")
    # eager routing for comparison
    model.routing.captured.enabled = False
    host_s, _ = per_call_s(lambda: model.routing({"token_ids": ids, **inputs}), 20)
    print(f"eager routing: host {host_s * 1e6:.1f} us per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
