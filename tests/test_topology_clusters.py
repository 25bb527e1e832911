"""Today's clusters (issue 14): the three-tier fat-tree family, several NICs per GPU, the shipped
H100 / H200 / B200 specs, checked against hand-computed capacities and bottleneck times."""
import pytest
import yaml

from lshsim.sim.collectives import simulate_all_to_all, uniform_traffic
from lshsim.topology import GPUS, Routes, build_topology, load_topology, reference_path


def three_tier(nodes=16, leaves_per_pod=2, core_oversubscription=1.0, oversubscription=1.0, **extra):
    return {"name": "t3", "gpu": "h100", "nodes": nodes, "gpus_per_node": 8, "alpha_s": 0.0,
            "intra": {"kind": "nvswitch", "latency_s": 0.0, "pcie_latency_s": 0.0},
            "inter": {"kind": "fat_tree_3tier", "nics_per_node": 8, "nic_gbps": 400, "servers_per_leaf": 2,
                      "leaves_per_pod": leaves_per_pod, "oversubscription": oversubscription,
                      "core_oversubscription": core_oversubscription, "latency_s": 0.0, **extra}}


def test_three_tier_vertices_capacities_and_routes():
    G = build_topology(three_tier(nodes=16, leaves_per_pod=2, core_oversubscription=2.0, oversubscription=1.5))
    leaves = sorted(v for v, d in G.nodes(data=True) if d["kind"] == "leaf")
    assert len(leaves) == 8                                                   # 16 nodes / 2 per leaf
    pods = sorted(v for v, d in G.nodes(data=True) if d["kind"] == "spine")
    assert pods == [f"pod{p}.spine" for p in range(4)] and G.nodes["core"]["kind"] == "core"
    leaf_uplink = 2 * 8 * 50e9 / 1.5                                          # 16 NICs x 50 GB/s / 1.5
    assert G.edges["leaf0", "pod0.spine"]["bandwidth_Bps"] == pytest.approx(leaf_uplink)
    assert G.edges["pod3.spine", "core"]["bandwidth_Bps"] == pytest.approx(2 * leaf_uplink / 2.0)
    assert G.edges["pod3.spine", "core"]["kind"] == "core"
    routes = Routes(G)
    # same leaf, same pod, other pod
    assert routes.path(0, 8) == ["n0.gpu0", "n0.nic0", "leaf0", "n1.nic0", "n1.gpu0"]
    assert routes.path(0, 16) == ["n0.gpu0", "n0.nic0", "leaf0", "pod0.spine", "leaf1", "n2.nic0", "n2.gpu0"]
    far = ["n0.gpu0", "n0.nic0", "leaf0", "pod0.spine", "core", "pod3.spine", "leaf7", "n15.nic1", "n15.gpu1"]
    assert routes.path(0, 121) == far == reference_path(G, 0, 121)


def test_three_tier_one_pod_has_no_core():
    G = build_topology(three_tier(nodes=4, leaves_per_pod=2))
    assert "core" not in G and G.has_node("pod0.spine")


@pytest.mark.parametrize("core_oversubscription", [1.0, 4.0])
def test_three_tier_uniform_all_to_all_hits_the_hand_computed_bottleneck(core_oversubscription):
    # 16 nodes x 8 GPUs, 4 pods of 4 nodes; B bytes per rank, split evenly over the 128 ranks.
    # NIC: each GPU sends B x 120/128 off its node at 50 GB/s.
    # core: a pod's 32 GPUs send B x 96/128 each out of the pod over 4 x 16 x 50 GB/s / c.
    B = 128e6
    G = build_topology(three_tier(core_oversubscription=core_oversubscription))
    result = simulate_all_to_all(G, uniform_traffic(128, B), local_copy=False)
    nic = B * 120 / 128 / 50e9
    core = 32 * B * 96 / 128 / (2 * 16 * 50e9 / core_oversubscription)
    assert result.time_s == pytest.approx(max(nic, core), rel=1e-6)


