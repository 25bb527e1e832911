"""run-ay: where the DeepSeek-V3-like expert backward spends its time, and tiles for its two slowest parts.

A. the FFN forward + backward (Triton grouped GEMM, 256 experts, d 7168, d_ffn 2048, 32,768 rows)
   under the CUDA profiler: time per kernel, with the layer's dx tile and with the transposed-K
   tile run-ax found (128, 256, 64, 8, 4, 2, True).
B. the weight gradient dw[e] = x_e^T dy_e: torch's grouped matrix multiply (the layer's choice)
   against the Triton `grouped_weight_grad` over a tile sweep, and against writing dw alone
   (a bf16 fill of the (E, K, N) tensor: the write bound, measured in the same run).
C. the forward GEMM at K = 7168 with the layer's tile and with a few others.

    python3 data/measured/h200/run-ay/bench_bwd.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

import torch  # noqa: E402

from benchmarks.bench_grouped_gemm import counts_of  # noqa: E402
from benchmarks.cuda_timing import times_s  # noqa: E402

DX_TILE = (128, 256, 64, 8, 4, 2, True)
WGRAD = [(128, 128, 32, 4, 3, 8), (128, 128, 64, 8, 3, 8), (128, 256, 64, 8, 3, 8), (256, 128, 64, 8, 3, 8),
         (128, 128, 64, 4, 3, 8), (128, 128, 128, 8, 2, 8), (64, 256, 64, 4, 3, 8), (128, 256, 32, 8, 4, 8),
         (128, 256, 128, 8, 2, 8), (128, 128, 64, 4, 4, 1), (128, 256, 64, 8, 3, 1), (256, 128, 64, 8, 3, 1),
         (128, 128, 32, 4, 4, 8), (64, 128, 64, 4, 3, 8)]
FWD = [(128, 256, 64, 8, 3, 4, True), (128, 256, 64, 8, 4, 4, True), (128, 256, 64, 8, 4, 2, True),
       (128, 256, 64, 8, 4, 8, True), (128, 256, 64, 8, 3, 2, True), (128, 256, 64, 8, 3, 8, True)]


def med(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2]


def interleaved(fns: dict, repeats: int = 7, rounds: int = 3) -> dict:
    out = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            out[k] += times_s(fn, repeats, 1)
    return {k: med(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from lshsim.executor import grouped_gemm as gg
    from lshsim.executor import moe_ops
    dev = torch.device("cuda")
    torch.manual_seed(0)
    E, d, f = 256, 7168, 2048
    counts = counts_of("top8", E, 32768)
    rows = sum(counts)
    offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}

    # A. the FFN under the profiler
    w1 = (torch.randn(E, d, f, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    w2 = (torch.randn(E, f, d, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    x = torch.randn(rows, d, device=dev, dtype=torch.bfloat16).requires_grad_()
    g = torch.randn(rows, d, device=dev, dtype=torch.bfloat16)
    orig = gg.grouped_matmul

    def tuned(xx, ww, oo, config=None, out=None):
        if config is None and ww.stride(1) == 1 and ww.stride(2) != 1 and ww.shape[1] > 4096:
            config = DX_TILE
        return orig(xx, ww, oo, config=config, out=out)

    def fwdbwd():
        w1.grad = w2.grad = x.grad = None
        y, _ = moe_ops.expert_ffn_grouped(x, counts, offs, w1, w2, "triton_gmm")
        y.backward(g)

    report["profile"] = {}
    for label, fn in (("layer tile", orig), ("transposed-K tile", tuned)):
        gg.grouped_matmul = fn
        for _ in range(3):
            fwdbwd()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fwdbwd()
            torch.cuda.synchronize()
        rows_ = []
        for ev in prof.key_averages():
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if t > 0 and ev.count:
                rows_.append((t / 5 / 1e3, ev.count // 5, ev.key[:90]))
        rows_.sort(reverse=True)
        total = sum(r[0] for r in rows_ if not r[2].startswith(("aten::", "cuda", "Memcpy")) or True)
        print(f"A. FFN forward + backward, {label}: per step, by kernel (ms, calls)", flush=True)
        for t, c, k in rows_[:14]:
            print(f"    {t:8.3f} ms  x{c:<3d} {k}", flush=True)
        report["profile"][label] = rows_[:30]
    gg.grouped_matmul = orig
    del w1, w2, x, g
    torch.cuda.empty_cache()

    # B. the weight gradient
    report["wgrad"] = {}
    for mat, k, n in (("W1 (d x f)", d, f), ("W2 (f x d)", f, d)):
        a = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
        dy = torch.randn(rows, n, device=dev, dtype=torch.bfloat16)
        ref = moe_ops.GROUPED_MM(a.transpose(0, 1), dy, offs=offs)
        buf = torch.empty(E, k, n, device=dev, dtype=torch.bfloat16)
        fns = {"torch grouped_mm": lambda a=a, dy=dy: moe_ops.GROUPED_MM(a.transpose(0, 1), dy, offs=offs),
               "write bound: fill dw": lambda b=buf: b.fill_(1.0)}
        diffs = {}
        for c in WGRAD:
            try:
                y = gg.grouped_weight_grad(a, dy, offs, E, config=c)
                torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001
                print(f"B. {mat} {c}: {type(exc).__name__} {str(exc)[:80]}", flush=True)
                continue
            diffs[str(c)] = float((y.float() - ref.float()).abs().max() / ref.float().abs().max())
            del y
            fns[str(c)] = lambda a=a, dy=dy, c=c: gg.grouped_weight_grad(a, dy, offs, E, config=c)
        t = interleaved(fns)
        print(f"B. weight gradient {mat}, rows {rows}: (ms; rel. max diff to grouped_mm)", flush=True)
        for key, v in sorted(t.items(), key=lambda kv: kv[1]):
            print(f"    {v*1e3:8.3f} ms  {key}  {diffs.get(key, '')}", flush=True)
        report["wgrad"][mat] = {"times_s": t, "diffs": diffs}
        del a, dy, ref, buf
        torch.cuda.empty_cache()

    # C. the forward at K = 7168 (W1) and K = 2048 (W2)
    report["forward"] = {}
    for mat, k, n in (("W1 (d x f)", d, f), ("W2 (f x d)", f, d)):
        a = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(E, k, n, device=dev, dtype=torch.bfloat16) * 0.02
        fns = {"layer tile": lambda a=a, w=w: gg.grouped_matmul(a, w, offs)}
        for c in FWD:
            fns[str(c)] = lambda a=a, w=w, c=c: gg.grouped_matmul(a, w, offs, config=c)
        t = interleaved(fns)
        print(f"C. forward {mat} (layer tile {gg.pick_config(rows, E, n, k)}):", flush=True)
        for key, v in sorted(t.items(), key=lambda kv: kv[1]):
            print(f"    {v*1e3:8.3f} ms  {key}", flush=True)
        report["forward"][mat] = t
        del a, w
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
