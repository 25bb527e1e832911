# run-lshlayer11j: one device call (see data/measured/h200/run-lshlayer11j/README.md). From the tree's root.
set -u
R=$OUT/r; mkdir -p $R; L=$R/log.txt
{ date -u; cat COMMIT 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; (cd $OUT && tar czf r.tgz r); }
W='data/workloads/gpu-lsh-*.yaml'
for i in 1 2; do
  s layer-base$i 50 sh -c "LSHSIM_SEGMENT_SCAN=0 python3 benchmarks/bench_moe_layer.py --workloads '$W' --iterations 20 --out $R/layer-base$i.json --trace-dir $R/trace-base$i > $R/layer-base$i.txt 2>&1"
  s layer-new$i 50 sh -c "python3 benchmarks/bench_moe_layer.py --workloads '$W' --iterations 20 --out $R/layer-new$i.json --trace-dir $R/trace-new$i > $R/layer-new$i.txt 2>&1"
done
python3 data/measured/h200/run-lshlayer11j/summarize.py $R > $R/summary.txt 2>&1
s tests 110 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/ -k 'lsh or moe_ops or gate' > $R/tests.txt 2>&1"
s check 60 sh -c "python3 -m lshsim.executor launch --nproc 1 --timeout-s 95 -- check --device cuda --out $R/check-x1.json > $R/check.txt 2>&1"
s fast-base 30 sh -c "LSHSIM_SEGMENT_SCAN=0 python3 benchmarks/bench_lsh_fast.py --tokens 8192 32768 --num-hashes 6 --repeats 30 --json $R/fast-base.json > $R/fast-base.txt 2>&1"
s fast-new 30 sh -c "python3 benchmarks/bench_lsh_fast.py --tokens 8192 32768 --num-hashes 6 --repeats 30 --json $R/fast-new.json > $R/fast-new.txt 2>&1"
cat $R/summary.txt; grep -E "r-bwd|^ *compress " $R/fast-*.txt | cut -c1-150; tail -2 $R/tests.txt; grep -E "FAIL|Error" $R/tests.txt | head; tail -3 $R/check.txt; grep "===" $L
cd $OUT && tar czf r.tgz r && rm -rf r && ls -la $OUT
