"""Both compression-rate predictors against lsh.py on synthetic clustered tokens (the slow test's cases).

    .venv/bin/python benchmarks/bench_compression_synthetic.py

clustered_tokens(1024, 128, K, noise, seed=0); measured = lsh.py, mean of 24 hash seeds; predicted by
`predicted_compression_rate` with model "tree" (default, 256 draws) and "components" (num_tuples 2000).
"""
from lshsim.analytic import collision
from lshsim.dispatch.lsh import LSHConfig, clustered_tokens

CASES = [("cross_polytope", 32, 0.2, 32, 6), ("cross_polytope", 16, 0.3, 16, 6), ("hyperplane", 16, 0.2, None, 8)]

for family, k, noise, dim, hashes in CASES:
    tokens = clustered_tokens(1024, 128, k, noise, seed=0)
    measured = collision.measured_compression_rate(tokens, LSHConfig(family=family, num_hashes=hashes, proj_dim=dim),
                                                   num_draws=24)
    tree = collision.predicted_compression_rate(tokens, dim, hashes, family=family)
    components = collision.predicted_compression_rate(tokens, dim, hashes, family=family, model="components",
                                                      num_tuples=2000)
    print(f"{family} K={k} noise={noise} d'={dim} L={hashes}: measured {measured.estimate:.4f} +- "
          f"{measured.stderr:.4f}; tree {tree.compression_rate:.4f} "
          f"({100 * (tree.compression_rate / measured.estimate - 1):+.1f}%); components "
          f"{components.compression_rate:.4f} ({100 * (components.compression_rate / measured.estimate - 1):+.1f}%)")
