"""The executor's MoE layer, phase by phase, against the hardware's roofline measured in the same run.

    # one GPU, or W GPUs of one node (torchrun sets the ranks):
    python -m torch.distributed.run --nproc_per_node W benchmarks/bench_moe_layer.py --out OUT.json
    .venv/bin/python benchmarks/bench_moe_layer.py --device cpu --shapes tiny      # CPU smoke run

Shapes: the distinct layer shapes of `data/workloads/*.yaml` (`--workloads GLOB`, held-out GPU
workloads by default) and a DeepSeek-V3-like layer (d 7,168, 256 experts, top-8, d_ffn 2,048,
4,096 tokens per rank), with and without LSH (L = 6, d' = 16), and
the same layer with 64 experts (`deepseek-v3-like-e64`: the issue's measured expert shape, and one
rank's expert load of DeepSeek-V3-like at EP 4, 512 rows per expert).

Every shape runs through `lshsim.executor.run.run_workload` (the command `lshsim run` uses): the
phases' CUDA-event medians over the iterations, forward and backward, slowest rank per iteration.
Before the shapes, the run measures the roofline it compares with:

* `peak_flops`: a 8,192^3 bf16 matmul (best of 10), the matrix peak this GPU reaches;
* `hbm_Bps`: a 1 GiB device-to-device copy (read + write bytes over time, best of 10).

Per phase: the measured time, the roofline time max(FLOPs / peak_flops, bytes / hbm_Bps) with the
phase's FLOPs and HBM bytes (below), and roofline / measured (1.0 = at the roofline).

  gate          2 T d E FLOPs (linear gate); bytes: read x, write logits, gather the T k send rows
  lsh_compress  2 T d L d' FLOPs (hash); bytes: read x, read the T k send rows, write centroids
  other         the split-size exchange (no roofline: a small all-to-all and one copy to the host)
  expert        forward 4 R d f FLOPs, bytes of `lshsim.sim.phases.expert_cost`; backward twice the
                forward's FLOPs; R = rows this rank's experts received
  lsh_restore   bytes: read the restored rows' centroid outputs, centroids and tokens, write the rows
  *_a2a         against the bare `all_to_all_single` of the same splits (`bare_a2a_s`), not a roofline

Two timing conventions for the phases (issue 11). The default, the one the targets are judged on:
every layer iteration starts from an idle GPU (the timer synchronises at the end of the previous
one), so the first phase, the gate, also holds the host's launch of its work on an idle GPU. With
`--behind-busy-gpu` every shape then runs again "behind a busy GPU": before each layer iteration a
spin kernel (`torch.cuda._sleep`, `--busy-cycles`, default 10^6 cycles, about 0.5 ms on an H200) is
queued, so the host queues the gate while the GPU spins, as the previous layer's kernels would hide
it in a training step, and the gate's events hold its GPU time. The table "gate share of the
forward, two conventions" gives both per shape; `gate_start_us` (the gate's first event after the
spin's end, slowest rank, median iteration) near 0 says the host had queued the gate's start before
the spin ended. The busy-GPU pass is reported beside the other and changes neither its numbers nor
the targets. CUDA only: on the CPU the option is refused.

With `--gate-parts` (CUDA) every shape without LSH also times its gate graph with and without the
gather of the T k send rows (GPU time behind a spin, `gate_parts`): the routing alone (logits,
top-k, capacity, order, weights) against the packing of the send rows, as shares of the forward.

Targets (issue "An executor MoE layer as fast as the hardware allows") are checked last and
printed as a table: gate <= 5% of the forward, other < 50 us, expert forward >= 60% of peak at
large shapes (R d f >= 2^34), expert backward <= 2.5x forward, LSH compress <= 0.1 ms per 64 MiB.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import glob
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cuda_timing import best_s, times_s  # noqa: E402
from lshsim.dispatch import RouterConfig  # noqa: E402
from lshsim.executor.run import run_workload  # noqa: E402
from lshsim.executor.runtime import Progress, init_runtime, shutdown  # noqa: E402
from lshsim.executor.workload import WorkloadConfig, load_workload  # noqa: E402
from lshsim.sim.phases import expert_cost  # noqa: E402

DEEPSEEK = dict(name="deepseek-v3-like", tokens_per_rank=4096, d_model=7168, d_ffn=2048, num_experts=256,
                router=RouterConfig("topk", k=8, capacity_factor=None))
#: the issue's own measured expert shape (top-8 of 64 experts, d 7,168, d_ffn 2,048, 4,096 tokens; expert backward
#: 66.5 ms against a 4.3 ms forward on 2 x H200 when the issue was filed), which is also one rank's expert load of DeepSeek-V3-like
#: at EP 4: 64 local experts receiving 4 ranks x 4,096 tokens x 8 choices / 256 experts = 512 rows each (on one GPU
#: DeepSeek-V3-like's 256 experts get 128 rows each and read their weights at a lower arithmetic intensity)
DEEPSEEK_E64 = {**DEEPSEEK, "name": "deepseek-v3-like-e64", "num_experts": 64}
LSH_VARIANT = {"family": "cross_polytope", "num_hashes": 6, "proj_dim": 16, "seed": 0}
#: break-even shapes: one layer without LSH and with LSH at two resolutions (two compression rates),
#: on the same clustered tokens (256 unit-norm centres, noise 0.1)
BREAKEVEN = dict(name="breakeven-d4096-t8k", tokens_per_rank=8192, d_model=4096, d_ffn=8192, num_experts=8,
                 router=RouterConfig("topk", k=2, capacity_factor=None), input_clusters=256, input_noise=0.1)
BREAKEVEN_LSH = {"lsh-L6": {"family": "cross_polytope", "num_hashes": 6, "proj_dim": 16, "seed": 0},
                 "lsh-L2": {"family": "cross_polytope", "num_hashes": 2, "proj_dim": 16, "seed": 0}}
TINY = dict(name="tiny", tokens_per_rank=256, d_model=64, d_ffn=128, num_experts=8,
            router=RouterConfig("topk", k=2, capacity_factor=1.25))


def measure_roofline(device: torch.device) -> dict:
    """The bf16 matrix peak and the HBM copy bandwidth this device reaches (best of 10 each)."""
    if device.type != "cuda":
        return {"peak_flops": None, "hbm_Bps": None}
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    src = torch.empty(1 << 29, device=device, dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)

    gemm_s = best_s(lambda: a @ b, 10)
    copy_s = best_s(lambda: dst.copy_(src), 10)
    return {"peak_flops": 2 * n ** 3 / gemm_s, "hbm_Bps": 2 * src.numel() * 2 / copy_s}


def measure_count_exchange(runtime, num_experts: int = 256, repeats: int = 50) -> dict | None:
    """The split-size exchange alone, as the layer runs it: ranks aligned (untimed), then the
    exchange; median over `repeats` of the host wall time (the layer's "other" ends when the host
    has the counts). Two ways: "eager" (the legacy path: an all-to-all of E int64 counts, a cat and
    `.tolist()`) and "graph" (`CountExchange` forced to its graph, which the layer uses on several
    ranks only with LSHSIM_EXCHANGE_GRAPH=1: one CUDA graph replay, a stream synchronisation and a
    read of pinned host memory). None on one rank."""
    import statistics

    from lshsim.executor.comm import CountExchange, align_ranks, exchange_counts

    if runtime.world_size == 1:
        return None
    counts = torch.arange(num_experts, device=runtime.device)
    graphed = CountExchange(num_experts, runtime.device, enabled=True)  # the graph, also on several ranks
    graphed.load(counts, counts.sum())

    def eager():
        return torch.cat([counts, exchange_counts(counts), counts.sum().reshape(1)]).tolist()

    result = {"num_experts": num_experts, "repeats": repeats}
    for name, fn in (("eager", eager), ("graph", lambda: graphed()[0][:2 * num_experts + 1])):
        walls = []
        for it in range(repeats + 5):
            align_ranks(runtime.device)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            host = fn()
            wall = time.perf_counter() - start
            if it >= 5:
                walls.append(wall)
        assert len(host) == 2 * num_experts + 1
        result[name] = {"median_s": statistics.median(walls), "max_s": max(walls)}
    result["graph_replays"] = graphed.replays
    result["median_s"], result["max_s"] = result["graph"]["median_s"], result["graph"]["max_s"]
    return result


def shapes(args) -> list[WorkloadConfig]:
    common = dict(iterations=args.iterations, warmup=args.warmup, sync_phases=True, backward=True, dtype="auto")
    if args.shapes == "tiny":
        return [WorkloadConfig(**TINY, **common),
                WorkloadConfig(**{**TINY, "name": "tiny-lsh"}, lsh=dict(LSH_VARIANT), **common)]
    if args.shapes == "breakeven":
        return [WorkloadConfig(**BREAKEVEN, **common)] + [
            WorkloadConfig(**{**BREAKEVEN, "name": f"{BREAKEVEN['name']}-{suffix}"}, lsh=dict(lsh), **common)
            for suffix, lsh in BREAKEVEN_LSH.items()]
    found, seen = [], set()
    if args.shapes in ("all", "workloads"):
        for path in sorted(glob.glob(str(ROOT / args.workloads))):
            workload = load_workload(path)
            key = (workload.tokens_per_rank, workload.d_model, workload.d_ffn, workload.num_experts,
                   workload.router.key(), json.dumps(workload.lsh, sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            found.append(dataclasses.replace(workload, **common, world_size=None))
    if args.shapes in ("all", "deepseek"):
        found.append(WorkloadConfig(**DEEPSEEK, **common))
        found.append(WorkloadConfig(**DEEPSEEK_E64, **common))
        found.append(WorkloadConfig(**{**DEEPSEEK, "name": "deepseek-v3-like-lsh"}, lsh=dict(LSH_VARIANT),
                                    input_clusters=4096, input_noise=0.1, **common))
    return found


def phase_rooflines(workload: WorkloadConfig, meta: dict, world: int, roof: dict) -> dict:
    """(name, direction) -> (flops, bytes) of the phases that have a roofline."""
    measured = meta["measured"]
    b = meta["workload"]["bytes_per_token"] // workload.d_model  # bytes per element
    T, d, f, E = workload.tokens_per_rank, workload.d_model, workload.d_ffn, workload.num_experts
    k = max(1, round(measured["kept"] / max(world * T, 1))) if measured["kept"] else 1
    kept_per_rank = measured["kept"] / world
    traffic = torch.tensor(measured["traffic_bytes"], dtype=torch.float64)  # (W, W) bytes of the dispatch
    rows_received = float(traffic.sum(0).max()) / meta["workload"]["bytes_per_token"]  # busiest rank
    rooflines = {}
    gate_flops = 2.0 * T * d * E if workload.router.name in ("topk", "expert_choice") else float(T * d)
    gate_bytes = T * d * b + T * E * 4 + 2.0 * kept_per_rank * d * b
    rooflines[("gate", "forward")] = (gate_flops, gate_bytes)
    flops, hbm = expert_cost(rows_received, d, f, E // world, b)
    rooflines[("expert", "forward")] = (flops, hbm)
    rooflines[("expert", "backward")] = (2 * flops, 2 * hbm)
    lsh = measured.get("lsh")
    if lsh:
        config = workload.lsh_config()
        proj = config.effective_proj_dim(d)
        centroids = lsh["centroids_sent"] / world
        rooflines[("lsh_compress", "forward")] = (2.0 * T * d * config.num_hashes * proj,
                                                  T * d * b + kept_per_rank * d * b + centroids * d * b)
        rooflines[("lsh_restore", "forward")] = (0.0, 4.0 * kept_per_rank * d * b)
    return rooflines


def spin_s(cycles: int, device: torch.device, repeats: int = 5) -> float:
    """GPU time of one `torch.cuda._sleep(cycles)` (CUDA events, median of `repeats`, one warm-up)."""
    times = []
    for it in range(repeats + 1):
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(int(cycles))
        end.record()
        end.synchronize()
        if it:
            times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[(len(times) - 1) // 2]


def parse_cycles(text: str) -> list[int]:
    """`--busy-cycles`: comma-separated positive integers (spin cycles), e.g. "1000000,4000000"."""
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated cycle counts, e.g. 1000000") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every cycle count must be a positive integer")
    return values


def gate_conventions(idle: dict, busy: list[dict]) -> dict:
    """One shape's gate share of the forward in both conventions: the idle GPU (the targets') and
    behind a busy GPU (one entry per spin length); `launch_share_of_gate` = (idle gate - busy gate)
    / idle gate, the part of the idle-GPU gate phase that the busy GPU hides."""
    base = before_after(idle)
    out = {"shape": idle["workload"]["name"], "world_size": idle["world_size"],
           "idle": {"forward_s": base["forward_s"], "gate_s": base["gate_s"], "gate_share": base["gate_share"]},
           "busy": []}
    for result in busy:
        held = before_after(result)
        out["busy"].append({"cycles": result["hold_gpu_cycles"], "forward_s": held["forward_s"],
                            "gate_s": held["gate_s"], "gate_share": held["gate_share"],
                            "gate_start_after_spin_s": result["gate_start_s"],
                            "launch_share_of_gate": (base["gate_s"] - held["gate_s"]) / base["gate_s"]
                            if base["gate_s"] > 0 else None})
    return out


def run_shape(workload: WorkloadConfig, runtime, roof: dict, trace_dir: str | None = None,
              hold_gpu_cycles: int = 0) -> dict:
    if runtime.device.type == "cuda":
        gc.collect()  # the previous shape's layer and its graphs (reference cycles), e.g. --compare-legacy's
        torch.cuda.empty_cache()  # every shape starts from an empty allocator cache
    trace = run_workload(workload, runtime, progress=Progress(None, runtime.rank), hold_gpu_cycles=hold_gpu_cycles)
    if trace_dir and runtime.rank == 0:
        trace.to_json(Path(trace_dir) / f"{workload.name}-x{runtime.world_size}.json")
    meta = trace.meta
    measured = meta["measured"]
    phases = measured["phases_s"]
    rooflines = phase_rooflines(workload, meta, runtime.world_size, roof)
    rows = []
    for direction in ("forward", "backward"):
        for name, seconds in phases.get(direction, {}).items():
            flops, hbm = rooflines.get((name, direction), (None, None))
            roof_s = None
            if flops is not None and roof["peak_flops"]:
                roof_s = max(flops / roof["peak_flops"], hbm / roof["hbm_Bps"])
            if name.endswith("_a2a"):
                roof_s = measured["bare_a2a_s"]  # the bare collective of the same splits
            rows.append({"phase": name, "direction": direction, "measured_s": seconds, "roofline_s": roof_s,
                         "ratio": roof_s / seconds if roof_s and seconds > 0 else None,
                         "flops": flops, "bytes": hbm})
    forward_s = sum(phases.get("forward", {}).values())
    # the gate's (first) start after the iteration's origin event, slowest rank, median iteration:
    # behind a busy GPU the origin is the spin's end, so ~0 means the gate was queued in time
    gate_starts = [r.start_s for r in trace.phases if r.name == "gate" and r.direction == "forward"]
    return {"workload": workload.to_dict(), "world_size": runtime.world_size, "phases": rows,
            "hold_gpu_cycles": hold_gpu_cycles, "gate_start_s": max(gate_starts) if gate_starts else None,
            "forward_s": forward_s, "backward_s": sum(phases.get("backward", {}).values()),
            "kept": measured["kept"], "dropped": measured["dropped"], "lsh": measured.get("lsh"),
            "expert_method": measured.get("expert_method"),
            "bare_a2a_s": measured["bare_a2a_s"], "mean_bytes_per_rank": measured["mean_bytes_per_rank"],
            "dispatch_busbw_Bps": measured["dispatch_busbw_Bps"], "provenance": meta["provenance"]}


def gate_parts(workload: WorkloadConfig, runtime, forward_s: float, repeats: int = 30,
               spin_cycles: int = 1_000_000) -> dict | None:
    """`--gate-parts`: the gate phase's two parts apart, GPU time behind a spin (the host's launch
    hidden), for a shape without LSH whose gate runs as one CUDA graph: the whole phase (the layer's
    `gate_graph`: logits, top-k, capacity, order, gate weights and the gather of the T k send rows)
    and the routing alone (the same graph without the gather, `lsh_gate`, which LSH-MoE uses: the
    issue's "linear + top-k + capacity"); packing = whole - routing. Shares are of `forward_s`, the
    shape's measured forward (the idle-GPU convention). Rank-local, no collectives; None where it
    does not apply (CPU, LSH, fp8 or node_dedup dispatch, no gate graph)."""
    from lshsim.executor.comm import CommStats
    from lshsim.executor.moe_layer import DistributedMoE, MoEContext, rank_inputs, resolve_dtype
    from lshsim.executor.timing import PhaseTimer

    if (runtime.device.type != "cuda" or workload.lsh is not None or workload.dispatch_format == "fp8"
            or workload.alltoall != "direct"):
        return None
    dtype = resolve_dtype(workload, runtime.device)
    ctx = MoEContext(rank=runtime.rank, world_size=runtime.world_size, device=runtime.device,
                     timer=PhaseTimer(runtime.device), stats=CommStats(runtime.world_size), sync=False,
                     progress=Progress(None, runtime.rank))
    model = DistributedMoE(workload, ctx, dtype, requires_grad=workload.backward)
    if not (model.gate_graph.available and model.lsh_gate.available):
        return None
    from lshsim.executor.run import _load_file_tokens

    x0, token_ids = rank_inputs(workload, runtime.rank, runtime.device, dtype, _load_file_tokens(workload))
    x = x0.detach().requires_grad_(workload.backward)

    def gpu_median(fn) -> float:  # the host queues the gate while the GPU spins
        times = times_s(fn, repeats, 3, before=lambda: torch.cuda._sleep(spin_cycles))
        return sorted(times)[(repeats - 1) // 2]

    whole = gpu_median(lambda: model.gate_graph(x, token_ids))
    routing = gpu_median(lambda: model.lsh_gate(x, token_ids))
    del model
    return {"shape": workload.name, "forward_s": forward_s, "gate_graph_s": whole, "routing_s": routing,
            "packing_s": whole - routing, "gate_graph_share": whole / forward_s, "routing_share": routing / forward_s,
            "repeats": repeats, "spin_cycles": spin_cycles}


def break_even(results: list[dict]) -> list[dict]:
    """For every LSH shape whose name extends a shape without LSH ("X-lsh..." and "X"): the
    all-to-all bus bandwidth below which LSH-MoE pays on this hardware.

    LSH removes (1 - rate) of the bytes of all four all-to-alls (dispatch and combine, forward and
    backward) and adds its compress and restore phases (forward and backward, `overhead_s`). An
    all-to-all of B bytes per rank takes B (W - 1) / W / busbw, so LSH pays when
    busbw < 4 (B_plain - B_lsh) (W - 1) / W / overhead_s. Also: both layers' measured
    forward + backward time on this run's links.
    """
    by_name = {r["workload"]["name"]: r for r in results}
    out = []
    for name, result in by_name.items():
        if result["workload"].get("lsh") is None:
            continue
        base = next((by_name[b] for b in by_name if name.startswith(b + "-") and by_name[b]["workload"].get("lsh") is None),
                    None)
        if base is None:
            continue
        world = result["world_size"]
        overhead = sum(row["measured_s"] for row in result["phases"] if row["phase"].startswith("lsh_"))
        saved = 4 * (base["mean_bytes_per_rank"] - result["mean_bytes_per_rank"]) * (world - 1) / max(world, 1)
        out.append({"shape": name, "base": base["workload"]["name"], "world_size": world,
                    "compression_rate": result["lsh"]["compression_rate"] if result["lsh"] else None,
                    "lsh_overhead_s": overhead, "saved_bus_bytes": saved,
                    "break_even_busbw_Bps": saved / overhead if overhead > 0 and world > 1 else None,
                    "measured_busbw_Bps": base["dispatch_busbw_Bps"],
                    "layer_s": base["forward_s"] + base["backward_s"],
                    "layer_lsh_s": result["forward_s"] + result["backward_s"]})
    return out


def targets(result: dict, roof: dict) -> list[dict]:
    """The issue's targets for one shape: (name, value, limit, ok)."""
    workload = result["workload"]
    by = {(row["phase"], row["direction"]): row for row in result["phases"]}
    out = []

    def add(name, value, limit, ok):
        out.append({"shape": workload["name"], "target": name, "value": value, "limit": limit, "ok": bool(ok)})

    gate = by[("gate", "forward")]["measured_s"]
    add("gate share of forward", gate / result["forward_s"], 0.05, gate / result["forward_s"] <= 0.05)
    if ("other", "forward") in by and result["world_size"] > 1:
        other = by[("other", "forward")]["measured_s"]
        add("split-size exchange (s)", other, 50e-6, other < 50e-6)
    fwd, bwd = by.get(("expert", "forward")), by.get(("expert", "backward"))
    if fwd and roof["peak_flops"]:
        achieved = fwd["flops"] / fwd["measured_s"] / roof["peak_flops"]
        large = fwd["flops"] >= 4 * 2 ** 34
        add("expert forward / bf16 peak" + ("" if large else " (small shape)"), achieved, 0.6,
            achieved >= 0.6 or not large)
    if fwd and bwd:
        add("expert backward / forward", bwd["measured_s"] / fwd["measured_s"], 2.5,
            bwd["measured_s"] / fwd["measured_s"] <= 2.5)
    if ("lsh_compress", "forward") in by:
        row = by[("lsh_compress", "forward")]
        mib64 = workload["tokens_per_rank"] * workload["d_model"] * 2 / 2 ** 26
        per = row["measured_s"] / max(mib64, 1e-12)
        add("lsh compress s per 64 MiB of tokens", per, 1e-4, per <= 1e-4)
    return out


def before_after(result: dict) -> dict:
    """forward, gate (and its share) and split-size exchange ("other") seconds of one shape's result."""
    by = {(row["phase"], row["direction"]): row["measured_s"] for row in result["phases"]}
    gate = by.get(("gate", "forward"), 0.0)
    return {"forward_s": result["forward_s"], "gate_s": gate, "gate_share": gate / result["forward_s"],
            "other_s": by.get(("other", "forward"))}


def print_conventions(conventions: list[dict], spins: dict) -> None:
    """The table "gate share of the forward, two conventions" (rank 0); spins: cycles -> spin seconds."""
    print("gate share of the forward, two conventions: idle = every iteration starts on an idle GPU (the "
          "targets'); busy(N) = behind a spin of N cycles; launch = (idle gate - busy gate) / idle gate; "
          "start_us = the gate's first event after the spin's end")
    for cycles, seconds in spins.items():
        print(f"spin {cycles} cycles: {seconds * 1e6:.1f} us of GPU time")
    head = f"{'shape':28s} {'fwd_ms':>7s} {'gate_us':>8s} {'share':>6s}"
    for cycles in spins:
        head += f" | busy({cycles:.0e}) {'fwd_ms':>7s} {'gate_us':>8s} {'share':>6s} {'launch':>6s} {'start_us':>8s}"
    print(head)

    def num(value, scale, spec):
        return format(value * scale, spec) if value is not None else format(float("nan"), spec)

    for row in conventions:
        idle = row["idle"]
        line = (f"{row['shape'][:28]:28s} {idle['forward_s'] * 1e3:7.3f} {idle['gate_s'] * 1e6:8.1f} "
                f"{idle['gate_share']:6.1%}")
        for held in row["busy"]:
            line += (f" | {'':11s} {held['forward_s'] * 1e3:7.3f} {held['gate_s'] * 1e6:8.1f} "
                     f"{held['gate_share']:6.1%} {num(held['launch_share_of_gate'], 1, '6.1%')} "
                     f"{num(held['gate_start_after_spin_s'], 1e6, '8.1f')}")
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results as JSON here (rank 0)")
    parser.add_argument("--shapes", choices=("all", "workloads", "deepseek", "breakeven", "tiny"), default="all")
    parser.add_argument("--workloads", default="data/workloads/gpu-*.yaml",
                        help="glob, relative to the repository, of the workload files whose shapes run")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--trace-dir", help="also write every shape's measured trace (lshsim validate reads it) here")
    parser.add_argument("--compare-legacy", action="store_true",
                        help="also run every shape on the legacy gate path (LSHSIM_GATE_PATH=legacy: the gate graph "
                        "copying its weight in and three outputs out, the eager split-size exchange) first, in the "
                        "same process, and print both")
    parser.add_argument("--gate-parts", action="store_true",
                        help="CUDA only: also time the gate phase's routing (logits, top-k, capacity) apart from its "
                        "gather of the send rows, GPU time behind a spin, for every shape without LSH")
    parser.add_argument("--behind-busy-gpu", action="store_true",
                        help="CUDA only: also run every shape behind a busy GPU (a spin kernel queued before each "
                        "layer iteration, so the gate's events hold its GPU time, not the host's launch on an "
                        "idle GPU) and print the gate's share of the forward in both conventions; the targets "
                        "stay on the idle-GPU run")
    parser.add_argument("--busy-cycles", type=parse_cycles, default=[1_000_000],
                        help="with --behind-busy-gpu: the spin kernel's GPU clock cycles (torch.cuda._sleep), "
                        "comma-separated for one busy-GPU pass each (default 1000000, about 0.5 ms on an H200)")
    parser.add_argument("--profile-trace", metavar="FILE", help="with --profile: also write the profile's timeline "
                        "here (Chrome trace JSON, chrome://tracing or Perfetto)")
    parser.add_argument("--profile", metavar="NAME", help="also profile shape NAME (torch.profiler, 3 iterations) "
                        "and print its costliest operators (rank 0)")
    args = parser.parse_args(argv)
    if args.trace_dir:
        Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
    if args.profile_trace and not args.profile:
        parser.error("--profile-trace needs --profile NAME")
    if args.busy_cycles != [1_000_000] and not args.behind_busy_gpu:
        parser.error("--busy-cycles needs --behind-busy-gpu")
    if args.behind_busy_gpu and args.device == "cpu":
        parser.error("--behind-busy-gpu needs a CUDA device: the spin kernel (torch.cuda._sleep) that keeps the GPU "
                     "busy has no CPU counterpart, and on the CPU the host's time is the phase's time")
    runtime = init_runtime(args.device)
    if args.behind_busy_gpu and runtime.device.type != "cuda":
        shutdown()
        raise SystemExit(f"--behind-busy-gpu needs a CUDA device; this run's device is {runtime.device.type}")
    spins = {c: spin_s(c, runtime.device) for c in args.busy_cycles} if args.behind_busy_gpu else {}
    roof = measure_roofline(runtime.device)
    exchange = measure_count_exchange(runtime)
    results, checks = [], []
    legacy, conventions, busy_results, parts = [], [], [], []
    for workload in shapes(args):
        start = time.perf_counter()
        if args.compare_legacy:  # the same shape on the legacy gate path first, in the same process
            os.environ["LSHSIM_GATE_PATH"] = "legacy"
            try:
                legacy.append(run_shape(workload, runtime, roof, None))
            finally:
                os.environ.pop("LSHSIM_GATE_PATH")
        result = run_shape(workload, runtime, roof, args.trace_dir)
        results.append(result)
        checks.extend(targets(result, roof))
        if args.gate_parts:
            part = gate_parts(workload, runtime, result["forward_s"])
            if part is not None:
                parts.append(part)
        if args.behind_busy_gpu:  # the same shape behind a busy GPU, after the idle-GPU run it is reported beside
            busy = [run_shape(workload, runtime, roof, None, hold_gpu_cycles=c) for c in args.busy_cycles]
            conventions.append(gate_conventions(result, busy))
            busy_results.extend(busy)
        if runtime.rank == 0:
            print(f"# {workload.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if args.profile:
        chosen = [w for w in shapes(args) if w.name == args.profile]
        if not chosen:
            raise SystemExit(f"--profile {args.profile!r}: no such shape; shapes: {[w.name for w in shapes(args)]}")
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runtime.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            run_workload(dataclasses.replace(chosen[0], iterations=3, warmup=1), runtime,
                         progress=Progress(None, runtime.rank))
        if runtime.rank == 0:
            table = prof.key_averages()
            print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
            if args.profile_trace:
                prof.export_chrome_trace(args.profile_trace)
            if runtime.device.type == "cuda":
                print(table.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=60))
    if runtime.rank == 0:
        if exchange:
            for name in ("eager", "graph"):
                print(f"split-size exchange alone, {name} (E = {exchange['num_experts']}, ranks aligned): median "
                      f"{exchange[name]['median_s'] * 1e6:.1f} us, max {exchange[name]['max_s'] * 1e6:.1f} us over "
                      f"{exchange['repeats']}")
        if legacy:
            print(f"{'shape':28s} {'fwd_ms old':>10s} {'new':>7s} {'gate_us old':>11s} {'new':>7s} {'share old':>9s} "
                  f"{'new':>6s} {'other_us old':>12s} {'new':>7s}")
            for old_r, new_r in zip(legacy, results):
                o, n = before_after(old_r), before_after(new_r)
                print(f"{new_r['workload']['name'][:28]:28s} {o['forward_s'] * 1e3:10.2f} {n['forward_s'] * 1e3:7.2f} "
                      f"{o['gate_s'] * 1e6:11.1f} {n['gate_s'] * 1e6:7.1f} {o['gate_share']:9.1%} {n['gate_share']:6.1%} "
                      f"{o['other_s'] * 1e6:12.1f} {n['other_s'] * 1e6:7.1f}")
        if roof["peak_flops"]:
            print(f"roofline: peak {roof['peak_flops'] / 1e12:.4g} TFLOP/s bf16, HBM {roof['hbm_Bps'] / 1e12:.4g} "
                  f"TB/s, world {runtime.world_size}")
        else:
            print(f"roofline: none on {runtime.device.type}, world {runtime.world_size}")
        print(f"{'shape':28s} {'phase':14s} {'dir':4s} {'measured_us':>11s} {'roof_us':>9s} {'ratio':>6s}")
        for result in results:
            for row in result["phases"]:
                roof_us = f"{row['roofline_s'] * 1e6:9.1f}" if row["roofline_s"] else f"{'-':>9s}"
                ratio = f"{row['ratio']:6.2f}" if row["ratio"] else f"{'-':>6s}"
                print(f"{result['workload']['name'][:28]:28s} {row['phase']:14s} {row['direction'][:3]:4s} "
                      f"{row['measured_s'] * 1e6:11.1f} {roof_us} {ratio}")
            print(f"{result['workload']['name'][:28]:28s} expert method: {result.get('expert_method')}")
        evens = break_even(results)
        if evens:
            print(f"{'lsh shape':30s} {'rate':>6s} {'overhead_us':>11s} {'break-even GB/s':>15s} "
                  f"{'busbw GB/s':>10s} {'layer_ms':>8s} {'lsh_ms':>8s}")
            for row in evens:
                even = row["break_even_busbw_Bps"]
                bus = row["measured_busbw_Bps"]
                print(f"{row['shape'][:30]:30s} {row['compression_rate']:6.3f} {row['lsh_overhead_s'] * 1e6:11.1f} "
                      f"{even / 1e9 if even else float('nan'):15.1f} {bus / 1e9 if bus else float('nan'):10.1f} "
                      f"{row['layer_s'] * 1e3:8.3f} {row['layer_lsh_s'] * 1e3:8.3f}")
        if conventions:
            print_conventions(conventions, spins)
        if parts:
            print("the gate's parts, GPU time behind a spin (medians): gate graph = the phase's work (logits, top-k, "
                  "capacity, order, weights, the gather of the T k send rows); routing = the same without the gather; "
                  "shares of the idle-GPU forward")
            print(f"{'shape':28s} {'fwd_ms':>7s} {'graph_us':>9s} {'routing_us':>10s} {'packing_us':>10s} "
                  f"{'graph':>6s} {'routing':>7s}")
            for row in parts:
                print(f"{row['shape'][:28]:28s} {row['forward_s'] * 1e3:7.3f} {row['gate_graph_s'] * 1e6:9.1f} "
                      f"{row['routing_s'] * 1e6:10.1f} {row['packing_s'] * 1e6:10.1f} {row['gate_graph_share']:6.1%} "
                      f"{row['routing_share']:7.1%}")
        print(f"{'shape':28s} {'target':40s} {'value':>10s} {'limit':>8s} ok")
        for check in checks:
            print(f"{check['shape'][:28]:28s} {check['target'][:40]:40s} {check['value']:10.4g} "
                  f"{check['limit']:8.3g} {'yes' if check['ok'] else 'NO'}")
        if args.out:
            from lshsim.io import write_text_atomically

            write_text_atomically(args.out, json.dumps({"roofline": roof, "world_size": runtime.world_size,
                                                        "count_exchange": exchange,
                                                        "results": results, "targets": checks,
                                                        "legacy_results": legacy,
                                                        "before_after": [{"shape": n["workload"]["name"],
                                                                          "legacy": before_after(o),
                                                                          "fast": before_after(n)}
                                                                         for o, n in zip(legacy, results)],
                                                        "break_even": break_even(results),
                                                        "gate_parts": parts,
                                                        "behind_busy_gpu": {"spin_cycles": args.busy_cycles,
                                                                            "spin_s": {str(c): v for c, v in spins.items()},
                                                                            "gate_conventions": conventions,
                                                                            "results": busy_results}
                                                        if args.behind_busy_gpu else None,
                                                        "command": sys.argv}, indent=1) + "\n")
    shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
