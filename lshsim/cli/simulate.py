"""`lshsim simulate`: one all-to-all on a modelled cluster with the flow-level simulator.

The model: `lshsim.sim.collectives.simulate_all_to_all` on a `lshsim.topology` graph; the traffic
kinds (`uniform:BYTES`, a JSON matrix, `lshsim route --json` output): `lshsim.sim.traffic`.
"""
from __future__ import annotations

from lshsim.checks import arg_finite_number, arg_int_within, arg_name, arg_positive_int, arg_within
from lshsim.cli import _render
from lshsim.units import BYTES_HELP


def add_parser(subparsers):
    p = subparsers.add_parser("simulate", help="simulate one all-to-all on a topology (flow-level)",
                              description="Simulate one all-to-all on a modelled cluster with the flow-level "
                                          "simulator (max-min fair link sharing) and print its predicted time, "
                                          "the bytes each rank sends and receives, and the busiest links.")
    p.add_argument("--topology", required=True, type=arg_name,
                   help="a shipped topology name (see data/topologies/) or a topology YAML file")
    p.add_argument("--traffic", required=True,
                   help="uniform:BYTES_PER_RANK (e.g. uniform:64MB; split evenly over all ranks, own included; "
                        f"{BYTES_HELP}) or FILE.json: a [world][world] matrix of bytes, row = source rank (or "
                        "lshsim route --json output)")
    p.add_argument("--algorithm", default="direct",
                   help="direct | pairwise | hierarchical (alias 2d) | groupwise | node_dedup (alias deepep; "
                        "from a matrix alone nothing is deduplicated: every byte for another node crosses the "
                        "network, then NVLink forwards it), or a registered one (lshsim.algorithms; default direct)")
    p.add_argument("--chunks", type=arg_int_within("chunks"), default=1,
                   help="hierarchical only: pipeline chunks, 1 to 1024 (default 1)")
    p.add_argument("--alpha-s", type=arg_within("latency_s"), default=None,
                   help="per-message start-up latency in seconds, >= 0 (default: the topology's alpha_s)")
    p.add_argument("--message-gap-s", type=arg_within("latency_s"), default=0.0,
                   help="a rank issues its messages of a phase this far apart, in seconds (LogGP gap; "
                        "default 0: all at once)")
    p.add_argument("--no-local-copy", action="store_true",
                   help="the diagonal costs nothing (default: an HBM copy concurrent with the network)")
    p.add_argument("--fidelity", choices=("auto", "exact", "tolerance", "estimate"), default="auto",
                   help="exact (max-min flow simulation), tolerance (--drain-tolerance, default 0.01), or estimate "
                        "(every phase from its link loads with the correction for few flows per port, no event "
                        "loop: lshsim.sim.collectives.estimate_collective; direct, groupwise, hierarchical without "
                        "chunks, pairwise). Default auto, from the rank pairs that carry traffic: exact up to "
                        "4,032 (a 64-GPU all-to-all), tolerance up to 65,280 (256 GPUs), estimate above. Printed, "
                        "and in the JSON (\"fidelity\")")
    p.add_argument("--drain-tolerance", type=arg_finite_number(0.0, maximum=0.99), default=None,
                   help="in [0, 0.99]: 0 = exact; e.g. 0.01 lets flows that would finish within 1%% of the current "
                        "time finish together: much faster on uneven traffic, about 1%% early. Giving it selects "
                        "--fidelity tolerance (exact for 0)")
    p.add_argument("--solver", choices=("auto", "incremental", "vectorised"), default="auto",
                   help="the max-min solver of the exact and tolerance levels (same times to rounding): incremental "
                        "(compiled with numba), vectorised (numpy), or auto (default: incremental from 2048 flow "
                        "classes when numba is installed); the output's stats.solver says which ran")
    p.add_argument("--top-links", type=arg_positive_int, default=10, help="busiest links to show (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (progress goes to stderr)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines on stderr (default: a line when the simulation starts and when it ends, "
                        "with the problem size and the elapsed time)")
    p.epilog = ("Sizes: an all-to-all on W ranks is W^2 flows in memory; a topology whose estimate "
                "(lshsim.limits.estimate_flows: about 512 B per flow) exceeds the memory available is refused "
                "before the simulation starts.")
    return p


