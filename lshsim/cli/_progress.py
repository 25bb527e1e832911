"""Progress lines on stderr, shared by the commands that can run for a while (`plan`, `simulate`,
the executor's `run` and `calibrate`).

One line per event, `[  12.5 s] COMMAND: WHAT`, on standard error, so that standard output (a
`--json` document, the tables) stays exactly what it was. `line()` always prints; `tick()` prints
at most once per `interval_s` (periodic lines of a loop); `wrote(path)` names a file the command
wrote. Standard library only: the executor's ranks import it too.

>>> import io
>>> clock = iter([0.0, 1.0, 1.5, 4.0, 4.0]).__next__
>>> out = io.StringIO()
>>> p = ProgressLines("demo", stream=out, clock=clock, interval_s=2.0)
>>> p.line("start")
>>> p.tick("step 1"), p.tick("step 2")       # 1.5 s after the last line: skipped; 4.0 s: printed
(False, True)
>>> print(out.getvalue(), end="")
[    1.0 s] demo: start
[    4.0 s] demo: step 2
>>> format_duration(75.0), format_duration(4000.0), format_duration(3.25)
('1 min 15 s', '1 h 06 min', '3.2 s')
"""
from __future__ import annotations

import sys
import time

__all__ = ["ProgressLines", "OptionProgress", "format_duration", "estimate_left_s"]


