"""The malformed-ARGUMENT corpus (issue 17): every sub-command of `lshsim` and `python -m lshsim.executor`.

Each case is (argv, substrings): the command must end with exit code 2 and exactly ONE line on
standard error that holds every substring (the option and the value it refused, or the estimate
and the limit of a size too large), no traceback, within BUDGET_S seconds: a bad input is refused
before any work (a simulation, a measurement, a run). Sizes too large for the machine are refused
from an estimate (lshsim.limits), before anything is allocated. The hypothesis tests throw
NaN, infinities, negatives, zero, bool-ish and non-numeric text at every numeric option.

The file formats (topology, workload, model, traffic, trace, nccl-tests, calibration) are the
corpus of tests/test_corpus_files.py; the launcher's timeouts, faults, threads and tolerance
that of tests/test_faults.py.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lshsim.cli import main as lshsim_main
from lshsim.executor.__main__ import main as executor_main

BUDGET_S = 10.0  # generous: a refusal must not start the job (seconds of work), not race a shared machine
ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = str(ROOT / "data" / "workloads" / "cal-uniform-d2048-t128.yaml")
NCCL_LOG = str(ROOT / "tests" / "data" / "nccl_tests_alltoall_perf.txt")
SIM = ["simulate", "--topology", "locmoe-8x8", "--traffic", "uniform:1MB"]


@pytest.fixture(scope="module", autouse=True)
def _warm_imports():
    """Import what the commands import lazily (torch, the simulator, the executor) once, so that the
    per-case time measures the command, not the first import of torch."""
    import lshsim.analytic.capacity  # noqa: F401
    import lshsim.analytic.collision  # noqa: F401
    import lshsim.analytic.comm  # noqa: F401
    import lshsim.calibration  # noqa: F401
    import lshsim.executor.run  # noqa: F401
    import lshsim.executor.workload  # noqa: F401
    import lshsim.sim.collectives  # noqa: F401
    import lshsim.sim.moe_step  # noqa: F401
    import lshsim.sim.validate  # noqa: F401
    from lshsim.models import load_model
    from lshsim.topology import load_topology

    load_model("gpt-moe-15b")
    load_topology("locmoe-8x8")


@pytest.fixture
def files(tmp_path):
    """Paths the cases refer to: {FILE} a plain file, {DIR} a folder, {UNDERFILE} a path under the plain
    file, {BIGTOPO} a topology of 2^20 GPUs, {BIGWL} a workload too large for this machine."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    spec = (ROOT / "data" / "topologies" / "locmoe-32x8.yaml").read_text()
    lines = [line for line in spec.splitlines() if not line.startswith(("nodes:", "gpus_per_node:"))]
    big_topology = tmp_path / "big.yaml"
    big_topology.write_text("\n".join(lines) + "\nnodes: 2048\ngpus_per_node: 512\n")
    workload = Path(WORKLOAD).read_text()
    big_workload = tmp_path / "big-wl.yaml"
    big_workload.write_text("\n".join(
        "tokens_per_rank: 16777216" if line.startswith("tokens_per_rank:") else
        "d_model: 1048576" if line.startswith("d_model:") else
        "name: big-wl" if line.startswith("name:") else line for line in workload.splitlines()) + "\n")
    return {"{FILE}": str(plain), "{DIR}": str(folder), "{UNDERFILE}": str(plain / "out.png"),
            "{UNDERFILE_JSON}": str(plain / "out.json"), "{BIGTOPO}": str(big_topology),
            "{BIGWL}": str(big_workload), "{TMP}": str(tmp_path)}


# ---- the explicit corpus ---------------------------------------------------------------------------
POS_INT_BAD = ["0", "-1", "1.5", "nan", "true"]
NONNEG_INT_BAD = ["-1", "2.5", "inf", "yes"]
POS_FLOAT_BAD = ["0", "-1", "nan", "inf", "1e999", "false"]
NONNEG_FLOAT_BAD = ["-0.5", "nan", "-inf", "x"]

