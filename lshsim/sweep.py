"""Sweeps of `lshsim plan` over a grid: models x clusters x NIC rates x cluster sizes x step settings.

A grid is a YAML file (`load_grid`); every key under `grid:` is an **axis** of `AXES`, with one value
or a list of values, and the points are the product of the lists (in file order, the last axis
varying fastest). Each point is one `lshsim plan`: `lshsim.sim.moe_step.compare_options` of the
options of `plan_options` (baseline first) on the point's model and cluster, at the fidelity that
`lshsim plan` would pick (`lshsim.cli.plan._fidelity`). Where the work runs is the caller's choice
(`run_sweep`): this process, a pool of local processes (`concurrent.futures`), or a Dask cluster.

>>> sorted(AXES)[:6]
['algorithm', 'capacity_factor', 'cluster', 'dispatch_format', 'drain_tolerance', 'ep']

**An axis is one line of `AXES`**: its help text, how a value is checked (a function that returns the
value or raises ValueError saying why) and where it goes (`_topology(path)`: a field of the cluster's
topology spec; `_config(field)`: a `StepConfig` field; `_point(key)`: the model, the cluster, the
fidelity). Every `StepConfig` field is an axis already (`seed`, `tokens_per_gpu`, `capacity_factor`,
...), so a field added to `StepConfig` (an expert-parallel size, say) can be swept without a change
here.

**The results table** (CSV, `TABLE_COLUMNS`) has one row per (point, option): the point's axis
values, the cluster's GPUs and nodes, the option, the predicted step, the all-to-all share, the
speedup over the baseline option, the fidelity used, the wall time, and, for a point that failed,
the error (one row per expected option, numbers empty). Rows are appended as each point finishes;
a rerun with the same table skips the points whose rows are all there (`read_table`), so a sweep
that was interrupted resumes where it stopped. At the end the table is rewritten whole in grid order,
so its content does not depend on the engine, the number of jobs or the interruptions (but for the
wall times and the worker names).
"""
from __future__ import annotations

import copy
import csv
import io
import math
import os
import socket
import time
from dataclasses import dataclass, field, fields
from itertools import product
from pathlib import Path
from typing import Callable, Iterable

from lshsim import bounds

__all__ = ["AXES", "Axis", "Grid", "Point", "load_grid", "evaluate_point", "read_table", "run_sweep",
           "table_columns", "RESULT_COLUMNS", "OPTION_NAMES", "ENGINES", "plot_sweep", "format_value"]

#: the options of `lshsim plan` by short name (the first word of `plan_options`' labels)
OPTION_NAMES = ("baseline", "yours", "lsh", "locmoe", "2d", "groupwise", "overlap")
#: where the points run
ENGINES = ("local", "dask")
#: the columns after the axis columns
RESULT_COLUMNS = ("gpus", "cluster_nodes", "option", "description", "step_s", "a2a_s", "exposed_a2a_s",
                  "a2a_share", "speedup", "dispatch_bytes_per_layer", "inter_node_bytes_per_layer",
                  "dropped_fraction", "fidelity", "drain_tolerance", "fidelity_chosen", "wall_s", "point_wall_s",
                  "worker", "error")
#: columns that differ between two runs of the same grid (timing and placement of the work)
RUN_COLUMNS = ("wall_s", "point_wall_s", "worker")


# ---- axes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """help: one line for the docs; check(value) -> value (ValueError: why not); apply(state, value)
    puts the value into a point's state (`_point`, `_topology` or `_config`)."""

    help: str
    check: Callable[[object], object]
    apply: Callable[[dict, object], None]


def _point(key: str):
    def apply(state: dict, value) -> None:
        state[key] = value
    return apply


def _topology(*path: str):
    def apply(state: dict, value) -> None:
        state["topology"][path] = value
    return apply


def _config(name: str):
    def apply(state: dict, value) -> None:
        state["config"][name] = value
    return apply


