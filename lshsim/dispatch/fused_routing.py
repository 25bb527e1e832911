"""Top-k routing of one rank's tokens in a handful of Triton kernels (the torch routers' ~60).

`route_on_rank` followed by the executor's send order (`choice_order`) is about 60 small torch
kernels; on a GPU whose launches cost ~20 us of host time, or inside a CUDA graph where each
still costs a few microseconds of GPU time, that is the gate's whole time. `fused_topk_route`
computes the same result in about ten kernels:

1. `topk_kernel`: per block of tokens, the k largest entries of the selection scores (first
   index on ties, as `argmax`), and the gate weights from the router logits (k = 1: the softmax
   probability over all experts; k > 1: a softmax over the k chosen logits).
2. `count_kernel` / torch.cumsum / `slot_kernel`: the choices in choice-major order (all first
   choices in token order, then all second choices, ...: the "position" drop policy); a choice's
   slot is the number of earlier choices of the same expert: per-block expert counts, their
   exclusive prefix over blocks, and a prefix within the block. kept = slot < capacity.
3. `order_kernel`: the send position of every choice: kept ones at offset[position of the
   expert] + slot (rank-major expert order, then slot), dropped ones after all kept ones in flat
   (token-major) order; order, its inverse and the token of every send row are scattered there.

The result equals `route_on_rank` + `choice_order` (tests/test_fused_routing.py, in the CPU
interpreter and on CUDA) for the top-k and locmoe routers with drop_policy "position", all tokens
on one rank. Only the index work is here; the gradient of the gate weights is the caller's
(`lshsim.executor.gate_graph.GateWeights`). Triton is imported lazily (`available()`).
"""
from __future__ import annotations

import os

import torch

from lshsim.dispatch.lsh_fast import _interpreting, _next_pow2, _triton

__all__ = ["available", "fused_topk_route", "MAX_EXPERTS", "MAX_K"]

#: limits of the kernels (registers hold a block of (tokens, experts) scores)
MAX_EXPERTS = 512
MAX_K = 16

_KERNELS: dict = {}


def available(device: torch.device) -> bool:
    """True when Triton imports and the device is CUDA (or TRITON_INTERPRET=1 on a CPU tensor)."""
    if _triton() is None or os.environ.get("LSHSIM_NO_FUSED_ROUTING") == "1":
        return False
    return torch.device(device).type == "cuda" or _interpreting()


