"""The executor's sub-commands, defined once for both entry points.

`python -m lshsim.executor COMMAND` (and `torchrun -m lshsim.executor COMMAND`, `lshsim.executor.launch`)
and `lshsim COMMAND` read the same arguments: each command has an `add_<command>(subparsers)` that
declares them and a `cmd_<command>(args) -> int` that runs it; `execute(args)` runs the parsed
command and, under `launch`, records why a rank failed. Nothing here imports torch until a
command runs.

- run:       time workloads (YAML, `lshsim.executor.workload`) and write measured Trace JSON files;
- calibrate: all-to-all sweep, p2p bandwidth, expert FFN rate; fit a topology (`lshsim.executor.calibrate`),
             or fit measured files read by a calibration source (`lshsim.executor.calibrate_files`);
- check:     the distributed layer against the dense single-process reference (`lshsim.executor.check`);
- launch:    start N local ranks (no torchrun) and watch them (`lshsim.executor.launch`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lshsim.checks import arg_finite_number, arg_int, arg_int_within, env_int
from lshsim.executor.calibrate_files import arg_source_option
from lshsim.executor.launch import (DEFAULT_HEARTBEAT_TIMEOUT_S, DEFAULT_STALL_TIMEOUT_S, DEFAULT_STARTUP_TIMEOUT_S,
                                    DEFAULT_TIMEOUT_S, MAX_NPROC, MAX_TIMEOUT_S, MIN_HEARTBEAT_TIMEOUT_S)
from lshsim.units import BYTES_HELP, arg_int_bytes

__all__ = ["COMMANDS", "add_subcommands", "add_run", "add_calibrate", "add_check", "add_launch", "execute",
           "cmd_run", "cmd_calibrate", "cmd_check", "cmd_launch", "arg_bytes_or_zero"]

logger = logging.getLogger("executor")


def arg_bytes_or_zero(text: str) -> int:
    """argparse type: 0, or a whole number of bytes >= 1 (`lshsim.units.arg_int_bytes`).

    >>> arg_bytes_or_zero("0"), arg_bytes_or_zero("64KiB")
    (0, 65536)
    """
    return 0 if text.strip() == "0" else arg_int_bytes(text)


#: --min-a2a-s and --max-wall-s: at most this many seconds of measuring per workload (one day)
MAX_MEASURE_S = 86400.0
#: --max-iterations: at most this many measured iterations
MAX_ITERATIONS = 1 << 20

#: timeouts: seconds, finite, > 0 and at most MAX_TIMEOUT_S (1e6 s, about 11.6 days)
_TIMEOUT_LIMITS = f"seconds, > 0, at most {MAX_TIMEOUT_S:g}"
#: --threads: at most this many CPU threads per rank
MAX_THREADS = 1024


def _arg_status_dir(text: str) -> str:
    """argparse type of --status-dir: a folder name, not an empty one (an empty name was the current
    folder, where the launcher deletes the rank* files of an earlier run)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: an empty folder name")
    return text


def _arg_timeout(minimum: float = 0.0, exclusive: bool = True):
    """argparse type of a timeout: a finite number of seconds > `minimum` (NaN, inf, 0 and negatives
    refused), at most MAX_TIMEOUT_S."""
    return arg_finite_number(minimum=minimum, exclusive=exclusive, maximum=MAX_TIMEOUT_S)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA if available (NCCL), else CPU (gloo)")
    p.add_argument("--collective-timeout-s", type=_arg_timeout(), default=600.0,
                   help=f"a collective waiting longer than this raises ({_TIMEOUT_LIMITS}; default 600)")
    p.add_argument("--threads", type=arg_int(0, MAX_THREADS), default=0,
                   help=f"CPU threads per rank, 0 to {MAX_THREADS} (0: cores / local ranks, at least 1)")
    p.add_argument("--status-dir", type=_arg_status_dir, default=None, help=argparse.SUPPRESS)


