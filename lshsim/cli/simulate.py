"""`lshsim simulate`: one all-to-all on a modelled cluster with the flow-level simulator.

The model: `lshsim.sim.collectives.simulate_all_to_all` on a `lshsim.topology` graph; the traffic
kinds (`uniform:BYTES`, a JSON matrix, `lshsim route --json` output): `lshsim.sim.traffic`.
"""
from __future__ import annotations

from lshsim.checks import arg_finite_number, arg_positive_int
from lshsim.cli import _render
from lshsim.units import BYTES_HELP


def add_parser(subparsers):
    p = subparsers.add_parser("simulate", help="simulate one all-to-all on a topology (flow-level)",
                              description="Simulate one all-to-all on a modelled cluster with the flow-level "
                                          "simulator (max-min fair link sharing) and print its predicted time, "
                                          "the bytes each rank sends and receives, and the busiest links.")
    p.add_argument("--topology", required=True,
                   help="a shipped topology name (see data/topologies/) or a topology YAML file")
    p.add_argument("--traffic", required=True,
                   help="uniform:BYTES_PER_RANK (e.g. uniform:64MB; split evenly over all ranks, own included; "
                        f"{BYTES_HELP}) or FILE.json: a [world][world] matrix of bytes, row = source rank (or "
                        "lshsim route --json output)")
    p.add_argument("--algorithm", default="direct",
                   help="direct | pairwise | hierarchical (alias 2d) | groupwise, or a registered one "
                        "(lshsim.algorithms; default direct)")
    p.add_argument("--chunks", type=arg_positive_int, default=1,
                   help="hierarchical only: pipeline chunks (default 1)")
    p.add_argument("--alpha-s", type=arg_finite_number(0.0), default=None,
                   help="per-message start-up latency in seconds, >= 0 (default: the topology's alpha_s)")
    p.add_argument("--message-gap-s", type=arg_finite_number(0.0), default=0.0,
                   help="a rank issues its messages of a phase this far apart, in seconds (LogGP gap; "
                        "default 0: all at once)")
    p.add_argument("--no-local-copy", action="store_true",
                   help="the diagonal costs nothing (default: an HBM copy concurrent with the network)")
    p.add_argument("--drain-tolerance", type=arg_finite_number(0.0, maximum=1.0), default=0.0,
                   help="in [0, 1]: 0 = exact (default); e.g. 0.01 lets flows that would finish within 1%% of the "
                        "current time finish together: much faster on uneven traffic, about 1%% early")
    p.add_argument("--solver", choices=("auto", "incremental", "vectorised"), default="auto",
                   help="the max-min solver (same times to rounding): incremental (compiled with numba), "
                        "vectorised (numpy), or auto (default: incremental from 2048 flow classes when numba "
                        "is installed); the output's stats.solver says which ran")
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
    progress.line(f"{algorithm} all-to-all on {G.graph['name']} ({world} GPUs, {pairs} rank pairs with traffic, "
                  f"{traffic.sum() / 1e6:.2f} MB, drain tolerance {args.drain_tolerance:g}): simulating")
    started = progress.elapsed_s()
    result = simulate_all_to_all(G, traffic, algorithm, alpha_s=args.alpha_s,
                                 message_gap_s=args.message_gap_s, local_copy=not args.no_local_copy,
                                 drain_tolerance=args.drain_tolerance, solver=args.solver, **options)
    progress.line(f"simulated in {format_duration(progress.elapsed_s() - started)} ({result.stats['solver']} "
                  f"solver): predicted time {result.time_s * 1e3:.4f} ms")
    summary = result.to_dict(top_links=args.top_links)
    summary.update(topology=G.graph["name"], world=world, num_nodes=G.graph["num_nodes"],
                   gpus_per_node=G.graph["gpus_per_node"], total_bytes=float(traffic.sum()))
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