#: (command prefix, option, bad values) -> one case per value; the message names the option and the value
OPTION_TABLE = [
    (["route"], "--k", POS_INT_BAD),
    (["route"], "--experts", ["0", "-16", "4.0x"]),
    (["route"], "--world", ["0", "nan", "-8", "8.5"]),
    (["route"], "--gpus-per-node", ["0", "-4"]),
    (["route"], "--tokens", POS_INT_BAD),
    (["route"], "--d-model", ["0", "1e999", "-1024", "1024.5"]),
    (["route"], "--bytes-per-element", ["3", "0", "16"]),
    (["route"], "--capacity-factor", POS_FLOAT_BAD),
    (["route"], "--locality-bonus", NONNEG_FLOAT_BAD),
    (["route"], "--skew", NONNEG_FLOAT_BAD + ["--"]),
    (["route"], "--seed", ["-1", "4294967296", "0.5", "nan"]),
    (["capacity"], "--experts", ["0", "-4", "nan", "16.5"]),
    (["capacity"], "--dim", ["0", "nan", "-4096", "inf"]),
    (["capacity"], "--delta", ["0", "1.5", "-0.1", "nan", "inf"]),
    (["capacity"], "--monte-carlo", NONNEG_INT_BAD),
    (["capacity"], "--tokens", ["-5", "1e999"]),
    (["capacity"], "--k", ["0", "two"]),
    (["capacity"], "--capacity-factor", ["0", "nan", "-1.25"]),
    (["capacity"], "--skew", ["-1", "inf"]),
    (["capacity"], "--sample", ["-1", "nan"]),
    (["capacity"], "--seed", ["-3"]),
    (["collision"], "--dim", ["0", "-2", "nan", "1e999"]),
    (["collision"], "--cos", ["1.5", "-1.01", "nan", "inf"]),
    (["collision"], "--hashes", ["0", "1.5"]),
    (["collision"], "--tables", ["0", "-1"]),
    (["collision"], "--monte-carlo", ["-10", "nan"]),
    (["collision"], "--seed", ["nan"]),
    (["a2a-cost"], "--world", ["0", "-16"]),
    (["a2a-cost"], "--gpus-per-node", ["0", "-8", "8.5"]),
    (["a2a-cost"], "--bytes-per-rank", ["-1MB", "nan", "64M", "1e999", "true"]),
    (["a2a-cost"], "--intra-GBps", POS_FLOAT_BAD),
    (["a2a-cost"], "--inter-GBps", ["0", "-25", "nan"]),
    (["a2a-cost"], "--nics-per-node", ["0", "-1"]),
    (["a2a-cost"], "--alpha-us", NONNEG_FLOAT_BAD),
    (["a2a-cost"], "--inter-alpha-us", ["-1", "inf"]),
    (["a2a-cost"], "--traffic", ["skewed", "UNIFORM"]),
    (["breakeven"], "--tokens", ["0", "-5", "nan"]),
    (["breakeven"], "--d-model", ["0", "-1", "nan"]),
    (["breakeven"], "--k", ["0", "-2", "1.5"]),
    (["breakeven"], "--world", ["0", "1.5"]),
    (["breakeven"], "--bandwidth-GBps", POS_FLOAT_BAD),
    (["breakeven"], "--hash-Mtps", ["0", "nan", "--"]),
    (["breakeven"], "--restore-Mtps", ["-68", "inf"]),
    (["breakeven"], "--bytes-per-element", ["3"]),
    (["breakeven"], "--expert-ms", ["-1", "nan"]),
    (["breakeven"], "--compression", ["0", "1.5", "-0.2", "nan"]),
    (["breakeven"], "--tflops", ["0", "inf"]),
    (SIM, "--chunks", ["0", "-1", "nan", "2.5"]),
    (SIM, "--alpha-s", ["-1e-6", "nan", "inf", "--"]),
    (SIM, "--message-gap-s", ["-1", "nan"]),
    (SIM, "--drain-tolerance", ["-0.01", "1.5", "nan"]),
    (SIM, "--top-links", ["0", "ten"]),
    (["plan"], "--lsh-rate", ["0", "1.5", "nan", "-0.2", "--"]),
    (["plan"], "--tokens-per-gpu", ["0", "-4096", "nan"]),
    (["plan"], "--capacity-factor", ["0", "-1", "nan", "1e999", "lots"]),
    (["plan"], "--locality-bonus", ["-1", "nan"]),
    (["plan"], "--seed", ["-1", "1e20"]),
    (["plan"], "--max-routed-tokens", ["0", "-1", "nan", "1.5"]),
    (["run", "--workload", WORKLOAD], "--min-a2a-s", ["-1", "nan", "inf", "100000"]),
    (["run", "--workload", WORKLOAD], "--max-iterations", ["0", "-1", "2000000"]),
    (["run", "--workload", WORKLOAD], "--max-wall-s", ["0", "-5", "nan", "--"]),
    (["calibrate"], "--min-bytes", ["0", "-4KiB", "4k", "nan"]),
    (["calibrate"], "--max-bytes", ["0", "1.5", "1GB/s"]),
    (["calibrate"], "--steps-per-octave", ["0", "nan"]),
    (["calibrate"], "--iterations", ["0", "-10", "nan", "true"]),
    (["calibrate"], "--warmup", ["-1", "1.5", "--"]),
    (["calibrate"], "--ffn-d-model", ["0", "nan", "4096.5"]),
    (["calibrate"], "--ffn-tokens", ["-8192", "0", "inf"]),
    (["calibrate", "--nccl-tests", NCCL_LOG], "--world-size", ["0", "-8", "nan"]),
    (["calibrate", "--nccl-tests", NCCL_LOG], "--gpu", ["h300", "cpu", "tpu-v5", "h1000", "a1000"]),  # h1000 read as h100
    (["calibrate"], "--fit-min-bytes", ["-1", "nan", "1.5"]),
    (["calibrate"], "--name", ["../x", "", "a/b", ".hidden"]),
    (["calibrate"], "--source-option", ["novalue", "=4", "1x=2"]),
]

