"""What one routing did, as plain data: load per expert, drops and the dispatch traffic.

`route_summary(plan, placement, config, bytes_per_token)` turns a `DispatchPlan` into a JSON-ready
dict; `lshsim route --json` prints it and `lshsim simulate --traffic FILE.json` reads its
`traffic_bytes` back (`lshsim.sim.traffic.load_traffic`). Fields:

- router, k: the router's name and choices per token (`RouterConfig`); router_options: its own
  options, defaults filled in (`{}` for a router without any);
- experts, world, gpus_per_node: E, W and the ranks per node of the placement;
- tokens_per_rank: routed tokens / W; capacity: the per-(rank, expert) capacity (None: no limit);
- bytes_per_token: d_model * bytes per element, the size of one routed copy;
- routed, kept, dropped, drop_fraction: expert choices made, kept within capacity, dropped, and
  dropped / routed (0 when nothing was routed);
- local_bytes, remote_bytes, inter_node_bytes: bytes of the kept copies that stay on their rank,
  leave it, and leave its node; inter_node_bytes_dedup: the bytes that leave the node when each token
  crosses once per destination node (a node-deduplicated dispatch, DeepEP's / `node_dedup`), what a
  node limit (node_limited `max_nodes`) shrinks;
- experts_table: one row per expert {expert, rank, node, routed, kept, dropped};
- traffic_bytes: the (W, W) dispatch all-to-all in bytes, row = source rank, as nested lists.
"""
from __future__ import annotations

import torch

from lshsim.dispatch.placement import Placement
from lshsim.dispatch.plan import DispatchPlan

__all__ = ["route_summary"]


def route_summary(plan: DispatchPlan, placement: Placement, config, bytes_per_token: int) -> dict:
    """The summary of module docstring for `plan`, routed by `config` onto `placement`.

    config: the `RouterConfig` the plan was routed with (its name and k are reported);
    bytes_per_token: bytes of one token copy on the wire.

    >>> from lshsim.dispatch import RouterConfig, contiguous_placement, route
    >>> placement = contiguous_placement(4, 2, 2)
    >>> logits = torch.tensor([[4.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 0, 0, 4.0], [4.0, 0, 0, 0]])
    >>> config = RouterConfig("topk", k=1, capacity_factor=None)
    >>> plan = route(config, placement, logits=logits, token_rank=torch.tensor([0, 0, 1, 1]))
    >>> s = route_summary(plan, placement, config, bytes_per_token=8)
    >>> s["traffic_bytes"], s["local_bytes"], s["remote_bytes"]
    ([[8, 8], [8, 8]], 16, 16)
    """
    world = placement.world_size
    routed = plan.routed
    routed_count = int(routed.sum())
    traffic = plan.traffic_matrix(bytes_per_token)  # (W, W) bytes
    routed_per_expert = torch.bincount(plan.expert_index[routed], minlength=placement.num_experts)  # (E,)
    dropped_per_expert = plan.dropped_per_expert()  # (E,)
    return {
        "router": config.name, "k": config.k, "router_options": dict(getattr(config, "options", ()) or ()),
        "experts": placement.num_experts, "world": world,
        "gpus_per_node": world // placement.num_nodes, "tokens_per_rank": plan.num_tokens // world,
        "capacity": plan.capacity, "bytes_per_token": bytes_per_token, "routed": routed_count,
        "kept": plan.num_kept, "dropped": plan.num_dropped,
        "drop_fraction": plan.num_dropped / max(routed_count, 1),
        "local_bytes": plan.local_bytes(bytes_per_token), "remote_bytes": plan.remote_bytes(bytes_per_token),
        "inter_node_bytes": plan.inter_node_bytes(bytes_per_token),
        "inter_node_bytes_dedup": _inter_node_token_nodes(plan) * bytes_per_token,
        "experts_table": [
            {"expert": e, "rank": int(placement.expert_to_rank[e]), "node": int(placement.expert_to_node[e]),
             "routed": int(routed_per_expert[e]), "kept": int(plan.tokens_per_expert[e]),
             "dropped": int(dropped_per_expert[e])} for e in range(placement.num_experts)],
        "traffic_bytes": traffic.tolist(),
    }


def _inter_node_token_nodes(plan: DispatchPlan) -> int:
    """Distinct (token, destination node) pairs of the kept choices whose node is not the token's own.

    >>> from lshsim.dispatch import RouterConfig, contiguous_placement, route
    >>> placement = contiguous_placement(4, 4, 2)          # experts 0, 1 on node 0; 2, 3 on node 1
    >>> logits = torch.tensor([[4.0, 0, 4.0, 4.0], [4.0, 4.0, 0, 0]])
    >>> plan = route(RouterConfig("topk", k=2, capacity_factor=None), placement, logits=logits,
    ...              token_rank=torch.tensor([0, 0]))
    >>> _inter_node_token_nodes(plan)                     # token 0's two copies to node 1 cross once
    1
    """
    if plan.expert_index.numel() == 0:
        return 0
    to_node = plan.placement.expert_to_node[plan.expert_index.clamp(min=0)]          # (T, k)
    own = plan.placement.rank_to_node[plan.token_rank].unsqueeze(1)                    # (T, 1)
    crossing = plan.kept & (plan.expert_index >= 0) & (to_node != own)                # (T, k)
    tokens = torch.arange(plan.expert_index.shape[0], device=crossing.device).unsqueeze(1).expand_as(crossing)
    pairs = tokens[crossing] * plan.placement.num_nodes + to_node[crossing]
    return int(torch.unique(pairs).numel())

