"""Triton grouped GEMM (executor/grouped_gemm.py) vs torch grouped_mm at the layer's expert shapes,
balanced and uneven rows per expert. CUDA-event medians of 20."""
import sys, statistics, json, time
import torch
sys.path.insert(0, '.')
from lshsim.executor.moe_ops import GROUPED_MM
from lshsim.executor import grouped_gemm as gg

dev = torch.device('cuda')
def timeit(fn, n=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)
m = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
peak = 2 * 8192 ** 3 / min(timeit(lambda: m @ m) for _ in range(3))
buf = torch.empty(2**30, dtype=torch.uint8, device=dev)
bw = 2 * buf.numel() / timeit(lambda: buf.clone())
del m, buf
print(f"peak {peak/1e12:.0f} TFLOP/s, copy {bw/1e12:.2f} TB/s", flush=True)

def dist(kind, E, R, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "balanced":
        c = torch.full((E,), R // E); c[: R - int(c.sum())] += 1
    elif kind.startswith("dirichlet"):
        alpha = float(kind[9:])
        p = torch.distributions.Dirichlet(torch.full((E,), alpha)).sample()
        c = torch.bincount(torch.multinomial(p, R, replacement=True, generator=g), minlength=E)
    elif kind == "top8":  # random router logits, top-8 of E over R/8 tokens
        logits = torch.randn(R // 8, E, generator=g)
        c = torch.bincount(logits.topk(8, dim=1).indices.reshape(-1), minlength=E)
    elif kind == "top8b":  # another draw
        logits = torch.randn(R // 8, E, generator=torch.Generator().manual_seed(seed + 10))
        c = torch.bincount(logits.topk(8, dim=1).indices.reshape(-1), minlength=E)
    elif kind == "top8x":  # this rank's half of 256 experts, top-8 over 2 R / 8 tokens
        logits = torch.randn(2 * R // 8, 2 * E, generator=g)
        c = torch.bincount(logits.topk(8, dim=1).indices.reshape(-1), minlength=2 * E)[:E]
    return [int(v) for v in c]

shapes = [("deepseek-v3-like", 256, 32768, 7168, 2048, ["top8", "balanced", "top8b"]),
          ("deepseek-v3-like-lsh", 256, 28160, 7168, 2048, ["dirichlet8", "dirichlet2"]),
          ("deepseek-v3-like 2 GPUs", 128, 16384, 7168, 2048, ["top8x"]),
          ("E64-r96", 64, 6144, 4096, 1408, ["top8"]),
          ("gpu-lsh-d4096-t8k", 8, 1691, 4096, 8192, ["dirichlet1"])]
rows_out = []
for name, E, R, d, f, kinds in shapes:
    g = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.randn(R + R // 4, d, device=dev, dtype=torch.bfloat16, generator=g)
    w1 = torch.randn(E, d, f, device=dev, dtype=torch.bfloat16, generator=g) * d ** -0.5
    w2 = torch.randn(E, f, d, device=dev, dtype=torch.bfloat16, generator=g) * f ** -0.5
    for kind in kinds:
        counts = dist(kind, E, R, 1)
        R_all = R
        R = sum(counts)
        x = x0[:R]
        offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
        h = torch.randn(R, f, device=dev, dtype=torch.bfloat16, generator=g)
        for gemm, a, w in (("up", x, w1), ("down", h, w2)):
            K, N = w.shape[1], w.shape[2]
            flops = 2 * R * K * N
            ref = GROUPED_MM(a, w, offs=offs)
            t_ref = timeit(lambda: GROUPED_MM(a, w, offs=offs))
            best = None
            res = {}
            for cfg in gg.CONFIGS:
                try:
                    y = gg.grouped_matmul(a, w, offs, config=cfg)
                    err = float((y.float() - ref.float()).abs().max() / ref.float().abs().max())
                    t = timeit(lambda: gg.grouped_matmul(a, w, offs, config=cfg))
                except Exception as exc:  # a config that does not fit
                    print(f"  {cfg}: {type(exc).__name__} {str(exc)[:100]}", flush=True); continue
                res[str(cfg)] = (t, err)
                if best is None or t < best[1]: best = (cfg, t, err)
            pick = gg.pick_config(R, E, N, K)
            t_pick = res.get(str(pick), (float('nan'),))[0]
            row = dict(shape=name, dist=kind, gemm=gemm, E=E, R=R, K=K, N=N, max_rows=max(counts), min_rows=min(counts),
                       grouped_mm_ms=t_ref*1e3, grouped_mm_peak=flops/t_ref/peak, best_cfg=best[0], best_ms=best[1]*1e3,
                       best_peak=flops/best[1]/peak, best_err=best[2], pick_cfg=pick, pick_ms=t_pick*1e3,
                       all={k: (v[0]*1e3, v[1]) for k, v in res.items()})
            rows_out.append(row)
            print(f"{name:22s} {kind:10s} {gemm:4s} rows {min(counts)}-{max(counts)} | grouped_mm {t_ref*1e3:7.3f} ms {flops/t_ref/peak:.2f} | "
                  f"triton best {best[1]*1e3:7.3f} ms {flops/best[1]/peak:.2f} {best[0]} err {best[2]:.1e} | pick {t_pick*1e3:7.3f}", flush=True)
        # whole FFN forward and forward + backward
        xr = x.detach().requires_grad_(True); w1r = w1.detach().requires_grad_(True); w2r = w2.detach().requires_grad_(True)
        gy = torch.randn(R, d, device=dev, dtype=torch.bfloat16, generator=g)
        from lshsim.executor.moe_ops import expert_ffn_grouped
        def f_torch():
            return expert_ffn_grouped(xr, counts, offs, w1r, w2r, "grouped_mm")[0]
        def f_triton():
            return expert_ffn_grouped(xr, counts, offs, w1r, w2r, "triton_gmm")[0]
        out = {}
        for lab, fn in (("torch", f_torch), ("triton", f_triton)):
            with torch.no_grad():
                tf = timeit(fn)
            def fb():
                fn().backward(gy)
            def bwd_only():
                pass
            tb = timeit(fb)
            xr.grad = w1r.grad = w2r.grad = None
            y = fn(); y.backward(gy)
            out[lab] = (tf, tb, y.detach().float(), xr.grad.float(), w1r.grad.float(), w2r.grad.float())
            xr.grad = w1r.grad = w2r.grad = None
        flops = 4 * R * d * f
        errs = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(out["triton"][2:], out["torch"][2:])]
        row = dict(shape=name, dist=kind, gemm="ffn", torch_fwd_ms=out["torch"][0]*1e3, torch_fb_ms=out["torch"][1]*1e3,
                   triton_fwd_ms=out["triton"][0]*1e3, triton_fb_ms=out["triton"][1]*1e3,
                   torch_fwd_peak=flops/out["torch"][0]/peak, triton_fwd_peak=flops/out["triton"][0]/peak,
                   torch_bwd_over_fwd=(out["torch"][1]-out["torch"][0])/out["torch"][0],
                   triton_bwd_over_fwd=(out["triton"][1]-out["triton"][0])/out["triton"][0], rel_err_y_dx_dw1_dw2=errs)
        rows_out.append(row)
        print(f"FFN {name} {kind}: fwd torch {row['torch_fwd_ms']:.3f} ({row['torch_fwd_peak']:.2f}) triton {row['triton_fwd_ms']:.3f} ({row['triton_fwd_peak']:.2f}); "
              f"bwd/fwd torch {row['torch_bwd_over_fwd']:.2f} triton {row['triton_bwd_over_fwd']:.2f}; err {['%.1e' % e for e in errs]}", flush=True)
        del out
        R = R_all
    del x, x0, w1, w2
    torch.cuda.empty_cache()
json.dump(dict(peak=peak, copy_Bps=bw, rows=rows_out), open(sys.argv[1], 'w'), indent=1)
