"""run-az: the idle time inside the DeepSeek-V3-like expert backward (run-ay: kernels 11.8 ms of a
13.0 ms backward). The FFN forward + backward (Triton grouped GEMM, 256 experts, d 7168, d_ffn
2048, 32,768 rows) under the profiler with host activity: host calls by self time (allocations,
synchronisations), the device's idle gaps between kernels, and the forward / backward wall-time
ratio with the gradients freed every step (as run-ax) and kept (zeroed in place, as an optimiser
with set_to_none=False would).

    python3 data/measured/h200/run-az/gaps.py [--trace out.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

import torch  # noqa: E402

from benchmarks.bench_grouped_gemm import counts_of  # noqa: E402
from benchmarks.cuda_timing import times_s  # noqa: E402


def med(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=None)
    args = ap.parse_args()
    from lshsim.executor import moe_ops
    dev = torch.device("cuda")
    torch.manual_seed(0)
    E, d, f = 256, 7168, 2048
    counts = counts_of("top8", E, 32768)
    rows = sum(counts)
    offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
    w1 = (torch.randn(E, d, f, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    w2 = (torch.randn(E, f, d, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    x = torch.randn(rows, d, device=dev, dtype=torch.bfloat16).requires_grad_()
    g = torch.randn(rows, d, device=dev, dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            moe_ops.expert_ffn_grouped(x, counts, offs, w1, w2, "triton_gmm")

    def fwdbwd_free():
        w1.grad = w2.grad = x.grad = None
        y, _ = moe_ops.expert_ffn_grouped(x, counts, offs, w1, w2, "triton_gmm")
        y.backward(g)

    def fwdbwd_keep():
        x.grad = None
        y, _ = moe_ops.expert_ffn_grouped(x, counts, offs, w1, w2, "triton_gmm")
        y.backward(g)

    def bwd_only_grad():
        w1.grad = w2.grad = x.grad = None
        y, _ = moe_ops.expert_ffn_grouped(x, counts, offs, w1, w2, "triton_gmm")
        torch.autograd.grad(y, (x, w1, w2), g)

    for fn in (fwd, fwdbwd_free, fwdbwd_keep, bwd_only_grad):
        for _ in range(2):
            fn()
    torch.cuda.synchronize()
    samples = {k: [] for k in ("forward", "fwd+bwd, grads freed", "fwd+bwd, grads accumulated", "autograd.grad")}
    for _ in range(5):
        samples["forward"] += times_s(fwd, 5, 1)
        samples["fwd+bwd, grads freed"] += times_s(fwdbwd_free, 5, 1)
        w1.grad = w2.grad = None
        samples["fwd+bwd, grads accumulated"] += times_s(fwdbwd_keep, 5, 1)
        samples["autograd.grad"] += times_s(bwd_only_grad, 5, 1)
    f_ = med(samples["forward"])
    print(f"forward {f_*1e3:.3f} ms", flush=True)
    for k, v in samples.items():
        if k != "forward":
            print(f"{k:28s}: {med(v)*1e3:.3f} ms, backward / forward {(med(v) - f_) / f_:.2f}", flush=True)

    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            fwdbwd_free()
        torch.cuda.synchronize()
    print("host calls by self CPU time (per step):", flush=True)
    evs = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    for ev in evs[:18]:
        print(f"    {ev.self_cpu_time_total/3/1e3:8.3f} ms  x{ev.count//3:<4d} {ev.key[:80]}", flush=True)
    # device idle gaps between consecutive kernels
    kern = sorted([(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA], key=lambda t: t[0])
    gaps = []
    for (s0, e0, n0), (s1, e1, n1) in zip(kern, kern[1:]):
        if s1 - e0 > 20:  # us
            gaps.append((s1 - e0, n0[:40], n1[:40]))
    print(f"device gaps over 20 us in 3 steps: {len(gaps)}, total {sum(g[0] for g in gaps)/1e3:.3f} ms", flush=True)
    for gap in sorted(gaps, reverse=True)[:12]:
        print(f"    {gap[0]/1e3:8.3f} ms  after {gap[1]} before {gap[2]}", flush=True)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
