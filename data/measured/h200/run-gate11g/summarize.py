"""(A copy of run-lshgather11k/summarize.py.) Per shape, base vs new (A B B A: base-1, new-1, new-2, base-2) from one folder of
`bench_moe_layer.py --behind-busy-gpu --trace-dir` outputs: the gate's share of the forward (idle,
busy), forward lsh_compress / lsh_restore, backward lsh_compress / lsh_restore, the timed forward
and backward (sums of the phases: medians per phase), and the layer as it runs (no phase timer:
`meta.measured.layer_s`, forward / backward / total, from the idle pass's trace).

    python3 summarize.py DIR   (DIR holds layer-{base,new}-{1,2}.json and traces-{base,new}-{1,2}/)
"""
import json
import statistics
import sys
from pathlib import Path

PASSES = ("base-1", "new-1", "new-2", "base-2")


def load(folder: Path, name: str) -> dict:
    data = json.loads((folder / f"layer-{name}.json").read_text())
    out = {}
    for result in data["results"]:
        shape = result["workload"]["name"]
        by = {(r["phase"], r["direction"]): r["measured_s"] for r in result["phases"]}
        out[shape] = {"fwd": result["forward_s"], "bwd": result["backward_s"],
                      "gate": by.get(("gate", "forward"), 0.0),
                      "c_f": by.get(("lsh_compress", "forward")), "c_b": by.get(("lsh_compress", "backward")),
                      "r_f": by.get(("lsh_restore", "forward")), "r_b": by.get(("lsh_restore", "backward"))}
        out[shape]["share"] = out[shape]["gate"] / result["forward_s"]
    for conv in (data.get("behind_busy_gpu") or {}).get("gate_conventions", []):
        out[conv["shape"]]["busy_share"] = conv["busy"][0]["gate_share"]
    traces = folder / f"traces-{name}"
    for path in sorted(traces.glob("*.json")) if traces.is_dir() else []:
        meta = json.loads(path.read_text())["meta"]
        shape = meta["workload"]["name"]
        if shape in out:
            layer = meta["measured"]["layer_s"]
            out[shape].update(run_f=layer["forward"], run_b=layer["backward"], run_t=layer["total"])
    return out


def fmt(values, scale, spec):
    return " ".join("-" if v is None else format(v * scale, spec) for v in values)


def main(folder: str) -> None:
    folder = Path(folder)
    runs = {name: load(folder, name) for name in PASSES if (folder / f"layer-{name}.json").is_file()}
    print("passes present: " + " ".join(runs))
    shapes = list(next(iter(runs.values())))
    print("values per pass in the order " + " / ".join(PASSES))
    rows = [("share", "gate share idle", 100, ".1f"), ("busy_share", "gate share busy", 100, ".1f"),
            ("gate", "gate fwd us", 1e6, ".1f"), ("c_f", "lsh_compress fwd us", 1e6, ".1f"),
            ("c_b", "lsh_compress bwd us", 1e6, ".1f"), ("r_f", "lsh_restore fwd us", 1e6, ".1f"),
            ("r_b", "lsh_restore bwd us", 1e6, ".1f"), ("fwd", "timed forward ms", 1e3, ".3f"),
            ("bwd", "timed backward ms", 1e3, ".3f"), ("run_f", "as-run forward ms", 1e3, ".3f"),
            ("run_b", "as-run backward ms", 1e3, ".3f"), ("run_t", "as-run total ms", 1e3, ".3f")]
    for shape in shapes:
        print(f"## {shape}")
        for key, label, scale, spec in rows:
            values = [runs[p][shape].get(key) if p in runs else None for p in PASSES]
            if all(v is None for v in values):
                continue
            print(f"  {label:22s} {fmt(values, scale, spec)}")
    for key, label in (("share", "idle"), ("busy_share", "busy")):
        for name in runs:
            v = [runs[name][s].get(key) for s in shapes]
            if None in v:
                continue
            print(f"{name} {label}: median {statistics.median(v):.1%}, worst {max(v):.1%}, "
                  f"<= 5% on {sum(x <= 0.05 for x in v)} of {len(v)}")


if __name__ == "__main__":
    main(sys.argv[1])