def test_several_nics_per_gpu_are_one_striped_vertex():
    spec = {"name": "p5", "gpu": "h100", "nodes": 2, "gpus_per_node": 8, "alpha_s": 0.0,
            "intra": {"kind": "nvswitch", "latency_s": 0.0, "pcie_latency_s": 0.0},
            "inter": {"kind": "fat_tree", "nics_per_node": 8, "nics_per_gpu": 4, "nic_gbps": 100, "latency_s": 0.0}}
    G = build_topology(spec)
    assert G.nodes["n0.nic3"]["ports"] == 4
    assert G.edges["n0.nic3", "leaf0"]["bandwidth_Bps"] == 4 * 12.5e9
    # GPU l of node 0 sends 100 MB to GPU l of node 1: the GPU's 4 x 100 Gb/s carry it at 50 GB/s
    traffic = [[0.0] * 16 for _ in range(16)]
    for local in range(8):
        traffic[local][8 + local] = 100e6
    assert simulate_all_to_all(G, traffic, local_copy=False).time_s == pytest.approx(100e6 / 50e9, rel=1e-9)


@pytest.mark.parametrize("inter, fragment", [
    ({"kind": "fat_tree", "nics_per_node": 4, "nics_per_gpu": 2}, "inter.nics_per_gpu=2 needs nics_per_node = gpus_per_node"),
    ({"kind": "fat_tree_3tier", "nics_per_node": 8}, "inter.leaves_per_pod=None is required"),
    ({"kind": "fat_tree_3tier", "nics_per_node": 8, "leaves_per_pod": 2, "core_oversubscription": 0.5},
     "inter.core_oversubscription=0.5 must be >= 1"),
    ({"kind": "rail", "nics_per_node": 8, "leaves_per_pod": 2}, "inter.leaves_per_pod=2 is only for inter.kind=fat_tree_3tier"),
])
def test_bad_cluster_fields_name_file_field_and_value(tmp_path, inter, fragment):
    spec = {"name": "bad", "gpu": "h100", "nodes": 4, "gpus_per_node": 8, "intra": {"kind": "nvswitch"},
            "inter": {"nic_gbps": 400, **inter}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError) as info:
        load_topology(path)
    assert "bad.yaml" in str(info.value) and fragment in str(info.value)


SHIPPED = {  # name: (GPU, nodes, inter kind, per-GPU network Gb/s, NVLink per GPU per direction)
    "h100-ib-rail-8x8": ("h100", 8, "rail", 400, 450e9),
    "h100-roce-fattree-8x8": ("h100", 8, "fat_tree", 400, 450e9),
    "h200-ib-fattree-16x8-os2": ("h200", 16, "fat_tree", 400, 450e9),
    "b200-ib-rail-8x8": ("b200", 8, "rail", 400, 900e9),
    "b200-roce-fattree3-32x8": ("b200", 32, "fat_tree_3tier", 400, 900e9),
    "h100-ib-fattree3-32x8": ("h100", 32, "fat_tree_3tier", 400, 450e9),
    "h100-efa-p5-8x8": ("h100", 8, "fat_tree", 400, 450e9),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_clusters_say_where_their_numbers_come_from(name):
    gpu, nodes, kind, gbps, nvlink = SHIPPED[name]
    G = load_topology(name)
    assert G.graph["gpu"]["peak_flops"] == GPUS[gpu].peak_flops
    assert (G.graph["num_nodes"], G.graph["inter_kind"]) == (nodes, kind)
    assert G.edges["n0.gpu0", "n0.nvswitch"]["bandwidth_Bps"] == nvlink
    assert G.edges["n0.nic0", _leaf_of(G)]["bandwidth_Bps"] == gbps * 0.125e9
    provenance = G.graph["calibration"]["provenance"]
    assert provenance["source"] and "alpha_s" in provenance["assumed"] and "efficiency" in provenance["assumed"]


def _leaf_of(G):
    return next(v for v in G.successors("n0.nic0") if G.nodes[v]["kind"] == "leaf")


def test_b200_datasheet_entry():
    b200 = GPUS["b200"]
    assert (b200.peak_flops, b200.hbm_Bps, b200.nvlink_Bps) == (2250e12, 7700e9, 900e9)
