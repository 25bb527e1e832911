"""The exact flow engine: the incremental max-min solver (numba) against the vectorised one, on one
MoE all-to-all on a fat-tree (issue 15, item 2).

Cluster: H100 nodes of 8 GPUs on NVSwitch, 8 x 400 Gb/s NICs per node, two-tier fat-tree with 4
servers per leaf (the cluster of benchmarks/bench_sim.py). Traffic (W GPUs, one expert per GPU,
T = 4096 tokens per GPU, 8192 bytes per token copy, seed 0):
- skewed: every rank sends its T x k copies (top-2) multinomially over a skewed expert popularity
  p ~ q^skew, q ~ Dirichlet(1, ..., 1) (`lshsim.analytic.capacity.skewed_popularity`, skew 1.0),
  each (source rank, expert) clipped at the capacity ceil(1.25 T k / W): the hard case, one rate
  update per distinct drain time;
- dropless: the same without the clip;
- uniform: 256 MB per rank split evenly (bench_sim.py's uniform), for memory.
The traffic is drawn from the popularity directly (not by routing synthetic tokens, which at 1,024
GPUs would cost more than the simulation).

Each (size, solver) runs in a fresh subprocess: `load s` = importing numba and loading the compiled
kernels (from numba's on-disk cache; compiling them the first time takes longer), measured on a tiny
network before the timed run; `sim s` / `cpu s` = wall and CPU seconds of simulate_all_to_all
(exact: drain_tolerance 0); `maxrss` = the child's peak resident memory. The vectorised solver is
skipped above --old-max-gpus and stopped after --timeout seconds.

    .venv/bin/python benchmarks/bench_exact_engine.py [--gpus 64 256 1024] [--traffic skewed]
        [--solvers vectorised incremental] [--old-max-gpus 1024] [--timeout 3000] [--json]
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


def spec(nodes: int) -> dict:
    return {"name": f"h100-fattree-{nodes}x8", "gpu": "h100", "nodes": nodes, "gpus_per_node": 8,
            "intra": {"kind": "nvswitch"},
            "inter": {"kind": "fat_tree", "nics_per_node": 8, "nic_gbps": 400, "servers_per_leaf": 4}}


def moe_traffic(gpus: int, kind: str, tokens: int = 4096, k: int = 2, capacity_factor: float = 1.25,
                skew: float = 1.0, bytes_per_token: float = 8192.0, seed: int = 0):
    """(W, W) bytes of one MoE dispatch all-to-all (module docstring)."""
    import numpy as np

    from lshsim.analytic.capacity import skewed_popularity
    from lshsim.sim.collectives import uniform_traffic

    if kind == "uniform":
        return uniform_traffic(gpus, 256e6)
    popularity = skewed_popularity(gpus, skew, seed)                                    # (E,) = (W,)
    counts = np.random.default_rng(seed + 1).multinomial(tokens * k, popularity, size=gpus).astype(float)
    if kind == "skewed":
        counts = np.minimum(counts, math.ceil(capacity_factor * tokens * k / gpus))    # (W, W)
    return counts * bytes_per_token


def run_one(gpus: int, kind: str, solver: str) -> dict:
    import numpy as np

    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.topology import Routes, build_topology

    load_s = 0.0
    if solver == "incremental":
        start = time.perf_counter()
        G = build_topology(spec(1))
        simulate_all_to_all(G, np.ones((8, 8)) * 1e6, solver="incremental")   # numba import + kernels
        load_s = time.perf_counter() - start
    traffic = moe_traffic(gpus, kind)
    start = time.perf_counter()
    G = build_topology(spec(gpus // 8))
    routes = Routes(G)
    built = time.perf_counter()
    cpu = time.process_time()
    result = simulate_all_to_all(G, traffic, "direct", routes=routes, solver=solver)
    done = time.perf_counter()
    cpu = time.process_time() - cpu
    stats = result.stats
    return {"gpus": gpus, "traffic": kind, "solver": stats["solver"], "load_s": load_s, "build_s": built - start,
            "sim_s": done - built, "cpu_s": cpu, "predicted_s": result.time_s, "flows": stats["flows"],
            "classes": stats["classes"], "rate_updates": stats["rate_updates"],
            "refilled_classes": stats.get("refilled_classes"), "rate_changes": stats.get("rate_changes"),
            "maxrss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--traffic", choices=("skewed", "dropless", "uniform"), default="skewed")
    parser.add_argument("--solvers", nargs="+", choices=("vectorised", "incremental"),
                        default=["vectorised", "incremental"])
    parser.add_argument("--old-max-gpus", type=int, default=1024,
                        help="run the vectorised solver only up to this many GPUs")
    parser.add_argument("--timeout", type=float, default=3000.0, help="seconds per run before it is stopped")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        gpus, kind, solver = int(args.child[0]), args.child[1], args.child[2]
        sys.stdout.write(json.dumps(run_one(gpus, kind, solver)) + "\n")
        return
    rows = []
    for gpus in args.gpus:
        if gpus % 8:
            parser.error(f"--gpus {gpus} must be a multiple of 8")
        for solver in args.solvers:
            if solver == "vectorised" and gpus > args.old_max_gpus:
                rows.append({"gpus": gpus, "traffic": args.traffic, "solver": solver, "skipped": "not run"})
                continue
            command = [sys.executable, __file__, "--child", str(gpus), args.traffic, solver]
            try:
                out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append({"gpus": gpus, "traffic": args.traffic, "solver": solver,
                             "skipped": f"stopped after {args.timeout:.0f} s"})
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        sys.stdout.write(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2) + "\n")
        return
    print(f"exact all-to-all, {args.traffic} MoE traffic, H100 fat-tree (8 GPUs/node, 8 x 400 Gb/s NICs, "
          f"4 servers/leaf); {platform.platform()}")
    print(f"{'GPUs':>6} {'solver':>12} {'classes':>9} {'updates':>8} {'refilled':>10} {'changed':>9} "
          f"{'load s':>7} {'sim s':>8} {'cpu s':>8} {'maxrss MiB':>11} {'predicted ms':>13} {'cpu ratio':>10}")
    old_cpu = {}
    for row in rows:
        if "skipped" in row:
            print(f"{row['gpus']:>6} {row['solver']:>12} {row['skipped']}")
            continue
        if row["solver"] == "vectorised":
            old_cpu[row["gpus"]] = row["cpu_s"]
        ratio = old_cpu.get(row["gpus"])
        ratio = f"{ratio / row['cpu_s']:.1f}x" if ratio and row["solver"] == "incremental" else ""
        print(f"{row['gpus']:>6} {row['solver']:>12} {row['classes']:>9} {row['rate_updates']:>8} "
              f"{row['refilled_classes'] if row['refilled_classes'] is not None else '-':>10} "
              f"{row['rate_changes'] if row['rate_changes'] is not None else '-':>9} {row['load_s']:>7.2f} "
              f"{row['sim_s']:>8.2f} {row['cpu_s']:>8.2f} {row['maxrss_MiB']:>11.0f} "
              f"{row['predicted_s'] * 1e3:>13.6f} {ratio:>10}")


if __name__ == "__main__":
    main()
