"""Validation: a measured Trace (from `executor run`) against the simulator's prediction of it.

The executor records, besides the timed phases, what it moved: the (W, W) bytes of the dispatch
all-to-all (`meta["measured"]["traffic_bytes"]`) and of the combine (`combine_traffic_bytes`),
and the workload (d_model, d_ffn, experts, dtype, all-to-all algorithm). The prediction uses
exactly those, so measurement and prediction differ only in the network and compute models: the
same simulator code runs on the recorded traffic.

The phases are those of the phase table (`lshsim.sim.phases.PHASES`), listed in table order. A
phase whose entry says `predicted` is predicted with the entry's own cost function, given a
`CostContext` built from the measured trace (the recorded matrices, the rows each rank's experts
received, no kernel-launch term). With the built-in table:

=================  =========  ===============================================================
phase              direction  prediction
=================  =========  ===============================================================
dispatch_a2a       forward    simulate_all_to_all(G, dispatch bytes, algorithm)
combine_a2a        forward    simulate_all_to_all(G, combine bytes)
dispatch_a2a       backward   the dispatch's gradient returns along the combine's matrix
combine_a2a        backward   the combine's gradient travels along the dispatch's matrix
expert             forward    roofline of the rank's expert FFNs on the rows it receives
                              (`lshsim.sim.phases.expert_cost`, `compute_time_s`), slowest rank
expert             backward   twice the forward FLOPs and bytes
=================  =========  ===============================================================

Other phases (gate, LSH, the split-size exchange) are listed with their measured time and no
prediction. Relative error = (predicted - measured) / measured.

The topology may have more GPUs than the trace's ranks: a single-node spec is rebuilt with
gpus_per_node = W (the calibration of a 4-GPU node applied to 2 of its GPUs).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lshsim.calibration.sources import trace_a2a_phases, trace_algorithm
from lshsim.sim.collectives import simulate_all_to_all
from lshsim.sim.phases import PHASES, CostContext
from lshsim.sim.trace import Trace, check_measured_meta
from lshsim.topology import build_topology, read_spec

__all__ = ["PhaseComparison", "Validation", "topology_for_trace", "default_topology", "validate_trace", "validate_trace_file",
           "measured_context", "a2a_errors", "plot_validations", "layer_errors", "phase_errors", "check_transport"]


@dataclass(frozen=True)
class PhaseComparison:
    """One (phase, direction): measured and predicted seconds; rel_error None without a prediction."""

    phase: str
    direction: str
    measured_s: float
    predicted_s: float | None

    @property
    def rel_error(self) -> float | None:
        if self.predicted_s is None or self.measured_s <= 0:
            return None
        return (self.predicted_s - self.measured_s) / self.measured_s

    def to_dict(self) -> dict:
        return {"phase": self.phase, "direction": self.direction, "measured_s": self.measured_s,
                "predicted_s": self.predicted_s, "rel_error": self.rel_error}


@dataclass(frozen=True)
class Validation:
    """The comparison of one measured trace: its name, ranks, topology and one row per phase."""

    name: str
    world_size: int
    topology: str
    rows: list[PhaseComparison]

    def to_dict(self) -> dict:
        return {"name": self.name, "world_size": self.world_size, "topology": self.topology,
                "rows": [row.to_dict() for row in self.rows]}


def default_topology(trace: Trace) -> str:
    """The datasheet topology of the trace's GPU (h100-nvswitch, h200-nvswitch, ...)."""
    gpu = str(trace.meta["cluster"].get("gpu") or "").lower()
    for key in ("h200", "h100", "a100"):
        if key in gpu:
            return f"{key}-nvswitch"
    raise ValueError(f"no default topology for the trace's GPU {gpu or 'None (a CPU run)'}; pass a topology "
                     f"(lshsim validate --topology NAME or FILE.yaml, e.g. a calibrated one)")


def topology_for_trace(topology: str | Path, world_size: int):
    """Build `topology` (a name or a YAML path) with exactly `world_size` GPUs."""
    spec, source = read_spec(topology)
    nodes, per_node = spec.get("nodes", 1), spec.get("gpus_per_node")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (nodes, per_node)):
        return build_topology(spec, source=source)      # refuses the field, naming the file and the value
    total = nodes * per_node
    if total != world_size:
        if nodes != 1 or world_size > total:
            raise ValueError(f"topology {source} has {total} GPUs; the trace has {world_size} ranks (only a single "
                             f"node can be cut down to fewer GPUs)")
        spec = copy.deepcopy(spec)
        spec["gpus_per_node"] = world_size
    return build_topology(spec, source=source)


