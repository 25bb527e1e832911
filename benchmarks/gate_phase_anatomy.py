"""What the layer's "gate" phase time is made of, per shape, on one GPU (a diagnosis, not a benchmark).

    python benchmarks/gate_phase_anatomy.py [--shapes NAME ...] [--iterations 10] [--json OUT.json]
                                            [--trace-dir DIR]

Every shape's layer is built and iterated exactly as `lshsim.executor.run.run_workload` does it for
`bench_moe_layer.py` (phase timer on, ranks "aligned", forward + backward, a bare copy of the
dispatch's bytes between iterations), and the gate phase is measured under four starts:

* `idle`: the benchmark's convention (the GPU idle when the iteration starts);
* `busy`: a 1e6-cycle spin (~0.5 ms) queued before the iteration (`--behind-busy-gpu`'s convention);
* `warm`: the same spin, then a host synchronisation, then the iteration: the GPU idle at the
  gate's start (the host's launch in the phase, as `idle`) but busy until microseconds before;
* `gap`: 5 ms of host sleep before the iteration (the GPU idle for longer than in `idle`).

In every mode the phase's CUDA-event time (the timer's) and its host time (time.perf_counter
around the same begin and end) are kept per iteration. A clock probe times `torch.cuda._sleep`
of `--probe-cycles` cycles (CUDA events) right after an idle iteration's bare copy and right after a
spin: cycles / time is the SM clock the GPU runs at when the next gate would start.

Then `idle` and `busy` iterations run under torch.profiler (CPU + CUDA activities): for each gate
interval (a record_function around the timer's begin and end), the CUDA runtime calls in it and the
GPU work they launched (by correlation id): when the begin event was recorded, when the graph
launch returned, when the first gate kernel started and the last ended on the GPU, the kernels'
summed time, and when the end event was recorded. The phase on an idle GPU is then
(end record or last kernel end, whichever is later) - begin record.
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.profile_gate import benchmark_shapes  # noqa: E402
from lshsim.executor.comm import CommStats  # noqa: E402
from lshsim.executor.moe_layer import DistributedMoE, MoEContext, rank_inputs  # noqa: E402
from lshsim.executor.run import _BareA2A  # noqa: E402
from lshsim.executor.timing import PhaseTimer  # noqa: E402

DEFAULT_SHAPES = ["gpu-uniform-d1024-t4k", "gpu-nolsh-d1024-t16k", "gpu-uniform-d1024-t32k", "gpu-lsh-d1024-t16k",
                  "gpu-lsh-d4096-t8k", "gpu-uniform-d4096-t8k", "gpu-nolsh-d4096-t8k", "gpu-locmoe-d4096-t16k",
                  "deepseek-v3-like", "deepseek-v3-like-lsh"]
SPIN = 1_000_000


class Harness:
    """One shape's layer as run_workload builds it, with host stamps around every forward phase."""

    def __init__(self, workload, device):
        self.device = device
        self.timer = PhaseTimer(device)
        ctx = MoEContext(rank=0, world_size=1, device=device, timer=self.timer, stats=CommStats(1), sync=True)
        self.model = DistributedMoE(workload, ctx, torch.bfloat16, requires_grad=True)
        self.x0, self.ids = rank_inputs(workload, 0, device, torch.bfloat16)
        generator = torch.Generator(device=device).manual_seed(7)
        self.grad_weight = torch.randn(self.x0.shape, generator=generator, device=device)
        self.host: list[tuple[str, str, float]] = []  # (name, "b"/"e", perf_counter) of this iteration
        self.annotate = False
        self._open = {}
        begin, end = self.model._begin, self.model._end

        def _begin(name):
            self.host.append((name, "b", time.perf_counter()))
            if self.annotate:
                rf = torch.autograd.profiler.record_function(f"phase:{name}")
                rf.__enter__()
                self._open[name] = rf
            begin(name)

        def _end(name):
            end(name)
            if self.annotate:
                self._open.pop(name).__exit__(None, None, None)
            self.host.append((name, "e", time.perf_counter()))

        self.model._begin, self.model._end = _begin, _end
        self.bare = None

    def iteration(self, mode: str) -> dict:
        model = self.model
        for param in model.parameters():
            param.grad = None
        x = self.x0.detach().requires_grad_(True)
        self.host = []
        if mode == "busy":
            torch.cuda._sleep(SPIN)
        elif mode == "warm":
            torch.cuda._sleep(SPIN)
            torch.cuda.synchronize()
        elif mode == "gap":
            time.sleep(0.005)
        self.timer.start_iteration()
        out = model.forward(x, self.ids)
        (out.y.float() * self.grad_weight).sum().backward()
        times = self.timer.finish_iteration()
        start, stop = times[("gate", "forward")]
        gate_host = 0.0
        stamps = {}
        for name, kind, t in self.host:
            if name == "gate":
                if kind == "b":
                    stamps["b"] = t
                else:
                    gate_host += t - stamps.pop("b")
        if self.bare is None:
            rows = sum(out.send_splits)
            self.bare = _BareA2A([rows], [rows], self.x0.shape[1], torch.bfloat16, self.device, True)
            self.bare.time_once()
        self.bare.time_once()  # as run_workload: a bare copy of the dispatch's bytes between iterations
        fwd = sum(e - s for (name, direction), (s, e) in times.items() if direction == "forward")
        return {"gate_s": stop - start, "gate_host_s": gate_host, "forward_s": fwd}

    def probe(self, cycles: int, busy: bool) -> float:
        """Seconds of one `_sleep(cycles)` started right after an idle iteration's end (busy=False)
        or right behind a spin (busy=True)."""
        self.iteration("idle")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if busy:
            torch.cuda._sleep(SPIN)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def gate_intervals(trace: dict) -> list[dict]:
    """Per gate interval of the trace: runtime calls in it and the GPU work they launched (us, trace clock)."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    phases = sorted((e for e in events if e.get("cat") == "user_annotation" and e.get("name") == "phase:gate"),
                    key=lambda e: e["ts"])
    runtime = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    gpu = {}
    for e in events:
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            gpu.setdefault(e.get("args", {}).get("correlation"), []).append(e)
    out = []
    for p in phases:
        a, b = p["ts"], p["ts"] + p["dur"]
        calls = sorted((e for e in runtime if a <= e["ts"] <= b), key=lambda e: e["ts"])
        records = [e for e in calls if "EventRecord" in e["name"]]
        work = [g for e in calls for g in gpu.get(e.get("args", {}).get("correlation"), [])]
        if not records or not work:
            continue
        begin, end = records[0], records[-1]
        first = min(g["ts"] for g in work)
        last = max(g["ts"] + g["dur"] for g in work)
        launches = [e for e in calls if "EventRecord" not in e["name"]]
        out.append({
            "annotation_us": p["dur"],
            "host_begin_to_end_record_us": end["ts"] + end["dur"] - begin["ts"],
            "begin_record_to_first_gpu_us": first - begin["ts"],
            "last_launch_return_us": (max(e["ts"] + e["dur"] for e in launches) - begin["ts"]) if launches else None,
            "gpu_span_us": last - first,
            "gpu_busy_us": sum(g["dur"] for g in work),
            "gpu_ops": len(work),
            "end_record_after_gpu_us": end["ts"] + end["dur"] - last,
            "phase_estimate_us": max(end["ts"] + end["dur"], last) - begin["ts"],
            "runtime_calls": [[e["name"], round(e["ts"] - begin["ts"], 1), round(e["dur"], 1)] for e in calls],
            "gpu_work": sorted([[g["name"][:80], round(g["ts"] - begin["ts"], 1), round(g["dur"], 1)] for g in work],
                               key=lambda r: r[1]),
        })
    return out


def profiled(h: Harness, mode: str, iterations: int, trace_path: Path | None) -> dict:
    from torch.profiler import ProfilerActivity, profile

    h.annotate = True
    rows = []
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(iterations):
                rows.append(h.iteration(mode))
    finally:
        h.annotate = False
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder) / f"gate_anatomy_{mode}.json"
        prof.export_chrome_trace(str(tmp))
        trace = json.loads(tmp.read_text())
    trace["traceName"] = trace_path.name[:-3] if trace_path is not None else tmp.name
    if trace_path is not None:
        with gzip.open(trace_path, "wt") as f:
            json.dump(trace, f)
    try:
        intervals = gate_intervals(trace)
    except Exception as error:  # the trace is kept; parse it afterwards
        print(f"gate_intervals failed: {error!r}", file=sys.stderr)
        intervals = []
    return {"event_gate_us": [r["gate_s"] * 1e6 for r in rows], "intervals": intervals}


def med(values):
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--probe-cycles", type=int, default=200_000)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (modes idle and gap, no probe)")
    parser.add_argument("--profile-iterations", type=int, default=4)
    parser.add_argument("--json")
    parser.add_argument("--trace-dir", help="write the profiled iterations' chrome traces (gzip) here")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    by_name = benchmark_shapes()
    modes = ("idle", "busy", "warm", "gap") if cuda else ("idle", "gap")
    results = {}
    for name in args.shapes:
        t0 = time.perf_counter()
        h = Harness(by_name[name], device)
        for _ in range(args.warmup):
            h.iteration("idle")
        res = {}
        for rnd in range(2):  # modes interleaved in two rounds, half the iterations each
            for mode in modes:
                for _ in range(args.warmup if rnd == 0 else 0):
                    h.iteration(mode)
                rows = [h.iteration(mode) for _ in range(args.iterations // 2)]
                res.setdefault(mode, []).extend(rows)
        summary = {}
        for mode in modes:
            rows = res[mode]
            summary[mode] = {"gate_us": med([r["gate_s"] * 1e6 for r in rows]),
                             "gate_host_us": med([r["gate_host_s"] * 1e6 for r in rows]),
                             "forward_us": med([r["forward_s"] * 1e6 for r in rows]),
                             "gate_us_all": [r["gate_s"] * 1e6 for r in rows]}
        if not cuda:  # smoke run: the CUDA-only parts left out
            results[name] = summary
            print(name, {m: round(summary[m]["gate_us"], 1) for m in modes})
            continue
        probe_idle = med([h.probe(args.probe_cycles, False) for _ in range(5)])
        probe_busy = med([h.probe(args.probe_cycles, True) for _ in range(5)])
        summary["probe"] = {"cycles": args.probe_cycles, "idle_us": probe_idle * 1e6, "busy_us": probe_busy * 1e6,
                            "idle_mhz": args.probe_cycles / probe_idle / 1e6,
                            "busy_mhz": args.probe_cycles / probe_busy / 1e6}
        for mode in ("idle", "busy"):
            path = Path(args.trace_dir) / f"{name}-{mode}.json.gz" if args.trace_dir else None
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            summary[f"profile_{mode}"] = profiled(h, mode, args.profile_iterations, path)
        results[name] = summary
        s = summary
        print(f"== {name} ({time.perf_counter() - t0:.1f} s): gate us idle {s['idle']['gate_us']:.1f} (host "
              f"{s['idle']['gate_host_us']:.1f}) busy {s['busy']['gate_us']:.1f} warm {s['warm']['gate_us']:.1f} "
              f"(host {s['warm']['gate_host_us']:.1f}) gap {s['gap']['gate_us']:.1f}; probe MHz idle "
              f"{s['probe']['idle_mhz']:.0f} busy {s['probe']['busy_mhz']:.0f}", flush=True)
        for mode in ("idle", "busy"):
            for i, iv in enumerate(s[f"profile_{mode}"]["intervals"][-4:]):
                print(f"   {mode} piece {i}: host begin->end record {iv['host_begin_to_end_record_us']:.1f}, "
                      f"begin->first gpu {iv['begin_record_to_first_gpu_us']:.1f}, launch returned "
                      f"{iv['last_launch_return_us'] or float('nan'):.1f}, gpu span {iv['gpu_span_us']:.1f} busy "
                      f"{iv['gpu_busy_us']:.1f} ({iv['gpu_ops']} ops), end record after gpu "
                      f"{iv['end_record_after_gpu_us']:.1f}, estimate {iv['phase_estimate_us']:.1f}")
        del h
        torch.cuda.empty_cache()
    if not cuda:
        return 0
    print(f"{'shape':24s} {'fwd':>7s} {'idle':>7s} {'host':>6s} {'busy':>7s} {'warm':>7s} {'host':>6s} {'gap':>7s} "
          f"{'MHz idle':>8s} {'busy':>6s}")
    for name, s in results.items():
        print(f"{name[:24]:24s} {s['idle']['forward_us']:7.1f} {s['idle']['gate_us']:7.1f} {s['idle']['gate_host_us']:6.1f} "
              f"{s['busy']['gate_us']:7.1f} {s['warm']['gate_us']:7.1f} {s['warm']['gate_host_us']:6.1f} "
              f"{s['gap']['gate_us']:7.1f} {s['probe']['idle_mhz']:8.0f} {s['probe']['busy_mhz']:6.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
