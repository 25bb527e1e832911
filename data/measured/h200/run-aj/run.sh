# run-aj: the layer benchmark with --gate-parts (and behind a busy GPU), then a profiler trace of two shapes
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s layer 200 sh -c "python3 benchmarks/bench_moe_layer.py --gate-parts --behind-busy-gpu --busy-cycles 4000000 --out $OUT/layer-x1.json > $OUT/layer.txt 2>&1"
s prof 120 sh -c "python3 _run/gp/prof_gap.py $OUT gpu-nolsh-d1024-t16k gpu-uniform-d4096-t8k > $OUT/prof.txt 2>&1"
(cd $OUT && tar czf json.tar.gz *.json && rm -f *.json)
cat $L; cat $OUT/prof.txt | tail -3; grep -A20 "gate's parts" $OUT/layer.txt; grep -E " NO$" $OUT/layer.txt
