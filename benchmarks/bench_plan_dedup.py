"""`lshsim plan`'s dispatch formats and node deduplication on DeepSeek-V3 (EP 64, 8 x 8 H100 rail).

For bf16 / fp8 dispatch x direct / node_dedup all-to-all x top-8 / node-limited (M = 4) routing:
the simulated step, its all-to-all time, the inter-node bytes of one MoE layer's dispatch, and the
wall time of the simulation. No capacity limit (DeepSeek-V3 is dropless).

    python benchmarks/bench_plan_dedup.py [--routed-tokens 32768] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import time

from lshsim.models import load_model
from lshsim.sim.moe_step import StepConfig, simulate_config
from lshsim.topology import load_topology


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routed-tokens", type=int, default=1 << 15, help="max_routed_tokens (default 32768)")
    parser.add_argument("--json", default=None, help="write the rows as JSON")
    args = parser.parse_args()
    model, graph = load_model("deepseek-v3"), load_topology("h100-ib-rail-8x8")
    rows = []
    print(f"{'router':14s} {'all-to-all':11s} {'dispatch':8s} {'step ms':>9s} {'a2a ms':>9s} "
          f"{'inter-node GB':>14s} {'sim s':>6s}")
    for fmt in (None, "fp8"):
        for algorithm in ("direct", "node_dedup"):
            for router, options in (("topk", ()), ("node_limited", (("max_nodes", 4),))):
                started = time.perf_counter()
                config = StepConfig(router=router, router_options=options, algorithm=algorithm, dispatch_format=fmt,
                                    ep=64, capacity_factor=None, max_routed_tokens=args.routed_tokens)
                b = simulate_config(model, graph, config).breakdown
                row = {"router": router, "algorithm": algorithm, "dispatch_format": fmt or "bf16",
                       "step_s": b["step_s"], "a2a_s": b["a2a_s"],
                       "inter_node_bytes_per_layer": b["inter_node_bytes_per_layer"],
                       "wall_s": time.perf_counter() - started}
                rows.append(row)
                print(f"{router:14s} {algorithm:11s} {row['dispatch_format']:8s} {row['step_s'] * 1e3:9.1f} "
                      f"{row['a2a_s'] * 1e3:9.1f} {row['inter_node_bytes_per_layer'] / 1e9:14.2f} {row['wall_s']:6.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
