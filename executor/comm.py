"""Collectives for the executor: an autograd all-to-all with variable splits, and byte counting.

`all_to_all(x, send_splits, recv_splits, ctx)` is the megablocks-style autograd function: the
forward sends `send_splits[d]` rows of `x` to rank d and receives `recv_splits[s]` rows from rank
s; the backward sends the gradient back the other way, i.e. the same collective with the splits
swapped. At world size 1 it is the identity (no process group is touched), so a single-device run
needs no special case (as in Tutel).

What happened on the wire is returned, not stashed: a `CommStats` object passed in by the caller
accumulates the bytes this rank sent to every destination (diagonal = rows kept on the rank), per
named collective and direction, so a test can hold it against the plan's traffic matrix.

`CommContext` carries, for one call site, the name of the phase, the timer and the stats, and
whether to align the ranks first (`sync`: `align_ranks`, untimed, so that the timed interval is
the collective and not the wait for a straggler or the host's launch latency).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from lshsim.cuda_graph import capture
from lshsim.executor.timing import PhaseTimer

__all__ = ["CommStats", "CommContext", "all_to_all", "mark", "align_ranks", "exchange_counts",
           "CountExchange", "exchange_graph_enabled", "world_size_of", "rank_of", "node_process_group", "HOLD_CYCLES", "WIRE_FORMATS", "FP8_BLOCK",
           "fp8_row_bytes", "quantize_fp8_rows", "dequantize_fp8_rows", "fake_fp8"]


def world_size_of(group=None) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def rank_of(group=None) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def node_process_group(rank: int, world_size: int, ranks_per_node: int) -> tuple[object, list[int] | None]:
    """This rank's node process group and its global ranks (collective: every rank calls it).

    Nodes hold consecutive ranks [n P, (n + 1) P), P = ranks_per_node. Every rank creates every
    node's group, in node order, as `torch.distributed.new_group` requires. (None, None) when one
    node holds every rank (no group is created).
    """
    if ranks_per_node >= world_size:
        return None, None
    if world_size % ranks_per_node != 0:
        raise ValueError(f"ranks_per_node={ranks_per_node} does not divide world_size={world_size}")
    mine, mine_ranks = None, None
    for first in range(0, world_size, ranks_per_node):
        ranks = list(range(first, first + ranks_per_node))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine, mine_ranks = group, ranks
    return mine, mine_ranks


@dataclass
class CommStats:
    """Bytes sent by this rank, per (collective name, direction): a list of W per-destination totals."""

    world_size: int
    sent_bytes: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    calls: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, name: str, direction: str, per_destination_bytes: list[int]) -> None:
        key = (name, direction)
        if len(per_destination_bytes) != self.world_size:
            raise ValueError(f"{len(per_destination_bytes)} destinations for world_size={self.world_size}")
        total = self.sent_bytes.setdefault(key, [0] * self.world_size)
        for dst, value in enumerate(per_destination_bytes):
            total[dst] += int(value)
        self.calls[key] = self.calls.get(key, 0) + 1

    def clear(self) -> None:
        self.sent_bytes.clear()
        self.calls.clear()


@dataclass
class CommContext:
    """One all-to-all call site: its phase name, group, and optional timer / stats / alignment.

    ranks: global ranks of `group` in group-rank order (None: the world), used to file the bytes
    under global destinations. bwd_opens / bwd_closes: phases that the backward of this call
    begins after, or ends before, its own interval (how the expert backward is timed).
    """

    name: str
    timer: PhaseTimer | None = None
    stats: CommStats | None = None
    sync: bool = False
    group: object = None
    ranks: list[int] | None = None
    bwd_opens: str | None = None
    bwd_closes: str | None = None
    #: what travels in the forward: "native" (the rows' own dtype) or "fp8" (`quantize_fp8_rows`);
    #: the backward always sends the gradient in its own dtype
    wire: str = "native"
    #: phases the fp8 quantization (before the collective) and dequantization (after it) are
    #: timed under; None leaves them untimed
    quantize_phase: str | None = None
    dequantize_phase: str | None = None


# ---- the FP8 wire format ------------------------------------------------------------------------
#: the dispatch formats of an all-to-all's forward (`CommContext.wire`)
WIRE_FORMATS = ("native", "fp8")
#: values per scale of the fp8 format (DeepEP's dispatch: one float32 scale per 128 values)
FP8_BLOCK = 128
_FP8_MAX = 448.0  # the largest finite float8_e4m3fn
_FP8_MIN_AMAX = 1e-4  # a block's amax is clamped to this, as DeepEP does, so an all-zero block has a scale


def fp8_row_bytes(d_model: int) -> int:
    """Bytes of one row of d values in the fp8 wire format: d bytes + a 4-byte scale per 128 values.

    >>> fp8_row_bytes(7168), fp8_row_bytes(100)
    (7392, 104)
    """
    return d_model + 4 * -(-d_model // FP8_BLOCK)


def quantize_fp8_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, d) float rows -> (N, fp8_row_bytes(d)) uint8: the rows in float8_e4m3fn, then their scales.

    Per row and block of 128 values (the last block may be shorter): scale = max(|block|, 1e-4)
    x (1 / 448) (float32), value = round_e4m3(x / scale). The scales' 4 bytes follow the d value bytes,
    so a row travels as one contiguous record and an all-to-all of these rows needs no second
    collective. Non-finite values give non-finite scales or values (not checked).
    """
    if x.ndim != 2:
        raise ValueError(f"quantize_fp8_rows takes (N, d) rows, got shape {tuple(x.shape)}")
    num_rows, d_model = x.shape
    if num_rows == 0:  # no rows to this peer: the (0, nb) scales of an empty reduction cannot be viewed as bytes
        return torch.empty((0, fp8_row_bytes(d_model)), dtype=torch.uint8, device=x.device)
    blocks = -(-d_model // FP8_BLOCK)
    padded = torch.nn.functional.pad(x.float(), (0, blocks * FP8_BLOCK - d_model))  # (N, nb * 128)
    padded = padded.view(num_rows, blocks, FP8_BLOCK)
    # x (1 / 448), not / 448: torch divides a CUDA tensor by a scalar as a product with its reciprocal,
    # so only the product gives the same scales (and the same fp8 bytes) on the CPU and on a GPU
    scale = padded.abs().amax(dim=2).clamp(min=_FP8_MIN_AMAX) * (1.0 / _FP8_MAX)  # (N, nb) float32
    values = (padded / scale.unsqueeze(2)).to(torch.float8_e4m3fn).view(num_rows, blocks * FP8_BLOCK)[:, :d_model]
    return torch.cat([values.contiguous().view(torch.uint8), scale.contiguous().view(torch.uint8)], dim=1)


def dequantize_fp8_rows(packed: torch.Tensor, d_model: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, fp8_row_bytes(d)) uint8 from `quantize_fp8_rows` -> (N, d) rows in `dtype` (value x scale)."""
    if packed.ndim != 2 or packed.dtype != torch.uint8 or packed.shape[1] != fp8_row_bytes(d_model):
        raise ValueError(f"packed fp8 rows must be (N, {fp8_row_bytes(d_model)}) uint8, got "
                         f"{tuple(packed.shape)} {packed.dtype}")
    num_rows = packed.shape[0]
    if num_rows == 0:
        return torch.empty((0, d_model), dtype=dtype, device=packed.device)
    blocks = -(-d_model // FP8_BLOCK)
    values = packed[:, :d_model].contiguous().view(torch.float8_e4m3fn).float()  # (N, d)
    scale = packed[:, d_model:].contiguous().view(torch.float32)  # (N, nb)
    values = torch.nn.functional.pad(values, (0, blocks * FP8_BLOCK - d_model)).view(num_rows, blocks, FP8_BLOCK)
    return (values * scale.unsqueeze(2)).view(num_rows, blocks * FP8_BLOCK)[:, :d_model].to(dtype)


def fake_fp8(x: torch.Tensor) -> torch.Tensor:
    """x rounded through the fp8 wire format (quantize, dequantize), with a straight-through gradient:
    what a row is after an fp8 all-to-all, for single-process references."""
    rounded = dequantize_fp8_rows(quantize_fp8_rows(x.detach().reshape(-1, x.shape[-1])), x.shape[-1], x.dtype)
    return x + (rounded.view_as(x) - x).detach()


#: GPU clock cycles of the spin kernel that `align_ranks` queues before its device-side barrier
#: (about 0.5 ms at the H100/H200's 1.98 GHz): long enough that the host has queued the barrier,
#: the start event and the timed collective (tens of microseconds of Python and NCCL launch code)
#: before the GPU reaches them.
HOLD_CYCLES = 1_000_000


def align_ranks(device: torch.device, group=None, *, hold_cycles: int = HOLD_CYCLES) -> None:
    """Start the next (timed) collective at the same moment on every rank, untimed.

    1. A one-element all-reduce, waited for on the host: every rank's CPU leaves it only once
       every rank has reached it.
    2. CUDA only: the GPU is held busy by a spin kernel (`torch.cuda._sleep(hold_cycles)`), then a
       second one-element all-reduce is queued, not waited for. The caller then queues its start
       event and the collective while the GPU still spins, so on every GPU the timed interval
       begins when the device-side barrier ends (the ranks leave an NVLink all-reduce within
       microseconds of each other) and holds the collective's GPU time only: neither a late peer's
       launch nor the host's own launch latency (torch's split-size handling and NCCL's group
       launch, 20-80 us) is in it. This is how a collective runs inside a training step, queued
       behind the previous kernels; nccl-tests hide launch costs the same way by queueing many
       iterations back to back.
    On CPU (gloo, synchronous) step 1 alone aligns the ranks.
    """
    if world_size_of(group) > 1:
        flag = torch.ones(1, device=device)
        dist.all_reduce(flag, group=group)
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
            if hold_cycles > 0:
                torch.cuda._sleep(int(hold_cycles))
            dist.all_reduce(flag, group=group)


def _exchange(x: torch.Tensor, send_splits: list[int], recv_splits: list[int], ctx: CommContext,
              direction: str) -> torch.Tensor:
    row_bytes = x.element_size() * math.prod(x.shape[1:])
    if ctx.stats is not None:
        per_dst = [0] * ctx.stats.world_size
        ranks = ctx.ranks if ctx.ranks is not None else list(range(len(send_splits)))
        for local, rows in enumerate(send_splits):
            per_dst[ranks[local]] += rows * row_bytes
        ctx.stats.add(ctx.name, direction, per_dst)
    phase = ctx.name
    # everything but the collective itself happens before the ranks are aligned and the timer
    # starts: the output buffer (an allocation may call cudaMalloc, which can take longer than
    # align_ranks' hold of the GPU), a contiguous input, the split lists and the process-group
    # query, so that the timed interval holds exactly what the bare all_to_all_single of
    # lshsim.executor.run times
    out = x.new_empty((sum(recv_splits),) + tuple(x.shape[1:]))
    x = x.contiguous()
    distributed = world_size_of(ctx.group) > 1
    recv_list, send_list = list(recv_splits), list(send_splits)
    if ctx.sync:
        align_ranks(x.device, ctx.group)
    if ctx.timer is not None:
        ctx.timer.begin(phase, direction)
    if distributed:
        dist.all_to_all_single(out, x, output_split_sizes=recv_list, input_split_sizes=send_list, group=ctx.group)
    else:
        out.copy_(x)
    if ctx.timer is not None:
        ctx.timer.end(phase, direction)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(autograd_ctx, x, send_splits, recv_splits, ctx):
        autograd_ctx.send_splits = send_splits
        autograd_ctx.recv_splits = recv_splits
        autograd_ctx.comm = ctx
        return _exchange(x, send_splits, recv_splits, ctx, "forward")

    @staticmethod
    def backward(autograd_ctx, grad_out):
        ctx = autograd_ctx.comm
        if ctx.timer is not None and ctx.bwd_closes is not None:
            ctx.timer.end(ctx.bwd_closes, "backward")
        grad_in = _exchange(grad_out.contiguous(), autograd_ctx.recv_splits, autograd_ctx.send_splits, ctx,
                            "backward")
        if ctx.timer is not None and ctx.bwd_opens is not None:
            ctx.timer.begin(ctx.bwd_opens, "backward")
        return grad_in, None, None, None


class _AllToAllFP8(torch.autograd.Function):
    """The forward sends the rows in the fp8 wire format and returns them dequantized to x's dtype;
    the backward sends the gradient back in its own dtype (straight through the rounding), as a
    DeepEP-style dispatch does (fp8 dispatch, bf16 combine)."""

    @staticmethod
    def forward(autograd_ctx, x, send_splits, recv_splits, ctx):
        autograd_ctx.send_splits = send_splits
        autograd_ctx.recv_splits = recv_splits
        autograd_ctx.comm = ctx
        timer = ctx.timer
        if timer is not None and ctx.quantize_phase is not None:
            timer.begin(ctx.quantize_phase)
        packed = quantize_fp8_rows(x)
        if timer is not None and ctx.quantize_phase is not None:
            timer.end(ctx.quantize_phase)
        received = _exchange(packed, send_splits, recv_splits, ctx, "forward")
        if timer is not None and ctx.dequantize_phase is not None:
            timer.begin(ctx.dequantize_phase)
        out = dequantize_fp8_rows(received, x.shape[1], x.dtype)
        if timer is not None and ctx.dequantize_phase is not None:
            timer.end(ctx.dequantize_phase)
        return out

    backward = _AllToAll.backward


def all_to_all(x: torch.Tensor, send_splits: list[int], recv_splits: list[int], ctx: CommContext) -> torch.Tensor:
    """Rows of x (N, ...) -> rows received (sum(recv_splits), ...); differentiable.

    send_splits[d]: rows sent to group rank d (sum = N); recv_splits[s]: rows received from s.
    With ctx.wire == "fp8" the forward sends (N, d) rows in the fp8 wire format (`quantize_fp8_rows`:
    fp8_row_bytes(d) bytes a row, counted so in `ctx.stats`) and returns them dequantized, also on
    one rank, so that results do not depend on the world size.
    """
    if x.shape[0] != sum(send_splits):
        raise ValueError(f"x has {x.shape[0]} rows but send_splits sum to {sum(send_splits)}")
    if len(send_splits) != len(recv_splits):
        raise ValueError(f"{len(send_splits)} send splits but {len(recv_splits)} receive splits")
    if ctx.wire not in WIRE_FORMATS:
        raise ValueError(f"wire={ctx.wire!r}: known formats {', '.join(WIRE_FORMATS)}")
    splits = ([int(s) for s in send_splits], [int(s) for s in recv_splits])
    if ctx.wire == "fp8":
        if x.ndim != 2:
            raise ValueError(f"the fp8 wire format sends (N, d) rows, got shape {tuple(x.shape)}")
        return _AllToAllFP8.apply(x, *splits, ctx)
    if world_size_of(ctx.group) == 1 and ctx.timer is None and ctx.stats is None:
        return x
    return _AllToAll.apply(x, *splits, ctx)


class _Mark(torch.autograd.Function):
    """Identity; its backward ends phase `closes` and begins phase `opens` on the timer."""

    @staticmethod
    def forward(autograd_ctx, x, timer, opens, closes):
        autograd_ctx.timer, autograd_ctx.opens, autograd_ctx.closes = timer, opens, closes
        return x.view_as(x)

    @staticmethod
    def backward(autograd_ctx, grad):
        if autograd_ctx.closes is not None:
            autograd_ctx.timer.end(autograd_ctx.closes, "backward")
        if autograd_ctx.opens is not None:
            autograd_ctx.timer.begin(autograd_ctx.opens, "backward")
        return grad, None, None, None


def mark(x: torch.Tensor, timer: PhaseTimer | None, *, opens: str | None = None,
         closes: str | None = None) -> torch.Tensor:
    """Time a backward interval: `x`'s gradient arriving ends `closes` and begins `opens`."""
    if timer is None or not x.requires_grad or (opens is None and closes is None):
        return x
    return _Mark.apply(x, timer, opens, closes)


