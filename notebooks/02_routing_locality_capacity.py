# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Routing, locality and expert capacity
#
# Every MoE layer decides, per token, which expert(s) compute it; with expert parallelism that
# decision *is* the all-to-all's traffic matrix. This notebook uses the routers of
# `lshsim.dispatch` (the same code the simulator and the executor run) to show
#
# 1. how much of the dispatch traffic crosses nodes under top-k (GShard) routing, and how LocMoE's
#    own-node preference turns it into intra-node traffic;
# 2. what capacity does: the fraction of choices dropped at capacity C = ceil(f T k / E), predicted
#    by `lshsim.analytic.capacity` and measured on the real router;
# 3. LocMoE's Theorem 1: the minimum expert capacity from the angular deviation delta, in its
#    exact (incomplete beta) and asymptotic (erfc) forms.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from lshsim.analytic import (capacity_factor_at_bound, capacity_from_factor, ec_min, expected_dropped_fraction,
                             p_delta, p_delta_erfc, sample_dropped_fraction)
from lshsim.dispatch import RouterConfig, contiguous_placement, route
from lshsim.dispatch.synthetic import synthetic_router_inputs

notebook_start = time.perf_counter()
sns.set_theme(style="whitegrid")

# %% [markdown]
# ## 1. Where the bytes go: top-k vs LocMoE
#
# 16 experts on 8 GPUs in 2 nodes of 4; 2,048 tokens per GPU, d_model = 1024 in bf16. With
# uniform routing a token's expert is on another node with probability 1/2, so about half of the
# dispatch bytes cross the (slow) inter-node network. LocMoE adds a bonus to the GrAP score of
# experts on the token's own node.

# %%
placement = contiguous_placement(num_experts=16, world_size=8, gpus_per_node=4)
inputs = synthetic_router_inputs(num_tokens_per_rank=2048, world_size=8, d_model=1024, num_experts=16, seed=0)
bytes_per_token = 1024 * 2
rows = []
for name, config in [("topk k=1", RouterConfig("topk", k=1, capacity_factor=None)),
                     ("locmoe bonus 0", RouterConfig("locmoe", k=1, capacity_factor=None, locality_bonus=0.0)),
                     ("locmoe bonus 0.05", RouterConfig("locmoe", k=1, capacity_factor=None, locality_bonus=0.05)),
                     ("locmoe bonus 1", RouterConfig("locmoe", k=1, capacity_factor=None, locality_bonus=1.0))]:
    plan = route(config, placement, logits=inputs.logits, hidden=inputs.hidden, token_rank=inputs.token_rank)
    total = plan.traffic_matrix(bytes_per_token).sum().item()
    rows.append({"router": name, "local": plan.local_bytes(bytes_per_token) / total,
                 "intra-node": (plan.remote_bytes(bytes_per_token) - plan.inter_node_bytes(bytes_per_token)) / total,
                 "inter-node": plan.inter_node_bytes(bytes_per_token) / total,
                 "max expert load": int(plan.tokens_per_expert.max())})
for row in rows:
    print(f"{row['router']:18s} local {row['local']:.2f}  intra-node {row['intra-node']:.2f}  "
          f"inter-node {row['inter-node']:.2f}  busiest expert {row['max expert load']} tokens")

# %%
fig, ax = plt.subplots(figsize=(7, 3))
left = np.zeros(len(rows))
for part, colour in (("local", "#4c72b0"), ("intra-node", "#55a868"), ("inter-node", "#c44e52")):
    values = np.array([row[part] for row in rows])
    ax.barh([row["router"] for row in rows], values, left=left, color=colour, label=part)
    left += values
ax.set_xlabel("share of dispatch bytes")
ax.legend(loc="lower right")
ax.set_title("Dispatch traffic by distance")
fig.tight_layout()

# %% [markdown]
# The bonus trades locality against balance: with a large bonus every token stays on its node,
# and the experts of a node share its tokens only, so a skewed node overloads its experts. In
# the paper the auxiliary and locality losses (`aux_loss`, `locality_loss`) keep that in check
# during training.
#
# ## 2. Drops at capacity
#
# Capacity C = ceil(f T k / E) slots per (rank, expert). With T = 4,096 tokens, top-2 and 16
# experts of equal popularity, the expected dropped fraction is sum_e E[(N_e - C)^+] / (T k),
# N_e ~ Binomial(T, q_e) (`expected_dropped_fraction`). Below, the prediction against the real
# router (`sample_dropped_fraction`, 8 batches): for uniform experts they agree within the
# sampling error; for the skewed popularity the prediction runs about 0.2-0.3 percentage points
# low (a few standard errors); the cause is not established (candidates: the numerically
# integrated inclusion probabilities q_e of the Gumbel-top-k model, float32 logits).

