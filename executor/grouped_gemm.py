"""Grouped GEMM for the experts in Triton: rows grouped by expert times one weight matrix per expert.

`grouped_matmul(x, w, offsets)` computes y[rows of e] = x[rows of e] @ w[e] for the E experts whose
rows are consecutive in x (offsets: (E,) int32 device cumulative row counts, as torch's grouped
matrix multiply takes them), without a host synchronisation: every program reads the E offsets,
counts the row blocks of every expert (ceil(rows / BLOCK_M)) and finds its (expert, row block)
by a prefix sum, so the grid is an upper bound (ceil(R / BLOCK_M) + E row blocks) and the programs
past the last block return at once.

Why a second grouped GEMM next to torch's: with a few hundred rows per expert (the centroids of
LSH-MoE, fine-grained experts) the experts' row counts are uneven and not multiples of the tile,
so a 128-row tile wastes up to half its work on an expert of 129 rows, and where the GEMM is
bound by reading the weights (DeepSeek-V3-like: 128 rows per expert on average) an expert's
weights are read once per row block unless the blocks of one expert run together. Here the
programs are ordered GROUP_M row blocks at a time over all column blocks, so the row blocks of
one expert run side by side and share its weight tiles in L2, and an expert's last block of at
most half a tile's rows runs as a half-height tile (HALF_TAIL: half the multiply work).

`grouped_weight_grad(x, dy, offsets, E)` is the weight gradient dw[e] = x_e^T dy_e (one program per
(expert, tile of dw), looping over the expert's rows). The autograd function that uses both is
`moe_ops._TritonLinear` (the input gradient dy @ w[e]^T is `grouped_matmul` on the transposed
weights; the weight gradient is torch's grouped matrix multiply where torch has it: faster than
this one on an H200). Triton is imported lazily; `available()` says whether this path can run
(CUDA, Triton, bf16 or fp16).
"""
from __future__ import annotations

import torch

from lshsim.dispatch.lsh_fast import _triton

__all__ = ["available", "grouped_matmul", "grouped_weight_grad", "CONFIGS", "WGRAD_CONFIGS", "pick_config"]

#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M, HALF_TAIL) candidates
CONFIGS = [
    (128, 256, 64, 8, 3, 8, False),
    (128, 256, 64, 8, 4, 8, False),
    (128, 256, 64, 8, 3, 8, True),
    (128, 256, 64, 8, 4, 8, True),
    (128, 128, 64, 8, 4, 8, True),
    (128, 256, 64, 8, 3, 4, True),
]

_KERNEL: dict = {}


def available(x: torch.Tensor) -> bool:
    """Whether `grouped_matmul` runs for rows like x: CUDA, bf16 / fp16, Triton installed."""
    return x.device.type == "cuda" and x.dtype in (torch.bfloat16, torch.float16) and _triton() is not None


