"""`executor calibrate` and the library it calls (lshsim.calibration): the nccl-tests source, the
alpha-beta fit and the topology it writes."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from lshsim.calibration import (A2APoint, calibrated_topology_spec, fit_alpha_beta, gpu_key, parse_nccl_tests,
                                read_traces)
from lshsim.executor.calibrate import calibrate_command, sweep_sizes
from lshsim.topology import load_topology

DATA = Path(__file__).resolve().parent / "data"


def test_parse_nccl_tests_sample_and_fit_recovers_the_model():
    run = parse_nccl_tests((DATA / "nccl_tests_alltoall_perf.txt").read_text())
    assert run.world_size == 4  # four "# Rank" lines
    assert [p.bytes_per_rank for p in run.points] == [1024 * 4 ** i for i in range(11)]
    assert run.columns[:5] == ["size", "count", "type", "redop", "root"]
    fit = fit_alpha_beta(run.points)
    # the sample follows t = 20 us + S / 300 GB/s up to nccl-tests' 0.01 us rounding
    assert fit.alpha_s == pytest.approx(20e-6, rel=1e-3)
    assert fit.bandwidth_Bps == pytest.approx(300e9, rel=1e-3)
    assert fit.max_rel_residual < 1e-3


def test_a_multi_node_log_is_refused_rather_than_calibrated_as_one_node(tmp_path, capsys):
    """A log whose '# Rank' lines name two hosts used to become a one-node NVSwitch topology whose NVLink ran at the
    network's rate (a garbage calibration, written without a word). The parser records the hosts; the nccl-tests
    source refuses such a log naming the file, the ranks and the hosts, and the command writes nothing."""
    from lshsim.calibration import read_nccl_tests
    from lshsim.cli import main

    sample = (DATA / "nccl_tests_alltoall_perf.txt").read_text()
    assert parse_nccl_tests(sample).hosts == ("node01",)
    two = sample.replace("on     node01 device  2", "on     node02 device  0").replace(
        "on     node01 device  3", "on     node02 device  1")
    assert parse_nccl_tests(two).hosts == ("node01", "node02")
    log = tmp_path / "two-nodes.txt"
    log.write_text(two)
    with pytest.raises(ValueError, match=r"two-nodes.txt: the log's 4 ranks run on 2 hosts \(node01, node02\): the "
                                         r"nccl-tests source calibrates the NVLink of one node.*--cluster"):
        read_nccl_tests([log])
    out = tmp_path / "t.yaml"
    with pytest.raises(SystemExit) as info:
        main(["calibrate", "--nccl-tests", str(log), "--out", str(out), "--quiet"])
    assert info.value.code == 2 and "run on 2 hosts (node01, node02)" in capsys.readouterr().err
    assert not out.exists()


def test_parse_older_format_without_redop_and_root():
    text = "\n".join([
        "# nThread 1 nGpus 8 minBytes 8 maxBytes 1024 step: 2(factor) warmup iters: 5 iters: 20 validation: 1",
        "#       size         count      type     time   algbw   busbw  error     time   algbw   busbw  error",
        "#        (B)    (elements)              (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)",
        "        1024           256     float    30.00    0.03    0.03  0e+00    30.00    0.03    0.03  0e+00",
        "        2048           512     float    31.00    0.07    0.06  0e+00    31.00    0.07    0.06  0e+00",
    ])
    run = parse_nccl_tests(text)
    assert run.world_size == 8  # from nGpus, no "# Rank" lines
    assert [p.bytes_per_rank for p in run.points] == [1024, 2048]
    assert [p.time_s for p in run.points] == pytest.approx([30e-6, 31e-6])
    assert parse_nccl_tests(text, world_size=16).world_size == 16   # two processes of 8 GPUs
    with pytest.raises(ValueError, match=r"world_size=2 \(--world-size\) contradicts the log's first line"):
        parse_nccl_tests(text, world_size=2)                          # one process drove 8 GPUs: 8 ranks or more


def test_parser_errors():
    with pytest.raises(ValueError, match="no nccl-tests header"):
        parse_nccl_tests("hello\n1 2 3\n")
    with pytest.raises(ValueError, match="no data rows"):
        parse_nccl_tests("#  size  count  type  time  algbw  busbw\n# Rank 0\n# Rank 1\n")
    with pytest.raises(ValueError, match="number of ranks"):
        parse_nccl_tests("#  size  count  type  time  algbw  busbw\n 1024 256 float 3.0 0.1 0.1\n")


def test_logs_of_other_collectives_and_of_two_runs_are_refused(tmp_path, capsys):
    """robust4: an all_reduce_perf / all_gather_perf log (the same columns) and two runs pasted into one file were
    fitted as an all-to-all (exit 0); each is refused naming the file and the line, before any file is written."""
    from lshsim.cli import main

    sample = (DATA / "nccl_tests_alltoall_perf.txt").read_text()
    assert parse_nccl_tests("# Collective test starting: alltoall_perf\n" + sample).world_size == 4
    reduction = sample.replace("none      -1", "sum      -1")
    with pytest.raises(ValueError, match=r"log:14: redop='sum': an all-to-all reduces nothing"):
        parse_nccl_tests(reduction, source="log")
    with pytest.raises(ValueError, match=r"log:1: the log is a run of all_gather_perf, not alltoall_perf"):
        parse_nccl_tests("# Collective test starting: all_gather_perf\n" + sample, source="log")
    with pytest.raises(ValueError, match=r"log:\d+: a second nccl-tests header row \(the first at line 12\)"):
        parse_nccl_tests(sample + sample, source="log")
    rows = sample.splitlines()
    last = max(i for i, row in enumerate(rows) if row.strip().startswith("1073741824"))
    repeated = "\n".join(rows[:last + 1] + [rows[last].replace("2704.35", "27043.50")] + rows[last + 1:])
    with pytest.raises(ValueError, match=rf"log:{last + 2}: size=1073741824 is given twice \(first at line {last + 1}\)"):
        parse_nccl_tests(repeated, source="log")
    for name, text in (("reduce.log", reduction), ("twice.log", sample + sample)):
        log = tmp_path / name
        log.write_text(text)
        out = tmp_path / "o"
        with pytest.raises(SystemExit) as info:
            main(["calibrate", "--nccl-tests", str(log), "--out", str(out / "t.yaml"), "--raw", str(out / "r.json")])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(log) in err[0] and not out.exists()


def test_a_rank_line_given_twice_or_missing_is_refused():
    """robust5: a log whose '# Rank 3' line was pasted over rank 4's (or lost) was read as a run of that many ranks
    (exit 0); the rank numbers must be 0 .. n - 1, each once."""
    sample = (DATA / "nccl_tests_alltoall_perf.txt").read_text()
    twice = sample.replace("#  Rank  3 Group  0 Pid  12003", "#  Rank  2 Group  0 Pid  12003")
    with pytest.raises(ValueError, match=r"log:9: '# Rank 2' is given twice \(first at line 8\): one run"):
        parse_nccl_tests(twice, source="log")
    lost = "\n".join(row for row in sample.splitlines() if "Rank  1 Group" not in row)
    with pytest.raises(ValueError, match=r"log: the log's 3 '# Rank' lines skip rank 1 \(they number up to 3\)"):
        parse_nccl_tests(lost, source="log")
    assert parse_nccl_tests(sample).world_size == 4


def test_fit_is_relative_least_squares_and_refuses_nonsense():
    rng = np.random.default_rng(0)
    points = [A2APoint(m, (50e-6 + m * 0.5 / 200e9) * (1 + 0.01 * rng.standard_normal()), 2)
              for m in [2 ** k for k in range(12, 31)]]
    fit = fit_alpha_beta(points)
    assert fit.alpha_s == pytest.approx(50e-6, rel=0.05) and fit.bandwidth_Bps == pytest.approx(200e9, rel=0.05)
    big_only = fit_alpha_beta(points, min_bytes=2 ** 24)
    assert big_only.points_used == 7
    with pytest.raises(ValueError, match="at least 2"):
        fit_alpha_beta(points[:1])
    with pytest.raises(ValueError, match="not positive"):
        fit_alpha_beta([A2APoint(1024, 2e-3, 2), A2APoint(2 ** 20, 1e-3, 2), A2APoint(2 ** 22, 1e-4, 2)])


def _relative_least_squares(points, alpha_free: bool):
    """The fit's stated objective, sum_i ((alpha + S_i / B - t_i) / t_i)^2, minimised by scipy's
    least_squares (an iterative solver, independent of the fit's normal equations)."""
    from scipy.optimize import least_squares

    s = np.array([p.offdiag_bytes for p in points])
    t = np.array([p.time_s for p in points])
    scale = float(np.median(s / t))                                    # x = [alpha / t_med, scale / B]
    t_med = float(np.median(t))
    if alpha_free:
        res = least_squares(lambda x: (x[0] * t_med + s * x[1] / scale - t) / t, [0.0, 1.0], xtol=1e-15, ftol=1e-15)
        return res.x[0] * t_med, scale / res.x[1]
    res = least_squares(lambda x: (s * x[0] / scale - t) / t, [1.0], xtol=1e-15, ftol=1e-15)
    return 0.0, scale / res.x[0]


def test_fit_alpha_beta_minimises_the_relative_residuals():
    """fit_alpha_beta against scipy's least_squares on its stated objective: noisy points (alpha free),
    and times that grow faster than linearly, where the free fit's alpha is negative and the fit
    refits the bandwidth alone with alpha 0 (tolerance 1e-6: the solver's convergence)."""
    rng = np.random.default_rng(5)
    sizes = [2 ** k for k in range(12, 31, 2)]
    noisy = [A2APoint(m, (40e-6 + m * 0.75 / 250e9) * (1 + 0.05 * rng.standard_normal()), 4) for m in sizes]
    fit = fit_alpha_beta(noisy)
    alpha, bandwidth = _relative_least_squares(noisy, alpha_free=True)
    assert alpha > 0 and fit.alpha_s == pytest.approx(alpha, rel=1e-6)
    assert fit.bandwidth_Bps == pytest.approx(bandwidth, rel=1e-6)
    convex = [A2APoint(m, 1e-3 * (m * 0.75 / 1e9) ** 1.3, 4) for m in sizes]
    free_alpha, _ = _relative_least_squares(convex, alpha_free=True)
    assert free_alpha < 0                                              # the branch under test is taken
    fit = fit_alpha_beta(convex)
    _, bandwidth = _relative_least_squares(convex, alpha_free=False)
    assert fit.alpha_s == 0.0 and fit.bandwidth_Bps == pytest.approx(bandwidth, rel=1e-6)
    s = np.array([p.offdiag_bytes for p in convex])
    t = np.array([p.time_s for p in convex])
    assert fit.max_rel_residual == pytest.approx(float(np.abs((s / fit.bandwidth_Bps - t) / t).max()), rel=1e-9)


def test_sweep_sizes_and_gpu_key():
    assert sweep_sizes(4096, 2 ** 30, 4)[-1] == 2 ** 30 and len(sweep_sizes(4096, 2 ** 30, 4)) == 19
    assert all(s % 3 == 0 for s in sweep_sizes(4096, 2 ** 20, 3))
    assert gpu_key("NVIDIA H200") == "h200" and gpu_key("NVIDIA H100 80GB HBM3") == "h100" and gpu_key(None) is None
    with pytest.raises(ValueError, match="steps_per_octave"):
        sweep_sizes(4096, 8192, 2, steps_per_octave=0)


def test_topology_spec_loads_in_the_simulator(tmp_path):
    from lshsim.topology import write_topology_yaml

    fit = fit_alpha_beta([A2APoint(m, 30e-6 + m * 0.75 / 310e9, 4) for m in (2 ** 20, 2 ** 26, 2 ** 30)])
    path = write_topology_yaml(calibrated_topology_spec("h200-x4-test", 4, gpu="NVIDIA H200", alpha_beta=fit,
                                                        expert_flops=7e14, hbm_Bps=4e12, provenance={"tool": "test"}),
                               tmp_path / "t.yaml")
    G = load_topology(path)
    assert G.graph["alpha_s"] == pytest.approx(30e-6)
    assert G.graph["gpu"]["achieved_flops"] == 7e14 and G.graph["gpu"]["achieved_hbm_Bps"] == 4e12
    assert G.edges["n0.gpu0", "n0.nvswitch"]["bandwidth_Bps"] == pytest.approx(310e9)
    cpu = load_topology(write_topology_yaml(calibrated_topology_spec("cpu-x4", 4, gpu=None, alpha_beta=fit,
                                                                     expert_flops=7e14, hbm_Bps=4e12),
                                            tmp_path / "c.yaml"))
    assert cpu.graph["gpu"]["name"] == "cpu"


def test_calibrate_command_from_nccl_tests_and_from_raw(tmp_path, capsys):
    args = argparse.Namespace(nccl_tests=str(DATA / "nccl_tests_alltoall_perf.txt"), from_raw=None, from_traces=None,
                              world_size=None,
                              gpu="h100", fit_min_bytes=0, name=None, raw=str(tmp_path / "raw.json"),
                              out=str(tmp_path / "topo.yaml"))
    assert calibrate_command(args) == 0
    G = load_topology(tmp_path / "topo.yaml")
    assert G.graph["name"] == "h100-x4-calibrated" and G.graph["alpha_s"] == pytest.approx(20e-6, rel=1e-3)
    assert "fit: alpha 20.00 us, B 300.0 GB/s" in capsys.readouterr().out
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["fit"]["points_used"] == 11
    args.nccl_tests, args.from_raw, args.out, args.fit_min_bytes = None, str(tmp_path / "raw.json"), str(tmp_path / "t2.yaml"), 2 ** 20
    assert calibrate_command(args) == 0
    assert load_topology(tmp_path / "t2.yaml").graph["calibration"]["provenance"]["fit"]["points_used"] == 6


def test_in_situ_fit_from_the_committed_calibration_traces(tmp_path):
    """`--from-traces` on the H200 calibration workloads (tests/data/calibration/h200-x4-alpha-beta)."""
    traces = sorted(str(p) for p in (DATA / "calibration" / "h200-x4-alpha-beta").glob("*.json"))
    assert len(traces) == 9
    points = read_traces(traces, split_skewed=False).points
    assert len(points) == 4 * 9 and {p.world_size for p in points} == {4}
    args = argparse.Namespace(nccl_tests=None, from_raw=None, from_traces=traces, world_size=None, gpu=None,
                              fit_min_bytes=0, name="t", raw=None, out=str(tmp_path / "t.yaml"), no_curve=True)
    assert calibrate_command(args) == 0
    G = load_topology(tmp_path / "t.yaml")
    assert G.graph["link_models"]["nvlink"].busbw_curve is None  # --no-curve: the (alpha, B) fit alone
    assert 1e-5 < G.graph["alpha_s"] < 1e-3
    assert 1e11 < G.edges["n0.gpu0", "n0.nvswitch"]["bandwidth_Bps"] < 4.5e11
    with pytest.raises(ValueError, match="not a measured executor trace|meta"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"schema": "lshsim.trace/1", "meta": {"source": "simulated", "workload": {},
                                                                          "cluster": {}, "provenance": {}},
                                   "phases": []}))
        read_traces([str(bad)], split_skewed=False)


