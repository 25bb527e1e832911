"""Topologies: shipped specs, the graph contract, validation errors, calibration, routing."""
import networkx as nx
import numpy as np
import pytest
import yaml

from lshsim.topology import (GPUS, Routes, build_topology, gpu_vertices, list_topologies, load_topology,
                             nic_of_gpu, read_spec, reference_path, validate_topology, write_topology_yaml)
from lshsim.topology.build import CUBE_MESH_V100_LINKS

SHIPPED = sorted(["a100-nvswitch", "dgx1-v100", "h100-fattree-8x8", "h100-nvswitch", "h100-rail-4x8", "h200-nvswitch",
                  "locmoe-16x8", "locmoe-32x8", "locmoe-8x8", "lshmoe-a100-4x8", "lshmoe-v100-2x8", "pcie-a100",
                  # today's clusters (issue 14)
                  "h100-ib-rail-8x8", "h100-roce-fattree-8x8", "h200-ib-fattree-16x8-os2", "b200-ib-rail-8x8",
                  "b200-roce-fattree3-32x8", "h100-ib-fattree3-32x8", "h100-efa-p5-8x8"])


def h100_node(gpus=8, **extra):
    spec = {"name": "t", "gpu": "h100", "nodes": 1, "gpus_per_node": gpus, "intra": {"kind": "nvswitch"}}
    spec.update(extra)
    return spec


def cluster(nodes=8, nics=8, kind="fat_tree", **inter):
    spec = {"name": "c", "gpu": "h100", "nodes": nodes, "gpus_per_node": 8, "intra": {"kind": "nvswitch"},
            "inter": {"kind": kind, "nics_per_node": nics, "nic_gbps": 400, "servers_per_leaf": 4}}
    spec["inter"].update(inter)
    return spec


