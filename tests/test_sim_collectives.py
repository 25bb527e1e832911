"""All-to-all collectives: cross-check with lshsim.analytic.comm, conservation, the algorithms."""
import numpy as np
import pytest
import torch

from lshsim.analytic.comm import a2a_time_direct, a2a_time_direct_multinode
from lshsim.sim.collectives import (ALGORITHMS, hierarchical_phases, proxy_of_local, simulate_all_to_all,
                                    uniform_traffic)
from lshsim.topology import build_topology, load_topology


def random_traffic(world, seed, mean_bytes=1e8):
    """Moderately uneven traffic: every pair uniform in [0.5, 1.5] x mean."""
    return np.random.default_rng(seed).uniform(0.5, 1.5, (world, world)) * mean_bytes


@pytest.mark.parametrize("name, port_Bps", [("h100-nvswitch", 450e9), ("a100-nvswitch", 300e9), ("pcie-a100", 25e9)])
@pytest.mark.parametrize("kind", ["uniform", "random0", "random1"])
def test_direct_on_nonblocking_switch_equals_analytic(name, port_Bps, kind):
    G = load_topology(name)
    traffic = uniform_traffic(8, 8e8) if kind == "uniform" else random_traffic(8, int(kind[-1]))
    result = simulate_all_to_all(G, traffic, "direct", local_copy=False)
    expected = a2a_time_direct(traffic, bandwidth_Bps=port_Bps, alpha_s=G.graph["alpha_s"])
    assert result.time_s == pytest.approx(expected, rel=0.01)
    if kind == "uniform":   # exact up to the two hops of latency the alpha-beta model does not have
        hops_s = 2 * G.edges["n0.gpu0", "n0.nvswitch" if name != "pcie-a100" else "n0.pcie"]["latency_s"]
        assert result.time_s == pytest.approx(expected + hops_s, rel=1e-9)


@pytest.mark.parametrize("kind", ["uniform", "random"])
def test_direct_on_nonblocking_fat_tree_equals_analytic(kind):
    """One 400 Gb/s NIC per GPU, non-blocking leaves and spine: the analytic two-level model."""
    nodes = 8 if kind == "uniform" else 4          # random traffic: one drain event per flow, keep it small
    G = build_topology({"name": "ft", "gpu": "h100", "nodes": nodes, "gpus_per_node": 8, "intra": {"kind": "nvswitch"},
                        "inter": {"kind": "fat_tree", "nics_per_node": 8, "nic_gbps": 400, "servers_per_leaf": 2}})
    assert G.has_node("spine")
    traffic = uniform_traffic(8 * nodes, 1e9) if kind == "uniform" else random_traffic(8 * nodes, 5, 2e7)
    result = simulate_all_to_all(G, traffic, "direct", local_copy=False)
    expected = a2a_time_direct_multinode(traffic, 8, intra_bandwidth_Bps=450e9, inter_bandwidth_Bps=50e9,
                                         alpha_s=G.graph["alpha_s"], nics_per_node=8)
    assert result.time_s == pytest.approx(expected, rel=0.01)


def test_unknown_algorithm_lists_known_names():
    G = load_topology("h100-nvswitch")
    with pytest.raises(ValueError, match=r"algorithm='ring' is unknown; known: direct, pairwise, hierarchical, "
                                         r"groupwise, node_dedup \(alias: 2d = hierarchical, deepep = node_dedup\)"):
        simulate_all_to_all(G, uniform_traffic(8, 1e6), "ring")
    with pytest.raises(ValueError, match="'groupwise_overlap' is not implemented by the simulator"):
        simulate_all_to_all(G, uniform_traffic(8, 1e6), "groupwise_overlap")


def test_2d_is_an_alias_of_hierarchical():
    """One name per algorithm: "2d" runs the hierarchical algorithm and reports its canonical name."""
    G = load_topology("lshmoe-v100-2x8")
    traffic = random_traffic(16, 3, 1e6)
    alias = simulate_all_to_all(G, traffic, "2d", chunks=2)
    canonical = simulate_all_to_all(G, traffic, "hierarchical", chunks=2)
    assert alias.algorithm == canonical.algorithm == "hierarchical"
    assert alias.time_s == canonical.time_s
    assert "2d" in ALGORITHMS and ALGORITHMS["2d"] is ALGORITHMS["hierarchical"]
    assert list(ALGORITHMS) == ["direct", "pairwise", "hierarchical", "groupwise", "node_dedup"]


