"""Speed and accuracy of lshsim.analytic on the CPU.

Targets: 1e6 (d, cos) points of the hyperplane formula and of the erfc form of p_delta in
under 1 s; one cross-polytope probability at d = 1024 to 1e-4 absolute in under 1 s. Also timed:
the exact p_delta (incomplete beta), the closed-form all-to-all on a batch of traffic matrices, and
the cluster compression models (components and tree) against lsh.py's measured rate. Times are medians of `--repeats`
runs after one warm-up, input validation included.

The high-precision reference for the cross-polytope probability is an independent route: adaptive
2-D quadrature (scipy dblquad, epsabs 1e-11) of the same integral with the rectangle probability
q(x, y) from a 200-node 1-D integral of normal CDFs instead of Owen's T.

    .venv/bin/python benchmarks/bench_analytic.py [--points 1000000] [--repeats 5] [--json] [--skip-compression]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
from scipy import integrate, special

from lshsim.analytic import capacity, collision, comm


def _time_s(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def reference_cross_polytope(d: int, alpha: float) -> float:
    """High-precision reference: dblquad of 2d phi_alpha q^(d-1), q by a 200-node 1-D integral."""
    s = np.sqrt(1 - alpha * alpha)
    t, w = np.polynomial.legendre.leggauss(200)

    def rectangle(x, y):
        u = x * t
        return np.sum(x * w * np.exp(-u * u / 2) / np.sqrt(2 * np.pi)
                      * (special.ndtr((y - alpha * u) / s) - special.ndtr((-y - alpha * u) / s)))

    def integrand(y, x):
        return np.exp(-(x * x - 2 * alpha * x * y + y * y) / (2 * s * s)) / (2 * np.pi * s) * rectangle(x, y) ** (d - 1)

    return 2 * d * integrate.dblquad(integrand, 0, 9, 0, 9, epsabs=1e-11, epsrel=1e-9)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-compression", action="store_true", help="skip the (slower) compression check")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    d = rng.integers(2, 8192, args.points)  # (P,)
    cos = rng.uniform(-1, 1, args.points)  # (P,)
    delta = rng.uniform(0.001, 0.5, args.points)  # (P,)
    results: dict = {"machine": platform.processor() or platform.machine(), "points": args.points}
    results["hyperplane_s"] = _time_s(lambda: collision.hyperplane_collision_probability(cos), args.repeats)
    results["p_delta_erfc_s"] = _time_s(lambda: capacity.p_delta_erfc(d, delta), args.repeats)
    results["p_delta_exact_s"] = _time_s(lambda: capacity.p_delta(d, delta), args.repeats)

    rows = []
    for alpha in (0.5, 0.8, 0.9, 0.95, 0.99):
        elapsed = _time_s(lambda: collision.cross_polytope_collision_probability(1024, alpha), args.repeats)
        value = collision.cross_polytope_collision_probability(1024, alpha)
        reference = reference_cross_polytope(1024, alpha)
        asymptotic = float(collision.cross_polytope_collision_asymptotic(1024, alpha))
        rows.append({"cos": alpha, "probability": value, "reference": reference, "abs_error": abs(value - reference),
                     "time_s": elapsed, "asymptotic": asymptotic})
    results["cross_polytope_d1024"] = rows

    traffic = np.stack([comm.random_traffic(64, 256e6, seed=s) for s in range(100)])  # (100, 64, 64)
    cluster = comm.ClusterParams(gpus_per_node=8, intra_bandwidth_Bps=300e9, inter_bandwidth_Bps=25e9, alpha_s=10e-6)
    results["a2a_100x64_s"] = {name: _time_s(lambda name=name: comm.a2a_time(name, traffic, cluster), args.repeats)
                               for name in comm.A2A_ALGORITHMS}

    if not args.skip_compression:
        from lshsim.dispatch.lsh import LSHConfig, clustered_tokens

        tokens = clustered_tokens(1024, 128, 32, 0.2, seed=0)
        start = time.perf_counter()
        measured = collision.measured_compression_rate(tokens, LSHConfig(num_hashes=6, proj_dim=32), num_draws=24)
        measured_s = time.perf_counter() - start
        start = time.perf_counter()
        predicted = collision.predicted_compression_rate(tokens, 32, 6, model="components", num_tuples=2000)
        predicted_s = time.perf_counter() - start
        start = time.perf_counter()
        tree = collision.predicted_compression_rate(tokens, 32, 6)  # the default: the nested (tree) model
        tree_s = time.perf_counter() - start
        results["compression"] = {"config": "clustered_tokens(1024, 128, 32, 0.2), cross-polytope d'=32, L=6",
                                  "measured": measured.estimate, "measured_stderr": measured.stderr,
                                  "predicted": predicted.compression_rate, "predicted_stderr": predicted.stderr,
                                  "relative_error": predicted.compression_rate / measured.estimate - 1,
                                  "measured_s": measured_s, "predicted_s": predicted_s,
                                  "predicted_tree": tree.compression_rate, "predicted_tree_stderr": tree.stderr,
                                  "relative_error_tree": tree.compression_rate / measured.estimate - 1,
                                  "predicted_tree_s": tree_s}

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"machine: {results['machine']}; {args.points:,} points; median of {args.repeats} runs")
    print(f"{'formula':<44}{'time (s)':>12}{'points/s':>14}")
    for label, key in (("hyperplane 1 - theta/pi", "hyperplane_s"), ("p_delta erfc form", "p_delta_erfc_s"),
                       ("p_delta exact (incomplete beta)", "p_delta_exact_s")):
        print(f"{label:<44}{results[key]:>12.4f}{args.points / results[key]:>14.3g}")
    print(f"\ncross-polytope, d = 1024 (reference: adaptive dblquad)")
    print(f"{'cos':>6}{'integral':>14}{'reference':>14}{'|error|':>11}{'time (s)':>10}{'asymptotic':>12}")
    for row in rows:
        print(f"{row['cos']:>6}{row['probability']:>14.9f}{row['reference']:>14.9f}{row['abs_error']:>11.1e}"
              f"{row['time_s']:>10.4f}{row['asymptotic']:>12.5f}")
    print("\nall-to-all closed forms, 100 random (64, 64) traffic matrices at once")
    for name, value in results["a2a_100x64_s"].items():
        print(f"  {name:<20}{value:>10.4f} s")
    if "compression" in results:
        c = results["compression"]
        print(f"\ncompression rate, {c['config']}:\n  measured (lsh.py, 24 seeds) {c['measured']:.4f} ± "
              f"{c['measured_stderr']:.4f} in {c['measured_s']:.1f} s; predicted (components) {c['predicted']:.4f} ± "
              f"{c['predicted_stderr']:.4f} in {c['predicted_s']:.1f} s, relative error "
              f"{100 * c['relative_error']:+.1f}%; predicted (tree) {c['predicted_tree']:.4f} ± "
              f"{c['predicted_tree_stderr']:.4f} in {c['predicted_tree_s']:.1f} s, relative error "
              f"{100 * c['relative_error_tree']:+.1f}%")


if __name__ == "__main__":
    main()
