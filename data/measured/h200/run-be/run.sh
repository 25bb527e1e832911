# run-be: the split-size wait as an event polled from Python (LSHSIM_HOST_WAIT=poll) against cudaStreamSynchronize
# (sync) on 1 H200: the host's launch time after each wait (bench_host_wait.py), then the layer benchmark on the
# d 1,024 shapes four times, sync / poll / sync / poll, then the GPU tests of the expert ops and the exchange
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
L=$OUT/log.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; nproc; env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_|LSHSIM_)' | sort; } > $L 2>&1
s() { local n=$1 t=$2; shift 2; local t0=$(date +%s); echo "=== $n" >> $L; timeout $t "$@"; echo "=== $n exit $? $(( $(date +%s)-t0 )) s" >> $L; }
s hostwait 90 sh -c "python3 benchmarks/bench_host_wait.py --json $OUT/hostwait.json > $OUT/hostwait.txt 2>&1"
W='data/workloads/gpu-*d1024*.yaml'
for i in 1 2; do for m in sync poll; do
  s layer-$m-$i 90 sh -c "LSHSIM_HOST_WAIT=$m python3 benchmarks/bench_moe_layer.py --shapes workloads --workloads '$W' --out $OUT/layer-$m-$i.json > $OUT/layer-$m-$i.txt 2>&1"
done; done
s tests 200 sh -c "python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_moe_ops.py tests/test_gate_replay.py > $OUT/tests.txt 2>&1"
tail -2 $OUT/tests.txt >> $L
(cd $OUT && tar czf json.tar.gz *.json && rm -f *.json && tar czf layer-txt.tar.gz layer-*.txt)
cat $L; cat $OUT/hostwait.txt; for f in $OUT/layer-*-*.txt; do echo "## $f"; grep -E " for " $f | head -30; done
