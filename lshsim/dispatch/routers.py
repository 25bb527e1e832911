"""Routers: pure functions from logits (or token ids, or hidden states) to a DispatchPlan.

Registry (`ROUTERS`: name -> `RouterSpec`; `route(config, placement, ...)` looks the name up and
calls the spec's function, so a router added with `register_router` runs like a built-in one).
Contract of a router: `fn(inputs, placement, *, token_rank, **parameters) -> DispatchPlan`, where
`inputs` is the tensor its spec declares (logits, token ids or hidden states), `parameters` are
exactly the RouterConfig fields it declares plus its own options, and the returned plan follows
`lshsim.dispatch.plan`. The spec also declares the gate's per-token cost for the step simulator
(`gate_cost`) and, for a router with a fixed number of choices, that k (`effective_k`,
`validate_router_params`).

==============  ==========  ==============================================================
name            input       rule
==============  ==========  ==============================================================
topk            logits      top-k with capacity; k=1 is Switch, k=2 is GShard
hash            token_ids   expert = splitmix64(token id) mod E; k = 1, no gate (Hash Layers)
expert_choice   logits      every expert takes its top-C tokens (Zhou et al. 2022)
locmoe          hidden      GrAP gate + preference for experts on the token's own node (LocMoE)
node_limited    logits      top-k within the token's best M nodes (DeepSeek-V3's node-limited
                            routing; option max_nodes = M)
==============  ==========  ==============================================================

Conventions shared by all routers:

1. Scores are `softmax(logits)` over all E experts (float32). Gate weights are the chosen
   experts' scores; for k > 1 they are renormalised to sum to 1 over the k choices (GShard);
   k = 1 keeps the raw probability (Switch).
2. Capacity C = ceil(capacity_factor * T_r * k / E) slots per (source rank, expert), T_r the
   largest number of tokens on one rank; `capacity_factor=None` means no limit (C = T_r).
3. Overflow: `drop_policy="position"` keeps all first choices before any second choice, and
   within a choice earlier tokens first (GShard); `drop_policy="score"` keeps the choices with
   the highest gate score first (batch prioritised routing), ties by position.
4. Indices and slots are computed without gradients; gate weights and scores keep theirs.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch

from lshsim.checks import CAPACITY_FACTOR_MAX, positive_int
from lshsim.dispatch.placement import Placement
from lshsim.dispatch.plan import DispatchPlan

__all__ = [
    "RouterConfig", "ROUTERS", "RouterSpec", "route", "get_router", "register_router", "unregister_router",
    "effective_k", "validate_router_params", "gate_cost", "GateCost", "linear_gate_cost", "grap_gate_cost",
    "hash_gate_cost", "CONFIG_PARAMETERS", "INPUT_KINDS",
    "route_topk", "route_hash", "route_expert_choice", "route_locmoe", "route_node_limited", "node_limited_mask",
    "route_topk_collapsed", "compute_capacity", "assign_slots", "count_values", "topk_gate_weight", "locmoe_selection", "route_on_rank", "SYNC_FREE_ROUTERS", "grap_weights", "grap_scores", "hash_experts",
    "aux_loss", "locality_loss", "DROP_POLICIES",
]

DROP_POLICIES = ("position", "score")


# ---- validation helpers ----------------------------------------------------------------------
def _check_capacity_factor(capacity_factor: float | None) -> None:
    if capacity_factor is None:
        return
    if isinstance(capacity_factor, bool) or not isinstance(capacity_factor, (int, float)) \
            or not math.isfinite(capacity_factor) or capacity_factor <= 0:
        raise ValueError(f"capacity_factor={capacity_factor!r} must be a finite number > 0 (or None for no limit)")
    if capacity_factor > CAPACITY_FACTOR_MAX:   # 1e30 overflowed the routers' int64 slots (a traceback)
        raise ValueError(f"capacity_factor={capacity_factor!r} must be <= {CAPACITY_FACTOR_MAX:g} (a factor above "
                         f"E / k already drops nothing; or None for no limit)")


def _check_drop_policy(drop_policy: str) -> None:
    if drop_policy not in DROP_POLICIES:
        raise ValueError(f"drop_policy={drop_policy!r} must be one of {DROP_POLICIES}")


def _token_rank_or_zero(token_rank: torch.Tensor | None, num_tokens: int, placement: Placement,
                        device: torch.device) -> torch.Tensor:
    if token_rank is None:
        return torch.zeros(num_tokens, dtype=torch.int64, device=device)
    if tuple(token_rank.shape) != (num_tokens,):
        raise ValueError(f"token_rank has shape {tuple(token_rank.shape)}, expected ({num_tokens},) to match the inputs")
    if token_rank.dtype != torch.int64:
        raise ValueError(f"token_rank must be int64, got {token_rank.dtype}")
    if num_tokens and (int(token_rank.min()) < 0 or int(token_rank.max()) >= placement.world_size):
        raise ValueError(f"token_rank holds ranks outside [0, world_size={placement.world_size})")
    return token_rank


def _check_logits(logits: torch.Tensor, placement: Placement) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (tokens, experts), got shape {tuple(logits.shape)}")
    if logits.shape[1] != placement.num_experts:
        raise ValueError(f"logits have {logits.shape[1]} experts but the placement has {placement.num_experts}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if logits.numel() and not _all_finite(logits):
        bad = int((~torch.isfinite(logits)).sum())
        raise ValueError(f"logits hold {bad} non-finite values (NaN or inf)")


def _all_finite(values: torch.Tensor) -> bool:
    """True when no entry is NaN or +-inf: one min/max pass (min and max propagate NaN),
    about 10x faster than `isfinite(values).all()` on large CPU tensors."""
    low, high = torch.aminmax(values.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _check_k(k: int, num_experts: int) -> None:
    positive_int("k", k)
    if k > num_experts:
        raise ValueError(f"k={k} exceeds the number of experts E={num_experts}")


def _max_tokens_per_rank(token_rank: torch.Tensor, world_size: int) -> int:
    if token_rank.numel() == 0:
        return 0
    return int(torch.bincount(token_rank, minlength=world_size).max())


def compute_capacity(tokens_per_rank: int, k: int, num_experts: int, capacity_factor: float | None) -> int:
    """Slots per (source rank, expert): C = ceil(capacity_factor * T_r * k / E).

    >>> compute_capacity(4096, 2, 16, 1.0)
    512
    >>> compute_capacity(10, 1, 4, 1.25)
    4
    >>> compute_capacity(10, 2, 4, None)  # no limit: one rank can send each token once per expert
    10
    """
    _check_capacity_factor(capacity_factor)
    if capacity_factor is None:
        return tokens_per_rank
    # round before ceil so that 1.25 * 4096 * 2 / 16 is exactly 640, not 640.0000000001 -> 641
    return int(math.ceil(round(capacity_factor * tokens_per_rank * k / num_experts, 9)))


# ---- slot assignment (shared by all capacity routers) ----------------------------------------
def count_values(values: torch.Tensor, size: int) -> torch.Tensor:
    """(size,) int64 occurrences of each value in [0, size): `torch.bincount` without its host
    synchronisation (on CUDA bincount reads the maximum back to size its output; this adds ones
    into a buffer of known size, exact for integers).

    >>> count_values(torch.tensor([0, 2, 2, 3]), 5).tolist()
    [1, 0, 2, 1, 0]
    """
    values = values.long()
    return torch.zeros(size, dtype=torch.int64, device=values.device).index_add_(
        0, values, torch.ones_like(values))


def assign_slots(expert_index: torch.Tensor, token_rank: torch.Tensor, capacity: int, num_experts: int,
                 world_size: int, priority_score: torch.Tensor | None = None, *,
                 score_nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Give every routed choice a slot in its (source rank, expert) buffer; drop past capacity.

    1. Flatten the (T, k) choices choice-major: all first choices, then all second choices, ...
    2. If `priority_score` is given, order by it, descending (stable, so ties keep position order).
    3. Stable-sort by buffer key (source rank * E + expert): inside each buffer the order of step
       1-2 survives, and a choice's position is its index minus the buffer's start.
    4. Keep the first `capacity` positions of every buffer.

    Returns slot (T, k) int64 (-1 unless kept), kept (T, k) bool, tokens_per_expert (E,) int64.
    No host synchronisation when `score_nonnegative` is set or no priority score is given (the
    routers' gate weights are probabilities, so they pass it): the executor's CUDA path relies on it.
    """
    num_tokens, num_choices = expert_index.shape
    with torch.no_grad():
        flat_expert = expert_index.t().reshape(-1)  # (k*T,) choice-major
        flat_rank = token_rank.repeat(num_choices)  # (k*T,)
        routed = flat_expert >= 0  # (k*T,)
        # padding goes to an extra buffer past the real ones so that it never takes a slot
        key = torch.where(routed, flat_rank * num_experts + flat_expert,
                          torch.full_like(flat_expert, world_size * num_experts))  # (k*T,)
        if world_size * num_experts < 2**31 - 1:
            key = key.to(torch.int32)  # speed trick: an int32 sort is about 2x faster than int64
        if priority_score is not None:
            flat_score = priority_score.detach().t().reshape(-1).float().contiguous()  # (k*T,)
            if score_nonnegative or bool((flat_score >= 0).all()):
                # Speed trick: the IEEE-754 bits of a non-negative float32, read as an integer,
                # order like the float, so (buffer, -score) packs into one int64 key and one stable
                # sort replaces a float sort followed by an integer sort. Exact, ties keep position.
                score_bits = flat_score.view(torch.int32).to(torch.int64)  # (k*T,) in [0, 2^31)
                composite = key.to(torch.int64) * (1 << 31) + ((1 << 31) - 1 - score_bits)
                order = torch.sort(composite, stable=True).indices  # (k*T,)
            else:
                by_score = torch.sort(-flat_score, stable=True).indices
                order = by_score[torch.sort(key[by_score], stable=True).indices]  # (k*T,)
        else:
            order = torch.sort(key, stable=True).indices  # (k*T,)
        sorted_key = key[order]  # (k*T,)
        counts = count_values(key, world_size * num_experts + 1)  # (W*E+1,)
        starts = torch.cumsum(counts, 0) - counts  # (W*E+1,)
        position = torch.empty(key.shape, dtype=torch.int64, device=key.device)
        position[order] = torch.arange(key.numel(), device=key.device) - starts[sorted_key.long()]
        kept_flat = routed & (position < capacity)  # (k*T,)
        slot_flat = torch.where(kept_flat, position, torch.full_like(position, -1))
        slot = slot_flat.reshape(num_choices, num_tokens).t().contiguous()  # (T, k)
        kept = kept_flat.reshape(num_choices, num_tokens).t().contiguous()  # (T, k)
        tokens_per_expert = count_values(torch.where(kept_flat, flat_expert, num_experts), num_experts + 1)[:num_experts]
    return slot, kept, tokens_per_expert


