"""The distributed MoE layer: the plans of `lshsim.dispatch`, moved with real all-to-alls.

Every rank holds T tokens (T, d) and, by the placement, E/W experts. One forward (numbered as in
the code):

1. gate: logits = x W_gate + b (topk, expert_choice), the GrAP gate (locmoe) or token ids (hash);
   the router of `lshsim.dispatch` makes the rank's DispatchPlan (token_rank = this rank, so the
   capacity buffers are exactly those of a global plan). Kept choices are packed into one send
   buffer, ordered by destination expert in rank-major order (the experts of rank 0, then of rank
   1, ...) and by slot within an expert, so rows bound for one rank are contiguous.
2. lsh_compress (LSH-MoE only): per destination expert, `lshsim.dispatch.lsh.compress` replaces
   the rows by bucket centroids; the residuals x - c stay on the rank. On a GPU (16-bit, Triton) the
   kept rows are never gathered: the centroids come from x through the token of each row, and
   restore (7.) reads x the same way (`lsh_fast.centroids_of_tokens`, `lsh_fast.restore_tokens`).
3. other: the split sizes are exchanged (an all-to-all of E int64 counts per rank).
4. dispatch_a2a: `all_to_all_single` with the plan's variable splits (direct), or LocMoE's
   group-wise exchange: the intra-node part first, then the inter-node remainder.
5. expert: the received rows are grouped by local expert; each expert FFN runs on its rows:
   y = gelu(x W1) W2.
6. combine_a2a: the outputs return along the transposed splits.
7. lsh_restore (LSH-MoE only): E(x) ~= E(c) + (x - c) per token.
8. combine: y_t = sum over the token's kept choices of gate weight * expert output.

Autograd carries the backward through the same steps (the all-to-all's backward swaps the splits);
expert weight gradients end up on the rank that holds the expert.

`reference_moe` is the dense single-process version (all ranks' tokens on one process,
`lshsim.dispatch.reference.dispatch/combine`) that the tests compare with.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from lshsim.executor.comm import (CommContext, CommStats, CountExchange, align_ranks, all_to_all, exchange_counts,
                                  fake_fp8, mark)
from lshsim.executor.gate_graph import GraphedGate, GraphedGather, GraphedRouting
from lshsim.executor.moe_ops import combine_choices, expert_block, gather_choices
from lshsim.executor.timing import PhaseTimer
from lshsim.executor.workload import WorkloadConfig
from lshsim.dispatch import DispatchPlan, Placement, make_placement, route
from lshsim.dispatch import reference as dense
from lshsim.dispatch.lsh import LSHConfig, hash_codes, make_projection
from lshsim.dispatch.synthetic import dirichlet_popularity, tokens_around, unit_centres
from lshsim.sim.phases import backward_chain

__all__ = ["ExpertWeights", "GateParams", "expert_weights", "gate_params", "expert_ffn", "rank_inputs",
           "MoEContext", "MoEOutput", "DistributedMoE", "reference_moe", "placement_for", "VOCAB_SIZE",
           "resolve_dtype"]

VOCAB_SIZE = 50257
_INT64_LIMIT = 2 ** 63

#: the phases one forward of the layer times (`lshsim.sim.phases.PHASES` names); LSH adds two
_ACTIVE = frozenset({"gate", "other", "dispatch_a2a", "expert", "combine_a2a"})
_LSH_PHASES = frozenset({"lsh_compress", "lsh_restore"})
#: the gate and split-size exchange implementations: "fast" (the packed gate graph writing the
#: exchange's input, the exchange as one CUDA graph) or "legacy" (the gate graph copying its weight
#: in and three outputs out, the exchange eager): `LSHSIM_GATE_PATH` chooses, for before/after runs
GATE_PATHS = ("fast", "legacy")


def gate_path() -> str:
    """The gate path `LSHSIM_GATE_PATH` selects ("fast" when unset)."""
    value = os.environ.get("LSHSIM_GATE_PATH", "fast")
    if value not in GATE_PATHS:
        raise ValueError(f"environment variable LSHSIM_GATE_PATH={value!r}: expected one of {', '.join(GATE_PATHS)}")
    return value


def resolve_dtype(workload: WorkloadConfig, device: torch.device) -> torch.dtype:
    """bf16 on GPU and float32 on CPU for dtype 'auto'."""
    if workload.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[workload.dtype]


def placement_for(workload: WorkloadConfig, world_size: int, device: torch.device | None = None) -> Placement:
    """The workload's placement, its tensors on `device` (the plans index them with device tensors)."""
    workload.check_world(world_size)
    placement = make_placement(workload.placement, workload.num_experts, world_size,
                               workload.ranks_per_node(world_size))
    if device is None:
        return placement
    return Placement(placement.expert_to_rank.to(device), placement.rank_to_node.to(device))


