"""Published multi-node dispatch measurements (data/published/) against the simulator.

A case is one published figure with its configuration (`load_cases`); `split.yaml` names the test
cases, chosen before any fit and never fitted on (`load_split`). For each case the model

1. draws the routing the source's benchmark draws (`deepep_routing`: DeepEP's tests, uniform random
   scores, a token's experts on at most `topk_groups` nodes for the normal kernels; plain top-k with 10
   masked choices for the low-latency kernels), one seeded generator per rank;
2. counts the bytes (`lshsim.sim.dispatch_formats.node_dedup_traffic`, the case's format);
3. simulates the all-to-all on the case's topology (the case file's `topology`, e.g.
   `data/topologies/published/h800-ib-{N}x8`): the
   normal kernels as "node_dedup" (one network copy per (token, node), NVLink forwarding, pipelined in
   `NORMAL_CHUNKS` chunks; combine = the reverse), the low-latency kernels as "direct" with one copy per
   (token, expert) (no deduplication, as DeepEP's low-latency kernels send);
4. turns the predicted time t into the case's own figure: bytes the source counts / t (`counted_bytes`),
   averaged over ranks.

Calibration (`Calibration`, `fit_calibration`), per NIC family (a case file's `nic_family`: ib for DeepEP's
CX7 InfiniBand, efa for UCCL-EP's AWS EFA), each family on its own: the NIC efficiency (effective NIC
bandwidth / the topology's nic_gbps) and one start-up latency per operation (dispatch, combine) added to the
simulated time, fitted on the fitting cases only (least squares of log(predicted / published)); the test cases
are refused by the fit. NVLink stays at the topology's rate (H800: the source's stated ~160 GB/s; H200, B200:
the datasheet rate, an assumption).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lshsim.readers import load_yaml as read_yaml
from lshsim.sim.dispatch_formats import bytes_per_token, node_dedup_traffic

__all__ = ["Case", "load_cases", "load_split", "load_fresh", "deepep_routing", "case_traffic", "counted_bytes", "simulate_case",
           "Calibration", "fit_calibration", "validate_published", "source_group", "PUBLISHED_DIR", "NORMAL_CHUNKS"]

#: the folder of the published cases in a source checkout
PUBLISHED_DIR = Path(__file__).resolve().parents[2] / "data" / "published"
#: chunks of DeepEP's pipelined RDMA -> NVLink forwarding in the model (its tests tune chunks of 4-44 tokens)
NORMAL_CHUNKS = 8
KINDS = ("normal", "low_latency")
#: the topology of a case file without a `topology` field (DeepEP V1's H800 cluster)
DEFAULT_TOPOLOGY = "published/h800-ib-{nodes}x{gpus_per_node}"
OPS = ("dispatch", "combine")


@dataclass(frozen=True)
class Case:
    """One published figure. `workload`: the file's workload block (tokens_per_rank, hidden, top_k, ...)."""

    id: str
    kind: str
    ep: int
    nodes: int
    op: str
    format: str
    published_GBps: float
    counts: str
    workload: dict
    source: str
    file: str
    published_latency_us: float | None = None
    topology_template: str = DEFAULT_TOPOLOGY
    nic_family: str = "ib"
    group: str | None = None              # the file's `group` (reports), None: the file name's prefix

    @property
    def gpus_per_node(self) -> int:
        return self.ep // self.nodes

    @property
    def topology(self) -> str:
        """The case's topology name (data/topologies/<name>.yaml): the file's `topology` template."""
        return self.topology_template.format(nodes=self.nodes, gpus_per_node=self.gpus_per_node)


def _field(value, where: str, kind, check=None, why: str = ""):
    if isinstance(value, bool) or not isinstance(value, kind) or (check is not None and not check(value)):
        raise ValueError(f"{where}={value!r} {why}".rstrip())
    return value


