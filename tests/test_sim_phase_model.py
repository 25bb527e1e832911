"""The step simulator with a calibrated phase model: the expert phase from the measured grid,
the gate and LSH phases from their fits (lshsim.sim.phases.calibrated_cost), the rest unchanged."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from lshsim.calibration.phase_model import workload_features
from lshsim.sim.moe_step import simulate_step
from lshsim.topology import build_topology, load_topology

TOPOLOGY = "calibrated/h200-x2-phases-nvlink"
MODEL = SimpleNamespace(**{"name": "tiny-moe", "num_layers": 2, "moe_every": 1, "d_model": 1024, "d_ffn": 2048, "num_experts": 8,
         "top_k": 2, "seq_len": 512, "tokens_per_gpu": 4096, "vocab_size": 1000, "bytes_per_element": 2})


def _durations(result, phase: str, direction: str) -> np.ndarray:
    """(W,) seconds of `phase` in `direction` of layer 0, per rank."""
    records = [r for r in result.trace.phases if r.name == phase and r.direction == direction and r.layer == 0]
    return np.array([r.end_s - r.start_s for r in sorted(records, key=lambda r: r.rank)])


@pytest.fixture(scope="module")
def graphs():
    calibrated = load_topology(TOPOLOGY)
    spec = copy.deepcopy(calibrated.graph["spec"])
    spec["calibration"].pop("phase_model")
    return calibrated, build_topology(spec, source="without the phase model")


def test_expert_phase_follows_the_grid(graphs):
    calibrated, _ = graphs
    pm = calibrated.graph["phase_model"]
    result = simulate_step(MODEL, calibrated, seed=0)
    rows = result.traffic.send_counts.sum(axis=0)                     # (W,) token copies each rank's experts get
    experts = MODEL.num_experts // 2
    for direction in ("forward", "backward"):
        expected = [pm.expert.predict_s(experts, r / experts, MODEL.d_model, MODEL.d_ffn, direction) for r in rows]
        assert _durations(result, "expert", direction) == pytest.approx(expected, rel=1e-9)


def test_gate_follows_its_fit_and_attention_stays_on_the_roofline(graphs):
    calibrated, plain = graphs
    pm = calibrated.graph["phase_model"]
    with_model, without = simulate_step(MODEL, calibrated, seed=0), simulate_step(MODEL, plain, seed=0)
    features = workload_features({"tokens_per_rank": with_model.traffic.tokens_per_rank, "d_model": 1024,
                                  "num_experts": 8, "router": {"name": "topk", "k": 2}, "bytes_per_token": 2048,
                                  "lsh": None, "world_size": 2})
    assert _durations(with_model, "gate", "forward") == pytest.approx(pm.kernel_s("gate", "forward", features))
    # attention is not calibrated: the same roofline with and without the phase model
    assert _durations(with_model, "attention", "forward") == pytest.approx(_durations(without, "attention", "forward"))


def test_lsh_phases_follow_their_fits(graphs):
    calibrated, _ = graphs
    pm = calibrated.graph["phase_model"]
    result = simulate_step(MODEL, calibrated, lsh_rate=0.2, seed=0)
    features = workload_features({"tokens_per_rank": result.traffic.tokens_per_rank, "d_model": 1024,
                                  "num_experts": 8, "router": {"name": "topk", "k": 2}, "bytes_per_token": 2048,
                                  "lsh": {"num_hashes": 6, "proj_dim": None}, "world_size": 2})
    for phase in ("lsh_compress", "lsh_restore"):
        for direction in ("forward", "backward"):
            assert _durations(result, phase, direction) == pytest.approx(pm.kernel_s(phase, direction, features))
