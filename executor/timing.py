"""Phase timing: CUDA events on GPU, `time.perf_counter` on CPU; max over ranks, median over iterations.

A `PhaseTimer` collects (phase, direction) intervals during one iteration; the phases and the
directions it accepts are those the phase table (`lshsim.sim.phases.PHASES`) marks `timed`. `begin`/`end` may be
called from autograd's backward (the executor's all-to-all and marker functions do so), so the
timer is the only place that knows how a timestamp is taken:

* CUDA: an event recorded on the current stream (`torch.cuda.Event(enable_timing=True)`);
  durations come from `elapsed_time` after one synchronisation at the end of the iteration, so
  timing adds no host-device synchronisation inside the iteration.
* CPU: `time.perf_counter()`; gloo collectives and CPU kernels are synchronous, so the host clock
  brackets the work.

Aggregation (`aggregate`): every rank's (iterations, phases) durations are all-gathered; a phase's
time in one iteration is its slowest rank's (a collective or a straggler costs every rank that
much); the reported time is the median over the measured iterations (warm-up excluded; with an
even count, the lower median, so that it is the time of an actual iteration).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lshsim.sim.phases import PHASES

__all__ = ["PhaseTimer", "IterationTimes", "PhaseSummary", "aggregate", "lower_median_index"]


class PhaseTimer:
    """Timestamps of named intervals within one iteration, relative to `start_iteration`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._origin = None
        self._open: dict[tuple[str, str], object] = {}
        self._closed: list[tuple[str, str, object, object]] = []
        #: CUDA events made once and recorded again every iteration (an event's creation is host
        #: time inside the phase it ends); `finish_iteration` reads them all before the next starts
        self._events: list = []
        self._used = 0

    def _stamp(self):
        if self.cuda:
            if self._used == len(self._events):
                self._events.append(torch.cuda.Event(enable_timing=True))
            event = self._events[self._used]
            self._used += 1
            event.record()
            return event
        return time.perf_counter()

    def start_iteration(self) -> None:
        self._open.clear()
        self._closed.clear()
        self._used = 0
        self._origin = self._stamp()

    @staticmethod
    def _check(name: str, direction: str) -> None:
        """Only phases that the phase table marks timed in `direction` are timed."""
        spec = PHASES.get(name)
        if spec is None or direction not in spec.timed:
            timed = [f"{n} ({', '.join(PHASES[n].timed)})" for n in PHASES if PHASES[n].timed]
            raise ValueError(f"phase {name!r} is not timed in the {direction} pass; the phase table times "
                             f"{', '.join(timed)}")

    def begin(self, name: str, direction: str = "forward") -> None:
        self._check(name, direction)
        key = (name, direction)
        if key in self._open:
            raise ValueError(f"phase {name!r} ({direction}) begun twice without end")
        self._open[key] = self._stamp()

    def end(self, name: str, direction: str = "forward") -> None:
        key = (name, direction)
        if key not in self._open:
            raise ValueError(f"phase {name!r} ({direction}) ended but never begun")
        self._closed.append((name, direction, self._open.pop(key), self._stamp()))

    def _offset_s(self, stamp) -> float:
        if self.cuda:
            return self._origin.elapsed_time(stamp) / 1e3
        return stamp - self._origin

    def finish_iteration(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(name, direction) -> (start_s, end_s) from the iteration's start; sums repeated phases.

        A phase recorded several times in one iteration keeps its first start and the sum of its
        durations (end_s = start_s + total duration).
        """
        if self._open:
            raise ValueError(f"phases still open at the end of the iteration: {sorted(self._open)}")
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[tuple[str, str], tuple[float, float]] = {}
        for name, direction, start, end in self._closed:
            start_s, end_s = self._offset_s(start), self._offset_s(end)
            if (name, direction) in out:
                first_start, first_end = out[(name, direction)]
                out[(name, direction)] = (first_start, first_end + (end_s - start_s))
            else:
                out[(name, direction)] = (start_s, end_s)
        self._closed.clear()
        return out


@dataclass(frozen=True)
class IterationTimes:
    """Timings of one rank: keys[p] = (name, direction); start_s/duration_s are (iterations, P)."""

    keys: list[tuple[str, str]]
    start_s: torch.Tensor  # (I, P) float64
    duration_s: torch.Tensor  # (I, P) float64

    @staticmethod
    def from_iterations(keys: list[tuple[str, str]],
                        iterations: list[dict[tuple[str, str], tuple[float, float]]]) -> "IterationTimes":
        start = torch.zeros(len(iterations), len(keys), dtype=torch.float64)
        duration = torch.zeros(len(iterations), len(keys), dtype=torch.float64)
        for i, times in enumerate(iterations):
            missing = [key for key in keys if key not in times]
            extra = [key for key in times if key not in keys]
            if missing or extra:
                raise ValueError(f"iteration {i}: phases missing {missing}, unexpected {extra}")
            for p, key in enumerate(keys):
                start[i, p], end = times[key]
                duration[i, p] = end - times[key][0]
        return IterationTimes(keys=list(keys), start_s=start, duration_s=duration)


@dataclass(frozen=True)
class PhaseSummary:
    """All ranks' timings: per_rank_* are (W, I, P); median_max_s[p] is the reported time of phase p."""

    keys: list[tuple[str, str]]
    per_rank_start_s: torch.Tensor  # (W, I, P)
    per_rank_duration_s: torch.Tensor  # (W, I, P)
    max_over_ranks_s: torch.Tensor  # (I, P)
    median_index: torch.Tensor  # (P,) int64, iteration whose max is the median
    median_max_s: torch.Tensor  # (P,)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """{direction: {phase: seconds}}."""
        out: dict[str, dict[str, float]] = {}
        for p, (name, direction) in enumerate(self.keys):
            out.setdefault(direction, {})[name] = float(self.median_max_s[p])
        return out


def lower_median_index(values: torch.Tensor) -> torch.Tensor:
    """Index along dim 0 of the lower median of each column: (I, P) -> (P,).

    >>> lower_median_index(torch.tensor([[3.0], [1.0], [2.0], [5.0]])).tolist()
    [2]
    """
    order = torch.argsort(values, dim=0, stable=True)  # (I, P)
    return order[(values.shape[0] - 1) // 2]


def aggregate(times: IterationTimes, device: torch.device) -> PhaseSummary:
    """All-gather every rank's timings (collective: every rank must call it) and summarise."""
    local = torch.stack([times.start_s, times.duration_s]).to(device)  # (2, I, P)
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        stacked = torch.stack(gathered).cpu()  # (W, 2, I, P)
    else:
        stacked = local.cpu().unsqueeze(0)  # (1, 2, I, P)
    start, duration = stacked[:, 0], stacked[:, 1]  # (W, I, P)
    max_over_ranks = duration.max(dim=0).values  # (I, P)
    median_index = lower_median_index(max_over_ranks)  # (P,)
    median = max_over_ranks.gather(0, median_index.unsqueeze(0)).squeeze(0)  # (P,)
    return PhaseSummary(keys=list(times.keys), per_rank_start_s=start, per_rank_duration_s=duration,
                        max_over_ranks_s=max_over_ranks, median_index=median_index, median_max_s=median)
