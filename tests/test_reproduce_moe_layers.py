"""The era MoE layers (`lshsim.sim.moe_layers`): capacity-padded buffers, GShard's dense one-hot
dispatch / combine, the per-expert loop with wave-quantised small GEMMs; the `software.moe_layer`
field and `StepConfig.moe_layer`. Fast; every reference is computed by hand in the test."""
from __future__ import annotations

import math
from types import SimpleNamespace as NS

import numpy as np
import pytest

from lshsim.sim.moe_layers import (EINSUM_MASK_BACKWARD_BYTES, EINSUM_MASK_BYTES, einsum_work, expert_loop_s,
                                   gemm_time_s, padded_capacity, resolve_moe_layer, wave_efficiency)
from lshsim.sim.moe_step import StepConfig, simulate_config
from lshsim.topology.gpus import get_gpu, gpu_from_dict
from lshsim.topology.spec import build_topology

BASE = {"name": "t", "gpu": "v100", "nodes": 2, "gpus_per_node": 2, "intra": {"kind": "nvswitch"},
        "inter": {"kind": "fat_tree", "nics_per_node": 1, "nic_gbps": 100}}
TINY = NS(name="tiny", num_layers=2, d_model=64, d_ffn=256, num_experts=8, top_k=2, moe_every=2, seq_len=64,
          tokens_per_gpu=256, vocab_size=100, bytes_per_element=2)


def test_capacity_is_gshard_ceil_and_fairseq_top2():
    # fairseq top2gate trains with capacity 2 ceil(S / E): factor 1.0 at k = 2
    assert padded_capacity(4096, 2, 512, 1.0) == 2 * math.ceil(4096 / 512) == 16
    assert padded_capacity(4096, 2, 512, 1.25) == 20          # ceil(1.25 * 8192 / 512)
    assert padded_capacity(100, 1, 3, 1.0) == 34              # ceil(33.3)
    with pytest.raises(ValueError, match="capacity_factor"):
        padded_capacity(100, 1, 3, None)


def test_wave_quantisation_by_hand():
    assert wave_efficiency(256, 3072, 80) == pytest.approx(48 / 80)       # 2 x 24 tiles, one wave of 80 SMs
    assert wave_efficiency(256, 768, 80) == pytest.approx(12 / 80)        # 2 x 6 tiles
    assert wave_efficiency(3072, 768, 80) == pytest.approx(144 / 160)     # 24 x 6 tiles, two waves
    assert wave_efficiency(4096, 4096, 108) == pytest.approx(1024 / (10 * 108))
    assert wave_efficiency(100, 100, 0) == 1.0                            # SMs unknown: no quantisation
    gpu = {"achieved_flops": 1e12, "achieved_hbm_Bps": 1e9, "compute_units": 80}
    # memory bound: (64*64 + 64*64 + 64*64) * 2 B = 24,576 B at 1 GB/s, vs 524,288 FLOP at 0.0125 TFLOP/s
    assert gemm_time_s(64, 64, 64, gpu, 2) == pytest.approx(max(2 * 64 ** 3 / (1e12 / 80), 24576 / 1e9))


def test_einsum_work_by_hand():
    # S = 8 tokens, E = 4 experts, C = 4 slots, M = 16, 2 B: SEC = 128 elements
    flops, hbm = einsum_work(8, 4, 4, 16, 2, "forward")
    assert flops == 2 * (2 * 128 * 16)                                      # dispatch + combine GEMMs
    assert hbm == EINSUM_MASK_BYTES * 128 + 2 * (8 + 16) * 16 * 2
    flops_b, hbm_b = einsum_work(8, 4, 4, 16, 2, "backward")
    assert flops_b == 3 * (2 * 128 * 16)                                    # combine's two gradients, dispatch's one
    assert hbm_b == EINSUM_MASK_BACKWARD_BYTES * 128 + 2 * 2 * (8 + 16) * 16 * 2


def test_expert_loop_is_launch_bound_for_tiny_experts_and_gemm_bound_for_large():
    gpu = {"achieved_flops": 1e14, "achieved_hbm_Bps": 1e12, "compute_units": 80}
    # 10 experts of 1 row each: every kernel is far shorter than a launch -> 10 x 3 launches + the cat
    tiny = expert_loop_s(10, 1, 8, 8, 2, gpu, 1e-5, "forward")
    assert tiny == pytest.approx(10 * 3 * 1e-5 + 2 * 10 * 1 * 8 * 2 / 1e12 + 1e-5)
    # one expert of 1024 x 1024 x 4096: fc1 (32 x 8 tiles = 256, 4 waves of 80 -> 0.8), fc2 (8 x 8 = 64 -> 0.8)
    r, m, f = 1024, 1024, 4096
    fc = 2 * r * m * f / (1e14 * 0.8)
    big = expert_loop_s(1, r, m, f, 2, gpu, 1e-5, "forward")
    assert big == pytest.approx(2 * fc + 2 * r * f * 2 / 1e12 + 2 * r * m * 2 / 1e12 + 1e-5)
    # the loop costs more than the same rows in one expert when split into many small ones
    assert expert_loop_s(32, 32, 768, 3072, 2, gpu, 5e-6, "forward") > expert_loop_s(1, 1024, 768, 3072, 2, gpu, 5e-6, "forward")


