"""The gate's fast path (`gate_graph.GraphedGate`, copy_outputs=False): one forward replay and one
backward replay behind a hand-written autograd function (`_Replay`), the caller's tensors read where
they live on the first capture, a second capture on buffers of its own when a call brings other
storage.

On a CPU the replays are emulated (`emulate=True`: the captured function runs eagerly on the static
buffers and its results are copied into the static outputs), so the bookkeeping runs here: plans,
send rows and gradients equal the eager gate's over several calls, the caller's tensors are never
written, the captures happen when they should. On a GPU (marked gpu) the real graphs, in the layer,
with and without LSH, against the eager gate.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import layer_step_matches  # noqa: E402
from lshsim.dispatch import RouterConfig
from lshsim.executor.gate_graph import GateWeights, GraphedGate, GraphedGather
from lshsim.executor.moe_layer import DistributedMoE, GateParams, MoEContext, _gate_inputs, rank_inputs
from lshsim.executor.moe_ops import gather_choices
from lshsim.executor.workload import WorkloadConfig

ROUTERS = [RouterConfig("topk", k=2, capacity_factor=1.25), RouterConfig("topk", k=1, capacity_factor=None),
           RouterConfig("hash", k=1, capacity_factor=None), RouterConfig("locmoe", k=2, capacity_factor=1.0)]


def _gate(layer: DistributedMoE, gather: bool, emulate: bool) -> GraphedGate:
    workload = layer.workload
    return GraphedGate(layer.routing,
                       lambda x, weight: _gate_inputs(workload, GateParams(weight, layer.gate.bias), x, with_bias=False),
                       layer.gate.weight, copy_outputs=not emulate, gather=gather, emulate=emulate)


def _run(gate: GraphedGate, layer: DistributedMoE, x: torch.Tensor, ids: torch.Tensor, grad_seed: int):
    """The gate's outputs and the gradients of sum(g * send rows) + sum(h * gate weights)."""
    for param in layer.parameters():
        param.grad = None
    if x.grad is not None:
        x.grad = None
    plan, order, inv, counts, send_x = gate(x, ids)
    fields = [plan.expert_index, plan.slot, plan.kept, plan.tokens_per_expert, counts]
    fields = [f.clone() for f in fields] + ([order.clone(), inv.clone()] if order is not None else [])
    loss = 0.0
    generator = torch.Generator().manual_seed(grad_seed)
    if send_x is not None:
        loss = loss + (send_x * torch.randn(send_x.shape, generator=generator)).sum()
    if plan.gate_weight.requires_grad:
        loss = loss + (plan.gate_weight * torch.randn(plan.gate_weight.shape, generator=generator)).sum()
    values = [plan.gate_weight.detach().clone()] + ([send_x.detach().clone()] if send_x is not None else [])
    grads = []
    if torch.is_tensor(loss) and loss.requires_grad:
        loss.backward()
        grads = [x.grad.clone() if x.grad is not None else None] + \
            [p.grad.clone() if p.grad is not None else None for p in layer.parameters()[2:]]
    return fields, values, grads


