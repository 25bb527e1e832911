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
# (sub-commands capacity, collision, a2a-cost, breakeven go here)
# HELPERS: read /work/HELPERS.md (working rules, deadline 09:50 UTC, commit by path) before editing.

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
    p.add_argument("--no-local-copy", action="store_true",
                   help="the diagonal costs nothing (default: an HBM copy concurrent with the network)")
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
                                 local_copy=not args.no_local_copy, **options)
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


# (sub-commands simulate, plan go here)
# HELPERS: read /work/HELPERS.md (working rules, deadline 09:50 UTC, commit by path) before editing.

# ================================ executor validation (issue 5) =================================
# (sub-command validate goes here)
# HELPERS: read /work/HELPERS.md (working rules, deadline 09:50 UTC, commit by path) before editing.


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
