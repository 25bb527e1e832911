# run-ae: the Triton grouped GEMM for many small experts (executor/grouped_gemm.py) in the layer, 1 H200
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s tests 120 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_moe_ops.py > $OUT/tests.txt 2>&1"
s layerA 150 sh -c "python3 benchmarks/bench_moe_layer.py --out $OUT/layer-A.json > $OUT/layer-A.txt 2>&1"
s dsB1 100 sh -c "LSHSIM_NO_TRITON_GMM=1 python3 benchmarks/bench_moe_layer.py --shapes deepseek --out $OUT/ds-B1.json > $OUT/ds-B1.txt 2>&1"
s dsA2 100 sh -c "python3 benchmarks/bench_moe_layer.py --shapes deepseek --out $OUT/ds-A2.json > $OUT/ds-A2.txt 2>&1"
s dsB2 100 sh -c "LSHSIM_NO_TRITON_GMM=1 python3 benchmarks/bench_moe_layer.py --shapes deepseek --out $OUT/ds-B2.json > $OUT/ds-B2.txt 2>&1"
tail -3 $OUT/tests.txt; grep -E "deepseek.*(expert|forward /|backward /)" $OUT/layer-A.txt $OUT/ds-*.txt; grep "===" $L
