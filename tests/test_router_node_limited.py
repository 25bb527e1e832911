"""The node-limited router (DeepSeek-V3): at most M nodes per token, top-k when M = all nodes, and
its node choice against a brute-force reference."""
import itertools

import pytest
import torch

from lshsim.dispatch import RouterConfig, contiguous_placement, route
from lshsim.dispatch.placement import Placement
from lshsim.dispatch.routers import node_limited_mask, route_node_limited, route_topk


def _logits(tokens, experts, seed):
    return torch.randn(tokens, experts, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("max_nodes, k", [(1, 2), (2, 4), (3, 8), (4, 8)])
def test_choices_span_at_most_max_nodes(max_nodes, k):
    placement = contiguous_placement(64, 16, gpus_per_node=2)  # 8 nodes of 8 experts
    logits = _logits(2048, 64, seed=max_nodes)
    plan = route(RouterConfig("node_limited", k=k, capacity_factor=None, options={"max_nodes": max_nodes}),
                 placement, logits=logits)
    nodes = placement.expert_to_node[plan.expert_index]  # (T, k)
    spans = torch.tensor([len(set(row.tolist())) for row in nodes])
    assert int(spans.max()) <= max_nodes
    assert int(spans.max()) == max_nodes  # the limit binds on random logits (8 of 64 experts on 8 nodes)
    assert bool(plan.kept.all())  # dropless
    # each token's choices are distinct experts, best first within the allowed set
    assert all(len(set(row.tolist())) == k for row in plan.expert_index)


@pytest.mark.parametrize("capacity_factor, drop_policy", [(None, "position"), (1.0, "position"), (1.25, "score")])
def test_equals_topk_when_every_node_is_allowed(capacity_factor, drop_policy):
    placement = contiguous_placement(32, 8, gpus_per_node=2)  # 4 nodes
    logits = _logits(1024, 32, seed=3)
    token_rank = torch.arange(1024) % 8
    limited = route_node_limited(logits, placement, k=6, max_nodes=4, capacity_factor=capacity_factor,
                                 drop_policy=drop_policy, token_rank=token_rank)
    plain = route_topk(logits, placement, k=6, capacity_factor=capacity_factor, drop_policy=drop_policy,
                       token_rank=token_rank)
    for name in ("expert_index", "gate_weight", "slot", "kept", "tokens_per_expert"):
        assert torch.equal(getattr(limited, name), getattr(plain, name)), name
    assert limited.capacity == plain.capacity


def _reference_nodes(scores, expert_node, num_nodes, max_nodes, per_node):
    """Brute force: every M-subset of nodes, scored by the sum of each node's top `per_node` scores;
    the best subset, ties to the lexicographically smallest (= the lower node indices)."""
    node_score = []
    for node in range(num_nodes):
        mine = sorted((float(scores[e]) for e in range(len(expert_node)) if expert_node[e] == node), reverse=True)
        node_score.append(sum(mine[:per_node]))
    best = max(itertools.combinations(range(num_nodes), max_nodes),
               key=lambda subset: (sum(node_score[n] for n in subset), [-n for n in subset]))
    return set(best)


def test_node_choice_matches_brute_force_on_an_uneven_placement():
    # 5 nodes holding 3, 1, 4, 2, 2 experts (placement by explicit lists)
    expert_to_rank = [0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 4]
    placement = Placement.from_lists(expert_to_rank, [0, 1, 2, 3, 4])
    expert_node = placement.expert_to_node.tolist()
    scores = torch.softmax(_logits(200, 12, seed=7), dim=1)
    for max_nodes, per_node in [(2, 1), (2, 2), (3, 2), (1, 3)]:
        mask = node_limited_mask(scores, placement, max_nodes, k=4, scores_per_node=per_node)
        for t in range(scores.shape[0]):
            want = _reference_nodes(scores[t], expert_node, 5, max_nodes, per_node)
            got = {expert_node[e] for e in range(12) if bool(mask[t, e])}
            assert got == want, (t, max_nodes, per_node)


def test_topk_inside_the_chosen_nodes():
    placement = contiguous_placement(16, 4, gpus_per_node=1)  # 4 nodes of 4 experts
    logits = _logits(300, 16, seed=11)
    plan = route_node_limited(logits, placement, k=3, max_nodes=2, capacity_factor=None)
    mask = node_limited_mask(torch.softmax(logits, 1), placement, 2, 3)
    allowed = torch.where(mask, logits, torch.full_like(logits, float("-inf")))
    assert torch.equal(plan.expert_index, torch.topk(allowed, 3, dim=1).indices)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"max_nodes": 0}, "max_nodes"),
    ({"max_nodes": 1, "k": 5}, "k=5 exceeds the 4 experts"),
    ({"scores_per_node": -1}, "scores_per_node"),
])
def test_bad_parameters_are_refused_by_name(kwargs, fragment):
    placement = contiguous_placement(16, 4, gpus_per_node=1)
    with pytest.raises(ValueError, match=fragment):
        route_node_limited(_logits(8, 16, 0), placement, **{"k": 2, **kwargs})


def test_registered_with_its_options():
    config = RouterConfig("node_limited", k=8, capacity_factor=None)
    assert dict(config.options) == {"max_nodes": 4, "scores_per_node": 0}
    with pytest.raises(ValueError, match="not an option"):
        RouterConfig("node_limited", options={"groups": 2})


@pytest.mark.parametrize("max_nodes, k, per_node", [(1, 4, 0), (2, 8, 0), (3, 8, 1), (4, 8, 3), (2, 6, 5)])
def test_contiguous_fast_path_equals_the_mask_path(max_nodes, k, per_node):
    # contiguous placement (the fast path) against the general mask + top-k on the same logits
    placement = contiguous_placement(64, 16, gpus_per_node=2)  # 8 nodes of 8 experts, node-major
    logits = _logits(3000, 64, seed=20 + max_nodes)
    plan = route_node_limited(logits, placement, k=k, max_nodes=max_nodes, capacity_factor=None,
                              scores_per_node=per_node)
    mask = node_limited_mask(torch.softmax(logits, 1), placement, max_nodes, k, scores_per_node=per_node or None)
    allowed = torch.where(mask, logits, torch.full_like(logits, float("-inf")))
    assert torch.equal(plan.expert_index, torch.topk(allowed, k, dim=1).indices)


def test_uneven_placement_routes_through_the_mask():
    placement = Placement.from_lists([0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 4], [0, 1, 2, 3, 4])
    plan = route_node_limited(_logits(500, 12, seed=5), placement, k=3, max_nodes=2, capacity_factor=None)
    nodes = placement.expert_to_node[plan.expert_index]
    assert max(len(set(row.tolist())) for row in nodes) <= 2
