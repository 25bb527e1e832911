#!/usr/bin/env bash
# The chunk sweep (benchmarks/a2a_chunk_sweep.py) under NCCL settings that move NCCL's per-peer
# p2p channel-count thresholds (src/enqueue.cc addP2pToPlan: a peer gets 8, 16 or 32 channels on
# 4 ranks as its bytes pass 8 x 16 MiB and 16 x 16 MiB, with 16 MiB = 32 x NCCL_P2P_NVL_CHUNKSIZE):
#   default | NCCL_P2P_NVL_CHUNKSIZE=262144 (thresholds 2^26, 2^27) | NCCL_MAX_P2P_NCHANNELS=16.
# Usage: benchmarks/nccl_p2p_env_sweep.sh OUT [NPROC]; writes OUT/chunk-sweep-<setting>.json and
# OUT/nccl-info-<setting>.txt (NCCL_DEBUG=INFO lines about channels), prints the tables.
set -u
OUT=${1:?usage: nccl_p2p_env_sweep.sh OUT [NPROC]}
NPROC=${2:-4}
PY=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
for setting in default chunk256k maxp2p16; do
  case $setting in
    default) envs="" ;;
    chunk256k) envs="NCCL_P2P_NVL_CHUNKSIZE=262144" ;;
    maxp2p16) envs="NCCL_MAX_P2P_NCHANNELS=16" ;;
  esac
  echo "=== $setting ($envs) ==="
  env $envs NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,P2P timeout 120 $PY -m torch.distributed.run --nproc_per_node="$NPROC" \
    benchmarks/a2a_chunk_sweep.py "$OUT/chunk-sweep-$setting.json" --steps 5 --min-mib 128 --max-mib 384 \
    > "$OUT/log-$setting.txt" 2>&1
  echo "exit $?"
  grep -i "channel" "$OUT/log-$setting.txt" | grep -i "p2p\|nchannels\|per peer" | sort | uniq -c | sort -rn | head -8 > "$OUT/nccl-info-$setting.txt"
  cat "$OUT/nccl-info-$setting.txt"
  grep -E "^(equal|moe|offset|pattern)/" "$OUT/log-$setting.txt"
done
