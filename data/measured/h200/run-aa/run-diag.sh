set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
T="tests/test_moe_ops.py::test_graphed_gate_equals_the_eager_gate_on_a_gpu"
echo "== head alone"; PYTHONPATH=.:/tmp/site timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider "$T" 2>&1 | tail -2
echo "== head moe_ops file"; PYTHONPATH=.:/tmp/site timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_moe_ops.py 2>&1 | tail -2
echo "== base a-m"; (cd _wt_base && PYTHONPATH=.:/tmp/site timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_[a-m]*.py 2>&1 | tail -3)
echo "== head gate_replay+moe_ops"; PYTHONPATH=.:/tmp/site timeout 80 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gate_replay.py tests/test_moe_ops.py 2>&1 | tail -2
