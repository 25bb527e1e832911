"""Bad measured traces and calibration-from-traces inputs (branch tracefuzz): every field of a trace's
meta.measured and of its phase records, `calibrate --from-traces` / `--source` (a plugin's source too)
and `--phase-base` files were fed wrong types, 0, -1, nan, inf, 1e30, null, true, 10^12, typos and
broken whole files (benchmarks/HISTORY.md, "Bad measured traces").

Each case here failed before this branch: a traceback, a line without the field, or exit 0 with
garbage read (an hour-plus phase time fitted, a negative row count predicted). Each must now end with
exit code 2 and one line naming the file, the field and the value, and leave no output behind.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "data" / "measured" / "h200"
#: a 2-rank held-out trace with the records validate reads with a phase model (layer_s, rows_per_expert)
TRACE = json.loads((MEASURED / "run-k" / "traces-nvlink-x2" / "ho-h1-t6k-d1536-e12.json").read_text())
PHASE_TOPOLOGY = ROOT / "data" / "topologies" / "calibrated" / "h200-x2-phases-nvlink.yaml"
#: a 2-rank trace of the fp8 dispatch format (meta.measured.dispatch_bytes_per_row)
FP8_TRACE = json.loads((MEASURED / "run-s" / "traces" / "fmt-direct-fp8.json").read_text())
CAL = MEASURED / "run-h" / "cal-x2"
RAW_NVLINK = MEASURED / "run-m" / "cal-nvlink-raw.json"
RAW_X1 = MEASURED / "run-m" / "cal-x1-raw.json"


def _edit(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


M = ("meta", "measured")
#: (id, base trace, field path, value, words of the line); before: TB a traceback, NF no field, 0 exit 0
TRACE_CASES = [
    ("rows_per_expert text (TB)", TRACE, M + ("rows_per_expert",), "abc", ["meta.measured.rows_per_expert='abc'"]),
    ("rows_per_expert rank 0 a number (TB)", TRACE, M + ("rows_per_expert", 0), 0,
     ["meta.measured.rows_per_expert[0]=0", "6 local experts"]),
    ("rows_per_expert entry null (TB)", TRACE, M + ("rows_per_expert", 0, 0), None,
     ["meta.measured.rows_per_expert[0][0]=None"]),
    ("rows_per_expert entry -1 (0)", TRACE, M + ("rows_per_expert", 0, 0), -1,
     ["meta.measured.rows_per_expert[0][0]=-1", "integer >= 0"]),
    ("rows_per_expert entry 10^12 (0)", TRACE, M + ("rows_per_expert", 0, 0), 10 ** 12,
     ["meta.measured.rows_per_expert[0]=", "more than the 12178 rows rank 0 received"]),
    ("rows_per_expert one expert (0)", TRACE, M + ("rows_per_expert", 0), [1], ["rows_per_expert[0]=[1]"]),
    ("layer_s a number (TB)", TRACE, M + ("layer_s",), -1, ["meta.measured.layer_s=-1", "mapping"]),
    ("layer_s.forward text (NF)", TRACE, M + ("layer_s", "forward"), "abc", ["meta.measured.layer_s.forward='abc'"]),
    ("layer_s.backward null (TB)", TRACE, M + ("layer_s", "backward"), None, ["meta.measured.layer_s.backward=None"]),
    ("layer_s.total 0 (0)", TRACE, M + ("layer_s", "total"), 0, ["meta.measured.layer_s.total=0"]),
    ("layer_s without times (0)", TRACE, M + ("layer_s",), {"a": 1}, ["meta.measured.layer_s.forward is missing"]),
    ("phases_s time 1e30 (0)", TRACE, M + ("phases_s", "forward", "dispatch_a2a"), 1e30,
     ["meta.measured.phases_s.forward.dispatch_a2a=1e+30", "<= 3600"]),
    ("phases_s time 10^12 (0)", TRACE, M + ("phases_s", "backward", "expert"), 10 ** 12,
     ["meta.measured.phases_s.backward.expert=1000000000000"]),
    ("phase record name a list (TB)", TRACE, ("phases", 0, "name"), [1], ["phases[0]: name=[1]"]),
    ("dispatch_bytes_per_row null (TB)", FP8_TRACE, M + ("dispatch_bytes_per_row",), None,
     ["meta.measured.dispatch_bytes_per_row=None"]),
    ("dispatch_bytes_per_row 0 (0)", FP8_TRACE, M + ("dispatch_bytes_per_row",), 0,
     ["meta.measured.dispatch_bytes_per_row=0"]),
    ("dispatch_bytes_per_row -1 (0)", FP8_TRACE, M + ("dispatch_bytes_per_row",), -1,
     ["meta.measured.dispatch_bytes_per_row=-1"]),
]


@pytest.mark.parametrize("base, path, value, words", [pytest.param(*case[1:], id=case[0]) for case in TRACE_CASES])
def test_a_bad_trace_field_is_one_line_and_exit_2(base, path, value, words, tmp_path, refused):
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(_edit(base, path, value)))
    argv = ["validate", str(trace), "--json", "--plot", str(tmp_path / "out" / "p.png")]
    if base is TRACE:
        argv += ["--topology", str(PHASE_TOPOLOGY)]
    refused(argv, "t.json", words)


def test_calibrate_from_traces_refuses_an_hour_plus_all_to_all(tmp_path, refused):
    """Exit 0 before: a dispatch all-to-all of 1e30 s was fitted (alpha 1e30 s); nothing is written now."""
    trace = json.loads((CAL / "cal-uniform-d2048-t4096.json").read_text())
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_edit(trace, M + ("phases_s", "forward", "dispatch_a2a"), 1e30)))
    out = tmp_path / "out"
    refused(["calibrate", "--from-traces", str(path), str(CAL / "cal-uniform-d2048-t1024.json"),
             "--out", str(out / "t.yaml"), "--raw", str(out / "t.json"), "--quiet"], "t.json",
            ["meta.measured.phases_s.forward.dispatch_a2a=1e+30"])


def test_a_plugin_sources_hour_plus_time_is_refused(tmp_path, refused, monkeypatch):
    """Exit 0 before: a plugin source's all-to-all of 1e30 s became a point of the fit (every source's
    A2APoint is now at most an hour, as the shipped sources' times are)."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    from plugins import toy_calibration_source

    csv = tmp_path / "a2a.csv"
    csv.write_text("bytes_per_rank,time_s\n65536,1e30\n" + "".join(f"{2 ** k},{2e-5 + 2 ** k / 3e11:.6g}\n"
                                                                   for k in range(18, 31, 2)))
    out = tmp_path / "out"
    try:
        refused(["--plugin", "plugins.toy_calibration_source", "calibrate", "--source", "csv-a2a", str(csv),
                 "--source-option", "world_size=2", "--gpu", "h200", "--out", str(out / "t.yaml"),
                 "--raw", str(out / "t.json"), "--quiet"], "a2a.csv", ["a2a.csv:2", "1e30"])
    finally:
        toy_calibration_source.unregister()


