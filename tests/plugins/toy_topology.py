"""A toy topology family plugin: a ring of switches inside a server, routed clockwise.

Server n has one switch per GPU, "n{n}.ring{i}"; GPU i hangs off switch i (its port, `link_Bps`),
and switch i links to switch i + 1 mod G in both directions (`ring_Bps`, this family's own YAML
field). Its routing policy sends every message clockwise (increasing switch index): counter-clockwise
ring edges weigh more than any clockwise route, so the least-weight path is the clockwise one.

One module and one registry entry (`register`).
"""
from __future__ import annotations

import networkx as nx

from lshsim.topology.build import gpu_id
from lshsim.topology.families import (FieldReader, TopologyFamily, register_topology_family,
                                      unregister_topology_family)
from lshsim.topology.routing import RoutingPolicy

KIND = "switch_ring"


def add_switch_ring_node(G: nx.DiGraph, node: int, gpus_per_node: int, *, link_Bps: float, ring_Bps: float,
                         latency_s: float) -> None:
    """GPU i <-> switch i (link_Bps); switch i <-> switch i + 1 (ring_Bps), direction marked +1 / -1."""
    switches = [f"n{node}.ring{i}" for i in range(gpus_per_node)]
    for local, switch in enumerate(switches):
        G.add_node(switch, kind="nvswitch", node=node)
        vid = gpu_id(node, local)
        G.add_node(vid, kind="gpu", rank=node * gpus_per_node + local, node=node, local=local)
        for u, v in ((vid, switch), (switch, vid)):
            G.add_edge(u, v, bandwidth_Bps=link_Bps, latency_s=latency_s, kind="nvlink", links=1)
    if gpus_per_node > 1:
        for i, switch in enumerate(switches):
            after = switches[(i + 1) % gpus_per_node]
            G.add_edge(switch, after, bandwidth_Bps=ring_Bps, latency_s=latency_s, kind="nvlink", links=1, ring_step=1)
            G.add_edge(after, switch, bandwidth_Bps=ring_Bps, latency_s=latency_s, kind="nvlink", links=1, ring_step=-1)


def _resolve(block: FieldReader, values: dict) -> dict:
    """link_Bps: given, else the GPU's datasheet NVLink; ring_Bps: given, else link_Bps."""
    out = dict(values)
    if out["link_Bps"] is None:
        out["link_Bps"] = block.gpu.nvlink_Bps
    out["ring_Bps"] = block.number("ring_Bps", out["link_Bps"])
    return out


def _clockwise(u, v, data: dict) -> float:
    """One per hop; a counter-clockwise ring hop costs more than a full clockwise lap."""
    return 1000.0 if data.get("ring_step") == -1 else 1.0


FAMILY = TopologyFamily(KIND, "intra", add_switch_ring_node, "a ring of switches, one GPU each, routed clockwise",
                        fields=frozenset({"ring_Bps"}), resolve=_resolve,
                        nvlink_per_gpu=lambda arguments: arguments["link_Bps"],
                        routing=RoutingPolicy("clockwise", _clockwise))


def register():
    """The one registry entry."""
    return register_topology_family(FAMILY)


def unregister():
    unregister_topology_family("intra", KIND)
