"""lshsim.analytic.capacity: Theorem 1 forms vs Monte Carlo and closed cases, overflow vs the real router."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lshsim.analytic import capacity


# ---- p_delta -----------------------------------------------------------------------------------
@pytest.mark.parametrize("d,delta", [(8, 0.3), (8, 0.7), (64, 0.1), (64, 0.25), (512, 0.05), (512, 0.1)])
def test_p_delta_exact_matches_monte_carlo_on_the_sphere(d, delta):
    # tolerance: 3 standard errors of the Monte Carlo proportion (fixed seed)
    estimate = capacity.p_delta_monte_carlo(d, delta, num_samples=40_000, seed=d)
    exact = capacity.p_delta(d, delta)
    assert abs(estimate.z_score(exact)) < 3, (exact, estimate)
    # the estimate is a proportion of the 40,000 draws: its standard error is sqrt(p (1 - p) / n)
    assert estimate.num_samples == 40_000 and round(estimate.estimate * 40_000) == pytest.approx(estimate.estimate * 40_000)
    assert estimate.stderr == pytest.approx(math.sqrt(estimate.estimate * (1 - estimate.estimate) / 40_000), rel=1e-12)


def test_p_delta_closed_cases():
    delta = np.linspace(0.01, 0.99, 50)
    # d = 3: a coordinate of a uniform point on S^2 is uniform on [-1, 1] (Archimedes)
    np.testing.assert_allclose(capacity.p_delta(3, delta), 1 - delta, rtol=1e-12)
    # d = 2: x_1 = cos(phi), phi uniform: Pr[|cos phi| >= delta] = (2/pi) arccos(delta)
    np.testing.assert_allclose(capacity.p_delta(2, delta), 2 / np.pi * np.arccos(delta), rtol=1e-12)
    # x_1^2 ~ Beta(1/2, (d-1)/2) in any dimension
    np.testing.assert_allclose(capacity.p_delta(100, delta), stats.beta.sf(delta ** 2, 0.5, 99 / 2), rtol=1e-10)


def test_where_the_erfc_form_departs_from_the_exact_one():
    forms = capacity.p_delta_forms(np.array([[64], [512], [4096]]), np.array([0.01, 0.03, 0.1, 0.3]))
    err = np.abs(forms["erfc_rel_err"])  # (3, 4)
    assert np.all(err[:, :3] < 0.015)  # within 1.5% for delta <= 0.1 once d >= 64
    assert np.all(err[:, 3] > 0.05)  # 5-8% off at delta = 0.3
    # the exponential form is an upper bound on erfc (erfc(z) <= exp(-z^2)), hence ec_min_exp <= ec_min_erfc
    assert np.all(forms["exp"] >= forms["erfc"])
    d, delta = np.meshgrid([8, 64, 512, 4096], np.geomspace(1e-3, 0.9, 30))
    assert np.all(capacity.ec_min(16, d, delta, "exp") <= capacity.ec_min(16, d, delta, "erfc"))


def test_ec_min_broadcasts_and_matches_the_formula():
    n = np.array([8, 16, 32])[:, None, None]
    d = np.array([1024, 4096])[None, :, None]
    delta = np.array([0.01, 0.03])[None, None, :]
    values = capacity.ec_min(n, d, delta)
    assert values.shape == (3, 2, 2)
    assert values[1, 1, 1] == pytest.approx(1 / (16 * capacity.p_delta(4096, 0.03)), rel=1e-14)
    assert capacity.ec_min(16, 4096, 0.03, "erfc") == pytest.approx(
        1 / (16 * math.erfc(math.sqrt(0.03 ** 2 * 4096 / (2 - 0.03 ** 2)))), rel=1e-14)
    assert capacity.ec_min(16, 4096, 0.03, "exp") == pytest.approx(
        math.exp(0.03 ** 2 * 4096 / (2 - 0.03 ** 2)) / 16, rel=1e-14)
    assert np.isinf(capacity.ec_min(16, 100_000, 0.5))  # p_delta underflows: reported, not hidden


@pytest.mark.parametrize("call, message", [
    (lambda: capacity.p_delta(1, 0.1), "d=1"),
    (lambda: capacity.p_delta(64.5, 0.1), "d=64.5"),
    (lambda: capacity.p_delta(64, 0.0), "delta=0.0"),
    (lambda: capacity.p_delta(64, 1.0), "delta=1.0"),
    (lambda: capacity.p_delta(64, -0.2), "delta=-0.2"),
    (lambda: capacity.p_delta(64, float("nan")), "delta=nan"),
    (lambda: capacity.p_delta_erfc(np.array([64, 0]), 0.1), "d=0"),
    (lambda: capacity.ec_min(-1, 64, 0.1), "n=-1"),
    (lambda: capacity.ec_min(2.5, 64, 0.1), "n=2.5"),
    (lambda: capacity.ec_min(16, 64, 0.1, form="beta"), "form='beta'"),
    (lambda: capacity.p_delta_monte_carlo(64, 0.1, num_samples=-5), "num_samples=-5"),
    (lambda: capacity.expected_overflow(100, 1.5, 10), "inclusion=1.5"),
    (lambda: capacity.expected_overflow(100, 0.1, -1), "capacity=-1"),
    (lambda: capacity.expected_overflow(-100, 0.1, 1), "num_tokens=-100"),
    (lambda: capacity.expected_overflow(100, 0.1, 1, method="exactly"), "method='exactly'"),
    (lambda: capacity.expected_dropped_fraction(100, 2, 10, inclusion=[0.5, 0.5, 0.5]), "sums to 1.5"),
    (lambda: capacity.topk_inclusion_probabilities([0.5, 0.0, 0.5], 2), "popularity=0.0"),
    (lambda: capacity.topk_inclusion_probabilities([0.5, 0.5], 3), "k=3"),
    (lambda: capacity.capacity_from_factor(100, 2, 8, 0.0), "capacity_factor=0.0"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---- overflow -----------------------------------------------------------------------------------
def test_expected_overflow_closed_form_matches_direct_summation():
    for tokens, q, cap in [(100, 0.1, 10), (100, 0.1, 0), (1, 0.3, 0), (1, 0.3, 1), (4096, 1 / 16, 300),
                           (4096, 0.2, 700), (50, 0.9, 49)]:
        j = np.arange(tokens + 1)
        direct = float(np.sum(np.maximum(j - cap, 0) * stats.binom.pmf(j, tokens, q)))
        assert capacity.expected_overflow(tokens, q, cap) == pytest.approx(direct, rel=1e-9, abs=1e-12)
        mean = tokens * q
        direct_poisson = float(np.sum(np.maximum(np.arange(5 * tokens + 50) - cap, 0)
                                      * stats.poisson.pmf(np.arange(5 * tokens + 50), mean)))
        poisson = capacity.expected_overflow(tokens, q, cap, "poisson")
        assert poisson == pytest.approx(direct_poisson, rel=1e-9, abs=1e-12)
    # arrays broadcast: every element equals the scalar call
    grid = capacity.expected_overflow(np.array([100, 200]), 0.1, np.array([[5], [10]]))
    assert grid.shape == (2, 2)
    for i, cap in enumerate((5, 10)):
        for j, tokens in enumerate((100, 200)):
            assert grid[i, j] == capacity.expected_overflow(tokens, 0.1, cap)


@pytest.mark.parametrize("tokens,q,cap", [(100, 0.1, 10), (100, 0.1, 0), (4096, 1 / 16, 300), (50, 0.9, 49),
                                          (200, 0.02, 1)])
def test_expected_overflow_normal_matches_numerical_integration(tokens, q, cap):
    """method="normal": E[(N - C)^+] for N ~ Normal(T q, T q (1 - q)), against scipy.integrate.quad of
    (x - C) phi(x) over x > C (an independent numerical integral; tolerance: quad's own error, 1e-9)."""
    from scipy import integrate

    mean, sd = tokens * q, math.sqrt(tokens * q * (1 - q))
    direct, _ = integrate.quad(lambda x: (x - cap) * stats.norm.pdf(x, mean, sd), cap, mean + 40 * sd,
                               epsabs=1e-13, epsrel=1e-12, points=[mean] if mean > cap else None)
    assert capacity.expected_overflow(tokens, q, cap, "normal") == pytest.approx(direct, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("tokens,k,cap", [(64, 2, 10), (300, 3, 40), (1000, 1, 70)])
def test_independent_choices_is_binomial_over_all_copies(tokens, k, cap):
    """method="independent_choices": N_e ~ Binomial(T k, q_e / k); the dropped fraction against a direct
    sum over the binomial pmf of each expert (float64, tolerance 1e-9)."""
    q = capacity.topk_inclusion_probabilities(np.array([0.3, 0.25, 0.2, 0.15, 0.1]), k)
    j = np.arange(tokens * k + 1)
    over = sum(float(np.sum(np.maximum(j - cap, 0) * stats.binom.pmf(j, tokens * k, qe / k))) for qe in q)
    got = capacity.expected_dropped_fraction(tokens, k, cap, inclusion=q, method="independent_choices")
    assert got == pytest.approx(over / (tokens * k), rel=1e-9, abs=1e-14)


def test_inclusion_probabilities_gumbel_top_k():
    p = np.array([0.4, 0.25, 0.2, 0.1, 0.05])
    q2 = capacity.topk_inclusion_probabilities(p, 2)
    # k = 2 in closed form: Pr[e first] + sum_j Pr[j first] Pr[e second | j first]
    closed = p + np.array([sum(p[j] * p[e] / (1 - p[j]) for j in range(5) if j != e) for e in range(5)])
    np.testing.assert_allclose(q2, closed, rtol=1e-9)
    # k = 3 against sampling Gumbel top-k (tolerance: 4 standard errors of each proportion)
    rng = np.random.default_rng(0)
    keys = np.log(p) + rng.gumbel(size=(200_000, 5))
    top = np.argsort(-keys, axis=1)[:, :3]
    freq = np.bincount(top.ravel(), minlength=5) / 200_000
    q3 = capacity.topk_inclusion_probabilities(p, 3)
    assert q3.sum() == pytest.approx(3, abs=1e-6)  # quadrature accuracy ~1e-8
    assert np.all(np.abs(freq - q3) < 4 * np.sqrt(q3 * (1 - q3) / 200_000))


@pytest.mark.parametrize("experts,k,skew", [(16, 2, 2.0), (64, 8, 2.0), (16, 4, 8.0)])
def test_inclusion_probabilities_of_a_skewed_popularity(experts, k, skew):
    """Experts of popularity 1e-8 and below (skew >= 2): the quadrature refines, the sum is k (it was
    off by up to 1e-5 of k, and `lshsim capacity --skew 2 --tokens N` refused its own inclusion), and
    every q_e matches sampled Gumbel top-k (4 standard errors of each proportion, 200,000 draws)."""
    p = capacity.skewed_popularity(experts, skew, seed=0)
    q = capacity.topk_inclusion_probabilities(p, k)
    assert q.sum() == pytest.approx(k, abs=1e-12) and q.min() >= 0 and q.max() <= 1
    rng = np.random.default_rng(1)
    keys = np.log(p) + rng.gumbel(size=(200_000, experts))
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    freq = np.bincount(top.ravel(), minlength=experts) / 200_000
    assert np.all(np.abs(freq - q) < 4 * np.sqrt(q * (1 - q) / 200_000) + 1e-9)
    drops = capacity.drop_estimates(1000, k, 1.25, p)[1]
    assert all(0 <= v <= 1 for v in drops.values())


def test_capacity_from_factor_is_the_routers_rule():
    from lshsim.dispatch.routers import compute_capacity

    for tokens, k, experts, factor in [(4096, 2, 16, 1.25), (10, 1, 4, 1.25), (1000, 2, 7, 1.0), (333, 3, 8, 0.7)]:
        assert capacity.capacity_from_factor(tokens, k, experts, factor) == compute_capacity(tokens, k, experts, factor)


def test_capacity_is_the_ceiling_of_the_decimal_factor_in_exact_arithmetic():
    """C = ceil(factor * T * k / E) with the factor read as the decimal the user typed (fractions.Fraction,
    exact): 1.1 x 100 tokens is 110 slots, although 1.1 * 100 is 110.00000000000001 in floating point
    (7 of these 1,512 cases differ from a plain float ceil). Both the analytic rule and the routers'."""
    import itertools
    from fractions import Fraction

    from lshsim.dispatch.routers import compute_capacity

    assert math.ceil(1.1 * 100) == 111 and compute_capacity(100, 1, 1, 1.1) == 110
    factors = ("0.7", "1.1", "1.15", "1.2", "1.25", "1.3", "2.0", "0.35", "1.001")
    for text, tokens, k, experts in itertools.product(factors, (100, 333, 1000, 4096, 10000, 65536), (1, 2, 3, 8),
                                                      (1, 4, 7, 16, 64, 160, 256)):
        exact = math.ceil(Fraction(text) * tokens * k / experts)
        assert compute_capacity(tokens, k, experts, float(text)) == exact, (text, tokens, k, experts)
        assert capacity.capacity_from_factor(tokens, k, experts, float(text)) == exact, (text, tokens, k, experts)


@pytest.mark.parametrize("k,skew,factor", [(1, 0.0, 1.0), (2, 1.0, 1.25), (2, 0.0, 1.0)])
def test_expected_drops_match_the_real_router(k, skew, factor):
    """expected_dropped_fraction vs lshsim.dispatch.route_topk (tolerance: 3 standard errors over batches)."""
    experts, tokens = 16, 1024
    popularity = capacity.skewed_popularity(experts, skew, seed=7)
    cap = capacity.capacity_from_factor(tokens, k, experts, factor)
    sampled = capacity.sample_dropped_fraction(tokens, k, factor, popularity, num_samples=48, seed=k)
    exact = capacity.expected_dropped_fraction(tokens, k, cap, popularity=popularity)
    assert exact > 0
    assert abs(sampled.z_score(exact)) < 3, (exact, sampled)
    # the named approximations stay close at this size (a few percent of the exact value)
    inclusion = capacity.topk_inclusion_probabilities(popularity, k)
    for method in ("independent_choices", "poisson", "normal"):
        approx = capacity.expected_dropped_fraction(tokens, k, cap, inclusion=inclusion, method=method)
        assert approx == pytest.approx(exact, rel=0.1)


# ---- estimate_delta ------------------------------------------------------------------------------
def test_estimate_delta_on_grap_gate():
    from lshsim.dispatch import grap_weights

    rng = np.random.default_rng(0)
    d, n = 256, 8
    tokens = rng.standard_normal((3000, d))
    weights = grap_weights(d, n).double().numpy()
    est = capacity.estimate_delta(tokens, weights, quantile=0.0)
    assert est.gate_max_abs_cos == 0.0 and est.gate_norm_ratio == pytest.approx(1.0)
    # brute force, token by token
    cosines = []
    for x in tokens[:50]:
        scores = weights @ x
        e = int(np.argmax(scores))
        cosines.append(scores[e] / np.linalg.norm(x) / np.linalg.norm(weights[e]))
    np.testing.assert_allclose(est.cos_assigned[:50], cosines, rtol=1e-12)
    assert est.delta == pytest.approx(est.cos_assigned.min())
    median = capacity.estimate_delta(tokens, weights, quantile=0.5)
    assert median.delta == pytest.approx(np.median(est.cos_assigned))
    # Gaussian tokens are uniform on the sphere: the measured p_delta follows the theorem's
    # (tolerance: 3 binomial standard errors over the 3000 * 8 token-expert pairs)
    se = math.sqrt(median.p_delta_uniform * (1 - median.p_delta_uniform) / (3000 * n))
    assert abs(median.p_delta_measured - median.p_delta_uniform) < 3 * se * math.sqrt(n)  # pairs share tokens
    with pytest.raises(ValueError, match="zero norm"):
        capacity.estimate_delta(np.vstack([tokens[:3], np.zeros(d)]), weights)
    with pytest.raises(ValueError, match="d=255"):
        capacity.estimate_delta(tokens[:, :255], weights)
    with pytest.raises(ValueError, match="quantile=1.5"):
        capacity.estimate_delta(tokens, weights, quantile=1.5)


def test_ec_min_forms_are_the_three_bounds_side_by_side():
    forms = capacity.ec_min_forms(16, 4096, 0.03)
    assert list(forms) == ["exact", "erfc", "exp"]
    for form, row in forms.items():
        assert row["ec_min"] == pytest.approx(capacity.ec_min(16, 4096, 0.03, form), rel=1e-15)
        # n ec_min = 1 / p_delta: the batch that gives every one of the 16 experts ec_min tokens
        assert row["uniform_batch_tokens"] == pytest.approx(1 / row["p_delta"], rel=1e-12)
        assert "capacity_factor_at_bound" not in row and "capacity_factor" not in row
    assert forms["exact"]["rel_err_vs_exact"] == 0.0
    assert forms["exp"]["rel_err_vs_exact"] == pytest.approx(forms["exp"]["p_delta"] / forms["exact"]["p_delta"] - 1)
    with pytest.raises(ValueError, match="d=1"):   # d and delta are checked before n
        capacity.ec_min_forms(-4, 1, 0.03)
    with pytest.raises(ValueError, match="n=-4"):
        capacity.ec_min_forms(-4, 64, 0.03)


def test_ec_min_is_tokens_per_expert_at_the_papers_point():
    # LocMoE §3.2 / App. A.3: ec_min is a number of tokens; 1 / (16 x 0.05485) = 1.14 at d 4096, delta 0.03
    assert capacity.p_delta(4096, 0.03) == pytest.approx(0.05485, abs=5e-6)
    assert capacity.ec_min(16, 4096, 0.03) == pytest.approx(1 / (16 * 0.054848), rel=1e-4)
    assert 1.13 < capacity.ec_min(16, 4096, 0.03) < 1.15


def test_capacity_factor_at_bound_against_the_rounded_capacity():
    # by hand: bound 2.5 tokens, T 64, k 1, E 8 -> 2.5 x 8 / 64 = 0.3125; C = ceil(cf T k / E)
    assert capacity.capacity_factor_at_bound(2.5, 64, 1, 8) == 0.3125
    assert capacity.capacity_from_factor(64, 1, 8, 0.3125) == 3          # >= 2.5 at the factor
    assert capacity.capacity_from_factor(64, 1, 8, 0.25) == 2            # (ceil(2.5) - 1) E / (T k): < 2.5
    assert capacity.capacity_from_factor(64, 1, 8, 0.2501) == 3          # just above it, rounding up reaches 3
    assert capacity.capacity_factor_at_bound(1.0, 4096, 2, 16) == pytest.approx(1 / 512)
    assert capacity.capacity_factor_at_bound(np.inf, 64, 1, 8) == np.inf
    # a scan of factors on the dispatcher's own rule (routers.compute_capacity), several cases
    from lshsim.dispatch.routers import compute_capacity
    cases = [(1.1395, 16, 1, 16), (2.5, 64, 1, 8), (3.0, 100, 2, 8), (0.4, 7, 1, 4), (31.44, 4096, 2, 16)]
    for bound, t, k, e in cases:
        factor = capacity.capacity_factor_at_bound(bound, t, k, e)
        assert factor * t * k / e == pytest.approx(bound, rel=1e-12)   # the share before rounding is the bound
        low = (math.ceil(bound) - 1) * e / (t * k)                     # at or below: C < bound
        for cf in np.linspace(factor / 50, factor * 3, 601):
            c = compute_capacity(t, k, e, float(cf))
            if cf >= factor:
                assert c >= bound, (bound, t, k, e, cf, c)
            elif cf <= low * (1 - 1e-6):
                assert c < bound, (bound, t, k, e, cf, c)
            elif cf >= low * (1 + 1e-6):   # between: the rounding up alone reaches ceil(bound)
                assert c == math.ceil(bound), (bound, t, k, e, cf, c)


def test_ec_min_forms_with_tokens_give_the_factor_at_the_bound():
    forms = capacity.ec_min_forms(16, 4096, 0.03, num_tokens=4096, k=2)
    for form, row in forms.items():
        assert row["capacity_factor_at_bound"] == pytest.approx(row["ec_min"] * 16 / (4096 * 2), rel=1e-12)
        c = capacity.capacity_from_factor(4096, 2, 16, row["capacity_factor_at_bound"])
        assert c >= row["ec_min"] and c == math.ceil(row["ec_min"])
    # T k = n: the factor at the bound equals ec_min (16 tokens, top-1, 16 experts: one token per expert at cf 1)
    forms = capacity.ec_min_forms(16, 4096, 0.03, num_tokens=16, k=1)
    assert forms["exact"]["capacity_factor_at_bound"] == pytest.approx(forms["exact"]["ec_min"], rel=1e-12)
    with pytest.raises(ValueError, match="num_tokens=0"):
        capacity.ec_min_forms(16, 4096, 0.03, num_tokens=0)
    with pytest.raises(ValueError, match="k=0"):
        capacity.ec_min_forms(16, 4096, 0.03, num_tokens=64, k=0)
    with pytest.raises(ValueError, match="bound=-1"):
        capacity.capacity_factor_at_bound(-1.0, 64, 1, 8)


def test_ec_min_grid_spans_the_threshold_to_the_plot_limit():
    grid = capacity.ec_min_grid(16, 4096, 0.03, points=30)
    assert grid.shape == (30,) and grid[0] == pytest.approx(0.003) and np.all(np.diff(grid) > 0)
    assert capacity.ec_min(16, 4096, grid[-1]) <= 1e4 < capacity.ec_min(16, 4096, min(grid[-1] * 1.05, 0.999))


def test_skewed_popularity():
    assert capacity.skewed_popularity(8, 0.0).tolist() == [0.125] * 8
    p = capacity.skewed_popularity(16, 1.5, seed=4)
    q = np.random.default_rng(4).dirichlet(np.ones(16))
    assert p == pytest.approx(q ** 1.5 / (q ** 1.5).sum(), rel=1e-12)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="skew="):
            capacity.skewed_popularity(16, bad)


def test_drop_estimates_use_every_method():
    uniform = np.full(16, 1 / 16)
    cap, drops = capacity.drop_estimates(4096, 2, 1.0, uniform)
    assert cap == capacity.capacity_from_factor(4096, 2, 16, 1.0) == 512
    assert list(drops) == list(capacity.OVERFLOW_METHODS)
    assert drops["exact"] == pytest.approx(capacity.expected_dropped_fraction(4096, 2, 512, popularity=uniform))
