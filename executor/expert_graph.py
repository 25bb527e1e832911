"""The expert FFN's forward as one CUDA graph replay, its backward eager.

After the split-size exchange the host has just waited for the GPU, so the expert phase starts on an
idle GPU and every kernel it launches waits for the host: torch's grouped matrix multiply, the GELU and
the second grouped multiply, with autograd's bookkeeping between them. Where the GEMMs are short (a
few tens of microseconds, e.g. 8,192 rows of d 1,024 over 8 experts) that host time is most of the
phase. `GraphedExpertFFN` captures the forward (gelu(x W1[e]) W2[e] per expert, `GROUPED_MM` with
the experts' cumulative row offsets on the device) once per padded row count and replays it: one
launch. The graph reads the weights in place (an optimizer's in-place update is seen) and the offsets
where the split-size exchange's graph leaves them (`CountExchange.static_offsets`), else from a copy.

Rows: the rows are copied into a static buffer of `padded_rows(R)` rows (fewer than R / 8 or 128 more);
the offsets end at R, so the grouped multiply leaves the padding alone. The backward runs eagerly
(no host synchronisation precedes it) from the graph's saved activations with the formulas of
torch's own grouped-GEMM backward: dact = dy W2[e]^T, dpre = gelu'(pre) dact, dx = dpre W1[e]^T,
dW1[e] = x_e^T dpre_e, dW2[e] = act_e^T dy_e (offsets saved per call), so the weight gradients are
fresh tensors that autograd accumulates as it would the eager ones.

The graph's activations are overwritten by its next replay, so a forward whose graph still waits for
a backward (two forwards before a backward, as in gradient accumulation) runs eagerly instead, and a
backward of a forward whose graph was replayed since (a second backward with retain_graph after a
newer forward) is refused with an error rather than computed from the wrong activations.

Used where it pays: a CUDA device, method "grouped_mm", rows present, and at most `MAX_FLOPS` of
forward work (beyond it the GEMMs hide the host's launches). `LSHSIM_EXPERT_GRAPH=0` turns it off
(the before / after runs of the benchmark). `emulate=True` runs the same path without a graph (the
"replay" calls the captured function): the CPU tests exercise the bookkeeping and the backward.
"""
from __future__ import annotations

import os
import sys
import weakref

import torch
from torch.autograd.function import once_differentiable

from lshsim.cuda_graph import capture
from lshsim.executor.moe_ops import GROUPED_MM

__all__ = ["GraphedExpertFFN", "padded_rows", "expert_graph_enabled", "MAX_FLOPS", "MAX_ENTRIES"]

#: the largest forward (4 R d f FLOPs) that is captured: about 0.7 ms at an H200's bf16 rate, beyond
#: which the host's launches hide behind the GEMMs (the eager phase ran at 0.6-0.95 of peak there)
MAX_FLOPS = 2 ** 39
#: graphs kept per layer (one per padded row count and weight storage); past it, calls run eagerly
MAX_ENTRIES = 4


def expert_graph_enabled() -> bool:
    """`LSHSIM_EXPERT_GRAPH` ("1" when unset; "0" turns the graph off)."""
    value = os.environ.get("LSHSIM_EXPERT_GRAPH", "1")
    if value not in ("0", "1"):
        raise ValueError(f"environment variable LSHSIM_EXPERT_GRAPH={value!r}: expected 0 or 1")
    return value == "1"


