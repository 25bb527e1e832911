# run-bd: the send rows packed by a scatter against the layer's gather, 1 H200 (benchmarks/bench_pack_rows.py)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > $OUT/log.txt 2>&1
timeout 240 python3 benchmarks/bench_pack_rows.py --device cuda --repeats 50 --json $OUT/pack.json > $OUT/pack.txt 2>&1
echo "exit $?" >> $OUT/pack.txt
cat $OUT/log.txt $OUT/pack.txt
