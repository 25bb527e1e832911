"""run-ap's numbers from its two torch.profiler timelines (trace-g1: expert graph on, trace-g0: off):
per forward iteration of gpu-uniform-d1024-t4k, the GPU's idle time from the split-size exchange's
device-to-host copy to the expert phase's first kernel, and the span of the expert forward's kernels
(prepare + grouped GEMM, GELU, prepare + grouped GEMM). Usage: python3 timeline.py (in this folder)."""
import gzip
import json

for name in ("g1", "g0"):
    trace = json.load(gzip.open(f"trace-{name}.json.gz"))
    gpu = sorted((e for e in trace["traceEvents"] if e.get("ph") == "X"
                  and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    rows = []
    for i, event in enumerate(gpu):
        if "GeluCUDAKernelImpl" in event["name"]:
            j = i
            while "prepare_grouped" not in gpu[j]["name"]:
                j -= 1
            k = j
            while "DtoH" not in gpu[k]["name"]:
                k -= 1
            last = gpu[i + 2]
            rows.append((gpu[j]["ts"] - gpu[k]["ts"] - gpu[k]["dur"], last["ts"] + last["dur"] - gpu[j]["ts"]))
    print(name, "(idle before the first expert kernel us, expert kernel span us) per iteration:",
          [(round(a), round(b)) for a, b in rows])
