"""NCCL's per-peer p2p channel counts (lshsim.sim.nccl) against the rule of NVIDIA/nccl
src/enqueue.cc and against what the chunk sweep on 4 H200s measured."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lshsim.sim.nccl import NcclP2pConfig, channel_load_imbalance, channel_loads, p2p_channels

SWEEP = Path(__file__).resolve().parent / "data" / "nccl"


@pytest.mark.parametrize("world, size, expected", [
    (4, 1, 1), (4, 64 * 1024, 1), (4, 64 * 1024 + 1, 2), (4, 512 * 1024, 8),    # ramp: one part per 64 KiB
    (4, 2 ** 27, 8), (4, 2 ** 27 + 1, 16), (4, 2 ** 28, 16), (4, 2 ** 28 + 1, 32), (4, 2 ** 31, 32),
    (2, 2 ** 27 + 1, 16), (2, 2 ** 28 + 1, 32), (8, 2 ** 26, 4), (8, 2 ** 26 + 1, 8),
])
def test_channel_count_thresholds(world, size, expected):
    assert p2p_channels(size, world) == expected


def test_a_smaller_chunk_halves_the_thresholds():
    half = NcclP2pConfig(chunk_bytes=256 * 1024)
    assert [p2p_channels(b, 4, half) for b in (2 ** 26, 2 ** 26 + 1, 2 ** 27 + 1)] == [8, 16, 32]


def test_loads_sum_to_the_bytes_and_equal_splits_are_even():
    rng = np.random.default_rng(0)
    traffic = rng.uniform(1e6, 6e8, (4, 4))                                           # (4, 4)
    loads = channel_loads(traffic)                                                    # (4, 32)
    np.testing.assert_allclose(loads.sum(axis=1), traffic.sum(axis=1) + traffic.sum(axis=0))
    for chunk in (2.0 ** 20, 2.0 ** 27, 3e8, 2.0 ** 30):
        assert channel_load_imbalance(np.full((4, 4), chunk)) == pytest.approx(1.0)


def _loads_by_loops(traffic, channels=32):
    """channel_loads' rule written out: round k of rank r sends traffic[r][r+k] and receives
    traffic[r-k][r], each over p2p_channels(bytes) channels starting at bit-reverse(k) (5 bits for
    32 channels), in equal parts; plain Python floats."""
    world = len(traffic)
    bits = channels.bit_length() - 1
    loads = [[0.0] * channels for _ in range(world)]
    for r in range(world):
        for k in range(world):
            reverse = sum(((k % channels) >> b & 1) << (bits - 1 - b) for b in range(bits))
            for size in (float(traffic[r][(r + k) % world]), float(traffic[(r - k) % world][r])):
                if size > 0:
                    n = p2p_channels(size, world)
                    for c in range(n):
                        loads[r][(reverse + c) % channels] += size / n
    return loads


def test_loads_and_imbalance_against_loops_when_one_rank_differs():
    """One rank's chunks straddle the 2^27-byte threshold, the others' do not: the imbalance is that
    rank's busiest channel over its mean (a max over ranks, not a mean), against the loop reference."""
    traffic = np.full((4, 4), 1.0e8)
    traffic[0, 1], traffic[0, 3] = 1.40e8, 1.30e8                                    # rank 0's chunks cross 2^27
    by_loops = np.array(_loads_by_loops(traffic.tolist()))                          # (4, 32)
    np.testing.assert_allclose(channel_loads(traffic), by_loops, rtol=1e-12)
    per_rank = by_loops.max(axis=1) / by_loops.mean(axis=1)                         # (4,)
    assert per_rank.max() > per_rank.min() + 0.05                                  # the ranks do differ
    assert channel_load_imbalance(traffic) == pytest.approx(float(per_rank.max()), rel=1e-12)


def test_imbalance_separates_the_slowed_cases_of_the_measured_sweep():
    """Every case NCCL ran >= 3% slower than the equal-split reference has imbalance > 1.05;
    every other has <= 1.02 (default NCCL settings, 4 H200, tests/data/nccl)."""
    results = json.loads((SWEEP / "chunk-sweep-default.json").read_text())["results"]
    reference = np.median([r["busbw_Bps"] for name, r in results.items() if name.startswith("equal/")])
    for name, row in results.items():
        imbalance = channel_load_imbalance(row["traffic_bytes"])
        if reference / row["busbw_Bps"] > 1.03 and not name.startswith("equal/"):
            assert imbalance > 1.05, name
        elif not name.startswith("equal/"):
            assert imbalance <= 1.02, name


@pytest.mark.parametrize("kwargs, message", [
    ({"p2p_channels": 24}, "p2p_channels=24 must be a power of two"),
    ({"channels_per_peer": 64}, "channels_per_peer=64 must be <= p2p_channels=32"),
    ({"chunk_bytes": 0}, "chunk_bytes=0 must be a positive integer"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NcclP2pConfig(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="world_size=0"):
        p2p_channels(1e6, 0)
    with pytest.raises(ValueError, match="size_bytes=-1"):
        p2p_channels(-1, 4)
    with pytest.raises(ValueError, match="square"):
        channel_loads(np.ones((2, 3)))


def test_doctests():
    import doctest

    import lshsim.sim.nccl as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
