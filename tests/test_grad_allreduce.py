"""The data-parallel gradient all-reduce (phase grad_allreduce): the ring all-reduce on a topology
against the closed form, the phase's presence by option, and its effect on the step and shares."""
import math

import numpy as np
import pytest

from lshsim.models import ModelConfig, load_model
from lshsim.sim.collectives import ring_all_reduce, ring_orders
from lshsim.sim.moe_step import StepConfig, simulate_step
from lshsim.sim.phases import PHASES, gradient_parameters, resolve_grad_sync, step_schedule
from lshsim.topology import build_topology, load_topology

MESH = {"name": "mesh4", "gpu": "h100", "gpus_per_node": 4, "alpha_s": 2e-5,
        "intra": {"kind": "full_mesh", "per_link_Bps": 1e9, "latency_s": 1e-6}}
TWO_NODES = {"name": "two", "gpu": "h100", "nodes": 2, "gpus_per_node": 2, "alpha_s": 0.0,
             "intra": {"kind": "full_mesh", "per_link_Bps": 1e12, "latency_s": 0.0, "pcie_Bps": 1e12},
             "inter": {"kind": "fat_tree", "nics_per_node": 1, "nic_gbps": 8, "servers_per_leaf": 2, "latency_s": 0.0}}


def closed_form(g: int, size: float, bandwidth: float, per_step_latency: float) -> float:
    """Textbook ring all-reduce: 2 (g - 1) / g x size / B + 2 (g - 1) x (alpha + path latency)."""
    return 2 * (g - 1) / g * size / bandwidth + 2 * (g - 1) * per_step_latency


@pytest.mark.parametrize("size", [1e3, 4e6, 3.3e8])
def test_ring_all_reduce_matches_closed_form_on_a_mesh(size):
    G = build_topology(MESH)
    result = ring_all_reduce(G, [[0, 1, 2, 3]], size)
    expected = closed_form(4, size, 1e9, 2e-5 + 1e-6)
    assert result.time_s == pytest.approx(expected, rel=1e-9)
    assert result.bus_Bps <= 1e9


def test_ring_all_reduce_is_nic_bound_between_nodes():
    G = build_topology(TWO_NODES)
    size = 2e9
    result = ring_all_reduce(G, [[0, 1, 2, 3]], size)
    # one 8 Gb/s NIC per node (1 GB/s): every ring step sends one piece through each NIC
    assert result.time_s == pytest.approx(closed_form(4, size, 1e9, 0.0), rel=1e-5)   # + 6 x 2 us of PCIe hops
    # the NICs at half their rate: twice the time
    slow = ring_all_reduce(G, [[0, 1, 2, 3]], size, bandwidth_scale_by_kind={"nic": 0.5})
    assert slow.time_s == pytest.approx(2 * result.time_s, rel=1e-5)
    # a group of one rank, or nothing to reduce: no time
    assert ring_all_reduce(G, [[0], [1]], size).time_s == 0.0
    assert ring_all_reduce(G, [[0, 2]], 0.0).time_s == 0.0


def test_concurrent_groups_share_the_nic():
    G = build_topology(TWO_NODES)
    one = ring_all_reduce(G, [[0, 2]], 1e9).time_s
    both = ring_all_reduce(G, [[0, 2], [1, 3]], 1e9).time_s      # two rings through one NIC per node
    assert both == pytest.approx(2 * one, rel=1e-5)   # the hop latencies are paid once


def test_ring_orders_rotate_channels_within_nodes():
    assert ring_orders([[0, 1, 2, 3]], 2, channels=1) == [[0, 1, 2, 3]]
    assert ring_orders([[0, 1, 2, 3]], 2, channels=2) == [[0, 1, 2, 3], [1, 0, 3, 2]]


def test_gradient_parameters_add_up_to_the_catalog_count():
    model = load_model("gpt-moe-15b")
    from lshsim.sim.moe_step import model_dict
    params = gradient_parameters(model_dict(model), model.num_experts)   # every expert on one rank
    total = sum(r + e for r, e in params["layers"]) + params["last"]
    assert total == model.num_parameters
    assert sum(e for _, e in params["layers"]) == model.num_moe_layers * model.num_experts * model.expert_parameters


