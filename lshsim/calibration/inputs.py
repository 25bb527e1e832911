"""What a calibration source hands the fits: `CalibrationInput` and its samples.

A source (`lshsim.calibration.sources`) turns its files into one `CalibrationInput`; the fits
(`lshsim.calibration.fits`) read only this.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

__all__ = ["A2APoint", "A2ACase", "P2PPoint", "CalibrationInput", "merge_inputs"]


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_seconds(name: str, value: object) -> None:
    """A measured time: a finite number > 0 (NaN, inf, 0 and negative times are refused, not dropped)
    and at most an hour (`lshsim.calibration.sources.MAX_MEASURED_S`, for every source, a plugin's too)."""
    from lshsim.calibration.sources import MAX_MEASURED_S   # lazily: sources imports this module

    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0 \
            or value > MAX_MEASURED_S:
        raise ValueError(f"{name}={value!r} must be a finite number of seconds > 0 and <= {MAX_MEASURED_S:g}")


@dataclass(frozen=True)
class A2APoint:
    """One all-to-all of equal splits: bytes_per_rank M (all W chunks, the rank's own included),
    time_s (measured), world_size W. Trace points use M = S W / (W - 1), S the busiest rank's
    egress or ingress, so that `offdiag_bytes` is S."""

    bytes_per_rank: int
    time_s: float
    world_size: int

    def __post_init__(self) -> None:
        _check_int("A2APoint.bytes_per_rank", self.bytes_per_rank, 0)
        _check_seconds("A2APoint.time_s", self.time_s)
        _check_int("A2APoint.world_size", self.world_size, 1)

    @property
    def offdiag_bytes(self) -> float:
        """S = M (W - 1) / W: what one rank sends to the others."""
        return self.bytes_per_rank * (self.world_size - 1) / self.world_size

    @property
    def busbw_Bps(self) -> float:
        return self.offdiag_bytes / self.time_s


@dataclass(frozen=True, eq=False)
class A2ACase:
    """One measured all-to-all of any traffic: traffic (W, W) bytes, measured seconds, the
    simulator's algorithm name for it, and the file it came from."""

    traffic: np.ndarray
    time_s: float
    algorithm: str = "direct"
    source: str = ""


@dataclass(frozen=True)
class P2PPoint:
    """One point-to-point send of `bytes` in `time_s`."""

    bytes: int
    time_s: float

    def __post_init__(self) -> None:
        _check_int("P2PPoint.bytes", self.bytes, 1)
        _check_seconds("P2PPoint.time_s", self.time_s)

    @property
    def Bps(self) -> float:
        return self.bytes / self.time_s


@dataclass(frozen=True)
class CalibrationInput:
    """One calibration source's measurements, in the form the fits take.

    source:       the source's registry name (`lshsim.calibration.sources.SOURCES`)
    world_size:   ranks of the all-to-alls (None: the source measured none)
    gpu:          the device name as measured ("NVIDIA H200"), None if unknown
    points:       all-to-alls of equal splits (or keyed as such): the alpha-beta and curve fits
    cases:        skewed all-to-alls with their traffic matrices: the headroom and cap fit
    p2p:          point-to-point sends: the fastest bounds the links' cap
    expert_flops: achieved expert GEMM rate (FLOP/s), None if not measured
    hbm_Bps:      achieved HBM bandwidth (bytes read + written per s), None if not measured
    provenance:   who/when/how, copied into the topology's calibration.provenance
    record:       the source's measurements as JSON-ready data, in the executor's raw layout
                  ({"world_size", "a2a": [{"bytes_per_rank", "time_s"}], "p2p", "ffn", "hbm"});
                  kept for `executor calibrate --raw`, not read by the fits
    """

    source: str
    world_size: int | None = None
    gpu: str | None = None
    points: tuple = ()
    cases: tuple = ()
    p2p: tuple = ()
    expert_flops: float | None = None
    hbm_Bps: float | None = None
    provenance: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in (("points", A2APoint), ("cases", A2ACase), ("p2p", P2PPoint)):
            items = tuple(getattr(self, name))
            for item in items:
                if not isinstance(item, kind):
                    raise ValueError(f"CalibrationInput.{name} must hold {kind.__name__}s, got {type(item).__name__}")
            object.__setattr__(self, name, items)
        if self.world_size is not None and (isinstance(self.world_size, bool) or not isinstance(self.world_size, int)
                                            or self.world_size < 1):
            raise ValueError(f"CalibrationInput.world_size={self.world_size!r} must be a positive integer or None")

    @property
    def p2p_max_Bps(self) -> float | None:
        """The fastest point-to-point send, None without any."""
        rates = [p.Bps for p in self.p2p if p.time_s > 0 and p.bytes > 0]
        return max(rates) if rates else None


def merge_inputs(base: CalibrationInput | None, a2a: CalibrationInput) -> CalibrationInput:
    """In situ: the all-to-alls (points and cases) of `a2a`, everything else (p2p, rates, GPU name
    when known) of `base`. The two must be of one world size; provenance: base's, then a2a's."""
    worlds = {p.world_size for p in a2a.points}
    base_world = None if base is None else base.world_size
    if len(worlds) != 1 or (base_world not in (None, *worlds)):
        raise ValueError(f"traces of {sorted(worlds)} ranks, raw calibration of {base_world}: "
                         f"calibrate one world size at a time")
    world = worlds.pop()
    if base is None:
        base = CalibrationInput(source=a2a.source, record={"world_size": None, "a2a": [], "p2p": [], "ffn": None,
                                                             "hbm": None})
    record = {**base.record, "world_size": world,
              "a2a": [{"bytes_per_rank": p.bytes_per_rank, "time_s": p.time_s} for p in a2a.points]}
    return CalibrationInput(source=a2a.source if base.source == a2a.source else f"{base.source}+{a2a.source}",
                            world_size=world, gpu=base.gpu or a2a.gpu, points=a2a.points, cases=a2a.cases,
                            p2p=base.p2p, expert_flops=base.expert_flops, hbm_Bps=base.hbm_Bps,
                            provenance=_merged_provenance(base.provenance, a2a.provenance), record=record)


def _merged_provenance(base: dict, a2a: dict) -> dict:
    """base's provenance, then a2a's; the notes of both sources ("overrides": what an option set
    that the files did not say) kept."""
    notes = [*base.get("overrides", []), *(n for n in a2a.get("overrides", []) if n not in base.get("overrides", []))]
    return {**base, **a2a, **({"overrides": notes} if notes else {})}
