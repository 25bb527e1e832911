"""What the dispatch format and node deduplication change: one DeepSeek-V3-like dispatch, simulated.

4096 tokens per GPU, hidden 7168, 256 experts, top-8, a token's experts on at most 4 nodes (DeepEP's
test routing, `lshsim.sim.published.deepep_routing`), on data/topologies/published/h800-ib-{N}x8 with
the NIC at 50 GB/s (the efficiency `lshsim validate --published` fitted). Prints, per (format,
algorithm): the bytes each GPU sends to other nodes (mean) and the simulated dispatch time.

    PYTHONPATH=. python benchmarks/bench_dispatch_formats.py [--nodes 4]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from lshsim.sim.collectives import simulate_all_to_all
from lshsim.sim.dispatch_formats import bytes_per_token, node_dedup_traffic
from lshsim.sim.published import deepep_routing
from lshsim.topology import build_topology
from lshsim.topology.spec import read_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    gpus = 8
    world, experts, hidden = args.nodes * gpus, 256, 7168
    spec, source = read_spec(f"published/h800-ib-{args.nodes}x8")
    spec = {**spec, "calibration": {**spec.get("calibration", {}), "nic_Bps": 50e9}}
    G = build_topology(spec, source=source)
    idx = np.concatenate([deepep_routing(r, args.tokens, experts, args.nodes, 8, min(args.nodes, 4)) for r in range(world)])
    counts = node_dedup_traffic(idx, np.repeat(np.arange(world), args.tokens), expert_rank=np.arange(experts) // (experts // world),
                                gpus_per_node=gpus, world=world)
    print(f"{args.nodes} x 8 H800, {args.tokens} tokens/GPU, hidden {hidden}, top-8 of {experts}, <= 4 nodes per token")
    print(f"{'format':6s} {'algorithm':28s} {'to other nodes MB/GPU':>22s} {'time ms':>9s} {'sim s':>7s}")
    for fmt in ("bf16", "fp8"):
        bpt = bytes_per_token(fmt, hidden)
        rank_bytes = counts.rank_tokens * float(bpt)
        node_bytes = counts.node_tokens * float(bpt)
        node_of = np.arange(world) // gpus
        per_rank_net = (rank_bytes * (node_of[:, None] != node_of[None, :])).sum(1).mean()
        dedup_net = counts.network_bytes().mean() * bpt
        runs = [("direct, one copy per rank", "direct", {}, per_rank_net),
                ("hierarchical (2DH), per rank", "hierarchical", {}, per_rank_net),
                ("node_dedup, 8 chunks", "node_dedup", {"node_bytes": node_bytes, "chunks": 8}, dedup_net)]
        for label, name, options, net in runs:
            t0 = time.perf_counter()
            result = simulate_all_to_all(G, rank_bytes, name, alpha_s=0.0, local_copy=False, **options)
            print(f"{fmt:6s} {label:28s} {net / 1e6:22.1f} {result.time_s * 1e3:9.3f} {time.perf_counter() - t0:7.1f}")


if __name__ == "__main__":
    main()
