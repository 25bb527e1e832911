"""`executor run`: one workload, timed phase by phase, written as a measured Trace.

Per iteration every rank runs the MoE layer forward (and backward) on its own tokens
(`lshsim.executor.moe_layer`); phases are timed with `PhaseTimer`, then all ranks' timings are gathered:
a phase's time is the slowest rank's in an iteration, the reported time the median over the
measured iterations (`lshsim.executor.timing.aggregate`).

Interleaved with the layer iterations (layer, bare, layer, bare, ...), in the same process group
and with the same split sizes:

* a bare `all_to_all_single` of the same bytes (the same splits, no routing, no autograd, buffers
  allocated once), timed the same way: the reference for the executor's all-to-all bus bandwidth.
  Interleaving puts both under the same machine state; `min_a2a_s` adds iterations for small
  all-to-alls, whose run-to-run spread is large (`iteration_count`).

After the timed iterations:

* LSH-MoE runs: the uncompressed forward on the same input, for the relative error of the
  restored output, and the achieved compression rate (centroids sent / tokens sent, all ranks).

The trace's records of a phase come from the iteration whose slowest rank gives the median, so
`Trace.phase_durations_s()` returns exactly the reported medians. `meta["measured"]` adds the
per-iteration maxima, the traffic matrices (bytes actually sent, and the plan's token traffic),
the bare all-to-all, bus bandwidths and the LSH figures.
"""
from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lshsim.executor.dedup import dedup_groups
from lshsim.executor.comm import CommStats, align_ranks, fp8_row_bytes, node_process_group
from lshsim.executor.moe_layer import DistributedMoE, MoEContext, rank_inputs, resolve_dtype
from lshsim.executor.runtime import Progress, Runtime, provenance
from lshsim.executor.timing import IterationTimes, PhaseTimer, aggregate
from lshsim.executor.workload import WorkloadConfig
from lshsim.sim.trace import PHASES, PhaseRecord, Trace

__all__ = ["run_workload", "gather_rows", "bus_bandwidth_Bps", "FAULTS"]

#: testing faults (`executor run --fault`), injected on `fault_rank` at the first iteration: raise an
#: error; hang (alive, heartbeat going, no progress); SIGKILL itself (dies without a word); SIGSTOP
#: itself (frozen: no heartbeat either)
FAULTS = ("raise", "hang", "kill", "stop")


def gather_rows(values: list[float], device: torch.device) -> torch.Tensor:
    """All-gather one float64 vector per rank: (n,) -> (W, n) on the CPU (collective)."""
    local = torch.tensor(values, dtype=torch.float64, device=device)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local.cpu().unsqueeze(0)
    out = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return torch.stack(out).cpu()


def bus_bandwidth_Bps(bytes_per_rank: float, time_s: float, world_size: int) -> float:
    """nccl-tests all-to-all convention: algbw = bytes per rank / time, busbw = algbw (W-1)/W.

    >>> bus_bandwidth_Bps(1e9, 0.01, 4)
    75000000000.0
    """
    if time_s <= 0:
        raise ValueError(f"time_s={time_s} must be > 0")
    return bytes_per_rank / time_s * (world_size - 1) / world_size


def _load_file_tokens(workload: WorkloadConfig) -> torch.Tensor | None:
    if workload.inputs == "synthetic":
        return None
    path = Path(workload.inputs)
    if not path.is_file():
        raise ValueError(f"workload field 'inputs': file {str(path)!r} "
                         f"{'is a folder' if path.is_dir() else 'does not exist'}")
    try:
        if path.suffix == ".npy":
            array = np.load(path)                      # allow_pickle=False: no code from the file runs
            if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
                raise ValueError(f"holds {array.dtype} values, not real numbers")
            data = torch.from_numpy(array)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:       # a corrupt file: numpy / pickle / zip errors of many types, one line
        raise ValueError(f"workload field 'inputs': {str(path)!r} cannot be read: "
                         f"{' '.join(str(error).split())[:200]}") from None
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"workload field 'inputs': {str(path)!r} must hold one tensor, got {type(data).__name__}")
    if data.is_complex() or data.dtype == torch.bool:
        raise ValueError(f"workload field 'inputs': {str(path)!r} holds {data.dtype} values, not real numbers")
    data = data.float()
    if data.numel() and not bool(torch.isfinite(data).all()):
        raise ValueError(f"workload field 'inputs': {str(path)!r} holds NaN or infinite values")
    return data


