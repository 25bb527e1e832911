"""Build cluster graphs: one function per intra-node fabric and per inter-node fabric.

A topology is a plain `networkx.DiGraph`. Contract (others code against it):

Vertices (string ids; `kind` attribute):
    "n{node}.gpu{local}"  kind="gpu", rank (global int, node-major), node (server index), local
    "n{node}.nvswitch"    kind="nvswitch": the node's NVSwitch chips as ONE non-blocking crossbar;
                          each GPU's port is its edge to/from it (per-port capacity, exact for a
                          non-blocking switch: any pair talks at the full per-GPU NVLink rate)
    "n{node}.pcie"        kind="pcie": a PCIe switch joining the GPUs of a PCIe-only node
    "n{node}.cpu"         kind="cpu": the host root complex; GPU pairs without NVLink (V100
                          cube-mesh "SYS" pairs, HCCS groups) go GPU -> cpu -> GPU over PCIe
    "n{node}.nic{i}"      kind="nic", node, index: NIC i; GPU l uses NIC l * nics // gpus_per_node
                          only (NCCL does not stripe one GPU's all-to-all over several NICs)
    "leaf{j}"             kind="leaf" (fat-tree: node n hangs off leaf n // servers_per_leaf)
    "leaf{g}.r{i}"        kind="leaf" (rail-optimized: NIC i of the nodes of group g)
    "spine"               kind="spine": the spine LAYER as one vertex. Each leaf's uplinks form one
                          trunk edge of capacity sum(uplinks) = downlink capacity / oversubscription.
                          This is exact for perfectly balanced ECMP (every flow spread evenly over
                          all spines); real hash-based ECMP can collide and do worse.
    "pod{p}.spine"        kind="spine" (3-tier fat-tree): pod p's spine layer; leaf j is in pod
                          j // leaves_per_pod, its trunk goes to its pod's spine
    "core"                kind="core" (3-tier fat-tree): the core layer as one vertex; each pod's
                          spine layer has one edge (kind "core") of capacity (the pod's leaf uplinks) /
                          core_oversubscription to it

Edges carry `bandwidth_Bps` (per direction, bytes/s), `latency_s` (per hop) and `kind` (the link
class: "nvlink", "pcie", "nic" (NIC <-> leaf), "trunk" (leaf <-> spine), "core" (pod spine <-> core));
nvlink edges also carry
`links` (how many 25 GB/s links they bundle); GPU <-> NIC edges carry route_cost=0.5 (routing only:
a NIC is not a shortcut between GPUs of its node, see `lshsim.topology.routing`). Every physical link is two opposite directed edges.

Several NICs per GPU (`nics_per_gpu` r > 1, e.g. AWS p5: 32 x 100 Gb/s for 8 GPUs): NCCL stripes a
GPU's traffic over the NICs of its PCIe switch; the graph models them as ONE NIC vertex per GPU
(attribute `ports` = r) whose edge to the leaf carries r x nic_Bps, exact for perfect striping.

Which builder builds a spec's `intra.kind` / `inter.kind` is the family registry's business
(`lshsim.topology.families`): a builder takes exactly the keyword arguments it declares.

G.graph: name, num_nodes, gpus_per_node, gpu (dict, see `lshsim.topology.gpus`), alpha_s (per-
message start-up latency of the collectives), nics_per_node (0 for one node), intra_kind,
inter_kind (None for one node), calibration (dict or None), spec (the normalised spec dict),
source (the file or "<dict>").
"""
from __future__ import annotations

import networkx as nx

__all__ = ["gpu_id", "nic_of_gpu", "add_nvswitch_node", "add_cube_mesh_v100_node", "add_pcie_node",
           "add_full_mesh_node", "add_fat_tree", "add_fat_tree_3tier", "add_rail", "CUBE_MESH_V100_LINKS"]

#: DGX-1 V100 hybrid cube-mesh (NVIDIA's DGX-1 topology, `nvidia-smi topo -m`): (i, j) -> NVLink links
#: (NV1 = 1, NV2 = 2 bonded); pairs not listed ("SYS") have no NVLink.
CUBE_MESH_V100_LINKS: dict[tuple[int, int], int] = {
    (0, 1): 1, (0, 2): 1, (0, 3): 2, (0, 4): 2,
    (1, 2): 2, (1, 3): 1, (1, 5): 2,
    (2, 3): 2, (2, 6): 1,
    (3, 7): 1,
    (4, 5): 1, (4, 6): 1, (4, 7): 2,
    (5, 6): 2, (5, 7): 1,
    (6, 7): 2,
}


def gpu_id(node: int, local: int) -> str:
    return f"n{node}.gpu{local}"


def nic_of_gpu(local: int, gpus_per_node: int, nics_per_node: int) -> int:
    """The NIC a GPU uses: its nearest, GPU l -> NIC l * nics // gpus_per_node.

    >>> [nic_of_gpu(l, 8, 2) for l in range(8)]
    [0, 0, 0, 0, 1, 1, 1, 1]
    """
    return local * nics_per_node // gpus_per_node


