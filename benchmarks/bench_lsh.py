"""Throughput of LSH-MoE compression: hash, compress (hash + buckets + centroids), restore.

    .venv/bin/python benchmarks/bench_lsh.py                      # the RESULTS.md table (CPU)
    .venv/bin/python benchmarks/bench_lsh.py --dims 1024 --tokens 4096 --proj-dims 16 64 full

Tokens are `clustered_tokens(N, d, num_clusters=64, noise=0.3)` routed uniformly at random to
16 groups (destination experts). Every phase is timed `--repeats` times after one warm-up call;
the table shows tokens per second of the fastest repeat (other processes only ever slow a run
down, so on a shared machine the minimum is the stable estimate; `--stat median` for the median),
and the one-off cost of drawing the rotation (`setup_s`, not included in the throughputs: a fixed
hash draws it once).

  hash      bucket_ids(tokens): L rotations, argmax codes, mixed-radix ids
  compress  compress(tokens, group): hash + torch.unique over (group, bucket) + centroid means
  restore   restore(E(c), compressed, residuals(tokens, compressed)) with an identity expert
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from lshsim.dispatch.lsh import (LSHConfig, bucket_ids, clustered_tokens, compress, make_projection,
                                 residuals, restore)


def _time(fn, repeats: int, device: torch.device, stat: str = "min") -> float:
    """Fastest (or median) seconds of fn() over `repeats` calls after one warm-up."""
    fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return min(samples) if stat == "min" else statistics.median(samples)


def bench_one(d_model: int, num_tokens: int, proj_dim: int | None, rotation: str, num_hashes: int,
              repeats: int, device: torch.device, num_groups: int = 16, stat: str = "min") -> dict:
    config = LSHConfig(num_hashes=num_hashes, proj_dim=proj_dim, rotation=rotation, seed=0)
    tokens = clustered_tokens(num_tokens, d_model, num_clusters=64, noise=0.3, seed=0).to(device)  # (N, d)
    group = torch.randint(0, num_groups, (num_tokens,), generator=torch.Generator().manual_seed(1)).to(device)
    start = time.perf_counter()
    projection = make_projection(d_model, config, device=device)
    setup_s = time.perf_counter() - start
    hash_s = _time(lambda: bucket_ids(tokens, config, projection), repeats, device, stat)
    compressed = compress(tokens, group, config, projection)
    compress_s = _time(lambda: compress(tokens, group, config, projection), repeats, device, stat)
    restore_s = _time(lambda: restore(compressed.centroids, compressed, residuals(tokens, compressed)),
                      repeats, device, stat)
    return {
        "d_model": d_model, "num_tokens": num_tokens, "num_hashes": num_hashes, "rotation": rotation,
        "proj_dim": projection.proj_dim, "path": "dense" if projection.matrix is not None else "fwht",
        "setup_s": setup_s, "hash_tokens_per_s": num_tokens / hash_s,
        "compress_tokens_per_s": num_tokens / compress_s, "restore_tokens_per_s": num_tokens / restore_s,
        "compression_rate": compressed.compression_rate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--proj-dims", nargs="+", default=["16", "256"],
                        help="d' values; 'full' means d_model (padded to a power of two for hadamard)")
    parser.add_argument("--rotations", nargs="+", default=["gaussian", "hadamard"])
    parser.add_argument("--num-hashes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stat", choices=["min", "median"], default="min")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row instead of a table")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    proj_dims = [None if p == "full" else int(p) for p in args.proj_dims]
    header = (f"{'d':>5} {'N':>6} {'rotation':>8} {'d_prime':>7} {'path':>5} {'setup_s':>7} "
              f"{'hash tok/s':>11} {'compress tok/s':>14} {'restore tok/s':>13} {'B/N':>6}")
    if not args.json:
        print(f"# device={device} threads={torch.get_num_threads()} L={args.num_hashes} torch={torch.__version__} "
              f"{args.stat} of {args.repeats} repeats")
        print(header)
    for d_model in args.dims:
        for num_tokens in args.tokens:
            for proj_dim in proj_dims:
                for rotation in args.rotations:
                    row = bench_one(d_model, num_tokens, proj_dim, rotation, args.num_hashes, args.repeats,
                                    device, stat=args.stat)
                    if args.json:
                        print(json.dumps(row))
                    else:
                        print(f"{row['d_model']:>5} {row['num_tokens']:>6} {row['rotation']:>8} {row['proj_dim']:>7} "
                              f"{row['path']:>5} {row['setup_s']:>7.3f} {row['hash_tokens_per_s']:>11.3g} "
                              f"{row['compress_tokens_per_s']:>14.3g} {row['restore_tokens_per_s']:>13.3g} "
                              f"{row['compression_rate']:>6.3f}")
                    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
