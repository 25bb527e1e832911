# run-lshlayer11h: branch lshlayer11h on 1 H200, one device call (GPU tests, executor check, layer, profile).
# Run from the tree's root (it ran as _wt_lsh11h/ inside the device copy of main, wheels in ../.whl).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s tests 120 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/ > $OUT/tests.txt 2>&1"
s check 60 sh -c "python3 -m lshsim.executor launch --nproc 1 --timeout-s 55 -- check --device cuda --out $OUT/check-x1.json > $OUT/check.txt 2>&1"
s layer 70 sh -c "python3 benchmarks/bench_moe_layer.py --out $OUT/layer-x1.json >> $L 2>&1"
s profile 60 sh -c "mkdir -p /tmp/p && python3 benchmarks/profile_lsh_layer.py --out /tmp/p > $OUT/profile.txt 2>&1; cp /tmp/p/summary.json $OUT/profile-summary.json"
tail -3 $OUT/tests.txt; grep -E "FAIL|Error" $OUT/tests.txt | head -20; tail -4 $OUT/check.txt; grep -E "lsh_compress|choice|runs_kernel|mean_kernel" $OUT/profile.txt | head -40; grep "===" $L
