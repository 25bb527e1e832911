"""`lshsim sweep` on its engines: one grid run whole by each engine configuration, in one run.

    .venv/bin/python benchmarks/bench_sweep.py [--grid data/sweeps/nic-vs-size.yaml] [--repeats 1]
        [--configs "jobs 0" "jobs 1" "jobs 2" "dask 2"]

Each configuration is a `python -m lshsim.cli sweep GRID --out TMP.csv` subprocess, timed whole
(interpreter start, worker start-up and the table included), into a fresh table each time:
`jobs N` is the local engine with N worker processes (0: in the command's own process), `dask N` is
`--engine dask --jobs N`, a local Dask cluster of N worker processes that the command starts.
The configurations run in turn, `--repeats` rounds. Prints a Markdown table: wall time (median over
the rounds), its ratio to the first configuration's, the points' own simulation time summed
(`point_wall_s`: the work, whoever did it) and whether the table equals the first configuration's
(every column but the wall times and the worker names).
"""
from __future__ import annotations

import argparse
import csv
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN_COLUMNS = ("wall_s", "point_wall_s", "worker")


def command(grid: str, out: pathlib.Path, config: str) -> list[str]:
    kind, count = config.split()
    base = [sys.executable, "-m", "lshsim.cli", "sweep", grid, "--out", str(out), "--quiet", "--json"]
    if kind == "jobs":
        return [*base, "--jobs", count]
    if kind == "dask":
        return [*base, "--engine", "dask", "--jobs", count]
    raise SystemExit(f"--configs: {config!r} is not 'jobs N' or 'dask N'")


def rows(path: pathlib.Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def stable(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in RUN_COLUMNS} for row in table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="data/sweeps/nic-vs-size.yaml")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=["jobs 1", "jobs 2", "dask 2"])
    args = parser.parse_args()
    times: dict[str, list[float]] = {config: [] for config in args.configs}
    work: dict[str, list[float]] = {config: [] for config in args.configs}
    same: dict[str, bool] = {}
    reference = None
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeats):
            for i, config in enumerate(args.configs):
                out = pathlib.Path(folder) / f"{i}-{round_}.csv"
                started = time.perf_counter()
                result = subprocess.run(command(args.grid, out, config), cwd=ROOT, capture_output=True, text=True)
                elapsed = time.perf_counter() - started
                if result.returncode != 0:
                    raise SystemExit(f"{config}: exit {result.returncode}: {result.stderr.strip()[-2000:]}")
                table = rows(out)
                times[config].append(elapsed)
                # point_wall_s repeats on every row of a point: count it once, on the baseline row
                work[config].append(sum(float(r["point_wall_s"]) for r in table if r["option"] == "baseline"))
                if reference is None:
                    reference = stable(table)
                same[config] = same.get(config, True) and stable(table) == reference
                print(f"round {round_ + 1} {config}: {elapsed:.1f} s, {len(table)} rows", file=sys.stderr)
    points = len(reference) // max(1, len({r["option"] for r in reference}))
    first = statistics.median(times[args.configs[0]])
    print(f"grid {args.grid}: {points} points, {len(reference)} rows; {args.repeats} round(s)\n")
    print("| engine | wall s (median) | vs first | points' own time summed, s | table equal to the first |")
    print("|---|---|---|---|---|")
    for config in args.configs:
        wall = statistics.median(times[config])
        print(f"| {config} | {wall:.1f} | {wall / first:.2f} | {statistics.median(work[config]):.1f} | "
              f"{'yes' if same[config] else 'NO'} |")


if __name__ == "__main__":
    main()
