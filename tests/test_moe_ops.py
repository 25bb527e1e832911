"""The executor's fast layer pieces against slow, obvious references.

* `route_on_rank` equals `route(..., token_rank=full(rank))` field for field (every built-in router);
* `choice_order` sorts kept choices by (expert position, slot), dropped ones last;
* gather / permute / combine: values and gradients equal plain indexing under autograd (float64);
* `expert_ffn_grouped`: both methods equal a per-expert loop, forward and gradients, empty experts too;
* on a GPU (marked gpu): routing, ordering and LSH bucketing run with no host synchronisation
  (`torch.cuda.set_sync_debug_mode("error")` raises on any).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import layer_step_matches  # noqa: E402
from lshsim.dispatch import RouterConfig, make_placement, route
from lshsim.dispatch.routers import SYNC_FREE_ROUTERS, count_values, route_on_rank
from lshsim.executor.moe_ops import (auto_expert_method, choice_order, combine_choices, expert_ffn_grouped,
                                     gather_choices, inverse_permutation, permute_rows)

CONFIGS = [
    RouterConfig("topk", k=1, capacity_factor=1.0),
    RouterConfig("topk", k=2, capacity_factor=1.25, drop_policy="score"),
    RouterConfig("topk", k=4, capacity_factor=None),
    RouterConfig("hash", k=1, capacity_factor=None),
    RouterConfig("hash", k=1, capacity_factor=0.5),
    RouterConfig("locmoe", k=2, capacity_factor=1.0, locality_bonus=0.5),
    RouterConfig("expert_choice", k=2, capacity_factor=1.0),
]


def _inputs(num_tokens: int, d_model: int, num_experts: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(num_tokens, num_experts, generator=generator) * 2,
            "hidden": torch.randn(num_tokens, d_model, generator=generator),
            "token_ids": torch.randint(0, 50000, (num_tokens,), generator=generator)}


def test_count_values_equals_bincount():
    values = torch.randint(0, 7, (1000,), generator=torch.Generator().manual_seed(0))
    assert count_values(values, 9).tolist() == torch.bincount(values, minlength=9).tolist()
    assert count_values(torch.zeros(0, dtype=torch.int64), 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.name}-k{c.k}-{c.capacity_factor}-{c.drop_policy}")
@pytest.mark.parametrize("seed", [0, 1])
def test_route_on_rank_equals_route(config, seed):
    placement = make_placement("round_robin", 16, 4, 2)
    inputs = _inputs(97, 32, 16, seed)
    rank = 2
    fast = route_on_rank(config, placement, rank, **inputs)
    token_rank = torch.full((97,), rank, dtype=torch.int64)
    slow = route(config, placement, token_rank=token_rank, **inputs)
    for name in ("expert_index", "slot", "kept", "tokens_per_expert", "token_rank"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    torch.testing.assert_close(fast.gate_weight, slow.gate_weight, rtol=0, atol=0)
    assert fast.capacity == slow.capacity
    assert set(SYNC_FREE_ROUTERS) == {"topk", "hash", "locmoe"}


def test_route_on_rank_refuses_a_bad_rank_and_a_missing_input():
    placement = make_placement("contiguous", 4, 2, 2)
    with pytest.raises(ValueError, match="rank=2"):
        route_on_rank(RouterConfig("topk"), placement, 2, logits=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="reads logits"):
        route_on_rank(RouterConfig("topk"), placement, 0, hidden=torch.zeros(3, 4))


def test_choice_order_sorts_kept_choices_by_position_and_slot():
    placement = make_placement("round_robin", 8, 4, 4)
    config = RouterConfig("topk", k=2, capacity_factor=1.0)
    plan = route_on_rank(config, placement, 1, **_inputs(64, 8, 8, 3))
    position = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    order, counts = choice_order(plan.expert_index, plan.slot, plan.kept, position, plan.capacity)
    kept = plan.kept.reshape(-1)
    num_kept = int(kept.sum())
    assert plan.num_dropped > 0  # the case exercises drops
    assert bool(kept[order[:num_kept]].all()) and not bool(kept[order[num_kept:]].any())
    flat_position = position[plan.expert_index.reshape(-1)]
    key = (flat_position * plan.capacity + plan.slot.reshape(-1))[order[:num_kept]]
    assert bool((key[1:] > key[:-1]).all())  # strictly increasing: (position, slot) is unique
    assert counts.tolist() == torch.bincount(flat_position[kept], minlength=8).tolist()
    assert order[num_kept:].tolist() == sorted(order[num_kept:].tolist())  # dropped: flat order


def test_gather_permute_combine_match_plain_indexing_with_gradients():
    generator = torch.Generator().manual_seed(5)
    num_tokens, k, d_model = 13, 3, 6
    x = torch.randn(num_tokens, d_model, dtype=torch.float64, generator=generator, requires_grad=True)
    order = torch.randperm(num_tokens * k, generator=generator)
    inv = inverse_permutation(order)
    kept_rows = 30  # the first 30 rows of `order` are "kept"
    weight = torch.rand(num_tokens, k, dtype=torch.float64, generator=generator)
    flat_kept = torch.zeros(num_tokens * k, dtype=torch.bool)
    flat_kept[order[:kept_rows]] = True
    weight = (weight * flat_kept.reshape(num_tokens, k)).requires_grad_(True)
    perm = torch.randperm(kept_rows, generator=generator)

    def fast(x, weight):
        rows = gather_choices(x, order, inv, k)[:kept_rows]
        rows = permute_rows(permute_rows(rows * 2, perm), inverse_permutation(perm))
        return combine_choices(rows, order, inv, weight)

    def slow(x, weight):
        rows = x[order // k][:kept_rows][perm][inverse_permutation(perm)] * 2
        y = torch.zeros_like(x)
        for i in range(kept_rows):
            t, j = divmod(int(order[i]), k)
            y = y.index_add(0, torch.tensor([t]), (weight[t, j] * rows[i]).unsqueeze(0))
        return y

    torch.testing.assert_close(fast(x, weight), slow(x, weight))
    g = torch.randn(num_tokens, d_model, dtype=torch.float64, generator=generator)
    grads_fast = torch.autograd.grad((fast(x, weight) * g).sum(), (x, weight))
    grads_slow = torch.autograd.grad((slow(x, weight) * g).sum(), (x, weight))
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a * (b != 0) if a.shape == weight.shape else a, b)


@pytest.mark.parametrize("method", ["grouped_mm", "padded_bmm"])
def test_expert_ffn_grouped_equals_a_loop(method):
    generator = torch.Generator().manual_seed(2)
    rows = [5, 0, 9, 2]
    d_model, d_ffn = 16, 24
    x = torch.randn(sum(rows), d_model, generator=generator, requires_grad=True)
    w1 = torch.randn(4, d_model, d_ffn, generator=generator, requires_grad=True)
    w2 = torch.randn(4, d_ffn, d_model, generator=generator, requires_grad=True)
    offsets = torch.cumsum(torch.tensor(rows), 0).to(torch.int32)
    out, used = expert_ffn_grouped(x, rows, offsets, w1, w2, method)
    assert used == method
    pieces = torch.split(x, rows)
    ref = torch.cat([torch.nn.functional.gelu(p @ w1[e]) @ w2[e] for e, p in enumerate(pieces)])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(ref.shape, generator=generator)
    fast = torch.autograd.grad((out * g).sum(), (x, w1, w2))
    slow = torch.autograd.grad((ref * g).sum(), (x, w1, w2))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_expert_ffn_grouped_without_rows_and_a_bad_method():
    w1, w2 = torch.zeros(2, 8, 8, requires_grad=True), torch.zeros(2, 8, 8, requires_grad=True)
    out, _ = expert_ffn_grouped(torch.zeros(0, 8), [0, 0], torch.zeros(2, dtype=torch.int32), w1, w2)
    assert out.shape == (0, 8)
    with pytest.raises(ValueError, match="method"):
        expert_ffn_grouped(torch.zeros(2, 8), [1, 1], torch.tensor([1, 2], dtype=torch.int32), w1, w2, "fast")


@pytest.mark.gpu
def test_routing_ordering_and_lsh_bucketing_make_no_host_synchronisation():
    from lshsim.dispatch import lsh_fast
    from lshsim.dispatch.lsh import LSHConfig, make_projection

    device = torch.device("cuda")
    placement = make_placement("contiguous", 64, 2, 2)
    placement = type(placement)(placement.expert_to_rank.to(device), placement.rank_to_node.to(device))
    inputs = {key: value.to(device) for key, value in _inputs(4096, 256, 64, 0).items()}
    position = torch.arange(64, device=device)
    config = LSHConfig(num_hashes=6, proj_dim=16)
    tokens = inputs["hidden"].to(torch.bfloat16)
    projection = make_projection(256, config, device=device, dtype=torch.bfloat16)
    lsh_fast.token_buckets(tokens, config, projection)  # first use of a projection: one check, once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for router in (RouterConfig("topk", k=8, capacity_factor=1.25, drop_policy="score"),
                       RouterConfig("hash", k=1, capacity_factor=1.0),
                       RouterConfig("locmoe", k=2, capacity_factor=None)):
            plan = route_on_rank(router, placement, 1, **inputs)
            order, counts = choice_order(plan.expert_index, plan.slot, plan.kept, position, plan.capacity)
            inverse_permutation(order)
        bucket = lsh_fast.token_buckets(tokens, config, projection)
        segs = lsh_fast.segments(position[plan.expert_index.reshape(-1).clamp(min=0)],
                                 bucket.repeat_interleave(plan.num_choices), plan.kept.reshape(-1),
                                 config.max_buckets(256), 64)
        lsh_fast.segment_mean(tokens.repeat_interleave(plan.num_choices, 0)[segs.order], segs)
        segs.segments_per_group(64)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.name}-k{c.k}-{c.capacity_factor}-{c.drop_policy}")
def test_graphed_routing_returns_route_on_rank_and_choice_order(config):
    """The code GraphedRouting captures on a GPU, run eagerly here: the same plan and order."""
    from lshsim.executor.gate_graph import GraphedRouting

    placement = make_placement("round_robin", 16, 4, 2)
    inputs = _inputs(97, 32, 16, 4)
    inputs["logits"].requires_grad_(True)
    position = torch.randperm(16, generator=torch.Generator().manual_seed(2))
    bias = torch.randn(16, generator=torch.Generator().manual_seed(3))
    raw = {**inputs, "logits": inputs["logits"]}
    plan, order, inv, counts, token_of_row = GraphedRouting(config, placement, 3, position, bias=bias)(raw)
    inputs = {**inputs, "logits": inputs["logits"] + bias}
    ref = route_on_rank(config, placement, 3, **inputs)
    ref_order, ref_counts = choice_order(ref.expert_index, ref.slot, ref.kept, position, ref.capacity)
    for name in ("expert_index", "slot", "kept", "tokens_per_expert", "token_rank"):
        assert torch.equal(getattr(plan, name), getattr(ref, name)), name
    # equal in the torch path; the fused kernels (when Triton runs) sum the softmax in another order
    torch.testing.assert_close(plan.gate_weight, ref.gate_weight, rtol=1e-5, atol=1e-6)
    assert plan.capacity == ref.capacity
    assert torch.equal(order, ref_order) and torch.equal(counts, ref_counts)
    assert torch.equal(inv, inverse_permutation(ref_order))
    if token_of_row is not None:
        assert torch.equal(token_of_row, ref_order // plan.num_choices)
    if config.name == "topk":  # the gate weights keep their gradient
        assert plan.gate_weight.requires_grad


@pytest.mark.gpu
@pytest.mark.parametrize("config", CONFIGS[:6], ids=lambda c: f"{c.name}-k{c.k}-{c.capacity_factor}-{c.drop_policy}")
def test_graphed_routing_replays_equal_eager_routing_on_a_gpu(config):
    from lshsim.executor.gate_graph import GraphedRouting

    device = torch.device("cuda")
    placement = make_placement("round_robin", 16, 4, 2)
    placement = type(placement)(placement.expert_to_rank.to(device), placement.rank_to_node.to(device))
    position = torch.arange(16, device=device)
    routing = GraphedRouting(config, placement, 1, position)
    for seed in range(3):  # new inputs each call: the replay reads them, not the captured ones
        inputs = {key: value.to(device) for key, value in _inputs(4096, 32, 16, seed).items()}
        plan, order, inv, counts, token_of_row = routing(inputs)
        ref = route_on_rank(config, placement, 1, **inputs)
        ref_order, ref_counts = choice_order(ref.expert_index, ref.slot, ref.kept, position, ref.capacity)
        for name in ("expert_index", "slot", "kept", "tokens_per_expert"):
            assert torch.equal(getattr(plan, name), getattr(ref, name)), name
        assert torch.equal(order, ref_order) and torch.equal(counts, ref_counts)
        torch.testing.assert_close(plan.gate_weight, ref.gate_weight, rtol=1e-5, atol=1e-6)
    assert routing.replays == 3


@pytest.mark.parametrize("router,k", [("topk", 1), ("topk", 3), ("locmoe", 1), ("locmoe", 2)])
def test_gate_weights_backward_equals_autograd_through_the_router(router, k):
    """GateWeights' hand-written gradient == autograd through topk_gate_weight (float64)."""
    from lshsim.dispatch.routers import grap_scores, topk_gate_weight
    from lshsim.executor.gate_graph import GateWeights

    generator = torch.Generator().manual_seed(k)
    source = torch.randn(37, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, generator=generator, dtype=torch.float64) if router == "topk" else None
    logits = source + bias if router == "topk" else grap_scores(source, 8)
    expert_index = torch.topk(logits.detach(), k, dim=1).indices
    reference = topk_gate_weight(logits, expert_index)
    values = reference.detach().float()
    fast = GateWeights.apply(source, values, expert_index, router, bias)
    g = torch.randn(37, k, generator=generator, dtype=torch.float64)
    (want,) = torch.autograd.grad((reference * g).sum(), source)
    (got,) = torch.autograd.grad((fast.double() * g).sum(), source)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("router", [RouterConfig("topk", k=2, capacity_factor=1.25), RouterConfig("hash", k=1),
                                    RouterConfig("locmoe", k=2, capacity_factor=None)], ids=lambda c: c.name)
