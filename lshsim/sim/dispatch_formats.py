"""Dispatch formats (bytes per token) and the node-deduplicated all-to-all of DeepEP's normal kernels.

Formats (`DISPATCH_FORMATS`, `register_dispatch_format`): how many bytes one token of `hidden`
values occupies in the dispatch (or combine) all-to-all.

==========  =============================================================================================
name        bytes per token
==========  =============================================================================================
bf16        2 * hidden
fp8         hidden (one byte per value, e4m3) + 4 * ceil(hidden / 128): one float32 scale per 128 values,
            as DeepEP counts it (its tests: FP8 bytes = BF16 bytes * (1 + 4 / 128) / 2)
==========  =============================================================================================

>>> bytes_per_token("fp8", 7168), bytes_per_token("bf16", 7168)
(7392, 14336)
>>> bytes_per_token("fp8", 7168, metadata_bytes=16)    # DeepEP's low-latency count adds 16 bytes
7408

Token deduplication per destination node (`node_dedup_traffic`, the collective "node_dedup", alias
"deepep"): a token whose experts live on several ranks of one node crosses the network ONCE to that
node, to the GPU with the sender's local index (the same rail), which forwards it over NVLink to each
destination rank of the node that needs it (one copy per rank). Tokens for the sender's own node go
over NVLink directly. This is what DeepEP's normal (internode) kernels do; a per-rank all-to-all sends
one copy per destination rank over the network instead.

The collective takes the per-rank traffic (W, W) (one copy per (token, destination rank)) and
`node_bytes` (W, N): the bytes source rank s sends to node m, one copy per (token, node). Phases
(dispatch): "local" (own-node copies over NVLink, from the start), and, pipelined in `chunks` equal
chunks, "rdma" (s -> (m, local(s)) over the NICs) then "forward" ((m, local(s)) -> each destination
rank of node m over NVLink; nothing for the rank that received it). combine=True runs the reverse (the
combine all-to-all of the same dispatch: reduce over NVLink to the rail peer, then one copy per (token,
node) back over the network) on the transposed matrices, so the same arguments describe both.
Without `node_bytes` every byte for another node crosses the network (no duplicates removed).
With stream=True (what `lshsim plan` runs) the start-up (alpha, that of the whole stage) and the path latency
are paid by the first chunk of each of the two stages only; a topology with `calibration.dedup_kernel_alpha_s`
(the start-up of one such kernel; the shipped InfiniBand / RoCE topologies: the published-case model's `ib`
normal-kernel start-up, fitted on its fitting cases) starts the kernel once, that late, in place of alpha_s and
the start-up across nodes, the second stage with no start-up of its own (a later chunk follows the one before it as soon as
that one has left its sender): DeepEP's dispatch and its combine are each ONE kernel whose warps stream tokens
through ring buffers (csrc/kernels/legacy/internode.cu: the dispatch's RDMA senders, RDMA-and-NVLink forwarders
and NVLink receivers, the combine's NVLink senders, NVLink-and-RDMA forwarders and RDMA receivers run at once,
in chunks of 8-20 tokens per channel: deep_ep `Buffer.get_dispatch_config`), not one call per chunk. Without it
(the default) every chunk pays both, as the published-case model (start-up 0 there) has always run them.
`PIPELINE_CHUNKS` (8) is the chunk count `lshsim plan` and the published-case model
(`lshsim.sim.published.NORMAL_CHUNKS`) use.

The executor's implementation is `lshsim.executor.dedup` (it forwards one copy per (token, expert)
inside the node: pass its per-choice traffic; its fp8 rows are `lshsim.executor.comm.fp8_row_bytes`,
equal to `bytes_per_token("fp8", d)`). The analytic model has only the bandwidth bound of
`analytic_node_dedup` (no deduplication information there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import simpy

__all__ = ["DispatchFormat", "DISPATCH_FORMATS", "register_dispatch_format", "unregister_dispatch_format",
           "bytes_per_token", "DedupTraffic", "node_dedup_traffic", "plan_dedup_traffic", "node_dedup_phases", "node_dedup",
           "analytic_node_dedup", "PIPELINE_CHUNKS"]

#: chunks of the pipelined RDMA -> NVLink forwarding of "node_dedup" in `lshsim plan` and in the published-case
#: model: DeepEP's kernels overlap the two stages, streaming chunks of 8-20 tokens per channel (module docstring);
#: 8 pipeline chunks stand in for that stream (the value the published-case model has used since it was built)
PIPELINE_CHUNKS = 8


@dataclass(frozen=True)
class DispatchFormat:
    """bytes per token = bytes_per_value * hidden + scale_bytes * ceil(hidden / scale_block) (+ metadata).

    scale_block 0: no scales.
    """

    name: str
    bytes_per_value: float
    scale_block: int = 0
    scale_bytes: int = 0
    description: str = ""

    def bytes_per_token(self, hidden: int, metadata_bytes: int = 0) -> int:
        if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 1:
            raise ValueError(f"hidden={hidden!r} must be an integer >= 1")
        if isinstance(metadata_bytes, bool) or not isinstance(metadata_bytes, (int, np.integer)) or metadata_bytes < 0:
            raise ValueError(f"metadata_bytes={metadata_bytes!r} must be an integer >= 0")
        scales = math.ceil(hidden / self.scale_block) * self.scale_bytes if self.scale_block else 0
        return int(math.ceil(self.bytes_per_value * hidden)) + scales + int(metadata_bytes)


DISPATCH_FORMATS: dict[str, DispatchFormat] = {
    "bf16": DispatchFormat("bf16", 2, description="bfloat16, 2 bytes per value"),
    "fp8": DispatchFormat("fp8", 1, scale_block=128, scale_bytes=4,
                          description="e4m3, 1 byte per value + one float32 scale per 128 values (DeepEP)"),
}


def register_dispatch_format(fmt: DispatchFormat) -> DispatchFormat:
    """Add a format; refuses a taken name or a non-positive size."""
    if not isinstance(fmt, DispatchFormat):
        raise ValueError(f"format={fmt!r} must be a DispatchFormat")
    if fmt.name in DISPATCH_FORMATS:
        raise ValueError(f"dispatch format {fmt.name!r} is already registered")
    if not fmt.bytes_per_value > 0 or fmt.scale_block < 0 or fmt.scale_bytes < 0:
        raise ValueError(f"dispatch format {fmt.name!r}: bytes_per_value must be > 0, scale_block and scale_bytes >= 0")
    DISPATCH_FORMATS[fmt.name] = fmt
    return fmt


def unregister_dispatch_format(name: str) -> DispatchFormat:
    if name not in DISPATCH_FORMATS:
        raise ValueError(f"dispatch format {name!r} is not registered")
    return DISPATCH_FORMATS.pop(name)


def bytes_per_token(fmt: str, hidden: int, metadata_bytes: int = 0) -> int:
    """Bytes of one token of `hidden` values in format `fmt` (a name of DISPATCH_FORMATS)."""
    if fmt not in DISPATCH_FORMATS:
        raise ValueError(f"format={fmt!r} is unknown; known: {', '.join(DISPATCH_FORMATS)}")
    return DISPATCH_FORMATS[fmt].bytes_per_token(hidden, metadata_bytes)


@dataclass(frozen=True)
class DedupTraffic:
    """Token counts and bytes of one dispatch, W ranks on N nodes of `gpus_per_node`.

    choice_tokens: (W, W) (token, choice) pairs source -> destination rank (no deduplication)
    rank_tokens:   (W, W) tokens source -> destination rank, one per (token, rank)
    node_tokens:   (W, N) tokens source -> destination node, one per (token, node), own node included
    bytes_per_token: bytes of one token in the dispatch format
    """

    choice_tokens: np.ndarray
    rank_tokens: np.ndarray
    node_tokens: np.ndarray
    gpus_per_node: int
    bytes_per_token: float

    @property
    def traffic(self) -> np.ndarray:
        """(W, W) bytes of the per-rank all-to-all (one copy per (token, destination rank))."""
        return self.rank_tokens * float(self.bytes_per_token)

    @property
    def node_bytes(self) -> np.ndarray:
        """(W, N) bytes sent once per (token, destination node): `node_dedup`'s option."""
        return self.node_tokens * float(self.bytes_per_token)

    @property
    def choice_traffic(self) -> np.ndarray:
        """(W, W) bytes with one copy per (token, expert): what a per-expert all-to-all sends."""
        return self.choice_tokens * float(self.bytes_per_token)

    def network_bytes(self, dedup: bool = True) -> np.ndarray:
        """(W,) bytes each rank sends to other nodes: once per (token, node) with dedup, else per (token, rank)."""
        world = self.rank_tokens.shape[0]
        node = np.arange(world) // self.gpus_per_node
        if dedup:
            other = self.node_tokens.copy()
            other[np.arange(world), node] = 0
            return other.sum(axis=1) * float(self.bytes_per_token)
        off_node = node[:, None] != node[None, :]
        return (self.rank_tokens * off_node).sum(axis=1) * float(self.bytes_per_token)


