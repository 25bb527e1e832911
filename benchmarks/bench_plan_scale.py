"""`lshsim plan` at scale: the old behaviour (no shared all-to-all cache, exact) against the new
(shared cache, automatic fidelity: exact <= 64 GPUs, drain tolerance 0.01 above), in one run.

    .venv/bin/python benchmarks/bench_plan_scale.py [--model gpt-moe-52b] [--nodes 4 16] [--limit-s 180]

The clusters are data/topologies/h100-fattree-8x8.yaml with `nodes` changed (8 H100 per node,
two-tier fat-tree), written to a temporary folder. Each configuration runs `lshsim plan --json` in a
subprocess; a run past --limit-s is stopped and reported as "> N s". Prints a Markdown table: wall
time old / new, their ratio, the fidelity the new run chose, and the largest relative difference of
the options' step times (new vs old) when both finished.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
LSHSIM = [sys.executable, "-m", "lshsim.cli"]
OLD = ["--no-a2a-cache", "--fidelity", "exact"]
NEW: list[str] = []


def cluster_yaml(folder: pathlib.Path, nodes: int) -> pathlib.Path:
    text = (ROOT / "data/topologies/h100-fattree-8x8.yaml").read_text()
    text = text.replace("name: h100-fattree-8x8", f"name: h100-fattree-{nodes}x8")
    text = text.replace("\nnodes: 8\n", f"\nnodes: {nodes}\n")
    text = text.replace("8 HGX H100 servers (64 GPUs)", f"{nodes} HGX H100 servers ({8 * nodes} GPUs)")
    path = folder / f"h100-fattree-{nodes}x8.yaml"
    path.write_text(text)
    return path


def time_plan(model: str, cluster: pathlib.Path, flags: list[str], limit_s: float) -> tuple[float, dict | None, str]:
    command = [*LSHSIM, "plan", "--model", model, "--cluster", str(cluster), "--json", *flags]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started, None, " ".join(command)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return wall, json.loads(done.stdout), " ".join(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt-moe-52b")
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--limit-s", type=float, default=180.0)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nodes in args.nodes:
            cluster = cluster_yaml(pathlib.Path(tmp), nodes)
            new_s, new, new_cmd = time_plan(args.model, cluster, NEW, args.limit_s)
            old_s, old, old_cmd = time_plan(args.model, cluster, OLD, args.limit_s)
            print(f"# {old_cmd}\n# {new_cmd}", file=sys.stderr, flush=True)
            diff = None
            if old is not None and new is not None:
                diff = max(abs(n["breakdown"]["step_s"] - o["breakdown"]["step_s"]) / o["breakdown"]["step_s"]
                           for o, n in zip(old["options"], new["options"]))
            rows.append({
                "gpus": 8 * nodes,
                "old": f"{old_s:.1f} s" if old is not None else f"> {args.limit_s:.0f} s",
                "new": f"{new_s:.1f} s" if new is not None else f"> {args.limit_s:.0f} s",
                "ratio": (f"{old_s / new_s:.1f}x" if old is not None else f"> {old_s / new_s:.1f}x")
                if new is not None else "?",
                "fidelity": "?" if new is None else
                f"{new['fidelity']['mode']} {new['fidelity']['drain_tolerance']:g}",
                "cache": "?" if new is None else
                f"{new['fidelity']['a2a_cache']['misses']} simulated, {new['fidelity']['a2a_cache']['hits']} reused",
                "diff": "-" if diff is None else f"{100 * diff:.2f}%",
            })
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"| GPUs | old (no cache, exact) | new (cache, auto fidelity) | old / new | new fidelity | new cache | "
          f"max step diff |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gpus']} | {r['old']} | {r['new']} | {r['ratio']} | {r['fidelity']} | {r['cache']} | {r['diff']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
