"""Weight gradient dw[e] = x_e^T dy_e at DeepSeek-V3-like (256 experts, top-8 rows): torch grouped_mm (K-grouped)
against Triton wgrad tile configs; and dx = dy w^T under the forward's tile choice. CUDA-event medians of 15."""
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
g0 = torch.Generator().manual_seed(1)
E, T = 256, 4096
counts = [int(v) for v in torch.bincount(torch.randn(T, E, generator=g0).topk(8, dim=1).indices.reshape(-1), minlength=E)]
R = sum(counts)
offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
g = torch.Generator(device=dev).manual_seed(0)
cfgs = [(128, 128, 32, 4, 4, 8), (128, 128, 16, 4, 6, 8), (128, 128, 32, 4, 6, 8), (128, 128, 32, 8, 4, 8),
        (128, 256, 32, 8, 4, 8), (64, 128, 32, 4, 4, 8), (128, 128, 32, 4, 3, 8), (256, 128, 32, 8, 3, 8),
        (128, 64, 32, 4, 4, 8), (64, 256, 32, 4, 4, 8), (128, 128, 16, 8, 8, 8)]
out = []
for K, N in ((7168, 2048), (2048, 7168)):
    x = torch.randn(R, K, device=dev, dtype=torch.bfloat16, generator=g)
    dy = torch.randn(R, N, device=dev, dtype=torch.bfloat16, generator=g)
    ref = GROUPED_MM(x.transpose(0, 1), dy, offs=offs)
    t_ref = timeit(lambda: GROUPED_MM(x.transpose(0, 1), dy, offs=offs))
    print(f"K {K} N {N}: torch grouped_mm dw {t_ref*1e3:.3f} ms ({E*K*N*2/t_ref/1e12:.2f} TB/s of dw written)", flush=True)
    row = dict(K=K, N=N, torch_ms=t_ref * 1e3, triton={})
    for cfg in cfgs:
        try:
            dw = gg.grouped_weight_grad(x, dy, offs, E, config=cfg)
            err = float((dw.float() - ref.float()).abs().max() / ref.float().abs().max())
            t = timeit(lambda: gg.grouped_weight_grad(x, dy, offs, E, config=cfg))
        except Exception as exc:
            print("   ", cfg, type(exc).__name__, str(exc)[:100], flush=True); continue
        row["triton"][str(cfg)] = (t * 1e3, err)
        print(f"   triton {cfg}: {t*1e3:.3f} ms err {err:.1e}", flush=True)
    w = torch.randn(E, N, K, device=dev, dtype=torch.bfloat16, generator=g)  # dx = dy @ w^T with w (E, K, N) -> use (E,N,K)^T
    wt = w.transpose(1, 2)  # (E, K, N) view of the forward weight (E, N, K)? dx = dy (R,N) @ w[e]^T (N,K)
    t_dx_torch = timeit(lambda: GROUPED_MM(dy, w, offs=offs))
    t_dx_tri = timeit(lambda: gg.grouped_matmul(dy, w, offs))
    wT = torch.randn(E, K, N, device=dev, dtype=torch.bfloat16, generator=g)
    t_dx_tri_t = timeit(lambda: gg.grouped_matmul(dy, wT.transpose(1, 2), offs))
    t_dx_torch_t = timeit(lambda: GROUPED_MM(dy, wT.transpose(1, 2), offs=offs))
    print(f"   dx (R,{N}) @ (E,{N},{K}): torch {t_dx_torch*1e3:.3f} triton {t_dx_tri*1e3:.3f}; as a transposed view: torch {t_dx_torch_t*1e3:.3f} triton {t_dx_tri_t*1e3:.3f}", flush=True)
    row.update(dx_torch_ms=t_dx_torch*1e3, dx_triton_ms=t_dx_tri*1e3, dx_torch_transposed_ms=t_dx_torch_t*1e3, dx_triton_transposed_ms=t_dx_tri_t*1e3)
    out.append(row)
    del x, dy, ref, w, wT
    torch.cuda.empty_cache()
json.dump(dict(counts=counts, rows=out), open(sys.argv[1], 'w'), indent=1)
