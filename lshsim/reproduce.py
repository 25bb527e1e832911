"""Published figures against the planner's predictions (`lshsim reproduce`).

A figures file (`data/papers/figures.yaml`) lists the numbers two papers publish (LSH-MoE, Nie et
al., NeurIPS 2024; LocMoE, Li et al., IJCAI 2024): for each, the quantity, the published value
(and range), the model and cluster, the step measured (`setting`) and the step it is compared
with (`baseline`), what the paper leaves unsaid (`assumed`) and the source. The figures are a
held-out test set for `compare`: nothing is fitted on them there. `fit` (`lshsim reproduce
--fit`) is the one exception and says so: it fits one (GEMM, all-to-all) efficiency pair per cluster
on that cluster's figures, with leave-one-out, as a consistency check, never as a shipped calibration.

How a figure is predicted:

1. the model comes from the caller (`resolve_model(name)`, e.g. `lshsim.models.load_model`: the
   simulator layer takes models by duck typing and never imports the catalog); a figure's `top_k`
   replaces the model's (`dataclasses.replace`);
2. the cluster is a topology spec (`lshsim.topology.spec.read_spec`) with the figure's
   `cluster_edits` applied in memory, built once per distinct spec;
3. the experts are placed as `lshsim plan` places them (`placement_for`); a model whose experts do
   not place on the cluster is reported as not plannable, with the placement's reason;
4. the synthetic tokens are routed once per (model, placement, routing key) (`route_traffic`), and
   each distinct step is simulated once (`simulate_config`) with one `A2ACache` per cluster, at
   `lshsim plan`'s fidelity (exact up to `AUTO_EXACT_MAX_GPUS` GPUs, drain tolerance above, unless
   the caller fixes one);
5. the quantity is computed from the steps' breakdowns and compared:
   relative error = (predicted - published) / published.

The LSH-MoE consistency check: if LSH-MoE shrank only the all-to-all, by the compression rate r,
a speedup S would imply an all-to-all share of (1 - 1/S) / (1 - r) (`implied_a2a_share`).
`consistency` sets that against the paper's Fig. 3 share of the same model and against the
planner's own share, and says which of the paper's two numbers the planner follows.

`sweep` moves one unknown at a time (tokens per GPU, the NIC line rate, the GEMM efficiency) and
reports how far each moves each prediction.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lshsim import bounds as _bounds   # (a figure's `range` is read into a local `bounds`)
from lshsim.readers import load_yaml

__all__ = ["QUANTITIES", "RELATIVE_QUANTITIES", "SETTING_FIELDS", "WITHIN", "Paper", "Figure", "FigureSet",
           "FigureResult", "figures_path", "load_figures", "figures_from_dict", "check_references", "select",
           "relative_error", "implied_a2a_share", "Planner", "predict", "summarize", "consistency", "sweep",
           "apply_edits", "algorithm_check", "SWEEP_VARIANTS", "NotPlannable", "FIT_FIELDS", "FIT_GRID",
           "cluster_group", "best_point", "fit", "fit_summary"]

#: the quantities a figure may publish
QUANTITIES = ("a2a_share", "speedup", "step_reduction", "a2a_reduction")
#: the quantities that compare `setting` with `baseline`
RELATIVE_QUANTITIES = ("speedup", "step_reduction", "a2a_reduction")
#: the keys of a figure's `setting` and `baseline`: StepConfig fields, and top_k (the model's)
SETTING_FIELDS = ("router", "router_options", "lsh_rate", "algorithm", "overlap", "capacity_factor", "locality_bonus",
                  "locality_share", "tokens_per_gpu", "ep", "moe_layer", "grad_sync", "grad_bytes_per_element",
                  "overlap_chunks", "tp", "tp_layout", "top_k")
#: the tolerance the summary counts against (|relative error| <= WITHIN)
WITHIN = 0.15

_FIGURE_FIELDS = {"id", "paper", "quantity", "value", "range", "per_task", "approximate", "model", "stand_in",
                  "cluster", "cluster_edits", "setting", "baseline", "assumed", "source", "note"}
_REQUIRED = ("id", "paper", "quantity", "value", "model", "cluster", "setting", "source")
_PAPER_FIELDS = ("title", "authors", "venue", "arxiv")
_SOURCE_FIELDS = ("paper", "where", "arxiv")


# ---- the figures file ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Paper:
    key: str
    title: str
    authors: str
    venue: str
    arxiv: str


@dataclass(frozen=True)
class Figure:
    """One published number (see the schema at the top of data/papers/figures.yaml).

    value: the published number (a fraction for shares and reductions); range: (low, high) or None;
    setting / baseline: {SETTING_FIELDS: value} (baseline None for a2a_share); cluster_edits:
    {dotted.field: value} applied to the topology spec in memory.
    """

    id: str
    paper: str
    quantity: str
    value: float
    model: str
    cluster: str
    setting: dict
    source: dict
    baseline: dict | None = None
    range: tuple[float, float] | None = None
    per_task: dict = field(default_factory=dict)
    approximate: bool = False
    stand_in: str | None = None
    cluster_edits: dict = field(default_factory=dict)
    assumed: dict = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["range"] = list(self.range) if self.range is not None else None
        return out


@dataclass(frozen=True)
class FigureSet:
    papers: dict
    figures: tuple
    source: str

    def by_id(self, figure_id: str) -> Figure:
        for figure in self.figures:
            if figure.id == figure_id:
                return figure
        raise ValueError(f"{self.source}: no figure {figure_id!r}")


def figures_path() -> Path:
    """The shipped figures file: <repo>/data/papers/figures.yaml (source checkout, editable install),
    else <prefix>/share/lshsim/papers/figures.yaml."""
    candidates = [Path(__file__).resolve().parents[1] / "data" / "papers" / "figures.yaml",
                  Path(sys.prefix) / "share" / "lshsim" / "papers" / "figures.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    return candidates[0]


def _text(where: str, name: str, value, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ValueError(f"{where}: {name}={value!r} must be {'text' if empty else 'non-empty text'}")
    return value


def _number(where: str, name: str, value, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"{where}: {name}={value!r} must be a finite number{' > 0' if positive else ''}")
    return float(value)


def _mapping(where: str, name: str, value) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {name}={value!r} must be a mapping")
    return value


def _setting(where: str, name: str, value) -> dict:
    from lshsim.sim.moe_step import StepConfig

    value = _mapping(where, name, value)
    unknown = sorted(set(value) - set(SETTING_FIELDS), key=str)
    if unknown:
        raise ValueError(f"{where}: {name}.{unknown[0]} is not a setting; known: {', '.join(SETTING_FIELDS)}")
    if "top_k" in value and (isinstance(value["top_k"], bool) or not isinstance(value["top_k"], int)
                             or value["top_k"] < 1):
        raise ValueError(f"{where}: {name}.top_k={value['top_k']!r} must be a positive integer")
    if "top_k" in value:
        _bounds.check("experts", f"{name}.top_k", value["top_k"], where)
    try:
        StepConfig(**{k: v for k, v in value.items() if k != "top_k"})
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {name}: {error}") from None
    return dict(value)


def _figure(index: int, raw, papers: dict, source: str) -> Figure:
    where = f"{source}: figures[{index}]"
    raw = _mapping(source, f"figures[{index}]", raw)
    if isinstance(raw.get("id"), str):
        where += f" ({raw['id']})"
    unknown = sorted(set(raw) - _FIGURE_FIELDS, key=str)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(_FIGURE_FIELDS))}")
    for name in _REQUIRED:
        if name not in raw:
            raise ValueError(f"{where}: the field {name!r} is missing")
    out = {"id": _text(where, "id", raw["id"]), "model": _text(where, "model", raw["model"]),
           "cluster": _text(where, "cluster", raw["cluster"])}
    if not isinstance(raw["paper"], str) or raw["paper"] not in papers:    # a list: unhashable (a traceback)
        raise ValueError(f"{where}: paper={raw['paper']!r} is not a key of papers ({', '.join(papers)})")
    out["paper"] = raw["paper"]
    if not isinstance(raw["quantity"], str) or raw["quantity"] not in QUANTITIES:
        raise ValueError(f"{where}: quantity={raw['quantity']!r} must be one of {', '.join(QUANTITIES)}")
    quantity = out["quantity"] = raw["quantity"]
    value = out["value"] = _number(where, "value", raw["value"])
    if quantity == "speedup":
        _bounds.check("speedup", "value", value, where)        # lshsim.bounds: 1000x
    if quantity != "speedup" and value >= 1:
        raise ValueError(f"{where}: value={raw['value']!r} must be a fraction below 1 for {quantity} (0.3 = 30%)")
    if raw.get("range") is not None:
        bounds = raw["range"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ValueError(f"{where}: range={bounds!r} must be [low, high]")
        low, high = (_number(where, "range", b) for b in bounds)
        if quantity == "speedup":
            _bounds.check("speedup", "range", high, where)
        if not low <= value <= high:
            raise ValueError(f"{where}: range={bounds!r} must hold value={value!r} (low <= value <= high)")
        out["range"] = (low, high)
    if raw.get("per_task") is not None:
        tasks = _mapping(where, "per_task", raw["per_task"])
        numbers = [_number(where, f"per_task.{task}", v) for task, v in tasks.items()]
        if not numbers or abs(statistics.mean(numbers) - value) > 5e-4 + 1e-9:
            raise ValueError(f"{where}: value={value!r} must be the mean of per_task "
                             f"({statistics.mean(numbers) if numbers else 'none'!s})")
        out["per_task"] = dict(tasks)
    if "approximate" in raw:
        if not isinstance(raw["approximate"], bool):
            raise ValueError(f"{where}: approximate={raw['approximate']!r} must be true or false")
        out["approximate"] = raw["approximate"]
    if raw.get("stand_in") is not None:
        out["stand_in"] = _text(where, "stand_in", raw["stand_in"])
    out["setting"] = _setting(where, "setting", raw["setting"])
    if quantity in RELATIVE_QUANTITIES:
        if raw.get("baseline") is None:
            raise ValueError(f"{where}: quantity {quantity} needs a baseline (the step it is compared with)")
        out["baseline"] = _setting(where, "baseline", raw["baseline"])
    elif raw.get("baseline") is not None:
        raise ValueError(f"{where}: baseline is given, but quantity {quantity} compares nothing")
    edits = _mapping(where, "cluster_edits", raw.get("cluster_edits") or {})
    for key in edits:
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: cluster_edits key {key!r} must be a dotted field name (inter.nic_gbps)")
        _bounds.check_field(f"cluster_edits.{key}", edits[key], where)     # nodes, inter.nic_gbps: lshsim.bounds
    out["cluster_edits"] = dict(edits)
    assumed = _mapping(where, "assumed", raw.get("assumed") or {})
    for key, reason in assumed.items():
        _text(where, f"assumed.{key}", reason)
    out["assumed"] = dict(assumed)
    src = _mapping(where, "source", raw["source"])
    for name in _SOURCE_FIELDS:
        _text(where, f"source.{name}", src.get(name))
    if src["paper"] != out["paper"]:
        raise ValueError(f"{where}: source.paper={src['paper']!r} differs from paper={out['paper']!r}")
    if src["arxiv"] != papers[out["paper"]].arxiv:
        raise ValueError(f"{where}: source.arxiv={src['arxiv']!r} differs from the paper's "
                         f"{papers[out['paper']].arxiv!r}")
    out["source"] = dict(src)
    if raw.get("note") is not None:
        out["note"] = _text(where, "note", raw["note"], empty=True)
    return Figure(**out)


def figures_from_dict(data, source: str = "figures") -> FigureSet:
    """Validate a figures document (the parsed YAML); a ValueError names the figure and the field."""
    data = _mapping(source, "the top level", data)
    unknown = sorted(set(data) - {"papers", "figures"}, key=str)
    if unknown:
        raise ValueError(f"{source}: unknown top-level field {unknown[0]!r}; known: papers, figures")
    papers = {}
    for key, raw in _mapping(source, "papers", data.get("papers")).items():
        raw = _mapping(source, f"papers.{key}", raw)
        extra = sorted(set(raw) - set(_PAPER_FIELDS), key=str)
        if extra:
            raise ValueError(f"{source}: papers.{key}: unknown field {extra[0]!r}; known: {', '.join(_PAPER_FIELDS)}")
        papers[key] = Paper(key, *(_text(source, f"papers.{key}.{name}", raw.get(name)) for name in _PAPER_FIELDS))
    raw_figures = data.get("figures")
    if not isinstance(raw_figures, list) or not raw_figures:
        raise ValueError(f"{source}: figures={raw_figures!r} must be a non-empty list")
    figures = tuple(_figure(i, raw, papers, source) for i, raw in enumerate(raw_figures))
    seen: set = set()
    for figure in figures:
        if figure.id in seen:
            raise ValueError(f"{source}: the figure id {figure.id!r} is given twice")
        seen.add(figure.id)
    return FigureSet(papers=papers, figures=figures, source=source)


def load_figures(path: str | Path | None = None) -> FigureSet:
    """Read and validate a figures file (default: the shipped `figures_path()`)."""
    path = Path(path) if path is not None else figures_path()
    return figures_from_dict(load_yaml(path, source=path.name, what="figures file"), source=path.name)


def check_references(figure_set: FigureSet, models: list[str], topologies: list[str]) -> None:
    """Every figure's model is one of `models` (or a YAML file that exists) and its cluster one of
    `topologies` (or a YAML file), and its cluster with its `cluster_edits` builds; ValueError naming
    the figure and the field otherwise."""
    for figure in figure_set.figures:
        where = f"{figure_set.source}: {figure.id}"
        for name, value, known in (("model", figure.model, models), ("cluster", figure.cluster, topologies)):
            if value in known:
                continue
            if value.endswith((".yaml", ".yml")) and Path(value).is_file():
                continue
            raise ValueError(f"{where}: {name}={value!r} is not in the catalog; known: {', '.join(sorted(known))}")
    from lshsim.topology import build_topology
    from lshsim.topology.spec import read_spec

    checked = set()
    for figure in figure_set.figures:    # the edited clusters, built before any prediction: an error names the figure
        key = (figure.cluster, json.dumps(figure.cluster_edits, sort_keys=True, default=str))
        if not figure.cluster_edits or key in checked:
            continue
        checked.add(key)
        try:
            spec, source = read_spec(figure.cluster)
            build_topology(apply_edits(spec, figure.cluster_edits, source), source=source)
        except ValueError as error:
            raise ValueError(f"{figure_set.source}: {figure.id}: cluster_edits {figure.cluster_edits}: {error}") from None


def select(figure_set: FigureSet, paper: str = "all") -> list[Figure]:
    """The figures of one paper (a key of `papers`), or all of them."""
    if paper == "all":
        return list(figure_set.figures)
    if paper not in figure_set.papers:
        raise ValueError(f"paper {paper!r} is unknown; known: {', '.join(figure_set.papers)}, all")
    return [f for f in figure_set.figures if f.paper == paper]


# ---- arithmetic ---------------------------------------------------------------------------------
def relative_error(predicted: float, published: float) -> float:
    """(predicted - published) / published.

    >>> round(relative_error(0.45, 0.30), 6), round(relative_error(1.2, 1.6), 6)
    (0.5, -0.25)
    """
    published = float(published)
    if not math.isfinite(published) or published == 0:
        raise ValueError(f"published={published!r} must be a finite, non-zero number (a relative error divides by it)")
    return (float(predicted) - published) / published


def implied_a2a_share(speedup: float, rate: float) -> float:
    """The all-to-all share of the step that a speedup S at compression rate r implies when only the
    all-to-all shrinks (to r times its time): 1 - 1/S = share (1 - r), so share = (1 - 1/S) / (1 - r).

    >>> round(implied_a2a_share(1.28, 0.117), 4), round(implied_a2a_share(1.3, 0.2), 4)
    (0.2477, 0.2885)
    """
    if isinstance(speedup, bool) or not math.isfinite(speedup) or speedup <= 0:
        raise ValueError(f"speedup={speedup!r} must be a finite number > 0")
    if isinstance(rate, bool) or not math.isfinite(rate) or not 0 <= rate < 1:
        raise ValueError(f"rate={rate!r} must be in [0, 1)")
    return (1.0 - 1.0 / speedup) / (1.0 - rate)


# ---- clusters -----------------------------------------------------------------------------------
def apply_edits(spec: dict, edits: dict, source: str = "topology") -> dict:
    """A deep copy of a topology spec with {dotted.field: value} edits; an edit of a field the spec
    does not have is refused, naming it.

    >>> apply_edits({"nodes": 4, "inter": {"nic_gbps": 100}}, {"nodes": 2, "inter.nic_gbps": 50})
    {'nodes': 2, 'inter': {'nic_gbps': 50}}
    """
    out = copy.deepcopy(spec)
    for path, value in edits.items():
        keys = path.split(".")
        block = out
        for depth, key in enumerate(keys):
            if not isinstance(block, dict) or key not in block:
                raise ValueError(f"{source}: cluster_edits {path!r}: the spec has no field "
                                 f"{'.'.join(keys[:depth + 1])!r}")
            if depth == len(keys) - 1:
                block[key] = value
            else:
                block = block[key]
    return out


def _edits_key(edits: dict) -> str:
    return json.dumps(edits, sort_keys=True)


def _cluster_label(name: str, edits: dict) -> str:
    if not edits:
        return name
    return f"{name} [" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in sorted(edits.items())) + "]"


# ---- predictions ------------------------------------------------------------------------------------
class NotPlannable(ValueError):
    """The model's experts do not place on the cluster (`placement_for`'s reason)."""


@dataclass
class FigureResult:
    """A figure's prediction. status: "ok" or "not plannable" (then `reason`)."""

    figure: Figure
    status: str
    predicted: float | None = None
    error: float | None = None
    reason: str = ""
    cluster_label: str = ""
    details: dict = field(default_factory=dict)

    @property
    def within(self) -> bool:
        return self.error is not None and abs(self.error) <= WITHIN

    @property
    def in_range(self) -> bool | None:
        if self.predicted is None or self.figure.range is None:
            return None
        low, high = self.figure.range
        return low <= self.predicted <= high

    def to_dict(self) -> dict:
        return {"id": self.figure.id, "paper": self.figure.paper, "quantity": self.figure.quantity,
                "published": self.figure.value, "range": list(self.figure.range) if self.figure.range else None,
                "predicted": self.predicted, "relative_error": self.error,
                "within": self.within if self.status == "ok" else None, "in_range": self.in_range,
                "status": self.status, "reason": self.reason, "model": self.figure.model,
                "stand_in": self.figure.stand_in, "cluster": self.cluster_label, "details": self.details}


