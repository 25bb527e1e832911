"""The simulated MoE step: roofline numbers, LSH scaling, LocMoE locality, overlap, determinism, refusals."""
from dataclasses import replace

import numpy as np
import pytest

from lshsim.sim.collectives import simulate_all_to_all
from lshsim.sim.moe_step import (KERNELS, StepConfig, compute_time_s, expert_cost, placement_for, route_traffic,
                                 simulate_step)
from lshsim.sim.trace import Trace
from lshsim.topology import load_topology
from lshsim.models import ModelConfig, load_model

# 2 layers (one MoE), 16 experts, 1024 tokens per GPU: small enough for ~0.5 s per step
TINY = ModelConfig("tiny", num_layers=2, d_model=256, d_ffn=4096, num_experts=16, seq_len=256, tokens_per_gpu=1024,
                   vocab_size=1000)


@pytest.fixture(scope="module")
def v100():
    # 2 nodes x 8 V100, one 100 Gb/s NIC per node; these tests cost today's grouped MoE layer, not the
    # cluster's era layer (software.moe_layer; tested in test_reproduce_moe_layers.py)
    graph = load_topology("lshmoe-v100-2x8").copy()
    graph.graph["gpu"] = {k: v for k, v in graph.graph["gpu"].items() if k != "moe_layer"}
    return graph


@pytest.fixture(scope="module")
def baseline(v100):
    return simulate_step(TINY, v100)


def test_expert_roofline_by_hand():
    # 1000 copies, d = 768, f = 3072: FLOPs = 2 * 1000 * 768 * 3072 * 2 = 9.437184e9
    # bytes = 16 experts * 2 * 768 * 3072 * 2 B + 1000 * (2 * 768 + 2 * 3072) * 2 B = 150,994,944 + 15,360,000
    flops, hbm = expert_cost(1000, 768, 3072, 16, 2)
    assert flops == 9_437_184_000
    assert hbm == 150_994_944 + 15_360_000
    a100 = {"achieved_flops": 312e12 * 0.8, "achieved_hbm_Bps": 1555e9 * 0.87}
    # weights dominate: memory bound, 166.35 MB / 1352.85 GB/s = 122.97 us (> 9.44 GFLOP / 249.6 TFLOP/s = 37.8 us)
    assert compute_time_s(flops, hbm, a100) == pytest.approx(166_354_944 / 1352.85e9)


def test_expert_phase_matches_hand_computation(v100, baseline):
    """The trace's expert time = slowest rank's roofline, forward + 2x backward, per MoE layer."""
    gpu = v100.graph["gpu"]
    received = baseline.traffic.send_counts.sum(axis=0)  # (W,) copies per rank
    launch = StepConfig().kernel_launch_s
    forward = max(compute_time_s(*expert_cost(n, 256, 4096, 1, 2), gpu, KERNELS["expert"], launch) for n in received)
    backward = max(compute_time_s(*(2 * x for x in expert_cost(n, 256, 4096, 1, 2)), gpu, 2 * KERNELS["expert"], launch)
                   for n in received)
    durations = baseline.trace.phase_durations_s()
    assert TINY.num_moe_layers == 1
    assert durations["expert"] == pytest.approx(forward + backward, rel=1e-9)
    # attention of 2 layers: 1024 * (8 d^2 + 4 s d) FLOPs forward, compute bound on a V100
    attention_flops = 1024 * (8 * 256 ** 2 + 4 * 256 * 256)
    assert baseline.trace.phase_durations_s("forward")["attention"] >= 2 * attention_flops / gpu["achieved_flops"]


def test_a2a_time_is_the_network_simulation(v100, baseline):
    bytes_matrix = np.rint(baseline.traffic.send_counts * TINY.bytes_per_token)  # (W, W)
    dispatch = simulate_all_to_all(v100, bytes_matrix, "direct").time_s
    combine = simulate_all_to_all(v100, bytes_matrix.T, "direct").time_s
    forward = baseline.trace.phase_durations_s("forward")
    assert forward["dispatch_a2a"] == pytest.approx(dispatch)
    assert forward["combine_a2a"] == pytest.approx(combine)
    # backward: the same two all-to-alls carry the gradients
    backward = baseline.trace.phase_durations_s("backward")
    assert backward["dispatch_a2a"] + backward["combine_a2a"] == pytest.approx(dispatch + combine)


