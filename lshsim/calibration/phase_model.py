"""The phase model: every phase of the executor's MoE layer, in both timing conventions.

A topology's `calibration.phase_model` block (written by `executor calibrate --phases`, parsed
once when the topology is built into G.graph["phase_model"], a `PhaseModel`) holds:

transport
    The NCCL transport the calibration ran over: "nvlink" (the default, P2P over NVLink),
    "shm" (`NCCL_P2P_DISABLE=1`: GPU to GPU through host shared memory) or "socket" (also
    `NCCL_SHM_DISABLE=1`: through the host's TCP sockets). One machine's GPUs then act as linked
    by three classes of link; each is calibrated on its own (`transport_of_env`), and
    `lshsim validate` refuses a trace measured over another transport than its topology's.

a2a_excess_s: {as_run: [[bytes_per_rank, seconds], ...], back_to_back: [...]}
    The two timing conventions of a collective besides the device time t_dev(M) that the link
    model (the bus bandwidth curve, `lshsim.calibration`) predicts:

    * as-run (events around one call on an idle GPU, the host launching it): the host's launch
      work (torch's split handling, NCCL's group launch) runs while the GPU waits;
    * back-to-back (the average of n calls queued without waiting, as nccl-tests report): a call
      launches while the previous one runs, so the launch cost shows only while it is longer
      than the GPU time.

    Each is predicted as t_dev(M) + E(M), E the measured excess over the device time at the
    calibration sizes (a running median of five neighbouring sizes: the host's cost jitters by
    tens of microseconds from size to size), log-linear in M between them, the end values
    outside (at least half the device time). `latency_as_run_s` is the excess of the smallest
    size: the launch latency of a small collective. `a2a_excess_band_s` holds the 10th and 90th
    percentiles of the measured excess around its curve (`PhaseModel.a2a_interval_s`). Measured on
    lent H200 machines the as-run excess drifted between 30 and 150 us between sessions
    (benchmarks/RESULTS.md): calibrate in the session and the process harness that is timed.

a2a_unaligned: [[bytes_per_rank, factor], ...]
    Buffer alignment: NCCL's copy loops move 16-byte vectors; per-peer chunks whose size is not a
    multiple of 16 bytes fall back to narrower accesses. An all-to-all with any such chunk takes
    factor(M) times the aligned device time (log-linear in M between the measured sizes, the end
    values outside), measured as the ratio of equal-split all-to-alls with chunks 2 bytes longer
    than whole 4 KiB rows to the aligned ones at the calibration sizes.

self_copy_Bps: [[local_bytes, Bps], ...]
    NCCL's all-to-all copies a rank's own chunk (the diagonal) with its p2p kernel, not at the
    GPU's copy rate: on 2 H200 from 0.17 TB/s (1 MiB) to 2.4 TB/s (1 GiB) read + write over NVLink,
    below 0.2 TB/s with P2P disabled (shared memory, sockets). Measured on mostly-diagonal
    all-to-alls (the rank keeps all but 64 KiB per peer) at 1 MiB, 4 MiB, ...: the rate 2 * local
    bytes / device time (read + write, the unit of achieved_hbm_Bps) at each local size, log-linear
    in between, the end values outside. The simulator's local copy (`simulate_all_to_all`,
    local_copy) then takes 2 * local / rate(local) instead of 2 * local / achieved_hbm_Bps.

compute
    expert: the executor's expert phase (`lshsim.executor.moe_ops.expert_block`) measured on a grid
    of (local experts E, rows per expert r, d_model, d_ffn), forward and backward seconds; a
    prediction interpolates log time multilinearly in (log E, log r, log d, log d_ffn) on the grid
    (`ExpertTable`), with the mean rows per local expert of a rank; above the grid's largest value
    of an axis, time grows linearly with the slope of the last grid interval, below its smallest
    it is clamped.

    kernels: per (phase, direction) a non-negative linear model t = sum_i c_i x_i over named
    features (`FEATURES`, from the workload: tokens T, experts E, top-k k, d_model d, element
    bytes b, LSH hashes L and projection d'), fitted by non-negative least squares on the
    relative error over the calibration workloads' measured phases (`fit_linear`). The
    phases: gate (router, packing), lsh_compress and lsh_restore (forward and backward), and
    glue: what the as-run layer spends outside the timed phases (the final weighted combine,
    the gate's backward, allocator and launch gaps), fitted as layer - sum of measured phases -
    one as-run launch latency L_a (on more than one rank), relative to the layer's time (a
    near-zero remainder must not dominate the fit).

    expert_floor_s: {forward, backward}: the least time an in-layer expert phase takes (the host
    queueing its kernels after the dispatch's launch; `fit_expert_floor`); the phase is predicted
    as max(grid device time, floor).

    exchange_s: the split-size exchange ("other") beyond its all-to-all: t = exchange_s + (an
    as-run all-to-all of E * 8 bytes per rank when W > 1); exchange_s is the median over the
    calibration workloads (the device-to-host copy and the host's split arithmetic);
    exchange_single_s the same on one rank (no collective).

The simulator uses the expert grid and the gate / LSH fits too (`lshsim.sim.phases.calibrated_cost`).

Every number is read and checked when the topology is built; errors name the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lshsim import bounds

__all__ = ["PhaseModel", "ExpertTable", "LinearFit", "FEATURES", "KERNEL_TERMS", "TRANSPORTS", "CONVENTIONS",
           "transport_of_env", "workload_features", "fit_linear", "fit_phase_model", "unaligned_chunks",
           "parse_phase_model", "check_phase_results", "fit_conventions", "fit_expert_floor"]

TRANSPORTS = ("nvlink", "shm", "socket")
CONVENTIONS = ("device", "as_run", "back_to_back")


def transport_of_env(env: dict | None) -> str:
    """The NCCL transport a run's environment selects between the GPUs of one node.

    >>> transport_of_env({}), transport_of_env({"NCCL_P2P_DISABLE": "1"})
    ('nvlink', 'shm')
    >>> transport_of_env({"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1"})
    'socket'
    """
    env = env or {}

    def on(name: str) -> bool:
        return str(env.get(name, "0")).strip().lower() in ("1", "true", "yes")

    if on("NCCL_P2P_DISABLE"):
        return "socket" if on("NCCL_SHM_DISABLE") else "shm"
    return "nvlink"


# ---- features of a workload -----------------------------------------------------------------------
#: feature name -> what it counts, per rank (b: bytes per element)
FEATURES = {
    "const": "1 (a fixed cost: launches, synchronisation)",
    "TEd": "T * E * d (the gate's logits matmul)",
    "TE": "T * E (softmax / top-k over the logits)",
    "Tkdb": "T * k * d * b (bytes of the rows the gate packs, LSH averages or restores)",
    "Tk": "T * k (slots, sort keys)",
    "TdLp": "T * d * L * d' (the LSH projections)",
    "Tdb": "T * d * b (bytes of the tokens)",
    "lsh": "1 with LSH-MoE, else 0 (its forward runs more kernels, and its gate is not one graph)",
    "multi": "1 on more than one rank, else 0 (collectives, rank skew)",
}
#: the terms of each (phase, direction) linear model
KERNEL_TERMS = {
    ("gate", "forward"): ("const", "lsh", "TEd", "Tkdb"),
    ("lsh_compress", "forward"): ("const", "TdLp", "Tkdb", "Tk"),
    ("lsh_compress", "backward"): ("const", "Tkdb"),
    ("lsh_restore", "forward"): ("const", "Tkdb"),
    ("lsh_restore", "backward"): ("const",),
    ("glue", "forward"): ("const", "lsh", "multi", "Tdb", "Tkdb"),
    ("glue", "backward"): ("const", "lsh", "multi", "Tdb", "Tkdb", "TEd"),
}


def workload_features(workload: dict) -> dict:
    """The `FEATURES` of one workload (a trace's meta["workload"] or a calibration record's).

    >>> f = workload_features({"tokens_per_rank": 4, "d_model": 8, "num_experts": 2, "router": {"k": 2},
    ...                        "bytes_per_token": 16})
    >>> f["TEd"], f["Tkdb"], f["TdLp"]
    (64.0, 128.0, 0.0)
    """
    tokens = float(workload["tokens_per_rank"])
    d = float(workload["d_model"])
    experts = float(workload["num_experts"])
    router = workload.get("router") or {}
    k = 1.0 if router.get("name") in ("locmoe", "expert_choice") else float(router.get("k", 1))
    b = float(workload.get("bytes_per_token", 2 * d)) / d
    lsh = workload.get("lsh") or None
    hashes = float(lsh.get("num_hashes", 6)) if lsh else 0.0
    proj = float(lsh.get("proj_dim") or d) if lsh else 0.0
    return {"const": 1.0, "TEd": tokens * experts * d, "TE": tokens * experts, "Tkdb": tokens * k * d * b,
            "Tk": tokens * k, "TdLp": tokens * d * hashes * proj, "Tdb": tokens * d * b, "lsh": 1.0 if lsh else 0.0,
            "multi": 1.0 if int(workload.get("world_size") or 1) > 1 else 0.0}


# ---- non-negative linear fits ------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearFit:
    """t = sum_i coef_i * x_i over `terms` (names of `FEATURES`); points and leave-one-out errors."""

    terms: tuple
    coef: tuple
    points: int = 0
    median_rel_error: float | None = None
    max_rel_error: float | None = None
    loo_median_rel_error: float | None = None
    loo_max_rel_error: float | None = None

    def predict_s(self, features: dict) -> float:
        return float(sum(c * features[t] for t, c in zip(self.terms, self.coef)))

    def to_dict(self) -> dict:
        return {"terms": list(self.terms), "coef": [float(c) for c in self.coef], "points": self.points,
                "median_rel_error": self.median_rel_error, "max_rel_error": self.max_rel_error,
                "loo_median_rel_error": self.loo_median_rel_error, "loo_max_rel_error": self.loo_max_rel_error}


def _nnls_relative(X: np.ndarray, y: np.ndarray, scale_of_error: np.ndarray | None = None) -> np.ndarray:
    from scipy.optimize import nnls

    weights = 1.0 / np.maximum(y if scale_of_error is None else scale_of_error, 1e-12)   # relative error
    scale = np.maximum(np.abs(X).max(axis=0), 1e-30)                       # conditioning
    coef, _ = nnls((X * weights[:, None]) / scale, y * weights)
    return coef / scale


def fit_linear(terms, rows: list[dict], targets, scale=None) -> LinearFit:
    """Non-negative least squares of the relative error: min sum ((X c - t) / s)^2, c >= 0, s = t
    (or `scale`: the glue, a small remainder, is fitted relative to its whole layer's time, so that
    a near-zero remainder cannot dominate the fit); with its leave-one-out errors (each point
    predicted by a fit without it), relative to s as well."""
    terms = tuple(terms)
    X = np.array([[row[t] for t in terms] for row in rows], dtype=float)    # (n, p)
    y = np.asarray(targets, dtype=float)                                    # (n,)
    if len(y) == 0:
        raise ValueError(f"no points to fit {terms}")
    active = np.abs(X).max(axis=0) > 0                # a term that is 0 on every point (no LSH layer) plays no part
    rank = int(np.linalg.matrix_rank(X[:, active] / np.abs(X[:, active]).max(axis=0))) if active.any() else 0
    if rank < min(int(active.sum()), 2):
        # points of one shape fit any growth with the size exactly (0% error): a size term is not determined
        raise ValueError(f"{len(y)} point(s) of {len({tuple(row) for row in X.tolist()})} distinct shape(s) cannot fit "
                         f"the terms {', '.join(terms)}: how the time grows with the size needs points of at least "
                         f"two shapes; calibrate on more layers")
    if len(y) <= rank:
        # as many points as independent terms: the fit passes through every point whatever they are, so
        # its 0% error could not have been anything else (no degree of freedom is left to test it)
        raise ValueError(f"{len(y)} point(s) for {rank} independent term(s) of {', '.join(terms)}: the fit passes "
                         f"through every point whatever they are (an error of 0 that could not be other); it needs "
                         f"at least {rank + 1} points; calibrate on more layers")
    s = y if scale is None else np.asarray(scale, dtype=float)
    coef = _nnls_relative(X, y, s)
    errors = np.abs(X @ coef - y) / s
    loo = []
    if len(y) > len(terms):
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            c = _nnls_relative(X[keep], y[keep], s[keep])
            loo.append(abs(float(X[i] @ c) - y[i]) / s[i])
    return LinearFit(terms, tuple(float(c) for c in coef), len(y), float(np.median(errors)), float(errors.max()),
                     float(np.median(loo)) if loo else None, float(max(loo)) if loo else None)


# ---- the expert table ------------------------------------------------------------------------------
_AXES = ("experts", "rows_per_expert", "d_model", "d_ffn")


@dataclass(frozen=True)
class ExpertTable:
    """Measured expert-phase seconds on a full grid; `predict_s` interpolates (module docstring).

    axes: the four sorted axes (experts, rows_per_expert, d_model, d_ffn); forward_s / backward_s:
    arrays of shape (len of each axis).
    """

    axes: tuple
    forward_s: np.ndarray
    backward_s: np.ndarray
    floor_s: tuple = (0.0, 0.0)             # (forward, backward): the least an in-layer phase takes

    @staticmethod
    def from_points(points: list[dict], field_name: str = "compute.expert") -> "ExpertTable":
        if not isinstance(points, list) or not points:
            raise ValueError(f"{field_name} must be a non-empty list of grid points")
        axes = []
        for axis in _AXES:
            values = set()
            for i, point in enumerate(points):
                value = point.get(axis) if isinstance(point, dict) else None
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{field_name}[{i}].{axis}={value!r} must be an integer >= 1")
                values.add(value)
            axes.append(tuple(sorted(values)))
        shape = tuple(len(a) for a in axes)
        if len(points) < 2:   # one point: every expert shape would be predicted at that point's time
            raise ValueError(f"{field_name} holds one grid point: the expert table interpolates between points, so it "
                             f"needs at least two shapes")
        tables = {}
        for key in ("forward_s", "backward_s"):
            table = np.full(shape, np.nan)
            seen: dict = {}
            for i, point in enumerate(points):
                value = point.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or value <= 0:
                    raise ValueError(f"{field_name}[{i}].{key}={value!r} must be a finite number > 0")
                index = tuple(axes[a].index(point[_AXES[a]]) for a in range(4))
                if index in seen:
                    raise ValueError(f"{field_name}[{i}] repeats the grid point of {field_name}[{seen[index]}] "
                                     f"({', '.join(f'{axis}={point[axis]}' for axis in _AXES)})")
                seen[index] = i
                table[index] = float(value)
            if np.isnan(table).any():
                missing = int(np.isnan(table).sum())
                raise ValueError(f"{field_name}: the grid of {' x '.join(map(str, shape))} (experts x rows x d_model "
                                 f"x d_ffn) misses {missing} points; a full grid is needed")
            tables[key] = table
        return ExpertTable(tuple(axes), tables["forward_s"], tables["backward_s"])

    def to_points(self) -> list[dict]:
        out = []
        for index in np.ndindex(self.forward_s.shape):
            point = {axis: int(self.axes[a][index[a]]) for a, axis in enumerate(_AXES)}
            point.update(forward_s=float(self.forward_s[index]), backward_s=float(self.backward_s[index]))
            out.append(point)
        return out

    def with_floor(self, floor_s: tuple) -> "ExpertTable":
        return ExpertTable(self.axes, self.forward_s, self.backward_s, tuple(float(v) for v in floor_s))

    def predict_s(self, experts: float, rows_per_expert: float, d_model: float, d_ffn: float,
                  direction: str = "forward") -> float:
        """Seconds of one rank's expert phase in a layer: E local experts with rows_per_expert rows
        each (mean): the grid's device time, at least the phase's floor (`fit_expert_floor`)."""
        if rows_per_expert <= 0 or experts <= 0:
            return 0.0
        floor = self.floor_s[0 if direction == "forward" else 1]
        return max(self.device_s(experts, rows_per_expert, d_model, d_ffn, direction), floor)

    def device_s(self, experts: float, rows_per_expert: float, d_model: float, d_ffn: float,
                 direction: str = "forward") -> float:
        """The grid's device time (no floor): log-multilinear interpolation inside the grid, clamped
        below an axis's smallest value, and linear in the axis above its largest (the slope of the
        last grid interval: a fixed cost plus a marginal cost per expert, row or width, so that an
        overhead-bound top point is not multiplied along with the work)."""
        table = self.forward_s if direction == "forward" else self.backward_s
        return self._extrapolated(np.log(table), [float(experts), float(rows_per_expert), float(d_model),
                                                  float(d_ffn)])

    def _extrapolated(self, log_table: np.ndarray, values: list) -> float:
        for axis, (axis_values, value) in enumerate(zip(self.axes, values)):
            top = float(axis_values[-1])
            if value > top and len(axis_values) > 1:
                prev = float(axis_values[-2])
                at_top = self._extrapolated(log_table, values[:axis] + [top] + values[axis + 1:])
                at_prev = self._extrapolated(log_table, values[:axis] + [prev] + values[axis + 1:])
                slope = max((at_top - at_prev) / (top - prev), 0.0)
                return at_top + slope * (value - top)
        return self._interpolated(log_table, values)

    def _interpolated(self, log_table: np.ndarray, values: list) -> float:
        corners = []
        for axis_values, value in zip(self.axes, values):
            logs = np.log(np.asarray(axis_values, dtype=float))
            v = min(max(math.log(value), logs[0]), logs[-1])
            if len(logs) == 1:
                corners.append([(0, 1.0)])
                continue
            j = int(np.clip(np.searchsorted(logs, v) - 1, 0, len(logs) - 2))
            w = (v - logs[j]) / (logs[j + 1] - logs[j])
            corners.append([(j, 1.0 - w), (j + 1, w)])
        result = 0.0
        for combo in np.ndindex(*[len(c) for c in corners]):
            weight, index = 1.0, []
            for axis, pick in enumerate(combo):
                j, w = corners[axis][pick]
                weight *= w
                index.append(j)
            result += weight * log_table[tuple(index)]
        return float(math.exp(result))


# ---- the model -------------------------------------------------------------------------------------
def _interp_curve(curve, x: float) -> float:
    points = np.asarray(curve, dtype=float)
    return float(np.interp(math.log(x), np.log(points[:, 0]), points[:, 1]))


def unaligned_chunks(traffic_bytes, align: int = 16) -> bool:
    """Whether any off-diagonal chunk of a (W, W) byte matrix is not a multiple of `align` bytes.

    >>> unaligned_chunks([[0, 4096], [4098, 0]]), unaligned_chunks([[3, 4096], [4096, 0]])
    (True, False)
    """
    traffic = np.asarray(traffic_bytes, dtype=np.int64)
    off = ~np.eye(traffic.shape[0], dtype=bool)
    chunks = traffic[off]
    return bool(np.any((chunks > 0) & (chunks % align != 0)))


@dataclass(frozen=True)
class PhaseModel:
    """A topology's calibrated phase model (module docstring)."""

    transport: str = "nvlink"
    excess_as_run: tuple | None = None           # ((bytes_per_rank, seconds), ...)
    excess_back_to_back: tuple | None = None
    unaligned: tuple | None = None
    expert: ExpertTable | None = None
    kernels: dict = field(default_factory=dict)            # (phase, direction) -> LinearFit
    exchange_s: float | None = None
    info: dict = field(default_factory=dict)
    exchange_single_s: float | None = None                 # the split handling on one rank (no collective)
    self_copy: tuple | None = None                         # ((local bytes, read + write B/s), ...): NCCL's self-chunk copy
    excess_band: dict = field(default_factory=dict)        # convention -> (low, high) seconds around the excess curve

    def self_copy_Bps(self, local_bytes: float) -> float | None:
        """The rate (read + write bytes / s) of NCCL's copy of a self-chunk of `local_bytes`, or None."""
        if not self.self_copy:
            return None
        return _interp_curve(self.self_copy, max(float(local_bytes), 1.0))

    # -- all-to-all conventions ------------------------------------------------------------------
    def a2a_s(self, device_s: float, traffic_bytes, convention: str = "device") -> float:
        """An all-to-all's seconds in `convention` from the link model's aligned device time."""
        if convention not in CONVENTIONS:
            raise ValueError(f"convention={convention!r} must be one of {list(CONVENTIONS)}")
        seconds = device_s
        if self.unaligned and unaligned_chunks(traffic_bytes):
            from lshsim.calibration.model import a2a_bytes_per_rank

            seconds *= _interp_curve(self.unaligned, max(a2a_bytes_per_rank(traffic_bytes), 1.0))
        if convention == "device":
            return seconds
        curve = self.excess_as_run if convention == "as_run" else self.excess_back_to_back
        if not curve:
            return seconds
        from lshsim.calibration.model import a2a_bytes_per_rank

        return max(seconds + _interp_curve(curve, max(a2a_bytes_per_rank(traffic_bytes), 1.0)), 0.5 * seconds)

    def a2a_interval_s(self, device_s: float, traffic_bytes, convention: str) -> tuple[float, float]:
        """(low, high): the prediction of `a2a_s` widened by the calibration's spread of the excess
        around its curve (its 10th and 90th percentiles); the device time's interval is the
        prediction itself. The spread is one session's: the host's launch cost also drifts between
        sessions (benchmarks/RESULTS.md), which no band measured in one session covers."""
        middle = self.a2a_s(device_s, traffic_bytes, convention)
        low, high = self.excess_band.get(convention, (0.0, 0.0)) if convention != "device" else (0.0, 0.0)
        return max(middle + low, 0.5 * device_s), middle + high

    @property
    def latency_as_run_s(self) -> float:
        """The as-run excess of the smallest calibrated all-to-all: the launch latency of a small one."""
        return float(self.excess_as_run[0][1]) if self.excess_as_run else 0.0

    def as_run_excess_s(self, bytes_per_rank: float) -> float:
        return _interp_curve(self.excess_as_run, max(bytes_per_rank, 1.0)) if self.excess_as_run else 0.0

    # -- compute ---------------------------------------------------------------------------------
    def kernel_s(self, phase: str, direction: str, features: dict) -> float | None:
        fit = self.kernels.get((phase, direction))
        return None if fit is None else fit.predict_s(features)

    # -- the YAML block --------------------------------------------------------------------------
    def to_block(self) -> dict:
        block = {"transport": self.transport, "a2a_excess_s": {}}
        for key, curve in (("as_run", self.excess_as_run), ("back_to_back", self.excess_back_to_back)):
            if curve:
                block["a2a_excess_s"][key] = [[float(m), float(t)] for m, t in curve]
        if self.excess_band:
            block["a2a_excess_band_s"] = {key: [float(lo), float(hi)] for key, (lo, hi) in self.excess_band.items()}
        if self.unaligned:
            block["a2a_unaligned"] = [[float(m), float(f)] for m, f in self.unaligned]
        compute = {}
        if self.expert is not None:
            compute["expert"] = self.expert.to_points()
            compute["expert_floor_s"] = {"forward": self.expert.floor_s[0], "backward": self.expert.floor_s[1]}
        if self.kernels:
            compute["kernels"] = {f"{phase}.{direction}": fit.to_dict() for (phase, direction), fit in
                                  sorted(self.kernels.items())}
        if self.exchange_s is not None:
            compute["exchange_s"] = float(self.exchange_s)
        if self.exchange_single_s is not None:
            compute["exchange_single_s"] = float(self.exchange_single_s)
        if compute:
            block["compute"] = compute
        if self.self_copy:
            block["self_copy_Bps"] = [[float(m), float(v)] for m, v in self.self_copy]
        if self.info:
            block["fit"] = self.info
        return block


