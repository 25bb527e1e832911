"""`executor calibrate --from-traces` with uniform and skewed traces: the curve from the uniform
ones, calibration.a2a_link_headroom fitted on the skewed ones (synthetic traces of a known h)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import yaml

from lshsim.calibration import (A2ACase, LinkModels, a2a_bytes_per_rank, a2a_duplex_bytes_per_rank, a2a_errors,
                                calibrated_topology_spec, curve_busbw_Bps, fit_link_headroom, fit_link_headroom_and_cap,
                                trace_a2a_phases)
from lshsim.executor.calibrate import calibrate_command
from lshsim.sim.collectives import simulate_all_to_all, uniform_traffic
from lshsim.sim.trace import Trace
from lshsim.topology import build_topology, load_topology, read_spec

TRUE_CURVE = [[1e6, 50e9], [1e7, 120e9], [1e8, 200e9], [1e9, 300e9]]   # bytes per rank, bus B/s
TRUE_H = 1.3


def _trace(path, dispatch, combine, times_s, skew, name):
    """A measured trace with the executor's meta: the two matrices and the four all-to-all times
    (dispatch fwd, combine fwd, dispatch bwd, combine bwd)."""
    world = len(dispatch)
    meta = {"source": "measured",
            "workload": {"name": name, "world_size": world, "skew": skew, "alltoall": "direct", "d_model": 8,
                         "d_ffn": 8, "num_experts": world},
            "cluster": {"gpu": "NVIDIA H200", "gpus": world},
            "provenance": {"gpu": "NVIDIA H200", "count": world, "torch": "t", "nccl": "n", "date": "d",
                           "command": "synthetic"},
            "measured": {"traffic_bytes": np.asarray(dispatch).tolist(),
                         "combine_traffic_bytes": np.asarray(combine).tolist(),
                         "bytes_per_token": 16,
                         "phases_s": {"forward": {"dispatch_a2a": times_s[0], "combine_a2a": times_s[1]},
                                      "backward": {"dispatch_a2a": times_s[2], "combine_a2a": times_s[3]}}}}
    Trace(phases=[], meta=meta).to_json(path)
    return str(path)


def _closed_form_s(traffic, headroom):
    """max_r max((S_r + R_r) / (2 B(M_dup)), max(S_r, R_r) / min(h B(M), B_max)) on the true curve."""
    off = traffic - np.diag(np.diag(traffic))
    sent, received = off.sum(axis=1), off.sum(axis=0)
    engine = 2 * curve_busbw_Bps(TRUE_CURVE, a2a_duplex_bytes_per_rank(traffic))
    link = min(headroom * curve_busbw_Bps(TRUE_CURVE, a2a_bytes_per_rank(traffic)), max(b for _, b in TRUE_CURVE))
    return float(max(((sent + received) / engine).max(), (np.maximum(sent, received) / link).max()))


def _uniform_traces(tmp_path):
    """One uniform trace per curve point: t = S / B(M), off-diagonal only (skew 0 or absent)."""
    paths = []
    for i, (size, busbw) in enumerate(TRUE_CURVE):
        traffic = uniform_traffic(4, size)
        np.fill_diagonal(traffic, 0.0)
        seconds = size * 3 / 4 / busbw
        skew = None if i == 0 else 0.0                   # a missing skew counts as uniform
        paths.append(_trace(tmp_path / f"cal-uniform-{i}.json", traffic, traffic, [seconds] * 4, skew, f"u{i}"))
    return paths


def _all_to_one_traces(tmp_path):
    """Skewed traces whose max-min drain meets the closed form (all of a rank's flows equal, so they
    end together): dispatch ranks 1..3 -> rank 0, combine back. The link term binds at h = 1.3
    (1.3 B(4x) < 2 B(2x) on TRUE_CURVE), so the times identify h."""
    paths = []
    for i, x in enumerate((2.5e6, 2.5e7, 2e8)):
        dispatch = np.zeros((4, 4))
        dispatch[1:, 0] = x
        combine = dispatch.T.copy()
        times = [_closed_form_s(dispatch, TRUE_H), _closed_form_s(combine, TRUE_H)] * 2
        times = [times[0], times[1], times[1], times[0]]  # backward: dispatch along the combine's matrix
        paths.append(_trace(tmp_path / f"cal-skewed-{i}.json", dispatch, combine, times, 1.0, f"s{i}"))
    return paths


def _cases(paths):
    """The traces' timed all-to-alls as the headroom fit takes them (A2ACase: traffic, seconds)."""
    return tuple(A2ACase(p.traffic, p.measured_s, "direct", path) for path in paths
                 for p in trace_a2a_phases(Trace.from_json(path).meta) if p.measured_s)


