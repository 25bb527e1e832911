"""`executor calibrate`: the microbenchmarks that parameterise a topology, and the command.

Measured (every rank; collective):

1. all-to-all sweep: `all_to_all_single` of M bytes per rank, equal splits (M / W to every rank,
   itself included), M from 4 KiB to 1 GiB. Timed exactly as `executor run` times its dispatch:
   ranks aligned by a one-element all-reduce (untimed), CUDA events (CPU: perf_counter) around
   one collective, the slowest rank per repetition, the median over repetitions.
   Split sizes are passed explicitly, so the sweep runs the same code path (NCCL grouped
   send/recv) as the executor's variable-split all-to-all. The fitted sizes lie between the powers
   of two (2^(k + 1/4), 2^(k + 3/4)) with per-rank chunks of whole 4 KiB rows, like MoE traffic;
   the powers of two and half-octaves are measured beside them (`a2a_pow2`, not fitted).
2. p2p: rank 0 sends M bytes to rank 1 (`send`/`recv`), the same timing; bandwidth = M / t.
3. expert FFN rate: gelu(x W1) W2 on (tokens, d) x (d, 4d) in the run's dtype (bf16 on GPU),
   FLOPs = 2 * 2 * tokens * d * 4d, and HBM bandwidth from a 1 GiB device-to-device copy
   (bytes read + bytes written) / t.

The command (`calibrate_command`) measures, or reads measured files through a calibration source
(`lshsim.calibration.SOURCES`; `lshsim.executor.calibrate_files`: `--source NAME FILE...`, and its
shorthands `--from-raw` the microbenchmarks' JSON, `--nccl-tests` an nccl-tests log,
`--from-traces` executor traces of calibration workloads, whose all-to-alls then replace the
sweep's), fits (`lshsim.calibration.fit_calibration`: alpha-beta; with `--source` or
`--from-traces`, unless `--no-curve`, the bus bandwidth curve on the uniform all-to-alls and the
duplex-engine headroom and link cap on the skewed ones) and writes the topology
(`CalibrationFit.topology_spec`). The model and the fits: see `lshsim.calibration`.
"""
from __future__ import annotations

import math
import sys

import torch
import torch.distributed as dist

from lshsim.calibration import microbenchmark_input
from lshsim.executor.calibrate_files import calibration_input, finish, reads_files
from lshsim.executor.comm import align_ranks
from lshsim.executor.timing import PhaseTimer

__all__ = ["measure", "sweep_sizes", "calibrate_command"]


# ---- measurements --------------------------------------------------------------------------------
def sweep_sizes(min_bytes: int, max_bytes: int, world_size: int, steps_per_octave: int = 1,
                offset: float = 0.0) -> list[int]:
    """Geometric sizes from min to max bytes per rank: M_i = 2^(k0 + (i + offset) / steps_per_octave),
    k0 = ceil(log2(min_bytes)), each rounded down so that the chunk per rank (M / W) is a multiple of
    4096 bytes (256 below 64 KiB per rank), as MoE traffic is: a whole number of token rows.

    offset = 0 gives the powers of two (and, with 2 steps, the half-octaves); offset = 0.5 with 2
    steps per octave gives 2^(k + 0.25) and 2^(k + 0.75), the sizes `executor calibrate` fits.
    The alignment matters: NCCL moves chunks of an odd number of bytes slower than 4 KiB-aligned
    chunks of about the same size (benchmarks/RESULTS.md).

    >>> sweep_sizes(4096, 65536, 4)
    [4096, 8192, 16384, 32768, 65536]
    >>> sweep_sizes(2 ** 20, 2 ** 22, 4, steps_per_octave=2, offset=0.5)
    [1245184, 1753088, 2490368, 3522560]
    """
    if min_bytes < 1 or max_bytes < min_bytes:
        raise ValueError(f"min_bytes={min_bytes} and max_bytes={max_bytes} must satisfy 1 <= min <= max")
    if isinstance(steps_per_octave, bool) or not isinstance(steps_per_octave, int) or steps_per_octave < 1:
        raise ValueError(f"steps_per_octave={steps_per_octave!r} must be a positive integer")
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"offset={offset!r} must be in [0, 1)")
    start = max(0, (min_bytes - 1).bit_length())
    sizes: list[int] = []
    step = 0
    while True:
        size = int(2 ** (start + (step + offset) / steps_per_octave))
        if size > max_bytes:
            break
        chunk = size // world_size
        align = 4096 if chunk >= 65536 else 256
        size = (chunk - chunk % align) * world_size
        if size > 0 and (not sizes or size != sizes[-1]):
            sizes.append(size)
        step += 1
    return sizes