# ---- parameters and inputs (seeded: identical in the distributed and the reference run) ---------
@dataclass(frozen=True)
class ExpertWeights:
    """FFN weights of some experts: w1 (n, d, d_ffn), w2 (n, d_ffn, d); expert_ids (n,)."""

    expert_ids: list[int]
    w1: torch.Tensor
    w2: torch.Tensor


def expert_weights(expert_ids: list[int], d_model: int, d_ffn: int, seed: int, device: torch.device,
                   dtype: torch.dtype, requires_grad: bool = True) -> ExpertWeights:
    """Expert e's weights from its own generator (seed, e) on `device`: the same on every rank.

    W1 ~ N(0, 1/d), W2 ~ N(0, 1/d_ffn) (unit-scale outputs for unit-scale inputs).
    """
    w1, w2 = [], []
    for expert in expert_ids:
        generator = torch.Generator(device=device).manual_seed(1_000_003 * (seed + 1) + 7919 * expert)
        w1.append(torch.randn(d_model, d_ffn, generator=generator, device=device) / math.sqrt(d_model))
        w2.append(torch.randn(d_ffn, d_model, generator=generator, device=device) / math.sqrt(d_ffn))
    shape1, shape2 = (0, d_model, d_ffn), (0, d_ffn, d_model)
    w1_t = (torch.stack(w1) if w1 else torch.zeros(shape1, device=device)).to(dtype)  # (n, d, d_ffn)
    w2_t = (torch.stack(w2) if w2 else torch.zeros(shape2, device=device)).to(dtype)  # (n, d_ffn, d)
    return ExpertWeights(list(expert_ids), w1_t.requires_grad_(requires_grad), w2_t.requires_grad_(requires_grad))


@dataclass(frozen=True)
class GateParams:
    """weight (d, E) float32, learned (None for hash and locmoe); bias (E,) fixed popularity skew."""

    weight: torch.Tensor | None
    bias: torch.Tensor


def gate_params(workload: WorkloadConfig, device: torch.device, requires_grad: bool = True) -> GateParams:
    """W_gate ~ N(0, 1/d) (unit-variance logits, as in `lshsim.dispatch.synthetic`); bias =
    skew * log p with p ~ Dirichlet(1, ..., 1), the popularity skew of `synthetic_router_inputs`."""
    d_model, num_experts = workload.d_model, workload.num_experts
    generator = torch.Generator().manual_seed(workload.seed)
    weight = torch.randn(d_model, num_experts, generator=generator) / math.sqrt(d_model)  # (d, E)
    popularity = dirichlet_popularity(num_experts, generator)  # (E,)
    bias = workload.skew * popularity.clamp_min(1e-12).log() if workload.skew > 0 else torch.zeros(num_experts)
    if workload.router.name in ("hash", "locmoe"):
        return GateParams(None, bias.to(device))
    return GateParams(weight.to(device).requires_grad_(requires_grad), bias.to(device))


