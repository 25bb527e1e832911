# run-bb: pick_config's transposed-weight tile (4 stages) checked on 1 H200: the GPU tests of the expert ops, the FFN kernel by kernel
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $OUT/log.txt 2>&1
timeout 240 python3 -m pytest -q -m gpu tests/test_moe_ops.py -p no:cacheprovider > $OUT/gpu-tests.txt 2>&1; echo "exit $?" >> $OUT/gpu-tests.txt
timeout 150 python3 data/measured/h200/run-bb/kernels.py --json $OUT/kernels.json > $OUT/kernels.txt 2>&1; echo "exit $?" >> $OUT/kernels.txt
DIST=dirichlet8 ROWS=28160 timeout 150 python3 data/measured/h200/run-bb/kernels.py --json $OUT/kernels-lsh.json > $OUT/kernels-lsh.txt 2>&1; echo "exit $?" >> $OUT/kernels-lsh.txt
cat $OUT/log.txt; tail -3 $OUT/gpu-tests.txt; cat $OUT/kernels.txt $OUT/kernels-lsh.txt
