"""Shared helpers of `lshsim.analytic`: argument validation and Monte Carlo estimates.

Validation never clips: a bad value raises `ValueError` naming the argument and the value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MonteCarloEstimate", "binomial_estimate", "mean_estimate", "as_real", "as_count", "as_dim",
           "as_cos", "as_open_unit", "as_positive", "as_nonnegative", "maybe_scalar"]

_Z_95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class MonteCarloEstimate:
    """A Monte Carlo estimate with its standard error and a 95% confidence interval.

    estimate: the sample mean; stderr: its standard error; ci_low, ci_high: a 95% interval
    (Wilson score interval for proportions, normal interval for means); num_samples: draws used.
    """

    estimate: float
    stderr: float
    ci_low: float
    ci_high: float
    num_samples: int

    def z_score(self, value: float) -> float:
        """(value - estimate) / stderr; inf when stderr is 0 and value differs."""
        diff = float(value) - self.estimate
        if self.stderr == 0:
            return 0.0 if diff == 0 else math.copysign(math.inf, diff)
        return diff / self.stderr

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "stderr": self.stderr, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "num_samples": self.num_samples}


def binomial_estimate(successes: int, trials: int) -> MonteCarloEstimate:
    """Proportion successes/trials with stderr sqrt(p(1-p)/n) and the Wilson 95% interval.

    >>> e = binomial_estimate(30, 100)
    >>> round(e.estimate, 2), round(e.stderr, 4), round(e.ci_low, 3), round(e.ci_high, 3)
    (0.3, 0.0458, 0.219, 0.396)
    """
    if trials < 1:
        raise ValueError(f"trials={trials!r} must be >= 1")
    p = successes / trials
    z2 = _Z_95 ** 2
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = _Z_95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials ** 2)) / (1 + z2 / trials)
    return MonteCarloEstimate(estimate=p, stderr=math.sqrt(p * (1 - p) / trials), ci_low=centre - half,
                              ci_high=centre + half, num_samples=int(trials))


def mean_estimate(samples: np.ndarray) -> MonteCarloEstimate:
    """Sample mean with stderr s/sqrt(n) (ddof=1) and the normal 95% interval."""
    samples = np.asarray(samples, dtype=np.float64).ravel()
    n = samples.size
    if n < 2:
        raise ValueError(f"need at least 2 samples for a standard error, got {n}")
    mean = float(samples.mean())
    stderr = float(samples.std(ddof=1) / math.sqrt(n))
    return MonteCarloEstimate(estimate=mean, stderr=stderr, ci_low=mean - _Z_95 * stderr,
                              ci_high=mean + _Z_95 * stderr, num_samples=n)


# ---- validation ---------------------------------------------------------------------------------
def _first_bad(array: np.ndarray, bad: np.ndarray) -> object:
    value = array[bad].ravel()[0]
    return value.item() if hasattr(value, "item") else value


def as_real(name: str, value, *, allow_inf: bool = False) -> np.ndarray:
    """float64 array; NaN (and inf unless allowed) raise ValueError naming `name`."""
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(f"{name}={value!r} must be a number or an array of numbers")
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, np.ndarray) and value.dtype == bool):
        raise ValueError(f"{name}={value!r} must be a number, not a boolean")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a number or an array of numbers") from None
    bad = np.isnan(array) if allow_inf else ~np.isfinite(array)
    if bad.any():
        what = "not NaN" if allow_inf else "not NaN or inf"
        raise ValueError(f"{name}={_first_bad(array, bad)!r} must be a finite number ({what})")
    return array


def as_count(name: str, value, *, minimum: int = 0) -> np.ndarray:
    """int64 array of integer counts >= minimum; 2.5, -1, NaN or True raise ValueError."""
    array = as_real(name, value)
    bad = array != np.round(array)
    if bad.any():
        raise ValueError(f"{name}={_first_bad(array, bad)!r} must be an integer")
    bad = array < minimum
    if bad.any():
        raise ValueError(f"{name}={_first_bad(array, bad)!r} must be an integer >= {minimum}")
    return array.astype(np.int64)


def as_dim(name: str, value) -> np.ndarray:
    """Dimension d: integer >= 2."""
    return as_count(name, value, minimum=2)


def as_cos(name: str, value) -> np.ndarray:
    """A cosine: finite, in [-1, 1] (nothing clipped)."""
    array = as_real(name, value)
    bad = np.abs(array) > 1
    if bad.any():
        raise ValueError(f"{name}={_first_bad(array, bad)!r} must be in [-1, 1]")
    return array


def as_open_unit(name: str, value) -> np.ndarray:
    """A value strictly inside (0, 1)."""
    array = as_real(name, value)
    bad = (array <= 0) | (array >= 1)
    if bad.any():
        raise ValueError(f"{name}={_first_bad(array, bad)!r} must be in (0, 1)")
    return array


def as_positive(name: str, value, *, allow_inf: bool = False) -> np.ndarray:
    array = as_real(name, value, allow_inf=allow_inf)
    bad = array <= 0
    if bad.any():
        raise ValueError(f"{name}={_first_bad(array, bad)!r} must be > 0")
    return array


def as_nonnegative(name: str, value) -> np.ndarray:
    array = as_real(name, value)
    bad = array < 0
    if bad.any():
        raise ValueError(f"{name}={_first_bad(array, bad)!r} must be >= 0")
    return array


def maybe_scalar(array: np.ndarray):
    """0-d arrays become Python floats (or ints); everything else is returned as is."""
    array = np.asarray(array)
    if array.ndim == 0:
        return array.item()
    return array
