"""Both compression-rate predictors against lsh.py on synthetic clustered tokens (the slow test's three cases).

    .venv/bin/python benchmarks/bench_compression_synthetic.py

clustered_tokens(1024, 128, K, noise, seed=0); measured = lsh.py, mean of 24 hash seeds; predicted by
`predicted_compression_rate` with model "tree" (default, 256 draws) and "components" (num_tuples 2000).
"""
from lshsim.analytic import collision
from lshsim.dispatch.lsh import LSHConfig, clustered_tokens
for family, k, noise, dim, hashes in [("cross_polytope", 32, 0.2, 32, 6), ("cross_polytope", 16, 0.3, 16, 6), ("hyperplane", 16, 0.2, None, 8)]:
    t = clustered_tokens(1024, 128, k, noise, seed=0)
    m = collision.measured_compression_rate(t, LSHConfig(family=family, num_hashes=hashes, proj_dim=dim), num_draws=24)
    tr = collision.predicted_compression_rate(t, dim, hashes, family=family)
    co = collision.predicted_compression_rate(t, dim, hashes, family=family, model="components", num_tuples=2000)
    print(f"{family} K={k} noise={noise} d'={dim} L={hashes}: measured {m.estimate:.4f} +- {m.stderr:.4f}; "
          f"tree {tr.compression_rate:.4f} ({100*(tr.compression_rate/m.estimate-1):+.1f}%); "
          f"components {co.compression_rate:.4f} ({100*(co.compression_rate/m.estimate-1):+.1f}%)")
