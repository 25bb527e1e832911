"""Calibrate on one 2-node log, plan the rest: `calibrate --nccl-tests LOG --cluster` against published curves.

What a user does with `lshsim calibrate --nccl-tests LOG --cluster TOPOLOGY`: measure two nodes once, then plan on
more nodes or other node pairs. For each published cluster with plain all-to-all rows beyond one 2-node log, this
script takes that cluster's 2-node rows as the log (sizes and the published out-of-place times, busbw x n / (n - 1)),
fits the NIC rate and the start-up across nodes onto the cluster's own 2-node topology
(`lshsim.calibration.internode.fit_internode`), then predicts every other row of the cluster with the planner's model
on the topology of the row's node count carrying the fitted values (`estimate_collective(..., "direct")`), next to the
same topology uncalibrated (its NICs at line rate, no start-up). Each calibration is made twice: without a cost per
remote peer, and with the cluster's NIC family's g as `lshsim validate --published` fits it (kept, not fitted: one
node count cannot tell it from the start-up; those g were fitted on rows that include these clusters' own, but for
the B200 cluster's). The rows are published cases of every role (fitting,
fresh6, fresh13, fresh18: all seen), so this is NOT a held-out result: it measures how far one 2-node calibration
carries within a cluster.

    python benchmarks/eval_calibrate_cluster.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lshsim.calibration import A2APoint  # noqa: E402
from lshsim.calibration.internode import fit_internode  # noqa: E402
from lshsim.calibration.sources import NcclTestsRun  # noqa: E402
from lshsim.sim import published as P  # noqa: E402
from lshsim.sim.collectives import estimate_collective, uniform_traffic  # noqa: E402
from lshsim.topology import build_topology  # noqa: E402
from lshsim.topology.spec import read_spec  # noqa: E402

#: (name, case-file prefix, how the rows split into logs: a function of the case id, the log to calibrate on, the cost
#: per remote peer g of the cluster's NIC family as `lshsim validate --published` fits it (10th session: efa_v1_nccl
#: 4.65 us, efa_nccl 1.37 us, ib_nccl 1.57 us; fitted on fitting rows that include these clusters' own but for B200's))
CLUSTERS = (
    ("SageMaker HyperPod p5 (EFA v1), NCCL", "nccl-hyperpod-p5", lambda c: f"{c.nodes} nodes", "2 nodes", 4.65e-6),
    ("AWS p6-b300 (EFA v3), NCCL", "nccl-aws-p6b300", lambda c: f"{c.nodes} nodes", "2 nodes", 1.37e-6),
    ("H100 + 400 Gb/s ConnectX, 8 GPUs per node, NCCL", "nccl-ntc-h100-g8", lambda c: f"{c.nodes} nodes", "2 nodes",
     1.57e-6),
    ("B200 + 8 x NDR, Rocky pair 5500-5501 calibrates", "nccl-orcd-b200",
     lambda c: c.id.rsplit("-ep", 1)[0].replace("orcd-b200-", ""), "rocky-5500-5501", 1.57e-6),
    ("B200 + 8 x NDR, Ubuntu pair calibrates", "nccl-orcd-b200",
     lambda c: c.id.rsplit("-ep", 1)[0].replace("orcd-b200-", ""), "ubuntu-5700-5701", 1.57e-6),
)


def seconds(case) -> float:
    """The published out-of-place time of a plain all-to-all row (busbw = size (n - 1) / n / time)."""
    return case.size_bytes * (case.ep - 1) / case.ep / (case.published_GBps * 1e9)


def predict(case, calibration: dict | None) -> float:
    """The planner's time of the row on its own topology (the case's node count), with `calibration` merged in."""
    spec, source = read_spec(case.topology)
    spec = dict(spec)
    if calibration:
        spec["calibration"] = {**(spec.get("calibration") or {}), **calibration}
    G = build_topology(spec, source=source)
    return estimate_collective(G, uniform_traffic(case.ep, float(case.size_bytes)), "direct").time_s


def error_pct(case, t: float) -> float:
    return 100.0 * (case.size_bytes * (case.ep - 1) / case.ep / t / 1e9 / case.published_GBps - 1.0)


def main() -> int:
    cases = P.load_cases()
    for name, prefix, log_of, calibrate_on, family_g in CLUSTERS:
        rows = [c for c in cases if c.file.startswith(prefix) and c.kind == "alltoall"]
        logs: dict = {}
        for c in rows:
            logs.setdefault(log_of(c), []).append(c)
        base = sorted(logs[calibrate_on], key=lambda c: c.size_bytes)
        per_node = base[0].gpus_per_node
        run = NcclTestsRun(world_size=base[0].ep, columns=[], hosts=tuple(f"node{i}" for i in range(base[0].nodes)),
                           points=[A2APoint(c.size_bytes, seconds(c), c.ep) for c in base])
        spec, source = read_spec(base[0].topology)
        fits = {}
        for g in (0.0, family_g):        # without a cost per remote peer, and with the family's
            with_g = {**spec, "calibration": {**(spec.get("calibration") or {}), "a2a_remote_peer_s": g}}
            fit = fit_internode(run, with_g, cluster=str(source), log=f"{prefix} {calibrate_on}")
            fits[g] = {"nic_Bps": fit.nic_Bps, "a2a_internode_alpha_s": fit.internode_alpha_s, "a2a_remote_peer_s": g}
            info = fit.info()
            print(f"{name}: calibrated on {calibrate_on} ({len(base)} rows, {base[0].size_bytes >> 20} MiB - "
                  f"{base[-1].size_bytes >> 20} MiB per rank, {per_node} GPUs per node), g {g * 1e6:.2f} us per remote "
                  f"peer: NIC efficiency {fit.efficiency:.2f}, L {fit.internode_alpha_s * 1e6:.1f} us; the log itself "
                  f"{100 * info['median_abs_rel_error']:.1f}% / {100 * info['max_abs_rel_error']:.1f}%", flush=True)
        for log in sorted(logs, key=lambda k: (len(k), k)):
            if log == calibrate_on:
                continue
            before = np.abs([error_pct(c, predict(c, None)) for c in logs[log]])
            parts = []
            for g, calibration in fits.items():
                after = [error_pct(c, predict(c, calibration)) for c in logs[log]]
                a = np.abs(after)
                parts.append(f"g {g * 1e6:.2f} us: {np.median(a):5.1f}% / {a.max():5.1f}% ({np.median(after):+6.1f}%)")
            print(f"    {log:20s} {len(before):2d} rows: calibrated, " + "; ".join(parts)
                  + f"; uncalibrated {np.median(before):6.1f}% / {before.max():6.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
