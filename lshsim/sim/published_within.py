"""Within-cluster calibration of the published cases (`lshsim validate --published --within-cluster`).

NOT a held-out result. It answers: how accurate is lshsim after you measure your own cluster once? Each case is
predicted with its cluster's NIC efficiency calibrated on the OTHER cases of the same cluster, whatever their set
(fitting, test or fresh): the held-out cases' cluster-mates' published figures are calibration inputs here, so
nothing of this is to be read against the held-out target of `validate --published`.

A cluster (`cluster_key`): the cases of one source group (`published.source_group`), one NIC family and one topology
template (a case file's `topology` with {nodes} open): one source's runs on one machine type, over its node counts and
kernel kinds (DeepEP V1's README: the H800 cluster's normal and low-latency files; a source's `-4k` ... `-64k` files
of one cluster). Finer (the case file) would split one cluster's kernels and token counts into clusters of 1-3
cases; coarser (the family) would pool different clusters (fresh2's DeepEP user, fresh10's Nebius run and fresh11's
Azure run: three clusters of one nominal configuration, 38-83 GB/s), the spread this calibration is meant to absorb.
A cluster of one case gives no within-cluster number.

Per cluster only the NIC efficiency is refitted (`fit_cluster_efficiency`): on `EFFICIENCY_GRID`, >= the floor the
calibrating cases themselves demonstrate (`published.demonstrated_efficiency`: this cluster's NICs carried those
bytes), with the family's start-ups, per-message cost, per-peer cost and combine ceiling as the standard fit gave them
(fitted on the fitting cases only; for a fitting case they include the case itself, as its standard error does).
The loss is the standard fit's (`published._robust` of the log errors). Cases on one node carry no NIC information:
they are predicted but never calibrate (a calibration set without a multi-node case keeps the family's efficiency).
Ties (a loss flat in the efficiency) go to the efficiency nearest the family's.

Two variants per case r of a cluster:
- leave-one-out: the efficiency fitted on every other case of r's cluster, then r predicted;
- one measured point: the efficiency fitted on ONE other (multi-node) case c of the cluster, then r predicted; every
  such c in turn; r's one-point error is the median |error| over the choices (and the worst choice is reported too).

The simulated times (`CaseRun.sim_s`) are those `validate --published` computed for its own fits (the efficiencies >=
the family's floor); a cluster slower than its family's fitting cases needs lower ones, simulated here
(`extend_efficiencies`): for each fit, its calibrating cases downwards in steps of `STEP` grid points (never below
the floor they demonstrate) while a lower efficiency could still lower the fit's loss, then each predicted case at its
fit's efficiency. A lower efficiency only lengthens a simulated time (a slower NIC), so a case predicted too slow at
the lowest simulated efficiency only gets worse below it: the loss there is at least those cases' loss, and once that
exceeds the best loss found, the fit chooses what it would choose on the whole grid (`_lower_needed`;
`monotone_violations` lists any simulated time that grows with the efficiency, against which this rests).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lshsim.sim.published import (FRESH_SETS, Calibration, CaseRun, _log_error, _robust, demonstrated_efficiency,
                                  source_group)

__all__ = ["cluster_key", "clusters", "fit_cluster_efficiency", "extend_efficiencies", "within_cluster",
           "monotone_violations", "NOTE", "STEP", "ROLES"]

#: the label every within-cluster output carries
NOTE = ("within-cluster calibration: each case predicted with its cluster's NIC efficiency calibrated on the OTHER "
        "cases of the same cluster (their published figures, held-out ones included); answers: how accurate is "
        "lshsim after you measure your own cluster once. NOT a held-out (test or fresh) result: never compare it with "
        "the held-out target")
#: grid points simulated per downward step of `extend_efficiencies`
STEP = 3
#: the sets of the report, in order
ROLES = ("fitting", "test") + FRESH_SETS


def cluster_key(case) -> tuple:
    """(source group, NIC family, topology template): the cluster a published case was measured on."""
    return (source_group(case), case.nic_family, case.topology_template)


def clusters(runs: list[CaseRun]) -> dict:
    """cluster_key -> the runs of that cluster, in the runs' order."""
    out: dict = {}
    for run in runs:
        out.setdefault(cluster_key(run.case), []).append(run)
    return out


def _informative(runs: list[CaseRun]) -> list[CaseRun]:
    """The runs that say something about the NIC: more than one node, bytes over the network."""
    return [r for r in runs if r.nic_gpu_Bps > 0 and r.network_bytes > 0]


def _with_efficiency(cal: Calibration, family: str, eff: float) -> Calibration:
    return dataclasses.replace(cal, nic_efficiency={**cal.nic_efficiency, family: eff})