def test_traffic_shape_is_checked():
    G = load_topology("h100-nvswitch")
    with pytest.raises(ValueError, match=r"traffic_bytes has shape \(4, 4\), expected \(8, 8\)"):
        simulate_all_to_all(G, np.ones((4, 4)))
    with pytest.raises(ValueError, match="finite and >= 0"):
        simulate_all_to_all(G, -np.ones((8, 8)))


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("name", ["lshmoe-v100-2x8", "lshmoe-a100-4x8", "h100-rail-4x8"])
def test_every_algorithm_conserves_bytes(name, algorithm):
    G = load_topology(name)
    world = G.graph["num_nodes"] * G.graph["gpus_per_node"]
    traffic = random_traffic(world, 2, 1e6)
    result = simulate_all_to_all(G, traffic, algorithm)
    off = traffic - np.diag(np.diag(traffic))
    assert np.allclose(result.egress_bytes, off.sum(1)) and np.allclose(result.ingress_bytes, off.sum(0))
    assert result.time_s > 0 and result.algorithm == algorithm
    link = dict(zip(result.edges, result.link_bytes))
    gpus = [f"n{r // 8}.gpu{r % 8}" for r in range(world)]
    into_gpus = sum(b for (_, v), b in link.items() if v in gpus)
    out_of_gpus = sum(b for (u, _), b in link.items() if u in gpus)
    assert into_gpus == pytest.approx(out_of_gpus, rel=1e-12)
    if algorithm in ("direct", "pairwise", "groupwise"):   # no forwarding: every byte leaves a GPU once
        assert out_of_gpus == pytest.approx(off.sum(), rel=1e-12)
    else:                                                  # proxies forward: at least once
        assert out_of_gpus >= off.sum() * (1 - 1e-12)
    assert sum(s.bytes for s in result.stages) == pytest.approx(out_of_gpus, rel=1e-12)


def test_single_node_2d_and_groupwise_equal_direct():
    G = load_topology("dgx1-v100")
    traffic = random_traffic(8, 4)
    direct = simulate_all_to_all(G, traffic, "direct").time_s
    assert simulate_all_to_all(G, traffic, "2d").time_s == direct
    assert simulate_all_to_all(G, traffic, "groupwise").time_s == direct


def test_pairwise_uniform_is_sum_of_steps():
    G = load_topology("h100-nvswitch")
    alpha, hop = G.graph["alpha_s"], 1e-6
    result = simulate_all_to_all(G, uniform_traffic(8, 8e8), "pairwise", local_copy=False)
    assert len(result.stages) == 7
    assert result.time_s == pytest.approx(7 * (alpha + 2 * hop + 1e8 / 450e9), rel=1e-9)


def test_groupwise_is_intra_then_inter():
    G = load_topology("lshmoe-a100-4x8")
    traffic = random_traffic(32, 8)
    result = simulate_all_to_all(G, traffic, "groupwise")
    intra, inter = result.stages
    assert (intra.name, inter.name) == ("intra", "inter") and inter.start_s == pytest.approx(intra.end_s)
    node = np.arange(32) // 8
    same = node[:, None] == node[None, :]
    assert intra.bytes == pytest.approx((traffic * same).sum() - np.trace(traffic))
    assert inter.bytes == pytest.approx((traffic * ~same).sum())


