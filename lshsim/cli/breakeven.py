"""`lshsim breakeven`: the compression rate below which LSH-MoE's compression pays.

The model: `lshsim.analytic.comm` (`breakeven_compression_rate`, `lsh_step_time_s`,
`lsh_moe_comm_compute_ratio`).
"""
from __future__ import annotations

from lshsim.checks import arg_finite_number, arg_int_within, arg_within
from lshsim.cli import _render


def add_parser(subparsers):
    p = subparsers.add_parser("breakeven", help="compression rate below which LSH-MoE's compression pays",
                              description="r* = 1 - (t_compress + t_restore) / (n_a2a V / B + expert time): below "
                                          "r*, the smaller all-to-alls repay hashing and restoring. Also LSH-MoE's "
                                          "ratio model T_a2a / T_compute (paper Eq. 6/9) with --tflops.")
    p.add_argument("--tokens", type=arg_int_within("tokens"), default=4096,
                   help="tokens per rank T, 1 to 2^24 (default 4096)")
    p.add_argument("--d-model", type=arg_int_within("dim"), default=1024, help="hidden size d, 1 to 2^20 (default 1024)")
    p.add_argument("--k", type=arg_int_within("experts"), default=2, help="choices per token, 1 to 2^16 (default 2)")
    p.add_argument("--world", type=arg_int_within("gpus"), default=16, help="ranks W, 1 to 2^20 (default 16)")
    p.add_argument("--bandwidth-GBps", type=arg_within("rate_Bps", exclusive=True, scale=1e9), default=12.5,
                   help="per-rank all-to-all bandwidth, GB/s, > 0 (default 12.5: a 100 Gb/s NIC)")
    p.add_argument("--hash-Mtps", type=arg_within("copy_rate", exclusive=True, scale=1e6), default=18.0,
                   help="hash + centroid throughput, million token copies/s, > 0, at most 1e6 (default 18: lsh.py compress on an "
                        "H100, d=1024, d'=16; benchmarks/RESULTS.md)")
    p.add_argument("--restore-Mtps", type=arg_within("copy_rate", exclusive=True, scale=1e6), default=68.0,
                   help="restore throughput, million token copies/s, > 0, at most 1e6 (default 68: lsh.py restore on an H100)")
    p.add_argument("--bytes-per-element", type=_render.arg_element_size, default=2,
                   help="2 for bf16/fp16 (default), 4 for fp32 (1, 2, 4 or 8)")
    p.add_argument("--expert-ms", type=arg_within("duration_s", scale=1e-3), default=0.0,
                   help="expert FFN time per step without compression, ms, 0 to 3.6e6 (an hour); it shrinks with r (default 0: not "
                        "counted)")
    p.add_argument("--forward-only", action="store_true", help="count forward all-to-alls only (default: fwd + bwd)")
    p.add_argument("--compression", type=arg_finite_number(0.0, exclusive=True, maximum=1.0), default=0.2,
                   help="compression rate to evaluate, in (0, 1] (default 0.2)")
    p.add_argument("--tflops", type=arg_within("flops", exclusive=True, scale=1e12), default=None, help="GPU TFLOP/s, > 0: also print LSH-MoE's ratio model")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png",
                   help="write r* against bandwidth to FILE.png (written whole; its folder is created if missing, "
                        "checked before any work)")
    return p


def _common(args) -> dict:
    """The keyword arguments of `breakeven_compression_rate` and `lsh_step_time_s` given by the flags."""
    return dict(k=args.k, world_size=args.world, hash_tokens_per_s=args.hash_Mtps * 1e6,
                restore_tokens_per_s=args.restore_Mtps * 1e6, bytes_per_element=args.bytes_per_element,
                expert_time_s=args.expert_ms * 1e-3, include_backward=not args.forward_only)


def run(args) -> int:
    from lshsim.io import prepare_output

    prepare_output(args.plot, "--plot")
    from lshsim.analytic import comm

    common = _common(args)
    bandwidth = args.bandwidth_GBps * 1e9
    r_star = float(comm.breakeven_compression_rate(args.tokens, args.d_model, bandwidth_Bps=bandwidth, **common))
    base = float(comm.lsh_step_time_s(1.0, args.tokens, args.d_model, bandwidth_Bps=bandwidth, lsh=False, **common))
    with_lsh = float(comm.lsh_step_time_s(args.compression, args.tokens, args.d_model, bandwidth_Bps=bandwidth,
                                          **common))
    result = {"tokens": args.tokens, "d_model": args.d_model, "k": args.k, "world": args.world,
              "bandwidth_GBps": args.bandwidth_GBps, "hash_Mtps": args.hash_Mtps,
              "restore_Mtps": args.restore_Mtps,
              "expert_ms": args.expert_ms, "include_backward": not args.forward_only,
              "breakeven_rate": r_star, "compression": args.compression, "baseline_s": base, "lsh_s": with_lsh,
              "speedup": base / with_lsh}
    if args.tflops is not None:
        ratio = float(comm.lsh_moe_comm_compute_ratio(args.tflops * 1e12, bandwidth, args.k, args.world, args.d_model))
        result["lsh_moe_ratio"] = ratio
    passes = "fwd" if args.forward_only else "fwd + bwd"
    parts = "all-to-alls + experts" if args.expert_ms else "all-to-alls only (no --expert-ms)"

    def render(result: dict) -> None:
        rows = [["break-even compression rate r*", f"{r_star:.4f}" + ("  (never pays)" if r_star <= 0 else "")],
                [f"one MoE layer, {passes}, no LSH: {parts} (ms)", f"{1e3 * base:.4f}"],
                [f"the same with LSH at r={args.compression}, + compress and restore (ms)", f"{1e3 * with_lsh:.4f}"],
                ["speedup", f"{base / with_lsh:.3f}x"]]
        if "lsh_moe_ratio" in result:
            rows.append(["LSH-MoE ratio model T_a2a / T_compute", f"{result['lsh_moe_ratio']:.4f}"])
        _render.table(f"LSH break-even: T={args.tokens}, d={args.d_model}, k={args.k}, W={args.world}, "
                      f"{args.bandwidth_GBps:g} GB/s, hash {args.hash_Mtps:g} M tokens/s", ["quantity", "value"],
                      rows)

    return _render.emit(args, result, render, plot=lambda: _plot(args, comm))


def _plot(args, comm) -> None:
    import numpy as np

    common = _common(args)
    bandwidths = np.geomspace(0.5, 500, 80)
    data = {"bandwidth (GB/s)": [], "break-even compression rate": [], "expert time": []}
    for label, expert in (("expert time not counted", 0.0), (f"expert {args.expert_ms or 1.0:g} ms shrinks too",
                                                              (args.expert_ms or 1.0) * 1e-3)):
        values = comm.breakeven_compression_rate(args.tokens, args.d_model, bandwidth_Bps=bandwidths * 1e9,
                                                 **{**common, "expert_time_s": expert})
        data["bandwidth (GB/s)"] += bandwidths.tolist()
        data["break-even compression rate"] += np.maximum(np.asarray(values), 0.0).tolist()
        data["expert time"] += [label] * bandwidths.size
    _render.line_plot(args.plot, data, "bandwidth (GB/s)", "break-even compression rate", "expert time",
                      f"LSH-MoE pays below r* (T={args.tokens}, d={args.d_model}, k={args.k}, W={args.world}, "
                      f"hash {args.hash_Mtps:g} M/s)", "per-rank all-to-all bandwidth (GB/s)",
                      "break-even compression rate r* (0 = never)", logx=True,
                      marker=(args.bandwidth_GBps, f"{args.bandwidth_GBps:g} GB/s"))