def test_graphed_gate_equals_the_eager_gate_on_a_gpu(router):
    """The layer with its gate as one CUDA graph == the layer with the eager gate: outputs and
    gradients (bf16), over several calls with new inputs (the replays read them)."""
    from lshsim.executor.moe_layer import DistributedMoE, MoEContext, rank_inputs
    from lshsim.executor.workload import WorkloadConfig

    device = torch.device("cuda")
    workload = WorkloadConfig(name="g", tokens_per_rank=512, d_model=256, d_ffn=512, num_experts=8, router=router)
    ctx = MoEContext(rank=0, world_size=1, device=device)
    graphed, eager = DistributedMoE(workload, ctx, torch.bfloat16), DistributedMoE(workload, ctx, torch.bfloat16)
    eager.gate_graph.available = False
    for seed in range(3):
        x0, ids = rank_inputs(dataclasses.replace(workload, seed=seed), 0, device, torch.bfloat16)
        layer_step_matches((graphed, eager), x0, ids)
    assert graphed.gate_graph.replays == 3


# ---- the fast gate path: the graph's outputs uncopied, the exchange's input written by the gate,
# the split-size exchange and its sums as one graph (the eager code here is the code the graphs capture)
def test_count_exchange_on_one_rank_returns_counts_kept_rows_and_received():
    from lshsim.executor.comm import CountExchange

    exchange = CountExchange(4, torch.device("cpu"))
    exchange.load(torch.tensor([3, 0, 2, 5]), torch.tensor(10))
    host, received = exchange()  # counts, kept, received, send splits, receive splits, rows per expert
    assert host == [3, 0, 2, 5, 10, 3, 0, 2, 5, 10, 10, 3, 0, 2, 5] and received.tolist() == [3, 0, 2, 5]
    assert exchange.replays == 0  # eager off a GPU
    with pytest.raises(ValueError, match="num_experts=0"):
        CountExchange(0, torch.device("cpu"))