def add_run(subparsers) -> argparse.ArgumentParser:
    run = subparsers.add_parser("run", help="time one workload and write a measured Trace JSON",
                                description="Run workload(s) on the ranks of this process group (torchrun, or "
                                            "launch) and write one measured Trace JSON per workload.")
    run.add_argument("--workload", required=True, nargs="+",
                     help="workload YAML file(s) (data/workloads/*.yaml), run one after another")
    run.add_argument("--out", default=None,
                     help="trace JSON to write (rank 0), with a single workload (written whole; its folder is "
                          "created if missing, checked before the run)")
    run.add_argument("--out-dir", default=None,
                     help="folder for one trace JSON per workload, named after it (created if missing, checked "
                          "before the run; a workload name that would leave the folder is refused)")
    run.add_argument("--fault", choices=("raise", "hang", "kill", "stop"), default=None,
                     help="testing: at the first iteration, make --fault-rank raise an error, hang (alive, no "
                          "progress), SIGKILL itself or SIGSTOP itself (frozen)")
    run.add_argument("--fault-rank", type=arg_int_within("gpus", minimum=0), default=1,
                     help="rank that --fault hits, 0 to world size - 1 (default 1)")
    run.add_argument("--min-a2a-s", type=arg_finite_number(0.0, maximum=MAX_MEASURE_S), default=0.0,
                     help="measure enough iterations that the interleaved bare all-to-alls take this long "
                          f"(seconds, 0 to {MAX_MEASURE_S:g}; default 0: the workload's iterations)")
    run.add_argument("--max-iterations", type=arg_int(1, MAX_ITERATIONS), default=200,
                     help=f"with --min-a2a-s: at most this many measured iterations (1 to {MAX_ITERATIONS}; 200)")
    run.add_argument("--max-wall-s", type=arg_finite_number(0.0, exclusive=True, maximum=MAX_MEASURE_S), default=5.0,
                     help=f"with --min-a2a-s: at most this much wall time per workload (seconds, > 0, at most "
                          f"{MAX_MEASURE_S:g}; 5 s)")
    run.add_argument("--quiet", action="store_true",
                     help="no progress lines on stderr (default, on rank 0: each workload's start and end, the "
                          "iteration reached every few seconds with an estimate of what is left, the files written)")
    run.epilog = ("Sizes: a workload whose memory per rank (lshsim.limits.estimate_executor_rank: tokens, dispatch "
                  "and combine buffers, expert activations and weights) exceeds the device's memory (a GPU's, or "
                  "the available memory shared by the local ranks on CPU) is refused before the run starts.")
    _add_common(run)
    return run


