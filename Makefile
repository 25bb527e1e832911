# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC := torch==2.13.0
# e.g. make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu  (a CPU-only torch where the default index gives a CUDA build)
TORCH_INDEX ?=

.PHONY: install demo test test-fast bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned, so that nothing later pulls a CUDA build
	$(BIN)/python -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -e ".[test,notebooks,dask]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lshsim plan

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=20 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow and not distributed and not notebooks" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_dispatch.py

clean:
	rm -rf $(VENV) build *.egg-info
