"""`calibrate --world-size` / `--gpu` beside files that say otherwise (branch robust3).

Before: `--nccl-tests LOG --world-size 3` fitted a log whose '# Rank' lines list 4 ranks as a
3-rank run, `--nccl-tests LOG --gpu h200` an H100 log as an H200, and `--from-raw` /
`--from-traces` dropped both options without a word. Now an option that contradicts the files
is refused (one line naming the option, the file and both values, nothing written), one that
agrees is accepted, and one the files leave open (a log without '# Rank' lines, a device no
calibration knows) is taken and noted in the summary and the provenance.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lshsim.calibration import read_source
from lshsim.calibration.sources import parse_nccl_tests
from lshsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "tests" / "data" / "nccl_tests_alltoall_perf.txt"
RAW = ROOT / "data" / "measured" / "h200" / "run-o" / "cal-nvlink-raw.json"      # 2 x NVIDIA H200
TRACES = sorted(str(p) for p in (ROOT / "data" / "measured" / "h200" / "run-d" / "cal-x2").glob("*.json"))


def _edited(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _raw(tmp_path, **provenance) -> str:
    raw = json.loads(RAW.read_text())
    raw["results"].pop("phases", None)
    raw["provenance"].update(provenance)
    return _edited(tmp_path, "raw.json", json.dumps(raw))


def _refused(argv, tmp_path, capsys, words):
    out = tmp_path / "out" / "t.yaml"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", *argv, "--out", str(out), "--raw", str(tmp_path / "out" / "r.json"), "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before          # nothing written, no folder made


def _summary(argv, tmp_path, capsys) -> tuple[str, dict]:
    out = tmp_path / "ok.yaml"
    assert main(["calibrate", *argv, "--out", str(out), "--quiet"]) == 0
    return capsys.readouterr().out, yaml.safe_load(out.read_text())


@pytest.mark.parametrize("argv, words", [
    pytest.param(["--nccl-tests", str(LOG), "--world-size", "3"],
                 ["nccl_tests_alltoall_perf.txt", "world_size=3 (--world-size)", "4 '# Rank' lines", "give 4"],
                 id="nccl-tests world-size 3 on a 4-rank log"),
    pytest.param(["--nccl-tests", str(LOG), "--world-size", "8", "--gpu", "h100"], ["world_size=8", "4 '# Rank'"],
                 id="nccl-tests world-size 8 on a 4-rank log"),
    pytest.param(["--source", "nccl-tests", str(LOG), "--source-option", "world_size=2"], ["world_size=2", "give 4"],
                 id="source nccl-tests world_size=2"),
    pytest.param(["--nccl-tests", str(LOG), "--gpu", "h200"],
                 ["nccl_tests_alltoall_perf.txt", "gpu='h200' (--gpu)", "'NVIDIA H100 80GB HBM3' (h100)", "give h100"],
                 id="nccl-tests gpu h200 on an H100 log"),
    pytest.param(["--from-raw", str(RAW), "--world-size", "8"],
                 ["cal-nvlink-raw.json", "world_size=8 (--world-size)", "results.world_size=2", "give 2"],
                 id="from-raw world-size 8 on a 2-rank raw"),
    pytest.param(["--from-raw", str(RAW), "--gpu", "h100"],
                 ["cal-nvlink-raw.json", "gpu='h100' (--gpu)", "provenance.gpu 'NVIDIA H200' (h200)"],
                 id="from-raw gpu h100 on an H200 raw"),
    pytest.param(["--from-traces", *TRACES, "--world-size", "4"],
                 ["cal-x2", "world_size=4 (--world-size)", "meta.workload.world_size=2"],
                 id="from-traces world-size 4 on 2-rank traces"),
    pytest.param(["--from-traces", *TRACES, "--gpu", "a100"], ["gpu='a100' (--gpu)", "'NVIDIA H200' (h200)"],
                 id="from-traces gpu a100 on H200 traces"),
])
def test_an_option_contradicting_the_files_is_refused(argv, words, tmp_path, capsys):
    _refused(argv, tmp_path, capsys, words)


def test_a_cpu_raw_refuses_a_gpu(tmp_path, capsys):
    raw = _raw(tmp_path, gpu=None, device_type="cpu")
    _refused(["--from-raw", raw, "--gpu", "h100"], tmp_path, capsys,
             ["raw.json", "gpu='h100' (--gpu)", "measured on the CPU", "not an H100's", "leave --gpu out"])


def test_an_option_that_agrees_is_accepted_and_changes_nothing(tmp_path, capsys):
    plain, plain_spec = _summary(["--nccl-tests", str(LOG)], tmp_path, capsys)
    agreed, agreed_spec = _summary(["--nccl-tests", str(LOG), "--world-size", "4", "--gpu", "h100"], tmp_path, capsys)
    assert agreed == plain and agreed_spec == plain_spec and "note:" not in plain
    plain, plain_spec = _summary(["--from-raw", str(RAW)], tmp_path, capsys)
    agreed, agreed_spec = _summary(["--from-raw", str(RAW), "--world-size", "2", "--gpu", "h200"], tmp_path, capsys)
    assert agreed == plain and agreed_spec["calibration"] == plain_spec["calibration"]


def test_what_the_files_leave_open_is_taken_and_said(tmp_path, capsys):
    text = LOG.read_text()
    no_ranks = _edited(tmp_path, "norank.log", "\n".join(l for l in text.splitlines() if "Rank" not in l))
    out, spec = _summary(["--nccl-tests", no_ranks, "--world-size", "8", "--gpu", "h100"], tmp_path, capsys)
    assert out.startswith("calibration on 8 x h100\n"), out
    assert "note: 8 ranks from --world-size (the log has no '# Rank' lines" in out
    assert spec["gpus_per_node"] == 8
    assert any("8 ranks from --world-size" in n for n in spec["calibration"]["provenance"]["overrides"])
    h800 = _edited(tmp_path, "h800.log", text.replace("NVIDIA H100 80GB HBM3", "NVIDIA H800"))
    out, spec = _summary(["--nccl-tests", h800, "--gpu", "h100"], tmp_path, capsys)
    assert "note: GPU h100 from --gpu (the log's '# Rank' device 'NVIDIA H800' is not a GPU a calibration knows)" in out
    raw = _raw(tmp_path, gpu="NVIDIA L40S")
    out, spec = _summary(["--from-raw", raw, "--gpu", "h100"], tmp_path, capsys)
    assert out.startswith("calibration on 2 x h100\n") and "'NVIDIA L40S' is not a GPU a calibration knows" in out
    assert spec["gpu"] == "h100"


def test_ranks_of_a_log_without_rank_lines_follow_its_first_line():
    """nGpus is per process (an MPI run prints nGpus 1 with 8 '# Rank' lines): without the rank lines,
    --world-size must be a multiple of nThread x nGpus."""
    lines = [l for l in LOG.read_text().splitlines() if "Rank" not in l]
    text = "\n".join(lines).replace("nThread 1 nGpus 1", "nThread 2 nGpus 4")
    assert parse_nccl_tests(text).world_size == 8 and parse_nccl_tests(text).ranks_from == "nGpus"
    assert parse_nccl_tests(text, world_size=16).world_size == 16
    with pytest.raises(ValueError, match=r"world_size=12 \(--world-size\) contradicts the log's first line "
                                         r"\(nThread 2 nGpus 4: 8 ranks per process\): give a multiple of 8"):
        parse_nccl_tests(text, world_size=12)
    run = read_source("nccl-tests", [str(LOG)], {"world_size": 4})
    assert run.world_size == 4 and "overrides" not in run.provenance
