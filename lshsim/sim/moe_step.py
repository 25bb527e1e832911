"""One simulated training step of an MoE transformer: every phase of every layer, forward and backward.

The step's phases, their order and their cost functions come from the phase table
(`lshsim.sim.phases.PHASES`, `step_schedule`). With the built-in table, for each transformer layer
l on every rank (GPU):

1. attention (non-MoE compute);
2. a dense layer: dense_ffn; an MoE layer (l >= first_dense_layers and (l + 1) % moe_every == 0):
   gate -> [lsh_compress] -> dispatch_a2a -> expert -> combine_a2a -> [lsh_restore]. A model's
   optional fields (`OPTIONAL_MODEL_FIELDS`) set the dense layers' width (`dense_d_ffn`), SwiGLU's
   third matrix in every FFN (`ffn_matrices: 3`) and the shared experts (`num_shared_experts`, costed
   in the expert phase: every token of a rank through them, on that rank);
3. after the last layer, the output head ("other").
The backward pass is the forward sequence reversed, with twice the compute, and the same two
all-to-alls carrying gradients: the combine's gradient goes token ranks -> expert ranks (the
dispatch traffic matrix M), the dispatch's gradient goes back (M^T).
4. the data-parallel gradient all-reduce ("grad_allreduce", kind "gradient_sync", the table's
   "gradient" block), once per step in the backward.

Where the numbers come from:

* **Traffic** is not assumed: the router of `lshsim.dispatch` (the very function the executor runs)
  routes seeded synthetic tokens (`lshsim.dispatch.synthetic`) on the cluster's placement (experts
  contiguous over ranks, E / W per rank), and `DispatchPlan.send_counts()` gives the (W, W) token
  copies of the dispatch all-to-all. To stay fast, at most `max_routed_tokens` tokens are routed
  (all W * T of them when that fits, which it does for the default workloads); beyond, each rank
  routes a subsample of S tokens and the counts are scaled by T / S (capacity then applies to the
  subsample's buffers, so drops are overstated a little; the breakdown reports S and the scale).
  All MoE layers of a step reuse one routing (the synthetic tokens of every layer are drawn from the
  same distribution).
* **All-to-all time** comes from the flow-level network simulation `lshsim.sim.collectives.
  simulate_all_to_all` over the topology graph (max-min fair sharing of every link on the path).
* **Compute** is a roofline per GPU spec (`G.graph["gpu"]`: achieved FLOP/s and HBM bytes/s,
  calibrated or datasheet x efficiency): t = max(FLOPs / achieved_flops, bytes / achieved_hbm_Bps)
  + kernels * kernel_launch_s. Backward: 2x the forward FLOPs and bytes (grad input + grad weight),
  except the LSH phases (below).
  FLOPs per token (forward, d = d_model, f = d_ffn, s = attention span, V = vocab):
    - expert FFN: 2 * 2 d f per token copy it receives (two matmuls, 2 FLOPs per multiply-add);
      bytes: the rank's E / W expert weights (2 d f each) + activations (2 d + 2 f) per token copy;
    - attention: 2 * 4 d^2 (QKV and output projections) + 2 * 2 s d (scores and weighted sum),
      the per-token count of PaLM (Chowdhery et al. 2022, App. B) and nanoGPT's `estimate_mfu`
      (6 N + 12 L H Q T per token for forward + backward);
    - dense FFN (non-MoE layers): 2 * 2 d f; output head: 2 d V;
    - gate: 2 d E (logits; GrAP: d, a group mean; hash: none) + softmax/top-k memory traffic.
  Kernel counts per phase are in `KERNELS`; small GEMMs below peak are not modelled beyond that.
  The cost functions live in `lshsim.sim.phases` (`roofline_cost`, `expert_cost`).
* **LSH-MoE** (Nie et al. 2024) with compression rate r = centroids / tokens: the all-to-alls and the
  experts see ceil(r * copies) centroids per (source, destination) pair instead of the copies.
  Compress: L cross-polytope hashes of every token, a dense projection to d' dims each
  (2 d d' L FLOPs per token), argmax, a bucket sort (a 4-pass radix sort of 16-byte key/index
  pairs) and the centroid scatter-add (read the copies, write fp32 centroids). Restore:
  E(x) ~= E(c) + (x - c), memory bound (read E(c), c and x per copy, write the output).
  Backward of compress: no hashing, the centroid's gradient is copied to its tokens (mean rule);
  backward of restore: as much memory traffic as its forward. The rates are the GPU's achieved
  FLOP/s and HBM bytes/s, so a topology's `calibration:` block (expert_flops, hbm_Bps) sets them.
  With r = 1 the all-to-alls equal plain top-k; compress and restore still cost their time.
* **Overlap** (Tutel-style pipelining): each MoE layer's tokens are cut into n chunks; chunk i's
  dispatch, expert and combine run as a pipeline in a simpy model with one network stream (all-to-
  alls are collectives: a chunk starts when every rank has issued it and the previous collective
  has finished, first-come first-served) and one compute stream per rank. Each chunk's all-to-all
  time is simulated with the network model on the chunk's traffic (M / n), so the per-message
  start-up latency is paid n times, and each chunk re-reads the expert weights. Like Tutel's
  adaptive pipelining degree, the step tries n in {1} + `overlap_chunks` and keeps the fastest,
  so overlap is never slower than n = 1 (no overlap).

* **Tensor parallelism** (`StepConfig.tp` > 1; `lshsim.sim.tensor_parallel`): Megatron-Core's layout
  with sequence parallelism and expert-TP 1. Each GPU holds T / TP of its TP group's T tokens
  (routes and dispatches them); attention, dense FFN, shared experts and the output layer read 1 / TP
  of their weights; the TP groups' ring all-gathers and reduce-scatters are the tp_* phases, each
  ring step simulated over the topology like the all-to-alls.

* **Gradient all-reduce** (data parallelism; `StepConfig.grad_sync`, else the cluster's
  `software.grad_sync`, else "overlapped"): every rank holds the replicated weights (attention,
  dense FFN, gate, shared experts, embedding and head: `lshsim.sim.phases.gradient_parameters`), so
  their gradients (x `grad_bytes_per_element`, default the model's) are all-reduced over all W
  ranks; with EP < W each expert has W / EP replicas and its gradients are all-reduced over them
  (EP rings at once, after the replicated ones), unless the cluster's software skips them
  (`software.expert_grad_sync: false`, fairseq's legacy_ddp: `phases.expert_grads_synced`). With tensor parallelism a rank holds 1 / TP of the
  replicated weights but the gate, all-reduced over its data-parallel group of W / TP ranks. Each all-reduce is a ring (reduce-scatter +
  all-gather, 2 (g - 1) steps) whose step is simulated on the topology's flow network
  (`lshsim.sim.collectives.ring_all_reduce`: every rank to its ring successor at once, one ring per
  NIC of a node, the NICs at the software's `allreduce_efficiency` of line rate), so it costs
  2 (g - 1) / g x bytes / bandwidth plus 2 (g - 1) start-ups on a plain ring; where the cluster's
  software runs HCCL's two-level algorithm (`software.allreduce_algorithm: hierarchical`, the Ascend
  clusters) a ring inside each server, then one ring per local index over the servers with 1 / L of
  the bytes (`lshsim.sim.collectives.hierarchical_all_reduce`). Modes: "after" (one
  all-reduce once the backward has ended: fairseq's legacy_ddp), "overlapped" (PyTorch DDP: buckets
  of `grad_bucket_bytes`, 25 MiB, each all-reduced once its layers' backward has ended, one after
  another on one stream; only what runs past the backward's end adds to the step), "off" (not
  simulated, as before). A staged model (Swin): "overlapped" puts every stage's buckets on one stream over the whole
  backward (`combine_breakdowns`); "after" adds the stages' all-reduces.
  Not modelled: the buckets' bandwidth contention with the backward's all-to-alls, DDP's 1 MiB first
  bucket, tree all-reduce, gradient accumulation (one all-reduce per optimizer step).
* **Shares** are of the whole step: a2a_share = all-to-all time not hidden behind compute / step
  time; the step includes the gradient all-reduce's exposed part (grad_sync_share).

Not modelled: the optimizer step, memory capacity, and collectives other than the two all-to-alls,
the tensor-parallel ones and the gradient all-reduce.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import simpy
import torch

from lshsim.algorithms import canonical_algorithm
from lshsim.checks import SEED_MAX
from lshsim.dispatch import ROUTERS, RouterConfig, contiguous_placement, effective_k, route
from lshsim.dispatch.placement import (GroupedPlacement, Placement, expert_parallel_placement,
                                       strided_expert_parallel_placement)
from lshsim.dispatch.synthetic import synthetic_router_inputs
from lshsim.sim.collectives import (ALGORITHMS, ESTIMATED_ALGORITHMS, estimate_collective, hierarchical_all_reduce,
                                    ring_all_reduce,
                                    simulate_all_to_all)
from lshsim.sim.dispatch_formats import DISPATCH_FORMATS, PIPELINE_CHUNKS, bytes_per_token as format_bytes_per_token
from lshsim.sim.moe_layers import MOE_LAYERS, PADDED_LAYERS, padded_capacity, resolve_moe_layer
from lshsim.sim.phases import (DDP_BUCKET_BYTES, GRAD_SYNC_MODES, KERNELS, KINDS, PHASES, TP_PHASES, CostContext,
                               compute_time_s, expert_cost, expert_grads_synced, expert_span, expert_tp,
                               grad_bytes_per_element, grad_sent_bytes,
                               grad_sync_seconds, gradient_parameters, resolve_grad_sync, step_schedule)
from lshsim.sim.tensor_parallel import TP_LAYOUTS, check_tensor_parallel, tp_groupwise_bytes
from lshsim.sim.trace import DIRECTIONS, PhaseRecord, Trace
from lshsim.topology.routing import validate_topology

__all__ = ["StepConfig", "RoutedTraffic", "StepResult", "simulate_step", "simulate_config", "route_traffic",
           "placement_for", "compute_time_s", "expert_cost", "KERNELS", "MODEL_FIELDS", "OPTIONAL_MODEL_FIELDS", "model_dict",
           "describe", "plan_options", "compare_options", "A2ACache", "auto_drain_tolerance",
           "AUTO_EXACT_MAX_GPUS", "apply_locality_share", "apply_group_locality_share", "auto_locality_share", "share_for_router", "AUTO_SHARE_CAPACITY_FACTOR", "stage_models", "combine_breakdowns", "AUTO_TOLERANCE_MAX_GPUS", "TRAFFIC_MODELS", "POPULARITY_MIN_GPUS",
           "RANK_CLASS_MIN_GPUS", "rank_classes", "popularity_traffic", "traffic_model_for", "FIDELITIES", "auto_fidelity", "DEFAULT_DRAIN_TOLERANCE", "DEFAULT_PLAN_LSH_RATE", "router_config", "routing_key"]

#: attributes the simulator reads from a model config (duck typing: `models.ModelConfig` has them).
MODEL_FIELDS = ("name", "num_layers", "d_model", "d_ffn", "num_experts", "top_k", "moe_every", "seq_len",
                "tokens_per_gpu", "vocab_size", "bytes_per_element")


def model_dict(model: object) -> dict:
    """The fields the simulator needs, read from any object that has them (ValueError names a missing one)."""
    missing = [name for name in MODEL_FIELDS if not hasattr(model, name)]
    if missing:
        raise ValueError(f"model {model!r} lacks the field {missing[0]!r} (the simulator needs {list(MODEL_FIELDS)})")
    out = {name: getattr(model, name) for name in MODEL_FIELDS}
    out["attention_window"] = getattr(model, "attention_window", None)
    # optional (today's models, `models.ModelConfig`): dense first layers and their width, shared
    # experts, SwiGLU's third matrix; a model without them is costed as before
    for name, default in OPTIONAL_MODEL_FIELDS.items():
        out[name] = getattr(model, name, default)
    return out


#: attributes the simulator reads when a model has them, with the value that means "absent"
OPTIONAL_MODEL_FIELDS = {"first_dense_layers": 0, "dense_d_ffn": None, "num_shared_experts": 0, "ffn_matrices": 2,
                         "output_head": True, "tie_embeddings": True, "cross_attention_layers": 0, "attention": ()}


def stage_models(model: object) -> list[tuple[object, float]]:
    """A hierarchical model's stages (`stages`: Swin) as models the step simulator costs one by one,
    each with the factor its tokens per GPU are of the model's; [(model, 1.0)] without stages.

    The model's own d_model / seq_len / tokens_per_gpu describe its reference stage (the one of width
    d_model). A stage of width d_i has seq_len * (d_model / d_i)^2 tokens per image (Swin's patch
    merging: 2 x 2 patches into one of twice the width, so tokens fall 4x as the width doubles), the
    attention window min(window, tokens per image), an MoE block every other block exactly where
    its `moe_blocks` say (any other layout is refused: the simulator places MoE blocks by moe_every),
    and the output head in the last stage only.

    >>> from types import SimpleNamespace as NS
    >>> swin = NS(name="s", num_layers=4, d_model=8, d_ffn=32, num_experts=4, top_k=2, moe_every=2, seq_len=16,
    ...           tokens_per_gpu=64, vocab_size=10, bytes_per_element=2, attention_window=16,
    ...           stages=(NS(blocks=2, d_model=4, d_ffn=16, moe_blocks=()), NS(blocks=2, d_model=8, d_ffn=32, moe_blocks=(1,))))
    >>> [(m.d_model, m.seq_len, m.tokens_per_gpu, m.moe_every, m.output_head, f) for m, f in stage_models(swin)]
    [(4, 64, 256, 3, False, 4.0), (8, 16, 64, 2, True, 1.0)]
    """
    from types import SimpleNamespace

    stages = tuple(getattr(model, "stages", ()) or ())
    if not stages:
        return [(model, 1.0)]
    spec = model_dict(model)
    out = []
    for index, stage in enumerate(stages):
        blocks, moe = int(stage.blocks), tuple(stage.moe_blocks)
        if moe and tuple(range(1, blocks, 2)) != moe:
            raise ValueError(f"model {spec['name']!r}: stage {index} has MoE blocks {list(moe)}; the simulator "
                             f"places them every other block (1, 3, ...) only")
        factor = (spec["d_model"] / stage.d_model) ** 2
        seq = max(1, int(round(spec["seq_len"] * factor)))
        window = min(spec["attention_window"] or spec["seq_len"], seq)
        fields = {**spec, "name": f"{spec['name']}[stage {index + 1}]", "num_layers": blocks, "d_model": stage.d_model,
                  "d_ffn": stage.d_ffn, "seq_len": seq, "attention_window": window,
                  "tokens_per_gpu": max(1, int(round(spec["tokens_per_gpu"] * factor))),
                  "moe_every": 2 if moe else blocks + 1, "output_head": index == len(stages) - 1}
        out.append((SimpleNamespace(**fields), factor))
    return out


def _staged_grad_exposed(parts: list[dict]) -> float:
    """The exposed time of a staged model's overlapped gradient all-reduce, its stages' buckets on one
    stream over the whole backward.

    Stage p's own timeline: forward [0, F_p] (forward_s), backward [F_p, E_p] (E_p = step_s -
    exposed_grad_sync_s), its buckets ready at r within it (`grad_bucket_schedule`). In the model's
    step the forwards run first (F = sum F_p), then the backwards from the last stage to the first,
    so stage p's bucket is ready at F + (backward time of the stages after p) + (r - F_p). Buckets
    run one after another in ready order; exposed = max(0, last end - the backward's end).

    >>> a = {"forward_s": 1.0, "step_s": 3.0, "exposed_grad_sync_s": 0.0, "grad_bucket_schedule": [[3.0, 0.5]]}
    >>> b = {"forward_s": 1.0, "step_s": 3.5, "exposed_grad_sync_s": 0.5, "grad_bucket_schedule": [[3.0, 0.5]]}
    >>> _staged_grad_exposed([a, b])   # b's bucket hides behind a's backward; a's bucket is the tail
    0.5
    """
    forward = sum(p["forward_s"] for p in parts)
    backward = [p["step_s"] - p.get("exposed_grad_sync_s", 0.0) - p["forward_s"] for p in parts]
    ready = []
    for index, part in enumerate(parts):
        offset = forward + sum(backward[index + 1:])
        for when, seconds in part.get("grad_bucket_schedule", []):
            ready.append((offset + (when - part["forward_s"]), seconds))
    free = 0.0
    for when, seconds in sorted(ready):
        free = max(free, when) + seconds
    return max(0.0, free - (forward + sum(backward)))


def combine_breakdowns(parts: list[dict]) -> dict:
    """One step's breakdown from its stages' (run one after another): times and bytes add up,
    shares are recomputed, drops and the compression rate are weighted by the stages' MoE copies;
    the gradient all-reduce: "after", the stages' all-reduces add up; "overlapped", all stages'
    buckets on one stream over the model's whole backward (`_staged_grad_exposed`);
    `stages` keeps each stage's step, all-to-all and share."""
    if not parts:
        raise ValueError("combine_breakdowns needs at least one stage")
    step = sum(p["step_s"] for p in parts)
    exposed = sum(p["exposed_a2a_s"] for p in parts)
    weights = [p["dispatch_bytes_per_layer"] + p["local_bytes_per_layer"] if p["a2a_s"] > 0 else 0 for p in parts]
    total_w = sum(weights) or 1

    def weighted(key: str) -> float:
        return sum(w * p[key] for w, p in zip(weights, parts)) / total_w if sum(weights) else parts[-1][key]

    out = dict(parts[-1])
    # the overlapped gradient all-reduce of a staged model: one bucket stream over the whole backward
    # (stage N's backward first, stage 1's last), not one per stage (`_staged_grad_exposed`)
    exposed_grad = sum(p.get("exposed_grad_sync_s", 0.0) for p in parts)
    if all(p.get("grad_sync") == "overlapped" for p in parts) and any(p.get("grad_bucket_schedule") for p in parts):
        staged = _staged_grad_exposed(parts)
        step, exposed_grad = step - exposed_grad + staged, staged
    phases: dict = {}
    for p in parts:
        for name, seconds in p["phases_s"].items():
            phases[name] = phases.get(name, 0.0) + seconds
    moe = [p for p, w in zip(parts, weights) if w]
    tp_s = sum(p.get("tp_s", 0.0) for p in parts)
    out.update(step_s=step, forward_s=sum(p["forward_s"] for p in parts), backward_s=sum(p["backward_s"] for p in parts),
               tp_s=tp_s, tp_share=tp_s / step if step > 0 else 0.0,
               phases_s=phases, a2a_s=sum(p["a2a_s"] for p in parts), exposed_a2a_s=exposed,
               a2a_share=exposed / step if step > 0 else 0.0,
               grad_sync_s=sum(p.get("grad_sync_s", 0.0) for p in parts),
               exposed_grad_sync_s=exposed_grad,
               grad_sync_share=exposed_grad / step if step > 0 else 0.0,
               grad_bytes_replicated=sum(p.get("grad_bytes_replicated", 0) for p in parts),
               grad_bytes_expert=sum(p.get("grad_bytes_expert", 0) for p in parts),
               grad_buckets=sum(p.get("grad_buckets", 0) for p in parts),
               dispatch_bytes_per_layer=sum(p["dispatch_bytes_per_layer"] for p in parts),
               inter_node_bytes_per_layer=sum(p["inter_node_bytes_per_layer"] for p in parts),
               local_bytes_per_layer=sum(p["local_bytes_per_layer"] for p in parts),
               dropped_fraction=weighted("dropped_fraction"), compression_rate=weighted("compression_rate"),
               locality_share=(moe[0] if moe else parts[0]).get("locality_share"),
               tokens_per_gpu=(moe[0] if moe else parts[0])["tokens_per_gpu"],
               tokens_per_step=(moe[0] if moe else parts[0]).get("tokens_per_step"),
               tokens_per_s=(moe[0] if moe else parts[0]).get("tokens_per_step", 0) / step if step > 0 else 0.0,
               routed_tokens_per_rank=(moe[0] if moe else parts[0])["routed_tokens_per_rank"],
               stages=[{"step_s": p["step_s"], "a2a_s": p["a2a_s"], "a2a_share": p["a2a_share"],
                        "tokens_per_gpu": p["tokens_per_gpu"]} for p in parts])
    return out


#: how the dispatch traffic is drawn (StepConfig.traffic_model)
TRAFFIC_MODELS = ("routed", "popularity")
#: above this many GPUs the traffic comes from the router's expert popularity unless told
POPULARITY_MIN_GPUS = 1024


@dataclass(frozen=True)
class StepConfig:
    """What to simulate besides the model and the cluster.

    router:            a name in `lshsim.dispatch.ROUTERS` (topk, hash, expert_choice, locmoe,
                       node_limited, ...).
    router_options:    that router's own parameters as sorted (name, value) pairs (node_limited:
                       max_nodes); the comparison options of `plan_options` that change the router
                       drop them.
    lsh_rate:          LSH-MoE compression rate r in (0, 1] (centroids / token copies); None = no LSH.
                       LSH-MoE (Nie et al. 2024) reports 11.7%..20%.
    algorithm:         all-to-all algorithm of `lshsim.sim.collectives` (direct, 2d, groupwise, ...);
                       groupwise with tp_layout "replicated" is LocMoE's group-wise all-to-all, 1 / TP of
                       the bytes across and a TP all-gather (`tensor_parallel.tp_groupwise_bytes`).
    overlap:           pipeline dispatch / expert / combine in chunks (see module docstring).
    overlap_chunks:    chunk counts tried when overlap is on (n = 1 is always tried).
    tokens_per_gpu:    tokens per GPU per step; None = the model's.
    capacity_factor:   expert capacity factor of the router (None = no limit); GShard / Tutel 1.25.
    locality_bonus:    LocMoE's own-node preference added to the GrAP score (locmoe only, and only
                       with locality_share None).
    locality_share:    LocMoE's locality loss as the share of token copies kept on their own node
                       (locmoe only). The router routes with plain GrAP (bonus 0) and then, per source
                       rank, the fewest off-node copies are moved onto its node's experts (in
                       proportion to their load) that bring the own-node share up to this value
                       (`apply_locality_share`); a share below what GrAP routes on its own moves
                       nothing. Drops are those of the GrAP routing. "auto" (the default; ignored by
                       the other routers): the most the node's experts accept at the capacity,
                       min(1, capacity factor / nodes) (`auto_locality_share`; capacity factor
                       AUTO_SHARE_CAPACITY_FACTOR where there is no limit); with expert-parallel
                       groups (EP < W) the group's experts on the rank's node stand for the node's;
                       with node deduplication, where a share is not modelled, plain GrAP. None: the
                       locality_bonus routing instead (all-or-nothing at a large bonus).
    seed:              seed of the synthetic tokens.
    max_routed_tokens: route at most this many tokens (W * S); beyond, subsample and scale.
    lsh_hashes:        L, cross-polytope hash functions per token (the paper's default 6).
    lsh_dim:           d', projection width of each hash; None = d_model (a full random rotation).
    kernel_launch_s:   fixed cost per kernel launch (about 5 us on current GPUs and CUDA).
    ep:                expert-parallel group size EP (a divisor of the GPU count W and of the experts);
                       None = W (one group, every expert once over all GPUs). With EP < W the W / EP
                       groups (data-parallel replicas) each hold all experts, a token's experts are
                       in its rank's group, and all groups' all-to-alls run at once on the shared fabric
                       (one block-diagonal traffic matrix; `lshsim.dispatch.GroupedPlacement`).
    traffic_model:     "routed" (the router routes synthetic tokens on every group), "popularity"
                       (the expected counts from the expert popularity the router induces on one
                       group: `popularity_traffic`), or None = `traffic_model_for`: "popularity" with
                       several EP groups or above POPULARITY_MIN_GPUS GPUs, else "routed".
    dispatch_format:   bytes per token of the forward dispatch: None = the model's bytes_per_element
                       (every all-to-all alike), or a format of `lshsim.sim.dispatch_formats`
                       ("bf16", "fp8": one byte a value and a float32 scale per 128 values, as DeepEP
                       counts it). Only the forward dispatch changes; the combine and both gradients
                       stay in the model's precision (DeepEP's FP8 dispatch, BF16 combine).

    tp:                tensor-parallel degree TP inside a node (`lshsim.sim.tensor_parallel`: Megatron-Core's
                       layout with sequence parallelism and expert-TP 1); 1 = none (the step as before).
                       TP must divide the GPUs per node and the tokens of a TP group's micro-batch
                       (`tokens_per_gpu`, which with TP > 1 counts the tokens of one TP group; each GPU
                       routes and dispatches T / TP of them). Attention, dense FFN, shared experts and
                       the output layer split their weights and FLOPs over the TP ranks; their
                       all-gathers and reduce-scatters are the tp_* phases.
    tp_layout:         how the TP ranks share the MoE layer (`lshsim.sim.tensor_parallel`):
                       "sequence" (the default: Megatron-Core's, above) or "replicated" (MindSpore's
                       model parallelism, the layout LocMoE and PanGu-Sigma train with): every TP rank
                       holds all T tokens of its replica and dispatches them all, to the rank of its own
                       TP index that holds the expert (expert-parallel groups strided over the TP
                       index: EP must divide W / TP), each expert's FFN is split over the TP ranks
                       (1 / TP of its width on each) and its output all-reduced over them (the phase
                       tp_expert, forward and backward).

    moe_layer:         how the MoE layer runs (`lshsim.sim.moe_layers`): "grouped" (routed copies,
                       one grouped expert GEMM set), "tutel" (capacity-padded buffers) or
                       "gshard-einsum-loop" (padded buffers, dense one-hot dispatch / combine GEMMs,
                       the local experts one after another: fairseq / DeepSpeed-MoE of 2021-22);
                       None = the cluster's `software.moe_layer`, else "grouped".
    grad_sync:         the data-parallel gradient all-reduce (the phase `grad_allreduce`, module
                       docstring): "after" (one all-reduce once the backward has ended: fairseq's
                       legacy_ddp, DDP without bucketing), "overlapped" (DDP buckets of
                       `grad_bucket_bytes`, each all-reduced once its gradients are ready, behind the
                       rest of the backward; only what runs past the backward's end is exposed), "off"
                       (not simulated: the step of lshsim before it); None = the cluster's
                       `software.grad_sync`, else "overlapped" (`lshsim.sim.phases.resolve_grad_sync`).
    grad_bucket_bytes: the "overlapped" mode's bucket size (PyTorch DDP's default 25 MiB).
    grad_bytes_per_element: bytes per gradient element; None = the model's bytes_per_element.

    With algorithm "node_dedup" (alias "deepep") the routing also counts the distinct (token,
    destination node) pairs (`RoutedTraffic.node_copies`): a token crosses the network once per
    node it has experts on, then is forwarded over NVLink (`lshsim.sim.dispatch_formats`).
    """

    router: str = "topk"
    router_options: tuple = ()
    lsh_rate: float | None = None
    algorithm: str = "direct"
    overlap: bool = False
    overlap_chunks: tuple[int, ...] = (2, 4, 8)
    tokens_per_gpu: int | None = None
    capacity_factor: float | None = 1.25
    locality_bonus: float = 1.0
    locality_share: float | str | None = "auto"
    seed: int = 0
    max_routed_tokens: int = 1 << 17
    lsh_hashes: int = 6
    lsh_dim: int | None = None
    kernel_launch_s: float = 5e-6
    ep: int | None = None
    traffic_model: str | None = None
    dispatch_format: str | None = None
    moe_layer: str | None = None
    tp: int = 1
    tp_layout: str = "sequence"
    grad_sync: str | None = None
    grad_bucket_bytes: int = DDP_BUCKET_BYTES
    grad_bytes_per_element: int | None = None


    def __post_init__(self) -> None:
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or self.tp < 1:
            raise ValueError(f"tp={self.tp!r} must be a positive integer (the tensor-parallel degree; 1 = none)")
        if self.tp_layout not in TP_LAYOUTS:
            raise ValueError(f"tp_layout={self.tp_layout!r} must be one of {', '.join(TP_LAYOUTS)} (sequence: "
                             f"Megatron-Core's sequence-parallel layout; replicated: MindSpore's, tokens replicated "
                             f"over the TP ranks, experts split over them)")
        if self.grad_sync is not None and self.grad_sync not in GRAD_SYNC_MODES:
            raise ValueError(f"grad_sync={self.grad_sync!r} must be one of {', '.join(GRAD_SYNC_MODES)} or None "
                             f"(the cluster's software.grad_sync, else overlapped)")
        if isinstance(self.grad_bucket_bytes, bool) or not isinstance(self.grad_bucket_bytes, int) \
                or self.grad_bucket_bytes < 1:
            raise ValueError(f"grad_bucket_bytes={self.grad_bucket_bytes!r} must be a positive integer")
        if self.grad_bytes_per_element is not None and (isinstance(self.grad_bytes_per_element, bool) or not
                                                        isinstance(self.grad_bytes_per_element, int)
                                                        or self.grad_bytes_per_element < 1):
            raise ValueError(f"grad_bytes_per_element={self.grad_bytes_per_element!r} must be a positive integer or None")
        if self.moe_layer is not None and self.moe_layer not in MOE_LAYERS:
            raise ValueError(f"moe_layer={self.moe_layer!r} must be one of {', '.join(MOE_LAYERS)} or None "
                             f"(the cluster's software.moe_layer, else grouped)")
        if self.dispatch_format is not None and self.dispatch_format not in DISPATCH_FORMATS:
            raise ValueError(f"dispatch_format={self.dispatch_format!r}: known formats "
                             f"{', '.join(sorted(DISPATCH_FORMATS))} (or None: the model's precision)")
        if self.ep is not None and (isinstance(self.ep, bool) or not isinstance(self.ep, int) or self.ep < 1):
            raise ValueError(f"ep={self.ep!r} must be a positive integer (the expert-parallel group size) or None")
        if self.traffic_model is not None and self.traffic_model not in TRAFFIC_MODELS:
            raise ValueError(f"traffic_model={self.traffic_model!r} must be one of {list(TRAFFIC_MODELS)} or None")
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; known: {', '.join(sorted(ROUTERS))}")
        if self.lsh_rate is not None:
            if isinstance(self.lsh_rate, bool) or not isinstance(self.lsh_rate, (int, float)) \
                    or not 0 < self.lsh_rate <= 1:
                raise ValueError(f"lsh_rate={self.lsh_rate!r} must be in (0, 1] (centroids / tokens), or None")
        if self.algorithm not in ALGORITHMS:    # the message lists the aliases too (deepep, 2d)
            canonical_algorithm(self.algorithm, side="simulate")
            raise ValueError(f"unknown algorithm {self.algorithm!r}; known: {', '.join(sorted(ALGORITHMS))}")
        if self.lsh_rate is not None and self.deduplicates:
            raise ValueError(f"algorithm {self.algorithm!r} deduplicates tokens per node, but LSH-MoE sends "
                             f"centroids (one per destination expert and bucket), which have no token to "
                             f"deduplicate: use one or the other")
        if not isinstance(self.overlap, bool):
            raise ValueError(f"overlap={self.overlap!r} must be True or False")
        try:
            chunks = tuple(self.overlap_chunks)
        except TypeError:     # a single number (a grid's overlap_chunks: 4): "'int' object is not iterable" before
            raise ValueError(f"overlap_chunks={self.overlap_chunks!r} must be a list of integers >= 2") from None
        if not chunks or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in chunks):
            raise ValueError(f"overlap_chunks={self.overlap_chunks!r} must be integers >= 2")
        object.__setattr__(self, "overlap_chunks", chunks)
        for name in ("tokens_per_gpu", "lsh_dim"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive integer or None")
        for name in ("max_routed_tokens", "lsh_hashes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.capacity_factor is not None and not (math.isfinite(self.capacity_factor) and self.capacity_factor > 0):
            raise ValueError(f"capacity_factor={self.capacity_factor!r} must be > 0 or None")
        if not (math.isfinite(self.locality_bonus) and self.locality_bonus >= 0):
            raise ValueError(f"locality_bonus={self.locality_bonus!r} must be finite and >= 0")
        if self.locality_share is not None and self.locality_share != "auto":
            if isinstance(self.locality_share, bool) or not isinstance(self.locality_share, (int, float)) \
                    or not 0 <= self.locality_share <= 1:
                raise ValueError(f"locality_share={self.locality_share!r} must be in [0, 1] (a share of token copies), "
                                 "'auto' or None")
            if self.router != "locmoe":
                raise ValueError(f"locality_share={self.locality_share!r} is LocMoE's locality loss: it needs "
                                 f"router='locmoe', not {self.router!r}")
        if not (math.isfinite(self.kernel_launch_s) and self.kernel_launch_s >= 0):
            raise ValueError(f"kernel_launch_s={self.kernel_launch_s!r} must be finite and >= 0")
        from lshsim import bounds     # plausibility limits (a grid's or a figure's setting is a file's field)

        for name in ("tokens_per_gpu", "lsh_dim", "lsh_hashes", "ep", "tp", "kernel_launch_s", "grad_bucket_bytes",
                     "capacity_factor", "max_routed_tokens", "locality_bonus", "grad_bytes_per_element"):
            if getattr(self, name) is not None:
                bounds.check_field(name, getattr(self, name))
        for index, n in enumerate(chunks):
            bounds.check("chunks", f"overlap_chunks[{index}]", n)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed={self.seed!r} must be a whole number in [0, {SEED_MAX}] (as lshsim plan --seed)")
        self._check_router_options()

    def _check_router_options(self) -> None:
        """The router's own options (node_limited: max_nodes, scores_per_node): declared by the router, of their
        defaults' kind, the router's own checks, and within `lshsim.bounds` (a grid's or a model's
        router_options were not checked before a point ran)."""
        from lshsim import bounds
        from lshsim.dispatch.routers import get_router, validate_router_params

        options = self.router_options
        if isinstance(options, dict):
            pairs = list(options.items())
        else:
            try:
                pairs = [tuple(pair) for pair in options]
            except TypeError:
                pairs = None
            if pairs is None or any(len(pair) != 2 or not isinstance(pair[0], str) for pair in pairs):
                raise ValueError(f"router_options={options!r} must be a mapping of option names to values "
                                 f"(or (name, value) pairs)")
        object.__setattr__(self, "router_options", tuple(sorted(pairs)))   # hashable, one order (a YAML mapping)
        if not pairs:
            return
        spec = get_router(self.router)
        try:
            validate_router_params(self.router, k=spec.fixed_k or 1, capacity_factor=None,
                                   options=dict(pairs))
        except ValueError as error:
            raise ValueError(f"router_options: {error}") from None
        for name, value in pairs:
            bounds.check_field(f"router_options.{name}", value)

    @property
    def replicates_tokens(self) -> bool:
        """True for MindSpore's TP layout with TP > 1: every TP rank holds its replica's tokens."""
        return self.tp_layout == "replicated" and self.tp > 1

    @property
    def deduplicates(self) -> bool:
        """True for the node-deduplicated all-to-all ("node_dedup", alias "deepep")."""
        return canonical_algorithm(self.algorithm, side="simulate") == "node_dedup"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["overlap_chunks"] = list(self.overlap_chunks)
        return out


# ---- placement and routing -------------------------------------------------------------------
def _gpu_ranks(graph) -> list[tuple[int, int]]:
    """(rank, node) of every GPU vertex, sorted by rank."""
    ranks = sorted((data["rank"], data["node"]) for _, data in graph.nodes(data=True) if data.get("kind") == "gpu")
    if not ranks:
        raise ValueError(f"topology {graph.graph.get('name', '?')!r} has no GPU vertices (kind='gpu')")
    if [rank for rank, _ in ranks] != list(range(len(ranks))):
        raise ValueError(f"topology {graph.graph.get('name', '?')!r}: GPU ranks are not 0..{len(ranks) - 1}")
    return ranks


def placement_for(model: object, graph, ep: int | None = None, tp: int = 1,
                  tp_layout: str = "sequence") -> Placement | GroupedPlacement:
    """Experts contiguous over the topology's GPUs: rank r holds experts [r E/W, (r+1) E/W).

    Refuses (ValueError with the numbers) when E is not a multiple of the GPU count W: fewer experts
    than GPUs need expert-parallel groups (`ep`). With ep < W: W / ep groups of ep consecutive
    ranks, each holding all experts (`lshsim.dispatch.expert_parallel_placement`). With the
    "replicated" TP layout (MindSpore's, `StepConfig.tp_layout`) and tp > 1: groups of ep ranks one
    per TP index apart (`lshsim.dispatch.placement.strided_expert_parallel_placement`); ep None means
    W / tp, and ep must divide W / tp.
    """
    spec = model_dict(model)
    ranks = _gpu_ranks(graph)
    world_size = len(ranks)
    num_experts = spec["num_experts"]
    if tp_layout == "replicated" and tp > 1:
        rank_to_node = torch.tensor([node for _, node in ranks], dtype=torch.int64)  # (W,)
        if world_size % tp:
            raise ValueError(f"tp={tp} must divide the {world_size} GPUs of cluster {graph.graph.get('name', '?')!r}")
        ep = world_size // tp if ep is None else ep
        try:
            return strided_expert_parallel_placement(num_experts, rank_to_node, ep, tp)
        except ValueError as error:
            raise ValueError(f"--ep {ep} with --tp {tp} --tp-layout replicated on cluster "
                             f"{graph.graph.get('name', '?')!r} ({world_size} GPUs): {error}") from None
    if ep is not None and ep != world_size:
        if ep > world_size or world_size % ep:
            raise ValueError(f"--ep {ep}: the expert-parallel group size must divide the {world_size} GPUs of "
                             f"cluster {graph.graph.get('name', '?')!r} (EP x DP = W)")
        if num_experts % ep:
            raise ValueError(f"--ep {ep}: model {spec['name']!r} has num_experts={num_experts}, not a multiple of "
                             f"the group size ({num_experts} % {ep} = {num_experts % ep})")
        rank_to_node = torch.tensor([node for _, node in ranks], dtype=torch.int64)  # (W,)
        return expert_parallel_placement(num_experts, rank_to_node, ep)
    if num_experts % world_size != 0:
        raise ValueError(
            f"model {spec['name']!r} has num_experts={num_experts} per MoE layer; cluster "
            f"{graph.graph.get('name', '?')!r} has {world_size} GPUs; expert parallelism needs num_experts to be a "
            f"multiple of the GPU count ({num_experts} % {world_size} = {num_experts % world_size}), or "
            f"expert-parallel groups (--ep) of a size that divides both")
    expert_to_rank = torch.arange(num_experts, dtype=torch.int64) // (num_experts // world_size)  # (E,)
    rank_to_node = torch.tensor([node for _, node in ranks], dtype=torch.int64)  # (W,)
    placement = Placement(expert_to_rank, rank_to_node)
    gpus_per_node = graph.graph.get("gpus_per_node")
    if gpus_per_node and world_size % gpus_per_node == 0:
        reference = contiguous_placement(num_experts, world_size, gpus_per_node)
        if not torch.equal(reference.rank_to_node, rank_to_node):
            raise ValueError(f"topology {graph.graph.get('name', '?')!r}: GPU ranks are not node-major")
    return placement


@dataclass(frozen=True)
class RoutedTraffic:
    """The dispatch all-to-all of one MoE layer, at full scale.

    send_counts:     (W, W) float64, token copies from source rank (row) to destination (column),
                     diagonal included (copies that stay on their rank), scaled to T tokens per rank.
    tokens_per_rank: T, tokens per GPU of the step.
    routed_per_rank: S, tokens per rank actually routed (S = T unless subsampled).
    dropped_fraction: fraction of routed choices dropped at capacity.
    gate_width:      width of the synthetic hidden states the router read (d_model, except the
                     LocMoE fallback E * ceil(d / E) when d_model % E != 0).
    k:               choices per token the router made (1 for hash).
    ep:              expert-parallel group size (W: one group).
    model:           "routed" (synthetic tokens routed on every group) or "popularity" (expected counts
                     from the popularity the router induced on one group's routed sample).
    node_copies:     (W, N) float64, distinct (token, destination node) pairs per source rank, own node
                     included, at full scale (`route_traffic`); None unless the step deduplicates.
    locality_share:  the own-node share LocMoE's locality loss was applied at (`route_traffic`), or None.
    """

    send_counts: np.ndarray
    tokens_per_rank: int
    routed_per_rank: int
    dropped_fraction: float
    gate_width: int
    k: int
    router: str
    ep: int | None = None
    model: str = "routed"
    node_copies: np.ndarray | None = None
    locality_share: float | None = None

    @property
    def scale(self) -> float:
        return self.tokens_per_rank / self.routed_per_rank


def router_config(model: object, config: StepConfig) -> RouterConfig:
    """The `RouterConfig` a step routes with: the step's router, the model's top-k (or the
    router's fixed k, `effective_k`), capacity factor and locality bonus."""
    bonus = 0.0 if config.locality_share is not None else config.locality_bonus   # a share (or auto) replaces the bonus
    return RouterConfig(name=config.router, k=effective_k(config.router, model_dict(model)["top_k"]),
                        capacity_factor=config.capacity_factor, locality_bonus=bonus,
                        options=config.router_options)


def routing_key(model: object, config: StepConfig) -> tuple:
    """What a routing depends on: the whole RouterConfig, the tokens per GPU, the seed and the
    subsample bound. Two step configs with equal keys route identically (`compare_options`)."""
    return (router_config(model, config), config.tokens_per_gpu, config.seed, config.max_routed_tokens, config.ep,
            config.traffic_model, config.deduplicates, config.locality_share, config.tp, config.tp_layout)


#: the capacity factor `auto_locality_share` assumes where the router has no capacity limit (GShard's, Tutel's)
AUTO_SHARE_CAPACITY_FACTOR = 1.25


def auto_locality_share(config: StepConfig, placement: Placement | GroupedPlacement) -> float | None:
    """The own-node share of LocMoE's locality loss that `locality_share="auto"` stands for: the most a
    node's experts accept at the capacity, min(1, capacity factor x experts on the node / all experts)
    = min(1, capacity factor / nodes) with the experts spread evenly over equal nodes (the rule of
    `lshsim reproduce`'s LocMoE figures; LocMoE gives no strength mu). With expert-parallel groups
    (EP < W) a rank's copies stay in its group, so "the node's experts" are its group's experts on the
    rank's node: min(1, capacity factor x group ranks on the node x E / EP / E), the fewest over all
    ranks where placements are uneven. None where a share is not modelled: node deduplication, or a
    router other than locmoe.

    >>> auto_locality_share(StepConfig(router="locmoe"), contiguous_placement(16, 8, gpus_per_node=4))
    0.625
    >>> auto_locality_share(StepConfig(router="locmoe", capacity_factor=3.0), contiguous_placement(16, 8, 4))
    1.0
    >>> from lshsim.dispatch.placement import strided_expert_parallel_placement
    >>> nodes = torch.arange(64) // 8                    # 8 servers of 8; EP 8, one rank per server per group
    >>> auto_locality_share(StepConfig(router="locmoe"), strided_expert_parallel_placement(16, nodes, 8, 8))
    0.15625
    """
    if config.router != "locmoe" or config.deduplicates:
        return None
    factor = config.capacity_factor if config.capacity_factor is not None else AUTO_SHARE_CAPACITY_FACTOR
    if isinstance(placement, GroupedPlacement) and placement.ep < placement.world_size:
        node = placement.rank_to_node.numpy()[placement.groups.numpy()]          # (DP, EP) node of each group rank
        on_node = (node[:, :, None] == node[:, None, :]).sum(axis=2)             # group ranks on each rank's node
        return float(min(1.0, factor * int(on_node.min()) / placement.ep))
    nodes = len(np.unique(placement.rank_to_node.numpy()))
    return float(min(1.0, factor / nodes))


def apply_locality_share(counts: np.ndarray, rank_to_node: np.ndarray, share: float) -> np.ndarray:
    """The (W, W) copies with, per source rank (row), the fewest off-node copies moved onto its own
    node's ranks (in proportion to the copies they already get; evenly if none) that make the
    own-node share of the row `share`; rows already at or above it are unchanged. Row sums are kept.

    >>> apply_locality_share(np.array([[2.0, 2.0, 4.0, 0.0]]), np.array([0, 0, 1, 1]), 0.75).tolist()
    [[3.0, 3.0, 2.0, 0.0]]
    """
    counts = np.array(counts, dtype=float)
    node = np.asarray(rank_to_node)
    same = node[:, None] == node[None, :]                        # (W, W) own-node pairs
    if counts.shape[0] != len(node):                             # a sample of source ranks: rows 0..S-1
        same = same[:counts.shape[0]]
    total = counts.sum(axis=1)                                   # (S,)
    on = np.where(same, counts, 0.0).sum(axis=1)
    off = total - on
    want = share * total
    move = np.clip(want - on, 0.0, off)                          # copies to move per row
    keep_off = np.divide(off - move, off, out=np.ones_like(off), where=off > 0)
    weights = np.where(same, counts, 0.0)
    weights_sum = weights.sum(axis=1)
    even = same / same.sum(axis=1, keepdims=True)
    weights = np.where((weights_sum > 0)[:, None], weights / np.where(weights_sum > 0, weights_sum, 1)[:, None], even)
    return np.where(same, counts + move[:, None] * weights, counts * keep_off[:, None])


def apply_group_locality_share(counts: np.ndarray, rank_to_node: np.ndarray, groups: np.ndarray,
                               share: float) -> np.ndarray:
    """`apply_locality_share` inside each expert-parallel group: a group holds all experts, so a
    rank's copies go to its own group's ranks only (the (W, W) counts are block diagonal), and the
    locality loss moves them onto the group's ranks on the rank's own node, never onto another
    group's. groups: (DP, EP) global ranks (`GroupedPlacement.groups`); counts may hold the first S
    source rows only, as `apply_locality_share`'s. Copies outside a group's block are refused.

    >>> counts = np.array([[2.0, 2.0, 0, 0], [0, 4.0, 0, 0], [0, 0, 1.0, 3.0], [0, 0, 0, 4.0]])
    >>> apply_group_locality_share(counts, np.array([0, 1, 0, 1]), np.array([[0, 1], [2, 3]]), 0.75).tolist()
    [[3.0, 1.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 0.0, 4.0]]
    """
    counts = np.array(counts, dtype=float)
    node = np.asarray(rank_to_node)
    groups = np.asarray(groups)
    rows = counts.shape[0]
    if groups.ndim != 2 or sorted(groups.ravel().tolist()) != list(range(len(node))):
        raise ValueError(f"groups of shape {groups.shape} must partition the {len(node)} ranks (DP x EP)")
    member = np.zeros((len(node), len(node)), dtype=bool)
    for ranks in groups:
        member[np.ix_(ranks, ranks)] = True
    if np.any(counts[~member[:rows]] != 0):
        raise ValueError("counts send copies outside a rank's expert-parallel group: not a grouped routing")
    out = counts.copy()
    for ranks in groups:
        source = ranks[ranks < rows]                     # the sampled rows of this group (first ones)
        if source.size:
            out[np.ix_(source, ranks)] = apply_locality_share(counts[np.ix_(source, ranks)], node[ranks], share)
    return out


def _gate_width(spec: dict, config: StepConfig) -> int:
    d_model, num_experts = spec["d_model"], spec["num_experts"]
    if config.router == "locmoe" and d_model % num_experts != 0:
        # GrAP needs equal feature groups; synthetic hidden states of width E * ceil(d / E) keep
        # the group-mean statistics of the nearest valid width (documented fallback).
        return num_experts * math.ceil(d_model / num_experts)
    return d_model


class RouterInputCache:
    """The last `size` router-input draws by their arguments, for `reuse_router_inputs`.

    `synthetic_router_inputs` is a pure function of (tokens per rank, ranks, gate width, experts,
    seed, vocabulary): the same arguments give the same tensors. Routing several routers on one
    model and cluster (`lshsim reproduce`: LocMoE's router, hash and top-k on one 64-GPU cluster)
    draws the same inputs each time, and a draw of 131,072 tokens x 1,024 features is seconds of
    random numbers and a matmul. A hit hands out the kept tensors themselves (a copy would cost about
    as much as the draw): only to the routers lshsim ships (`lshsim.dispatch.routers.BUILTIN_ROUTERS`,
    none writes into its inputs); a registered router gets a fresh draw. hits / misses count its use."""

    def __init__(self, size: int = 2):
        self.size = int(size)
        self.kept: dict = {}
        self.hits = self.misses = 0

    def draw(self, key: tuple, make):
        if key in self.kept:
            self.hits += 1
            self.kept[key] = self.kept.pop(key)          # most recently used last
            return self.kept[key]
        self.misses += 1
        self.kept[key] = make()
        while len(self.kept) > self.size:
            self.kept.pop(next(iter(self.kept)))
        return self.kept[key]


_INPUT_CACHE: RouterInputCache | None = None


@contextlib.contextmanager
def reuse_router_inputs(cache: RouterInputCache):
    """Within the block, `route_traffic` with a router lshsim ships takes its synthetic router inputs
    from `cache` (drawn once per distinct set of arguments while kept there; `RouterInputCache`)."""
    global _INPUT_CACHE
    previous, _INPUT_CACHE = _INPUT_CACHE, cache
    try:
        yield cache
    finally:
        _INPUT_CACHE = previous


def draws_whole_hidden(config: StepConfig) -> bool:
    """Whether a routing of `config` draws the (T, d) hidden states whole (`_draw_inputs`): only for a
    router that is not the shipped one of its name (a registered plugin reads what it likes)."""
    from lshsim.dispatch.routers import BUILTIN_ROUTERS

    return ROUTERS.get(config.router) is not BUILTIN_ROUTERS.get(config.router, False)


def _draw_inputs(model: object, config: StepConfig, routed: int, world_size: int, seed: int):
    """The synthetic router inputs of a routing (`synthetic_router_inputs`). A router lshsim ships
    (`BUILTIN_ROUTERS`) reads the logits or the token ids, or, LocMoE's, the hidden states' GrAP group
    means alone: it gets those (hidden="pooled", RouterInputs.hidden (T, E); "none" when the width
    has no equal groups, which no shipped router then reads), the same plan bit for bit without ever
    holding the (T, d) states (3.8 GB for DeepSeek-V3 on 64 GPUs). A registered router gets them whole."""
    spec = model_dict(model)
    args = dict(num_tokens_per_rank=routed, world_size=world_size, d_model=_gate_width(spec, config),
                num_experts=spec["num_experts"], seed=seed, vocab_size=spec["vocab_size"])
    if draws_whole_hidden(config):
        return synthetic_router_inputs(**args)
    args["hidden"] = "pooled" if args["d_model"] % args["num_experts"] == 0 else "none"
    if _INPUT_CACHE is None:
        return synthetic_router_inputs(**args)
    return _INPUT_CACHE.draw(tuple(sorted(args.items())), lambda: synthetic_router_inputs(**args))


def _route_group(model: object, placement: Placement, config: StepConfig, inputs, first_rank: int = 0):
    """Route the tokens of `inputs` that live on ranks first_rank .. first_rank + EP - 1 on one
    group's placement (local ranks): the DispatchPlan."""
    ep = placement.world_size
    rows = (inputs.token_rank >= first_rank) & (inputs.token_rank < first_rank + ep)
    if first_rank == 0 and bool(rows.all()):
        logits, token_ids, hidden, token_rank = inputs.logits, inputs.token_ids, inputs.hidden, inputs.token_rank
    else:
        logits, token_ids = inputs.logits[rows], inputs.token_ids[rows]
        hidden = None if inputs.hidden is None else inputs.hidden[rows]
        token_rank = inputs.token_rank[rows] - first_rank
    return route(router_config(model, config), placement, logits=logits, token_ids=token_ids, hidden=hidden,
                 token_rank=token_rank)


def rank_tokens(spec: dict, config: StepConfig) -> int:
    """Tokens each GPU routes: those of its TP group's micro-batch (the config's tokens_per_gpu, else
    the model's) over TP (sequence parallelism); ValueError when TP does not divide them.

    With the "replicated" TP layout (MindSpore's) every TP rank routes all of them.

    >>> rank_tokens({"tokens_per_gpu": 4096}, StepConfig(tp=4)), rank_tokens({"tokens_per_gpu": 4096}, StepConfig())
    (1024, 4096)
    >>> rank_tokens({"tokens_per_gpu": 4096}, StepConfig(tp=4, tp_layout="replicated"))
    4096
    """
    tokens = config.tokens_per_gpu or spec["tokens_per_gpu"]
    if config.replicates_tokens:
        return tokens
    if tokens % config.tp:
        raise ValueError(f"tp={config.tp} must divide tokens_per_gpu={tokens} (the tokens of one TP group's "
                         f"micro-batch; sequence parallelism gives each TP rank 1 / TP of them)")
    return tokens // config.tp


def traffic_model_for(config: StepConfig, world_size: int) -> str:
    """The traffic model a step uses: the config's, else "popularity" when there are several
    expert-parallel groups (their ranks are then alike by their position in the group: few rank
    classes) or more than POPULARITY_MIN_GPUS GPUs, "routed" otherwise (EP = W, as before)."""
    if config.traffic_model is not None:
        return config.traffic_model
    several_groups = config.ep is not None and config.ep < world_size
    return "popularity" if several_groups or world_size > POPULARITY_MIN_GPUS else "routed"


def _plan_node_pairs(plan) -> tuple[np.ndarray, np.ndarray]:
    """(source local rank, destination local node) of every distinct (token, node) pair of a
    DispatchPlan's kept choices (a token with several experts on one node counts once there)."""
    node_of_expert = plan.placement.expert_to_node.cpu().numpy()                        # (E,)
    kept = plan.kept.cpu().numpy()                                                      # (T, k)
    token = np.broadcast_to(np.arange(kept.shape[0])[:, None], kept.shape)[kept]        # (N,)
    node = node_of_expert[plan.expert_index.cpu().numpy()[kept]]                        # (N,)
    nodes = int(plan.placement.num_nodes)
    pairs = np.unique(token.astype(np.int64) * nodes + node)                            # (P,)
    source = plan.token_rank.cpu().numpy()[pairs // nodes]
    return source, pairs % nodes


def _group_node_copies(plan, ranks: np.ndarray, rank_to_node: np.ndarray, num_nodes: int,
                       scale: float) -> np.ndarray:
    """(EP, N) distinct (token, node) pairs of one group's plan, on the global nodes, scaled."""
    global_node = np.unique(rank_to_node[ranks])                                        # local -> global node
    source, local_node = _plan_node_pairs(plan)
    out = np.zeros((len(ranks), num_nodes))
    np.add.at(out, (source, global_node[local_node]), 1.0)
    return out * scale


def _popularity_node_copies(plan, counts: np.ndarray, rank_to_node: np.ndarray) -> np.ndarray:
    """(W, N) expected distinct (token, node) pairs of popularity traffic: on each other node, the
    sample's ratio of distinct (token, other node) pairs to the copies sent to other nodes, times
    the copies; on a rank's own node its copies (nothing of it crosses the network)."""
    node_of_rank = plan.placement.rank_to_node.cpu().numpy()                            # (EP,) local nodes
    source, local_node = _plan_node_pairs(plan)
    remote_pairs = int((node_of_rank[source] != local_node).sum())
    kept = plan.kept.cpu().numpy()
    src = np.broadcast_to(plan.token_rank.cpu().numpy()[:, None], kept.shape)[kept]
    dst_node = plan.placement.expert_to_node.cpu().numpy()[plan.expert_index.cpu().numpy()[kept]]
    remote_copies = int((node_of_rank[src] != dst_node).sum())
    ratio = remote_pairs / remote_copies if remote_copies else 1.0
    num_nodes = int(rank_to_node.max()) + 1
    per_node = np.zeros((counts.shape[0], num_nodes))
    for m in range(num_nodes):
        per_node[:, m] = counts[:, rank_to_node == m].sum(axis=1)
    own = rank_to_node[:, None] == np.arange(num_nodes)[None, :]
    return np.where(own, per_node, ratio * per_node)


def route_traffic(model: object, placement: Placement | GroupedPlacement, config: StepConfig,
                  tokens_per_gpu: int | None = None) -> RoutedTraffic:
    """`_route_traffic`, then LocMoE's locality share (`apply_locality_share`) when the config sets one."""
    traffic = _route_traffic(model, placement, config, tokens_per_gpu)
    if config.locality_share is None or config.router != "locmoe":
        return traffic
    from dataclasses import replace as _replace

    if config.locality_share == "auto":
        share = auto_locality_share(config, placement)
        if share is None:  # not modelled here: plain GrAP routing (bonus 0), no share
            return traffic
    else:
        if config.deduplicates:
            raise ValueError(f"locality_share={config.locality_share} with algorithm {config.algorithm!r} is not "
                             f"modelled (the share moves copies, not (token, node) pairs): use one or the other")
        share = float(config.locality_share)
    if isinstance(placement, GroupedPlacement) and placement.ep < placement.world_size:   # inside each group
        counts = apply_group_locality_share(traffic.send_counts, placement.rank_to_node.numpy(),
                                            placement.groups.numpy(), share)
    else:
        counts = apply_locality_share(traffic.send_counts, placement.rank_to_node.numpy(), share)
    return _replace(traffic, send_counts=counts, locality_share=share)


def _route_traffic(model: object, placement: Placement | GroupedPlacement, config: StepConfig,
                   tokens_per_gpu: int | None = None) -> RoutedTraffic:
    """Route synthetic tokens with the configured router of `lshsim.dispatch` (see module docstring).

    The router routes S = min(T, max_routed_tokens // W) synthetic tokens per rank, drawn once for
    all W ranks (seed `config.seed`, one gate). Expert-parallel groups: each group routes the tokens
    of its own ranks on its placement (the same gate: the DP replicas share the model), into its
    diagonal block. With the "popularity" traffic model (`traffic_model_for`): `popularity_traffic`.
    """
    spec = model_dict(model)
    world_size = placement.world_size
    tokens = tokens_per_gpu or rank_tokens(spec, config)
    if traffic_model_for(config, world_size) == "popularity":
        return popularity_traffic(model, placement, config, tokens)
    routed = max(1, min(tokens, config.max_routed_tokens // world_size))
    k = router_config(model, config).k
    gate_width = _gate_width(spec, config)
    inputs = _draw_inputs(model, config, routed, world_size, config.seed)
    rank_to_node = placement.rank_to_node.cpu().numpy()                            # (W,) global nodes
    num_nodes = int(rank_to_node.max()) + 1
    if isinstance(placement, Placement):
        plan = _route_group(model, placement, config, inputs)
        counts = plan.send_counts().to(torch.float64).numpy() * (tokens / routed)  # (W, W) copies
        num_routed = int(plan.routed.sum())
        node_copies = _group_node_copies(plan, np.arange(world_size), rank_to_node, num_nodes, tokens / routed) \
            if config.deduplicates else None
        return RoutedTraffic(send_counts=counts, tokens_per_rank=tokens, routed_per_rank=routed,
                             dropped_fraction=plan.num_dropped / max(num_routed, 1), gate_width=gate_width, k=k,
                             router=config.router, ep=world_size, node_copies=node_copies)
    counts = np.zeros((world_size, world_size))                                    # (W, W) copies
    node_copies = np.zeros((world_size, num_nodes)) if config.deduplicates else None
    dropped = num_routed = 0
    replicated = config.replicates_tokens
    for ranks, group in zip(placement.groups.numpy(), placement.placements):
        # replicated TP layout: the group of TP index m in block b routes the tokens of replicas
        # b EP .. b EP + EP - 1, the same for every m (the TP ranks of a replica hold the same tokens)
        first = int(ranks[0]) // config.tp if replicated else int(ranks[0])
        plan = _route_group(model, group, config, inputs, first)
        counts[np.ix_(ranks, ranks)] = plan.send_counts().to(torch.float64).numpy() * (tokens / routed)
        if node_copies is not None:
            node_copies[ranks] = _group_node_copies(plan, ranks, rank_to_node, num_nodes, tokens / routed)
        dropped += plan.num_dropped
        num_routed += int(plan.routed.sum())
    return RoutedTraffic(send_counts=counts, tokens_per_rank=tokens, routed_per_rank=routed,
                         dropped_fraction=dropped / max(num_routed, 1), gate_width=gate_width, k=k,
                         router=config.router, ep=placement.ep, node_copies=node_copies)


def popularity_traffic(model: object, placement: Placement | GroupedPlacement, config: StepConfig,
                       tokens_per_gpu: int | None = None, inputs=None) -> RoutedTraffic:
    """The dispatch traffic as expected counts from the expert popularity the router induces.

    The router routes S = min(T, max_routed_tokens // EP) synthetic tokens per rank of ONE group
    (group 0: `synthetic_router_inputs` for EP ranks, seed `config.seed`; or the ranks 0..EP-1 of
    `inputs`, RouterInputs drawn for the world, which is how the tests route both ways with one gate),
    and the kept choices give each expert e two popularities: p_in[e],
    kept choices to e per token on e's node, and p_out[e], per token on another node (a router that
    prefers its own node, as LocMoE does, makes them differ; top-k makes them equal up to noise).
    Every group g then sends, from its local rank i to local rank j, the expected
    T * sum over experts e on j of (p_in[e] if i and j share a node else p_out[e]) copies: no per-rank
    sampling noise, and no routing of W * T tokens (8,192 GPUs routed took 28 s and 9 GB). Drops at
    capacity are those of the sample (capacity scales with the tokens routed). Exact for a router
    whose choice depends on the token alone and on whether an expert is on its node; checked
    against routing every rank (tests/test_ep_groups.py).
    """
    spec = model_dict(model)
    tokens = tokens_per_gpu or rank_tokens(spec, config)
    if isinstance(placement, Placement):
        placement = expert_parallel_placement(placement.num_experts, placement.rank_to_node, placement.world_size) \
            if placement.num_experts % placement.world_size == 0 else GroupedPlacement(
                ep=placement.world_size, groups=torch.arange(placement.world_size)[None, :],
                placements=(placement,), rank_to_node=placement.rank_to_node)
    ep, world_size = placement.ep, placement.world_size
    sample = placement.placements[0]
    if inputs is None:
        routed = max(1, min(tokens, config.max_routed_tokens // ep))
        inputs = _draw_inputs(model, config, routed, ep, config.seed)
    else:
        routed = int((inputs.token_rank == 0).sum())
    plan = _route_group(model, sample, config, inputs)
    num_experts = sample.num_experts
    src = plan.token_rank.unsqueeze(1).expand_as(plan.expert_index)[plan.kept].numpy()       # (N,) local ranks
    expert = plan.expert_index[plan.kept].numpy()                                            # (N,)
    node_of_rank = sample.rank_to_node.numpy()                                               # (EP,)
    node_of_expert = sample.expert_to_node.numpy()                                           # (E,)
    same = node_of_rank[src] == node_of_expert[expert]                                       # (N,)
    ranks_on_node = np.bincount(node_of_rank, minlength=sample.num_nodes)                    # (nodes,)
    tokens_in = routed * ranks_on_node[node_of_expert].astype(float)                         # (E,) tokens on e's node
    tokens_out = routed * ep - tokens_in                                                     # (E,)
    kept_in = np.bincount(expert[same], minlength=num_experts).astype(float)
    kept_out = np.bincount(expert[~same], minlength=num_experts).astype(float)
    p_in = np.divide(kept_in, tokens_in, out=np.zeros(num_experts), where=tokens_in > 0)      # (E,)
    p_out = np.divide(kept_out, tokens_out, out=np.zeros(num_experts), where=tokens_out > 0)  # (E,)
    if not (tokens_out > 0).any():            # one node: no "other node" tokens were seen
        p_out = p_in
    rank_of_expert = sample.expert_to_rank.numpy()                                           # (E,) local
    rate_in = np.bincount(rank_of_expert, weights=p_in, minlength=ep)                        # (EP,)
    rate_out = np.bincount(rank_of_expert, weights=p_out, minlength=ep)                      # (EP,)
    counts = np.zeros((world_size, world_size))                                              # (W, W) copies
    for ranks, group in zip(placement.groups.numpy(), placement.placements):
        nodes = group.rank_to_node.numpy()                                                   # (EP,)
        block = np.where(nodes[:, None] == nodes[None, :], rate_in[None, :], rate_out[None, :]) * tokens
        counts[np.ix_(ranks, ranks)] = block
    num_routed = int(plan.routed.sum())
    node_copies = _popularity_node_copies(plan, counts, placement.rank_to_node.cpu().numpy()) \
        if config.deduplicates else None
    return RoutedTraffic(send_counts=counts, tokens_per_rank=tokens, routed_per_rank=routed,
                         dropped_fraction=plan.num_dropped / max(num_routed, 1), gate_width=_gate_width(spec, config),
                         k=router_config(model, config).k, router=config.router, ep=ep, model="popularity",
                         node_copies=node_copies)


# ---- network ---------------------------------------------------------------------------------
class A2ACache:
    """All-to-all times by (traffic matrix, algorithm, fidelity) on one topology.

    A step asks for few distinct matrices many times, and the options of one `lshsim plan` run ask
    for the same ones again (the baseline's dispatch is also the overlap option's n = 1 dispatch, ...):
    `compare_options` shares one cache between its options. The key is a BLAKE2b digest of the
    matrix bytes with its shape and dtype, the canonical algorithm name and the drain tolerance
    (the fidelity: 0 = exact, see `lshsim.sim.network.FlowNetwork`); the cache belongs to one
    topology graph (`graph`), whose routes it computes once. A hit returns exactly the time a fresh
    simulation would (the simulation is deterministic). hits / misses / simulated_s count its use;
    `on_simulate(algorithm, traffic_bytes)` is called before each simulation it runs (progress).
    """

    def __init__(self, graph, drain_tolerance: float = 0.0, on_simulate=None, estimate: bool = False):
        if not 0.0 <= drain_tolerance < 1.0:
            raise ValueError(f"drain_tolerance={drain_tolerance} must be in [0, 1)")
        self.graph, self.drain_tolerance, self.on_simulate = graph, float(drain_tolerance), on_simulate
        #: the "estimate" fidelity: all-to-alls from link loads, phase by phase (`estimate_collective`:
        #: direct, groupwise, hierarchical, pairwise), other algorithms simulated with `drain_tolerance`
        self.estimate = bool(estimate)
        self.routes = validate_topology(graph)  # shortest paths, computed once per cache
        self.times: dict[tuple, float] = {}
        self.hits = self.misses = 0
        self.simulated_s = 0.0

    @staticmethod
    def _digest(array: np.ndarray) -> bytes:
        array = np.ascontiguousarray(array)
        return hashlib.blake2b(memoryview(array).cast("B"), digest_size=32).digest() + str(array.shape).encode()

    def key(self, traffic_bytes: np.ndarray, algorithm: str, options: dict | None = None) -> tuple:
        extra = tuple(sorted((name, self._digest(np.asarray(value, dtype=float)) if isinstance(value, np.ndarray)
                              else value) for name, value in (options or {}).items()))
        matrix = np.asarray(traffic_bytes)
        # hash the buffer in place (no copy: a (W, W) matrix is 512 MB at 8,192 GPUs); a transposed
        # (Fortran-ordered) matrix is hashed through its C-ordered transpose, and says so in the key
        layout = "C"
        if not matrix.flags.c_contiguous and matrix.T.flags.c_contiguous:
            matrix, layout = matrix.T, "T"
        matrix = np.ascontiguousarray(matrix)
        digest = hashlib.blake2b(memoryview(matrix).cast("B"), digest_size=32).digest()
        return (digest, layout, matrix.shape, matrix.dtype.str, canonical_algorithm(algorithm, side="simulate"),
                self.drain_tolerance, self.estimate) + ((extra,) if extra else ())

    def time_s(self, traffic_bytes: np.ndarray, algorithm: str, **options) -> float:
        """Seconds of one all-to-all of `traffic_bytes` (W, W) with `algorithm` at the cache's fidelity;
        `options` go to the algorithm (node_dedup: node_bytes, combine) and into the cache key."""
        key = self.key(traffic_bytes, algorithm, options)
        if key in self.times:
            self.hits += 1
            return self.times[key]
        self.misses += 1
        if self.on_simulate is not None:
            self.on_simulate(algorithm, traffic_bytes)
        started = time.perf_counter()
        if self.estimate and key[4] in ESTIMATED_ALGORITHMS and not options:
            self.times[key] = estimate_collective(self.graph, traffic_bytes, key[4], routes=self.routes).time_s
        else:
            result = simulate_all_to_all(self.graph, traffic_bytes, algorithm, routes=self.routes,
                                         drain_tolerance=self.drain_tolerance, **options)
            self.times[key] = float(result.time_s)
        self.simulated_s += time.perf_counter() - started
        return self.times[key]

    def all_reduce_s(self, groups: np.ndarray, size_bytes: float) -> float:
        """Seconds of a ring all-reduce of `size_bytes` per rank over every group of `groups` ((R, g)
        ranks) at once (`lshsim.sim.collectives.ring_all_reduce`, exact flow simulation of one ring
        step; the NICs at the software's all-reduce efficiency, G.graph["allreduce_nic_scale"]), or
        the two-level `hierarchical_all_reduce` where the software says so
        (G.graph["allreduce_algorithm"], `software.allreduce_algorithm`); cached like the all-to-alls."""
        table = np.ascontiguousarray(np.asarray(groups, dtype=np.int64))
        key = ("all_reduce", self._digest(table), float(size_bytes))
        if key in self.times:
            self.hits += 1
            return self.times[key]
        self.misses += 1
        started = time.perf_counter()
        scale = float(self.graph.graph.get("allreduce_nic_scale", 1.0) or 1.0)
        by_kind = {"nic": scale} if scale != 1.0 and self.graph.graph.get("nics_per_node") else None
        algorithm = hierarchical_all_reduce if self.graph.graph.get("allreduce_algorithm") == "hierarchical" \
            else ring_all_reduce      # the software's algorithm over the servers (software.allreduce_algorithm)
        self.times[key] = algorithm(self.graph, table, float(size_bytes), routes=self.routes,
                                    bandwidth_scale_by_kind=by_kind).time_s
        self.simulated_s += time.perf_counter() - started
        return self.times[key]

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "simulated_s": self.simulated_s}

    @property
    def fidelity(self) -> str:
        """The level this cache answers at: "exact", "tolerance" or "estimate"."""
        return "estimate" if self.estimate else ("exact" if self.drain_tolerance == 0 else "tolerance")


# ---- the pipelined MoE section -----------------------------------------------------------------
def _moe_section(t0: float, world_size: int, first: tuple[str, float, np.ndarray],
                 compute_s: np.ndarray, second: tuple[str, float, np.ndarray], chunks: int,
                 layer: int, direction: str, ranks: np.ndarray | None = None) -> tuple[list[PhaseRecord], float]:
    """Simulate network -> per-rank expert compute -> network in `chunks` pipelined pieces (simpy;
    one chunk, with finite times >= 0: `_moe_section_unpipelined`, the same records without simpy).

    first/second: (phase name, time of ONE chunk's all-to-all, (W,) bytes each rank sends per chunk).
    compute_s: (W,) expert time of one chunk per rank. Returns the records and the end time.
    ranks: the rank each of the W entries stands for in the records (default 0..W-1; rank classes).
    """
    ids = [int(r) for r in (range(world_size) if ranks is None else ranks)]
    if chunks == 1 and world_size > 0 and all(math.isfinite(x) and x >= 0 for x in
                                              (t0, first[1], second[1], *np.asarray(compute_s, dtype=float)[:world_size])):
        return _moe_section_unpipelined(t0, world_size, first, compute_s, second, layer, direction, ids)
    return _moe_section_simpy(t0, world_size, first, compute_s, second, chunks, layer, direction, ids)


def _moe_section_simpy(t0: float, world_size: int, first: tuple[str, float, np.ndarray], compute_s: np.ndarray,
                       second: tuple[str, float, np.ndarray], chunks: int, layer: int, direction: str,
                       ids: list[int]) -> tuple[list[PhaseRecord], float]:
    """`_moe_section` simulated with simpy (any chunk count)."""
    env = simpy.Environment(initial_time=t0)
    network = simpy.Resource(env, capacity=1)
    streams = [simpy.Resource(env, capacity=1) for _ in range(world_size)]
    records: list[PhaseRecord] = []
    first_done = [env.event() for _ in range(chunks)]

    def collective(name: str, seconds: float, sent: np.ndarray, done: simpy.Event | None):
        with network.request() as request:
            yield request
            start = env.now
            yield env.timeout(seconds)
            for rank in range(world_size):
                records.append(PhaseRecord(name, ids[rank], start, env.now, bytes=int(sent[rank]), layer=layer,
                                           direction=direction))
        if done is not None:
            done.succeed()

    def expert(chunk: int, rank: int):
        yield first_done[chunk]
        with streams[rank].request() as request:
            yield request
            start = env.now
            yield env.timeout(float(compute_s[rank]))
            records.append(PhaseRecord("expert", ids[rank], start, env.now, layer=layer, direction=direction))

    def chunk_process(chunk: int):
        experts = [env.process(expert(chunk, rank)) for rank in range(world_size)]
        yield env.all_of(experts)
        yield env.process(collective(second[0], second[1], second[2], None))

    for chunk in range(chunks):  # issued in order: the FIFO network serves first-chunk collectives in order
        env.process(collective(first[0], first[1], first[2], first_done[chunk]))
    finals = [env.process(chunk_process(chunk)) for chunk in range(chunks)]
    env.run(until=env.all_of(finals))
    return records, env.now


def _moe_section_unpipelined(t0: float, world_size: int, first: tuple[str, float, np.ndarray], compute_s: np.ndarray,
                             second: tuple[str, float, np.ndarray], layer: int, direction: str,
                             ids: list[int]) -> tuple[list[PhaseRecord], float]:
    """`_moe_section` with one chunk, without simpy: the same records in the same order, the same
    times to the bit (each is the same sum the simulation's clock makes: the first collective ends
    at t0 + its time, expert r at that + its time, the second collective starts when the last expert
    ends; expert records in order of their end, ties by rank, as simpy's events come out)."""
    name, seconds, sent = first
    end = t0 + seconds
    records = [PhaseRecord(name, ids[rank], t0, end, bytes=int(sent[rank]), layer=layer, direction=direction)
               for rank in range(world_size)]
    ends = [end + float(compute_s[rank]) for rank in range(world_size)]
    for rank in sorted(range(world_size), key=ends.__getitem__):      # stable: ties by rank
        records.append(PhaseRecord("expert", ids[rank], end, ends[rank], layer=layer, direction=direction))
    start = max(ends) if ends else end
    name, seconds, sent = second
    finish = start + seconds
    records.extend(PhaseRecord(name, ids[rank], start, finish, bytes=int(sent[rank]), layer=layer,
                               direction=direction) for rank in range(world_size))
    return records, finish


# ---- the step ---------------------------------------------------------------------------------
@dataclass
class StepResult:
    """A simulated step: the Trace and a summary (`breakdown`, JSON-ready)."""

    trace: Trace
    breakdown: dict
    config: StepConfig
    traffic: RoutedTraffic = field(repr=False)


def simulate_step(model: object, graph, router: str = "topk", lsh_rate: float | None = None,
                  algorithm: str = "direct", overlap: bool = False, tokens_per_gpu: int | None = None,
                  seed: int = 0, *, traffic: RoutedTraffic | None = None, **options) -> StepResult:
    """Simulate one training step of `model` on the topology `graph` (see the module docstring).

    `options` are further `StepConfig` fields (capacity_factor, locality_bonus, overlap_chunks, ...).
    `traffic` reuses a routing from an earlier call with the same model, cluster, router and seed.
    """
    config = StepConfig(router=router, lsh_rate=lsh_rate, algorithm=algorithm, overlap=overlap,
                        tokens_per_gpu=tokens_per_gpu, seed=seed, **options)
    return simulate_config(model, graph, config, traffic=traffic)


#: `simulate_config(rank_classes=None)` summarises ranks by class above this many GPUs
RANK_CLASS_MIN_GPUS = 64


def rank_classes(columns: list[np.ndarray], world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranks that are alike: the same value in every column (a phase's seconds or bytes per rank).

    Returns (representatives, class_of_rank): representatives (K,) the lowest rank of each class,
    ascending; class_of_rank (W,) the index of each rank's class in `representatives`.

    >>> reps, of = rank_classes([np.array([1.0, 2.0, 1.0, 2.0]), np.array([5, 5, 5, 6])], 4)
    >>> reps.tolist(), of.tolist()
    ([0, 1, 3], [0, 1, 0, 2])
    """
    if not columns:
        return np.zeros(1, dtype=np.int64), np.zeros(world_size, dtype=np.int64)
    table = np.stack([np.broadcast_to(np.asarray(c, dtype=float), (world_size,)) for c in columns], axis=1)  # (W, K)
    _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)                      # classes by their lowest rank
    rename = np.empty(len(first), dtype=np.int64)
    rename[order] = np.arange(len(first))
    return first[order].astype(np.int64), rename[np.asarray(inverse).reshape(-1)]


def simulate_config(model: object, graph, config: StepConfig, traffic: RoutedTraffic | None = None, *,
                    a2a_cache: A2ACache | None = None, rank_classes_: bool | None = None) -> StepResult:
    """`simulate_step` with a ready StepConfig.

    `a2a_cache`: an `A2ACache` of `graph` to read and fill (its drain tolerance sets the fidelity of
    the all-to-alls); default a fresh exact one for this step.

    Rank classes (`rank_classes_`: None = on above RANK_CLASS_MIN_GPUS GPUs): ranks whose every
    phase (each phase, direction and chunk count the step can use) costs the same seconds and moves
    the same bytes form one class (`rank_classes`); the trace holds the records of each class's lowest
    rank only, and meta["rank_classes"] says how many classes there are, their representatives and
    sizes, and the class of every rank. Nothing is lost: the step's timeline is the same on every
    member of a class, and the trace's per-phase times are maxima over ranks. With expected
    (popularity) traffic, ranks are alike by their position in their EP group, so an 8,192-GPU step
    with EP 64 has ~64 classes instead of 8,192 ranks; sampled (routed) traffic makes most ranks
    distinct (no saving, same answer).
    """
    spec = model_dict(model)
    check_tensor_parallel(config.tp, graph, config.tokens_per_gpu or spec["tokens_per_gpu"], model, config.tp_layout)
    placement = placement_for(model, graph, config.ep, config.tp, config.tp_layout)
    world_size = placement.world_size
    ep = placement.ep if isinstance(placement, GroupedPlacement) else world_size
    gpu = graph.graph["gpu"]
    if traffic is None:
        traffic = route_traffic(model, placement, config)
    elif traffic.send_counts.shape != (world_size, world_size) or traffic.router != config.router \
            or (traffic.ep or world_size) != ep:
        raise ValueError(f"traffic was routed for {traffic.send_counts.shape[0]} ranks (EP {traffic.ep}) with router "
                         f"{traffic.router!r}, not {world_size} ranks (EP {ep}) with {config.router!r}")
    if (config.tokens_per_gpu is not None or config.tp > 1) and traffic.tokens_per_rank != rank_tokens(spec, config):
        raise ValueError(f"traffic has {traffic.tokens_per_rank} tokens per GPU, the config asks "
                         f"{rank_tokens(spec, config)} (tokens_per_gpu={config.tokens_per_gpu}, tp={config.tp})")
    counts = traffic.send_counts  # (W, W) token copies
    wire = counts if config.lsh_rate is None else np.ceil(config.lsh_rate * counts)  # (W, W) tokens or centroids
    moe_layer = resolve_moe_layer(config, gpu)
    capacity = None
    if moe_layer in PADDED_LAYERS:   # capacity-padded buffers: E_local x C rows to every rank of the EP group
        if config.deduplicates:
            raise ValueError(f"moe_layer={moe_layer!r} sends capacity-padded buffers; algorithm {config.algorithm!r} "
                             f"deduplicates routed tokens: use one or the other (lshsim plan --moe-layer grouped: today's "
                             f"routed layer)")
        capacity = padded_capacity(traffic.tokens_per_rank, traffic.k, spec["num_experts"], config.capacity_factor)
        rows = (spec["num_experts"] // ep) * capacity
        if config.lsh_rate is not None:
            rows = math.ceil(config.lsh_rate * rows)
        group = np.zeros(world_size, dtype=np.int64)                                   # (W,) group of each rank
        if isinstance(placement, GroupedPlacement):
            for index, members in enumerate(placement.groups.numpy()):
                group[members] = index
        wire = np.where(group[:, None] == group[None, :], float(rows), 0.0)   # (W, W)
    bytes_per_token = spec["d_model"] * spec["bytes_per_element"]
    gradient_bytes = None
    if config.dispatch_format is not None:  # the forward dispatch in its format; gradients in the model's
        gradient_bytes = np.rint(wire * bytes_per_token).astype(np.int64)          # (W, W)
        bytes_per_token = format_bytes_per_token(config.dispatch_format, spec["d_model"])
    dispatch_bytes = np.rint(wire * bytes_per_token).astype(np.int64)  # (W, W)
    combine_bytes = dispatch_bytes.T if gradient_bytes is None else gradient_bytes.T
    if config.replicates_tokens and config.algorithm == "groupwise":
        # LocMoE's group-wise all-to-all in MindSpore's layout: 1 / TP across, then a TP all-gather
        # (`lshsim.sim.tensor_parallel.tp_groupwise_bytes`), each way
        dispatch_bytes = tp_groupwise_bytes(dispatch_bytes, config.tp)
        combine_bytes = tp_groupwise_bytes(combine_bytes, config.tp)
        if gradient_bytes is not None:
            gradient_bytes = tp_groupwise_bytes(gradient_bytes, config.tp)
    local_bytes = int(np.trace(dispatch_bytes))
    network_bytes = int(dispatch_bytes.sum()) - local_bytes                          # off-diagonal
    if a2a_cache is None:
        a2a_cache = A2ACache(graph)
    elif a2a_cache.graph is not graph:
        raise ValueError("a2a_cache belongs to another topology graph")

    def network_s(traffic_bytes: np.ndarray) -> float:
        return a2a_cache.time_s(traffic_bytes, config.algorithm)

    network_role_s = _dedup_network(graph, traffic, a2a_cache, config) if config.deduplicates else None
    ctx = CostContext(world_size=world_size, gpu=gpu, kernel_launch_s=config.kernel_launch_s, model=spec,
                      experts_on_rank=spec["num_experts"] // ep, dispatch_bytes=dispatch_bytes,
                      combine_bytes=combine_bytes, rows_received=wire.sum(axis=0), network_s=network_s,
                      config=config, traffic=traffic, wire_counts=wire, phase_model=graph.graph.get("phase_model"),
                      gradient_bytes=gradient_bytes, network_role_s=network_role_s,
                      direct_s=(lambda matrix, start_up=True: a2a_cache.time_s(matrix, "direct") if start_up else
                                a2a_cache.time_s(matrix, "direct", alpha_s=0.0)) if config.tp > 1 else None,
                      all_reduce_s=a2a_cache.all_reduce_s, ep=ep)
    grad_sync = resolve_grad_sync(config, gpu)
    schedule = step_schedule(spec["num_layers"], spec["moe_every"], config,
                             first_dense_layers=spec.get("first_dense_layers", 0))
    if grad_sync == "off" or world_size == 1:   # no data-parallel gradient all-reduce in the step
        schedule = [item for item in schedule if item[1][0].block != "gradient"]
    pipelined = tuple(spec for spec in PHASES.specs() if spec.pipelined)
    candidates = (1,) + (config.overlap_chunks if config.overlap else ())

    # every cost the step can ask for, once: (phase, direction, chunks) -> (seconds (W,) or scalar, bytes (W,) or None)
    costs: dict[tuple, tuple] = {}
    for direction, phases, _layer in schedule:
        for phase in phases:
            for n in (candidates if len(phases) > 1 else (1,)):
                if (phase.name, direction, n) not in costs:
                    cost = phase.cost(ctx, direction, n)
                    costs[(phase.name, direction, n)] = (cost.seconds, cost.bytes)
    use_classes = world_size > RANK_CLASS_MIN_GPUS if rank_classes_ is None else rank_classes_
    if use_classes:
        columns = []
        for seconds, moved in costs.values():
            columns.append(seconds)
            if moved is not None:
                columns.append(moved)
        reps, class_of_rank = rank_classes(columns, world_size)
    else:
        reps, class_of_rank = np.arange(world_size), np.arange(world_size)

    def per_rank(value) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, dtype=float), (world_size,))[reps]

    def moe_section(t0: float, section: tuple, layer: int, direction: str,
                    chunks: int) -> tuple[list[PhaseRecord], float]:
        first, work, second = section
        one, two = costs[(first.name, direction, chunks)], costs[(second.name, direction, chunks)]
        return _moe_section(t0, len(reps), (first.name, float(one[0]), per_rank(one[1])),
                            per_rank(costs[(work.name, direction, chunks)][0]),
                            (second.name, float(two[0]), per_rank(two[1])), chunks, layer, direction, ranks=reps)

    # the chunk count of the pipelined section, per direction: the fastest of {1} + overlap_chunks
    chosen_chunks = {}
    has_moe = any(len(phases) > 1 for _, phases, _ in schedule)   # a stage without MoE layers (Swin) has none
    for direction in (DIRECTIONS if has_moe else ()):
        section = pipelined if direction == "forward" else pipelined[::-1]
        chosen_chunks[direction] = min(candidates, key=lambda n: (moe_section(0.0, section, 0, direction, n)[1], n))

    records: list[PhaseRecord] = []
    clock = 0.0  # every rank's compute outside the MoE section is identical, so one clock serves all
    layer_end: dict[int, float] = {}   # when each layer's backward has ended (the "overlapped" buckets)
    buckets: list[dict] = []
    for direction, phases, layer in schedule:
        if len(phases) > 1:  # the pipelined dispatch -> expert -> combine section
            section, clock = moe_section(clock, phases, layer, direction, chosen_chunks[direction])
            records.extend(section)
            if direction == "backward":
                layer_end[layer] = clock
            continue
        phase = phases[0]
        if phase.block == "gradient" and grad_sync == "overlapped":
            buckets = _grad_buckets(ctx, layer_end, clock, config.grad_bucket_bytes)
            for bucket in buckets:
                for rank in reps:
                    records.append(PhaseRecord(phase.name, int(rank), bucket["start_s"], bucket["end_s"],
                                               bytes=int(bucket["sent_bytes"]), layer=bucket["layer"],
                                               direction=direction))
            clock = max([clock] + [b["end_s"] for b in buckets])
            continue
        seconds_all, moved_all = costs[(phase.name, direction, 1)]
        seconds = per_rank(seconds_all)
        moved = np.zeros(len(reps)) if moved_all is None else per_rank(moved_all)
        for i, rank in enumerate(reps):
            records.append(PhaseRecord(phase.name, int(rank), clock, clock + float(seconds[i]),
                                       bytes=int(moved[i]), layer=layer, direction=direction))
        clock += float(np.broadcast_to(np.asarray(seconds_all, dtype=float), (world_size,)).max())
        if direction == "backward":
            layer_end[layer] = clock

    node = placement.rank_to_node.numpy()  # (W,)
    inter_node_bytes = int(dispatch_bytes.sum()) - _same_node_sum(dispatch_bytes, node)
    if config.deduplicates and traffic.node_copies is not None:  # once per (token, node) over the network
        nodes = int(node.max()) + 1
        remote = node[:, None] != np.arange(nodes)[None, :]
        inter_node_bytes = int(np.ceil(_dedup_ratio(traffic, node) * _per_node(dispatch_bytes, node))[remote].sum())
    workload = {"model": spec["name"], **{k: v for k, v in spec.items() if k != "name"},
                **config.to_dict(), "tokens_per_gpu": traffic.tokens_per_rank, "ep": ep,
                "traffic_model": traffic.model}
    cluster = {"name": graph.graph.get("name"), "gpus": world_size, "nodes": int(node.max()) + 1,
               "gpus_per_node": graph.graph.get("gpus_per_node"), "gpu": gpu.get("name"),
               "source": str(graph.graph.get("source"))}
    meta = {"source": "simulated", "workload": workload, "cluster": cluster,
            "provenance": {"simulator": "lshsim.sim.moe_step", "routed_tokens_per_rank": traffic.routed_per_rank,
                           "traffic_model": traffic.model,
                           "fidelity": a2a_cache.fidelity,
                           "drain_tolerance": a2a_cache.drain_tolerance,
                           "a2a_estimate": a2a_cache.estimate}}
    if use_classes:
        meta["rank_classes"] = {
            "how": "ranks with equal seconds and bytes in every phase, direction and chunk count share one class; "
                   "records are those of each class's lowest rank",
            "count": int(len(reps)), "representatives": reps.tolist(),
            "sizes": np.bincount(class_of_rank, minlength=len(reps)).tolist(),
            "class_of_rank": class_of_rank.tolist()}
    trace = Trace(records, meta)
    breakdown = _breakdown(trace, traffic, config, dispatch_bytes, network_bytes, inter_node_bytes, local_bytes,
                           chosen_chunks, world_size)
    breakdown["ep"] = ep
    breakdown["moe_layer"] = moe_layer
    breakdown["capacity_per_expert"] = capacity
    breakdown["traffic_model"] = traffic.model
    breakdown["rank_classes"] = int(len(reps)) if use_classes else world_size
    replicated, expert = _step_grad_bytes(ctx)
    breakdown["grad_sync"] = grad_sync if world_size > 1 else "off"
    breakdown["grad_bytes_replicated"] = replicated
    breakdown["grad_bytes_expert"] = expert
    breakdown["grad_buckets"] = len(buckets) if grad_sync == "overlapped" else (1 if breakdown["grad_sync_s"] else 0)
    # the overlapped buckets (ready time from the step's start, seconds), for `combine_breakdowns`
    breakdown["grad_bucket_schedule"] = [[b["ready_s"], b["end_s"] - b["start_s"]] for b in buckets] \
        if grad_sync == "overlapped" else []
    return StepResult(trace=trace, breakdown=breakdown, config=config, traffic=traffic)


def _tp_of(ctx: CostContext) -> int:
    """The step's tensor-parallel degree (1 for a context without a config)."""
    return int(getattr(ctx.config, "tp", 1) or 1)


def _step_grad_bytes(ctx: CostContext) -> tuple[int, int]:
    """(replicated, expert) gradient bytes per rank of one step (`lshsim.sim.phases.gradient_parameters`;
    expert 0 where the software does not all-reduce the experts' replicas, `expert_grads_synced`)."""
    params = gradient_parameters(ctx.model, ctx.experts_on_rank, _tp_of(ctx), expert_tp(ctx))
    b = grad_bytes_per_element(ctx)
    synced = expert_grads_synced(ctx)
    return (int((sum(p for p, _ in params["layers"]) + params["last"]) * b),
            int(sum(e for _, e in params["layers"]) * b) if synced else 0)


def _grad_buckets(ctx: CostContext, layer_end: dict[int, float], backward_end: float, bucket_bytes: int) -> list[dict]:
    """The "overlapped" gradient all-reduce: DDP-style buckets, one network stream.

    The backward produces layer L-1's gradients first; a layer's gradients are ready when its
    backward has ended (`layer_end`). Walking the layers from the last, each layer's (replicated,
    expert) gradient bytes join the open bucket (the experts' only where they are all-reduced:
    EP < W and `expert_grads_synced`); a bucket closes (ready at that layer's end) once it
    holds `bucket_bytes` or more (a layer's gradients are never split: a layer larger than a bucket
    is its own bucket, as DDP gives a tensor above the cap its own bucket). The embedding / head
    gradients (`gradient_parameters`' "last") join the final bucket, ready at the backward's end
    (`backward_end`: the embedding's gradient is complete only then). Bucket i starts at
    max(ready_i, end of bucket i-1) and takes `grad_sync_seconds` of its bytes. Not modelled: the
    buckets' bandwidth contention with the backward's all-to-alls (they run concurrently here), and
    DDP's small first bucket (1 MiB).
    """
    params = gradient_parameters(ctx.model, ctx.experts_on_rank, _tp_of(ctx), expert_tp(ctx))
    b = grad_bytes_per_element(ctx)
    # a bucket holds only what is all-reduced: the experts' gradients only where they have replicas
    # (EP < W) and the software all-reduces them (`expert_grads_synced`); unique experts are left
    # out of DDP's buckets (Swin-MoE / Tutel: skip_allreduce) as fairseq's legacy_ddp skips them
    synced = expert_grads_synced(ctx) and expert_span(ctx) < ctx.world_size
    pending: list[tuple[float, float, float, int]] = []        # (ready_s, replicated B, expert B, layer)
    acc_r = acc_e = 0.0
    for layer in reversed(range(len(params["layers"]))):
        replicated, expert = params["layers"][layer]
        expert = expert if synced else 0
        acc_r, acc_e = acc_r + replicated * b, acc_e + expert * b
        if acc_r + acc_e >= bucket_bytes:
            pending.append((layer_end.get(layer, backward_end), acc_r, acc_e, layer))
            acc_r = acc_e = 0.0
    acc_r += params["last"] * b
    if acc_r + acc_e > 0:
        pending.append((backward_end, acc_r, acc_e, 0))
    out, free = [], 0.0
    for ready, replicated, expert, layer in pending:
        start = max(ready, free)
        seconds = grad_sync_seconds(ctx, replicated, expert)
        free = start + seconds
        out.append({"ready_s": ready, "start_s": start, "end_s": free, "replicated_bytes": replicated,
                    "expert_bytes": expert, "sent_bytes": float(grad_sent_bytes(ctx, replicated, expert)[0]),
                    "layer": layer})
    return out


def _dedup_network(graph, traffic: RoutedTraffic, a2a_cache: A2ACache, config: StepConfig):
    """network_role_s of a node-deduplicated step: each (W, W) matrix's bytes to another node cross the
    network once per (token, node), in the routing's ratio of distinct (token, node) pairs to copies
    (`RoutedTraffic.node_copies`); "combine" matrices run the reverse (`dispatch_formats.node_dedup`). The
    network stage and the NVLink forwarding are pipelined in `PIPELINE_CHUNKS` chunks with one start-up, as
    DeepEP's one kernel streams them (until the twelfth session they ran one after the other, whole)."""
    if traffic.node_copies is None:
        raise ValueError(f"algorithm {config.algorithm!r} needs the routing's (token, node) pairs: route the "
                         f"traffic with the same config (route_traffic counts them when the config deduplicates)")
    for name in ("num_nodes", "gpus_per_node"):
        if not graph.graph.get(name):
            raise ValueError(f"algorithm {config.algorithm!r} needs nodes of equal size: topology "
                             f"{graph.graph.get('name', '?')!r} has no {name!r}")
    node = np.arange(traffic.send_counts.shape[0]) // int(graph.graph["gpus_per_node"])  # (W,) node-major ranks
    ratio = _dedup_ratio(traffic, node)                                                # (W, N) <= 1
    chunks = PIPELINE_CHUNKS if int(graph.graph["num_nodes"]) > 1 else 1

    def network_role_s(matrix: np.ndarray, role: str) -> float:
        forward = matrix if role == "dispatch" else matrix.T                              # source row
        per_node = _per_node(forward, node)                                               # (W, N) bytes
        node_bytes = np.minimum(np.ceil(ratio * per_node), per_node)
        return a2a_cache.time_s(forward, config.algorithm, node_bytes=node_bytes, combine=role == "combine",
                                chunks=chunks, stream=True)

    return network_role_s


def _per_node(matrix: np.ndarray, node: np.ndarray) -> np.ndarray:
    """(W, N) sums of a (W, W) matrix's columns over each node's ranks."""
    return np.stack([matrix[:, node == m].sum(axis=1) for m in range(int(node.max()) + 1)], axis=1)


def _dedup_ratio(traffic: RoutedTraffic, node: np.ndarray) -> np.ndarray:
    """(W, N) distinct (token, node) pairs per copy sent to the node (1 where nothing is sent), at most 1."""
    copies = _per_node(traffic.send_counts, node)
    return np.minimum(np.divide(traffic.node_copies, copies, out=np.ones_like(copies), where=copies > 0), 1.0)


def _same_node_sum(matrix: np.ndarray, node: np.ndarray) -> int:
    """Sum of the entries whose row and column ranks are on one node (ranks node-major: slices, no (W, W) mask)."""
    starts = np.flatnonzero(np.r_[True, np.diff(node) != 0])
    ends = np.r_[starts[1:], len(node)]
    if len(np.unique(node)) == len(starts):
        return int(sum(int(matrix[a:b, a:b].sum()) for a, b in zip(starts, ends)))
    same = node[:, None] == node[None, :]
    return int(matrix[same].sum())


def _breakdown(trace: Trace, traffic: RoutedTraffic, config: StepConfig, dispatch_bytes: np.ndarray,
               network_bytes: int, inter_node_bytes: int, local_bytes: int, chunks: dict, world_size: int) -> dict:
    """Summary numbers of a simulated step (JSON-ready).

    step_s, forward_s, backward_s: wall time (Trace.total_time_s). phases_s (and _forward_s,
    _backward_s): Trace.phase_durations_s. Each phase is booked by its kind in the phase table:
    a2a_s: the communication phases (both all-to-alls), forward and backward. exposed_a2a_s:
    communication time not hidden behind the compute stream (compute and overhead phases),
    min(a2a_s, step_s - compute and overhead); without overlap it equals a2a_s. a2a_share =
    exposed_a2a_s / step_s. Bytes are per MoE layer and per dispatch (the combine moves the
    transpose): dispatch_bytes_per_layer (off-diagonal, over the network),
    inter_node_bytes_per_layer, local_bytes_per_layer (diagonal).
    grad_sync_s: the data-parallel gradient all-reduce (the "gradient_sync" phases), all of it;
    exposed_grad_sync_s: the part of it past the end of every other phase (the whole of it in the
    "after" mode; with "overlapped", the buckets that run past the backward); grad_sync_share =
    exposed_grad_sync_s / step_s. The all-to-all share is of the step time including the exposed
    gradient all-reduce: exposed_a2a_s = min(a2a_s, step_s - exposed_grad_sync_s - compute and
    overhead), a2a_share = exposed_a2a_s / step_s.
    compression_rate: centroids / copies actually sent (1 without LSH). expert_load_imbalance:
    max / mean copies received per rank. overlap_chunks: chunks chosen per direction.
    """
    phases = trace.phase_durations_s()
    step_s = trace.total_time_s()
    by_kind = {kind: 0.0 for kind in KINDS}
    for name, seconds in phases.items():
        by_kind[PHASES[name].kind] += seconds
    # the tensor-parallel collectives block the step between the compute phases: booked apart from
    # the all-to-alls, with the compute stream for the exposure below
    tp_s = sum(seconds for name, seconds in phases.items() if name in TP_PHASES)
    # the step's tokens: each rank's own (sequence parallel, or no TP); the TP ranks of a replica
    # hold the same T in the replicated layout
    replicas = world_size // config.tp if config.replicates_tokens else world_size
    tokens_per_step = traffic.tokens_per_rank * replicas
    a2a = by_kind["communication"] - tp_s
    compute = by_kind["compute"] + by_kind["overhead"] + tp_s
    grad = by_kind["gradient_sync"]
    # the gradient all-reduce's exposed time: how far it runs past the last phase of any other kind
    # (all of it in the "after" mode; the tail of the last buckets when overlapped)
    start = min((r.start_s for r in trace.phases), default=0.0)
    others_end = max((r.end_s for r in trace.phases if PHASES[r.name].kind != "gradient_sync"), default=start)
    exposed_grad = min(grad, max(0.0, step_s - (others_end - start)))
    # without overlap the phases run one after another and sum to the step; with overlap, the
    # all-to-all time not hidden behind compute is what the step loses to it
    exposed = min(a2a, max(0.0, step_s - exposed_grad - compute))
    received = traffic.send_counts.sum(axis=0)  # (W,) copies per rank before LSH
    return {
        "step_s": step_s,
        "forward_s": trace.total_time_s("forward"),
        "backward_s": trace.total_time_s("backward"),
        "phases_s": phases,
        "phases_forward_s": trace.phase_durations_s("forward"),
        "phases_backward_s": trace.phase_durations_s("backward"),
        "a2a_s": a2a,
        "exposed_a2a_s": exposed,
        "a2a_share": exposed / step_s if step_s > 0 else 0.0,
        "grad_sync_s": grad,
        "exposed_grad_sync_s": exposed_grad,
        "grad_sync_share": exposed_grad / step_s if step_s > 0 else 0.0,
        "overlap_chunks": chunks,
        "dispatch_bytes_per_layer": network_bytes,
        "inter_node_bytes_per_layer": inter_node_bytes,
        "local_bytes_per_layer": local_bytes,
        "compression_rate": 1.0 if config.lsh_rate is None else float(
            np.ceil(config.lsh_rate * traffic.send_counts).sum() / max(traffic.send_counts.sum(), 1)),
        "dropped_fraction": traffic.dropped_fraction,
        "locality_share": traffic.locality_share,
        "expert_load_imbalance": float(received.max() / received.mean()) if received.mean() > 0 else 1.0,
        "tokens_per_gpu": traffic.tokens_per_rank,
        "routed_tokens_per_rank": traffic.routed_per_rank,
        "count_scale": traffic.scale,
        "gate_width": traffic.gate_width,
        "world_size": world_size,
        "tp": config.tp,
        "tp_s": tp_s,
        "tp_share": tp_s / step_s if step_s > 0 else 0.0,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_s if step_s > 0 else 0.0,
    }


# ---- planning: the same step under several options ------------------------------------------
#: the LSH-MoE compression rate used for the "lsh" option when the user gives none: the top of the
#: range the paper reports (11.7%..20%), i.e. the least favourable for LSH.
DEFAULT_PLAN_LSH_RATE = 0.2


def describe(config: StepConfig) -> str:
    """A short label: 'topk, direct', 'topk + lsh 0.2, direct', 'locmoe, groupwise, overlap'.

    >>> describe(StepConfig(router="locmoe", lsh_rate=0.2, algorithm="groupwise", overlap=True))
    'locmoe + lsh 0.2, groupwise, overlap'
    """
    router = config.router + ("(" + ", ".join(f"{k}={v}" for k, v in config.router_options) + ")"
                              if config.router_options else "")
    parts = [router + (f" + lsh {config.lsh_rate:g}" if config.lsh_rate is not None else ""), config.algorithm]
    if config.dispatch_format is not None:
        parts.append(f"{config.dispatch_format} dispatch")
    if config.overlap:
        parts.append("overlap")
    if config.tp > 1:
        parts.append(f"tp {config.tp}" + (" replicated" if config.replicates_tokens else ""))
    return ", ".join(parts)


def share_for_router(router: str, share: float | str | None) -> float | str | None:
    """The `StepConfig.locality_share` a config of `router` can hold: a number only for locmoe (the other
    routers refuse one, so it becomes "auto", which they ignore); "auto" and None as they are."""
    return "auto" if router != "locmoe" and share not in ("auto", None) else share


def plan_options(selected: StepConfig, locmoe_share: float | str | None = "selected", *,
                 keep=None) -> list[tuple[str, StepConfig]]:
    """The options `lshsim plan` compares, baseline first.

    baseline: topk, no LSH, direct, no overlap, the model's precision on the wire (the user's tokens,
    capacity, seed and EP kept).
    Then the user's own choice (if it differs), and the standard alternatives: LSH-MoE at the
    user's rate (or DEFAULT_PLAN_LSH_RATE), LocMoE routing (its locality share `locmoe_share`:
    "selected" = the selected config's), the hierarchical 2d and LocMoE's group-wise all-to-all, and
    Tutel-style overlap. Duplicates are dropped (first label wins). keep(label) -> bool, when given,
    selects the options before the duplicates are dropped (`lshsim sweep`'s options: an "lsh" option
    asked for is kept when it equals a "yours" option that was not asked for).
    """
    from dataclasses import replace

    share = selected.locality_share if locmoe_share == "selected" else locmoe_share
    base = replace(selected, router="topk", router_options=(), lsh_rate=None, algorithm="direct", overlap=False,
                   dispatch_format=None, locality_share=share_for_router("topk", share))
    rate = selected.lsh_rate if selected.lsh_rate is not None else DEFAULT_PLAN_LSH_RATE
    candidates = [
        ("baseline", base),
        ("yours: " + describe(selected), selected),
        (f"lsh {rate:g}", replace(base, lsh_rate=rate)),
        ("locmoe", replace(base, router="locmoe", locality_share=share)),
        ("2d", replace(base, algorithm="2d")),
        ("groupwise", replace(base, algorithm="groupwise")),
        ("overlap", replace(base, overlap=True)),
    ]
    seen: set = set()
    out = []
    for label, config in candidates:
        if keep is not None and not keep(label):
            continue
        if config not in seen:
            seen.add(config)
            out.append((label, config))
    return out


#: the fidelity levels of the all-to-alls, most exact first (`A2ACache`, `lshsim plan`, `lshsim simulate`)
FIDELITIES = ("exact", "tolerance", "estimate")
#: `lshsim plan`'s automatic fidelity: exact all-to-alls up to this many GPUs, drain tolerance up to
#: AUTO_TOLERANCE_MAX_GPUS, estimate above (`auto_fidelity`).
AUTO_EXACT_MAX_GPUS = 64
AUTO_TOLERANCE_MAX_GPUS = 256
#: the drain tolerance of the "tolerance" fidelity (`lshsim.sim.network.FlowNetwork`).
DEFAULT_DRAIN_TOLERANCE = 0.01


def auto_drain_tolerance(world_size: int, tolerance: float = DEFAULT_DRAIN_TOLERANCE) -> float:
    """The drain tolerance `lshsim plan` picks by default: 0 (exact) up to AUTO_EXACT_MAX_GPUS GPUs,
    `tolerance` above.

    >>> auto_drain_tolerance(64), auto_drain_tolerance(128)
    (0.0, 0.01)
    """
    return 0.0 if world_size <= AUTO_EXACT_MAX_GPUS else float(tolerance)


def auto_fidelity(world_size: int) -> str:
    """The fidelity `lshsim plan` picks for a cluster of `world_size` GPUs: exact up to
    AUTO_EXACT_MAX_GPUS (an exact plan at 64 GPUs took 40 s on 2 cores), tolerance up to
    AUTO_TOLERANCE_MAX_GPUS (the 128-GPU plan: 17 s, within 0.5% of the exact 612 s), estimate above
    (exact and tolerance grow with the flows, W^2 per all-to-all; benchmarks/RESULTS.md).

    >>> [auto_fidelity(w) for w in (64, 128, 256, 512)]
    ['exact', 'tolerance', 'tolerance', 'estimate']
    """
    if world_size <= AUTO_EXACT_MAX_GPUS:
        return "exact"
    return "tolerance" if world_size <= AUTO_TOLERANCE_MAX_GPUS else "estimate"


def simulation_text(algorithm: str, traffic_bytes, number: int) -> str:
    """The progress text of a step's `number`-th all-to-all simulation (`A2ACache`'s on_simulate):
    "all-to-all ALGORITHM (W x W) #n"; `compare_options` and `lshsim.reproduce.Planner` print it."""
    return f"all-to-all {algorithm} ({traffic_bytes.shape[0]} x {traffic_bytes.shape[1]}) #{number}"


def compare_options(model: object, graph, options: list[tuple[str, StepConfig]], on_done=None, *,
                    drain_tolerance: float = 0.0, share_cache: bool = True, progress=None,
                    cache_stats: dict | None = None, estimate: bool = False) -> list[dict]:
    """Simulate every option; routing is shared between options with the same `routing_key` (the
    whole router config, tokens, seed and subsample bound), the synthetic router inputs between the
    routings (one `RouterInputCache`, unless the caller has set one), and all-to-all times between all options
    (one `A2ACache`; share_cache=False gives each option its own, as before the shared cache).

    drain_tolerance: the fidelity of every all-to-all (0 = exact; see `FlowNetwork`); estimate:
    direct all-to-alls from link loads (`lshsim.sim.collectives.estimate_all_to_all`), the others
    simulated with drain_tolerance.
    Returns one dict per option: label, description, config, breakdown, result (the StepResult),
    speedup over the first option (the baseline). `on_done(label)` is called after each option
    (the CLI's progress bar); `progress(index, count, label, phase)` before each piece of work
    (phase "routing", "all-to-all <algorithm> (W x W) #n", the option's n-th simulation, "done"); `cache_stats`, when given, is
    filled with the caches' hits, misses and simulated seconds.
    """
    placements: dict = {}
    routings: dict[tuple, RoutedTraffic] = {}
    rows = []
    current = {"index": 0, "label": "", "simulations": 0}

    def on_simulate(algorithm: str, traffic_bytes: np.ndarray) -> None:
        current["simulations"] += 1  # an option simulates several matrices (dispatch, combine, ...): number them
        if progress is not None:
            progress(current["index"], len(options), current["label"],
                     simulation_text(algorithm, traffic_bytes, current["simulations"]))

    caches: list[A2ACache] = []
    inputs = RouterInputCache()
    if progress is not None and hasattr(progress, "expect_routings"):
        seen: set = set()           # which options will route (the first of each routing key): the time-left estimate
        needs = []
        for _, config in options:
            key = routing_key(model, config)
            needs.append(key not in seen)
            seen.add(key)
        progress.expect_routings(needs)
    for index, (label, config) in enumerate(options, start=1):
        current.update(index=index, label=label, simulations=0)
        if share_cache and caches:
            cache = caches[0]
        else:
            cache = A2ACache(graph, drain_tolerance, on_simulate=on_simulate, estimate=estimate)
            caches.append(cache)
        key = routing_key(model, config)
        check_tensor_parallel(config.tp, graph, config.tokens_per_gpu or model_dict(model)["tokens_per_gpu"], model,
                              config.tp_layout)
        if key not in routings:
            if progress is not None:
                progress(index, len(options), label, "routing")
            place_key = (config.ep, config.tp, config.tp_layout)
            if place_key not in placements:
                placements[place_key] = placement_for(model, graph, config.ep, config.tp, config.tp_layout)
            with contextlib.ExitStack() as stack:
                if _INPUT_CACHE is None:   # the options' routers draw their inputs once (`RouterInputCache`)
                    stack.enter_context(reuse_router_inputs(inputs))
                routings[key] = route_traffic(model, placements[place_key], config)
        result = simulate_config(model, graph, config, traffic=routings[key], a2a_cache=cache)
        rows.append({"label": label, "description": describe(config), "config": config.to_dict(),
                     "breakdown": result.breakdown, "result": result})
        if progress is not None:
            progress(index, len(options), label, "done")
        if on_done is not None:
            on_done(label)
    if cache_stats is not None:
        cache_stats.update(hits=sum(c.hits for c in caches), misses=sum(c.misses for c in caches),
                           simulated_s=sum(c.simulated_s for c in caches), shared=share_cache)
    baseline_s = rows[0]["breakdown"]["step_s"] if rows else 0.0
    for row in rows:
        row["speedup"] = baseline_s / row["breakdown"]["step_s"] if row["breakdown"]["step_s"] > 0 else float("nan")
    return rows
