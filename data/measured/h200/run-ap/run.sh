# run-ap: timeline of gpu-uniform-d1024-t4k's expert phase with and without the expert graph (torch.profiler traces)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
W=data/workloads/gpu-uniform-d1024-t4k.yaml
for g in 1 0; do
  LSHSIM_EXPERT_GRAPH=$g timeout 120 python3 benchmarks/bench_moe_layer.py --shapes workloads --workloads $W \
     --profile gpu-uniform-d1024-t4k --profile-trace $OUT/trace-g$g.json > $OUT/prof-g$g.txt 2>&1
  echo "g=$g exit $?"; gzip -9 $OUT/trace-g$g.json
  grep -E "expert +(for|bac)" $OUT/prof-g$g.txt
done
