"""Is NCCL's all-to-all time a smooth function of the per-peer chunk size at large sizes?

On 4 H200s the held-out workload gpu-uniform-d8192-t32k (per-peer chunks of 267-271 MB) ran
25-30% slower than the calibration workloads around it (data/measured/h200/run-c), and its bare
all_to_all_single was as slow; `a2a_diagnostics.py` found equal 256 MiB chunks fast and the same
bytes in that workload's uneven split sizes 44% slower. This sweep times a bare all_to_all_single
on uint8 buffers allocated once, ranks aligned with `lshsim.executor.comm.align_ranks` (as every timed
collective of the executor), CUDA events, the slowest rank per repetition, the median of
`--iterations` after `--warmup`, for:

* equal:    every per-peer chunk the same size c (4 KiB multiples), c on a grid from
            `--min-mib` to `--max-mib` per peer;
* moe:      the uneven per-peer chunks of gpu-uniform-d8192-t32k (rows of 16 KiB), and the same
            split matrix scaled to other means (0.75x, 0.875x, 1.125x, 1.25x), rounded to rows;
* offset:   equal chunks of 256 MiB + one row, and 256 MiB - one row;
* pattern:  rotated per-peer chunk patterns (`PATTERNS`): all below / all above 2^28 bytes, a mix
            of chunks below and above 2^28 (and 2^27, 2^29), uneven chunks on one side of it.

Run: `PYTHONPATH=. torchrun --nproc_per_node=4 benchmarks/a2a_chunk_sweep.py OUT.json`
(any world size >= 2; the moe cases exist for 4 ranks only). CPU (gloo) works too, for testing
the script, with `--device cpu --max-mib 4 --min-mib 1`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch
import torch.distributed as dist

from lshsim.executor.calibrate import _median_of_max, _time_repeated
from lshsim.executor.runtime import init_runtime, shutdown

ROW_BYTES = 16384  # d_model 8192, bf16
# rows sent from rank (row) to rank (column) by gpu-uniform-d8192-t32k on 4 H200 (run-b)
MOE_ROWS = [[16336, 16343, 16524, 16333], [16549, 16341, 16368, 16278], [16433, 16399, 16510, 16194],
            [16420, 16329, 16430, 16357]]
MIB = 2 ** 20


def timed(fn, device: torch.device, iterations: int, warmup: int) -> tuple[float, list[float]]:
    """Median over iterations of the slowest rank's time of fn() (collective), timed exactly as
    `executor calibrate` times its sweep."""
    return _median_of_max(_time_repeated(fn, device, iterations, warmup), device)


def case_bytes(world: int, rank: int, min_mib: float, max_mib: float, steps: int) -> dict[str, list[list[int]]]:
    """{case name: (W, W) bytes sent from row rank to column rank}."""
    cases = {}
    for i in range(steps):
        chunk_mib = min_mib + (max_mib - min_mib) * i / max(steps - 1, 1)
        chunk = int(chunk_mib * MIB) // 4096 * 4096
        cases[f"equal/{chunk / MIB:.1f}MiB"] = [[chunk] * world for _ in range(world)]
    if world == 4:
        for scale in (0.75, 0.875, 1.0, 1.125, 1.25):
            cases[f"moe/x{scale}"] = [[int(round(r * scale)) * ROW_BYTES for r in row] for row in MOE_ROWS]
    for name, chunk in (("offset/256MiB+row", 256 * MIB + ROW_BYTES), ("offset/256MiB-row", 256 * MIB - ROW_BYTES)):
        cases[name] = [[chunk] * world for _ in range(world)]
    if world == 4:
        for scale in (0.99, 1.01):
            cases[f"moe/x{scale}"] = [[int(round(r * scale)) * ROW_BYTES for r in row] for row in MOE_ROWS]
    # rotated patterns: rank r sends pattern[(d - r) mod W] rows to rank d (pattern[0] stays on the
    # rank), so every rank sends and receives the same multiset of chunks; 16384 rows = 2^28 bytes
    for name, pattern in PATTERNS.items():
        rows = [pattern[i % len(pattern)] for i in range(world)]
        cases[f"pattern/{name}"] = [[rows[(d - r) % world] * ROW_BYTES for d in range(world)] for r in range(world)]
    return cases


#: per-peer chunk patterns in 16 KiB rows (16384 rows = 256 MiB = 2^28 bytes)
PATTERNS = {
    "below-even": [16300, 16300, 16300, 16300],
    "above-even": [16450, 16450, 16450, 16450],
    "straddle-2^28": [16300, 16450, 16300, 16450],
    "straddle-2^28-diag-only": [16450, 16300, 16300, 16300],
    "straddle-2^28-one-peer": [16300, 16450, 16300, 16300],
    "straddle-2^28-wide": [15000, 18000, 15000, 18000],
    "uneven-below": [16000, 16350, 16100, 16380],
    "uneven-above": [16400, 16750, 16500, 16780],
    "straddle-2^27": [8150, 8225, 8150, 8225],
    "straddle-2^29": [32700, 32850, 32700, 32850],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file written by rank 0")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--min-mib", type=float, default=160.0, help="smallest equal per-peer chunk, MiB")
    parser.add_argument("--max-mib", type=float, default=448.0, help="largest equal per-peer chunk, MiB")
    parser.add_argument("--steps", type=int, default=19, help="equal chunk sizes on the grid")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    if not 0 < args.min_mib <= args.max_mib or args.steps < 1 or args.iterations < 1 or args.warmup < 0:
        raise SystemExit(f"bad sweep: min_mib={args.min_mib} max_mib={args.max_mib} steps={args.steps} "
                         f"iterations={args.iterations} warmup={args.warmup}")
    rt = init_runtime(args.device)
    rank, world, device = rt.rank, rt.world_size, rt.device
    results = {}
    for name, matrix in case_bytes(world, rank, args.min_mib, args.max_mib, args.steps).items():
        send = [int(b) for b in matrix[rank]]                      # (W,) bytes to each peer
        recv = [int(matrix[src][rank]) for src in range(world)]   # (W,) bytes from each peer
        x = torch.randint(0, 255, (sum(send),), dtype=torch.uint8, device=device)
        out = torch.empty(sum(recv), dtype=torch.uint8, device=device)
        median_s, per_iteration = timed(lambda: dist.all_to_all_single(out, x, recv, send), device,
                                        args.iterations, args.warmup)
        off = [[b if s != d else 0 for d, b in enumerate(row)] for s, row in enumerate(matrix)]
        max_offdiag = max(max(sum(row) for row in off), max(sum(off[s][d] for s in range(world)) for d in range(world)))
        results[name] = {"traffic_bytes": matrix, "time_s": median_s, "per_iteration_s": per_iteration,
                         "max_offdiag_bytes": max_offdiag, "busbw_Bps": max_offdiag / median_s}
        del x, out
        if device.type == "cuda":
            torch.cuda.empty_cache()
    provenance = {"world_size": world, "torch": torch.__version__,
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "nccl": ".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else None,
                  "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                  "command": " ".join(["benchmarks/a2a_chunk_sweep.py"] + (argv if argv is not None else sys.argv[1:]))}
    shutdown()
    if rank == 0:
        with open(args.out, "w") as handle:
            json.dump({"provenance": provenance, "results": results}, handle, indent=1)
        for name, row in results.items():
            sys.stdout.write(f"{name:24s} {row['time_s'] * 1e3:8.3f} ms  busbw {row['busbw_Bps'] / 1e9:6.1f} GB/s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
