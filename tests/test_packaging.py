"""A non-editable install of the checkout works from outside the checkout.

The test builds the package the way `pip install .` does (a wheel from setup.py/setup.cfg) into a
fresh virtual environment and runs commands from a temporary working directory. The fresh venv
sees the dependencies (torch, numpy, ...) of the environment running the tests through a .pth
line, since installing torch anew is out of reach (gigabytes); `--no-deps --no-build-isolation`
keeps pip offline. What it checks:

- `lshsim`, `lshsim.executor`, `lshsim.models` and `lshsim.cli` are imported from the fresh
  venv's site-packages, not from the checkout, no top-level `executor` or `models` package was
  installed, and the model catalog's YAML files came with `lshsim.models`;
- the `lshsim` console script of the fresh venv runs (`--help`, `plan --help`, a simulation on a
  shipped topology, which the install placed under <prefix>/share/lshsim, and `catalog`, which lists
  and shows the installed files);
- `python -m lshsim.executor --help` runs (the entry point torchrun uses);
- building the parser of `lshsim` imports no torch.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "lshsim", "executor", "models", "data/topologies")


def _run(args: list, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv folder, its python, an environment without PYTHONPATH, a working directory outside the checkout)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    for name in SOURCES:
        target = source / name
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], root, env)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root,
                     env).stdout.strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-build-isolation",
          source], root, env, timeout=300)
    cwd = root / "elsewhere"
    cwd.mkdir()
    return venv, python, env, cwd


def test_modules_come_from_the_install(installed):
    venv, python, env, cwd = installed
    code = ("import importlib.util, json, sys, lshsim, lshsim.cli, lshsim.executor, lshsim.models; "
            "print(json.dumps({'files': [m.__file__ for m in (lshsim, lshsim.cli, lshsim.executor, lshsim.models)], "
            "'top_level': [importlib.util.find_spec(n) is not None for n in ('executor', 'models')], "
            "'checkout_finder': any(type(f).__name__ == '_CheckoutFinder' for f in sys.meta_path)}))")
    out = json.loads(_run([python, "-c", code], cwd, env).stdout)
    site = str(venv / "lib")
    assert all(path.startswith(site) and "site-packages" in path for path in out["files"]), out["files"]
    assert out["files"][2].endswith(os.path.join("lshsim", "executor", "__init__.py"))
    assert out["top_level"] == [False, False]
    assert not out["checkout_finder"]
    installed_files = {p.name for p in Path(out["files"][0]).parents[1].iterdir()}
    assert "executor" not in installed_files and "models" not in installed_files
    models = _run([python, "-c", "from lshsim.models import list_models; print(' '.join(list_models()))"], cwd, env)
    assert {"gpt-moe-15b", "roberta-moe", "t5-moe"} <= set(models.stdout.split())  # the catalog's package data


def test_console_script_and_executor_entry_point(installed):
    venv, python, env, cwd = installed
    lshsim = venv / "bin" / "lshsim"
    assert lshsim.read_text().splitlines()[0] == f"#!{python}"
    help_text = _run([lshsim, "--help"], cwd, env).stdout
    for name in ("route", "plan", "simulate", "validate", "run", "calibrate", "check", "launch"):
        assert name in help_text
    assert "--cluster" in _run([lshsim, "plan", "--help"], cwd, env).stdout
    simulated = json.loads(_run([lshsim, "simulate", "--topology", "h100-nvswitch", "--traffic", "uniform:64MB",
                                 "--json"], cwd, env).stdout)
    assert simulated["topology"] == "h100-nvswitch" and simulated["time_s"] > 0
    listed = json.loads(_run([lshsim, "catalog", "--json"], cwd, env).stdout)       # the installed files, listed
    assert "deepseek-v3" in [m["name"] for m in listed["models"]]
    assert "h100-nvswitch" in [c["name"] for c in listed["clusters"]]
    (shown,) = json.loads(_run([lshsim, "catalog", "h100-nvswitch", "--json"], cwd, env).stdout)
    assert Path(shown["file"]).is_relative_to(venv) and shown["text"].startswith("name: h100-nvswitch")
    assert "calibrate" in _run([python, "-m", "lshsim.executor", "--help"], cwd, env).stdout
    code = "import sys, lshsim.cli; lshsim.cli.build_parser(); print('torch' in sys.modules)"
    assert _run([python, "-c", code], cwd, env).stdout.strip() == "False"
