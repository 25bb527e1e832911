"""`lshsim sweep`: rows equal to `lshsim plan`'s, a bad point kept as a row, resume after an
interruption, the Dask engine on a local cluster, the local process pool, grid errors, plots."""
from __future__ import annotations

import csv
import json

import pytest

import lshsim.sweep
from lshsim.cli import main
from lshsim.sweep import RUN_COLUMNS
from lshsim.topology.spec import read_spec
from lshsim.readers import dump_yaml
from test_cli_plan import TINY_YAML, V100  # the plan tests' tiny model; V100: 16 GPUs, 2 nodes x 8

GRID = """\
name: tiny-grid
grid:
  model: tiny.yaml
  cluster: {cluster}
  nodes: {nodes}
  nic_gbps: [100, 400]
  tokens_per_gpu: 256
options: [baseline, lsh, 2d]
"""


def _grid(tmp_path, nodes="[1, 2]", cluster=V100, text=None) -> str:
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    path = tmp_path / "grid.yaml"
    path.write_text(text if text is not None else GRID.format(nodes=nodes, cluster=cluster))
    return str(path)


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _stable(rows: list[dict]) -> list[dict]:
    """The rows without the columns that time or place the work."""
    return [{k: v for k, v in row.items() if k not in RUN_COLUMNS} for row in rows]


def _spy(monkeypatch, calls: list) -> None:
    """Count the points evaluated (their keys into `calls`)."""
    real = lshsim.sweep.evaluate_point
    monkeypatch.setattr(lshsim.sweep, "evaluate_point",
                        lambda task, *rest: calls.append(task["key"]) or real(task, *rest))


def _sweep(tmp_path, capsys, *extra, grid=None, out="r.csv") -> list[dict]:
    table = tmp_path / out
    assert main(["sweep", grid or _grid(tmp_path), "--out", str(table), "--jobs", "0", *extra]) == 0
    capsys.readouterr()
    return _rows(table)


def test_rows_equal_plan_on_the_same_cluster(tmp_path, capsys):
    rows = _sweep(tmp_path, capsys)
    assert len(rows) == 4 * 3 and [row["option"] for row in rows[:3]] == ["baseline", "lsh", "2d"]
    assert [(row["nodes"], row["nic_gbps"]) for row in rows[::3]] == [("1", "100"), ("1", "400"),
                                                                       ("2", "100"), ("2", "400")]
    # the independent reference: `lshsim plan --json` on a topology file written with the point's values
    spec, _ = read_spec(V100)
    spec["inter"]["nic_gbps"] = 400
    (tmp_path / "v100-400.yaml").write_text(dump_yaml(spec))
    assert main(["plan", "--model", str(tmp_path / "tiny.yaml"), "--cluster", str(tmp_path / "v100-400.yaml"),
                 "--tokens-per-gpu", "256", "--json"]) == 0
    plan = {row["label"].split()[0]: row for row in json.loads(capsys.readouterr().out)["options"]}
    point = [row for row in rows if row["nodes"] == "2" and row["nic_gbps"] == "400"]
    for row in point:
        b = plan[row["option"]]["breakdown"]
        assert float(row["step_s"]) == pytest.approx(b["step_s"], rel=1e-12)
        assert float(row["a2a_share"]) == pytest.approx(b["a2a_share"], rel=1e-12)
        assert float(row["speedup"]) == pytest.approx(plan[row["option"]]["speedup"], rel=1e-12)
        assert row["gpus"] == "16" and row["fidelity"] == "exact" and row["error"] == ""
        assert float(row["wall_s"]) >= 0 and float(row["point_wall_s"]) >= float(row["wall_s"])
    # the NIC rate matters between nodes only
    one_node = [row for row in rows if row["nodes"] == "1" and row["option"] == "baseline"]
    assert one_node[0]["step_s"] == one_node[1]["step_s"]
    two = {row["nic_gbps"]: float(row["step_s"]) for row in rows if row["nodes"] == "2" and row["option"] == "baseline"}
    assert two["400"] < two["100"]