def _number(value, name: str, minimum: float = 0.0, kind: str | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}={value!r} must be a finite number >= {minimum:g}")
    if kind is not None:
        bounds.check(kind, name, value)          # a size, a time, a rate: lshsim.bounds
    return float(value)


def _curve(value, name: str, minimum: float | None, kind: str | None = None) -> tuple | None:
    """A [[bytes_per_rank, value], ...] curve: sizes >= 1 strictly increasing, values finite
    (and >= minimum when given); None stays None."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise ValueError(f"{name} must be a list of [bytes_per_rank, value] pairs")
    out = []
    for i, (m, v) in enumerate(value):
        size = _number(m, f"{name}[{i}][0]", 1.0, "bytes")
        if minimum is None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}[{i}][1]={v!r} must be a finite number")
            if kind is not None:
                bounds.check(kind, f"{name}[{i}][1]", v)
            out.append((size, float(v)))
        else:
            out.append((size, _number(v, f"{name}[{i}][1]", minimum, kind)))
    if any(b[0] <= a[0] for a, b in zip(out, out[1:])):
        raise ValueError(f"{name}: sizes must be strictly increasing")
    return tuple(out)


def parse_phase_model(block, source: str = "topology", name: str = "calibration.phase_model") -> PhaseModel:
    """The `PhaseModel` of a `calibration.phase_model` block; ValueError naming the source and field."""
    try:
        return _parse(block, name)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _parse(block, name: str) -> PhaseModel:
    if not isinstance(block, dict):
        raise ValueError(f"{name}={block!r} must be a mapping")
    known = {"transport", "a2a_excess_s", "a2a_excess_band_s", "a2a_unaligned", "self_copy_Bps", "compute", "fit"}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"{name}.{unknown[0]} is not a known field; known: {sorted(known)}")
    transport = block.get("transport", "nvlink")
    if transport not in TRANSPORTS:
        raise ValueError(f"{name}.transport={transport!r} must be one of {list(TRANSPORTS)}")
    excess = block.get("a2a_excess_s") or {}
    if not isinstance(excess, dict) or set(excess) - {"as_run", "back_to_back"}:
        raise ValueError(f"{name}.a2a_excess_s={excess!r} must be a mapping with as_run and back_to_back curves")
    as_run = _curve(excess.get("as_run"), f"{name}.a2a_excess_s.as_run", None, "duration_s")
    b2b = _curve(excess.get("back_to_back"), f"{name}.a2a_excess_s.back_to_back", None, "duration_s")
    unaligned = _curve(block.get("a2a_unaligned"), f"{name}.a2a_unaligned", 0.01)
    compute = block.get("compute") or {}
    if not isinstance(compute, dict) or set(compute) - {"expert", "expert_floor_s", "kernels", "exchange_s",
                                                        "exchange_single_s"}:
        raise ValueError(f"{name}.compute must be a mapping of expert, expert_floor_s, kernels, exchange_s and "
                         f"exchange_single_s")
    expert = ExpertTable.from_points(compute["expert"], f"{name}.compute.expert") if "expert" in compute else None
    floors = compute.get("expert_floor_s")
    if floors is not None:
        if not isinstance(floors, dict) or set(floors) != {"forward", "backward"} or expert is None:
            raise ValueError(f"{name}.compute.expert_floor_s must be a mapping of forward and backward seconds, "
                             f"with compute.expert")
        expert = expert.with_floor((_number(floors["forward"], f"{name}.compute.expert_floor_s.forward", 0.0,
                                            "duration_s"),
                                    _number(floors["backward"], f"{name}.compute.expert_floor_s.backward", 0.0,
                                            "duration_s")))
    kernels = {}
    for key, fit in (compute.get("kernels") or {}).items():
        where = f"{name}.compute.kernels.{key}"
        phase, _, direction = str(key).partition(".")
        if (phase, direction) not in KERNEL_TERMS:
            raise ValueError(f"{where}: not a known phase.direction; known: "
                             f"{sorted(f'{p}.{d}' for p, d in KERNEL_TERMS)}")
        if not isinstance(fit, dict) or not isinstance(fit.get("terms"), list) or not isinstance(fit.get("coef"), list) \
                or len(fit["terms"]) != len(fit["coef"]):
            raise ValueError(f"{where} must hold terms and coef lists of one length")
        for term in fit["terms"]:
            if term not in FEATURES:
                raise ValueError(f"{where}.terms: {term!r} is not a feature; known: {sorted(FEATURES)}")
        coef = tuple(_number(c, f"{where}.coef[{i}]") for i, c in enumerate(fit["coef"]))
        extra = {k: fit.get(k) for k in ("points", "median_rel_error", "max_rel_error", "loo_median_rel_error",
                                         "loo_max_rel_error")}
        kernels[(phase, direction)] = LinearFit(tuple(fit["terms"]), coef, int(extra["points"] or 0),
                                                *(extra[k] for k in list(extra)[1:]))
    exchange = compute.get("exchange_s")
    exchange = None if exchange is None else _number(exchange, f"{name}.compute.exchange_s", 0.0, "duration_s")
    single = compute.get("exchange_single_s")
    single = None if single is None else _number(single, f"{name}.compute.exchange_single_s", 0.0, "duration_s")
    self_copy = _curve(block.get("self_copy_Bps"), f"{name}.self_copy_Bps", 1.0, "rate_Bps")
    band = block.get("a2a_excess_band_s") or {}
    if not isinstance(band, dict) or set(band) - {"as_run", "back_to_back"}:
        raise ValueError(f"{name}.a2a_excess_band_s={band!r} must be a mapping of as_run and back_to_back")
    bands = {}
    for key, value in band.items():
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"{name}.a2a_excess_band_s.{key}={value!r} must be [low, high] seconds")
        low, high = value
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}.a2a_excess_band_s.{key}[{i}]={v!r} must be a finite number")
            bounds.check("duration_s", f"{name}.a2a_excess_band_s.{key}[{i}]", v)
        if low > high:
            raise ValueError(f"{name}.a2a_excess_band_s.{key}={value!r}: low must be <= high")
        bands[key] = (float(low), float(high))
    return PhaseModel(transport, as_run, b2b, unaligned, expert, kernels, exchange, dict(block.get("fit") or {}),
                      single, self_copy, bands)


# ---- fitting ---------------------------------------------------------------------------------------
_SMALL_S = 1e-3


def _smooth(points: list, half: int = 1) -> list:
    """Running median over 2 half + 1 neighbours of a curve's values (sizes kept): one noisy size
    cannot set it."""
    values = [v for _, v in points]
    out = []
    width = min(2 * half + 1, len(values))
    for i, (m, _) in enumerate(points):
        start = min(max(0, i - half), len(values) - width)    # a full window at the ends too
        window = values[start:start + width]
        out.append([float(m), float(np.median(window))])
    return out


def fit_conventions(a2a: list[dict]) -> dict:
    """The excess curves of the two timing conventions over the device time (running medians of
    five sizes), the unaligned factor curve (of three) and the self-chunk copy curve, from the a2a
    part's records (module docstring)."""
    fitted = [(i, r) for i, r in enumerate(a2a) if r.get("aligned", True) and "name" not in r and not r.get("self")]
    aligned = [r for _, r in sorted(fitted, key=lambda item: item[1]["bytes_per_rank"])]
    if not aligned:
        raise ValueError("the phase calibration has no aligned all-to-all records")
    first: dict = {}
    for i, record in fitted:          # one record per size: a repeat gave the curve two values at one size
        size = record["bytes_per_rank"]
        if size in first:
            raise ValueError(f"a2a[{first[size]}] and a2a[{i}] are both aligned all-to-alls of {size} B per rank: "
                             f"the excess curves take one record per size")
        first[size] = i
    if len(aligned) < 2:
        # one size: a constant excess whose band (the spread around the curve) is 0 by construction
        raise ValueError(f"the aligned all-to-alls cover one size ({aligned[0]['bytes_per_rank']} B per rank, "
                         f"a2a[{fitted[0][0]}]): the excess curves by size and their band (the spread around the "
                         f"curve, 0 from one point whatever it measured) need at least two sizes")
    out = {}
    out["band"] = {}
    for convention in ("as_run", "back_to_back"):
        # the host's launch cost jitters by tens of microseconds from size to size: median of five
        raw = [[r["bytes_per_rank"], r[convention] - r["device"]] for r in aligned]
        out[convention] = _smooth(raw, half=2)
        residuals = [v - s for (_, v), (_, s) in zip(raw, out[convention])]
        out["band"][convention] = [float(np.quantile(residuals, 0.1)), float(np.quantile(residuals, 0.9))]
    by_chunk = {round(r["bytes_per_rank"] / r["world_size"]): r for r in aligned}
    curve = []
    for r in a2a:
        if r.get("aligned", True) or "name" in r or r.get("self"):
            continue
        base = by_chunk.get(round(r["bytes_per_rank"] / r["world_size"]) - 2)
        if base is not None:
            curve.append([float(base["bytes_per_rank"]), float(r["device"] / base["device"])])
    curve.sort()
    out["unaligned"] = _smooth(curve) if curve else None
    rates = sorted((float(r["local_bytes"]), 2.0 * r["local_bytes"] / r["device"]) for r in a2a
                   if r.get("self") and r["device"] > 0 and r["local_bytes"] > 0)
    out["self_copy_Bps"] = [list(p) for p in rates] or None
    return out


