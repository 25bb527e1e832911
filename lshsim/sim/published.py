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

Calibration (`Calibration`, `fit_calibration`), per NIC family (a case file's `nic_family`: ib for CX7 InfiniBand,
efa for UCCL-EP's CPU proxy over AWS EFA v2 and later, efa_v1 for the same over EFA v1 (p5), efa_nvshmem for DeepEP over
NVSHMEM's libfabric/EFA host proxy, efa_nccl and efa_v1_nccl for NCCL over aws-ofi-nccl on EFA v2+ / EFA v1, ib_nccl
for NCCL over its own InfiniBand-verbs transport on ConnectX NICs), each family on its own, on the FITTING cases only
(`split.yaml` names the test cases and the fresh held-out sets `fresh:` to `fresh20:`, no `fresh19:`; the fit refuses
all of them).
The predicted time of a case is

    t = t_sim(eff) + alpha[kind][op] + beta x m

- t_sim(eff): the simulated time with the NIC at eff x the topology's nic_gbps (NVLink at the topology's rate:
  H800 the source's stated ~160 GB/s; H100, H200, B200 the datasheet rate, an assumption).
- alpha[kind][op] (s, in [0, ALPHA_MAX_S]): a start-up per kernel kind; the low-latency kernels one per operation,
  the normal kernels ONE shared by dispatch and combine (alpha[normal][dispatch] = alpha[normal][combine]). Cause:
  the normal kernels (chunked RDMA -> NVLink forwarding, its pipeline fill and drain, the barrier at the kernel's
  start) and the low-latency kernels (one launch, no CPU sync) are different kernels with different fixed costs;
  a normal dispatch and a normal combine are the same pipeline run forwards and backwards. (Until the third round a
  normal start-up per operation was fitted; the ib family's combine one rested on ONE fitting case and came out
  0 us, while every seen ib normal combine but one was predicted too fast: the change was chosen on those seen
  errors, benchmarks/HISTORY.md says which.)
- beta x m (low-latency kernels only; beta in [0, MESSAGE_MAX_S] s per message): m = the mean over ranks of the
  messages a rank sends to other nodes, one per (token, expert) pair on a remote node (DeepEP's and UCCL-EP's
  low-latency kernels write each (token, expert) copy as its own RDMA write, no deduplication). Cause: a per-write
  issue cost (a work request posted by the GPU (IBGDA) or by UCCL-EP's CPU proxy over EFA), serialised per rank;
  m grows with the share of remote experts (1 - 1/nodes), so this cost grows with EP where one start-up cannot.
- eff (NIC efficiency): a grid (EFFICIENCY_GRID, 0.40-1.00), bounded BEFORE fitting by two physical limits: at most
  1 (line rate), and at least what the family's fitting cases demonstrate (`demonstrated_efficiency`: a rank's NIC
  carried at least its mean network bytes in the published time, so eff x line rate >= network bytes / time).
- UCCL-EP's normal combine on Hopper (`combine_limited`: nic_family efa or efa_v1, a topology whose GPU is an H100 /
  H200): t = max(t above, kernel_bytes / C[family]), kernel_bytes = the mean over ranks of the (token, source rank)
  pairs the rank's tokens come back from x hidden x 2 (what the combine's reduction reads). Cause (whn09/ep-benchmarks-efa
  uccl-ep-efa/README.md and INVESTIGATION_p5.md): "The bottleneck is in the normal combine *kernel* (reduction path), not
  the transport"; during combine each NIC runs at 14-24 of 100 Gb/s; UCCL-EP hard-codes kNumCombineForwarderWarps = 16
  (24 in DeepEP) because 24 overflows H100's shared memory, and reduces in software. C (B/s) is fitted BEFORE the rest,
  in closed form: the geometric mean of kernel_bytes / published time over the family's limited fitting cases
  (`combine_ceiling`); with none, no ceiling. On B200 / B300 the same kernel reaches 57-95 GB/s (no ceiling applied).
- `efa_v1` (a NIC family, data only): UCCL-EP's CPU proxy over EFA v1 (AWS p5, 32 x 100 Gb/s) calibrated apart from
  `efa` (EFA v2 and later): "UCCL's RDMA stack is much more sensitive to per-NIC bandwidth and EFA SRD HW generation",
  LL dispatch 3377 us on p5 vs 207 us on p5en for the same test, "~3250 us is CPU proxy thread coordination"
  (INVESTIGATION_p5.md, Hypothesis 5), per-NIC 63 Gb/s of 100 in dispatch (Hypothesis 3).