def format_duration(seconds: float) -> str:
    """A duration a person reads at a glance: `3.2 s`, `1 min 15 s`, `1 h 07 min`."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def estimate_left_s(done: list[tuple[float, float]], left: list[float]) -> float | None:
    """Seconds left for steps of sizes `left`, from the (size, seconds) of the steps `done`: a
    straight line t = a + b * size (a, b >= 0) through the steps done (the mean step time with
    fewer than two sizes). None before any step is done.

    >>> estimate_left_s([(1.0, 2.0), (2.0, 3.0)], [3.0, 4.0])    # t = 1 + size
    9.0
    >>> estimate_left_s([(1.0, 2.0)], [8.0, 9.0])                # one step: 2 s each
    4.0
    """
    if not done:
        return None
    sizes = [float(s) for s, _ in done]
    times = [float(t) for _, t in done]
    mean_s, mean_t = sum(sizes) / len(sizes), sum(times) / len(times)
    var = sum((s - mean_s) ** 2 for s in sizes)
    if var <= 0:
        return mean_t * len(left)
    b = sum((s - mean_s) * (t - mean_t) for s, t in zip(sizes, times)) / var
    a = mean_t - b * mean_s
    if b < 0:                                   # noisy small sizes: a constant step time
        a, b = mean_t, 0.0
    elif a < 0:                                 # pure bandwidth: through the origin
        a, b = 0.0, sum(s * t for s, t in zip(sizes, times)) / sum(s * s for s in sizes)
    return sum(a + b * float(size) for size in left)


class ProgressLines:
    """`[elapsed] prefix: text` lines on stderr (`stream`, default: sys.stderr when printing).

    quiet: print nothing. interval_s: the least time between two lines printed by `tick()`.
    started: the clock's time the elapsed time counts from (default: now).
    """

    def __init__(self, prefix: str, *, quiet: bool = False, interval_s: float = 2.0, started: float | None = None,
                 stream=None, clock=time.perf_counter) -> None:
        self.prefix, self.quiet, self.interval_s = prefix, quiet, interval_s
        self.stream, self.clock = stream, clock
        self.started = clock() if started is None else started
        self.last_line = None

    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def line(self, text: str, *, left_s: float | None = None, now: float | None = None) -> None:
        """Print `text` now (with `about X left` when `left_s` is given; `now`: the clock's time, when
        the caller has read it already)."""
        now = self.clock() if now is None else now
        self.last_line = now
        if self.quiet:
            return
        if left_s is not None:
            text += f", about {format_duration(left_s)} left"
        print(f"[{now - self.started:7.1f} s] {self.prefix}: {text}", file=self.stream or sys.stderr, flush=True)

    def tick(self, text: str, *, left_s: float | None = None) -> bool:
        """Print `text` if `interval_s` has passed since the last line; True when printed."""
        if self.last_line is not None and self.clock() - self.last_line < self.interval_s:
            return False
        self.line(text, left_s=left_s)
        return True

    def wrote(self, path) -> None:
        """Name a file the command wrote: `wrote PATH`."""
        self.line(f"wrote {path}")


class OptionProgress(ProgressLines):
    """`plan`'s progress callback (`lshsim.sim.moe_step.compare_options(progress=...)`): option i/n,
    its label and the phase being simulated, one line each. Each option's "done" line but the
    last adds the time left (from 1 s up): the options left that route (`expect_routings`, told by
    `compare_options`: an option whose routing an earlier one shares does not route again) times
    the mean routing time so far, plus the options left times the mean time of the options' other
    work (their all-to-all simulations and steps) so far. Later options reuse simulated all-to-alls
    where they can, so it errs long. Without `expect_routings`: the mean option time times the
    options left.

    >>> import io
    >>> out, clock = io.StringIO(), iter([1.0, 11.0, 12.0, 13.0, 14.0, 24.0, 25.0, 26.0]).__next__
    >>> p = OptionProgress(0.0, stream=out, clock=clock)
    >>> p.expect_routings([True, False, True, False])
    >>> for event in [(1, 4, "baseline", "routing"), (1, 4, "baseline", "all-to-all #1"), (1, 4, "baseline", "done"),
    ...               (2, 4, "lsh", "done"), (3, 4, "locmoe", "routing"), (3, 4, "locmoe", "done"),
    ...               (4, 4, "2d", "all-to-all #1"), (4, 4, "2d", "done")]:
    ...     p(*event)
    >>> print(out.getvalue(), end="")
    [    1.0 s] plan: option 1/4 baseline: routing
    [   11.0 s] plan: option 1/4 baseline: all-to-all #1
    [   12.0 s] plan: option 1/4 baseline: done, about 13.0 s left
    [   13.0 s] plan: option 2/4 lsh: done, about 12.0 s left
    [   14.0 s] plan: option 3/4 locmoe: routing
    [   24.0 s] plan: option 3/4 locmoe: done, about 1.0 s left
    [   25.0 s] plan: option 4/4 2d: all-to-all #1
    [   26.0 s] plan: option 4/4 2d: done
    """

    def __init__(self, started: float, prefix: str = "plan", **options) -> None:
        super().__init__(prefix, started=started, **options)
        self.needs_routing: list[bool] | None = None
        self.option_start: float | None = None     # when the current option's first line came
        self.routing_start: float | None = None
        self.this_routing = 0.0                    # the current option's routing seconds
        self.routing_s: list[float] = []           # each routing's seconds
        self.other_s: list[float] = []             # each option's seconds apart from its routing
        self.previous_done: float | None = None
        self.current = 0

    def expect_routings(self, needs: list[bool]) -> None:
        """Which options will route (one bool per option, in order)."""
        self.needs_routing = list(needs)

    def __call__(self, index: int, count: int, label: str, phase: str) -> None:
        now = self.clock()
        if index != self.current:                  # an option's first line: its work began at the last "done"
            self.current = index
            self.option_start = now if self.previous_done is None else self.previous_done
            self.routing_start, self.this_routing = None, 0.0
        if self.routing_start is not None:         # the line after "routing" ends the routing
            self.this_routing = now - self.routing_start
            self.routing_s.append(self.this_routing)
            self.routing_start = None
        if phase == "routing":
            self.routing_start = now
        left_s = None
        if phase == "done":
            self.other_s.append(max(0.0, now - self.option_start - self.this_routing))
            self.previous_done = now
            if 0 < index < count:
                left_s = self._left_s(index, count, now)
                left_s = left_s if left_s >= 1.0 else None     # not "about 0.0 s left"
        self.line(f"option {index}/{count} {label}: {phase}", left_s=left_s, now=now)

    def _left_s(self, index: int, count: int, now: float) -> float:
        if self.needs_routing is None or len(self.needs_routing) != count:
            return (now - self.started) / index * (count - index)
        routings_left = sum(self.needs_routing[index:])
        mean_routing = sum(self.routing_s) / len(self.routing_s) if self.routing_s else 0.0
        mean_other = sum(self.other_s) / len(self.other_s)
        return routings_left * mean_routing + (count - index) * mean_other
