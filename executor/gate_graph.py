"""The gate's index work under one CUDA graph: routing decisions and the send order in one launch.

On a GPU the gate's arithmetic is tiny (a (T, d) x (d, E) product and sorts of T*k integers) but
it is ~70 small kernels; launched one by one from Python their launch cost (5-8 us each) is the
gate's time. Everything of it that carries no gradient (`route_on_rank` under no_grad: top-k,
capacity slots, drops; `choice_order`; the inverse permutation) makes no host synchronisation, so
it is captured once per input shape into a `torch.cuda.CUDAGraph` and replayed: one launch.

What carries a gradient runs eagerly around the replay, with the functions the routers use
(`topk_gate_weight`, `grap_scores`), so the gate weights and their gradients are exactly those of
`route_on_rank`: the replay returns the same plan, field for field (tests/test_moe_ops.py).

The graph's outputs live in static buffers that every replay overwrites; a call returns copies
(one kernel each), so plans of earlier calls stay valid, or, with copy_outputs=False (the layer's
"fast" path: a kernel launch costs ~20 us of host time on the benchmark's VMs), the buffers
themselves, valid until the next call.

Off a GPU (or with `enabled=False`) the same function runs eagerly: the CPU tests exercise the code
that is captured.
"""
from __future__ import annotations

import sys

import torch

from lshsim.cuda_graph import capture
from lshsim.dispatch import DispatchPlan, Placement, RouterConfig
from lshsim.dispatch.routers import SYNC_FREE_ROUTERS, get_router, route_on_rank
from lshsim.executor.moe_ops import choice_order, gather_choices, gather_choices_grad, inverse_permutation

__all__ = ["GraphedRouting", "GraphedGate", "GraphedGather", "CapturedFunction"]



class CapturedFunction:
    """fn(**tensors) -> (a tensor or a tuple of tensors, host metadata), replayed from one CUDA graph per input
    signature (names, shapes, dtypes). fn must make no host synchronisation and return metadata
    that depends only on the signature. A call copies the inputs into the graph's static inputs,
    replays, and returns a copy of the outputs (one kernel each). Off a GPU, or when `enabled` is False,
    fn runs eagerly. A capture that fails (an operation that cannot be captured) is reported once
    on stderr and the function runs eagerly from then on."""

    #: captures that read an aliased input in place, per function; past it, aliased inputs are copied
    MAX_ALIASED_CAPTURES = 2

    def __init__(self, fn, enabled: bool = True, name: str = "function", copy_outputs: bool = True,
                 alias: tuple = ()) -> None:
        self.fn, self.enabled, self.name = fn, enabled, name
        #: False: a call returns the graph's static outputs themselves (no kernel), valid until the next call
        self.copy_outputs = copy_outputs
        #: inputs the graph reads where the caller's tensor lives (no copy per call): the first
        #: capture keeps the caller's tensor (so its memory is never handed to another tensor while
        #: the graph exists) and a later call whose tensor starts at that address, with the same
        #: shape and strides, replays without copying; other storage gets a capture of its own
        #: (at most MAX_ALIASED_CAPTURES), then captures on private buffers that calls copy into
        self.alias = tuple(alias)
        self._aliased_captures = 0
        self._graphs: dict = {}
        self.replays = 0

    def _capture(self, tensors: dict, params: dict, aliased: tuple = ()):
        static = {name: value.detach() if name in aliased else value.detach().clone()
                  for name, value in tensors.items()}
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # see GraphedGate: no cudaFree inside a capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the capture (allocator, lazy kernel loading)
                self.fn(**static, **params)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with capture(graph, capture_error_mode="thread_local"):  # NCCL watchdog threads query events
            flat, meta = self.fn(**static, **params)
        return graph, static, flat, meta

    def __call__(self, params: dict | None = None, **tensors):
        """fn(**tensors, **params); params: host values (part of the signature)."""
        params = params or {}
        device = next(iter(tensors.values())).device
        if not (self.enabled and device.type == "cuda"):
            return self.fn(**tensors, **params)
        signature = (tuple((name, tuple(value.shape), value.dtype) for name, value in sorted(tensors.items())),
                     tuple(sorted(params.items())))
        aliased = tuple(name for name in self.alias if name in tensors)
        key = signature
        if aliased:  # the aliased inputs' addresses and strides are part of the key
            key = signature + (tuple((name, tensors[name].data_ptr(), tuple(tensors[name].stride()))
                                     for name in aliased),)
            if key not in self._graphs and self._aliased_captures >= self.MAX_ALIASED_CAPTURES:
                key, aliased = signature, ()  # private buffers, copied into
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(tensors, params, aliased)
                self._aliased_captures += bool(aliased)
            except RuntimeError as error:  # not capturable here: eager from now on, said once
                print(f"lshsim: {self.name} runs without a CUDA graph ({str(error).splitlines()[0]})",
                      file=sys.stderr)
                torch.cuda.synchronize()
                self.enabled = False
                return self.fn(**tensors, **params)
        graph, static, out, meta = self._graphs[key]
        for name, value in tensors.items():
            if name not in aliased:
                static[name].copy_(value.detach())
        graph.replay()
        self.replays += 1
        if not self.copy_outputs:
            return out, meta
        if isinstance(out, tuple):
            return tuple(o.clone() for o in out), meta
        return out.clone(), meta


