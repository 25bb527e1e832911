"""lshsim.dispatch.lsh_fast against lshsim.dispatch.lsh (torch path, Triton interpreter, CUDA).

Tolerances: float32 centroids within 1e-6 (sums in another order), 16-bit centroids and restored
rows within one rounding of their dtype (rtol 2^-7 for bfloat16, 2^-10 for float16, plus a tiny
atol); integer outputs (ids, order, counts, groups) exactly equal. Kernel bucket ids must equal
the reference for every token whose float64 margin between best and second-best cross-polytope
vertex exceeds 1e-4 * max|y| in every hash, and such near-ties must be <= 1 % of the tokens
(about 0.3-0.8 % on random data at L = 6, d' = 16; 0.1 % is not reachable with that margin).
"""
import pytest
import torch

from lshsim.dispatch import lsh
from lshsim.dispatch import lsh_fast as fast
from lshsim.dispatch.lsh import LSHConfig, clustered_tokens

RTOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, atol: float = 1e-6) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=RTOL[dtype], atol=atol)


def _tokens(kind: str, n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    if kind == "clustered":
        x = clustered_tokens(n, d, num_clusters=8, noise=0.2, seed=seed)
    else:
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x.to(dtype)


def _group(n: int, groups: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, groups, (n,), generator=torch.Generator().manual_seed(seed))


def _same_compressed(got: lsh.Compressed, ref: lsh.Compressed, dtype: torch.dtype) -> None:
    assert got.num_tokens == ref.num_tokens
    assert got.num_centroids == ref.num_centroids
    assert torch.equal(got.token_to_centroid, ref.token_to_centroid)
    assert torch.equal(got.centroid_group, ref.centroid_group)
    assert torch.equal(got.centroid_count, ref.centroid_count)
    assert got.centroids.dtype == ref.centroids.dtype
    assert _close(got.centroids, ref.centroids, dtype)


def _near_ties(tokens: torch.Tensor, projection: lsh.LSHProjection) -> torch.Tensor:
    """(N,) bool: some hash has a float64 vertex margin <= 1e-4 * max|y| (with the exact,
    rounded projection entries)."""
    num_hashes, proj_dim = projection.config.num_hashes, projection.proj_dim
    y = (tokens.double() @ projection.matrix.double()).reshape(-1, num_hashes, proj_dim)  # (N, L, d')
    vertices = torch.cat([y, -y], dim=2)  # (N, L, 2d')
    top = vertices.topk(2, dim=2).values  # (N, L, 2)
    margin = top[:, :, 0] - top[:, :, 1]  # (N, L)
    scale = y.abs().amax(dim=(1, 2)).clamp(min=1e-300)  # (N,)
    return (margin <= 1e-4 * scale.unsqueeze(1)).any(dim=1)


def _ids_agree(got: torch.Tensor, ref: torch.Tensor, tokens: torch.Tensor, projection) -> None:
    near = _near_ties(tokens.cpu(), _cpu(projection))
    # 1e-4 * max|y| is far above the float32 summation-order error (~1e-6 relative at these
    # sizes); with it about 0.3-0.8 % of random tokens are near-ties at L = 6, d' = 16 (6 hashes
    # of 16 coordinates each), so the bound is 1 %, not 0.1 %
    assert near.double().mean() <= 1e-2, f"{int(near.sum())} near-ties: the test would be vacuous"
    far = ~near
    assert torch.equal(got.cpu()[far], ref.cpu()[far])


def _cpu(projection):
    return lsh.LSHProjection(projection.config, projection.d_model, projection.padded_dim, projection.proj_dim,
                             projection.matrix.cpu(), None, None, None)


# ---- reference helpers (autograd through plain torch) ----------------------------------------
def _segments_reference(group, bucket, valid):
    """dict-based: sorted keys and their rows (stable)."""
    table: dict = {}
    for i in range(group.shape[0]):
        if valid is None or bool(valid[i]):
            table.setdefault((int(group[i]), int(bucket[i])), []).append(i)
    keys = sorted(table)
    return keys, [table[k] for k in keys]


# ---- import and availability ------------------------------------------------------------------
def test_import_and_availability_without_cuda(monkeypatch):
    assert not fast.triton_available("cpu")
    monkeypatch.setenv("LSHSIM_NO_TRITON", "1")
    assert fast._triton() is None
    assert not fast.triton_available("cuda")
    config = LSHConfig(num_hashes=6, proj_dim=16)
    tokens = torch.zeros(4, 32, dtype=torch.bfloat16)
    projection = lsh.make_projection(32, config, dtype=torch.bfloat16)
    assert not fast.kernel_eligible(config, projection, tokens)  # CPU tensors
    assert fast._config_eligible(config, projection, tokens)
    assert not fast._config_eligible(config, projection, tokens.float())
    assert not fast._config_eligible(LSHConfig(num_hashes=6, proj_dim=12), None, tokens)
    big = LSHConfig(num_hashes=9, proj_dim=32)  # L d' = 288 > 256
    assert not fast._config_eligible(big, lsh.make_projection(32, big, dtype=torch.bfloat16), tokens)
    with pytest.raises(RuntimeError):
        fast.token_buckets(tokens, config, projection, force_triton=True)


# ---- torch path against lsh -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("num_hashes,proj_dim,groups", [(1, 2, 1), (3, 4, 5), (6, 16, 16), (2, 1, 3)])
def test_compress_fast_torch_path_matches_compress(dtype, kind, num_hashes, proj_dim, groups):
    tokens = _tokens(kind, 400, 48, dtype)
    group = _group(400, groups)
    config = LSHConfig(num_hashes=num_hashes, proj_dim=proj_dim, seed=3)
    projection = lsh.make_projection(48, config, dtype=dtype)
    ref = lsh.compress(tokens, group, config, projection)
    got = fast.compress_fast(tokens, group, config, projection)
    _same_compressed(got, ref, dtype)
    assert torch.equal(fast.token_buckets(tokens, config, projection), lsh.bucket_ids(tokens, config, projection))
    # default projection (None) is the same one
    _same_compressed(fast.compress_fast(tokens, group, config), lsh.compress(tokens, group, config), dtype)
    # restore_rows == restore(residuals) up to one rounding
    centroid_out = torch.tanh(ref.centroids.float()).to(dtype)
    want = lsh.restore(centroid_out, ref, lsh.residuals(tokens, ref))
    out = fast.restore_rows(centroid_out, got.centroids, tokens, got.token_to_centroid)
    assert out.dtype == dtype and _close(out, want, dtype, atol=2 ** -6 if dtype != torch.float32 else 1e-6)


def test_compress_fast_edge_cases():
    config = LSHConfig(num_hashes=2, proj_dim=4)
    empty = fast.compress_fast(torch.zeros(0, 8), torch.zeros(0, dtype=torch.int64), config)
    assert empty.num_centroids == 0 and empty.num_tokens == 0
    tokens = _tokens("random", 50, 8, torch.float32)
    one_group = torch.zeros(50, dtype=torch.int64)
    _same_compressed(fast.compress_fast(tokens, one_group, config), lsh.compress(tokens, one_group, config),
                     torch.float32)
    same = tokens[:1].expand(50, 8).contiguous()  # every token in one bucket
    got = fast.compress_fast(same, one_group, config)
    assert got.num_centroids == 1 and got.centroid_count.tolist() == [50]
    _same_compressed(got, lsh.compress(same, one_group, config), torch.float32)
    exact = LSHConfig(exact=True)  # falls back to lsh.compress
    _same_compressed(fast.compress_fast(tokens, _group(50, 3), exact), lsh.compress(tokens, _group(50, 3), exact),
                     torch.float32)
    huge = LSHConfig(num_hashes=16, proj_dim=8)  # 16^16 = 2^64 buckets: fallback (dense ids)
    _same_compressed(fast.compress_fast(tokens, _group(50, 3), huge), lsh.compress(tokens, _group(50, 3), huge),
                     torch.float32)
    near_limit = LSHConfig(num_hashes=15, proj_dim=8)  # 2^60 * groups overflows: fallback
    big_group = _group(50, 3) + 20
    _same_compressed(fast.compress_fast(tokens, big_group, near_limit), lsh.compress(tokens, big_group, near_limit),
                     torch.float32)
    with pytest.raises(ValueError):
        fast.compress_fast(tokens, one_group - 1, config)
    bad = tokens.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError):
        fast.compress_fast(bad, one_group, config)