def check_phase_results(results, name: str = "results.phases") -> None:
    """Refuse phase measurements the fits cannot use, naming the record, the field and the value:
    a2a records need bytes_per_rank and world_size (integers >= 1) and device, as_run, back_to_back
    (measured times: finite, > 0, at most an hour), aligned and self true or false where given,
    local_bytes a number >= 0 where self; expert records the four grid axes and forward_s /
    backward_s; layer records a workload (tokens_per_rank, d_model, d_ffn, num_experts, world_size
    integers >= 1; router and lsh mappings or null, with k, num_hashes and proj_dim integers >= 1
    where given), phases_s (direction -> {phase: seconds}, known directions and phases), traffic_bytes,
    combine_traffic_bytes and bytes_per_token (an integer >= 1); layer_s, where given, a mapping with forward and backward
    times (total too, where given); rows_per_expert, where given, lists of integers >= 0."""
    if not isinstance(results, dict):
        raise ValueError(f"{name}={_short(results)} must be a mapping of a2a, expert and layers lists")
    for part, numbers, integers in (("a2a", ("device", "as_run", "back_to_back"), ("bytes_per_rank", "world_size")),
                                    ("expert", ("forward_s", "backward_s"), _AXES)):
        records = results.get(part)
        records = [] if records is None else records
        if not isinstance(records, list):     # 0 or "" too: not read as "no records"
            raise ValueError(f"{name}.{part}={_short(records)} must be a list")
        for i, record in enumerate(records):
            where = f"{name}.{part}[{i}]"
            if not isinstance(record, dict):
                raise ValueError(f"{where}={_short(record)} must be a mapping")
            for key in integers:
                value = record.get(key)
                if key not in record:
                    raise ValueError(f"{where}.{key} is missing")
                _integer(value, f"{where}.{key}")
            for key in numbers:
                if key not in record:
                    raise ValueError(f"{where}.{key} is missing")
                _positive(record[key], f"{where}.{key}")
            if part == "a2a":
                for key in ("aligned", "self"):
                    if key in record and not isinstance(record[key], bool):
                        raise ValueError(f"{where}.{key}={_short(record[key])} must be true or false")
                if record.get("self"):
                    local = record.get("local_bytes")
                    if isinstance(local, bool) or not isinstance(local, (int, float)) or not math.isfinite(local) \
                            or local < 0:
                        raise ValueError(f"{where}.local_bytes={_short(local)} must be a finite number of bytes >= 0")
    layers = results.get("layers")
    layers = [] if layers is None else layers
    if not isinstance(layers, list):
        raise ValueError(f"{name}.layers={_short(layers)} must be a list")
    for i, record in enumerate(layers):
        where = f"{name}.layers[{i}]"
        if not isinstance(record, dict):
            raise ValueError(f"{where}={_short(record)} must be a mapping")
        for key in ("workload", "phases_s", "traffic_bytes", "combine_traffic_bytes", "bytes_per_token"):
            if key not in record:
                raise ValueError(f"{where}.{key} is missing")
        _check_layer_workload(record["workload"], f"{where}.workload")
        _integer(record["bytes_per_token"], f"{where}.bytes_per_token")
        phases_s = record["phases_s"]
        if not isinstance(phases_s, dict):
            raise ValueError(f"{where}.phases_s={_short(phases_s)} must be a mapping of direction -> {{phase: seconds}}")
        from lshsim.sim.phases import DIRECTIONS, PHASES   # lazily: lshsim.sim imports this package

        for direction, phases in phases_s.items():
            if direction not in DIRECTIONS:
                raise ValueError(f"{where}.phases_s: {_short(direction)} is not a direction; known: {list(DIRECTIONS)}")
            if not isinstance(phases, dict):
                raise ValueError(f"{where}.phases_s.{direction}={_short(phases)} must be a mapping of phase -> seconds")
            for phase, seconds in phases.items():
                if phase not in PHASES:
                    raise ValueError(f"{where}.phases_s.{direction}: {_short(phase)} is not a known phase; known: "
                                     f"{list(PHASES)}")
                _positive(seconds, f"{where}.phases_s.{direction}.{phase}")
        layer = record.get("layer_s")
        if layer is not None:
            if not isinstance(layer, dict):
                raise ValueError(f"{where}.layer_s={_short(layer)} must be a mapping of forward, backward and total "
                                 f"seconds, or null")
            for key in ("forward", "backward", "total"):
                if key in layer or key != "total":
                    if key not in layer:
                        raise ValueError(f"{where}.layer_s.{key} is missing")
                    _positive(layer[key], f"{where}.layer_s.{key}")
        rows = record.get("rows_per_expert")
        if rows is not None:
            world, experts = record["workload"]["world_size"], record["workload"]["num_experts"]
            local = experts // world if experts % world == 0 else None
            if not isinstance(rows, list) or (rows and len(rows) != world) \
                    or not all(isinstance(r, list) and r and (local is None or len(r) == local) for r in rows):
                raise ValueError(f"{where}.rows_per_expert={_short(rows)} must be a list of the {world} ranks' rows "
                                 f"per local expert" + (f" ({local} each: num_experts {experts} / {world})"
                                                        if local else ""))
            for rank, counts in enumerate(rows):
                for j, value in enumerate(counts):
                    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                        raise ValueError(f"{where}.rows_per_expert[{rank}][{j}]={_short(value)} must be an integer "
                                         f">= 0 (rows)")


