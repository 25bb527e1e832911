"""run-ax: the experts' input gradient dx = dy @ W[e]^T (Triton grouped GEMM on the transposed weight view)
at DeepSeek-V3-like shapes, against the forward GEMM on the same weights; a tile sweep for the transposed
case; then the FFN forward + backward ratio with the layer's tile and with the sweep's best.

    python3 data/measured/h200/run-ax/bench_dx.py [--repeats 7] [--rounds 3]
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

SHAPES = [
    ("deepseek-v3-like", 256, 32768, 7168, 2048, "top8"),
    ("deepseek-v3-like-lsh", 256, 28160, 7168, 2048, "dirichlet8"),
    ("deepseek-v3-like, 2 GPUs", 128, 16384, 7168, 2048, "top8-half"),
]
#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M, HALF_TAIL)
CANDIDATES = [
    (128, 256, 64, 8, 4, 8, True), (128, 256, 64, 8, 3, 8, True), (128, 256, 64, 8, 4, 4, True),
    (128, 256, 64, 8, 3, 4, True), (128, 128, 64, 4, 4, 8, True), (128, 128, 64, 8, 4, 8, True),
    (128, 128, 128, 8, 3, 8, True), (128, 128, 128, 4, 3, 8, True), (128, 256, 128, 8, 2, 8, True),
    (64, 256, 64, 4, 4, 8, False), (64, 256, 64, 8, 4, 8, False), (128, 256, 32, 8, 5, 8, True),
    (128, 128, 64, 4, 5, 8, True), (128, 256, 64, 8, 4, 16, True), (64, 128, 128, 4, 3, 8, False),
    (128, 64, 128, 4, 4, 8, True), (128, 256, 64, 8, 4, 2, True), (128, 128, 64, 8, 5, 4, True),
]


def med(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2]


def interleaved(fns: dict, repeats: int, rounds: int) -> dict:
    out = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            out[k] += times_s(fn, repeats, 1)
    return {k: med(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from lshsim.executor import grouped_gemm as gg
    from lshsim.executor import moe_ops
    dev = torch.device("cuda")
    torch.manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": []}
    best_for = {}
    for name, experts, rows, d, f, kind in SHAPES:
        counts = counts_of(kind, experts, rows)
        rows = sum(counts)
        offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
        x = torch.randn(rows, d, device=dev, dtype=torch.bfloat16)
        h = torch.randn(rows, f, device=dev, dtype=torch.bfloat16)
        w1 = torch.randn(experts, d, f, device=dev, dtype=torch.bfloat16) * 0.02
        w2 = torch.randn(experts, f, d, device=dev, dtype=torch.bfloat16) * 0.02
        shape = {"name": name, "rows": rows, "min_rows": min(counts), "max_rows": max(counts)}
        for mat, a_fwd, w, a_bwd in (("W1", x, w1, h), ("W2", h, w2, x)):
            wt = w.transpose(1, 2)
            ref = gg.grouped_matmul(a_bwd, wt, offs)
            fns = {"forward": lambda a=a_fwd, w=w: gg.grouped_matmul(a, w, offs),
                   "dx layer tile": lambda a=a_bwd, wt=wt: gg.grouped_matmul(a, wt, offs)}
            diffs = {}
            for c in CANDIDATES:
                try:
                    y = gg.grouped_matmul(a_bwd, wt, offs, config=c)
                    torch.cuda.synchronize()
                except Exception as exc:  # noqa: BLE001 - out of shared memory etc.
                    print(f"{name} {mat} {c}: {type(exc).__name__} {str(exc)[:80]}", flush=True)
                    continue
                diffs[str(c)] = float((y.float() - ref.float()).abs().max())
                fns[str(c)] = lambda a=a_bwd, wt=wt, c=c: gg.grouped_matmul(a, wt, offs, config=c)
            if moe_ops.GROUPED_MM is not None:
                try:
                    moe_ops.GROUPED_MM(a_bwd, wt, offs=offs)
                    fns["torch grouped_mm"] = lambda a=a_bwd, wt=wt: moe_ops.GROUPED_MM(a, wt, offs=offs)
                except Exception as exc:  # noqa: BLE001
                    print(f"{name} {mat} grouped_mm: {exc}", flush=True)
            wt_c = wt.contiguous()
            fns["dx on a contiguous W^T (copy not timed)"] = lambda a=a_bwd, w=wt_c: gg.grouped_matmul(a, w, offs)
            t = interleaved(fns, args.repeats, args.rounds)
            del wt_c
            cands = {k: v for k, v in t.items() if k.startswith("(")}
            best = min(cands, key=cands.get)
            best_for[(name, mat)] = eval(best)
            print(f"{name:26s} {mat} rows {rows} ({min(counts)}-{max(counts)}): forward {t['forward']*1e3:.3f} ms, "
                  f"dx layer tile {t['dx layer tile']*1e3:.3f}, best {best} {cands[best]*1e3:.3f} "
                  f"(max |diff| {diffs[best]:.1e}), grouped_mm {t.get('torch grouped_mm', float('nan'))*1e3:.3f}, "
                  f"contiguous W^T {t['dx on a contiguous W^T (copy not timed)']*1e3:.3f}", flush=True)
            for k, v in sorted(t.items(), key=lambda kv: kv[1]):
                print(f"    {v*1e3:8.3f} ms  {k}", flush=True)
            shape[mat] = {"times_s": t, "diffs": diffs, "best": best}
        # the FFN forward + backward with the layer's dx tile and with this shape's best tiles
        orig = gg.grouped_matmul

        def tuned(xx, ww, oo, config=None, out=None, _n=name):
            if config is None and ww.stride(1) == 1 and ww.stride(2) != 1:  # the transposed view: dx
                config = best_for[(_n, "W1" if ww.shape[2] == d else "W2")]
            return orig(xx, ww, oo, config=config, out=out)

        w1p = w1.clone().requires_grad_()
        w2p = w2.clone().requires_grad_()
        xp = x.clone().requires_grad_()
        g = torch.randn(rows, d, device=dev, dtype=torch.bfloat16)

        def fwd():
            with torch.no_grad():
                moe_ops.expert_ffn_grouped(xp, counts, offs, w1p, w2p, "triton_gmm")

        def fwdbwd():
            w1p.grad = w2p.grad = xp.grad = None
            y, _ = moe_ops.expert_ffn_grouped(xp, counts, offs, w1p, w2p, "triton_gmm")
            y.backward(g)

        res = {}
        grads = {}
        for label, fn in (("layer tile", orig), ("best tile", tuned)):
            gg.grouped_matmul = fn
            fwdbwd()
            grads[label] = [t.grad.clone() for t in (xp, w1p, w2p)]
        gg.grouped_matmul = orig
        samples = {"layer tile": ([], []), "best tile": ([], [])}
        for _ in range(5):
            for label, fn in (("layer tile", orig), ("best tile", tuned)):
                gg.grouped_matmul = fn
                samples[label][0].extend(times_s(fwd, args.repeats, 1))
                samples[label][1].extend(times_s(fwdbwd, args.repeats, 1))
        gg.grouped_matmul = orig
        for label, (fs, fbs) in samples.items():
            f_, fb = med(fs), med(fbs)
            res[label] = {"forward_s": f_, "forward_backward_s": fb, "backward_over_forward": (fb - f_) / f_}
            print(f"{name:26s} FFN {label:10s}: forward {f_*1e3:.3f} ms, forward+backward {fb*1e3:.3f} ms, "
                  f"backward / forward {(fb - f_) / f_:.2f}", flush=True)
        gd = [float((a.float() - b.float()).abs().max()) for a, b in zip(grads["layer tile"], grads["best tile"])]
        print(f"{name:26s} FFN grads max |diff| layer vs best tile: {gd}", flush=True)
        shape["ffn"] = res
        shape["ffn_grad_diffs"] = gd
        report["shapes"].append(shape)
        del x, h, w1, w2, w1p, w2p, xp, g
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
