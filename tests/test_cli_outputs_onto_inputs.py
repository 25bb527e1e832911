"""robust4: an output option naming the same file as another output, or as a file the command reads, is refused
before any work (`lshsim.io.check_distinct_outputs`). Before: `plan --model m.json --plot m.json` wrote a PNG over
the model file and `plan --plot p.json --trace p.json` kept one of the two, both exit 0."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lshsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
HF = ROOT / "tests" / "data" / "hf" / "mixtral-8x7b.json"
NCCL = ROOT / "tests" / "data" / "nccl_tests_alltoall_perf.txt"
PLAN = ["plan", "--cluster", "h100-nvswitch", "--tokens-per-gpu", "64"]


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1, err
    return err[0]


def _inputs(tmp_path):
    model = tmp_path / "m.json"
    shutil.copy(HF, model)
    log = tmp_path / "log.txt"
    shutil.copy(NCCL, log)
    figures = tmp_path / "figures.yaml"
    shutil.copy(ROOT / "data" / "papers" / "figures.yaml", figures)
    workload = tmp_path / "w.yaml"
    shutil.copy(ROOT / "data" / "workloads" / "cal-uniform-d2048-t128.yaml", workload)
    published = tmp_path / "pub"          # a user's folder of published cases: one case file and its split
    published.mkdir()
    shutil.copy(ROOT / "data" / "published" / "nccl-aws-p5-alltoall.yaml", published / "p5.yaml")
    (published / "split.yaml").write_text("test:\n  - nccl-p5-ep32-peak\n")
    return {"model": model, "log": log, "figures": figures, "workload": workload, "case": published / "p5.yaml",
            "split": published / "split.yaml"}


@pytest.mark.parametrize("build, reads", [
    (lambda f: PLAN + ["--model", str(f["model"]), "--plot", str(f["model"])], "--model"),
    (lambda f: PLAN + ["--model", str(f["model"]), "--trace", str(f["model"])], "--model"),
    (lambda f: ["reproduce", "--paper", "locmoe", "--figures", str(f["figures"]), "--plot", str(f["figures"])],
     "--figures"),
    (lambda f: ["calibrate", "--nccl-tests", str(f["log"]), "--out", str(f["log"])], "--nccl-tests"),
    (lambda f: ["calibrate", "--nccl-tests", str(f["log"]), "--out", str(f["log"].parent / "t.yaml"),
                "--raw", str(f["log"])], "--nccl-tests"),
    (lambda f: ["run", "--workload", str(f["workload"]), "--out", str(f["workload"])], "--workload"),
    # robust5: validate --published DIR --plot onto a case file or split.yaml wrote a PNG over it (exit 0)
    (lambda f: ["validate", "--published", str(f["case"].parent), "--jobs", "1", "--plot", str(f["case"])],
     "--published"),
    (lambda f: ["validate", "--published", str(f["split"].parent), "--jobs", "1", "--plot", str(f["split"])],
     "--published"),
])
def test_an_output_onto_an_input_is_refused_and_the_input_kept(tmp_path, capsys, build, reads):
    files = _inputs(tmp_path)
    before = {path: path.read_bytes() for path in files.values()}
    line = _refused(build(files), capsys)
    assert f"is the file {reads} reads" in line
    assert {path: path.read_bytes() for path in files.values()} == before


@pytest.mark.parametrize("outputs", [
    ("--plot", "--trace"), ("--trace", "--chrome-trace"), ("--plot", "--chrome-trace"),
])
def test_two_outputs_onto_one_file_are_refused(tmp_path, capsys, outputs):
    target = tmp_path / "out" / "x.json"
    argv = PLAN + ["--model", "mixtral-8x7b"]
    for option in outputs:
        argv += [option, str(target)]
    line = _refused(argv, capsys)
    assert f"{outputs[0]} and {outputs[1]} name the same file" in line
    assert not target.exists()


def test_validate_and_sweep_outputs_onto_their_inputs(tmp_path, capsys):
    trace = tmp_path / "t.json"
    shutil.copy(ROOT / "tests" / "data" / "validate" / "x2" / "gpu-uniform-d4096-t8k.json", trace)
    before = trace.read_bytes()
    line = _refused(["validate", str(trace), "--plot", str(trace)], capsys)
    assert "is the file a trace reads" in line and trace.read_bytes() == before
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ngrid:\n  model: mixtral-8x7b\n  cluster: h100-nvswitch\n  tokens_per_gpu: [64]\n"
                    "options: [baseline]\n")
    line = _refused(["sweep", str(grid), "--out", str(tmp_path / "s.csv"), "--plot", str(grid)], capsys)
    assert "is the file the grid reads" in line and grid.read_text().startswith("name: g")