def _fit(used: list[CaseRun], cal: Calibration, effs) -> tuple[float, float]:
    """(efficiency, loss) of `fit_cluster_efficiency` on its multi-node runs `used` (non-empty)."""
    family = used[0].case.nic_family
    base = cal.nic_efficiency[family]
    floor = demonstrated_efficiency(used).get(family, 0.0)
    effs = sorted(effs)
    allowed = [e for e in effs if e >= floor - 1e-12] or [effs[-1]]
    best = None
    for eff in sorted(allowed, key=lambda e: (abs(e - base), e)):
        trial = _with_efficiency(cal, family, eff)
        loss = _robust([_log_error(r, trial.time_s(r)) for r in used])
        if best is None or loss < best[1] - 1e-15:
            best = (eff, loss)
    return best


def fit_cluster_efficiency(calibrating: list[CaseRun], cal: Calibration, effs=None) -> float:
    """The NIC efficiency of one cluster from its `calibrating` runs (one NIC family): among `effs` (default: those
    simulated for every multi-node calibrating run), >= the floor those runs demonstrate (none left: the highest), the
    least robust loss of their log errors with every other term of `cal` fixed; ties to the efficiency nearest the
    family's. Without a multi-node run: the family's efficiency."""
    families = {r.case.nic_family for r in calibrating}
    if len(families) != 1:
        raise ValueError(f"fit_cluster_efficiency: the calibrating runs must be of one NIC family, not "
                         f"{sorted(families)}")
    family = families.pop()
    used = _informative(calibrating)
    if not used:
        return cal.nic_efficiency[family]
    return _fit(used, cal, _common(used) if effs is None else effs)[0]


def _common(runs: list[CaseRun]) -> list[float]:
    """The efficiencies simulated for every run."""
    return sorted(set.intersection(*(set(r.sim_s) for r in runs)))


def _fits(runs: list[CaseRun]) -> list[tuple[list, list]]:
    """The fits of one cluster as (calibrating runs, the runs predicted with it): leave-one-out (every other case,
    for each case that has another multi-node case), one measured point (each multi-node case alone, for every
    other case), and all of the cluster's cases (the per-cluster table's efficiency, predicting nothing)."""
    out = []
    for r in runs:
        others = [x for x in runs if x is not r]
        if _informative(others):
            out.append((others, [r]))
    for c in _informative(runs):
        out.append(([c], [x for x in runs if x is not c]))
    out.append((runs, []))
    return out


def _lower_needed(used: list[CaseRun], cal: Calibration, grid: tuple, step: int) -> list[float]:
    """The next `step` grid efficiencies below those simulated for all of `used` (multi-node runs of one fit) if
    one of them could lower the fit's loss, else []. For an efficiency e below the lowest simulated one (low), every
    run predicted too slow at low is slower still at e (its error only grows) and every other run's loss is >= 0: the
    loss at e is >= `bound`, the too-slow runs' loss at low. No lower efficiency can win once bound exceeds the best
    loss, or equals it with every lower efficiency after the best in the fit's tie order (farther from the family's)."""
    family = used[0].case.nic_family
    base = cal.nic_efficiency[family]
    effs = _common(used)
    low = effs[0]
    floor = demonstrated_efficiency(used).get(family, 0.0)
    below = [e for e in grid if floor - 1e-12 <= e < low - 1e-12]
    if not below:
        return []
    eff, best = _fit(used, cal, effs)
    trial = _with_efficiency(cal, family, low)
    errors = [_log_error(r, trial.time_s(r)) for r in used]
    bound = _robust([e for e in errors if e <= 0])
    if bound > best + 1e-12 or (bound >= best and abs(eff - base) <= base - low):
        return []
    return below[-step:]


def extend_efficiencies(groups: list[list[CaseRun]], cal: Calibration, grid: tuple, simulate, step: int = STEP) -> int:
    """Simulate the efficiencies the within-cluster fits of the clusters (`groups`) need (module docstring): each
    fit's calibrating runs downwards (`_lower_needed`) until no lower efficiency can win, then every predicted run at
    its fit's efficiency. `simulate(requests)` fills `run.sim_s[eff]` for each (run, eff) of `requests` and returns
    the simulations it ran; returns their sum."""
    done = 0
    fits = [(used, targets, runs) for runs in groups if runs[0].case.nic_family in cal.nic_efficiency
            for calibrating, targets in _fits(runs) for used in [_informative(calibrating)] if used]
    while True:
        requests = {}
        for used, _, _ in fits:
            for e in _lower_needed(used, cal, grid, step):
                for r in used:
                    if e not in r.sim_s:
                        requests[(id(r), e)] = (r, e)
        if not requests:
            break
        done += simulate(list(requests.values()))
    requests = {}
    for used, targets, _ in fits:
        eff = _fit(used, cal, _common(used))[0]
        for r in targets:
            if eff not in r.sim_s:
                requests[(id(r), eff)] = (r, eff)
    if requests:
        done += simulate(list(requests.values()))
    return done


def monotone_violations(runs: list[CaseRun], rel: float = 1e-9) -> list:
    """[case id, e1, e2, t1, t2] for each pair of neighbouring simulated efficiencies e1 < e2 of a run whose
    simulated time grows with the efficiency (t2 > t1 x (1 + rel))."""
    bad = []
    for r in runs:
        effs = sorted(r.sim_s)
        bad += [[r.case.id, a, b, r.sim_s[a], r.sim_s[b]] for a, b in zip(effs, effs[1:])
                if r.sim_s[b] > r.sim_s[a] * (1 + rel)]
    return bad


