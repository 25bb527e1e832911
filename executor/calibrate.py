"""`executor calibrate`: the microbenchmarks that parameterise a topology, and the fit.

Measured (every rank; collective):

1. all-to-all sweep: `all_to_all_single` of M bytes per rank, equal splits (M / W to every rank,
   itself included), M from 4 KiB to 1 GiB. Timed exactly as `executor run` times its dispatch:
   ranks aligned by a one-element all-reduce (untimed), CUDA events (CPU: perf_counter) around
   one collective, the slowest rank per repetition, the median over repetitions.
   Split sizes are passed explicitly, so the sweep runs the same code path (NCCL grouped
   send/recv) as the executor's variable-split all-to-all. The fitted sizes lie between the powers
   of two (2^(k + 1/4), 2^(k + 3/4)) with per-rank chunks of whole 4 KiB rows, like MoE traffic;
   the powers of two and half-octaves are measured beside them (`a2a_pow2`, not fitted).
2. p2p: rank 0 sends M bytes to rank 1 (`send`/`recv`), the same timing; bandwidth = M / t.
3. expert FFN rate: gelu(x W1) W2 on (tokens, d) x (d, 4d) in the run's dtype (bf16 on GPU),
   FLOPs = 2 * 2 * tokens * d * 4d, and HBM bandwidth from a 1 GiB device-to-device copy
   (bytes read + bytes written) / t.

Fit (alpha-beta, DESIGN.md §3): the simulator predicts a direct all-to-all on a non-blocking
switch as t = alpha + max_r max(S_r, R_r) / B, S_r the bytes rank r sends to others (diagonal
excluded); for the uniform sweep S = M (W - 1) / W. alpha and B are fitted by least squares on
the relative error (minimise sum_i ((alpha + S_i / B - t_i) / t_i)^2, so a 4 KiB point weighs as
much as a 1 GiB one), over the sizes >= `fit_min_bytes`. The topology written has intra.latency_s
0 (the whole fixed cost is in alpha) and a calibration block {alpha_s, nvlink_Bps, expert_flops,
hbm_Bps, provenance}, which `lshsim.topology.load_topology` applies.

In-situ fit (`--from-traces`): the all-to-alls of measured executor traces of calibration
workloads (`data/workloads/cal-*.yaml`, never the validation ones), S = the busiest rank's
egress or ingress, t = the measured time; the same relative least squares. It captures what the
microbenchmark does not: NCCL is slower on the uneven split sizes of real routing than on equal
splits of the same bytes (measured: benchmarks/RESULTS.md, section executor).

Size-dependent curve (`--from-traces`, unless `--no-curve`): NCCL's bus bandwidth grows with the
size (4 H200: 88 GB/s at 16 MiB, 317 GB/s at 1 GiB per rank), which one (alpha, B) cannot follow.
`fit_busbw_curve` turns the traces' points into `calibration.a2a_busbw_curve`: one point per
distinct size M (the four all-to-alls of one trace share it), bus bandwidth S / t, the median
over the points of that size; the simulator interpolates it (lshsim.sim.collectives,
`curve_busbw_Bps`). With a curve the topology's alpha_s is 0: the bus bandwidth already holds the
fixed costs. The (alpha, B) fit is still made and kept in the provenance.

Uniform and skewed traces (`--from-traces` with a curve): the curve (and the (alpha, B) fit) come
from the traces of uniform workloads only (meta.workload.skew 0 or absent). Traces of skewed
workloads (skew > 0), if given, then fit the duplex engine's link headroom h
(`calibration.a2a_link_headroom`, lshsim.sim.collectives "Duplex engine"): `fit_link_headroom`
simulates their four all-to-alls (their recorded traffic matrices, as `lshsim validate` does) on
the curve topology for h in [1, 3] (a grid of 0.02, then 0.001 around the best) and keeps the h
of the smallest median |relative error| (ties: the smallest mean). The links' cap
(`calibration.a2a_link_max_Bps`) is fitted with it (`fit_link_headroom_and_cap`) between the
curve's largest bus bandwidth and the fastest p2p send of the microbenchmark (`--from-raw`
results; without p2p results, the curve's largest bus bandwidth): one direction can carry more
than a uniform all-to-all's per-direction rate (2 H200s: a skewed all-to-all moved 388 MB one way
at 330-350 GB/s while uniform ones top out at 298; the fit picks the p2p rate, 353), but a GPU fed
by three peers at once does not reach a lone p2p send (4 H200s: the fit picks 344, the curve's
top, not the p2p 354). Without skewed traces no headroom is written, so a headroom always comes from skewed
measurements. With --no-curve every
trace goes into the (alpha, B) fit, as before.

`parse_nccl_tests` reads nccl-tests `alltoall_perf` output (the table of size, count, type,
[redop, root,] time, algbw, busbw, ...), so an existing nccl-tests run can be fitted instead.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lshsim.executor.comm import align_ranks
from lshsim.executor.timing import PhaseTimer

__all__ = ["A2APoint", "AlphaBetaFit", "fit_alpha_beta", "parse_nccl_tests", "NcclTestsRun", "measure",
           "topology_spec", "calibrate_command", "gpu_key", "sweep_sizes", "fit_busbw_curve", "curve_residuals",
           "trace_skew", "HeadroomFit", "fit_link_headroom", "fit_link_headroom_and_cap", "skewed_a2a_errors"]


@dataclass(frozen=True)
class A2APoint:
    """One all-to-all size: bytes_per_rank M (all W chunks), time_s (median of the slowest rank)."""

    bytes_per_rank: int
    time_s: float
    world_size: int

    @property
    def offdiag_bytes(self) -> float:
        """S = M (W - 1) / W: what one rank sends to the others."""
        return self.bytes_per_rank * (self.world_size - 1) / self.world_size

    @property
    def busbw_Bps(self) -> float:
        return self.offdiag_bytes / self.time_s


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


def fit_alpha_beta(points: list[A2APoint], min_bytes: int = 0) -> AlphaBetaFit:
    """Relative least squares fit of t = alpha + S / B over the points with M >= min_bytes.

    >>> pts = [A2APoint(m, 2e-5 + m * 3 / 4 / 3e11, 4) for m in (2 ** 12, 2 ** 20, 2 ** 26, 2 ** 30)]
    >>> fit = fit_alpha_beta(pts)
    >>> round(fit.alpha_s * 1e6, 3), round(fit.bandwidth_Bps / 1e9, 3)
    (20.0, 300.0)
    """
    used = [p for p in points if p.bytes_per_rank >= min_bytes and p.world_size > 1]
    if len(used) < 2:
        raise ValueError(f"fit needs at least 2 all-to-all sizes >= {min_bytes} bytes on >= 2 ranks, got {len(used)}")
    t = np.array([p.time_s for p in used])  # (n,)
    s = np.array([p.offdiag_bytes for p in used])  # (n,)
    design = np.stack([1.0 / t, s / t], axis=1)  # (n, 2): [alpha, 1/B] . row = 1
    (alpha, inv_bw), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if inv_bw <= 0:
        raise ValueError("the fitted bandwidth is not positive: the times do not grow with the size")
    if alpha < 0:  # a negative start-up latency is unphysical: refit the bandwidth alone
        alpha, inv_bw = 0.0, float(np.sum(s / t) / np.sum((s / t) ** 2))
    model = alpha + s * inv_bw
    residual = (model - t) / t
    return AlphaBetaFit(alpha_s=float(alpha), bandwidth_Bps=float(1.0 / inv_bw), points_used=len(used),
                        max_rel_residual=float(np.abs(residual).max()),
                        median_rel_residual=float(np.median(np.abs(residual))))


def fit_busbw_curve(points: list[A2APoint]) -> list[list[float]]:
    """[[bytes_per_rank, bus_bandwidth_Bps], ...] sorted by size: one point per distinct size M,
    bus bandwidth S / t (S = M (W - 1) / W), the median over the points of that size.

    >>> pts = [A2APoint(4000, 1e-5, 4), A2APoint(4000, 3e-5, 4), A2APoint(4000, 2e-5, 4), A2APoint(400, 1e-5, 4)]
    >>> [[m, round(b / 1e6, 6)] for m, b in fit_busbw_curve(pts)]   # MB/s: 300 B / 10 us; median 3000 B / 20 us
    [[400.0, 30.0], [4000.0, 150.0]]
    """
    used = [p for p in points if p.world_size > 1 and p.bytes_per_rank > 0 and p.time_s > 0]
    sizes = sorted({p.bytes_per_rank for p in used})
    if len(sizes) < 2:
        raise ValueError(f"a bus bandwidth curve needs all-to-alls of at least 2 sizes, got {len(sizes)}")
    worlds = {p.world_size for p in used}
    if len(worlds) != 1:
        raise ValueError(f"a bus bandwidth curve is for one world size, got points of {sorted(worlds)} ranks")
    return [[float(size), float(np.median([p.busbw_Bps for p in used if p.bytes_per_rank == size]))]
            for size in sizes]


def curve_residuals(curve: list[list[float]], points: list[A2APoint]) -> np.ndarray:
    """(n,) (model - measured) / measured of every point under t = S / B(M), B the interpolated curve."""
    from lshsim.sim.collectives import curve_busbw_Bps

    return np.array([(p.offdiag_bytes / curve_busbw_Bps(curve, p.bytes_per_rank) - p.time_s) / p.time_s
                     for p in points], dtype=float)


# ---- duplex engine headroom (skewed traces) ----------------------------------------------------------
@dataclass(frozen=True)
class HeadroomFit:
    """The fitted calibration.a2a_link_headroom and the |relative errors| of the skewed traces'
    all-to-alls with it and with the curve alone (no engines)."""

    headroom: float
    phases: int
    median_rel_error: float
    max_rel_error: float
    curve_only_median_rel_error: float
    curve_only_max_rel_error: float


def trace_skew(trace) -> float:
    """meta.workload.skew of a measured trace (a Trace); 0 when absent or None."""
    skew = trace.meta.get("workload", {}).get("skew")
    return 0.0 if skew is None else float(skew)


def _trace_a2a_phases(path: str) -> tuple[dict, list[tuple[np.ndarray, float]]]:
    """(meta.workload, [(traffic (W, W), measured s), ...]) of the four all-to-all phases of one
    measured executor trace, the matrices as `lshsim.sim.validate` uses them (dispatch forward:
    traffic_bytes, combine forward: combine_traffic_bytes, backward swapped); phases that were
    not measured are left out."""
    from lshsim.sim.trace import Trace

    trace = Trace.from_json(path)
    measured = trace.meta.get("measured")
    if measured is None:
        raise ValueError(f"{path}: not a measured executor trace (meta['measured'] is missing)")
    dispatch = np.asarray(measured["traffic_bytes"], dtype=float)  # (W, W)
    combine = np.asarray(measured["combine_traffic_bytes"], dtype=float)  # (W, W)
    pairs = ((dispatch, "forward", "dispatch_a2a"), (combine, "forward", "combine_a2a"),
             (combine, "backward", "dispatch_a2a"), (dispatch, "backward", "combine_a2a"))
    phases = []
    for matrix, direction, phase in pairs:
        seconds = measured["phases_s"].get(direction, {}).get(phase)
        if seconds is not None:
            phases.append((matrix, float(seconds)))
    return trace.meta["workload"], phases


def _a2a_cases(paths: list[str], world: int) -> list[tuple[np.ndarray, float, str]]:
    """(traffic (W, W), measured s, algorithm) of every measured all-to-all phase of the traces
    (`_trace_a2a_phases`)."""
    cases = []
    for path in paths:
        workload, phases = _trace_a2a_phases(path)
        if int(workload["world_size"]) != world:
            raise ValueError(f"{path}: a trace of {workload['world_size']} ranks; calibrating {world}")
        algorithm = "groupwise" if workload.get("alltoall") == "groupwise" else "direct"
        cases.extend((matrix, seconds, algorithm) for matrix, seconds in phases if seconds > 0)
    if not cases:
        raise ValueError("the skewed traces hold no all-to-all phase")
    return cases


def skewed_a2a_errors(spec: dict, paths: list[str], headroom: float | None,
                      link_max_Bps: float | None = None) -> np.ndarray:
    """(n,) (predicted - measured) / measured of every all-to-all phase of the traces, simulated on
    the topology `spec` with G.graph["a2a_link_headroom"] = headroom (None: the curve alone) and
    G.graph["a2a_link_max_Bps"] = link_max_Bps (None: the curve's largest bus bandwidth)."""
    return _headroom_objective(spec, paths, link_max_Bps)(headroom)


def _headroom_objective(spec: dict, paths: list[str], link_max_Bps: float | None = None):
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.topology import build_topology
    from lshsim.topology.routing import validate_topology

    world = int(spec.get("nodes", 1)) * int(spec["gpus_per_node"])
    G = build_topology(spec, source="<calibration>")
    if not G.graph.get("a2a_busbw_curve"):
        raise ValueError("a link headroom needs a topology with an a2a_busbw_curve")
    routes = validate_topology(G)
    cases = _a2a_cases(paths, world)
    measured = np.array([seconds for _, seconds, _ in cases])  # (n,)

    def errors(headroom: float | None) -> np.ndarray:
        G.graph["a2a_link_headroom"] = headroom
        G.graph["a2a_link_max_Bps"] = link_max_Bps
        cache: dict = {}
        predicted = []
        for matrix, _, algorithm in cases:
            key = (matrix.tobytes(), algorithm)
            if key not in cache:
                cache[key] = simulate_all_to_all(G, matrix, algorithm, routes=routes).time_s
            predicted.append(cache[key])
        return (np.array(predicted) - measured) / measured  # (n,)

    return errors


def fit_link_headroom(spec: dict, paths: list[str], low: float = 1.0, high: float = 3.0,
                      link_max_Bps: float | None = None) -> HeadroomFit:
    """Fit calibration.a2a_link_headroom h on the all-to-alls of skewed-workload traces (module
    docstring): minimise the median |relative error| over h in [low, high] (grid of 0.02, then 0.001
    within 0.02 of the best; ties: the smaller mean |error|, then the smaller h). `spec` is the
    calibrated topology spec with its curve (its headroom, if any, is ignored); link_max_Bps is the
    links' cap min(h B(M), link_max_Bps) during the fit (None: the curve's largest bus bandwidth)."""
    if not (math.isfinite(low) and math.isfinite(high) and 1.0 <= low < high):
        raise ValueError(f"low={low}, high={high} must satisfy 1 <= low < high")
    errors = _headroom_objective(spec, paths, link_max_Bps)
    seen: dict = {}

    def score(h: float) -> tuple:
        h = round(h, 3)
        if h not in seen:
            e = np.abs(errors(h))
            seen[h] = (float(np.median(e)), float(np.mean(e)), h)
        return seen[h]

    coarse = min(score(h) for h in np.linspace(low, high, int(round((high - low) / 0.02)) + 1))
    best = coarse[2]
    fine = min(score(h) for h in np.arange(max(low, best - 0.02), min(high, best + 0.02) + 5e-4, 0.001))
    headroom = fine[2]
    with_h = np.abs(errors(headroom))
    alone = np.abs(errors(None))
    return HeadroomFit(headroom=float(headroom), phases=len(with_h), median_rel_error=float(np.median(with_h)),
                       max_rel_error=float(with_h.max()), curve_only_median_rel_error=float(np.median(alone)),
                       curve_only_max_rel_error=float(alone.max()))


def fit_link_headroom_and_cap(spec: dict, paths: list[str], p2p_max_Bps: float | None,
                              steps: int = 6) -> tuple[HeadroomFit, float | None]:
    """Fit h and the links' cap B_max (calibration.a2a_link_max_Bps) on skewed-workload traces.

    B_max is searched on `steps` values from the curve's largest bus bandwidth (the fastest
    per-direction rate of a uniform all-to-all: a link carries at least that) to the fastest p2p
    send `p2p_max_Bps` (one direction alone: at most that), h by `fit_link_headroom` at each; the
    pair of the smallest median |relative error| wins (ties: the smaller mean, then the larger
    B_max). Measured (benchmarks/RESULTS.md): 4 H200s pick 344 GB/s (the curve's top; a GPU
    receiving from three peers at once does not reach the p2p rate), 2 H200s 353 GB/s (the p2p
    rate: the one peer streams at it). Without `p2p_max_Bps` the cap is the curve's top (None is
    returned: the simulator's default)."""
    curve_max = max(b for _, b in spec["calibration"]["a2a_busbw_curve"])
    if p2p_max_Bps is None:
        return fit_link_headroom(spec, paths), None
    if not (np.isfinite(p2p_max_Bps) and p2p_max_Bps > 0) or steps < 1:
        raise ValueError(f"p2p_max_Bps={p2p_max_Bps} must be a finite number > 0 and steps={steps} >= 1")
    caps = np.linspace(curve_max, max(p2p_max_Bps, curve_max), steps) if p2p_max_Bps > curve_max else [curve_max]
    best = None
    for cap in caps:
        fit = fit_link_headroom(spec, paths, link_max_Bps=float(cap))
        mean = float(np.mean(np.abs(skewed_a2a_errors(spec, paths, fit.headroom, float(cap)))))
        key = (round(fit.median_rel_error, 9), round(mean, 9), -float(cap))
        if best is None or key < best[0]:
            best = (key, fit, float(cap))
    return best[1], best[2]


# ---- nccl-tests output --------------------------------------------------------------------------
@dataclass(frozen=True)
class NcclTestsRun:
    """Parsed alltoall_perf output: the rows (out-of-place time) and the number of ranks."""

    world_size: int
    points: list[A2APoint]
    columns: list[str]


_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def parse_nccl_tests(text: str, world_size: int | None = None) -> NcclTestsRun:
    """Parse nccl-tests `alltoall_perf` output.

    The header row (`#  size  count  type  [redop  root]  time  algbw  busbw  #wrong|error  time ...`)
    names the columns; the first `time` is out-of-place (us). `size` is the bytes per rank (all W
    chunks). The number of ranks is the count of `#  Rank  N ...` device lines, or `nranks`/`-g`
    from the first line, unless `world_size` is given.
    """
    lines = text.splitlines()
    columns: list[str] | None = None
    rank_lines = 0
    n_gpus = None
    points_raw = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped.lstrip("#").split()
            if body[:2] == ["size", "count"] or (len(body) > 2 and body[0] == "size" and "count" in body):
                columns = body
            elif body and body[0] == "Rank":
                rank_lines += 1
            else:
                match = re.search(r"nGpus\s+(\d+)", stripped)
                if match and n_gpus is None:
                    n_gpus = int(match.group(1))
            continue
        tokens = stripped.split()
        if columns is None or not _NUMBER.match(tokens[0]):
            continue
        if len(tokens) < columns.index("time") + 1:
            raise ValueError(f"nccl-tests row has {len(tokens)} fields, the header {len(columns)}: {stripped!r}")
        size = int(tokens[columns.index("size")])
        time_us = float(tokens[columns.index("time")])
        points_raw.append((size, time_us))
    if columns is None:
        raise ValueError("no nccl-tests header row ('# size count type ... time algbw busbw') found")
    if not points_raw:
        raise ValueError("the nccl-tests output holds no data rows")
    ranks = world_size or rank_lines or n_gpus
    if not ranks or ranks < 2:
        raise ValueError("cannot tell the number of ranks of the nccl-tests run (no '# Rank' lines); pass world_size")
    points = [A2APoint(size, time_us * 1e-6, ranks) for size, time_us in points_raw if size > 0 and time_us > 0]
    return NcclTestsRun(world_size=ranks, points=points, columns=columns)


# ---- measurements --------------------------------------------------------------------------------
def sweep_sizes(min_bytes: int, max_bytes: int, world_size: int, steps_per_octave: int = 1,
                offset: float = 0.0) -> list[int]:
    """Geometric sizes from min to max bytes per rank: M_i = 2^(k0 + (i + offset) / steps_per_octave),
    k0 = ceil(log2(min_bytes)), each rounded down so that the chunk per rank (M / W) is a multiple of
    4096 bytes (256 below 64 KiB per rank), as MoE traffic is: a whole number of token rows.

    offset = 0 gives the powers of two (and, with 2 steps, the half-octaves); offset = 0.5 with 2
    steps per octave gives 2^(k + 0.25) and 2^(k + 0.75), the sizes `executor calibrate` fits.
    The alignment matters: on 4 H200s, chunks of an odd number of bytes ran up to 2x slower than
    4 KiB-aligned chunks of about the same size (data/measured/h200/earlier).

    >>> sweep_sizes(4096, 65536, 4)
    [4096, 8192, 16384, 32768, 65536]
    >>> sweep_sizes(2 ** 20, 2 ** 22, 4, steps_per_octave=2, offset=0.5)
    [1245184, 1753088, 2490368, 3522560]
    """
    if min_bytes < 1 or max_bytes < min_bytes:
        raise ValueError(f"min_bytes={min_bytes} and max_bytes={max_bytes} must satisfy 1 <= min <= max")
    if isinstance(steps_per_octave, bool) or not isinstance(steps_per_octave, int) or steps_per_octave < 1:
        raise ValueError(f"steps_per_octave={steps_per_octave!r} must be a positive integer")
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"offset={offset!r} must be in [0, 1)")
    start = max(0, (min_bytes - 1).bit_length())
    sizes: list[int] = []
    step = 0
    while True:
        size = int(2 ** (start + (step + offset) / steps_per_octave))
        if size > max_bytes:
            break
        chunk = size // world_size
        align = 4096 if chunk >= 65536 else 256
        size = (chunk - chunk % align) * world_size
        if size > 0 and (not sizes or size != sizes[-1]):
            sizes.append(size)
        step += 1
    return sizes


