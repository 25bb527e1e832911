"""`lshsim capacity`: LocMoE's minimum expert capacity (Theorem 1) and the expected drops.

The model: `lshsim.analytic.capacity` (`ec_min_forms`, `p_delta_monte_carlo`, `skewed_popularity`,
`drop_estimates`, `sample_dropped_fraction`, `ec_min_grid`).
"""
from __future__ import annotations

from lshsim.checks import CAPACITY_FACTOR_MAX, arg_finite_number, arg_non_negative_int, arg_positive_int
from lshsim.cli import _render
from lshsim.cli._render import SEED_HELP, arg_seed


def add_parser(subparsers):
    p = subparsers.add_parser("capacity", help="LocMoE minimum expert capacity (Theorem 1) and expected drops",
                              description="p_delta (exact incomplete beta, the paper's erfc form, the exponential "
                                          "bound), ec_min >= 1/(n p_delta) tokens per expert (LocMoE's lower bound on "
                                          "an expert's capacity), optionally a Monte Carlo check on the sphere, "
                                          "and, with --tokens, the capacity factor at which a batch's capacity "
                                          "reaches ec_min and the expected dropped fraction at a capacity factor.")
    p.add_argument("--experts", type=arg_positive_int, default=16, help="number of experts n >= 1 (default 16)")
    p.add_argument("--dim", type=arg_positive_int, default=4096, help="token dimension d >= 2 (default 4096)")
    p.add_argument("--delta", type=arg_finite_number(0.0, exclusive=True, maximum=1.0), default=0.03,
                   help="cosine threshold delta in (0, 1) (default 0.03)")
    p.add_argument("--monte-carlo", type=arg_non_negative_int, default=0, metavar="N",
                   help="also estimate p_delta from N uniform points on the sphere (default 0: off; N * dim "
                        "draws must take under an hour)")
    p.add_argument("--tokens", type=arg_non_negative_int, default=0,
                   help="tokens per rank T: also print the capacity factor at which the capacity reaches ec_min and "
                        "the expected dropped fraction (default 0: off)")
    p.add_argument("--k", type=arg_positive_int, default=2,
                   help="choices per token for the drop estimate and the factor at ec_min (default 2)")
    p.add_argument("--capacity-factor", type=arg_finite_number(0.0, exclusive=True, maximum=CAPACITY_FACTOR_MAX),
                   default=None,
                   help="capacity factor for drops, in (0, 1e6] (default 1.25; needs --tokens)")
    p.add_argument("--skew", type=arg_finite_number(0.0), default=None,
                   help="expert popularity p ~ Dirichlet, p^skew normalised (0 = uniform; default 0; needs --tokens)")
    p.add_argument("--sample", type=arg_non_negative_int, default=0, metavar="S",
                   help="also measure drops with lshsim.dispatch.route_topk over S >= 2 batches (default 0: off; "
                        "S * T tokens are routed in memory)")
    p.add_argument("--seed", type=arg_seed, default=0, help=f"random seed (default 0; {SEED_HELP})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png",
                   help="write ec_min against delta (exact, erfc, exp) to FILE.png (written whole; its folder is "
                        "created if missing, checked before any work)")
    return p


def check_sizes(args) -> None:
    """Refuse, before any work, a Monte Carlo, a sample or a popularity too large for this machine
    (lshsim.limits)."""
    from lshsim.limits import estimate_matrix, estimate_monte_carlo, estimate_route, refuse_if_too_large, \
        refuse_if_too_slow

    if args.monte_carlo:
        refuse_if_too_slow(f"--monte-carlo {args.monte_carlo} at --dim {args.dim}",
                           estimate_monte_carlo(args.monte_carlo, args.dim), hint="lower --monte-carlo")
    if args.tokens and args.tokens * args.k * max(args.capacity_factor, 1.0) >= 2 ** 62:
        raise ValueError(f"--tokens {args.tokens} x --k {args.k} x --capacity-factor {args.capacity_factor:g} "
                         f"token slots do not fit a 64-bit count (at most 2^62): lower --tokens")
    if args.tokens:
        refuse_if_too_large(f"the popularity of --experts {args.experts}", estimate_matrix(args.experts, 1),
                            hint="lower --experts")
    if args.sample == 1:   # one batch has no spread to measure (the sampler takes 2 or more): before any work
        raise ValueError("--sample 1: the sampled drop rate needs S >= 2 batches (0 leaves it off)")
    if args.tokens and args.sample:
        estimate = estimate_route(args.sample * args.tokens, 0, args.experts, args.k) \
            + estimate_matrix(args.sample * args.tokens, args.experts, copies=3)
        refuse_if_too_large(f"--sample {args.sample} batches of --tokens {args.tokens}", estimate,
                            hint="lower --sample or --tokens")