def _check_layer_workload(workload, where: str) -> None:
    """The workload of a calibration layer record: what `workload_features` and the fits read."""
    if not isinstance(workload, dict):
        raise ValueError(f"{where}={_short(workload)} must be a mapping (the layer's workload)")
    for key in ("tokens_per_rank", "d_model", "d_ffn", "num_experts", "world_size"):
        if key not in workload:
            raise ValueError(f"{where}.{key} is missing")
        _integer(workload[key], f"{where}.{key}")
    if workload.get("bytes_per_token") is not None:
        _integer(workload["bytes_per_token"], f"{where}.bytes_per_token")
    for block, keys in (("router", ("k",)), ("lsh", ("num_hashes", "proj_dim"))):
        value = workload.get(block)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{where}.{block}={_short(value)} must be a mapping or null")
        for key in keys:
            if value.get(key) is not None:
                _integer(value[key], f"{where}.{block}.{key}")
        if "name" in value and not isinstance(value["name"], str):
            raise ValueError(f"{where}.{block}.name={_short(value['name'])} must be text")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={_short(value)} must be an integer >= 1")
    return value


def _positive(value, name: str) -> float:
    """A measured time of a phase record: finite, > 0 and at most an hour (`MAX_MEASURED_S`)."""
    from lshsim.calibration.sources import MAX_MEASURED_S   # lazily: the package imports this module first

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0 \
            or value > MAX_MEASURED_S:
        raise ValueError(f"{name}={_short(value)} must be a finite number > 0 and <= {MAX_MEASURED_S:g} (seconds)")
    return float(value)