def _arg_gpu(text: str) -> str:
    """argparse type of calibrate --gpu: a GPU a calibration knows (`lshsim.calibration.fits.check_gpu_name`)."""
    from lshsim.calibration.fits import CALIBRATED_GPUS, gpu_key

    try:
        from lshsim.calibration.fits import check_gpu_name
    except ImportError:  # pragma: no cover - an older library without the check
        check_gpu_name = None
    try:
        if check_gpu_name is not None:
            return check_gpu_name(text, "gpu")
        if gpu_key(text) is None:
            raise ValueError(f"{text!r} is not a known GPU; known: {', '.join(CALIBRATED_GPUS)}")
        return text
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _arg_topology_name(text: str) -> str:
    """argparse type of calibrate --name: a topology name, letters, digits, '.', '_' and '-'.

    >>> _arg_topology_name("h100-x8-calibrated")
    'h100-x8-calibrated'
    """
    from lshsim.checks import FILE_NAME_RULE, file_name

    try:
        return file_name("name", text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be {FILE_NAME_RULE}") from None


def add_calibrate(subparsers) -> argparse.ArgumentParser:
    cal = subparsers.add_parser("calibrate", help="all-to-all sweep, p2p bandwidth, expert FFN rate; fit a topology",
                                description="Measure the microbenchmarks that parameterise a topology (or fit "
                                            "them from files a calibration source reads: --source NAME FILE..., "
                                            "or nccl-tests output, an earlier --raw JSON or measured traces) and "
                                            "write a calibrated topology YAML.")
    cal.add_argument("--out", default=None,
                     help="calibrated topology YAML to write (rank 0; written whole, its folder created if missing, "
                          "checked before any measurement)")
    cal.add_argument("--raw", default=None,
                     help="JSON of every measurement (rank 0; written whole, its folder created if missing, checked "
                          "before any measurement)")
    cal.add_argument("--plot", default=None, metavar="FILE.png",
                     help="also draw the all-to-all's bus bandwidth against the size per rank: measured, the "
                          "(alpha, B) fit and the bus bandwidth curve (rank 0; written whole, its folder created if "
                          "missing, checked before any measurement)")
    cal.add_argument("--name", type=_arg_topology_name, default=None,
                     help="topology name: letters, digits, '.', '_' and '-' (default: derived from the GPU)")
    cal.add_argument("--min-bytes", type=arg_int_bytes, default=MEASURING_OPTIONS["--min-bytes"],
                     help=f"smallest all-to-all size per rank (default 4KiB; {BYTES_HELP})")
    cal.add_argument("--max-bytes", type=arg_int_bytes, default=MEASURING_OPTIONS["--max-bytes"],
                     help=f"largest all-to-all size per rank (default 1GiB; {BYTES_HELP})")
    cal.add_argument("--steps-per-octave", type=arg_int_within("steps_per_octave"), default=MEASURING_OPTIONS["--steps-per-octave"],
                     help="sizes per doubling of the all-to-all sweep, 1 to 64 (default 1: powers of two)")
    cal.add_argument("--iterations", type=arg_int_within("count"), default=MEASURING_OPTIONS["--iterations"],
                     help="timed repetitions per size, 1 to 2^20 (10)")
    cal.add_argument("--warmup", type=arg_int_within("count", minimum=0), default=MEASURING_OPTIONS["--warmup"],
                     help="untimed repetitions per size, 0 to 2^20 (3)")
    cal.add_argument("--ffn-d-model", type=arg_int_within("dim"), default=MEASURING_OPTIONS["--ffn-d-model"],
                     help="d_model of the FFN rate test, 1 to 2^20 (default 4096; the test's memory must fit the "
                          "device)")
    cal.add_argument("--ffn-tokens", type=arg_int_within("tokens"), default=MEASURING_OPTIONS["--ffn-tokens"],
                     help="tokens of the FFN rate test, 1 to 2^24 (default 8192; the test's memory must fit the "
                          "device)")
    cal.add_argument("--source", default=None, metavar="NAME",
                     help="fit from the FILEs, read by the calibration source NAME (lshsim.calibration.SOURCES: "
                          "microbenchmarks, traces, nccl-tests, or one a --plugin module registers), instead of "
                          "measuring")
    cal.add_argument("files", nargs="*", metavar="FILE", help="with --source: the files the source reads")
    cal.add_argument("--source-option", dest="source_options", action="append", type=arg_source_option,
                     default=None, metavar="KEY=VALUE",
                     help="with --source: one keyword option of the source (repeatable); VALUE is read as "
                          "YAML (4, 1e9, true, text)")
    cal.add_argument("--nccl-tests", default=None,
                     help="fit from an existing nccl-tests alltoall_perf output instead of measuring "
                          "(= --source nccl-tests)")
    cal.add_argument("--cluster", default=None, metavar="TOPOLOGY",
                     help="with --nccl-tests: a log of several nodes is fitted onto this multi-node topology (a "
                          "shipped name or a YAML file): its NIC rate (calibration.nic_Bps) and the start-up of an "
                          "all-to-all across nodes (calibration.a2a_internode_alpha_s); --out gets that topology with "
                          "both set (lshsim.calibration.internode)")
    cal.add_argument("--world-size", type=arg_int_within("gpus"), default=None,
                     help="with files to fit: ranks of the run, 1 to 2^20, for an nccl-tests log without '# Rank' "
                          "lines; refused where it contradicts the files (the log's '# Rank' lines, a raw JSON's "
                          "results.world_size, the traces') (with --source: its option world_size)")
    cal.add_argument("--gpu", type=_arg_gpu, default=None,
                     help="with files to fit: the GPU model, one of h200, h100, a100, v100 (or a device name holding "
                          "one, e.g. 'NVIDIA H100 80GB HBM3'), for files that name no device or one no calibration "
                          "knows; refused where it contradicts the device they name (with --source: its option gpu)")
    cal.add_argument("--from-raw", default=None,
                     help="refit from a --raw JSON of an earlier calibration (= --source microbenchmarks)")
    cal.add_argument("--from-traces", nargs="+", default=None,
                     help="fit the all-to-all in situ on measured traces of calibration workloads "
                          "(the source traces; FFN and HBM rates still from --from-raw, if given)")
    cal.add_argument("--no-curve", action="store_true",
                     help="with --from-traces or --source: write only the (alpha, B) fit, no a2a_busbw_curve")
    cal.add_argument("--no-channel-term", action="store_true",
                     help="fit as before NCCL's channel term: the curve keeps the sizes at NCCL's per-peer channel "
                          "thresholds and no calibration.a2a_nccl_channels is written (lshsim.sim.nccl)")
    cal.add_argument("--threshold-window", type=arg_finite_number(0.0, maximum=1.0), default=None,
                     help="relative window around each channel threshold whose sizes the curve leaves out, in "
                          "[0, 1] (default lshsim.calibration.fits.THRESHOLD_WINDOW, 0.04)")
    cal.add_argument("--quiet", action="store_true",
                     help="no progress lines on stderr (default, on rank 0: each benchmark, the all-to-all sweep's "
                          "size steps every few seconds with an estimate of what is left, the files written)")
    cal.add_argument("--phases", type=_arg_phase_parts, default=None, metavar="PARTS",
                     help="also measure the phase model (lshsim.calibration.phase_model): a comma list of a2a "
                          "(all-to-alls in three timing conventions, aligned and unaligned, 64 KiB per rank "
                          "upward), expert (the expert phase on a grid of shapes), layers (built-in calibration "
                          "workloads: gate, LSH, split exchange, as-run layer), or all")
    cal.add_argument("--phase-base", default=None, metavar="RAW", nargs="+",
                     help="add the phase measurements of these earlier --raw JSONs to the compute fits: their "
                          "expert grid where this calibration has none, their calibration layers next to these "
                          "(compute does not depend on the NCCL transport; a one-rank calibration's layers fit "
                          "the one-rank case)")
    cal.add_argument("--fit-min-bytes", type=arg_bytes_or_zero, default=0,
                     help=f"fit only the all-to-all sizes >= this (default 0: all; {BYTES_HELP})")
    _add_common(cal)
    return cal


def _arg_phase_parts(text: str) -> tuple[str, ...]:
    """argparse type of --phases: "all" or a comma list of a2a, expert, layers."""
    from lshsim.executor.phase_bench import PARTS

    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if parts == ("all",):
        return PARTS
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'all' or a comma list of {', '.join(PARTS)}")
    return parts


def add_check(subparsers) -> argparse.ArgumentParser:
    chk = subparsers.add_parser("check", help="compare the distributed layer with the dense single-process reference",
                                description="Run every check case (each router, LSH-MoE, LocMoE's group-wise "
                                            "all-to-all, the fp8 dispatch, node_dedup) on the ranks of this process "
                                            "group (torchrun, or `lshsim launch --nproc N -- check`) and compare the "
                                            "layer's output, gradients and bytes sent with the dense single-process "
                                            "reference. Prints one line per case: the largest relative error of each "
                                            "quantity (bytes_mismatch and lsh_exact_vs_plain must be 0) and the "
                                            "choices dropped at capacity; exit code 1 when a case exceeds "
                                            "--tolerance.")
    chk.add_argument("--out", default=None,
                     help="JSON of the errors per case (rank 0; written whole, its folder created if missing, "
                          "checked before the run)")
    chk.add_argument("--tolerance", type=arg_finite_number(minimum=0.0, maximum=1.0), default=1e-4,
                     help="largest accepted relative error (finite, >= 0, at most 1: above a 100%% error it "
                          "checks nothing; default 1e-4)")
    chk.add_argument("--cases", type=_arg_check_cases, default=None,
                     help="comma-separated case names (default: every case; `lshsim.executor.check.CASE_NAMES`)")
    chk.add_argument("--seeds", type=_arg_seed_list, default=None,
                     help="comma-separated seeds of the tokens, gate and experts: every case runs once per seed, "
                          "named case+seedS (default: each case's own seed, 3). Other seeds draw other routings: "
                          "ranks that receive no rows, experts with no tokens")
    _add_common(chk)
    return chk


def _arg_check_cases(text: str) -> list[str]:
    """argparse type of check --cases: known case names, comma-separated."""
    from lshsim.executor.check import CASE_NAMES

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASE_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown case {unknown[0] if unknown else '(none given)'!r}; "
                                         f"known: {', '.join(CASE_NAMES)}")
    return names


