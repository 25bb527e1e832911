"""`lshsim route`: route seeded synthetic tokens and show the load per expert, drops and traffic."""
from __future__ import annotations

from lshsim.checks import CAPACITY_FACTOR_MAX, arg_finite_number, arg_positive_int, arg_within
from lshsim.cli import _render
from lshsim.cli._render import SEED_HELP, arg_seed
from lshsim.cli.plan import _router_option


def add_parser(subparsers):
    p = subparsers.add_parser("route", help="route synthetic tokens and show expert load, drops and traffic",
                              description="Route seeded synthetic tokens with one of lshsim.dispatch's routers "
                                          "and print the load per expert, the drops and the rank-to-rank "
                                          "traffic matrix of the dispatch all-to-all.")
    p.add_argument("--router", default="topk",
                   help="topk | hash | expert_choice | locmoe | node_limited | topk_collapsed, or a registered "
                        "router (lshsim.dispatch.ROUTERS; default topk)")
    p.add_argument("--router-option", action="append", default=[], metavar="NAME=VALUE", type=_router_option,
                   help="an option of the router, repeatable: node_limited max_nodes=2 / scores_per_node=0, "
                        "topk_collapsed active_experts=9 (top-k over experts 0..8 only); a name the router does "
                        "not have is refused with its options")
    p.add_argument("--k", type=arg_positive_int, default=None,
                   help="choices per token (default 2; a router with a fixed number of choices, hash: 1, refuses "
                        "another)")
    p.add_argument("--experts", type=arg_positive_int, default=16, help="number of experts E (default 16)")
    p.add_argument("--world", type=arg_positive_int, default=8, help="number of ranks (GPUs) W (default 8)")
    p.add_argument("--gpus-per-node", type=arg_positive_int, default=4, help="ranks per node (default 4)")
    p.add_argument("--tokens", type=arg_positive_int, default=4096, help="tokens per rank (default 4096)")
    p.add_argument("--d-model", type=arg_positive_int, default=1024, help="hidden size (default 1024)")
    p.add_argument("--bytes-per-element", type=_render.arg_element_size, default=2,
                   help="2 for bf16/fp16 (default), 4 for fp32 (1, 2, 4 or 8)")
    p.add_argument("--capacity-factor", type=arg_finite_number(0.0, exclusive=True, maximum=CAPACITY_FACTOR_MAX),
                   default=None,
                   help="capacity factor in (0, 1e6]; 0 or less is refused; use --no-capacity for no limit "
                        "(default 1.25; not with --no-capacity)")
    p.add_argument("--no-capacity", action="store_true", help="no capacity limit (nothing dropped)")
    p.add_argument("--drop-policy", default="position", help="position | score (default position)")
    p.add_argument("--placement", default="contiguous", help="contiguous | round_robin (default contiguous)")
    p.add_argument("--locality-bonus", type=arg_within("locality_bonus"), default=1.0,
                   help="locmoe: own-node preference, 0 to 1000 (default 1.0)")
    p.add_argument("--skew", type=arg_within("skew"), default=0.0,
                   help="popularity skew, 0 to 100: 0 = uniform experts; s > 0 adds s * log(Dirichlet(1)) to the "
                        "logits (the limit of a workload's skew, lshsim.bounds)")
    p.add_argument("--seed", type=arg_seed, default=0, help=f"random seed (default 0; {SEED_HELP})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the load per expert (kept and dropped, the capacity) and the traffic matrix to "
                        "FILE.png (written whole; its folder is created if missing, checked before any work)")
    p.epilog = ("Sizes: the W * tokens synthetic tokens of width d-model are routed in memory; a run whose "
                "estimate (lshsim.limits.estimate_route: about 4 B x d_model + 16 B x experts + 64 B x k per "
                "token) exceeds the memory available is refused before it starts.")
    return p


