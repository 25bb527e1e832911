"""LSH collision probabilities, amplification, expected buckets and compression rates.

Hash families (as implemented in `lshsim.dispatch.lsh`): hyperplane h(x) = sign((R x)_1) and
cross-polytope h(x) = argmax over the 2 d' signed coordinates of R x (Andoni et al. 2015). With a
Gaussian R (`LSHConfig(rotation="gaussian")`) the projections of two unit vectors at angle theta
(alpha = cos theta) are d' i.i.d. standard bivariate normal pairs (X_i, Y_i) with correlation alpha,
so the formulas below are EXACT for lsh.py's Gaussian projection with d = d' (`proj_dim`; None means
d_model). For a uniformly random rotation (or the "hadamard" pseudo-rotation) they are the large-d
limit: e.g. at d = 2, orthogonal vectors never collide under a rotation, but do with probability
1/4 under a Gaussian projection.

* Hyperplane (Charikar 2002): Pr[h(x) = h(y)] = 1 - theta / pi.
* Cross-polytope (Andoni et al. 2015, Theorem 1):
  Pr = 2d * Pr[X_1 >= |X_j| and Y_1 >= |Y_j| for all j != 1]
     = 2d * int int_{x, y >= 0} phi_alpha(x, y) q(x, y)^(d-1) dx dy,
  q(x, y) = Pr[|X| <= x, |Y| <= y] (a rectangle probability of the bivariate normal, from Owen's T
  function). The outer integral is Gauss-Legendre in the rotated coordinates u = (x+y)/sqrt 2,
  v = (x-y)/sqrt 2, in which phi_alpha factorises; `cross_polytope_collision_probability`.
  Asymptotically ln(1/Pr) = tau^2/(4 - tau^2) ln d + O(ln ln d), tau^2 = 2 - 2 alpha, i.e.
  Pr ~ d^(-(1 - alpha)/(1 + alpha)) without the O(ln ln d) term. That form is a poor
  approximation at practical d (it ignores a factor that grows like a power of ln d):

  =====  ================  ================  ================  ================
  d      cos 0.5           cos 0.8           cos 0.9           cos 0.95
  =====  ================  ================  ================  ================
  16     0.1730 / 0.3969   0.3999 / 0.7349   0.5478 / 0.8642   0.6660 / 0.9314
  64     0.0982 / 0.2500   0.3073 / 0.6300   0.4645 / 0.8034   0.5977 / 0.8989
  256    0.0571 / 0.1575   0.2415 / 0.5400   0.4006 / 0.7469   0.5431 / 0.8675
  1024   0.0338 / 0.0992   0.1927 / 0.4629   0.3495 / 0.6943   0.4977 / 0.8372
  =====  ================  ================  ================  ================

  (integral / asymptotic). The asymptotic form overstates Pr by a factor 1.40 (d 16, cos 0.95)
  to 2.93 (d 1024, cos 0.5); in ln(1/Pr) it is off by 0.34-1.08, growing with d: the dropped
  O(ln ln d) term is not small at any practical d. `asymptotic_error_table` recomputes this.
* Amplification: K concatenated functions (lsh.py's `num_hashes`, called L there): p^K; L
  independent tables: 1 - (1 - p^K)^L.

Expected buckets and compression rate (`expected_buckets_clusters`): the exact distribution of
bucket counts depends on more than pairwise collision probabilities (collisions inside a group of
similar tokens are strongly positively correlated; first-order pairwise estimators such as
sum_i 1 / (1 + sum_j p_ij) ignore that correlation and under-predict the compression rate of
clustered tokens). The model
used here is exact for a cluster of m tokens whose pairwise cosines all equal rho ("exchangeable
cluster"): with a Gaussian projection, the projected coordinates are Z_i = sqrt(rho) U +
sqrt(1 - rho) V_i with a common U ~ N(0, I_d') and i.i.d. V_i, so given U the m codes are i.i.d.
with probabilities pi(U) over the 2 d' outcomes (a 1-D integral per outcome), L hashes give the
product distribution over (2 d')^L buckets, and
    E[B_cluster] = E_U[ sum_b 1 - (1 - pi_b(U))^m ].
E_U is a Monte Carlo average over latent draws U (its standard error is reported). Clusters whose
centres are orthogonal are independent, and by the symmetry of the hash every bucket is alike, so
with R = (2 d')^L buckets
    E[B_total] = R * (1 - prod_c (1 - E[B_c] / R)).
Approximations, stated: clusters are taken as exchangeable (one rho per cluster, the mean of its
pairwise cosines) and mutually orthogonal; the Gaussian projection (exact) rather than a rotation.

Real hidden states break both approximations: they share a common direction (mean pairwise
cosine 0.1-0.25, so no two groups are orthogonal and some buckets are far likelier than others)
and hold tight near-duplicates inside loose groups, which one mean cosine per group averages
away; the components model above then over-predicts their compression rate by up to 27%. The
nested (tree) model (`token_tree`, `expected_buckets_tree`, the default of
`predicted_compression_rate`) generalises it: the tokens' average-linkage tree, each node at the
mean cosine between the groups it joins, gives latent Gaussians per node (Z_i = sum over the
nodes on i's path of sqrt(h_v - h_parent) U_v), so Cov(Z_i, Z_j) = h_lca(i, j); the root carries
the shared direction, and every tight group inside a loose one is a node of its own. The
exchangeable-cluster model is the tree with its root at cosine 0 and one node per cluster.
E[B] is a Monte Carlo mean over draws of the model (its latent Gaussians and the hash codes they
give), with its standard error: it reads the tree (N - 1 heights and their topology), not the
tokens. Approximation, stated: the tree's (ultrametric) cosines replace the tokens' own.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from scipy import special

from lshsim.analytic._common import (MonteCarloEstimate, as_cos, as_count, as_dim, as_real, binomial_estimate,
                                     maybe_scalar, mean_estimate)

__all__ = [
    "hyperplane_collision_probability", "cross_polytope_collision_probability",
    "cross_polytope_collision_asymptotic", "cross_polytope_collision_monte_carlo",
    "hyperplane_collision_monte_carlo", "amplify", "asymptotic_error_table", "collision_probability",
    "BucketPrediction", "expected_buckets_clusters", "clusters_from_tokens", "predicted_compression_rate",
    "TokenTree", "token_tree", "expected_buckets_tree",
    "clustered_compression_rate", "measured_compression_rate", "FAMILIES", "canonical_family",
    "collision_summary", "collision_monte_carlo",
]

FAMILIES = ("cross_polytope", "hyperplane")
_SQRT2 = np.sqrt(2.0)


# ---- hyperplane ---------------------------------------------------------------------------------
def hyperplane_collision_probability(cos):
    """Pr[h(x) = h(y)] = 1 - theta / pi, theta = arccos(cos), for a random Gaussian hyperplane.

    Source: Charikar (2002), from Goemans and Williamson (1995). Exact in every dimension.

    >>> hyperplane_collision_probability([1.0, 0.5, 0.0, -1.0]).round(4).tolist()
    [1.0, 0.6667, 0.5, 0.0]
    """
    alpha = as_cos("cos", cos)
    return maybe_scalar(1.0 - np.arccos(alpha) / np.pi)


def hyperplane_collision_monte_carlo(d: int, cos: float, num_samples: int = 100_000, seed: int = 0,
                                     chunk: int | None = None) -> MonteCarloEstimate:
    """Empirical hyperplane hashing: draw random vector pairs at the given cosine and random Gaussian
    hyperplanes in R^d, count equal sign bits.

    Each sample: x uniform on the sphere, y = cos x + sin u (u a random unit vector orthogonal to
    x), r ~ N(0, I_d); collide iff sign(r.x) = sign(r.y).

    >>> e = hyperplane_collision_monte_carlo(32, 0.5, num_samples=20_000)
    >>> abs(e.z_score(hyperplane_collision_probability(0.5))) < 3
    True
    """
    d = int(as_dim("d", d))
    alpha = float(as_cos("cos", cos))
    num_samples = int(as_count("num_samples", num_samples, minimum=1))
    chunk = max(64, (1 << 20) // d) if chunk is None else int(as_count("chunk", chunk, minimum=1))  # ~8 MiB arrays
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, num_samples, chunk):
        size = min(chunk, num_samples - start)
        x, y = _pairs_at_cos(rng, size, d, alpha)  # (size, d) each
        r = rng.standard_normal((size, d))  # (size, d) one hyperplane per pair
        side_x = np.signbit(np.einsum("nd,nd->n", r, x))  # (size,)
        side_y = np.signbit(np.einsum("nd,nd->n", r, y))  # (size,)
        hits += int(np.count_nonzero(side_x == side_y))
    return binomial_estimate(hits, num_samples)


def _pairs_at_cos(rng: np.random.Generator, size: int, d: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Random unit vector pairs with x.y = alpha exactly, (size, d) each."""
    x = rng.standard_normal((size, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u = rng.standard_normal((size, d))
    u -= np.einsum("nd,nd->n", u, x)[:, None] * x  # orthogonal to x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return x, alpha * x + np.sqrt(max(0.0, 1.0 - alpha * alpha)) * u


# ---- cross-polytope -----------------------------------------------------------------------------
def _upper_orthant(h: np.ndarray, k: np.ndarray, rho: float) -> np.ndarray:
    """Pr[X > h, Y > k] for standard bivariate normal with correlation rho, h, k > 0 (Owen 1956)."""
    s = np.sqrt(1.0 - rho * rho)
    return (0.5 * (special.ndtr(-h) + special.ndtr(-k)) - special.owens_t(h, (k - rho * h) / (h * s))
            - special.owens_t(k, (h - rho * k) / (k * s)))


def _log_rectangle(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """log q(x, y) = log Pr[|X| <= x, |Y| <= y], computed from 1 - q to keep q^(d-1) accurate."""
    outside = (special.erfc(x / _SQRT2) + special.erfc(y / _SQRT2)
               - 2.0 * (_upper_orthant(x, y, alpha) + _upper_orthant(x, y, -alpha)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log1p(-np.clip(outside, 0.0, 1.0))  # roundoff guard only: outside is a probability


@functools.lru_cache(maxsize=8)
def _leggauss(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy's Gauss-Legendre nodes and weights on [-1, 1] for `nodes` points, computed once per count (an
    eigenvalue problem each time otherwise; `_conditional_code_probs` asks for them once per latent pool).
    Read-only: every caller shares the arrays."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    t.setflags(write=False)
    w.setflags(write=False)
    return t, w


_CP_RADIUS = 8.5  # phi(8.5) ~ 1e-16: the integration box in units of the marginal standard deviations


def _cp_integral(dims: np.ndarray, alpha: float, nodes: int) -> np.ndarray:
    """2d * E[q^(d-1) 1[x, y >= 0]] for all d in `dims` at one alpha in (-1, 1); (len(dims),)."""
    t, w = _leggauss(nodes)
    u_max = _CP_RADIUS * np.sqrt(1.0 + alpha)
    u = (t + 1.0) / 2.0 * u_max  # (n,) u in (0, u_max)
    wu = w * u_max / 2.0
    half = np.minimum(u, _CP_RADIUS * np.sqrt(1.0 - alpha))[:, None]  # (n, 1) |v| <= min(u, V)
    v = t[None, :] * half  # (n, n)
    weight = wu[:, None] * w[None, :] * half  # (n, n)
    x = (u[:, None] + v) / _SQRT2  # (n, n)
    y = (u[:, None] - v) / _SQRT2  # (n, n)
    density = np.exp(-u[:, None] ** 2 / (2 * (1 + alpha)) - v ** 2 / (2 * (1 - alpha))) \
        / (2 * np.pi * np.sqrt(1 - alpha * alpha))  # (n, n) phi_alpha(x, y)
    log_q = _log_rectangle(x, y, alpha).ravel()  # (n*n,)
    base = (weight * density).ravel()  # (n*n,)
    return 2.0 * dims * (np.exp(np.outer(dims - 1.0, log_q)) @ base)  # (len(dims),)


def cross_polytope_collision_probability(d, cos, nodes: int = 128, return_error: bool = False):
    """Collision probability of one cross-polytope hash in dimension d for unit vectors at cosine `cos`.

    Pr = 2d * int int_{x,y>=0} phi_alpha(x, y) Pr[|X| <= x, |Y| <= y]^(d-1) dx dy, alpha = cos
    (Andoni et al. 2015). Exact for lsh.py's Gaussian projection with d = proj_dim.
    Numerics: `nodes` x `nodes` Gauss-Legendre in rotated coordinates; the rectangle probability
    from Owen's T; about 0.05 s per cosine (all d at once). Against an adaptive dblquad reference
    the default rule is within 3e-11 at d = 1024 (benchmarks/RESULTS.md). With return_error=True
    also returns the difference to a nodes/2 rule, a pessimistic error estimate (~4e-8 at d = 1024).
    cos = 1 gives 1, cos = -1 gives 0. Arrays broadcast.

    >>> round(cross_polytope_collision_probability(1024, 0.9), 6)
    0.349544
    >>> cross_polytope_collision_probability([16, 256], 0.0).round(12).tolist()  # independent: 1/(2d)
    [0.03125, 0.001953125]
    """
    dims = as_dim("d", d)
    alpha = as_cos("cos", cos)
    nodes = int(as_count("nodes", nodes, minimum=8))
    dims_b, alpha_b = np.broadcast_arrays(dims, alpha)
    result = np.empty(dims_b.shape)
    error = np.zeros(dims_b.shape)
    for value in np.unique(alpha_b):
        mask = alpha_b == value
        if value >= 1.0:
            result[mask] = 1.0
            continue
        if value <= -1.0:
            result[mask] = 0.0
            continue
        d_sel = dims_b[mask].astype(np.float64)
        result[mask] = _cp_integral(d_sel, float(value), nodes)
        if return_error:
            error[mask] = np.abs(result[mask] - _cp_integral(d_sel, float(value), max(nodes // 2, 8)))
    if return_error:
        return maybe_scalar(result), maybe_scalar(error)
    return maybe_scalar(result)


def cross_polytope_collision_asymptotic(d, cos):
    """Asymptotic form Pr ~ d^(-tau^2/(4 - tau^2)) = d^(-(1-alpha)/(1+alpha)), tau^2 = 2 - 2 alpha.

    Source: Andoni et al. (2015) Theorem 1, ln(1/Pr) = tau^2/(4 - tau^2) ln d + O(ln ln d), with the
    O(ln ln d) term dropped. See the module's table: it overstates Pr 1.4-2.9x at d <= 1024.

    >>> round(cross_polytope_collision_asymptotic(1024, 0.9), 4)
    0.6943
    """
    dims = as_dim("d", d).astype(np.float64)
    alpha = as_cos("cos", cos)
    with np.errstate(divide="ignore"):
        exponent = np.where(alpha > -1, (1.0 - alpha) / np.maximum(1.0 + alpha, 1e-300), np.inf)
    return maybe_scalar(np.where(alpha > -1, dims ** (-exponent), 0.0))


def asymptotic_error_table(dims=(16, 64, 256, 1024), cosines=(0.5, 0.8, 0.9, 0.95)) -> list[dict]:
    """Rows {d, cos, integral, asymptotic, ratio, log_error}: how far the asymptotic form is off.

    log_error = ln(1/Pr_integral) - ln(1/Pr_asymptotic), the size of the dropped O(ln ln d) term.
    """
    rows = []
    for d in dims:
        for c in cosines:
            exact = float(cross_polytope_collision_probability(d, c))
            asym = float(cross_polytope_collision_asymptotic(d, c))
            rows.append({"d": int(d), "cos": float(c), "integral": exact, "asymptotic": asym,
                         "ratio": asym / exact, "log_error": float(np.log(asym / exact))})
    return rows


def cross_polytope_collision_monte_carlo(d: int, cos, num_samples: int = 20_000, seed: int = 0,
                                         chunk: int | None = None) -> MonteCarloEstimate | list[MonteCarloEstimate]:
    """Empirical cross-polytope collisions: hash pairs directly, from the definition.

    Each sample draws the d projected coordinate pairs (X_i, Y_i) i.i.d. standard bivariate normal
    with correlation `cos` (what a Gaussian projection of two unit vectors at that cosine gives),
    hashes both with argmax_i |.| and its sign, and counts equal hashes. `cos` may be a list: the
    same X and noise draws serve every cosine (one estimate each, returned as a list).

    >>> e = cross_polytope_collision_monte_carlo(16, 0.5, num_samples=20_000)
    >>> abs(e.z_score(cross_polytope_collision_probability(16, 0.5))) < 3
    True
    """
    d = int(as_dim("d", d))
    alphas = np.atleast_1d(as_cos("cos", cos))
    num_samples = int(as_count("num_samples", num_samples, minimum=1))
    chunk = max(64, (1 << 21) // d) if chunk is None else int(as_count("chunk", chunk, minimum=1))  # ~8 MiB float32
    rng = np.random.default_rng(seed)
    hits = np.zeros(alphas.size, dtype=np.int64)
    for start in range(0, num_samples, chunk):
        size = min(chunk, num_samples - start)
        x = rng.standard_normal((size, d), dtype=np.float32)  # (size, d)
        noise = rng.standard_normal((size, d), dtype=np.float32)  # (size, d)
        code_x = _cp_codes(x)  # (size,)
        for i, alpha in enumerate(alphas):
            y = np.float32(alpha) * x + np.float32(np.sqrt(1.0 - alpha * alpha)) * noise  # (size, d)
            hits[i] += int(np.count_nonzero(code_x == _cp_codes(y)))
    estimates = [binomial_estimate(int(h), num_samples) for h in hits]
    return estimates[0] if np.ndim(cos) == 0 else estimates


def _cp_codes(z: np.ndarray) -> np.ndarray:
    """Cross-polytope codes of rows of z: index of max |z_i|, plus d when that coordinate is negative."""
    index = np.abs(z).argmax(axis=1)  # (n,)
    negative = z[np.arange(z.shape[0]), index] < 0
    return index + z.shape[1] * negative


def collision_probability(family: str, d, cos):
    """One hash of `family` ("cross_polytope" in dimension d, or "hyperplane", d ignored)."""
    if family == "hyperplane":
        return hyperplane_collision_probability(cos)
    if family in ("cross_polytope", "cross-polytope"):
        return cross_polytope_collision_probability(d, cos)
    raise ValueError(f"family={family!r} must be one of {FAMILIES}")


def canonical_family(family: str) -> str:
    """The name in FAMILIES of a hash family, accepting '-' for '_' ('cross-polytope').

    >>> canonical_family("cross-polytope"), canonical_family("hyperplane")
    ('cross_polytope', 'hyperplane')
    """
    key = family.replace("-", "_") if isinstance(family, str) else family
    if key not in FAMILIES:
        raise ValueError(f"family={family!r} must be one of ('cross-polytope', 'hyperplane')")
    return key


def collision_summary(family: str, d: int, cos: float, hashes: int = 1, tables: int = 1) -> dict:
    """One hash's collision probability at `cos` and its amplification, checked and as plain data.

    family: 'cross-polytope' (or 'cross_polytope') or 'hyperplane'; d: projection dimension
    (>= 2; the hyperplane probability does not depend on it); hashes: K functions concatenated
    into one bucket id; tables: L independent tables. Returns {family, dim, cos, hashes, tables,
    probability (exact), quadrature_error (cross-polytope: the difference to a rule with half the
    nodes; 0 for the hyperplane), asymptotic (cross-polytope's d^(-(1-cos)/(1+cos)), None for the
    hyperplane), concatenated (p^K), amplified (1 - (1 - p^K)^L)}.

    >>> s = collision_summary("hyperplane", 64, 0.5, hashes=2, tables=3)
    >>> round(s["probability"], 6), round(s["amplified"], 6)
    (0.666667, 0.828532)
    """
    key = canonical_family(family)
    for name, value in (("hashes", hashes), ("tables", tables)):
        if value < 1:
            raise ValueError(f"{name}={value} must be an integer >= 1")
    if key == "cross_polytope":
        single, error = cross_polytope_collision_probability(d, cos, return_error=True)
        asymptotic = float(cross_polytope_collision_asymptotic(d, cos))
    else:
        if d < 2:
            raise ValueError(f"d={d} must be an integer >= 2")
        single, error, asymptotic = float(hyperplane_collision_probability(cos)), 0.0, None
    return {"family": family, "dim": d, "cos": cos, "hashes": hashes, "tables": tables,
            "probability": float(single), "quadrature_error": float(error), "asymptotic": asymptotic,
            "concatenated": float(amplify(single, hashes)), "amplified": float(amplify(single, hashes, tables))}


def collision_monte_carlo(family: str, d: int, cos: float, num_samples: int, seed: int = 0) -> MonteCarloEstimate:
    """Monte Carlo collision probability of one hash of `family` (the family's own estimator)."""
    if canonical_family(family) == "cross_polytope":
        return cross_polytope_collision_monte_carlo(d, cos, num_samples, seed=seed)
    return hyperplane_collision_monte_carlo(d, cos, num_samples, seed=seed)


def amplify(p, num_concatenated=1, num_tables=1):
    """LSH amplification: K concatenated functions give p^K; L tables give 1 - (1 - p^K)^L.

    Source: Indyk and Motwani (1998). Note lsh.py's `num_hashes` (the paper's L = 6)
    is the number of CONCATENATED functions, K here: one bucket id, collision p^K.

    >>> amplify(0.9, 6), round(amplify(0.5, 2, 4), 6)
    (0.531441, 0.683594)
    """
    prob = as_real("p", p)
    bad = (prob < 0) | (prob > 1)
    if bad.any():
        raise ValueError(f"p={prob[bad].ravel()[0].item()!r} must be a probability in [0, 1]")
    k = as_count("num_concatenated", num_concatenated, minimum=1)
    tables = as_count("num_tables", num_tables, minimum=1)
    # -expm1(L log1p(-p^K)) = 1 - (1 - p^K)^L without the cancellation of 1 - (...) for tiny p^K (where
    # 1 - (1 - x)^L lost digits: 8e-7 relative at x = 4e-11); p^K = 1 gives -expm1(-inf) = 1
    with np.errstate(divide="ignore"):
        return maybe_scalar(-np.expm1(tables * np.log1p(-(prob ** k))))


# ---- expected buckets: the exchangeable-cluster model ---------------------------------------------
def _conditional_code_probs(latent: np.ndarray, rho: float, nodes: int = 64) -> np.ndarray:
    """pi(U): (P, d') latent draws -> (P, 2 d') probabilities of the cross-polytope codes of one token.

    Z = a U + b V, a = sqrt(rho), b = sqrt(1 - rho), V ~ N(0, I). Code (k, +) wins iff
    Z_k = max_j |Z_j|: pi_{k+} = int_0^inf phi((z - a U_k)/b)/b prod_{j != k} G_j(z) dz,
    G_j(z) = Pr[|a U_j + b V_j| <= z]; (k, -) uses phi((z + a U_k)/b). Gauss-Legendre in z on
    [max(0, M - 7b), M + 7b], M = a max_j |U_j|: the winning |Z| lies there except with
    probability ~1e-11. Speed trick: coordinates with a |U_j| < M - 14b neither win nor bind
    (their G_j = 1 and pi = 0 to ~1e-12 on that interval), so only the others are integrated.
    Codes are ordered as in lsh.py: k for +, d' + k for -.
    """
    num, dim = latent.shape
    out = np.zeros((num, 2 * dim))
    if rho >= 1.0:
        index = np.abs(latent).argmax(axis=1)
        negative = latent[np.arange(num), index] < 0
        out[np.arange(num), index + dim * negative] = 1.0
        return out
    a, b = np.sqrt(rho), np.sqrt(1.0 - rho)
    t, w = _leggauss(nodes)
    norm = b * np.sqrt(2 * np.pi)
    # all rows at once, in blocks: each row's active coordinates (ascending, as np.nonzero gives them) padded to
    # the block's largest count; the padding's log G is 0, added last, so every sum is the row-by-row one
    for start in range(0, num, _CODE_PROB_BLOCK):
        mean = a * latent[start:start + _CODE_PROB_BLOCK]  # (R, d')
        abs_mean = np.abs(mean)
        top = abs_mean.max(axis=1)  # (R,)
        mask = abs_mean >= (top - 14 * b)[:, None]  # (R, d') the active coordinates
        width = int(mask.sum(axis=1).max())
        order = np.argsort(~mask, axis=1, kind="stable")[:, :width]  # (R, A) active ones first, ascending
        valid = np.take_along_axis(mask, order, axis=1)  # (R, A)
        mu = np.take_along_axis(mean, order, axis=1)[:, :, None]  # (R, A, 1)
        lo, hi = np.maximum(0.0, top - 7 * b), top + 7 * b  # (R,)
        z = lo[:, None] + (t + 1) / 2 * (hi - lo)[:, None]  # (R, n)
        wz = w * (hi - lo)[:, None] / 2  # (R, n)
        zz = z[:, None, :]  # (R, 1, n)
        abs_mu = np.abs(mu)
        tail = special.ndtr((abs_mu - zz) / b) + special.ndtr((-zz - abs_mu) / b)  # (R, A, n) Pr[|Z_j| > z]
        with np.errstate(divide="ignore"):
            log_g = np.where(tail < 0.5, np.log1p(-np.minimum(tail, 0.5)), np.log(np.maximum(1.0 - tail, 0.0)))
        log_g = np.where(valid[:, :, None], np.maximum(log_g, -700.0), 0.0)  # exp(-700) is 0 for our purpose
        weight = np.exp(log_g.sum(axis=1)[:, None, :] - log_g) * wz[:, None, :]  # (R, A, n) prod over j != k, dz
        plus = np.sum(np.exp(-0.5 * ((zz - mu) / b) ** 2) * weight, axis=2) / norm  # (R, A)
        minus = np.sum(np.exp(-0.5 * ((zz + mu) / b) ** 2) * weight, axis=2) / norm
        rows, slots = np.nonzero(valid)
        out[start + rows, order[rows, slots]] = plus[rows, slots]
        out[start + rows, dim + order[rows, slots]] = minus[rows, slots]
    return out


#: rows of `_conditional_code_probs` computed together (bounds its (rows, d', nodes) arrays)
_CODE_PROB_BLOCK = 256


def _bucket_leaves(code_probs: list[np.ndarray], tau: float) -> tuple[np.ndarray, float]:
    """Bucket probabilities of the product distribution over L hashes, pruned below tau.

    Returns (leaves, tail): the products >= tau, and the total probability of the pruned ones (for
    which 1 - (1 - x)^m ~= m x with relative error <= m tau / 2).
    """
    leaves = np.ones(1)
    tail = 0.0
    for probs in code_probs:
        keep = probs[probs >= tau]  # (k,)
        rest = max(0.0, 1.0 - keep.sum())
        tail += float(leaves.sum()) * rest
        prod = np.outer(leaves, keep).ravel()
        small = prod < tau
        tail += float(prod[small].sum())
        leaves = prod[~small]
    return leaves, tail


@dataclass(frozen=True)
class BucketPrediction:
    """`expected_buckets_clusters` result.

    expected_buckets: E[B_total]; compression_rate: E[B_total] / N; stderr: Monte Carlo standard
    error of the compression rate (over the latent draws); per_cluster: (K,) E[B_c] before merging
    across clusters; per_cluster_stderr: (K,) their Monte Carlo standard errors; num_tokens: N;
    total_buckets: R = (2 d')^L.
    """

    expected_buckets: float
    compression_rate: float
    stderr: float
    per_cluster: np.ndarray
    per_cluster_stderr: np.ndarray
    num_tokens: int
    total_buckets: float


def _proj_dim_for(family: str, proj_dim) -> int:
    if family == "hyperplane":
        return 1
    if family in ("cross_polytope", "cross-polytope"):
        return int(as_count("proj_dim", proj_dim, minimum=1))
    raise ValueError(f"family={family!r} must be one of {FAMILIES}")


def _cluster_bucket_table(sizes: np.ndarray, rho: float, dim: int, num_hashes: int, num_latent: int,
                          num_tuples: int, rng: np.random.Generator, epsilon: float,
                          num_batches: int = 8) -> np.ndarray:
    """(num_batches, len(sizes)) independent estimates of E[B_c] for clusters of each size at cosine rho.

    Every batch draws num_latent / num_batches latent vectors U and forms num_tuples / num_batches
    L-tuples from them: disjoint (fresh draws for every tuple) when there are enough, otherwise L
    distinct pool members per tuple (a speed trick: pi(U) is the costly part; still unbiased, the
    L hashes of a tuple are independent draws, but the variance is larger). The batches share
    nothing, so their spread gives an honest standard error.
    """
    pool_size = max(num_hashes, num_latent // num_batches)
    tuples = max(1, num_tuples // num_batches)
    tau = epsilon / max(int(sizes.max()), 1)
    m = sizes.astype(np.float64)  # (S,)
    estimates = np.empty((num_batches, sizes.size))
    for batch in range(num_batches):
        latent = rng.standard_normal((pool_size, dim))  # (P, d')
        pool = [np.sort(row[row > 0])[::-1] for row in _conditional_code_probs(latent, rho)]
        if tuples * num_hashes <= pool_size:  # enough draws: every tuple gets fresh ones
            picks = np.arange(tuples * num_hashes).reshape(tuples, num_hashes)  # (T, L)
        else:
            picks = np.argsort(rng.random((tuples, pool_size)), axis=1)[:, :num_hashes]  # (T, L) distinct
        total = np.zeros(sizes.size)
        for i in range(tuples):
            leaves, tail = _bucket_leaves([pool[j] for j in picks[i]], tau)
            buckets = -np.expm1(np.outer(np.log1p(-np.minimum(leaves, 1.0)), m)).sum(axis=0) + m * tail  # (S,)
            total += np.minimum(buckets, m)  # a cluster of m tokens has at most m buckets
        estimates[batch] = total / tuples
    return estimates


def expected_buckets_clusters(cluster_sizes, within_cos, proj_dim=None, num_hashes: int = 6, *,
                              family: str = "cross_polytope", num_latent: int | None = None, num_tuples: int = 3000,
                              seed: int = 0, epsilon: float = 0.01) -> BucketPrediction:
    """Expected non-empty buckets and compression rate of clustered tokens under L concatenated hashes.

    cluster_sizes: (K,) tokens per cluster; within_cos: scalar or (K,) pairwise cosine inside each
    cluster (in [0, 1]); proj_dim: d' (lsh.py's effective proj_dim); num_hashes: L concatenated.
    Model (module docstring): per cluster E[B_c] = E_U[sum_b 1 - (1 - pi_b(U))^m] (exact for an
    exchangeable cluster under a Gaussian projection, up to the Monte Carlo over U and pruning of
    buckets with m pi < epsilon), clusters merged by E[B] = R (1 - prod_c (1 - E[B_c]/R)).

    >>> p = expected_buckets_clusters([50, 50], 1.0, proj_dim=8)  # duplicates: one bucket per cluster
    >>> round(p.expected_buckets, 6), p.total_buckets
    (2.0, 16777216.0)
    """
    sizes = as_count("cluster_sizes", cluster_sizes, minimum=0).ravel()
    if sizes.size == 0 or sizes.sum() == 0:
        raise ValueError(f"cluster_sizes={cluster_sizes!r} must hold at least one token")
    rho = np.broadcast_to(as_real("within_cos", within_cos), sizes.shape).astype(np.float64)
    bad = (rho < 0) | (rho > 1)
    if bad.any():
        raise ValueError(f"within_cos={rho[bad][0].item()!r} must be in [0, 1] (a cluster's tokens point the same way)")
    dim = _proj_dim_for(family, proj_dim)
    num_hashes = int(as_count("num_hashes", num_hashes, minimum=1))
    num_tuples = int(as_count("num_tuples", num_tuples, minimum=2))
    num_latent = num_tuples * num_hashes if num_latent is None else int(as_count("num_latent", num_latent, minimum=2))
    rng = np.random.default_rng(seed)
    per_cluster = np.zeros(sizes.size)
    per_cluster_var = np.zeros(sizes.size)
    # clusters with nearly the same cosine share one table: bins of width 0.1 in ln(1 - rho), each
    # at the size-weighted mean rho of its members, with tuples in proportion to its tokens
    with np.errstate(divide="ignore"):
        keys = np.where(rho >= 1.0, np.inf, np.round(np.log(np.maximum(1.0 - rho, 1e-300)) / 0.1))
    for key in np.unique(keys[sizes > 0]):
        members = np.nonzero((keys == key) & (sizes > 0))[0]
        uniq, inverse = np.unique(sizes[members], return_inverse=True)
        if np.isinf(key):
            per_cluster[members] = 1.0
            continue
        bin_rho = float(np.average(rho[members], weights=sizes[members]))
        share = sizes[members].sum() / sizes.sum()
        bin_tuples = max(min(num_tuples, 400), int(round(num_tuples * share)))
        bin_latent = max(num_hashes * 8, int(round(num_latent * bin_tuples / num_tuples)))
        table = _cluster_bucket_table(uniq, bin_rho, dim, num_hashes, bin_latent, bin_tuples, rng, epsilon)
        per_cluster[members] = table.mean(axis=0)[inverse]
        per_cluster_var[members] = (table.var(axis=0, ddof=1) / table.shape[0])[inverse]
    total_buckets = float(2 * dim) ** num_hashes
    log_empty = np.sum(np.log1p(-np.minimum(per_cluster / total_buckets, 1.0)))
    expected = total_buckets * -np.expm1(log_empty)
    num_tokens = int(sizes.sum())
    # per-cluster estimates at one cosine share latent draws (correlated): bound the error by
    # the fully correlated sum of standard errors
    stderr = float(np.sum(np.sqrt(per_cluster_var))) / num_tokens
    return BucketPrediction(expected_buckets=float(expected), compression_rate=float(expected) / num_tokens,
                            stderr=stderr, per_cluster=per_cluster, per_cluster_stderr=np.sqrt(per_cluster_var),
                            num_tokens=num_tokens,
                            total_buckets=total_buckets)


def clusters_from_tokens(tokens, cos_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group tokens into clusters: connected components of the graph cos(x_i, x_j) > cos_threshold.

    Returns (labels (N,), sizes (K,), within_cos (K,) the mean pairwise cosine inside each cluster,
    1.0 for singletons). O(N^2 d): meant for N up to ~10^4.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    if hasattr(tokens, "detach"):
        tokens = tokens.detach().cpu().double().numpy()
    x = as_real("tokens", tokens)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"tokens must be 2-D (N, d) with N >= 1, got shape {x.shape}")
    threshold = float(as_cos("cos_threshold", cos_threshold))
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(f"tokens row {int(np.argmin(norms))} has zero norm (no direction)")
    unit = x / norms[:, None]  # (N, d)
    cos = unit @ unit.T  # (N, N)
    _, labels = connected_components(csr_matrix(cos > threshold), directed=False)
    sizes = np.bincount(labels)  # (K,)
    within = np.ones(sizes.size)
    sums = np.zeros(sizes.size)
    np.add.at(sums, labels, (cos * (labels[:, None] == labels[None, :])).sum(axis=1))
    pairs = sizes * (sizes - 1.0)
    multi = sizes > 1
    within[multi] = np.clip((sums[multi] - sizes[multi]) / pairs[multi], 0.0, 1.0)  # drop the diagonal
    return labels, sizes, within


# ---- expected buckets: the nested (tree) model -----------------------------------------------------
@dataclass(frozen=True)
class TokenTree:
    """`token_tree` result: the average-linkage dendrogram of the tokens' cosines.

    children: (N-1, 2) int64, merge i joins nodes children[i] into node N + i (tokens are nodes
    0..N-1, the root is 2N - 2); height: (2N-1,) the cosine of every node, 1 for a token and, for
    merge i, the mean cosine between the two groups it joins, clipped to [0, 1]; clipped: how many
    merges had a negative mean cosine (set to 0, i.e. independent); num_tokens: N.
    """

    children: np.ndarray
    height: np.ndarray
    clipped: int
    num_tokens: int


def _unit_rows(tokens, name: str = "tokens") -> np.ndarray:
    if hasattr(tokens, "detach"):
        tokens = tokens.detach().cpu().double().numpy()
    x = as_real(name, tokens)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be 2-D (N, d) with N >= 1, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{name} row {int(np.argmin(norms))} has zero norm (no direction)")
    return x / norms[:, None]


def token_tree(tokens) -> TokenTree:
    """The tokens' nested-cluster structure: average linkage (UPGMA) on cosine distance 1 - cos.

    Each merge's height is the mean cosine between all pairs across the two groups it joins, so
    the tree's cosines cos_T(i, j) = height[lowest common ancestor of i and j] have the same sum
    over all pairs as the tokens' own cosines (before the clip at 0), and average linkage never
    makes a parent higher than a child. O(N^2 d) time, O(N^2) memory: meant for N up to ~10^4.
    """
    from scipy.cluster.hierarchy import linkage

    unit = _unit_rows(tokens)
    num = unit.shape[0]
    height = np.ones(2 * num - 1)
    if num == 1:
        return TokenTree(children=np.zeros((0, 2), dtype=np.int64), height=height, clipped=0, num_tokens=1)
    cos = np.clip(unit @ unit.T, -1.0, 1.0)  # (N, N)
    distance = 1.0 - cos[np.triu_indices(num, 1)]  # condensed, as scipy's pdist orders it
    merges = linkage(np.maximum(distance, 0.0), method="average")  # (N-1, 4)
    merged = 1.0 - merges[:, 2]
    height[num:] = np.clip(merged, 0.0, 1.0)
    return TokenTree(children=merges[:, :2].astype(np.int64), height=height,
                     clipped=int(np.count_nonzero(merged < 0)), num_tokens=num)


def _count_distinct(codes: np.ndarray, radix: int) -> np.ndarray:
    """(S, N, L) codes in [0, radix) -> (S,) number of distinct L-tuples in each of the S rows."""
    draws, _, num_hashes = codes.shape
    if float(radix) ** num_hashes < 2.0 ** 62:
        ids = np.zeros(codes.shape[:2], dtype=np.int64)  # (S, N)
        for column in range(num_hashes):
            ids = ids * radix + codes[:, :, column]
        ids.sort(axis=1)
        return 1 + np.count_nonzero(np.diff(ids, axis=1), axis=1)
    return np.array([len(np.unique(codes[s], axis=0)) for s in range(draws)])


def expected_buckets_tree(tree: TokenTree, proj_dim, num_hashes: int = 6, *, family: str = "cross_polytope",
                          num_draws: int = 256, seed: int = 0) -> BucketPrediction:
    """Expected non-empty buckets of the nested (tree) model of the tokens, by Monte Carlo over the model.

    The model: every node v of the tree carries an independent latent U_v ~ N(0, I) per hash and
    projected coordinate, and a token's projection is Z_i = sum over the nodes v on its path from
    the root of sqrt(height[v] - height[parent v]) U_v (the root's parent at height 0, the token
    itself at height 1). Then Cov(Z_i, Z_j) = height[lca(i, j)]: a Gaussian projection of vectors
    whose cosines are the tree's. The exchangeable-cluster model of `expected_buckets_clusters` is
    the special case of a root at cosine 0 with one node per cluster; here the root carries the
    tokens' shared direction, and tight groups inside loose ones are nodes of their own. Each
    draw samples the model's L x d' coordinates of every token, takes lsh.py's codes (argmax over
    the 2 d' signed coordinates; the sign for "hyperplane") and counts the distinct L-tuples; the
    result is the mean over num_draws draws with its standard error. It reads the tree only
    (N - 1 merge heights and their topology), never the tokens or lsh.py.
    Approximations, stated: the tree's cosines replace the tokens' (an ultrametric: within any
    node, all pairs across two of its children get their mean cosine); negative mean cosines
    are taken as 0; a Gaussian projection (exact for lsh.py's "gaussian" rotation).
    """
    if not isinstance(tree, TokenTree):
        raise ValueError(f"tree={type(tree).__name__} must be a TokenTree (from token_tree(tokens))")
    dim = _proj_dim_for(family, proj_dim)
    num_hashes = int(as_count("num_hashes", num_hashes, minimum=1))
    num_draws = int(as_count("num_draws", num_draws, minimum=2))
    num = tree.num_tokens
    nodes = 2 * num - 1
    height = tree.height
    parent_height = np.zeros(nodes)  # the root's parent is at cosine 0
    for i, (left, right) in enumerate(tree.children):
        parent_height[left] = parent_height[right] = height[num + i]
    scale = np.sqrt(np.maximum(height - parent_height, 0.0))  # (2N-1,) roundoff guard: UPGMA is monotone
    width = num_hashes * dim
    chunk = max(1, min(num_draws, (1 << 22) // (nodes * width)))  # ~32 MiB of float64 per chunk
    rng = np.random.default_rng(seed)
    radix = 2 * dim
    counts = []
    for start in range(0, num_draws, chunk):
        size = min(chunk, num_draws - start)
        value = rng.standard_normal((nodes, size, width)) * scale[:, None, None]  # (2N-1, s, L d')
        for i in range(num - 2, -1, -1):  # top-down: a child adds its parent's value
            left, right = tree.children[i]
            value[left] += value[num + i]
            value[right] += value[num + i]
        z = value[:num].reshape(num, size, num_hashes, dim).transpose(1, 0, 2, 3)  # (s, N, L, d')
        index = np.abs(z).argmax(axis=3)  # (s, N, L)
        negative = np.take_along_axis(z, index[..., None], axis=3)[..., 0] < 0
        counts.append(_count_distinct(index + dim * negative, radix))
    buckets = mean_estimate(np.concatenate(counts).astype(np.float64))
    return BucketPrediction(expected_buckets=buckets.estimate, compression_rate=buckets.estimate / num,
                            stderr=buckets.stderr / num, per_cluster=np.zeros(0), per_cluster_stderr=np.zeros(0),
                            num_tokens=num, total_buckets=float(radix) ** num_hashes)


def predicted_compression_rate(tokens, proj_dim=None, num_hashes: int = 6, *, family: str = "cross_polytope",
                               model: str = "tree", cos_threshold: float | None = None, **kwargs) -> BucketPrediction:
    """Predict lsh.py's expected compression rate for a given set of tokens (one group).

    model="tree" (the default): the nested model of `expected_buckets_tree` on the tokens'
    average-linkage tree (`token_tree`); kwargs: num_draws, seed. model="components": the
    exchangeable-cluster model, connected components at cos > cos_threshold (default 0.5,
    `clusters_from_tokens`) each with its mean pairwise cosine, clusters orthogonal
    (`expected_buckets_clusters`; kwargs: num_tuples, num_latent, seed, epsilon). On real hidden
    states the components model over-predicts by up to 27% (a shared direction and near-duplicates
    inside loose components, benchmarks/HISTORY.md); both match clustered synthetic tokens.
    proj_dim None means d_model (lsh.py's default for "gaussian").
    """
    d_model = np.shape(tokens)[1] if np.ndim(tokens) == 2 else None
    dim = d_model if proj_dim is None else proj_dim
    if model == "tree":
        if cos_threshold is not None:
            raise ValueError(f"cos_threshold={cos_threshold!r} applies to model='components' only")
        return expected_buckets_tree(token_tree(tokens), dim, num_hashes, family=family, **kwargs)
    if model == "components":
        _, sizes, within = clusters_from_tokens(tokens, 0.5 if cos_threshold is None else cos_threshold)
        return expected_buckets_clusters(sizes, within, dim, num_hashes, family=family, **kwargs)
    raise ValueError(f"model={model!r} must be 'tree' or 'components'")


def clustered_compression_rate(num_tokens: int, num_clusters: int, noise: float, d_model: int, proj_dim=None,
                               num_hashes: int = 6, *, family: str = "cross_polytope", **kwargs) -> BucketPrediction:
    """Predicted compression rate of `lshsim.dispatch.lsh.clustered_tokens(N, d, K, noise)` from its parameters.

    Cluster sizes ~ Multinomial(N, 1/K) (each size Binomial(N, 1/K), taken independent); within-cluster
    cosine 1 / (1 + noise^2) (unit centres, noise of norm ~noise); centres random, so nearly
    orthogonal. E[B_c] is averaged over the binomial size distribution.
    """
    n = int(as_count("num_tokens", num_tokens, minimum=1))
    k = int(as_count("num_clusters", num_clusters, minimum=1))
    noise_level = float(as_real("noise", noise))
    if noise_level < 0:
        raise ValueError(f"noise={noise!r} must be >= 0")
    d_model = int(as_count("d_model", d_model, minimum=1))
    from scipy import stats

    support = np.arange(n + 1)
    pmf = stats.binom.pmf(support, n, 1.0 / k)
    keep = (pmf > 1e-12) & (support > 0)
    sizes, weights = support[keep], pmf[keep]
    dim = d_model if proj_dim is None else proj_dim
    rho = 1.0 / (1.0 + noise_level ** 2)
    per_size = expected_buckets_clusters(sizes, rho, dim, num_hashes, family=family, **kwargs)
    mean_buckets_per_cluster = float(np.dot(weights, per_size.per_cluster))  # E over the size distribution
    total = per_size.total_buckets
    expected = total * -np.expm1(k * np.log1p(-min(mean_buckets_per_cluster / total, 1.0)))
    bucket_stderr = float(np.dot(weights, per_size.per_cluster_stderr))  # correlated bound
    return dataclasses.replace(per_size, expected_buckets=float(expected), compression_rate=float(expected) / n,
                               num_tokens=n, stderr=k * bucket_stderr / n)


def measured_compression_rate(tokens, config, num_draws: int = 8, group=None) -> MonteCarloEstimate:
    """Mean compression rate of lsh.py's real hashing over `num_draws` hash draws (seeds config.seed + i).

    tokens: (N, d) torch tensor or array; group: (N,) int64 destination expert (default: all one
    group). Returns the mean of `Compressed.compression_rate` with its standard error.
    """
    import torch

    from lshsim.dispatch.lsh import compress

    x = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(np.asarray(tokens), dtype=torch.float32)
    num_draws = int(as_count("num_draws", num_draws, minimum=2))
    if group is None:
        group = torch.zeros(x.shape[0], dtype=torch.int64)
    rates = [compress(x, group, dataclasses.replace(config, seed=config.seed + i)).compression_rate
             for i in range(num_draws)]
    return mean_estimate(np.asarray(rates))
