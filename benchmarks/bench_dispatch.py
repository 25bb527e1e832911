"""Routing throughput of lshsim.dispatch on the CPU.

Target: route 1,048,576 tokens to 64 experts with top-2 and capacity in under 1 s.
The timed region is `route_topk(logits, placement, k=2, capacity_factor=1.25)`: softmax, top-k,
gate weights, capacity slots and drops; the logits are drawn before timing. The median of
`--repeats` runs after one warm-up is reported, with tokens/s.

    .venv/bin/python benchmarks/bench_dispatch.py [--tokens 1048576] [--experts 64] [--json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from lshsim.dispatch import contiguous_placement, route_expert_choice, route_hash, route_locmoe, route_topk


def _time_s(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1 << 20)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--world", type=int, default=64, help="ranks the tokens are spread over")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(args.tokens, args.experts, generator=generator)  # (T, E)
    token_rank = torch.arange(args.world).repeat_interleave(args.tokens // args.world)  # (T,)
    token_ids = torch.randint(0, 50257, (args.tokens,), generator=generator)  # (T,)
    placement = contiguous_placement(args.experts, args.world, 8)
    d_model_locmoe = args.experts * 4
    hidden = torch.randn(args.tokens, d_model_locmoe, generator=generator)  # (T, 4E)

    cases = {
        "topk k=2 cf=1.25 position": lambda: route_topk(logits, placement, k=2, capacity_factor=1.25,
                                                        token_rank=token_rank),
        "topk k=2 cf=1.25 score": lambda: route_topk(logits, placement, k=2, capacity_factor=1.25,
                                                     drop_policy="score", token_rank=token_rank),
        "topk k=1 cf=1.0 (Switch)": lambda: route_topk(logits, placement, k=1, capacity_factor=1.0,
                                                       token_rank=token_rank),
        "hash": lambda: route_hash(token_ids, placement, token_rank=token_rank),
        "expert_choice k=2": lambda: route_expert_choice(logits, placement, k=2, token_rank=token_rank),
        f"locmoe k=1 (d_model={d_model_locmoe})": lambda: route_locmoe(hidden, placement, k=1,
                                                                       token_rank=token_rank),
    }
    rows = []
    for name, fn in cases.items():
        seconds = _time_s(fn, args.repeats)
        rows.append({"case": name, "tokens": args.tokens, "experts": args.experts, "median_s": seconds,
                     "tokens_per_s": args.tokens / seconds})
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
            platform.machine(), "repeats": args.repeats}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return
    print(f"torch {meta['torch']}, {meta['threads']} threads, median of {args.repeats} after warm-up")
    print(f"{'case':40s} {'tokens':>9s} {'E':>4s} {'time s':>8s} {'Mtokens/s':>10s}")
    for row in rows:
        print(f"{row['case']:40s} {row['tokens']:9d} {row['experts']:4d} {row['median_s']:8.3f} "
              f"{row['tokens_per_s'] / 1e6:10.2f}")


if __name__ == "__main__":
    main()
