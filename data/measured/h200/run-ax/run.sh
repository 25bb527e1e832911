# run-ax: the experts' input gradient on the transposed weights, tile sweep, DeepSeek-V3-like shapes (1 H200)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $OUT/log.txt 2>&1
timeout 540 python3 data/measured/h200/run-ax/bench_dx.py --json $OUT/dx.json > $OUT/dx.txt 2>&1; echo "exit $?" >> $OUT/dx.txt
cat $OUT/log.txt; grep -v "^    " $OUT/dx.txt
