#!/usr/bin/env bash
# The executor's GPU validation in ONE call on the device machine (nvidia-h200-x4):
#   1. executor check on the most GPUs (NCCL): distributed layer == dense reference;
#   2. for W in 4 2 1 GPUs: executor calibrate (all-to-all 4 KiB..1 GiB per rank, p2p, FFN rate,
#      copy), then executor run of every held-out workload (data/workloads/gpu-*.yaml; calibration
#      never sees them), each with a bare all_to_all_single of the same bytes;
#      plus executor run of the in-situ calibration workloads (data/workloads/cal-*.yaml), whose
#      all-to-alls `executor calibrate --from-traces` fits;
#   3. everything packed into OUT/gpu_results.tar.gz, and a short table printed last.
# Every executor run interleaves the layer iterations with a bare all_to_all_single of the same
# splits and measures enough iterations that the bare all-to-alls take RUN_MIN_A2A_S (default
# 0.05 s; at most 200 iterations and RUN_MAX_WALL_S = 3 s per workload).
# MAX_BYTES=0 skips the microbenchmark step (executor calibrate). Steps that no longer fit in
# BUDGET_S are skipped (SKIPPED in the log), so the script ends by itself with what it has.
# Usage: benchmarks/gpu_validation.sh OUT [WORKLOAD_GLOB] [MAX_BYTES] [WORLD_SIZES] [BUDGET_S] [CAL_GLOB]
# On a machine without CUDA it runs the same steps on CPU processes (gloo): that is how it is
# tested before it is sent.
set -u
OUT=${1:?usage: gpu_validation.sh OUT [WORKLOAD_GLOB] [MAX_BYTES] [WORLD_SIZES] [BUDGET_S]}
WORKLOADS=${2:-data/workloads/gpu-*.yaml}
MAX_BYTES=${3:-1GiB}
WORLDS=${4:-"4 2 1"}
BUDGET_S=${5:-540}
CAL_WORKLOADS=${6:-data/workloads/cal-*.yaml}
PY=${PYTHON:-python3}
RUN_FLAGS="--min-a2a-s ${RUN_MIN_A2A_S:-0.05} --max-iterations 200 --max-wall-s ${RUN_MAX_WALL_S:-3}"
# NVLink multicast stays off on the lent machines (KINDS.md); every rank inherits this environment.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
# pure-Python packages the device image lacks (simpy: lshsim.sim's package import), carried as wheels
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import simpy" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
WORK=${WORK_DIR:-$OUT/work}   # WORK_DIR outside OUT: only the tarball and the log come back
pack() { tar czf "$OUT/gpu_results.tar.gz" -C "$(dirname "$WORK")" "$(basename "$WORK")"; cp "$LOG" "$OUT/log.txt"; }
mkdir -p "$OUT" "$WORK"
LOG=$WORK/log.txt
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
{ date -u; uname -a; nvidia-smi 2>&1; nvidia-smi topo -m 2>&1; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())"; } > "$WORK/machine.txt" 2>&1
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
launch() {  # launch NAME MIN_LEFT TIMEOUT_S W sub-command args...
  local name=$1 need=$2 limit=$3 world=$4; shift 4
  if [ "$(left)" -lt "$need" ]; then echo "SKIPPED $name: $(left) s left" | tee -a "$LOG"; return 0; fi
  local t0=$(date +%s)
  if [ "$limit" -gt $(( $(left) - 5 )) ]; then limit=$(( $(left) - 5 )); fi  # never past BUDGET_S
  echo "=== $name on $world ranks ($(left) s left) ===" | tee -a "$LOG"
  $PY -m lshsim.executor launch --nproc "$world" --timeout-s "$limit" --stall-timeout-s 120 -- "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s ===" | tee -a "$LOG"
  pack  # after every step: a call cut off from outside still returns what was measured
}
visible() {  # the first W GPUs
  if [ "$NGPU" -gt 0 ]; then export CUDA_VISIBLE_DEVICES=$(seq -s, 0 $(( $1 - 1 ))); fi
}
MAXW=$(for w in $WORLDS; do echo "$w"; done | sort -n | tail -1)
if [ "$NGPU" -gt 0 ] && [ "$MAXW" -gt "$NGPU" ]; then MAXW=$NGPU; fi
visible "$MAXW"
launch "check" 60 90 "$MAXW" check --out "$WORK/check-x$MAXW.json"
# bare all-to-all by per-peer chunk size at 160-448 MiB (benchmarks/a2a_chunk_sweep.py); CHUNK_SWEEP=0 skips it
if [ "${CHUNK_SWEEP:-1}" != "0" ] && [ "$NGPU" -gt 1 ] && [ "$(left)" -gt 60 ]; then
  echo "=== chunk sweep on $MAXW ranks ($(left) s left) ===" | tee -a "$LOG"
  timeout 90 $PY -m torch.distributed.run --nproc_per_node="$MAXW" benchmarks/a2a_chunk_sweep.py "$WORK/chunk-sweep-x$MAXW.json" 2>&1 | grep -v "^W1\|OMP_NUM_THREADS\|^\*\*\*" | tee -a "$LOG"
  echo "=== chunk sweep: exit ${PIPESTATUS[0]} ===" | tee -a "$LOG"
  pack
fi
for W in $WORLDS; do
  if [ "$NGPU" -gt 0 ] && [ "$W" -gt "$NGPU" ]; then echo "SKIPPED W=$W: only $NGPU GPUs" | tee -a "$LOG"; continue; fi
  visible "$W"
  [ "$MAX_BYTES" = "0" ] || launch "calibrate x$W" 60 120 "$W" calibrate --max-bytes "$MAX_BYTES" --iterations 20 --warmup 5 --steps-per-octave 2 --raw "$WORK/calibration-x$W.json"
  if [ "$W" -gt 1 ]; then
    launch "calibration workloads x$W" 60 240 "$W" run --workload $CAL_WORKLOADS --out-dir "$WORK/cal-x$W" $RUN_FLAGS
  fi
  launch "workloads x$W" 45 170 "$W" run --workload $WORKLOADS --out-dir "$WORK/x$W" $RUN_FLAGS
done
unset CUDA_VISIBLE_DEVICES
pack
$PY benchmarks/gpu_summary.py "$WORK"
