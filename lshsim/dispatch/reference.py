"""Single-process reference dispatch and combine (the dense, obvious version).

`dispatch` copies tokens into per-expert buffers (E, W*C, d): row token_rank*C + slot of the
token's expert. `combine` gathers expert outputs back to tokens, weighted by gate weights, and
sums over a token's kept choices. Dropped and padding choices contribute nothing.

With identity experts, combine(dispatch(x)) = x * (sum of the token's kept gate weights).
"""
from __future__ import annotations

import torch

from lshsim.dispatch.plan import DispatchPlan

__all__ = ["dispatch", "combine", "buffer_rows"]


def buffer_rows(plan: DispatchPlan) -> torch.Tensor:
    """(T, k) int64 row of each kept choice in its expert's (W*C)-row buffer, -1 elsewhere."""
    rows = plan.token_rank.unsqueeze(1) * plan.capacity + plan.slot  # (T, k)
    return torch.where(plan.kept, rows, torch.full_like(rows, -1))


def dispatch(tokens: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
    """Tokens (T, d) -> expert buffers (E, W*C, d); empty slots are zero."""
    if tokens.ndim != 2 or tokens.shape[0] != plan.num_tokens:
        raise ValueError(f"tokens have shape {tuple(tokens.shape)}, expected ({plan.num_tokens}, d_model)")
    d_model = tokens.shape[1]
    rows_per_expert = plan.world_size * plan.capacity
    buffers = tokens.new_zeros(plan.num_experts * rows_per_expert, d_model)  # (E*W*C, d)
    token_of_choice = torch.arange(plan.num_tokens, device=tokens.device).unsqueeze(1).expand_as(plan.kept)
    flat_row = plan.expert_index * rows_per_expert + buffer_rows(plan)  # (T, k)
    buffers = buffers.index_copy(0, flat_row[plan.kept], tokens[token_of_choice[plan.kept]])
    return buffers.reshape(plan.num_experts, rows_per_expert, d_model)


def combine(expert_out: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
    """Expert outputs (E, W*C, d) -> tokens (T, d): sum over kept choices of gate weight * output."""
    rows_per_expert = plan.world_size * plan.capacity
    if expert_out.ndim != 3 or expert_out.shape[:2] != (plan.num_experts, rows_per_expert):
        raise ValueError(f"expert_out has shape {tuple(expert_out.shape)}, "
                         f"expected ({plan.num_experts}, {rows_per_expert}, d_model)")
    d_model = expert_out.shape[2]
    flat_out = expert_out.reshape(-1, d_model)  # (E*W*C, d)
    flat_row = (plan.expert_index * rows_per_expert + buffer_rows(plan)).clamp(min=0)  # (T, k)
    gathered = flat_out[flat_row.reshape(-1)].reshape(plan.num_tokens, plan.num_choices, d_model)  # (T, k, d)
    weight = (plan.gate_weight * plan.kept).to(expert_out.dtype).unsqueeze(2)  # (T, k, 1)
    return (gathered * weight).sum(dim=1)  # (T, d)
