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
# # Plan a frontier MoE: DeepSeek-V3 on 8 nodes x 8 H100
#
# DeepSeek-V3 (671B parameters, 37B active) routes every token to 8 of 256 fine-grained experts,
# runs one shared expert on every token, keeps its first 3 layers dense, limits each token's
# experts to at most M = 4 nodes, and drops no token. This notebook plans its expert-parallel
# training on 64 H100s (8 HGX nodes, 8 x 400 Gb/s InfiniBand rails each, expert parallelism over
# all 64 GPUs: 4 experts per GPU) and asks three questions:
#
# 1. **What the catalog knows**: the model from its published config.json, its parameter counts,
#    and the bytes one MoE layer's all-to-all moves.
# 2. **Node limits**: how M changes where a token's 8 copies go, the network bytes, and the
#    simulated dispatch all-to-all.
# 3. **Dropless or capacity**: what a capacity factor saves on the network and what it drops,
#    with balanced and skewed expert popularity.
#
# Then one simulated training step per choice, the expert-parallel group size (EP x DP, section
# 5) and tensor parallelism inside a node (TP x EP, section 6). FP8 and per-node deduplication
# appear here on the dispatch all-to-all only (section 2, `lshsim.sim.dispatch_formats`); the whole
# step with them is `lshsim plan --router model --algorithm deepep --dispatch-format fp8` (README,
# "Dispatch formats and node deduplication").
#
# Every number is computed by the code below from committed files (no GPU, no network).

# %%
import time
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from lshsim.dispatch import RouterConfig, route
from lshsim.dispatch.synthetic import dirichlet_popularity
from lshsim.models import load_model
from lshsim.sim.collectives import simulate_all_to_all
from lshsim.sim.moe_step import A2ACache, RoutedTraffic, StepConfig, placement_for, simulate_config
from lshsim.topology import load_topology

try:                                    # Jupyter's display(); run as a script, print the table
    from IPython.display import display
except ImportError:
    display = print

notebook_start = time.perf_counter()
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "tests/data/hf").is_dir())
pd.set_option("display.width", 140)
pd.set_option("display.max_columns", None)    # every column, also when run as a script

# %% [markdown]
# ## 1. The model, from the catalog and from its config.json
#
# `load_model("deepseek-v3")` reads `models/configs/deepseek-v3.yaml`, which cites every field of
# the published config.json; `load_model("...config.json")` reads a Hugging Face config.json
# directly (here a copy of the published fields in `tests/data/hf/`). Both give the same model.

# %%
model = load_model("deepseek-v3")
from_hf = load_model(ROOT / "tests/data/hf/deepseek-v3.json")
assert from_hf.num_parameters == model.num_parameters and from_hf.moe_layers == model.moe_layers

rows = {
    "layers (dense first, MoE)": f"{model.num_layers} ({model.first_dense_layers}, {model.num_moe_layers})",
    "routed experts / shared / top-k": f"{model.num_experts} / {model.num_shared_experts} / {model.top_k}",
    "d_model, expert d_ffn, dense d_ffn": f"{model.d_model}, {model.d_ffn}, {model.dense_d_ffn}",
    "router": f"{model.router} {dict(model.router_options)}, dropless={model.dropless}",
    "parameters (published 671B)": f"{model.num_parameters / 1e9:.1f}B",
    "active, no input embedding (published 37B)": f"{model.active_parameters(input_embedding=False) / 1e9:.1f}B",
}
display(pd.Series(rows, name="deepseek-v3").to_frame())

# %% [markdown]
# One MoE layer's dispatch all-to-all, per GPU, at 4096 tokens per GPU (one 4K sequence, our
# choice): each token is copied to 8 experts, each copy is d_model bf16 values. The combine sends
# the same amount back, and the backward pass both again: 4 all-to-alls per MoE layer per step.

