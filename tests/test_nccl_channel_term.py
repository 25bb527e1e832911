"""NCCL's per-peer channel term (lshsim.sim.nccl, lshsim.calibration.model.ChannelTerm): the rule against
a hand-computed example, older calibrations unchanged, the curve fit's window around the thresholds."""
from __future__ import annotations

import numpy as np
import pytest

from lshsim.calibration import A2ACase, A2APoint, CalibrationInput, LinkModels, fit_busbw_curve
from lshsim.calibration.fits import (THRESHOLD_WINDOW, calibrated_topology_spec, fit_calibration, fit_channel_headroom,
                                     nccl_config_of)
from lshsim.calibration.model import ChannelTerm, parse_channel_term
from lshsim.sim.collectives import estimate_all_to_all, estimate_collective, simulate_all_to_all
from lshsim.sim.nccl import (NcclP2pConfig, channel_send_ratio, channel_thresholds, near_threshold,
                             send_channel_loads)
from lshsim.topology import build_topology, load_topology

ROW = 16384
STRADDLE_ROWS = [16300, 16450, 16300, 16450]     # rank r sends STRADDLE_ROWS[(d - r) % 4] rows to rank d
FLAT = [[1.0e6, 1.0e11], [1.0e10, 1.0e11]]       # a flat curve: 100 GB/s at every size


def straddle() -> np.ndarray:
    return np.array([[STRADDLE_ROWS[(d - r) % 4] * ROW for d in range(4)] for r in range(4)], dtype=float)


def topology(world: int, headroom: float | None, curve=FLAT, **kwargs):
    term = None if headroom is None else ChannelTerm(NcclP2pConfig(), headroom)
    spec = calibrated_topology_spec("t", world, gpu="NVIDIA H200", curve=curve, channels=term, **kwargs)
    return build_topology(spec, source="<test>")


# ---- the rule, by hand ------------------------------------------------------------------------------
def test_send_loads_and_ratio_of_a_straddling_pattern_by_hand():
    # rank 0: to rank 1 (round 1) 16450 rows > 2^28 bytes -> 32 channels from bit-reverse(1) = 16: every
    # channel 16450 / 32; to rank 2 (round 2) 16300 rows -> 16 channels from bit-reverse(2) = 8: channels
    # 8..23 get 16300 / 16; to rank 3 (round 3) 16450 -> 32 channels: every channel 16450 / 32
    loads = send_channel_loads(straddle()) / ROW                                       # (4, 32) rows
    expected = np.full(32, 2 * 16450 / 32)
    expected[8:24] += 16300 / 16
    assert np.allclose(loads[0], expected)
    assert np.allclose(loads, loads[0])                      # a rotated pattern: every rank the same
    # equal chunks of the same size: S = 16450 + 16300 + 16450 rows, M / W = S / 3 = 16400 rows > 2^28
    # bytes -> 32 channels each, the busiest 3 * 16400 / 32 rows
    assert channel_send_ratio(straddle()) == pytest.approx((16300 / 16 + 2 * 16450 / 32) / (3 * 16400 / 32), rel=1e-12)
    # the own chunk is a local copy: alone across the threshold it changes nothing
    diag_only = np.full((4, 4), 16300.0 * ROW)
    np.fill_diagonal(diag_only, 16450.0 * ROW)
    assert channel_send_ratio(diag_only) == pytest.approx(1.0)


def test_thresholds_follow_the_rule():
    assert channel_thresholds(4) == (2 ** 27, 2 ** 28)
    assert channel_thresholds(2) == (2 ** 28,)
    assert channel_thresholds(8) == (2 ** 26, 2 ** 27, 2 ** 28)
    assert channel_thresholds(4, NcclP2pConfig(chunk_bytes=262144)) == (2 ** 26, 2 ** 27)
    for world in (2, 4, 8):      # each threshold is where p2p_channels doubles
        from lshsim.sim.nccl import p2p_channels
        for t in channel_thresholds(world):
            assert p2p_channels(t + 1, world) == 2 * p2p_channels(t, world)


def test_two_ranks():
    """On 2 ranks a rank has one peer: with both sends on one side of 2^28 bytes the busiest channel is the
    larger send's, as in equal chunks of that size (ratio 1); when the two sends straddle 2^28 the smaller
    one runs on half the channels."""
    rng = np.random.default_rng(0)
    for low, high in ((1e6, 2.6e8), (2.7e8, 6e8)):
        for _ in range(20):
            traffic = rng.uniform(low, high, (2, 2))
            assert channel_send_ratio(traffic) == pytest.approx(1.0)
    x, y = 2.75e8, 2.6e8                     # rank 0 sends x > 2^28 (32 channels), rank 1 y < 2^28 (16)
    assert channel_send_ratio([[1e8, x], [y, 1e8]]) == pytest.approx((y / 16) / (x / 32))


