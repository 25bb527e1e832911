"""`lshsim.sim.traffic.load_traffic`: the traffic kinds of `lshsim simulate --traffic`."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lshsim.sim.traffic import load_traffic


def test_uniform_si_and_iec():
    assert np.array_equal(load_traffic("uniform:64MB", 4), np.full((4, 4), 16e6))
    assert np.array_equal(load_traffic("uniform:64MiB", 4), np.full((4, 4), 2 ** 24))
    assert np.array_equal(load_traffic("uniform:6.4e7", 2), np.full((2, 2), 3.2e7))


@pytest.mark.parametrize("spec, message", [
    ("uniform:4k", "ambiguous size: write 4kB (powers of 1000) or 4KiB (powers of 1024)"),
    ("uniform:lots", "traffic 'uniform:lots': 'lots' is not a size"),
    ("uniform:-5MB", "'-5MB' is not a size"),
    ("missing.json", "traffic 'missing.json': no such file"),
])
def test_refusals_name_the_spec(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_traffic(spec, 4)


def test_json_matrix_and_route_output(tmp_path):
    matrix = np.arange(9, dtype=float).reshape(3, 3)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(matrix.tolist()))
    assert np.array_equal(load_traffic(str(plain), 3), matrix)
    routed = tmp_path / "route.json"
    routed.write_text(json.dumps({"router": "topk", "traffic_bytes": matrix.tolist()}))
    assert np.array_equal(load_traffic(str(routed), 3), matrix)
    with pytest.raises(ValueError, match=r"shape \(3, 3\) does not match the topology's 4 GPUs"):
        load_traffic(str(plain), 4)
    bad = tmp_path / "bad.json"
    for text, message in [("{", "not valid JSON"), ('{"x": 1}', "needs a 'traffic_bytes'"),
                          ('[["a", 1], [1, 1]]', "matrix of numbers")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_traffic(str(bad), 2)
