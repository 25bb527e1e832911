"""Step fidelity, measured against predicted, on a run of `benchmarks/gpu_step_fidelity.sh` (no GPU needed).

    python benchmarks/eval_step_fidelity.py RUN_DIR [--out RESULT.json] [--topologies DIR]

1. Refits each transport's calibrated topology from its raw JSON (`lshsim calibrate --source
   microbenchmarks RAW`: the bus bandwidth curve, the phase model; the shared-memory and socket
   calibrations take their compute parts from the NVLink one, `--phase-base`), into --topologies
   (default RUN_DIR/topologies).
2. The held-out all-to-all cases (a2a-TRANSPORT.json): every case in the three timing conventions
   (`bench_a2a_conventions.py evaluate`).
3. The held-out layer traces (traces-TRANSPORT-xW/): `lshsim validate` per trace, every phase and
   the whole layer (forward, backward, total), against the topology of the trace's transport.
4. The LSH-MoE layer speedup: for each pair (ho-pN-...-nolsh, ho-pN-...-lsh-*) on each transport,
   measured layer total (as run) of the uncompressed over the compressed, against the same ratio
   of the predictions.

Prints a table per part and the targets last; --out writes everything as JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TRANSPORTS = ("nvlink", "shm", "socket")


def refit(run: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    tops = {}
    for transport in TRANSPORTS:
        raw = run / f"cal-{transport}-raw.json"
        if not raw.exists():
            continue
        target = out / f"h200-x2-{transport}.yaml"
        command = [sys.executable, "-m", "lshsim.cli", "calibrate", "--quiet", "--source", "microbenchmarks", str(raw),
                   "--name", f"h200-x2-{transport}-calibrated", "--out", str(target)]
        bases = [run / "cal-nvlink-raw.json"] if transport != "nvlink" else []
        bases += [path for path in [run / "cal-x1-raw.json"] if path.exists()]
        if bases:
            command += ["--phase-base", *map(str, bases)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        tops[transport] = target
        harness = run / f"cal-{transport}-torchrun-raw.json"
        if harness.exists():
            records = json.loads(harness.read_text())["results"]["phases"]["a2a"]
            tops[f"{transport}-torchrun"] = with_conventions(target, records, out / f"h200-x2-{transport}-torchrun.yaml",
                                                             "torchrun")
        measured = run / f"a2a-{transport}.json"
        if measured.exists() and json.loads(measured.read_text()).get("session_calibration"):
            records = json.loads(measured.read_text())["session_calibration"]
            tops[f"{transport}-session"] = with_conventions(target, records, out / f"h200-x2-{transport}-session.yaml",
                                                            "session")
    return tops


def with_conventions(topology: Path, records: list, target: Path, label: str) -> Path:
    """`topology` with the timing-convention excess curves fitted on other calibration records of
    the same transport (timed under torchrun, or in the very session of the cases): the host's
    launch cost depends on the process and the moment, the device time does not."""
    import yaml

    from lshsim.calibration.phase_model import fit_conventions
    from lshsim.topology import write_topology_yaml

    spec = yaml.safe_load(topology.read_text())
    fitted = fit_conventions(records)
    block = spec["calibration"]["phase_model"]
    block["a2a_excess_s"] = {key: fitted[key] for key in ("as_run", "back_to_back")}
    spec["name"] = f"{spec['name']}-{label}"
    write_topology_yaml(spec, target)
    return target


def _stats(values) -> dict:
    values = np.abs(np.asarray(values, dtype=float))
    if values.size == 0:
        return {"n": 0, "median": None, "worst": None}
    return {"n": int(values.size), "median": float(np.median(values)), "worst": float(values.max())}


def a2a_part(run: Path, tops: dict) -> dict:
    out = {}
    for transport, topology in tops.items():
        measured = run / f"a2a-{transport.split('-')[0]}.json"
        if not measured.exists():
            continue
        text = subprocess.run([sys.executable, "benchmarks/bench_a2a_conventions.py", "evaluate", str(measured),
                               "--topology", str(topology), "--json"], check=True, capture_output=True, text=True).stdout
        out[transport] = json.loads(text)
    return out


def trace_part(run: Path, tops: dict) -> dict:
    from lshsim.sim.validate import validate_trace_file

    out = {}
    for folder in sorted(run.glob("traces-*")):
        transport = folder.name.split("-")[1]
        if transport not in TRANSPORTS:   # traces-x1: one GPU, no transport; its topology is NVLink's
            transport = "nvlink"
        for path in sorted(folder.glob("*.json")):
            v = validate_trace_file(path, tops[transport])
            out[f"{folder.name}/{path.stem}"] = v.to_dict()
    return out


def speedups(traces: dict) -> list[dict]:
    rows = []
    for key, v in traces.items():
        folder, name = key.split("/")
        if "-lsh-" not in name:
            continue
        base = f"{folder}/{name.split('-lsh-')[0]}-nolsh"
        if base not in traces:
            continue

        def total(d):
            row = next((r for r in d["rows"] if r["phase"] == "layer" and r["direction"] == "total"), None)
            return None if row is None else (row["measured_s"], row["predicted_s"])

        a, b = total(traces[base]), total(v)
        if a is None or b is None or a[1] is None or b[1] is None:
            continue
        measured, predicted = a[0] / b[0], a[1] / b[1]
        rows.append({"pair": key, "measured_speedup": measured, "predicted_speedup": predicted,
                     "rel_error": (predicted - measured) / measured})
    return rows


def layer_leave_one_out(run: Path, nvlink_topology: Path) -> list[dict]:
    """Leave-one-out over the calibration layers (NVLink on 2 GPUs, and one GPU): each layer's
    whole-layer time (forward + backward, as run) predicted by a phase model fitted without it."""
    import yaml

    from lshsim.calibration.phase_model import fit_phase_model
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.sim.trace import Trace
    from lshsim.sim.validate import validate_trace
    from lshsim.topology import build_topology, write_topology_yaml

    results = json.loads((run / "cal-nvlink-raw.json").read_text())["results"]["phases"]
    x1_path = run / "cal-x1-raw.json"
    x1 = json.loads(x1_path.read_text())["results"]["phases"]["layers"] if x1_path.exists() else []
    spec = yaml.safe_load(nvlink_topology.read_text())
    G = build_topology(spec, source=str(nvlink_topology))

    def small_a2a_s(traffic):
        return float(simulate_all_to_all(G, traffic).time_s)

    layers = [(r, "x2") for r in results["layers"]] + [(r, "x1") for r in x1]
    out = []
    for i, (record, where) in enumerate(layers):
        rest_x2 = [r for j, (r, w) in enumerate(layers) if j != i and w == "x2"]
        rest_x1 = [r for j, (r, w) in enumerate(layers) if j != i and w == "x1"]
        model = fit_phase_model({**results, "layers": rest_x2}, small_a2a_s=small_a2a_s,
                                base={"expert": None, "layers": rest_x1})
        loo_spec = json.loads(json.dumps(spec))
        loo_spec["calibration"]["phase_model"] = model.to_block()
        meta = {"source": "measured", "workload": record["workload"], "cluster": {"gpu": "NVIDIA H200"},
                "provenance": {"gpu": "NVIDIA H200", "count": int(record["workload"]["world_size"]),
                               "torch": None, "nccl": None, "date": None, "nccl_env": {},
                               "command": "calibration layer (leave-one-out)"},
                "measured": {key: record[key] for key in ("phases_s", "traffic_bytes", "combine_traffic_bytes",
                                                          "bytes_per_token", "rows_per_expert", "layer_s")}}
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "leave-one-out.yaml"
            write_topology_yaml(loo_spec, path)
            validation = validate_trace(Trace(phases=[], meta=meta), path)
        row = next(r for r in validation.rows if r.phase == "layer" and r.direction == "total")
        out.append({"layer": record["workload"]["name"], "gpus": where, "measured_s": row.measured_s,
                    "predicted_s": row.predicted_s, "rel_error": row.rel_error})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--topologies", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--loo", action="store_true",
                        help="also the whole-layer leave-one-out over the calibration layers")
    args = parser.parse_args(argv)
    run = Path(args.run)
    tops = refit(run, Path(args.topologies) if args.topologies else run / "topologies")
    a2a = a2a_part(run, tops)
    traces = trace_part(run, tops)
    pairs = speedups(traces)
    summary: dict = {"a2a": {}, "phases": {}, "layer": {}, "speedup": {}}
    print("all-to-all, held-out cases, |relative error| by convention:")
    for transport, data in a2a.items():
        for convention, s in data["summary"].items():
            summary["a2a"][f"{transport}/{convention}"] = {"n": s["cases"], "median": s["median_abs_rel_error"],
                                                           "worst": s["max_abs_rel_error"]}
            print(f"  {transport:7s} {convention:13s} {s['cases']:3d} cases  median {100 * s['median_abs_rel_error']:5.1f}%  "
                  f"worst {100 * s['max_abs_rel_error']:6.1f}%")
    print("layer traces, |relative error| by phase (all transports):")
    by_phase: dict = {}
    for key, v in traces.items():
        for row in v["rows"]:
            if row["rel_error"] is not None:
                by_phase.setdefault(f"{row['phase']}/{row['direction']}", []).append(row["rel_error"])
    for key in sorted(by_phase):
        s = _stats(by_phase[key])
        summary["phases"][key] = s
        print(f"  {key:24s} {s['n']:3d}  median {100 * s['median']:5.1f}%  worst {100 * s['worst']:6.1f}%")
    print("whole layer (forward + backward, as run), per trace:")
    layer_errors = []
    for key, v in traces.items():
        row = next((r for r in v["rows"] if r["phase"] == "layer" and r["direction"] == "total"), None)
        if row is None or row["rel_error"] is None:
            continue
        layer_errors.append(row["rel_error"])
        print(f"  {key:48s} measured {row['measured_s'] * 1e3:8.3f} ms  predicted {row['predicted_s'] * 1e3:8.3f} ms  "
              f"{100 * row['rel_error']:+6.1f}%")
    summary["layer"] = _stats(layer_errors)
    print("LSH-MoE layer speedup (uncompressed / compressed, as run):")
    for row in pairs:
        print(f"  {row['pair']:48s} measured {row['measured_speedup']:6.3f}x  predicted {row['predicted_speedup']:6.3f}x  "
              f"{100 * row['rel_error']:+6.1f}%")
    summary["speedup"] = _stats([r["rel_error"] for r in pairs])
    print("targets:")
    worst_a2a = max((s["worst"] for s in summary["a2a"].values()), default=None)
    med_a2a = max((s["median"] for s in summary["a2a"].values()), default=None)
    if worst_a2a is not None:
        print(f"  all-to-all (every transport and convention): largest median {100 * med_a2a:.1f}% (target <= 5%), "
              f"worst {100 * worst_a2a:.1f}% (target <= 15%)")
    if summary["layer"]["n"]:
        print(f"  whole layer: {summary['layer']['n']} traces, median {100 * summary['layer']['median']:.1f}% "
              f"(target <= 10%), worst {100 * summary['layer']['worst']:.1f}% (target <= 20%)")
    if summary["speedup"]["n"]:
        print(f"  LSH-MoE speedup: {summary['speedup']['n']} pairs, worst {100 * summary['speedup']['worst']:.1f}% "
              f"(target <= 10%)")
    loo = []
    if args.loo and "nvlink" in tops:
        loo = layer_leave_one_out(run, tops["nvlink"])
        summary["layer_leave_one_out"] = _stats([r["rel_error"] for r in loo])
        s = summary["layer_leave_one_out"]
        print(f"  calibration layers, leave-one-out: {s['n']} layers, median {100 * s['median']:.1f}%, "
              f"worst {100 * s['worst']:.1f}%")
    if args.out:
        Path(args.out).write_text(json.dumps({"run": str(run), "a2a": a2a, "traces": traces, "speedups": pairs,
                                              "layer_leave_one_out": loo,
                                              "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