def test_without_overlap_phases_add_up_to_the_step(baseline):
    durations = baseline.trace.phase_durations_s()
    assert sum(durations.values()) == pytest.approx(baseline.trace.total_time_s(), rel=1e-9)
    assert baseline.breakdown["a2a_share"] == pytest.approx(baseline.breakdown["a2a_s"] / baseline.breakdown["step_s"])
    assert isinstance(baseline.trace, Trace) and baseline.trace.meta["source"] == "simulated"


def test_lsh_rate_one_equals_no_lsh_in_a2a(v100, baseline):
    lsh = simulate_step(TINY, v100, lsh_rate=1.0, traffic=baseline.traffic)
    for name in ("dispatch_a2a", "combine_a2a"):
        assert lsh.trace.phase_durations_s()[name] == pytest.approx(baseline.trace.phase_durations_s()[name])
    assert lsh.breakdown["dispatch_bytes_per_layer"] == baseline.breakdown["dispatch_bytes_per_layer"]
    # compress and restore still cost time
    assert lsh.breakdown["step_s"] > baseline.breakdown["step_s"]
    assert {"lsh_compress", "lsh_restore"} <= set(lsh.trace.phase_durations_s())
    # backward of compress does no hashing: cheaper than twice the forward
    forward, backward = lsh.trace.phase_durations_s("forward"), lsh.trace.phase_durations_s("backward")
    assert backward["lsh_compress"] < 2 * forward["lsh_compress"]


@pytest.mark.parametrize("rate", [0.5, 0.2])
def test_lsh_rate_scales_a2a_bytes(v100, baseline, rate):
    lsh = simulate_step(TINY, v100, lsh_rate=rate, traffic=baseline.traffic)
    ratio = lsh.breakdown["dispatch_bytes_per_layer"] / baseline.breakdown["dispatch_bytes_per_layer"]
    # ceil per (src, dst) pair adds at most one centroid per pair: 240 pairs of ~64 copies
    assert rate <= ratio <= rate + 1 / 64
    assert lsh.breakdown["a2a_s"] < baseline.breakdown["a2a_s"]
    assert lsh.breakdown["phases_s"]["expert"] < baseline.breakdown["phases_s"]["expert"]


def test_locmoe_reduces_inter_node_bytes(v100, baseline):
    """The all-or-nothing bonus (locality_share None) removes nearly every inter-node copy; the default
    share ("auto": the most the node's experts take at capacity 1.25, 1.25 / 2 nodes = 0.625 of the copies
    kept on their node against about half under plain routing) removes about a quarter of them."""
    base = baseline.breakdown["inter_node_bytes_per_layer"]
    assert base > 0
    bonus = simulate_step(TINY, v100, router="locmoe", locality_share=None)
    assert bonus.breakdown["inter_node_bytes_per_layer"] < 0.1 * base
    assert bonus.breakdown["locality_share"] is None
    share = simulate_step(TINY, v100, router="locmoe")
    assert share.breakdown["locality_share"] == 0.625
    # off-node copies: about 1 - 0.5 under plain routing, 1 - 0.625 with the share: 0.375 / 0.5 = 0.75
    assert 0.70 < share.breakdown["inter_node_bytes_per_layer"] / base < 0.80
    placement = placement_for(TINY, v100)
    counts = route_traffic(TINY, placement, StepConfig(router="locmoe")).send_counts
    same = placement.rank_to_node.numpy()[:, None] == placement.rank_to_node.numpy()[None, :]
    own = (counts * same).sum(1) / counts.sum(1)
    assert own.min() >= 0.625 - 1e-9  # every source rank keeps at least the share on its node


