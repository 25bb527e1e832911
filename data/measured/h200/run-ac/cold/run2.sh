set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
id -u; ls -l /dev/cpu_dma_latency; cat /sys/devices/system/cpu/cpuidle/current_driver /sys/devices/system/cpu/cpuidle/current_governor* 2>&1; ls /sys/devices/system/cpu/cpu0/cpuidle/ 2>&1; for s in /sys/devices/system/cpu/cpu0/cpuidle/state*; do echo "$(cat $s/name) lat $(cat $s/latency) usage $(cat $s/usage)"; done 2>&1
cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>&1; grep MHz /proc/cpuinfo | head -3
timeout 100 python3 _run/cold/diag_cold.py gpu-uniform-d1024-t4k > $OUT/cold-plain.txt 2>&1; echo "plain exit $?"
QOS=1 timeout 100 python3 _run/cold/diag_cold.py gpu-uniform-d1024-t4k > $OUT/cold-qos.txt 2>&1; echo "qos exit $?"
timeout 100 python3 _run/cold/diag_cold.py gpu-uniform-d1024-t4k > $OUT/cold-plain2.txt 2>&1; echo "plain2 exit $?"
tail -2 $OUT/cold-plain.txt; head -1 $OUT/cold-qos.txt; tail -2 $OUT/cold-qos.txt; tail -2 $OUT/cold-plain2.txt