def load_cases(folder: str | Path = PUBLISHED_DIR) -> list[Case]:
    """Every case of every `*.yaml` in `folder` but split.yaml; errors name the file, field and value."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.yaml") if p.name != "split.yaml")
    if not files:
        raise ValueError(f"{folder}: no case files (*.yaml)")
    cases, seen = [], {}
    for path in files:
        doc = read_yaml(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list) or not doc["cases"]:
            raise ValueError(f"{path.name}: cases must be a non-empty list")
        workload = doc.get("workload")
        if not isinstance(workload, dict):
            raise ValueError(f"{path.name}: workload must be a mapping")
        for key in ("tokens_per_rank", "hidden", "top_k"):
            _field(workload.get(key), f"{path.name}: workload.{key}", int, lambda v: v >= 1, "must be an integer >= 1")
        _check_workload(workload, path.name)
        source = (doc.get("source") or {}).get("url")
        _field(source, f"{path.name}: source.url", str, lambda v: v.startswith("https://"), "must be an https URL")
        template = _field(doc.get("topology", DEFAULT_TOPOLOGY), f"{path.name}: topology", str,
                          lambda v: "{nodes}" in v, "must be a topology name holding {nodes}, e.g. "
                          "'published/h800-ib-{nodes}x8'")
        family = _field(doc.get("nic_family", "ib"), f"{path.name}: nic_family", str,
                        lambda v: v.isidentifier(), "must be a short name (letters, digits, _), e.g. ib or efa")
        group = doc.get("group")
        if group is not None:
            _field(group, f"{path.name}: group", str, lambda v: bool(v) and all(c.isalnum() or c in "-_." for c in v),
                   "must be a short name (letters, digits, -, _, .), e.g. deepep-v2")
        for i, raw in enumerate(doc["cases"]):
            where = f"{path.name}: cases[{i}]"
            if not isinstance(raw, dict):
                raise ValueError(f"{where} must be a mapping")
            cid = _field(raw.get("id"), f"{where}.id", str, bool, "must be a non-empty string")
            if cid in seen:
                raise ValueError(f"{where}.id={cid!r} is already used in {seen[cid]}")
            seen[cid] = path.name
            kind = _field(raw.get("kind"), f"{where}.kind", str, lambda v: v in KINDS, f"must be one of {KINDS}")
            ep = _field(raw.get("ep"), f"{where}.ep", int, lambda v: v >= 2, "must be an integer >= 2")
            nodes = _field(raw.get("nodes"), f"{where}.nodes", int, lambda v: v >= 1 and ep % v == 0,
                           f"must be an integer >= 1 dividing ep={ep}")
            op = _field(raw.get("op"), f"{where}.op", str, lambda v: v in OPS, f"must be one of {OPS}")
            fmt = _field(raw.get("format"), f"{where}.format", str, lambda v: v in ("bf16", "fp8"), "must be bf16 or fp8")
            figure = _field(raw.get("published_GBps"), f"{where}.published_GBps", (int, float),
                            lambda v: math.isfinite(v) and v > 0, "must be a number > 0")
            counts = raw.get("counts", "choices" if kind == "low_latency" else None)
            _field(counts, f"{where}.counts", str, lambda v: v in ("rdma", "nvlink", "choices"),
                   "must be rdma, nvlink or choices")
            if kind == "normal" and (counts == "nvlink") != (nodes == 1):
                raise ValueError(f"{where}.counts={counts!r}: a normal kernel counts nvlink bytes on one node, rdma "
                                 f"bytes on several (nodes={nodes})")
            latency = raw.get("published_latency_us")
            if latency is not None:
                _field(latency, f"{where}.published_latency_us", (int, float), lambda v: v > 0, "must be a number > 0")
            case = Case(cid, kind, ep, nodes, op, fmt, float(figure), counts, dict(workload), source, path.name,
                        None if latency is None else float(latency), template, family, group)
            _check_topology(case, f"{path.name}: topology")
            cases.append(case)
    return cases


def _check_workload(workload: dict, name: str) -> None:
    """The optional workload keys: experts or experts_per_rank, topk_groups, *_metadata_bytes, masked_choices."""
    if "experts" in workload and "experts_per_rank" in workload:
        raise ValueError(f"{name}: workload.experts and workload.experts_per_rank: give one of them")
    for key in ("experts", "experts_per_rank"):
        if key in workload:
            _field(workload[key], f"{name}: workload.{key}", int, lambda v: v >= 1, "must be an integer >= 1")
    groups = workload.get("topk_groups")
    if groups is not None and groups not in ("min(nodes, 4)", "none"):
        _field(groups, f"{name}: workload.topk_groups", int, lambda v: v >= 1,
               "must be 'min(nodes, 4)', 'none' (no node limit) or an integer >= 1")
    for key in ("dispatch_metadata_bytes", "combine_metadata_bytes", "masked_choices"):
        if key in workload:
            _field(workload[key], f"{name}: workload.{key}", int, lambda v: v >= 0, "must be an integer >= 0")


def _check_topology(case: Case, where: str) -> None:
    """The case's topology must load and hold ep GPUs in nodes x gpus_per_node."""
    from lshsim.topology.spec import read_spec

    try:
        name = case.topology
        spec, _ = read_spec(name)
    except (KeyError, IndexError, ValueError, OSError) as error:
        raise ValueError(f"{where}={case.topology_template!r} (case {case.id}): {error}") from None
    if (spec.get("nodes"), spec.get("gpus_per_node")) != (case.nodes, case.gpus_per_node):
        raise ValueError(f"{where}={case.topology_template!r} (case {case.id}): {name} has nodes={spec.get('nodes')}, "
                         f"gpus_per_node={spec.get('gpus_per_node')}, the case needs {case.nodes} x {case.gpus_per_node}")