def test_segments_against_python_reference():
    generator = torch.Generator().manual_seed(5)
    for rows, groups, span, with_valid in [(0, 1, 4, False), (1, 1, 1, False), (200, 4, 7, True),
                                           (300, 9, 3, False), (64, 2, 1000, True)]:
        group = torch.randint(0, groups, (rows,), generator=generator)
        bucket = torch.randint(0, span, (rows,), generator=generator)
        valid = torch.rand(rows, generator=generator) < 0.7 if with_valid else None
        seg = fast.segments(group, bucket, valid, span, groups)
        keys, members = _segments_reference(group, bucket, valid)
        num_valid = sum(len(m) for m in members)
        assert seg.num_segments.tolist() == [len(keys)] and seg.num_valid.tolist() == [num_valid]
        assert seg.order[:num_valid].tolist() == [i for m in members for i in m]
        assert sorted(seg.order.tolist()) == list(range(rows))
        expected_seg = [s for s, m in enumerate(members) for _ in m] + [-1] * (rows - num_valid)
        assert seg.seg_of_row.tolist() == expected_seg
        starts = [sum(len(m) for m in members[:s]) for s in range(len(keys))]
        pad = [0] * (rows - len(keys))
        assert seg.seg_start.tolist() == starts + pad
        assert seg.seg_count.tolist() == [len(m) for m in members] + pad
        assert seg.seg_group.tolist() == [k[0] for k in keys] + pad
        per_group = [sum(1 for k in keys if k[0] == g) for g in range(groups)]
        assert seg.segments_per_group(groups).tolist() == per_group
    with pytest.raises(ValueError, match="overflow"):
        fast.segments(torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), None, 2 ** 62, 2)


def _mean_reference(rows, seg):
    """autograd-friendly segment means in float64 (index_add)."""
    num = rows.shape[0]
    target = torch.where(seg.seg_of_row >= 0, seg.seg_of_row, num)
    sums = torch.zeros(num + 1, rows.shape[1], dtype=rows.dtype).index_add(0, target, rows)[:num]
    return sums / seg.seg_count.clamp(min=1).unsqueeze(1).to(rows.dtype)


def _check_mean_and_grads(force_triton: bool, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(7)
    group = torch.randint(0, 3, (120,), generator=generator)
    bucket = torch.randint(0, 5, (120,), generator=generator)
    bucket[:40] = 0  # one large segment (several row blocks)
    group[:40] = 0
    valid = torch.rand(120, generator=generator) < 0.9
    seg = fast.segments(group, bucket, valid, 5, 3)
    x = torch.randn(120, 40, generator=generator, dtype=torch.float64)  # d not a power of two
    rows = x[seg.order].to(dtype).requires_grad_(True)
    out = fast.segment_mean(rows, seg, force_triton=force_triton)
    assert out.dtype == dtype
    want = _mean_reference(rows.detach().double(), seg)
    assert _close(out, want, dtype)
    nseg = int(seg.num_segments)
    assert torch.all(out[nseg:] == 0)
    upstream = torch.randn(120, 40, generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out.double() * upstream).sum(), rows)
    ref_rows = rows.detach().double().requires_grad_(True)
    (want_grad,) = torch.autograd.grad((_mean_reference(ref_rows, seg) * upstream).sum(), ref_rows)
    # two roundings to a 16-bit dtype (the upstream gradient, then the quotient); the CPU
    # interpreter may truncate instead of rounding to nearest, so it gets twice the tolerance
    rtol = RTOL[dtype] * (2 if force_triton and dtype in (torch.bfloat16, torch.float16) else 1)
    assert torch.allclose(grad.double(), want_grad, rtol=rtol, atol=1e-6)


