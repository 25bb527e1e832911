"""Fused backward of a grouped linear: dx = dy @ w[e]^T and dw[e] = x_e^T dy_e in one pass (draft)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rows(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, e, start, end, rk, K: tl.constexpr, N: tl.constexpr,
          sxm, sxk, swe, swk, swn, sym, syn, sdxm, sdxk, sde, sdk, sdn,
          M1: tl.constexpr, M2: tl.constexpr, TWO: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    k_ok = rk < K
    rm1 = start + tl.arange(0, M1)
    ok1 = rm1 < end
    xt1 = tl.load(x_ptr + rm1[None, :] * sxm + rk[:, None] * sxk, mask=ok1[None, :] & k_ok[:, None], other=0.0)
    acc1 = tl.zeros((M1, BK), dtype=tl.float32)
    if TWO:
        rm2 = start + M1 + tl.arange(0, M2)
        ok2 = rm2 < end
        xt2 = tl.load(x_ptr + rm2[None, :] * sxm + rk[:, None] * sxk, mask=ok2[None, :] & k_ok[:, None], other=0.0)
        acc2 = tl.zeros((M2, BK), dtype=tl.float32)
    for n0 in tl.range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        n_ok = rn < N
        wt = tl.load(w_ptr + e * swe + rk[None, :] * swk + rn[:, None] * swn,
                     mask=k_ok[None, :] & n_ok[:, None], other=0.0)            # (BN, BK) = w[e][rk, rn]^T
        d1 = tl.load(dy_ptr + rm1[:, None] * sym + rn[None, :] * syn, mask=ok1[:, None] & n_ok[None, :], other=0.0)
        acc1 = tl.dot(d1, wt, acc1)
        g = tl.dot(xt1, d1)                                                     # (BK, BN)
        if TWO:
            d2 = tl.load(dy_ptr + rm2[:, None] * sym + rn[None, :] * syn, mask=ok2[:, None] & n_ok[None, :], other=0.0)
            acc2 = tl.dot(d2, wt, acc2)
            g = tl.dot(xt2, d2, g)
        tl.store(dw_ptr + e * sde + rk[:, None] * sdk + rn[None, :] * sdn, g.to(dw_ptr.dtype.element_ty),
                 mask=k_ok[:, None] & n_ok[None, :])
    tl.store(dx_ptr + rm1[:, None] * sdxm + rk[None, :] * sdxk, acc1.to(dx_ptr.dtype.element_ty),
             mask=ok1[:, None] & k_ok[None, :])
    if TWO:
        tl.store(dx_ptr + rm2[:, None] * sdxm + rk[None, :] * sdxk, acc2.to(dx_ptr.dtype.element_ty),
                 mask=ok2[:, None] & k_ok[None, :])


@triton.jit
def _general(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, e, start, end, rk, K: tl.constexpr, N: tl.constexpr,
             sxm, sxk, swe, swk, swn, sym, syn, sdxm, sdxk, sde, sdk, sdn,
             BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    # any number of rows: dw over all row blocks per column block, then dx per row block (w read again)
    k_ok = rk < K
    for n0 in tl.range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        n_ok = rn < N
        g = tl.zeros((BK, BN), dtype=tl.float32)
        for m0 in tl.range(start, end, BM):
            rm = m0 + tl.arange(0, BM)
            ok = rm < end
            xt = tl.load(x_ptr + rm[None, :] * sxm + rk[:, None] * sxk, mask=ok[None, :] & k_ok[:, None], other=0.0)
            d = tl.load(dy_ptr + rm[:, None] * sym + rn[None, :] * syn, mask=ok[:, None] & n_ok[None, :], other=0.0)
            g = tl.dot(xt, d, g)
        tl.store(dw_ptr + e * sde + rk[:, None] * sdk + rn[None, :] * sdn, g.to(dw_ptr.dtype.element_ty),
                 mask=k_ok[:, None] & n_ok[None, :])
    for m0 in tl.range(start, end, BM):
        rm = m0 + tl.arange(0, BM)
        ok = rm < end
        acc = tl.zeros((BM, BK), dtype=tl.float32)
        for n0 in tl.range(0, N, BN):
            rn = n0 + tl.arange(0, BN)
            n_ok = rn < N
            wt = tl.load(w_ptr + e * swe + rk[None, :] * swk + rn[:, None] * swn,
                         mask=k_ok[None, :] & n_ok[:, None], other=0.0)
            d = tl.load(dy_ptr + rm[:, None] * sym + rn[None, :] * syn, mask=ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(d, wt, acc)
        tl.store(dx_ptr + rm[:, None] * sdxm + rk[None, :] * sdxk, acc.to(dx_ptr.dtype.element_ty),
                 mask=ok[:, None] & k_ok[None, :])


@triton.jit
def fused_bwd_kernel(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, offs_ptr, K: tl.constexpr, N: tl.constexpr,
                     sxm, sxk, swe, swk, swn, sym, syn, sdxm, sdxk, sde, sdk, sdn,
                     BK: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    num_kb = tl.cdiv(K, BK)
    e = pid // num_kb
    kb = pid % num_kb
    start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
    end = tl.load(offs_ptr + e)
    rows = end - start
    e64 = e.to(tl.int64)
    rk = (kb * BK + tl.arange(0, BK)).to(tl.int64)
    start = start.to(tl.int64)
    end = end.to(tl.int64)
    if rows <= 64:
        _rows(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, e64, start, end, rk, K, N, sxm, sxk, swe, swk, swn, sym, syn,
              sdxm, sdxk, sde, sdk, sdn, 64, 16, False, BK, BN)
    elif rows <= 128:
        _rows(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, e64, start, end, rk, K, N, sxm, sxk, swe, swk, swn, sym, syn,
              sdxm, sdxk, sde, sdk, sdn, 128, 16, False, BK, BN)
    elif rows <= 192:
        _rows(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, e64, start, end, rk, K, N, sxm, sxk, swe, swk, swn, sym, syn,
              sdxm, sdxk, sde, sdk, sdn, 128, 64, True, BK, BN)
    elif rows <= 256:
        _rows(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, e64, start, end, rk, K, N, sxm, sxk, swe, swk, swn, sym, syn,
              sdxm, sdxk, sde, sdk, sdn, 128, 128, True, BK, BN)
    else:
        _general(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, e64, start, end, rk, K, N, sxm, sxk, swe, swk, swn, sym, syn,
                 sdxm, sdxk, sde, sdk, sdn, 128, BK, BN)


def fused_linear_backward(x, w, dy, offsets, config=(64, 64, 8, 3)):
    """dx (R, K) = dy @ w[e]^T per expert's rows, dw (E, K, N) = x_e^T dy_e; x (R, K), w (E, K, N), dy (R, N)."""
    rows, k = x.shape
    experts, _, n = w.shape
    dx = torch.empty(rows, k, dtype=x.dtype, device=x.device)
    dw = torch.empty(experts, k, n, dtype=w.dtype, device=x.device)
    bk, bn, warps, stages = config
    grid = (experts * triton.cdiv(k, bk),)
    kw = {} if x.device.type == "cpu" else dict(num_warps=warps, num_stages=stages)
    fused_bwd_kernel[grid](x, w, dy, dx, dw, offsets, k, n,
                           x.stride(0), x.stride(1), w.stride(0), w.stride(1), w.stride(2), dy.stride(0), dy.stride(1),
                           dx.stride(0), dx.stride(1), dw.stride(0), dw.stride(1), dw.stride(2),
                           BK=bk, BN=bn, **kw)
    return dx, dw


def reference(x, w, dy, offsets):
    dx = torch.empty(x.shape, dtype=torch.float32)
    dw = torch.zeros(w.shape, dtype=torch.float32)
    start = 0
    for e, end in enumerate(offsets.tolist()):
        xe, de = x[start:end].float(), dy[start:end].float()
        dx[start:end] = de @ w[e].float().T
        dw[e] = xe.T @ de
        start = end
    return dx, dw
