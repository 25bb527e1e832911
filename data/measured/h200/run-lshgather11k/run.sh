# base (main bf4fc4e: the device copy's repository root, ..) vs new (this tree, copied into it), one device call:
#   cd _wt_lshgather11k && bash data/measured/h200/run-lshgather11k/run.sh   ($OUT set, deps on PYTHONPATH)
set -u
D=data/measured/h200/run-lshgather11k
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep '^NCCL_' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
mkdir -p $OUT/w
s tests 130 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gate_replay.py tests/test_moe_ops.py tests/test_lsh_fast.py > $OUT/w/tests.txt 2>&1"
s check 60 sh -c "python3 -m lshsim.executor launch --nproc 1 --timeout-s 55 -- check --device cuda --out $OUT/w/check-x1.json > $OUT/w/check.txt 2>&1"
B="python3 benchmarks/bench_moe_layer.py --behind-busy-gpu --busy-cycles 4000000"
s base-1 80 sh -c "cd .. && $B --out $OUT/w/layer-base-1.json --trace-dir $OUT/w/traces-base-1 > $OUT/w/bench-base-1.txt 2>&1"
s new-1 80 sh -c "$B --out $OUT/w/layer-new-1.json --trace-dir $OUT/w/traces-new-1 > $OUT/w/bench-new-1.txt 2>&1"
s new-2 80 sh -c "$B --out $OUT/w/layer-new-2.json --trace-dir $OUT/w/traces-new-2 > $OUT/w/bench-new-2.txt 2>&1"
s base-2 80 sh -c "cd .. && $B --out $OUT/w/layer-base-2.json --trace-dir $OUT/w/traces-base-2 > $OUT/w/bench-base-2.txt 2>&1"
python3 $D/summarize.py $OUT/w > $OUT/summary.txt 2>&1
cp $L $OUT/w/
tar -czf $OUT/run.tgz -C $OUT w
tail -3 $OUT/w/tests.txt; tail -3 $OUT/w/check.txt; cat $OUT/summary.txt; grep "===" $L
