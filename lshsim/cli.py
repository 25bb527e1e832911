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
    from models import load_model

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
    from models import load_model

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
