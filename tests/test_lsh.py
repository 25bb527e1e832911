"""Tests for lshsim.dispatch.lsh: hashing, bucketing, centroids, residual restore."""
from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lshsim.dispatch.lsh import (Compressed, LSHConfig, bucket_ids, centroid_error, clustered_tokens,
                                 compress, compressed_send_counts, hadamard_matrix, hash_codes,
                                 make_projection, num_buckets_per_hash, project, reference_compress,
                                 reference_hash_codes, residuals, restore)
import lshsim.dispatch.lsh as lsh_module
from lshsim.dispatch.lsh import _fwht
from lshsim.dispatch.placement import contiguous_placement
from lshsim.dispatch.routers import route_topk

# Configurations that exercise every code path: gaussian, hadamard (materialised as a dense
# matrix and through the fast transform: `_projections` tries both), hyperplane on both rotations.
PATH_CONFIGS = [
    LSHConfig(),
    LSHConfig(proj_dim=3, num_hashes=2, seed=5),
    LSHConfig(rotation="hadamard", proj_dim=4),
    LSHConfig(rotation="hadamard", rounds=1),
    LSHConfig(rotation="hadamard", rounds=2, proj_dim=30, seed=3),
    LSHConfig(family="hyperplane", num_hashes=8),
    LSHConfig(family="hyperplane", rotation="hadamard", num_hashes=8),
]


def _projections(d_model: int, config: LSHConfig, dtype: torch.dtype) -> list:
    """The automatic projection, plus for "hadamard" the forced dense and fast-transform ones."""
    found = [None]
    if config.rotation == "hadamard":
        found += [make_projection(d_model, config, dtype=dtype, dense=True),
                  make_projection(d_model, config, dtype=dtype, dense=False)]
        assert found[1].matrix is not None and found[2].matrix is None
    return found


def _ids(config: LSHConfig) -> str:
    return f"{config.family}-{config.rotation}-dp{config.proj_dim}-r{config.rounds}"


