"""The one trace schema: what the simulator predicts and what the executor measures.

A `Trace` is a flat list of `PhaseRecord`s (one timed interval of one phase on one rank) plus a
`meta` dict that says where it came from. Simulator (`lshsim.sim.moe_step`) and executor
(`lshsim.executor`) both write it, so `lshsim validate` can join a prediction and a measurement
phase by phase.

The known phase names are those of the phase table (`lshsim.sim.phases.PHASES`, re-exported here
as `PHASES`), in table order; a phase registered there is accepted here. The built-in ones:

=================  ==============================================================================
name               what the interval covers
=================  ==============================================================================
gate               router: gate logits, top-k, slot assignment (and the LocMoE GrAP gate)
lsh_compress       LSH-MoE: hash tokens, bucket per destination expert, centroids (sending rank)
dispatch_a2a       the dispatch all-to-all (tokens or centroids to the experts' ranks)
expert             the expert FFNs on the receiving rank
combine_a2a        the combine all-to-all (expert outputs back to the tokens' ranks)
lsh_restore        LSH-MoE: E(x) ~= E(c) + (x - c) residual restore on the token's rank
attention          non-MoE compute of a transformer layer: attention block (QKV, scores, out proj)
dense_ffn          non-MoE compute: the dense FFN of a layer that has no MoE
other              anything else a runner wants to time (simulator: the output head; executor:
                   the split-size exchange)
tp_attention       tensor parallel (simulator, TP > 1): the attention block's all-gather and
                   reduce-scatter; tp_dense_ffn, tp_shared_expert, tp_head: the same for the
                   dense FFN, the shared experts and the embedding / output layer
=================  ==============================================================================

Conventions:

* Times are seconds from the start of the trace (the first record may start after 0).
* `layer` is the transformer layer index (0-based), so the attention and the MoE records of one
  layer share it. `direction` is "forward" or "backward", one of the phase's `directions` in the
  table; the backward of a phase (e.g. the gradient all-to-all of dispatch) keeps the forward
  phase's name.
* `bytes` is the payload the phase moves (all-to-alls: off-diagonal bytes the rank *sends*;
  compute phases: 0 unless a runner records HBM traffic).
* A rank may hold several records of one (phase, layer, direction), e.g. the chunks of a
  pipelined (overlapped) expert computation.

`meta` keys (all required; `from_dict` / `from_json` refuse a trace without them):

* "source": "simulated" or "measured";
* "workload": dict (model, router, tokens per GPU, LSH rate, ...);
* "cluster": dict (topology name, GPUs, nodes, GPU kind, ...);
* "provenance": dict; a measured trace must say "gpu", "count", "torch", "nccl", "date",
  "command" (a value may be None, e.g. "nccl" on a gloo run, but the key must be there).

Export: `to_json` / `from_json` (this schema, exact round trip), `to_chrome_trace` (Chrome
trace-event JSON, opens in Perfetto / chrome://tracing), `rows` (a tidy list of dicts for seaborn).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lshsim import bounds
from lshsim.readers import load_json
from lshsim.sim.phases import DIRECTIONS, PHASES

__all__ = ["PHASES", "DIRECTIONS", "SOURCES", "MEASURED_PROVENANCE_KEYS", "SCHEMA", "PhaseRecord", "Trace",
           "check_measured_meta"]

SOURCES = ("simulated", "measured")
MEASURED_PROVENANCE_KEYS = ("gpu", "count", "torch", "nccl", "date", "command")
META_KEYS = ("source", "workload", "cluster", "provenance")
SCHEMA = "lshsim.trace/1"


def _is_int(value: object) -> bool:
    if type(value) is int:          # the common case first (a simulated step makes ~10^5 records)
        return True
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class PhaseRecord:
    """One timed interval: phase `name` on `rank`, from `start_s` to `end_s` (seconds).

    bytes: payload moved by the phase on this rank (see module docstring), >= 0.
    layer: transformer layer index, >= 0. direction: "forward" or "backward".
    """

    name: str
    rank: int
    start_s: float
    end_s: float
    bytes: int = 0
    layer: int = 0
    direction: str = "forward"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in PHASES:   # a list or a mapping: no TypeError
            raise ValueError(f"name={self.name!r} is not a known phase; known: {list(PHASES)}")
        if not _is_int(self.rank) or self.rank < 0:
            raise ValueError(f"rank={self.rank!r} must be a non-negative integer")
        if not _is_real(self.start_s) or not _is_real(self.end_s):
            raise ValueError(f"start_s={self.start_s!r} and end_s={self.end_s!r} must be finite numbers")
        if self.end_s < self.start_s:
            raise ValueError(f"end_s={self.end_s!r} is before start_s={self.start_s!r} ({self.name}, rank {self.rank})")
        if not _is_int(self.bytes) or self.bytes < 0:
            raise ValueError(f"bytes={self.bytes!r} must be a non-negative integer")
        if not _is_int(self.layer) or self.layer < 0:
            raise ValueError(f"layer={self.layer!r} must be a non-negative integer")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction={self.direction!r} must be one of {list(DIRECTIONS)}")
        if self.direction not in PHASES[self.name].directions:
            raise ValueError(f"phase {self.name!r} has no {self.direction} pass (its directions: "
                             f"{list(PHASES[self.name].directions)})")

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict:
        return {"name": self.name, "rank": self.rank, "start_s": self.start_s, "end_s": self.end_s,
                "bytes": self.bytes, "layer": self.layer, "direction": self.direction}

    @staticmethod
    def from_dict(data: dict) -> "PhaseRecord":
        if not isinstance(data, dict):
            raise ValueError(f"a phase record must be a dict, got {type(data).__name__}")
        for key in ("name", "rank", "start_s", "end_s"):
            if key not in data:
                raise ValueError(f"phase record lacks the field {key!r}: {data}")
        unknown = set(data) - {"name", "rank", "start_s", "end_s", "bytes", "layer", "direction"}
        if unknown:
            raise ValueError(f"phase record has unknown fields {sorted(unknown)}")
        return PhaseRecord(name=data["name"], rank=data["rank"], start_s=data["start_s"], end_s=data["end_s"],
                           bytes=data.get("bytes", 0), layer=data.get("layer", 0),
                           direction=data.get("direction", "forward"))


def _check_meta(meta: object) -> None:
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    for key in META_KEYS:
        if key not in meta:
            raise ValueError(f"meta lacks the field {key!r} (required: {list(META_KEYS)})")
    if meta["source"] not in SOURCES:
        raise ValueError(f"meta['source']={meta['source']!r} must be one of {list(SOURCES)}")
    for key in ("workload", "cluster", "provenance"):
        if not isinstance(meta[key], dict):
            raise ValueError(f"meta[{key!r}] must be a dict, got {type(meta[key]).__name__}")
    if meta["source"] == "measured":
        missing = [key for key in MEASURED_PROVENANCE_KEYS if key not in meta["provenance"]]
        if missing:
            raise ValueError(f"meta['provenance'] of a measured trace lacks the fields {missing} "
                             f"(required: {list(MEASURED_PROVENANCE_KEYS)})")


#: plausible range of a trace's ranks (the sizes the executor can run; a larger value is corrupt)
MAX_WORLD_SIZE = int(bounds.maximum("gpus"))       # 2^20, lshsim.bounds


def _meta_fail(field: str, value, why: str) -> ValueError:
    text = repr(value)
    return ValueError(f"{field}={text if len(text) <= 80 else text[:77] + '...'} {why}")


def _meta_int(block: dict, prefix: str, key: str, maximum: int | None = None) -> int:
    if key not in block:
        raise ValueError(f"{prefix}.{key} is missing (a measured trace of executor run has it)")
    value = block[key]
    if not _is_int(value) or value < 1:
        raise _meta_fail(f"{prefix}.{key}", value, "must be a positive integer")
    if maximum is not None and value > maximum:
        raise _meta_fail(f"{prefix}.{key}", value, f"must be <= {maximum}")
    return value


def check_measured_meta(meta: dict) -> None:
    """Refuse a measured trace's meta that `lshsim validate` and the calibration from traces cannot
    use, naming the field and the value (a ValueError; `Trace.from_json` adds the file's name):
    meta.workload.world_size, d_model, d_ffn and num_experts positive integers (tokens_per_rank too, where
    given); meta.measured:
    bytes_per_token a positive integer, d_model times 1, 2, 4 or 8 bytes; phases_s a mapping of
    direction -> {phase: seconds}, every time a finite number > 0 and at most an hour
    (`lshsim.calibration.sources.MAX_MEASURED_S`; a negative, zero or NaN time is refused, never
    dropped from the statistics); traffic_bytes and combine_traffic_bytes (W, W) matrices of finite
    bytes >= 0; workload.skew, if given, finite and >= 0. Where given (`validate` reads them):
    dispatch_bytes_per_row a positive integer; layer_s a mapping (or null) with forward and backward
    (and total, where given) measured times as above; rows_per_expert (or null) W lists of num_experts / W
    integers >= 0, each rank's sum at most the rows its dispatch received (its column of
    traffic_bytes over the bytes per row).

    A meta without a "measured" block (a simulated trace) is not checked here.
    """
    measured = meta.get("measured")
    if measured is None:
        return
    if not isinstance(measured, dict):
        raise _meta_fail("meta.measured", measured, "must be a mapping")
    workload = meta["workload"]
    world = _meta_int(workload, "meta.workload", "world_size", MAX_WORLD_SIZE)
    d_model = _meta_int(workload, "meta.workload", "d_model")
    for key in ("d_ffn", "num_experts"):
        _meta_int(workload, "meta.workload", key)
    if "tokens_per_rank" in workload:   # the phase model's features (executor run writes it; -1 was accepted)
        _meta_int(workload, "meta.workload", "tokens_per_rank")
    skew = workload.get("skew")
    if skew is not None and (not _is_real(skew) or skew < 0):
        raise _meta_fail("meta.workload.skew", skew, "must be a finite number >= 0 or null")
    per_token = _meta_int(measured, "meta.measured", "bytes_per_token")
    if per_token % d_model or per_token // d_model not in (1, 2, 4, 8):
        raise _meta_fail("meta.measured.bytes_per_token", per_token,
                         f"must be d_model={d_model} times 1, 2, 4 or 8 bytes per element")
    from lshsim.calibration.sources import MAX_MEASURED_S   # lazily: lshsim.calibration imports lshsim.sim

    def seconds_ok(value) -> bool:
        return _is_real(value) and 0 < value <= MAX_MEASURED_S

    measured_time = f"must be a finite number of seconds > 0 and <= {MAX_MEASURED_S:g} (a measured time)"
    phases_s = measured.get("phases_s")
    if not isinstance(phases_s, dict):
        raise _meta_fail("meta.measured.phases_s", phases_s, "must be a mapping of direction -> {phase: seconds}")
    for direction, phases in phases_s.items():
        if direction not in DIRECTIONS:
            raise _meta_fail("meta.measured.phases_s", direction, f"is not a direction; known: {list(DIRECTIONS)}")
        if not isinstance(phases, dict):
            raise _meta_fail(f"meta.measured.phases_s.{direction}", phases, "must be a mapping of phase -> seconds")
        for phase, seconds in phases.items():
            if phase not in PHASES:
                raise _meta_fail(f"meta.measured.phases_s.{direction}", phase,
                                 f"is not a known phase; known: {list(PHASES)}")
            if not seconds_ok(seconds):
                raise _meta_fail(f"meta.measured.phases_s.{direction}.{phase}", seconds, measured_time)
    from lshsim.sim.traffic import check_matrix

    matrices = {}
    for key in ("traffic_bytes", "combine_traffic_bytes"):
        if key not in measured:
            raise ValueError(f"meta.measured.{key} is missing (a measured trace of executor run has it)")
        matrices[key] = check_matrix(measured[key], world, source="meta.measured", field=key)
    # what validate reads besides (a traceback or a silent garbage prediction before)
    per_row = per_token
    if "dispatch_bytes_per_row" in measured:
        per_row = _meta_int(measured, "meta.measured", "dispatch_bytes_per_row")
    layer = measured.get("layer_s")
    if layer is not None:
        if not isinstance(layer, dict):
            raise _meta_fail("meta.measured.layer_s", layer, "must be a mapping of forward, backward and total "
                                                             "seconds, or null")
        for key in ("forward", "backward", "total"):
            if key not in layer and key != "total":   # executor run writes both (and the total)
                raise ValueError(f"meta.measured.layer_s.{key} is missing (layer_s={_short(layer)})")
            if key in layer and not seconds_ok(layer[key]):
                raise _meta_fail(f"meta.measured.layer_s.{key}", layer[key], measured_time)
    rows = measured.get("rows_per_expert")
    if rows is not None:
        _check_rows_per_expert(rows, world, workload["num_experts"], matrices["traffic_bytes"].sum(axis=0) / per_row,
                               per_row)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_rows_per_expert(rows, world: int, experts: int, received, per_row: int) -> None:
    """meta.measured.rows_per_expert: per rank, the rows each of its experts computed."""
    field = "meta.measured.rows_per_expert"
    local = experts // world if experts % world == 0 else None
    if not isinstance(rows, list) or len(rows) != world:
        raise _meta_fail(field, rows, f"must be a list of the {world} ranks' rows per local expert, or null")
    for rank, counts in enumerate(rows):
        where = f"{field}[{rank}]"
        if not isinstance(counts, list) or not counts or (local is not None and len(counts) != local):
            raise _meta_fail(where, counts, f"must be a list of {local or 'the'} local experts' row counts"
                                            + (f" (num_experts {experts} / {world} ranks)" if local else ""))
        for index, value in enumerate(counts):
            if not _is_int(value) or value < 0:
                raise _meta_fail(f"{where}[{index}]", value, "must be an integer >= 0 (rows)")
        if sum(counts) > received[rank] * (1 + 1e-9) + 1e-6:
            raise _meta_fail(where, counts, f"adds up to {sum(counts)} rows, more than the {received[rank]:.0f} "
                                            f"rows rank {rank} received (its traffic_bytes column / {per_row} bytes per "
                                            f"row: dispatch_bytes_per_row, else bytes_per_token)")


@dataclass
class Trace:
    """Phase records of one step (or several) plus where they came from (`meta`, validated)."""

    phases: list[PhaseRecord] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index, record in enumerate(self.phases):
            if not isinstance(record, PhaseRecord):
                raise ValueError(f"phases[{index}] is a {type(record).__name__}, expected PhaseRecord")
        _check_meta(self.meta)
        workload = self.meta.get("workload") if isinstance(self.meta, dict) else None
        world = workload.get("world_size") if isinstance(workload, dict) else None
        if isinstance(world, int) and not isinstance(world, bool) and world > 0:
            for index, record in enumerate(self.phases):   # a record of a rank the run did not have
                if record.rank >= world:
                    raise ValueError(f"phases[{index}]: rank={record.rank} must be < meta.workload.world_size={world}")

    # ---- queries -----------------------------------------------------------------------------
    @property
    def num_ranks(self) -> int:
        return 1 + max((record.rank for record in self.phases), default=-1)

    def select(self, name: str | None = None, direction: str | None = None, layer: int | None = None,
               rank: int | None = None) -> list[PhaseRecord]:
        """Records matching every given filter."""
        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r} must be one of {list(DIRECTIONS)} or None")
        if name is not None and name not in PHASES:
            raise ValueError(f"name={name!r} is not a known phase; known: {list(PHASES)}")
        return [r for r in self.phases
                if (name is None or r.name == name) and (direction is None or r.direction == direction)
                and (layer is None or r.layer == layer) and (rank is None or r.rank == rank)]

    def phase_durations_s(self, direction: str | None = None) -> dict[str, float]:
        """Time per phase name, summed over its instances.

        An instance is one (layer, direction) of the phase. Its time is the slowest rank's:
        max over ranks r of sum_{records of r in the instance} (end_s - start_s). The phase's time
        is the sum over its instances (restricted to `direction` if given). This is what a
        synchronous collective or a straggler costs every rank; with overlap, phases overlap in
        wall time, so the values can add up to more than `total_time_s()`.
        Phases absent from the trace are absent from the dict; the order follows `PHASES`.
        """
        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r} must be one of {list(DIRECTIONS)} or None")
        per_rank: dict[tuple[str, int, str, int], float] = {}
        for record in self.phases:
            if direction is not None and record.direction != direction:
                continue
            key = (record.name, record.layer, record.direction, record.rank)
            per_rank[key] = per_rank.get(key, 0.0) + record.duration_s
        per_instance: dict[tuple[str, int, str], float] = {}
        for (name, layer, dirn, _rank), seconds in per_rank.items():
            instance = (name, layer, dirn)
            per_instance[instance] = max(per_instance.get(instance, 0.0), seconds)
        totals: dict[str, float] = {}
        for (name, _layer, _dirn), seconds in per_instance.items():
            totals[name] = totals.get(name, 0.0) + seconds
        return {name: totals[name] for name in PHASES if name in totals}

    def phase_bytes(self, direction: str | None = None) -> dict[str, int]:
        """Bytes per phase name, summed over all records (every rank, layer, direction)."""
        totals: dict[str, int] = {}
        for record in self.phases:
            if direction is None or record.direction == direction:
                totals[record.name] = totals.get(record.name, 0) + record.bytes
        return {name: totals[name] for name in PHASES if name in totals}

    def total_time_s(self, direction: str | None = None) -> float:
        """Wall time: last end minus first start over all ranks (0 for an empty trace)."""
        records = self.select(direction=direction)
        if not records:
            return 0.0
        return max(r.end_s for r in records) - min(r.start_s for r in records)

    def rows(self) -> list[dict]:
        """Tidy rows, one per record: the record's fields plus duration_s and the trace's source."""
        source = self.meta["source"]
        return [{**record.to_dict(), "duration_s": record.duration_s, "source": source} for record in self.phases]

    # ---- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "meta": self.meta, "phases": [record.to_dict() for record in self.phases]}

    @staticmethod
    def from_dict(data: dict) -> "Trace":
        """Rebuild a trace, validating it; ValueError names the field that is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a trace must be a dict, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema={data.get('schema')!r}: expected {SCHEMA!r}")
        for key in ("meta", "phases"):
            if key not in data:
                raise ValueError(f"trace lacks the field {key!r}")
        if not isinstance(data["phases"], list):
            raise ValueError(f"phases must be a list, got {type(data['phases']).__name__}")
        records = []
        for index, item in enumerate(data["phases"]):
            try:
                records.append(PhaseRecord.from_dict(item))
            except ValueError as error:
                raise ValueError(f"phases[{index}]: {error}") from None
        trace = Trace(phases=records, meta=data["meta"])
        if trace.meta["source"] == "measured":
            check_measured_meta(trace.meta)
        return trace

    def to_json(self, path: str | Path) -> None:
        from lshsim.io import write_text_atomically

        write_text_atomically(path, json.dumps(self.to_dict(), indent=1) + "\n")      # whole or not at all

    @staticmethod
    def from_json(path: str | Path) -> "Trace":
        """Read and validate a trace file; every error is one line naming the file (a missing or
        empty file, invalid JSON, a key given twice, a field of the schema or of a measured trace's
        meta: `check_measured_meta`)."""
        data = load_json(path, what="trace file")
        try:
            return Trace.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def to_chrome_trace_dict(self) -> dict:
        """Chrome trace-event format: one complete ("X") event per record.

        ts and dur in microseconds; pid = rank, tid = the phase's index in `PHASES`, with
        "process_name" / "thread_name" metadata ("M") events so that viewers show "rank 3" and
        "dispatch_a2a". Opens in https://ui.perfetto.dev and chrome://tracing.
        """
        events: list[dict] = []
        for rank in sorted({record.rank for record in self.phases}):
            events.append({"name": "process_name", "ph": "M", "pid": rank, "tid": 0,
                           "args": {"name": f"rank {rank}"}})
            events.append({"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0,
                           "args": {"sort_index": rank}})
            for name in sorted({r.name for r in self.phases if r.rank == rank}, key=PHASES.index):
                events.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": PHASES.index(name),
                               "args": {"name": name}})
        for record in self.phases:
            events.append({"name": record.name, "cat": record.direction, "ph": "X",
                           "ts": record.start_s * 1e6, "dur": record.duration_s * 1e6,
                           "pid": record.rank, "tid": PHASES.index(record.name),
                           "args": {"layer": record.layer, "bytes": record.bytes, "direction": record.direction}})
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"schema": SCHEMA, "source": self.meta["source"]}}

    def to_chrome_trace(self, path: str | Path) -> None:
        from lshsim.io import write_text_atomically

        write_text_atomically(path, json.dumps(self.to_chrome_trace_dict()) + "\n")