def route_indices(config: RouterConfig, placement: Placement, rank: int, position: torch.Tensor,
                  inputs: dict, bias: torch.Tensor | None = None, with_order: bool = True,
                  sink: torch.Tensor | None = None) -> dict:
    """The index work of one rank's routing (no gradient): expert_index, gate_weight, slot, kept,
    tokens_per_expert, capacity, the send order (order, inv, token_of_row, counts), and `flat`,
    one int64 tensor holding expert_index, slot, order, inv (T*k each), tokens_per_expert,
    counts (E each), token_of_row (T*k), in that order.

    bias: (E,) float32 added to `inputs["logits"]` in float32 (router logits = logits.float() +
    bias; the logits may be the gate GEMM's 16-bit output). with_order=False: the caller needs no
    send order (LSH-MoE orders by bucket); the fused path then skips it and order, inv and
    token_of_row are None. sink: an (E + 1,) int64 buffer that also receives the kept rows per
    position and their sum (the split-size exchange's input).

    The fused Triton kernels (`lshsim.dispatch.fused_routing`, four kernels) for topk and locmoe
    with drop_policy "position" where Triton runs; `route_on_rank` + `choice_order` (about 60
    kernels) otherwise. Both give the same result (tests/test_fused_routing.py).
    """
    from lshsim.dispatch import fused_routing
    from lshsim.dispatch.routers import compute_capacity, locmoe_selection

    source = next(iter(inputs.values()))
    num_tokens = source.shape[0]
    with torch.no_grad():
        if fused_routing.eligible(config.name, config.drop_policy, placement.num_experts, config.k, source.device):
            capacity = compute_capacity(num_tokens, config.k, placement.num_experts, config.capacity_factor)
            if config.name == "topk":
                out = fused_routing.fused_topk_route(inputs["logits"], None, config.k, capacity, position, bias=bias,
                                                     with_order=with_order, sink=sink)
            else:
                token_rank = torch.full((num_tokens,), rank, dtype=torch.int64, device=source.device)
                router_logits, selection = locmoe_selection(inputs["hidden"], placement, config.locality_bonus,
                                                            token_rank, None)
                out = fused_routing.fused_topk_route(selection, router_logits, config.k, capacity, position,
                                                     with_order=with_order, sink=sink)
            out["capacity"] = capacity
            return out
        if bias is not None and "logits" in inputs:
            inputs = {**inputs, "logits": inputs["logits"].float() + bias}
        plan = route_on_rank(config, placement, rank, **inputs)
        order, counts = choice_order(plan.expert_index, plan.slot, plan.kept, position, plan.capacity)
        inv = inverse_permutation(order)
        token_of_row = torch.div(order, plan.num_choices, rounding_mode="floor")
        flat = torch.cat([plan.expert_index.reshape(-1), plan.slot.reshape(-1), order, inv, plan.tokens_per_expert,
                          counts, token_of_row])
        if sink is not None:
            sink.copy_(torch.cat([counts, counts.sum().reshape(1)]))
        return {"expert_index": plan.expert_index, "gate_weight": plan.gate_weight.float(), "slot": plan.slot,
                "kept": plan.kept, "tokens_per_expert": plan.tokens_per_expert, "capacity": plan.capacity,
                "order": order, "inv": inv, "token_of_row": token_of_row, "counts": counts, "flat": flat}


class GateWeights(torch.autograd.Function):
    """The gate weights of a top-k plan (`topk_gate_weight` of the router logits), values given,
    gradient computed here: forward returns `values`; backward maps dL/dw (T, k) to the router's
    input.

    source: topk: the logits without the bias (any float dtype; router logits = source + bias);
    locmoe: the GrAP group means (router logits = relu(source)). With l the router logits and w the
    weights: k = 1, w = softmax(l)_e, dl = g w (onehot_e - softmax(l)); k > 1, w = softmax(l[idx]),
    dl[idx] = w (g - sum(w g)), 0 elsewhere; locmoe multiplies by relu' (source > 0).
    """

    @staticmethod
    def forward(ctx, source, values, expert_index, router, bias):
        ctx.save_for_backward(source, expert_index)
        ctx.router, ctx.bias = router, bias
        return values.view_as(values)

    @staticmethod
    def backward(ctx, grad):
        source, expert_index = ctx.saved_tensors
        if ctx.router == "locmoe":
            logits = torch.relu(source.float())
        else:
            logits = source.float() if ctx.bias is None else source.float() + ctx.bias
        grad = grad.float()
        if expert_index.shape[1] == 1:
            probs = torch.softmax(logits, dim=1)  # (T, E)
            weight = probs.gather(1, expert_index)  # (T, 1)
            scaled = grad * weight  # (T, 1)
            dlogits = (-scaled * probs).scatter_add_(1, expert_index, scaled)  # (T, E)
        else:
            weight = torch.softmax(logits.gather(1, expert_index), dim=1)  # (T, k)
            scaled = grad * weight
            chosen = scaled - weight * scaled.sum(dim=1, keepdim=True)  # (T, k)
            dlogits = torch.zeros_like(logits).scatter_add_(1, expert_index, chosen)  # (T, E)
        if ctx.router == "locmoe":
            dlogits = dlogits * (source > 0)
        return dlogits.to(source.dtype), None, None, None, None


class CachedCast(torch.autograd.Function):
    """weight.to(cast.dtype) where `cast` already holds those values (filled outside the graph):
    forward returns `cast` (no kernel); backward is `.to`'s (the gradient converted to the
    weight's dtype), so the gradient is the one the cast inside the graph gave."""

    @staticmethod
    def forward(ctx, weight, cast):
        ctx.dtype = weight.dtype
        return cast.view_as(cast)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtype), None