OPTION_CASES = [pytest.param([*prefix, f"{option}={value}"], [option, repr(value)], id=f"{prefix[0]} {option}={value}")
                for prefix, option, values in OPTION_TABLE for value in values]

#: whole argument sets: conflicts, outputs that cannot be written, sizes too large for the machine
SCENARIOS = [
    # required arguments and unknown words
    (["simulate", "--traffic", "uniform:1MB"], ["--topology"]),
    (["simulate", "--topology", "locmoe-8x8"], ["--traffic"]),
    (["route", "--bogus", "1"], ["--bogus"]),
    (["run"], ["--workload"]),
    (["launch"], ["--nproc"]),
    (["nosuchcommand"], ["nosuchcommand"]),
    (["route", "--router", "dense"], ["dense"]),
    (["route", "--drop-policy", "random"], ["drop_policy", "random"]),
    (["route", "--placement", "diagonal"], ["diagonal"]),
    (["route", "--k", "20", "--experts", "16"], ["k=20"]),
    (["route", "--experts", "6", "--world", "4"], ["--experts 6", "--world 4"]),
    (["collision", "--family", "spherical"], ["spherical"]),
    (["capacity", "--dim", "1"], ["d=1"]),
    (["capacity", "--tokens", "100", "--k", "1000"], ["k=1000"]),
    (["a2a-cost", "--world", "8", "--gpus-per-node", "3"], ["gpus_per_node=3"]),
    ([*SIM, "--chunks", "4"], ["--chunks=4", "hierarchical"]),
    (["simulate", "--topology", "nosuch", "--traffic", "uniform:1MB"], ["nosuch"]),
    (["simulate", "--topology", "locmoe-8x8", "--traffic", "uniform:-1MB"], ["-1MB"]),
    (["simulate", "--topology", "locmoe-8x8", "--traffic", "uniform:64M"], ["64M", "ambiguous"]),
    ([*SIM, "--algorithm", "telepathy"], ["telepathy"]),
    (["plan", "--models", "gpt-moe-15b"], ["--models", "--sweep"]),
    (["plan", "--sweep", "--trace", "{TMP}/t.json"], ["--trace", "--sweep"]),
    (["plan", "--sweep", "--models", ","], ["--models", "','"]),
    (["plan", "--model", "nosuch-model"], ["nosuch-model"]),
    (["plan", "--algorithm", "telepathy"], ["telepathy"]),
    (["plan", "--router", "dense"], ["dense"]),
    (["calibrate", "--min-bytes", "1GiB", "--max-bytes", "1MiB"], ["--min-bytes", "--max-bytes"]),
    (["calibrate", "--nccl-tests", NCCL_LOG, "--source", "nccl-tests", NCCL_LOG], ["--source", "--nccl-tests"]),
    (["calibrate", "{FILE}"], ["--source"]),
    (["calibrate", "--source", "nosuch", "{FILE}"], ["nosuch"]),
    (["calibrate", "--out", "{FILE}", "--raw", "{FILE}", "--nccl-tests", NCCL_LOG, "--world-size", "4"],
     ["--out", "--raw", "same file"]),
    (["run", "--workload", WORKLOAD, WORKLOAD, "--out", "{TMP}/t.json"], ["--out", "--out-dir"]),
    (["run", "--workload", "{TMP}/missing.yaml"], ["missing.yaml"]),
    (["launch", "--nproc", "2"], ["sub-command"]),
    (["launch", "--nproc", "2", "--", "route"], ["sub-command"]),
    (["validate", "{TMP}/missing.json"], ["missing.json"]),
    # outputs: the folder is created if missing; a path under a FILE, or a folder given as a file, is refused
    # before any work (the simulation, the measurement)
    (["capacity", "--plot", "{UNDERFILE}"], ["--plot", "{UNDERFILE}", "is a file, not a folder"]),
    (["capacity", "--plot", "{DIR}"], ["--plot", "is a folder"]),
    (["collision", "--plot", "{UNDERFILE}"], ["--plot", "is a file"]),
    (["a2a-cost", "--plot", "{DIR}"], ["--plot", "is a folder"]),
    (["breakeven", "--plot", "{UNDERFILE}"], ["--plot", "is a file"]),
    (["plan", "--plot", "{UNDERFILE}"], ["--plot", "is a file"]),
    (["plan", "--trace", "{UNDERFILE_JSON}"], ["--trace", "is a file"]),
    (["plan", "--chrome-trace", "{DIR}"], ["--chrome-trace", "is a folder"]),
    (["plan", "--trace", ""], ["--trace", "empty"]),
    (["validate", str(ROOT / "tests" / "data" / "validate"), "--plot", "{UNDERFILE}"], ["--plot", "is a file"]),
    (["run", "--workload", WORKLOAD, "--out", "{UNDERFILE_JSON}"], ["--out", "is a file"]),
    (["run", "--workload", WORKLOAD, "--out", "{DIR}"], ["--out", "is a folder"]),
    (["run", "--workload", WORKLOAD, "--out-dir", "{FILE}"], ["--out-dir", "is a file"]),
    (["calibrate", "--out", "{UNDERFILE}", "--nccl-tests", NCCL_LOG, "--world-size", "4"], ["--out", "is a file"]),
    (["calibrate", "--raw", "{DIR}", "--nccl-tests", NCCL_LOG, "--world-size", "4"], ["--raw", "is a folder"]),
    (["check", "--out", "{UNDERFILE_JSON}"], ["--out", "is a file"]),
    (["check", "--out", "{DIR}"], ["--out", "is a folder"]),
    # sizes too large for the machine: refused from the estimate, with the estimate and the limit
    (["route", "--tokens", "2e9"], ["2000000000 tokens", "TiB of memory", "available"]),
    (["route", "--tokens", "2000000", "--world", "64", "--experts", "64"], ["needs about", "available"]),
    (["route", "--experts", "1000000000", "--world", "8"], ["1000000000 experts", "available"]),
    (["route", "--d-model", "100000000"], ["d_model 100000000", "available"]),
    (["capacity", "--monte-carlo", "1000000000"], ["--monte-carlo", "would take", "the limit is"]),
    (["capacity", "--tokens", "100000", "--sample", "100000000"], ["--sample", "available"]),
    (["capacity", "--experts", "100000000000", "--tokens", "5"], ["--experts", "available"]),
    (["collision", "--monte-carlo", "10000000000"], ["--monte-carlo", "the limit is"]),
    (["a2a-cost", "--world", "1000000", "--gpus-per-node", "8"], ["--world 1000000", "available"]),
    (["simulate", "--topology", "{BIGTOPO}", "--traffic", "uniform:1MB"], ["1048576 GPUs", "flows", "available"]),
    (["plan", "--cluster", "{BIGTOPO}"], ["1048576 GPUs", "available"]),
    (["plan", "--tokens-per-gpu", "16000000", "--max-routed-tokens", "16000000"], ["routing 1.6e+07 tokens",
                                                                                   "available"]),
    # past the plausibility limit (lshsim.bounds): refused before any estimate, naming the limit
    (["plan", "--tokens-per-gpu", "2000000000", "--max-routed-tokens", "2000000000"],
     ["--tokens-per-gpu", "'2000000000' is above 16777216", "the limit for tokens per GPU"]),
    (["plan", "--sweep", "--clusters", "{BIGTOPO}"], ["1048576 GPUs", "available"]),
    (["run", "--workload", "{BIGWL}", "--device", "cpu"], ["big-wl", "memory", "available"]),
    (["calibrate", "--max-bytes", "1TiB", "--device", "cpu"], ["--max-bytes", "available"]),
    (["calibrate", "--ffn-tokens", "16000000", "--ffn-d-model", "100000", "--device", "cpu"],
     ["--ffn-tokens", "available"]),
    (["calibrate", "--ffn-tokens", "100000000", "--device", "cpu"], ["--ffn-tokens", "is above 16777216"]),
]

