"""LSH-MoE compression: hash tokens, send one centroid per bucket, restore with the residual.

LSH-MoE (Nie et al., NeurIPS 2024, Algorithm 1) compresses the dispatch all-to-all. On the sending
rank, after the gate, for every destination expert:

1. Hash each token with L locality-sensitive hash functions (cross-polytope by default, L = 6 in
   the paper) and concatenate the L codes into one bucket id (`hash_codes`, `bucket_ids`).
2. Tokens that go to the same expert and fall in the same bucket form a cluster; its centroid is
   the mean of its tokens (`compress`). Only the centroids travel through the dispatch all-to-all,
   grouped per destination expert (`Compressed.centroids_per_group`).
3. The expert processes the centroids; the combine all-to-all brings back one output per centroid.
4. Every token gets its centroid's output plus its residual, E(x) ~= E(c) + (x - c) (the paper's
   residual compensation, `restore`, `residuals`). This is E(c) + J(c)(x - c) with J taken as I:
   it helps experts close to the identity (residual blocks) and hurts ones with a small Jacobian.

Hash families (one hash function = one code in [0, 2 d')):

* cross-polytope (Andoni et al. 2015, "Practical and Optimal LSH for Angular Distance"):
  h(x) = argmax over i in {+-1, ..., +-d'} of (R x)_i, i.e. 2 d' buckets per hash. Code
  i - 1 in [0, d') when the winning coordinate is positive, d' + i - 1 when it is negative.
* hyperplane (Charikar 2002): h(x) = [ (R x)_1 < 0 ], a sign bit; 2 buckets per hash. It is the
  cross-polytope hash with d' = 1, and with the Gaussian rotation Pr[h(x) = h(y)] = 1 - theta/pi.

Rotations R (the L hash functions use independent ones, all drawn from `LSHConfig.seed`):

* "gaussian": a dense (d', d) matrix of i.i.d. N(0, 1) entries. Cost d * d' multiply-adds per
  token and hash. The collision probability of one cross-polytope hash is then exactly the
  bivariate-normal formula of `lshsim.analytic.collision` in dimension d'.
* "hadamard": FALCONN's pseudo-rotation, `rounds` times x <- H D x (D random +-1 signs, H the
  normalised Sylvester-Hadamard matrix); the token is zero-padded to n = 2^ceil(log2 d) first and
  the first d' coordinates are kept. Cost about rounds * 2 n sqrt(n) per token and hash,
  independent of d' (or, when cheaper, the composed rotation is materialised once as a dense
  (d, d') matrix: `make_projection`); it approximates a uniformly random rotation (no closed-form
  guarantee; the tests check hyperplane collisions against 1 - theta/pi within 0.04).

Bucket ids: the L codes are combined in mixed radix R = 2 d' (code 0 most significant), so ids
sort like the code tuples. When R^L >= 2^63 the id would overflow int64; then `bucket_ids`
returns dense ids from `torch.unique(codes, dim=0)` instead: exact (no false collisions), in the
same lexicographic order, but local to the call (the same tokens hashed in another batch may get
other ids; only equality within one call is meaningful). `compress` applies the same rule to the
(group, bucket) key.

Finest resolution: `LSHConfig(exact=True)` puts every token in its own bucket. Compress, an
identity expert and restore then give back the tokens bit for bit (the executor's correctness
test relies on this).

Re-sampling: the rotation is a pure function of (d_model, config). "Fixed" hashing keeps one
config; "re-sampled per step" passes `dataclasses.replace(config, seed=base_seed + step)`.

Dtypes: float16/bfloat16 tokens are hashed in float32 (`hash_dtype`) and their centroids are
accumulated in float32, then rounded once to the tokens' dtype.

Gradients: hash codes and bucket assignment are computed without gradients (they are indices);
centroids are means, so a centroid's gradient reaches each of its tokens divided by the bucket
size (the mean rule). `restore` is differentiable in the expert output and the residual.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lshsim.checks import positive_int
from lshsim.dispatch.synthetic import tokens_around, unit_centres

__all__ = [
    "FAMILIES", "ROTATIONS", "LSHConfig", "LSHProjection", "make_projection", "project",
    "hash_codes", "bucket_ids", "num_buckets_per_hash", "Compressed", "compress", "restore",
    "residuals", "centroid_error", "compressed_send_counts", "clustered_tokens",
    "reference_hash_codes", "reference_compress", "hadamard_matrix", "hash_dtype",
]

FAMILIES = ("cross_polytope", "hyperplane")
ROTATIONS = ("gaussian", "hadamard")

_INT64_LIMIT = 2 ** 63
# Speed trick: hash in chunks of tokens so that the projection never holds the full (N, L, d')
# tensor (3 GiB at N = 32768, L = 6, d' = 4096). A dense product writes (chunk, L * d') <= 2^24
# elements (64 MiB float32: large GEMMs are efficient); the fast transform keeps its
# (chunk, L, n) working set near 2^22 elements (16 MiB), which measured fastest of 2^18..2^24.
_CHUNK_ELEMENTS_DENSE = 2 ** 24
_CHUNK_ELEMENTS_FWHT = 2 ** 22
# A materialised "hadamard" rotation (one dense GEMM) is used when it costs at most this many
# times the multiply-adds of the fast transform (see make_projection).
_DENSE_COST_FACTOR = 8


# ---- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LSHConfig:
    """One LSH compressor: the hash family, the rotation and the resolution.

    family:     "cross_polytope" (2 d' buckets per hash) or "hyperplane" (2 buckets per hash, the
                cross-polytope hash with d' = 1; proj_dim must be None or 1).
    num_hashes: L, hash functions concatenated into one bucket id (the paper uses 6). More hashes,
                finer buckets: up to (2 d')^L buckets per (rank, expert).
    proj_dim:   d', the dimension each hash projects to; None means d_model (for "hadamard": the
                padded power of two n >= d_model). The paper does not state it.
    rotation:   "gaussian" (dense N(0, 1) projection d -> d') or "hadamard" (rounds of H D, FALCONN).
    rounds:     H D rounds of the "hadamard" rotation (FALCONN uses 3; ignored by "gaussian").
    seed:       seeds a CPU torch.Generator; the same seed gives the same hashes on every device.
    exact:      finest resolution, every token its own bucket (hashing is skipped by `compress`);
                compress -> identity expert -> restore is then exact.
    """

    family: str = "cross_polytope"
    num_hashes: int = 6
    proj_dim: int | None = None
    rotation: str = "gaussian"
    rounds: int = 3
    seed: int = 0
    exact: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} must be one of {FAMILIES}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation={self.rotation!r} must be one of {ROTATIONS}")
        positive_int("num_hashes", self.num_hashes)
        positive_int("rounds", self.rounds)
        from lshsim import bounds

        bounds.check("rotation_rounds", "rounds", self.rounds)      # 1e12 rounds hashed for hours (lshsim.bounds)
        if self.proj_dim is not None:
            positive_int("proj_dim", self.proj_dim)
        if self.family == "hyperplane" and self.proj_dim not in (None, 1):
            raise ValueError(f"proj_dim={self.proj_dim!r}: the hyperplane family projects to one "
                             f"coordinate per hash (use None or 1, or family='cross_polytope')")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 64:
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, 2^64)")
        if not isinstance(self.exact, bool):
            raise ValueError(f"exact={self.exact!r} must be a bool")

    def padded_dim(self, d_model: int) -> int:
        """n: d_model for "gaussian", the next power of two >= d_model for "hadamard"."""
        positive_int("d_model", d_model)
        if self.rotation == "gaussian":
            return d_model
        return 1 << (d_model - 1).bit_length()

    def effective_proj_dim(self, d_model: int) -> int:
        """d' actually used for tokens of width d_model (1 for hyperplane)."""
        if self.family == "hyperplane":
            return 1
        if self.proj_dim is None:
            return self.padded_dim(d_model)
        if self.rotation == "hadamard" and self.proj_dim > self.padded_dim(d_model):
            raise ValueError(f"proj_dim={self.proj_dim} exceeds the padded dimension "
                             f"n={self.padded_dim(d_model)} of the hadamard rotation (d_model={d_model})")
        return self.proj_dim

    def buckets_per_hash(self, d_model: int) -> int:
        """R = 2 d': the number of codes one hash function can output."""
        return 2 * self.effective_proj_dim(d_model)

    def max_buckets(self, d_model: int) -> int:
        """(2 d')^L: the number of distinct bucket ids per group (a Python int, may exceed 2^63)."""
        return self.buckets_per_hash(d_model) ** self.num_hashes


def num_buckets_per_hash(d_model: int, config: LSHConfig) -> int:
    """R = 2 d' codes per hash function.

    >>> num_buckets_per_hash(1024, LSHConfig(proj_dim=16))
    32
    >>> num_buckets_per_hash(1024, LSHConfig(family="hyperplane"))
    2
    """
    return config.buckets_per_hash(d_model)


# ---- the random rotation -----------------------------------------------------------------------
def hadamard_matrix(n: int, columns: int | None = None, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The Sylvester-Hadamard matrix H_n[i, j] = (-1)^popcount(i & j) / sqrt(n), (n, columns).

    Orthonormal and symmetric; `columns` keeps the first columns only.

    >>> (hadamard_matrix(4) * 2).tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]]
    """
    positive_int("n", n)
    if n & (n - 1):
        raise ValueError(f"n={n} must be a power of two")
    columns = n if columns is None else columns
    rows = torch.arange(n).unsqueeze(1)  # (n, 1)
    cols = torch.arange(columns).unsqueeze(0)  # (1, c)
    both = rows & cols  # (n, c)
    parity = torch.zeros_like(both)
    for bit in range(max(n.bit_length() - 1, 0)):
        parity ^= (both >> bit) & 1
    return ((1 - 2 * parity).to(dtype) / math.sqrt(n)).to(device)  # (n, c)


@dataclass(frozen=True)
class LSHProjection:
    """The L random rotations of one `LSHConfig` for tokens of width d_model, on one device.

    Fields (d = d_model, n = padded dimension, d' = effective proj_dim, L = num_hashes):
        config, d_model, padded_dim, proj_dim.
        matrix:          (d, L * d') dense projection, column l * d' + i is row i of R_l. Always set
                         for "gaussian"; for "hadamard" set when d * d' <= 8 * rounds * n (A + B),
                         i.e. when one dense GEMM is at most 8x the multiply-adds of the fast
                         transforms (then R_l is materialised once from the signs, see
                         `make_projection`).
        signs:           (L, rounds, n) +-1 diagonals D of the "hadamard" rotation; None for "gaussian".
        hadamard_left:   (A, A), hadamard_right: (B, B) with A * B = n: H_n = H_A kron H_B; None
                         for "gaussian".
    """

    config: LSHConfig
    d_model: int
    padded_dim: int
    proj_dim: int
    matrix: torch.Tensor | None
    signs: torch.Tensor | None
    hadamard_left: torch.Tensor | None
    hadamard_right: torch.Tensor | None

    @property
    def device(self) -> torch.device:
        return (self.matrix if self.matrix is not None else self.signs).device

    @property
    def dtype(self) -> torch.dtype:
        return (self.matrix if self.matrix is not None else self.signs).dtype


def make_projection(d_model: int, config: LSHConfig, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32, dense: bool | None = None) -> LSHProjection:
    """Draw the L rotations of `config` for width d_model, deterministically from config.seed.

    The random numbers are drawn on the CPU with a `torch.Generator` (Gaussian entries in float32,
    signs as integers), then cast and moved, so the same seed gives the same rotation (hence the
    same hashes, up to rounding near ties) for every dtype and device.

    Speed trick: "hadamard" with d * d' <= 8 * rounds * n (A + B) is materialised:
    R_l^T = D_1 H D_2 H ... D_rounds H[:, :d'] is computed in float64 with d' fast transforms per
    round, and its first d rows are kept, so hashing is one GEMM of d * d' multiply-adds per token
    and hash instead of rounds fast transforms of n (A + B). The factor 8 is measured: on the
    development CPU one large GEMM runs ~10x more multiply-adds per second than the small batched
    GEMMs of `_fwht` (d = 1024, d' = 1024 is materialised; d = 4096, d' = 4096 is not).
    `dense=True` / `False` forces the choice for "hadamard" (the codes agree up to rounding).
    `dtype` is the tokens' dtype; the projection is made in `hash_dtype(dtype)` (float32 for
    float16/bfloat16 tokens, which are hashed in float32).

    Exactness: for float16/bfloat16 tokens the dense matrix entries are first rounded to that
    dtype (then stored in float32 as before). Every product of a token entry and a matrix entry is
    then exact in float32 (two 8- or 11-bit significands), so the float32 GEMM here and a fused
    kernel that multiplies the 16-bit values with float32 accumulation (`lshsim.dispatch.lsh_fast`)
    differ only in summation order: their bucket ids agree except at near-ties of the argmax.
    """
    positive_int("d_model", d_model)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype} must be a floating-point dtype")
    token_dtype, dtype = dtype, hash_dtype(dtype)
    # 16-bit tokens: entries representable in the token dtype (exact products, see Exactness)
    round_to = token_dtype if token_dtype in (torch.float16, torch.bfloat16) else None
    padded = config.padded_dim(d_model)
    proj_dim = config.effective_proj_dim(d_model)
    num_hashes = config.num_hashes
    generator = torch.Generator().manual_seed(config.seed)
    if config.rotation == "gaussian":
        matrix = torch.randn(d_model, num_hashes, proj_dim, generator=generator)  # (d, L, d')
        matrix = matrix.reshape(d_model, num_hashes * proj_dim)  # (d, L*d')
        if round_to is not None:
            matrix = matrix.to(round_to)
        matrix = matrix.to(device=device, dtype=dtype)
        return LSHProjection(config, d_model, padded, proj_dim, matrix, None, None, None)
    signs = 1 - 2 * torch.randint(0, 2, (num_hashes, config.rounds, padded), generator=generator)  # (L, rounds, n)
    log_n = padded.bit_length() - 1
    left_dim, right_dim = 1 << (log_n // 2), 1 << (log_n - log_n // 2)
    if dense is None:
        dense = d_model * proj_dim <= _DENSE_COST_FACTOR * config.rounds * padded * (left_dim + right_dim)
    matrix = None
    if dense:
        left64 = hadamard_matrix(left_dim, dtype=torch.float64)  # (A, A)
        right64 = hadamard_matrix(right_dim, dtype=torch.float64)  # (B, B)
        signs64 = signs.to(torch.float64)
        # rows of z are the d' columns of R_l^T, for all hashes at once: (L, d', n)
        z = hadamard_matrix(padded, proj_dim, dtype=torch.float64).T.expand(num_hashes, proj_dim, padded)
        for r in reversed(range(config.rounds)):
            z = z * signs64[:, r].unsqueeze(1)  # (L, d', n): D_{r+1} ...
            if r > 0:
                z = _fwht(z.reshape(num_hashes * proj_dim, padded), left64, right64).reshape(
                    num_hashes, proj_dim, padded)  # (L, d', n): H D_{r+1} ...
        matrix = z[:, :, :d_model].permute(2, 0, 1).reshape(d_model, num_hashes * proj_dim)  # (d, L*d')
        if round_to is not None:
            matrix = matrix.to(round_to)
        matrix = matrix.to(device=device, dtype=dtype)
    left = hadamard_matrix(left_dim, dtype=dtype, device=device)  # (A, A)
    right = hadamard_matrix(right_dim, dtype=dtype, device=device)  # (B, B)
    signs = signs.to(device=device, dtype=dtype)
    return LSHProjection(config, d_model, padded, proj_dim, matrix, signs, left, right)


def _fwht(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Normalised Walsh-Hadamard transform along the last axis, (M, n) -> (M, n).

    Speed trick: H_n = H_A kron H_B (Sylvester ordering, index = a * B + b), so with X the
    (A, B) reshape of a row, H_n x = vec(H_A X H_B): two small GEMMs, n (A + B) multiply-adds per
    row instead of n^2 for a dense matrix. On CPU this measured 2-20x faster than log2(n)
    butterfly passes in torch and than one dense (n, n) product at n = 1024.
    """
    rows = x.shape[0]
    a_dim, b_dim = left.shape[0], right.shape[0]
    y = (x.reshape(rows * a_dim, b_dim) @ right).reshape(rows, a_dim, b_dim)  # (M, A, B): X H_B
    return torch.matmul(left, y).reshape(rows, a_dim * b_dim)  # (M, n): H_A X H_B


def _project_chunk(tokens: torch.Tensor, proj: LSHProjection) -> torch.Tensor:
    """(M, d) -> (M, L, d'): row l holds R_l x."""
    rows = tokens.shape[0]
    num_hashes, proj_dim = proj.config.num_hashes, proj.proj_dim
    if proj.matrix is not None:
        return (tokens @ proj.matrix).reshape(rows, num_hashes, proj_dim)  # (M, L, d')
    padded = proj.padded_dim
    if padded != proj.d_model:
        tokens = torch.nn.functional.pad(tokens, (0, padded - proj.d_model))  # (M, n)
    signs = proj.signs  # (L, rounds, n)
    rounds = signs.shape[1]
    x = tokens.unsqueeze(1) * signs[:, 0]  # (M, L, n): D_1 x
    for r in range(rounds):
        x = _fwht(x.reshape(rows * num_hashes, padded), proj.hadamard_left, proj.hadamard_right)
        x = x.reshape(rows, num_hashes, padded)  # (M, L, n): H D_{r+1} ... D_1 x
        if r < rounds - 1:
            x = x * signs[:, r + 1]
    return x[:, :, :proj_dim]  # (M, L, d')


def _check_tokens(tokens: torch.Tensor, name: str = "tokens") -> None:
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, d_model), got shape {tuple(tokens.shape)}")
    if not tokens.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {tokens.dtype}")
    if tokens.shape[1] < 1:
        raise ValueError(f"{name} has d_model=0 (shape {tuple(tokens.shape)})")
    # Speed trick: one reduction (NaN and inf propagate through a sum) instead of a full boolean
    # mask; the exact count is only computed when the sum is not finite (or overflowed).
    if not bool(torch.isfinite(tokens.sum())) and not bool(torch.isfinite(tokens).all()):
        bad = int((~torch.isfinite(tokens)).sum())
        raise ValueError(f"{name} hold {bad} non-finite values (NaN or inf)")


def hash_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype hashing runs in: float64 and float32 as given, float16 and bfloat16 upcast to
    float32 (a 8-bit mantissa would turn many argmax gaps into ties)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _projection_for(tokens: torch.Tensor, config: LSHConfig, projection: LSHProjection | None,
                    token_dtype: torch.dtype | None = None) -> LSHProjection:
    """The projection for these tokens (tokens already in hash_dtype; token_dtype: their dtype
    before the upcast, so that a default projection for 16-bit tokens is rounded like
    make_projection(dtype=token_dtype))."""
    if projection is None:
        return make_projection(tokens.shape[1], config, device=tokens.device,
                               dtype=tokens.dtype if token_dtype is None else token_dtype)
    if projection.config != config:
        raise ValueError(f"projection was made for {projection.config}, not {config}")
    if projection.d_model != tokens.shape[1]:
        raise ValueError(f"projection was made for d_model={projection.d_model}, tokens have {tokens.shape[1]}")
    if projection.device != tokens.device or projection.dtype != tokens.dtype:
        raise ValueError(f"projection is {projection.dtype} on {projection.device}, tokens are "
                         f"{tokens.dtype} on {tokens.device}")
    return projection


def project(tokens: torch.Tensor, config: LSHConfig, projection: LSHProjection | None = None) -> torch.Tensor:
    """(N, d) -> (N, L, d'): every token rotated by each of the L rotations (no chunking)."""
    _check_tokens(tokens)
    x = tokens.detach().to(hash_dtype(tokens.dtype))
    proj = _projection_for(x, config, projection, tokens.dtype)
    with torch.no_grad():
        return _project_chunk(x, proj)


def hash_codes(tokens: torch.Tensor, config: LSHConfig, projection: LSHProjection | None = None) -> torch.Tensor:
    """(N, d) float -> (N, L) int64 codes in [0, 2 d') (cross-polytope) or [0, 2) (hyperplane).

    Code of hash l: with y = R_l x (d' coordinates) and i* = argmax_i |y_i|, code = i* if
    y_{i*} >= 0 else d' + i*, i.e. argmax over the 2 d' vertices +-e_i of the cross-polytope.
    A zero token gets code 0. Pass a `make_projection` result to reuse the rotation across calls
    (made with dtype `hash_dtype(tokens.dtype)`: float16/bfloat16 tokens are hashed in float32).
    """
    _check_tokens(tokens)
    x = tokens.detach().to(hash_dtype(tokens.dtype))
    proj = _projection_for(x, config, projection, tokens.dtype)
    num_tokens, num_hashes, proj_dim = tokens.shape[0], config.num_hashes, proj.proj_dim
    if proj.matrix is not None:
        chunk = max(1, _CHUNK_ELEMENTS_DENSE // (num_hashes * proj_dim))
    else:
        chunk = max(1, _CHUNK_ELEMENTS_FWHT // (num_hashes * proj.padded_dim))
    codes = torch.empty(num_tokens, num_hashes, dtype=torch.int64, device=tokens.device)  # (N, L)
    with torch.no_grad():
        for start in range(0, num_tokens, chunk):
            y = _project_chunk(x[start:start + chunk], proj)  # (M, L, d')
            index = y.abs().argmax(dim=2, keepdim=True)  # (M, L, 1)
            negative = y.gather(2, index).squeeze(2) < 0  # (M, L)
            codes[start:start + chunk] = index.squeeze(2) + proj_dim * negative
    return codes


def _combine_codes(codes: torch.Tensor, radix: int) -> torch.Tensor:
    """(N, L) codes in [0, radix) -> (N,) mixed-radix ids, code 0 most significant (no overflow check)."""
    ids = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
    for column in range(codes.shape[1]):
        ids = ids * radix + codes[:, column]
    return ids


def bucket_ids(tokens: torch.Tensor, config: LSHConfig, projection: LSHProjection | None = None) -> torch.Tensor:
    """(N, d) -> (N,) int64 bucket id: the L codes in mixed radix 2 d' (code 0 most significant).

    If (2 d')^L >= 2^63 the ids are dense ranks from torch.unique(codes, dim=0) instead (exact,
    same order, but only comparable within this call). With config.exact every token is its own
    bucket: ids 0..N-1.
    """
    _check_tokens(tokens)
    if config.exact:
        return torch.arange(tokens.shape[0], device=tokens.device)
    codes = hash_codes(tokens, config, projection)  # (N, L)
    radix = config.buckets_per_hash(tokens.shape[1])
    if radix ** config.num_hashes < _INT64_LIMIT:
        return _combine_codes(codes, radix)
    if codes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=tokens.device)
    return torch.unique(codes, dim=0, return_inverse=True)[1]


# ---- compression -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compressed:
    """The result of `compress`: B centroids for N tokens, ordered by (group, bucket).

    Fields:
        centroids:         (B, d) float, mean of each bucket's tokens (differentiable w.r.t. the
                           tokens: each token receives 1/count of its centroid's gradient).
        token_to_centroid: (N,) int64, row of the token's centroid.
        centroid_group:    (B,) int64, group (destination expert) of each centroid, non-decreasing,
                           so the centroids of one group are contiguous.
        centroid_count:    (B,) int64 >= 1, tokens per centroid.
        num_tokens:        N.
    """

    centroids: torch.Tensor
    token_to_centroid: torch.Tensor
    centroid_group: torch.Tensor
    centroid_count: torch.Tensor
    num_tokens: int

    def __post_init__(self) -> None:
        num_centroids = self.centroids.shape[0]
        if self.centroids.ndim != 2:
            raise ValueError(f"centroids must be 2-D (B, d), got shape {tuple(self.centroids.shape)}")
        if tuple(self.token_to_centroid.shape) != (self.num_tokens,):
            raise ValueError(f"token_to_centroid has shape {tuple(self.token_to_centroid.shape)}, "
                             f"expected ({self.num_tokens},)")
        for name in ("centroid_group", "centroid_count"):
            shape = tuple(getattr(self, name).shape)
            if shape != (num_centroids,):
                raise ValueError(f"{name} has shape {shape}, expected ({num_centroids},)")

    @property
    def num_centroids(self) -> int:
        return self.centroids.shape[0]

    @property
    def compression_rate(self) -> float:
        """B / N, centroids sent per token sent (the paper reports 0.117..0.20).

        Defined as 1.0 for N = 0 (nothing is sent either way, so there is no saving; 1.0 keeps
        bytes * rate = bytes).
        """
        if self.num_tokens == 0:
            return 1.0
        return self.num_centroids / self.num_tokens

    def centroids_per_group(self, num_groups: int) -> torch.Tensor:
        """(G,) int64 centroids per group: the split sizes of the compressed all-to-all."""
        positive_int("num_groups", num_groups)
        if self.num_centroids and int(self.centroid_group.max()) >= num_groups:
            raise ValueError(f"num_groups={num_groups} but a centroid has group {int(self.centroid_group.max())}")
        return torch.bincount(self.centroid_group, minlength=num_groups)

    def tokens_per_group(self, num_groups: int) -> torch.Tensor:
        """(G,) int64 tokens per group (what the uncompressed all-to-all would send)."""
        counts = torch.zeros(num_groups, dtype=torch.int64, device=self.centroid_count.device)
        return counts.index_add_(0, self.centroid_group, self.centroid_count) if self.num_centroids else counts


def _check_group(group: torch.Tensor, num_tokens: int) -> None:
    if not isinstance(group, torch.Tensor) or tuple(group.shape) != (num_tokens,):
        shape = tuple(group.shape) if isinstance(group, torch.Tensor) else type(group).__name__
        raise ValueError(f"group has shape {shape}, expected ({num_tokens},) to match the tokens")
    if group.dtype != torch.int64:
        raise ValueError(f"group must be int64, got {group.dtype}")
    if num_tokens and int(group.min()) < 0:
        raise ValueError(f"group holds negative value {int(group.min())}; groups are expert indices >= 0")


def compress(tokens: torch.Tensor, group: torch.Tensor, config: LSHConfig,
             projection: LSHProjection | None = None) -> Compressed:
    """Bucket tokens per group and replace every bucket by its centroid (LSH-MoE Algorithm 1).

    tokens: (N, d) float; group: (N,) int64 >= 0, the destination expert of each token on this
    rank (pass rank * E + expert to compress several ranks at once). Two tokens share a centroid
    iff they have the same group and the same bucket id. Centroids are ordered by (group, bucket).
    """
    _check_tokens(tokens)
    num_tokens, d_model = tokens.shape
    _check_group(group, num_tokens)
    device = tokens.device
    with torch.no_grad():
        if config.exact:
            codes, bucket_span = None, max(num_tokens, 1)
            bucket = torch.arange(num_tokens, device=device)  # (N,)
        else:
            codes = hash_codes(tokens, config, projection)  # (N, L)
            radix = config.buckets_per_hash(d_model)
            bucket_span = radix ** config.num_hashes
            bucket = _combine_codes(codes, radix) if bucket_span < _INT64_LIMIT else None
        num_groups = int(group.max()) + 1 if num_tokens else 1
        if bucket is not None and num_groups * bucket_span < _INT64_LIMIT:
            key = group * bucket_span + bucket  # (N,) sorts by (group, bucket)
            unique_key, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
            centroid_group = unique_key // bucket_span  # (B,)
        else:
            # (group, code_0, ..., code_{L-1}) rows, compared lexicographically: the same order
            rows = torch.cat([group.unsqueeze(1), codes if bucket is None else bucket.unsqueeze(1)], dim=1)
            unique_rows, inverse, counts = torch.unique(rows, dim=0, sorted=True, return_inverse=True,
                                                        return_counts=True)
            centroid_group = unique_rows[:, 0].contiguous()  # (B,)
    num_centroids = counts.shape[0]
    # float16/bfloat16 sums accumulate in float32 (one rounding at the end; still exact for exact=True)
    accumulate = hash_dtype(tokens.dtype)
    sums = torch.zeros(num_centroids, d_model, dtype=accumulate, device=device).index_add(
        0, inverse, tokens.to(accumulate))  # (B, d), differentiable
    centroids = (sums / counts.unsqueeze(1).to(accumulate)).to(tokens.dtype)  # (B, d)
    return Compressed(centroids=centroids, token_to_centroid=inverse, centroid_group=centroid_group,
                      centroid_count=counts, num_tokens=num_tokens)


def residuals(tokens: torch.Tensor, compressed: Compressed) -> torch.Tensor:
    """(N, d) x - c_bucket(x), what the residual compensation adds back."""
    if tuple(tokens.shape) != (compressed.num_tokens, compressed.centroids.shape[1]):
        raise ValueError(f"tokens have shape {tuple(tokens.shape)}, expected "
                         f"({compressed.num_tokens}, {compressed.centroids.shape[1]})")
    return tokens - compressed.centroids[compressed.token_to_centroid]


def restore(centroid_out: torch.Tensor, compressed: Compressed, residual: torch.Tensor | None = None) -> torch.Tensor:
    """(B, d_out) expert outputs of the centroids -> (N, d_out) token outputs.

    E(x) ~= E(c_bucket(x)) + (x - c_bucket(x)) (LSH-MoE residual compensation) when `residual`
    is `residuals(tokens, compressed)`; with residual None every token gets E(c_bucket(x)).
    """
    if not isinstance(centroid_out, torch.Tensor) or centroid_out.ndim != 2 \
            or centroid_out.shape[0] != compressed.num_centroids:
        shape = tuple(centroid_out.shape) if isinstance(centroid_out, torch.Tensor) else type(centroid_out).__name__
        raise ValueError(f"centroid_out has shape {shape}, expected ({compressed.num_centroids}, d_out)")
    out = centroid_out[compressed.token_to_centroid]  # (N, d_out)
    if residual is None:
        return out
    if tuple(residual.shape) != tuple(out.shape):
        raise ValueError(f"residual has shape {tuple(residual.shape)}, expected {tuple(out.shape)}")
    return out + residual


def centroid_error(tokens: torch.Tensor, compressed: Compressed) -> float:
    """Relative centroid error ||x - c||_F / ||x||_F over all tokens (0 when exact; 0 for N = 0)."""
    with torch.no_grad():
        norm = float(torch.linalg.vector_norm(tokens.double()))
        if norm == 0.0:
            return 0.0
        return float(torch.linalg.vector_norm(residuals(tokens, compressed).double())) / norm


def compressed_send_counts(tokens: torch.Tensor, plan, config: LSHConfig,
                           projection: LSHProjection | None = None) -> torch.Tensor:
    """(W, W) int64 centroids sent from rank src to rank dst by a DispatchPlan under LSH-MoE.

    tokens: (T, d) the plan's tokens. Every kept (token, choice) is a copy bound for expert e on
    rank token_rank; copies are bucketed per (source rank, expert), so group = rank * E + expert.
    Compare `plan.send_counts()`, the uncompressed counts; multiply by bytes per token for bytes.
    """
    _check_tokens(tokens)
    if tokens.shape[0] != plan.num_tokens:
        raise ValueError(f"tokens have {tokens.shape[0]} rows, the plan has {plan.num_tokens} tokens")
    num_experts, world_size = plan.num_experts, plan.world_size
    token_of_choice = torch.arange(plan.num_tokens, device=tokens.device).unsqueeze(1).expand_as(plan.kept)
    kept_tokens = token_of_choice[plan.kept]  # (K,)
    kept_expert = plan.expert_index[plan.kept]  # (K,)
    group = plan.token_rank[kept_tokens] * num_experts + kept_expert  # (K,)
    compressed = compress(tokens.detach()[kept_tokens], group, config, projection)
    per_group = compressed.centroids_per_group(world_size * num_experts).reshape(world_size, num_experts)  # (W, E)
    # sum the experts of each destination rank (index_add, not an int64 matmul: CUDA has none)
    expert_to_rank = plan.placement.expert_to_rank.to(per_group.device)  # (E,)
    counts = torch.zeros(world_size, world_size, dtype=per_group.dtype, device=per_group.device)  # (W, W)
    return counts.index_add_(1, expert_to_rank, per_group)


# ---- synthetic clustered tokens ----------------------------------------------------------------
def clustered_tokens(num_tokens: int, d_model: int, num_clusters: int, noise: float, seed: int = 0) -> torch.Tensor:
    """(N, d) float32 tokens around num_clusters unit-norm centers (a toy model of the similar
    tokens LSH-MoE observes, its Figure 4).

    Token t = center[c_t] + noise * g_t / sqrt(d), c_t uniform over clusters, g_t ~ N(0, I_d), so
    the noise has norm ~= noise relative to the unit centers. noise = 0 gives exact duplicates.
    """
    positive_int("num_tokens", num_tokens)
    positive_int("d_model", d_model)
    positive_int("num_clusters", num_clusters)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise={noise!r} must be a finite number >= 0")
    generator = torch.Generator().manual_seed(seed)
    centers = unit_centres(num_clusters, d_model, generator)  # (K, d)
    return tokens_around(centers, num_tokens, noise, generator)  # (N, d)


# ---- slow, obvious references (the tests compare the fast paths with these) ----------------------
def reference_hash_codes(tokens: torch.Tensor, config: LSHConfig) -> torch.Tensor:
    """Slow hash_codes: dense rotation matrices (scipy-free Hadamard built entry by entry) and an
    explicit argmax over the 2 d' signed coordinates, one hash and one token at a time."""
    d_model = tokens.shape[1]
    proj = make_projection(d_model, config, dtype=torch.float64)
    padded, proj_dim = proj.padded_dim, proj.proj_dim
    rotations = []
    for l in range(config.num_hashes):
        if proj.matrix is not None:
            rotations.append(proj.matrix[:, l * proj_dim:(l + 1) * proj_dim].T)  # (d', d)
            continue
        hadamard = hadamard_matrix(padded, dtype=torch.float64)  # (n, n)
        rotation = torch.eye(padded, dtype=torch.float64)
        for r in range(config.rounds):
            rotation = hadamard @ torch.diag(proj.signs[l, r]) @ rotation
        rotations.append(rotation[:proj_dim, :d_model])  # (d', d): padding zeros drop the other columns
    codes = torch.zeros(tokens.shape[0], config.num_hashes, dtype=torch.int64)
    for t in range(tokens.shape[0]):
        x = tokens[t].double()
        for l, rotation in enumerate(rotations):
            y = rotation @ x  # (d',)
            vertices = torch.cat([y, -y])  # (2 d',): +e_1..+e_d', -e_1..-e_d'
            best = 0
            for i in range(1, 2 * proj_dim):
                if vertices[i] > vertices[best]:
                    best = i
            codes[t, l] = best
    return codes


def reference_compress(tokens: torch.Tensor, group: torch.Tensor, config: LSHConfig) -> dict:
    """Slow compress: a dict {(group, bucket code tuple): list of token indices} and Python means.

    Returns {"keys": sorted keys, "members": [token indices], "centroids": (B, d) float64}.
    """
    if config.exact:
        keys_of = [(int(group[t]), (t,)) for t in range(tokens.shape[0])]
    else:
        codes = hash_codes(tokens, config)
        keys_of = [(int(group[t]), tuple(int(c) for c in codes[t])) for t in range(tokens.shape[0])]
    buckets: dict = {}
    for t, key in enumerate(keys_of):
        buckets.setdefault(key, []).append(t)
    keys = sorted(buckets)
    centroids = torch.zeros(len(keys), tokens.shape[1], dtype=torch.float64)
    for b, key in enumerate(keys):
        for t in buckets[key]:
            centroids[b] += tokens[t].double()
        centroids[b] /= len(buckets[key])
    return {"keys": keys, "members": [buckets[key] for key in keys], "centroids": centroids}
