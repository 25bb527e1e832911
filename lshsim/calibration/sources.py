"""Calibration sources: adapters from measured files to one `CalibrationInput`.

Registry `SOURCES` {name: read}. The contract of a source:

    read(paths: Sequence[str | Path], **options) -> CalibrationInput

It receives the files to read (one or more; a source that reads a single file refuses more)
and its own keyword options, and returns ONE `CalibrationInput` (`lshsim.calibration.inputs`):
the all-to-alls of equal splits as `A2APoint`s (the alpha-beta and bus-bandwidth-curve fits),
skewed all-to-alls with their traffic matrices as `A2ACase`s (the headroom and cap fit),
point-to-point sends as `P2PPoint`s, the achieved compute rates, the GPU name and a provenance
dict. It raises ValueError naming the file for anything it cannot read. It measures nothing and
imports no torch. A new source is one function and one entry: `SOURCES["mine"] = read_mine`.
`read_source(name, paths, options)` is the one call that runs a registered source (what
`lshsim calibrate --source NAME FILE... --source-option KEY=VALUE` does; its `--nccl-tests`,
`--from-raw` and `--from-traces` are shorthands for the shipped sources): it refuses an unknown
name (listing the known ones) and an option the source does not take (listing the ones it does).

Shipped:
- "microbenchmarks": the raw JSON of `executor calibrate --raw` (all-to-all sweep, p2p, FFN
  and copy rates);
- "traces": measured executor traces (`executor run`) of calibration workloads: the four
  all-to-alls of each, read by `trace_a2a_phases` (the same reader `lshsim validate` uses);
  uniform workloads (meta.workload.skew 0 or absent) give points, skewed ones give cases;
- "nccl-tests": the output of nccl-tests' `alltoall_perf` (`parse_nccl_tests`).
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lshsim import bounds
from lshsim.calibration.fits import CALIBRATED_GPUS, check_gpu_name, gpu_key
from lshsim.calibration.inputs import A2ACase, A2APoint, CalibrationInput, P2PPoint
from lshsim.calibration.model import a2a_bytes_per_rank
from lshsim.readers import load_json, read_text

__all__ = ["SOURCES", "read_source", "TraceA2APhase", "trace_a2a_phases", "trace_skew", "trace_algorithm", "read_traces",
           "read_microbenchmarks", "microbenchmark_input", "read_nccl_tests", "parse_nccl_tests", "NcclTestsRun",
           "check_microbenchmarks"]


# ---- executor traces ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TraceA2APhase:
    """One all-to-all phase of a measured trace: phase name, direction, its (W, W) traffic, and the
    measured median seconds (None if the trace did not time it)."""

    phase: str
    direction: str
    traffic: np.ndarray
    measured_s: float | None


#: (phase, direction, the meta["measured"] matrix it moves): the dispatch's gradient returns along
#: the combine's matrix and the combine's along the dispatch's.
_A2A_PHASES = (("dispatch_a2a", "forward", "traffic_bytes"), ("combine_a2a", "forward", "combine_traffic_bytes"),
               ("dispatch_a2a", "backward", "combine_traffic_bytes"), ("combine_a2a", "backward", "traffic_bytes"))


def trace_a2a_phases(meta: dict, world_size: int | None = None) -> list[TraceA2APhase]:
    """The four all-to-all phases of a measured executor trace, from its `meta`: dispatch forward
    moves meta["measured"]["traffic_bytes"], combine forward "combine_traffic_bytes", and backward
    each moves the other's matrix. `world_size` (default meta.workload.world_size) checks the shapes.

    >>> meta = {"workload": {"world_size": 2}, "measured": {"traffic_bytes": [[0, 4], [2, 0]],
    ...         "combine_traffic_bytes": [[0, 2], [4, 0]], "phases_s": {"forward": {"dispatch_a2a": 1e-3}}}}
    >>> [(p.phase, p.direction, float(p.traffic[0, 1]), p.measured_s) for p in trace_a2a_phases(meta)]
    [('dispatch_a2a', 'forward', 4.0, 0.001), ('combine_a2a', 'forward', 2.0, None), ('dispatch_a2a', 'backward', 2.0, None), ('combine_a2a', 'backward', 4.0, None)]
    """
    measured = meta.get("measured")
    if measured is None:
        raise ValueError("not a measured executor trace (meta['measured'] is missing)")
    world = int(meta["workload"]["world_size"]) if world_size is None else int(world_size)
    matrices = {}
    for key in ("traffic_bytes", "combine_traffic_bytes"):
        if key not in measured:
            raise ValueError(f"the measured trace lacks meta['measured'][{key!r}] (write it with executor run)")
        matrix = np.asarray(measured[key], dtype=float)                               # (W, W) bytes
        if matrix.shape != (world, world):
            raise ValueError(f"meta['measured'][{key!r}] has shape {matrix.shape}, expected ({world}, {world})")
        matrices[key] = matrix
    phases_s = measured.get("phases_s", {})
    out = []
    for phase, direction, key in _A2A_PHASES:
        seconds = phases_s.get(direction, {}).get(phase)
        out.append(TraceA2APhase(phase, direction, matrices[key], None if seconds is None else float(seconds)))
    return out


def trace_skew(meta: dict) -> float:
    """meta.workload.skew of a measured trace; 0 when absent or None."""
    skew = meta.get("workload", {}).get("skew")
    return 0.0 if skew is None else float(skew)


def trace_algorithm(meta: dict) -> str:
    """The simulator's all-to-all algorithm for the trace's workload (its `alltoall` field, default
    direct), by its canonical name in `lshsim.algorithms`."""
    from lshsim.algorithms import canonical_algorithm   # no numpy or torch: keeps this package light

    return canonical_algorithm(meta.get("workload", {}).get("alltoall") or "direct", side="executor")


def _trace_meta(path) -> dict:
    from lshsim.sim.trace import Trace     # lazily: lshsim.sim imports this package

    return Trace.from_json(path).meta


def _timed_phases(path, meta) -> list[TraceA2APhase]:
    try:
        phases = trace_a2a_phases(meta)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return [p for p in phases if p.measured_s is not None]


def read_traces(paths, *, split_skewed: bool = True, gpu: str | None = None,
                world_size: int | None = None) -> CalibrationInput:
    """Source "traces": every timed all-to-all of measured executor traces.

    Each all-to-all becomes an `A2APoint` with S = max over ranks of max(bytes sent to others,
    bytes received from others) and M = S W / (W - 1) (`a2a_bytes_per_rank`), t = the measured
    median. With `split_skewed` (default) only the uniform workloads' traces (skew 0 or absent)
    give points and the skewed ones give `A2ACase`s (their matrices, seconds > 0); without it
    every trace gives points. `gpu` (--gpu) names the GPU where the traces' provenance names none
    or one no calibration knows (noted in the provenance), and must agree with a known one
    (`given_gpu`); `world_size` (--world-size), where given, must be the traces'. A trace of a
    held-out workload (meta.workload.role "held-out") is refused: a calibration is fitted on
    calibration workloads only, so that the held-out ones measure the predictions. A file given
    twice (under any name) is refused: its all-to-alls would weigh twice in the fits.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("traces: no trace files given")
    if gpu is not None:
        check_gpu_name(gpu, "gpu")
    if not isinstance(split_skewed, bool):
        raise ValueError(f"split_skewed={split_skewed!r} must be true or false")
    seen: dict = {}
    for path in paths:     # one file twice would count its all-to-alls twice in the fits
        key = Path(path).resolve()
        if key in seen:
            raise ValueError(f"{path}: the trace is given twice ({seen[key]}, {path}); give each trace once")
        seen[key] = path
    metas = {path: _trace_meta(path) for path in paths}
    for path, meta in metas.items():
        role = meta.get("workload", {}).get("role")
        if role == "held-out":
            raise ValueError(f"{path}: a trace of the held-out workload {meta['workload'].get('name')!r}; "
                             f"a calibration is fitted on calibration workloads only")
    if split_skewed:
        uniform = [p for p in paths if trace_skew(metas[p]) == 0]
        skewed = [p for p in paths if trace_skew(metas[p]) != 0]
        if not uniform:
            raise ValueError("every trace is of a skewed workload (meta.workload.skew > 0); the bus bandwidth "
                             "curve needs uniform ones (skew 0)")
    else:
        uniform, skewed = paths, []
    points = []
    for path in uniform:
        meta = metas[path]
        if "measured" not in meta:
            raise ValueError(f"{path}: not a measured executor trace (meta['measured'] is missing)")
        world = int(meta["workload"]["world_size"])
        if world < 2:
            raise ValueError(f"{path}: a trace of {world} rank has no all-to-all to calibrate on")
        for phase in _timed_phases(path, meta):
            points.append(A2APoint(int(round(a2a_bytes_per_rank(phase.traffic))), phase.measured_s, world))
    if not points:
        raise ValueError("the traces hold no all-to-all phase")
    worlds = {p.world_size for p in points}
    if len(worlds) != 1:
        raise ValueError(f"traces of {sorted(worlds)} ranks: calibrate one world size at a time")
    world = next(iter(worlds))
    cases = []
    for path in skewed:
        meta = metas[path]
        if int(meta["workload"]["world_size"]) != world:
            raise ValueError(f"{path}: a trace of {meta['workload']['world_size']} ranks; calibrating {world}")
        cases.extend(A2ACase(p.traffic, p.measured_s, trace_algorithm(meta), Path(path).name)
                     for p in _timed_phases(path, meta) if p.measured_s > 0)
    if skewed and not cases:
        raise ValueError("the skewed traces hold no all-to-all phase")
    first = metas[uniform[0]]["provenance"]
    given_world_size(world_size, world, uniform[0], f"the traces' meta.workload.world_size={world}")
    name, note = given_gpu(gpu, first.get("gpu"), uniform[0], "the trace's meta.provenance.gpu",
                           device_type=first.get("device_type"))
    provenance = {"a2a_fit": "in situ, from executor traces", "traces": [Path(t).name for t in uniform],
                  **({"skewed_traces": [Path(t).name for t in skewed]} if skewed else {}),
                  "trace_provenance": {**{k: first.get(k) for k in ("gpu", "count", "torch", "nccl", "date")},
                                       **({"nccl_env": dict(first["nccl_env"])} if first.get("nccl_env") else {})},
                  **({"overrides": [note]} if note else {})}
    record = {"world_size": world, "a2a": [{"bytes_per_rank": p.bytes_per_rank, "time_s": p.time_s} for p in points],
              "p2p": [], "ffn": None, "hbm": None}
    return CalibrationInput(source="traces", world_size=world, gpu=name, points=tuple(points),
                            cases=tuple(cases), provenance=provenance, record=record)


