# run-ar: does pinning the benchmark's process to CPU cores cut the layer's host time (idle-GPU gate share, expert forward)?
# A (default) / B4 (taskset 4 cores) / B1 (taskset 1 core) / A again, the d 1,024 shapes (the idle gate misses).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m; nproc; lscpu | head -20
  (command -v numactl >/dev/null && numactl -H) || echo "no numactl"
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $L 2>&1
W='data/workloads/gpu-*d1024*.yaml'
run() { local n=$1; shift; local t0=$(date +%s); echo "=== $n: $*" >> $L
  timeout 150 "$@" python3 benchmarks/bench_moe_layer.py --shapes workloads --workloads "$W" --out $OUT/layer-$n.json > $OUT/layer-$n.txt 2>&1
  echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
run A1 env
run B4 taskset -c 2-5
run B1 taskset -c 3
run A2 env
python3 - >> $L <<'PY'
import json, os
out = os.environ["OUT"]
print(f"{'shape':26s} " + " ".join(f"{n:>22s}" for n in ("A1", "B4", "B1", "A2")))
print(f"{'':26s} " + " ".join(f"{'fwd_us gate% expfwd':>22s}" for _ in range(4)))
res = {}
for n in ("A1", "B4", "B1", "A2"):
    try:
        res[n] = json.load(open(f"{out}/layer-{n}.json"))
    except Exception as e:
        print(n, "missing", e); res[n] = None
def rows(doc):
    out = {}
    for r in doc["results"] if "results" in doc else doc["shapes"]:
        by = {(p["phase"], p["direction"]): p for p in r["phases"]}
        g = by[("gate", "forward")]["measured_s"]; e = by.get(("expert", "forward"))
        out[r["workload"]["name"]] = (r["forward_s"] * 1e6, 100 * g / r["forward_s"], e["measured_s"] * 1e6 if e else float("nan"))
    return out
tab = {n: rows(d) for n, d in res.items() if d}
for shape in sorted(next(iter(tab.values()))):
    print(f"{shape:26s} " + " ".join(f"{tab[n][shape][0]:8.0f} {tab[n][shape][1]:5.1f} {tab[n][shape][2]:6.0f}" if n in tab and shape in tab[n] else f"{'-':>22s}" for n in ("A1", "B4", "B1", "A2")))
PY
(cd $OUT && tar czf json.tar.gz *.json && rm -f *.json)
cat $L | tail -30
