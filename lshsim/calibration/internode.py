"""A multi-node cluster's topology calibrated from an nccl-tests `alltoall_perf` log of several nodes.

`lshsim calibrate --nccl-tests LOG --cluster TOPOLOGY` (`fit_internode`). A log whose `# Rank` lines name
several hosts measures the network, not one node's NVLink, so it is fitted onto the cluster's own multi-node
topology (its NVLink, NICs and switches as the spec builds them), with two values:

- the NIC rate, `calibration.nic_Bps` = e x the spec's `inter.nic_gbps` (e on a grid, `EFFICIENCIES`), and
- the start-up of an all-to-all phase across nodes, `calibration.a2a_internode_alpha_s` = L (L + g p s / (s + S0) at
  least the spec's alpha_s, L at most `MAX_INTERNODE_ALPHA_S`; `lshsim.sim.collectives.phase_alpha_s`).

The topology's cost per remote peer g (`calibration.a2a_remote_peer_s`, if it has one) and its ramp S0
(`calibration.a2a_remote_peer_ramp_bytes`) are kept, not fitted: one log of one node count cannot tell g from L (every
rank has the same p remote peers), and the fitted L is then what is left of the start-up beside g p s / (s + S0). The
model of a row of S bytes per rank is the planner's own: t(S) = t_net(S; e) + L, t_net the direct all-to-all of
nccl-tests' even matrix on the topology cut to the log's hosts (`estimate_collective(..., "direct")`, the local copy
included, a start-up of g p s / (s + S0) only), L the start-up. For each e the L minimising the robust loss of
log(model / measured) (soft L1 at 10%, as the published cases' fit) is found by a bounded 1-D search; the e with the least loss wins
(every fifth efficiency of the grid first, then every one within 0.04 of the best of those).
What the fit cannot follow (a bandwidth that ramps between the small and the large sizes, a cluster slower at some
sizes than its NICs explain) stays in the residuals, which the summary prints row by row.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

__all__ = ["InternodeFit", "fit_internode", "EFFICIENCIES", "MAX_INTERNODE_ALPHA_S"]

#: the NIC efficiencies the fit tries (of the spec's inter.nic_gbps)
EFFICIENCIES = tuple(round(0.2 + 0.01 * i, 2) for i in range(81))
#: the largest start-up across nodes the fit may give (s)
MAX_INTERNODE_ALPHA_S = 2e-3
#: the calibration keys the fit writes (the values they replace are recorded in its provenance)
FITTED_KEYS = ("nic_Bps", "a2a_internode_alpha_s")
#: the median |error| above which a fit whose efficiency is at either end of EFFICIENCIES is refused (the log is
#: slower or faster than the topology's NICs can explain: a wrong inter.nic_gbps or the wrong cluster)
EDGE_MAX_ERROR = 0.25
#: the robust loss's scale (soft L1 of log errors: beyond ~10% an error counts linearly)
ROBUST_SCALE = 0.1


@dataclass(frozen=True)
class InternodeFit:
    """The fitted values, the rows (size per rank, measured s, model s) and the written spec."""

    efficiency: float
    nic_Bps: float
    internode_alpha_s: float
    rows: tuple
    hosts: tuple
    spec: dict

    def info(self) -> dict:
        errors = [m / t - 1.0 for _, t, m in self.rows]
        return {"model": "t = t_net(S; nic_Bps) + a2a_internode_alpha_s (lshsim.calibration.internode)",
                "nic_efficiency": self.efficiency, "nic_Bps": self.nic_Bps,
                "a2a_internode_alpha_s": self.internode_alpha_s, "hosts": list(self.hosts), "rows": len(self.rows),
                "median_abs_rel_error": float(np.median(np.abs(errors))),
                "max_abs_rel_error": float(np.max(np.abs(errors)))}


def _gpu_of(device: str | None) -> str | None:
    """The lshsim.topology.gpus key a device name holds ('NVIDIA B200' -> 'b200'), None if none or unknown."""
    import re

    from lshsim.topology.gpus import GPUS

    lowered = (device or "").lower()
    found = [key for key in GPUS if re.search(re.escape(key) + r"(?!\d)", lowered)]
    return found[0] if len(found) == 1 else None


def _robust(log_errors) -> float:
    z = np.square(np.asarray(log_errors, dtype=float) / ROBUST_SCALE)
    return float(np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)))


def fit_internode(run, spec: dict, *, cluster: str, log: str) -> InternodeFit:
    """Fit `spec` (a multi-node topology spec, read from `cluster`) to `run` (a parsed nccl-tests log, `log` its
    file): the NIC efficiency and the start-up across nodes (module docstring). Refuses, naming the file, field and
    value: a log of one host, ranks that do not split evenly over the hosts, a cluster of one node, a cluster whose
    GPUs per node differ from the log's ranks per host or with fewer nodes than the log's hosts."""
    from scipy.optimize import minimize_scalar

    from lshsim.sim.collectives import estimate_collective, uniform_traffic
    from lshsim.topology import build_topology

    hosts = tuple(run.hosts)
    world = int(run.world_size)
    if len(hosts) < 2:
        raise ValueError(f"{log}: --cluster fits a log of several nodes; its '# Rank' lines name "
                         f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}"
                         + (f" ({hosts[0]})" if hosts else "")
                         + ": calibrate a one-node log without --cluster")
    if world % len(hosts):
        raise ValueError(f"{log}: {world} ranks on {len(hosts)} hosts ({', '.join(hosts)}) do not split evenly: "
                         f"--cluster needs the same number of ranks on every host")
    per_host = world // len(hosts)
    if len(run.points) < 2:     # two values fitted: one row is met by any efficiency, with its own start-up
        raise ValueError(f"{log}: --cluster fits two values (the NIC efficiency and the start-up across nodes) and the "
                         f"log has one size ({int(run.points[0].bytes_per_rank)} B per rank): every efficiency fits "
                         f"it with a start-up of its own; give a log of several sizes (nccl-tests -b 1K -e 1G -f 4)")
    build_topology(spec, source=cluster)       # the spec's every field checked first, naming the file, field and value
    log_gpu, spec_gpu = _gpu_of(run.gpu), str(spec.get("gpu")).lower() if isinstance(spec.get("gpu"), str) else None
    if log_gpu is not None and spec_gpu is not None and log_gpu != spec_gpu:
        raise ValueError(f"{cluster}: gpu={spec['gpu']!r}, but the log's '# Rank' lines name the device {run.gpu!r} "
                         f"({log_gpu}; {log}): give a topology of the log's GPU (its NVLink and copies are in the fit)")
    if not spec.get("inter"):
        raise ValueError(f"{cluster}: inter is not given: --cluster needs a topology of several nodes (the log's "
                         f"{len(hosts)} hosts)")
    nodes, per_node = int(spec.get("nodes", 1)), int(spec.get("gpus_per_node", 1))
    if per_node != per_host:
        raise ValueError(f"{cluster}: gpus_per_node={per_node}, but the log runs {per_host} ranks on each of its "
                         f"{len(hosts)} hosts: give a topology of {per_host} GPUs per node")
    if nodes < len(hosts):
        raise ValueError(f"{cluster}: nodes={nodes}, but the log's ranks run on {len(hosts)} hosts: give a topology "
                         f"of at least {len(hosts)} nodes")
    nominal = float(spec["inter"]["nic_gbps"]) * 0.125e9
    calibration = dict(spec.get("calibration") or {})
    per_peer = float(calibration.get("a2a_remote_peer_s") or 0.0)
    ramp_bytes = float(calibration.get("a2a_remote_peer_ramp_bytes") or 0.0)
    sizes = [int(p.bytes_per_rank) for p in run.points]
    # L + g p (x the smallest row's ramp) >= alpha_s: below it the planner's start-up would be alpha_s, not the fitted
    sent = min(sizes) * (world - 1) / world                 # the bytes a rank sends to the others
    ramp = sent / (sent + ramp_bytes) if ramp_bytes > 0 else 1.0
    alpha_floor = max(0.0, float(calibration.get("alpha_s", spec.get("alpha_s", 1e-5)) or 0.0)
                      - per_peer * (world - per_host) * ramp)
    measured = np.array([float(p.time_s) for p in run.points])
    net: dict = {}

    def network_s(eff: float) -> np.ndarray:
        """The rows' times without a start-up, the NICs at eff (cached)."""
        if eff not in net:
            cut = copy.deepcopy(spec)
            cut["nodes"] = len(hosts)
            cut["alpha_s"] = 0.0
            cal = {k: v for k, v in calibration.items() if k not in ("a2a_internode_alpha_s", "provenance")}
            # keeps a2a_remote_peer_s (and its ramp): t_net then holds g p (x s / (s + S0)), the start-up with L = 0
            cal.update(alpha_s=0.0, nic_Bps=eff * nominal)
            cut["calibration"] = cal
            G = build_topology(cut, source=cluster)
            net[eff] = np.array([estimate_collective(G, uniform_traffic(world, float(s)), "direct").time_s
                                 for s in sizes])
        return net[eff]

    def best_start_up(eff: float) -> tuple[float, float]:
        """(loss, L) of the best start-up at eff."""
        t_net = network_s(eff)

        def loss(L):
            return _robust(np.log((t_net + L) / measured))
        found = minimize_scalar(loss, bounds=(alpha_floor, MAX_INTERNODE_ALPHA_S), method="bounded",
                                options={"xatol": 1e-9})
        L = float(found.x)
        if loss(alpha_floor) <= loss(L):
            L = alpha_floor
        return loss(L), L

    # every 5th efficiency of the grid, then every one within 0.04 of the best of those
    coarse = EFFICIENCIES[::5]
    scored = {eff: best_start_up(eff) for eff in coarse}
    first = min(scored, key=lambda e: (scored[e][0], e))
    for eff in EFFICIENCIES:
        if abs(eff - first) <= 0.04 + 1e-9 and eff not in scored:
            scored[eff] = best_start_up(eff)
    eff = min(scored, key=lambda e: (scored[e][0], e))
    L = scored[eff][1]
    model = net[eff] + L
    median = float(np.median(np.abs(model / measured - 1.0)))
    if eff in (EFFICIENCIES[0], EFFICIENCIES[-1]) and median > EDGE_MAX_ERROR:
        side = "slower" if eff == EFFICIENCIES[0] else "faster"
        raise ValueError(f"{log}: the fit's NIC efficiency sits at the edge of its grid ({eff:.2f} of {cluster}'s "
                         f"inter.nic_gbps={spec['inter']['nic_gbps']}) and the model still misses the log's rows by "
                         f"{100 * median:.0f}% (median): the log is {side} than this topology's NICs can explain; "
                         f"check --cluster (inter.nic_gbps, nics_per_node) against the cluster that ran the log")
    out = copy.deepcopy(spec)
    cal = dict(out.get("calibration") or {})
    provenance = dict(cal.get("provenance") or {})
    provenance["nccl_tests_internode"] = {
        "tool": "lshsim calibrate --nccl-tests --cluster", "file": log, "cluster": cluster, "hosts": list(hosts),
        "ranks": world, "sizes": len(sizes),
        "replaced": {k: cal[k] for k in FITTED_KEYS if k in cal}}
    assumed = provenance.get("assumed")
    if isinstance(assumed, dict):           # the spec's reasons for the values the fit replaces no longer hold
        gone = {k: assumed[k] for k in FITTED_KEYS if k in assumed}
        if gone:
            provenance["assumed"] = {k: v for k, v in assumed.items() if k not in gone}
            provenance["nccl_tests_internode"]["replaced_assumed"] = gone
    cal.update(nic_Bps=eff * nominal, a2a_internode_alpha_s=L, provenance=provenance)
    out["calibration"] = cal
    build_topology(out, source="the fitted topology")     # refused before anything is written
    rows = tuple((s, float(m), float(t)) for s, m, t in zip(sizes, measured, model))
    fit = InternodeFit(eff, eff * nominal, L, rows, hosts, out)
    provenance["nccl_tests_internode"]["fit"] = {k: v for k, v in fit.info().items() if k not in ("hosts",)}
    return fit
