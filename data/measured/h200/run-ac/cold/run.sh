set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nproc; lscpu | grep -E "Model name|MHz|L2|L3" ; python3 --version
timeout 200 python3 _run/cold/diag_cold.py gpu-uniform-d1024-t4k gpu-uniform-d4096-t8k > $OUT/cold.txt 2>&1; echo "exit $?"
cat $OUT/cold.txt | tail -6
