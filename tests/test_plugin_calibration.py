"""A toy calibration source registered as one module + one registry entry runs end to end: CSV ->
CalibrationInput -> fits -> topology YAML -> load_topology -> simulate_all_to_all on its link model.
And `lshsim.calibration` itself imports no torch."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lshsim.calibration import SOURCES, LinkModels, curve_busbw_Bps, fit_calibration
from lshsim.sim.collectives import simulate_all_to_all, uniform_traffic
from lshsim.topology import load_topology, write_topology_yaml
from plugins import toy_calibration_source

CURVE = [(1e6, 40e9), (1e7, 120e9), (1e8, 250e9), (1e9, 330e9)]        # bytes per rank, bus B/s


@pytest.fixture
def csv_source():
    read = toy_calibration_source.register()
    yield read
    toy_calibration_source.unregister()
    assert toy_calibration_source.NAME not in SOURCES


def test_toy_source_calibrates_a_topology_the_simulator_uses(tmp_path, csv_source):
    rows = ["bytes_per_rank,time_s"] + [f"{int(m)},{m * 3 / 4 / b!r}" for m, b in CURVE]   # t = S / B(M), 4 ranks
    path = tmp_path / "a2a.csv"
    path.write_text("\n".join(rows) + "\n")
    inp = SOURCES[toy_calibration_source.NAME]([path], world_size=4, gpu="NVIDIA H200")
    assert inp.source == "csv-a2a" and len(inp.points) == 4
    fit = fit_calibration(inp, curve=True)
    assert np.allclose(fit.curve.curve, CURVE, rtol=1e-12) and fit.curve.max_rel_residual < 1e-12 and fit.headroom is None
    out = write_topology_yaml(fit.topology_spec("toy-x4", {**inp.provenance, "fit": fit.info()}), tmp_path / "t.yaml")
    G = load_topology(out)
    links = LinkModels.from_topology(G)
    assert np.allclose(links["nvlink"].busbw_curve, CURVE, rtol=1e-12) and links.alpha_s == 0.0
    for size in (3e6, 2e8):                                              # between the points: interpolated
        result = simulate_all_to_all(G, uniform_traffic(4, size), local_copy=False)
        assert result.time_s == pytest.approx(size * 3 / 4 / curve_busbw_Bps(CURVE, size), rel=1e-9)
        assert result.options["a2a_busbw_Bps"] == pytest.approx(curve_busbw_Bps(CURVE, size), rel=1e-12)
    # an explicit link model wins over the topology's: a flat 100 GB/s curve
    flat = links.replace("nvlink", busbw_curve=((1e3, 100e9), (1e12, 100e9)))
    assert simulate_all_to_all(G, uniform_traffic(4, 2e8), local_copy=False, links=flat).time_s == \
        pytest.approx(2e8 * 3 / 4 / 100e9, rel=1e-9)
    assert LinkModels.from_topology(G) is links                          # the graph was not changed


def test_toy_source_reports_a_bad_row(tmp_path, csv_source):
    path = tmp_path / "bad.csv"
    path.write_text("bytes_per_rank,time_s\n1000,fast\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: expected bytes_per_rank,time_s"):
        SOURCES[toy_calibration_source.NAME]([path], world_size=4)


def test_importing_lshsim_calibration_imports_no_torch():
    code = ("import sys, lshsim.calibration; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'simpy', 'networkx') "
            "or m.startswith(('lshsim.sim', 'lshsim.executor', 'lshsim.topology'))); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_link_models_validate_and_combine():
    traffic = np.full((4, 4), 25e6)
    with pytest.raises(ValueError, match="headroom=0.5 must be >= 1"):
        LinkModels.from_topology(load_topology("h100-nvswitch")).replace("nvlink", busbw_curve=CURVE, headroom=0.5)
    with pytest.raises(ValueError, match="at most one link class may have a headroom"):
        LinkModels.from_topology(load_topology("h100-fattree-8x8")).replace(
            "nvlink", busbw_curve=CURVE, headroom=1.2).replace("nic", busbw_curve=CURVE, headroom=1.1)
    G = load_topology("h100-fattree-8x8")
    links = LinkModels.from_topology(G)
    assert set(links.classes) >= {"nvlink", "pcie", "nic"}
    assert links.rates(traffic).bandwidth_scale_by_kind is None          # no calibration: nominal rates
    nic = links.replace("nic", busbw_curve=CURVE)                        # a class a calibration adds a curve to
    rates = nic.rates(traffic)
    assert set(rates.bandwidth_scale_by_kind) == {"nic"} and "nic_a2a_busbw_Bps" in rates.info
    # the scaled NIC edges bind (nominally they never could: one NIC per GPU, non-blocking)
    size = 64e6
    nic_Bps = curve_busbw_Bps(CURVE, size)                               # 143 GB/s > 50 GB/s nominal: scaled up
    slow = nic.replace("nic", busbw_curve=((1e6, 10e9), (1e9, 10e9)))    # 10 GB/s per NIC
    result = simulate_all_to_all(G, uniform_traffic(64, size), links=slow, local_copy=False)
    off_node = size * 56 / 64                                            # 8 GPUs per node, one NIC each
    assert result.time_s == pytest.approx(off_node / 10e9, rel=5e-3) and nic_Bps > 50e9   # + alpha, hops


def test_link_models_from_a_built_spec_and_from_a_hand_built_graph():
    from lshsim.topology import build_topology
    spec = {"name": "t", "gpu": "h200", "gpus_per_node": 4, "alpha_s": 2e-5, "intra": {"kind": "nvswitch"},
            "calibration": {"a2a_busbw_curve": [[1e6, 5e10], [1e9, 3e11]], "a2a_link_headroom": 1.1}}
    links = LinkModels.from_topology(build_topology(spec))
    assert links["nvlink"].headroom == 1.1 and links["nvlink"].nominal_Bps == 450e9 and links.alpha_s == 2e-5
    with pytest.raises(ValueError, match=r"^x.yaml: calibration.a2a_link_max_Bps=-1 must be > 0"):
        build_topology({**spec, "calibration": {**spec["calibration"], "a2a_link_max_Bps": -1}}, source="x.yaml")
    import networkx as nx
    G = nx.DiGraph(alpha_s=3e-6)
    G.add_edge("a", "b", kind="nvlink", bandwidth_Bps=100e9)
    G.add_edge("b", "a", kind="nvlink", bandwidth_Bps=120e9)
    plain = LinkModels.from_topology(G)
    assert plain.classes == ("nvlink",) and plain["nvlink"].nominal_Bps == 120e9 and plain.alpha_s == 3e-6
    assert plain.rates(np.ones((2, 2))).bandwidth_scale_by_kind is None
