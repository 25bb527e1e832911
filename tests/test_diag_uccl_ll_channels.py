"""benchmarks/diag_uccl_ll_channels.py (issue 14 diagnosis): the channel loads it reports follow from the routing.

Independent references: a rank's remote (token, expert) copies are about T k (1 - G / EP) for DeepEP's uniform routing
(G GPUs per node), UCCL-EP uses experts / EP proxy channels, and the busiest channel carries at least the mean.
"""
from __future__ import annotations

import math

import pytest

from benchmarks import diag_uccl_ll_channels as diag
from lshsim.sim.published import load_cases


def _case(case_id):
    return next(c for c in load_cases() if c.id == case_id)


@pytest.mark.parametrize("case_id,channels", [("uccl-p5en-ll-ep16-dispatch", 18), ("uccl-p6b200-ll-ep32-combine", 9)])
def test_channel_loads_follow_the_routing(case_id, channels):
    case = _case(case_id)
    row = diag.case_row(case, "fitting")
    w = case.workload
    expected = int(w["tokens_per_rank"]) * int(w["top_k"]) * (1 - case.gpus_per_node / case.ep)
    assert row["channels"] == channels == diag._experts(case) // case.ep
    assert row["remote_copies"] == pytest.approx(expected, rel=0.03)
    assert row["copies_per_channel"] == pytest.approx(row["remote_copies"] / channels)
    assert row["busiest_channel"] >= row["copies_per_channel"]
    assert math.ceil(row["copies_per_channel"] / diag.WINDOW) <= row["window_rounds"] <= \
        math.ceil(row["busiest_channel"] * 1.5 / diag.WINDOW)
    assert row["published_us"] == pytest.approx(row["us_per_remote_copy"] * row["remote_copies"])
