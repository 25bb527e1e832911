"""The planner's all-to-all (a shipped topology cut to a case's node count) against published nccl-tests rows and
DeepEP-style normal-kernel figures.

`lshsim plan` / `lshsim simulate` time an all-to-all on the topology the user names, with its own link rates and
start-ups (not the published-case model's fitted terms). This script takes the plain all-to-all rows of the
published case files whose name starts with PREFIX, builds TOPOLOGY with each row's node count, times nccl-tests'
even all-to-all of the row's size (`estimate_collective(..., "direct")`, the default local copy included) and prints
predicted against published bus bandwidth, the signed error, and the median / worst |error|, all rows and those below
32 MiB per rank. Which rows are held out is split.yaml's business: this script fits nothing.

Normal-kernel cases (kind `normal`: DeepEP-style dispatch / combine that sends a token once per destination node; added
in the eleventh session, before any run on fresh20) are timed as `lshsim plan --algorithm deepep` times a step's
dispatch and combine: the case's own routing (`lshsim.sim.published.case_traffic`, seed 0) as the node-deduplicated
all-to-all on the topology with its own rates and start-ups (`simulate_all_to_all(..., "node_dedup", node_bytes=...,
combine=...)`, the planner's defaults: no fitted kernel start-up, no NIC efficiency of the published-case fit), and
the predicted figure is the case's counted bytes over that time, under the case's own definition.

    python benchmarks/check_planner_a2a.py --prefix nccl-orcd-b200 --topology b200-ib-rail-8x8
    python benchmarks/check_planner_a2a.py --prefix rccl-amdkit --topology h100-ib-rail-8x8
    python benchmarks/check_planner_a2a.py --prefix deepep-v1-normal --topology h100-ib-rail-8x8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lshsim.sim import published as P  # noqa: E402
from lshsim.sim.collectives import (INTERNODE_KEYS, estimate_collective, simulate_all_to_all,  # noqa: E402
                                    uniform_traffic)
from lshsim.topology import build_topology  # noqa: E402
from lshsim.topology.spec import read_spec  # noqa: E402


def _cut(spec: dict, nodes: int) -> dict:
    """`spec` with `nodes` nodes; one node keeps no start-up across nodes (a one-node topology refuses those keys)."""
    out = {**spec, "nodes": nodes}
    if nodes == 1 and spec.get("calibration"):
        out["calibration"] = {k: v for k, v in spec["calibration"].items() if k not in INTERNODE_KEYS}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", required=True, help="case files whose name starts with this (data/published/)")
    ap.add_argument("--topology", required=True, help="a shipped topology name or a YAML file")
    args = ap.parse_args(argv)
    rows = [c for c in P.load_cases() if c.file.startswith(args.prefix) and c.kind in ("alltoall", "normal")]
    if not rows:
        ap.error(f"--prefix {args.prefix!r}: no plain all-to-all or normal-kernel case file in {P.PUBLISHED_DIR} "
                 f"starts with it")
    spec, source = read_spec(args.topology)
    per_node = int(spec.get("gpus_per_node", 1))
    errors, small = [], []
    for c in rows:
        if c.gpus_per_node != per_node:
            ap.error(f"--topology {args.topology}: {per_node} GPUs per node, case {c.id} has {c.gpus_per_node}")
        G = build_topology(_cut(spec, c.nodes), source=source)
        if c.kind == "normal":
            run, traffic = P._prepare(c, 0)
            t = simulate_all_to_all(G, traffic.traffic, "node_dedup", node_bytes=traffic.node_bytes,
                                    combine=c.op == "combine").time_s
            predicted = run.counted / t / 1e9
            size = f"{c.op:>8s} {c.format:>4s}"
        else:
            t = estimate_collective(G, uniform_traffic(c.ep, float(c.size_bytes)), "direct").time_s
            predicted = c.size_bytes * (c.ep - 1) / c.ep / t / 1e9
            size = f"{c.size_bytes:>12d} B"
        error = 100.0 * (predicted / c.published_GBps - 1.0)
        errors.append(error)
        if c.kind == "alltoall" and c.size_bytes < 32 << 20:
            small.append(error)
        print(f"{c.id:42s} {size}  planner {t * 1e6:11.1f} us {predicted:8.3f} GB/s  "
              f"published {c.published_GBps:8.3f}  {error:+8.1f}%", flush=True)
    for name, values in (("all", errors), ("below 32 MiB", small)):
        if values:
            a = np.abs(values)
            print(f"{args.topology} against {args.prefix}*, {name}: {len(a)} rows, median {np.median(a):.1f}%, "
                  f"worst {a.max():.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
