#!/usr/bin/env bash
# Step fidelity on the device machine (nvidia-h200-x2), in two calls that each fit in 600 s:
#   part "calibrate": executor calibrate --phases over NVLink (all parts), host shared memory
#       (NCCL_P2P_DISABLE=1; all-to-alls only) and sockets (+ NCCL_SHM_DISABLE=1; all-to-alls only,
#       up to 256 MiB per rank): raw JSON per transport (refitted where the curve is wanted); the
#       calibration layers on one GPU; the timing conventions once more under torchrun (the harness
#       of the held-out all-to-all cases);
#   part "heldout": the committed held-out sets, never fitted on:
#       data/heldout/step-fidelity/a2a-cases-x2.json in the three timing conventions on each transport;
#       data/workloads/heldout-step/*.yaml with executor run: all on 2 GPUs over NVLink, four on 1 GPU,
#       the LSH-MoE pairs (ho-p*) over shared memory and sockets.
# Usage: benchmarks/gpu_step_fidelity.sh OUT PART [BUDGET_S] [HELDOUT_DIR] [CASES]
#   (X1_PATTERN: a grep -E pattern of the held-out workloads also run on one GPU; SESSION=--session-calibration:
#   the all-to-all bench first measures the calibration sizes in its own process)
set -u
OUT=${1:?usage: gpu_step_fidelity.sh OUT PART [BUDGET_S] [HELDOUT_DIR] [CASES]}
PART=${2:?part: calibrate or heldout}
BUDGET_S=${3:-570}
HELDOUT=${4:-data/workloads/heldout-step}
CASES=${5:-data/heldout/step-fidelity/a2a-cases-x2.json}
PY=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import simpy" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
mkdir -p "$OUT"
LOG=$OUT/log-$PART.txt
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
step() {  # step NAME MIN_LEFT TIMEOUT_S command...
  local name=$1 need=$2 limit=$3; shift 3
  if [ "$(left)" -lt "$need" ]; then echo "SKIPPED $name: $(left) s left" | tee -a "$LOG"; return 0; fi
  if [ "$limit" -gt $(( $(left) - 5 )) ]; then limit=$(( $(left) - 5 )); fi
  local t0=$(date +%s)
  echo "=== $name ($(left) s left) ===" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | grep -v "OMP_NUM_THREADS\|^\*\*\*\*" | tee -a "$LOG" | tail -40
  echo "=== $name: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s ===" | tee -a "$LOG"
}
EX="$PY -m lshsim.executor"
SESSION=${SESSION:-}
TR="$PY -m torch.distributed.run --nproc_per_node 2"
SHM="env NCCL_P2P_DISABLE=1"
SOCK="env NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
  env | grep '^NCCL_' | sort; } > "$OUT/machine-$PART.txt" 2>&1
if [ "$PART" = calibrate ]; then
  step gpu-tests 60 90 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_moe_ops.py
  step cal-nvlink 200 300 $EX launch --nproc 2 --timeout-s 290 -- calibrate --min-bytes 4KiB --max-bytes 2GiB \
    --steps-per-octave 2 --phases all --raw "$OUT/cal-nvlink-raw.json" --out "$OUT/cal-nvlink-ab.yaml"
  step cal-x1 60 150 env CUDA_VISIBLE_DEVICES=0 $EX calibrate --phases layers --raw "$OUT/cal-x1-raw.json"
  # the timing conventions again under torchrun, the harness the held-out all-to-all cases run in
  step cal-nvlink-torchrun 40 90 $TR -m lshsim.executor calibrate --min-bytes 64KiB --max-bytes 256MiB \
    --steps-per-octave 2 --phases a2a --raw "$OUT/cal-nvlink-torchrun-raw.json"
  step cal-shm-torchrun 40 90 $SHM $TR -m lshsim.executor calibrate --min-bytes 64KiB --max-bytes 256MiB \
    --steps-per-octave 2 --phases a2a --raw "$OUT/cal-shm-torchrun-raw.json"
  step cal-socket-torchrun 40 120 $SOCK $TR -m lshsim.executor calibrate --min-bytes 64KiB --max-bytes 64MiB \
    --steps-per-octave 2 --iterations 5 --phases a2a --raw "$OUT/cal-socket-torchrun-raw.json"
  step cal-shm 60 120 $SHM $EX launch --nproc 2 --timeout-s 110 -- calibrate --min-bytes 4KiB --max-bytes 1GiB \
    --steps-per-octave 2 --phases a2a --raw "$OUT/cal-shm-raw.json" --out "$OUT/cal-shm-ab.yaml"
  step cal-socket 60 150 $SOCK $EX launch --nproc 2 --timeout-s 140 -- calibrate --min-bytes 4KiB --max-bytes 256MiB \
    --steps-per-octave 2 --iterations 5 --phases a2a --raw "$OUT/cal-socket-raw.json" --out "$OUT/cal-socket-ab.yaml"
fi
if [ "$PART" = heldout ]; then
  step a2a-nvlink 40 80 $TR benchmarks/bench_a2a_conventions.py measure "$CASES" "$OUT/a2a-nvlink.json" --max-bytes 2GiB $SESSION
  step a2a-shm 40 80 $SHM $TR benchmarks/bench_a2a_conventions.py measure "$CASES" "$OUT/a2a-shm.json" --max-bytes 1GiB $SESSION
  step a2a-socket 40 100 $SOCK $TR benchmarks/bench_a2a_conventions.py measure "$CASES" "$OUT/a2a-socket.json" --max-bytes 256MiB --iterations 5 $SESSION
  step runs-nvlink-x2 60 150 $EX launch --nproc 2 --timeout-s 140 -- run --workload "$HELDOUT"/*.yaml --out-dir "$OUT/traces-nvlink-x2"
  step runs-x1 30 90 env CUDA_VISIBLE_DEVICES=0 $EX run --workload $(ls "$HELDOUT"/*.yaml | grep -E "${X1_PATTERN:-h1-|h3-|h4-|p1-.*nolsh}") --out-dir "$OUT/traces-x1"
  step runs-shm-x2 40 90 $SHM $EX launch --nproc 2 --timeout-s 85 -- run --workload "$HELDOUT"/*-p[0-9]*.yaml --out-dir "$OUT/traces-shm-x2"
  step runs-socket-x2 40 150 $SOCK $EX launch --nproc 2 --timeout-s 145 -- run --workload "$HELDOUT"/*-p[0-9]*.yaml --out-dir "$OUT/traces-socket-x2"
  (cd "$OUT" && tar czf traces.tgz traces-* && rm -rf traces-*)
fi
echo "=== done part $PART in $(( $(date +%s) - START )) s ==="