@pytest.mark.parametrize("name", ["mixtral-8x7b", "dbrx", "qwen3-30b-a3b", "deepseek-v2-lite", "deepseek-v3",
                                  "t5-moe", "switch-base-128"])
def test_gradient_parameters_of_gqa_and_mla_models_add_up_to_the_catalog_count(name):
    """GQA and MLA attention (`attention:` of the catalog) are all-reduced at their own size, not 4 d^2:
    all weights on one rank add up to the catalog's count (which the catalog's tests check against the
    published totals). Before, Mixtral's replicated gradients were 0.7 B too many (32 x (4 d^2 - GQA))."""
    from lshsim.sim.moe_step import model_dict

    model = load_model(name)
    params = gradient_parameters(model_dict(model), model.num_experts)
    assert sum(r + e for r, e in params["layers"]) + params["last"] == model.num_parameters


def test_gradient_parameters_by_listing_every_weight_matrix():
    """A model with every option gradient_parameters reads (a dense first layer of its own width, SwiGLU's
    three matrices, two shared experts, untied embeddings, a cross-attention layer, tensor parallelism 2)
    against a list of its weight matrices written out by hand; the routed experts and the gate stay whole
    under TP, every other replicated matrix is split in two."""
    d, f, dense_f, experts, vocab, tp = 8, 16, 32, 4, 50, 2
    model = {"num_layers": 4, "d_model": d, "d_ffn": f, "dense_d_ffn": dense_f, "num_experts": experts,
             "moe_every": 1, "first_dense_layers": 1, "num_shared_experts": 2, "ffn_matrices": 3,
             "vocab_size": vocab, "tie_embeddings": False, "cross_attention_layers": 1}
    attention = [(d, d)] * 4                                        # q, k, v, o
    swiglu = [(d, f)] * 3                                           # gate, up, down of one expert
    dense = attention + [(d, dense_f)] * 3
    moe_replicated_split = attention + swiglu * 2                   # split by TP
    gate = [(d, experts)]                                           # whole
    routed = swiglu * 2                                             # the rank's 2 experts, whole

    def size(mats):
        return sum(a * b for a, b in mats)

    expected = [(size(dense) // tp, 0)] + [(size(moe_replicated_split) // tp + size(gate), size(routed))] * 3
    last = (size(attention) + size([(vocab, d), (vocab, d)])) // tp   # cross attention, embedding, head
    assert gradient_parameters(model, 2, tp=tp) == {"layers": expected, "last": last}
    # tied, no head (a first pipeline stage), plain two-matrix FFN, no TP
    plain = {"num_layers": 2, "d_model": d, "d_ffn": f, "num_experts": experts, "moe_every": 2,
             "vocab_size": vocab, "output_head": False}
    assert gradient_parameters(plain, 3) == {"layers": [(size(attention + [(d, f)] * 2), 0),
                                                        (size(attention + gate), 3 * size([(d, f)] * 2))],
                                             "last": 0}


def test_the_phase_runs_once_after_the_backward():
    schedule = step_schedule(4, 2)
    names = [[p.name for p in phases] for _, phases, _ in schedule]
    assert names[-1] == ["grad_allreduce"]
    assert sum(n == ["grad_allreduce"] for n in names) == 1
    assert PHASES["grad_allreduce"].kind == "gradient_sync"
    assert {"dispatch_a2a", "combine_a2a"} <= set(PHASES.names("communication"))
    assert "grad_allreduce" not in PHASES.names("communication")


def test_mode_resolution_per_software():
    assert resolve_grad_sync(StepConfig(), load_topology("lshmoe-v100-2x8").graph["gpu"]) == "after"
    assert resolve_grad_sync(StepConfig(), load_topology("locmoe-8x8").graph["gpu"]) == "overlapped"
    assert resolve_grad_sync(StepConfig(), load_topology("h100-nvswitch").graph["gpu"]) == "overlapped"
    assert resolve_grad_sync(StepConfig(grad_sync="off"), load_topology("lshmoe-v100-2x8").graph["gpu"]) == "off"
    with pytest.raises(ValueError, match="grad_sync"):
        StepConfig(grad_sync="later")


TINY = ModelConfig("tiny", num_layers=4, d_model=256, d_ffn=512, num_experts=8, seq_len=64, tokens_per_gpu=256,
                   vocab_size=4000, top_k=2)


@pytest.fixture(scope="module")
def steps():
    G = build_topology(MESH)
    return G, {mode: simulate_step(TINY, G, grad_sync=mode) for mode in ("off", "after", "overlapped")}


def test_absent_when_off_present_otherwise(steps):
    _, by = steps
    assert "grad_allreduce" not in by["off"].breakdown["phases_s"]
    assert by["off"].breakdown["grad_sync_s"] == 0.0 and by["off"].breakdown["grad_sync"] == "off"
    for mode in ("after", "overlapped"):
        assert by[mode].breakdown["phases_s"]["grad_allreduce"] > 0
        assert by[mode].breakdown["grad_sync"] == mode


def test_after_mode_costs_the_closed_form_ring(steps):
    G, by = steps
    off, after = by["off"].breakdown, by["after"].breakdown
    size = after["grad_bytes_replicated"]
    from lshsim.sim.moe_step import model_dict
    params = gradient_parameters(model_dict(TINY), TINY.num_experts // 4)
    assert size == (sum(r for r, _ in params["layers"]) + params["last"]) * TINY.bytes_per_element
    expected = closed_form(4, size, 1e9, 2e-5 + 1e-6)
    assert after["grad_sync_s"] == pytest.approx(expected, rel=1e-9)
    assert after["exposed_grad_sync_s"] == pytest.approx(expected, rel=1e-9)
    assert after["step_s"] == pytest.approx(off["step_s"] + expected, rel=1e-9)
    # the all-to-alls are unchanged; their share is of the longer step
    assert after["a2a_s"] == pytest.approx(off["a2a_s"], rel=1e-12)
    assert after["a2a_share"] == pytest.approx(off["a2a_share"] * off["step_s"] / after["step_s"], rel=1e-9)
    assert after["grad_sync_share"] == pytest.approx(expected / after["step_s"], rel=1e-9)
    # the trace: one record per rank, after every other phase
    records = by["after"].trace.select(name="grad_allreduce")
    others = [r for r in by["after"].trace.phases if r.name != "grad_allreduce"]
    assert len(records) == 4 and min(r.start_s for r in records) >= max(r.end_s for r in others) - 1e-15


def test_overlapped_hides_all_but_the_tail(steps):
    _, by = steps
    off, after, over = (by[m].breakdown for m in ("off", "after", "overlapped"))
    assert over["grad_buckets"] >= 1
    assert over["grad_sync_s"] >= after["grad_sync_s"] * 0.999       # the same bytes, in buckets
    assert 0 < over["exposed_grad_sync_s"] <= over["grad_sync_s"]
    assert off["step_s"] < over["step_s"] <= after["step_s"] + 1e-12
    assert over["step_s"] == pytest.approx(off["step_s"] + over["exposed_grad_sync_s"], rel=1e-9)


def test_expert_gradients_all_reduce_over_replicas_when_ep_is_smaller():
    G = build_topology(MESH)
    whole = simulate_step(TINY, G, grad_sync="after").breakdown
    grouped = simulate_step(TINY, G, grad_sync="after", ep=2).breakdown
    assert whole["grad_bytes_expert"] > 0 and whole["ep"] == 4
    params = gradient_parameters({"num_layers": 4, "d_model": 256, "d_ffn": 512, "num_experts": 8, "moe_every": 2,
                                  "vocab_size": 4000}, 8 // 2)
    expert = sum(e for _, e in params["layers"]) * 2
    assert grouped["grad_bytes_expert"] == expert
    # EP 2 x DP 2: two rings of 2 ranks at once (rank r with r + 2) on the 4-GPU mesh
    extra = closed_form(2, expert, 1e9, 2e-5 + 1e-6)
    assert grouped["grad_sync_s"] == pytest.approx(whole["grad_sync_s"] + extra, rel=1e-9)


def test_paper_cluster_nic_runs_at_the_allreduce_efficiency():
    G = load_topology("lshmoe-v100-2x8")
    software = G.graph["software"]
    assert G.graph["allreduce_nic_scale"] == pytest.approx(software["allreduce_efficiency"] / software["a2a_efficiency"])
    from lshsim.sim.moe_step import A2ACache
    cache = A2ACache(G)
    size = 4e8
    seconds = cache.all_reduce_s(np.arange(16)[None, :], size)
    # one 100 Gb/s NIC per server at 0.96 of line rate (12 GB/s), bounded by the 12 GB/s PCIe to the NIC
    bound = 2 * 15 / 16 * size / min(100 * 0.125e9 * software["allreduce_efficiency"], 12e9)
    assert seconds == pytest.approx(bound, rel=0.02)
    assert cache.all_reduce_s(np.arange(16)[None, :], size) == seconds and cache.hits >= 1


def test_staged_model_buckets_share_one_stream_over_the_whole_backward():
    from lshsim.sim.moe_step import _staged_grad_exposed, combine_breakdowns
    G = build_topology(MESH)
    parts = [simulate_step(TINY, G, grad_sync="overlapped").breakdown for _ in range(2)]
    one = parts[0]
    assert one["grad_bucket_schedule"] and one["exposed_grad_sync_s"] > 0
    exposed = _staged_grad_exposed(parts)
    # the stage whose backward runs first hides its buckets behind the other stage's backward: at
    # least one stage's tail stays exposed, less than both stages' tails (stage by stage)
    assert one["exposed_grad_sync_s"] - 1e-12 <= exposed < 2 * one["exposed_grad_sync_s"]
    # by hand: stage 2's buckets at its own times, stage 1's shifted by stage 2's backward
    forward, backward = 2 * one["forward_s"], one["step_s"] - one["exposed_grad_sync_s"] - one["forward_s"]
    ready = sorted([(forward + r - one["forward_s"], t) for r, t in one["grad_bucket_schedule"]]
                   + [(forward + backward + r - one["forward_s"], t) for r, t in one["grad_bucket_schedule"]])
    free = 0.0
    for when, seconds in ready:
        free = max(free, when) + seconds
    assert exposed == pytest.approx(max(0.0, free - forward - 2 * backward), rel=1e-9)
    combined = combine_breakdowns(parts)
    assert combined["exposed_grad_sync_s"] == pytest.approx(exposed, rel=1e-12)
    assert combined["step_s"] == pytest.approx(2 * (one["step_s"] - one["exposed_grad_sync_s"]) + exposed, rel=1e-9)
    # "after": the stages' all-reduces add up
    after = [simulate_step(TINY, G, grad_sync="after").breakdown for _ in range(2)]
    assert combine_breakdowns(after)["exposed_grad_sync_s"] == pytest.approx(2 * after[0]["grad_sync_s"], rel=1e-9)


def test_tensor_parallel_splits_the_replicated_gradients_and_the_data_parallel_group():
    """With TP = 2 a rank holds half of the attention / dense / head weights (the gate and the routed
    experts stay whole), and all-reduces them over its data-parallel group of W / 2 ranks."""
    m = {"num_layers": 2, "d_model": 8, "d_ffn": 16, "num_experts": 4, "moe_every": 2, "vocab_size": 32}
    one, two = gradient_parameters(m, 1), gradient_parameters(m, 1, tp=2)
    assert two["layers"][0][0] == one["layers"][0][0] // 2                      # dense layer: attention + FFN
    assert two["layers"][1][0] == 4 * 8 * 8 // 2 + 8 * 4                       # MoE layer: attention / 2 + whole gate
    assert two["layers"][1][1] == one["layers"][1][1]                          # experts not split
    assert two["last"] == one["last"] // 2
    model, graph = load_model("mixtral-8x7b"), load_topology("h100-nvswitch")
    b1 = simulate_step(model, graph, capacity_factor=None, grad_sync="after").breakdown
    b2 = simulate_step(model, graph, capacity_factor=None, grad_sync="after", tp=2).breakdown
    assert b2["grad_bytes_replicated"] < 0.51 * b1["grad_bytes_replicated"]
    # the ring over 4 ranks instead of 8 moves 2 (g - 1) / g of half the bytes: less time, same link
    assert 0 < b2["grad_sync_s"] < b1["grad_sync_s"]
    # the overlapped buckets' bytes: 2 (g - 1) / g over the data-parallel group g = W / TP = 4, not over W
    over = simulate_step(model, graph, capacity_factor=None, grad_sync="overlapped", tp=2)
    sent = sum(r.bytes for r in over.trace.select(name="grad_allreduce") if r.rank == 0)
    assert sent == pytest.approx(2 * 3 / 4 * over.breakdown["grad_bytes_replicated"], rel=1e-3)


def _mesh_without_expert_sync() -> dict:
    return {**MESH, "name": "mesh4-legacy-ddp",
            "software": {"name": "fairseq-legacy-ddp", "expert_grad_sync": False,
                         "sources": {"expert_grad_sync": "fairseq legacy_ddp skips `expert` parameters"}}}


@pytest.mark.parametrize("mode", ["after", "overlapped"])
def test_software_that_skips_expert_gradients_all_reduces_only_the_replicated_ones(mode):
    # fairseq's legacy_ddp: the experts' replicas (EP < W) are not all-reduced (software.expert_grad_sync: false)
    synced = simulate_step(TINY, build_topology(MESH), grad_sync=mode, ep=2).breakdown
    skipped = simulate_step(TINY, build_topology(_mesh_without_expert_sync()), grad_sync=mode, ep=2).breakdown
    whole = simulate_step(TINY, build_topology(MESH), grad_sync=mode).breakdown      # EP = W: no replicas
    assert synced["grad_bytes_expert"] > 0 and skipped["grad_bytes_expert"] == 0
    assert skipped["grad_bytes_replicated"] == synced["grad_bytes_replicated"]
    assert skipped["grad_sync_s"] == pytest.approx(whole["grad_sync_s"], rel=1e-9)
    assert skipped["grad_sync_s"] < synced["grad_sync_s"]


def test_expert_grad_sync_is_a_flag_with_a_source():
    from lshsim.topology.spec import read_software
    assert read_software("t.yaml", _mesh_without_expert_sync()["software"])["expert_grad_sync"] is False
    with pytest.raises(ValueError, match="must be true or false"):
        read_software("t.yaml", {"name": "x", "expert_grad_sync": "no", "sources": {"expert_grad_sync": "s"}})
    with pytest.raises(ValueError, match="needs its source"):
        read_software("t.yaml", {"name": "x", "expert_grad_sync": False})
    for name in ("lshmoe-v100-2x8", "lshmoe-a100-4x8"):      # fairseq's legacy_ddp on the LSH-MoE clusters
        G = load_topology(name)
        assert G.graph["gpu"]["expert_grad_sync"] is False and "legacy_ddp" in G.graph["software"]["sources"]["expert_grad_sync"]


def test_unique_experts_never_fill_a_bucket():
    # EP = W: no expert has a replica, so no expert gradient is all-reduced or counted into a
    # bucket, whatever the software's expert_grad_sync says (DDP ignores Tutel's skip_allreduce experts)
    small = 64 * 1024
    synced = simulate_step(TINY, build_topology(MESH), grad_sync="overlapped", grad_bucket_bytes=small).breakdown
    skipped = simulate_step(TINY, build_topology(_mesh_without_expert_sync()), grad_sync="overlapped",
                            grad_bucket_bytes=small).breakdown
    assert synced["grad_bucket_schedule"] == skipped["grad_bucket_schedule"]
    params = gradient_parameters({"num_layers": 4, "d_model": 256, "d_ffn": 512, "num_experts": 8, "moe_every": 2,
                                  "vocab_size": 4000}, 8 // 4)
    replicated = sum(p for p, _ in params["layers"]) + params["last"]
    assert synced["grad_bytes_replicated"] == replicated * 2 and synced["grad_buckets"] >= 2


# ---- HCCL's two-level all-reduce (software.allreduce_algorithm: hierarchical; branch locmoe13d) ----
FOUR_BY_TWO = {"name": "four", "gpu": "h100", "nodes": 4, "gpus_per_node": 2, "alpha_s": 1e-5,
               "intra": {"kind": "full_mesh", "per_link_Bps": 1e10, "latency_s": 0.0, "pcie_Bps": 1e10},
               "inter": {"kind": "fat_tree", "nics_per_node": 2, "nic_gbps": 80, "servers_per_leaf": 4,
                         "latency_s": 0.0}}


def test_hierarchical_all_reduce_is_the_intra_then_the_inter_server_ring():
    from lshsim.sim.collectives import hierarchical_all_reduce
    G = build_topology(FOUR_BY_TWO)
    world = [list(range(8))]
    size = 4e6
    result = hierarchical_all_reduce(G, world, size)
    intra = ring_all_reduce(G, [[0, 1], [2, 3], [4, 5], [6, 7]], size).time_s
    inter = ring_all_reduce(G, [[0, 2, 4, 6], [1, 3, 5, 7]], size / 2, channels=1).time_s
    assert result.time_s == pytest.approx(intra + inter, rel=1e-12)
    # 2 (L - 1) + 2 (N - 1) = 8 start-ups instead of the flat ring's 2 (8 - 1) = 14
    small = 1.0
    assert hierarchical_all_reduce(G, world, small).time_s < ring_all_reduce(G, world, small).time_s
    # groups that are not L > 1 ranks on each of N > 1 servers run the flat ring
    assert hierarchical_all_reduce(G, [[0, 2, 4, 6]], size).time_s == ring_all_reduce(G, [[0, 2, 4, 6]], size).time_s
    assert hierarchical_all_reduce(G, [[0, 1, 2, 4]], size).time_s == ring_all_reduce(G, [[0, 1, 2, 4]], size).time_s
    assert hierarchical_all_reduce(G, world, 0.0).time_s == 0.0


def test_allreduce_algorithm_is_read_with_a_source_and_reaches_the_step():
    from lshsim.topology.spec import read_software
    assert read_software("t.yaml", {"name": "x", "allreduce_algorithm": "hierarchical",
                                    "sources": {"allreduce_algorithm": "s"}})["allreduce_algorithm"] == "hierarchical"
    with pytest.raises(ValueError, match="must be one of ring, hierarchical"):
        read_software("t.yaml", {"name": "x", "allreduce_algorithm": "tree", "sources": {"allreduce_algorithm": "s"}})
    with pytest.raises(ValueError, match="needs its source"):
        read_software("t.yaml", {"name": "x", "allreduce_algorithm": "ring"})
    assert build_topology(FOUR_BY_TWO).graph["allreduce_algorithm"] == "ring"          # absent: NCCL's flat ring
    for name in ("locmoe-8x8", "locmoe-16x8", "locmoe-32x8"):                           # HCCL on the Ascend clusters
        G = load_topology(name)
        assert G.graph["allreduce_algorithm"] == "hierarchical" and "HCCL" in G.graph["software"]["sources"]["allreduce_algorithm"]
    for name in ("lshmoe-v100-2x8", "lshmoe-a100-4x8"):
        assert load_topology(name).graph["allreduce_algorithm"] == "ring"
    # the step's gradient phase follows the software's algorithm (fast links inside the servers: the
    # two levels take fewer start-ups and cross the NICs with less, so the all-reduce is shorter)
    fast = {**FOUR_BY_TWO, "intra": {**FOUR_BY_TWO["intra"], "per_link_Bps": 1e12, "pcie_Bps": 1e12}}
    spec = {**fast, "software": {"name": "s", "grad_sync": "after", "sources": {"grad_sync": "t"}}}
    hier = {**spec, "software": {**spec["software"], "allreduce_algorithm": "hierarchical",
                                 "sources": {"grad_sync": "t", "allreduce_algorithm": "t"}}}
    flat = simulate_step(TINY, build_topology(spec)).breakdown["grad_sync_s"]
    two = simulate_step(TINY, build_topology(hier)).breakdown["grad_sync_s"]
    assert 0 < two < flat