Plain all-to-all (kind `alltoall`, since a2a14g): nccl-tests' alltoall_perf rows. A case gives `size_bytes` (the 'size'
column: the bytes each rank sends in all, size / ranks to every rank, itself included) and the published busbw
(algbw = size / time, busbw = algbw x (n - 1) / n: the bytes a rank sends to the n - 1 others / time). The traffic is
the even matrix (`UniformTraffic`), simulated as a direct all-to-all on the case's topology (`estimate_all_to_all`);
t = t_sim(eff) + L + (a + g x p) x s / (s + S0), p = a rank's remote peers (ranks on other nodes), s = the bytes a rank
sends (the case's size), a = alpha[alltoall] in [0, ALPHA_MAX_S], g in [0, PEER_MAX_S], L in [0, FLOOR_MAX_S], S0 in
RAMP_BYTES_BOUNDS (`_fit_alltoall`). Since the eleventh session (2026-12-03) the cost per remote peer ramps in with the
size as the start-up does (the form "floorg"; the tenth session's "floor", L + a s / (s + S0) + g p, kept g at every
size and made fresh17's 2-rank small all-to-alls 38% too fast: published small all-to-alls take 24-45 us whatever the
rank count); it was chosen again with fresh17's 10 rows added as calibration points, by the rule written in
benchmarks/eval_a2a_size_terms.py before that run. Since the tenth session the start-up a ramps in with the size and a
latency floor L sits under it: until then t = t_sim + a + g x p, with a fitted on rows of 32 MiB or more, made every
published all-to-all below ~16 MiB 5-12x too slow (fresh12, fresh15, fresh16: the start-up the large rows carry is a
ramp, not a latency; measured small all-to-alls take 24-45 us flat). The form was chosen among nine
(benchmarks/eval_a2a_size_terms.py --small-fitting) on the fitting rows plus the 41 rows below 32 MiB of the seen sets
fresh12, fresh15 and fresh16, made calibration points (split.yaml); a family with no fitting row below 32 MiB
gets L and S0 all the same, unsupported by data there (its small predictions are flagged as outside the fitting
sizes). Cause of g: NCCL's alltoall is one ncclSend / ncclRecv per peer, each remote peer its own network
connection served by NCCL's CPU proxy thread through aws-ofi-nccl (libfabric/EFA), so a per-peer cost grows with the
fan-out where one start-up cannot. Its NIC families: `efa_nccl` (NCCL over aws-ofi-nccl on EFA v2 and later, AWS
p6-b300) and `efa_v1_nccl` (the same over EFA v1, AWS p5, 32 x 100 Gb/s), apart from UCCL-EP's proxy (efa, efa_v1) and
NVSHMEM's (efa_nvshmem): another software stack on the same NICs, and calibrated per NIC generation as UCCL-EP's is.
Since a2a14m also `ib_nccl`: NCCL over its own InfiniBand-verbs transport on ConnectX-class NICs (IB or RoCE), one
400 Gb/s NIC per GPU (an H100 cluster, 1-8 GPUs per node); the same model, its own calibration.
The fit: for each allowed eff, the start-ups (and beta) minimise a robust loss of log(predicted / published)
(soft L1 with scale ROBUST_SCALE = 0.1: errors beyond ~10% count linearly, so a figure held down by a software limit
no network model has, like UCCL-EP's p5en combine, does not drag the others); the eff with the least loss wins.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lshsim import bounds
from lshsim.readers import load_yaml as read_yaml
from lshsim.sim.dispatch_formats import PIPELINE_CHUNKS, bytes_per_token, node_dedup_traffic

__all__ = ["Case", "load_cases", "load_split", "load_fresh", "FRESH_SETS", "deepep_routing", "case_traffic", "routing_key",
           "routing_counts", "counted_bytes", "simulate_case",
           "Calibration", "fit_calibration", "validate_published", "source_group", "PUBLISHED_DIR", "NORMAL_CHUNKS",
           "combine_limited", "combine_ceiling", "UniformTraffic", "alltoall_per_peer_bytes"]

#: the folder of the published cases in a source checkout
PUBLISHED_DIR = Path(__file__).resolve().parents[2] / "data" / "published"
#: chunks of DeepEP's pipelined RDMA -> NVLink forwarding in the model (its tests tune chunks of 4-44 tokens); the
#: planner's too (`lshsim.sim.dispatch_formats.PIPELINE_CHUNKS`, 8)
NORMAL_CHUNKS = PIPELINE_CHUNKS
KINDS = ("normal", "low_latency", "alltoall")
#: the kernel kinds of a token workload (DeepEP-style dispatch / combine); `alltoall` is a plain all-to-all
TOKEN_KINDS = ("normal", "low_latency")
#: nccl-tests' element size when no -d is given (float)
ALLTOALL_ELEMENT_BYTES = 4
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
    size_bytes: int | None = None         # kind alltoall: nccl-tests' size (bytes each rank sends in all)
    element_bytes: int = ALLTOALL_ELEMENT_BYTES   # kind alltoall: the element size (nccl-tests' -d)

    @property
    def gpus_per_node(self) -> int:
        return self.ep // self.nodes

    @property
    def topology(self) -> str:
        """The case's topology name (data/topologies/<name>.yaml): the file's `topology` template."""
        return self.topology_template.format(nodes=self.nodes, gpus_per_node=self.gpus_per_node)


def _field(value, where: str, kind, check=None, why: str = ""):
    """`value` if of `kind` and `check` holds, and within the plausibility limit of its field's kind
    (`lshsim.bounds`: ep, nodes, tokens, hidden, experts, sizes, latencies), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, kind) or (check is not None and not check(value)):
        raise ValueError(f"{where}={value!r} {why}".rstrip())
    return bounds.check_field(where, value)


#: the top-level fields of a published-case file (anything else, e.g. a typo of topology, is refused)
PUBLISHED_FIELDS = ("source", "group", "topology", "nic_family", "hardware", "bandwidth_definition", "workload", "cases")
#: the fields of a case of kind normal or low_latency (a plain all-to-all's: `_alltoall_case`)
TOKEN_CASE_FIELDS = ("id", "kind", "ep", "nodes", "op", "format", "published_GBps", "counts", "published_latency_us")
#: the fields of a file's workload block: those the model reads (tokens_per_rank, hidden, top_k, experts or
#: experts_per_rank, topk_groups, masked_choices, *_metadata_bytes) and those that only describe the source's run
#: (routing, dispatch_format, combine_format: each case gives its own format; capacity)
WORKLOAD_FIELDS = ("tokens_per_rank", "hidden", "top_k", "experts", "experts_per_rank", "topk_groups", "masked_choices",
                   "dispatch_metadata_bytes", "combine_metadata_bytes", "routing", "dispatch_format", "combine_format",
                   "capacity")
#: the largest published bandwidth a case may state, GB/s per GPU (above any link: a typo or a unit error)
PUBLISHED_MAX_GBPS = bounds.maximum("published_GBps")     # 1e4, lshsim.bounds


def load_cases(folder: str | Path = PUBLISHED_DIR) -> list[Case]:
    """Every case of every `*.yaml` in `folder` but split.yaml; errors name the file, field and value."""
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"{folder}: is a file; --published takes the folder of the case files and its split.yaml")
    if not folder.exists():
        raise ValueError(f"{folder}: no such folder of published cases")
    files = sorted(p for p in folder.glob("*.yaml") if p.name != "split.yaml")
    if not files:
        raise ValueError(f"{folder}: no case files (*.yaml)")
    cases, seen = [], {}
    shapes = {}         # topology name -> (nodes, gpus_per_node): each topology file read once per call
    for path in files:
        doc = read_yaml(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list) or not doc["cases"]:
            raise ValueError(f"{path.name}: cases must be a non-empty list")
        unknown = sorted((key for key in doc if key not in PUBLISHED_FIELDS), key=str)
        if unknown:     # a typo of topology or nic_family fell back to the default silently
            raise ValueError(f"{path.name}: {unknown[0]}={doc[unknown[0]]!r:.60} is not a known field; known: "
                             f"{', '.join(PUBLISHED_FIELDS)}")
        for i, raw in enumerate(doc["cases"]):  # the kinds first: they decide whether the file needs a workload
            if not isinstance(raw, dict):       # (a list read as a file without a workload before)
                raise ValueError(f"{path.name}: cases[{i}]={raw!r:.60} must be a mapping (id, kind, ep, nodes, ...)")
            _field(raw.get("kind"), f"{path.name}: cases[{i}].kind", str, lambda v: v in KINDS,
                   f"must be one of {KINDS}")
        workload = doc.get("workload")
        if all(isinstance(raw, dict) and raw.get("kind") == "alltoall" for raw in doc["cases"]):
            if workload is not None:     # a plain all-to-all moves size_bytes per rank: no tokens, experts or routing
                raise ValueError(f"{path.name}: workload={workload!r}: a file of plain all-to-all cases (kind alltoall) "
                                 f"has no token workload; give each case its size_bytes")
            workload = {}
        else:
            if not isinstance(workload, dict):
                raise ValueError(f"{path.name}: workload={workload!r:.60} must be a mapping (tokens_per_rank, hidden, "
                                 f"top_k) for the cases of kind normal or low_latency")
            for key in ("tokens_per_rank", "hidden", "top_k"):
                _field(workload.get(key), f"{path.name}: workload.{key}", int, lambda v: v >= 1,
                       "must be an integer >= 1")
            extra = sorted((key for key in workload if key not in WORKLOAD_FIELDS), key=str)
            if extra:       # a typo (`expert: 128`, `topk_group: 2`) fell back to the default silently
                raise ValueError(f"{path.name}: workload.{extra[0]}={workload[extra[0]]!r:.60} is not a known field; "
                                 f"known: {', '.join(WORKLOAD_FIELDS)}")
            _check_workload(workload, path.name)
        if doc.get("source") is not None and not isinstance(doc["source"], dict):   # .get on text: a traceback
            raise ValueError(f"{path.name}: source={doc['source']!r} must be a mapping with url (an https URL)")
        source = (doc.get("source") or {}).get("url")
        _field(source, f"{path.name}: source.url", str, lambda v: v.startswith("https://"), "must be an https URL")
        template = _field(doc.get("topology", DEFAULT_TOPOLOGY), f"{path.name}: topology", str,
                          lambda v: "{nodes}" in v, "must be a topology name holding {nodes}, e.g. "
                          "'published/h800-ib-{nodes}x8'")
        try:        # any other {field} or a lone brace: a KeyError traceback, or a line naming no file
            template.format(nodes=1, gpus_per_node=1)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"{path.name}: topology={template!r} is not a usable name template ({error!s}): write "
                             f"{{nodes}} and {{gpus_per_node}} only, e.g. 'published/h800-ib-{{nodes}}x8'") from None
        family = _field(doc.get("nic_family", "ib"), f"{path.name}: nic_family", str,
                        lambda v: v.isidentifier(), "must be a short name (letters, digits, _), e.g. ib or efa")
        group = doc.get("group")
        if group is not None:
            _field(group, f"{path.name}: group", str, lambda v: bool(v) and all(c.isalnum() or c in "-_." for c in v),
                   "must be a short name (letters, digits, -, _, .), e.g. deepep-v2")
        for i, raw in enumerate(doc["cases"]):
            where = f"{path.name}: cases[{i}]"
            cid = _field(raw.get("id"), f"{where}.id", str, bool, "must be a non-empty string")
            if cid in seen:
                raise ValueError(f"{where}.id={cid!r} is already used in {seen[cid]}")
            seen[cid] = path.name
            kind = _field(raw.get("kind"), f"{where}.kind", str, lambda v: v in KINDS, f"must be one of {KINDS}")
            extra = sorted((key for key in raw if key not in TOKEN_CASE_FIELDS), key=str)
            if kind != "alltoall" and extra:   # a typo (published_latncy_us) was ignored: the case read without it
                raise ValueError(f"{where}.{extra[0]}={raw[extra[0]]!r:.60}: not a field of a {kind} case (fields: "
                                 f"{', '.join(TOKEN_CASE_FIELDS)})")
            ep = _field(raw.get("ep"), f"{where}.ep", int, lambda v: v >= 2, "must be an integer >= 2")
            nodes = _field(raw.get("nodes"), f"{where}.nodes", int, lambda v: v >= 1 and ep % v == 0,
                           f"must be an integer >= 1 dividing ep={ep}")
            if kind == "alltoall":
                case = _alltoall_case(raw, where, cid, ep, nodes, source, path.name, template, family, group)
                _check_topology(case, f"{path.name}: topology", shapes)
                cases.append(case)
                continue
            op = _field(raw.get("op"), f"{where}.op", str, lambda v: v in OPS, f"must be one of {OPS}")
            fmt = _field(raw.get("format"), f"{where}.format", str, lambda v: v in ("bf16", "fp8"), "must be bf16 or fp8")
            figure = _field(raw.get("published_GBps"), f"{where}.published_GBps", (int, float),
                            lambda v: math.isfinite(v) and 0 < v <= PUBLISHED_MAX_GBPS,
                            f"must be a number > 0 and <= {PUBLISHED_MAX_GBPS:g} GB/s")
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
            _check_experts(case, where)
            _check_topology(case, f"{path.name}: topology", shapes)
            cases.append(case)
    return cases


def _alltoall_case(raw: dict, where: str, cid: str, ep: int, nodes: int, source: str, file: str, template: str,
                   family: str, group: str | None) -> Case:
    """A plain all-to-all case (kind alltoall, nccl-tests' alltoall_perf): size_bytes (the 'size' column: the bytes
    each rank sends in all, split evenly over all ranks, itself included), published_GBps (nccl-tests' busbw),
    optional element_bytes (nccl-tests' -d: 4 for its default float), op alltoall and counts busbw if given."""
    allowed = {"id", "kind", "ep", "nodes", "size_bytes", "published_GBps", "element_bytes", "op", "counts"}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ValueError(f"{where}.{extra[0]}={raw[extra[0]]!r}: not a field of an alltoall case (fields: "
                         f"{', '.join(sorted(allowed))})")
    _field(raw.get("op", "alltoall"), f"{where}.op", str, lambda v: v == "alltoall", "must be alltoall (or left out)")
    _field(raw.get("counts", "busbw"), f"{where}.counts", str, lambda v: v == "busbw",
           "must be busbw (or left out): nccl-tests' bus bandwidth")
    element = _field(raw.get("element_bytes", ALLTOALL_ELEMENT_BYTES), f"{where}.element_bytes", int,
                     lambda v: v in (1, 2, 4, 8), "must be 1, 2, 4 or 8 (nccl-tests' -d data type)")
    size = _field(raw.get("size_bytes"), f"{where}.size_bytes", int, lambda v: v >= ep * element,
                  f"must be an integer >= ep x element_bytes = {ep * element} (at least one element per rank pair)")
    figure = _field(raw.get("published_GBps"), f"{where}.published_GBps", (int, float),
                    lambda v: math.isfinite(v) and 0 < v <= PUBLISHED_MAX_GBPS,
                    f"must be a number > 0 and <= {PUBLISHED_MAX_GBPS:g} GB/s")
    return Case(cid, "alltoall", ep, nodes, "alltoall", "none", float(figure), "busbw", {}, source, file, None,
                template, family, group, size, element)


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


def _check_experts(case: Case, where: str) -> None:
    """A token case's experts (`_experts`: DeepEP's tests round them down to a multiple of the ranks) must give every
    rank one and hold top_k: `experts: 4` at ep 16 became 16 experts silently, top_k 300 of 256 a numpy error."""
    at = where.split(": ", 1)[-1]         # cases[i]
    given = case.workload.get("experts")
    if given is not None and given < case.ep:
        raise ValueError(f"{case.file}: workload.experts={given!r} is fewer than {at}.ep={case.ep} (case {case.id}): "
                         f"every rank holds at least one expert")
    experts = _experts(case)
    if case.workload["top_k"] > experts:
        raise ValueError(f"{case.file}: workload.top_k={case.workload['top_k']!r} exceeds the {experts} experts of "
                         f"{at} (case {case.id}, ep={case.ep})")


def _check_topology(case: Case, where: str, shapes: dict | None = None) -> None:
    """The case's topology must load and hold ep GPUs in nodes x gpus_per_node. `shapes`: topology name ->
    (nodes, gpus_per_node) of the topologies already read (filled here; a topology that does not load is never in
    it, so every case naming it is refused as the first one was)."""
    from lshsim.topology.spec import read_spec

    name = case.topology
    if shapes is None or name not in shapes:
        try:
            spec, _ = read_spec(name)
        except (KeyError, IndexError, ValueError, OSError) as error:
            raise ValueError(f"{where}={case.topology_template!r} (case {case.id}): {error}") from None
        shape = (spec.get("nodes"), spec.get("gpus_per_node"))
        if shapes is not None:
            shapes[name] = shape
    else:
        shape = shapes[name]
    if shape != (case.nodes, case.gpus_per_node):
        raise ValueError(f"{where}={case.topology_template!r} (case {case.id}): {name} has nodes={shape[0]}, "
                         f"gpus_per_node={shape[1]}, the case needs {case.nodes} x {case.gpus_per_node}")


def load_split(folder: str | Path = PUBLISHED_DIR, cases: list[Case] | None = None) -> set[str]:
    """The test case ids of `folder/split.yaml`, each checked against the cases."""
    folder = Path(folder)
    path = folder / "split.yaml"
    doc = read_yaml(path)
    test = doc.get("test") if isinstance(doc, dict) else None
    if not isinstance(test, list) or not test:
        raise ValueError(f"{path.name}: test must be a non-empty list of case ids")
    unknown = sorted((key for key in doc if key != "test" and key not in FRESH_SETS), key=str)
    if unknown:     # a held-out set under a name no reader knows: its cases would be fitted on
        raise ValueError(f"{path.name}: {unknown[0]}={doc[unknown[0]]!r:.60} is not a held-out set of split.yaml; "
                         f"known: test, {', '.join(FRESH_SETS)} (the cases of any other key would be fitted on)")
    known = {c.id for c in (load_cases(folder) if cases is None else cases)}
    for i, cid in enumerate(test):
        if not isinstance(cid, str) or cid not in known:    # a list: unhashable (a traceback)
            raise ValueError(f"{path.name}: test[{i}]={cid!r} is not a case id")
        if cid in test[:i]:
            raise ValueError(f"{path.name}: test[{i}]={cid!r} is listed twice (first at test[{test.index(cid)}])")
    return set(test)


#: the fresh held-out sets of split.yaml, in the order they were added: each committed before any prediction of its
#: cases (and before the model change that followed it); never fitted on
FRESH_SETS = ("fresh", "fresh2", "fresh3", "fresh4", "fresh5", "fresh6", "fresh7", "fresh8", "fresh9",
              "fresh10", "fresh11", "fresh12", "fresh13", "fresh14", "fresh15", "fresh16", "fresh17",
              "fresh18", "fresh20")


def load_fresh(folder: str | Path = PUBLISHED_DIR, cases: list[Case] | None = None, key: str = "fresh") -> set[str]:
    """The ids of one fresh held-out set of `folder/split.yaml` (`key`: one of FRESH_SETS, optional): committed
    before a model change and never fitted on; each checked against the cases, the test list and the other fresh sets
    (a case is in one set only)."""
    if key not in FRESH_SETS:
        raise ValueError(f"load_fresh: key={key!r} must be one of {FRESH_SETS}")
    folder = Path(folder)
    path = folder / "split.yaml"
    doc = read_yaml(path)
    fresh = doc.get(key, []) if isinstance(doc, dict) else []
    if fresh is None or not isinstance(fresh, list):
        raise ValueError(f"{path.name}: {key} must be a list of case ids")
    known = {c.id for c in (load_cases(folder) if cases is None else cases)}
    test = {cid for cid in doc.get("test") or [] if isinstance(cid, str)}
    others = {other: {cid for cid in doc.get(other) or [] if isinstance(cid, str)} for other in FRESH_SETS if other != key}
    for i, cid in enumerate(fresh):
        if not isinstance(cid, str) or cid not in known:
            raise ValueError(f"{path.name}: {key}[{i}]={cid!r} is not a case id")
        if cid in fresh[:i]:
            raise ValueError(f"{path.name}: {key}[{i}]={cid!r} is listed twice (first at {key}[{fresh.index(cid)}])")
        if cid in test:
            raise ValueError(f"{path.name}: {key}[{i}]={cid!r} is also a test case")
        for other, ids in others.items():
            if cid in ids:
                raise ValueError(f"{path.name}: {key}[{i}]={cid!r} is also in {other}")
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


@dataclass(frozen=True)
class UniformTraffic:
    """A plain all-to-all's traffic (kind alltoall): every rank sends `per_peer_bytes` to every rank, itself included
    (nccl-tests' alltoall_perf: one ncclSend / ncclRecv per rank of size / ranks; the copy to itself is not
    simulated)."""

    traffic: np.ndarray               # (W, W) bytes, per_peer_bytes everywhere
    per_peer_bytes: int


def alltoall_per_peer_bytes(case: Case) -> int:
    """nccl-tests' bytes per (rank, peer) of an alltoall case: count = size / element, count / ranks elements each
    (src/alltoall.cu, AlltoAllGetCollByteCount: paramcount = count / nranks)."""
    return (case.size_bytes // case.element_bytes // case.ep) * case.element_bytes


def routing_key(case: Case, seed: int = 0) -> tuple | None:
    """What the routing draw of `case_traffic` depends on (None for a plain all-to-all, which draws nothing): tokens
    per rank, top-k, experts, nodes, node-limited groups, masked choices, ranks, GPUs per node, seed. Cases of one
    key (a kernel's dispatch and combine, its bf16 and fp8 dispatch) route the same tokens; only their bytes per
    token differ."""
    if case.kind == "alltoall":
        return None
    w = case.workload
    groups = None
    if case.kind == "normal" and w.get("topk_groups") != "none":
        groups = min(case.nodes, 4) if w.get("topk_groups") in (None, "min(nodes, 4)") else int(w["topk_groups"])
    return (int(w["tokens_per_rank"]), int(w["top_k"]), _experts(case), case.nodes, groups,
            int(w.get("masked_choices", 0)), case.ep, case.gpus_per_node, int(seed))


def routing_counts(case: Case, seed: int = 0):
    """The token counts of a case's routing (`routing_key`) as a `DedupTraffic` of 1 byte per token."""
    tokens, top_k, experts, nodes, groups, masked, ep, gpus_per_node, seed = routing_key(case, seed)
    idx = np.concatenate([deepep_routing(r, tokens, experts, nodes, top_k, groups, seed, masked)
                          for r in range(ep)])
    src = np.repeat(np.arange(ep), tokens)
    return node_dedup_traffic(idx, src, expert_rank=np.arange(experts) // (experts // ep),
                              gpus_per_node=gpus_per_node, world=ep, bytes_per_token=1.0)


def case_traffic(case: Case, seed: int = 0, counts=None):
    """The `DedupTraffic` of a case's routing (one copy per token in `bytes_per_token` of its format); for a plain
    all-to-all (kind alltoall) its `UniformTraffic` (no draw: `seed` is not used). `counts`: the case's
    `routing_counts(case, seed)` if already drawn (for a case of the same `routing_key`)."""
    if case.kind == "alltoall":
        per_peer = alltoall_per_peer_bytes(case)
        return UniformTraffic(np.full((case.ep, case.ep), float(per_peer)), per_peer)
    w = case.workload
    counts = routing_counts(case, seed) if counts is None else counts
    metadata = 16 if (case.kind == "low_latency" and case.format == "fp8") else 0
    metadata = int(w.get(f"{case.op}_metadata_bytes", metadata))     # bytes per token beside the values
    bpt = bytes_per_token(case.format, w["hidden"], metadata_bytes=metadata)
    return dataclasses.replace(counts, bytes_per_token=float(bpt))


def counted_bytes(case: Case, traffic) -> np.ndarray:
    """(W,) the bytes each rank's figure counts, under the source's definition (data/published/*.yaml). A plain
    all-to-all's busbw (nccl-tests: algbw = size / time, busbw = algbw x (n - 1) / n) counts the bytes a rank sends to
    the n - 1 other ranks: per_peer x (n - 1)."""
    if case.kind == "alltoall":
        return np.full(case.ep, float(traffic.per_peer_bytes * (case.ep - 1)))
    if case.counts == "rdma":          # (token, node) pairs, own node included
        return traffic.node_bytes.sum(axis=1)
    if case.counts == "nvlink":        # tokens received, one per (token, rank), own included
        return traffic.traffic.sum(axis=0)
    return traffic.choice_traffic.sum(axis=1)    # low latency: (token, expert) pairs


#: `simulate_case(..., cached=True)` (`validate_published`'s simulations; it clears both at its start and end, its
#: spawned workers start empty): topology name -> its spec and file name (read once, not once per simulation: parsing
#: the YAML was ~7% of the run), and the built graph and routes of the last TOPOLOGY_CACHE_SIZE (name, NIC efficiency)
#: (~4%); the simulations only read them
_SPECS: dict = {}
_GRAPHS: dict = {}
TOPOLOGY_CACHE_SIZE = 64


def clear_topology_cache() -> None:
    """Forget the topologies `simulate_case` read and built (a topology file may change between calls)."""
    _SPECS.clear()
    _GRAPHS.clear()


def _case_topology(name: str, nic_efficiency: float, cached: bool = False):
    """(G, routes) of topology `name` with its NIC at `nic_efficiency` x the spec's nic_gbps (`cached`: see _SPECS)."""
    import copy

    from lshsim.topology import build_topology
    from lshsim.topology.routing import validate_topology
    from lshsim.topology.spec import read_spec

    key = (name, float(nic_efficiency))
    if not cached:
        spec, source = read_spec(name)
    elif key in _GRAPHS:
        _GRAPHS[key] = _GRAPHS.pop(key)              # the most recently used last
        return _GRAPHS[key]
    else:
        if name not in _SPECS:
            _SPECS[name] = read_spec(name)
        spec, source = _SPECS[name]
    spec = copy.deepcopy(spec)                       # build_topology gets a spec of its own, as when read afresh
    if "inter" in spec:           # the efficiency scales the spec's own NIC rate (inter.nic_gbps)
        nominal = float(spec["inter"]["nic_gbps"]) * 0.125e9
        spec["calibration"] = {**(spec.get("calibration") or {}), "nic_Bps": float(nic_efficiency) * nominal}
    G = build_topology(spec, source=source)
    if not cached:
        return G, validate_topology(G)
    _GRAPHS[key] = (G, validate_topology(G))
    while len(_GRAPHS) > TOPOLOGY_CACHE_SIZE:
        _GRAPHS.pop(next(iter(_GRAPHS)))
    return _GRAPHS[key]


def simulate_case(case: Case, traffic, nic_efficiency: float, *, topology_dir: str | Path | None = None,
                  cached: bool = False) -> float:
    """Predicted seconds of the case's kernel without its start-up latency (alpha_s = 0). `cached`: the topology read
    and built once per (name, efficiency) in this process (see _SPECS; the same numbers)."""
    from lshsim.sim.collectives import estimate_all_to_all, simulate_all_to_all

    name = case.topology if topology_dir is None else str(Path(topology_dir) / f"{case.topology.split('/')[-1]}.yaml")
    G, routes = _case_topology(name, nic_efficiency, cached)
    if case.kind == "normal":
        options = {"local_copy": False, "alpha_s": 0.0}
        result = simulate_all_to_all(G, traffic.traffic, "node_dedup", node_bytes=traffic.node_bytes, routes=routes,
                                     chunks=NORMAL_CHUNKS if case.nodes > 1 else 1, combine=case.op == "combine",
                                     **options)
        return float(result.time_s)
    elif case.kind == "alltoall":
        # nccl-tests' alltoall: one direct send per (rank, peer), all at once; the even matrix on the case's topology
        # from link loads (`estimate_all_to_all`: exact when the busiest resource stays saturated, as an even matrix
        # on NVSwitch nodes and a non-blocking fat-tree keeps it; tests/test_published.py checks it by hand)
        return estimate_all_to_all(G, traffic.traffic, routes=routes, local_copy=False)
    else:
        matrix = traffic.choice_traffic
        # the direct all-to-all from link loads: a lower bound of the flow simulation, exact when the
        # busiest resource stays saturated (tests/test_estimate.py); the flow simulation of 128 GPUs
        # with random per-pair sizes takes minutes (337 s measured), this one pass well under a second
        return estimate_all_to_all(G, matrix.T if case.op == "combine" else matrix, routes=routes,
                                   local_copy=False)


@dataclass(frozen=True)
class Calibration:
    """Per NIC family (the case file's `nic_family`): the NIC efficiency (of the topology's nic_gbps), the start-up
    per (kernel kind, operation) (s; the normal kernels' two are one fitted value), the cost per network message of the low-latency kernels (s), the efficiency
    floor the fitting cases demonstrate, and the cases they were fitted on."""

    nic_efficiency: dict                  # family -> efficiency
    alpha_s: dict                         # family -> {kind: {op: seconds}}
    message_s: dict = field(default_factory=dict)            # family -> seconds per message (low-latency kernels)
    efficiency_floor: dict = field(default_factory=dict)     # family -> lower bound of the efficiency
    fitted_on: tuple = ()
    grid: tuple = ()
    combine_Bps: dict = field(default_factory=dict)          # family -> UCCL-EP's Hopper normal-combine ceiling (B/s)
    alltoall_peer_s: dict = field(default_factory=dict)      # family -> seconds per remote peer (plain all-to-all)
    alltoall_floor_s: dict = field(default_factory=dict)     # family -> the plain all-to-all's latency floor L (s)
    alltoall_ramp_bytes: dict = field(default_factory=dict)  # family -> S0 (bytes per rank) of its start-up's ramp

    def time_s(self, run: "CaseRun") -> float:
        """The predicted seconds of a run: simulated time at the family's efficiency + start-up + messages."""
        case = run.case
        family = case.nic_family
        if family not in self.nic_efficiency:
            raise ValueError(f"case {case.id}: nic_family={family!r} has no fitting case, so no calibration "
                             f"(fitted families: {', '.join(sorted(self.nic_efficiency))})")
        eff = self.nic_efficiency[family]
        if eff not in run.sim_s:
            raise ValueError(f"case {case.id}: no simulated time at NIC efficiency {eff} (simulated: "
                             f"{', '.join(str(e) for e in sorted(run.sim_s))})")
        alpha = self.alpha_s[family].get(case.kind, {}).get(case.op, 0.0)
        if case.kind == "alltoall":               # floor + (start-up + cost per remote peer) ramped (`_fit_alltoall`)
            return alltoall_time_s(run.sim_s[eff], float(case.size_bytes), run.messages, alpha,
                                   self.alltoall_peer_s.get(family, 0.0), self.alltoall_floor_s.get(family, 0.0),
                                   self.alltoall_ramp_bytes.get(family, 0.0))
        t = run.sim_s[eff] + alpha + self.message_s.get(family, 0.0) * run.messages
        return _ceiling(run, t, self.combine_Bps.get(family))

    def predict_GBps(self, run: "CaseRun") -> float:
        return run.counted / self.time_s(run) / 1e9


@dataclass
class CaseRun:
    case: Case
    counted: float                                    # mean over ranks of the counted bytes
    network_bytes: float                              # mean over ranks of the bytes sent to other nodes
    sim_s: dict = field(default_factory=dict)         # nic efficiency -> simulated seconds (no start-up)
    messages: float = 0.0                             # low latency: mean over ranks of the messages to other nodes;
                                                      # alltoall: the remote peers of a rank
    nic_gpu_Bps: float = 0.0                          # the line rate of one GPU's NICs (0: one node)
    kernel_bytes: float = 0.0                         # mean over ranks of the (token, source rank) pair bytes
    limited: bool = False                             # combine_limited(case)


#: NIC efficiencies the fit may try, 0.40 .. 1.00; a family's fit only uses those >= its demonstrated floor
EFFICIENCY_GRID = tuple(round(0.40 + 0.02 * i, 2) for i in range(31))
#: bounds of the fitted start-ups and of the per-message cost (s)
ALPHA_MAX_S = 500e-6
MESSAGE_MAX_S = 5e-6
#: bound of the plain all-to-all's cost per remote peer (s)
PEER_MAX_S = 50e-6
#: bound of the plain all-to-all's latency floor (s); bounds of its start-up's ramp S0 (bytes per rank)
FLOOR_MAX_S = 100e-6
RAMP_BYTES_BOUNDS = (64e3, 16e9)


def alltoall_time_s(sim_s: float, size_bytes: float, peers: float, alpha: float, peer_s: float, floor_s: float,
                    ramp_bytes: float) -> float:
    """A plain all-to-all's predicted seconds: t_sim + L + (a + g x p) x s / (s + S0) (the module docstring). With
    S0 = 0 (and L = 0) it is the constant start-up a + g x p of the model before the tenth session.

    >>> round(alltoall_time_s(100e-6, 1 << 20, 8, 300e-6, 2e-6, 20e-6, 1 << 20) * 1e6, 6)
    278.0
    """
    ramp = size_bytes / (size_bytes + ramp_bytes) if ramp_bytes > 0 else 1.0
    return sim_s + floor_s + (alpha + peer_s * peers) * ramp


def demonstrated_efficiency(runs: list["CaseRun"]) -> dict:
    """Per NIC family, the lowest NIC efficiency the runs' own published figures allow: a rank's NIC(s) carried at
    least its mean network bytes in the published time, so eff x line rate >= network bytes / published time
    (the busiest NIC carries at least the mean). Runs on one node (no NIC) give no bound."""
    floor = {}
    for r in runs:
        if r.nic_gpu_Bps <= 0 or r.network_bytes <= 0:
            continue
        t_published = r.counted / (r.case.published_GBps * 1e9)
        shown = r.network_bytes / t_published / r.nic_gpu_Bps
        floor[r.case.nic_family] = max(floor.get(r.case.nic_family, 0.0), shown)
    return floor


#: the scale of the robust fit's loss: log errors below ~10% count quadratically, larger ones about linearly
ROBUST_SCALE = 0.1


#: GPUs on which UCCL-EP's normal combine is held by its kernel (Hopper; `combine_limited`)
HOPPER_GPUS = ("h100", "h200", "h800", "h20")
#: NIC families of UCCL-EP's own CPU proxy (over EFA v2+ and over EFA v1)
UCCL_FAMILIES = ("efa", "efa_v1")


def _gpu_name(case: Case) -> str:
    from lshsim.topology.spec import read_spec

    spec, _ = read_spec(case.topology)
    gpu = spec.get("gpu")
    if isinstance(gpu, dict):
        gpu = gpu.get("name") or gpu.get("base")
    return str(gpu or "").lower()


def combine_limited(case: Case) -> bool:
    """UCCL-EP's normal combine on a Hopper GPU (module docstring): nic_family efa or efa_v1, normal kernel, combine, more
    than one node, the topology's GPU an H100 / H200."""
    return (case.nic_family in UCCL_FAMILIES and case.kind == "normal" and case.op == "combine" and case.nodes > 1
            and _gpu_name(case) in HOPPER_GPUS)


def _ceiling(run: "CaseRun", t: float, combine_Bps: float | None) -> float:
    """t, or kernel_bytes / combine_Bps if the run is combine-limited and that is longer."""
    if run.limited and combine_Bps:
        return max(t, run.kernel_bytes / combine_Bps)
    return t


def combine_ceiling(runs: list["CaseRun"]) -> float | None:
    """UCCL-EP's Hopper normal-combine ceiling (B/s) from the limited runs: the geometric mean of kernel_bytes / published
    time (the throughput each published figure shows on the combine's reduction input); None without limited runs."""
    shown = [r.kernel_bytes / (r.counted / (r.case.published_GBps * 1e9)) for r in runs if r.limited]
    return float(math.exp(np.mean(np.log(shown)))) if shown else None


def _log_error(run: CaseRun, t: float) -> float:
    return math.log(run.counted / t / 1e9 / run.case.published_GBps)


def _robust(errors) -> float:
    """sum of ROBUST_SCALE^2 x rho((e / ROBUST_SCALE)^2), rho(z) = 2 (sqrt(1 + z) - 1) (soft L1, scipy's least_squares
    loss='soft_l1' with f_scale=ROBUST_SCALE): a published figure the network model cannot follow (a software limit)
    pulls the fit linearly, not quadratically."""
    z = np.square(np.asarray(errors, dtype=float) / ROBUST_SCALE)
    return float(ROBUST_SCALE ** 2 * np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)))


def _fit_normal(runs: list[CaseRun], eff: float, combine_Bps: float | None = None) -> tuple[dict, float]:
    """Normal kernels: ONE start-up a in [0, ALPHA_MAX_S], shared by dispatch and combine, minimising the robust loss
    (`_robust`) of log(pred / published); returned per operation (the same value) for `Calibration.alpha_s`."""
    from scipy.optimize import minimize_scalar

    if not runs:
        return {}, 0.0

    def loss(a):
        return _robust([_log_error(r, _ceiling(r, r.sim_s[eff] + a, combine_Bps)) for r in runs])

    best = minimize_scalar(loss, bounds=(0.0, ALPHA_MAX_S), method="bounded", options={"xatol": 1e-9})
    alpha = float(best.x) if loss(best.x) <= loss(0.0) else 0.0
    return {op: alpha for op in OPS}, loss(alpha)


def _fit_low_latency(runs: list[CaseRun], eff: float) -> tuple[dict, float, float]:
    """Low-latency kernels: start-ups per operation and one cost per message, all >= 0, by bounded robust least
    squares of log(pred / published) (soft L1, `_robust`; a few starts, the best kept)."""
    from scipy.optimize import least_squares

    ops = [op for op in OPS if any(r.case.op == op for r in runs)]
    index = {op: i for i, op in enumerate(ops)}

    def residuals(x):
        return [_log_error(r, r.sim_s[eff] + x[index[r.case.op]] + x[-1] * r.messages) for r in runs]

    lower, upper = [0.0] * (len(ops) + 1), [ALPHA_MAX_S] * len(ops) + [MESSAGE_MAX_S]
    best = None
    for beta0 in (0.0, 0.1e-6, 0.5e-6):
        x0 = [50e-6] * len(ops) + [beta0]
        fit = least_squares(residuals, x0, bounds=(lower, upper), x_scale=[1e-5] * len(ops) + [1e-7],
                            loss="soft_l1", f_scale=ROBUST_SCALE, xtol=1e-12, ftol=1e-12)
        cost = _robust(residuals(fit.x))
        if best is None or cost < best[0]:
            best = (cost, fit.x)
    cost, x = best
    return {op: float(x[index[op]]) for op in ops}, float(x[-1]), cost


def _fit_alltoall(runs: list[CaseRun], eff: float) -> tuple[dict, float, float, float, float]:
    """Plain all-to-all (kind alltoall): a start-up a in [0, ALPHA_MAX_S] that ramps in as s / (s + S0), S0 in
    RAMP_BYTES_BOUNDS (fitted as log S0), a cost g per remote peer in [0, PEER_MAX_S] and a latency floor L in
    [0, FLOOR_MAX_S]: t = t_sim(eff) + L + (a + g p) s / (s + S0) (`alltoall_time_s`), by bounded robust least squares
    of log(pred / published) (soft L1, `_robust`; three starts of g, the best kept; the same fit as
    benchmarks/eval_a2a_size_terms.py's form "floorg"). Returns ({"alltoall": a}, g, L, S0, loss)."""
    from scipy.optimize import least_squares

    def time(r, x):
        return alltoall_time_s(r.sim_s[eff], float(r.case.size_bytes), r.messages, x[0], x[1], x[3], math.exp(x[2]))

    def residuals(x):
        return [_log_error(r, time(r, x)) for r in runs]

    lower = [0.0, 0.0, math.log(RAMP_BYTES_BOUNDS[0]), 0.0]
    upper = [ALPHA_MAX_S, PEER_MAX_S, math.log(RAMP_BYTES_BOUNDS[1]), FLOOR_MAX_S]
    best = None
    for g0 in (0.0, 1e-6, 10e-6):
        fit = least_squares(residuals, [50e-6, g0, math.log(256e6), 20e-6], bounds=(lower, upper),
                            x_scale=[1e-5, 1e-6, 1.0, 1e-5], loss="soft_l1", f_scale=ROBUST_SCALE, xtol=1e-12,
                            ftol=1e-12)
        cost = _robust(residuals(fit.x))
        if best is None or cost < best[0] - 1e-15:
            best = (cost, fit.x)
    cost, x = best
    return {"alltoall": float(x[0])}, float(x[1]), float(x[3]), float(math.exp(x[2])), cost


def fitted_values(runs: list[CaseRun]) -> int:
    """How many values `fit_calibration` fits on one NIC family's fitting runs: the NIC efficiency; with normal-kernel
    runs one start-up (and, with combine-limited runs, the combine ceiling); with low-latency runs a start-up per
    operation and one cost per message; with all-to-all runs a start-up, its ramp, a latency floor and one cost per
    remote peer.

    >>> from types import SimpleNamespace as NS
    >>> run = lambda kind, op, limited=False: NS(case=NS(kind=kind, op=op), limited=limited)
    >>> fitted_values([run("alltoall", "alltoall")] * 3), fitted_values([run("low_latency", "dispatch"),
    ...     run("low_latency", "combine"), run("normal", "combine", True)])
    (5, 6)
    """
    values = 1
    if any(r.case.kind == "normal" for r in runs):
        values += 1 + any(r.limited for r in runs)
    low_ops = {r.case.op for r in runs if r.case.kind == "low_latency"}
    if low_ops:
        values += len(low_ops) + 1
    if any(r.case.kind == "alltoall" for r in runs):
        values += 4
    return values


def exact_fits(runs: list[CaseRun]) -> dict:
    """The NIC families whose fitting runs number no more than the values fitted on them (`fitted_values`):
    {family: {"cases": n, "fitted_values": p}}. Such a fit has a value per case (or more), so its fitting error is no
    measure of accuracy (a user's own folder of a few cases; every family of the shipped data has more cases)."""
    out = {}
    for family in sorted({r.case.nic_family for r in runs}):
        mine = [r for r in runs if r.case.nic_family == family]
        values = fitted_values(mine)
        if len(mine) <= values:
            out[family] = {"cases": len(mine), "fitted_values": values}
    return out


def fit_calibration(runs: list[CaseRun], test_ids: set[str], grid: tuple | None = None) -> Calibration:
    """Per NIC family, independently: a grid over the NIC efficiency (default: the runs' simulated efficiencies;
    every run must hold a simulated time for each), restricted to efficiencies >= the family's demonstrated floor
    (`demonstrated_efficiency`; if none is left, the highest of the grid); for each, the normal kernels' start-up
    (one, shared by dispatch and combine) and the low-latency kernels' start-ups per operation and cost per message; the efficiency with
    the least robust loss of the log errors (`_robust`) wins. Refuses any held-out (test or fresh) case."""
    bad = [r.case.id for r in runs if r.case.id in test_ids]
    if bad:
        raise ValueError(f"fit_calibration: test or fresh (held-out) cases must never be fitted on: {', '.join(bad)}")
    if not runs:
        raise ValueError("fit_calibration: no fitting cases")
    grid = tuple(sorted(runs[0].sim_s)) if grid is None else tuple(sorted(grid))
    floors = demonstrated_efficiency(runs)
    efficiency, alphas, messages, ceilings, peers, a2a_floors, ramps = {}, {}, {}, {}, {}, {}, {}
    for family in sorted({r.case.nic_family for r in runs}):
        mine = [r for r in runs if r.case.nic_family == family]
        ceiling = combine_ceiling(mine)
        if ceiling is not None:
            ceilings[family] = ceiling
        allowed = [e for e in grid if e >= floors.get(family, 0.0) - 1e-12] or [grid[-1]]
        normal = [r for r in mine if r.case.kind == "normal"]
        low = [r for r in mine if r.case.kind == "low_latency"]
        a2a = [r for r in mine if r.case.kind == "alltoall"]
        best = None
        for eff in allowed:
            a_normal, loss = _fit_normal(normal, eff, ceiling) if normal else ({}, 0.0)
            a_low, beta, loss_low = _fit_low_latency(low, eff) if low else ({}, 0.0, 0.0)
            value = loss + loss_low
            kinds = {"normal": a_normal, "low_latency": a_low}
            terms = None
            if a2a:                               # only a family with all-to-all cases gets the key and the terms
                a_a2a, gamma, a2a_floor, ramp, loss_a2a = _fit_alltoall(a2a, eff)
                value += loss_a2a
                kinds["alltoall"] = a_a2a
                terms = (gamma, a2a_floor, ramp)
            if best is None or value < best[0] - 1e-15:
                best = (value, eff, kinds, beta, terms)
        _, efficiency[family], alphas[family], messages[family], terms = best
        if terms is not None:
            peers[family], a2a_floors[family], ramps[family] = terms
    return Calibration(efficiency, alphas, messages, floors, tuple(r.case.id for r in runs), grid, ceilings, peers,
                       a2a_floors, ramps)


def case_size(case: Case) -> float:
    """The size along which a case's prediction can extrapolate: tokens per rank for the dispatch / combine
    kernels, bytes per rank for a plain all-to-all."""
    return float(case.size_bytes) if case.kind == "alltoall" else float(case.workload["tokens_per_rank"])


def fitting_ranges(runs: list[CaseRun]) -> dict:
    """(NIC family, kernel kind) -> (smallest, largest) `case_size` of the fitting runs: the sizes their start-up
    and per-message terms were fitted across (outside, a prediction extrapolates: with every fitting case at one
    size, a start-up and a per-message cost are nearly interchangeable, and apart at another size)."""
    out: dict = {}
    for run in runs:
        key, size = (run.case.nic_family, run.case.kind), case_size(run.case)
        low, high = out.get(key, (size, size))
        out[key] = (min(low, size), max(high, size))
    return out


def _row(run: CaseRun, cal: Calibration, role: str, ranges: dict | None = None) -> dict:
    pred = cal.predict_GBps(run)
    t = run.counted / pred / 1e9
    row = {"id": run.case.id, "role": role, "kind": run.case.kind, "op": run.case.op, "ep": run.case.ep,
           "nodes": run.case.nodes, "format": run.case.format, "counts": run.case.counts,
           "file": run.case.file, "source_group": source_group(run.case), "nic_family": run.case.nic_family,
           "topology": run.case.topology, "published_GBps": run.case.published_GBps,
           "predicted_GBps": pred, "rel_error": pred / run.case.published_GBps - 1.0,
           "predicted_us": t * 1e6, "counted_MB": run.counted / 1e6, "network_MB": run.network_bytes / 1e6,
           "source": run.case.source, "combine_limited": run.limited}
    if run.case.published_latency_us is not None:
        row["published_us"] = run.case.published_latency_us
    if run.case.kind == "alltoall":
        row["size_bytes"] = run.case.size_bytes
    if ranges is not None:                 # within the sizes its family's fitting cases of its kind span
        span = ranges.get((run.case.nic_family, run.case.kind))
        size = case_size(run.case)
        row["within_fitting_range"] = span is not None and span[0] <= size <= span[1]
    return row


def source_group(case: Case) -> str:
    """The source a case comes from, for reports: the file's `group`, else its file name up to the first '-'
    (deepep, uccl, ...)."""
    return case.group or case.file.split("-", 1)[0]


def _summary(rows: list[dict]) -> dict:
    """Cases, median and worst |error|; with rows marked `within_fitting_range`, how many are outside and the
    median and worst of those within (None where none is)."""
    errors = np.abs([r["rel_error"] for r in rows])
    out = {"cases": len(rows), "median_abs_rel_error": float(np.median(errors)) if len(rows) else None,
           "max_abs_rel_error": float(errors.max()) if len(rows) else None}
    if rows and all("within_fitting_range" in r for r in rows):
        inside = np.abs([r["rel_error"] for r in rows if r["within_fitting_range"]])
        out["outside_fitting_range"] = len(rows) - int(inside.size)
        out["within_range_median_abs_rel_error"] = float(np.median(inside)) if inside.size else None
        out["within_range_max_abs_rel_error"] = float(inside.max()) if inside.size else None
    return out


def _choice_network_bytes(case: Case, traffic) -> np.ndarray:
    """(W,) bytes each rank sends to other nodes with one copy per (token, expert) (low-latency kernels)."""
    node = np.arange(case.ep) // case.gpus_per_node
    return (traffic.choice_traffic * (node[:, None] != node[None, :])).sum(axis=1)


def _prepare(case: Case, seed: int, traffic=None) -> tuple[CaseRun, object]:
    """A case's run without simulated times (counted and network bytes, messages, the NIC line rate) and traffic
    (`traffic`: the case's `case_traffic(case, seed)` if already drawn)."""
    traffic = case_traffic(case, seed) if traffic is None else traffic
    if case.kind == "alltoall":       # every rank sends per_peer to each of its ep - gpus_per_node remote peers
        remote = case.ep - case.gpus_per_node
        run = CaseRun(case, float(counted_bytes(case, traffic).mean()), float(traffic.per_peer_bytes * remote),
                      messages=float(remote), nic_gpu_Bps=_nic_gpu_Bps(case))
        return run, traffic
    if case.kind == "normal":
        network, messages = traffic.network_bytes(dedup=True), 0.0
    else:
        network = _choice_network_bytes(case, traffic)
        messages = float(network.mean()) / float(traffic.bytes_per_token)   # one message per remote (token, expert)
    run = CaseRun(case, float(counted_bytes(case, traffic).mean()), float(network.mean()), messages=messages,
                  nic_gpu_Bps=_nic_gpu_Bps(case), kernel_bytes=float(traffic.traffic.sum(axis=0).mean()),
                  limited=combine_limited(case))
    return run, traffic


def _fit_task(task: tuple) -> Calibration:
    """`fit_calibration` of one (runs, held-out ids, grid) in a worker process (a leave-one-out refit)."""
    return fit_calibration(*task)


def _traffic_task(task: tuple):
    """`routing_counts` of one (case, seed) in a worker process."""
    return routing_counts(*task)


def traffic_key(case: Case, seed: int) -> tuple:
    """What `case_traffic(case, seed)` depends on: cases with equal keys draw the same traffic (the workload block
    whole, so a key it does not read still tells two cases apart: never a wrong hit)."""
    import json

    return (json.dumps(case.workload, sort_keys=True), case.ep, case.nodes, case.kind, case.op, case.format, int(seed),
            case.size_bytes, case.element_bytes)


def simulation_key(case: Case, seed: int) -> tuple:
    """What `simulate_case(case, case_traffic(case, seed), eff)` depends on besides eff: the traffic, the topology,
    the kernel kind and operation (both in `traffic_key`) and the number of nodes (in it too)."""
    return traffic_key(case, seed) + (case.topology,)


def _simulate_task(task: tuple) -> float:
    """`simulate_case` of one (case, traffic, efficiency) in a worker process (or this one), topologies cached."""
    return simulate_case(*task, cached=True)


def default_jobs() -> int:
    """The worker processes `validate_published` uses by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                       # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _map(fn, tasks: list, pool, on_done=None, first=None) -> list:
    """[fn(t) for t in tasks], in the order of `tasks` whatever the order they finish in: in this process (pool None)
    or on `pool` (a concurrent.futures executor; `first(task)`: a sort key, the tasks submitted in its order, e.g.
    the longest first). `on_done(i)` is called as task i finishes."""
    if pool is None:
        out = []
        for i, task in enumerate(tasks):
            out.append(fn(task))
            if on_done is not None:
                on_done(i)
        return out
    from concurrent.futures import as_completed

    order = sorted(range(len(tasks)), key=lambda i: first(tasks[i])) if first is not None else range(len(tasks))
    futures = {pool.submit(fn, tasks[i]): i for i in order}
    out = [None] * len(tasks)
    for future in as_completed(futures):
        i = futures[future]
        out[i] = future.result()
        if on_done is not None:
            on_done(i)
    return out


def validate_published(folder: str | Path = PUBLISHED_DIR, *, seed: int = 0, leave_one_out: bool = True,
                       efficiency_grid: tuple | None = None, fitting_only: bool = False, progress=None,
                       jobs: int = 1, simulation_progress=None, within_cluster: bool = False) -> dict:
    """Every case predicted against its published figure; the fit on the fitting cases only.

    Returns {"calibration", "rows" (each with its role: fitting, test or one of FRESH_SETS, and rel_error = predicted
    / published - 1), "fitting", "test", and one entry per FRESH_SETS key (median and worst |error|), "by_source", "leave_one_out" (each
    fitting case predicted by a fit without it)}. `fitting_only`: the held-out (test and fresh) cases are neither
    simulated nor reported (to work on the model without seeing them). `jobs`: worker processes for the traffic and
    the simulations (1: all in this process; the results do not depend on it, each simulation is the same
    computation wherever it runs). `progress(case_id)` is called as each case's simulations are done;
    `simulation_progress(done, total)` as each simulation is done (the largest run first, so cases complete late).
    `within_cluster`: add "within_cluster" (`lshsim.sim.published_within.within_cluster`: each case predicted with
    its cluster's NIC efficiency calibrated on the other cases of its cluster, held-out ones included; NOT a held-out
    result), computed after everything else, which it leaves as it is.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be an integer >= 1")
    grid = EFFICIENCY_GRID if efficiency_grid is None else tuple(sorted(float(e) for e in efficiency_grid))
    if not grid or any(not (0 < e <= 1) for e in grid):
        raise ValueError(f"efficiency_grid={grid!r} must hold NIC efficiencies in (0, 1]")
    cases = load_cases(folder)
    test_ids = load_split(folder, cases)
    fresh_ids = {key: load_fresh(folder, cases, key) for key in FRESH_SETS}
    held_out = test_ids.union(*fresh_ids.values())
    if all(c.id in held_out for c in cases):   # before any simulation (the fit refused it after all of them)
        raise ValueError(f"{Path(folder) / 'split.yaml'}: every one of the {len(cases)} cases is held out (test or a "
                         f"fresh set): no case is left to fit the calibration on")
    chosen = [c for c in cases if not (fitting_only and c.id in held_out)]
    clear_topology_cache()              # topology files read afresh by each call
    pool = None
    if jobs > 1 and len(chosen) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from lshsim.workers import die_with_parent

        # spawn: a fresh interpreter per worker, as `lshsim sweep`'s local pool (no forked state); the workers
        # end with this process (a validation ended by SIGTERM or SIGKILL left them behind for good)
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        return _validate(cases, chosen, test_ids, fresh_ids, held_out, grid, seed, leave_one_out, fitting_only,
                         progress, pool, simulation_progress, within_cluster)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        clear_topology_cache()


def _validate(cases, chosen, test_ids, fresh_ids, held_out, grid, seed, leave_one_out, fitting_only, progress,
              pool, simulation_progress=None, within_cluster=False) -> dict:
    """`validate_published`'s work on its parsed inputs; `pool`: an executor for the traffic, the simulations and
    the leave-one-out refits, or None (all in this process)."""
    # cases of equal inputs (e.g. the same AWS test run with DeepEP and UCCL-EP) share one traffic draw and one
    # simulation per efficiency: the same computation on the same inputs gives the same numbers
    unique, routings = {}, {}
    for c in chosen:
        unique.setdefault(traffic_key(c, seed), c)
    for c in unique.values():           # one routing draw per routing key (dispatch and combine, bf16 and fp8 ...)
        if routing_key(c, seed) is not None:
            routings.setdefault(routing_key(c, seed), c)
    counts = dict(zip(routings, _map(_traffic_task, [(c, seed) for c in routings.values()], pool)))
    drawn = {key: case_traffic(c, seed, counts.get(routing_key(c, seed))) for key, c in unique.items()}
    prepared = [_prepare(c, seed, drawn[traffic_key(c, seed)]) for c in chosen]
    fitting = [r for r, _ in prepared if r.case.id not in held_out]
    # the efficiencies any fit below can choose: >= the lowest demonstrated floor of the full fit and of every
    # leave-one-out fit (only those are simulated)
    floors = [demonstrated_efficiency(fitting)]
    if leave_one_out:
        floors += [demonstrated_efficiency([x for x in fitting if x is not r]) for r in fitting]
    wanted = []                                  # per case, the efficiencies it is simulated at
    for run, _ in prepared:
        low = min(f.get(run.case.nic_family, 0.0) for f in floors)
        wanted.append([e for e in grid if e >= low - 1e-12] or [grid[-1]])
    tasks, users = {}, {}                        # (simulation key, eff) -> index of its first case; -> cases
    for i, ((run, _), effs) in enumerate(zip(prepared, wanted)):
        for eff in effs:
            key = (simulation_key(run.case, seed), eff)
            tasks.setdefault(key, i)
            users.setdefault(key, []).append(i)
    keys = list(tasks)
    left = [len(effs) for effs in wanted]
    finished = [0]

    def done(k):
        finished[0] += 1
        if simulation_progress is not None:
            simulation_progress(finished[0], len(keys))
        for i in users[keys[k]]:
            left[i] -= 1
            if left[i] == 0 and progress is not None:
                progress(prepared[i][0].case.id)

    # the pool starts the largest simulations first (the normal kernels' flow simulations of the most GPUs)
    times = _map(_simulate_task, [(prepared[tasks[k]][0].case, prepared[tasks[k]][1], k[1]) for k in keys], pool,
                 done, first=lambda task: (task[0].kind != "normal", -task[0].ep))
    simulated = dict(zip(keys, times))
    for (run, _), effs in zip(prepared, wanted):
        for eff in effs:                         # in the order of the grid, as before
            run.sim_s[eff] = simulated[(simulation_key(run.case, seed), eff)]
    runs = [run for run, _ in prepared]
    fitting = [r for r in runs if r.case.id not in held_out]
    cal = fit_calibration(fitting, held_out, grid)
    role = lambda cid: "test" if cid in test_ids else next((k for k in FRESH_SETS if cid in fresh_ids[k]), "fitting")
    ranges = fitting_ranges(fitting)
    rows = [_row(r, cal, role(r.case.id), ranges) for r in runs]
    nominal = {c.nic_family: _nic_nominal_Bps(c) for c in cases}
    out = {"calibration": {"nic_efficiency": cal.nic_efficiency,
                           "nic_Bps": {f: e * nominal[f] for f, e in cal.nic_efficiency.items()},
                           "efficiency_floor": cal.efficiency_floor,
                           "alpha_s": cal.alpha_s, "message_s": cal.message_s, "combine_Bps": cal.combine_Bps,
                           "alltoall_peer_s": cal.alltoall_peer_s, "alltoall_floor_s": cal.alltoall_floor_s,
                           "alltoall_ramp_bytes": cal.alltoall_ramp_bytes,
                           "fitted_on": list(cal.fitted_on),
                           "efficiency_grid": list(grid)},
           "fitting_ranges": {f"{family}/{kind}": list(span) for (family, kind), span in sorted(ranges.items())},
           "rows": rows,
           "fitting": _summary([r for r in rows if r["role"] == "fitting"]),
           "exact_fits": exact_fits(fitting),
           "test": _summary([r for r in rows if r["role"] == "test"]),
           **{key: _summary([r for r in rows if r["role"] == key]) for key in FRESH_SETS},
           "by_source": {g: {role: _summary([r for r in rows if r["role"] == role and r["source_group"] == g])
                             for role in ("fitting", "test") + FRESH_SETS}
                         for g in sorted({r["source_group"] for r in rows})},
           "model": {"normal": f"node_dedup, {NORMAL_CHUNKS} chunks", "low_latency": "direct, one copy per (token, expert)",
                     "alltoall": "direct, an even matrix of size / ranks per (rank, peer); a start-up and a cost per "
                                 "remote peer",
                     "calibration": "per NIC family: NIC efficiency (grid, >= the floor the fitting cases demonstrate), "
                                    "a start-up per kernel kind (normal: one for dispatch and combine; low-latency: "
                                    "one per operation), a cost per network message of the low-latency kernels",
                     "fitting_only": fitting_only, "seed": seed}}
    if leave_one_out:
        # each left-out case is predicted by its own family's calibration only, and `fit_calibration` fits every
        # family on its own runs alone (floor, ceiling, efficiency, start-ups): so the refit without r is made on
        # r's family alone, the same numbers for r as a refit of every family, without the other families' work
        pending = []
        for r in fitting:
            rest = [x for x in fitting if x is not r and x.case.nic_family == r.case.nic_family]
            if not rest:
                continue                     # the only fitting case of its family: nothing to predict it with
            pending.append((r, rest))
        refits = _map(_fit_task, [(rest, held_out, grid) for _, rest in pending], pool)
        loo = [_row(r, refit, "leave-one-out", fitting_ranges(rest)) for (r, rest), refit in zip(pending, refits)]
        out["leave_one_out"] = {**_summary(loo), "rows": loo,
                                "by_source": {g: _summary([x for x in loo if x["source_group"] == g])
                                              for g in sorted({x["source_group"] for x in loo})}}
    if within_cluster:          # last: it only adds simulated efficiencies, after every standard number is made
        from lshsim.sim.published_within import within_cluster as within

        traffic_of = {id(run): traffic for run, traffic in prepared}
        sharing = {}                    # simulation key -> its runs
        for run in runs:
            sharing.setdefault(simulation_key(run.case, seed), []).append(run)

        def simulate_more(requests) -> int:
            """Fill run.sim_s[eff] for each (run, eff), one simulation per (simulation key, eff) on the pool."""
            todo = {}
            for run, eff in requests:
                if eff not in run.sim_s:
                    todo.setdefault((simulation_key(run.case, seed), eff), run)
            keys = list(todo)
            times = _map(_simulate_task, [(todo[k].case, traffic_of[id(todo[k])], k[1]) for k in keys], pool,
                         first=lambda task: (task[0].kind != "normal", -task[0].ep))
            for (key, eff), t in zip(keys, times):   # every run of the key (cases of equal inputs share it)
                for run in sharing[key]:
                    run.sim_s.setdefault(eff, t)
            return len(keys)

        out["within_cluster"] = within(runs, cal, role, grid, simulate_more)
    return out


def _nic_gpu_Bps(case: Case) -> float:
    """The line rate of one GPU's NICs on the case's topology (B/s): nic_gbps x NICs per GPU; 0 on one node."""
    from lshsim.topology.spec import read_spec

    spec, _ = read_spec(case.topology)
    if "inter" not in spec:
        return 0.0
    inter = spec["inter"]
    per_gpu = float(inter.get("nics_per_gpu", 1)) * min(1.0, float(inter["nics_per_node"]) / float(spec["gpus_per_node"]))
    return float(inter["nic_gbps"]) * 0.125e9 * per_gpu


def _nic_nominal_Bps(case: Case) -> float:
    """The NIC rate of the case's topology (inter.nic_gbps / 8), 0 on one node."""
    from lshsim.topology.spec import read_spec

    spec, _ = read_spec(case.topology)
    return float(spec["inter"]["nic_gbps"]) * 0.125e9 if "inter" in spec else 0.0