def world_of_spec(spec: dict) -> int | None:
    """W = nodes x gpus_per_node of a topology spec read but not built yet (None where the fields are not
    whole numbers: building the topology then names the field)."""
    nodes, per_node = spec.get("nodes", 1), spec.get("gpus_per_node")
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (nodes, per_node)):
        return nodes * per_node
    return None


def load_sized_topology(name_or_path, what: str, option: str = "--topology"):
    """`lshsim.topology.load_topology`, with the flows of an all-to-all on it refused before the graph is
    built if they cannot fit in memory (`lshsim.limits.estimate_flows`)."""
    from lshsim.limits import estimate_flows, refuse_if_too_large
    from lshsim.topology import build_topology
    from lshsim.topology.spec import read_spec

    spec, source = read_spec(name_or_path)
    world = world_of_spec(spec) if isinstance(spec, dict) else None
    if world is not None:
        refuse_if_too_large(f"{what} on {option} {name_or_path} ({world} GPUs)", estimate_flows(world),
                            hint="use a smaller topology")
    return build_topology(spec, source=source)


#: `lshsim simulate --fidelity auto`: exact up to this many rank pairs with traffic (a 64-GPU all-to-all:
#: exact 0.4 s on 2 cores for skewed MoE traffic), tolerance up to SIMULATE_TOLERANCE_MAX_PAIRS (256 GPUs:
#: exact 7-15 s, tolerance about 1 s), the estimate above (exact 76-196 s at 1,024 GPUs; issue 15).
SIMULATE_EXACT_MAX_PAIRS = 64 * 63
SIMULATE_TOLERANCE_MAX_PAIRS = 256 * 255


def simulate_fidelity(fidelity: str, drain_tolerance: float | None, pairs: int) -> dict:
    """{"mode", "drain_tolerance", "chosen"} of `lshsim simulate` (see --fidelity).

    >>> simulate_fidelity("auto", None, 8 * 7)["mode"], simulate_fidelity("auto", None, 1024 * 1023)["mode"]
    ('exact', 'estimate')
    >>> simulate_fidelity("auto", 0.05, 10)
    {'mode': 'tolerance', 'drain_tolerance': 0.05, 'chosen': 'flag'}
    """
    from lshsim.sim.moe_step import DEFAULT_DRAIN_TOLERANCE

    if fidelity in ("exact", "estimate") and drain_tolerance:
        raise ValueError(f"--drain-tolerance goes with --fidelity tolerance, not --fidelity {fidelity}")
    if fidelity == "auto" and drain_tolerance is not None:
        mode = "exact" if drain_tolerance == 0 else "tolerance"
        return {"mode": mode, "drain_tolerance": float(drain_tolerance), "chosen": "flag"}
    tolerance = DEFAULT_DRAIN_TOLERANCE if not drain_tolerance else float(drain_tolerance)
    if fidelity == "auto":
        mode = "exact" if pairs <= SIMULATE_EXACT_MAX_PAIRS else \
            ("tolerance" if pairs <= SIMULATE_TOLERANCE_MAX_PAIRS else "estimate")
        chosen = (f"auto ({pairs} rank pairs with traffic; exact up to {SIMULATE_EXACT_MAX_PAIRS}, tolerance up to "
                  f"{SIMULATE_TOLERANCE_MAX_PAIRS}, estimate above)")
    else:
        mode, chosen = fidelity, "flag"
    return {"mode": mode, "drain_tolerance": tolerance if mode == "tolerance" else 0.0, "chosen": chosen}