# ---- the executor's microbenchmarks ----------------------------------------------------------------
def microbenchmark_input(results: dict, provenance: dict, source: str = "microbenchmarks") -> CalibrationInput:
    """A `CalibrationInput` of the executor's microbenchmark results ({"world_size", "a2a":
    [{"bytes_per_rank", "time_s", ...}], "p2p": [{"bytes", "time_s", "Bps"}], "ffn": {"flops_per_s",
    ...} | None, "hbm": {"Bps", ...} | None}), with the GPU name of `provenance`."""
    world = results.get("world_size")
    points = tuple(A2APoint(p["bytes_per_rank"], p["time_s"], world) for p in results.get("a2a") or [])
    p2p = tuple(P2PPoint(p["bytes"], p["time_s"]) for p in results.get("p2p") or [] if p.get("Bps"))
    ffn, hbm = results.get("ffn"), results.get("hbm")
    return CalibrationInput(source=source, world_size=world, gpu=provenance.get("gpu"), points=points, p2p=p2p,
                            expert_flops=ffn["flops_per_s"] if ffn else None, hbm_Bps=hbm["Bps"] if hbm else None,
                            provenance=dict(provenance), record=dict(results))


def _one_path(paths, source: str) -> Path:
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if len(paths) != 1:
        raise ValueError(f"{source}: reads one file, got {len(paths)}")
    return Path(paths[0])


