"""The experts' grouped GEMM on one GPU: torch's grouped_mm against the Triton kernel of
`lshsim.executor.grouped_gemm`, at the layer benchmark's expert shapes, with the rows per expert a
real routing gives (uneven) and spread evenly.

    python benchmarks/bench_grouped_gemm.py [--repeats 20] [--configs] [--json OUT.json]

Per shape and row distribution (CUDA-event medians after 3 warm-ups; the bf16 matmul peak and the
copy bandwidth measured in the same run):

  up / down   one grouped GEMM, x (R, d) @ W1 (E, d, f) and h (R, f) @ W2 (E, f, d): grouped_mm, the
              Triton kernel at the layer's tile (`pick_config`) and, with --configs, at its best over
              `grouped_gemm.CONFIGS`; the largest relative difference of the Triton output to grouped_mm's
  dw          the weight gradient x_e^T dy_e of the up GEMM: grouped_mm's K-grouped form against the
              Triton fallback (`grouped_weight_grad`, default tile)
  ffn         expert_ffn_grouped's forward, and forward + backward, with method grouped_mm and triton_gmm,
              and which method "auto" takes for the shape

The shapes: DeepSeek-V3-like on 1 GPU (256 experts, d 7,168, d_ffn 2,048, top-8 of 4,096 tokens), its
LSH variant's centroids (Dirichlet-spread counts), its half on 2 GPUs (128 local experts), a
fine-grained 64-expert shape, gpu-lsh-d4096-t8k's centroids (8 experts, about 211 rows each) and a
dense gpu-uniform-d4096-t8k (8 experts, 2,048 rows each). Fraction of peak = 2 R d f / time / peak.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.cuda_timing import median_s  # noqa: E402

#: (name, experts, rows in all, d, f, distribution): "top8" = the counts of a random top-8 routing of
#: rows / 8 tokens over the experts; "top8-half" = the first half of 2E experts' top-8 counts (a rank of
#: two); "dirichletA" = rows drawn over Dirichlet(A) weights; "balanced" = equal counts
SHAPES = [
    ("deepseek-v3-like", 256, 32768, 7168, 2048, "top8"),
    ("deepseek-v3-like", 256, 32768, 7168, 2048, "balanced"),
    ("deepseek-v3-like-lsh", 256, 28160, 7168, 2048, "dirichlet8"),
    ("deepseek-v3-like, 2 GPUs", 128, 16384, 7168, 2048, "top8-half"),
    ("E64-r96", 64, 6144, 4096, 1408, "top8"),
    ("gpu-lsh-d4096-t8k", 8, 1691, 4096, 8192, "dirichlet1"),
    ("gpu-uniform-d4096-t8k", 8, 16384, 4096, 8192, "balanced"),
]


def counts_of(kind: str, experts: int, rows: int, seed: int = 1) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    if kind == "balanced":
        counts = torch.full((experts,), rows // experts)
        counts[: rows - int(counts.sum())] += 1
    elif kind == "top8":
        logits = torch.randn(rows // 8, experts, generator=generator)
        counts = torch.bincount(logits.topk(8, dim=1).indices.reshape(-1), minlength=experts)
    elif kind == "top8-half":
        logits = torch.randn(2 * rows // 8, 2 * experts, generator=generator)
        counts = torch.bincount(logits.topk(8, dim=1).indices.reshape(-1), minlength=2 * experts)[:experts]
    elif kind.startswith("dirichlet"):
        import numpy as np

        weights = np.random.default_rng(seed).dirichlet(np.full(experts, float(kind[9:])))
        counts = torch.bincount(torch.multinomial(torch.from_numpy(weights), rows, replacement=True,
                                                  generator=generator), minlength=experts)
    else:
        raise ValueError(f"distribution {kind!r}")
    return [int(v) for v in counts]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / (b.float().abs().max() or 1.0))


def run_shape(name, experts, rows, d, f, kind, peak, repeats, sweep) -> dict:
    from lshsim.executor import grouped_gemm as gg
    from lshsim.executor.moe_ops import GROUPED_MM, auto_expert_method, expert_ffn_grouped

    device = torch.device("cuda")
    counts = counts_of(kind, experts, rows)
    rows = sum(counts)
    offsets = torch.tensor(counts, device=device).cumsum(0).to(torch.int32)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, d, device=device, dtype=torch.bfloat16, generator=generator)
    h = torch.randn(rows, f, device=device, dtype=torch.bfloat16, generator=generator)
    w1 = torch.randn(experts, d, f, device=device, dtype=torch.bfloat16, generator=generator) * d ** -0.5
    w2 = torch.randn(experts, f, d, device=device, dtype=torch.bfloat16, generator=generator) * f ** -0.5
    flops = 2.0 * rows * d * f  # one GEMM
    out = {"shape": name, "distribution": kind, "experts": experts, "rows": rows, "d": d, "f": f,
           "min_rows": min(counts), "max_rows": max(counts)}
    for gemm, a, w in (("up", x, w1), ("down", h, w2)):
        ref = GROUPED_MM(a, w, offs=offsets)
        t_torch = median_s(lambda: GROUPED_MM(a, w, offs=offsets), repeats)
        t_pick = median_s(lambda: gg.grouped_matmul(a, w, offsets), repeats)
        row = {"grouped_mm_s": t_torch, "triton_s": t_pick, "triton_diff": rel_diff(gg.grouped_matmul(a, w, offsets), ref),
               "grouped_mm_peak": flops / t_torch / peak, "triton_peak": flops / t_pick / peak}
        if sweep:
            times = {str(c): median_s(lambda c=c: gg.grouped_matmul(a, w, offsets, config=c), repeats) for c in gg.CONFIGS}
            best = min(times, key=times.get)
            row.update(best_config=best, best_s=times[best], configs_s=times)
        out[gemm] = row
    ref = GROUPED_MM(x.transpose(0, 1), h, offs=offsets)
    t_torch = median_s(lambda: GROUPED_MM(x.transpose(0, 1), h, offs=offsets), repeats)
    t_tri = median_s(lambda: gg.grouped_weight_grad(x, h, offsets, experts), repeats)
    out["dw"] = {"grouped_mm_s": t_torch, "triton_s": t_tri,
                 "triton_diff": rel_diff(gg.grouped_weight_grad(x, h, offsets, experts), ref)}
    del ref
    xr, w1r, w2r = x.requires_grad_(True), w1.requires_grad_(True), w2.requires_grad_(True)
    gy = torch.randn(rows, d, device=device, dtype=torch.bfloat16, generator=generator)
    ffn = {}
    results = {}
    for method in ("grouped_mm", "triton_gmm"):
        def forward():
            return expert_ffn_grouped(xr, counts, offsets, w1r, w2r, method)[0]

        def step():
            for t in (xr, w1r, w2r):
                t.grad = None
            forward().backward(gy)

        with torch.no_grad():
            t_fwd = median_s(forward, repeats)
        t_step = median_s(step, repeats)
        step()
        results[method] = [forward().detach(), xr.grad, w1r.grad, w2r.grad]
        ffn[method] = {"forward_s": t_fwd, "forward_backward_s": t_step, "forward_peak": 2 * flops / t_fwd / peak,
                       "backward_over_forward": (t_step - t_fwd) / t_fwd}
    ffn["triton_diff_out_dx_dw1_dw2"] = [rel_diff(a, b) for a, b in zip(results["triton_gmm"], results["grouped_mm"])]
    ffn["auto"] = auto_expert_method(x, experts, d, f)
    out["ffn"] = ffn
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (median; default 20)")
    parser.add_argument("--configs", action="store_true", help="also time every tile of grouped_gemm.CONFIGS")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_grouped_gemm: needs a CUDA GPU (and Triton)", file=sys.stderr)
        return 2
    from lshsim.executor import grouped_gemm as gg

    if not gg.available(torch.empty(0, device="cuda", dtype=torch.bfloat16)):
        print("bench_grouped_gemm: Triton does not import here", file=sys.stderr)
        return 2
    m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    peak = 2 * 8192 ** 3 / min(median_s(lambda: m @ m, 10) for _ in range(3))
    buf = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    copy_Bps = 2 * buf.numel() / median_s(lambda: buf.clone(), 10)
    del m, buf
    print(f"bf16 peak {peak / 1e12:.0f} TFLOP/s, copy {copy_Bps / 1e12:.2f} TB/s (read + write)", flush=True)
    print(f"{'shape':26s} {'rows/expert':>11s} {'gemm':5s} {'grouped_mm ms':>13s} {'triton ms':>9s} {'speedup':>7s}"
          f" {'of peak':>13s}")
    rows = []
    for spec in SHAPES:
        r = run_shape(*spec, peak=peak, repeats=args.repeats, sweep=args.configs)
        rows.append(r)
        label = f"{r['shape']} ({r['distribution']})"
        for gemm in ("up", "down", "dw"):
            g = r[gemm]
            peak_txt = (f"{g['grouped_mm_peak']:.2f} -> {g['triton_peak']:.2f}" if "triton_peak" in g else "")
            print(f"{label[:26]:26s} {r['min_rows']:>5d}-{r['max_rows']:<5d} {gemm:5s} {g['grouped_mm_s'] * 1e3:13.3f}"
                  f" {g['triton_s'] * 1e3:9.3f} {g['grouped_mm_s'] / g['triton_s']:7.2f} {peak_txt:>13s}"
                  + (f"  best {g['best_config']} {g['best_s'] * 1e3:.3f}" if "best_s" in g else ""), flush=True)
        fg, ft = r["ffn"]["grouped_mm"], r["ffn"]["triton_gmm"]
        print(f"{label[:26]:26s} {'':11s} {'ffn':5s} {fg['forward_s'] * 1e3:13.3f} {ft['forward_s'] * 1e3:9.3f}"
              f" {fg['forward_s'] / ft['forward_s']:7.2f} {fg['forward_peak']:.2f} -> {ft['forward_peak']:.2f}"
              f"  fwd+bwd {fg['forward_backward_s'] * 1e3:.3f} -> {ft['forward_backward_s'] * 1e3:.3f} ms;"
              f" auto: {r['ffn']['auto']}; max diff {max(r['ffn']['triton_diff_out_dx_dw1_dw2']):.1e}", flush=True)
        torch.cuda.empty_cache()
    if args.json:
        from lshsim.io import write_text_atomically

        write_text_atomically(args.json, json.dumps({"peak_flops": peak, "copy_Bps": copy_Bps, "results": rows,
                                                     "command": sys.argv}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
