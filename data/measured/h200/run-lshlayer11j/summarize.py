"""Per-shape in-layer LSH phase times of run-lshlayer11j: median and worst over every measured
iteration (the slowest rank's time, the trace meta's per_iteration_max_s) of the layer benchmark's
runs with the scan-runs segment kernel off (base: LSHSIM_SEGMENT_SCAN=0, main's code path) and on.

    python3 summarize.py DIR            (DIR holds trace-base1/, trace-new1/, trace-base2/, ...)
"""
import json
import statistics
import sys
from pathlib import Path

root = Path(sys.argv[1])
PHASES = ("forward/lsh_compress", "backward/lsh_compress", "forward/lsh_restore", "backward/lsh_restore")
rows = {}
for folder in sorted(root.glob("trace-*")):
    variant = folder.name.split("-")[1].rstrip("0123456789")  # base or new
    for path in sorted(folder.glob("*.json")):
        meta = json.loads(path.read_text())["meta"]
        name = meta["workload"]["name"]
        if not meta["workload"].get("lsh"):
            continue
        mib64 = meta["workload"]["tokens_per_rank"] * meta["workload"]["d_model"] * 2 / 2 ** 26
        per = meta["measured"]["per_iteration_max_s"]
        for phase in PHASES:
            rows.setdefault((name, phase, variant), {"mib64": mib64, "s": []})["s"].extend(per[phase])
out = []
print(f"{'shape':24s} {'phase':24s} {'base med/worst ms':>20s} {'new med/worst ms':>20s} {'new/base':>8s}")
for name, phase in sorted({(n, p) for n, p, _ in rows}):
    b, n = rows.get((name, phase, "base")), rows.get((name, phase, "new"))
    if not b or not n:
        continue
    bm, bw, nm, nw = statistics.median(b["s"]), max(b["s"]), statistics.median(n["s"]), max(n["s"])
    print(f"{name:24s} {phase:24s} {bm * 1e3:9.3f}/{bw * 1e3:9.3f} {nm * 1e3:9.3f}/{nw * 1e3:9.3f} {nm / bm:8.2f}"
          f"   (per 64 MiB: {bm * 1e3 / b['mib64']:.3f} -> {nm * 1e3 / n['mib64']:.3f} ms; {len(b['s'])}/{len(n['s'])} it.)")
    out.append({"shape": name, "phase": phase, "mib64": b["mib64"], "base_s": b["s"], "new_s": n["s"],
                "base_median_s": bm, "base_worst_s": bw, "new_median_s": nm, "new_worst_s": nw})
(root / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