def test_software_moe_layer_and_config_override():
    src = {"moe_layer": "fairseq at a commit"}
    G = build_topology({**BASE, "software": {"name": "era", "moe_layer": "gshard-einsum-loop", "sources": src}})
    assert G.graph["gpu"]["moe_layer"] == "gshard-einsum-loop" and G.graph["gpu"]["compute_units"] == 80
    assert resolve_moe_layer(StepConfig(), G.graph["gpu"]) == "gshard-einsum-loop"
    assert resolve_moe_layer(StepConfig(moe_layer="tutel"), G.graph["gpu"]) == "tutel"
    assert resolve_moe_layer(StepConfig(), build_topology(BASE).graph["gpu"]) == "grouped"
    with pytest.raises(ValueError, match=r"t: software.moe_layer='loop' must be one of"):
        build_topology({**BASE, "software": {"name": "era", "moe_layer": "loop", "sources": src}}, source="t")
    with pytest.raises(ValueError, match="software.sources.moe_layer"):
        build_topology({**BASE, "software": {"name": "era", "moe_layer": "tutel"}}, source="t")
    with pytest.raises(ValueError, match="moe_layer='x'"):
        StepConfig(moe_layer="x")


def test_compute_units_on_gpus():
    assert get_gpu("v100").compute_units == 80 and get_gpu("a100").compute_units == 108
    assert gpu_from_dict({"base": "v100", "compute_units": 40}).compute_units == 40
    with pytest.raises(ValueError, match="compute_units"):
        gpu_from_dict({"base": "v100", "compute_units": 1.5})


def test_padded_layer_sends_capacity_buffers_and_einsum_costs_its_gate():
    G = build_topology(BASE)   # 4 GPUs, 8 experts: 2 per GPU
    grouped = simulate_config(TINY, G, StepConfig(capacity_factor=1.0)).breakdown
    tutel = simulate_config(TINY, G, StepConfig(capacity_factor=1.0, moe_layer="tutel")).breakdown
    loop = simulate_config(TINY, G, StepConfig(capacity_factor=1.0, moe_layer="gshard-einsum-loop")).breakdown
    c = padded_capacity(256, 2, 8, 1.0)                                       # 64 slots
    rows = 2 * c                                                              # E_local x C per destination
    # every off-diagonal pair carries E_local x C rows of d_model x 2 B: 4 x 3 pairs
    assert tutel["dispatch_bytes_per_layer"] == 12 * rows * 64 * 2
    assert tutel["local_bytes_per_layer"] == 4 * rows * 64 * 2
    assert tutel["capacity_per_expert"] == c and grouped["capacity_per_expert"] is None
    assert grouped["dispatch_bytes_per_layer"] <= tutel["dispatch_bytes_per_layer"]
    # same buffers in both padded layers; the loop layer adds the dense dispatch / combine to the gate
    assert loop["dispatch_bytes_per_layer"] == tutel["dispatch_bytes_per_layer"]
    assert loop["phases_s"]["gate"] > tutel["phases_s"]["gate"]
    assert loop["phases_s"]["expert"] > 0 and loop["moe_layer"] == "gshard-einsum-loop"
    with_lsh = simulate_config(TINY, G, StepConfig(capacity_factor=1.0, moe_layer="tutel", lsh_rate=0.25)).breakdown
    assert with_lsh["dispatch_bytes_per_layer"] == 12 * math.ceil(0.25 * rows) * 64 * 2
    with pytest.raises(ValueError, match="capacity_factor"):
        simulate_config(TINY, G, StepConfig(capacity_factor=None, moe_layer="tutel"))


def test_padded_buffers_stay_inside_ep_groups():
    G = build_topology({**BASE, "nodes": 2, "gpus_per_node": 4})              # 8 GPUs, EP 4 x DP 2
    b = simulate_config(TINY, G, StepConfig(capacity_factor=1.0, moe_layer="tutel", ep=4)).breakdown
    rows = 2 * padded_capacity(256, 2, 8, 1.0)
    assert b["dispatch_bytes_per_layer"] == 2 * (4 * 3) * rows * 64 * 2      # two groups of 4 ranks
