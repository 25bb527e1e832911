"""Dispatch formats (bf16, FP8 with a scale per 128 values) and the node-deduplicated all-to-all
("node_dedup"): byte counts worked by hand, counts against a brute-force reference, and simulated
times of small cases against the sums of their phases."""
import numpy as np
import pytest

from lshsim.algorithms import canonical_algorithm
from lshsim.analytic.comm import ClusterParams, a2a_time
from lshsim.sim.collectives import phase_alpha_s, simulate_all_to_all
from lshsim.sim.dispatch_formats import (DISPATCH_FORMATS, PIPELINE_CHUNKS, DispatchFormat, bytes_per_token,
                                         node_dedup_phases, node_dedup_traffic, register_dispatch_format,
                                         unregister_dispatch_format)
from lshsim.sim.published import NORMAL_CHUNKS
from lshsim.topology import build_topology


def _cluster(nodes=2, gpus=2, alpha=0.0, latency=0.0):
    return build_topology({"name": f"t{nodes}x{gpus}", "gpu": "h100", "nodes": nodes, "gpus_per_node": gpus,
                           "alpha_s": alpha,
                           "intra": {"kind": "nvswitch", "link_Bps": 200e9, "latency_s": latency,
                                     "pcie_Bps": 400e9, "pcie_latency_s": latency},
                           "inter": {"kind": "rail", "nics_per_node": gpus, "nic_gbps": 400, "latency_s": latency}})


def test_bytes_per_token_by_hand():
    # DeepSeek-V3: 7168 values; FP8: 7168 bytes + 56 scales x 4 bytes = 7392 = 14336 * (1 + 4/128) / 2
    assert bytes_per_token("bf16", 7168) == 14336
    assert bytes_per_token("fp8", 7168) == 7392 == 14336 * (1 + 4 / 128) / 2
    assert bytes_per_token("fp8", 7168, metadata_bytes=16) == 7408
    assert bytes_per_token("fp8", 200) == 200 + 2 * 4          # a partial block still has its scale
    assert bytes_per_token("fp8", 128) == 132
    with pytest.raises(ValueError, match="format='int4' is unknown; known: bf16, fp8"):
        bytes_per_token("int4", 128)
    with pytest.raises(ValueError, match="hidden=0 must be an integer >= 1"):
        bytes_per_token("bf16", 0)


def test_register_a_format():
    fmt = register_dispatch_format(DispatchFormat("fp4x32", 0.5, scale_block=32, scale_bytes=1))
    try:
        assert bytes_per_token("fp4x32", 7168) == 3584 + 224
        with pytest.raises(ValueError, match="'fp4x32' is already registered"):
            register_dispatch_format(fmt)
    finally:
        unregister_dispatch_format("fp4x32")
    assert "fp4x32" not in DISPATCH_FORMATS


