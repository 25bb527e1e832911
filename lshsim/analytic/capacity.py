"""LocMoE's expert-capacity lower bound (Theorem 1) and the load / overflow of capacity-limited routing.

Part 1, LocMoE Theorem 1 (Li et al., arXiv 2401.13920, §3.2). Tokens x uniform on the
unit sphere S^{d-1}, n experts with orthogonal, equal-norm gate weights w_i, top-1 routing; a token
is discriminative for an expert when |cos(x, w_i)| >= delta. Since x_1^2 ~ Beta(1/2, (d-1)/2) for
a uniform point on the sphere,

    p_delta = Pr[|cos(x, w)| >= delta] = 1 - I_{delta^2}(1/2, (d-1)/2)          (exact)
            ~ erfc( sqrt(delta^2 d / (2 - delta^2)) )                           (large d, the paper's form)
            <= exp( -delta^2 d / (2 - delta^2) )                                (erfc(z) <= exp(-z^2))
    ec_min >= 1 / (n p_delta)  >= (1/n) exp(delta^2 d / (2 - delta^2)) for the erfc form,

ec_min a number of tokens per expert (the paper's capacity is ec = ceil(b_s c_f / (ep n)) tokens,
c_f an empirical capacity factor; Theorem 1's proof, Appendix A.3, seeks "the minimum amount of
tokens" that routes at least one discriminative token to an expert). `capacity_factor_at_bound`
gives the capacity factor at which a batch's capacity reaches it.

Where the erfc form departs from the exact one (relative error erfc/exact - 1, `p_delta_forms`):

=======  ==========  ==========  ==========  ==========
d        delta=0.01  delta=0.03  delta=0.1   delta=0.3
=======  ==========  ==========  ==========  ==========
8        -0.2%       -0.7%       -2.7%       -11.0%
64       -0.1%       -0.3%       -1.3%       -7.4%
512      -0.0%       -0.1%       -0.9%       -5.2%
4096     -0.0%       -0.1%       -0.8%       +7.5%
=======  ==========  ==========  ==========  ==========

The erfc form is within 1% for delta <= 0.1 once d >= 64 (LocMoE's delta ~= 0.03 is safe); it
drifts by 5-11% at delta = 0.3. The exponential form is only a bound: it overstates p_delta by a
factor of about sqrt(pi) z (z the erfc argument), 2.9x at d = 4096, delta = 0.03.

Part 2, overflow. T tokens per capacity domain (a source rank: capacity is per (rank, expert)),
k distinct choices per token, E experts, capacity C. N_e = choices landing on expert e. Dropped
choices = sum_e (N_e - C)^+, whatever the drop order, so by linearity of expectation only the
marginal of N_e matters. If tokens choose independently and expert e is among a token's k choices
with probability q_e (sum_e q_e = k), N_e ~ Binomial(T, q_e) exactly, and

    E[dropped fraction] = sum_e E[(N_e - C)^+] / (T k),
    E[(N - C)^+] = T q Pr[Binomial(T-1, q) >= C] - C Pr[Binomial(T, q) >= C+1].

Named approximations: "independent_choices" (N_e ~ Binomial(T k, q_e / k): the k choices drawn
with replacement), "poisson" (N_e ~ Poisson(T q_e)), "normal" (N_e ~ N(T q_e, T q_e (1 - q_e))).
`sample_dropped_fraction` checks all of them against the real router `lshsim.dispatch.route_topk`.

Part 3, the workload of `lshsim capacity`: `ec_min_forms` (the three forms side by side, with
the capacity factor at which a batch's capacity reaches ec_min, `capacity_factor_at_bound`),
`ec_min_grid` (the deltas over which a plot of ec_min is informative), `skewed_popularity`
(expert popularity p proportional to q^skew, q ~ Dirichlet(1, ..., 1)) and `drop_estimates`
(the capacity and the expected dropped fraction by every overflow method).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from lshsim.analytic._common import (MonteCarloEstimate, as_count, as_dim, as_open_unit, as_positive, as_real,
                                     binomial_estimate, maybe_scalar, mean_estimate)

__all__ = [
    "p_delta", "p_delta_erfc", "p_delta_exp_bound", "p_delta_forms", "ec_min", "p_delta_monte_carlo",
    "DeltaEstimate", "estimate_delta", "capacity_from_factor", "capacity_factor_at_bound",
    "topk_inclusion_probabilities", "expected_overflow", "expected_dropped_fraction", "sample_dropped_fraction",
    "OVERFLOW_METHODS",
    "ec_min_forms", "ec_min_grid", "skewed_popularity", "drop_estimates",
]

OVERFLOW_METHODS = ("exact", "independent_choices", "poisson", "normal")


# ---- Theorem 1 ----------------------------------------------------------------------------------
def p_delta(d, delta):
    """p_delta = Pr[|cos(x, w)| >= delta] = 1 - I_{delta^2}(1/2, (d-1)/2), x uniform on S^{d-1}.

    Source: LocMoE (arXiv 2401.13920) Theorem 1. Computed as I_{1 - delta^2}((d-1)/2, 1/2)
    (the complement identity), accurate in the far tail. d: dimension (>= 2), delta in (0, 1).

    >>> round(p_delta(4096, 0.03), 5)
    0.05485
    >>> p_delta([8, 64, 512], 0.1).round(4).tolist()
    [0.798, 0.428, 0.0235]
    """
    d = as_dim("d", d)
    delta = as_open_unit("delta", delta)
    return maybe_scalar(special.betainc((d - 1) / 2.0, 0.5, 1.0 - delta ** 2))


def _z2(d: np.ndarray, delta: np.ndarray) -> np.ndarray:
    return delta ** 2 * d / (2.0 - delta ** 2)


def p_delta_erfc(d, delta):
    """The paper's large-d form: p_delta ~ erfc( sqrt(delta^2 d / (2 - delta^2)) ).

    Source: LocMoE §3.2 (the bound ec_min >= 1 / (n erfc(sqrt(delta^2 d / (2 - delta^2))))).

    >>> round(p_delta_erfc(4096, 0.03), 5)
    0.0548
    """
    d = as_dim("d", d)
    delta = as_open_unit("delta", delta)
    return maybe_scalar(special.erfc(np.sqrt(_z2(d, delta))))


def p_delta_exp_bound(d, delta):
    """exp(-delta^2 d / (2 - delta^2)): an upper bound on the erfc form (erfc(z) <= exp(-z^2)).

    Source: LocMoE §3.2, ec_min > (1/n) exp(delta^2 d / (2 - delta^2)).

    >>> round(p_delta_exp_bound(4096, 0.03), 4)
    0.1582
    """
    d = as_dim("d", d)
    delta = as_open_unit("delta", delta)
    return maybe_scalar(np.exp(-_z2(d, delta)))


def p_delta_forms(d, delta) -> dict:
    """All three forms of p_delta and the relative errors of the approximate ones: (form / exact - 1).

    Returns a dict of arrays: exact, erfc, exp, erfc_rel_err, exp_rel_err (NaN where exact
    underflows to 0).

    >>> f = p_delta_forms(512, 0.3)
    >>> round(float(f["erfc_rel_err"]), 3)
    -0.052
    """
    exact = np.asarray(p_delta(d, delta), dtype=np.float64)
    erfc = np.asarray(p_delta_erfc(d, delta), dtype=np.float64)
    exp = np.asarray(p_delta_exp_bound(d, delta), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        erfc_err = np.where(exact > 0, erfc / exact - 1.0, np.nan)
        exp_err = np.where(exact > 0, exp / exact - 1.0, np.nan)
    return {"exact": exact, "erfc": erfc, "exp": exp, "erfc_rel_err": erfc_err, "exp_rel_err": exp_err}


def ec_min(n, d, delta, form: str = "exact"):
    """LocMoE's minimum expert capacity, in tokens per expert: ec_min >= 1 / (n p_delta).

    form "exact" uses the incomplete beta p_delta, "erfc" the paper's large-d form and "exp" the
    exponential bound (1/n) exp(delta^2 d / (2 - delta^2)) (a lower bound on the erfc form).
    Source: LocMoE (Li et al., arXiv 2401.13920), Theorem 1 and §3.2. n experts, dimension d,
    threshold delta; inf where p_delta underflows to 0 (the paper measured delta ~= 0.03).

    The paper's definition: an expert's capacity ec is a number of tokens, ec = ceil(b_s c_f /
    (ep n)) with an empirical capacity factor c_f (§3.2, "Critical Value of Expert Capacity");
    Theorem 1 bounds it from below, ec_min = 1 / p_i >= 1 / (n p_delta), and its proof
    (Appendix A.3) calls ec_min "the minimum amount of tokens that make at least one
    class-discriminative token [|cos| >= delta] routed to expert i". So ec_min is a count of
    tokens an expert must be able to take (1.14 at n 16, d 4096, delta 0.03), not a capacity
    factor, and it is a lower bound, not the capacity a run uses. `capacity_factor_at_bound`
    turns it into the capacity factor of `lshsim.dispatch` at which a batch's capacity reaches it.

    >>> round(ec_min(16, 4096, 0.03), 4), round(ec_min(16, 4096, 0.03, "erfc"), 4)
    (1.1395, 1.1404)
    >>> ec_min([8, 16], 4096, 0.03, "exp").round(3).tolist()
    [0.79, 0.395]
    """
    n = as_count("n", n, minimum=1)
    forms = {"exact": p_delta, "erfc": p_delta_erfc, "exp": p_delta_exp_bound}
    if form not in forms:
        raise ValueError(f"form={form!r} must be one of {sorted(forms)}")
    prob = np.asarray(forms[form](d, delta), dtype=np.float64)
    with np.errstate(divide="ignore"):
        return maybe_scalar(1.0 / (n * prob))


def p_delta_monte_carlo(d: int, delta: float, num_samples: int = 100_000, seed: int = 0,
                        chunk: int | None = None) -> MonteCarloEstimate:
    """Monte Carlo p_delta: the fraction of uniform points x on S^{d-1} with |cos(x, w)| >= delta.

    Points are normalised standard Gaussian vectors (uniform on the sphere); w is a fixed random
    unit vector drawn from the same generator. Returns the estimate with its standard error and
    Wilson 95% interval (`MonteCarloEstimate`).

    >>> e = p_delta_monte_carlo(64, 0.1, num_samples=20_000, seed=1)
    >>> abs(e.z_score(p_delta(64, 0.1))) < 3
    True
    """
    d = int(as_dim("d", d))
    delta = float(as_open_unit("delta", delta))
    num_samples = int(as_count("num_samples", num_samples, minimum=1))
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)  # (d,) unit gate weight
    chunk = max(64, (1 << 21) // d) if chunk is None else int(as_count("chunk", chunk, minimum=1))  # ~16 MiB
    hits = 0
    for start in range(0, num_samples, chunk):
        size = min(chunk, num_samples - start)
        points = rng.standard_normal((size, d))  # (size, d)
        cos = points @ direction / np.linalg.norm(points, axis=1)  # (size,)
        hits += int(np.count_nonzero(np.abs(cos) >= delta))
    return binomial_estimate(hits, num_samples)


@dataclass(frozen=True)
class DeltaEstimate:
    """Angular deviation measured on real hidden states (`estimate_delta`).

    delta: the quantile `quantile` of cos(x_t, w_{e(t)}) over tokens (quantile 0 = the smallest
    cosine, i.e. the maximal angular deviation, the paper's definition).
    cos_assigned: (T,) cosine between each token and the gate weight of its top-1 expert.
    assigned: (T,) top-1 expert e(t) = argmax_i <x_t, w_i>.
    p_delta_measured: fraction of (token, expert) pairs with |cos| >= delta.
    p_delta_uniform: p_delta(d, delta) of the theorem (tokens uniform on the sphere), for comparison.
    gate_max_abs_cos: largest |cos| between two distinct gate weights (0 = orthogonal, as assumed).
    gate_norm_ratio: largest / smallest gate-weight norm (1 = equal norms, as assumed).
    """

    delta: float
    cos_assigned: np.ndarray
    assigned: np.ndarray
    p_delta_measured: float
    p_delta_uniform: float
    gate_max_abs_cos: float
    gate_norm_ratio: float
    dimension: int
    num_experts: int


def _to_numpy(name: str, value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().double().numpy()
    array = as_real(name, value)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {array.shape}")
    return array


def estimate_delta(tokens, gate_weights, quantile: float = 0.0) -> DeltaEstimate:
    """Measure LocMoE's delta on real hidden states, so Theorem 1 can be applied to a real model.

    tokens: (T, d) hidden states (numpy or torch); gate_weights: (n, d), one row per expert (e.g.
    `lshsim.dispatch.grap_weights(d, n)`). Each token goes to e(t) = argmax_i <x_t, w_i> (top-1);
    delta = quantile_q of cos(x_t, w_{e(t)}) over tokens. With quantile = 0 this is the maximal
    angular deviation between a token and its gate weight (LocMoE §3.2); a small positive quantile
    ignores outliers. Zero-norm tokens are refused. Also reports how far the gate is from the
    theorem's assumptions (orthogonal, equal norms) and p_delta measured vs the uniform-sphere model.

    >>> rng = np.random.default_rng(0)
    >>> est = estimate_delta(rng.standard_normal((2000, 256)), np.eye(256)[:8], quantile=0.05)
    >>> bool(0 < est.delta < est.cos_assigned.mean() < 1), est.gate_max_abs_cos, est.gate_norm_ratio
    (True, 0.0, 1.0)
    """
    x = _to_numpy("tokens", tokens)  # (T, d)
    w = _to_numpy("gate_weights", gate_weights)  # (n, d)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"tokens have d={x.shape[1]} but gate_weights have d={w.shape[1]}")
    if x.shape[0] < 1 or w.shape[0] < 1:
        raise ValueError(f"need at least one token and one expert, got tokens {x.shape}, gate_weights {w.shape}")
    q = float(as_real("quantile", quantile))
    if not 0 <= q <= 1:
        raise ValueError(f"quantile={quantile!r} must be in [0, 1]")
    x_norm = np.linalg.norm(x, axis=1)  # (T,)
    w_norm = np.linalg.norm(w, axis=1)  # (n,)
    if (x_norm == 0).any():
        raise ValueError(f"tokens row {int(np.argmin(x_norm))} has zero norm (no direction)")
    if (w_norm == 0).any():
        raise ValueError(f"gate_weights row {int(np.argmin(w_norm))} has zero norm")
    cos = (x @ w.T) / x_norm[:, None] / w_norm[None, :]  # (T, n)
    assigned = np.argmax(x @ w.T, axis=1)  # (T,)
    cos_assigned = cos[np.arange(x.shape[0]), assigned]  # (T,)
    delta = float(np.quantile(cos_assigned, q))
    gram = (w @ w.T) / w_norm[:, None] / w_norm[None, :]  # (n, n)
    off = np.abs(gram[~np.eye(w.shape[0], dtype=bool)])
    d = x.shape[1]
    uniform = float(p_delta(d, delta)) if 0 < delta < 1 and d >= 2 else float("nan")
    return DeltaEstimate(delta=delta, cos_assigned=cos_assigned, assigned=assigned,
                         p_delta_measured=float(np.mean(np.abs(cos) >= delta)), p_delta_uniform=uniform,
                         gate_max_abs_cos=float(off.max()) if off.size else 0.0,
                         gate_norm_ratio=float(w_norm.max() / w_norm.min()), dimension=d, num_experts=w.shape[0])


# ---- overflow -----------------------------------------------------------------------------------
def capacity_from_factor(num_tokens, k, num_experts, capacity_factor):
    """C = ceil(capacity_factor * T * k / E), the rule of `lshsim.dispatch.routers.compute_capacity`.

    >>> capacity_from_factor(4096, 2, 16, [1.0, 1.25]).tolist()
    [512, 640]
    """
    t = as_count("num_tokens", num_tokens, minimum=1)
    k = as_count("k", k, minimum=1)
    e = as_count("num_experts", num_experts, minimum=1)
    cf = as_positive("capacity_factor", capacity_factor)
    return maybe_scalar(np.ceil(np.round(cf * t * k / e, 9)).astype(np.int64))


def capacity_factor_at_bound(bound, num_tokens, k, num_experts):
    """The capacity factor at which lshsim's capacity reaches `bound` tokens per expert:
    cf = bound E / (T k), the factor whose share cf T k / E (the capacity before rounding up, see
    `capacity_from_factor`) equals the bound.

    From this factor up, C = ceil(cf T k / E) >= bound. Below it the rounding up still gives
    C = ceil(bound) down to just above (ceil(bound) - 1) E / (T k); at or below that factor C < bound.
    Meant for `ec_min` (tokens per expert, LocMoE Theorem 1): T tokens per capacity domain (a
    source rank), k choices per token, E experts. bound may be inf (the factor is then inf).

    >>> round(capacity_factor_at_bound(ec_min(16, 4096, 0.03), 4096, 2, 16), 6)
    0.002226
    >>> capacity_factor_at_bound(2.5, 64, 1, 8), int(capacity_from_factor(64, 1, 8, 0.3125))
    (0.3125, 3)
    """
    b = as_positive("bound", bound, allow_inf=True)
    t = as_count("num_tokens", num_tokens, minimum=1)
    k = as_count("k", k, minimum=1)
    e = as_count("num_experts", num_experts, minimum=1)
    return maybe_scalar(b * e / (t * k))


def _popularity(popularity) -> np.ndarray:
    p = as_real("popularity", popularity)
    if p.ndim != 1 or p.size < 1:
        raise ValueError(f"popularity must be a 1-D array of expert weights, got shape {p.shape}")
    if (p <= 0).any():
        raise ValueError(f"popularity={p[p <= 0][0].item()!r} must be > 0 (every expert needs a positive weight)")
    return p / p.sum()


def topk_inclusion_probabilities(popularity, k: int, nodes: int = 256) -> np.ndarray:
    """q_e = Pr[expert e is among a token's top-k], logits = log p_e + Gumbel noise (Plackett-Luce).

    With G_j = log p_j + g_j, g_j i.i.d. standard Gumbel, s = exp(-t):
    q_e = int_0^inf p_e exp(-p_e s) Pr[#{j != e: G_j > t} <= k-1] ds, Pr[G_j > t] = 1 - exp(-p_j s),
    the count a Poisson-binomial (exact dynamic programme); the outer integral is Gauss-Legendre
    in v = 1 - exp(-p_e s) (256 nodes: sum_e q_e = k to ~1e-7). k = 1 gives q = p (Gumbel-max trick).
    Source: Gumbel-top-k (Kool, van Hoof and Welling 2019); the integral is standard order statistics.

    >>> topk_inclusion_probabilities([0.5, 0.3, 0.2], 1).round(6).tolist()
    [0.5, 0.3, 0.2]
    >>> q = topk_inclusion_probabilities([0.5, 0.3, 0.2], 2)
    >>> round(float(q.sum()), 6), round(float(q[0]), 4)  # 0.5 + 0.3*0.5/0.7 + 0.2*0.5/0.8
    (2.0, 0.8393)
    """
    p = _popularity(popularity)  # (E,)
    num_experts = p.size
    k = int(as_count("k", k, minimum=1))
    if k > num_experts:
        raise ValueError(f"k={k} exceeds the number of experts E={num_experts}")
    if k == 1:
        return p.copy()
    if k == num_experts:
        return np.ones(num_experts)
    nodes = int(as_count("nodes", nodes, minimum=8))
    while True:
        q = _inclusion_quadrature(p, k, nodes)
        # a skewed popularity (experts of p ~ 1e-8 and below) needs more nodes; refine while cheap
        if abs(q.sum() - k) <= 1e-8 * k or nodes >= 1024 or num_experts ** 2 * nodes * 4 * k > 2e9:
            break
        nodes *= 4
    # what quadrature error is left (about 1e-7 of k at skew 2-8 over 16 experts): spread in proportion, so that
    # sum_e q_e = k exactly, as every caller checks
    return np.clip(q * (k / q.sum()), 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _leggauss(nodes: int) -> tuple:
    return np.polynomial.legendre.leggauss(nodes)


def _inclusion_quadrature(p: np.ndarray, k: int, nodes: int) -> np.ndarray:
    """topk_inclusion_probabilities' integral at `nodes` Gauss-Legendre nodes (see there)."""
    num_experts = p.size
    t, wt = _leggauss(nodes)
    v = (t + 1) / 2  # (M,) in (0, 1)
    weight = wt / 2  # (M,)
    s = -np.log1p(-v)[None, :] / p[:, None]  # (E, M): s for target e at node m
    # Poisson-binomial DP over j != e of the count of experts beating e, truncated at k (states 0..k-1)
    state = np.zeros((num_experts, v.size, k))  # (E, M, k)
    state[:, :, 0] = 1.0
    for j in range(num_experts):
        beat = -np.expm1(-p[j] * s)  # (E, M) Pr[G_j > t]
        beat[j, :] = 0.0  # e does not compete with itself
        shifted = np.concatenate([np.zeros((num_experts, v.size, 1)), state[:, :, :-1]], axis=2)
        state = state * (1.0 - beat)[:, :, None] + shifted * beat[:, :, None]
    return state.sum(axis=2) @ weight  # (E,)


def expected_overflow(num_tokens, inclusion, capacity, method: str = "exact"):
    """E[(N - C)^+]: expected choices over capacity C at one expert, N the choices it receives.

    exact:               N ~ Binomial(T, q); E = T q Pr[Bin(T-1, q) >= C] - C Pr[Bin(T, q) >= C+1]
    poisson:             N ~ Poisson(T q);   E = T q Pr[Pois >= C] - C Pr[Pois >= C+1]
    normal:              N ~ N(mu, s^2), mu = T q, s^2 = T q (1-q); E = s phi(z) + (mu - C)(1 - Phi(z)),
                         z = (C - mu) / s
    (the "independent_choices" approximation is `expected_dropped_fraction`'s, it needs k.)
    Arrays broadcast. Source: standard (the identity j C(T,j) = T C(T-1,j-1)).

    >>> round(expected_overflow(100, 0.1, 10), 4), round(expected_overflow(100, 0.1, 10, "normal"), 4)
    (1.1868, 1.1968)
    """
    t = as_count("num_tokens", num_tokens, minimum=1)
    q = as_real("inclusion", inclusion)
    bad = (q < 0) | (q > 1)
    if bad.any():
        raise ValueError(f"inclusion={q[bad].ravel()[0].item()!r} must be a probability in [0, 1]")
    c = as_count("capacity", capacity, minimum=0)
    mean = t * q
    if method == "exact":
        upper = np.where(t > 1, stats.binom.sf(c - 1, np.maximum(t - 1, 1), q), (c <= 0).astype(float))
        value = mean * upper - c * stats.binom.sf(c, t, q)
    elif method == "poisson":
        value = mean * stats.poisson.sf(c - 1, mean) - c * stats.poisson.sf(c, mean)
    elif method == "normal":
        sd = np.sqrt(t * q * (1 - q))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (c - mean) / sd
            value = np.where(sd > 0, sd * stats.norm.pdf(z) + (mean - c) * stats.norm.sf(z),
                             np.maximum(mean - c, 0.0))
    else:
        raise ValueError(f"method={method!r} must be one of ('exact', 'poisson', 'normal')")
    return maybe_scalar(np.maximum(value, 0.0))


def expected_dropped_fraction(num_tokens, k, capacity, *, popularity=None, inclusion=None,
                              method: str = "exact"):
    """Expected fraction of the T k choices dropped at capacity C per expert (per capacity domain).

    E[dropped fraction] = sum_e E[(N_e - C)^+] / (T k). Give either `inclusion` q (..., E) with
    sum_e q_e = k (probability that expert e is among a token's choices), or `popularity` p (E,)
    (the Gumbel-top-k model of `topk_inclusion_probabilities`; uniform experts: p = 1/E).
    method: "exact" (N_e ~ Binomial(T, q_e), exact for tokens choosing independently),
    "independent_choices" (N_e ~ Binomial(T k, q_e / k)), "poisson", "normal". num_tokens and
    capacity broadcast against the batch shape of q. Source: the overflow model of
    the module docstring (part 2).

    >>> uniform = np.full(16, 1 / 16)
    >>> round(expected_dropped_fraction(4096, 2, 512, popularity=uniform), 4)
    0.0165
    >>> round(expected_dropped_fraction(4096, 2, 640, popularity=uniform), 6)
    0.0
    """
    if method not in OVERFLOW_METHODS:
        raise ValueError(f"method={method!r} must be one of {OVERFLOW_METHODS}")
    k_arr = as_count("k", k, minimum=1)
    if (popularity is None) == (inclusion is None):
        raise ValueError("give exactly one of popularity=... or inclusion=...")
    if inclusion is None:
        if k_arr.ndim != 0:
            raise ValueError(f"k={k!r} must be a single integer when popularity is given")
        q = topk_inclusion_probabilities(popularity, int(k_arr))  # (E,)
    else:
        q = as_real("inclusion", inclusion)
        if q.ndim < 1:
            raise ValueError(f"inclusion must have a trailing expert axis, got shape {q.shape}")
        bad = (q < 0) | (q > 1)
        if bad.any():
            raise ValueError(f"inclusion={q[bad].ravel()[0].item()!r} must be a probability in [0, 1]")
        total = q.sum(axis=-1)
        if np.any(np.abs(total - k_arr) > 1e-6 * np.maximum(k_arr, 1)):
            raise ValueError(f"inclusion sums to {np.ravel(total)[0].item()!r} over experts, expected k={k!r}")
    t = as_count("num_tokens", num_tokens, minimum=1)
    c = as_count("capacity", capacity, minimum=0)
    t_e, c_e, k_e = t[..., None], c[..., None], k_arr[..., None]
    if method == "independent_choices":
        over = expected_overflow(t_e * k_e, q / k_e, c_e, "exact")
    else:
        over = expected_overflow(t_e, q, c_e, method)
    return maybe_scalar(np.sum(over, axis=-1) / (t * k_arr))


def sample_dropped_fraction(num_tokens: int, k: int, capacity_factor: float, popularity, *,
                            num_samples: int = 64, seed: int = 0, drop_policy: str = "position"
                            ) -> MonteCarloEstimate:
    """Dropped fraction measured with the real router `lshsim.dispatch.route_topk`.

    Draws `num_samples` independent batches of T tokens with logits log p_e + Gumbel noise (so a
    token's top-k follows the Gumbel-top-k model of `topk_inclusion_probabilities`), routes them
    as `num_samples` source ranks in one call (capacity is per (rank, expert), so the batches do
    not interact), and returns the mean dropped fraction over batches with its standard error.

    >>> e = sample_dropped_fraction(1024, 2, 1.0, np.full(8, 1 / 8), num_samples=16)
    >>> c = capacity_from_factor(1024, 2, 8, 1.0)
    >>> abs(e.z_score(expected_dropped_fraction(1024, 2, c, popularity=np.full(8, 1 / 8)))) < 4
    True
    """
    import torch

    from lshsim.dispatch import Placement, route_topk

    t = int(as_count("num_tokens", num_tokens, minimum=1))
    k = int(as_count("k", k, minimum=1))
    num_samples = int(as_count("num_samples", num_samples, minimum=2))
    p = _popularity(popularity)
    num_experts = p.size
    generator = torch.Generator().manual_seed(int(seed))
    uniform = torch.rand(num_samples * t, num_experts, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1 - 1e-16)))  # (S*T, E)
    logits = (torch.log(torch.as_tensor(p)) + gumbel).float()  # (S*T, E)
    placement = Placement(torch.zeros(num_experts, dtype=torch.int64), torch.zeros(num_samples, dtype=torch.int64))
    token_rank = torch.arange(num_samples).repeat_interleave(t)  # (S*T,)
    plan = route_topk(logits, placement, k=k, capacity_factor=capacity_factor, drop_policy=drop_policy,
                      token_rank=token_rank)
    dropped = (plan.routed & ~plan.kept).sum(dim=1)  # (S*T,)
    per_batch = torch.zeros(num_samples, dtype=torch.float64).index_add_(0, token_rank, dropped.double())
    return mean_estimate(per_batch.numpy() / (t * k))


# ---- the workload of `lshsim capacity` ------------------------------------------------------------
def ec_min_forms(n: int, d: int, delta: float, num_tokens: int | None = None,
                 k: int = 1) -> dict[str, dict[str, float]]:
    """The three forms of Theorem 1 side by side, as plain floats.

    Returns {form: {p_delta, ec_min, uniform_batch_tokens, rel_err_vs_exact}} for form in exact,
    erfc, exp. ec_min is in tokens per expert (see `ec_min`); uniform_batch_tokens = n ec_min =
    1 / p_delta, the fewest tokens of a batch split evenly over the n experts (top-1) that give
    every expert ec_min tokens, which is also the mean number of tokens, uniform on the sphere,
    drawn until one is class-discriminative (|cos| >= delta) for a given expert; rel_err_vs_exact
    = form / exact - 1 (0 for the exact form). Given num_tokens T (tokens per capacity domain) and
    k choices per token, each form also has capacity_factor_at_bound =
    `capacity_factor_at_bound(ec_min, T, k, n)`. d and delta are checked before n.

    >>> forms = ec_min_forms(16, 4096, 0.03, num_tokens=4096, k=2)
    >>> round(forms["exact"]["ec_min"], 4), round(forms["erfc"]["rel_err_vs_exact"], 5)
    (1.1395, -0.00081)
    >>> round(forms["exact"]["uniform_batch_tokens"], 3), round(forms["exact"]["capacity_factor_at_bound"], 6)
    (18.232, 0.002226)
    """
    probabilities = p_delta_forms(d, delta)
    if num_tokens is not None:
        capacity_factor_at_bound(1.0, num_tokens, k, n)  # checks T, k and n before any row
    out = {}
    for form in ("exact", "erfc", "exp"):
        bound = float(ec_min(n, d, delta, form))
        out[form] = {"p_delta": float(probabilities[form]), "ec_min": bound, "uniform_batch_tokens": bound * n,
                     "rel_err_vs_exact": 0.0 if form == "exact" else float(probabilities[f"{form}_rel_err"])}
        if num_tokens is not None:
            out[form]["capacity_factor_at_bound"] = float(capacity_factor_at_bound(bound, num_tokens, k, n))
    return out


def ec_min_grid(n: int, d: int, delta: float, points: int = 60) -> np.ndarray:
    """`points` thresholds, geometric, from delta / 10 (at least 1e-4) up to where the exact ec_min
    falls to max(1e4, 10 ec_min(delta)) (and at least up to delta): the range a plot of ec_min
    against delta shows.

    >>> grid = ec_min_grid(16, 4096, 0.03)
    >>> grid.shape, round(float(grid[0]), 6), bool(grid[-1] >= 0.03)
    ((60,), 0.003, True)
    """
    grid = np.geomspace(max(delta / 10, 1e-4), 0.999, 400)
    limit = max(1e4, 10 * float(ec_min(n, d, delta)))
    upper = grid[np.nonzero(ec_min(n, d, grid) <= limit)[0].max()]
    return np.geomspace(grid[0], max(upper, delta), int(as_count("points", points, minimum=2)))


def skewed_popularity(num_experts: int, skew: float, seed: int = 0) -> np.ndarray:
    """Expert popularity (E,): p proportional to q^skew, q ~ Dirichlet(1, ..., 1).

    q is one draw of numpy's `default_rng(seed)`; skew = 0 gives uniform experts (p = 1/E), larger
    skew concentrates the tokens on the experts q favours. The router inputs of
    `lshsim.dispatch.synthetic` draw the same Dirichlet(1) law with torch's generator
    (`dirichlet_popularity`, a log-popularity bias on the logits); this one stays on numpy, like
    the rest of `lshsim.analytic`, so the two draws differ for one seed.

    >>> skewed_popularity(4, 0.0).tolist()
    [0.25, 0.25, 0.25, 0.25]
    >>> p = skewed_popularity(8, 1.5, seed=3)
    >>> round(float(p.sum()), 12), bool(p.max() > 1 / 8)
    (1.0, True)
    """
    size = int(as_count("num_experts", num_experts, minimum=1))
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not np.isfinite(skew) or skew < 0:
        raise ValueError(f"skew={skew!r} must be finite and >= 0")
    popularity = np.random.default_rng(seed).dirichlet(np.ones(size)) ** skew
    return popularity / popularity.sum()


def drop_estimates(num_tokens: int, k: int, capacity_factor: float, popularity) -> tuple[int, dict[str, float]]:
    """(capacity C, {method: expected dropped fraction}) for T tokens, k choices, E = len(popularity).

    C = `capacity_from_factor`(T, k, E, capacity_factor); the fractions come from
    `expected_dropped_fraction` with the Gumbel-top-k inclusion probabilities of `popularity`,
    one per method of OVERFLOW_METHODS.

    >>> capacity, drops = drop_estimates(4096, 2, 1.0, np.full(16, 1 / 16))
    >>> capacity, round(drops["exact"], 4)
    (512, 0.0165)
    """
    p = _popularity(popularity)
    cap = int(capacity_from_factor(num_tokens, k, p.size, capacity_factor))
    inclusion = topk_inclusion_probabilities(popularity, k)
    drops = {method: float(expected_dropped_fraction(num_tokens, k, cap, inclusion=inclusion, method=method))
             for method in OVERFLOW_METHODS}
    return cap, drops
