"""Issue 13 items 1-2: the `software:` and `assumed:` blocks, the models' assumed reasons, the LSH
phases from measured throughput, LocMoE's locality share, Swin's stages. Fast; every reference is
computed by hand in the test."""
from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from lshsim.sim.moe_step import StepConfig, apply_locality_share, combine_breakdowns, stage_models
from lshsim.sim.phases import measured_lsh_cost
from lshsim.topology.spec import build_topology, read_assumed, read_software

BASE = {"name": "t", "gpu": "v100", "nodes": 2, "gpus_per_node": 2, "intra": {"kind": "nvswitch"},
        "inter": {"kind": "fat_tree", "nics_per_node": 1, "nic_gbps": 100}}
SW = {"name": "era", "gemm_efficiency": 0.4, "a2a_efficiency": 0.5, "lsh_compress_Bps": 1e10,
      "sources": {"gemm_efficiency": "paper A", "a2a_efficiency": "issue B", "lsh_compress_Bps": "run C"}}


def test_software_block_sets_compute_nic_and_lsh_rates():
    G = build_topology({**BASE, "software": SW, "assumed": {"alpha_s": "lshsim's default"}})
    assert G.graph["gpu"]["achieved_flops"] == pytest.approx(0.4 * 125e12)           # 50 TFLOP/s
    nic = [d["bandwidth_Bps"] for _, _, d in G.edges(data=True) if d.get("kind") == "nic"]
    assert max(nic) == pytest.approx(100 * 0.125e9 * 0.5)                              # 6.25 GB/s
    assert G.graph["gpu"]["lsh_compress_Bps"] == 1e10 and "lsh_restore_Bps" not in G.graph["gpu"]
    assert G.graph["software"]["name"] == "era" and G.graph["assumed"] == {"alpha_s": "lshsim's default"}
    plain = build_topology(BASE)
    assert plain.graph["software"] is None and plain.graph["assumed"] == {}
    assert plain.graph["gpu"]["achieved_flops"] == pytest.approx(0.8 * 125e12)         # the datasheet default


@pytest.mark.parametrize("block, message", [
    ({"gemm_efficiency": 0.4, "sources": {"gemm_efficiency": "x"}}, "software.name"),
    ({"name": "x", "gemm_efficiency": 0.4}, "software.sources.gemm_efficiency"),
    ({"name": "x", "gemm_efficiency": 1.5, "sources": {"gemm_efficiency": "x"}}, "software.gemm_efficiency=1.5"),
    ({"name": "x", "a2a_efficiency": "0.3", "sources": {"a2a_efficiency": "x"}}, "software.a2a_efficiency='0.3'"),
    ({"name": "x", "speed": 2}, "software.speed"),
])
def test_software_block_errors_name_file_and_field(block, message):
    with pytest.raises(ValueError, match="^t.yaml: " + message.replace(".", r"\.").replace("'", "'")):
        read_software("t.yaml", block)


def test_assumed_block_needs_a_reason():
    assert read_assumed("t.yaml", None) == {}
    with pytest.raises(ValueError, match=r"t.yaml: assumed.nic_gbps=''"):
        read_assumed("t.yaml", {"nic_gbps": ""})
    with pytest.raises(ValueError, match="must be a mapping"):
        read_assumed("t.yaml", ["nic_gbps"])


def test_model_assumed_mapping_keeps_reasons():
    from models.catalog import model_from_dict

    fields = dict(name="m", num_layers=2, d_model=8, d_ffn=16, num_experts=2, seq_len=4, tokens_per_gpu=8)
    model = model_from_dict({**fields, "assumed": {"seq_len": "not stated", "tokens_per_gpu": "our choice"}})
    assert model.assumed == ("seq_len", "tokens_per_gpu")
    assert dict(model.assumptions) == {"seq_len": "not stated", "tokens_per_gpu": "our choice"}
    assert model.to_dict()["assumed"] == {"seq_len": "not stated", "tokens_per_gpu": "our choice"}
    assert model_from_dict({**fields, "assumed": ["seq_len"]}).to_dict()["assumed"] == ["seq_len"]   # a list still reads
    with pytest.raises(ValueError, match="assumed.seq_len"):
        model_from_dict({**fields, "assumed": {"seq_len": " "}})
    with pytest.raises(ValueError, match="unknown fields"):
        model_from_dict({**fields, "assumed": {"colour": "blue"}})


def test_paper_models_give_every_assumption_a_reason():
    from models import load_model

    for name in ("gpt-moe-15b", "gpt-moe-52b", "roberta-moe", "swin-moe-l", "t5-moe"):
        model = load_model(name)
        assert set(dict(model.assumptions)) == set(model.assumed) and "tokens_per_gpu" in model.assumed


