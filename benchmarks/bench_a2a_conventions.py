"""All-to-alls in both timing conventions: measured on GPUs, predicted by a calibrated topology.

Measure (on the device machine, one process per GPU):

    torchrun --nproc_per_node 2 benchmarks/bench_a2a_conventions.py measure CASES.json OUT.json [--max-bytes 1GiB]

--session-calibration first measures the calibration sizes in the same process (records
"session_calibration"), so that the host's launch cost of the session that is timed can be
calibrated apart from the cases.

CASES.json: {"world_size": W, "equal": [{"bytes_per_rank": M, "chunk_pad": p}], "matrices": [{"name",
"rows": (W, W) bytes}]}; an equal case sends M / W + p bytes to every rank (p = 0: whole 4 KiB rows;
p not a multiple of 16: unaligned chunks). Every case is timed in the three conventions of
`lshsim.executor.phase_bench.time_conventions` (device, as-run, back-to-back); cases above
--max-bytes per rank are skipped (slow transports). OUT.json keeps the records and the provenance
(GPU, torch, NCCL, its environment, the command).

Evaluate (anywhere, no GPU):

    python benchmarks/bench_a2a_conventions.py evaluate OUT.json --topology CALIBRATED.yaml [--json]

predicts every case in every convention (`lshsim.calibration.phase_model.PhaseModel.a2a_s` on the
flow-level device time) and prints the relative errors, per convention and overall (median, worst).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _cases_matrices(cases: dict, world: int, max_bytes: int) -> list[dict]:
    if int(cases["world_size"]) != world:
        raise ValueError(f"the cases are for {cases['world_size']} ranks; this run has {world}")
    out = []
    for case in cases.get("equal", []):
        size, pad = int(case["bytes_per_rank"]), int(case.get("chunk_pad", 0))
        chunk = size // world + pad
        out.append({"name": f"equal-{size}" + (f"+{pad}" if pad else ""), "rows": [[chunk] * world] * world})
    out.extend({"name": m["name"], "rows": m["rows"]} for m in cases.get("matrices", []))
    return [m for m in out if max(sum(row) for row in m["rows"]) <= max_bytes]


def measure(args) -> int:
    import torch
    import torch.distributed as dist

    from lshsim.executor.phase_bench import measure_a2a_conventions
    from lshsim.executor.runtime import init_runtime, provenance, shutdown
    from lshsim.units import parse_bytes

    cases = json.loads(Path(args.cases).read_text())
    runtime = init_runtime("auto", 600.0)
    try:
        max_bytes = parse_bytes(args.max_bytes)
        matrices = _cases_matrices(cases, runtime.world_size, max_bytes)
        session = []
        if args.session_calibration:   # the calibration sizes, in this process, before the cases
            from lshsim.executor.calibrate import sweep_sizes

            session = measure_a2a_conventions(runtime.device, sweep_sizes(65536, int(max_bytes), runtime.world_size,
                                                                          2, 0.5),
                                              iterations=args.iterations, warmup=args.warmup)
        records = measure_a2a_conventions(runtime.device, [], unaligned=False, matrices=matrices,
                                          iterations=args.iterations, warmup=args.warmup)
    finally:
        prov = provenance(runtime, ["benchmarks/bench_a2a_conventions.py", *sys.argv[1:]])
        shutdown()
    if runtime.rank == 0:
        for record in records:
            record.pop("splits", None)
            record["rows"] = next(m["rows"] for m in matrices if m["name"] == record["name"])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        for record in session:
            record.pop("splits", None)
        Path(args.out).write_text(json.dumps({"cases": args.cases, "records": records, "session_calibration": session,
                                              "provenance": prov}, indent=1) + "\n")
        for r in records:
            print(f"{r['name']:>28s} device {r['device'] * 1e6:10.1f} us  as-run {r['as_run'] * 1e6:10.1f} us  "
                  f"back-to-back {r['back_to_back'] * 1e6:10.1f} us")
    return 0


def evaluate(args) -> int:
    from lshsim.calibration.phase_model import CONVENTIONS, transport_of_env
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.sim.validate import topology_for_trace

    data = json.loads(Path(args.measured).read_text())
    records = data["records"]
    world = int(records[0]["world_size"])
    G = topology_for_trace(args.topology, world)
    pm = G.graph.get("phase_model")
    if pm is None:
        raise SystemExit(f"{args.topology}: no calibration.phase_model (calibrate with --phases)")
    transport = transport_of_env(data["provenance"].get("nccl_env"))
    if transport != pm.transport:
        raise SystemExit(f"{args.measured} ran over {transport}, {args.topology} was calibrated over {pm.transport}")
    rows, errors = [], {c: [] for c in CONVENTIONS}
    for record in records:
        matrix = np.asarray(record["rows"], dtype=float)
        device_s = float(simulate_all_to_all(G, matrix).time_s)
        row = {"name": record["name"], "aligned": record["aligned"], "bytes_per_rank": record["bytes_per_rank"]}
        for convention in CONVENTIONS:
            predicted = pm.a2a_s(device_s, matrix, convention)
            low, high = pm.a2a_interval_s(device_s, matrix, convention)
            error = (predicted - record[convention]) / record[convention]
            row[convention] = {"measured_s": record[convention], "predicted_s": predicted, "rel_error": error,
                               "interval_s": [low, high], "inside": bool(low <= record[convention] <= high)}
            errors[convention].append(error)
        rows.append(row)
    summary = {}
    for convention, values in errors.items():
        values = np.abs(values)
        inside = [row[convention]["inside"] for row in rows]
        summary[convention] = {"cases": int(values.size), "median_abs_rel_error": float(np.median(values)),
                               "max_abs_rel_error": float(values.max()),
                               "inside_interval": float(np.mean(inside)) if convention != "device" else None}
    every = np.abs(np.concatenate([np.asarray(v) for v in errors.values()]))
    summary["all"] = {"cases": int(every.size), "median_abs_rel_error": float(np.median(every)),
                      "max_abs_rel_error": float(every.max())}
    if args.json:
        print(json.dumps({"measured": args.measured, "topology": str(args.topology), "transport": transport,
                          "rows": rows, "summary": summary}, indent=1))
        return 0
    print(f"{args.measured} on {args.topology} ({transport}):")
    for row in rows:
        print(f"  {row['name']:>28s} " + "  ".join(
            f"{c} {row[c]['measured_s'] * 1e6:9.1f}/{row[c]['predicted_s'] * 1e6:9.1f} us {100 * row[c]['rel_error']:+6.1f}%"
            for c in CONVENTIONS))
    for key, s in summary.items():
        inside = "" if s.get("inside_interval") is None else \
            f", {100 * s['inside_interval']:.0f}% inside the calibration's 10-90% band"
        print(f"  {key:>12s}: {s['cases']} cases, median |error| {100 * s['median_abs_rel_error']:.1f}%, "
              f"worst {100 * s['max_abs_rel_error']:.1f}%{inside}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("cases")
    m.add_argument("out")
    m.add_argument("--max-bytes", default="2GiB")
    m.add_argument("--iterations", type=int, default=7)
    m.add_argument("--warmup", type=int, default=2)
    m.add_argument("--session-calibration", action="store_true",
                   help="first measure the calibration sizes (2^(k+1/4), 2^(k+3/4), aligned and +2-byte chunks) "
                        "in this process: the timing conventions' excess calibrated in the session that is timed")
    e = sub.add_parser("evaluate")
    e.add_argument("measured")
    e.add_argument("--topology", required=True)
    e.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return measure(args) if args.command == "measure" else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