def _error(run: CaseRun, cal: Calibration) -> float:
    return cal.predict_GBps(run) / run.case.published_GBps - 1.0


def _summary(rows: list[dict]) -> dict:
    """Cases; the standard median / worst |error| of the same cases; leave-one-out's; one point's (the median over
    cases of each case's median over choices, the worst of those, and the worst of any single choice)."""
    def stat(values, fn):
        return float(fn(np.abs(values))) if len(values) else None

    standard = [r["standard_rel_error"] for r in rows]
    loo = [r["rel_error"] for r in rows]
    one = [r["one_point_median_abs_rel_error"] for r in rows if r["one_point_median_abs_rel_error"] is not None]
    worst_choice = [r["one_point_max_abs_rel_error"] for r in rows if r["one_point_max_abs_rel_error"] is not None]
    return {"cases": len(rows),
            "standard_median_abs_rel_error": stat(standard, np.median), "standard_max_abs_rel_error": stat(standard, np.max),
            "median_abs_rel_error": stat(loo, np.median), "max_abs_rel_error": stat(loo, np.max),
            "one_point_cases": len(one),
            "one_point_median_abs_rel_error": stat(one, np.median), "one_point_max_abs_rel_error": stat(one, np.max),
            "one_point_worst_choice_abs_rel_error": stat(worst_choice, np.max)}


def within_cluster(runs: list[CaseRun], cal: Calibration, role, grid: tuple, simulate=None) -> dict:
    """The within-cluster report of `runs` (the cases `validate_published` simulated; `role(case_id)`: its set;
    `cal`: the standard calibration; `simulate`: as in `extend_efficiencies`, None to use only what is simulated).
    Returns {"note", "cluster", "rows" (one per case of a cluster of >= 2 cases with a calibrated family and another
    multi-node case), "clusters" (one per such cluster), one summary per set (ROLES), "all", "single_case_clusters",
    "extra_simulations", "monotone_violations" (`monotone_violations` of the runs)}."""
    groups = clusters(runs)
    multi = {key: rs for key, rs in groups.items() if len(rs) >= 2 and rs[0].case.nic_family in cal.nic_efficiency}
    extra = extend_efficiencies(list(multi.values()), cal, grid, simulate) if simulate is not None else 0
    rows, table = [], []
    for key, rs in multi.items():
        family = key[1]
        mine = []
        for r in rs:
            others = [x for x in rs if x is not r]
            choices = _informative(others)
            if not choices:
                continue                   # nothing of this cluster measures its NIC: no calibration to make
            eff = fit_cluster_efficiency(others, cal)
            one = []
            for c in choices:
                e1 = fit_cluster_efficiency([c], cal)
                one.append({"calibrated_on": c.case.id, "efficiency": e1,
                            "rel_error": _error(r, _with_efficiency(cal, family, e1))})
            abs_one = [abs(x["rel_error"]) for x in one]
            pred = _with_efficiency(cal, family, eff).predict_GBps(r)
            mine.append({"id": r.case.id, "role": role(r.case.id), "cluster": "/".join(key), "nic_family": family,
                         "kind": r.case.kind, "op": r.case.op, "ep": r.case.ep, "nodes": r.case.nodes,
                         "published_GBps": r.case.published_GBps,
                         "standard_predicted_GBps": cal.predict_GBps(r), "standard_rel_error": _error(r, cal),
                         "efficiency": eff, "predicted_GBps": pred, "rel_error": pred / r.case.published_GBps - 1.0,
                         "one_point": one,
                         "one_point_median_abs_rel_error": float(np.median(abs_one)),
                         "one_point_max_abs_rel_error": float(max(abs_one))})
        if not mine:
            continue
        rows += mine
        roles = {}
        for x in mine:
            roles[x["role"]] = roles.get(x["role"], 0) + 1
        loo_effs = [x["efficiency"] for x in mine]
        table.append({"cluster": "/".join(key), "source_group": key[0], "nic_family": family,
                      "topology_template": key[2], "roles": roles, "family_efficiency": cal.nic_efficiency[family],
                      "efficiency_all_cases": fit_cluster_efficiency(rs, cal),
                      "efficiency_range": [min(loo_effs), max(loo_effs)], **_summary(mine)})
    out = {"note": NOTE, "cluster": "(source group, NIC family, topology template)",
           "fitted": "the NIC efficiency only, on the efficiency grid, >= the floor the calibrating cases demonstrate; "
                     "start-ups, per-message and per-peer costs and ceilings as the standard fit (fitting cases only)",
           "rows": rows, "clusters": table, "all": _summary(rows),
           **{name: _summary([x for x in rows if x["role"] == name]) for name in ROLES},
           "single_case_clusters": sorted(rs[0].case.id for rs in groups.values() if len(rs) == 1),
           "extra_simulations": extra, "monotone_violations": monotone_violations(runs)}
    return out
