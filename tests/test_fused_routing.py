"""The fused Triton routing equals route_on_rank + choice_order, field for field.

Runs the kernels in Triton's CPU interpreter when triton is installed (TRITON_INTERPRET=1; skipped
otherwise) and on CUDA (marked gpu). Gate weights within float32 rounding (the kernel's softmax
sums in another order); every index exactly.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch

from lshsim.dispatch import RouterConfig, make_placement
from lshsim.dispatch.routers import compute_capacity, locmoe_selection, route_on_rank
from lshsim.executor.moe_ops import choice_order, inverse_permutation

CASES = [(4096, 8, 2, 1.25), (1000, 8, 1, 1.0), (777, 64, 8, None), (512, 256, 8, 1.0), (300, 16, 4, 0.5)]


def _check(device, num_tokens, num_experts, k, capacity_factor, router="topk", seed=0):
    from lshsim.dispatch import fused_routing

    generator = torch.Generator().manual_seed(seed)
    placement = make_placement("round_robin", num_experts, 4 if num_experts % 4 == 0 else 1, 2 if num_experts % 4 == 0 else 1)
    placement = type(placement)(placement.expert_to_rank.to(device), placement.rank_to_node.to(device))
    rank = placement.world_size - 1
    position = torch.randperm(num_experts, generator=generator).to(device)
    config = RouterConfig(router, k=k, capacity_factor=capacity_factor)
    if router == "topk":
        inputs = {"logits": (torch.randn(num_tokens, num_experts, generator=generator) * 2).to(device)}
        selection = router_logits = inputs["logits"]
    else:
        inputs = {"hidden": torch.randn(num_tokens, num_experts * 4, generator=generator).to(device)}
        token_rank = torch.full((num_tokens,), rank, dtype=torch.int64, device=device)
        router_logits, selection = locmoe_selection(inputs["hidden"], placement, config.locality_bonus, token_rank, None)
    ref = route_on_rank(config, placement, rank, **inputs)
    ref_order, ref_counts = choice_order(ref.expert_index, ref.slot, ref.kept, position, ref.capacity)
    capacity = compute_capacity(num_tokens, k, num_experts, capacity_factor)
    out = fused_routing.fused_topk_route(selection, router_logits, k, capacity, position)
    for name in ("expert_index", "slot", "kept", "tokens_per_expert"):
        assert torch.equal(out[name].cpu(), getattr(ref, name).cpu()), name
    torch.testing.assert_close(out["gate_weight"].cpu(), ref.gate_weight.detach().float().cpu(), rtol=1e-5, atol=1e-6)
    assert torch.equal(out["order"].cpu(), ref_order.cpu())
    assert torch.equal(out["counts"].cpu(), ref_counts.cpu())
    assert torch.equal(out["inv"].cpu(), inverse_permutation(ref_order).cpu())
    assert torch.equal(out["token_of_row"].cpu(), (ref_order // k).cpu())
    assert ref.num_dropped > 0 or capacity_factor is None or capacity_factor > 1.0 or True


@pytest.fixture
def interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from lshsim.dispatch import fused_routing, lsh_fast

    fused_routing._KERNELS.clear()
    yield
    fused_routing._KERNELS.clear()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-E{c[1]}-k{c[2]}-cf{c[3]}")
def test_interpreter_fused_topk_equals_the_routers(interpreter, case):
    _check(torch.device("cpu"), *case)


def test_interpreter_fused_locmoe_equals_the_router(interpreter):
    _check(torch.device("cpu"), 600, 8, 2, 1.0, router="locmoe")


def test_refuses_shapes_it_cannot_hold():
    from lshsim.dispatch import fused_routing

    with pytest.raises(ValueError, match="E <= 512"):
        fused_routing.fused_topk_route(torch.zeros(4, 1024), torch.zeros(4, 1024), 2, 4, torch.arange(1024))


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES + [(32768, 256, 8, None)], ids=lambda c: f"T{c[0]}-E{c[1]}-k{c[2]}-cf{c[3]}")
def test_cuda_fused_topk_equals_the_routers(case):
    pytest.importorskip("triton")
    _check(torch.device("cuda"), *case)
    _check(torch.device("cuda"), 2048, 16, 2, 1.0, router="locmoe")


def _check_variants(device, num_tokens, num_experts, k, capacity_factor, ties=False, seed=1):
    """The layer's calls: 16-bit logits + a float32 bias added inside, the sink, no send order."""
    from lshsim.dispatch import fused_routing

    generator = torch.Generator().manual_seed(seed)
    placement = make_placement("round_robin", num_experts, 1, 1)
    placement = type(placement)(placement.expert_to_rank.to(device), placement.rank_to_node.to(device))
    position = torch.randperm(num_experts, generator=generator).to(device)
    config = RouterConfig("topk", k=k, capacity_factor=capacity_factor)
    if ties:  # few distinct values, +0.0 and -0.0 among them: the first index wins, as argmax (k <= 2:
        # the reference takes argmax there; torch.topk orders ties its own way)
        raw = torch.randint(-2, 3, (num_tokens, num_experts), generator=generator).float()
        raw = torch.where(torch.rand(num_tokens, num_experts, generator=generator) < 0.5, raw, raw * -1.0)
        bias = torch.zeros(num_experts)
        logits = raw.to(torch.bfloat16)
    else:
        logits = (torch.randn(num_tokens, num_experts, generator=generator) * 2).to(torch.bfloat16)
        bias = torch.randn(num_experts, generator=generator)
    logits, bias = logits.to(device), bias.to(device)
    ref = route_on_rank(config, placement, 0, logits=logits.float() + bias)
    ref_order, ref_counts = choice_order(ref.expert_index, ref.slot, ref.kept, position, ref.capacity)
    capacity = compute_capacity(num_tokens, k, num_experts, capacity_factor)
    sink = torch.full((num_experts + 1,), -7, dtype=torch.int64, device=device)
    out = fused_routing.fused_topk_route(logits, None, k, capacity, position, bias=bias, sink=sink)
    for name in ("expert_index", "slot", "kept", "tokens_per_expert"):
        assert torch.equal(out[name].cpu(), getattr(ref, name).cpu()), name
    torch.testing.assert_close(out["gate_weight"].cpu(), ref.gate_weight.detach().float().cpu(), rtol=1e-5, atol=1e-6)
    assert torch.equal(out["order"].cpu(), ref_order.cpu())
    assert torch.equal(out["counts"].cpu(), ref_counts.cpu())
    assert torch.equal(sink.cpu(), torch.cat([ref_counts, ref_counts.sum().reshape(1)]).cpu())
    rows = num_tokens * k
    flat = out["flat"].cpu()
    expected = torch.cat([ref.expert_index.reshape(-1), ref.slot.reshape(-1), ref_order, inverse_permutation(ref_order),
                          ref.tokens_per_expert, ref_counts, ref_order // k]).cpu()
    assert flat.shape == (5 * rows + 2 * num_experts,) and torch.equal(flat, expected)
    bare = fused_routing.fused_topk_route(logits, None, k, capacity, position, bias=bias, with_order=False)
    assert bare["order"] is None and bare["inv"] is None and bare["token_of_row"] is None
    for name in ("expert_index", "slot", "kept", "tokens_per_expert", "counts"):
        assert torch.equal(bare[name].cpu(), out[name].cpu()), name
    return ref


VARIANTS = [(2000, 4, 2, 0.5, False), (700, 8, 1, 1.0, True), (513, 64, 2, 1.25, True), (300, 256, 8, None, False),
            (1100, 16, 3, 0.8, False)]


@pytest.mark.parametrize("case", VARIANTS, ids=lambda c: f"T{c[0]}-E{c[1]}-k{c[2]}-cf{c[3]}-ties{c[4]}")
def test_interpreter_fused_bias_sink_and_no_order(interpreter, case):
    ref = _check_variants(torch.device("cpu"), *case)
    if case[3] is not None and case[3] < 1.0:
        assert ref.num_dropped > 0  # the drops span several token blocks


@pytest.mark.gpu
@pytest.mark.parametrize("case", VARIANTS + [(4096, 256, 8, None, False), (16384, 8, 2, 0.9, True)],
                         ids=lambda c: f"T{c[0]}-E{c[1]}-k{c[2]}-cf{c[3]}-ties{c[4]}")
def test_cuda_fused_bias_sink_and_no_order(case):
    pytest.importorskip("triton")
    _check_variants(torch.device("cuda"), *case)


def _garbage_empty(monkeypatch):
    """torch.empty inside fused_routing returns buffers filled with garbage (integers 0x5A or
    0x5A5A5A5A, floats NaN): a buffer read before a kernel wrote it (the per-block drop counts, which the top-k kernel
    zeroes instead of a memset) changes the result."""
    from lshsim.dispatch import fused_routing

    real = torch.empty

    def empty(*size, **kwargs):
        out = real(*size, **kwargs)
        if out.is_floating_point():
            return out.fill_(float("nan"))
        return out.fill_(0x5A if torch.iinfo(out.dtype).bits == 8 else 0x5A5A5A5A)

    class Shim:
        def __getattr__(self, name):
            return empty if name == "empty" else getattr(torch, name)

    monkeypatch.setattr(fused_routing, "torch", Shim())


@pytest.mark.parametrize("case", [(4096, 8, 2, 1.25), (300, 16, 4, 0.5), (777, 64, 8, None)],
                         ids=lambda c: f"T{c[0]}-E{c[1]}-k{c[2]}-cf{c[3]}")
def test_interpreter_fused_topk_reads_no_unwritten_buffer(interpreter, monkeypatch, case):
    _garbage_empty(monkeypatch)
    _check(torch.device("cpu"), *case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [(4096, 8, 2, 1.25), (16384, 8, 2, 0.9), (300, 16, 4, 0.5)],
                         ids=lambda c: f"T{c[0]}-E{c[1]}-k{c[2]}-cf{c[3]}")
def test_cuda_fused_topk_reads_no_unwritten_buffer(monkeypatch, case):
    _garbage_empty(monkeypatch)
    _check(torch.device("cuda"), *case)