@pytest.mark.parametrize("gather", [True, False], ids=["gather", "no-gather"])
@pytest.mark.parametrize("router", ROUTERS, ids=lambda c: f"{c.name}-k{c.k}")
def test_emulated_replays_equal_the_eager_gate(router, gather):
    workload = WorkloadConfig(name="g", tokens_per_rank=96, d_model=32, d_ffn=64, num_experts=8, router=router,
                              skew=0.5)
    layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=torch.device("cpu")), torch.float64)
    fast, eager = _gate(layer, gather, emulate=True), _gate(layer, gather, emulate=False)
    x_a, ids_a = rank_inputs(workload, 0, torch.device("cpu"), torch.float64)
    x_b, ids_b = rank_inputs(dataclasses.replace(workload, seed=1), 0, torch.device("cpu"), torch.float64)
    kept_a, kept_b = x_a.clone(), x_b.clone()
    # same storage twice (the first capture reads it where it lives), then other storage (a second
    # capture, on buffers of its own), then the first storage again (copied into those buffers)
    calls = [(x_a, ids_a), (x_a, ids_a), (x_b, ids_b), (x_a, ids_a), (x_b.clone(), ids_b.clone())]
    captures = []
    for i, (x0, ids) in enumerate(calls):
        got = _run(fast, layer, x0.detach().requires_grad_(True), ids, i)
        want = _run(eager, layer, x0.detach().requires_grad_(True), ids, i)
        for a, b in zip(got[0], want[0]):
            assert torch.equal(a, b)
        for a, b in zip(got[1] + got[2], want[1] + want[2]):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        if router.name != "hash":
            assert len(got[2]) >= 1 and got[2][0] is not None  # a gradient reached x
        captures.append(fast.captures)
    assert captures == [1, 1, 2, 2, 2]
    assert fast.replays == len(calls)
    assert torch.equal(x_a, kept_a) and torch.equal(x_b, kept_b)  # no caller's tensor written


def test_emulated_replay_without_a_gradient_skips_the_autograd_function():
    router = RouterConfig("topk", k=2, capacity_factor=1.25)
    workload = WorkloadConfig(name="g", tokens_per_rank=64, d_model=32, d_ffn=64, num_experts=8, router=router)
    layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=torch.device("cpu")), torch.float64)
    fast, eager = _gate(layer, True, emulate=True), _gate(layer, True, emulate=False)
    x, ids = rank_inputs(workload, 0, torch.device("cpu"), torch.float64)
    with torch.no_grad():
        got, want = fast(x, ids), eager(x, ids)
    assert not got[0].gate_weight.requires_grad and got[4].grad_fn is None
    assert torch.equal(got[0].expert_index, want[0].expert_index) and torch.equal(got[4], want[4])
    torch.testing.assert_close(got[0].gate_weight, want[0].gate_weight)


def test_emulated_replay_backward_uses_the_hand_written_gate_weight_gradient():
    """The gradient through the replay's gate weights is GateWeights' (the eager gate's)."""
    router = RouterConfig("topk", k=2, capacity_factor=None)
    workload = WorkloadConfig(name="g", tokens_per_rank=48, d_model=16, d_ffn=32, num_experts=4, router=router)
    layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=torch.device("cpu")), torch.float64)
    fast = _gate(layer, False, emulate=True)
    x, ids = rank_inputs(workload, 0, torch.device("cpu"), torch.float64)
    x = x.requires_grad_(True)
    plan = fast(x, ids)[0]
    plan.gate_weight.sum().backward()
    logits = (x.detach().float() @ layer.gate.weight.detach()).requires_grad_(True)
    weight = GateWeights.apply(logits, plan.gate_weight.detach(), plan.expert_index, "topk", layer.gate.bias)
    (dlogits,) = torch.autograd.grad(weight.sum(), logits)
    torch.testing.assert_close(x.grad, (dlogits @ layer.gate.weight.detach().T).to(x.dtype))


def test_a_backward_after_a_later_forward_of_the_same_shape_is_refused():
    """The replay's activations live in static buffers: a second forward on the same capture before the
    first one's backward overwrites them, so that backward raises instead of returning wrong gradients;
    a forward of another shape (another capture) does not, and backward-then-forward is fine."""
    router = RouterConfig("topk", k=2, capacity_factor=None)
    workload = WorkloadConfig(name="g", tokens_per_rank=48, d_model=16, d_ffn=32, num_experts=4, router=router)
    layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=torch.device("cpu")), torch.float64)
    fast = _gate(layer, False, emulate=True)
    x, ids = rank_inputs(workload, 0, torch.device("cpu"), torch.float64)
    x1 = x.clone().requires_grad_(True)
    first = fast(x1, ids)[0].gate_weight
    fast(x1, ids)  # a later forward on the same capture (a no-grad forward has a capture of its own)
    with pytest.raises(RuntimeError, match="two forwards before one backward"):
        first.sum().backward()
    a = fast(x1, ids)[0].gate_weight
    other = fast(x[:32].clone().requires_grad_(True), ids[:32])[0].gate_weight  # another shape: its own capture
    a.sum().backward()
    other.sum().backward()
    b = fast(x1, ids)[0].gate_weight
    b.sum().backward()


