"""`lshsim sweep GRID.yaml`: `lshsim plan` over a grid, in local processes or on a Dask cluster.

The grid, the table and the engines: `lshsim.sweep`. Progress lines go to standard error; standard
output gets a summary (or `--json`).
"""
from __future__ import annotations

from lshsim.checks import arg_int_within
from lshsim.cli import OUTPUT_RULE_HELP


def add_parser(subparsers):
    p = subparsers.add_parser(
        "sweep", help="`plan` over a grid of models, clusters, NIC rates, sizes and options (resumable)",
        description="Plan every point of a grid (a YAML file: data/sweeps/README.md) and write one CSV row per "
                    "(point, option): the predicted step, the all-to-all share, the speedup over the baseline "
                    "option, the fidelity used, the wall time, and the error of a point that failed (the others "
                    "go on; exit code 1 when every point failed, no plot). Rerunning with the same --out skips the points already in it (resume after an "
                    "interruption). Runs in local processes (--jobs) or on Dask (--engine dask).")
    p.add_argument("grid", metavar="GRID.yaml", help="the grid file (e.g. data/sweeps/nic-vs-size.yaml)")
    p.add_argument("--out", metavar="FILE.csv", default=None,
                   help="the results table (default: GRID's name + .csv in the current folder); an existing "
                        "table of the same grid is resumed")
    p.add_argument("--jobs", type=arg_int_within("jobs", minimum=0), default=1,
                   help="local engine: worker processes, 0 to 4096 (default 1; 0 runs the points in this process); "
                        "dask engine without --scheduler: the workers of the local Dask cluster it starts")
    p.add_argument("--engine", choices=("local", "dask"), default="local",
                   help="local: concurrent.futures processes (default); dask: Dask's distributed scheduler "
                        "(pip install 'lshsim[dask]')")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="--engine dask: the address of a running Dask scheduler (tcp://host:8786); default: "
                        "start a local Dask cluster of --jobs worker processes")
    p.add_argument("--retry-errors", action="store_true",
                   help="run again the points whose rows in --out are errors (default: keep them)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw the speedup of each option against the NIC rate and against the cluster size")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (progress goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.epilog = "Output files: " + OUTPUT_RULE_HELP
    return p


def run(args) -> int:
    from pathlib import Path

    from lshsim.cli import _render
    from lshsim.cli._progress import ProgressLines
    from lshsim.io import check_distinct_outputs, prepare_output
    from lshsim.sweep import load_grid, plot_sweep, run_sweep

    grid_path = Path(args.grid)
    if not grid_path.is_file():
        raise ValueError(f"{args.grid}: no such grid file")
    if args.scheduler is not None and args.engine != "dask":
        raise ValueError("--scheduler goes with --engine dask")
    if args.out is not None and not args.out.strip():
        raise ValueError(f"--out {args.out!r}: an empty file name")
    out = args.out if args.out is not None else f"{grid_path.stem}.csv"
    if Path(out).suffix.lower() != ".csv":
        raise ValueError(f"--out {out}: the table is CSV; give a .csv file (Parquet is not written: pyarrow "
                         "is not a dependency)")
    prepare_output(out, "--out")
    prepare_output(args.plot, "--plot")
    check_distinct_outputs([("--out", out), ("--plot", args.plot)], [("the grid", args.grid)])
    progress = ProgressLines("sweep", quiet=args.quiet)
    from lshsim.models import load_model

    grid = load_grid(grid_path, resolve_model=load_model)
    try:
        summary = run_sweep(grid, out, engine=args.engine, jobs=args.jobs, scheduler=args.scheduler,
                            retry_errors=args.retry_errors, progress=progress)
    except KeyboardInterrupt:          # run_sweep said what is in the table and how to resume
        return 130
    progress.wrote(f"{out} ({summary['rows']} rows: {summary['points']} points, {summary['run']} run now, "
                   f"{summary['skipped']} already there, {summary['failed']} failed now)")
    rows = summary.pop("rows_data")
    every_failed = bool(rows) and all(row["error"] for row in rows)
    if args.plot and not every_failed:     # nothing to draw when no point ran
        plot_sweep(rows, args.plot, f"{grid.name}: {', '.join(grid.swept) or 'one point'}")
        progress.wrote(args.plot)
    if args.json:
        _render.print_json({**summary, "grid": str(grid_path), "engine": args.engine,
                            "plot": None if every_failed else args.plot})
    else:
        _render_summary(rows, summary, grid, plot=None if every_failed else args.plot)
    if every_failed:    # exit 1, as a failed rank: a script must not take a table of errors for results
        import sys

        sys.stderr.write(f"lshsim sweep: error: every point of {grid_path} failed (the table {out} holds each "
                         f"error; the first: {' '.join(str(rows[0]['error']).split())})\n")
        return 1
    return 0


def _render_summary(rows: list[dict], summary: dict, grid, plot: str | None = None) -> None:
    """Per option: how many points, the median and range of the speedup; then the failed points, the
    table's path and the plot's (on stdout: `--quiet` turns off only the progress lines on stderr)."""
    from lshsim.cli import _render

    options = list(dict.fromkeys(row["option"] for row in rows))
    table = []
    for option in options:
        speedups = sorted(float(row["speedup"]) for row in rows if row["option"] == option and not row["error"])
        if not speedups:
            continue
        mid = len(speedups) // 2
        median = speedups[mid] if len(speedups) % 2 else (speedups[mid - 1] + speedups[mid]) / 2
        table.append([option, str(len(speedups)), f"{median:.3f}x", f"{speedups[0]:.3f}x", f"{speedups[-1]:.3f}x"])
    _render.table(f"Sweep {grid.name}: speedup over the baseline ({summary['points']} points)",
                  ["option", "points", "median", "min", "max"], table)
    failed = {}
    for row in rows:
        if row["error"]:
            failed.setdefault(", ".join(f"{name}={row[name]}" for name in grid.axes), row["error"])
    for point, error in failed.items():
        print(f"failed: {point}: {error}")
    print(f"table: {summary['out']}")
    if plot:
        print(f"plot: {plot}")
