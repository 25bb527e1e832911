"""Slow, obvious reference for `lshsim.sim.network`: one flow at a time, pure Python.

Same model as the fast path (network.py docstring): a flow enters the network alpha_s after its
start, shares every link of its path (networkx Dijkstra, `lshsim.topology.reference_path`) max-min
fairly with the flows in the network, rates recomputed whenever a flow enters or drains, and
arrives the sum of its path's latency_s after its last byte left. No aggregation, no numpy, no
simpy: a plain event loop over a list. Use it on small cases only (the tests compare the two).
With `gpu_engine_Bps` every flow s -> d also shares the resources ("engine", s) and ("engine", d)
(network.py docstring, item 5): they join its path in the max-min computation only, with no
latency and no link bytes. All the path's edges take part (the fast path leaves out the edges
that cannot bind), so the comparison also checks that choice.
"""
from __future__ import annotations

import math

import networkx as nx

from lshsim.topology.routing import reference_path

__all__ = ["reference_max_min_rates", "reference_simulate_flows"]


def reference_max_min_rates(paths: list[list[tuple]], capacity: dict) -> list[float]:
    """Max-min fair rates of flows (each a list of edges) on links of `capacity` (B/s), by
    progressive filling: raise every unfrozen flow's rate together until a link saturates, freeze
    the flows on it, repeat.

    >>> reference_max_min_rates([[("a", "b")], [("a", "b"), ("b", "c")], [("b", "c")]],
    ...                         {("a", "b"): 2.0, ("b", "c"): 10.0})
    [1.0, 1.0, 9.0]
    """
    rate = [0.0] * len(paths)
    frozen = [False] * len(paths)
    left = dict(capacity)
    while not all(frozen):
        users: dict = {}
        for i, path in enumerate(paths):
            if not frozen[i]:
                for edge in path:
                    users[edge] = users.get(edge, 0) + 1
        level = min(left[edge] / n for edge, n in users.items())
        saturated = {edge for edge, n in users.items() if left[edge] / n <= level * (1 + 1e-12)}
        for i, path in enumerate(paths):
            if not frozen[i] and any(edge in saturated for edge in path):
                frozen[i] = True
                rate[i] = level
                for edge in path:
                    left[edge] = max(left[edge] - level, 0.0)
    return rate


def reference_simulate_flows(G: nx.DiGraph, flows, alpha_s: float | None = None,
                             gpu_engine_Bps=None) -> tuple[list[float], dict]:
    """Per-flow simulation of flows (src rank, dst rank, bytes, start_delay_s).

    gpu_engine_Bps: None (no engines), one capacity for every rank, or a list of one per rank.
    Returns (finish_s per flow, {(u, v): bytes that crossed the link}).
    """
    alpha = G.graph.get("alpha_s", 0.0) if alpha_s is None else alpha_s
    flows = [(int(s), int(d), float(b), float(t)) for s, d, b, t in flows]
    paths = []
    for s, d, _, _ in flows:
        vertices = reference_path(G, s, d)
        paths.append(list(zip(vertices[:-1], vertices[1:])))
    capacity = {(u, v): data["bandwidth_Bps"] for u, v, data in G.edges(data=True)}
    shared = paths                      # what each flow shares in the max-min computation
    if gpu_engine_Bps is not None:
        world = sum(1 for _, data in G.nodes(data=True) if data.get("kind") == "gpu")
        try:
            engines = [float(value) for value in gpu_engine_Bps]
        except TypeError:               # one number for every rank
            engines = [float(gpu_engine_Bps)] * world
        for rank, value in enumerate(engines):
            capacity[("engine", rank)] = value
        shared = [path + [("engine", s), ("engine", d)] for path, (s, d, _, _) in zip(paths, flows)]
    latency = [sum(G.edges[e]["latency_s"] for e in path) for path in paths]
    link_bytes: dict = {}
    for (_, _, size, _), path in zip(flows, paths):
        for edge in path:
            link_bytes[edge] = link_bytes.get(edge, 0.0) + size
    enter = [t + alpha for _, _, _, t in flows]
    remaining = [size for _, _, size, _ in flows]
    finish = [math.nan] * len(flows)
    waiting = sorted(range(len(flows)), key=lambda i: (enter[i], i))
    active: list[int] = []
    now = 0.0
    while waiting or active:
        rates = reference_max_min_rates([shared[i] for i in active], capacity) if active else []
        next_drain = min((remaining[i] / r for i, r in zip(active, rates)), default=math.inf)
        next_enter = enter[waiting[0]] - now if waiting else math.inf
        step = min(next_drain, next_enter)
        now += step
        still = []
        for i, r in zip(active, rates):
            remaining[i] -= r * step
            if remaining[i] <= 1e-9 * flows[i][2]:
                finish[i] = now + latency[i]
            else:
                still.append(i)
        active = still
        while waiting and enter[waiting[0]] <= now * (1 + 1e-15):
            i = waiting.pop(0)
            if flows[i][2] == 0:
                finish[i] = now + latency[i]
            else:
                active.append(i)
    return finish, link_bytes
