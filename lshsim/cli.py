"""The `lshsim` command.

Each sub-command has an `_add_<name>(subparsers)` that declares its arguments and a
`_cmd_<name>(args) -> int` that runs it. Imports of the heavy parts happen inside `_cmd_*`
(lazily), so `lshsim --help` stays fast. This is the one module that may reach into every layer.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

__all__ = ["main", "build_parser"]


def _console():
    from rich.console import Console

    return Console()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _print_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


# ================================ route (foundation) ============================================
def _add_route(subparsers) -> None:
    p = subparsers.add_parser("route", help="route synthetic tokens and show expert load, drops and traffic",
                              description="Route seeded synthetic tokens with one of lshsim.dispatch's routers "
                                          "and print the load per expert, the drops and the rank-to-rank "
                                          "traffic matrix of the dispatch all-to-all.")
    p.add_argument("--router", default="topk", help="topk | hash | expert_choice | locmoe (default topk)")
    p.add_argument("--k", type=_positive_int, default=2, help="choices per token (default 2; hash uses 1)")
    p.add_argument("--experts", type=_positive_int, default=16, help="number of experts E (default 16)")
    p.add_argument("--world", type=_positive_int, default=8, help="number of ranks (GPUs) W (default 8)")
    p.add_argument("--gpus-per-node", type=_positive_int, default=4, help="ranks per node (default 4)")
    p.add_argument("--tokens", type=_positive_int, default=4096, help="tokens per rank (default 4096)")
    p.add_argument("--d-model", type=_positive_int, default=1024, help="hidden size (default 1024)")
    p.add_argument("--bytes-per-element", type=_positive_int, default=2, help="2 for bf16/fp16 (default), 4 for fp32")
    p.add_argument("--capacity-factor", type=float, default=1.25,
                   help="capacity factor; 0 or less is refused; use --no-capacity for no limit (default 1.25)")
    p.add_argument("--no-capacity", action="store_true", help="no capacity limit (nothing dropped)")
    p.add_argument("--drop-policy", default="position", help="position | score (default position)")
    p.add_argument("--placement", default="contiguous", help="contiguous | round_robin (default contiguous)")
    p.add_argument("--locality-bonus", type=float, default=1.0, help="locmoe: own-node preference (default 1.0)")
    p.add_argument("--skew", type=float, default=0.0,
                   help="popularity skew: 0 = uniform experts; s > 0 adds s * log(Dirichlet(1)) to the logits")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _cmd_route(args) -> int:
    import torch

    from lshsim.dispatch import RouterConfig, make_placement, route
    from lshsim.dispatch.synthetic import synthetic_router_inputs

    config = RouterConfig(name=args.router, k=1 if args.router == "hash" else args.k,
                          capacity_factor=None if args.no_capacity else args.capacity_factor,
                          drop_policy=args.drop_policy, locality_bonus=args.locality_bonus)
    placement = make_placement(args.placement, args.experts, args.world, args.gpus_per_node)
    inputs = synthetic_router_inputs(num_tokens_per_rank=args.tokens, world_size=args.world,
                                     d_model=args.d_model, num_experts=args.experts, seed=args.seed,
                                     skew=args.skew)
    plan = route(config, placement, logits=inputs.logits, token_ids=inputs.token_ids, hidden=inputs.hidden,
                 token_rank=inputs.token_rank)
    bytes_per_token = args.d_model * args.bytes_per_element
    traffic = plan.traffic_matrix(bytes_per_token)  # (W, W) bytes
    routed_per_expert = torch.bincount(plan.expert_index[plan.routed], minlength=args.experts)
    dropped_per_expert = plan.dropped_per_expert()
    summary = {
        "router": args.router, "k": config.k, "experts": args.experts, "world": args.world,
        "gpus_per_node": args.gpus_per_node, "tokens_per_rank": args.tokens, "capacity": plan.capacity,
        "bytes_per_token": bytes_per_token, "routed": int(plan.routed.sum()), "kept": plan.num_kept,
        "dropped": plan.num_dropped,
        "drop_fraction": plan.num_dropped / max(int(plan.routed.sum()), 1),
        "local_bytes": plan.local_bytes(bytes_per_token), "remote_bytes": plan.remote_bytes(bytes_per_token),
        "inter_node_bytes": plan.inter_node_bytes(bytes_per_token),
        "experts_table": [
            {"expert": e, "rank": int(placement.expert_to_rank[e]), "node": int(placement.expert_to_node[e]),
             "routed": int(routed_per_expert[e]), "kept": int(plan.tokens_per_expert[e]),
             "dropped": int(dropped_per_expert[e])} for e in range(args.experts)],
        "traffic_bytes": traffic.tolist(),
    }
    if args.json:
        _print_json(summary)
        return 0
    _render_route(summary)
    return 0


def _render_route(summary: dict) -> None:
    from rich.table import Table

    console = _console()
    load = Table(title=f"Load per expert: router={summary['router']} k={summary['k']} "
                       f"capacity={summary['capacity']} per (rank, expert)")
    for column in ("expert", "rank", "node", "routed", "kept", "dropped"):
        load.add_column(column, justify="right")
    for row in summary["experts_table"]:
        load.add_row(*(str(row[c]) for c in ("expert", "rank", "node", "routed", "kept", "dropped")))
    console.print(load)
    traffic = summary["traffic_bytes"]
    world = len(traffic)
    matrix = Table(title="Dispatch all-to-all traffic, MB (row = source rank, column = destination; "
                         "diagonal stays local)")
    matrix.add_column("src\\dst", justify="right")
    for dst in range(world):
        matrix.add_column(str(dst), justify="right")
    for src in range(world):
        cells = []
        for dst in range(world):
            text = f"{traffic[src][dst] / 1e6:.2f}"
            cells.append(f"[dim]{text}[/dim]" if src == dst else text)
        matrix.add_row(str(src), *cells)
    console.print(matrix)
    total = summary["local_bytes"] + summary["remote_bytes"]
    console.print(
        f"choices routed {summary['routed']}, kept {summary['kept']}, dropped {summary['dropped']} "
        f"({100 * summary['drop_fraction']:.2f}%)\n"
        f"bytes: local {summary['local_bytes'] / 1e6:.2f} MB, remote {summary['remote_bytes'] / 1e6:.2f} MB "
        f"(inter-node {summary['inter_node_bytes'] / 1e6:.2f} MB) of {total / 1e6:.2f} MB")


# ================================ analytic (issue 3) ============================================
# Sub-commands capacity, collision, a2a-cost, breakeven: closed forms of lshsim.analytic. Each prints
# rich tables, `--json` for machines, `--plot FILE.png` for a seaborn figure over the swept parameter.
_ANALYTIC_SIZES = {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2.0 ** 10, "mib": 2.0 ** 20,
                   "gib": 2.0 ** 30}


def _analytic_bytes(text: str) -> float:
    """'64e6', '64MB', '1.5GiB' -> bytes (argparse type)."""
    lowered = text.strip().lower()
    number = lowered.rstrip("kmgib")
    suffix = lowered[len(number):]
    try:
        value = float(number) * _ANALYTIC_SIZES[suffix]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte size (e.g. 64e6, 64MB, 1.5GiB)") from None
    return value


def _analytic_plot(path: str, data: dict, x: str, y: str, hue: str | None, title: str, xlabel: str, ylabel: str,
                   logx: bool = False, logy: bool = False, marker: tuple[float, str] | None = None) -> None:
    """Write a seaborn line plot of `data` (dict of equal-length lists) to `path` (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (NullFormatter below)
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sns.lineplot(data=data, x=x, y=y, hue=hue, ax=ax, linewidth=2)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on short decades
    if logy:
        ax.set_yscale("log")
    if marker is not None:
        ax.axvline(marker[0], color="grey", linestyle="--", linewidth=1)
        ax.text(marker[0], ax.get_ylim()[1], f" {marker[1]}", va="top", ha="left", fontsize=9, color="dimgrey")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if hue is not None:
        ax.legend(title=None, frameon=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _analytic_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


def _g(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


# ---- capacity -----------------------------------------------------------------------------------
def _add_capacity(subparsers) -> None:
    p = subparsers.add_parser("capacity", help="LocMoE minimum expert capacity (Theorem 1) and expected drops",
                              description="p_delta (exact incomplete beta, the paper's erfc form, the exponential "
                                          "bound), ec_min >= 1/(n p_delta), optionally a Monte Carlo check on the "
                                          "sphere and the expected dropped fraction at a capacity factor.")
    p.add_argument("--experts", type=int, default=16, help="number of experts n (default 16)")
    p.add_argument("--dim", type=int, default=4096, help="token dimension d (default 4096)")
    p.add_argument("--delta", type=float, default=0.03, help="cosine threshold delta in (0, 1) (default 0.03)")
    p.add_argument("--monte-carlo", type=int, default=0, metavar="N",
                   help="also estimate p_delta from N uniform points on the sphere (default 0: off)")
    p.add_argument("--tokens", type=int, default=0,
                   help="tokens per rank T: also print the expected dropped fraction (default 0: off)")
    p.add_argument("--k", type=int, default=2, help="choices per token for the drop estimate (default 2)")
    p.add_argument("--capacity-factor", type=float, default=1.25, help="capacity factor for drops (default 1.25)")
    p.add_argument("--skew", type=float, default=0.0,
                   help="expert popularity p ~ Dirichlet, p^skew normalised (0 = uniform; default 0)")
    p.add_argument("--sample", type=int, default=0, metavar="S",
                   help="also measure drops with lshsim.dispatch.route_topk over S batches (default 0: off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png", help="write ec_min against delta (exact, erfc, exp) to FILE.png")


def _cmd_capacity(args) -> int:
    import numpy as np

    from lshsim.analytic import capacity

    forms = capacity.p_delta_forms(args.dim, args.delta)
    n = args.experts
    result = {"experts": n, "dim": args.dim, "delta": args.delta, "forms": {}}
    for form in ("exact", "erfc", "exp"):
        result["forms"][form] = {"p_delta": float(forms[form]), "ec_min": float(capacity.ec_min(n, args.dim, args.delta, form)),
                                 "capacity_factor": float(capacity.ec_min(n, args.dim, args.delta, form)) * n,
                                 "rel_err_vs_exact": 0.0 if form == "exact" else float(forms[f"{form}_rel_err"])}
    if args.monte_carlo:
        result["monte_carlo"] = capacity.p_delta_monte_carlo(args.dim, args.delta, args.monte_carlo, seed=args.seed).as_dict()
    if args.tokens:
        if args.skew < 0 or not np.isfinite(args.skew):
            raise ValueError(f"skew={args.skew!r} must be finite and >= 0")
        popularity = np.random.default_rng(args.seed).dirichlet(np.ones(n)) ** args.skew
        popularity = popularity / popularity.sum()
        cap = int(capacity.capacity_from_factor(args.tokens, args.k, n, args.capacity_factor))
        inclusion = capacity.topk_inclusion_probabilities(popularity, args.k)
        drops = {method: float(capacity.expected_dropped_fraction(args.tokens, args.k, cap, inclusion=inclusion,
                                                                  method=method))
                 for method in capacity.OVERFLOW_METHODS}
        result["drops"] = {"tokens": args.tokens, "k": args.k, "capacity_factor": args.capacity_factor,
                           "capacity": cap, "skew": args.skew, "expected_dropped_fraction": drops}
        if args.sample:
            result["drops"]["sampled"] = capacity.sample_dropped_fraction(
                args.tokens, args.k, args.capacity_factor, popularity, num_samples=args.sample, seed=args.seed).as_dict()
    if args.plot:
        # sweep delta from delta/10 up to where the exact bound reaches 1e4 (or 10x its value at delta)
        grid = np.geomspace(max(args.delta / 10, 1e-4), 0.999, 400)
        limit = max(1e4, 10 * result["forms"]["exact"]["ec_min"])
        upper = grid[np.nonzero(capacity.ec_min(n, args.dim, grid) <= limit)[0].max()]
        deltas = np.geomspace(grid[0], max(upper, args.delta), 60)
        data = {"delta": [], "ec_min": [], "form": []}
        for form, label in (("exact", "exact (incomplete beta)"), ("erfc", "erfc (paper)"), ("exp", "exp bound")):
            values = capacity.ec_min(n, args.dim, deltas, form)
            keep = np.isfinite(values)
            data["delta"] += deltas[keep].tolist()
            data["ec_min"] += values[keep].tolist()
            data["form"] += [label] * int(keep.sum())
        _analytic_plot(args.plot, data, "delta", "ec_min", "form",
                       f"LocMoE minimum expert capacity, n={n}, d={args.dim}", "delta (cosine threshold)",
                       "ec_min >= 1 / (n p_delta)", logx=True, logy=True, marker=(args.delta, f"delta={args.delta}"))
        result["plot"] = args.plot
    if args.json:
        _print_json(result)
        return 0
    rows = [[form, _g(v["p_delta"]), _g(v["ec_min"]), _g(v["capacity_factor"]),
             "-" if form == "exact" else f"{100 * v['rel_err_vs_exact']:+.2f}%"] for form, v in result["forms"].items()]
    if "monte_carlo" in result:
        mc = result["monte_carlo"]
        rows.append([f"monte carlo (N={mc['num_samples']})", f"{_g(mc['estimate'])} ± {_g(mc['stderr'], 2)}",
                     _g(1 / (n * mc["estimate"])) if mc["estimate"] > 0 else "inf", "", "95% CI "
                     f"[{_g(mc['ci_low'])}, {_g(mc['ci_high'])}]"])
    _analytic_table(f"LocMoE Theorem 1: n={n} experts, d={args.dim}, delta={args.delta}",
                    ["form", "p_delta", "ec_min", "n * ec_min", "vs exact"], rows)
    if "drops" in result:
        drops = result["drops"]
        rows = [[method, f"{100 * value:.4f}%"] for method, value in drops["expected_dropped_fraction"].items()]
        if "sampled" in drops:
            s = drops["sampled"]
            rows.append([f"route_topk, {s['num_samples']} batches", f"{100 * s['estimate']:.4f}% ± {100 * s['stderr']:.4f}%"])
        _analytic_table(f"Expected dropped fraction: T={drops['tokens']}, k={drops['k']}, E={n}, "
                        f"C={drops['capacity']} (factor {drops['capacity_factor']}), skew={drops['skew']}",
                        ["model", "dropped"], rows)
    if args.plot:
        _console().print(f"wrote {args.plot}")
    return 0


# ---- collision ----------------------------------------------------------------------------------
def _add_collision(subparsers) -> None:
    p = subparsers.add_parser("collision", help="LSH collision probability (hyperplane, cross-polytope) and amplification",
                              description="Collision probability of one hash for unit vectors at a cosine, exact "
                                          "(hyperplane 1 - theta/pi; cross-polytope by numerical integration, exact "
                                          "for lsh.py's Gaussian projection with d = proj_dim), the asymptotic form, "
                                          "optional Monte Carlo, and amplification p^K, 1 - (1 - p^K)^L.")
    p.add_argument("--family", default="cross-polytope", help="cross-polytope | hyperplane (default cross-polytope)")
    p.add_argument("--dim", type=int, default=1024, help="projection dimension d' (default 1024)")
    p.add_argument("--cos", type=float, default=0.9, help="cosine between the two vectors, in [-1, 1] (default 0.9)")
    p.add_argument("--hashes", type=int, default=6, help="K hash functions concatenated into one bucket id (default 6)")
    p.add_argument("--tables", type=int, default=1, help="L independent tables (default 1)")
    p.add_argument("--monte-carlo", type=int, default=0, metavar="N", help="also hash N random pairs (default 0: off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png", help="write the probability against cos to FILE.png")


def _cmd_collision(args) -> int:
    import numpy as np

    from lshsim.analytic import collision

    family = args.family.replace("-", "_")
    if family not in collision.FAMILIES:
        raise ValueError(f"family={args.family!r} must be one of ('cross-polytope', 'hyperplane')")
    for name, value in (("hashes", args.hashes), ("tables", args.tables)):
        if value < 1:
            raise ValueError(f"{name}={value} must be an integer >= 1")
    if family == "cross_polytope":
        single, error = collision.cross_polytope_collision_probability(args.dim, args.cos, return_error=True)
        asymptotic = float(collision.cross_polytope_collision_asymptotic(args.dim, args.cos))
    else:
        if args.dim < 2:
            raise ValueError(f"d={args.dim} must be an integer >= 2")
        single, error, asymptotic = float(collision.hyperplane_collision_probability(args.cos)), 0.0, None
    result = {"family": args.family, "dim": args.dim, "cos": args.cos, "hashes": args.hashes, "tables": args.tables,
              "probability": float(single), "quadrature_error": float(error), "asymptotic": asymptotic,
              "concatenated": float(collision.amplify(single, args.hashes)),
              "amplified": float(collision.amplify(single, args.hashes, args.tables))}
    if args.monte_carlo:
        if family == "cross_polytope":
            mc = collision.cross_polytope_collision_monte_carlo(args.dim, args.cos, args.monte_carlo, seed=args.seed)
        else:
            mc = collision.hyperplane_collision_monte_carlo(args.dim, args.cos, args.monte_carlo, seed=args.seed)
        result["monte_carlo"] = mc.as_dict()
    if args.plot:
        cosines = np.linspace(-0.2, 1.0, 41)
        exact = np.asarray(collision.collision_probability(family, args.dim, cosines))
        data = {"cos": [], "probability": [], "curve": []}
        curves = [("one hash", exact), (f"{args.hashes} concatenated", exact ** args.hashes)]
        if family == "cross_polytope":
            curves.append(("one hash, asymptotic", np.asarray(collision.cross_polytope_collision_asymptotic(args.dim, cosines))))
        for label, values in curves:
            data["cos"] += cosines.tolist()
            data["probability"] += values.tolist()
            data["curve"] += [label] * cosines.size
        _analytic_plot(args.plot, data, "cos", "probability", "curve",
                       f"{args.family} LSH collision probability, d={args.dim}", "cosine between the vectors",
                       "Pr[same bucket]", marker=(args.cos, f"cos={args.cos}"))
        result["plot"] = args.plot
    if args.json:
        _print_json(result)
        return 0
    rows = [["one hash (exact)", _g(result["probability"], 6)]]
    if asymptotic is not None:
        rows.append(["one hash, asymptotic d^(-(1-cos)/(1+cos))", _g(asymptotic, 6)])
    if "monte_carlo" in result:
        mc = result["monte_carlo"]
        rows.append([f"one hash, Monte Carlo (N={mc['num_samples']})",
                     f"{_g(mc['estimate'], 6)} ± {_g(mc['stderr'], 2)}"])
    rows += [[f"K={args.hashes} concatenated: p^K", _g(result["concatenated"], 6)],
             [f"L={args.tables} tables: 1 - (1 - p^K)^L", _g(result["amplified"], 6)]]
    _analytic_table(f"{args.family} collision, d={args.dim}, cos={args.cos}", ["quantity", "probability"], rows)
    if args.plot:
        _console().print(f"wrote {args.plot}")
    return 0


# ---- a2a-cost -----------------------------------------------------------------------------------
def _add_a2a_cost(subparsers) -> None:
    p = subparsers.add_parser("a2a-cost", help="closed-form all-to-all time (alpha-beta) of four algorithms",
                              description="Alpha-beta time of one all-to-all with the direct, pairwise, hierarchical "
                                          "(Tutel 2DH) and group-wise (LocMoE) algorithms on W ranks, G per node.")
    p.add_argument("--world", type=_positive_int, default=16, help="ranks W (default 16)")
    p.add_argument("--gpus-per-node", type=_positive_int, default=8, help="ranks per node G (default 8)")
    p.add_argument("--bytes-per-rank", type=_analytic_bytes, default=64e6,
                   help="bytes each rank sends in total, itself included (default 64MB; suffixes KB MB GB KiB MiB GiB)")
    p.add_argument("--traffic", default="uniform", help="uniform | random (Dirichlet destinations) (default uniform)")
    p.add_argument("--intra-GBps", type=float, default=300.0, help="NVLink bandwidth per GPU per direction, GB/s (default 300)")
    p.add_argument("--inter-GBps", type=float, default=25.0, help="bandwidth per NIC per direction, GB/s (default 25)")
    p.add_argument("--nics-per-node", type=int, default=None, help="NICs per node (default: one per GPU)")
    p.add_argument("--alpha-us", type=float, default=10.0, help="start-up latency of an intra-node phase, us (default 10)")
    p.add_argument("--inter-alpha-us", type=float, default=None, help="start-up latency of an inter-node phase, us (default = alpha)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random traffic (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png", help="write time against message size per algorithm to FILE.png")


def _cmd_a2a_cost(args) -> int:
    import numpy as np

    from lshsim.analytic import comm

    cluster = comm.ClusterParams(gpus_per_node=args.gpus_per_node, intra_bandwidth_Bps=args.intra_GBps * 1e9,
                                 inter_bandwidth_Bps=args.inter_GBps * 1e9, nics_per_node=args.nics_per_node,
                                 alpha_s=args.alpha_us * 1e-6,
                                 inter_alpha_s=None if args.inter_alpha_us is None else args.inter_alpha_us * 1e-6)

    def traffic_for(size: float) -> "np.ndarray":
        if args.traffic == "uniform":
            return comm.uniform_traffic(args.world, size)
        if args.traffic == "random":
            return comm.random_traffic(args.world, size, seed=args.seed)
        raise ValueError(f"traffic={args.traffic!r} must be 'uniform' or 'random'")

    traffic = traffic_for(args.bytes_per_rank)  # (W, W) bytes
    times = {name: float(comm.a2a_time(name, traffic, cluster)) for name in comm.A2A_ALGORITHMS}
    result = {"world": args.world, "gpus_per_node": args.gpus_per_node, "bytes_per_rank": args.bytes_per_rank,
              "traffic": args.traffic, "intra_GBps": args.intra_GBps, "inter_GBps": args.inter_GBps,
              "nics_per_node": cluster.nics, "alpha_us": args.alpha_us,
              "inter_alpha_us": cluster.inter_alpha * 1e6, "time_s": times,
              "algbw_GBps": {name: args.bytes_per_rank / t / 1e9 if t > 0 else None for name, t in times.items()}}
    if args.plot:
        sizes = np.geomspace(1e3, 4e9, 50)
        batch = np.stack([traffic_for(size) for size in sizes])  # (S, W, W)
        data = {"bytes per rank": [], "time (s)": [], "algorithm": []}
        for name in comm.A2A_ALGORITHMS:
            data["bytes per rank"] += sizes.tolist()
            data["time (s)"] += np.asarray(comm.a2a_time(name, batch, cluster)).tolist()
            data["algorithm"] += [name] * sizes.size
        _analytic_plot(args.plot, data, "bytes per rank", "time (s)", "algorithm",
                       f"All-to-all, W={args.world}, G={args.gpus_per_node}, NVLink {args.intra_GBps:g} GB/s, "
                       f"NIC {args.inter_GBps:g} GB/s", "bytes per rank", "time (s)", logx=True, logy=True,
                       marker=(args.bytes_per_rank, "this run"))
        result["plot"] = args.plot
    if args.json:
        _print_json(result)
        return 0
    rows = [[name, f"{1e3 * t:.4f}", _g(result["algbw_GBps"][name] or 0.0)] for name, t in times.items()]
    _analytic_table(f"All-to-all of {args.bytes_per_rank / 1e6:g} MB per rank ({args.traffic}), W={args.world}, "
                    f"G={args.gpus_per_node}, {cluster.nics} NIC(s)/node",
                    ["algorithm", "time (ms)", "algbw (GB/s)"], rows)
    if args.plot:
        _console().print(f"wrote {args.plot}")
    return 0


# ---- breakeven ----------------------------------------------------------------------------------
def _add_breakeven(subparsers) -> None:
    p = subparsers.add_parser("breakeven", help="compression rate below which LSH-MoE's compression pays",
                              description="r* = 1 - (t_compress + t_restore) / (n_a2a V / B + expert time): below "
                                          "r*, the smaller all-to-alls repay hashing and restoring. Also LSH-MoE's "
                                          "ratio model T_a2a / T_compute (paper Eq. 6/9) with --tflops.")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per rank T (default 4096)")
    p.add_argument("--d-model", type=int, default=1024, help="hidden size d (default 1024)")
    p.add_argument("--k", type=int, default=2, help="choices per token (default 2)")
    p.add_argument("--world", type=int, default=16, help="ranks W (default 16)")
    p.add_argument("--bandwidth-GBps", type=float, default=12.5,
                   help="per-rank all-to-all bandwidth, GB/s (default 12.5: a 100 Gb/s NIC)")
    p.add_argument("--hash-Mtps", type=float, default=18.0,
                   help="hash + centroid throughput, million token copies/s (default 18: lsh.py compress on an H100, "
                        "d=1024, d'=16; benchmarks/RESULTS.md)")
    p.add_argument("--restore-Mtps", type=float, default=68.0,
                   help="restore throughput, million token copies/s (default 68: lsh.py restore on an H100)")
    p.add_argument("--bytes-per-element", type=int, default=2, help="2 for bf16/fp16 (default), 4 for fp32")
    p.add_argument("--expert-ms", type=float, default=0.0,
                   help="expert FFN time per step without compression, ms; it shrinks with r (default 0: not counted)")
    p.add_argument("--forward-only", action="store_true", help="count forward all-to-alls only (default: fwd + bwd)")
    p.add_argument("--compression", type=float, default=0.2, help="compression rate to evaluate (default 0.2)")
    p.add_argument("--tflops", type=float, default=None, help="GPU TFLOP/s: also print LSH-MoE's ratio model")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png", help="write r* against bandwidth to FILE.png")


def _cmd_breakeven(args) -> int:
    import numpy as np

    from lshsim.analytic import comm

    common = dict(k=args.k, world_size=args.world, hash_tokens_per_s=args.hash_Mtps * 1e6,
                  restore_tokens_per_s=args.restore_Mtps * 1e6,
                  bytes_per_element=args.bytes_per_element, expert_time_s=args.expert_ms * 1e-3,
                  include_backward=not args.forward_only)
    bandwidth = args.bandwidth_GBps * 1e9
    r_star = float(comm.breakeven_compression_rate(args.tokens, args.d_model, bandwidth_Bps=bandwidth, **common))
    base = float(comm.lsh_step_time_s(1.0, args.tokens, args.d_model, bandwidth_Bps=bandwidth, lsh=False, **common))
    with_lsh = float(comm.lsh_step_time_s(args.compression, args.tokens, args.d_model, bandwidth_Bps=bandwidth, **common))
    result = {"tokens": args.tokens, "d_model": args.d_model, "k": args.k, "world": args.world,
              "bandwidth_GBps": args.bandwidth_GBps, "hash_Mtps": args.hash_Mtps,
              "restore_Mtps": args.restore_Mtps,
              "expert_ms": args.expert_ms, "include_backward": not args.forward_only,
              "breakeven_rate": r_star, "compression": args.compression, "baseline_s": base, "lsh_s": with_lsh,
              "speedup": base / with_lsh}
    if args.tflops is not None:
        ratio = float(comm.lsh_moe_comm_compute_ratio(args.tflops * 1e12, bandwidth, args.k, args.world, args.d_model))
        result["lsh_moe_ratio"] = ratio
    if args.plot:
        bandwidths = np.geomspace(0.5, 500, 80)
        data = {"bandwidth (GB/s)": [], "break-even compression rate": [], "expert time": []}
        for label, expert in (("expert time not counted", 0.0), (f"expert {args.expert_ms or 1.0:g} ms shrinks too",
                                                                  (args.expert_ms or 1.0) * 1e-3)):
            values = comm.breakeven_compression_rate(args.tokens, args.d_model, bandwidth_Bps=bandwidths * 1e9,
                                                     **{**common, "expert_time_s": expert})
            data["bandwidth (GB/s)"] += bandwidths.tolist()
            data["break-even compression rate"] += np.maximum(np.asarray(values), 0.0).tolist()
            data["expert time"] += [label] * bandwidths.size
        _analytic_plot(args.plot, data, "bandwidth (GB/s)", "break-even compression rate", "expert time",
                       f"LSH-MoE pays below r* (T={args.tokens}, d={args.d_model}, k={args.k}, W={args.world}, "
                       f"hash {args.hash_Mtps:g} M/s)", "per-rank all-to-all bandwidth (GB/s)",
                       "break-even compression rate r* (0 = never)", logx=True,
                       marker=(args.bandwidth_GBps, f"{args.bandwidth_GBps:g} GB/s"))
        result["plot"] = args.plot
    if args.json:
        _print_json(result)
        return 0
    rows = [["break-even compression rate r*", f"{r_star:.4f}" + ("  (never pays)" if r_star <= 0 else "")],
            ["step time without LSH (ms)", f"{1e3 * base:.4f}"],
            [f"step time with LSH at r={args.compression} (ms)", f"{1e3 * with_lsh:.4f}"],
            ["speedup", f"{base / with_lsh:.3f}x"]]
    if "lsh_moe_ratio" in result:
        rows.append(["LSH-MoE ratio model T_a2a / T_compute", f"{result['lsh_moe_ratio']:.4f}"])
    _analytic_table(f"LSH break-even: T={args.tokens}, d={args.d_model}, k={args.k}, W={args.world}, "
                    f"{args.bandwidth_GBps:g} GB/s, hash {args.hash_Mtps:g} M tokens/s", ["quantity", "value"], rows)
    if args.plot:
        _console().print(f"wrote {args.plot}")
    return 0


# ================================ simulator (issue 4) ===========================================
_SIZE_SUFFIXES = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _parse_bytes(text: str) -> float:
    """'64e6', '64MB', '1.5GiB' -> bytes."""
    import re

    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_SUFFIXES:
        raise ValueError(f"bytes={text!r} is not a size (a number with an optional suffix: "
                         f"{', '.join(s for s in _SIZE_SUFFIXES if s)})")
    try:
        value = float(match.group(1)) * _SIZE_SUFFIXES[match.group(2).lower()]
    except ValueError:
        raise ValueError(f"bytes={text!r} is not a size") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"bytes={text!r} must be a finite size >= 0")
    return value


def _load_traffic(spec: str, world: int):
    """--traffic uniform:BYTES_PER_RANK or FILE.json ([W][W] bytes, or an object with 'traffic_bytes')."""
    import numpy as np

    from lshsim.sim.collectives import uniform_traffic

    if spec.startswith("uniform:"):
        return uniform_traffic(world, _parse_bytes(spec[len("uniform:"):]))
    try:
        with open(spec, encoding="utf-8") as handle:
            payload = json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"--traffic {spec!r}: no such file (expected uniform:BYTES_PER_RANK or FILE.json)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--traffic {spec!r}: not valid JSON: {error}") from None
    if isinstance(payload, dict):
        if "traffic_bytes" not in payload:
            raise ValueError(f"--traffic {spec!r}: a JSON object needs a 'traffic_bytes' [W][W] field")
        payload = payload["traffic_bytes"]
    try:
        matrix = np.asarray(payload, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"--traffic {spec!r}: must be a [W][W] matrix of numbers") from None
    if matrix.shape != (world, world):
        raise ValueError(f"--traffic {spec!r}: shape {matrix.shape} does not match the topology's "
                         f"{world} GPUs ({world}, {world})")
    return matrix


def _add_simulate(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="simulate one all-to-all on a topology (flow-level)",
                              description="Simulate one all-to-all on a modelled cluster with the flow-level "
                                          "simulator (max-min fair link sharing) and print its predicted time, "
                                          "the bytes each rank sends and receives, and the busiest links.")
    p.add_argument("--topology", required=True,
                   help="a shipped topology name (see data/topologies/) or a topology YAML file")
    p.add_argument("--traffic", required=True,
                   help="uniform:BYTES_PER_RANK (e.g. uniform:64MB; split evenly over all ranks, own included) "
                        "or FILE.json: a [world][world] matrix of bytes, row = source rank (or lshsim route "
                        "--json output)")
    p.add_argument("--algorithm", default="direct", help="direct | pairwise | 2d | groupwise (default direct)")
    p.add_argument("--chunks", type=_positive_int, default=1, help="2d only: pipeline chunks (default 1)")
    p.add_argument("--alpha-s", type=float, default=None,
                   help="per-message start-up latency in seconds (default: the topology's alpha_s)")
    p.add_argument("--message-gap-s", type=float, default=0.0,
                   help="a rank issues its messages of a phase this far apart, in seconds (LogGP gap; "
                        "default 0: all at once)")
    p.add_argument("--no-local-copy", action="store_true",
                   help="the diagonal costs nothing (default: an HBM copy concurrent with the network)")
    p.add_argument("--drain-tolerance", type=float, default=0.0,
                   help="0 = exact (default); e.g. 0.01 lets flows that would finish within 1%% of the "
                        "current time finish together: much faster on uneven traffic, about 1%% early")
    p.add_argument("--top-links", type=_positive_int, default=10, help="busiest links to show (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _cmd_simulate(args) -> int:
    from lshsim.sim.collectives import ALGORITHMS, simulate_all_to_all
    from lshsim.topology import load_topology

    if args.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={args.algorithm!r} is unknown; known: {', '.join(ALGORITHMS)}")
    if args.chunks != 1 and args.algorithm != "2d":
        raise ValueError(f"--chunks={args.chunks} applies to --algorithm 2d only")
    G = load_topology(args.topology)
    world = G.graph["num_nodes"] * G.graph["gpus_per_node"]
    traffic = _load_traffic(args.traffic, world)
    options = {"chunks": args.chunks} if args.algorithm == "2d" else {}
    result = simulate_all_to_all(G, traffic, args.algorithm, alpha_s=args.alpha_s,
                                 message_gap_s=args.message_gap_s, local_copy=not args.no_local_copy,
                                 drain_tolerance=args.drain_tolerance, **options)
    summary = result.to_dict(top_links=args.top_links)
    summary.update(topology=G.graph["name"], world=world, num_nodes=G.graph["num_nodes"],
                   gpus_per_node=G.graph["gpus_per_node"], total_bytes=float(traffic.sum()))
    if args.json:
        _print_json(summary)
        return 0
    _render_simulate(summary)
    return 0


def _render_simulate(summary: dict) -> None:
    from rich.table import Table

    console = _console()
    world = summary["world"]
    console.print(f"[bold]{summary['algorithm']}[/bold] all-to-all on [bold]{summary['topology']}[/bold] "
                  f"({summary['num_nodes']} x {summary['gpus_per_node']} GPUs): predicted time "
                  f"[bold]{summary['time_s'] * 1e3:.4f} ms[/bold] (network {summary['network_time_s'] * 1e3:.4f} ms, "
                  f"alpha_s {summary['options']['alpha_s'] * 1e6:.2f} us), {summary['total_bytes'] / 1e6:.2f} MB in all")
    stages = Table(title="Stages")
    for column in ("stage", "start ms", "end ms", "MB", "flows"):
        stages.add_column(column, justify="right")
    for s in summary["stages"]:
        stages.add_row(s["name"], f"{s['start_s'] * 1e3:.4f}", f"{s['end_s'] * 1e3:.4f}", f"{s['bytes'] / 1e6:.2f}",
                       str(s["flows"]))
    if summary["stages"]:
        console.print(stages)
    ranks = Table(title="Per rank, MB (diagonal excluded from egress/ingress)"
                  + ("" if world <= 64 else f": first 64 of {world}, all in --json"))
    for column in ("rank", "egress", "ingress", "local"):
        ranks.add_column(column, justify="right")
    for r in range(min(world, 64)):
        ranks.add_row(str(r), f"{summary['egress_bytes'][r] / 1e6:.2f}", f"{summary['ingress_bytes'][r] / 1e6:.2f}",
                      f"{summary['local_bytes'][r] / 1e6:.2f}")
    console.print(ranks)
    links = Table(title="Busiest links (utilisation = bytes / (bandwidth x predicted time))")
    for column in ("from", "to", "MB", "utilisation"):
        links.add_column(column, justify="right")
    for link in summary["busiest_links"]:
        links.add_row(str(link["src"]), str(link["dst"]), f"{link['bytes'] / 1e6:.2f}", f"{link['utilisation']:.3f}")
    console.print(links)


# ---- plan (the main job) ------------------------------------------------------------------------
_PLAN_DEFAULT_MODEL = "gpt-moe-15b"
_PLAN_DEFAULT_CLUSTER = "lshmoe-a100-4x8"


def _plan_console():
    """A console for the plan tables: the terminal's width, or 140 columns when writing to a file or pipe
    (rich's default of 80 there would squeeze the option tables)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)


def _capacity_factor(text: str) -> float | None:
    if text.lower() in ("none", "inf", "no"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"capacity factor {value} must be > 0 (or 'none' for no limit)")
    return value


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing (expected a,b,c)")
    return names


def _add_plan(subparsers) -> None:
    p = subparsers.add_parser("plan", help="predict an MoE training step; compare LSH-MoE, LocMoE, all-to-all options",
                              description="Simulate one training step (forward + backward) of a catalogued MoE model "
                                          "on a modelled cluster: routing by lshsim.dispatch on synthetic tokens, "
                                          "flow-level all-to-alls, roofline compute. Prints the step per phase, the "
                                          "all-to-all share, and the speedup of each option over the baseline (top-k, "
                                          "no LSH, direct all-to-all).")
    p.add_argument("--model", default=_PLAN_DEFAULT_MODEL,
                   help=f"a model of the catalog (models/configs) or a model YAML (default {_PLAN_DEFAULT_MODEL})")
    p.add_argument("--cluster", default=_PLAN_DEFAULT_CLUSTER,
                   help=f"a topology of data/topologies or a topology YAML (default {_PLAN_DEFAULT_CLUSTER})")
    p.add_argument("--router", default="topk", help="topk | hash | expert_choice | locmoe (default topk)")
    p.add_argument("--lsh-rate", type=float, default=None,
                   help="LSH-MoE compression rate in (0, 1] (centroids / tokens; the paper reports 0.117-0.2); "
                        "default: no LSH for your option, 0.2 for the comparison's lsh row")
    p.add_argument("--algorithm", default="direct",
                   help="all-to-all: direct | pairwise | 2d | groupwise (default direct)")
    p.add_argument("--overlap", action="store_true",
                   help="pipeline dispatch / experts / combine in chunks (Tutel-style)")
    p.add_argument("--tokens-per-gpu", type=_positive_int, default=None,
                   help="tokens per GPU per step (default: the model's)")
    p.add_argument("--capacity-factor", type=_capacity_factor, default=1.25,
                   help="expert capacity factor, or 'none' for no limit (default 1.25)")
    p.add_argument("--locality-bonus", type=float, default=1.0, help="locmoe: own-node preference (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic tokens (default 0)")
    p.add_argument("--max-routed-tokens", type=_positive_int, default=1 << 17,
                   help="route at most this many tokens in all, else subsample per rank and scale (default 131072)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="draw the options' step breakdown as stacked bars")
    p.add_argument("--trace", metavar="FILE.json", default=None, help="write your option's Trace (lshsim schema)")
    p.add_argument("--chrome-trace", metavar="FILE.json", default=None,
                   help="write your option's Trace as Chrome trace-event JSON (open in ui.perfetto.dev)")
    p.add_argument("--sweep", action="store_true", help="run every model of --models on every cluster of --clusters")
    p.add_argument("--models", type=_name_list, default=None, help="--sweep: comma-separated models (default --model)")
    p.add_argument("--clusters", type=_name_list, default=None,
                   help="--sweep: comma-separated clusters (default --cluster)")


def _plan_config(args):
    from lshsim.sim.moe_step import StepConfig

    return StepConfig(router=args.router, lsh_rate=args.lsh_rate, algorithm=args.algorithm, overlap=args.overlap,
                      tokens_per_gpu=args.tokens_per_gpu, capacity_factor=args.capacity_factor,
                      locality_bonus=args.locality_bonus, seed=args.seed, max_routed_tokens=args.max_routed_tokens)


def _plan_rows_json(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "result"} for row in rows]


def _cmd_plan(args) -> int:
    import time

    from lshsim.sim.moe_step import compare_options, plan_options
    from lshsim.topology import load_topology
    from lshsim.models import load_model

    if args.sweep:
        return _plan_sweep(args)
    if args.models or args.clusters:
        raise ValueError("--models and --clusters go with --sweep; for one plan use --model and --cluster")
    selected = _plan_config(args)
    model = load_model(args.model)
    graph = load_topology(args.cluster)
    started = time.perf_counter()
    rows = compare_options(model, graph, plan_options(selected))
    elapsed_s = time.perf_counter() - started
    chosen = next(row for row in rows if row["result"].config == selected)
    if args.trace:
        chosen["result"].trace.to_json(args.trace)
    if args.chrome_trace:
        chosen["result"].trace.to_chrome_trace(args.chrome_trace)
    if args.plot:
        _plot_plan(rows, args.plot, f"{model.name} on {graph.graph['name']}")
    summary = {"model": model.to_dict(), "cluster": chosen["result"].trace.meta["cluster"],
               "selected": chosen["label"], "options": _plan_rows_json(rows), "elapsed_s": elapsed_s}
    if args.json:
        _print_json(summary)
        return 0
    _render_plan(model, graph, chosen, rows, elapsed_s, args)
    return 0


def _render_plan(model, graph, chosen: dict, rows: list[dict], elapsed_s: float, args) -> None:
    from rich.table import Table

    console = _plan_console()
    b = chosen["breakdown"]
    cluster = chosen["result"].trace.meta["cluster"]
    console.print(f"[bold]{model.name}[/bold] ({model.num_layers} layers, {model.num_moe_layers} MoE x "
                  f"{model.num_experts} experts, top-{model.top_k}, d={model.d_model}, ffn={model.d_ffn}) on "
                  f"[bold]{cluster['name']}[/bold] ({cluster['nodes']} x {cluster['gpus_per_node']} {cluster['gpu']}), "
                  f"{b['tokens_per_gpu']} tokens per GPU")
    table = Table(title=f"Predicted step: {chosen['description']}")
    for column in ("phase", "forward ms", "backward ms", "total ms", "share"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    phases, forward, backward = b["phases_s"], b["phases_forward_s"], b["phases_backward_s"]
    busy = sum(phases.values())
    for name, seconds in phases.items():
        table.add_row(name, f"{forward.get(name, 0.0) * 1e3:.3f}", f"{backward.get(name, 0.0) * 1e3:.3f}",
                      f"{seconds * 1e3:.3f}", f"{100 * seconds / busy:.1f}%")
    table.add_row("[bold]step[/bold]", f"{b['forward_s'] * 1e3:.3f}", f"{b['backward_s'] * 1e3:.3f}",
                  f"[bold]{b['step_s'] * 1e3:.3f}[/bold]", "")
    console.print(table)
    hidden = "" if b["exposed_a2a_s"] >= b["a2a_s"] - 1e-12 else \
        f" ({(b['a2a_s'] - b['exposed_a2a_s']) * 1e3:.3f} ms hidden behind compute)"
    console.print(f"all-to-all: [bold]{b['exposed_a2a_s'] * 1e3:.3f} ms of {b['step_s'] * 1e3:.3f} ms = "
                  f"{100 * b['a2a_share']:.1f}%[/bold] of the step{hidden}; "
                  f"{b['dispatch_bytes_per_layer'] / 1e6:.1f} MB per dispatch, "
                  f"{b['inter_node_bytes_per_layer'] / 1e6:.1f} MB of it between nodes; "
                  f"{100 * b['dropped_fraction']:.1f}% of choices dropped at capacity")
    compare = Table(title="Options vs the baseline (topk, no LSH, direct all-to-all)")
    for column in ("option", "step ms", "a2a ms", "a2a %", "inter-node MB", "dropped", "speedup"):
        compare.add_column(column, justify="left" if column == "option" else "right")
    for row in rows:
        rb = row["breakdown"]
        mark = " *" if row is chosen else ""
        compare.add_row(row["label"] + mark, f"{rb['step_s'] * 1e3:.3f}",
                        f"{rb['exposed_a2a_s'] * 1e3:.3f}", f"{100 * rb['a2a_share']:.1f}%",
                        f"{rb['inter_node_bytes_per_layer'] / 1e6:.1f}", f"{100 * rb['dropped_fraction']:.1f}%",
                        f"{row['speedup']:.2f}x")
    console.print(compare)
    console.print("[dim]options: " + "; ".join(f"{row['label']} = {row['description']}" for row in rows
                                              if not row["label"].startswith("yours")) + "[/dim]")
    notes = []
    base_drop = rows[0]["breakdown"]["dropped_fraction"]
    for row in rows:
        rb = row["breakdown"]
        if rb["dropped_fraction"] > max(2 * base_drop, base_drop + 0.05):
            notes.append(f"{row['label']}: drops {100 * rb['dropped_fraction']:.0f}% of the expert choices at capacity "
                         f"factor {row['config']['capacity_factor']} (baseline {100 * base_drop:.0f}%), so its experts "
                         "compute less; compare with --capacity-factor none or a smaller --locality-bonus")
        if rb["gate_width"] != model.d_model:
            notes.append(f"{row['label']}: d_model={model.d_model} is not a multiple of {model.num_experts} "
                         "experts, so "
                         f"the GrAP gate read synthetic hidden states of width {rb['gate_width']}")
        if rb["count_scale"] != 1.0:
            notes.append(f"{row['label']}: routed {rb['routed_tokens_per_rank']} of {rb['tokens_per_gpu']} tokens per "
                         f"GPU and scaled the counts by {rb['count_scale']:g} (--max-routed-tokens)")
    for note in dict.fromkeys(notes):
        console.print(f"[dim]note: {note}[/dim]")
    console.print(f"[dim]* your option; share = all-to-all time not hidden behind compute / step; "
                  f"simulated in {elapsed_s:.1f} s[/dim]")


def _plan_tick(row: dict) -> str:
    """x label of one option: its name, then its configuration wrapped to fit under the bar."""
    import textwrap

    name = "yours" if row["label"].startswith("yours") else row["label"]
    return name + "\n" + textwrap.fill(row["description"], 18)


def _plot_plan(rows: list[dict], path: str, title: str) -> None:
    """Stacked bars: per option, the time of each phase (ms, forward + backward); a tick marks the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from lshsim.sim.trace import PHASES

    tidy: dict[str, list] = {"option": [], "phase": [], "ms": []}  # tidy columns, one row per (option, phase)
    for row in rows:
        for name, seconds in row["breakdown"]["phases_s"].items():
            tidy["option"].append(_plan_tick(row))
            tidy["phase"].append(name)
            tidy["ms"].append(seconds * 1e3)
    order = [name for name in PHASES if name in tidy["phase"]]
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(max(7.0, 1.7 * len(rows)), 5.0))
    sns.histplot(tidy, x="option", weights="ms", hue="phase", hue_order=order, multiple="stack", discrete=True,
                 shrink=0.75, palette="tab10", ax=ax, edgecolor="white", linewidth=0.5)
    labels = [_plan_tick(row) for row in rows]
    step_ms = [row["breakdown"]["step_s"] * 1e3 for row in rows]
    stack_ms = [sum(row["breakdown"]["phases_s"].values()) * 1e3 for row in rows]
    ax.scatter(labels, step_ms, marker="_", s=900, color="black", zorder=5)
    for x, (row, ms, top) in enumerate(zip(rows, step_ms, stack_ms)):
        ax.annotate(f"{ms:.1f} ms\n{row['speedup']:.2f}x", (x, max(ms, top)), xytext=(0, 6),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("")
    ax.set_ylabel("time per training step, ms (forward + backward)")
    ax.set_title(f"Predicted step breakdown: {title}")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylim(0, max(step_ms + stack_ms) * 1.18)
    fig.text(0.01, 0.01, "black line: step time (below the stack top where overlap hides all-to-all behind "
             "compute); label: step and speedup over the baseline", fontsize=7, color="dimgray")
    legend = ax.get_legend()
    if legend is not None:
        legend.set_title("phase")
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plan_sweep(args) -> int:
    from rich.progress import Progress

    from lshsim.sim.moe_step import compare_options, plan_options
    from lshsim.topology import load_topology
    from lshsim.models import load_model

    model_names = args.models or [args.model]
    cluster_names = args.clusters or [args.cluster]
    models = {name: load_model(name) for name in model_names}  # unknown names fail before any work
    graphs = {name: load_topology(name) for name in cluster_names}
    selected = _plan_config(args)
    options = plan_options(selected)
    results = []
    with Progress(console=_plan_console(), transient=True, disable=args.json) as progress:
        task = progress.add_task("simulating", total=len(models) * len(graphs) * len(options))
        for model_name, model in models.items():
            for cluster_name, graph in graphs.items():
                progress.update(task, description=f"{model_name} on {cluster_name}")
                try:
                    rows = compare_options(model, graph, options, on_done=lambda _label: progress.advance(task))
                except ValueError as error:  # e.g. experts that cannot be placed on this cluster
                    progress.advance(task, len(options))
                    results.append({"model": model_name, "cluster": cluster_name, "refused": str(error)})
                    continue
                results.append({"model": model_name, "cluster": cluster_name, "options": _plan_rows_json(rows)})
    if args.json:
        _print_json({"sweep": results})
        return 0
    _render_sweep(results, [label for label, _ in options], options)
    return 0


def _render_sweep(results: list[dict], labels: list[str], options: list) -> None:
    from rich.table import Table

    from lshsim.sim.moe_step import describe

    console = _plan_console()
    table = Table(title="Sweep: baseline step and the speedup of each option over it")
    for column in ("model", "cluster", "baseline ms", "a2a share", *labels[1:]):
        table.add_column(column, justify="left" if column in ("model", "cluster") else "right")
    refused = []
    for item in results:
        if "refused" in item:
            table.add_row(item["model"], item["cluster"], "refused", *([""] * (len(labels))))
            refused.append(f"{item['model']} on {item['cluster']}: {item['refused']}")
            continue
        by_label = {row["label"]: row for row in item["options"]}
        base = by_label["baseline"]["breakdown"]
        table.add_row(item["model"], item["cluster"], f"{base['step_s'] * 1e3:.2f}", f"{100 * base['a2a_share']:.1f}%",
                      *(f"{by_label[label]['speedup']:.2f}x" for label in labels[1:]))
    console.print(table)
    console.print("[dim]options: " + "; ".join(f"{label} = {describe(config)}" for label, config in options) + "[/dim]")
    for line in refused:
        console.print(f"[dim]refused: {line}[/dim]")


# (sub-commands simulate, plan go here)

# ================================ executor validation (issue 5) =================================
def _add_validate(subparsers) -> None:
    p = subparsers.add_parser("validate", help="compare measured executor traces with the simulator's prediction",
                              description="Simulate the all-to-alls and expert FFNs of measured traces (from "
                                          "`python -m lshsim.executor run`) on a topology, with the traffic matrices the "
                                          "executor recorded, and print predicted vs measured time per phase.")
    p.add_argument("traces", nargs="+", help="measured trace JSON file(s)")
    p.add_argument("--topology", default=None,
                   help="topology name or YAML (e.g. a calibrated one); default: the GPU's datasheet topology")
    p.add_argument("--plot", default=None, help="draw predicted vs measured into this PNG file")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _cmd_validate(args) -> int:
    import numpy as np

    from lshsim.sim.trace import Trace
    from lshsim.sim.validate import a2a_errors, plot_validations, validate_trace

    validations = [validate_trace(Trace.from_json(path), args.topology) for path in args.traces]
    errors = np.abs(a2a_errors(validations))
    summary = {"a2a_phases": int(errors.size),
               "a2a_median_abs_rel_error": float(np.median(errors)) if errors.size else None,
               "a2a_max_abs_rel_error": float(errors.max()) if errors.size else None}
    if args.plot:
        plot_validations(validations, args.plot)
    if args.json:
        _print_json({"validations": [v.to_dict() for v in validations], "summary": summary})
        return 0
    from rich.table import Table

    console = _console()
    for v in validations:
        table = Table(title=f"{v.name}: {v.world_size} ranks, topology {v.topology}")
        for column in ("phase", "direction", "measured ms", "predicted ms", "error"):
            table.add_column(column, justify="right")
        for row in v.rows:
            table.add_row(row.phase, row.direction, f"{row.measured_s * 1e3:.3f}",
                          "-" if row.predicted_s is None else f"{row.predicted_s * 1e3:.3f}",
                          "-" if row.rel_error is None else f"{100 * row.rel_error:+.1f}%")
        console.print(table)
    if errors.size:
        console.print(f"all-to-all phases: {errors.size}, median |error| {100 * summary['a2a_median_abs_rel_error']:.1f}%, "
                      f"worst {100 * summary['a2a_max_abs_rel_error']:.1f}%")
    if args.plot:
        console.print(f"plot written to {args.plot}")
    return 0


# ================================ registry ======================================================
def _subcommands() -> dict[str, tuple[Callable, Callable]]:
    """name -> (add_parser, run). Sub-commands are registered here, in help order."""
    return {name[len("_add_"):].replace("_", "-"): (fn, globals()["_cmd_" + name[len("_add_"):]])
            for name, fn in globals().items() if name.startswith("_add_") and callable(fn)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lshsim", description="Communication cost of MoE training: "
                                     "analytic models, a simulator and an executor (LSH-MoE, LocMoE).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in _subcommands().values():
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _, run = _subcommands()[args.command]
    try:
        return run(args)
    except ValueError as error:
        parser.exit(2, f"lshsim {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
