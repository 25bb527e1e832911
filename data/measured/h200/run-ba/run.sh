# run-ba: the DeepSeek-V3-like expert FFN kernel by kernel with four tiles for the input gradient of W2 (1 H200)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $OUT/log.txt 2>&1
timeout 540 python3 data/measured/h200/run-ba/kernels.py --json $OUT/kernels.json > $OUT/kernels.txt 2>&1; echo "exit $?" >> $OUT/kernels.txt
cat $OUT/log.txt; cat $OUT/kernels.txt
