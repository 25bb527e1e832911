"""The phase table: every phase of a training step, what kind of time it is, and how it is costed.

One ordered table, `PHASES`, is read by everything that names a phase:

* the step simulator (`lshsim.sim.moe_step`) builds its forward and backward schedule from it
  (`step_schedule`) and costs every phase with the entry's cost function;
* the breakdown books each phase's time by the entry's `kind`;
* the Trace schema (`lshsim.sim.trace`) accepts exactly the table's names, in the table's order;
* `lshsim validate` lists a measured trace's phases in table order and predicts those whose entry
  says `predicted`;
* the executor's `PhaseTimer` times only phases the table marks `timed`, and the backward timing
  chain of the executor's all-to-alls (`backward_chain`) is read from the table.

A new phase is one `PhaseSpec` and its cost function, registered with `register_phase`.

Where a phase runs (`block`), in the transformer step of Fedus et al. (Switch Transformer) /
Lepikhin et al. (GShard): every layer runs its "attention" block, then its FFN block, which is the
"moe" block on an MoE layer ((l + 1) % moe_every == 0) and the "dense" block otherwise; the "head"
block runs once after the last layer. Inside a block, phases run in table order. The backward pass
is the forward sequence reversed; the "gradient" block (the data-parallel gradient all-reduce,
`grad_allreduce`, of kind "gradient_sync") runs once, in the backward only, after the backward's
last phase, or, with `StepConfig.grad_sync` "overlapped", bucket by bucket behind the backward
(`lshsim.sim.moe_step`). Phases marked `pipelined` form the chunked dispatch -> expert ->
combine section of the MoE block (Tutel-style overlap): communication, compute, communication in
forward order, contiguous in the table.

The compute model is a roofline per GPU (Williams et al., "Roofline", CACM 2009):
t = max(FLOPs / achieved_flops, bytes / achieved_hbm_Bps) + kernels * kernel_launch_s, with the
GPU's achieved FLOP/s and HBM bytes/s (datasheet x efficiency, or a topology's calibration).
A topology calibrated with `executor calibrate --phases` carries a phase model
(`lshsim.calibration.phase_model`): the simulator then costs the expert phase with its measured
grid and the gate and LSH phases with its fits (`calibrated_cost`; `CostContext.phase_model`);
attention, the dense FFN and the head stay on the roofline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

__all__ = ["PhaseSpec", "PhaseCost", "CostContext", "PhaseTable", "PHASES", "KINDS", "BLOCKS", "DIRECTIONS",
           "register_phase", "unregister_phase", "step_schedule", "backward_chain", "roofline_cost",
           "compute_time_s", "expert_cost", "KERNELS", "calibrated_cost", "measured_lsh_cost", "einsum_gate_cost",
           "TP_PHASES", "tp_collective_cost", "expert_tp", "expert_span", "grad_sent_bytes",
           "resolve_grad_sync", "gradient_parameters", "expert_grads_synced", "GRAD_SYNC_MODES", "DEFAULT_GRAD_SYNC", "DDP_BUCKET_BYTES"]

KINDS = ("communication", "compute", "overhead", "gradient_sync")
BLOCKS = ("attention", "moe", "dense", "head", "gradient")
DIRECTIONS = ("forward", "backward")

#: kernels launched per phase (forward; backward launches twice as many); each adds kernel_launch_s.
KERNELS = {"attention": 8, "dense_ffn": 3, "gate": 5, "lsh_compress": 8, "expert": 3, "lsh_restore": 2,
           "other": 3}


# ---- the roofline ----------------------------------------------------------------------------
def compute_time_s(flops: float, hbm_bytes: float, gpu: dict, kernels: int = 0, kernel_launch_s: float = 0.0) -> float:
    """Roofline: max(flops / achieved_flops, bytes / achieved_hbm_Bps) + kernels * kernel_launch_s.

    >>> gpu = {"achieved_flops": 1e12, "achieved_hbm_Bps": 1e9}
    >>> compute_time_s(2e12, 1e9, gpu)   # compute bound: 2 s vs 1 s
    2.0
    >>> compute_time_s(1e9, 3e9, gpu, kernels=2, kernel_launch_s=0.5)   # memory bound + launches
    4.0
    """
    return max(flops / gpu["achieved_flops"], hbm_bytes / gpu["achieved_hbm_Bps"]) + kernels * kernel_launch_s


def expert_cost(copies: float, d_model: int, d_ffn: int, experts_on_rank: int, bytes_per_element: int,
                matrices: int = 2) -> tuple[float, float]:
    """Forward (FLOPs, HBM bytes) of the expert FFNs on one rank that receives `copies` token copies.

    FLOPs = 2 * copies * d_model * d_ffn * m (m matmuls: 2 = up and down, 3 = SwiGLU's gate, up and
    down; 2 FLOPs per multiply-add);
    bytes  = experts_on_rank * m * d_model * d_ffn * b (weights) + copies * (2 d_model + m d_ffn) * b
             (read input, write and read the hidden activations, write output), b = bytes per element.

    >>> expert_cost(1000, 768, 3072, 16, 2)
    (9437184000.0, 166354944.0)
    >>> expert_cost(1000, 768, 3072, 16, 2, matrices=3)[0] / expert_cost(1000, 768, 3072, 16, 2)[0]
    1.5
    """
    flops = 2.0 * copies * d_model * d_ffn * matrices
    weights = experts_on_rank * float(matrices) * d_model * d_ffn * bytes_per_element
    hbm = weights + copies * (2 * d_model + matrices * d_ffn) * bytes_per_element
    return flops, hbm


# ---- what a cost function receives and returns ---------------------------------------------------
@dataclass(frozen=True)
class CostContext:
    """Everything a phase's cost function may read.

    The simulator builds one per simulated step (every field set). `lshsim validate` builds one
    from a measured trace; there `config`, `traffic` and `wire_counts` are None, `model` holds only
    d_model, d_ffn, num_experts and bytes_per_element, and kernel_launch_s is 0 (a measured phase
    has its launches in it). A cost function of a `predicted` phase must read only what both give.

    world_size:      W, ranks (GPUs).
    gpu:             the topology's GPU dict: achieved_flops, achieved_hbm_Bps (see `compute_time_s`).
    kernel_launch_s: seconds per kernel launch.
    model:           model fields (`lshsim.sim.moe_step.MODEL_FIELDS` in the simulator).
    experts_on_rank: E / W experts each rank holds.
    dispatch_bytes:  (W, W) bytes of the forward dispatch all-to-all, source row, diagonal included.
    combine_bytes:   (W, W) bytes of the forward combine all-to-all (the dispatch's transpose in
                     the simulator; measured separately by the executor).
    rows_received:   (W,) rows (token copies, or LSH centroids) each rank's experts process.
    network_s:       seconds of one all-to-all of a (W, W) byte matrix on the topology (the flow-level
                     model of `lshsim.sim.collectives.simulate_all_to_all` with the step's algorithm;
                     results are cached, so asking twice is free).
    config:          the `StepConfig` of the simulated step (None for a measured trace).
    traffic:         the step's `RoutedTraffic`: tokens_per_rank, k, router, ... (None for a measured trace).
    wire_counts:     (W, W) token copies or LSH centroids on the wire (None for a measured trace).
    phase_model:     the topology's calibrated `lshsim.calibration.phase_model.PhaseModel`, or None.
                     With one, the simulator costs the expert phase with its measured grid and the
                     gate and LSH phases with its fits (`calibrated_cost`) instead of the roofline.
    gradient_bytes:  (W, W) bytes of the combine's backward (the output gradient travelling to the
                     experts, source row); None = dispatch_bytes. Differs when the dispatch sends
                     another format than the gradients (an fp8 dispatch, bf16 gradients).
    network_role_s:  seconds of one all-to-all of a (W, W) byte matrix that moves tokens towards the
                     experts ("dispatch": the forward dispatch, the combine's backward) or back
                     ("combine"); None = `network_s` for both. A collective that treats the two
                     differently (the node-deduplicated one: one network copy per (token, node) one
                     way, a reduction on the forwarder the other) needs the role.
    direct_s:        direct_s(matrix, start_up=True): seconds of one phase of point-to-point messages,
                     a (W, W) byte matrix sent all at once over the topology (the `direct` algorithm
                     whatever the step's all-to-all is), with the per-message start-up latency
                     (alpha) or without it (start_up=False): the ring steps of the tensor-parallel
                     collectives (`lshsim.sim.tensor_parallel`). None where there is no network (a
                     measured trace).
    all_reduce_s:    all_reduce_s(groups, bytes) -> seconds of a ring all-reduce of `bytes` per rank
                     over every group of `groups` ((R, g) ranks) at once on the topology
                     (`lshsim.sim.collectives.ring_all_reduce`, cached); None for a measured trace.
    ep:              the expert-parallel group size EP (W: one group); None = W.
    """

    world_size: int
    gpu: dict
    kernel_launch_s: float
    model: dict
    experts_on_rank: int
    dispatch_bytes: np.ndarray
    combine_bytes: np.ndarray
    rows_received: np.ndarray
    network_s: Callable[[np.ndarray], float]
    config: object = None
    traffic: object = None
    wire_counts: np.ndarray | None = None
    phase_model: object = None
    gradient_bytes: np.ndarray | None = None
    network_role_s: Callable[[np.ndarray, str], float] | None = None
    direct_s: Callable[..., float] | None = None
    all_reduce_s: Callable[[np.ndarray, float], float] | None = None
    ep: int | None = None

    def roofline_s(self, flops: float, hbm_bytes: float, kernels: int = 0) -> float:
        """`compute_time_s` on this context's GPU, with its kernel launch cost."""
        return compute_time_s(flops, hbm_bytes, self.gpu, kernels, self.kernel_launch_s)


@dataclass(frozen=True)
class PhaseCost:
    """What a cost function returns for one (phase, direction), per chunk of a pipelined section.

    seconds: a float (the same on every rank) or a (W,) array (per rank).
    bytes:   None, or a (W,) array of the bytes each rank moves (the records' `bytes` field).
    """

    seconds: float | np.ndarray
    bytes: np.ndarray | None = None


#: cost(context, direction, chunks) -> PhaseCost. `direction` is "forward" or "backward"; `chunks`
#: is the number of pieces a pipelined section is cut into (1 for every phase outside it): the
#: cost is that of ONE chunk.
CostFunction = Callable[[CostContext, str, int], PhaseCost]


@dataclass(frozen=True)
class PhaseSpec:
    """One phase of a training step.

    name:        the phase's name in traces (`PhaseRecord.name`).
    kind:        "communication" (booked as all-to-all time in the breakdown), "compute" or
                 "overhead" (both occupy the GPU's compute stream, outside the network).
    block:       where it runs in the step: "attention", "moe", "dense" or "head" (module docstring).
    cost:        cost(context, direction, chunks) -> PhaseCost (see `CostContext`, `PhaseCost`).
    directions:  the passes it appears in, ("forward", "backward") or one of them.
    timed:       the directions in which the executor times it (empty: the executor does not run it).
    predicted:   `lshsim validate` predicts it from a measured trace with `cost` (module docstring
                 of `lshsim.sim.validate`); the cost function must then read only what a measured
                 trace's `CostContext` holds.
    pipelined:   part of the MoE block's chunked dispatch -> expert -> combine section.
    applies:     applies(step_config) -> bool: whether a simulated step runs it (None: always).
    description: what the interval covers.
    """

    name: str
    kind: str
    block: str
    cost: CostFunction
    directions: tuple[str, ...] = DIRECTIONS
    timed: tuple[str, ...] = ()
    predicted: bool = False
    pipelined: bool = False
    applies: Callable[[object], bool] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"phase name {self.name!r} must be an identifier (letters, digits, _)")
        if self.kind not in KINDS:
            raise ValueError(f"phase {self.name!r}: kind={self.kind!r} must be one of {list(KINDS)}")
        if self.block not in BLOCKS:
            raise ValueError(f"phase {self.name!r}: block={self.block!r} must be one of {list(BLOCKS)}")
        if not callable(self.cost):
            raise ValueError(f"phase {self.name!r}: cost must be callable (context, direction, chunks) -> PhaseCost")
        for field_name in ("directions", "timed"):
            value = tuple(getattr(self, field_name))
            if any(d not in DIRECTIONS for d in value) or len(set(value)) != len(value):
                raise ValueError(f"phase {self.name!r}: {field_name}={value!r} must hold distinct values of "
                                 f"{list(DIRECTIONS)}")
            object.__setattr__(self, field_name, value)
        if not self.directions:
            raise ValueError(f"phase {self.name!r}: directions must not be empty")
        if not set(self.timed) <= set(self.directions):
            raise ValueError(f"phase {self.name!r}: timed={self.timed!r} outside directions={self.directions!r}")
        if self.pipelined and self.block != "moe":
            raise ValueError(f"phase {self.name!r}: only phases of the 'moe' block can be pipelined")
        if self.applies is not None and not callable(self.applies):
            raise ValueError(f"phase {self.name!r}: applies must be callable (step_config) -> bool, or None")

    def runs_in(self, config: object) -> bool:
        """Whether a simulated step with `config` runs this phase."""
        return self.applies is None or bool(self.applies(config))


# ---- the table -----------------------------------------------------------------------------------
class PhaseTable(Mapping):
    """The ordered registry of phases: a read-only mapping name -> PhaseSpec, plus `register`.

    Iterating gives the names in table order (the order of `Trace.phase_durations_s`, of the
    Chrome trace's threads and of `lshsim validate`'s rows); `index(name)` is a name's position.
    """

    def __init__(self, specs: list[PhaseSpec]) -> None:
        self._specs: dict[str, PhaseSpec] = {}
        self._index: dict[str, int] = {}
        self._builtin: frozenset[str] = frozenset()
        for spec in specs:
            if not isinstance(spec, PhaseSpec) or spec.name in self._specs:
                raise ValueError(f"the table's phases must be PhaseSpecs with distinct names: {spec!r}")
            self._specs[spec.name] = spec
        _check_section(list(self._specs.values()))
        self._set(list(self._specs.values()))
        self._builtin = frozenset(self._specs)

    def __getitem__(self, name: str) -> PhaseSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown phase {name!r}; known: {list(self._specs)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._specs))

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __repr__(self) -> str:
        return f"PhaseTable({list(self._specs)})"

    def index(self, name: str) -> int:
        """Position of `name` in the table (ValueError if unknown, like tuple.index)."""
        if name not in self._index:
            raise ValueError(f"{name!r} is not a known phase; known: {list(self._specs)}")
        return self._index[name]

    def names(self, kind: str | None = None) -> tuple[str, ...]:
        """Names in table order, only those of `kind` if given."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind={kind!r} must be one of {list(KINDS)}")
        return tuple(name for name, spec in self._specs.items() if kind is None or spec.kind == kind)

    def specs(self) -> tuple[PhaseSpec, ...]:
        return tuple(self._specs.values())

    def register(self, spec: PhaseSpec, *, before: str | None = None, after: str | None = None) -> PhaseSpec:
        """Add `spec`; at the end of the table, or just before / after an existing phase.

        Contract: `spec` is a `PhaseSpec` whose name is not yet in the table (duplicates are
        refused: ValueError). Its cost function is called as cost(CostContext, direction, chunks)
        and returns a `PhaseCost` of one chunk; the simulator calls it once per (phase, direction)
        of a step (and per chunk count it tries, for pipelined phases), so it must be a pure
        function of its arguments. A pipelined phase must keep the MoE section's shape
        (communication, compute, communication, contiguous); ValueError otherwise.
        Returns `spec`.
        """
        if not isinstance(spec, PhaseSpec):
            raise ValueError(f"register a PhaseSpec, got {type(spec).__name__}")
        if spec.name in self._specs:
            raise ValueError(f"phase {spec.name!r} is already registered")
        if before is not None and after is not None:
            raise ValueError("give before or after, not both")
        order = list(self._specs.values())
        anchor = before if before is not None else after
        if anchor is None:
            position = len(order)
        else:
            position = self.index(anchor) + (1 if after is not None else 0)
        candidate = order[:position] + [spec] + order[position:]
        _check_section(candidate)
        self._set(candidate)
        return spec

    def unregister(self, name: str) -> PhaseSpec:
        """Remove a phase added with `register` (the built-in phases stay); returns its spec."""
        if name not in self._specs:
            raise ValueError(f"phase {name!r} is not registered")
        if name in self._builtin:
            raise ValueError(f"phase {name!r} is built in and cannot be unregistered")
        spec = self._specs[name]
        self._set([s for s in self._specs.values() if s.name != name])
        return spec

    def _set(self, specs: list[PhaseSpec]) -> None:
        self._specs = {s.name: s for s in specs}
        self._index = {s.name: i for i, s in enumerate(specs)}


def _check_section(specs: list[PhaseSpec]) -> None:
    """The pipelined phases: contiguous, communication -> compute -> communication (or none)."""
    positions = [i for i, spec in enumerate(specs) if spec.pipelined]
    if not positions:
        return
    kinds = [specs[i].kind for i in positions]
    if positions != list(range(positions[0], positions[0] + len(positions))) or \
            kinds != ["communication", "compute", "communication"]:
        raise ValueError(f"the pipelined phases must be contiguous and communication, compute, communication; got "
                         f"{[(specs[i].name, specs[i].kind) for i in positions]}")


# ---- built-in cost functions -----------------------------------------------------------------------
def roofline_cost(forward_work: Callable[[CostContext], tuple[float, float]], kernels: int,
                  backward_work: Callable[[CostContext], tuple[float, float]] | None = None) -> CostFunction:
    """A compute phase's cost function from its forward work: forward_work(context) -> (FLOPs, HBM bytes).

    Forward: roofline of that work with `kernels` launches. Backward: twice the FLOPs, bytes and
    launches (gradient of the input and of the weights), or, with `backward_work`, the roofline of
    backward_work(context) with `kernels` launches.
    """

    def cost(ctx: CostContext, direction: str, chunks: int = 1) -> PhaseCost:
        if direction == "backward" and backward_work is not None:
            flops, hbm = backward_work(ctx)
            return PhaseCost(ctx.roofline_s(flops, hbm, kernels))
        flops, hbm = forward_work(ctx)
        factor = 1 if direction == "forward" else 2
        return PhaseCost(ctx.roofline_s(factor * flops, factor * hbm, factor * kernels))

    return cost


def _phase_features(ctx: CostContext) -> dict:
    """The phase model's workload features (`lshsim.calibration.phase_model.workload_features`)
    of a simulated step."""
    from lshsim.calibration.phase_model import workload_features

    m, config = ctx.model, ctx.config
    lsh = None if getattr(config, "lsh_rate", None) is None else \
        {"num_hashes": config.lsh_hashes, "proj_dim": config.lsh_dim}
    return workload_features({"tokens_per_rank": ctx.traffic.tokens_per_rank, "d_model": m["d_model"],
                              "num_experts": m["num_experts"], "router": {"name": ctx.traffic.router, "k": ctx.traffic.k},
                              "bytes_per_token": m["d_model"] * m["bytes_per_element"], "lsh": lsh,
                              "world_size": ctx.world_size})


def calibrated_cost(name: str, fallback: CostFunction) -> CostFunction:
    """The cost of phase `name` from the context's phase model where it has a fit for the
    (phase, direction) and the context is a simulated step's; else `fallback` (the roofline).
    A pipelined section's chunk gets the fit's time divided by the chunks."""

    def cost(ctx: CostContext, direction: str, chunks: int = 1) -> PhaseCost:
        pm = ctx.phase_model
        if pm is not None and ctx.traffic is not None and (name, direction) in pm.kernels:
            return PhaseCost(pm.kernel_s(name, direction, _phase_features(ctx)) / chunks)
        return fallback(ctx, direction, chunks)

    return cost


def _tokens(ctx: CostContext) -> float:
    return float(ctx.traffic.tokens_per_rank)


def _copies(ctx: CostContext) -> float:
    return _tokens(ctx) * ctx.traffic.k


def _tp(ctx: CostContext) -> int:
    """The step's tensor-parallel degree (1 without a config: a measured trace)."""
    return int(getattr(ctx.config, "tp", 1) or 1)


