"""How the MoE layer of a given software stack runs: the era MoE layers the papers' runs used.

A step's MoE layer (`StepConfig.moe_layer`, else the cluster's `software.moe_layer`, else
"grouped") is one of `MOE_LAYERS`:

* **grouped** (lshsim's default, today's stacks): the all-to-alls carry the routed token copies,
  the gate's slot assignment is sparse (an index per copy), the rank's experts run as one grouped
  GEMM set (`lshsim.sim.phases.expert_cost`). Nothing below applies.
* **tutel** (Tutel 0.1-0.2, 2021-2022; the public Swin-MoE code): the all-to-alls carry
  capacity-padded buffers, the experts compute them (padding included) as one batched GEMM set;
  dispatch and combine are Tutel's sparse encode / decode kernels (costed as the grouped layer's
  gate: memory traffic per copy).
* **gshard-einsum-loop** (fairseq's MoE layer, the GPT-MoE checkpoint's code, and DeepSpeed-MoE of
  2021-2022): capacity-padded buffers as Tutel, plus
  - the dispatch and the combine are dense GEMMs with GShard's one-hot masks:
    `torch.mm(dispatch_mask.view(E*C, S), x)` and `combine_weights.view(S, E*C).mm(y)`
    (einsum "sec,sm->ecm" and "sec,ecm->sm"), 2 S E C M FLOPs each, whatever the routing;
  - the gate builds the (S, E, C) masks: two fp32 bmm-einsums "se,sc->sec", their sum, a bool
    copy, casts to fp16; `EINSUM_MASK_BYTES` bytes per (s, e, c) element forward;
  - the rank's local experts run one after another (`for chunk, expert in zip(chunks,
    self.experts)`), two GEMMs and an activation each, each a separate kernel set on W_g x C rows,
    so small experts run at the wave-quantised efficiency of a small GEMM (`gemm_time_s`) and
    every kernel costs at least a launch.
  Source: facebookresearch/fairseq, fairseq/modules/moe/moe_layer.py and top2gate.py at commit
  9e80e19e9a4cc18c08144233394c5db18f72e82a (2021-10-15, "git checkout paper-v3 fairseq/", the
  MoE LM of Artetxe et al. 2021 whose checkpoint LSH-MoE fine-tunes):
  https://github.com/facebookresearch/fairseq/blob/9e80e19e9a4cc18c08144233394c5db18f72e82a/fairseq/modules/moe/moe_layer.py
  DeepSpeed's `deepspeed/moe/sharded_moe.py` (einsum "sec,sm->ecm") and `experts.py` (the same
  Python loop over `deepspeed_experts`) of 2022 do the same.

Capacity (`padded_capacity`): C = ceil(capacity_factor x k x S / E) slots per expert and source
rank (GShard / Tutel; fairseq's top-2 training capacity 2 ceil(S / E) is factor 1.0). A padded
layer sends E_local x C rows from every rank to every rank of its EP group (diagonal included), and
each rank's experts compute all W_g x C rows each, filled or not. With LSH-MoE (rate r) the
centroids fill ceil(r x E_local x C) rows per pair (the compression shrinks the buffers: what the
paper's rate measures); the dense dispatch and combine still act on the tokens (LSH-MoE clusters
the dispatched tokens and restores them before the combine), so their cost does not shrink.

Small GEMMs (`gemm_time_s`): a GEMM of an (m, n) output runs in 128 x 128 output tiles, one tile
per SM per wave (NVIDIA, "Matrix Multiplication Background User's Guide": tile and wave
quantization, https://docs.nvidia.com/deeplearning/performance/dl-performance-matrix-multiplication/);
it reaches the software's large-GEMM rate times tiles / (waves x SMs). cuBLAS may split K or pick
smaller tiles when the output has fewer tiles than SMs: not modelled, so this is the pessimistic
end for outputs of fewer tiles than SMs. Kernel launches: each kernel of the loop costs at least
`kernel_launch_s` of the host (the step's, 5 us: within the 3.8-9.6 us per back-to-back launch
NVIDIA measured on a V100 in "Getting Started with CUDA Graphs", 2019,
https://developer.nvidia.com/blog/cuda-graphs/); the host runs ahead of the GPU, so the loop takes
max(sum of its kernels' GPU times, kernels x kernel_launch_s).
"""
from __future__ import annotations

import math

