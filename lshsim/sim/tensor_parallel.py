"""Tensor parallelism (TP) inside a node: the layout, its checks, and its ring collectives.

The layout is Megatron-Core's "MoE parallel folding" with expert tensor parallelism 1
(Megatron-LM, megatron/core/transformer/moe/README.md, "MoE Parallel Folding" and
`--expert-tensor-parallel-size`):

* **Attention and dense part**: W = TP x DP. A TP group is TP consecutive ranks (Megatron's rank
  generator puts tp innermost), so with TP dividing the GPUs per node every TP group sits in one
  node and its collectives run over the node's links (NVLink / NVSwitch). The attention, dense FFN
  and output-layer weights and FLOPs are split over the TP ranks (Shoeybi et al. 2019, Megatron-LM:
  column-parallel then row-parallel linear layers; the vocabulary-parallel embedding and output
  layer).
* **Sequence parallelism** (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models"): between the TP regions each rank holds 1 / TP of the micro-batch's tokens.
  Each TP block (attention, dense FFN) is entered with an all-gather of the (T, d) activations and
  left with a reduce-scatter, forward; the backward runs the conjugates (the reduce-scatter's
  gradient is an all-gather and the other way round). Megatron-Core requires sequence parallelism
  when MoE runs with both expert and tensor parallelism (same README: "When using MoE with expert
  parallelism and tensor parallelism, sequence parallelism must be enabled"), so it is the only
  mode modelled. (Without it, Megatron-LM runs one all-reduce per block each way; a ring all-reduce
  is a reduce-scatter plus an all-gather, the same 2 (TP - 1) steps of N / TP bytes, so it would
  cost the same here.)
* **MoE layer**: experts with expert-TP 1 (every expert whole on one rank), expert-parallel groups
  of EP consecutive ranks over the world (W = EP x EDP, EP dividing W; the EP group folds over the
  TP ranks, so EP x TP may exceed W: EP 64 with TP 8 on 64 GPUs is Megatron-Core's folding). Each
  rank routes and dispatches its own T / TP tokens (sequence parallel): no TP collective in the
  routed expert path. Shared experts follow the dense part's parallelism (same README, "Shared
  Experts"): split over TP, entered with an all-gather and left with a reduce-scatter.
* **Tokens**: `tokens_per_gpu` (the model's, or the step's) is the micro-batch of one
  data-parallel replica of the dense part, i.e. of one TP group; with TP = 1 that is one GPU, as
  before. Each GPU holds T / TP of them between the TP regions. A step therefore covers
  (W / TP) x T tokens: compare layouts by tokens per second (the breakdown's `tokens_per_s`), or
  give TP x T tokens per replica to keep the global batch.

**MindSpore's layout** (`StepConfig.tp_layout = "replicated"`; the framework LocMoE and PanGu-Sigma
train with: `mindspore/nn/transformer/moe.py` and `transformer.py`, `MoE` and `FeedForward` with
`expert_num > 1`): the activations are sharded over data parallel only and replicated over the
model-parallel (TP) ranks (`(dp, 1, 1)` strategies; no sequence parallelism), so every TP rank
routes and dispatches all T tokens of its replica. The expert dimension is sharded over
`expert_parallel`, which must divide the data-parallel degree W / TP; with TP innermost in the
device matrix the expert-parallel groups are the ranks of one TP index in a block of EP replicas
(`lshsim.dispatch.placement.strided_expert_parallel_placement`), so a rank sends its tokens to the
rank of its own TP index that holds the expert, across servers. Each expert's FFN is split over the
TP ranks (`mapping` `((dp, ep, 1, 1), (ep, 1, mp))`, column-parallel; `projection`
`((dp, ep, 1, mp), (ep, mp, 1))`, row-parallel): a rank computes 1 / TP of the width for every row
it receives, and the partial outputs are all-reduced over the TP group (phase `tp_expert`; backward
the input gradient's all-reduce). The attention and dense blocks run one all-reduce each way (ring:
a reduce-scatter plus an all-gather, the cost of the sequence-parallel pair). Expert gradients: a
rank holds 1 / TP of its experts, all-reduced over the W / (EP x TP) replicas of that shard.
With the `groupwise` all-to-all this layout runs LocMoE's group-wise all-to-all as its text describes it
(LocMoE, arXiv 2401.13920v3, Sec. 3.2: "each device is responsible for a portion of the All-to-All data
transmission in its respective expert parallel (EP) domain. Then, the All-Gather operation is conducted to
synchronize tokens on all devices in the TP domain"; MindSpore's `group_wise_a2a`): `tp_groupwise_bytes`.

The collectives: NCCL's ring algorithm (all-gather and reduce-scatter: TP - 1 steps; in each
step every rank sends one chunk of N / TP bytes to its ring successor, N = the full (T, d)
tensor). One step of every TP group at once is one (W, W) traffic matrix (`ring_step_matrix`);
the simulator costs it with the flow-level network over the topology (the `direct` all-to-all of
that matrix, so the node's links, their hop latencies and the start-up latency alpha are those of
the all-to-alls). NCCL runs a ring collective as one kernel that pipelines slices along the ring,
so a collective pays the start-up alpha once: its time is one step with alpha plus the other
steps without it (each step still pays its hops' latency and its bytes at the links' rates):
alpha + steps x (hops' latency + (N / TP) / bandwidth) on an otherwise idle node. The reduction of reduce-scatter is fused
into NCCL's copy kernel and not costed; NVLink SHARP (NVLS) all-reduce is not modelled.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ring_successor", "ring_step_matrix", "ring_steps", "check_tensor_parallel", "tp_collective_s",
           "tp_groupwise_bytes", "COLLECTIVES", "TP_LAYOUTS"]

#: how the TP ranks share the MoE layer (`StepConfig.tp_layout`; module docstring)
TP_LAYOUTS = ("sequence", "replicated")

#: ring steps per collective, as a multiple of (TP - 1)
COLLECTIVES = {"all_gather": 1, "reduce_scatter": 1, "all_reduce": 2}


def tp_groupwise_bytes(matrix: np.ndarray, tp: int) -> np.ndarray:
    """The (W, W) bytes of LocMoE's group-wise all-to-all in MindSpore's layout (module docstring), from
    the plain all-to-all's `matrix` (source row). The TP ranks of a replica hold the same tokens, so each
    sends only 1 / TP of its bytes to another TP group (ceil: whole bytes), and every rank then sends what
    it received that way to the TP - 1 other ranks of its group (the all-gather); bytes inside a TP group
    (the diagonal: a rank's own expert shard) are unchanged. TP groups are TP consecutive ranks. Run with
    the `groupwise` algorithm, the all-gather (inside the node) and the split exchange (across) are two
    phases one after the other. Applied to the combine's matrix it is the way back (each rank returns 1 / TP
    of the outputs, the source's TP group all-gathers them).

    >>> m = np.array([[0, 0, 8, 0], [0, 0, 0, 8], [4, 0, 0, 0], [0, 4, 0, 0]])
    >>> tp_groupwise_bytes(m, 2).tolist()
    [[0, 2, 4, 0], [2, 0, 0, 4], [2, 0, 0, 4], [0, 2, 4, 0]]
    """
    matrix = np.asarray(matrix)
    world = matrix.shape[0]
    if matrix.shape != (world, world):
        raise ValueError(f"matrix of shape {matrix.shape}: a (W, W) byte matrix is needed")
    if not isinstance(tp, (int, np.integer)) or isinstance(tp, bool) or tp < 1 or world % tp != 0:
        raise ValueError(f"tp={tp!r}: the TP group size must be a whole number >= 1 that divides W = {world}")
    if tp == 1:
        return matrix.copy()
    group = np.arange(world) // tp                                     # (W,) TP group of each rank
    same = group[:, None] == group[None, :]                            # (W, W)
    split = np.where(same, 0, np.ceil(matrix / tp)).astype(matrix.dtype)   # 1 / TP across TP groups
    received = split.sum(axis=0)                                       # (W,) each rank's share, to all-gather
    gather = np.where(same & ~np.eye(world, dtype=bool), received[:, None], 0).astype(matrix.dtype)
    return split + np.where(same, matrix, 0).astype(matrix.dtype) + gather


def ring_successor(world_size: int, tp: int) -> np.ndarray:
    """(W,) the rank each rank sends to in a ring over its TP group (TP consecutive ranks).

    >>> ring_successor(8, 4).tolist()
    [1, 2, 3, 0, 5, 6, 7, 4]
    """
    if tp < 1 or world_size % tp:
        raise ValueError(f"tp={tp} must divide the world size {world_size}")
    rank = np.arange(world_size)
    first = rank - rank % tp
    return first + (rank - first + 1) % tp


def ring_step_matrix(world_size: int, tp: int, chunk_bytes: float) -> np.ndarray:
    """(W, W) bytes of one ring step of every TP group at once: rank r sends `chunk_bytes` to its
    successor (`ring_successor`); zero everywhere else (TP = 1: all zero).

    >>> ring_step_matrix(4, 2, 5.0).tolist()
    [[0.0, 5.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 5.0, 0.0]]
    """
    matrix = np.zeros((world_size, world_size))
    if tp > 1:
        matrix[np.arange(world_size), ring_successor(world_size, tp)] = float(chunk_bytes)
    return matrix


def ring_steps(kind: str, tp: int) -> int:
    """Steps of a ring collective over TP ranks: TP - 1 (all-gather, reduce-scatter), 2 (TP - 1)
    (all-reduce).

    >>> ring_steps("all_gather", 8), ring_steps("all_reduce", 8), ring_steps("reduce_scatter", 1)
    (7, 14, 0)
    """
    if kind not in COLLECTIVES:
        raise ValueError(f"unknown collective {kind!r}; known: {', '.join(COLLECTIVES)}")
    return COLLECTIVES[kind] * (tp - 1)


def tp_collective_s(step_s, world_size: int, tp: int, kind: str, tensor_bytes: float) -> float:
    """Seconds of one ring collective `kind` of a tensor of `tensor_bytes` (the full, gathered
    tensor N), run by every TP group at once: the ring steps (`ring_steps`) of one (W, W) matrix,
    N / TP bytes per rank (`ring_step_matrix`), the first with the start-up latency and the others
    without it (module docstring). step_s(matrix, start_up=True) is the network model (the
    simulator's: the flow-level simulation of the matrix over the topology). 0 with TP = 1 or an
    empty tensor.

    >>> step = lambda m, start_up=True: (10e-6 if start_up else 0.0) + 1e-6 + m.max() / 1e9
    >>> round(tp_collective_s(step, 8, 4, "all_gather", 4e6), 9)   # 10 us + 3 x (1 us + 1 ms)
    0.003013
    """
    steps = ring_steps(kind, tp)
    if steps == 0 or tensor_bytes <= 0:
        return 0.0
    matrix = ring_step_matrix(world_size, tp, np.ceil(tensor_bytes / tp))
    first = float(step_s(matrix))
    return first if steps == 1 else first + (steps - 1) * float(step_s(matrix, False))


def check_tensor_parallel(tp: int, graph, tokens_per_replica: int, model: object | None = None,
                          layout: str = "sequence") -> None:
    """Refuse a TP degree the layout cannot have (ValueError naming the field and the value):
    TP must divide the cluster's GPUs per node (a TP group stays inside a node), the tokens of a
    replica (sequence parallelism splits them over the TP ranks), and, when the model says, its
    attention heads and key/value heads (Megatron splits heads over TP ranks).
    """
    if tp == 1:
        return
    name = graph.graph.get("name", "?")
    per_node = graph.graph.get("gpus_per_node")
    if not per_node:
        raise ValueError(f"tp={tp}: topology {name!r} has no gpus_per_node; tensor parallelism runs inside a node")
    if per_node % tp:
        raise ValueError(f"tp={tp} must divide the {per_node} GPUs per node of cluster {name!r} (a TP group "
                         f"stays inside one node, on its NVLink; divisors: "
                         f"{[d for d in range(1, per_node + 1) if per_node % d == 0]})")
    if layout == "sequence" and tokens_per_replica % tp:
        raise ValueError(f"tp={tp} must divide tokens_per_gpu={tokens_per_replica} (the tokens of one TP group's "
                         f"micro-batch; sequence parallelism gives each TP rank 1 / TP of them)")
    attention = dict(getattr(model, "attention", ()) or ())
    for field in ("num_heads", "num_kv_heads"):
        value = attention.get(field)
        if value is not None and value % tp:
            raise ValueError(f"tp={tp} must divide attention.{field}={value} of model "
                             f"{getattr(model, 'name', '?')!r} (tensor parallelism splits the heads)")