def _phase_keys(times: dict) -> list[tuple[str, str]]:
    return sorted(times, key=lambda key: (key[1] != "forward", PHASES.index(key[0])))


class _BareA2A:
    """A bare all_to_all_single with fixed splits on buffers allocated once: the reference the
    executor's dispatch all-to-all is held against. `time_once()` runs it exactly as
    `lshsim.executor.comm._exchange` runs the dispatch (ranks aligned first, untimed; CUDA events or the
    host clock around the one collective) and returns this rank's seconds."""

    def __init__(self, send_splits: list[int], recv_splits: list[int], d_model: int, dtype: torch.dtype,
                 device: torch.device, sync: bool) -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        self.x = torch.randn(sum(send_splits), d_model, generator=generator, device=device).to(dtype)  # (N, d)
        self.out = torch.empty(sum(recv_splits), d_model, dtype=dtype, device=device)  # (M, d)
        self.send_splits, self.recv_splits = list(send_splits), list(recv_splits)
        self.device, self.sync = device, sync
        self.distributed = dist.is_initialized() and dist.get_world_size() > 1
        self.timer = PhaseTimer(device)

    def time_once(self) -> float:
        if self.sync:
            align_ranks(self.device)
        self.timer.start_iteration()
        self.timer.begin("dispatch_a2a")
        if self.distributed:
            dist.all_to_all_single(self.out, self.x, output_split_sizes=self.recv_splits,
                                   input_split_sizes=self.send_splits)
        else:
            self.out.copy_(self.x)
        self.timer.end("dispatch_a2a")
        start, end = self.timer.finish_iteration()[("dispatch_a2a", "forward")]
        return end - start


def iteration_count(requested: int, bare_s: float, layer_wall_s: float, min_a2a_s: float, max_iterations: int,
                    max_wall_s: float) -> int:
    """Measured iterations of a workload: at least `requested`; with min_a2a_s > 0, enough that the
    bare all-to-alls alone take min_a2a_s (ceil(min_a2a_s / bare_s)), capped at max_iterations and
    at max_wall_s of (layer + bare) wall time per workload, never below `requested`.

    >>> iteration_count(9, 1e-4, 2e-3, 0.05, 200, 10.0)   # 500 wanted, capped at 200
    200
    >>> iteration_count(9, 1e-4, 0.1, 0.05, 200, 3.0)    # 3 s / (0.1 + 1e-4 s) = 29.97
    29
    >>> iteration_count(9, 3e-3, 0.2, 0.05, 200, 3.0)    # 17 wanted, 14 fit in 3 s
    14
    >>> iteration_count(9, 3e-3, 0.5, 0.05, 200, 3.0)    # never fewer than asked
    9
    >>> iteration_count(9, 1e-4, 2e-3, 0.0, 200, 3.0)    # off: as the workload asks
    9
    """
    if min_a2a_s <= 0:
        return requested
    if bare_s <= 0 or layer_wall_s < 0:
        raise ValueError(f"bare_s={bare_s} must be > 0 and layer_wall_s={layer_wall_s} >= 0")
    wanted = min(math.ceil(min_a2a_s / bare_s), max_iterations)
    fit = math.floor(max_wall_s / (layer_wall_s + bare_s))
    return max(requested, min(wanted, fit))


def _inject_fault(fault: str, rank: int) -> None:
    if fault == "raise":
        raise RuntimeError(f"injected fault on rank {rank} (executor run --fault raise)")
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return  # continued (SIGCONT): carry on
    while True:  # hang
        time.sleep(3600)