def run(args) -> int:
    from lshsim.io import prepare_output

    given = [f"{flag} {value:g}" for flag, value in (("--capacity-factor", args.capacity_factor), ("--skew", args.skew))
             if value is not None] + ([f"--sample {args.sample}"] if args.sample else [])
    if given and not args.tokens:
        raise ValueError(f"{', '.join(given)}: the drop estimate {'they set' if len(given) > 1 else 'it sets'} "
                         f"needs --tokens T (tokens per rank)")
    args.capacity_factor = 1.25 if args.capacity_factor is None else args.capacity_factor
    args.skew = 0.0 if args.skew is None else args.skew
    prepare_output(args.plot, "--plot")
    check_sizes(args)
    from lshsim.analytic import capacity

    n = args.experts
    result = {"experts": n, "dim": args.dim, "delta": args.delta,
              "forms": capacity.ec_min_forms(n, args.dim, args.delta, num_tokens=args.tokens or None, k=args.k)}
    if args.monte_carlo:
        result["monte_carlo"] = capacity.p_delta_monte_carlo(args.dim, args.delta, args.monte_carlo,
                                                             seed=args.seed).as_dict()
    if args.tokens:
        import numpy as np

        with np.errstate(all="ignore"):
            popularity = capacity.skewed_popularity(n, args.skew, seed=args.seed)
        if not (np.isfinite(popularity).all() and (popularity > 0).all()):
            raise ValueError(f"--skew {args.skew:g}: q^skew underflows to 0 for some experts (q ~ Dirichlet(1) over "
                             f"{n} experts, seed {args.seed}): lower --skew")
        cap, drops = capacity.drop_estimates(args.tokens, args.k, args.capacity_factor, popularity)
        result["drops"] = {"tokens": args.tokens, "k": args.k, "capacity_factor": args.capacity_factor,
                           "capacity": cap, "capacity_meets_ec_min": bool(cap >= result["forms"]["exact"]["ec_min"]),
                           "skew": args.skew, "expected_dropped_fraction": drops}
        if args.sample:
            result["drops"]["sampled"] = capacity.sample_dropped_fraction(
                args.tokens, args.k, args.capacity_factor, popularity, num_samples=args.sample,
                seed=args.seed).as_dict()
    return _render.emit(args, result, render, plot=lambda: _plot(args, capacity))


def _plot(args, capacity) -> None:
    import numpy as np

    n = args.experts
    deltas = capacity.ec_min_grid(n, args.dim, args.delta)
    data = {"delta": [], "ec_min": [], "form": []}
    for form, label in (("exact", "exact (incomplete beta)"), ("erfc", "erfc (paper)"), ("exp", "exp bound")):
        values = capacity.ec_min(n, args.dim, deltas, form)
        keep = np.isfinite(values)
        data["delta"] += deltas[keep].tolist()
        data["ec_min"] += values[keep].tolist()
        data["form"] += [label] * int(keep.sum())
    _render.line_plot(args.plot, data, "delta", "ec_min", "form",
                      f"LocMoE minimum expert capacity, n={n}, d={args.dim}", "delta (cosine threshold)",
                      "ec_min >= 1 / (n p_delta), tokens per expert", logx=True, logy=True,
                      marker=(args.delta, f"delta={args.delta}"))


def render(result: dict) -> None:
    """Tables of the command's result: the three forms (and Monte Carlo), then the drops."""
    g = _render.g
    n = result["experts"]
    at_bound = "capacity_factor_at_bound" in result["forms"]["exact"]
    rows = [[form, g(v["p_delta"]), g(v["ec_min"])] + ([g(v["capacity_factor_at_bound"])] if at_bound else [])
            + ["-" if form == "exact" else f"{100 * v['rel_err_vs_exact']:+.2f}%"]
            for form, v in result["forms"].items()]
    if "monte_carlo" in result:
        mc = result["monte_carlo"]
        bound = 1 / (n * mc["estimate"]) if mc["estimate"] > 0 else float("inf")
        factor = bound * n / (result["drops"]["tokens"] * result["drops"]["k"]) if at_bound else None
        rows.append([f"monte carlo (N={mc['num_samples']})", f"{g(mc['estimate'])} ± {g(mc['stderr'], 2)}", g(bound)]
                    + ([g(factor)] if at_bound else [])
                    + [f"95% CI [{g(mc['ci_low'])}, {g(mc['ci_high'])}]"])
    columns = ["form", "p_delta", "ec_min (tokens per expert)"] + (["capacity factor at ec_min"] if at_bound else [])
    title = f"LocMoE Theorem 1: n={n} experts, d={result['dim']}, delta={result['delta']}"
    if at_bound:
        title += f", T={result['drops']['tokens']} tokens, k={result['drops']['k']}"
    _render.table(title, columns + ["vs exact"], rows)
    _render.console().print("ec_min is a number of tokens per expert (LocMoE's definition, Theorem 1 and App. A.3): "
                            "a lower bound on an expert's capacity, not the capacity a run uses."
                            + (" The factor at ec_min is ec_min n / (T k): from it up, ceil(factor T k / n) "
                               ">= ec_min." if at_bound else ""))
    if "drops" in result:
        drops = result["drops"]
        rows = [[method, f"{100 * value:.4f}%"] for method, value in drops["expected_dropped_fraction"].items()]
        if "sampled" in drops:
            s = drops["sampled"]
            rows.append([f"route_topk, {s['num_samples']} batches",
                         f"{100 * s['estimate']:.4f}% ± {100 * s['stderr']:.4f}%"])
        meets = ">=" if drops["capacity_meets_ec_min"] else "<"
        _render.table(f"Expected dropped fraction: T={drops['tokens']}, k={drops['k']}, E={n}, "
                      f"C={drops['capacity']} (factor {drops['capacity_factor']}; C {meets} ec_min), "
                      f"skew={drops['skew']}",
                      ["model", "dropped"], rows)
