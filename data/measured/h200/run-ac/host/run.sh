set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
cd $PWD
timeout 200 python3 _run/gatehost/diag_gate_host.py data/workloads/gpu-uniform-d1024-t4k.yaml data/workloads/gpu-nolsh-d1024-t16k.yaml data/workloads/gpu-uniform-d4096-t8k.yaml > $OUT/diag.txt 2>&1; echo "diag exit $?"
timeout 120 python3 benchmarks/gate_host_profile.py --shapes gpu-uniform-d1024-t4k --calls 50 > $OUT/hostprof.txt 2>&1; echo "hostprof exit $?"
grep -A20 "=== table" $OUT/diag.txt; tail -25 $OUT/hostprof.txt
