"""`executor calibrate --phases`: the measurements behind the phase model (`lshsim.calibration.phase_model`).

Three parts, each a list of plain records in the raw JSON's `results["phases"]`:

1. `a2a`: equal-split all-to-alls of M bytes per rank (uint8, split sizes passed explicitly: the
   executor's code path), each timed in three conventions, every one the slowest rank per
   repetition and the median over repetitions:

   * device:        `align_ranks` (host barrier, then a spin kernel and a device barrier), events
                    around ONE call: the collective's GPU time only (what `executor run` records);
   * as_run:        a host barrier (one-element all-reduce waited for on the host), the GPU left
                    idle, events around ONE call: the host's launch cost (split-size handling,
                    NCCL's group launch) is inside, as when a step waits for its split sizes;
   * back_to_back:  a host barrier, events around n calls queued back to back, divided by n
                    (nccl-tests' average): the launch cost hides behind the previous call's
                    GPU time once that is longer.

   Sizes: 2^(k + 1/4) and 2^(k + 3/4) per rank (`sweep_sizes(offset=0.5)`), chunks of whole
   4 KiB; each also unaligned (every per-peer chunk 2 bytes longer: 2-byte, not 16-byte,
   aligned buffers), flagged `aligned: false`; and mostly-diagonal all-to-alls (`self: true`: the
   rank keeps all but 64 KiB per peer) at 1 MiB, 4 MiB, ... up to the largest size, for the rate of
   NCCL's self-chunk copy. CPU (gloo) timing is the host clock for all three.

2. `expert`: the executor's whole expert phase (`lshsim.executor.moe_ops.expert_block`) forward
   and backward on a grid of (local experts, rows per expert, d_model, d_ffn), rows arriving from
   two ranks so that the regrouping runs as on a multi-rank layer; events around the forward and
   around the backward, median over repetitions, in two ways alternately: device time (a spin
   kernel queued first, so the host has queued the phase before the GPU reaches it: its GPU time
   only; `forward_s`, `backward_s`) and cold (the GPU idle, the host's launches inside;
   `forward_cold_s`, `backward_cold_s`). Grid points are shared out over the ranks.

3. `layers`: built-in calibration workloads (`CALIBRATION_WORKLOADS`: tokens, d_model, experts,
   router, LSH) run through `executor run`'s own `run_workload`; each record keeps the workload,
   its measured phase times and its as-run layer times, the points of the gate, LSH, split-size
   exchange and untimed-glue fits.
"""
from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from lshsim.executor.comm import align_ranks

__all__ = ["host_barrier", "time_conventions", "measure_a2a_conventions", "measure_expert_grid", "EXPERT_GRID",
           "CALIBRATION_WORKLOADS", "measure_layers", "measure_phases", "PARTS"]

#: the parts `measure_phases` can run
PARTS = ("a2a", "expert", "layers")

#: (local experts, rows per expert, d_model, d_ffn) axes of the expert grid
EXPERT_GRID = {"experts": (1, 4, 16), "rows_per_expert": (64, 256, 1024, 4096, 16384),
               "d_model": (1024, 2048, 4096, 8192), "d_ffn": (1024, 4096, 16384)}
#: the grid on a CPU (gloo runs: tests and small machines): the same code, small shapes
EXPERT_GRID_CPU = {"experts": (1, 4), "rows_per_expert": (16, 64), "d_model": (64, 128), "d_ffn": (64, 256)}
#: the grid's largest point must fit: local experts x rows per expert x max(d, d_ffn) elements of
#: activations are kept for the backward; points over this many elements are left out
_EXPERT_MAX_ELEMENTS = 2 ** 33