def test_locmoe_auto_share_inside_expert_parallel_groups(v100):
    """With EP < W the "auto" share is the group's experts on the rank's node at the capacity, over all
    the group's experts: EP 8 of consecutive ranks on 2 nodes x 8 is one whole node per group (1.25 x
    8 / 8, capped: every copy at home); in MindSpore's layout (TP 2 replicated, EP 8: ranks 0, 2, .., 14,
    four on each node) 1.25 x 4 / 8 = 0.625. The routing equals the one with that share given
    explicitly, and every rank keeps at least the share of its copies on its node."""
    consecutive = StepConfig(router="locmoe", ep=8)
    traffic = route_traffic(TINY, placement_for(TINY, v100, ep=8), consecutive)
    assert traffic.locality_share == 1.0
    strided = StepConfig(router="locmoe", ep=8, tp=2, tp_layout="replicated")
    placement = placement_for(TINY, v100, ep=8, tp=2, tp_layout="replicated")
    auto = route_traffic(TINY, placement, strided)
    assert auto.locality_share == 0.625
    explicit = route_traffic(TINY, placement, replace(strided, locality_share=0.625))
    np.testing.assert_array_equal(auto.send_counts, explicit.send_counts)
    plain = route_traffic(TINY, placement, replace(strided, locality_share=None, locality_bonus=0.0))
    node = placement.rank_to_node.numpy()
    same = (node[:, None] == node[None, :])[:auto.send_counts.shape[0]]
    own = (auto.send_counts * same).sum(1) / auto.send_counts.sum(1)
    assert own.min() >= 0.625 - 1e-9
    assert (plain.send_counts * same).sum() < (auto.send_counts * same).sum()


def test_locmoe_gate_fallback_when_d_not_divisible(v100):
    odd = ModelConfig("odd", num_layers=2, d_model=24, d_ffn=64, num_experts=16, seq_len=32, tokens_per_gpu=64)
    traffic = route_traffic(odd, placement_for(odd, v100), StepConfig(router="locmoe"))
    assert traffic.gate_width == 32  # 16 * ceil(24 / 16)


def test_overlap_never_slower_and_helps_when_balanced(v100, baseline):
    overlapped = simulate_step(TINY, v100, overlap=True, traffic=baseline.traffic)
    assert overlapped.breakdown["step_s"] <= baseline.breakdown["step_s"]
    # here expert compute and all-to-all are comparable, so pipelining in chunks hides some of it
    assert max(overlapped.breakdown["overlap_chunks"].values()) > 1
    assert overlapped.breakdown["step_s"] < baseline.breakdown["step_s"]
    assert overlapped.breakdown["exposed_a2a_s"] < overlapped.breakdown["a2a_s"]


def test_overlap_chunks_run_one_collective_at_a_time(v100, baseline):
    overlapped = simulate_step(TINY, v100, overlap=True, overlap_chunks=(4,), traffic=baseline.traffic)
    collectives = sorted({(r.start_s, r.end_s) for r in overlapped.trace.phases
                          if r.name in ("dispatch_a2a", "combine_a2a") and r.direction == "forward"})
    assert len(collectives) == 2 * overlapped.breakdown["overlap_chunks"]["forward"]
    for (_, end), (start, _) in zip(collectives, collectives[1:]):
        assert start >= end - 1e-15


def test_deterministic(v100, baseline):
    again = simulate_step(TINY, v100)
    assert again.trace.to_dict() == baseline.trace.to_dict()
    other_seed = simulate_step(TINY, v100, seed=1)
    assert not np.array_equal(other_seed.traffic.send_counts, baseline.traffic.send_counts)


def test_subsampled_routing_is_scaled(v100):
    full = route_traffic(TINY, placement_for(TINY, v100), StepConfig(capacity_factor=None))
    sampled = route_traffic(TINY, placement_for(TINY, v100),
                            StepConfig(capacity_factor=None, max_routed_tokens=16 * 256))
    assert (full.routed_per_rank, sampled.routed_per_rank, sampled.scale) == (1024, 256, 4.0)
    # no capacity: every token's 2 copies are sent, sampled or not
    assert full.send_counts.sum() == pytest.approx(16 * 1024 * 2)
    assert sampled.send_counts.sum() == pytest.approx(16 * 1024 * 2)


def test_refusals_name_the_numbers(v100):
    with pytest.raises(ValueError) as info:
        simulate_step(load_model("roberta-moe"), load_topology("lshmoe-a100-4x8"))
    assert "16" in str(info.value) and "32" in str(info.value)
    with pytest.raises(ValueError, match="locmoe"):
        StepConfig(router="nope")
    with pytest.raises(ValueError, match="groupwise"):
        StepConfig(algorithm="ring")
    with pytest.raises(ValueError, match="lsh_rate"):
        StepConfig(lsh_rate=1.5)
    with pytest.raises(ValueError, match="overlap_chunks"):
        StepConfig(overlap_chunks=(1,))


def test_chrome_trace_of_a_step(tmp_path, baseline):
    path = tmp_path / "step.json"
    baseline.trace.to_chrome_trace(path)
    assert path.stat().st_size > 0
    back = Trace.from_dict(baseline.trace.to_dict())
    assert back.phase_durations_s() == baseline.trace.phase_durations_s()


