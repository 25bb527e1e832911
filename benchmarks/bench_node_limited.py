"""Routing cost of the node-limited router against plain top-k at DeepSeek-V3's shape.

    PYTHONPATH=. python benchmarks/bench_node_limited.py [--tokens 65536] [--repeats 5]

Routes T tokens (Gaussian logits, seed 0) over E = 256 experts on 64 ranks / 8 nodes (contiguous
placement), k = 8, dropless, with `topk` and with `node_limited` at M = 1, 2, 4; prints the median
wall time of each and its ratio to top-k measured in the same run (the machine may be shared: quote
the ratios).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lshsim.dispatch import RouterConfig, contiguous_placement, route


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    placement = contiguous_placement(256, 64, gpus_per_node=8)
    logits = torch.randn(args.tokens, 256, generator=torch.Generator().manual_seed(0))
    token_rank = torch.arange(64).repeat_interleave(args.tokens // 64)
    configs = {"topk": RouterConfig("topk", k=8, capacity_factor=None)}
    for m in (1, 2, 4):
        configs[f"node_limited M={m}"] = RouterConfig("node_limited", k=8, capacity_factor=None,
                                                      options={"max_nodes": m})
    times = {name: [] for name in configs}
    for _ in range(args.repeats):                      # interleaved, so drift hits every router alike
        for name, config in configs.items():
            started = time.perf_counter()
            route(config, placement, logits=logits, token_rank=token_rank)
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["topk"])
    print(f"{args.tokens} tokens, E=256, k=8, 64 ranks on 8 nodes, 1 thread, median of {args.repeats}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:20s} {median * 1e3:8.1f} ms   x{median / base:.2f} of topk")


if __name__ == "__main__":
    main()
