"""Progress lines on stderr (`lshsim.cli._progress`): `--json` stays clean on stdout, the lines and the
`wrote FILE` line go to stderr, `--quiet` silences them (simulate, executor run and calibrate)."""
from __future__ import annotations

import argparse
import doctest
import io
import json
import re
from pathlib import Path

import pytest

import lshsim.cli._progress
from lshsim.cli import main
from lshsim.cli._progress import ProgressLines

LINE = re.compile(r"^\[ *\d+\.\d s\] [a-z0-9 /]+: ")
DATA = Path(__file__).parent / "data"

TINY = """\
name: tiny
tokens_per_rank: 32
d_model: 16
d_ffn: 16
num_experts: 2
warmup: 1
iterations: 2
router: {name: topk, k: 2, capacity_factor: null}
lsh: {family: hyperplane, num_hashes: 2}
"""


def test_doctests():
    assert doctest.testmod(lshsim.cli._progress).failed == 0


def _lines(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(LINE.match(line) for line in lines), lines
    return lines


def test_simulate_json_stdout_clean_start_and_end_on_stderr(capsys):
    assert main(["simulate", "--topology", "lshmoe-v100-2x8", "--traffic", "uniform:64MB", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["world"] == 16
    lines = _lines(captured.err)
    assert len(lines) == 2
    assert "simulate: direct all-to-all on lshmoe-v100-2x8 (16 GPUs, 240 rank pairs" in lines[0]
    assert lines[0].endswith("simulating") and "simulated in " in lines[1] and "predicted time" in lines[1]
    assert main(["simulate", "--topology", "lshmoe-v100-2x8", "--traffic", "uniform:64MB", "--json", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.fixture
def one_rank(monkeypatch):
    """An in-process executor run (world size 1), torch's thread count restored afterwards."""
    import torch

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_executor_run_progress_on_stderr_and_wrote_line(tmp_path, capsys, one_rank):
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "traces" / "t.json"
    assert main(["run", "--workload", str(tmp_path / "tiny.yaml"), "--out", str(out), "--device", "cpu",
                 "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("workload tiny: 1 ranks x 32 tokens") and "[" not in captured.out
    lines = _lines(captured.err)
    assert "run: workload tiny: 1 ranks x 32 tokens, d_model 16, 2 experts" in lines[0]
    assert "1 warm-up + 2 iterations" in lines[0]
    assert any("run: workload tiny: 3 iterations done in" in line for line in lines)
    assert lines[-1].endswith(f"run: wrote {out}") and json.loads(out.read_text())["meta"]["source"] == "measured"
    assert main(["run", "--workload", str(tmp_path / "tiny.yaml"), "--out", str(out), "--device", "cpu",
                 "--threads", "1", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_run_workload_iteration_lines_with_an_estimate():
    from lshsim.dispatch import RouterConfig
    from lshsim.executor.run import run_workload
    from lshsim.executor.runtime import Runtime
    from lshsim.executor.workload import WorkloadConfig
    import torch

    workload = WorkloadConfig(name="tiny", tokens_per_rank=32, d_model=16, d_ffn=16, num_experts=2,
                              router=RouterConfig("topk", k=2, capacity_factor=None), iterations=3, warmup=1)
    stream = io.StringIO()
    run_workload(workload, Runtime(0, 1, 0, torch.device("cpu"), None),
                 report=ProgressLines("run", interval_s=0.0, stream=stream))
    lines = _lines(stream.getvalue())
    iterations = [line for line in lines if ": iteration " in line]
    assert [line.split(": iteration ")[1].split(" ")[0] for line in iterations] == ["2/4", "3/4", "4/4"]
    assert "(warm-up)" not in iterations[0] and "(measured)" in iterations[0]
    assert all(re.search(r", about \d+\.\d s left$", line) for line in iterations)


def test_calibrate_wrote_lines_and_measure_on_cpu(tmp_path, capsys):
    from lshsim.executor.calibrate import calibrate_command, measure
    import torch

    args = argparse.Namespace(nccl_tests=str(DATA / "nccl_tests_alltoall_perf.txt"), from_raw=None, from_traces=None,
                              world_size=None, gpu="h100", fit_min_bytes=0, name=None, raw=str(tmp_path / "raw.json"),
                              out=str(tmp_path / "topo.yaml"))
    assert calibrate_command(args) == 0
    captured = capsys.readouterr()
    assert "fit: alpha" in captured.out and "calibrate: wrote" not in captured.out
    assert [line.split("] ")[1] for line in _lines(captured.err)] == [
        f"calibrate: wrote {tmp_path / 'raw.json'}", f"calibrate: wrote {tmp_path / 'topo.yaml'}"]
    args.quiet = True
    assert calibrate_command(args) == 0
    assert capsys.readouterr().err == ""
    # measured on the CPU, world size 1 (no sweep): a line per benchmark
    stream = io.StringIO()
    results = measure(torch.device("cpu"), iterations=1, warmup=0, ffn_d_model=16, ffn_tokens=32,
                      report=ProgressLines("calibrate", stream=stream))
    assert results["ffn"] is not None
    lines = _lines(stream.getvalue())
    assert "calibrate: expert FFN rate: 32 tokens x d_model 16 on cpu" in lines[0]
    assert "copy bandwidth" in lines[1]