def padded_rows(rows: int) -> int:
    """rows rounded up to a multiple of max(128, 2^(bits(rows) - 4)): fewer than max(128, rows / 8) more,
    and few distinct sizes (at most 8 per power of two).

    >>> padded_rows(8192), padded_rows(8193), padded_rows(100)
    (8192, 9216, 128)
    """
    step = max(128, 1 << max(0, rows.bit_length() - 4))
    return -(-rows // step) * step


class _Entry:
    """One captured forward: static rows, offsets, activations and output, and its graph."""

    def __init__(self, rows: int, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                 offsets_source: torch.Tensor | None) -> None:
        self.rows = rows
        self.w1, self.w2 = w1, w2  # the graph reads them in place: kept alive while it exists
        self.x = x.new_zeros((rows, w1.shape[1]))
        #: the offsets the graph reads: the exchange graph's own buffer where given, else a copy target
        self.offsets = offsets_source if offsets_source is not None else torch.zeros(
            w1.shape[0], dtype=torch.int32, device=x.device)
        self.graph = None
        self.pre = self.act = self.out = None
        #: the autograd node of the forward whose activations the graph holds, until its backward runs
        self.pending = None
        self.generation = 0

    def run(self) -> None:
        """The captured function: writes pre, act and out."""
        self.pre = GROUPED_MM(self.x, self.w1, offs=self.offsets)
        self.act = torch.nn.functional.gelu(self.pre)
        self.out = GROUPED_MM(self.act, self.w2, offs=self.offsets)

    def busy(self) -> bool:
        return self.pending is not None and self.pending() is not None


class _GraphedFFN(torch.autograd.Function):

    @staticmethod
    def forward(ctx, entry: _Entry, replay, x, w1, w2, offsets):
        rows = x.shape[0]
        entry.x[:rows].copy_(x)
        if offsets.data_ptr() != entry.offsets.data_ptr():
            entry.offsets.copy_(offsets)
        replay()
        entry.generation += 1
        ctx.entry, ctx.rows, ctx.generation = entry, rows, entry.generation
        ctx.save_for_backward(offsets)
        return entry.out[:rows]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        entry, rows = ctx.entry, ctx.rows
        if ctx.generation != entry.generation:
            raise RuntimeError("the expert graph was replayed after this forward (a newer forward ran before this "
                               "backward with retain_graph); its activations are gone: run with LSHSIM_EXPERT_GRAPH=0")
        (offsets,) = ctx.saved_tensors
        grad = grad.contiguous()
        x, pre, act = entry.x[:rows], entry.pre[:rows], entry.act[:rows]
        w1, w2 = entry.w1.detach(), entry.w2.detach()
        grad_act = GROUPED_MM(grad, w2.transpose(-2, -1), offs=offsets)
        grad_pre = torch.ops.aten.gelu_backward(grad_act, pre)
        grad_x = GROUPED_MM(grad_pre, w1.transpose(-2, -1), offs=offsets) if ctx.needs_input_grad[2] else None
        grad_w1 = GROUPED_MM(x.transpose(0, 1), grad_pre, offs=offsets) if ctx.needs_input_grad[3] else None
        grad_w2 = GROUPED_MM(act.transpose(0, 1), grad, offs=offsets) if ctx.needs_input_grad[4] else None
        entry.pending = None
        return None, None, grad_x, grad_w1, grad_w2, None


class GraphedExpertFFN:
    """gelu(x W1[e]) W2[e] per expert from one CUDA graph replay (see the module's docstring).

    `__call__(x, offsets, w1, w2, static_offsets=None)` returns the output rows, or None where the
    graph does not apply (the caller then runs `expert_ffn_grouped` eagerly): off a GPU (unless
    emulated), no GROUPED_MM, no rows, more than MAX_FLOPS, a graph still waiting for its backward,
    MAX_ENTRIES graphs already captured, or after a capture that failed (said once on stderr).
    """

    def __init__(self, enabled: bool = True, emulate: bool = False) -> None:
        self.enabled, self.emulate = enabled, emulate
        self._entries: dict = {}
        self.replays = 0
        #: calls that ran eagerly because their graph still waited for a backward
        self.busy_fallbacks = 0

    def applies(self, x: torch.Tensor, w1: torch.Tensor) -> bool:
        num_experts, d_model, d_ffn = w1.shape
        return (self.enabled and GROUPED_MM is not None and (x.is_cuda or self.emulate) and x.shape[0] > 0
                and 4 * x.shape[0] * d_model * d_ffn <= MAX_FLOPS and not torch.is_autocast_enabled())

    def _capture(self, entry: _Entry) -> None:
        if self.emulate:
            entry.graph = "emulated"
            return
        torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the capture (allocator, lazy kernel loading)
                entry.run()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), capture(graph, capture_error_mode="thread_local"):  # NCCL's watchdog queries events
            entry.run()
        entry.graph = graph

    def _entry(self, x, w1, w2, static_offsets) -> _Entry | None:
        rows = padded_rows(x.shape[0])
        source = static_offsets if static_offsets is not None else None
        key = (rows, x.dtype, str(x.device), w1.data_ptr(), w2.data_ptr(), tuple(w1.shape), tuple(w2.shape),
               None if source is None else source.data_ptr())
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= MAX_ENTRIES:
                return None
            entry = _Entry(rows, x, w1, w2, source)
            try:
                self._capture(entry)
            except RuntimeError as error:  # not capturable here: eager from now on, said once
                print(f"lshsim: the expert phase runs without a CUDA graph ({str(error).splitlines()[0]})",
                      file=sys.stderr)
                if x.is_cuda:
                    torch.cuda.synchronize()
                self.enabled = False
                return None
            self._entries[key] = entry
        return entry

    def __call__(self, x: torch.Tensor, offsets: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                 static_offsets: torch.Tensor | None = None) -> torch.Tensor | None:
        """x (R, d) rows grouped by expert; offsets (E,) int32 cumulative rows (kept for the backward);
        static_offsets: the same values in a buffer whose address never changes (read by the graph in
        place). None where the graph does not apply."""
        if not self.applies(x, w1):
            return None
        entry = self._entry(x, w1, w2, static_offsets)
        if entry is None:
            return None
        if entry.busy():
            self.busy_fallbacks += 1
            return None
        replay = entry.run if self.emulate else entry.graph.replay
        out = _GraphedFFN.apply(entry, replay, x, w1, w2, offsets)
        if out.grad_fn is not None:
            entry.pending = weakref.ref(out.grad_fn)
        self.replays += 1
        return out
