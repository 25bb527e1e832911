"""Bad input files (branch fuzzfiles): every file a command reads was fed an empty file, a non-UTF-8
file, a folder, bad syntax, a top level of the wrong type, each field missing or of the wrong type
or 0, -1, nan, inf, 1e30, typos of field names, duplicate keys, and (logs) truncated or garbage
lines (benchmarks/HISTORY.md, "Bad input files").

Each case here failed before this branch: exit 0 with a garbage input accepted (a calibration
fitted on one size, on times that do not grow with the size or on rows nccl-tests marked wrong, a
typo of a field silently ignored), or a refusal that left an output behind or did not name the
file. Each must now end with exit code 2 and one line naming the file, the field and the value,
and leave no output file and no folder the output checks made.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from lshsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
NCCL_LOG = (ROOT / "tests" / "data" / "nccl_tests_alltoall_perf.txt").read_text()
RAW = json.loads((ROOT / "data" / "measured" / "h200" / "run-a" / "calibration-x2.json").read_text())
_LINES = NCCL_LOG.splitlines()
_ROWS = [i for i, line in enumerate(_LINES) if line.strip() and not line.strip().startswith("#")]


def _rows(edit) -> str:
    """The nccl-tests log with each data row `line` replaced by edit(k, line) (None: dropped)."""
    out = []
    for i, line in enumerate(_LINES):
        if i in _ROWS:
            line = edit(_ROWS.index(i), line)
            if line is None:
                continue
        out.append(line)
    return "\n".join(out) + "\n"


def _time(line: str, value: str) -> str:
    """A row with its out-of-place time (the column after root, -1) set to `value`."""
    return re.sub(r"(\s-1\s+)(\S+)", lambda m: m.group(1) + value, line, count=1)


def _raw(edit) -> str:
    raw = json.loads(json.dumps(RAW))
    edit(raw)
    return json.dumps(raw)


def _set(path, value):
    def edit(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _rename(path, new):
    def edit(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[new] = node.pop(path[-1])
    return edit


NCCL = ["calibrate", "--nccl-tests", "{FILE}", "--out", "{OUT}.yaml", "--raw", "{OUT}.json"]
FROM_RAW = ["calibrate", "--from-raw", "{FILE}", "--out", "{OUT}.yaml", "--raw", "{OUT}.json"]

#: (id, file name, text, argv, words the one line must hold besides the file's name)
BROKEN = [
    # exit 0 before: two rows of one size fitted alpha 5e-16 s and a bandwidth from one point (then refused by the
    # fit, "2 different all-to-all sizes"; since robust4 by the parser: one run times each size once)
    ("nccl one size twice", "a2a.log", "\n".join(_LINES[:_ROWS[0]] + [_LINES[_ROWS[4]]] * 2) + "\n", NCCL,
     ["size=262144 is given twice"]),
    # exit 0 before: constant times fitted a bandwidth of 1.7e29 B/s (the fitted 1/B is 0 up to rounding:
    # a tiny positive or a non-positive value by the installed numpy's LAPACK; both refused, the number not asked)
    ("nccl constant times", "a2a.log", _rows(lambda k, line: _time(line, "20.00")), NCCL,
     ["the times do not grow with the size"]),
    # exit 0 before: a time of 1e30 us (or 1e300 on every row: alpha 1e294 s)
    ("nccl time 1e30", "a2a.log", _rows(lambda k, line: _time(line, "1e30") if k == 2 else line), NCCL,
     ["a2a.log:16", "time='1e30'", "one hour"]),
    ("nccl times 1e300", "a2a.log", _rows(lambda k, line: _time(line, "1e300")), NCCL, ["time='1e300'"]),
    # exit 0 before: a size of 1e40 bytes
    ("nccl size 1e40", "a2a.log", _rows(lambda k, line: line.replace("16384", "1" + "0" * 40, 1) if k == 2 else line),
     NCCL, ["size=1" + "0" * 40, "2**64"]),
    # exit 0 before: a row whose data nccl-tests found wrong (#wrong 5) was fitted
    ("nccl #wrong", "a2a.log", _rows(lambda k, line: re.sub(r"\s0(\s+\S+\s+\S+\s+\S+\s+)0\s*$", r" 5\g<1>5", line)
                                     if k == 2 else line), NCCL, ["#wrong=5", "size 16384"]),
    # the --raw JSON was left behind by this refusal, and the line did not name the log
    ("nccl one row", "a2a.log", _rows(lambda k, line: line if k == 4 else None), NCCL, ["at least 2", "got 1"]),
    ("nccl times fall", "a2a.log", _rows(lambda k, line: _time(line, f"{1000 / (k + 1):.2f}")), NCCL,
     ["the fitted bandwidth is not positive"]),
    # exit 0 before: a typo of a field was ignored (the all-to-alls silently dropped)
    ("raw results.a2ax", "raw.json", _raw(_rename(["results", "a2a"], "a2ax")), FROM_RAW,
     ["results.a2ax", "did you mean a2a?"]),
    ("raw resultz", "raw.json", _raw(lambda raw: raw.update(resultz=1)), FROM_RAW, ["resultz=1", "did you mean results?"]),
    # exit 0 before: an all-to-all of 1e30 s, a send of 1e30 s
    ("raw a2a time 1e30", "raw.json", _raw(_set(["results", "a2a", 0, "time_s"], 1e30)), FROM_RAW,
     ["results.a2a[0].time_s=1e+30", "<= 3600"]),
    ("raw p2p time 1e30", "raw.json", _raw(_set(["results", "p2p", 0, "time_s"], 1e30)), FROM_RAW,
     ["results.p2p[0].time_s=1e+30", "<= 3600"]),
    # exit 0 before: every all-to-all of one size
    ("raw one size", "raw.json", _raw(lambda raw: [point.update(bytes_per_rank=4608) for point in raw["results"]["a2a"]]),
     FROM_RAW, ["2 different all-to-all sizes", "4608"]),
]


WORKLOAD = (ROOT / "data" / "workloads" / "cal-uniform-d2048-t128.yaml").read_text()
DEEPSEEK = (ROOT / "models" / "configs" / "deepseek-v3.yaml").read_text()
HF = (ROOT / "tests" / "data" / "hf" / "mixtral-8x7b.json").read_text()
FIGURES = (ROOT / "data" / "papers" / "figures.yaml").read_text()
PUBLISHED = (ROOT / "data" / "published" / "nccl-aws-p5-alltoall.yaml").read_text()
RUN = ["run", "--workload", "{FILE}", "--device", "cpu", "--out", "{OUT}.json"]
PLAN_MODEL = ["plan", "--model", "{FILE}", "--router", "model", "--cluster", "h100-ib-rail-8x8", "--tokens-per-gpu",
              "64", "--fidelity", "estimate", "--json", "--plot", "{OUT}.png"]


def _sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


#: the readers of workloads, models, figures and published cases (checked before any work starts)
BROKEN += [
    # tracebacks before: TypeError (unhashable), OverflowError (int64 slots), RuntimeError (torch.topk),
    # RuntimeError (an allocation of 1.6e16 bytes) and, for proj_dim 1e6, an hour of hashing
    ("list alltoall", "w.yaml", _sub(WORKLOAD, "alltoall: direct", "alltoall: [1]"), RUN, ["'alltoall'", "[1]"]),
    ("capacity_factor 1e30", "w.yaml", _sub(WORKLOAD, "capacity_factor: 1.25", "capacity_factor: 1.0e+30"), RUN,
     ["router.capacity_factor", "1e+30", "<= 1e+06"]),
    ("k above experts", "w.yaml", _sub(WORKLOAD, "k: 2,", "k: 100,"), RUN, ["router.k", "100", "num_experts=8"]),
    ("num_hashes 1e12", "w.yaml", _sub(WORKLOAD, "lsh: null", "lsh: {num_hashes: 1000000000000}"), RUN,
     ["lsh.num_hashes", "1000000000000", "64"]),
    ("proj_dim 1e6", "w.yaml", _sub(WORKLOAD, "lsh: null", "lsh: {proj_dim: 1000000}"), RUN,
     ["lsh.proj_dim", "1000000", "d_model=2048"]),
    # exit 0 before (plan --router model ignored the option until routing, then no file named)
    ("max_nodes text", "m.yaml", _sub(DEEPSEEK, "router_options: {max_nodes: 4}", "router_options: {max_nodes: abc}"),
     PLAN_MODEL, ["max_nodes='abc'", "must be an integer"]),
    ("max_nodes 1e30", "m.yaml", _sub(DEEPSEEK, "router_options: {max_nodes: 4}", "router_options: {max_nodes: 1.0e+30}"),
     PLAN_MODEL, ["max_nodes=1e+30", "must be an integer"]),
    # refused only at the first routing, without the file's name, before RouterSpec.check_options
    ("max_nodes 0", "m.yaml", _sub(DEEPSEEK, "router_options: {max_nodes: 4}", "router_options: {max_nodes: 0}"),
     PLAN_MODEL, ["m.yaml", "max_nodes=0", "must be >= 1"]),
    ("scores_per_node -1", "m.yaml", _sub(DEEPSEEK, "router_options: {max_nodes: 4}",
                                          "router_options: {max_nodes: 4, scores_per_node: -1}"),
     PLAN_MODEL, ["m.yaml", "scores_per_node=-1", "must be >= 0"]),
    # TypeError traceback before
    ("hf model_type list", "config.json", _sub(HF, '"model_type": "mixtral"', '"model_type": ["mixtral"]'), PLAN_MODEL,
     ["model_type=['mixtral']", "supported"]),
    ("figure paper list", "f.yaml", _sub(FIGURES, "    paper: lsh-moe\n", "    paper: [lsh-moe]\n"),
     ["reproduce", "--figures", "{FILE}", "--json", "--plot", "{OUT}.png"], ["figures[0]", "paper=['lsh-moe']"]),
]

#: second bad-input round (branch robust): a fit that passed its own checks gave a topology past lshsim.bounds,
#: refused only when the topology was written, after --raw: the raw JSON was left behind, the line named the
#: output (c.yaml), not the file read
BROKEN += [
    ("zig-zag times", "a.log", _rows(lambda k, line: _time(line, "20.00" if k % 2 else "2000.00")), NCCL,
     ["a.log", "calibration.nvlink_Bps", "is above 1e+14 B/s"]),
    ("times 1e9 too short", "a.log", _rows(lambda k, line: _time(line, f"{float(line.split()[5]) * 1e-9:.3e}")), NCCL,
     ["a.log", "calibration.nvlink_Bps", "is above 1e+14 B/s"]),
    ("raw zig-zag", "r.json", _raw(lambda raw: (raw["results"].pop("a2a_pow2", None), raw["results"].update(
        a2a=[dict(e, time_s=1e-5 if i % 2 else 1e-1) for i, e in enumerate(raw["results"]["a2a"])]))), FROM_RAW,
     ["r.json", "calibration.nvlink_Bps", "is above 1e+14 B/s"]),
]

#: the common loaders (lshsim.readers), every YAML and JSON reader: a RecursionError traceback (YAML nested
#: 100,000 deep) and Python's 4,300-digit integer limit without the file (branch robust)
BROKEN += [
    ("yaml nested too deeply", "t.yaml", "a: " + "[" * 100000 + "\n",
     ["simulate", "--topology", "{FILE}", "--traffic", "uniform:1MB"], ["t.yaml", "nested too deeply"]),
    ("yaml integer of 5000 digits", "t.yaml", "name: x\nnodes: " + "9" * 5000 + "\n",
     ["simulate", "--topology", "{FILE}", "--traffic", "uniform:1MB"], ["t.yaml", "4300 digits"]),
    ("json integer of 5000 digits", "t.json", '{"schema": ' + "9" * 5000 + "}",
     ["validate", "{FILE}", "--plot", "{OUT}.png"], ["t.json", "4300 digits"]),
]

#: published-case files are read from a folder (with its split.yaml): (id, text, words)
PUBLISHED_BROKEN = [
    # AttributeError traceback before
    ("source text", yaml.safe_dump({**yaml.safe_load(PUBLISHED), "source": "a text"}), ["source='a text'", "mapping"]),
    # exit 0 before: a typo of topology fell back to the default topology; 1e30 GB/s was fitted on
    ("topology typo", _sub(PUBLISHED, "\ntopology:", "\ntopolgy:"), ["topolgy=", "not a known field"]),
    ("published 1e30", _sub(PUBLISHED, "published_GBps: 45.1", "published_GBps: 1.0e+30"),
     ["published_GBps", "1e+30", "<= 10000"]),
    # branch robust: an unknown kind in a file of all-to-all cases was refused as "workload must be a mapping"
    ("unknown kind", _sub(PUBLISHED, "kind: alltoall, ep: 32, nodes: 4, size_bytes: 67108864",
                          "kind: bogus, ep: 32, nodes: 4, size_bytes: 67108864"), ["cases[0].kind='bogus'", "one of"]),
]


@pytest.mark.parametrize("name, text, argv, words", [pytest.param(*case[1:], id=case[0]) for case in BROKEN])
def test_a_bad_file_is_one_line_and_exit_2(name, text, argv, words, tmp_path, monkeypatch, refused):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    refused(argv, name, words)          # one line, exit 2, no output file and no folder the output checks made


def test_a_valid_log_still_writes_both_outputs(tmp_path, capsys):
    """The unchanged log: the topology and the --raw JSON are written, alpha 20 us, B about 300 GB/s."""
    log = tmp_path / "a2a.log"
    log.write_text(NCCL_LOG)
    out = tmp_path / "out" / "t"
    assert main([arg.replace("{FILE}", str(log)).replace("{OUT}", str(out)) for arg in NCCL]) == 0
    fit = json.loads((tmp_path / "out" / "t.json").read_text())["fit"]
    assert fit["alpha_s"] == pytest.approx(2e-5, rel=0.01) and fit["bandwidth_Bps"] == pytest.approx(3e11, rel=0.02)
    assert (tmp_path / "out" / "t.yaml").is_file()


@pytest.mark.parametrize("text, words", [pytest.param(*case[1:], id=case[0]) for case in PUBLISHED_BROKEN])
def test_a_bad_published_case_file_is_one_line_and_exit_2(text, words, tmp_path, capsys):
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "p5.yaml").write_text(text)
    (folder / "split.yaml").write_text("test: [nccl-p5-ep32-peak]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--published", str(folder), "--json", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "p5.yaml" in err, err
    for word in words:
        assert word in err, (word, err)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cases", "p5.yaml", "split.yaml"]


def test_a_trace_without_a_valid_tokens_per_rank_is_refused(tmp_path, refused):
    """Exit 0 before: meta.workload.tokens_per_rank -1 (the phase model's feature) was accepted."""
    trace = json.loads((ROOT / "tests" / "data" / "validate" / "x2" / "gpu-uniform-d4096-t8k.json").read_text())
    trace["meta"]["workload"]["tokens_per_rank"] = -1
    (tmp_path / "t.json").write_text(json.dumps(trace))
    refused(["validate", "{FILE}", "--json"], "t.json", ["meta.workload.tokens_per_rank=-1"])


def test_a_trace_record_of_a_rank_the_run_did_not_have_is_refused(tmp_path, refused):
    """Exit 0 before: a phase record of rank 99 in a 2-rank trace was accepted."""
    trace = json.loads((ROOT / "tests" / "data" / "validate" / "x2" / "gpu-uniform-d4096-t8k.json").read_text())
    trace["phases"][0]["rank"] = 99
    (tmp_path / "t.json").write_text(json.dumps(trace))
    refused(["validate", "{FILE}", "--json"], "t.json", ["rank=99 must be < meta.workload.world_size=2"])


def test_a_results_table_that_is_not_utf8_names_the_file(tmp_path, capsys):
    """Before: "'utf-8' codec can't decode byte 0xff in position 0", no file named. The table is
    left as it was (sweep resumes from --out, so the table is an input too)."""
    (tmp_path / "tiny.yaml").write_text("num_layers: 2\nd_model: 256\nd_ffn: 4096\nnum_experts: 16\nseq_len: 256\n"
                                        "tokens_per_gpu: 512\nvocab_size: 1000\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  model: tiny.yaml\n  cluster: lshmoe-v100-2x8\n  tokens_per_gpu: 256\noptions: [baseline]\n")
    table = tmp_path / "table.csv"
    table.write_bytes(b"\xff\xfe\x00 not UTF-8\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(grid), "--out", str(table), "--jobs", "0", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert "table.csv: not UTF-8 text (byte 0)" in err, err
    assert table.read_bytes() == b"\xff\xfe\x00 not UTF-8\n"


@pytest.mark.parametrize("key", ["test", "fresh"])
def test_a_split_entry_that_is_a_list_is_refused(key, tmp_path, capsys):
    """TypeError (unhashable) traceback before: split.yaml's test: [[id]]."""
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "p5.yaml").write_text(PUBLISHED)
    lists = {"test": "[nccl-p5-ep32-peak]", "fresh": "[]", key: "[[nccl-p5-ep64-peak]]"}
    (folder / "split.yaml").write_text("".join(f"{name}: {value}\n" for name, value in lists.items()))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--published", str(folder), "--json", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"split.yaml: {key}[0]=['nccl-p5-ep64-peak'] is not a case id" in err, err


def test_validate_plot_of_phases_it_cannot_draw(tmp_path, refused, capsys):
    """validate --plot draws on log axes: a trace with no timed phase ended in "no predicted phase to plot"
    (no file, no option named), and one whose all-to-alls moved no bytes (predicted 0 s) in numpy's
    "Geometric sequence cannot include zero" (branch robust). Now the first is refused naming --plot and
    the trace, and the second draws the phases it can (the all-to-alls' -100% are in the table)."""
    trace = json.loads((ROOT / "tests" / "data" / "calibration" / "h200-x4-alpha-beta"
                        / "cal-uniform-d2048-t1024.json").read_text())
    topology = str(ROOT / "data" / "topologies" / "calibrated" / "h200-x4.yaml")
    untimed = json.loads(json.dumps(trace))
    untimed["meta"]["measured"]["phases_s"] = {}
    (tmp_path / "t.json").write_text(json.dumps(untimed))
    refused(["validate", "{FILE}", "--topology", topology, "--plot", "{OUT}.png"], "t.json",
            ["--plot", "no predicted phase to plot", "(log axes)"])
    (tmp_path / "t.json").unlink()
    zero = json.loads(json.dumps(trace))
    for key in ("traffic_bytes", "combine_traffic_bytes"):
        zero["meta"]["measured"][key] = [[0] * 4 for _ in range(4)]
    (tmp_path / "z.json").write_text(json.dumps(zero))
    assert main(["validate", str(tmp_path / "z.json"), "--topology", topology, "--plot", str(tmp_path / "z.png")]) == 0
    assert (tmp_path / "z.png").stat().st_size > 0 and "-100" in capsys.readouterr().out


def test_a_split_that_holds_out_every_case_is_refused_before_any_simulation(tmp_path, capsys):
    """Every case held out: the fit refused it as "fit_calibration: no fitting cases" (no file named), after
    simulating every case (branch robust)."""
    folder = tmp_path / "cases"
    folder.mkdir()
    doc = yaml.safe_load(PUBLISHED)
    doc["cases"] = doc["cases"][:1]
    (folder / "p5.yaml").write_text(yaml.safe_dump(doc))
    (folder / "split.yaml").write_text(f"test: [{doc['cases'][0]['id']}]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--published", str(folder), "--json", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "split.yaml: every one of the 1 cases is held out" in err, err
