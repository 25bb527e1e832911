"""Tensor parallelism inside a node (issue 14 item 2): TP = 1 keeps every result, the TP phases against
the closed-form ring collectives, attention / dense compute divided by TP, tokens per rank, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lshsim.cli import main
from lshsim.models import ModelConfig, load_model
from lshsim.sim.moe_step import KERNELS, StepConfig, compare_options, plan_options, simulate_step
from lshsim.sim.phases import TP_PHASES
from lshsim.sim.tensor_parallel import ring_step_matrix, ring_successor, tp_groupwise_bytes
from lshsim.topology import build_topology, load_topology

ALPHA, LATENCY, LINKS, PER_LINK = 5e-6, 1e-6, 18, 25e9          # one HGX node's NVSwitch, a round alpha
NODE = {"name": "tp-node", "gpu": "h100", "gpus_per_node": 8, "alpha_s": ALPHA,
        "intra": {"kind": "nvswitch", "links": LINKS, "per_link_Bps": PER_LINK, "latency_s": LATENCY}}
TWO_NODES = {**NODE, "name": "tp-2-nodes", "nodes": 2,
             "inter": {"kind": "rail", "nics_per_node": 8, "nic_gbps": 400, "servers_per_leaf": 2, "latency_s": 1e-6}}
# 4 layers, the first dense (with its own width), 16 experts, 4 heads: TP 1, 2, 4 divide everything
TINY = ModelConfig("tp-tiny", num_layers=4, d_model=512, d_ffn=1024, num_experts=16, top_k=2, moe_every=1, seq_len=1024,
                   tokens_per_gpu=2048, vocab_size=4096, first_dense_layers=1, dense_d_ffn=2048,
                   attention={"kind": "gqa", "num_heads": 8, "num_kv_heads": 8, "head_dim": 64})


@pytest.fixture(scope="module")
def node():
    return build_topology(NODE)


def _step(model, graph, **options):
    options.setdefault("capacity_factor", None)
    return simulate_step(model, graph, **options)


# ---- TP = 1: today's results, exactly -----------------------------------------------------------
# step_s, a2a_s and phases_s of three steps, printed by main (e822a97) before tensor parallelism
# (and before the gradient all-reduce, so these steps run with grad_sync="off"): the same calls must
# give the same floats, bit for bit
MAIN = [
    ("mixtral-8x7b", "h100-nvswitch", {"capacity_factor": None},
     0.49035723612609317, 0.018672062008889125,
     {"gate": 0.003526827940298063, "dispatch_a2a": 0.009336031004444563, "expert": 0.36014535998899844,
      "combine_a2a": 0.009336031004444563, "attention": 0.10389666986839285, "other": 0.0041163163195146735}),
    ("deepseek-v2-lite", "h100-rail-4x8", {"ep": 16, "overlap": True, "max_routed_tokens": 8192},
     0.1587346540283554, 0.11615678464000063,
     {"gate": 0.0025042396047347875, "dispatch_a2a": 0.05807839232000031, "expert": 0.06251659133993945,
      "combine_a2a": 0.058078392320000324, "attention": 0.0313809384004855, "dense_ffn": 0.002133585271911026,
      "other": 0.006559106111223456}),
    ("qwen3-30b-a3b", "h100-rail-4x8", {"tokens_per_gpu": 1024, "algorithm": "2d"},
     0.15943915357232497, 0.1178764492799999,
     {"gate": 0.0038978970416880814, "dispatch_a2a": 0.058938224639999925, "expert": 0.016936397281455642,
      "combine_a2a": 0.05893822463999998, "attention": 0.01826708373354939, "other": 0.0024613262356319443}),
]


@pytest.mark.parametrize("model, cluster, options, step_s, a2a_s, phases", MAIN, ids=[m[0] for m in MAIN])
def test_tp1_reproduces_main_bit_for_bit(model, cluster, options, step_s, a2a_s, phases):
    for extra in ({}, {"tp": 1}):
        b = simulate_step(load_model(model), load_topology(cluster), grad_sync="off", **options, **extra).breakdown
        assert b["step_s"] == step_s and b["a2a_s"] == a2a_s
        assert b["phases_s"] == phases                      # no tp_* phase, same order, same floats
        assert b["tp"] == 1 and b["tp_s"] == 0.0


# ---- the ring collectives against the closed form ------------------------------------------------
def test_ring_layout():
    assert ring_successor(8, 2).tolist() == [1, 0, 3, 2, 5, 4, 7, 6]
    m = ring_step_matrix(16, 8, 3.0)
    assert m.sum() == 48.0 and (m[np.arange(16), ring_successor(16, 8)] == 3.0).all()
    assert not m[:8, 8:].any() and not m[8:, :8].any()        # no byte between TP groups
    assert not ring_step_matrix(8, 1, 3.0).any()


def _ring_closed_form(kind_steps: int, tp: int, tensor_bytes: float) -> float:
    # NCCL-style ring: one start-up alpha, then each step sends N / TP bytes GPU -> NVSwitch -> GPU:
    # two hops' latency and the bytes at the GPU's NVSwitch port (links x per link), its only flow
    return ALPHA + kind_steps * (2 * LATENCY + np.ceil(tensor_bytes / tp) / (LINKS * PER_LINK))


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tp_phases_against_closed_form_ring_on_one_node(node, tp):
    result = _step(TINY, node, tp=tp)
    trace = result.trace
    n = TINY.tokens_per_gpu * TINY.d_model * TINY.bytes_per_element          # (T, d) of one TP group
    one_collective = _ring_closed_form(tp - 1, tp, n)
    fwd, bwd = trace.phase_durations_s("forward"), trace.phase_durations_s("backward")
    # attention: an all-gather and a reduce-scatter per layer each way
    assert fwd["tp_attention"] == pytest.approx(TINY.num_layers * 2 * one_collective, rel=1e-9)
    assert bwd["tp_attention"] == pytest.approx(TINY.num_layers * 2 * one_collective, rel=1e-9)
    # the dense first layer: the same pair; no shared experts: nothing in the MoE block
    assert fwd["tp_dense_ffn"] == pytest.approx(2 * one_collective, rel=1e-9)
    assert fwd["tp_shared_expert"] == 0.0
    # head: embedding reduce-scatter + output all-gather, and three all-reduces of a float32 per token
    small = _ring_closed_form(2 * (tp - 1), tp, TINY.tokens_per_gpu * 4)
    assert fwd["tp_head"] == pytest.approx(2 * one_collective + 3 * small, rel=1e-9)
    assert bwd["tp_head"] == pytest.approx(2 * one_collective, rel=1e-9)
    b = result.breakdown
    assert b["tp_s"] == pytest.approx(sum(b["phases_s"].get(p, 0.0) for p in TP_PHASES), rel=1e-12)
    assert b["a2a_s"] == pytest.approx(b["phases_s"]["dispatch_a2a"] + b["phases_s"]["combine_a2a"], rel=1e-12)
    # every rank sends (TP - 1) chunks of N / TP per collective
    record = trace.select("tp_attention", "forward")[0]
    assert record.bytes == 2 * (tp - 1) * n // tp


def test_tp_groups_stay_in_their_node():
    # TP groups never cross nodes: on two nodes every ring step is as fast as on one
    one, two = build_topology(NODE), build_topology(TWO_NODES)
    a = _step(TINY, one, tp=4).trace.phase_durations_s()
    b = _step(TINY, two, tp=4, ep=8).trace.phase_durations_s()
    for name in ("tp_attention", "tp_dense_ffn", "tp_head"):
        assert b[name] == pytest.approx(a[name], rel=1e-12)


# ---- compute split over TP -------------------------------------------------------------------------
def test_attention_and_dense_compute_divided_by_tp(node):
    launch = StepConfig().kernel_launch_s
    base = _step(TINY, node).trace.phase_durations_s("forward")
    for tp in (2, 4):
        got = _step(TINY, node, tp=tp).trace.phase_durations_s("forward")
        for name in ("attention", "dense_ffn"):
            layers = TINY.num_layers if name == "attention" else 1
            fixed = layers * KERNELS[name] * launch
            assert got[name] - fixed == pytest.approx((base[name] - fixed) / tp, rel=1e-9), (name, tp)


def test_each_rank_dispatches_its_share_of_the_tokens(node):
    one = _step(TINY, node)
    four = _step(TINY, node, tp=4)
    assert four.breakdown["tokens_per_gpu"] == TINY.tokens_per_gpu // 4
    assert four.traffic.send_counts.sum() == pytest.approx(one.traffic.send_counts.sum() / 4, rel=1e-12)
    # tokens over the cluster: W / TP replicas of T tokens
    assert four.breakdown["tokens_per_step"] == 8 * TINY.tokens_per_gpu // 4


def test_shared_experts_get_their_collectives(node):
    shared = ModelConfig("tp-shared", **{**{k: getattr(TINY, k) for k in (
        "num_layers", "d_model", "d_ffn", "num_experts", "top_k", "seq_len", "tokens_per_gpu", "vocab_size",
        "moe_every", "first_dense_layers", "dense_d_ffn")}, "num_shared_experts": 1})
    fwd = _step(shared, node, tp=2).trace.phase_durations_s("forward")
    assert fwd["tp_shared_expert"] == pytest.approx(3 / 4 * fwd["tp_attention"], rel=1e-9)   # 3 MoE of 4 layers


# ---- refusals name the field and the value ----------------------------------------------------------
def test_refusals(node):
    with pytest.raises(ValueError, match=r"tp=0 must be a positive integer"):
        StepConfig(tp=0)
    with pytest.raises(ValueError, match=r"tp=3 must divide the 8 GPUs per node of cluster 'tp-node'"):
        _step(TINY, node, tp=3)
    with pytest.raises(ValueError, match=r"tp=8 must divide attention.num_kv_heads=4 of model 'qwen3-30b-a3b'"):
        _step(load_model("qwen3-30b-a3b"), node, tp=8)
    with pytest.raises(ValueError, match=r"tp=2 must divide tokens_per_gpu=1001"):
        _step(TINY, node, tp=2, tokens_per_gpu=1001)
    with pytest.raises(ValueError, match=r"--ep 3: the expert-parallel group size must divide the 8 GPUs"):
        _step(TINY, node, tp=2, ep=3)


def test_ep_times_tp_may_exceed_the_world(node):
    # Megatron-Core's folding: the EP group spans the TP ranks (EP 8 x TP 4 > 8 GPUs)
    b = _step(TINY, node, tp=4, ep=8).breakdown
    assert b["ep"] == 8 and b["tp"] == 4 and b["tp_s"] > 0


def test_plan_cli_tp(capsys, tmp_path):
    assert main(["plan", "--model", "mixtral-8x7b", "--cluster", "h100-nvswitch", "--tp", "2", "--json",
                 "--capacity-factor", "none", "--tokens-per-gpu", "1024"]) == 0
    out = json.loads(capsys.readouterr().out)
    for row in out["options"]:
        assert row["config"]["tp"] == 2 and row["breakdown"]["tp"] == 2
        assert row["breakdown"]["phases_s"]["tp_attention"] > 0
    assert main(["plan", "--model", "mixtral-8x7b", "--cluster", "h100-nvswitch", "--tp", "2",
                 "--capacity-factor", "none", "--tokens-per-gpu", "1024"]) == 0
    text = capsys.readouterr().out
    assert "tp_attention" in text and "TP 2 x DP" in text and "tp_shared_expert" not in text
    with pytest.raises(SystemExit) as info:
        main(["plan", "--model", "mixtral-8x7b", "--cluster", "h100-nvswitch", "--tp", "3"])
    assert info.value.code == 2 and "tp=3 must divide the 8 GPUs per node" in capsys.readouterr().err


def test_options_share_routing_only_at_equal_tp(node):
    rows = compare_options(TINY, node, [("tp1", StepConfig(capacity_factor=None)),
                                        ("tp2", StepConfig(capacity_factor=None, tp=2))])
    assert rows[1]["result"].traffic.tokens_per_rank == rows[0]["result"].traffic.tokens_per_rank // 2
    assert [label for label, _ in plan_options(StepConfig(tp=2))] and \
        all(config.tp == 2 for _, config in plan_options(StepConfig(tp=2)))


def test_sweep_has_a_tp_axis():
    from lshsim.sweep import AXES

    assert AXES["tp"].check(4) == 4
    with pytest.raises(ValueError, match="tp=0"):
        AXES["tp"].check(0)


def test_sweep_tp_axis_rows_equal_plan_tp(tmp_path, capsys):
    """A grid with `tp: [1, 2]` gives, per point, the step of `lshsim plan --tp` on the same inputs."""
    import csv

    model = tmp_path / "tiny.yaml"
    model.write_text("num_layers: 2\nd_model: 256\nd_ffn: 1024\nnum_experts: 8\nseq_len: 256\n"
                     "tokens_per_gpu: 512\nvocab_size: 1000\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: tp-grid\ngrid:\n  model: tiny.yaml\n  cluster: h100-nvswitch\n  tp: [1, 2]\n"
                    "options: [baseline]\n")
    table = tmp_path / "r.csv"
    assert main(["sweep", str(grid), "--out", str(table), "--jobs", "0"]) == 0
    capsys.readouterr()
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["tp"] for row in rows] == ["1", "2"] and all(row["error"] == "" for row in rows)
    for row in rows:
        assert main(["plan", "--model", str(model), "--cluster", "h100-nvswitch", "--tp", row["tp"], "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)["options"][0]["breakdown"]
        assert float(row["step_s"]) == pytest.approx(plan["step_s"], rel=1e-12)
    # a toy this small is latency-bound: TP 2 halves the tokens per GPU but adds the rings
    assert float(rows[1]["step_s"]) != float(rows[0]["step_s"])


# ---- MindSpore's layout: tokens replicated over the TP ranks, experts split over them ---------------
def test_replicated_layout_placement_is_strided():
    from lshsim.dispatch.placement import strided_expert_parallel_placement
    import torch

    nodes = torch.arange(16) // 8                                   # 2 nodes x 8
    p = strided_expert_parallel_placement(16, nodes, ep=2, stride=8)
    assert p.groups.tolist() == [[m, 8 + m] for m in range(8)]     # one rank of each node, same TP index
    assert all(g.rank_to_node.tolist() == [0, 1] for g in p.placements)
    p = strided_expert_parallel_placement(4, torch.zeros(8, dtype=torch.int64), ep=2, stride=2)
    assert p.groups.tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]  # blocks of EP replicas, then TP index
    with pytest.raises(ValueError, match=r"ep=4: with model parallel 8 the expert-parallel degree must divide "
                                         r"the data-parallel degree 16 / 8 = 2"):
        strided_expert_parallel_placement(16, nodes, ep=4, stride=8)


def test_replicated_layout_dispatch_compute_and_collectives():
    graph = build_topology(TWO_NODES)                               # 16 GPUs, TP 4: 4 replicas
    tp, t, k = 4, TINY.tokens_per_gpu, TINY.top_k
    seq = _step(TINY, graph, tp=tp, ep=4, traffic_model="popularity", grad_sync="off")
    rep = _step(TINY, graph, tp=tp, ep=4, tp_layout="replicated", traffic_model="popularity", grad_sync="off")
    # every rank dispatches all T tokens of its replica (k copies each, nothing dropped), T / TP with Megatron's
    assert rep.traffic.send_counts.sum(axis=1) == pytest.approx(np.full(16, t * k), rel=1e-9)
    assert seq.traffic.send_counts.sum(axis=1) == pytest.approx(np.full(16, t * k / tp), rel=1e-9)
    src, dst = np.nonzero(rep.traffic.send_counts)
    assert (src % tp == dst % tp).all()                             # to the rank of its own TP index
    assert (src // tp != dst // tp).any()                           # across replicas (here: across nodes)
    # the same FLOPs: attention and dense compute equal; the experts see TP x the rows at 1 / TP of the width
    a, b = seq.trace.phase_durations_s("forward"), rep.trace.phase_durations_s("forward")
    for name in ("attention", "dense_ffn", "other"):
        assert b[name] == pytest.approx(a[name], rel=1e-9), name
    assert rep.breakdown["tokens_per_gpu"] == t and seq.breakdown["tokens_per_gpu"] == t // tp
    assert rep.breakdown["tokens_per_step"] == seq.breakdown["tokens_per_step"] == 16 // tp * t   # W / TP replicas
    # the experts' all-reduce over the TP group: a ring all-reduce of the rows x d the rank's experts process
    assert "tp_expert" not in seq.breakdown["phases_s"] and b["tp_expert"] > 0
    rows = rep.trace.select("expert", "forward")
    n = float(np.max(rep.traffic.send_counts.sum(axis=0))) * TINY.d_model * TINY.bytes_per_element
    record = rep.trace.select("tp_expert", "forward")[0]
    assert record.bytes == 2 * (tp - 1) * np.ceil(n / tp)
    assert rows and rep.breakdown["tp_s"] == pytest.approx(sum(rep.breakdown["phases_s"][p] for p in TP_PHASES
                                                                if p in rep.breakdown["phases_s"]), rel=1e-12)
    # the attention / dense collectives: one all-reduce of the replica's (T, d) each way = the sequence pair
    for name in ("tp_attention", "tp_dense_ffn", "tp_head"):
        assert b[name] == pytest.approx(a[name], rel=1e-9), name


def test_tp_groupwise_bytes_splits_across_and_all_gathers_within():
    """LocMoE's group-wise all-to-all (Sec. 3.2) from a replicated-layout matrix: each rank sends
    1 / TP across TP groups, then sends what it received to the TP - 1 others of its group; a rank's
    own bytes stay. Checked against the definition, by hand, on a random peer-to-peer matrix."""
    rng = np.random.default_rng(0)
    tp, world = 4, 16
    matrix = np.zeros((world, world), dtype=np.int64)
    src, dst = np.meshgrid(np.arange(world), np.arange(world), indexing="ij")
    peer = (src % tp == dst % tp)                                     # MindSpore: to the rank of its own TP index
    matrix[peer] = rng.integers(0, 10_000, size=int(peer.sum()))
    out = tp_groupwise_bytes(matrix, tp)
    same = (src // tp) == (dst // tp)
    assert (out[~same] == np.ceil(matrix[~same] / tp)).all()         # 1 / TP across, whole bytes
    assert (np.diagonal(out) == np.diagonal(matrix)).all()           # the rank's own shard: a local copy
    received = np.where(~same, out, 0).sum(axis=0)
    for r in range(world):
        others = [q for q in range(world) if q // tp == r // tp and q != r]
        assert (out[r, others] == received[r]).all()                 # the all-gather of its received part
    assert (tp_groupwise_bytes(matrix, 1) == matrix).all()
    with pytest.raises(ValueError, match="tp=3"):
        tp_groupwise_bytes(matrix, 3)


def test_groupwise_in_the_replicated_layout_is_locmoes():
    """`groupwise` with MindSpore's layout costs the split + all-gather matrix (the inter-node bytes
    1 / TP of the direct all-to-all's) with the groupwise phases; in the sequence layout it keeps the
    plain matrix."""
    graph = build_topology(TWO_NODES)                               # 16 GPUs, TP 4
    common = dict(tp=4, ep=4, traffic_model="popularity", grad_sync="off")
    direct = _step(TINY, graph, tp_layout="replicated", **common)
    group = _step(TINY, graph, tp_layout="replicated", algorithm="groupwise", **common)
    np.testing.assert_array_equal(direct.traffic.send_counts, group.traffic.send_counts)
    inter_direct = direct.breakdown["inter_node_bytes_per_layer"]
    assert group.breakdown["inter_node_bytes_per_layer"] == pytest.approx(inter_direct / 4, rel=1e-3)
    from lshsim.sim.collectives import simulate_all_to_all

    bytes_ = np.rint(direct.traffic.send_counts * TINY.d_model * TINY.bytes_per_element).astype(np.int64)
    expected = simulate_all_to_all(graph, tp_groupwise_bytes(bytes_, 4), algorithm="groupwise").time_s
    record = group.trace.select("dispatch_a2a", "forward")[0]
    assert record.duration_s == pytest.approx(expected, rel=1e-9)
    seq_direct = _step(TINY, graph, **common)
    seq_group = _step(TINY, graph, algorithm="groupwise", **common)
    assert seq_group.breakdown["inter_node_bytes_per_layer"] == seq_direct.breakdown["inter_node_bytes_per_layer"]


def test_replicated_layout_expert_gradients_and_refusals():
    from lshsim.sim.phases import gradient_parameters

    m = {"num_layers": 2, "d_model": 4, "d_ffn": 8, "num_experts": 2, "moe_every": 2, "vocab_size": 10}
    assert gradient_parameters(m, 1, 2, expert_tp=2)["layers"][1][1] == gradient_parameters(m, 1, 2)["layers"][1][1] // 2
    graph = build_topology(TWO_NODES)
    with pytest.raises(ValueError, match=r"tp_layout='mindspore' must be one of sequence, replicated"):
        StepConfig(tp_layout="mindspore")
    with pytest.raises(ValueError, match=r"--ep 8 with --tp 4 --tp-layout replicated on cluster 'tp-2-nodes' "
                                         r"\(16 GPUs\): ep=8: with model parallel 4 the expert-parallel degree "
                                         r"must divide the data-parallel degree 16 / 4 = 4"):
        _step(TINY, graph, tp=4, ep=8, tp_layout="replicated")
    # tokens need not divide by TP when nothing splits them
    assert _step(TINY, graph, tp=4, tokens_per_gpu=1001, tp_layout="replicated", grad_sync="off").breakdown[
        "tokens_per_gpu"] == 1001


def test_plan_cli_tp_layout(capsys):
    assert main(["plan", "--model", "mixtral-8x7b", "--cluster", "h100-rail-4x8", "--tp", "8", "--tp-layout",
                 "replicated", "--json", "--capacity-factor", "none", "--tokens-per-gpu", "1024", "--ep", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    for row in out["options"]:
        assert row["config"]["tp_layout"] == "replicated" and row["breakdown"]["phases_s"]["tp_expert"] > 0
        assert "tp 8 replicated" in row["description"]