class Planner:
    """Simulates the steps the figures need, each distinct one once.

    resolve_model(name) -> a model object (duck typed like `lshsim.sim.moe_step` needs).
    drain_tolerance: None = `lshsim plan`'s automatic fidelity per cluster (exact up to
    AUTO_EXACT_MAX_GPUS GPUs, `auto_tolerance` above), else this tolerance everywhere (0 = exact).
    progress(text): called before each routing, step simulation and all-to-all simulation.

    Caches: one graph and one `A2ACache` per distinct topology spec; clusters whose specs differ
    only in `gpu.gemm_efficiency` share their all-to-all times (the GEMM rate is not part of the
    network simulation: it sees links and the HBM copy rate only). One routing per (model, top_k,
    placement, routing key), the routings' synthetic inputs drawn once per distinct draw while kept
    (the last two: `moe_step.RouterInputCache`; a draw is a pure function of its arguments, so the
    routings are the same); one step result per (model, cluster spec, step config).
    """

    def __init__(self, resolve_model: Callable[[str], object], *, drain_tolerance: float | None = None,
                 auto_tolerance: float = 0.01, progress: Callable[[str], None] | None = None):
        self.resolve_model = resolve_model
        self.drain_tolerance, self.auto_tolerance = drain_tolerance, float(auto_tolerance)
        self.progress = progress or (lambda text: None)
        self._models: dict = {}
        self._graphs: dict = {}
        self._caches: dict = {}
        self._times: dict = {}
        self._routings: dict = {}
        self._steps: dict = {}
        self._inputs = None           # the router inputs kept between routings (`moe_step.RouterInputCache`)
        self.fidelity: dict = {}
        self._step_label, self._simulations = "", 0   # the step being simulated, its all-to-alls so far

    def _on_simulate(self, algorithm: str, traffic_bytes) -> None:
        """A progress line per all-to-all a step simulates (a step of the overlapped or group-wise
        layer can simulate dozens: tens of seconds without a line before)."""
        from lshsim.sim.moe_step import simulation_text

        self._simulations += 1
        self.progress(f"step {self._step_label}: {simulation_text(algorithm, traffic_bytes, self._simulations)}")

    # -- inputs
    def model(self, name: str, top_k: int | None = None, seq_factor: float = 1.0):
        """Model `name` (resolved once), with `top_k` if given, and its sequence length scaled by
        `seq_factor` (the sweep's; the tokens per GPU stay: fewer, longer sequences or the reverse)."""
        key = (name, top_k, seq_factor)
        if key not in self._models:
            model = self._models.get((name, None, 1.0)) or self.resolve_model(name)
            self._models[(name, None, 1.0)] = model
            changes = {}
            if top_k is not None and top_k != getattr(model, "top_k", None):
                changes["top_k"] = top_k
            if seq_factor != 1.0:
                changes["seq_len"] = max(1, int(round(model.seq_len * seq_factor)))
            if changes:
                if not dataclasses.is_dataclass(model):
                    raise ValueError(f"model {name!r}: {', '.join(changes)} cannot be replaced on a "
                                     f"{type(model).__name__}")
                model = dataclasses.replace(model, **changes)
            self._models[key] = model
        return self._models[key]

    def cluster(self, name: str, edits: dict):
        """(graph, spec key) of topology `name` with `edits`."""
        from lshsim.sim.moe_step import A2ACache, auto_drain_tolerance
        from lshsim.topology import build_topology
        from lshsim.topology.spec import read_spec

        spec, source = read_spec(name)
        spec = apply_edits(spec, edits, source)
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in self._graphs:
            graph = build_topology(spec, source=source)
            world = sum(1 for _, data in graph.nodes(data=True) if data.get("kind") == "gpu")
            drain = auto_drain_tolerance(world, self.auto_tolerance) if self.drain_tolerance is None \
                else float(self.drain_tolerance)
            cache = A2ACache(graph, drain, on_simulate=self._on_simulate)
            network = copy.deepcopy(spec)
            if isinstance(network.get("gpu"), dict):
                network["gpu"].pop("gemm_efficiency", None)
            if isinstance(network.get("software"), dict):
                network["software"].pop("gemm_efficiency", None)
            network_key = (json.dumps(network, sort_keys=True, default=str), drain)
            cache.times = self._times.setdefault(network_key, cache.times)  # shared when only the GEMM rate differs
            self._graphs[key], self._caches[key] = graph, cache
            self.fidelity[_cluster_label(name, edits)] = {"gpus": world, "drain_tolerance": drain,
                                                          "mode": "exact" if drain == 0 else "tolerance"}
        return self._graphs[key], key

    # -- one step
    def step(self, model_name: str, cluster: str, edits: dict, setting: dict, seq_factor: float = 1.0) -> dict:
        """The breakdown (`lshsim.sim.moe_step` `_breakdown`) of one step; ValueError if the model's
        experts do not place on the cluster. `seq_factor` scales the model's sequence length."""
        from lshsim.sim.moe_step import (RouterInputCache, StepConfig, combine_breakdowns, describe, placement_for,
                                         reuse_router_inputs, route_traffic, routing_key, simulate_config,
                                         stage_models)

        if self._inputs is None:
            self._inputs = RouterInputCache()
        top_k = setting.get("top_k")
        model = self.model(model_name, top_k, seq_factor)
        graph, spec_key = self.cluster(cluster, edits)
        config = StepConfig(**{k: v for k, v in setting.items() if k != "top_k"})
        step_key = (model_name, top_k, seq_factor, spec_key, config)
        if step_key in self._steps:
            return self._steps[step_key]
        parts = []
        tokens = config.tokens_per_gpu or getattr(model, "tokens_per_gpu", None)
        for part, factor in stage_models(model):     # a staged model (Swin): each stage, one after another
            part_config = config if factor == 1.0 or config.tokens_per_gpu is None else \
                dataclasses.replace(config, tokens_per_gpu=max(1, int(round(tokens * factor))))
            try:
                placement = placement_for(part, graph, part_config.ep, part_config.tp, part_config.tp_layout)
            except ValueError as error:
                raise NotPlannable(str(error)) from None
            place_key = (part_config.ep, part_config.tp, part_config.tp_layout, placement.num_experts,
                         tuple(placement.rank_to_node.tolist()))
            name = getattr(part, "name", model_name)
            route_key = (name, top_k, place_key, routing_key(part, part_config))
            label = f"{name} on {_cluster_label(cluster, edits)}"
            if route_key not in self._routings:
                self.progress(f"routing {label} ({config.router}, top-{getattr(model, 'top_k', '?')})")
                with reuse_router_inputs(self._inputs):   # routers of one model and cluster: one draw
                    self._routings[route_key] = route_traffic(part, placement, part_config)
            self.progress(f"step {label}: {describe(part_config)}")
            self._step_label, self._simulations = label, 0
            result = simulate_config(part, graph, part_config, traffic=self._routings[route_key],
                                     a2a_cache=self._caches[spec_key])
            parts.append(result.breakdown)
        breakdown = parts[0] if len(parts) == 1 else combine_breakdowns(parts)
        self._steps[step_key] = breakdown
        return breakdown

    def cache_stats(self) -> dict:
        caches = list(self._caches.values())
        return {"hits": sum(c.hits for c in caches), "misses": sum(c.misses for c in caches),
                "simulated_s": sum(c.simulated_s for c in caches), "clusters": len(caches),
                "routings": len(self._routings), "steps": len(self._steps)}


