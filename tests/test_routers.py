"""Routers: GrAP, hash uniformity, expert choice, LocMoE locality, losses, and bad input."""
from __future__ import annotations

import doctest

import pytest
import torch
from scipy import stats

import lshsim.dispatch.placement as placement_module
import lshsim.dispatch.routers as routers_module
from lshsim.dispatch import (Placement, RouterConfig, aux_loss, contiguous_placement, grap_weights,
                             locality_loss, make_placement, route, route_expert_choice, route_hash,
                             route_locmoe, route_topk)
from lshsim.dispatch.routers import grap_scores, hash_experts
from lshsim.dispatch.synthetic import synthetic_router_inputs


def test_doctests_of_dispatch_modules():
    for module in (routers_module, placement_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ---- GrAP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("d_model,num_experts", [(16, 4), (768, 16), (1024, 64), (12, 12)])
def test_grap_weights_orthogonal_equal_norms(d_model, num_experts):
    weights = grap_weights(d_model, num_experts, dtype=torch.float64)  # (E, d)
    gram = weights @ weights.t()  # (E, E)
    expected_norm_sq = num_experts / d_model  # ||W_i||^2 = (d/n) * (n/d)^2
    torch.testing.assert_close(gram, torch.eye(num_experts, dtype=torch.float64) * expected_norm_sq)


def test_grap_scores_equal_dense_matmul():
    """The fast group-mean equals ReLU(W x + b) with the explicit GrAP matrix (slow reference)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, 32, generator=generator, dtype=torch.float64)
    bias = torch.randn(8, generator=generator, dtype=torch.float64)
    dense = torch.relu(hidden @ grap_weights(32, 8, dtype=torch.float64).t() + bias)
    torch.testing.assert_close(grap_scores(hidden, 8, bias).double(), dense, rtol=1e-6, atol=1e-6)


# ---- hash --------------------------------------------------------------------------------------
def test_hash_router_deterministic():
    placement = contiguous_placement(16, 4, 2)
    ids = torch.randint(0, 50000, (1000,), generator=torch.Generator().manual_seed(1))
    first = route_hash(ids, placement)
    second = route_hash(ids.clone(), placement)
    assert torch.equal(first.expert_index, second.expert_index)
    # same id -> same expert regardless of position
    repeated = route_hash(torch.tensor([7, 7, 7, 123, 123]), placement)
    assert len(set(repeated.expert_index[:3, 0].tolist())) == 1
    assert repeated.expert_index[3, 0] == repeated.expert_index[4, 0]


def _splitmix64(x: int) -> int:
    """SplitMix64's output for state x (Steele, Lea and Flood 2014; Vigna's reference C code), in Python
    integers modulo 2^64: an implementation independent of the library's int64 wrapping arithmetic."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_hash_experts_is_splitmix64_mod_e():
    """hash_experts(id) = (splitmix64(id) with the sign bit cleared) mod E, against the published test
    vector (seed 0: first outputs 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4) and a Python-integer reference
    over ids up to 2^63 - 1 (where int64 wraps) and several E."""
    assert _splitmix64(0) == 0xE220A8397B1DCDAF
    assert _splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    ids = [0, 1, 2, 3, 7, 123, 50_257, 2**31 - 1, 2**32, 2**40 + 5, 2**62 + 17, 2**63 - 1]
    for num_experts in (1, 3, 8, 64, 257):
        got = hash_experts(torch.tensor(ids, dtype=torch.int64), num_experts).tolist()
        assert got == [(_splitmix64(i) & (2**63 - 1)) % num_experts for i in ids], num_experts


@pytest.mark.parametrize("num_experts", [8, 16, 64])
def test_hash_router_near_uniform_chi_square(num_experts):
    """Chi-square goodness of fit on 200,000 random ids: reject uniformity only if p < 0.001.

    With a fixed seed the test is deterministic; a correct hash fails it with probability 0.001.
    """
    ids = torch.randint(0, 2**40, (200_000,), generator=torch.Generator().manual_seed(2))
    counts = torch.bincount(hash_experts(ids, num_experts), minlength=num_experts).double().numpy()
    statistic, p_value = stats.chisquare(counts)
    assert p_value > 1e-3, (statistic, p_value)