def _median_of_max(local: list[float], device: torch.device) -> tuple[float, list[float]]:
    values = torch.tensor(local, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    ordered = sorted(values.cpu().tolist())
    return ordered[(len(ordered) - 1) // 2], values.cpu().tolist()


def _time_repeated(fn, device: torch.device, iterations: int, warmup: int, align: bool = True) -> list[float]:
    timer = PhaseTimer(device)
    out = []
    for it in range(warmup + iterations):
        if align:
            align_ranks(device)
        timer.start_iteration()
        timer.begin("other")
        fn()
        timer.end("other")
        start, end = timer.finish_iteration()[("other", "forward")]
        if it >= warmup:
            out.append(end - start)
    return out


def measure(device: torch.device, *, min_bytes: int = 4096, max_bytes: int = 2 ** 30, iterations: int = 10,
            warmup: int = 3, ffn_d_model: int = 4096, ffn_tokens: int = 8192, steps_per_octave: int = 1,
            progress=None, report=None) -> dict:
    """Run the sweep, p2p, FFN and copy benchmarks (collective); every rank returns the results.

    progress: the launcher's status file (`lshsim.executor.runtime.Progress`); report: where a
    person sees progress (`lshsim.cli._progress.ProgressLines`, quiet on ranks > 0): a line per
    benchmark, and per size step of the all-to-all sweep (at most one per its `interval_s`) the
    size, the elapsed time and an estimate of the sweep's time left from the steps done.
    """
    from lshsim.cli._progress import ProgressLines, estimate_left_s

    report = report if report is not None else ProgressLines("calibrate", quiet=True)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    results: dict = {"world_size": world, "a2a": [], "p2p": [], "ffn": None, "hbm": None}
    if world > 1:
        # fitted: sizes between the powers of two; reported beside them: the powers of two and
        # half-octaves. Split sizes are passed explicitly: the executor's code path.
        passes = [(key, sweep_sizes(min_bytes, max_bytes, world, steps_per_octave, offset))
                  for key, offset in (("a2a", 0.5), ("a2a_pow2", 0.0))]
        steps = [size for _, sizes in passes for size in sizes]
        done: list[tuple[float, float]] = []
        report.line(f"all-to-all sweep on {world} ranks: {len(steps)} sizes from {min(steps, default=0)} to "
                    f"{max(steps, default=0)} bytes per rank, {warmup} warm-up + {iterations} repetitions each")
        for key, sizes in passes:
            results.setdefault(key, [])
            for size in sizes:
                if progress is not None:
                    progress.step(f"all-to-all {size} bytes ({key})")
                step_started = report.elapsed_s()
                send = torch.randint(0, 255, (size,), dtype=torch.uint8, device=device)
                recv = torch.empty_like(send)
                splits = [size // world] * world
                times = _time_repeated(lambda: dist.all_to_all_single(recv, send, splits, splits), device,
                                       iterations, warmup)
                median, per_iter = _median_of_max(times, device)
                results[key].append({"bytes_per_rank": size, "time_s": median, "per_iteration_s": per_iter})
                done.append((size, report.elapsed_s() - step_started))
                report.tick(f"all-to-all sweep step {len(done)}/{len(steps)}: {size} bytes per rank ({key}) in "
                            f"{done[-1][1]:.2f} s", left_s=estimate_left_s(done, steps[len(done):]))
            del send, recv
        report.line(f"all-to-all sweep done: {len(done)} sizes in {sum(t for _, t in done):.1f} s")
        p2p_sizes = sorted({min(size, max_bytes) for size in (2 ** 20, 2 ** 24, 2 ** 28)})
        report.line(f"p2p rank 0 -> 1: {', '.join(map(str, p2p_sizes))} bytes")
        for size in p2p_sizes:
            if progress is not None:
                progress.step(f"p2p {size} bytes")
            buffer = torch.randint(0, 255, (size,), dtype=torch.uint8, device=device)

            def p2p():
                if rank == 0:
                    dist.send(buffer, 1)
                elif rank == 1:
                    dist.recv(buffer, 0)

            times = _time_repeated(p2p, device, iterations, warmup)
            median, _ = _median_of_max(times, device)
            results["p2p"].append({"bytes": size, "time_s": median, "Bps": size / median})
            del buffer
    if progress is not None:
        progress.step("expert FFN rate")
    report.line(f"expert FFN rate: {ffn_tokens} tokens x d_model {ffn_d_model} on {device.type}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(rank)
    d, f = ffn_d_model, 4 * ffn_d_model
    x = torch.randn(ffn_tokens, d, generator=generator, device=device).to(dtype)
    w1 = (torch.randn(d, f, generator=generator, device=device) / math.sqrt(d)).to(dtype)
    w2 = (torch.randn(f, d, generator=generator, device=device) / math.sqrt(f)).to(dtype)
    times = _time_repeated(lambda: torch.nn.functional.gelu(x @ w1) @ w2, device, iterations, warmup, align=False)
    median, _ = _median_of_max(times, device)
    flops = 2.0 * 2 * ffn_tokens * d * f
    results["ffn"] = {"tokens": ffn_tokens, "d_model": d, "d_ffn": f, "dtype": str(dtype).replace("torch.", ""),
                      "time_s": median, "flops": flops, "flops_per_s": flops / median}
    del x, w1, w2
    copy_bytes = min(2 ** 30, max_bytes) if device.type == "cuda" else 2 ** 26
    report.line(f"copy bandwidth: {copy_bytes} bytes")
    src = torch.randint(0, 255, (copy_bytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = _time_repeated(lambda: dst.copy_(src), device, iterations, warmup, align=False)
    median, _ = _median_of_max(times, device)
    results["hbm"] = {"bytes": copy_bytes, "time_s": median, "Bps": 2.0 * copy_bytes / median}
    return results


def _calibration_input(args, report=None):
    """(rank, CalibrationInput) of the command's arguments: read through the sources
    (`lshsim.executor.calibrate_files`), or measured (progress lines on `report`)."""
    if reads_files(args):
        return 0, calibration_input(args)
    from lshsim.executor.runtime import Progress, init_runtime, provenance, shutdown

    runtime = init_runtime(args.device, args.collective_timeout_s)
    try:
        results = measure(runtime.device, min_bytes=args.min_bytes, max_bytes=args.max_bytes,
                          iterations=args.iterations, warmup=args.warmup, ffn_d_model=args.ffn_d_model,
                          ffn_tokens=args.ffn_tokens, steps_per_octave=args.steps_per_octave,
                          progress=Progress(args.status_dir, runtime.rank), report=report)
        if getattr(args, "phases", None):
            from lshsim.executor.phase_bench import measure_phases

            sizes = sweep_sizes(max(args.min_bytes, 65536), args.max_bytes, runtime.world_size, 2, 0.5)
            results["phases"] = measure_phases(runtime, sizes, parts=args.phases, report=report,
                                               command=["python", "-m", "lshsim.executor", *sys.argv[1:]])
    finally:
        shutdown()
    source = {"tool": "executor calibrate", **provenance(runtime, ["python", "-m", "lshsim.executor", *sys.argv[1:]])}
    return runtime.rank, microbenchmark_input(results, source)


def calibrate_command(args) -> int:
    """The CLI behind `python -m lshsim.executor calibrate` and `lshsim calibrate` (flags:
    `lshsim.executor.commands.add_calibrate`): measure on every rank (or read files), then rank 0
    fits, writes and reports (`lshsim.executor.calibrate_files.finish`)."""
    from lshsim.executor.commands import progress_lines

    report = progress_lines(args, "calibrate")
    rank, inp = _calibration_input(args, report)
    if rank != 0:
        return 0
    code = finish(args, inp)
    if code == 0:
        for path in (getattr(args, "raw", None), getattr(args, "out", None), getattr(args, "plot", None)):
            if path:
                report.wrote(path)
    return code
