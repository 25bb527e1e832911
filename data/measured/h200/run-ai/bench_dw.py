"""run-ai microbench: the experts' weight gradient dw[e] = x_e^T dy_e at DeepSeek-V3-like shapes:
torch grouped_mm (K-grouped, the current path), its operand-swapped form, a padded torch.bmm, the
Triton fallback (grouped_gemm.grouped_weight_grad) at more tiles, and a persistent Triton kernel;
the write-only roofline (zero_ of dw) in the same call. Then the FFN forward + backward with the
best candidate in _TritonLinear's backward (A/B/A against the current one)."""
import json, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, ".")
import torch
from benchmarks.bench_grouped_gemm import counts_of, rel_diff
from benchmarks.cuda_timing import median_s, times_s
from lshsim.executor import grouped_gemm as gg
from lshsim.executor import moe_ops
from lshsim.executor.moe_ops import GROUPED_MM, expert_ffn_grouped
from wgrad2 import persistent_weight_grad, padded_weight_grad

R = 15
OLD = [(128, 128, 32, 4, 3, 8), (128, 128, 32, 4, 4, 8), (128, 128, 64, 8, 3, 8), (128, 256, 64, 8, 3, 8),
       (256, 128, 32, 8, 3, 8), (128, 256, 32, 8, 3, 8), (64, 128, 32, 4, 3, 8), (128, 64, 32, 4, 3, 8),
       (64, 256, 32, 4, 3, 8), (128, 128, 32, 4, 2, 8), (256, 128, 64, 8, 3, 8)]
PERS = [(128, 128, 32, 4, 3, 8, 2), (128, 128, 32, 4, 3, 8, 4), (128, 128, 64, 8, 3, 8, 2),
        (128, 256, 32, 8, 3, 8, 1), (128, 256, 32, 8, 3, 8, 2), (256, 128, 32, 8, 3, 8, 1),
        (256, 128, 32, 8, 3, 8, 2), (128, 128, 64, 4, 2, 8, 3), (64, 256, 32, 4, 3, 8, 4), (128, 256, 64, 8, 3, 8, 1)]
SHAPES = [("deepseek-v3-like", 256, 32768, 7168, 2048, "top8"),
          ("deepseek-v3-like-lsh", 256, 28160, 7168, 2048, "dirichlet8"),
          ("deepseek-v3-like, 2 GPUs", 128, 16384, 7168, 2048, "top8-half")]
out = {"results": []}
dev = torch.device("cuda")
t0 = time.time()
for name, E, rows, d, f, kind in SHAPES:
    counts = counts_of(kind, E, rows)
    rows = sum(counts)
    offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(rows, d, device=dev, dtype=torch.bfloat16, generator=g)
    h = torch.randn(rows, f, device=dev, dtype=torch.bfloat16, generator=g)
    for gemm, a, b in (("dw_up", x, h), ("dw_down", h, x)):
        K, N = a.shape[1], b.shape[1]
        res = {"shape": name, "gemm": gemm, "E": E, "K": K, "N": N, "min_rows": min(counts), "max_rows": max(counts)}
        ref = GROUPED_MM(a.transpose(0, 1), b, offs=offs)
        nbytes = ref.numel() * 2
        dwbuf = torch.empty_like(ref)
        res["zero_s"] = median_s(lambda: dwbuf.zero_(), R)
        res["grouped_mm_s"] = median_s(lambda: GROUPED_MM(a.transpose(0, 1), b, offs=offs), R)
        res["grouped_mm_swapped_s"] = median_s(lambda: GROUPED_MM(b.transpose(0, 1), a, offs=offs), R)
        p, (ap, bp) = padded_weight_grad(a, b, offs, counts)
        res["padded_diff"] = rel_diff(p, ref)
        del p
        res["padded_s"] = median_s(lambda: padded_weight_grad(a, b, offs, counts), R)
        res["padded_bmm_only_s"] = median_s(lambda: torch.bmm(ap.transpose(1, 2), bp), R)
        del ap, bp
        tri = {}
        for c in OLD:
            try:
                tri[str(c)] = median_s(lambda c=c: gg.grouped_weight_grad(a, b, offs, E, config=c), R)
            except Exception as exc:  # out of shared memory etc.
                tri[str(c)] = repr(exc)[:80]
        res["triton_s"] = tri
        per = {}
        for c in PERS:
            try:
                per[str(c)] = median_s(lambda c=c: persistent_weight_grad(a, b, offs, E, c), R)
            except Exception as exc:
                per[str(c)] = repr(exc)[:80]
        res["persistent_s"] = per
        num = lambda dct: {k: v for k, v in dct.items() if isinstance(v, float)}
        bt = min(num(tri), key=num(tri).get) if num(tri) else None
        bp_ = min(num(per), key=num(per).get) if num(per) else None
        if bt:
            res["triton_best"] = [bt, tri[bt], rel_diff(gg.grouped_weight_grad(a, b, offs, E, config=eval(bt)), ref)]
        if bp_:
            res["persistent_best"] = [bp_, per[bp_], rel_diff(persistent_weight_grad(a, b, offs, E, eval(bp_)), ref)]
        res["write_TBps_zero"] = nbytes / res["zero_s"] / 1e12
        out["results"].append(res)
        print(f"{name[:24]:24s} {gemm:7s} rows {min(counts)}-{max(counts)}  zero {res['zero_s']*1e3:.3f}  gmm {res['grouped_mm_s']*1e3:.3f}"
              f"  swapped {res['grouped_mm_swapped_s']*1e3:.3f}  padded {res['padded_s']*1e3:.3f} (bmm {res['padded_bmm_only_s']*1e3:.3f}, diff {res['padded_diff']:.1e})"
              f"  triton best {bt} {tri.get(bt, 0)*1e3:.3f}  pers best {bp_} {per.get(bp_, 0)*1e3:.3f}  [{time.time()-t0:.0f}s]", flush=True)
        del ref, dwbuf
        torch.cuda.empty_cache()
    del x, h
    torch.cuda.empty_cache()

