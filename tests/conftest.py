"""Shared test settings: hypothesis profile, gpu skipping."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Deterministic property tests: a fixed database-less profile with a seed derived from the test.
settings.register_profile("lshsim", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow], database=None)
settings.load_profile(os.environ.get("LSHSIM_HYPOTHESIS_PROFILE", "lshsim"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


#: a small MoE model on the 32-GPU LSH-MoE A100 cluster (4 nodes x 8), for step-simulator tests
A100_4X8 = "lshmoe-a100-4x8"
SMALL_MOE = {"name": "m", "num_layers": 2, "d_model": 256, "d_ffn": 1024, "num_experts": 64, "top_k": 2,
             "moe_every": 1, "seq_len": 256, "tokens_per_gpu": 1024, "vocab_size": 1000, "bytes_per_element": 2}


@pytest.fixture(scope="session")
def a100_4x8_graph():
    """The topology graph of `A100_4X8` with today's grouped MoE layer (its software calibration names
    fairseq's padded 2021 layer, which the paper reproduction uses; these tests plan routed traffic),
    loaded once per session (read-only in the tests)."""
    from lshsim.topology import load_topology

    graph = load_topology(A100_4X8).copy()
    graph.graph["gpu"] = {**graph.graph["gpu"], "moe_layer": "grouped"}
    return graph


def layer_step_matches(models, x0: torch.Tensor, ids: torch.Tensor, rel: float = 2e-2, clone: bool = True) -> None:
    """One forward + backward of each executor layer in `models` (same weights) on the same tokens:
    the output, the input's gradient and every parameter's gradient of the first equal the second's
    within `rel` of the second's largest magnitude (bf16 tolerance). clone=False hands every model
    x0's own storage (a leaf view of it), as a caller that keeps its token buffer does."""
    results = []
    for model in models:
        for param in model.parameters():
            param.grad = None
        x = (x0.detach().clone() if clone else x0.detach()).requires_grad_(True)
        y = model.forward(x, ids).y
        (y.float() * 0.01).sum().backward()
        results.append([y.detach(), x.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        scale = float(b.float().abs().max()) or 1.0
        assert float((a.float() - b.float()).abs().max()) <= rel * scale


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux: read from /proc)."""
    from pathlib import Path

    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (not gone, not zombies; Linux: read from /proc)."""
    from pathlib import Path

    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def assert_workers_end_with(process, workers: set[int], what: str) -> None:
    """SIGTERM to `process` (a command with a pool of `workers`), then every worker must end within 30 s."""
    import signal
    import time

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(workers), f"workers {sorted(alive(workers))} outlived the terminated {what}"


def kill_leftovers(process, workers: set[int]) -> None:
    """Whatever of `process` and its `workers` is still running, killed (a test's clean-up)."""
    import os
    import signal

    for pid in alive(workers):
        os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()


@pytest.fixture
def refused(tmp_path, capsys):
    """`refused(argv, name, words=(), keep=())`: run `lshsim ARGV` ({FILE} -> tmp_path / name, {OUT} ->
    tmp_path / out / result) and check the refusal every bad input must get: exit 2, one line on standard
    error ending in a newline, no traceback, the file `name` and each of `words` in it, and nothing left
    under tmp_path but `name` and `keep` (a refusal writes nothing and removes the folders its output checks
    made). A `name` that starts with '--' is the refused option, not a file: nothing at all may be left
    but `keep`. Returns (stdout, stderr)."""
    from lshsim.cli import main

    def run(argv, name, words=(), keep=()):
        fill = {"{FILE}": str(tmp_path / name), "{OUT}": str(tmp_path / "out" / "result")}
        argv = [next((arg.replace(key, value) for key, value in fill.items() if key in arg), arg) for arg in argv]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out, err = capsys.readouterr()
        assert exit_info.value.code == 2, err
        assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
        assert name in err, err
        for word in words:
            assert word in err, (word, err)
        inputs = [] if name.startswith("--") else [name]
        assert sorted(p.name for p in tmp_path.rglob("*")) == sorted([*inputs, *keep]), "an output was left behind"
        return out, err
    return run
