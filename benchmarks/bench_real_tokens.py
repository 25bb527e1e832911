"""LSH-MoE compression and LocMoE's capacity bound on REAL hidden states (all-MiniLM-L6-v2, Lee corpus).

    .venv/bin/python benchmarks/bench_real_tokens.py                       # the committed sample (layers 3, 5)
    .venv/bin/python benchmarks/bench_real_tokens.py --source extract --layers 1,2,4,6 --text lee-test
                                                                           # held out (needs lshsim[real])
    .venv/bin/python benchmarks/bench_real_tokens.py --json out.json       # also every row as JSON
    .venv/bin/python benchmarks/bench_real_tokens.py --heldout data/heldout/lsh-real-tokens/spec.yaml
                                                                           # the committed held-out set (part 1 only)
    ... --models tree,components                                           # both predictors side by side

Part 1, compression. Per layer, per group size G (tokens per (rank, expert) group) and per hash
(family, L = num_hashes, d' = proj_dim): `--groups` random groups of G tokens (without
replacement); on each, the measured rate (`lshsim.analytic.collision.measured_compression_rate`:
lsh.py's real hashing, mean over `--draws` seeds), the centroid error (`lsh.centroid_error`,
||x - c|| / ||x||, seed 0) and the predicted rate (`predicted_compression_rate(group, d', L,
family=..., model=...)`: "tree" (the default, the nested model on the group's average-linkage
tree, `--num-draws` Monte Carlo draws of the model) and/or "components" (the exchangeable-cluster
model on connected components at cos > 0.5, `--num-tuples`)). The table shows the mean over
groups and each prediction's error, pred / meas - 1. `--heldout SPEC`: the groups, layers and
hashes that a committed spec lists (data/heldout/lsh-real-tokens/spec.yaml), on its token files. "router" groups: the
tokens routed by the real `route_locmoe` (GrAP gate, top-1, E experts, no capacity limit),
compressed with group = expert, predicted per expert and summed.

Part 2, LocMoE. Per layer and number of experts E: `estimate_delta(tokens, grap_weights(d, E))`
at quantiles 0 (the paper's maximal deviation) and 0.01, `ec_min(E, d, delta)` (tokens per expert,
the paper's definition) and the capacity factor at which this one rank's capacity ceil(cf T / E)
reaches it, `capacity_factor_at_bound(ec_min, T, 1, E)` = ec_min E / T (T the layer's tokens, top-1);
then `route_locmoe(k=1)` on the same tokens at a sweep
of capacity factors: the dropped fraction, and the capacity factor where drops actually stop
(E * max_e load_e / T, the most loaded expert's share).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from lshsim.analytic.capacity import capacity_factor_at_bound, capacity_from_factor, ec_min, estimate_delta
from lshsim.analytic.collision import measured_compression_rate, predicted_compression_rate
from lshsim.dispatch.lsh import LSHConfig, centroid_error, compress
from lshsim.dispatch.placement import contiguous_placement
from lshsim.dispatch.routers import grap_weights, route_locmoe

#: (family, L, d') of part 1: the paper's L = 6 at two d', and coarser hashes that do compress
HASHES = (("cross_polytope", 6, 16), ("cross_polytope", 6, 4), ("cross_polytope", 4, 4), ("cross_polytope", 2, 8),
          ("cross_polytope", 1, 16), ("hyperplane", 10, None), ("hyperplane", 6, None))
GROUP_SIZES = (128, 512)
CAPACITY_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


def _config(family: str, num_hashes: int, proj_dim, seed: int = 0) -> LSHConfig:
    return LSHConfig(family=family, num_hashes=num_hashes, proj_dim=proj_dim, seed=seed)


def predict(tokens: np.ndarray, family: str, num_hashes: int, proj_dim, model: str, *, num_tuples: int = 400,
            num_draws: int = 256):
    """`predicted_compression_rate` of one group with one model (its own Monte Carlo size)."""
    if model == "tree":
        return predicted_compression_rate(tokens, proj_dim, num_hashes, family=family, num_draws=num_draws)
    return predicted_compression_rate(tokens, proj_dim, num_hashes, family=family, model=model,
                                      num_tuples=num_tuples)


def compression_row(groups: list[np.ndarray], family: str, num_hashes: int, proj_dim, *, draws: int = 4,
                    num_tuples: int = 400, num_draws: int = 256, models=("tree",)) -> dict:
    """Measured and predicted compression rate and centroid error over a list of (G, d) token groups.

    "predicted"/"rel_error" are the first model's; every model also has "predicted_<model>" and
    "rel_error_<model>".
    """
    measured, errors = [], []
    predicted = {model: [] for model in models}
    seconds = {model: 0.0 for model in ("measured", *models)}  # wall-clock per group, summed
    for tokens in groups:
        config = _config(family, num_hashes, proj_dim)
        start = time.perf_counter()
        measured.append(measured_compression_rate(tokens, config, num_draws=draws).estimate)
        seconds["measured"] += time.perf_counter() - start
        x = torch.as_tensor(tokens, dtype=torch.float32)
        errors.append(centroid_error(x, compress(x, torch.zeros(len(x), dtype=torch.int64), config)))
        for model in models:
            start = time.perf_counter()
            predicted[model].append(predict(tokens, family, num_hashes, proj_dim, model, num_tuples=num_tuples,
                                            num_draws=num_draws).compression_rate)
            seconds[model] += time.perf_counter() - start
    meas = float(np.mean(measured))
    row = {"family": family, "L": num_hashes, "d_prime": proj_dim if family == "cross_polytope" else 1,
           "measured": meas, "centroid_error": float(np.mean(errors)), "groups": len(groups),
           "group_size": len(groups[0]), "seconds_per_group_measured": seconds["measured"] / len(groups)}
    for model in models:
        pred = float(np.mean(predicted[model]))
        row |= {f"predicted_{model}": pred, f"rel_error_{model}": pred / meas - 1.0,
                f"seconds_per_group_{model}": seconds[model] / len(groups)}
    return row | {"predicted": row[f"predicted_{models[0]}"], "rel_error": row[f"rel_error_{models[0]}"]}


def random_groups(tokens: np.ndarray, size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` disjoint random groups of `size` rows (as many as fit)."""
    order = np.random.default_rng(seed).permutation(len(tokens))
    count = min(count, len(tokens) // size)
    return [tokens[order[i * size:(i + 1) * size]].astype(np.float64) for i in range(count)]


def router_row(tokens: np.ndarray, num_experts: int, family: str, num_hashes: int, proj_dim, *,
               draws: int = 4, num_tuples: int = 400, num_draws: int = 256, model: str = "tree") -> dict:
    """Compression of the real router's groups: route_locmoe top-1, no capacity limit, group = expert."""
    x = torch.as_tensor(tokens, dtype=torch.float32)
    plan = route_locmoe(x, contiguous_placement(num_experts, 1, 1), k=1, capacity_factor=None)
    expert = plan.expert_index[:, 0]
    rates = [compress(x, expert, _config(family, num_hashes, proj_dim, seed)).compression_rate
             for seed in range(draws)]
    config = _config(family, num_hashes, proj_dim)
    error = centroid_error(x, compress(x, expert, config))
    buckets = 0.0
    sizes = []
    for e in range(num_experts):
        members = tokens[(expert == e).numpy()].astype(np.float64)
        sizes.append(len(members))
        if len(members):
            buckets += predict(members, family, num_hashes, proj_dim, model, num_tuples=num_tuples,
                               num_draws=num_draws).expected_buckets
    meas, pred = float(np.mean(rates)), buckets / len(tokens)
    return {"family": family, "L": num_hashes, "d_prime": proj_dim if family == "cross_polytope" else 1,
            "measured": meas, "predicted": pred, "rel_error": pred / meas - 1.0, "centroid_error": error,
            "experts": num_experts, "group_sizes": sizes, "model": model}


def locmoe_rows(tokens: np.ndarray, num_experts: int, capacity_factors=CAPACITY_FACTORS) -> dict:
    """LocMoE's bound from the measured delta, against the real router's drops over a capacity-factor sweep.

    bound[quantile]: delta, ec_min (tokens per expert), capacity_factor_at_bound (the factor at which
    the capacity of these T tokens on one rank, top-1, reaches ec_min; NaN where delta is not in (0, 1)),
    p_delta_measured, p_delta_uniform.
    """
    d = tokens.shape[1]
    weights = grap_weights(d, num_experts, dtype=torch.float64).numpy()
    bound = {}
    for quantile in (0.0, 0.01):
        est = estimate_delta(tokens, weights, quantile=quantile)
        valid = 0 < est.delta < 1
        value = float(ec_min(num_experts, d, est.delta)) if valid else float("nan")
        factor = float(capacity_factor_at_bound(value, len(tokens), 1, num_experts)) if valid else float("nan")
        bound[str(quantile)] = {"delta": est.delta, "ec_min": value, "capacity_factor_at_bound": factor,
                                "p_delta_measured": est.p_delta_measured, "p_delta_uniform": est.p_delta_uniform}
    x = torch.as_tensor(tokens, dtype=torch.float32)
    placement = contiguous_placement(num_experts, 1, 1)
    sweep = []
    for factor in capacity_factors:
        plan = route_locmoe(x, placement, k=1, capacity_factor=factor)
        sweep.append({"capacity_factor": factor, "capacity": int(capacity_from_factor(len(x), 1, num_experts, factor)),
                      "dropped_fraction": plan.num_dropped / len(x)})
    free = route_locmoe(x, placement, k=1, capacity_factor=None)
    load = torch.bincount(free.expert_index[:, 0], minlength=num_experts).numpy()
    est0 = estimate_delta(tokens, weights)
    return {"experts": num_experts, "bound": bound, "sweep": sweep, "load": load.tolist(),
            "drops_stop_at_factor": float(num_experts * load.max() / len(x)),
            "gate_max_abs_cos": est0.gate_max_abs_cos, "cos_assigned_median": float(np.median(est0.cos_assigned))}


def _load(args) -> tuple[dict, str]:
    if args.source == "sample":
        from lshsim.realdata import SAMPLE_LAYERS, load_sample

        layers = args.layers or list(SAMPLE_LAYERS)
        return load_sample(layers), "data/tokens (committed sample, lee-background)"
    from lshsim import realdata

    layers = args.layers or [1, 2, 4, 6]
    hidden = realdata.extract_hidden_states(realdata.load_text(args.text), layers, args.tokens)
    return hidden, f"extracted from {args.text}"


def _fmt(value, digits=4):
    return "nan" if value != value else f"{value:.{digits}g}"


def heldout_cases(spec_path: str) -> tuple[list, list, str]:
    """(cases, hashes, source) of a committed held-out spec: every (text, layer, size) with its groups."""
    import yaml
    from pathlib import Path

    path = Path(spec_path)
    try:
        spec = yaml.safe_load(path.read_text())
        hashes = [(str(f), int(n), None if str(f) == "hyperplane" else int(d)) for f, n, d in spec["hashes"]]
        cases = []
        for text in spec["texts"]:
            for layer in spec["layers"]:
                tokens = np.load(path.parent / f"{text}_layer{layer}.npy", allow_pickle=False).astype(np.float64)
                start = 0
                for group in spec["selection"]["groups"]:
                    size, count = int(group["size"]), int(group["count"])
                    groups = [tokens[start + i * size:start + (i + 1) * size] for i in range(count)]
                    start += size * count
                    if start > len(tokens):
                        raise ValueError(f"{path.parent / f'{text}_layer{layer}.npy'} holds {len(tokens)} rows, "
                                         f"the spec's groups need {start}")
                    cases.append((text, int(layer), size, groups))
    except (KeyError, TypeError, ValueError) as error:
        raise SystemExit(f"{path}: {error}") from None
    return cases, hashes, f"held-out spec {path}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("sample", "extract"), default="sample")
    parser.add_argument("--heldout", metavar="SPEC", help="the committed held-out set of a spec (part 1 only)")
    parser.add_argument("--layers", type=lambda s: [int(v) for v in s.split(",")], default=None)
    parser.add_argument("--text", default="lee-test", help="--source extract: text source (default lee-test)")
    parser.add_argument("--tokens", type=int, default=2048, help="--source extract: tokens (default 2048)")
    parser.add_argument("--group-sizes", type=lambda s: [int(v) for v in s.split(",")], default=list(GROUP_SIZES))
    parser.add_argument("--groups", type=int, default=3, help="random groups per size (default 3)")
    parser.add_argument("--draws", type=int, default=4, help="hash seeds per measured rate (default 4)")
    parser.add_argument("--experts", type=lambda s: [int(v) for v in s.split(",")], default=[8, 16])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["tree"],
                        help="predictors, comma-separated: tree (default), components")
    parser.add_argument("--num-tuples", type=int, default=400, help="components model Monte Carlo size (default 400)")
    parser.add_argument("--num-draws", type=int, default=256, help="tree model Monte Carlo draws (default 256)")
    parser.add_argument("--parts", type=lambda s: s.split(","), default=["compression", "router", "locmoe"],
                        help="comma-separated: compression, router, locmoe (default all)")
    parser.add_argument("--json", metavar="FILE", help="write every row as JSON")
    args = parser.parse_args(argv)
    for model in args.models:
        if model not in ("tree", "components"):
            parser.error(f"--models: {model!r} must be tree or components")
    start = time.perf_counter()
    if args.heldout:
        cases, hashes, source = heldout_cases(args.heldout)
        hidden = {}
        args.parts = ["compression"]
        print(f"# real tokens: {source}; {len(cases)} (text, layer, G) cases")
    else:
        hidden, source = _load(args)
        hashes = HASHES
        cases = [("", layer, size, random_groups(tokens, size, args.groups, seed=layer))
                 for layer, tokens in sorted(hidden.items()) for size in args.group_sizes]
        print(f"# real tokens: {source}; layers {sorted(hidden)}; {next(iter(hidden.values())).shape[0]} tokens")
    out = {"source": source, "models": args.models, "compression": [], "router": [], "locmoe": []}
    if "compression" in args.parts:
        print("\n## compression: measured vs predicted (random groups)\n")
        head = "".join(f" predicted ({m}) | pred/meas - 1 ({m}) |" for m in args.models)
        print(f"| text | layer | G | groups | family | L | d' | measured |{head} centroid error |")
        print("|---" * (9 + 2 * len(args.models)) + "|")
        for text, layer, size, groups in cases:
            for family, num_hashes, proj_dim in hashes:
                row = compression_row(groups, family, num_hashes, proj_dim, draws=args.draws,
                                      num_tuples=args.num_tuples, num_draws=args.num_draws,
                                      models=tuple(args.models)) | {"layer": layer, "text": text}
                out["compression"].append(row)
                cells = "".join(f" {_fmt(row[f'predicted_{m}'])} | {100 * row[f'rel_error_{m}']:+.1f}% |"
                                for m in args.models)
                print(f"| {text or '-'} | {layer} | {size} | {len(groups)} | {family} | {num_hashes} | "
                      f"{row['d_prime']} | {_fmt(row['measured'])} |{cells} {_fmt(row['centroid_error'], 3)} |")
                sys.stdout.flush()
        print()
        for model in args.models:
            errors = [abs(r[f"rel_error_{model}"]) for r in out["compression"]]
            signed = [r[f"rel_error_{model}"] for r in out["compression"]]
            within = sum(e <= 0.10 for e in errors)
            print(f"{model}: |pred/meas - 1| median {100 * statistics.median(errors):.1f}%, worst "
                  f"{100 * max(errors):.1f}%, {within}/{len(errors)} rows within 10% (signed: "
                  f"{100 * min(signed):+.1f}% .. {100 * max(signed):+.1f}%)")
        for size in sorted({r["group_size"] for r in out["compression"]}):
            rows = [r for r in out["compression"] if r["group_size"] == size]
            times = "; ".join(f"{m} {statistics.median(r[f'seconds_per_group_{m}'] for r in rows):.2f} s"
                              for m in ("measured", *args.models))
            print(f"G = {size}: median wall-clock per group and hash ({args.draws} hash draws for measured): {times}")
    if "router" in args.parts:
        print("\n## compression of the real router's groups (route_locmoe top-1, no capacity limit)\n")
        print("| layer | E | family | L | d' | measured | predicted | pred/meas - 1 | model | centroid error | "
              "tokens per expert |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for layer, tokens in sorted(hidden.items()):
            for family, num_hashes, proj_dim in (("cross_polytope", 6, 16), ("cross_polytope", 2, 8),
                                                 ("hyperplane", 10, None)):
                for model in args.models:
                    row = router_row(tokens, args.experts[0], family, num_hashes, proj_dim, draws=args.draws,
                                     num_tuples=args.num_tuples, num_draws=args.num_draws,
                                     model=model) | {"layer": layer}
                    out["router"].append(row)
                    print(f"| {layer} | {args.experts[0]} | {family} | {num_hashes} | {row['d_prime']} | "
                          f"{_fmt(row['measured'])} | {_fmt(row['predicted'])} | {100 * row['rel_error']:+.1f}% | "
                          f"{model} | {_fmt(row['centroid_error'], 3)} | "
                          f"{min(row['group_sizes'])}..{max(row['group_sizes'])} |")
                    sys.stdout.flush()
    if "locmoe" in args.parts:
        print("\n## LocMoE: the bound from the measured delta vs the real router's drops\n")
        print("| layer | E | T | delta (q=0) | ec_min tokens (q=0) | factor at ec_min (q=0) | delta (q=0.01) | "
              "ec_min tokens (q=0.01) | factor at ec_min (q=0.01) | p_delta meas / uniform (q=0.01) | "
              "drops stop at factor | drops at factor 1.0 / 1.25 / 2.0 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for layer, tokens in sorted(hidden.items()):
            for experts in args.experts:
                row = locmoe_rows(tokens.astype(np.float64), experts) | {"layer": layer}
                out["locmoe"].append(row)
                b0, b1 = row["bound"]["0.0"], row["bound"]["0.01"]
                drops = {r["capacity_factor"]: r["dropped_fraction"] for r in row["sweep"]}
                print(f"| {layer} | {experts} | {len(tokens)} | {_fmt(b0['delta'], 3)} | {_fmt(b0['ec_min'], 3)} | "
                      f"{_fmt(b0['capacity_factor_at_bound'], 3)} | {_fmt(b1['delta'], 3)} | "
                      f"{_fmt(b1['ec_min'], 3)} | {_fmt(b1['capacity_factor_at_bound'], 3)} | "
                      f"{_fmt(b1['p_delta_measured'], 3)} / {_fmt(b1['p_delta_uniform'], 3)} | "
                      f"{_fmt(row['drops_stop_at_factor'], 3)} | "
                      f"{100 * drops[1.0]:.1f}% / {100 * drops[1.25]:.1f}% / {100 * drops[2.0]:.1f}% |")
    return _finish(args, out, start)


def _finish(args, out: dict, start: float) -> int:
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.json:
        from lshsim.io import write_text_atomically

        write_text_atomically(args.json, json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
