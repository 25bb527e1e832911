"""`lshsim validate`: measured executor traces against the simulator's prediction, phase by phase;
`lshsim validate --published`: the published multi-node measurements of data/published/.

The model: `lshsim.sim.validate` (`validate_trace`, `a2a_errors`, `plot_validations`) on traces of
`lshsim.sim.trace.Trace` written by the executor (`lshsim run`); `lshsim.sim.published`
(`validate_published`) for the published cases.
"""
from __future__ import annotations

import argparse
import math
import time

from lshsim.checks import arg_int_within, arg_name
from lshsim.cli import _render

#: the most NIC efficiencies --efficiency-grid may name (the default grid has 31; each is a fit of every case)
EFFICIENCY_GRID_MAX_POINTS = 1000


def _arg_efficiency_grid(text: str) -> tuple[float, ...]:
    """argparse type of --efficiency-grid: LO:HI:STEP with 0 < LO <= HI <= 1 and STEP > 0, at most
    EFFICIENCY_GRID_MAX_POINTS efficiencies; the grid (checked whether or not --published is given).

    >>> _arg_efficiency_grid("0.9:1:0.05")
    (0.9, 0.95, 1.0)
    """
    try:
        lo, hi, step = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be LO:HI:STEP, e.g. 0.7:1.0:0.02") from None
    if not (0 < lo <= hi <= 1 and 0 < step < math.inf):
        raise argparse.ArgumentTypeError(f"{text!r} needs 0 < LO <= HI <= 1 and STEP > 0")
    points = int(round((hi - lo) / step)) + 1
    if points > EFFICIENCY_GRID_MAX_POINTS:
        raise argparse.ArgumentTypeError(f"{text!r} names {points} efficiencies, more than "
                                         f"{EFFICIENCY_GRID_MAX_POINTS}: use a larger STEP")
    return tuple(round(lo + step * i, 6) for i in range(points))


#: the value of a bare --published: the shipped folder (not a string, so that argparse does not type it)
SHIPPED = object()


