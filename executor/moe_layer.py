"""The distributed MoE layer: the plans of `lshsim.dispatch`, moved with real all-to-alls.

Every rank holds T tokens (T, d) and, by the placement, E/W experts. One forward (numbered as in
the code):

1. gate: logits = x W_gate + b (topk, expert_choice), the GrAP gate (locmoe) or token ids (hash);
   the router of `lshsim.dispatch` makes the rank's DispatchPlan (token_rank = this rank, so the
   capacity buffers are exactly those of a global plan). Kept choices are packed into one send
   buffer, ordered by destination expert in rank-major order (the experts of rank 0, then of rank
   1, ...) and by slot within an expert, so rows bound for one rank are contiguous.
2. lsh_compress (LSH-MoE only): per destination expert, `lshsim.dispatch.lsh.compress` replaces
   the rows by bucket centroids; the residuals x - c stay on the rank.
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
from dataclasses import dataclass

import torch

from lshsim.executor.comm import CommContext, CommStats, all_to_all, exchange_counts, mark
from lshsim.executor.timing import PhaseTimer
from lshsim.executor.workload import WorkloadConfig
from lshsim.dispatch import DispatchPlan, Placement, make_placement, route
from lshsim.dispatch import reference as dense
from lshsim.dispatch.lsh import LSHConfig, compress, make_projection, residuals, restore
from lshsim.dispatch.synthetic import dirichlet_popularity, tokens_around, unit_centres
from lshsim.sim.phases import backward_chain

__all__ = ["ExpertWeights", "GateParams", "expert_weights", "gate_params", "expert_ffn", "rank_inputs",
           "MoEContext", "MoEOutput", "DistributedMoE", "reference_moe", "placement_for", "VOCAB_SIZE",
           "resolve_dtype"]

VOCAB_SIZE = 50257

#: the phases one forward of the layer times (`lshsim.sim.phases.PHASES` names); LSH adds two
_ACTIVE = frozenset({"gate", "other", "dispatch_a2a", "expert", "combine_a2a"})
_LSH_PHASES = frozenset({"lsh_compress", "lsh_restore"})


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
    logits = None
    if gate.weight is not None:
        logits = x.float() @ gate.weight + gate.bias  # (T, E)
    hidden = x.float() if workload.router.name == "locmoe" else None
    return route(workload.router, placement, logits=logits, token_ids=token_ids, hidden=hidden,
                 token_rank=token_rank)


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


@dataclass(frozen=True)
class MoEOutput:
    """y (T, d); the plan; rows sent per destination rank (send_splits, W); tokens (before LSH)
    and rows (after LSH) sent; the centroid error sum ||x - c||^2 and token norm sum ||x||^2."""

    y: torch.Tensor
    plan: DispatchPlan
    send_splits: list[int]
    tokens_sent: int
    rows_sent: int
    residual_sq: float
    token_sq: float


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
        nodes = self.placement.rank_to_node
        self.same_node = [bool(nodes[r] == nodes[ctx.rank]) for r in range(ctx.world_size)]

    def parameters(self) -> list[torch.Tensor]:
        params = [self.experts.w1, self.experts.w2]
        return params + ([self.gate.weight] if self.gate.weight is not None else [])

    # -- all-to-all, direct or group-wise ----------------------------------------------------
    def _a2a(self, x: torch.Tensor, send: list[int], recv: list[int], name: str, groupwise: bool,
             bwd_opens: str | None, bwd_closes: str | None) -> torch.Tensor:
        ctx = self.ctx
        if not groupwise or all(self.same_node):
            comm = CommContext(name, ctx.timer, ctx.stats, ctx.sync, bwd_opens=bwd_opens, bwd_closes=bwd_closes)
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
                                       bwd_opens=bwd_opens))
        inter = all_to_all(inter_x, inter_send, inter_recv,
                           CommContext(name, ctx.timer, ctx.stats, ctx.sync, bwd_closes=bwd_closes))
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
        """x (T, d) on this rank -> MoEOutput; differentiable in x, the gate and the local experts."""
        ctx, workload = self.ctx, self.workload
        lsh = self.lsh if use_lsh else None
        timer = ctx.timer
        groupwise = workload.alltoall == "groupwise"
        num_tokens, d_model = x.shape
        # 1. gate: route, then pack the kept choices by (destination expert position, slot)
        self._begin("gate")
        token_rank = torch.full((num_tokens,), ctx.rank, dtype=torch.int64, device=x.device)  # (T,)
        plan = _route(workload, self.placement, self.gate, x, token_ids, token_rank)
        token, choice = torch.nonzero(plan.kept, as_tuple=True)  # (N,), (N,)
        position = self.position[plan.expert_index[token, choice]]  # (N,)
        order = torch.argsort(position * (num_tokens + 1) + plan.slot[token, choice], stable=True)  # (N,)
        token, choice, position = token[order], choice[order], position[order]
        send_x = x[token]  # (N, d)
        self._end("gate")
        # 2. LSH-MoE: one centroid per (destination expert, bucket); residuals stay here
        residual = compressed = None
        residual_sq = token_sq = 0.0
        if lsh is not None:
            send_x = mark(send_x, timer, closes="lsh_compress")
            self._begin("lsh_compress")
            compressed = compress(send_x, position, lsh, self.projection)
            residual = residuals(send_x, compressed)  # (N, d)
            payload = compressed.centroids  # (B, d), grouped by expert position
            row_position = compressed.centroid_group  # (B,)
            self._end("lsh_compress")
            with torch.no_grad():
                residual_sq = float(residual.double().square().sum())
                token_sq = float(send_x.double().square().sum())
        else:
            payload, row_position = send_x, position
        # 3. split sizes: rows per (destination rank, expert), exchanged so receivers know theirs
        self._begin("other")
        counts = torch.bincount(row_position, minlength=workload.num_experts)  # (E,) by position
        if ctx.progress is not None:
            ctx.progress.step("split-size exchange")
        received = exchange_counts(counts)  # (E,): block s = rows from rank s per local expert
        per_rank = self.experts_per_rank[0]
        send_splits = counts.reshape(ctx.world_size, per_rank).sum(1).tolist()  # (W,)
        recv_block = received.reshape(ctx.world_size, per_rank)  # (W, E_r)
        recv_splits = recv_block.sum(1).tolist()  # (W,)
        self._end("other")
        # 4. dispatch all-to-all; its backward ends and begins its neighbours in the phase table's
        # backward timing chain (the expert's backward, then LSH compress's)
        active = _ACTIVE | (_LSH_PHASES if lsh is not None else frozenset())
        closes, opens = backward_chain("dispatch_a2a", active)
        recv_x = self._a2a(payload, send_splits, recv_splits, "dispatch_a2a", groupwise,
                           bwd_opens=opens, bwd_closes=closes)
        # 5. local experts, on rows grouped by expert
        self._begin("expert")
        local_expert = torch.repeat_interleave(
            torch.arange(per_rank, device=x.device).repeat(ctx.world_size), recv_block.reshape(-1))  # (R,)
        by_expert = torch.argsort(local_expert, stable=True)  # (R,)
        rows_per_expert = recv_block.sum(0).tolist()  # (E_r,)
        grouped = recv_x[by_expert]  # (R, d)
        outputs = [expert_ffn(chunk, self.experts.w1[e], self.experts.w2[e])
                   for e, chunk in enumerate(torch.split(grouped, rows_per_expert))]
        out_grouped = torch.cat(outputs) if outputs else grouped
        inverse = torch.empty_like(by_expert)
        inverse[by_expert] = torch.arange(by_expert.numel(), device=x.device)
        expert_out = out_grouped[inverse]  # (R, d), back in received order
        self._end("expert")
        # 6. combine all-to-all (transposed splits)
        closes, opens = backward_chain("combine_a2a", active)
        back = self._a2a(expert_out, recv_splits, send_splits, "combine_a2a", groupwise,
                         bwd_opens=opens, bwd_closes=closes)
        # 7. LSH restore: E(x) ~= E(c) + (x - c)
        if lsh is not None:
            self._begin("lsh_restore")
            choice_out = restore(back, compressed, residual)  # (N, d)
            self._end("lsh_restore")
            choice_out = mark(choice_out, timer, opens="lsh_restore")
        else:
            choice_out = back  # (N, d)
        # 8. combine: weighted sum over each token's kept choices
        weight = plan.gate_weight[token, choice].unsqueeze(1)  # (N, 1) float32
        y = torch.zeros(num_tokens, d_model, dtype=torch.float32, device=x.device)
        y = y.index_add(0, token, choice_out.float() * weight).to(x.dtype)  # (T, d)
        return MoEOutput(y=y, plan=plan, send_splits=send_splits, tokens_sent=int(token.numel()),
                         rows_sent=int(payload.shape[0]), residual_sq=residual_sq, token_sq=token_sq)


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
    out = torch.stack([expert_ffn(buffers[e], experts.w1[e], experts.w2[e])
                       for e in range(workload.num_experts)])  # (E, W*C, d)
    y = dense.combine(out.float(), plan).to(x_all.dtype)  # (W*T, d)
    return y, plan