# %%
factors = np.array([0.8, 0.9, 1.0, 1.1, 1.25, 1.5])
uniform = np.full(16, 1 / 16)
skewed = np.random.default_rng(0).dirichlet(np.ones(16))
curves = []
for label, popularity in (("uniform experts", uniform), ("Dirichlet(1) popularity", skewed)):
    for factor in factors:
        capacity = capacity_from_factor(4096, 2, 16, factor)
        predicted = expected_dropped_fraction(4096, 2, capacity, popularity=popularity)
        measured = sample_dropped_fraction(4096, 2, float(factor), popularity, num_samples=8, seed=1)
        curves.append((label, factor, predicted, measured.estimate, measured.stderr))
        print(f"{label:24s} f={factor:4.2f} C={capacity:4d} predicted {predicted:.4f} "
              f"measured {measured.estimate:.4f} +- {measured.stderr:.4f}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for label in ("uniform experts", "Dirichlet(1) popularity"):
    pts = [c for c in curves if c[0] == label]
    line, = ax.plot([c[1] for c in pts], [c[2] for c in pts], label=f"{label}: predicted")
    ax.errorbar([c[1] for c in pts], [c[3] for c in pts], yerr=[3 * c[4] for c in pts], fmt="o",
                color=line.get_color(), label=f"{label}: route_topk")
ax.set_xlabel("capacity factor f")
ax.set_ylabel("dropped fraction of choices")
ax.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# ## 3. LocMoE's minimum capacity (Theorem 1)
#
# For tokens uniform on the sphere in R^d and n orthogonal, equal-norm gate weights, the share of
# tokens whose cosine with a given gate weight exceeds delta is
# p_delta = 1 - I_{delta^2}(1/2, (d-1)/2), and the expert capacity must be at least
# ec_min = 1 / (n p_delta) **tokens**: the paper's capacity is a number of tokens,
# ec = ceil(b_s c_f / (ep n)) with an empirical capacity factor c_f, and the proof of Theorem 1 seeks
# the fewest tokens that route at least one discriminative token (|cos| >= delta) to an expert.
# ec_min is a lower bound, not the capacity a run uses. The paper uses the large-d form with erfc;
# here both, for n = 16. The capacity of `lshsim.dispatch`, C = ceil(cf T k / n) for T tokens per
# rank and k choices, reaches ec_min from the factor ec_min n / (T k) up (`capacity_factor_at_bound`).

# %%
deltas = np.linspace(0.005, 0.2, 60)
fig, ax = plt.subplots(figsize=(6, 3.5))
for d in (256, 1024, 4096):
    ax.plot(deltas, ec_min(16, d, deltas), label=f"d={d} exact")
    ax.plot(deltas, ec_min(16, d, deltas, form="erfc"), "--", label=f"d={d} erfc")
ax.set_yscale("log")
ax.set_xlabel("delta (minimum cosine)")
ax.set_ylabel("ec_min")
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()
print("p_delta at d=4096, delta=0.03: exact", float(p_delta(4096, 0.03)), "erfc", float(p_delta_erfc(4096, 0.03)))
bound = float(ec_min(16, 4096, 0.03))
factor = float(capacity_factor_at_bound(bound, 4096, 2, 16))
print(f"ec_min = {bound:.3f} tokens per expert; with T = 4096 tokens per rank and top-2 the capacity reaches it "
      f"from factor {factor:.5f} up (C = {capacity_from_factor(4096, 2, 16, factor)}); at factor 1.25, "
      f"C = {capacity_from_factor(4096, 2, 16, 1.25)} tokens")

# %%
elapsed_s = time.perf_counter() - notebook_start
print(f"notebook ran in {elapsed_s:.1f} s")

# %% [markdown]
# ## Exercises
#
# 1. Try locality bonuses between 0.05 and 1 in section 1. At which bonus does the inter-node
#    share of the dispatch bytes fall below 10%, and what happens to the busiest expert's load?
# 2. For the Dirichlet(1) popularity of section 2, which capacity factor brings the expected
#    dropped fraction below 1%? Compare it with the factor the uniform experts need.
# 3. For n = 16 experts, d = 4096, delta = 0.03 and top-2, find the tokens per rank T below which
#    ec_min binds at the common capacity factor 1.25 (the capacity ceil(1.25 T k / n) is smaller than
#    ec_min). Then, for T = 4096, find the delta at which ec_min reaches that capacity, with both
#    forms of `ec_min`. How close are they there?
