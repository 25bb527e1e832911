"""The incremental max-min solver of `lshsim.sim.network.FlowNetwork` (solver "incremental"),
compiled with numba.

Same model and same answer as the vectorised solver (network.py's docstring): exact max-min fair
sharing by progressive filling, one rate update per distinct drain time, classes that drain within a
relative 1e-9 of their bytes finish together. What changes is what one drain costs:

- [drain-time tree] every class's remaining bytes are kept lazily (bytes left at the time its rate
  last changed); its finish time sits in a tournament tree (a min-tree over class ids), so the next
  drain is the root and a drain touches only the classes it drains and the ones it refills. The
  vectorised solver subtracts rate x elapsed from every class at every event and scans all of them
  for the next drain.
- [refill only what a drain can change] every class keeps `bneck`, a resource that limits it (a
  bottleneck: saturated, and no class on it is faster); a resource -> classes index lists who
  crosses what. Let r be the smallest drained rate. Classes slower than r keep their rates (the
  argument of `FlowNetwork._compute_rates`). The refill set S grows by searching resources, starting
  from the saturated resources of the drained classes: searching resource e takes in its classes of
  rate >= r whose bneck is e (and notes the fastest class of rate >= r it leaves out), and every
  resource saturated before the drain that a class taken in crosses is searched too, at once (nearly
  every class taken in changes its rate, and then (i) below would search them after a filling that
  must run again: searching them first saves most of the repeated fillings); progressive
  filling then runs on S alone (one round of local bottlenecks, then one bottleneck at a time, the
  resources in a heap keyed by their fair share: `_incremental_kernels._fill`), on the capacity the other classes leave (kept per resource,
  recomputed from scratch after as many rate changes as there are classes, so rounding cannot pile
  up). Then S grows and the filling runs again where the result could be wrong:
  (i) a resource saturated before the drain, crossed by a class of S whose rate changed, is searched
      (a class limited there may now be limited elsewhere);
  (ii) the resource where a class of S froze is searched if that class's rate changed, or if its
      old bneck was searched (an unchanged class whose old bottleneck is intact keeps it);
  (iii) a searched resource where a class of S froze slower than a class left out is searched fully
      (all its classes of rate >= r).
  When nothing more is searched, every class has a bottleneck, which makes the rates the max-min
  fair ones (Bertsekas and Gallager, Data Networks, 6.5.2): a class outside S keeps its bneck (not
  searched, or it would be in S; so by (i) no rate on it changed and nothing drained through it:
  still saturated, the class still the fastest there); a class of S froze at a searched resource
  (ii), saturated by the filling, where it is the fastest of S, faster than the classes below r (the
  filling's levels are all >= r: the old rates of S are feasible for it) and, by (iii), than those
  left out. A refilled class whose rate came out the same to a relative 1e-13 keeps its old rate and
  its finish time. On a skewed 1,024-GPU fat-tree MoE all-to-all this refills 1.3 classes per rate
  change (1.6 before the eager search above; benchmarks/HISTORY.md).

A new transfer entering the network refills every class (a new class starts at rate 0: every rate
may change), as in the vectorised solver. numba is imported lazily, on the first incremental
network; `AVAILABLE` says whether it can be. Compiled functions are cached on disk (cache=True).
"""
from __future__ import annotations

import numpy as np

__all__ = ["AVAILABLE", "IncrementalSolver", "numba_available"]

_KERNELS = None
_IMPORT_ERROR: str | None = None


def numba_available() -> bool:
    """True when numba imports (the incremental solver can run)."""
    try:
        _kernels()
    except ImportError:
        return False
    return True


def _kernels():
    global _KERNELS, _IMPORT_ERROR
    if _KERNELS is None:
        if _IMPORT_ERROR is not None:
            raise ImportError(_IMPORT_ERROR)
        try:
            from lshsim.sim import _incremental_kernels as kernels
        except ImportError as error:
            _IMPORT_ERROR = (f"the incremental flow solver needs numba ({error}); install it with "
                             f"`pip install numba`, or use solver='vectorised'")
            raise ImportError(_IMPORT_ERROR) from None
        _KERNELS = kernels
    return _KERNELS


def __getattr__(name):
    if name == "AVAILABLE":
        return numba_available()
    raise AttributeError(name)


