"""LSH-MoE compression and LocMoE's capacity bound on REAL hidden states (all-MiniLM-L6-v2, Lee corpus).

    .venv/bin/python benchmarks/bench_real_tokens.py                       # the committed sample (layers 3, 5)
    .venv/bin/python benchmarks/bench_real_tokens.py --source extract --layers 1,2,4,6 --text lee-test
                                                                           # held out (needs lshsim[real])
    .venv/bin/python benchmarks/bench_real_tokens.py --json out.json       # also every row as JSON

Part 1, compression. Per layer, per group size G (tokens per (rank, expert) group) and per hash
(family, L = num_hashes, d' = proj_dim): `--groups` random groups of G tokens (without
replacement); on each, the measured rate (`lshsim.analytic.collision.measured_compression_rate`:
lsh.py's real hashing, mean over `--draws` seeds), the centroid error (`lsh.centroid_error`,
||x - c|| / ||x||, seed 0) and the predicted rate (`predicted_compression_rate(group, d', L,
family=...)`, the documented call: cluster at cos > 0.5, exchangeable-cluster model). The table
shows the mean over groups and the prediction's error, pred / meas - 1. "router" groups: the
tokens routed by the real `route_locmoe` (GrAP gate, top-1, E experts, no capacity limit),
compressed with group = expert, predicted per expert and summed.

Part 2, LocMoE. Per layer and number of experts E: `estimate_delta(tokens, grap_weights(d, E))`
at quantiles 0 (the paper's maximal deviation) and 0.01, `ec_min(E, d, delta)` and the implied
capacity factor E * ec_min = 1 / p_delta; then `route_locmoe(k=1)` on the same tokens at a sweep
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

from lshsim.analytic.capacity import capacity_from_factor, ec_min, estimate_delta
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


def compression_row(groups: list[np.ndarray], family: str, num_hashes: int, proj_dim, *, draws: int = 4,
                    num_tuples: int = 400) -> dict:
    """Measured and predicted compression rate and centroid error over a list of (G, d) token groups."""
    measured, predicted, errors = [], [], []
    for tokens in groups:
        config = _config(family, num_hashes, proj_dim)
        measured.append(measured_compression_rate(tokens, config, num_draws=draws).estimate)
        x = torch.as_tensor(tokens, dtype=torch.float32)
        errors.append(centroid_error(x, compress(x, torch.zeros(len(x), dtype=torch.int64), config)))
        predicted.append(predicted_compression_rate(tokens, proj_dim, num_hashes, family=family,
                                                    num_tuples=num_tuples).compression_rate)
    meas, pred = float(np.mean(measured)), float(np.mean(predicted))
    return {"family": family, "L": num_hashes, "d_prime": proj_dim if family == "cross_polytope" else 1,
            "measured": meas, "predicted": pred, "rel_error": pred / meas - 1.0,
            "centroid_error": float(np.mean(errors)), "groups": len(groups), "group_size": len(groups[0])}


def random_groups(tokens: np.ndarray, size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` disjoint random groups of `size` rows (as many as fit)."""
    order = np.random.default_rng(seed).permutation(len(tokens))
    count = min(count, len(tokens) // size)
    return [tokens[order[i * size:(i + 1) * size]].astype(np.float64) for i in range(count)]


def router_row(tokens: np.ndarray, num_experts: int, family: str, num_hashes: int, proj_dim, *,
               draws: int = 4, num_tuples: int = 400) -> dict:
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
            buckets += predicted_compression_rate(members, proj_dim, num_hashes, family=family,
                                                  num_tuples=num_tuples).expected_buckets
    meas, pred = float(np.mean(rates)), buckets / len(tokens)
    return {"family": family, "L": num_hashes, "d_prime": proj_dim if family == "cross_polytope" else 1,
            "measured": meas, "predicted": pred, "rel_error": pred / meas - 1.0, "centroid_error": error,
            "experts": num_experts, "group_sizes": sizes}


def locmoe_rows(tokens: np.ndarray, num_experts: int, capacity_factors=CAPACITY_FACTORS) -> dict:
    """LocMoE's bound from the measured delta, against the real router's drops over a capacity-factor sweep."""
    d = tokens.shape[1]
    weights = grap_weights(d, num_experts, dtype=torch.float64).numpy()
    bound = {}
    for quantile in (0.0, 0.01):
        est = estimate_delta(tokens, weights, quantile=quantile)
        valid = 0 < est.delta < 1
        value = float(ec_min(num_experts, d, est.delta)) if valid else float("nan")
        bound[str(quantile)] = {"delta": est.delta, "ec_min": value, "implied_capacity_factor": num_experts * value,
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("sample", "extract"), default="sample")
    parser.add_argument("--layers", type=lambda s: [int(v) for v in s.split(",")], default=None)
    parser.add_argument("--text", default="lee-test", help="--source extract: text source (default lee-test)")
    parser.add_argument("--tokens", type=int, default=2048, help="--source extract: tokens (default 2048)")
    parser.add_argument("--group-sizes", type=lambda s: [int(v) for v in s.split(",")], default=list(GROUP_SIZES))
    parser.add_argument("--groups", type=int, default=3, help="random groups per size (default 3)")
    parser.add_argument("--draws", type=int, default=4, help="hash seeds per measured rate (default 4)")
    parser.add_argument("--experts", type=lambda s: [int(v) for v in s.split(",")], default=[8, 16])
    parser.add_argument("--num-tuples", type=int, default=400, help="predictor Monte Carlo size (default 400)")
    parser.add_argument("--json", metavar="FILE", help="write every row as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    hidden, source = _load(args)
    print(f"# real tokens: {source}; layers {sorted(hidden)}; {next(iter(hidden.values())).shape[0]} tokens")
    out = {"source": source, "compression": [], "router": [], "locmoe": []}
    print("\n## compression: measured vs predicted (random groups)\n")
    print("| layer | G | family | L | d' | measured | predicted | pred/meas - 1 | centroid error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer, tokens in sorted(hidden.items()):
        for size in args.group_sizes:
            groups = random_groups(tokens, size, args.groups, seed=layer)
            for family, num_hashes, proj_dim in HASHES:
                row = compression_row(groups, family, num_hashes, proj_dim, draws=args.draws,
                                      num_tuples=args.num_tuples) | {"layer": layer}
                out["compression"].append(row)
                print(f"| {layer} | {size} | {family} | {num_hashes} | {row['d_prime']} | {_fmt(row['measured'])} | "
                      f"{_fmt(row['predicted'])} | {100 * row['rel_error']:+.1f}% | {_fmt(row['centroid_error'], 3)} |")
            sys.stdout.flush()
    errors = [abs(r["rel_error"]) for r in out["compression"]]
    within = sum(e <= 0.10 for e in errors)
    print(f"\n|pred/meas - 1|: median {100 * statistics.median(errors):.1f}%, worst {100 * max(errors):.1f}%, "
          f"{within}/{len(errors)} rows within 10%")
    print("\n## compression of the real router's groups (route_locmoe top-1, no capacity limit)\n")
    print("| layer | E | family | L | d' | measured | predicted | pred/meas - 1 | centroid error | tokens per expert |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for layer, tokens in sorted(hidden.items()):
        for family, num_hashes, proj_dim in (("cross_polytope", 6, 16), ("cross_polytope", 2, 8),
                                             ("hyperplane", 10, None)):
            row = router_row(tokens, args.experts[0], family, num_hashes, proj_dim, draws=args.draws,
                             num_tuples=args.num_tuples) | {"layer": layer}
            out["router"].append(row)
            print(f"| {layer} | {args.experts[0]} | {family} | {num_hashes} | {row['d_prime']} | "
                  f"{_fmt(row['measured'])} | {_fmt(row['predicted'])} | {100 * row['rel_error']:+.1f}% | "
                  f"{_fmt(row['centroid_error'], 3)} | {min(row['group_sizes'])}..{max(row['group_sizes'])} |")
    print("\n## LocMoE: the bound from the measured delta vs the real router's drops\n")
    print("| layer | E | delta (q=0) | E*ec_min (q=0) | delta (q=0.01) | E*ec_min (q=0.01) | p_delta meas / uniform "
          "(q=0.01) | drops stop at factor | drops at factor 1.0 / 1.25 / 2.0 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer, tokens in sorted(hidden.items()):
        for experts in args.experts:
            row = locmoe_rows(tokens.astype(np.float64), experts) | {"layer": layer}
            out["locmoe"].append(row)
            b0, b1 = row["bound"]["0.0"], row["bound"]["0.01"]
            drops = {r["capacity_factor"]: r["dropped_fraction"] for r in row["sweep"]}
            print(f"| {layer} | {experts} | {_fmt(b0['delta'], 3)} | {_fmt(b0['implied_capacity_factor'], 3)} | "
                  f"{_fmt(b1['delta'], 3)} | {_fmt(b1['implied_capacity_factor'], 3)} | "
                  f"{_fmt(b1['p_delta_measured'], 3)} / {_fmt(b1['p_delta_uniform'], 3)} | "
                  f"{_fmt(row['drops_stop_at_factor'], 3)} | "
                  f"{100 * drops[1.0]:.1f}% / {100 * drops[1.25]:.1f}% / {100 * drops[2.0]:.1f}% |")
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.json:
        from lshsim.io import write_text_atomically

        write_text_atomically(args.json, json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