SCENARIO_CASES = [pytest.param(argv, subs, id=" ".join(argv)[:80]) for argv, subs in SCENARIOS]
EXECUTOR_COMMANDS = ("run", "calibrate", "check", "launch")


def _fill(items: list[str], files: dict) -> list[str]:
    out = []
    for item in items:
        for key, value in files.items():
            item = item.replace(key, value)
        out.append(item)
    return out


def _expect_refusal(entry, argv: list[str], substrings: list[str], capsys) -> str:
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (argv, err)
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert "Traceback" not in err
    for text in substrings:
        assert text in err, (text, err)
    assert elapsed < BUDGET_S, f"{argv}: refused after {elapsed:.2f} s"
    return err


@pytest.mark.parametrize("argv, substrings", OPTION_CASES + SCENARIO_CASES)
def test_lshsim_refuses(argv, substrings, files, capsys):
    _expect_refusal(lshsim_main, _fill(argv, files), _fill(substrings, files), capsys)


@pytest.mark.parametrize("argv, substrings", [case for case in OPTION_CASES + SCENARIO_CASES
                                              if case.values[0][0] in EXECUTOR_COMMANDS])
def test_executor_refuses_the_same(argv, substrings, files, capsys):
    """`python -m lshsim.executor` reads the same arguments and refuses the same inputs."""
    _expect_refusal(executor_main, _fill(argv, files), _fill(substrings, files), capsys)


