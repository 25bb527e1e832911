"""NCCL's per-peer channel term (`lshsim.sim.nccl`) against the committed 4-GPU data, before and after.

Every prediction is the simulator's direct all-to-all (`simulate_all_to_all`) on a calibrated
topology; errors are (predicted - measured) / measured.

    python benchmarks/eval_channel_term.py sweeps  --topology NAME=YAML ... [--json OUT]
    python benchmarks/eval_channel_term.py heldout --topology NAME=YAML ... [--json OUT]
    python benchmarks/eval_channel_term.py loo     [--json OUT]
    python benchmarks/eval_channel_term.py fresh   MEASURED.json --topology NAME=YAML ...

sweeps:  the bare all_to_all_single chunk sweeps of 4 H200 (benchmarks/a2a_chunk_sweep.py:
         data/measured/h200/run-{d,e}/chunk-sweep-x4.json, nccl-env/chunk-sweep-default.json; with
         NCCL_P2P_NVL_CHUNKSIZE=262144 nccl-env/chunk-sweep-chunk256k.json, predicted by the
         topologies whose name ends in "-256k"), every case, and the equal 128 / 256 MiB chunks
         and the cases whose chunks straddle a threshold on their own.
heldout: the four all-to-alls of the 14 held-out workloads of run-g (4 GPUs; `--run` for another).
loo:     leave-one-out over run-g's calibration workloads, the two threshold workloads
         (cal-uniform-d6144-t21845, t43690) left out of the set: each workload in turn is left out,
         the calibration refitted on the rest (`fit_calibration`, as `lshsim calibrate
         --from-traces ... --from-raw` does), with and without the channel term, and its four
         all-to-alls predicted.
fresh:   a `bench_a2a_conventions.py measure` output (device convention) of a held-out case file,
         e.g. data/heldout/nccl-channels/a2a-cases-x4-channels.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ["data/measured/h200/run-d/chunk-sweep-x4.json", "data/measured/h200/run-e/chunk-sweep-x4.json",
          "data/measured/h200/nccl-env/chunk-sweep-default.json"]
SWEEPS_256K = ["data/measured/h200/nccl-env/chunk-sweep-chunk256k.json"]
THRESHOLD_WORKLOADS = ("cal-uniform-d6144-t21845", "cal-uniform-d6144-t43690")


def _topologies(items) -> dict:
    from lshsim.topology import load_topology

    out = {}
    for item in items:
        name, _, path = item.partition("=")
        out[name] = load_topology(path)
    return out


def _summary(errors) -> dict:
    e = np.abs(np.asarray(errors, dtype=float))
    return {"cases": int(e.size), "median_abs": float(np.median(e)), "worst_abs": float(e.max())}


def _straddles(traffic, config) -> bool:
    from lshsim.sim.nccl import p2p_channels

    world = traffic.shape[0]
    counts = {p2p_channels(x, world, config) for x in traffic[~np.eye(world, dtype=bool)].ravel() if x > 0}
    return len(counts) > 1


def sweeps(args) -> dict:
    from lshsim.calibration.model import LinkModels
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.sim.nccl import NcclP2pConfig

    tops = _topologies(args.topology)
    rows = []
    for files, chunk in ((SWEEPS, 524288), (SWEEPS_256K, 262144)):
        config = NcclP2pConfig(chunk_bytes=chunk)
        names = [n for n in tops if n.endswith("-256k") == (chunk == 262144)]
        for path in files:
            results = json.loads((ROOT / path).read_text())["results"]
            for case, record in results.items():
                traffic = np.asarray(record["traffic_bytes"], dtype=float)
                row = {"file": path, "case": case, "measured_s": record["time_s"],
                       "straddles": _straddles(traffic, config), "errors": {}, "ratio": None}
                for name in names:
                    G = tops[name]
                    result = simulate_all_to_all(G, traffic)
                    row["errors"][name] = (result.time_s - record["time_s"]) / record["time_s"]
                    if "a2a_channel_ratio" in result.options:
                        row["ratio"] = result.options["a2a_channel_ratio"]
                rows.append(row)
    groups = {"all": lambda r: True, "straddling": lambda r: r["straddles"],
              "equal 128 / 256 MiB": lambda r: r["case"] in ("equal/128.0MiB", "equal/256.0MiB")}
    summary = {}
    for group, keep in groups.items():
        for name in tops:
            errs = [r["errors"][name] for r in rows if keep(r) and name in r["errors"]]
            if errs:
                summary[f"{group} | {name}"] = _summary(errs)
    if not args.json:
        names = list(tops)
        print("case".ljust(58) + "".join(n[:18].rjust(19) for n in names) + "   ratio")
        for r in rows:
            if r["straddles"] or r["case"] in ("equal/128.0MiB", "equal/256.0MiB"):
                print((r["file"].split("/")[-2] + "/" + r["case"]).ljust(58)
                      + "".join((f"{100 * r['errors'][n]:+.1f}%" if n in r["errors"] else "-").rjust(19) for n in names)
                      + (f"   {r['ratio']:.3f}" if r["ratio"] is not None else ""))
        for key, s in summary.items():
            print(f"  {key:60s} {s['cases']:3d} cases  median {100 * s['median_abs']:.1f}%  worst {100 * s['worst_abs']:.1f}%")
    return {"rows": rows, "summary": summary}


def _phases(paths):
    from lshsim.calibration.sources import trace_a2a_phases, trace_algorithm

    out = []
    for path in paths:
        meta = json.loads(Path(path).read_text())["meta"]
        for phase in trace_a2a_phases(meta):
            if phase.measured_s:
                out.append((Path(path).stem, f"{phase.phase} {phase.direction}", phase.traffic, phase.measured_s,
                            trace_algorithm(meta)))
    return out


def heldout(args) -> dict:
    from lshsim.sim.collectives import simulate_all_to_all

    tops = _topologies(args.topology)
    phases = _phases(sorted(glob.glob(str(ROOT / f"data/measured/h200/{args.run}/x4/*.json"))))
    rows = []
    for workload, phase, traffic, measured, algorithm in phases:
        errors = {name: (simulate_all_to_all(G, traffic, algorithm).time_s - measured) / measured
                  for name, G in tops.items()}
        rows.append({"workload": workload, "phase": phase, "measured_s": measured, "errors": errors})
    summary = {name: _summary([r["errors"][name] for r in rows]) for name in tops}
    if not args.json:
        print("workload / phase".ljust(52) + "".join(n[:18].rjust(19) for n in tops))
        for r in rows:
            if max(abs(v) for v in r["errors"].values()) > 0.05:
                print(f"{r['workload']} {r['phase']}".ljust(52)
                      + "".join(f"{100 * r['errors'][n]:+.1f}%".rjust(19) for n in tops))
        for name, s in summary.items():
            print(f"  {name:30s} {s['cases']} phases  median {100 * s['median_abs']:.1f}%  worst {100 * s['worst_abs']:.1f}%")
    return {"rows": rows, "summary": summary}


def loo(args) -> dict:
    from lshsim.calibration import fit_calibration, merge_inputs, read_microbenchmarks, read_traces
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.topology import build_topology

    run = ROOT / f"data/measured/h200/{args.run}"
    files = sorted(p for p in glob.glob(str(run / "cal-x4/*.json")) if Path(p).stem not in THRESHOLD_WORKLOADS)
    base = read_microbenchmarks([str(run / "calibration-x4.json")])
    rows = []
    for left in files:
        rest = [p for p in files if p != left]
        inp = merge_inputs(base, read_traces(rest))
        tops = {}
        for name, channels in (("no term", False), ("channel term", True)):
            fit = fit_calibration(inp, channels=channels)
            tops[name] = build_topology(fit.topology_spec(f"loo-{name.replace(' ', '-')}", {}), source="<loo>")
        for workload, phase, traffic, measured, algorithm in _phases([left]):
            errors = {name: (simulate_all_to_all(G, traffic, algorithm).time_s - measured) / measured
                      for name, G in tops.items()}
            rows.append({"workload": workload, "phase": phase, "errors": errors})
            print(f"{workload:32s} {phase:22s} " + "  ".join(f"{n} {100 * e:+.1f}%" for n, e in errors.items()),
                  file=sys.stderr, flush=True)
    summary = {}
    for name in ("no term", "channel term"):
        summary[name] = _summary([r["errors"][name] for r in rows])
        for group in ("uniform", "skewed"):
            summary[f"{name} | {group}"] = _summary([r["errors"][name] for r in rows if f"-{group}-" in r["workload"]])
    if not args.json:
        for key, s in summary.items():
            print(f"  {key:26s} {s['cases']} phases  median {100 * s['median_abs']:.1f}%  worst {100 * s['worst_abs']:.1f}%")
    return {"rows": rows, "summary": summary, "left_out_of_the_set": list(THRESHOLD_WORKLOADS)}


def fresh(args) -> dict:
    from lshsim.sim.collectives import simulate_all_to_all

    tops = _topologies(args.topology)
    data = json.loads(Path(args.measured).read_text())
    rows = []
    for record in data["records"]:
        traffic = np.asarray(record["rows"], dtype=float)
        rows.append({"name": record["name"], "measured_s": record["device"],
                     "errors": {n: (simulate_all_to_all(G, traffic).time_s - record["device"]) / record["device"]
                                for n, G in tops.items()}})
    summary = {name: _summary([r["errors"][name] for r in rows]) for name in tops}
    if not args.json:
        for r in rows:
            print(f"{r['name']:36s} {r['measured_s'] * 1e3:8.3f} ms " +
                  "  ".join(f"{n} {100 * e:+.1f}%" for n, e in r["errors"].items()))
        for name, s in summary.items():
            print(f"  {name:30s} {s['cases']} cases  median {100 * s['median_abs']:.1f}%  worst {100 * s['worst_abs']:.1f}%")
    return {"rows": rows, "summary": summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sweeps", "heldout", "loo", "fresh"):
        p = sub.add_parser(name)
        if name == "fresh":
            p.add_argument("measured")
        if name != "loo":
            p.add_argument("--topology", nargs="+", required=True, metavar="NAME=YAML")
        p.add_argument("--run", default="run-g")
        p.add_argument("--json", default=None, help="also write the rows and the summary to this JSON file")
    args = parser.parse_args(argv)
    out = {"sweeps": sweeps, "heldout": heldout, "loo": loo, "fresh": fresh}[args.command](args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float) + "\n")
        for key, s in out["summary"].items():
            print(f"  {key:60s} {s['cases']:3d}  median {100 * s['median_abs']:.1f}%  worst {100 * s['worst_abs']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