def _args(traces, out):
    return argparse.Namespace(nccl_tests=None, from_raw=None, from_traces=traces, world_size=None, gpu=None,
                              fit_min_bytes=0, name="t", raw=None, out=str(out), no_curve=False)


def test_fit_recovers_the_headroom_and_the_yaml_round_trips(tmp_path, capsys):
    uniform = _uniform_traces(tmp_path)
    skewed = _all_to_one_traces(tmp_path)
    out = tmp_path / "t.yaml"
    assert calibrate_command(_args(uniform + skewed, out)) == 0
    summary = capsys.readouterr().out
    spec, _ = read_spec(out)
    calibration = spec["calibration"]
    # the curve comes from the uniform traces only: exactly the true one
    assert calibration["a2a_busbw_curve"] == [[pytest.approx(m, rel=1e-6), pytest.approx(b, rel=1e-6)]
                                              for m, b in TRUE_CURVE]
    assert calibration["a2a_link_headroom"] == pytest.approx(TRUE_H, abs=0.02)
    info = calibration["provenance"]["fit"]["link_headroom"]
    assert info["median_rel_error"] < 0.01 and info["curve_only_median_rel_error"] > 0.1
    assert calibration["provenance"]["skewed_traces"] == [f"cal-skewed-{i}.json" for i in range(3)]
    assert "link headroom 1.3" in summary and "skewed traces" in summary
    # the YAML round-trips: loaded, it predicts the skewed all-to-alls as measured
    G = load_topology(out)
    assert G.graph["link_models"]["nvlink"].headroom == calibration["a2a_link_headroom"]
    trace = Trace.from_json(skewed[1])
    dispatch = np.asarray(trace.meta["measured"]["traffic_bytes"])
    predicted = simulate_all_to_all(G, dispatch).time_s
    assert predicted == pytest.approx(trace.meta["measured"]["phases_s"]["forward"]["dispatch_a2a"], rel=0.02)
    assert build_topology(yaml.safe_load(out.read_text())).graph["link_models"] == G.graph["link_models"]


def test_only_uniform_traces_write_no_headroom(tmp_path):
    out = tmp_path / "u.yaml"
    assert calibrate_command(_args(_uniform_traces(tmp_path), out)) == 0
    calibration = read_spec(out)[0]["calibration"]
    assert "a2a_link_headroom" not in calibration and "link_headroom" not in calibration["provenance"]["fit"]
    assert "skewed_traces" not in calibration["provenance"]
    assert LinkModels.from_topology(load_topology(out))["nvlink"].headroom is None


def test_held_out_traces_are_refused(tmp_path):
    uniform = _uniform_traces(tmp_path)
    trace = Trace.from_json(uniform[1])
    trace.meta["workload"]["role"] = "held-out"
    trace.to_json(tmp_path / "gpu-heldout.json")
    with pytest.raises(ValueError, match="held-out workload 'u1'"):
        calibrate_command(_args(uniform + [str(tmp_path / "gpu-heldout.json")], tmp_path / "h.yaml"))


def test_only_skewed_traces_are_refused(tmp_path):
    with pytest.raises(ValueError, match="every trace is of a skewed workload"):
        calibrate_command(_args(_all_to_one_traces(tmp_path), tmp_path / "s.yaml"))


