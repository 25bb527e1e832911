"""`lshsim plan` at scale: the old behaviour (no shared all-to-all cache, exact) against the new
(shared cache, automatic fidelity: exact <= 64 GPUs, drain tolerance 0.01 above), in one run.

    .venv/bin/python benchmarks/bench_plan_scale.py [--model gpt-moe-52b] [--nodes 4 16] [--limit-s 180]
    .venv/bin/python benchmarks/bench_plan_scale.py --targets [--limit-s 600]

--targets measures issue 15's targets instead (wall time and peak memory of each command, run as a
subprocess): `lshsim plan` on 1,024 GPUs (gpt-moe-52b, EP 64, fat-tree 128 x 8) and one training
step of a DeepSeek-V3-like stand-in (61 layers, d 7,168, 256 experts, top-8, d_ffn 2,048, all MoE)
with EP 64 on 8,192 GPUs (fat-tree 1,024 x 8) at the auto fidelity (estimate), plus the same step's
error against exact at 64 and 128 GPUs (the sizes the exact simulation runs here).

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


#: the DeepSeek-V3-like stand-in (DeepSeek-V3 technical report: d_model 7,168, 256 routed experts of
#: d_ffn 2,048, top-8, 61 layers, vocabulary 129,280); simplified: every layer MoE, no shared expert,
#: no node-limited routing; tokens per GPU our choice
DSV3_STANDIN = {"name": "dsv3-standin", "num_layers": 61, "d_model": 7168, "d_ffn": 2048, "num_experts": 256,
                "top_k": 8, "moe_every": 1, "seq_len": 4096, "tokens_per_gpu": 4096, "vocab_size": 129280,
                "bytes_per_element": 2}

STEP_SCRIPT = """
import json, resource, sys, time
started = time.perf_counter()
from lshsim.models import model_from_dict
from lshsim.topology import load_topology
from lshsim.sim.moe_step import A2ACache, StepConfig, auto_fidelity, simulate_config
model = model_from_dict(json.loads(sys.argv[1]))
graph = load_topology(sys.argv[2])
loaded = time.perf_counter()
world = graph.graph["num_nodes"] * graph.graph["gpus_per_node"]
level = sys.argv[3] if sys.argv[3] != "auto" else auto_fidelity(world)
cache = A2ACache(graph, 0.0 if level == "exact" else 0.01, estimate=level == "estimate")
config = StepConfig(ep=int(sys.argv[4]), max_routed_tokens=int(sys.argv[5]))
result = simulate_config(model, graph, config, a2a_cache=cache)
b = result.breakdown
print(json.dumps({"fidelity": level, "step_s": b["step_s"], "a2a_s": b["a2a_s"], "rank_classes": b["rank_classes"],
                  "traffic_model": b["traffic_model"], "records": len(result.trace.phases),
                  "topology_s": loaded - started, "wall_s": time.perf_counter() - started,
                  "maxrss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))
"""


def fattree(folder: pathlib.Path, nodes: int) -> pathlib.Path:
    return cluster_yaml(folder, nodes)


def targets(limit_s: float) -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        plan = [*LSHSIM, "plan", "--model", "gpt-moe-52b", "--cluster", str(fattree(folder, 128)), "--ep", "64",
                "--max-routed-tokens", "32768", "--json"]
        wall, out = _timed(plan, limit_s)
        import resource
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20    # the first child: the plan's
        fid = json.loads(out)["fidelity"] if out else None
        rows.append(("plan, gpt-moe-52b, 1,024 GPUs, EP 64", " ".join(plan[2:]), wall, out is not None,
                     f"{fid['mode']} ({fid['chosen']}), peak {peak:.2f} GiB" if fid else "?"))
        print(rows[-1], file=sys.stderr, flush=True)
        errors = {}
        for nodes, levels in ((8, ("exact", "estimate")), (16, ("exact", "estimate")), (1024, ("auto",))):
            for level in levels:
                step = [sys.executable, "-c", STEP_SCRIPT, json.dumps(DSV3_STANDIN), str(fattree(folder, nodes)),
                        level, "64", "16384"]
                wall, out = _timed(step, limit_s)
                result = json.loads(out) if out else None
                errors[(nodes, level)] = result
                rows.append((f"step, DeepSeek-V3 stand-in, {8 * nodes} GPUs, EP 64, {level}",
                             f"STEP_SCRIPT <stand-in> h100-fattree-{nodes}x8 {level} 64 16384", wall, out is not None,
                             json.dumps(result)))
                print(rows[-1], file=sys.stderr, flush=True)
    print("| what | command | wall s | finished | result |\n|---|---|---|---|---|")
    for what, command, wall, done, result in rows:
        print(f"| {what} | `{command}` | {wall:.1f} | {done} | {result} |")
    for nodes in (8, 16):
        exact, estimate = errors.get((nodes, "exact")), errors.get((nodes, "estimate"))
        if exact and estimate:
            print(f"{8 * nodes} GPUs: estimate vs exact: step {100 * (estimate['step_s'] / exact['step_s'] - 1):+.3f}%, "
                  f"all-to-all {100 * (estimate['a2a_s'] / exact['a2a_s'] - 1):+.3f}%")
    return 0


def _timed(command: list[str], limit_s: float) -> tuple[float, str | None]:
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started, None
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return time.perf_counter() - started, None
    return time.perf_counter() - started, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt-moe-52b")
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--limit-s", type=float, default=180.0)
    parser.add_argument("--targets", action="store_true", help="issue 15's targets (module docstring)")
    args = parser.parse_args(argv)
    if args.targets:
        return targets(args.limit_s)
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
