# run 2 (before/after): bash data/measured/h200/run-gate11f/run2.sh from the new tree, whose parent
# directory is the base tree (main), $OUT set
set -u
L=$OUT/log2.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep '^NCCL_' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
B="python3 benchmarks/bench_moe_layer.py --behind-busy-gpu --busy-cycles 4000000"
s base-1 60 sh -c "cd .. && PYTHONPATH=.:${PYTHONPATH#.:} $B --out $OUT/layer-base-1.json > $OUT/bench-base-1.txt 2>&1"
s new-1 60 sh -c "$B --out $OUT/layer-new-1.json > $OUT/bench-new-1.txt 2>&1"
s new-2 60 sh -c "$B --out $OUT/layer-new-2.json > $OUT/bench-new-2.txt 2>&1"
s base-2 60 sh -c "cd .. && PYTHONPATH=.:${PYTHONPATH#.:} $B --out $OUT/layer-base-2.json > $OUT/bench-base-2.txt 2>&1"
python3 data/measured/h200/run-gate11f/summarize.py $OUT/layer-base-1.json $OUT/layer-new-1.json $OUT/layer-new-2.json $OUT/layer-base-2.json | tee $OUT/summary.txt
s tests 75 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gate_replay.py tests/test_moe_ops.py tests/test_fused_routing.py > $OUT/tests.txt 2>&1"
s check 50 sh -c "python3 -m lshsim.executor launch --nproc 1 --timeout-s 45 -- check --device cuda --out $OUT/check-x1.json > $OUT/check.txt 2>&1"
s anatomy 35 sh -c "python3 benchmarks/gate_phase_anatomy.py --shapes gpu-uniform-d1024-t4k gpu-uniform-d4096-t8k deepseek-v3-like deepseek-v3-like-lsh --profile-iterations 2 --json $OUT/anatomy-new.json > $OUT/anatomy-new.txt 2>&1"
tail -2 $OUT/tests.txt; tail -3 $OUT/check.txt; grep "===" $L
tail -6 $OUT/anatomy-new.txt
