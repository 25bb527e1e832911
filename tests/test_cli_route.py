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


def test_route_router_option_reaches_the_router(capsys):
    """`--router-option` (as in `plan`): topk_collapsed routes to its first N experts only, node_limited
    takes max_nodes, and the JSON and the table title report the options."""
    common = ["--experts", "16", "--world", "8", "--gpus-per-node", "4", "--tokens", "256", "--json"]
    assert main(["route", "--router", "topk_collapsed", "--router-option", "active_experts=4", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["router_options"] == {"active_experts": 4}
    routed = [row["routed"] for row in out["experts_table"]]
    assert sum(routed[:4]) == out["routed"] > 0 and not any(routed[4:])
    assert main(["route", "--router", "node_limited", "--router-option", "max_nodes=1", *common]) == 0
    limited = json.loads(capsys.readouterr().out)
    assert limited["router_options"] == {"max_nodes": 1, "scores_per_node": 0}
    # a node limit does not shrink the per-copy inter-node bytes, but it does the once-per-(token, node) ones
    assert main(["route", "--router", "topk", *common]) == 0
    topk = json.loads(capsys.readouterr().out)
    tokens = 8 * 256
    assert limited["inter_node_bytes_dedup"] == pytest.approx(limited["inter_node_bytes"] / 2, rel=0.05)
    assert limited["inter_node_bytes_dedup"] <= tokens * limited["bytes_per_token"]
    assert limited["inter_node_bytes_dedup"] < topk["inter_node_bytes_dedup"] <= topk["inter_node_bytes"]
    assert main(["route", "--router", "node_limited", "--router-option", "max_nodes=1", "--experts", "8",
                 "--world", "4", "--gpus-per-node", "2", "--tokens", "64"]) == 0
    assert "router=node_limited max_nodes=1" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragment", [
    (["route", "--router", "dense"], "dense"),
    (["route", "--k", "20", "--experts", "16"], "k=20"),
    (["route", "--capacity-factor", "0"], "argument --capacity-factor: '0' must be > 0"),
    (["route", "--experts", "6", "--world", "4"], "--experts 6 cannot be spread evenly over --world 4 ranks"),
    (["route", "--world", "8", "--gpus-per-node", "3"], "--world 8 is not a whole number of nodes of --gpus-per-node 3"),
    # the same limit as a workload's skew (it was accepted: every token already went to the same experts)
    (["route", "--skew", "1e9"], "argument --skew: '1e9' is above 100"),
    (["route", "--skew", "-1"], "argument --skew: '-1' must be >= 0"),
    (["route", "--router", "node_limited", "--router-option", "max_nodez=2"],
     "--router-option max_nodez=2: option 'max_nodez' is not an option of the node_limited router; known: max_nodes"),
    (["route", "--router-option", "active_experts"], "'active_experts' must be NAME=VALUE"),
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


def test_route_plot_draws_the_load_and_the_traffic(tmp_path, capsys, monkeypatch):
    """`route --plot`: the bars are the JSON's kept and dropped choices per expert, the heat map its
    traffic in MB; the PNG is written whole, and a bad --plot is refused before the routing."""
    from lshsim.cli import _render

    argv = ["route", "--experts", "16", "--world", "8", "--gpus-per-node", "4", "--tokens", "512", "--skew", "1"]
    figures = []
    monkeypatch.setattr(_render, "save_figure", lambda fig, path, **kw: figures.append(fig))
    assert main([*argv, "--json", "--plot", str(tmp_path / "r.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    left, right = figures[0].axes[:2]
    heights = [patch.get_height() for patch in left.patches]  # kept bars, then dropped bars
    assert heights == [row["kept"] for row in out["experts_table"]] + [row["dropped"] for row in out["experts_table"]]
    image = right.images[0].get_array()
    assert image.shape == (8, 8) and float(abs(image * 1e6 - out["traffic_bytes"]).max()) < 1e-3
    assert out["plot"] == str(tmp_path / "r.png")
    monkeypatch.undo()
    assert main([*argv, "--plot", str(tmp_path / "p" / "r.png")]) == 0
    assert (tmp_path / "p" / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as info:
        main([*argv, "--tokens", "10000000000", "--plot", str(tmp_path / "file" / "r.png")])
    assert info.value.code == 2 and "--plot" in capsys.readouterr().err  # the output check comes first