def _arg_seed_list(text: str) -> list[int]:
    """argparse type of check --seeds: integers 0 .. 2**31 - 1, comma-separated."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {part!r} is not an integer seed") from None
        if not 0 <= value < 2 ** 31:
            raise argparse.ArgumentTypeError(f"{text!r}: seed {value} is outside 0 .. 2**31 - 1")
        seeds.append(value)
    return seeds


def add_launch(subparsers) -> argparse.ArgumentParser:
    la = subparsers.add_parser("launch", help="spawn N local ranks (no torchrun) and watch them",
                               description="launch --nproc 4 -- run --workload W.yaml: start N local ranks of "
                                           "`python -m lshsim.executor` and watch them. Exit codes: 0 every rank "
                                           "finished; 1 a rank failed or was killed (named); 2 a bad input; 124 a "
                                           "rank hung, froze (no heartbeat) or did not start (named), or the run "
                                           "exceeded --timeout-s; 130, 143, 129 the launcher got SIGINT, SIGTERM, "
                                           "SIGHUP. Whatever the end, every rank is stopped (a launcher killed "
                                           "with SIGKILL takes its ranks with it) and the launcher's own status "
                                           "folder is removed.")
    la.add_argument("--nproc", type=arg_int(1, MAX_NPROC), required=True,
                    help=f"number of ranks (1 to {MAX_NPROC})")
    la.add_argument("--timeout-s", type=_arg_timeout(), default=DEFAULT_TIMEOUT_S,
                    help=f"kill the run after this long ({_TIMEOUT_LIMITS}; default {DEFAULT_TIMEOUT_S:g})")
    la.add_argument("--stall-timeout-s", type=_arg_timeout(), default=DEFAULT_STALL_TIMEOUT_S,
                    help=f"kill the run when every rank is alive but none made progress for this long, naming "
                         f"the ranks behind ({_TIMEOUT_LIMITS}; default {DEFAULT_STALL_TIMEOUT_S:g}; raise it for "
                         f"a workload whose single iteration takes longer)")
    la.add_argument("--startup-timeout-s", type=_arg_timeout(), default=DEFAULT_STARTUP_TIMEOUT_S,
                    help=f"kill the run when a rank has not reached its first step (imports, inputs) this long after "
                         f"the start ({_TIMEOUT_LIMITS}; default {DEFAULT_STARTUP_TIMEOUT_S:g})")
    la.add_argument("--heartbeat-timeout-s", type=_arg_timeout(MIN_HEARTBEAT_TIMEOUT_S, False),
                    default=DEFAULT_HEARTBEAT_TIMEOUT_S,
                    help=f"kill the run when a rank's heartbeat (refreshed every second by a thread of the rank, "
                         f"whatever it computes) stops for this long, naming the rank: it is frozen (seconds, "
                         f">= {MIN_HEARTBEAT_TIMEOUT_S:g}, at most {MAX_TIMEOUT_S:g}; default "
                         f"{DEFAULT_HEARTBEAT_TIMEOUT_S:g})")
    la.add_argument("--status-dir", dest="launch_status_dir", type=_arg_status_dir, default=None, metavar="DIR",
                    help="folder for the ranks' progress, heartbeat and stderr files, kept at the end "
                         "(default: a temporary folder, removed at the end)")
    la.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the sub-command and its arguments")
    return la


def _world_size_from_env() -> int:
    return env_int("WORLD_SIZE", 1)


def _rank_from_env() -> int:
    return env_int("RANK", 0)


def _local_world_size(default: int | None = None) -> int:
    """LOCAL_WORLD_SIZE (the ranks on this machine, set by torchrun or launch), default WORLD_SIZE;
    a value that is not an integer >= 1 is refused naming the variable."""
    import os

    if os.environ.get("LOCAL_WORLD_SIZE") is None:     # WORLD_SIZE's own check is init_runtime's
        return max(1, _world_size_from_env() if default is None else default)
    value = env_int("LOCAL_WORLD_SIZE", 1)
    if value < 1:
        raise ValueError(f"environment variable LOCAL_WORLD_SIZE={value} must be an integer >= 1 (the ranks on "
                         f"this machine)")
    return value


def _on_gpu(device: str) -> bool:
    """Whether --device DEVICE runs on CUDA (auto: if torch sees a CUDA device); `--device cuda` where
    torch sees none is refused here, before the memory estimates ask the device for its size."""
    if device == "cpu":
        return False
    import torch

    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise ValueError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    return available


def _local_gpu_index() -> int:
    import torch

    return env_int("LOCAL_RANK", 0) % max(torch.cuda.device_count(), 1)


def _set_threads(args, world_size: int) -> None:
    import os

    import torch

    threads = args.threads
    if threads <= 0:
        local = _local_world_size(world_size)
        threads = max(1, (os.cpu_count() or 1) // local)
    torch.set_num_threads(threads)


def _trace_paths(args, workloads) -> list[str | None]:
    """Where each workload's trace goes (--out, or NAME.json under --out-dir, never outside it), the
    output rule of `lshsim.io` checked before any work."""
    from lshsim.io import check_distinct_outputs, path_in_folder, prepare_output, prepare_output_dir

    if args.out is not None and args.out_dir is not None:
        raise ValueError(f"--out {args.out} and --out-dir {args.out_dir}: give one (--out for one workload's trace, "
                         f"--out-dir for one trace per workload)")
    if args.out is not None:         # '' too: prepare_output refuses an empty name (was: no trace, exit 0)
        path = prepare_output(args.out, "--out")
        check_distinct_outputs([("--out", path)], [("--workload", w) for w in args.workload])
        return [str(path)] * len(workloads)
    if args.out_dir is not None:
        folder = prepare_output_dir(args.out_dir, "--out-dir")
        return [str(path_in_folder(folder, f"{w.name}.json", "--out-dir")) for w in workloads]
    return [None] * len(workloads)


def refuse_workloads_too_large(workloads, device: str) -> None:
    """Refuse, before the rendezvous, a workload whose memory per rank (`lshsim.limits.estimate_executor_rank`)
    exceeds the device's: a GPU's memory, or on CPU the available memory shared by the local ranks."""
    from lshsim.limits import available_memory_bytes, estimate_executor_rank, refuse_if_too_large

    world = _world_size_from_env()
    local = _local_world_size(world)
    on_gpu = _on_gpu(device)
    if on_gpu:
        import torch

        index = _local_gpu_index()
        limit, where = torch.cuda.get_device_properties(index).total_memory, f"GPU {index} has"
    else:
        limit, where = available_memory_bytes() / local, f"this machine, shared by {local} local rank(s), has"
    for w in workloads:
        element = 4 if w.dtype == "float32" or (w.dtype == "auto" and not on_gpu) else 2
        estimate = estimate_executor_rank(tokens_per_rank=w.tokens_per_rank, d_model=w.d_model, d_ffn=w.d_ffn,
                                          num_experts=w.num_experts, world_size=world, k=w.router.k,
                                          bytes_per_element=element, backward=w.backward)
        refuse_if_too_large(f"workload {w.name!r} ({w.tokens_per_rank} tokens x d_model {w.d_model} per rank)",
                            estimate, limit, limit_name=where, hint="lower tokens_per_rank or d_model")


def progress_lines(args, prefix: str):
    """The command's progress lines on stderr (`lshsim.cli._progress`): rank 0 only, none with --quiet."""
    from lshsim.cli._progress import ProgressLines

    return ProgressLines(prefix, quiet=bool(getattr(args, "quiet", False)) or _rank_from_env() != 0)


