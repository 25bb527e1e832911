"""lshsim.analytic.comm: closed forms against brute-force per-rank loops, break-even, bad input, doctests."""
from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest

from lshsim.analytic import capacity, collision, comm


# ---- slow, obvious references: explicit loops over ranks ------------------------------------------
def _phase_reference(flows, gpus, intra, inter, nics, alpha):
    """One phase: every flow at once; per-GPU ports, per-GPU NIC and per-node NIC bounds by loops."""
    world = len(flows)
    intra_out = [0.0] * world
    intra_in = [0.0] * world
    inter_out = [0.0] * world
    inter_in = [0.0] * world
    nodes = world // gpus
    node_out = [0.0] * nodes
    node_in = [0.0] * nodes
    for src in range(world):
        for dst in range(world):
            if src == dst:
                continue
            size = flows[src][dst]
            if src // gpus == dst // gpus:
                intra_out[src] += size
                intra_in[dst] += size
            else:
                inter_out[src] += size
                inter_in[dst] += size
                node_out[src // gpus] += size
                node_in[dst // gpus] += size
    t_intra = max(max(intra_out[r], intra_in[r]) for r in range(world)) / intra
    t_gpu_nic = max(max(inter_out[r], inter_in[r]) for r in range(world)) / inter
    t_node = max(max(node_out[n], node_in[n]) for n in range(nodes)) / (nics * inter)
    return alpha + max(t_intra, t_gpu_nic, t_node)


def _direct_reference(traffic, bandwidth, alpha):
    world = len(traffic)
    worst = 0.0
    for r in range(world):
        sent = sum(traffic[r][j] for j in range(world) if j != r)
        received = sum(traffic[j][r] for j in range(world) if j != r)
        worst = max(worst, sent, received)
    return alpha + worst / bandwidth


def _pairwise_reference(traffic, gpus, intra, inter, nics, alpha, inter_alpha):
    world = len(traffic)
    total = 0.0
    for step in range(1, world):
        flows = [[0.0] * world for _ in range(world)]
        crosses = False
        for r in range(world):
            flows[r][(r + step) % world] = traffic[r][(r + step) % world]
            crosses |= r // gpus != ((r + step) % world) // gpus
        total += _phase_reference(flows, gpus, intra, inter, nics, inter_alpha if crosses else alpha)
    return total


def _hierarchical_reference(traffic, gpus, intra, inter, nics, alpha, inter_alpha):
    world = len(traffic)
    nodes = world // gpus
    phase1 = [[0.0] * world for _ in range(world)]
    phase2 = [[0.0] * world for _ in range(world)]
    for src, dst in itertools.product(range(world), range(world)):
        n, g = divmod(src, gpus)
        n2, g2 = divmod(dst, gpus)
        # phase 1: (n, g) -> (n, g2) carries it; phase 2: (n, g2) -> (n2, g2) carries it
        relay = n * gpus + g2
        if relay != src:
            phase1[src][relay] += traffic[src][dst]
        if relay != dst:
            phase2[relay][dst] += traffic[src][dst]
    total = 0.0
    if gpus > 1:
        total += _phase_reference(phase1, gpus, intra, inter, nics, alpha)
    if nodes > 1:
        total += _phase_reference(phase2, gpus, intra, inter, nics, inter_alpha)
    return total


def _groupwise_reference(traffic, gpus, intra, inter, nics, alpha, inter_alpha, overlap):
    world = len(traffic)
    local = [[traffic[s][d] if s // gpus == d // gpus else 0.0 for d in range(world)] for s in range(world)]
    remote = [[traffic[s][d] if s // gpus != d // gpus else 0.0 for d in range(world)] for s in range(world)]
    t_intra = _phase_reference(local, gpus, intra, inter, nics, alpha) if gpus > 1 else 0.0
    t_inter = _phase_reference(remote, gpus, intra, inter, nics, inter_alpha) if world > gpus else 0.0
    return max(t_intra, t_inter) if overlap else t_intra + t_inter


CASES = [(8, 4, None), (8, 4, 1), (6, 3, 2), (4, 1, None), (4, 4, None), (12, 4, 3)]


@pytest.mark.parametrize("world,gpus,nics", CASES)
def test_closed_forms_match_brute_force_on_random_traffic(world, gpus, nics):
    rng = np.random.default_rng(world * 100 + gpus)
    intra, inter, alpha, inter_alpha = 150e9, 12.5e9, 7e-6, 21e-6
    nic_count = gpus if nics is None else nics
    for trial in range(5):
        traffic = rng.exponential(1e7, size=(world, world)) * (rng.random((world, world)) < 0.8)  # sparse-ish
        t = traffic.tolist()
        args = (traffic, gpus, intra, inter, alpha, inter_alpha, nics)
        ref_direct = _phase_reference(t, gpus, intra, inter, nic_count, alpha if world == gpus else inter_alpha)
        assert comm.a2a_time_direct_multinode(*args) == pytest.approx(ref_direct, rel=1e-12)
        assert comm.a2a_time_pairwise(*args) == pytest.approx(
            _pairwise_reference(t, gpus, intra, inter, nic_count, alpha, inter_alpha), rel=1e-12)
        assert comm.a2a_time_hierarchical(*args) == pytest.approx(
            _hierarchical_reference(t, gpus, intra, inter, nic_count, alpha, inter_alpha), rel=1e-12)
        for overlap in (False, True):
            assert comm.a2a_time_groupwise(*args, overlap=overlap) == pytest.approx(
                _groupwise_reference(t, gpus, intra, inter, nic_count, alpha, inter_alpha, overlap), rel=1e-12)


def test_direct_single_switch_matches_brute_force_and_broadcasts():
    rng = np.random.default_rng(3)
    batch = rng.exponential(1e6, size=(7, 5, 5))  # (B, W, W)
    bandwidth = np.linspace(1e9, 7e9, 7)  # (B,)
    times = comm.a2a_time_direct(batch, bandwidth, alpha_s=2e-6)
    assert times.shape == (7,)
    for b in range(7):
        assert times[b] == pytest.approx(_direct_reference(batch[b].tolist(), bandwidth[b], 2e-6), rel=1e-12)
    # on one node the two-level direct algorithm is the single-switch one at the NVLink bandwidth
    single = comm.a2a_time_direct_multinode(batch[0], 5, intra_bandwidth_Bps=3e9, inter_bandwidth_Bps=1.0, alpha_s=1e-6)
    assert single == pytest.approx(comm.a2a_time_direct(batch[0], 3e9, 1e-6), rel=1e-12)


def test_diagonal_is_free_and_pairwise_equals_direct_when_balanced():
    traffic = np.diag([5e9, 6e9, 7e9])
    assert comm.a2a_time_direct(traffic, 1e9, alpha_s=0.0) == 0.0
    # uniform traffic on one switch: pairwise does W-1 steps of one block, direct one round of (W-1) blocks
    uniform = comm.uniform_traffic(8, 8e9)  # 1 GB blocks
    direct = comm.a2a_time_direct(uniform, 1e9, alpha_s=0.0)
    pairwise = comm.a2a_time_pairwise(uniform, 8, intra_bandwidth_Bps=1e9)
    assert direct == pytest.approx(7.0) and pairwise == pytest.approx(7.0)


def test_registry_and_cluster_params():
    cluster = comm.ClusterParams(gpus_per_node=4, intra_bandwidth_Bps=200e9, inter_bandwidth_Bps=25e9, alpha_s=5e-6)
    traffic = comm.random_traffic(8, 32e6, seed=1)
    for name in comm.A2A_ALGORITHMS:
        assert comm.a2a_time(name, traffic, cluster) > 0
    with pytest.raises(ValueError, match="algorithm='ring'"):
        comm.a2a_time("ring", traffic, cluster)
    with pytest.raises(ValueError, match="gpus_per_node=0"):
        comm.ClusterParams(gpus_per_node=0)
    with pytest.raises(ValueError, match="inter_bandwidth_Bps=-1"):
        comm.ClusterParams(inter_bandwidth_Bps=-1.0)


def test_lsh_moe_ratio_model():
    # FLOPs/(6 B) * k/(1+2k) * (w-1)/(w h), written out
    flops, bandwidth, k, w, h = 312e12, 25e9, 2, 32, 2048
    expected = flops / (6 * bandwidth) * k / (1 + 2 * k) * (w - 1) / (w * h)
    assert comm.lsh_moe_comm_compute_ratio(flops, bandwidth, k, w, h) == pytest.approx(expected, rel=1e-15)
    ratios = comm.lsh_moe_comm_compute_ratio(flops, bandwidth, k, np.array([2, 8, 64]), h)
    assert np.all(np.diff(ratios) > 0)  # the share grows with the number of GPUs
    with pytest.raises(ValueError, match="hidden_size=0"):
        comm.lsh_moe_comm_compute_ratio(flops, bandwidth, k, w, 0)


@pytest.mark.parametrize("backward", [True, False])
def test_lsh_step_time_written_out(backward):
    """lsh_step_time_s and breakeven_compression_rate against their docstring's formula with the numbers
    put in by hand; the wire term V / B against a2a_time_direct on uniform_traffic (another route)."""
    tokens, d, k, w, bw, hash_rate, restore_rate, b, alpha, expert = 4096, 1024, 2, 16, 12.5e9, 18e6, 68e6, 2, 3e-5, 1e-3
    kw = dict(k=k, world_size=w, bandwidth_Bps=bw, hash_tokens_per_s=hash_rate, restore_tokens_per_s=restore_rate,
              bytes_per_element=b, expert_time_s=expert, include_backward=backward)
    n_a2a = 4 if backward else 2
    wire = tokens * k * d * b * (w - 1) / w / bw                          # one all-to-all, r = 1
    assert wire == pytest.approx(comm.a2a_time_direct(comm.uniform_traffic(w, tokens * k * d * b), bw), rel=1e-12)
    overhead = (tokens * k / hash_rate + tokens * k / restore_rate) * (2 if backward else 1)
    for r in (0.1, 0.4, 1.0):
        expected = n_a2a * (alpha + r * wire) + overhead + r * expert
        assert comm.lsh_step_time_s(r, tokens, d, alpha_s=alpha, **kw) == pytest.approx(expected, rel=1e-12)
    baseline = n_a2a * (alpha + wire) + expert
    assert comm.lsh_step_time_s(1.0, tokens, d, alpha_s=alpha, lsh=False, **kw) == pytest.approx(baseline, rel=1e-12)
    assert comm.breakeven_compression_rate(tokens, d, **kw) == pytest.approx(1 - overhead / (n_a2a * wire + expert),
                                                                            rel=1e-12)


def test_breakeven_is_where_the_step_times_meet():
    kw = dict(k=2, world_size=16, bandwidth_Bps=12.5e9, hash_tokens_per_s=50e6, expert_time_s=1e-3)
    r_star = comm.breakeven_compression_rate(4096, 1024, **kw)
    assert 0 < r_star < 1
    base = comm.lsh_step_time_s(1.0, 4096, 1024, lsh=False, alpha_s=3e-5, **kw)
    assert comm.lsh_step_time_s(r_star, 4096, 1024, alpha_s=3e-5, **kw) == pytest.approx(base, rel=1e-12)
    assert comm.lsh_step_time_s(r_star * 0.9, 4096, 1024, alpha_s=3e-5, **kw) < base
    # crediting the shrinking expert compute raises r*; a slow hash makes it never pay
    assert r_star > comm.breakeven_compression_rate(4096, 1024, **{**kw, "expert_time_s": 0.0})
    assert comm.breakeven_compression_rate(4096, 1024, **{**kw, "hash_tokens_per_s": 1e5}) < 0
    # vectorised over bandwidth
    rates = comm.breakeven_compression_rate(4096, 1024, **{**kw, "bandwidth_Bps": np.array([1e9, 1e10, 1e11])})
    assert rates.shape == (3,) and np.all(np.diff(rates) < 0)  # faster links leave less to win


@pytest.mark.parametrize("call, message", [
    (lambda: comm.a2a_time_direct([[0, -1], [1, 0]], 1e9), "traffic_bytes=-1"),
    (lambda: comm.a2a_time_direct([[0, np.nan], [1, 0]], 1e9), "traffic_bytes=nan"),
    (lambda: comm.a2a_time_direct(np.zeros((2, 3)), 1e9), r"shape \(2, 3\)"),
    (lambda: comm.a2a_time_direct(np.zeros((2, 2)), 0.0), "bandwidth_Bps=0.0"),
    (lambda: comm.a2a_time_direct(np.zeros((2, 2)), 1e9, alpha_s=-1e-6), "alpha_s=-1e-06"),
    (lambda: comm.a2a_time_hierarchical(np.zeros((8, 8)), 3, 1e9, 1e9), "gpus_per_node=3"),
    (lambda: comm.a2a_time_groupwise(np.zeros((8, 8)), 2.5, 1e9, 1e9), "gpus_per_node=2.5"),
    (lambda: comm.breakeven_compression_rate(4096.5, 1024), "tokens_per_rank=4096.5"),
    (lambda: comm.breakeven_compression_rate(4096, 1024, k=-2), "k=-2"),
    (lambda: comm.lsh_step_time_s(1.5, 4096, 1024), "compression_rate=1.5"),
    (lambda: comm.uniform_traffic(0, 1.0), "world_size=0"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("module", [capacity, collision, comm], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_every_algorithm_broadcasts_over_a_batch_of_traffic_matrices():
    rng = np.random.default_rng(11)
    batch = rng.exponential(1e6, size=(3, 8, 8))  # (B, W, W)
    inter = np.array([1e10, 2e10, 4e10])  # (B,)
    for fn in (comm.a2a_time_direct_multinode, comm.a2a_time_pairwise, comm.a2a_time_hierarchical,
               comm.a2a_time_groupwise):
        together = fn(batch, 4, 1e11, inter, 1e-6)
        one_by_one = [fn(batch[i], 4, 1e11, inter[i], 1e-6) for i in range(3)]
        np.testing.assert_allclose(together, one_by_one, rtol=1e-14)


def test_one_name_per_algorithm_across_analytic_and_sim():
    """The analytic model and the simulator read one registry: same canonical names, same alias."""
    from lshsim.algorithms import canonical_algorithm
    from lshsim.sim import collectives

    assert set(collectives.ALGORITHMS) <= set(comm.A2A_ALGORITHMS)
    assert list(comm.A2A_ALGORITHMS) == ["direct", "pairwise", "hierarchical", "groupwise", "groupwise_overlap",
                                         "node_dedup"]
    assert canonical_algorithm("2d") == "hierarchical"
    cluster = comm.ClusterParams(gpus_per_node=2, intra_bandwidth_Bps=100e9, inter_bandwidth_Bps=10e9)
    traffic = comm.random_traffic(4, 1e9, seed=3)
    assert comm.a2a_time("2d", traffic, cluster) == comm.a2a_time("hierarchical", traffic, cluster)


def test_uniform_traffic_has_one_implementation():
    from lshsim.sim import collectives

    assert collectives.uniform_traffic is comm.uniform_traffic
    assert np.array_equal(collectives.uniform_traffic(4, 400.0), np.full((4, 4), 100.0))


@pytest.mark.parametrize("concentration", [0.1, 1.0, 10.0])
def test_random_traffic_rows_and_dirichlet_spread(concentration):
    """Every rank sends exactly bytes_per_rank (each row sums to it), and the entries spread as a
    Dirichlet(alpha) split does: Var[T_rd] = S^2 (W - 1) / (W^2 (W alpha + 1)) (closed form). Tolerance
    on the sample variance of the W^2 = 40,000 entries: 4 of its standard errors, sqrt((kurtosis - 1) / n)
    relative, kurtosis of a Gamma(alpha) share 3 + 6 / alpha (16% at alpha 0.1, 6% at 1, 4% at 10)."""
    world, size = 200, 3.0e8
    traffic = comm.random_traffic(world, size, concentration=concentration, seed=11)
    assert traffic.shape == (world, world) and traffic.min() >= 0
    np.testing.assert_allclose(traffic.sum(axis=1), size, rtol=1e-12)
    expected_var = size ** 2 * (world - 1) / (world ** 2 * (world * concentration + 1))
    rel_se = np.sqrt((2 + 6 / concentration) / traffic.size)
    assert traffic.var() == pytest.approx(expected_var, rel=4 * rel_se)
    # the seed fixes the draw; another seed gives another matrix of the same row sums
    np.testing.assert_array_equal(traffic, comm.random_traffic(world, size, concentration=concentration, seed=11))
    assert not np.array_equal(traffic, comm.random_traffic(world, size, concentration=concentration, seed=12))


def test_egress_ingress_against_loops_with_a_batch_axis():
    """S_r = sum_{d != r} T[r, d], R_r = sum_{s != r} T[s, r] by loops, for each matrix of a batch."""
    rng = np.random.default_rng(21)
    batch = rng.uniform(0, 1e6, size=(3, 5, 5))
    sent, received = comm.egress_ingress(batch)
    assert sent.shape == received.shape == (3, 5)
    for b in range(3):
        for r in range(5):
            assert sent[b, r] == pytest.approx(sum(batch[b, r, d] for d in range(5) if d != r), rel=1e-12)
            assert received[b, r] == pytest.approx(sum(batch[b, s, r] for s in range(5) if s != r), rel=1e-12)
