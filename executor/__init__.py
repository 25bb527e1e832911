"""The executor: the dispatch algorithms of `lshsim.dispatch` on real devices (torch.distributed).

`python -m lshsim.executor run --workload W.yaml` under torchrun (NCCL on CUDA, gloo on CPU) or under
`python -m lshsim.executor launch --nproc N -- run ...`; `python -m lshsim.executor calibrate` measures the
microbenchmarks that parameterise a topology. The same commands are `lshsim run | calibrate |
check | launch`. docs/ARCHITECTURE.md describes the layers, README.md (section executor) the
commands.

Modules: commands (the sub-commands and their arguments, for both entry points), workload (the
YAML schema), comm (autograd all-to-all, byte counting), timing (events, max over ranks, median
over iterations), moe_layer (the distributed MoE layer and its dense reference), run (a measured
Trace), calibrate (all-to-all sweep, p2p, FFN rate; the calibrate command), calibrate_files (the
command on measured files: a calibration source, the fit, the topology written; no torch), launch
(local ranks with a watchdog: signals forwarded, heartbeats, no rank left behind), status (the
launcher's status folder: progress, heartbeat and failure files; no torch), runtime (process group,
provenance).
"""
