"""Which GPU kernels take the gate's time, per shape, on one GPU (torch.profiler, CUDA activities).

    python benchmarks/profile_gate.py [--shapes deepseek-v3-like gpu-uniform-d1024-t4k ...] [--calls 20]
                                      [--json OUT.json]

For every shape (names of `bench_moe_layer.py`'s shapes) the layer is built on one GPU and warmed
up by three forwards and backwards; then the gate's work is run `--calls` times under the profiler
and every kernel's device time is summed per call:

* shapes without LSH: `layer.gate_graph(x, token_ids)`, exactly what the layer's "gate" phase runs
  (the copy of x into the graph and one replay of logits, routing, order, gate weights, gather);
* LSH shapes: the gate GEMM, `layer.routing` (its graph replay) and the gather of the T k send
  rows; where the layer has `lsh_gate` (one graph: GEMM, routing, gate weights) that replay instead
  of the first two (the layer's gate phase runs the gather later, in bucket order: the same kernel and size).

Then, without the profiler, the gate's host time per call and its GPU time (CUDA events with the
GPU held busy first, as in `diag_gate.py`), medians of 30 calls, and the gate's roofline (bytes:
read x, write the logits, read and write the T k send rows; 2 T d E FLOPs) against the copy
bandwidth and matrix peak measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_moe_layer  # noqa: E402
from lshsim.executor.moe_layer import DistributedMoE, MoEContext, _gate_inputs, rank_inputs  # noqa: E402
from lshsim.executor.moe_ops import gather_choices  # noqa: E402


def gate_call(layer, x, ids):
    """The gate phase's work of one forward, as a function of no arguments."""
    workload = layer.workload
    if layer.lsh is None and layer.gate_graph.available:
        return lambda: layer.gate_graph(x, ids)

    lsh_graph = getattr(layer, "lsh_gate", None)  # the LSH gate as one graph (fast path), where the layer has it

    def lsh_gate():
        if lsh_graph is not None and lsh_graph.available:
            plan = lsh_graph(x, ids)[0]
            rows = plan.num_tokens * plan.num_choices
            token_of_row = torch.div(torch.arange(rows, device=x.device), plan.num_choices, rounding_mode="floor")
            return gather_choices(x, token_of_row, token_of_row, plan.num_choices, token_of_row)
        inputs = _gate_inputs(workload, layer.gate, x, with_bias=False)
        try:
            plan, order, inv, counts, token_of_row = layer.routing({"token_ids": ids, **inputs}, order=False)
        except TypeError:  # an older layer without the order switch
            plan, order, inv, counts, token_of_row = layer.routing({"token_ids": ids, **inputs})
        rows = plan.num_tokens * plan.num_choices
        token_of_row = torch.div(torch.arange(rows, device=x.device), plan.num_choices, rounding_mode="floor")
        return gather_choices(x, token_of_row, token_of_row, plan.num_choices, token_of_row)
    return lsh_gate


def kernel_table(fn, calls: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total, count = defaultdict(float), defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            name = event.name
            total[name] += event.time_range.elapsed_us()
            count[name] += 1
    rows = [{"kernel": name, "us_per_call": total[name] / calls, "launches_per_call": count[name] / calls}
            for name in total]
    return sorted(rows, key=lambda r: -r["us_per_call"])


def gate_times(fn, calls: int = 30) -> tuple[float, float]:
    """Medians of (host s per call, GPU s per call with the GPU held busy before the call)."""
    host, held = [], []
    for _ in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        torch.cuda._sleep(2_000_000)  # ~1 ms: the host queues the whole gate before the GPU reaches it
        start.record()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        end.record()
        torch.cuda.synchronize()
        host.append(t1 - t0)
        held.append(start.elapsed_time(end) / 1e3)
    return statistics.median(host), statistics.median(held)


def benchmark_shapes() -> dict:
    """bench_moe_layer's shapes (the committed GPU workloads and the built-in ones) by name."""
    options = SimpleNamespace(shapes="all", workloads="data/workloads/gpu-*.yaml", iterations=3, warmup=1)
    return {w.name: w for w in bench_moe_layer.shapes(options)}


def warm_layer(workload, device: torch.device):
    """(layer, x, token ids) of one rank on one GPU, bf16, after three forward + backward passes
    (graph captures, kernel loading and autotuning happen there, not in what is timed)."""
    layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=device), torch.bfloat16)
    x0, ids = rank_inputs(workload, 0, device, torch.bfloat16)
    for _ in range(3):
        layer.forward(x0.detach().requires_grad_(True), ids).y.float().sum().backward()
    return layer, x0, ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["deepseek-v3-like", "gpu-uniform-d1024-t4k",
                                                        "gpu-lsh-d1024-t16k"])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", help="write the tables here")
    args = parser.parse_args()
    device = torch.device("cuda")
    roof = bench_moe_layer.measure_roofline(device)
    by_name = benchmark_shapes()
    out = {"roofline": roof, "shapes": {}}
    summary = []
    for name in args.shapes:
        workload = by_name[name]
        layer, x0, ids = warm_layer(workload, device)
        x = x0.detach().requires_grad_(True)
        fn = gate_call(layer, x, ids)
        for _ in range(3):
            fn()
        table = kernel_table(fn, args.calls)
        host_s, gpu_s = gate_times(fn)
        T, d, E = workload.tokens_per_rank, workload.d_model, workload.num_experts
        k = workload.router.k
        flops = 2.0 * T * d * E
        bytes_ = T * d * 2 + T * E * 4 + 2.0 * T * k * d * 2
        roof_s = max(flops / roof["peak_flops"], bytes_ / roof["hbm_Bps"])
        kernels_us = sum(r["us_per_call"] for r in table)
        launches = sum(r["launches_per_call"] for r in table)
        out["shapes"][name] = {"kernels": table, "host_s": host_s, "gpu_s": gpu_s, "roofline_s": roof_s,
                               "kernel_sum_us": kernels_us, "launches_per_call": launches,
                               "graph": layer.lsh is None and layer.gate_graph.available}
        print(f"== {name}: gate host {host_s * 1e6:.1f} us/call, GPU (held) {gpu_s * 1e6:.1f} us/call, "
              f"kernels {kernels_us:.1f} us in {launches:.0f} launches/call, roofline {roof_s * 1e6:.1f} us")
        for row in table[:args.top]:
            print(f"  {row['us_per_call']:8.1f} us  x{row['launches_per_call']:4.1f}  {row['kernel'][:110]}")
        summary.append((name, host_s, gpu_s, kernels_us, launches, roof_s))
        del layer, fn
        torch.cuda.empty_cache()
    print(f"{'shape':26s} {'host_us':>8s} {'gpu_us':>8s} {'kern_us':>8s} {'launch':>6s} {'roof_us':>8s}")
    for name, host_s, gpu_s, kern, launches, roof_s in summary:
        print(f"{name[:26]:26s} {host_s * 1e6:8.1f} {gpu_s * 1e6:8.1f} {kern:8.1f} {launches:6.0f} {roof_s * 1e6:8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