def test_shipped_topologies_are_listed_and_load():
    names = list_topologies()
    assert [n for n in names if "/" not in n] == SHIPPED          # sub-folders (calibrated/...) come as SUB/NAME
    for name in names:
        G = load_topology(name)
        gpus = gpu_vertices(G)
        assert len(gpus) == G.graph["num_nodes"] * G.graph["gpus_per_node"]
        assert [G.nodes[g]["rank"] for g in gpus] == list(range(len(gpus)))
        assert all(G.nodes[g]["node"] == G.nodes[g]["rank"] // G.graph["gpus_per_node"] for g in gpus)
        for key in ("name", "num_nodes", "gpus_per_node", "gpu", "alpha_s"):
            assert key in G.graph, (name, key)
        for key in ("name", "peak_flops", "hbm_Bps", "memory_bytes", "achieved_flops", "achieved_hbm_Bps"):
            assert G.graph["gpu"][key], (name, key)
        kinds = {d["kind"] for _, d in G.nodes(data=True)}
        assert kinds <= {"gpu", "nvswitch", "pcie", "cpu", "nic", "leaf", "spine", "core"}
        assert all(d["bandwidth_Bps"] > 0 and d["latency_s"] >= 0 for _, _, d in G.edges(data=True))
        assert "/" in name or G.graph["name"] == name


def test_papers_clusters():
    v100 = load_topology("lshmoe-v100-2x8")
    assert (v100.graph["num_nodes"], v100.graph["gpus_per_node"], v100.graph["nics_per_node"]) == (2, 8, 1)
    # 100 Gb/s, at the named software calibration's all-to-all efficiency (0.807: nccl-tests#78's
    # all-to-all / all-reduce ratio on one cluster, times the all-reduce's 0.96)
    assert v100.edges["n0.nic0", "leaf0"]["bandwidth_Bps"] == pytest.approx(12.5e9 * 0.807)
    a100 = load_topology("lshmoe-a100-4x8")
    assert a100.graph["nics_per_node"] == 2 and a100.edges["n3.nic1", "leaf0"]["bandwidth_Bps"] == \
        pytest.approx(12.5e9 * 0.915)   # 2 x 100 Gb/s = 200 Gb/s per server, at the software's 0.915
    assert a100.has_edge("n0.gpu3", "n0.nic0") and a100.has_edge("n0.gpu4", "n0.nic1")
    assert not a100.has_edge("n0.gpu4", "n0.nic0")
    for nodes in (8, 16, 32):
        G = load_topology(f"locmoe-{nodes}x8")
        leaves = [v for v, d in G.nodes(data=True) if d["kind"] == "leaf"]
        assert len(leaves) == nodes // 4 and G.has_node("spine")


def test_nvswitch_port_rates_from_datasheet():
    for name, per_gpu in (("h100-nvswitch", 450e9), ("h200-nvswitch", 450e9), ("a100-nvswitch", 300e9)):
        G = load_topology(name)
        for g in gpu_vertices(G):
            assert G.edges[g, "n0.nvswitch"]["bandwidth_Bps"] == per_gpu
            assert G.edges["n0.nvswitch", g]["bandwidth_Bps"] == per_gpu
    assert build_topology(h100_node()).edges["n0.gpu0", "n0.nvswitch"]["bandwidth_Bps"] == 18 * 25e9


def test_v100_cube_mesh_matches_topo_matrix():
    G = load_topology("dgx1-v100")
    routes = Routes(G)
    for i in range(8):
        links = sum(G.edges[f"n0.gpu{i}", f"n0.gpu{j}"]["links"] for j in range(8)
                    if G.has_edge(f"n0.gpu{i}", f"n0.gpu{j}"))
        assert links == 6                                                  # 6 NVLink 2 links per V100
    for (i, j), n in CUBE_MESH_V100_LINKS.items():
        assert G.edges[f"n0.gpu{i}", f"n0.gpu{j}"]["bandwidth_Bps"] == n * 25e9
        assert routes.path(i, j) == [f"n0.gpu{i}", f"n0.gpu{j}"]
    assert routes.path(0, 5) == ["n0.gpu0", "n0.cpu", "n0.gpu5"]        # SYS pair: through the host


def test_fat_tree_trunks_and_oversubscription():
    G = build_topology(cluster(nodes=8))
    assert sorted(v for v, d in G.nodes(data=True) if d["kind"] == "leaf") == ["leaf0", "leaf1"]
    assert G.edges["leaf0", "spine"]["bandwidth_Bps"] == 4 * 8 * 50e9        # sum of the uplinks
    G2 = build_topology(cluster(nodes=8, oversubscription=2.0))
    assert G2.edges["leaf1", "spine"]["bandwidth_Bps"] == 4 * 8 * 50e9 / 2
    routes = Routes(G)
    assert routes.path(0, 8) == ["n0.gpu0", "n0.nic0", "leaf0", "n1.nic0", "n1.gpu0"]
    assert routes.path(0, 33) == ["n0.gpu0", "n0.nic0", "leaf0", "spine", "leaf1", "n4.nic1", "n4.gpu1"]
    assert routes.path(0, 1) == ["n0.gpu0", "n0.nvswitch", "n0.gpu1"]


def test_rail_puts_nic_i_on_leaf_i():
    G = build_topology(cluster(nodes=4, kind="rail"))
    for node in range(4):
        for i in range(8):
            assert G.has_edge(f"n{node}.nic{i}", f"leaf0.r{i}")
    routes = Routes(G)
    assert routes.path(2, 10) == ["n0.gpu2", "n0.nic2", "leaf0.r2", "n1.nic2", "n1.gpu2"]
    assert routes.path(2, 11) == ["n0.gpu2", "n0.nic2", "leaf0.r2", "spine", "leaf0.r3", "n1.nic3", "n1.gpu3"]


def test_nearest_nic():
    assert [nic_of_gpu(l, 8, 1) for l in range(8)] == [0] * 8
    assert [nic_of_gpu(l, 8, 8) for l in range(8)] == list(range(8))
    assert [nic_of_gpu(l, 8, 4) for l in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("name", ["lshmoe-v100-2x8", "lshmoe-a100-4x8", "h100-rail-4x8", "pcie-a100", "locmoe-8x8"])
def test_fast_routes_equal_reference_paths(name):
    G = load_topology(name)
    routes = Routes(G)
    world = routes.world
    rng = np.random.default_rng(0)
    pairs = [(s, d) for s in range(world) for d in range(world) if s != d]
    for k in rng.choice(len(pairs), size=min(60, len(pairs)), replace=False):
        s, d = pairs[k]
        assert routes.path(s, d) == reference_path(G, s, d), (s, d)


def test_unreachable_gpu_is_rejected_naming_the_pair():
    G = nx.DiGraph(name="broken")
    for r in range(3):
        G.add_node(f"g{r}", kind="gpu", rank=r, node=0)
    G.add_node("sw", kind="nvswitch")
    for r in (0, 1):
        G.add_edge(f"g{r}", "sw", bandwidth_Bps=1e9, latency_s=0.0)
        G.add_edge("sw", f"g{r}", bandwidth_Bps=1e9, latency_s=0.0)
    G.add_edge("g2", "sw", bandwidth_Bps=1e9, latency_s=0.0)                 # g2 can send, not receive
    with pytest.raises(ValueError, match=r"GPU rank 0 \(g0\) cannot reach GPU rank 2 \(g2\)"):
        validate_topology(G)
    G.add_edge("sw", "g2", bandwidth_Bps=0.0, latency_s=0.0)
    with pytest.raises(ValueError, match="bandwidth_Bps=0.0 must be"):
        validate_topology(G)
    G.edges["sw", "g2"]["bandwidth_Bps"] = 1e9
    validate_topology(G)


def test_gpus_do_not_forward():
    """A chain g0 - g1 - g2 of direct links: g0 cannot reach g2 (a GPU is never a transit vertex)."""
    G = nx.DiGraph(name="chain")
    for r in range(3):
        G.add_node(f"g{r}", kind="gpu", rank=r, node=0)
    for a, b in (("g0", "g1"), ("g1", "g2")):
        G.add_edge(a, b, bandwidth_Bps=1e9, latency_s=0.0)
        G.add_edge(b, a, bandwidth_Bps=1e9, latency_s=0.0)
    with pytest.raises(ValueError, match="cannot reach"):
        validate_topology(G)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["inter"].update(nic_gbps=-5), "bad.yaml: inter.nic_gbps=-5 must be > 0"),
    (lambda s: s["inter"].update(kind="torus"), "bad.yaml: inter.kind='torus' must be one of fat_tree, fat_tree_3tier, rail"),
    (lambda s: s["intra"].update(kind="ring"), "bad.yaml: intra.kind='ring' must be one of"),
    (lambda s: s.update(gpus_per_node=0), "bad.yaml: gpus_per_node=0 must be >= 1"),
    (lambda s: s.update(gpu="tpu"), "bad.yaml: gpu='tpu' is unknown; known: a100, ascend910a, b200, h100, h200, v100"),
    (lambda s: s.update(nodse=3), "bad.yaml: nodse=3 is not a known field"),
    (lambda s: s.pop("inter"), "bad.yaml: inter=None is required when nodes=8 > 1"),
    (lambda s: s["inter"].update(nics_per_node=9), r"bad.yaml: inter.nics_per_node=9 must be in \[1, 8\]"),
    (lambda s: s["inter"].update(servers_per_leaf="four"), "bad.yaml: inter.servers_per_leaf='four' must be an integer"),
    (lambda s: s.update(calibration={"nic_Bps": 0}), "bad.yaml: calibration.nic_Bps=0 must be > 0"),
    (lambda s: s.update(alpha_s=-1e-6), "bad.yaml: alpha_s=-1e-06 must be >= 0"),
])
def test_validation_errors_name_file_field_value(tmp_path, mutate, message):
    spec = cluster()
    mutate(spec)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=message):
        load_topology(path)