def _name(value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a name or a .yaml path")
    return value


def _int(minimum: int):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return value
    return check


def _number(minimum: float, exclusive: bool = True, maximum: float | None = None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (value <= minimum if exclusive else value < minimum) or (maximum is not None and value > maximum):
            bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            raise ValueError(f"must be a finite number {bound}" + (f" and <= {maximum:g}" if maximum else ""))
        return value
    return check


def _choice(*choices: str):
    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return check


def _step_field(name: str):
    def check(value):
        from lshsim.sim.moe_step import StepConfig

        if isinstance(value, str) and value.lower() in ("none", "null"):
            value = None
        if name == "router_options":       # a router's own: checked with the grid's routers (_check_router_options)
            return value
        StepConfig(**{name: value})        # its own checks say why a value is refused
        return value
    return check


def _check_router_options(routers: list, options) -> None:
    """`options` (a grid's router_options) checked with every router of the grid that is a known name (an
    unknown one is its own axis's error): declared by that router, of their kind, within `lshsim.bounds`."""
    from lshsim.dispatch import ROUTERS
    from lshsim.sim.moe_step import StepConfig

    if isinstance(options, str) and options.lower() in ("none", "null"):
        return
    for router in routers:
        if isinstance(router, str) and router in ROUTERS:
            StepConfig(router=router, router_options=options)


def _step_config_axes() -> dict[str, Axis]:
    from lshsim.sim.moe_step import StepConfig

    return {f.name: Axis(f"StepConfig.{f.name} (as `lshsim plan`'s flag of that name)", _step_field(f.name),
                         _config(f.name)) for f in fields(StepConfig)}


#: name -> Axis. A new axis is one line here.
AXES: dict[str, Axis] = {
    "model": Axis("a model of the catalog or a model YAML (a path relative to the grid file)", _name, _point("model")),
    "cluster": Axis("a topology of data/topologies or a topology YAML (relative to the grid file)", _name,
                    _point("cluster")),
    "nodes": Axis("servers in the cluster (the topology's `nodes`): the cluster size", _int(1), _topology("nodes")),
    "gpus_per_node": Axis("GPUs per server (the topology's `gpus_per_node`)", _int(1), _topology("gpus_per_node")),
    "nic_gbps": Axis("NIC line rate in Gb/s (the topology's `inter.nic_gbps`)", _number(0.0),
                     _topology("inter", "nic_gbps")),
    "nics_per_node": Axis("NICs per server (`inter.nics_per_node`)", _int(1), _topology("inter", "nics_per_node")),
    "oversubscription": Axis("leaf downlink : uplink capacity (`inter.oversubscription`)", _number(0.0),
                             _topology("inter", "oversubscription")),
    "fidelity": Axis("auto | exact | tolerance | estimate (`lshsim plan --fidelity`; auto: plan's choice)",
                     _choice("auto", "exact", "tolerance", "estimate"), _point("fidelity")),
    "drain_tolerance": Axis("`lshsim plan --drain-tolerance`, in (0, 0.5]", _number(0.0, maximum=0.5),
                            _point("drain_tolerance")),
    **_step_config_axes(),
}
#: axes every grid must give
REQUIRED_AXES = ("model", "cluster")


def format_value(value) -> str:
    """An axis value as the table writes it (and compares it on resume): text as is, integers in
    decimal, floats by repr (exact round trip), booleans true/false, None none.

    >>> [format_value(v) for v in ("a", 100, 0.1, True, None)]
    ['a', '100', '0.1', 'true', 'none']
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):     # a numpy scalar
        value = value.item()
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ---- the grid ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One grid point: its index in grid order and its value on every axis (in the grid's axis order)."""

    index: int
    values: dict

    def key(self) -> tuple[str, ...]:
        return tuple(format_value(v) for v in self.values.values())

    def label(self, swept: Iterable[str]) -> str:
        return ", ".join(f"{name}={format_value(self.values[name])}" for name in swept)


@dataclass
class Grid:
    """A grid read by `load_grid`: `axes` (name -> list of values, in file order), `options` (short
    names, baseline first), `source` (the file, for messages) and `folder` (paths are relative to it)."""

    axes: dict
    options: tuple[str, ...]
    source: str
    folder: Path
    name: str = ""
    #: name or path -> model (the caller's: `lshsim.models.load_model`; the core imports no models)
    resolve_model: object = field(default=None, repr=False)
    _models: dict = field(default_factory=dict, repr=False)
    _specs: dict = field(default_factory=dict, repr=False)

    def points(self) -> list[Point]:
        names = list(self.axes)
        return [Point(i, dict(zip(names, combo))) for i, combo in enumerate(product(*self.axes.values()))]

    @property
    def swept(self) -> list[str]:
        """The axes with more than one value."""
        return [name for name, values in self.axes.items() if len(values) > 1]

    def columns(self) -> list[str]:
        return table_columns(self.axes)

    def resolve(self, value: str) -> str:
        """A path relative to the grid file's folder, if the value names a file there; else the value."""
        if value.endswith((".yaml", ".yml")) and not Path(value).is_absolute():
            return str(self.folder / value)
        return value

    def model(self, value: str):
        if self.resolve_model is None:
            raise ValueError(f"{self.source}: reading model {value!r} needs load_grid(..., resolve_model=...) "
                             "(lshsim.models.load_model)")
        if value not in self._models:
            self._models[value] = self.resolve_model(self.resolve(value))
        return self._models[value]

    def spec(self, value: str) -> tuple[dict, str]:
        from lshsim.topology.spec import read_spec

        if value not in self._specs:
            self._specs[value] = read_spec(self.resolve(value))
        return self._specs[value]

    def task(self, point: Point) -> dict:
        """What a worker needs for `point`, with the model and the topology spec read here (a remote
        worker needs none of this machine's files): model, spec, source, config, fidelity, options."""
        state = {"topology": {}, "config": {}, "fidelity": "auto", "drain_tolerance": None}
        for name, value in point.values.items():
            AXES[name].apply(state, value)
        spec, source = self.spec(state["cluster"])
        return {"index": point.index, "key": point.key(), "model": self.model(state["model"]),
                "spec": spec, "source": source, "topology": state["topology"], "config": state["config"],
                "fidelity": state["fidelity"], "drain_tolerance": state["drain_tolerance"], "options": self.options}


def table_columns(axes) -> list[str]:
    return [*axes, *RESULT_COLUMNS]


def load_grid(path: str | Path, resolve_model=None) -> Grid:
    """Read and check a grid file; a ValueError names the file, the field and the value.

    resolve_model: name or path -> model config (`lshsim.models.load_model`, which `lshsim sweep`
    passes: this module sits below the model catalog and does not import it).

    Schema (data/sweeps/README.md): `grid:` a mapping axis -> value or list of values (`model` and
    `cluster` required); `options:` short names of `OPTION_NAMES` (default all; baseline is always
    run, the speedups are over it); `name:` and `description:` free text.
    """
    from lshsim.readers import load_yaml

    path = Path(path)
    source = path.name
    data = load_yaml(path, source=source, what="grid file")
    if not isinstance(data, dict):
        raise ValueError(f"{source}: the top level must be a mapping (grid:, options:), got {type(data).__name__}")
    unknown = sorted(set(data) - {"name", "description", "grid", "options"})
    if unknown:
        raise ValueError(f"{source}: unknown field {unknown[0]!r}; a grid file has name, description, grid, options")
    block = data.get("grid")
    if not isinstance(block, dict) or not block:
        raise ValueError(f"{source}: grid={block!r} must be a mapping of axes to values, e.g. "
                         "{model: gpt-moe-15b, cluster: lshmoe-a100-4x8, nic_gbps: [100, 200]}")
    axes: dict[str, list] = {}
    routers = block.get("router", "topk")
    routers = routers if isinstance(routers, list) else [routers]
    for name, values in block.items():
        if name not in AXES:
            raise ValueError(f"{source}: grid.{name}: unknown axis; known: {', '.join(AXES)}")
        listed = values if isinstance(values, list) else [values]
        if not listed:
            raise ValueError(f"{source}: grid.{name}=[] has no values")
        checked = []
        for i, value in enumerate(listed):
            where = f"grid.{name}[{i}]" if isinstance(values, list) else f"grid.{name}"
            try:
                checked.append(AXES[name].check(value))
                if name == "router_options":    # the options are the grid's routers' (node_limited: max_nodes)
                    _check_router_options(routers, value)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{source}: {where}={value!r} {error}") from None
            kind = bounds.kind_of(name)     # nodes, gpus_per_node, nic_gbps, oversubscription, ...: lshsim.bounds
            if kind is not None:
                bounds.check(kind, where, value, source)
        if len(set(map(format_value, checked))) != len(checked):
            raise ValueError(f"{source}: grid.{name}={values!r} lists a value twice")
        axes[name] = checked
    for name in REQUIRED_AXES:
        if name not in axes:
            raise ValueError(f"{source}: grid.{name} is required (one value or a list)")
    axes = {"model": axes.pop("model"), "cluster": axes.pop("cluster"), **axes}
    if "drain_tolerance" in axes and "exact" in axes.get("fidelity", []):
        raise ValueError(f"{source}: grid.drain_tolerance goes with fidelity tolerance (or auto), "
                         "not with grid.fidelity=exact")
    options = data.get("options", list(OPTION_NAMES))
    if not isinstance(options, list) or not options:
        raise ValueError(f"{source}: options={options!r} must be a list of {', '.join(OPTION_NAMES)}")
    for i, option in enumerate(options):
        if option not in OPTION_NAMES:
            raise ValueError(f"{source}: options[{i}]={option!r} is not an option; known: {', '.join(OPTION_NAMES)}")
    options = tuple(dict.fromkeys(["baseline", *options]))
    for text in ("name", "description"):
        if text in data and not isinstance(data[text], str):
            raise ValueError(f"{source}: {text}={data[text]!r} must be text")
    grid = Grid(axes, options, source, path.resolve().parent, data.get("name", path.stem), resolve_model)
    for field_name, getter in (("model", grid.model), ("cluster", grid.spec)):
        for i, value in enumerate(axes[field_name]):     # unknown names and bad files: before any work
            try:
                getter(value)
            except (ValueError, OSError) as error:
                where = f"grid.{field_name}[{i}]" if isinstance(block[field_name], list) else f"grid.{field_name}"
                raise ValueError(f"{source}: {where}={value!r}: {_one_line(error)}") from None
    return grid


def _one_line(error: BaseException) -> str:
    from lshsim.cli import one_line

    return one_line(error)


# ---- one point (runs on a worker) ----------------------------------------------------------------
def _short(label: str) -> str:
    return label.split(":")[0].split()[0]


def _overridden_spec(spec: dict, source: str, overrides: dict) -> dict:
    spec = copy.deepcopy(spec)
    for path, value in overrides.items():
        block = spec
        for key in path[:-1]:
            if not isinstance(block.get(key), dict):
                raise ValueError(f"{source}: has no {key}: block to set {'.'.join(path)}={value!r} in "
                                 "(a single-node cluster has no NICs)")
            block = block[key]
        block[path[-1]] = value
    calibration = spec.get("calibration") or {}
    if ("inter", "nic_gbps") in overrides and isinstance(calibration, dict) and "nic_Bps" in calibration:
        raise ValueError(f"{source}: calibration.nic_Bps={calibration['nic_Bps']!r} sets the NIC bandwidth, so "
                         "inter.nic_gbps would change nothing; sweep a topology without it")
    return spec


def _selected(task: dict):
    from lshsim.sim.moe_step import StepConfig

    return StepConfig(**task["config"])


def expected_options(task: dict) -> list[tuple[str, object]]:
    """(label, StepConfig) of the point's options: `plan_options` of its config, kept where the short
    name is in the grid's options (before its duplicates are dropped: a grid's lsh_rate makes "yours"
    the same as "lsh", and options [baseline, lsh] then lost the lsh rows), baseline first."""
    from lshsim.sim.moe_step import plan_options

    return plan_options(_selected(task), keep=lambda label: _short(label) in task["options"])


def evaluate_point(task: dict, on_phase=None) -> list[dict]:
    """Plan one grid point: one row per option (`RESULT_COLUMNS` without the axes). Never raises for an
    error of the point: its rows then carry the error text and no numbers (a bad point must not stop
    the sweep). on_phase(index, count, label, phase): `compare_options`' progress, passed on."""
    started = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        options = expected_options(task)
    except Exception as error:                       # noqa: BLE001 (a bad config: the point's error)
        return [_error_row("baseline", "", task, started, worker, error)]
    try:
        from lshsim.cli.plan import _world_size
        from lshsim.sim.moe_step import compare_options
        from lshsim.topology import build_topology

        spec = _overridden_spec(task["spec"], task["source"], task["topology"])
        _refuse_if_too_large(task["model"], spec, task["source"], options)
        graph = build_topology(spec, source=task["source"])
        fidelity = _plan_fidelity(task["fidelity"], task["drain_tolerance"], _world_size(graph))
        marks = []

        def progress(index, count, label, phase):
            if phase == "done":
                marks.append(time.perf_counter())
            if on_phase is not None:
                on_phase(index, count, label, phase)

        rows = compare_options(task["model"], graph, options, drain_tolerance=fidelity["drain_tolerance"],
                               estimate=fidelity["mode"] == "estimate", progress=progress)
    except Exception as error:                       # noqa: BLE001 (any error of this point is its row)
        return [_error_row(_short(label), _describe(config), task, started, worker, error)
                for label, config in options]
    point_s = time.perf_counter() - started
    out = []
    for i, row in enumerate(rows):
        b = row["breakdown"]
        out.append({"gpus": b["world_size"], "cluster_nodes": row["result"].trace.meta["cluster"]["nodes"],
                    "option": _short(row["label"]), "description": row["description"],
                    "step_s": b["step_s"], "a2a_s": b["a2a_s"], "exposed_a2a_s": b["exposed_a2a_s"],
                    "a2a_share": b["a2a_share"], "speedup": row["speedup"],
                    "dispatch_bytes_per_layer": b["dispatch_bytes_per_layer"],
                    "inter_node_bytes_per_layer": b["inter_node_bytes_per_layer"],
                    "dropped_fraction": b["dropped_fraction"], "fidelity": fidelity["mode"],
                    "drain_tolerance": fidelity["drain_tolerance"], "fidelity_chosen": fidelity["chosen"],
                    "wall_s": (marks[i] - (marks[i - 1] if i else started)) if i < len(marks) else "",
                    "point_wall_s": point_s, "worker": worker, "error": ""})
    return out


def _plan_fidelity(mode: str, drain_tolerance: float | None, world_size: int) -> dict:
    """`lshsim plan`'s fidelity for a point (`lshsim.cli.plan._fidelity`). plan's automatic choice
    is `--fidelity auto` (or, before it had that value, no --fidelity at all): the first of the two
    that gives a level is it."""
    from types import SimpleNamespace

    from lshsim.cli.plan import _fidelity

    for value in (mode,) if mode != "auto" else ("auto", None):
        fidelity = _fidelity(SimpleNamespace(fidelity=value, drain_tolerance=drain_tolerance), world_size)
        if fidelity["mode"] in ("exact", "tolerance", "estimate"):
            return fidelity
    raise ValueError(f"fidelity {mode!r}: lshsim plan gave no level for it")


def _describe(config) -> str:
    from lshsim.sim.moe_step import describe

    return describe(config)


def _error_row(option: str, description: str, task: dict, started: float, worker: str, error: BaseException) -> dict:
    row = {name: "" for name in RESULT_COLUMNS}
    world = _world(task)
    row.update(gpus=world if world is not None else "", option=option, description=description,
               point_wall_s=time.perf_counter() - started, worker=worker,
               error=f"{type(error).__name__}: {_one_line(error)}")
    return row


def _world(task: dict) -> int | None:
    from lshsim.cli.simulate import world_of_spec

    try:
        return world_of_spec(_overridden_spec(task["spec"], task["source"], task["topology"]))
    except ValueError:
        return None


def _refuse_if_too_large(model, spec: dict, source: str, options: list) -> None:
    """`lshsim plan`'s memory refusal (`lshsim.limits.estimate_plan`) for a spec dict."""
    from lshsim.cli.simulate import world_of_spec
    from lshsim.limits import estimate_plan, refuse_if_too_large
    from lshsim.sim.moe_step import draws_whole_hidden, model_dict

    world = world_of_spec(spec)
    if world is None or not options:
        return
    m, config = model_dict(model), options[0][1]
    estimate = estimate_plan(world_size=world, num_layers=m["num_layers"], d_model=m["d_model"],
                             num_experts=m["num_experts"], k=m["top_k"],
                             tokens_per_gpu=config.tokens_per_gpu or m["tokens_per_gpu"],
                             max_routed_tokens=config.max_routed_tokens, options=len(options),
                             whole_hidden=any(draws_whole_hidden(option) for _, option in options))
    refuse_if_too_large(f"{m['name']} on {source} ({world} GPUs)", estimate,
                        hint="use a smaller model or cluster, or a lower max_routed_tokens")


# ---- the table -----------------------------------------------------------------------------------
def _csv_text(columns: list[str], rows: list[dict], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="raise")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({name: format_value(row[name]) if not isinstance(row[name], str) else row[name]
                         for name in columns})
    return buffer.getvalue()


def read_table(path: str | Path, columns: list[str]) -> tuple[list[dict], int]:
    """The rows of an existing results table (all values as text) and how many trailing bytes were
    cut: a last line without its newline (a write that an interruption cut short) is dropped. A table
    whose header differs from `columns` is refused (ValueError naming the file and the columns)."""
    from lshsim.readers import read_text

    path = Path(path)
    text = read_text(path, "results table")    # not UTF-8, a folder: one line naming the file
    if not text:
        return [], 0
    cut = 0
    if not text.endswith("\n"):
        keep = text.rfind("\n") + 1
        cut, text = len(text) - keep, text[:keep]
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return [], cut
    if header != columns:
        raise ValueError(f"{path}: its columns {','.join(header)} are not this grid's "
                         f"{','.join(columns)}; give another --out, or remove the file to start over")
    rows = []
    for number, values in enumerate(reader, start=2):
        if len(values) != len(columns):
            raise ValueError(f"{path}:{number}: {len(values)} fields, the header has {len(columns)}")
        rows.append(dict(zip(columns, values)))
    return rows, cut


def _complete_points(rows: list[dict], axes: list[str], expected: dict, retry_errors: bool) -> tuple[dict, int]:
    """key -> rows of the points whose rows are all in `rows` (every expected option once, or error
    rows, unless retry_errors); the count of rows dropped (incomplete points, or errors to retry)."""
    by_key: dict[tuple, list[dict]] = {}
    for row in rows:
        by_key.setdefault(tuple(row[name] for name in axes), []).append(row)
    done, dropped = {}, 0
    for key, group in by_key.items():
        options = [row["option"] for row in group]
        failed = any(row["error"] for row in group)
        want = expected.get(key)
        complete = want is None or options == want
        if complete and not (failed and retry_errors):
            done[key] = group
        else:
            dropped += len(group)
    return done, dropped


# ---- running -------------------------------------------------------------------------------------
def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(round(width * done / total)) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _local_results(tasks: list[dict], jobs: int, progress=None):
    """(task, rows) as points finish: in this process (jobs=0; `progress` then gets a line every
    few seconds on the option and phase being simulated) or a pool of `jobs` processes."""
    if jobs == 0:
        for number, task in enumerate(tasks, start=1):
            def on_phase(index, count, label, phase, number=number):
                if progress is not None:
                    progress.tick(f"point {number}/{len(tasks)}: option {index}/{count} {label}: {phase}")
            yield task, evaluate_point(task) if progress is None else evaluate_point(task, on_phase)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker (forking a process that has run torch can hang)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(jobs, os.getpid()))
    try:
        futures = {pool.submit(evaluate_point, task): task for task in tasks}
        yield from _as_finished(futures, as_completed)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _as_finished(futures: dict, as_completed):
    """(task, rows) for {future: task} as they finish (`as_completed` of concurrent.futures or of
    Dask); a future that raised (a worker that died) gives the point's error rows."""
    for future in as_completed(futures):
        task = futures[future]
        try:
            rows = future.result()
        except Exception as error:                 # noqa: BLE001 (a worker that died: the point's error)
            rows = _failed(task, error)
        yield task, rows


def _worker_init(jobs: int, parent_pid: int | None = None) -> None:
    """A pool worker: share the cores between the workers (torch's threads), and end with the sweep
    (`lshsim.workers.die_with_parent`): a sweep killed by SIGTERM or SIGKILL runs no clean-up, and its idle workers
    used to stay behind, waiting on the dead sweep's queue, for good."""
    if parent_pid is not None:
        from lshsim.workers import die_with_parent

        die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def _failed(task: dict, error: BaseException) -> list[dict]:
    started = time.perf_counter()
    try:
        options = [(_short(label), _describe(config)) for label, config in expected_options(task)]
    except Exception:                               # noqa: BLE001
        options = [("baseline", "")]
    return [_error_row(option, description, task, started, "", error) for option, description in options]


def _dask_results(tasks: list[dict], jobs: int, scheduler: str | None, progress):
    """(task, rows) as points finish on a Dask cluster: the one at `scheduler`, or a LocalCluster of
    `jobs` worker processes started here."""
    from distributed import Client, LocalCluster, as_completed
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=max(1, jobs), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        progress.line(f"started a local Dask cluster of {max(1, jobs)} worker processes at {cluster.scheduler_address}")
    try:
        try:
            client = Client(scheduler if scheduler is not None else cluster, timeout="30s")
        except (OSError, TimeoutError) as error:
            raise ValueError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler there "
                             f"({_one_line(error)})") from None
        with client:
            futures = {client.submit(evaluate_point, task, pure=False): task for task in tasks}
            try:
                yield from _as_finished(futures, as_completed)
            finally:
                client.cancel(list(futures))
    finally:
        if cluster is not None:
            cluster.close()


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """A tcp:// scheduler address that nothing listens at is refused at once (ValueError), not after
    the client's connection timeout."""
    if not address.startswith("tcp://"):
        return
    host, _, port = address[len("tcp://"):].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--scheduler {address}: expected tcp://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ValueError(f"--scheduler {address}: no Dask scheduler answers there "
                         f"({error.strerror or error})") from None


