#!/usr/bin/env bash
# The fast executor layer on the device machine, in ONE call (nvidia-h200-x2 or larger):
#   1. the GPU tests (pytest -m gpu): LSH kernels == torch reference, no host synchronisation;
#   2. executor check on 2 GPUs (NCCL): the distributed layer == the dense reference;
#   3. bench_lsh.py --fast: the LSH kernels against the torch code at 8,192 x 4,096 bf16, L = 6, d' = 16;
#   4. bench_moe_layer.py on 1 and 2 GPUs: every phase against the roofline measured in the same run
#      (--compare-legacy: every shape also on the legacy gate path, LSHSIM_GATE_PATH=legacy, before/after);
#   5. bench_moe_layer.py --shapes breakeven on 2 GPUs over NVLink, host shared memory
#      (NCCL_P2P_DISABLE=1) and sockets (+ NCCL_SHM_DISABLE=1): where LSH-MoE pays.
# Results under OUT (JSON + log); a short table of the targets printed last. Steps that no longer fit
# in BUDGET_S are skipped.
# Usage: benchmarks/gpu_layer_bench.sh OUT [BUDGET_S] [STEPS]   (STEPS: a subset of "tests tune check lsh diag x1 x2 even",
#   or "profile": the gate's kernels per shape, benchmarks/profile_gate.py; not in the default list)
set -u
OUT=${1:?usage: gpu_layer_bench.sh OUT [BUDGET_S] [STEPS]}
BUDGET_S=${2:-560}
STEPS=${3:-"tests tune check lsh diag x1 x2 even"}
PY=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import simpy" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
mkdir -p "$OUT"
LOG=$OUT/log.txt
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
want() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
step() {  # step NAME MIN_LEFT TIMEOUT_S command...
  local name=$1 need=$2 limit=$3; shift 3
  if [ "$(left)" -lt "$need" ]; then echo "SKIPPED $name: $(left) s left" | tee -a "$LOG"; return 0; fi
  if [ "$limit" -gt $(( $(left) - 5 )) ]; then limit=$(( $(left) - 5 )); fi
  local t0=$(date +%s)
  echo "=== $name ($(left) s left) ===" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | grep -v "OMP_NUM_THREADS\|^\*\*\*\*" | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s ===" | tee -a "$LOG"
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
  $PY -c "import triton; print('triton', triton.__version__)"; env | grep '^NCCL_' | sort; } > "$OUT/machine.txt" 2>&1
want tests && step tests 60 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests/
want tune && step tune-lsh 60 120 $PY benchmarks/tune_lsh_kernels.py --out "$OUT/tune-lsh.json"
want check && step check-x2 60 120 $PY -m lshsim.executor launch --nproc 2 --timeout-s 110 -- check --out "$OUT/check-x2.json"
want lsh && step bench-lsh 40 90 sh -c "$PY benchmarks/bench_lsh.py --device cuda --fast --dtype bfloat16 --rotations gaussian --dims 4096 --tokens 8192 32768 --proj-dims 16 --repeats 50 --json > $OUT/bench-lsh.jsonl; cat $OUT/bench-lsh.jsonl"
want diag && step diag-gate 30 60 sh -c "$PY benchmarks/diag_gate.py; $PY benchmarks/diag_gate.py --d-model 7168 --d-ffn 2048 --experts 256 --k 8"
want profile && step profile-gate 40 100 $PY benchmarks/profile_gate.py --json "$OUT/profile-gate.json"
want x1 && step layer-x1 60 200 $PY benchmarks/bench_moe_layer.py --compare-legacy --out "$OUT/layer-x1.json" --profile deepseek-v3-like
want x2 && step layer-x2 60 200 $PY -m torch.distributed.run --nproc_per_node 2 benchmarks/bench_moe_layer.py --compare-legacy --out "$OUT/layer-x2.json"
if want even; then
  step even-nvlink 40 80 $PY -m torch.distributed.run --nproc_per_node 2 benchmarks/bench_moe_layer.py --shapes breakeven --out "$OUT/even-nvlink.json" --profile breakeven-d4096-t8k-lsh-L6
  NCCL_P2P_DISABLE=1 step even-shm 40 80 $PY -m torch.distributed.run --nproc_per_node 2 benchmarks/bench_moe_layer.py --shapes breakeven --out "$OUT/even-shm.json"
  NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 step even-socket 40 100 $PY -m torch.distributed.run --nproc_per_node 2 benchmarks/bench_moe_layer.py --shapes breakeven --out "$OUT/even-socket.json"
fi
echo "=== targets ==="
$PY - "$OUT" <<'EOF'
import glob, json, sys
for path in sorted(glob.glob(sys.argv[1] + "/*.json")):
    data = json.load(open(path))
    if not isinstance(data, dict) or "targets" not in data:
        continue
    for t in data["targets"]:
        print(f"{path.split('/')[-1]:18s} {t['shape'][:26]:26s} {t['target'][:36]:36s} {t['value']:10.4g} {'ok' if t['ok'] else 'NO'}")
    for row in data.get("break_even", []):
        even = row["break_even_busbw_Bps"]
        print(f"{path.split('/')[-1]:18s} {row['shape'][:26]:26s} rate {row['compression_rate']:.3f} break-even "
              f"{(even or 0) / 1e9:.1f} GB/s busbw {(row['measured_busbw_Bps'] or 0) / 1e9:.1f} GB/s "
              f"layer {row['layer_s'] * 1e3:.2f} ms lsh {row['layer_lsh_s'] * 1e3:.2f} ms")
EOF