def _layer_points(layers: list[dict]):
    """(features, record) of every calibration layer record."""
    out = []
    for record in layers:
        workload = dict(record["workload"])
        workload.setdefault("bytes_per_token", record.get("bytes_per_token"))
        out.append((workload_features(workload), record))
    return out


def _sum_phases(phases: dict) -> float:
    return float(sum(phases.values()))


def _expert_loads(record: dict) -> list[tuple[int, float]]:
    """(local experts, mean rows per expert) of every rank of a layer record."""
    return [(len(rows), float(np.mean(rows))) for rows in record["rows_per_expert"]]


def fit_expert_floor(table: ExpertTable, layers: list[dict]) -> tuple[tuple, dict]:
    """The least time an in-layer expert phase takes, per direction, and its errors.

    A layer's expert phase runs right after the dispatch all-to-all, whose launch waited on the
    host (the split sizes): for a small phase the GPU then waits on the host queueing the phase's
    kernels, so the phase takes at least that host time, whatever its device time. Predicted:
    max(grid device time, floor); the floor per direction is the value (0, or one of the measured
    phase times) with the least mean |relative error| over the calibration layers.
    Returns ((forward, backward), {direction: {"mean", "worst", "loo_median", "loo_worst"}}).
    """
    floors, info = [], {}
    for direction in ("forward", "backward"):
        device, measured = [], []
        for record in layers:
            seconds = (record["phases_s"].get(direction) or {}).get("expert")
            if seconds is None or not record.get("rows_per_expert"):
                continue
            d, f = int(record["workload"]["d_model"]), int(record["workload"]["d_ffn"])
            device.append(max(table.device_s(e, r, d, f, direction) for e, r in _expert_loads(record)))
            measured.append(float(seconds))
        device_arr, measured_arr = np.asarray(device), np.asarray(measured)

        def best(keep):
            candidates = [0.0] + sorted(measured_arr[keep].tolist())
            scores = [np.mean(np.abs(np.maximum(device_arr[keep], c) - measured_arr[keep]) / measured_arr[keep])
                      for c in candidates]
            return candidates[int(np.argmin(scores))]

        if len(measured) == 0:
            floors.append(0.0)
            continue
        if len(measured) == 1:
            # the floor is one of the measured times: on one layer it can always match it (0% error, no test left)
            raise ValueError(f"the expert floor ({direction}) is chosen among the layers' measured expert times: "
                             f"from one layer it matches that layer whatever it measured; it needs at least two "
                             f"layers with rows_per_expert")
        everything = np.ones(len(measured), dtype=bool)
        floor = best(everything)
        errors = np.abs(np.maximum(device_arr, floor) - measured_arr) / measured_arr
        loo = []
        for i in range(len(measured)):
            keep = everything.copy()
            keep[i] = False
            if keep.any():
                loo.append(abs(max(device_arr[i], best(keep)) - measured_arr[i]) / measured_arr[i])
        floors.append(floor)
        info[direction] = {"layers": len(measured), "floor_s": floor, "median": float(np.median(errors)),
                           "worst": float(errors.max()), "loo_median": float(np.median(loo)) if loo else None,
                           "loo_worst": float(max(loo)) if loo else None}
    return tuple(floors), info