# ---- the term in the simulator ------------------------------------------------------------------------
def test_the_floor_against_the_hand_computed_time():
    h = 1.25
    G = topology(4, h)
    traffic = straddle()
    size = 4 * 16400 * ROW                                   # M = max(S_r, R_r) W / (W - 1)
    curve_s = size * 3 / 4 / 1.0e11                          # S / B(M) on the flat curve
    ratio = (16300 / 16 + 2 * 16450 / 32) / (3 * 16400 / 32)
    result = simulate_all_to_all(G, traffic, local_copy=False)
    assert result.options["a2a_channel_floor_s"] == pytest.approx(curve_s * ratio / h, rel=1e-12)
    assert result.options["a2a_channel_bound"] is True
    assert result.time_s == pytest.approx(curve_s * ratio / h, rel=1e-9)
    without = simulate_all_to_all(topology(4, None), traffic, local_copy=False)
    assert without.time_s < result.time_s and "a2a_channel_bound" not in without.options
    # the estimate and every algorithm that is one direct phase on one node take the same floor
    assert estimate_all_to_all(G, traffic, local_copy=False) == pytest.approx(result.time_s, rel=1e-9)
    for algorithm in ("hierarchical", "groupwise"):
        assert simulate_all_to_all(G, traffic, algorithm, local_copy=False).time_s == pytest.approx(result.time_s)
        assert estimate_collective(G, traffic, algorithm, local_copy=False).time_s == pytest.approx(result.time_s)
    # pairwise is W - 1 calls, not one grouped call: no floor
    assert simulate_all_to_all(G, traffic, "pairwise", local_copy=False).options["a2a_channel_bound"] is False
    # equal chunks: t_channel = t_curve / h, below the links' time
    equal = simulate_all_to_all(G, np.full((4, 4), 16400.0 * ROW), local_copy=False)
    assert equal.options["a2a_channel_bound"] is False


def test_an_older_calibration_loads_without_the_term_and_predicts_as_before():
    """Files written before the term (no calibration.a2a_nccl_channels): the term is off, and the times are
    those the code before the term gave (measured with it: main at d604c65, the same two files)."""
    before = {"calibrated/archive/h200-x4-run-g-threshold-points":
              [(straddle(), 0.0033939108357302302), (np.array([[8.0e7, 1.2e8, 5.0e7, 1.53e8]] * 4), 0.0013824956346336031)],
              "calibrated/h200-x2": [(np.array([[2.6e8, 2.75e8], [2.75e8, 2.6e8]]), 0.0010101336683927223),
                                     (np.array([[1.0e8, 3.9e8], [5.0e7, 2.0e8]]), 0.001159911314768412)]}
    for name, cases in before.items():
        G = load_topology(name)
        assert LinkModels.from_topology(G)["nvlink"].channels is None
        for traffic, seconds in cases:
            result = simulate_all_to_all(G, traffic)
            assert result.time_s == pytest.approx(seconds, rel=1e-12)
            assert estimate_all_to_all(G, traffic) == pytest.approx(seconds, rel=1e-12)
            assert "a2a_channel_floor_s" not in result.options


def test_the_calibration_block_round_trips_and_is_checked():
    G = load_topology("calibrated/h200-x4")
    term = LinkModels.from_topology(G)["nvlink"].channels
    assert term is not None and term.config == NcclP2pConfig() and term.headroom >= 1.0
    assert parse_channel_term(term.to_dict()) == term
    with pytest.raises(ValueError, match="headroom=0.9 must be >= 1"):
        parse_channel_term({**term.to_dict(), "headroom": 0.9}, source="x.yaml")
    with pytest.raises(ValueError, match="p2p_channels=24 must be a power of two"):
        parse_channel_term({**term.to_dict(), "p2p_channels": 24})
    with pytest.raises(ValueError, match="is only allowed together with calibration.a2a_busbw_curve"):
        LinkModels.from_calibration({"a2a_nccl_channels": term.to_dict()}, nominal_Bps={"nvlink": 4.5e11}, alpha_s=0.0)
    with pytest.raises(ValueError, match="one node; this topology has 2 nodes"):
        LinkModels.from_calibration({"a2a_busbw_curve": FLAT, "a2a_nccl_channels": term.to_dict()},
                                    nominal_Bps={"nvlink": 4.5e11}, alpha_s=0.0, nodes=2)