@pytest.mark.gpu
@pytest.mark.parametrize("router", [RouterConfig("topk", k=2, capacity_factor=1.25), RouterConfig("hash", k=1),
                                    RouterConfig("locmoe", k=2, capacity_factor=None)], ids=lambda c: c.name)
@pytest.mark.parametrize("lsh", [False, True], ids=["plain", "lsh"])
def test_layer_with_the_replayed_gate_equals_the_eager_gate_on_a_gpu(router, lsh):
    """The layer with its gate replayed (fast path) == the layer with the eager gate, outputs and
    gradients (bf16), over calls that reuse the tokens' storage and calls that bring new storage."""
    device = torch.device("cuda")
    workload = WorkloadConfig(name="g", tokens_per_rank=512, d_model=256, d_ffn=512, num_experts=8, router=router,
                              lsh={"family": "cross_polytope", "num_hashes": 2, "proj_dim": 8, "seed": 0} if lsh
                              else None)
    ctx = MoEContext(rank=0, world_size=1, device=device)
    fast, eager = DistributedMoE(workload, ctx, torch.bfloat16), DistributedMoE(workload, ctx, torch.bfloat16)
    eager.gate_graph.available = eager.lsh_gate.available = False
    eager.lsh_gather.enabled = False  # the LSH send rows gathered eagerly (gather_choices)
    inputs = [rank_inputs(dataclasses.replace(workload, seed=seed), 0, device, torch.bfloat16) for seed in range(2)]
    for x0, ids in [inputs[0], inputs[0], inputs[1], inputs[0]]:
        layer_step_matches((fast, eager), x0, ids, clone=False)
    graph = fast.lsh_gate if lsh else fast.gate_graph
    assert graph.replays == 4 and graph.captures == 2
    # LSH: no send rows gathered in either (the centroids' backward and restore read x by the row map)
    assert fast.lsh_gather.replays == 0 and eager.lsh_gather.replays == 0


def _lsh_layer_step(model, x0, ids):
    """One forward and backward of an LSH layer on a fresh leaf copy of x0, parameter gradients
    cleared first: (output, the tokens' gradient, token of each row, the centroids in use, segments)."""
    for param in model.parameters():
        param.grad = None
    x = x0.detach().requires_grad_(True)
    out = model.forward(x, ids)
    (out.y.float() * 0.01).sum().backward()
    _, token_of_row, centroids, segs = out.lsh_rows
    return out, x.grad, token_of_row, centroids[:int(segs.num_segments[0])], segs


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(512, 256, 8, 2, 2, 8), (3000, 512, 16, 4, 3, 8), (700, 256, 8, 3, 6, 16)],
                         ids=["t512-k2", "t3000-k4", "t700-k3-L6"])
