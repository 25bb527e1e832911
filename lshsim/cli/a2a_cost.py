"""`lshsim a2a-cost`: closed-form (alpha-beta) time of one all-to-all with each algorithm.

The model: `lshsim.analytic.comm` (`ClusterParams`, `a2a_time`, `uniform_traffic`, `random_traffic`).
"""
from __future__ import annotations

from lshsim.checks import arg_finite_number, arg_positive_int, arg_within
from lshsim.cli import _render
from lshsim.cli._render import SEED_HELP, arg_seed
from lshsim.units import BYTES_HELP, arg_bytes


def add_parser(subparsers):
    p = subparsers.add_parser("a2a-cost", help="closed-form all-to-all time (alpha-beta) of six algorithms",
                              description="Alpha-beta time of one all-to-all with the direct, pairwise, hierarchical "
                                          "(Tutel 2DH), group-wise (LocMoE; also overlapped with its intra-node "
                                          "step) and node-deduplicated (DeepEP) algorithms on W ranks, G per node.")
    p.add_argument("--world", type=arg_positive_int, default=16, help="ranks W (default 16)")
    p.add_argument("--gpus-per-node", type=arg_positive_int, default=8, help="ranks per node G (default 8)")
    p.add_argument("--bytes-per-rank", type=arg_bytes, default=64e6,
                   help=f"bytes each rank sends in total, itself included (default 64MB; {BYTES_HELP})")
    p.add_argument("--traffic", default="uniform", choices=("uniform", "random"),
                   help="uniform | random (Dirichlet destinations) (default uniform)")
    p.add_argument("--intra-GBps", type=arg_within("rate_Bps", exclusive=True, scale=1e9), default=300.0,
                   help="NVLink bandwidth per GPU per direction, GB/s, > 0 (default 300)")
    p.add_argument("--inter-GBps", type=arg_within("rate_Bps", exclusive=True, scale=1e9), default=25.0,
                   help="bandwidth per NIC per direction, GB/s, > 0 (default 25)")
    p.add_argument("--nics-per-node", type=arg_positive_int, default=None,
                   help="NICs per node, >= 1 (default: one per GPU)")
    p.add_argument("--alpha-us", type=arg_within("latency_s", scale=1e-6), default=10.0,
                   help="start-up latency of an intra-node phase, us, >= 0 (default 10)")
    p.add_argument("--inter-alpha-us", type=arg_within("latency_s", scale=1e-6), default=None,
                   help="start-up latency of an inter-node phase, us, >= 0 (default = alpha)")
    p.add_argument("--seed", type=arg_seed, default=0, help=f"seed of the random traffic (default 0; {SEED_HELP})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png",
                   help="write time against message size per algorithm to FILE.png (written whole; its folder is "
                        "created if missing, checked before any work)")
    p.epilog = ("Sizes: the (W, W) traffic matrix and its per-algorithm copies live in memory; a --world whose "
                "estimate (8 arrays of W^2 x 8 B) exceeds the memory available is refused before any work.")
    return p


def _traffic(args, comm, size: float):
    """The (W, W) traffic of --traffic at `size` bytes per rank."""
    if args.traffic == "uniform":
        return comm.uniform_traffic(args.world, size)
    if args.traffic == "random":
        return comm.random_traffic(args.world, size, seed=args.seed)
    raise ValueError(f"traffic={args.traffic!r} must be 'uniform' or 'random'")


def run(args) -> int:
    from lshsim.io import prepare_output
    from lshsim.limits import estimate_matrix, refuse_if_too_large

    prepare_output(args.plot, "--plot")
    refuse_if_too_large(f"--world {args.world}", estimate_matrix(args.world, args.world), hint="lower --world")
    from lshsim.analytic import comm

    cluster = comm.ClusterParams(gpus_per_node=args.gpus_per_node, intra_bandwidth_Bps=args.intra_GBps * 1e9,
                                 inter_bandwidth_Bps=args.inter_GBps * 1e9, nics_per_node=args.nics_per_node,
                                 alpha_s=args.alpha_us * 1e-6,
                                 inter_alpha_s=None if args.inter_alpha_us is None else args.inter_alpha_us * 1e-6)
    traffic = _traffic(args, comm, args.bytes_per_rank)  # (W, W) bytes
    times = {name: float(comm.a2a_time(name, traffic, cluster)) for name in comm.A2A_ALGORITHMS}
    result = {"world": args.world, "gpus_per_node": args.gpus_per_node, "bytes_per_rank": args.bytes_per_rank,
              "traffic": args.traffic, "intra_GBps": args.intra_GBps, "inter_GBps": args.inter_GBps,
              "nics_per_node": cluster.nics, "alpha_us": args.alpha_us,
              "inter_alpha_us": cluster.inter_alpha * 1e6, "time_s": times,
              "algbw_GBps": {name: args.bytes_per_rank / t / 1e9 if t > 0 else None for name, t in times.items()}}
    def render(result: dict) -> None:
        rows = [[name, f"{1e3 * t:.4f}", _render.g(result["algbw_GBps"][name] or 0.0)] for name, t in times.items()]
        _render.table(f"All-to-all of {args.bytes_per_rank / 1e6:g} MB per rank ({args.traffic}), W={args.world}, "
                      f"G={args.gpus_per_node}, {cluster.nics} NIC(s)/node",
                      ["algorithm", "time (ms)", "algbw (GB/s)"], rows)
        _render.console().print("[dim]algbw: bytes per rank (its own share included) / time, as nccl-tests' "
                                "algorithm bandwidth; groupwise_overlap: LocMoE's group-wise all-to-all with its "
                                "intra-node step overlapped[/dim]")

    return _render.emit(args, result, render, plot=lambda: _plot(args, comm, cluster))


def _plot(args, comm, cluster) -> None:
    import numpy as np

    sizes = np.geomspace(1e3, 4e9, 50)
    batch = np.stack([_traffic(args, comm, size) for size in sizes])  # (S, W, W)
    data = {"bytes per rank": [], "time (s)": [], "algorithm": []}
    for name in comm.A2A_ALGORITHMS:
        data["bytes per rank"] += sizes.tolist()
        data["time (s)"] += np.asarray(comm.a2a_time(name, batch, cluster)).tolist()
        data["algorithm"] += [name] * sizes.size
    _render.line_plot(args.plot, data, "bytes per rank", "time (s)", "algorithm",
                      f"All-to-all, W={args.world}, G={args.gpus_per_node}, NVLink {args.intra_GBps:g} GB/s, "
                      f"NIC {args.inter_GBps:g} GB/s", "bytes per rank", "time (s)", logx=True, logy=True,
                      marker=(args.bytes_per_rank, "this run"))
