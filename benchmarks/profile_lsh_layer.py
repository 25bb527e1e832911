"""Where the LSH phases of the layer spend their time, on one GPU (torch.profiler traces + phase events).

    python benchmarks/profile_lsh_layer.py --out DIR [--shapes gpu-lsh-d4096-t8k ...] [--iterations 5]

For every LSH shape of `bench_moe_layer.py` (default: the three LSH shapes) the layer is built on one
GPU as `lshsim.executor.run.run_workload` builds it, warmed up, then timed phase by phase (CUDA
events, the benchmark's timer) in two conventions: every iteration starting on an idle GPU (the
benchmark's) and behind a busy GPU (a spin kernel queued first, so the events hold GPU time). Per
phase: the medians, and the host time between the phase's begin and end calls (perf_counter).
Then two idle-GPU iterations run under torch.profiler (CPU and CUDA activities, phases marked as
record_function ranges "phase:NAME") and the trace is written to DIR/NAME.json.gz, with a summary
of the LSH kernels' device time per iteration.
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_moe_layer  # noqa: E402
from lshsim.executor.comm import CommStats  # noqa: E402
from lshsim.executor.moe_layer import DistributedMoE, MoEContext, rank_inputs, resolve_dtype  # noqa: E402
from lshsim.executor.runtime import init_runtime, shutdown  # noqa: E402
from lshsim.executor.timing import PhaseTimer  # noqa: E402

LSH_SHAPES = ("gpu-lsh-d1024-t16k", "gpu-lsh-d4096-t8k", "deepseek-v3-like-lsh")


class HostTimer(PhaseTimer):
    """The benchmark's timer that also keeps the host time of every forward phase and, when
    `ranges` is set, marks the phases as profiler ranges."""

    ranges = False

    def __init__(self, device):
        super().__init__(device)
        self.host: dict = defaultdict(float)
        self._host_open: dict = {}
        self._rf: dict = {}

    def begin(self, name, direction="forward"):
        super().begin(name, direction)
        self._host_open[(name, direction)] = time.perf_counter()
        if self.ranges:
            rf = torch.autograd.profiler.record_function(f"phase:{name}:{direction}")
            rf.__enter__()
            self._rf[(name, direction)] = rf

    def end(self, name, direction="forward"):
        super().end(name, direction)
        self.host[(name, direction)] += time.perf_counter() - self._host_open.pop((name, direction))
        rf = self._rf.pop((name, direction), None)
        if rf is not None:
            rf.__exit__(None, None, None)

    def start_iteration(self):
        super().start_iteration()
        self.host = defaultdict(float)


def run(workload, runtime, out_dir: Path, iterations: int) -> dict:
    device = runtime.device
    dtype = resolve_dtype(workload, device)
    timer = HostTimer(device)
    ctx = MoEContext(rank=0, world_size=1, device=device, timer=timer, stats=CommStats(1), sync=workload.sync_phases)
    model = DistributedMoE(workload, ctx, dtype, requires_grad=workload.backward)
    x0, token_ids = rank_inputs(workload, 0, device, dtype)
    grad_weight = torch.randn(x0.shape, generator=torch.Generator(device=device).manual_seed(7), device=device)

    def iteration(spin: int = 0):
        for param in model.parameters():
            param.grad = None
        x = x0.detach().requires_grad_(True)
        if spin:
            torch.cuda._sleep(spin)
        timer.start_iteration()
        result = model.forward(x, token_ids)
        (result.y.float() * grad_weight).sum().backward()
        times = timer.finish_iteration()
        return {key: end - start for key, (start, end) in times.items()}, dict(timer.host)

    for _ in range(3):
        iteration()
    summary = {}
    for label, spin in (("idle", 0), ("busy", 1_000_000 if device.type == "cuda" else 0)):
        gpu, host = defaultdict(list), defaultdict(list)
        for _ in range(iterations):
            times, hosts = iteration(spin)
            for key, value in times.items():
                gpu[key].append(value)
            for key, value in hosts.items():
                host[key].append(value)
        summary[label] = {f"{n}:{d}": {"event_us": statistics.median(v) * 1e6,
                                       "host_us": statistics.median(host[(n, d)]) * 1e6 if (n, d) in host else None}
                          for (n, d), v in gpu.items()}
    from torch.profiler import ProfilerActivity, profile

    HostTimer.ranges = True
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            iteration()
    HostTimer.ranges = False
    path = out_dir / f"{workload.name}.json"
    prof.export_chrome_trace(str(path))
    with open(path, "rb") as src, gzip.open(str(path) + ".gz", "wb") as dst:
        dst.write(src.read())
    path.unlink()
    kernels = defaultdict(float)
    for event in prof.key_averages():
        if event.device_time_total > 0 and event.cpu_time_total == 0:
            kernels[event.key] += event.device_time_total / 2
    summary["kernels_us_per_iteration"] = dict(sorted(kernels.items(), key=lambda kv: -kv[1])[:30])
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", nargs="*", default=list(LSH_SHAPES))
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (no busy-GPU pass)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runtime = init_runtime(args.device)
    ns = argparse.Namespace(shapes="all", workloads="data/workloads/gpu-*.yaml", iterations=1, warmup=0)
    by_name = {w.name: w for w in bench_moe_layer.shapes(ns)}
    by_name.update({w.name: w for w in bench_moe_layer.shapes(argparse.Namespace(**{**vars(ns), "shapes": "tiny"}))})
    results = {}
    for name in args.shapes:
        start = time.perf_counter()
        results[name] = run(by_name[name], runtime, out_dir, args.iterations)
        print(f"# {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        for label in ("idle", "busy"):
            for key, row in results[name][label].items():
                host = f"{row['host_us']:8.1f}" if row["host_us"] is not None else f"{'-':>8s}"
                print(f"{name[:24]:24s} {label:4s} {key:26s} event {row['event_us']:8.1f} host {host}")
        for kernel, us in list(results[name]["kernels_us_per_iteration"].items())[:14]:
            print(f"{name[:24]:24s} kernel {us:8.1f} us  {kernel[:90]}")
    (out_dir / "summary.json").write_text(json.dumps(results, indent=1) + "\n")
    shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