@pytest.mark.parametrize("kernels", [True, False], ids=["hash-in-graph", "eager-hash"])
def test_lsh_layer_without_the_send_rows_equals_the_gathered_rows_on_a_gpu(shape, kernels):
    """The LSH layer without the (T k, d) send rows (`gather_free`: the centroids' autograd node and
    restore read x through the token of each row) == the layer that gathers them (the replayed
    gather, `centroids_of` / `segment_mean` and `restore_rows` on the rows): outputs, centroids, the
    send order, every parameter gradient and the tokens' gradient bit-equal (the same values rounded
    once each; restore's rows' gradient is summed into the centroids' backward, `PendingRows`, as
    autograd summed the gathered rows'). Over calls that reuse the tokens' storage and that bring new
    storage."""
    from lshsim.dispatch import lsh_fast

    if not lsh_fast.triton_available("cuda"):
        pytest.skip("triton not available")
    tokens, d_model, experts, k, num_hashes, proj_dim = shape
    device = torch.device("cuda")
    workload = WorkloadConfig(name="g", tokens_per_rank=tokens, d_model=d_model, d_ffn=2 * d_model,
                              num_experts=experts, router=RouterConfig("topk", k=k, capacity_factor=1.0),
                              input_clusters=32, input_noise=0.1,
                              lsh={"family": "cross_polytope", "num_hashes": num_hashes, "proj_dim": proj_dim,
                                   "seed": 0})
    ctx = MoEContext(rank=0, world_size=1, device=device)
    new, old = DistributedMoE(workload, ctx, torch.bfloat16), DistributedMoE(workload, ctx, torch.bfloat16)
    old.gather_free = False
    for model in (new, old):
        model.routing.segments_hashed.enabled = kernels
    inputs = [rank_inputs(dataclasses.replace(workload, seed=seed), 0, device, torch.bfloat16) for seed in range(2)]
    for x0, ids in [inputs[0], inputs[0], inputs[1]]:
        results = []
        for model in (new, old):
            out, x_grad, token_of_row, centroids, segs = _lsh_layer_step(model, x0, ids)
            results.append(([out.y, centroids.detach(), token_of_row, segs.seg_of_row, out.send_rows()]
                            + [p.grad for p in model.parameters()], x_grad))
        (exact_new, grad_new), (exact_old, grad_old) = results
        for a, b in zip(exact_new, exact_old):
            assert torch.equal(a, b)
        diff = (grad_new.double() - grad_old.double()).abs()
        assert torch.equal(grad_new, grad_old), (
            f"tokens' gradient: {int((diff > 0).sum())} of {diff.numel()} differ, max {float(diff.max()):.3g} "
            f"(largest magnitude {float(grad_old.double().abs().max()):.3g})")
        assert not torch.equal(grad_new, torch.zeros_like(grad_new))
    assert new._lsh_in_graph(inputs[0][0], new.lsh) == kernels
    assert new.lsh_gather.replays == 0 and old.lsh_gather.replays == 3


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(512, 256, 8, 2, 2, 8), (3000, 512, 16, 4, 3, 8), (700, 256, 8, 2, 6, 16)],
                         ids=["t512", "t3000", "L6"])