def _time_layer_as_run(model: DistributedMoE, ctx: MoEContext, x0: torch.Tensor, token_ids: torch.Tensor,
                       grad_weight: torch.Tensor, workload: WorkloadConfig, device: torch.device) -> dict:
    """The whole layer as a training step runs it: {"forward", "backward", "total"} seconds.

    Per iteration: a host barrier (`lshsim.executor.phase_bench.host_barrier`: ranks aligned, GPU
    idle), then the forward and the backward with no phase timer and no rank alignment before the
    all-to-alls; CUDA events at the start, after the forward and after the backward (the host
    clock on a CPU). Each value is the slowest rank's per iteration, the lower median over
    max(workload.iterations, 5) iterations after one warm-up. Host stalls (the split-size
    exchange waits on the host, then launches the dispatch on an idle GPU) are inside: this is the
    time `lshsim validate` compares its whole-layer prediction with.
    """
    from lshsim.executor.phase_bench import host_barrier

    saved = ctx.timer, ctx.stats, ctx.sync
    ctx.timer, ctx.stats, ctx.sync = None, None, False
    iterations = max(workload.iterations, 5)
    rows = []
    try:
        for it in range(1 + iterations):
            for param in model.parameters():
                param.grad = None
            x = x0.detach().requires_grad_(workload.backward)
            host_barrier(device)
            if device.type == "cuda":
                events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                events[0].record()
                y = model.forward(x, token_ids).y
                events[1].record()
                if workload.backward:
                    (y.float() * grad_weight).sum().backward()
                events[2].record()
                events[2].synchronize()
                forward_s = events[0].elapsed_time(events[1]) / 1e3
                total_s = events[0].elapsed_time(events[2]) / 1e3
            else:
                t0 = time.perf_counter()
                y = model.forward(x, token_ids).y
                t1 = time.perf_counter()
                if workload.backward:
                    (y.float() * grad_weight).sum().backward()
                total_s, forward_s = time.perf_counter() - t0, t1 - t0
            if it >= 1:
                rows.append([forward_s, total_s - forward_s, total_s])
    finally:
        ctx.timer, ctx.stats, ctx.sync = saved
    gathered = torch.stack([gather_rows(row, device) for row in rows])  # (I, W, 3)
    slowest = gathered.max(dim=1).values  # (I, 3)
    median = slowest.sort(dim=0).values[(slowest.shape[0] - 1) // 2].tolist()  # (3,)
    return {"forward": median[0], "backward": median[1], "total": median[2], "iterations": iterations,
            "convention": "as_run", "per_iteration_total_s": slowest[:, 2].tolist()}


def run_workload(workload: WorkloadConfig, runtime: Runtime, *, progress: Progress | None = None,
                 fault: str | None = None, fault_rank: int = 1, command: list[str] | None = None,
                 min_a2a_s: float = 0.0, max_iterations: int = 200, max_wall_s: float = 5.0, report=None,
                 hold_gpu_cycles: int = 0) -> Trace:
    """Run `workload` on this rank (collective: every rank calls it); every rank returns the trace.

    report: where a person sees progress (`lshsim.cli._progress.ProgressLines`, quiet on ranks > 0):
    a line when the workload starts and when its iterations are done, and at most one line per
    its `interval_s` in between (iteration i of n, elapsed, an estimate of what is left).

    min_a2a_s > 0: measure more iterations than the workload asks, enough that the bare
    all-to-alls take min_a2a_s in all (`iteration_count`; at most max_iterations, and at most
    max_wall_s of wall time per workload); decided once, after the warm-up, identically on every rank.

    hold_gpu_cycles > 0 (CUDA only; the phases "behind a busy GPU"): before every layer iteration
    (warm-up and timed; not the bare all-to-all, not the as-run layer time), queue a spin kernel
    `torch.cuda._sleep(hold_gpu_cycles)` on the current stream, then start the iteration's timer.
    The host queues the iteration's first phases while the GPU spins, as the previous layer's
    kernels would hide them in a training step, so the first phase's events (the gate) hold its GPU
    time rather than the host's launch on an idle GPU. 0 (the default) queues nothing: the phases
    start from an idle GPU, the convention the targets are judged on.
    """
    if hold_gpu_cycles < 0:
        raise ValueError(f"hold_gpu_cycles={hold_gpu_cycles} must be >= 0")
    if hold_gpu_cycles and runtime.device.type != "cuda":
        raise ValueError(f"hold_gpu_cycles={hold_gpu_cycles}: a spin kernel needs a CUDA device, not "
                         f"{runtime.device.type}")
    if min_a2a_s < 0 or max_iterations < 1 or max_wall_s <= 0:
        raise ValueError(f"min_a2a_s={min_a2a_s} must be >= 0, max_iterations={max_iterations} >= 1, "
                         f"max_wall_s={max_wall_s} > 0")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"fault={fault!r} must be one of {FAULTS} or None")
    if fault is not None and not 0 <= fault_rank < runtime.world_size:
        raise ValueError(f"fault_rank={fault_rank} must be < the world size {runtime.world_size}: it would inject "
                         f"nothing")
    progress = progress or Progress(None, runtime.rank)
    rank, world, device = runtime.rank, runtime.world_size, runtime.device
    workload.check_world(world)
    dtype = resolve_dtype(workload, device)
    timer = PhaseTimer(device)
    stats = CommStats(world)
    per_node = workload.ranks_per_node(world)
    groupwise = workload.alltoall == "groupwise"
    node_group, node_ranks = node_process_group(rank, world, per_node) if groupwise else (None, None)
    groups = dedup_groups(rank, world, per_node) if workload.alltoall == "node_dedup" else None
    ctx = MoEContext(rank=rank, world_size=world, device=device, node_group=node_group, node_ranks=node_ranks,
                     dedup=groups,
                     timer=timer, stats=stats, sync=workload.sync_phases, progress=progress)
    model = DistributedMoE(workload, ctx, dtype, requires_grad=workload.backward)
    x0, token_ids = rank_inputs(workload, rank, device, dtype, _load_file_tokens(workload))
    generator = torch.Generator(device=device).manual_seed(7 + rank)
    grad_weight = torch.randn(x0.shape, generator=generator, device=device)  # (T, d) loss = sum(y * g)
    progress.step("setup done")
    if report is not None:
        report.line(f"workload {workload.name}: {world} ranks x {workload.tokens_per_rank} tokens, d_model "
                    f"{workload.d_model}, {workload.num_experts} experts, router {workload.router.name}, "
                    f"{device.type}: {workload.warmup} warm-up + {workload.iterations} iterations")
    element_bytes = torch.finfo(dtype).bits // 8
    bytes_per_token = workload.d_model * element_bytes
    # a dispatched row's bytes: the tokens' dtype, or the fp8 wire format (values + scales)
    fp8 = workload.dispatch_format == "fp8"
    dispatch_row_bytes = fp8_row_bytes(workload.d_model) if fp8 else bytes_per_token
    a2a_keys = [(name, direction) for name in ("dispatch_a2a", "combine_a2a") for direction in ("forward", "backward")]

    def layer_iteration() -> dict:
        stats.clear()
        for param in model.parameters():
            param.grad = None
        x = x0.detach().requires_grad_(workload.backward)
        if hold_gpu_cycles:
            torch.cuda._sleep(int(hold_gpu_cycles))  # the GPU busy while the host queues the first phases
        timer.start_iteration()
        result = model.forward(x, token_ids)
        progress.step(f"iteration {it} forward done")
        if workload.backward:
            (result.y.float() * grad_weight).sum().backward()
        return result, timer.finish_iteration()

    # Layer iterations and bare all-to-alls of the same splits alternate (layer, bare, layer, bare,
    # ...), so that both see the same state of the machine; the splits are known after the first
    # layer iteration (routing is deterministic on fixed inputs), the bare one's buffers are
    # allocated then, once, and it gets one untimed warm-up.
    measured, bare_times, out, bare = [], [], None, None
    iterations = workload.iterations
    it = 0
    loop_started = time.perf_counter()
    while it < workload.warmup + iterations:
        progress.step(f"iteration {it}")
        if report is not None and it > 0:
            total = workload.warmup + iterations
            left_s = (time.perf_counter() - loop_started) / it * (total - it)
            report.tick(f"workload {workload.name}: iteration {it + 1}/{total} "
                        f"({'warm-up' if it < workload.warmup else 'measured'})", left_s=left_s)
        if fault is not None and it == 0 and rank == fault_rank:
            _inject_fault(fault, rank)
        wall0 = time.perf_counter()
        out, times = layer_iteration()
        layer_wall_s = time.perf_counter() - wall0
        if it >= workload.warmup:
            measured.append(times)
        if bare is None:
            progress.step("bare all-to-all setup")
            sent_rows = stats.sent_bytes.get(("dispatch_a2a", "forward"), [0] * world)
            sent_matrix = gather_rows(sent_rows, device)  # (W src, W dst) bytes of the dispatch
            recv_splits = [int(v) for v in (sent_matrix[:, rank] / dispatch_row_bytes).round().tolist()]
            send_splits = [int(round(v / dispatch_row_bytes)) for v in sent_rows]
            # the bare all-to-all moves the same bytes as one all_to_all_single (the recorded matrix,
            # node_dedup's two stages summed); fp8 rows as uint8 records
            bare = _BareA2A(send_splits, recv_splits, dispatch_row_bytes if fp8 else workload.d_model,
                            torch.uint8 if fp8 else dtype, device, workload.sync_phases)
            bare.time_once()  # warm-up
        bare_s = bare.time_once()
        if it >= workload.warmup:
            bare_times.append(bare_s)
        if it == max(workload.warmup - 1, 0) and min_a2a_s > 0:
            # one decision for all ranks: the slowest rank's estimates
            estimate = gather_rows([bare_s, layer_wall_s], device).max(dim=0).values.tolist()
            iterations = iteration_count(workload.iterations, max(estimate[0], 1e-9), estimate[1], min_a2a_s,
                                         max_iterations, max_wall_s)
        it += 1
    progress.step("timed iterations done")
    if report is not None:
        report.line(f"workload {workload.name}: {workload.warmup + iterations} iterations done in "
                    f"{time.perf_counter() - loop_started:.1f} s"
                    + ("; LSH error (uncompressed forward)" if model.lsh is not None else ""))
    keys = _phase_keys(measured[0])
    summary = aggregate(IterationTimes.from_iterations(keys, measured), device)

    # bytes: what every rank sent, per collective and direction (last iteration; inputs are fixed)
    sent = []
    for key in a2a_keys:
        sent.extend(stats.sent_bytes.get(key, [0] * world))
    sent_all = gather_rows(sent, device).reshape(world, len(a2a_keys), world)  # (W src, keys, W dst)
    token_counts = out.plan.send_counts()[rank].tolist()  # (W,) this rank's row of the plan
    token_traffic = gather_rows(token_counts, device) * bytes_per_token  # (W, W)
    dispatch_traffic = sent_all[:, 0]  # (W, W) bytes actually sent by the dispatch all-to-all

    # the bare all_to_all_single of the same bytes, interleaved with the layer iterations above
    bare_max = gather_rows(bare_times, device).max(dim=0).values  # (I,) slowest rank per iteration
    bare_s = float(bare_max.sort().values[(bare_max.numel() - 1) // 2])
    del bare

    # LSH figures: compression rate, centroid error, error of the restored output
    lsh_info = None
    if model.lsh is not None:
        progress.step("lsh error")
        with torch.no_grad():
            ctx.timer, ctx.stats = None, None
            y_full = model.forward(x0, token_ids, use_lsh=False).y.float()
            y_lsh = model.forward(x0, token_ids, use_lsh=True).y.float()
            ctx.timer, ctx.stats = timer, stats
            diff_sq = float((y_lsh - y_full).double().square().sum())
            full_sq = float(y_full.double().square().sum())
        residual_sq, token_sq = out.lsh_sums()
        totals = gather_rows([out.tokens_sent, out.rows_sent, residual_sq, token_sq, diff_sq, full_sq],
                             device).sum(dim=0).tolist()
        lsh_info = {"config": dict(workload.lsh), "tokens_sent": int(totals[0]), "centroids_sent": int(totals[1]),
                    "compression_rate": totals[1] / max(totals[0], 1),
                    "centroid_error": (totals[2] / totals[3]) ** 0.5 if totals[3] > 0 else 0.0,
                    "output_rel_error": (totals[4] / totals[5]) ** 0.5 if totals[5] > 0 else 0.0}
    dropped = gather_rows([out.plan.num_dropped, out.plan.num_kept], device).sum(dim=0).tolist()
    rows_per_expert = gather_rows([float(v) for v in model.rows_per_expert], device).long().tolist()  # (W, E_r)

    # the layer as it runs: no phase timer, no rank alignment inside, the GPU idle at the start
    progress.step("as-run layer iterations")
    layer_s = _time_layer_as_run(model, ctx, x0, token_ids, grad_weight, workload, device)

    # records: each phase from the iteration whose slowest rank is the median
    records = []
    direction_index = {key: i for i, key in enumerate(a2a_keys)}
    for p, (name, direction) in enumerate(keys):
        iteration = int(summary.median_index[p])
        for r in range(world):
            start = float(summary.per_rank_start_s[r, iteration, p])
            duration = float(summary.per_rank_duration_s[r, iteration, p])
            moved = 0
            if (name, direction) in direction_index:
                row = sent_all[r, direction_index[(name, direction)]]  # (W,)
                moved = int(row.sum() - row[r])
            records.append(PhaseRecord(name=name, rank=r, start_s=start, end_s=start + duration, bytes=moved,
                                       direction=direction))
    mean_sent = float(dispatch_traffic.sum(dim=1).mean())
    dispatch_s = summary.as_dict()["forward"]["dispatch_a2a"]
    measured_meta = {
        "phases_s": summary.as_dict(),
        "per_iteration_max_s": {f"{direction}/{name}": summary.max_over_ranks_s[:, p].tolist()
                                for p, (name, direction) in enumerate(keys)},
        "warmup": workload.warmup, "iterations": len(measured), "iterations_requested": workload.iterations,
        "bare_interleaved": True,
        "traffic_bytes": dispatch_traffic.long().tolist(),
        "combine_traffic_bytes": sent_all[:, 2].long().tolist(),
        "token_traffic_bytes": token_traffic.long().tolist(),
        "bytes_per_token": bytes_per_token,
        "dispatch_bytes_per_row": dispatch_row_bytes,
        "bare_a2a_s": bare_s,
        "bare_a2a_per_iteration_s": bare_max.tolist(),
        "dispatch_busbw_Bps": bus_bandwidth_Bps(mean_sent, dispatch_s, world) if world > 1 else None,
        "bare_busbw_Bps": bus_bandwidth_Bps(mean_sent, bare_s, world) if world > 1 else None,
        "mean_bytes_per_rank": mean_sent,
        "dropped": int(dropped[0]), "kept": int(dropped[1]),
        "lsh": lsh_info,
        "sync_phases": workload.sync_phases,
        "rows_per_expert": rows_per_expert,
        "expert_method": model.expert_method,
        "layer_s": layer_s,
        "hold_gpu_cycles": int(hold_gpu_cycles),
    }
    prov = provenance(runtime, command)
    meta = {
        "source": "measured",
        "workload": {**workload.to_dict(), "world_size": world, "dtype_resolved": str(dtype).replace("torch.", ""),
                     "bytes_per_token": bytes_per_token},
        "cluster": {"gpu": prov["gpu"], "gpus": world, "nodes": model.placement.num_nodes,
                    "ranks_per_node": per_node, "device_type": device.type, "backend": runtime.backend},
        "provenance": prov,
        "measured": measured_meta,
    }
    progress.step("done")
    return Trace(phases=records, meta=meta)
