# run-aw: main of the seventh session of 2026-12-02 (fresh14, catalog command, plan time-left, README walkthrough fixes, bad-input round 4) on 1 H200: GPU tests, executor check
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s tests 280 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/ > $OUT/tests.txt 2>&1"
s check 60 sh -c "python3 -m lshsim.executor launch --nproc 1 --timeout-s 55 -- check --device cuda --out $OUT/check-x1.json > $OUT/check.txt 2>&1"
{ tail -3 $OUT/tests.txt; tail -2 $OUT/check.txt; } >> $L
cat $L