def run_sweep(grid: Grid, out: str | Path, *, engine: str = "local", jobs: int = 1, scheduler: str | None = None,
              retry_errors: bool = False, progress=None) -> dict:
    """Run every point of `grid` not already in the table `out`, appending its rows as it finishes,
    then rewrite the table in grid order. Returns a summary: points, skipped, run, failed, rows.

    progress: a `lshsim.cli._progress.ProgressLines` (default: a quiet one). A KeyboardInterrupt
    stops the work and passes through, leaving every finished point in the table.
    """
    from lshsim.cli._progress import ProgressLines, estimate_left_s
    from lshsim.cli.simulate import world_of_spec
    from lshsim.io import append_durably, atomic_output, write_text_atomically

    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: one of {', '.join(ENGINES)}")
    if engine == "local" and scheduler is not None:
        raise ValueError("--scheduler goes with --engine dask")
    if engine == "dask":                          # before anything is written
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ValueError("--engine dask needs Dask's distributed scheduler: pip install 'lshsim[dask]'") from None
        if scheduler is not None:
            _reachable(scheduler)
    progress = progress or ProgressLines("sweep", quiet=True)
    out = Path(out)
    axes, columns = list(grid.axes), grid.columns()
    points = grid.points()
    tasks = {point.key(): grid.task(point) for point in points}
    expected = {}
    for key, task in tasks.items():
        try:
            expected[key] = [_short(label) for label, _ in expected_options(task)]
        except Exception:                           # noqa: BLE001 (the point's error row says why)
            expected[key] = ["baseline"]
    done: dict[tuple, list[dict]] = {}
    if out.exists():
        rows, cut = read_table(out, columns)
        done, dropped = _complete_points(rows, axes, expected, retry_errors)
        kept = [row for group in done.values() for row in group]
        write_text_atomically(out, _csv_text(columns, kept, header=True))
        in_grid = sum(1 for key in done if key in tasks)
        progress.line(f"resuming {out}: {in_grid} of {len(points)} points done"
                      + (f", {dropped} rows of unfinished or failed points dropped" if dropped else "")
                      + (f", a cut last line ({cut} bytes) dropped" if cut else ""))
    else:
        write_text_atomically(out, _csv_text(columns, [], header=True))
    todo = [tasks[point.key()] for point in points if point.key() not in done]
    sizes = {task["key"]: world_of_spec(_overridden_spec_or(task)) or 1 for task in todo}
    progress.line(f"{len(points)} points x {len(grid.options)} options on engine {engine}"
                  + (f" ({jobs} jobs)" if engine == "local" else "") + f"; {len(todo)} to run")
    if engine == "local":
        results = _local_results(todo, jobs, progress)
    else:
        results = _dask_results(todo, jobs, scheduler, progress)
    finished, failed, timings, first_start = 0, 0, [], math.inf
    by_key = {point.key(): point for point in points}
    started = progress.elapsed_s()
    try:
        with append_durably(out) as table, _closing(results):
            for task, rows in results:
                point = by_key[task["key"]]
                for row in rows:
                    row.update({name: value for name, value in zip(axes, task["key"])})
                table.write(_csv_text(columns, rows, header=False))   # one write per point, fsynced
                done[task["key"]] = [{name: _text(row[name]) for name in columns} for row in rows]
                finished += 1
                failed += any(row["error"] for row in rows)
                timings.append((sizes[task["key"]], progress.elapsed_s() - started))
                left = [sizes[t["key"]] for t in todo if t["key"] not in done]
                eta = None
                if left and jobs > 0:            # parallel: the pace since the workers started work
                    first_start = min(first_start, progress.elapsed_s() - _float(rows[0]["point_wall_s"]))
                    eta = (progress.elapsed_s() - max(started, first_start)) / finished * len(left)
                elif left:
                    eta = estimate_left_s(_per_point(timings), left)
                status = "failed: " + rows[0]["error"] if any(row["error"] for row in rows) else \
                    f"{len(rows)} options, {float(rows[0]['point_wall_s']):.1f} s"
                progress.line(f"{_bar(finished, len(todo))} {finished}/{len(todo)} "
                              f"{point.label(grid.swept or axes[:2])}: {status}", left_s=eta)
    except KeyboardInterrupt:
        progress.line(f"interrupted: {sum(1 for key in done if key in tasks)} of {len(points)} points in {out}; "
                      "run the same command again to resume")
        raise
    ordered = [row for point in points for row in done.get(point.key(), [])]
    others = [row for key, group in done.items() if key not in tasks for row in group]
    with atomic_output(out) as handle:
        handle.write(_csv_text(columns, ordered + others, header=True))
    return {"points": len(points), "skipped": len(points) - len(todo), "run": finished, "failed": failed,
            "rows": len(ordered) + len(others), "out": str(out), "rows_data": ordered}


