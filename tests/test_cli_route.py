"""`lshsim route` as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lshsim.cli import main


def test_route_json_numbers_are_consistent(capsys):
    assert main(["route", "--router", "topk", "--k", "2", "--experts", "16", "--world", "8",
                 "--gpus-per-node", "4", "--tokens", "512", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["capacity"] == 80  # ceil(1.25 * 512 * 2 / 16)
    assert out["routed"] == 8 * 512 * 2
    assert out["kept"] + out["dropped"] == out["routed"]
    traffic = out["traffic_bytes"]
    assert len(traffic) == 8 and all(len(row) == 8 for row in traffic)
    assert sum(map(sum, traffic)) == out["kept"] * out["bytes_per_token"]
    assert sum(traffic[i][i] for i in range(8)) == out["local_bytes"]
    assert sum(row["dropped"] for row in out["experts_table"]) == out["dropped"]


def test_route_locmoe_reduces_inter_node_bytes(capsys):
    common = ["--experts", "16", "--world", "8", "--gpus-per-node", "4", "--tokens", "256", "--k", "1",
              "--no-capacity", "--json"]
    main(["route", "--router", "topk", *common])
    topk = json.loads(capsys.readouterr().out)
    main(["route", "--router", "locmoe", "--locality-bonus", "10", *common])
    locmoe = json.loads(capsys.readouterr().out)
    assert locmoe["inter_node_bytes"] == 0 < topk["inter_node_bytes"]


def test_route_table_output(capsys):
    assert main(["route", "--experts", "4", "--world", "2", "--gpus-per-node", "2", "--tokens", "64"]) == 0
    text = capsys.readouterr().out
    assert "Load per expert" in text and "traffic" in text and "dropped" in text


@pytest.mark.parametrize("argv,fragment", [
    (["route", "--router", "dense"], "dense"),
    (["route", "--k", "20", "--experts", "16"], "k=20"),
    (["route", "--capacity-factor", "0"], "argument --capacity-factor: '0' must be > 0"),
    (["route", "--experts", "6", "--world", "4"], "num_experts=6"),
])
def test_route_bad_input_exits_2_naming_value(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_console_script_runs():
    """The installed `lshsim` entry point (python -m lshsim.cli) prints help."""
    result = subprocess.run([sys.executable, "-m", "lshsim.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "route" in result.stdout
