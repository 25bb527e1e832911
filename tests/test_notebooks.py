"""Execute every teaching notebook (notebooks/*.py, jupytext percent format) with nbclient.

Notebooks are stored as `.py` files without outputs; they are converted in memory and executed
in a fresh `python3` kernel (jupyter_client starts it with this interpreter, so it sees the
installed `lshsim`); nothing is written back.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.py"))
TIMEOUT_S = 120  # per cell; each notebook runs in about a minute or less on 2 shared cores (03: 50-54 s, 06: 28-36 s)


@pytest.mark.notebooks
def test_found_every_notebook():
    on_disk = [name for name in os.listdir(NOTEBOOK_DIR)
               if name.endswith(".py") and (NOTEBOOK_DIR / name).is_file()]
    assert len(NOTEBOOKS) == len(on_disk)
    assert len(NOTEBOOKS) >= 1


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    # The kernel's own inline backend (no display needed) embeds every figure, as Jupyter renders the
    # notebook; an MPLBACKEND inherited by the kernel (e.g. Agg) would replace it and embed none.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = jupytext.read(path, fmt="py:percent")
    assert any(cell.cell_type == "code" for cell in notebook.cells), f"{path.name} has no code cells"
    client = nbclient.NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors, errors
    figures = sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
                  for output in cell.get("outputs", []))
    assert figures >= 1, f"{path.name} embedded no figure"