def _step_summary(b: dict) -> dict:
    return {"step_ms": b["step_s"] * 1e3, "a2a_ms": b["a2a_s"] * 1e3, "a2a_share": b["a2a_share"],
            "dropped_fraction": b["dropped_fraction"], "compression_rate": b["compression_rate"],
            "tokens_per_gpu": b["tokens_per_gpu"], "routed_tokens_per_rank": b["routed_tokens_per_rank"],
            "gpus": b["world_size"], "inter_node_MB_per_layer": b["inter_node_bytes_per_layer"] / 1e6,
            "grad_sync": b.get("grad_sync", "off"), "grad_sync_ms": b.get("grad_sync_s", 0.0) * 1e3,
            "exposed_grad_sync_ms": b.get("exposed_grad_sync_s", 0.0) * 1e3,
            "grad_sync_share": b.get("grad_sync_share", 0.0)}


def _quantity(quantity: str, measured: dict, baseline: dict | None) -> float:
    if quantity == "a2a_share":
        return measured["a2a_share"]
    if quantity == "speedup":
        return baseline["step_s"] / measured["step_s"]
    if quantity == "step_reduction":
        return 1.0 - measured["step_s"] / baseline["step_s"]
    if quantity == "a2a_reduction":
        return 1.0 - measured["a2a_s"] / baseline["a2a_s"]
    raise ValueError(f"quantity={quantity!r} must be one of {', '.join(QUANTITIES)}")