# %%
TOKENS = model.tokens_per_gpu
copy_bytes = model.d_model * model.bytes_per_element
per_gpu = TOKENS * model.top_k * copy_bytes
print(f"{TOKENS} tokens x {model.top_k} copies x {copy_bytes} B = {per_gpu / 2**20:.0f} MiB dispatched per GPU per "
      f"MoE layer; x 4 all-to-alls x {model.num_moe_layers} MoE layers = {4 * per_gpu * model.num_moe_layers / 2**30:.1f} "
      "GiB per GPU per step")

# %% [markdown]
# ## 2. The cluster and node-limited routing
#
# `h100-ib-rail-8x8`: 8 HGX H100 nodes, NVSwitch inside (450 GB/s per GPU per direction), 8 x 400
# Gb/s InfiniBand NICs per node (one per GPU, 50 GB/s), rail-optimized. Its latencies are assumed,
# not measured (the YAML lists them under `calibration.provenance.assumed`).
#
# The routing: gate logits for 256 tokens per GPU (Gaussian, as `lshsim plan`'s synthetic tokens),
# routed by the registered `node_limited` router (pick each token's M best nodes by the sum of their
# top ceil(8 / M) scores, then the top-8 experts there) and by plain `topk` (M = 8 = all nodes).
# The counts are scaled to 4096 tokens per GPU. The all-to-alls are simulated at the 1% drain
# tolerance (`lshsim plan --fidelity tolerance`): exact simulation of uneven traffic on 64 GPUs takes
# about ten seconds each on this machine, the tolerance well under one.

# %%
cluster = load_topology("h100-ib-rail-8x8")
placement = placement_for(model, cluster)
W, NODES = placement.world_size, placement.num_nodes
ROUTED = 256                                   # tokens per GPU actually routed; scaled to TOKENS
gpu_node = placement.rank_to_node.numpy()
# uneven all-to-alls over 64 GPUs: flows that would drain within 1% of the current time drain
# together (`lshsim plan`'s "tolerance" fidelity; completion up to ~1.5% early, much faster)
TOLERANCE = 0.01


