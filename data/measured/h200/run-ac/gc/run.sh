set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 --version
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; } > $L 2>&1
W='data/workloads/gpu-*d1024*.yaml'
run() { # $1 label, $2 gc mode
  local t0=$(date +%s)
  timeout 150 python3 -c "
import gc, runpy, sys
mode = sys.argv[1]
if mode == 'off': gc.disable()
sys.argv = ['bench_moe_layer.py', '--shapes', 'workloads', '--workloads', sys.argv[2], '--iterations', '20', '--out', sys.argv[3]]
runpy.run_path('benchmarks/bench_moe_layer.py', run_name='__main__')
" $2 "$W" $OUT/$1.json > $OUT/$1.txt 2>&1
  echo "=== $1 ($2) exit $? $(( $(date +%s)-t0 )) s" >> $L
}
run base1 on; run nogc1 off; run nogc2 off; run base2 on
cat $L
python3 - <<'PY'
import json, os
out = os.environ['OUT']
labs = ('base1', 'nogc1', 'nogc2', 'base2')
tab = {}
for lab in labs:
    try:
        d = json.load(open(f'{out}/{lab}.json'))
    except Exception as e:
        print(lab, 'no json', e); continue
    for r in d['results']:
        g = [p['measured_s'] for p in r['phases'] if p['phase'] == 'gate' and p['direction'] == 'forward']
        tab.setdefault(r['workload']['name'], {})[lab] = (r['forward_s'], g[0] if g else None)
print('shape | ' + ' | '.join(f'{l} fwd ms / gate us / share' for l in labs))
for name, row in tab.items():
    cells = []
    for lab in labs:
        v = row.get(lab)
        if v is None: cells.append('-'); continue
        fwd, g = v
        cells.append(f'{fwd*1e3:.3f} / {g*1e6:.1f} / {g/fwd*100:.1f}%' if g else f'{fwd*1e3:.3f} / -')
    print(name + ' | ' + ' | '.join(cells))
PY