class GraphedRouting:
    """route_on_rank + choice_order + inverse permutation for one router on one rank.

    call(inputs) -> (plan, order, inv, counts); `inputs` as for route_on_rank (logits, hidden or
    token_ids). Captured per (input shape, dtype) on CUDA for the routers in SYNC_FREE_ROUTERS;
    other routers, CPU tensors and `enabled=False` run eagerly.
    """

    def __init__(self, config: RouterConfig, placement: Placement, rank: int, position: torch.Tensor,
                 enabled: bool = True, bias: torch.Tensor | None = None, copy_outputs: bool = True) -> None:
        self.config, self.placement, self.rank, self.position = config, placement, rank, position
        self.bias = bias  # added to the logits inside the graph (linear-gate routers)
        self._token_rank: dict = {}
        #: copy_outputs=False: plans and orders are the graph's static outputs, valid until the next call
        self.captured = CapturedFunction(self._indices, enabled and config.name in SYNC_FREE_ROUTERS, "routing",
                                         copy_outputs=copy_outputs)
        self.segments = CapturedFunction(self._segments, enabled, "LSH bucketing", copy_outputs=copy_outputs)
        #: the token hash, the bucketing and the centroids as one graph (`lsh_segments(tokens=...)`); the
        #: tokens and the plan's expert_index and kept (the LSH gate graph's static outputs) read in place
        self.segments_hashed = CapturedFunction(self._segments_hashed, enabled, "LSH hash and bucketing",
                                                copy_outputs=copy_outputs,
                                                alias=("tokens", "expert_index", "kept"))
        #: (LSHConfig, LSHProjection) of `segments_hashed` (set by the layer)
        self.lsh_hash = None
        #: the centroids the last `lsh_segments(tokens=...)` computed in its graph (static), or None
        self.last_means = None

    @property
    def replays(self) -> int:
        """Calls that ran as a graph replay (the benchmark reports it)."""
        return self.captured.replays

    # -- the captured functions: integers only -------------------------------------------------
    def _router_inputs(self, inputs: dict) -> dict:
        if "logits" in inputs and self.bias is not None:
            return {"logits": inputs["logits"].float() + self.bias}
        return inputs

    def _indices(self, with_order: bool = True, **inputs) -> tuple[tuple[torch.Tensor, ...], tuple[int, int]]:
        """(flat int64: expert_index, slot, order, inv (T*k each), tokens_per_expert, counts (E each),
        token of each send row (T*k); kept (T, k) bool; gate weights (T, k) float32); and (k, capacity).
        The bias is added inside (`route_indices`); with_order=False leaves order, inv and the
        token of each send row unset on the fused path."""
        with torch.no_grad():
            r = route_indices(self.config, self.placement, self.rank, self.position, inputs, bias=self.bias,
                              with_order=with_order)
        return (r["flat"], r["kept"], r["gate_weight"]), (r["expert_index"].shape[1], r["capacity"])

    def __call__(self, inputs: dict, order: bool = True) -> tuple[DispatchPlan, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor, torch.Tensor | None]:
        """(plan, order, inv, counts, token of each send row (order // k) or None). order=False: the
        caller needs no send order (LSH-MoE: `lsh_segments` orders by bucket); order, inv and the
        token of each send row are then None for the routers in SYNC_FREE_ROUTERS."""
        kind = get_router(self.config.name).input_kind
        if inputs.get(kind) is None:
            raise ValueError(f"router {self.config.name!r} reads {kind}, which was not given")
        inputs = {kind: inputs[kind]}  # only what the router reads is copied into the graph
        device = next(iter(inputs.values())).device
        if self.config.name not in SYNC_FREE_ROUTERS:  # expert_choice, plugins: route_on_rank as it is
            plan = route_on_rank(self.config, self.placement, self.rank, **self._router_inputs(inputs))
            order, counts = choice_order(plan.expert_index, plan.slot, plan.kept, self.position, plan.capacity)
            return plan, order, inverse_permutation(order), counts, None
        (flat, kept, weight_values), (k, capacity) = self.captured({"with_order": bool(order)}, **inputs)
        source = next(iter(inputs.values()))
        num_tokens = source.shape[0]
        num_experts = self.placement.num_experts
        rows = num_tokens * k
        expert_index, slot, order_, inv, rest, token_of_row = torch.split(flat, [rows] * 4 + [2 * num_experts, rows])
        if not order:
            order_ = inv = token_of_row = None
        expert_index, slot = expert_index.view(num_tokens, k), slot.view(num_tokens, k)
        tokens_per_expert, counts = rest[:num_experts], rest[num_experts:]
        # the gate weights' gradient, by hand (GateWeights): the values come from the graph
        if self.config.name == "hash":
            gate_weight = weight_values
        else:
            gate_weight = GateWeights.apply(source, weight_values, expert_index, self.config.name, self.bias)
        if num_tokens not in self._token_rank:
            self._token_rank[num_tokens] = torch.full((num_tokens,), self.rank, dtype=torch.int64, device=device)
        plan = DispatchPlan(expert_index=expert_index, gate_weight=gate_weight, slot=slot, kept=kept,
                            tokens_per_expert=tokens_per_expert, capacity=capacity, placement=self.placement,
                            token_rank=self._token_rank[num_tokens], router_logits=None)
        return plan, order_, inv, counts, token_of_row

    # -- LSH-MoE: the (destination expert position, bucket) segments of the kept choices ------
    def _segments(self, expert_index: torch.Tensor, kept: torch.Tensor, bucket: torch.Tensor | None = None, *,
                  span: int) -> tuple[torch.Tensor, tuple]:
        from lshsim.dispatch import lsh_fast

        with torch.no_grad():
            num_tokens, k = expert_index.shape
            num_experts = self.placement.num_experts
            if lsh_fast.choice_segments_eligible(num_tokens * k, num_experts, span, expert_index.device):
                # a few kernels (keys, sort, merge, run numbering) instead of ~60 torch kernels: the
                # graph's launch was ~200 us of host time on the H200 machines (run-lshlayer11g)
                return lsh_fast.choice_segments(expert_index, kept, bucket, self.position, span, num_experts), None
            flat_position = self.position[expert_index.clamp(min=0)].reshape(-1)  # (T*k,)
            if bucket is None:  # finest resolution: every choice its own bucket
                bucket_of_choice = torch.arange(num_tokens * k, device=expert_index.device)
            else:
                bucket_of_choice = bucket.repeat_interleave(k)  # (T*k,) a token's bucket, for every choice
            segs = lsh_fast.segments(flat_position, bucket_of_choice, kept.reshape(-1), span,
                                     self.placement.num_experts)
            inv = inverse_permutation(segs.order)
            counts = segs.segments_per_group(self.placement.num_experts)  # (E,) centroids per position
            token_of_row = torch.div(segs.order, k, rounding_mode="floor")  # (T*k,)
            flat = torch.cat([segs.order, inv, token_of_row, segs.seg_of_row, segs.seg_start, segs.seg_count,
                              segs.seg_group, counts, segs.num_segments.reshape(1), segs.num_valid.reshape(1)])
        return flat, None

    def _segments_hashed(self, expert_index: torch.Tensor, kept: torch.Tensor, tokens: torch.Tensor, *,
                         span: int) -> tuple[tuple[torch.Tensor, torch.Tensor], None]:
        """(flat of `_segments`, means): the hash kernel, the bucketing, and the segment means of
        the send rows read from the tokens through the token of each sorted row (the rows past the
        last segment not written): the mean kernel's sums of `segment_mean` over the gathered rows,
        in the same order."""
        from lshsim.dispatch import lsh_fast

        config, projection = self.lsh_hash
        with torch.no_grad():
            bucket = lsh_fast.token_buckets(tokens, config, projection)  # (T,) the hash kernel on a GPU
            flat, _ = self._segments(expert_index, kept, bucket, span=span)
            segs, _, _, _, token_of_row = self._split_segments(flat, expert_index.numel())
            means = lsh_fast.segment_mean_of(tokens, segs, token_of_row)
        return (flat, means), None

    def _split_segments(self, flat: torch.Tensor, rows: int):
        from lshsim.dispatch.lsh_fast import Segments

        num_experts = self.placement.num_experts
        order, inv, token_of_row, seg_of_row, seg_start, seg_count, seg_group, rest = torch.split(
            flat, [rows] * 7 + [num_experts + 2])
        counts, num_segments, num_valid = rest[:num_experts], rest[num_experts:num_experts + 1], rest[-1:]
        segs = Segments(order=order, seg_of_row=seg_of_row, seg_start=seg_start, seg_count=seg_count,
                        seg_group=seg_group, num_segments=num_segments, num_valid=num_valid)
        return segs, order, inv, counts, token_of_row

    def lsh_segments(self, plan: DispatchPlan, bucket: torch.Tensor | None, span: int,
                     tokens: torch.Tensor | None = None):
        """(Segments, order, inv, counts, token of each send row) of the plan's kept choices keyed by (position, bucket):
        one graph replay on a GPU. bucket: (T,) int64 bucket id of every token, or None for the
        finest resolution (span T*k). tokens (T, d) instead of bucket: the tokens are hashed
        (`lsh_fast.token_buckets` with `lsh_hash`) inside the same graph, read where they live, and
        the same graph computes the centroids (the segment means of the send rows, read from the
        tokens): `last_means` (M, d), valid until the next call (None after a call without tokens)."""
        tensors = {"expert_index": plan.expert_index, "kept": plan.kept}
        means = None
        if tokens is not None:
            if self.lsh_hash is None:
                raise ValueError("lsh_segments(tokens=...) needs lsh_hash = (LSHConfig, LSHProjection)")
            tensors["tokens"] = tokens.detach()
            (flat, means), _ = self.segments_hashed({"span": span}, **tensors)
        else:
            if bucket is not None:
                tensors["bucket"] = bucket
            flat, _ = self.segments({"span": span}, **tensors)
        self.last_means = means
        return self._split_segments(flat, plan.num_tokens * plan.num_choices)