__all__ = ["MOE_LAYERS", "PADDED_LAYERS", "EINSUM_MASK_BYTES", "EINSUM_MASK_BACKWARD_BYTES", "GATE_OPS",
           "TILE", "resolve_moe_layer", "padded_capacity", "wave_efficiency", "gemm_time_s", "einsum_work",
           "expert_loop_s"]

from lshsim.topology.spec import MOE_LAYERS

#: the layers whose all-to-alls and experts carry capacity-padded buffers
PADDED_LAYERS = ("tutel", "gshard-einsum-loop")
#: bytes moved per (s, e, c) element of the gate's masks, forward (fp32 masks, fairseq top2gate with
#: --moe-gating-use-fp32 and MOELayer at 9e80e19): write combine1_sec and combine2_sec (4 + 4), their
#: sum (read 8, write 4), .bool() (read 4, write 1), .to(fp16) of the combine weights (read 4,
#: write 2), the dispatch mask .to(fp16) (read 1, write 2), the two GEMMs read them (2 + 2)
EINSUM_MASK_BYTES = 38
#: backward: the combine GEMM writes the fp16 gradient of the weights (2), the cast back to fp32
#: (read 2, write 4), the sum's gradient to both halves (read 4, write 4 + 4), each bmm-einsum's
#: gradient reads its half (4 + 4); the dispatch mask has no gradient
EINSUM_MASK_BACKWARD_BYTES = 28
#: kernel-launching tensor ops of fairseq's top2gating forward (softmax, argmaxes, one-hots,
#: Gumbel noise, cumsums, the aux loss, the logged overflow / histogram metadata, the masks and
#: their einsums), counted in the source at 9e80e19; the backward launches half as many
GATE_OPS = 80
#: output tile edge of the wave-quantisation model
TILE = 128


def resolve_moe_layer(config: object, gpu: dict | None) -> str:
    """The step's MoE layer: the config's, else the cluster's software (gpu["moe_layer"]), else "grouped".

    >>> from types import SimpleNamespace as NS
    >>> resolve_moe_layer(NS(moe_layer=None), {"moe_layer": "tutel"}), resolve_moe_layer(NS(moe_layer="grouped"), {"moe_layer": "tutel"})
    ('tutel', 'grouped')
    >>> resolve_moe_layer(None, {})
    'grouped'
    """
    layer = getattr(config, "moe_layer", None)
    if layer is None and isinstance(gpu, dict):
        layer = gpu.get("moe_layer")
    layer = layer or "grouped"
    if layer not in MOE_LAYERS:
        raise ValueError(f"moe_layer={layer!r} must be one of {', '.join(MOE_LAYERS)}")
    return layer


def padded_capacity(tokens: int, k: int, num_experts: int, capacity_factor: float | None) -> int:
    """C = ceil(capacity_factor k S / E) slots per expert and source rank (at least 1).

    >>> padded_capacity(4096, 2, 512, 1.0), padded_capacity(4096, 2, 512, 1.25), padded_capacity(10, 1, 64, 1.0)
    (16, 20, 1)
    """
    if capacity_factor is None:
        raise ValueError("a capacity-padded MoE layer (tutel, gshard-einsum-loop: the cluster's software.moe_layer "
                         "or moe_layer) needs a capacity_factor, not None (no limit); a dropless layer is today's "
                         "grouped one (lshsim plan --moe-layer grouped)")
    return max(1, math.ceil(capacity_factor * k * tokens / num_experts - 1e-9))


def wave_efficiency(m: float, n: float, units: int) -> float:
    """tiles / (waves x units) of an (m, n) GEMM output in TILE x TILE tiles on `units` SMs (1 when
    units is 0: not known).

    >>> wave_efficiency(256, 3072, 80), wave_efficiency(256, 768, 80), wave_efficiency(4096, 4096, 0)
    (0.6, 0.15, 1.0)
    """
    if units <= 0 or m <= 0 or n <= 0:
        return 1.0
    tiles = math.ceil(m / TILE) * math.ceil(n / TILE)
    waves = math.ceil(tiles / units)
    return tiles / (waves * units)


