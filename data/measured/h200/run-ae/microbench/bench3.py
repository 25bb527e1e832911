"""Backward pieces: dx = dy w^T (torch grouped_mm vs Triton), dw = x^T dy (torch grouped_mm K-grouped vs
Triton wgrad), and the FFN forward / forward + backward of both paths."""
import sys, statistics, json
import torch
sys.path.insert(0, '.')
from lshsim.executor.moe_ops import GROUPED_MM
from lshsim.executor import grouped_gemm as gg
dev = torch.device('cuda')
def timeit(fn, n=15):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)
m = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
peak = 2 * 8192 ** 3 / min(timeit(lambda: m @ m) for _ in range(3)); del m
print(f"peak {peak/1e12:.0f} TFLOP/s", flush=True)
def counts_of(kind, E, R):
    g = torch.Generator().manual_seed(1)
    if kind == "top8":
        return [int(v) for v in torch.bincount(torch.randn(R // 8, E, generator=g).topk(8, dim=1).indices.reshape(-1), minlength=E)]
    if kind == "balanced":
        return [R // E] * E
    p = torch.distributions.Dirichlet(torch.full((E,), float(kind[9:]))).sample()
    return [int(v) for v in torch.bincount(torch.multinomial(p, R, replacement=True, generator=g), minlength=E)]
rows = []
for name, E, R, d, f, kind in [("deepseek-v3-like", 256, 32768, 7168, 2048, "top8"),
                               ("gpu-lsh-d4096-t8k", 8, 1691, 4096, 8192, "dirichlet1"),
                               ("gpu-uniform-d4096-t8k", 8, 16384, 4096, 8192, "balanced"),
                               ("gpu-nolsh-d1024-t16k", 8, 32768, 1024, 2048, "dirichlet4")]:
    counts = counts_of(kind, E, R); R = sum(counts)
    offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(R, d, device=dev, dtype=torch.bfloat16, generator=g)
    w1 = torch.randn(E, d, f, device=dev, dtype=torch.bfloat16, generator=g) * d ** -0.5
    dy = torch.randn(R, f, device=dev, dtype=torch.bfloat16, generator=g)
    fl = 2 * R * d * f
    ref_dx = GROUPED_MM(dy, w1.transpose(1, 2), offs=offs)
    t_dx_t = timeit(lambda: GROUPED_MM(dy, w1.transpose(1, 2), offs=offs))
    t_dx_g = timeit(lambda: gg.grouped_matmul(dy, w1.transpose(1, 2), offs))
    e_dx = float((gg.grouped_matmul(dy, w1.transpose(1, 2), offs).float() - ref_dx.float()).abs().max() / ref_dx.float().abs().max())
    ref_dw = GROUPED_MM(x.transpose(0, 1), dy, offs=offs)
    t_dw_t = timeit(lambda: GROUPED_MM(x.transpose(0, 1), dy, offs=offs))
    res = {}
    for cfg in gg.WGRAD_CONFIGS:
        try:
            dw = gg.grouped_weight_grad(x, dy, offs, E, config=cfg)
            err = float((dw.float() - ref_dw.float()).abs().max() / ref_dw.float().abs().max())
            res[cfg] = (timeit(lambda: gg.grouped_weight_grad(x, dy, offs, E, config=cfg)), err)
        except Exception as exc:
            print("  wgrad", cfg, type(exc).__name__, str(exc)[:120], flush=True)
    best = min(res.items(), key=lambda kv: kv[1][0])
    print(f"{name} {kind} rows {min(counts)}-{max(counts)}: dx torch {t_dx_t*1e3:.3f} ms ({fl/t_dx_t/peak:.2f}) triton {t_dx_g*1e3:.3f} ({fl/t_dx_g/peak:.2f}) err {e_dx:.1e} | "
          f"dw torch {t_dw_t*1e3:.3f} ({fl/t_dw_t/peak:.2f}) triton best {best[1][0]*1e3:.3f} ({fl/best[1][0]/peak:.2f}) {best[0]} err {best[1][1]:.1e}; "
          + " ".join(f"{c[0]}x{c[1]}x{c[2]}/{c[3]}/{c[4]}:{v[0]*1e3:.3f}" for c, v in res.items()), flush=True)
    # whole FFN
    w2 = torch.randn(E, f, d, device=dev, dtype=torch.bfloat16, generator=g) * f ** -0.5
    xr, w1r, w2r = x.requires_grad_(True), w1.requires_grad_(True), w2.requires_grad_(True)
    gy = torch.randn(R, d, device=dev, dtype=torch.bfloat16, generator=g)
    f_t = lambda: GROUPED_MM(torch.nn.functional.gelu(GROUPED_MM(xr, w1r, offs=offs)), w2r, offs=offs)
    f_g = lambda: gg.GroupedLinear.apply(torch.nn.functional.gelu(gg.GroupedLinear.apply(xr, w1r, offs)), w2r, offs)
    out = {}
    for lab, fn in (("torch", f_t), ("triton", f_g)):
        with torch.no_grad():
            tf = timeit(fn)
        y = fn()
        tfb = timeit(lambda: fn().backward(gy))
        xr.grad = w1r.grad = w2r.grad = None
        y = fn(); y.backward(gy)
        out[lab] = (tf, tfb, [y.detach().float(), xr.grad.float(), w1r.grad.float(), w2r.grad.float()])
        xr.grad = w1r.grad = w2r.grad = None
    errs = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(out["triton"][2], out["torch"][2])]
    fl2 = 2 * fl
    r = dict(shape=name, dist=kind, min_rows=min(counts), max_rows=max(counts), dx_torch_ms=t_dx_t*1e3, dx_triton_ms=t_dx_g*1e3,
             dw_torch_ms=t_dw_t*1e3, dw_triton={str(k): v[0]*1e3 for k, v in res.items()}, dw_err=best[1][1], dx_err=e_dx,
             ffn=dict((lab, dict(fwd_ms=v[0]*1e3, fwd_bwd_ms=v[1]*1e3, fwd_peak=fl2/v[0]/peak, bwd_over_fwd=(v[1]-v[0])/v[0])) for lab, v in out.items()),
             ffn_rel_err_y_dx_dw1_dw2=errs)
    rows.append(r)
    print(f"  FFN: " + "; ".join(f"{lab} fwd {v['fwd_ms']:.3f} ({v['fwd_peak']:.2f}) fwd+bwd {v['fwd_bwd_ms']:.3f} bwd/fwd {v['bwd_over_fwd']:.2f}" for lab, v in r['ffn'].items())
          + f"; err {['%.1e' % e for e in errs]}", flush=True)
    del x, w1, w2, dy, xr, w1r, w2r, out, ref_dw, ref_dx
    torch.cuda.empty_cache()
json.dump(dict(peak=peak, rows=rows), open(sys.argv[1], 'w'), indent=1)