def given_world_size(world_size, file_world: int, where: str, what: str) -> None:
    """Refuse a `world_size` option (--world-size) that contradicts the ranks a file states
    (`what`, e.g. "results.world_size=2"): the file's count is what was measured, an override
    would fit its times as another world's. None (not given) passes."""
    if world_size is None:
        return
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise ValueError(f"world_size={world_size!r} must be an integer >= 2")
    if world_size != file_world:
        raise ValueError(f"{where}: world_size={world_size} (--world-size) contradicts {what}: leave --world-size "
                         f"out or give {file_world}")


def given_gpu(gpu, file_gpu, where: str, what: str, *, device_type=None) -> tuple[str | None, str | None]:
    """(the GPU name to calibrate, a note or None) for a `gpu` option (--gpu) beside the device a
    file names (`file_gpu`, `what` says where it is read). Both known GPUs (`gpu_key`): they must
    be the same GPU (the file's fuller name is kept); a file of a CPU run (`device_type` "cpu")
    refuses any; a file naming no device, or one no calibration knows, takes the option, and the
    note says so (it goes into the provenance and the summary)."""
    if gpu is None:
        return file_gpu, None
    check_gpu_name(gpu, "gpu")
    key, file_key = gpu_key(gpu), gpu_key(file_gpu)
    if file_key is not None:
        if key != file_key:
            raise ValueError(f"{where}: gpu={gpu!r} (--gpu) contradicts {what} {file_gpu!r} ({file_key}): leave "
                             f"--gpu out or give {file_key}")
        return file_gpu, None
    if device_type == "cpu":
        raise ValueError(f"{where}: gpu={gpu!r} (--gpu): the file was measured on the CPU (provenance.device_type "
                         f"'cpu'): its rates are a CPU's, not an {key.upper()}'s; leave --gpu out")
    return gpu, (f"GPU {gpu} from --gpu ({what} {file_gpu!r} is not a GPU a calibration knows)" if file_gpu
                 else f"GPU {gpu} from --gpu ({what} is not given)")


