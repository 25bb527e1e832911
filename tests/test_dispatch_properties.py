"""Property tests of the dispatch core against slow, obvious references."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lshsim.dispatch import (Placement, RouterConfig, combine, contiguous_placement, dispatch, route,
                             round_robin_placement)
from lshsim.dispatch.reference import buffer_rows
from lshsim.dispatch.synthetic import synthetic_router_inputs


@st.composite
def routing_cases(draw):
    """A random small routing problem: router, k, E, W, tokens per rank, capacity factor, policy."""
    router = draw(st.sampled_from(["topk", "hash", "expert_choice", "locmoe"]))
    world_size = draw(st.sampled_from([1, 2, 4]))
    gpus_per_node = draw(st.sampled_from([g for g in (1, 2, 4) if world_size % g == 0]))
    experts_per_rank = draw(st.integers(1, 3))
    num_experts = world_size * experts_per_rank
    k = 1 if router == "hash" else draw(st.integers(1, min(3, num_experts)))
    tokens_per_rank = draw(st.integers(1, 40))
    capacity_factor = draw(st.sampled_from([None, 0.25, 0.5, 1.0, 1.25, 2.0]))
    drop_policy = draw(st.sampled_from(["position", "score"]))
    seed = draw(st.integers(0, 2**16))
    skew = draw(st.sampled_from([0.0, 2.0]))
    use_round_robin = draw(st.booleans())
    return dict(router=router, world_size=world_size, gpus_per_node=gpus_per_node, num_experts=num_experts,
                k=k, tokens_per_rank=tokens_per_rank, capacity_factor=capacity_factor, drop_policy=drop_policy,
                seed=seed, skew=skew, round_robin=use_round_robin)


def make_plan(case):
    placement_fn = round_robin_placement if case["round_robin"] else contiguous_placement
    placement = placement_fn(case["num_experts"], case["world_size"], case["gpus_per_node"])
    d_model = case["num_experts"] * 2  # GrAP needs d_model divisible by E
    inputs = synthetic_router_inputs(case["tokens_per_rank"], case["world_size"], d_model, case["num_experts"],
                                     seed=case["seed"], skew=case["skew"])
    config = RouterConfig(name=case["router"], k=case["k"], capacity_factor=case["capacity_factor"],
                          drop_policy=case["drop_policy"])
    plan = route(config, placement, logits=inputs.logits, token_ids=inputs.token_ids, hidden=inputs.hidden,
                 token_rank=inputs.token_rank)
    return plan, inputs


@given(routing_cases())
def test_identity_experts_roundtrip(case):
    """combine(dispatch(x)) == x * (sum of the token's kept gate weights) with identity experts."""
    plan, inputs = make_plan(case)
    tokens = inputs.hidden.double()  # (T, d)
    out = combine(dispatch(tokens, plan), plan)  # (T, d)
    kept_weight = (plan.gate_weight.double() * plan.kept).sum(dim=1, keepdim=True)  # (T, 1)
    torch.testing.assert_close(out, tokens * kept_weight, rtol=1e-12, atol=1e-12)


@given(routing_cases())
def test_no_token_lost_or_duplicated(case):
    """Every kept choice lands in exactly one buffer row; every non-empty row holds exactly one."""
    plan, _ = make_plan(case)
    rows_per_expert = plan.world_size * plan.capacity
    marker = torch.arange(1, plan.num_tokens + 1, dtype=torch.float64).unsqueeze(1)  # (T, 1) token id + 1
    buffers = dispatch(marker, plan).squeeze(2)  # (E, W*C)
    seen: dict[tuple[int, int], int] = {}
    for token in range(plan.num_tokens):
        for choice in range(plan.num_choices):
            if plan.kept[token, choice]:
                expert = int(plan.expert_index[token, choice])
                row = int(buffer_rows(plan)[token, choice])
                assert 0 <= row < rows_per_expert
                assert (expert, row) not in seen, "two choices share a buffer row"
                seen[(expert, row)] = token
                assert int(buffers[expert, row]) == token + 1
    assert int((buffers != 0).sum()) == len(seen) == plan.num_kept


@given(routing_cases())
def test_drops_counted_exactly_and_capacity_respected(case):
    """Drops = sum over (rank, expert) buffers of max(0, routed - C); kept per buffer <= C."""
    plan, _ = make_plan(case)
    routed_per_buffer: dict[tuple[int, int], int] = {}
    kept_slots: dict[tuple[int, int], list[int]] = {}
    for token in range(plan.num_tokens):
        rank = int(plan.token_rank[token])
        for choice in range(plan.num_choices):
            expert = int(plan.expert_index[token, choice])
            if expert < 0:
                assert not plan.kept[token, choice]
                continue
            routed_per_buffer[(rank, expert)] = routed_per_buffer.get((rank, expert), 0) + 1
            if plan.kept[token, choice]:
                kept_slots.setdefault((rank, expert), []).append(int(plan.slot[token, choice]))
            else:
                assert int(plan.slot[token, choice]) == -1
    expected_drops = sum(max(0, count - plan.capacity) for count in routed_per_buffer.values())
    assert plan.num_dropped == expected_drops
    for slots in kept_slots.values():
        assert len(slots) <= plan.capacity
        assert sorted(slots) == list(range(len(slots))), "slots are 0..n-1 without gaps or repeats"
    per_expert = torch.zeros(plan.num_experts, dtype=torch.int64)
    for (_, expert), slots in kept_slots.items():
        per_expert[expert] += len(slots)
    assert torch.equal(per_expert, plan.tokens_per_expert)


@given(routing_cases(), st.integers(1, 4096))
def test_traffic_row_sums_equal_bytes_sent(case, bytes_per_token):
    """Row r of the traffic matrix sums to bytes_per_token * (kept choices of tokens on rank r)."""
    plan, _ = make_plan(case)
    traffic = plan.traffic_matrix(bytes_per_token)  # (W, W)
    for rank in range(plan.world_size):
        on_rank = plan.token_rank == rank
        assert int(traffic[rank].sum()) == bytes_per_token * int(plan.kept[on_rank].sum())
    for src in range(plan.world_size):  # and every cell against a loop
        for dst in range(plan.world_size):
            count = 0
            for token in torch.nonzero(plan.token_rank == src).flatten().tolist():
                for choice in range(plan.num_choices):
                    if plan.kept[token, choice] and \
                            int(plan.placement.expert_to_rank[plan.expert_index[token, choice]]) == dst:
                        count += 1
            assert int(traffic[src, dst]) == count * bytes_per_token
    assert plan.local_bytes(bytes_per_token) + plan.remote_bytes(bytes_per_token) == int(traffic.sum())


@given(routing_cases())
def test_same_inputs_bit_identical_plans(case):
    first, _ = make_plan(case)
    second, _ = make_plan(case)
    for name in ("expert_index", "gate_weight", "slot", "kept", "tokens_per_expert", "token_rank"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.capacity == second.capacity


@given(routing_cases())
def test_position_policy_keeps_first_choices_in_order(case):
    """Position policy: in each buffer the kept choices are the first C in choice-major order."""
    if case["router"] not in ("topk", "locmoe"):
        return
    case = dict(case, drop_policy="position")
    plan, _ = make_plan(case)
    order: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for choice in range(plan.num_choices):
        for token in range(plan.num_tokens):
            key = (int(plan.token_rank[token]), int(plan.expert_index[token, choice]))
            order.setdefault(key, []).append((token, choice))
    for members in order.values():
        for position, (token, choice) in enumerate(members):
            assert bool(plan.kept[token, choice]) == (position < plan.capacity)
            if position < plan.capacity:
                assert int(plan.slot[token, choice]) == position


@given(routing_cases())
def test_score_policy_keeps_highest_weights(case):
    """Score policy: in each buffer no dropped choice outweighs a kept one."""
    if case["router"] not in ("topk", "locmoe"):
        return
    plan, _ = make_plan(dict(case, drop_policy="score"))
    for rank in range(plan.world_size):
        for expert in range(plan.num_experts):
            mask = (plan.token_rank.unsqueeze(1) == rank) & (plan.expert_index == expert)  # (T, k)
            kept_w = plan.gate_weight[mask & plan.kept]
            dropped_w = plan.gate_weight[mask & ~plan.kept]
            if kept_w.numel() and dropped_w.numel():
                assert float(kept_w.min()) >= float(dropped_w.max())


def test_capacity_formula():
    """C = ceil(capacity_factor * T * k / E) per (rank, expert)."""
    placement = contiguous_placement(16, 4, 2)
    inputs = synthetic_router_inputs(1000, 4, 32, 16, seed=1)
    for capacity_factor, k in ((1.0, 2), (1.25, 2), (0.3, 1), (2.0, 1)):
        plan = route(RouterConfig("topk", k=k, capacity_factor=capacity_factor), placement,
                     logits=inputs.logits, token_rank=inputs.token_rank)
        assert plan.capacity == math.ceil(capacity_factor * 1000 * k / 16)


def test_explicit_uneven_placement_routes():
    """Experts not divisible across ranks work when an explicit placement says where they live."""
    placement = Placement.from_lists([0, 0, 1, 1, 2, 3], [0, 0, 1, 1])
    inputs = synthetic_router_inputs(50, 4, 12, 6, seed=3)
    plan = route(RouterConfig("topk", k=2, capacity_factor=None), placement, logits=inputs.logits,
                 token_rank=inputs.token_rank)
    assert plan.num_dropped == 0
    assert int(plan.send_counts().sum()) == 4 * 50 * 2


def test_clustered_tokens_and_popularity_have_one_implementation():
    """lsh.clustered_tokens is unit_centres + tokens_around on one generator; the popularity skew of
    the synthetic logits is dirichlet_popularity."""
    from lshsim.dispatch.lsh import clustered_tokens
    from lshsim.dispatch.synthetic import dirichlet_popularity, synthetic_router_inputs, tokens_around, unit_centres

    generator = torch.Generator().manual_seed(5)
    by_parts = tokens_around(unit_centres(3, 8, generator), 20, 0.1, generator)
    assert torch.equal(clustered_tokens(20, 8, num_clusters=3, noise=0.1, seed=5), by_parts)
    plain = synthetic_router_inputs(4, 2, 8, 4, seed=2)
    skewed = synthetic_router_inputs(4, 2, 8, 4, seed=2, skew=1.5)
    generator = torch.Generator().manual_seed(2)
    torch.randn(8, 8, generator=generator), torch.randn(8, 4, generator=generator)   # hidden, gate: as drawn there
    popularity = dirichlet_popularity(4, generator)
    assert torch.allclose(skewed.logits - plain.logits, 1.5 * popularity.log().expand(8, 4), atol=1e-6)


@pytest.mark.parametrize("experts, world, gpus", [(8, 4, 2), (64, 16, 8), (12, 3, 3), (4, 4, 1), (32, 8, 4)])
def test_placements_by_their_rule(experts, world, gpus):
    """round_robin: expert e on rank e mod W; contiguous: on rank floor(e W / E); rank r on node r // G
    (written out per expert, not through the placement's own helpers)."""
    robin = round_robin_placement(experts, world, gpus)
    block = contiguous_placement(experts, world, gpus)
    assert robin.expert_to_rank.tolist() == [e % world for e in range(experts)]
    assert block.expert_to_rank.tolist() == [e * world // experts for e in range(experts)]
    for placement in (robin, block):
        assert placement.rank_to_node.tolist() == [r // gpus for r in range(world)]
        assert placement.expert_to_node.tolist() == [(placement.expert_to_rank[e].item()) // gpus
                                                     for e in range(experts)]
