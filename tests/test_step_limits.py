"""Plausibility limits of the step options and of the options that were still open (branch bounds3).

`benchmarks/probe_limits.py` fed every numeric option of plan, simulate, sweep, reproduce, breakeven and
the executor commands, and every numeric field of a sweep grid, a figures `setting` and a workload, the
values -1, 0, 1e12, 1e30, NaN and inf. Each case here was accepted on main (exit 0, a run of the absurd
value: a locality bonus of 1e12, a seed of NaN in a grid, 1e30 bytes per rank, a 10^12-rank calibration),
ended in a traceback (`sweep --jobs 1e12`: OverflowError) or was refused without the option's name (`plan
--tokens-per-gpu 1e12` named StepConfig's field). Now each ends with exit code 2 and one line naming the
file or option, the field, the value and the limit, and leaves nothing behind (the `refused` fixture).
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NCCL_LOG = str(ROOT / "tests" / "data" / "nccl_tests_alltoall_perf.txt")
WORKLOAD_PATH = ROOT / "data" / "workloads" / "cal-uniform-d2048-t128.yaml"
WORKLOAD = WORKLOAD_PATH.read_text()
FIGURES = (ROOT / "data" / "papers" / "figures.yaml").read_text()
SETTING = "setting: {router: topk, capacity_factor: 1.0}"
DEEPSEEK = (ROOT / "models" / "configs" / "deepseek-v3.yaml").read_text()

GRID = """name: g
grid:
  model: mixtral-8x7b
  cluster: h200-nvswitch
  fidelity: estimate
  tokens_per_gpu: 64
{extra}options: [baseline]
"""
SWEEP = ["sweep", "{FILE}", "--out", "{OUT}.csv", "--jobs", "0", "--quiet"]
REPRODUCE = ["reproduce", "--figures", "{FILE}", "--json", "--plot", "{OUT}.png"]
RUN = ["run", "--workload", "{FILE}", "--device", "cpu", "--out", "{OUT}.json"]
PLAN_MODEL = ["plan", "--model", "{FILE}", "--router", "model", "--cluster", "h100-ib-rail-8x8", "--tokens-per-gpu", "64",
              "--fidelity", "estimate", "--json", "--plot", "{OUT}.png"]


def _sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _grid(extra: str) -> str:
    return GRID.format(extra="".join(f"  {line}\n" for line in extra.split("\n")))


#: (id, file name, text, argv, words the one line must hold besides the file's name)
FILE_CASES = [
    # sweep grid: every StepConfig field is an axis; these were accepted and planned
    ("grid locality_bonus 1e12", "g.yaml", _grid("locality_bonus: 1000000000000"), SWEEP,
     ["grid.locality_bonus", "locality_bonus = 1000000000000 is above 1000", "own-node bonus"]),
    ("grid seed nan", "g.yaml", _grid("seed: .nan"), SWEEP, ["grid.seed", "[0, 4294967295]"]),
    ("grid seed -1", "g.yaml", _grid("seed: -1"), SWEEP, ["grid.seed", "seed=-1"]),
    ("grid max_routed_tokens 1e12", "g.yaml", _grid("max_routed_tokens: 1000000000000"), SWEEP,
     ["max_routed_tokens = 1000000000000 is above 4294967296", "tokens routed in all"]),
    ("grid grad_bytes_per_element 1e12", "g.yaml", _grid("grad_bytes_per_element: 1000000000000"), SWEEP,
     ["grad_bytes_per_element = 1000000000000 is above 64 B", "bytes per element"]),
    ("grid overlap_chunks 1e12", "g.yaml", _grid("overlap_chunks: [[1000000000000]]"), SWEEP,
     ["overlap_chunks[0] = 1000000000000 is above 1024", "pipeline chunks"]),
    ("grid overlap_chunks a number", "g.yaml", _grid("overlap_chunks: 4"), SWEEP,
     ["overlap_chunks=4 must be a list of integers >= 2"]),
    # a router's own options (node_limited: M nodes) were not checked before the point ran
    ("grid max_nodes 0", "g.yaml", _grid("router: node_limited\nrouter_options: {max_nodes: 0}"), SWEEP,
     ["grid.router_options", "max_nodes=0", "must be >= 1"]),
    ("grid max_nodes 1e12", "g.yaml", _grid("router: node_limited\nrouter_options: {max_nodes: 1000000000000}"),
     SWEEP, ["router_options.max_nodes = 1000000000000 is above 65536"]),
    ("grid option of another router", "g.yaml", _grid("router: topk\nrouter_options: {max_nodes: 2}"), SWEEP,
     ["'max_nodes' is not an option of the topk router"]),
    # a model's published routing (plan --router model): M = 10^12 nodes routed as plain top-k on main
    ("model max_nodes 1e12", "m.yaml", _sub(DEEPSEEK, "max_nodes: 4", "max_nodes: 1000000000000"), PLAN_MODEL,
     ["router_options.max_nodes = 1000000000000 is above 65536", "servers of a cluster"]),
    # figures file: a figure's setting is a StepConfig
    ("figure overlap_chunks 1e12", "f.yaml", _sub(FIGURES, SETTING, SETTING[:-1] + ", overlap_chunks: [1000000000000]}"),
     REPRODUCE, ["figures[0]", "overlap_chunks[0] = 1000000000000 is above 1024"]),
    ("figure locality_bonus 1e30", "f.yaml", _sub(FIGURES, SETTING, SETTING[:-1] + ", locality_bonus: 1.0e+30}"),
     REPRODUCE, ["figures[0]", "locality_bonus = 1e+30 is above 1000"]),
    # executor workload: the router's bonus and the Hadamard rotation's rounds (1e12 rounds hashed for hours)
    ("workload locality_bonus 1e12", "w.yaml",
     _sub(WORKLOAD, "drop_policy: position}", "drop_policy: position, locality_bonus: 1000000000000}"), RUN,
     ["router.locality_bonus", "1000000000000 is above 1000"]),
    ("workload lsh rounds 1e12", "w.yaml",
     _sub(WORKLOAD, "lsh: null", "lsh: {rotation: hadamard, rounds: 1000000000000}"), RUN,
     ["rounds = 1000000000000 is above 64", "Hadamard rotation"]),
]


@pytest.mark.parametrize("name, text, argv, words", [pytest.param(*case[1:], id=case[0]) for case in FILE_CASES])
def test_an_implausible_step_field_is_refused(name, text, argv, words, tmp_path, monkeypatch, refused):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    out, _ = refused(argv, name, words)
    assert out == ""


PLAN = ["plan", "--fidelity", "estimate", "--json", "--plot", "{OUT}.png"]
SIMULATE = ["simulate", "--topology", "dgx1-v100", "--json", "--quiet"]
CALIBRATE = ["calibrate", "--nccl-tests", NCCL_LOG, "--out", "{OUT}.yaml", "--quiet"]
EXECUTOR_RUN = ["run", "--workload", str(WORKLOAD_PATH), "--device", "cpu", "--out", "{OUT}.json", "--quiet"]
BREAKEVEN = ["breakeven", "--json", "--plot", "{OUT}.png"]

#: (base argv, option, value, words besides the option and the value): each was accepted on main (exit 0)
#: but for the marked ones
OPTION_CASES = [
    (PLAN, "--locality-bonus", "1e12", ["is above 1000", "own-node bonus"]),
    (PLAN, "--locality-bonus", "1e30", ["is above 1000"]),
    (["route", "--router", "locmoe", "--tokens", "64", "--d-model", "16", "--json", "--plot", "{OUT}.png"],
     "--locality-bonus", "1e12", ["is above 1000"]),
    (PLAN, "--max-routed-tokens", "1e12", ["is above 4294967296"]),
    (PLAN, "--tokens-per-gpu", "1e12", ["is above 16777216"]),       # main: refused as 'tokens_per_gpu = ...'
    (PLAN, "--ep", "1e12", ["is above 1048576"]),                    # main: 'ep = ...', the option not named
    (PLAN, "--tp", "1e12", ["is above 1048576"]),
    (SIMULATE + ["--traffic", "uniform:1MB", "--algorithm", "hierarchical"], "--chunks", "1e12", ["is above 1024"]),
    (["sweep", str(ROOT / "data" / "sweeps" / "nic-vs-size.yaml"), "--out", "{OUT}.csv"], "--jobs", "1e12",
     ["is above 4096"]),                                             # main: OverflowError traceback
    (BREAKEVEN, "--tokens", "1e12", ["is above 16777216"]),
    (BREAKEVEN, "--d-model", "1e12", ["is above 1048576"]),
    (BREAKEVEN, "--k", "1e12", ["is above 65536"]),
    (BREAKEVEN, "--world", "1e12", ["is above 1048576"]),
    (BREAKEVEN, "--hash-Mtps", "1e30", ["(1e+36 /s) is above 1e+12 /s", "token copies"]),
    (BREAKEVEN, "--restore-Mtps", "1e12", ["(1e+18 /s) is above 1e+12 /s"]),
    (BREAKEVEN, "--expert-ms", "1e30", ["(1e+27 s) is above 3600 s"]),
    (EXECUTOR_RUN, "--fault-rank", "1e12", ["is above 1048576"]),
    (CALIBRATE + ["--world-size", "4"], "--max-bytes", "1e30", ["(1e+30 B) is above 1125899906842624 B"]),
    (CALIBRATE + ["--world-size", "4"], "--steps-per-octave", "1e12", ["is above 64"]),
    (CALIBRATE + ["--world-size", "4"], "--iterations", "1e12", ["is above 1048576"]),
    (CALIBRATE + ["--world-size", "4"], "--warmup", "1e12", ["is above 1048576"]),
    (CALIBRATE + ["--world-size", "4"], "--ffn-d-model", "1e12", ["is above 1048576"]),
    (CALIBRATE + ["--world-size", "4"], "--ffn-tokens", "1e12", ["is above 16777216"]),
    (CALIBRATE, "--world-size", "1e12", ["is above 1048576"]),       # main: 'o.yaml: gpus_per_node=...'
]


@pytest.mark.parametrize("argv, option, value, words", [pytest.param(*case, id=f"{case[0][0]} {case[1]} {case[2]}")
                                                        for case in OPTION_CASES])
def test_an_implausible_option_is_refused_naming_it(argv, option, value, words, tmp_path, monkeypatch, refused):
    monkeypatch.chdir(tmp_path)
    out, _ = refused([*argv, f"{option}={value}"], option, [f"'{value}'", "the limit for", *words])
    assert out == ""


def test_uniform_traffic_above_the_size_limit_is_refused(tmp_path, monkeypatch, capsys):
    """simulate --traffic uniform:1e30 was simulated (exit 0); a matrix entry of 1e30 was already refused."""
    from lshsim.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--topology", "dgx1-v100", "--traffic", "uniform:1e30", "--json"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert "traffic 'uniform:1e30': 1e+30 is above 1125899906842624 B, the limit for" in err, err


def test_the_new_limits_leave_the_plausible_values_alone(tmp_path):
    """The values at the limits pass; a node_limited grid with its own option loads as before."""
    from lshsim.checks import SEED_MAX
    from lshsim.models import load_model
    from lshsim.sim.moe_step import StepConfig
    from lshsim.sweep import load_grid

    config = StepConfig(router="node_limited", router_options=(("max_nodes", 4),), seed=SEED_MAX,
                        max_routed_tokens=2 ** 32, overlap_chunks=(2, 1024), locality_bonus=1000.0,
                        grad_bytes_per_element=8)
    assert config.overlap_chunks == (2, 1024) and config.router_options == (("max_nodes", 4),)
    with pytest.raises(ValueError, match=r"overlap_chunks\[1\] = 1025 is above 1024"):
        StepConfig(overlap_chunks=(2, 1025))
    with pytest.raises(ValueError, match=r"router_options=5 must be a mapping"):
        StepConfig(router_options=5)
    grid = tmp_path / "g.yaml"
    grid.write_text(_grid("router: node_limited\nrouter_options: {max_nodes: 2}"))
    assert load_grid(grid, resolve_model=load_model).axes["router_options"] == [{"max_nodes": 2}]