def _fail(field: str, value, why: str) -> ValueError:
    text = repr(value)
    return ValueError(f"{field}={text if len(text) <= 80 else text[:77] + '...'} {why}")


def _real(field: str, value, *, positive: bool = True, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= 0 if positive else value < 0) or (maximum is not None and value > maximum):
        raise _fail(field, value, f"must be a finite number {'> 0' if positive else '>= 0'}"
                                  + (f" and <= {maximum:g}" if maximum is not None else ""))
    return bounds.check_field(field, value)       # a rate, a FLOP rate: lshsim.bounds


#: the longest measured time (seconds) of one all-to-all or send a raw record may hold: one hour
MAX_MEASURED_S = bounds.maximum("duration_s")          # 3600, lshsim.bounds
#: the fields of a raw microbenchmark record (`executor calibrate --raw`); a key one typo away from
#: one of these (e.g. "a2ax") is refused rather than ignored (other keys are kept as records)
RAW_TOP_FIELDS = ("results", "provenance", "fit")
RAW_RESULTS_FIELDS = ("world_size", "a2a", "a2a_pow2", "a2a_equal_split", "p2p", "ffn", "hbm", "phases")


def _no_typos(mapping: dict, known, where: str) -> None:
    """Refuse a key of `mapping` that is not in `known` but close to one of them (a typo)."""
    import difflib

    for key in mapping:
        if isinstance(key, str) and key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            if close:
                text = repr(mapping[key])
                raise ValueError(f"{where}{key}={text if len(text) <= 40 else text[:37] + '...'} is not a known "
                                 f"field (did you mean {close[0]}?); known: {', '.join(known)}")


