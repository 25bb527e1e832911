# run 1 (diagnosis): bash data/measured/h200/run-gate11f/run1.sh, from the repository root, $OUT set
set -u
L=$OUT/log1.txt
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; env | grep '^NCCL_' | sort; } > $L 2>&1
t0=$(date +%s)
timeout 250 python3 benchmarks/gate_phase_anatomy.py --json $OUT/anatomy.json --trace-dir $OUT/traces >> $L 2>&1
echo "=== anatomy exit $? $(( $(date +%s)-t0 )) s" >> $L
grep -v USDT $L | tail -45
