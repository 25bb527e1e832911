"""Topology specs: dict / YAML -> validated `networkx.DiGraph`.

The schema (also in data/topologies/README.md); sizes in bytes, rates in bytes/s per direction,
times in seconds, NIC line rate in Gb/s:

    name: h100-1x8                 # required
    description: free text         # optional
    gpu: h100                      # a known GPU (lshsim.topology.gpus.GPUS) or an inline dict
                                   # {name, peak_flops, hbm_Bps, memory_bytes, [nvlink_Bps,
                                   #  gemm_efficiency, hbm_efficiency]} or {base: h100, ...overrides}
    nodes: 1                       # servers (default 1)
    gpus_per_node: 8               # required
    alpha_s: 1.0e-5                # per-message start-up latency of the collectives (default 1e-5)
    intra:
      kind: nvswitch               # nvswitch | cube_mesh_v100 | full_mesh | pcie | a registered family
      link_Bps: 450.0e9            # nvswitch/pcie: per-GPU port; or links: 18 + per_link_Bps: 25e9
      per_link_Bps: 25.0e9         # cube_mesh_v100 / full_mesh: one NVLink/HCCS link (NV2 = 2 links)
      group_size: 4                # full_mesh only: GPUs per fully meshed group (default all)
      latency_s: 1.0e-6            # per hop (GPU -> switch is one hop; default 1e-6)
      pcie_Bps: 50.0e9             # GPU <-> host / NIC PCIe link (default by GPU: V100 12e9 (Gen3),
                                   # A100/Ascend 25e9 (Gen4), H100/H200 50e9 (Gen5))
      pcie_latency_s: 1.0e-6       # default 1e-6
    inter:                         # required when nodes > 1
      kind: fat_tree               # fat_tree | rail | a registered family
      nics_per_node: 8             # 1..gpus_per_node; GPU l uses NIC l * nics // gpus_per_node
      nic_gbps: 400                # line rate per NIC, Gb/s (1 Gb/s = 0.125 GB/s)
      servers_per_leaf: 4          # default: all nodes on one leaf (per rail for kind=rail)
      oversubscription: 1.0        # leaf downlink : uplink capacity (default 1, non-blocking)
      latency_s: 1.0e-6            # per hop (default 1e-6)
    calibration:                   # optional; fitted values override the datasheet ones
      alpha_s: 2.1e-5
      nvlink_Bps: 3.7e11           # effective per-GPU NVLink bandwidth per direction (nvswitch port;
                                   # mesh links are scaled by nvlink_Bps / datasheet per-GPU total)
      nic_Bps: 4.8e10              # effective per-NIC bandwidth per direction
      pcie_Bps: 2.4e10             # effective GPU <-> host/NIC PCIe bandwidth
      expert_flops: 7.0e14         # achieved expert GEMM rate -> G.graph["gpu"]["achieved_flops"]
      hbm_Bps: 2.9e12              # achieved HBM bandwidth -> G.graph["gpu"]["achieved_hbm_Bps"]
      a2a_busbw_curve:             # optional: measured all-to-all bus bandwidth by size, >= 2 points
        - [2.1e6, 9.0e10]          #   [bytes_per_rank, bus_bandwidth_Bps], bytes strictly increasing
        - [1.2e9, 3.3e11]
      a2a_link_headroom: 1.2       # optional, only with a2a_busbw_curve: finite, >= 1
      a2a_link_max_Bps: 3.5e11     # optional, only with a2a_link_headroom: finite, > 0
      a2a_nccl_channels:           # optional, only with a2a_busbw_curve, one node: NCCL's per-peer
        p2p_channels: 32           #   channel term (lshsim.sim.nccl; absent: off); NCCL's p2p layout,
        channels_per_peer: 32      #   the fitted channel headroom (>= 1) and the curve fit's window
        chunk_bytes: 524288        #   around the thresholds (recorded)
        headroom: 1.1
        threshold_window: 0.04
      links:                       # optional: the same four per link class (an edge kind of the
        nic:                       #   graph: nvlink, nic, pcie, trunk, or a family's own kind)
          busbw_curve: [[1.0e6, 5.0e9], [1.0e9, 4.5e10]]
          headroom: 1.1            # optional, only with busbw_curve (one class at most has one)
          link_max_Bps: 5.0e10     # optional, only with headroom (nccl_channels: as a2a_nccl_channels)
      a2a_internode_alpha_s: 3.1e-5  # optional, several nodes: the start-up of an all-to-all phase whose
      a2a_remote_peer_s: 6.8e-6    #   traffic crosses nodes is L + g x p x s / (s + S0) (p a rank's remote
      a2a_remote_peer_ramp_bytes: 8.8e7  # peers, s its bytes; S0 absent: g p), the most over the ranks, when
                                   #   larger than alpha_s (absent: alpha_s; phase_alpha_s in
                                   #   lshsim.sim.collectives)
      dedup_kernel_alpha_s: 1.72e-4  # optional, several nodes: the start-up of one DeepEP-style kernel
                                   #   (`lshsim plan --algorithm deepep`'s node_dedup, stream=True), paid
                                   #   once, in place of alpha_s and the three keys above
                                   #   (lshsim.sim.dispatch_formats.node_dedup)
      phase_model: {...}           # optional: timing conventions, buffer alignment, compute phases,
                                   #   the NCCL transport (`executor calibrate --phases`; fields and
                                   #   model: lshsim.calibration.phase_model), G.graph["phase_model"]
      provenance: {...}            # free-form (who/when/how), kept in G.graph["calibration"]
    software:                      # optional: the software's efficiency, a NAMED calibration from
      name: pytorch-1.11-nccl-2.12-v100   #   published measurements (G.graph["software"]; `SOFTWARE_FIELDS`)
      stack: "PyTorch 1.11, CUDA 11.3, NCCL 2.12.7"   # what it stands for (text)
      gemm_efficiency: 0.38        # fraction of the datasheet peak the step's compute reaches (replaces
                                   #   gpu.gemm_efficiency; calibration.expert_flops, measured, still wins)
      a2a_efficiency: 0.807        # fraction of a NIC's line rate an all-to-all reaches (scales inter.nic_gbps)
      lsh_compress_Bps: 1.3e10     # LSH-MoE compress / restore throughput in bytes of token copies per
      lsh_restore_Bps: 7.7e10      #   second (the phases' cost when given; else the roofline)
      moe_layer: gshard-einsum-loop   # how the era's MoE layer ran (`MOE_LAYERS`; costs: lshsim.sim.moe_layers);
                                   #   absent = grouped (today's); StepConfig.moe_layer overrides it
      allreduce_efficiency: 0.976  # fraction of a NIC's line rate the gradient ring all-reduce reaches
                                   #   (the phase grad_allreduce; absent = the all-to-all's a2a_efficiency)
      grad_sync: after             # the gradient all-reduce against the backward (`GRAD_SYNC_MODES`):
                                   #   after, overlapped or off; absent = overlapped (PyTorch DDP today);
                                   #   StepConfig.grad_sync overrides it
      expert_grad_sync: false      # whether an expert's replicas (EP < W) all-reduce its gradients;
                                   #   absent = true (DDP today); false = fairseq's legacy_ddp, which skips
                                   #   every parameter marked `expert`
      allreduce_algorithm: ring    # the gradient all-reduce over the servers (`ALLREDUCE_ALGORITHMS`):
                                   #   ring (absent: one flat ring, NCCL) or hierarchical (HCCL's two levels)
      sources: {gemm_efficiency: "...", ...}   # required: where every number above comes from
    assumed: {field: reason}       # optional: every value the source does not state, with its reason
                                   #   (G.graph["assumed"])

The three a2a_* keys are the NVLink class's link model and mean `links.nvlink` (giving both is
refused); what a curve, a headroom and a cap mean: `lshsim.calibration`. A class of `links` must be
an edge kind of the built graph; its curve scales every edge of the kind by B(M) / nominal, the
nominal bandwidth being the per-GPU NVLink bandwidth (nvlink), one NIC's (nic), one GPU's PCIe link
(pcie), or the kind's largest edge bandwidth (any other kind; `_nominal_Bps`). The block is parsed
once, into G.graph["link_models"] (a `lshsim.calibration.LinkModels`, one model per edge kind),
which the simulator reads.

`intra.kind` and `inter.kind` pick a family of `lshsim.topology.families` (registry; a family
reads its own fields, builds the graph and may bring its own routing policy).

Errors name the file, the field and the value: "h100.yaml: inter.nic_gbps=-5 must be > 0". A
number must be a finite number, not a bool and not quoted text ('25e9'; a plain 25e9 is read as a
number, `lshsim.readers`); a key given twice is refused. Sizes: gpus_per_node <= 1024, nodes <=
65536, at most 2^20 GPUs in all (MAX_GPUS_PER_NODE, MAX_NODES, MAX_GPUS: plausible ranges; whether
the machine can simulate a topology is each command's estimate, `lshsim.limits`). Every number
read here (a family's own fields and the calibration block's too) is also held to the plausibility
limit of its kind, by its name (`lshsim.bounds`: a latency <= 1 s, a bandwidth <= 1e14 B/s, a NIC
<= 8e5 Gb/s, ...): "c.yaml: alpha_s = 5e+06 is above 1 s, ...; did you mean 5e-06?".

>>> G = build_topology({"name": "t", "gpu": "h100", "gpus_per_node": 4, "intra": {"kind": "nvswitch"}})
>>> G.graph["num_nodes"], G.graph["gpus_per_node"], round(G.edges["n0.gpu0", "n0.nvswitch"]["bandwidth_Bps"] / 1e9)
(1, 4, 450)
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import networkx as nx

from lshsim import bounds
from lshsim.calibration.model import LinkModels
from lshsim.readers import dump_yaml, load_yaml
from lshsim.topology.families import INTER_FAMILIES, INTRA_FAMILIES, FieldReader
from lshsim.topology.gpus import GpuSpec, get_gpu, gpu_from_dict
from lshsim.topology.routing import validate_topology

__all__ = ["build_topology", "load_topology", "list_topologies", "topology_dir", "write_topology_yaml",
           "read_spec", "read_software", "read_assumed", "SOFTWARE_FIELDS", "MOE_LAYERS", "GRAD_SYNC_MODES", "DEFAULT_ALPHA_S", "DEFAULT_PCIE_BPS", "MAX_GPUS_PER_NODE", "MAX_NODES", "MAX_GPUS"]

DEFAULT_ALPHA_S = 1e-5       # s, per-message start-up latency (NCCL-like small-message latency)
DEFAULT_LATENCY_S = 1e-6     # s, per hop
#: GPU <-> host / NIC PCIe per direction (PCIe datasheet rates: Gen4 x16 ~25 GB/s, Gen5 ~50 GB/s; Gen3 ~12).
DEFAULT_PCIE_BPS = {"v100": 12e9, "a100": 25e9, "h100": 50e9, "h200": 50e9, "ascend910a": 25e9}

#: plausible ranges of a spec's sizes, checked when it is read (a larger value is a typo or a unit
#: error, and would exhaust the machine while building the graph): a server holds at most
#: MAX_GPUS_PER_NODE GPUs (the largest NVLink domains announced hold 576), a cluster at most
#: MAX_NODES servers and MAX_GPUS GPUs in all (the project plans up to thousands of GPUs; 4096 x 8
#: is accepted). Whether the machine can hold the graph and its route table is the commands' check.
MAX_GPUS_PER_NODE = int(bounds.maximum("gpus_per_node"))     # 1024, lshsim.bounds
MAX_NODES = int(bounds.maximum("nodes"))                     # 65536
MAX_GPUS = int(bounds.maximum("gpus"))                       # 2^20

_TOP_KEYS = {"name", "description", "gpu", "nodes", "gpus_per_node", "alpha_s", "intra", "inter", "calibration",
             "software", "assumed"}
#: the fields of a `software:` block: name, stack and sources (text), the rest numbers (efficiencies
#: in (0, 1], throughputs in bytes/s > 0); `sources` must name the source of every number given
SOFTWARE_FIELDS = {"name": "text", "stack": "text", "gemm_efficiency": "efficiency", "hbm_efficiency": "efficiency",
                   "a2a_efficiency": "efficiency", "lsh_compress_Bps": "rate", "lsh_restore_Bps": "rate",
                   "moe_layer": "layer", "allreduce_efficiency": "efficiency", "grad_sync": "grad_sync",
                   "expert_grad_sync": "flag", "allreduce_algorithm": "allreduce_algorithm", "sources": "mapping"}
#: how the gradient all-reduce runs over the servers (`software.allreduce_algorithm`; the phase
#: `grad_allreduce`): "ring" (one flat ring over every rank of a group, 2 (g - 1) steps: NCCL's ring),
#: "hierarchical" (a ring inside each server, then one ring per local index over the servers with
#: 1 / L of the bytes: HCCL's two-level "level0" intra-server / "level1" inter-server algorithm;
#: `lshsim.sim.collectives.hierarchical_all_reduce`); absent = ring
ALLREDUCE_ALGORITHMS = ("ring", "hierarchical")
#: how the data-parallel gradient all-reduce runs against the backward (`software.grad_sync`,
#: `StepConfig.grad_sync`; the phase `grad_allreduce` of `lshsim.sim.phases`): "after" (once the
#: backward has ended, as fairseq's legacy_ddp and DDP without bucketing), "overlapped" (PyTorch
#: DDP's buckets, each all-reduced as soon as its gradients are ready, behind the rest of the
#: backward), "off" (not simulated: the step of earlier lshsim versions)
GRAD_SYNC_MODES = ("after", "overlapped", "off")
#: the MoE layers a `software:` block (and `StepConfig.moe_layer`) may name; what each costs:
#: `lshsim.sim.moe_layers`
MOE_LAYERS = ("grouped", "tutel", "gshard-einsum-loop")
#: the fields every family's block may hold; a family adds its own (lshsim.topology.families)
_INTRA_KEYS = {"kind", "link_Bps", "links", "per_link_Bps", "latency_s", "pcie_Bps", "pcie_latency_s"}
_INTER_KEYS = {"kind", "nics_per_node", "nic_gbps", "servers_per_leaf", "oversubscription", "latency_s"}
_CAL_KEYS = {"alpha_s", "nvlink_Bps", "nic_Bps", "pcie_Bps", "expert_flops", "hbm_Bps", "a2a_busbw_curve",
             "a2a_link_headroom", "a2a_link_max_Bps", "a2a_nccl_channels", "links", "provenance", "phase_model",
             "a2a_internode_alpha_s", "a2a_remote_peer_s", "a2a_remote_peer_ramp_bytes", "dedup_kernel_alpha_s"}


def topology_dir() -> Path:
    """Where the shipped specs live: <repo>/data/topologies (editable install), else
    <prefix>/share/lshsim/topologies (a normal install, if the data files were installed)."""
    candidates = [Path(__file__).resolve().parents[2] / "data" / "topologies",
                  Path(sys.prefix) / "share" / "lshsim" / "topologies"]
    for path in candidates:
        if path.is_dir():
            return path
    return candidates[0]


def list_topologies() -> list[str]:
    """Names of the shipped topologies, sorted: data/topologies/NAME.yaml, and SUB/NAME for files in
    sub-folders (e.g. calibrated/h200-x2 for the executor's calibrated specs)."""
    root = topology_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


class _Checker:
    """Reads typed fields out of a spec dict, raising errors that name file, field and value."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, field: str, value, why: str) -> ValueError:
        return ValueError(f"{self.source}: {field}={value!r} {why}")

    def keys(self, block: dict, allowed: set, prefix: str) -> None:
        if not isinstance(block, dict):
            raise self.fail(prefix.rstrip("."), block, "must be a mapping")
        for key in block:
            if key not in allowed:
                raise self.fail(prefix + str(key), block[key], f"is not a known field; known: {', '.join(sorted(allowed))}")

    def number(self, block: dict, key: str, prefix: str, default=None, *, minimum: float = 0.0,
               strict: bool = True, required: bool = False) -> float | None:
        if key not in block or block[key] is None:
            if required:
                raise self.fail(prefix + key, None, "is required")
            return default
        value = block[key]
        if isinstance(value, str):          # a quoted number ('25e9'): text; a plain 25e9 reads as a number
            raise self.fail(prefix + key, value, "must be a finite number, not text (write it unquoted)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(prefix + key, value, "must be a finite number")
        if strict and not value > minimum:
            raise self.fail(prefix + key, value, f"must be > {minimum:g}")
        if not strict and not value >= minimum:
            raise self.fail(prefix + key, value, f"must be >= {minimum:g}")
        bounds.check_field(prefix + key, value, self.source)     # the plausibility limit of its kind
        return float(value)

    def integer(self, block: dict, key: str, prefix: str, default=None, *, minimum: int = 1,
                maximum: int | None = None, required: bool = False) -> int | None:
        if key not in block or block[key] is None:
            if required:
                raise self.fail(prefix + key, None, "is required")
            return default
        value = block[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(prefix + key, value, "must be an integer")
        if value < minimum:
            raise self.fail(prefix + key, value, f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise self.fail(prefix + key, value, f"must be in [{minimum}, {maximum}]")
        bounds.check_field(prefix + key, value, self.source)     # the plausibility limit of its kind
        return value

    def choice(self, block: dict, key: str, prefix: str, choices) -> str:
        value = block.get(key)
        if not isinstance(value, str) or value not in choices:
            raise self.fail(prefix + key, value, f"must be one of {', '.join(sorted(choices))}")
        return value


def _gpu(check: _Checker, value) -> tuple[str, GpuSpec]:
    if isinstance(value, str):
        try:
            return value.lower(), get_gpu(value)
        except ValueError as error:
            raise ValueError(f"{check.source}: {error}") from None
    if isinstance(value, dict):
        try:
            spec = gpu_from_dict(value)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{check.source}: {error}") from None
        return str(value.get("base", spec.name)).lower(), spec
    raise check.fail("gpu", value, "must be a known GPU name or a mapping")


def _family(check: _Checker, block, level: str, registry: dict, shared_keys: set):
    """The family of a block's `kind`: every field must be shared or the family's own (errors name
    the field and, for another family's field, which kinds read it)."""
    prefix = level + "."
    check.keys(block, shared_keys | set().union(*(f.fields for f in registry.values())), prefix)
    family = registry[check.choice(block, "kind", prefix, registry)]
    for key in block:
        if key not in shared_keys and key not in family.fields:
            owners = ", ".join(sorted(f"{prefix}kind={f.name}" for f in registry.values() if key in f.fields))
            raise check.fail(prefix + key, block[key], f"is only for {owners}")
    return family


def _routing(check: _Checker, intra_family, inter_family):
    """The routing policy a family brings (lshsim.topology.routing.RoutingPolicy), or None for the
    default; two different policies from the intra and the inter family are refused."""
    policies = [f.routing for f in (intra_family, inter_family) if f is not None and f.routing is not None]
    if len({id(p) for p in policies}) > 1:
        raise check.fail("inter.kind", inter_family.name, f"brings routing {policies[1].name!r}, but intra.kind="
                         f"{intra_family.name} brings {policies[0].name!r}; a topology is routed by one policy")
    return policies[0] if policies else None


def _nominal_Bps(G: nx.DiGraph, intra_family, intra_args: dict, inter_args: dict | None) -> dict:
    """{link class: nominal per-direction bandwidth} for every edge kind of the built graph: what a
    class's bus bandwidth curve B(M) is divided by (every edge of the class runs at B(M) / nominal
    times its own bandwidth, so edges of one class keep their ratios).

    nvlink: the NVLink bandwidth per GPU (the intra family's `nvlink_per_gpu`, after
            calibration.nvlink_Bps; a mesh's pair links scale in proportion);
    nic:    the bandwidth of one NIC (inter.nic_gbps / 8, or calibration.nic_Bps);
    pcie:   one GPU's PCIe link (intra.link_Bps of a PCIe-only node, else pcie_Bps);
    other:  (a family's own kind, the fat-tree's "trunk") its largest edge bandwidth.
    A family that gives its NVLink no per-GPU bandwidth (0) gets the largest, too.
    """
    largest: dict = {}
    for _, _, data in G.edges(data=True):
        kind = data.get("kind")
        if kind:
            largest[kind] = max(largest.get(kind, 0.0), float(data.get("bandwidth_Bps", 0.0)))
    known = {"nvlink": intra_family.nvlink_per_gpu(intra_args),
             "pcie": intra_args["link_Bps"] if intra_family.name == "pcie" else intra_args["pcie_Bps"],
             "nic": inter_args["nic_Bps"] if inter_args is not None else 0.0}
    ordered = [kind for kind in known if kind in largest] + [kind for kind in largest if kind not in known]
    return {kind: known.get(kind) or largest[kind] for kind in ordered}


def read_assumed(check: "_Checker | str", value, prefix: str = "assumed") -> dict:
    """An `assumed:` block: {field: reason}, every key and reason non-empty text ({} when absent).

    >>> read_assumed("t.yaml", {"nic_gbps": "not in the paper"})
    {'nic_gbps': 'not in the paper'}
    """
    check = _Checker(check) if isinstance(check, str) else check
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise check.fail(prefix, value, "must be a mapping of field -> the reason for its value")
    for key, reason in value.items():
        if not isinstance(key, str) or not key:
            raise check.fail(f"{prefix} key", key, "must be a field name")
        if not isinstance(reason, str) or not reason.strip():
            raise check.fail(f"{prefix}.{key}", reason, "must be the reason for the value (non-empty text)")
    return dict(value)


def read_software(check: "_Checker | str", value) -> dict | None:
    """A `software:` block (`SOFTWARE_FIELDS`), validated; None when absent. Every number must have
    its source under `sources`.

    >>> read_software("t.yaml", {"name": "x", "gemm_efficiency": 0.4, "sources": {"gemm_efficiency": "a paper"}})["gemm_efficiency"]
    0.4
    """
    check = _Checker(check) if isinstance(check, str) else check
    if value is None:
        return None
    check.keys(value, set(SOFTWARE_FIELDS), "software.")
    out: dict = {}
    for key, kind in SOFTWARE_FIELDS.items():
        if key not in value:
            continue
        item = value[key]
        if kind == "text":
            if not isinstance(item, str) or not item.strip():
                raise check.fail(f"software.{key}", item, "must be non-empty text")
            out[key] = item
        elif kind == "mapping":
            out[key] = read_assumed(check, item, "software.sources")
        elif kind == "grad_sync":
            if item not in GRAD_SYNC_MODES:
                raise check.fail(f"software.{key}", item, f"must be one of {', '.join(GRAD_SYNC_MODES)}")
            out[key] = item
        elif kind == "allreduce_algorithm":
            if item not in ALLREDUCE_ALGORITHMS:
                raise check.fail(f"software.{key}", item, f"must be one of {', '.join(ALLREDUCE_ALGORITHMS)}")
            out[key] = item
        elif kind == "flag":
            if not isinstance(item, bool):
                raise check.fail(f"software.{key}", item, "must be true or false")
            out[key] = item
        elif kind == "layer":
            if item not in MOE_LAYERS:
                raise check.fail(f"software.{key}", item, f"must be one of {', '.join(MOE_LAYERS)}")
            out[key] = item
        else:
            number = check.number(value, key, "software.")
            if kind == "efficiency" and number > 1:
                raise check.fail(f"software.{key}", item, "must be in (0, 1] (a fraction of the datasheet rate)")
            out[key] = number
    if "name" not in out:
        raise check.fail("software.name", None, "is required (a calibration is named, never a silent default)")
    numbers = [key for key, kind in SOFTWARE_FIELDS.items() if kind in ("efficiency", "rate", "layer", "grad_sync", "flag",
                                                                  "allreduce_algorithm")
               and key in out]
    missing = [key for key in numbers if key not in out.get("sources", {})]
    if missing:
        raise check.fail(f"software.sources.{missing[0]}", None,
                         f"is required: software.{missing[0]}={out[missing[0]]!r} needs its source")
    return out


def build_topology(spec: dict, source: str = "<dict>") -> nx.DiGraph:
    """Build and validate the cluster graph a spec dict describes (schema: module docstring).

    `source` names the spec in error messages (load_topology passes the file name).
    """
    check = _Checker(source)
    check.keys(spec, _TOP_KEYS, "")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise check.fail("name", name, "must be a non-empty string")
    if "gpu" not in spec:
        raise check.fail("gpu", None, "is required")
    gpu_key, gpu = _gpu(check, spec["gpu"])
    software = read_software(check, spec.get("software"))
    assumed = read_assumed(check, spec.get("assumed"))
    if software is not None:      # the named software calibration replaces the GPU's efficiencies
        from dataclasses import replace as _replace

        gpu = _replace(gpu, **{key: software[key] for key in ("gemm_efficiency", "hbm_efficiency") if key in software})
    description = spec.get("description", "")
    if description is not None and not isinstance(description, str):
        raise check.fail("description", description, "must be text")
    num_nodes = check.integer(spec, "nodes", "", 1, maximum=MAX_NODES)
    gpus_per_node = check.integer(spec, "gpus_per_node", "", required=True, maximum=MAX_GPUS_PER_NODE)
    if num_nodes * gpus_per_node > MAX_GPUS:
        raise check.fail("nodes", num_nodes, f"x gpus_per_node={gpus_per_node} = {num_nodes * gpus_per_node} GPUs "
                                             f"exceeds the limit of {MAX_GPUS} GPUs")
    alpha_s = check.number(spec, "alpha_s", "", DEFAULT_ALPHA_S, strict=False)

    intra = spec.get("intra")
    if intra is None:
        raise check.fail("intra", None, "is required")
    # the intra-node family (lshsim.topology.families) reads its block into its builder's arguments
    intra_family = _family(check, intra, "intra", INTRA_FAMILIES, _INTRA_KEYS)
    intra_kind = intra_family.name
    shared = dict(latency_s=check.number(intra, "latency_s", "intra.", DEFAULT_LATENCY_S, strict=False),
                  pcie_Bps=check.number(intra, "pcie_Bps", "intra.", DEFAULT_PCIE_BPS.get(gpu_key, 25e9)),
                  pcie_latency_s=check.number(intra, "pcie_latency_s", "intra.", DEFAULT_LATENCY_S, strict=False),
                  links=check.integer(intra, "links", "intra.", None),
                  per_link_Bps=check.number(intra, "per_link_Bps", "intra.", None),
                  link_Bps=check.number(intra, "link_Bps", "intra.", None))
    intra_args = intra_family.resolve(FieldReader(check, intra, "intra.", gpu, gpus_per_node, num_nodes), shared)

    inter = spec.get("inter")
    if num_nodes > 1 and inter is None:
        raise check.fail("inter", None, f"is required when nodes={num_nodes} > 1")
    inter_args = inter_family = None
    if inter is not None:
        inter_family = _family(check, inter, "inter", INTER_FAMILIES, _INTER_KEYS)
        nics = check.integer(inter, "nics_per_node", "inter.", required=True, maximum=gpus_per_node)
        nic_gbps = check.number(inter, "nic_gbps", "inter.", required=True)
        a2a_efficiency = software.get("a2a_efficiency", 1.0) if software is not None else 1.0
        shared = dict(
            nics_per_node=nics, nic_Bps=nic_gbps * 0.125e9 * a2a_efficiency,
            servers_per_leaf=check.integer(inter, "servers_per_leaf", "inter.", num_nodes),
            oversubscription=check.number(inter, "oversubscription", "inter.", 1.0),
            latency_s=check.number(inter, "latency_s", "inter.", DEFAULT_LATENCY_S, strict=False))
        inter_args = inter_family.resolve(FieldReader(check, inter, "inter.", gpu, gpus_per_node, num_nodes), shared)
    inter_kind = inter_family.name if inter_family is not None else None

    gpu_dict = gpu.to_dict()
    for key in ("lsh_compress_Bps", "lsh_restore_Bps", "moe_layer", "grad_sync",
                "expert_grad_sync"):   # the software's LSH throughput, MoE layer, gradient sync (phases)
        if software is not None and key in software:
            gpu_dict[key] = software[key]
    calibration = spec.get("calibration")
    internode_alpha_s = remote_peer_s = peer_ramp_bytes = dedup_kernel_alpha_s = None
    if calibration is not None:
        check.keys(calibration, _CAL_KEYS, "calibration.")
        pre = "calibration."
        # the start-up of an all-to-all phase whose traffic crosses nodes (lshsim.sim.collectives.phase_alpha_s)
        internode_alpha_s = check.number(calibration, "a2a_internode_alpha_s", pre, strict=False)
        remote_peer_s = check.number(calibration, "a2a_remote_peer_s", pre, strict=False)
        peer_ramp_bytes = check.number(calibration, "a2a_remote_peer_ramp_bytes", pre)
        # the start-up of one DeepEP-style node-deduplicated kernel (lshsim.sim.dispatch_formats.node_dedup)
        dedup_kernel_alpha_s = check.number(calibration, "dedup_kernel_alpha_s", pre, strict=False)
        for key, value in (("a2a_internode_alpha_s", internode_alpha_s), ("a2a_remote_peer_s", remote_peer_s),
                           ("a2a_remote_peer_ramp_bytes", peer_ramp_bytes),
                           ("dedup_kernel_alpha_s", dedup_kernel_alpha_s)):
            if value is not None and num_nodes == 1:
                raise check.fail(f"calibration.{key}", value,
                                 "is the start-up of an all-to-all across nodes, but the topology has one node")
        if peer_ramp_bytes is not None and not remote_peer_s:
            raise check.fail("calibration.a2a_remote_peer_ramp_bytes", peer_ramp_bytes,
                             "is the ramp of the cost per remote peer, but calibration.a2a_remote_peer_s is not given")
        if calibration.get("provenance") is not None and not isinstance(calibration["provenance"], dict):
            raise check.fail("calibration.provenance", calibration["provenance"], "must be a mapping")
        alpha_s = check.number(calibration, "alpha_s", pre, alpha_s, strict=False)
        nvlink = check.number(calibration, "nvlink_Bps", pre)
        if nvlink is not None:
            if intra_family.with_nvlink is None:
                raise check.fail("calibration.nvlink_Bps", nvlink,
                                 f"is given but intra.kind={intra_kind} has no NVLink")
            intra_args = intra_family.with_nvlink(intra_args, nvlink)
        pcie_cal = check.number(calibration, "pcie_Bps", pre)
        if pcie_cal is not None:
            intra_args["pcie_Bps"] = pcie_cal
            if intra_kind == "pcie":
                intra_args["link_Bps"] = pcie_cal
        nic_cal = check.number(calibration, "nic_Bps", pre)
        if nic_cal is not None:
            if inter_args is None:
                raise check.fail("calibration.nic_Bps", nic_cal, "is given but the spec has no inter block")
            inter_args["nic_Bps"] = nic_cal
        gpu_dict["achieved_flops"] = check.number(calibration, "expert_flops", pre, gpu_dict["achieved_flops"])
        gpu_dict["achieved_hbm_Bps"] = check.number(calibration, "hbm_Bps", pre, gpu_dict["achieved_hbm_Bps"])
        if calibration.get("a2a_busbw_curve") is not None and intra_kind == "pcie":
            raise check.fail("calibration.a2a_busbw_curve", calibration["a2a_busbw_curve"],
                             "is given but intra.kind=pcie has no NVLink to scale")
    pcie_Bps = intra_args["pcie_Bps"]
    G = nx.DiGraph()
    G.graph.update(name=name, description=spec.get("description", ""), num_nodes=num_nodes,
                   gpus_per_node=gpus_per_node, gpu=gpu_dict, alpha_s=alpha_s,
                   nics_per_node=inter_args["nics_per_node"] if inter_args else 0,
                   intra_kind=intra_kind, inter_kind=inter_kind,
                   calibration=copy.deepcopy(calibration), spec=copy.deepcopy(spec), source=source,
                   software=copy.deepcopy(software), assumed=assumed, a2a_internode_alpha_s=internode_alpha_s,
                   a2a_remote_peer_s=remote_peer_s, a2a_remote_peer_ramp_bytes=peer_ramp_bytes,
                   dedup_kernel_alpha_s=dedup_kernel_alpha_s)
    # the gradient all-reduce's NICs (lshsim.sim.collectives.ring_all_reduce, the phase grad_allreduce):
    # at line rate x software.allreduce_efficiency where the software gives one and the NIC rate is
    # the line rate x a2a_efficiency (no calibration.nic_Bps): the factor between the two
    G.graph["allreduce_nic_scale"] = 1.0
    if inter_args is not None and software is not None and "allreduce_efficiency" in software \
            and (calibration is None or calibration.get("nic_Bps") is None):
        G.graph["allreduce_nic_scale"] = software["allreduce_efficiency"] / software.get("a2a_efficiency", 1.0)
    # and its algorithm over the servers (ALLREDUCE_ALGORITHMS; lshsim.sim.moe_step.A2ACache.all_reduce_s)
    G.graph["allreduce_algorithm"] = (software or {}).get("allreduce_algorithm", "ring")
    routing = _routing(check, intra_family, inter_family)
    if routing is not None:
        G.graph["routing"] = routing
    for node in range(num_nodes):
        intra_family.call(G, node, gpus_per_node, arguments=intra_args, source=source)
    if inter_family is not None:
        inter_family.call(G, num_nodes, gpus_per_node, source=source,
                          arguments={"pcie_Bps": pcie_Bps, "pcie_latency_s": intra_args["pcie_latency_s"],
                                     **inter_args})
    # the link models (lshsim.calibration), parsed once: one per link class (edge kind) at the
    # nominal bandwidth its curve scales against (`_nominal_Bps`)
    G.graph["link_models"] = LinkModels.from_calibration(
        calibration, nominal_Bps=_nominal_Bps(G, intra_family, intra_args, inter_args), alpha_s=alpha_s, source=source,
        nodes=num_nodes)
    # the phase model (timing conventions, alignment, compute; lshsim.calibration.phase_model), parsed once
    G.graph["phase_model"] = None
    if calibration is not None and calibration.get("phase_model") is not None:
        from lshsim.calibration.phase_model import parse_phase_model

        G.graph["phase_model"] = parse_phase_model(calibration["phase_model"], source=source)
    try:
        validate_topology(G)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    return G


def unknown_topology_message(text: str, known: list[str]) -> str:
    """One line for a topology name that is not shipped: the names closest to it, the shipped base clusters, and
    how many calibrated / published ones there are besides (listing all 80-odd in one line buries the answer)."""
    import difflib
    import re

    tokens = {t for t in re.split(r"[^a-z0-9]+", text.lower()) if len(t) >= 3}
    near = difflib.get_close_matches(text, known, n=3, cutoff=0.6)
    near += [name for name in known if name not in near and "archive/" not in name
             and tokens & set(re.split(r"[^a-z0-9]+", name.lower()))]
    base = [name for name in known if "/" not in name]
    others = {}
    for name in known:
        if "/" in name:
            folder = name.rsplit("/", 1)[0]
            others[folder] = others.get(folder, 0) + 1
    besides = ", ".join(f"{count} under {folder}/" for folder, count in sorted(others.items()))
    hint = f"did you mean {', '.join(near[:6])}? " if near else ""
    return (f"topology {text!r} is unknown; {hint}known: {', '.join(base)}"
            + (f" (and {besides} of {topology_dir()})" if besides else "")
            + "; or pass a .yaml file (`lshsim catalog --clusters` lists the shipped ones with their sizes)")


def read_spec(name_or_path: str | Path) -> tuple[dict, str]:
    """The spec dict of a shipped name or a YAML file, and the file's name (for messages)."""
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        known = list_topologies()
        if text not in known:
            raise ValueError(unknown_topology_message(text, known))
        path = topology_dir() / f"{text}.yaml"
    spec = load_yaml(path, source=path.name, what="topology file")   # duplicate keys and syntax errors refused
    if not isinstance(spec, dict):
        raise ValueError(f"{path.name}: the top level must be a mapping, got {type(spec).__name__}")
    return spec, path.name


def load_topology(name_or_path: str | Path) -> nx.DiGraph:
    """A shipped topology by name (see `list_topologies()`) or a YAML spec file, built and validated."""
    spec, source = read_spec(name_or_path)
    return build_topology(spec, source=source)


def write_topology_yaml(spec: dict, path: str | Path) -> Path:
    """Validate a spec dict (by building it) and write it as YAML; returns the path. The file is
    written to a temporary file in the same folder and renamed into place: a reader sees the old
    file or the whole new one, never a part.

    This is what `executor calibrate` uses: a single-node nvswitch spec with a calibration block.
    """
    path = Path(path)
    build_topology(spec, source=path.name)
    text = dump_yaml(spec)          # reads back as it was (a text such as "1e5" is quoted)
    from lshsim.io import prepare_output, write_text_atomically

    prepare_output(path, "topology YAML")                 # the output rule of lshsim.io
    return write_text_atomically(path, text)
