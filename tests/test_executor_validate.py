"""lshsim validate (lshsim/sim/validate.py) on H200 traces and the calibrated topology they were measured with
(fixtures in tests/data/validate)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lshsim.cli import main
from lshsim.sim.collectives import simulate_all_to_all
from lshsim.sim.trace import Trace
from lshsim.sim.validate import a2a_errors, default_topology, plot_validations, topology_for_trace, validate_trace

DATA = Path(__file__).resolve().parent / "data" / "validate"
TOPO4 = DATA / "h200-x4-insitu.yaml"


def test_predictions_are_the_simulated_collectives_of_the_recorded_traffic():
    trace = Trace.from_json(DATA / "x4" / "gpu-skewed-d4096-t8k.json")
    validation = validate_trace(trace, TOPO4)
    rows = {(r.phase, r.direction): r for r in validation.rows}
    G = topology_for_trace(TOPO4, 4)
    measured = trace.meta["measured"]
    dispatch = np.asarray(measured["traffic_bytes"], dtype=float)
    combine = np.asarray(measured["combine_traffic_bytes"], dtype=float)
    assert rows[("dispatch_a2a", "forward")].predicted_s == pytest.approx(simulate_all_to_all(G, dispatch).time_s)
    assert rows[("dispatch_a2a", "backward")].predicted_s == pytest.approx(simulate_all_to_all(G, combine).time_s)
    assert rows[("combine_a2a", "backward")].predicted_s == rows[("dispatch_a2a", "forward")].predicted_s
    assert rows[("gate", "forward")].predicted_s is None and rows[("gate", "forward")].rel_error is None
    row = rows[("dispatch_a2a", "forward")]
    assert row.rel_error == pytest.approx((row.predicted_s - row.measured_s) / row.measured_s)
    assert row.measured_s == trace.phase_durations_s("forward")["dispatch_a2a"]


def test_topology_is_cut_to_the_trace_and_defaults_to_the_datasheet():
    trace = Trace.from_json(DATA / "x2" / "gpu-uniform-d4096-t8k.json")
    assert default_topology(trace) == "h200-nvswitch"
    cpu = Trace.from_json(DATA / "x2" / "gpu-uniform-d4096-t8k.json")
    cpu.meta["cluster"]["gpu"] = None                      # a CPU run: the error names the option to give
    with pytest.raises(ValueError, match=r"GPU None \(a CPU run\); pass a topology \(lshsim validate --topology"):
        default_topology(cpu)
    assert topology_for_trace(TOPO4, 2).graph["gpus_per_node"] == 2
    with pytest.raises(ValueError, match="has 4 GPUs; the trace has 8 ranks"):
        topology_for_trace(TOPO4, 8)
    datasheet = validate_trace(trace)  # 450 GB/s NVLink, no calibration: optimistic
    assert all(r.rel_error < 0 for r in datasheet.rows if r.phase == "dispatch_a2a")


def test_refuses_a_simulated_trace(tmp_path):
    trace = Trace(phases=[], meta={"source": "simulated", "workload": {}, "cluster": {}, "provenance": {}})
    with pytest.raises(ValueError, match="measured trace"):
        validate_trace(trace, TOPO4)


def test_cli_json_and_plot(tmp_path, capsys):
    traces = sorted(str(p) for p in (DATA / "x4").glob("gpu-uniform-*.json"))
    png = tmp_path / "v.png"
    assert main(["validate", *traces, "--topology", str(TOPO4), "--json", "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["a2a_phases"] == 4 * len(traces)
    errors = a2a_errors([validate_trace(Trace.from_json(t), TOPO4) for t in traces])
    assert out["summary"]["a2a_median_abs_rel_error"] == pytest.approx(float(np.median(np.abs(errors))))
    assert png.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no predicted phase"):
        plot_validations([], tmp_path / "empty.png")


def test_plot_format_follows_the_suffix(tmp_path):
    """`validate --plot v.pdf` wrote PNG bytes into v.pdf; the format follows the suffix as for every other
    command's --plot (png when matplotlib knows no such format)."""
    trace = sorted((DATA / "x4").glob("gpu-uniform-*.json"))[0]
    validations = [validate_trace(Trace.from_json(trace), TOPO4)]
    assert plot_validations(validations, tmp_path / "v.pdf").read_bytes().startswith(b"%PDF")
    assert plot_validations(validations, tmp_path / "v.svg").read_text().lstrip().startswith("<?xml")
    assert plot_validations(validations, tmp_path / "v.data").read_bytes().startswith(b"\x89PNG")


def test_plot_legend_names_what_is_drawn():
    """The legend listed all eight phase markers whatever was drawn, and never said that a hollow
    marker is a backward phase; it names only the phases drawn, and the two directions."""
    from lshsim.sim.validate import validation_figure

    trace = sorted((DATA / "x4").glob("gpu-uniform-*.json"))[0]
    validations = [validate_trace(Trace.from_json(trace), TOPO4)]
    drawn = {row.phase for row in validations[0].rows if row.predicted_s is not None}
    assert drawn and "lsh_compress" not in drawn
    labels = [text.get_text() for text in validation_figure(validations).axes[0].get_legend().get_texts()]
    assert "lsh_compress" not in labels and "layer" not in labels
    assert drawn <= set(labels)
    assert "forward (filled)" in labels and "backward (hollow)" in labels and "4 GPUs" in labels