def _integer(field: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(field, value, f"must be an integer >= {minimum}")
    return bounds.check_field(field, value)       # a size, a rank count, a width: lshsim.bounds


def _entries(results: dict, key: str) -> list:
    entries = results.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise _fail(f"results.{key}", entries, "must be a list of mappings")
    return entries


def _need(entry: dict, field: str, key: str):
    if key not in entry:
        raise ValueError(f"{field}.{key} is missing")
    return entry[key]


def check_microbenchmarks(raw: object) -> None:
    """Refuse a raw microbenchmark record (`executor calibrate --raw`) that the fits cannot use,
    naming the field and the value: {"results": {"world_size": int >= 1, "a2a": [{"bytes_per_rank":
    int >= 0, "time_s": > 0}], "p2p": [{"bytes": int >= 1, "time_s": > 0, "Bps": >= 0}], "ffn":
    {"flops_per_s": > 0, "dtype": text, "d_model": int >= 1} | null, "hbm": {"Bps": > 0} | null},
    "provenance": {...}}; every number finite (not a bool, not text), every time_s at most
    MAX_MEASURED_S; a key one typo away from a field (RAW_TOP_FIELDS, RAW_RESULTS_FIELDS) is refused."""
    if not isinstance(raw, dict):
        raise _fail("the file", type(raw).__name__, "must be a JSON object with results and provenance")
    for key in ("results", "provenance"):
        if not isinstance(raw.get(key), dict):
            raise _fail(key, raw.get(key), "must be a mapping (the layout executor calibrate --raw writes)")
    results = raw["results"]
    _no_typos(raw, RAW_TOP_FIELDS, "")
    _no_typos(results, RAW_RESULTS_FIELDS, "results.")
    _integer("results.world_size", _need(results, "results", "world_size"))
    for i, entry in enumerate(_entries(results, "a2a")):
        field = f"results.a2a[{i}]"
        _integer(f"{field}.bytes_per_rank", _need(entry, field, "bytes_per_rank"), 0)
        _real(f"{field}.time_s", _need(entry, field, "time_s"), maximum=MAX_MEASURED_S)
    for i, entry in enumerate(_entries(results, "p2p")):
        field = f"results.p2p[{i}]"
        _integer(f"{field}.bytes", _need(entry, field, "bytes"))
        _real(f"{field}.time_s", _need(entry, field, "time_s"), maximum=MAX_MEASURED_S)
        _real(f"{field}.Bps", _need(entry, field, "Bps"), positive=False)
    ffn, hbm = results.get("ffn"), results.get("hbm")
    if ffn is not None:
        if not isinstance(ffn, dict):
            raise _fail("results.ffn", ffn, "must be a mapping or null")
        _real("results.ffn.flops_per_s", _need(ffn, "results.ffn", "flops_per_s"))
        if not isinstance(_need(ffn, "results.ffn", "dtype"), str):
            raise _fail("results.ffn.dtype", ffn["dtype"], "must be text")
        _integer("results.ffn.d_model", _need(ffn, "results.ffn", "d_model"))
    if hbm is not None:
        if not isinstance(hbm, dict):
            raise _fail("results.hbm", hbm, "must be a mapping or null")
        _real("results.hbm.Bps", _need(hbm, "results.hbm", "Bps"))
    gpu = raw["provenance"].get("gpu")
    if gpu is not None and not isinstance(gpu, str):
        raise _fail("provenance.gpu", gpu, "must be text or null")


def read_microbenchmarks(paths, *, world_size: int | None = None, gpu: str | None = None) -> CalibrationInput:
    """Source "microbenchmarks": the raw JSON `executor calibrate --raw` writes ({"results": ...,
    "provenance": ...}, checked by `check_microbenchmarks`); the provenance gains refit_from (the file).
    `world_size` and `gpu` (--world-size, --gpu) are checked against the file's results.world_size
    and provenance.gpu (`given_world_size`, `given_gpu`): a contradiction is refused, a GPU the
    file does not name is taken and noted."""
    path = _one_path(paths, "microbenchmarks")
    raw = load_json(path, what="microbenchmark file")
    try:
        check_microbenchmarks(raw)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    results, provenance = raw["results"], raw["provenance"]
    given_world_size(world_size, results["world_size"], str(path), f"results.world_size={results['world_size']}")
    name, note = given_gpu(gpu, provenance.get("gpu"), str(path), "the file's provenance.gpu",
                           device_type=provenance.get("device_type"))
    provenance = {**provenance, "refit_from": str(path)}
    if note:
        provenance.update(gpu=name, overrides=[*provenance.get("overrides", []), note])
    return microbenchmark_input(results, provenance)


# ---- nccl-tests output ------------------------------------------------------------------------------
@dataclass(frozen=True)
class NcclTestsRun:
    """Parsed alltoall_perf output: the rows (out-of-place time), the number of ranks, and the GPU
    the `# Rank` lines name (None when they name none, or disagree)."""

    world_size: int
    points: list
    columns: list
    gpu: str | None = None
    devices: tuple = ()              # the distinct device names of the `# Rank` lines
    ranks_from: str = "rank lines"   # where world_size came from: "rank lines", "world_size" or "nGpus"
    per_process: int | None = None   # nThread x nGpus of the first line (ranks per process), if given
    hosts: tuple = ()                # the distinct hosts of the `# Rank` lines (`on HOST device`), first seen first


_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
#: the first token of a data row: a number, or a value that reads as one but is not usable (nan, inf, -5, 1e3)
_ROW_START = re.compile(r"^[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|nan|inf(inity)?)$", re.IGNORECASE)
#: the device name at the end of a `#  Rank  0 Group  0 Pid 123 on host device  0 [0x18] NVIDIA H100 ...` line
_DEVICE = re.compile(r"\[[^\]]*\]\s+(.+?)\s*$")
#: the host of such a line
_HOST = re.compile(r"\bon\s+(\S+)\s+device\b")


#: the longest time of one nccl-tests row that `parse_nccl_tests` accepts (one hour, in us)
NCCL_TESTS_MAX_TIME_US = bounds.maximum("duration_us")  # 3.6e9, lshsim.bounds


def parse_nccl_tests(text: str, world_size: int | None = None, *, source: str = "nccl-tests output") -> NcclTestsRun:
    """Parse nccl-tests `alltoall_perf` output.

    The header row (`#  size  count  type  [redop  root]  time  algbw  busbw  #wrong|error  time ...`)
    names the columns; the first `time` is out-of-place (us). `size` is the bytes per rank (all W
    chunks). The number of ranks is the count of `#  Rank  N ...` device lines, or `nGpus` from
    the first line (times `nThread`: the ranks of one process). A `world_size` given must agree
    with the `# Rank` lines, and without them be a multiple of nThread x nGpus (a run of several
    processes); a contradiction is refused (`ranks_from` says which was used). The GPU is the
    device name of the `# Rank` lines.

    The log must be one run of alltoall_perf: a `# Collective test starting:` line naming another test, a row
    whose redop is not `none` (a reduction's log) and a second header row (two runs pasted together) are refused.
    Every data row must hold a whole size >= 0 (below 2**64) and a finite time > 0 of at most an
    hour (NCCL_TESTS_MAX_TIME_US), and no wrong elements (#wrong 0, where nccl-tests checked them;
    a row of size 0, which nccl-tests prints for -b 0, is skipped); any other row (NaN, negative,
    zero time, text, #wrong > 0) is
    refused with the file's name, the line, the field and the value, so that a log of unusable
    rows never becomes a calibration. Lines that are not rows (NCCL INFO messages) are skipped.
    """
    columns: list[str] | None = None
    rank_lines = 0
    devices: set[str] = set()
    hosts: list[str] = []
    rank_at: dict[int, int] = {}    # rank -> the line of its '# Rank' line
    n_gpus = n_thread = None
    points_raw = []
    header_line = None
    sizes: dict[int, int] = {}      # size -> the line of its row
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped.lstrip("#").split()
            test = re.match(r"#\s*Collective test starting:\s*(\S+)", stripped)
            if test and not test.group(1).startswith("alltoall"):
                raise ValueError(f"{source}:{number}: the log is a run of {test.group(1)}, not alltoall_perf: only "
                                 f"nccl-tests' all-to-all calibrates the all-to-all")
            if body[:2] == ["size", "count"] or (len(body) > 2 and body[0] == "size" and "count" in body):
                if header_line is not None:     # two runs pasted into one file: their rows and ranks would mix
                    raise ValueError(f"{source}:{number}: a second nccl-tests header row (the first at line "
                                     f"{header_line}): the file holds more than one run; give one run per file")
                header_line = number
                columns = body
                if "time" not in columns:
                    raise ValueError(f"{source}:{number}: the header row has no 'time' column: {stripped!r}")
            elif body and body[0] == "Rank":
                rank_lines += 1
                index = re.match(r"Rank\s+(\d+)", " ".join(body))
                if index and header_line is None:   # an edited log (a second run's: its header row is refused)
                    rank = int(index.group(1))
                    if rank in rank_at:
                        raise ValueError(f"{source}:{number}: '# Rank {rank}' is given twice (first at line "
                                         f"{rank_at[rank]}): one run of nccl-tests lists each rank once")
                    rank_at[rank] = number
                device = _DEVICE.search(stripped)
                if device:
                    devices.add(device.group(1))
                host = _HOST.search(stripped)
                if host and host.group(1) not in hosts:
                    hosts.append(host.group(1))
            else:
                match = re.search(r"nGpus\s+(\d+)", stripped)
                if match and n_gpus is None:
                    n_gpus = int(match.group(1))
                    threads = re.search(r"nThread\s+(\d+)", stripped)
                    n_thread = int(threads.group(1)) if threads else 1
            continue
        tokens = stripped.split()
        if columns is None or not _ROW_START.match(tokens[0]):
            continue
        where = f"{source}:{number}"
        if len(tokens) < columns.index("time") + 1:
            raise ValueError(f"{where}: the row has {len(tokens)} fields, the header {len(columns)}: {stripped!r}")
        if "redop" in columns and tokens[columns.index("redop")] != "none":
            raise ValueError(f"{where}: redop={tokens[columns.index('redop')]!r}: an all-to-all reduces nothing "
                             f"(alltoall_perf prints none); this is the log of a reduction (all_reduce_perf, "
                             f"reduce_scatter_perf, ...), not of alltoall_perf")
        size_text, time_text = tokens[columns.index("size")], tokens[columns.index("time")]
        if not re.fullmatch(r"\d+", size_text):
            raise ValueError(f"{where}: size={size_text!r} must be a whole number of bytes >= 0")
        try:
            time_us = float(time_text)
        except ValueError:
            raise ValueError(f"{where}: time={time_text!r} must be a number of microseconds") from None
        size = int(size_text)
        if size >= 2 ** 64:   # nccl-tests prints a size_t
            raise ValueError(f"{where}: size={size_text} must be a whole number of bytes below 2**64")
        if size == 0:
            continue
        if not math.isfinite(time_us) or time_us <= 0 or time_us > NCCL_TESTS_MAX_TIME_US:
            raise ValueError(f"{where}: time={time_text!r} (size {size}) must be a finite number of microseconds > 0 "
                             f"and <= {NCCL_TESTS_MAX_TIME_US:g} (one hour)")
        wrong = columns.index("#wrong") if "#wrong" in columns else None
        if wrong is not None and wrong < len(tokens) and re.fullmatch(r"\d+", tokens[wrong]) and int(tokens[wrong]):
            raise ValueError(f"{where}: #wrong={tokens[wrong]} (size {size}): nccl-tests found wrong elements in "
                             f"this all-to-all's output; a row with #wrong > 0 is not a measurement to fit")
        if size in sizes:     # nccl-tests prints each size once a run: an edited or pasted log
            raise ValueError(f"{where}: size={size} is given twice (first at line {sizes[size]}): one run of "
                             f"nccl-tests times each size once")
        sizes[size] = number
        points_raw.append((size, time_us))
    if columns is None:
        raise ValueError(f"{source}: no nccl-tests header row ('# size count type ... time algbw busbw') found")
    if not points_raw:
        raise ValueError(f"{source}: the nccl-tests output holds no data rows")
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int)):
        raise ValueError(f"world_size={world_size!r} must be an integer >= 2")
    if world_size is not None and world_size < 2:
        raise ValueError(f"{source}: world_size={world_size} must be >= 2 (an all-to-all needs two ranks)")
    per_process = n_gpus * n_thread if n_gpus else None
    if world_size is not None and rank_lines and world_size != rank_lines:
        raise ValueError(f"{source}: world_size={world_size} (--world-size) contradicts the log's {rank_lines} "
                         f"'# Rank' lines (a run of {rank_lines} ranks): leave --world-size out or give {rank_lines}")
    if world_size is not None and not rank_lines and per_process and world_size % per_process:
        raise ValueError(f"{source}: world_size={world_size} (--world-size) contradicts the log's first line "
                         f"(nThread {n_thread} nGpus {n_gpus}: {per_process} ranks per process): give a multiple "
                         f"of {per_process}")
    missing = sorted(set(range(rank_lines)) - set(rank_at)) if len(rank_at) == rank_lines else []
    if missing:         # ranks numbered beyond their count: a '# Rank' line was lost (a cut or merged log)
        raise ValueError(f"{source}: the log's {rank_lines} '# Rank' lines skip rank {missing[0]} (they number up to "
                         f"{max(rank_at)}): a rank line is missing; give the whole log of one run")
    ranks = rank_lines or world_size or per_process
    ranks_from = "rank lines" if rank_lines else "world_size" if world_size else "nGpus"
    if not ranks or ranks < 2:
        raise ValueError(f"{source}: cannot tell the number of ranks of the nccl-tests run (no '# Rank' lines); "
                         f"pass world_size (--world-size)" if not ranks else
                         f"{source}: world_size={ranks} must be >= 2 (an all-to-all needs two ranks)")
    points = [A2APoint(size, time_us * 1e-6, ranks) for size, time_us in points_raw]
    return NcclTestsRun(world_size=ranks, points=points, columns=columns,
                        gpu=next(iter(devices)) if len(devices) == 1 else None, devices=tuple(sorted(devices)),
                        ranks_from=ranks_from, per_process=per_process, hosts=tuple(hosts))


