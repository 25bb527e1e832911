"""bench_moe_layer's second timing convention, behind a busy GPU (issue 11): what the CPU can check.

The spin kernel itself needs CUDA; here: the options parse, the CPU refuses them with a message
that says why, `run_workload` refuses a hold on the CPU and records 0 without one, and the two
conventions' table arithmetic.
"""
from __future__ import annotations

import argparse

import pytest

from benchmarks import bench_moe_layer as bench
from lshsim.dispatch import RouterConfig
from lshsim.executor.run import run_workload
from lshsim.executor.runtime import init_runtime, shutdown
from lshsim.executor.workload import WorkloadConfig


def test_busy_cycles_parse():
    assert bench.parse_cycles("1000000") == [1_000_000]
    assert bench.parse_cycles("1e6,4000000") == [1_000_000, 4_000_000]
    for bad in ("", "0", "-5", "abc"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_cycles(bad)


def test_behind_busy_gpu_refused_on_cpu(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu", "--shapes", "tiny", "--behind-busy-gpu"])
    assert exc.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_busy_cycles_need_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu", "--shapes", "tiny", "--busy-cycles", "2000000"])
    assert exc.value.code == 2
    assert "--busy-cycles needs --behind-busy-gpu" in capsys.readouterr().err


def test_run_workload_hold_refused_on_cpu_and_recorded():
    workload = WorkloadConfig(name="tiny", tokens_per_rank=64, d_model=32, d_ffn=64, num_experts=4,
                              router=RouterConfig("topk", k=2, capacity_factor=1.25), iterations=2, warmup=1,
                              backward=False)
    runtime = init_runtime("cpu")
    try:
        with pytest.raises(ValueError, match="needs a CUDA device"):
            run_workload(workload, runtime, hold_gpu_cycles=1000)
        with pytest.raises(ValueError, match=">= 0"):
            run_workload(workload, runtime, hold_gpu_cycles=-1)
        trace = run_workload(workload, runtime)
        assert trace.meta["measured"]["hold_gpu_cycles"] == 0
    finally:
        shutdown()


def _result(forward_gate, gate_s, forward_rest, cycles=0, start=None):
    return {"workload": {"name": "s"}, "world_size": 1, "forward_s": gate_s + forward_rest,
            "hold_gpu_cycles": cycles, "gate_start_s": start,
            "phases": [{"phase": "gate", "direction": "forward", "measured_s": gate_s},
                       {"phase": "expert", "direction": "forward", "measured_s": forward_rest}]}


def test_gate_conventions_arithmetic():
    idle = _result(None, 80e-6, 400e-6)
    busy = _result(None, 30e-6, 400e-6, cycles=1_000_000, start=2e-6)
    row = bench.gate_conventions(idle, [busy])
    assert row["idle"]["gate_share"] == pytest.approx(80 / 480)
    held = row["busy"][0]
    assert held["cycles"] == 1_000_000 and held["gate_start_after_spin_s"] == 2e-6
    assert held["gate_share"] == pytest.approx(30 / 430)
    assert held["launch_share_of_gate"] == pytest.approx(50 / 80)


def test_print_conventions(capsys):
    idle = _result(None, 80e-6, 400e-6)
    rows = [bench.gate_conventions(idle, [_result(None, 30e-6, 400e-6, cycles=1_000_000, start=2e-6),
                                          _result(None, 28e-6, 400e-6, cycles=4_000_000, start=None)])]
    bench.print_conventions(rows, {1_000_000: 5e-4, 4_000_000: 2e-3})
    out = capsys.readouterr().out
    assert "busy(1e+06)" in out and "busy(4e+06)" in out and "spin 1000000 cycles: 500.0 us" in out
    assert "16.7%" in out and "62.5%" in out and "nan" in out