def test_measured_lsh_cost_by_hand():
    ctx = NS(gpu={"lsh_compress_Bps": 2e9, "lsh_restore_Bps": 8e9}, model={"d_model": 256, "bytes_per_element": 2},
             traffic=NS(tokens_per_rank=1000, k=2), kernel_launch_s=1e-6)
    rows = 2000 * 256 * 2                                          # copies x d x bytes = 1,024,000 B
    assert measured_lsh_cost("lsh_compress", None)(ctx, "forward").seconds == pytest.approx(rows / 2e9 + 8e-6)
    assert measured_lsh_cost("lsh_compress", None)(ctx, "backward").seconds == pytest.approx(rows / 8e9 + 16e-6)
    assert measured_lsh_cost("lsh_restore", None)(ctx, "forward", 2).seconds == pytest.approx(rows / 8e9 / 2 + 2e-6)
    fallback = measured_lsh_cost("lsh_restore", lambda c, d, n: "roofline")
    assert fallback(NS(gpu={}, traffic=ctx.traffic), "forward", 1) == "roofline"


def test_locality_share_moves_the_fewest_copies():
    # 2 nodes of 2 ranks; row 0 keeps 2 of 8 on its node; a share of 0.5 moves 2 off-node copies home
    counts = np.array([[1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    out = apply_locality_share(counts, np.array([0, 0, 1, 1]), 0.5)
    assert out[0].tolist() == [2.0, 2.0, 2.0, 2.0]                  # 2 moved, split 1:1 as the node's load
    assert out[1].tolist() == counts[1].tolist()                    # already all local: unchanged
    assert out[2].tolist() == counts[2].tolist()                    # exactly 0.5 already
    assert np.allclose(out.sum(axis=1), counts.sum(axis=1))
    with pytest.raises(ValueError, match="needs router='locmoe'"):
        StepConfig(router="topk", locality_share=0.3)
    with pytest.raises(ValueError, match=r"locality_share=1.5 must be in \[0, 1\]"):
        StepConfig(router="locmoe", locality_share=1.5)


def _locality_share_by_loops(counts, node, share):
    """apply_locality_share's rule row by row in plain floats: move the fewest off-node copies home so
    that the own-node share is `share`, onto the own node's ranks in proportion to what they get (evenly
    when they get nothing), taking the same fraction from every off-node rank."""
    out = []
    for r, row in enumerate(counts):
        own = [c for c in range(len(row)) if node[c] == node[r]]
        total, on = sum(row), sum(row[c] for c in own)
        off = total - on
        move = min(max(share * total - on, 0.0), off)
        new = list(map(float, row))
        for c in range(len(row)):
            if c in own:
                new[c] += move * (row[c] / on if on > 0 else 1.0 / len(own))
            elif off > 0:
                new[c] -= move * row[c] / off
        out.append(new)
    return out


def test_locality_share_moves_copies_in_proportion_and_evenly_when_none_are_local():
    node = np.array([0, 0, 1, 1])
    counts = np.array([[1.0, 3.0, 4.0, 0.0],       # 4 of 8 local; 0.75 moves 2 home, split 1:3
                       [0.0, 0.0, 4.0, 4.0],       # none local: 4 moved home, split evenly
                       [6.0, 2.0, 0.0, 0.0],       # none local, share 0.75 of 8 = 6 on ranks 2, 3
                       [1.0, 0.0, 2.0, 5.0]])      # 7 of 8 local already
    out = apply_locality_share(counts, node, 0.75)
    assert out[0].tolist() == [1.5, 4.5, 2.0, 0.0]
    assert out[1].tolist() == [3.0, 3.0, 1.0, 1.0]
    np.testing.assert_allclose(out, _locality_share_by_loops(counts.tolist(), node.tolist(), 0.75), rtol=1e-12)
    rng = np.random.default_rng(4)
    sample = rng.integers(0, 5, size=(8, 8)).astype(float) * (rng.random((8, 8)) < 0.6)
    for share in (0.0, 0.3, 0.5, 1.0):
        np.testing.assert_allclose(apply_locality_share(sample, np.arange(8) // 4, share),
                                   _locality_share_by_loops(sample.tolist(), (np.arange(8) // 4).tolist(), share),
                                   rtol=1e-12, atol=1e-12)


def test_locality_share_in_a_simulated_step_cuts_inter_node_bytes():
    from models import load_model
    from lshsim.sim.moe_step import simulate_config
    from lshsim.topology import load_topology

    model = load_model("roberta-moe")
    graph = build_topology({**BASE, "gpu": "a100", "nodes": 2, "gpus_per_node": 8})
    plain = simulate_config(model, graph, StepConfig(router="locmoe", locality_share=0.0, tokens_per_gpu=512))
    kept = simulate_config(model, graph, StepConfig(router="locmoe", locality_share=0.75, tokens_per_gpu=512))
    counts = plain.traffic.send_counts
    same = np.equal.outer(np.arange(16) // 8, np.arange(16) // 8)
    share0 = counts[same].sum() / counts.sum()                     # GrAP alone: about 1/2 on 2 nodes
    inter0 = plain.breakdown["inter_node_bytes_per_layer"]
    # the inter-node copies fall from (1 - share0) to 0.25 of all copies (row by row, all rows below 0.75)
    assert kept.breakdown["inter_node_bytes_per_layer"] == pytest.approx(inter0 * 0.25 / (1 - share0), rel=0.01)
    assert load_topology("locmoe-8x8").graph["software"]["name"] == "mindspore-hccl-ascend910a"


def test_swin_stages_by_hand():
    from models import load_model

    swin = load_model("swin-moe-l")
    parts = stage_models(swin)
    assert [(m.d_model, m.seq_len, m.attention_window, m.tokens_per_gpu) for m, _ in parts] == [
        (128, 2304, 144, 73728), (256, 576, 144, 18432), (512, 144, 144, 4608), (1024, 36, 36, 1152)]
    moe = [sum(1 for layer in range(m.num_layers) if (layer + 1) % m.moe_every == 0) for m, _ in parts]
    assert moe == [0, 0, 9, 1] and sum(moe) == 10                 # Swin-MoE: MoE blocks in stages 3-4 only
    assert [m.output_head for m, _ in parts] == [False, False, False, True]
    one = {"step_s": 1.0, "forward_s": 0.4, "backward_s": 0.6, "phases_s": {"attention": 1.0}, "a2a_s": 0.0,
           "exposed_a2a_s": 0.0, "dispatch_bytes_per_layer": 0, "inter_node_bytes_per_layer": 0,
           "local_bytes_per_layer": 0, "dropped_fraction": 0.0, "compression_rate": 1.0, "tokens_per_gpu": 8,
           "routed_tokens_per_rank": 8, "a2a_share": 0.0}
    two = {**one, "step_s": 3.0, "a2a_s": 1.5, "exposed_a2a_s": 1.5, "dispatch_bytes_per_layer": 10,
           "dropped_fraction": 0.1, "compression_rate": 0.2, "tokens_per_gpu": 2}
    both = combine_breakdowns([one, two])
    assert both["step_s"] == 4.0 and both["a2a_share"] == pytest.approx(1.5 / 4.0)
    assert both["dropped_fraction"] == pytest.approx(0.1) and both["compression_rate"] == pytest.approx(0.2)
    assert both["phases_s"]["attention"] == 2.0 and both["tokens_per_gpu"] == 2


def test_locality_share_inside_expert_parallel_groups():
    """LocMoE's share with EP groups (App. D: EP 16 over 64-256 NPUs): copies move onto the rank's
    own node within its own group only; each row's own-node share is raised to the share, row sums
    kept, nothing leaves a group's block. References by hand (per block) and from routed traffic."""
    from models import load_model
    from lshsim.sim.moe_step import apply_group_locality_share, placement_for, route_traffic

    # by hand: 2 groups of 2 ranks, each group on nodes 0 and 1
    counts = np.array([[2.0, 2.0, 0, 0], [1.0, 3.0, 0, 0], [0, 0, 0.0, 4.0], [0, 0, 2.0, 2.0]])
    node, groups = np.array([0, 1, 0, 1]), np.array([[0, 1], [2, 3]])
    out = apply_group_locality_share(counts, node, groups, 0.5)
    assert out.tolist() == [[2.0, 2.0, 0, 0], [1.0, 3.0, 0, 0], [0, 0, 2.0, 2.0], [0, 0, 2.0, 2.0]]
    with pytest.raises(ValueError, match="outside a rank's expert-parallel group"):
        apply_group_locality_share(np.ones((4, 4)), node, groups, 0.5)
    with pytest.raises(ValueError, match="must partition the 4 ranks"):
        apply_group_locality_share(counts, node, np.array([[0, 1], [1, 2]]), 0.5)

    # routed: roberta-moe's 16 experts, EP 8 on 4 nodes x 4 GPUs (2 groups of 2 nodes each)
    model = load_model("roberta-moe")
    graph = build_topology({**BASE, "gpu": "a100", "nodes": 4, "gpus_per_node": 4})
    placement = placement_for(model, graph, 8)
    plain = route_traffic(model, placement, StepConfig(router="locmoe", locality_share=0.0, tokens_per_gpu=256, ep=8))
    kept = route_traffic(model, placement, StepConfig(router="locmoe", locality_share=0.9, tokens_per_gpu=256, ep=8))
    rank_node = np.arange(16) // 4
    same = np.equal.outer(rank_node, rank_node)
    in_group = np.equal.outer(np.arange(16) // 8, np.arange(16) // 8)
    np.testing.assert_allclose(kept.send_counts.sum(axis=1), plain.send_counts.sum(axis=1), rtol=1e-12)
    assert np.all(kept.send_counts[~in_group] == 0)
    share0 = (plain.send_counts * same).sum(axis=1) / plain.send_counts.sum(axis=1)
    share = (kept.send_counts * same).sum(axis=1) / kept.send_counts.sum(axis=1)
    assert share0.max() < 0.9                                      # GrAP alone keeps about half on 2 nodes
    np.testing.assert_allclose(share, 0.9, rtol=1e-9)
    assert kept.locality_share == 0.9
