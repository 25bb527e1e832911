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
combine=..., chunks=...)`, the planner's defaults: no fitted kernel start-up, no NIC efficiency of the published-case
fit; since the twelfth session the network stage and the NVLink forwarding pipelined in
`lshsim.sim.dispatch_formats.PIPELINE_CHUNKS` chunks of one stream each (`stream=True`), as the planner's step runs
them, with the topology's kernel start-up `calibration.dedup_kernel_alpha_s` where it has one; `--chunks 1` on a
topology file without that key gives the eleventh session's planner, the two stages one after the other), and the
predicted figure is the case's counted bytes over that time, under the case's own definition.

`--breakdown` adds, per normal-kernel case, where the planner's time goes: the bytes the figure counts and the bytes
a rank sends to other nodes (mean over ranks), the busiest NIC's bytes (max over ranks of the rdma stage's bytes out
or in) and their time at the topology's NIC rate, the start-up of the network stage, the ends of the NVLink-only
part ("local": a rank's own node) and of the two stages, and the time beyond the NIC bound (planner - start-up -
busiest NIC at line rate), then the busiest GPU's NVLink bytes (max over ranks of the NVLink stages' bytes out or
in, own node and forwarding, a rank's copy to itself excluded) over the busiest NIC's, and the rates the published time
leaves on both (busiest bytes / published time: where a kernel is bound by its NVLink stage, not its NIC, the NVLink
rate is the one that stays put). `--published-json FILE` (the output of `lshsim validate --published --json`) adds the
published-case model's time of each case (its "predicted_GBps", under the same definition), for comparison.

    python benchmarks/check_planner_a2a.py --prefix nccl-orcd-b200 --topology b200-ib-rail-8x8
    python benchmarks/check_planner_a2a.py --prefix rccl-amdkit --topology h100-ib-rail-8x8
    python benchmarks/check_planner_a2a.py --prefix deepep-v1-normal --topology h100-ib-rail-8x8
    python benchmarks/check_planner_a2a.py --prefix deepep-pr521 --topology h100-ib-rail-8x8 --breakdown
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lshsim.sim import published as P  # noqa: E402
from lshsim.sim.collectives import (INTERNODE_KEYS, estimate_collective, phase_alpha_s,  # noqa: E402
                                    simulate_all_to_all, uniform_traffic)
from lshsim.sim.dispatch_formats import PIPELINE_CHUNKS, node_dedup_phases  # noqa: E402
from lshsim.topology import build_topology  # noqa: E402
from lshsim.topology.spec import read_spec  # noqa: E402


def _cut(spec: dict, nodes: int) -> dict:
    """`spec` with `nodes` nodes; one node keeps no start-up across nodes nor the DeepEP-style kernel's (a one-node
    topology refuses those keys)."""
    out = {**spec, "nodes": nodes}
    if nodes == 1 and spec.get("calibration"):
        drop = INTERNODE_KEYS + ("dedup_kernel_alpha_s",)
        out["calibration"] = {k: v for k, v in spec["calibration"].items() if k not in drop}
    return out


def _published_model(path: str | None) -> dict:
    """case id -> the published-case model's predicted GB/s, from `lshsim validate --published --json` output."""
    if path is None:
        return {}
    import json

    try:
        rows = json.loads(Path(path).read_text())["rows"]
        return {r["id"]: float(r["predicted_GBps"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--published-json {path}: not the output of lshsim validate --published --json ({e})")


def _nic_Bps(G) -> float:
    """The rate of one NIC of G (B/s): its GPU -> NIC edges' bandwidth."""
    rates = [d["bandwidth_Bps"] for _, _, d in G.edges(data=True) if d.get("kind") == "nic"]
    return float(min(rates)) if rates else float("nan")


def _breakdown(c, G, traffic, result, run, published_s: float) -> str:
    """One case's lines of --breakdown (module docstring)."""
    local, rdma, forward = node_dedup_phases(traffic.traffic, traffic.node_bytes, c.nodes, c.gpus_per_node)
    network = rdma.T if c.op == "combine" else rdma
    busiest = max(network.sum(axis=1).max(), network.sum(axis=0).max())
    nvlink = local + forward                               # a combine's is the transpose: the same maxima
    nvl_busiest = max(nvlink.sum(axis=1).max(), nvlink.sum(axis=0).max())
    nic_s = busiest / _nic_Bps(G)
    kernel = G.graph.get("dedup_kernel_alpha_s")
    startup = float(kernel) if kernel is not None else phase_alpha_s(G, float(G.graph.get("alpha_s", 0.0)), network)
    ends = {}
    for stage in result.stages:
        name = stage.name.split("[")[0]
        ends[name] = max(ends.get(name, 0.0), stage.end_s)
    order = ("reduce", "rdma") if c.op == "combine" else ("rdma", "forward")
    return (f"    counted {run.counted / 1e6:7.2f} MB, to other nodes {run.network_bytes / 1e6:7.2f} MB, busiest NIC "
            f"{busiest / 1e6:7.2f} MB = {nic_s * 1e6:7.1f} us at line rate, start-up {startup * 1e6:5.1f} us; ends: "
            f"local {ends.get('local', 0.0) * 1e6:7.1f}, {order[0]} {ends.get(order[0], 0.0) * 1e6:7.1f}, "
            f"{order[1]} {ends.get(order[1], 0.0) * 1e6:7.1f} us; beyond start-up + NIC "
            f"{(result.time_s - startup - nic_s) * 1e6:+7.1f} us\n"
            + _nvlink_line(G, busiest, nvl_busiest, published_s))


def _nvlink_line(G, busiest: float, nvl_busiest: float, published_s: float) -> str:
    """--breakdown's second line: the busiest GPU's NVLink bytes against its NIC's, the rates in the published time."""
    nvl = f"NVLink {nvl_busiest / published_s / 1e9:6.1f} GB/s"
    head = f"    NVLink busiest GPU {nvl_busiest / 1e6:7.2f} MB"
    if busiest <= 0:
        return f"{head} (one node: no NIC stage); in the published time: {nvl}"
    return (f"{head} = {nvl_busiest / busiest:5.2f} x the busiest NIC's; in the published time: NIC "
            f"{busiest / published_s / 1e9:6.1f} GB/s "
            f"({100.0 * busiest / published_s / _nic_Bps(G):5.1f}% of line rate), {nvl}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", required=True, help="case files whose name starts with this (data/published/)")
    ap.add_argument("--topology", required=True, help="a shipped topology name or a YAML file")
    ap.add_argument("--chunks", type=int, default=None,
                    help=f"normal kernels: pipeline chunks of the network stage and the NVLink forwarding (default: "
                         f"the planner's, {PIPELINE_CHUNKS} on more than one node; 1: the eleventh session's planner)")
    ap.add_argument("--breakdown", action="store_true", help="normal kernels: where the planner's time goes")
    ap.add_argument("--kernel-startup-us", type=float, default=None, metavar="US",
                    help="normal kernels, a what-if (not the planner): no start-up in the simulation (alpha_s 0: no "
                         "start-up across nodes, no kernel start-up) and US microseconds added once per kernel")
    ap.add_argument("--published-json", metavar="FILE",
                    help="`lshsim validate --published --json` output: print the published-case model's time too")
    args = ap.parse_args(argv)
    if args.chunks is not None and args.chunks < 1:
        ap.error(f"--chunks {args.chunks}: must be an integer >= 1")
    if args.kernel_startup_us is not None and not 0 <= args.kernel_startup_us <= 1e4:
        ap.error(f"--kernel-startup-us {args.kernel_startup_us}: must be a number of microseconds in [0, 10000]")
    model = _published_model(args.published_json)
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
        extra = ""
        if c.kind == "normal":
            run, traffic = P._prepare(c, 0)
            chunks = args.chunks if args.chunks is not None else (PIPELINE_CHUNKS if c.nodes > 1 else 1)
            what_if = {} if args.kernel_startup_us is None else {"alpha_s": 0.0}
            result = simulate_all_to_all(G, traffic.traffic, "node_dedup", node_bytes=traffic.node_bytes,
                                         combine=c.op == "combine", chunks=chunks, stream=True, **what_if)
            t = result.time_s + (args.kernel_startup_us or 0.0) * 1e-6
            predicted = run.counted / t / 1e9
            size = f"{c.op:>8s} {c.format:>4s}"
            published_s = run.counted / (c.published_GBps * 1e9)
            if c.id in model:
                extra += f"  [published {published_s * 1e6:8.1f} us, published-case model " \
                         f"{run.counted / (model[c.id] * 1e9) * 1e6:8.1f} us]"
            if args.breakdown:
                extra += "\n" + _breakdown(c, G, traffic, result, run, published_s)
        else:
            t = estimate_collective(G, uniform_traffic(c.ep, float(c.size_bytes)), "direct").time_s
            predicted = c.size_bytes * (c.ep - 1) / c.ep / t / 1e9
            size = f"{c.size_bytes:>12d} B"
        error = 100.0 * (predicted / c.published_GBps - 1.0)
        errors.append(error)
        if c.kind == "alltoall" and c.size_bytes < 32 << 20:
            small.append(error)
        print(f"{c.id:42s} {size}  planner {t * 1e6:11.1f} us {predicted:8.3f} GB/s  "
              f"published {c.published_GBps:8.3f}  {error:+8.1f}%{extra}", flush=True)
    for name, values in (("all", errors), ("below 32 MiB", small)):
        if values:
            a = np.abs(values)
            print(f"{args.topology} against {args.prefix}*, {name}: {len(a)} rows, median {np.median(a):.1f}%, "
                  f"worst {a.max():.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