def read_nccl_tests(paths, *, world_size: int | None = None, gpu: str | None = None) -> CalibrationInput:
    """Source "nccl-tests": one `alltoall_perf` output file (`parse_nccl_tests`). `gpu` names the
    device; without it, the device the log's `# Rank` lines name. Either must be a GPU a
    calibration knows (`lshsim.calibration.check_gpu_name`): a log whose GPU cannot be told is
    refused, asking for gpu (--gpu), rather than calibrating a "cpu"."""
    path = _one_path(paths, "nccl-tests")
    if gpu is not None:
        check_gpu_name(gpu, "gpu")
    run = parse_nccl_tests(read_text(path, "nccl-tests log"), world_size, source=str(path))
    if len(run.hosts) > 1:       # a one-node NVSwitch topology fitted at the network's rate would be garbage
        shown = ", ".join(run.hosts[:4]) + (", ..." if len(run.hosts) > 4 else "")
        raise ValueError(f"{path}: the log's {run.world_size} ranks run on {len(run.hosts)} hosts ({shown}): the "
                         f"nccl-tests source calibrates the NVLink of one node, and a multi-node log would become a "
                         f"one-node topology at the network's rate. Give the cluster's topology with --cluster "
                         f"TOPOLOGY: its NIC rate and the start-up of an all-to-all across nodes are fitted from the "
                         f"log (lshsim.calibration.internode)")
    notes = []
    if run.ranks_from == "world_size":
        notes.append(f"{run.world_size} ranks from --world-size (the log has no '# Rank' lines; its first line: "
                     f"nThread x nGpus = {run.per_process} per process)" if run.per_process else
                     f"{run.world_size} ranks from --world-size (the log has no '# Rank' lines)")
    elif run.ranks_from == "nGpus":
        notes.append(f"{run.world_size} ranks from the log's first line (nThread x nGpus; it has no '# Rank' lines): "
                     f"give --world-size if the run had more than one process")
    if gpu is None:
        if run.gpu is None or gpu_key(run.gpu) is None:
            named = f"names the device {run.gpu!r}" if run.gpu else "names no single device in its '# Rank' lines"
            raise ValueError(f"{path}: the log {named}: give the GPU with --gpu (known: "
                             f"{', '.join(CALIBRATED_GPUS)})")
        gpu = run.gpu
    elif len(run.devices) > 1:    # a mixed run: --gpu names the one to calibrate
        notes.append(f"GPU {gpu} from --gpu (the log's '# Rank' lines name {len(run.devices)} devices: "
                     f"{', '.join(run.devices)})")
    else:
        gpu, note = given_gpu(gpu, run.gpu, str(path), "the log's '# Rank' device")
        notes += [note] if note else []
    record = {"world_size": run.world_size, "a2a": [{"bytes_per_rank": p.bytes_per_rank, "time_s": p.time_s}
                                                    for p in run.points], "p2p": [], "ffn": None, "hbm": None}
    return CalibrationInput(source="nccl-tests", world_size=run.world_size, gpu=gpu, points=tuple(run.points),
                            provenance={"tool": "nccl-tests alltoall_perf", "file": str(path),
                                        **({"overrides": notes} if notes else {})}, record=record)