@pytest.mark.parametrize("which", ["mean", "runs", "scan"])
def test_lsh_phases_on_kernels_equal_the_torch_bucketing_on_a_gpu(monkeypatch, shape, which):
    """The LSH layer with the hash inside the bucketing graph and `choice_segments` (the kernel path)
    == the layer with the eager hash and the torch segments: outputs, the tokens' gradient and every
    parameter gradient bit-equal, the send order and the segments equal, over calls that reuse the
    tokens' storage, that bring new storage (two aliased captures) and past the aliased captures
    (private buffers, copied into). The centroids on the mean kernel, or on the runs kernel
    (SEGMENT_MEANS_ON_RUNS) or on the scan-runs kernel (SEGMENT_MEANS_ON_SCAN, also restore's
    backward sums) in both layers."""
    from lshsim.dispatch import lsh_fast

    if not lsh_fast.triton_available("cuda"):
        pytest.skip("triton not available")
    monkeypatch.setattr(lsh_fast, "SEGMENT_MEANS_ON_RUNS", which == "runs")
    monkeypatch.setattr(lsh_fast, "SEGMENT_MEANS_ON_SCAN", which == "scan")
    monkeypatch.setattr(lsh_fast, "SEGMENT_SUMS_ON_SCAN", which == "scan")
    monkeypatch.setattr(lsh_fast, "SEGMENT_SCAN_MIN_D_MODEL", 0)
    tokens, d_model, experts, k, num_hashes, proj_dim = shape
    device = torch.device("cuda")
    workload = WorkloadConfig(name="g", tokens_per_rank=tokens, d_model=d_model, d_ffn=2 * d_model,
                              num_experts=experts, router=RouterConfig("topk", k=k, capacity_factor=None),
                              input_clusters=32, input_noise=0.1,
                              lsh={"family": "cross_polytope", "num_hashes": num_hashes, "proj_dim": proj_dim,
                                   "seed": 0})
    ctx = MoEContext(rank=0, world_size=1, device=device)
    fast, ref = DistributedMoE(workload, ctx, torch.bfloat16), DistributedMoE(workload, ctx, torch.bfloat16)
    ref.routing.segments_hashed.enabled = False  # eager hash, then the bucketing graph
    inputs = [rank_inputs(dataclasses.replace(workload, seed=seed), 0, device, torch.bfloat16) for seed in range(3)]
    for x0, ids in [inputs[0], inputs[0], inputs[1], inputs[0], inputs[2], inputs[2]]:
        results = []
        for model in (fast, ref):
            with monkeypatch.context() as patch:
                if model is ref:  # the torch segments in the reference's graph (captured on its first call)
                    patch.setattr(lsh_fast, "choice_segments_eligible", lambda *a, **kw: False)
                out, x_grad, token_of_row, centroids, segs = _lsh_layer_step(model, x0, ids)
                results.append([out.y, x_grad, token_of_row, out.send_rows(), centroids, segs.order, segs.seg_of_row,
                                segs.seg_start, segs.seg_count, segs.seg_group, segs.num_valid,
                                torch.tensor(out.send_splits)] + [p.grad for p in model.parameters()])
        for a, b in zip(*results):
            assert torch.equal(a, b)
    assert fast._lsh_in_graph(inputs[0][0], fast.lsh) and fast.routing.segments_hashed.replays == 6
    assert fast.routing.segments_hashed._aliased_captures == 2  # x0, x1 (with the gate's two plan buffers)
    assert not ref.routing.segments_hashed.replays and ref.routing.segments.replays == 6


def test_emulated_replay_shortcut_only_for_the_same_call():
    """A call that `same_call`s the last entry (same storage, shape, dtype, gradient flags and grad
    mode) replays it without building its key; a call that differs in any of these (no grad mode, a
    shorter view at the same address, the input without requires_grad) takes its own capture and
    still equals the eager gate."""
    router = RouterConfig("topk", k=2, capacity_factor=1.25)
    workload = WorkloadConfig(name="g", tokens_per_rank=64, d_model=32, d_ffn=64, num_experts=8, router=router)
    layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=torch.device("cpu")), torch.float64)
    fast, eager = _gate(layer, True, emulate=True), _gate(layer, True, emulate=False)
    x, ids = rank_inputs(workload, 0, torch.device("cpu"), torch.float64)
    looked_up = []
    lookup = fast._entry
    fast._entry = lambda *a: looked_up.append(1) or lookup(*a)

    def check(x_in, ids_in, grad=True):
        with torch.set_grad_enabled(grad):
            got, want = fast(x_in, ids_in), eager(x_in, ids_in)
        assert torch.equal(got[0].expert_index, want[0].expert_index) and torch.equal(got[4], want[4])
        torch.testing.assert_close(got[0].gate_weight, want[0].gate_weight)
        assert got[0].gate_weight.requires_grad == grad  # the gate weight (a parameter) requires one
        return got

    check(x.detach().requires_grad_(True), ids)
    check(x.detach().requires_grad_(True), ids)  # the same call: the shortcut
    assert (fast.captures, len(looked_up)) == (1, 1)
    check(x[:32].detach().requires_grad_(True), ids[:32])  # same address, fewer rows
    assert (fast.captures, len(looked_up)) == (2, 2)
    check(x.detach().requires_grad_(True), ids)
    check(x.detach().requires_grad_(True), ids, grad=False)  # no grad mode: another key
    assert (fast.captures, len(looked_up)) == (3, 4)
    check(x.detach(), ids)  # no requires_grad
    assert (fast.captures, len(looked_up)) == (4, 5)
    got = check(x.detach().requires_grad_(True), ids)  # back to the first: found by its key, not captured again
    assert (fast.captures, len(looked_up)) == (4, 6)
    got[0].gate_weight.sum().backward()  # its backward still runs (the generation guard is per entry)