def load_split(folder: str | Path = PUBLISHED_DIR, cases: list[Case] | None = None) -> set[str]:
    """The test case ids of `folder/split.yaml`, each checked against the cases."""
    folder = Path(folder)
    path = folder / "split.yaml"
    doc = read_yaml(path)
    test = doc.get("test") if isinstance(doc, dict) else None
    if not isinstance(test, list) or not test:
        raise ValueError(f"{path.name}: test must be a non-empty list of case ids")
    known = {c.id for c in (load_cases(folder) if cases is None else cases)}
    for i, cid in enumerate(test):
        if cid not in known:
            raise ValueError(f"{path.name}: test[{i}]={cid!r} is not a case id")
    return set(test)


def load_fresh(folder: str | Path = PUBLISHED_DIR, cases: list[Case] | None = None) -> set[str]:
    """The fresh held-out case ids of `folder/split.yaml` (`fresh:`, optional): committed before a model change and
    never fitted on; each checked against the cases and against the test list (a case is in one set only)."""
    folder = Path(folder)
    path = folder / "split.yaml"
    doc = read_yaml(path)
    fresh = doc.get("fresh", []) if isinstance(doc, dict) else []
    if fresh is None or not isinstance(fresh, list):
        raise ValueError(f"{path.name}: fresh must be a list of case ids")
    known = {c.id for c in (load_cases(folder) if cases is None else cases)}
    test = set(doc.get("test") or [])
    for i, cid in enumerate(fresh):
        if cid not in known:
            raise ValueError(f"{path.name}: fresh[{i}]={cid!r} is not a case id")
        if cid in test:
            raise ValueError(f"{path.name}: fresh[{i}]={cid!r} is also a test case")
    return set(fresh)


