"""`lshsim calibrate --source NAME FILE...`: any registered calibration source (the toy CSV
plugin here) from the command line, end to end; `--plugin MODULE` registers a plugin first; the
shorthands (--nccl-tests) are the same code; errors are one line (exit 2) and write nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lshsim.calibration import SOURCES, LinkModels
from lshsim.cli import main
from lshsim.topology import load_topology
from plugins import toy_calibration_source

CURVE = [(1e6, 40e9), (1e7, 120e9), (1e8, 250e9), (1e9, 330e9)]        # bytes per rank, bus B/s
DATA = Path(__file__).parent / "data"
PLUGIN_FILE = Path(__file__).parent / "plugins" / "toy_calibration_source.py"


@pytest.fixture
def csv_source():
    read = toy_calibration_source.register()
    yield read
    toy_calibration_source.unregister()


@pytest.fixture
def unregister_afterwards():
    yield
    toy_calibration_source.unregister()
    assert toy_calibration_source.NAME not in SOURCES


def _csv(tmp_path, rows=None) -> Path:
    rows = rows or [f"{int(m)},{m * 3 / 4 / b!r}" for m, b in CURVE]              # t = S / B(M), 4 ranks
    path = tmp_path / "a2a.csv"
    path.write_text("\n".join(["bytes_per_rank,time_s", *rows]) + "\n")
    return path


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_calibrate_source_end_to_end(tmp_path, csv_source, capsys):
    out = tmp_path / "toy.yaml"
    assert main(["calibrate", "--source", "csv-a2a", str(_csv(tmp_path)), "--source-option", "world_size=4",
                 "--source-option", "gpu=NVIDIA H200", "--out", str(out), "--name", "toy-x4"]) == 0
    text = capsys.readouterr().out
    assert "calibration on 4 x NVIDIA H200" in text and "bus bandwidth curve (4 sizes, alpha 0)" in text
    G = load_topology(out)
    links = LinkModels.from_topology(G)
    assert G.graph["name"] == "toy-x4" and G.graph["gpus_per_node"] == 4 and G.graph["alpha_s"] == 0.0
    assert np.allclose(links["nvlink"].busbw_curve, CURVE, rtol=1e-12)
    assert G.graph["calibration"]["provenance"]["tool"] == "csv"
    # --world-size / --gpu are the source's options world_size / gpu; --no-curve: alpha-beta only
    again = tmp_path / "flat.yaml"
    assert main(["calibrate", "--source", "csv-a2a", str(_csv(tmp_path)), "--world-size", "4", "--no-curve",
                 "--out", str(again)]) == 0
    assert load_topology(again).graph["name"] == "cpu-x4-calibrated"
    assert LinkModels.from_topology(load_topology(again))["nvlink"].busbw_curve is None


def test_the_plugin_option_registers_a_module_for_any_command(tmp_path, unregister_afterwards, capsys):
    assert toy_calibration_source.NAME not in SOURCES
    out = tmp_path / "p.yaml"
    assert main(["--plugin", "plugins.toy_calibration_source", "calibrate", "--source", "csv-a2a",
                 str(_csv(tmp_path)), "--world-size", "4", "--out", str(out)]) == 0
    assert toy_calibration_source.NAME in SOURCES and out.is_file()
    # a .py file works too, and from the executor's entry point (a fresh process: nothing registered)
    done = subprocess.run([sys.executable, "-m", "lshsim.executor", "--plugin", str(PLUGIN_FILE), "calibrate",
                           "--source", "csv-a2a", str(_csv(tmp_path)), "--world-size", "4", "--out",
                           str(tmp_path / "q.yaml")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_topology(tmp_path / "q.yaml").graph["calibration"] == load_topology(out).graph["calibration"]
    err = _fails(["--plugin", "no_such_plugin_module", "calibrate", "--source", "csv-a2a", "x.csv"], capsys)
    assert "--plugin no_such_plugin_module: no module named 'no_such_plugin_module'" in err


def test_the_shorthands_are_the_same_code_as_source(tmp_path, capsys):
    log = str(DATA / "nccl_tests_alltoall_perf.txt")
    short, long = tmp_path / "short.yaml", tmp_path / "long.yaml"
    assert main(["calibrate", "--nccl-tests", log, "--gpu", "h100", "--out", str(short)]) == 0
    assert main(["calibrate", "--source", "nccl-tests", log, "--gpu", "h100", "--no-curve", "--out", str(long)]) == 0
    assert short.read_text() == long.read_text()


@pytest.mark.parametrize("argv, message", [
    (["--source", "nope", "a.csv"], "calibration source 'nope' is unknown; known: csv-a2a, microbenchmarks, "
                                    "nccl-tests, traces"),
    (["--source", "csv-a2a", "CSV", "--source-option", "colour=red", "--world-size", "4"],
     "calibration source 'csv-a2a': got an unexpected keyword argument 'colour' (its options: world_size "
     "(required), gpu)"),
    (["--source", "csv-a2a", "CSV"], "calibration source 'csv-a2a': missing a required argument: 'world_size'"),
    (["--source", "csv-a2a", "missing.csv", "--world-size", "4"], "No such file or directory: 'missing.csv'"),
    (["--source", "csv-a2a", "--world-size", "4"], "--source csv-a2a needs the files to read (FILE...)"),
    (["CSV"], "FILE arguments"),
    (["--source", "csv-a2a", "CSV", "--from-raw", "r.json"], "--source reads one source; --from-raw is a shorthand"),
    (["--source", "csv-a2a", "CSV", "--gpu", "h100", "--source-option", "gpu=h200"],
     "--gpu and --source-option gpu=... both give the source's gpu"),
])
def test_calibrate_source_errors_are_one_line(tmp_path, csv_source, capsys, argv, message):
    csv = str(_csv(tmp_path))
    err = _fails(["calibrate", *[csv if a == "CSV" else a for a in argv], "--out", str(tmp_path / "o.yaml")], capsys)
    assert message in err and err.startswith("lshsim calibrate: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o.yaml").exists()


def test_a_failing_source_or_fit_writes_nothing(tmp_path, csv_source, capsys):
    out = tmp_path / "t.yaml"
    out.write_text("old\n")
    bad = _csv(tmp_path, ["1000,fast"])
    err = _fails(["calibrate", "--source", "csv-a2a", str(bad), "--world-size", "4", "--out", str(out),
                  "--raw", str(tmp_path / "raw.json")], capsys)
    assert "a2a.csv:2: expected bytes_per_rank,time_s" in err
    one_size = _csv(tmp_path, ["1000000,1e-5", "1000000,2e-5"])              # the curve needs two sizes
    err = _fails(["calibrate", "--source", "csv-a2a", str(one_size), "--world-size", "4", "--out", str(out)], capsys)
    assert out.read_text() == "old\n" and not (tmp_path / "raw.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a2a.csv", "t.yaml"]        # no temporary file left