def test_a_bad_point_is_a_row_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch):
    rows = _sweep(tmp_path, capsys, grid=_grid(tmp_path, nodes="[2, 4]"))   # 16 experts on 32 GPUs: refused
    failed = [row for row in rows if row["error"]]
    assert {row["nodes"] for row in failed} == {"4"} and len(failed) == 2 * 3
    assert all("num_experts=16" in row["error"] and row["step_s"] == "" for row in failed)
    assert [row["option"] for row in failed[:3]] == ["baseline", "lsh", "2d"]
    assert all(row["step_s"] and not row["error"] for row in rows if row["nodes"] == "2")
    # a rerun skips every point, failed ones included; --retry-errors runs the failed ones again
    calls = []
    _spy(monkeypatch, calls)
    assert _stable(_sweep(tmp_path, capsys, grid=str(tmp_path / "grid.yaml"))) == _stable(rows)
    assert calls == []
    assert _stable(_sweep(tmp_path, capsys, "--retry-errors", grid=str(tmp_path / "grid.yaml"))) == _stable(rows)
    assert sorted(key[2] for key in calls) == ["4", "4"]


def test_a_sweep_whose_every_point_failed_exits_1(tmp_path, capsys):
    """Every point refused (16 experts on 32 GPUs): exit 0 and an empty plot before (branch robust), so a
    script took a table of errors for results. Now exit 1, one line naming the grid, no plot; the table of
    errors stays (it is whole: --retry-errors runs them again)."""
    grid = _grid(tmp_path, nodes="[4]")
    table, plot = tmp_path / "r.csv", tmp_path / "p.png"
    assert main(["sweep", grid, "--out", str(table), "--jobs", "0", "--quiet", "--plot", str(plot)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"every point of {grid} failed" in err and "num_experts=16" in err, err
    assert not plot.exists() and all(row["error"] for row in _rows(table)) and len(_rows(table)) == 2 * 3


def test_an_lsh_rate_axis_keeps_the_lsh_option(tmp_path, capsys):
    """A grid's lsh_rate makes the point's own option ("yours") the same config as "lsh": the duplicate
    was dropped under "yours" first, then "yours" was not among options [baseline, lsh], so the lsh rows
    were lost, exit 0 (branch robust3). Now the options asked for are chosen before duplicates go."""
    text = GRID.format(nodes="[1]", cluster=V100).replace("nic_gbps: [100, 400]", "lsh_rate: [0.1, 0.3]") \
        .replace("options: [baseline, lsh, 2d]", "options: [baseline, lsh]")
    rows = _sweep(tmp_path, capsys, grid=_grid(tmp_path, text=text))
    assert [(row["lsh_rate"], row["option"]) for row in rows] == [("0.1", "baseline"), ("0.1", "lsh"),
                                                                   ("0.3", "baseline"), ("0.3", "lsh")]
    assert [row["description"] for row in rows if row["option"] == "lsh"] == ["topk + lsh 0.1, direct",
                                                                              "topk + lsh 0.3, direct"]
    from lshsim.sim.moe_step import StepConfig, plan_options

    both = plan_options(StepConfig(lsh_rate=0.1),
                        keep=lambda label: lshsim.sweep._short(label) in ("baseline", "yours", "lsh"))
    assert [label for label, _ in both] == ["baseline", "yours: topk + lsh 0.1, direct"]    # one row for one config


def test_resume_after_an_interruption_equals_an_uninterrupted_sweep(tmp_path, capsys, monkeypatch):
    grid = _grid(tmp_path)
    whole = _sweep(tmp_path, capsys, grid=grid, out="whole.csv")
    real = lshsim.sweep.evaluate_point
    calls = []

    def interrupted(task, *rest):
        if len(calls) == 2:
            raise KeyboardInterrupt             # Ctrl-C during the third point
        calls.append(task["key"])
        return real(task, *rest)

    monkeypatch.setattr(lshsim.sweep, "evaluate_point", interrupted)
    table = tmp_path / "part.csv"
    assert main(["sweep", grid, "--out", str(table), "--jobs", "0"]) == 130
    assert "interrupted: 2 of 4 points" in capsys.readouterr().err
    assert _stable(_rows(table)) == _stable(whole[:6])
    # a kill in the middle of a write: half of the third point's first row, no newline
    partial = (tmp_path / "whole.csv").read_text().splitlines(keepends=True)[7]
    with open(table, "a") as handle:
        handle.write(partial[:len(partial) // 2])
    monkeypatch.setattr(lshsim.sweep, "evaluate_point", real)
    calls = []
    _spy(monkeypatch, calls)
    assert main(["sweep", grid, "--out", str(table), "--jobs", "0"]) == 0
    err = capsys.readouterr().err
    assert "2 of 4 points done" in err and "cut last line" in err and f"wrote {table}" in err
    assert len(calls) == 2                      # only the two points not in the table
    assert _stable(_rows(table)) == _stable(whole)


def test_dask_engine_on_a_local_cluster_equals_local(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    grid = _grid(tmp_path)
    local = _sweep(tmp_path, capsys, grid=grid, out="local.csv")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        table = tmp_path / "dask.csv"
        assert main(["sweep", grid, "--out", str(table), "--engine", "dask", "--scheduler",
                     cluster.scheduler_address, "--json"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["engine"] == "dask" and summary["run"] == 4 and summary["failed"] == 0
    assert "engine dask" in out.err and "4/4" in out.err
    assert _stable(_rows(table)) == _stable(local)


def test_bad_scheduler_address_is_one_line(tmp_path, capsys):
    pytest.importorskip("distributed")
    with pytest.raises(SystemExit) as info:
        main(["sweep", _grid(tmp_path), "--out", str(tmp_path / "r.csv"), "--engine", "dask",
              "--scheduler", "tcp://127.0.0.1:1", "--quiet"])
    assert info.value.code == 2
    assert "--scheduler tcp://127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_dask_engine_without_dask_says_which_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)     # import distributed -> ImportError
    with pytest.raises(SystemExit) as info:
        main(["sweep", _grid(tmp_path), "--out", str(tmp_path / "r.csv"), "--engine", "dask"])
    assert info.value.code == 2
    assert "lshsim[dask]" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.slow  # two spawned worker processes import torch: about 14 s on a loaded 2-core machine
def test_local_process_pool_equals_in_process(tmp_path, capsys):
    grid = _grid(tmp_path, text=GRID.format(nodes="2", cluster=V100))
    inline = _sweep(tmp_path, capsys, grid=grid, out="inline.csv")
    pooled = tmp_path / "pool.csv"
    assert main(["sweep", grid, "--out", str(pooled), "--jobs", "2"]) == 0
    assert "(2 jobs)" in capsys.readouterr().err
    rows = _rows(pooled)
    assert _stable(rows) == _stable(inline)
    assert len({row["worker"] for row in rows}) >= 1 and all(row["worker"] for row in rows)


@pytest.mark.parametrize("text, expected", [
    ("grid: {model: tiny.yaml, cluster: %s, nic_gbps: [100, -5]}" % V100, ["grid.yaml", "grid.nic_gbps[1]", "-5"]),
    ("grid: {model: tiny.yaml, cluster: %s, fabric: 3}" % V100, ["grid.yaml", "grid.fabric", "nic_gbps"]),
    ("grid: {model: gpt-3, cluster: %s}" % V100, ["grid.yaml", "grid.model", "gpt-3", "gpt-moe-15b"]),
    ("grid: {model: tiny.yaml, cluster: [%s, my-laptop]}" % V100, ["grid.cluster[1]", "my-laptop"]),
    ("grid: {model: tiny.yaml}", ["grid.yaml", "grid.cluster is required"]),
    ("grid: {model: tiny.yaml, cluster: %s, capacity_factor: [1.0, 0]}" % V100,
     ["grid.capacity_factor[1]=0", "capacity_factor"]),
    ("grid: {model: tiny.yaml, cluster: %s}\noptions: [baseline, ring]" % V100, ["options[1]='ring'", "groupwise"]),
    ("grid: {model: tiny.yaml, cluster: %s, nodes: [2, 2]}" % V100, ["grid.nodes", "twice"]),
    ("grids: {}", ["grid.yaml", "'grids'"]),
])
def test_grid_errors_name_file_field_and_value(tmp_path, capsys, text, expected):
    table = tmp_path / "r.csv"
    with pytest.raises(SystemExit) as info:
        main(["sweep", _grid(tmp_path, text=text), "--out", str(table)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lshsim sweep: error: ") and err.count("\n") == 1
    for part in expected:
        assert part in err
    assert not table.exists()                  # nothing written


def test_a_table_of_another_grid_is_refused(tmp_path, capsys):
    table = tmp_path / "r.csv"
    table.write_text("model,cluster,step_s\nx,y,1\n")
    with pytest.raises(SystemExit) as info:
        main(["sweep", _grid(tmp_path), "--out", str(table)])
    assert info.value.code == 2
    assert str(table) in capsys.readouterr().err
    assert table.read_text() == "model,cluster,step_s\nx,y,1\n"


def test_plot_written_without_switching_the_backend(tmp_path, capsys):
    import matplotlib

    backend = matplotlib.rcParams._get_backend_or_none()
    png = tmp_path / "sweep.png"
    _sweep(tmp_path, capsys, "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert matplotlib.rcParams._get_backend_or_none() == backend


def test_quiet_text_output_names_the_table_and_the_plot(tmp_path, capsys):
    """`sweep --quiet --plot P` wrote P and said nothing of it (its `wrote` line was a progress line only,
    README audit of 2026-12-03): the text output names the plot on stdout beside the table."""
    table, png = tmp_path / "r.csv", tmp_path / "sweep.png"
    assert main(["sweep", _grid(tmp_path), "--out", str(table), "--jobs", "0", "--quiet", "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert png.is_file() and captured.err == ""
    assert f"table: {table}" in captured.out and f"plot: {png}" in captured.out.splitlines()[-1]


def test_the_shipped_grid_loads():
    from lshsim.models import load_model

    grid = lshsim.sweep.load_grid("data/sweeps/nic-vs-size.yaml", resolve_model=load_model)
    assert len(grid.points()) == 21 and grid.swept == ["nodes", "nic_gbps"]
    assert grid.options == ("baseline", "lsh", "locmoe", "2d", "groupwise", "overlap")


@pytest.mark.slow  # two `python -m lshsim.cli` processes (imports: a few seconds each on 2 loaded cores)
def test_a_killed_sweep_resumes_to_the_uninterrupted_table(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys

    grid = _grid(tmp_path, text=GRID.format(nodes="[1, 2]", cluster=V100).replace("[100, 400]", "[50, 100, 200, 400]"))
    whole = _sweep(tmp_path, capsys, grid=grid, out="whole.csv")
    assert len(whole) == 8 * 3
    table = tmp_path / "killed.csv"
    command = [sys.executable, "-m", "lshsim.cli", "sweep", grid, "--out", str(table), "--jobs", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in process.stderr:                # SIGKILL (no clean-up at all) once the first point is written
        if "] 1/8 " in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL
    done = _rows(table)
    assert 3 <= len(done) < 8 * 3               # killed midway, the points written so far kept
    resumed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {table}" in resumed.stderr
    assert _stable(_rows(table)) == _stable(whole)


@pytest.mark.slow  # a `python -m lshsim.cli sweep --jobs 2` process and its two spawned workers (torch imports)
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_a_terminated_sweep_leaves_no_worker_behind(tmp_path):
    """SIGTERM to `lshsim sweep --jobs 2` ends it without clean-up; its spawned pool workers used to stay
    behind for good (idle, waiting on the dead sweep's queue). They end with it now."""
    import os
    import subprocess
    import sys

    from conftest import assert_workers_end_with, children, kill_leftovers

    grid = _grid(tmp_path, text=GRID.format(nodes="[1, 2]", cluster=V100).replace("[100, 400]", "[25, 50, 100, 200, 400]"))
    command = [sys.executable, "-m", "lshsim.cli", "sweep", grid, "--out", str(tmp_path / "t.csv"), "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    workers: set[int] = set()
    try:
        for line in process.stderr:            # the pool is up once the first point is done
            if "] 1/10 " in line:
                workers = children(process.pid)
                break
        assert len(workers) >= 2, workers      # the two workers (and multiprocessing's resource tracker)
        assert_workers_end_with(process, workers, "sweep")
    finally:
        kill_leftovers(process, workers)
