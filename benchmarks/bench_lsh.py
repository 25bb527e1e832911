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

`--fast` adds, per shape, `lshsim.dispatch.lsh_fast` (fused Triton kernels on CUDA with bfloat16
tokens, its torch path elsewhere; use `--dtype bfloat16`): token_buckets, compress_fast and
restore_rows, their time against the reference (`ref/fast` ratios) and a roofline: the bytes each
must read and write (tokens read once, ids / centroids / outputs written once) over `--hbm-TBps`
(default 4.8, an H200). On CUDA every phase is timed with CUDA events over `--repeats` calls
(after a warm-up); on the CPU with perf_counter as before.

    .venv/bin/python benchmarks/bench_lsh.py --device cuda --dtype bfloat16 --dims 4096 \
        --tokens 8192 --proj-dims 16 --rotations gaussian --fast --repeats 50
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


def _time_cuda(fn, repeats: int, device: torch.device, stat: str = "min") -> float:
    """Fastest (or median) seconds of fn() measured with CUDA events, after one warm-up."""
    fn()
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    samples = [start.elapsed_time(end) / 1e3 for start, end in events]
    return min(samples) if stat == "min" else statistics.median(samples)


def _timer(device: torch.device):
    return _time_cuda if device.type == "cuda" else _time


def bench_fast(tokens: torch.Tensor, group: torch.Tensor, config: LSHConfig, projection, repeats: int,
               device: torch.device, stat: str, hbm_tbps: float) -> dict:
    """lsh_fast against the reference on the same tokens: seconds, ref/fast ratios, roofline."""
    from lshsim.dispatch import lsh_fast

    timer = _timer(device)
    num_tokens, d_model = tokens.shape
    item = tokens.element_size()
    ref_hash_s = timer(lambda: bucket_ids(tokens, config, projection), repeats, device, stat)
    ref_compress_s = timer(lambda: compress(tokens, group, config, projection), repeats, device, stat)
    reference = compress(tokens, group, config, projection)
    centroid_out = reference.centroids
    ref_restore_s = timer(lambda: restore(centroid_out, reference, residuals(tokens, reference)),
                          repeats, device, stat)
    fast_hash_s = timer(lambda: lsh_fast.token_buckets(tokens, config, projection), repeats, device, stat)
    fast_compress_s = timer(lambda: lsh_fast.compress_fast(tokens, group, config, projection), repeats, device, stat)
    compressed = lsh_fast.compress_fast(tokens, group, config, projection)
    fast_restore_s = timer(lambda: lsh_fast.restore_rows(compressed.centroids, compressed.centroids, tokens,
                                                         compressed.token_to_centroid), repeats, device, stat)
    token_bytes = num_tokens * d_model * item
    centroid_bytes = compressed.num_centroids * d_model * item
    bandwidth = hbm_tbps * 1e12
    # bytes that must move: hash reads the tokens and writes one int64 per token; compress also
    # reads the tokens again for the means and writes the centroids; restore reads tokens, two
    # centroid rows per token (E(c) and c, mostly from cache: counted once per centroid) and
    # writes the outputs
    roofline = {"hash": (token_bytes + 8 * num_tokens) / bandwidth,
                "compress": (2 * token_bytes + centroid_bytes + 8 * 4 * num_tokens) / bandwidth,
                "restore": (2 * token_bytes + 2 * centroid_bytes + 8 * num_tokens) / bandwidth}
    return {
        "fast_kernels": lsh_fast.triton_available(device) and lsh_fast.kernel_eligible(config, projection, tokens),
        "dtype": str(tokens.dtype).replace("torch.", ""),
        "ref_hash_s": ref_hash_s, "fast_hash_s": fast_hash_s, "hash_ratio": ref_hash_s / fast_hash_s,
        "ref_compress_s": ref_compress_s, "fast_compress_s": fast_compress_s,
        "compress_ratio": ref_compress_s / fast_compress_s,
        "ref_restore_s": ref_restore_s, "fast_restore_s": fast_restore_s,
        "restore_ratio": ref_restore_s / fast_restore_s,
        "roofline_hash_s": roofline["hash"], "roofline_compress_s": roofline["compress"],
        "roofline_restore_s": roofline["restore"], "hbm_TBps": hbm_tbps,
        "same_centroids": compressed.num_centroids == reference.num_centroids
        and bool(torch.equal(compressed.token_to_centroid, reference.token_to_centroid)),
    }


