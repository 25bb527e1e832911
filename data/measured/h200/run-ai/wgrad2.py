"""Experimental weight-gradient kernels (dw[e] = x_e^T dy_e), to compare with torch's grouped_mm."""
import torch
import triton
import triton.language as tl


@triton.jit
def wgrad_persistent(x_ptr, dy_ptr, dw_ptr, offs_ptr, E, K, N,
                     stride_xm, stride_xk, stride_ym, stride_yn, stride_we, stride_wk, stride_wn,
                     BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, GROUP: tl.constexpr,
                     NUM_PROGS: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_k = tl.cdiv(K, BLOCK_K)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_e = num_pid_k * num_pid_n
    total = E * per_e
    in_group = GROUP * num_pid_n
    for tile in range(pid, total, NUM_PROGS):
        e = tile // per_e
        t = tile % per_e
        first_k = (t // in_group) * GROUP
        group_size = tl.minimum(num_pid_k - first_k, GROUP)
        pid_k = first_k + (t % in_group) % group_size
        pid_n = (t % in_group) // group_size
        start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
        end = tl.load(offs_ptr + e)
        rk = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
        rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for r0 in range(start, end, BLOCK_R):
            rr = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
            ok = rr < end
            a = tl.load(x_ptr + rr[None, :] * stride_xm + rk[:, None] * stride_xk,
                        mask=ok[None, :] & (rk[:, None] < K), other=0.0)
            b = tl.load(dy_ptr + rr[:, None] * stride_ym + rn[None, :] * stride_yn,
                        mask=ok[:, None] & (rn[None, :] < N), other=0.0)
            acc = tl.dot(a, b, acc)
        w_ptrs = dw_ptr + e.to(tl.int64) * stride_we + rk[:, None] * stride_wk + rn[None, :] * stride_wn
        tl.store(w_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=(rk[:, None] < K) & (rn[None, :] < N))


def persistent_weight_grad(x, dy, offsets, experts, config, num_sms=None):
    rows, k = x.shape
    n = dy.shape[1]
    dw = torch.empty(experts, k, n, dtype=x.dtype, device=x.device)
    bk, bn, br, warps, stages, group, per_sm = config
    if num_sms is None:
        num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
    progs = num_sms * per_sm
    wgrad_persistent[(progs,)](x, dy, dw, offsets, experts, k, n, x.stride(0), x.stride(1), dy.stride(0),
                               dy.stride(1), dw.stride(0), dw.stride(1), dw.stride(2), BLOCK_K=bk, BLOCK_N=bn,
                               BLOCK_R=br, GROUP=group, NUM_PROGS=progs, num_warps=warps, num_stages=stages)
    return dw


def padded_weight_grad(x, dy, offsets, counts, most=None):
    """dw by one torch.bmm over rows padded to the largest count (host ints `counts`)."""
    experts = len(counts)
    most = most or max(counts)
    rows = x.shape[0]
    off = offsets.long()
    cnt = torch.diff(off, prepend=off.new_zeros(1))
    expert = torch.repeat_interleave(torch.arange(experts, device=x.device), cnt, output_size=rows)
    slot = expert * most + torch.arange(rows, device=x.device) - (off - cnt)[expert]
    xp = x.new_zeros(experts * most, x.shape[1]).index_copy_(0, slot, x).view(experts, most, -1)
    dyp = dy.new_zeros(experts * most, dy.shape[1]).index_copy_(0, slot, dy).view(experts, most, -1)
    return torch.bmm(xp.transpose(1, 2), dyp), (xp, dyp)


@triton.jit
def _wgrad_tma_tile(x_desc, dy_desc, dw_desc, offs_ptr, e, pid_k, pid_n, K,
                    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, MASK_B: tl.constexpr):
    start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
    end = tl.load(offs_ptr + e)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_R):
        ok = (r0 + tl.arange(0, BLOCK_R)) < end
        a = x_desc.load([r0, pid_k * BLOCK_K])  # (BLOCK_R, BLOCK_K)
        b = dy_desc.load([r0, pid_n * BLOCK_N])  # (BLOCK_R, BLOCK_N)
        a = tl.where(ok[:, None], a, 0.0)
        if MASK_B:
            b = tl.where(ok[:, None], b, 0.0)
        acc = tl.dot(tl.trans(a), b, acc)
    dw_desc.store([e * K + pid_k * BLOCK_K, pid_n * BLOCK_N], acc.to(dw_desc.dtype))


@triton.jit
def wgrad_tma(x_desc, dy_desc, dw_desc, offs_ptr, K, N,
              BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, GROUP: tl.constexpr,
              MASK_B: tl.constexpr):
    pid = tl.program_id(0)
    e = tl.program_id(1)
    num_pid_k = tl.cdiv(K, BLOCK_K)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP * num_pid_n
    first_k = (pid // in_group) * GROUP
    group_size = tl.minimum(num_pid_k - first_k, GROUP)
    pid_k = first_k + (pid % in_group) % group_size
    pid_n = (pid % in_group) // group_size
    _wgrad_tma_tile(x_desc, dy_desc, dw_desc, offs_ptr, e, pid_k, pid_n, K, BLOCK_K, BLOCK_N, BLOCK_R, MASK_B)


@triton.jit
def wgrad_tma_persistent(x_desc, dy_desc, dw_desc, offs_ptr, E, K, N,
                         BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, GROUP: tl.constexpr,
                         MASK_B: tl.constexpr, NUM_PROGS: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_k = tl.cdiv(K, BLOCK_K)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_e = num_pid_k * num_pid_n
    in_group = GROUP * num_pid_n
    for tile in range(pid, E * per_e, NUM_PROGS):
        e = tile // per_e
        t = tile % per_e
        first_k = (t // in_group) * GROUP
        group_size = tl.minimum(num_pid_k - first_k, GROUP)
        pid_k = first_k + (t % in_group) % group_size
        pid_n = (t % in_group) // group_size
        _wgrad_tma_tile(x_desc, dy_desc, dw_desc, offs_ptr, e, pid_k, pid_n, K, BLOCK_K, BLOCK_N, BLOCK_R, MASK_B)


def tma_weight_grad(x, dy, offsets, experts, config, num_sms=None):
    """config (BLOCK_K, BLOCK_N, BLOCK_R, warps, stages, GROUP, MASK_B, per_sm or 0 = one tile a program)."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    rows, k = x.shape
    n = dy.shape[1]
    bk, bn, br, warps, stages, group, mask_b, per_sm = config
    assert k % bk == 0
    dw = torch.empty(experts, k, n, dtype=x.dtype, device=x.device)
    xd = TensorDescriptor.from_tensor(x, [br, bk])
    yd = TensorDescriptor.from_tensor(dy, [br, bn])
    wd = TensorDescriptor.from_tensor(dw.view(experts * k, n), [bk, bn])
    if per_sm:
        if num_sms is None:
            num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        progs = num_sms * per_sm
        wgrad_tma_persistent[(progs,)](xd, yd, wd, offsets, experts, k, n, BLOCK_K=bk, BLOCK_N=bn, BLOCK_R=br,
                                       GROUP=group, MASK_B=mask_b, NUM_PROGS=progs, num_warps=warps, num_stages=stages)
    else:
        grid = (triton.cdiv(k, bk) * triton.cdiv(n, bn), experts)
        wgrad_tma[grid](xd, yd, wd, offsets, k, n, BLOCK_K=bk, BLOCK_N=bn, BLOCK_R=br, GROUP=group, MASK_B=mask_b,
                        num_warps=warps, num_stages=stages)
    return dw
