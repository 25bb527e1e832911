"""The flow-level network: exact single-link times, fair sharing, conservation, the reference."""
import numpy as np
import pytest
import simpy

from lshsim.sim.network import FlowNetwork, simulate_flows
from lshsim.sim.reference import reference_max_min_rates, reference_simulate_flows
from lshsim.topology import build_topology, gpu_vertices, load_topology

BW = 10e9      # B/s
LAT = 3e-6     # s


def pair(alpha_s=0.0):
    """Two GPUs joined by one direct link each way."""
    return build_topology({"name": "pair", "gpu": "h100", "gpus_per_node": 2, "alpha_s": alpha_s,
                           "intra": {"kind": "full_mesh", "per_link_Bps": BW, "latency_s": LAT}})


@pytest.mark.parametrize("alpha_s, size", [(0.0, 1.0), (0.0, 7.5e8), (2e-5, 1e6), (1e-3, 0.0)])
def test_one_flow_on_one_link_is_exact(alpha_s, size):
    result = simulate_flows(pair(alpha_s), [(0, 1, size, 0.0)])
    assert result.time_s == pytest.approx(alpha_s + LAT + size / BW, rel=1e-12, abs=1e-18)


def test_n_flows_on_one_link_get_one_nth_each():
    for n in (1, 2, 3, 7):
        result = simulate_flows(pair(), [(0, 1, 1e8, 0.0)] * n)
        assert np.allclose(result.finish_s, LAT + n * 1e8 / BW, rtol=1e-12)
    # unequal sizes b, 2b, 3b: B/3 each until b is done, then B/2, then B
    b = 1e8
    result = simulate_flows(pair(), [(0, 1, b, 0.0), (0, 1, 2 * b, 0.0), (0, 1, 3 * b, 0.0)])
    assert np.allclose(result.finish_s, LAT + np.array([3, 5, 6]) * b / BW, rtol=1e-12)


def test_late_flow_shares_from_its_start():
    b = 1e8
    t1 = 0.5 * b / BW
    result = simulate_flows(pair(), [(0, 1, b, 0.0), (0, 1, b, t1)])
    # flow 0 alone for t1 (half done), then both at B/2: flow 0 needs b/2 more -> b/BW later
    assert result.finish_s[0] == pytest.approx(t1 + b / BW + LAT, rel=1e-12)
    assert result.finish_s[1] == pytest.approx(t1 + 1.5 * b / BW + LAT, rel=1e-12)


def test_opposite_directions_do_not_share():
    result = simulate_flows(pair(), [(0, 1, 1e8, 0.0), (1, 0, 1e8, 0.0)])
    assert np.allclose(result.finish_s, LAT + 1e8 / BW, rtol=1e-12)


def test_max_min_fair_rates_reference():
    # the classic: a link of 2 shared by f0, f1; f1 and f2 share a link of 10 -> f2 takes the rest
    assert reference_max_min_rates([[("a", "b")], [("a", "b"), ("b", "c")], [("b", "c")]],
                                   {("a", "b"): 2.0, ("b", "c"): 10.0}) == [1.0, 1.0, 9.0]


def test_bottleneck_is_the_shared_nic():
    """8 GPUs of a node send to the other node through one 100 Gb/s NIC: 1/8 of its 12.5 GB/s each, at
    the all-to-all efficiency of the cluster's named software calibration (`software.a2a_efficiency`)."""
    G = load_topology("lshmoe-v100-2x8")
    nic_Bps = 12.5e9 * G.graph["software"]["a2a_efficiency"]
    # the documented rule: nccl-tests#78's all-to-all / all-reduce ratio times the all-reduce's 0.96
    assert abs(G.graph["software"]["a2a_efficiency"] - 0.96 * 0.2912 / 0.3464) < 5e-4
    flows = [(r, 8 + r, 1e8, 0.0) for r in range(8)]
    result = simulate_flows(G, flows, alpha_s=0.0)
    path_latency = 4 * 1e-6
    assert np.allclose(result.finish_s, path_latency + 8 * 1e8 / nic_Bps, rtol=1e-12)


