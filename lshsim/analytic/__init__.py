"""Analytic models (numpy/scipy, vectorised): capacity bounds, LSH collisions, all-to-all costs.

* `capacity`: LocMoE Theorem 1 (p_delta exact / erfc / exponential, ec_min in tokens per expert, the
  capacity factor at which a batch reaches it, Monte Carlo), expected
  drops at capacity (exact binomial and named approximations, a sampler on the real router),
  `estimate_delta` from real hidden states.
* `collision`: hyperplane and cross-polytope collision probabilities (integral, Monte Carlo,
  asymptotic), amplification, expected buckets and compression rates of clustered tokens.
* `comm`: alpha-beta all-to-all costs (direct, pairwise, hierarchical, group-wise), LSH-MoE's
  ratio model and the break-even compression rate.

Torch is imported lazily, only by the functions that call `lshsim.dispatch` (samplers, measured rates).
"""
from lshsim.analytic._common import MonteCarloEstimate
from lshsim.analytic.capacity import (OVERFLOW_METHODS, DeltaEstimate, capacity_factor_at_bound,
                                      capacity_from_factor, ec_min,
                                      estimate_delta, expected_dropped_fraction, expected_overflow, p_delta,
                                      p_delta_erfc, p_delta_exp_bound, p_delta_forms, p_delta_monte_carlo,
                                      sample_dropped_fraction, topk_inclusion_probabilities)
from lshsim.analytic.collision import (BucketPrediction, amplify, asymptotic_error_table,
                                       clustered_compression_rate, clusters_from_tokens, collision_probability,
                                       cross_polytope_collision_asymptotic, cross_polytope_collision_monte_carlo,
                                       cross_polytope_collision_probability, expected_buckets_clusters,
                                       hyperplane_collision_monte_carlo, hyperplane_collision_probability,
                                       measured_compression_rate, predicted_compression_rate, TokenTree,
                                       token_tree, expected_buckets_tree)
from lshsim.analytic.comm import (A2A_ALGORITHMS, ClusterParams, a2a_time, a2a_time_direct,
                                  a2a_time_direct_multinode, a2a_time_groupwise, a2a_time_hierarchical,
                                  a2a_time_pairwise, breakeven_compression_rate, egress_ingress,
                                  lsh_moe_comm_compute_ratio, lsh_step_time_s, random_traffic, uniform_traffic)

__all__ = [
    "MonteCarloEstimate",
    # capacity
    "p_delta", "p_delta_erfc", "p_delta_exp_bound", "p_delta_forms", "ec_min", "p_delta_monte_carlo",
    "DeltaEstimate", "estimate_delta", "capacity_from_factor", "capacity_factor_at_bound",
    "topk_inclusion_probabilities",
    "expected_overflow", "expected_dropped_fraction", "sample_dropped_fraction", "OVERFLOW_METHODS",
    # collision
    "hyperplane_collision_probability", "hyperplane_collision_monte_carlo", "cross_polytope_collision_probability",
    "cross_polytope_collision_asymptotic", "cross_polytope_collision_monte_carlo", "asymptotic_error_table",
    "collision_probability", "amplify", "BucketPrediction", "expected_buckets_clusters", "clusters_from_tokens",
    "predicted_compression_rate", "clustered_compression_rate", "measured_compression_rate", "TokenTree",
    "token_tree", "expected_buckets_tree",
    # comm
    "ClusterParams", "A2A_ALGORITHMS", "a2a_time", "egress_ingress", "a2a_time_direct", "a2a_time_direct_multinode",
    "a2a_time_pairwise", "a2a_time_hierarchical", "a2a_time_groupwise", "uniform_traffic", "random_traffic",
    "lsh_moe_comm_compute_ratio", "breakeven_compression_rate", "lsh_step_time_s",
]
