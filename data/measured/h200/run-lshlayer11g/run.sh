# run-lshlayer11g: before (main 1a39a90, ../_wt_base) and after (branch lshlayer11g) on 1 H200, one device call.
# Run from the after tree's root (_wt_lshlayer) with the base tree beside it.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s before 70 sh -c "cd ../_wt_base && PYTHONPATH=.:/tmp/site python3 benchmarks/bench_moe_layer.py --out $OUT/layer-before.json >> $L 2>&1"
s after 70 sh -c "python3 benchmarks/bench_moe_layer.py --out $OUT/layer-after.json >> $L 2>&1"
s tests 110 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_lsh_fast.py tests/test_gate_replay.py tests/test_moe_ops.py tests/test_executor_local.py > $OUT/tests.txt 2>&1"
s check 80 sh -c "python3 -m lshsim.executor launch --nproc 1 --timeout-s 75 -- check --device cuda --out $OUT/check-x1.json > $OUT/check.txt 2>&1"
s profile 45 sh -c "mkdir -p /tmp/p && python3 benchmarks/profile_lsh_layer.py --out /tmp/p > $OUT/profile-after.txt 2>&1; cp /tmp/p/summary.json $OUT/profile-after-summary.json"
tail -3 $OUT/tests.txt; tail -4 $OUT/check.txt; grep "===" $L
