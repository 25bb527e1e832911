# run-bf: the DeepSeek-V3-like shapes on 1 H200, three passes, with the new deepseek-v3-like-e64 shape (the issue's
# own measured expert shape: top-8 of 64 experts, d 7,168, d_ffn 2,048, 4,096 tokens = one rank's expert load of
# DeepSeek-V3-like at EP 4)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; nproc; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
for i in 1 2 3; do
  s dsv3-$i 120 sh -c "python3 benchmarks/bench_moe_layer.py --shapes deepseek --out $OUT/layer-dsv3-$i.json > $OUT/layer-dsv3-$i.txt 2>&1"
done
(cd $OUT && tar czf json.tar.gz *.json && rm -f *.json)
cat $L; for f in $OUT/layer-dsv3-*.txt; do echo "## $f"; grep -E "expert  |gate share|expert forward /|expert backward /|roofline:" $f; done
