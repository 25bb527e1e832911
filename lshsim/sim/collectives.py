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
- groupwise: the intra-node exchange first, then only the inter-node remainder (direct, every
             peer at once). In a step with MindSpore's replicated tensor-parallel layout the step
             first rewrites the matrix as LocMoE's group-wise all-to-all (each TP rank sends 1 / TP
             across, then the TP group all-gathers: `lshsim.sim.tensor_parallel.tp_groupwise_bytes`),
             whose two parts are these two phases.
On one node, hierarchical and groupwise reduce to direct.

Link model: every all-to-all runs at the rates its traffic gets from the topology's link models
(`links`, default `LinkModels.from_topology(G)`, parsed from the topology's `calibration:` block
when it was built): a size-dependent bus bandwidth per link class, the GPUs' duplex engines and
the links' cap. The model, its fits and its sources: see `lshsim.calibration`. Without a
calibration the edges keep their nominal bandwidths. With a calibrated NCCL channel term
(`calibration.a2a_nccl_channels`; cause and model: `lshsim.sim.nccl`) a direct all-to-all takes at
least alpha_s + t_channel, the time of the busiest per-peer p2p channel (options report
a2a_channel_ratio, a2a_channel_floor_s and a2a_channel_bound). The term exists on one-node
topologies only, where hierarchical and groupwise run one direct phase too
(`CHANNEL_TERM_ALGORITHMS`); pairwise (one call per step) does not get it.
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
from lshsim.topology.routing import ALL_PAIRS_MAX_WORLD, Routes, gpu_vertices, validate_topology

__all__ = ["phase_alpha_s", "INTERNODE_KEYS", "simulate_all_to_all", "ring_all_reduce", "hierarchical_all_reduce", "ring_orders", "AllReduceResult", "estimate_all_to_all", "estimate_collective", "ESTIMATED_ALGORITHMS", "fed_port_time", "processor_sharing_levels", "FEW_FLOWS_PER_PORT", "CollectiveResult", "CollectiveRun", "Stage", "ALGORITHMS", "uniform_traffic",
           "proxy_of_local", "hierarchical_phases", "direct", "pairwise", "hierarchical", "groupwise"]


#: the algorithms a calibrated NCCL channel term applies to (on one node each is one grouped send/recv)
CHANNEL_TERM_ALGORITHMS = ("direct", "hierarchical", "groupwise")


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
            "network_time_s": self.network_time_s,
            "options": {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in self.options.items()},
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


def phase_alpha_s(G: nx.DiGraph, alpha_s: float, traffic) -> float:
    """The start-up of one all-to-all phase of `traffic` (W, W): where the phase sends bytes between GPUs of
    different nodes, max(alpha_s, L + max over ranks of g x p x s / (s + S0)), L the topology's start-up across nodes
    (`calibration.a2a_internode_alpha_s`, G.graph["a2a_internode_alpha_s"], default 0), g its cost per remote peer
    (`calibration.a2a_remote_peer_s`, default 0), S0 the bytes per rank at which half of g is paid
    (`calibration.a2a_remote_peer_ramp_bytes`; absent: g at every size), p a rank's peers on other nodes in the phase
    and s the bytes it sends to other ranks; else (or with none given) alpha_s. Cause: NCCL's all-to-all across nodes
    goes through the network transport (its proxy thread, one connection per remote peer), whose fixed cost published
    nccl-tests logs show at 25-45 us for a whole small all-to-all on 2 to 16 ranks, hardly growing with the remote
    peers at small sizes but by a few us per remote peer at large ones (the published-case model's form,
    `lshsim.sim.published.alltoall_time_s`; data/topologies/README.md), where one node's NVLink all-to-all starts in
    about 10 us.

    >>> from lshsim.topology import build_topology
    >>> spec = {"name": "m", "gpu": "h100", "nodes": 2, "gpus_per_node": 2, "alpha_s": 1e-5,
    ...         "intra": {"kind": "nvswitch"}, "inter": {"kind": "fat_tree", "nics_per_node": 2, "nic_gbps": 400},
    ...         "calibration": {"a2a_internode_alpha_s": 4e-5, "a2a_remote_peer_s": 1e-6}}
    >>> G = build_topology(spec)
    >>> within, across = np.zeros((4, 4)), np.zeros((4, 4))
    >>> within[0, 1] = across[0, 2] = across[0, 3] = 1e6
    >>> phase_alpha_s(G, 1e-5, within), round(phase_alpha_s(G, 1e-5, across), 9)     # 40 us + 2 remote peers x 1 us
    (1e-05, 4.2e-05)
    >>> spec["calibration"]["a2a_remote_peer_ramp_bytes"] = 2e6                        # the 2 MB a rank sends: half of g
    >>> round(phase_alpha_s(build_topology(spec), 1e-5, across), 9)
    4.1e-05
    """
    if not _has_internode_terms(G):
        return alpha_s
    traffic = np.asarray(traffic, dtype=float)
    src, dst = np.nonzero(traffic > 0)
    return _pairs_alpha_s(G, alpha_s, src, dst, traffic[src, dst])