def _top_indices(selection: torch.Tensor, k: int) -> torch.Tensor:
    """(T, k) indices of the k largest entries per row, largest first.

    Speed trick: for k <= 2, one or two `max` passes beat `torch.topk` by about 1.5x on the CPU.
    Ties resolve to the lowest index in both paths (`max` and `topk` agree on that).
    """
    if k == 1:
        return selection.argmax(dim=1, keepdim=True)  # (T, 1)
    if k == 2:
        first = selection.argmax(dim=1, keepdim=True)  # (T, 1)
        second = selection.scatter(1, first, float("-inf")).argmax(dim=1, keepdim=True)  # (T, 1)
        return torch.cat([first, second], dim=1)  # (T, 2)
    return torch.topk(selection, k, dim=1, sorted=True).indices  # (T, k)


def topk_gate_weight(router_logits: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """(T, k) float32 gate weights of the chosen experts (convention 1 above), differentiable in
    the logits: k = 1, p = exp(l_e - logsumexp(l)); k > 1, a softmax over the k chosen logits.

    >>> topk_gate_weight(torch.tensor([[0.0, 0.0]]), torch.tensor([[1]])).tolist()
    [[0.5]]
    """
    chosen_logits = router_logits.float().gather(1, expert_index)  # (T, k)
    if expert_index.shape[1] == 1:
        return torch.exp(chosen_logits - torch.logsumexp(router_logits.float(), dim=1, keepdim=True))
    return torch.softmax(chosen_logits, dim=1)  # (T, k)


def _topk_plan(router_logits: torch.Tensor, selection: torch.Tensor | None, placement: Placement, k: int,
               capacity_factor: float | None, drop_policy: str, token_rank: torch.Tensor,
               max_tokens_per_rank: int | None = None, expert_index: torch.Tensor | None = None) -> DispatchPlan:
    """Top-k of `selection` (T, E) (or the given (T, k) `expert_index`, best first); gate weights
    from softmax(router_logits); slots under capacity.

    Gate weights without the full (T, E) softmax: for k = 1, p = exp(l_e - logsumexp(l)); for k > 1
    the renormalised weights are a softmax over the k chosen logits alone (the partition function
    cancels).
    """
    if expert_index is None:
        with torch.no_grad():
            expert_index = _top_indices(selection, k)  # (T, k)
    gate_weight = topk_gate_weight(router_logits, expert_index)  # (T, k), keeps grad
    if max_tokens_per_rank is None:
        max_tokens_per_rank = _max_tokens_per_rank(token_rank, placement.world_size)
    capacity = compute_capacity(max_tokens_per_rank, k, placement.num_experts, capacity_factor)
    slot, kept, tokens_per_expert = assign_slots(
        expert_index, token_rank, capacity, placement.num_experts, placement.world_size,
        priority_score=gate_weight if drop_policy == "score" else None, score_nonnegative=True)
    return DispatchPlan(expert_index=expert_index, gate_weight=gate_weight, slot=slot, kept=kept,
                        tokens_per_expert=tokens_per_expert, capacity=capacity, placement=placement,
                        token_rank=token_rank, router_logits=router_logits)


# ---- routers ---------------------------------------------------------------------------------
def route_topk(logits: torch.Tensor, placement: Placement, *, k: int = 2, capacity_factor: float | None = 1.25,
               drop_policy: str = "position", token_rank: torch.Tensor | None = None) -> DispatchPlan:
    """Top-k routing with capacity: k=1 is Switch (Fedus et al. 2021), k=2 GShard (Lepikhin et al. 2020).

    logits: (T, E) gate logits. token_rank: (T,) source rank of each token (default: all on rank 0).
    """
    _check_logits(logits, placement)
    _check_k(k, placement.num_experts)
    _check_capacity_factor(capacity_factor)
    _check_drop_policy(drop_policy)
    token_rank = _token_rank_or_zero(token_rank, logits.shape[0], placement, logits.device)
    return _topk_plan(logits, logits.detach(), placement, k, capacity_factor, drop_policy, token_rank)


def route_topk_collapsed(logits: torch.Tensor, placement: Placement, *, k: int = 1,
                         capacity_factor: float | None = 1.25, drop_policy: str = "position",
                         token_rank: torch.Tensor | None = None, active_experts: int = 0) -> DispatchPlan:
    """Top-k routing whose learned gate has collapsed onto the experts 0 .. active_experts - 1: the
    others get no token (0 = every expert: `route_topk`). The imbalance a Switch gate can fall into,
    as LocMoE reports of its Switch baseline on 64 NPUs (Li et al. 2024, Sec. 4.2 and Fig. 12: almost
    no token routed to experts 9 to 15 of 16). Gate weights are those of the full logits.

    >>> from lshsim.dispatch.placement import contiguous_placement
    >>> plan = route_topk_collapsed(torch.randn(64, 4), contiguous_placement(4, 2, 2), k=1,
    ...                             capacity_factor=None, active_experts=2)
    >>> sorted(set(plan.expert_index.flatten().tolist()))
    [0, 1]
    """
    _check_logits(logits, placement)
    _check_k(k, placement.num_experts)
    _check_capacity_factor(capacity_factor)
    _check_drop_policy(drop_policy)
    num_experts = placement.num_experts
    if active_experts > num_experts:
        raise ValueError(f"option active_experts={active_experts} of the topk_collapsed router exceeds the "
                         f"{num_experts} experts")
    if active_experts and k > active_experts:
        raise ValueError(f"k={k} exceeds active_experts={active_experts}: a token needs k distinct experts")
    token_rank = _token_rank_or_zero(token_rank, logits.shape[0], placement, logits.device)
    selection = logits.detach()
    if 0 < active_experts < num_experts:
        selection = selection.clone()
        selection[:, active_experts:] = float("-inf")       # the collapsed experts are never chosen
    return _topk_plan(logits, selection, placement, k, capacity_factor, drop_policy, token_rank)


def node_limited_mask(scores: torch.Tensor, placement: Placement, max_nodes: int, k: int,
                      scores_per_node: int | None = None) -> torch.Tensor:
    """(T, E) bool: the experts on each token's `max_nodes` best nodes.

    A node's score for a token is the sum of its `scores_per_node` highest expert scores (DeepSeek-V3,
    arXiv 2412.19437, Sec. 2.1.2: "the sum of the highest K_r/M affinity scores of the experts
    distributed on each node"; default ceil(k / max_nodes), fewer on a node that holds fewer experts).
    The M nodes with the highest sums are kept (ties: the lower node index). With M >= the number of
    nodes every expert is kept.

    >>> p = Placement.from_lists([0, 0, 1, 1], [0, 1])
    >>> node_limited_mask(torch.tensor([[0.1, 0.2, 0.3, 0.05]]), p, 1, 2).tolist()
    [[False, False, True, True]]
    """
    num_nodes = placement.num_nodes
    if max_nodes >= num_nodes:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    per_node = math.ceil(k / max_nodes) if scores_per_node is None else scores_per_node
    expert_node = placement.expert_to_node.to(scores.device)  # (E,)
    counts = torch.bincount(expert_node, minlength=num_nodes)  # (N,)
    width = int(counts.max())
    if bool((counts == width).all()) and bool((expert_node[1:] >= expert_node[:-1]).all()):
        # the usual contiguous placement: node n holds experts [n E/N, (n+1) E/N), a view
        padded = scores.float().reshape(scores.shape[0], num_nodes, width)  # (T, N, width)
    else:
        # column of every expert inside its node: experts sorted by node, then position within the node
        order = torch.sort(expert_node, stable=True).indices  # (E,)
        starts = torch.cumsum(counts, 0) - counts  # (N,)
        column = torch.empty_like(order)
        column[order] = torch.arange(order.numel(), device=scores.device) - starts[expert_node[order]]
        padded = torch.full((scores.shape[0], num_nodes, width), float("-inf"), dtype=torch.float32,
                            device=scores.device)  # (T, N, width)
        padded[:, expert_node, column] = scores.float()
    take = min(per_node, width)
    best = torch.topk(padded, take, dim=2).values  # (T, N, take)
    node_score = torch.where(torch.isfinite(best), best, torch.zeros_like(best)).sum(dim=2)  # (T, N)
    # ties go to the lower node index: a stable sort of the negated sums
    chosen = torch.sort(-node_score, dim=1, stable=True).indices[:, :max_nodes]  # (T, M)
    node_mask = torch.zeros((scores.shape[0], num_nodes), dtype=torch.bool, device=scores.device)
    node_mask.scatter_(1, chosen, True)
    return node_mask[:, expert_node]  # (T, E)


def route_node_limited(logits: torch.Tensor, placement: Placement, *, k: int = 8, capacity_factor: float | None = None,
                       drop_policy: str = "position", token_rank: torch.Tensor | None = None,
                       max_nodes: int = 4, scores_per_node: int = 0) -> DispatchPlan:
    """Node-limited top-k (DeepSeek-V3, arXiv 2412.19437, Sec. 2.1.2; DeepSeek-V2's device-limited
    routing): each token first picks its `max_nodes` (M) nodes by the sum of the top
    `scores_per_node` softmax scores of the experts on each node (0 = ceil(k / M), as DeepSeek-V3),
    then its top-k experts among the experts of those nodes, so its choices land on at most M nodes.
    Gate weights and capacity follow the shared conventions (softmax scores; capacity_factor None =
    dropless, DeepSeek-V3 drops no token). With M >= the number of nodes it is plain `topk`.

    DeepSeek-V3 groups its 256 experts into 8 groups and keeps 4 groups (n_group 8, topk_group 4):
    with 8 nodes and contiguous placement a group is a node. It scores with sigmoid affinities and
    a bias for load balance; here the scores are softmax(logits) (a monotone map of the same logits
    only changes the node sums, not the within-node order).
    """
    _check_logits(logits, placement)
    _check_k(k, placement.num_experts)
    _check_capacity_factor(capacity_factor)
    _check_drop_policy(drop_policy)
    positive_int("max_nodes", max_nodes)
    if isinstance(scores_per_node, bool) or not isinstance(scores_per_node, int) or scores_per_node < 0:
        raise ValueError(f"scores_per_node={scores_per_node!r} must be an integer >= 0 (0 = ceil(k / max_nodes))")
    counts = torch.bincount(placement.expert_to_node, minlength=placement.num_nodes)
    reachable = int(torch.sort(counts).values[:min(max_nodes, placement.num_nodes)].sum())
    if k > reachable:
        raise ValueError(f"k={k} exceeds the {reachable} experts that max_nodes={max_nodes} nodes are sure to hold "
                         f"(the {max_nodes} smallest nodes of the placement); raise max_nodes or lower k")
    token_rank = _token_rank_or_zero(token_rank, logits.shape[0], placement, logits.device)
    num_nodes = placement.num_nodes
    if max_nodes >= num_nodes:        # every node allowed: exactly topk
        return _topk_plan(logits, logits.detach(), placement, k, capacity_factor, drop_policy, token_rank)
    per_node = scores_per_node or math.ceil(k / max_nodes)
    expert_node = placement.expert_to_node.to(logits.device)  # (E,)
    width = placement.num_experts // num_nodes
    with torch.no_grad():
        if width * num_nodes == placement.num_experts and torch.equal(
                expert_node, torch.arange(num_nodes, device=logits.device).repeat_interleave(width)):
            expert_index = _node_limited_contiguous(logits.detach().float(), num_nodes, width, max_nodes, k, per_node)
            return _topk_plan(logits, None, placement, k, capacity_factor, drop_policy, token_rank,
                              expert_index=expert_index)
        scores = torch.softmax(logits.detach().float(), dim=1)  # (T, E)
        mask = node_limited_mask(scores, placement, max_nodes, k, per_node)  # (T, E)
        selection = torch.where(mask, logits.detach().float(), torch.full_like(scores, float("-inf")))  # (T, E)
    return _topk_plan(logits, selection, placement, k, capacity_factor, drop_policy, token_rank)


def _node_limited_contiguous(logits: torch.Tensor, num_nodes: int, width: int, max_nodes: int, k: int,
                             per_node: int) -> torch.Tensor:
    """(T, k) experts of `route_node_limited` when node n holds experts [n w, (n+1) w): the same choice
    as `node_limited_mask` + top-k, without (T, E) temporaries. A node's sum of its top softmax
    scores is sum exp(l_i - m) / Z with one Z per token, so nodes are ranked by sum exp(l_i - m) over
    each node's top `per_node` logits (m: the token's largest logit); then top-k among the M x w
    logits of the chosen nodes."""
    tokens = logits.shape[0]
    grouped = logits.reshape(tokens, num_nodes, width)  # (T, N, w)
    take = min(per_node, width)
    if take == 1:
        top = grouped.max(dim=2, keepdim=True).values  # (T, N, 1)
    elif take == 2:
        first, where = grouped.max(dim=2, keepdim=True)  # (T, N, 1)
        second = grouped.scatter(2, where, float("-inf")).max(dim=2, keepdim=True).values  # (T, N, 1)
        top = torch.cat([first, second], dim=2)  # (T, N, 2)
    else:
        top = torch.topk(grouped, take, dim=2).values  # (T, N, take)
    row_max = top[:, :, 0].max(dim=1, keepdim=True).values  # (T, 1)
    node_score = torch.exp(top - row_max[:, :, None]).sum(dim=2)  # (T, N)
    chosen = torch.sort(-node_score, dim=1, stable=True).indices[:, :max_nodes]  # (T, M), ties: lower node
    candidates = grouped.gather(1, chosen[:, :, None].expand(tokens, max_nodes, width))  # (T, M, w)
    best = _top_indices(candidates.reshape(tokens, max_nodes * width), k)  # (T, k) positions
    return chosen.gather(1, best // width) * width + best % width  # (T, k) expert ids


_MASK64 = (1 << 64) - 1


def _int64(value: int) -> int:
    """The unsigned 64-bit constant as the signed int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= (1 << 63) else value


def _logical_shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def hash_experts(token_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Expert of each token id: splitmix64(id) mod E (a fixed, well-mixed 64-bit hash).

    >>> hash_experts(torch.tensor([0, 1, 2, 3]), 8).tolist()  # splitmix64(0) = 0xe220a8397b1dcdaf: 7 mod 8
    [7, 1, 6, 5]
    """
    z = token_ids.to(torch.int64) + _int64(0x9E3779B97F4A7C15)  # int64 arithmetic wraps modulo 2^64
    z = (z ^ _logical_shift_right(z, 30)) * _int64(0xBF58476D1CE4E5B9)
    z = (z ^ _logical_shift_right(z, 27)) * _int64(0x94D049BB133111EB)
    z = z ^ _logical_shift_right(z, 31)
    return (z & _int64(0x7FFFFFFFFFFFFFFF)) % num_experts  # (T,)


def route_hash(token_ids: torch.Tensor, placement: Placement, *, capacity_factor: float | None = None,
               token_rank: torch.Tensor | None = None) -> DispatchPlan:
    """Hash Layers (Roller et al. 2021): one expert per token from a fixed hash of its id; weight 1.

    No learned parameters; capacity only if `capacity_factor` is given (default: none).
    """
    if token_ids.ndim != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {tuple(token_ids.shape)}")
    if token_ids.is_floating_point() or token_ids.dtype == torch.bool:
        raise ValueError(f"token_ids must be integers, got {token_ids.dtype}")
    if token_ids.numel() and int(token_ids.min()) < 0:
        raise ValueError(f"token_ids hold a negative id {int(token_ids.min())}")
    _check_capacity_factor(capacity_factor)
    token_rank = _token_rank_or_zero(token_rank, token_ids.shape[0], placement, token_ids.device)
    return _hash_plan(token_ids, placement, capacity_factor, token_rank)


def _hash_plan(token_ids: torch.Tensor, placement: Placement, capacity_factor: float | None,
               token_rank: torch.Tensor, max_tokens_per_rank: int | None = None) -> DispatchPlan:
    """route_hash after its checks (no host synchronisation when max_tokens_per_rank is given)."""
    expert_index = hash_experts(token_ids, placement.num_experts).unsqueeze(1)  # (T, 1)
    gate_weight = torch.ones(expert_index.shape, dtype=torch.float32, device=token_ids.device)  # (T, 1)
    if max_tokens_per_rank is None:
        max_tokens_per_rank = _max_tokens_per_rank(token_rank, placement.world_size)
    capacity = compute_capacity(max_tokens_per_rank, 1, placement.num_experts, capacity_factor)
    slot, kept, tokens_per_expert = assign_slots(expert_index, token_rank, capacity, placement.num_experts,
                                                 placement.world_size)
    return DispatchPlan(expert_index=expert_index, gate_weight=gate_weight, slot=slot, kept=kept,
                        tokens_per_expert=tokens_per_expert, capacity=capacity, placement=placement,
                        token_rank=token_rank, router_logits=None)


def route_expert_choice(logits: torch.Tensor, placement: Placement, *, k: int = 2,
                        capacity_factor: float | None = 1.0,
                        token_rank: torch.Tensor | None = None) -> DispatchPlan:
    """Expert choice (Zhou et al. 2022): every expert takes its top-C tokens of each source rank.

    C = ceil(capacity_factor * T_r * k / E), capped at T_r; k is the average number of experts
    per token. A token may be taken by 0..E experts: the plan's choice axis is as wide as the most
    taken token, padded with expert_index = -1. Nothing is dropped; tokens no expert takes are
    simply not sent (their combine output is zero).
    """
    _check_logits(logits, placement)
    _check_k(k, placement.num_experts)
    _check_capacity_factor(capacity_factor)
    num_tokens, num_experts = logits.shape
    token_rank = _token_rank_or_zero(token_rank, num_tokens, placement, logits.device)
    scores = torch.softmax(logits.float(), dim=1)  # (T, E)
    tokens_on_rank = torch.bincount(token_rank, minlength=placement.world_size)  # (W,)
    capacity = min(compute_capacity(int(tokens_on_rank.max()) if num_tokens else 0, k, num_experts, capacity_factor),
                   int(tokens_on_rank.max()) if num_tokens else 0)
    pair_token, pair_expert, pair_slot = [], [], []
    with torch.no_grad():
        for rank in torch.unique(token_rank).tolist():
            rank_tokens = torch.nonzero(token_rank == rank).flatten()  # (T_r,)
            take = min(capacity, rank_tokens.numel())
            top = torch.topk(scores[rank_tokens].t(), take, dim=1, sorted=True).indices  # (E, take)
            pair_token.append(rank_tokens[top].reshape(-1))  # (E*take,)
            pair_expert.append(torch.arange(num_experts, device=logits.device).repeat_interleave(take))
            pair_slot.append(torch.arange(take, device=logits.device).repeat(num_experts))
        if pair_token:
            pair_token_t = torch.cat(pair_token)
            pair_expert_t = torch.cat(pair_expert)
            pair_slot_t = torch.cat(pair_slot)
        else:
            pair_token_t = pair_expert_t = pair_slot_t = torch.zeros(0, dtype=torch.int64, device=logits.device)
        # choice index of each pair = its rank among the pairs of the same token
        order = torch.sort(pair_token_t, stable=True).indices
        per_token = torch.bincount(pair_token_t, minlength=num_tokens)  # (T,)
        width = max(int(per_token.max()) if num_tokens else 0, 1)
        starts = torch.cumsum(per_token, 0) - per_token
        choice = torch.empty_like(pair_token_t)
        choice[order] = torch.arange(pair_token_t.numel(), device=logits.device) - starts[pair_token_t[order]]
        expert_index = torch.full((num_tokens, width), -1, dtype=torch.int64, device=logits.device)
        slot = torch.full((num_tokens, width), -1, dtype=torch.int64, device=logits.device)
        expert_index[pair_token_t, choice] = pair_expert_t
        slot[pair_token_t, choice] = pair_slot_t
        kept = expert_index >= 0
        tokens_per_expert = torch.bincount(pair_expert_t, minlength=num_experts)
    gate_weight = scores.gather(1, expert_index.clamp(min=0)) * kept  # (T, width), keeps grad
    return DispatchPlan(expert_index=expert_index, gate_weight=gate_weight, slot=slot, kept=kept,
                        tokens_per_expert=tokens_per_expert, capacity=capacity, placement=placement,
                        token_rank=token_rank, router_logits=logits)


def grap_weights(d_model: int, num_experts: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """GrAP gate weights (LocMoE Eq. 4): W_i = (n/d) * 1[feature in group i], (E, d).

    Rows have disjoint supports, so they are orthogonal, and all have norm sqrt(n/d).

    >>> grap_weights(4, 2).tolist()
    [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    positive_int("d_model", d_model)
    positive_int("num_experts", num_experts)
    if d_model % num_experts != 0:
        raise ValueError(f"d_model={d_model} is not divisible by num_experts={num_experts} (GrAP needs equal groups)")
    group = torch.arange(d_model) // (d_model // num_experts)  # (d,)
    return (group.unsqueeze(0) == torch.arange(num_experts).unsqueeze(1)).to(dtype) * (num_experts / d_model)


def grap_scores(hidden: torch.Tensor, num_experts: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """G = ReLU(W x + b) with GrAP weights, computed as a group mean: (T, d) -> (T, E)."""
    if hidden.ndim != 2:
        raise ValueError(f"hidden must be 2-D (tokens, d_model), got shape {tuple(hidden.shape)}")
    num_tokens, d_model = hidden.shape
    if d_model % num_experts != 0:
        raise ValueError(f"d_model={d_model} is not divisible by num_experts={num_experts} (GrAP needs equal groups)")
    pooled = hidden.reshape(num_tokens, num_experts, d_model // num_experts).mean(dim=2, dtype=torch.float32)  # (T, E)
    if bias is not None:
        pooled = pooled + bias
    return torch.relu(pooled)


def route_locmoe(hidden: torch.Tensor, placement: Placement, *, k: int = 1, capacity_factor: float | None = 1.25,
                 drop_policy: str = "position", locality_bonus: float = 1.0,
                 token_rank: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> DispatchPlan:
    """LocMoE routing: GrAP gate, then a preference for experts on the token's own node.

    Scores = softmax(G), G = ReLU(W_GrAP x + b) (LocMoE Eq. 4). Experts are *selected* by
    G + locality_bonus * 1[expert on the token's node]; gate weights are the unbiased scores of the
    selected experts. locality_bonus = 0 is plain GrAP top-k; a large bonus keeps every token on
    its node whenever the node has k experts.
    """
    if hidden.ndim != 2:
        raise ValueError(f"hidden must be 2-D (tokens, d_model), got shape {tuple(hidden.shape)}")
    if not hidden.is_floating_point() or (hidden.numel() and not _all_finite(hidden)):
        raise ValueError("hidden must be floating point and finite (found NaN or inf, or an integer dtype)")
    _check_k(k, placement.num_experts)
    _check_capacity_factor(capacity_factor)
    _check_drop_policy(drop_policy)
    if not math.isfinite(locality_bonus) or locality_bonus < 0:
        raise ValueError(f"locality_bonus={locality_bonus!r} must be finite and >= 0")
    token_rank = _token_rank_or_zero(token_rank, hidden.shape[0], placement, hidden.device)
    return _locmoe_plan(hidden, placement, k, capacity_factor, drop_policy, locality_bonus, token_rank, bias)


def locmoe_selection(hidden: torch.Tensor, placement: Placement, locality_bonus: float, token_rank: torch.Tensor,
                     bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LocMoE's router logits (the GrAP scores, differentiable) and the scores it selects experts
    by: scores + locality_bonus where the expert is on the token's node. Both (T, E) float32."""
    gate = grap_scores(hidden, placement.num_experts, bias)  # (T, E), the router logits
    token_node = placement.rank_to_node.to(hidden.device)[token_rank]  # (T,)
    expert_node = placement.expert_to_node.to(hidden.device)  # (E,)
    nodes = torch.arange(placement.num_nodes, device=hidden.device)  # (N,)
    node_bonus = locality_bonus * (nodes.unsqueeze(1) == expert_node.unsqueeze(0)).to(gate.dtype)  # (N, E)
    # speed trick: gather the per-node bonus rows, add in place (5x faster than a (T, E) compare)
    selection = torch.index_select(node_bonus, 0, token_node).add_(gate.detach())  # (T, E)
    return gate, selection


def _locmoe_plan(hidden: torch.Tensor, placement: Placement, k: int, capacity_factor: float | None,
                 drop_policy: str, locality_bonus: float, token_rank: torch.Tensor, bias: torch.Tensor | None,
                 max_tokens_per_rank: int | None = None) -> DispatchPlan:
    """route_locmoe after its checks (no host synchronisation when max_tokens_per_rank is given)."""
    gate, selection = locmoe_selection(hidden, placement, locality_bonus, token_rank, bias)

    return _topk_plan(gate, selection, placement, k, capacity_factor, drop_policy, token_rank, max_tokens_per_rank)


# ---- auxiliary losses (returned, never stored) -------------------------------------------------
def aux_loss(plan: DispatchPlan, alpha: float = 0.01) -> torch.Tensor:
    """Load-balance loss L_aux = alpha * n * sum_i f_i * P_i (Switch Eq. 4; LocMoE uses alpha = 0.01).

    f_i: fraction of routed choices that picked expert i (before capacity); P_i: mean score of
    expert i over tokens. Equals alpha when routing is perfectly uniform.
    """
    scores = plan.scores  # (T, E), computed once
    if scores is None:
        raise ValueError("aux_loss needs router scores; this plan has none (hash routing has no gate)")
    routed = plan.routed  # (T, k)
    counts = torch.bincount(plan.expert_index[routed], minlength=plan.num_experts).to(scores.dtype)  # (E,)
    fraction = counts / counts.sum().clamp_min(1)  # (E,)
    mean_prob = scores.mean(dim=0)  # (E,)
    return alpha * plan.num_experts * torch.sum(fraction * mean_prob)


def locality_loss(plan: DispatchPlan, mu: float = 0.01, smoothing: float = 1e-3) -> torch.Tensor:
    """LocMoE locality loss L_loc = mu * KL(D_c || D_l), averaged over source nodes.

    D_c(m | s): mean over tokens of node s of the score mass on experts of node m (differentiable).
    D_l(. | s): the all-local distribution, smoothed to (1 - smoothing) on s and smoothing/(N-1)
    elsewhere so that the KL stays finite (the paper gives neither mu nor a smoothing; both are
    parameters). Zero on a single node.
    """
    scores = plan.scores  # (T, E), computed once
    if scores is None:
        raise ValueError("locality_loss needs router scores; this plan has none")
    if not 0 < smoothing < 1:
        raise ValueError(f"smoothing={smoothing} must be in (0, 1)")
    num_nodes = plan.placement.num_nodes
    if num_nodes == 1:
        return scores.sum() * 0.0
    device = scores.device
    expert_node = plan.placement.expert_to_node.to(device)  # (E,)
    node_onehot = torch.nn.functional.one_hot(expert_node, num_nodes).to(scores.dtype)  # (E, N)
    mass = scores @ node_onehot  # (T, N)
    token_node = plan.placement.rank_to_node.to(device)[plan.token_rank]  # (T,)
    losses = []
    for node in torch.unique(token_node).tolist():
        current = mass[token_node == node].mean(dim=0).clamp_min(1e-12)  # (N,)
        local = torch.full((num_nodes,), smoothing / (num_nodes - 1), dtype=mass.dtype, device=device)
        local[node] = 1.0 - smoothing
        losses.append(torch.sum(current * (current.log() - local.log())))
    return mu * torch.stack(losses).mean()


# ---- gate costs (what the step simulator charges for the gate, per token) ----------------------
@dataclass(frozen=True)
class GateCost:
    """Forward cost of a router's gate for ONE token: FLOPs and HBM bytes.

    The step simulator multiplies both by the tokens per rank and adds the slot bookkeeping that
    every capacity router shares (one int64 slot and index per choice); see `gate_cost`.
    """

    flops_per_token: float
    bytes_per_token: float


def linear_gate_cost(d_model: int, num_experts: int, bytes_per_element: int) -> GateCost:
    """A linear gate: logits = x W (2 d E FLOPs), read x (d b bytes), softmax and top-k over the E
    fp32 scores (three passes: 3 * 4 E bytes).

    >>> linear_gate_cost(1024, 8, 2)
    GateCost(flops_per_token=16384.0, bytes_per_token=2144.0)
    """
    return GateCost(float(2 * d_model * num_experts), float(d_model * bytes_per_element + 3 * num_experts * 4))


def grap_gate_cost(d_model: int, num_experts: int, bytes_per_element: int) -> GateCost:
    """LocMoE's GrAP gate: a group mean over d features (d FLOPs), then scores as a linear gate.

    >>> grap_gate_cost(1024, 8, 2)
    GateCost(flops_per_token=1024.0, bytes_per_token=2144.0)
    """
    return GateCost(float(d_model), float(d_model * bytes_per_element + 3 * num_experts * 4))


def hash_gate_cost(d_model: int, num_experts: int, bytes_per_element: int) -> GateCost:
    """Hash Layers: no gate arithmetic and no scores; the token is read once (d b bytes).

    >>> hash_gate_cost(1024, 8, 2)
    GateCost(flops_per_token=0.0, bytes_per_token=2048.0)
    """
    return GateCost(0.0, float(d_model * bytes_per_element))


# ---- registry ----------------------------------------------------------------------------------
#: The RouterConfig fields a router may declare (its standard parameters); anything else a router
#: needs is one of its own `options`.
CONFIG_PARAMETERS = ("k", "capacity_factor", "drop_policy", "locality_bonus")
INPUT_KINDS = ("logits", "token_ids", "hidden")


@dataclass(frozen=True)
class RouterSpec:
    """A registered router (the registry's contract).

    fn:          fn(inputs, placement, *, token_rank, **parameters) -> DispatchPlan. `inputs` is the
                 one tensor named by `input_kind`; `token_rank` is a (T,) int64 tensor or None (all
                 tokens on rank 0); `parameters` are exactly the declared `params` (values from the
                 RouterConfig) and `options` (RouterConfig.options, defaults filled in).
    input_kind:  "logits" (T, E) float, "token_ids" (T,) int64 or "hidden" (T, d) float.
    description: one line for listings.
    params:      the RouterConfig fields `fn` takes, a subset of CONFIG_PARAMETERS.
    fixed_k:     the number of choices the router always makes (hash: 1), or None when k is a
                 parameter; RouterConfig refuses any other k (`validate_router_params`).
    options:     the router's own parameters, name -> default (sorted tuple of pairs); RouterConfig
                 refuses an option that is not declared here.
    gate_cost:   gate_cost(d_model, num_experts, bytes_per_element) -> GateCost, the per-token
                 forward cost of the gate (`linear_gate_cost`, `grap_gate_cost`, `hash_gate_cost`).
    check_options: optional check_options(options) of the filled options' values beyond their kind (a
                 ValueError naming the option), run by `validate_router_params`, so that a bad value is
                 refused where the configuration is read, not at the first routing.
    """

    fn: Callable[..., DispatchPlan]
    input_kind: str
    description: str
    params: tuple[str, ...] = ("k", "capacity_factor")
    fixed_k: int | None = None
    options: tuple[tuple[str, object], ...] = ()
    gate_cost: Callable[[int, int, int], GateCost] = linear_gate_cost
    check_options: Callable[[dict], None] | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ValueError(f"router fn={self.fn!r} must be callable")
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind={self.input_kind!r} must be one of {INPUT_KINDS}")
        object.__setattr__(self, "params", tuple(self.params))
        unknown = [p for p in self.params if p not in CONFIG_PARAMETERS]
        if unknown:
            raise ValueError(f"params={self.params!r}: {unknown[0]!r} is not a RouterConfig field; "
                             f"known: {CONFIG_PARAMETERS} (declare anything else as an option)")
        if self.fixed_k is not None:
            positive_int("fixed_k", self.fixed_k)
            if "k" in self.params:
                raise ValueError("a router with fixed_k does not take k as a parameter")
        options = dict(self.options)
        clash = [name for name in options if name in CONFIG_PARAMETERS or name == "token_rank"]
        if clash:
            raise ValueError(f"option {clash[0]!r} clashes with a RouterConfig field or token_rank")
        object.__setattr__(self, "options", tuple(sorted(options.items())))
        if not callable(self.gate_cost):
            raise ValueError(f"gate_cost={self.gate_cost!r} must be callable")
        if self.check_options is not None and not callable(self.check_options):
            raise ValueError(f"check_options={self.check_options!r} must be callable or None")

    @property
    def option_defaults(self) -> dict:
        return dict(self.options)


def _check_node_limited_options(options: dict) -> None:
    """node_limited: max_nodes >= 1 (a token's experts on at most M nodes), scores_per_node >= 0 (0 =
    ceil(k / max_nodes))."""
    if options["max_nodes"] < 1:
        raise ValueError(f"option max_nodes={options['max_nodes']!r} of the node_limited router must be >= 1")
    if options["scores_per_node"] < 0:
        raise ValueError(f"option scores_per_node={options['scores_per_node']!r} of the node_limited router must be "
                         f">= 0 (0 = ceil(k / max_nodes))")


def _check_collapsed_options(options: dict) -> None:
    """topk_collapsed: active_experts >= 0 (0 = every expert; its upper bound, the experts, is checked
    when it routes)."""
    if options["active_experts"] < 0:
        raise ValueError(f"option active_experts={options['active_experts']!r} of the topk_collapsed router must "
                         f"be >= 0 (0 = every expert)")


ROUTERS: dict[str, RouterSpec] = {
    "topk": RouterSpec(route_topk, "logits", "top-k with capacity (k=1 Switch, k=2 GShard)",
                       params=("k", "capacity_factor", "drop_policy")),
    "hash": RouterSpec(route_hash, "token_ids", "fixed hash of the token id (Hash Layers)",
                       params=("capacity_factor",), fixed_k=1, gate_cost=hash_gate_cost),
    "expert_choice": RouterSpec(route_expert_choice, "logits", "each expert takes its top-C tokens",
                                params=("k", "capacity_factor")),
    "locmoe": RouterSpec(route_locmoe, "hidden", "GrAP gate + own-node preference (LocMoE)",
                         params=("k", "capacity_factor", "drop_policy", "locality_bonus"), gate_cost=grap_gate_cost),
    "node_limited": RouterSpec(route_node_limited, "logits",
                               "top-k within each token's best max_nodes nodes (DeepSeek-V3 node-limited routing)",
                               params=("k", "capacity_factor", "drop_policy"),
                               options=(("max_nodes", 4), ("scores_per_node", 0)),
                               check_options=_check_node_limited_options),
    "topk_collapsed": RouterSpec(route_topk_collapsed, "logits",
                                 "top-k over the first active_experts experts only (a collapsed Switch gate)",
                                 params=("k", "capacity_factor", "drop_policy"),
                                 options=(("active_experts", 0),), check_options=_check_collapsed_options),
}


#: the routers lshsim ships, as shipped (`register_router` adds others to ROUTERS, never here): none of
#: them writes into its inputs (tests/test_moe_step.py checks), which `lshsim.sim.moe_step.RouterInputCache`
#: relies on to hand the same inputs to several routings
BUILTIN_ROUTERS: dict[str, RouterSpec] = dict(ROUTERS)


def get_router(name: str) -> RouterSpec:
    """The RouterSpec registered as `name`; ValueError listing the known names otherwise."""
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; known: {sorted(ROUTERS)}")
    return ROUTERS[name]


def register_router(name: str, fn: Callable[..., DispatchPlan], input_kind: str, *, description: str = "",
                    params: tuple[str, ...] = ("k", "capacity_factor"), fixed_k: int | None = None,
                    options: dict | None = None,
                    gate_cost: Callable[[int, int, int], GateCost] = linear_gate_cost,
                    check_options: Callable[[dict], None] | None = None) -> RouterSpec:
    """Add a router to ROUTERS (contract: `RouterSpec`); refuses a name already registered.

    Every parameter `fn` must accept is checked against its signature, so that a misspelt
    parameter fails here rather than at the first `route`. Returns the spec.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"router name={name!r} must be a non-empty string")
    if name in ROUTERS:
        raise ValueError(f"router {name!r} is already registered")
    spec = RouterSpec(fn, input_kind, description, params=params, fixed_k=fixed_k,
                      options=tuple((options or {}).items()), gate_cost=gate_cost, check_options=check_options)
    accepted = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    missing = [p for p in (*spec.params, *spec.option_defaults, "token_rank") if p not in accepted]
    if missing and not takes_any:
        raise ValueError(f"router {name!r}: fn {getattr(fn, '__name__', fn)!r} has no keyword {missing[0]!r}")
    ROUTERS[name] = spec
    return spec


def unregister_router(name: str) -> RouterSpec:
    """Remove a registered router (tests undo their registrations with it); returns its spec."""
    get_router(name)
    return ROUTERS.pop(name)


def effective_k(name: str, k: int | None = None) -> int:
    """The number of choices router `name` makes when asked for `k`: its fixed k if it has one
    (hash: 1), else `k` (None: RouterConfig's default, 2).

    >>> effective_k("hash", 4), effective_k("topk", 4), effective_k("topk")
    (1, 4, 2)
    """
    spec = get_router(name)
    if spec.fixed_k is not None:
        return spec.fixed_k
    return RouterConfig.k if k is None else k


def validate_router_params(name: str, k: int = 2, capacity_factor: float | None = 1.25,
                           drop_policy: str = "position", locality_bonus: float = 1.0,
                           options: dict | None = None) -> dict:
    """Check a router configuration against its spec; return its options with defaults filled in.

    The one place for the per-router rules: the name is registered, k is a positive integer and
    equals the router's fixed k if it has one (hash: k = 1), capacity_factor is None or finite and
    > 0, drop_policy is known, locality_bonus finite and >= 0, and every option is declared.
    """
    spec = get_router(name)
    positive_int("k", k)
    if spec.fixed_k is not None and k != spec.fixed_k:
        raise ValueError(f"k={k}: the {name} router sends every token to exactly {spec.fixed_k} expert"
                         f"{'s' if spec.fixed_k > 1 else ''} (k={spec.fixed_k})")
    _check_capacity_factor(capacity_factor)
    _check_drop_policy(drop_policy)
    if isinstance(locality_bonus, bool) or not isinstance(locality_bonus, (int, float)) \
            or not math.isfinite(locality_bonus) or locality_bonus < 0:
        raise ValueError(f"locality_bonus={locality_bonus!r} must be finite and >= 0")
    from lshsim import bounds

    problem = bounds.describe("locality_bonus", locality_bonus)    # 1e12 ties every score (lshsim.bounds)
    if problem is not None:
        raise ValueError(f"locality_bonus={problem}")
    given = dict(options or {})
    unknown = [key for key in given if key not in spec.option_defaults]
    if unknown:
        known = ", ".join(spec.option_defaults) or "none"
        raise ValueError(f"option {unknown[0]!r} is not an option of the {name} router; known: {known}")
    for key, value in given.items():     # of the default's kind: an integer option takes no 'abc', nan or 1e30
        default = spec.option_defaults[key]
        if isinstance(default, bool):
            wrong = not isinstance(value, bool)
        elif isinstance(default, int):
            wrong = isinstance(value, bool) or not isinstance(value, int)
        elif isinstance(default, float):
            wrong = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        elif isinstance(default, str):
            wrong = not isinstance(value, str)
        else:
            wrong = False
        if wrong:
            kind = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}[type(default)]
            raise ValueError(f"option {key}={value!r} of the {name} router must be {kind} (default {default!r})")
    filled = {**spec.option_defaults, **given}
    if spec.check_options is not None:
        spec.check_options(filled)
    return filled


def gate_cost(name: str, d_model: int, num_experts: int, bytes_per_element: int) -> GateCost:
    """Per-token forward cost of router `name`'s gate (the spec's `gate_cost`).

    >>> gate_cost("topk", 1024, 8, 2).flops_per_token, gate_cost("hash", 1024, 8, 2).flops_per_token
    (16384.0, 0.0)
    """
    return get_router(name).gate_cost(d_model, num_experts, bytes_per_element)


@dataclass(frozen=True)
class RouterConfig:
    """Which router and its parameters; validated on construction (`validate_router_params`).

    k: choices per token (topk, locmoe) or average experts per token (expert_choice); a router
    with a fixed k (hash) requires exactly that k.
    capacity_factor: None = no capacity limit. hash ignores capacity unless it is set explicitly
    through `route_hash`; here it is passed on as given.
    locality_bonus: LocMoE only, added to the GrAP score of own-node experts for selection.
    options: the router's own parameters (a plugin's), given as a dict or as (name, value) pairs;
    stored as a sorted tuple of pairs with the router's defaults filled in.

    Frozen and hashable as a whole: two configs that route alike compare equal, and `key()` is a
    tuple of every field, usable as a cache key.
    """

    name: str = "topk"
    k: int = 2
    capacity_factor: float | None = 1.25
    drop_policy: str = "position"
    locality_bonus: float = 1.0
    options: tuple = ()

    def __post_init__(self) -> None:
        given = dict(self.options.items() if isinstance(self.options, dict) else self.options)
        filled = validate_router_params(self.name, self.k, self.capacity_factor, self.drop_policy,
                                        self.locality_bonus, given)
        object.__setattr__(self, "options", tuple(sorted(filled.items())))

    def key(self) -> tuple:
        """Every field as one hashable tuple: (name, k, capacity_factor, drop_policy, locality_bonus,
        options)."""
        return (self.name, self.k, self.capacity_factor, self.drop_policy, self.locality_bonus, self.options)

    def parameters(self) -> dict:
        """The keyword arguments the router's fn receives: its declared params and its options."""
        spec = get_router(self.name)
        return {**{name: getattr(self, name) for name in spec.params}, **dict(self.options)}


def route(config: RouterConfig, placement: Placement, *, logits: torch.Tensor | None = None,
          token_ids: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
          token_rank: torch.Tensor | None = None) -> DispatchPlan:
    """Route with the registered router `config.name`: its fn gets the input it declares, the
    placement, token_rank and exactly its declared parameters (`RouterSpec`)."""
    spec = get_router(config.name)
    given = {"logits": logits, "token_ids": token_ids, "hidden": hidden}
    if given[spec.input_kind] is None:
        raise ValueError(f"router {config.name!r} reads {spec.input_kind}, which was not given")
    return spec.fn(given[spec.input_kind], placement, token_rank=token_rank, **config.parameters())


#: routers whose `route_on_rank` makes no host synchronisation (the others fall back to `route`)
SYNC_FREE_ROUTERS = ("topk", "hash", "locmoe")


def route_on_rank(config: RouterConfig, placement: Placement, rank: int, *, logits: torch.Tensor | None = None,
                  token_ids: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> DispatchPlan:
    """`route(config, placement, ..., token_rank=full(T, rank))` for tokens that all live on `rank`:
    the same plan, field for field, but for the built-in routers in SYNC_FREE_ROUTERS without any
    host synchronisation (no input checks that read values back, capacity from T known on the host,
    counts without bincount), so that a GPU runs the gate queued behind the previous kernels.

    The inputs are trusted (the executor's own gate made them): NaN logits are not detected here.
    Other routers (expert_choice, plugins) run through `route` unchanged.
    """
    spec = get_router(config.name)
    given = {"logits": logits, "token_ids": token_ids, "hidden": hidden}
    inputs = given[spec.input_kind]
    if inputs is None:
        raise ValueError(f"router {config.name!r} reads {spec.input_kind}, which was not given")
    if not 0 <= rank < placement.world_size:
        raise ValueError(f"rank={rank} is outside [0, world_size={placement.world_size})")
    num_tokens = inputs.shape[0]
    token_rank = torch.full((num_tokens,), rank, dtype=torch.int64, device=inputs.device)  # (T,)
    if spec.fn is route_topk:
        return _topk_plan(logits, logits.detach(), placement, config.k, config.capacity_factor, config.drop_policy,
                          token_rank, num_tokens)
    if spec.fn is route_hash:
        return _hash_plan(token_ids, placement, config.capacity_factor, token_rank, num_tokens)
    if spec.fn is route_locmoe:
        return _locmoe_plan(hidden, placement, config.k, config.capacity_factor, config.drop_policy,
                            config.locality_bonus, token_rank, None, num_tokens)
    return route(config, placement, logits=logits, token_ids=token_ids, hidden=hidden, token_rank=token_rank)
