"""Calibrate on one 2-node log, plan the rest: `calibrate --nccl-tests LOG --cluster` against published curves.

What a user does with `lshsim calibrate --nccl-tests LOG --cluster TOPOLOGY`: measure two nodes once, then plan on
more nodes or other node pairs. For each published cluster with plain all-to-all rows beyond one 2-node log, this
script takes that cluster's 2-node rows as the log (sizes and the published out-of-place times, busbw x n / (n - 1)),
fits the NIC rate and the start-up across nodes onto the cluster's own 2-node topology
(`lshsim.calibration.internode.fit_internode`), then predicts every other row of the cluster with the planner's model
on the topology of the row's node count carrying the fitted values (`estimate_collective(..., "direct")`), next to the
same topology uncalibrated (its NICs at line rate, no start-up). Each calibration is made three times: without a cost
per remote peer ("none"), with the cluster's NIC family's g as `lshsim validate --published` fits it at every size
("g", the planner's form of the tenth session), and with that g ramped in as s / (s + S0) ("g ramped", the form of
the published-case model and the planner since the eleventh session). g and S0 are kept, not fitted: one node count
cannot tell g from the start-up; they were fitted on rows that include these clusters' own, but for the B200
cluster's. The rows are published cases of every role (fitting,
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
#: per remote peer g of the cluster's NIC family and its ramp S0 as `lshsim validate --published` fits them (11th
#: session, g x s / (s + S0): efa_v1_nccl 16.92 us, 120 MiB; efa_nccl 1.47 us, 4.94 MiB; ib_nccl 6.81 us, 83.8 MiB;
#: fitted on fitting rows that include these clusters' own but for B200's; the 10th session's, without a ramp:
#: 4.65, 1.37, 1.57 us))
MiB = float(1 << 20)
CLUSTERS = (
    ("SageMaker HyperPod p5 (EFA v1), NCCL", "nccl-hyperpod-p5", lambda c: f"{c.nodes} nodes", "2 nodes",
     (16.92e-6, 120 * MiB)),
    ("AWS p6-b300 (EFA v3), NCCL", "nccl-aws-p6b300", lambda c: f"{c.nodes} nodes", "2 nodes", (1.47e-6, 4.94 * MiB)),
    ("H100 + 400 Gb/s ConnectX, 8 GPUs per node, NCCL", "nccl-ntc-h100-g8", lambda c: f"{c.nodes} nodes", "2 nodes",
     (6.81e-6, 83.8 * MiB)),
    ("B200 + 8 x NDR, Rocky pair 5500-5501 calibrates", "nccl-orcd-b200",
     lambda c: c.id.rsplit("-ep", 1)[0].replace("orcd-b200-", ""), "rocky-5500-5501", (6.81e-6, 83.8 * MiB)),
    ("B200 + 8 x NDR, Ubuntu pair calibrates", "nccl-orcd-b200",
     lambda c: c.id.rsplit("-ep", 1)[0].replace("orcd-b200-", ""), "ubuntu-5700-5701", (6.81e-6, 83.8 * MiB)),
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
        g_family, ramp_family = family_g
        # without a cost per remote peer, with the family's g at every size (10th session's planner), and ramped in
        for key, terms in (("none", {"a2a_remote_peer_s": 0.0}), ("g", {"a2a_remote_peer_s": g_family}),
                           ("g ramped", {"a2a_remote_peer_s": g_family, "a2a_remote_peer_ramp_bytes": ramp_family})):
            base_cal = {k: v for k, v in (spec.get("calibration") or {}).items() if k != "a2a_remote_peer_ramp_bytes"}
            with_g = {**spec, "calibration": {**base_cal, **terms}}
            if not terms["a2a_remote_peer_s"]:
                with_g["calibration"].pop("a2a_remote_peer_s")
            fit = fit_internode(run, with_g, cluster=str(source), log=f"{prefix} {calibrate_on}")
            fits[key] = {"nic_Bps": fit.nic_Bps, "a2a_internode_alpha_s": fit.internode_alpha_s, **terms}
            info = fit.info()
            print(f"{name}: calibrated on {calibrate_on} ({len(base)} rows, {base[0].size_bytes >> 20} MiB - "
                  f"{base[-1].size_bytes >> 20} MiB per rank, {per_node} GPUs per node), {key} "
                  f"({g_family * 1e6:.2f} us per remote peer, S0 {ramp_family / MiB:.3g} MiB): NIC efficiency "
                  f"{fit.efficiency:.2f}, L {fit.internode_alpha_s * 1e6:.1f} us; the log itself "
                  f"{100 * info['median_abs_rel_error']:.1f}% / {100 * info['max_abs_rel_error']:.1f}%", flush=True)
        for log in sorted(logs, key=lambda k: (len(k), k)):
            if log == calibrate_on:
                continue
            before = np.abs([error_pct(c, predict(c, None)) for c in logs[log]])
            parts = []
            for key, calibration in fits.items():
                after = [error_pct(c, predict(c, calibration)) for c in logs[log]]
                a = np.abs(after)
                parts.append(f"{key}: {np.median(a):5.1f}% / {a.max():5.1f}% ({np.median(after):+6.1f}%)")
            print(f"    {log:20s} {len(before):2d} rows: calibrated, " + "; ".join(parts)
                  + f"; uncalibrated {np.median(before):6.1f}% / {before.max():6.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
