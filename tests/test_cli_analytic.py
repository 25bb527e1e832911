"""`lshsim capacity | collision | a2a-cost | breakeven`: JSON numbers, plots and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lshsim.analytic import capacity, collision, comm
from lshsim.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_capacity_json_and_table(capsys):
    out = _json(capsys, ["capacity", "--experts", "16", "--dim", "4096", "--delta", "0.03"])
    assert out["forms"]["exact"]["p_delta"] == pytest.approx(capacity.p_delta(4096, 0.03), rel=1e-12)
    assert out["forms"]["erfc"]["ec_min"] == pytest.approx(capacity.ec_min(16, 4096, 0.03, "erfc"), rel=1e-12)
    assert out["forms"]["exp"]["ec_min"] == pytest.approx(capacity.ec_min(16, 4096, 0.03, "exp"), rel=1e-12)
    assert "capacity_factor_at_bound" not in out["forms"]["exact"] and "capacity_factor" not in out["forms"]["exact"]
    assert out["forms"]["exact"]["uniform_batch_tokens"] == pytest.approx(1 / capacity.p_delta(4096, 0.03), rel=1e-12)
    assert main(["capacity", "--experts", "16", "--dim", "4096", "--delta", "0.03"]) == 0
    table = capsys.readouterr().out
    assert "LocMoE Theorem 1" in table and "erfc" in table
    assert "tokens per" in table and "n * ec_min" not in table and "capacity factor at" not in table


def test_capacity_factor_at_ec_min_with_tokens(capsys, monkeypatch):
    out = _json(capsys, ["capacity", "--experts", "16", "--dim", "4096", "--delta", "0.03", "--tokens", "4096",
                         "--k", "2"])
    bound = capacity.ec_min(16, 4096, 0.03)
    factor = out["forms"]["exact"]["capacity_factor_at_bound"]
    assert factor == pytest.approx(bound * 16 / (4096 * 2), rel=1e-12)
    assert capacity.capacity_from_factor(4096, 2, 16, factor) == 2   # ceil(1.14)
    assert out["drops"]["capacity"] == 640 and out["drops"]["capacity_meets_ec_min"] is True
    # 8 tokens, top-1, 16 experts at factor 1.25: C = ceil(0.625) = 1 < ec_min 1.14
    out = _json(capsys, ["capacity", "--experts", "16", "--tokens", "8", "--k", "1"])
    assert out["drops"]["capacity"] == 1 and out["drops"]["capacity_meets_ec_min"] is False
    assert out["forms"]["exact"]["capacity_factor_at_bound"] == pytest.approx(bound * 2, rel=1e-12)
    monkeypatch.setenv("COLUMNS", "200")   # rich's width: no header wrapped
    assert main(["capacity", "--experts", "16", "--tokens", "8", "--k", "1"]) == 0
    table = " ".join(capsys.readouterr().out.split())   # titles may wrap at a word
    assert "capacity factor at ec_min" in table and "C < ec_min" in table and "T=8 tokens, k=1" in table


def test_capacity_drops_and_monte_carlo(capsys):
    out = _json(capsys, ["capacity", "--experts", "8", "--dim", "64", "--delta", "0.1", "--monte-carlo", "5000",
                         "--tokens", "512", "--k", "2", "--capacity-factor", "1.0", "--sample", "4"])
    assert out["monte_carlo"]["num_samples"] == 5000
    drops = out["drops"]
    assert drops["capacity"] == capacity.capacity_from_factor(512, 2, 8, 1.0)
    expected = capacity.expected_dropped_fraction(512, 2, drops["capacity"], popularity=np.full(8, 1 / 8))
    assert drops["expected_dropped_fraction"]["exact"] == pytest.approx(expected, rel=1e-9)
    assert drops["sampled"]["num_samples"] == 4


def test_collision_json(capsys):
    out = _json(capsys, ["collision", "--family", "cross-polytope", "--dim", "1024", "--cos", "0.9", "--hashes", "6"])
    p = collision.cross_polytope_collision_probability(1024, 0.9)
    assert out["probability"] == pytest.approx(p, rel=1e-12)
    assert out["concatenated"] == pytest.approx(p ** 6, rel=1e-12)
    assert out["asymptotic"] == pytest.approx(1024 ** (-0.1 / 1.9), rel=1e-12)
    out = _json(capsys, ["collision", "--family", "hyperplane", "--dim", "64", "--cos", "0.5", "--hashes", "2",
                         "--tables", "3", "--monte-carlo", "2000"])
    assert out["probability"] == pytest.approx(2 / 3)
    assert out["amplified"] == pytest.approx(1 - (1 - (2 / 3) ** 2) ** 3)
    assert out["monte_carlo"]["num_samples"] == 2000


def test_a2a_cost_json(capsys):
    out = _json(capsys, ["a2a-cost", "--world", "16", "--gpus-per-node", "8", "--bytes-per-rank", "64MB",
                         "--intra-GBps", "300", "--inter-GBps", "25", "--alpha-us", "10"])
    cluster = comm.ClusterParams(gpus_per_node=8, intra_bandwidth_Bps=300e9, inter_bandwidth_Bps=25e9, alpha_s=10e-6)
    traffic = comm.uniform_traffic(16, 64e6)
    for name in comm.A2A_ALGORITHMS:
        assert out["time_s"][name] == pytest.approx(comm.a2a_time(name, traffic, cluster), rel=1e-12)
    assert out["bytes_per_rank"] == 64e6


def test_breakeven_json(capsys):
    out = _json(capsys, ["breakeven", "--tokens", "4096", "--d-model", "1024", "--bandwidth-GBps", "12.5",
                         "--hash-Mtps", "50", "--tflops", "125"])
    assert out["breakeven_rate"] == pytest.approx(
        comm.breakeven_compression_rate(4096, 1024, bandwidth_Bps=12.5e9, hash_tokens_per_s=50e6), rel=1e-12)
    assert out["lsh_moe_ratio"] == pytest.approx(comm.lsh_moe_comm_compute_ratio(125e12, 12.5e9, 2, 16, 1024))
    assert out["speedup"] == pytest.approx(out["baseline_s"] / out["lsh_s"])


def test_breakeven_table_names_what_its_times_hold(capsys):
    """The two times are one MoE layer's all-to-alls (+ experts with --expert-ms), not a training step."""
    assert main(["breakeven", "--expert-ms", "2"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "one MoE layer, fwd + bwd, no LSH: all-to-alls + experts (ms)" in text
    assert "+ compress and restore (ms)" in text and "step time" not in text
    assert main(["breakeven", "--forward-only"]) == 0
    assert "fwd, no LSH: all-to-alls only (no --expert-ms)" in " ".join(capsys.readouterr().out.split())


def test_a2a_cost_table_says_what_algbw_is(capsys):
    assert main(["a2a-cost", "--world", "8", "--gpus-per-node", "4"]) == 0
    assert "algbw: bytes per rank (its own share included) / time" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", [
    ["capacity", "--dim", "1024", "--delta", "0.05"],
    ["collision", "--dim", "256", "--cos", "0.8"],
    ["a2a-cost", "--world", "8", "--gpus-per-node", "4"],
    ["breakeven", "--expert-ms", "1.5"],
])
def test_plot_writes_a_png(tmp_path, capsys, argv):
    path = tmp_path / "figure.png"
    out = _json(capsys, argv + ["--plot", str(path)])
    assert out["plot"] == str(path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


@pytest.mark.parametrize("argv, message", [   # argparse names the option and the value; the library the field
    (["capacity", "--delta", "1.5"], "argument --delta: '1.5'"),
    (["capacity", "--delta", "nan"], "argument --delta: 'nan'"),
    (["capacity", "--dim", "1"], "d=1"),
    (["capacity", "--experts", "-4"], "argument --experts: '-4'"),
    (["collision", "--dim", "1"], "d=1"),
    (["collision", "--cos", "1.5"], "argument --cos: '1.5'"),
    (["collision", "--family", "spherical"], "family='spherical'"),
    (["collision", "--hashes", "0"], "argument --hashes: '0'"),
    (["a2a-cost", "--world", "8", "--gpus-per-node", "3"], "gpus_per_node=3"),
    (["a2a-cost", "--inter-GBps", "-25"], "argument --inter-GBps: '-25'"),
    (["a2a-cost", "--traffic", "skewed"], "argument --traffic: invalid choice: 'skewed'"),
    (["breakeven", "--tokens", "-5"], "argument --tokens: '-5'"),
    (["breakeven", "--compression", "0"], "argument --compression: '0'"),
])
def test_bad_input_exits_with_the_named_value(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
