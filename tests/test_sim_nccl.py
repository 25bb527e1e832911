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