def _kernels():
    mode = _interpreting()
    if mode in _KERNELS:
        return _KERNELS[mode]
    triton = _triton()
    import triton.language as tl

    @triton.jit
    def topk_kernel(sel_ptr, logit_ptr, index_ptr, weight_ptr, num_tokens, num_experts,
                    K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
        cols = tl.arange(0, E_PAD)  # (E,)
        kcols = tl.arange(0, K_PAD)  # (K,)
        row_mask = rows < num_tokens
        mask = row_mask[:, None] & (cols[None, :] < num_experts)
        offs = rows.to(tl.int64)[:, None] * num_experts + cols[None, :]
        sel = tl.load(sel_ptr + offs, mask=mask, other=float("-inf"))  # (BT, E)
        logit = tl.load(logit_ptr + offs, mask=mask, other=float("-inf"))  # (BT, E)
        # the k choices stay in registers (a store and a reload of the same address by other
        # threads of the program would need a barrier)
        values = tl.full((BLOCK_T, K_PAD), float("-inf"), tl.float32)  # router logits of the choices
        indices = tl.zeros((BLOCK_T, K_PAD), tl.int64)
        for j in tl.static_range(K):
            best = tl.max(sel, axis=1)  # (BT,)
            index = tl.min(tl.where(sel == best[:, None], cols[None, :], E_PAD), axis=1)  # first max
            hit = cols[None, :] == index[:, None]
            value = tl.sum(tl.where(hit, logit, 0.0), axis=1)  # the router logit of the choice
            values = tl.where(kcols[None, :] == j, value[:, None], values)
            indices = tl.where(kcols[None, :] == j, index.to(tl.int64)[:, None], indices)
            sel = tl.where(hit, float("-inf"), sel)
        # gate weights: K = 1, softmax over all experts; K > 1, softmax over the K chosen logits
        if K == 1:
            top = tl.max(logit, axis=1)  # (BT,)
            total = tl.sum(tl.exp(logit - top[:, None]), axis=1)
            weights = tl.exp(values - top[:, None]) / total[:, None]
        else:
            top = tl.max(values, axis=1)
            e = tl.where(kcols[None, :] < K, tl.exp(values - top[:, None]), 0.0)
            weights = e / tl.sum(e, axis=1)[:, None]
        out = rows.to(tl.int64)[:, None] * K + kcols[None, :]
        out_mask = row_mask[:, None] & (kcols[None, :] < K)
        tl.store(index_ptr + out, indices, mask=out_mask)
        tl.store(weight_ptr + out, weights, mask=out_mask)

    @triton.jit
    def count_kernel(index_ptr, counts_ptr, num_tokens, num_experts, K: tl.constexpr,
                     E_PAD: tl.constexpr, BLOCK_F: tl.constexpr):
        # flat choice-major entry f = j * T + t holds expert index[t, j]
        block = tl.program_id(0)
        f = block * BLOCK_F + tl.arange(0, BLOCK_F)  # (BF,)
        live = f < num_tokens * K
        t = f % num_tokens
        j = f // num_tokens
        expert = tl.load(index_ptr + t.to(tl.int64) * K + j, mask=live, other=-1)  # (BF,)
        cols = tl.arange(0, E_PAD)
        onehot = (expert[:, None] == cols[None, :]).to(tl.int32)  # (BF, E)
        tl.store(counts_ptr + block * num_experts + cols, tl.sum(onehot, axis=0), mask=cols < num_experts)

    @triton.jit
    def slot_kernel(index_ptr, prefix_ptr, slot_ptr, kept_ptr, num_tokens, num_experts, capacity,
                    K: tl.constexpr, E_PAD: tl.constexpr, BLOCK_F: tl.constexpr):
        block = tl.program_id(0)
        f = block * BLOCK_F + tl.arange(0, BLOCK_F)
        live = f < num_tokens * K
        t = f % num_tokens
        j = f // num_tokens
        expert = tl.load(index_ptr + t.to(tl.int64) * K + j, mask=live, other=-1)  # (BF,)
        cols = tl.arange(0, E_PAD)
        onehot = (expert[:, None] == cols[None, :]).to(tl.int32)  # (BF, E)
        before = tl.cumsum(onehot, axis=0) - onehot  # exclusive prefix within the block
        base = tl.load(prefix_ptr + block * num_experts + cols, mask=cols < num_experts, other=0)  # (E,)
        slot = tl.sum(tl.where(onehot > 0, before + base[None, :], 0), axis=1)  # (BF,)
        kept = slot < capacity
        out = t.to(tl.int64) * K + j
        tl.store(slot_ptr + out, tl.where(kept, slot, -1).to(tl.int64), mask=live)
        tl.store(kept_ptr + out, kept.to(tl.int8), mask=live)

    @triton.jit
    def order_kernel(index_ptr, slot_ptr, kept_ptr, dropped_rank_ptr, position_ptr, offset_ptr, num_kept_ptr,
                     order_ptr, inv_ptr, token_ptr, total, K: tl.constexpr, BLOCK: tl.constexpr):
        # token-major flat entry i = t * K + j
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = i < total
        expert = tl.load(index_ptr + i, mask=live, other=0)
        slot = tl.load(slot_ptr + i, mask=live, other=0)
        kept = tl.load(kept_ptr + i, mask=live, other=0) != 0
        position = tl.load(position_ptr + expert, mask=live, other=0)
        offset = tl.load(offset_ptr + position, mask=live, other=0)
        num_kept = tl.load(num_kept_ptr)
        dropped_rank = tl.load(dropped_rank_ptr + i, mask=live, other=0)  # dropped before i (exclusive)
        dest = tl.where(kept, offset + slot, num_kept + dropped_rank)
        tl.store(order_ptr + dest, i.to(tl.int64), mask=live)
        tl.store(inv_ptr + i, dest.to(tl.int64), mask=live)
        tl.store(token_ptr + dest, (i // K).to(tl.int64), mask=live)

    _KERNELS[mode] = {"topk": topk_kernel, "count": count_kernel, "slot": slot_kernel, "order": order_kernel}
    return _KERNELS[mode]


def fused_topk_route(selection: torch.Tensor, router_logits: torch.Tensor, k: int, capacity: int,
                     position: torch.Tensor) -> dict:
    """Routing indices of T tokens on one rank, top-k of `selection` with "position" drops.

    selection, router_logits: (T, E) float32 (equal for topk; locmoe selects on scores plus its
    locality bonus). capacity: slots per expert. position: (E,) int64, the expert's place in
    rank-major order. Returns a dict of expert_index, gate_weight, slot, kept (T, k),
    tokens_per_expert (E,), counts (E,) kept rows per position, order, inv, token_of_row (T*k,):
    the fields of `route_on_rank`'s plan and of `choice_order` (+ inverse, token of each row).
    No host synchronisation.
    """
    num_tokens, num_experts = selection.shape
    if num_experts > MAX_EXPERTS or k > MAX_K or k > num_experts:
        raise ValueError(f"fused routing handles E <= {MAX_EXPERTS} and k <= min({MAX_K}, E); got E={num_experts}, k={k}")
    device = selection.device
    kernels = _kernels()
    e_pad = max(16, _next_pow2(num_experts))
    selection = selection.float().contiguous()
    router_logits = router_logits.float().contiguous()
    expert_index = torch.empty(num_tokens, k, dtype=torch.int64, device=device)
    gate_weight = torch.empty(num_tokens, k, dtype=torch.float32, device=device)
    block_t = max(1, min(64, 8192 // e_pad))
    extra = {} if _interpreting() else {"num_warps": 4}
    kernels["topk"][(triton_cdiv(num_tokens, block_t),)](selection, router_logits, expert_index, gate_weight,
                                                       num_tokens, num_experts, K=k, K_PAD=max(2, _next_pow2(k)),
                                                       E_PAD=e_pad, BLOCK_T=block_t, **extra)
    total = num_tokens * k
    block_f = max(16, min(256, 8192 // e_pad))
    blocks = triton_cdiv(total, block_f)
    counts = torch.empty(blocks, num_experts, dtype=torch.int32, device=device)
    kernels["count"][(blocks,)](expert_index, counts, num_tokens, num_experts, K=k, E_PAD=e_pad,
                                BLOCK_F=block_f, **extra)
    inclusive = torch.cumsum(counts, dim=0, dtype=torch.int32)  # (blocks, E)
    prefix = (inclusive - counts).contiguous()
    slot = torch.empty(num_tokens, k, dtype=torch.int64, device=device)
    kept8 = torch.empty(num_tokens, k, dtype=torch.int8, device=device)
    kernels["slot"][(blocks,)](expert_index, prefix, slot, kept8, num_tokens, num_experts, capacity, K=k,
                               E_PAD=e_pad, BLOCK_F=block_f, **extra)
    per_expert = inclusive[-1].to(torch.int64)  # (E,) choices per expert
    tokens_per_expert = per_expert.clamp(max=capacity)  # (E,) kept per expert (one source rank)
    counts_by_position = torch.empty_like(tokens_per_expert).scatter_(0, position, tokens_per_expert)  # (E,)
    offset = torch.cumsum(counts_by_position, 0) - counts_by_position  # (E,) first send row of a position
    kept = kept8.bool()
    dropped = (~kept).reshape(-1).to(torch.int32)
    dropped_rank = torch.cumsum(dropped, 0, dtype=torch.int32) - dropped  # (T*k,)
    num_kept = tokens_per_expert.sum().reshape(1)
    order = torch.empty(total, dtype=torch.int64, device=device)
    inv = torch.empty_like(order)
    token_of_row = torch.empty_like(order)
    block = 1024
    kernels["order"][(triton_cdiv(total, block),)](expert_index, slot, kept8, dropped_rank, position, offset,
                                                   num_kept, order, inv, token_of_row, total, K=k, BLOCK=block,
                                                   **extra)
    return {"expert_index": expert_index, "gate_weight": gate_weight, "slot": slot, "kept": kept,
            "tokens_per_expert": tokens_per_expert, "counts": counts_by_position, "order": order, "inv": inv,
            "token_of_row": token_of_row}


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
