"""`lshsim.dispatch.summary.route_summary`: the plain-data view of one routing."""
from __future__ import annotations

import pytest

from lshsim.dispatch import RouterConfig, make_placement, route
from lshsim.dispatch.summary import route_summary
from lshsim.dispatch.synthetic import synthetic_router_inputs


@pytest.mark.parametrize("router, k, capacity_factor", [("topk", 2, 1.0), ("hash", 1, None), ("locmoe", 1, 1.25)])
def test_summary_is_consistent_with_the_plan(router, k, capacity_factor):
    world, per_node, experts, tokens, bytes_per_token = 4, 2, 8, 64, 16
    config = RouterConfig(router, k=k, capacity_factor=capacity_factor)
    placement = make_placement("round_robin", experts, world, per_node)
    inputs = synthetic_router_inputs(tokens, world, 8, experts, seed=3, skew=1.0)
    plan = route(config, placement, logits=inputs.logits, token_ids=inputs.token_ids, hidden=inputs.hidden,
                 token_rank=inputs.token_rank)
    s = route_summary(plan, placement, config, bytes_per_token)
    assert (s["router"], s["k"], s["experts"], s["world"], s["gpus_per_node"], s["tokens_per_rank"]) == \
        (router, k, experts, world, per_node, tokens)
    assert s["routed"] == world * tokens * k and s["kept"] + s["dropped"] == s["routed"]
    assert s["drop_fraction"] == pytest.approx(s["dropped"] / s["routed"])
    traffic = s["traffic_bytes"]
    assert sum(map(sum, traffic)) == s["kept"] * bytes_per_token == s["local_bytes"] + s["remote_bytes"]
    assert sum(traffic[r][r] for r in range(world)) == s["local_bytes"]
    assert s["inter_node_bytes"] == sum(traffic[a][b] for a in range(world) for b in range(world)
                                        if a // per_node != b // per_node)
    table = s["experts_table"]
    assert [row["rank"] for row in table] == [e % world for e in range(experts)]
    assert sum(row["kept"] for row in table) == s["kept"] and sum(row["dropped"] for row in table) == s["dropped"]
    assert all(row["routed"] == row["kept"] + row["dropped"] for row in table)