def node_dedup_traffic(expert_index, token_rank, *, expert_rank, gpus_per_node: int, world: int | None = None,
                       bytes_per_token: float = 1.0) -> DedupTraffic:
    """Counts of a routing: `expert_index` (T, k) int (-1 = no expert), `token_rank` (T,) the source rank
    of each token, `expert_rank` (E,) the rank of each expert; ranks on nodes of `gpus_per_node`.

    >>> t = node_dedup_traffic([[0, 1], [0, 2]], [0, 0], expert_rank=[1, 2, 3], gpus_per_node=2, world=4)
    >>> t.choice_tokens[0].tolist(), t.rank_tokens[0].tolist(), t.node_tokens[0].tolist()
    ([0, 2, 1, 1], [0, 2, 1, 1], [2, 2])
    >>> t = node_dedup_traffic([[1, 2]], [0], expert_rank=[0, 2, 3], gpus_per_node=2, world=4)
    >>> t.rank_tokens[0].tolist(), t.node_tokens[0].tolist()     # ranks 2 and 3 share node 1: one network copy
    ([0, 0, 1, 1], [0, 1])
    """
    idx = np.asarray(expert_index)
    src = np.asarray(token_rank)
    e2r = np.asarray(expert_rank)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"expert_index must be a (T, k) integer array, got shape {idx.shape} dtype {idx.dtype}")
    if src.shape != (idx.shape[0],) or not np.issubdtype(src.dtype, np.integer):
        raise ValueError(f"token_rank must be a ({idx.shape[0]},) integer array, got shape {src.shape}")
    if e2r.ndim != 1 or not np.issubdtype(e2r.dtype, np.integer) or e2r.size == 0:
        raise ValueError("expert_rank must be a non-empty (E,) integer array")
    if isinstance(gpus_per_node, bool) or not isinstance(gpus_per_node, (int, np.integer)) or gpus_per_node < 1:
        raise ValueError(f"gpus_per_node={gpus_per_node!r} must be an integer >= 1")
    world = int(max(e2r.max(), src.max(initial=0)) + 1) if world is None else int(world)
    if world % gpus_per_node:
        raise ValueError(f"world={world} is not a multiple of gpus_per_node={gpus_per_node}")
    if idx.size and (idx.max() >= e2r.size or idx.min() < -1):
        raise ValueError(f"expert_index holds {int(idx.min())}..{int(idx.max())}; experts are 0..{e2r.size - 1} (-1: none)")
    if e2r.min() < 0 or e2r.max() >= world or (src.size and (src.min() < 0 or src.max() >= world)):
        raise ValueError(f"expert_rank and token_rank must lie in 0..{world - 1}")
    nodes = world // gpus_per_node
    valid = idx >= 0                                                                   # (T, k)
    dst = np.where(valid, e2r[np.clip(idx, 0, None)], -1)                              # (T, k) rank, -1 none
    row = src.astype(np.int64)[:, None]                                                # (T, 1) source rank
    choice = _pair_counts(row, dst, valid, world, world)
    # one per (token, rank) and one per (token, node): the distinct values of each token's row (sorted
    # within the row, k entries: no sort of all T x k pairs)
    dst = np.sort(dst, axis=1)                                                         # (T, k), -1 first
    rank = _pair_counts(row, dst, _first_of_run(dst), world, world)
    dst_node = np.where(dst >= 0, dst // gpus_per_node, -1)                            # sorted too
    node = _pair_counts(row, dst_node, _first_of_run(dst_node), world, nodes)
    return DedupTraffic(choice, rank, node, int(gpus_per_node), float(bytes_per_token))


def _first_of_run(values: np.ndarray) -> np.ndarray:
    """(T, k) True where a row-sorted entry is >= 0 and differs from the one before it in its row."""
    first = values >= 0
    first[:, 1:] &= values[:, 1:] != values[:, :-1]
    return first


def _pair_counts(row: np.ndarray, col: np.ndarray, where: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) int64: how many entries of `where` fall on (row, col) (row broadcast over col)."""
    flat = (np.broadcast_to(row, col.shape)[where] * cols + col[where]).astype(np.int64)
    return np.bincount(flat, minlength=rows * cols).reshape(rows, cols).astype(np.int64)


def plan_dedup_traffic(plan, bytes_per_token: float, gpus_per_node: int | None = None) -> DedupTraffic:
    """`node_dedup_traffic` of a `lshsim.dispatch.DispatchPlan`'s kept choices (dropped ones send nothing).

    gpus_per_node: default from the plan's placement (ranks per node, which must be equal and contiguous).
    Its `choice_tokens` equal `plan.send_counts()`.
    """
    import torch

    rank_to_node = plan.placement.rank_to_node.cpu().numpy()
    world = rank_to_node.size
    if gpus_per_node is None:
        gpus_per_node = int(np.bincount(rank_to_node).max())
    if not np.array_equal(rank_to_node, np.arange(world) // gpus_per_node):
        raise ValueError(f"plan_dedup_traffic: ranks must fill nodes of {gpus_per_node} contiguously, "
                         f"got rank_to_node={rank_to_node.tolist()}")
    idx = torch.where(plan.kept, plan.expert_index, torch.full_like(plan.expert_index, -1))
    return node_dedup_traffic(idx.cpu().numpy().astype(np.int64), plan.token_rank.cpu().numpy().astype(np.int64),
                              expert_rank=plan.placement.expert_to_rank.cpu().numpy().astype(np.int64),
                              gpus_per_node=gpus_per_node, world=world, bytes_per_token=bytes_per_token)


def node_dedup_phases(traffic, node_bytes, num_nodes: int, gpus_per_node: int, *, rtol: float = 1e-9):
    """The three (W, W) matrices of the node-deduplicated dispatch: local, rdma, forward (module docstring).

    `traffic` (W, W) the bytes each destination rank receives from each source (one copy per (token,
    rank) as DeepEP forwards, or one per (token, expert) as the executor's node_dedup forwards: the
    forwarding carries whatever `traffic` holds), `node_bytes` (W, N) per-node bytes or None (no
    deduplication: the sum of the node's ranks). Refuses node bytes above the node's sum (a token
    cannot carry more to a node than all its copies) and zero node bytes where there is traffic to
    the node. Diagonals are zero.

    >>> T = np.zeros((4, 4)); T[0, 2] = T[0, 3] = 10.0
    >>> local, rdma, fwd = node_dedup_phases(T, np.array([[0, 12.0]] + [[0, 0]] * 3), 2, 2)
    >>> float(rdma[0, 2]), float(fwd[2, 3]), float(local.sum())
    (12.0, 10.0, 0.0)
    """
    traffic = np.asarray(traffic, dtype=float)
    world = num_nodes * gpus_per_node
    if traffic.shape != (world, world):
        raise ValueError(f"traffic has shape {traffic.shape}, expected ({world}, {world})")
    per_node = traffic.reshape(world, num_nodes, gpus_per_node)                        # (W, N, g)
    if node_bytes is None:
        node_bytes = per_node.sum(axis=2)
    node_bytes = np.asarray(node_bytes, dtype=float)
    if node_bytes.shape != (world, num_nodes):
        raise ValueError(f"node_bytes has shape {node_bytes.shape}, expected ({world}, {num_nodes}): "
                         f"(source rank, destination node)")
    if not np.all(np.isfinite(node_bytes)) or node_bytes.min(initial=0.0) < 0:
        raise ValueError("node_bytes must be finite and >= 0")
    node_of = np.arange(world) // gpus_per_node                                        # (W,)
    local_of = np.arange(world) % gpus_per_node
    high = per_node.sum(axis=2)                                                        # (W, N)
    tol = rtol * np.maximum(high, 1.0)
    remote = node_of[:, None] != np.arange(num_nodes)[None, :]
    for bad, word in ((remote & (node_bytes <= 0) & (high > 0), "0 while there is traffic to the node"),
                      (remote & (node_bytes > high + tol), "above the sum over its ranks")):
        if bad.any():
            s, m = map(int, np.argwhere(bad)[0])
            raise ValueError(f"node_bytes[{s}, {m}]={node_bytes[s, m]:g} is {word} "
                             f"(traffic to node {m}: sum {high[s, m]:g})")
    same = node_of[:, None] == node_of[None, :]
    local = np.where(same, traffic, 0.0)
    rdma = np.zeros((world, world))
    forward = np.zeros((world, world))
    for s in range(world):
        for m in range(num_nodes):
            if m == node_of[s]:
                continue
            peer = m * gpus_per_node + local_of[s]
            rdma[s, peer] += node_bytes[s, m]
            forward[peer, m * gpus_per_node:(m + 1) * gpus_per_node] += traffic[s, m * gpus_per_node:(m + 1) * gpus_per_node]
    for matrix in (local, rdma, forward):
        np.fill_diagonal(matrix, 0.0)
    return local, rdma, forward


def node_dedup(run, traffic: np.ndarray, node_bytes=None, chunks: int = 1, combine: bool = False,
               stream: bool = False):
    """The collective "node_dedup" (module docstring): local NVLink part at once; rdma -> forward
    (combine: forward.T -> rdma.T) pipelined in `chunks`; stream=True: the chunks of a stage are one stream
    (its start-up and path latency paid by its first chunk only, module docstring), else each chunk is a
    message of its own that pays both (the published-case model's chunks)."""
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or chunks < 1:
        raise ValueError(f"chunks={chunks} must be an integer >= 1")
    G = run.net.G
    num_nodes, gpus_per_node = G.graph["num_nodes"], G.graph["gpus_per_node"]
    local, rdma, forward = node_dedup_phases(traffic, node_bytes, num_nodes, gpus_per_node)
    if combine:
        local, first, second, names = local.T, forward.T, rdma.T, ("reduce", "rdma")
    else:
        first, second, names = rdma, forward, ("rdma", "forward")
    env = run.net.env
    done = {(i, p): env.event() for i in range(chunks) for p in range(2)}
    # stream: one kernel streams every chunk, a stage's start-up (that of the whole stage) and its path latency
    # are paid by its first chunk only; with the topology's kernel start-up (calibration.dedup_kernel_alpha_s,
    # unless the caller set alpha_s), that start-up once: the first stage and the local part start after it, the
    # second stage follows the first with none of its own
    kernel = G.graph.get("dedup_kernel_alpha_s") if stream and run.internode_alpha else None
    if kernel is not None:
        startup = [float(kernel), 0.0]
    elif stream:
        startup = [run.startup_s(matrix) for matrix in (first, second)]

    def chunk(i: int):
        for p, (name, matrix) in enumerate(zip(names, (first, second))):
            if i > 0:
                yield done[(i - 1, p)]
            if stream:
                yield from run.phase(name if chunks == 1 else f"{name}[{i}]", matrix / chunks, alpha_s=startup[p],
                                     streamed=i > 0)
            else:
                yield from run.phase(name if chunks == 1 else f"{name}[{i}]", matrix / chunks)
            done[(i, p)].succeed()

    processes = [env.process(run.phase("local", local, alpha_s=None if kernel is None else float(kernel)))]
    if num_nodes > 1:
        processes += [env.process(chunk(i)) for i in range(chunks)]
    yield simpy.AllOf(env, processes)


def analytic_node_dedup(traffic, cluster):
    """Bandwidth bound of "node_dedup" on a ClusterParams without deduplication information (every
    byte for another node crosses once; rail peers forward over NVLink, overlapped with the NICs):
    alpha + max(max over ranks of NIC bytes out or in / NIC bandwidth, NVLink bytes out or in / NVLink
    bandwidth). One NIC per GPU assumed (cluster.nics_per_node is not used). Batch shapes (..., W, W).

    >>> from lshsim.analytic.comm import ClusterParams
    >>> c = ClusterParams(gpus_per_node=2, intra_bandwidth_Bps=100e9, inter_bandwidth_Bps=10e9, alpha_s=0.0)
    >>> round(float(analytic_node_dedup(np.full((4, 4), 1e9), c)), 6)   # 2 GB over each NIC at 10 GB/s
    0.2
    """
    T = np.asarray(traffic, dtype=float)
    world = T.shape[-1]
    g = int(cluster.gpus_per_node)
    if world % g:
        raise ValueError(f"world size {world} is not a multiple of gpus_per_node={g}")
    batch = T.shape[:-2]
    flat = T.reshape(-1, world, world)
    out = np.empty(flat.shape[0])
    for b, matrix in enumerate(flat):
        local, rdma, forward = node_dedup_phases(matrix, None, world // g, g)
        nvlink = local + forward
        nic = max(rdma.sum(axis=1).max(), rdma.sum(axis=0).max()) / cluster.inter_bandwidth_Bps
        nvl = max(nvlink.sum(axis=1).max(), nvlink.sum(axis=0).max()) / cluster.intra_bandwidth_Bps
        out[b] = cluster.alpha_s + max(nic, nvl)
    return out.reshape(batch) if batch else float(out[0])