def _replicated(config: object) -> bool:
    """MindSpore's TP layout (`StepConfig.tp_layout` "replicated", TP > 1): tokens replicated over the
    TP ranks, experts split over them (`lshsim.sim.tensor_parallel`)."""
    return bool(getattr(config, "replicates_tokens", False))


def expert_tp(ctx: CostContext) -> int:
    """Over how many ranks each routed expert is split: TP in the replicated layout, else 1."""
    return _tp(ctx) if _replicated(ctx.config) else 1


def expert_span(ctx: CostContext) -> int:
    """Consecutive ranks that hold every expert once (in shards with the replicated layout): EP, or
    EP x TP in the replicated layout (one EP group per TP index); W / span replicas of each shard."""
    return (ctx.ep or ctx.world_size) * expert_tp(ctx)


def _work_tokens(ctx: CostContext) -> float:
    """The tokens whose attention / dense / head FLOPs a rank does with 1 / TP of the weights: its
    T / TP (sequence parallel), or, in the replicated layout, its T tokens over TP (each rank computes
    1 / TP of every token's heads and FFN width: the same FLOPs)."""
    return _tokens(ctx) / _tp(ctx) if _replicated(ctx.config) else _tokens(ctx)


# With tensor parallelism (`lshsim.sim.tensor_parallel`) a GPU holds T / TP tokens (sequence
# parallel: `_tokens` is that), and computes 1 / TP of its TP group's T tokens through 1 / TP of
# the weights: the FLOPs and activations below are those of T / TP tokens, the weights / TP.
def _attention_work(ctx: CostContext) -> tuple[float, float]:
    # QKV and output projections 2 * 4 d^2, scores and weighted sum 2 * 2 s d per token (PaLM App. B)
    m, tokens = ctx.model, _work_tokens(ctx)
    d, b = m["d_model"], m["bytes_per_element"]
    span = m["attention_window"] or m["seq_len"]
    return tokens * (2 * 4 * d * d + 2 * 2 * span * d), 4 * d * d * b / _tp(ctx) + 10 * tokens * d * b


