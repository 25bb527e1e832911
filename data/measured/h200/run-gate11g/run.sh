# base (main af4657e: the device copy's repository root, ..) vs new (this tree, copied into it), one device call:
#   cd _wt_gate11g && bash data/measured/h200/run-gate11g/run.sh   ($OUT set, deps on PYTHONPATH)
# Order: the four benchmark passes first (A B B A), then the GPU tests of the touched files, executor
# check, and the gate anatomy of the d 1,024 shapes on the new tree, each step cut to what is left of
# a 245 s budget (a step that would get under 15 s is skipped and said so in log.txt).
set -u
D=data/measured/h200/run-gate11g
L=$OUT/w/log.txt
mkdir -p $OUT/w
END=$(( $(date +%s) + ${BUDGET_S:-245} ))
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep '^NCCL_' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local left=$(( END - $(date +%s) )); [ $left -lt $t ] && t=$left
      if [ $t -lt 15 ]; then echo "=== $n skipped ($left s left)" >> $L; return; fi
      local t0=$(date +%s); echo "=== $n (limit $t s)" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
B="python3 benchmarks/bench_moe_layer.py --behind-busy-gpu --busy-cycles 4000000"
s base-1 75 sh -c "cd .. && $B --out $OUT/w/layer-base-1.json > $OUT/w/bench-base-1.txt 2>&1"
s new-1 60 sh -c "$B --out $OUT/w/layer-new-1.json > $OUT/w/bench-new-1.txt 2>&1"
s new-2 55 sh -c "$B --out $OUT/w/layer-new-2.json > $OUT/w/bench-new-2.txt 2>&1"
s base-2 55 sh -c "cd .. && $B --out $OUT/w/layer-base-2.json > $OUT/w/bench-base-2.txt 2>&1"
s tests 70 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gate_replay.py tests/test_fused_routing.py tests/test_moe_ops.py > $OUT/w/tests.txt 2>&1"
s check 35 sh -c "python3 -m lshsim.executor launch --nproc 1 --timeout-s 30 -- check --device cuda --out $OUT/w/check-x1.json > $OUT/w/check.txt 2>&1"
s anatomy 60 sh -c "python3 benchmarks/gate_phase_anatomy.py --shapes gpu-uniform-d1024-t4k gpu-nolsh-d1024-t16k gpu-uniform-d1024-t32k gpu-lsh-d1024-t16k --json $OUT/w/anatomy-new.json > $OUT/w/anatomy-new.txt 2>&1"
python3 $D/summarize.py $OUT/w > $OUT/w/summary.txt 2>&1
tar -czf $OUT/run.tgz -C $OUT w
tail -3 $OUT/w/tests.txt; tail -3 $OUT/w/check.txt; cat $OUT/w/summary.txt; grep "===" $L