def _check_restore_and_grads(force_triton: bool, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(8)
    tokens = torch.randn(90, 24, generator=generator, dtype=torch.float64)
    group = torch.randint(0, 4, (90,), generator=generator)
    compressed = lsh.compress(tokens, group, LSHConfig(num_hashes=1, proj_dim=2))
    centroid_out = torch.randn(compressed.num_centroids, 24, generator=generator, dtype=torch.float64)
    leaves = [t.to(dtype).requires_grad_(True) for t in (centroid_out, compressed.centroids.detach(), tokens)]
    out = fast.restore_rows(*leaves, compressed.token_to_centroid, force_triton=force_triton)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref_comp = lsh.Compressed(ref_leaves[1], compressed.token_to_centroid, compressed.centroid_group,
                              compressed.centroid_count, compressed.num_tokens)
    want = lsh.restore(ref_leaves[0], ref_comp, lsh.residuals(ref_leaves[2], ref_comp))
    assert out.dtype == dtype and _close(out, want, dtype, atol=1e-6 if dtype == torch.float64 else 2 ** -6)
    upstream = torch.randn(90, 24, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * upstream).sum(), leaves)
    want_grads = torch.autograd.grad((want * upstream).sum(), ref_leaves)
    for got, ref in zip(grads, want_grads):
        assert _close(got, ref, dtype, atol=1e-2 if dtype != torch.float64 else 1e-12)
    # rows with seg_of_row = -1 give 0
    seg = compressed.token_to_centroid.clone()
    seg[:5] = -1
    masked = fast.restore_rows(*(t.detach() for t in leaves), seg, force_triton=force_triton)
    assert torch.all(masked[:5] == 0) and torch.equal(masked[5:], out.detach()[5:])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_segment_mean_torch_path(dtype):
    _check_mean_and_grads(False, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_restore_rows_torch_path(dtype):
    _check_restore_and_grads(False, dtype)


def test_compress_fast_centroid_gradient_matches_compress():
    tokens = _tokens("clustered", 200, 16, torch.float64).requires_grad_(True)
    group = _group(200, 4)
    config = LSHConfig(num_hashes=2, proj_dim=4)
    got = fast.compress_fast(tokens, group, config)
    ref = lsh.compress(tokens, group, config)
    upstream = torch.randn(ref.centroids.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (g1,) = torch.autograd.grad((got.centroids * upstream).sum(), tokens)
    (g2,) = torch.autograd.grad((ref.centroids * upstream).sum(), tokens)
    assert torch.allclose(g1, g2, atol=1e-12)


def test_projection_rounding_keeps_reference_buckets_exact():
    """torch bucket ids (float32 GEMM of exact products) agree with float64 away from near-ties."""
    config = LSHConfig(num_hashes=6, proj_dim=16, seed=1)
    tokens = _tokens("random", 2000, 256, torch.bfloat16)
    projection = lsh.make_projection(256, config, dtype=torch.bfloat16)
    y = tokens.double() @ projection.matrix.double()  # (N, L d') exact values of the products
    codes = y.reshape(-1, 6, 16).abs().argmax(dim=2)
    negative = y.reshape(-1, 6, 16).gather(2, codes.unsqueeze(2)).squeeze(2) < 0
    ids64 = lsh._combine_codes(codes + 16 * negative, 32)
    _ids_agree(fast.token_buckets(tokens, config, projection), ids64, tokens, projection)


# ---- Triton kernels under the CPU interpreter -------------------------------------------------
@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("LSHSIM_NO_TRITON", raising=False)
    pytest.importorskip("triton")
    kernels = fast._kernels()
    assert type(kernels["hash"]).__name__ == "InterpretedFunction"  # the interpreter really runs
    return kernels


def _launched(name: str) -> int:
    return fast.LAUNCHES.get(name, 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_hashes,proj_dim,family", [(6, 16, "cross_polytope"), (3, 4, "cross_polytope"),
                                                        (5, 1, "hyperplane"), (1, 8, "cross_polytope")])
def test_interpreter_hash_and_compress(interpreter, dtype, num_hashes, proj_dim, family):
    config = LSHConfig(family=family, num_hashes=num_hashes, proj_dim=None if family == "hyperplane" else proj_dim,
                       seed=4)
    for kind, rows, d_model in (("random", 300, 72), ("clustered", 130, 64)):
        tokens = _tokens(kind, rows, d_model, dtype)
        projection = lsh.make_projection(d_model, config, dtype=dtype)
        before = _launched("hash")
        ids = fast.token_buckets(tokens, config, projection, force_triton=True)
        assert _launched("hash") == before + 1
        ref_ids = lsh.bucket_ids(tokens, config, projection)
        _ids_agree(ids, ref_ids, tokens, projection)
        group = _group(rows, 5)
        centroid_kernel = "scan_runs" if fast.COMPRESS_CENTROIDS == "scan" else "runs"
        before = _launched(centroid_kernel)
        got = fast.compress_fast(tokens, group, config, projection, force_triton=True)
        assert _launched(centroid_kernel) == before + 1  # one kernel: bookkeeping and centroids
        if torch.equal(ids, ref_ids):  # no near-tie flipped: the whole result is the reference's
            _same_compressed(got, lsh.compress(tokens, group, config, projection), dtype)
        _same_compressed(got, fast.compress_fast(tokens, group, config, projection), dtype)


def test_interpreter_hadamard_and_nonfinite(interpreter):
    config = LSHConfig(rotation="hadamard", rounds=2, num_hashes=2, proj_dim=8)
    tokens = _tokens("random", 100, 48, torch.bfloat16)
    projection = lsh.make_projection(48, config, dtype=torch.bfloat16, dense=True)
    ids = fast.token_buckets(tokens, config, projection, force_triton=True)
    _ids_agree(ids, lsh.bucket_ids(tokens, config, projection), tokens, projection)
    bad = tokens.clone()
    bad[7, 3] = float("inf")
    ids = fast._hash_launch(bad, config, projection)  # the kernel itself: -1, no sync
    assert int(ids[7]) == -1 and torch.all(ids[torch.arange(100) != 7] >= 0)
    # a float32 projection (entries not bfloat16-exact) is detected once, on the host: the kernel
    # declines (None) and the torch path hashes, so the ids are the reference's
    config = LSHConfig(num_hashes=2, proj_dim=8)
    unrounded = lsh.make_projection(48, config)
    assert fast._hash_launch(tokens, config, unrounded) is None
    assert torch.equal(fast.token_buckets(tokens, config, unrounded, force_triton=True),
                       lsh.bucket_ids(tokens, config, unrounded))
    group = _group(100, 3)
    _same_compressed(fast.compress_fast(tokens, group, config, unrounded, force_triton=True),
                     lsh.compress(tokens, group, config, unrounded), torch.bfloat16)


def _segment_kernel(monkeypatch, which: str) -> None:
    """segment means on the mean kernel, the runs kernel (SEGMENT_MEANS_ON_RUNS) or the scan-runs
    kernel (SEGMENT_MEANS_ON_SCAN)"""
    monkeypatch.setattr(fast, "SEGMENT_MEANS_ON_RUNS", which == "runs")
    monkeypatch.setattr(fast, "SEGMENT_MEANS_ON_SCAN", which == "scan")
    monkeypatch.setattr(fast, "SEGMENT_SUMS_ON_SCAN", which == "scan")
    monkeypatch.setattr(fast, "SEGMENT_SCAN_MIN_D_MODEL", 0)


_SEGMENT_KERNELS = pytest.mark.parametrize("which", ["mean", "runs", "scan"])


@_SEGMENT_KERNELS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_interpreter_segment_mean(interpreter, monkeypatch, dtype, which):
    """the mean kernel, or with SEGMENT_MEANS_ON_RUNS for 16-bit rows the runs kernel (keys =
    seg_of_row, one-hot matrix product; float32 rows: the mean kernel), or with
    SEGMENT_MEANS_ON_SCAN the scan-runs kernel (NUMBERED)"""
    _segment_kernel(monkeypatch, which)
    kernel = {"mean": "mean", "runs": "runs" if dtype == torch.bfloat16 else "mean", "scan": "scan_runs"}[which]
    before, expand = _launched(kernel), _launched("expand")
    _check_mean_and_grads(True, dtype)
    assert _launched(kernel) == before + 1
    assert _launched("expand") == expand + 1  # the backward ran as one kernel


def _segments_with_a_long_one(generator, buckets: int, long: int, keep: float):
    """150 rows over 3 groups x `buckets` buckets, the first `long` rows one segment (it crosses row
    blocks), a `keep` share of rows valid: (Segments, valid)."""
    group = torch.randint(0, 3, (150,), generator=generator)
    bucket = torch.randint(0, buckets, (150,), generator=generator)
    group[:long], bucket[:long] = 1, 2
    valid = torch.rand(150, generator=generator) < keep
    return fast.segments(group, bucket, valid, buckets, 3), valid


@pytest.mark.parametrize("rows", [16, 32])
def test_interpreter_segment_means_on_the_runs_kernel(interpreter, monkeypatch, rows):
    """16-bit segment means on the runs kernel (keys = seg_of_row) with small row blocks, so runs
    cross blocks (the tail pass) and dropped rows share a block with valid ones: segment_mean_of
    (tokens read through the order) == segment_mean of the gathered rows bit for bit; both within
    bf16 rounding of the float32 mean kernel and of the float64 means; rows past the segments
    zero (zero_fill) or not written."""
    monkeypatch.setattr(fast, "SEGMENT_MEANS_ON_RUNS", True)
    monkeypatch.setitem(fast.RUNS_LAUNCH, "rows", rows)
    generator = torch.Generator().manual_seed(11)
    seg, valid = _segments_with_a_long_one(generator, buckets=4, long=60, keep=0.8)
    tokens = torch.randn(150, 40, generator=generator).to(torch.bfloat16)
    gathered = tokens[seg.order]
    num = int(seg.num_segments)
    got = fast.segment_mean(gathered, seg, force_triton=True)
    assert torch.all(got[num:] == 0)
    means = fast.segment_mean_of(tokens, seg, seg.order)
    assert torch.equal(means[:num], got[:num])
    want = _mean_reference(gathered.double(), seg)
    assert _close(got[:num], want[:num], torch.bfloat16)
    mean_kernel = fast._mean_launch(gathered, seg, None, 150, zero_fill=True)
    assert _close(got, mean_kernel, torch.bfloat16)
    sevens = torch.full((150, 40), 7.0, dtype=torch.bfloat16)
    out = fast._runs_launch(gathered, seg.seg_of_row, torch.arange(150), 1, 150, numbered=True, out=sevens)[0]
    assert out is sevens and torch.equal(out[:num], got[:num]) and torch.all(out[num:] == 7)


@pytest.mark.parametrize("rows,chunk", [(16, 4), (32, 8), (64, 4)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_interpreter_segment_means_on_the_scan_kernel(interpreter, monkeypatch, rows, chunk, dtype):
    """segment means on the scan-runs kernel (NUMBERED: keys = seg_of_row) with small row blocks and
    chunks, so segments cross blocks (the tail pass) and chunks (the carry), and dropped rows share a
    block and a chunk with valid ones: segment_mean_of (tokens read through the order) ==
    segment_mean of the gathered rows bit for bit; both within rounding of the float64 means and of
    the mean kernel; rows past the segments zero (zero_fill) or not written; the dropped rows' values
    never read (NaN there changes nothing)."""
    _segment_kernel(monkeypatch, "scan")
    monkeypatch.setitem(fast.SCAN_LAUNCH, "rows", rows)
    monkeypatch.setitem(fast.SCAN_LAUNCH, "chunk", chunk)
    generator = torch.Generator().manual_seed(12)
    seg, valid = _segments_with_a_long_one(generator, buckets=4, long=60, keep=0.8)
    tokens = torch.randn(150, 40, generator=generator).to(dtype)
    tokens[~valid] = float("nan")  # dropped rows: never read
    gathered = tokens[seg.order]
    num = int(seg.num_segments)
    before = _launched("scan_runs")
    got = fast.segment_mean(gathered, seg, force_triton=True)
    assert _launched("scan_runs") == before + 1
    assert torch.all(got[num:] == 0) and not torch.isnan(got).any()
    means = fast.segment_mean_of(tokens, seg, seg.order)
    assert torch.equal(means[:num], got[:num])
    want = _mean_reference(gathered.double().nan_to_num(0.0), seg)
    assert _close(got[:num], want[:num], dtype)
    mean_kernel = fast._mean_launch(gathered, seg, None, 150, zero_fill=True)
    assert _close(got, mean_kernel, dtype)
    out = fast._segment_scan_launch(gathered, seg, None, zero_fill=False)
    assert torch.equal(out[:num], got[:num]) and out.shape == (150, 40)


def _check_restore_with_segments(force_triton: bool, dtype: torch.dtype) -> None:
    """restore_rows on rows in segment order: with `segments` (segment-sum backward) == without."""
    generator = torch.Generator().manual_seed(9)
    seg, _ = _segments_with_a_long_one(generator, buckets=6, long=50, keep=0.85)
    num_valid, num_segments = int(seg.num_valid), int(seg.num_segments)
    rows = torch.randn(150, 40, generator=generator).to(dtype)[seg.order][:num_valid]
    centroids = fast.segment_mean(torch.randn(150, 40, generator=generator).to(dtype), seg)[:num_segments]
    centroid_out = torch.randn(num_segments, 40, generator=generator).to(dtype)
    upstream = torch.randn(num_valid, 40, generator=generator)
    results = []
    for segments in (None, seg):
        leaves = [t.detach().clone().requires_grad_(True) for t in (centroid_out, centroids, rows)]
        out = fast.restore_rows(*leaves, seg.seg_of_row[:num_valid], segments=segments, force_triton=force_triton)
        grads = torch.autograd.grad((out.float() * upstream).sum(), leaves)
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert torch.equal(grads_b[1], -grads_b[0])  # -sums (the scan kernel writes them itself)
    for a, b in zip(grads_a, grads_b):
        scale = float(b.double().abs().max())
        assert float((a.double() - b.double()).abs().max()) <= 2 ** -7 * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_restore_rows_with_segments_torch_path(dtype):
    _check_restore_with_segments(False, dtype)


@pytest.mark.parametrize("which", ["mean", "scan"])
def test_interpreter_restore_rows_with_segments(interpreter, monkeypatch, which):
    """the backward's segment sums: the mean kernel (SUM), or the scan-runs kernel (NUMBERED, SUM, NEG)
    over the first N keys of the segmentation"""
    _segment_kernel(monkeypatch, which)
    kernel = "mean" if which == "mean" else "scan_runs"
    before = _launched(kernel)
    _check_restore_with_segments(True, torch.bfloat16)
    assert _launched(kernel) == before + 1  # the backward's segment sums, one launch


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_interpreter_restore_rows(interpreter, dtype):
    before = _launched("restore")
    _check_restore_and_grads(True, dtype)
    assert _launched("restore") == before + 2


# ---- split-K hash, the runs kernel, compress/restore on it (interpreter) ------------------------
@pytest.mark.parametrize("split", [2, 3, 5])
def test_interpreter_split_hash_is_deterministic(interpreter, split):
    """split-K: ids agree with the reference (near-ties aside) and with split 1 on the far tokens,
    are the same on every launch (the last program adds the parts in a fixed order), and the
    arrival counters are back to zero after each launch."""
    config = LSHConfig(num_hashes=6, proj_dim=16, seed=5)
    tokens = _tokens("random", 200, 96, torch.bfloat16, seed=2)
    projection = lsh.make_projection(96, config, dtype=torch.bfloat16)
    launch = {"block_m": 16, "block_k": 16}
    one = fast._hash_launch(tokens, config, projection, split=1, **launch)
    first = fast._hash_launch(tokens, config, projection, split=split, **launch)
    assert torch.all(fast._LOCKS[("cpu", None)] == 0)
    again = fast._hash_launch(tokens, config, projection, split=split, **launch)
    assert torch.equal(first, again)
    ref = lsh.bucket_ids(tokens, config, projection)
    _ids_agree(first, ref, tokens, projection)
    _ids_agree(first, one, tokens, projection)
    # with groups: keys, and -1 for a negative group or one whose key would overflow int64
    group = _group(200, 7)
    span = config.max_buckets(96)
    group[3], group[4] = -1, (2 ** 63 - 2) // span
    keys = fast._hash_launch(tokens, config, projection, group, span, split=split, **launch)
    assert int(keys[3]) == -1 and int(keys[4]) == -1
    ok = torch.ones(200, dtype=torch.bool)
    ok[3:5] = False
    assert torch.equal(keys[ok], (group * span + first)[ok])


def _runs_reference(key: torch.Tensor, order: torch.Tensor, x: torch.Tensor, span: int):
    """float64 run means/sums, token_to_run, run groups and counts of sorted keys (plain torch)."""
    unique, inverse, counts = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
    sums = torch.zeros(unique.shape[0], x.shape[1], dtype=torch.float64).index_add_(0, inverse, x[order].double())
    t2c = torch.empty_like(inverse).index_copy_(0, order, inverse)
    return sums, sums / counts.unsqueeze(1).double(), t2c, unique // span, counts


def _sorted_run_keys(case: str, generator) -> torch.Tensor:
    """203 sorted keys (not a multiple of any rows per program) whose runs are: "runs" random, "one_run"
    one run, "distinct" all of length 1, "long_runs" 1 to 70 rows (several cross one or more blocks)."""
    n = 203
    if case == "runs":
        key = torch.randint(0, 60, (n,), generator=generator)
    elif case == "one_run":
        key = torch.full((n,), 7)
    elif case == "distinct":
        key = torch.randperm(4 * n, generator=generator)[:n]
    else:
        key = torch.repeat_interleave(torch.arange(12), torch.tensor([1, 70, 2, 33, 16, 17, 1, 40, 5, 3, 14, 1]))
    return key.sort().values


@pytest.mark.parametrize("case", ["runs", "one_run", "distinct", "long_runs"])
@pytest.mark.parametrize("rows_per_program,col_groups", [(16, 1), (32, 3)])
def test_interpreter_runs_kernel(interpreter, case, rows_per_program, col_groups):
    generator = torch.Generator().manual_seed(11)
    key = _sorted_run_keys(case, generator)
    n = key.shape[0]
    order = torch.randperm(n, generator=generator)
    x = torch.randn(n, 40, generator=generator).to(torch.bfloat16)  # d not a power of two
    span = 9
    sums, means, t2c, groups, counts = _runs_reference(key, order, x, span)
    runs = counts.shape[0]
    out, neg, ints = fast._runs_launch(x, key, order, span, n, index=True, rows=rows_per_program, block_d=16,
                                       col_groups=col_groups)
    assert ints[3 * n:].tolist() == [runs, int(key[0]), int(key[-1])]
    assert torch.equal(ints[:n], t2c)
    assert torch.equal(ints[n:n + runs], groups) and torch.equal(ints[2 * n:2 * n + runs], counts)
    assert neg is None and _close(out[:runs], means, torch.bfloat16, atol=1e-6)
    out, neg, ints = fast._runs_launch(x, key, order, span, runs, total=True, negate=True, rows=rows_per_program,
                                       block_d=16, col_groups=col_groups)
    assert ints is None and out.shape == (runs, 40)
    assert _close(out, sums, torch.bfloat16, atol=1e-5) and torch.equal(neg, -out)
    # the run starts as int8 flags (the rank kernel's) count the earlier runs instead of the keys
    flags = torch.ones(n, dtype=torch.int8)
    flags[1:] = (key[1:] != key[:-1]).to(torch.int8)
    flagged, _, flagged_ints = fast._runs_launch(x, key, order, span, n, index=True, flags=flags,
                                                 rows=rows_per_program, block_d=16, col_groups=col_groups, prefix=32)
    plain, _, plain_ints = fast._runs_launch(x, key, order, span, n, index=True, rows=rows_per_program, block_d=16,
                                             col_groups=col_groups, prefix=32)
    def valid(i):  # rows past the number of runs are not written
        return torch.cat([i[:n], i[n:n + runs], i[2 * n:2 * n + runs], i[3 * n:]])
    assert torch.equal(valid(flagged_ints), valid(plain_ints)) and torch.equal(flagged[:runs], plain[:runs])
    for _ in range(2):  # the look-back counts (two launches: the second sees the first's entries, older epoch)
        looked, _, looked_ints = fast._runs_launch(x, key, order, span, n, index=True, rows=rows_per_program,
                                                   block_d=16, col_groups=col_groups, prefix=32, lookback=True)
        assert torch.equal(valid(looked_ints), valid(plain_ints)) and torch.equal(looked[:runs], plain[:runs])
        # every program took one ticket (the virtual id that makes the wait independent of start order)
        buffer, _, tickets = fast._LOOKBACK[(x.device.type, x.device.index)]
        assert int(buffer[0]) == tickets


@pytest.mark.parametrize("case", ["runs", "one_run", "distinct", "long_runs"])
@pytest.mark.parametrize("rows,chunk,block_d,lookback", [(16, 4, 16, False), (32, 8, 32, True), (64, 2, 64, True)])
def test_interpreter_scan_runs_kernel(interpreter, case, rows, chunk, block_d, lookback):
    """the scan-runs kernel (compress's centroids): the runs kernel's integers (token_to_run, groups,
    counts, stats) and float64 means within bf16 rounding, with runs that cross one or more blocks
    and chunks, column groups that do not divide d, with and without the look-back."""
    generator = torch.Generator().manual_seed(12)
    key = _sorted_run_keys(case, generator)
    n = key.shape[0]
    order = torch.randperm(n, generator=generator)
    x = torch.randn(n, 40, generator=generator).to(torch.bfloat16)
    span = 9
    _, means, t2c, groups, counts = _runs_reference(key, order, x, span)
    runs = counts.shape[0]
    before = _launched("scan_runs")
    for _ in range(2):  # with the look-back: two launches (the second sees the first's entries)
        out, ints = fast._scan_runs_launch(x, key, order, span, n, rows=rows, chunk=chunk, block_d=block_d,
                                           lookback=lookback, prefix=4, num_warps=4, num_stages=3)
        assert ints[3 * n:].tolist() == [runs, int(key[0]), int(key[-1])]
        assert torch.equal(ints[:n], t2c)
        assert torch.equal(ints[n:n + runs], groups) and torch.equal(ints[2 * n:2 * n + runs], counts)
        assert _close(out[:runs], means, torch.bfloat16, atol=1e-6)
    assert _launched("scan_runs") == before + 2


@pytest.mark.parametrize("kind", ["scan", "runs"])
def test_interpreter_compress_centroid_kernels(interpreter, monkeypatch, kind):
    """compress_fast with either centroid kernel (the scan-runs kernel, the default, or the runs
    kernel): the reference's result, and the same integers from both."""
    monkeypatch.setattr(fast, "COMPRESS_CENTROIDS", kind)
    config = LSHConfig(num_hashes=2, proj_dim=4, seed=6)
    tokens = _tokens("clustered", 300, 48, torch.bfloat16, seed=7)
    group = _group(300, 3)
    projection = lsh.make_projection(48, config, dtype=torch.bfloat16)
    name = "scan_runs" if kind == "scan" else "runs"
    before = _launched(name)
    got = fast.compress_fast(tokens, group, config, projection, force_triton=True)
    assert _launched(name) == before + 1
    assert got.num_centroids < 300  # runs of several tokens
    ids = fast.token_buckets(tokens, config, projection, force_triton=True)
    if torch.equal(ids, lsh.bucket_ids(tokens, config, projection)):
        _same_compressed(got, lsh.compress(tokens, group, config, projection), torch.bfloat16)


@pytest.mark.parametrize("sort_chunk,flags", [(0, False), (0, True), (16, False), (64, False), (None, False)])
def test_interpreter_compress_sort_paths(interpreter, monkeypatch, sort_chunk, flags):
    """the rank kernel (sort_chunk 0: all-pairs positions and run starts, tiles that do not divide
    N), packed keys sorted in rows of sort_chunk + the merge kernel (several rows, padding), and the
    plain torch.sort path: the same sorted keys, order and result as the reference."""
    monkeypatch.setitem(fast.SORT_LAUNCH, "sort_chunk", sort_chunk)
    monkeypatch.setitem(fast.SORT_LAUNCH, "block", 32)
    monkeypatch.setitem(fast.SORT_LAUNCH, "block_t", 16)
    monkeypatch.setitem(fast.SORT_LAUNCH, "block_c", 64)
    monkeypatch.setitem(fast.SORT_LAUNCH, "flags", flags)
    config = LSHConfig(num_hashes=3, proj_dim=4, seed=6)
    tokens = _tokens("clustered", 203, 32, torch.bfloat16, seed=5)  # 203: the last row is padded
    group = _group(203, 3)
    projection = lsh.make_projection(32, config, dtype=torch.bfloat16)
    before, before_rank = _launched("merge"), _launched("rank")
    got = fast.compress_fast(tokens, group, config, projection, force_triton=True)
    assert _launched("merge") == before + bool(sort_chunk)
    assert _launched("rank") == before_rank + (sort_chunk == 0)
    span = config.max_buckets(32)
    key = group * span + fast.token_buckets(tokens, config, projection, force_triton=True)
    want_key, want_order = torch.sort(key, stable=True)
    assert torch.equal(got.sorted_key, want_key) and torch.equal(got.order, want_order)
    if flags:
        starts = torch.ones(203, dtype=torch.int8)
        starts[1:] = (want_key[1:] != want_key[:-1]).to(torch.int8)
        assert torch.equal(got.run_start, starts)
    else:
        assert got.run_start is None
    ids = fast.token_buckets(tokens, config, projection, force_triton=True)
    if torch.equal(ids, lsh.bucket_ids(tokens, config, projection)):
        _same_compressed(got, lsh.compress(tokens, group, config, projection), torch.bfloat16)


@pytest.mark.parametrize("on_scan", [False, True], ids=["runs-bwd", "scan-bwd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_interpreter_compress_gradients_and_restore(interpreter, monkeypatch, dtype, on_scan):
    """compress_fast's kernel path: the reference's result; centroid gradient (one expand pass) and
    restore_rows(compressed=...) (runs-kernel or, RESTORE_BACKWARD_ON_SCAN, scan-runs-kernel
    backward) equal the float64 reference."""
    monkeypatch.setattr(fast, "RESTORE_BACKWARD_ON_SCAN", on_scan)
    bwd_kernel = "scan_runs" if on_scan else "runs"
    config = LSHConfig(num_hashes=2, proj_dim=4, seed=1)
    tokens = _tokens("clustered", 150, 32, dtype, seed=4)
    group = _group(150, 4)
    projection = lsh.make_projection(32, config, dtype=dtype)
    leaf = tokens.clone().requires_grad_(True)
    got = fast.compress_fast(leaf, group, config, projection, force_triton=True)
    assert isinstance(got, fast.SortedCompressed)
    ids = fast.token_buckets(tokens, config, projection, force_triton=True)
    if torch.equal(ids, lsh.bucket_ids(tokens, config, projection)):
        _same_compressed(got, lsh.compress(tokens, group, config, projection), dtype)
    assert got.centroid_count.sum() == 150 and torch.all(got.centroid_count >= 1)
    upstream = torch.randn(got.centroids.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    before = _launched("expand")
    (grad,) = torch.autograd.grad((got.centroids.double() * upstream).sum(), leaf)
    assert _launched("expand") == before + 1
    want = (upstream / got.centroid_count.unsqueeze(1).double())[got.token_to_centroid]  # d mean / d token
    assert torch.allclose(grad.double(), want, rtol=2 * RTOL[dtype], atol=1e-6)
    # restore with the compressed (runs-kernel backward) == without (torch scatter-add backward)
    centroid_out = torch.tanh(got.centroids.detach().float()).to(dtype)
    upstream = torch.randn(150, 32, generator=torch.Generator().manual_seed(4))
    results = []
    for compressed in (None, got):
        leaves = [t.detach().clone().requires_grad_(True) for t in (centroid_out, got.centroids, tokens)]
        before = _launched(bwd_kernel)
        out = fast.restore_rows(*leaves, got.token_to_centroid, compressed=compressed, force_triton=True)
        grads = torch.autograd.grad((out.float() * upstream).sum(), leaves)
        assert _launched(bwd_kernel) == before + (compressed is not None)
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert torch.equal(grads_b[1], -grads_b[0])
    for a, b in zip(grads_a, grads_b):
        assert float((a.double() - b.double()).abs().max()) <= RTOL[dtype] * float(b.double().abs().max())
    with pytest.raises(ValueError):  # a compressed that does not match seg_of_row
        fast.restore_rows(centroid_out, got.centroids, tokens, got.token_to_centroid.clone(), compressed=got)


def test_interpreter_compress_fallbacks(interpreter):
    """negative groups and keys that would overflow: the kernel marks them, compress falls back."""
    config = LSHConfig(num_hashes=2, proj_dim=8)
    tokens = _tokens("random", 64, 32, torch.bfloat16)
    projection = lsh.make_projection(32, config, dtype=torch.bfloat16)
    group = _group(64, 3)
    with pytest.raises(ValueError):
        fast.compress_fast(tokens, group - 1, config, projection, force_triton=True)
    big = group + (2 ** 63 - 2) // config.max_buckets(32)  # keys overflow int64: lsh.compress's unique rows
    got = fast.compress_fast(tokens, big, config, projection, force_triton=True)
    assert not isinstance(got, fast.SortedCompressed)
    _same_compressed(got, lsh.compress(tokens, big, config, projection), torch.bfloat16)


# ---- CUDA (run on the GPU machine) ------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("rows,d_model", [(8192, 4096), (1000, 512)])
def test_cuda_kernels_match_torch_path(monkeypatch, rows, d_model):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("LSHSIM_NO_TRITON", raising=False)
    device = torch.device("cuda")
    config = LSHConfig(num_hashes=6, proj_dim=16, seed=0)
    tokens = clustered_tokens(rows, d_model, num_clusters=64, noise=0.3, seed=0).to(device, torch.bfloat16)
    random_tokens = torch.randn(rows, d_model, generator=torch.Generator().manual_seed(3)).to(device, torch.bfloat16)
    group = _group(rows, 16).to(device)
    projection = lsh.make_projection(d_model, config, device=device, dtype=torch.bfloat16)
    assert fast.triton_available(device) and fast.kernel_eligible(config, projection, tokens)
    for x in (random_tokens, tokens):
        ids = fast.token_buckets(x, config, projection)
        _ids_agree(ids, lsh.bucket_ids(x, config, projection), x, projection)
    for split in (1, 2, 4):  # split-K: the same keys on every launch, near-ties aside the split-1 keys
        keys = [fast._hash_launch(random_tokens, config, projection, split=split) for _ in range(3)]
        assert torch.equal(keys[0], keys[1]) and torch.equal(keys[0], keys[2])
        _ids_agree(keys[0], lsh.bucket_ids(random_tokens, config, projection), random_tokens, projection)
    assert all(int(locks.abs().sum()) == 0 for locks in fast._LOCKS.values())  # counters reset
    launches = dict(fast.LAUNCHES)
    got = fast.compress_fast(tokens, group, config, projection)
    assert fast.LAUNCHES["hash"] == launches.get("hash", 0) + 1
    centroid_kernel = "scan_runs" if fast.COMPRESS_CENTROIDS == "scan" else "runs"
    assert fast.LAUNCHES[centroid_kernel] == launches.get(centroid_kernel, 0) + 1
    assert isinstance(got, fast.SortedCompressed)
    # either centroid kernel: its look-back (several launches: epochs) gives the result without it,
    # bit for bit; the two kernels give the same integers and centroids within bf16 rounding
    results, default = {}, fast.COMPRESS_CENTROIDS
    for kind, table in (("scan", fast.SCAN_LAUNCH), ("runs", fast.RUNS_LAUNCH)):
        monkeypatch.setattr(fast, "COMPRESS_CENTROIDS", kind)
        monkeypatch.setitem(table, "lookback", False)
        plain = fast.compress_fast(tokens, group, config, projection)
        monkeypatch.setitem(table, "lookback", True)
        for _ in range(3):
            again = fast.compress_fast(tokens, group, config, projection)
            for name in ("centroids", "token_to_centroid", "centroid_group", "centroid_count", "sorted_key",
                         "order"):
                assert torch.equal(getattr(again, name), getattr(plain, name)), (kind, name)
        monkeypatch.delitem(table, "lookback")
        results[kind] = plain
    monkeypatch.setattr(fast, "COMPRESS_CENTROIDS", default)
    _same_compressed(results["scan"], results["runs"], torch.bfloat16)
    want_key, want_order = torch.sort(group * config.max_buckets(d_model) + fast.token_buckets(tokens, config,
                                                                                                projection), stable=True)
    assert torch.equal(got.sorted_key, want_key) and torch.equal(got.order, want_order)
    ids = fast.token_buckets(tokens, config, projection)
    if torch.equal(ids, lsh.bucket_ids(tokens, config, projection)):
        _same_compressed(got, lsh.compress(tokens, group, config, projection), torch.bfloat16)
    monkeypatch.setenv("LSHSIM_NO_TRITON", "1")
    torch_path = fast.compress_fast(tokens, group, config, projection)
    monkeypatch.delenv("LSHSIM_NO_TRITON")
    if torch.equal(got.token_to_centroid, torch_path.token_to_centroid):
        _same_compressed(got, torch_path, torch.bfloat16)
    # segment_mean and restore_rows, with gradients, against the torch path
    seg = fast.segments(group, ids, None, config.max_buckets(d_model), 16)
    rows_sorted = tokens[seg.order].requires_grad_(True)
    out = fast.segment_mean(rows_sorted, seg)
    upstream = torch.randn(out.shape, device=device, dtype=torch.float32)
    (grad,) = torch.autograd.grad((out.float() * upstream).sum(), rows_sorted)
    monkeypatch.setenv("LSHSIM_NO_TRITON", "1")
    rows_ref = rows_sorted.detach().requires_grad_(True)
    want = fast.segment_mean(rows_ref, seg)
    (want_grad,) = torch.autograd.grad((want.float() * upstream).sum(), rows_ref)
    monkeypatch.delenv("LSHSIM_NO_TRITON")
    assert _close(out, want, torch.bfloat16) and _close(grad, want_grad, torch.bfloat16)
    centroid_out = torch.tanh(got.centroids.float()).to(torch.bfloat16)
    # restore's backward through the runs kernel (compressed=got) equals the scatter-add one
    for compressed in (got, None):
        leaves = [t.detach().clone().requires_grad_(True) for t in (centroid_out, got.centroids, tokens)]
        restored = fast.restore_rows(*leaves, got.token_to_centroid, compressed=compressed)
        grads = torch.autograd.grad((restored.float() * upstream).sum(), leaves)
        if compressed is not None:
            grads_runs = grads
    for a, b in zip(grads_runs, grads):
        assert float((a.double() - b.double()).abs().max()) <= 2 ** -7 * float(b.double().abs().max())
    # d centroids / d tokens: one expand pass == grad / count of the token's centroid
    leaf = tokens.clone().requires_grad_(True)
    again = fast.compress_fast(leaf, group, config, projection)
    grad_c = torch.randn(again.centroids.shape, device=device)
    (grad_tokens,) = torch.autograd.grad((again.centroids.float() * grad_c).sum(), leaf)
    want_tokens = (grad_c / again.centroid_count.unsqueeze(1).float())[again.token_to_centroid]
    assert _close(grad_tokens, want_tokens, torch.bfloat16, atol=1e-6)
    leaves = [t.detach().requires_grad_(True) for t in (centroid_out, got.centroids, tokens)]
    restored = fast.restore_rows(*leaves, got.token_to_centroid)
    reference = lsh.restore(centroid_out, got, lsh.residuals(tokens, got))
    assert _close(restored, reference, torch.bfloat16, atol=2 ** -6)
    grads = torch.autograd.grad((restored.float() * upstream).sum(), leaves)
    ref_leaves = [t.detach().float().requires_grad_(True) for t in leaves]
    ref_out = ref_leaves[0][got.token_to_centroid] - ref_leaves[1][got.token_to_centroid] + ref_leaves[2]
    want_grads = torch.autograd.grad((ref_out * upstream).sum(), ref_leaves)
    for name, g, w in zip(("centroid_out", "centroids", "rows"), grads, want_grads):
        # bf16 gradients of bf16 tensors against float32 ones: within bf16 rounding of the
        # largest entry (the segment sums round once; 2^-7 of the scale)
        scale = float(w.abs().max())
        error = float((g.double() - w.double()).abs().max())
        assert error <= 2 ** -7 * scale, (name, error, scale)


@pytest.mark.gpu
def test_cuda_compress_graph_equals_compress_fast(monkeypatch):
    """CompressGraph (compress's three launches as one CUDA graph, the centroid kernel without the
    look-back) gives compress_fast's result for the values its tensors hold at each call: the rank
    path (8,192 tokens) and the torch.sort + merge path (20,000)."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("LSHSIM_NO_TRITON", raising=False)
    device = torch.device("cuda")
    config = LSHConfig(num_hashes=6, proj_dim=16, seed=0)
    projection = lsh.make_projection(1024, config, device=device, dtype=torch.bfloat16)
    for rows in (8192, 20000):
        tokens = clustered_tokens(rows, 1024, num_clusters=64, noise=0.3, seed=0).to(device, torch.bfloat16)
        group = _group(rows, 16).to(device)
        graph = fast.CompressGraph(tokens, group, config, projection)
        for step in range(2):  # new values written into the same tensors: the graph reads them
            want = fast.compress_fast(tokens, group, config, projection)
            got = graph()
            assert isinstance(got, fast.SortedCompressed)
            for name in ("sorted_key", "order"):
                assert torch.equal(getattr(got, name), getattr(want, name)), name
            _same_compressed(got, want, torch.bfloat16)
            tokens.copy_(clustered_tokens(rows, 1024, num_clusters=64, noise=0.3, seed=step + 1).to(device,
                                                                                                    torch.bfloat16))
            group.copy_(_group(rows, 16, seed=step + 2).to(device))


def test_compress_graph_needs_the_cuda_kernels():
    config = LSHConfig(num_hashes=2, proj_dim=4, seed=0)
    tokens = _tokens("random", 40, 16, torch.bfloat16)
    with pytest.raises(ValueError):
        fast.CompressGraph(tokens, _group(40, 3), config)


# ---- the layer's choice segments: four kernels against the torch segments ---------------------
def _choice_reference(expert_index, kept, bucket, position, span, num_groups):
    """gate_graph's torch bookkeeping: segments + inverse + token of row + segments per group."""
    num_tokens, k = expert_index.shape
    flat_position = position[expert_index.clamp(min=0)].reshape(-1)
    device = expert_index.device
    bucket_of_choice = torch.arange(num_tokens * k, device=device) if bucket is None else bucket.repeat_interleave(k)
    segs = fast.segments(flat_position, bucket_of_choice, kept.reshape(-1), span, num_groups)
    inv = torch.empty_like(segs.order)
    inv[segs.order] = torch.arange(segs.order.numel(), device=device)
    counts = segs.segments_per_group(num_groups)
    return torch.cat([segs.order, inv, torch.div(segs.order, k, rounding_mode="floor"), segs.seg_of_row,
                      segs.seg_start, segs.seg_count, segs.seg_group, counts, segs.num_segments.reshape(1),
                      segs.num_valid.reshape(1)])


def _choice_case(num_tokens, k, experts, span, drop, seed, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    expert_index = torch.randint(0, experts, (num_tokens, k), generator=generator)
    kept = torch.rand(num_tokens, k, generator=generator) >= drop
    expert_index[~kept & (torch.rand(num_tokens, k, generator=generator) < 0.5)] = -1  # dropped: -1 or an expert
    bucket = torch.randint(0, span, (num_tokens,), generator=generator)
    position = torch.randperm(experts, generator=generator)
    return [t.to(device) for t in (expert_index, kept, bucket, position)]


@pytest.mark.parametrize("num_tokens,k,experts,span,drop,sort_chunk", [
    (101, 2, 8, 16, 0.2, 0), (101, 2, 8, 16, 0.2, 32), (64, 1, 4, 5, 0.0, 16), (150, 3, 6, 7, 1.0, 64),
    (97, 2, 3, 1 << 20, 0.1, None)])
@pytest.mark.parametrize("runs_block", [64, 1024], ids=["grid-of-blocks", "one-block"])
def test_interpreter_choice_segments(interpreter, monkeypatch, num_tokens, k, experts, span, drop, sort_chunk,
                                     runs_block):
    """choice_segments (keys, rank or sort rows + merge, then the run numbering: a grid of programs
    (choice_runs: each counts the run starts before its block in chunks of 16 keys, then
    choice_counts) with blocks that do not divide M, or one block holding every row) == the torch segments the
    layer used, every integer equal; with and without buckets (the finest resolution), all choices
    dropped, a span near the packing limit."""
    monkeypatch.setattr(fast, "CHOICE_RUNS_BLOCK", runs_block)
    monkeypatch.setattr(fast, "CHOICE_RUNS_PREFIX", 16)
    if sort_chunk is not None:
        monkeypatch.setitem(fast.SORT_LAUNCH, "sort_chunk", sort_chunk)
        monkeypatch.setitem(fast.SORT_LAUNCH, "block", 32)
        monkeypatch.setitem(fast.SORT_LAUNCH, "block_t", 16)
        monkeypatch.setitem(fast.SORT_LAUNCH, "block_c", 64)
    expert_index, kept, bucket, position = _choice_case(num_tokens, k, experts, span, drop, seed=num_tokens + k)
    for b, s in ((bucket, span), (None, num_tokens * k)):
        assert fast.choice_segments_eligible(num_tokens * k, experts, s, torch.device("cpu"), force_triton=True)
        got = fast.choice_segments(expert_index, kept, b, position, s, experts, force_triton=True)
        want = _choice_reference(expert_index, kept, b, position, s, experts)
        assert torch.equal(got, want)


def test_choice_segments_eligibility():
    """not eligible without Triton on the device, with no rows, or when packed keys would overflow"""
    cpu = torch.device("cpu")
    assert not fast.choice_segments_eligible(16, 8, 16, cpu)  # CPU, not forced
    assert not fast.choice_segments_eligible(0, 8, 16, cpu, force_triton=True)
    assert not fast.choice_segments_eligible(1 << 15, 256, 1 << 40, cpu, force_triton=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_tokens,k,experts,span", [(8192, 2, 8, 4096), (4096, 8, 256, 1 << 30),
                                                       (16384, 2, 8, 4096), (3000, 2, 8, 4096)])
def test_cuda_choice_segments(num_tokens, k, experts, span):
    """the kernels on the GPU (rank path at <= 8,192 rows, sort rows + merge above) == torch"""
    if not fast.triton_available("cuda"):
        pytest.skip("triton not available")
    expert_index, kept, bucket, position = _choice_case(num_tokens, k, experts, span, 0.1, seed=3, device="cuda")
    got = fast.choice_segments(expert_index, kept, bucket, position, span, experts)
    want = _choice_reference(expert_index, kept, bucket, position, span, experts)
    assert torch.equal(got, want)


@_SEGMENT_KERNELS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_interpreter_segment_mean_of_tokens(interpreter, monkeypatch, dtype, which):
    """segment_mean_of (the mean or runs kernel reading the tokens through the token of each sorted
    row) == segment_mean of the gathered rows, bit for bit on the segments; centroids_of has its
    gradient"""
    _segment_kernel(monkeypatch, which)
    expert_index, kept, bucket, position = _choice_case(90, 2, 4, 6, 0.2, seed=4)
    flat = fast.choice_segments(expert_index, kept, bucket, position, 6, 4, force_triton=True)
    rows = 180
    order, token_of_row = flat[:rows], flat[2 * rows:3 * rows]
    seg = fast.Segments(order=order, seg_of_row=flat[3 * rows:4 * rows], seg_start=flat[4 * rows:5 * rows],
                        seg_count=flat[5 * rows:6 * rows], seg_group=flat[6 * rows:7 * rows],
                        num_segments=flat[-2:-1], num_valid=flat[-1:])
    tokens = torch.randn(90, 40, generator=torch.Generator().manual_seed(2)).to(dtype)
    send = tokens.index_select(0, token_of_row).requires_grad_(True)
    want = fast.segment_mean(send, seg, force_triton=True)
    means = fast.segment_mean_of(tokens, seg, token_of_row)
    num = int(seg.num_segments[0])
    assert torch.equal(means[:num], want[:num].detach())
    got = fast.centroids_of(send, means, seg)
    grad = torch.randn(rows, 40, generator=torch.Generator().manual_seed(3)).to(dtype)
    (g_want,) = torch.autograd.grad(want, send, grad)
    (g_got,) = torch.autograd.grad(got, send, grad)
    assert torch.equal(g_got, g_want)


# ---- the layer's centroids and restore reading the tokens through the token of each row ----------
def _tokens_case(num_tokens, k, experts, span, drop, seed, d_model, dtype, force_triton):
    """A choice segmentation (the layer's: T k sorted rows, the kept first) and tokens, centroid
    outputs and gradients on it."""
    expert_index, kept, bucket, position = _choice_case(num_tokens, k, experts, span, drop, seed=seed)
    rows = num_tokens * k
    if force_triton:
        flat = fast.choice_segments(expert_index, kept, bucket, position, span, experts, force_triton=True)
    else:
        flat = _choice_reference(expert_index, kept, bucket, position, span, experts)
    order, inv, token_of_row = flat[:rows], flat[rows:2 * rows], flat[2 * rows:3 * rows]
    seg = fast.Segments(order=order, seg_of_row=flat[3 * rows:4 * rows], seg_start=flat[4 * rows:5 * rows],
                        seg_count=flat[5 * rows:6 * rows], seg_group=flat[6 * rows:7 * rows],
                        num_segments=flat[-2:-1], num_valid=flat[-1:])
    generator = torch.Generator().manual_seed(seed + 100)
    tokens = torch.randn(num_tokens, d_model, generator=generator).to(dtype)
    num_segments, num_kept = int(seg.num_segments[0]), int(seg.num_valid[0])
    centroid_out = torch.randn(num_segments, d_model, generator=generator).to(dtype)
    upstream = torch.randn(num_kept, d_model, generator=generator)  # the restored rows' gradient
    upstream_c = torch.randn(rows, d_model, generator=generator)  # a direct gradient of the centroids
    return seg, inv, token_of_row, tokens, centroid_out, upstream, upstream_c


def _gathered_and_tokens(case, k, force_triton):
    """(gathered, from tokens, from tokens with PendingRows): each (restored rows, centroids, grads of
    (tokens, centroid_out)); the gathered one is the layer's previous composition: gather_choices,
    centroids_of, restore_rows."""
    from lshsim.executor.moe_ops import gather_choices

    seg, inv, token_of_row, tokens, centroid_out, upstream, upstream_c = case
    num_segments, num_kept = centroid_out.shape[0], upstream.shape[0]
    if force_triton:
        means = fast.segment_mean_of(tokens, seg, token_of_row)
    else:
        means = fast.segment_mean(tokens.index_select(0, token_of_row), seg, zero_fill=False)
    results = []
    for variant in ("gathered", "tokens", "pending"):
        x = tokens.detach().clone().requires_grad_(True)
        cout = centroid_out.detach().clone().requires_grad_(True)
        if variant == "gathered":
            send = gather_choices(x, seg.order, inv, k, token_of_row)
            centroids = (fast.centroids_of(send, means, seg) if force_triton
                         else fast.segment_mean(send, seg, zero_fill=False))
            out = fast.restore_rows(cout, centroids[:num_segments], send[:num_kept], seg.seg_of_row[:num_kept],
                                    segments=seg, force_triton=force_triton)
        else:
            pending = fast.PendingRows() if variant == "pending" else None
            centroids = fast.centroids_of_tokens(x, means, seg, inv, k, pending=pending, force_triton=force_triton)
            out = fast.restore_tokens(cout, centroids[:num_segments], x, token_of_row[:num_kept],
                                      seg.seg_of_row[:num_kept], inv, k, segments=seg, pending=pending,
                                      force_triton=force_triton)
            assert pending is None or pending.rows is None
        live = (torch.arange(centroids.shape[0]) < num_segments).unsqueeze(1)
        loss = (out.float() * upstream).sum() + (torch.where(live, centroids.float(), 0) * upstream_c).sum()
        grads = torch.autograd.grad(loss, (x, cout))
        results.append((out, centroids[:num_segments], grads))
    return results


def _check_tokens_nodes(force_triton, dtype, num_tokens=90, k=2, experts=4, span=6, drop=0.2, seed=4, d_model=40):
    """restore_tokens and centroids_of_tokens (x read through the token of each row) against the
    gathered rows: restored rows, centroids and centroid_out's gradient bit-equal; the tokens' gradient
    within three roundings of the dtype of the float64 sum of the same terms, relative to the sum of
    their magnitudes (the gathered path rounds each row's two terms' sum and the token's sum; the new
    one each node's per-token sum and autograd's sum of the two nodes': 3 * 2^-8 for bfloat16,
    3 * 2^-11 for float16, 1e-6 for float32; twice that under the Triton interpreter, whose casts to
    bfloat16 truncate instead of rounding to nearest), and a token without a kept choice gets 0."""
    case = _tokens_case(num_tokens, k, experts, span, drop, seed, d_model, dtype, force_triton)
    seg, inv, token_of_row, tokens, centroid_out, upstream, upstream_c = case
    (out_a, cent_a, grads_a), (out_b, cent_b, grads_b), (out_p, cent_p, grads_p) = \
        _gathered_and_tokens(case, k, force_triton)
    assert torch.equal(out_a, out_b) and torch.equal(cent_a, cent_b) and torch.equal(out_a, out_p)
    assert torch.equal(grads_a[1], grads_b[1]) and torch.equal(grads_a[1], grads_p[1])
    # with PendingRows the tokens' gradient is the gathered path's, bit for bit (the interpreter's
    # bfloat16 casts truncate where torch's add rounds: there within the tolerance below)
    if not (force_triton and dtype == torch.bfloat16):
        assert torch.equal(grads_p[0], grads_a[0])
    # the tokens' gradient, float64, from its terms: restored row r's gradient and the centroid
    # gradient of r's segment / its count rounded to dtype (as the expand kernel rounds it)
    num_kept, rows = upstream.shape[0], num_tokens * k
    seg_of_row, count = seg.seg_of_row, seg.seg_count
    grad_c = upstream_c.to(dtype).double()  # the centroids' gradient, as autograd hands it over
    grad_c[:centroid_out.shape[0]] -= grads_b[1].double()  # restore's -sums into the centroids
    grad_c = grad_c.to(dtype)
    term_c = torch.zeros(rows, d_model, dtype=torch.float64)
    valid = seg_of_row >= 0
    term_c[valid] = (grad_c.float()[seg_of_row[valid]] / count[seg_of_row[valid]].unsqueeze(1).float()
                     ).to(dtype).double()
    term_r = torch.zeros(rows, d_model, dtype=torch.float64)
    term_r[:num_kept] = upstream.to(dtype).double()
    per_choice = (term_c + term_r).index_select(0, inv).reshape(num_tokens, k, d_model)
    want = per_choice.sum(1)
    magnitude = (term_c.abs() + term_r.abs()).index_select(0, inv).reshape(num_tokens, k, d_model).sum(1)
    tol = {torch.bfloat16: 3 * 2 ** -8, torch.float16: 3 * 2 ** -11, torch.float32: 1e-6}[dtype]
    tol *= 2 if force_triton else 1
    for got in (grads_a[0], grads_b[0], grads_p[0]):
        assert bool(((got.double() - want).abs() <= tol * magnitude + 1e-12).all())
    dropped = (inv.reshape(num_tokens, k) >= num_kept).all(dim=1)  # tokens with no kept choice: gradient 0
    assert bool(dropped.any()) or drop < 0.5  # at drop 0.5 and k 3 about one token in 8 keeps no choice
    assert not bool(grads_b[0][dropped].any())
    return grads_b


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k,drop", [(2, 0.2), (1, 0.0), (3, 0.5)])
def test_restore_and_centroids_of_tokens_torch_path(dtype, k, drop):
    _check_tokens_nodes(False, dtype, k=k, drop=drop)


def test_restore_and_centroids_of_tokens_check_their_inputs():
    case = _tokens_case(20, 2, 4, 6, 0.2, 1, 8, torch.float32, False)
    seg, inv, token_of_row, tokens, centroid_out, upstream, _ = case
    num_kept = upstream.shape[0]
    means = fast.segment_mean(tokens.index_select(0, token_of_row), seg)
    with pytest.raises(ValueError, match="inv must be"):
        fast.centroids_of_tokens(tokens.requires_grad_(True), means, seg, inv[:-1], 2)
    with pytest.raises(ValueError, match="inv must be"):
        fast.restore_tokens(centroid_out, centroid_out, tokens, token_of_row[:num_kept], seg.seg_of_row[:num_kept],
                            inv, 3)
    with pytest.raises(ValueError, match="token_of_row and seg_of_row"):
        fast.restore_tokens(centroid_out, centroid_out, tokens, token_of_row[:num_kept - 1], seg.seg_of_row[:num_kept],
                            inv, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("which", ["mean", "scan"])
@pytest.mark.parametrize("k,drop", [(2, 0.2), (3, 0.5)])
def test_interpreter_restore_and_centroids_of_tokens(interpreter, monkeypatch, dtype, which, k, drop):
    """the restore kernel reading the tokens by index (HAS_INDEX), the choice-sum kernel in both modes
    (the centroids' backward BY_SEGMENT, restore's by row), against the gathered rows; and the kernels'
    tokens gradient bit-equal to the torch path's for float16 (the same terms, the same order, one
    rounding; the interpreter's bfloat16 casts truncate, so bfloat16 is compared within tolerance only)"""
    _segment_kernel(monkeypatch, which)
    before = {name: _launched(name) for name in ("restore", "choice_sum")}
    grads_kernel = _check_tokens_nodes(True, dtype, k=k, drop=drop)
    assert _launched("restore") == before["restore"] + 3  # gathered, by index, by index with PendingRows
    assert _launched("choice_sum") == before["choice_sum"] + 3  # the centroids' and restore's backward; the fused one
    case = _tokens_case(90, k, 4, 6, drop, 4, 40, dtype, True)
    seg, inv, token_of_row, tokens, centroid_out, upstream, upstream_c = case
    # the torch path on the same segmentation: the same bits
    means = fast.segment_mean_of(tokens, seg, token_of_row)
    x = tokens.detach().clone().requires_grad_(True)
    cout = centroid_out.detach().clone().requires_grad_(True)
    num_segments, num_kept = centroid_out.shape[0], upstream.shape[0]
    centroids = fast.centroids_of_tokens(x, means, seg, inv, k)
    out = fast.restore_tokens(cout, centroids[:num_segments], x, token_of_row[:num_kept], seg.seg_of_row[:num_kept],
                              inv, k, segments=seg)
    live = (torch.arange(centroids.shape[0]) < num_segments).unsqueeze(1)
    loss = (out.float() * upstream).sum() + (torch.where(live, centroids.float(), 0) * upstream_c).sum()
    grads_torch = torch.autograd.grad(loss, (x, cout))
    if dtype == torch.float16:
        assert torch.equal(grads_torch[0], grads_kernel[0])


def test_pending_rows_unused_when_the_centroids_have_no_gradient():
    """restore_tokens with a PendingRows but centroids that carry no gradient (no centroids' backward to
    pick the rows up) computes the tokens' gradient itself: the same as without PendingRows."""
    case = _tokens_case(60, 2, 4, 6, 0.2, 2, 16, torch.bfloat16, False)
    seg, inv, token_of_row, tokens, centroid_out, upstream, _ = case
    num_segments, num_kept = centroid_out.shape[0], upstream.shape[0]
    centroids = fast.segment_mean(tokens.index_select(0, token_of_row), seg)[:num_segments]
    grads = []
    for pending in (fast.PendingRows(), None):
        x = tokens.detach().clone().requires_grad_(True)
        out = fast.restore_tokens(centroid_out, centroids, x, token_of_row[:num_kept], seg.seg_of_row[:num_kept],
                                  inv, 2, pending=pending)
        grads.append(torch.autograd.grad((out.float() * upstream).sum(), x)[0])
        assert pending is None or pending.rows is None
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


@pytest.mark.parametrize("case_name", ["topk-lsh", "locmoe-lsh-groupwise"])
def test_interpreter_the_layer_without_send_rows_passes_executor_check(interpreter, monkeypatch, case_name):
    """`executor check`'s LSH cases (one rank, float32, the dense single-process reference with LSH)
    on the layer without the send rows (`DistributedMoE._gather_free` forced on a CPU: the means on
    the mean kernel from the tokens through the token of each row, the interpreter; centroids' and
    restore's nodes on their torch path with `PendingRows`): outputs and gradients within check's
    tolerance (1e-4 relative), bytes as planned. On a GPU `executor check` runs float32, where the layer
    keeps the gathered rows, so this is where check's semantics cover the new path."""
    from lshsim.executor import check
    from lshsim.executor.moe_layer import DistributedMoE
    from lshsim.executor.runtime import Runtime

    taken = []
    monkeypatch.setattr(DistributedMoE, "_gather_free", lambda self, x: taken.append(1) or True)
    made = []
    pending_cls = fast.PendingRows
    monkeypatch.setattr(fast, "PendingRows", lambda: made.append(1) or pending_cls())
    before = _launched("mean")
    runtime = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    case = [c for c in check.default_cases(1) if c.name == case_name]
    result = check._check_case(case[0], runtime)
    assert taken and made and _launched("mean") > before  # the new path ran, its means on the kernel
    errors = result["errors"]
    for key, value in errors.items():
        limit = 0.0 if key in ("bytes_mismatch", "lsh_exact_vs_plain") else 1e-4
        assert value <= limit, (key, value)
    assert {"output", "grad_input", "grad_w1", "grad_w2"} <= set(errors)
