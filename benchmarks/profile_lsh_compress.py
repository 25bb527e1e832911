"""Where compress_fast's GPU time goes on one GPU, and the centroid kernels' launches side by side.

    python benchmarks/profile_lsh_compress.py [--tokens 8192 32768] [--num-hashes 6 2] [--repeats 20]
        [--json OUT.json] [--trace OUT.txt] [--grid] [--workers 12]
    python benchmarks/profile_lsh_compress.py --ncu-target     # one launch of each centroid kernel, for ncu

Per shape (the tokens of `bench_lsh_fast.py`: tokens x 4,096 bf16 clustered, 16 groups, d' 16), GPU
time (CUDA events, launches queued behind a sleep kernel: `bench_lsh_fast.gpu_times`) of

  hash         the hash kernel writing packed keys (compress's first launch)
  rank / sort + merge   the sort of the packed keys (the rank kernel up to 8,192 tokens)
  runs         the runs kernel as compress launched it before (one-hot matrix product, committed launch)
  scan         the scan-runs kernel (`COMPRESS_CENTROIDS = "scan"`), committed launch; with --grid
               every launch of SCAN_GRID (compiled first in parallel processes), each checked against
               the runs kernel (the same integers; the largest centroid difference)
  compress(runs), compress(scan)   `_compress_kernels`, the sync-free part of compress_fast, with each

Then --trace: torch.profiler over five calls of compress_fast (the committed path): every kernel and
copy with its device time per call (what runs between the Triton launches, the host sync's copy).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_lsh_fast import gpu_times, make_inputs  # noqa: E402
from lshsim.dispatch import lsh_fast  # noqa: E402

SCAN_GRID = [dict(rows=64, chunk=8, block_d=1024, num_warps=4, num_stages=s, prefix=256, lookback=True)
             for s in (1, 2, 3, 4)]
SCAN_GRID += [dict(rows=64, chunk=4, block_d=1024, num_warps=4, num_stages=s, prefix=256, lookback=True)
              for s in (3, 4)]
SCAN_GRID += [dict(rows=r, chunk=8, block_d=1024, num_warps=4, num_stages=3, prefix=256, lookback=True)
              for r in (32, 128, 256)]
SCAN_GRID += [dict(rows=64, chunk=8, block_d=2048, num_warps=8, num_stages=3, prefix=256, lookback=True),
              dict(rows=64, chunk=8, block_d=512, num_warps=2, num_stages=3, prefix=256, lookback=True),
              dict(rows=64, chunk=8, block_d=1024, num_warps=4, num_stages=3, prefix=2048, lookback=False),
              dict(rows=128, chunk=4, block_d=1024, num_warps=4, num_stages=4, prefix=256, lookback=True)]


def _sorted(tokens, group, config, projection, span):
    """(sorted_key, order) of compress's sort path for these tokens."""
    _, _, sorted_key, order, _ = lsh_fast._compress_kernels(tokens, group, config, projection, span)
    return sorted_key, order


def _compile_worker(params):
    device = torch.device("cuda")
    config, tokens, group, projection = make_inputs(512, 4096, 6, device)
    span = config.max_buckets(4096)
    key, order = _sorted(tokens, group, config, projection, span)
    try:
        lsh_fast._scan_runs_launch(tokens, key, order, span, 512, **params)
    except Exception:  # reported by the timing pass
        pass
    torch.cuda.synchronize()
    return 1


def precompile(grid, workers: int) -> float:
    import multiprocessing as mp
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_compile_worker, grid, chunksize=1)
    return time.perf_counter() - start


def _valid_ints(ints, n, b):
    return torch.cat([ints[:n], ints[n:n + b], ints[2 * n:2 * n + b], ints[3 * n:]])


