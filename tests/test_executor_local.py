"""Executor pieces in one process (world size 1): all-to-all, timing, the MoE layer, a run's trace."""
from __future__ import annotations

import doctest

import pytest
import torch

import lshsim.executor.calibrate
import lshsim.executor.run
import lshsim.executor.timing
from lshsim.executor.comm import CommContext, CommStats, all_to_all, mark
from lshsim.executor.moe_layer import (DistributedMoE, MoEContext, expert_weights, gate_params, rank_inputs,
                                reference_moe)
from lshsim.executor.run import run_workload
from lshsim.executor.runtime import Runtime
from lshsim.executor.timing import IterationTimes, PhaseTimer, aggregate, lower_median_index
from lshsim.executor.workload import WorkloadConfig
from lshsim.dispatch import RouterConfig
from lshsim.sim.trace import MEASURED_PROVENANCE_KEYS, Trace

CPU = torch.device("cpu")


def test_doctests():
    for module in (lshsim.executor.timing, lshsim.executor.run, lshsim.executor.calibrate):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_all_to_all_world1_is_identity_counts_bytes_and_times():
    stats, timer = CommStats(1), PhaseTimer(CPU)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    timer.start_iteration()
    y = all_to_all(x, [5], [5], CommContext("dispatch_a2a", timer, stats))
    y.sum().backward()
    times = timer.finish_iteration()
    assert torch.equal(y, x) and torch.equal(x.grad, torch.ones(5, 3))
    assert stats.sent_bytes[("dispatch_a2a", "forward")] == [5 * 3 * 4]
    assert stats.sent_bytes[("dispatch_a2a", "backward")] == [5 * 3 * 4]
    assert set(times) == {("dispatch_a2a", "forward"), ("dispatch_a2a", "backward")}
    with pytest.raises(ValueError, match="send_splits sum"):
        all_to_all(x, [4], [4], CommContext("x"))


