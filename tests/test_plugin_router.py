"""A toy router registered as one module + one registry entry runs end to end: route -> DispatchPlan ->
traffic matrix -> simulate_all_to_all, and a simulated MoE step."""
import pytest
import torch

from lshsim.dispatch import ROUTERS, RouterConfig, contiguous_placement, effective_k, gate_cost, route
from lshsim.dispatch.synthetic import synthetic_router_inputs
from lshsim.sim.collectives import simulate_all_to_all
from lshsim.topology import load_topology
from plugins import toy_router


@pytest.fixture
def round_robin():
    spec = toy_router.register()
    yield spec
    toy_router.unregister()
    assert toy_router.NAME not in ROUTERS


def test_toy_router_routes_through_the_registry_end_to_end(round_robin):
    G = load_topology("h100-nvswitch")                                  # 8 GPUs on one NVSwitch
    placement = contiguous_placement(16, 8, 8)                          # 2 experts per GPU
    inputs = synthetic_router_inputs(num_tokens_per_rank=32, world_size=8, d_model=16, num_experts=16, seed=1)
    config = RouterConfig(toy_router.NAME, k=1, capacity_factor=None)
    plan = route(config, placement, logits=inputs.logits, token_ids=inputs.token_ids, hidden=inputs.hidden,
                 token_rank=inputs.token_rank)
    # token t goes to expert t mod 16: every rank's 32 tokens cover each expert twice
    assert plan.expert_index[:, 0].tolist() == [t % 16 for t in range(256)]
    assert plan.tokens_per_expert.tolist() == [16] * 16 and plan.num_dropped == 0
    traffic = plan.traffic_matrix(bytes_per_token=1024)                 # (8, 8): 4 tokens to every rank
    assert torch.equal(traffic, torch.full((8, 8), 4 * 1024))
    result = simulate_all_to_all(G, traffic.numpy())
    assert result.time_s > 0 and result.egress_bytes.tolist() == [7 * 4 * 1024] * 8


def test_toy_router_options_and_rules_come_from_its_spec(round_robin):
    assert round_robin.input_kind == "token_ids" and round_robin.params == ("capacity_factor",)
    shifted = RouterConfig(toy_router.NAME, k=1, options={"offset": 3})
    assert shifted.options == (("offset", 3),)
    assert RouterConfig(toy_router.NAME, k=1).options == (("offset", 0),)   # defaults filled in
    assert shifted.key() != RouterConfig(toy_router.NAME, k=1).key()
    assert len({shifted, RouterConfig(toy_router.NAME, k=1, options=(("offset", 3),))}) == 1   # hashable, equal
    plan = route(shifted, contiguous_placement(4, 2, 2), token_ids=torch.arange(6))
    assert plan.expert_index[:, 0].tolist() == [3, 0, 1, 2, 3, 0]
    assert effective_k(toy_router.NAME, 4) == 1
    with pytest.raises(ValueError, match="k=2"):
        RouterConfig(toy_router.NAME, k=2)
    with pytest.raises(ValueError, match="'ofset' is not an option of the round_robin router"):
        RouterConfig(toy_router.NAME, k=1, options={"ofset": 1})
    with pytest.raises(ValueError, match="reads token_ids"):
        route(shifted, contiguous_placement(4, 2, 2), logits=torch.zeros(6, 4))
    assert gate_cost(toy_router.NAME, 1024, 16, 2).flops_per_token == 0.0
    with pytest.raises(ValueError, match="already registered"):
        toy_router.register()


def test_toy_router_in_a_simulated_step(round_robin):
    from lshsim.models import ModelConfig
    from lshsim.sim.moe_step import simulate_step

    tiny = ModelConfig("tiny", num_layers=2, d_model=64, d_ffn=256, num_experts=16, seq_len=64, tokens_per_gpu=128,
                       vocab_size=100)
    G = load_topology("lshmoe-v100-2x8")
    step = simulate_step(tiny, G, router=toy_router.NAME, moe_layer="grouped")  # routed rows, not the era's padding
    assert step.traffic.k == 1 and step.traffic.router == toy_router.NAME
    # 128 tokens per GPU over 16 experts on 16 GPUs: 8 to every GPU, 128 B each (d = 64, 2 B); none dropped
    assert step.breakdown["expert_load_imbalance"] == 1.0 and step.breakdown["dropped_fraction"] == 0.0
    assert step.breakdown["local_bytes_per_layer"] == 16 * 8 * 128
    assert step.breakdown["dispatch_bytes_per_layer"] == 16 * 15 * 8 * 128
    assert step.breakdown["step_s"] > step.breakdown["a2a_s"] > 0


def test_register_router_refuses_bad_declarations():
    from lshsim.dispatch import register_router

    with pytest.raises(ValueError, match="already registered"):
        register_router("topk", toy_router.route_round_robin, "token_ids")
    with pytest.raises(ValueError, match="'temperature' is not a RouterConfig field"):
        register_router("x", toy_router.route_round_robin, "token_ids", params=("temperature",))
    with pytest.raises(ValueError, match="has no keyword 'k'"):
        register_router("x", toy_router.route_round_robin, "token_ids", params=("k",))
    with pytest.raises(ValueError, match="input_kind='pixels'"):
        register_router("x", toy_router.route_round_robin, "pixels")
    assert "x" not in ROUTERS