def test_fit_recovers_a_headroom_the_simulator_generated(tmp_path):
    """Self-consistency on general skewed matrices (where the drain is above the closed form):
    times simulated at h = 1.45 on the true curve are fitted back to 1.45. The matrices are small
    (M of 1-10 MB, B(M) 50-120 GB/s), so that h B(M) stays below the cap B_max = 300 GB/s, where
    h is identifiable."""
    spec = calibrated_topology_spec("t", 4, gpu="NVIDIA H200", curve=TRUE_CURVE)
    truth = build_topology({**spec, "calibration": {**spec["calibration"], "a2a_link_headroom": 1.45}})
    rng = np.random.default_rng(3)
    paths = []
    for i in range(2):
        weights = rng.dirichlet(np.full(4, 0.5))                                      # (4,) hot experts
        dispatch = rng.uniform(2e5, 2e6) * 4 * np.outer(rng.uniform(0.7, 1.3, 4), weights)  # (4, 4)
        combine = dispatch.T.copy()
        d, c = (simulate_all_to_all(truth, m).time_s for m in (dispatch, combine))
        paths.append(_trace(tmp_path / f"sk{i}.json", dispatch, combine, [d, c, c, d], 0.5, f"sk{i}"))
    G, cases = build_topology(spec), _cases(paths)
    fit = fit_link_headroom(G, cases)
    assert fit.headroom == pytest.approx(1.45, abs=0.002) and fit.max_rel_error < 1e-6 and fit.link_max_Bps is None
    assert np.abs(a2a_errors(G, cases, None)).max() > 0.02   # the curve alone misses them
    assert "link_models" in G.graph and G.graph["link_models"]["nvlink"].headroom is None   # the graph is untouched
    with pytest.raises(ValueError, match="low=0.5"):
        fit_link_headroom(G, cases, low=0.5)
    with pytest.raises(ValueError, match="needs a curve"):
        calibrated_topology_spec("t", 4, gpu="NVIDIA H200", headroom=1.2)


@pytest.mark.slow   # about 12 s: 7 caps x 142 headrooms x 4 skewed traces
def test_fit_recovers_the_link_cap_and_the_headroom(tmp_path):
    """Times simulated at h = 1.45 with the links capped at 360 GB/s: small skewed matrices
    identify h (h B(M) below the cap), large ones the cap (h B(M) above it); the joint fit over
    caps 300, 320, ..., 420 GB/s (the curve's top to the 'p2p' rate) gives both back."""
    spec = calibrated_topology_spec("t", 4, gpu="NVIDIA H200", curve=TRUE_CURVE)
    truth = build_topology({**spec, "calibration": {**spec["calibration"], "a2a_link_headroom": 1.45,
                                                    "a2a_link_max_Bps": 360e9}})
    rng = np.random.default_rng(5)
    paths = []
    for i, scale in enumerate((2e5, 1e6, 2e8, 4e8)):
        weights = rng.dirichlet(np.full(4, 0.5))                                      # (4,) hot experts
        dispatch = scale * 4 * np.outer(rng.uniform(0.7, 1.3, 4), weights)            # (4, 4)
        combine = dispatch.T.copy()
        d, c = (simulate_all_to_all(truth, m).time_s for m in (dispatch, combine))
        paths.append(_trace(tmp_path / f"cap{i}.json", dispatch, combine, [d, c, c, d], 0.5, f"cap{i}"))
    G, cases = build_topology(spec), _cases(paths)
    fit = fit_link_headroom_and_cap(G, cases, p2p_max_Bps=420e9, steps=7)
    assert fit.link_max_Bps == pytest.approx(360e9) and fit.headroom == pytest.approx(1.45, abs=0.002)
    assert fit.max_rel_error < 1e-6
    # without a p2p rate the cap is left to the simulator's default (the curve's top)
    fit_default = fit_link_headroom_and_cap(G, cases, None)
    assert fit_default.link_max_Bps is None and fit_default.max_rel_error > 1e-3
    with pytest.raises(ValueError, match="p2p_max_Bps=-1"):
        fit_link_headroom_and_cap(G, cases, -1.0)