class IncrementalSolver:
    """The flow classes of one FlowNetwork and their max-min rates (module docstring).

    Args:
        capacity: (R,) float capacity of every resource (links, then GPU engines), the last entry the
            sentinel (padding id, +inf).
        drain_tolerance: FlowNetwork's drain_tolerance (0 = exact).

    Classes get ids 0, 1, 2, ... in the order they are added; an id is never reused.
    """

    def __init__(self, capacity: np.ndarray, drain_tolerance: float = 0.0):
        self.k = _kernels()
        self.capacity = np.ascontiguousarray(capacity, dtype=np.float64)            # (R,)
        self.sentinel = len(capacity) - 1
        self.drain_tolerance = float(drain_tolerance)
        self.n = 0                   # class ids handed out
        self.alloc = 0
        self.width = 1
        self.E = np.full((0, 1), self.sentinel, dtype=np.int32)                      # (N, H) resources
        self.mult = np.empty(0)      # (N,) flows in the class
        self.size = np.empty(0)      # (N,) bytes per flow
        self.rem = np.empty(0)       # (N,) bytes left per flow at time t_at
        self.t_at = np.empty(0)      # (N,) when rem was last brought up to date (the rate last changed)
        self.rate = np.empty(0)      # (N,) B/s per flow
        self.bneck = np.empty(0, dtype=np.int64)     # (N,) a resource limiting the class (its bottleneck)
        self.alive = np.empty(0, dtype=np.bool_)
        self.tree = np.full(2, np.inf)   # the finish times' tournament tree (_incremental_kernels)
        self.out = np.empty(1024, dtype=np.int64)
        self.mark = np.empty(0, dtype=np.int64)      # (N,) the drain that last refilled the class
        self.used = np.zeros(len(capacity))          # (R,) capacity the alive classes use
        self.inc_start = np.zeros(len(capacity) + 1, dtype=np.int64)   # resource -> classes (CSR)
        self.inc_members = np.empty(0, dtype=np.int64)
        # ints: [unused, alive classes, rate changes since `used` was recomputed, drains]
        self.counters = np.zeros(4, dtype=np.int64)
        # floats: [longest size/rate since the last full refill (the drain window's bound)]
        self.scalars = np.zeros(1)
        # [rate updates, refilled classes, resources saturated by the fillings, drain events, full refills, incidence entries
        #  scanned, classes whose rate changed, fillings (an update may fill again after a search)]
        self.stats = np.zeros(8, dtype=np.int64)

    @property
    def active(self) -> int:
        return int(self.counters[1])

    def _grow(self, extra: int, width: int) -> None:
        need = self.n + extra
        if width > self.width:
            E = np.full((self.alloc, width), self.sentinel, dtype=np.int32)
            E[:, :self.width] = self.E
            self.E, self.width = E, width
        if need <= self.alloc:
            return
        alloc = max(need, 2 * self.alloc, 1024)

        def grown(a, fill=0):
            out = np.full((alloc,) + a.shape[1:], fill, dtype=a.dtype)
            out[:len(a)] = a
            return out

        self.E = grown(self.E, self.sentinel)
        self.mult, self.size, self.rem = grown(self.mult), grown(self.size), grown(self.rem)
        self.t_at, self.rate = grown(self.t_at), grown(self.rate)
        self.alive = grown(self.alive, False)
        self.mark = grown(self.mark, -1)
        self.bneck = grown(self.bneck, self.sentinel)
        leaves = 1 << max(int(alloc - 1).bit_length(), 0)
        self.tree = np.full(2 * leaves, np.inf)      # rebuilt by the refill that follows every add
        self.out = np.empty(1024, dtype=np.int64)    # the drained ids (grown by the kernel when needed)
        self.alloc = alloc

    def add(self, now: float, edges: np.ndarray, size: np.ndarray, mult: np.ndarray,
            rem: np.ndarray | None = None) -> np.ndarray:
        """Add classes (edges (c, h) resource ids padded with the sentinel, bytes per flow, flows
        per class; rem: bytes left, default size) at time `now` and refill every rate. Returns their ids."""
        count = len(size)
        width = max(edges.shape[1], 1)
        self._grow(count, width)
        ids = np.arange(self.n, self.n + count, dtype=np.int64)
        self.E[ids, :] = self.sentinel
        self.E[ids, :edges.shape[1]] = edges
        self.size[ids] = size
        self.mult[ids] = mult
        self.rem[ids] = size if rem is None else rem
        self.t_at[ids] = now
        self.rate[ids] = 0.0
        self.alive[ids] = True
        self.n += count
        self.refill_all(now)
        return ids

    def refill_all(self, now: float) -> None:
        """Bring every class up to `now` and recompute every rate (after an entry)."""
        ids = np.flatnonzero(self.alive[:self.n])
        ok = self.k.refill_all(now, ids, self.E, self.mult, self.size, self.rem, self.t_at, self.rate, self.bneck,
                               self.tree, self.used, self.capacity, self.counters, self.scalars, self.stats)
        if not ok:
            raise RuntimeError("a flow class got no bandwidth")  # capacities are > 0: cannot happen
        self.inc_start, self.inc_members = self.k.incidence(ids, self.E, len(self.capacity))

    def next_time(self) -> float:
        """The earliest finish time of an alive class (inf when none)."""
        return float(self.tree[1])

    def advance(self, now: float) -> np.ndarray:
        """Drain every class done at `now` (bytes left <= 1e-9 of its size, or within drain_tolerance
        x now), refill the rates a drain can change; returns the drained ids (maybe none)."""
        drained, no_room = self.k.drain(now, self.drain_tolerance, self.E, self.mult, self.size, self.rem,
                                        self.t_at, self.rate, self.bneck, self.alive, self.mark, self.tree, self.inc_start,
                                        self.inc_members, self.used, self.capacity, self.counters, self.scalars,
                                        self.stats, self.out)
        if no_room:     # rounding left a class no room: refill everything
            self.refill_all(now)
        elif self.counters[2] > self.counters[1]:
            # as many rate changes as classes: recompute the capacity in use, so rounding cannot pile up
            self.used[:] = 0.0
            self.k._add_use(np.flatnonzero(self.alive[:self.n]), self.E, self.mult, self.rate, self.used, 1.0)
            self.counters[2] = 0
        return drained.copy()
