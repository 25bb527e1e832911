"""A toy router plugin: round-robin by token position (expert = (position + offset) mod E).

One module and one registry entry (`register`): it declares its input (token ids, read only for
their count), its parameters (capacity_factor, plus its own option `offset`), a fixed k = 1 and
its gate cost (no arithmetic, no scores).
"""
from __future__ import annotations

import torch

from lshsim.dispatch.placement import Placement
from lshsim.dispatch.plan import DispatchPlan
from lshsim.dispatch.routers import (GateCost, assign_slots, compute_capacity, register_router,
                                     unregister_router)

NAME = "round_robin"


def route_round_robin(token_ids: torch.Tensor, placement: Placement, *, capacity_factor: float | None = None,
                      offset: int = 0, token_rank: torch.Tensor | None = None) -> DispatchPlan:
    """Token t (in input order) goes to expert (t + offset) mod E with weight 1; capacity as Hash Layers."""
    num_tokens = token_ids.shape[0]
    if token_rank is None:
        token_rank = torch.zeros(num_tokens, dtype=torch.int64)
    expert_index = ((torch.arange(num_tokens) + offset) % placement.num_experts).unsqueeze(1)  # (T, 1)
    tokens_on_rank = int(torch.bincount(token_rank, minlength=placement.world_size).max()) if num_tokens else 0
    capacity = compute_capacity(tokens_on_rank, 1, placement.num_experts, capacity_factor)
    slot, kept, tokens_per_expert = assign_slots(expert_index, token_rank, capacity, placement.num_experts,
                                                 placement.world_size)
    return DispatchPlan(expert_index=expert_index, gate_weight=torch.ones(num_tokens, 1), slot=slot, kept=kept,
                        tokens_per_expert=tokens_per_expert, capacity=capacity, placement=placement,
                        token_rank=token_rank, router_logits=None)


def round_robin_gate_cost(d_model: int, num_experts: int, bytes_per_element: int) -> GateCost:
    """No gate arithmetic; the token position is known without reading the token."""
    return GateCost(0.0, 0.0)


def register():
    """The one registry entry."""
    return register_router(NAME, route_round_robin, "token_ids", description="round-robin by token position",
                           params=("capacity_factor",), fixed_k=1, options={"offset": 0},
                           gate_cost=round_robin_gate_cost)


def unregister():
    unregister_router(NAME)