def random_flows(world, count, seed, starts=(0.0, 2e-4, 1e-3)):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, world, count)
    dst = (src + rng.integers(1, world, count)) % world
    size = rng.uniform(1e5, 2e7, count)
    size[:3] = size[3]                                    # some identical flows (aggregated into classes)
    src[:3], dst[:3] = src[3], dst[3]
    return np.c_[src, dst, size, rng.choice(starts, count)]


@pytest.mark.parametrize("name", ["lshmoe-v100-2x8", "lshmoe-a100-4x8", "h100-rail-4x8", "pcie-a100", "dgx1-v100"])
def test_fast_path_equals_reference(name):
    G = load_topology(name)
    world = len(gpu_vertices(G))
    flows = random_flows(world, 80, seed=len(name))
    fast = simulate_flows(G, flows)
    finish, link_bytes = reference_simulate_flows(G, flows)
    assert np.allclose(fast.finish_s, finish, rtol=1e-9)
    fast_bytes = fast.link_bytes_dict()
    assert set(fast_bytes) == set(link_bytes)
    assert all(fast_bytes[e] == pytest.approx(link_bytes[e], rel=1e-12) for e in link_bytes)


def test_fast_path_equals_reference_under_oversubscription():
    G = build_topology({"name": "os", "gpu": "a100", "nodes": 4, "gpus_per_node": 4, "intra": {"kind": "nvswitch"},
                        "inter": {"kind": "fat_tree", "nics_per_node": 2, "nic_gbps": 200, "servers_per_leaf": 1,
                                  "oversubscription": 3.0}})
    flows = random_flows(16, 60, seed=7)
    fast = simulate_flows(G, flows)
    finish, _ = reference_simulate_flows(G, flows)
    assert np.allclose(fast.finish_s, finish, rtol=1e-9)


def test_bytes_are_conserved():
    G = load_topology("lshmoe-a100-4x8")
    gpus = gpu_vertices(G)
    flows = random_flows(len(gpus), 200, seed=3)
    result = simulate_flows(G, flows)
    link = result.link_bytes_dict()
    for rank, g in enumerate(gpus):
        sent = flows[flows[:, 0] == rank, 2].sum()
        received = flows[flows[:, 1] == rank, 2].sum()
        assert sum(b for (u, _), b in link.items() if u == g) == pytest.approx(sent, rel=1e-12)
        assert sum(b for (_, v), b in link.items() if v == g) == pytest.approx(received, rel=1e-12)
    # every non-GPU vertex forwards what it receives
    for v, data in G.nodes(data=True):
        if data["kind"] != "gpu":
            into = sum(b for (_, w), b in link.items() if w == v)
            out = sum(b for (u, _), b in link.items() if u == v)
            assert into == pytest.approx(out, rel=1e-12), v


def test_runs_are_deterministic():
    G = load_topology("h100-rail-4x8")
    flows = random_flows(32, 300, seed=11)
    a, b = simulate_flows(G, flows), simulate_flows(G, flows)
    assert np.array_equal(a.finish_s, b.finish_s) and np.array_equal(a.link_bytes, b.link_bytes)


def test_transfer_inside_a_simpy_process():
    """The extension contract: a process mixes compute (timeouts) and transfers on one clock."""
    G = pair(alpha_s=1e-5)
    net = FlowNetwork(G)
    log = []

    def step(env):
        yield env.timeout(1e-3)                                   # compute
        tr = yield from net.run_transfer([0, 1], [1, 0], [1e7, 2e7], label="dispatch")
        log.append((tr.label, tr.start_s, tr.end_s, tr.finish_s.tolist()))

    net.env.run(until=net.env.process(step(net.env)))
    label, start, end, finish = log[0]
    assert label == "dispatch" and start == 1e-3
    assert finish == pytest.approx([1e-3 + 1e-5 + LAT + 1e7 / BW, 1e-3 + 1e-5 + LAT + 2e7 / BW], rel=1e-12)
    assert end == pytest.approx(max(finish)) and net.env.now == pytest.approx(end)