# ---- the fits ------------------------------------------------------------------------------------------
def test_the_curve_leaves_out_the_sizes_near_a_threshold():
    # 4 ranks: mean chunks 1% above 2^27 and 2% below 2^28 are within the 4% window; 5% below 2^27 is not
    near = [4 * 2 ** 27 * 1.01, 4 * 2 ** 28 * 0.98]
    far = [4 * 2 ** 20, 4 * 2 ** 27 * 0.95, 4 * 2 ** 28 * 1.2]
    points = [A2APoint(int(m), 1e-3, 4) for m in near + far]
    fit = fit_busbw_curve(points, threshold_window=THRESHOLD_WINDOW)
    assert [m for m, _ in fit.curve] == sorted(float(int(m)) for m in far)
    assert fit.excluded_sizes == tuple(sorted(float(int(m)) for m in near))
    assert len(fit_busbw_curve(points).curve) == 5                     # no window: every size
    assert len(fit_busbw_curve(points, threshold_window=0.005).curve) == 5   # 0.5%: 1% and 2% are outside
    # 2 ranks: the one threshold is 2^28 per peer; 2^27 is not one
    two = [A2APoint(int(2 * 2 ** 27), 1e-3, 2), A2APoint(int(2 * 2 ** 28 * 1.01), 1e-3, 2), A2APoint(2 ** 20, 1e-4, 2)]
    assert fit_busbw_curve(two, threshold_window=0.04).excluded_sizes == (float(int(2 * 2 ** 28 * 1.01)),)
    # with 256 KiB chunks the thresholds halve
    assert near_threshold(2 ** 26 * 1.01, 4, 0.04, NcclP2pConfig(chunk_bytes=262144))
    assert not near_threshold(2 ** 26 * 1.01, 4, 0.04)


def test_the_channel_headroom_is_recovered_from_cases_made_with_it():
    G = topology(4, None)
    rng = np.random.default_rng(1)
    true = topology(4, 1.2)
    cases, bound = [], 0
    for rows in ([16300, 16450, 16300, 16450], [8100, 8300, 8100, 8300], [15000, 18000, 15000, 18000]):
        m = np.array([[rows[(d - r) % 4] * ROW for d in range(4)] for r in range(4)], dtype=float)
        result = simulate_all_to_all(true, m)
        cases.append(A2ACase(m, result.time_s))
        bound += result.options["a2a_channel_bound"]
    assert bound >= 2                                        # straddling patterns: the term binds
    for _ in range(6):                                       # skewed cases, bound or not
        m = rng.dirichlet(np.ones(4), size=4) * 1e8
        result = simulate_all_to_all(true, m)
        cases.append(A2ACase(m, result.time_s))
        bound += result.options["a2a_channel_bound"]
    assert bound < len(cases)
    fit = fit_channel_headroom(G, cases)
    assert fit.headroom == pytest.approx(1.2, abs=1e-3)
    assert fit.max_rel_error < 1e-3 < fit.without_max_rel_error
    assert fit.bound_phases == bound


def test_fit_calibration_leaves_the_threshold_sizes_out_and_reads_the_chunk():
    points = [A2APoint(int(4 * 2 ** k), 1e-3 * 2 ** (k - 26), 4) for k in (20, 24, 26, 29)]
    points.append(A2APoint(int(4 * 2 ** 27 * 1.01), 5e-3, 4))       # a threshold size, 2x slower
    inp = CalibrationInput(source="traces", world_size=4, gpu="NVIDIA H200", points=tuple(points),
                           provenance={"trace_provenance": {"nccl_env": {"NCCL_P2P_NVL_CHUNKSIZE": "262144"}}})
    assert nccl_config_of(inp).chunk_bytes == 262144
    # 256 KiB chunks: the thresholds are 2^26 and 2^27 bytes, so the 2^26 chunk goes too
    assert fit_calibration(inp).curve.excluded_sizes == (float(4 * 2 ** 26), float(int(4 * 2 ** 27 * 1.01)))
    default = CalibrationInput(source="traces", world_size=4, gpu="NVIDIA H200", points=tuple(points))
    fit = fit_calibration(default)
    assert fit.curve.excluded_sizes == (float(int(4 * 2 ** 27 * 1.01)),) and fit.channel is None   # no skewed cases
    assert len(fit_calibration(default, channels=False).curve.curve) == 5
