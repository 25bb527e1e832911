"""Top-k routing of one rank's tokens in four Triton kernels (the torch routers' ~60).

`route_on_rank` followed by the executor's send order (`choice_order`) is about 60 small torch
kernels; on a GPU whose launches cost ~20 us of host time, or inside a CUDA graph where each
still costs a few microseconds of GPU time, that is the gate's whole time. `fused_topk_route`
computes the same result in four kernels (no memset: the top-k kernel zeroes the per-block drop
counts that the scan adds to):

1. `topk_kernel`: per block of BLOCK_T tokens, the k largest entries of the selection scores
   (first index on ties, as `argmax`; one max-reduction per choice over packed
   (order-preserving float bits << 32 | reversed column) int64 keys), the gate weights from the
   router logits (k = 1: the softmax probability over all experts; k > 1: a softmax over the k
   chosen logits), and, per choice j, the block's count of every expert and each choice's rank
   among the block's choices j of the same expert; where drops are possible it zeroes its block's
   dropped-choice count (the scan's atomic adds follow). The router logits may be the gate GEMM's
   16-bit output plus a float32 bias, added here exactly as `logits.float() + bias`.
2. `scan_kernel` (one program per expert): the exclusive prefix of those counts over the blocks
   in choice-major order (all first choices in token order, then all second choices, ...: the
   "position" drop policy), in place; the expert's total; and, where drops are possible, the
   dropped choices of every token block (atomic integer adds: the sums do not depend on their
   order).
3. `finalize_kernel` (one program): kept rows per expert (min(total, capacity)), per position
   (rank-major expert order), the first send row of every position, the number kept, the
   exclusive prefix of the dropped choices over token blocks, and the split-size exchange's input
   (`sink`, optional).
4. `order_kernel`: a choice's slot = prefix of its (expert, choice, block) + its rank in the
   block; kept = slot < capacity; its send position: kept ones at offset[position of the expert]
   + slot (rank-major expert order, then slot), dropped ones after all kept ones in flat
   (token-major) order; order, its inverse and the token of every send row are scattered there.

The index outputs are views of one int64 buffer (`flat`: expert_index, slot, order, inv,
tokens_per_expert, counts, token_of_row), so a CUDA graph returns them without a copy.

The result equals `route_on_rank` + `choice_order` (tests/test_fused_routing.py, in the CPU
interpreter and on CUDA) for the top-k and locmoe routers with drop_policy "position", all tokens
on one rank. Only the index work is here; the gradient of the gate weights is the caller's
(`lshsim.executor.gate_graph.GateWeights`). Triton is imported lazily (`available()`).
"""
from __future__ import annotations

import os

import torch

from lshsim.dispatch.lsh_fast import _interpreting, _next_pow2, _triton

__all__ = ["available", "fused_topk_route", "MAX_EXPERTS", "MAX_K", "eligible"]

#: limits of the kernels (registers hold a block of (tokens, experts) keys)
MAX_EXPERTS = 512
MAX_K = 16
#: (tokens x padded experts) elements one program of the top-k kernel holds
_TILE = 2048

_KERNELS: dict = {}


def available(device: torch.device) -> bool:
    """True when Triton imports and the device is CUDA (or TRITON_INTERPRET=1 on a CPU tensor)."""
    if _triton() is None or os.environ.get("LSHSIM_NO_FUSED_ROUTING") == "1":
        return False
    return torch.device(device).type == "cuda" or _interpreting()


def eligible(router: str, drop_policy: str, num_experts: int, k: int, device: torch.device) -> bool:
    """Whether `fused_topk_route` serves this router on this device (topk/locmoe, drop policy
    "position", E <= MAX_EXPERTS, k <= min(MAX_K, E), Triton available)."""
    return (router in ("topk", "locmoe") and drop_policy == "position" and num_experts <= MAX_EXPERTS
            and k <= min(MAX_K, num_experts) and available(device))


