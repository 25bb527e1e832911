"""run-ai (3): does the weight gradient (write-bound) overlap the input gradient (read-bound) on two streams?"""
import json, sys
from pathlib import Path
sys.path.insert(0, ".")
import torch
from benchmarks.bench_grouped_gemm import counts_of
from benchmarks.cuda_timing import median_s
from lshsim.executor import grouped_gemm as gg
from lshsim.executor.moe_ops import GROUPED_MM

dev = torch.device("cuda")
out = []
for name, E, rows, d, f, kind in [("deepseek-v3-like", 256, 32768, 7168, 2048, "top8"),
                                  ("deepseek-v3-like, 2 GPUs", 128, 16384, 7168, 2048, "top8-half")]:
    counts = counts_of(kind, E, rows)
    rows = sum(counts)
    offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
    g = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(rows, f, device=dev, dtype=torch.bfloat16, generator=g)
    dy = torch.randn(rows, d, device=dev, dtype=torch.bfloat16, generator=g)
    dh = torch.randn(rows, f, device=dev, dtype=torch.bfloat16, generator=g)
    w1 = torch.randn(E, d, f, device=dev, dtype=torch.bfloat16, generator=g)
    side = torch.cuda.Stream()
    dw = lambda: GROUPED_MM(h.transpose(0, 1), dy, offs=offs)          # dw_down (E, f, d)
    dx = lambda: gg.grouped_matmul(dh, w1.transpose(1, 2), offs)        # dx_up (R, d)

    def seq():
        dw(); dx()

    def conc():
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            a = dw()
        b = dx()
        main.wait_stream(side)
        return a, b

    r = {"shape": name, "dw_s": median_s(dw, 20), "dx_s": median_s(dx, 20), "seq_s": median_s(seq, 20),
         "conc_s": median_s(conc, 20)}
    r["seq_again_s"] = median_s(seq, 20)
    r["conc_again_s"] = median_s(conc, 20)
    out.append(r)
    print(name, {k: round(v * 1e3, 3) for k, v in r.items() if k.endswith("_s")}, flush=True)
    del h, dy, dh, w1
    torch.cuda.empty_cache()
Path(sys.argv[1]).write_text(json.dumps(out, indent=1) + "\n")
