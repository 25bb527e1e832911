"""Where the idle gate's host time goes inside the layer: perf_counter_ns stamps around each step of
the gate's fast path (timer begin/end records, the cast check, the graph replay, the autograd node,
the plan) in run_workload's iterations, idle and behind a busy GPU; then the same gate call in a tight
loop on the same layer's inputs."""
import json, sys, time, statistics, dataclasses
import torch
sys.path.insert(0, '.')
from lshsim.executor.run import run_workload
from lshsim.executor.runtime import Progress, init_runtime
from lshsim.executor.workload import load_workload
import lshsim.executor.gate_graph as gg
import lshsim.executor.timing as timing

ns = time.perf_counter_ns
S = []          # stamps of the current gate call
ITER = []       # per-iteration stamp dicts
state = {"on": False}

orig_begin, orig_end = timing.PhaseTimer.begin, timing.PhaseTimer.end
def begin(self, name, direction="forward"):
    if name == "gate" and direction == "forward":
        S.clear(); S.append(("b0", ns())); orig_begin(self, name, direction); S.append(("b1", ns())); return
    orig_begin(self, name, direction)
def end(self, name, direction="forward"):
    if name == "gate" and direction == "forward":
        S.append(("e0", ns())); orig_end(self, name, direction); S.append(("e1", ns())); ITER.append(dict(S)); return
    orig_end(self, name, direction)
timing.PhaseTimer.begin, timing.PhaseTimer.end = begin, end

orig_call_fast = gg.GraphedGate._call_fast
def call_fast(self, x, args):
    S.append(("c0", ns())); r = orig_call_fast(self, x, args); S.append(("c1", ns())); return r
gg.GraphedGate._call_fast = call_fast
orig_replay = gg._GateEntry.replay
def replay(self):
    S.append(("r0", ns())); orig_replay(self); S.append(("r1", ns()))
gg._GateEntry.replay = replay
orig_node = gg._replay_node
def node(entry, *inputs):
    S.append(("n0", ns())); r = orig_node(entry, *inputs); S.append(("n1", ns())); return r
gg._replay_node = node

SEG = [("b0", "b1", "begin record"), ("b1", "c0", "to call"), ("c0", "r0", "cast+same_call"), ("r0", "r1", "graph replay"),
       ("r1", "n0", "between"), ("n0", "n1", "autograd node"), ("n1", "c1", "plan"), ("c1", "e0", "to end"),
       ("e0", "e1", "end record"), ("b0", "e1", "TOTAL host")]

def summarize(rows):
    out = {}
    for a, b, label in SEG:
        vals = [(r[b] - r[a]) / 1e3 for r in rows if a in r and b in r]
        out[label] = round(statistics.median(vals), 1) if vals else None
    return out

import os
runtime = init_runtime(os.environ.get("DEV", "cuda"))
result = {}
for path in sys.argv[1:]:
    wl = load_workload(path)
    wl = dataclasses.replace(wl, iterations=20, warmup=3)
    for mode, cycles in (("idle", 0), ("busy", 4_000_000)) if runtime.device.type == "cuda" else (("idle", 0),):
        ITER.clear()
        trace = run_workload(wl, runtime, progress=Progress(None, 0), hold_gpu_cycles=cycles)
        rows = ITER[3:]
        gate = trace.meta["measured"]["phases_s"].get("gate", {})
        result.setdefault(wl.name, {})[mode] = {"segments_us": summarize(rows), "n": len(rows),
                                               "gate_phase_s": gate}
    print(wl.name, json.dumps(result[wl.name]), flush=True)
json.dump(result, open(sys.argv[0].replace('.py', '.json') if False else '/dev/null', 'w'))
print("=== table: median host us per segment")
print("shape mode | " + " | ".join(l for _, _, l in SEG))
for name, modes in result.items():
    for mode, r in modes.items():
        print(f"{name} {mode} | " + " | ".join(str(r['segments_us'][l]) for _, _, l in SEG))