def test_the_corpus_is_large_enough():
    assert len(OPTION_CASES) + len(SCENARIO_CASES) >= 300


def test_limits_are_in_the_help(capsys):
    """Every bounded number says its bounds in --help (a sample of each kind)."""
    for argv, words in ((["collision", "--help"], ["[-1, 1]"]), (["capacity", "--help"], ["(0, 1)"]),
                        (["route", "--help"], ["4294967295", "refused before it starts"]),
                        (["simulate", "--help"], ["[0, 0.99]", "W^2 flows"]),
                        (["plan", "--help"], ["(0, 1]", "created if missing"]),
                        (["run", "--help"], ["86400", "1048576", "created if missing"]),
                        (["calibrate", "--help"], ["h200, h100, a100, v100", "checked before any"])):
        with pytest.raises(SystemExit):
            lshsim_main(argv)
        text = " ".join(capsys.readouterr().out.split())
        for word in words:
            assert word in text, (argv, word)


def test_the_output_folder_is_created_before_the_work(tmp_path, capsys):
    """The one output rule: a missing folder is created (with its parents), the file written whole."""
    target = tmp_path / "new" / "deeper" / "ec.png"
    assert lshsim_main(["capacity", "--plot", str(target), "--json"]) == 0
    capsys.readouterr()
    assert target.read_bytes().startswith(b"\x89PNG") and sorted(p.name for p in target.parent.iterdir()) == ["ec.png"]