def test_hierarchical_phases_move_each_byte_where_it_belongs():
    rng = np.random.default_rng(0)
    for nodes, gpus, nics in ((2, 8, 1), (4, 8, 2), (3, 4, 4)):
        world = nodes * gpus
        traffic = rng.uniform(0, 1, (world, world))
        gather, exchange, scatter = hierarchical_phases(traffic, nodes, gpus, nics)
        node = np.arange(world) // gpus
        same = node[:, None] == node[None, :]
        proxy = proxy_of_local(gpus, nics)
        # the exchange carries exactly the inter-node bytes, only between proxies of matching NICs
        assert exchange.sum() == pytest.approx((traffic * ~same).sum())
        assert np.all(exchange[same] == 0)
        src, dst = np.nonzero(exchange)
        assert np.all(proxy[src % gpus] == src % gpus) and np.all(src % gpus == dst % gpus)
        # node-to-node totals are preserved
        per_node = lambda m: m.reshape(nodes, gpus, nodes, gpus).sum(axis=(1, 3))
        assert np.allclose(per_node(exchange) * ~np.eye(nodes, dtype=bool), per_node(traffic) * ~np.eye(nodes, dtype=bool))
        # every rank's final ingress from other nodes: by scatter, or as a proxy by the exchange
        received_inter = (traffic * ~same).sum(axis=0)
        received_after = scatter.sum(axis=0) + np.where(proxy[np.arange(world) % gpus] == np.arange(world) % gpus,
                                                        exchange.sum(axis=0) - scatter.sum(axis=1), 0)
        assert np.allclose(received_after, received_inter), (nodes, gpus, nics)
        if nics == gpus:
            assert scatter.sum() == 0
        assert np.all(np.diag(gather) == 0) and np.all(np.diag(scatter) == 0)


def test_2d_pipelining_with_chunks():
    G = load_topology("lshmoe-v100-2x8")
    traffic = uniform_traffic(16, 6.4e7)
    one = simulate_all_to_all(G, traffic, "2d")
    four = simulate_all_to_all(G, traffic, "2d", chunks=4)
    assert [s.name for s in one.stages] == ["gather", "exchange", "scatter"]
    assert len(four.stages) == 12
    assert four.time_s < one.time_s                  # the phases overlap
    with pytest.raises(ValueError, match="chunks=0 must be an integer >= 1"):
        simulate_all_to_all(G, traffic, "hierarchical", chunks=0)


def test_local_copy_uses_hbm():
    G = load_topology("h100-nvswitch")
    traffic = np.diag(np.full(8, 1e9))
    result = simulate_all_to_all(G, traffic)
    assert result.network_time_s == 0.0
    assert result.time_s == pytest.approx(2e9 / G.graph["gpu"]["achieved_hbm_Bps"])
    assert simulate_all_to_all(G, traffic, local_copy=False).time_s == 0.0


def test_deterministic_and_dispatch_plan_traffic():
    from lshsim.dispatch import RouterConfig, make_placement, route
    from lshsim.dispatch.synthetic import synthetic_router_inputs

    placement = make_placement("contiguous", 32, 32, 8)
    inputs = synthetic_router_inputs(num_tokens_per_rank=256, world_size=32, d_model=64, num_experts=32, seed=0)
    plan = route(RouterConfig(name="topk", k=2, capacity_factor=1.25), placement, logits=inputs.logits,
                 token_ids=inputs.token_ids, hidden=inputs.hidden, token_rank=inputs.token_rank)
    traffic = plan.traffic_matrix(4096 * 2)
    traffic = traffic.numpy() if isinstance(traffic, torch.Tensor) else np.asarray(traffic)
    G = load_topology("lshmoe-a100-4x8")
    a = simulate_all_to_all(G, traffic, "direct")
    b = simulate_all_to_all(G, traffic, "direct")
    assert a.time_s == b.time_s and np.array_equal(a.link_bytes, b.link_bytes)
    assert a.egress_bytes.sum() == pytest.approx(plan.remote_bytes(4096 * 2))


def test_message_gap_issues_one_rank_s_messages_in_order():
    """Rank 0 sends b to ranks 1 and 2 over separate direct links: the second message starts g later."""
    G = build_topology({"name": "tri", "gpu": "h100", "gpus_per_node": 3, "alpha_s": 5e-6,
                        "intra": {"kind": "full_mesh", "per_link_Bps": 1e9, "latency_s": 1e-6}})
    traffic = np.zeros((3, 3))
    traffic[0, 1] = traffic[0, 2] = 1e6
    for gap in (0.0, 3e-4):
        result = simulate_all_to_all(G, traffic, message_gap_s=gap)
        assert result.time_s == pytest.approx(gap + 5e-6 + 1e-6 + 1e-3, rel=1e-12)
    with pytest.raises(ValueError, match="message_gap_s=-1.0 must be"):
        simulate_all_to_all(G, traffic, message_gap_s=-1.0)


