"""The start-up of an all-to-all phase across nodes (`calibration.a2a_internode_alpha_s`,
`lshsim.sim.collectives.phase_alpha_s`): read from a topology, applied to the phases whose traffic
crosses nodes only, the same at every fidelity, off when the caller sets alpha_s, and the catalog's
value where it comes from (the published small all-to-alls of the fitting set)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from lshsim.sim.collectives import estimate_collective, phase_alpha_s, simulate_all_to_all, uniform_traffic
from lshsim.topology import build_topology
from lshsim.topology.spec import read_spec


def _spec(internode=None, nodes=2, alpha=1e-5):
    spec = {"name": "m", "gpu": "h100", "nodes": nodes, "gpus_per_node": 4, "alpha_s": alpha,
            "intra": {"kind": "nvswitch"}}
    if nodes > 1:
        spec["inter"] = {"kind": "fat_tree", "nics_per_node": 4, "nic_gbps": 400}
    if internode is not None:
        spec["calibration"] = {"a2a_internode_alpha_s": internode}
    return spec


def test_a_phase_across_nodes_starts_at_the_internode_start_up_and_one_within_a_node_does_not():
    plain, slow = build_topology(_spec()), build_topology(_spec(40e-6))
    traffic = uniform_traffic(8, 1024.0)                    # tiny: the start-up is the time
    base = simulate_all_to_all(plain, traffic, local_copy=False).time_s
    direct = simulate_all_to_all(slow, traffic, local_copy=False)
    assert direct.time_s == pytest.approx(base + 30e-6, rel=1e-6)          # 40 us instead of 10 us
    assert direct.options["a2a_internode_alpha_s"] == 40e-6
    within = np.zeros((8, 8))
    within[0, 1] = within[5, 6] = 1e6                                       # no byte leaves a node
    assert simulate_all_to_all(slow, within, local_copy=False).time_s == \
        pytest.approx(simulate_all_to_all(plain, within, local_copy=False).time_s, rel=1e-12)
    assert phase_alpha_s(slow, 1e-5, within) == 1e-5 and phase_alpha_s(slow, 50e-6, traffic) == 50e-6
    # hierarchical: only its exchange between the nodes' proxies crosses nodes, so it alone pays the 30 us more
    hier = simulate_all_to_all(slow, traffic, "hierarchical", local_copy=False).time_s
    assert hier == pytest.approx(simulate_all_to_all(plain, traffic, "hierarchical", local_copy=False).time_s + 30e-6,
                                 rel=1e-6)


@pytest.mark.parametrize("algorithm", ["direct", "hierarchical", "groupwise", "pairwise"])
def test_the_estimate_pays_the_internode_start_up_as_the_flow_simulation_does(algorithm):
    G = build_topology(_spec(40e-6))
    for size in (256.0, 4e6):
        traffic = uniform_traffic(8, size)
        exact = simulate_all_to_all(G, traffic, algorithm, local_copy=False).time_s
        assert estimate_collective(G, traffic, algorithm, local_copy=False).time_s == pytest.approx(exact, rel=1e-6)


def test_a_start_up_the_caller_sets_is_every_phase_s():
    G = build_topology(_spec(40e-6))
    traffic = uniform_traffic(8, 1024.0)
    assert simulate_all_to_all(G, traffic, local_copy=False, alpha_s=0.0).time_s == \
        pytest.approx(simulate_all_to_all(build_topology(_spec(alpha=0.0)), traffic, local_copy=False).time_s,
                      rel=1e-12)
    assert "a2a_internode_alpha_s" not in simulate_all_to_all(G, traffic, local_copy=False, alpha_s=0.0).options


def test_the_start_up_across_nodes_grows_with_the_remote_peers():
    """L + g p: on 2, 4 and 8 nodes of 4 GPUs a tiny all-to-all starts L + g x (4 x (nodes - 1)) late; a phase within
    a node keeps alpha_s; with g alone (L absent) the start-up is g p where that passes alpha_s."""
    for nodes in (2, 4, 8):
        spec = _spec(20e-6, nodes=nodes)
        spec["calibration"]["a2a_remote_peer_s"] = 2e-6
        plain, slow = build_topology(_spec(nodes=nodes, alpha=0.0)), build_topology(spec)
        traffic = uniform_traffic(4 * nodes, 1024.0)
        extra = simulate_all_to_all(slow, traffic, local_copy=False).time_s - \
            simulate_all_to_all(plain, traffic, local_copy=False).time_s
        assert extra == pytest.approx(20e-6 + 2e-6 * 4 * (nodes - 1), rel=1e-6)
        assert estimate_collective(slow, traffic, "direct", local_copy=False).time_s == \
            pytest.approx(simulate_all_to_all(slow, traffic, local_copy=False).time_s, rel=1e-9)
    only_g = _spec()
    only_g["calibration"] = {"a2a_remote_peer_s": 5e-6}
    G = build_topology(only_g)
    assert phase_alpha_s(G, 1e-5, uniform_traffic(8, 1.0)) == pytest.approx(20e-6)      # 4 remote peers x 5 us
    assert phase_alpha_s(G, 30e-6, uniform_traffic(8, 1.0)) == 30e-6


def test_bad_internode_start_ups_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"calibration.a2a_internode_alpha_s=4e-05 is the start-up of an all-to-all "
                                         r"across nodes, but the topology has one node"):
        build_topology(_spec(40e-6, nodes=1))
    with pytest.raises(ValueError, match=r"calibration.a2a_internode_alpha_s=-1e-05 must be >= 0"):
        build_topology(_spec(-1e-5))
    with pytest.raises(ValueError, match=r"calibration.a2a_internode_alpha_s='3e-5' must be a finite number, not text"):
        build_topology(_spec("3e-5"))
    one = _spec(nodes=1)
    one["calibration"] = {"a2a_remote_peer_s": 1e-6}
    with pytest.raises(ValueError, match=r"calibration.a2a_remote_peer_s=1e-06 is the start-up of an all-to-all across "
                                         r"nodes, but the topology has one node"):
        build_topology(one)


@pytest.mark.parametrize("key, value, slip", [("a2a_internode_alpha_s", 3.1e5, "3.1e-05"),
                                              ("a2a_remote_peer_s", 6.8e6, "6.8e-06"),
                                              ("a2a_internode_alpha_s", 1e6, "1e-06")])
def test_an_implausible_start_up_across_nodes_is_refused(key, value, slip):
    """robust5: `a2a_internode_alpha_s: 1.0e+6` (a start-up of 11.6 days) or a cost per remote peer of 6.8e6 s (an
    exponent's sign dropped) were planned, exit 0; they are latencies (lshsim.bounds, 1 s)."""
    spec = _spec(nodes=2)
    spec["calibration"] = {key: value}
    with pytest.raises(ValueError, match=re.escape(f"c.yaml: calibration.{key} = {value:g} is above 1 s, the limit for "
                                                   f"a per-message or per-hop latency") + rf".*did you mean {slip}\?"):
        build_topology(spec, source="c.yaml")


def test_the_catalog_start_up_reproduces_the_published_small_all_to_all_it_came_from():
    """The shipped InfiniBand / RoCE topologies' 31 us (+ 6.8 us per remote peer x s / (s + 88 MB), nothing at these
    sizes): a 2-node cut of h100-ib-rail-8x8, 16 ranks, gives the whole small all-to-all of the published 16-rank RoCE
    curve it was taken from (median 37.4 us over 256 B - 128 KiB) within 1 us; without it (alpha_s 10 us) it was
    16 us. The EFA topology's 36.8 us likewise gives the published 64 KiB row over EFA (43.9 us)."""
    from lshsim.sim.published import load_cases

    cases = {c.id: c for c in load_cases()}
    rows = [cases[f"amdkit-mi355x-ep16-{s}"] for s in ("256B", "512B", "1KiB", "2KiB", "4KiB", "8KiB", "16KiB",
                                                        "32KiB", "64KiB", "128KiB")]
    published = float(np.median([c.size_bytes * 15 / 16 / (c.published_GBps * 1e9) for c in rows]))
    assert published == pytest.approx(37.4e-6, abs=0.05e-6)
    efa_row = cases["nccl-b300kit-ep16-64KiB"]
    efa_published = efa_row.size_bytes * 15 / 16 / (efa_row.published_GBps * 1e9)
    for name, size, target in (("h100-ib-rail-8x8", 256, published), ("h100-roce-fattree-8x8", 256, published),
                               ("b200-ib-rail-8x8", 256, published), ("h100-efa-p5-8x8", 65536, efa_published)):
        spec, source = read_spec(name)
        G = build_topology({**spec, "nodes": 2}, source=source)
        t = estimate_collective(G, uniform_traffic(16, float(size)), "direct", local_copy=False).time_s
        assert t == pytest.approx(target, abs=1e-6), name


def test_the_cost_per_remote_peer_ramps_in_with_the_bytes_a_rank_sends():
    """g x p x s / (s + S0) (`calibration.a2a_remote_peer_ramp_bytes` = S0, the published-case model's form): on 2 and
    4 nodes of 4 GPUs the start-up of an even all-to-all is L + g x p x s / (s + S0), s the bytes a rank sends to the
    other ranks, written out here; at a tiny size it is L (any node count), at a huge one L + g p; the flow simulation
    and the estimate agree; the ramp without g, or on one node, is refused naming the field."""
    for nodes in (2, 4):
        spec = _spec(20e-6, nodes=nodes)
        spec["calibration"].update(a2a_remote_peer_s=3e-6, a2a_remote_peer_ramp_bytes=1e6)
        G = build_topology(spec)
        world, remote = 4 * nodes, 4 * (nodes - 1)
        for per_rank in (64.0, 1e6, 1e12):
            traffic = uniform_traffic(world, per_rank)
            sent = per_rank * (world - 1) / world                      # the diagonal (its own share) stays
            expected = 20e-6 + 3e-6 * remote * sent / (sent + 1e6)
            off = traffic - np.diag(np.diag(traffic))
            assert phase_alpha_s(G, 0.0, off) == pytest.approx(expected, rel=1e-9)
        assert phase_alpha_s(G, 0.0, uniform_traffic(world, 64.0) - np.diag(np.diag(uniform_traffic(world, 64.0)))) \
            == pytest.approx(20e-6, rel=1e-3)
        traffic = uniform_traffic(world, 4e6)
        assert estimate_collective(G, traffic, "direct", local_copy=False).time_s == \
            pytest.approx(simulate_all_to_all(G, traffic, local_copy=False).time_s, rel=1e-6)
        assert simulate_all_to_all(G, traffic, local_copy=False).options["a2a_remote_peer_ramp_bytes"] == 1e6
    no_g = _spec(20e-6)
    no_g["calibration"]["a2a_remote_peer_ramp_bytes"] = 1e6
    with pytest.raises(ValueError, match=r"calibration.a2a_remote_peer_ramp_bytes=1000000.0 is the ramp of the cost per "
                                         r"remote peer, but calibration.a2a_remote_peer_s is not given"):
        build_topology(no_g)
    one = _spec(nodes=1)
    one["calibration"] = {"a2a_remote_peer_ramp_bytes": 1e6}
    with pytest.raises(ValueError, match=r"calibration.a2a_remote_peer_ramp_bytes=1000000.0 is the start-up of an "
                                         r"all-to-all across nodes, but the topology has one node"):
        build_topology(one)


def test_the_ramped_cost_per_remote_peer_is_the_busiest_rank_s():
    """max over ranks of g x p x s / (s + S0), each rank with its own remote peers p and bytes s, written out: rank 0
    sends 1 kB to each of the 4 ranks of the other node (p 4, s 4 kB: 4 x 4e3 / 1.004e6), rank 1 sends 1 GB to one
    (p 1, s 1 GB: 1e9 / 1.001e9): rank 1's term is the larger though rank 0 has more remote peers, and neither is
    their mean; a rank's bytes within its node count in its s (rank 2: 1 GB to rank 3 and 1 kB to rank 4, p 1)."""
    spec = _spec(20e-6)
    spec["calibration"].update(a2a_remote_peer_s=3e-6, a2a_remote_peer_ramp_bytes=1e6)
    G = build_topology(spec)
    traffic = np.zeros((8, 8))
    traffic[0, 4:] = 1e3
    traffic[1, 5] = 1e9
    terms = [4 * 4e3 / (4e3 + 1e6), 1e9 / (1e9 + 1e6)]
    assert phase_alpha_s(G, 0.0, traffic) == pytest.approx(20e-6 + 3e-6 * max(terms), rel=1e-12)
    assert phase_alpha_s(G, 50e-6, traffic) == 50e-6                    # never below the caller's alpha_s
    mixed = np.zeros((8, 8))
    mixed[2, 3], mixed[2, 4] = 1e9, 1e3                                  # s = 1 GB + 1 kB, p = 1
    assert phase_alpha_s(G, 0.0, mixed) == pytest.approx(20e-6 + 3e-6 * (1e9 + 1e3) / (1e9 + 1e3 + 1e6), rel=1e-12)
