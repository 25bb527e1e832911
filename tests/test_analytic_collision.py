"""lshsim.analytic.collision: integral vs Monte Carlo vs slow references, amplification, compression vs lsh.py."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import integrate, special

from lshsim.analytic import collision
from lshsim.analytic._common import binomial_estimate
from lshsim.analytic.collision import _conditional_code_probs, _cp_integral


def _slow_cross_polytope(d: int, alpha: float) -> float:
    """Slow, obvious reference: adaptive 2-D quadrature (scipy dblquad) of 2d phi_alpha(x, y) q^(d-1),
    with q(x, y) = int_{-x}^{x} phi(u) [Phi((y - alpha u)/s) - Phi((-y - alpha u)/s)] du by 200-node
    Gauss-Legendre (a different route than the Owen's T rectangle of the fast path)."""
    s = np.sqrt(1 - alpha * alpha)
    t, w = np.polynomial.legendre.leggauss(200)

    def rectangle(x, y):
        u = x * t
        return np.sum(x * w * np.exp(-u * u / 2) / np.sqrt(2 * np.pi)
                      * (special.ndtr((y - alpha * u) / s) - special.ndtr((-y - alpha * u) / s)))

    def integrand(y, x):
        density = np.exp(-(x * x - 2 * alpha * x * y + y * y) / (2 * s * s)) / (2 * np.pi * s)
        return density * rectangle(x, y) ** (d - 1)

    value, _ = integrate.dblquad(integrand, 0, 9, 0, 9, epsabs=1e-11, epsrel=1e-9)
    return 2 * d * value


# ---- hyperplane --------------------------------------------------------------------------------
@pytest.mark.parametrize("d,cos", [(8, 0.0), (32, 0.5), (128, 0.9), (64, -0.3)])
def test_hyperplane_formula_matches_empirical_hashing(d, cos):
    # tolerance: 3 standard errors of the proportion (fixed seed)
    estimate = collision.hyperplane_collision_monte_carlo(d, cos, num_samples=40_000, seed=d)
    assert abs(estimate.z_score(collision.hyperplane_collision_probability(cos))) < 3


def test_hyperplane_is_the_one_dimensional_cross_polytope():
    alpha = np.linspace(-0.95, 0.95, 9)
    for a in alpha:  # the integral with d = 1 (a sign bit) is 1 - theta/pi
        assert _cp_integral(np.array([1.0]), float(a), 128)[0] == pytest.approx(
            collision.hyperplane_collision_probability(a), abs=1e-10)


# ---- cross-polytope ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("d", [16, 64, 256, 1024])
def test_cross_polytope_integral_matches_monte_carlo(d):
    """Integral vs direct hashing of sampled pairs, cos in {0.5, 0.8, 0.9, 0.95}: within 3 standard errors.

    The same draws serve the four cosines; samples per d keep the cost near 2e7 normals.
    """
    cosines = [0.5, 0.8, 0.9, 0.95]
    samples = min(60_000, int(2e7 // d))
    estimates = collision.cross_polytope_collision_monte_carlo(d, cosines, num_samples=samples, seed=d)
    exact = collision.cross_polytope_collision_probability(d, cosines)
    for c, estimate, value in zip(cosines, estimates, exact):
        assert abs(estimate.z_score(value)) < 3, (d, c, value, estimate)


@pytest.mark.parametrize("d,cos", [(16, 0.5), (64, 0.9)])
def test_cross_polytope_fast_integral_matches_slow_reference(d, cos):
    fast = collision.cross_polytope_collision_probability(d, cos)
    assert fast == pytest.approx(_slow_cross_polytope(d, cos), abs=1e-10)


def test_cross_polytope_special_values_and_accuracy():
    dims = np.array([2, 16, 256, 1024])
    np.testing.assert_allclose(collision.cross_polytope_collision_probability(dims, 0.0), 1 / (2 * dims), rtol=1e-9)
    assert collision.cross_polytope_collision_probability(1024, 1.0) == 1.0
    assert collision.cross_polytope_collision_probability(1024, -1.0) == 0.0
    values = collision.cross_polytope_collision_probability(256, np.linspace(-0.9, 0.99, 20))
    assert np.all(np.diff(values) > 0)  # more similar, more collisions
    for c in (0.5, 0.95, 0.99):  # 1e-4 absolute at d = 1024 with room to spare
        fine = collision.cross_polytope_collision_probability(1024, c, nodes=256)
        value, error = collision.cross_polytope_collision_probability(1024, c, return_error=True)
        assert abs(value - fine) < 1e-6 and error < 1e-5


def test_cross_polytope_is_fast():
    collision.cross_polytope_collision_probability(1024, 0.85)  # warm-up
    start = time.perf_counter()
    collision.cross_polytope_collision_probability(1024, 0.9)
    assert time.perf_counter() - start < 3.0  # the benchmark shows < 1 s; slack for a shared CI core


def test_asymptotic_error_is_reported_in_the_docs():
    rows = collision.asymptotic_error_table()
    for row in rows:
        assert f"{row['integral']:.4f} / {row['asymptotic']:.4f}" in collision.__doc__
        assert 1.3 < row["ratio"] < 3.0  # the asymptotic form overstates Pr at practical d
    assert collision.cross_polytope_collision_asymptotic(1024, 0.9) == pytest.approx(1024 ** (-0.1 / 1.9))


def test_amplification():
    assert collision.amplify(0.5, 3) == pytest.approx(0.125)
    assert collision.amplify(0.5, 2, 3) == pytest.approx(1 - 0.75 ** 3)
    np.testing.assert_allclose(collision.amplify(np.array([0.0, 1.0]), 6, 4), [0.0, 1.0])
    # a grid of K concatenated and L tables: Pr[some table collides] = Pr[Binomial(L, p^K) >= 1]
    # (scipy's binomial survival function, an independent route), broadcasting p against K and L;
    # atol 1e-15: amplify's 1 - (1 - x)^L rounds at the last bit of 1 when x = p^K is tiny (0.05^8 = 4e-11)
    p = np.array([0.05, 0.3, 0.5, 0.8, 0.97])[:, None, None]
    k = np.arange(1, 9)[None, :, None]
    tables = np.array([1, 2, 5, 8, 16])[None, None, :]
    from scipy import stats

    np.testing.assert_allclose(collision.amplify(p, k, tables), stats.binom.sf(0, tables, p ** k), rtol=1e-12,
                               atol=1e-15)
    with pytest.raises(ValueError, match="p=1.2"):
        collision.amplify(1.2, 2)
    with pytest.raises(ValueError, match="num_tables=0"):
        collision.amplify(0.5, 2, 0)


@pytest.mark.parametrize("call, message", [
    (lambda: collision.cross_polytope_collision_probability(1, 0.5), "d=1"),
    (lambda: collision.cross_polytope_collision_probability(16.5, 0.5), "d=16.5"),
    (lambda: collision.cross_polytope_collision_probability(16, 1.5), "cos=1.5"),
    (lambda: collision.cross_polytope_collision_probability(16, float("nan")), "cos=nan"),
    (lambda: collision.hyperplane_collision_probability(-1.01), "cos=-1.01"),
    (lambda: collision.cross_polytope_collision_asymptotic(0, 0.5), "d=0"),
    (lambda: collision.cross_polytope_collision_monte_carlo(16, 0.5, num_samples=0), "num_samples=0"),
    (lambda: collision.expected_buckets_clusters([10, -2], 0.9, 8), "cluster_sizes=-2"),
    (lambda: collision.expected_buckets_clusters([10, 2], 1.2, 8), "within_cos=1.2"),
    (lambda: collision.expected_buckets_clusters([10, 2], 0.9, 8, family="simhash"), "family='simhash'"),
    (lambda: collision.collision_probability("spherical", 16, 0.5), "family='spherical'"),
    (lambda: collision.predicted_compression_rate(np.eye(4), 4, 2, model="kmeans"), "model='kmeans'"),
    (lambda: collision.predicted_compression_rate(np.eye(4), 4, 2, cos_threshold=0.3), "cos_threshold=0.3"),
    (lambda: collision.predicted_compression_rate(np.eye(4), 4, 2, num_draws=1), "num_draws=1"),
    (lambda: collision.token_tree(np.zeros((3, 4))), "row 0 has zero norm"),
    (lambda: collision.token_tree(np.ones(4)), "2-D"),
    (lambda: collision.expected_buckets_tree(np.eye(3), 4, 2), "must be a TokenTree"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---- expected buckets and compression rate -------------------------------------------------------
def test_conditional_code_probabilities_sum_to_one_and_match_sampling():
    rng = np.random.default_rng(0)
    for rho in (0.0, 0.5, 0.95, 0.999):
        for dim in (1, 4, 32):
            probs = _conditional_code_probs(rng.standard_normal((3, dim)), rho)
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    # given U, sample the noise and hash (tolerance: 4 standard errors per code)
    latent = rng.standard_normal((1, 6))
    probs = _conditional_code_probs(latent, 0.8)[0]
    z = np.sqrt(0.8) * latent + np.sqrt(0.2) * rng.standard_normal((100_000, 6))
    index = np.abs(z).argmax(axis=1)
    codes = index + 6 * (z[np.arange(z.shape[0]), index] < 0)
    freq = np.bincount(codes, minlength=12) / z.shape[0]
    assert np.all(np.abs(freq - probs) <= 4 * np.sqrt(probs * (1 - probs) / z.shape[0]) + 1e-12)


def _simulate_clusters(sizes, rho, dim, num_hashes, reps, seed):
    """Brute-force the exchangeable model: Z_i = U + r V_i per hash, count distinct code tuples."""
    rng = np.random.default_rng(seed)
    ratio = np.sqrt(1 / rho - 1)
    totals = []
    for _ in range(reps):
        codes = []
        for m in sizes:
            block = np.empty((m, num_hashes), dtype=np.int64)
            for h in range(num_hashes):
                z = rng.standard_normal(dim) + ratio * rng.standard_normal((m, dim))
                index = np.abs(z).argmax(axis=1)
                block[:, h] = index + dim * (z[np.arange(m), index] < 0)
            codes.append(block)
        # clusters are independent and share the bucket space
        totals.append(len(np.unique(np.vstack(codes), axis=0)) / sum(sizes))
    return np.mean(totals), np.std(totals, ddof=1) / np.sqrt(reps)


def test_cluster_model_matches_its_brute_force_simulation():
    sizes, rho, dim, hashes = [40] * 6 + [10] * 6, 0.95, 6, 2
    predicted = collision.expected_buckets_clusters(sizes, rho, dim, hashes, num_tuples=2000, seed=1)
    mean, stderr = _simulate_clusters(sizes, rho, dim, hashes, reps=300, seed=2)
    # tolerance: 3 combined standard errors (simulation and the prediction's latent Monte Carlo)
    assert abs(predicted.compression_rate - mean) < 3 * np.hypot(stderr, predicted.stderr), (predicted, mean, stderr)
    duplicates = collision.expected_buckets_clusters([30, 20], 1.0, 16, 6)
    assert duplicates.expected_buckets == pytest.approx(2.0)


@pytest.mark.slow
@pytest.mark.parametrize("family,num_clusters,noise,proj_dim,hashes", [
    ("cross_polytope", 32, 0.2, 32, 6), ("cross_polytope", 16, 0.3, 16, 6), ("hyperplane", 16, 0.2, None, 8)])
def test_predicted_compression_rate_matches_lsh_py(family, num_clusters, noise, proj_dim, hashes):
    """Predicted vs measured (mean of lsh.py over 24 hash seeds) compression rate: within 5% relative."""
    from lshsim.dispatch.lsh import LSHConfig, clustered_tokens

    num_tokens, d_model = 1024, 128
    tokens = clustered_tokens(num_tokens, d_model, num_clusters, noise, seed=0)
    measured = collision.measured_compression_rate(tokens, LSHConfig(family=family, num_hashes=hashes,
                                                                     proj_dim=proj_dim), num_draws=24)
    from_components = collision.predicted_compression_rate(tokens, proj_dim, hashes, family=family,
                                                           model="components", num_tuples=2000)
    from_tree = collision.predicted_compression_rate(tokens, proj_dim, hashes, family=family)  # the default model
    from_params = collision.clustered_compression_rate(num_tokens, num_clusters, noise, d_model, proj_dim, hashes,
                                                       family=family, num_tuples=2000)
    for prediction in (from_components, from_tree, from_params):
        assert prediction.compression_rate == pytest.approx(measured.estimate, rel=0.05), (prediction, measured)


def test_clusters_from_tokens():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:3] * 5
    tokens = np.repeat(centres, [4, 6, 1], axis=0) + 0.01 * rng.standard_normal((11, 16))
    labels, sizes, within = collision.clusters_from_tokens(tokens)
    assert sorted(sizes.tolist()) == [1, 4, 6]
    assert np.all(within > 0.99) and labels.shape == (11,)


@pytest.mark.parametrize("family,proj_dim,cos", [("cross_polytope", 16, 0.8), ("cross_polytope", 64, 0.5),
                                                 ("hyperplane", None, 0.3)])
def test_formulas_match_lsh_py_hash_codes(family, proj_dim, cos):
    """One fixed pair hashed by 8,192 independent hash functions of lsh.py (Gaussian rotation):
    the fraction of equal codes matches the formula with d = proj_dim (tolerance: 3 standard errors)."""
    import torch

    from lshsim.dispatch.lsh import LSHConfig, hash_codes

    rng = np.random.default_rng(5)
    x, y = collision._pairs_at_cos(rng, 1, 96, cos)
    tokens = torch.as_tensor(np.vstack([x, y]), dtype=torch.float32)  # (2, 96)
    codes = hash_codes(tokens, LSHConfig(family=family, num_hashes=8192, proj_dim=proj_dim, seed=3))  # (2, L)
    hits = int((codes[0] == codes[1]).sum())
    estimate = binomial_estimate(hits, codes.shape[1])
    expected = collision.collision_probability(family, proj_dim or 2, cos)
    assert abs(estimate.z_score(expected)) < 3, (expected, estimate)


def test_collision_summary_and_its_checks():
    s = collision.collision_summary("cross-polytope", 1024, 0.9, hashes=6, tables=2)
    p = collision.cross_polytope_collision_probability(1024, 0.9)
    assert s["probability"] == pytest.approx(p, rel=1e-12) and s["family"] == "cross-polytope"
    assert s["concatenated"] == pytest.approx(p ** 6) and s["amplified"] == pytest.approx(1 - (1 - p ** 6) ** 2)
    assert s["asymptotic"] == pytest.approx(1024 ** (-0.1 / 1.9)) and 0 <= s["quadrature_error"] < 1e-6
    h = collision.collision_summary("hyperplane", 64, 0.5)
    assert h["probability"] == pytest.approx(2 / 3) and h["asymptotic"] is None and h["quadrature_error"] == 0.0
    for kwargs, message in [(dict(family="spherical"), "family='spherical'"), (dict(hashes=0), "hashes=0"),
                            (dict(tables=0), "tables=0"), (dict(family="hyperplane", d=1), "d=1"),
                            (dict(cos=1.5), "cos=1.5")]:
        args = {"family": "cross_polytope", "d": 64, "cos": 0.5, **kwargs}
        with pytest.raises(ValueError, match=message):
            collision.collision_summary(**args)


def test_collision_monte_carlo_picks_the_family():
    assert collision.canonical_family("cross-polytope") == "cross_polytope"
    estimate = collision.collision_monte_carlo("hyperplane", 32, 0.5, 4000, seed=1)
    assert estimate.num_samples == 4000 and abs(estimate.z_score(2 / 3)) < 4


# ---- the nested (tree) model ---------------------------------------------------------------------
def _nested_tokens(spec, d: int, seed: int = 0) -> np.ndarray:
    """Tokens whose cosines are EXACTLY a given tree's: spec is (cos, [children]) with a child either a
    token count (that many tokens at the node's cosine) or a nested spec. Every node and token gets its
    own orthonormal direction, token = sum over its path of sqrt(cos_v - cos_parent) q_v."""
    basis = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0].T  # (d, d) orthonormal rows
    rows, used = [], [0]

    def take():
        used[0] += 1
        return basis[used[0] - 1]

    def walk(node, parent_cos, prefix):
        cos, children = node
        here = prefix + np.sqrt(cos - parent_cos) * take()
        for child in children:
            if isinstance(child, tuple):
                walk(child, cos, here)
            else:
                rows.extend(here + np.sqrt(1.0 - cos) * take() for _ in range(child))

    walk(spec, 0.0, np.zeros(d))
    return np.asarray(rows)


def _leaves(tree, node):
    n = tree.num_tokens
    return [node] if node < n else _leaves(tree, tree.children[node - n][0]) + _leaves(tree, tree.children[node - n][1])


def test_token_tree_heights_are_the_mean_cosines_between_the_merged_groups():
    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((40, 24)) + 0.8 * rng.standard_normal(24)  # a shared direction, cos ~0.4
    tokens[:5] = tokens[0] + 0.01 * rng.standard_normal((5, 24))  # near-duplicates
    tree = collision.token_tree(tokens)
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    cos = unit @ unit.T
    n = tree.num_tokens
    assert tree.children.shape == (n - 1, 2) and tree.height.shape == (2 * n - 1,) and tree.clipped == 0
    for i, (left, right) in enumerate(tree.children):  # brute force: the block of the cosine matrix
        block = cos[np.ix_(_leaves(tree, left), _leaves(tree, right))]
        assert tree.height[n + i] == pytest.approx(block.mean(), abs=1e-12)
        assert tree.height[n + i] <= min(tree.height[left], tree.height[right]) + 1e-12  # no inversions
    assert tree.height[2 * n - 2] > 0.2 and tree.height[n:].max() > 0.99  # the shared direction; the duplicates
    assert collision.token_tree(tokens[:1]).height.tolist() == [1.0]


def test_tree_model_reduces_to_the_exchangeable_cluster_model():
    """Orthogonal exchangeable clusters are a tree with its root at cosine 0: both models must agree
    (independent routes: the clusters' semi-analytic integral vs the tree's Monte Carlo)."""
    sizes, rhos = [20, 20, 10, 5, 1], [0.9, 0.7, 0.95, 0.5, 1.0]
    tokens = _nested_tokens((0.0, [(rho, [m]) for m, rho in zip(sizes, rhos)]), d=80)
    tree = collision.token_tree(tokens)
    assert tree.height[-1] == pytest.approx(0.0, abs=1e-12)
    for family, dim, hashes in (("cross_polytope", 4, 3), ("hyperplane", None, 6)):
        clusters = collision.expected_buckets_clusters(sizes, rhos, dim, hashes, family=family, num_tuples=2000,
                                                       seed=1)
        nested = collision.expected_buckets_tree(tree, dim, hashes, family=family, num_draws=2000, seed=2)
        assert abs(nested.compression_rate - clusters.compression_rate) < \
            3 * np.hypot(nested.stderr, clusters.stderr) + 1e-3, (family, nested, clusters)


def test_tree_model_matches_lsh_py_on_nested_tokens_where_the_cluster_model_misses():
    """A shared direction (cos 0.25), loose clusters (0.5) and tight sub-clusters (0.9): the tree is exact
    here, so the prediction must equal lsh.py's measured rate (Gaussian rotation) within Monte Carlo error;
    the components model (orthogonal clusters, one mean cosine each) over-predicts."""
    from lshsim.dispatch.lsh import LSHConfig

    spec = (0.25, [(0.5, [(0.9, [4]), (0.9, [3]), 2]) for _ in range(6)] + [(0.9, [5]), 3])
    tokens = _nested_tokens(spec, d=128)
    assert len(tokens) == 62
    measured = collision.measured_compression_rate(tokens, LSHConfig(num_hashes=2, proj_dim=8), num_draws=400)
    tree = collision.predicted_compression_rate(tokens, 8, 2, num_draws=2000, seed=3)
    assert abs(tree.compression_rate - measured.estimate) < 3 * np.hypot(tree.stderr, measured.stderr) + 1e-3, \
        (tree, measured)
    components = collision.predicted_compression_rate(tokens, 8, 2, model="components", num_tuples=400)
    assert components.compression_rate > 1.1 * measured.estimate, (components, measured)