def test_mark_times_a_backward_interval():
    timer = PhaseTimer(CPU)
    x = torch.randn(4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    timer.start_iteration()
    y = mark(x * 2, timer, closes="expert", opens="lsh_compress")
    timer.begin("expert", "backward")  # the gradient reaching the mark ends it
    y.sum().backward()
    timer.end("lsh_compress", "backward")  # begun by the mark
    times = timer.finish_iteration()
    assert set(times) == {("expert", "backward"), ("lsh_compress", "backward")}
    assert mark(x, None, opens="gate") is x


def test_timer_errors_and_median():
    timer = PhaseTimer(CPU)
    timer.start_iteration()
    with pytest.raises(ValueError, match="never begun"):
        timer.end("gate")
    timer.begin("gate")
    with pytest.raises(ValueError, match="begun twice"):
        timer.begin("gate")
    with pytest.raises(ValueError, match="still open"):
        timer.finish_iteration()
    values = torch.tensor([[4.0, 1.0], [1.0, 3.0], [3.0, 2.0]])
    assert lower_median_index(values).tolist() == [2, 2]
    keys = [("gate", "forward")]
    times = IterationTimes.from_iterations(keys, [{keys[0]: (0.0, 1.0)}, {keys[0]: (0.5, 3.5)}, {keys[0]: (0.0, 2.0)}])
    summary = aggregate(times, CPU)
    assert summary.median_max_s.tolist() == [2.0] and summary.as_dict() == {"forward": {"gate": 2.0}}


@pytest.mark.parametrize("router", [RouterConfig("topk", k=2, capacity_factor=1.0), RouterConfig("hash", k=1),
                                    RouterConfig("expert_choice", k=2), RouterConfig("locmoe", k=1)])
def test_world1_layer_equals_the_dense_reference(router):
    workload = WorkloadConfig(tokens_per_rank=40, d_model=16, d_ffn=32, num_experts=4, router=router,
                              dtype="float32", skew=1.0)
    model = DistributedMoE(workload, MoEContext(rank=0, world_size=1, device=CPU), torch.float32)
    x, ids = rank_inputs(workload, 0, CPU, torch.float32)
    y = model.forward(x, ids).y
    experts = expert_weights(list(range(4)), 16, 32, workload.seed, CPU, torch.float32)
    y_ref, plan = reference_moe(workload, 1, x, ids, gate_params(workload, CPU), experts)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert y.abs().sum() > 0


def test_clustered_inputs_are_shared_centres():
    workload = WorkloadConfig(tokens_per_rank=200, d_model=32, d_ffn=8, num_experts=4, input_clusters=3,
                              input_noise=0.0)
    x0, _ = rank_inputs(workload, 0, CPU, torch.float32)
    x1, _ = rank_inputs(workload, 1, CPU, torch.float32)
    assert torch.unique(torch.cat([x0, x1]), dim=0).shape[0] == 3  # no noise: exactly the 3 centres


def test_run_workload_world1_writes_a_valid_measured_trace(tmp_path):
    workload = WorkloadConfig(name="tiny", tokens_per_rank=32, d_model=16, d_ffn=16, num_experts=2,
                              router=RouterConfig("topk", k=2, capacity_factor=None), iterations=3, warmup=1,
                              lsh={"family": "hyperplane", "num_hashes": 2})
    trace = run_workload(workload, Runtime(0, 1, 0, CPU, None), command=["test"])
    trace.to_json(tmp_path / "t.json")
    loaded = Trace.from_json(tmp_path / "t.json")
    assert all(key in loaded.meta["provenance"] for key in MEASURED_PROVENANCE_KEYS)
    measured = loaded.meta["measured"]
    assert measured["iterations"] == 3 and len(measured["per_iteration_max_s"]["forward/gate"]) == 3
    durations = loaded.phase_durations_s("forward")
    for phase in ("gate", "lsh_compress", "dispatch_a2a", "expert", "combine_a2a", "lsh_restore"):
        assert durations[phase] == pytest.approx(measured["phases_s"]["forward"][phase])
    assert measured["token_traffic_bytes"] == [[32 * 2 * 16 * 4]]  # every token to both experts, fp32
    lsh = measured["lsh"]
    assert lsh["tokens_sent"] == 64 and 0 < lsh["compression_rate"] <= 1
    assert measured["traffic_bytes"][0][0] == lsh["centroids_sent"] * 16 * 4
    with pytest.raises(ValueError, match="fault"):
        run_workload(workload, Runtime(0, 1, 0, CPU, None), fault="explode")


def test_hidden_states_from_a_file(tmp_path):
    import numpy as np

    hidden = torch.randn(2 * 24, 16, generator=torch.Generator().manual_seed(2))  # two ranks' worth of tokens
    torch.save(hidden, tmp_path / "h.pt")
    np.save(tmp_path / "h.npy", hidden.numpy())
    for name in ("h.pt", "h.npy"):
        workload = WorkloadConfig(name="file", tokens_per_rank=24, d_model=16, d_ffn=16, num_experts=2,
                                  inputs=str(tmp_path / name), iterations=1, warmup=0)
        x1, _ = rank_inputs(workload, 1, CPU, torch.float32, lshsim.executor.run._load_file_tokens(workload))
        assert torch.equal(x1, hidden[24:])
        trace = run_workload(workload, Runtime(0, 1, 0, CPU, None))
        assert trace.meta["workload"]["inputs"].endswith(name)
    short = WorkloadConfig(tokens_per_rank=40, d_model=16, d_ffn=16, num_experts=2, inputs=str(tmp_path / "h.pt"))
    with pytest.raises(ValueError, match="rank 1 needs rows up to 80"):
        rank_inputs(short, 1, CPU, torch.float32, hidden)
    missing = WorkloadConfig(tokens_per_rank=4, d_model=16, d_ffn=16, num_experts=2, inputs=str(tmp_path / "no.pt"))
    with pytest.raises(ValueError, match="does not exist"):
        lshsim.executor.run._load_file_tokens(missing)