def test_hash_of_sequential_ids_is_uniform():
    """Sequential ids (a vocabulary) also spread evenly: a weak hash (id mod E) would be perfectly
    uniform here too, so also check it is not id mod E."""
    ids = torch.arange(50_000)
    experts = hash_experts(ids, 16)
    counts = torch.bincount(experts, minlength=16).double().numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    assert not torch.equal(experts, ids % 16)


# ---- expert choice ------------------------------------------------------------------------------
def test_expert_choice_each_expert_takes_capacity():
    placement = contiguous_placement(8, 2, 2)
    inputs = synthetic_router_inputs(100, 2, 16, 8, seed=4)
    plan = route_expert_choice(inputs.logits, placement, k=2, capacity_factor=1.0, token_rank=inputs.token_rank)
    assert plan.capacity == 25  # ceil(1.0 * 100 * 2 / 8)
    assert plan.num_dropped == 0
    assert plan.tokens_per_expert.tolist() == [2 * 25] * 8  # 25 per expert from each of 2 ranks
    # each expert took the 25 highest-scoring tokens of each rank
    scores = torch.softmax(inputs.logits, dim=1)
    for rank in range(2):
        rows = torch.arange(100) + 100 * rank
        for expert in range(8):
            taken = ((plan.expert_index[rows] == expert) & plan.kept[rows]).any(dim=1)
            assert int(taken.sum()) == 25
            threshold = scores[rows][taken, expert].min()
            assert float(scores[rows][~taken, expert].max()) <= float(threshold)


# ---- LocMoE -------------------------------------------------------------------------------------
def test_locmoe_large_bonus_keeps_traffic_on_node():
    placement = contiguous_placement(16, 8, 4)  # 2 nodes, 8 experts per node
    inputs = synthetic_router_inputs(256, 8, 64, 16, seed=5)
    local = route_locmoe(inputs.hidden, placement, k=2, capacity_factor=None, locality_bonus=100.0,
                         token_rank=inputs.token_rank)
    plain = route_locmoe(inputs.hidden, placement, k=2, capacity_factor=None, locality_bonus=0.0,
                         token_rank=inputs.token_rank)
    assert local.inter_node_bytes(2048) == 0
    assert plain.inter_node_bytes(2048) > 0.3 * plain.remote_bytes(2048)
    # gate weights are the unbiased GrAP probabilities renormalised over the chosen
    scores = torch.softmax(grap_scores(inputs.hidden, 16), dim=1)
    chosen = scores.gather(1, local.expert_index)
    torch.testing.assert_close(local.gate_weight, chosen / chosen.sum(dim=1, keepdim=True))


def test_aux_loss_is_alpha_when_uniform_and_larger_when_skewed():
    placement = contiguous_placement(4, 1, 1)
    uniform_logits = torch.zeros(400, 4)
    uniform_logits[torch.arange(400), torch.arange(400) % 4] = 1e-3  # ties broken evenly
    plan = route_topk(uniform_logits, placement, k=1, capacity_factor=None)
    torch.testing.assert_close(aux_loss(plan, alpha=0.01), torch.tensor(0.01), rtol=1e-3, atol=0)
    skewed = route_topk(torch.tensor([[5.0, 0, 0, 0]]).repeat(400, 1), placement, k=1, capacity_factor=None)
    assert float(aux_loss(skewed, alpha=0.01)) > 0.03