def gemm_time_s(m: float, n: float, k: float, gpu: dict, bytes_per_element: int) -> float:
    """GPU time of one (m x k) @ (k x n) GEMM: max(2 m n k / (achieved_flops x wave_efficiency),
    (m k + k n + m n) b / achieved_hbm_Bps).

    >>> gpu = {"achieved_flops": 1e12, "achieved_hbm_Bps": 1e15, "compute_units": 80}
    >>> round(gemm_time_s(256, 768, 3072, gpu, 2) * 1e3, 4)   # 1.208 GFLOP at 0.15 of 1 TFLOP/s
    8.0531
    """
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    efficiency = wave_efficiency(m, n, int(gpu.get("compute_units", 0) or 0))
    flops = 2.0 * m * n * k
    hbm = (m * k + k * n + m * n) * bytes_per_element
    return max(flops / (gpu["achieved_flops"] * efficiency), hbm / gpu["achieved_hbm_Bps"])


def einsum_work(tokens: float, num_experts: int, capacity: int, d_model: int, bytes_per_element: int,
                direction: str) -> tuple[float, float]:
    """(FLOPs, HBM bytes) of the gshard-einsum-loop layer's dense dispatch and combine on one rank,
    with the gate's (S, E, C) masks. Forward: two GEMMs of 2 S E C M FLOPs, EINSUM_MASK_BYTES per
    mask element plus the GEMMs' token operands; backward: the combine GEMM's two gradients and the
    dispatch GEMM's one (the mask has no gradient): 3 x 2 S E C M FLOPs, EINSUM_MASK_BACKWARD_BYTES
    per element plus the token operands twice.

    >>> f, b = einsum_work(4096, 512, 16, 768, 2, "forward")
    >>> round(f / 1e9, 2), round(b / 1e9, 3)
    (103.08, 1.313)
    """
    sec = float(tokens) * num_experts * capacity
    gemm = 2.0 * sec * d_model
    operands = 2.0 * (tokens + num_experts * capacity) * d_model * bytes_per_element   # read x, write ECM; read ECM, write out
    if direction == "forward":
        return 2.0 * gemm, EINSUM_MASK_BYTES * sec + operands
    return 3.0 * gemm, EINSUM_MASK_BACKWARD_BYTES * sec + 2.0 * operands


def expert_loop_s(experts: int, rows_per_expert: float, d_model: int, d_ffn: int, bytes_per_element: int,
                  gpu: dict, kernel_launch_s: float, direction: str, matrices: int = 2) -> float:
    """Seconds of the gshard-einsum-loop layer's local experts run one after another, each on
    `rows_per_expert` rows (R): forward fc1 (R x M @ M x F), the activation (R F elements, read and
    write) and fc2 (R x F @ F x M): 3 kernels; backward the data and weight gradients of both GEMMs,
    the activation's gradient and two bias reductions: 7 kernels. A SwiGLU expert (matrices 3) adds
    one GEMM of fc1's shape per pass (and its gradients). The loop takes max(GPU time, kernels x
    kernel_launch_s) (the host runs ahead of the GPU), plus one torch.cat of the outputs.

    >>> gpu = {"achieved_flops": 48e12, "achieved_hbm_Bps": 783e9, "compute_units": 80}
    >>> round(expert_loop_s(32, 256, 768, 3072, 2, gpu, 5e-6, "forward") * 1e3, 3)
    6.877
    >>> round(expert_loop_s(32, 256, 768, 3072, 2, gpu, 5e-6, "backward") * 1e3, 3)
    8.811
    """
    if experts <= 0 or rows_per_expert <= 0:
        return 0.0
    r, m, f, b = float(rows_per_expert), d_model, d_ffn, bytes_per_element
    extra = matrices - 2
    if direction == "forward":
        gpu_s = (gemm_time_s(r, f, m, gpu, b) * (1 + extra) + gemm_time_s(r, m, f, gpu, b)
                 + 2 * r * f * b / gpu["achieved_hbm_Bps"])
        kernels = 3 + extra
    else:
        gpu_s = ((gemm_time_s(r, f, m, gpu, b) + gemm_time_s(f, m, r, gpu, b)            # fc2: data, weight
                  + (gemm_time_s(r, m, f, gpu, b) + gemm_time_s(m, f, r, gpu, b)) * (1 + extra))  # fc1 (+ gate)
                 + 3 * r * f * b / gpu["achieved_hbm_Bps"]                                  # activation gradient
                 + (r * f + r * m) * b / gpu["achieved_hbm_Bps"])                           # bias reductions
        kernels = 7 + 2 * extra
    cat_s = 2 * experts * r * m * b / gpu["achieved_hbm_Bps"]
    return max(experts * gpu_s, experts * kernels * kernel_launch_s) + cat_s + kernel_launch_s
