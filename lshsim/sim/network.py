"""Flow-level network simulation on a topology graph, driven by a simpy Environment.

Model:
1. A transfer is a set of flows (src rank, dst rank, bytes) started together at `env.now`. Each flow
   follows its route (`lshsim.topology.Routes`: one deterministic path per GPU pair).
2. Start-up: a flow enters the network alpha_s after it is started (per-message start-up latency,
   paid once per flow; concurrent flows pay it concurrently).
3. Sharing: the bytes of all flows in the network drain as fluids. Concurrent flows share every
   link max-min fairly, by progressive filling (water-filling): all unfrozen flows rise at the same
   rate until a link saturates; the flows crossing it freeze; repeat. Rates are recomputed whenever
   a flow enters or drains. A link is one direction of a physical link (`bandwidth_Bps` per direction).
4. Propagation: a flow completes sum(latency_s over its path) after its last byte left (the
   per-hop latency is paid once per flow, not per byte; no store-and-forward).
   So one flow of b bytes alone on one link takes alpha_s + latency_s + b / bandwidth_Bps, exactly.
5. GPU engines (optional, `gpu_engine_Bps`, off by default): one more shared resource per GPU
   rank, of capacity E_r B/s, that every flow from or to rank r consumes, both directions together
   (the GPU's copy engines / NCCL's p2p kernels move its sends and its receives). A flow s -> d
   takes a share of its route's links AND of engines s and d; the water-filling of 3. runs over
   links and engines together. So rank r's traffic obeys sum of its send and receive rates <= E_r
   besides every link's capacity: alone on its links, r sending S_r and receiving R_r bytes takes
   at least (S_r + R_r) / E_r. Engines add no latency and carry no `link_bytes`.
   The calibrated link model sets E_r for each all-to-all (the duplex engine: see `lshsim.calibration`).

Exploiting structure (speed tricks, labelled):
- [aggregation] flows of one transfer with the same (src, dst, bytes) have the same route and the
  same rates forever: they are one "flow class" with a multiplicity m; a link counts m shares.
- [vectorised] classes live in numpy arrays; water-filling runs in rounds that each freeze every
  local bottleneck at once, and after a drain only the classes whose rate was at least the drained
  one are refilled (`FlowNetwork._compute_rates` says why both are exact); classes that drain at
  the same instant (within a relative 1e-9 of their bytes) finish together.
  Cost: one rate update per distinct drain time, so uniform traffic is cheap (two updates for a
  direct all-to-all) and uneven traffic costs one update per flow.
- [per-port] non-blocking switches are one vertex whose per-port edges carry the capacity (the
  NVSwitch crossbar; the spine layer as one trunk per leaf, exact for perfectly balanced ECMP), and
  edges that can never be over-subscribed (capacity >= the total capacity of the GPU ports that feed
  them, `Routes.binding_edges`) are left out of the rate computation (their bytes are still
  counted), so a route in a non-blocking fat-tree has two binding edges. Contention is never
  dropped: an edge that could be over-subscribed always stays.
- [incremental] the default solver ("auto") hands the classes to `lshsim.sim.incremental` (numba)
  once 2,048 are in flight: finish times in a min-tree, and after a drain only the classes whose
  rate can change are refilled (a search from the drained classes' saturated resources, checked
  afterwards; its docstring proves the result max-min fair). Same times as the vectorised solver
  to rounding (tests/test_sim_incremental.py: 1e-9 per flow); a skewed 1,024-GPU MoE all-to-all
  refills 5.6 million classes instead of hundreds of millions (benchmarks/RESULTS.md). Without
  numba, "auto" stays vectorised.
- [compiled] with numba, the vectorised solver's rate update runs compiled
  (`_incremental_kernels.vectorised_rates`: the numpy version's arithmetic in its order, the same
  bits; `_compute_rates_numpy` otherwise): numpy's cost per call dominated small networks.
The slow, obvious reference is `lshsim.sim.reference.reference_simulate_flows` (per flow, pure
Python, networkx paths); the tests compare the three.

Extension contract: a collective (or an MoE step) is a simpy process that calls
`net.transfer(...)` and yields `transfer.done`; it may also yield `net.env.timeout(...)` for compute.
Run it with `env.run(until=process)`: the scheduler leaves stale internal timers in the event
queue, so a bare `env.run()` may move `env.now` past the last completion (completion times are
always the ones recorded in `Transfer.finish_s`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import simpy

from lshsim.sim import incremental
from lshsim.topology.routing import Routes, validate_topology

__all__ = ["FlowNetwork", "Transfer", "FlowResult", "simulate_flows", "busiest_links", "RELATIVE_TOLERANCE",
           "SOLVERS", "AUTO_INCREMENTAL_CLASSES"]

#: A class whose remaining bytes are below this fraction of its size counts as drained.
RELATIVE_TOLERANCE = 1e-9
#: The max-min solvers of FlowNetwork (its `solver` argument).
SOLVERS = ("auto", "incremental", "vectorised")
#: solver="auto" switches to the incremental solver (when numba is installed) once this many flow
#: classes are in flight: below it the vectorised solver is as fast.
AUTO_INCREMENTAL_CLASSES = 2048
#: the vectorised solver's rate updates run compiled (`_incremental_kernels.vectorised_rates`, the
#: same numbers as numpy's, bit for bit) when numba is installed; False: always numpy
COMPILED_VECTORISED = True


def _vectorised_kernel():
    """The compiled rate update of the vectorised solver, or None (numpy) without numba or when
    COMPILED_VECTORISED is off."""
    if not COMPILED_VECTORISED or not incremental.numba_available():
        return None
    return incremental._kernels().vectorised_rates


@dataclass(eq=False)
class Transfer:
    """A batch of flows started together. `done` succeeds (value: self) when the last one arrives.

    Fields (F flows): src (F,) int ranks, dst (F,) int ranks, size_bytes (F,) float, start_s (float,
    when started), enter_s (start_s + alpha_s), finish_s (F,) float (NaN until that flow arrives),
    end_s (max finish_s, NaN until done), label.
    """

    src: np.ndarray
    dst: np.ndarray
    size_bytes: np.ndarray
    start_s: float
    enter_s: float
    done: simpy.Event
    label: str = ""
    finish_s: np.ndarray = field(default=None)
    end_s: float = float("nan")
    _inverse: np.ndarray = field(default=None, repr=False)        # (F,) flow -> class
    _class_finish: np.ndarray = field(default=None, repr=False)   # (C,) class arrival times
    _pending: int = 0

    @property
    def num_flows(self) -> int:
        return len(self.src)

    @property
    def total_bytes(self) -> float:
        return float(self.size_bytes.sum())


def busiest_links(edges: list, link_bytes: np.ndarray, capacity_Bps: np.ndarray, time_s: float,
                  k: int = 10) -> list[tuple]:
    """The k links with the highest utilisation = bytes / (bandwidth_Bps * time_s), as
    (u, v, bytes, utilisation), highest first (ties: more bytes first, then edge order)."""
    if time_s <= 0 or len(edges) == 0:
        util = np.zeros(len(edges))
    else:
        util = link_bytes / (capacity_Bps * time_s)                                     # (L,)
    order = np.lexsort((np.arange(len(edges)), -link_bytes, -util))[:k]
    return [(edges[i][0], edges[i][1], float(link_bytes[i]), float(util[i])) for i in order if link_bytes[i] > 0]


class FlowNetwork:
    """The flows in flight on one topology, advanced by a simpy process (see the module docstring).

    Args:
        G: topology graph (`lshsim.topology`).
        env: the simpy Environment to live in (a new one if None).
        alpha_s: per-flow start-up latency (default G.graph["alpha_s"], else 0).
        routes: precomputed `Routes(G)` (reuse it across many networks on one topology).
        drain_tolerance: 0 (default) is exact. tol > 0 is an approximation for uneven traffic,
            where every flow drains at its own time and costs a rate update: at each event, every
            class that would drain within tol * now also drains now (up to tol * now early), so
            drains close in time share one update (fewer updates, completion slightly early;
            the trade-off is measured in benchmarks/RESULTS.md).
        bandwidth_scale_by_kind: {edge kind: factor} multiplying the bandwidth of every edge of
            that kind for this network only (what `lshsim.calibration.LinkModels.rates` gives
            for one collective); the graph is not changed.
        gpu_engine_Bps: None (default: no engines, model items 1-4) or the capacity of each GPU
            rank's engine (module docstring, item 5): one float for every rank or a (W,) array,
            finite and > 0.
        solver: how the max-min rates are kept up to date; every solver gives the same answer (to
            rounding: the tests compare them per flow at 1e-9). "vectorised": numpy, every class
            refilled from the smallest drained rate up at each drain (`_compute_rates`);
            "incremental": `lshsim.sim.incremental`, compiled with numba (a drain-time heap, only
            the classes a drain can change are refilled); "auto" (default): vectorised, switching
            to incremental when numba is installed and a transfer brings the classes in flight to
            `AUTO_INCREMENTAL_CLASSES` or more (so small runs pay no compilation).
            `stats["solver"]` says which one ran last.
    """

    def __init__(self, G: nx.DiGraph, env: simpy.Environment | None = None, *, alpha_s: float | None = None,
                 routes: Routes | None = None, drain_tolerance: float = 0.0,
                 bandwidth_scale_by_kind: dict[str, float] | None = None, gpu_engine_Bps=None,
                 solver: str = "auto"):
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} must be one of {', '.join(SOLVERS)}")
        if solver == "incremental" and not incremental.numba_available():
            raise ValueError(f"solver='incremental' needs numba, which is not installed (pip install numba); "
                             f"solver='auto' or 'vectorised' runs without it")
        self.solver = solver
        self._inc: incremental.IncrementalSolver | None = None
        self.G = G
        self.env = simpy.Environment() if env is None else env
        self.routes = validate_topology(G) if routes is None else routes
        self.alpha_s = float(G.graph.get("alpha_s", 0.0) if alpha_s is None else alpha_s)
        if not np.isfinite(self.alpha_s) or self.alpha_s < 0:
            raise ValueError(f"alpha_s={self.alpha_s} must be >= 0")
        if not 0.0 <= drain_tolerance < 1.0:
            raise ValueError(f"drain_tolerance={drain_tolerance} must be in [0, 1)")
        self.drain_tolerance = float(drain_tolerance)
        self.world = self.routes.world
        num_links = self.routes.num_edges
        self._num_links = num_links
        # resource ids: links 0..L-1, then (with engines) rank r's engine L + r, then the sentinel
        self._engines = self._engine_capacity(gpu_engine_Bps)            # (W,) or None
        num_engines = 0 if self._engines is None else self.world
        self._sentinel = num_links + num_engines                        # padding id, infinite capacity: the largest
        self._capacity = np.concatenate([self.routes.capacity_Bps, np.zeros(num_engines) if self._engines is None
                                         else self._engines, [np.inf]])  # (L+W+1,) or (L+1,)
        for kind, factor in (bandwidth_scale_by_kind or {}).items():
            if not np.isfinite(factor) or factor <= 0:
                raise ValueError(f"bandwidth_scale_by_kind[{kind!r}]={factor} must be a finite number > 0")
            of_kind = np.array([G.edges[e].get("kind") == kind for e in self.routes.edges], dtype=bool)  # (L,)
            if not of_kind.any():
                raise ValueError(f"bandwidth_scale_by_kind names edge kind {kind!r}, which topology "
                                 f"{G.graph.get('name')} does not have")
            self._capacity[:num_links][of_kind] *= factor
        self._latency = np.concatenate([self.routes.latency_s, np.zeros(num_engines + 1)])   # (L+W+1,) engines: 0
        # Routes.binding_edges leaves out edges that the nominal capacities can never over-subscribe;
        # with scaled edges that test no longer holds, so every edge takes part (exact; where every
        # edge touches a GPU, as on one NVSwitch node, nothing was left out anyway)
        binding_links = self.routes.binding_edges()
        if bandwidth_scale_by_kind:
            binding_links = np.ones(num_links, dtype=bool)
        self._binding = np.concatenate([binding_links, np.ones(num_engines, dtype=bool),
                                        [False]])                      # (L+W+1,) see Routes.binding_edges
        self.link_bytes = np.zeros(num_links)                           # (L,) bytes that crossed each link
        self.transfers: list[Transfer] = []
        # active flow classes (n of them)
        self._E = np.empty((0, 0), dtype=np.int32)    # (n, H) edge ids, padded with the sentinel
        self._rem = np.empty(0)                       # (n,) bytes left per flow of the class
        self._size = np.empty(0)                      # (n,) bytes per flow of the class
        self._mult = np.empty(0)                      # (n,) flows in the class
        self._rate = np.empty(0)                      # (n,) B/s per flow
        self._lat = np.empty(0)                       # (n,) path latency
        self._owner = np.empty(0, dtype=np.int64)     # (n,) transfer index
        self._cls = np.empty(0, dtype=np.int64)       # (n,) class index within its transfer
        self._last_t = 0.0
        self._dirty = False
        self._refill_from = 0.0     # classes with a rate below this keep it at the next update
        self._rate_kernel = False   # not resolved yet (`_vectorised_kernel`)
        self._wakeup = self.env.event()
        self._stats = {"rate_updates": 0, "fill_levels": 0, "drain_events": 0, "classes": 0, "flows": 0}
        self._inc_owner = np.empty(0, dtype=np.int64)    # incremental solver: class id -> transfer index,
        self._inc_cls = np.empty(0, dtype=np.int64)      # class index within its transfer,
        self._inc_lat = np.empty(0)                      # path latency
        self.env.process(self._run())

    # ---- public -----------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        """Counters: rate_updates (max-min recomputations), fill_levels (filling rounds; incremental: the
        resources its fillings saturated, one at a time), drain_events,
        classes, flows; refilled_classes (classes whose rate was recomputed, summed over updates) and
        rate_changes (refilled classes whose rate changed): incremental only; solver (the one that ran
        last)."""
        out = dict(self._stats)
        out["solver"] = "vectorised"
        if self._inc is not None:
            updates, refilled, levels, drains, _, _, changed, _ = (int(x) for x in self._inc.stats)
            out["rate_updates"] += updates
            out["fill_levels"] += levels
            out["drain_events"] += drains
            out["refilled_classes"] = refilled
            out["rate_changes"] = changed
            out["solver"] = "incremental"
        return out

    @property
    def edges(self) -> list:
        return self.routes.edges

    @property
    def capacity_Bps(self) -> np.ndarray:
        """(L,) bandwidth of every edge in this network (after `bandwidth_scale_by_kind`)."""
        return self._capacity[:self._num_links].copy()

    @property
    def engine_Bps(self) -> np.ndarray | None:
        """(W,) capacity of each GPU rank's engine (module docstring, item 5); None without engines."""
        return None if self._engines is None else self._engines.copy()

    def _engine_capacity(self, gpu_engine_Bps) -> np.ndarray | None:
        if gpu_engine_Bps is None:
            return None
        try:
            engines = np.broadcast_to(np.asarray(gpu_engine_Bps, dtype=float), (self.world,)).copy()  # (W,)
        except (TypeError, ValueError):
            raise ValueError(f"gpu_engine_Bps={gpu_engine_Bps!r} must be a number or a sequence of {self.world} "
                             f"numbers (one per GPU rank)") from None
        if not np.all(np.isfinite(engines)) or engines.min() <= 0:
            raise ValueError(f"gpu_engine_Bps={gpu_engine_Bps!r} must be finite and > 0 for every rank")
        return engines

    def transfer(self, src, dst, size_bytes, *, alpha_s: float | None = None, label: str = "",
                 path_latency: bool = True) -> Transfer:
        """Start flows src[i] -> dst[i] of size_bytes[i] now; returns their Transfer (yield its .done).

        src != dst for every flow (a rank's data for itself is not a network flow). Zero-byte flows
        are allowed: they arrive alpha_s + path latency after the start. path_latency=False: the flows
        complete when their last byte has left (no path latency): the later pieces of a stream whose first
        piece paid it (`lshsim.sim.dispatch_formats.node_dedup`'s chunks).
        """
        src = np.atleast_1d(np.asarray(src, dtype=np.int64))                      # (F,)
        dst = np.atleast_1d(np.asarray(dst, dtype=np.int64))                      # (F,)
        size = np.atleast_1d(np.asarray(size_bytes, dtype=float))                 # (F,)
        if not (src.shape == dst.shape == size.shape) or src.ndim != 1:
            raise ValueError(f"src, dst, size_bytes must be 1-D of one length, got {src.shape}, {dst.shape}, "
                             f"{size.shape}")
        if len(size) and (not np.all(np.isfinite(size)) or size.min() < 0):
            i = int(np.flatnonzero(~(np.isfinite(size) & (size >= 0)))[0])
            raise ValueError(f"size_bytes[{i}]={size[i]} must be a finite number >= 0")
        alpha = self.alpha_s if alpha_s is None else float(alpha_s)
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha_s={alpha} must be >= 0")
        # [aggregation] one class per distinct (src, dst, bytes)
        pair = src * self.world + dst                                             # (F,)
        order = np.lexsort((size, pair))
        if len(order):
            new = np.r_[True, (np.diff(pair[order]) != 0) | (np.diff(size[order]) != 0)]
        else:
            new = np.zeros(0, dtype=bool)
        group_sorted = np.cumsum(new) - 1
        inverse = np.empty(len(src), dtype=np.int64)
        inverse[order] = group_sorted
        first = order[new]                                                        # (C,) a representative flow
        mult = np.bincount(group_sorted, minlength=len(first)).astype(float)      # (C,)
        edges = self.routes.edge_ids(src[first], dst[first])                      # (C, H), -1 padded
        edges = np.where(edges < 0, self._sentinel, edges).astype(np.int32)
        lat = self._latency[edges].sum(axis=1)                                    # (C,) path latency
        if not path_latency:
            lat = np.zeros_like(lat)
        now = self.env.now
        tr = Transfer(src=src, dst=dst, size_bytes=size, start_s=now, enter_s=now + alpha, done=self.env.event(),
                      label=label, finish_s=np.full(len(src), np.nan))
        tr._inverse = inverse
        tr._class_finish = np.full(len(first), np.nan)
        tr._pending = len(first)
        index = len(self.transfers)
        self.transfers.append(tr)
        self._stats["classes"] += len(first)
        self._stats["flows"] += len(src)
        weights = np.repeat(size[first] * mult, edges.shape[1])
        if edges.size:
            self.link_bytes += np.bincount(edges.ravel(), weights=weights,
                                           minlength=self._sentinel + 1)[:self._num_links]
        if len(first) == 0:
            tr.end_s = now
            tr.done.succeed(tr)
            return tr
        # [per-port] only the edges that can limit a flow take part in the rate computation
        binding = np.where(self._binding[edges], edges, self._sentinel)           # (C, H)
        if self._engines is not None:   # every flow also takes its source's and destination's engine
            engine_ids = np.stack([src[first], dst[first]], axis=1) + self._num_links  # (C, 2)
            binding = np.concatenate([binding, engine_ids.astype(binding.dtype)], axis=1)  # (C, H+2)
        binding.sort(axis=1)                                                       # sentinel (largest id) last
        width = int((binding != self._sentinel).sum(axis=1).max(initial=0))
        self.env.process(self._enter(index, binding[:, :width], size[first], mult, lat, alpha))
        return tr

    def run_transfer(self, src, dst, size_bytes, **kwargs):
        """Generator helper for collectives: `yield from net.run_transfer(...)` starts a transfer
        and waits for it; returns the Transfer."""
        tr = self.transfer(src, dst, size_bytes, **kwargs)
        yield tr.done
        return tr

    def busiest_links(self, time_s: float, k: int = 10) -> list[tuple]:
        return busiest_links(self.edges, self.link_bytes, self.capacity_Bps, time_s, k)

    # ---- internals ----------------------------------------------------------------------------
    def _enter(self, index: int, edges: np.ndarray, size: np.ndarray, mult: np.ndarray, lat: np.ndarray,
               alpha: float):
        if alpha > 0:
            yield self.env.timeout(alpha)
        self._advance_to(self.env.now)
        n_classes = len(size)
        if self._inc is None and self._use_incremental(len(self._rem) + n_classes):
            self._start_incremental()
        if self._inc is not None:
            self._enter_incremental(index, edges, size, mult, lat)
            return
        width = max(self._E.shape[1], edges.shape[1])
        self._E = np.vstack([self._pad(self._E, width), self._pad(edges, width)])
        self._rem = np.concatenate([self._rem, size])
        self._size = np.concatenate([self._size, size])
        self._mult = np.concatenate([self._mult, mult])
        self._rate = np.concatenate([self._rate, np.zeros(n_classes)])
        self._lat = np.concatenate([self._lat, lat])
        self._owner = np.concatenate([self._owner, np.full(n_classes, index, dtype=np.int64)])
        self._cls = np.concatenate([self._cls, np.arange(n_classes, dtype=np.int64)])
        self._dirty = True
        self._refill_from = 0.0     # a new class starts at rate 0: every rate may change
        self._finish(self._rem <= 0.0)     # zero-byte classes arrive after their path latency
        if not self._wakeup.triggered:
            self._wakeup.succeed()

    def _use_incremental(self, classes: int) -> bool:
        if self.solver == "incremental":
            return True
        return (self.solver == "auto" and classes >= AUTO_INCREMENTAL_CLASSES
                and incremental.numba_available())

    def _start_incremental(self) -> None:
        """Hand the classes in flight (brought up to now by `_advance_to`) to the incremental solver."""
        self._inc = incremental.IncrementalSolver(self._capacity, self.drain_tolerance)
        if len(self._rem):
            self._inc_bookkeeping(self._owner, self._cls, self._lat)
            self._inc.add(self.env.now, self._E, self._size, self._mult, rem=self._rem)
        self._E = np.empty((0, 0), dtype=np.int32)
        self._rem, self._size, self._mult, self._rate, self._lat = (np.empty(0) for _ in range(5))
        self._owner, self._cls = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)

    def _inc_bookkeeping(self, owner: np.ndarray, cls: np.ndarray, lat: np.ndarray) -> None:
        start, count = self._inc.n, len(owner)
        if start + count > len(self._inc_owner):
            grow = max(start + count, 2 * len(self._inc_owner))
            self._inc_owner = np.resize(self._inc_owner, grow)
            self._inc_cls = np.resize(self._inc_cls, grow)
            self._inc_lat = np.resize(self._inc_lat, grow)
        self._inc_owner[start:start + count] = owner
        self._inc_cls[start:start + count] = cls
        self._inc_lat[start:start + count] = lat

    def _enter_incremental(self, index: int, edges: np.ndarray, size: np.ndarray, mult: np.ndarray,
                           lat: np.ndarray) -> None:
        classes = np.arange(len(size), dtype=np.int64)
        empty = size <= 0.0                 # zero-byte classes arrive after their path latency
        if empty.any():
            self._finish_classes(np.full(int(empty.sum()), index), classes[empty], self.env.now + lat[empty])
        moving = ~empty
        if moving.any():
            self._inc_bookkeeping(np.full(int(moving.sum()), index, dtype=np.int64), classes[moving], lat[moving])
            self._inc.add(self.env.now, edges[moving], size[moving], mult[moving])
        if not self._wakeup.triggered:
            self._wakeup.succeed()

    def _finish_classes(self, owners: np.ndarray, classes: np.ndarray, arrival: np.ndarray) -> None:
        if len(owners) and owners.min() == owners.max():     # the common case: one transfer
            tr = self.transfers[int(owners[0])]
            tr._class_finish[classes] = arrival
            tr._pending -= len(owners)
            if tr._pending == 0:
                self.env.process(self._complete(tr))
            return
        for index in np.unique(owners):
            tr = self.transfers[index]
            mine = owners == index
            tr._class_finish[classes[mine]] = arrival[mine]
            tr._pending -= int(mine.sum())
            if tr._pending == 0:
                self.env.process(self._complete(tr))

    def _pad(self, edges: np.ndarray, width: int) -> np.ndarray:
        if edges.shape[1] == width:
            return edges
        out = np.full((edges.shape[0], width), self._sentinel, dtype=np.int32)
        out[:, :edges.shape[1]] = edges
        return out

    def _run(self):
        env = self.env
        while True:
            if self._inc is not None:
                dt = self._inc.next_time() - env.now
                if dt == np.inf:
                    yield self._wakeup
                    self._wakeup = env.event()
                    continue
                yield env.timeout(max(dt, 0.0)) | self._wakeup
                if self._wakeup.triggered:
                    self._wakeup = env.event()
                self._advance_to(env.now)
                continue
            if len(self._rem) == 0:
                yield self._wakeup
                self._wakeup = env.event()
                continue
            if self._dirty:
                self._compute_rates()
            time_left = self._rem / self._rate                                            # (n,)
            dt = float(time_left.min())
            if env.now + dt == env.now:
                # dt is below the clock's resolution at this time (a late start, e.g. a large alpha_s or
                # message gap, and a tiny flow): the clock cannot advance by it, so the next classes
                # finish now (waiting would spin forever on a zero step)
                self._finish(time_left <= dt)
                continue
            yield env.timeout(dt) | self._wakeup
            if self._wakeup.triggered:
                self._wakeup = env.event()
            self._advance_to(env.now)

    def _advance_to(self, now: float) -> None:
        """Drain every class at its current rate up to `now`; finish the drained ones."""
        if self._inc is not None:
            drained = self._inc.advance(now)
            if len(drained):
                self._finish_classes(self._inc_owner[drained], self._inc_cls[drained], now + self._inc_lat[drained])
            return
        elapsed = now - self._last_t
        self._last_t = now
        if elapsed <= 0 or len(self._rem) == 0:
            return
        self._rem -= self._rate * elapsed
        drained = self._rem <= RELATIVE_TOLERANCE * self._size
        if self.drain_tolerance > 0:    # [approximation] drain what would finish within tol * now
            drained |= self._rem <= self._rate * (self.drain_tolerance * now)
        self._finish(drained)

    def _finish(self, drained: np.ndarray) -> None:
        if not drained.any():
            return
        now = self.env.now
        self._stats["drain_events"] += 1
        arrival = now + self._lat[drained]                                                # (d,)
        self._finish_classes(self._owner[drained], self._cls[drained], arrival)
        if self._dirty:
            self._refill_from = min(self._refill_from, float(self._rate[drained].min()))
        else:
            self._refill_from = float(self._rate[drained].min())
        keep = ~drained
        self._E, self._rem, self._size = self._E[keep], self._rem[keep], self._size[keep]
        self._mult, self._rate, self._lat = self._mult[keep], self._rate[keep], self._lat[keep]
        self._owner, self._cls = self._owner[keep], self._cls[keep]
        self._dirty = True

    def _complete(self, tr: Transfer):
        tr.finish_s = tr._class_finish[tr._inverse]                                       # (F,)
        tr.end_s = float(tr._class_finish.max())
        delay = tr.end_s - self.env.now
        if delay > 0:
            yield self.env.timeout(delay)
        tr.done.succeed(tr)

    def _compute_rates(self) -> None:
        """Max-min fair rates, vectorised over classes with multiplicities.

        Progressive filling freezes one bottleneck level at a time; random traffic has dozens of
        levels per update. [speed] Here every round freezes all *local* bottlenecks at once: a link
        whose fair share level_at[l] = capacity left / unfrozen flows on it is <= that of every link
        sharing an unfrozen class with it saturates at exactly level_at[l] in progressive filling
        (a link's level only rises while flows elsewhere freeze below it), so its classes freeze at
        that rate. The global minimum is always such a link, so every round makes progress and the
        result equals progressive filling (`reference.reference_max_min_rates`; the tests compare).
        Nothing here depends on what a resource is: the GPU engines (module docstring, item 5) are
        more ids of the same capacity vector, so both arguments hold for links and engines alike.

        [speed] When classes drain and none entered, the classes whose rate is below the smallest
        drained rate r keep their rates: progressive filling on the new set makes the same decisions
        at every level below r (a drained class only crossed links whose level was >= r), so only
        the others are refilled, on the capacity the kept ones leave.
        """
        if self._rate_kernel is False:             # resolved at the first update (numba imports lazily)
            self._rate_kernel = _vectorised_kernel()
        if self._rate_kernel is None:
            self._compute_rates_numpy()
            return
        E, mult = self._E, self._mult                                                     # (n, H), (n,)
        refill = bool(self._refill_from > 0 and len(self._rate) == len(mult))
        if E.shape[1] == 0:        # (numpy's reductions refuse an empty row; so does this)
            self._compute_rates_numpy()
            return
        rate, rounds, ok = self._rate_kernel(np.ascontiguousarray(E), mult, self._capacity,
                                             self._rate if refill else mult,
                                             self._refill_from * (1 - 1e-9) if refill else 0.0, refill)
        if not ok:                 # a round froze nothing: the numpy version's behaviour, whatever it is
            self._compute_rates_numpy()
            return
        self._dirty = False
        self._stats["rate_updates"] += 1
        self._stats["fill_levels"] += int(rounds)
        if len(rate) and rate.min() <= 0.0:
            if self._refill_from > 0:       # rounding left a kept class no room: refill everything
                self._refill_from = 0.0
                self._compute_rates()
                return
            raise RuntimeError("a flow class got no bandwidth")  # capacities are > 0: cannot happen
        self._rate = rate

    def _compute_rates_numpy(self) -> None:
        """`_compute_rates` in numpy (the kernel `_incremental_kernels.vectorised_rates` computes
        the same numbers when numba is installed)."""
        self._dirty = False
        self._stats["rate_updates"] += 1
        E, mult = self._E, self._mult                                                     # (n, H), (n,)
        n, width = E.shape
        sentinel = self._sentinel
        cap_left = self._capacity.copy()                                                  # (L+1,)
        if self._refill_from > 0 and len(self._rate) == n:
            keep = self._rate < self._refill_from * (1 - 1e-9)                            # (n,)
            rate = np.where(keep, self._rate, 0.0)
            free = np.flatnonzero(~keep)
            kept = np.flatnonzero(keep)
            cap_left -= np.bincount(E[kept].ravel(), weights=np.repeat(mult[kept] * rate[kept], width),
                                    minlength=sentinel + 1)
            cap_left[sentinel] = np.inf
            np.maximum(cap_left, 0.0, out=cap_left)
        else:
            rate = np.zeros(n)
            free = np.arange(n)
        while len(free):
            self._stats["fill_levels"] += 1
            Ef = E[free]                                                                  # (f, H)
            flat = Ef.ravel()                                                             # (f*H,)
            count = np.bincount(flat, weights=np.repeat(mult[free], width), minlength=sentinel + 1)
            level_at = np.full(sentinel + 1, np.inf)                                      # (L+1,)
            np.divide(cap_left, count, out=level_at, where=count > 0)
            level_at[sentinel] = np.inf
            class_min = level_at[Ef].min(axis=1)                                          # (f,)
            link_min = np.full(sentinel + 1, np.inf)                                      # (L+1,)
            np.minimum.at(link_min, flat, np.repeat(class_min, width))
            bottleneck = level_at <= link_min * (1 + 1e-12)                               # (L+1,)
            bottleneck[sentinel] = False
            hit = bottleneck[Ef].any(axis=1)                                              # (f,)
            frozen = free[hit]
            rate[frozen] = class_min[hit]
            cap_left -= np.bincount(E[frozen].ravel(), weights=np.repeat(mult[frozen] * rate[frozen], width),
                                    minlength=sentinel + 1)
            cap_left[sentinel] = np.inf
            np.maximum(cap_left, 0.0, out=cap_left)
            free = free[~hit]
        if n and rate.min() <= 0.0:
            if self._refill_from > 0:       # rounding left a kept class no room: refill everything
                self._refill_from = 0.0
                self._compute_rates_numpy()
                return
            raise RuntimeError("a flow class got no bandwidth")  # capacities are > 0: cannot happen
        self._rate = rate