def test_locality_loss_small_when_local_and_has_gradient():
    placement = contiguous_placement(4, 4, 2)  # 2 nodes
    token_rank = torch.tensor([0, 1, 2, 3]).repeat_interleave(50)
    node = placement.rank_to_node[token_rank]
    expert_node = placement.expert_to_node
    local_logits = torch.where(node.unsqueeze(1) == expert_node.unsqueeze(0), 20.0, -20.0).requires_grad_(True)
    remote_logits = torch.where(node.unsqueeze(1) == expert_node.unsqueeze(0), -20.0, 20.0)
    local_loss = locality_loss(route_topk(local_logits, placement, k=1, token_rank=token_rank), mu=1.0)
    remote_loss = locality_loss(route_topk(remote_logits, placement, k=1, token_rank=token_rank), mu=1.0)
    assert local_loss.item() < 1e-2 < remote_loss.item()
    local_loss.backward()
    assert local_logits.grad is not None and torch.isfinite(local_logits.grad).all()


def test_gate_weights_carry_gradient():
    """The gradient of the gate weights in the logits against the softmax's closed form (float64):
    k = 1, w = p_e = softmax(l)_e, dw/dl_j = p_e (delta_ej - p_j); k = 2, w_i = softmax over the two chosen
    logits, so d(w_0^2)/dl = 2 w_0 * w_0 (onehot_0 - w) on the chosen columns and 0 elsewhere."""
    placement = contiguous_placement(8, 2, 2)
    logits = torch.randn(32, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    plan = route_topk(logits, placement, k=2)
    plan.gate_weight.sum(dim=1).pow(2).sum().backward()  # weights renormalised: sum is 1, gradient 0
    assert float(logits.grad.abs().max()) < 1e-6
    logits.grad = None
    plan = route_topk(logits, placement, k=2)
    plan.gate_weight[:, 0].pow(2).sum().backward()
    chosen = plan.expert_index                                                    # (T, 2)
    weight = torch.softmax(logits.detach().gather(1, chosen), dim=1)              # (T, 2)
    expected = torch.zeros(32, 8, dtype=torch.float64)
    expected.scatter_(1, chosen, 2 * weight[:, :1] * weight[:, :1] * (torch.tensor([[1.0, 0.0]]) - weight))
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)     # gate weights are float32
    logits.grad = None
    plan = route_topk(logits, placement, k=1)
    plan.gate_weight.sum().backward()
    p = torch.softmax(logits.detach(), dim=1)                                     # (T, 8)
    e = plan.expert_index[:, 0]
    p_e = p.gather(1, e[:, None])                                                 # (T, 1)
    expected = p_e * (torch.nn.functional.one_hot(e, 8).double() - p)
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)


def test_switch_k1_weight_is_raw_probability():
    placement = contiguous_placement(4, 1, 1)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    plan = route_topk(logits, placement, k=1)
    torch.testing.assert_close(plan.gate_weight[0, 0], torch.softmax(logits, 1)[0, 0])


# ---- bad input ----------------------------------------------------------------------------------
def _placement():
    return contiguous_placement(4, 2, 2)


