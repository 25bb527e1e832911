"""The executor layer's data movement and expert arithmetic, fast on a GPU and exact on a CPU.

Pure torch (no process group), each piece with a backward that is a gather, never a scatter with
accumulation (atomics are slow and order-dependent on a GPU):

* `choice_order`: the kept (token, choice) pairs sorted by (destination expert position, slot),
  dropped and padding choices last, computed without a host synchronisation.
* `gather_choices`: the send rows x[order // k] (T*k rows); backward: sum the k rows of a token.
* `permute_rows`: rows in another order (received rows grouped by local expert and back).
* `combine_choices`: y_t = sum_j w_tj * out_(t, j): the kept rows back on their (token, choice)
  grid, one batched (1 x k) @ (k x d) product per token.
* `expert_ffn_grouped`: gelu(x W1) W2 for rows grouped by expert: on a GPU with many local experts
  of few rows each, the Triton grouped GEMM of `grouped_gemm` ("triton_gmm", faster there:
  benchmarks/RESULTS.md); else `torch.nn.functional.grouped_mm` where the installed torch has it
  for these tensors; one padded batched matmul otherwise.

Shapes: T tokens, k choices, d model width, N kept rows (known on the host only after the
split-size exchange), E_r local experts, R received rows.
"""
from __future__ import annotations

import functools
import os

import torch

from lshsim.dispatch.routers import count_values

__all__ = ["choice_order", "expert_block", "inverse_permutation", "gather_choices", "gather_choices_grad", "permute_rows", "combine_choices",
           "expert_ffn_grouped", "grouped_mm_available", "GROUPED_MM", "EXPERT_METHODS", "auto_expert_method"]

#: the expert arithmetic's implementations (`expert_ffn_grouped`'s method, besides "auto")
EXPERT_METHODS = ("grouped_mm", "padded_bmm", "triton_gmm")
#: "auto" takes the Triton grouped GEMM from this many local experts ...
TRITON_GMM_MIN_EXPERTS = 32
#: ... when they hold at most this many rows each on average (their weights, not their rows, set the time)
TRITON_GMM_MAX_ROWS_PER_EXPERT = 256
#: ... and each expert's matrix is at least this large (d_model x d_ffn; below it the launch and the tails
#: dominate and torch's kernel was as fast or faster: 64 experts of 4,096 x 1,408, run-ag)
TRITON_GMM_MIN_EXPERT_ELEMENTS = 2 ** 23

