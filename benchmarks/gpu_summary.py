"""Print the short table of a benchmarks/gpu_validation.sh run: `python benchmarks/gpu_summary.py WORK`.

Reads WORK/x{W}/*.json (measured traces), WORK/calibration-x{W}.json and WORK/check-x{W}.json;
needs only the standard library and numpy (it runs on the device machine too).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(work: str) -> int:
    root = Path(work)
    lines = []
    for check in sorted(root.glob("check-x*.json")):
        data = json.loads(check.read_text())
        worst = max(max(c["errors"].values()) for c in data["cases"])
        lines.append(f"check {check.stem}: {len(data['cases'])} cases, failed {data['failed']}, worst error {worst:.2e}")
    for cal in sorted(root.glob("calibration-x*.json")):
        data = json.loads(cal.read_text())
        res = data["results"]
        big = [p for p in res["a2a"] if p["bytes_per_rank"] >= 2 ** 24]
        bw = ", ".join(f"{p['bytes_per_rank'] >> 20}MiB {p['bytes_per_rank'] * (res['world_size'] - 1) / res['world_size'] / p['time_s'] / 1e9:.0f}GB/s"
                       for p in big)
        ffn = res["ffn"]["flops_per_s"] / 1e12 if res.get("ffn") else float("nan")
        lines.append(f"{cal.stem}: busbw {bw or '-'}; FFN {ffn:.0f} TFLOP/s; copy {res['hbm']['Bps'] / 1e9:.0f} GB/s")
    header = f"{'W':>2} {'workload':28s} {'disp fwd ms':>11} {'bare ms':>8} {'bw ratio':>8} {'comb fwd':>8} {'expert':>8} {'lsh rate':>8}"
    lines.append(header)
    for trace_path in sorted(root.glob("x*/*.json")) + sorted(root.glob("cal-x*/*.json")):
        trace = json.loads(trace_path.read_text())
        m = trace["meta"]["measured"]
        fwd = m["phases_s"]["forward"]
        world = trace["meta"]["workload"]["world_size"]
        ratio = m["bare_a2a_s"] / fwd["dispatch_a2a"] if fwd["dispatch_a2a"] > 0 else float("nan")
        rate = f"{m['lsh']['compression_rate']:.3f}" if m["lsh"] else "-"
        lines.append(f"{world:>2} {trace['meta']['workload']['name']:28s} {fwd['dispatch_a2a'] * 1e3:11.3f} "
                     f"{m['bare_a2a_s'] * 1e3:8.3f} {ratio:8.3f} {fwd['combine_a2a'] * 1e3:8.3f} "
                     f"{fwd['expert'] * 1e3:8.3f} {rate:>8}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