def _has_internode_terms(G: nx.DiGraph) -> bool:
    return bool(G.graph.get("a2a_internode_alpha_s") or G.graph.get("a2a_remote_peer_s"))


def _pairs_alpha_s(G: nx.DiGraph, alpha_s: float, src: np.ndarray, dst: np.ndarray,
                   size: np.ndarray | None = None) -> float:
    """`phase_alpha_s` of a phase given as its distinct (source, destination) rank pairs with bytes (`size`, the
    bytes of each pair; needed only with a ramp)."""
    per_node = int(G.graph.get("gpus_per_node") or 0)
    if per_node <= 0 or len(src) == 0:
        return alpha_s
    src, dst = np.asarray(src), np.asarray(dst)
    across = src // per_node != dst // per_node
    if not across.any():
        return alpha_s
    peers = np.bincount(src[across]).astype(float)          # each rank's remote peers
    internode = float(G.graph.get("a2a_internode_alpha_s") or 0.0)
    per_peer = float(G.graph.get("a2a_remote_peer_s") or 0.0)
    ramp_bytes = float(G.graph.get("a2a_remote_peer_ramp_bytes") or 0.0)
    if ramp_bytes > 0 and per_peer > 0:
        if size is None:
            raise ValueError("a ramped cost per remote peer needs the phase's bytes per pair")
        sent = np.bincount(src, weights=np.asarray(size, dtype=float), minlength=len(peers))[:len(peers)]
        term = float((peers * sent / (sent + ramp_bytes)).max())
    else:
        term = float(peers.max())                            # the most remote peers one rank sends to
    return max(alpha_s, internode + per_peer * term)


#: a topology's terms of the start-up of an all-to-all phase across nodes (`phase_alpha_s`; G.graph and calibration keys)
INTERNODE_KEYS = ("a2a_internode_alpha_s", "a2a_remote_peer_s", "a2a_remote_peer_ramp_bytes")


def _internode_option(G: nx.DiGraph) -> dict:
    """The topology's start-up terms across nodes for a result's options (those it has), else {}."""
    return {key: float(G.graph[key]) for key in INTERNODE_KEYS if G.graph.get(key) is not None}


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
    #: apply the topology's inter-node start-up to phases that cross nodes (`phase_alpha_s`); False
    #: when the caller set alpha_s itself
    internode_alpha: bool = True

    def startup_s(self, traffic: np.ndarray, mask: np.ndarray | None = None) -> float:
        """The start-up `phase` gives a phase of `traffic` (masked): alpha_s, or `phase_alpha_s` where the
        topology has start-up terms across nodes and the caller did not set alpha_s."""
        if self.internode_alpha and _has_internode_terms(self.net.G):
            src, dst, size = _offdiag(traffic, mask)
            return _pairs_alpha_s(self.net.G, self.net.alpha_s, src, dst, size)
        return self.net.alpha_s

    def phase(self, name: str, traffic: np.ndarray, mask: np.ndarray | None = None, alpha_s: float | None = None,
              streamed: bool = False):
        """One phase (class docstring); alpha_s: its start-up if given, else `startup_s` of its messages.
        streamed=True: a later piece of a stage that one kernel streams (`node_dedup`'s chunks after the first):
        no start-up and no path latency (the stream's first piece paid both; a piece follows the one before it
        as soon as that one has left)."""
        net = self.net
        src, dst, size = _offdiag(traffic, mask)
        start = net.env.now
        if len(src) == 0:
            return
        alpha = net.alpha_s
        if streamed:
            alpha = 0.0
        elif alpha_s is not None:
            alpha = float(alpha_s)
        elif self.internode_alpha and _has_internode_terms(net.G):
            alpha = _pairs_alpha_s(net.G, net.alpha_s, src, dst, size)
        if self.message_gap_s <= 0:
            tr = net.transfer(src, dst, size, alpha_s=alpha, label=name, path_latency=not streamed)
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
                done.append(net.transfer(src[pick], dst[pick], size[pick], alpha_s=alpha, label=f"{name}#{k}",
                                         path_latency=not streamed))
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


#: the fed-port correction of `estimate_all_to_all` looks at ports that carry at most this many flows
#: ("few flows per port"); a port with more keeps the plain load bound (measured within 0.9% of exact
#: on multi-node cases up to 1,024 GPUs); the correction costs O(n^2) per port.
FEW_FLOWS_PER_PORT = 128
#: ... and at most this many of the busiest such ports (by load / capacity; each costs ~0.2 s with 200 flows).
CORRECTED_PORTS = 8


