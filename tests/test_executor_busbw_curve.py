"""The size-dependent all-to-all calibration: calibration.a2a_busbw_curve in a topology YAML (its
validation), its log-linear interpolation in simulate_all_to_all, `executor calibrate --from-traces`
writing it, and `executor run --min-a2a-s` measuring more interleaved iterations."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from lshsim.calibration import (A2APoint, LinkModels, a2a_bytes_per_rank, curve_busbw_Bps, curve_residuals,
                                fit_busbw_curve, read_traces)
from lshsim.executor.calibrate import calibrate_command
from lshsim.sim.collectives import simulate_all_to_all, uniform_traffic
from lshsim.topology import build_topology, load_topology

DATA = Path(__file__).resolve().parent / "data"
CURVE = [[1e6, 50e9], [1e8, 200e9], [1e9, 320e9]]


def _spec(curve=None, **intra):
    calibration = {"alpha_s": 0.0, "nvlink_Bps": 300e9}
    if curve is not None:
        calibration["a2a_busbw_curve"] = curve
    return {"name": "c", "gpu": "h200", "gpus_per_node": 4, "alpha_s": 0.0,
            "intra": {"kind": "nvswitch", "latency_s": 0.0, **intra}, "calibration": calibration}


def test_interpolation_is_linear_in_log_size_and_clamped():
    # at the points: exact; between: linear in ln(M); outside: the end values
    assert curve_busbw_Bps(CURVE, 1e8) == pytest.approx(200e9)
    assert curve_busbw_Bps(CURVE, 1e7) == pytest.approx(125e9)   # halfway between 1e6 and 1e8 in log
    m = 10 ** 8.25
    assert curve_busbw_Bps(CURVE, m) == pytest.approx(200e9 + 120e9 * 0.25)
    assert curve_busbw_Bps(CURVE, 1.0) == pytest.approx(50e9)
    assert curve_busbw_Bps(CURVE, 1e12) == pytest.approx(320e9)
    for bad_size in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="bytes_per_rank"):
            curve_busbw_Bps(CURVE, bad_size)
    with pytest.raises(ValueError, match="increasing"):
        curve_busbw_Bps([[1e6, 1e9], [1e6, 2e9]], 1e6)


def test_bytes_per_rank_is_the_busiest_rank_load():
    assert a2a_bytes_per_rank(uniform_traffic(4, 8e6)) == pytest.approx(8e6)
    skewed = np.zeros((4, 4))
    skewed[1:, 0] = 3e6                                   # three ranks send 3 MB each to rank 0
    assert a2a_bytes_per_rank(skewed) == pytest.approx(9e6 * 4 / 3)
    assert a2a_bytes_per_rank(np.eye(1)) == 0.0


@pytest.mark.parametrize("size", [1e6, 1e7, 3e8, 1e9, 4e9])
def test_simulated_time_follows_the_curve(size):
    G = build_topology(_spec(CURVE))
    result = simulate_all_to_all(G, uniform_traffic(4, size), local_copy=False)
    expected = size * 3 / 4 / curve_busbw_Bps(CURVE, size)   # alpha 0, latency 0: t = S / B(M)
    assert result.time_s == pytest.approx(expected, rel=1e-9)
    assert result.options["a2a_busbw_Bps"] == pytest.approx(curve_busbw_Bps(CURVE, size))
    # the graph itself is left as it was: the next collective starts from the nominal bandwidth
    assert G.edges["n0.gpu0", "n0.nvswitch"]["bandwidth_Bps"] == pytest.approx(300e9)


def test_without_a_curve_nothing_changes():
    G = build_topology(_spec(None))
    assert LinkModels.from_topology(G)["nvlink"].busbw_curve is None
    result = simulate_all_to_all(G, uniform_traffic(4, 1e8), local_copy=False)
    assert result.time_s == pytest.approx(1e8 * 3 / 4 / 300e9, rel=1e-9)
    assert "a2a_busbw_Bps" not in result.options


def test_curve_scales_mesh_links_too():
    spec = {"name": "m", "gpu": "h100", "gpus_per_node": 4, "alpha_s": 0.0,
            "intra": {"kind": "full_mesh", "per_link_Bps": 100e9, "latency_s": 0.0},
            "calibration": {"a2a_busbw_curve": [[1e6, 30e9], [1e9, 300e9]]}}
    G = build_topology(spec)
    assert LinkModels.from_topology(G)["nvlink"].nominal_Bps == pytest.approx(300e9)  # 3 links of 100 GB/s
    result = simulate_all_to_all(G, uniform_traffic(4, 1e6), local_copy=False)
    # 30 GB/s per GPU = 10 GB/s per link; each peer gets 250 kB over its own link
    assert result.time_s == pytest.approx(0.25e6 / 10e9, rel=1e-9)


@pytest.mark.parametrize("curve, message", [
    ("fast", r"calibration.a2a_busbw_curve='fast' must be a list"),
    ([[1e6, 1e9]], r"calibration.a2a_busbw_curve=\[\[1000000.0, 1000000000.0\]\] must be a list of at least 2"),
    ([[1e6, 1e9], [2e6]], r"calibration.a2a_busbw_curve\[1\]=\[2000000.0\] must be a pair"),
    ([[1e6, 1e9], [2e6, -5]], r"calibration.a2a_busbw_curve\[1\]\[1\]=-5 must be a finite number > 0"),
    ([[1e6, 1e9], ["big", 1e9]], r"calibration.a2a_busbw_curve\[1\]\[0\]='big' must be a finite number"),
    ([[1e6, 1e9], [1e6, 2e9]], r"calibration.a2a_busbw_curve\[1\]\[0\]=1000000.0 must be larger than the previous"),
    ([[1e6, 1e9], [2e6, True]], r"calibration.a2a_busbw_curve\[1\]\[1\]=True must be a finite number"),
])
def test_yaml_validation_names_file_field_value(tmp_path, curve, message):
    path = tmp_path / "bad-curve.yaml"
    path.write_text(yaml.safe_dump(_spec(curve)))
    with pytest.raises(ValueError, match=r"^bad-curve.yaml: " + message):
        load_topology(path)


def test_yaml_curve_round_trip_and_pcie_refused(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(_spec([["1e6", "5e10"], [1e9, 3.2e11]])))  # YAML 1.1 text numbers accepted
    assert LinkModels.from_topology(load_topology(path))["nvlink"].busbw_curve == ((1e6, 5e10), (1e9, 3.2e11))
    spec = _spec(CURVE)
    spec["intra"] = {"kind": "pcie"}
    del spec["calibration"]["nvlink_Bps"]
    with pytest.raises(ValueError, match=r"calibration.a2a_busbw_curve=.* intra.kind=pcie has no NVLink"):
        build_topology(spec, source="p.yaml")


def test_fit_busbw_curve_takes_the_median_per_size():
    points = [A2APoint(4000, t, 4) for t in (1e-5, 2e-5, 4e-5)] + [A2APoint(8000, 3e-5, 4)]
    fit = fit_busbw_curve(points)
    curve = fit.curve
    assert curve == ((4000.0, pytest.approx(3000 / 2e-5)), (8000.0, pytest.approx(6000 / 3e-5)))
    assert np.abs(curve_residuals(curve, points)).tolist() == pytest.approx([1.0, 0.0, 0.5, 0.0])  # (2 - 1) / 1, 0, (2 - 4) / 4, 0
    assert fit.points == 2 and fit.max_rel_residual == pytest.approx(1.0) and fit.median_rel_residual == pytest.approx(0.25)
    with pytest.raises(ValueError, match="at least 2 sizes"):
        fit_busbw_curve(points[:3])
    with pytest.raises(ValueError, match="one world size"):
        fit_busbw_curve(points + [A2APoint(100, 1e-5, 2)])


def test_from_traces_writes_the_curve_and_reproduces_the_calibration_run(tmp_path):
    """`--from-traces` on H200 calibration traces (4 GPUs, 1 MB..1.6 GB per rank; tests/data/calibration)."""
    traces = sorted(str(p) for p in (DATA / "calibration" / "h200-x4-curve").glob("*.json"))
    assert len(traces) == 14
    args = argparse.Namespace(nccl_tests=None, from_raw=None, from_traces=traces, world_size=None, gpu=None,
                              fit_min_bytes=0, name="t", raw=None, out=str(tmp_path / "t.yaml"), no_curve=False)
    assert calibrate_command(args) == 0
    G = load_topology(tmp_path / "t.yaml")
    curve = LinkModels.from_topology(G)["nvlink"].busbw_curve
    assert len(curve) == 14 and G.graph["alpha_s"] == 0.0
    assert curve[0][0] < 2e6 and curve[-1][0] > 1.2e9
    # each calibration all-to-all simulated on the curve topology: the curve's median per size
    # is met by at least 2 of the 4 phases of that size to rounding; all within the spread of the
    # four phases (forward/backward, dispatch/combine), which was under 16% in this run
    for point in read_traces(traces).points:
        predicted = simulate_all_to_all(G, uniform_traffic(4, point.bytes_per_rank), local_copy=False).time_s
        assert abs(predicted - point.time_s) / point.time_s < 0.16


def test_run_measures_more_interleaved_iterations_for_small_all_to_alls():
    import torch

    from lshsim.executor.run import run_workload
    from lshsim.executor.runtime import Runtime
    from lshsim.executor.workload import RouterConfig, WorkloadConfig

    workload = WorkloadConfig(name="tiny", tokens_per_rank=16, d_model=8, d_ffn=8, num_experts=2,
                              router=RouterConfig("topk", k=1, capacity_factor=None), iterations=3, warmup=1)
    runtime = Runtime(0, 1, 0, torch.device("cpu"), None)
    # a 1 s target no CPU copy of 512 bytes reaches: capped at max_iterations
    measured = run_workload(workload, runtime, min_a2a_s=1.0, max_iterations=7, max_wall_s=100.0).meta["measured"]
    assert measured["iterations"] == 7 and measured["iterations_requested"] == 3 and measured["bare_interleaved"]
    assert len(measured["bare_a2a_per_iteration_s"]) == 7
    assert len(measured["per_iteration_max_s"]["forward/dispatch_a2a"]) == 7
    assert measured["bare_a2a_s"] == sorted(measured["bare_a2a_per_iteration_s"])[3]  # lower median
    # off (default): exactly the workload's iterations
    assert run_workload(workload, runtime).meta["measured"]["iterations"] == 3
    with pytest.raises(ValueError, match="min_a2a_s=-1"):
        run_workload(workload, runtime, min_a2a_s=-1.0)