# the FFN forward + backward with dw by each candidate (DeepSeek-V3-like top-8 and -lsh)
best_p = {}
for r in out["results"]:
    if "persistent_best" in r:
        best_p.setdefault(r["gemm"], []).append(r["persistent_best"][0])
orig_backward = moe_ops._TritonLinear.backward


def make_backward(kind, cfg_up=None, cfg_down=None):
    def backward(ctx, dy):
        x, w, offsets = ctx.saved_tensors
        dy = dy.contiguous()
        dx = gg.grouped_matmul(dy, w.transpose(1, 2), offsets)
        if kind == "persistent":
            cfg = cfg_up if x.shape[1] > dy.shape[1] else cfg_down
            dw = persistent_weight_grad(x, dy, offsets, w.shape[0], cfg)
        else:
            dw = gg.grouped_weight_grad(x, dy, offsets, w.shape[0], w.dtype, config=cfg_up if x.shape[1] > dy.shape[1] else cfg_down)
        return dx, dw, None
    return staticmethod(backward)


def pick(gemm, key):
    vals = [r[key] for r in out["results"] if r["gemm"] == gemm and key in r and r["shape"] == "deepseek-v3-like"]
    return eval(vals[0][0]) if vals else None


variants = {"current": orig_backward}
if pick("dw_up", "persistent_best"):
    variants["persistent"] = make_backward("persistent", pick("dw_up", "persistent_best"), pick("dw_down", "persistent_best"))
if pick("dw_up", "triton_best"):
    variants["triton"] = make_backward("triton", pick("dw_up", "triton_best"), pick("dw_down", "triton_best"))
out["ffn"] = []
for name, E, rows, d, f, kind in SHAPES[:2]:
    counts = counts_of(kind, E, rows)
    rows = sum(counts)
    offs = torch.tensor(counts, device=dev).cumsum(0).to(torch.int32)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(rows, d, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_(True)
    w1 = (torch.randn(E, d, f, device=dev, dtype=torch.bfloat16, generator=g) * d ** -0.5).requires_grad_(True)
    w2 = (torch.randn(E, f, d, device=dev, dtype=torch.bfloat16, generator=g) * f ** -0.5).requires_grad_(True)
    gy = torch.randn(rows, d, device=dev, dtype=torch.bfloat16, generator=g)

    def fwd():
        return expert_ffn_grouped(x, counts, offs, w1, w2, "triton_gmm")[0]

    def step():
        for t in (x, w1, w2):
            t.grad = None
        fwd().backward(gy)

    grads = {}
    for vname in ["current"] + [v for v in variants if v != "current"] + ["current"]:
        moe_ops._TritonLinear.backward = variants[vname]
        with torch.no_grad():
            tf = median_s(fwd, R)
        ts = median_s(step, R)
        step()
        grads[vname] = [x.grad.clone(), w1.grad.clone(), w2.grad.clone()]
        row = {"shape": name, "variant": vname, "forward_s": tf, "fwd_bwd_s": ts, "bwd_over_fwd": (ts - tf) / tf,
               "diff_vs_current": [rel_diff(a, b) for a, b in zip(grads[vname], grads["current"])]}
        out["ffn"].append(row)
        print(f"FFN {name:22s} {vname:10s} fwd {tf*1e3:.3f}  fwd+bwd {ts*1e3:.3f}  bwd/fwd {row['bwd_over_fwd']:.2f}  diff {max(row['diff_vs_current']):.1e}", flush=True)
    moe_ops._TritonLinear.backward = orig_backward
    del x, w1, w2, gy, grads
    torch.cuda.empty_cache()
Path(sys.argv[1]).write_text(json.dumps(out, indent=1) + "\n")
