#!/usr/bin/env bash
# `executor check` on the GPUs of one machine: every case at its own seed, then every case at seeds
# 1..8 (other routings: ranks that receive no rows, experts with no tokens), through `executor
# launch` (per-rank logs, a hung rank named). Then the GPU-marked tests. Output under $OUT/check/.
#   OUT=/tmp/out bash benchmarks/gpu_check_seeds.sh [NPROC]
set -u
NPROC=${1:-2}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT/check"
{
  date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version(), 'gpus', torch.cuda.device_count())"
  env | grep '^NCCL_' | sort
} > "$OUT/check/machine.txt" 2>&1
run() {  # name, extra args
  local name=$1; shift
  local start=$(date +%s)
  timeout 400 python3 -m lshsim.executor launch --nproc "$NPROC" --timeout-s 360 --stall-timeout-s 120 \
      --status-dir "$OUT/check/status-$name" -- check --device cuda --collective-timeout-s 120 \
      --out "$OUT/check/$name.json" "$@" > "$OUT/check/$name.txt" 2>&1
  echo "$name: exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/check/summary.txt"
}
run default
run seeds --seeds 1,2,3,4,5,6,7,8
timeout 300 python3 -m pytest -q -m gpu tests > "$OUT/check/pytest-gpu.txt" 2>&1
echo "pytest -m gpu: exit $? $(tail -1 "$OUT/check/pytest-gpu.txt")" | tee -a "$OUT/check/summary.txt"
tail -3 "$OUT"/check/default.txt "$OUT"/check/seeds.txt
