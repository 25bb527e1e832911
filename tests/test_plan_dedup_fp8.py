"""`lshsim plan` with an fp8 dispatch and the node-deduplicated all-to-all (issue 14 item 3): the bytes
against independent counts (`lshsim.sim.dispatch_formats.node_dedup_traffic`), the refusals, the CLI."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from lshsim.cli import main
from lshsim.models import model_from_dict
from lshsim.sim.dispatch_formats import bytes_per_token, node_dedup_traffic
from lshsim.sim.moe_step import (StepConfig, _draw_inputs, _route_group, placement_for, plan_options,
                                 route_traffic, simulate_config)

from conftest import SMALL_MOE  # noqa: E402  the 32-GPU A100 cluster's small model (4 nodes x 8)


@pytest.fixture(scope="module")
def graph(a100_4x8_graph):
    return a100_4x8_graph


@pytest.fixture(scope="module")
def model():
    return model_from_dict({**SMALL_MOE, "top_k": 4, "tokens_per_gpu": 512})


def test_config_refusals():
    with pytest.raises(ValueError, match="dispatch_format='fp4'"):
        StepConfig(dispatch_format="fp4")
    with pytest.raises(ValueError, match="no token to deduplicate"):
        StepConfig(algorithm="deepep", lsh_rate=0.2)
    assert StepConfig(algorithm="deepep").deduplicates and not StepConfig().deduplicates


@pytest.mark.parametrize("ep", [None, 16])
def test_node_copies_equal_an_independent_count_of_the_routing(graph, model, ep):
    config = StepConfig(algorithm="node_dedup", capacity_factor=None, traffic_model="routed", ep=ep)
    placement = placement_for(model, graph, ep)
    traffic = route_traffic(model, placement, config)
    inputs = _draw_inputs(model, config, 512, 32, 0)
    expected = np.zeros((32, 4))
    groups = [(np.arange(32), placement)] if ep is None else zip(placement.groups.numpy(), placement.placements)
    for ranks, group in groups:
        plan = _route_group(model, group, config, inputs, int(ranks[0]))
        index = torch.where(plan.kept, plan.expert_index, torch.full_like(plan.expert_index, -1)).numpy()
        # the group's ranks on their own nodes of 8, numbered from its first node
        counted = node_dedup_traffic(index, plan.token_rank.numpy(), expert_rank=group.expert_to_rank.numpy(),
                                     gpus_per_node=8, world=len(ranks))
        first_node = int(ranks[0]) // 8
        expected[np.ix_(ranks, first_node + np.arange(counted.node_tokens.shape[1]))] = counted.node_tokens
    np.testing.assert_array_equal(traffic.node_copies, expected)
    assert traffic.node_copies.sum() < traffic.send_counts.sum()  # top-4: some tokens share a node


def test_dedup_and_fp8_bytes_over_the_network(graph, model):
    base = StepConfig(capacity_factor=None)
    direct = simulate_config(model, graph, base)
    fp8 = simulate_config(model, graph, replace(base, dispatch_format="fp8"))
    dedup = simulate_config(model, graph, replace(base, algorithm="node_dedup"))
    ratio = bytes_per_token("fp8", 256) / (256 * 2)                              # 264 / 512
    b0, b8, bd = direct.breakdown, fp8.breakdown, dedup.breakdown
    assert b8["inter_node_bytes_per_layer"] == pytest.approx(b0["inter_node_bytes_per_layer"] * ratio, rel=1e-3)
    # fp8 shortens the forward dispatch only; the combine and the gradients keep the model's bytes
    for name in {(r.name, r.direction) for r in direct.trace.phases if r.name.endswith("_a2a")}:
        moved = lambda t: sum(r.bytes for r in t.trace.phases if (r.name, r.direction) == name)
        if name == ("dispatch_a2a", "forward"):
            assert moved(fp8) == pytest.approx(moved(direct) * ratio, rel=1e-3)
        else:
            assert moved(fp8) == moved(direct), name
    # dedup: each token once per other node it has experts on
    traffic = route_traffic(model, placement_for(model, graph), replace(base, algorithm="node_dedup"))
    node = np.arange(32) // 8
    remote = node[:, None] != np.arange(4)[None, :]
    assert bd["inter_node_bytes_per_layer"] == pytest.approx(traffic.node_copies[remote].sum() * 512, rel=1e-3)
    assert bd["inter_node_bytes_per_layer"] < 0.9 * b0["inter_node_bytes_per_layer"]
    assert bd["a2a_s"] < b0["a2a_s"] and b8["a2a_s"] < b0["a2a_s"]


def test_popularity_node_copies_follow_the_routed_ones(graph, model):
    config = StepConfig(algorithm="node_dedup", capacity_factor=None)
    placement = placement_for(model, graph)
    routed = route_traffic(model, placement, replace(config, traffic_model="routed"))
    expected = route_traffic(model, placement, replace(config, traffic_model="popularity"))
    node = np.arange(32) // 8
    remote = node[:, None] != np.arange(4)[None, :]
    # the same sample, counted per rank or as one ratio: equal totals within 2% (sampling noise only)
    assert expected.node_copies[remote].sum() == pytest.approx(routed.node_copies[remote].sum(), rel=0.02)


def test_plan_cli_labels_and_keeps_the_baseline_in_the_model_precision(capsys):
    # the default cluster's software runs fairseq's padded layer, which has no routed tokens to deduplicate
    with pytest.raises(SystemExit) as refused:
        main(["plan", "--algorithm", "deepep", "--dispatch-format", "fp8", "--json", "--max-routed-tokens", "8192"])
    assert refused.value.code == 2 and "--moe-layer grouped" in capsys.readouterr().err
    assert main(["plan", "--algorithm", "deepep", "--dispatch-format", "fp8", "--json", "--max-routed-tokens",
                 "8192", "--moe-layer", "grouped"]) == 0
    out = capsys.readouterr().out
    assert "deepep, fp8 dispatch" in out
    labels = [label for label, _ in plan_options(StepConfig(algorithm="deepep", dispatch_format="fp8"))]
    assert labels[0] == "baseline" and plan_options(StepConfig(dispatch_format="fp8"))[0][1].dispatch_format is None
    assert "yours: topk, deepep, fp8 dispatch" in labels



def test_the_planner_pipelines_the_network_stage_and_the_forwarding(graph, model):
    """The planner's node-deduplicated dispatch and combine run as DeepEP's one kernel streams them: the network
    stage and the NVLink forwarding in PIPELINE_CHUNKS chunks of one stream each (`simulate_all_to_all(...,
    chunks=8, stream=True)`), not one
    after the other (chunks=1, the planner until the twelfth session): the same matrices, a shorter time."""
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.sim.dispatch_formats import PIPELINE_CHUNKS
    from lshsim.sim.moe_step import A2ACache, _dedup_network, _dedup_ratio, _per_node

    config = StepConfig(algorithm="node_dedup", capacity_factor=None)
    traffic = route_traffic(model, placement_for(model, graph), config)
    cache = A2ACache(graph)
    network_role_s = _dedup_network(graph, traffic, cache, config)
    matrix = traffic.send_counts * 512.0                       # 512 bytes a token
    np.fill_diagonal(matrix, 0.0)
    node = np.arange(32) // 8
    for role in ("dispatch", "combine"):
        forward = matrix if role == "dispatch" else matrix.T
        per_node = _per_node(forward, node)
        options = {"node_bytes": np.minimum(np.ceil(_dedup_ratio(traffic, node) * per_node), per_node),
                   "combine": role == "combine"}
        pipelined = simulate_all_to_all(graph, forward, "node_dedup", chunks=PIPELINE_CHUNKS, stream=True,
                                        **options).time_s
        serial = simulate_all_to_all(graph, forward, "node_dedup", chunks=1, **options).time_s
        assert network_role_s(matrix, role) == pytest.approx(pipelined, rel=1e-12)
        assert pipelined < serial, role
    assert len(cache.times) == 2
    assert all(dict(key[-1])["chunks"] == PIPELINE_CHUNKS and dict(key[-1])["stream"] for key in cache.times)