def deepep_routing(rank: int, tokens: int, experts: int, nodes: int, top_k: int, topk_groups: int | None,
                   seed: int = 0, masked_choices: int = 0) -> np.ndarray:
    """(tokens, top_k) expert ids drawn as DeepEP's tests draw them, seeded by (seed, rank).

    scores = |N(0, 1)| + 1 per (token, expert); with `topk_groups`, only the experts of the
    `topk_groups` nodes with the highest max score are eligible (DeepSeek-V3's node-limited routing,
    tests/test_internode.py); then the top_k eligible experts. `masked_choices` random (token, choice)
    entries become -1 (tests/test_low_latency.py masks 10).
    """
    rng = np.random.default_rng([seed, rank])
    scores = np.abs(rng.standard_normal((tokens, experts), dtype=np.float32)) + 1.0
    if topk_groups is not None and topk_groups < nodes:
        group = scores.reshape(tokens, nodes, experts // nodes).max(axis=2)           # (T, N)
        keep = np.argpartition(-group, topk_groups - 1, axis=1)[:, :topk_groups]      # (T, groups)
        mask = np.zeros((tokens, nodes), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        scores = np.where(np.repeat(mask, experts // nodes, axis=1), scores, 0.0)
    idx = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k].astype(np.int64)
    for _ in range(masked_choices):
        idx[rng.integers(tokens), rng.integers(top_k)] = -1
    return idx


def _experts(case: Case) -> int:
    if "experts_per_rank" in case.workload:          # e.g. NVIDIA's Hybrid-EP test: 8 local experts per rank
        return int(case.workload["experts_per_rank"]) * case.ep
    experts = int(case.workload.get("experts", 256))
    return experts if experts % case.ep == 0 else (experts // case.ep) * case.ep or case.ep


def case_traffic(case: Case, seed: int = 0):
    """The `DedupTraffic` of a case's routing (one copy per token in `bytes_per_token` of its format)."""
    w = case.workload
    tokens, top_k, experts = w["tokens_per_rank"], w["top_k"], _experts(case)
    groups = None
    if case.kind == "normal" and w.get("topk_groups") != "none":
        groups = min(case.nodes, 4) if w.get("topk_groups") in (None, "min(nodes, 4)") else int(w["topk_groups"])
    masked = int(w.get("masked_choices", 0))
    idx = np.concatenate([deepep_routing(r, tokens, experts, case.nodes, top_k, groups, seed, masked)
                          for r in range(case.ep)])
    src = np.repeat(np.arange(case.ep), tokens)
    metadata = 16 if (case.kind == "low_latency" and case.format == "fp8") else 0
    metadata = int(w.get(f"{case.op}_metadata_bytes", metadata))     # bytes per token beside the values
    bpt = bytes_per_token(case.format, w["hidden"], metadata_bytes=metadata)
    return node_dedup_traffic(idx, src, expert_rank=np.arange(experts) // (experts // case.ep),
                              gpus_per_node=case.gpus_per_node, world=case.ep, bytes_per_token=bpt)


def counted_bytes(case: Case, traffic) -> np.ndarray:
    """(W,) the bytes each rank's figure counts, under the source's definition (data/published/*.yaml)."""
    if case.counts == "rdma":          # (token, node) pairs, own node included
        return traffic.node_bytes.sum(axis=1)
    if case.counts == "nvlink":        # tokens received, one per (token, rank), own included
        return traffic.traffic.sum(axis=0)
    return traffic.choice_traffic.sum(axis=1)    # low latency: (token, expert) pairs


def simulate_case(case: Case, traffic, nic_efficiency: float, *, topology_dir: str | Path | None = None) -> float:
    """Predicted seconds of the case's kernel without its start-up latency (alpha_s = 0)."""
    from lshsim.sim.collectives import estimate_all_to_all, simulate_all_to_all
    from lshsim.topology import build_topology
    from lshsim.topology.spec import read_spec

    name = case.topology if topology_dir is None else str(Path(topology_dir) / f"{case.topology.split('/')[-1]}.yaml")
    spec, source = read_spec(name)
    spec = dict(spec)
    if "inter" in spec:           # the efficiency scales the spec's own NIC rate (inter.nic_gbps)
        nominal = float(spec["inter"]["nic_gbps"]) * 0.125e9
        spec["calibration"] = {**(spec.get("calibration") or {}), "nic_Bps": float(nic_efficiency) * nominal}
    G = build_topology(spec, source=source)
    if case.kind == "normal":
        options = {"local_copy": False, "alpha_s": 0.0}
        result = simulate_all_to_all(G, traffic.traffic, "node_dedup", node_bytes=traffic.node_bytes,
                                     chunks=NORMAL_CHUNKS if case.nodes > 1 else 1, combine=case.op == "combine",
                                     **options)
        return float(result.time_s)
    else:
        matrix = traffic.choice_traffic
        # the direct all-to-all from link loads: a lower bound of the flow simulation, exact when the
        # busiest resource stays saturated (tests/test_estimate.py); the flow simulation of 128 GPUs
        # with random per-pair sizes takes minutes (337 s measured), this one pass well under a second
        return estimate_all_to_all(G, matrix.T if case.op == "combine" else matrix, local_copy=False)


@dataclass(frozen=True)
class Calibration:
    """Per NIC family (the case file's `nic_family`): the NIC efficiency (of the topology's nic_gbps) and the
    start-up per operation (s), with the cases they were fitted on."""

    nic_efficiency: dict                  # family -> efficiency
    alpha_s: dict                         # family -> {op: seconds}
    fitted_on: tuple = ()
    grid: tuple = ()

    def predict_GBps(self, case: Case, counted: float, sim_s_by_eff: dict) -> float:
        family = case.nic_family
        if family not in self.nic_efficiency:
            raise ValueError(f"case {case.id}: nic_family={family!r} has no fitting case, so no calibration "
                             f"(fitted families: {', '.join(sorted(self.nic_efficiency))})")
        t = sim_s_by_eff[self.nic_efficiency[family]] + self.alpha_s[family][case.op]
        return counted / t / 1e9


@dataclass
class CaseRun:
    case: Case
    counted: float                                    # mean over ranks of the counted bytes
    network_bytes: float                              # mean over ranks of the bytes sent to other nodes
    sim_s: dict = field(default_factory=dict)         # nic efficiency -> simulated seconds (no start-up)


EFFICIENCY_GRID = tuple(round(0.70 + 0.02 * i, 2) for i in range(16))     # 0.70 .. 1.00


def _fit_alpha(runs: list[CaseRun], eff: float) -> dict:
    """Per operation, the start-up a >= 0 minimising sum log(pred / published)^2 (bounded scalar search)."""
    from scipy.optimize import minimize_scalar

    alpha = {}
    for op in OPS:
        mine = [r for r in runs if r.case.op == op]
        if not mine:
            alpha[op] = 0.0
            continue

        def loss(a, mine=mine):
            return sum(math.log(r.counted / (r.sim_s[eff] + a) / 1e9 / r.case.published_GBps) ** 2 for r in mine)

        best = minimize_scalar(loss, bounds=(0.0, 500e-6), method="bounded", options={"xatol": 1e-9})
        alpha[op] = float(best.x) if loss(best.x) <= loss(0.0) else 0.0
    return alpha


def _loss(runs, eff, alpha) -> float:
    return sum(math.log(r.counted / (r.sim_s[eff] + alpha[r.case.op]) / 1e9 / r.case.published_GBps) ** 2
               for r in runs)


def fit_calibration(runs: list[CaseRun], test_ids: set[str], grid: tuple | None = None) -> Calibration:
    """Per NIC family, independently: a grid over the NIC efficiency (default: the runs' simulated efficiencies;
    every run must hold a simulated time for each), start-ups per operation by bounded search; refuses any
    test case."""
    bad = [r.case.id for r in runs if r.case.id in test_ids]
    if bad:
        raise ValueError(f"fit_calibration: test or fresh (held-out) cases must never be fitted on: {', '.join(bad)}")
    if not runs:
        raise ValueError("fit_calibration: no fitting cases")
    grid = tuple(sorted(runs[0].sim_s)) if grid is None else tuple(grid)
    efficiency, alphas = {}, {}
    for family in sorted({r.case.nic_family for r in runs}):
        mine = [r for r in runs if r.case.nic_family == family]
        best = None
        for eff in grid:
            alpha = _fit_alpha(mine, eff)
            value = _loss(mine, eff, alpha)
            if best is None or value < best[0]:
                best = (value, eff, alpha)
        efficiency[family], alphas[family] = best[1], best[2]
    return Calibration(efficiency, alphas, tuple(r.case.id for r in runs), grid)


def _row(run: CaseRun, cal: Calibration, role: str) -> dict:
    pred = cal.predict_GBps(run.case, run.counted, run.sim_s)
    t = run.counted / pred / 1e9
    row = {"id": run.case.id, "role": role, "kind": run.case.kind, "op": run.case.op, "ep": run.case.ep,
           "nodes": run.case.nodes, "format": run.case.format, "counts": run.case.counts,
           "file": run.case.file, "source_group": source_group(run.case), "nic_family": run.case.nic_family,
           "topology": run.case.topology, "published_GBps": run.case.published_GBps,
           "predicted_GBps": pred, "rel_error": pred / run.case.published_GBps - 1.0,
           "predicted_us": t * 1e6, "counted_MB": run.counted / 1e6, "network_MB": run.network_bytes / 1e6,
           "source": run.case.source}
    if run.case.published_latency_us is not None:
        row["published_us"] = run.case.published_latency_us
    return row


def source_group(case: Case) -> str:
    """The source a case comes from, for reports: the file's `group`, else its file name up to the first '-'
    (deepep, uccl, ...)."""
    return case.group or case.file.split("-", 1)[0]


def _summary(rows: list[dict]) -> dict:
    errors = np.abs([r["rel_error"] for r in rows])
    return {"cases": len(rows), "median_abs_rel_error": float(np.median(errors)) if len(rows) else None,
            "max_abs_rel_error": float(errors.max()) if len(rows) else None}


def _choice_network_bytes(case: Case, traffic) -> np.ndarray:
    """(W,) bytes each rank sends to other nodes with one copy per (token, expert) (low-latency kernels)."""
    node = np.arange(case.ep) // case.gpus_per_node
    return (traffic.choice_traffic * (node[:, None] != node[None, :])).sum(axis=1)


def validate_published(folder: str | Path = PUBLISHED_DIR, *, seed: int = 0, leave_one_out: bool = True,
                       efficiency_grid: tuple | None = None, progress=None) -> dict:
    """Every case predicted against its published figure; the fit on the fitting cases only.

    Returns {"calibration", "rows" (fitting and test, each with rel_error = predicted / published - 1),
    "fitting", "test" (median and worst |error|), "leave_one_out" (each fitting case predicted by a fit
    without it)}.
    """
    grid = EFFICIENCY_GRID if efficiency_grid is None else tuple(float(e) for e in efficiency_grid)
    if not grid or any(not (0 < e <= 1) for e in grid):
        raise ValueError(f"efficiency_grid={grid!r} must hold NIC efficiencies in (0, 1]")
    cases = load_cases(folder)
    test_ids = load_split(folder, cases)
    fresh_ids = load_fresh(folder, cases)
    held_out = test_ids | fresh_ids
    runs = []
    for case in cases:
        traffic = case_traffic(case, seed)
        network = traffic.network_bytes(dedup=True) if case.kind == "normal" else _choice_network_bytes(case, traffic)
        run = CaseRun(case, float(counted_bytes(case, traffic).mean()), float(network.mean()))
        for eff in grid:
            run.sim_s[eff] = simulate_case(case, traffic, eff)
        runs.append(run)
        if progress is not None:
            progress(case.id)
    fitting = [r for r in runs if r.case.id not in held_out]
    cal = fit_calibration(fitting, held_out)
    role = lambda cid: "test" if cid in test_ids else "fresh" if cid in fresh_ids else "fitting"
    rows = [_row(r, cal, role(r.case.id)) for r in runs]
    nominal = {c.nic_family: _nic_nominal_Bps(c) for c in cases}
    out = {"calibration": {"nic_efficiency": cal.nic_efficiency,
                           "nic_Bps": {f: e * nominal[f] for f, e in cal.nic_efficiency.items()},
                           "alpha_s": cal.alpha_s, "fitted_on": list(cal.fitted_on),
                           "efficiency_grid": list(grid)},
           "rows": rows,
           "fitting": _summary([r for r in rows if r["role"] == "fitting"]),
           "test": _summary([r for r in rows if r["role"] == "test"]),
           "fresh": _summary([r for r in rows if r["role"] == "fresh"]),
           "by_source": {g: {role: _summary([r for r in rows if r["role"] == role and r["source_group"] == g])
                             for role in ("fitting", "test", "fresh")}
                         for g in sorted({r["source_group"] for r in rows})},
           "model": {"normal": f"node_dedup, {NORMAL_CHUNKS} chunks", "low_latency": "direct, one copy per (token, expert)",
                     "calibration": "per NIC family: NIC efficiency (grid) and one start-up per operation",
                     "seed": seed}}
    if leave_one_out:
        loo = []
        for r in fitting:
            rest = [x for x in fitting if x is not r]
            if not any(x.case.nic_family == r.case.nic_family for x in rest):
                continue                     # the only fitting case of its family: nothing to predict it with
            loo.append(_row(r, fit_calibration(rest, held_out), "leave-one-out"))
        out["leave_one_out"] = {**_summary(loo), "rows": loo,
                                "by_source": {g: _summary([x for x in loo if x["source_group"] == g])
                                              for g in sorted({x["source_group"] for x in loo})}}
    return out


def _nic_nominal_Bps(case: Case) -> float:
    """The NIC rate of the case's topology (inter.nic_gbps / 8), 0 on one node."""
    from lshsim.topology.spec import read_spec

    spec, _ = read_spec(case.topology)
    return float(spec["inter"]["nic_gbps"]) * 0.125e9 if "inter" in spec else 0.0