#: calibration workloads of the layer part: (name suffix, fields); every one on all ranks of the run
CALIBRATION_WORKLOADS = [
    ("t1k-d1024-e8", dict(tokens_per_rank=1024, d_model=1024, d_ffn=2048, num_experts=8)),
    ("t4k-d1024-e8", dict(tokens_per_rank=4096, d_model=1024, d_ffn=4096, num_experts=8)),
    ("t16k-d1024-e32", dict(tokens_per_rank=16384, d_model=1024, d_ffn=2048, num_experts=32)),
    ("t2k-d4096-e16", dict(tokens_per_rank=2048, d_model=4096, d_ffn=4096, num_experts=16)),
    ("t8k-d2048-e64-k4", dict(tokens_per_rank=8192, d_model=2048, d_ffn=1024, num_experts=64,
                              router={"name": "topk", "k": 4, "capacity_factor": 1.25})),
    ("t16k-d4096-e8-k1", dict(tokens_per_rank=16384, d_model=4096, d_ffn=8192, num_experts=8,
                              router={"name": "topk", "k": 1, "capacity_factor": 1.25})),
    ("t4k-d2048-e16-locmoe", dict(tokens_per_rank=4096, d_model=2048, d_ffn=4096, num_experts=16,
                                  router={"name": "locmoe", "k": 1, "capacity_factor": 1.25})),
    ("t2k-d1024-e8-lsh", dict(tokens_per_rank=2048, d_model=1024, d_ffn=4096, num_experts=8, input_clusters=64,
                              input_noise=0.1, lsh={"num_hashes": 2, "proj_dim": 8})),
    ("t8k-d2048-e16-lsh", dict(tokens_per_rank=8192, d_model=2048, d_ffn=4096, num_experts=16, input_clusters=256,
                               input_noise=0.1, lsh={"num_hashes": 4, "proj_dim": 16})),
    ("t4k-d1024-e16-lsh", dict(tokens_per_rank=4096, d_model=1024, d_ffn=2048, num_experts=16, input_clusters=128,
                               input_noise=0.2, lsh={"num_hashes": 6, "proj_dim": 8})),
    ("t16k-d2048-e8-lsh", dict(tokens_per_rank=16384, d_model=2048, d_ffn=2048, num_experts=8, input_clusters=64,
                               input_noise=0.1, lsh={"num_hashes": 2, "proj_dim": 16})),
    ("t1k-d4096-e8-lsh", dict(tokens_per_rank=1024, d_model=4096, d_ffn=8192, num_experts=8, input_clusters=32,
                              input_noise=0.1, lsh={"num_hashes": 4, "proj_dim": 8})),
    ("t8k-d1024-e32-k4-lsh", dict(tokens_per_rank=8192, d_model=1024, d_ffn=1024, num_experts=32, input_clusters=256,
                                  input_noise=0.3, lsh={"num_hashes": 6, "proj_dim": 16},
                                  router={"name": "topk", "k": 4, "capacity_factor": 1.25})),
    ("t32k-d2048-e16", dict(tokens_per_rank=32768, d_model=2048, d_ffn=2048, num_experts=16)),
    ("t64k-d1024-e8-k1", dict(tokens_per_rank=65536, d_model=1024, d_ffn=4096, num_experts=8,
                              router={"name": "topk", "k": 1, "capacity_factor": 1.25})),
    ("t32k-d2048-e8-lsh", dict(tokens_per_rank=32768, d_model=2048, d_ffn=4096, num_experts=8, input_clusters=1024,
                               input_noise=0.2, lsh={"num_hashes": 4, "proj_dim": 16})),
    ("t16k-d4096-e8-lsh", dict(tokens_per_rank=16384, d_model=4096, d_ffn=4096, num_experts=8, input_clusters=512,
                               input_noise=0.2, lsh={"num_hashes": 6, "proj_dim": 16})),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_barrier(device: torch.device) -> None:
    """Every rank's host leaves only when all have arrived, and the GPU is idle (nothing queued)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.ones(1, device=device)
        dist.all_reduce(flag)
        _sync(device)
        float(flag.item())
    _sync(device)


def _elapsed_s(fn, device: torch.device, calls: int = 1) -> float:
    """Seconds of `calls` calls of fn: CUDA events around them on a GPU, the host clock on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - t0


def _median_of_max(values: list[float], device: torch.device) -> float:
    """The lower median over repetitions of the slowest rank's value (collective)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    ordered = sorted(tensor.cpu().tolist())
    return ordered[(len(ordered) - 1) // 2]


def time_conventions(fn, device: torch.device, iterations: int = 7, warmup: int = 2,
                     conventions=("device", "as_run", "back_to_back")) -> dict:
    """{convention: seconds} of one collective `fn` (collective: every rank calls it); module docstring."""
    out = {}
    device_s = None
    for convention in conventions:
        calls = 1
        if convention == "back_to_back":
            reference = device_s if device_s is not None else 1e-4
            calls = int(min(50, max(2, 0.005 // max(reference, 1e-7))))
        times = []
        for it in range(warmup + iterations):
            if convention == "device":
                align_ranks(device)
            else:
                host_barrier(device)
            elapsed = _elapsed_s(fn, device, calls) / calls
            if it >= warmup:
                times.append(elapsed)
        out[convention] = _median_of_max(times, device)
        if convention == "device":
            device_s = out[convention]
        if convention == "back_to_back":
            out["back_to_back_calls"] = calls
    return out


def measure_a2a_conventions(device: torch.device, sizes: list[int], *, unaligned: bool = True, iterations: int = 7,
                            warmup: int = 2, report=None, matrices: list[dict] | None = None,
                            self_sizes: list[int] | None = None) -> list[dict]:
    """The a2a part (module docstring). matrices: extra cases {"name", "rows": (W, W) bytes sent from
    row to column} (held-out sets: `benchmarks/bench_a2a_conventions.py`); every rank reads its row
    and its column."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    cases = []
    for size in sizes:
        chunk = size // world
        cases.append({"bytes_per_rank": size, "aligned": True, "splits": [[chunk] * world] * world})
        if unaligned:
            cases.append({"bytes_per_rank": (chunk + 2) * world, "aligned": False,
                          "splits": [[chunk + 2] * world] * world})
    for size in self_sizes or []:
        # mostly diagonal: the rank keeps all but 64 KiB per peer (NCCL's self-chunk copy rate)
        off = 65536 if world > 1 else 0
        rows = [[size - off * (world - 1) if dst == src else off for dst in range(world)] for src in range(world)]
        cases.append({"bytes_per_rank": size, "aligned": True, "self": True, "local_bytes": rows[0][0],
                      "splits": rows})
    for matrix in matrices or []:
        rows = [[int(v) for v in row] for row in matrix["rows"]]
        cases.append({"name": matrix["name"], "aligned": all(v % 16 == 0 for row in rows for v in row),
                      "bytes_per_rank": max(sum(row) for row in rows), "splits": rows})
    out = []
    for i, case in enumerate(cases):
        splits = case["splits"]
        send_splits = [int(v) for v in splits[rank]]
        recv_splits = [int(splits[src][rank]) for src in range(world)]
        send = torch.randint(0, 255, (sum(send_splits),), dtype=torch.uint8, device=device)
        recv = torch.empty(sum(recv_splits), dtype=torch.uint8, device=device)
        if world > 1:
            times = time_conventions(lambda: dist.all_to_all_single(recv, send, recv_splits, send_splits), device,
                                     iterations, warmup)
        else:
            times = time_conventions(lambda: recv.copy_(send), device, iterations, warmup)
        del send, recv
        record = {key: value for key, value in case.items()}
        record.update(times)
        record["world_size"] = world
        out.append(record)
        if report is not None:
            report.tick(f"all-to-all conventions {i + 1}/{len(cases)}: {case['bytes_per_rank']} B/rank "
                        f"{'aligned' if case['aligned'] else 'unaligned'}: device {times['device'] * 1e6:.1f} us, "
                        f"as-run {times['as_run'] * 1e6:.1f} us, back-to-back {times['back_to_back'] * 1e6:.1f} us")
    return out


def expert_grid_points(grid: dict | None = None) -> list[tuple[int, int, int, int]]:
    grid = EXPERT_GRID if grid is None else grid
    points = []
    for experts in grid["experts"]:
        for rows in grid["rows_per_expert"]:
            for d in grid["d_model"]:
                for f in grid["d_ffn"]:
                    if experts * rows * max(d, f) <= _EXPERT_MAX_ELEMENTS:
                        points.append((experts, rows, d, f))
    return points


def _time_expert_point(experts: int, rows: int, d: int, f: int, device: torch.device, dtype: torch.dtype,
                       iterations: int, warmup: int) -> tuple[float, float, str]:
    from lshsim.executor.moe_ops import expert_block

    generator = torch.Generator(device=device).manual_seed(experts * 7919 + rows * 31 + d + f)
    w1 = (torch.randn(experts, d, f, generator=generator, device=device, dtype=dtype) / math.sqrt(d)).requires_grad_()
    w2 = (torch.randn(experts, f, d, generator=generator, device=device, dtype=dtype) / math.sqrt(f)).requires_grad_()
    world = 2
    half = rows // world
    received = torch.tensor([[half] * experts, [rows - half] * experts], device=device, dtype=torch.int64)  # (2, E)
    rows_per_expert = [rows] * experts
    x = torch.randn(rows * experts, d, generator=generator, device=device, dtype=dtype).requires_grad_()
    grad = torch.randn(rows * experts, d, generator=generator, device=device, dtype=dtype)
    forward, backward, cold_forward, cold_backward, method = [], [], [], [], "auto"
    for it in range(warmup + 2 * iterations):
        x.grad = w1.grad = w2.grad = None
        _sync(device)
        holder = {}

        def run_forward():
            holder["y"], holder["method"] = expert_block(x, received, rows_per_expert, w1, w2)

        cold = it % 2 == 1                     # alternate: device time, then cold (idle GPU) time
        if not cold:
            _hold(device)
        fwd = _elapsed_s(run_forward, device)
        _sync(device)
        if not cold:
            _hold(device)
        bwd = _elapsed_s(lambda: holder["y"].backward(grad), device)
        method = holder["method"]
        if it >= warmup:
            (cold_forward if cold else forward).append(fwd)
            (cold_backward if cold else backward).append(bwd)
    return _median(forward), _median(backward), _median(cold_forward), _median(cold_backward), method


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[(len(values) - 1) // 2] if values else float("nan")


#: GPU clock cycles of the spin kernel queued before a device-time measurement (about 1 ms on an
#: H200): the host queues the whole phase while the GPU spins, so the events hold its GPU time only
HOLD_CYCLES = 2_000_000


def _hold(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda._sleep(HOLD_CYCLES)


def measure_expert_grid(device: torch.device, *, iterations: int = 5, warmup: int = 2, grid: dict | None = None,
                        report=None) -> list[dict]:
    """The expert part (module docstring); every rank returns all points (all-gathered)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if grid is None and device.type != "cuda":
        grid = EXPERT_GRID_CPU
    points = expert_grid_points(grid)
    mine = []
    started = time.perf_counter()
    for i, (experts, rows, d, f) in enumerate(points):
        if i % world != rank:
            continue
        fwd, bwd, cold_fwd, cold_bwd, method = _time_expert_point(experts, rows, d, f, device, dtype, iterations,
                                                                   warmup)
        mine.append({"experts": experts, "rows_per_expert": rows, "d_model": d, "d_ffn": f, "forward_s": fwd,
                     "backward_s": bwd, "forward_cold_s": cold_fwd, "backward_cold_s": cold_bwd, "method": method,
                     "dtype": str(dtype).replace("torch.", "")})
        if report is not None:
            done = i + 1
            report.tick(f"expert grid {done}/{len(points)}: {experts} experts x {rows} rows, d {d}, d_ffn {f}: "
                        f"forward {fwd * 1e3:.3f} ms, backward {bwd * 1e3:.3f} ms",
                        left_s=(time.perf_counter() - started) / done * (len(points) - done))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        mine = [record for part in gathered for record in part]
    return sorted(mine, key=lambda r: (r["experts"], r["rows_per_expert"], r["d_model"], r["d_ffn"]))


def calibration_workloads(world_size: int, dtype: str = "auto", iterations: int = 5, warmup: int = 2,
                          small: bool = False) -> list:
    """`CALIBRATION_WORKLOADS` as `WorkloadConfig`s for `world_size` ranks (experts rounded up to a
    multiple of the ranks); small: tokens / 16 and widths / 16 (at least 64), for a CPU."""
    from lshsim.executor.workload import WorkloadConfig

    out = []
    for suffix, fields in CALIBRATION_WORKLOADS:
        data = {"name": f"phase-cal-{suffix}", "role": "calibration", "dtype": dtype, "iterations": iterations,
                "warmup": warmup, **fields}
        if small:
            for key in ("tokens_per_rank", "d_model", "d_ffn"):
                data[key] = max(64, data[key] // 16)
        experts = -(-data["num_experts"] // world_size) * world_size
        if (data.get("router") or {}).get("name") == "locmoe":
            # the GrAP gate needs d_model divisible by the experts: the next multiple of the ranks that is
            while data["d_model"] % experts and experts <= data["d_model"]:
                experts += world_size
            if data["d_model"] % experts:
                continue
        data["num_experts"] = experts
        out.append(WorkloadConfig.from_dict(data))
    return out


def layer_record(trace) -> dict:
    """What the phase fits read from one measured trace: workload, phases, layer times, traffic."""
    meta = trace.meta
    measured = meta["measured"]
    return {"workload": meta["workload"], "phases_s": measured["phases_s"], "layer_s": measured.get("layer_s"),
            "traffic_bytes": measured["traffic_bytes"], "combine_traffic_bytes": measured["combine_traffic_bytes"],
            "bytes_per_token": measured["bytes_per_token"], "kept": measured["kept"], "lsh": measured.get("lsh"),
            "rows_per_expert": measured.get("rows_per_expert")}


def measure_layers(runtime, *, workloads=None, report=None, command=None) -> list[dict]:
    """The layers part (module docstring): run each calibration workload; every rank returns the records."""
    from lshsim.executor.run import run_workload

    if workloads is None:
        workloads = calibration_workloads(runtime.world_size, small=runtime.device.type != "cuda")
    records = []
    for workload in workloads:
        trace = run_workload(workload, runtime, report=report, command=command)
        records.append(layer_record(trace))
        if runtime.device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def measure_phases(runtime, sizes: list[int], *, parts=PARTS, iterations: int = 7, warmup: int = 2, report=None,
                   command=None) -> dict:
    """Run the parts of `parts` (module docstring); every rank returns {"a2a": [...], "expert": [...], "layers": [...]}."""
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise ValueError(f"phase parts {unknown} unknown; known: {list(PARTS)}")
    out: dict = {"parts": list(parts)}
    device = runtime.device
    if "a2a" in parts:
        if report is not None:
            report.line(f"all-to-all in three timing conventions: {len(sizes)} sizes x aligned / unaligned")
        self_sizes = [2 ** k for k in range(20, 31, 2) if 2 ** k <= max(sizes, default=0)]
        out["a2a"] = measure_a2a_conventions(device, sizes, iterations=iterations, warmup=warmup, report=report,
                                             self_sizes=self_sizes)
    if "expert" in parts:
        if report is not None:
            grid = EXPERT_GRID if device.type == "cuda" else EXPERT_GRID_CPU
            report.line(f"expert phase grid: {len(expert_grid_points(grid))} points, forward and backward")
        out["expert"] = measure_expert_grid(device, report=report)
    if "layers" in parts:
        if report is not None:
            report.line(f"calibration workloads: {len(CALIBRATION_WORKLOADS)} layers, phases and as-run layer time")
        out["layers"] = measure_layers(runtime, report=report, command=command)
    return out