P = ("results", "phases")
#: (id, field path in the --phase-base raw JSON, value, words); before: WF the line named the other file
#: (the calibration's, not the base's) and no field, TB a traceback, 0 exit 0
PHASE_BASE_CASES = [
    ("layer workload text (WF)", P + ("layers", 0, "workload"), "abc", ["results.phases.layers[0].workload='abc'"]),
    ("layer workload d_model missing (WF)", P + ("layers", 0, "workload", "d_model"), "<missing>",
     ["results.phases.layers[0].workload.d_model is missing"]),
    ("layer workload d_model 0 (TB)", P + ("layers", 0, "workload", "d_model"), 0,
     ["results.phases.layers[0].workload.d_model=0"]),
    ("layer workload tokens_per_rank -1 (0)", P + ("layers", 0, "workload", "tokens_per_rank"), -1,
     ["results.phases.layers[0].workload.tokens_per_rank=-1"]),
    ("layer phases_s text (TB)", P + ("layers", 0, "phases_s"), "abc", ["results.phases.layers[0].phases_s='abc'"]),
    ("layer phases_s direction typo (0)", P + ("layers", 0, "phases_s"), {"forwardd": {"gate": 1e-4}},
     ["results.phases.layers[0].phases_s: 'forwardd' is not a direction"]),
    ("layer phase time 1e30 (0)", P + ("layers", 0, "phases_s", "forward", "expert"), 1e30,
     ["results.phases.layers[0].phases_s.forward.expert=1e+30", "<= 3600"]),
    ("layer layer_s.forward missing (WF)", P + ("layers", 0, "layer_s", "forward"), "<missing>",
     ["results.phases.layers[0].layer_s.forward is missing"]),
    ("layer rows_per_expert -1 (0)", P + ("layers", 0, "rows_per_expert", 0, 0), -1,
     ["results.phases.layers[0].rows_per_expert[0][0]=-1"]),
    ("layer rows_per_expert of one expert (0)", P + ("layers", 0, "rows_per_expert", 0), [1],
     ["results.phases.layers[0].rows_per_expert=", "(4 each: num_experts 8 / 2)"]),
    ("layers 0 (0)", P + ("layers",), 0, ["results.phases.layers=0 must be a list"]),
    ("results text (TB)", ("results",), "abc", ["results.phases is missing"]),
]


