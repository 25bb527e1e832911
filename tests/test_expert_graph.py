"""The expert FFN's forward from one CUDA graph (`executor/expert_graph.py`) against the eager grouped FFN.

On the CPU the same path runs emulated (the "replay" calls the captured function): the static
buffers, the padding past the offsets, the hand-written backward, the fallback of a forward whose
graph still waits for its backward, and the refusal of a backward whose activations were replaced.
On a GPU (marked gpu) the captured graph itself, bf16, and the MoE layer with and without it.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lshsim.executor.expert_graph import MAX_ENTRIES, GraphedExpertFFN, padded_rows
from lshsim.executor.moe_ops import GROUPED_MM, expert_ffn_grouped

pytestmark = pytest.mark.skipif(GROUPED_MM is None, reason="this torch has no grouped matrix multiply")


def _problem(rows_per_expert, d_model=16, d_ffn=32, seed=0, device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    rows, experts = sum(rows_per_expert), len(rows_per_expert)
    x = torch.randn(rows, d_model, generator=generator).to(device, dtype).requires_grad_(True)
    w1 = (torch.randn(experts, d_model, d_ffn, generator=generator) / d_model ** 0.5).to(device, dtype)
    w2 = (torch.randn(experts, d_ffn, d_model, generator=generator) / d_ffn ** 0.5).to(device, dtype)
    offsets = torch.tensor(rows_per_expert, device=device).cumsum(0).to(torch.int32)
    grad = torch.randn(rows, d_model, generator=generator).to(device, dtype)
    return x, w1.requires_grad_(True), w2.requires_grad_(True), offsets, grad


def _grads(out, grad, *leaves):
    for leaf in leaves:
        leaf.grad = None
    out.backward(grad)
    return [leaf.grad.clone() for leaf in leaves]


def test_padded_rows_is_at_most_an_eighth_more():
    for rows in [1, 127, 128, 129, 1000, 4095, 4096, 4097, 8192, 12345, 65536, 10 ** 6 + 3]:
        padded = padded_rows(rows)
        assert rows <= padded < rows + max(128, rows / 8) and padded % 128 == 0
    assert len({padded_rows(rows) for rows in range(7800, 8193)}) <= 2  # few distinct graphs


@pytest.mark.parametrize("counts", [[5, 0, 9, 3], [1], [0, 0, 7], [40, 1, 1, 30]])
def test_emulated_graph_equals_the_eager_ffn_forward_and_backward(counts):
    """Values and every gradient equal `expert_ffn_grouped` (float32; rows padded past the offsets,
    experts with no rows), over several calls that reuse one entry with new rows and weights updated
    in place."""
    graphed = GraphedExpertFFN(emulate=True)
    for seed in range(3):
        x, w1, w2, offsets, grad = _problem(counts, seed=seed)
        if seed:  # the same weight storage, new values (an optimizer step): the graph reads them in place
            with torch.no_grad():
                keep1.copy_(w1)
                keep2.copy_(w2)
            w1, w2 = keep1, keep2
        else:
            keep1, keep2 = w1, w2
        out = graphed(x, offsets, w1, w2)
        assert out is not None
        got = [out.detach().clone()] + _grads(out, grad, x, w1, w2)
        ref_out, _ = expert_ffn_grouped(x, counts, offsets, w1, w2, "grouped_mm")
        ref = [ref_out.detach()] + _grads(ref_out, grad, x, w1, w2)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert graphed.replays == 3 and len(graphed._entries) == 1


def test_a_second_forward_before_the_backward_runs_eagerly():
    """Gradient accumulation: two forwards, then two backwards. The second forward must not overwrite
    the first one's activations: it runs eagerly (None), and both gradients are right."""
    graphed = GraphedExpertFFN(emulate=True)
    x, w1, w2, offsets, grad = _problem([6, 4, 7])
    first = graphed(x, offsets, w1, w2)
    assert graphed(x.detach().clone().requires_grad_(True), offsets, w1, w2) is None
    assert graphed.busy_fallbacks == 1
    got = _grads(first, grad, x, w1, w2)
    ref_out, _ = expert_ffn_grouped(x, [6, 4, 7], offsets, w1, w2, "grouped_mm")
    for a, b in zip(got, _grads(ref_out, grad, x, w1, w2)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert graphed(x, offsets, w1, w2) is not None  # after the backward, the graph is free again


def test_a_forward_whose_graph_is_gone_frees_the_graph():
    """A forward with gradients whose result is dropped without a backward does not hold the graph."""
    graphed = GraphedExpertFFN(emulate=True)
    x, w1, w2, offsets, _ = _problem([3, 5])
    out = graphed(x, offsets, w1, w2)
    del out
    assert graphed(x, offsets, w1, w2) is not None and graphed.busy_fallbacks == 0


def test_a_backward_after_a_newer_replay_is_refused():
    graphed = GraphedExpertFFN(emulate=True)
    x, w1, w2, offsets, grad = _problem([3, 5])
    out = graphed(x, offsets, w1, w2)
    out.backward(grad, retain_graph=True)
    newer = graphed(x, offsets, w1, w2)
    with pytest.raises(RuntimeError, match="LSHSIM_EXPERT_GRAPH=0"):
        out.backward(grad)
    newer.backward(grad)  # the newer one is fine


def test_it_steps_aside_where_it_does_not_apply():
    x, w1, w2, offsets, _ = _problem([3, 5])
    assert GraphedExpertFFN(emulate=False)(x, offsets, w1, w2) is None  # a CPU tensor, no emulation
    assert GraphedExpertFFN(enabled=False, emulate=True)(x, offsets, w1, w2) is None
    empty = x[:0]
    assert GraphedExpertFFN(emulate=True)(empty, offsets * 0, w1, w2) is None
    graphed = GraphedExpertFFN(emulate=True)
    for rows in range(MAX_ENTRIES + 1):  # a new padded size each: past MAX_ENTRIES, eager
        xr, _, _, off, _ = _problem([130 * (rows + 1)])
        result = graphed(xr.detach(), off, w1[:1].detach(), w2[:1].detach())
        assert (result is None) == (rows == MAX_ENTRIES)


def test_the_layer_uses_it_only_on_the_fast_gpu_path():
    from lshsim.dispatch import RouterConfig
    from lshsim.executor.moe_layer import DistributedMoE, MoEContext
    from lshsim.executor.workload import WorkloadConfig

    workload = WorkloadConfig(name="g", tokens_per_rank=64, d_model=32, d_ffn=64, num_experts=4,
                              router=RouterConfig("topk", k=2, capacity_factor=None))
    layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=torch.device("cpu")), torch.float32)
    assert not layer.expert_graph.enabled