def test_emulated_gather_replay_equals_gather_choices():
    """`GraphedGather` (LSH-MoE's send rows as one replay; emulated here): rows and the tokens' gradient
    equal `gather_choices`' over calls on the same storage (one capture), on other storage of x or of
    the row map (a capture each), past MAX_CAPTURES and for a non-contiguous x (gather_choices itself),
    without a gradient (no autograd node); the caller's tensors are never written."""
    torch.manual_seed(0)
    num_tokens, d_model, k = 40, 16, 3
    gather = GraphedGather(emulate=True)
    x_a, x_b = torch.randn(num_tokens, d_model, dtype=torch.float64), torch.randn(num_tokens, d_model,
                                                                                 dtype=torch.float64)
    orders = [torch.randperm(num_tokens * k) for _ in range(2)]
    maps = []
    for order in orders:
        inv = torch.empty_like(order)
        inv[order] = torch.arange(order.numel())
        maps.append((order, inv, torch.div(order, k, rounding_mode="floor")))
    kept = [x_a.clone(), x_b.clone()]

    def check(x0, which, expect_captures, grad=True):
        order, inv, token_of_row = maps[which]
        g = torch.randn(num_tokens * k, d_model, dtype=torch.float64)
        got_x, want_x = x0.detach().requires_grad_(grad), x0.detach().clone().requires_grad_(grad)
        got, want = gather(got_x, order, inv, k, token_of_row), gather_choices(want_x, order, inv, k, token_of_row)
        assert torch.equal(got, want)
        assert got.requires_grad == grad
        if grad:
            (got * g).sum().backward()
            (want * g).sum().backward()
            torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-12, atol=1e-12)
        assert gather.captures == expect_captures

    check(x_a, 0, 1)
    x_a.add_(1.0)  # new values in the same storage (as the caller's next tokens): read by the replay
    kept[0] = x_a.clone()
    check(x_a, 0, 1)  # same storage: replayed
    check(x_b, 0, 2)  # other x storage
    check(x_a, 1, 3)  # other row-map storage
    check(x_a, 0, 3, grad=False)
    check(x_a.clone(), 0, 4)
    replays = gather.replays
    check(x_b.clone(), 1, 4)  # past MAX_CAPTURES: gather_choices
    check(x_a, 0, 4)  # a captured one still replays
    assert gather.replays == replays + 1
    wide = torch.randn(d_model, num_tokens, dtype=torch.float64).T  # not contiguous: gather_choices
    check(wide, 0, 4)
    assert gather.replays == replays + 1
    assert torch.equal(x_a, kept[0]) and torch.equal(x_b, kept[1])


