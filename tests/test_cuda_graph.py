"""lshsim.cuda_graph.capture: dead reference cycles are collected before a capture and the
collector is paused during it (a collection inside a capture can destroy an earlier graph and fail
the capture), then restored."""

from __future__ import annotations

import gc
import weakref
from contextlib import contextmanager

import pytest
import torch

from lshsim.cuda_graph import capture


class _Cycle:
    def __init__(self):
        self.me = self


def _dead_cycle() -> weakref.ref:
    holder = _Cycle()
    ref = weakref.ref(holder)
    del holder
    return ref


@pytest.fixture
def fake_graph_context(monkeypatch):
    """torch.cuda.graph replaced by a context that records what it saw on entry and on exit."""
    seen = {}

    @contextmanager
    def fake(graph, **kwargs):
        seen["graph"], seen["kwargs"] = graph, kwargs
        seen["enabled_inside"] = gc.isenabled()
        yield
        seen["exited"] = True

    monkeypatch.setattr(torch.cuda, "graph", fake)
    return seen


def test_a_dead_cycle_is_collected_before_the_capture_and_the_collector_paused_during_it(fake_graph_context):
    assert gc.isenabled()
    gc.disable()  # keep the cycle alive until capture() collects it
    try:
        ref = _dead_cycle()
        assert ref() is not None
        gc.enable()
        marker = object()
        with capture(marker, pool="p", capture_error_mode="thread_local"):
            assert ref() is None  # collected before the capture began
            assert not gc.isenabled()  # no collection can run inside the capture
    finally:
        gc.enable()
    assert fake_graph_context["graph"] is marker
    assert fake_graph_context["kwargs"] == {"pool": "p", "capture_error_mode": "thread_local"}
    assert fake_graph_context["enabled_inside"] is False and fake_graph_context["exited"]
    assert gc.isenabled()  # restored


def test_the_collector_is_restored_after_a_failed_capture(fake_graph_context):
    with pytest.raises(RuntimeError, match="boom"):
        with capture(object()):
            raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_the_caller_paused_stays_paused(fake_graph_context):
    gc.disable()
    try:
        with capture(object()):
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.gpu
def test_a_capture_after_a_dead_graph_cycle_replays_correctly_on_a_gpu():
    """A dead cycle holding a captured graph (as a dropped layer leaves one) is collected before the
    next capture, which then captures and replays correctly."""
    x = torch.arange(1 << 16, device="cuda", dtype=torch.float32)
    gc.disable()
    try:
        holder = _Cycle()
        holder.graph = torch.cuda.CUDAGraph()
        with capture(holder.graph, pool=torch.cuda.graph_pool_handle()):
            holder.y = x * 2
        ref = weakref.ref(holder)
        del holder
        assert ref() is not None
    finally:
        gc.enable()
    graph = torch.cuda.CUDAGraph()
    with capture(graph, capture_error_mode="thread_local"):
        assert ref() is None
        y = x + 1
    x.fill_(3.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, torch.full_like(x, 4.0))
    assert gc.isenabled()
