"""The node-deduplicated dispatch and reducing combine (DeepEP's normal kernels, a hierarchical
all-to-all), on torch.distributed process groups: `alltoall: node_dedup` in a workload.

Ranks sit on nodes of P consecutive ranks (`gpus_per_node`); rank r = n P + l is GPU l of node n,
and its *rail* is the ranks with the same l on every node. For a token with kept choices on the
ranks of node m:

1. network stage (the rail group): the token travels once to its rail peer on node m,
   f = m P + l (for m = its own node, f is the rank itself: a local copy), with, per choice on
   node m, the token's index among the rows sent to f, the destination's local index and the
   gate weight (a small all-to-all of indices and one of weights);
2. forwarding stage (node m's group): f copies the token once per choice and sends each copy to
   the rank that holds the choice's expert, ordered so that the destination receives exactly the
   rows of the direct all-to-all, in the same order (by source rank, each in its send order);
3. the experts run unchanged; the destination multiplies each output row by its gate weight;
4. reducing combine: the rows go back to f (forwarding stage reversed), f sums the rows of the
   same token (one row per (token, node)), and the sums go back over the rail (network stage
   reversed) to the source, which adds its nodes' sums: y = sum over choices of w E(x).

Everything is differentiable through `lshsim.executor.comm.all_to_all` and index operations:
the backward of step 1's copies sums the duplicated rows' gradients (index_add), the weights'
gradient travels back through their all-to-all. Results equal the direct layer's (`executor check`
holds both against the dense reference).

What is counted: the token rows of both stages under "dispatch_a2a" (so the recorded dispatch
matrix holds the network rows to rail peers and the forwarded rows inside nodes) and of the
reverse stages under "combine_a2a". The indices and weights (3 numbers a choice) travel in their
own small all-to-alls, timed inside the dispatch phase but not counted in its bytes.

The host learns every size it needs from one all-gather of each rank's per-expert counts and
per-node distinct-token counts (the one device-to-host copy of the forward, as in the direct
layer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from lshsim.executor.comm import CommContext, all_to_all, world_size_of

__all__ = ["DedupGroups", "dedup_groups", "DedupPlan", "node_token_counts", "plan_dedup", "dedup_dispatch",
           "dedup_combine"]


@dataclass(frozen=True)
class DedupGroups:
    """This rank's rail group (same local index on every node, in node order) and node group."""

    rank: int
    world_size: int
    ranks_per_node: int
    rail_group: object
    rail_ranks: list[int]
    node_group: object
    node_ranks: list[int]

    @property
    def num_nodes(self) -> int:
        return self.world_size // self.ranks_per_node


def dedup_groups(rank: int, world_size: int, ranks_per_node: int) -> DedupGroups:
    """Every rail and every node group (collective: every rank calls it, creating all groups in the
    same order, as `torch.distributed.new_group` requires). Single ranks get no process group (their
    all-to-alls are local copies)."""
    if world_size % ranks_per_node != 0:
        raise ValueError(f"ranks_per_node={ranks_per_node} does not divide world_size={world_size}")
    nodes = world_size // ranks_per_node

    def make(ranks: list[int]):
        if not dist.is_initialized():
            return None  # one process: every all-to-all is a local copy
        if len(ranks) == world_size:
            return dist.group.WORLD
        return dist.new_group(ranks)  # single ranks too: None would mean the world

    rail, rail_ranks, node, node_ranks = None, None, None, None
    for local in range(ranks_per_node):
        ranks = [n * ranks_per_node + local for n in range(nodes)]
        group = make(ranks)
        if rank in ranks:
            rail, rail_ranks = group, ranks
    for n in range(nodes):
        ranks = list(range(n * ranks_per_node, (n + 1) * ranks_per_node))
        group = make(ranks)
        if rank in ranks:
            node, node_ranks = group, ranks
    return DedupGroups(rank, world_size, ranks_per_node, rail, rail_ranks, node, node_ranks)