@pytest.mark.parametrize("path, value, words", [pytest.param(*case[1:], id=case[0]) for case in PHASE_BASE_CASES])
def test_a_bad_phase_base_file_is_named_with_its_field(path, value, words, tmp_path, refused):
    raw = json.loads(RAW_NVLINK.read_text())
    if value == "<missing>":
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    else:
        raw = _edit(raw, path, value)
    base = tmp_path / "base.json"
    base.write_text(json.dumps(raw))
    out = tmp_path / "out"
    refused(["calibrate", "--source", "microbenchmarks", str(MEASURED / "run-m" / "cal-shm-raw.json"),
             "--phase-base", str(base), str(RAW_X1), "--out", str(out / "t.yaml"), "--raw", str(out / "t.json"),
             "--quiet"], "base.json", words)


def test_calibrate_from_traces_refuses_one_trace_given_twice(tmp_path, refused, monkeypatch):
    """Exit 0 before: a trace named twice (or under two names) counted its all-to-alls twice in the fit."""
    path = tmp_path / "t.json"
    path.write_text((CAL / "cal-uniform-d2048-t4096.json").read_text())
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    refused(["calibrate", "--from-traces", str(path), "./t.json", str(CAL / "cal-uniform-d2048-t1024.json"),
             "--out", str(out / "t.yaml"), "--quiet"], "t.json", ["the trace is given twice"])


def test_a_plugin_sources_file_that_is_not_utf8_is_named(tmp_path, refused, monkeypatch):
    """Before: "'utf-8' codec can't decode byte 0xff in position 0", no file named (the plugin opens it)."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    from plugins import toy_calibration_source

    csv = tmp_path / "a2a.csv"
    csv.write_bytes(b"\xff\xfe,\n")
    out = tmp_path / "out"
    try:
        refused(["--plugin", "plugins.toy_calibration_source", "calibrate", "--source", "csv-a2a", str(csv),
                 "--source-option", "world_size=2", "--gpu", "h200", "--out", str(out / "t.yaml"), "--quiet"], "a2a.csv", ["calibration source 'csv-a2a'", "a2a.csv: not UTF-8 text (byte 0)"])
    finally:
        toy_calibration_source.unregister()
