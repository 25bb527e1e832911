"""The fits of the link model (model: `lshsim.calibration`), as pure functions with typed results.

- `fit_alpha_beta`: t = alpha + S / B by relative least squares;
- `fit_busbw_curve`: the bus bandwidth curve, one point per size;
- `fit_link_headroom`, `fit_link_headroom_and_cap`: h (and B_max) on skewed all-to-alls, each
  candidate evaluated by simulating the measured traffic (the simulator is imported when a fit
  runs, or passed as `simulate`);
- `fit_channel_headroom`: the headroom h of NCCL's per-peer channel term (`lshsim.sim.nccl`) on
  skewed all-to-alls, by simulating them with the term;
- `fit_calibration`: all of them on one `CalibrationInput`, as `executor calibrate` runs them, and
  `CalibrationFit.topology_spec`: the topology spec that carries the result.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from lshsim.calibration.inputs import A2ACase, A2APoint, CalibrationInput
from lshsim.calibration.model import ChannelTerm, LinkModels, curve_busbw_Bps

__all__ = ["AlphaBetaFit", "fit_alpha_beta", "BusbwCurveFit", "fit_busbw_curve", "curve_residuals", "HeadroomFit",
           "a2a_errors", "fit_link_headroom", "fit_link_headroom_and_cap", "CalibrationFit", "fit_calibration",
           "calibrated_topology_spec", "gpu_key", "check_gpu_name", "CALIBRATED_GPUS", "Simulate", "ChannelFit",
           "fit_channel_headroom", "nccl_config_of", "THRESHOLD_WINDOW"]

#: The curve's fit leaves out the sizes whose mean per-peer chunk lies within this relative window
#: of one of NCCL's channel thresholds (`lshsim.sim.nccl.near_threshold`): uniform routing's
#: near-equal chunks (within about 1% of their mean on the committed workloads) straddle it there.
THRESHOLD_WINDOW = 0.04

#: simulate(traffic (W, W), algorithm, links) -> predicted seconds of one all-to-all.
Simulate = Callable[[np.ndarray, str, LinkModels], float]


#: `fit_alpha_beta` refuses a bandwidth whose term S / B is below this share of every point's time
#: (times that do not grow with the size: 1/B fits to 0 up to rounding)
SIZE_TERM_MIN = 1e-6


# ---- alpha-beta ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlphaBetaFit:
    """t = alpha_s + S / bandwidth_Bps; residuals are (model - measured) / measured per point."""

    alpha_s: float
    bandwidth_Bps: float
    points_used: int
    max_rel_residual: float
    median_rel_residual: float

    def predict_s(self, offdiag_bytes: float) -> float:
        return self.alpha_s + offdiag_bytes / self.bandwidth_Bps


def fit_alpha_beta(points, min_bytes: int = 0) -> AlphaBetaFit:
    """Relative least squares fit of t = alpha + S / B over the points with M >= min_bytes:
    minimise sum_i ((alpha + S_i / B - t_i) / t_i)^2, so that a 4 KiB point weighs as much as a
    1 GiB one. A negative alpha is unphysical: then B is refitted alone with alpha 0.

    >>> pts = [A2APoint(m, 2e-5 + m * 3 / 4 / 3e11, 4) for m in (2 ** 12, 2 ** 20, 2 ** 26, 2 ** 30)]
    >>> fit = fit_alpha_beta(pts)
    >>> round(fit.alpha_s * 1e6, 3), round(fit.bandwidth_Bps / 1e9, 3)
    (20.0, 300.0)
    """
    used = [p for p in points if p.bytes_per_rank >= min_bytes and p.world_size > 1]
    if len(used) < 2:
        raise ValueError(f"fit needs at least 2 all-to-all sizes >= {min_bytes} bytes on >= 2 ranks, got {len(used)}")
    sizes = sorted({p.bytes_per_rank for p in used})
    if len(sizes) < 2:   # two points of one size leave alpha and B undetermined (a 0 s alpha was fitted)
        raise ValueError(f"fit needs at least 2 different all-to-all sizes >= {min_bytes} bytes, got {len(used)} "
                         f"points all of {sizes[0]} bytes per rank")
    t = np.array([p.time_s for p in used])  # (n,)
    s = np.array([p.offdiag_bytes for p in used])  # (n,)
    design = np.stack([1.0 / t, s / t], axis=1)  # (n, 2): [alpha, 1/B] . row = 1
    (alpha, inv_bw), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if inv_bw <= 0 or float(np.max(s * inv_bw / t)) < SIZE_TERM_MIN:
        # times that do not grow with the size fit 1/B = 0 up to rounding: a bandwidth of 1e29 B/s
        raise ValueError("the fitted bandwidth is not positive: the times do not grow with the size"
                         if inv_bw <= 0 else
                         f"the fitted bandwidth {1.0 / inv_bw:.3g} B/s explains less than {SIZE_TERM_MIN:g} of any "
                         f"point's time: the times do not grow with the size")
    if alpha < 0:  # a negative start-up latency is unphysical: refit the bandwidth alone
        alpha, inv_bw = 0.0, float(np.sum(s / t) / np.sum((s / t) ** 2))
    model = alpha + s * inv_bw
    residual = (model - t) / t
    return AlphaBetaFit(alpha_s=float(alpha), bandwidth_Bps=float(1.0 / inv_bw), points_used=len(used),
                        max_rel_residual=float(np.abs(residual).max()),
                        median_rel_residual=float(np.median(np.abs(residual))))


# ---- the bus bandwidth curve ------------------------------------------------------------------------
@dataclass(frozen=True)
class BusbwCurveFit:
    """The curve ((bytes_per_rank, bus_bandwidth_Bps), ...) by size, and the |relative residuals| of
    the points it was fitted on under t = S / B(M)."""

    curve: tuple
    max_rel_residual: float
    median_rel_residual: float
    excluded_sizes: tuple = ()
    threshold_window: float | None = None

    @property
    def points(self) -> int:
        return len(self.curve)


def curve_residuals(curve, points) -> np.ndarray:
    """(n,) (model - measured) / measured of every point under t = S / B(M), B the interpolated curve."""
    return np.array([(p.offdiag_bytes / curve_busbw_Bps(curve, p.bytes_per_rank) - p.time_s) / p.time_s
                     for p in points], dtype=float)


def fit_busbw_curve(points, *, threshold_window: float | None = None, nccl=None) -> BusbwCurveFit:
    """One curve point per distinct size M: bus bandwidth S / t (S = M (W - 1) / W), the median over
    the points of that size, sorted by size; residuals over all the points kept.

    threshold_window: None keeps every size; a number w >= 0 leaves out the sizes whose mean
    per-peer chunk M / W lies within w of one of NCCL's channel thresholds (`lshsim.sim.nccl.
    near_threshold`, with `nccl`, an NcclP2pConfig, default NCCL's defaults): their near-equal
    chunks straddle it, and the channel term, not the curve, predicts them (`excluded_sizes`).

    >>> pts = [A2APoint(4000, 1e-5, 4), A2APoint(4000, 3e-5, 4), A2APoint(4000, 2e-5, 4), A2APoint(400, 1e-5, 4)]
    >>> [(m, round(b / 1e6, 6)) for m, b in fit_busbw_curve(pts).curve]   # MB/s: 300 B / 10 us; median 3000 B / 20 us
    [(400.0, 30.0), (4000.0, 150.0)]
    """
    points = list(points)
    used = [p for p in points if p.world_size > 1 and p.bytes_per_rank > 0 and p.time_s > 0]
    excluded: list = []
    if threshold_window is not None:
        from lshsim.sim.nccl import NcclP2pConfig, near_threshold

        config = NcclP2pConfig() if nccl is None else nccl
        near = [p for p in used if near_threshold(p.bytes_per_rank / p.world_size, p.world_size, threshold_window,
                                                   config)]
        excluded = sorted({float(p.bytes_per_rank) for p in near})
        used = [p for p in used if p not in near]
        points = [p for p in points if p not in near]
    sizes = sorted({p.bytes_per_rank for p in used})
    if len(sizes) < 2:
        raise ValueError(f"a bus bandwidth curve needs all-to-alls of at least 2 sizes, got {len(sizes)}")
    worlds = {p.world_size for p in used}
    if len(worlds) != 1:
        raise ValueError(f"a bus bandwidth curve is for one world size, got points of {sorted(worlds)} ranks")
    curve = tuple((float(size), float(np.median([p.busbw_Bps for p in used if p.bytes_per_rank == size])))
                  for size in sizes)
    residual = np.abs(curve_residuals(curve, points))
    return BusbwCurveFit(curve=curve, max_rel_residual=float(residual.max()),
                         median_rel_residual=float(np.median(residual)), excluded_sizes=tuple(excluded),
                         threshold_window=threshold_window)


# ---- duplex engine headroom and link cap -------------------------------------------------------------
@dataclass(frozen=True)
class HeadroomFit:
    """The fitted headroom h, the links' cap it was fitted with (None: the curve's largest bus
    bandwidth), and the |relative errors| of the skewed all-to-alls with it and with the curve
    alone (no engines)."""

    headroom: float
    phases: int
    median_rel_error: float
    max_rel_error: float
    curve_only_median_rel_error: float
    curve_only_max_rel_error: float
    link_max_Bps: float | None = None


class _Objective:
    """(predicted - measured) / measured of every case for candidate link models; the simulated
    time of each distinct (traffic, algorithm) is computed once per candidate."""

    def __init__(self, G, cases, simulate: Simulate | None, link_class: str):
        cases = list(cases)
        if not cases:
            raise ValueError("the skewed traces hold no all-to-all phase")
        for case in cases:
            if not isinstance(case, A2ACase):
                raise ValueError(f"cases must be A2ACases, got {type(case).__name__}")
        self.base = LinkModels.from_topology(G)
        model = self.base.get(link_class)
        if model is None or not model.busbw_curve:
            raise ValueError("a link headroom needs a topology with an a2a_busbw_curve")
        self.curve = model.busbw_curve
        self.link_class = link_class
        self.cases = cases
        self.measured = np.array([case.time_s for case in cases])                      # (n,)
        if simulate is None:
            from lshsim.sim.collectives import simulate_all_to_all   # lazily: lshsim.sim imports this package
            from lshsim.topology.routing import validate_topology

            routes = validate_topology(G)

            def simulate(traffic, algorithm, links):
                return simulate_all_to_all(G, traffic, algorithm, routes=routes, links=links).time_s
        self.simulate = simulate

    def links(self, headroom: float | None, link_max_Bps: float | None) -> LinkModels:
        return self.base.replace(self.link_class, headroom=headroom,
                                 link_max_Bps=None if headroom is None else link_max_Bps)

    def __call__(self, headroom: float | None, link_max_Bps: float | None = None) -> np.ndarray:
        links = self.links(headroom, link_max_Bps)
        cache: dict = {}
        predicted = []
        for case in self.cases:
            key = (case.traffic.tobytes(), case.algorithm)
            if key not in cache:
                cache[key] = self.simulate(case.traffic, case.algorithm, links)
            predicted.append(cache[key])
        return (np.array(predicted) - self.measured) / self.measured                  # (n,)


def a2a_errors(G, cases, headroom: float | None, link_max_Bps: float | None = None, *,
               link_class: str = "nvlink", simulate: Simulate | None = None) -> np.ndarray:
    """(n,) (predicted - measured) / measured of the cases (A2ACase), simulated on topology G (its
    link models, with the class's headroom set to `headroom` (None: the curve alone) and its cap
    to `link_max_Bps` (None: the curve's largest bus bandwidth))."""
    return _Objective(G, cases, simulate, link_class)(headroom, link_max_Bps)


def _fit_headroom(errors: _Objective, low: float, high: float, link_max_Bps: float | None) -> HeadroomFit:
    if not (math.isfinite(low) and math.isfinite(high) and 1.0 <= low < high):
        raise ValueError(f"low={low}, high={high} must satisfy 1 <= low < high")
    seen: dict = {}

    def score(h: float) -> tuple:
        h = round(h, 3)
        if h not in seen:
            e = np.abs(errors(h, link_max_Bps))
            seen[h] = (float(np.median(e)), float(np.mean(e)), h)
        return seen[h]

    coarse = min(score(h) for h in np.linspace(low, high, int(round((high - low) / 0.02)) + 1))
    best = coarse[2]
    fine = min(score(h) for h in np.arange(max(low, best - 0.02), min(high, best + 0.02) + 5e-4, 0.001))
    headroom = fine[2]
    with_h = np.abs(errors(headroom, link_max_Bps))
    alone = np.abs(errors(None))
    return HeadroomFit(headroom=float(headroom), phases=len(with_h), median_rel_error=float(np.median(with_h)),
                       max_rel_error=float(with_h.max()), curve_only_median_rel_error=float(np.median(alone)),
                       curve_only_max_rel_error=float(alone.max()), link_max_Bps=link_max_Bps)


def fit_link_headroom(G, cases, low: float = 1.0, high: float = 3.0, link_max_Bps: float | None = None, *,
                      link_class: str = "nvlink", simulate: Simulate | None = None) -> HeadroomFit:
    """Fit the headroom h of `link_class` on skewed all-to-alls (A2ACase: traffic, measured s,
    algorithm): minimise the median |relative error| over h in [low, high] (grid of 0.02, then
    0.001 within 0.02 of the best; ties: the smaller mean |error|, then the smaller h). G is the
    topology with the curve (its headroom, if any, is replaced); link_max_Bps is the links' cap
    min(h B(M), link_max_Bps) during the fit (None: the curve's largest bus bandwidth)."""
    return _fit_headroom(_Objective(G, cases, simulate, link_class), low, high, link_max_Bps)


def fit_link_headroom_and_cap(G, cases, p2p_max_Bps: float | None, steps: int = 6, *, link_class: str = "nvlink",
                              simulate: Simulate | None = None) -> HeadroomFit:
    """Fit h and the links' cap B_max together on skewed all-to-alls.

    B_max is searched on `steps` values from the curve's largest bus bandwidth (the fastest
    per-direction rate of a uniform all-to-all: a link carries at least that) to the fastest p2p
    send `p2p_max_Bps` (one direction alone: at most that), h by `fit_link_headroom` at each; the
    pair of the smallest median |relative error| wins (ties: the smaller mean, then the larger
    B_max). Without `p2p_max_Bps` the cap is left to the curve's top (link_max_Bps None)."""
    errors = _Objective(G, cases, simulate, link_class)
    if p2p_max_Bps is None:
        return _fit_headroom(errors, 1.0, 3.0, None)
    if not (np.isfinite(p2p_max_Bps) and p2p_max_Bps > 0) or steps < 1:
        raise ValueError(f"p2p_max_Bps={p2p_max_Bps} must be a finite number > 0 and steps={steps} >= 1")
    curve_max = max(b for _, b in errors.curve)
    caps = np.linspace(curve_max, max(p2p_max_Bps, curve_max), steps) if p2p_max_Bps > curve_max else [curve_max]
    best = None
    for cap in caps:
        fit = _fit_headroom(errors, 1.0, 3.0, float(cap))
        mean = float(np.mean(np.abs(errors(fit.headroom, float(cap)))))
        key = (round(fit.median_rel_error, 9), round(mean, 9), -float(cap))
        if best is None or key < best[0]:
            best = (key, fit)
    return best[1]


# ---- NCCL's per-peer channel term ----------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelFit:
    """The channel term's fitted headroom h (model: `lshsim.sim.nccl`), NCCL's p2p layout it was
    fitted with, the window the curve left out, and the |relative errors| of the skewed all-to-alls
    with the term and without it (the links' headroom and cap as fitted)."""

    term: ChannelTerm
    phases: int
    bound_phases: int
    mean_rel_error: float
    median_rel_error: float
    max_rel_error: float
    without_mean_rel_error: float
    without_median_rel_error: float
    without_max_rel_error: float

    @property
    def headroom(self) -> float:
        return self.term.headroom


def nccl_config_of(inp: CalibrationInput):
    """NCCL's p2p layout of a calibration input: NCCL 2.28.9's defaults on 2-8 NVSwitch GPUs (32 p2p
    channels, 32 per peer), with the chunk of NCCL_P2P_NVL_CHUNKSIZE when the traces' provenance
    recorded it (else 512 KiB). Other NCCL settings are not read."""
    from lshsim.sim.nccl import NcclP2pConfig

    env = (inp.provenance.get("trace_provenance") or {}).get("nccl_env") or inp.provenance.get("nccl_env") or {}
    chunk = env.get("NCCL_P2P_NVL_CHUNKSIZE")
    return NcclP2pConfig(chunk_bytes=int(chunk)) if chunk else NcclP2pConfig()


def fit_channel_headroom(G, cases, config=None, *, low: float = 1.0, high: float = 2.0,
                         threshold_window: float | None = None, link_class: str = "nvlink",
                         simulate: Simulate | None = None) -> ChannelFit:
    """Fit the channel term's headroom h on skewed all-to-alls (A2ACase): each case simulated on G
    (its curve, headroom and cap) with the term `ChannelTerm(config, h)`, t = max(simulated,
    t_channel); h in [low, high] (grid of 0.01, then 0.001 within 0.01 of the best) minimises the
    mean |relative error| over all the cases (ties: the smaller h). The mean, not the median: the
    term binds on few cases, and a small h makes it bind, wrongly, on the others."""
    from lshsim.sim.nccl import NcclP2pConfig

    config = NcclP2pConfig() if config is None else config
    errors = _Objective(G, cases, simulate, link_class)
    if not (math.isfinite(low) and math.isfinite(high) and 1.0 <= low < high):
        raise ValueError(f"low={low}, high={high} must satisfy 1 <= low < high")
    base = errors.base

    def run(h: float | None) -> np.ndarray:
        links = base.replace(link_class, channels=None if h is None else ChannelTerm(config, h, threshold_window))
        cache: dict = {}
        predicted = []
        for case in errors.cases:
            key = (case.traffic.tobytes(), case.algorithm)
            if key not in cache:
                cache[key] = errors.simulate(case.traffic, case.algorithm, links)
            predicted.append(cache[key])
        return (np.array(predicted) - errors.measured) / errors.measured

    without = np.abs(run(None))
    seen: dict = {}

    def score(h: float) -> tuple:
        h = round(float(h), 3)
        if h not in seen:
            seen[h] = (float(np.mean(np.abs(run(h)))), h)
        return seen[h]

    best = min(score(h) for h in np.linspace(low, high, int(round((high - low) / 0.01)) + 1))[1]
    headroom = min(score(h) for h in np.arange(max(low, best - 0.01), min(high, best + 0.01) + 5e-4, 0.001))[1]
    with_term = np.abs(run(headroom))
    bound = int(np.sum(np.abs(with_term - without) > 1e-12))
    return ChannelFit(term=ChannelTerm(config, headroom, threshold_window), phases=len(with_term), bound_phases=bound,
                      mean_rel_error=float(with_term.mean()), median_rel_error=float(np.median(with_term)),
                      max_rel_error=float(with_term.max()), without_mean_rel_error=float(without.mean()),
                      without_median_rel_error=float(np.median(without)), without_max_rel_error=float(without.max()))


# ---- the whole calibration -------------------------------------------------------------------------------
#: the GPUs a calibration names by key (`gpu_key`), newest first
CALIBRATED_GPUS = ("h200", "h100", "a100", "v100")


def check_gpu_name(name: object, what: str = "gpu") -> str:
    """`name` if it names a GPU a calibration knows (`gpu_key`: h200, h100, a100, v100, or a device
    name holding one such as 'NVIDIA H200'), else ValueError listing the known ones.

    >>> check_gpu_name("NVIDIA H100 80GB HBM3")
    'NVIDIA H100 80GB HBM3'
    >>> check_gpu_name("h300", "--gpu")
    Traceback (most recent call last):
    ...
    ValueError: --gpu='h300' is not a known GPU; known: h200, h100, a100, v100 (or a device name holding one, such as 'NVIDIA H200')
    """
    if not isinstance(name, str) or gpu_key(name) is None:
        raise ValueError(f"{what}={name!r} is not a known GPU; known: {', '.join(CALIBRATED_GPUS)} "
                         f"(or a device name holding one, such as 'NVIDIA H200')")
    return name


def gpu_key(device_name: str | None) -> str | None:
    """'NVIDIA H200' -> 'h200', 'NVIDIA H100 80GB HBM3' -> 'h100'; None if not a known GPU.

    A key followed by another digit is a different device ('NVIDIA A1000', a typo 'h1000'):

    >>> gpu_key("NVIDIA H100 80GB HBM3"), gpu_key("cpu"), gpu_key("NVIDIA RTX A1000"), gpu_key("h1000")
    ('h100', None, None, None)
    """
    if not device_name:
        return None
    lowered = device_name.lower()
    for key in CALIBRATED_GPUS:
        if re.search(re.escape(key) + r"(?!\d)", lowered):
            return key
    return None


def calibrated_topology_spec(name: str, world_size: int, *, gpu: str | None, alpha_beta: AlphaBetaFit | None = None,
                             curve=None, headroom: float | None = None, link_max_Bps: float | None = None,
                             expert_flops: float | None = None, hbm_Bps: float | None = None,
                             provenance: dict | None = None, channels: ChannelTerm | None = None) -> dict:
    """A single-node NVSwitch topology spec with a `calibration:` block (schema: lshsim.topology.spec).

    gpu: the device name; a known GPU (`gpu_key`) is referenced by key with 18 NVLinks of 25 GB/s
    and calibration.nvlink_Bps = the alpha-beta bandwidth; another device (a CPU run) becomes an
    inline GPU with the measured rates as its datasheet and intra.link_Bps the fitted bandwidth.
    With a `curve`, calibration.a2a_busbw_curve is the curve and alpha_s is 0 (the curve's bus
    bandwidths hold the fixed costs); `headroom` (only with a curve) and `link_max_Bps` (only with
    a headroom) become calibration.a2a_link_headroom and a2a_link_max_Bps; `channels` (only with a
    curve) calibration.a2a_nccl_channels (NCCL's per-peer channel term, `lshsim.sim.nccl`).
    """
    if headroom is not None and curve is None:
        raise ValueError(f"link_headroom={headroom} needs a curve")
    if link_max_Bps is not None and headroom is None:
        raise ValueError(f"link_max_Bps={link_max_Bps} needs a link_headroom")
    if channels is not None and curve is None:
        raise ValueError("a channel term needs a curve")
    key = gpu_key(gpu)
    if key is not None:
        gpu_field: object = key
    else:  # a CPU (gloo) run: an inline device with the measured rates as its "datasheet"
        gpu_field = {"name": gpu or "cpu", "peak_flops": expert_flops or 1e9, "hbm_Bps": hbm_Bps or 1e9,
                     "memory_bytes": 1e9, "gemm_efficiency": 1.0, "hbm_efficiency": 1.0}
    calibration: dict = {}
    intra: dict = {"kind": "nvswitch", "latency_s": 0.0}
    if alpha_beta is not None:
        calibration["alpha_s"] = alpha_beta.alpha_s
        if key is not None:
            intra.update(links=18, per_link_Bps=25.0e9)
            calibration["nvlink_Bps"] = alpha_beta.bandwidth_Bps
        else:
            intra["link_Bps"] = alpha_beta.bandwidth_Bps
    elif key is None:
        intra["link_Bps"] = 1e9
    if curve is not None:
        calibration["alpha_s"] = 0.0
        calibration["a2a_busbw_curve"] = [[float(m), float(b)] for m, b in curve]
        if headroom is not None:
            calibration["a2a_link_headroom"] = float(headroom)
        if link_max_Bps is not None:
            calibration["a2a_link_max_Bps"] = float(link_max_Bps)
        if channels is not None:
            calibration["a2a_nccl_channels"] = channels.to_dict()
    if expert_flops:
        calibration["expert_flops"] = expert_flops
    if hbm_Bps:
        calibration["hbm_Bps"] = hbm_Bps
    calibration["provenance"] = {} if provenance is None else provenance
    spec = {"name": name, "description": f"calibrated by executor calibrate on {world_size} x {gpu or 'CPU'}",
            "gpu": gpu_field, "nodes": 1, "gpus_per_node": world_size, "intra": intra, "calibration": calibration}
    if alpha_beta is not None:
        spec["alpha_s"] = 0.0 if curve is not None else alpha_beta.alpha_s
    return spec


_CURVE_MODEL = "t = S / B(M), B log-linear in M"
_CHANNEL_MODEL = ("t = max(simulated, L_send(T) / c(M)), c(M) = h L_send(equal chunks of M / W) / t_curve(M); "
                  "h minimises the mean |error| of the skewed all-to-alls, in [1, 2]")
_HEADROOM_MODEL = ("engines 2 B(M_dup) per GPU, NVLink min(h B(M), link max); (h, link max) minimise the "
                   "median |error|, h in [1, 3], link max from the curve's largest bus bandwidth to the "
                   "fastest p2p send")


@dataclass(frozen=True)
class CalibrationFit:
    """Every fit of one calibration: the input, the alpha-beta fit (None with fewer than 2 ranks or
    no all-to-all), the curve (None unless asked for) and the headroom with its cap (None without
    skewed cases)."""

    input: CalibrationInput
    alpha_beta: AlphaBetaFit | None
    fit_min_bytes: int
    curve: BusbwCurveFit | None = None
    headroom: HeadroomFit | None = None
    channel: ChannelFit | None = None

    def info(self) -> dict | None:
        """The fit's record, as calibration.provenance.fit keeps it."""
        info = None if self.alpha_beta is None else {**asdict(self.alpha_beta), "fit_min_bytes": self.fit_min_bytes}
        if self.curve is not None:
            info = {**(info or {}), "curve": {"points": self.curve.points, "model": _CURVE_MODEL,
                                              "max_rel_residual": self.curve.max_rel_residual,
                                              "median_rel_residual": self.curve.median_rel_residual,
                                              **({"threshold_window": self.curve.threshold_window,
                                                  "excluded_sizes": list(self.curve.excluded_sizes)}
                                                 if self.curve.threshold_window is not None else {})}}
        if self.headroom is not None:
            info = {**info, "link_headroom": {
                **asdict(self.headroom), "traces": len({case.source for case in self.input.cases}),
                "p2p_max_Bps": self.input.p2p_max_Bps, "model": _HEADROOM_MODEL}}
        if self.channel is not None:
            c = self.channel
            info = {**info, "nccl_channels": {
                "headroom": c.headroom, "phases": c.phases, "bound_phases": c.bound_phases,
                "mean_rel_error": c.mean_rel_error, "median_rel_error": c.median_rel_error,
                "max_rel_error": c.max_rel_error, "without_mean_rel_error": c.without_mean_rel_error,
                "without_median_rel_error": c.without_median_rel_error, "without_max_rel_error": c.without_max_rel_error,
                "model": _CHANNEL_MODEL}}
        return info

    def topology_spec(self, name: str, provenance: dict | None = None) -> dict:
        """The calibrated topology spec (`calibrated_topology_spec`) of this fit."""
        inp = self.input
        return calibrated_topology_spec(
            name, inp.world_size, gpu=inp.gpu, alpha_beta=self.alpha_beta,
            curve=None if self.curve is None else self.curve.curve,
            headroom=None if self.headroom is None else self.headroom.headroom,
            link_max_Bps=None if self.headroom is None else self.headroom.link_max_Bps,
            expert_flops=inp.expert_flops, hbm_Bps=inp.hbm_Bps, provenance=provenance,
            channels=None if self.channel is None else self.channel.term)


def fit_calibration(inp: CalibrationInput, *, fit_min_bytes: int = 0, curve: bool = True,
                    simulate: Simulate | None = None, channels: bool = True,
                    threshold_window: float = THRESHOLD_WINDOW) -> CalibrationFit:
    """Fit one calibration input: alpha-beta on its points (sizes >= fit_min_bytes); with `curve`,
    the bus bandwidth curve on them; with a curve and skewed cases, the headroom and the links' cap
    (between the curve's top and the fastest p2p send of the input) on the topology that carries
    the curve (`calibrated_topology_spec`).

    With `channels` (default) NCCL's per-peer channel term (`lshsim.sim.nccl`): the curve leaves out
    the sizes within `threshold_window` of a channel threshold (`fit_busbw_curve`), and with skewed
    cases the term's headroom is fitted on them after the links' headroom and cap
    (`fit_channel_headroom`; NCCL's layout from `nccl_config_of`). Without skewed cases there is no
    term (the curve still leaves the threshold sizes out). channels=False: the fit as before the term."""
    world = inp.world_size
    alpha_beta = fit_alpha_beta(inp.points, fit_min_bytes) if world and world > 1 and inp.points else None
    fit = CalibrationFit(input=inp, alpha_beta=alpha_beta, fit_min_bytes=fit_min_bytes)
    if not curve:
        return fit
    config = nccl_config_of(inp) if channels else None
    fit = CalibrationFit(input=inp, alpha_beta=alpha_beta, fit_min_bytes=fit_min_bytes,
                         curve=fit_busbw_curve(inp.points, threshold_window=threshold_window if channels else None,
                                               nccl=config))
    if not inp.cases:
        return fit
    from lshsim.topology import build_topology      # lazily: lshsim.topology imports this package

    G = build_topology(fit.topology_spec("calibration", {}), source="<calibration>")
    headroom = fit_link_headroom_and_cap(G, inp.cases, inp.p2p_max_Bps, simulate=simulate)
    fit = CalibrationFit(input=inp, alpha_beta=alpha_beta, fit_min_bytes=fit_min_bytes, curve=fit.curve,
                         headroom=headroom)
    if not channels:
        return fit
    G = build_topology(fit.topology_spec("calibration", {}), source="<calibration>")
    channel = fit_channel_headroom(G, inp.cases, config, threshold_window=threshold_window, simulate=simulate)
    return CalibrationFit(input=inp, alpha_beta=alpha_beta, fit_min_bytes=fit_min_bytes, curve=fit.curve,
                          headroom=headroom, channel=channel)