def processor_sharing_levels(sizes, capacity_Bps: float) -> tuple[np.ndarray, np.ndarray]:
    """The service curve of one port shared fairly (processor sharing) by flows of `sizes`, all
    started at 0 and limited only there: (times, levels), piecewise linear, starting at (0, 0).
    At `times[k]` every flow has received min(size, levels[k]) bytes; flow k (sorted) is then done:
    T(l) = sum_i min(x_i, l) / C.

    >>> t, l = processor_sharing_levels([1.0, 3.0], 2.0)
    >>> t.tolist(), l.tolist()      # both at 1 B/s until the small one is done at 1 s, then 2 B/s
    ([0.0, 1.0, 2.0], [0.0, 1.0, 3.0])
    """
    x = np.sort(np.asarray(sizes, dtype=float))                                          # (n,)
    n = len(x)
    done = (np.cumsum(x) + (n - 1 - np.arange(n)) * x) / float(capacity_Bps)              # (n,)
    return np.r_[0.0, done], np.r_[0.0, x]


def _incidence(resources: np.ndarray):
    """resource id -> the flows (rows of `resources`) that use it, as a function (CSR, built once)."""
    rows = np.broadcast_to(np.arange(resources.shape[0])[:, None], resources.shape)[resources >= 0]   # (nnz,)
    ids = resources[resources >= 0]                                                                  # (nnz,)
    order = np.argsort(ids, kind="stable")
    ids, rows = ids[order].astype(np.int64), rows[order]
    bounds = np.searchsorted(ids, np.arange(int(ids.max(initial=-1)) + 2))                         # (R+1,)
    return lambda q: rows[bounds[q]:bounds[q + 1]] if q + 1 < len(bounds) else rows[:0]


def fed_port_time(resources: np.ndarray, size: np.ndarray, capacity: np.ndarray, port: int, users=None) -> float:
    """The fed-port estimate of how long port `port` needs (s, from when the flows enter):
    max over tau of tau + sum_f (s_f - A_f(tau)) / C_p, A_f(tau) = min over f's other resources q
    of min(s_f, l_q(tau)), l_q the processor-sharing level of q (`processor_sharing_levels`).

    resources: (F, H) resource ids of every flow, -1 padded; size (F,) bytes; capacity (R,) B/s.
    Derivation (`estimate_all_to_all`): a flow's bytes reach `port` no faster than its other ports
    hand them out, and max-min fairness hands them out about as processor sharing does; a server
    of capacity C fed by arrivals A(tau) cannot finish before tau + (S - A(tau)) / C for any tau.
    tau = 0 gives the load bound S / C. `users`: resource id -> its flows (`_incidence`, reused
    between ports).
    """
    users = _incidence(resources) if users is None else users
    through = users(port)                                                                 # (n,)
    if len(through) == 0:
        return 0.0
    curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    feeds = []
    for f in through:
        others = [int(q) for q in resources[f] if q >= 0 and q != port]
        for q in others:
            if q not in curves:
                curves[q] = processor_sharing_levels(size[users(q)], capacity[q])
        feeds.append(others)
    taus = np.unique(np.concatenate([np.zeros(1)] + [curves[q][0] for q in curves]))      # (K,) breakpoints
    arrived = np.zeros(len(taus))                                                         # (K,) sum_f A_f(tau)
    for f, others in zip(through, feeds):
        a = np.full(len(taus), size[f])
        for q in others:
            a = np.minimum(a, np.interp(taus, *curves[q]))
        arrived += a
    total = float(size[through].sum())
    return float((taus + (total - arrived) / capacity[port]).max())


def _estimate_inputs(G, traffic_bytes, routes, links):
    """(routes, links, (W, W) float traffic) of an estimate, the traffic checked against the topology."""
    routes = validate_topology(G) if routes is None else routes
    links = LinkModels.from_topology(G) if links is None else links
    traffic = np.asarray(traffic_bytes, dtype=float)                                  # (W, W)
    world = routes.world
    if traffic.shape != (world, world):
        raise ValueError(f"traffic_bytes has shape {traffic.shape}, expected ({world}, {world}) for topology "
                         f"{G.graph.get('name')} with {world} GPUs")
    if not np.all(np.isfinite(traffic)) or traffic.min(initial=0.0) < 0:
        raise ValueError("traffic_bytes must be finite and >= 0")
    return routes, links, traffic