def predict(figure: Figure, planner: Planner, *, edits: dict | None = None, tokens_factor: float = 1.0,
            seq_factor: float = 1.0) -> FigureResult:
    """Predict one figure. `edits` are added to the figure's cluster_edits (the sweep's NIC rate or
    GEMM efficiency), `tokens_factor` scales the tokens per GPU of both steps and `seq_factor` the
    model's sequence length (the sweep)."""
    all_edits = {**figure.cluster_edits, **(edits or {})}
    label = _cluster_label(figure.cluster, all_edits)

    def setting_of(raw: dict) -> dict:
        if tokens_factor == 1.0:
            return raw
        model = planner.model(figure.model, raw.get("top_k"))
        tokens = raw.get("tokens_per_gpu") or model.tokens_per_gpu
        return {**raw, "tokens_per_gpu": max(1, int(round(tokens * tokens_factor)))}

    try:
        measured = planner.step(figure.model, figure.cluster, all_edits, setting_of(figure.setting), seq_factor)
        base = None if figure.baseline is None else \
            planner.step(figure.model, figure.cluster, all_edits, setting_of(figure.baseline), seq_factor)
    except NotPlannable as error:
        return FigureResult(figure, "not plannable", reason=str(error), cluster_label=label)
    predicted = _quantity(figure.quantity, measured, base)
    details = {"setting": _step_summary(measured)}
    if base is not None:
        details["baseline"] = _step_summary(base)
    return FigureResult(figure, "ok", predicted=predicted, error=relative_error(predicted, figure.value),
                        cluster_label=label, details=details)