def node_token_counts(token_of_row: torch.Tensor, dest_node: torch.Tensor, valid: torch.Tensor, num_tokens: int,
                      num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct tokens per destination node, without a host synchronisation.

    token_of_row, dest_node, valid: (M,) rows of the send order (valid: kept). Returns (seen,
    counts): seen (num_nodes, T) bool, True where token t has a kept row for node m; counts
    (num_nodes,) int64.

    >>> seen, counts = node_token_counts(torch.tensor([0, 2, 0, 1]), torch.tensor([0, 0, 1, 1]),
    ...                                  torch.tensor([True, True, True, False]), 3, 2)
    >>> counts.tolist(), seen.tolist()
    ([2, 1], [[True, False, True], [True, False, False]])
    """
    slots = num_nodes * num_tokens
    key = torch.where(valid, dest_node * num_tokens + token_of_row, slots)  # invalid rows: a dummy slot
    seen = torch.zeros(slots + 1, dtype=torch.bool, device=token_of_row.device)
    seen[key] = True
    seen = seen[:slots].view(num_nodes, num_tokens)
    return seen, seen.sum(dim=1)


@dataclass
class DedupPlan:
    """Everything one dedup forward needs, from the all-gathered counts (host) and the send rows."""

    groups: DedupGroups
    per_rank: int                   # experts per rank
    rows_to_rank: list[list[int]]   # (W src, W dst) kept rows, host
    distinct: list[list[int]]       # (W src, nodes) distinct tokens to each node, host
    token_list: torch.Tensor        # (sum distinct[rank],) tokens this rank sends, node-major, ascending
    row_index: torch.Tensor         # (N,) index of each kept row's token within its node's list
    dest_local: torch.Tensor        # (N,) local index of each kept row's destination rank

    def rail_send_tokens(self) -> list[int]:
        return [self.distinct[self.groups.rank][r // self.groups.ranks_per_node] for r in self.groups.rail_ranks]

    def rail_recv_tokens(self) -> list[int]:
        node = self.groups.rank // self.groups.ranks_per_node
        return [self.distinct[s][node] for s in self.groups.rail_ranks]

    def rows_to_node(self, src: int, node: int) -> int:
        p = self.groups.ranks_per_node
        return sum(self.rows_to_rank[src][node * p:(node + 1) * p])


def plan_dedup(groups: DedupGroups, per_rank: int, all_counts: list[list[int]], seen: torch.Tensor,
               token_of_row: torch.Tensor, dest_rank: torch.Tensor) -> DedupPlan:
    """The plan from the all-gathered rows: all_counts[s] = rank s's kept rows per expert position
    (E values) followed by its distinct tokens per node (num_nodes values)."""
    world, nodes = groups.world_size, groups.num_nodes
    num_experts = per_rank * world
    rows_to_rank = [[sum(c[d * per_rank:(d + 1) * per_rank]) for d in range(world)] for c in all_counts]
    distinct = [list(c[num_experts:num_experts + nodes]) for c in all_counts]
    token_list = torch.nonzero(seen.flatten(), as_tuple=True)[0] % seen.shape[1]  # node-major, ascending
    position = torch.cumsum(seen.flatten().long(), 0) - 1  # (nodes * T,) index within the node's list
    dest_node = torch.div(dest_rank, groups.ranks_per_node, rounding_mode="floor")
    offsets = torch.tensor([0] + distinct[groups.rank][:-1], device=seen.device).cumsum(0)  # (nodes,)
    row_index = position[dest_node * seen.shape[1] + token_of_row] - offsets[dest_node]
    return DedupPlan(groups, per_rank, rows_to_rank, distinct, token_list, row_index,
                     dest_rank % groups.ranks_per_node)


def _forward_order(plan: DedupPlan, dest_local: torch.Tensor, source_node: torch.Tensor) -> torch.Tensor:
    """Permutation of the forwarder's rows (by source, each in send order) into (destination local
    index, source node) blocks, each block keeping its send order."""
    key = dest_local * plan.groups.num_nodes + source_node
    return torch.sort(key, stable=True)[1]


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def dedup_dispatch(x: torch.Tensor, weight: torch.Tensor, plan: DedupPlan, name: str, timer, stats, sync: bool,
                   bwd_opens: str | None = None, bwd_closes: str | None = None, wire: dict | None = None):
    """Tokens x (T, d) and the kept rows' gate weights (N,) -> (rows, weights, state): the rows the
    direct all-to-all would deliver to this rank, in its order (by source rank, each in send
    order), their gate weights, and the state `dedup_combine` reverses. `wire`: CommContext fields
    of the token rows' format (the fp8 dispatch; re-quantizing dequantized fp8 rows at the forwarder
    gives the same values, so the rows are rounded once, as with the direct dispatch)."""
    wire = wire or {}
    g = plan.groups
    rank, p, nodes = g.rank, g.ranks_per_node, g.num_nodes
    my_node, my_local = rank // p, rank % p
    device = x.device
    # 1. network stage: distinct tokens to the rail peer of each node, with per-row indices and weights
    send_tokens, recv_tokens = plan.rail_send_tokens(), plan.rail_recv_tokens()
    send_rows = [plan.rows_to_node(rank, r // p) for r in g.rail_ranks]
    recv_rows = [plan.rows_to_node(s, my_node) for s in g.rail_ranks]
    rail = dict(timer=timer, sync=sync, group=g.rail_group, ranks=g.rail_ranks)
    tokens_in = all_to_all(x.index_select(0, plan.token_list), send_tokens, recv_tokens,
                           CommContext(name, stats=stats, bwd_opens=bwd_opens, **rail, **wire))
    # indices and weights: untimed, uncounted (module docstring)
    side = dict(sync=sync, group=g.rail_group, ranks=g.rail_ranks)
    meta = torch.stack([plan.row_index, plan.dest_local], dim=1)  # (N, 2) int64, rows in send order
    meta_in = all_to_all(meta, send_rows, recv_rows, CommContext(name, **side))
    weight_in = all_to_all(weight.unsqueeze(1), send_rows, recv_rows, CommContext(name, **side)).squeeze(1)
    # 2. forwarding stage: one copy per choice, to the destination on this node, in the direct order
    token_offsets = torch.tensor([0] + recv_tokens[:-1], device=device).cumsum(0)  # (nodes,) per rail source
    source_node = torch.repeat_interleave(torch.arange(nodes, device=device),
                                          torch.tensor(recv_rows, device=device))  # (R,)
    copies = tokens_in.index_select(0, token_offsets[source_node] + meta_in[:, 0])  # (R, d)
    order = _forward_order(plan, meta_in[:, 1], source_node)
    node_send = [sum(plan.rows_to_rank[n * p + my_local][my_node * p + dl] for n in range(nodes))
                 for dl in range(p)]
    node_recv = [sum(plan.rows_to_rank[n * p + fl][rank] for n in range(nodes)) for fl in range(p)]
    node = dict(timer=timer, sync=sync, group=g.node_group, ranks=g.node_ranks)
    rows = all_to_all(copies.index_select(0, order), node_send, node_recv,
                      CommContext(name, stats=stats, bwd_closes=bwd_closes, **node, **wire))
    weights = all_to_all(weight_in.index_select(0, order).unsqueeze(1), node_send, node_recv,
                         CommContext(name, sync=sync, group=g.node_group, ranks=g.node_ranks)).squeeze(1)
    # the destination's blocks arrive as (forwarder local fl, source node n); the direct order is
    # by source rank s = n P + fl
    sizes = [plan.rows_to_rank[n * p + fl][rank] for fl in range(p) for n in range(nodes)]
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    arrival = {(fl, n): (starts[fl * nodes + n], sizes[fl * nodes + n]) for fl in range(p) for n in range(nodes)}
    pieces = [torch.arange(arrival[s % p, s // p][0], arrival[s % p, s // p][0] + arrival[s % p, s // p][1],
                           device=device) for s in range(g.world_size)]
    to_direct = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long, device=device)
    state = {"order": order, "to_direct": to_direct, "node_send": node_send, "node_recv": node_recv,
             "token_offsets": token_offsets, "source_node": source_node, "meta_in": meta_in,
             "recv_tokens": recv_tokens, "send_tokens": send_tokens}
    return rows.index_select(0, to_direct), weights.index_select(0, to_direct), state


def dedup_combine(out: torch.Tensor, weights: torch.Tensor, plan: DedupPlan, state: dict, num_tokens: int,
                  name: str, timer, stats, sync: bool, bwd_opens: str | None = None,
                  bwd_closes: str | None = None) -> torch.Tensor:
    """Expert outputs (rows in the direct order) -> y (T, d) = sum over kept choices of w E(x),
    summed once per (token, node) on the forwarder and once per token at the source."""
    g = plan.groups
    weighted = out * weights.to(out.dtype).unsqueeze(1)  # (M, d)
    back = weighted.index_select(0, _inverse(state["to_direct"]))  # arrival order
    node = dict(timer=timer, sync=sync, group=g.node_group, ranks=g.node_ranks)
    at_forwarder = all_to_all(back, state["node_recv"], state["node_send"],
                              CommContext(name, stats=stats, bwd_opens=bwd_opens, **node))
    by_source = at_forwarder.index_select(0, _inverse(state["order"]))  # (R, d) by rail source, send order
    slot = state["token_offsets"][state["source_node"]] + state["meta_in"][:, 0]  # (R,)
    sums = torch.zeros(sum(state["recv_tokens"]), out.shape[1], dtype=out.dtype, device=out.device)
    sums = sums.index_add(0, slot, by_source)  # one row per (rail source, token)
    rail = dict(timer=timer, sync=sync, group=g.rail_group, ranks=g.rail_ranks)
    partial = all_to_all(sums, state["recv_tokens"], state["send_tokens"],
                         CommContext(name, stats=stats, bwd_closes=bwd_closes, **rail))  # (sum distinct, d)
    y = torch.zeros(num_tokens, out.shape[1], dtype=out.dtype, device=out.device)
    return y.index_add(0, plan.token_list, partial)
