"""All-to-all collectives on any traffic matrix, as simpy processes over a FlowNetwork.

`simulate_all_to_all(G, traffic_bytes, algorithm="direct", **options) -> CollectiveResult`.
traffic_bytes is a (W, W) array of bytes, row = source rank, column = destination rank, W = the
GPUs of G (for example `DispatchPlan.traffic_matrix(bytes_per_token)`).

The diagonal stays on its rank: no network. With local_copy=True (default) rank r copies its
diagonal bytes in HBM (read + write: 2 * T[r, r] / achieved_hbm_Bps of G.graph["gpu"]),
concurrently with its network traffic (NCCL copies to itself while the peers' messages fly), so
time_s = max(network time, longest local copy). With local_copy=False the diagonal costs nothing.

Algorithms (`ALGORITHMS`, the simulator's view of the registry `lshsim.algorithms.COLLECTIVES`,
which names each algorithm once for the analytic model, the simulator and the executor; a new one
is a generator `fn(run, traffic, **options)` registered with `lshsim.algorithms.register_collective`
that runs its phases with `yield from run.phase(name, matrix, mask)` (or starts transfers on
`run.net` itself and appends a `Stage` to `run.stages`); see `CollectiveRun`):
- direct:    every rank sends to every peer at once (NCCL's grouped send/recv). One phase.
- pairwise:  W - 1 bulk-synchronous steps; in step k rank r sends to (r + k) mod W (MPI's pairwise
             exchange). Each step pays alpha_s. A step starts when the previous one has ended on
             every rank (the per-rank asynchronous version, where a rank moves on as soon as its own
             send and receive are done, is not modelled).
- hierarchical (alias "2d"): Tutel 2DH / DeepSpeed: (1) intra-node gather: data for another node goes
             to the local "proxy" GPU of the destination GPU's NIC (GPU l's proxy is the first GPU
             using NIC l * nics // gpus_per_node), together with the intra-node traffic;
             (2) inter-node exchange proxy -> proxy over the NICs, node-pair data aggregated;
             (3) intra-node scatter from the proxy to the destination GPU. With one NIC per GPU the
             proxy of GPU l is l itself and step 3 is empty (Tutel's 2DH). Option chunks=c pipelines:
             each phase is cut in c equal chunks; chunk i of phase p starts when chunk i of phase p-1
             and chunk i-1 of phase p are done.
- groupwise: LocMoE's group-wise all-to-all: the intra-node exchange first, then only the
             inter-node remainder (direct, every peer at once).
On one node, hierarchical and groupwise reduce to direct.

Link model: every all-to-all runs at the rates its traffic gets from the topology's link models
(`links`, default `LinkModels.from_topology(G)`, parsed from the topology's `calibration:` block
when it was built): a size-dependent bus bandwidth per link class, the GPUs' duplex engines and
the links' cap. The model, its fits and its sources: see `lshsim.calibration`. Without a
calibration the edges keep their nominal bandwidths.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import simpy

from lshsim.algorithms import AlgorithmTable, canonical_algorithm
from lshsim.analytic.comm import uniform_traffic
from lshsim.calibration.model import LinkModels
from lshsim.sim.network import FlowNetwork, busiest_links
from lshsim.topology.routing import Routes, gpu_vertices, validate_topology

__all__ = ["simulate_all_to_all", "estimate_all_to_all", "CollectiveResult", "CollectiveRun", "Stage", "ALGORITHMS", "uniform_traffic",
           "proxy_of_local", "hierarchical_phases", "direct", "pairwise", "hierarchical", "groupwise"]


@dataclass(frozen=True)
class Stage:
    """One phase (or chunk of a phase) of a collective: name, start/end (s), bytes, flows."""

    name: str
    start_s: float
    end_s: float
    bytes: float
    flows: int


@dataclass(frozen=True)
class CollectiveResult:
    """The predicted all-to-all. W ranks, L links.

    time_s:         predicted time of the collective (s): last arrival (and longest local copy)
    network_time_s: last arrival of a network flow (0 if nothing crosses the network)
    egress_bytes:   (W,) bytes each rank sends to others (row sums, diagonal excluded)
    ingress_bytes:  (W,) bytes each rank receives from others (column sums, diagonal excluded)
    local_bytes:    (W,) diagonal (stays on the rank)
    local_copy_s:   (W,) HBM copy time of the diagonal (0 with local_copy=False)
    stages:         list[Stage] in start order
    link_bytes:     (L,) bytes that crossed each link (edges in `edges`); for hierarchical the
                    proxies' forwarded bytes count on every link they cross
    busiest:        list of (u, v, bytes, utilisation = bytes / (bandwidth_Bps * time_s)), top 10
    """

    algorithm: str
    topology: str
    time_s: float
    network_time_s: float
    egress_bytes: np.ndarray
    ingress_bytes: np.ndarray
    local_bytes: np.ndarray
    local_copy_s: np.ndarray
    stages: list
    edges: list
    link_bytes: np.ndarray
    capacity_Bps: np.ndarray
    busiest: list
    options: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def busiest_links(self, k: int = 10) -> list[tuple]:
        return busiest_links(self.edges, self.link_bytes, self.capacity_Bps, self.time_s, k)

    def to_dict(self, top_links: int = 10) -> dict:
        """JSON-ready summary."""
        return {
            "algorithm": self.algorithm, "topology": self.topology, "time_s": self.time_s,
            "network_time_s": self.network_time_s, "options": self.options,
            "egress_bytes": self.egress_bytes.tolist(), "ingress_bytes": self.ingress_bytes.tolist(),
            "local_bytes": self.local_bytes.tolist(), "local_copy_s": self.local_copy_s.tolist(),
            "stages": [vars(s) for s in self.stages],
            "busiest_links": [{"src": u, "dst": v, "bytes": b, "utilisation": x}
                              for u, v, b, x in self.busiest_links(top_links)],
            "stats": self.stats,
        }


# ---- algorithms -------------------------------------------------------------------------------
def _offdiag(traffic: np.ndarray, mask: np.ndarray | None = None):
    keep = traffic > 0
    np.fill_diagonal(keep, False)
    if mask is not None:
        keep &= mask
    src, dst = np.nonzero(keep)
    return src, dst, traffic[src, dst]


@dataclass
class CollectiveRun:
    """What an algorithm works with: the network, the stages it has run, and how a rank issues its
    messages. `yield from run.phase(name, traffic, mask)` runs one phase: every nonzero
    off-diagonal (masked) entry of `traffic` becomes one flow (message).

    message_gap_s (g, LogGP's gap): a rank issues its messages of a phase one after another, g
    apart, in peer order (r + 1, r + 2, ... mod W, empty ones skipped): its k-th message starts
    k * g after the phase. g = 0 (default): all at once. With g > 0 many small messages cost more
    than few large ones, which is what the hierarchical algorithm's aggregation saves.
    """

    net: FlowNetwork
    message_gap_s: float = 0.0
    stages: list = field(default_factory=list)

    def phase(self, name: str, traffic: np.ndarray, mask: np.ndarray | None = None):
        net = self.net
        src, dst, size = _offdiag(traffic, mask)
        start = net.env.now
        if len(src) == 0:
            return
        if self.message_gap_s <= 0:
            tr = net.transfer(src, dst, size, label=name)
            yield tr.done
            end = tr.end_s
        else:
            world = traffic.shape[0]
            order = np.lexsort(((dst - src) % world, src))                  # by source, then peer order
            src, dst, size = src[order], dst[order], size[order]
            first = np.r_[0, np.flatnonzero(np.diff(src)) + 1]              # (sources,) first message
            slot = np.arange(len(src)) - np.repeat(first, np.diff(np.r_[first, len(src)]))  # (F,) k
            done = []
            for k in range(int(slot.max()) + 1):
                if k:
                    yield net.env.timeout(self.message_gap_s)
                pick = slot == k
                done.append(net.transfer(src[pick], dst[pick], size[pick], label=f"{name}#{k}"))
            yield simpy.AllOf(net.env, [tr.done for tr in done])
            end = max(tr.end_s for tr in done)
        self.stages.append(Stage(name, start, end, float(size.sum()), len(src)))


def direct(run: CollectiveRun, traffic: np.ndarray):
    """Every rank sends to every peer at once."""
    yield from run.phase("direct", traffic)


def pairwise(run: CollectiveRun, traffic: np.ndarray):
    """W - 1 bulk-synchronous steps, step k: r -> (r + k) mod W."""
    world = traffic.shape[0]
    ranks = np.arange(world)
    for k in range(1, world):
        mask = np.zeros((world, world), dtype=bool)
        mask[ranks, (ranks + k) % world] = True
        yield from run.phase(f"step{k}", traffic, mask)


def proxy_of_local(gpus_per_node: int, nics_per_node: int) -> np.ndarray:
    """(gpus_per_node,) local proxy GPU of each local GPU: the first GPU that uses the same NIC.

    >>> proxy_of_local(8, 2).tolist()
    [0, 0, 0, 0, 4, 4, 4, 4]
    """
    nic = np.arange(gpus_per_node) * nics_per_node // gpus_per_node                  # (g,)
    first = {}
    for local, i in enumerate(nic):
        first.setdefault(int(i), local)
    return np.array([first[int(i)] for i in nic], dtype=np.int64)


def hierarchical_phases(traffic: np.ndarray, num_nodes: int, gpus_per_node: int, nics_per_node: int):
    """The three (W, W) matrices of the hierarchical algorithm: gather (+ intra-node), exchange, scatter.

    Conservation: every byte that changes node appears once in the exchange, and in gather/scatter
    once per move inside a node (not when the GPU is its own proxy). Diagonals are zero.
    """
    world = num_nodes * gpus_per_node
    T = np.asarray(traffic, dtype=float).reshape(num_nodes, gpus_per_node, num_nodes, gpus_per_node)  # (N, g, N, g)
    proxy = proxy_of_local(gpus_per_node, max(nics_per_node, 1))                      # (g,)
    same_node = np.eye(num_nodes, dtype=bool)                                         # (N, N)
    inter = np.where(same_node[:, None, :, None], 0.0, T)                             # (N, g, N, g)
    gather = np.where(same_node[:, None, :, None], T, 0.0)                            # (N, g, N, g) intra part
    exchange = np.zeros_like(T)
    scatter = np.zeros_like(T)
    for dst_local in range(gpus_per_node):
        p = proxy[dst_local]
        # (1) gather: (n, l) -> (n, p) all its bytes for (m != n, dst_local)
        to_proxy = inter[:, :, :, dst_local].sum(axis=2)                              # (N, g)
        for n in range(num_nodes):
            gather[n, :, n, p] += to_proxy[n]
        # (2) exchange: (n, p) -> (m, p) all node n's bytes for (m, dst_local)
        exchange[:, p, :, p] += inter[:, :, :, dst_local].sum(axis=1)                 # (N, N)
        # (3) scatter: (m, p) -> (m, dst_local) everything that arrived for dst_local
        from_proxy = inter[:, :, :, dst_local].sum(axis=(0, 1))                       # (N,)
        for m in range(num_nodes):
            scatter[m, p, m, dst_local] += from_proxy[m]
    out = tuple(x.reshape(world, world) for x in (gather, exchange, scatter))
    for matrix in out:
        np.fill_diagonal(matrix, 0.0)      # a GPU that is its own proxy keeps its bytes: no flow
    return out


def hierarchical(run: CollectiveRun, traffic: np.ndarray, chunks: int = 1):
    """Hierarchical all-to-all: gather to NIC proxies, inter-node exchange, scatter (module docstring)."""
    G = run.net.G
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or chunks < 1:
        raise ValueError(f"chunks={chunks} must be an integer >= 1")
    num_nodes, gpus_per_node = G.graph["num_nodes"], G.graph["gpus_per_node"]
    if num_nodes == 1:
        yield from direct(run, traffic)
        return
    phases = hierarchical_phases(traffic, num_nodes, gpus_per_node, G.graph.get("nics_per_node", 1))
    names = ("gather", "exchange", "scatter")
    env = run.net.env
    done = {}

    def chunk(i: int):
        for p, (name, matrix) in enumerate(zip(names, phases)):
            if i > 0:
                yield done[(i - 1, p)]
            label = name if chunks == 1 else f"{name}[{i}]"
            yield from run.phase(label, matrix / chunks)
            done[(i, p)].succeed()

    for i in range(chunks):
        for p in range(len(phases)):
            done[(i, p)] = env.event()
    yield simpy.AllOf(env, [env.process(chunk(i)) for i in range(chunks)])


def groupwise(run: CollectiveRun, traffic: np.ndarray):
    """LocMoE group-wise: intra-node exchange, then the inter-node remainder."""
    G = run.net.G
    node = np.array([G.nodes[g]["node"] for g in gpu_vertices(G)])                   # (W,)
    same = node[:, None] == node[None, :]                                             # (W, W)
    yield from run.phase("intra", traffic, same)
    yield from run.phase("inter", traffic, ~same)


two_d = hierarchical  # the function's former name ("2d" is the algorithm's alias in the registry)

#: The simulator's algorithms: canonical name -> generator, aliases accepted ("2d" -> hierarchical).
ALGORITHMS = AlgorithmTable("simulate")


def _local_copy_s(G: nx.DiGraph, local: np.ndarray) -> np.ndarray:
    """(W,) seconds of each rank's copy of its diagonal: read + write at the GPU's copy rate, or at
    the rate NCCL's own kernel copies a self-chunk where the topology's phase model measured it."""
    phase_model = G.graph.get("phase_model")
    if phase_model is not None and phase_model.self_copy:
        copy_Bps = np.array([phase_model.self_copy_Bps(b) for b in local])                 # (W,)
    else:
        copy_Bps = np.full(len(local), float(G.graph["gpu"]["achieved_hbm_Bps"]))
    return 2.0 * local / copy_Bps


def estimate_all_to_all(G: nx.DiGraph, traffic_bytes, *, routes: Routes | None = None,
                        links: LinkModels | None = None, local_copy: bool = True) -> float:
    """A direct all-to-all's time from link loads, without simulating: the "estimate" fidelity.

    t = alpha + max(max_e L_e / C_e, max_r (S_r + R_r) / E_r) + max path latency, and at least the
    longest local copy; L_e the bytes every route puts on link e, C_e its bandwidth in this
    collective (the link model's scale for its kind), E_r the GPU engine of the duplex model
    (when the topology has one), S_r / R_r what rank r sends / receives.

    Why it holds: max-min fair sharing never lets a link carry more than its capacity, so the
    busiest resource needs at least L_e / C_e after the start-up latency: the formula is a lower
    bound of `simulate_all_to_all`'s direct time. It is the exact time when the busiest resource
    stays saturated until the end, which max-min fairness gives when every flow through it is
    limited there (they then drain together): uniform and Dirichlet-skewed MoE traffic on
    NVSwitch nodes, fat-trees and rails (tests/test_estimate.py: within 0.03% of exact on those,
    the duplex-engine model of a calibrated node included). It is low when the flows through the
    bottleneck end at different times because some are limited elsewhere: heavy-tailed sizes,
    -0.56% on a 64-GPU fat-tree, -0.24% on a DGX-1 mesh, -1.7% on a calibrated 4-GPU H200 node
    with duplex engines (benchmarks/RESULTS.md, tests/test_estimate.py); a heavy-tailed
    case on one 8-GPU NVSwitch node was once measured 5.9% low. No correction for few flows per
    port is applied.
    Cost: one pass over the W (W - 1) routes, no event loop.
    """
    routes = validate_topology(G) if routes is None else routes
    links = LinkModels.from_topology(G) if links is None else links
    traffic = np.asarray(traffic_bytes, dtype=float)                                  # (W, W)
    world = routes.world
    if traffic.shape != (world, world):
        raise ValueError(f"traffic_bytes has shape {traffic.shape}, expected ({world}, {world}) for topology "
                         f"{G.graph.get('name')} with {world} GPUs")
    if not np.all(np.isfinite(traffic)) or traffic.min(initial=0.0) < 0:
        raise ValueError("traffic_bytes must be finite and >= 0")
    rates = links.rates(traffic)
    capacity = routes.capacity_Bps.copy()                                             # (L,)
    for kind, factor in (rates.bandwidth_scale_by_kind or {}).items():
        capacity[np.array([G.edges[e].get("kind") == kind for e in routes.edges], dtype=bool)] *= factor
    off = traffic - np.diag(np.diag(traffic))                                          # (W, W)
    src, dst = np.nonzero(off > 0)
    network_s = 0.0
    if len(src):
        ids = routes.edge_ids(src, dst)                                                # (F, H), -1 padded
        load = np.zeros(len(capacity))                                                 # (L,)
        used = ids >= 0
        np.add.at(load, ids[used], np.broadcast_to(off[src, dst][:, None], ids.shape)[used])
        busiest = float((load / capacity).max())
        if rates.gpu_engine_Bps is not None:
            engines = np.broadcast_to(np.asarray(rates.gpu_engine_Bps, dtype=float), (world,))
            busiest = max(busiest, float(((off.sum(axis=1) + off.sum(axis=0)) / engines).max()))
        alpha_s = rates.alpha_s if links.models else float(G.graph.get("alpha_s", 0.0))
        network_s = alpha_s + busiest + float(routes.path_latency_s[src, dst].max())
    copy_s = _local_copy_s(G, np.diag(traffic).copy()) if local_copy else np.zeros(world)
    return float(max(network_s, copy_s.max(initial=0.0)))


def simulate_all_to_all(G: nx.DiGraph, traffic_bytes, algorithm: str = "direct", *, alpha_s: float | None = None,
                        message_gap_s: float = 0.0, local_copy: bool = True, routes: Routes | None = None,
                        drain_tolerance: float = 0.0, links: LinkModels | None = None,
                        solver: str = "auto", **options) -> CollectiveResult:
    """Simulate one all-to-all of `traffic_bytes` (W, W) on topology G with `algorithm`.

    Options: alpha_s (default: the link models' start-up latency, G.graph["alpha_s"] of a loaded
    topology), message_gap_s (see CollectiveRun; default 0), local_copy (see module docstring),
    routes (a precomputed Routes(G)), drain_tolerance (0 = exact; see FlowNetwork: an
    approximation that makes uneven traffic on hundreds of GPUs tractable), links (the link
    model, a `lshsim.calibration.LinkModels`; default `LinkModels.from_topology(G)`, the one parsed
    when G was built), solver (the max-min solver of `FlowNetwork`: "auto", "incremental" or
    "vectorised"; the same times, `stats["solver"]` says which ran), and the algorithm's own
    (hierarchical: chunks). `algorithm` is a name or alias of
    `ALGORITHMS`; the result carries its canonical name.

    >>> from lshsim.topology import load_topology
    >>> G = load_topology("h100-nvswitch")
    >>> r = simulate_all_to_all(G, uniform_traffic(8, 8 * 450e6), local_copy=False)
    >>> round(r.time_s * 1e3, 3)   # alpha + 2 hops + 7 * 450 MB / 450 GB/s
    7.012
    """
    algorithm = canonical_algorithm(algorithm, side="simulate")
    simulate_fn = ALGORITHMS[algorithm]
    routes = validate_topology(G) if routes is None else routes
    world = routes.world
    traffic = np.asarray(traffic_bytes, dtype=float)                                  # (W, W)
    if traffic.shape != (world, world):
        raise ValueError(f"traffic_bytes has shape {traffic.shape}, expected ({world}, {world}) for topology "
                         f"{G.graph.get('name')} with {world} GPUs")
    if not np.all(np.isfinite(traffic)) or traffic.min(initial=0.0) < 0:
        raise ValueError("traffic_bytes must be finite and >= 0")
    if not np.isfinite(message_gap_s) or message_gap_s < 0:
        raise ValueError(f"message_gap_s={message_gap_s} must be a finite number >= 0")
    # this collective's rates from the link model (lshsim.calibration); the network is built for
    # this one call, so its capacities are this collective's own and the graph is left as it is
    links = LinkModels.from_topology(G) if links is None else links
    rates = links.rates(traffic)
    if alpha_s is None and links.models:
        alpha_s = rates.alpha_s
    net = FlowNetwork(G, alpha_s=alpha_s, routes=routes, drain_tolerance=drain_tolerance,
                      bandwidth_scale_by_kind=rates.bandwidth_scale_by_kind, gpu_engine_Bps=rates.gpu_engine_Bps,
                      solver=solver)
    run = CollectiveRun(net, message_gap_s=float(message_gap_s))
    process = net.env.process(simulate_fn(run, traffic, **options))
    net.env.run(until=process)
    stages = run.stages
    local = np.diag(traffic).copy()                                                    # (W,)
    off = traffic - np.diag(local)
    copy_s = _local_copy_s(G, local) if local_copy else np.zeros(world)  # (W,)
    network_s = max((s.end_s for s in stages), default=0.0)
    time_s = float(max(network_s, copy_s.max(initial=0.0)))
    stages.sort(key=lambda s: (s.start_s, s.name))
    return CollectiveResult(
        algorithm=algorithm, topology=G.graph.get("name", ""), time_s=time_s, network_time_s=float(network_s),
        egress_bytes=off.sum(axis=1), ingress_bytes=off.sum(axis=0), local_bytes=local, local_copy_s=copy_s,
        stages=stages, edges=net.edges, link_bytes=net.link_bytes.copy(), capacity_Bps=net.capacity_Bps,
        busiest=busiest_links(net.edges, net.link_bytes, net.capacity_Bps, time_s, 10),
        options={"alpha_s": net.alpha_s, "message_gap_s": float(message_gap_s), "local_copy": local_copy,
                 "drain_tolerance": net.drain_tolerance, **rates.info, **options}, stats=dict(net.stats))
