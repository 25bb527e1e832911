"""The gate's index work under one CUDA graph: routing decisions and the send order in one launch.

On a GPU the gate's arithmetic is tiny (a (T, d) x (d, E) product and sorts of T*k integers) but
it is ~70 small kernels; launched one by one from Python their launch cost (5-8 us each) is the
gate's time. Everything of it that carries no gradient (`route_on_rank` under no_grad: top-k,
capacity slots, drops; `choice_order`; the inverse permutation) makes no host synchronisation, so
it is captured once per input shape into a `torch.cuda.CUDAGraph` and replayed: one launch.

What carries a gradient runs eagerly around the replay, with the functions the routers use
(`topk_gate_weight`, `grap_scores`), so the gate weights and their gradients are exactly those of
`route_on_rank`: the replay returns the same plan, field for field (tests/test_moe_ops.py).

The graph's outputs live in one static int64 buffer that every replay overwrites; a call returns
a copy (one kernel), so plans of earlier calls stay valid.

Off a GPU (or with `enabled=False`) the same function runs eagerly: the CPU tests exercise the code
that is captured.
"""
from __future__ import annotations

import torch

from lshsim.dispatch import DispatchPlan, Placement, RouterConfig
from lshsim.dispatch.routers import SYNC_FREE_ROUTERS, get_router, grap_scores, route_on_rank, topk_gate_weight
from lshsim.executor.moe_ops import choice_order, inverse_permutation

__all__ = ["GraphedRouting"]


class GraphedRouting:
    """route_on_rank + choice_order + inverse permutation for one router on one rank.

    call(inputs) -> (plan, order, inv, counts); `inputs` as for route_on_rank (logits, hidden or
    token_ids). Captured per (input shape, dtype) on CUDA for the routers in SYNC_FREE_ROUTERS;
    other routers, CPU tensors and `enabled=False` run eagerly.
    """

    def __init__(self, config: RouterConfig, placement: Placement, rank: int, position: torch.Tensor,
                 enabled: bool = True) -> None:
        self.config, self.placement, self.rank, self.position = config, placement, rank, position
        self.enabled = enabled and config.name in SYNC_FREE_ROUTERS
        self._graphs: dict = {}
        self.replays = 0  # how many calls ran as a graph replay (the benchmark reports it)

    # -- the captured function: integers only ------------------------------------------------
    def _indices(self, inputs: dict) -> tuple[torch.Tensor, int, int]:
        """One flat int64 vector: expert_index, slot, kept, order, inv (T*k each), tokens_per_expert,
        counts (E each); and (k, capacity)."""
        with torch.no_grad():
            plan = route_on_rank(self.config, self.placement, self.rank, **inputs)
            order, counts = choice_order(plan.expert_index, plan.slot, plan.kept, self.position, plan.capacity)
            inv = inverse_permutation(order)
            flat = torch.cat([plan.expert_index.reshape(-1), plan.slot.reshape(-1), plan.kept.reshape(-1).long(),
                              order, inv, plan.tokens_per_expert, counts])
        return flat, plan.num_choices, plan.capacity

    def _graph(self, inputs: dict):
        key = tuple((name, tuple(value.shape), value.dtype) for name, value in sorted(inputs.items()))
        if key not in self._graphs:
            static = {name: value.detach().clone() for name, value in inputs.items()}
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the capture (allocator, lazy init of kernels)
                    self._indices(static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                flat, k, capacity = self._indices(static)
            self._graphs[key] = (graph, static, flat, k, capacity)
        return self._graphs[key]

    def __call__(self, inputs: dict) -> tuple[DispatchPlan, torch.Tensor, torch.Tensor, torch.Tensor]:
        kind = get_router(self.config.name).input_kind
        if inputs.get(kind) is None:
            raise ValueError(f"router {self.config.name!r} reads {kind}, which was not given")
        inputs = {kind: inputs[kind]}  # only what the router reads is copied into the graph
        device = next(iter(inputs.values())).device
        if self.config.name not in SYNC_FREE_ROUTERS:  # expert_choice, plugins: route_on_rank as it is
            plan = route_on_rank(self.config, self.placement, self.rank, **inputs)
            order, counts = choice_order(plan.expert_index, plan.slot, plan.kept, self.position, plan.capacity)
            return plan, order, inverse_permutation(order), counts
        if self.enabled and device.type == "cuda":
            graph, static, flat_static, k, capacity = self._graph(inputs)
            for name, value in inputs.items():
                static[name].copy_(value.detach())
            graph.replay()
            flat = flat_static.clone()
            self.replays += 1
        else:
            flat, k, capacity = self._indices(inputs)
        num_tokens = next(iter(inputs.values())).shape[0]
        num_experts = self.placement.num_experts
        rows = num_tokens * k
        expert_index, slot, kept, order, inv, rest = torch.split(flat, [rows] * 5 + [2 * num_experts])
        expert_index, slot = expert_index.view(num_tokens, k), slot.view(num_tokens, k)
        kept = kept.view(num_tokens, k).bool()
        tokens_per_expert, counts = rest[:num_experts], rest[num_experts:]
        # the differentiable part, eagerly, with the routers' own functions
        if self.config.name == "hash":
            router_logits = None
            gate_weight = torch.ones(expert_index.shape, dtype=torch.float32, device=device)
        else:
            router_logits = inputs["logits"] if self.config.name == "topk" else grap_scores(
                inputs["hidden"], num_experts)
            gate_weight = topk_gate_weight(router_logits, expert_index)
        token_rank = torch.full((num_tokens,), self.rank, dtype=torch.int64, device=device)
        plan = DispatchPlan(expert_index=expert_index, gate_weight=gate_weight, slot=slot, kept=kept,
                            tokens_per_expert=tokens_per_expert, capacity=capacity, placement=self.placement,
                            token_rank=token_rank, router_logits=router_logits)
        return plan, order, inv, counts
