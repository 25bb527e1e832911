"""How fast the host launches work right after it waited for the GPU, by the way it waited.

The MoE layer's forward waits once on the host for the split sizes (`executor.comm.CountExchange`), then launches the
dispatch, the expert GEMMs and the combine. On the H200 virtual machines a host that has waited comes back slow (the
gate's 16 us of host work took 30-170 us after a wait, HISTORY "where the idle gate's host time comes from"). This
script measures it directly: the GPU spins for `--spin-us`; the host waits for the spin by one of

  sync   torch.cuda.current_stream().synchronize() (cudaStreamSynchronize: the layer's wait before 2026-12-03,
         thirteenth session)
  event  an event recorded after the spin, event.synchronize()
  poll   the same event queried from a Python loop until it has passed (`executor.comm.HostWait`, the layer's default)
  hot    no wait: the launches follow the spin's launch at once (the host's hot launch time, for reference)

then launches `--kernels` small kernels and records the host's wall time of those launches (perf_counter), and the
time from the spin's end on the GPU to the first launched kernel's start (CUDA events: how long the GPU sat idle
waiting for the host after the wait returned). Medians and 90th percentiles of `--repeats`, modes interleaved.

    python benchmarks/bench_host_wait.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("sync", "event", "poll", "hot")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(mode: str, spin_cycles: int, kernels: int, x, state: dict) -> tuple[float, float]:
    """(host seconds of the `kernels` launches, GPU seconds from the spin's end to the first kernel's start)."""
    import torch

    from lshsim.executor.comm import HostWait

    spin_end = torch.cuda.Event(enable_timing=True)
    first = torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(spin_cycles)
    spin_end.record()
    if mode == "sync":
        torch.cuda.current_stream().synchronize()
    elif mode == "event":
        spin_end.synchronize()
    elif mode == "poll":
        state.setdefault("poll", HostWait("poll"))(x.device)
    t0 = time.perf_counter()
    first.record()
    for _ in range(kernels):
        x.add_(1.0)
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    return host, spin_end.elapsed_time(first) / 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (this benchmark needs a GPU)")
    ap.add_argument("--spin-us", type=float, default=1000.0, help="GPU spin before each wait, microseconds")
    ap.add_argument("--kernels", type=int, default=10, help="small kernels launched after the wait")
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    import torch

    if args.device != "cuda" or not torch.cuda.is_available():
        print("bench_host_wait: needs a CUDA GPU (--device cuda)", file=sys.stderr)
        return 2
    x = torch.zeros(1024, device="cuda")
    # cycles per microsecond of the spin, measured
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    end.synchronize()
    cycles = int(args.spin_us * 1_000_000 / (start.elapsed_time(end) * 1e3))
    state: dict = {}
    results = {m: {"host": [], "gap": []} for m in MODES}
    for it in range(args.repeats + 5):
        for mode in MODES:
            host, gap = measure(mode, cycles, args.kernels, x, state)
            if it >= 5:
                results[mode]["host"].append(host)
                results[mode]["gap"].append(gap)
    out = {"spin_us": args.spin_us, "kernels": args.kernels, "repeats": args.repeats, "modes": {}}
    print(f"host launch of {args.kernels} kernels after a {args.spin_us:.0f} us GPU spin, by wait "
          f"(medians / p90 of {args.repeats}, us)")
    print(f"{'wait':6s} {'host launch':>12s} {'p90':>8s} {'GPU idle before 1st':>20s} {'p90':>8s}")
    for mode in MODES:
        h, g = results[mode]["host"], results[mode]["gap"]
        row = {"host_median_s": statistics.median(h), "host_p90_s": _pct(h, 0.9),
               "gap_median_s": statistics.median(g), "gap_p90_s": _pct(g, 0.9)}
        out["modes"][mode] = row
        print(f"{mode:6s} {row['host_median_s'] * 1e6:12.1f} {row['host_p90_s'] * 1e6:8.1f} "
              f"{row['gap_median_s'] * 1e6:20.1f} {row['gap_p90_s'] * 1e6:8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