#: torch's grouped matrix multiply (public from torch 2.9, private before), or None
GROUPED_MM = getattr(torch.nn.functional, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """inv with inv[order[i]] = i, on the device of `order` (no synchronisation).

    >>> inverse_permutation(torch.tensor([2, 0, 1])).tolist()
    [1, 2, 0]
    """
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return inv


def choice_order(expert_index: torch.Tensor, slot: torch.Tensor, kept: torch.Tensor, position: torch.Tensor,
                 capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order of the T*k flat choices (flat index t*k + j) for the send buffer, and rows per position.

    Kept choices are sorted by (position of their expert, slot), i.e. by destination rank, then
    expert, then slot, as the all-to-all needs them; dropped and padding choices follow, in flat
    order. position: (E,) int64, the expert's place in rank-major order. Returns order (T*k,) int64
    and counts (E,) int64 kept rows per position. No host synchronisation.
    """
    num_experts = position.numel()
    stride = max(int(capacity), 1)
    flat_kept = kept.reshape(-1)  # (T*k,)
    flat_position = position[expert_index.clamp(min=0)].reshape(-1)  # (T*k,)
    sentinel = num_experts * stride
    key = torch.where(flat_kept, flat_position * stride + slot.reshape(-1).clamp(min=0),
                      torch.full_like(flat_position, sentinel))  # (T*k,)
    if sentinel < 2 ** 31 - 1:
        key = key.to(torch.int32)  # an int32 sort is about 2x faster than int64
    order = torch.sort(key, stable=True).indices  # (T*k,)
    counts = count_values(torch.where(flat_kept, flat_position, num_experts), num_experts + 1)[:num_experts]
    return order, counts


def gather_choices_grad(grad: torch.Tensor, inv: torch.Tensor, shape: torch.Size, k: int) -> torch.Tensor:
    """The tokens' gradient of a choice gather: the rows' gradient back in (token, choice) order through
    the inverse permutation `inv`, summed over a token's k choices in fp32 (the input's dtype back)."""
    num_tokens, d_model = shape
    grad_x = grad.index_select(0, inv).view(num_tokens, k, d_model)
    if k > 1:
        return grad_x.sum(dim=1, dtype=torch.float32).to(grad.dtype)  # (T, d)
    return grad_x.reshape(num_tokens, d_model)


class _GatherChoices(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, order, inv, k, token_of_row):
        ctx.save_for_backward(inv)
        ctx.shape, ctx.k = x.shape, k
        if token_of_row is None:
            token_of_row = torch.div(order, k, rounding_mode="floor")
        return x.index_select(0, token_of_row)

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return gather_choices_grad(grad, inv, ctx.shape, ctx.k), None, None, None, None


def gather_choices(x: torch.Tensor, order: torch.Tensor, inv: torch.Tensor, k: int,
                   token_of_row: torch.Tensor | None = None) -> torch.Tensor:
    """(T, d) -> (T*k, d): row i is token order[i] // k (`token_of_row`, when the caller has it).
    Backward: the k rows of a token summed (fp32), read back through inv =
    inverse_permutation(order); no atomics."""
    return _GatherChoices.apply(x, order, inv, k, token_of_row)


class _Permute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, perm, inv):
        ctx.save_for_backward(inv)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return grad.index_select(0, inv), None, None


def permute_rows(x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor | None = None) -> torch.Tensor:
    """x[perm] for a permutation perm; the backward gathers with its inverse."""
    return _Permute.apply(x, perm, inverse_permutation(perm) if inv is None else inv)


class _Unsort(torch.autograd.Function):
    """(N, d) rows in send order -> (T*k, d) rows on the choice grid; choices without a row read
    row 0 (their combine weight is 0)."""

    @staticmethod
    def forward(ctx, rows, order, inv, num_rows):
        ctx.save_for_backward(order)
        ctx.num_rows = num_rows
        return rows.index_select(0, inv.clamp(max=max(num_rows - 1, 0)))

    @staticmethod
    def backward(ctx, grad):
        (order,) = ctx.saved_tensors
        return grad.index_select(0, order[:ctx.num_rows]), None, None, None


def combine_choices(rows: torch.Tensor, order: torch.Tensor, inv: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """y (T, d) with y_t = sum_j weight[t, j] * rows[inv[t*k + j]].

    rows: (N, d), the outputs of the first N entries of `order` (the kept choices); weight: (T, k)
    float, zero where a choice is not kept. One (1, k) @ (k, d) product per token in the rows'
    dtype (bf16 on a GPU: the weights are rounded to bf16, fp32 accumulation).
    """
    num_tokens, k = weight.shape
    if rows.shape[0] == 0:
        return torch.zeros(num_tokens, rows.shape[1], dtype=rows.dtype, device=rows.device) + 0 * weight.sum()
    grid = _Unsort.apply(rows, order, inv, rows.shape[0]).view(num_tokens, k, rows.shape[1])  # (T, k, d)
    return torch.bmm(weight.to(rows.dtype).unsqueeze(1), grid).squeeze(1)  # (T, d)


@functools.lru_cache(maxsize=None)
def _grouped_mm_works(device_type: str, device_index: int | None, dtype: torch.dtype) -> bool:
    """Whether GROUPED_MM runs (forward and backward) for this device and dtype: probed once."""
    if GROUPED_MM is None:
        return False
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    try:
        a = torch.ones(16, 16, dtype=dtype, device=device, requires_grad=True)
        b = torch.ones(2, 16, 16, dtype=dtype, device=device, requires_grad=True)
        offs = torch.tensor([8, 16], dtype=torch.int32, device=device)
        out = GROUPED_MM(a, b, offs=offs)
        out.backward(torch.ones_like(out))
        return bool(torch.allclose(out.float(), torch.full((16, 16), 16.0, device=device)))
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def grouped_mm_available(x: torch.Tensor, d_model: int, d_ffn: int) -> bool:
    """GROUPED_MM can multiply these rows: it runs for x's device and dtype (bf16 on CUDA; the CPU
    kernel takes any float) and both widths are multiples of 16 bytes (its stride rule)."""
    if x.device.type == "cuda" and x.dtype != torch.bfloat16:
        return False
    row_bytes = x.element_size()
    if (d_model * row_bytes) % 16 or (d_ffn * row_bytes) % 16:
        return False
    return _grouped_mm_works(x.device.type, x.device.index, x.dtype)


def auto_expert_method(x: torch.Tensor, num_experts: int, d_model: int, d_ffn: int) -> str:
    """The method "auto" takes for rows x over `num_experts` local experts (host values only): the
    Triton grouped GEMM on a GPU with at least TRITON_GMM_MIN_EXPERTS experts of at most
    TRITON_GMM_MAX_ROWS_PER_EXPERT rows each on average and d_model x d_ffn of at least
    TRITON_GMM_MIN_EXPERT_ELEMENTS (where it measured faster than torch's, DeepSeek-V3-like: uneven
    counts around a tile's 128 rows, weights read once per expert); else grouped_mm where it runs;
    else the padded batched matmul."""
    from . import grouped_gemm
    if (num_experts >= TRITON_GMM_MIN_EXPERTS and x.shape[0] <= TRITON_GMM_MAX_ROWS_PER_EXPERT * num_experts
            and d_model * d_ffn >= TRITON_GMM_MIN_EXPERT_ELEMENTS
            and grouped_gemm.available(x) and os.environ.get("LSHSIM_NO_TRITON_GMM") != "1"):
        return "triton_gmm"
    return "grouped_mm" if grouped_mm_available(x, d_model, d_ffn) else "padded_bmm"


class _TritonLinear(torch.autograd.Function):
    """x @ w[e] per expert by the Triton grouped GEMM; backward: dx by the same kernel on w
    transposed, dw[e] = x_e^T dy_e by torch's grouped matrix multiply (its K-grouped form, faster
    than a Triton one here), or by `grouped_gemm.grouped_weight_grad` where torch has none."""

    @staticmethod
    def forward(ctx, x, w, offsets):
        from .grouped_gemm import grouped_matmul
        ctx.save_for_backward(x, w, offsets)
        return grouped_matmul(x, w, offsets)

    @staticmethod
    def backward(ctx, dy):
        from .grouped_gemm import grouped_matmul, grouped_weight_grad
        x, w, offsets = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = grouped_matmul(dy, w.transpose(1, 2), offsets)
        if ctx.needs_input_grad[1]:
            if GROUPED_MM is not None:
                dw = GROUPED_MM(x.transpose(0, 1), dy, offs=offsets).to(w.dtype)
            else:
                dw = grouped_weight_grad(x, dy, offsets, w.shape[0], w.dtype)
        return dx, dw, None


def expert_ffn_grouped(x: torch.Tensor, rows_per_expert: list[int], offsets: torch.Tensor, w1: torch.Tensor,
                       w2: torch.Tensor, method: str = "auto") -> tuple[torch.Tensor, str]:
    """gelu(x W1[e]) W2[e] for the rows of every expert e; rows grouped by expert, in order.

    x (R, d); rows_per_expert: E_r host ints (sum R); offsets: (E_r,) int32 device cumulative row
    counts; w1 (E_r, d, f), w2 (E_r, f, d). method "grouped_mm", "padded_bmm", "triton_gmm" (CUDA
    and Triton only) or "auto" (`auto_expert_method`). Returns (out (R, d), the method used).
    """
    num_experts, d_model, d_ffn = w1.shape
    if method == "auto":
        method = auto_expert_method(x, num_experts, d_model, d_ffn)
    if x.shape[0] == 0:
        # no rows: an empty output that still depends on x and the weights, so that the backward
        # reaches the dispatch all-to-all that delivered x on this rank too (its peers wait in it)
        return x[:, :0].sum(1, keepdim=True).expand(0, d_model) + 0 * (w1.sum() + w2.sum()).to(x.dtype), method
    if method == "grouped_mm":
        hidden = torch.nn.functional.gelu(GROUPED_MM(x, w1, offs=offsets))  # (R, f)
        return GROUPED_MM(hidden, w2, offs=offsets), method
    if method == "triton_gmm":
        from .grouped_gemm import _triton, available
        if not available(x):
            raise ValueError(f"method='triton_gmm' needs bf16 or fp16 rows on CUDA and Triton; here {x.dtype} rows on "
                             f"{x.device.type}, Triton {'imports' if _triton() is not None else 'does not import'}")
        hidden = torch.nn.functional.gelu(_TritonLinear.apply(x, w1, offsets))  # (R, f)
        return _TritonLinear.apply(hidden, w2, offsets), method
    if method != "padded_bmm":
        raise ValueError(f"method={method!r} must be 'auto' or one of {', '.join(EXPERT_METHODS)}")
    # pad every expert's rows to the largest count: (E_r, m, d), one bmm per matrix
    most = max(rows_per_expert)
    counts = torch.diff(offsets.long(), prepend=offsets.new_zeros(1).long())  # (E_r,)
    expert = torch.repeat_interleave(torch.arange(num_experts, device=x.device), counts,
                                     output_size=x.shape[0])  # (R,)
    starts = offsets.long() - counts  # (E_r,)
    slot = expert * most + torch.arange(x.shape[0], device=x.device) - starts[expert]  # (R,)
    padded = x.new_zeros((num_experts * most, d_model)).index_copy(0, slot, x).view(num_experts, most, d_model)
    hidden = torch.nn.functional.gelu(torch.bmm(padded, w1))  # (E_r, m, f)
    out = torch.bmm(hidden, w2).view(num_experts * most, d_model)  # (E_r * m, d)
    return out.index_select(0, slot), method


def expert_block(recv_x: torch.Tensor, received: torch.Tensor, rows_per_expert: list[int], w1: torch.Tensor,
                 w2: torch.Tensor, method: str = "auto", offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """The executor's whole expert phase on one rank: received rows -> expert outputs, same order.

    recv_x (R, d): rows as the dispatch all-to-all delivers them, grouped by source rank, and
    within a source by local expert; received (W, E_r) device counts of those blocks;
    rows_per_expert: E_r host ints (column sums of `received`). With W > 1 and E_r > 1 the rows
    are regrouped by expert (a stable sort of their expert ids, `permute_rows`), run through
    `expert_ffn_grouped` and put back in arrival order. `executor calibrate --phases` times this
    function, so the calibrated expert model is the cost of exactly this code. offsets: the (E_r,)
    int32 cumulative rows per expert where the caller has them on the device (the split-size
    exchange's graph computes them: `comm.CountExchange.offsets`), else computed here.
    """
    world, per_rank = received.shape
    if offsets is None:
        offsets = torch.cumsum(received.sum(0), 0).to(torch.int32)  # (E_r,)
    if world > 1 and per_rank > 1:
        local_expert = torch.repeat_interleave(
            torch.arange(per_rank, device=recv_x.device).repeat(world), received.reshape(-1),
            output_size=recv_x.shape[0])  # (R,)
        by_expert = torch.sort(local_expert.to(torch.int32), stable=True).indices  # (R,)
        by_expert_inv = inverse_permutation(by_expert)
        grouped = permute_rows(recv_x, by_expert, by_expert_inv)  # (R, d)
        out, method = expert_ffn_grouped(grouped, rows_per_expert, offsets, w1, w2, method)
        return permute_rows(out, by_expert_inv, by_expert), method
    return expert_ffn_grouped(recv_x, rows_per_expert, offsets, w1, w2, method)
