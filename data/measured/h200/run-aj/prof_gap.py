"""run-aj (2): where the expert forward's time goes in the layer at gpu-nolsh-d1024-t16k (1 GPU): a
torch.profiler trace of 3 layer iterations (the bench's settings: sync_phases, backward), written as a
chrome trace; the GPU idle gap before each expert GEMM is read off it afterwards."""
import dataclasses, sys
sys.path.insert(0, ".")
import torch
from torch.profiler import ProfilerActivity, profile
from lshsim.executor.run import run_workload
from lshsim.executor.runtime import Progress, init_runtime, shutdown
from lshsim.executor.workload import load_workload

runtime = init_runtime("cuda")
for name in sys.argv[2:]:
    w = load_workload(f"data/workloads/{name}.yaml")
    w = dataclasses.replace(w, iterations=3, warmup=2, sync_phases=True, backward=True, dtype="auto", world_size=None)
    run_workload(w, runtime, progress=Progress(None, 0))  # warm
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trace = run_workload(w, runtime, progress=Progress(None, 0))
    prof.export_chrome_trace(f"{sys.argv[1]}/{name}.trace.json")
    print(name, {k: round(v * 1e6, 1) for k, v in trace.meta["measured"]["phases_s"]["forward"].items()}, flush=True)
shutdown(runtime)
