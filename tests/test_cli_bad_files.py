"""Bad input files (branch fuzzfiles): every file a command reads was fed an empty file, a non-UTF-8
file, a folder, bad syntax, a top level of the wrong type, each field missing or of the wrong type
or 0, -1, nan, inf, 1e30, typos of field names, duplicate keys, and (logs) truncated or garbage
lines (benchmarks/RESULTS.md, "Bad input files").

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
    # exit 0 before: two rows of one size fitted alpha 5e-16 s and a bandwidth from one point
    ("nccl one size twice", "a2a.log", "\n".join(_LINES[:_ROWS[0]] + [_LINES[_ROWS[4]]] * 2) + "\n", NCCL,
     ["2 different all-to-all sizes", "262144"]),
    # exit 0 before: constant times fitted a bandwidth of 1.7e29 B/s
    ("nccl constant times", "a2a.log", _rows(lambda k, line: _time(line, "20.00")), NCCL,
     ["the times do not grow with the size", "1.73e+29"]),
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


def _argv(argv, fill):
    return [next((arg.replace(key, value) for key, value in fill.items() if key in arg), arg) for arg in argv]


@pytest.mark.parametrize("name, text, argv, words", [pytest.param(*case[1:], id=case[0]) for case in BROKEN])
def test_a_bad_file_is_one_line_and_exit_2(name, text, argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    path.write_text(text)
    argv = _argv(argv, {"{FILE}": str(path), "{OUT}": str(tmp_path / "out" / "result")})
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert name in err, err
    for word in words:
        assert word in err, (word, err)
    # no output file, and no folder the output checks made (a refusal removes it)
    assert sorted(p.name for p in tmp_path.rglob("*")) == [name], "an output was left behind"


def test_a_valid_log_still_writes_both_outputs(tmp_path, capsys):
    """The unchanged log: the topology and the --raw JSON are written, alpha 20 us, B about 300 GB/s."""
    log = tmp_path / "a2a.log"
    log.write_text(NCCL_LOG)
    out = tmp_path / "out" / "t"
    assert main(_argv(NCCL, {"{FILE}": str(log), "{OUT}": str(out)})) == 0
    fit = json.loads((tmp_path / "out" / "t.json").read_text())["fit"]
    assert fit["alpha_s"] == pytest.approx(2e-5, rel=0.01) and fit["bandwidth_Bps"] == pytest.approx(3e11, rel=0.02)
    assert (tmp_path / "out" / "t.yaml").is_file()