def rank_inputs(workload: WorkloadConfig, rank: int, device: torch.device, dtype: torch.dtype,
                file_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's tokens (T, d) in `dtype` and token ids (T,) int64, seeded by (seed, rank).

    file_tokens: (N, d) hidden states read from `workload.inputs`; rank r takes rows [r T, (r+1) T).
    """
    tokens = workload.tokens_per_rank
    generator = torch.Generator(device=device).manual_seed(104_729 * (workload.seed + 1) + 31 * rank)
    if file_tokens is None and workload.input_clusters is not None:
        # clustered tokens (a toy model of the similar tokens LSH-MoE exploits): unit-norm centres
        # shared by all ranks, per-rank assignment and noise of relative size input_noise
        centres = unit_centres(workload.input_clusters, workload.d_model,
                               torch.Generator().manual_seed(workload.seed))  # (K, d)
        x = tokens_around(centres, tokens, workload.input_noise, generator, device=device)  # (T, d)
    elif file_tokens is None:
        x = torch.randn(tokens, workload.d_model, generator=generator, device=device)  # (T, d)
    else:
        if file_tokens.ndim != 2 or file_tokens.shape[1] != workload.d_model:
            raise ValueError(f"inputs file holds shape {tuple(file_tokens.shape)}, expected (N, d_model="
                             f"{workload.d_model})")
        if file_tokens.shape[0] < (rank + 1) * tokens:
            raise ValueError(f"inputs file holds {file_tokens.shape[0]} rows; rank {rank} needs rows up to "
                             f"{(rank + 1) * tokens}")
        x = file_tokens[rank * tokens:(rank + 1) * tokens].to(device)
    token_ids = torch.randint(0, VOCAB_SIZE, (tokens,), generator=generator, device=device)  # (T,)
    return x.to(dtype), token_ids


def expert_ffn(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, d): gelu(x W1) W2."""
    return torch.nn.functional.gelu(x @ w1) @ w2


def _route(workload: WorkloadConfig, placement: Placement, gate: GateParams, x: torch.Tensor,
           token_ids: torch.Tensor, token_rank: torch.Tensor) -> DispatchPlan:
    return route(workload.router, placement, token_ids=token_ids, token_rank=token_rank,
                 **_gate_inputs(workload, gate, x))


def _gate_inputs(workload: WorkloadConfig, gate: GateParams, x: torch.Tensor, with_bias: bool = True) -> dict:
    """The router's input: logits x W + b in float32 (on a GPU the product runs in the tokens'
    bf16, accumulated in fp32, then widened: a float32 GEMM would cost ~10x the gate's time),
    the tokens for locmoe, the token ids for hash. with_bias=False leaves the logits without the
    bias, in the product's dtype (the layer's routing graph adds it)."""
    inputs = {}
    if gate.weight is not None:
        if x.device.type == "cuda" and x.dtype in (torch.bfloat16, torch.float16):
            logits = x @ gate.weight.to(x.dtype)  # (T, E) 16-bit
            inputs["logits"] = logits.float() + gate.bias if with_bias else logits
        else:
            logits = x.float() @ gate.weight  # (T, E)
            inputs["logits"] = logits + gate.bias if with_bias else logits
    if workload.router.name == "locmoe":
        # the GrAP gate's group means (T, E), accumulated in float32: the router's `grap_scores`
        # of these (groups of one feature) are exactly those of the tokens, and the routing
        # graph copies (T, E) floats instead of the tokens
        num_tokens, d_model = x.shape
        experts = workload.num_experts
        if d_model % experts:
            raise ValueError(f"locmoe: d_model={d_model} is not divisible by num_experts={experts} (GrAP groups)")
        inputs["hidden"] = x.reshape(num_tokens, experts, d_model // experts).mean(dim=2, dtype=torch.float32)
    return inputs


def _lsh_fast():
    from lshsim.dispatch import lsh_fast  # the LSH kernels (Triton on a GPU, torch elsewhere)

    return lsh_fast


# ---- the distributed layer ----------------------------------------------------------------------
@dataclass
class MoEContext:
    """Where one rank runs: its rank, the world, process groups, and what to record."""

    rank: int
    world_size: int
    device: torch.device
    node_group: object = None  # process group of this rank's node (group-wise all-to-all)
    node_ranks: list[int] | None = None  # global ranks of that group, in group order
    timer: PhaseTimer | None = None
    stats: CommStats | None = None
    sync: bool = False
    progress: object = None  # lshsim.executor.runtime.Progress: marks the collectives reached (hang diagnosis)
    dedup: object = None  # lshsim.executor.dedup.DedupGroups: the rail and node groups of alltoall node_dedup


@dataclass(frozen=True)
class MoEOutput:
    """y (T, d); the plan; rows sent per destination rank (send_splits, W); rows sent (tokens, or
    centroids under LSH); lsh_rows: (tokens (T, d), token of each sorted row (T*k,), centroids,
    Segments) of an LSH forward, for `send_rows` and `lsh_sums`."""

    y: torch.Tensor
    plan: DispatchPlan
    send_splits: list[int]
    rows_sent: int
    lsh_rows: tuple | None = None

    @property
    def tokens_sent(self) -> int:
        """Kept (token, choice) pairs: the rows the uncompressed layer would send (a synchronisation)."""
        return self.plan.num_kept

    def send_rows(self) -> torch.Tensor | None:
        """(T*k, d) the LSH forward's rows in bucket order, x[token of each row] (the first num_kept are
        the kept choices; the layer itself may not have gathered them); None without LSH."""
        if self.lsh_rows is None:
            return None
        tokens, token_of_row = self.lsh_rows[:2]
        return tokens.index_select(0, token_of_row)

    def lsh_sums(self) -> tuple[float, float]:
        """(sum ||x - c||^2, sum ||x||^2) over the kept choices of an LSH forward; (0, 0) without LSH."""
        if self.lsh_rows is None:
            return 0.0, 0.0
        _, _, centroids, segs = self.lsh_rows
        with torch.no_grad():
            num_kept = int(segs.num_valid.reshape(-1)[0])
            rows = self.send_rows()[:num_kept].double()
            nearest = centroids.index_select(0, segs.seg_of_row[:num_kept]).double()
            return float((rows - nearest).square().sum()), float(rows.square().sum())


class DistributedMoE:
    """One MoE layer on one rank: gate parameters, the rank's experts, and the forward above."""

    def __init__(self, workload: WorkloadConfig, ctx: MoEContext, dtype: torch.dtype,
                 requires_grad: bool = True) -> None:
        self.workload = workload
        self.ctx = ctx
        self.dtype = dtype
        self.placement = placement_for(workload, ctx.world_size, ctx.device)
        self.gate = gate_params(workload, ctx.device, requires_grad)
        local = self.placement.experts_on_rank(ctx.rank).tolist()
        self.experts = expert_weights(local, workload.d_model, workload.d_ffn, workload.seed, ctx.device, dtype,
                                      requires_grad)
        # rank-major order of the experts: position p holds expert order[p]
        order = torch.cat([self.placement.experts_on_rank(r) for r in range(ctx.world_size)])  # (E,)
        self.position = torch.empty_like(order)
        self.position[order] = torch.arange(order.numel(), device=order.device)  # (E,) expert -> position
        self.experts_per_rank = [int((self.placement.expert_to_rank == r).sum()) for r in range(ctx.world_size)]
        if len(set(self.experts_per_rank)) != 1:
            raise ValueError(f"experts per rank {self.experts_per_rank} must be equal for the count exchange")
        self.lsh: LSHConfig | None = workload.lsh_config()
        self.projection = None
        if self.lsh is not None and not self.lsh.exact:
            self.projection = make_projection(workload.d_model, self.lsh, device=ctx.device, dtype=dtype)
        self.gate_path = gate_path()
        fast = self.gate_path == "fast"
        #: the split-size exchange (fast path): one CUDA graph (all-to-all + copy to pinned host memory) on a
        #: GPU where `comm.exchange_graph_enabled` (by default on one rank only), else eager
        self.count_exchange = CountExchange.shared(workload.num_experts, ctx.device)
        #: the gate's index work, one CUDA graph replay per forward on a GPU (`gate_graph`)
        self.routing = GraphedRouting(workload.router, self.placement, ctx.rank, self.position,
                                      enabled=ctx.device.type == "cuda",
                                      bias=self.gate.bias if self.gate.weight is not None else None,
                                      copy_outputs=not fast)
        #: the whole gate of a forward without LSH as one graph forward and backward on a GPU; it also
        #: writes the exchange's input
        self.gate_graph = GraphedGate(
            self.routing, lambda x, weight: _gate_inputs(workload, GateParams(weight, self.gate.bias), x, with_bias=False),
            self.gate.weight, copy_outputs=not fast,
            sink=self.count_exchange.source if fast else None, cast_weight=fast)  # on a CPU the same function runs eagerly
        #: LSH-MoE's gate on a GPU (fast path): logits, routing and gate weights as one graph forward
        #: and backward (no send order: the rows are gathered later, in bucket order)
        if self.projection is not None:  # the token hash inside the LSH bucketing graph (`_lsh_in_graph`)
            self.routing.lsh_hash = (self.lsh, self.projection)
        self.lsh_gate = GraphedGate(
            self.routing, lambda x, weight: _gate_inputs(workload, GateParams(weight, self.gate.bias), x, with_bias=False),
            self.gate.weight, enabled=fast and ctx.device.type == "cuda", copy_outputs=False, gather=False,
            cast_weight=True)
        #: LSH-MoE without the send rows (fast path on a GPU, 16-bit tokens, Triton: `_gather_free`):
        #: the centroids' backward and restore read the tokens through the token of each row
        self.gather_free = fast and ctx.device.type == "cuda"
        #: LSH-MoE's gather of the send rows in bucket order where they are gathered (not `gather_free`;
        #: the fast path on a GPU): one graph replay
        self.lsh_gather = GraphedGather(enabled=fast and ctx.device.type == "cuda")
        #: expert arithmetic: "auto" (grouped_mm where it runs, else padded bmm), "grouped_mm" or
        #: "padded_bmm"; `expert_method` is the one the last forward used
        self.expert_impl = "auto"
        self.expert_method = None
        #: rows each local expert received in the last forward (host ints; the expert phase's work)
        self.rows_per_expert: list[int] = []
        nodes = self.placement.rank_to_node
        self.same_node = [bool(nodes[r] == nodes[ctx.rank]) for r in range(ctx.world_size)]

    def parameters(self) -> list[torch.Tensor]:
        params = [self.experts.w1, self.experts.w2]
        return params + ([self.gate.weight] if self.gate.weight is not None else [])

    # -- all-to-all, direct or group-wise ----------------------------------------------------
    def _a2a(self, x: torch.Tensor, send: list[int], recv: list[int], name: str, groupwise: bool,
             bwd_opens: str | None, bwd_closes: str | None) -> torch.Tensor:
        ctx = self.ctx
        # the dispatch's wire format: fp8 is quantized under "gate" (the packing) and dequantized
        # under "expert" (the experts' input), the collective itself timed as always
        fp8 = name == "dispatch_a2a" and self.workload.dispatch_format == "fp8"
        wire = dict(wire="fp8", quantize_phase="gate", dequantize_phase="expert") if fp8 else {}
        if not groupwise or all(self.same_node):
            comm = CommContext(name, ctx.timer, ctx.stats, ctx.sync, bwd_opens=bwd_opens, bwd_closes=bwd_closes,
                               **wire)
            return all_to_all(x, send, recv, comm)
        # LocMoE group-wise: intra-node exchange first, then only the inter-node remainder.
        node_ranks = ctx.node_ranks
        send_parts = list(torch.split(x, send))  # W pieces, by destination rank
        intra_send = [send[r] for r in node_ranks]
        intra_recv = [recv[r] for r in node_ranks]
        inter_send = [0 if self.same_node[r] else send[r] for r in range(ctx.world_size)]
        inter_recv = [0 if self.same_node[r] else recv[r] for r in range(ctx.world_size)]
        intra_x = torch.cat([send_parts[r] for r in node_ranks])
        inter_x = torch.cat([send_parts[r] for r in range(ctx.world_size) if not self.same_node[r]])
        # the backward runs the inter-node stage first, so it closes `bwd_closes`; the intra-node
        # stage's backward runs last and opens `bwd_opens`
        intra = all_to_all(intra_x, intra_send, intra_recv,
                           CommContext(name, ctx.timer, ctx.stats, ctx.sync, group=ctx.node_group, ranks=node_ranks,
                                       bwd_opens=bwd_opens, **wire))
        inter = all_to_all(inter_x, inter_send, inter_recv,
                           CommContext(name, ctx.timer, ctx.stats, ctx.sync, bwd_closes=bwd_closes, **wire))
        intra_parts = dict(zip(node_ranks, torch.split(intra, intra_recv)))
        inter_parts = torch.split(inter, inter_recv)
        return torch.cat([intra_parts[r] if self.same_node[r] else inter_parts[r] for r in range(ctx.world_size)])

    def _begin(self, name: str) -> None:
        if self.ctx.timer is not None:
            self.ctx.timer.begin(name)

    def _end(self, name: str) -> None:
        if self.ctx.timer is not None:
            self.ctx.timer.end(name)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor, use_lsh: bool = True) -> MoEOutput:
        """x (T, d) on this rank -> MoEOutput; differentiable in x, the gate and the local experts.

        One host synchronisation per forward (the split sizes, in "other"); on a GPU everything
        before it is queued without waiting (routing, packing, LSH hashing and centroids).
        `gate_path` ("fast", or "legacy" from LSHSIM_GATE_PATH at construction) picks the gate's
        graph layout and the exchange (`gate_graph.GraphedGate`, `comm.CountExchange`).
        """
        ctx, workload = self.ctx, self.workload
        lsh = self.lsh if use_lsh else None
        timer = ctx.timer
        groupwise = workload.alltoall == "groupwise"
        num_tokens, d_model = x.shape
        num_experts, per_rank = workload.num_experts, self.experts_per_rank[0]
        # 1. gate: route (no host synchronisation for the built-in routers), then order the kept
        # choices by (destination expert position, slot) and gather them into the send buffer
        self._begin("gate")
        gated = self.gate_graph(x, token_ids) if lsh is None and self.gate_graph.available else None
        lsh_gated = None
        if lsh is not None and workload.alltoall != "node_dedup" and self.lsh_gate.available and x.is_cuda:
            lsh_gated = self.lsh_gate(x, token_ids)  # one graph: logits, routing and weights (no order)
        if gated is not None:  # one graph: logits, routing, order, weights and the send rows
            plan, order, inv, counts, send_x = gated
        elif lsh_gated is not None:
            plan, order, inv, counts, _ = lsh_gated
        else:
            plan, order, inv, counts, token_of_row = self.routing(
                {"token_ids": token_ids, **_gate_inputs(workload, self.gate, x, with_bias=False)},
                order=lsh is None or workload.alltoall == "node_dedup")  # LSH-MoE orders by bucket (lsh_segments)
        k = plan.num_choices
        segs = None
        if workload.alltoall == "node_dedup":
            self._end("gate")
            return self._forward_dedup(x, plan, order, counts)
        if lsh is None and gated is None:
            send_x = gather_choices(x, order, inv, k, token_of_row)  # (T*k, d), the first N rows kept
        self._end("gate")
        # 2. LSH-MoE: one centroid per (destination expert, bucket); the tokens stay here for the
        # residual. Hashing reads the T tokens once (a token's bucket is the same for all its choices).
        centroids = None
        if lsh is not None:
            # hash the T tokens once (a token's bucket is the same for all its choices), then the
            # (destination expert position, bucket) segments of the kept choices: one graph replay
            self._begin("lsh_compress")
            kernels = self._lsh_in_graph(x, lsh)
            with torch.no_grad():
                if kernels:  # one graph replay: the hash, bucketing and centroid kernels, x read in place
                    span = lsh.max_buckets(d_model)
                    segs, order, inv, counts, token_of_row = self.routing.lsh_segments(plan, None, span, tokens=x)
                else:
                    bucket, span = self._token_buckets(x, lsh, num_tokens, k)
                    segs, order, inv, counts, token_of_row = self.routing.lsh_segments(plan, bucket, span)
            gather_free = self._gather_free(x)
            if gather_free:
                # no send rows: the centroids (from x through the token of each row, bit-equal to the
                # means of the gathered rows; on the kernel path the graph above computed them, rows
                # past them unwritten) as a function of x, and restore reads x the same way
                with torch.no_grad():
                    means = self.routing.last_means if kernels else _lsh_fast().segment_mean_of(x, segs, token_of_row)
                # restore's backward leaves its rows' gradient to the centroids' backward: x's gradient
                # of both in one pass, each row's two terms summed as autograd summed the gathered rows'
                pending = _lsh_fast().PendingRows()
                centroids = _lsh_fast().centroids_of_tokens(mark(x, timer, closes="lsh_compress"), means, segs, inv, k,
                                                            pending=pending)
                send_x = None
                self._end("lsh_compress")
            else:
                self._end("lsh_compress")
                # the send rows, gathered in bucket order: the gate's packing, as without LSH
                self._begin("gate")
                send_x = self.lsh_gather(x, order, inv, k, token_of_row)  # (T*k, d); one replay on a GPU
                self._end("gate")
                send_x = mark(send_x, timer, closes="lsh_compress")
                self._begin("lsh_compress")
                # (T*k, d), the first B rows are centroids; on the kernel path the graph above computed them
                # (from x through the token of each row, bit-equal to the mean of send_x; rows past them
                # unwritten) and this is their autograd node only
                if kernels:
                    centroids = _lsh_fast().centroids_of(send_x, self.routing.last_means, segs)
                else:
                    centroids = _lsh_fast().segment_mean(send_x, segs)
                self._end("lsh_compress")
        # 3. split sizes: rows per (destination rank, expert), exchanged so receivers know theirs;
        # the one device-to-host copy of the forward. With sync_phases the ranks are aligned first
        # (untimed), as before every all-to-all: "other" is then the exchange, not a wait for a
        # slower rank's gate.
        if ctx.progress is not None:
            ctx.progress.step("split-size exchange")
        if ctx.sync:
            align_ranks(x.device)
        kept_dev = segs.num_valid.reshape(1) if segs is not None else None
        fast = self.gate_path == "fast"
        self._begin("other")
        if fast and gated is None:  # the gate's graph (or its eager run on a CPU) did not write them
            self.count_exchange.load(counts, kept_dev if kept_dev is not None else counts.sum())
        world = ctx.world_size
        if fast:  # one graph replay on a GPU: the all-to-all, the sums, the copy to pinned host memory
            host, received = self.count_exchange()
            num_kept = host[num_experts]
            at = 2 * num_experts + 1
            send_splits, recv_splits, rows_per_expert = host[at:at + world], host[at + world:at + 2 * world], \
                host[at + 2 * world:]
        else:
            received = exchange_counts(counts)  # (E,): block s = rows from rank s per local expert
            kept_dev = kept_dev if kept_dev is not None else counts.sum().reshape(1)
            host = torch.cat([counts, received, kept_dev]).tolist()
            counts_host, received_host, num_kept = host[:num_experts], host[num_experts:2 * num_experts], host[-1]
            send_splits = [sum(counts_host[r * per_rank:(r + 1) * per_rank]) for r in range(world)]
            recv_splits = [sum(received_host[r * per_rank:(r + 1) * per_rank]) for r in range(world)]
            rows_per_expert = [sum(received_host[r * per_rank + e] for r in range(world)) for e in range(per_rank)]
        self._end("other")
        rows_sent = sum(send_splits)  # kept rows, or centroids under LSH
        payload = send_x[:rows_sent] if lsh is None else centroids[:rows_sent]
        # 4. dispatch all-to-all; its backward ends and begins its neighbours in the phase table's
        # backward timing chain (the expert's backward, then LSH compress's)
        active = _ACTIVE | (_LSH_PHASES if lsh is not None else frozenset())
        closes, opens = backward_chain("dispatch_a2a", active)
        recv_x = self._a2a(payload, send_splits, recv_splits, "dispatch_a2a", groupwise,
                           bwd_opens=opens, bwd_closes=closes)
        # 5. local experts: rows grouped by expert (received grouped by source rank), one grouped GEMM
        self._begin("expert")
        received_dev = received.reshape(ctx.world_size, per_rank)  # (W, E_r) on the device
        self.rows_per_expert = rows_per_expert
        # the exchange graph's offsets, else expert_block computes them (LSHSIM_EXPERT_OFFSETS=phase: always, as before)
        offsets = self.count_exchange.offsets if fast and os.environ.get("LSHSIM_EXPERT_OFFSETS") != "phase" else None
        expert_out, self.expert_method = expert_block(recv_x, received_dev, rows_per_expert, self.experts.w1,
                                                      self.experts.w2, self.expert_impl, offsets=offsets)
        self._end("expert")
        # 6. combine all-to-all (transposed splits)
        closes, opens = backward_chain("combine_a2a", active)
        back = self._a2a(expert_out, recv_splits, send_splits, "combine_a2a", groupwise,
                         bwd_opens=opens, bwd_closes=closes)
        # 7. LSH restore: E(x) ~= E(c) + (x - c), per kept choice in send order
        if lsh is not None:
            self._begin("lsh_restore")
            if send_x is None:  # the restore kernel reads x through the token of each row
                choice_out = _lsh_fast().restore_tokens(back, centroids[:rows_sent], x, token_of_row[:num_kept],
                                                        segs.seg_of_row[:num_kept], inv, k, segments=segs,
                                                        pending=pending)  # (N, d)
            else:
                choice_out = _lsh_fast().restore_rows(back, centroids[:rows_sent], send_x[:num_kept],
                                                      segs.seg_of_row[:num_kept], segments=segs)  # (N, d)
            self._end("lsh_restore")
            choice_out = mark(choice_out, timer, opens="lsh_restore")
        else:
            choice_out = back  # (N, d)
        # 8. combine: weighted sum over each token's kept choices
        weight = plan.gate_weight * plan.kept  # (T, k) float32, 0 where not kept
        y = combine_choices(choice_out, order, inv, weight)  # (T, d)
        return MoEOutput(y=y, plan=plan, send_splits=send_splits, rows_sent=rows_sent,
                         lsh_rows=(x.detach(), token_of_row, centroids, segs) if lsh is not None else None)

    def _forward_dedup(self, x: torch.Tensor, plan, order: torch.Tensor, counts: torch.Tensor) -> MoEOutput:
        """The rest of a forward with `alltoall: node_dedup` (`lshsim.executor.dedup`): one all-gather
        of the counts (the forward's one device-to-host copy, "other"), the deduplicated dispatch,
        the experts, the reducing combine."""
        from lshsim.executor import dedup

        ctx, workload = self.ctx, self.workload
        groups = ctx.dedup
        if groups is None:
            raise ValueError("alltoall node_dedup needs MoEContext.dedup (lshsim.executor.dedup.dedup_groups)")
        num_tokens, k = plan.gate_weight.shape
        per_rank, world = self.experts_per_rank[0], ctx.world_size
        num_experts, nodes = per_rank * world, groups.num_nodes
        device = x.device
        # destination and token of every row of the send order (the first N are kept); no host sync
        rows = torch.arange(num_tokens * k, device=device)
        position = torch.bucketize(rows, torch.cumsum(counts, 0), right=True)  # (T*k,), E past the kept rows
        valid = position < num_experts
        dest_rank = torch.div(position.clamp(max=num_experts - 1), per_rank, rounding_mode="floor")
        token = torch.div(order, k, rounding_mode="floor")
        dest_node = torch.div(dest_rank, groups.ranks_per_node, rounding_mode="floor")
        seen, distinct = dedup.node_token_counts(token, dest_node, valid, num_tokens, nodes)
        if ctx.progress is not None:
            ctx.progress.step("split-size exchange")
        if ctx.sync:
            align_ranks(device)
        self._begin("other")
        mine = torch.cat([counts, distinct])  # (E + nodes,)
        if world > 1:
            gathered = [torch.empty_like(mine) for _ in range(world)]
            torch.distributed.all_gather(gathered, mine)
            all_counts = torch.stack(gathered).tolist()  # the one host sync
        else:
            all_counts = [mine.tolist()]
        self._end("other")
        num_kept = sum(all_counts[ctx.rank][:num_experts])
        plan_d = dedup.plan_dedup(groups, per_rank, all_counts, seen, token[:num_kept], dest_rank[:num_kept])
        weight = (plan.gate_weight * plan.kept).reshape(-1).index_select(0, order[:num_kept])  # (N,)
        closes, opens = backward_chain("dispatch_a2a", _ACTIVE)
        fp8 = workload.dispatch_format == "fp8"
        wire = dict(wire="fp8", quantize_phase="gate", dequantize_phase="expert") if fp8 else None
        recv_x, recv_w, state = dedup.dedup_dispatch(x, weight, plan_d, "dispatch_a2a", ctx.timer, ctx.stats,
                                                     ctx.sync, bwd_opens=opens, bwd_closes=closes, wire=wire)
        self._begin("expert")
        received = [all_counts[s][ctx.rank * per_rank + e] for s in range(world) for e in range(per_rank)]
        received_dev = torch.tensor(received, device=device).reshape(world, per_rank)
        self.rows_per_expert = [sum(received[s * per_rank + e] for s in range(world)) for e in range(per_rank)]
        expert_out, self.expert_method = expert_block(recv_x, received_dev, self.rows_per_expert, self.experts.w1,
                                                      self.experts.w2, self.expert_impl)
        self._end("expert")
        closes, opens = backward_chain("combine_a2a", _ACTIVE)
        y = dedup.dedup_combine(expert_out, recv_w, plan_d, state, num_tokens, "combine_a2a", ctx.timer, ctx.stats,
                                ctx.sync, bwd_opens=opens, bwd_closes=closes)
        send_splits = plan_d.rows_to_rank[ctx.rank]
        return MoEOutput(y=y.to(x.dtype), plan=plan, send_splits=send_splits, rows_sent=num_kept)

    def _gather_free(self, x: torch.Tensor) -> bool:
        """Whether this LSH forward runs without the (T*k, d) send rows: the centroids' autograd node
        (`lsh_fast.centroids_of_tokens`) and restore (`lsh_fast.restore_tokens`) read x through the
        token of each row. `gather_free` (the fast path on a GPU), 16-bit x, the Triton kernels.
        Otherwise the rows are gathered (`lsh_gather`) and the torch path (CPU, float32, legacy) runs:
        the reference the kernels are tested against."""
        return (self.gather_free and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)
                and _lsh_fast().triton_available(x.device))

    def _lsh_in_graph(self, x: torch.Tensor, lsh: LSHConfig) -> bool:
        """Whether this forward hashes the tokens inside the bucketing graph (`lsh_segments(tokens=)`):
        a GPU with the Triton kernels, the fast gate path, kernel-eligible tokens and projection,
        mixed-radix bucket ids ((2 d')^L E < 2^63). The bucketing in that graph is
        `lsh_fast.choice_segments` where its keys pack, else the torch segments."""
        if lsh.exact or not x.is_cuda or self.gate_path != "fast" or not self.routing.segments_hashed.enabled:
            return False
        lsh_fast = _lsh_fast()
        span = lsh.max_buckets(x.shape[1])
        num_experts = self.workload.num_experts
        return (span * num_experts < _INT64_LIMIT and lsh_fast.kernel_eligible(lsh, self.projection, x)
                and lsh_fast.triton_available(x.device))

    def _token_buckets(self, x: torch.Tensor, lsh: LSHConfig, num_tokens: int, k: int) -> tuple[torch.Tensor, int]:
        """Bucket id of every token (T,) and the span of the ids: mixed-radix ids when
        (2 d')^L * E < 2^63, else dense ranks of the codes (span T; a host synchronisation)."""
        if lsh.exact:
            return None, num_tokens * k
        radix_span = lsh.max_buckets(x.shape[1])
        if radix_span * self.workload.num_experts < _INT64_LIMIT:
            return _lsh_fast().token_buckets(x, lsh, self.projection), radix_span
        codes = hash_codes(x, lsh, self.projection)  # (T, L)
        return torch.unique(codes, dim=0, return_inverse=True)[1], max(num_tokens, 1)