def cmd_run(args) -> int:
    from lshsim.executor.run import run_workload
    from lshsim.executor.runtime import Progress, init_runtime, shutdown
    from lshsim.executor.workload import load_workload

    workloads = [load_workload(path) for path in args.workload]
    if args.out and len(workloads) > 1:
        raise ValueError("--out takes one workload; use --out-dir for several")
    names = [w.name for w in workloads]
    if len(set(names)) != len(names):
        raise ValueError(f"workload names must be unique (they name the trace files): {names}")
    outputs = _trace_paths(args, workloads)           # before any work: folders created, names kept inside
    for path, workload in zip(args.workload, workloads):  # the ranks, before the rendezvous, naming the file
        try:
            workload.check_world(_world_size_from_env())
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    refuse_workloads_too_large(workloads, args.device)
    if args.fault is not None:  # before the rendezvous: WORLD_SIZE is known from the environment
        _check_fault_rank(args.fault_rank, _world_size_from_env(), "the world size WORLD_SIZE")
    progress = Progress(args.status_dir, _rank_from_env())
    report = progress_lines(args, "run")
    progress.step("joining the process group")  # start-up (imports, inputs) done: the launcher sees it
    if _world_size_from_env() > 1:
        report.line(f"joining the process group ({_world_size_from_env()} ranks)")
    runtime = init_runtime(args.device, args.collective_timeout_s)
    if runtime.device.type == "cpu":
        _set_threads(args, runtime.world_size)
    progress.step("process group joined")
    command = ["python", "-m", "lshsim.executor", *sys.argv[1:]]  # the same command under either entry point
    try:
        for index, (workload, out) in enumerate(zip(workloads, outputs)):
            if len(workloads) > 1:
                report.prefix = f"run {index + 1}/{len(workloads)}"
            trace = run_workload(workload, runtime, progress=progress, fault=args.fault, fault_rank=args.fault_rank,
                                 command=command, min_a2a_s=args.min_a2a_s, max_iterations=args.max_iterations,
                                 max_wall_s=args.max_wall_s, report=report)
            if runtime.rank == 0:
                if out:
                    trace.to_json(out)                # written whole (lshsim.io)
                    report.wrote(out)
                _print_run_summary(trace, out)
            if runtime.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
    except BaseException as error:
        report_failure(args, error)  # before shutdown(), which breaks the peers' collectives
        raise
    finally:
        shutdown()
    return 0