def test_unknown_topology_lists_known_names():
    with pytest.raises(ValueError, match="topology 'nope' is unknown; known: a100-nvswitch, .*dgx1-v100, .*pcie-a100"):
        load_topology("nope")
    with pytest.raises(ValueError, match="does not exist"):
        load_topology("/no/such/file.yaml")
    # a misspelt name: the close names first; the base clusters listed, the calibrated / published ones counted
    with pytest.raises(ValueError) as info:
        load_topology("h200-nvswich")
    message = str(info.value)
    assert message.startswith("topology 'h200-nvswich' is unknown; did you mean h200-nvswitch, ")
    from lshsim.topology.spec import list_topologies

    published = [n for n in list_topologies() if n.startswith("published/")]
    assert published and f"{len(published)} under published/" in message
    assert "published/p5-h100-efa-2x8" not in message and "h100-nvswitch" in message
    with pytest.raises(ValueError) as info:
        load_topology("dgx-h100")                                         # a shared token: the H100 clusters
    assert "did you mean" in str(info.value) and "h100-nvswitch" in str(info.value).split("? known:")[0]


def test_calibrated_single_node_round_trip(tmp_path):
    """The schema `executor calibrate` writes: one H100 NVSwitch node of 1/2/4/8 GPUs + calibration."""
    for gpus in (1, 2, 4, 8):
        spec = h100_node(gpus, name=f"cal-h100x{gpus}", alpha_s=1e-5,
                         calibration={"alpha_s": 2.5e-5, "nvlink_Bps": 3.7e11, "expert_flops": 6.5e14,
                                      "hbm_Bps": 2.9e12, "provenance": {"tool": "executor calibrate", "runs": 5}})
        path = write_topology_yaml(spec, tmp_path / f"cal{gpus}.yaml")
        G = load_topology(path)
        assert G.graph["alpha_s"] == 2.5e-5
        assert G.graph["gpu"]["achieved_flops"] == 6.5e14 and G.graph["gpu"]["achieved_hbm_Bps"] == 2.9e12
        assert G.graph["gpu"]["peak_flops"] == GPUS["h100"].peak_flops                # datasheet kept
        assert G.graph["calibration"]["provenance"] == {"tool": "executor calibrate", "runs": 5}
        assert all(d["bandwidth_Bps"] == 3.7e11 for _, _, d in G.edges(data=True))
        assert read_spec(path)[0] == spec