def _both(G: nx.DiGraph, u: str, v: str, **attrs) -> None:
    G.add_edge(u, v, **attrs)
    G.add_edge(v, u, **attrs)


def _add_gpus(G: nx.DiGraph, node: int, gpus_per_node: int) -> list[str]:
    ids = []
    for local in range(gpus_per_node):
        vid = gpu_id(node, local)
        G.add_node(vid, kind="gpu", rank=node * gpus_per_node + local, node=node, local=local)
        ids.append(vid)
    return ids


def add_nvswitch_node(G: nx.DiGraph, node: int, gpus_per_node: int, *, link_Bps: float, latency_s: float,
                      links: int = 0) -> None:
    """A/H100/H200 HGX: every GPU's NVLink port goes to one non-blocking switch (per-port capacity)."""
    sw = f"n{node}.nvswitch"
    G.add_node(sw, kind="nvswitch", node=node)
    for vid in _add_gpus(G, node, gpus_per_node):
        _both(G, vid, sw, bandwidth_Bps=link_Bps, latency_s=latency_s, kind="nvlink", links=links)


def _add_cpu(G: nx.DiGraph, node: int, gpus: list[str], pcie_Bps: float, pcie_latency_s: float) -> None:
    cpu = f"n{node}.cpu"
    G.add_node(cpu, kind="cpu", node=node)
    for vid in gpus:
        _both(G, vid, cpu, bandwidth_Bps=pcie_Bps, latency_s=pcie_latency_s, kind="pcie")


def add_cube_mesh_v100_node(G: nx.DiGraph, node: int, gpus_per_node: int, *, per_link_Bps: float,
                            latency_s: float, pcie_Bps: float, pcie_latency_s: float) -> None:
    """DGX-1 V100 hybrid cube-mesh: direct NV1/NV2 edges; SYS pairs cross PCIe via the host."""
    if gpus_per_node != 8:
        raise ValueError(f"gpus_per_node={gpus_per_node} must be 8 for intra.kind=cube_mesh_v100")
    gpus = _add_gpus(G, node, gpus_per_node)
    for (i, j), n_links in CUBE_MESH_V100_LINKS.items():
        _both(G, gpus[i], gpus[j], bandwidth_Bps=n_links * per_link_Bps, latency_s=latency_s, kind="nvlink",
              links=n_links)
    _add_cpu(G, node, gpus, pcie_Bps, pcie_latency_s)


def add_full_mesh_node(G: nx.DiGraph, node: int, gpus_per_node: int, *, per_link_Bps: float, latency_s: float,
                       pcie_Bps: float, pcie_latency_s: float, group_size: int | None = None) -> None:
    """Direct links between every pair of a group (e.g. Ascend 910A HCCS: two full-meshed groups of 4);
    pairs in different groups cross PCIe via the host."""
    group_size = gpus_per_node if group_size is None else group_size
    gpus = _add_gpus(G, node, gpus_per_node)
    for i in range(gpus_per_node):
        for j in range(i + 1, gpus_per_node):
            if i // group_size == j // group_size:
                _both(G, gpus[i], gpus[j], bandwidth_Bps=per_link_Bps, latency_s=latency_s, kind="nvlink", links=1)
    if group_size < gpus_per_node:
        _add_cpu(G, node, gpus, pcie_Bps, pcie_latency_s)


def add_pcie_node(G: nx.DiGraph, node: int, gpus_per_node: int, *, link_Bps: float, latency_s: float) -> None:
    """PCIe-only node: every GPU on one PCIe switch (peer-to-peer through it), link_Bps per GPU port."""
    sw = f"n{node}.pcie"
    G.add_node(sw, kind="pcie", node=node)
    for vid in _add_gpus(G, node, gpus_per_node):
        _both(G, vid, sw, bandwidth_Bps=link_Bps, latency_s=latency_s, kind="pcie")


def _add_nics(G: nx.DiGraph, num_nodes: int, gpus_per_node: int, nics_per_node: int, pcie_Bps: float,
              pcie_latency_s: float, nics_per_gpu: int = 1) -> None:
    """NICs and the GPU -> nearest-NIC edges (GPUDirect RDMA over the GPU's PCIe link)."""
    for node in range(num_nodes):
        for i in range(nics_per_node):
            G.add_node(f"n{node}.nic{i}", kind="nic", node=node, index=i, ports=nics_per_gpu)
        for local in range(gpus_per_node):
            nic = f"n{node}.nic{nic_of_gpu(local, gpus_per_node, nics_per_node)}"
            _both(G, gpu_id(node, local), nic, bandwidth_Bps=pcie_Bps, latency_s=pcie_latency_s, kind="pcie",
                  route_cost=0.5)


def _add_spine(G: nx.DiGraph, leaves: dict[str, int], nic_Bps: float, oversubscription: float,
               latency_s: float) -> None:
    """One trunk per leaf to the spine layer: capacity = downlinks * nic_Bps / oversubscription."""
    if len(leaves) < 2:
        return
    G.add_node("spine", kind="spine")
    for leaf, downlinks in leaves.items():
        _both(G, leaf, "spine", bandwidth_Bps=downlinks * nic_Bps / oversubscription, latency_s=latency_s,
              kind="trunk")


