"""`lshsim collision`: LSH collision probability (hyperplane, cross-polytope) and its amplification.

The model: `lshsim.analytic.collision` (`collision_summary`, `collision_monte_carlo`,
`collision_probability`, `cross_polytope_collision_asymptotic`).
"""
from __future__ import annotations

from lshsim.checks import arg_finite_number, arg_non_negative_int, arg_positive_int
from lshsim.cli import _render
from lshsim.cli._render import SEED_HELP, arg_seed


def add_parser(subparsers):
    p = subparsers.add_parser("collision",
                              help="LSH collision probability (hyperplane, cross-polytope) and amplification",
                              description="Collision probability of one hash for unit vectors at a cosine, exact "
                                          "(hyperplane 1 - theta/pi; cross-polytope by numerical integration, exact "
                                          "for lsh.py's Gaussian projection with d = proj_dim), the asymptotic form, "
                                          "optional Monte Carlo, and amplification p^K, 1 - (1 - p^K)^L.")
    p.add_argument("--family", default="cross-polytope", help="cross-polytope | hyperplane (default cross-polytope)")
    p.add_argument("--dim", type=arg_positive_int, default=1024, help="projection dimension d' >= 2 (default 1024)")
    p.add_argument("--cos", type=arg_finite_number(-1.0, maximum=1.0), default=0.9,
                   help="cosine between the two vectors, in [-1, 1] (default 0.9)")
    p.add_argument("--hashes", type=arg_positive_int, default=6,
                   help="K >= 1 hash functions concatenated into one bucket id (default 6)")
    p.add_argument("--tables", type=arg_positive_int, default=1, help="L >= 1 independent tables (default 1)")
    p.add_argument("--monte-carlo", type=arg_non_negative_int, default=0, metavar="N",
                   help="also hash N random pairs (default 0: off; N * dim draws must take under an hour)")
    p.add_argument("--seed", type=arg_seed, default=0, help=f"random seed (default 0; {SEED_HELP})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png",
                   help="write the probability against cos to FILE.png (written whole; its folder is created if "
                        "missing, checked before any work)")
    return p


def run(args) -> int:
    from lshsim.io import prepare_output
    from lshsim.limits import estimate_monte_carlo, refuse_if_too_slow

    prepare_output(args.plot, "--plot")
    if args.monte_carlo:
        refuse_if_too_slow(f"--monte-carlo {args.monte_carlo} at --dim {args.dim}",
                           estimate_monte_carlo(args.monte_carlo, args.dim, draws_per_sample=2),
                           hint="lower --monte-carlo")
    from lshsim.analytic import collision

    result = collision.collision_summary(args.family, args.dim, args.cos, hashes=args.hashes, tables=args.tables)
    if args.monte_carlo:
        result["monte_carlo"] = collision.collision_monte_carlo(args.family, args.dim, args.cos, args.monte_carlo,
                                                                seed=args.seed).as_dict()
    return _render.emit(args, result, render, plot=lambda: _plot(args, collision))


def _plot(args, collision) -> None:
    import numpy as np

    family = collision.canonical_family(args.family)
    cosines = np.linspace(-0.2, 1.0, 41)
    exact = np.asarray(collision.collision_probability(family, args.dim, cosines))
    data = {"cos": [], "probability": [], "curve": []}
    curves = [("one hash", exact), (f"{args.hashes} concatenated", exact ** args.hashes)]
    if family == "cross_polytope":
        curves.append(("one hash, asymptotic",
                       np.asarray(collision.cross_polytope_collision_asymptotic(args.dim, cosines))))
    for label, values in curves:
        data["cos"] += cosines.tolist()
        data["probability"] += values.tolist()
        data["curve"] += [label] * cosines.size
    _render.line_plot(args.plot, data, "cos", "probability", "curve",
                      f"{args.family} LSH collision probability, d={args.dim}", "cosine between the vectors",
                      "Pr[same bucket]", marker=(args.cos, f"cos={args.cos}"))


def render(result: dict) -> None:
    """The table of a `collision_summary` (with its Monte Carlo estimate, if any)."""
    g = _render.g
    rows = [["one hash (exact)", g(result["probability"], 6)]]
    if result["asymptotic"] is not None:
        rows.append(["one hash, asymptotic d^(-(1-cos)/(1+cos))", g(result["asymptotic"], 6)])
    if "monte_carlo" in result:
        mc = result["monte_carlo"]
        rows.append([f"one hash, Monte Carlo (N={mc['num_samples']})",
                     f"{g(mc['estimate'], 6)} ± {g(mc['stderr'], 2)}"])
    rows += [[f"K={result['hashes']} concatenated: p^K", g(result["concatenated"], 6)],
             [f"L={result['tables']} tables: 1 - (1 - p^K)^L", g(result["amplified"], 6)]]
    _render.table(f"{result['family']} collision, d={result['dim']}, cos={result['cos']}",
                  ["quantity", "probability"], rows)