def _print_run_summary(trace, out_path) -> None:
    measured = trace.meta["measured"]
    workload = trace.meta["workload"]
    lines = [f"workload {workload['name']}: {workload['world_size']} ranks x {workload['tokens_per_rank']} tokens, "
             f"d_model {workload['d_model']}, router {workload['router']['name']}, "
             f"{trace.meta['provenance']['gpu'] or 'CPU'}"]
    for direction, phases in measured["phases_s"].items():
        lines.append(f"  {direction:8s} " + "  ".join(f"{name} {seconds * 1e3:.3f} ms"
                                                      for name, seconds in phases.items()))
    lines.append(f"  bare all_to_all_single {measured['bare_a2a_s'] * 1e3:.3f} ms; "
                 f"bytes per rank {measured['mean_bytes_per_rank'] / 1e6:.2f} MB")
    if measured["dispatch_busbw_Bps"]:
        lines.append(f"  busbw dispatch {measured['dispatch_busbw_Bps'] / 1e9:.1f} GB/s, "
                     f"bare {measured['bare_busbw_Bps'] / 1e9:.1f} GB/s")
    if measured["lsh"]:
        lsh = measured["lsh"]
        lines.append(f"  LSH compression rate {lsh['compression_rate']:.4f}, centroid error "
                     f"{lsh['centroid_error']:.4f}, output relative error {lsh['output_rel_error']:.4f}")
    if out_path:
        lines.append(f"  trace written to {out_path}")
    sys.stdout.write("\n".join(lines) + "\n")