def exchange_counts(counts: torch.Tensor, group=None) -> torch.Tensor:
    """All-to-all of equal-size integer blocks: counts (W*m,) -> (W*m,), block s from rank s."""
    if world_size_of(group) == 1:
        return counts.clone()
    out = torch.empty_like(counts)
    dist.all_to_all_single(out, counts.contiguous(), group=group)
    return out


def exchange_graph_enabled(world_size: int, enabled: bool | None = None) -> bool:
    """Whether the split-size exchange runs as a CUDA graph: `enabled` when given, else
    LSHSIM_EXCHANGE_GRAPH: "1" always, "0" never, "auto" (the default) at world size 1 only. Graphs
    holding an NCCL all-to-all hung `executor check` on 2 H200 (its last case,
    locmoe-lsh-groupwise-fp8, after the cases that create and drop other communicators; cause not
    isolated), so with several ranks the exchange stays eager unless asked for."""
    if enabled is not None:
        return enabled
    value = os.environ.get("LSHSIM_EXCHANGE_GRAPH", "auto")
    if value not in ("0", "1", "auto"):
        raise ValueError(f"environment variable LSHSIM_EXCHANGE_GRAPH={value!r}: expected 0, 1 or auto")
    return value == "1" or (value == "auto" and world_size == 1)