# ---- summaries --------------------------------------------------------------------------------------
def summarize(results: list[FigureResult]) -> dict:
    """How many figures were predicted, how many within WITHIN, the median and the worst |error|."""
    ok = [r for r in results if r.status == "ok"]
    errors = [abs(r.error) for r in ok]
    worst = max(ok, key=lambda r: abs(r.error)) if ok else None
    return {"figures": len(results), "predicted": len(ok), "not_plannable": [r.figure.id for r in results
                                                                              if r.status != "ok"],
            "within": sum(r.within for r in ok), "tolerance": WITHIN,
            "median_abs_error": statistics.median(errors) if errors else None,
            "worst_abs_error": abs(worst.error) if worst else None, "worst": worst.figure.id if worst else None,
            "in_range": sum(bool(r.in_range) for r in ok if r.figure.range is not None),
            "with_range": sum(1 for r in ok if r.figure.range is not None)}


def _follows(share: float, fig3: float | None, implied: float) -> str:
    """Which paper number a predicted share follows: the nearer one if within WITHIN of it (relative),
    else "neither (nearer: ...)".

    >>> _follows(0.86, 0.70, 0.25), _follows(0.27, 0.70, 0.25), _follows(0.67, 0.30, 0.31)
    ('neither (nearer: fig3)', 'implied', 'neither (nearer: implied)')
    """
    candidates = {"implied": implied} if fig3 is None else {"fig3": fig3, "implied": implied}
    nearer = min(candidates, key=lambda name: abs(share / candidates[name] - 1))
    if abs(share / candidates[nearer] - 1) <= WITHIN:
        return nearer
    return f"neither (nearer: {nearer})"