def _median_of_max(local: list[float], device: torch.device) -> tuple[float, list[float]]:
    values = torch.tensor(local, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    ordered = sorted(values.cpu().tolist())
    return ordered[(len(ordered) - 1) // 2], values.cpu().tolist()


def _time_repeated(fn, device: torch.device, iterations: int, warmup: int, align: bool = True) -> list[float]:
    timer = PhaseTimer(device)
    out = []
    for it in range(warmup + iterations):
        if align:
            align_ranks(device)
        timer.start_iteration()
        timer.begin("other")
        fn()
        timer.end("other")
        start, end = timer.finish_iteration()[("other", "forward")]
        if it >= warmup:
            out.append(end - start)
    return out


def measure(device: torch.device, *, min_bytes: int = 4096, max_bytes: int = 2 ** 30, iterations: int = 10,
            warmup: int = 3, ffn_d_model: int = 4096, ffn_tokens: int = 8192, steps_per_octave: int = 1,
            progress=None) -> dict:
    """Run the sweep, p2p, FFN and copy benchmarks (collective); every rank returns the results."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    results: dict = {"world_size": world, "a2a": [], "p2p": [], "ffn": None, "hbm": None}
    if world > 1:
        # fitted: sizes between the powers of two; reported beside them: the powers of two and
        # half-octaves. Split sizes are passed explicitly: the executor's code path.
        for key, offset in (("a2a", 0.5), ("a2a_pow2", 0.0)):
            results.setdefault(key, [])
            for size in sweep_sizes(min_bytes, max_bytes, world, steps_per_octave, offset):
                if progress is not None:
                    progress.step(f"all-to-all {size} bytes ({key})")
                send = torch.randint(0, 255, (size,), dtype=torch.uint8, device=device)
                recv = torch.empty_like(send)
                splits = [size // world] * world
                times = _time_repeated(lambda: dist.all_to_all_single(recv, send, splits, splits), device,
                                       iterations, warmup)
                median, per_iter = _median_of_max(times, device)
                results[key].append({"bytes_per_rank": size, "time_s": median, "per_iteration_s": per_iter})
            del send, recv
        for size in sorted({min(size, max_bytes) for size in (2 ** 20, 2 ** 24, 2 ** 28)}):
            if progress is not None:
                progress.step(f"p2p {size} bytes")
            buffer = torch.randint(0, 255, (size,), dtype=torch.uint8, device=device)

            def p2p():
                if rank == 0:
                    dist.send(buffer, 1)
                elif rank == 1:
                    dist.recv(buffer, 0)

            times = _time_repeated(p2p, device, iterations, warmup)
            median, _ = _median_of_max(times, device)
            results["p2p"].append({"bytes": size, "time_s": median, "Bps": size / median})
            del buffer
    if progress is not None:
        progress.step("expert FFN rate")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(rank)
    d, f = ffn_d_model, 4 * ffn_d_model
    x = torch.randn(ffn_tokens, d, generator=generator, device=device).to(dtype)
    w1 = (torch.randn(d, f, generator=generator, device=device) / math.sqrt(d)).to(dtype)
    w2 = (torch.randn(f, d, generator=generator, device=device) / math.sqrt(f)).to(dtype)
    times = _time_repeated(lambda: torch.nn.functional.gelu(x @ w1) @ w2, device, iterations, warmup, align=False)
    median, _ = _median_of_max(times, device)
    flops = 2.0 * 2 * ffn_tokens * d * f
    results["ffn"] = {"tokens": ffn_tokens, "d_model": d, "d_ffn": f, "dtype": str(dtype).replace("torch.", ""),
                      "time_s": median, "flops": flops, "flops_per_s": flops / median}
    del x, w1, w2
    copy_bytes = min(2 ** 30, max_bytes) if device.type == "cuda" else 2 ** 26
    src = torch.randint(0, 255, (copy_bytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = _time_repeated(lambda: dst.copy_(src), device, iterations, warmup, align=False)
    median, _ = _median_of_max(times, device)
    results["hbm"] = {"bytes": copy_bytes, "time_s": median, "Bps": 2.0 * copy_bytes / median}
    return results


def gpu_key(device_name: str | None) -> str | None:
    """'NVIDIA H200' -> 'h200', 'NVIDIA H100 80GB HBM3' -> 'h100'; None if not a known GPU."""
    if not device_name:
        return None
    lowered = device_name.lower()
    for key in ("h200", "h100", "a100", "v100"):
        if key in lowered:
            return key
    return None


def topology_spec(name: str, world_size: int, fit: AlphaBetaFit | None, results: dict, gpu_name: str | None,
                  provenance: dict, curve: list[list[float]] | None = None,
                  link_headroom: float | None = None, link_max_Bps: float | None = None) -> dict:
    """A single-node nvswitch spec with the fitted calibration block (see lshsim/topology/spec.py).

    With a bus bandwidth `curve`, calibration.a2a_busbw_curve is the curve and alpha_s is 0 (the
    curve's bandwidths hold the fixed costs; module docstring); `link_headroom` (only with a curve)
    is written as calibration.a2a_link_headroom, `link_max_Bps` (only with a headroom) as
    calibration.a2a_link_max_Bps."""
    if link_headroom is not None and curve is None:
        raise ValueError(f"link_headroom={link_headroom} needs a curve")
    if link_max_Bps is not None and link_headroom is None:
        raise ValueError(f"link_max_Bps={link_max_Bps} needs a link_headroom")
    key = gpu_key(gpu_name)
    ffn_rate = results["ffn"]["flops_per_s"] if results.get("ffn") else None
    hbm = results["hbm"]["Bps"] if results.get("hbm") else None
    if key is not None:
        gpu: object = key
    else:  # a CPU (gloo) run: an inline device with the measured rates as its "datasheet"
        gpu = {"name": gpu_name or "cpu", "peak_flops": ffn_rate or 1e9, "hbm_Bps": hbm or 1e9,
               "memory_bytes": 1e9, "gemm_efficiency": 1.0, "hbm_efficiency": 1.0}
    calibration: dict = {}
    intra: dict = {"kind": "nvswitch", "latency_s": 0.0}
    if fit is not None:
        calibration["alpha_s"] = fit.alpha_s
        if key is not None:
            intra.update(links=18, per_link_Bps=25.0e9)
            calibration["nvlink_Bps"] = fit.bandwidth_Bps
        else:
            intra["link_Bps"] = fit.bandwidth_Bps
    elif key is None:
        intra["link_Bps"] = 1e9
    if curve is not None:
        calibration["alpha_s"] = 0.0
        calibration["a2a_busbw_curve"] = [[float(m), float(b)] for m, b in curve]
        if link_headroom is not None:
            calibration["a2a_link_headroom"] = float(link_headroom)
        if link_max_Bps is not None:
            calibration["a2a_link_max_Bps"] = float(link_max_Bps)
    if ffn_rate:
        calibration["expert_flops"] = ffn_rate
    if hbm:
        calibration["hbm_Bps"] = hbm
    calibration["provenance"] = provenance
    spec = {"name": name, "description": f"calibrated by executor calibrate on {world_size} x {gpu_name or 'CPU'}",
            "gpu": gpu, "nodes": 1, "gpus_per_node": world_size, "intra": intra, "calibration": calibration}
    if fit is not None:
        spec["alpha_s"] = 0.0 if curve is not None else fit.alpha_s
    return spec


def _points(results: dict) -> list[A2APoint]:
    return [A2APoint(p["bytes_per_rank"], p["time_s"], results["world_size"]) for p in results["a2a"]]


def trace_points(paths: list[str]) -> list[A2APoint]:
    """In-situ calibration points: every all-to-all of measured executor traces.

    For each trace and each of its four all-to-alls (dispatch and combine, forward and backward)
    S = max over ranks of max(bytes sent to others, bytes received from others), the quantity the
    simulator's direct all-to-all is bound by, and t = the measured median time. Returned as
    A2APoints with bytes_per_rank = S W / (W - 1), so that `offdiag_bytes` is S.
    """
    points = []
    for path in paths:
        workload, phases = _trace_a2a_phases(path)
        world = int(workload["world_size"])
        if world < 2:
            raise ValueError(f"{path}: a trace of {world} rank has no all-to-all to calibrate on")
        for matrix, seconds in phases:
            off = matrix - np.diag(np.diag(matrix))
            bound = max(off.sum(axis=1).max(), off.sum(axis=0).max())  # S
            points.append(A2APoint(int(round(bound * world / (world - 1))), seconds, world))
    if not points:
        raise ValueError("the traces hold no all-to-all phase")
    return points


def calibrate_command(args) -> int:
    """The CLI behind `python -m lshsim.executor calibrate` (see executor/__main__.py for the flags)."""
    import sys

    from lshsim.topology import write_topology_yaml

    skewed_traces: list[str] = []
    if args.nccl_tests or args.from_raw or args.from_traces:
        if args.nccl_tests:
            run = parse_nccl_tests(Path(args.nccl_tests).read_text(), args.world_size)
            results = {"world_size": run.world_size, "a2a": [{"bytes_per_rank": p.bytes_per_rank, "time_s": p.time_s}
                                                             for p in run.points], "p2p": [], "ffn": None, "hbm": None}
            source = {"tool": "nccl-tests alltoall_perf", "file": str(args.nccl_tests)}
            gpu_name = args.gpu
        elif args.from_raw:
            raw = json.loads(Path(args.from_raw).read_text())
            results, gpu_name = raw["results"], raw["provenance"].get("gpu")
            source = {**raw["provenance"], "refit_from": str(args.from_raw)}
        else:
            results = {"world_size": None, "a2a": [], "p2p": [], "ffn": None, "hbm": None}
            source, gpu_name = {}, args.gpu
        if args.from_traces:
            # in situ: fit the all-to-all on the executor's own (calibration) workloads; with a
            # curve, on the uniform ones (the skewed ones fit the link headroom, below)
            from lshsim.sim.trace import Trace

            if getattr(args, "no_curve", False):
                uniform_traces, skewed_traces = list(args.from_traces), []
            else:
                skews = {path: trace_skew(Trace.from_json(path)) for path in args.from_traces}
                uniform_traces = [path for path in args.from_traces if skews[path] == 0]
                skewed_traces = [path for path in args.from_traces if skews[path] != 0]
                if not uniform_traces:
                    raise ValueError("--from-traces: every trace is of a skewed workload (meta.workload.skew > 0); "
                                     "the bus bandwidth curve needs uniform ones (skew 0)")
            points = trace_points(uniform_traces)
            worlds = {p.world_size for p in points}
            if len(worlds) != 1 or (results["world_size"] not in (None, *worlds)):
                raise ValueError(f"--from-traces: traces of {sorted(worlds)} ranks, raw calibration of "
                                 f"{results['world_size']}: calibrate one world size at a time")
            first = Trace.from_json(uniform_traces[0])
            gpu_name = gpu_name or first.meta["provenance"].get("gpu")
            results = {**results, "world_size": worlds.pop(),
                       "a2a": [{"bytes_per_rank": p.bytes_per_rank, "time_s": p.time_s} for p in points]}
            source = {**source, "a2a_fit": "in situ, from executor traces",
                      "traces": [Path(t).name for t in uniform_traces],
                      **({"skewed_traces": [Path(t).name for t in skewed_traces]} if skewed_traces else {}),
                      "trace_provenance": {k: first.meta["provenance"].get(k) for k in ("gpu", "count", "torch", "nccl",
                                                                                        "date")}}
        rank = 0
    else:
        from lshsim.executor.runtime import Progress, init_runtime, provenance, shutdown

        runtime = init_runtime(args.device, args.collective_timeout_s)
        rank = runtime.rank
        try:
            results = measure(runtime.device, min_bytes=args.min_bytes, max_bytes=args.max_bytes,
                              iterations=args.iterations, warmup=args.warmup, ffn_d_model=args.ffn_d_model,
                              ffn_tokens=args.ffn_tokens, steps_per_octave=args.steps_per_octave,
                              progress=Progress(args.status_dir, runtime.rank))
        finally:
            shutdown()
        source = {"tool": "executor calibrate", **provenance(runtime, ["python", "-m", "lshsim.executor", *sys.argv[1:]])}
        gpu_name = source.get("gpu")
    if rank != 0:
        return 0
    world = results["world_size"]
    if args.raw:  # the measurements first: a failed fit must not lose them
        Path(args.raw).write_text(json.dumps({"results": results, "provenance": source}, indent=1) + "\n")
    fit = fit_alpha_beta(_points(results), args.fit_min_bytes) if world > 1 and results["a2a"] else None
    fit_info = None if fit is None else {**asdict(fit), "fit_min_bytes": args.fit_min_bytes}
    curve = None
    if args.from_traces and not getattr(args, "no_curve", False):
        curve = fit_busbw_curve(_points(results))
        residual = np.abs(curve_residuals(curve, _points(results)))
        fit_info = {**(fit_info or {}), "curve": {"points": len(curve), "model": "t = S / B(M), B log-linear in M",
                                                   "max_rel_residual": float(residual.max()),
                                                   "median_rel_residual": float(np.median(residual))}}
    name = args.name or f"{gpu_key(gpu_name) or 'cpu'}-x{world}-calibrated"
    headroom = link_max_Bps = None
    if curve is not None and skewed_traces:
        # the duplex engine's link headroom h and the links' cap on the skewed traces, on the curve
        # topology (`fit_link_headroom_and_cap`): the cap lies between the curve's largest bus
        # bandwidth (what a uniform all-to-all reached per direction) and the fastest p2p send
        p2p_Bps = [p["Bps"] for p in results.get("p2p") or [] if p.get("Bps")]
        headroom, link_max_Bps = fit_link_headroom_and_cap(
            topology_spec(name, world, fit, results, gpu_name, {}, curve), skewed_traces,
            max(p2p_Bps) if p2p_Bps else None)
        fit_info = {**fit_info, "link_headroom": {
            **asdict(headroom), "traces": len(skewed_traces), "link_max_Bps": link_max_Bps,
            "p2p_max_Bps": max(p2p_Bps) if p2p_Bps else None,
            "model": "engines 2 B(M_dup) per GPU, NVLink min(h B(M), link max); (h, link max) minimise the "
                     "median |error|, h in [1, 3], link max from the curve's largest bus bandwidth to the "
                     "fastest p2p send"}}
    prov = {**source, "fit": fit_info}
    if args.raw:
        Path(args.raw).write_text(json.dumps({"results": results, "provenance": source, "fit": fit_info},
                                             indent=1) + "\n")
    if args.out:
        write_topology_yaml(topology_spec(name, world, fit, results, gpu_name, prov, curve,
                                          None if headroom is None else headroom.headroom,
                                          None if headroom is None else link_max_Bps), args.out)
    lines = [f"calibration on {world} x {gpu_name or 'CPU'}"]
    for point in _points(results):
        model = f"  model {fit.predict_s(point.offdiag_bytes) * 1e6:10.1f} us" if fit else ""
        lines.append(f"  all-to-all {point.bytes_per_rank:>12d} B/rank  {point.time_s * 1e6:10.1f} us  "
                     f"busbw {point.busbw_Bps / 1e9:7.2f} GB/s{model}")
    for p in results["p2p"]:
        lines.append(f"  p2p {p['bytes']:>12d} B  {p['Bps'] / 1e9:7.2f} GB/s")
    if results.get("ffn"):
        lines.append(f"  expert FFN {results['ffn']['flops_per_s'] / 1e12:.1f} TFLOP/s "
                     f"({results['ffn']['dtype']}, d={results['ffn']['d_model']})")
    if results.get("hbm"):
        lines.append(f"  copy {results['hbm']['Bps'] / 1e9:.1f} GB/s (read + write)")
    if fit:
        lines.append(f"  fit: alpha {fit.alpha_s * 1e6:.2f} us, B {fit.bandwidth_Bps / 1e9:.1f} GB/s, "
                     f"max |residual| {fit.max_rel_residual:.3f}, median {fit.median_rel_residual:.3f} "
                     f"({fit.points_used} sizes >= {args.fit_min_bytes} B)")
    if curve is not None:
        info = fit_info["curve"]
        lines.append(f"  bus bandwidth curve ({info['points']} sizes, alpha 0): "
                     + ", ".join(f"{m / 1e6:.1f} MB {b / 1e9:.0f} GB/s" for m, b in curve))
        lines.append(f"  curve: max |residual| {info['max_rel_residual']:.3f}, median {info['median_rel_residual']:.3f}")
    if headroom is not None:
        lines.append(f"  link headroom {headroom.headroom:.3f} on {headroom.phases} all-to-alls of "
                     f"{len(skewed_traces)} skewed traces: |error| median {headroom.median_rel_error:.3f}, max {headroom.max_rel_error:.3f} "
                     f"(curve alone: median {headroom.curve_only_median_rel_error:.3f}, "
                     f"max {headroom.curve_only_max_rel_error:.3f})"
                     + (f"; links capped at {link_max_Bps / 1e9:.0f} GB/s (fitted between the curve's top "
                        f"{max(b for _, b in curve) / 1e9:.0f} and the fastest p2p send "
                        f"{fit_info['link_headroom']['p2p_max_Bps'] / 1e9:.0f})" if link_max_Bps else ""))
    if args.out:
        lines.append(f"  topology written to {args.out}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