def add_fat_tree(G: nx.DiGraph, num_nodes: int, gpus_per_node: int, *, nics_per_node: int, nic_Bps: float,
                 servers_per_leaf: int, oversubscription: float, latency_s: float, pcie_Bps: float,
                 pcie_latency_s: float, nics_per_gpu: int = 1) -> None:
    """Two-level leaf/spine fat-tree: all NICs of node n on leaf n // servers_per_leaf."""
    leaves = _add_leaves(G, num_nodes, gpus_per_node, nics_per_node, nic_Bps, servers_per_leaf, latency_s, pcie_Bps,
                         pcie_latency_s, nics_per_gpu)
    _add_spine(G, leaves, nic_Bps, oversubscription, latency_s)


def _add_leaves(G: nx.DiGraph, num_nodes: int, gpus_per_node: int, nics_per_node: int, nic_Bps: float,
                servers_per_leaf: int, latency_s: float, pcie_Bps: float, pcie_latency_s: float,
                nics_per_gpu: int) -> dict[str, int]:
    """NICs on leaves (node n on leaf n // servers_per_leaf); returns leaf -> downlinks (physical NIC ports)."""
    _add_nics(G, num_nodes, gpus_per_node, nics_per_node, pcie_Bps, pcie_latency_s, nics_per_gpu)
    leaves: dict[str, int] = {}
    for node in range(num_nodes):
        leaf = f"leaf{node // servers_per_leaf}"
        G.add_node(leaf, kind="leaf")
        for i in range(nics_per_node):
            _both(G, f"n{node}.nic{i}", leaf, bandwidth_Bps=nic_Bps * nics_per_gpu, latency_s=latency_s, kind="nic")
        leaves[leaf] = leaves.get(leaf, 0) + nics_per_node * nics_per_gpu
    return leaves


def add_fat_tree_3tier(G: nx.DiGraph, num_nodes: int, gpus_per_node: int, *, nics_per_node: int, nic_Bps: float,
                       servers_per_leaf: int, leaves_per_pod: int, oversubscription: float,
                       core_oversubscription: float, latency_s: float, pcie_Bps: float, pcie_latency_s: float,
                       nics_per_gpu: int = 1) -> None:
    """Three-level fat-tree: node n on leaf n // servers_per_leaf, leaf j in pod j // leaves_per_pod.
    Each leaf's uplinks are one trunk to its pod's spine layer "pod{p}.spine" (capacity: the leaf's
    downlinks / oversubscription); each pod's spine layer has one edge to the core layer "core"
    (capacity: the pod's leaf uplinks / core_oversubscription). With one pod there is no core
    (a two-level tree); with one leaf per pod the pod spine is a pass-through."""
    leaves = _add_leaves(G, num_nodes, gpus_per_node, nics_per_node, nic_Bps, servers_per_leaf, latency_s, pcie_Bps,
                         pcie_latency_s, nics_per_gpu)
    pods: dict[int, float] = {}
    for j, (leaf, downlinks) in enumerate(leaves.items()):
        pod = j // leaves_per_pod
        spine = f"pod{pod}.spine"
        G.add_node(spine, kind="spine", pod=pod)
        uplink = downlinks * nic_Bps / oversubscription
        _both(G, leaf, spine, bandwidth_Bps=uplink, latency_s=latency_s, kind="trunk")
        pods[pod] = pods.get(pod, 0.0) + uplink
    if len(pods) < 2:
        return
    G.add_node("core", kind="core")
    for pod, uplink in pods.items():
        _both(G, f"pod{pod}.spine", "core", bandwidth_Bps=uplink / core_oversubscription, latency_s=latency_s,
              kind="core")


def add_rail(G: nx.DiGraph, num_nodes: int, gpus_per_node: int, *, nics_per_node: int, nic_Bps: float,
             servers_per_leaf: int, oversubscription: float, latency_s: float, pcie_Bps: float,
             pcie_latency_s: float, nics_per_gpu: int = 1) -> None:
    """Rail-optimized: NIC i of the nodes of group g = n // servers_per_leaf on leaf "leaf{g}.r{i}";
    leaves joined by the spine layer (cross-rail traffic goes leaf -> spine -> leaf; NCCL's PXN,
    which moves it over NVLink to the GPU on the right rail first, is not modelled)."""
    _add_nics(G, num_nodes, gpus_per_node, nics_per_node, pcie_Bps, pcie_latency_s, nics_per_gpu)
    leaves: dict[str, int] = {}
    for node in range(num_nodes):
        for i in range(nics_per_node):
            leaf = f"leaf{node // servers_per_leaf}.r{i}"
            G.add_node(leaf, kind="leaf")
            _both(G, f"n{node}.nic{i}", leaf, bandwidth_Bps=nic_Bps * nics_per_gpu, latency_s=latency_s, kind="nic")
            leaves[leaf] = leaves.get(leaf, 0) + nics_per_gpu
    _add_spine(G, leaves, nic_Bps, oversubscription, latency_s)
