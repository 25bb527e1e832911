"""Fast LSH-MoE compression: fused Triton kernels on CUDA, a sync-free torch path elsewhere.

The same algorithm as `lshsim.dispatch.lsh` (hash, one centroid per (group, bucket), restore
E(c) + (x - c)), split into pieces that never synchronise with the host, so that a GPU step is a
handful of kernel launches:

  token_buckets   (T, d) tokens -> (T,) bucket ids, identical to `lsh.bucket_ids` (Triton: one
                  fused pass, tokens tile @ projection tile with float32 accumulation, argmax per
                  hash and the mixed-radix id in registers; no (T, L d') intermediate in memory)
  segments        sort rows by (group, bucket) and describe the runs of equal keys (`Segments`),
                  with torch.sort, cumsum and scatters into fixed-size buffers: no host sync
  segment_mean    mean of every run of (sorted) rows; Triton: a persistent grid that reads the
                  number of segments from device memory (the mean kernel); rows of at least
                  SEGMENT_SCAN_MIN_D_MODEL columns (SEGMENT_MEANS_ON_SCAN) the scan-runs kernel over
                  seg_of_row as keys (NUMBERED); or with SEGMENT_MEANS_ON_RUNS (off: slower on the
                  measured shapes) the runs kernel over seg_of_row as keys
  restore_rows    out[i] = E(c)[s_i] - c[s_i] + x[i], one pass, float32, one rounding; with
                  compressed= (a SortedCompressed) its backward is one pass of the scan-runs kernel
                  (sums and -sums; RESTORE_BACKWARD_ON_SCAN, else the runs kernel)
  restore_tokens / centroids_of_tokens
                  the MoE layer's restore and centroids reading the tokens through the token of each
                  sorted row (no (T k, d) send rows): the restore kernel with HAS_INDEX, and the
                  tokens' gradient in one pass of the choice-sum kernel (restore's term handed over
                  by `PendingRows`), bit-equal to the same on gathered rows
  compress_fast   the same `lsh.Compressed` as `lsh.compress`; on the kernel path the hash kernel
                  writes packed unique keys (group * span + bucket) << idx_bits | token; up to
                  8,192 tokens the rank kernel places each at the number of packed keys below it
                  (all pairs: no sort), above that torch.sort sorts them as rows of at most 4,096
                  (its one-kernel path) and the merge kernel ranks every key by binary search in
                  the other rows; either writes sorted keys and order; the scan-runs kernel
                  (COMPRESS_CENTROIDS "scan"; "runs": the runs kernel, the previous release's)
                  writes centroids, token_to_centroid, groups, counts and the sizes (a decoupled
                  look-back for the run numbering); then one host sync. So three kernel launches
                  and one sync up to 8,192 tokens, three launches + torch.sort above
                  (`CompressGraph`: the three as one CUDA graph launch). Its backward w.r.t. the
                  tokens is one pass (the expand kernel).
                  `_compress_via_segments` is the same from the pieces above (the torch path,
                  and the previous release's kernel path)

Launch parameters per problem size: HASH_LAUNCHES, RUNS_LAUNCHES, SORT_LAUNCHES, measured on an
H200 by benchmarks/bench_lsh_fast.py --tune, and their <= 8,192-token rows (rank kernel, runs
kernel with the look-back) by --sweep; SCAN_LAUNCHES by benchmarks/profile_lsh_compress.py --grid
(benchmarks/HISTORY.md). The runs and scan-runs kernels' look-back
numbers its programs by a ticket taken at start (no assumption on the order programs start in) and
shares one ticket + count buffer per device (`_LOOKBACK`): its launches must not run concurrently on two
streams of one device, and it is off inside a CUDA graph capture. The hash kernel also has a
split-K mode (deterministic: the last program of a row block to arrive adds the parts in a fixed
order); it was slower on the measured shapes, so no table row uses it.

Kernel path: used when `triton_available(device)` and `kernel_eligible(config, projection,
tokens)` (16-bit tokens on CUDA, a dense projection, d' a power of two, L d' padded to a power of
two <= 256). Everything else runs the torch path (CPU, float32/float64 tokens, the fast Hadamard
transform, exact=True, huge spans). Triton is optional: it is imported lazily (`_triton()`), and
`LSHSIM_NO_TRITON=1` turns the kernels off. Tests run the kernels on CPU tensors under the Triton
interpreter (TRITON_INTERPRET=1) with `force_triton=True`.

Exactness of the kernel buckets: `lsh.make_projection(dtype=bfloat16 or float16)` rounds the
projection to the tokens' dtype, so every product token x projection is exact in float32 and the
kernel (tensor-core products, float32 accumulation) and the torch reference (float32 GEMM of the
same exact values) differ only in summation order: bucket ids agree except for tokens whose best
and second-best cross-polytope vertex are within rounding of each other (near-ties; on random
data fewer than 0.1 % of tokens at L = 6, d' = 16). A projection whose entries are not
representable in the tokens' dtype is not kernel-eligible (checked once per projection).

Non-finite tokens: `lsh` raises ValueError (one host sync). The kernel path does not check;
`token_buckets` gives such tokens bucket -1, and `compress_fast` then falls back to `lsh.compress`,
which raises.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import torch

from lshsim.cuda_graph import capture
from lshsim.dispatch import lsh
from lshsim.dispatch.lsh import Compressed, LSHConfig, LSHProjection

__all__ = ["triton_available", "kernel_eligible", "token_buckets", "Segments", "segments", "choice_segments",
           "choice_segments_eligible", "segment_mean_of", "centroids_of", "centroids_of_tokens",
           "segment_mean", "restore_rows", "restore_tokens", "PendingRows", "compress_fast", "CompressGraph"]

_INT64_MAX = 2 ** 63 - 1
_SENTINEL = _INT64_MAX  # key of invalid rows: sorts last, never a valid key (keys < 2^63 - 1)
_MAX_LD_PAD = 256

# Kernel launch counts per kernel name (the interpreter tests check that the kernels really ran).
LAUNCHES: dict[str, int] = {}


# ---- Triton availability -----------------------------------------------------------------------
def _triton():
    """The triton module, or None when it is not installed (or LSHSIM_NO_TRITON=1)."""
    if os.environ.get("LSHSIM_NO_TRITON") == "1":
        return None
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return None
    return triton


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available(device: torch.device | str) -> bool:
    """True when triton imports, `device` is CUDA and LSHSIM_NO_TRITON is not 1."""
    return torch.device(device).type == "cuda" and _triton() is not None


def _use_triton(device: torch.device, eligible: bool, force_triton: bool) -> bool:
    """Kernel path? force_triton runs the kernels on CPU tensors under TRITON_INTERPRET=1."""
    if force_triton:
        if _triton() is None:
            raise RuntimeError("force_triton=True but triton does not import (or LSHSIM_NO_TRITON=1)")
        if device.type != "cuda" and not _interpreting():
            raise RuntimeError("force_triton=True on a CPU tensor needs TRITON_INTERPRET=1")
        if not eligible:
            raise RuntimeError("force_triton=True but the inputs are not kernel-eligible")
        return True
    return eligible and triton_available(device)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _config_eligible(config: LSHConfig, projection: LSHProjection | None, tokens: torch.Tensor) -> bool:
    """kernel_eligible without the device condition (the interpreter runs on CPU tensors)."""
    if tokens.dtype not in (torch.bfloat16, torch.float16) or tokens.ndim != 2 or config.exact:
        return False
    if config.family not in ("cross_polytope", "hyperplane"):
        return False
    if projection is None or projection.matrix is None:
        return False
    if projection.config != config or projection.d_model != tokens.shape[1]:
        return False
    if projection.device != tokens.device or projection.dtype != torch.float32:
        return False
    proj_dim, num_hashes = projection.proj_dim, config.num_hashes
    if proj_dim & (proj_dim - 1):
        return False
    if max(16, _next_pow2(num_hashes * proj_dim)) > _MAX_LD_PAD:
        return False
    if (2 * proj_dim) ** num_hashes >= 2 ** 63:
        return False
    return True


def kernel_eligible(config: LSHConfig, projection: LSHProjection | None, tokens: torch.Tensor) -> bool:
    """True when the Triton kernels may hash these tokens with this projection.

    Conditions: tokens bfloat16/float16 on CUDA; family cross_polytope or hyperplane; not
    config.exact; projection.matrix set (gaussian, or a materialised hadamard) for this config,
    d_model and device (float32; its entries must be representable in the tokens' dtype, as
    `lsh.make_projection(dtype=tokens.dtype)` makes them: the kernel checks that and returns -1
    ids otherwise); d' a power of two; L d' padded to a power of two
    (at least 16) <= 256; (2 d')^L < 2^63.
    """
    return tokens.device.type == "cuda" and _config_eligible(config, projection, tokens)


def _default_projection(tokens: torch.Tensor, config: LSHConfig, projection: LSHProjection | None):
    if projection is None and not config.exact:
        return lsh.make_projection(tokens.shape[1], config, device=tokens.device, dtype=tokens.dtype)
    return projection


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


# ---- the kernels (defined on first use, so that importing this module needs no triton) ---------
_KERNELS: dict = {}


def _kernels():
    """The jitted kernels, built once per interpreter mode (TRITON_INTERPRET is read at jit time)."""
    mode = _interpreting()
    if mode in _KERNELS:
        return _KERNELS[mode]
    triton = _triton()
    import triton.language as tl

    @triton.jit
    def hash_kernel(x_ptr, p_ptr, group_ptr, out_ptr, part_ptr, lock_ptr, num_rows, d_model, stride_x, stride_p,
                    span, max_group, k_per_split, part_stride, num_out, HAS_GROUP: tl.constexpr,
                    UPCAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, LD_PAD: tl.constexpr, DP: tl.constexpr,
                    L_PAD: tl.constexpr, NUM_HASHES: tl.constexpr, LOG2_RADIX: tl.constexpr,
                    SPLIT: tl.constexpr = 1, IDX_BITS: tl.constexpr = 0):
        # p: (d, LD_PAD) in the tokens' 16-bit dtype, zero-padded columns (`_kernel_matrix`).
        # SPLIT > 1 (split-K): program (m, s) sums columns [s k_per_split, (s + 1) k_per_split) into
        # part[s] (float32, (SPLIT, num_rows, LD_PAD), part_stride = num_rows LD_PAD); the last of the SPLIT programs of row block m to
        # arrive (a counter per row block, reset by that program) adds part[0] + part[1] + ... in that
        # fixed order and finishes: the result does not depend on the arrival order.
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
        row_mask = rows < num_rows
        rows64 = rows.to(tl.int64)
        cols = tl.arange(0, LD_PAD)  # (LD_PAD,)
        acc = tl.zeros((BLOCK_M, LD_PAD), dtype=tl.float32)
        if SPLIT > 1:
            k_begin = tl.program_id(1) * k_per_split
            k_end = tl.minimum(k_begin + k_per_split, d_model)
        else:
            k_begin = 0
            k_end = d_model
        for k0 in range(k_begin, k_end, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)  # (BK,)
            k_mask = ks < k_end
            x = tl.load(x_ptr + rows64[:, None] * stride_x + ks[None, :],
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)  # (BM, BK) 16-bit
            p = tl.load(p_ptr + ks[:, None].to(tl.int64) * stride_p + cols[None, :],
                        mask=k_mask[:, None], other=0.0)  # (BK, LD_PAD) 16-bit
            if UPCAST:
                # the CPU interpreter computes 16-bit dots wrongly (no bfloat16 in numpy): float32
                # operands give the same exact products
                acc += tl.dot(x.to(tl.float32), p.to(tl.float32))
            else:
                acc += tl.dot(x, p)  # exact products (p representable), float32 sums
        # IDX_BITS > 0 (packed keys for the sort): out[row] = key << IDX_BITS | row, unique, and
        # INT64_MAX for the padding rows num_rows <= row < num_out (the grid covers num_out rows)
        out_mask = rows < num_out
        finish = out_mask
        if SPLIT > 1:
            tile = (rows64[:, None] * LD_PAD + cols[None, :])  # (BM, LD_PAD) offsets in one part
            tl.store(part_ptr + tl.program_id(1) * part_stride + tile, acc, mask=row_mask[:, None])
            tl.debug_barrier()  # every thread's part is written before the counter moves
            arrived = tl.atomic_add(lock_ptr + pid, 1, sem="acq_rel", scope="gpu")
            last = arrived == SPLIT - 1
            finish = out_mask & ((tl.zeros_like(rows) + arrived) == SPLIT - 1)  # (BM,) all False unless last
            acc = tl.zeros((BLOCK_M, LD_PAD), dtype=tl.float32)
            for s in tl.static_range(SPLIT):
                acc += tl.load(part_ptr + s * part_stride + tile, mask=(finish & row_mask)[:, None], other=0.0,
                               cache_modifier=".cg")
            tl.store(lock_ptr + pid, 0, mask=last)  # ready for the next launch
        finite = tl.abs(acc) <= 3.4028234663852886e38  # False for inf and NaN
        bad = tl.sum(tl.where(finite, 0, 1), axis=1) > 0  # (BM,)
        # (L_PAD,) int64 radix powers R^(L-1-l) = 2^((L-1-l) log2 R), 0 for the padding hashes
        hashes = tl.arange(0, L_PAD)
        shift = tl.where(hashes < NUM_HASHES, (NUM_HASHES - 1 - hashes) * LOG2_RADIX, 0).to(tl.int64)
        weights = tl.where(hashes < NUM_HASHES, tl.full([L_PAD], 1, tl.int64) << shift, 0)
        if DP == 1:
            # hyperplane: one coordinate per hash, code = sign bit
            codes = (acc < 0).to(tl.int64)  # (BM, LD_PAD) = (BM, L_PAD)
        else:
            y = tl.reshape(acc, (BLOCK_M, L_PAD, DP))  # column l * d' + i -> (l, i)
            a = tl.abs(y)
            best = tl.max(a, axis=2)  # (BM, L_PAD)
            j = tl.arange(0, DP)[None, None, :]
            index = tl.min(tl.where(a == best[:, :, None], j, DP), axis=2)  # first maximum, as torch
            y_best = tl.sum(tl.where(j == index[:, :, None], y, 0.0), axis=2)  # (BM, L_PAD)
            codes = (index + DP * (y_best < 0).to(tl.int32)).to(tl.int64)  # (BM, L_PAD)
        ids = tl.sum(codes * weights[None, :], axis=1)  # (BM,) mixed radix, code 0 most significant
        if HAS_GROUP:
            # key = group * span + id; groups outside [0, max_group] (negative, or a key that would
            # overflow int64) give -1, like non-finite tokens: the caller sees a negative key
            group = tl.load(group_ptr + rows, mask=row_mask, other=0)
            bad = bad | (group < 0) | (group > max_group)
            ids = group * span + ids
        ids = tl.where(bad, -1, ids)
        if IDX_BITS > 0:
            ids = tl.where(row_mask, (ids << IDX_BITS) | rows64, 9223372036854775807)
        tl.store(out_ptr + rows, ids, mask=finish)

    @triton.jit
    def mean_kernel(src_ptr, order_ptr, out_ptr, start_ptr, count_ptr, nseg_ptr, out_rows, d_model,
                    stride_src, stride_out, HAS_ORDER: tl.constexpr, ZERO_FILL: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK_D: tl.constexpr, SUM: tl.constexpr = False):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
        col_mask = cols < d_model
        r = tl.arange(0, ROWS)  # (ROWS,)
        num_segments = tl.load(nseg_ptr).to(tl.int32)  # from device memory: no host sync
        for s in range(pid, num_segments, nprog):
            start = tl.load(start_ptr + s)  # int64
            count = tl.load(count_ptr + s).to(tl.int32)
            acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
            for r0 in range(0, count, ROWS):
                rr = r0 + r
                row_mask = rr < count
                if HAS_ORDER:
                    src_rows = tl.load(order_ptr + start + rr, mask=row_mask, other=0)
                else:
                    src_rows = start + rr
                v = tl.load(src_ptr + src_rows[:, None].to(tl.int64) * stride_src + cols[None, :],
                            mask=row_mask[:, None] & col_mask[None, :], other=0.0)
                acc += v.to(tl.float32)
            if SUM:
                mean = tl.sum(acc, axis=0)  # (BD,) the segment's sum (restore's backward)
            else:
                mean = tl.sum(acc, axis=0) / count.to(tl.float32)  # (BD,)
            tl.store(out_ptr + tl.cast(s, tl.int64) * stride_out + cols, mean.to(out_ptr.dtype.element_ty),
                     mask=col_mask)
        if ZERO_FILL:
            zeros = tl.zeros((BLOCK_D,), dtype=tl.float32).to(out_ptr.dtype.element_ty)
            for s in range(num_segments + pid, out_rows, nprog):
                tl.store(out_ptr + tl.cast(s, tl.int64) * stride_out + cols, zeros, mask=col_mask)

    @triton.jit
    def restore_kernel(cout_ptr, cent_ptr, rows_ptr, seg_ptr, out_ptr, num_rows, d_model,
                       stride_cout, stride_cent, stride_rows, stride_out, idx_ptr,
                       BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HAS_INDEX: tl.constexpr = False):
        # HAS_INDEX: row i's x is rows[idx[i]] (the tokens read through the token of each row)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
        row_mask = rows < num_rows
        col_mask = cols < d_model
        seg = tl.load(seg_ptr + rows, mask=row_mask, other=-1)  # (BM,) int64
        valid = seg >= 0
        seg = tl.where(valid, seg, 0)
        mask = row_mask[:, None] & col_mask[None, :]
        vmask = mask & valid[:, None]
        e = tl.load(cout_ptr + seg[:, None] * stride_cout + cols[None, :], mask=vmask, other=0.0)
        c = tl.load(cent_ptr + seg[:, None] * stride_cent + cols[None, :], mask=vmask, other=0.0)
        rows64 = rows.to(tl.int64)
        if HAS_INDEX:
            src = tl.load(idx_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # (BM,)
        else:
            src = rows64
        x = tl.load(rows_ptr + src[:, None] * stride_rows + cols[None, :], mask=mask, other=0.0)
        out = e.to(tl.float32) + (x.to(tl.float32) - c.to(tl.float32))
        out = tl.where(vmask, out, 0.0)
        tl.store(out_ptr + rows64[:, None] * stride_out + cols[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def expand_kernel(grad_ptr, seg_ptr, count_ptr, out_ptr, num_rows, d_model, stride_grad, stride_out,
                      SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
        # out[i] = grad[seg[i]] (/ count[seg[i]] with SCALE), 0 where seg[i] < 0: segment_mean's backward
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
        row_mask = rows < num_rows
        col_mask = cols < d_model
        seg = tl.load(seg_ptr + rows, mask=row_mask, other=-1)  # (BM,) int64
        valid = seg >= 0
        seg = tl.where(valid, seg, 0)
        mask = row_mask[:, None] & col_mask[None, :]
        vmask = mask & valid[:, None]
        g = tl.load(grad_ptr + seg[:, None] * stride_grad + cols[None, :], mask=vmask, other=0.0).to(tl.float32)
        if SCALE:
            count = tl.load(count_ptr + seg, mask=row_mask & valid, other=1).to(tl.float32)  # (BM,)
            g = g / count[:, None]
        rows64 = rows.to(tl.int64)
        tl.store(out_ptr + rows64[:, None] * stride_out + cols[None, :], g.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def choice_sum_kernel(src_ptr, inv_ptr, seg_ptr, count_ptr, out_ptr, rows_ptr, num_tokens, d_model, k, num_src,
                          num_rows, stride_src, stride_out, stride_rows, BY_SEGMENT: tl.constexpr,
                          ADD_ROWS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        # out[t] = sum over j < k of v(r), r = inv[t k + j] (the sorted row of choice j of token t),
        # float32 sums, one rounding: the tokens' gradient of a node that read x through the token of
        # each row. BY_SEGMENT: v(r) = src[seg[r]] / count[seg[r]] rounded to src's dtype (the
        # expand kernel's value), 0 where seg[r] < 0, and with ADD_ROWS + rows[r] for r < num_rows,
        # the sum rounded to the dtype (autograd's sum of two row gradients); else v(r) = src[r], 0
        # where r >= num_src.
        tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
        token_mask = tokens < num_tokens
        col_mask = cols < d_model
        tokens64 = tokens.to(tl.int64)
        acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        for j in range(0, k):
            r = tl.load(inv_ptr + tokens64 * k + j, mask=token_mask, other=0)  # (BT,) int64
            if BY_SEGMENT:
                s = tl.load(seg_ptr + r, mask=token_mask, other=-1)  # (BT,)
                valid = token_mask & (s >= 0)
                s = tl.where(valid, s, 0)
                v = tl.load(src_ptr + s[:, None] * stride_src + cols[None, :],
                            mask=valid[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
                count = tl.load(count_ptr + s, mask=valid, other=1).to(tl.float32)  # (BT,)
                v = (v / count[:, None]).to(src_ptr.dtype.element_ty).to(tl.float32)
                if ADD_ROWS:
                    in_rows = token_mask & (r < num_rows)
                    rr = tl.where(in_rows, r, 0)
                    w = tl.load(rows_ptr + rr[:, None] * stride_rows + cols[None, :],
                                mask=in_rows[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
                    v = (v + w).to(src_ptr.dtype.element_ty).to(tl.float32)
            else:
                valid = token_mask & (r < num_src)
                r = tl.where(valid, r, 0)
                v = tl.load(src_ptr + r[:, None] * stride_src + cols[None, :],
                            mask=valid[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
            acc += v
        tl.store(out_ptr + tokens64[:, None] * stride_out + cols[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=token_mask[:, None] & col_mask[None, :])

    @triton.jit
    def merge_kernel(p_ptr, key_ptr, order_ptr, num_chunks, IDX_BITS: tl.constexpr, CHUNK: tl.constexpr,
                     LOG_CHUNK: tl.constexpr, BLOCK: tl.constexpr):
        # p: (num_chunks, CHUNK) packed keys (unique, INT64_MAX padding), each row sorted. The rank of
        # x = p[c, l] in the whole array is l plus, for every other row, the number of its entries
        # below x (a binary search). Writes key[rank] = x >> IDX_BITS, order[rank] = x & (2^IDX_BITS - 1).
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
        in_range = idx < num_chunks * CHUNK
        x = tl.load(p_ptr + idx, mask=in_range, other=9223372036854775807)
        valid = in_range & (x != 9223372036854775807)
        own = idx // CHUNK
        rank = (idx % CHUNK).to(tl.int64)
        for c in range(0, num_chunks):
            lo = tl.zeros((BLOCK,), dtype=tl.int32)
            hi = tl.full((BLOCK,), CHUNK, dtype=tl.int32)
            for _ in tl.static_range(LOG_CHUNK + 1):  # lower bound: entries of row c below x
                active = lo < hi
                mid = tl.minimum((lo + hi) // 2, CHUNK - 1)
                v = tl.load(p_ptr + c * CHUNK + mid, mask=valid & active & (own != c), other=0)
                below = v < x
                lo = tl.where(active & below, mid + 1, lo)
                hi = tl.where(active & (~below), mid, hi)
            rank += tl.where(own != c, lo, 0).to(tl.int64)
        tl.store(key_ptr + rank, x >> IDX_BITS, mask=valid)
        tl.store(order_ptr + rank, x & ((1 << IDX_BITS) - 1), mask=valid)

    @triton.jit
    def rank_kernel(p_ptr, key_ptr, order_ptr, flag_ptr, num_rows, IDX_BITS: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_C: tl.constexpr, FLAGS: tl.constexpr):
        # p: (num_rows,) unique packed keys key << IDX_BITS | token. The sorted position of p[t] is
        # the number of packed keys below it (all pairs: no sort, no merge, no atomics; unique keys
        # make it the stable order), and p[t] starts a run of equal keys when as many packed keys
        # lie below key << IDX_BITS (no token of the same key comes before it). Writes
        # key[pos] = p[t] >> IDX_BITS, order[pos] = t, and with FLAGS flag[pos] = 1 for run starts
        # (int8; a second compare per pair, so it roughly doubles the kernel's time).
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
        t_mask = t < num_rows
        mine = tl.load(p_ptr + t, mask=t_mask, other=9223372036854775807)  # (BT,) int64
        floor = (mine >> IDX_BITS) << IDX_BITS  # (BT,) the smallest packed key of mine's key
        below = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.int32)
        below_key = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.int32)
        for c0 in range(0, num_rows, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            other = tl.load(p_ptr + c, mask=c < num_rows, other=9223372036854775807)  # (BC,)
            below += (other[None, :] < mine[:, None]).to(tl.int32)
            if FLAGS:
                below_key += (other[None, :] < floor[:, None]).to(tl.int32)
        pos = tl.sum(below, axis=1)  # (BT,)
        tl.store(key_ptr + pos, mine >> IDX_BITS, mask=t_mask)
        tl.store(order_ptr + pos, mine & ((1 << IDX_BITS) - 1), mask=t_mask)
        if FLAGS:
            first = tl.sum(below_key, axis=1)
            tl.store(flag_ptr + pos, (pos == first).to(tl.int8), mask=t_mask)

    @triton.jit
    def runs_kernel(key_ptr, order_ptr, x_ptr, out_ptr, neg_ptr, ints_ptr, flag_ptr, cnt_ptr, num_rows, d_model,
                    stride_x, stride_out, span, cols_per_group, tag, ticket_base, limit, R: tl.constexpr,
                    BLOCK_D: tl.constexpr, PREFIX: tl.constexpr, SUM: tl.constexpr, NEG: tl.constexpr,
                    INDEX: tl.constexpr, UPCAST: tl.constexpr, FLAGS: tl.constexpr = False,
                    LOOKBACK: tl.constexpr = False, NUMBERED: tl.constexpr = False):
        # key: (N,) sorted keys; sorted row p is x[order[p]]; a run (segment) is a maximal range of
        # equal keys, numbered in order. Program (b, g) owns the runs whose first row is in
        # [b R, b R + R), columns [g cols_per_group, (g + 1) cols_per_group): it counts the runs that
        # start before b R itself (a pass over the keys before it: no second launch, no scan across
        # programs), sums its runs' rows with a one-hot (run x row) matrix product (exact 0/1
        # products, float32 sums; a loop with no inner loop, so it is software-pipelined), and then,
        # when its last run goes on past the block, redoes that one row with the rows after the block.
        # Every row of x is read once (the last run's block rows twice). Writes out[run] = mean (or
        # sum with SUM; neg = -out with NEG); with INDEX (group 0) also t2c[order[p]] = run of p,
        # group_out[run] = key // span, count_out[run], and stats = (number of runs, first key, last
        # key) from the program of the last row; the four are consecutive parts of ints:
        # t2c (N) | group_out (N) | count_out (N) | stats (3).
        # FLAGS: flag[p] (int8) = 1 where sorted row p starts a run (the rank kernel's), so the count
        # of earlier runs reads one byte a row instead of two keys. LOOKBACK: no count over the
        # earlier keys at all: program (b, 0) publishes its block's number of run starts as
        # cnt[b] = tag | n (tag = launch epoch << 32, so the buffer needs no reset), and every program
        # sums cnt[0..b-1], waiting on entries that do not carry this launch's tag yet. They are
        # written by programs of lower virtual id that wait on nothing later. The virtual id is a
        # ticket (cnt[0], an atomic counter the host keeps the launch's base of), taken when the
        # program starts, so every entry waited on belongs to a program that is already running:
        # the wait ends whatever order the hardware starts programs in (as CUB's single-pass scan).
        # Ticket v is program (v mod B, v div B): the B publishers (g = 0) hold tickets 0..B-1.
        # Rows with key < 0 or key >= limit are not read and their runs not written (the dropped
        # rows of a segmentation, seg_of_row -1, after the others; compress: limit INT64_MAX and
        # keys >= 0). NUMBERED: the keys ARE the run numbers 0, 1, ... (a segmentation's seg_of_row),
        # so the runs before the block are key[p0 - 1] + 1: one load, no count over the earlier keys.
        t2c_ptr = ints_ptr
        group_out_ptr = ints_ptr + num_rows
        count_out_ptr = ints_ptr + 2 * num_rows
        stats_ptr = ints_ptr + 3 * num_rows
        if LOOKBACK:
            vid = tl.atomic_add(cnt_ptr, 1) - ticket_base
            num_blocks = tl.num_programs(0)
            pid = (vid % num_blocks).to(tl.int32)
            gid = (vid // num_blocks).to(tl.int32)
            cnt_base = cnt_ptr + 1
        else:
            pid = tl.program_id(0)
            gid = tl.program_id(1)
            cnt_base = cnt_ptr
        first_col = gid * cols_per_group
        end_col = tl.minimum(first_col + cols_per_group, d_model)
        p0 = pid * R
        r = tl.arange(0, R)  # (R,)
        p = p0 + r
        in_range = p < num_rows
        k = tl.load(key_ptr + p, mask=in_range, other=0)
        kprev = tl.load(key_ptr + p - 1, mask=in_range & (p > 0), other=0)
        new = in_range & ((p == 0) | (k != kprev))
        local = tl.cumsum(new.to(tl.int32), axis=0) - 1  # (R,) run among those starting here; -1: an earlier run
        n_new = tl.sum(new.to(tl.int32), axis=0)
        base = tl.sum(tl.zeros((PREFIX,), dtype=tl.int32), axis=0)  # runs starting before p0
        if NUMBERED:
            base += (tl.load(key_ptr + p0 - 1, mask=p0 > 0, other=-1) + 1).to(tl.int32)
        elif LOOKBACK:
            if gid == 0:
                tl.atomic_xchg(cnt_base + pid, tag | n_new.to(tl.int64), sem="release")
            for j0 in range(0, pid, PREFIX):
                j = j0 + tl.arange(0, PREFIX)
                m = j < pid
                v = tl.load(cnt_base + j, mask=m, other=0, volatile=True)
                pending = tl.sum((m & ((v >> 32) != (tag >> 32))).to(tl.int32), axis=0)
                while pending > 0:
                    v = tl.load(cnt_base + j, mask=m, other=0, volatile=True)
                    pending = tl.sum((m & ((v >> 32) != (tag >> 32))).to(tl.int32), axis=0)
                base += tl.sum(tl.where(m, v & 4294967295, 0), axis=0).to(tl.int32)
        else:
            for j0 in range(0, p0, PREFIX):
                j = j0 + tl.arange(0, PREFIX)
                m = j < p0
                if FLAGS:
                    base += tl.sum(tl.load(flag_ptr + j, mask=m, other=0).to(tl.int32), axis=0)
                else:
                    key_j = tl.load(key_ptr + j, mask=m, other=0)
                    key_before = tl.load(key_ptr + j - 1, mask=m & (j > 0), other=0)
                    base += tl.sum((m & ((j == 0) | (key_j != key_before))).to(tl.int32), axis=0)
        src = tl.load(order_ptr + p, mask=in_range, other=0)  # (R,) rows of x
        owned = in_range & (local >= 0) & (k >= 0) & (k < limit)
        onehot = (local[None, :] == r[:, None]) & in_range[None, :]  # (R runs, R rows)
        counts = tl.sum(onehot.to(tl.int32), axis=1)  # (R,)
        run_key = tl.max(tl.where(onehot, k[None, :], -1), axis=1)  # (R,) key of each owned run
        # rows after the block that continue its last run (keys sorted: a prefix of the rest)
        last_key = tl.max(tl.where(in_range, k, -1), axis=0)
        q_first = p0 + R
        tail = n_new * 0
        go = (n_new > 0) & (q_first < num_rows) & (last_key >= 0) & (last_key < limit)
        while go:
            q = q_first + tail + r
            kq = tl.load(key_ptr + q, mask=q < num_rows, other=0)
            matched = tl.sum(((q < num_rows) & (kq == last_key)).to(tl.int32), axis=0)
            tail += matched
            go = matched == R
        is_last = r == n_new - 1  # (R,)
        counts += tl.where(is_last, tail, 0)
        live = r < n_new  # (R,) runs owned here
        # runs complete inside the block (and below the limit)
        direct = live & (run_key >= 0) & (run_key < limit) & ~(is_last & ((tl.zeros_like(r) + tail) > 0))
        scale = 1.0 / tl.maximum(counts, 1).to(tl.float32)  # (R,)
        out_rows = (base + r).to(tl.int64)
        src64 = src.to(tl.int64)
        for c0 in range(first_col, end_col, BLOCK_D):
            cols = c0 + tl.arange(0, BLOCK_D)  # (BD,)
            col_mask = cols < end_col
            v = tl.load(x_ptr + src64[:, None] * stride_x + cols[None, :], mask=owned[:, None] & col_mask[None, :],
                        other=0.0)  # (R, BD)
            if UPCAST:  # the CPU interpreter: float32 operands, the same exact products
                sums = tl.dot(onehot.to(tl.float32), v.to(tl.float32))
            else:
                sums = tl.dot(onehot.to(v.dtype), v)  # (R, BD) float32
            if SUM:
                result = sums
            else:
                result = sums * scale[:, None]
            out_mask = direct[:, None] & col_mask[None, :]
            tl.store(out_ptr + out_rows[:, None] * stride_out + cols[None, :], result.to(out_ptr.dtype.element_ty),
                     mask=out_mask)
            if NEG:
                tl.store(neg_ptr + out_rows[:, None] * stride_out + cols[None, :],
                         (-result).to(neg_ptr.dtype.element_ty), mask=out_mask)
        if tail > 0:  # the last run: its rows in the block, then the rows after it
            last_rows = owned & (local == n_new - 1)  # (R,)
            out_row = (base + n_new - 1).to(tl.int64)
            last_scale = 1.0 / tl.maximum(tail + tl.sum(last_rows.to(tl.int32), axis=0), 1).to(tl.float32)
            for c0 in range(first_col, end_col, BLOCK_D):
                cols = c0 + tl.arange(0, BLOCK_D)
                col_mask = cols < end_col
                v = tl.load(x_ptr + src64[:, None] * stride_x + cols[None, :],
                            mask=last_rows[:, None] & col_mask[None, :], other=0.0)
                total = tl.sum(v.to(tl.float32), axis=0)  # (BD,)
                for t0 in range(0, tail, R):
                    t_mask = t0 + r < tail
                    src_t = tl.load(order_ptr + q_first + t0 + r, mask=t_mask, other=0).to(tl.int64)
                    v_t = tl.load(x_ptr + src_t[:, None] * stride_x + cols[None, :],
                                  mask=t_mask[:, None] & col_mask[None, :], other=0.0)
                    total += tl.sum(v_t.to(tl.float32), axis=0)
                if not SUM:
                    total = total * last_scale
                tl.store(out_ptr + out_row * stride_out + cols, total.to(out_ptr.dtype.element_ty), mask=col_mask)
                if NEG:
                    tl.store(neg_ptr + out_row * stride_out + cols, (-total).to(neg_ptr.dtype.element_ty),
                             mask=col_mask)
        if INDEX:
            if gid == 0:
                tl.store(t2c_ptr + src, (base + local).to(tl.int64), mask=in_range)
                tl.store(group_out_ptr + out_rows, run_key // span, mask=live)
                tl.store(count_out_ptr + out_rows, counts.to(tl.int64), mask=live)
                holds_last = q_first >= num_rows
                tl.store(stats_ptr, (base + n_new).to(tl.int64), mask=holds_last)
                tl.store(stats_ptr + 1, tl.load(key_ptr), mask=holds_last)
                tl.store(stats_ptr + 2, tl.load(key_ptr + num_rows - 1), mask=holds_last)

    @triton.jit
    def segmented_add(start_a, sum_a, start_b, sum_b):
        # the combine of a segmented inclusive scan: where b starts a segment, b alone, else a + b
        return start_a | start_b, tl.where(start_b != 0, sum_b, sum_a + sum_b)

    # a module global: kernels find the jitted functions they call by global name (also the interpreter)
    globals()["_segmented_add"] = segmented_add

    @triton.jit
    def scan_runs_kernel(key_ptr, order_ptr, x_ptr, out_ptr, neg_ptr, ints_ptr, cnt_ptr, num_rows, d_model, stride_x,
                         stride_out, span, tag, ticket_base, R: tl.constexpr, U: tl.constexpr, BLOCK_D: tl.constexpr,
                         PREFIX: tl.constexpr, LOOKBACK: tl.constexpr, STAGES: tl.constexpr = 1,
                         NUMBERED: tl.constexpr = False, INTS: tl.constexpr = True, SUM: tl.constexpr = False,
                         NEG: tl.constexpr = False, ZERO_FILL: tl.constexpr = False):
        # compress's centroids and bookkeeping (the runs kernel's INDEX mean, another schedule): key (N,)
        # sorted keys, sorted row p is x[order[p]]. Program (b, g) owns the runs that start in sorted rows
        # [b R, b R + R) (runs numbered as the runs kernel does: the count of earlier runs by look-back
        # or a recount), columns [g BLOCK_D, g BLOCK_D + BLOCK_D), and walks their rows [s0, e0) (from
        # its first run start to the end of its last run, past the block when that run goes on) in
        # chunks of U rows: U gathered rows (each thread holds all U rows of its 8 columns), a
        # segmented scan down the rows (float32, in registers, carried across chunks), and at every
        # run's last row its mean stored. No matrix product and no shared memory, so little register
        # and no shared-memory pressure: many programs per SM keep the gathered loads in flight.
        # Writes out[run] = mean; with g = 0 also t2c[order[p]] = run of p, group_out[run] = key // span,
        # count_out[run], and stats = (number of runs, first key, last key) from the program of the
        # last row: ints = t2c (N) | group_out (N) | count_out (N) | stats (3), as the runs kernel.
        # NUMBERED (segment means of a segmentation, `_segment_scan_launch`): the keys ARE the run
        # numbers (seg_of_row: 0, 1, ..., then -1 for the dropped rows, which belong to no run and are
        # not read), so a row's run is its key: no look-back nor recount. INTS False: ints not written.
        # SUM: out[run] = the run's sum (restore's backward), not the mean; NEG: also neg[run] = -out[run].
        # ZERO_FILL (with NUMBERED, no look-back): cnt_ptr holds the number of runs and ticket_base the
        # rows of out; the programs zero out's (and neg's) rows from the number of runs on, strided.
        t2c_ptr = ints_ptr
        group_out_ptr = ints_ptr + num_rows
        count_out_ptr = ints_ptr + 2 * num_rows
        stats_ptr = ints_ptr + 3 * num_rows
        if LOOKBACK:  # as in runs_kernel: a ticket, publishers (g = 0) first
            vid = tl.atomic_add(cnt_ptr, 1) - ticket_base
            num_blocks = tl.num_programs(0)
            pid = (vid % num_blocks).to(tl.int32)
            gid = (vid // num_blocks).to(tl.int32)
            cnt_base = cnt_ptr + 1
        else:
            pid = tl.program_id(0)
            gid = tl.program_id(1)
            cnt_base = cnt_ptr
        p0 = pid * R
        r = tl.arange(0, R)
        p = p0 + r
        in_range = p < num_rows
        k = tl.load(key_ptr + p, mask=in_range, other=0)
        kprev = tl.load(key_ptr + p - 1, mask=in_range & (p > 0), other=0)
        new = in_range & ((p == 0) | (k != kprev))
        if NUMBERED:
            new = new & (k >= 0)
        n_new = tl.sum(new.to(tl.int32), axis=0)
        s0 = tl.min(tl.where(new, p, num_rows), axis=0)  # the block's first run start (num_rows: none)
        base = tl.sum(tl.zeros((PREFIX,), dtype=tl.int32), axis=0)  # runs starting before p0
        if NUMBERED:
            pass
        elif LOOKBACK:
            if gid == 0:
                tl.atomic_xchg(cnt_base + pid, tag | n_new.to(tl.int64), sem="release")
            for j0 in range(0, pid, PREFIX):
                j = j0 + tl.arange(0, PREFIX)
                m = j < pid
                w = tl.load(cnt_base + j, mask=m, other=0, volatile=True)
                pending = tl.sum((m & ((w >> 32) != (tag >> 32))).to(tl.int32), axis=0)
                while pending > 0:
                    w = tl.load(cnt_base + j, mask=m, other=0, volatile=True)
                    pending = tl.sum((m & ((w >> 32) != (tag >> 32))).to(tl.int32), axis=0)
                base += tl.sum(tl.where(m, w & 4294967295, 0), axis=0).to(tl.int32)
        else:
            for j0 in range(0, p0, PREFIX):
                j = j0 + tl.arange(0, PREFIX)
                m = j < p0
                key_j = tl.load(key_ptr + j, mask=m, other=0)
                key_before = tl.load(key_ptr + j - 1, mask=m & (j > 0), other=0)
                base += tl.sum((m & ((j == 0) | (key_j != key_before))).to(tl.int32), axis=0)
        # the rows after the block that continue its last run (keys sorted: a prefix of the rest)
        q_first = p0 + R
        last_key = tl.load(key_ptr + tl.minimum(q_first, num_rows) - 1)
        tail = n_new * 0
        go = (n_new > 0) & (q_first < num_rows)
        if NUMBERED:
            go = go & (last_key >= 0)  # a block ending in dropped rows: its last run ended inside it
        while go:
            q = q_first + tail + r
            kq = tl.load(key_ptr + q, mask=q < num_rows, other=0)
            matched = tl.sum(((q < num_rows) & (kq == last_key)).to(tl.int32), axis=0)
            tail += matched
            go = matched == R
        e0 = tl.where(n_new > 0, tl.minimum(q_first, num_rows) + tail, s0)  # one past the last owned row
        cols = gid * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
        col_mask = cols < d_model
        u = tl.arange(0, U)  # (U,)
        carry = tl.zeros((BLOCK_D,), dtype=tl.float32)  # the open run's sum so far
        carry_n = tl.sum(tl.zeros((U,), dtype=tl.int32), axis=0)  # and its rows
        run = base - 1  # the run of the row before the chunk
        for q0 in tl.range(s0, e0, U, num_stages=STAGES):
            q = q0 + u
            valid = q < e0
            kq = tl.load(key_ptr + q, mask=valid, other=0)
            if NUMBERED:
                valid = valid & (kq >= 0)
            kp = tl.load(key_ptr + q - 1, mask=valid & (q > 0), other=0)
            kn = tl.load(key_ptr + q + 1, mask=valid & (q + 1 < num_rows), other=0)
            start = valid & ((q == 0) | (kq != kp))
            end = valid & ((q + 1 == num_rows) | (kq != kn))
            src = tl.load(order_ptr + q, mask=valid, other=0).to(tl.int64)
            v = tl.load(x_ptr + src[:, None] * stride_x + cols[None, :], mask=valid[:, None] & col_mask[None, :],
                        other=0.0).to(tl.float32)  # (U, BD)
            cont = (u == 0) & ~start  # the chunk's first row goes on with the previous chunk's run
            v += tl.where(cont[:, None], carry[None, :], 0.0)
            n = valid.to(tl.int32) + tl.where(cont, carry_n, 0)
            s = start.to(tl.int32)
            _, total = tl.associative_scan((tl.broadcast_to(s[:, None], (U, BLOCK_D)), v), 0, _segmented_add)
            _, count = tl.associative_scan((s, n), 0, _segmented_add)
            if NUMBERED:
                out_rows = kq  # (U,) run of each row
            else:
                out_rows = (run + tl.cumsum(s, axis=0)).to(tl.int64)  # (U,) run of each row
            if SUM:
                mean = total
            else:
                mean = total * (1.0 / tl.maximum(count, 1).to(tl.float32))[:, None]
            tl.store(out_ptr + out_rows[:, None] * stride_out + cols[None, :], mean.to(out_ptr.dtype.element_ty),
                     mask=end[:, None] & col_mask[None, :])
            if NEG:
                tl.store(neg_ptr + out_rows[:, None] * stride_out + cols[None, :],
                         (-mean).to(neg_ptr.dtype.element_ty), mask=end[:, None] & col_mask[None, :])
            if INTS and gid == 0:
                tl.store(t2c_ptr + src, out_rows, mask=valid)
                tl.store(group_out_ptr + out_rows, kq // span, mask=end)
                tl.store(count_out_ptr + out_rows, count.to(tl.int64), mask=end)
            last = u == U - 1
            carry = tl.sum(tl.where(last[:, None], total, 0.0), axis=0)
            carry_n = tl.sum(tl.where(last, count, 0), axis=0)
            run += tl.sum(s, axis=0)
        if ZERO_FILL:
            num_runs = tl.load(cnt_ptr).to(tl.int32)
            zeros = tl.zeros((BLOCK_D,), dtype=tl.float32).to(out_ptr.dtype.element_ty)
            for z in range(num_runs + pid, ticket_base, tl.num_programs(0)):
                tl.store(out_ptr + tl.cast(z, tl.int64) * stride_out + cols, zeros, mask=col_mask)
                if NEG:
                    tl.store(neg_ptr + tl.cast(z, tl.int64) * stride_out + cols, zeros, mask=col_mask)
        if INTS and gid == 0:
            holds_last = (n_new > 0) & (e0 == num_rows)
            tl.store(stats_ptr, (base + n_new).to(tl.int64), mask=holds_last)
            tl.store(stats_ptr + 1, tl.load(key_ptr), mask=holds_last)
            tl.store(stats_ptr + 2, tl.load(key_ptr + num_rows - 1), mask=holds_last)

    @triton.jit
    def choice_keys_kernel(ei_ptr, kept_ptr, bucket_ptr, pos_ptr, out_ptr, num_rows, num_out, k, span, invalid_key,
                           HAS_BUCKET: tl.constexpr, IDX_BITS: tl.constexpr, BLOCK: tl.constexpr):
        # the packed sort keys of the T k choices of a plan (LSH-MoE in the layer): choice i (flat
        # t k + j) kept: key = position[expert_index[i]] * span + bucket[i // k] (bucket i itself
        # without HAS_BUCKET), not kept: invalid_key (above every valid key, so such rows sort last
        # in index order, as a stable sort puts them); out[i] = key << IDX_BITS | i (unique), and
        # INT64_MAX for the padding rows num_rows <= i < num_out
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < num_rows
        i64 = i.to(tl.int64)
        e = tl.load(ei_ptr + i64, mask=m, other=0)
        kept = tl.load(kept_ptr + i64, mask=m, other=0)
        pos = tl.load(pos_ptr + tl.maximum(e, 0), mask=m, other=0).to(tl.int64)
        if HAS_BUCKET:
            b = tl.load(bucket_ptr + i64 // k, mask=m, other=0).to(tl.int64)
        else:
            b = i64
        key = tl.where(kept != 0, pos * span + b, invalid_key)
        packed = (key << IDX_BITS) | i64
        tl.store(out_ptr + i64, tl.where(m, packed, 9223372036854775807), mask=i < num_out)

    @triton.jit
    def choice_runs_kernel(key_ptr, flat_ptr, num_rows, k, span, invalid_key, num_groups, BLOCK: tl.constexpr,
                           PREFIX: tl.constexpr):
        # program b: the sorted rows [b BLOCK, b BLOCK + BLOCK) of `choice_segments`' layout
        # (M = num_rows; flat[0:M] holds the sort's order): flat = order | inv | token of row |
        # seg_of_row | seg_start | seg_count | seg_group (M each) | segments per group (num_groups) |
        # number of segments | valid rows. It counts the run starts before its block itself (a pass over
        # the earlier keys: no look-back, so it may run inside a CUDA graph), then writes inv, token
        # of row, seg_of_row, and seg_start / seg_group of the runs starting in the block; segments
        # per group, the number of segments and the valid rows are atomic integer sums (zeroed
        # by the caller). seg_count and the zeros past the last segment: choice_counts_kernel.
        inv_ptr = flat_ptr + num_rows
        tok_ptr = flat_ptr + 2 * num_rows
        sor_ptr = flat_ptr + 3 * num_rows
        start_ptr = flat_ptr + 4 * num_rows
        group_ptr = flat_ptr + 6 * num_rows
        counts_ptr = flat_ptr + 7 * num_rows
        p0 = tl.program_id(0) * BLOCK
        base = tl.sum(tl.zeros((PREFIX,), dtype=tl.int32), axis=0)
        for j0 in range(0, p0, PREFIX):
            j = (j0 + tl.arange(0, PREFIX)).to(tl.int64)
            m = j < p0
            key_j = tl.load(key_ptr + j, mask=m, other=0)
            key_before = tl.load(key_ptr + j - 1, mask=m & (j > 0), other=0)
            base += tl.sum((m & (key_j != invalid_key) & ((j == 0) | (key_j != key_before))).to(tl.int32), axis=0)
        p = p0 + tl.arange(0, BLOCK)
        m = p < num_rows
        p64 = p.to(tl.int64)
        key = tl.load(key_ptr + p64, mask=m, other=0)
        prev = tl.load(key_ptr + p64 - 1, mask=m & (p > 0), other=0)
        valid = m & (key != invalid_key)
        new = valid & ((p == 0) | (key != prev))
        seg = base + tl.cumsum(new.to(tl.int32), axis=0) - 1  # (BLOCK,) run of each valid row
        o = tl.load(flat_ptr + p64, mask=m, other=0)
        tl.store(inv_ptr + o, p64, mask=m)
        tl.store(tok_ptr + p64, o // k, mask=m)
        tl.store(sor_ptr + p64, tl.where(valid, seg, -1).to(tl.int64), mask=m)
        seg64 = seg.to(tl.int64)
        group = key // span
        tl.store(start_ptr + seg64, p64, mask=new)
        tl.store(group_ptr + seg64, group, mask=new)
        tl.atomic_add(counts_ptr + group, tl.full((BLOCK,), 1, tl.int64), mask=new)
        tl.atomic_add(counts_ptr + num_groups, tl.sum(new.to(tl.int64), axis=0))
        tl.atomic_add(counts_ptr + num_groups + 1, tl.sum(valid.to(tl.int64), axis=0))

    @triton.jit
    def choice_counts_kernel(flat_ptr, num_rows, num_groups, BLOCK: tl.constexpr):
        # after choice_runs_kernel: seg_count[s] = seg_start[s + 1] (or the valid rows, for the
        # last segment) - seg_start[s]; seg_start, seg_count, seg_group zero past the last segment
        start_ptr = flat_ptr + 4 * num_rows
        count_ptr = flat_ptr + 5 * num_rows
        group_ptr = flat_ptr + 6 * num_rows
        counts_ptr = flat_ptr + 7 * num_rows
        nseg = tl.load(counts_ptr + num_groups)
        nvalid = tl.load(counts_ptr + num_groups + 1)
        s = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        m = s < num_rows
        live = s < nseg
        start = tl.load(start_ptr + s, mask=live, other=0)
        follows = (s + 1) < nseg
        nxt = tl.load(start_ptr + s + 1, mask=follows, other=0)
        nxt = tl.where(follows, nxt, nvalid)
        tl.store(count_ptr + s, tl.where(live, nxt - start, 0), mask=m)
        zero = tl.zeros((BLOCK,), dtype=tl.int64)
        tl.store(start_ptr + s, zero, mask=m & ~live)
        tl.store(group_ptr + s, zero, mask=m & ~live)

    _KERNELS[mode] = {"hash": hash_kernel, "mean": mean_kernel, "restore": restore_kernel, "expand": expand_kernel,
                     "choice_sum": choice_sum_kernel,
                     "runs": runs_kernel, "merge": merge_kernel, "rank": rank_kernel, "scan_runs": scan_runs_kernel,
                     "choice_keys": choice_keys_kernel, "choice_runs": choice_runs_kernel, "choice_counts": choice_counts_kernel}
    return _KERNELS[mode]


def _count(name: str) -> None:
    LAUNCHES[name] = LAUNCHES.get(name, 0) + 1


# ---- launching -----------------------------------------------------------------------------------
def _launch(name: str, grid: tuple, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs), counted in LAUNCHES. (A launcher that called the cached
    compiled kernel directly, skipping Triton's binding, was tried in the third pass of issue 11 and
    measured slower on the H200 machines' host: 22.3 against 17.1 us a launch; removed.)"""
    _count(name)
    _kernels()[name][grid](*args, **kwargs)


# ---- hashing -----------------------------------------------------------------------------------
#: the hash kernel's projection per (matrix, dtype): (d, LD_PAD) in the tokens' 16-bit dtype, zero
#: padded, or None when the float32 entries are not exact in that dtype (then the torch path
#: hashes). Made once per projection (one read-back, at the first call).
_KERNEL_MATRICES: dict = {}  # (id(matrix), dtype) -> (weak reference to the matrix, padded or None)

#: launch parameters of the hash kernel per problem size: `hash_launch_params` picks the row of
#: the first bound (rows, L d' padded) that the problem fits; `block_m` rows per program, `split`
#: programs per row block along d (split-K, reduced deterministically by the last to arrive).
#: Measured on an H200 by `benchmarks/bench_lsh_fast.py --tune` (CUDA events, d 4,096, L 6 and 2,
#: d' 16: benchmarks/HISTORY.md); other sizes get the nearest row.
HASH_LAUNCHES = [
    # (max rows, max LD_PAD, launch); measured (run lsh11-a): 8,192 x 4,096 at L 6 and L 2 best at
    # (64, 128, 4 warps, 4 stages), 32,768 at (128, 64, 8, 3) (L 6) and within 2% of it (L 2);
    # split-K (2, 4, 8) was slower at both sizes, so no row uses it
    (16384, 256, {"block_m": 64, "block_k": 128, "num_warps": 4, "num_stages": 4, "split": 1}),
    (None, 256, {"block_m": 128, "block_k": 64, "num_warps": 8, "num_stages": 3, "split": 1}),
]
#: the launch of the previous release (one program per 64 rows), kept for the benchmark's baseline
HASH_LAUNCH_V1 = {"block_m": 64, "block_k": 64, "num_warps": 4, "num_stages": 4, "split": 1}
#: kept for callers of the previous release: the launch of the largest problems
HASH_LAUNCH = HASH_LAUNCHES[-1][2]


def hash_launch_params(num_rows: int, ld_pad: int) -> dict:
    """The HASH_LAUNCHES row for a (num_rows, d) x (d, ld_pad) hash."""
    for max_rows, max_ld, params in HASH_LAUNCHES:
        if (max_rows is None or num_rows <= max_rows) and ld_pad <= max_ld:
            return params
    return HASH_LAUNCHES[-1][2]


#: the split-K arrival counters, one int32 per row block, per device (zero between launches: the
#: last program of each row block resets its counter). Launches of one device share them, so
#: split-K launches must not run concurrently on two streams of one device.
_LOCKS: dict = {}


def _locks(device: torch.device, count: int) -> torch.Tensor:
    key = (device.type, device.index)
    locks = _LOCKS.get(key)
    if locks is None or locks.numel() < count:
        locks = torch.zeros(max(count, 1024), dtype=torch.int32, device=device)
        _LOCKS[key] = locks
    return locks


def _kernel_matrix(projection: LSHProjection, dtype: torch.dtype, ld_pad: int) -> torch.Tensor | None:
    matrix = projection.matrix  # (d, L d') float32
    key = (id(matrix), dtype, ld_pad)
    cached = _KERNEL_MATRICES.get(key)
    if cached is not None and cached[0]() is matrix:
        return cached[1]
    for stale in [k for k, (ref, _) in _KERNEL_MATRICES.items() if ref() is None]:
        del _KERNEL_MATRICES[stale]  # matrices that no longer exist
    narrow = matrix.to(dtype)
    padded = None
    if bool(torch.equal(narrow.to(matrix.dtype), matrix)):
        padded = torch.zeros(matrix.shape[0], ld_pad, dtype=dtype, device=matrix.device)
        padded[:, :matrix.shape[1]] = narrow
    _KERNEL_MATRICES[key] = (weakref.ref(matrix), padded)
    return padded


def _hash_launch(tokens: torch.Tensor, config: LSHConfig, projection: LSHProjection,
                 group: torch.Tensor | None = None, span: int = 0, *, idx_bits: int = 0, num_out: int = 0,
                 out: torch.Tensor | None = None, **launch) -> torch.Tensor | None:
    """The fused hash kernel: (T,) int64 bucket ids (or group * span + bucket with group); -1 for
    tokens with a non-finite projection (and, with group, for groups < 0 or so large that the key
    would overflow int64). None when the projection's entries are not exact in the tokens' dtype
    (the caller hashes with torch). `launch` overrides `hash_launch_params`.

    idx_bits > 0 (with group): (num_out,) packed keys key << idx_bits | token (unique, so any sort
    is stable; key -1 packs negative), INT64_MAX for rows num_rows..num_out-1; groups whose packed
    key would reach INT64_MAX get key -1. out: the (num_out,) int64 tensor to write (else a new one)."""
    num_rows, d_model = tokens.shape
    proj_dim, num_hashes = projection.proj_dim, config.num_hashes
    num_cols = num_hashes * proj_dim
    ld_pad = max(16, _next_pow2(num_cols))
    l_pad = ld_pad // proj_dim
    matrix = _kernel_matrix(projection, tokens.dtype, ld_pad)
    if matrix is None:
        return None
    num_out = max(num_out, num_rows) if idx_bits else num_rows
    if out is None or out.shape[0] != num_out:
        out = torch.empty(num_out, dtype=torch.int64, device=tokens.device)
    if num_rows == 0:
        return out.fill_(_INT64_MAX)
    tokens = tokens if tokens.stride(1) == 1 else tokens.contiguous()
    params = {**hash_launch_params(num_rows, ld_pad), **launch}
    block_m, block_k = params["block_m"], params["block_k"]
    row_blocks = _cdiv(num_out, block_m)
    # split-K: at least one BLOCK_K per split (fewer splits for small d)
    split = max(1, min(int(params.get("split", 1)), _cdiv(d_model, block_k)))
    k_per_split = _cdiv(_cdiv(d_model, split), block_k) * block_k
    split = _cdiv(d_model, k_per_split)
    if split > 1 and tokens.is_cuda and torch.cuda.is_current_stream_capturing() \
            and _LOCKS.get((tokens.device.type, tokens.device.index), torch.empty(0)).numel() < row_blocks:
        split, k_per_split = 1, d_model  # counters made inside a CUDA graph capture would not be zeroed
    if split > 1:
        part = torch.empty(split, num_rows, ld_pad, dtype=torch.float32, device=tokens.device)
        locks = _locks(tokens.device, row_blocks)
    else:
        part, locks = out, out  # not read
    max_group = (_INT64_MAX - 1) // span - 1 if group is not None else 0
    if idx_bits:  # (group + 1) * span << idx_bits must stay below INT64_MAX
        max_group = min(max_group, ((_INT64_MAX >> idx_bits) - 1) // span - 1)
    extra = {} if _interpreting() else {"num_warps": params["num_warps"], "num_stages": params["num_stages"]}
    grid = (row_blocks, split)
    _launch("hash", grid, tokens, matrix, group if group is not None else out, out, part, locks, num_rows, d_model,
            tokens.stride(0), matrix.stride(0), max(span, 1), max_group, k_per_split, num_rows * ld_pad, num_out,
            HAS_GROUP=group is not None, UPCAST=_interpreting(), IDX_BITS=idx_bits,
            BLOCK_M=block_m, BLOCK_K=block_k, LD_PAD=ld_pad, DP=proj_dim, L_PAD=l_pad,
            NUM_HASHES=num_hashes, LOG2_RADIX=(2 * proj_dim).bit_length() - 1, SPLIT=split, **extra)
    return out


def token_buckets(tokens: torch.Tensor, config: LSHConfig, projection: LSHProjection | None = None,
                  *, force_triton: bool = False) -> torch.Tensor:
    """(T, d) tokens -> (T,) int64 bucket ids, the same as `lsh.bucket_ids(tokens, config, projection)`.

    Mixed radix 2 d', code 0 most significant. Kernel path (see `kernel_eligible`): one fused pass,
    no host sync; ids agree with the torch reference except at near-ties of the argmax (module
    docstring); tokens with non-finite values get -1 (the torch path raises ValueError), and all
    ids are -1 when the projection is not representable in the tokens' dtype.
    Without a projection, `lsh.make_projection(d, config, dtype=tokens.dtype)` is drawn.
    """
    lsh._check_tokens(tokens) if not tokens.is_cuda else None
    projection = _default_projection(tokens, config, projection)
    eligible = _config_eligible(config, projection, tokens)
    if _use_triton(tokens.device, eligible and (tokens.is_cuda or force_triton), force_triton):
        ids = _hash_launch(tokens.detach(), config, projection)
        if ids is not None:
            return ids
    return lsh.bucket_ids(tokens, config, projection)


# ---- segments ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segments:
    """Rows sorted by key = group * bucket_span + bucket, and the runs of equal keys (segments).

    M rows; every tensor is on the rows' device and has a fixed size (no host sync to build it).
        order:        (M,) int64, row indices in sorted order (valid rows first, stable).
        seg_of_row:   (M,) int64, segment of sorted row i; -1 for invalid rows.
        seg_start:    (M,) int64, first sorted row of segment s (0 for s >= num_segments).
        seg_count:    (M,) int64, rows of segment s (0 for s >= num_segments).
        seg_group:    (M,) int64, group of segment s (0 for s >= num_segments).
        num_segments: (1,) int64 device tensor.
        num_valid:    (1,) int64 device tensor, valid rows (the first num_valid sorted rows).
    """

    order: torch.Tensor
    seg_of_row: torch.Tensor
    seg_start: torch.Tensor
    seg_count: torch.Tensor
    seg_group: torch.Tensor
    num_segments: torch.Tensor
    num_valid: torch.Tensor

    def segments_per_group(self, num_groups: int) -> torch.Tensor:
        """(G,) int64 segments of each group (sync-free scatter_add; groups must be < num_groups)."""
        rows = self.seg_group.shape[0]
        live = torch.arange(rows, device=self.seg_group.device) < self.num_segments  # (M,)
        target = torch.where(live, self.seg_group, num_groups)  # (M,) dead segments -> slot G
        counts = torch.zeros(num_groups + 1, dtype=torch.int64, device=self.seg_group.device)
        return counts.scatter_add_(0, target, torch.ones_like(target))[:num_groups]  # (G,)


def _segments_from_key(key: torch.Tensor, group: torch.Tensor, has_invalid: bool) -> tuple[Segments, torch.Tensor]:
    """Segments of (M,) int64 keys (invalid rows: _SENTINEL). Also returns the sorted keys."""
    rows = key.shape[0]
    device = key.device
    sorted_key, order = torch.sort(key, stable=True)  # (M,)
    if rows == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        zero = torch.zeros(1, dtype=torch.int64, device=device)
        return Segments(empty, empty, empty, empty, empty, zero, zero.clone()), sorted_key
    is_new = torch.ones(rows, dtype=torch.bool, device=device)  # (M,) first row of a run
    torch.ne(sorted_key[1:], sorted_key[:-1], out=is_new[1:])
    if has_invalid:
        valid_sorted = sorted_key != _SENTINEL  # (M,)
        is_new &= valid_sorted
        num_valid = valid_sorted.sum(0, keepdim=True)  # (1,)
    else:
        valid_sorted = None
        num_valid = torch.full((1,), rows, dtype=torch.int64, device=device)
    seg_id = torch.cumsum(is_new, 0) - 1  # (M,) int64
    num_segments = seg_id[-1:] + 1  # (1,): cumsum of the last row (invalid rows add nothing)
    seg_of_row = seg_id if valid_sorted is None else torch.where(valid_sorted, seg_id, -1)
    # first rows scatter into slot seg_id, the others into the dummy slot M (dropped)
    target = torch.where(is_new, seg_id, rows)  # (M,)
    positions = torch.arange(rows, device=device)
    seg_start = torch.zeros(rows + 1, dtype=torch.int64, device=device).scatter_(0, target, positions)[:rows]
    seg_group = torch.zeros(rows + 1, dtype=torch.int64, device=device).scatter_(
        0, target, group[order])[:rows]
    count_target = seg_id if valid_sorted is None else torch.where(valid_sorted, seg_id, rows)
    seg_count = torch.zeros(rows + 1, dtype=torch.int64, device=device).scatter_add_(
        0, count_target, torch.ones_like(count_target))[:rows]
    return Segments(order, seg_of_row, seg_start, seg_count, seg_group, num_segments, num_valid), sorted_key


def segments(group: torch.Tensor, bucket: torch.Tensor, valid: torch.Tensor | None, bucket_span: int,
             num_groups: int) -> Segments:
    """Sort M rows by (group, bucket) and describe the runs of equal keys; no host sync.

    group, bucket: (M,) int64 with 0 <= group < num_groups and 0 <= bucket < bucket_span (not
    checked: that would synchronise); valid: (M,) bool or None (all valid); invalid rows sort last
    and belong to no segment. Raises ValueError when num_groups * bucket_span >= 2^63 - 1 (the
    key would overflow int64; pure host arithmetic).
    """
    for name, tensor in (("group", group), ("bucket", bucket)):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int64 or tensor.ndim != 1:
            raise ValueError(f"{name} must be a 1-D int64 tensor")
    if bucket.shape != group.shape:
        raise ValueError(f"bucket has shape {tuple(bucket.shape)}, group {tuple(group.shape)}")
    if valid is not None and (valid.dtype != torch.bool or valid.shape != group.shape):
        raise ValueError("valid must be a bool tensor shaped like group")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups={num_groups!r} must be a positive int")
    if isinstance(bucket_span, bool) or not isinstance(bucket_span, int) or bucket_span < 1:
        raise ValueError(f"bucket_span={bucket_span!r} must be a positive int")
    if num_groups * bucket_span >= _INT64_MAX:
        raise ValueError(f"num_groups * bucket_span = {num_groups} * {bucket_span} overflows the int64 "
                         f"key (use lsh.compress, which falls back to lexicographic unique)")
    key = group * bucket_span + bucket  # (M,)
    if valid is not None:
        key = torch.where(valid, key, _SENTINEL)
    return _segments_from_key(key, group, valid is not None)[0]


#: rows of a choice_runs / choice_counts program (a grid over the rows; each program counts the
#: run starts before its block in chunks of CHOICE_RUNS_PREFIX keys)
CHOICE_RUNS_BLOCK = 1024
CHOICE_RUNS_PREFIX = 2048


def choice_segments_eligible(num_rows: int, num_groups: int, span: int, device: torch.device,
                             force_triton: bool = False) -> bool:
    """Whether `choice_segments` runs its kernels: Triton on `device` (or force_triton under the
    interpreter), at least one row, and packed keys (num_groups * span + 1) << idx_bits below
    INT64_MAX (the invalid key, num_groups * span, included)."""
    if num_rows < 1 or num_groups < 1 or span < 1:
        return False
    if not (force_triton or triton_available(device)):
        return False
    if force_triton and _triton() is None:
        return False
    idx_bits = max(1, (num_rows - 1).bit_length())
    return ((num_groups * span + 1) << idx_bits) < _INT64_MAX


def choice_segments(expert_index: torch.Tensor, kept: torch.Tensor, bucket: torch.Tensor | None,
                    position: torch.Tensor, span: int, num_groups: int, *, force_triton: bool = False
                    ) -> torch.Tensor:
    """The Segments of a plan's T k choices keyed by (position of the destination expert, bucket),
    as one flat int64 tensor, from five kernel launches and a memset (no host sync, CUDA-graph
    capturable):

        order | inv | token of row | seg_of_row | seg_start | seg_count | seg_group   (M = T k each)
        | segments per group (num_groups) | number of segments | valid rows

    the same values as `segments(position[expert_index.clamp(min=0)].reshape(-1), bucket of every
    choice, kept.reshape(-1), span, num_groups)` with inv = the inverse of its order, token of row =
    order // k and segments_per_group(num_groups). expert_index, kept: (T, k); bucket: (T,) int64
    (a token's bucket, for all its choices) or None (the finest resolution: bucket of choice i is
    i, span T k); position: (E,) int64. The kernels: packed keys (key << idx_bits | choice; not
    kept: key num_groups * span, sorting last in index order, as the stable sort does), the sort of
    `compress_fast` (the rank kernel up to 8,192 rows, else torch.sort of rows + the merge kernel),
    then the run numbering: a grid of CHOICE_RUNS_BLOCK-row programs (choice_runs: each counts the
    run starts before its block over the earlier keys, so no look-back and no ordering between
    programs; per-group and total counts as atomic integer sums into zeroed entries), then
    choice_counts (segment sizes from the starts, zeros past the last segment). Callers check
    `choice_segments_eligible` first.
    """
    num_tokens, k = expert_index.shape
    num_rows = num_tokens * k
    device = expert_index.device
    if not choice_segments_eligible(num_rows, num_groups, span, device, force_triton):
        raise ValueError("choice_segments: not eligible here (see choice_segments_eligible)")
    idx_bits = max(1, (num_rows - 1).bit_length())
    invalid_key = num_groups * span
    sort = sort_launch_params(num_rows)
    chunk = min(sort["sort_chunk"], max(16, _next_pow2(num_rows))) if sort["sort_chunk"] else 0
    num_out = _cdiv(num_rows, chunk) * chunk if chunk else num_rows
    packed = torch.empty(num_out, dtype=torch.int64, device=device)
    flat = torch.empty(7 * num_rows + num_groups + 2, dtype=torch.int64, device=device)
    sorted_key = torch.empty(num_rows, dtype=torch.int64, device=device)
    expert_index = expert_index.reshape(-1).contiguous()
    kept = kept.reshape(-1).contiguous().view(torch.uint8)
    block = 1024
    extra = {} if _interpreting() else {"num_warps": 4}
    _launch("choice_keys", (_cdiv(num_out, block),), expert_index, kept,
            bucket if bucket is not None else expert_index, position, packed, num_rows, num_out, k, span,
            invalid_key, HAS_BUCKET=bucket is not None, IDX_BITS=idx_bits, BLOCK=block, **extra)
    out = (sorted_key, flat[:num_rows])
    if chunk:
        rows_sorted = torch.sort(packed.view(-1, chunk), dim=1)[0]  # (C, S) each row sorted
        _merge_launch(rows_sorted, num_rows, idx_bits, sort, out=out)
    else:
        _rank_launch(packed, idx_bits, {**sort, "flags": False}, out=out)
    block = CHOICE_RUNS_BLOCK  # one program a block of rows, then the counts
    flat[7 * num_rows:].zero_()  # segments per group, number of segments, valid rows: atomic sums
    extra = {} if _interpreting() else {"num_warps": 4}
    _launch("choice_runs", (_cdiv(num_rows, block),), sorted_key, flat, num_rows, k, span, invalid_key,
            num_groups, BLOCK=block, PREFIX=CHOICE_RUNS_PREFIX, **extra)
    _launch("choice_counts", (_cdiv(num_rows, block),), flat, num_rows, num_groups, BLOCK=block, **extra)
    return flat


# ---- segment means -----------------------------------------------------------------------------
def _mean_torch(src: torch.Tensor, seg: Segments, order: torch.Tensor | None, out_rows: int) -> torch.Tensor:
    rows = seg.seg_of_row.shape[0]
    accumulate = lsh.hash_dtype(src.dtype)
    sorted_src = src if order is None else src.index_select(0, order)  # (M, d)
    target = torch.where(seg.seg_of_row >= 0, seg.seg_of_row, rows)  # (M,) invalid -> dummy row
    sums = torch.zeros(rows + 1, src.shape[1], dtype=accumulate, device=src.device).index_add_(
        0, target, sorted_src.to(accumulate))[:out_rows]  # (B, d)
    counts = seg.seg_count[:out_rows].clamp(min=1).unsqueeze(1).to(accumulate)  # (B, 1)
    return (sums / counts).to(src.dtype)


def _mean_launch(src: torch.Tensor, seg: Segments, order: torch.Tensor | None, out_rows: int,
                 zero_fill: bool, total: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    d_model = src.shape[1]
    src = src if src.stride(1) == 1 else src.contiguous()
    out = torch.empty(out_rows, d_model, dtype=out_dtype or src.dtype, device=src.device)
    if out_rows == 0 or d_model == 0:
        return out
    block_d = min(_next_pow2(d_model), 1024)
    rows_per_block = max(1, 4096 // block_d)
    col_blocks = _cdiv(d_model, block_d)
    programs = max(1, min(out_rows, 16 * _num_sms(src.device) // col_blocks))
    extra = {} if _interpreting() else {"num_warps": 4}
    _launch("mean", (programs, col_blocks), src, order if order is not None else seg.seg_start, out, seg.seg_start,
            seg.seg_count, seg.num_segments, out_rows, d_model, src.stride(0),
            out.stride(0), HAS_ORDER=order is not None, ZERO_FILL=zero_fill,
            ROWS=rows_per_block, BLOCK_D=block_d, SUM=total, **extra)
    return out


#: whether 16-bit segment means (`segment_mean`, `segment_mean_of`) run on the runs kernel
#: (`_segment_runs_launch`) instead of the mean kernel. Off: in the layer on an H200 (run-lshlayer11h)
#: the runs kernel took 89 / 154 / 290 us for the centroids at gpu-lsh-d1024-t16k / gpu-lsh-d4096-t8k
#: / deepseek-v3-like-lsh, the mean kernel about 30 / 50 / 314 us (run-lshlayer11g's profile, a
#: different device call; its forward share inferred from the total less the backward's sums).
#: Both paths give the same bits for `segment_mean` and `segment_mean_of` of one input.
SEGMENT_MEANS_ON_RUNS = False

#: whether segment means (`segment_mean`, `segment_mean_of`) of rows at least SEGMENT_SCAN_MIN_D_MODEL
#: wide run on the scan-runs kernel (`_segment_scan_launch`: keys = seg_of_row, NUMBERED, no look-back,
#: no bookkeeping) instead of the mean kernel (SEGMENT_MEANS_ON_RUNS takes precedence for 16-bit
#: rows). The environment variable LSHSIM_SEGMENT_SCAN=0 turns this and the two switches below off at
#: import (the before of benchmarks, in one process tree). In the layer on an H200 (run-lshlayer11j,
#: one call, the scan kernel for every width) the forward lsh_compress phase went 0.534 -> 0.455 ms
#: at deepseek-v3-like-lsh (d 7168, ~28k segments of ~1.2 rows), but 0.212 -> 0.255 ms at
#: gpu-lsh-d1024-t16k and 0.239 -> 0.248 ms at gpu-lsh-d4096-t8k: hence the width threshold, chosen
#: in-sample on those three shapes (call 2 ran the mean kernel at d 1024 and 4096 in both columns and
#: still measured 1.13-1.14x there: run-to-run variation of the small shapes' forward phases, so the
#: narrow shapes' comparison is unresolved; the threshold keeps main's path where no gain was shown).
SEGMENT_MEANS_ON_SCAN = os.environ.get("LSHSIM_SEGMENT_SCAN", "1") != "0"
SEGMENT_SCAN_MIN_D_MODEL = 6144
#: whether restore_rows(..., segments=)'s backward (the layer's) sums the segments on the scan-runs
#: kernel (SUM, NEG, the rows past the segments zeroed in the kernel) instead of the mean kernel.
#: run-lshlayer11j: with both outputs memset first (call 1) the layer's lsh_restore backward went
#: 1.198 -> 1.292 ms at deepseek-v3-like-lsh; with the in-kernel zero fill (call 2) 1.194 -> 1.040 ms,
#: and 0.155 -> 0.141 / 0.254 -> 0.237 ms at gpu-lsh-d1024-t16k / gpu-lsh-d4096-t8k (medians of 20).
#: LSHSIM_SEGMENT_SCAN=0 or LSHSIM_SEGMENT_SUMS_SCAN=0 turn it off at import.
SEGMENT_SUMS_ON_SCAN = SEGMENT_MEANS_ON_SCAN and os.environ.get("LSHSIM_SEGMENT_SUMS_SCAN", "1") != "0"
#: whether restore's backward with compressed= (a SortedCompressed) runs on the scan-runs kernel
#: (sums and -sums, look-back numbering, no bookkeeping) instead of the runs kernel (run-lshlayer11j,
#: bench_lsh_fast r-bwd GPU time: 84.9 -> 62.5 us at 8,192 x 4,096, 318.4 -> 189.6 us at 32,768).
RESTORE_BACKWARD_ON_SCAN = SEGMENT_MEANS_ON_SCAN


def _segment_runs_eligible(src: torch.Tensor) -> bool:
    """Whether the segment means of `src` run on the runs kernel: SEGMENT_MEANS_ON_RUNS and 16-bit
    rows (its one-hot matrix product sums exact 0/1 products in float32; float32 rows would go
    through tf32), else the mean kernel."""
    return SEGMENT_MEANS_ON_RUNS and src.dtype in (torch.bfloat16, torch.float16)


def _segment_scan_eligible(src: torch.Tensor) -> bool:
    """Whether the segment means of `src` run on the scan-runs kernel (SEGMENT_MEANS_ON_SCAN, rows at
    least SEGMENT_SCAN_MIN_D_MODEL wide, not SEGMENT_MEANS_ON_RUNS' 16-bit rows)."""
    return (SEGMENT_MEANS_ON_SCAN and src.shape[-1] >= SEGMENT_SCAN_MIN_D_MODEL
            and not _segment_runs_eligible(src))


def _segment_scan_launch(src: torch.Tensor, seg: Segments | torch.Tensor, order: torch.Tensor | None,
                         zero_fill: bool, *, out_rows: int | None = None, total: bool = False,
                         negate: bool = False, num_segments: torch.Tensor | None = None
                         ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(M, d) segment means of the sorted rows src[order] (src itself without order) on the scan-runs
    kernel (NUMBERED: the keys are seg_of_row, so a row's segment is its key; dropped rows, -1, are
    not read): program b walks the segments starting in sorted rows [b R, b R + R), reading each row
    once through `order`, a segmented float32 running sum in registers, the mean stored at each
    segment's last row. The sums depend on the sorted rows' values and positions only, so
    `segment_mean_of` (through the token of each row) and `segment_mean` (gathered rows) give the
    same bits. Rows >= num_segments: zero with zero_fill, else unwritten. seg: the Segments, or its
    seg_of_row itself (the first rows of one: every segment within them); out_rows: rows of the result
    (default: as many as the keys); total: the sums, not the means (restore's backward); negate: returns
    (out, -out), both written by the kernel. zero_fill with num_segments (the (1,) device count of
    segments): the kernel zeroes the rows from it on (no memset of the whole output)."""
    keys = seg if isinstance(seg, torch.Tensor) else seg.seg_of_row
    rows, d_model = keys.shape[0], src.shape[1]
    out_rows = rows if out_rows is None else out_rows
    if num_segments is None and not isinstance(seg, torch.Tensor):
        num_segments = seg.num_segments
    in_kernel = zero_fill and num_segments is not None
    make = torch.zeros if zero_fill and not in_kernel else torch.empty
    out = make(out_rows, d_model, dtype=src.dtype, device=src.device)
    neg = make(out_rows, d_model, dtype=src.dtype, device=src.device) if negate else out
    if rows == 0 or d_model == 0 or out_rows == 0:
        return (out, neg) if negate else out
    src = src if src.stride(1) == 1 else src.contiguous()
    if order is None:
        order = torch.arange(rows, device=src.device)
    params = scan_launch_params(rows)
    rows_per_program, chunk = int(params["rows"]), int(params["chunk"])
    block_d = max(16, min(int(params["block_d"]), _next_pow2(d_model)))
    extra = {} if _interpreting() else {"num_warps": params["num_warps"], "num_stages": params["num_stages"]}
    _launch("scan_runs", (_cdiv(rows, rows_per_program), _cdiv(d_model, block_d)), keys, order, src, out,
            neg, keys, num_segments if in_kernel else keys, rows, d_model, src.stride(0), out.stride(0), 1, 1 << 32,
            out_rows if in_kernel else 0, R=rows_per_program, U=chunk,
            BLOCK_D=block_d, PREFIX=int(params["prefix"]), LOOKBACK=False, STAGES=int(params["num_stages"]),
            NUMBERED=True, INTS=False, SUM=total, NEG=negate, ZERO_FILL=in_kernel, **extra)
    return (out, neg) if negate else out


def _segment_runs_launch(src: torch.Tensor, seg: Segments, order: torch.Tensor | None, zero_fill: bool) -> torch.Tensor:
    """(M, d) segment means of the sorted rows src[order] (src itself without order) on the runs
    kernel: the keys are seg_of_row (the run numbers, -1 for dropped rows), so every program reads
    one key for the runs before its block, sums its block's rows with the one-hot matrix product
    and reads each row once; no per-segment chain of loads. The sums depend on the sorted rows'
    values and positions only, so reading the tokens through the order (`segment_mean_of`) gives
    the same bits as the gathered rows (`segment_mean`). Rows >= num_segments: zero with
    zero_fill, else unwritten."""
    rows, d_model = seg.seg_of_row.shape[0], src.shape[1]
    out = (torch.zeros if zero_fill else torch.empty)(rows, d_model, dtype=src.dtype, device=src.device)
    if rows == 0 or d_model == 0:
        return out
    if order is None:
        order = torch.arange(rows, device=src.device)
    return _runs_launch(src, seg.seg_of_row, order, 1, rows, numbered=True, out=out)[0]


def _expand_launch(grad: torch.Tensor, seg_of_row: torch.Tensor, count: torch.Tensor | None,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """(M, d): row i = grad[seg_of_row[i]] (/ count[seg_of_row[i]]), 0 where seg_of_row[i] < 0."""
    num_rows, d_model = seg_of_row.shape[0], grad.shape[1]
    out = torch.empty(num_rows, d_model, dtype=out_dtype, device=grad.device)
    if num_rows == 0 or d_model == 0:
        return out
    grad = grad if grad.stride(1) == 1 else grad.contiguous()
    block_d = min(_next_pow2(d_model), 512)
    block_m = max(1, 4096 // block_d)
    extra = {} if _interpreting() else {"num_warps": 4}
    _launch("expand", (_cdiv(num_rows, block_m), _cdiv(d_model, block_d)),
            grad, seg_of_row, count if count is not None else seg_of_row, out, num_rows, d_model, grad.stride(0),
            out.stride(0), SCALE=count is not None, BLOCK_M=block_m, BLOCK_D=block_d, **extra)
    return out


class _SegmentMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, seg, order, out_rows, use_triton, zero_fill):
        if use_triton and _segment_runs_eligible(src):
            out = _segment_runs_launch(src, seg, order, zero_fill)
        elif use_triton and _segment_scan_eligible(src):
            out = _segment_scan_launch(src, seg, order, zero_fill)
        elif use_triton:
            out = _mean_launch(src, seg, order, out_rows, zero_fill)
        else:
            out = _mean_torch(src, seg, order, out_rows)
        ctx.seg, ctx.order, ctx.src_shape, ctx.use_triton = seg, order, src.shape, use_triton
        return out

    @staticmethod
    def backward(ctx, grad_out):
        seg, order = ctx.seg, ctx.order
        if ctx.use_triton and order is None:  # one pass: grad_rows[i] = grad_out[seg[i]] / count
            return (_expand_launch(grad_out, seg.seg_of_row, seg.seg_count, grad_out.dtype),
                    None, None, None, None, None)
        valid = seg.seg_of_row >= 0  # (M,)
        index = seg.seg_of_row.clamp(min=0)  # (M,)
        accumulate = lsh.hash_dtype(grad_out.dtype)
        count = seg.seg_count.index_select(0, index).clamp(min=1).to(accumulate).unsqueeze(1)  # (M, 1)
        grad_sorted = grad_out.index_select(0, index).to(accumulate) / count  # (M, d)
        grad_sorted = torch.where(valid.unsqueeze(1), grad_sorted, 0).to(grad_out.dtype)
        if order is None:
            grad_src = grad_sorted
        else:
            grad_src = torch.zeros(ctx.src_shape, dtype=grad_out.dtype, device=grad_out.device)
            grad_src.index_copy_(0, order, grad_sorted)  # (N, d): sorted row i is token order[i]
        return grad_src, None, None, None, None, None


def segment_mean(rows: torch.Tensor, seg: Segments, *, force_triton: bool = False,
                 zero_fill: bool = True) -> torch.Tensor:
    """(M, d) rows ALREADY in sorted order (rows = x[seg.order]) -> (M, d) segment means.

    Row s < num_segments is the mean of sorted rows seg_start[s] .. seg_start[s] + seg_count[s] - 1;
    rows >= num_segments are zero. Float32 accumulation for 16-bit rows, one rounding to
    rows.dtype. Differentiable: grad_rows[i] = grad_out[seg_of_row[i]] / seg_count[seg_of_row[i]]
    (0 for invalid rows). Kernel path (16-bit rows on CUDA): a persistent grid that loads
    num_segments from device memory; no host sync. zero_fill=False (kernel path): rows >=
    num_segments are left unwritten (the layer reads the first num_segments rows only; at few
    segments the zeros were most of the kernel's writes).
    """
    if rows.ndim != 2 or rows.shape[0] != seg.seg_of_row.shape[0]:
        raise ValueError(f"rows have shape {tuple(rows.shape)}, expected ({seg.seg_of_row.shape[0]}, d)")
    eligible = rows.dtype in (torch.bfloat16, torch.float16, torch.float32) and rows.shape[1] > 0
    use = _use_triton(rows.device, eligible and (rows.is_cuda or force_triton), force_triton)
    return _SegmentMean.apply(rows, seg, None, rows.shape[0], use, zero_fill or not use)


def segment_mean_of(tokens: torch.Tensor, seg: Segments, token_of_row: torch.Tensor) -> torch.Tensor:
    """(M, d) segment means of the rows tokens[token_of_row] (sorted row i is token token_of_row[i]),
    without gathering them: the mean kernel (or the runs kernel, SEGMENT_MEANS_ON_RUNS) reads the
    tokens through token_of_row, summing the same values in the same order as
    `segment_mean(tokens[token_of_row], seg)`, so the means are bit-equal to it; rows >= num_segments are not written. No autograd (wrap the result with
    `centroids_of`). Kernel path only (16-bit or float32 tokens where the kernels run); no host sync."""
    if _segment_runs_eligible(tokens):
        return _segment_runs_launch(tokens, seg, token_of_row, zero_fill=False)
    if _segment_scan_eligible(tokens):
        return _segment_scan_launch(tokens, seg, token_of_row, zero_fill=False)
    return _mean_launch(tokens, seg, token_of_row, seg.seg_of_row.shape[0], zero_fill=False)


def centroids_of(rows: torch.Tensor, means: torch.Tensor, seg: Segments) -> torch.Tensor:
    """means (the segment means of `rows` in sorted order, e.g. from `segment_mean_of`) as a function
    of rows: the same backward as `segment_mean(rows, seg)` on the kernel path (one pass,
    grad_rows[i] = grad[seg_of_row[i]] / seg_count[seg_of_row[i]], 0 for invalid rows)."""
    if rows.requires_grad and torch.is_grad_enabled():
        return _Centroids.apply(rows, means, seg.seg_of_row, seg.seg_count, True)
    return means


# ---- restore -----------------------------------------------------------------------------------
def _restore_torch(centroid_out, centroids, rows, seg_of_row):
    accumulate = torch.promote_types(lsh.hash_dtype(rows.dtype), lsh.hash_dtype(centroid_out.dtype))
    valid = (seg_of_row >= 0).unsqueeze(1)  # (N, 1)
    index = seg_of_row.clamp(min=0)
    out = centroid_out.index_select(0, index).to(accumulate) + (
        rows.to(accumulate) - centroids.index_select(0, index).to(accumulate))  # (N, d)
    return torch.where(valid, out, 0).to(rows.dtype)


def _restore_launch(centroid_out, centroids, rows, seg_of_row, row_index=None):
    """One pass of the restore kernel; row_index (N,) int64: row i's x is rows[row_index[i]] (the
    tokens read through the token of each row), else rows[i]."""
    num_rows = seg_of_row.shape[0]
    d_model = rows.shape[1]
    out = torch.empty(num_rows, d_model, dtype=rows.dtype, device=rows.device)
    if num_rows == 0:
        return out
    centroid_out, centroids, rows = (t if t.stride(1) == 1 else t.contiguous() for t in (centroid_out, centroids, rows))
    block_d = min(_next_pow2(d_model), 512)
    block_m = max(1, 4096 // block_d)
    grid = (_cdiv(num_rows, block_m), _cdiv(d_model, block_d))
    extra = {} if _interpreting() else {"num_warps": 4}
    _launch("restore", grid, centroid_out, centroids, rows, seg_of_row, out, num_rows, d_model,
            centroid_out.stride(0), centroids.stride(0), rows.stride(0), out.stride(0),
            row_index if row_index is not None else seg_of_row,
            BLOCK_M=block_m, BLOCK_D=block_d, HAS_INDEX=row_index is not None, **extra)
    return out


def _segment_sums(grad_out: torch.Tensor, seg: Segments, out_rows: int, negate: bool):
    """(sums, -sums or None): the sums of grad_out's rows per segment, its rows the first N sorted rows
    of `seg` (contiguous per segment); rows >= num_segments zero. The scan-runs kernel
    (SEGMENT_SUMS_ON_SCAN) or the mean kernel (SUM)."""
    if SEGMENT_SUMS_ON_SCAN:  # the scan-runs kernel over the first N keys, sums and -sums
        launched = _segment_scan_launch(grad_out, seg.seg_of_row[:grad_out.shape[0]], None, True,
                                        out_rows=out_rows, total=True, negate=negate,
                                        num_segments=seg.num_segments)
        return launched if negate else (launched, None)
    sums = _mean_launch(grad_out, seg, None, out_rows, zero_fill=True, total=True)  # (B, d)
    return sums, (-sums if negate else None)


def _scatter_sums(grad_out: torch.Tensor, seg_of_row: torch.Tensor, out_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_out with invalid rows zeroed, (B, d) sums per segment in float32 / float64): the torch path."""
    valid = (seg_of_row >= 0).unsqueeze(1)  # (N, 1)
    grad = torch.where(valid, grad_out, 0)  # (N, d)
    accumulate = lsh.hash_dtype(grad_out.dtype)
    sums = torch.zeros(out_rows + 1, grad_out.shape[1], dtype=accumulate, device=grad_out.device)
    target = torch.where(seg_of_row >= 0, seg_of_row, out_rows)  # invalid -> dummy row
    sums.index_add_(0, target, grad.to(accumulate))  # (B + 1, d)
    return grad, sums[:-1]


class _RestoreRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, centroid_out, centroids, rows, seg_of_row, use_triton, seg=None, runs=None):
        ctx.save_for_backward(seg_of_row)
        ctx.seg = seg if use_triton else None
        ctx.runs = runs if use_triton else None  # (sorted_key, order, span) of a SortedCompressed
        ctx.shapes = (centroid_out.shape, centroids.shape)
        ctx.dtypes = (centroid_out.dtype, centroids.dtype)
        if use_triton:
            return _restore_launch(centroid_out, centroids, rows, seg_of_row)
        return _restore_torch(centroid_out, centroids, rows, seg_of_row)

    @staticmethod
    def backward(ctx, grad_out):
        (seg_of_row,) = ctx.saved_tensors
        if ctx.runs is not None:
            # rows in token order, their sort known: one pass of the runs kernel, sums and -sums
            sorted_key, order, span, run_start = ctx.runs
            need_cout, need_cent = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            if RESTORE_BACKWARD_ON_SCAN:  # the scan-runs kernel: sums (and -sums), no bookkeeping
                launched = _scan_runs_launch(grad_out, sorted_key, order, span, ctx.shapes[0][0], total=True,
                                             negate=need_cent, index=False)
                sums, neg = launched[0], (launched[1] if need_cent else None)
            else:
                sums, neg, _ = _runs_launch(grad_out, sorted_key, order, span, ctx.shapes[0][0], total=True,
                                            negate=need_cent, flags=run_start)
            grad_cout = sums.to(ctx.dtypes[0]) if need_cout else None
            grad_cent = neg.to(ctx.dtypes[1]) if need_cent else None
            return grad_cout, grad_cent, grad_out, None, None, None, None
        if ctx.seg is not None:
            # rows of a segment are contiguous (the rows are in sorted order): one segment-sum pass
            need_cent = ctx.needs_input_grad[1]
            sums, neg = _segment_sums(grad_out, ctx.seg, ctx.shapes[0][0], need_cent)
            grad_cout = sums.to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
            grad_cent = neg.to(ctx.dtypes[1]) if need_cent else None
            return grad_cout, grad_cent, grad_out, None, None, None, None
        grad, sums = _scatter_sums(grad_out, seg_of_row, ctx.shapes[0][0])
        grad_cout = sums.to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_cent = (-sums).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_cout, grad_cent, grad, None, None, None, None


def restore_rows(centroid_out: torch.Tensor, centroids: torch.Tensor, rows: torch.Tensor,
                 seg_of_row: torch.Tensor, *, segments: Segments | None = None,
                 compressed: Compressed | None = None, force_triton: bool = False) -> torch.Tensor:
    """out[i] = centroid_out[s] - centroids[s] + rows[i], s = seg_of_row[i] (0 where s < 0).

    centroid_out, centroids: (B, d); rows: (N, d); seg_of_row: (N,) int64 in [0, B) (or -1).
    Computed in float32 (float64 for float64 inputs) and rounded once to rows.dtype, so it equals
    `lsh.restore(centroid_out, compressed, lsh.residuals(tokens, compressed))` up to rounding with
    rows = tokens, seg_of_row = compressed.token_to_centroid. Differentiable: grad_centroid_out[s]
    = sum of grad_out over the rows of s, grad_centroids = -grad_centroid_out, grad_rows = grad_out.
    Kernel path (all three 16-bit, same dtype, on CUDA): one pass. With `segments` (the Segments
    whose sorted rows `rows` are, seg_of_row = segments.seg_of_row[:N]) the backward's segment sums
    are one pass of the segment kernel over contiguous rows instead of a scatter-add. With
    `compressed` (the `SortedCompressed` of `compress_fast` whose token_to_centroid is seg_of_row,
    rows = its tokens) they are one pass of the runs kernel, which also writes -sums.
    """
    if centroid_out.ndim != 2 or centroids.shape != centroid_out.shape:
        raise ValueError(f"centroid_out {tuple(centroid_out.shape)} and centroids {tuple(centroids.shape)} "
                         f"must both be (B, d)")
    if rows.ndim != 2 or rows.shape[1] != centroids.shape[1]:
        raise ValueError(f"rows have shape {tuple(rows.shape)}, expected (N, {centroids.shape[1]})")
    if seg_of_row.dtype != torch.int64 or tuple(seg_of_row.shape) != (rows.shape[0],):
        raise ValueError(f"seg_of_row must be ({rows.shape[0]},) int64")
    same = centroid_out.dtype == centroids.dtype == rows.dtype
    eligible = same and rows.dtype in (torch.bfloat16, torch.float16) and rows.shape[1] > 0
    use = _use_triton(rows.device, eligible and (rows.is_cuda or force_triton), force_triton)
    runs = None
    if isinstance(compressed, SortedCompressed) and compressed.order is not None:
        if compressed.token_to_centroid is not seg_of_row or compressed.num_centroids != centroids.shape[0]:
            raise ValueError("compressed must be the SortedCompressed whose token_to_centroid is seg_of_row "
                             f"and whose {compressed.num_centroids} centroids are the {centroids.shape[0]} rows")
        runs = (compressed.sorted_key, compressed.order, compressed.span, compressed.run_start)
    return _RestoreRows.apply(centroid_out, centroids, rows, seg_of_row, use, segments, runs)


# ---- the layer's centroids and restore, reading the tokens through the token of each row ---------
def _choice_sum_torch(src: torch.Tensor, inv: torch.Tensor, k: int, num_tokens: int,
                      seg_of_row: torch.Tensor | None, count: torch.Tensor | None,
                      add_rows: torch.Tensor | None = None) -> torch.Tensor:
    """The torch path of `_choice_sum_launch` (the same values: each term rounded as the kernel rounds
    it, float32 / float64 sums over the k choices, one rounding)."""
    rows = inv.reshape(num_tokens, k)  # (T, k) sorted row of each choice
    accumulate = lsh.hash_dtype(src.dtype)
    if seg_of_row is not None:
        seg = seg_of_row.index_select(0, rows.reshape(-1)).reshape(num_tokens, k)  # (T, k)
        valid = seg >= 0
        index = seg.clamp(min=0)
        scale = count.index_select(0, index.reshape(-1)).clamp(min=1).to(accumulate).reshape(num_tokens, k, 1)
        terms = (src.index_select(0, index.reshape(-1)).reshape(num_tokens, k, -1).to(accumulate) / scale
                 ).to(src.dtype)  # (T, k, d), the expand kernel's rounding
        terms = torch.where(valid.unsqueeze(2), terms, 0)
        if add_rows is not None:  # + the row's own gradient, the sum rounded (autograd's accumulation)
            in_rows = rows < add_rows.shape[0]
            extra = add_rows.index_select(0, torch.where(in_rows, rows, 0).reshape(-1)).reshape(num_tokens, k, -1)
            terms = terms + torch.where(in_rows.unsqueeze(2), extra, 0)
            valid = valid | in_rows
    else:
        valid = rows < src.shape[0]
        index = torch.where(valid, rows, 0)
        terms = src.index_select(0, index.reshape(-1)).reshape(num_tokens, k, -1)
    terms = torch.where(valid.unsqueeze(2), terms.to(accumulate), 0)
    return terms.sum(dim=1).to(src.dtype)  # (T, d)


def _choice_sum_launch(src: torch.Tensor, inv: torch.Tensor, k: int, num_tokens: int,
                       seg_of_row: torch.Tensor | None, count: torch.Tensor | None,
                       add_rows: torch.Tensor | None = None) -> torch.Tensor:
    """(T, d): out[t] = sum over j < k of v(inv[t k + j]), one pass (the choice-sum kernel): with
    seg_of_row and count, v(r) = src[seg_of_row[r]] / count[...] (0 for a dropped row: the centroids'
    backward); without, v(r) = src[r] for r < src.shape[0], else 0 (restore's backward, src its N
    kept rows). add_rows (N, d) (with seg_of_row): + add_rows[r] for r < N, the two terms' sum rounded
    to the dtype before the token's sum. No scatter, no atomics, no (T k, d) intermediate."""
    d_model = src.shape[1]
    out = torch.empty(num_tokens, d_model, dtype=src.dtype, device=src.device)
    if num_tokens == 0 or d_model == 0:
        return out
    src = src if src.stride(1) == 1 else src.contiguous()
    block_d = min(_next_pow2(d_model), 256)
    block_t = max(1, 2048 // block_d)
    extra = {} if _interpreting() else {"num_warps": 4}
    by_segment = seg_of_row is not None
    add = add_rows is not None and by_segment
    if add and add_rows.stride(1) != 1:
        add_rows = add_rows.contiguous()
    _launch("choice_sum", (_cdiv(num_tokens, block_t), _cdiv(d_model, block_d)), src, inv,
            seg_of_row if by_segment else inv, count if by_segment else inv, out, add_rows if add else src,
            num_tokens, d_model, k, src.shape[0], add_rows.shape[0] if add else 0, src.stride(0), out.stride(0),
            add_rows.stride(0) if add else 0, BY_SEGMENT=by_segment, ADD_ROWS=add, BLOCK_T=block_t,
            BLOCK_D=block_d, **extra)
    return out


class PendingRows:
    """The restored rows' gradient handed from `restore_tokens`' backward to `centroids_of_tokens`'
    (the same forward's): the tokens' gradient of both is then one pass, each row's two terms summed
    and rounded as autograd summed the gathered rows' gradients (bit-equal to the gathered path).
    Autograd runs restore's backward first (it gives the centroids their gradient)."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows = None


class _CentroidsOfTokens(torch.autograd.Function):
    """means (computed from the tokens through the token of each sorted row) as a function of the
    tokens: the backward of `centroids_of(tokens[token_of_row], means, seg)` followed by the choice
    gather's (`gather_choices`), in one pass (the choice-sum kernel)."""

    @staticmethod
    def forward(ctx, tokens, means, seg_of_row, counts, inv, k, use_triton, pending):
        ctx.save_for_backward(seg_of_row, counts, inv)
        ctx.k, ctx.num_tokens, ctx.use_triton, ctx.pending = k, tokens.shape[0], use_triton, pending
        return means.view_as(means)

    @staticmethod
    def backward(ctx, grad):
        seg_of_row, counts, inv = ctx.saved_tensors
        rows = None
        if ctx.pending is not None:  # restore's rows' gradient, left by its backward
            rows, ctx.pending.rows = ctx.pending.rows, None
        run = _choice_sum_launch if ctx.use_triton else _choice_sum_torch
        return (run(grad, inv, ctx.k, ctx.num_tokens, seg_of_row, counts, rows),
                None, None, None, None, None, None, None)


def centroids_of_tokens(tokens: torch.Tensor, means: torch.Tensor, seg: Segments, inv: torch.Tensor, k: int, *,
                        pending: PendingRows | None = None, force_triton: bool = False) -> torch.Tensor:
    """means (M, d), the segment means of the sorted rows tokens[token_of_row] (e.g. `segment_mean_of`),
    as a function of the tokens (T, d), without the rows: the layer's T k sorted rows are the T tokens'
    k choices, inv (T k,) the sorted row of choice t k + j. Backward: grad_tokens[t] = sum over j of
    grad[s] / seg_count[s], s = seg_of_row[inv[t k + j]] (dropped rows, s < 0, add nothing), each term
    rounded to the gradient's dtype and summed in float32: the values of `centroids_of` on the
    gathered rows followed by `gather_choices`' backward, without the (T k, d) rows in either pass.
    pending: shared with the `restore_tokens` of the same forward, whose rows' gradient is then added
    here (see `PendingRows`)."""
    if inv.shape != seg.seg_of_row.shape or inv.shape[0] != tokens.shape[0] * k:
        raise ValueError(f"inv must be ({tokens.shape[0] * k},) like seg_of_row for {tokens.shape[0]} tokens, k = {k}")
    if not (tokens.requires_grad and torch.is_grad_enabled()):
        return means
    eligible = means.dtype in (torch.bfloat16, torch.float16, torch.float32) and means.shape[1] > 0
    use = _use_triton(means.device, eligible and (means.is_cuda or force_triton), force_triton)
    return _CentroidsOfTokens.apply(tokens, means, seg.seg_of_row, seg.seg_count, inv, k, use, pending)


class _RestoreTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, centroid_out, centroids, tokens, token_of_row, seg_of_row, inv, k, use_triton, seg, pending):
        ctx.save_for_backward(seg_of_row, inv)
        ctx.pending = pending
        ctx.seg = seg if use_triton else None
        ctx.k, ctx.num_tokens, ctx.use_triton = k, tokens.shape[0], use_triton
        ctx.shapes = (centroid_out.shape, centroids.shape)
        ctx.dtypes = (centroid_out.dtype, centroids.dtype)
        if use_triton:
            return _restore_launch(centroid_out, centroids, tokens, seg_of_row, row_index=token_of_row)
        return _restore_torch(centroid_out, centroids, tokens.index_select(0, token_of_row), seg_of_row)

    @staticmethod
    def backward(ctx, grad_out):
        seg_of_row, inv = ctx.saved_tensors
        need_cout, need_cent, need_tokens = ctx.needs_input_grad[:3]
        if ctx.seg is not None:
            sums, neg = _segment_sums(grad_out, ctx.seg, ctx.shapes[0][0], need_cent)
            grad_rows = grad_out
        else:
            grad_rows, sums = _scatter_sums(grad_out, seg_of_row, ctx.shapes[0][0])
            neg = -sums
        grad_cout = sums.to(ctx.dtypes[0]) if need_cout else None
        grad_cent = neg.to(ctx.dtypes[1]) if need_cent else None
        grad_tokens = None
        if need_tokens and ctx.pending is not None:  # summed with the centroids' term in their backward
            ctx.pending.rows = grad_rows
        elif need_tokens:  # the N kept rows' gradient summed per token through inv (rows >= N: dropped choices)
            run = _choice_sum_launch if ctx.use_triton else _choice_sum_torch
            grad_tokens = run(grad_rows, inv, ctx.k, ctx.num_tokens, None, None)
        return grad_cout, grad_cent, grad_tokens, None, None, None, None, None, None, None


def restore_tokens(centroid_out: torch.Tensor, centroids: torch.Tensor, tokens: torch.Tensor,
                   token_of_row: torch.Tensor, seg_of_row: torch.Tensor, inv: torch.Tensor, k: int, *,
                   segments: Segments | None = None, pending: PendingRows | None = None,
                   force_triton: bool = False) -> torch.Tensor:
    """`restore_rows(centroid_out, centroids, tokens[token_of_row], seg_of_row, segments=)` without the
    gathered rows: out[i] = centroid_out[s] - centroids[s] + tokens[token_of_row[i]], s = seg_of_row[i]
    (0 where s < 0), the restore kernel reading the tokens through token_of_row (bit-equal to
    `restore_rows` on the gathered rows). tokens (T, d); token_of_row, seg_of_row (N,) int64: the first
    N of the T k sorted rows (the kept choices); inv (T k,): the sorted row of choice t k + j.
    Backward: centroid_out and centroids as `restore_rows`'; the tokens' gradient sums, per token, the
    gradient of its kept rows (inv[t k + j] < N) in float32, one rounding (the choice-sum kernel):
    `gather_choices`' backward without the (T k, d) rows padded from the N. pending (the
    `PendingRows` of the `centroids_of_tokens` that made `centroids`, which must require a gradient):
    the rows' gradient is left there and added in the centroids' backward instead (one pass, the
    gathered path's bits)."""
    if centroid_out.ndim != 2 or centroids.shape != centroid_out.shape:
        raise ValueError(f"centroid_out {tuple(centroid_out.shape)} and centroids {tuple(centroids.shape)} "
                         f"must both be (B, d)")
    if tokens.ndim != 2 or tokens.shape[1] != centroids.shape[1]:
        raise ValueError(f"tokens have shape {tuple(tokens.shape)}, expected (T, {centroids.shape[1]})")
    rows = seg_of_row.shape[0]
    if seg_of_row.dtype != torch.int64 or token_of_row.dtype != torch.int64 or token_of_row.shape != (rows,):
        raise ValueError(f"token_of_row and seg_of_row must be ({rows},) int64")
    if inv.shape != (tokens.shape[0] * k,) or rows > inv.shape[0]:
        raise ValueError(f"inv must be ({tokens.shape[0] * k},) for {tokens.shape[0]} tokens, k = {k}, "
                         f"and at least the {rows} rows")
    same = centroid_out.dtype == centroids.dtype == tokens.dtype
    eligible = same and tokens.dtype in (torch.bfloat16, torch.float16) and tokens.shape[1] > 0
    use = _use_triton(tokens.device, eligible and (tokens.is_cuda or force_triton), force_triton)
    if pending is not None and not (centroids.requires_grad and torch.is_grad_enabled()):
        pending = None  # no centroids' backward would pick the rows up
    return _RestoreTokens.apply(centroid_out, centroids, tokens, token_of_row, seg_of_row, inv, k, use, segments,
                                pending)


# ---- compress ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SortedCompressed(Compressed):
    """A `Compressed` that also keeps the sort behind it (kernel path of `compress_fast`).

        sorted_key: (N,) int64, group * span + bucket of the tokens in sorted order.
        order:      (N,) int64, the tokens in sorted order (sorted row p is token order[p]).
        span:       buckets per group in the key.

    `restore_rows(..., compressed=it)` uses them for a one-pass backward (the segment sums).
    """

    sorted_key: torch.Tensor | None = None
    order: torch.Tensor | None = None
    span: int = 0
    run_start: torch.Tensor | None = None  # (N,) int8, 1 where sorted row p starts a run (rank path)


#: launch parameters of the runs kernel (compress's bookkeeping + centroids in one pass; restore's
#: backward sums) per problem size (the first row whose max rows fits): `rows` sorted rows per
#: program (None: about two programs per SM, 16..128), `block_d` columns per step, `col_groups`
#: programs per row block along d, `prefix` keys per step of each program's count of earlier runs
#: (or block counts per step of the look-back), `lookback` the decoupled look-back (`_LOOKBACK`).
#: Measured on an H200 (run lsh11-b, `benchmarks/bench_lsh_fast.py --tune`, d 4,096): the launch
#: with the least summed time over L 6 and L 2 at 8,192 and at 32,768 tokens.
RUNS_LAUNCHES = [
    # <= 8,192 rows: the decoupled look-back (no count over the earlier keys), the best of the
    # third pass's sweep summed over L 6 and L 2 at 8,192 tokens (run lsh11f, in-sample)
    (8192, {"rows": 64, "block_d": 128, "col_groups": 8, "prefix": 256, "num_warps": 4, "num_stages": 3,
            "lookback": True}),
    (16384, {"rows": 64, "block_d": 128, "col_groups": 4, "prefix": 2048, "num_warps": 4, "num_stages": 3}),
    (None, {"rows": 64, "block_d": 128, "col_groups": 2, "prefix": 2048, "num_warps": 4, "num_stages": 3}),
]
#: overrides of the RUNS_LAUNCHES rows (the benchmark's tuning, tests)
RUNS_LAUNCH: dict = {}

#: the sort of compress. `sort_chunk` 0 (the rank path): the rank kernel places every packed key
#: (key << idx_bits | token) at the number of packed keys below it (all pairs, `block_t` tokens x
#: `block_c` keys a step; O(N^2) compares, so for small N only; `flags` also marks run starts for
#: the runs kernel, a second compare per pair: 32 against 16 us at 8,192 tokens, not worth it).
#: `sort_chunk` > 0: packed keys sorted as rows of `sort_chunk` by torch.sort (its one-kernel path
#: for rows of at most 4,096), then merged by the merge kernel (`block` elements a program); None:
#: torch.sort of the whole key array instead. The rank row (<= 8,192 tokens: 16 us against 48 us
#: for torch.sort + merge at 8,192, run lsh11f; not measured between 8,192 and 16,384, where its
#: N^2 work grows 4x) and the rows above (run lsh11-b) were measured on an H200.
SORT_LAUNCHES = [
    (8192, {"sort_chunk": 0, "block_t": 8, "block_c": 128, "num_warps": 4, "flags": False, "block": 128}),
    (16384, {"sort_chunk": 2048, "block": 128, "num_warps": 4}),
    (None, {"sort_chunk": 4096, "block": 128, "num_warps": 4}),
]
#: overrides of the SORT_LAUNCHES rows
SORT_LAUNCH: dict = {}


def _by_rows(table: list, num_rows: int, overrides: dict) -> dict:
    for max_rows, params in table:
        if max_rows is None or num_rows <= max_rows:
            return {**params, **overrides}
    return {**table[-1][1], **overrides}


def runs_launch_params(num_rows: int) -> dict:
    """The runs-kernel launch for num_rows sorted rows (RUNS_LAUNCHES, then RUNS_LAUNCH)."""
    return _by_rows(RUNS_LAUNCHES, num_rows, RUNS_LAUNCH)


def sort_launch_params(num_rows: int) -> dict:
    """The sort of compress for num_rows tokens (SORT_LAUNCHES, then SORT_LAUNCH)."""
    return _by_rows(SORT_LAUNCHES, num_rows, SORT_LAUNCH)


#: the runs kernel's look-back state per device: [int64 buffer, last epoch, ticket count]. The
#: buffer holds the programs' ticket counter (entry 0) and the per-block run counts (entries 1..B).
#: Each launch with lookback takes the next epoch, so count entries of earlier launches never match,
#: and its tickets start where the previous launch's ended (every launch takes exactly one ticket
#: per program). Launches of one device share the buffer, so look-back launches must not run
#: concurrently on two streams, and it is off inside a CUDA graph capture (a replay would reuse the
#: captured epoch and ticket base).
_LOOKBACK: dict = {}


def _lookback_counts(device: torch.device, count: int, programs: int) -> tuple[torch.Tensor, int, int]:
    """(buffer, tag, ticket base) for one look-back launch of `programs` programs over `count`
    row blocks; the host's ticket count moves on by `programs`."""
    key = (device.type, device.index)
    buffer, epoch, tickets = _LOOKBACK.get(key, (None, 0, 0))
    if buffer is None or buffer.numel() < count + 1:
        buffer = torch.zeros(max(count + 1, 4096), dtype=torch.int64, device=device)
        epoch = 0
    epoch = epoch + 1 if epoch < 2 ** 30 else 1
    if epoch == 1 or tickets > 2 ** 62:
        buffer.zero_()
        tickets = 0
    _LOOKBACK[key] = (buffer, epoch, tickets + programs)
    return buffer, epoch << 32, tickets


def _runs_rows(num_rows: int, device: torch.device, rows: int | None) -> int:
    if rows:
        return rows
    return max(16, min(128, _next_pow2(_cdiv(num_rows, 2 * _num_sms(device)))))


def _runs_launch(x: torch.Tensor, sorted_key: torch.Tensor, order: torch.Tensor, span: int, out_rows: int, *,
                 total: bool = False, negate: bool = False, index: bool = False, flags: torch.Tensor | None = None,
                 limit: int | None = None, numbered: bool = False, out: torch.Tensor | None = None, **launch):
    """One launch of the runs kernel over the (N, d) rows x (token order) sorted by `order`.

    Returns (out, neg, ints): out (out_rows, d) in x's dtype, row s = mean (sum with total) of run s
    (rows >= the number of runs are not written); neg = -out (with negate, else None); ints (with
    index, else None): (3 N + 3,) int64 = token_to_run (N) | run_group (N) | run_count (N) |
    (number of runs, first sorted key, last sorted key). flags: (N,) int8 run starts of the sorted
    rows (the rank kernel's), for a cheaper count of the runs before each program's block.
    limit: rows with sorted key < 0 or >= limit are not read and their runs not written (None:
    INT64_MAX). numbered: the sorted keys are the run numbers themselves (a segmentation's
    seg_of_row: 0, 1, ..., then -1 for dropped rows), so no count over the earlier keys (nor look-back). out: the (out_rows, d) output to
    write into (e.g. zeros), else a new one, uninitialised. x may have another number of rows than
    the sorted keys (order maps the N sorted rows into x).
    """
    num_rows, d_model = sorted_key.shape[0], x.shape[1]
    params = {**runs_launch_params(num_rows), **launch}
    x = x if x.stride(1) == 1 else x.contiguous()
    if out is None:
        out = torch.empty(out_rows, d_model, dtype=x.dtype, device=x.device)
    neg = torch.empty_like(out) if negate else None
    ints = torch.empty(3 * num_rows + 3, dtype=torch.int64, device=x.device) if index else None
    if num_rows == 0:
        return out, neg, ints
    rows = _runs_rows(num_rows, x.device, params["rows"])
    block_d = max(16, min(params["block_d"], _next_pow2(d_model)))
    col_groups = max(1, min(int(params.get("col_groups", 1)), _cdiv(d_model, block_d)))
    cols_per_group = _cdiv(_cdiv(d_model, col_groups), block_d) * block_d
    col_groups = _cdiv(d_model, cols_per_group)
    extra = {} if _interpreting() else {"num_warps": params["num_warps"], "num_stages": params["num_stages"]}
    row_blocks = _cdiv(num_rows, rows)
    lookback = (bool(params.get("lookback", False)) and not numbered
                and not (x.is_cuda and torch.cuda.is_current_stream_capturing()))
    cnt, tag, ticket_base = (_lookback_counts(x.device, row_blocks, row_blocks * col_groups) if lookback
                             else (sorted_key, 1 << 32, 0))
    _launch("runs", (row_blocks, col_groups),
            sorted_key, order, x, out, neg if negate else out, ints if index else sorted_key,  # (not written)
            flags if flags is not None else sorted_key, cnt, num_rows, d_model, x.stride(0), out.stride(0),
            max(span, 1), cols_per_group, tag, ticket_base, _INT64_MAX if limit is None else limit, R=rows,
            BLOCK_D=block_d, PREFIX=params["prefix"], SUM=total, NEG=negate, INDEX=index, UPCAST=_interpreting(),
            FLAGS=flags is not None, LOOKBACK=lookback, NUMBERED=numbered, **extra)
    return out, neg, ints


#: compress's centroids and bookkeeping: "scan" (the scan-runs kernel, `_scan_runs_launch`) or "runs"
#: (the runs kernel's one-hot matrix product, the previous release's). Both give the same integers;
#: the centroids agree within float32 summation order (bit-equal where a run's float32 sum is exact).
COMPRESS_CENTROIDS = "scan"

#: launch parameters of the scan-runs kernel per problem size (as RUNS_LAUNCHES): `rows` sorted rows
#: whose runs a program owns, `chunk` rows a step of its walk (each thread holds all of them for its
#: 8 columns), `block_d` columns a program (num_warps * 32 * 8: one 16-byte vector a thread a row),
#: `num_stages` the software pipeline of the walk (cp.async of the keys, order and gathered rows,
#: stages ahead), `prefix` block counts a step of the look-back, `recount_prefix` keys a step of the
#: recount of earlier runs without it (inside a CUDA graph capture, or lookback False). Measured on
#: an H200 (run-lsh11i, `benchmarks/profile_lsh_compress.py --grid`, 13 launches at 8,192 and
#: 32,768 tokens, L 6 and 2, in-sample): chunk 4 (114 registers: 4 programs an SM, the 512
#: programs of 8,192 tokens in one wave; 375.5 us summed over the four shapes) and 128 rows with
#: chunk 8 (372.2 us) tie; 64 rows with chunk 8 (168 registers, 3 programs an SM) 399.1 us; 3
#: stages ahead of 1, 2 and 4.
SCAN_LAUNCHES = [
    (None, {"rows": 64, "chunk": 4, "block_d": 1024, "num_warps": 4, "num_stages": 3, "prefix": 256,
            "recount_prefix": 2048, "lookback": True}),
]
#: overrides of the SCAN_LAUNCHES rows
SCAN_LAUNCH: dict = {}


def scan_launch_params(num_rows: int) -> dict:
    """The scan-runs launch for num_rows sorted rows (SCAN_LAUNCHES, then SCAN_LAUNCH)."""
    return _by_rows(SCAN_LAUNCHES, num_rows, SCAN_LAUNCH)


def _scan_runs_launch(x: torch.Tensor, sorted_key: torch.Tensor, order: torch.Tensor, span: int, out_rows: int,
                      *, ints: torch.Tensor | None = None, total: bool = False, negate: bool = False,
                      index: bool = True, **launch):
    """One launch of the scan-runs kernel: (out, ints) as `_runs_launch(..., index=True)` returns them
    (out (out_rows, d): row s the mean of run s, rows >= the number of runs unwritten; ints (3 N + 3,)
    = token_to_run | run_group | run_count | (number of runs, first key, last key), written into
    `ints` when given). total: the runs' sums, not their means; negate: (out, neg, ints) with neg = -out
    (restore's backward: `_scan_restore_backward`); index False: ints not written (None)."""
    num_rows, d_model = sorted_key.shape[0], x.shape[1]
    params = {**scan_launch_params(num_rows), **launch}
    x = x if x.stride(1) == 1 else x.contiguous()
    out = torch.empty(out_rows, d_model, dtype=x.dtype, device=x.device)
    neg = torch.empty_like(out) if negate else out
    if ints is None and index:
        ints = torch.empty(3 * num_rows + 3, dtype=torch.int64, device=x.device)
    if num_rows == 0:
        return (out, neg, ints) if negate else (out, ints)
    rows, chunk = int(params["rows"]), int(params["chunk"])
    block_d = max(16, min(int(params["block_d"]), _next_pow2(d_model)))
    col_groups = _cdiv(d_model, block_d)
    row_blocks = _cdiv(num_rows, rows)
    lookback = bool(params.get("lookback", False)) and not (x.is_cuda and torch.cuda.is_current_stream_capturing())
    cnt, tag, ticket_base = (_lookback_counts(x.device, row_blocks, row_blocks * col_groups) if lookback
                             else (sorted_key, 1 << 32, 0))
    extra = {} if _interpreting() else {"num_warps": params["num_warps"], "num_stages": params["num_stages"]}
    prefix = params["prefix"] if lookback else params.get("recount_prefix", params["prefix"])
    _launch("scan_runs", (row_blocks, col_groups), sorted_key, order, x, out, neg,
            ints if index else sorted_key, cnt, num_rows, d_model,
            x.stride(0), out.stride(0), max(span, 1), tag, ticket_base, R=rows, U=chunk, BLOCK_D=block_d,
            PREFIX=prefix, LOOKBACK=lookback, STAGES=int(params["num_stages"]), INTS=index, SUM=total, NEG=negate,
            **extra)
    return (out, neg, ints) if negate else (out, ints)


class _Centroids(torch.autograd.Function):
    """centroids (computed by the runs kernel) as a function of the tokens: backward
    grad_tokens[i] = grad[t2c[i]] / count[t2c[i]], one pass (the expand kernel)."""

    @staticmethod
    def forward(ctx, tokens, centroids, token_to_centroid, counts, use_triton):
        ctx.save_for_backward(token_to_centroid, counts)
        ctx.use_triton = use_triton
        return centroids.view_as(centroids)

    @staticmethod
    def backward(ctx, grad):
        token_to_centroid, counts = ctx.saved_tensors
        if ctx.use_triton:
            return _expand_launch(grad, token_to_centroid, counts, grad.dtype), None, None, None, None
        accumulate = lsh.hash_dtype(grad.dtype)
        scale = counts.index_select(0, token_to_centroid).to(accumulate).unsqueeze(1)  # (N, 1)
        return (grad.index_select(0, token_to_centroid).to(accumulate) / scale).to(grad.dtype), None, None, None, None


def _merge_launch(rows_sorted: torch.Tensor, num_tokens: int, idx_bits: int, sort: dict,
                  out: tuple | None = None):
    """(C, S) rows of sorted packed keys -> (sorted_key, order), each (num_tokens,): one launch
    (into `out` = (sorted_key, order) when given)."""
    num_chunks, chunk = rows_sorted.shape
    if out is None:
        sorted_key = torch.empty(num_tokens, dtype=torch.int64, device=rows_sorted.device)
        order = torch.empty_like(sorted_key)
    else:
        sorted_key, order = out
    extra = {} if _interpreting() else {"num_warps": sort["num_warps"]}
    _launch("merge", (_cdiv(num_chunks * chunk, sort["block"]),),
            rows_sorted, sorted_key, order, num_chunks, IDX_BITS=idx_bits, CHUNK=chunk,
            LOG_CHUNK=chunk.bit_length() - 1, BLOCK=sort["block"], **extra)
    return sorted_key, order


def _rank_launch(packed: torch.Tensor, idx_bits: int, sort: dict, out: tuple | None = None):
    """(N,) unique packed keys -> (sorted_key, order, run_start (int8, or None without
    sort["flags"])), each (N,): one launch (sorted_key and order into `out` when given)."""
    num_tokens = packed.shape[0]
    if out is None:
        sorted_key = torch.empty(num_tokens, dtype=torch.int64, device=packed.device)
        order = torch.empty_like(sorted_key)
    else:
        sorted_key, order = out
    flags = bool(sort.get("flags", False))
    run_start = torch.empty(num_tokens, dtype=torch.int8, device=packed.device) if flags else None
    block_t, block_c = sort.get("block_t", 16), sort.get("block_c", 128)
    extra = {} if _interpreting() else {"num_warps": sort.get("num_warps", 4)}
    _launch("rank", (_cdiv(num_tokens, block_t),), packed, sorted_key, order, run_start if flags else order,
            num_tokens, IDX_BITS=idx_bits, BLOCK_T=block_t, BLOCK_C=block_c, FLAGS=flags, **extra)
    return sorted_key, order, run_start


def _compress_kernels(tokens: torch.Tensor, group: torch.Tensor, config: LSHConfig, projection: LSHProjection,
                      span: int, hash_launch: dict | None = None, runs_launch: dict | None = None,
                      sort_launch: dict | None = None, scan_launch: dict | None = None):
    """The sync-free part of the kernel path: hash (packed keys) -> rank kernel -> runs kernel
    (small N), or hash (packed keys) -> torch.sort of rows of at most 4,096 -> merge kernel -> runs
    kernel, or hash -> torch.sort -> runs (see SORT_LAUNCHES). Returns (means (N, d), ints,
    sorted_key, order, run_start or None) (see `_runs_launch`), or None when the projection is not
    exact in the tokens' dtype."""
    num_tokens = tokens.shape[0]
    sort = {**sort_launch_params(num_tokens), **(sort_launch or {})}
    idx_bits = max(1, (num_tokens - 1).bit_length())
    packable = (span << (16 + idx_bits)) < _INT64_MAX
    run_start = None
    ints = None
    # packed keys when they leave room for 2^16 groups: (2^16 span) << idx_bits < 2^63
    if sort["sort_chunk"] == 0 and packable:
        # one int64 buffer (fewer allocations on the host): packed | sorted key | order | ints
        buffer = torch.empty(6 * num_tokens + 3, dtype=torch.int64, device=tokens.device)
        packed = _hash_launch(tokens, config, projection, group, span, idx_bits=idx_bits, num_out=num_tokens,
                              out=buffer[:num_tokens], **(hash_launch or {}))  # (N,)
        if packed is None:
            return None
        out = (buffer[num_tokens:2 * num_tokens], buffer[2 * num_tokens:3 * num_tokens])
        sorted_key, order, run_start = _rank_launch(packed, idx_bits, sort, out=out)
        ints = buffer[3 * num_tokens:]
    elif sort["sort_chunk"] and packable:
        chunk = min(sort["sort_chunk"], max(16, _next_pow2(num_tokens)))
        num_chunks = _cdiv(num_tokens, chunk)
        packed = _hash_launch(tokens, config, projection, group, span, idx_bits=idx_bits,
                              num_out=num_chunks * chunk, **(hash_launch or {}))  # (C * S,)
        if packed is None:
            return None
        rows_sorted = torch.sort(packed.view(num_chunks, chunk), dim=1)[0]  # (C, S) each row sorted
        sorted_key, order = _merge_launch(rows_sorted, num_tokens, idx_bits, sort)
    else:
        key = _hash_launch(tokens, config, projection, group, span, **(hash_launch or {}))  # (N,)
        if key is None:
            return None
        sorted_key, order = torch.sort(key, stable=True)  # (N,)
    if COMPRESS_CENTROIDS == "scan":
        means, ints = _scan_runs_launch(tokens, sorted_key, order, span, tokens.shape[0], ints=ints,
                                        **(scan_launch or {}))
    else:
        means, _, ints = _runs_launch(tokens, sorted_key, order, span, tokens.shape[0], index=True, flags=run_start,
                                      **(runs_launch or {}))
    return means, ints, sorted_key, order, run_start


def _prepare_compress(tokens: torch.Tensor, group: torch.Tensor, config: LSHConfig,
                      projection: LSHProjection | None, force_triton: bool):
    """The checks both compress paths start with: `lsh.compress`'s result (its errors, or the cases
    only it handles: exact hashing, no tokens, spans that overflow int64), or
    (num_tokens, span, projection, kernel-eligible)."""
    lsh._check_tokens(tokens) if not tokens.is_cuda else None
    if tokens.ndim != 2 or not isinstance(group, torch.Tensor) or tuple(group.shape) != (tokens.shape[0],) \
            or group.dtype != torch.int64:
        return lsh.compress(tokens, group, config, projection)  # raises the reference's errors
    num_tokens, d_model = tokens.shape
    span = config.max_buckets(d_model) if not config.exact else 0
    if config.exact or num_tokens == 0 or span >= _INT64_MAX:
        return lsh.compress(tokens, group, config, projection)
    projection = _default_projection(tokens, config, projection)
    eligible = _config_eligible(config, projection, tokens) and (tokens.is_cuda or force_triton)
    return num_tokens, span, projection, eligible


def compress_fast(tokens: torch.Tensor, group: torch.Tensor, config: LSHConfig,
                  projection: LSHProjection | None = None, *, force_triton: bool = False) -> Compressed:
    """The same `lsh.Compressed` as `lsh.compress(tokens, group, config, projection)`.

    Same centroids (within one rounding of the 16-bit dtype: float32 sums in another order), same
    order by (group, bucket), token_to_centroid, counts and groups (kernel path: up to near-ties of
    the hash, see the module docstring). Synchronises once, at the end, to size the outputs.

    Kernel path (`kernel_eligible`): the hash kernel writes the packed keys, the rank kernel
    (<= 8,192 tokens) or torch.sort + the merge kernel sorts them, the scan-runs kernel (or the runs
    kernel, COMPRESS_CENTROIDS) writes the centroids, token_to_centroid, groups and counts and the
    sizes the host reads; one host sync (`CompressGraph`: the launches as one graph). The result is a
    `SortedCompressed` (restore_rows(..., compressed=it) has a one-pass backward); centroids are
    rows of an (N, d) buffer. The backward w.r.t. the tokens is one pass (grad / count).
    Everything else runs the torch path (`_compress_via_segments`): CPU, 32/64-bit tokens,
    the fast Hadamard transform. exact=True, spans with (2 d')^L * num_groups >= 2^63,
    non-finite tokens and negative groups fall back to `lsh.compress` (which raises for the last two).
    """
    prepared = _prepare_compress(tokens, group, config, projection, force_triton)
    if isinstance(prepared, Compressed):
        return prepared
    num_tokens, span, projection, eligible = prepared
    if not _use_triton(tokens.device, eligible, force_triton):
        return _compress_via_segments(tokens, group, config, projection)
    with torch.no_grad():
        launched = _compress_kernels(tokens.detach(), group, config, projection, span)
    if launched is None:  # a projection whose entries the 16-bit dtype cannot hold: torch hashes
        return _compress_via_segments(tokens, group, config, projection)
    return _compressed_of(launched, tokens, group, config, projection, span)


def _compressed_of(launched: tuple, tokens: torch.Tensor, group: torch.Tensor, config: LSHConfig,
                   projection: LSHProjection, span: int) -> Compressed:
    """compress_fast's result from `_compress_kernels`' buffers, after its one host sync."""
    num_tokens = tokens.shape[0]
    means, ints, sorted_key, order, run_start = launched
    # the one host sync: the number of centroids, and the checks the kernels could not do without one
    num_centroids, key_min, _ = ints[3 * num_tokens:].tolist()
    if key_min < 0:  # non-finite tokens, negative groups, or keys that would overflow int64
        return lsh.compress(tokens, group, config, projection)
    token_to_centroid = ints[:num_tokens]
    counts = ints[2 * num_tokens:2 * num_tokens + num_centroids]
    centroids = means[:num_centroids]  # (B, d)
    if tokens.requires_grad and torch.is_grad_enabled():
        centroids = _Centroids.apply(tokens, centroids, token_to_centroid, counts, True)
    return SortedCompressed(centroids=centroids, token_to_centroid=token_to_centroid,
                            centroid_group=ints[num_tokens:num_tokens + num_centroids], centroid_count=counts,
                            num_tokens=num_tokens, sorted_key=sorted_key, order=order, span=span,
                            run_start=run_start)


class CompressGraph:
    """compress_fast for one pair of (tokens, group) tensors, its sync-free part (hash, sort,
    centroids: three kernel launches up to 8,192 tokens) captured once as a CUDA graph, so that a
    call is one graph launch and the host sync instead of three launches.

        graph = CompressGraph(tokens, group, config, projection)   # captures (compiles first)
        compressed = graph()        # the same result as compress_fast(tokens, group, ...) for the
                                    # values tokens and group hold at the time of the call

    The graph reads the tensors' memory at every call (write new values into them in place; other
    tensors need another CompressGraph). The result's tensors are the graph's own buffers: they hold
    until the next call of the same graph, which overwrites them (clone what must outlive it). The
    centroid kernel counts the runs before each program's block itself (no look-back: a replay
    would reuse its launch state), so its centroids equal compress_fast's bit for bit. Kernel path
    only: raises ValueError where compress_fast would take its torch path (CPU, not kernel-eligible)
    or fall back to lsh.compress before hashing. A call whose keys show non-finite tokens or bad
    groups falls back to lsh.compress, as compress_fast does. Gradients as compress_fast's.
    """

    def __init__(self, tokens: torch.Tensor, group: torch.Tensor, config: LSHConfig,
                 projection: LSHProjection | None = None):
        prepared = _prepare_compress(tokens, group, config, projection, False)
        if isinstance(prepared, Compressed) or not tokens.is_cuda or not _use_triton(tokens.device, prepared[3],
                                                                                      False):
            raise ValueError("CompressGraph needs tokens and groups on which compress_fast runs its CUDA kernels")
        _, span, projection, _ = prepared
        self.tokens, self.group, self.config, self.projection, self.span = tokens, group, config, projection, span
        detached = tokens.detach()
        no_lookback = {"lookback": False}
        with torch.no_grad():
            if _compress_kernels(detached, group, config, projection, span, runs_launch=no_lookback,
                                 scan_launch=no_lookback) is None:  # compiles the launches
                raise ValueError("CompressGraph: the projection's entries are not exact in the tokens' dtype")
            torch.cuda.synchronize(tokens.device)
            self.graph = torch.cuda.CUDAGraph()
            with capture(self.graph):
                self._launched = _compress_kernels(detached, group, config, projection, span,
                                                   runs_launch=no_lookback, scan_launch=no_lookback)

    def __call__(self) -> Compressed:
        self.graph.replay()
        return _compressed_of(self._launched, self.tokens, self.group, self.config, self.projection, self.span)


def _compress_via_segments(tokens: torch.Tensor, group: torch.Tensor, config: LSHConfig,
                           projection: LSHProjection | None = None, *, force_triton: bool = False,
                           hash_launch: dict | None = None) -> Compressed:
    """`compress_fast` built from the public pieces (token hash, `segments`, `segment_mean`): the
    torch path of `compress_fast`, and on CUDA the kernel path of the previous release (about 20
    small kernels around torch.sort; `benchmarks/bench_lsh_fast.py` times it as the baseline).

    Same centroids (within one rounding of the 16-bit dtype: float32 sums in another order), same
    order by (group, bucket), token_to_centroid, counts and groups (kernel path: up to near-ties of
    the hash, see the module docstring). Synchronises once, at the end, to size the outputs.
    config.exact, the fast Hadamard transform on CPU... anything not eligible runs the torch path;
    exact=True, spans with (2 d')^L * num_groups >= 2^63, non-finite tokens and negative groups
    fall back to `lsh.compress` (which raises for the last two).
    """
    prepared = _prepare_compress(tokens, group, config, projection, force_triton)
    if isinstance(prepared, Compressed):
        return prepared
    num_tokens, span, projection, eligible = prepared
    use = _use_triton(tokens.device, eligible, force_triton)
    with torch.no_grad():
        key = _hash_launch(tokens.detach(), config, projection, group, span, **(hash_launch or {})) if use else None
        if key is None:  # torch path (or a projection whose entries the 16-bit dtype cannot hold)
            use = False
            key = group * span + lsh.bucket_ids(tokens, config, projection)  # (N,)
        seg, sorted_key = _segments_from_key(key, group, has_invalid=False)
    # launched before the sync (rows >= num_segments of the (N, d) buffer are left unwritten and
    # sliced off), so the GPU computes the means while the host waits for the sizes
    means = _SegmentMean.apply(tokens, seg, seg.order, num_tokens, use, False)  # (N, d)
    with torch.no_grad():
        group_min, group_max = torch.aminmax(group)
        # the one host sync: sizes, and the checks the kernel path could not do without one
        stats = torch.stack([seg.num_segments[0], group_max, group_min, sorted_key[0]]).tolist()
    num_centroids, group_max, group_min, key_min = stats
    if group_min < 0 or key_min < 0 or (group_max + 1) * span >= _INT64_MAX:
        return lsh.compress(tokens, group, config, projection)  # overflow, non-finite or bad groups
    centroids = means[:num_centroids]  # (B, d)
    token_to_centroid = torch.empty_like(seg.seg_of_row).index_copy_(0, seg.order, seg.seg_of_row)  # (N,)
    return Compressed(centroids=centroids, token_to_centroid=token_to_centroid,
                      centroid_group=seg.seg_group[:num_centroids], centroid_count=seg.seg_count[:num_centroids],
                      num_tokens=num_tokens)