def check_calibrate_args(args) -> None:
    """Before any reading or measuring: the outputs (the rule of `lshsim.io`), the sweep's sizes."""
    from lshsim.io import check_distinct_outputs, prepare_output

    prepare_output(args.out, "--out")
    prepare_output(args.raw, "--raw")
    prepare_output(getattr(args, "plot", None), "--plot")
    read = [("--nccl-tests", args.nccl_tests), ("--from-raw", args.from_raw)]
    read += [("--from-traces", path) for path in (getattr(args, "from_traces", None) or ())]
    read += [("--source", path) for path in (getattr(args, "files", None) or ())]
    read += [("--phase-base", path) for path in (getattr(args, "phase_base", None) or ())]
    cluster = getattr(args, "cluster", None)
    if cluster and not Path(str(cluster)).is_file():     # a shipped topology's name: its file
        from lshsim.topology.spec import topology_dir

        cluster = topology_dir() / f"{cluster}.yaml" if str(cluster).strip() else None
    read += [("--cluster", cluster)]
    check_distinct_outputs([("--out", args.out), ("--raw", args.raw), ("--plot", getattr(args, "plot", None))], read)
    if args.min_bytes > args.max_bytes:
        raise ValueError(f"--min-bytes {args.min_bytes} must be <= --max-bytes {args.max_bytes}")
    from lshsim.executor.calibrate_files import reads_files

    def given(options):
        return [flag if value is True else f"{flag} {','.join(value) if isinstance(value, tuple) else value}"
                for flag, value, default in
                ((flag, getattr(args, flag[2:].replace("-", "_"), default), default) for flag, default in options)
                if value != default]

    if getattr(args, "cluster", None):   # a multi-node log onto a cluster's topology: its own options only
        others = given((("--source", None), ("--from-raw", None), ("--from-traces", None), ("--raw", None),
                        ("--phases", None), ("--no-curve", False), ("--no-channel-term", False),
                        ("--threshold-window", None), ("--gpu", None)))
        if not args.nccl_tests:
            raise ValueError(f"--cluster {args.cluster} goes with --nccl-tests LOG (a log of several nodes)")
        if others:
            raise ValueError(f"--cluster fits the NIC rate and the start-up across nodes from an nccl-tests log; "
                             f"{', '.join(others)} {'does' if len(others) == 1 else 'do'} not go with it: leave "
                             f"{'it' if len(others) == 1 else 'them'} out")
    if reads_files(args):       # nothing is measured: an option of the measurement would be ignored
        named = given(MEASURING_OPTIONS.items())
        if named:
            raise ValueError(f"{', '.join(named)}: {'an option' if len(named) == 1 else 'options'} of a measuring "
                             f"calibration; with files to fit (--source, --nccl-tests, --from-raw, --from-traces) "
                             f"nothing is measured: leave {'it' if len(named) == 1 else 'them'} out")
    else:
        named = given((("--world-size", None), ("--gpu", None), ("--no-curve", False)))
        if named:
            raise ValueError(f"{', '.join(named)} {'goes' if len(named) == 1 else 'go'} with files to fit "
                             f"(--nccl-tests, --source, --from-traces); a measuring calibration takes the world size "
                             f"and the GPU from its run and fits no bus bandwidth curve")


#: the options of a measuring calibration and their defaults (add_calibrate): given with files to fit,
#: where nothing is measured, they are refused rather than ignored
MEASURING_OPTIONS = {"--min-bytes": 4096, "--max-bytes": 2 ** 30, "--steps-per-octave": 1, "--iterations": 10,
                     "--warmup": 3, "--ffn-d-model": 4096, "--ffn-tokens": 8192, "--phases": None, "--device": "auto",
                     "--threads": 0, "--collective-timeout-s": 600.0}


def refuse_measurement_too_large(args) -> None:
    """A measured calibration whose largest buffers (the all-to-all's send and receive buffers of
    --max-bytes, the FFN test's tokens and weights) exceed the memory of the device is refused
    before the rendezvous (`lshsim.limits`)."""
    from lshsim.limits import Estimate, available_memory_bytes, refuse_if_too_large

    local = _local_world_size()
    on_gpu = _on_gpu(args.device)
    element = 2 if on_gpu else 4
    d, t = args.ffn_d_model, args.ffn_tokens
    a2a = Estimate(2.0 * args.max_bytes, 0.0, f"2 x --max-bytes {args.max_bytes} (send and receive buffers)")
    ffn = Estimate(element * (2.0 * t * d + 8.0 * t * d + 8.0 * d * d), 0.0,
                   f"{element} B x (10 x --ffn-tokens {t} x --ffn-d-model {d} + 8 x d^2) (tokens, activations, "
                   f"weights)")
    if on_gpu:
        import torch

        index = _local_gpu_index()
        limit, where = torch.cuda.get_device_properties(index).total_memory, f"GPU {index} has"
    else:
        limit, where = available_memory_bytes() / local, f"this machine, shared by {local} local rank(s), has"
    for what, estimate, hint in (("the all-to-all sweep", a2a, "lower --max-bytes"),
                                 ("the FFN rate test", ffn, "lower --ffn-tokens or --ffn-d-model")):
        refuse_if_too_large(what, estimate, limit, limit_name=where, hint=hint)


def cmd_calibrate(args) -> int:
    from lshsim.executor.calibrate_files import calibrate_from_files, reads_files

    check_calibrate_args(args)
    if reads_files(args):           # fit measured files: no torch
        code = calibrate_from_files(args)
        if code == 0:
            report = progress_lines(args, "calibrate")
            for path in (args.raw, args.out, args.plot):
                if path:
                    report.wrote(path)
        return code
    refuse_measurement_too_large(args)
    from lshsim.executor.calibrate import calibrate_command

    return calibrate_command(args)