def estimate_all_to_all(G: nx.DiGraph, traffic_bytes, *, routes: Routes | None = None,
                        links: LinkModels | None = None, local_copy: bool = True, correction: bool = True,
                        rates_of=None, channel_floor: bool = True) -> float:
    """A direct all-to-all's time from link loads, without simulating: the "estimate" fidelity.

    Load bound (correction=False): t = alpha + max(max_e L_e / C_e, max_r (S_r + R_r) / E_r) + max
    path latency, and at least the longest local copy; L_e the bytes every route puts on link e,
    C_e its bandwidth in this collective (the link model's scale for its kind), E_r the GPU engine
    of the duplex model (when the topology has one), S_r / R_r what rank r sends / receives.
    Max-min fair sharing never lets a link carry more than its capacity, so the busiest resource
    needs at least L_e / C_e after the start-up latency: a lower bound of `simulate_all_to_all`'s
    direct time, and the exact time when the busiest resource stays saturated until the end, which
    max-min fairness gives when every flow through it is limited there (they drain together):
    uniform and Dirichlet-skewed MoE traffic on NVSwitch nodes, fat-trees and rails
    (tests/test_estimate.py: within 0.03% of exact on those).

    Correction for few flows per port (correction=True, default): the bound is low when the busiest
    port idles because its flows are held back elsewhere, which happens when a port carries few
    flows of uneven sizes (heavy tails on one NVSwitch node: up to 9.4% low over 60 draws). A flow
    f through port p also crosses other ports q (its source's egress, its destination's ingress,
    the GPU engines); there, max-min fairness shares q about as processor sharing (PS) does, so f's
    bytes leave q no faster than the PS level l_q(tau) (all flows at q have received min(s, l) at
    time T(l) = sum_i min(s_i, l) / C_q). Port p, fed by A(tau) = sum_f min(s_f, min_q l_q(tau)),
    then needs at least max over tau of tau + (S_p - A(tau)) / C_p (`fed_port_time`; tau = 0 is the
    load bound). This is evaluated, exactly, at the PS breakpoints, on the CORRECTED_PORTS busiest
    ports that carry at most FEW_FLOWS_PER_PORT flows, and t uses the larger of it and the bound.
    Where it holds: it is no longer a bound (a flow may get more than its PS share at q when q's
    other flows are held elsewhere, so it can be high); it assumes one direct phase started at
    once. Measured against exact (benchmarks/RESULTS.md, tests/test_estimate.py), Pareto(1.5) pair
    sizes, bound -> corrected, range (mean |error|): one 8-GPU H100 NVSwitch node (60 draws)
    -9.4%..0% (0.64%) -> -1.1%..+5.5% (0.24%); DGX-1 V100 mesh (60) -3.8%..+0.1% (0.30%) ->
    -0.7%..+1.2% (0.10%); calibrated 4-GPU H200 node with duplex engines (60) -15.3%..-0.2% (4.7%) ->
    -4.8%..+2.8% (0.81%); 2 x 8 V100 (20) -3.2%..0% (0.96%) -> -0.1%..0% (0.00%); 4 x 8 A100 (10)
    -3.0%..0% (0.58%) -> 0%..+0.6% (0.11%); 64-GPU fat-tree (3) -2.8%..0% (0.96%) -> 0%..+1.7% (0.70%).
    Uniform and Dirichlet-skewed traffic: unchanged (the bound was exact). Ports with more flows keep
    the bound, which was within 0.9% of exact on every multi-node case tried up to 1,024 GPUs.
    Cost: one pass over the W (W - 1) routes, plus the correction's O(n^2) per corrected port.
    rates_of: the traffic the link model's rates are taken from (default traffic_bytes; a phase of a
    multi-phase collective passes the whole collective's, as the simulator does).
    channel_floor: with a calibrated NCCL channel term (`lshsim.sim.nccl`), the time is at least
    alpha + its t_channel (a direct all-to-all; a phase of another algorithm passes False).
    """
    routes, links, traffic = _estimate_inputs(G, traffic_bytes, routes, links)
    world = routes.world
    rates = links.rates(traffic if rates_of is None else rates_of)
    capacity = routes.capacity_Bps.copy()                                             # (L,)
    for kind, factor in (rates.bandwidth_scale_by_kind or {}).items():
        capacity[np.array([G.edges[e].get("kind") == kind for e in routes.edges], dtype=bool)] *= factor
    off = _without_diagonal(traffic)                                                   # (W, W)
    src, dst = np.nonzero(off > 0)
    network_s = 0.0
    if len(src):
        size = off[src, dst]                                                           # (F,)
        ids = routes.edge_ids(src, dst)                                                # (F, H), -1 padded
        load = np.zeros(len(capacity))                                                 # (L,)
        used = ids >= 0
        np.add.at(load, ids[used], np.broadcast_to(size[:, None], ids.shape)[used])
        busiest = float((load / capacity).max())
        resources, resource_Bps, resource_load = ids, capacity, load
        if rates.gpu_engine_Bps is not None:
            engines = np.broadcast_to(np.asarray(rates.gpu_engine_Bps, dtype=float), (world,))
            busiest = max(busiest, float(((off.sum(axis=1) + off.sum(axis=0)) / engines).max()))
            if correction:
                resources = np.concatenate([ids, np.stack([src, dst], axis=1) + len(capacity)], axis=1)
                resource_Bps = np.concatenate([capacity, engines])
                resource_load = np.concatenate([load, off.sum(axis=1) + off.sum(axis=0)])
        if correction:
            busiest = max(busiest, _fed_port_correction(routes, resources, size, resource_Bps, resource_load,
                                                        len(capacity), bool(rates.bandwidth_scale_by_kind)))
        alpha_s = phase_alpha_s(G, rates.alpha_s if links.models else float(G.graph.get("alpha_s", 0.0)), off)
        # the longest route's latency, from these flows' own routes (Routes.path_latency_s would walk all W^2 pairs)
        latency = np.where(used, routes.latency_s[np.maximum(ids, 0)], 0.0).sum(axis=1).max()
        network_s = alpha_s + busiest + float(latency)
        if channel_floor and rates.channel_floor_s > 0:
            network_s = max(network_s, alpha_s + rates.channel_floor_s)
    copy_s = _local_copy_s(G, np.diag(traffic).copy()) if local_copy else np.zeros(world)
    return float(max(network_s, copy_s.max(initial=0.0)))