def _kernel():
    if "gmm" in _KERNEL:
        return _KERNEL["gmm"]
    triton = _triton()
    global tl, _gmm_tile  # module globals: the kernel resolves the names it calls there
    import triton.language as tl

    @triton.jit
    def _gmm_tile(x_ptr, w_ptr, y_ptr, row0, row_end, e, pid_n, N, K,
                  stride_xm, stride_xk, stride_we, stride_wk, stride_wn, stride_ym, stride_yn,
                  ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
        # y[row0:row0 + ROWS (< row_end), column block pid_n] = x[rows] @ w[e][:, columns]
        rm = (row0 + tl.arange(0, ROWS)).to(tl.int64)
        rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        rk = tl.arange(0, BLOCK_K).to(tl.int64)
        row_ok = rm < row_end
        x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk
        w_ptrs = w_ptr + e.to(tl.int64) * stride_we + rk[:, None] * stride_wk + rn[None, :] * stride_wn
        acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(w_ptrs, mask=rn[None, :] < N, other=0.0)
            else:
                k_left = K - kb * BLOCK_K
                a = tl.load(x_ptrs, mask=row_ok[:, None] & (rk[None, :] < k_left), other=0.0)
                b = tl.load(w_ptrs, mask=(rk[:, None] < k_left) & (rn[None, :] < N), other=0.0)
            acc = tl.dot(a, b, acc)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        y_ptrs = y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & (rn[None, :] < N))

    @triton.jit
    def gmm_kernel(x_ptr, w_ptr, y_ptr, offs_ptr, E, N, K, num_pid_m_bound,
                   stride_xm, stride_xk, stride_we, stride_wk, stride_wn, stride_ym, stride_yn,
                   E_POW2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP: tl.constexpr, EVEN_K: tl.constexpr, HALF_TAIL: tl.constexpr):
        pid = tl.program_id(0)
        # every expert's rows and row blocks, from the cumulative offsets
        e_idx = tl.arange(0, E_POW2)
        ends = tl.load(offs_ptr + e_idx, mask=e_idx < E, other=0)
        starts = tl.load(offs_ptr + e_idx - 1, mask=(e_idx > 0) & (e_idx < E), other=0)
        counts = tl.where(e_idx < E, ends - starts, 0)
        blocks = (counts + BLOCK_M - 1) // BLOCK_M
        cum = tl.cumsum(blocks, 0)  # inclusive
        num_pid_m = tl.sum(blocks, 0)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        # GROUP row blocks at a time over all column blocks
        in_group = GROUP * num_pid_n
        group_id = pid // in_group
        first_m = group_id * GROUP
        if first_m >= num_pid_m:
            return
        group_size = tl.minimum(num_pid_m - first_m, GROUP)
        pid_m = first_m + (pid % in_group) % group_size
        pid_n = (pid % in_group) // group_size
        # the expert of this row block and the block's rows
        e = tl.sum((cum <= pid_m).to(tl.int32), 0)
        before = tl.sum(tl.where(e_idx == e, cum - blocks, 0), 0)
        row0 = tl.sum(tl.where(e_idx == e, starts, 0), 0) + (pid_m - before) * BLOCK_M
        row_end = tl.sum(tl.where(e_idx == e, ends, 0), 0)
        if HALF_TAIL:
            # an expert's last block of at most BLOCK_M / 2 rows: a tile of half the rows (half the
            # multiply work; its weight tiles still shared in L2 with the expert's other blocks)
            if row_end - row0 <= BLOCK_M // 2:
                _gmm_tile(x_ptr, w_ptr, y_ptr, row0, row_end, e, pid_n, N, K, stride_xm, stride_xk, stride_we,
                          stride_wk, stride_wn, stride_ym, stride_yn, BLOCK_M // 2, BLOCK_N, BLOCK_K, EVEN_K)
            else:
                _gmm_tile(x_ptr, w_ptr, y_ptr, row0, row_end, e, pid_n, N, K, stride_xm, stride_xk, stride_we,
                          stride_wk, stride_wn, stride_ym, stride_yn, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)
        else:
            _gmm_tile(x_ptr, w_ptr, y_ptr, row0, row_end, e, pid_n, N, K, stride_xm, stride_xk, stride_we,
                      stride_wk, stride_wn, stride_ym, stride_yn, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)

    _KERNEL["gmm"] = gmm_kernel
    return gmm_kernel


def _wgrad_kernel():
    if "wgrad" in _KERNEL:
        return _KERNEL["wgrad"]
    triton = _triton()
    import triton.language as tl

    @triton.jit
    def wgrad_kernel(x_ptr, dy_ptr, dw_ptr, offs_ptr, K, N,
                     stride_xm, stride_xk, stride_ym, stride_yn, stride_we, stride_wk, stride_wn,
                     BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, GROUP: tl.constexpr):
        # dw[e] = x_e^T dy_e: one (K block, N block) tile of expert e (grid axis 1) per program
        pid = tl.program_id(0)
        e = tl.program_id(1)
        start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
        end = tl.load(offs_ptr + e)
        num_pid_k = tl.cdiv(K, BLOCK_K)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        in_group = GROUP * num_pid_n
        first_k = (pid // in_group) * GROUP
        group_size = tl.minimum(num_pid_k - first_k, GROUP)
        pid_k = first_k + (pid % in_group) % group_size
        pid_n = (pid % in_group) // group_size
        rk = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
        rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for r0 in range(start, end, BLOCK_R):
            rr = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
            ok = rr < end
            a = tl.load(x_ptr + rr[None, :] * stride_xm + rk[:, None] * stride_xk,
                        mask=ok[None, :] & (rk[:, None] < K), other=0.0)  # (BLOCK_K, BLOCK_R)
            b = tl.load(dy_ptr + rr[:, None] * stride_ym + rn[None, :] * stride_yn,
                        mask=ok[:, None] & (rn[None, :] < N), other=0.0)  # (BLOCK_R, BLOCK_N)
            acc = tl.dot(a, b, acc)
        w_ptrs = dw_ptr + e.to(tl.int64) * stride_we + rk[:, None] * stride_wk + rn[None, :] * stride_wn
        tl.store(w_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=(rk[:, None] < K) & (rn[None, :] < N))

    _KERNEL["wgrad"] = wgrad_kernel
    return wgrad_kernel


#: (BLOCK_K, BLOCK_N, BLOCK_R, num_warps, num_stages, GROUP) candidates of the weight gradient
WGRAD_CONFIGS = [
    (128, 128, 32, 4, 3, 8),
    (128, 128, 32, 4, 4, 8),
    (128, 128, 64, 8, 3, 8),
    (128, 256, 64, 8, 3, 8),
]


def grouped_weight_grad(x: torch.Tensor, dy: torch.Tensor, offsets: torch.Tensor, experts: int,
                        dtype: torch.dtype | None = None, config: tuple | None = None) -> torch.Tensor:
    """dw (E, K, N) with dw[e] = x[rows of e]^T dy[rows of e]; x (R, K), dy (R, N); zero for an
    expert without rows. No host synchronisation."""
    triton = _triton()
    if triton is None:
        raise RuntimeError("grouped_weight_grad needs Triton, which does not import here (or LSHSIM_NO_TRITON=1)")
    rows, k = x.shape
    n = dy.shape[1]
    dw = torch.empty(experts, k, n, dtype=dtype or x.dtype, device=x.device)
    if experts == 0 or k == 0 or n == 0:
        return dw
    bk, bn, br, warps, stages, group = config or WGRAD_CONFIGS[0]
    grid = (triton.cdiv(k, bk) * triton.cdiv(n, bn), experts)
    _wgrad_kernel()[grid](x, dy, dw, offsets, k, n, x.stride(0), x.stride(1), dy.stride(0), dy.stride(1),
                          dw.stride(0), dw.stride(1), dw.stride(2), BLOCK_K=bk, BLOCK_N=bn, BLOCK_R=br,
                          GROUP=group, num_warps=warps, num_stages=stages)
    return dw


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def pick_config(rows: int, experts: int, n: int, k: int, transposed: bool = False) -> tuple:
    """The tile for R rows over E experts of an (K, N) weight each (host ints only): 128 x 256
    (128 x 128 where N < 256), a half-height tile for an expert's last block of at most 64 rows;
    4 pipeline stages where K <= 4096 or the weight is a transposed view (`transposed`: w[e] read
    along K contiguously, the input gradient's dy @ w[e]^T), 3 for a row-major weight above (1-2%
    faster there, run-ay), 4 row blocks per group where N <= 2048 (8 above). Chosen on one H200 at
    DeepSeek-V3-like shapes (benchmarks/HISTORY.md; the transposed case: data/measured/h200/run-ax
    to run-bb)."""
    if n < 256:
        return (128, 128, 64, 4, 4, 8, True)
    return (128, 256, 64, 8, 4 if (k <= 4096 or transposed) else 3, 4 if n <= 2048 else 8, True)


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, config: tuple | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """y (R, N) with y[rows of e] = x[rows of e] @ w[e]; x (R, K), w (E, K, N) (any strides),
    offsets (E,) int32 cumulative rows (offsets[-1] = R). No host synchronisation."""
    triton = _triton()
    if triton is None:
        raise RuntimeError("grouped_matmul needs Triton, which does not import here (or LSHSIM_NO_TRITON=1)")
    rows, k = x.shape
    experts, k_w, n = w.shape
    if k_w != k or offsets.numel() != experts:
        raise ValueError(f"grouped_matmul: x {tuple(x.shape)}, w {tuple(w.shape)}, offsets {tuple(offsets.shape)} do not match")
    y = out if out is not None else torch.empty(rows, n, dtype=x.dtype, device=x.device)
    if rows == 0 or n == 0:
        return y
    transposed = w.stride(1) == 1 and w.stride(2) != 1 and k > 1 and n > 1
    bm, bn, bk, warps, stages, group, half_tail = config or pick_config(rows, experts, n, k, transposed)
    bound_m = triton.cdiv(rows, bm) + experts
    grid = (bound_m * triton.cdiv(n, bn),)
    _kernel()[grid](x, w, y, offsets, experts, n, k, bound_m,
                    x.stride(0), x.stride(1), w.stride(0), w.stride(1), w.stride(2), y.stride(0), y.stride(1),
                    E_POW2=max(_next_pow2(experts), 2), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP=group,
                    EVEN_K=(k % bk == 0), HALF_TAIL=half_tail, num_warps=warps, num_stages=stages)
    return y
