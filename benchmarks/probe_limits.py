"""Feed every numeric command-line option and input-file field its extreme values and record the outcome.

    PYTHONPATH=. python benchmarks/probe_limits.py [--only PREFIX] [--timeout-s 20] [--json FILE]

Each probe is a well-typed but absurd value (-1, 0 where a positive value is required, 1e12, 1e30, NaN,
inf) of one option of `lshsim plan | simulate | sweep | reproduce | breakeven | run | calibrate | check |
launch`, or of one field of a sweep grid (every `StepConfig` field and the topology axes), a figures
file's `setting` (`StepConfig` fields again) or an executor workload (its router and LSH fields too).
An option runs as its own `python -m lshsim.cli` process in a fresh temporary folder with a wall-clock
limit; a file field is read by its loader in this process (`load_grid`, `load_figures`, `load_workload`:
what the commands call first). Outcomes:

    refused    exit 2 (a loader: ValueError), one line, no traceback, the option or field named
    vague      refused, but the line does not name the option or field
    traceback  a traceback, or an exit code other than 0 and 2
    accepted   exit 0 (a loader: no error): the absurd value went through
    slow       still running after --timeout-s (killed)

The counts per outcome are printed at the end (benchmarks/HISTORY.md, "bounds3").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NCCL_LOG = str(ROOT / "tests" / "data" / "nccl_tests_alltoall_perf.txt")
WORKLOAD = str(ROOT / "data" / "workloads" / "cal-uniform-d2048-t128.yaml")

#: the absurd values, as typed on a command line
ABSURD = ("-1", "0", "1e12", "1e30", "nan", "inf")
#: the same in YAML
YAML_VALUE = {"-1": "-1", "0": "0", "1e12": "1000000000000", "1e30": "1.0e+30", "nan": ".nan", "inf": ".inf"}

PLAN = ["plan", "--model", "mixtral-8x7b", "--cluster", "h200-nvswitch", "--tokens-per-gpu", "64", "--json"]
SIMULATE = ["simulate", "--topology", "dgx1-v100", "--traffic", "uniform:1MB", "--json", "--quiet"]
REPRODUCE = ["reproduce", "--paper", "locmoe", "--json", "--quiet"]
CALIBRATE = ["calibrate", "--nccl-tests", NCCL_LOG, "--world-size", "8", "--out", "o.yaml", "--quiet"]
RUN = ["run", "--workload", WORKLOAD, "--device", "cpu", "--out", "o.json", "--quiet"]

#: (label, base argv, option, values that are legitimate for it: not probed)
OPTIONS = [
    ("plan", PLAN + ["--fidelity", "estimate"], "--lsh-rate", ()),
    ("plan", PLAN + ["--fidelity", "estimate"], "--tokens-per-gpu", ()),
    ("plan", PLAN + ["--fidelity", "estimate"], "--capacity-factor", ("inf",)),     # inf: no limit, as 'none'
    ("plan", PLAN + ["--fidelity", "estimate"], "--locality-share", ("0",)),
    ("plan", PLAN + ["--fidelity", "estimate"], "--locality-bonus", ("0",)),
    ("plan", PLAN + ["--fidelity", "estimate"], "--seed", ("0",)),
    ("plan", PLAN + ["--fidelity", "estimate"], "--max-routed-tokens", ()),
    ("plan", PLAN + ["--fidelity", "estimate"], "--ep", ()),
    ("plan", PLAN + ["--fidelity", "estimate"], "--tp", ()),
    ("plan", PLAN, "--drain-tolerance", ()),
    ("simulate", SIMULATE + ["--algorithm", "hierarchical"], "--chunks", ()),
    ("simulate", SIMULATE, "--alpha-s", ("0",)),
    ("simulate", SIMULATE, "--message-gap-s", ("0",)),
    ("simulate", SIMULATE, "--drain-tolerance", ("0",)),
    ("simulate", SIMULATE, "--top-links", ()),
    ("simulate", SIMULATE[:3] + SIMULATE[5:], "--traffic", ("0",)),    # uniform:VALUE; 0 B: alpha only
    ("sweep", ["sweep", "{GRID}", "--out", "o.csv", "--quiet"], "--jobs", ("0",)),
    ("reproduce", REPRODUCE, "--drain-tolerance", ()),
    ("breakeven", ["breakeven", "--json"], "--tokens", ()),
    ("breakeven", ["breakeven", "--json"], "--d-model", ()),
    ("breakeven", ["breakeven", "--json"], "--k", ()),
    ("breakeven", ["breakeven", "--json"], "--world", ()),
    ("breakeven", ["breakeven", "--json"], "--bandwidth-GBps", ()),
    ("breakeven", ["breakeven", "--json"], "--hash-Mtps", ()),
    ("breakeven", ["breakeven", "--json"], "--restore-Mtps", ()),
    ("breakeven", ["breakeven", "--json"], "--bytes-per-element", ()),
    ("breakeven", ["breakeven", "--json"], "--expert-ms", ("0",)),
    ("breakeven", ["breakeven", "--json"], "--compression", ()),
    ("breakeven", ["breakeven", "--json"], "--tflops", ()),
    ("run", RUN, "--fault-rank", ("0",)),
    ("run", RUN, "--min-a2a-s", ("0",)),
    ("run", RUN, "--max-iterations", ()),
    ("run", RUN, "--max-wall-s", ()),
    ("run", RUN, "--collective-timeout-s", ()),
    ("run", RUN, "--threads", ("0",)),
    ("calibrate", CALIBRATE, "--min-bytes", ()),
    ("calibrate", CALIBRATE, "--max-bytes", ()),
    ("calibrate", CALIBRATE, "--steps-per-octave", ()),
    ("calibrate", CALIBRATE, "--iterations", ()),
    ("calibrate", CALIBRATE, "--warmup", ("0",)),
    ("calibrate", CALIBRATE, "--ffn-d-model", ()),
    ("calibrate", CALIBRATE, "--ffn-tokens", ()),
    ("calibrate", CALIBRATE[:3] + CALIBRATE[5:], "--world-size", ()),
    ("calibrate", CALIBRATE, "--threshold-window", ("0",)),
    ("calibrate", CALIBRATE, "--fit-min-bytes", ("0",)),
    ("check", ["check", "--device", "cpu", "--out", "o.json"], "--tolerance", ("0",)),
    ("check", ["check", "--device", "cpu", "--out", "o.json"], "--seeds", ("0",)),
    ("launch", ["launch", "--nproc", "1"], "--timeout-s", ()),
    ("launch", ["launch", "--nproc", "1"], "--stall-timeout-s", ()),
    ("launch", ["launch", "--nproc", "1"], "--startup-timeout-s", ()),
    ("launch", ["launch", "--nproc", "1"], "--heartbeat-timeout-s", ()),
    ("launch", ["launch"], "--nproc", ()),
]

GRID = """name: probe
grid:
  model: mixtral-8x7b
  cluster: h200-nvswitch
  fidelity: estimate
  tokens_per_gpu: 64
{extra}options: [baseline]
"""
#: grid axes (StepConfig fields and the topology axes): (field, legitimate values); a list field as [VALUE]
GRID_FIELDS = [
    ("tokens_per_gpu", ()), ("capacity_factor", ()), ("locality_bonus", ("0",)), ("seed", ("0",)),
    ("max_routed_tokens", ()), ("lsh_hashes", ()), ("lsh_dim", ()), ("kernel_launch_s", ("0",)), ("ep", ()),
    ("tp", ()), ("grad_bucket_bytes", ()), ("grad_bytes_per_element", ()), ("lsh_rate", ()),
    ("overlap_chunks", ()), ("nodes", ()), ("gpus_per_node", ()), ("nic_gbps", ()), ("nics_per_node", ()),
    ("oversubscription", ()), ("drain_tolerance", ()),
]
#: (router, option, legitimate values): router_options of a grid (StepConfig.router_options)
GRID_ROUTER_OPTIONS = [("node_limited", "max_nodes", ()), ("node_limited", "scores_per_node", ("0",))]

#: the shipped figures with one field added to the first figure's setting
FIGURES = ROOT / "data" / "papers" / "figures.yaml"
FIGURE_SETTING = "setting: {router: topk, capacity_factor: 1.0}"
FIGURE_FIELDS = [("lsh_rate", ()), ("capacity_factor", ()), ("locality_bonus", ("0",)), ("tokens_per_gpu", ()),
                 ("ep", ()), ("grad_bytes_per_element", ()), ("overlap_chunks", ()), ("tp", ()), ("top_k", ())]

#: workload fields: (dotted field, legitimate values)
WORKLOAD_FIELDS = [
    ("tokens_per_rank", ()), ("d_model", ()), ("d_ffn", ()), ("num_experts", ()), ("gpus_per_node", ()),
    ("world_size", ()), ("seed", ("0", "-1", "1e12")), ("input_clusters", ()), ("warmup", ("0",)), ("iterations", ()),
    ("skew", ("0",)), ("input_noise", ("0",)), ("router.k", ()), ("router.capacity_factor", ()),
    ("router.locality_bonus", ("0",)), ("lsh.num_hashes", ()), ("lsh.proj_dim", ()), ("lsh.rounds", ()),
    ("lsh.seed", ("0", "1e12")),
]


def _classify_process(proc_rc: int | None, err: str, name: str) -> str:
    if proc_rc is None:
        return "slow"
    if "Traceback" in err or proc_rc not in (0, 2):
        return "traceback"
    if proc_rc == 0:
        return "accepted"
    lines = [line for line in err.splitlines() if line.strip()]
    if len(lines) != 1:
        return "traceback"
    return "refused" if name.lstrip("-") in err else "vague"


def _run_option(label, base, option, value, timeout_s, grid_text):
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "g.yaml").write_text(grid_text)
        argv = [arg.replace("{GRID}", str(Path(tmp, "g.yaml"))) for arg in base]
        argv += ["--traffic", f"uniform:{value}"] if option == "--traffic" else [f"{option}={value}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "lshsim.cli", *argv], cwd=tmp, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            _, err = proc.communicate()
            rc = None
        wall = time.monotonic() - start
    outcome = _classify_process(rc, err, option)
    return outcome, wall, (err.strip().splitlines() or [""])[-1][:220]


def _loader(load, text: str, name: str, field: str):
    """(outcome, message) of `load(path)` on `text` written to a temporary file `name`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        path.write_text(text)
        try:
            load(path)
        except ValueError as error:
            message = str(error)
            return ("refused" if field.rsplit(".", 1)[-1] in message and "\n" not in message else "vague"), message
        except Exception as error:  # noqa: BLE001 - the probe's point is to record what escaped
            return "traceback", f"{type(error).__name__}: {error}"
        return "accepted", ""