def run(args) -> int:
    from lshsim.algorithms import canonical_algorithm
    from lshsim.cli._progress import ProgressLines, format_duration
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.sim.traffic import load_traffic
    progress = ProgressLines("simulate", quiet=args.quiet)
    algorithm = canonical_algorithm(args.algorithm, side="simulate")
    if args.chunks != 1 and algorithm != "hierarchical":
        raise ValueError(f"--chunks={args.chunks} applies to --algorithm hierarchical (alias 2d) only")
    G = load_sized_topology(args.topology, "an all-to-all")
    world = G.graph["num_nodes"] * G.graph["gpus_per_node"]
    traffic = load_traffic(args.traffic, world)
    options = {"chunks": args.chunks} if algorithm == "hierarchical" else {}
    # the flow simulator has no progress hook: a line when it starts and one when it ends
    pairs = int((traffic > 0).sum() - (traffic.diagonal() > 0).sum())
    fidelity = simulate_fidelity(args.fidelity, args.drain_tolerance, pairs)
    if fidelity["mode"] == "estimate":
        from lshsim.sim.collectives import ESTIMATED_ALGORITHMS
        if algorithm not in ESTIMATED_ALGORITHMS or args.chunks != 1 or args.alpha_s is not None \
                or args.message_gap_s > 0:
            if fidelity["chosen"] == "flag":
                raise ValueError(f"--fidelity estimate covers --algorithm {', '.join(ESTIMATED_ALGORITHMS)} without "
                                 "--chunks, --alpha-s or --message-gap-s; use --fidelity tolerance")
            fidelity.update(mode="tolerance", drain_tolerance=0.01,
                            chosen=fidelity["chosen"] + "; tolerance: the estimate does not cover these options")
    progress.line(f"{algorithm} all-to-all on {G.graph['name']} ({world} GPUs, {pairs} rank pairs with traffic, "
                  f"{traffic.sum() / 1e6:.2f} MB), fidelity {fidelity['mode']}"
                  + (f" {fidelity['drain_tolerance']:g}" if fidelity["mode"] == "tolerance" else "")
                  + f" ({fidelity['chosen']}): {'estimating' if fidelity['mode'] == 'estimate' else 'simulating'}")
    started = progress.elapsed_s()
    if fidelity["mode"] == "estimate":
        from lshsim.sim.collectives import estimate_collective
        result = estimate_collective(G, traffic, algorithm, local_copy=not args.no_local_copy)
    else:
        result = simulate_all_to_all(G, traffic, algorithm, alpha_s=args.alpha_s,
                                     message_gap_s=args.message_gap_s, local_copy=not args.no_local_copy,
                                     drain_tolerance=fidelity["drain_tolerance"], solver=args.solver, **options)
    solver = (result.stats or {}).get("solver") if fidelity["mode"] != "estimate" else None
    progress.line(f"{'estimated' if fidelity['mode'] == 'estimate' else 'simulated'} in "
                  f"{format_duration(progress.elapsed_s() - started)}" + (f" ({solver} solver)" if solver else "")
                  + f": predicted time {result.time_s * 1e3:.4f} ms")
    summary = result.to_dict(top_links=args.top_links)
    summary.update(topology=G.graph["name"], world=world, num_nodes=G.graph["num_nodes"],
                   gpus_per_node=G.graph["gpus_per_node"], total_bytes=float(traffic.sum()), fidelity=fidelity)
    return _render.emit(args, summary, render)


def render(summary: dict) -> None:
    """Tables of a simulated all-to-all: the headline, the stages, per-rank bytes, the busiest links."""
    from rich.table import Table

    console = _render.console()
    world = summary["world"]
    console.print(f"[bold]{summary['algorithm']}[/bold] all-to-all on [bold]{summary['topology']}[/bold] "
                  f"({summary['num_nodes']} x {summary['gpus_per_node']} GPUs): predicted time "
                  f"[bold]{summary['time_s'] * 1e3:.4f} ms[/bold] (network {summary['network_time_s'] * 1e3:.4f} ms, "
                  f"alpha_s {summary['options']['alpha_s'] * 1e6:.2f} us), "
                  f"{summary['total_bytes'] / 1e6:.2f} MB in all")
    fidelity = summary.get("fidelity")
    if fidelity:
        level = fidelity["mode"] + (f" {fidelity['drain_tolerance']:g}" if fidelity["mode"] == "tolerance" else "")
        console.print(f"fidelity: {level}; chosen: {fidelity['chosen']}")
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
