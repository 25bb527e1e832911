"""Expert FFN time on a real GPU vs the simulator's roofline (`lshsim.sim.moe_step`).

Two steps, because the GPU machine needs only torch:

    python3 benchmarks/bench_expert_roofline.py measure > measured.json     # on the GPU (bf16)
    .venv/bin/python benchmarks/bench_expert_roofline.py compare measured.json --gpu h100

`measure` times, with CUDA events (median of 20 after 5 warm-ups), the expert FFN y = relu(x W1) W2
of E local experts with n tokens each, forward and forward + backward, two ways: one batched
matmul over all experts (`torch.bmm`, what a grouped GEMM does) and one matmul pair per expert
(a Python loop). `compare` prints the roofline the simulator uses for the same shapes
(max(FLOPs / achieved_flops, bytes / achieved_hbm_Bps) + kernels x 5 us) beside the measurements.
"""
from __future__ import annotations

import argparse
import json
import sys

SHAPES = [(16, 512, 768, 3072), (16, 256, 768, 3072), (4, 8192, 768, 3072), (1, 4096, 768, 3072),
          (16, 512, 1024, 4096)]  # (experts, tokens per expert, d_model, d_ffn)


def _key(experts: int, tokens: int, d_model: int, d_ffn: int) -> str:
    return f"E{experts}_n{tokens}_d{d_model}_f{d_ffn}"


def measure() -> dict:
    import torch

    device, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)

    def median_s(fn, iterations: int = 20, warmup: int = 5) -> float:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return sorted(times)[iterations // 2]

    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    for experts, tokens, d_model, d_ffn in SHAPES:
        w1 = torch.randn(experts, d_model, d_ffn, device=device, dtype=dtype, requires_grad=True)  # (E, d, f)
        w2 = torch.randn(experts, d_ffn, d_model, device=device, dtype=dtype, requires_grad=True)  # (E, f, d)
        x = torch.randn(experts, tokens, d_model, device=device, dtype=dtype, requires_grad=True)  # (E, n, d)
        grad = torch.randn(experts, tokens, d_model, device=device, dtype=dtype)  # (E, n, d)

        def batched():
            return torch.bmm(torch.relu(torch.bmm(x, w1)), w2)  # (E, n, d)

        def looped():
            return [torch.relu(x[e] @ w1[e]) @ w2[e] for e in range(experts)]

        def batched_backward():
            batched().backward(grad)

        def looped_backward():
            torch.autograd.backward(looped(), list(grad.unbind(0)))

        key = _key(experts, tokens, d_model, d_ffn)
        with torch.no_grad():
            out[key + "_bmm_fwd"] = median_s(batched)
            out[key + "_loop_fwd"] = median_s(looped)
        out[key + "_bmm_fwdbwd"] = median_s(batched_backward)
        out[key + "_loop_fwdbwd"] = median_s(looped_backward)
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    out["mm8192_tflops"] = 2 * 8192 ** 3 / median_s(lambda: a @ a) / 1e12
    return out


def compare(measured: dict, gpu_name: str) -> str:
    from lshsim.sim.moe_step import KERNELS, StepConfig, compute_time_s, expert_cost
    from lshsim.topology.gpus import get_gpu

    gpu = get_gpu(gpu_name).to_dict()
    launch = StepConfig().kernel_launch_s
    lines = [f"measured on {measured.get('gpu')} (torch {measured.get('torch')}), roofline for {gpu['name']}; "
             f"8192^3 bf16 matmul: {measured.get('mm8192_tflops', float('nan')):.0f} TFLOP/s", "",
             "| experts x tokens, d, f | roofline fwd us | bmm fwd us | loop fwd us | roofline fwd+bwd us "
             "| bmm fwd+bwd us | loop fwd+bwd us |", "|---|---|---|---|---|---|---|"]
    for experts, tokens, d_model, d_ffn in SHAPES:
        flops, hbm = expert_cost(experts * tokens, d_model, d_ffn, experts, 2)
        forward = compute_time_s(flops, hbm, gpu, KERNELS["expert"], launch)
        both = forward + compute_time_s(2 * flops, 2 * hbm, gpu, 2 * KERNELS["expert"], launch)
        key = _key(experts, tokens, d_model, d_ffn)
        cells = [forward, measured[key + "_bmm_fwd"], measured[key + "_loop_fwd"], both,
                 measured[key + "_bmm_fwdbwd"], measured[key + "_loop_fwdbwd"]]
        lines.append(f"| {experts} x {tokens}, {d_model}, {d_ffn} | " + " | ".join(f"{c * 1e6:.0f}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("measure", help="time the expert FFN on the CUDA GPU; JSON to stdout")
    cmp = sub.add_parser("compare", help="roofline beside a measured JSON")
    cmp.add_argument("measured", help="the JSON `measure` printed")
    cmp.add_argument("--gpu", default="h100", help="GPU spec of lshsim.topology.gpus (default h100)")
    args = parser.parse_args(argv)
    if args.mode == "measure":
        sys.stdout.write(json.dumps(measure(), indent=1) + "\n")
        return 0
    with open(args.measured, encoding="utf-8") as handle:
        sys.stdout.write(compare(json.load(handle), args.gpu) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
