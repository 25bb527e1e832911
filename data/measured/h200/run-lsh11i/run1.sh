# run-lsh11i, call 1: profile compress (per-kernel GPU time, scan-runs launches, torch.profiler, ncu of
# the two centroid kernels), then the GPU tests for lsh. Run from the device copy of the session's
# checkout: bash _wt_lsh11i/run1.sh (the branch's changed trees overlay main's there).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
cp -r _wt_lsh11i/lshsim _wt_lsh11i/benchmarks _wt_lsh11i/tests .
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
L=$OUT/log.txt
{ date -u; cat _wt_lsh11i/COMMIT; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  echo "ncu: $NCU"; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s profile 200 sh -c "python3 benchmarks/profile_lsh_compress.py --grid --repeats 20 --json $OUT/profile.json --trace $OUT/trace.txt > $OUT/profile.txt 2>&1"
s ncu 120 sh -c "$NCU --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis -k regex:runs_kernel --launch-skip 2 -c 2 -f -o $OUT/ncu python3 benchmarks/profile_lsh_compress.py --ncu-target > $OUT/ncu-log.txt 2>&1; $NCU --import $OUT/ncu.ncu-rep --page details > $OUT/ncu.txt 2>&1"
s tests 180 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/ -k lsh > $OUT/tests.txt 2>&1"
tail -3 $OUT/tests.txt; grep -v "^  scan" $OUT/profile.txt | head -30; grep -A3 "Duration\|Achieved Occupancy\|Registers Per\|Memory Throughput" $OUT/ncu.txt | head -40; grep "===" $L