def test_message_gap_makes_aggregation_pay_for_small_messages():
    """With a per-message gap, 2d (few, aggregated messages) beats direct (W - 1 messages per rank)
    for small all-to-alls; without it, direct is never slower on a non-blocking fat-tree."""
    G = load_topology("h100-fattree-8x8")
    small = uniform_traffic(64, 1e6)
    no_gap = {a: simulate_all_to_all(G, small, a).time_s for a in ("direct", "2d")}
    gap = {a: simulate_all_to_all(G, small, a, message_gap_s=2e-6).time_s for a in ("direct", "2d")}
    assert no_gap["direct"] <= no_gap["2d"]
    assert gap["2d"] < gap["direct"]
    assert gap["direct"] > no_gap["direct"] + 50 * 2e-6          # 63 messages issued 2 us apart


def test_uniform_256_gpus_is_cheap_and_exact():
    """Performance guard: a uniform direct all-to-all on 32 x 8 GPUs needs at most two rate updates
    (the intra-node flows drain, then all inter-node flows at once; the incremental solver sees that
    the inter-node flows share nothing with the intra-node ones and needs one) and matches the
    analytic model."""
    G = build_topology({"name": "ft", "gpu": "h100", "nodes": 32, "gpus_per_node": 8, "intra": {"kind": "nvswitch"},
                        "inter": {"kind": "fat_tree", "nics_per_node": 8, "nic_gbps": 400, "servers_per_leaf": 4}})
    traffic = uniform_traffic(256, 256e6)
    result = simulate_all_to_all(G, traffic, local_copy=False)
    assert result.stats["flows"] == 256 * 255 and result.stats["rate_updates"] <= 2
    expected = a2a_time_direct_multinode(traffic, 8, intra_bandwidth_Bps=450e9, inter_bandwidth_Bps=50e9,
                                         alpha_s=G.graph["alpha_s"], nics_per_node=8)
    assert result.time_s == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_world_size_one_is_a_local_copy(algorithm):
    """A single-GPU topology (what `executor calibrate` writes for one device): no network at all."""
    G = build_topology({"name": "one", "gpu": "h100", "gpus_per_node": 1, "intra": {"kind": "nvswitch"}})
    result = simulate_all_to_all(G, np.array([[1e9]]), algorithm)
    assert result.network_time_s == 0.0 and result.stages == []
    assert result.time_s == pytest.approx(2e9 / G.graph["gpu"]["achieved_hbm_Bps"])


def test_drain_tolerance_trades_updates_for_a_small_bounded_error():
    G = load_topology("h100-fattree-8x8")
    traffic = random_traffic(64, 9, 2e7)
    traffic[:32, :] = 0.0                                   # keep it quick: half the ranks send
    exact = simulate_all_to_all(G, traffic)
    approx = simulate_all_to_all(G, traffic, drain_tolerance=1e-2)
    assert approx.stats["rate_updates"] * 5 < exact.stats["rate_updates"]
    assert approx.time_s == pytest.approx(exact.time_s, rel=3e-2)
    assert np.array_equal(approx.link_bytes, exact.link_bytes)
    with pytest.raises(ValueError, match="drain_tolerance=1.5 must be in"):
        simulate_all_to_all(G, traffic, drain_tolerance=1.5)


def test_proxy_of_local_is_the_first_gpu_of_each_nic_block():
    """GPUs share the NICs in contiguous blocks; a GPU's proxy is the first GPU of its block: with G / N
    GPUs per NIC, l -> (l // (G / N)) * (G / N); 8 GPUs on 3 NICs by hand (blocks 3, 3, 2)."""
    for gpus, nics in ((8, 1), (8, 2), (8, 4), (8, 8), (4, 2), (16, 4), (6, 3)):
        per = gpus // nics
        assert proxy_of_local(gpus, nics).tolist() == [(l // per) * per for l in range(gpus)], (gpus, nics)
    assert proxy_of_local(8, 3).tolist() == [0, 0, 0, 3, 3, 3, 6, 6]
