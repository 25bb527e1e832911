"""Closed-form all-to-all costs (alpha-beta model), LSH-MoE's ratio model and LSH break-even.

Symbols. W ranks (GPUs), G = `gpus_per_node`, N = W / G nodes. A traffic matrix
`traffic_bytes[..., src, dst]` (W, W) holds the bytes rank src sends to rank dst in one all-to-all
(e.g. `DispatchPlan.traffic_matrix`); the diagonal stays on its rank and costs nothing.
S_r = sum_{j != r} traffic[r, j] (egress), R_r = sum_{j != r} traffic[j, r] (ingress).

Network model (alpha-beta, full duplex, non-blocking switches):

* inside a node every GPU has one port of `intra_bandwidth_Bps` per direction to a non-blocking
  switch (NVSwitch): a phase's intra-node time is max_r max(S_r, R_r) / B_intra;
* between nodes every node has `nics_per_node` NICs of `inter_bandwidth_Bps` per direction; one
  GPU's traffic uses one NIC (NCCL does not stripe one GPU over several NICs), so a phase's
  inter-node time is max(max_r max(S_r, R_r) / B_nic, max_n max(S_n, R_n) / (nics * B_nic)),
  S_n, R_n the bytes node n sends to / receives from other nodes;
* intra- and inter-node flows of one phase run at once: phase time = alpha + max(intra, inter);
  alpha is `alpha_s` for intra-node phases and `inter_alpha_s` (default `alpha_s`) for phases
  whose pairs may cross nodes;
* phases run one after another; local copies (the diagonal, layout transforms) are free.

Algorithms (`A2A_ALGORITHMS`, the analytic view of the registry `lshsim.algorithms.COLLECTIVES`,
which names each algorithm once for this model, the simulator and the executor; picked by
`a2a_time(name, traffic, cluster)`; a new one is `fn(traffic, cluster) -> seconds` registered with
`lshsim.algorithms.register_collective(name, analytic=fn)`):

==============  =================================================================================
direct          every pair at once (NCCL); on one switch: t = alpha + max_r max(S_r, R_r) / B
pairwise        W-1 steps; at step s rank r sends to (r+s) mod W; t = sum_s (alpha + max step time)
hierarchical    Tutel 2DH / DeepSpeed: intra-node all-to-all that groups data by destination
                local rank, then an inter-node all-to-all among GPUs with the same local rank
                (alias "2d")
groupwise       LocMoE: the intra-node part over NVLink, then the inter-node part over NICs
                (sequential; groupwise_overlap: overlapped, max instead of sum)
==============  =================================================================================

All functions broadcast: traffic (..., W, W) with bandwidths and alphas of the batch shape (...).
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from lshsim.algorithms import AlgorithmTable, canonical_algorithm
from lshsim.analytic._common import as_count, as_nonnegative, as_positive, as_real, maybe_scalar

__all__ = [
    "ClusterParams", "A2A_ALGORITHMS", "a2a_time", "egress_ingress", "analytic_direct", "analytic_pairwise",
    "analytic_hierarchical", "analytic_groupwise", "analytic_groupwise_overlap", "a2a_time_direct",
    "a2a_time_direct_multinode", "a2a_time_pairwise", "a2a_time_hierarchical", "a2a_time_groupwise",
    "uniform_traffic", "random_traffic", "lsh_moe_comm_compute_ratio", "breakeven_compression_rate",
    "lsh_step_time_s",
]


# ---- inputs -------------------------------------------------------------------------------------
def _traffic(traffic_bytes) -> np.ndarray:
    """Validated float64 (..., W, W) traffic with a zeroed diagonal."""
    traffic = as_nonnegative("traffic_bytes", traffic_bytes)
    if traffic.ndim < 2 or traffic.shape[-1] != traffic.shape[-2] or traffic.shape[-1] < 1:
        raise ValueError(f"traffic_bytes has shape {traffic.shape}, expected (..., W, W)")
    world = traffic.shape[-1]
    return traffic * (1.0 - np.eye(world))  # (..., W, W), diagonal stays local


def _nodes(world: int, gpus_per_node) -> int:
    gpus = int(as_count("gpus_per_node", gpus_per_node, minimum=1))
    if world % gpus != 0:
        raise ValueError(f"gpus_per_node={gpus} does not divide the world size W={world}")
    return gpus


def egress_ingress(traffic_bytes) -> tuple[np.ndarray, np.ndarray]:
    """S_r, R_r: bytes each rank sends to / receives from other ranks (diagonal excluded), (..., W).

    >>> S, R = egress_ingress([[5, 1, 2], [0, 9, 3], [4, 0, 0]])
    >>> S.tolist(), R.tolist()
    ([3.0, 3.0, 4.0], [4.0, 1.0, 5.0])
    """
    traffic = _traffic(traffic_bytes)
    return traffic.sum(axis=-1), traffic.sum(axis=-2)


@dataclass(frozen=True)
class ClusterParams:
    """An alpha-beta cluster: G GPUs per node on NVSwitch, NICs between nodes.

    gpus_per_node: G (W must be a multiple). intra_bandwidth_Bps: per-GPU NVLink bandwidth per
    direction. inter_bandwidth_Bps: per-NIC bandwidth per direction. nics_per_node: NICs per node
    (None: one per GPU, rail-optimised). alpha_s / inter_alpha_s: start-up latency of an
    intra-node / inter-node phase (inter_alpha_s None: alpha_s).
    """

    gpus_per_node: int = 8
    intra_bandwidth_Bps: float = 300e9
    inter_bandwidth_Bps: float = 25e9
    nics_per_node: int | None = None
    alpha_s: float = 10e-6
    inter_alpha_s: float | None = None

    def __post_init__(self) -> None:
        as_count("gpus_per_node", self.gpus_per_node, minimum=1)
        if np.ndim(self.intra_bandwidth_Bps) == 0:
            as_positive("intra_bandwidth_Bps", self.intra_bandwidth_Bps)
        if np.ndim(self.inter_bandwidth_Bps) == 0:
            as_positive("inter_bandwidth_Bps", self.inter_bandwidth_Bps)
        if self.nics_per_node is not None:
            as_count("nics_per_node", self.nics_per_node, minimum=1)
        as_nonnegative("alpha_s", self.alpha_s)
        if self.inter_alpha_s is not None:
            as_nonnegative("inter_alpha_s", self.inter_alpha_s)

    @property
    def nics(self) -> int:
        return self.gpus_per_node if self.nics_per_node is None else int(self.nics_per_node)

    @property
    def inter_alpha(self) -> float:
        return self.alpha_s if self.inter_alpha_s is None else self.inter_alpha_s


def _cluster(gpus_per_node, intra_bandwidth_Bps, inter_bandwidth_Bps, alpha_s, inter_alpha_s,
             nics_per_node) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    intra = as_positive("intra_bandwidth_Bps", intra_bandwidth_Bps, allow_inf=True)
    inter = as_positive("inter_bandwidth_Bps", inter_bandwidth_Bps, allow_inf=True)
    alpha = as_nonnegative("alpha_s", alpha_s)
    inter_alpha = alpha if inter_alpha_s is None else as_nonnegative("inter_alpha_s", inter_alpha_s)
    gpus = int(as_count("gpus_per_node", gpus_per_node, minimum=1))
    nics = gpus if nics_per_node is None else int(as_count("nics_per_node", nics_per_node, minimum=1))
    return gpus, intra, inter, alpha, inter_alpha, nics


def _phase_time(flows: np.ndarray, gpus: int, intra_Bps, inter_Bps, nics: int, alpha) -> np.ndarray:
    """Time of one phase in which all `flows` (..., W, W) bytes (zero diagonal) move at once."""
    world = flows.shape[-1]
    node = np.arange(world) // gpus  # (W,)
    same = node[:, None] == node[None, :]  # (W, W)
    intra = flows * same  # (..., W, W)
    inter = flows * ~same  # (..., W, W)
    intra_bytes = np.maximum(intra.sum(-1), intra.sum(-2)).max(-1)  # (...,) bottleneck GPU port
    gpu_nic_bytes = np.maximum(inter.sum(-1), inter.sum(-2)).max(-1)  # (...,) one GPU on one NIC
    num_nodes = world // gpus
    node_matrix = inter.reshape(inter.shape[:-2] + (num_nodes, gpus, num_nodes, gpus)).sum(axis=(-3, -1))
    node_bytes = np.maximum(node_matrix.sum(-1), node_matrix.sum(-2)).max(-1)  # (...,) node NICs
    inter_time = np.maximum(gpu_nic_bytes / inter_Bps, node_bytes / (nics * inter_Bps))
    return alpha + np.maximum(intra_bytes / intra_Bps, inter_time)


# ---- algorithms ---------------------------------------------------------------------------------
def a2a_time_direct(traffic_bytes, bandwidth_Bps, alpha_s=0.0):
    """Direct all-to-all on one non-blocking switch: t = alpha + max_r max(S_r, R_r) / B.

    Every rank sends to every peer at once (NCCL's all-to-all); its port is the bottleneck.
    Source: the alpha-beta (Hockney 1994) model. Symbols: S_r egress and R_r ingress
    bytes of rank r (diagonal excluded), B per-port bandwidth per direction (bytes/s), alpha the
    start-up latency (s). Stable name: the simulator cross-checks its non-blocking-switch result
    against this function.

    >>> a2a_time_direct([[0, 4e9], [2e9, 0]], bandwidth_Bps=1e9, alpha_s=1e-5)
    4.00001
    >>> a2a_time_direct([[[0, 1], [1, 0]], [[0, 2], [3, 0]]], bandwidth_Bps=1.0).tolist()
    [1.0, 3.0]
    """
    traffic = _traffic(traffic_bytes)  # (..., W, W)
    bandwidth = as_positive("bandwidth_Bps", bandwidth_Bps, allow_inf=True)
    alpha = as_nonnegative("alpha_s", alpha_s)
    busiest = np.maximum(traffic.sum(-1), traffic.sum(-2)).max(-1)  # (...,) bytes
    return maybe_scalar(alpha + busiest / bandwidth)


def a2a_time_direct_multinode(traffic_bytes, gpus_per_node, intra_bandwidth_Bps, inter_bandwidth_Bps,
                              alpha_s=0.0, inter_alpha_s=None, nics_per_node=None):
    """Direct all-to-all on a two-level cluster: every pair at once, intra over NVLink, inter over NICs.

    t = alpha_inter + max( max_r max(S^intra_r, R^intra_r) / B_intra,
                           max_r max(S^inter_r, R^inter_r) / B_nic,
                           max_n max(S_n, R_n) / (nics * B_nic) )
    (alpha_intra on a single node). Source: the alpha-beta (Hockney 1994) model with the
    module's two-level network. With one node it equals `a2a_time_direct` at B = B_intra.

    >>> t = np.full((4, 4), 1e9)  # 2 nodes x 2 GPUs, 1 GB to every peer
    >>> a2a_time_direct_multinode(t, 2, intra_bandwidth_Bps=100e9, inter_bandwidth_Bps=10e9)
    0.2
    """
    traffic = _traffic(traffic_bytes)
    gpus, intra, inter, alpha, inter_alpha, nics = _cluster(gpus_per_node, intra_bandwidth_Bps,
                                                            inter_bandwidth_Bps, alpha_s, inter_alpha_s,
                                                            nics_per_node)
    gpus = _nodes(traffic.shape[-1], gpus)
    start = alpha if traffic.shape[-1] == gpus else inter_alpha
    return maybe_scalar(_phase_time(traffic, gpus, intra, inter, nics, start))


def a2a_time_pairwise(traffic_bytes, gpus_per_node, intra_bandwidth_Bps, inter_bandwidth_Bps=None,
                      alpha_s=0.0, inter_alpha_s=None, nics_per_node=None):
    """Pairwise-exchange all-to-all: W-1 steps, at step s rank r sends to (r + s) mod W.

    t = sum_{s=1}^{W-1} ( alpha_s + max over the step's pairs of bytes / bandwidth of the pair ),
    where a step's cross-node pairs share NICs as in the module's network model (Thakur, Rabenseifner
    and Gropp 2005, "pairwise exchange"). On one node (or inter = intra bandwidth and
    one NIC per GPU): t = sum_s (alpha + max_r traffic[r, (r+s) mod W] / B).

    >>> t = np.array([[0, 3, 1], [2, 0, 5], [1, 1, 0]]) * 1e9
    >>> a2a_time_pairwise(t, 3, intra_bandwidth_Bps=1e9)  # steps: max(3,5,1)=5 s, max(1,2,1)=2 s
    7.0
    """
    traffic = _traffic(traffic_bytes)
    if inter_bandwidth_Bps is None:
        inter_bandwidth_Bps = intra_bandwidth_Bps
    gpus, intra, inter, alpha, inter_alpha, nics = _cluster(gpus_per_node, intra_bandwidth_Bps,
                                                            inter_bandwidth_Bps, alpha_s, inter_alpha_s,
                                                            nics_per_node)
    world = traffic.shape[-1]
    gpus = _nodes(world, gpus)
    ranks = np.arange(world)
    node = ranks // gpus
    total = np.zeros(traffic.shape[:-2])
    for step in range(1, world):
        mask = np.zeros((world, world), dtype=bool)
        mask[ranks, (ranks + step) % world] = True  # (W, W) this step's pairs
        crosses = bool((node != node[(ranks + step) % world]).any())
        total = total + _phase_time(traffic * mask, gpus, intra, inter, nics, inter_alpha if crosses else alpha)
    return maybe_scalar(total)


def a2a_time_hierarchical(traffic_bytes, gpus_per_node, intra_bandwidth_Bps, inter_bandwidth_Bps,
                          alpha_s=0.0, inter_alpha_s=None, nics_per_node=None):
    """Hierarchical (2D) all-to-all, Tutel 2DH / DeepSpeed-MoE: two phases.

    Ranks r = n*G + g (node n, local rank g). Phase 1, inside every node: GPU (n, g) sends GPU
    (n, g') everything it has for local rank g' on any node, M1[(n,g),(n,g')] =
    sum_{n'} T[(n,g),(n',g')]. Phase 2, between nodes on the rails: GPU (n, g') sends GPU (n', g')
    what its node has for it, M2[(n,g'),(n',g')] = sum_g T[(n,g),(n',g')], n' != n. After phase 2
    every byte is on its destination GPU, so no scatter phase is needed (the data-layout transforms
    are local copies and cost nothing here).
    t = (alpha + max_r max(S^1_r, R^1_r) / B_intra) + (alpha_inter + inter-node time of M2).
    Source: Hwang et al., Tutel (2023) §4 "2DH All-to-All"; Rajbhandari et al., DeepSpeed-MoE (2022).

    >>> t = np.full((4, 4), 1e9)  # 2 nodes x 2 GPUs
    >>> a2a_time_hierarchical(t, 2, intra_bandwidth_Bps=100e9, inter_bandwidth_Bps=10e9)
    0.22
    """
    traffic = _traffic(traffic_bytes)
    gpus, intra, inter, alpha, inter_alpha, nics = _cluster(gpus_per_node, intra_bandwidth_Bps,
                                                            inter_bandwidth_Bps, alpha_s, inter_alpha_s,
                                                            nics_per_node)
    world = traffic.shape[-1]
    gpus = _nodes(world, gpus)
    num_nodes = world // gpus
    batch = traffic.shape[:-2]
    blocks = traffic.reshape(batch + (num_nodes, gpus, num_nodes, gpus))  # (..., n, g, n', g')
    # phase 1: (n, g) -> (n, g') carries sum over destination nodes n'
    phase1_local = blocks.sum(axis=-2)  # (..., n, g, g')
    phase1 = np.zeros_like(traffic)
    for n in range(num_nodes):
        rows = slice(n * gpus, (n + 1) * gpus)
        phase1[..., rows, rows] = phase1_local[..., n, :, :]
    phase1 = phase1 * (1.0 - np.eye(world))
    # phase 2: (n, g') -> (n', g') carries sum over source local ranks g
    phase2_rail = blocks.sum(axis=-3)  # (..., n, n', g')
    phase2 = np.zeros_like(traffic)
    for g in range(gpus):
        idx = np.arange(num_nodes) * gpus + g  # ranks of rail g
        phase2[..., idx[:, None], idx[None, :]] = phase2_rail[..., :, :, g]
    phase2 = phase2 * (1.0 - np.eye(world))
    total = np.zeros(batch)
    if gpus > 1:
        total = total + _phase_time(phase1, gpus, intra, inter, nics, alpha)
    if num_nodes > 1:
        total = total + _phase_time(phase2, gpus, intra, inter, nics, inter_alpha)
    return maybe_scalar(total)


def a2a_time_groupwise(traffic_bytes, gpus_per_node, intra_bandwidth_Bps, inter_bandwidth_Bps,
                       alpha_s=0.0, inter_alpha_s=None, nics_per_node=None, overlap=False):
    """LocMoE group-wise all-to-all: the intra-node part first (NVLink), then the inter-node part (NICs).

    t_intra = alpha + max_r max(S^intra_r, R^intra_r) / B_intra,
    t_inter = alpha_inter + inter-node time of the cross-node part (direct, module's NIC model),
    t = t_intra + t_inter (sequential), or max(t_intra, t_inter) with `overlap=True` (LocMoE
    overlaps the two groups). Source: Li et al., LocMoE (arXiv 2401.13920) §3.3 group-wise
    all-to-all and communication overlap.

    >>> t = np.full((4, 4), 1e9)
    >>> round(a2a_time_groupwise(t, 2, intra_bandwidth_Bps=100e9, inter_bandwidth_Bps=10e9), 9)
    0.21
    >>> a2a_time_groupwise(t, 2, intra_bandwidth_Bps=100e9, inter_bandwidth_Bps=10e9, overlap=True)
    0.2
    """
    traffic = _traffic(traffic_bytes)
    gpus, intra, inter, alpha, inter_alpha, nics = _cluster(gpus_per_node, intra_bandwidth_Bps,
                                                            inter_bandwidth_Bps, alpha_s, inter_alpha_s,
                                                            nics_per_node)
    world = traffic.shape[-1]
    gpus = _nodes(world, gpus)
    node = np.arange(world) // gpus
    same = node[:, None] == node[None, :]
    batch = traffic.shape[:-2]
    t_intra = _phase_time(traffic * same, gpus, intra, inter, nics, alpha) if gpus > 1 else np.zeros(batch)
    t_inter = (_phase_time(traffic * ~same, gpus, intra, inter, nics, inter_alpha) if world > gpus
               else np.zeros(batch))
    return maybe_scalar(np.maximum(t_intra, t_inter) if overlap else t_intra + t_inter)


def analytic_direct(traffic, cluster: ClusterParams):
    """`a2a_time_direct_multinode` on a ClusterParams (the registry's "direct")."""
    return a2a_time_direct_multinode(traffic, cluster.gpus_per_node, cluster.intra_bandwidth_Bps,
                                     cluster.inter_bandwidth_Bps, cluster.alpha_s, cluster.inter_alpha_s,
                                     cluster.nics_per_node)


def analytic_pairwise(traffic, cluster: ClusterParams):
    """`a2a_time_pairwise` on a ClusterParams (the registry's "pairwise")."""
    return a2a_time_pairwise(traffic, cluster.gpus_per_node, cluster.intra_bandwidth_Bps, cluster.inter_bandwidth_Bps,
                             cluster.alpha_s, cluster.inter_alpha_s, cluster.nics_per_node)


def analytic_hierarchical(traffic, cluster: ClusterParams):
    """`a2a_time_hierarchical` on a ClusterParams (the registry's "hierarchical", alias "2d")."""
    return a2a_time_hierarchical(traffic, cluster.gpus_per_node, cluster.intra_bandwidth_Bps,
                                 cluster.inter_bandwidth_Bps, cluster.alpha_s, cluster.inter_alpha_s,
                                 cluster.nics_per_node)


def analytic_groupwise(traffic, cluster: ClusterParams):
    """`a2a_time_groupwise` on a ClusterParams, sequential (the registry's "groupwise")."""
    return a2a_time_groupwise(traffic, cluster.gpus_per_node, cluster.intra_bandwidth_Bps, cluster.inter_bandwidth_Bps,
                              cluster.alpha_s, cluster.inter_alpha_s, cluster.nics_per_node, overlap=False)


def analytic_groupwise_overlap(traffic, cluster: ClusterParams):
    """`a2a_time_groupwise` on a ClusterParams, overlapped (the registry's "groupwise_overlap")."""
    return a2a_time_groupwise(traffic, cluster.gpus_per_node, cluster.intra_bandwidth_Bps, cluster.inter_bandwidth_Bps,
                              cluster.alpha_s, cluster.inter_alpha_s, cluster.nics_per_node, overlap=True)


#: The analytic model's algorithms: canonical name -> fn(traffic, cluster), aliases accepted.
A2A_ALGORITHMS = AlgorithmTable("analytic")


def a2a_time(algorithm: str, traffic_bytes, cluster: ClusterParams):
    """All-to-all time (s) of `traffic_bytes` with the named algorithm of `A2A_ALGORITHMS`
    (a canonical name or an alias of `lshsim.algorithms`).

    >>> c = ClusterParams(gpus_per_node=2, intra_bandwidth_Bps=100e9, inter_bandwidth_Bps=10e9, alpha_s=0.0)
    >>> round(a2a_time("hierarchical", np.full((4, 4), 1e9), c), 6)
    0.22
    >>> a2a_time("2d", np.full((4, 4), 1e9), c) == a2a_time("hierarchical", np.full((4, 4), 1e9), c)
    True
    """
    return A2A_ALGORITHMS[canonical_algorithm(algorithm, side="analytic")](traffic_bytes, cluster)


# ---- traffic builders ---------------------------------------------------------------------------
def uniform_traffic(world_size: int, bytes_per_rank: float) -> np.ndarray:
    """(W, W) traffic: every rank spreads `bytes_per_rank` evenly over all W ranks (itself included).

    This is the expected traffic of balanced top-k routing: a fraction (W-1)/W leaves the rank.

    >>> uniform_traffic(2, 8.0).tolist()
    [[4.0, 4.0], [4.0, 4.0]]
    """
    world = int(as_count("world_size", world_size, minimum=1))
    size = float(as_nonnegative("bytes_per_rank", bytes_per_rank))
    return np.full((world, world), size / world)


def random_traffic(world_size: int, bytes_per_rank: float, concentration: float = 1.0, seed: int = 0) -> np.ndarray:
    """(W, W) traffic: rank r splits `bytes_per_rank` over destinations by a Dirichlet(concentration) draw."""
    world = int(as_count("world_size", world_size, minimum=1))
    size = float(as_nonnegative("bytes_per_rank", bytes_per_rank))
    alpha = float(as_positive("concentration", concentration))
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(world, alpha), size=world) * size  # (W, W)


# ---- LSH-MoE's ratio model ----------------------------------------------------------------------
def lsh_moe_comm_compute_ratio(flops_per_s, inter_bandwidth_Bps, k, world_size, hidden_size):
    """LSH-MoE's model of the all-to-all share: T_a2a / T_compute = FLOPs/(6 B_inter) * k/(1+2k) * (w-1)/(w h).

    Source: Nie et al., LSH-MoE (NeurIPS 2024) Eq. 6/9.
    Symbols: FLOPs = the GPU's compute rate (FLOP/s), B_inter = inter-node bandwidth (bytes/s),
    k = experts per token (top-k), w = number of GPUs, h = hidden size. The paper's derivation
    counts a transformer layer's compute per token as proportional to (1+2k) h^2 (attention plus k
    expert FFNs) and the all-to-all bytes as proportional to k h (w-1)/w; the constant 6 folds the
    per-element size and FLOP counts together.
    Ambiguities (kept as written, not resolved): the constant 6 makes the ratio dimensionless only
    if FLOPs and bytes are counted alike; it is not stated whether B_inter is per GPU or per node,
    nor whether forward and backward are both included. Use it for trends (how the share grows
    with w, FLOPs/B and 1/h), not for absolute times; use the alpha-beta functions for those.

    >>> round(lsh_moe_comm_compute_ratio(125e12, 12.5e9, k=2, world_size=16, hidden_size=1024), 4)
    0.6104
    """
    flops = as_positive("flops_per_s", flops_per_s)
    bandwidth = as_positive("inter_bandwidth_Bps", inter_bandwidth_Bps)
    k = as_count("k", k, minimum=1)
    w = as_count("world_size", world_size, minimum=1)
    h = as_count("hidden_size", hidden_size, minimum=1)
    return maybe_scalar(flops / (6.0 * bandwidth) * k / (1.0 + 2.0 * k) * (w - 1) / (w * h))


# ---- break-even of LSH compression --------------------------------------------------------------
def _lsh_terms(tokens_per_rank, d_model, k, world_size, bandwidth_Bps, hash_tokens_per_s, restore_tokens_per_s,
               bytes_per_element, expert_time_s, include_backward):
    tokens = as_count("tokens_per_rank", tokens_per_rank, minimum=1)
    d = as_count("d_model", d_model, minimum=1)
    k = as_count("k", k, minimum=1)
    w = as_count("world_size", world_size, minimum=1)
    bandwidth = as_positive("bandwidth_Bps", bandwidth_Bps)
    hash_rate = as_positive("hash_tokens_per_s", hash_tokens_per_s)
    restore_rate = hash_rate if restore_tokens_per_s is None else as_positive("restore_tokens_per_s",
                                                                                restore_tokens_per_s)
    element = as_count("bytes_per_element", bytes_per_element, minimum=1)
    expert = as_nonnegative("expert_time_s", expert_time_s)
    num_a2a = 4 if include_backward else 2  # dispatch + combine, forward (+ backward)
    choices = float(tokens) * float(k)  # token copies a rank sends (float: no int64 overflow on huge inputs)
    wire_s = num_a2a * choices * d * element * (w - 1) / w / bandwidth  # bandwidth term of all a2a, r = 1
    overhead_s = choices / hash_rate + choices / restore_rate  # compress + restore (forward)
    if include_backward:
        overhead_s = 2 * overhead_s  # backward spreads the centroid gradient: same order of work
    return wire_s, overhead_s, expert, num_a2a


def lsh_step_time_s(compression_rate, tokens_per_rank, d_model, *, k=2, world_size=16, bandwidth_Bps=12.5e9,
                    hash_tokens_per_s=18e6, restore_tokens_per_s=68e6, bytes_per_element=2, alpha_s=0.0,
                    expert_time_s=0.0, include_backward=True, lsh=True):
    """Communication + compression + expert time of one MoE layer step at compression rate r.

    t(r) = n_a2a * (alpha + r * V / B) + [lsh] (t_compress + t_restore) + expert_time * (r if lsh else 1)
    with V = T k d b (w-1)/w the bytes one rank sends per all-to-all under balanced routing
    (direct algorithm, `a2a_time_direct` on `uniform_traffic`), n_a2a = 2 (dispatch, combine) or 4
    with backward, t_compress = T k / hash rate, t_restore = T k / restore rate (doubled with
    backward). `lsh=False` gives the uncompressed baseline (r must then be 1). Source: the
    alpha-beta model above with LSH-MoE's compression (Nie et al., NeurIPS 2024).
    Default throughputs: lsh.py's `compress` (1.8e7 token copies/s) and `restore` (6.8e7) measured
    on an H100 at d = 1024, d' = 16, N = 32768 (benchmarks/RESULTS.md, lsh section); restore None
    means the hash rate.

    >>> round(lsh_step_time_s(1.0, 4096, 1024, lsh=False) * 1e3, 3)  # ms
    5.033
    """
    rate = as_real("compression_rate", compression_rate)
    if ((rate <= 0) | (rate > 1)).any():
        bad = rate[(rate <= 0) | (rate > 1)].ravel()[0].item()
        raise ValueError(f"compression_rate={bad!r} must be in (0, 1]")
    wire_s, overhead_s, expert, num_a2a = _lsh_terms(tokens_per_rank, d_model, k, world_size, bandwidth_Bps,
                                                     hash_tokens_per_s, restore_tokens_per_s, bytes_per_element,
                                                     expert_time_s, include_backward)
    alpha = as_nonnegative("alpha_s", alpha_s)
    if not lsh:
        return maybe_scalar(num_a2a * alpha + wire_s + expert + 0 * rate)
    return maybe_scalar(num_a2a * alpha + rate * wire_s + overhead_s + rate * expert)


def breakeven_compression_rate(tokens_per_rank, d_model, *, k=2, world_size=16, bandwidth_Bps=12.5e9,
                               hash_tokens_per_s=18e6, restore_tokens_per_s=68e6, bytes_per_element=2,
                               expert_time_s=0.0, include_backward=True):
    """Compression rate r* below which LSH compression pays: t_a2a(1) - t_a2a(r) >= t_compress + t_restore.

    From `lsh_step_time_s`: the saving (1 - r) (n_a2a V / B + expert_time) must cover the overhead
    t_compress + t_restore, so r* = 1 - (t_compress + t_restore) / (n_a2a V / B + expert_time).
    Alpha cancels (the compressed all-to-alls send as many messages). Symbols: T tokens per rank,
    k choices, d model width, b bytes per element, w ranks, B per-rank all-to-all bandwidth
    (bytes/s; the NIC share for inter-node bound runs), hash / restore throughputs in token copies
    per second; expert_time_s > 0 credits the expert FFN shrinking with the token count (LSH-MoE's
    experts see only centroids). r* <= 0 means compression never pays. Source:
    `lsh_step_time_s`.

    >>> round(breakeven_compression_rate(4096, 1024, bandwidth_Bps=12.5e9), 4)  # 100 Gb/s NIC, H100 hashing
    0.7713
    """
    wire_s, overhead_s, expert, _ = _lsh_terms(tokens_per_rank, d_model, k, world_size, bandwidth_Bps,
                                               hash_tokens_per_s, restore_tokens_per_s, bytes_per_element,
                                               expert_time_s, include_backward)
    return maybe_scalar(1.0 - overhead_s / (wire_s + expert))