def bench_one(d_model: int, num_tokens: int, proj_dim: int | None, rotation: str, num_hashes: int,
              repeats: int, device: torch.device, num_groups: int = 16, stat: str = "min",
              dtype: torch.dtype = torch.float32, fast: bool = False, hbm_tbps: float = 4.8) -> dict:
    config = LSHConfig(num_hashes=num_hashes, proj_dim=proj_dim, rotation=rotation, seed=0)
    tokens = clustered_tokens(num_tokens, d_model, num_clusters=64, noise=0.3, seed=0).to(device, dtype)  # (N, d)
    group = torch.randint(0, num_groups, (num_tokens,), generator=torch.Generator().manual_seed(1)).to(device)
    start = time.perf_counter()
    projection = make_projection(d_model, config, device=device, dtype=dtype)
    setup_s = time.perf_counter() - start
    if fast:
        row = {"d_model": d_model, "num_tokens": num_tokens, "num_hashes": num_hashes, "rotation": rotation,
               "proj_dim": projection.proj_dim, "path": "dense" if projection.matrix is not None else "fwht",
               "setup_s": setup_s}
        row.update(bench_fast(tokens, group, config, projection, repeats, device, stat, hbm_tbps))
        return row
    timer = _timer(device)
    hash_s = timer(lambda: bucket_ids(tokens, config, projection), repeats, device, stat)
    compressed = compress(tokens, group, config, projection)
    compress_s = timer(lambda: compress(tokens, group, config, projection), repeats, device, stat)
    restore_s = timer(lambda: restore(compressed.centroids, compressed, residuals(tokens, compressed)),
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
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="token dtype (the Triton kernels of --fast need bfloat16 or float16 on CUDA)")
    parser.add_argument("--fast", action="store_true",
                        help="compare lshsim.dispatch.lsh_fast with the reference (times, ratios, roofline)")
    parser.add_argument("--hbm-TBps", dest="hbm_tbps", type=float, default=4.8,
                        help="HBM bandwidth in TB/s for the --fast roofline (default 4.8, H200)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    proj_dims = [None if p == "full" else int(p) for p in args.proj_dims]
    header = (f"{'d':>5} {'N':>6} {'rotation':>8} {'d_prime':>7} {'path':>5} {'setup_s':>7} "
              f"{'hash tok/s':>11} {'compress tok/s':>14} {'restore tok/s':>13} {'B/N':>6}")
    if args.fast:
        header = (f"{'d':>5} {'N':>6} {'rotation':>8} {'d_prime':>7} {'kern':>4} "
                  f"{'hash ref/fast ms':>17} {'x':>6} {'compress ref/fast ms':>21} {'x':>6} "
                  f"{'restore ref/fast ms':>20} {'x':>6} {'roofline h/c/r us':>20} {'same':>4}")
    if not args.json:
        print(f"# device={device} threads={torch.get_num_threads()} L={args.num_hashes} torch={torch.__version__} "
              + (f"dtype={args.dtype} " if args.dtype != "float32" else "")
              + f"{args.stat} of {args.repeats} repeats"
              + (f" hbm={args.hbm_tbps} TB/s" if args.fast else ""))
        print(header)
    for d_model in args.dims:
        for num_tokens in args.tokens:
            for proj_dim in proj_dims:
                for rotation in args.rotations:
                    row = bench_one(d_model, num_tokens, proj_dim, rotation, args.num_hashes, args.repeats,
                                    device, stat=args.stat, dtype=dtype, fast=args.fast, hbm_tbps=args.hbm_tbps)
                    if args.json:
                        print(json.dumps(row))
                    elif args.fast:
                        ms = {key: value * 1e3 for key, value in row.items() if key.endswith("_s")}
                        print(f"{row['d_model']:>5} {row['num_tokens']:>6} {row['rotation']:>8} {row['proj_dim']:>7} "
                              f"{'yes' if row['fast_kernels'] else 'no':>4} "
                              f"{ms['ref_hash_s']:>8.3f}/{ms['fast_hash_s']:<8.3f} {row['hash_ratio']:>6.1f} "
                              f"{ms['ref_compress_s']:>10.3f}/{ms['fast_compress_s']:<10.3f} {row['compress_ratio']:>6.1f} "
                              f"{ms['ref_restore_s']:>9.3f}/{ms['fast_restore_s']:<10.3f} {row['restore_ratio']:>6.1f} "
                              f"{1e3 * ms['roofline_hash_s']:>6.1f}/{1e3 * ms['roofline_compress_s']:.1f}/"
                              f"{1e3 * ms['roofline_restore_s']:<6.1f} {'yes' if row['same_centroids'] else 'no':>4}")
                    else:
                        print(f"{row['d_model']:>5} {row['num_tokens']:>6} {row['rotation']:>8} {row['proj_dim']:>7} "
                              f"{row['path']:>5} {row['setup_s']:>7.3f} {row['hash_tokens_per_s']:>11.3g} "
                              f"{row['compress_tokens_per_s']:>14.3g} {row['restore_tokens_per_s']:>13.3g} "
                              f"{row['compression_rate']:>6.3f}")
                    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