def cmd_check(args) -> int:
    import torch

    from lshsim.executor.check import run_checks, select_cases
    from lshsim.executor.runtime import Progress, init_runtime, shutdown

    from lshsim.io import prepare_output

    prepare_output(args.out, "--out")                 # before any work
    runtime = init_runtime(args.device, args.collective_timeout_s)
    if runtime.device.type == "cpu":
        _set_threads(args, runtime.world_size)
    torch.backends.cuda.matmul.allow_tf32 = False
    progress = Progress(args.status_dir, runtime.rank)
    progress.step("check")
    try:
        results = run_checks(runtime, select_cases(runtime.world_size, args.cases, args.seeds), progress=progress)
    except BaseException as error:
        report_failure(args, error)
        raise
    finally:
        shutdown()
    failed = [r["name"] for r in results
              if any(value > (0.0 if key in ("bytes_mismatch", "lsh_exact_vs_plain") else args.tolerance)
                     for key, value in r["errors"].items())]
    if runtime.rank == 0:
        if args.out:
            from lshsim.io import write_text_atomically

            write_text_atomically(args.out, json.dumps({"world_size": runtime.world_size, "cases": results,
                                                        "failed": failed}, indent=1))
        for r in results:
            sys.stdout.write(f"{r['name']:24s} " + " ".join(f"{k}={v:.2e}" for k, v in sorted(r["errors"].items()))
                             + f" dropped={r['dropped']}\n")
        sys.stdout.write("all cases pass\n" if not failed else f"FAILED: {failed}\n")
    return 0 if not failed else 1


def cmd_launch(args) -> int:
    from lshsim.executor.launch import launch

    rest = list(args.rest)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        raise ValueError("launch needs a sub-command after '--': run, calibrate or check")
    if rest[0] not in ("run", "calibrate", "check"):
        raise ValueError(f"launch: unknown sub-command {rest[0]!r} after '--'; known: run, calibrate, check")
    rank_args = _parse_rank_command(rest)  # a bad argument is refused here, before any rank starts
    if getattr(rank_args, "fault", None) is not None:
        _check_fault_rank(rank_args.fault_rank, args.nproc, "--nproc")
    # every rank imports the same plugins as the launcher (`--plugin`, before the sub-command)
    plugins = [item for name in getattr(args, "plugin", None) or [] for item in ("--plugin", name)]
    try:
        result = launch(args.nproc, plugins + rest, timeout_s=args.timeout_s, stall_timeout_s=args.stall_timeout_s,
                        startup_timeout_s=args.startup_timeout_s, heartbeat_timeout_s=args.heartbeat_timeout_s,
                        status_dir=args.launch_status_dir)
    except KeyboardInterrupt:  # only before the launcher's own handlers are in place
        sys.stderr.write("executor launch: interrupted by SIGINT\n")
        return 130
    if result.exit_code != 0:
        sys.stderr.write(f"executor launch: {result.message}\n")
    return result.exit_code


def _parse_rank_command(rest: list[str]) -> argparse.Namespace:
    """Parse the ranks' sub-command and its arguments as each rank will (argparse exits 2 on an error)."""
    from lshsim.checks import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="executor launch --")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("run", "calibrate", "check"):
        COMMANDS[name][0](subparsers)
    return parser.parse_args(rest)


def _check_fault_rank(fault_rank: int, world_size: int, what: str) -> None:
    if not 0 <= fault_rank < world_size:
        raise ValueError(f"--fault-rank {fault_rank} must be < {what} {world_size} (ranks 0 to {world_size - 1}): "
                         f"it would inject nothing")


#: command -> (add_parser, run), in help order
COMMANDS = {"run": (add_run, cmd_run), "calibrate": (add_calibrate, cmd_calibrate), "check": (add_check, cmd_check),
            "launch": (add_launch, cmd_launch)}


def add_subcommands(subparsers) -> None:
    """Add every executor command to an `add_subparsers()` object."""
    for add, _ in COMMANDS.values():
        add(subparsers)


def execute(args) -> int:
    """Run the parsed command `args.command`; on any error, note it for `launch` (`report_failure`)
    and raise it again (the entry point turns a ValueError into exit code 2)."""
    from lshsim.executor.status import start_heartbeat

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    heartbeat = start_heartbeat(getattr(args, "status_dir", None))  # under launch: this rank is alive
    try:
        return COMMANDS[args.command][1](args)
    except BaseException as error:
        report_failure(args, error)
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()


def report_failure(args, error: BaseException) -> None:
    """Under `launch`: note when and why this rank failed, so the launcher can tell the rank that
    failed first from the peers whose collectives broke because of it."""
    import os
    import time
    from pathlib import Path

    status_dir = getattr(args, "status_dir", None)
    if status_dir is None or isinstance(error, (KeyboardInterrupt, SystemExit)):
        return
    rank = os.environ.get("RANK", "0")
    text = f"{type(error).__name__}: {error}".replace("\n", " ")[:500]
    try:
        Path(status_dir, f"rank{rank}.failed").write_text(f"{time.time()!r}\t{text}\n")
    except OSError:
        pass  # the launcher has ended the run and removed its folder: nobody is left to tell