@pytest.mark.parametrize("call,fragment", [
    (lambda: route_topk(torch.zeros(8, 4), _placement(), k=5), "k=5"),
    (lambda: route_topk(torch.zeros(8, 4), _placement(), k=0), "k=0"),
    (lambda: route_topk(torch.zeros(8, 4), _placement(), capacity_factor=0), "capacity_factor=0"),
    (lambda: route_topk(torch.zeros(8, 4), _placement(), capacity_factor=-1.5), "capacity_factor=-1.5"),
    (lambda: route_topk(torch.zeros(8, 4), _placement(), capacity_factor=float("nan")), "capacity_factor=nan"),
    (lambda: route_topk(torch.tensor([[0.0, float("nan"), 0, 0]]), _placement()), "non-finite"),
    (lambda: route_topk(torch.tensor([[0.0, float("inf"), 0, 0]]), _placement()), "non-finite"),
    (lambda: route_topk(torch.zeros(8, 5), _placement()), "5 experts"),
    (lambda: route_topk(torch.zeros(8), _placement()), "2-D"),
    (lambda: route_topk(torch.zeros(8, 4), _placement(), token_rank=torch.zeros(7, dtype=torch.int64)),
     "token_rank has shape (7,)"),
    (lambda: route_topk(torch.zeros(8, 4), _placement(), drop_policy="random"), "drop_policy='random'"),
    (lambda: route_hash(torch.tensor([1.5]), _placement()), "integers"),
    (lambda: route_hash(torch.tensor([-3]), _placement()), "-3"),
    (lambda: route_locmoe(torch.zeros(8, 6), _placement()), "d_model=6"),
    (lambda: contiguous_placement(6, 4, 2), "num_experts=6"),
    (lambda: contiguous_placement(8, 6, 4), "gpus_per_node=4"),
    (lambda: contiguous_placement(0, 4, 2), "num_experts=0"),
    (lambda: make_placement("spiral", 8, 4, 2), "spiral"),
    (lambda: Placement.from_lists([0, 5], [0, 0]), "rank 5"),
    (lambda: RouterConfig(name="dense"), "dense"),
    (lambda: RouterConfig(name="hash", k=2), "k=2"),
    (lambda: grap_weights(10, 4), "d_model=10"),
])
def test_bad_input_raises_value_error_naming_value(call, fragment):
    with pytest.raises(ValueError) as error:
        call()
    assert fragment in str(error.value)


def test_route_needs_the_input_its_router_reads():
    with pytest.raises(ValueError, match="reads hidden"):
        route(RouterConfig("locmoe", k=1), _placement(), logits=torch.zeros(4, 4))


def test_topk_collapsed_routes_only_onto_the_active_experts():
    """topk_collapsed with N active experts equals topk on the first N experts' logits (the same
    choices, independently recomputed), and puts every choice there; at capacity the active experts
    are full and the rest is dropped."""
    from lshsim.dispatch.routers import route_topk_collapsed

    torch.manual_seed(3)
    placement = contiguous_placement(16, 8, gpus_per_node=8)
    logits = torch.randn(4096, 16)
    token_rank = torch.arange(8).repeat_interleave(512)
    plan = route_topk_collapsed(logits, placement, k=1, capacity_factor=None, token_rank=token_rank, active_experts=9)
    assert torch.equal(plan.expert_index[:, 0], logits[:, :9].argmax(dim=1))
    assert int(plan.tokens_per_expert[9:].sum()) == 0 and int(plan.tokens_per_expert.sum()) == 4096
    # at capacity 1.25: each rank may send ceil(1.25 x 512 / 16) = 40 tokens to an expert; 9 experts take
    # at most 9 x 40 = 360 of a rank's 512 (the demand, 512 / 9 = 57 a expert, exceeds it)
    capped = route_topk_collapsed(logits, placement, k=1, capacity_factor=1.25, token_rank=token_rank,
                                  active_experts=9)
    assert capped.capacity == 40
    assert int(capped.kept.sum()) == 8 * 9 * 40
    full = route_topk_collapsed(logits, placement, k=2, capacity_factor=None, token_rank=token_rank)
    assert torch.equal(full.expert_index, route_topk(logits, placement, k=2, capacity_factor=None,
                                                     token_rank=token_rank).expert_index)


@pytest.mark.parametrize("options, k, fragment", [
    ({"active_experts": -1}, 1, "must be >= 0"),
    ({"active_experts": 17}, 1, "exceeds the 16 experts"),
    ({"active_experts": 1}, 2, "k=2 exceeds active_experts=1"),
])
def test_topk_collapsed_refuses_bad_options(options, k, fragment):
    from lshsim.dispatch import RouterConfig, route

    placement = contiguous_placement(16, 8, gpus_per_node=8)
    with pytest.raises(ValueError, match=fragment):
        route(RouterConfig("topk_collapsed", k=k, capacity_factor=None, options=options), placement,
              logits=torch.randn(32, 16))