def _arg_published_dir(text: str) -> str:
    """argparse type of --published DIR: a folder name; an empty DIR (`--published ''`) is refused, not read
    as a bare --published (SHIPPED, the shipped folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: an empty folder name (a bare --published takes the shipped "
                                         f"data/published/)")
    return text


def add_parser(subparsers):
    p = subparsers.add_parser("validate", help="compare measured executor traces with the simulator's prediction",
                              description="Simulate the all-to-alls and expert FFNs of measured traces (from "
                                          "`lshsim run`) on a topology, with the traffic matrices the "
                                          "executor recorded, and print predicted vs measured time per phase. "
                                          "A topology calibrated with `executor calibrate --phases` predicts "
                                          "every phase (gate, LSH, split exchange, experts) and the whole layer "
                                          "as it runs (forward, backward, total).")
    p.add_argument("traces", nargs="*", help="measured trace JSON file(s)")
    p.add_argument("--published", nargs="?", const=SHIPPED, default=None, metavar="DIR", type=_arg_published_dir,
                   help="instead of traces: predict every published case of DIR (default: data/published/ of "
                        "the source tree) against its figure under the case's own definition of bandwidth; the "
                        "NIC efficiency and a start-up per operation are fitted on the fitting cases only, the "
                        "test cases of DIR/split.yaml are reported apart (the full set: about 5 min of CPU time, 7 "
                        "min on 2 busy cores with --jobs 2; progress lines on stderr)")
    p.add_argument("--efficiency-grid", type=_arg_efficiency_grid, default=None, metavar="LO:HI:STEP",
                   help="with --published: the NIC efficiencies tried by the fit (default 0.40:1.00:0.02; a NIC "
                        "family's fit only uses those >= the efficiency its fitting cases demonstrate)")
    p.add_argument("--fitting-only", action="store_true",
                   help="with --published: simulate and report the fitting cases only (and leave-one-out); the "
                        "held-out test and fresh cases are not predicted (to work on the model without seeing them)")
    p.add_argument("--within-cluster", action="store_true",
                   help="with --published: also predict each case with its cluster's NIC efficiency calibrated on "
                        "the OTHER cases of its cluster (source group, NIC family, topology template; their published "
                        "figures, held-out ones included), leave-one-out and from one measured case: how accurate "
                        "lshsim is after you measure your own cluster once. NOT a held-out result; a separate table "
                        "(and --json key within_cluster); the standard report is unchanged")
    p.add_argument("--jobs", type=arg_int_within("jobs"), default=None, metavar="N",
                   help="with --published: worker processes for the cases' traffic, simulations and leave-one-out "
                        "refits, 1 to 4096 (default: the CPUs this process may use; 1: all in this process); the "
                        "results do not depend on it")
    p.add_argument("--quiet", action="store_true", help="with --published: no progress lines on stderr")
    p.add_argument("--topology", default=None, type=arg_name,
                   help="topology name or YAML (e.g. a calibrated one); default: the GPU's datasheet topology")
    p.add_argument("--plot", default=None,
                   help="draw predicted vs measured into this file (PNG, or the format its suffix names: .pdf, "
                        ".svg; written whole; its folder is created if missing, checked before any work); with "
                        "--published: predicted vs published GB/s by set, and every set's |error|")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def run(args) -> int:
    import numpy as np

    from lshsim.io import check_distinct_outputs, prepare_output

    if args.published is not None:
        if args.traces or args.topology:
            raise ValueError("--published takes no traces or --topology")
        prepare_output(args.plot, "--plot")
        return _run_published(args)
    if args.fitting_only or args.jobs is not None or args.quiet or args.within_cluster:
        raise ValueError("--fitting-only, --within-cluster, --jobs and --quiet go with --published")
    if not args.traces:
        raise ValueError("give trace files, or --published")

    prepare_output(args.plot, "--plot")
    check_distinct_outputs([("--plot", args.plot)], [("a trace", t) for t in args.traces] + [("--topology", args.topology)])
    from lshsim.sim.validate import a2a_errors, plot_validations, validate_trace_file

    validations = [validate_trace_file(path, args.topology) for path in args.traces]   # errors name the file
    errors = np.abs(a2a_errors(validations))
    from lshsim.sim.validate import layer_errors

    layer = np.abs(layer_errors(validations))
    summary = {"layer_predictions": int(layer.size),
               "layer_median_abs_rel_error": float(np.median(layer)) if layer.size else None,
               "layer_max_abs_rel_error": float(layer.max()) if layer.size else None,
               "a2a_phases": int(errors.size),
               "a2a_median_abs_rel_error": float(np.median(errors)) if errors.size else None,
               "a2a_max_abs_rel_error": float(errors.max()) if errors.size else None}
    if args.plot:
        try:
            plot_validations(validations, args.plot)
        except ValueError as error:
            raise ValueError(f"--plot {args.plot}: {' '.join(map(str, args.traces))}: {error}") from None
    if args.json:
        _render.print_json({"validations": [v.to_dict() for v in validations], "summary": summary})
        return 0
    from rich.table import Table

    console = _render.console()
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
        console.print(f"all-to-all phases: {errors.size}, "
                      f"median |error| {100 * summary['a2a_median_abs_rel_error']:.1f}%, "
                      f"worst {100 * summary['a2a_max_abs_rel_error']:.1f}%")
    from lshsim.sim.validate import phase_errors

    for key, values in sorted(phase_errors(validations).items()):
        if key.startswith("layer/") or key.startswith(("gate/", "expert/", "lsh_", "other/")):
            values = np.abs(values)
            console.print(f"{key}: {values.size} predicted, median |error| {100 * np.median(values):.1f}%, "
                          f"worst {100 * values.max():.1f}%")
    if args.plot:
        console.print(f"plot written to {args.plot}", soft_wrap=True, markup=False)
    return 0


def _run_published(args) -> int:
    from lshsim.sim.published import FRESH_SETS, PUBLISHED_DIR, validate_published

    folder = PUBLISHED_DIR if args.published is SHIPPED else args.published
    from pathlib import Path

    from lshsim.io import check_distinct_outputs

    # --plot onto a case file or split.yaml wrote a PNG over it (exit 0)
    check_distinct_outputs([("--plot", args.plot)], [("--published", path) for path in sorted(Path(folder).glob("*.yaml"))])
    grid = args.efficiency_grid    # None, or the efficiencies of _arg_efficiency_grid
    from lshsim.cli._progress import ProgressLines
    from lshsim.sim.published import default_jobs

    jobs = default_jobs() if args.jobs is None else args.jobs
    lines = ProgressLines("validate --published", quiet=args.quiet)
    simulated = []

    def progress(case_id):
        simulated.append(case_id)

    first_done = []  # when the first simulation finished: the rate is counted from there (the traffic draws before)

    def simulation_progress(done, total):
        now = time.perf_counter()
        if not first_done:
            first_done.append(now)
        left_s = (now - first_done[0]) / (done - 1) * (total - done) if done > 1 else None
        lines.tick(f"{done}/{total} simulations done, {len(simulated)} case{'' if len(simulated) == 1 else 's'} "
                   f"complete ({workers})", left_s=left_s)

    workers = f"{jobs} worker process{'es' if jobs > 1 else ''}"
    lines.line(f"drawing the cases' traffic, then simulating ({workers})")
    out = validate_published(folder, efficiency_grid=grid, fitting_only=args.fitting_only, jobs=jobs,
                             progress=progress, simulation_progress=simulation_progress,
                             within_cluster=args.within_cluster)
    lines.line(f"{len(simulated)} cases simulated, calibration and leave-one-out fitted")
    if "within_cluster" in out:
        lines.line(f"within-cluster calibration: {out['within_cluster']['extra_simulations']} more simulations "
                   f"(lower NIC efficiencies)")
    if args.plot:
        from lshsim.sim.published_plot import plot_published

        plot_published(out, args.plot)
        lines.line(f"plot written to {args.plot}")
    if args.json:
        _render.print_json(out)
        return 0
    from rich.table import Table

    console = _render.wide_console()  # case ids and topology names are long: no squeezing in a pipe
    rows = out["rows"]

    def extrapolated(row) -> bool:   # a held-out case outside its fit's sizes (`published.fitting_ranges`)
        return row["role"] != "fitting" and not row.get("within_fitting_range", True)

    for group in sorted({r["source_group"] for r in rows}):
        mine = [r for r in rows if r["source_group"] == group]
        files = ", ".join(sorted({r["file"] for r in mine}))
        table = Table(title=f"Published measurements, source {group} ({files}): predicted vs published, "
                            f"each under its own definition")
        for column in ("case", "set", "topology", "counts", "published GB/s", "predicted GB/s", "error"):
            table.add_column(column, justify="left" if column in ("case", "topology") else "right",
                             no_wrap=column in ("case", "topology"))
        for row in sorted(mine, key=lambda r: (r["role"], r["file"], r["id"])):
            table.add_row(row["id"], row["role"], row["topology"], row["counts"], f"{row['published_GBps']:.1f}",
                          f"{row['predicted_GBps']:.1f}", f"{100 * row['rel_error']:+.1f}%" + (" *" if extrapolated(row) else ""))
        console.print(table)
    if any(extrapolated(r) for r in rows):
        console.print("* outside the sizes (tokens per rank; bytes per rank for a plain all-to-all) of its NIC family's "
                      "fitting cases of its kernel kind: the start-up and per-message terms extrapolate")
    cal = out["calibration"]
    for family in sorted(cal["nic_efficiency"]):
        alpha = cal["alpha_s"][family]
        starts = ", ".join(f"{kind.replace('_', '-')} {op} {a * 1e6:.1f} us"
                           for kind in ("normal", "low_latency") for op, a in alpha.get(kind, {}).items())
        if family in cal.get("alltoall_peer_s", {}):          # a family of plain all-to-all cases (nccl-tests)
            floor = cal.get("alltoall_floor_s", {}).get(family, 0.0)
            ramp = cal.get("alltoall_ramp_bytes", {}).get(family, 0.0)
            starts += (f"{', ' if starts else ''}all-to-all {floor * 1e6:.1f} us + "
                       f"({alpha['alltoall']['alltoall'] * 1e6:.1f} us + "
                       f"{cal['alltoall_peer_s'][family] * 1e6:.2f} us per remote peer) x s / (s + {ramp / 2**20:.3g} MiB)")
        console.print(f"calibration {family} (fitting cases only): NIC efficiency {cal['nic_efficiency'][family]:.2f} "
                      f"({cal['nic_Bps'][family] / 1e9:.1f} GB/s per NIC; floor shown by the fitting cases "
                      f"{cal['efficiency_floor'].get(family, 0.0):.3f}), start-ups: {starts}; per low-latency "
                      f"message {cal['message_s'].get(family, 0.0) * 1e9:.0f} ns"
                      + (f"; UCCL-EP Hopper normal-combine ceiling {cal['combine_Bps'][family] / 1e9:.1f} GB/s of "
                         f"(token, rank) bytes" if cal.get("combine_Bps", {}).get(family) else ""))

    def line(name, part):
        if part and part["cases"]:
            text = (f"{name}: {part['cases']} cases, median |error| {100 * part['median_abs_rel_error']:.1f}%, "
                    f"worst {100 * part['max_abs_rel_error']:.1f}%")
            if part.get("outside_fitting_range"):
                text += f"; {part['outside_fitting_range']} outside the fitting sizes"
                if part.get("within_range_median_abs_rel_error") is not None:
                    text += (f" (the {part['cases'] - part['outside_fitting_range']} within: median "
                             f"{100 * part['within_range_median_abs_rel_error']:.1f}%, worst "
                             f"{100 * part['within_range_max_abs_rel_error']:.1f}%)")
            console.print(text)

    for name in ("fitting", "test", *FRESH_SETS, "leave_one_out"):
        line(name.replace("_", "-"), out.get(name))
    for family, fit in out.get("exact_fits", {}).items():
        console.print(f"note: NIC family {family} has {fit['cases']} fitting case(s) for {fit['fitted_values']} fitted "
                      f"values: as many values as cases (or more), so its fitting error is no measure of accuracy; judge "
                      f"it by leave-one-out and held-out cases", soft_wrap=True)
    for group, parts in out["by_source"].items():
        for role in ("fitting", "test", *FRESH_SETS):
            line(f"{group} {role}", parts.get(role))
        if "leave_one_out" in out:
            line(f"{group} leave-one-out", out["leave_one_out"]["by_source"].get(group))
    if "within_cluster" in out:
        _print_within_cluster(console, out["within_cluster"])
    return 0


def _print_within_cluster(console, within: dict) -> None:
    """The --within-cluster tables: per set and per cluster, the standard |error| of the same cases beside the
    within-cluster ones (leave-one-out; one measured point: the median over the choices of the calibrating case)."""
    from rich.table import Table

    from lshsim.sim.published_within import ROLES

    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"
    console.print(f"\n{within['note']}.", soft_wrap=True, markup=False)
    console.print(f"A cluster: {within['cluster']}; refitted: {within['fitted']}.", soft_wrap=True, markup=False)
    columns = ("cases", "standard median", "standard worst", "cluster LOO median", "cluster LOO worst",
               "one point median", "one point worst", "one point worst choice")

    def cells(part):
        return (str(part["cases"]), pct(part["standard_median_abs_rel_error"]), pct(part["standard_max_abs_rel_error"]),
                pct(part["median_abs_rel_error"]), pct(part["max_abs_rel_error"]),
                pct(part["one_point_median_abs_rel_error"]), pct(part["one_point_max_abs_rel_error"]),
                pct(part["one_point_worst_choice_abs_rel_error"]))

    table = Table(title="Within-cluster calibration (NOT held-out): |error| per set, the same cases' standard "
                        "|error| beside it")
    table.add_column("set", justify="left")
    for column in columns:
        table.add_column(column, justify="right")
    for name in (*ROLES, "all"):
        if within[name]["cases"]:
            table.add_row(name, *cells(within[name]))
    console.print(table)
    table = Table(title="Within-cluster calibration (NOT held-out) per cluster (its sets below its name): NIC "
                        "efficiency of the family, fitted on all the cluster's cases, and the leave-one-out fits' "
                        "range; |error| median / worst, %")
    table.add_column("cluster: source group/NIC family/topology", justify="left", no_wrap=True)
    for column in ("family eff", "cluster eff", "LOO eff", "cases", "standard", "cluster LOO", "one point",
                   "one point worst choice"):
        table.add_column(column, justify="right", no_wrap=column not in ("family eff", "cluster eff",
                                                                         "one point worst choice"),
                         min_width=6 if column == "one point worst choice" else None)
    pair = lambda m, w: "-" if m is None else f"{100 * m:.1f} / {100 * w:.1f}"
    for c in within["clusters"]:
        low, high = c["efficiency_range"]
        name = f"{c['source_group']}/{c['nic_family']}/{c['topology_template'].removeprefix('published/')}"
        sets = ", ".join(f"{k} {v}" for k, v in c["roles"].items())
        table.add_row(f"{name}\n  {sets}", f"{c['family_efficiency']:.2f}", f"{c['efficiency_all_cases']:.2f}",
                      f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}", str(c["cases"]),
                      pair(c["standard_median_abs_rel_error"], c["standard_max_abs_rel_error"]),
                      pair(c["median_abs_rel_error"], c["max_abs_rel_error"]),
                      pair(c["one_point_median_abs_rel_error"], c["one_point_max_abs_rel_error"]),
                      pct(c["one_point_worst_choice_abs_rel_error"]))
    console.print(table)
    console.print(f"{len(within['single_case_clusters'])} cluster(s) of one case (no within-cluster number); "
                  f"{within['extra_simulations']} simulations at lower NIC efficiencies; "
                  f"{len(within['monotone_violations'])} simulated time(s) growing with the NIC efficiency", soft_wrap=True,
                  markup=False)
