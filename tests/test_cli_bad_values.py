"""Bad command-line values (branch fuzz16): every sub-command's options were tried with 0, -1, 1e30,
nan, inf, a non-number and an empty string, the path options with a missing file, a folder, a
non-UTF-8 file, an empty file and an output under a file or in /proc, the choices and registry
names with unknown names (benchmarks/HISTORY.md, "Bad command-line values").

BROKEN: the cases that failed before this branch (a traceback, a message without the option, or
a value not checked at all); each must now end with exit code 2 and one line naming the option and
the value, no traceback, no output file. SAMPLE: a representative sample of the cases that were
already refused. The simulator's hang on a late start (a huge --alpha-s or --message-gap-s, or a
sub-byte flow) is the last test: it must finish, not be refused.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from lshsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
NCCL_LOG = str(ROOT / "tests" / "data" / "nccl_tests_alltoall_perf.txt")
TRACE = str(ROOT / "tests" / "data" / "validate" / "x2" / "gpu-uniform-d4096-t8k.json")
WORKLOAD = str(ROOT / "data" / "workloads" / "cal-uniform-d2048-t128.yaml")
CALIBRATE = ["calibrate", "--nccl-tests", NCCL_LOG, "--world-size", "4", "--out", "{OUT}.yaml"]

#: (argv, words the one line must hold); {OUT} is a path under tmp_path that must not be written
BROKEN = [
    # OverflowError traceback (int64 slots) before: the factor is now bounded by CAPACITY_FACTOR_MAX
    (["route", "--tokens", "64", "--d-model", "16", "--capacity-factor", "1e30"], ["--capacity-factor", "'1e30'"]),
    (["plan", "--capacity-factor", "1e30", "--plot", "{OUT}.png"], ["--capacity-factor", "'1e30'"]),
    (["capacity", "--tokens", "100", "--capacity-factor", "1e30", "--plot", "{OUT}.png"],
     ["--capacity-factor", "'1e30'"]),
    # before: a RuntimeWarning and "capacity=-9.2e+18 must be an integer >= 0", no option named
    (["capacity", "--tokens", "1e18", "--k", "16", "--plot", "{OUT}.png"], ["--tokens", "1000000000000000000"]),
    # before: a RuntimeWarning and "popularity=nan must be a finite number", no option named
    (["capacity", "--tokens", "100", "--skew", "1e30", "--plot", "{OUT}.png"], ["--skew", "1e+30"]),
    (["capacity", "--tokens", "100", "--skew", "1000", "--json"], ["--skew", "1000"]),
    # the output's new folders (out/result.png: out) were left behind, empty, by this refusal
    (["capacity", "--tokens", "100", "--skew", "1e30", "--plot", "{TMP}/a/b/c.png"], ["--skew", "1e+30"]),
    # before: not checked without --published (exit 0), and a tiny STEP built a grid of 6e8 points
    (["validate", TRACE, "--efficiency-grid", "abc", "--plot", "{OUT}.png"], ["--efficiency-grid", "'abc'"]),
    (["validate", TRACE, "--efficiency-grid", "", "--json"], ["--efficiency-grid", "''"]),
    (["validate", "--published", "--efficiency-grid", "0.4:1:1e-9"], ["--efficiency-grid", "'0.4:1:1e-9'",
                                                                        "600000001"]),
    # before: an empty DIR was read as the default, data/published/ (about 15 min of CPU)
    (["validate", "--published=", "--json"], ["--published", "''", "empty folder name"]),
    # before: --from-raw was ignored beside --nccl-tests (exit 0 with a missing file)
    ([*CALIBRATE, "--from-raw", "{TMP}/missing.json"], ["--from-raw", "--nccl-tests"]),
    # before: "Empty module name", a TypeError traceback, a SyntaxError traceback, "no such file" for a folder
    (["--plugin", "", "capacity", "--plot", "{OUT}.png"], ["--plugin", "''", "not a module name"]),
    (["--plugin", "..x", "capacity"], ["--plugin", "'..x'", "not a module name"]),
    (["--plugin", "{TMP}/bin.py", "capacity", "--plot", "{OUT}.png"], ["--plugin", "bin.py", "not a Python module"]),
    (["--plugin", "{TMP}/folder.py", "capacity"], ["--plugin", "folder.py", "is a folder"]),
    # before: "topology file '.' is a folder, not a file", neither the option nor the value named
    (["simulate", "--topology", "", "--traffic", "uniform:1MB"], ["--topology", "''", "empty name"]),
    (["plan", "--model", " ", "--plot", "{OUT}.png"], ["--model", "' '", "empty name"]),
    (["plan", "--cluster", ""], ["--cluster", "''", "empty name"]),
    (["validate", TRACE, "--topology", ""], ["--topology", "''", "empty name"]),
    # before: "--out : the table is CSV; give a .csv file"
    (["sweep", "bin.json", "--out", ""], ["--out", "''", "empty file name"]),
    # before: accepted, every case passed (exit 0)
    (["check", "--tolerance", "1e30", "--out", "{OUT}.json"], ["--tolerance", "'1e30'"]),
    # before: '' was the current folder, whose rank* files the launcher deletes as stale
    (["launch", "--nproc", "1", "--status-dir", "", "--", "check"], ["--status-dir", "''", "empty folder name"]),
    # before: "status folder '.../bin.py/status': Not a directory", the option not named
    (["launch", "--nproc", "1", "--status-dir", "{TMP}/bin.py/status", "--", "check"],
     ["--status-dir", "bin.py/status", "Not a directory"]),
    # before: an empty --out / --out-dir was read as none: the run went on and wrote no trace (exit 0)
    (["run", "--workload", WORKLOAD, "--out", ""], ["--out", "''", "empty file name"]),
    (["run", "--workload", WORKLOAD, "--out-dir", ""], ["--out-dir", "''", "empty folder name"]),
    # before: type=float took nan, inf and negatives
    ([*CALIBRATE, "--threshold-window", "nan"], ["--threshold-window", "'nan'"]),
    ([*CALIBRATE, "--threshold-window", "inf"], ["--threshold-window", "'inf'"]),
    ([*CALIBRATE, "--threshold-window", "-1"], ["--threshold-window", "'-1'"]),
    ([*CALIBRATE, "--threshold-window", "1e30"], ["--threshold-window", "'1e30'"]),
    # second bad-input round (branch robust): options that were silently ignored (exit 0)
    (["run", "--workload", WORKLOAD, "--out", "{OUT}.json", "--out-dir", "{TMP}/traces"],
     ["--out", "--out-dir", "give one"]),
    ([*CALIBRATE, "--iterations", "5"], ["--iterations 5", "measuring calibration"]),
    ([*CALIBRATE, "--phases", "all"], ["--phases a2a,expert,layers", "measuring calibration"]),
    ([*CALIBRATE, "--max-bytes", "1MB", "--device", "cpu"], ["--max-bytes 1000000, --device cpu", "leave them out"]),
    (["calibrate", "--device", "cpu", "--world-size", "4", "--out", "{OUT}.yaml"], ["--world-size 4", "files to fit"]),
    (["calibrate", "--device", "cpu", "--no-curve", "--out", "{OUT}.yaml"], ["--no-curve", "files to fit"]),
    # the same round's open items, closed after it: hash routed one choice whatever --k said, --no-capacity
    # dropped --capacity-factor, and capacity's drop options did nothing without --tokens (all exit 0)
    (["route", "--router", "hash", "--k", "4", "--tokens", "64", "--plot", "{OUT}.png"],
     ["--k 4", "'hash' always makes 1 choice"]),
    (["route", "--no-capacity", "--capacity-factor", "2", "--tokens", "64", "--plot", "{OUT}.png"],
     ["--capacity-factor 2 with --no-capacity"]),
    (["capacity", "--capacity-factor", "2", "--plot", "{OUT}.png"], ["--capacity-factor 2", "needs --tokens"]),
    (["capacity", "--skew", "1", "--sample", "3", "--json"], ["--skew 1, --sample 3", "needs --tokens"]),
    # branch robust3: "num_samples=1.0 must be an integer >= 2" after the exact estimates, no option named
    (["capacity", "--tokens", "100", "--sample", "1", "--plot", "{OUT}.png"], ["--sample 1", "S >= 2"]),
    # branch robust5: the known algorithms were listed without their aliases (deepep, 2d), which the help names
    (["plan", "--algorithm", "DeepEP", "--plot", "{OUT}.png"], ["algorithm='DeepEP'", "deepep = node_dedup"]),
    # branch robust5: unbounded (sweep --jobs stops at 4096); 99999 ran, exit 0
    (["validate", "--published", "--jobs", "99999", "--plot", "{OUT}.png"], ["--jobs", "'99999'", "4096"]),
]

SAMPLE = [
    (["route", "--k", ""], ["--k", "''"]),
    (["route", "--seed", "1e30"], ["--seed", "'1e30'"]),
    (["route", "--skew", "inf"], ["--skew", "'inf'"]),
    (["capacity", "--delta", "nan", "--plot", "{OUT}.png"], ["--delta", "'nan'"]),
    (["collision", "--cos", "1e30", "--plot", "{OUT}.png"], ["--cos", "'1e30'"]),
    (["collision", "--plot", "/proc/lshsim-no/o.png"], ["--plot", "/proc/lshsim-no"]),
    (["a2a-cost", "--bytes-per-rank", "abc", "--plot", "{OUT}.png"], ["--bytes-per-rank", "'abc'"]),
    (["a2a-cost", "--traffic", "bogus"], ["--traffic", "'bogus'"]),
    (["breakeven", "--compression", "-1", "--plot", "{OUT}.png"], ["--compression", "'-1'"]),
    (["simulate", "--topology", "h100-nvswitch", "--traffic", "uniform:1MB", "--chunks", "1e30"], ["--chunks"]),
    (["simulate", "--topology", "h100-nvswitch", "--traffic", "uniform:nan"], ["uniform:nan"]),
    (["simulate", "--topology", "bogus-name", "--traffic", "uniform:1MB"], ["bogus-name"]),
    (["plan", "--lsh-rate", "inf", "--trace", "{OUT}.json"], ["--lsh-rate", "'inf'"]),
    (["plan", "--tp", "0", "--chrome-trace", "{OUT}.json"], ["--tp", "'0'"]),
    (["plan", "--moe-layer", "bogus"], ["--moe-layer", "'bogus'"]),
    (["sweep", "{TMP}/missing.yaml", "--out", "{OUT}.csv"], ["missing.yaml"]),
    (["sweep", "g.yaml", "--jobs", "-1"], ["--jobs", "'-1'"]),
    (["reproduce", "--drain-tolerance", "nan", "--plot", "{OUT}.png"], ["--drain-tolerance", "'nan'"]),
    (["reproduce", "--paper", "bogus"], ["--paper", "'bogus'"]),
    (["validate", TRACE, "--jobs", "0"], ["--jobs", "'0'"]),
    (["validate", "--published", "--efficiency-grid", "nan:1:0.1"], ["--efficiency-grid", "'nan:1:0.1'"]),
    (["validate", "{TMP}/bin.json", "--plot", "{OUT}.png"], ["bin.json"]),
    (["run", "--workload", "w.yaml", "--max-wall-s", "inf", "--out", "{OUT}.json"], ["--max-wall-s", "'inf'"]),
    (["run", "--workload", "w.yaml", "--threads", "-1"], ["--threads", "'-1'"]),
    (["run", "--workload", "w.yaml", "--device", "bogus"], ["--device", "'bogus'"]),
    ([*CALIBRATE, "--world-size", "nan"], ["--world-size", "'nan'"]),
    ([*CALIBRATE, "--gpu", "bogus-name"], ["--gpu", "bogus-name"]),
    (["check", "--tolerance", "-1", "--out", "{OUT}.json"], ["--tolerance", "'-1'"]),
    (["check", "--seeds", "1e30"], ["--seeds", "1e30"]),
    (["launch", "--nproc", "1e30", "--", "check"], ["--nproc", "'1e30'"]),
    (["launch", "--nproc", "1", "--timeout-s", "nan", "--", "check"], ["--timeout-s", "'nan'"]),
]


@pytest.mark.parametrize("argv, words", [pytest.param(*case, id=" ".join(case[0])[:70]) for case in BROKEN]
                         + [pytest.param(*case, id="sample " + " ".join(case[0])[:63]) for case in SAMPLE])
def test_a_bad_value_is_one_line_and_exit_2(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("bin.json", "bin.py"):
        (tmp_path / name).write_bytes(b"\xff\xfe\x00\x81 not UTF-8\n")
    (tmp_path / "folder.py").mkdir()
    fill = {"{OUT}": str(tmp_path / "out" / "result"), "{TMP}": str(tmp_path)}
    argv = [next((arg.replace(key, value) for key, value in fill.items() if key in arg), arg) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    command = argv[2] if argv[0] == "--plugin" else argv[0]
    assert err.startswith(f"lshsim {command}: error: "), err
    for word in words:
        assert word in err, (word, err)
    # no output file, and no folder the output check made (a refusal removes it)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bin.json", "bin.py", "folder.py"], "an output"


@pytest.mark.parametrize("argv, name, value, words", [
    (["run", "--workload", WORKLOAD, "--out", "{OUT}.json"], "LOCAL_WORLD_SIZE", "abc", ["LOCAL_WORLD_SIZE='abc'"]),
    (["run", "--workload", WORKLOAD, "--out", "{OUT}.json"], "LOCAL_WORLD_SIZE", "0", ["LOCAL_WORLD_SIZE=0", ">= 1"]),
    (["calibrate", "--device", "cpu", "--out", "{OUT}.yaml"], "LOCAL_WORLD_SIZE", "1e3", ["LOCAL_WORLD_SIZE='1e3'"]),
])
def test_a_bad_environment_variable_is_named(argv, name, value, words, tmp_path, capsys, monkeypatch):
    """LOCAL_WORLD_SIZE (torchrun's, read for the memory estimate and the CPU threads) was read with int():
    'abc' gave "invalid literal for int() with base 10: 'abc'" without the variable, 0 and -4 were taken as 1."""
    monkeypatch.setenv(name, value)
    fill = {"{OUT}": str(tmp_path / "out" / "result")}
    argv = [next((arg.replace(key, v) for key, v in fill.items() if key in arg), arg) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(word in err for word in ["environment variable", *words]), err
    assert not list(tmp_path.iterdir()), "an output was left behind"


def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    """--device cuda where torch sees no CUDA device: the memory estimate asked the device for its size
    first (AssertionError "Torch not compiled with CUDA enabled", a traceback), before init_runtime's check."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    for argv in (["run", "--workload", WORKLOAD, "--device", "cuda", "--out", str(tmp_path / "o" / "t.json")],
                 ["calibrate", "--device", "cuda", "--out", str(tmp_path / "o" / "c.yaml")]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert "--device cuda: torch sees no CUDA device" in err, err
        assert not list(tmp_path.iterdir()), "an output was left behind"


def test_a_late_start_finishes_instead_of_spinning():
    """A flow that starts at t = 1e12 s (lshsim simulate --alpha-s 1e12) moves its last bytes in less
    than the clock's resolution there; the vectorised solver spun forever on the zero step."""
    from lshsim.sim.network import simulate_flows
    from lshsim.topology import build_topology

    graph = build_topology({"name": "pair", "gpu": "h100", "gpus_per_node": 2, "alpha_s": 0.0,
                            "intra": {"kind": "full_mesh", "per_link_Bps": 1e9, "latency_s": 1e-6}})
    for solver in ("vectorised", "incremental"):
        # an ordinary late start keeps its transfer time: 1e-6 latency + 3 B / 1e9 B/s. Run first, outside
        # the alarm: it also compiles the incremental solver's kernels (a fresh clone has no compiled cache,
        # and an alarm raised inside the compiler breaks it for the rest of the process)
        mid = simulate_flows(graph, [(0, 1, 1.0, 1e6), (1, 0, 3.0, 1e6)], solver=solver)
        assert mid.time_s == pytest.approx(1e6 + 1e-6 + 3e-9, abs=1e-9)
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("the solver spins")))
    signal.alarm(120)
    try:
        for solver in ("vectorised", "incremental"):
            late = simulate_flows(graph, [(0, 1, 1e-3, 1e12), (1, 0, 1.0, 1e12)], solver=solver)
            assert late.time_s == 1e12 and list(late.finish_s) == [1e12, 1e12]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_workload_the_world_cannot_run_is_refused_naming_its_file(tmp_path, capsys, monkeypatch):
    """robust4: `launch --nproc 2 -- run` of a workload with 3 experts ended "workload field 'num_experts': 3 is not
    divisible by the 2 ranks" from a rank, without the file; now every rank refuses it before the rendezvous,
    naming the file (WORLD_SIZE is what the launcher gives each rank)."""
    workload = tmp_path / "w.yaml"
    workload.write_text(Path(WORKLOAD).read_text().replace("num_experts: 8", "num_experts: 3"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as info:
        main(["run", "--workload", str(workload), "--out", str(tmp_path / "o" / "t.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert f"{workload}: workload field 'num_experts': 3 is not divisible by the 2 ranks" in err[0]
    assert not (tmp_path / "o").exists()
