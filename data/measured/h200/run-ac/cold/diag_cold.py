"""Is the gate's in-layer host time (3-4x its tight-loop time) a cold CPU? The same gate call (the layer's
gate_graph, x requiring grad, grad mode on), host time by perf_counter, medians of 30 calls, with different
work between calls: hot (a GPU synchronisation only), sleep 5 ms, a 5 ms Python spin, 64 MiB of host memory
written (numpy), Python object churn (~5 ms), one whole layer forward + backward, a GPU matmul only."""
import sys, time, statistics, json
import numpy as np
import torch
sys.path.insert(0, '.')
from benchmarks.profile_gate import benchmark_shapes, gate_call, warm_layer

def spin(s):
    t = time.perf_counter() + s
    while time.perf_counter() < t:
        pass

buf = np.zeros(64 << 20, dtype=np.uint8)
def pollute():
    buf[::64] += 1  # one write per cache line of 64 MiB

def churn():
    t = time.perf_counter() + 0.005
    while time.perf_counter() < t:
        d = [{"a": i, "b": str(i), "c": (i, i + 1)} for i in range(200)]
        json.dumps(d)

import os, struct, ctypes
if os.environ.get("QOS"):
    _qos = open("/dev/cpu_dma_latency", "wb", buffering=0)
    _qos.write(struct.pack("i", 0))  # held open: the CPUs stay out of idle states deeper than polling
    print("pm qos 0 held", flush=True)
device = torch.device("cuda")
shapes = benchmark_shapes()
out = {}
for name in sys.argv[1:]:
    wl = shapes[name]
    layer, x0, ids = warm_layer(wl, device)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    def layer_step():
        layer.forward(x0.detach().requires_grad_(True), ids).y.float().sum().backward()
    variants = {"hot": lambda: None, "sleep 5 ms": lambda: time.sleep(0.005), "python spin 5 ms": lambda: spin(0.005),
                "64 MiB host writes": pollute, "python churn 5 ms": churn, "layer fwd+bwd": layer_step,
                "gpu matmul": lambda: a @ a}
    res = {}
    for label, between in variants.items():
        times = []
        for i in range(33):
            between()
            torch.cuda.synchronize()
            x = x0.detach().requires_grad_(True)
            t0 = time.perf_counter()
            r = layer.gate_graph(x, ids)
            times.append(time.perf_counter() - t0)
            del r, x
        res[label] = round(statistics.median(times[3:]) * 1e6, 1)
    out[name] = res
    print(name, json.dumps(res), flush=True)
    del layer
    torch.cuda.empty_cache()
print("shape | " + " | ".join(next(iter(out.values())).keys()))
for name, res in out.items():
    print(name + " | " + " | ".join(str(v) for v in res.values()))