def _fed_port_correction(routes: Routes, resources: np.ndarray, size: np.ndarray, capacity: np.ndarray,
                         load: np.ndarray, num_links: int, scaled: bool) -> float:
    """The largest `fed_port_time` over the busiest ports with few flows (estimate_all_to_all)."""
    binding = np.ones(len(capacity), dtype=bool)
    if not scaled and routes.world <= ALL_PAIRS_MAX_WORLD:
        binding[:num_links] = routes.binding_edges()      # edges that can never limit a flow stay out
    resources = np.where((resources >= 0) & binding[np.maximum(resources, 0)], resources, -1)
    flows_at = np.bincount(resources[resources >= 0], minlength=len(capacity))         # (R,)
    candidates = np.flatnonzero((flows_at > 0) & (flows_at <= FEW_FLOWS_PER_PORT))
    if len(candidates) == 0:
        return 0.0
    candidates = candidates[np.argsort(-(load[candidates] / capacity[candidates]), kind="stable")][:CORRECTED_PORTS]
    near = np.isin(resources, candidates).any(axis=1)           # flows through a candidate port
    ports = np.unique(resources[near])
    ports = ports[ports >= 0]
    keep = np.isin(resources, ports).any(axis=1)                 # ... and the flows sharing a port with them
    sub, sub_size = resources[keep], size[keep]
    users = _incidence(sub)
    return max(fed_port_time(sub, sub_size, capacity, int(p), users) for p in candidates)


#: the algorithms `estimate_collective` estimates phase by phase (others are simulated)
ESTIMATED_ALGORITHMS = ("direct", "groupwise", "hierarchical", "pairwise")


def _without_diagonal(matrix: np.ndarray) -> np.ndarray:
    """`matrix` with a zero diagonal: itself when it already has one, else one copy (no (W, W) np.diag)."""
    if not np.any(np.diagonal(matrix)):
        return matrix
    out = np.array(matrix, dtype=float)
    np.fill_diagonal(out, 0.0)
    return out


def _estimate_phases(G: nx.DiGraph, traffic: np.ndarray, algorithm: str, options: dict) -> list[tuple[str, np.ndarray]]:
    """The (name, (W, W) matrix) phases an algorithm runs one after another (ESTIMATED_ALGORITHMS)."""
    world = traffic.shape[0]
    if algorithm == "direct":
        return [("direct", traffic)]
    if algorithm == "pairwise":
        ranks = np.arange(world)
        out = []
        for k in range(1, world):
            step = np.zeros_like(traffic)
            step[ranks, (ranks + k) % world] = traffic[ranks, (ranks + k) % world]
            out.append((f"step{k}", step))
        return out
    num_nodes, per_node = G.graph["num_nodes"], G.graph["gpus_per_node"]
    if algorithm == "groupwise":
        node = np.array([G.nodes[g]["node"] for g in gpu_vertices(G)])                 # (W,)
        same = node[:, None] == node[None, :]
        return [("intra", np.where(same, traffic, 0.0)), ("inter", np.where(same, 0.0, traffic))]
    if num_nodes == 1:
        return [("direct", traffic)]
    if options.get("chunks", 1) != 1:
        raise ValueError("estimate_collective: hierarchical with chunks > 1 is not estimated (simulate it)")
    phases = hierarchical_phases(traffic, num_nodes, per_node, G.graph.get("nics_per_node", 1))
    return list(zip(("gather", "exchange", "scatter"), phases))