class _GateEntry:
    """One captured gate (one input signature): the forward and backward replays, the static
    inputs, outputs and gradient buffers, and the plan's views of the static outputs, built once."""

    __slots__ = ("static_in", "aliased", "forward", "backward", "outputs", "diff", "grad_out", "grad_in",
                 "wants_grad", "k", "capacity", "fields", "order", "inv", "counts", "graphs", "generation",
                 "ptrs", "flags", "any_flag", "weight_at", "send_at")

    def same_call(self, args: tuple, grad_mode: bool) -> bool:
        """Whether a call with `args` in `grad_mode` replays this entry as it is: an entry captured on
        the caller's tensors (`aliased`), the same storage, shape, dtype and gradient flags, the same
        grad mode. Then nothing is copied and the key of the call need not be built."""
        if not self.aliased or (grad_mode and self.any_flag) != self.wants_grad:
            return False
        for a, ptr, flag in zip(args, self.ptrs, self.flags):
            if a.data_ptr() != ptr or a.requires_grad is not flag:
                return False
        x, static = args[0], self.static_in[0]
        return x.shape == static.shape and x.dtype == static.dtype

    def replay(self) -> None:
        """The forward replay; `generation` counts them, so a backward can tell that a later forward
        has overwritten what its own forward left in the static buffers."""
        self.generation = getattr(self, "generation", 0) + 1
        self.forward()