#: one CountExchange per (experts, group, device) and process: the graphs that hold NCCL work are
#: captured once, on every rank at the same call, and never destroyed while NCCL runs
_EXCHANGES: dict = {}


class CountExchange:
    """The split-size exchange of a layer: E kept-row counts per rank all-to-all'd, the split sizes
    summed, and one copy of it all to the host (the forward's one synchronisation).

    `source` (E + 1,) int64 on the device is the input: the rows this rank sends per expert position
    (rank-major: the experts of rank 0, then of rank 1, ...), then their sum (the kept rows); a
    producer writes it (the gate's graph writes it in its replay, `gate_graph.GraphedGate(sink=...)`)
    or `load` copies into it. `__call__()` returns (host ints, received): the host ints are
    counts (E), kept rows (1), received (E: block s = rows from rank s per local expert), send
    splits (W: rows to each rank), receive splits (W), rows per local expert (E/W); received (E,)
    stays on the device, valid until the next call.

    As a CUDA graph (on a GPU where `exchange_graph_enabled`: by default at world size 1 only), captured
    at the first call (every rank makes its first call in the same forward): the NCCL all-to-all of
    the counts (at world size 1 a copy), the sums, the local experts' row offsets (int32, cumulative:
    the grouped GEMM's `offsets`) and the copy into pinned host memory; a call is one replay, one copy
    of the offsets into a tensor of their own (`offsets`, the caller's to keep: the graph's buffer is
    overwritten by the next replay, which a later layer's forward makes before this layer's backward)
    and one stream synchronisation, then the host reads the pinned buffer (no further CUDA call). The
    expert phase then launches no kernels of its own before its GEMMs (four small ones before: on the
    H200 virtual machines each waited for the host's launch). Otherwise, or after a capture that fails
    (said once on stderr), the exchange runs eagerly (the all-to-all, one cat, `.tolist()`), the host
    sums the splits and `offsets` is None. `shared` gives one instance per (E, group, device) and process:
    layers run one after another share its source and graph.
    """

    def __init__(self, num_experts: int, device: torch.device, group=None, enabled: bool | None = None) -> None:
        world = world_size_of(group)
        if num_experts < 1 or num_experts % world:
            raise ValueError(f"num_experts={num_experts} must be a positive multiple of the world size {world}")
        self.num_experts, self.group, self.world = num_experts, group, world
        self.source = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
        self.enabled = device.type == "cuda" and exchange_graph_enabled(world, enabled)
        self._graph = None
        self.replays = 0
        #: (E/W,) int32 cumulative rows per local expert of the last call, on the graph path; None on the eager one
        self.offsets: torch.Tensor | None = None

    @classmethod
    def shared(cls, num_experts: int, device: torch.device, group=None,
               enabled: bool | None = None) -> "CountExchange":
        key = (num_experts, id(group), str(device), enabled)
        if key not in _EXCHANGES:
            _EXCHANGES[key] = cls(num_experts, device, group, enabled)
        return _EXCHANGES[key]

    def load(self, counts: torch.Tensor, num_kept: torch.Tensor) -> None:
        """source = [counts (E,), num_kept (1,)]: one kernel (a cat into the source)."""
        torch.cat([counts.reshape(-1), num_kept.reshape(1)], out=self.source)

    def _exchange(self, sums: bool = True) -> torch.Tensor:
        """(2E + 1 + 2W + E/W,) int64 on the device: what `__call__` returns to the host; without
        `sums` only the first 2E + 1 (the eager path sums on the host: three kernels cost more)."""
        num, world = self.num_experts, self.world
        counts = self.source[:num]
        received = exchange_counts(counts, self.group)
        if not sums:
            return torch.cat([self.source, received])
        by_rank = received.view(world, num // world)  # (W, E_r)
        return torch.cat([self.source, received, counts.view(world, num // world).sum(1), by_rank.sum(1),
                          by_rank.sum(0)])

    def _host_sums(self, host: list[int]) -> list[int]:
        """The split sums of the eager path, on the host (slices: no Python loop over experts per rank)."""
        num, world = self.num_experts, self.world
        per_rank = num // world
        counts, received = host[:num], host[num + 1:2 * num + 1]
        send = [sum(counts[r * per_rank:(r + 1) * per_rank]) for r in range(world)]
        recv = [sum(received[r * per_rank:(r + 1) * per_rank]) for r in range(world)]
        return host + send + recv + [sum(received[e::per_rank]) for e in range(per_rank)]

    def _capture(self):
        host = torch.empty(self.num_experts * 2 + 1 + 2 * self.world + self.num_experts // self.world,
                           dtype=torch.int64, pin_memory=True)
        torch.cuda.synchronize()
        self._exchange()  # warm-up outside the capture (communicator, lazy kernel loading); every rank
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: NCCL's watchdog thread queries events while this thread captures
        with capture(graph, capture_error_mode="thread_local"):
            out = self._exchange()
            offsets = torch.cumsum(out[-(self.num_experts // self.world):], 0).to(torch.int32)
            host.copy_(out, non_blocking=True)
        return graph, out, host, offsets

    def __call__(self) -> tuple[list[int], torch.Tensor]:
        num = self.num_experts
        if self.enabled:
            if self._graph is None:
                try:
                    self._graph = self._capture()
                except RuntimeError as error:  # not capturable here: eager from now on, said once
                    print(f"lshsim: the split-size exchange runs without a CUDA graph "
                          f"({str(error).splitlines()[0]})", file=sys.stderr)
                    torch.cuda.synchronize()
                    self.enabled = False
            if self.enabled:
                graph, out, host, offsets = self._graph
                graph.replay()
                self.offsets = offsets.clone()  # queued before the wait: on the GPU while the host waits
                torch.cuda.current_stream(out.device).synchronize()
                self.replays += 1
                return host.tolist(), out[num + 1:2 * num + 1]
        self.offsets = None
        out = self._exchange(sums=False)
        return self._host_sums(out.tolist()), out[num + 1:2 * num + 1]
