# run-bc: main at the twelfth session's start on 1 H200: GPU tests, executor check, the layer benchmark (every shape,
# --gate-parts, behind a busy GPU too), then the DeepSeek-V3-like shapes twice more (the spread of their backward / forward)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; git log -1 --format='commit %H' 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; nproc; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s tests 240 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/ > $OUT/tests.txt 2>&1"
s check 60 sh -c "python3 -m lshsim.executor launch --nproc 1 --timeout-s 55 -- check --device cuda --out $OUT/check-x1.json > $OUT/check.txt 2>&1"
s layer 150 sh -c "python3 benchmarks/bench_moe_layer.py --gate-parts --behind-busy-gpu --out $OUT/layer-x1.json > $OUT/layer.txt 2>&1"
s dsv3-b 60 sh -c "python3 benchmarks/bench_moe_layer.py --shapes deepseek --out $OUT/layer-dsv3-b.json > $OUT/layer-dsv3-b.txt 2>&1"
s dsv3-c 60 sh -c "python3 benchmarks/bench_moe_layer.py --shapes deepseek --out $OUT/layer-dsv3-c.json > $OUT/layer-dsv3-c.txt 2>&1"
{ tail -3 $OUT/tests.txt; tail -2 $OUT/check.txt; } >> $L
(cd $OUT && tar czf json.tar.gz *.json && rm -f *.json)
cat $L; grep -E " NO$" $OUT/layer.txt; grep -A14 "gate's parts" $OUT/layer.txt; grep -iE "deepseek" $OUT/layer-dsv3-*.txt | head -20