def test_pipelined_section_matches_hand_schedule():
    """Two ranks, two chunks; times worked out by hand (one network stream, one compute stream per rank).

    dispatch chunks [0, 1], [1, 2]; experts chunk 0: rank 0 [1, 1.5], rank 1 [1, 2.5]; chunk 1:
    rank 0 [2, 2.5], rank 1 [2.5, 4]; combine chunk 0 waits for rank 1: [2.5, 3.5]; chunk 1 [4, 5].
    """
    from lshsim.sim.moe_step import _moe_section

    sent = np.array([10.0, 20.0])
    records, end = _moe_section(0.0, 2, ("dispatch_a2a", 1.0, sent), np.array([0.5, 1.5]),
                                ("combine_a2a", 1.0, sent), 2, layer=3, direction="forward")
    assert end == pytest.approx(5.0)
    spans = sorted((r.name, r.rank, r.start_s, r.end_s) for r in records)
    assert ("expert", 1, 2.5, 4.0) in spans and ("expert", 0, 2.0, 2.5) in spans
    assert ("combine_a2a", 0, 2.5, 3.5) in spans and ("combine_a2a", 1, 4.0, 5.0) in spans
    assert all(r.layer == 3 for r in records)
    assert {r.bytes for r in records if r.name == "dispatch_a2a" and r.rank == 1} == {20}
    # one chunk: strictly sequential, 2 + 3 + 2
    _, end_one = _moe_section(0.0, 2, ("dispatch_a2a", 2.0, sent), np.array([1.0, 3.0]),
                              ("combine_a2a", 2.0, sent), 1, layer=0, direction="forward")
    assert end_one == pytest.approx(7.0)


def test_todays_model_fields_are_costed(v100, baseline):
    """Dense first layers, SwiGLU's third matrix and shared experts (DeepSeek-style fields of the
    catalog) change the step exactly where they should, against hand-computed rooflines."""
    gpu, launch = v100.graph["gpu"], StepConfig().kernel_launch_s
    received = baseline.traffic.send_counts.sum(axis=0)  # (W,) copies per rank
    tokens = TINY.tokens_per_gpu

    def phase_forward(model):
        return simulate_step(model, v100, traffic=baseline.traffic).trace.phase_durations_s("forward")

    # SwiGLU: 3 matrices per expert; shared experts: every token of the rank through one more FFN
    swiglu_shared = replace(TINY, ffn_matrices=3, num_shared_experts=1)
    shared_s = compute_time_s(*expert_cost(tokens, 256, 4096, 1, 2, matrices=3), gpu, KERNELS["expert"], launch)
    expected = max(compute_time_s(*expert_cost(n, 256, 4096, 1, 2, matrices=3), gpu, KERNELS["expert"], launch)
                   + shared_s for n in received)
    assert phase_forward(swiglu_shared)["expert"] == pytest.approx(expected, rel=1e-9)
    # one dense first layer of its own width: TINY's MoE layer (layer 1) stays, layer 0 was dense already
    wide_dense = replace(TINY, num_layers=4, first_dense_layers=2, dense_d_ffn=8192)
    assert wide_dense.num_moe_layers == 1  # layer 3; layers 0-2 dense
    durations = phase_forward(wide_dense)
    dense_one = compute_time_s(*expert_cost(tokens, 256, 8192, 1, 2), gpu, KERNELS["dense_ffn"], launch)
    assert durations["dense_ffn"] == pytest.approx(3 * dense_one, rel=1e-9)
    assert durations["expert"] == pytest.approx(phase_forward(TINY)["expert"], rel=1e-9)


def test_the_catalog_deepseek_v3_has_58_moe_layers_in_the_step():
    from lshsim.sim.moe_step import model_dict
    from lshsim.sim.phases import step_schedule

    model = load_model("deepseek-v3")
    spec = model_dict(model)
    schedule = step_schedule(spec["num_layers"], spec["moe_every"], first_dense_layers=spec["first_dense_layers"])
    moe = sorted({layer for direction, phases, layer in schedule if direction == "forward"
                  and any(p.name == "expert" for p in phases)})
    assert moe == list(model.moe_layers) and len(moe) == 58 and moe[0] == 3