def estimate_collective(G: nx.DiGraph, traffic_bytes, algorithm: str = "direct", *, routes: Routes | None = None,
                        links: LinkModels | None = None, local_copy: bool = True, correction: bool = True,
                        **options) -> CollectiveResult:
    """The "estimate" fidelity of `simulate_all_to_all`, as a CollectiveResult: every phase of the
    algorithm (direct: one; groupwise: intra then inter; hierarchical: gather, exchange, scatter,
    chunks=1; pairwise: W - 1 steps) is estimated from its link loads with `estimate_all_to_all`
    (local_copy=False), the phases run one after another (each pays alpha and its path latency, as
    in the simulator), and the local copy runs alongside. link_bytes are the link loads (exact:
    routing decides them, not timing); stats say {"estimate": True, "correction": ...}.
    Algorithms outside ESTIMATED_ALGORITHMS are refused (ValueError): simulate them.
    """
    algorithm = canonical_algorithm(algorithm, side="simulate")
    if algorithm not in ESTIMATED_ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} has no estimate (estimated: {', '.join(ESTIMATED_ALGORITHMS)}); "
                         f"simulate it (fidelity exact or tolerance)")
    routes, links, traffic = _estimate_inputs(G, traffic_bytes, routes, links)
    world = routes.world
    local = np.diag(traffic).copy()                                                    # (W,)
    off = _without_diagonal(traffic)
    stages, clock = [], 0.0
    link_bytes = np.zeros(routes.num_edges)
    for name, matrix in _estimate_phases(G, off, algorithm, options):
        matrix = _without_diagonal(matrix)
        src, dst = np.nonzero(matrix > 0)
        if len(src) == 0:
            continue
        seconds = estimate_all_to_all(G, matrix, routes=routes, links=links, local_copy=False, correction=correction,
                                      rates_of=traffic, channel_floor=algorithm in CHANNEL_TERM_ALGORITHMS)
        ids = routes.edge_ids(src, dst)
        used = ids >= 0
        np.add.at(link_bytes, ids[used], np.broadcast_to(matrix[src, dst][:, None], ids.shape)[used])
        stages.append(Stage(name, clock, clock + seconds, float(matrix[src, dst].sum()), len(src)))
        clock += seconds
    copy_s = _local_copy_s(G, local) if local_copy else np.zeros(world)
    time_s = float(max(clock, copy_s.max(initial=0.0)))
    capacity = routes.capacity_Bps.copy()
    rates = links.rates(traffic)
    alpha_s = rates.alpha_s if links.models else float(G.graph.get("alpha_s", 0.0))
    return CollectiveResult(
        algorithm=algorithm, topology=G.graph.get("name", ""), time_s=time_s, network_time_s=float(clock),
        egress_bytes=off.sum(axis=1), ingress_bytes=off.sum(axis=0), local_bytes=local, local_copy_s=copy_s,
        stages=stages, edges=routes.edges, link_bytes=link_bytes, capacity_Bps=capacity,
        busiest=busiest_links(routes.edges, link_bytes, capacity, time_s, 10),
        options={"alpha_s": alpha_s, "local_copy": local_copy, "fidelity": "estimate", "correction": correction,
                 **_internode_option(G), **rates.info, **options},
        stats={"estimate": True, "correction": correction, "phases": len(stages)})


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
    internode_alpha = alpha_s is None           # a start-up the caller set is the start-up of every phase
    if alpha_s is None and links.models:
        alpha_s = rates.alpha_s
    net = FlowNetwork(G, alpha_s=alpha_s, routes=routes, drain_tolerance=drain_tolerance,
                      bandwidth_scale_by_kind=rates.bandwidth_scale_by_kind, gpu_engine_Bps=rates.gpu_engine_Bps,
                      solver=solver)
    run = CollectiveRun(net, message_gap_s=float(message_gap_s), internode_alpha=internode_alpha)
    process = net.env.process(simulate_fn(run, traffic, **options))
    net.env.run(until=process)
    stages = run.stages
    local = np.diag(traffic).copy()                                                    # (W,)
    off = traffic - np.diag(local)
    copy_s = _local_copy_s(G, local) if local_copy else np.zeros(world)  # (W,)
    network_s = max((s.end_s for s in stages), default=0.0)
    channel_bound = algorithm in CHANNEL_TERM_ALGORITHMS and rates.channel_floor_s > 0 and stages \
        and net.alpha_s + rates.channel_floor_s > network_s
    if channel_bound:   # NCCL's busiest per-peer channel binds, not the links (lshsim.sim.nccl)
        network_s = net.alpha_s + rates.channel_floor_s
    time_s = float(max(network_s, copy_s.max(initial=0.0)))
    stages.sort(key=lambda s: (s.start_s, s.name))
    return CollectiveResult(
        algorithm=algorithm, topology=G.graph.get("name", ""), time_s=time_s, network_time_s=float(network_s),
        egress_bytes=off.sum(axis=1), ingress_bytes=off.sum(axis=0), local_bytes=local, local_copy_s=copy_s,
        stages=stages, edges=net.edges, link_bytes=net.link_bytes.copy(), capacity_Bps=net.capacity_Bps,
        busiest=busiest_links(net.edges, net.link_bytes, net.capacity_Bps, time_s, 10),
        options={"alpha_s": net.alpha_s, "message_gap_s": float(message_gap_s), "local_copy": local_copy,
                 "drain_tolerance": net.drain_tolerance, **(_internode_option(G) if internode_alpha else {}),
                 **rates.info,
                 **({"a2a_channel_bound": bool(channel_bound)} if rates.channel_floor_s > 0 else {}), **options},
        stats=dict(net.stats))