def _pair_at_angle(d_model: int, theta: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors at angle theta in a random plane of R^d."""
    basis, _ = torch.linalg.qr(torch.randn(d_model, 2, generator=generator, dtype=torch.float64))  # (d, 2)
    x = basis[:, 0]
    y = math.cos(theta) * basis[:, 0] + math.sin(theta) * basis[:, 1]
    return x, y


def test_doctests():
    result = doctest.testmod(lsh_module)
    assert result.attempted > 0 and result.failed == 0


# ---- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    ({"num_hashes": 0}, "num_hashes=0"),
    ({"num_hashes": True}, "num_hashes=True"),
    ({"proj_dim": 0}, "proj_dim=0"),
    ({"proj_dim": -3}, "proj_dim=-3"),
    ({"family": "spherical"}, "family='spherical'"),
    ({"rotation": "fourier"}, "rotation='fourier'"),
    ({"rounds": 0}, "rounds=0"),
    ({"seed": -1}, "seed=-1"),
    ({"family": "hyperplane", "proj_dim": 4}, "proj_dim=4"),
    ({"exact": 1}, "exact=1"),
])
def test_config_rejects_bad_values(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        LSHConfig(**kwargs)


def test_config_resolution():
    assert LSHConfig().buckets_per_hash(1024) == 2048
    assert LSHConfig(proj_dim=16).max_buckets(1024) == 32 ** 6
    assert LSHConfig(rotation="hadamard").effective_proj_dim(1000) == 1024  # padded to 2^10
    assert LSHConfig(family="hyperplane").effective_proj_dim(1000) == 1
    assert num_buckets_per_hash(64, LSHConfig(family="hyperplane", num_hashes=3)) == 2
    with pytest.raises(ValueError, match="proj_dim=64 exceeds"):
        LSHConfig(rotation="hadamard", proj_dim=64).effective_proj_dim(20)


# ---- the rotation ---------------------------------------------------------------------------------
def test_hadamard_matrix_is_sylvester_and_orthonormal():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    for n in (1, 2, 8, 64):
        h = hadamard_matrix(n, dtype=torch.float64)
        expected = torch.from_numpy(scipy_linalg.hadamard(n).astype("float64")) / math.sqrt(n)
        assert torch.equal(h, expected)
        assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="n=12"):
        hadamard_matrix(12)


def test_fast_walsh_hadamard_matches_dense():
    generator = torch.Generator().manual_seed(0)
    for log_n in range(0, 9):
        n = 1 << log_n
        a_dim, b_dim = 1 << (log_n // 2), 1 << (log_n - log_n // 2)
        x = torch.randn(7, n, generator=generator, dtype=torch.float64)
        fast = _fwht(x, hadamard_matrix(a_dim, dtype=torch.float64), hadamard_matrix(b_dim, dtype=torch.float64))
        assert torch.allclose(fast, x @ hadamard_matrix(n, dtype=torch.float64), atol=1e-12)


def test_projection_is_deterministic_and_dtype_independent():
    for config in PATH_CONFIGS:
        a = make_projection(20, config, dtype=torch.float64)
        b = make_projection(20, config, dtype=torch.float64)
        c = make_projection(20, config, dtype=torch.float32)
        for name in ("matrix", "signs"):
            ta, tb, tc = getattr(a, name), getattr(b, name), getattr(c, name)
            if ta is None:
                assert tb is None and tc is None
                continue
            assert torch.equal(ta, tb)
            # float32 projection = the float64 one rounded (drawn once, then cast)
            assert torch.equal(tc, ta.float())


def test_projected_rotation_preserves_norm_for_hadamard():
    # H D is orthogonal: with d' = n the projection keeps the norm of the (padded) token
    config = LSHConfig(rotation="hadamard", rounds=3, num_hashes=2)
    tokens = torch.randn(5, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for dense in (True, False):
        y = project(tokens, config, make_projection(20, config, dtype=torch.float64, dense=dense))  # (5, 2, 32)
        assert torch.allclose(y.norm(dim=2), tokens.norm(dim=1, keepdim=True).expand(5, 2), atol=1e-12)


# ---- hashing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", PATH_CONFIGS, ids=_ids)
def test_hash_codes_match_slow_reference(config):
    tokens = torch.randn(40, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = reference_hash_codes(tokens, config)
    for projection in _projections(20, config, torch.float64):
        codes = hash_codes(tokens, config, projection)
        assert codes.dtype == torch.int64 and tuple(codes.shape) == (40, config.num_hashes)
        assert int(codes.min()) >= 0 and int(codes.max()) < config.buckets_per_hash(20)
        assert torch.equal(codes, reference)


@pytest.mark.parametrize("config", PATH_CONFIGS, ids=_ids)
def test_hash_codes_deterministic_and_same_in_float32_and_float64(config):
    tokens64 = torch.randn(300, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    codes64 = hash_codes(tokens64, config)
    assert torch.equal(codes64, hash_codes(tokens64, config))
    # Same rotation in both dtypes; rounding could only flip a code at a near-tie, which for 300
    # Gaussian tokens (argmax gaps ~1e-2, rounding ~1e-6) does not happen at this seed.
    assert torch.equal(codes64, hash_codes(tokens64.float(), config))
    for projection32 in _projections(20, config, torch.float32)[1:]:
        assert torch.equal(codes64, hash_codes(tokens64.float(), config, projection32))
    other_seed = dataclasses.replace(config, seed=config.seed + 1)
    assert not torch.equal(codes64, hash_codes(tokens64, other_seed))


def test_hash_codes_scale_invariant_and_chunking_invisible():
    config = LSHConfig(proj_dim=8)
    tokens = torch.randn(5000, 16, generator=torch.Generator().manual_seed(4))
    codes = hash_codes(tokens, config)
    assert torch.equal(codes, hash_codes(3.0 * tokens, config))  # angular hash
    parts = torch.cat([hash_codes(tokens[:1234], config), hash_codes(tokens[1234:], config)])
    assert torch.equal(codes, parts)
    projection = make_projection(16, config)
    assert torch.equal(codes, hash_codes(tokens, config, projection))


def test_hash_codes_cross_polytope_vertex_convention():
    # identity-like check: the code names the largest |coordinate| and its sign
    config = LSHConfig(num_hashes=1, proj_dim=4)
    projection = make_projection(4, config, dtype=torch.float64)
    rotation = projection.matrix.T  # (d', d): y = R x
    wanted = torch.tensor([[0.1, -5.0, 0.2, 0.3], [0.1, 0.2, 7.0, -0.3]], dtype=torch.float64)  # (2, d')
    tokens = torch.linalg.solve(rotation, wanted.T).T  # tokens with R x = wanted
    assert hash_codes(tokens, config).squeeze(1).tolist() == [4 + 1, 2]


def test_hyperplane_collision_rate_matches_one_minus_theta_over_pi():
    # Each of the L = 4000 hashes is an independent Gaussian hyperplane, so for one fixed pair the
    # collisions are i.i.d. Bernoulli(1 - theta/pi). Tolerance: 3 standard errors
    # sqrt(p (1 - p) / L) (a false failure has probability ~0.3% per angle at a random seed; the
    # seed is fixed).
    num_hashes = 4000
    config = LSHConfig(family="hyperplane", num_hashes=num_hashes, seed=11)
    generator = torch.Generator().manual_seed(12)
    for theta in (0.2, 0.6, 1.0, 1.5, 2.2, 3.0):
        x, y = _pair_at_angle(32, theta, generator)
        codes = hash_codes(torch.stack([x, y]), config)  # (2, L)
        rate = float((codes[0] == codes[1]).double().mean())
        expected = 1 - theta / math.pi
        standard_error = math.sqrt(expected * (1 - expected) / num_hashes)
        assert abs(rate - expected) <= 3 * standard_error, (theta, rate, expected)


def test_hyperplane_hadamard_collision_rate_close_to_theory():
    # The pseudo-rotation is not exactly a uniform rotation: a looser absolute tolerance of 0.04
    # (about 5 standard errors at L = 4000) on the same law 1 - theta/pi.
    num_hashes = 4000
    config = LSHConfig(family="hyperplane", rotation="hadamard", num_hashes=num_hashes, seed=13)
    generator = torch.Generator().manual_seed(14)
    for theta in (0.3, 1.0, 2.0):
        x, y = _pair_at_angle(64, theta, generator)
        codes = hash_codes(torch.stack([x, y]), config)
        rate = float((codes[0] == codes[1]).double().mean())
        assert abs(rate - (1 - theta / math.pi)) <= 0.04, (theta, rate)


@pytest.mark.parametrize("rotation", ["gaussian", "hadamard"])
def test_cross_polytope_collision_rate_decreases_with_angle(rotation):
    # L = 3000 independent cross-polytope hashes with d' = d = 16. Consecutive angles must differ
    # by more than 3 standard errors of the difference (fixed seeds).
    num_hashes = 3000
    config = LSHConfig(num_hashes=num_hashes, rotation=rotation, seed=21)
    generator = torch.Generator().manual_seed(22)
    rates = []
    for theta in (0.0, 0.15, 0.4, 0.8, 1.2, 1.57):
        x, y = _pair_at_angle(16, theta, generator)
        codes = hash_codes(torch.stack([x, y]), config)
        rates.append(float((codes[0] == codes[1]).double().mean()))
    assert rates[0] == 1.0
    for near, far in zip(rates, rates[1:]):
        standard_error = math.sqrt((near * (1 - near) + far * (1 - far)) / num_hashes)
        assert near - far > 3 * standard_error, rates
    # at 90 degrees the code is nearly independent: ~1/(2d') = 1/32 (loose factor-of-3 band)
    assert rates[-1] < 3 / 32


# ---- bucket ids -----------------------------------------------------------------------------------
def test_bucket_ids_are_mixed_radix_of_the_codes():
    config = LSHConfig(proj_dim=3, num_hashes=4)
    tokens = torch.randn(500, 10, generator=torch.Generator().manual_seed(5))
    codes = hash_codes(tokens, config)
    ids = bucket_ids(tokens, config)
    expected = ((codes[:, 0] * 6 + codes[:, 1]) * 6 + codes[:, 2]) * 6 + codes[:, 3]
    assert torch.equal(ids, expected)
    assert int(ids.max()) < 6 ** 4


def test_bucket_ids_overflow_falls_back_to_exact_dense_ids():
    config = LSHConfig(num_hashes=20)  # (2 * 16)^20 = 2^100 ids: would overflow int64
    tokens = torch.randn(300, 16, generator=torch.Generator().manual_seed(6))
    tokens = torch.cat([tokens, tokens[:50]])  # duplicates must share an id
    ids = bucket_ids(tokens, config)
    codes = hash_codes(tokens, config)
    same_id = ids.unsqueeze(0) == ids.unsqueeze(1)  # (N, N)
    same_codes = (codes.unsqueeze(0) == codes.unsqueeze(1)).all(dim=2)  # (N, N)
    assert torch.equal(same_id, same_codes)
    assert torch.equal(ids[300:], ids[:50])


def test_bucket_ids_exact_mode_is_one_bucket_per_token():
    tokens = torch.ones(7, 4)
    assert bucket_ids(tokens, LSHConfig(exact=True)).tolist() == list(range(7))


# ---- compress / restore ---------------------------------------------------------------------------
@pytest.mark.parametrize("config", [LSHConfig(proj_dim=2, num_hashes=2), LSHConfig(family="hyperplane", num_hashes=3),
                                    LSHConfig(num_hashes=20), LSHConfig(exact=True)],
                         ids=["cp", "hyperplane", "overflow", "exact"])
def test_compress_matches_python_loop_reference(config):
    generator = torch.Generator().manual_seed(7)
    tokens = clustered_tokens(120, 12, num_clusters=6, noise=0.3, seed=7).double()
    group = torch.randint(0, 4, (120,), generator=generator)
    compressed = compress(tokens, group, config)
    reference = reference_compress(tokens, group, config)
    assert compressed.num_centroids == len(reference["keys"])
    assert torch.allclose(compressed.centroids, reference["centroids"], atol=1e-12)
    assert compressed.centroid_group.tolist() == [key[0] for key in reference["keys"]]
    assert compressed.centroid_count.tolist() == [len(m) for m in reference["members"]]
    for b, members in enumerate(reference["members"]):
        assert (compressed.token_to_centroid[members] == b).all()
    assert compressed.centroids_per_group(4).tolist() == torch.bincount(
        compressed.centroid_group, minlength=4).tolist()
    assert torch.equal(compressed.tokens_per_group(4), torch.bincount(group, minlength=4))


def test_different_groups_never_share_a_centroid():
    tokens = torch.randn(1, 8, generator=torch.Generator().manual_seed(0)).expand(40, 8).contiguous()  # 40 identical tokens
    group = torch.arange(40) % 5
    compressed = compress(tokens, group, LSHConfig())
    assert compressed.num_centroids == 5
    assert torch.equal(compressed.centroid_group, torch.arange(5))
    assert torch.equal(compressed.centroid_group[compressed.token_to_centroid], group)
    # contiguous per group, in group order
    assert compressed.centroids_per_group(7).tolist() == [1, 1, 1, 1, 1, 0, 0]


def test_restore_with_residual_and_identity_expert_reproduces_tokens():
    tokens = clustered_tokens(2000, 32, num_clusters=10, noise=0.2, seed=8)
    group = torch.randint(0, 8, (2000,), generator=torch.Generator().manual_seed(8))
    compressed = compress(tokens, group, LSHConfig(proj_dim=4, num_hashes=2))
    assert compressed.compression_rate < 0.5
    restored = restore(compressed.centroids, compressed, residuals(tokens, compressed))
    assert torch.allclose(restored, tokens, atol=1e-6)
    without = restore(compressed.centroids, compressed)
    assert torch.equal(without, compressed.centroids[compressed.token_to_centroid])
    assert centroid_error(tokens, compressed) > 0.05  # the residual is doing real work


def test_residual_compensation_helps_a_residual_block_expert():
    # E(x) ~= E(c) + (x - c) is first order with the Jacobian taken as I: it helps experts that
    # are close to the identity (a residual block x + f(x) with a small f), and would hurt one
    # whose Jacobian is small (the notebook shows both).
    torch.manual_seed(0)
    tokens = clustered_tokens(1000, 16, num_clusters=8, noise=0.3, seed=9)
    group = torch.zeros(1000, dtype=torch.int64)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))

    def expert(x: torch.Tensor) -> torch.Tensor:
        return x + mlp(x)

    with torch.no_grad():
        exact_out = expert(tokens)
        compressed = compress(tokens, group, LSHConfig(proj_dim=4, num_hashes=2))
        centroid_out = expert(compressed.centroids)
        plain = restore(centroid_out, compressed)
        compensated = restore(centroid_out, compressed, residuals(tokens, compressed))
    error_plain = float((plain - exact_out).norm() / exact_out.norm())
    error_compensated = float((compensated - exact_out).norm() / exact_out.norm())
    assert error_compensated < 0.5 * error_plain


def test_compression_rate_clustered_versus_random():
    group = torch.randint(0, 4, (4096,), generator=torch.Generator().manual_seed(10))
    clustered = clustered_tokens(4096, 64, num_clusters=16, noise=0.05, seed=10)
    rate_clustered = compress(clustered, group, LSHConfig(proj_dim=8, num_hashes=2)).compression_rate
    # at most 16 clusters x 4 groups (plus a few clusters split by a hash boundary) of 4096 tokens
    assert rate_clustered < 0.05
    random_tokens = torch.randn(4096, 64, generator=torch.Generator().manual_seed(11))
    rate_random = compress(random_tokens, group, LSHConfig(num_hashes=6)).compression_rate  # 128^6 buckets
    assert rate_random > 0.99


def test_finest_resolution_is_bit_exact():
    generator = torch.Generator().manual_seed(12)
    tokens = torch.randn(777, 24, generator=generator) * 10.0
    group = torch.randint(0, 9, (777,), generator=generator)
    compressed = compress(tokens, group, LSHConfig(exact=True))
    assert compressed.num_centroids == 777 and compressed.compression_rate == 1.0
    assert torch.equal(compressed.centroid_count, torch.ones(777, dtype=torch.int64))
    assert torch.equal(residuals(tokens, compressed), torch.zeros_like(tokens))
    assert torch.equal(restore(compressed.centroids, compressed), tokens)
    assert torch.equal(restore(compressed.centroids, compressed, residuals(tokens, compressed)), tokens)
    # centroids are the tokens sorted stably by group (the executor sends them in this order)
    order = torch.sort(group, stable=True).indices
    assert torch.equal(compressed.centroids, tokens[order])
    assert torch.equal(compressed.centroid_group, group[order])


def test_gradient_follows_the_mean_rule():
    generator = torch.Generator().manual_seed(13)
    tokens = clustered_tokens(300, 8, num_clusters=5, noise=0.2, seed=13).double().requires_grad_(True)
    group = torch.randint(0, 3, (300,), generator=generator)
    compressed = compress(tokens, group, LSHConfig(proj_dim=2, num_hashes=2))
    weight = torch.randn(compressed.num_centroids, 8, generator=generator, dtype=torch.float64)  # (B, d)
    (grad,) = torch.autograd.grad((weight * compressed.centroids).sum(), tokens, retain_graph=True)
    count = compressed.centroid_count.to(torch.float64).unsqueeze(1)  # (B, 1)
    expected = (weight / count)[compressed.token_to_centroid]  # (N, d)
    assert torch.allclose(grad, expected, atol=1e-14)
    # restore + residual with an identity expert is the identity map, so its Jacobian is I
    restored = restore(compressed.centroids, compressed, residuals(tokens, compressed))
    upstream = torch.randn(300, 8, generator=generator, dtype=torch.float64)
    (grad_restore,) = torch.autograd.grad((upstream * restored).sum(), tokens)
    assert torch.allclose(grad_restore, upstream, atol=1e-12)


def test_half_precision_tokens_hash_in_float32_and_stay_exact():
    generator = torch.Generator().manual_seed(17)
    tokens = torch.randn(500, 32, generator=generator).to(torch.bfloat16)
    group = torch.randint(0, 4, (500,), generator=generator)
    for config in (LSHConfig(proj_dim=8), LSHConfig(rotation="hadamard", rounds=1)):
        # made in float32, entries rounded to bfloat16 (exact products); the default projection
        # of bfloat16 tokens is this one
        projection = make_projection(32, config, dtype=torch.bfloat16)
        assert projection.dtype == torch.float32
        if projection.matrix is not None:
            assert torch.equal(projection.matrix.to(torch.bfloat16).float(), projection.matrix)
        assert torch.equal(hash_codes(tokens, config), hash_codes(tokens.float(), config, projection))
        assert torch.equal(hash_codes(tokens, config, projection), hash_codes(tokens.float(), config, projection))
    exact = compress(tokens, group, LSHConfig(exact=True))
    assert exact.centroids.dtype == torch.bfloat16
    assert torch.equal(restore(exact.centroids, exact, residuals(tokens, exact)), tokens)
    coarse = compress(tokens, group, LSHConfig(proj_dim=2, num_hashes=1))
    reference = compress(tokens.float(), group, LSHConfig(proj_dim=2, num_hashes=1),
                         make_projection(32, LSHConfig(proj_dim=2, num_hashes=1), dtype=torch.bfloat16))
    assert torch.equal(coarse.token_to_centroid, reference.token_to_centroid)
    assert torch.equal(coarse.centroids, reference.centroids.to(torch.bfloat16))  # one rounding


def test_empty_input():
    compressed = compress(torch.zeros(0, 8), torch.zeros(0, dtype=torch.int64), LSHConfig())
    assert compressed.num_centroids == 0 and compressed.num_tokens == 0
    assert compressed.compression_rate == 1.0
    assert compressed.centroids_per_group(3).tolist() == [0, 0, 0]
    assert tuple(restore(torch.zeros(0, 5), compressed).shape) == (0, 5)
    assert tuple(hash_codes(torch.zeros(0, 8), LSHConfig()).shape) == (0, 6)


def test_compressed_send_counts_against_the_plan():
    generator = torch.Generator().manual_seed(14)
    placement = contiguous_placement(num_experts=8, world_size=4, gpus_per_node=2)
    tokens = clustered_tokens(800, 16, num_clusters=4, noise=0.05, seed=14)
    token_rank = torch.arange(4).repeat_interleave(200)
    logits = torch.randn(800, 8, generator=generator)
    plan = route_topk(logits, placement, k=2, capacity_factor=1.25, token_rank=token_rank)
    exact = compressed_send_counts(tokens, plan, LSHConfig(exact=True))
    assert torch.equal(exact, plan.send_counts())
    coarse = compressed_send_counts(tokens, plan, LSHConfig(proj_dim=4, num_hashes=1))
    assert (coarse <= plan.send_counts()).all()
    # 4 clusters and 8 codes per hash: at most 8 centroids per (source rank, expert), 2 experts per rank
    assert (coarse <= 8 * 2).all() and int(coarse.sum()) < int(plan.send_counts().sum()) // 4


# ---- clustered tokens -----------------------------------------------------------------------------
def test_clustered_tokens():
    a = clustered_tokens(100, 16, num_clusters=3, noise=0.0, seed=1)
    assert tuple(a.shape) == (100, 16) and a.dtype == torch.float32
    assert torch.equal(a, clustered_tokens(100, 16, num_clusters=3, noise=0.0, seed=1))
    assert torch.unique(a, dim=0).shape[0] <= 3
    assert torch.allclose(a.norm(dim=1), torch.ones(100), atol=1e-5)
    noisy = clustered_tokens(4000, 256, num_clusters=1, noise=0.5, seed=2)
    relative_noise = (noisy - noisy.mean(dim=0)).norm(dim=1).mean()
    assert abs(float(relative_noise) - 0.5) < 0.02  # E||g|| / sqrt(d) ~= 1 for d = 256
    for kwargs, needle in (({"noise": -0.1}, "noise=-0.1"), ({"noise": float("nan")}, "noise=nan"),
                           ({"num_clusters": 0}, "num_clusters=0")):
        args = {"num_tokens": 10, "d_model": 4, "num_clusters": 2, "noise": 0.1, **kwargs}
        with pytest.raises(ValueError, match=needle):
            clustered_tokens(**args)


# ---- bad input ------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_errors():
    config = LSHConfig()
    tokens = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    group = torch.zeros(10, dtype=torch.int64)
    with pytest.raises(ValueError, match="2-D"):
        hash_codes(torch.ones(10), config)
    with pytest.raises(ValueError, match="floating point"):
        hash_codes(torch.ones(10, 4, dtype=torch.int64), config)
    nan_tokens = tokens.clone()
    nan_tokens[3, 1] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        compress(nan_tokens, group, config)
    inf_tokens = tokens.clone()
    inf_tokens[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        bucket_ids(inf_tokens, config)
    big = torch.full((4, 4), 3e38)  # finite, but the fast check's sum overflows: must not raise
    assert tuple(hash_codes(big, config).shape) == (4, 6)
    with pytest.raises(ValueError, match="group has shape"):
        compress(tokens, torch.zeros(9, dtype=torch.int64), config)
    with pytest.raises(ValueError, match="int64"):
        compress(tokens, torch.zeros(10, dtype=torch.int32), config)
    with pytest.raises(ValueError, match="negative value -1"):
        compress(tokens, torch.full((10,), -1), config)
    compressed = compress(tokens, group, config)
    with pytest.raises(ValueError, match="centroid_out has shape"):
        restore(torch.zeros(compressed.num_centroids + 1, 4), compressed)
    with pytest.raises(ValueError, match="residual has shape"):
        restore(compressed.centroids, compressed, torch.zeros(9, 4))
    with pytest.raises(ValueError, match="tokens have shape"):
        residuals(torch.zeros(10, 5), compressed)
    with pytest.raises(ValueError, match="num_groups=0"):
        compressed.centroids_per_group(0)
    far_group = torch.full((10,), 6)
    with pytest.raises(ValueError, match="num_groups=3"):
        compress(tokens, far_group, config).centroids_per_group(3)
    with pytest.raises(ValueError, match="d_model=4, tokens have 5"):
        hash_codes(torch.randn(3, 5), config, make_projection(4, config))
    with pytest.raises(ValueError, match="projection was made for"):
        hash_codes(tokens, config, make_projection(4, LSHConfig(seed=1)))
    with pytest.raises(ValueError, match="float64"):
        hash_codes(tokens, config, make_projection(4, config, dtype=torch.float64))
    with pytest.raises(ValueError, match="token_to_centroid has shape"):
        Compressed(torch.zeros(2, 3), torch.zeros(4, dtype=torch.int64), torch.zeros(2, dtype=torch.int64),
                   torch.ones(2, dtype=torch.int64), num_tokens=5)


# ---- properties -----------------------------------------------------------------------------------
@settings(deadline=None, max_examples=25)
@given(num_tokens=st.integers(0, 60), d_model=st.integers(1, 12), num_groups=st.integers(1, 4),
       num_hashes=st.integers(1, 4), proj_dim=st.sampled_from([None, 1, 2, 3]),
       rotation=st.sampled_from(["gaussian", "hadamard"]), exact=st.booleans(), seed=st.integers(0, 2 ** 32))
def test_compress_invariants(num_tokens, d_model, num_groups, num_hashes, proj_dim, rotation, exact, seed):
    if rotation == "hadamard" and proj_dim is not None and proj_dim > (1 << (d_model - 1).bit_length()):
        proj_dim = None
    config = LSHConfig(num_hashes=num_hashes, proj_dim=proj_dim, rotation=rotation, exact=exact, seed=seed % 1000)
    generator = torch.Generator().manual_seed(seed)
    # few distinct tokens, so that buckets really hold several of them
    tokens = torch.randn(max(num_tokens // 3, 1), d_model, generator=generator, dtype=torch.float64)
    tokens = tokens[torch.randint(0, tokens.shape[0], (num_tokens,), generator=generator)]
    group = torch.randint(0, num_groups, (num_tokens,), generator=generator)
    compressed = compress(tokens, group, config)
    assert int(compressed.centroid_count.sum()) == num_tokens
    assert (compressed.centroid_count >= 1).all()
    assert torch.equal(compressed.centroid_group[compressed.token_to_centroid], group)
    assert (compressed.centroid_group[1:] >= compressed.centroid_group[:-1]).all()  # contiguous per group
    assert int(compressed.centroids_per_group(num_groups).sum()) == compressed.num_centroids
    ids = bucket_ids(tokens, config)
    for b in range(compressed.num_centroids):
        members = (compressed.token_to_centroid == b).nonzero().squeeze(1)
        assert torch.unique(ids[members]).numel() == 1  # one bucket per centroid
        assert torch.allclose(compressed.centroids[b], tokens[members].mean(dim=0), atol=1e-12)
    # (group, bucket) pairs of different centroids differ
    pairs = {(int(group[t]), int(ids[t])) for t in range(num_tokens)}
    assert len(pairs) == compressed.num_centroids
    restored = restore(compressed.centroids, compressed, residuals(tokens, compressed))
    assert torch.allclose(restored, tokens, atol=1e-12)


# ---- device ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", PATH_CONFIGS[:5], ids=_ids)
def test_same_hashes_on_cpu_and_cuda(config):
    tokens = torch.randn(2000, 20, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    cpu = hash_codes(tokens, config)
    cuda = hash_codes(tokens.cuda(), config)
    assert cuda.device.type == "cuda"
    assert torch.equal(cpu, cuda.cpu())
    group = torch.randint(0, 3, (2000,), generator=torch.Generator().manual_seed(16))
    compressed_cpu = compress(tokens, group, config)
    compressed_cuda = compress(tokens.cuda(), group.cuda(), config)
    assert torch.equal(compressed_cpu.token_to_centroid, compressed_cuda.token_to_centroid.cpu())
    assert torch.allclose(compressed_cpu.centroids, compressed_cuda.centroids.cpu(), atol=1e-12)
