"""`lshsim simulate`: tables, JSON, traffic files, and clear refusals."""
import json

import numpy as np
import pytest

from lshsim.analytic.comm import a2a_time_direct
from lshsim.cli import main


def run_json(capsys, *argv):
    assert main(["simulate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_uniform_json_matches_library(capsys):
    out = run_json(capsys, "--topology", "h100-nvswitch", "--traffic", "uniform:800MB", "--no-local-copy")
    assert out["options"]["message_gap_s"] == 0.0
    gap = run_json(capsys, "--topology", "h100-nvswitch", "--traffic", "uniform:800MB", "--no-local-copy",
                   "--message-gap-s", "1e-3")
    assert gap["time_s"] > 6e-3                     # the 7th message is issued 6 ms after the first
    assert out["world"] == 8 and out["algorithm"] == "direct" and out["topology"] == "h100-nvswitch"
    assert out["egress_bytes"] == [7e8] * 8 and out["ingress_bytes"] == [7e8] * 8
    expected = a2a_time_direct(np.full((8, 8), 1e8), 450e9, 1e-5) + 2e-6      # + two hops of latency
    assert out["time_s"] == pytest.approx(expected, rel=1e-9)
    top = out["busiest_links"][0]
    assert set(top) == {"src", "dst", "bytes", "utilisation"} and 0.9 < top["utilisation"] <= 1.0


def test_traffic_file_and_route_output(tmp_path, capsys):
    matrix = np.arange(256, dtype=float).reshape(16, 16) * 1e5
    path = tmp_path / "t.json"
    path.write_text(json.dumps(matrix.tolist()))
    out = run_json(capsys, "--topology", "lshmoe-v100-2x8", "--traffic", str(path), "--algorithm", "2d",
                   "--chunks", "2")
    off = matrix - np.diag(np.diag(matrix))
    assert out["egress_bytes"] == pytest.approx(off.sum(1).tolist())
    assert sorted(s["name"] for s in out["stages"]) == sorted(f"{p}[{i}]" for p in ("gather", "exchange", "scatter")
                                                              for i in range(2))
    assert out["stages"][0]["name"] == "gather[0]"
    # lshsim route --json output is accepted as it is
    assert main(["route", "--world", "16", "--gpus-per-node", "8", "--experts", "16", "--tokens", "64", "--json"]) == 0
    (tmp_path / "r.json").write_text(capsys.readouterr().out)
    out = run_json(capsys, "--topology", "lshmoe-v100-2x8", "--traffic", str(tmp_path / "r.json"),
                   "--algorithm", "groupwise")
    assert [s["name"] for s in out["stages"]] == ["intra", "inter"]


def test_tables(capsys):
    assert main(["simulate", "--topology", "lshmoe-a100-4x8", "--traffic", "uniform:64MB"]) == 0
    text = capsys.readouterr().out
    assert "predicted time" in text and "Busiest links" in text and "egress" in text and "n0.nic0" in text


@pytest.mark.parametrize("argv, message", [
    (["--topology", "nope", "--traffic", "uniform:1MB"], "topology 'nope' is unknown; known: a100-nvswitch"),
    (["--topology", "h100-nvswitch", "--traffic", "uniform:1MB", "--algorithm", "ring"],
     "algorithm='ring' is unknown; known: direct, pairwise, hierarchical, groupwise, node_dedup "
     "(alias: 2d = hierarchical, deepep = node_dedup)"),
    (["--topology", "h100-nvswitch", "--traffic", "uniform:lots"], "traffic 'uniform:lots': 'lots' is not a size"),
    (["--topology", "h100-nvswitch", "--traffic", "missing.json"], "no such file"),
    (["--topology", "h100-nvswitch", "--traffic", "uniform:1MB", "--chunks", "2"], "applies to --algorithm hierarchical (alias 2d) only"),
])
def test_refusals(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_wrong_shape_file(tmp_path, capsys):
    path = tmp_path / "small.json"
    path.write_text(json.dumps([[0, 1], [1, 0]]))
    with pytest.raises(SystemExit):
        main(["simulate", "--topology", "h100-nvswitch", "--traffic", str(path)])
    assert "shape (2, 2) does not match the topology's 8 GPUs" in capsys.readouterr().err
