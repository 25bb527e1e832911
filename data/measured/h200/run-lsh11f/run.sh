#!/bin/bash
cd "$(dirname "$0")"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
NEW=$PWD; BASE=$PWD/../_wt_lsh_base
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv;
  python3 -c "import torch,triton;print('torch',torch.__version__,'triton',triton.__version__)";
  echo "== pytest -m gpu (new)"; cd $NEW; PYTHONPATH=.:/tmp/site timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_lsh_fast.py tests/test_lsh.py tests/test_moe_ops.py 2>&1 | tail -25; } > $OUT/tests.txt 2>&1
BL="--device cuda --fast --dtype bfloat16 --rotations gaussian --dims 4096 --tokens 8192 32768 --proj-dims 16 --repeats 50 --json"
cd $NEW; PYTHONPATH=.:/tmp/site timeout 200 python3 benchmarks/bench_lsh_fast.py --sweep --tokens 8192 32768 --num-hashes 6 2 --repeats 30 --json $OUT/bench_new.json > $OUT/bench_new.txt 2>&1
cd $BASE; PYTHONPATH=.:/tmp/site timeout 110 python3 benchmarks/bench_lsh_fast.py --tokens 8192 32768 --num-hashes 6 2 --repeats 30 --json $OUT/bench_base.json > $OUT/bench_base.txt 2>&1
cd $NEW; PYTHONPATH=.:/tmp/site timeout 45 python3 benchmarks/bench_lsh.py $BL > $OUT/bench_lsh_new.txt 2>&1
cd $BASE; PYTHONPATH=.:/tmp/site timeout 45 python3 benchmarks/bench_lsh.py $BL > $OUT/bench_lsh_base.txt 2>&1
cd $NEW; tail -3 $OUT/tests.txt; for f in new base; do echo "== $f"; grep -E "^[0-9]+ x|  compress |per 64|compress:|best" $OUT/bench_$f.txt | head -40; done; grep "runs {" $OUT/bench_new.txt | head -16
