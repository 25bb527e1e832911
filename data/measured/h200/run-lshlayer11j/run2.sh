# run-lshlayer11j, call 2: the layer's restore-backward sums on the scan kernel with its in-kernel zero fill
# (LSHSIM_SEGMENT_SUMS_SCAN=1) against main's path (LSHSIM_SEGMENT_SCAN=0), then the GPU tests of lsh_fast
# and the gate replay. From the tree's root.
set -u
R=$OUT/r2; mkdir -p $R; L=$R/log.txt
{ date -u; cat COMMIT 2>/dev/null; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; (cd $OUT && tar czf r2.tgz r2); }
W='data/workloads/gpu-lsh-*.yaml'
for i in 1; do
  s layer-base$i 30 sh -c "LSHSIM_SEGMENT_SCAN=0 python3 benchmarks/bench_moe_layer.py --workloads '$W' --iterations 20 --out $R/layer-base$i.json --trace-dir $R/trace-base$i > $R/layer-base$i.txt 2>&1"
  s layer-new$i 30 sh -c "LSHSIM_SEGMENT_SUMS_SCAN=1 python3 benchmarks/bench_moe_layer.py --workloads '$W' --iterations 20 --out $R/layer-new$i.json --trace-dir $R/trace-new$i > $R/layer-new$i.txt 2>&1"
done
python3 data/measured/h200/run-lshlayer11j/summarize.py $R > $R/summary.txt 2>&1
s tests 40 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_lsh_fast.py tests/test_gate_replay.py -k 'lsh' > $R/tests.txt 2>&1"
cat $R/summary.txt; tail -2 $R/tests.txt; grep -E "FAIL|Error" $R/tests.txt | head; grep "===" $L
cd $OUT && tar czf r2.tgz r2 && rm -rf r2
