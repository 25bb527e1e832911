"""DispatchPlan: which token goes to which expert slot, and what that costs on the wire.

A plan covers T tokens that may live on several ranks (`token_rank`), each token with up to k
choices. It is produced by a router (`lshsim.dispatch.routers`) and consumed unchanged by the
simulator (traffic matrix) and the executor (all-to-all splits, buffer slots).

Buffer layout (GShard/Tutel): every source rank owns, for every expert, a buffer of `capacity`
slots. Choice (t, j) that is kept sits in slot `slot[t, j]` of buffer (token_rank[t],
expert_index[t, j]). The single-process reference (`lshsim.dispatch.reference`) lays the
buffers of all source ranks one after another: row token_rank[t] * capacity + slot[t, j] of expert
expert_index[t, j].

Padding: a router that gives tokens a variable number of choices (expert choice) pads with
expert_index = -1, gate_weight = 0, kept = False. Padding is not a drop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lshsim.checks import non_negative_int
from lshsim.dispatch.placement import Placement

__all__ = ["DispatchPlan"]


@dataclass(frozen=True)
class DispatchPlan:
    """The routing decision for T tokens with k choices each.

    Fields (T tokens, k choices, E experts, W ranks):
        expert_index:      (T, k) int64, chosen expert, -1 for padding.
        gate_weight:       (T, k) float, combine weight of the choice (0 where padding or dropped
                           is NOT enforced: dropped choices keep their weight so that callers can
                           see what was lost; combine multiplies by `kept`).
        slot:              (T, k) int64, slot in the (source rank, expert) buffer, -1 unless kept.
        kept:              (T, k) bool, the choice fits under capacity and is sent.
        tokens_per_expert: (E,) int64, kept choices per expert, summed over source ranks.
        capacity:          int, slots per (source rank, expert) buffer.
        placement:         Placement, expert -> rank -> node.
        token_rank:        (T,) int64, rank on which token t lives (its source rank).
        router_logits:     (T, E) float or None, the router's logits; `scores` = softmax over
                           experts (what the auxiliary losses need). None for routers without a
                           gate (hash). Kept as logits so that the (T, E) softmax is computed only
                           when a loss asks for it.
    """

    expert_index: torch.Tensor
    gate_weight: torch.Tensor
    slot: torch.Tensor
    kept: torch.Tensor
    tokens_per_expert: torch.Tensor
    capacity: int
    placement: Placement
    token_rank: torch.Tensor
    router_logits: torch.Tensor | None = None

    def __post_init__(self) -> None:
        num_tokens, num_choices = self.expert_index.shape
        for name in ("gate_weight", "slot", "kept"):
            shape = tuple(getattr(self, name).shape)
            if shape != (num_tokens, num_choices):
                raise ValueError(f"{name} has shape {shape}, expected {(num_tokens, num_choices)}")
        if tuple(self.token_rank.shape) != (num_tokens,):
            raise ValueError(f"token_rank has shape {tuple(self.token_rank.shape)}, expected ({num_tokens},)")
        if tuple(self.tokens_per_expert.shape) != (self.placement.num_experts,):
            raise ValueError(f"tokens_per_expert has shape {tuple(self.tokens_per_expert.shape)}, "
                             f"expected ({self.placement.num_experts},)")
        if self.capacity < 0:
            raise ValueError(f"capacity={self.capacity} must be >= 0")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.expert_index.shape[0]

    @property
    def num_choices(self) -> int:
        return self.expert_index.shape[1]

    @property
    def num_experts(self) -> int:
        return self.placement.num_experts

    @property
    def world_size(self) -> int:
        return self.placement.world_size

    @property
    def scores(self) -> torch.Tensor | None:
        """(T, E) float32 router probabilities softmax(router_logits), None without a gate."""
        if self.router_logits is None:
            return None
        return torch.softmax(self.router_logits.float(), dim=1)

    @property
    def routed(self) -> torch.Tensor:
        """(T, k) bool, the choice names a real expert (not padding)."""
        return self.expert_index >= 0

    @property
    def num_dropped(self) -> int:
        """Choices that named an expert but did not fit under capacity."""
        return int((self.routed & ~self.kept).sum())

    @property
    def num_kept(self) -> int:
        return int(self.kept.sum())

    def dropped_per_expert(self) -> torch.Tensor:
        """(E,) int64, choices over capacity per expert."""
        dropped = self.routed & ~self.kept  # (T, k)
        return torch.bincount(self.expert_index[dropped], minlength=self.num_experts)

    def destination_rank(self) -> torch.Tensor:
        """(T, k) int64 rank of the chosen expert, -1 for padding."""
        safe_expert = self.expert_index.clamp(min=0)  # (T, k)
        return torch.where(self.routed, self.placement.expert_to_rank[safe_expert], -1)

    # ---- traffic -----------------------------------------------------------------------------
    def send_counts(self) -> torch.Tensor:
        """(W, W) int64: kept token copies sent from rank src (row) to rank dst (column).

        A token with two choices on the same destination rank is counted twice, as GShard and
        Tutel send one copy per (token, expert). The diagonal is traffic that stays on its rank.
        """
        world_size = self.world_size
        src = self.token_rank.unsqueeze(1).expand_as(self.expert_index)[self.kept]  # (N_kept,)
        dst = self.destination_rank()[self.kept]  # (N_kept,)
        flat = torch.bincount(src * world_size + dst, minlength=world_size * world_size)
        return flat.reshape(world_size, world_size)

    def traffic_matrix(self, bytes_per_token: int) -> torch.Tensor:
        """(W, W) int64 bytes from rank src (row) to rank dst (column) in one dispatch all-to-all.

        The diagonal is local traffic (no network); `local_bytes` and `remote_bytes` split it out.
        The combine all-to-all moves the transpose.
        """
        non_negative_int("bytes_per_token", bytes_per_token)
        return self.send_counts() * bytes_per_token

    def local_bytes(self, bytes_per_token: int) -> int:
        """Bytes that stay on their own rank (the traffic matrix's diagonal)."""
        return int(self.traffic_matrix(bytes_per_token).diagonal().sum())

    def remote_bytes(self, bytes_per_token: int) -> int:
        """Bytes that cross between ranks (off-diagonal), intra- and inter-node together."""
        traffic = self.traffic_matrix(bytes_per_token)
        return int(traffic.sum() - traffic.diagonal().sum())

    def inter_node_bytes(self, bytes_per_token: int) -> int:
        """Bytes whose source and destination ranks are on different nodes."""
        traffic = self.traffic_matrix(bytes_per_token)  # (W, W)
        node = self.placement.rank_to_node  # (W,)
        crosses = node.unsqueeze(1) != node.unsqueeze(0)  # (W, W)
        return int(traffic[crosses].sum())