def _dense_ffn_work(ctx: CostContext) -> tuple[float, float]:
    # the dense FFN of a layer without MoE: its own width (`dense_d_ffn`, DeepSeek's first layers)
    # or the experts' d_ffn, 2 or 3 (SwiGLU) matrices
    m, tokens = ctx.model, _work_tokens(ctx)
    d, b = m["d_model"], m["bytes_per_element"]
    f = m.get("dense_d_ffn") or m["d_ffn"]
    tp = _tp(ctx)
    return expert_cost(tokens, d, f, 1 / tp if tp > 1 else 1, b, m.get("ffn_matrices", 2))


def _head_work(ctx: CostContext) -> tuple[float, float]:
    m, tokens = ctx.model, _work_tokens(ctx)
    if not m.get("output_head", True):     # a stage of a staged model (Swin) that is not the last
        return 0.0, 0.0
    d, b, vocab = m["d_model"], m["bytes_per_element"], m["vocab_size"]
    return tokens * 2 * d * vocab, vocab * d * b / _tp(ctx) + tokens * (d * b + 2 * vocab * 4)


def _gate_work(ctx: CostContext) -> tuple[float, float]:
    # the router's own per-token gate cost (its registry entry: logits matmul, GrAP group mean, or
    # none for hash; softmax / top-k over the scores), plus the slots: an int64 slot and index per copy
    from lshsim.dispatch import gate_cost  # the router registry (imports torch; only when costed)

    m, tokens = ctx.model, _tokens(ctx)
    per_token = gate_cost(ctx.config.router, m["d_model"], m["num_experts"], m["bytes_per_element"])
    return tokens * per_token.flops_per_token, tokens * per_token.bytes_per_token + _copies(ctx) * 4 * 8