def test_calibration_scales_mesh_links_and_nics():
    spec = {"name": "v", "gpu": "v100", "nodes": 2, "gpus_per_node": 8, "intra": {"kind": "cube_mesh_v100"},
            "inter": {"kind": "fat_tree", "nics_per_node": 1, "nic_gbps": 100},
            "calibration": {"nvlink_Bps": 120e9, "nic_Bps": 11e9, "pcie_Bps": 10e9}}
    G = build_topology(spec)
    assert G.edges["n0.gpu0", "n0.gpu3"]["bandwidth_Bps"] == pytest.approx(2 * 20e9)   # NV2, 150 -> 120
    assert G.edges["n0.nic0", "leaf0"]["bandwidth_Bps"] == 11e9
    assert G.edges["n0.gpu5", "n0.cpu"]["bandwidth_Bps"] == 10e9
    with pytest.raises(ValueError, match="calibration.nvlink_Bps=1000000000.0 is given but intra.kind=pcie"):
        build_topology({"name": "p", "gpu": "a100", "gpus_per_node": 2, "intra": {"kind": "pcie"},
                        "calibration": {"nvlink_Bps": 1e9}})


def test_write_refuses_invalid_spec(tmp_path):
    with pytest.raises(ValueError, match="x.yaml: gpus_per_node=None is required"):
        write_topology_yaml({"name": "x", "gpu": "h100", "intra": {"kind": "nvswitch"}}, tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()


def test_inline_gpu_and_full_mesh_groups():
    G = build_topology({"name": "asc", "gpu": {"base": "ascend910a", "name": "my-npu", "hbm_Bps": 1.2e12},
                        "gpus_per_node": 8, "intra": {"kind": "full_mesh", "group_size": 4, "per_link_Bps": 30e9}})
    assert G.graph["gpu"]["name"] == "my-npu" and G.graph["gpu"]["hbm_Bps"] == 1.2e12
    routes = Routes(G)
    assert routes.path(0, 3) == ["n0.gpu0", "n0.gpu3"]
    assert routes.path(0, 4) == ["n0.gpu0", "n0.cpu", "n0.gpu4"]
    with pytest.raises(ValueError, match="gpu.flops is not a GPU field"):
        build_topology({"name": "x", "gpu": {"base": "h100", "flops": 1}, "gpus_per_node": 1,
                        "intra": {"kind": "nvswitch"}})


def test_binding_edges_leave_out_only_links_that_cannot_be_oversubscribed():
    def non_binding_kinds(spec):
        G = build_topology(spec)
        routes = Routes(G)
        return sorted({G.edges[e]["kind"] for e, b in zip(routes.edges, routes.binding_edges()) if not b})

    assert non_binding_kinds(cluster(nodes=8)) == ["nic", "trunk"]        # one 400G NIC per GPU, PCIe 50 GB/s
    assert non_binding_kinds(cluster(nodes=8, oversubscription=2.0)) == ["nic"]
    # 2 GPUs share a NIC: the NIC binds; the trunk (sized by NICs) is bounded only by the binding NICs,
    # and the rule looks at GPU ports only, so it stays in too (conservative, still exact)
    assert non_binding_kinds(cluster(nodes=8, nics=4)) == []
    slow_pcie = cluster(nodes=8)
    slow_pcie["intra"]["pcie_Bps"] = 25e9                                  # PCIe slower than the NIC
    assert non_binding_kinds(slow_pcie) == ["nic", "trunk"]
    fast_pcie = cluster(nodes=8)
    fast_pcie["intra"]["pcie_Bps"] = 64e9                                  # NIC slower than PCIe: NIC binds
    assert non_binding_kinds(fast_pcie) == []


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    """PyYAML reads 25e9 as a string (YAML 1.1); the loader accepts it, and refuses real text."""
    path = tmp_path / "e.yaml"
    path.write_text("name: e\ngpu: h100\ngpus_per_node: 2\nintra: {kind: nvswitch, link_Bps: 25e9}\n")
    assert load_topology(path).edges["n0.gpu0", "n0.nvswitch"]["bandwidth_Bps"] == 25e9
    path.write_text("name: e\ngpu: h100\ngpus_per_node: 2\nintra: {kind: nvswitch, link_Bps: fast}\n")
    with pytest.raises(ValueError, match="e.yaml: intra.link_Bps='fast' must be a finite number"):
        load_topology(path)