#: name -> read(paths, **options) -> CalibrationInput (contract: module docstring).
SOURCES = {"microbenchmarks": read_microbenchmarks, "traces": read_traces, "nccl-tests": read_nccl_tests}


def _option_names(signature: inspect.Signature) -> list[str]:
    """The keyword options of a source's signature (every parameter after the paths), "name
    (required)" for one without a default."""
    params = list(signature.parameters.values())[1:]
    return [p.name + (" (required)" if p.default is p.empty else "") for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def read_source(name: str, paths, options: dict | None = None) -> CalibrationInput:
    """Read `paths` (one path or several) through the registered source `SOURCES[name]` with its
    keyword `options`. ValueError for an unknown name (listing the known ones), for options the
    source does not take or lacks (checked against its signature, listing its options) and for a
    file that cannot be opened or is not UTF-8 (naming it); the source's own ValueError (naming
    the file) passes through.

    >>> read_source("csv", ["a.csv"])
    Traceback (most recent call last):
    ...
    ValueError: calibration source 'csv' is unknown; known: microbenchmarks, nccl-tests, traces
    >>> read_source("nccl-tests", ["run.log"], {"ranks": 4})
    Traceback (most recent call last):
    ...
    ValueError: calibration source 'nccl-tests': got an unexpected keyword argument 'ranks' (its options: world_size, gpu)
    """
    if name not in SOURCES:
        raise ValueError(f"calibration source {name!r} is unknown; known: {', '.join(sorted(SOURCES))}")
    read = SOURCES[name]
    options = dict(options or {})
    paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    try:
        signature = inspect.signature(read)
    except (TypeError, ValueError):         # a callable without a signature: call it as it is
        signature = None
    if signature is not None:
        try:
            signature.bind(paths, **options)
        except TypeError as error:
            raise ValueError(f"calibration source {name!r}: {error} "
                             f"(its options: {', '.join(_option_names(signature)) or 'none'})") from None
    try:
        inp = read(paths, **options)
    except OSError as error:
        raise ValueError(f"calibration source {name!r}: {error}") from None
    except UnicodeDecodeError as error:   # a source that opens its files itself (a plugin's): name the file
        where = paths[0] if len(paths) == 1 else f"one of {', '.join(paths)}"
        raise ValueError(f"calibration source {name!r}: {where}: not UTF-8 text (byte {error.start})") from None
    if not isinstance(inp, CalibrationInput):
        raise TypeError(f"calibration source {name!r} returned a {type(inp).__name__}, not a CalibrationInput")
    return inp