def test_bad_flows_are_refused():
    G = pair()
    with pytest.raises(ValueError, match="src == dst == 1"):
        simulate_flows(G, [(1, 1, 5.0, 0.0)])
    with pytest.raises(ValueError, match=r"size_bytes\[0\]=-1.0 must be"):
        simulate_flows(G, [(0, 1, -1.0, 0.0)])
    with pytest.raises(ValueError, match=r"ranks must be in \[0, 2\)"):
        simulate_flows(G, [(0, 2, 1.0, 0.0)])
    with pytest.raises(ValueError, match="start_delay"):
        simulate_flows(G, [(0, 1, 1.0, -1.0)])
    net = FlowNetwork(G)
    with pytest.raises(ValueError, match="alpha_s=-1.0 must be >= 0"):
        net.transfer([0], [1], [1.0], alpha_s=-1.0)


def test_identical_flows_are_one_class():
    G = load_topology("h100-nvswitch")
    flows = [(0, 1, 1e6, 0.0)] * 5 + [(0, 2, 1e6, 0.0)] * 3 + [(0, 1, 2e6, 0.0)]
    result = simulate_flows(G, flows)
    assert result.stats["flows"] == 9 and result.stats["classes"] == 3
    finish, _ = reference_simulate_flows(G, flows)
    assert np.allclose(result.finish_s, finish, rtol=1e-12)


def test_bandwidth_scale_by_kind_scales_only_that_network():
    """A per-kind bandwidth factor changes this network's capacities, not the graph's."""
    G = pair()
    kind = next(iter({G.edges[e].get("kind") for e in G.edges}))
    net = FlowNetwork(G, bandwidth_scale_by_kind={kind: 0.5})
    net.env.run(until=net.transfer(0, 1, 1e8).done)
    assert net.env.now == pytest.approx(LAT + 1e8 / (0.5 * BW), rel=1e-12)
    assert np.allclose(net.capacity_Bps, 0.5 * FlowNetwork(G).capacity_Bps)
    with pytest.raises(ValueError, match="'warp'"):
        FlowNetwork(G, bandwidth_scale_by_kind={"warp": 2.0})
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        FlowNetwork(G, bandwidth_scale_by_kind={kind: 0.0})


def test_busiest_links_rank_by_utilisation_not_bytes():
    """busiest_links by hand: utilisation = bytes / (capacity x time); the link with the most bytes
    is not the busiest when its capacity is larger; equal utilisation: more bytes first, then edge
    order; links that carried nothing are left out; k cuts the list; time 0 gives utilisation 0."""
    from lshsim.sim.network import busiest_links

    edges = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "f")]
    link_bytes = np.array([8e9, 3e9, 6e9, 3e9, 0.0])
    capacity = np.array([10e9, 4e9, 12e9, 6e9, 1e9])
    # utilisation over 1 s: 0.8, 0.75, 0.5, 0.5, 0 -> c-d before d-e (equal 0.5: 6e9 bytes > 3e9 bytes)
    top = busiest_links(edges, link_bytes, capacity, 1.0)
    assert top == [("a", "b", 8e9, 0.8), ("b", "c", 3e9, 0.75), ("c", "d", 6e9, 0.5), ("d", "e", 3e9, 0.5)]
    # half the time: every utilisation doubles, the order stays
    assert [u for *_, u in busiest_links(edges, link_bytes, capacity, 0.5)] == [1.6, 1.5, 1.0, 1.0]
    # the most bytes on a fast link ranks below fewer bytes on a slow one
    top = busiest_links(edges[:2], np.array([9e9, 1e9]), np.array([100e9, 1e9]), 1.0)
    assert [(u, v) for u, v, *_ in top] == [("b", "c"), ("a", "b")] and top[0][3] == 1.0
    # equal utilisation and equal bytes: edge order
    assert [(u, v) for u, v, *_ in busiest_links(edges[:2], np.array([2e9, 2e9]), np.array([4e9, 4e9]), 1.0)] \
        == [("a", "b"), ("b", "c")]
    assert len(busiest_links(edges, link_bytes, capacity, 1.0, k=2)) == 2
    assert [u for *_, u in busiest_links(edges, link_bytes, capacity, 0.0)] == [0.0] * 4
