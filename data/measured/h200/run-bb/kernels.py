"""run-bb: the DeepSeek-V3-like expert FFN kernel by kernel after the change of pick_config (transposed weights: 4 stages),
against the tile before it (3 stages) given explicitly, in A B A B order; then the same at the -lsh shape.

    python3 data/measured/h200/run-bb/kernels.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

import torch  # noqa: E402

from benchmarks.bench_grouped_gemm import counts_of  # noqa: E402

TILES = {"layer tile (4 stages)": None, "before (3 stages)": (128, 256, 64, 8, 3, 4, True)}
POSITIONS = ["fwd W1", "gelu", "fwd W2", "dx W2", "dw W2", "gelu bwd", "dx W1", "dw W1"]


def med(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from lshsim.executor import grouped_gemm as gg
    from lshsim.executor import moe_ops
    dev = torch.device("cuda")
    torch.manual_seed(0)
    E, d, f = 256, 7168, 2048
    counts = counts_of(os.environ.get("DIST", "top8"), E, int(os.environ.get("ROWS", "32768")))
    rows = sum(counts)
    offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
    w1 = (torch.randn(E, d, f, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    w2 = (torch.randn(E, f, d, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    x = torch.randn(rows, d, device=dev, dtype=torch.bfloat16).requires_grad_()
    g = torch.randn(rows, d, device=dev, dtype=torch.bfloat16)
    orig = gg.grouped_matmul
    state = {"tile": None}

    def patched(xx, ww, oo, config=None, out=None):
        if config is None and state["tile"] is not None and ww.stride(1) == 1 and ww.stride(2) != 1 and ww.shape[1] > 4096:
            config = state["tile"]
        return orig(xx, ww, oo, config=config, out=out)

    gg.grouped_matmul = patched

    def step():
        w1.grad = w2.grad = x.grad = None
        y, _ = moe_ops.expert_ffn_grouped(x, counts, offs, w1, w2, "triton_gmm")
        y.backward(g)

    per = {k: {p: [] for p in POSITIONS} for k in TILES}
    for _round in range(2):
        for label, tile in TILES.items():
            state["tile"] = tile
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(6):
                    step()
                torch.cuda.synchronize()
            fd, path = tempfile.mkstemp(suffix=".json")
            os.close(fd)
            prof.export_chrome_trace(path)
            ev = sorted((e for e in json.load(open(path))["traceEvents"] if e.get("cat") == "kernel"),
                        key=lambda e: e["ts"])
            os.unlink(path)
            ev = [e for e in ev if "prepare_grouped_gemm_data" not in e["name"]]
            if len(ev) != 6 * len(POSITIONS):
                print(f"{label}: {len(ev)} kernels, expected {6 * len(POSITIONS)}", flush=True)
                continue
            for i, e in enumerate(ev):
                per[label][POSITIONS[i % len(POSITIONS)]].append(e["dur"] / 1e3)
    gg.grouped_matmul = orig
    out = {}
    print(f"{'tile for dx W2':22s} " + " ".join(f"{p:>8s}" for p in POSITIONS) + "    fwd    bwd  bwd/fwd", flush=True)
    for label in TILES:
        m = {p: med(v) for p, v in per[label].items() if v}
        if len(m) != len(POSITIONS):
            continue
        fwd = m["fwd W1"] + m["gelu"] + m["fwd W2"]
        bwd = sum(m[p] for p in POSITIONS[3:])
        out[label] = {"median_ms": m, "forward_ms": fwd, "backward_ms": bwd, "ratio": bwd / fwd, "samples": per[label]}
        print(f"{label:22s} " + " ".join(f"{m[p]:8.3f}" for p in POSITIONS) + f" {fwd:6.3f} {bwd:6.3f}  {bwd / fwd:.3f}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
