set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
timeout 200 python3 _run/gmm/bench_gmm.py $OUT/gmm.json > $OUT/gmm.txt 2>&1; echo "exit $?"; cat $OUT/gmm.txt | tail -20