def measured_context(trace: Trace, G) -> CostContext:
    """The `CostContext` of a measured trace on topology G (see `lshsim.sim.phases.CostContext`).

    dispatch_bytes / combine_bytes: the recorded (W, W) matrices of the forward all-to-alls, read
    by `lshsim.calibration.sources.trace_a2a_phases` (the reader calibration uses too);
    rows_received: the dispatch's received bytes / bytes per dispatched row (`dispatch_bytes_per_row`,
    which differs from bytes_per_token under the fp8 dispatch format); no kernel-launch term;
    network_s: the flow-level all-to-all on G with the workload's algorithm (`trace_algorithm`:
    groupwise, or direct; node_dedup as its two recorded stages in turn), cached by matrix.
    """
    measured = trace.meta["measured"]
    workload = trace.meta["workload"]
    world = int(workload["world_size"])
    algorithm = trace_algorithm(trace.meta)
    recorded = {(p.phase, p.direction): p.traffic for p in trace_a2a_phases(trace.meta, world)}  # (W, W) each
    dispatch, combine = recorded[("dispatch_a2a", "forward")], recorded[("combine_a2a", "forward")]
    cache: dict[bytes, float] = {}

    def a2a_time(matrix: np.ndarray) -> float:
        key = matrix.tobytes()
        if key not in cache:
            if algorithm == "node_dedup":
                # the executor's node_dedup records the wire bytes of its two stages, which run one
                # after the other: the network stage (between nodes, and each rank's own tokens)
                # then the forwarding inside nodes, each a direct all-to-all
                nodes = np.asarray(trace.meta["cluster"].get("ranks_per_node") or world)
                node_of = np.arange(world) // nodes
                inside = (node_of[:, None] == node_of[None, :]) & ~np.eye(world, dtype=bool)
                stages = (np.where(inside, 0, matrix), np.where(inside, matrix, 0))
                cache[key] = sum(float(simulate_all_to_all(G, part, "direct").time_s) for part in stages)
            else:
                cache[key] = float(simulate_all_to_all(G, matrix, algorithm).time_s)
        return cache[key]

    bytes_per_token = int(measured["bytes_per_token"])
    d_model = int(workload["d_model"])
    model = {"d_model": d_model, "d_ffn": int(workload["d_ffn"]), "num_experts": int(workload["num_experts"]),
             "bytes_per_element": bytes_per_token // d_model}
    return CostContext(world_size=world, gpu=G.graph["gpu"], kernel_launch_s=0.0, model=model,
                       experts_on_rank=model["num_experts"] // world, dispatch_bytes=dispatch, combine_bytes=combine,
                       rows_received=dispatch.sum(axis=0) / int(measured.get("dispatch_bytes_per_row", bytes_per_token)),
                       network_s=a2a_time)


#: the (W, W) matrix each all-to-all phase moves, by direction (the gradients travel transposed)
_A2A_MATRIX = {("dispatch_a2a", "forward"): "dispatch_bytes", ("dispatch_a2a", "backward"): "combine_bytes",
               ("combine_a2a", "forward"): "combine_bytes", ("combine_a2a", "backward"): "dispatch_bytes"}


def _phase_model_prediction(pm, ctx: CostContext, trace: Trace, phase: str, direction: str) -> float | None:
    """One phase's prediction with the topology's phase model, or None where it has none."""
    from lshsim.calibration.phase_model import workload_features

    measured, workload = trace.meta["measured"], trace.meta["workload"]
    world = ctx.world_size
    if (phase, direction) in _A2A_MATRIX:
        matrix = getattr(ctx, _A2A_MATRIX[(phase, direction)])
        return pm.a2a_s(ctx.network_s(matrix), matrix, "device")
    if phase == "expert":
        if pm.expert is None:
            return None
        d, f = ctx.model["d_model"], ctx.model["d_ffn"]
        per_rank = measured.get("rows_per_expert")
        if per_rank:
            loads = [(len(rows), float(np.mean(rows))) for rows in per_rank]
        else:
            loads = [(ctx.experts_on_rank, float(rows) / ctx.experts_on_rank) for rows in ctx.rows_received]
        return max(pm.expert.predict_s(e, r, d, f, direction) for e, r in loads)
    if phase == "other":
        if world == 1:
            return pm.exchange_single_s
        if pm.exchange_s is None:
            return None
        counts = np.full((world, world), ctx.experts_on_rank * 8.0)
        return pm.exchange_s + pm.a2a_s(ctx.network_s(counts), counts, "as_run")
    features = workload_features({**workload, "bytes_per_token": measured["bytes_per_token"]})
    return pm.kernel_s(phase, direction, features)


def check_transport(trace: Trace, G) -> None:
    """Refuse a trace measured over another NCCL transport than the topology's phase model was."""
    from lshsim.calibration.phase_model import transport_of_env

    pm = G.graph.get("phase_model")
    if pm is None or int(trace.meta["workload"]["world_size"]) < 2:
        return
    env = (trace.meta.get("provenance") or {}).get("nccl_env") or {}
    measured = transport_of_env(env)
    if measured != pm.transport:
        raise ValueError(f"the trace ran over NCCL transport {measured!r} (NCCL_P2P_DISABLE="
                         f"{env.get('NCCL_P2P_DISABLE', 'unset')}, NCCL_SHM_DISABLE={env.get('NCCL_SHM_DISABLE', 'unset')}) "
                         f"but topology {G.graph.get('name')} was calibrated over {pm.transport!r}; validate it "
                         f"against a topology calibrated over the same transport")


def validate_trace(trace: Trace, topology: str | Path | None = None) -> Validation:
    """Predict every phase of a measured trace; see the module docstring.

    Without a phase model in the topology: the phases the phase table marks `predicted`, by their
    cost functions. With one (`calibration.phase_model`, `lshsim.calibration.phase_model`): every
    phase it covers, and the whole layer as it runs (rows "layer", forward / backward / total, when
    the trace has the as-run layer times `measured.layer_s`).
    """
    if trace.meta.get("source") != "measured" or "measured" not in trace.meta:
        raise ValueError("validate needs a measured trace from executor run (meta['measured'] is missing)")
    check_measured_meta(trace.meta)   # Trace.from_json did it already; a trace built in memory is checked here
    measured = trace.meta["measured"]
    workload = trace.meta["workload"]
    world = int(workload["world_size"])
    topology = topology if topology is not None else default_topology(trace)
    G = topology_for_trace(topology, world)
    check_transport(trace, G)
    ctx = measured_context(trace, G)
    pm = G.graph.get("phase_model")
    out = []
    sums: dict[str, float | None] = {}
    for direction, phases in measured["phases_s"].items():
        total = 0.0
        for phase in sorted(phases, key=PHASES.index):
            spec = PHASES[phase]
            predicted = None
            if pm is not None:
                predicted = _phase_model_prediction(pm, ctx, trace, phase, direction)
            if predicted is None and spec.predicted and direction in spec.directions:
                predicted = float(np.max(spec.cost(ctx, direction, 1).seconds))
            out.append(PhaseComparison(phase, direction, float(phases[phase]), predicted))
            total = None if predicted is None or total is None else total + predicted
        sums[direction] = total
    layer = measured.get("layer_s")
    if pm is not None and layer:
        from lshsim.calibration.phase_model import workload_features

        features = workload_features({**workload, "bytes_per_token": measured["bytes_per_token"]})
        predicted_total = 0.0
        for direction in ("forward", "backward"):
            if direction not in sums or direction not in layer:
                continue
            glue = pm.kernel_s("glue", direction, features)
            base = sums[direction]
            predicted = None if base is None or glue is None else \
                base + glue + (pm.latency_as_run_s if direction == "forward" and world > 1 else 0.0)
            out.append(PhaseComparison("layer", direction, float(layer[direction]), predicted))
            predicted_total = None if predicted is None or predicted_total is None else predicted_total + predicted
        if "total" in layer and "forward" in sums:
            out.append(PhaseComparison("layer", "total", float(layer["total"]), predicted_total))
    return Validation(name=str(workload.get("name", "")), world_size=world, topology=str(G.graph.get("name", topology)),
                      rows=out)


def layer_errors(validations: list[Validation], direction: str = "total") -> np.ndarray:
    """Relative errors of the whole-layer predictions (rows "layer") in `direction`."""
    return np.asarray([row.rel_error for v in validations for row in v.rows
                       if row.phase == "layer" and row.direction == direction and row.rel_error is not None],
                      dtype=float)


def phase_errors(validations: list[Validation]) -> dict[str, np.ndarray]:
    """{"phase/direction": relative errors} of every predicted row, layer rows included."""
    out: dict[str, list[float]] = {}
    for v in validations:
        for row in v.rows:
            if row.rel_error is not None:
                out.setdefault(f"{row.phase}/{row.direction}", []).append(row.rel_error)
    return {key: np.asarray(values, dtype=float) for key, values in out.items()}


def validate_trace_file(path: str | Path, topology: str | Path | None = None) -> Validation:
    """`validate_trace` of the trace file `path`; every error about the trace names the file."""
    trace = Trace.from_json(path)                    # errors name the file already
    try:
        return validate_trace(trace, topology)
    except ValueError as error:
        text = str(error)
        if str(path) in text or Path(path).name in text:
            raise
        raise ValueError(f"{path}: {text}") from None


def a2a_errors(validations: list[Validation]) -> np.ndarray:
    """Relative errors of every predicted communication phase (the all-to-alls, forward and backward)."""
    communication = PHASES.names("communication")
    errors = [row.rel_error for v in validations for row in v.rows
              if row.phase in communication and row.rel_error is not None]
    return np.asarray(errors, dtype=float)


def validation_figure(validations: list[Validation]):
    """The figure of `plot_validations` (a matplotlib Figure, not saved): predicted against measured
    time of every predicted phase; the legend names only the phases and directions drawn."""
    # a figure of its own (no pyplot, no backend switch): a notebook's inline plots keep working
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = {"dispatch_a2a": "o", "combine_a2a": "s", "expert": "^", "gate": "v", "lsh_compress": "<",
               "lsh_restore": ">", "other": "d", "layer": "*"}
    colors = {2: "tab:blue", 4: "tab:orange", 8: "tab:green", 1: "tab:gray"}
    points, drawn, directions = [], [], set()
    for v in validations:
        for row in v.rows:
            if row.predicted_s is None or not (row.measured_s > 0 and row.predicted_s > 0):
                continue        # log axes: a phase predicted at 0 s (no bytes to move) has no place on them
            points.append((row.measured_s, row.predicted_s))
            if row.phase not in drawn:
                drawn.append(row.phase)
            directions.add(row.direction)
            ax.scatter(row.measured_s * 1e3, row.predicted_s * 1e3, marker=markers.get(row.phase, "x"),
                       color=colors.get(v.world_size, "tab:red"), alpha=0.75,
                       facecolors="none" if row.direction == "backward" else None)
    if not points:
        names = ", ".join(v.name for v in validations) or "no trace"
        raise ValueError(f"no predicted phase to plot: no phase of {names} has a predicted and a measured time > 0 "
                         f"(log axes)")
    low = min(min(p) for p in points) * 1e3 / 1.5
    high = max(max(p) for p in points) * 1e3 * 1.5
    line = np.geomspace(low, high, 50)
    ax.plot(line, line, color="black", lw=1)
    ax.fill_between(line, line * 0.85, line * 1.15, color="gray", alpha=0.15, label="within 15%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    for phase, marker in markers.items():
        if phase in drawn:
            ax.scatter([], [], marker=marker, color="black", label=phase)
    filled = sorted(directions - {"backward"}, key=lambda d: (d != "forward", d))   # forward, then a layer's total
    if filled:
        ax.scatter([], [], marker="o", color="black", label=" / ".join(filled) + " (filled)")
    if "backward" in directions:
        ax.scatter([], [], marker="o", facecolors="none", edgecolors="black", label="backward (hollow)")
    for world, color in colors.items():
        if any(v.world_size == world for v in validations):
            ax.scatter([], [], marker="o", color=color, label=f"{world} GPUs")
    errors = a2a_errors(validations)
    if errors.size:
        ax.set_title(f"all-to-all phases: median |error| {100 * np.median(np.abs(errors)):.1f}%, "
                     f"worst {100 * np.abs(errors).max():.1f}% ({errors.size} phases)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_validations(validations: list[Validation], path: str | Path) -> Path:
    """Predicted against measured time of every predicted phase (log-log, y = x and +-15% bands)."""
    fig = validation_figure(validations)
    path = Path(path)
    from lshsim.io import atomic_output

    suffix = path.suffix.lstrip(".").lower()       # the format follows the suffix, as every other --plot
    image_format = suffix if suffix in fig.canvas.get_supported_filetypes() else "png"
    with atomic_output(path, "wb") as handle:      # written whole: the old file or the new one
        fig.savefig(handle, format=image_format, dpi=120)
    return path