def consistency(results: list[FigureResult], planner: Planner | None = None) -> list[dict]:
    """The LSH-MoE check, one row per LSH-MoE speedup figure with a compression rate:

    paper_implied_share:  (1 - 1/S) / (1 - r) of the published S (and of its range's ends);
    fig3_share:           the paper's Fig. 3 share of the same model (None if it gives none);
    paper_consistent:     |implied / fig3 - 1| <= WITHIN, or fig3 within the implied range;
    predicted_share:      the planner's all-to-all share of the figure's baseline step;
    predicted_implied_share: (1 - 1/S) / (1 - r) of the planner's own speedup;
    follows:              "fig3" or "implied": the paper number the planner's share is within WITHIN
                          of (the nearer), else "neither (nearer: ...)".
    """
    rows = []
    fig3 = {}
    for r in results:
        if r.figure.quantity == "a2a_share" and r.figure.paper == "lsh-moe":
            fig3.setdefault(r.figure.model, r.figure.value)
    for r in results:
        f = r.figure
        if f.paper != "lsh-moe" or f.quantity != "speedup" or f.setting.get("lsh_rate") is None:
            continue
        rate = float(f.setting["lsh_rate"])
        implied = implied_a2a_share(f.value, rate)
        span = None if f.range is None else [implied_a2a_share(f.range[0], rate), implied_a2a_share(f.range[1], rate)]
        share3 = fig3.get(f.model)
        consistent = None
        if share3 is not None:
            consistent = abs(implied / share3 - 1) <= WITHIN or (span is not None and span[0] <= share3 <= span[1])
        row = {"id": f.id, "model": f.model, "rate": rate, "rate_assumed": "lsh_rate" in f.assumed,
               "paper_speedup": f.value, "paper_implied_share": implied, "paper_implied_range": span,
               "fig3_share": share3, "paper_consistent": consistent, "status": r.status,
               "predicted_share": None, "predicted_speedup": None, "predicted_implied_share": None, "follows": None}
        if r.status == "ok":
            share = r.details["baseline"]["a2a_share"]
            row.update(predicted_share=share, predicted_speedup=r.predicted,
                       predicted_implied_share=implied_a2a_share(r.predicted, rate) if r.predicted > 0 else None)
            row["follows"] = _follows(share, share3, implied)
        rows.append(row)
    return rows


def algorithm_check(results: list[FigureResult], planner: Planner) -> list[dict]:
    """Where a relative figure's step runs another all-to-all than its baseline (LocMoE's group-wise
    all-to-all, one of the changes the paper makes), the figure predicted again with the baseline on the
    step's all-to-all too: the figure the model would give if the paper's baselines had run it. One row
    per such figure: the shipped prediction and error, the same-algorithm prediction and error, and which
    the shipped model follows (the paper's method names the all-to-all among its changes, so its
    baselines run without it). LocMoE's text gives a 5.13% shorter all-to-all and 12.68-22.24% shorter
    steps; the rows show whether one reading of its baselines can give both.
    """
    rows = []
    for r in results:
        f = r.figure
        if r.status != "ok" or f.baseline is None:
            continue
        algorithm, theirs = f.setting.get("algorithm", "direct"), f.baseline.get("algorithm", "direct")
        if theirs == algorithm:
            continue
        same = predict(dataclasses.replace(f, baseline={**f.baseline, "algorithm": algorithm}), planner)
        rows.append({"id": f.id, "quantity": f.quantity, "paper": f.value, "algorithm": algorithm,
                     "baseline_algorithm": theirs, "predicted": r.predicted, "error": r.error,
                     "status_same": same.status, "predicted_same": same.predicted, "error_same": same.error,
                     "follows": f"baselines on {theirs}: the paper names the {algorithm} all-to-all among its "
                                f"method's changes"})
    return rows


# ---- the one-at-a-time sweep --------------------------------------------------------------------------
#: (label, what, factor): the unknowns the sweep moves, one at a time
SWEEP_VARIANTS = (("tokens x0.5", "tokens", 0.5), ("tokens x2", "tokens", 2.0),
                  ("seq x0.5", "seq", 0.5), ("seq x2", "seq", 2.0),
                  ("NIC x0.5", "nic", 0.5), ("NIC x2", "nic", 2.0),
                  ("eff x0.5", "gemm", 0.5), ("eff x2 (<= 1)", "gemm", 2.0),
                  ("LocMoE cf x0.8", "capacity", 0.8))


def _capacity_variant(figure: Figure, factor: float) -> tuple[Figure | None, str]:
    """The figure with its LocMoE step's capacity factor scaled by `factor` and its locality share
    scaled with it (the figures' rule: the share is the most the node's experts accept at the
    capacity, capped at 1), the baseline unchanged; (None, reason) when the setting is not LocMoE's
    or has no capacity factor. LocMoE lowered its capacity by an amount it does not state."""
    setting = dict(figure.setting)
    if setting.get("router") != "locmoe" or setting.get("capacity_factor") is None:
        return None, "not LocMoE's capacity"
    setting["capacity_factor"] = float(setting["capacity_factor"]) * factor
    share = setting.get("locality_share")
    if isinstance(share, (int, float)) and not isinstance(share, bool):
        setting["locality_share"] = min(1.0, float(share) * factor)
    text = f"capacity factor {setting['capacity_factor']:g}"
    if "locality_share" in setting and setting["locality_share"] != share:
        text += f", share {setting['locality_share']:g}"
    return dataclasses.replace(figure, setting=setting), text