def test_emulated_replay_with_the_weight_cast_outside_the_graph_equals_the_eager_gate():
    """cast_weight=True: the gate weight's 16-bit copy is filled outside the graph (one eager copy when
    the weight's version or storage changed) and read by the graph through `CachedCast`: values and
    gradients (x and the fp32 weight) equal the gate that casts inside (bit for bit), across an
    in-place update of the weight (a refill) and calls without one (no refill)."""
    router = RouterConfig("topk", k=2, capacity_factor=1.25)
    workload = WorkloadConfig(name="g", tokens_per_rank=96, d_model=32, d_ffn=64, num_experts=8, router=router,
                              skew=0.5)
    layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=torch.device("cpu")), torch.float32)
    weight = layer.gate.weight
    assert weight.dtype == torch.float32 and weight.requires_grad

    def inputs(x, w):  # the CUDA branch of `_gate_inputs`: the product in the tokens' 16-bit dtype
        return {"logits": x @ w.to(x.dtype)}

    fast = GraphedGate(layer.routing, inputs, weight, copy_outputs=False, emulate=True, cast_weight=True)
    eager = GraphedGate(layer.routing, inputs, weight, copy_outputs=True)
    x0, ids = rank_inputs(workload, 0, torch.device("cpu"), torch.bfloat16)
    refills = []
    for step in range(4):
        if step == 2:
            with torch.no_grad():
                weight.mul_(-1.5)  # an optimizer step: in place, a new version
        got = _run(fast, layer, x0.detach().requires_grad_(True), ids, step)
        want = _run(eager, layer, x0.detach().requires_grad_(True), ids, step)
        for a, b in zip(got[0] + got[1], want[0] + want[1]):
            assert torch.equal(a, b)
        assert len(got[2]) == 2 and got[2][0] is not None and got[2][1] is not None  # x and the weight
        for a, b in zip(got[2], want[2]):
            assert a.dtype == b.dtype and torch.equal(a, b)
        refills.append(fast.cast_refills)
    assert refills == [1, 1, 2, 2]
    assert fast._casts[torch.bfloat16].dtype == torch.bfloat16 and fast.captures == 1
    # not cast: tokens in the weight's dtype
    x32 = x0.float().requires_grad_(True)
    plan = fast(x32, ids)[0]
    assert fast._cast_in_use is None and fast.cast_refills == 2
    assert torch.equal(plan.expert_index, eager(x32, ids)[0].expert_index)


@pytest.mark.gpu
@pytest.mark.parametrize("gather", [True, False], ids=["gather", "no-gather"])
def test_replay_with_the_weight_cast_outside_the_graph_equals_the_eager_gate_on_a_gpu(gather):
    """The layer's gates on a GPU (bf16 tokens, fp32 gate weight): the replay that reads the weight's
    bf16 copy filled outside the graph equals the eager gate, values and gradients bit for bit, before
    and after an in-place update of the weight; the copy is refilled once per weight version."""
    device = torch.device("cuda")
    router = RouterConfig("topk", k=2, capacity_factor=1.25)
    workload = WorkloadConfig(name="g", tokens_per_rank=4096, d_model=256, d_ffn=512, num_experts=8, router=router)
    layer = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=device), torch.bfloat16)
    weight = layer.gate.weight

    def inputs(x, w):
        return _gate_inputs(workload, GateParams(w, layer.gate.bias), x, with_bias=False)

    fast = GraphedGate(layer.routing, inputs, weight, copy_outputs=False, gather=gather, cast_weight=True)
    eager = GraphedGate(layer.routing, inputs, weight, copy_outputs=False, gather=gather, emulate=True)
    x0, ids = rank_inputs(workload, 0, device, torch.bfloat16)
    x_fast, x_eager = x0.detach().requires_grad_(True), x0.detach().requires_grad_(True)
    refills = []
    for step in range(4):
        if step == 2:
            with torch.no_grad():
                weight.mul_(-1.5)
        got = _run_cuda(fast, layer, x_fast, ids, step)
        want = _run_cuda(eager, layer, x_eager, ids, step)
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                assert a.dtype == b.dtype and torch.equal(a, b)
        refills.append(fast.cast_refills)
    assert refills == [1, 1, 2, 2] and fast.captures == 1 and eager.cast_refills == 0


def _run_cuda(gate, layer, x, ids, seed):
    for param in layer.parameters():
        param.grad = None
    x.grad = None
    plan, order, inv, counts, send_x = gate(x, ids)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    loss = (plan.gate_weight * torch.randn(plan.gate_weight.shape, generator=generator, device=x.device)).sum()
    if send_x is not None:
        loss = loss + (send_x.float() * torch.randn(send_x.shape, generator=generator, device=x.device)).sum()
    out = [plan.expert_index.clone(), plan.slot.clone(), plan.kept.clone(), counts.clone(),
           plan.gate_weight.detach().clone(), None if send_x is None else send_x.detach().clone()]
    loss.backward()
    return out + [x.grad.clone(), layer.gate.weight.grad.clone()]