def _closing(generator):
    import contextlib

    return contextlib.closing(generator)


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _text(value) -> str:
    return value if isinstance(value, str) else format_value(value)


def _per_point(timings: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(size, seconds of that point) from (size, cumulative seconds)."""
    out, last = [], 0.0
    for size, at in timings:
        out.append((size, at - last))
        last = at
    return out


def _overridden_spec_or(task: dict) -> dict:
    try:
        return _overridden_spec(task["spec"], task["source"], task["topology"])
    except ValueError:
        return task["spec"]


# ---- plots ---------------------------------------------------------------------------------------
def plot_sweep(rows: list[dict], path: str | Path, title: str) -> None:
    """Two panels: the speedup of each option over the baseline against the NIC rate, and against the
    cluster size (GPUs). Each line is the median over the grid's other points at that x, the band
    their range; the NIC panel leaves out single-node points (no NIC on their path). matplotlib's Agg
    canvas, no pyplot: the process's backend is left as it was."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lshsim.cli._render import save_figure

    good = [row for row in rows if not row["error"] and row["option"] != "baseline"]
    fig = Figure(figsize=(12.0, 4.8))
    FigureCanvasAgg(fig)
    panels = (("nic_gbps", "NIC rate, Gb/s per NIC (multi-node points)"), ("gpus", "cluster size, GPUs"))
    for position, (column, xlabel) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, position)
        # a NIC's rate changes nothing on one node: those points would only flatten the NIC panel
        ok = [row for row in good if column != "nic_gbps" or int(row["cluster_nodes"]) > 1]
        xs = sorted({float(row[column]) for row in ok if column in row and row[column] not in ("", None)})
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="baseline")
        ax.set(xlabel=xlabel, ylabel="speedup over the baseline (step time ratio)")
        if len(xs) < 2:
            ax.text(0.5, 0.5, f"{xlabel.split(',')[0]} not swept" + (f" (one value: {xs[0]:g})" if xs else ""),
                    transform=ax.transAxes, ha="center", va="center", color="dimgray")
            continue
        spread = False
        for option in dict.fromkeys(row["option"] for row in ok):
            median, low, high = [], [], []
            for x in xs:
                values = sorted(float(row["speedup"]) for row in ok
                                if row["option"] == option and column in row and float(row[column]) == x)
                if not values:
                    median.append(math.nan), low.append(math.nan), high.append(math.nan)
                    continue
                mid = len(values) // 2
                median.append(values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2)
                low.append(values[0]), high.append(values[-1])
                spread = spread or len(values) > 1
            line, = ax.plot(xs, median, marker="o", linewidth=2, label=option)
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.set_title(f"speedup against {xlabel.split(',')[0]}" + (" (median; band: range over the other axes)"
                                                                    if spread else ""), fontsize=10)
        ax.legend(fontsize=8, frameon=True)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
