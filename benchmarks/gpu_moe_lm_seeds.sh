#!/usr/bin/env bash
# The MoE LM grid on one GPU, one process per configuration (all running at once on the one GPU),
# each training its seeds in turn; then the runs joined into one results.json.
#   bash benchmarks/gpu_moe_lm_seeds.sh OUT [STEPS] [BUDGET_S] [SEEDS]
# Step wall times are measured with the nine processes sharing the GPU and the host's cores: they
# compare configurations of this run with each other, not with a GPU of their own.
set -u
OUT=${1:?usage: gpu_moe_lm_seeds.sh OUT [STEPS] [BUDGET_S] [SEEDS]}
STEPS=${2:-1500}
BUDGET=${3:-400}
SEEDS=${4:-0,1,2}
PY=${PYTHON:-python3}
CONFIGS="top2 lsh-L2-res lsh-L2-nores lsh-L6-res lsh-L6-nores top1 hash locmoe grap"
mkdir -p "$OUT"
pids=()
for c in $CONFIGS; do
  $PY benchmarks/train_moe_lm.py --device cuda --corpus-file data/corpus/kjv.txt --configs "$c" \
      --seeds "$SEEDS" --steps "$STEPS" --eval-every 100 --budget-s "$BUDGET" --out "$OUT/$c" \
      > "$OUT/$c.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
files=()
for c in $CONFIGS; do [ -f "$OUT/$c/results.json" ] && files+=("$OUT/$c/results.json"); done
$PY benchmarks/train_moe_lm.py --merge "${files[@]}" --out "$OUT/merged" | tee "$OUT/merged.txt"