def _reference_counts(expert_index, token_rank, expert_rank, world, gpus_per_node):
    """Obvious loops with sets: the independent reference of node_dedup_traffic."""
    choice = np.zeros((world, world), int)
    rank = np.zeros((world, world), int)
    node = np.zeros((world, world // gpus_per_node), int)
    for t, row in enumerate(expert_index):
        s = token_rank[t]
        ranks = [expert_rank[e] for e in row if e >= 0]
        for r in ranks:
            choice[s, r] += 1
        for r in set(ranks):
            rank[s, r] += 1
        for m in {r // gpus_per_node for r in ranks}:
            node[s, m] += 1
    return choice, rank, node


def test_counts_against_a_brute_force_reference():
    rng = np.random.default_rng(3)
    world, g, experts, tokens, k = 8, 4, 16, 200, 4
    idx = np.argsort(rng.random((tokens, experts)), axis=1)[:, :k]
    idx[rng.random(idx.shape) < 0.1] = -1
    src = rng.integers(0, world, tokens)
    e2r = np.arange(experts) // (experts // world)
    t = node_dedup_traffic(idx, src, expert_rank=e2r, gpus_per_node=g, world=world, bytes_per_token=7392)
    choice, rank, node = _reference_counts(idx, src, e2r, world, g)
    assert np.array_equal(t.choice_tokens, choice) and np.array_equal(t.rank_tokens, rank)
    assert np.array_equal(t.node_tokens, node)
    assert np.array_equal(t.traffic, rank * 7392.0) and np.array_equal(t.node_bytes, node * 7392.0)
    # the network bytes of a rank: per (token, other node) with dedup, per (token, rank on another node) without
    node_of = np.arange(world) // g
    for s in range(world):
        assert t.network_bytes()[s] == 7392 * sum(node[s, m] for m in range(2) if m != node_of[s])
        assert t.network_bytes(dedup=False)[s] == 7392 * sum(rank[s, r] for r in range(world) if node_of[r] != node_of[s])
    with pytest.raises(ValueError, match=r"expert_index holds 16..16; experts are 0..15"):
        node_dedup_traffic(np.array([[16]]), np.array([0]), expert_rank=e2r, gpus_per_node=g, world=world)


@pytest.mark.parametrize("seed", range(8))
def test_counts_against_the_reference_on_random_routings(seed):
    """The counts (per-row sorting, no sort of all pairs) against the brute-force reference on random routings:
    repeated experts and ranks within a token, -1 anywhere, experts on any ranks, one node or several, no token."""
    rng = np.random.default_rng(seed)
    g = int(rng.choice([1, 2, 4]))
    world = g * int(rng.integers(1, 5))
    experts = world * int(rng.integers(1, 4))
    tokens, k = int(rng.choice([0, 1, 37, 300])), int(rng.integers(1, 9))
    idx = rng.integers(-1, experts, (tokens, k))
    if seed % 2:
        idx[:, 1::2] = idx[:, :1]                     # the same expert twice in a row
    src = rng.integers(0, world, tokens)
    e2r = rng.integers(0, world, experts)
    t = node_dedup_traffic(idx, src, expert_rank=e2r, gpus_per_node=g, world=world)
    choice, rank, node = _reference_counts(idx, src, e2r, world, g)
    for got, want in ((t.choice_tokens, choice), (t.rank_tokens, rank), (t.node_tokens, node)):
        assert got.dtype == np.int64 and got.shape == want.shape and np.array_equal(got, want)


def test_phases_by_hand():
    # 2 nodes x 2 GPUs. Rank 0 has one token for ranks 2 and 3 (node 1) and one for rank 1 (its node).
    B = 100.0
    T = np.zeros((4, 4))
    T[0, 2] = T[0, 3] = B
    T[0, 1] = B
    node_bytes = np.zeros((4, 2))
    node_bytes[0] = [B, B]                      # own node counted as DeepEP does; ignored for the network
    local, rdma, forward = node_dedup_phases(T, node_bytes, 2, 2)
    assert local[0, 1] == B and local.sum() == B
    assert rdma[0, 2] == B and rdma.sum() == B                 # one network copy, to the rail peer (local 0)
    assert forward[2, 3] == B and forward.sum() == B           # rank 2 keeps its copy, forwards one to 3
    # without dedup information: both copies cross the network
    _, rdma_all, _ = node_dedup_phases(T, None, 2, 2)
    assert rdma_all[0, 2] == 2 * B
    with pytest.raises(ValueError, match=r"node_bytes\[0, 1\]=0 is 0 while there is traffic to the node"):
        node_dedup_phases(T, np.array([[B, 0.0]] + [[0, 0]] * 3), 2, 2)
    # the executor's node_dedup forwards one copy per choice: two choices on rank 3, one network copy
    T2 = T.copy()
    T2[0, 3] = 2 * B
    _, rdma2, forward2 = node_dedup_phases(T2, node_bytes, 2, 2)
    assert rdma2[0, 2] == B and forward2[2, 3] == 2 * B
    with pytest.raises(ValueError, match=r"node_bytes\[0, 1\]=300 is above the sum"):
        node_dedup_phases(T, np.array([[B, 300.0]] + [[0, 0]] * 3), 2, 2)
    with pytest.raises(ValueError, match=r"node_bytes has shape \(4, 3\)"):
        node_dedup_phases(T, np.zeros((4, 3)), 2, 2)


def test_simulated_time_by_hand():
    """One token for both GPUs of the other node: dedup = one NIC copy then one NVLink copy, in sequence
    (chunks=1); per-rank direct = two copies through the sender's one NIC."""
    G = _cluster()
    B = 1e9
    T = np.zeros((4, 4))
    T[0, 2] = T[0, 3] = B
    nb = np.zeros((4, 2))
    nb[0, 1] = B
    dedup = simulate_all_to_all(G, T, "node_dedup", node_bytes=nb, local_copy=False)
    assert [s.name for s in dedup.stages] == ["rdma", "forward"]
    assert dedup.time_s == pytest.approx(B / 50e9 + B / 200e9, rel=1e-9)        # NIC 400 Gb/s, then NVLink
    direct = simulate_all_to_all(G, T, "direct", local_copy=False)
    assert direct.time_s == pytest.approx(2 * B / 50e9, rel=1e-9)
    # combine of the same dispatch: reduce over NVLink to the rail peer, then one copy back: same time
    combine = simulate_all_to_all(G, T, "deepep", node_bytes=nb, combine=True, local_copy=False)
    assert combine.algorithm == "node_dedup" and [s.name for s in combine.stages] == ["reduce", "rdma"]
    assert combine.time_s == pytest.approx(dedup.time_s, rel=1e-9)
    assert combine.link_bytes.sum() == pytest.approx(dedup.link_bytes.sum())
    import json

    assert json.loads(json.dumps(dedup.to_dict()))["options"]["node_bytes"] == nb.tolist()


def test_pipelined_chunks_overlap_nic_and_nvlink():
    """Uniform 1 GB per pair, no duplicates, 2 x 2. The NIC phase: each rank sends 2 GB (one per GPU of
    the other node) to its rail peer at 50 GB/s = 40 ms; the forward phase: the peer passes 1 GB on over
    NVLink at 200 GB/s = 5 ms. In sequence (chunks=1) 45 ms; in c chunks the NIC chunks run back to back
    and only the last forward chunk is exposed: 40 + 5 / c ms."""
    G = _cluster(alpha=0.0)
    T = np.full((4, 4), 1e9)
    nic, fwd = 2e9 / 50e9, 1e9 / 200e9
    t1 = simulate_all_to_all(G, T, "node_dedup", local_copy=False).time_s
    t8 = simulate_all_to_all(G, T, "node_dedup", chunks=8, local_copy=False).time_s
    assert t1 == pytest.approx(nic + fwd, rel=1e-9)
    assert t8 == pytest.approx(nic + fwd / 8, rel=1e-9)


def test_pipelined_chunks_pay_one_start_up_per_stage():
    """stream=True: DeepEP's dispatch is one kernel streaming its chunks, the start-up (1 ms here) is paid by the
    first chunk of each stage, not by every chunk. The same 2 x 2 case as above: the rdma chunks run back to back
    from 1 ms (the last one ends at 1 + 40 ms); forward chunk 0 pays its 1 ms after rdma chunk 0 but ends long
    before rdma chunk 1, so only the last forward chunk (0.625 ms) is exposed: 41.625 ms. Without stream every
    chunk pays it: the rdma chunks end at 8 x (1 + 5) = 48 ms, the last forward chunk 1 + 0.625 ms later. In
    sequence (chunks=1, either way): 1 + 40 + 1 + 5 = 47 ms."""
    alpha, nic, fwd = 1e-3, 2e9 / 50e9, 1e9 / 200e9
    G = _cluster(alpha=alpha)
    T = np.full((4, 4), 1e9)
    t1 = simulate_all_to_all(G, T, "node_dedup", local_copy=False).time_s
    assert simulate_all_to_all(G, T, "node_dedup", stream=True, local_copy=False).time_s == t1
    t8 = simulate_all_to_all(G, T, "node_dedup", chunks=PIPELINE_CHUNKS, stream=True, local_copy=False)
    apart = simulate_all_to_all(G, T, "node_dedup", chunks=PIPELINE_CHUNKS, local_copy=False).time_s
    assert PIPELINE_CHUNKS == 8 == NORMAL_CHUNKS
    assert t1 == pytest.approx(2 * alpha + nic + fwd, rel=1e-9)
    assert t8.time_s == pytest.approx(alpha + nic + fwd / 8, rel=1e-9)
    assert apart == pytest.approx(8 * (alpha + nic / 8) + alpha + fwd / 8, rel=1e-9)
    rdma = sorted((s for s in t8.stages if s.name.startswith("rdma")), key=lambda s: s.start_s)
    assert rdma[0].end_s == pytest.approx(alpha + nic / 8, rel=1e-9)
    assert rdma[1].end_s - rdma[1].start_s == pytest.approx(nic / 8, rel=1e-9)           # no start-up of its own
    # the combine (reduce over NVLink, then the network): its network stage pays its start-up once, after reduce
    # chunk 0, then its 8 chunks run back to back: it ends 1 ms + 40 ms after reduce chunk 0 ended
    combine = simulate_all_to_all(G, T, "node_dedup", chunks=8, combine=True, stream=True, local_copy=False)
    back = sorted((s for s in combine.stages if s.name.startswith("rdma")), key=lambda s: s.start_s)
    reduce0 = min(s.end_s for s in combine.stages if s.name == "reduce[0]")
    assert back[0].start_s == pytest.approx(reduce0, rel=1e-12)
    assert combine.time_s == pytest.approx(reduce0 + alpha + nic, rel=1e-9)


def test_pipelined_start_up_is_the_whole_stage_s():
    """With a topology's start-up across nodes that ramps in with the bytes (`phase_alpha_s`), the first chunk pays
    the start-up of the WHOLE stage (2 GB a rank: L + g x 1 peer x 2 / (2 + 2) = 40 us + 0.5 ms), not that of its
    eighth (250 MB: 40 us + 0.11 ms)."""
    spec = {"name": "ramp", "gpu": "h100", "nodes": 2, "gpus_per_node": 2, "alpha_s": 0.0,
            "intra": {"kind": "nvswitch", "link_Bps": 200e9, "latency_s": 0.0, "pcie_Bps": 400e9,
                      "pcie_latency_s": 0.0},
            "inter": {"kind": "rail", "nics_per_node": 2, "nic_gbps": 400, "latency_s": 0.0},
            "calibration": {"a2a_internode_alpha_s": 4e-5, "a2a_remote_peer_s": 1e-3,
                            "a2a_remote_peer_ramp_bytes": 2e9}}
    G = build_topology(spec)
    T = np.full((4, 4), 1e9)
    nic, fwd = 2e9 / 50e9, 1e9 / 200e9
    _, rdma, _ = node_dedup_phases(T, None, 2, 2)
    startup = phase_alpha_s(G, 0.0, rdma)
    assert startup == pytest.approx(4e-5 + 0.5e-3, rel=1e-9)
    t8 = simulate_all_to_all(G, T, "node_dedup", chunks=8, stream=True, local_copy=False).time_s
    assert t8 == pytest.approx(startup + nic + fwd / 8, rel=1e-9)


def test_streamed_chunks_pay_the_path_latency_once():
    """stream=True: a later chunk follows the one before it as soon as that one has left, so the path latency (here
    1 us a hop: GPU -> NIC -> leaf -> NIC -> GPU = 4 us across, GPU -> NVSwitch -> GPU = 2 us inside) is paid by each
    stage's first chunk only: 4 us + 40 ms + 0.625 ms, no start-up. (The last forward chunk, held by the last rdma
    chunk, pays no latency either: the stream's end is one NVLink path latency, 2 us, early.) Without stream each
    of the 8 rdma chunks pays its 4 us and the last forward chunk its 2 us."""
    G = _cluster(latency=1e-6)
    T = np.full((4, 4), 1e9)
    nic, fwd = 2e9 / 50e9, 1e9 / 200e9
    streamed = simulate_all_to_all(G, T, "node_dedup", chunks=8, stream=True, local_copy=False).time_s
    apart = simulate_all_to_all(G, T, "node_dedup", chunks=8, local_copy=False).time_s
    assert streamed == pytest.approx(4e-6 + nic + fwd / 8, rel=1e-9)
    assert apart == pytest.approx(8 * 4e-6 + nic + 2e-6 + fwd / 8, rel=1e-9)


def _kernel_cluster(kernel, nodes=2, **calibration):
    spec = {"name": "k", "gpu": "h100", "nodes": nodes, "gpus_per_node": 2, "alpha_s": 1e-4,
            "intra": {"kind": "nvswitch", "link_Bps": 200e9, "latency_s": 0.0, "pcie_Bps": 400e9,
                      "pcie_latency_s": 0.0},
            "calibration": {"dedup_kernel_alpha_s": kernel, **calibration}}
    if nodes > 1:
        spec["inter"] = {"kind": "rail", "nics_per_node": 2, "nic_gbps": 400, "latency_s": 0.0}
    return build_topology(spec)


def test_the_kernel_start_up_is_paid_once_per_kernel():
    """calibration.dedup_kernel_alpha_s (1 ms) with stream=True: the kernel starts once, 1 ms late, in place of the
    topology's alpha_s (0.1 ms) and its start-up across nodes (40 us + 1 ms per remote peer here); the second stage
    pays none of its own: 1 + 40 + 5 / 8 ms, the combine 1 ms + reduce chunk 0 + 40 ms. Without stream (the
    published-case model's chunks) the key is not used; a start-up the caller sets replaces it too."""
    G = _kernel_cluster(1e-3, a2a_internode_alpha_s=4e-5, a2a_remote_peer_s=1e-3)
    T = np.full((4, 4), 1e9)
    nic, fwd = 2e9 / 50e9, 1e9 / 200e9
    dispatch = simulate_all_to_all(G, T, "node_dedup", chunks=8, stream=True, local_copy=False)
    assert dispatch.time_s == pytest.approx(1e-3 + nic + fwd / 8, rel=1e-9)
    local = next(s for s in dispatch.stages if s.name == "local")
    assert local.end_s == pytest.approx(1e-3 + fwd, rel=1e-9)          # the local part starts after it too
    combine = simulate_all_to_all(G, T, "node_dedup", chunks=8, stream=True, combine=True, local_copy=False)
    reduce0 = min(s.end_s for s in combine.stages if s.name == "reduce[0]")
    assert reduce0 > 1e-3 and combine.time_s == pytest.approx(reduce0 + nic, rel=1e-9)
    # not streamed: each chunk pays the topology's start-ups (0.1 ms within, 40 us + 1 ms x 1 peer x 1 across)
    apart = simulate_all_to_all(G, T, "node_dedup", chunks=1, local_copy=False).time_s
    assert apart == pytest.approx(4e-5 + 1e-3 + nic + 1e-4 + fwd, rel=1e-9)
    caller = simulate_all_to_all(G, T, "node_dedup", chunks=8, stream=True, alpha_s=0.0, local_copy=False).time_s
    assert caller == pytest.approx(nic + fwd / 8, rel=1e-9)


def test_bad_kernel_start_ups_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"calibration.dedup_kernel_alpha_s=0.001 is the start-up of an all-to-all "
                                         r"across nodes, but the topology has one node"):
        _kernel_cluster(1e-3, nodes=1)
    with pytest.raises(ValueError, match=r"calibration.dedup_kernel_alpha_s=-0.001 must be >= 0"):
        _kernel_cluster(-1e-3)
    with pytest.raises(ValueError, match=r"calibration.dedup_kernel_alpha_s='1e-3' must be a finite number, not text"):
        _kernel_cluster("1e-3")
    with pytest.raises(ValueError, match=r"calibration.dedup_kernel_alpha_s = 200 is above 1 s"):
        _kernel_cluster(200.0)


def test_the_shipped_infiniband_topologies_carry_the_ib_kernel_start_up():
    """The rule of the twelfth session: the shipped InfiniBand / RoCE topologies take the published-case model's ib
    normal-kernel start-up (172.3 us, fitted on its fitting cases), stated in their provenance; EFA's does not."""
    from lshsim.topology import load_topology
    from lshsim.topology.spec import read_spec

    for name in ("h100-ib-rail-8x8", "b200-ib-rail-8x8", "h100-roce-fattree-8x8", "h200-ib-fattree-16x8-os2",
                 "h100-ib-fattree3-32x8", "b200-roce-fattree3-32x8"):
        assert load_topology(name).graph["dedup_kernel_alpha_s"] == pytest.approx(172e-6), name
        assert "172.3 us" in read_spec(name)[0]["calibration"]["provenance"]["assumed"]["dedup_kernel_alpha_s"]
    assert load_topology("h100-efa-p5-8x8").graph["dedup_kernel_alpha_s"] is None


def test_single_node_is_direct_and_registry_names():
    G = _cluster(nodes=1, gpus=4)
    T = np.random.default_rng(0).random((4, 4)) * 1e8
    assert simulate_all_to_all(G, T, "node_dedup").time_s == pytest.approx(simulate_all_to_all(G, T).time_s)
    assert canonical_algorithm("deepep") == "node_dedup"
    c = ClusterParams(gpus_per_node=2, intra_bandwidth_Bps=100e9, inter_bandwidth_Bps=10e9, alpha_s=0.0)
    assert a2a_time("node_dedup", np.full((4, 4), 1e9), c) == pytest.approx(0.2)
    batch = np.stack([np.full((4, 4), 1e9), np.full((4, 4), 2e9)])
    assert np.allclose(a2a_time("node_dedup", batch, c), [0.2, 0.4])


def test_counts_of_a_routed_plan():
    """From a DispatchPlan of the topk router: choices = the plan's send counts; dedup never adds."""
    import torch

    from lshsim.dispatch import RouterConfig, route
    from lshsim.dispatch.placement import contiguous_placement
    from lshsim.sim.dispatch_formats import plan_dedup_traffic

    world, g, experts, tokens = 8, 4, 32, 256
    placement = contiguous_placement(experts, world, g)
    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(0))
    plan = route(RouterConfig("topk", k=4, capacity_factor=2.0), placement, logits=logits,
                 token_rank=torch.arange(tokens) % world)
    t = plan_dedup_traffic(plan, bytes_per_token=7392)
    assert np.array_equal(t.choice_tokens, plan.send_counts().numpy())
    assert (t.rank_tokens <= t.choice_tokens).all()
    node_of_rank = np.arange(world) // g
    per_node_ranks = np.stack([t.rank_tokens[:, node_of_rank == m].sum(1) for m in range(2)], axis=1)
    assert (t.node_tokens <= per_node_ranks).all() and t.node_tokens.sum() < per_node_ranks.sum()


def test_the_simulator_and_the_executor_count_fp8_rows_alike():
    from lshsim.executor.comm import fp8_row_bytes

    for d in (1, 100, 128, 129, 384, 4096, 7168):
        assert bytes_per_token("fp8", d) == fp8_row_bytes(d)