# ---- the ring all-reduce (data-parallel gradient synchronisation) ----------------------------------
@dataclass(frozen=True)
class AllReduceResult:
    """A ring all-reduce of `size_bytes` per rank over each group of `groups`, all groups at once.

    time_s:      2 (g - 1) x step_s (g ranks per group; 0 for g = 1 or size 0)
    step_s:      one ring step: every rank sends size / (g x channels) bytes to its ring successor
                 on each channel, all groups and channels at once on the shared topology
    group_size:  g
    channels:    rings per group (NCCL's channels; each carries size / channels)
    bus_Bps:     size x 2 (g - 1) / g / time_s, nccl-tests' "busbw" of the call (0 when time_s is 0)
    """

    time_s: float
    step_s: float
    group_size: int
    channels: int
    bus_Bps: float


def ring_orders(groups, gpus_per_node: int | None, channels: int = 1) -> list[list[int]]:
    """The rings of every group and channel: each group's ranks node by node (ascending), and in
    channel c each node's ranks of the group rotated by c x (their count // channels), so the
    channels leave and enter the nodes through different GPUs (and so different NICs), as NCCL's
    rings do. One ring per (group, channel).

    >>> ring_orders([[0, 1, 2, 3]], 2, channels=2)
    [[0, 1, 2, 3], [1, 0, 3, 2]]
    """
    out = []
    for group in np.asarray(groups, dtype=np.int64).reshape(len(groups), -1):
        ranks = sorted(int(r) for r in group)
        per_node: dict[int, list[int]] = {}
        for rank in ranks:
            per_node.setdefault(rank // gpus_per_node if gpus_per_node else 0, []).append(rank)
        for c in range(channels):
            ring = []
            for node in sorted(per_node):
                members = per_node[node]
                shift = (c * (len(members) // channels)) % len(members) if len(members) > 1 else 0
                ring.extend(members[shift:] + members[:shift])
            out.append(ring)
    return out


def ring_all_reduce(G: nx.DiGraph, groups, size_bytes: float, *, routes: Routes | None = None,
                    alpha_s: float | None = None, channels: int | None = None,
                    bandwidth_scale_by_kind: dict[str, float] | None = None) -> AllReduceResult:
    """Simulate a ring all-reduce (reduce-scatter then all-gather: 2 (g - 1) steps) of `size_bytes`
    per rank on topology G, over every group of `groups` (an (R, g) array of ranks) at once.

    Each step is simulated, not assumed: the flows of one step (every rank to its ring successor,
    size / (g x channels) bytes on each channel, all groups and channels at once) run on the flow
    network (`FlowNetwork`: max-min fair sharing of every link on their paths, the per-message
    start-up alpha_s and the path latency); the 2 (g - 1) steps are bulk-synchronous and equal, so
    time_s = 2 (g - 1) x step_s. For one group on links of bandwidth B the bottleneck of, this is the
    textbook 2 (g - 1) / g x size / B + 2 (g - 1) (alpha + latency) (Patarasuk & Yuan 2009; NCCL's
    ring). channels (default: the topology's NICs per node, at least 1) split the message over rings
    that cross the nodes through different GPUs (`ring_orders`). bandwidth_scale_by_kind scales the
    edges of a kind for this call (the software's all-reduce efficiency on the NICs,
    `lshsim.sim.phases`); the topology's all-to-all link models (`calibration:` curves) are not
    applied: they were measured on all-to-alls.

    >>> from lshsim.topology import build_topology
    >>> G = build_topology({"name": "m", "gpu": "h100", "gpus_per_node": 4, "alpha_s": 0.0,
    ...                     "intra": {"kind": "full_mesh", "per_link_Bps": 1e9, "latency_s": 1e-6}})
    >>> r = ring_all_reduce(G, [[0, 1, 2, 3]], 4e6)
    >>> round(r.time_s, 9), round(2 * 3 / 4 * 4e6 / 1e9 + 2 * 3 * 1e-6, 9)   # closed form
    (0.006006, 0.006006)
    """
    routes = validate_topology(G) if routes is None else routes
    table = np.asarray(groups, dtype=np.int64)
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"groups must be an (R, g) array of ranks, got shape {table.shape}")
    if table.min() < 0 or table.max() >= routes.world or len(np.unique(table)) != table.size:
        raise ValueError(f"groups must hold distinct ranks in 0..{routes.world - 1}")
    if not (np.isfinite(size_bytes) and size_bytes >= 0):
        raise ValueError(f"size_bytes={size_bytes} must be finite and >= 0")
    g = table.shape[1]
    if channels is None:
        channels = max(1, int(G.graph.get("nics_per_node") or 1))
    channels = max(1, min(int(channels), g))
    if g == 1 or size_bytes == 0:
        return AllReduceResult(0.0, 0.0, g, channels, 0.0)
    flows = []
    piece = float(size_bytes) / (g * channels)
    for ring in ring_orders(table, G.graph.get("gpus_per_node"), channels):
        for i, rank in enumerate(ring):
            flows.append((rank, ring[(i + 1) % len(ring)], piece))
    flows = np.asarray(flows, dtype=float)                                              # (F, 3)
    net = FlowNetwork(G, alpha_s=alpha_s, routes=routes, bandwidth_scale_by_kind=bandwidth_scale_by_kind)
    transfer = net.transfer(flows[:, 0].astype(np.int64), flows[:, 1].astype(np.int64), flows[:, 2])
    net.env.run(until=transfer.done)
    step_s = float(transfer.finish_s.max())
    time_s = 2 * (g - 1) * step_s
    return AllReduceResult(time_s, step_s, g, channels, size_bytes * 2 * (g - 1) / g / time_s if time_s else 0.0)


def hierarchical_all_reduce(G: nx.DiGraph, groups, size_bytes: float, *, routes: Routes | None = None,
                            alpha_s: float | None = None,
                            bandwidth_scale_by_kind: dict[str, float] | None = None) -> AllReduceResult:
    """A two-level all-reduce of `size_bytes` per rank over every group of `groups` at once: HCCL's
    hierarchical algorithm (the CANN HCCL user guide, "Collective Communication Algorithms": an
    intra-server algorithm, "level0", and an inter-server one, "level1", chosen by HCCL).

    Level 0: each group's ranks on one server all-reduce among themselves, modelled as a ring
    all-reduce (`ring_all_reduce`: a reduce-scatter and an all-gather, 2 (L - 1) steps) of the full
    size, so every rank then holds its share of the server's sum; level 1: for each local index
    (the j-th rank of the group on every server) a ring all-reduce over the servers of size / L
    (HCCL's inter-server ring; its halving-doubling would take fewer steps), the L rings at once,
    each through its rank's own NIC (one channel). Level 0's second half (the all-gather after the
    inter-server level) is costed within its ring: the same bytes and steps. time_s = level 0 +
    level 1: 2 (L - 1) + 2 (N - 1) ring steps instead of the flat ring's 2 (N L - 1). A group whose
    ranks are not L > 1 on each of N > 1 servers runs the flat ring (`ring_all_reduce`).

    >>> from lshsim.topology import build_topology
    >>> G = build_topology({"name": "m", "gpu": "h100", "nodes": 2, "gpus_per_node": 2, "alpha_s": 0.0,
    ...                     "intra": {"kind": "full_mesh", "per_link_Bps": 1e9, "latency_s": 0.0},
    ...                     "inter": {"kind": "fat_tree", "nics_per_node": 2, "nic_gbps": 8, "latency_s": 0.0}})
    >>> r = hierarchical_all_reduce(G, [[0, 1, 2, 3]], 4e6)
    >>> intra = ring_all_reduce(G, [[0, 1], [2, 3]], 4e6).time_s
    >>> inter = ring_all_reduce(G, [[0, 2], [1, 3]], 2e6, channels=1).time_s
    >>> round(r.time_s, 9) == round(intra + inter, 9), r.group_size
    (True, 4)
    """
    routes = validate_topology(G) if routes is None else routes
    table = np.asarray(groups, dtype=np.int64)
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"groups must be an (R, g) array of ranks, got shape {table.shape}")
    per_node = int(G.graph.get("gpus_per_node") or 0)
    g = table.shape[1]
    flat = lambda: ring_all_reduce(G, table, size_bytes, routes=routes, alpha_s=alpha_s,  # noqa: E731
                                   bandwidth_scale_by_kind=bandwidth_scale_by_kind)
    if per_node < 2 or g < 4:
        return flat()
    intra_rows, inter_rows, shape = [], [], None
    for group in table:
        by_node: dict[int, list[int]] = {}
        for rank in sorted(int(r) for r in group):
            by_node.setdefault(rank // per_node, []).append(rank)
        sizes = {len(m) for m in by_node.values()}
        if len(sizes) != 1 or len(by_node) < 2 or next(iter(sizes)) < 2:
            return flat()
        local = next(iter(sizes))
        if shape not in (None, (local, len(by_node))):
            return flat()
        shape = (local, len(by_node))
        members = [by_node[node] for node in sorted(by_node)]
        intra_rows.extend(members)
        inter_rows.extend([m[j] for m in members] for j in range(local))
    local, servers = shape
    if not (np.isfinite(size_bytes) and size_bytes >= 0):
        raise ValueError(f"size_bytes={size_bytes} must be finite and >= 0")
    if size_bytes == 0:
        return AllReduceResult(0.0, 0.0, g, 1, 0.0)
    intra = ring_all_reduce(G, intra_rows, size_bytes, routes=routes, alpha_s=alpha_s,
                            bandwidth_scale_by_kind=bandwidth_scale_by_kind)
    inter = ring_all_reduce(G, inter_rows, size_bytes / local, routes=routes, alpha_s=alpha_s, channels=1,
                            bandwidth_scale_by_kind=bandwidth_scale_by_kind)
    time_s = intra.time_s + inter.time_s
    return AllReduceResult(time_s, max(intra.step_s, inter.step_s), g, 1,
                           size_bytes * 2 * (g - 1) / g / time_s if time_s else 0.0)