def gate_logits(skew=0.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(W * ROUTED, model.num_experts, generator=generator)
    if skew > 0:   # popular experts: + skew * log p, p ~ Dirichlet(1), as lshsim.dispatch.synthetic
        logits = logits + skew * dirichlet_popularity(model.num_experts, generator).clamp_min(1e-12).log()
    return logits


token_rank = torch.arange(W).repeat_interleave(ROUTED)


def routed(config, logits):
    plan = route(config, placement, logits=logits, token_rank=token_rank)
    counts = plan.send_counts().to(torch.float64).numpy() * (TOKENS / ROUTED)            # (W, W) copies
    dest_node = torch.where(plan.kept, placement.expert_to_node[plan.expert_index], NODES)  # (T, k); NODES = dropped
    reached = torch.zeros(len(token_rank), NODES + 1, dtype=torch.bool).scatter_(1, dest_node, True)[:, :NODES]
    nodes_per_token = reached.sum(dim=1).to(torch.float64)                                # (T,) distinct nodes
    own = placement.rank_to_node[token_rank]                                              # (T,)
    remote_nodes = nodes_per_token - reached.gather(1, own[:, None])[:, 0].to(torch.float64)
    dropped = plan.num_dropped / max(int(plan.routed.sum()), 1)
    traffic = RoutedTraffic(send_counts=counts, tokens_per_rank=TOKENS, routed_per_rank=ROUTED,
                            dropped_fraction=dropped, gate_width=model.d_model, k=model.top_k, router=config.name)
    return plan, traffic, nodes_per_token, remote_nodes


def network_summary(traffic):
    """Bytes per GPU per dispatch: leaving the node (NICs), staying in the node (NVLink)."""
    bytes_ = traffic.send_counts * copy_bytes
    inter = np.array([bytes_[r, gpu_node != gpu_node[r]].sum() for r in range(W)])
    intra = np.array([bytes_[r, (gpu_node == gpu_node[r]) & (np.arange(W) != r)].sum() for r in range(W)])
    received = bytes_.sum(axis=0) - np.diag(bytes_)
    return inter, intra, received


logits = gate_logits()
node_rows, traffic_by_m, plan_by_m = [], {}, {}
for M in (1, 2, 4, 8):
    config = (RouterConfig("topk", k=8, capacity_factor=None) if M == NODES else
              RouterConfig("node_limited", k=8, capacity_factor=None, options={"max_nodes": M}))
    plan, traffic, nodes_per_token, remote_nodes = routed(config, logits)
    traffic_by_m[M] = traffic
    plan_by_m[M] = plan
    inter, intra, received = network_summary(traffic)
    a2a = simulate_all_to_all(cluster, traffic.send_counts * copy_bytes, "direct", drain_tolerance=TOLERANCE)
    node_rows.append({"M": M, "router": config.name, "max nodes / token": int(nodes_per_token.max()),
                      "mean nodes / token": nodes_per_token.mean().item(),
                      "inter-node MiB / GPU": inter.mean() / 2**20, "NVLink MiB / GPU": intra.mean() / 2**20,
                      "dedup: remote nodes / token": remote_nodes.mean().item(),
                      "dedup: inter-node MiB / GPU": remote_nodes.mean().item() * TOKENS * copy_bytes / 2**20,
                      "dispatch ms (simulated, no dedup)": a2a.time_s * 1e3})
nodes_table = pd.DataFrame(node_rows).set_index("M")
display(nodes_table.round(2))

# %% [markdown]
# What the table says:
#
# - The limit holds: no token reaches more than M nodes (the router's tests check it too).
# - **Without deduplication, node-limited routing barely changes the network bytes**: a copy
#   leaves its node unless its expert sits on the token's own node, and the M chosen nodes are the
#   token's own with probability about 1/8 whatever M is. The simulated dispatch times are
#   therefore close to each other: the NICs carry about 7/8 of the 448 MiB per GPU either way.
# - The dedup columns show where the gain is: with **per-node deduplication** (DeepEP, the
#   hierarchical all-to-alls) a token is sent once to each remote node and forwarded over NVLink
#   there. Those columns count the bytes
#   from the routing (distinct remote nodes per token x one copy); the next table simulates the
#   deduplicating collective itself (`node_dedup`). With M = 4 at most
#   4 copies cross the network instead of up to 7 (M = 1 is cheapest, but restricts each token to
#   the 32 experts of one node).

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
xs = np.arange(len(nodes_table))
ax.bar(xs - 0.2, nodes_table["inter-node MiB / GPU"], 0.4, label="copies leaving the node (simulated collectives)")
ax.bar(xs + 0.2, nodes_table["dedup: inter-node MiB / GPU"], 0.4, label="with per-node dedup (counted)")
ax.set_xticks(xs, [f"M = {m}" + (" (top-k)" if m == NODES else "") for m in nodes_table.index])
ax.set_ylabel("MiB per GPU per dispatch")
ax.set_title("DeepSeek-V3 on 8 x 8 H100: network bytes of one dispatch")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### The same dispatch in FP8 and with per-node deduplication, simulated
#
# `lshsim.sim.dispatch_formats` counts FP8 as DeepEP does (1 byte a value and a 4-byte scale per
# 128 values: 7,392 bytes a token instead of 14,336 in bf16) and simulates `node_dedup`, DeepEP's
# normal kernels: a token crosses the network once per destination node, to the GPU of its rail
# there, which forwards it over NVLink to each of its experts' GPUs. `plan_dedup_traffic` counts a
# routing's (token, rank) and (token, node) copies.

# %%
from lshsim.sim.dispatch_formats import bytes_per_token, plan_dedup_traffic

scale = TOKENS / ROUTED
dedup_rows = []
for M, plan in plan_by_m.items():
    row = {"M": M}
    for fmt in ("bf16", "fp8"):
        counts = plan_dedup_traffic(plan, bytes_per_token(fmt, model.d_model), gpus_per_node=W // NODES)
        direct = simulate_all_to_all(cluster, counts.choice_traffic * scale, "direct", drain_tolerance=TOLERANCE)
        dedup = simulate_all_to_all(cluster, counts.traffic * scale, "node_dedup", node_bytes=counts.node_bytes * scale,
                                    drain_tolerance=TOLERANCE)
        row[f"{fmt} direct ms"] = direct.time_s * 1e3
        row[f"{fmt} node_dedup ms"] = dedup.time_s * 1e3
        row[f"{fmt} dedup network MiB / GPU"] = counts.network_bytes(dedup=True).mean() * scale / 2**20
    dedup_rows.append(row)
dedup_table = pd.DataFrame(dedup_rows).set_index("M")
display(dedup_table.round(2))

# %% [markdown]
# With deduplication the node limit pays: the fewer nodes a token may reach, the fewer network
# copies and the shorter the dispatch, and FP8 halves what is left. (The simulated times use the
# cluster's assumed NIC efficiency; `lshsim validate --published` measures how far the same
# simulator is from published DeepEP and UCCL-EP figures: median 9.5%, worst 33.9% on the 15 test
# cases; on the later fresh held-out sets of normal kernels 15.9% / 24.3% (fresh9), 4.5% / 19.4%
# (fresh10), 36.1% / 57.2% (fresh11, 2 x Azure H100) and 5.9% / 19.9% (fresh20: DeepEP V1 on H100 +
# 8 x 400 Gb/s InfiniBand, EP 16-64). `lshsim plan --algorithm deepep`'s own dispatch and combine on
# this cluster (streamed, as DeepEP's kernel runs them) are 4.7% / 22.3% from fresh20, seen data for
# the planner since (`benchmarks/check_planner_a2a.py`); every set: benchmarks/RESULTS.md.)

# %% [markdown]
# ## 3. Dropless or a capacity factor
#
# DeepSeek-V3 drops no token; GShard-style training caps each (GPU, expert) buffer at
# C = ceil(f x T x k / E) and drops the overflow. With balanced popularity the overflow is small;
# with skewed popularity (`skew`: logits + skew x log p, p ~ Dirichlet(1)) the hottest experts
# overflow, and a dropless all-to-all must deliver their whole load: its time follows the most
# loaded GPU's receive bytes.

# %%
cap_rows, traffic_by_cap = [], {}
SKEWED = 0.5
for skew in (0.0, SKEWED):
    logits = gate_logits(skew=skew, seed=1)
    for factor in (None, 1.25):
        config = RouterConfig("node_limited", k=8, capacity_factor=factor, options={"max_nodes": 4})
        plan, traffic, _, _ = routed(config, logits)
        traffic_by_cap[(skew, factor)] = traffic
        inter, intra, received = network_summary(traffic)
        a2a = simulate_all_to_all(cluster, traffic.send_counts * copy_bytes, "direct", drain_tolerance=TOLERANCE)
        cap_rows.append({"skew": skew, "capacity factor": "dropless" if factor is None else factor,
                         "dropped %": 100 * traffic.dropped_fraction,
                         "max / mean receive": received.max() / received.mean(),
                         "inter-node MiB / GPU": inter.mean() / 2**20,
                         "dispatch ms (simulated)": a2a.time_s * 1e3})
capacity_table = pd.DataFrame(cap_rows).set_index(["skew", "capacity factor"])
display(capacity_table.round(2))

# %% [markdown]
# %%
balanced, skewed = capacity_table.loc[0.0], capacity_table.loc[SKEWED]
print(f"balanced: capacity 1.25 drops {balanced.loc[1.25, 'dropped %']:.1f}% of the copies and changes the dispatch "
      f"from {balanced.loc['dropless', 'dispatch ms (simulated)']:.2f} to {balanced.loc[1.25, 'dispatch ms (simulated)']:.2f} ms")
print(f"skew {SKEWED}: dropless, the busiest GPU receives {skewed.loc['dropless', 'max / mean receive']:.2f}x the mean and "
      f"the dispatch takes {skewed.loc['dropless', 'dispatch ms (simulated)']:.2f} ms; capacity 1.25 takes "
      f"{skewed.loc[1.25, 'dispatch ms (simulated)']:.2f} ms but drops {skewed.loc[1.25, 'dropped %']:.1f}% of the copies")

# %% [markdown]
# A capacity factor buys all-to-all time back only by dropping copies, work the experts never see;
# with skewed popularity the dropless all-to-all follows the hottest GPU's receive bytes. The plan
# reports both; which is acceptable is a training question, not a network one (DeepSeek-V3 keeps
# popularity balanced with its bias term instead, which this synthetic gate does not model).

# %% [markdown]
# ## 4. One training step per choice
#
# `simulate_config` runs the step simulator of `lshsim plan` (forward and backward of every layer:
# attention, gate, dispatch, experts, combine; roofline compute on the H100's datasheet rates,
# flow-level all-to-alls, the data-parallel gradient all-reduce) on the routings above. Besides
# `MODEL_FIELDS` the simulator reads `OPTIONAL_MODEL_FIELDS`, so it costs the 3 dense first layers at
# their own width (d_ffn 18,432), SwiGLU's third matrix and the shared expert (in the expert phase);
# MLA attention is costed as standard attention. The all-to-all bytes per MoE layer follow the routing;
# the compute is a roofline, a lower bound.

# %%
cache = A2ACache(cluster, drain_tolerance=TOLERANCE)
step_rows = []
choices = [("M = 4, dropless (DeepSeek-V3)", "node_limited", None, traffic_by_m[4]),
           ("M = 4, dropless, skew 0.5", "node_limited", None, traffic_by_cap[(SKEWED, None)]),
           ("M = 4, capacity 1.25, skew 0.5", "node_limited", 1.25, traffic_by_cap[(SKEWED, 1.25)])]
for label, router, factor, traffic in choices:
    for algorithm in ("direct", "2d"):
        config = StepConfig(router=router, capacity_factor=factor, algorithm=algorithm, tokens_per_gpu=TOKENS)
        result = simulate_config(model, cluster, config, traffic=traffic, a2a_cache=cache)
        b = result.breakdown
        step_rows.append({"routing": label, "all-to-all": algorithm, "step s": b["step_s"],
                          "all-to-all share": b["a2a_share"], "dropped %": 100 * b["dropped_fraction"]})
steps = pd.DataFrame(step_rows).set_index(["routing", "all-to-all"])
display(steps.round(3))

# %% [markdown]
# %%
for label in dict.fromkeys(steps.index.get_level_values(0)):
    direct, two_d = steps.loc[(label, "direct"), "step s"], steps.loc[(label, "2d"), "step s"]
    print(f"{label}: direct {direct:.2f} s, 2d {two_d:.2f} s per step; all-to-all share "
          f"{steps.loc[(label, 'direct'), 'all-to-all share']:.0%} (direct)")

# %% [markdown]
# At 4096 tokens per GPU the all-to-alls take a large share of the simulated step, although the
# compute is a roofline lower bound (above): every GPU's 400 Gb/s NIC carries about 7/8 of its tokens' copies, four
# times per MoE layer. The hierarchical ("2d") all-to-all first gathers each node's copies by
# destination rail over NVLink: on balanced traffic it adds an NVLink phase to the same NIC bytes,
# on skewed traffic it can spread the hot GPUs' load; the lines above say which wins here.
#
# ## 5. Expert-parallel group sizes: EP x DP = 64
#
# With EP < 64 the 64 GPUs form 64 / EP data-parallel groups of EP consecutive GPUs, each group
# holding all 256 experts (256 / EP per GPU), and every group's all-to-all runs at the same time on
# the shared fabric (`StepConfig(ep=...)`, `lshsim plan --ep`). EP = 8 keeps each group inside one
# node: the all-to-alls never touch the NICs, but every GPU holds 32 experts (DeepSeek-V3's
# 44M-parameter experts: 1.4B expert parameters per layer per GPU, 82B over 58 layers, 164 GB of
# bf16 weights alone, more than an H100's 80 GB: memory is not checked by the simulator). Each group routes its own GPUs' tokens
# (the balanced logits of section 2) on its own placement (`placement_for(model, cluster, ep)`, a
# `GroupedPlacement`) with the node-limited router, dropless; the groups' traffic is one
# block-diagonal matrix.

# %%
from lshsim.dispatch.placement import GroupedPlacement

balanced_logits = gate_logits()
node_limited = RouterConfig("node_limited", k=8, capacity_factor=None, options={"max_nodes": 4})


def grouped_traffic(ep):
    grouped = placement_for(model, cluster, ep)
    if not isinstance(grouped, GroupedPlacement):                    # EP = W: one group
        return routed(node_limited, balanced_logits)[1]
    counts = np.zeros((W, W))
    for g in range(grouped.num_groups):
        rows = (token_rank >= g * ep) & (token_rank < (g + 1) * ep)
        plan = route(node_limited, grouped.placements[g], logits=balanced_logits[rows],
                     token_rank=token_rank[rows] - g * ep)
        counts[g * ep:(g + 1) * ep, g * ep:(g + 1) * ep] = plan.send_counts().to(torch.float64).numpy() * (TOKENS / ROUTED)
    return RoutedTraffic(send_counts=counts, tokens_per_rank=TOKENS, routed_per_rank=ROUTED, dropped_fraction=0.0,
                         gate_width=model.d_model, k=model.top_k, router="node_limited", ep=ep)


ep_rows = []
for ep in (8, 16, 32, 64):
    config = StepConfig(router="node_limited", capacity_factor=None, ep=ep, tokens_per_gpu=TOKENS)
    b = simulate_config(model, cluster, config, traffic=grouped_traffic(ep), a2a_cache=cache).breakdown
    ep_rows.append({"EP": ep, "DP groups": W // ep, "experts / GPU": model.num_experts // ep,
                    "nodes / group": max(1, ep // 8),
                    "inter-node MiB / GPU / dispatch": b["inter_node_bytes_per_layer"] / W / 2**20,
                    "step s": b["step_s"], "all-to-all share": b["a2a_share"]})
ep_table = pd.DataFrame(ep_rows).set_index("EP")
display(ep_table.round(3))

# %% [markdown]
# The fewer nodes a group spans, the fewer of a token's copies cross the network: EP = 8 moves
# everything over NVLink, and from EP = 16 on the NICs carry 1/2, 3/4, 7/8 of the copies. The step
# time follows. What the table does not show is the memory cost of a small EP: 256 / EP experts'
# weights and optimizer state on every GPU, which the simulator does not check. (The data-parallel
# all-reduce of each expert's gradients over its 64 / EP replicas is in the step: phase
# `grad_allreduce`, overlapped with the backward by default.)
#
# The same plan from the command line (timed in benchmarks/RESULTS.md, "plan speed"):
#
# ```bash
# lshsim plan --model deepseek-v3 --cluster h100-ib-rail-8x8 --capacity-factor none --router node_limited
# lshsim plan --model deepseek-v3 --cluster h100-ib-rail-8x8 --capacity-factor none --ep 16
# lshsim plan --model path/to/DeepSeek-V3/config.json --cluster h100-ib-rail-8x8 --capacity-factor none
# ```
#
# Exercises: swap in `b200-ib-rail-8x8` (NVLink twice as fast, the same NICs) or `h100-efa-p5-8x8`
# (4 x 100 Gb/s per GPU); try `load_model("qwen3-235b-a22b")` (128 experts: 2 per GPU on 64 GPUs),
# `load_model("kimi-k2")` (DeepSeek-V3's layout with 384 experts: 6 per GPU, and no node limit: how
# much more crosses the network?) or `load_model("gpt-oss-120b")` (top-4 of 128 experts at d 2,880: is
# its step as all-to-all-bound as DeepSeek-V3's?).

# %% [markdown]
# ## 6. Tensor parallelism inside a node: TP x EP on the same 64 GPUs
#
# `StepConfig(tp=...)` / `lshsim plan --tp` splits attention, the dense FFNs, the shared expert and
# the output layer over TP consecutive GPUs of a node, Megatron-Core's layout with sequence
# parallelism and expert-TP 1 (`lshsim.sim.tensor_parallel`): each GPU holds 1 / TP of its TP group's
# 4096 tokens and dispatches those, the experts stay whole (EP 64 folds over the TP ranks), and every
# attention / dense / shared-expert block costs an all-gather and a reduce-scatter of the group's
# (4096, 7168) activations each way over NVLink (the `tp_*` phases, each ring step simulated on the
# cluster). With the model's 4096 tokens per TP group a step covers 64 / TP x 4096 tokens, so the
# fair comparison is tokens per second; the second half of the table keeps the global batch instead
# (4096 x TP tokens per TP group, i.e. 4096 per GPU as at TP 1).
#
# The traffic is the EP-64 routing of section 5 with its counts scaled to the tokens each GPU holds
# (the same routed sample).

# %%
tp_rows = []
ep64 = grouped_traffic(64)
for batch in ("4096 per TP group", "4096 per GPU"):
    for tp in (1, 2, 4, 8):
        per_group = TOKENS if batch == "4096 per TP group" else TOKENS * tp
        per_gpu_tokens = per_group // tp
        traffic = replace(ep64, send_counts=ep64.send_counts * per_gpu_tokens / TOKENS, tokens_per_rank=per_gpu_tokens)
        config = StepConfig(router="node_limited", capacity_factor=None, ep=64, tokens_per_gpu=per_group, tp=tp)
        b = simulate_config(model, cluster, config, traffic=traffic, a2a_cache=cache).breakdown
        tp_rows.append({"batch": batch, "TP": tp, "tokens / GPU": per_gpu_tokens, "step s": b["step_s"],
                        "TP collectives share": b["tp_share"], "all-to-all share": b["a2a_share"],
                        "attention s": b["phases_s"]["attention"],
                        "tokens / s / GPU": b["tokens_per_s"] / W})
tp_table = pd.DataFrame(tp_rows).set_index(["batch", "TP"])
display(tp_table.round(3))

# %%
for batch in dict.fromkeys(tp_table.index.get_level_values(0)):
    one, eight = tp_table.loc[(batch, 1)], tp_table.loc[(batch, 8)]
    print(f"{batch}: TP 8 runs {eight['tokens / s / GPU'] / one['tokens / s / GPU']:.2f}x the tokens per second of "
          f"TP 1; its TP collectives take {eight['TP collectives share']:.1%} of the step")

# %% [markdown]
# Tensor parallelism divides the attention and dense compute per GPU by TP for a given micro-batch,
# but not the work per token: the tokens per second per GPU stay about where they are, minus the TP
# collectives (and plus or minus the fixed costs: kernel launches, weight reads, start-up latencies,
# which TP splits differently). What TP buys is memory (weights, activations and optimizer state / TP
# for the dense part), which the simulator does not check; Megatron-Core's MoE tuning guide gives the
# same advice: keep model parallelism as small as memory allows, and prefer EP to TP for experts.

# %%
print(f"notebook ran in {time.perf_counter() - notebook_start:.1f} s")

# %% [markdown]
# ## Exercises
#
# 1. In section 2's FP8 / deduplication table, how much shorter than `direct` is the deduplicated
#    dispatch at M = 1, and how much of that remains at M = 8 (plain top-8)? Re-run the section on
#    `b200-ib-rail-8x8` (NVLink twice as fast, the same NICs): which of the two gains changes?
# 2. In section 3, raise `SKEWED` to 1.0. How much larger does the busiest GPU's receive load get
#    (dropless), and which capacity factor keeps the dispatch time of the balanced case? What does
#    it drop?
# 3. In section 4, give `StepConfig` `grad_sync="after"` and then `"off"`: how much of the step
#    does the gradient all-reduce take when it cannot hide behind the backward?
# 4. In section 5, run EP 8 with `tokens_per_gpu=1024`: does the in-node layout still win when the
#    all-to-alls are four times smaller? Check the same with `lshsim plan --ep 8 --tokens-per-gpu 1024`.
