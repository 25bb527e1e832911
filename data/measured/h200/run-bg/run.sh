# run-bg: the DeepSeek-V3-like shapes (deepseek-v3-like-e64 among them) with the gate's parts and behind a busy GPU,
# on 1 H200: the new shape's gate in both conventions and its routing alone
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; nproc; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s dsv3-parts 240 sh -c "python3 benchmarks/bench_moe_layer.py --shapes deepseek --gate-parts --behind-busy-gpu --out $OUT/layer-dsv3.json > $OUT/layer-dsv3.txt 2>&1"
(cd $OUT && tar czf json.tar.gz *.json && rm -f *.json)
cat $L; grep -E "gate share|expert forward /|expert backward /" $OUT/layer-dsv3.txt; grep -B2 -A8 "two conventions" $OUT/layer-dsv3.txt; grep -A8 "gate's parts" $OUT/layer-dsv3.txt
