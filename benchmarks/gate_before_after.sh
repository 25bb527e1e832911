#!/usr/bin/env bash
# The gate's host time before and after, in ONE device call on 1 GPU:
#   BASE and NEW are two trees (e.g. the base commit's checkout and this branch's); in each, the gate's
#   host-side steps (benchmarks/gate_host_profile.py of NEW, run against each tree's code), the gate's
#   kernels, host and GPU time (each tree's benchmarks/profile_gate.py) and the layer phase by phase
#   (each tree's benchmarks/bench_moe_layer.py, 1 GPU); then the GPU tests of NEW; a short table last.
# Usage: benchmarks/gate_before_after.sh BASE NEW OUT [BUDGET_S]
set -u
BASE=$(cd "${1:?usage: gate_before_after.sh BASE NEW OUT [BUDGET_S]}" && pwd)
NEW=$(cd "${2:?}" && pwd)
OUT=${3:?}
BUDGET_S=${4:-400}
PY=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
SITE=${PYTHONPATH:-}
mkdir -p "$OUT"
LOG=$OUT/log.txt
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
step() {  # step NAME DIR TIMEOUT_S command...
  local name=$1 dir=$2 limit=$3; shift 3
  if [ "$(left)" -lt 15 ]; then echo "SKIPPED $name: $(left) s left" | tee -a "$LOG"; return 0; fi
  if [ "$limit" -gt $(( $(left) - 10 )) ]; then limit=$(( $(left) - 10 )); fi
  local t0=$(date +%s)
  echo "=== $name ($(left) s left) ===" | tee -a "$LOG"
  (cd "$dir" && PYTHONPATH=.${SITE:+:$SITE} timeout "$limit" "$@") 2>&1 | grep -v "OMP_NUM_THREADS\|^\*\*\*\*" | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s ===" | tee -a "$LOG"
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
  $PY -c "import triton; print('triton', triton.__version__)"; env | grep '^NCCL_\|^TORCH_SYMM\|^NVSHMEM' | sort
  echo "base: $BASE"; echo "new: $NEW"; } > "$OUT/machine.txt" 2>&1
cp "$NEW/benchmarks/gate_host_profile.py" /tmp/gate_host_profile.py  # run from outside both trees
step host-base "$BASE" 60 $PY /tmp/gate_host_profile.py --label base --json "$OUT/host-base.json"
step host-new "$NEW" 60 $PY /tmp/gate_host_profile.py --label new --json "$OUT/host-new.json"
step profile-base "$BASE" 60 $PY benchmarks/profile_gate.py --json "$OUT/profile-base.json"
step profile-new "$NEW" 60 $PY benchmarks/profile_gate.py --json "$OUT/profile-new.json"
step layer-base "$BASE" 90 $PY benchmarks/bench_moe_layer.py --out "$OUT/layer-x1-base.json"
step layer-new "$NEW" 90 $PY benchmarks/bench_moe_layer.py --out "$OUT/layer-x1-new.json"
step tests "$NEW" 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_fused_routing.py tests/test_moe_ops.py \
  tests/test_executor_local.py tests/test_gate_replay.py
echo "=== before / after ==="
$PY - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
pb, pn = load("profile-base.json"), load("profile-new.json")
if pb and pn:
    print(f"{'gate alone (profile_gate)':28s} {'host us base':>12s} {'new':>7s} {'GPU us base':>11s} {'new':>7s}")
    for name in pn["shapes"]:
        b, n = pb["shapes"].get(name), pn["shapes"][name]
        if b:
            print(f"{name[:28]:28s} {b['host_s'] * 1e6:12.1f} {n['host_s'] * 1e6:7.1f} {b['gpu_s'] * 1e6:11.1f} "
                  f"{n['gpu_s'] * 1e6:7.1f}")
lb, ln = load("layer-x1-base.json"), load("layer-x1-new.json")
if lb and ln:
    def gate(result):
        by = {(r["phase"], r["direction"]): r["measured_s"] for r in result["phases"]}
        return by[("gate", "forward")], result["forward_s"]
    base = {r["workload"]["name"]: gate(r) for r in lb["results"]}
    print(f"{'layer (bench_moe_layer, 1 GPU)':30s} {'fwd ms base':>11s} {'new':>6s} {'gate us base':>12s} {'new':>7s} "
          f"{'share base':>10s} {'new':>6s}")
    ok = 0
    for r in ln["results"]:
        name = r["workload"]["name"]
        g, f = gate(r)
        gb, fb = base.get(name, (float("nan"), float("nan")))
        ok += g / f <= 0.05
        print(f"{name[:30]:30s} {fb * 1e3:11.2f} {f * 1e3:6.2f} {gb * 1e6:12.1f} {g * 1e6:7.1f} {gb / fb:10.1%} {g / f:6.1%}")
    print(f"gate <= 5% of the forward (new): {ok} of {len(ln['results'])} shapes")
EOF