def _moe_layer(ctx: CostContext) -> str:
    from lshsim.sim.moe_layers import resolve_moe_layer

    return resolve_moe_layer(ctx.config, ctx.gpu)


def einsum_gate_cost(base: CostFunction) -> CostFunction:
    """The gate's cost `base`, plus, in the gshard-einsum-loop layer (`lshsim.sim.moe_layers`), the
    dense one-hot dispatch and combine: their GEMMs at the GPU's achieved FLOP/s, then the (S, E, C)
    masks' memory traffic (separate kernels, one after another), and GATE_OPS launches forward
    (half backward). Booked under "gate" (the compute stream; the MoE section is not pipelined).
    """

    def cost(ctx: CostContext, direction: str, chunks: int = 1) -> PhaseCost:
        out = base(ctx, direction, chunks)
        if ctx.traffic is None or ctx.config is None or _moe_layer(ctx) != "gshard-einsum-loop":
            return out
        from lshsim.sim.moe_layers import GATE_OPS, einsum_work, padded_capacity

        m = ctx.model
        capacity = padded_capacity(ctx.traffic.tokens_per_rank, ctx.traffic.k, m["num_experts"],
                                   ctx.config.capacity_factor)
        flops, hbm = einsum_work(_tokens(ctx), m["num_experts"], capacity, m["d_model"], m["bytes_per_element"],
                                 direction)
        launches = (GATE_OPS + 2) if direction == "forward" else (GATE_OPS // 2 + 3)
        extra = flops / ctx.gpu["achieved_flops"] + hbm / ctx.gpu["achieved_hbm_Bps"] + launches * ctx.kernel_launch_s
        return PhaseCost(out.seconds + extra, out.bytes)

    return cost


def _centroids(ctx: CostContext) -> float:
    return float(ctx.wire_counts.sum(axis=1).mean())  # centroids one rank sends (incl. local)


def _lsh_compress_work(ctx: CostContext) -> tuple[float, float]:
    # L cross-polytope hashes (a d -> d' projection each), a 4-pass radix sort of 16-byte
    # (key, index) pairs, the centroid scatter-add (Nie et al. 2024, LSH-MoE)
    m, config, tokens, copies = ctx.model, ctx.config, _tokens(ctx), _copies(ctx)
    d, b = m["d_model"], m["bytes_per_element"]
    d_proj = config.lsh_dim or d
    flops = tokens * 2 * d * d_proj * config.lsh_hashes
    hbm = (tokens * d * b + 2 * tokens * config.lsh_hashes * d_proj * b  # read x, write/read projections
           + 4 * 2 * 16 * copies  # radix sort: 4 passes, read + write of 16-byte (key, index)
           + copies * d * b + _centroids(ctx) * d * 4)  # scatter-add: read copies, write fp32 centroids
    return flops, hbm


def _lsh_compress_backward_work(ctx: CostContext) -> tuple[float, float]:
    # no hashing: the centroid's gradient is shared by its copies (mean rule): read the fp32
    # centroid gradients, write one gradient per copy
    d, b, copies = ctx.model["d_model"], ctx.model["bytes_per_element"], _copies(ctx)
    return copies * d, _centroids(ctx) * d * 4 + copies * d * b


def _lsh_restore_work(ctx: CostContext) -> tuple[float, float]:
    # E(x) ~= E(c) + (x - c), memory bound; the backward moves as much as the forward
    d, b, copies = ctx.model["d_model"], ctx.model["bytes_per_element"], _copies(ctx)
    return copies * 2 * d, copies * 3 * d * b + _tokens(ctx) * d * b


def measured_lsh_cost(name: str, fallback: CostFunction) -> CostFunction:
    """LSH-MoE's compress / restore from the GPU's measured throughput where the topology's
    `software:` block gives it (`gpu["lsh_compress_Bps"]`, `gpu["lsh_restore_Bps"]`: bytes of token
    copies per second); else `fallback`. Each phase moves copies x d_model x bytes_per_element
    bytes of rows: compress forward at the compress rate (hash, sort, centroids); compress
    backward (the centroid gradient copied back to its tokens) and restore both ways at the restore
    rate (element-wise over the copies). Plus the phase's kernel launches (twice backward).

    >>> from types import SimpleNamespace as NS
    >>> ctx = NS(gpu={"lsh_compress_Bps": 1e9, "lsh_restore_Bps": 4e9}, model={"d_model": 500, "bytes_per_element": 2},
    ...          traffic=NS(tokens_per_rank=1000, k=2), kernel_launch_s=0.0)
    >>> measured_lsh_cost("lsh_compress", None)(ctx, "forward").seconds   # 2000 copies x 1000 B / 1e9 B/s
    0.002
    >>> measured_lsh_cost("lsh_restore", None)(ctx, "backward").seconds
    0.0005
    """
    if name not in ("lsh_compress", "lsh_restore"):
        raise ValueError(f"measured_lsh_cost: phase {name!r} is not an LSH phase")

    def cost(ctx: CostContext, direction: str, chunks: int = 1) -> PhaseCost:
        key = "lsh_compress_Bps" if name == "lsh_compress" and direction == "forward" else "lsh_restore_Bps"
        rate = ctx.gpu.get(key) if isinstance(ctx.gpu, dict) else None
        if not rate or ctx.traffic is None:
            return fallback(ctx, direction, chunks)
        moved = _copies(ctx) * ctx.model["d_model"] * ctx.model["bytes_per_element"]
        launches = KERNELS[name] * (1 if direction == "forward" else 2) * ctx.kernel_launch_s
        return PhaseCost(moved / rate / chunks + launches)

    return cost


def _expert_cost(ctx: CostContext, direction: str, chunks: int = 1) -> PhaseCost:
    """Per-rank roofline of the rank's expert FFNs on the rows it receives; each chunk re-reads the weights.

    With a calibrated expert grid (the context's phase model, a simulated step): the grid's
    prediction for the rank's experts at its mean rows per expert (per chunk), the floor included.
    """
    m = ctx.model
    d, f, b = m["d_model"], m["d_ffn"], m["bytes_per_element"]
    if _replicated(ctx.config):   # MindSpore: each expert's width split over TP
        f = f / _tp(ctx)
    matrices = m.get("ffn_matrices", 2)
    factor = 1 if direction == "forward" else 2
    # shared experts (DeepSeek): every token of the rank through `num_shared_experts` FFNs of width
    # d_ffn, on its own rank, costed with the routed experts (DeepSeek overlaps them with the dispatch)
    shared = m.get("num_shared_experts", 0)
    shared_s = 0.0
    if shared and ctx.traffic is not None:
        # with TP the shared experts are split over the TP ranks (Megatron-Core: they follow the
        # dense part): the rank's T / TP tokens' FLOPs, 1 / TP of the weights
        tp = _tp(ctx)
        flops, hbm = expert_cost(_work_tokens(ctx) * shared, d, m["d_ffn"], shared / tp if tp > 1 else shared, b,
                                 matrices)
        shared_s = ctx.roofline_s(factor * flops / chunks, factor * hbm / chunks, factor * KERNELS["expert"] / chunks)
    if ctx.traffic is not None and _moe_layer(ctx) == "gshard-einsum-loop":
        # fairseq / DeepSpeed-MoE of 2021-22: the local experts one after another (lshsim.sim.moe_layers)
        from lshsim.sim.moe_layers import expert_loop_s

        experts = max(ctx.experts_on_rank, 1)
        return PhaseCost(np.array([expert_loop_s(experts, float(rows) / chunks / experts, d, f, b, ctx.gpu,
                                                 ctx.kernel_launch_s, direction, matrices) + shared_s
                                   for rows in ctx.rows_received]))
    pm = ctx.phase_model
    if pm is not None and pm.expert is not None and ctx.traffic is not None:
        experts = max(ctx.experts_on_rank, 1)
        # the grid was measured on two-matrix experts: a SwiGLU expert does matrices / 2 of that work
        return PhaseCost(np.array([pm.expert.predict_s(experts, float(rows) / chunks / experts, d, f, direction)
                                   * matrices / 2 + shared_s for rows in ctx.rows_received]))
    weights = ctx.experts_on_rank * float(matrices) * d * f * b
    out = []
    for rows in ctx.rows_received:
        flops, hbm = expert_cost(float(rows), d, f, ctx.experts_on_rank, b, matrices)
        chunk_hbm = weights + (hbm - weights) / chunks
        out.append(ctx.roofline_s(factor * flops / chunks, factor * chunk_hbm, factor * KERNELS["expert"]) + shared_s)
    return PhaseCost(np.array(out))  # (W,) seconds per chunk


def _a2a_cost(forward_matrix: str, backward_matrix: str) -> CostFunction:
    """An all-to-all whose (W, W) bytes are the context's `forward_matrix` in the forward pass and
    `backward_matrix` in the backward (the gradient of the dispatch travels along the combine's
    matrix, and the other way round; the combine's gradient along `gradient_bytes` when the context
    has them, else the dispatch's)."""

    def cost(ctx: CostContext, direction: str, chunks: int = 1) -> PhaseCost:
        name = forward_matrix if direction == "forward" else backward_matrix
        if name == "gradient_bytes" and ctx.gradient_bytes is None:
            name = "dispatch_bytes"
        matrix = getattr(ctx, name)  # (W, W)
        sent = matrix.sum(axis=1) - np.diagonal(matrix)          # (W,) off-diagonal row sums, no (W, W) copy
        chunk = np.ceil(matrix / chunks)
        if ctx.network_role_s is not None:
            seconds = ctx.network_role_s(chunk, "combine" if name == "combine_bytes" else "dispatch")
        else:
            seconds = ctx.network_s(chunk)
        return PhaseCost(seconds, bytes=np.ceil(sent / chunks))

    return cost


# ---- the data-parallel gradient all-reduce ---------------------------------------------------------
from lshsim.topology.spec import GRAD_SYNC_MODES  # noqa: E402  (the modes a software block may name)

#: the gradient all-reduce's mode where neither the step (`StepConfig.grad_sync`) nor the cluster's
#: software calibration (`software.grad_sync`) names one: PyTorch DDP's default, gradients
#: all-reduced in buckets as they become ready, behind the rest of the backward
DEFAULT_GRAD_SYNC = "overlapped"
#: PyTorch DDP's default bucket size (`bucket_cap_mb=25`), the "overlapped" mode's buckets
DDP_BUCKET_BYTES = 25 * 2 ** 20


def resolve_grad_sync(config: object, gpu: dict | None) -> str:
    """The step's gradient all-reduce mode: the config's `grad_sync`, else the cluster's software
    (gpu["grad_sync"], from `software.grad_sync`), else DEFAULT_GRAD_SYNC.

    >>> from types import SimpleNamespace as NS
    >>> resolve_grad_sync(NS(grad_sync=None), {"grad_sync": "after"}), resolve_grad_sync(NS(grad_sync="off"), {})
    ('after', 'off')
    >>> resolve_grad_sync(None, None)
    'overlapped'
    """
    mode = getattr(config, "grad_sync", None)
    if mode is None and isinstance(gpu, dict):
        mode = gpu.get("grad_sync")
    mode = mode or DEFAULT_GRAD_SYNC
    if mode not in GRAD_SYNC_MODES:
        raise ValueError(f"grad_sync={mode!r} must be one of {', '.join(GRAD_SYNC_MODES)}")
    return mode


def attention_parameters(d_model: int, attention: dict | tuple = ()) -> int:
    """Weights of one attention block (biases and norms ignored); `attention`: the layout of
    `lshsim.models.catalog` (`attention:`, validated there), empty for standard attention.

    mha: 4 d^2 (Q, K, V, O). gqa: d h hd (Q) + 2 d kv hd (K, V) + h hd d (O). mla (DeepSeek-V2/V3,
    arXiv 2405.04434 Sec. 2.1): W_DQ d q_r + W_UQ q_r h (nope + rope) (or d h (nope + rope) without a
    query LoRA), W_DKV + W_KR d (kv_r + rope), W_UK + W_UV kv_r h (nope + v), W_O h v d.

    >>> attention_parameters(8), attention_parameters(8, {"kind": "gqa", "num_heads": 2, "num_kv_heads": 1, "head_dim": 4})
    (256, 192)
    """
    a = dict(attention)
    d = d_model
    kind = a.get("kind", "mha")
    if kind == "mha":
        return 4 * d * d
    if kind == "gqa":
        h, kv, hd = a["num_heads"], a["num_kv_heads"], a["head_dim"]
        return d * h * hd + 2 * d * kv * hd + h * hd * d
    h, qk = a["num_heads"], a["qk_nope_head_dim"] + a["qk_rope_head_dim"]
    query = d * a["q_lora_rank"] + a["q_lora_rank"] * h * qk if a.get("q_lora_rank") else d * h * qk
    key_value = d * (a["kv_lora_rank"] + a["qk_rope_head_dim"]) + a["kv_lora_rank"] * h * (a["qk_nope_head_dim"] + a["v_head_dim"])
    return query + key_value + h * a["v_head_dim"] * d


def gradient_parameters(model: dict, experts_on_rank: int, tp: int = 1, expert_tp: int = 1) -> dict:
    """The weights whose gradients a rank all-reduces, by when they are ready in the backward.

    model: the simulator's model dict (`lshsim.sim.moe_step.model_dict`). Returns
    {"layers": [(replicated, expert)] for layers 0..L-1, "last": replicated}:
    replicated, the weights every rank holds (all-reduced over all W ranks): per layer attention
    (4 d^2, or the model's `attention` layout, GQA or MLA: `attention_parameters`, the rule of the
    catalog's parameter counts), a dense layer's FFN ffn_matrices x d x (dense_d_ffn or d_ffn), an MoE layer's gate d E and
    shared experts; "last": the embedding and output head, vocab x d (twice when not tied; only where
    the model has its head: the last stage of a staged model) and the cross-attention layers
    (4 d^2 each), whose gradients are complete only at the end of the backward;
    expert, the weights of the experts the rank holds in that layer (experts_on_rank x
    ffn_matrices x d x d_ffn), all-reduced over the W / EP replicas of each expert when EP < W.
    Biases and norms are left out (under 0.1% of these models), as in `models.catalog`.
    With tensor parallelism (tp > 1, `lshsim.sim.tensor_parallel`) a rank holds 1 / tp of the
    attention, dense FFN, shared-expert, cross-attention, embedding and head weights (the gate and
    the routed experts stay whole), and those are all-reduced over its data-parallel group of W / tp.
    expert_tp: the routed experts split over that many ranks (MindSpore's replicated layout: TP), a
    rank's expert weights / expert_tp.

    >>> m = {"num_layers": 2, "d_model": 4, "d_ffn": 8, "num_experts": 2, "moe_every": 2, "vocab_size": 10}
    >>> gradient_parameters(m, 1)
    {'layers': [(128, 0), (72, 64)], 'last': 40}
    """
    d, f = int(model["d_model"]), int(model["d_ffn"])
    matrices = int(model.get("ffn_matrices", 2) or 2)
    first_dense = int(model.get("first_dense_layers", 0) or 0)
    dense_f = int(model.get("dense_d_ffn") or f)
    shared = int(model.get("num_shared_experts", 0) or 0)
    tp = int(tp)
    layout = model.get("attention") or ()
    per_layer_attention = attention_parameters(d, layout)
    layers = []
    for layer in range(int(model["num_layers"])):
        attention = per_layer_attention // tp
        if layer >= first_dense and (layer + 1) % int(model["moe_every"]) == 0:
            layers.append((attention + d * int(model["num_experts"]) + shared * matrices * d * f // tp,
                           int(experts_on_rank) * matrices * d * f // int(expert_tp)))
        else:
            layers.append((attention + matrices * d * dense_f // tp, 0))
    last = int(model.get("cross_attention_layers", 0) or 0) * 4 * d * d
    if model.get("output_head", True):
        last += int(model["vocab_size"]) * d * (1 if model.get("tie_embeddings", True) else 2)
    return {"layers": layers, "last": last // tp}


def expert_grads_synced(ctx: CostContext) -> bool:
    """Whether each expert's W / EP replicas all-reduce its gradients: the software's
    `expert_grad_sync` (absent = True, as PyTorch DDP does). fairseq's legacy_ddp (the LSH-MoE
    clusters' mode) skips every parameter its MoE layer marks `expert`: it only divides the
    gradient by the world size (fairseq/distributed/legacy_distributed_data_parallel.py at
    9e80e19e, `if hasattr(param, 'expert'): ... continue`); only its FSDP path reduces them over
    the expert's replicas.

    >>> from types import SimpleNamespace as NS
    >>> expert_grads_synced(NS(gpu={})), expert_grads_synced(NS(gpu={"expert_grad_sync": False}))
    (True, False)
    """
    gpu = ctx.gpu if isinstance(getattr(ctx, "gpu", None), dict) else {}
    return bool(gpu.get("expert_grad_sync", True))


def _grad_bytes(ctx: CostContext) -> tuple[float, float]:
    """(replicated, expert) gradient bytes a rank all-reduces in one step (expert 0 where the
    software does not all-reduce the experts' replicas, `expert_grads_synced`)."""
    params = gradient_parameters(ctx.model, ctx.experts_on_rank, _tp(ctx), expert_tp(ctx))
    b = grad_bytes_per_element(ctx)
    replicated = sum(p for p, _ in params["layers"]) + params["last"]
    expert = sum(e for _, e in params["layers"]) if expert_grads_synced(ctx) else 0
    return replicated * b, expert * b


def grad_bytes_per_element(ctx: CostContext) -> int:
    """Bytes per gradient element: the step's `grad_bytes_per_element`, else the model's
    bytes_per_element (fairseq's --fp16 and MindSpore's fp16 training all-reduce fp16 gradients)."""
    b = getattr(ctx.config, "grad_bytes_per_element", None)
    return int(b or ctx.model["bytes_per_element"])


def grad_sync_seconds(ctx: CostContext, replicated_bytes: float, expert_bytes: float) -> float:
    """Seconds to all-reduce `replicated_bytes` over all W ranks (one ring; with tensor parallelism
    over each data-parallel group of W / TP ranks, the ranks of one TP index, TP rings at once), then
    `expert_bytes` over each expert's W / EP replicas (EP rings at once; nothing when EP = W; W / (EP x
    TP) replicas of each shard in the replicated TP layout, `expert_span`): one after another, as DDP
    and fairseq issue them on one stream."""
    world = ctx.world_size
    ep = expert_span(ctx)
    tp = _tp(ctx)
    seconds = 0.0
    if replicated_bytes > 0 and world > tp:
        groups = np.arange(world).reshape(world // tp, tp).T              # (TP, W / TP): rank r, r + TP, ...
        seconds += ctx.all_reduce_s(groups, float(replicated_bytes))
    if expert_bytes > 0 and ep < world:
        groups = np.arange(world).reshape(world // ep, ep).T            # (EP, W / EP): rank r, r + EP, ...
        seconds += ctx.all_reduce_s(groups, float(expert_bytes))
    return seconds


def grad_sent_bytes(ctx: CostContext, replicated_bytes: float, expert_bytes: float) -> np.ndarray:
    """(W,) bytes each rank sends in the ring all-reduces: 2 (g - 1) / g of each size."""
    world = ctx.world_size
    ep = expert_span(ctx)
    dp = world // _tp(ctx)
    sent = 2 * (dp - 1) / dp * replicated_bytes if dp > 1 else 0.0
    replicas = world // ep
    if ep < world and replicas > 1:
        sent += 2 * (replicas - 1) / replicas * expert_bytes
    return np.full(world, float(np.ceil(sent)))


def _grad_allreduce_cost(ctx: CostContext, direction: str, chunks: int = 1) -> PhaseCost:
    """The whole data-parallel gradient all-reduce of one step (`grad_sync_seconds` of all the
    gradients): what the "after" mode costs once the backward has ended. The "overlapped" mode's
    buckets are costed with the same function by the step simulator (`lshsim.sim.moe_step`)."""
    if ctx.all_reduce_s is None:
        raise ValueError("grad_allreduce needs the topology's all-reduce (CostContext.all_reduce_s): a simulated step")
    replicated, expert = _grad_bytes(ctx)
    return PhaseCost(grad_sync_seconds(ctx, replicated, expert), bytes=grad_sent_bytes(ctx, replicated, expert))


def _uses_lsh(config: object) -> bool:
    return getattr(config, "lsh_rate", None) is not None


# ---- tensor parallelism's collectives (`lshsim.sim.tensor_parallel`) ------------------------------
def _uses_tp(config: object) -> bool:
    return int(getattr(config, "tp", 1) or 1) > 1


def _replica_tokens(ctx: CostContext) -> float:
    """T: the tokens of one TP group's micro-batch (TP x the rank's T / TP; the rank's own T in the
    replicated layout)."""
    return _tokens(ctx) * (1 if _replicated(ctx.config) else _tp(ctx))


def _replica_activation_bytes(ctx: CostContext) -> float:
    """N: the (T, d) activations of one TP group's micro-batch (T = TP x the rank's T / TP tokens)."""
    m = ctx.model
    return _replica_tokens(ctx) * m["d_model"] * m["bytes_per_element"]


def _sequence_parallel_block(ctx: CostContext, direction: str) -> list[tuple[str, float]]:
    # Korthikanti et al. 2022: g (all-gather) in, g-bar (reduce-scatter) out, forward; backward the
    # conjugates (reduce-scatter and all-gather): the same two collectives of N bytes each way
    n = _replica_activation_bytes(ctx)
    return [("all_gather", n), ("reduce_scatter", n)]


def _shared_expert_block(ctx: CostContext, direction: str) -> list[tuple[str, float]]:
    # Megatron-Core's shared experts follow the dense part's TP: the same all-gather / reduce-scatter
    return _sequence_parallel_block(ctx, direction) if ctx.model.get("num_shared_experts", 0) else []


def _head_block(ctx: CostContext, direction: str) -> list[tuple[str, float]]:
    # the vocabulary-parallel embedding's output reduce-scattered to the sequence-parallel layout
    # and the output layer's input all-gathered (forward; backward the conjugates), and the
    # vocabulary-parallel cross-entropy's three all-reduces of one float32 per token (forward)
    if not ctx.model.get("output_head", True):
        return []
    n = _replica_activation_bytes(ctx)
    out = [("reduce_scatter", n), ("all_gather", n)]
    if direction == "forward":
        out += [("all_reduce", _replica_tokens(ctx) * 4.0)] * 3
    return out


def _expert_shard_block(ctx: CostContext, direction: str) -> list[tuple[str, float]]:
    # MindSpore's replicated layout: the row-parallel projection's partial outputs all-reduced over
    # the TP group (forward), the column-parallel mapping's input gradient likewise (backward), of
    # the rows the rank's experts process (the largest over ranks: the TP groups run at once)
    if ctx.traffic is None or not len(ctx.rows_received):
        return []
    m = ctx.model
    return [("all_reduce", float(np.max(ctx.rows_received)) * m["d_model"] * m["bytes_per_element"])]


def tp_collective_cost(collectives: Callable[[CostContext, str], list[tuple[str, float]]]) -> CostFunction:
    """A tensor-parallel phase's cost: the ring collectives collectives(context, direction) ->
    [(kind, N bytes)], one after another, each `tensor_parallel.tp_collective_s` with the context's
    `direct_s` (the network simulation of one ring step of every TP group at once). Bytes: what a
    rank sends, steps x N / TP. Zero with TP = 1 or without a network (a measured trace)."""

    def cost(ctx: CostContext, direction: str, chunks: int = 1) -> PhaseCost:
        from lshsim.sim.tensor_parallel import ring_steps, tp_collective_s

        tp = _tp(ctx)
        if tp == 1 or ctx.direct_s is None:
            return PhaseCost(0.0)
        seconds = sent = 0.0
        for kind, tensor_bytes in collectives(ctx, direction):
            seconds += tp_collective_s(ctx.direct_s, ctx.world_size, tp, kind, tensor_bytes)
            sent += ring_steps(kind, tp) * np.ceil(tensor_bytes / tp)
        return PhaseCost(seconds, bytes=np.full(ctx.world_size, sent))

    return cost


#: the tensor-parallel phases, each placed next to a built-in phase: (anchor, "after" | "before", spec)
_TENSOR_PARALLEL = [
    ("attention", "after", PhaseSpec(
        "tp_attention", "communication", "attention", tp_collective_cost(_sequence_parallel_block),
        applies=_uses_tp,
        description="tensor parallel: the attention block's all-gather in and reduce-scatter out (sequence "
                    "parallel; backward the conjugates) over the TP group's intra-node links")),
    ("dense_ffn", "after", PhaseSpec(
        "tp_dense_ffn", "communication", "dense", tp_collective_cost(_sequence_parallel_block),
        applies=_uses_tp,
        description="tensor parallel: the dense FFN's all-gather and reduce-scatter (sequence parallel)")),
    ("gate", "before", PhaseSpec(
        "tp_shared_expert", "communication", "moe", tp_collective_cost(_shared_expert_block),
        applies=_uses_tp,
        description="tensor parallel: the TP-split shared experts' all-gather and reduce-scatter (0 without "
                    "shared experts); routed experts have expert-TP 1 and no TP collective")),
    ("combine_a2a", "after", PhaseSpec(
        "tp_expert", "communication", "moe", tp_collective_cost(_expert_shard_block), applies=_replicated,
        description="tensor parallel, replicated layout (MindSpore's): the TP-split experts' output all-reduce "
                    "(forward) and input-gradient all-reduce (backward) over the TP group; not overlapped with "
                    "the MoE section's chunks")),
    ("other", "after", PhaseSpec(
        "tp_head", "communication", "head", tp_collective_cost(_head_block), applies=_uses_tp,
        description="tensor parallel: the vocabulary-parallel embedding's reduce-scatter, the output layer's "
                    "all-gather and the cross-entropy's all-reduces")),
]


def _with_tensor_parallel(specs: list[PhaseSpec]) -> list[PhaseSpec]:
    out = list(specs)
    for anchor, where, spec in _TENSOR_PARALLEL:
        position = [s.name for s in out].index(anchor)
        out.insert(position + (1 if where == "after" else 0), spec)
    return out


#: the names of the tensor-parallel phases (booked apart from the all-to-alls in the breakdown)
TP_PHASES = tuple(spec.name for _, _, spec in _TENSOR_PARALLEL)


_BUILTIN = [
    PhaseSpec("gate", "compute", "moe",
              einsum_gate_cost(calibrated_cost("gate", roofline_cost(_gate_work, KERNELS["gate"]))),
              timed=("forward",),
              description="router: gate logits, top-k, slot assignment (and the LocMoE GrAP gate)"),
    PhaseSpec("lsh_compress", "compute", "moe",
              measured_lsh_cost("lsh_compress", calibrated_cost("lsh_compress", roofline_cost(
                  _lsh_compress_work, KERNELS["lsh_compress"], _lsh_compress_backward_work))),
              timed=DIRECTIONS, applies=_uses_lsh,
              description="LSH-MoE: hash tokens, bucket per destination expert, centroids (sending rank)"),
    PhaseSpec("dispatch_a2a", "communication", "moe", _a2a_cost("dispatch_bytes", "combine_bytes"),
              timed=DIRECTIONS, predicted=True, pipelined=True,
              description="the dispatch all-to-all (tokens or centroids to the experts' ranks)"),
    PhaseSpec("expert", "compute", "moe", _expert_cost, timed=DIRECTIONS, predicted=True, pipelined=True,
              description="the expert FFNs on the receiving rank"),
    PhaseSpec("combine_a2a", "communication", "moe", _a2a_cost("combine_bytes", "gradient_bytes"),
              timed=DIRECTIONS, predicted=True, pipelined=True,
              description="the combine all-to-all (expert outputs back to the tokens' ranks)"),
    PhaseSpec("lsh_restore", "compute", "moe",
              measured_lsh_cost("lsh_restore", calibrated_cost("lsh_restore", roofline_cost(
                  _lsh_restore_work, KERNELS["lsh_restore"], _lsh_restore_work))),
              timed=DIRECTIONS, applies=_uses_lsh,
              description="LSH-MoE: E(x) ~= E(c) + (x - c) residual restore on the token's rank"),
    PhaseSpec("attention", "compute", "attention", roofline_cost(_attention_work, KERNELS["attention"]),
              description="non-MoE compute of a transformer layer: attention block (QKV, scores, out proj)"),
    PhaseSpec("dense_ffn", "compute", "dense", roofline_cost(_dense_ffn_work, KERNELS["dense_ffn"]),
              description="non-MoE compute: the dense FFN of a layer that has no MoE"),
    # the simulator's output head; the executor times its split-size exchange under this name.
    # Booked as compute, which is how the breakdown has always counted it.
    PhaseSpec("other", "compute", "head", roofline_cost(_head_work, KERNELS["other"]), timed=("forward",),
              description="simulator: the output head; executor: the split-size exchange; anything else "
                          "a runner times"),
    PhaseSpec("grad_allreduce", "gradient_sync", "gradient", _grad_allreduce_cost, directions=("backward",),
              description="the data-parallel gradient all-reduce: the replicated (attention, dense FFN, gate, "
                          "embedding, head) weights over all ranks, the experts' over their replicas when EP < W "
                          "(ring all-reduce on the topology); after the backward or bucket by bucket behind it "
                          "(StepConfig.grad_sync)"),
]

#: the phase table (see the module docstring); `register_phase` adds to it.
PHASES = PhaseTable(_with_tensor_parallel(_BUILTIN))


def register_phase(spec: PhaseSpec, *, before: str | None = None, after: str | None = None) -> PhaseSpec:
    """Add a phase to `PHASES` (contract: `PhaseTable.register`); returns `spec`.

    >>> spec = register_phase(PhaseSpec("doc_sync", "overhead", "moe", lambda ctx, direction, chunks: PhaseCost(1e-6),
    ...                                 directions=("forward",)), after="gate")
    >>> PHASES.index("doc_sync") == PHASES.index("gate") + 1
    True
    >>> register_phase(spec)
    Traceback (most recent call last):
    ...
    ValueError: phase 'doc_sync' is already registered
    >>> unregister_phase("doc_sync").name
    'doc_sync'
    """
    return PHASES.register(spec, before=before, after=after)


def unregister_phase(name: str) -> PhaseSpec:
    """Remove a phase added with `register_phase`; returns its spec."""
    return PHASES.unregister(name)


# ---- what the table derives -------------------------------------------------------------------------
def step_schedule(num_layers: int, moe_every: int, config: object = None,
                  table: PhaseTable | None = None, first_dense_layers: int = 0
                  ) -> list[tuple[str, tuple[PhaseSpec, ...], int]]:
    """The step's sequence: (direction, phases, layer) items, forward then backward.

    `phases` is one PhaseSpec, or the three pipelined ones (the MoE section) as one item. Forward:
    every layer's "attention" phases, then its "moe" (MoE layer) or "dense" phases, then the
    "head" phases at the last layer; only phases that run with `config` and have "forward" in their
    directions. After the backward, the "gradient" block's backward phases, once (layer 0). Layer l is an MoE layer when l >= first_dense_layers and (l + 1) % moe_every == 0. Backward: the forward sequence reversed (a section's phases reversed too), only
    phases that have "backward" in their directions.

    >>> [(d, [p.name for p in ps], layer) for d, ps, layer in step_schedule(2, 2)][2:5]
    [('forward', ['attention'], 1), ('forward', ['gate'], 1), ('forward', ['dispatch_a2a', 'expert', 'combine_a2a'], 1)]
    """
    table = PHASES if table is None else table
    blocks: dict[str, list[tuple[PhaseSpec, ...]]] = {block: [] for block in BLOCKS}
    for spec in table.specs():
        if not spec.runs_in(config):
            continue
        items = blocks[spec.block]
        if spec.pipelined and items and items[-1][0].pipelined:
            items[-1] = items[-1] + (spec,)
        else:
            items.append((spec,))
    sequence: list[tuple[tuple[PhaseSpec, ...], int]] = []
    for layer in range(num_layers):
        sequence.extend((item, layer) for item in blocks["attention"])
        ffn = "moe" if layer >= first_dense_layers and (layer + 1) % moe_every == 0 else "dense"
        sequence.extend((item, layer) for item in blocks[ffn])
    sequence.extend((item, num_layers - 1) for item in blocks["head"])
    out = []
    for item, layer in sequence:
        kept = tuple(spec for spec in item if "forward" in spec.directions)
        if kept:
            out.append(("forward", kept, layer))
    for item, layer in reversed(sequence):
        kept = tuple(spec for spec in reversed(item) if "backward" in spec.directions)
        if kept:
            out.append(("backward", kept, layer))
    for item in blocks["gradient"]:      # once per step, after the backward's last phase
        kept = tuple(spec for spec in item if "backward" in spec.directions)
        if kept:
            out.append(("backward", kept, 0))
    return out


def backward_chain(name: str, active: set[str] | frozenset[str], table: PhaseTable | None = None
                   ) -> tuple[str | None, str | None]:
    """(closes, opens) for the backward of the executor's phase `name`.

    The executor times backward phases as a chain: autograd runs the backward in reverse table
    order, so the backward of `name` ends the backward-timed phase that runs before it and begins
    the one that runs after it. `active` are the phases the executor's forward ran; None where
    there is no such neighbour.

    >>> backward_chain("dispatch_a2a", {"gate", "dispatch_a2a", "expert", "combine_a2a", "other"})
    ('expert', None)
    >>> backward_chain("combine_a2a", {"lsh_compress", "dispatch_a2a", "expert", "combine_a2a", "lsh_restore"})
    ('lsh_restore', 'expert')
    """
    table = PHASES if table is None else table
    chain = [n for n in reversed(list(table)) if n in active and "backward" in table[n].timed]
    if name not in chain:
        raise ValueError(f"phase {name!r} is not timed in the backward among {sorted(active)}")
    i = chain.index(name)
    return (chain[i - 1] if i > 0 else None), (chain[i + 1] if i + 1 < len(chain) else None)
