"""Speed and memory of the flow-level simulator: one all-to-all on a growing fat-tree cluster.

Targets, on the 2-core development machine: a uniform all-to-all on 64 GPUs (8 nodes x 8)
in under 1 s; on 1,024 GPUs (128 x 8) in under 30 s with peak memory under 2 GiB.

Cluster: H100 nodes of 8 GPUs on NVSwitch, 8 x 400 Gb/s NICs per node (one per GPU), two-tier
fat-tree with 4 servers per leaf, non-blocking. Traffic: `uniform` = 256 MB per rank split evenly
over all ranks (the direct algorithm: one flow per ordered pair, W(W-1) flows); `random` = every pair
uniform in [0.5, 1.5] x 2 MB (one drain event per flow: the hard case for a flow-level simulator).

Each size runs in a fresh subprocess so that its peak memory (ru_maxrss of the child: the whole
process, Python and numpy included) and its tracemalloc peak (Python allocations, numpy arrays
included) are its own. Timed: build_topology + routes (`build_s`) and simulate_all_to_all (`sim_s`).

    .venv/bin/python benchmarks/bench_sim.py [--gpus 16 64 256 1024] [--traffic uniform|random]
                                             [--drain-tolerance 0.01] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
import tracemalloc


def spec(nodes: int) -> dict:
    return {"name": f"h100-fattree-{nodes}x8", "gpu": "h100", "nodes": nodes, "gpus_per_node": 8,
            "intra": {"kind": "nvswitch"},
            "inter": {"kind": "fat_tree", "nics_per_node": 8, "nic_gbps": 400, "servers_per_leaf": 4}}


def run_one(gpus: int, traffic_kind: str, trace_memory: bool, drain_tolerance: float = 0.0) -> dict:
    import numpy as np

    from lshsim.sim.collectives import simulate_all_to_all, uniform_traffic
    from lshsim.topology import Routes, build_topology

    nodes = gpus // 8
    if traffic_kind == "uniform":
        traffic = uniform_traffic(gpus, 256e6)                                             # (W, W)
    else:
        traffic = np.random.default_rng(0).uniform(0.5, 1.5, (gpus, gpus)) * 2e6          # (W, W)
    if trace_memory:
        tracemalloc.start()
    start = time.perf_counter()
    G = build_topology(spec(nodes))
    routes = Routes(G)
    built = time.perf_counter()
    result = simulate_all_to_all(G, traffic, "direct", routes=routes, drain_tolerance=drain_tolerance)
    done = time.perf_counter()
    peak_traced = tracemalloc.get_traced_memory()[1] if trace_memory else None
    return {"gpus": gpus, "traffic": traffic_kind, "build_s": built - start, "sim_s": done - built,
            "total_s": done - start, "predicted_s": result.time_s, "flows": result.stats["flows"],
            "classes": result.stats["classes"], "rate_updates": result.stats["rate_updates"],
            "fill_rounds": result.stats["fill_levels"],
            "maxrss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tracemalloc_peak_MiB": None if peak_traced is None else peak_traced / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--traffic", choices=("uniform", "random"), default="uniform")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also report the tracemalloc peak (slows the run down)")
    parser.add_argument("--drain-tolerance", type=float, default=0.0, help="0 = exact (default)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(run_one(args.child, args.traffic, args.tracemalloc, args.drain_tolerance)) + "\n")
        return
    rows = []
    for gpus in args.gpus:
        if gpus % 8:
            parser.error(f"--gpus {gpus} must be a multiple of 8")
        command = [sys.executable, __file__, "--child", str(gpus), "--traffic", args.traffic,
                   "--drain-tolerance", str(args.drain_tolerance)]
        if args.tracemalloc:
            command.append("--tracemalloc")
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        sys.stdout.write(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2) + "\n")
        return
    print(f"flow-level simulator, direct all-to-all, {args.traffic} traffic, H100 fat-tree (8 GPUs/node, "
          f"8 x 400 Gb/s NICs, 4 servers/leaf), drain_tolerance={args.drain_tolerance}; {platform.platform()}")
    header = (f"{'GPUs':>6} {'flows':>10} {'classes':>10} {'updates':>8} {'rounds':>7} {'build s':>8} "
              f"{'sim s':>8} {'total s':>8} {'maxrss MiB':>11} {'traced MiB':>11} {'predicted ms':>13} "
              f"{'time growth':>12} {'mem growth':>11}")
    print(header)
    previous = None
    for row in rows:
        growth_t = growth_m = ""
        if previous is not None:
            ratio = math.log(row["gpus"] / previous["gpus"])
            growth_t = f"W^{math.log(row['total_s'] / previous['total_s']) / ratio:.2f}"
            growth_m = f"W^{math.log(row['maxrss_MiB'] / previous['maxrss_MiB']) / ratio:.2f}"
        traced = "-" if row["tracemalloc_peak_MiB"] is None else f"{row['tracemalloc_peak_MiB']:.1f}"
        print(f"{row['gpus']:>6} {row['flows']:>10} {row['classes']:>10} {row['rate_updates']:>8} "
              f"{row['fill_rounds']:>7} {row['build_s']:>8.3f} {row['sim_s']:>8.3f} {row['total_s']:>8.3f} "
              f"{row['maxrss_MiB']:>11.1f} {traced:>11} {row['predicted_s'] * 1e3:>13.4f} {growth_t:>12} "
              f"{growth_m:>11}")
        previous = row


if __name__ == "__main__":
    main()