@dataclass(frozen=True)
class FlowResult:
    """What `simulate_flows` returns. F flows, L links (edge ids of `edges`)."""

    time_s: float                 # last arrival
    start_s: np.ndarray           # (F,) when each flow was started
    finish_s: np.ndarray          # (F,) when its last byte arrived
    edges: list                   # (L,) (u, v)
    link_bytes: np.ndarray        # (L,) bytes that crossed each link
    capacity_Bps: np.ndarray      # (L,)
    stats: dict

    def busiest_links(self, k: int = 10) -> list[tuple]:
        return busiest_links(self.edges, self.link_bytes, self.capacity_Bps, self.time_s, k)

    def link_bytes_dict(self) -> dict:
        return {e: float(b) for e, b in zip(self.edges, self.link_bytes) if b > 0}


def simulate_flows(G: nx.DiGraph, flows, *, alpha_s: float | None = None, routes: Routes | None = None,
                   gpu_engine_Bps=None, solver: str = "auto") -> FlowResult:
    """Simulate independent flows, each (src rank, dst rank, bytes, start_delay_s).

    `flows` is a sequence of 4-tuples or an (F, 4) array. Flows with the same start delay start as
    one Transfer. alpha_s defaults to G.graph["alpha_s"]; gpu_engine_Bps, solver: see FlowNetwork.

    >>> from lshsim.topology import build_topology
    >>> G = build_topology({"name": "pair", "gpu": "h100", "gpus_per_node": 2, "alpha_s": 0.0,
    ...                     "intra": {"kind": "full_mesh", "per_link_Bps": 1e9, "latency_s": 1e-6}})
    >>> simulate_flows(G, [(0, 1, 1e6, 0.0)]).time_s   # latency + bytes / bandwidth
    0.001001
    >>> both_ways = [(0, 1, 1e6, 0.0), (1, 0, 1e6, 0.0)]
    >>> round(simulate_flows(G, both_ways, gpu_engine_Bps=1.5e9).time_s, 9)   # each engine: 2 flows of 0.75 GB/s
    0.001334333
    """
    table = np.asarray(flows, dtype=float).reshape(-1, 4)                                 # (F, 4)
    if len(table) and (table[:, 3].min() < 0 or not np.all(np.isfinite(table[:, 3]))):
        raise ValueError("start_delay must be a finite number >= 0 for every flow")
    src = table[:, 0].astype(np.int64)
    dst = table[:, 1].astype(np.int64)
    if not np.array_equal(src, table[:, 0]) or not np.array_equal(dst, table[:, 1]):
        raise ValueError("src and dst must be integer ranks")
    net = FlowNetwork(G, alpha_s=alpha_s, routes=routes, gpu_engine_Bps=gpu_engine_Bps, solver=solver)
    env = net.env
    finish = np.full(len(table), np.nan)
    starts = np.unique(table[:, 3])
    groups = [np.flatnonzero(table[:, 3] == t) for t in starts]

    def launch(delay: float, idx: np.ndarray):
        if delay > 0:
            yield env.timeout(delay)
        tr = net.transfer(src[idx], dst[idx], table[idx, 2])
        yield tr.done
        finish[idx] = tr.finish_s

    procs = [env.process(launch(float(t), idx)) for t, idx in zip(starts, groups)]
    if procs:
        env.run(until=simpy.AllOf(env, procs))
    time_s = float(finish.max()) if len(finish) else 0.0
    return FlowResult(time_s=time_s, start_s=table[:, 3].copy(), finish_s=finish, edges=net.edges,
                      link_bytes=net.link_bytes.copy(), capacity_Bps=net.capacity_Bps.copy(), stats=dict(net.stats))
