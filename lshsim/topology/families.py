"""Topology families: which builder turns a spec's `intra:` / `inter:` block into graph vertices and edges.

Two registries, `INTRA_FAMILIES` (one server: `intra.kind`) and `INTER_FAMILIES` (between servers:
`inter.kind`), map a kind to a `TopologyFamily`. Contract of a family:

- build: the builder. Intra: `build(G, node, gpus_per_node, **arguments)` adds server `node`'s GPUs
  (`lshsim.topology.build.gpu_id(node, local)`, kind="gpu", rank, node, local; see `_add_gpus`) and its
  fabric; inter: `build(G, num_nodes, gpus_per_node, **arguments)` adds NICs and switches between
  the servers. Edges follow `lshsim.topology.build`'s contract (bandwidth_Bps, latency_s, kind). The
  builder receives exactly its keyword-only parameters (`TopologyFamily.parameters`), nothing else.
- fields: the YAML fields of the block that only this family reads (besides `kind` and the shared
  ones: intra: link_Bps, links, per_link_Bps, latency_s, pcie_Bps, pcie_latency_s; inter:
  nics_per_node, nic_gbps, servers_per_leaf, oversubscription, latency_s). Any other field is refused
  with an error naming the file, the field and the value.
- resolve: `resolve(block, values) -> arguments`. `block` is a `FieldReader` on the spec's block (it
  reads the family's own fields with typed checks and names file and field in errors, and carries
  the GPU and the server counts); `values` holds the shared fields as read (None where absent, the
  defaults filled in for latency_s, pcie_Bps and pcie_latency_s; inter: nic_Bps = nic_gbps * 0.125e9,
  and the intra block's pcie_Bps / pcie_latency_s). It returns the builder's arguments (a superset is
  fine: the builder gets only its own). Default: `values` unchanged.
- nvlink_per_gpu (intra): `nvlink_per_gpu(arguments) -> float`, the NVLink bandwidth per GPU per
  direction that the builder gives the node's "nvlink" edges (0: the family has no NVLink). The
  link model scales those edges relative to it.
- with_nvlink (intra): `with_nvlink(arguments, per_gpu_Bps) -> arguments` applies a calibrated
  per-GPU NVLink bandwidth (`calibration.nvlink_Bps`); None: the family refuses one.
- routing: a `lshsim.topology.routing.RoutingPolicy` (how routes are chosen on this fabric), or
  None for the default, one least-weight path per pair (`route_weight`).

`register_topology_family` adds a family (refusing a taken kind); `unregister_topology_family`
removes one.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from lshsim.topology.build import (add_cube_mesh_v100_node, add_fat_tree, add_fat_tree_3tier, add_full_mesh_node,
                                   add_nvswitch_node, add_pcie_node, add_rail)
from lshsim.topology.gpus import GpuSpec
from lshsim.topology.routing import RoutingPolicy

__all__ = ["TopologyFamily", "FieldReader", "INTRA_FAMILIES", "INTER_FAMILIES", "LEVELS", "get_family",
           "register_topology_family", "unregister_topology_family", "INTRA_SHARED_FIELDS", "INTER_SHARED_FIELDS"]

LEVELS = ("intra", "inter")
INTRA_SHARED_FIELDS = frozenset({"link_Bps", "links", "per_link_Bps", "latency_s", "pcie_Bps", "pcie_latency_s"})
INTER_SHARED_FIELDS = frozenset({"nics_per_node", "nic_gbps", "servers_per_leaf", "oversubscription", "latency_s"})


@dataclass(frozen=True)
class FieldReader:
    """Typed reads of one spec block for a family's `resolve` (errors name file, field and value).

    number(key, default, minimum=0, strict=True, required=False), integer(key, default, minimum=1,
    maximum=None, required=False), fail(key, value, why) -> ValueError; gpu (GpuSpec), gpus_per_node,
    num_nodes, prefix ("intra." / "inter.").
    """

    checker: object
    block: dict
    prefix: str
    gpu: GpuSpec
    gpus_per_node: int
    num_nodes: int

    def number(self, key: str, default=None, **bounds) -> float | None:
        return self.checker.number(self.block, key, self.prefix, default, **bounds)

    def integer(self, key: str, default=None, **bounds) -> int | None:
        return self.checker.integer(self.block, key, self.prefix, default, **bounds)

    def fail(self, key: str, value, why: str) -> ValueError:
        return self.checker.fail(self.prefix + key, value, why)


def _identity(block: FieldReader, values: dict) -> dict:
    return dict(values)


@dataclass(frozen=True)
class TopologyFamily:
    """One intra-node kind or inter-node fabric (contract: module docstring)."""

    name: str
    level: str
    build: Callable[..., None]
    description: str = ""
    fields: frozenset = field(default_factory=frozenset)
    resolve: Callable[[FieldReader, dict], dict] = _identity
    nvlink_per_gpu: Callable[[dict], float] = lambda arguments: 0.0
    with_nvlink: Callable[[dict, float], dict] | None = None
    routing: RoutingPolicy | None = None

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level={self.level!r} must be one of {LEVELS}")
        if not callable(self.build):
            raise ValueError(f"build={self.build!r} must be callable")
        object.__setattr__(self, "fields", frozenset(self.fields))
        shared = INTRA_SHARED_FIELDS if self.level == "intra" else INTER_SHARED_FIELDS
        clash = sorted((self.fields & shared) | ({"kind"} & self.fields))
        if clash:
            raise ValueError(f"family {self.name!r}: field {clash[0]!r} is a shared {self.level} field")
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(self.build).parameters.values()):
            raise ValueError(f"family {self.name!r}: the builder must declare its keyword arguments (no **kwargs)")
        if self.routing is not None and not isinstance(self.routing, RoutingPolicy):
            raise ValueError(f"family {self.name!r}: routing={self.routing!r} must be a RoutingPolicy")

    @property
    def parameters(self) -> tuple[str, ...]:
        """The builder's keyword-only parameters: exactly what it receives."""
        return tuple(name for name, p in inspect.signature(self.build).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def call(self, G, *positional, arguments: dict, source: str = "<dict>") -> None:
        """Run the builder with its declared keyword arguments taken from `arguments`."""
        params = inspect.signature(self.build).parameters
        missing = [name for name in self.parameters
                   if name not in arguments and params[name].default is inspect.Parameter.empty]
        if missing:
            raise ValueError(f"{source}: {self.level}.kind={self.name}: the builder needs {missing[0]!r}, "
                             f"which its resolve did not provide")
        self.build(G, *positional, **{name: arguments[name] for name in self.parameters if name in arguments})


# ---- built-in intra-node kinds -------------------------------------------------------------------
def _resolve_nvswitch(block: FieldReader, values: dict) -> dict:
    """link_Bps: given; else links * per_link_Bps (18 and 25 GB/s when only one is given); else the
    GPU's datasheet NVLink bandwidth."""
    out = dict(values)
    if out["link_Bps"] is None:
        links, per_link = out["links"], out["per_link_Bps"]
        if per_link is not None or links is not None:
            out["link_Bps"] = (links if links is not None else 18) * (per_link if per_link is not None else 25e9)
        elif block.gpu.nvlink_Bps > 0:
            out["link_Bps"] = block.gpu.nvlink_Bps
        else:
            raise block.fail("link_Bps", None, f"is required: gpu {block.gpu.name} has no nvlink_Bps")
    out["links"] = out["links"] or 0
    return out


def _resolve_pcie(block: FieldReader, values: dict) -> dict:
    """link_Bps: given, else the GPU's PCIe bandwidth (pcie_Bps)."""
    out = dict(values)
    if out["link_Bps"] is None:
        out["link_Bps"] = out["pcie_Bps"]
    return out


def _resolve_cube_mesh(block: FieldReader, values: dict) -> dict:
    """per_link_Bps: given, else 25 GB/s (one NVLink 2 link); 6 links per GPU (NV1/NV2 bonds)."""
    out = dict(values)
    out["per_link_Bps"] = 25e9 if out["per_link_Bps"] is None else out["per_link_Bps"]
    out["links_per_gpu"] = 6
    return out


def _resolve_full_mesh(block: FieldReader, values: dict) -> dict:
    """per_link_Bps: given, else 25 GB/s; group_size (default all GPUs) GPUs per fully meshed group."""
    out = dict(values)
    out["per_link_Bps"] = 25e9 if out["per_link_Bps"] is None else out["per_link_Bps"]
    out["group_size"] = block.integer("group_size", None, maximum=block.gpus_per_node)
    out["links_per_gpu"] = (out["group_size"] or block.gpus_per_node) - 1
    return out


def _mesh_nvlink(arguments: dict) -> float:
    return arguments["per_link_Bps"] * arguments["links_per_gpu"]


def _mesh_with_nvlink(arguments: dict, per_gpu_Bps: float) -> dict:
    """Every link scaled by per_gpu_Bps / (the datasheet per-GPU total)."""
    return {**arguments, "per_link_Bps": arguments["per_link_Bps"] * per_gpu_Bps / _mesh_nvlink(arguments)}


INTRA_FAMILIES: dict[str, TopologyFamily] = {
    "nvswitch": TopologyFamily(
        "nvswitch", "intra", add_nvswitch_node, "A/H100/H200 HGX: every GPU's NVLink port on one non-blocking switch",
        resolve=_resolve_nvswitch, nvlink_per_gpu=lambda a: a["link_Bps"],
        with_nvlink=lambda a, per_gpu_Bps: {**a, "link_Bps": per_gpu_Bps}),
    "cube_mesh_v100": TopologyFamily(
        "cube_mesh_v100", "intra", add_cube_mesh_v100_node, "DGX-1 V100 hybrid cube-mesh, SYS pairs over PCIe",
        resolve=_resolve_cube_mesh, nvlink_per_gpu=_mesh_nvlink, with_nvlink=_mesh_with_nvlink),
    "full_mesh": TopologyFamily(
        "full_mesh", "intra", add_full_mesh_node, "direct links inside groups (Ascend HCCS), PCIe between groups",
        fields=frozenset({"group_size"}), resolve=_resolve_full_mesh, nvlink_per_gpu=_mesh_nvlink,
        with_nvlink=_mesh_with_nvlink),
    "pcie": TopologyFamily(
        "pcie", "intra", add_pcie_node, "every GPU on one PCIe switch", resolve=_resolve_pcie),
}

# ---- built-in inter-node fabrics -------------------------------------------------------------------
def _resolve_nics_per_gpu(block: FieldReader, values: dict) -> dict:
    """nics_per_gpu (default 1): r NICs of nic_gbps per GPU, striped; needs one NIC group per GPU
    (nics_per_node = gpus_per_node)."""
    out = dict(values)
    out["nics_per_gpu"] = block.integer("nics_per_gpu", 1, maximum=64)
    if out["nics_per_gpu"] > 1 and out["nics_per_node"] != block.gpus_per_node:
        raise block.fail("nics_per_gpu", out["nics_per_gpu"],
                         f"needs nics_per_node = gpus_per_node ({block.gpus_per_node}): nics_per_node counts the "
                         f"GPUs' NIC groups, got {out['nics_per_node']}")
    return out


def _resolve_fat_tree_3tier(block: FieldReader, values: dict) -> dict:
    """leaves_per_pod (required): leaves under one pod's spine layer; core_oversubscription (default
    1): a pod's leaf-uplink capacity : its core uplinks."""
    out = _resolve_nics_per_gpu(block, values)
    out["leaves_per_pod"] = block.integer("leaves_per_pod", None, required=True)
    out["core_oversubscription"] = block.number("core_oversubscription", 1.0)
    if out["oversubscription"] < 1:
        raise block.fail("oversubscription", out["oversubscription"], "must be >= 1")
    if out["core_oversubscription"] < 1:
        raise block.fail("core_oversubscription", out["core_oversubscription"], "must be >= 1")
    return out


INTER_FAMILIES: dict[str, TopologyFamily] = {
    "fat_tree": TopologyFamily("fat_tree", "inter", add_fat_tree, "two-level leaf/spine fat-tree",
                               fields=frozenset({"nics_per_gpu"}), resolve=_resolve_nics_per_gpu),
    "rail": TopologyFamily("rail", "inter", add_rail, "rail-optimized leaves joined by the spine layer",
                           fields=frozenset({"nics_per_gpu"}), resolve=_resolve_nics_per_gpu),
    "fat_tree_3tier": TopologyFamily("fat_tree_3tier", "inter", add_fat_tree_3tier,
                                     "three-level fat-tree: leaves, pod spines, core",
                                     fields=frozenset({"nics_per_gpu", "leaves_per_pod", "core_oversubscription"}),
                                     resolve=_resolve_fat_tree_3tier),
}

_REGISTRIES = {"intra": INTRA_FAMILIES, "inter": INTER_FAMILIES}


def get_family(level: str, kind: str) -> TopologyFamily:
    """The family registered for `level` ("intra" or "inter") and `kind`."""
    if level not in LEVELS:
        raise ValueError(f"level={level!r} must be one of {LEVELS}")
    registry = _REGISTRIES[level]
    if kind not in registry:
        raise ValueError(f"{level}.kind={kind!r} must be one of {', '.join(sorted(registry))}")
    return registry[kind]


def register_topology_family(family: TopologyFamily) -> TopologyFamily:
    """Add a family to the registry of its level; refuses a kind already registered. Returns it."""
    if not isinstance(family, TopologyFamily):
        raise ValueError(f"family={family!r} must be a TopologyFamily")
    registry = _REGISTRIES[family.level]
    if family.name in registry:
        raise ValueError(f"{family.level}.kind {family.name!r} is already registered")
    registry[family.name] = family
    return family


def unregister_topology_family(level: str, kind: str) -> TopologyFamily:
    """Remove a registered family (tests undo their registrations with it); returns it."""
    get_family(level, kind)
    return _REGISTRIES[level].pop(kind)
