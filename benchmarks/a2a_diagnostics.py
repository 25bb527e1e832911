"""Why does an MoE all-to-all take longer than the calibration's all-to-all of the same bytes?

Run as `PYTHONPATH=. torchrun --nproc_per_node=4 benchmarks/a2a_diagnostics.py OUT.json` on 4 GPUs.
Each case is timed like `executor calibrate` (ranks aligned on the host,
CUDA events, slowest rank, median of 15 after 5 warm-ups), cold (idle GPU) and hot (right after
~2 s of bf16 GEMMs on every GPU), for 1 GiB and 128 MiB per rank:

* u8-equal:    uint8 tensor, equal splits (the calibration);
* bf16-equal:  bf16 (rows, d) tensor, equal splits of whole rows;
* bf16-moe:    bf16 rows with the uneven splits of the measured uniform MoE workload;
* u8-moe:      uint8 with the same uneven byte splits.
"""
from __future__ import annotations

import json
import sys
import time

import torch
import torch.distributed as dist

from lshsim.executor.comm import align_ranks
from lshsim.executor.runtime import init_runtime, shutdown
from lshsim.executor.timing import PhaseTimer

# rows sent from rank (row) to rank (column) by gpu-uniform-d8192-t32k on 4 H200 (16 KiB rows)
MOE_ROWS_1G = [[16336, 16343, 16524, 16333], [16549, 16341, 16368, 16278], [16433, 16399, 16510, 16194],
               [16420, 16329, 16430, 16357]]


def timed(fn, device, iterations=15, warmup=5):
    timer = PhaseTimer(device)
    out = []
    for it in range(warmup + iterations):
        align_ranks(device)
        timer.start_iteration()
        timer.begin("other")
        fn()
        timer.end("other")
        start, end = timer.finish_iteration()[("other", "forward")]
        if it >= warmup:
            out.append(end - start)
    values = torch.tensor(out, dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    values = sorted(values.cpu().tolist())
    return values[(len(values) - 1) // 2]


def heat(device, seconds=2.0):
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()


def main(path: str) -> int:
    rt = init_runtime("cuda")
    rank, world, device = rt.rank, rt.world_size, rt.device
    results = {}
    for scale_name, row_bytes, divisor in (("1GiB", 16384, 1), ("128MiB", 16384, 8)):
        rows = [[r // divisor for r in row] for row in MOE_ROWS_1G]
        send_rows = rows[rank]
        recv_rows = [rows[s][rank] for s in range(world)]
        total = sum(sum(r) for r in rows) // world * row_bytes  # mean bytes per rank
        equal_rows = total // row_bytes // world
        cases = {}
        u8 = torch.randint(0, 255, (equal_rows * world * row_bytes,), dtype=torch.uint8, device=device)
        u8_out = torch.empty_like(u8)
        eq = [equal_rows * row_bytes] * world
        cases["u8-equal"] = lambda: dist.all_to_all_single(u8_out, u8, eq, eq)
        bf = torch.randn(equal_rows * world, row_bytes // 2, device=device).to(torch.bfloat16)
        bf_out = torch.empty_like(bf)
        eqr = [equal_rows] * world
        cases["bf16-equal"] = lambda: dist.all_to_all_single(bf_out, bf, eqr, eqr)
        bm = torch.randn(sum(send_rows), row_bytes // 2, device=device).to(torch.bfloat16)
        bm_out = torch.empty(sum(recv_rows), row_bytes // 2, device=device, dtype=torch.bfloat16)
        cases["bf16-moe"] = lambda: dist.all_to_all_single(bm_out, bm, recv_rows, send_rows)
        um = torch.randint(0, 255, (sum(send_rows) * row_bytes,), dtype=torch.uint8, device=device)
        um_out = torch.empty(sum(recv_rows) * row_bytes, dtype=torch.uint8, device=device)
        sb, rb = [r * row_bytes for r in send_rows], [r * row_bytes for r in recv_rows]
        cases["u8-moe"] = lambda: dist.all_to_all_single(um_out, um, rb, sb)
        for state in ("cold", "hot", "cold-again"):
            if state == "hot":
                heat(device)
            elif state == "cold-again":
                torch.cuda.synchronize()
                time.sleep(3.0)
            for name, fn in cases.items():
                if state == "hot":
                    heat(device, 0.5)
                results[f"{scale_name}/{state}/{name}"] = timed(fn, device)
        del u8, u8_out, bf, bf_out, bm, bm_out, um, um_out
        torch.cuda.empty_cache()
    shutdown()
    if rank == 0:
        with open(path, "w") as handle:
            json.dump(results, handle, indent=1)
        for key, value in results.items():
            sys.stdout.write(f"{key:32s} {value * 1e6:9.1f} us\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "a2a_diagnostics.json"))