def test_gate_path_comes_from_the_environment_and_a_bad_value_is_named(monkeypatch):
    from lshsim.executor.moe_layer import gate_path

    monkeypatch.delenv("LSHSIM_GATE_PATH", raising=False)
    assert gate_path() == "fast"
    monkeypatch.setenv("LSHSIM_GATE_PATH", "legacy")
    assert gate_path() == "legacy"
    monkeypatch.setenv("LSHSIM_GATE_PATH", "quick")
    with pytest.raises(ValueError, match="LSHSIM_GATE_PATH='quick'"):
        gate_path()


def _layers_fast_and_legacy(monkeypatch, workload, device, dtype):
    from lshsim.executor.moe_layer import DistributedMoE, MoEContext

    ctx = MoEContext(rank=0, world_size=1, device=device)
    monkeypatch.setenv("LSHSIM_GATE_PATH", "fast")
    fast = DistributedMoE(workload, ctx, dtype)
    monkeypatch.setenv("LSHSIM_GATE_PATH", "legacy")
    legacy = DistributedMoE(workload, ctx, dtype)
    monkeypatch.delenv("LSHSIM_GATE_PATH")
    return fast, legacy


def _forward_backward(model, x0, ids):
    for param in model.parameters():
        param.grad = None
    x = x0.detach().clone().requires_grad_(True)
    out = model.forward(x, ids)
    (out.y.float() * 0.01).sum().backward()
    return out, [out.y.detach(), x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("router", [RouterConfig("topk", k=2, capacity_factor=1.25), RouterConfig("hash", k=1),
                                    RouterConfig("locmoe", k=2, capacity_factor=None),
                                    RouterConfig("expert_choice", k=2, capacity_factor=1.0)], ids=lambda c: c.name)
@pytest.mark.parametrize("lsh", [None, {"family": "cross_polytope", "num_hashes": 2, "proj_dim": 4, "seed": 0}],
                         ids=["plain", "lsh"])
def test_fast_gate_path_equals_the_legacy_path_on_a_cpu(monkeypatch, router, lsh):
    """The exchange's input written by the gate, the splits summed by the exchange's function:
    outputs, plans, splits and gradients equal the legacy path."""
    from lshsim.executor.moe_layer import rank_inputs
    from lshsim.executor.workload import WorkloadConfig

    workload = WorkloadConfig(name="g", tokens_per_rank=96, d_model=32, d_ffn=48, num_experts=8, router=router,
                              lsh=lsh, dtype="float32")
    fast, legacy = _layers_fast_and_legacy(monkeypatch, workload, torch.device("cpu"), torch.float32)
    for seed in range(2):
        x0, ids = rank_inputs(dataclasses.replace(workload, seed=seed), 0, torch.device("cpu"), torch.float32)
        out_f, grads_f = _forward_backward(fast, x0, ids)
        out_l, grads_l = _forward_backward(legacy, x0, ids)
        assert out_f.send_splits == out_l.send_splits and out_f.rows_sent == out_l.rows_sent
        for name in ("expert_index", "slot", "kept", "tokens_per_expert"):
            assert torch.equal(getattr(out_f.plan, name), getattr(out_l.plan, name)), name
        assert torch.equal(out_f.plan.gate_weight, out_l.plan.gate_weight)
        for a, b in zip(grads_f, grads_l):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        if lsh is None and router.name != "expert_choice":  # the gate wrote the exchange's input
            counts = fast.count_exchange.source
            assert int(counts[-1]) == out_f.plan.num_kept and int(counts[:-1].sum()) == out_f.rows_sent


@pytest.mark.gpu
def test_count_exchange_graph_equals_the_eager_exchange_on_a_gpu():
    from lshsim.executor.comm import CountExchange

    device = torch.device("cuda")
    graphed, eager = CountExchange(16, device, enabled=True), CountExchange(16, device, enabled=False)
    for seed in range(3):  # new counts each call: the replay reads the source as it is now
        counts = torch.randint(0, 100, (16,), generator=torch.Generator().manual_seed(seed)).to(device)
        for exchange in (graphed, eager):
            exchange.load(counts, counts.sum())
        (host_g, received_g), (host_e, received_e) = graphed(), eager()
        assert host_g == host_e and torch.equal(received_g, received_e)
        assert host_g[:16] == counts.tolist() and host_g[16] == int(counts.sum())
        # the local experts' offsets, computed in the graph: the cumulative rows per expert (host ints)
        assert graphed.offsets.dtype == torch.int32 and eager.offsets is None
        assert graphed.offsets.tolist() == torch.tensor(host_e[-16:]).cumsum(0).tolist()
    assert graphed.replays == 3


@pytest.mark.gpu
def test_two_layers_sharing_the_exchange_keep_their_own_offsets_on_a_gpu(monkeypatch):
    """Two layers, one shared split-size exchange (graph): the second forward replays the exchange
    before the first layer's backward, which must still see its own expert offsets. Outputs and
    gradients equal the legacy path's (which computes the offsets in the expert phase)."""
    from lshsim.executor.moe_layer import rank_inputs
    from lshsim.executor.workload import WorkloadConfig

    device = torch.device("cuda")
    router = RouterConfig("topk", k=2, capacity_factor=None)
    first = WorkloadConfig(name="a", tokens_per_rank=512, d_model=256, d_ffn=512, num_experts=8, router=router)
    second = dataclasses.replace(first, name="b", seed=5)
    fast1, legacy1 = _layers_fast_and_legacy(monkeypatch, first, device, torch.float32)
    fast2, legacy2 = _layers_fast_and_legacy(monkeypatch, second, device, torch.float32)
    x0, ids = rank_inputs(first, 0, device, torch.float32)
    results = []
    for one, two in ((fast1, fast2), (legacy1, legacy2)):
        x = x0.detach().clone().requires_grad_(True)
        for param in [*one.parameters(), *two.parameters()]:
            param.grad = None
        y = two.forward(one.forward(x, ids).y, ids).y
        (y * 0.01).sum().backward()
        results.append([y.detach(), x.grad] + [p.grad for p in [*one.parameters(), *two.parameters()]])
    assert fast1.count_exchange is fast2.count_exchange and fast1.count_exchange.offsets is not None
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("router", [RouterConfig("topk", k=2, capacity_factor=1.25), RouterConfig("hash", k=1),
                                    RouterConfig("locmoe", k=2, capacity_factor=None)], ids=lambda c: c.name)
def test_fast_gate_path_equals_the_legacy_path_on_a_gpu(monkeypatch, router):
    """Both graph layouts and both exchanges on a GPU, several calls with new inputs: the same
    plans, splits, outputs and gradients (bf16)."""
    from lshsim.executor.moe_layer import rank_inputs
    from lshsim.executor.workload import WorkloadConfig

    device = torch.device("cuda")
    workload = WorkloadConfig(name="g", tokens_per_rank=512, d_model=256, d_ffn=512, num_experts=8, router=router)
    fast, legacy = _layers_fast_and_legacy(monkeypatch, workload, device, torch.bfloat16)
    replays = fast.count_exchange.replays  # shared by the layers of this process
    for seed in range(3):
        x0, ids = rank_inputs(dataclasses.replace(workload, seed=seed), 0, device, torch.bfloat16)
        out_f, grads_f = _forward_backward(fast, x0, ids)
        out_l, grads_l = _forward_backward(legacy, x0, ids)
        assert out_f.send_splits == out_l.send_splits
        assert torch.equal(out_f.plan.expert_index, out_l.plan.expert_index)
        for a, b in zip(grads_f, grads_l):  # the same kernels: equal up to the order of float sums
            scale = float(b.float().abs().max()) or 1.0
            assert float((a.float() - b.float()).abs().max()) <= 1e-3 * scale
    assert fast.gate_graph.replays == 3 and fast.count_exchange.replays - replays == 3


@pytest.mark.parametrize("world", [2, 4])
def test_count_exchange_sums_the_splits_as_the_layer_did(world):
    """The split sums of the exchange's function (by rank and by local expert) == the host loops
    of the legacy path, on the received counts of a 1-rank exchange reshaped for W ranks."""
    from lshsim.executor.comm import CountExchange

    exchange = CountExchange(3 * world, torch.device("cpu"))
    exchange.world = world  # the sums only (the all-to-all of one rank is a copy)
    counts = torch.randint(0, 9, (3 * world,), generator=torch.Generator().manual_seed(world))
    exchange.load(counts, counts.sum())
    host, _ = exchange()
    c, per_rank = counts.tolist(), 3
    at = 2 * 3 * world + 1
    assert host[at:at + world] == [sum(c[r * per_rank:(r + 1) * per_rank]) for r in range(world)]
    assert host[at + world:at + 2 * world] == host[at:at + world]  # received == sent on one rank
    assert host[at + 2 * world:] == [sum(c[r * per_rank + e] for r in range(world)) for e in range(per_rank)]
    assert exchange._exchange(sums=True).tolist() == host  # the graph's sums (on the device) == the host's


def test_exchange_graph_by_default_on_one_rank_only(monkeypatch):
    from lshsim.executor.comm import exchange_graph_enabled

    monkeypatch.delenv("LSHSIM_EXCHANGE_GRAPH", raising=False)
    assert exchange_graph_enabled(1) and not exchange_graph_enabled(2)
    assert exchange_graph_enabled(2, enabled=True) and not exchange_graph_enabled(1, enabled=False)
    monkeypatch.setenv("LSHSIM_EXCHANGE_GRAPH", "1")
    assert exchange_graph_enabled(4)
    monkeypatch.setenv("LSHSIM_EXCHANGE_GRAPH", "0")
    assert not exchange_graph_enabled(1)
    monkeypatch.setenv("LSHSIM_EXCHANGE_GRAPH", "yes")
    with pytest.raises(ValueError, match="LSHSIM_EXCHANGE_GRAPH='yes'"):
        exchange_graph_enabled(1)


def test_triton_gmm_is_refused_on_a_cpu_with_the_reason_and_auto_never_takes_it():
    w1, w2 = torch.zeros(40, 8, 8), torch.zeros(40, 8, 8)
    x = torch.zeros(80, 8)
    offsets = torch.arange(2, 81, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="triton_gmm.*cpu"):
        expert_ffn_grouped(x, [2] * 40, offsets, w1, w2, "triton_gmm")
    assert auto_expert_method(x, 40, 8, 8) in ("grouped_mm", "padded_bmm")


def test_grouped_gemm_tile_takes_four_stages_on_transposed_weights_above_k_4096():
    """pick_config: a row-major weight of K > 4096 gets 3 pipeline stages, the transposed view the input gradient
    reads (dy @ w[e]^T) 4 (measured faster on an H200: data/measured/h200/run-ba); at K <= 4096 both get 4."""
    from lshsim.executor.grouped_gemm import pick_config

    assert pick_config(32768, 256, 2048, 7168) == (128, 256, 64, 8, 3, 4, True)
    assert pick_config(32768, 256, 2048, 7168, transposed=True) == (128, 256, 64, 8, 4, 4, True)
    assert pick_config(32768, 256, 7168, 2048) == pick_config(32768, 256, 7168, 2048, transposed=True) \
        == (128, 256, 64, 8, 4, 8, True)
    assert pick_config(100, 4, 128, 8192, transposed=True) == (128, 128, 64, 4, 4, 8, True)


@pytest.mark.gpu
def test_triton_gmm_on_a_transposed_weight_of_large_k_equals_a_loop_on_a_gpu():
    """The input gradient's case: dy (R, K) @ w[e]^T with w (E, N, K) row-major, K > 4096 (pick_config's transposed
    tile), experts of 0-260 rows, against a float32 loop."""
    gg = _grouped_gemm_or_skip()
    generator = torch.Generator().manual_seed(7)
    counts = _uneven_rows(12, generator)
    k, n = 4160, 256
    x = torch.randn(sum(counts), k, generator=generator).to("cuda", torch.bfloat16)
    w = (torch.randn(12, n, k, generator=generator) * 0.02).to("cuda", torch.bfloat16)
    offsets = torch.tensor(counts, device="cuda").cumsum(0).to(torch.int32)
    wt = w.transpose(1, 2)                               # (E, K, N), stride(1) == 1: the transposed view
    assert wt.stride(1) == 1 and gg.pick_config(sum(counts), 12, n, k, transposed=True)[4] == 4
    y = gg.grouped_matmul(x, wt, offsets).float()
    start = 0
    for e, rows in enumerate(counts):
        ref = x[start:start + rows].float() @ wt[e].float()
        torch.testing.assert_close(y[start:start + rows], ref, atol=2e-2, rtol=2e-2)
        start += rows


def _grouped_gemm_or_skip():
    """The Triton grouped GEMM module, or skip the test where Triton does not run."""
    from lshsim.executor import grouped_gemm

    if not grouped_gemm.available(torch.empty(0, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("triton not available")
    return grouped_gemm


def _uneven_rows(num_experts: int, generator: torch.Generator) -> list[int]:
    """Rows per expert around a 128-row tile: 0, 1, 127, 128, 129, ... (every edge of a block)."""
    edges = [0, 1, 63, 64, 65, 127, 128, 129, 200, 255]
    return [edges[e % len(edges)] if e < len(edges) else int(torch.randint(0, 260, (1,), generator=generator))
            for e in range(num_experts)]


@pytest.mark.gpu
@pytest.mark.parametrize("d_model,d_ffn", [(256, 384), (200, 136)], ids=["even-k", "ragged-k"])
def test_triton_gmm_equals_a_float32_loop_on_a_gpu(d_model, d_ffn):
    """The Triton grouped GEMM path (forward, the input and both weight gradients) == gelu(x W1[e]) W2[e]
    expert by expert in float32, within bf16 rounding, with experts of 0, 1, 63-65, 127-129 ... rows
    (every edge of a row block); "auto" takes it for 40 experts of about 100 rows of DeepSeek-V3's expert
    matrix, not for a small matrix nor for 8 experts of 1,000 rows."""
    grouped_gemm = _grouped_gemm_or_skip()
    generator = torch.Generator().manual_seed(5)
    rows = _uneven_rows(40, generator)
    device = torch.device("cuda")
    x = torch.randn(sum(rows), d_model, generator=generator).to(device, torch.bfloat16).requires_grad_(True)
    w1 = (torch.randn(40, d_model, d_ffn, generator=generator) * d_model ** -0.5).to(device, torch.bfloat16)
    w2 = (torch.randn(40, d_ffn, d_model, generator=generator) * d_ffn ** -0.5).to(device, torch.bfloat16)
    w1.requires_grad_(True)
    w2.requires_grad_(True)
    offsets = torch.cumsum(torch.tensor(rows), 0).to(device, torch.int32)
    # auto: 40 experts of about 100 rows with DeepSeek-V3's expert matrix, not with a small one, not 8 experts
    assert auto_expert_method(x, 40, 7168, 2048) == "triton_gmm"
    assert auto_expert_method(x, 40, 4096, 1408) != "triton_gmm"
    assert auto_expert_method(torch.empty(8000, d_model, device=device, dtype=torch.bfloat16), 8, 7168,
                              2048) != "triton_gmm"
    out, used = expert_ffn_grouped(x, rows, offsets, w1, w2, "triton_gmm")
    assert used == "triton_gmm"
    g = torch.randn(out.shape, generator=generator).to(device, torch.bfloat16)
    grads = torch.autograd.grad((out.float() * g.float()).sum(), (x, w1, w2))
    x32, w132, w232 = (t.detach().float().requires_grad_(True) for t in (x, w1, w2))
    ref = torch.cat([torch.nn.functional.gelu(p @ w132[e]) @ w232[e] for e, p in enumerate(torch.split(x32, rows))])
    ref_grads = torch.autograd.grad((ref * g.float()).sum(), (x32, w132, w232))
    for a, b in zip([out] + list(grads), [ref] + list(ref_grads)):
        scale = float(b.abs().max()) or 1.0
        assert float((a.float() - b).abs().max()) <= 2e-2 * scale
    # an expert without rows gets a zero weight gradient
    for e in [e for e, n in enumerate(rows) if n == 0]:
        assert float(grads[1][e].abs().max()) == 0.0 and float(grads[2][e].abs().max()) == 0.0


@pytest.mark.gpu
def test_triton_weight_gradient_equals_a_loop_on_a_gpu():
    """grouped_weight_grad (the Triton dw kernel, used where torch has no grouped matrix multiply):
    x_e^T dy_e per expert, zero for an expert without rows, within bf16 rounding."""
    grouped_gemm = _grouped_gemm_or_skip()
    generator = torch.Generator().manual_seed(6)
    rows = _uneven_rows(12, generator)
    device = torch.device("cuda")
    x = torch.randn(sum(rows), 200, generator=generator).to(device, torch.bfloat16)
    dy = torch.randn(sum(rows), 136, generator=generator).to(device, torch.bfloat16)
    offsets = torch.cumsum(torch.tensor(rows), 0).to(device, torch.int32)
    dw = grouped_gemm.grouped_weight_grad(x, dy, offsets, len(rows))
    for e, (xe, ye) in enumerate(zip(torch.split(x.float(), rows), torch.split(dy.float(), rows))):
        ref = xe.t() @ ye
        assert float((dw[e].float() - ref).abs().max()) <= 2e-2 * (float(ref.abs().max()) or 1.0)


@pytest.mark.gpu
def test_layer_with_many_small_experts_on_triton_gmm_equals_grouped_mm_on_a_gpu():
    """A one-rank layer of 64 experts on the Triton grouped GEMM == the same layer on torch's
    grouped_mm: output, the tokens' gradient and every parameter gradient within bf16 rounding."""
    from lshsim.executor import grouped_gemm
    from lshsim.executor.moe_layer import DistributedMoE, MoEContext, rank_inputs
    from lshsim.executor.workload import WorkloadConfig

    if not grouped_gemm.available(torch.empty(0, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("triton not available")
    device = torch.device("cuda")
    workload = WorkloadConfig(name="g", tokens_per_rank=1024, d_model=256, d_ffn=512, num_experts=64,
                              router=RouterConfig("topk", k=4, capacity_factor=None))
    ctx = MoEContext(rank=0, world_size=1, device=device)
    fast, ref = DistributedMoE(workload, ctx, torch.bfloat16), DistributedMoE(workload, ctx, torch.bfloat16)
    for a, b in zip(fast.parameters(), ref.parameters()):
        assert torch.equal(a, b)  # the same seed: the same weights
    fast.expert_impl, ref.expert_impl = "triton_gmm", "grouped_mm"
    x0, ids = rank_inputs(workload, 0, device, torch.bfloat16)
    layer_step_matches((fast, ref), x0, ids)
    assert fast.expert_method == "triton_gmm" and ref.expert_method == "grouped_mm"


@pytest.mark.gpu
def test_every_triton_gmm_tile_config_gives_the_products_on_a_gpu():
    """grouped_matmul under every candidate tile (full or half-height last blocks, 128 or 256
    columns): x_e @ w[e] for experts of 0 to 255 rows, within bf16 rounding of a float32 loop."""
    grouped_gemm = _grouped_gemm_or_skip()
    generator = torch.Generator().manual_seed(7)
    rows = _uneven_rows(24, generator)
    device = torch.device("cuda")
    x = torch.randn(sum(rows), 192, generator=generator).to(device, torch.bfloat16)
    w = torch.randn(24, 192, 320, generator=generator).to(device, torch.bfloat16)
    offsets = torch.cumsum(torch.tensor(rows), 0).to(device, torch.int32)
    ref = torch.cat([p @ w[e].float() for e, p in enumerate(torch.split(x.float(), rows))])
    for config in grouped_gemm.CONFIGS:
        y = grouped_gemm.grouped_matmul(x, w, offsets, config=config)
        assert float((y.float() - ref).abs().max()) <= 1e-2 * float(ref.abs().max()), config