class _Replay(torch.autograd.Function):
    """The autograd node of one forward replay of a captured gate, one backward replay for its gradient.

    The caller has replayed the forward already (`GraphedGate._call_fast`: the GPU starts on the gate
    before the host builds this node). forward(entry, *inputs): returns the differentiable static
    outputs (send rows, gate weights) as detached views: valid until the next forward. backward:
    the incoming gradients copied into the static gradient buffers where their storage differs, the
    backward replayed, the static input gradients returned (as torch.cuda.make_graphed_callables
    does: a forward's backward must run before the next forward's replay overwrites what it saved)."""

    @staticmethod
    def forward(ctx, entry, *inputs):
        ctx.entry, ctx.generation = entry, entry.generation
        return tuple(entry.outputs[i].detach() for i in entry.diff)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        entry = ctx.entry
        if entry.generation != ctx.generation:
            raise RuntimeError(
                "lshsim executor: the graphed gate's backward ran after a later forward of the same shape had "
                "replayed the graph and overwritten the activations it needs (two forwards before one backward, "
                "as in pipeline schedules). Run each backward before the next "
                "forward, or use the eager gate: LSHSIM_GATE_PATH=legacy")
        for static, grad in zip(entry.grad_out, grads):
            if static.data_ptr() != grad.data_ptr():
                static.copy_(grad)
        entry.backward()
        return (None,) + tuple(None if g is None else g.detach() for g in entry.grad_in)


def _replay_node(entry, *inputs):
    """`_Replay.apply(entry, *inputs)` through autograd's C entry point: `Function.apply`'s Python
    wrapper (its functorch check and a generator over the arguments) is host time on the gate's
    path; with functorch transforms active the wrapper runs as usual."""
    if torch._C._are_functorch_transforms_active():
        return _Replay.apply(entry, *inputs)
    return _REPLAY_APPLY(entry, *inputs)


_REPLAY_APPLY = super(torch.autograd.Function, _Replay).apply  # the C apply, bound to _Replay