def _kernels():
    mode = _interpreting()
    if mode in _KERNELS:
        return _KERNELS[mode]
    triton = _triton()
    global tl  # a module global: the interpreter patches `tl` in the kernels' globals
    import triton.language as tl

    @triton.jit
    def topk_kernel(sel_ptr, logit_ptr, bias_ptr, index_ptr, weight_ptr, counts_ptr, rank_ptr, dropped_ptr,
                    num_tokens, num_experts, num_blocks, K: tl.constexpr, K_PAD: tl.constexpr,
                    E_PAD: tl.constexpr, BLOCK_T: tl.constexpr, SAME: tl.constexpr, HAS_BIAS: tl.constexpr,
                    DROPS: tl.constexpr):
        block = tl.program_id(0)
        if DROPS:  # this block's dropped-choice count, zeroed for the scan's atomic adds (no memset)
            tl.store(dropped_ptr + block, tl.zeros((), tl.int32))
        rows = block * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
        cols = tl.arange(0, E_PAD)  # (E,)
        kcols = tl.arange(0, K_PAD)  # (K,)
        row_mask = rows < num_tokens
        col_mask = cols < num_experts
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * num_experts + cols[None, :]
        sel = tl.load(sel_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BT, E)
        if HAS_BIAS:  # router logits = the gate GEMM's output widened + bias (as logits.float() + bias)
            sel = sel + tl.load(bias_ptr + cols, mask=col_mask, other=0.0)[None, :]
        # packed keys: order-preserving bits of the score (-0.0 as +0.0) above the reversed column,
        # so one max gives the largest score and, among equal scores, the first column
        bits = tl.where(sel == 0.0, 0.0, sel).to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        packed = (key.to(tl.int64) << 32) | (E_PAD - 1 - cols).to(tl.int64)[None, :]
        lowest = tl.full((), -2147483648, tl.int32).to(tl.int64) << 32  # below every real key
        packed = tl.where(mask, packed, lowest)
        if not SAME:
            logit = tl.load(logit_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        if K == 1:
            full = sel if SAME else logit
            full = tl.where(mask, full, float("-inf"))
            top_all = tl.max(full, axis=1)  # (BT,)
            total_all = tl.sum(tl.where(mask, tl.exp(full - top_all[:, None]), 0.0), axis=1)
        values = tl.full((BLOCK_T, K_PAD), float("-inf"), tl.float32)  # router logits of the choices
        indices = tl.zeros((BLOCK_T, K_PAD), tl.int64)
        row_count = num_blocks * K
        for j in tl.static_range(K):
            best = tl.max(packed, axis=1)  # (BT,)
            index = (E_PAD - 1) - (best & (E_PAD - 1)).to(tl.int32)  # (BT,)
            hit = cols[None, :] == index[:, None]  # (BT, E)
            if SAME:
                hi = (best >> 32).to(tl.int32)
                value = (hi ^ ((hi >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
            else:
                value = tl.sum(tl.where(hit, logit, 0.0), axis=1)  # the router logit of the choice
            values = tl.where(kcols[None, :] == j, value[:, None], values)
            indices = tl.where(kcols[None, :] == j, index.to(tl.int64)[:, None], indices)
            packed = tl.where(hit, lowest, packed)
            # the block's choices j per expert, and each one's rank among them (token order)
            onehot = (hit & row_mask[:, None]).to(tl.int32)  # (BT, E)
            count = tl.sum(onehot, axis=0)  # (E,)
            tl.store(counts_ptr + cols.to(tl.int64) * row_count + j * num_blocks + block, count, mask=col_mask)
            before = tl.cumsum(onehot, axis=0) - onehot
            rank = tl.sum(before * onehot, axis=1)  # (BT,)
            tl.store(rank_ptr + rows.to(tl.int64) * K + j, rank, mask=row_mask)
        # gate weights: K = 1, softmax over all experts; K > 1, softmax over the K chosen logits
        if K == 1:
            weights = tl.exp(values - top_all[:, None]) / total_all[:, None]
        else:
            top = tl.max(values, axis=1)
            e = tl.where(kcols[None, :] < K, tl.exp(values - top[:, None]), 0.0)
            weights = e / tl.sum(e, axis=1)[:, None]
        out = rows.to(tl.int64)[:, None] * K + kcols[None, :]
        out_mask = row_mask[:, None] & (kcols[None, :] < K)
        tl.store(index_ptr + out, indices, mask=out_mask)
        tl.store(weight_ptr + out, weights, mask=out_mask)

    @triton.jit
    def scan_kernel(counts_ptr, totals_ptr, dropped_ptr, row_count, num_blocks, capacity,
                    DROPS: tl.constexpr, CHUNK: tl.constexpr):
        expert = tl.program_id(0)
        base = counts_ptr + expert.to(tl.int64) * row_count
        carry = tl.zeros((), tl.int32)
        for start in range(0, row_count, CHUNK):
            at = start + tl.arange(0, CHUNK)
            live = at < row_count
            count = tl.load(base + at, mask=live, other=0)
            inclusive = tl.cumsum(count, axis=0) + carry
            tl.store(base + at, inclusive - count, mask=live)  # exclusive prefix, in place
            if DROPS:  # choices of this expert at slot >= capacity, by token block
                drop = tl.minimum(tl.maximum(inclusive - capacity, 0), count)
                tl.atomic_add(dropped_ptr + at % num_blocks, drop, mask=live & (drop > 0))
            carry += tl.sum(count, axis=0)
        tl.store(totals_ptr + expert, carry)

    @triton.jit
    def finalize_kernel(totals_ptr, position_ptr, tpe_ptr, counts_ptr, offset_ptr, num_kept_ptr, sink_ptr,
                        dropped_ptr, num_experts, num_blocks, capacity, HAS_SINK: tl.constexpr,
                        DROPS: tl.constexpr, E_PAD: tl.constexpr, CHUNK: tl.constexpr):
        cols = tl.arange(0, E_PAD)
        live = cols < num_experts
        kept = tl.minimum(tl.load(totals_ptr + cols, mask=live, other=0), capacity).to(tl.int64)  # by expert
        tl.store(tpe_ptr + cols, kept, mask=live)
        position = tl.load(position_ptr + cols, mask=live, other=0)
        tl.store(counts_ptr + position, kept, mask=live)  # by position
        tl.debug_barrier()
        by_position = tl.load(counts_ptr + cols, mask=live, other=0)
        inclusive = tl.cumsum(by_position, axis=0)
        tl.store(offset_ptr + cols, inclusive - by_position, mask=live)
        num_kept = tl.sum(by_position, axis=0)
        tl.store(num_kept_ptr, num_kept)
        if HAS_SINK:  # the split-size exchange's input: kept rows per position, then their sum
            tl.store(sink_ptr + cols, by_position, mask=live)
            tl.store(sink_ptr + num_experts, num_kept)
        if DROPS:  # exclusive prefix of the dropped choices over token blocks, in place
            carry = tl.zeros((), tl.int32)
            for start in range(0, num_blocks, CHUNK):
                at = start + tl.arange(0, CHUNK)
                ok = at < num_blocks
                d = tl.load(dropped_ptr + at, mask=ok, other=0)
                tl.store(dropped_ptr + at, tl.cumsum(d, axis=0) - d + carry, mask=ok)
                carry += tl.sum(d, axis=0)

    @triton.jit
    def order_kernel(index_ptr, rank_ptr, prefix_ptr, position_ptr, offset_ptr, num_kept_ptr, dropped_ptr,
                     slot_ptr, kept_ptr, order_ptr, inv_ptr, token_ptr, num_tokens, num_blocks, capacity,
                     K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, DROPS: tl.constexpr,
                     ORDER: tl.constexpr):
        block = tl.program_id(0)
        rows = block * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
        kcols = tl.arange(0, K_PAD)
        live = (rows < num_tokens)[:, None] & (kcols < K)[None, :]  # (BT, K)
        flat = rows.to(tl.int64)[:, None] * K + kcols[None, :]  # token-major flat index t * K + j
        expert = tl.load(index_ptr + flat, mask=live, other=0)
        rank = tl.load(rank_ptr + flat, mask=live, other=0)
        row_count = num_blocks * K
        prefix = tl.load(prefix_ptr + expert * row_count + kcols[None, :] * num_blocks + block, mask=live, other=0)
        slot = prefix + rank
        kept = (slot < capacity) & live
        tl.store(slot_ptr + flat, tl.where(kept, slot, -1).to(tl.int64), mask=live)
        tl.store(kept_ptr + flat, kept.to(tl.int8), mask=live)
        if ORDER:
            position = tl.load(position_ptr + expert, mask=live, other=0)
            offset = tl.load(offset_ptr + position, mask=live, other=0)
            dest = offset + slot
            if DROPS:
                dropped = (live & (slot >= capacity)).to(tl.int32)
                per_row = tl.sum(dropped, axis=1)  # (BT,)
                before = (tl.cumsum(per_row, axis=0) - per_row)[:, None] + tl.cumsum(dropped, axis=1) - dropped
                first = tl.load(num_kept_ptr) + tl.load(dropped_ptr + block)
                dest = tl.where(kept, dest, first + before)
            tl.store(order_ptr + dest, flat, mask=live)
            tl.store(inv_ptr + flat, dest.to(tl.int64), mask=live)
            tl.store(token_ptr + dest, (flat // K), mask=live)

    _KERNELS[mode] = {"topk": topk_kernel, "scan": scan_kernel, "finalize": finalize_kernel, "order": order_kernel}
    return _KERNELS[mode]


def fused_topk_route(selection: torch.Tensor, router_logits: torch.Tensor | None, k: int, capacity: int,
                     position: torch.Tensor, bias: torch.Tensor | None = None, with_order: bool = True,
                     sink: torch.Tensor | None = None) -> dict:
    """Routing indices of T tokens on one rank, top-k of `selection` with "position" drops.

    selection: (T, E) scores (any float dtype). router_logits: (T, E), or None when they are the
    selection (topk; locmoe selects on its scores plus the locality bonus). bias: (E,) float32
    added to the selection in float32 (topk's gate bias: router logits = selection.float() + bias;
    only with router_logits None). capacity: slots per expert. position: (E,) int64, the expert's
    place in rank-major order. with_order=False skips the send order (order, inv, token_of_row are
    then None). sink: an (E + 1,) int64 buffer that also receives the kept rows per position and
    their sum. Returns a dict of expert_index, gate_weight, slot, kept (T, k), tokens_per_expert
    (E,), counts (E,) kept rows per position, order, inv, token_of_row (T*k,), and `flat`, the one
    int64 buffer the index outputs are views of (expert_index, slot, order, inv, tokens_per_expert,
    counts, token_of_row). No host synchronisation.
    """
    num_tokens, num_experts = selection.shape
    if num_experts > MAX_EXPERTS or k > MAX_K or k > num_experts:
        raise ValueError(f"fused routing handles E <= {MAX_EXPERTS} and k <= min({MAX_K}, E); got E={num_experts}, k={k}")
    if bias is not None and router_logits is not None:
        raise ValueError("bias is added to the selection when it is also the router logits (router_logits=None)")
    device = selection.device
    kernels = _kernels()
    extra = {} if _interpreting() else {"num_warps": 4}
    e_pad = max(16, _next_pow2(num_experts))
    k_pad = max(2, _next_pow2(k))
    block_t = max(1, min(128, _TILE // e_pad))
    num_blocks = triton_cdiv(num_tokens, block_t)
    rows = num_tokens * k
    same = router_logits is None or router_logits is selection
    selection = selection.contiguous()
    router_logits = selection if same else router_logits.contiguous()
    drops = capacity < num_tokens  # a (source rank, expert) pair gets at most T choices
    flat = torch.empty(5 * rows + 2 * num_experts, dtype=torch.int64, device=device)
    expert_index, slot, order, inv = (flat[i * rows:(i + 1) * rows] for i in range(4))
    tokens_per_expert = flat[4 * rows:4 * rows + num_experts]
    counts_by_position = flat[4 * rows + num_experts:4 * rows + 2 * num_experts]
    token_of_row = flat[4 * rows + 2 * num_experts:]
    gate_weight = torch.empty(num_tokens, k, dtype=torch.float32, device=device)
    rank = torch.empty(num_tokens, k, dtype=torch.int32, device=device)
    block_counts = torch.empty(num_experts, k * num_blocks, dtype=torch.int32, device=device)
    # the dropped choices per token block: zeroed by the top-k kernel (one program per block), summed
    # by the scan's atomic adds; unread without drops
    dropped = torch.empty(num_blocks if drops else 1, dtype=torch.int32, device=device)
    kernels["topk"][(num_blocks,)](selection, router_logits, bias if bias is not None else selection,
                                   expert_index, gate_weight, block_counts, rank, dropped, num_tokens, num_experts,
                                   num_blocks, K=k, K_PAD=k_pad, E_PAD=e_pad, BLOCK_T=block_t, SAME=same,
                                   HAS_BIAS=bias is not None, DROPS=drops, **extra)
    totals = torch.empty(num_experts, dtype=torch.int32, device=device)
    kernels["scan"][(num_experts,)](block_counts, totals, dropped, k * num_blocks, num_blocks, capacity,
                                    DROPS=drops, CHUNK=1024, **extra)
    offset = torch.empty(num_experts, dtype=torch.int64, device=device)
    num_kept = torch.empty(1, dtype=torch.int64, device=device)
    kernels["finalize"][(1,)](totals, position, tokens_per_expert, counts_by_position, offset, num_kept,
                              sink if sink is not None else offset, dropped, num_experts, num_blocks, capacity,
                              HAS_SINK=sink is not None, DROPS=drops, E_PAD=e_pad, CHUNK=1024, **extra)
    kept8 = torch.empty(num_tokens, k, dtype=torch.int8, device=device)
    kernels["order"][(num_blocks,)](expert_index, rank, block_counts, position, offset, num_kept, dropped,
                                    slot, kept8, order, inv, token_of_row, num_tokens, num_blocks, capacity,
                                    K=k, K_PAD=k_pad, BLOCK_T=block_t, DROPS=drops, ORDER=with_order, **extra)
    out = {"expert_index": expert_index.view(num_tokens, k), "gate_weight": gate_weight,
           "slot": slot.view(num_tokens, k), "kept": kept8.view(torch.bool),
           "tokens_per_expert": tokens_per_expert, "counts": counts_by_position, "flat": flat,
           "order": order, "inv": inv, "token_of_row": token_of_row}
    if not with_order:
        out["order"] = out["inv"] = out["token_of_row"] = None
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
