"""Expert FFN at the benchmark's expert shapes: grouped_mm vs padded bmm, forward and forward+backward,
CUDA-event medians; fraction of the bf16 matmul peak measured here (8192^3)."""
import sys, statistics, json
import torch
sys.path.insert(0, '.')
from lshsim.executor.moe_ops import expert_ffn_grouped

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
print(f"peak {peak/1e12:.0f} TFLOP/s")
# (name, experts, rows per expert, d, f): the layer shapes' local expert rows
shapes = [("gpu-lsh-d4096-t8k (centroids)", 8, 211, 4096, 8192), ("gpu-lsh-d1024-t16k (centroids)", 8, 265, 1024, 2048),
          ("deepseek-v3-like (1 GPU)", 256, 128, 7168, 2048), ("deepseek-v3-like-lsh (1 GPU)", 256, 110, 7168, 2048),
          ("gpu-uniform-d4096-t8k", 8, 2048, 4096, 8192), ("gpu-nolsh-d1024-t16k", 8, 4096, 1024, 2048),
          ("gpu-uniform-d1024-t4k", 8, 1024, 1024, 2048)]
out = []
print("shape | method | fwd ms | fwd / peak | fwd+bwd ms | bwd / fwd")
for name, E, rows, d, f in shapes:
    g = torch.Generator(device=dev).manual_seed(0)
    counts = [rows] * E
    R = sum(counts)
    x = torch.randn(R, d, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_(True)
    w1 = (torch.randn(E, d, f, device=dev, dtype=torch.bfloat16, generator=g) * d ** -0.5).requires_grad_(True)
    w2 = (torch.randn(E, f, d, device=dev, dtype=torch.bfloat16, generator=g) * f ** -0.5).requires_grad_(True)
    offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
    flops = 4 * R * d * f
    gy = torch.randn(R, d, device=dev, dtype=torch.bfloat16, generator=g)
    for method in ("grouped_mm", "padded_bmm"):
        def fwd():
            with torch.no_grad():
                expert_ffn_grouped(x, counts, offs, w1, w2, method=method)
        def fb():
            y, _ = expert_ffn_grouped(x, counts, offs, w1, w2, method=method)
            y.backward(gy)
        tf, tb = timeit(fwd), timeit(fb)
        row = dict(shape=name, method=method, fwd_ms=tf * 1e3, fwd_peak=flops / tf / peak, fb_ms=tb * 1e3,
                   bwd_over_fwd=(tb - tf) / tf)
        out.append(row)
        print(f"{name} | {method} | {tf*1e3:.3f} | {flops/tf/peak:.2f} | {tb*1e3:.3f} | {(tb-tf)/tf:.2f}", flush=True)
json.dump(out, open(sys.argv[1], 'w'), indent=1)