# ---- hypothesis: numeric options under NaN, infinities, negatives, zero, bool-ish text -------------
BAD_TEXT = st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "true", "False",
                            "yes", "none?", "", " ", "0x1G", "1,5", "--", "1e", "½"])
POSITIVE_INT_OPTIONS = [(["route"], "--tokens"), (["route"], "--experts"), (["capacity"], "--k"),
                        (["collision"], "--hashes"), (["breakeven"], "--world"), (SIM, "--top-links"),
                        (["plan"], "--max-routed-tokens"), (["calibrate"], "--iterations"),
                        (["a2a-cost"], "--nics-per-node")]
POSITIVE_FLOAT_OPTIONS = [(["route"], "--capacity-factor"), (["a2a-cost"], "--intra-GBps"),
                          (["breakeven"], "--bandwidth-GBps"), (["breakeven"], "--hash-Mtps"),
                          (["breakeven"], "--tflops"), (["run", "--workload", WORKLOAD], "--max-wall-s")]
NONNEG_FLOAT_OPTIONS = [(["route"], "--skew"), (SIM, "--alpha-s"), (["a2a-cost"], "--alpha-us"),
                        (["breakeven"], "--expert-ms"), (["run", "--workload", WORKLOAD], "--min-a2a-s")]


def _refused_fast(argv, option, value, capsys):
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        lshsim_main([*argv, f"{option}={value}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and option in err and "Traceback" not in err, err
    assert time.perf_counter() - started < BUDGET_S


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(POSITIVE_INT_OPTIONS),
       value=st.one_of(BAD_TEXT, st.integers(max_value=0).map(str),
                       st.floats().filter(lambda x: not math.isfinite(x) or not x.is_integer()).map(repr)))
def test_positive_int_options_refuse_non_positive_and_non_integers(case, value, capsys):
    _refused_fast(*case, value, capsys)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(POSITIVE_FLOAT_OPTIONS),
       value=st.one_of(BAD_TEXT, st.floats(max_value=0.0).map(repr), st.just("0"), st.just("-0")))
def test_positive_number_options_refuse_zero_negatives_nan_inf(case, value, capsys):
    _refused_fast(*case, value, capsys)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(NONNEG_FLOAT_OPTIONS),
       value=st.one_of(BAD_TEXT, st.floats(max_value=-1e-300).map(repr)))
def test_non_negative_number_options_refuse_negatives_nan_inf(case, value, capsys):
    _refused_fast(*case, value, capsys)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.floats(min_value=1.0000001, allow_infinity=False), st.floats(max_value=-1.0000001,
                                                                                         allow_infinity=False)))
def test_collision_cos_outside_the_unit_interval(value, capsys):
    _refused_fast(["collision"], "--cos", repr(value), capsys)
