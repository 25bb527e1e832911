"""A toy topology family (a ring of switches, routed clockwise) registered as one module + one
registry entry: a YAML spec using it loads with load_topology, routes by its policy, and simulates
an all-to-all."""
import pytest
import yaml

from lshsim.sim.collectives import simulate_all_to_all, uniform_traffic
from lshsim.topology import INTRA_FAMILIES, Routes, load_topology, reference_path
from plugins import toy_topology

SPEC = {"name": "ring4", "gpu": "h100", "gpus_per_node": 4,
        "intra": {"kind": toy_topology.KIND, "link_Bps": 100e9, "ring_Bps": 50e9, "latency_s": 0.0}, "alpha_s": 0.0}


@pytest.fixture
def switch_ring():
    family = toy_topology.register()
    yield family
    toy_topology.unregister()
    assert toy_topology.KIND not in INTRA_FAMILIES


def _write(tmp_path, spec):
    path = tmp_path / "ring4.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_toy_family_loads_routes_clockwise_and_simulates(switch_ring, tmp_path):
    G = load_topology(_write(tmp_path, SPEC))
    assert G.graph["intra_kind"] == toy_topology.KIND and G.graph["routing"].name == "clockwise"
    routes = Routes(G)
    # rank 1 -> rank 0 goes the long way round, clockwise: ring1 -> ring2 -> ring3 -> ring0
    expected = ["n0.gpu1", "n0.ring1", "n0.ring2", "n0.ring3", "n0.ring0", "n0.gpu0"]
    assert routes.path(1, 0) == expected == reference_path(G, 1, 0)
    assert routes.hops[1, 0] == 5 and routes.hops[0, 1] == 3
    # uniform all-to-all, 3 MB per peer: ring edge (ring_i -> ring_i+1) carries 1 + 2 + 3 peers' worth
    # from the ranks behind it (6 MB per edge) at 50 GB/s; each GPU port carries 9 MB at 100 GB/s
    result = simulate_all_to_all(G, uniform_traffic(4, 4 * 3e6), local_copy=False)
    assert result.time_s == pytest.approx(6 * 3e6 / 50e9 + 0.0, rel=1e-9)
    link = dict(zip(result.edges, result.link_bytes))
    assert link[("n0.ring0", "n0.ring1")] == pytest.approx(6 * 3e6) and link[("n0.ring1", "n0.ring0")] == 0


def test_toy_family_fields_are_checked(switch_ring, tmp_path):
    spec = {**SPEC, "intra": {**SPEC["intra"], "ring_Bps": -1}}
    with pytest.raises(ValueError, match="ring4.yaml: intra.ring_Bps=-1 must be > 0"):
        load_topology(_write(tmp_path, spec))
    spec = {**SPEC, "intra": {**SPEC["intra"], "rign_Bps": 1e9}}
    with pytest.raises(ValueError, match="ring4.yaml: intra.rign_Bps=1000000000.0 is not a known field"):
        load_topology(_write(tmp_path, spec))
    spec = {**SPEC, "intra": {**SPEC["intra"], "kind": "nvswitch"}}       # another family's own field
    with pytest.raises(ValueError, match="ring4.yaml: intra.ring_Bps=50000000000.0 is only for intra.kind=switch_ring"):
        load_topology(_write(tmp_path, spec))
    with pytest.raises(ValueError, match="already registered"):
        toy_topology.register()


def test_calibrated_nvlink_needs_the_family_hook(switch_ring, tmp_path):
    spec = {**SPEC, "calibration": {"nvlink_Bps": 80e9}}
    with pytest.raises(ValueError, match="intra.kind=switch_ring has no NVLink"):   # no with_nvlink hook
        load_topology(_write(tmp_path, spec))


def test_builders_take_exactly_their_keywords():
    """No `**_`: a misspelt keyword reaches the builder as an error, not silence."""
    import networkx as nx

    from lshsim.topology.build import add_nvswitch_node

    with pytest.raises(TypeError, match="link_bps"):
        add_nvswitch_node(nx.DiGraph(), 0, 2, link_bps=1e9, latency_s=0.0)
    assert INTRA_FAMILIES["full_mesh"].parameters == ("per_link_Bps", "latency_s", "pcie_Bps", "pcie_latency_s",
                                                       "group_size")


def test_default_routing_is_unchanged():
    G = load_topology("lshmoe-v100-2x8")
    assert "routing" not in G.graph and Routes(G).policy.name == "least_weight"
    routes = Routes(G)
    assert routes.path(0, 9) == reference_path(G, 0, 9)
    assert int(routes.hops[0, 9]) == len(routes.path(0, 9)) - 1