def test_calibrate_plot_draws_the_measured_bus_bandwidth_and_the_fit(tmp_path, monkeypatch, capsys):
    """`calibrate --plot`: the measured points are nccl-tests' own busbw column (out-of-place, 4 ranks),
    the (alpha, B) fit's points S / (20 us + S / 300 GB/s); the PNG is written whole."""
    from lshsim.cli import _render
    from lshsim.cli import main

    nccl = str(DATA / "nccl_tests_alltoall_perf.txt")
    seen = {}
    monkeypatch.setattr(_render, "line_plot", lambda path, data, *args, **kw: seen.update(path=path, data=data))
    assert main(["calibrate", "--nccl-tests", nccl, "--gpu", "h100", "--plot", str(tmp_path / "a.png")]) == 0
    data = seen["data"]
    rows = [line.split() for line in open(nccl) if line.strip() and not line.lstrip().startswith("#")]
    busbw = {int(r[0]): float(r[7]) for r in rows}  # size (B) -> out-of-place busbw (GB/s), 2 decimals
    measured = [(b, y) for b, y, w in zip(data["bytes per rank"], data["GB/s"], data["what"]) if w == "measured"]
    assert len(measured) == len(busbw) == 11
    for size, gbps in measured:
        assert gbps == pytest.approx(busbw[size], abs=0.011, rel=2e-3)
    fitted = [(b, y) for b, y, w in zip(data["bytes per rank"], data["GB/s"], data["what"]) if w == "(alpha, B) fit"]
    for size, gbps in fitted:
        s = size * 3 / 4
        assert gbps == pytest.approx(s / (20e-6 + s / 300e9) / 1e9, rel=2e-3)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["calibrate", "--nccl-tests", nccl, "--gpu", "h100", "--plot", str(tmp_path / "p" / "b.png")]) == 0
    assert (tmp_path / "p" / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {tmp_path / 'p' / 'b.png'}" in capsys.readouterr().out


def test_calibrate_plot_refused_before_any_work(tmp_path, capsys):
    from lshsim.cli import main

    nccl = str(DATA / "nccl_tests_alltoall_perf.txt")
    (tmp_path / "file").write_text("x")
    for argv, words in ((["--plot", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "t.yaml")],
                         "--out and --plot name the same file"),
                        (["--plot", str(tmp_path / "file" / "p.png")], "--plot")):
        with pytest.raises(SystemExit) as info:
            main(["calibrate", "--nccl-tests", nccl, "--gpu", "h100", *argv])
        assert info.value.code == 2 and words in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