def profile_shape(num_tokens, d_model, num_hashes, repeats, grid):
    device = torch.device("cuda")
    config, tokens, group, projection = make_inputs(num_tokens, d_model, num_hashes, device)
    span = config.max_buckets(d_model)
    row = {"tokens": num_tokens, "d_model": d_model, "num_hashes": num_hashes}
    med = lambda fn: statistics.median(gpu_times(fn, repeats)) * 1e6  # noqa: E731
    sort = lsh_fast.sort_launch_params(num_tokens)
    idx_bits = max(1, (num_tokens - 1).bit_length())
    times = {}
    if sort["sort_chunk"] == 0:
        packed = lsh_fast._hash_launch(tokens, config, projection, group, span, idx_bits=idx_bits, num_out=num_tokens)
        times["hash"] = med(lambda: lsh_fast._hash_launch(tokens, config, projection, group, span,
                                                          idx_bits=idx_bits, num_out=num_tokens))
        times["rank"] = med(lambda: lsh_fast._rank_launch(packed, idx_bits, sort))
    else:
        chunk = min(sort["sort_chunk"], lsh_fast._next_pow2(num_tokens))
        num_out = lsh_fast._cdiv(num_tokens, chunk) * chunk
        packed = lsh_fast._hash_launch(tokens, config, projection, group, span, idx_bits=idx_bits, num_out=num_out)
        times["hash"] = med(lambda: lsh_fast._hash_launch(tokens, config, projection, group, span,
                                                          idx_bits=idx_bits, num_out=num_out))
        times["sort"] = med(lambda: torch.sort(packed.view(-1, chunk), dim=1))
        rows_sorted = torch.sort(packed.view(-1, chunk), dim=1)[0]
        times["merge"] = med(lambda: lsh_fast._merge_launch(rows_sorted, num_tokens, idx_bits, sort))
    key, order = _sorted(tokens, group, config, projection, span)
    ref_out, _, ref_ints = lsh_fast._runs_launch(tokens, key, order, span, num_tokens, index=True)
    b = int(ref_ints[3 * num_tokens])
    row["num_centroids"] = b
    want = _valid_ints(ref_ints, num_tokens, b)
    times["runs"] = med(lambda: lsh_fast._runs_launch(tokens, key, order, span, num_tokens, index=True))
    out, ints = lsh_fast._scan_runs_launch(tokens, key, order, span, num_tokens)
    row["scan_same_ints"] = bool(torch.equal(_valid_ints(ints, num_tokens, b), want))
    row["scan_max_abs_diff_vs_runs"] = float((out[:b].float() - ref_out[:b].float()).abs().max())
    row["scan_bit_equal_rows"] = float((out[:b] == ref_out[:b]).all(dim=1).float().mean())
    times["scan"] = med(lambda: lsh_fast._scan_runs_launch(tokens, key, order, span, num_tokens))
    saved = lsh_fast.COMPRESS_CENTROIDS
    try:
        for kind in ("runs", "scan"):
            lsh_fast.COMPRESS_CENTROIDS = kind
            times[f"compress({kind})"] = med(lambda: lsh_fast._compress_kernels(tokens, group, config, projection,
                                                                                span))
    finally:
        lsh_fast.COMPRESS_CENTROIDS = saved
    row["gpu_us"] = times
    variants = []
    for params in grid:
        try:
            out, ints = lsh_fast._scan_runs_launch(tokens, key, order, span, num_tokens, **params)
            t = med(lambda: lsh_fast._scan_runs_launch(tokens, key, order, span, num_tokens, **params))
        except Exception as error:
            variants.append({**params, "error": str(error).splitlines()[0][:120]})
            continue
        variants.append({**params, "us": t, "same_ints": bool(torch.equal(_valid_ints(ints, num_tokens, b), want)),
                         "max_abs_diff_vs_runs": float((out[:b].float() - ref_out[:b].float()).abs().max())})
    row["scan_grid"] = sorted(variants, key=lambda r: r.get("us", float("inf")))
    return row


def trace(num_tokens, d_model, num_hashes, path: Path):
    from torch.profiler import ProfilerActivity, profile
    config, tokens, group, projection = make_inputs(num_tokens, d_model, num_hashes, "cuda")
    for _ in range(3):
        lsh_fast.compress_fast(tokens, group, config, projection)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            lsh_fast.compress_fast(tokens, group, config, projection)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    with path.open("a") as f:
        f.write(f"\n# compress_fast {num_tokens} x {d_model} L {num_hashes}, 5 calls, "
                f"COMPRESS_CENTROIDS={lsh_fast.COMPRESS_CENTROIDS}\n{table}\n")


def ncu_target():
    """Two launches of the runs kernel and two of the scan-runs kernel, alternated (8,192 x 4,096, L 6;
    the sort from the hash and rank kernels directly): the first pair compiles, so
    `ncu -k regex:runs_kernel --launch-skip 2 -c 2` profiles one launch of each."""
    config, tokens, group, projection = make_inputs(8192, 4096, 6, "cuda")
    span = config.max_buckets(4096)
    idx_bits = 13
    packed = lsh_fast._hash_launch(tokens, config, projection, group, span, idx_bits=idx_bits, num_out=8192)
    key, order, _ = lsh_fast._rank_launch(packed, idx_bits, lsh_fast.sort_launch_params(8192))
    for _ in range(2):
        lsh_fast._runs_launch(tokens, key, order, span, 8192, index=True)
        lsh_fast._scan_runs_launch(tokens, key, order, span, 8192)
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--num-hashes", type=int, nargs="+", default=[6, 2])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--grid", action="store_true", help="also time every launch of SCAN_GRID")
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--json")
    parser.add_argument("--trace", help="append torch.profiler tables here")
    parser.add_argument("--ncu-target", action="store_true")
    args = parser.parse_args(argv)
    if args.ncu_target:
        ncu_target()
        return 0
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__, "argv": sys.argv[1:],
              "scan_launches": [list(r) for r in lsh_fast.SCAN_LAUNCHES],
              "runs_launches": [list(r) for r in lsh_fast.RUNS_LAUNCHES], "rows": []}
    grid = SCAN_GRID if args.grid else []
    if grid:
        report["precompile_s"] = precompile(grid, args.workers)
        print(f"# compiled {len(grid)} scan launches in {report['precompile_s']:.0f} s", flush=True)
    for num_hashes in args.num_hashes:
        for num_tokens in args.tokens:
            row = profile_shape(num_tokens, args.d_model, num_hashes, args.repeats, grid)
            report["rows"].append(row)
            t = row["gpu_us"]
            print(f"\n{num_tokens} x {args.d_model} L {num_hashes}: B {row['num_centroids']}, scan ints equal "
                  f"{row['scan_same_ints']}, max |scan - runs| {row['scan_max_abs_diff_vs_runs']:.3g} "
                  f"(rows bit-equal {row['scan_bit_equal_rows']:.4f})", flush=True)
            print("  gpu us: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()), flush=True)
            for v in row["scan_grid"][:6] + [v for v in row["scan_grid"] if "error" in v]:
                print("  scan " + json.dumps(v), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.trace:
        for num_hashes in args.num_hashes:
            trace(args.tokens[0], args.d_model, num_hashes, Path(args.trace))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