def test_a_bad_environment_value_is_refused(monkeypatch):
    from lshsim.executor.expert_graph import expert_graph_enabled

    monkeypatch.setenv("LSHSIM_EXPERT_GRAPH", "yes")
    with pytest.raises(ValueError, match="LSHSIM_EXPERT_GRAPH='yes'"):
        expert_graph_enabled()
    monkeypatch.setenv("LSHSIM_EXPERT_GRAPH", "0")
    assert not expert_graph_enabled()


# -- on a GPU ---------------------------------------------------------------------------------

def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("counts", [[1024] * 8, [900, 0, 1500, 700, 1100, 1000, 1200, 1790]])
def test_graph_replays_equal_the_eager_ffn_on_a_gpu(counts):
    """bf16 on a GPU, three calls (new rows, weights updated in place): the graph's output and every
    gradient equal the eager grouped FFN's (the same kernels: equal up to the order of float sums)."""
    device = _cuda()
    graphed = GraphedExpertFFN()
    for seed in range(3):
        x, w1, w2, offsets, grad = _problem(counts, d_model=1024, d_ffn=2048, seed=seed, device=device,
                                            dtype=torch.bfloat16)
        if seed:
            with torch.no_grad():
                keep1.copy_(w1)
                keep2.copy_(w2)
            w1, w2 = keep1, keep2
        else:
            keep1, keep2 = w1, w2
        out = graphed(x, offsets, w1, w2)
        assert out is not None
        got = [out.detach().clone()] + _grads(out, grad, x, w1, w2)
        ref_out, _ = expert_ffn_grouped(x, counts, offsets, w1, w2, "grouped_mm")
        ref = [ref_out.detach()] + _grads(ref_out, grad, x, w1, w2)
        for a, b in zip(got, ref):
            scale = float(b.float().abs().max()) or 1.0
            assert float((a.float() - b.float()).abs().max()) <= 1e-3 * scale
    assert graphed.replays == 3


@pytest.mark.gpu
@pytest.mark.parametrize("router", [dict(name="topk", k=2, capacity_factor=1.25), dict(name="topk", k=4)])
def test_the_layer_with_the_expert_graph_equals_it_without_on_a_gpu(monkeypatch, router):
    """The MoE layer on one GPU (fast path, bf16), three steps with new tokens: outputs and every
    gradient with the expert graph equal those without it (LSHSIM_EXPERT_GRAPH=0)."""
    from conftest import layer_step_matches
    from lshsim.dispatch import RouterConfig
    from lshsim.executor.moe_layer import DistributedMoE, MoEContext, rank_inputs
    from lshsim.executor.workload import WorkloadConfig

    device = _cuda()
    workload = WorkloadConfig(name="g", tokens_per_rank=2048, d_model=512, d_ffn=1024, num_experts=8,
                              router=RouterConfig(**router))
    ctx = MoEContext(rank=0, world_size=1, device=device)
    with_graph = DistributedMoE(workload, ctx, torch.bfloat16)
    monkeypatch.setenv("LSHSIM_EXPERT_GRAPH", "0")
    without = DistributedMoE(workload, ctx, torch.bfloat16)
    without.experts.w1.data.copy_(with_graph.experts.w1.data)
    without.experts.w2.data.copy_(with_graph.experts.w2.data)
    if with_graph.gate.weight is not None:
        without.gate.weight.data.copy_(with_graph.gate.weight.data)
    for seed in range(3):
        x0, ids = rank_inputs(dataclasses.replace(workload, seed=seed), 0, device, torch.bfloat16)
        layer_step_matches([with_graph, without], x0, ids, rel=1e-3)
    assert with_graph.expert_graph.replays == 3 and without.expert_graph.replays == 0
