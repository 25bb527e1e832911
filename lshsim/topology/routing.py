"""Routes between GPUs: one deterministic path per (source rank, destination rank).

Policy (`RoutingPolicy`): the path of least total weight. A topology family may bring its own
policy (`lshsim.topology.families`: the builder's fabric decides how it is routed), which
`build_topology` stores in G.graph["routing"]; its `weight(u, v, data)` gives each edge's weight.
Without one (the default, `LEAST_WEIGHT`), edge weight = 1 + 1e9 / bandwidth_Bps + route_cost (hop
count first, then the fattest links: an NVLink/NVSwitch path beats a PCIe path of the same length;
`route_cost` is an optional edge attribute, 0.5 on GPU <-> NIC edges so that a NIC is never a
shortcut between two GPUs of its own node). A GPU is
never a transit vertex (traffic is not forwarded through another GPU's memory): every GPU is split
into an "out" copy with its outgoing edges and an "in" copy with its incoming edges, and routes go
from out(src) to in(dst). The shipped builders give every GPU pair a unique least-weight path (the
spine layer is one vertex), so the policy is the routing, not a tie-breaking accident.

Fast path: `Routes` runs scipy's Dijkstra from every GPU at once and extracts the edge ids of many
(src, dst) pairs with vectorised predecessor walks. Slow reference: `reference_path` runs networkx's
Dijkstra on the same split graph, one pair at a time (the tests compare them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

__all__ = ["gpu_vertices", "route_weight", "Routes", "reference_path", "validate_topology", "ALL_PAIRS_MAX_WORLD",
           "RoutingPolicy", "LEAST_WEIGHT", "routing_policy"]

#: Up to this many GPUs, Routes keeps every pair's route in one (W * W, H) int32 table (about 28 MB at
#: 1,024 GPUs); beyond, routes are walked per call and every edge counts as binding.
ALL_PAIRS_MAX_WORLD = 2048


def gpu_vertices(G: nx.DiGraph) -> list:
    """The GPU vertices of G ordered by rank."""
    gpus = [v for v, data in G.nodes(data=True) if data.get("kind") == "gpu"]
    return sorted(gpus, key=lambda v: G.nodes[v]["rank"])


def route_weight(bandwidth_Bps: float, route_cost: float = 0.0) -> float:
    """Routing weight of an edge: one hop plus a small preference for fat links, plus route_cost.

    >>> route_weight(25e9) > route_weight(450e9)
    True
    """
    return 1.0 + 1e9 / bandwidth_Bps + route_cost


@dataclass(frozen=True)
class RoutingPolicy:
    """How a fabric is routed: one least-weight path per (source, destination) GPU pair, where the
    weight of edge (u, v) is `weight(u, v, data)` (data: the edge's attribute dict), a finite
    number > 0. weight None is the default, `route_weight(bandwidth_Bps, route_cost)`.

    A GPU is never a transit vertex, whatever the weights (module docstring).
    """

    name: str
    weight: Callable[[object, object, dict], float] | None = None

    def edge_weights(self, G: nx.DiGraph, edges: list) -> np.ndarray:
        """(L,) weights of `edges` (a list of (u, v)) under this policy."""
        if self.weight is None:
            capacity = np.array([G.edges[e]["bandwidth_Bps"] for e in edges], dtype=float)          # (L,)
            cost = np.array([G.edges[e].get("route_cost", 0.0) for e in edges], dtype=float)        # (L,)
            return route_weight(capacity, cost)
        weights = np.array([self.weight(u, v, G.edges[u, v]) for u, v in edges], dtype=float)   # (L,)
        if len(weights) and not (np.all(np.isfinite(weights)) and weights.min() > 0):
            i = int(np.flatnonzero(~(np.isfinite(weights) & (weights > 0)))[0])
            raise ValueError(f"routing policy {self.name!r}: edge {edges[i]!r} has weight {weights[i]!r}; "
                             f"weights must be finite and > 0")
        return weights


#: The default policy: least weight under `route_weight`.
LEAST_WEIGHT = RoutingPolicy("least_weight")


def routing_policy(G: nx.DiGraph) -> RoutingPolicy:
    """The policy G is routed by: G.graph["routing"] if a family set one, else LEAST_WEIGHT."""
    return G.graph.get("routing") or LEAST_WEIGHT


class Routes:
    """All GPU-to-GPU routes of a topology (computed once, queried in bulk).

    Attributes:
        edges:        list of (u, v), the edge id is the index
        capacity_Bps: (L,) float, bandwidth_Bps per edge id
        latency_s:    (L,) float, latency_s per edge id
        hops:         (W, W) int, edges on the route (0 on the diagonal)
        path_latency_s: (W, W) float, sum of latency_s along the route
    """

    def __init__(self, G: nx.DiGraph):
        self.gpus = gpu_vertices(G)
        self.world = len(self.gpus)
        vertices = list(G.nodes)
        index = {v: i for i, v in enumerate(vertices)}
        num_v = len(vertices)
        self._num_split = num_v + self.world
        in_copy = {g: num_v + r for r, g in enumerate(self.gpus)}     # GPU -> its "in" copy
        self.edges = list(G.edges)
        self.capacity_Bps = np.array([G.edges[e]["bandwidth_Bps"] for e in self.edges], dtype=float)  # (L,)
        self.latency_s = np.array([G.edges[e]["latency_s"] for e in self.edges], dtype=float)         # (L,)
        tail = np.array([index[u] for u, _ in self.edges], dtype=np.int64)                            # (L,)
        head = np.array([in_copy.get(v, index[v]) for _, v in self.edges], dtype=np.int64)           # (L,)
        self.policy = routing_policy(G)
        weight = self.policy.edge_weights(G, self.edges)                                              # (L,)
        graph = csr_matrix((weight, (tail, head)), shape=(self._num_split, self._num_split))
        self._src_index = np.array([index[g] for g in self.gpus], dtype=np.int64)                     # (W,)
        self._dst_index = num_v + np.arange(self.world)                                               # (W,)
        dist, pred = dijkstra(graph, directed=True, indices=self._src_index, return_predecessors=True)
        self._pred = pred.astype(np.int32)                                                            # (W, V+W)
        self.distance = dist[:, self._dst_index]                                                      # (W, W)
        order = np.argsort(tail * self._num_split + head)
        self._edge_keys = (tail * self._num_split + head)[order]                                      # (L,) sorted
        self._edge_ids = order.astype(np.int32)                                                       # (L,)
        self._hops = None
        self._path_latency = None
        self._table = None
        self._binding = None

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    def reachable(self) -> np.ndarray:
        """(W, W) bool: a route exists (the diagonal is True)."""
        ok = np.isfinite(self.distance)
        np.fill_diagonal(ok, True)
        return ok

    def edge_ids(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Edge ids of the routes of the pairs (src[i], dst[i]), src != dst.

        Returns an (F, H) int32 array padded with -1 (H = the longest of these routes). The edges of
        a row are listed from the destination back to the source: column 0 is the last hop, column
        hops - 1 the first. [speed] Up to ALL_PAIRS_MAX_WORLD GPUs every route is computed once
        (`all_pairs_edge_ids`) and looked up; beyond, routes are walked per call.
        """
        src = np.asarray(src, dtype=np.int64)                                                        # (F,)
        dst = np.asarray(dst, dtype=np.int64)                                                        # (F,)
        if src.shape != dst.shape or src.ndim != 1:
            raise ValueError(f"src and dst must be 1-D of the same length, got {src.shape} and {dst.shape}")
        if len(src) and (src.min() < 0 or dst.min() < 0 or src.max() >= self.world or dst.max() >= self.world):
            raise ValueError(f"ranks must be in [0, {self.world})")
        if np.any(src == dst):
            i = int(np.flatnonzero(src == dst)[0])
            raise ValueError(f"flow {i}: src == dst == {int(src[i])}: a local copy is not a network route")
        bad = ~np.isfinite(self.distance[src, dst])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"GPU rank {int(src[i])} ({self.gpus[src[i]]}) cannot reach GPU rank {int(dst[i])} "
                             f"({self.gpus[dst[i]]})")
        if self.world > ALL_PAIRS_MAX_WORLD:
            return self._walk(src, dst)
        rows = self.all_pairs_edge_ids()[src * self.world + dst]                                    # (F, Hmax)
        width = int((rows >= 0).sum(axis=1).max(initial=0))
        return rows[:, :width]

    def all_pairs_edge_ids(self) -> np.ndarray:
        """(W * W, Hmax) int32: the edge ids of the route of pair (s, d) in row s * W + d, -1 padded
        (the diagonal and unreachable pairs are all -1). Computed once."""
        if self._table is None:
            world = self.world
            src, dst = np.nonzero(~np.eye(world, dtype=bool) & np.isfinite(self.distance))
            walked = self._walk(src, dst)                                                           # (P, Hmax)
            table = np.full((world * world, walked.shape[1]), -1, dtype=np.int32)
            table[src * world + dst] = walked
            self._table = table
        return self._table

    def _walk(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        columns = []
        cur = self._dst_index[dst]                                                                   # (F,)
        target = self._src_index[src]                                                                # (F,)
        live = np.flatnonzero(cur != target)
        while len(live):
            u = self._pred[src[live], cur[live]].astype(np.int64)                                     # (F',)
            keys = u * self._num_split + cur[live]
            pos = np.searchsorted(self._edge_keys, keys)
            column = np.full(len(src), -1, dtype=np.int32)
            column[live] = self._edge_ids[pos]
            columns.append(column)
            cur[live] = u
            live = live[cur[live] != target[live]]
        if not columns:
            return np.empty((len(src), 0), dtype=np.int32)
        return np.stack(columns, axis=1)                                                             # (F, H)

    def binding_edges(self) -> np.ndarray:
        """(L,) bool: edges that can limit a flow. [speed, exact] An edge e that touches no GPU can
        be left out of the rate computation when its capacity is at least the total capacity of the
        first hops (or of the last hops) of all routes through it: every byte on e also crossed
        one of those GPU-adjacent edges, which are always kept and never carry more than their
        capacity, so e can never be over-subscribed. In a non-blocking fat-tree with one NIC per
        GPU this leaves out NIC <-> leaf and the trunks, so a route has two binding edges: the
        GPU's egress port and the destination's ingress port (per-port capacity). Shared NICs and
        oversubscribed trunks stay binding.
        """
        if self._binding is None:
            num_links = self.num_edges
            gpu_adjacent = np.zeros(num_links, dtype=bool)
            gpu_set = set(self.gpus)
            for i, (u, v) in enumerate(self.edges):
                gpu_adjacent[i] = u in gpu_set or v in gpu_set
            table = self.all_pairs_edge_ids() if self.world <= ALL_PAIRS_MAX_WORLD else None
            if table is None:
                self._binding = np.ones(num_links, dtype=bool)
                return self._binding
            hops = (table >= 0).sum(axis=1)                                                          # (P,)
            routed = hops > 0
            if not routed.any():            # one GPU: no routes, nothing to leave out
                self._binding = np.ones(num_links, dtype=bool)
                return self._binding
            table, hops = table[routed], hops[routed]
            last = table[:, 0].astype(np.int64)                                                       # (P,) into dst
            first = table[np.arange(len(table)), hops - 1].astype(np.int64)                          # (P,) out of src
            adjacent_ids = np.flatnonzero(gpu_adjacent)                                            # (A,)
            compact = np.full(num_links, -1, dtype=np.int64)
            compact[adjacent_ids] = np.arange(len(adjacent_ids))
            valid = table >= 0                                                                       # (P, H)
            rows = table[valid]                                                                      # (nnz,)
            bound = []
            for hop in (first, last):
                mark = np.zeros((num_links, len(adjacent_ids)), dtype=bool)   # (L, A) edge e carries hop a
                mark[rows, compact[np.broadcast_to(hop[:, None], table.shape)[valid]]] = True
                edge, adjacent = np.nonzero(mark)
                bound.append(np.bincount(edge, weights=self.capacity_Bps[adjacent_ids[adjacent]], minlength=num_links))
            limit = np.minimum(bound[0], bound[1])                                                   # (L,)
            self._binding = gpu_adjacent | (self.capacity_Bps < limit * (1 - 1e-12))
        return self._binding

    def path(self, src_rank: int, dst_rank: int) -> list:
        """The vertices of one route, source first."""
        ids = self.edge_ids(np.array([src_rank]), np.array([dst_rank]))[0]
        edges = [self.edges[e] for e in ids[::-1] if e >= 0]
        return [edges[0][0]] + [v for _, v in edges]

    def _all_pairs(self) -> None:
        world = self.world
        src, dst = np.nonzero(~np.eye(world, dtype=bool) & np.isfinite(self.distance))
        hops = np.zeros((world, world), dtype=np.int64)
        lat = np.zeros((world, world))
        if len(src):
            ids = self.edge_ids(src, dst)                                                            # (F, H)
            hops[src, dst] = (ids >= 0).sum(axis=1)
            lat[src, dst] = np.where(ids >= 0, self.latency_s[np.maximum(ids, 0)], 0.0).sum(axis=1)
        self._hops, self._path_latency = hops, lat

    @property
    def hops(self) -> np.ndarray:
        if self._hops is None:
            self._all_pairs()
        return self._hops

    @property
    def path_latency_s(self) -> np.ndarray:
        if self._path_latency is None:
            self._all_pairs()
        return self._path_latency


def _split_graph(G: nx.DiGraph) -> nx.DiGraph:
    H = nx.DiGraph()
    edges = list(G.edges)
    weights = routing_policy(G).edge_weights(G, edges)                                               # (L,)
    for (u, v), weight in zip(edges, weights):
        tail = ("out", u) if G.nodes[u].get("kind") == "gpu" else u
        head = ("in", v) if G.nodes[v].get("kind") == "gpu" else v
        H.add_edge(tail, head, weight=float(weight), edge=(u, v))
    return H


def reference_path(G: nx.DiGraph, src_rank: int, dst_rank: int) -> list:
    """Slow reference for `Routes.path`: networkx Dijkstra on the split graph, one pair."""
    gpus = gpu_vertices(G)
    H = _split_graph(G)
    nodes = nx.dijkstra_path(H, ("out", gpus[src_rank]), ("in", gpus[dst_rank]), weight="weight")
    return [n[1] if isinstance(n, tuple) and n and n[0] in ("in", "out") else n for n in nodes]


def validate_topology(G: nx.DiGraph, routes: Routes | None = None) -> Routes:
    """Check a topology graph; raise ValueError naming what is wrong. Returns its Routes.

    Checks: GPU vertices carry rank/node and ranks are 0..W-1; every edge has a finite
    bandwidth_Bps > 0 and a finite latency_s >= 0; every GPU reaches every other GPU.
    """
    name = G.graph.get("name", "<unnamed>")
    gpus = gpu_vertices(G)
    if not gpus:
        raise ValueError(f"topology {name}: no vertex with kind='gpu'")
    for g in gpus:
        for attr in ("rank", "node"):
            if attr not in G.nodes[g]:
                raise ValueError(f"topology {name}: GPU vertex {g!r} has no {attr!r} attribute")
    ranks = [G.nodes[g]["rank"] for g in gpus]
    if ranks != list(range(len(gpus))):
        raise ValueError(f"topology {name}: GPU ranks must be 0..{len(gpus) - 1}, got {ranks}")
    for u, v, data in G.edges(data=True):
        bw = data.get("bandwidth_Bps")
        if bw is None or not np.isfinite(bw) or bw <= 0:
            raise ValueError(f"topology {name}: edge {u!r} -> {v!r} bandwidth_Bps={bw} must be a finite number > 0")
        lat = data.get("latency_s")
        if lat is None or not np.isfinite(lat) or lat < 0:
            raise ValueError(f"topology {name}: edge {u!r} -> {v!r} latency_s={lat} must be a finite number >= 0")
    routes = Routes(G) if routes is None else routes
    ok = routes.reachable()
    if not ok.all():
        s, d = (int(x) for x in np.argwhere(~ok)[0])
        raise ValueError(f"topology {name}: GPU rank {s} ({gpus[s]}) cannot reach GPU rank {d} ({gpus[d]})")
    return routes