def _variant_edits(planner: Planner, figure: Figure, what: str, factor: float) -> tuple[dict | None, str]:
    """The cluster edits of a NIC or GEMM-efficiency variant, and the value it sets; (None, reason)
    when the spec has no such field."""
    from lshsim.topology.spec import read_spec

    spec, _ = read_spec(figure.cluster)
    spec = apply_edits(spec, figure.cluster_edits)
    if what == "nic":
        inter = spec.get("inter")
        if not isinstance(inter, dict) or "nic_gbps" not in inter:
            return None, "no inter.nic_gbps"
        value = float(inter["nic_gbps"]) * factor
        return {"inter.nic_gbps": value}, f"{value:g} Gb/s"
    software = spec.get("software")
    if isinstance(software, dict) and "gemm_efficiency" in software:   # the named software calibration
        value = min(1.0, float(software["gemm_efficiency"]) * factor)  # an efficiency is at most 1
        return {"software.gemm_efficiency": value}, f"{value:g}"
    gpu = spec.get("gpu")
    if not isinstance(gpu, dict) or "gemm_efficiency" not in gpu:
        return None, "no gpu.gemm_efficiency"
    value = min(1.0, float(gpu["gemm_efficiency"]) * factor)   # an efficiency is at most 1
    return {"gpu.gemm_efficiency": value}, f"{value:g}"


def sweep(figures: list[Figure], planner: Planner, base: dict[str, FigureResult],
          variants=SWEEP_VARIANTS) -> list[dict]:
    """Each variant of `variants` on every plannable figure: the prediction, its move relative to the
    base prediction (predicted / base - 1) and the relative error against the paper."""
    rows = []
    for label, what, factor in variants:
        for figure in figures:
            reference = base[figure.id]
            if reference.status != "ok":
                continue
            row = {"variant": label, "what": what, "factor": factor, "id": figure.id,
                   "base": reference.predicted}
            if what == "tokens":
                result = predict(figure, planner, tokens_factor=factor)
                row["value"] = f"{result.details['setting']['tokens_per_gpu']} tokens/GPU" \
                    if result.status == "ok" else ""
            elif what == "seq":
                model = planner.model(figure.model, figure.setting.get("top_k"))
                if getattr(model, "attention_window", None) is not None:   # Swin: the span is the window
                    rows.append({**row, "predicted": None, "move": None, "error": None,
                                 "value": "windowed attention"})
                    continue
                result = predict(figure, planner, seq_factor=factor)
                row["value"] = f"seq_len {max(1, int(round(model.seq_len * factor)))}"
            elif what == "capacity":
                varied, text = _capacity_variant(figure, factor)
                if varied is None:
                    rows.append({**row, "predicted": None, "move": None, "error": None, "value": text})
                    continue
                result = predict(varied, planner)
                row["value"] = text
            else:
                edits, text = _variant_edits(planner, figure, what, factor)
                if edits is None:
                    rows.append({**row, "predicted": None, "move": None, "error": None, "value": text})
                    continue
                result = predict(figure, planner, edits=edits)
                row["value"] = text
            if result.status != "ok":
                rows.append({**row, "predicted": None, "move": None, "error": None, "value": result.reason})
                continue
            move = result.predicted / reference.predicted - 1 if reference.predicted else None
            rows.append({**row, "predicted": result.predicted, "move": move, "error": result.error})
    return rows