def _workload_text(field: str, value: str) -> str:
    import yaml

    data = yaml.safe_load(Path(WORKLOAD).read_text())
    if field.startswith("lsh."):
        data["lsh"] = {}
    if field == "input_clusters":
        data["inputs"] = "synthetic"
    head, _, tail = field.partition(".")
    target = data[head] if tail else data
    target[tail or head] = yaml.safe_load(YAML_VALUE[value])
    if field == "lsh.rounds":
        data["lsh"]["rotation"] = "hadamard"
    return yaml.safe_dump(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="probe only the labels starting so (plan, grid, workload, ...)")
    parser.add_argument("--timeout-s", type=float, default=20.0)
    parser.add_argument("--json", default=None, help="write every probe's outcome to this file")
    args = parser.parse_args(argv)

    from lshsim.executor.workload import load_workload
    from lshsim.models import load_model
    from lshsim.reproduce import load_figures
    from lshsim.sweep import load_grid

    rows = []

    def record(label, name, value, outcome, wall, message):
        rows.append({"label": label, "name": name, "value": value, "outcome": outcome, "wall_s": round(wall, 2),
                     "message": message})
        print(f"{outcome:9s} {wall:6.1f} s  {label:10s} {name}={value}   {message[:160]}", flush=True)

    grid_text = GRID.format(extra="")
    for label, base, option, legit in OPTIONS:
        if not label.startswith(args.only):
            continue
        for value in ABSURD:
            if value in legit:
                continue
            record(label, option, value, *_run_option(label, base, option, value, args.timeout_s, grid_text))
    if "grid".startswith(args.only) or args.only.startswith("grid"):
        for field, legit in GRID_FIELDS:
            for value in ABSURD:
                if value in legit:
                    continue
                text = YAML_VALUE[value]
                text = f"[[{text}]]" if field == "overlap_chunks" else text     # one value: a list
                start = time.monotonic()
                outcome, message = _loader(lambda p: load_grid(p, resolve_model=load_model),
                                           GRID.format(extra=f"  {field}: {text}\n"), "g.yaml", field)
                record("grid", field, value, outcome, time.monotonic() - start, message)
        for router, option, legit in GRID_ROUTER_OPTIONS:
            for value in ABSURD:
                if value in legit:
                    continue
                extra = f"  router: {router}\n  router_options: {{{option}: {YAML_VALUE[value]}}}\n"
                start = time.monotonic()
                outcome, message = _loader(lambda p: load_grid(p, resolve_model=load_model),
                                           GRID.format(extra=extra), "g.yaml", option)
                record("grid", f"router_options.{option}", value, outcome, time.monotonic() - start, message)
    if "figures".startswith(args.only) or args.only.startswith("figures"):
        for field, legit in FIGURE_FIELDS:
            for value in ABSURD:
                if value in legit:
                    continue
                text = YAML_VALUE[value]
                text = f"[{text}]" if field == "overlap_chunks" else text
                start = time.monotonic()
                figure = FIGURES.read_text().replace(FIGURE_SETTING, FIGURE_SETTING[:-1] + f", {field}: {text}}}", 1)
                outcome, message = _loader(load_figures, figure, "f.yaml", field)
                record("figures", f"setting.{field}", value, outcome, time.monotonic() - start, message)
    if "workload".startswith(args.only) or args.only.startswith("workload"):
        for field, legit in WORKLOAD_FIELDS:
            for value in ABSURD:
                if value in legit:
                    continue
                start = time.monotonic()
                outcome, message = _loader(load_workload, _workload_text(field, value), "w.yaml", field)
                record("workload", field, value, outcome, time.monotonic() - start, message)

    counts = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    print(f"{len(rows)} probes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