class GraphedGate:
    """The whole gate of a forward as one CUDA graph forward and one backward: logits, routing,
    send order, gate weights and (gather=True) the gathered send rows, for the routers in
    SYNC_FREE_ROUTERS. gather=False (LSH-MoE, which gathers its rows later in bucket order): the
    logits, routing and gate weights only, no send order.

    call(x, token_ids) -> (plan, order, inv, counts, send_x); order, inv and send_x are None with
    gather=False. One graph per (tokens, dtype, which inputs require a gradient, grad mode). Off a
    GPU the same function runs eagerly under autograd. A capture that fails is reported once on
    stderr; the caller then uses its eager path (`available` turns False).

    copy_outputs=False (the layer's "fast" path): a hand-written autograd function around one
    forward replay and one backward replay (`_Replay`). The first capture reads the caller's x
    (and token ids) where they live: a later call with the same storage copies nothing (the
    benchmark's and a training step's tokens keep their storage); a call with other storage makes
    the gate capture again once, on buffers of its own, and copy into them from then on (it never
    writes into a caller's tensor). The gate weight (a parameter: updated in place, never
    reallocated) is read where it lives. Outputs are the graph's static buffers (the plan, order,
    inverse, counts and the send rows), valid until the next call; the plan's views of them are
    made once per capture. Without a gradient (grad mode off, or no input requiring one) the
    forward graph is replayed directly. `sink`: an (E + 1,) int64 buffer the graph also writes the
    kept rows per expert position and their sum into (the split-size exchange's input,
    `comm.CountExchange`). Like make_graphed_callables' graphs, the backward reads x as it is at
    backward time: x must not change in place between a forward and its backward.

    copy_outputs=True (the "legacy" path, `LSHSIM_GATE_PATH=legacy`): `torch.cuda.make_graphed_callables`,
    x and the weight copied in, three copies out.

    emulate=True (tests only): the fast path's bookkeeping (static buffers, aliasing, recapture,
    `_Replay`) with each "replay" running the captured function eagerly on the static buffers and
    copying its results into the static outputs, so that a CPU test exercises it.
    """

    def __init__(self, routing: GraphedRouting, gate_inputs, gate_weight: torch.Tensor | None,
                 enabled: bool = True, copy_outputs: bool = True, sink: torch.Tensor | None = None,
                 gather: bool = True, emulate: bool = False, cast_weight: bool = False) -> None:
        self.routing = routing
        self.gate_inputs = gate_inputs  # (x, weight) -> the router's inputs, the logits without the bias (routing adds it)
        self.weight = gate_weight
        self.available = enabled and routing.config.name in SYNC_FREE_ROUTERS
        self.copy_outputs = copy_outputs
        self.sink = sink
        self.gather = gather
        self.emulate = emulate
        self._graphed: dict = {}
        self._entries: dict = {}
        #: the entry of the last call when it reads the caller's tensors in place: a call that
        #: `same_call`s it replays at once, without building its key
        self._hot: _GateEntry | None = None
        self.replays = 0
        self.captures = 0
        #: cast_weight=True (fast path): where the tokens are 16-bit and the gate weight is not, the
        #: weight's 16-bit copy lives outside the graph (`_casts`, one buffer per dtype), refilled by
        #: one eager kernel only when the weight's storage or version changed (an optimizer step),
        #: and the graph reads it (`CachedCast`): one node fewer per replay, same values and gradients
        self.cast_weight = cast_weight
        self._casts: dict = {}
        #: (dtype) -> (data_ptr, version) of the weight the buffer was last filled from
        self._cast_of: dict = {}
        #: the buffer `_fn` reads in place of weight.to(x.dtype) (set per call on the fast path)
        self._cast_in_use: torch.Tensor | None = None
        #: eager refills of the cast buffers (tests and the benchmark read it)
        self.cast_refills = 0

    def _casting(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (self.cast_weight and w is not None and self.routing.config.name != "hash"
                and x.dtype in (torch.bfloat16, torch.float16) and w.dtype != x.dtype)

    def _refresh_cast(self, x: torch.Tensor) -> torch.Tensor:
        """The weight's x.dtype copy, refilled (one eager kernel) when the weight changed since."""
        w = self.weight
        buffer = self._casts.get(x.dtype)
        if buffer is None:
            buffer = self._casts[x.dtype] = torch.empty(w.shape, dtype=x.dtype, device=w.device)
        stamp = (w.data_ptr(), w._version)
        if self._cast_of.get(x.dtype) != stamp:
            with torch.no_grad():
                buffer.copy_(w)
            self._cast_of[x.dtype] = stamp
            self.cast_refills += 1
        return buffer

    def _fn(self, x: torch.Tensor, *rest: torch.Tensor):
        config = self.routing.config
        if config.name == "hash":
            router_inputs = {"token_ids": rest[0]}
        else:
            weight = rest[0] if rest else None
            cast = self._cast_in_use
            if cast is not None and weight is not None and cast.dtype == x.dtype:
                weight = CachedCast.apply(weight, cast)  # weight.to(x.dtype), filled outside the graph
            router_inputs = self.gate_inputs(x, weight)
        bias = self.routing.bias if config.name == "topk" else None  # added in float32 inside the routing
        with torch.no_grad():
            detached = {name: value.detach() for name, value in router_inputs.items()}
            # the sink (the exchange's input: kept rows per position, then their sum) is written
            # by the routing itself
            r = route_indices(config, self.routing.placement, self.routing.rank, self.routing.position, detached,
                              bias=bias, sink=self.sink, with_order=self.gather)
            k = r["expert_index"].shape[1]
            rows = r["expert_index"].numel()
            flat = r["flat"][:4 * rows + 2 * self.routing.placement.num_experts]  # a view: no copy
        if config.name == "hash":
            gate_weight = r["gate_weight"]
        else:  # the values of the index work, the gradient by hand: as GraphedRouting does
            source = router_inputs["logits"] if config.name == "topk" else router_inputs["hidden"]
            gate_weight = GateWeights.apply(source, r["gate_weight"], r["expert_index"], config.name, bias)
        self._meta = (k, r["capacity"])
        if not self.gather:
            return gate_weight, flat, r["kept"]
        send_x = gather_choices(x, r["order"], r["inv"], k, r["token_of_row"])  # (T*k, d), fp32 sums backward
        return send_x, gate_weight, flat, r["kept"]

    def _args(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple:
        if self.routing.config.name == "hash":
            return x, token_ids
        return (x,) if self.weight is None else (x, self.weight)  # locmoe's GrAP gate has no weight

    def _samples(self, args: tuple) -> tuple:
        """The legacy graph's static inputs: copies of x (and token ids) and of the weight."""
        return tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)

    # -- the plan from the outputs ---------------------------------------------------------------
    def _plan(self, num_tokens: int, k: int, capacity: int, gate_weight, flat, kept, device):
        num_experts = self.routing.placement.num_experts
        rows = num_tokens * k
        expert_index, slot, order, inv, rest = torch.split(flat, [rows] * 4 + [2 * num_experts])
        tokens_per_expert, counts = rest[:num_experts], rest[num_experts:]
        if num_tokens not in self.routing._token_rank:
            self.routing._token_rank[num_tokens] = torch.full((num_tokens,), self.routing.rank, dtype=torch.int64,
                                                              device=device)
        plan = DispatchPlan(expert_index=expert_index.view(num_tokens, k), gate_weight=gate_weight,
                            slot=slot.view(num_tokens, k), kept=kept, tokens_per_expert=tokens_per_expert,
                            capacity=capacity, placement=self.routing.placement,
                            token_rank=self.routing._token_rank[num_tokens], router_logits=None)
        if not self.gather:
            order = inv = None
        return plan, order, inv, counts

    def __call__(self, x: torch.Tensor, token_ids: torch.Tensor):
        args = self._args(x, token_ids)
        if (x.is_cuda or self.emulate) and not self.copy_outputs:
            return self._call_fast(x, args)
        self._cast_in_use = None  # the cast inside the function, as captured by the legacy path
        if x.is_cuda:
            return self._call_legacy(x, args)
        outputs = self._fn(*args)
        k, capacity = self._meta
        send_x = outputs[0] if self.gather else None
        gate_weight, flat, kept = outputs[-3:]
        plan, order, inv, counts = self._plan(x.shape[0], k, capacity, gate_weight, flat, kept, x.device)
        return plan, order, inv, counts, send_x

    def _call_legacy(self, x: torch.Tensor, args: tuple):
        key = (tuple(x.shape), x.dtype, tuple(a.requires_grad for a in args), torch.is_grad_enabled())
        if key not in self._graphed:
            samples = self._samples(args)
            # no cached blocks for the allocator to free during the capture (a cudaFree there
            # is an error that invalidates it)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            try:
                graphed = torch.cuda.make_graphed_callables(self._fn, samples, allow_unused_input=True)
            except Exception as error:  # not capturable here: the caller's eager path, said once
                print(f"lshsim: the gate runs without a CUDA graph ({str(error).splitlines()[0]})",
                      file=sys.stderr)
                torch.cuda.synchronize()
                self.available = False
                return None
            self._graphed[key] = (graphed, self._meta)
        graphed, (k, capacity) = self._graphed[key]
        outputs = graphed(*args)
        send_x = outputs[0] if self.gather else None
        gate_weight, flat, kept = outputs[-3:]
        flat, kept, gate_weight = flat.clone(), kept.clone(), gate_weight.clone()
        self.replays += 1
        plan, order, inv, counts = self._plan(x.shape[0], k, capacity, gate_weight, flat, kept, x.device)
        return plan, order, inv, counts, send_x

    # -- the fast path: one forward replay, one backward replay ------------------------------------
    def _capture(self, args: tuple, alias: bool, wants_grad: bool) -> _GateEntry:
        """Capture the gate on static inputs: the caller's tensors themselves (alias=True) or
        copies of them; the gate weight always where it lives."""
        entry = _GateEntry()
        static = []
        for i, a in enumerate(args):
            keep = alias or (self.weight is not None and a is self.weight)
            s = a.detach() if keep else a.detach().clone()
            static.append(s.requires_grad_(wants_grad and a.requires_grad))
        entry.static_in, entry.aliased, entry.wants_grad = tuple(static), alias, wants_grad
        needs = [s for s in entry.static_in if s.requires_grad]
        if self.emulate:
            outputs = tuple(o.detach().clone() for o in self._fn(*entry.static_in))
        else:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # no cudaFree inside a capture
            pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up outside the capture (allocator, lazy kernel loading)
                    with torch.set_grad_enabled(wants_grad):
                        warm = self._fn(*entry.static_in)
                    diff = [o for o in warm if o.requires_grad]
                    if diff and needs:
                        torch.autograd.grad(diff, needs, [torch.empty_like(o) for o in diff], allow_unused=True)
                    del warm, diff
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            fwd = torch.cuda.CUDAGraph()
            with capture(fwd, pool=pool, capture_error_mode="thread_local"):
                with torch.set_grad_enabled(wants_grad):
                    outputs = self._fn(*entry.static_in)
            entry.graphs = [fwd]
        entry.outputs = tuple(outputs)
        k, capacity = self._meta
        entry.k, entry.capacity = k, capacity
        if self.emulate:
            differentiable = [i for i, o in enumerate(self._emulated_outputs(entry)) if o.requires_grad]
        else:
            differentiable = [i for i, o in enumerate(outputs) if o.requires_grad]
        entry.diff = tuple(differentiable) if wants_grad and needs else ()
        entry.grad_out = tuple(torch.empty_like(entry.outputs[i]) for i in entry.diff)
        entry.grad_in = tuple(None for _ in entry.static_in)
        entry.backward = None
        if entry.diff:
            if self.emulate:
                grads = [torch.zeros_like(s) if s.requires_grad else None for s in entry.static_in]
                entry.grad_in = tuple(grads)
            else:
                bwd = torch.cuda.CUDAGraph()
                diff = [outputs[i] for i in entry.diff]
                with capture(bwd, pool=pool, capture_error_mode="thread_local"):
                    grads = torch.autograd.grad(diff, needs, list(entry.grad_out), allow_unused=True)
                entry.graphs.append(bwd)
                it = iter(grads)
                entry.grad_in = tuple(next(it) if s.requires_grad else None for s in entry.static_in)
                entry.backward = bwd.replay
        if self.emulate:
            entry.forward = lambda: self._emulated_forward(entry)
            if entry.diff:
                entry.backward = lambda: self._emulated_backward(entry)
        else:
            entry.forward = entry.graphs[0].replay
            if not self.emulate:
                torch.cuda.synchronize()
        # the plan's views of the static outputs, once
        gate_weight, flat, kept = entry.outputs[-3:]
        num_tokens = args[0].shape[0]
        plan, order, inv, counts = self._plan(num_tokens, k, capacity, gate_weight.detach(), flat, kept,
                                              args[0].device)
        entry.fields = dict(plan.__dict__)
        entry.order, entry.inv, entry.counts = order, inv, counts
        # where the gate weights and the send rows are among _Replay's outputs (None: a static output)
        last = len(entry.outputs) - 3
        entry.weight_at = entry.diff.index(last) if last in entry.diff else None
        entry.send_at = entry.diff.index(0) if self.gather and 0 in entry.diff else None
        entry.ptrs = tuple(s.data_ptr() for s in entry.static_in)
        entry.flags = tuple(bool(a.requires_grad) for a in args)
        entry.any_flag = any(entry.flags)
        self.captures += 1
        return entry

    # the test double of a replay (emulate=True): the captured function, run eagerly on the static buffers
    def _emulated_outputs(self, entry: _GateEntry):
        with torch.set_grad_enabled(entry.wants_grad):
            return self._fn(*entry.static_in)

    def _emulated_forward(self, entry: _GateEntry) -> None:
        with torch.no_grad():
            for static, value in zip(entry.outputs, self._fn(*entry.static_in)):
                static.copy_(value)

    def _emulated_backward(self, entry: _GateEntry) -> None:
        outputs = self._emulated_outputs(entry)
        needs = [s for s in entry.static_in if s.requires_grad]
        grads = iter(torch.autograd.grad([outputs[i] for i in entry.diff], needs, list(entry.grad_out),
                                         allow_unused=True))
        for static, target in zip(entry.static_in, entry.grad_in):
            if static.requires_grad:
                grad = next(grads)
                target.copy_(grad if grad is not None else torch.zeros_like(target))

    def _entry(self, x: torch.Tensor, args: tuple, grad_mode: bool) -> _GateEntry | None:
        """The captured entry for this call's key (shapes, dtype, gradient flags, grad mode),
        captured here when there is none or when an entry on the caller's tensors meets other
        storage; None (and `available` False) when the capture fails."""
        wants_grad = grad_mode and any(a.requires_grad for a in args)
        key = (tuple(x.shape), x.dtype, tuple(a.requires_grad for a in args), wants_grad)
        entry = self._entries.get(key)
        if entry is not None and entry.aliased:
            # captured on the caller's tensors: a call with other storage must not write into them
            for static, value in zip(entry.static_in, args):
                if static.data_ptr() != value.data_ptr():
                    entry = None
                    break
        if entry is None:
            alias = key not in self._entries  # the first capture reads the caller's tensors; a second owns its inputs
            self._entries.pop(key, None)
            try:
                entry = self._capture(args, alias, wants_grad)
            except Exception as error:  # not capturable here: the caller's eager path, said once
                print(f"lshsim: the gate runs without a CUDA graph ({str(error).splitlines()[0]})",
                      file=sys.stderr)
                if not self.emulate:
                    torch.cuda.synchronize()
                self.available = False
                return None
            self._entries[key] = entry
        return entry

    def _call_fast(self, x: torch.Tensor, args: tuple):
        grad_mode = torch.is_grad_enabled()
        if self.cast_weight:
            self._cast_in_use = self._refresh_cast(x) if self._casting(x) else None
        entry = self._hot
        if entry is None or not entry.same_call(args, grad_mode):
            entry = self._entry(x, args, grad_mode)
            if entry is None:
                return None
            self._hot = entry if entry.aliased else None
            with torch.no_grad():  # the static inputs may be leaves that require a gradient
                for static, value in zip(entry.static_in, args):
                    if static.data_ptr() != value.data_ptr():
                        static.copy_(value)
        # the replay first, the autograd node after it: the GPU starts on the gate while the host
        # builds the node and the plan
        entry.replay()
        if entry.diff:
            outputs = _replay_node(entry, *args)
            gate_weight = entry.outputs[-3] if entry.weight_at is None else outputs[entry.weight_at]
            send_x = None if not self.gather else entry.outputs[0] if entry.send_at is None else outputs[entry.send_at]
        else:
            gate_weight = entry.outputs[-3]
            send_x = entry.outputs[0] if self.gather else None
        self.replays += 1
        plan = object.__new__(DispatchPlan)  # the fields validated once, at the capture
        plan.__dict__.update(entry.fields)
        object.__setattr__(plan, "gate_weight", gate_weight)
        return plan, entry.order, entry.inv, entry.counts, send_x


class _GatherNode(torch.autograd.Function):
    """The autograd node of a replayed gather (`GraphedGather`): forward returns the graph's static
    send rows (replayed by the caller) as a detached view; backward is `moe_ops.gather_choices`'
    (the k rows of a token summed in fp32, read back through inv)."""

    @staticmethod
    def forward(ctx, x, inv, k, rows):
        ctx.save_for_backward(inv)
        ctx.shape, ctx.k = x.shape, k
        return rows.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return gather_choices_grad(grad, inv, ctx.shape, ctx.k), None, None, None


class GraphedGather:
    """LSH-MoE's gather of the send rows in bucket order (`moe_ops.gather_choices`) as one CUDA graph
    replay: row i = x[token_of_row[i]], x and token_of_row read where they live (the layer's tokens
    and a static output of the LSH bucketing graph, whose storage stays put between forwards), the
    rows written into the graph's static output: valid until the next call on the same capture.
    The gradient is `gather_choices`' (`_GatherNode`, eager). One capture per (storage of x and of
    token_of_row, shapes, dtype), at most MAX_CAPTURES; past them, and off a GPU, on legacy paths
    (`enabled=False`) or with a non-contiguous x, `gather_choices` runs as before.

    Why: on the H200 VMs the eager gather's host time (index_select's allocation, its gather
    set-up and a kernel launch) held LSH-MoE's second gate piece open ~100 us on an idle GPU
    (run-gate11f, gate_phase_anatomy.py); a graph replay is one launch.

    emulate=True (tests only): the "replay" computes the same rows eagerly into the static buffer,
    so that a CPU test exercises the bookkeeping.
    """

    MAX_CAPTURES = 4

    def __init__(self, enabled: bool = True, emulate: bool = False) -> None:
        self.enabled = enabled
        self.emulate = emulate
        self._graphs: dict = {}
        self.replays = 0
        self.captures = 0

    def _capture(self, x: torch.Tensor, token_of_row: torch.Tensor):
        if self.emulate:
            rows = x.detach().index_select(0, token_of_row)

            def replay():
                torch.index_select(x.detach(), 0, token_of_row, out=rows)
            return (x, token_of_row, rows, replay)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # no cudaFree inside a capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture
                x.detach().index_select(0, token_of_row)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), capture(graph, capture_error_mode="thread_local"):
            rows = x.detach().index_select(0, token_of_row)
        torch.cuda.synchronize()
        # the caller's tensors are kept: their memory is never handed to another tensor while the graph exists
        return (x.detach(), token_of_row, rows, graph.replay, graph)

    def __call__(self, x: torch.Tensor, order: torch.Tensor, inv: torch.Tensor, k: int,
                 token_of_row: torch.Tensor) -> torch.Tensor:
        if not (self.enabled and (x.is_cuda or self.emulate) and token_of_row is not None and x.is_contiguous()):
            return gather_choices(x, order, inv, k, token_of_row)
        key = (x.data_ptr(), token_of_row.data_ptr(), x.shape, token_of_row.shape, x.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.MAX_CAPTURES:
                return gather_choices(x, order, inv, k, token_of_row)
            try:
                entry = self._capture(x, token_of_row)
            except Exception as error:  # not capturable here: eager from now on, said once
                print(f"lshsim: the LSH gather runs without a CUDA graph ({str(error).splitlines()[0]})",
                      file=sys.stderr)
                if not self.emulate:
                    torch.cuda.synchronize()
                self.enabled = False
                return gather_choices(x, order, inv, k, token_of_row)
            self._graphs[key] = entry
            self.captures += 1
        entry[3]()  # the replay: the GPU starts on the rows before the host builds the autograd node
        self.replays += 1
        rows = entry[2]
        if torch.is_grad_enabled() and x.requires_grad:
            return _GatherNode.apply(x, inv, k, rows)
        return rows.detach()
