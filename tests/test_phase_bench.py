"""`executor calibrate --phases` (executor/phase_bench.py) on CPU: the expert grid's memory cap, the
calibration workloads, the three timing conventions on one process, and one 2-rank gloo run whose
raw JSON and topology the phase model reads."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
import yaml

from lshsim.calibration.phase_model import CONVENTIONS, PhaseModel
from lshsim.executor import phase_bench
from lshsim.executor.phase_bench import (CALIBRATION_WORKLOADS, EXPERT_GRID, EXPERT_GRID_CPU, calibration_workloads,
                                         expert_grid_points, measure_a2a_conventions, measure_phases,
                                         time_conventions)
from lshsim.executor.workload import WorkloadConfig
from lshsim.topology import build_topology, load_topology

CPU = torch.device("cpu")
AXES = ("experts", "rows_per_expert", "d_model", "d_ffn")


def _expected_points(grid: dict, cap: int) -> list[tuple]:
    return [p for p in itertools.product(*(grid[a] for a in AXES)) if p[0] * p[1] * max(p[2], p[3]) <= cap]


def test_expert_grid_points_respect_the_memory_cap(monkeypatch):
    points = expert_grid_points()
    cap = phase_bench._EXPERT_MAX_ELEMENTS
    assert points == _expected_points(EXPERT_GRID, cap)
    assert all(e * r * max(d, f) <= cap for e, r, d, f in points)
    assert (1, 64, 1024, 1024) in points and (16, 16384, 8192, 16384) in points   # 2^32 elements: it fits
    big = {"experts": (16, 64), "rows_per_expert": (16384, 65536), "d_model": (8192,), "d_ffn": (16384,)}
    assert expert_grid_points(big) == [(16, 16384, 8192, 16384)]             # 2^34 and more are left out
    assert expert_grid_points(EXPERT_GRID_CPU) == list(itertools.product(*(EXPERT_GRID_CPU[a] for a in AXES)))
    monkeypatch.setattr(phase_bench, "_EXPERT_MAX_ELEMENTS", 4 * 64 * 128)
    small = expert_grid_points(EXPERT_GRID_CPU)
    assert small == _expected_points(EXPERT_GRID_CPU, 4 * 64 * 128)
    assert (4, 64, 128, 256) not in small and (4, 64, 128, 64) in small


@pytest.mark.parametrize("world", [1, 2, 4])
def test_calibration_workloads_small(world):
    workloads = calibration_workloads(world, small=True)
    assert len(workloads) == len(CALIBRATION_WORKLOADS)
    for workload, (suffix, fields) in zip(workloads, CALIBRATION_WORKLOADS):
        assert isinstance(workload, WorkloadConfig)
        assert workload.name == f"phase-cal-{suffix}" and workload.role == "calibration"
        assert workload.num_experts % world == 0 and workload.num_experts >= fields["num_experts"]
        assert workload.num_experts - fields["num_experts"] < world          # rounded up, not more
        for key in ("tokens_per_rank", "d_model", "d_ffn"):
            assert getattr(workload, key) == max(64, fields[key] // 16)
        assert (workload.lsh is not None) == ("lsh" in fields)
    full = calibration_workloads(2)
    assert [w.tokens_per_rank for w in full] == [f["tokens_per_rank"] for _, f in CALIBRATION_WORKLOADS]


def test_time_conventions_on_one_process():
    assert not torch.distributed.is_initialized()
    src, dst = torch.arange(4096, dtype=torch.float32), torch.empty(4096)
    out = time_conventions(lambda: dst.copy_(src), CPU, iterations=3, warmup=1)
    assert set(out) == set(CONVENTIONS) | {"back_to_back_calls"}
    assert all(out[c] > 0 for c in CONVENTIONS)
    assert 2 <= out["back_to_back_calls"] <= 50
    assert torch.equal(dst, src)
    device_only = time_conventions(lambda: dst.copy_(src), CPU, iterations=1, warmup=0, conventions=("device",))
    assert set(device_only) == {"device"}


def test_measure_a2a_conventions_on_one_process():
    records = measure_a2a_conventions(CPU, [8192, 16384], iterations=1, warmup=0)
    assert [(r["bytes_per_rank"], r["aligned"]) for r in records] == [(8192, True), (8194, False), (16384, True),
                                                                      (16386, False)]
    for record in records:
        assert record["world_size"] == 1 and all(record[c] > 0 for c in CONVENTIONS)
    with pytest.raises(ValueError, match="phase parts"):
        measure_phases(None, [8192], parts=("a2a", "attention"))


@pytest.mark.distributed
@pytest.mark.slow   # about 15 s on 2 CPU cores: 12 sizes x 2 alignments + 2 mostly-diagonal x 3 conventions, a 16-point expert grid
def test_calibrate_phases_on_two_gloo_ranks(tmp_path):
    from lshsim.executor.launch import launch

    raw, out = tmp_path / "raw.json", tmp_path / "topo.yaml"
    result = launch(2, ["calibrate", "--device", "cpu", "--min-bytes", "64KiB", "--max-bytes", "4MiB",
                        "--iterations", "2", "--warmup", "1", "--ffn-d-model", "128", "--ffn-tokens", "128",
                        "--phases", "a2a,expert", "--raw", str(raw), "--out", str(out), "--threads", "1"],
                    timeout_s=120)
    assert result.exit_code == 0, result.message
    phases = json.loads(raw.read_text())["results"]["phases"]
    assert phases["parts"] == ["a2a", "expert"] and "layers" not in phases
    a2a = phases["a2a"]
    assert {r["aligned"] for r in a2a} == {True, False} and len(a2a) >= 4
    for record in a2a:
        assert record["world_size"] == 2 and all(record[c] > 0 for c in CONVENTIONS)
        assert record["back_to_back_calls"] >= 2
    aligned = {r["bytes_per_rank"] for r in a2a if r["aligned"] and not r.get("self")}
    mostly_local = [r for r in a2a if r.get("self")]          # the self-chunk cases: 1 MiB (4 MiB > the largest size)
    assert [r["bytes_per_rank"] for r in mostly_local] == [2 ** 20]
    assert all(r["local_bytes"] == r["bytes_per_rank"] - 65536 for r in mostly_local)
    assert {r["bytes_per_rank"] - 4 for r in a2a if not r["aligned"]} == aligned      # chunks 2 bytes longer
    grid = {(p["experts"], p["rows_per_expert"], p["d_model"], p["d_ffn"]) for p in phases["expert"]}
    assert grid == set(expert_grid_points(EXPERT_GRID_CPU))                  # every point, from both ranks
    assert all(p["forward_s"] > 0 and p["backward_s"] > 0 for p in phases["expert"])
    spec = yaml.safe_load(out.read_text())
    block = spec["calibration"]["phase_model"]
    assert block["transport"] == "nvlink" and set(block["a2a_excess_s"]) == {"as_run", "back_to_back"}
    pm = build_topology(spec, source=out.name).graph["phase_model"]
    assert isinstance(pm, PhaseModel) and pm.expert is not None and pm.unaligned is not None
    assert [m for m, _ in pm.excess_as_run] == sorted(aligned)
    assert [m for m, _ in pm.self_copy] == [r["local_bytes"] for r in mostly_local]
    assert len(pm.expert.to_points()) == len(grid)
    assert load_topology(out).graph["gpus_per_node"] == 2