def fit_phase_model(results: dict, *, transport: str = "nvlink", small_a2a_s=None, base: dict | None = None
                    ) -> PhaseModel:
    """The `PhaseModel` of `executor calibrate --phases` results ({"a2a": [...], "expert": [...],
    "layers": [...]}, `lshsim.executor.phase_bench`).

    small_a2a_s(traffic) -> device seconds of a small all-to-all on the calibrated links (for the
    split-size exchange's all-to-all; None: 0). base: the phase results of another calibration
    whose compute parts join these (compute does not depend on the NCCL transport): its expert grid
    where these have none, its calibration layers added to these (a one-rank calibration's layers
    next to a two-rank one's). The all-to-all conventions come from `results` only.
    """
    info: dict = {}
    base = base or {}
    check_phase_results(results)
    check_phase_results(base, "the phase base")
    conventions = {"as_run": None, "back_to_back": None, "unaligned": None}
    if results.get("a2a"):
        conventions = fit_conventions(results["a2a"])
        info["a2a_records"] = len(results["a2a"])
    small_latency = float(conventions["as_run"][0][1]) if conventions["as_run"] else 0.0
    grid = results.get("expert") or base.get("expert")
    expert = ExpertTable.from_points(grid, "results.phases.expert") if grid else None
    kernels: dict = {}
    exchange = single = None
    layers = list(results.get("layers") or []) + list(base.get("layers") or [])
    if layers:
        points = _layer_points(layers)
        for (phase, direction), terms in KERNEL_TERMS.items():
            rows, targets, scales = [], [], []
            for features, record in points:
                phases = record["phases_s"].get(direction, {})
                if phase == "glue":
                    layer = record.get("layer_s")
                    if not layer:
                        continue
                    multi = int(record["workload"]["world_size"]) > 1
                    measured = layer[direction] - _sum_phases(phases) - (
                        small_latency if direction == "forward" and multi else 0.0)
                    scale = layer[direction]
                elif phase in phases:
                    measured = scale = phases[phase]
                else:
                    continue
                rows.append(features)
                targets.append(measured)
                scales.append(scale)
            if rows:
                try:
                    kernels[(phase, direction)] = fit_linear(terms, rows, targets, scales)
                except ValueError as error:
                    raise ValueError(f"the layers' {phase} {direction}: {error}") from None
        multi_values, single_values = [], []
        for features, record in points:
            other = record["phases_s"].get("forward", {}).get("other")
            if other is None:
                continue
            world = int(record["workload"]["world_size"])
            if world > 1:
                count_bytes = int(record["workload"]["num_experts"]) // world * 8
                device_s = small_a2a_s(np.full((world, world), count_bytes)) if small_a2a_s else 0.0
                multi_values.append(other - device_s - small_latency)
            else:
                single_values.append(other)
        exchange = max(float(np.median(multi_values)), 0.0) if multi_values else None
        single = max(float(np.median(single_values)), 0.0) if single_values else None
        info["layers"] = len(layers)
        if expert is not None and any(record.get("rows_per_expert") for record in layers):
            floors, floor_info = fit_expert_floor(expert, layers)
            expert = expert.with_floor(floors)
            info["expert_floor"] = floor_info

    def as_tuple(curve):
        return tuple(tuple(p) for p in curve) if curve else None

    return PhaseModel(transport, as_tuple(conventions["as_run"]), as_tuple(conventions["back_to_back"]),
                      as_tuple(conventions["unaligned"]), expert, kernels, exchange, info, single,
                      as_tuple(conventions.get("self_copy_Bps")),
                      {key: tuple(value) for key, value in (conventions.get("band") or {}).items()})
