"""Cluster topologies as `networkx.DiGraph`s.

Contract (the simulator, the MoE step and the executor's calibration code against it):

- GPU vertices carry kind="gpu", rank (global int), node (server index), local; other vertices have
  kind in {"nvswitch", "pcie", "cpu", "nic", "leaf", "spine"} (`lshsim.topology.build`).
- Every edge carries bandwidth_Bps (per direction) and latency_s (per hop), plus kind
  ("nvlink", "pcie", "nic", "trunk").
- G.graph: name, num_nodes, gpus_per_node, gpu (dict: name, peak_flops, hbm_Bps, memory_bytes,
  nvlink_Bps, gemm_efficiency, hbm_efficiency, achieved_flops, achieved_hbm_Bps), alpha_s,
  nics_per_node, intra_kind, inter_kind, calibration, spec, source; routing (a RoutingPolicy) only
  when the topology's family brings one.
- Families (`lshsim.topology.families`): `intra.kind` / `inter.kind` name a registered family, which
  reads its block, builds the graph and may bring its own routing policy (`register_topology_family`).
- `gpu_vertices(G)` lists GPU vertices by rank; `load_topology(name_or_path)`, `list_topologies()`,
  `build_topology(spec_dict)`, `write_topology_yaml(spec_dict, path)`, `validate_topology(G)`.
- The YAML schema is in `lshsim.topology.spec` and data/topologies/README.md.
"""
from lshsim.topology.build import gpu_id, nic_of_gpu
from lshsim.topology.families import (INTER_FAMILIES, INTRA_FAMILIES, TopologyFamily, register_topology_family,
                                      unregister_topology_family)
from lshsim.topology.gpus import GPUS, GpuSpec, get_gpu
from lshsim.topology.routing import RoutingPolicy, Routes, gpu_vertices, reference_path, validate_topology
from lshsim.topology.spec import (build_topology, list_topologies, load_topology, read_spec, topology_dir,
                                  write_topology_yaml)

__all__ = ["GPUS", "GpuSpec", "get_gpu", "gpu_id", "nic_of_gpu", "Routes", "gpu_vertices", "reference_path",
           "validate_topology", "build_topology", "list_topologies", "load_topology", "read_spec", "topology_dir",
           "write_topology_yaml", "TopologyFamily", "INTRA_FAMILIES", "INTER_FAMILIES", "register_topology_family",
           "unregister_topology_family", "RoutingPolicy"]
