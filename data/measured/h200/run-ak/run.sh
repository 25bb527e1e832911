# run-ak: the expert offsets from the exchange graph: GPU tests of the touched modules, the layer benchmark A / B / A
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s tests 150 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_moe_ops.py tests/test_gate_replay.py > $OUT/tests.txt 2>&1"
s A1 100 sh -c "python3 benchmarks/bench_moe_layer.py --shapes workloads --out $OUT/A1.json > $OUT/A1.txt 2>&1"
s B1 100 sh -c "LSHSIM_EXPERT_OFFSETS=phase python3 benchmarks/bench_moe_layer.py --shapes workloads --out $OUT/B1.json > $OUT/B1.txt 2>&1"
s A2 100 sh -c "python3 benchmarks/bench_moe_layer.py --shapes workloads --out $OUT/A2.json > $OUT/A2.txt 2>&1"
s B2 100 sh -c "LSHSIM_EXPERT_OFFSETS=phase python3 benchmarks/bench_moe_layer.py --shapes workloads --out $OUT/B2.json > $OUT/B2.txt 2>&1"
tail -2 $OUT/tests.txt >> $L
(cd $OUT && tar czf json.tar.gz *.json && rm -f *.json)
cat $L
for f in A1 B1 A2 B2; do echo "== $f"; grep -E "expert +for|gate share|expert forward /" $OUT/$f.txt | grep -v "^shape" | awk '{print $1, $2, $3, $4, $5, $6}' | paste - - - | head -20; done