def test_router_model_takes_the_published_routing():
    """`lshsim plan --router model`: DeepSeek-V3's node-limited router with its options and no capacity;
    the comparison's baseline stays plain top-k without those options."""
    import argparse

    from lshsim.cli.plan import _plan_config
    from lshsim.sim.moe_step import plan_options, router_config

    args = argparse.Namespace(router="model", capacity_factor=1.25, lsh_rate=None, algorithm="direct", overlap=False,
                              tokens_per_gpu=None, locality_bonus=1.0, seed=0, max_routed_tokens=1 << 17, ep=None,
                              traffic_model="auto", dispatch_format="model", moe_layer="software")
    model = load_model("deepseek-v3")
    config = _plan_config(args, model)
    assert config.router == "node_limited" and dict(config.router_options)["max_nodes"] == 4
    assert config.capacity_factor is None  # dropless
    routing = router_config(model, config)
    assert routing.name == "node_limited" and routing.k == 8 and dict(routing.options)["max_nodes"] == 4
    labels = dict(plan_options(config))
    assert labels["baseline"].router == "topk" and labels["baseline"].router_options == ()
    assert labels["locmoe"].router_options == ()
    with pytest.raises(ValueError, match="--router model needs one --model"):
        _plan_config(args)


def test_reused_router_inputs_route_exactly_as_fresh_draws(v100):
    """`reuse_router_inputs` (what `lshsim reproduce` routes with): several routers on one model and
    cluster draw their synthetic inputs once, and every routing equals the one of a fresh draw, to
    the last bit, the popularity traffic model included; the oldest draw goes when more are kept."""
    from lshsim.sim.moe_step import RouterInputCache, reuse_router_inputs

    placement = placement_for(TINY, v100)
    configs = [StepConfig(router="topk"), StepConfig(router="locmoe"), StepConfig(router="hash"),
               StepConfig(router="topk", traffic_model="popularity"), StepConfig(router="topk", seed=1),
               StepConfig(router="expert_choice")]
    fresh = [route_traffic(TINY, placement, c) for c in configs]
    cache = RouterInputCache(size=1)
    with reuse_router_inputs(cache):
        kept = [route_traffic(TINY, placement, c) for c in configs]
    # one draw for the first four (popularity routes the same tokens here), seed 1 evicts it (size 1), seed 0
    # is drawn again
    assert cache.misses == 3 and cache.hits == 3
    for a, b in zip(fresh, kept):
        assert a.send_counts.tobytes() == b.send_counts.tobytes() and a.dropped_fraction == b.dropped_fraction


def test_shipped_routers_never_write_into_their_inputs(v100):
    """Each router lshsim ships leaves the tensors it routes untouched (what lets `RouterInputCache`
    hand one draw to several routings); a router registered besides them gets a fresh draw even
    inside `reuse_router_inputs`, so one that writes into its inputs changes nothing else."""
    import torch

    from lshsim.dispatch import ROUTERS
    from lshsim.dispatch.routers import BUILTIN_ROUTERS, RouterSpec, route_topk
    from lshsim.sim.moe_step import RouterInputCache, _draw_inputs, _route_group, reuse_router_inputs

    placement = placement_for(TINY, v100)
    for name in BUILTIN_ROUTERS:
        config = StepConfig(router=name)
        inputs = _draw_inputs(TINY, config, 256, 16, 0)
        before = [t.clone() for t in (inputs.hidden, inputs.logits, inputs.token_ids, inputs.token_rank)]
        _route_group(TINY, placement, config, inputs)
        after = (inputs.hidden, inputs.logits, inputs.token_ids, inputs.token_rank)
        assert all(torch.equal(a, b) for a, b in zip(before, after)), name

    def writer(logits, placement, **kwargs):
        logits.mul_(-1.0)                         # writes into its inputs
        return route_topk(logits, placement, **kwargs)

    cache = RouterInputCache()
    try:
        ROUTERS["writer"] = RouterSpec(writer, "logits", "writes into its logits",
                                       params=("k", "capacity_factor", "drop_policy"))
        with reuse_router_inputs(cache):
            first = route_traffic(TINY, placement, StepConfig(router="topk"))
            route_traffic(TINY, placement, StepConfig(router="writer"))
            again = route_traffic(TINY, placement, StepConfig(router="topk"))
    finally:
        ROUTERS.pop("writer", None)
    assert cache.misses == 1 and cache.hits == 1      # the writer drew its own
    assert first.send_counts.tobytes() == again.send_counts.tobytes()