def run(args) -> int:
    from lshsim.dispatch import RouterConfig, make_placement, route
    from lshsim.dispatch.routers import effective_k, get_router
    from lshsim.dispatch.summary import route_summary
    from lshsim.dispatch.synthetic import synthetic_router_inputs
    from lshsim.limits import estimate_route, refuse_if_too_large

    from lshsim.io import prepare_output

    if args.no_capacity and args.capacity_factor is not None:
        raise ValueError(f"--capacity-factor {args.capacity_factor:g} with --no-capacity: give one of them")
    fixed = get_router(args.router).fixed_k
    if args.k is not None and fixed is not None and args.k != fixed:
        raise ValueError(f"--k {args.k}: router {args.router!r} always makes {fixed} choice"
                         f"{'s' if fixed != 1 else ''} per token; leave --k out")
    args.k = effective_k(args.router, args.k)
    capacity_factor = None if args.no_capacity else (1.25 if args.capacity_factor is None else args.capacity_factor)
    if args.world % args.gpus_per_node:
        raise ValueError(f"--world {args.world} is not a whole number of nodes of --gpus-per-node {args.gpus_per_node}")
    if args.experts % args.world:
        raise ValueError(f"--experts {args.experts} cannot be spread evenly over --world {args.world} ranks: give a "
                         f"multiple of {args.world} experts (or fewer ranks); an uneven placement is a Python call, "
                         f"lshsim.dispatch.Placement.from_lists")
    prepare_output(args.plot, "--plot")
    refuse_if_too_large(f"routing {args.world} ranks x {args.tokens} tokens per rank",
                        estimate_route(args.world * args.tokens, args.d_model, args.experts, args.k),
                        hint="lower --tokens, --world or --d-model")

    try:
        config = RouterConfig(name=args.router, k=args.k, capacity_factor=capacity_factor,
                              drop_policy=args.drop_policy, locality_bonus=args.locality_bonus,
                              options=dict(args.router_option))
    except ValueError as error:
        if not args.router_option:
            raise
        given = " ".join(f"{name}={value}" for name, value in args.router_option)
        raise ValueError(f"--router-option {given}: {error}") from None
    placement = make_placement(args.placement, args.experts, args.world, args.gpus_per_node)
    inputs = synthetic_router_inputs(num_tokens_per_rank=args.tokens, world_size=args.world,
                                     d_model=args.d_model, num_experts=args.experts, seed=args.seed,
                                     skew=args.skew)
    plan = route(config, placement, logits=inputs.logits, token_ids=inputs.token_ids, hidden=inputs.hidden,
                 token_rank=inputs.token_rank)
    summary = route_summary(plan, placement, config, bytes_per_token=args.d_model * args.bytes_per_element)
    return _render.emit(args, summary, render, plot=lambda: plot(args.plot, summary, args.gpus_per_node))


def plot(path: str, summary: dict, gpus_per_node: int) -> None:
    """Two panels: the choices per expert over all ranks, kept and dropped (the capacity, in the title,
    limits each (source rank, expert)); the dispatch all-to-all's traffic matrix in MB, node
    boundaries drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = summary["experts_table"]
    experts = np.array([r["expert"] for r in rows])
    kept = np.array([r["kept"] for r in rows])
    dropped = np.array([r["dropped"] for r in rows])
    traffic = np.array(summary["traffic_bytes"], dtype=float) / 1e6
    world = traffic.shape[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.4, 1]})
    left.bar(experts, kept, color="#4c72b0", label="kept")
    left.bar(experts, dropped, bottom=kept, color="#c44e52", label="dropped")
    limit = "no capacity limit" if summary["capacity"] is None else f"capacity {summary['capacity']} per (rank, expert)"
    left.set(title=f"choices per expert: {summary['router']}, k={summary['k']}, {limit}, "
                   f"{100 * summary['drop_fraction']:.1f}% dropped", xlabel="expert", ylabel="choices (all ranks)")
    left.title.set_fontsize(10)
    left.legend(frameon=True)
    image = right.imshow(traffic, cmap="viridis")
    for boundary in range(gpus_per_node, world, gpus_per_node):
        right.axhline(boundary - 0.5, color="white", linewidth=1)
        right.axvline(boundary - 0.5, color="white", linewidth=1)
    right.set(title=f"dispatch traffic, MB ({summary['inter_node_bytes'] / 1e6:.1f} MB between nodes)",
              xlabel="destination rank", ylabel="source rank")
    fig.colorbar(image, ax=right, label="MB")
    fig.tight_layout()
    _render.save_figure(fig, path, dpi=120)
    plt.close(fig)


def render(summary: dict) -> None:
    """Tables of a `route_summary`: the load per expert, the traffic matrix in MB, the totals."""
    from rich.table import Table

    console = _render.console()
    options = "".join(f" {name}={value}" for name, value in summary.get("router_options", {}).items())
    load = Table(title=f"Load per expert: router={summary['router']}{options} k={summary['k']} "
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
        f"(inter-node {summary['inter_node_bytes'] / 1e6:.2f} MB) of {total / 1e6:.2f} MB"
        + (f"\ninter-node once per (token, destination node), as a node-deduplicated dispatch sends "
           f"(DeepEP; plan --algorithm node_dedup): {summary['inter_node_bytes_dedup'] / 1e6:.2f} MB"
           if "inter_node_bytes_dedup" in summary and summary["inter_node_bytes"] else ""))