# ---- one set of assumptions per cluster, fitted on that cluster's figures ----------------------------
#: the unknowns `fit` moves: the two efficiencies of a cluster's named software calibration
FIT_FIELDS = ("software.gemm_efficiency", "software.a2a_efficiency")
#: the efficiencies `fit` tries for each field (every pair of the grid; an efficiency is in (0, 1])
FIT_GRID = (0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def cluster_group(figure: Figure) -> str:
    """The cluster a figure's assumptions belong to: the name of its topology's software calibration
    (`software.name`: the 64-, 128- and 256-NPU LocMoE clusters share one), else the topology's name."""
    from lshsim.topology.spec import read_spec

    spec, _ = read_spec(figure.cluster)
    software = spec.get("software")
    if isinstance(software, dict) and software.get("name"):
        return str(software["name"])
    return figure.cluster


def _documented(figure: Figure) -> dict:
    """The documented values of FIT_FIELDS in the figure's cluster spec (with its edits); a field the
    spec lacks is missing from the result."""
    from lshsim.topology.spec import read_spec

    spec, source = read_spec(figure.cluster)
    spec = apply_edits(spec, figure.cluster_edits, source)
    out = {}
    for path in FIT_FIELDS:
        block = spec
        for key in path.split("."):
            block = block.get(key) if isinstance(block, dict) else None
        if isinstance(block, (int, float)):
            out[path] = float(block)
    return out


def _score(errors: list[float], objective: str = "within") -> tuple:
    """The key the fit minimises. objective "within": (figures outside WITHIN, median |error|, worst
    |error|), i.e. as many figures within the tolerance as one set allows, then the smallest median;
    "minimax": (worst |error|, median |error|). Errors are compared to 0.01 (one percentage point), so
    that near-equal points tie and the tie-break (`best_point`) decides."""
    magnitudes = [abs(e) for e in errors]
    worst, median = max(magnitudes), statistics.median(magnitudes)
    if objective == "minimax":
        return round(worst, 2), round(median, 2)
    return sum(m > WITHIN for m in magnitudes), round(median, 2), round(worst, 2)


def best_point(table: dict, figure_ids: list[str], objective: str = "within",
               documented: tuple | None = None) -> tuple | None:
    """The grid point of `table` {point: {figure id: relative error or None}} with the smallest
    `_score` over `figure_ids` (points where one of them is not plannable are skipped); None when
    no point qualifies. Ties go to the point nearest `documented` (sum of |log ratio|; the shares
    and speedups depend mostly on the ratio of the two efficiencies, so many points tie and the one
    that moves the documented calibration least is taken), else to the first in the table's order.

    >>> t = {(0.5,): {"a": 0.3, "b": -0.1, "c": 0.05}, (1.0,): {"a": 0.2, "b": -0.2, "c": 0.18}}
    >>> best_point(t, ["a", "b", "c"]), best_point(t, ["a", "b", "c"], "minimax"), best_point(t, ["c"])
    ((0.5,), (1.0,), (0.5,))
    """
    best, best_score = None, None
    for point, errors in table.items():
        values = [errors.get(i) for i in figure_ids]
        if not values or any(v is None for v in values):
            continue
        score = _score(values, objective)
        if documented is not None:
            score = score + (round(sum(abs(math.log(p / d)) for p, d in zip(point, documented)), 9),)
        if best_score is None or score < best_score:
            best, best_score = point, score
    return best


def fit(figures: list[Figure], planner: Planner, base: dict[str, FigureResult], grid=None,
        progress: Callable[[str], None] | None = None) -> list[dict]:
    """One set of FIT_FIELDS per cluster group (`cluster_group`), fitted on that group's figures.

    For every pair of `grid` values (GEMM efficiency, all-to-all efficiency) every figure of the
    group is predicted with the pair written into its cluster's software calibration; the pair that
    brings the most of the group's plannable figures within WITHIN (then the smallest median |error|)
    is the fit, and the pair with the smallest worst |error| is reported beside it (minimax). Each
    figure is also predicted leave-one-out: with the pair that fits the group's other figures best
    (a figure alone in its group gets none). This is a consistency check of the model and the
    papers, not a prediction: the fitted errors are in-sample; the leave-one-out errors are the
    honest ones. Returns one row per group:

        group, clusters, figures (ids), documented {field: value}, fitted {field: value} or None,
        within / worst / median |error| at the fit, minimax {field: value} and its worst |error|,
        rows: per figure id, paper, documented prediction and
        error, fitted prediction and error, leave-one-out point, prediction and error.
    """
    progress = progress or (lambda text: None)
    values = sorted({float(v) for v in (FIT_GRID if grid is None else grid)})
    if not values or any(not (0.0 < v <= 1.0) or not math.isfinite(v) for v in values):
        raise ValueError(f"fit grid {list(grid)!r}: every efficiency must be in (0, 1]")
    groups: dict[str, list[Figure]] = {}
    for figure in figures:
        if base[figure.id].status == "ok":
            groups.setdefault(cluster_group(figure), []).append(figure)
    out = []
    for group, members in groups.items():
        documented = _documented(members[0])
        if set(documented) != set(FIT_FIELDS):
            out.append({"group": group, "clusters": sorted({f.cluster for f in members}),
                        "figures": [f.id for f in members], "documented": documented, "fitted": None,
                        "reason": f"the cluster spec has no {', '.join(sorted(set(FIT_FIELDS) - set(documented)))}",
                        "rows": []})
            continue
        table: dict = {}
        predictions: dict = {}
        # the all-to-all efficiency changes the network (new simulations); the GEMM efficiency does not
        for index, a2a in enumerate(values, start=1):
            progress(f"fit {group}: all-to-all efficiency {a2a:g} ({index}/{len(values)}), "
                     f"{len(values)} GEMM efficiencies x {len(members)} figures")
            for gemm in values:
                point = (gemm, a2a)
                errors, preds = {}, {}
                for figure in members:
                    result = predict(figure, planner, edits={FIT_FIELDS[0]: gemm, FIT_FIELDS[1]: a2a})
                    errors[figure.id] = result.error if result.status == "ok" else None
                    preds[figure.id] = result.predicted if result.status == "ok" else None
                table[point], predictions[point] = errors, preds
        ids = [f.id for f in members]
        anchor = tuple(documented[name] for name in FIT_FIELDS)
        fitted = best_point(table, ids, documented=anchor)
        rows = []
        for figure in members:
            others = [i for i in ids if i != figure.id]
            loo = best_point(table, others, documented=anchor) if others else None
            reference = base[figure.id]
            rows.append({"id": figure.id, "quantity": figure.quantity, "paper": figure.value,
                         "documented_predicted": reference.predicted, "documented_error": reference.error,
                         "fitted_predicted": None if fitted is None else predictions[fitted][figure.id],
                         "fitted_error": None if fitted is None else table[fitted][figure.id],
                         "loo_point": None if loo is None else dict(zip(FIT_FIELDS, loo)),
                         "loo_predicted": None if loo is None else predictions[loo][figure.id],
                         "loo_error": None if loo is None else table[loo][figure.id]})
        row = {"group": group, "clusters": sorted({f.cluster for f in members}), "figures": ids,
               "documented": documented, "fitted": None if fitted is None else dict(zip(FIT_FIELDS, fitted)),
               "grid": values, "rows": rows}
        if fitted is not None:
            row["within"] = sum(abs(table[fitted][i]) <= WITHIN for i in ids)
            row["worst_abs_error"] = max(abs(table[fitted][i]) for i in ids)
            row["median_abs_error"] = statistics.median(abs(table[fitted][i]) for i in ids)
            minimax = best_point(table, ids, "minimax", documented=anchor)
            row["minimax"] = dict(zip(FIT_FIELDS, minimax))
            row["minimax_worst_abs_error"] = max(abs(table[minimax][i]) for i in ids)
        out.append(row)
    return out


def fit_summary(groups: list[dict]) -> dict:
    """Counts within WITHIN and median / worst |error| of the documented, fitted and leave-one-out
    predictions over every figure of `groups`."""
    out = {"tolerance": WITHIN}
    for kind in ("documented", "fitted", "loo"):
        errors = [abs(r[f"{kind}_error"]) for g in groups for r in g["rows"] if r[f"{kind}_error"] is not None]
        out[kind] = {"figures": len(errors), "within": sum(e <= WITHIN for e in errors),
                     "median_abs_error": statistics.median(errors) if errors else None,
                     "worst_abs_error": max(errors) if errors else None}
    return out
