set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.version.cuda)"
timeout 420 python3 _run/gmm2/${BENCH:-bench.py} $OUT/gmm2.json > $OUT/gmm2.txt 2>&1; echo "exit $?"; cat $OUT/gmm2.txt | tail -40
