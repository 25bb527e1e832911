# run-lsh11i, call 2: the GPU tests for lsh, then the benchmarks on the branch's final code (scan-runs
# kernel, its chosen launch, CompressGraph). Run from the device copy of the session's checkout:
# bash _wt_lsh11i/run2.sh (the branch's changed trees overlay main's there).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
cp -r _wt_lsh11i/lshsim _wt_lsh11i/benchmarks _wt_lsh11i/tests .
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; cat _wt_lsh11i/COMMIT; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s tests 150 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/ -k lsh > $OUT/tests.txt 2>&1"
s fast 170 sh -c "python3 benchmarks/bench_lsh_fast.py --tokens 8192 32768 --num-hashes 6 2 --repeats 30 --json $OUT/bench-fast.json > $OUT/bench-fast.txt 2>&1"
s lsh 80 sh -c "python3 benchmarks/bench_lsh.py --device cuda --fast --dtype bfloat16 --rotations gaussian --dims 4096 --tokens 8192 32768 --proj-dims 16 --repeats 50 --json > $OUT/bench-lsh.txt 2>&1"
s profile 80 sh -c "python3 benchmarks/profile_lsh_compress.py --repeats 20 --json $OUT/profile.json --trace $OUT/trace.txt > $OUT/profile.txt 2>&1"
tail -3 $OUT/tests.txt; grep -E "^[0-9]|compress|graph" $OUT/bench-fast.txt | cut -c1-150; grep "gpu us" $OUT/profile.txt; grep "===" $L