# ---- the dense single-process reference ---------------------------------------------------------
def reference_moe(workload: WorkloadConfig, world_size: int, x_all: torch.Tensor, token_ids_all: torch.Tensor,
                  gate: GateParams, experts: ExpertWeights) -> tuple[torch.Tensor, DispatchPlan]:
    """All W*T tokens on one process: route, `reference.dispatch`, every expert FFN, `reference.combine`.

    x_all (W*T, d): rank r's tokens in rows [r T, (r+1) T); experts must hold all E experts in order.
    """
    placement = placement_for(workload, world_size, x_all.device)
    if experts.expert_ids != list(range(workload.num_experts)):
        raise ValueError("the reference needs the weights of every expert, in order")
    token_rank = torch.arange(world_size, device=x_all.device).repeat_interleave(workload.tokens_per_rank)
    plan = _route(workload, placement, gate, x_all, token_ids_all, token_rank)
    buffers = dense.dispatch(x_all, plan)  # (E, W*C, d)
    if workload.dispatch_format == "fp8":  # every dispatched row rounded as the fp8 wire rounds it
        buffers = fake_fp8(buffers)
    out = torch.stack([expert_ffn(buffers[e], experts.w1[e], experts.w2[e])
                       for e in range(workload.num_experts)])  # (E, W*C, d)
    y = dense.combine(out.float(), plan).to(x_all.dtype)  # (W*T, d)
    return y, plan
