# run-az: idle time inside the DeepSeek-V3-like expert backward, profiled with host activity (1 H200)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $OUT/log.txt 2>&1
timeout 300 python3 data/measured/h200/run-az/gaps.py --trace $OUT/trace.json > $OUT/gaps.txt 2>&1; echo "exit $?" >> $OUT/gaps.txt; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 200 python3 data/measured/h200/run-az/gaps.py > $OUT/gaps-expandable.txt 2>&1
cat $OUT/log.txt; cat $OUT/gaps.txt
echo "--- expandable_segments:True"; cat $OUT/gaps-expandable.txt
