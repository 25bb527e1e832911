"""Where the gate phase's host time goes, per shape, on one GPU: the host time of each step of the
gate path (time.perf_counter, medians of --calls calls, the GPU synchronised before each call so
that no queue is full), and torch.profiler's CPU operators of the whole gate call.

    PYTHONPATH=TREE python benchmarks/gate_host_profile.py [--shapes ...] [--calls 50] [--json OUT]

Runs against the code on PYTHONPATH (the tree whose gate is measured; the script itself imports
nothing else of its own tree), so one copy of it measures a base tree and a new tree alike. Steps:

* `gate`: the gate phase's work of one forward (`profile_gate.gate_call` of that tree: the layer's
  `gate_graph` call without LSH; with LSH the gate GEMM + routing, or the tree's `lsh_gate`, and the
  gather of the T k rows);
* `event_new` / `event_record`: a CUDA event made and recorded / an existing one recorded again
  (the phase timer stamps each phase's ends);
* `copy_x`: one copy of x into a buffer (a graph's static input); `launch`: one tiny kernel;
* without LSH: `split_plan`: the split of the outputs and a DispatchPlan (what the gate does after
  its replay); with LSH: `logits` (the eager gate GEMM under autograd), `routing` (the routing
  graph's replay with its copy of the logits), `lsh_gate` (the new tree's one replay), `gather`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.profile_gate import benchmark_shapes, gate_call, warm_layer
from lshsim.dispatch import DispatchPlan
from lshsim.executor.moe_layer import _gate_inputs
from lshsim.executor.moe_ops import gather_choices


def host_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls + 3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:]) * 1e6


def cpu_ops(fn, calls: int, top: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = [{"op": e.key, "self_cpu_us_per_call": e.self_cpu_time_total / calls, "count_per_call": e.count / calls}
            for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r["self_cpu_us_per_call"])[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["gpu-uniform-d1024-t4k", "gpu-lsh-d1024-t16k",
                                                        "deepseek-v3-like"])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--label", default="")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda")
    by_name = benchmark_shapes()
    out = {}
    for name in args.shapes:
        workload = by_name[name]
        layer, x0, ids = warm_layer(workload, device)
        x = x0.detach().requires_grad_(True)
        gate = gate_call(layer, x, ids)
        steps = {"gate": gate}
        made = torch.cuda.Event(enable_timing=True)
        steps["event_new"] = lambda: torch.cuda.Event(enable_timing=True).record()
        steps["event_record"] = made.record
        buffer = torch.empty_like(x0)
        steps["copy_x"] = lambda: buffer.copy_(x0)
        one = torch.zeros(1, device=device)
        steps["launch"] = lambda: one.add_(1)
        if layer.lsh is None:
            plan = gate()[0]
            flat = torch.zeros(4 * plan.expert_index.numel() + 2 * workload.num_experts, dtype=torch.int64,
                               device=device)
            T, k, E = plan.num_tokens, plan.num_choices, workload.num_experts

            def split_plan():
                ei, sl, order, inv, rest = torch.split(flat, [T * k] * 4 + [2 * E])
                return DispatchPlan(expert_index=ei.view(T, k), gate_weight=plan.gate_weight, slot=sl.view(T, k),
                                    kept=plan.kept, tokens_per_expert=rest[:E], capacity=plan.capacity,
                                    placement=plan.placement, token_rank=plan.token_rank), rest[E:]
            steps["split_plan"] = split_plan
        else:
            inputs = _gate_inputs(workload, layer.gate, x, with_bias=False)
            steps["logits"] = lambda: _gate_inputs(workload, layer.gate, x, with_bias=False)
            steps["routing"] = lambda: layer.routing({"token_ids": ids, **inputs}, order=False)
            if getattr(layer, "lsh_gate", None) is not None and layer.lsh_gate.available:
                steps["lsh_gate"] = lambda: layer.lsh_gate(x, ids)
            plan = layer.routing({"token_ids": ids, **inputs}, order=False)[0]
            rows = plan.num_tokens * plan.num_choices
            tor = torch.div(torch.arange(rows, device=device), plan.num_choices, rounding_mode="floor")
            steps["gather"] = lambda: gather_choices(x, tor, tor, plan.num_choices, tor)
        result = {step: host_us(fn, args.calls) for step, fn in steps.items()}
        ops = cpu_ops(gate, 20, args.top)
        out[name] = {"host_us": result, "cpu_ops": ops}
        print(f"== {args.label} {name}: " + ", ".join(f"{s} {v:.1f}" for s, v in result.items()) + " (host us)")
        for row in ops:
            print(f"   {row['self_cpu_us_per_call']:7.1f} us x{row['count_per_call']:4.1f}  {row['op'][:80]}")
        del layer, gate, steps
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
