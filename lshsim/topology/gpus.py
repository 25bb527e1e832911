"""Accelerator specs: the one place where datasheet figures for GPUs (and NPUs) live.

Figures come from the vendors' datasheets (per direction where a bandwidth; the product named in
each entry's comment). A calibrated
run on the user's machine overrides them through the `calibration:` block of a topology YAML
(`lshsim.topology.spec`), which sets `achieved_flops` / `achieved_hbm_Bps` in `G.graph["gpu"]`.

`G.graph["gpu"]` is `GpuSpec.to_dict()`:
    name              str
    peak_flops        float, FLOP/s, dense bf16/fp16 matrix peak (datasheet)
    hbm_Bps           float, B/s, HBM bandwidth (datasheet)
    memory_bytes      float, bytes of device memory
    nvlink_Bps        float, B/s per direction over all of a GPU's NVLink (or HCCS) links, 0 if none
    gemm_efficiency   float in (0, 1], fraction of peak a large GEMM reaches (a large bf16 GEMM typically
                      reaches 0.75-0.85 of the datasheet peak)
    hbm_efficiency    float in (0, 1], fraction of HBM bandwidth a copy reaches (a device-to-device copy
                      typically reaches 0.85-0.90)
    compute_units     int, streaming multiprocessors (NVIDIA: V100 80, A100 108, H100/H200 132, B200 148)
                      or AI cores (Ascend 910A: 32), 0 if not given; the wave quantization of small
                      GEMMs in the era MoE layer (`lshsim.sim.moe_layers`) reads it
    achieved_flops    float, FLOP/s the simulator uses for compute (= peak * gemm_efficiency unless
                      calibrated)
    achieved_hbm_Bps  float, B/s the simulator uses for memory traffic (= hbm * hbm_efficiency unless
                      calibrated)

>>> GPUS["h100"].nvlink_Bps / 1e9
450.0
>>> round(GPUS["a100"].to_dict()["achieved_flops"] / 1e12, 1)
249.6
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lshsim import bounds

__all__ = ["GpuSpec", "GPUS", "get_gpu", "gpu_from_dict"]


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet figures of one accelerator (see the module docstring for the fields)."""

    name: str
    peak_flops: float
    hbm_Bps: float
    memory_bytes: float
    nvlink_Bps: float = 0.0
    gemm_efficiency: float = 0.8
    hbm_efficiency: float = 0.87
    compute_units: int = 0      # SMs (NVIDIA) or AI cores (Ascend) from the datasheet; 0 = not given

    def __post_init__(self) -> None:
        if isinstance(self.compute_units, bool) or not isinstance(self.compute_units, int) or self.compute_units < 0:
            raise ValueError(f"gpu.compute_units={self.compute_units!r} must be a non-negative integer (SMs)")
        for field in ("peak_flops", "hbm_Bps", "memory_bytes", "nvlink_Bps", "gemm_efficiency", "hbm_efficiency"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"gpu.{field}={value!r} must be a finite number")
        for field in ("peak_flops", "hbm_Bps", "memory_bytes"):
            value = getattr(self, field)
            if not value > 0:
                raise ValueError(f"gpu.{field}={value} must be > 0")
        if self.nvlink_Bps < 0:
            raise ValueError(f"gpu.nvlink_Bps={self.nvlink_Bps} must be >= 0")
        for field in ("gemm_efficiency", "hbm_efficiency"):
            value = getattr(self, field)
            if not 0 < value <= 1:
                raise ValueError(f"gpu.{field}={value} must be in (0, 1]")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["achieved_flops"] = self.peak_flops * self.gemm_efficiency    # FLOP/s
        out["achieved_hbm_Bps"] = self.hbm_Bps * self.hbm_efficiency      # B/s
        return out


GB = 1e9
TB = 1e12

#: name -> GpuSpec; figures from the vendors' datasheets. Keys are lower case.
GPUS: dict[str, GpuSpec] = {
    # V100 SXM2 32GB: 125 TFLOP/s fp16 tensor, 900 GB/s, NVLink 2: 6 x 25 GB/s.
    "v100": GpuSpec("V100-SXM2-32GB", peak_flops=125 * TB, hbm_Bps=900 * GB, memory_bytes=32 * GB,
                    nvlink_Bps=150 * GB, compute_units=80),
    # A100 SXM 40GB: 312 TFLOP/s bf16, 1,555 GB/s, NVLink 3: 12 x 25 GB/s.
    "a100": GpuSpec("A100-SXM-40GB", peak_flops=312 * TB, hbm_Bps=1555 * GB, memory_bytes=40 * GB,
                    nvlink_Bps=300 * GB, compute_units=108),
    # H100 SXM 80GB: ~989 TFLOP/s dense bf16, 3.35 TB/s, NVLink 4: 18 x 25 GB/s.
    "h100": GpuSpec("H100-SXM-80GB", peak_flops=989 * TB, hbm_Bps=3350 * GB, memory_bytes=80 * GB,
                    nvlink_Bps=450 * GB, compute_units=132),
    # H200 SXM 141GB: ~989 TFLOP/s dense bf16, 4.8 TB/s, NVLink 4: 18 x 25 GB/s.
    "h200": GpuSpec("H200-SXM-141GB", peak_flops=989 * TB, hbm_Bps=4800 * GB, memory_bytes=141 * GB,
                    nvlink_Bps=450 * GB, compute_units=132),
    # B200 (HGX B200 datasheet, 8-GPU totals / 8): 2.25 PFLOP/s dense bf16 (36 PFLOP/s sparse per
    # board), 7.7 TB/s (62 TB/s per board), 180 GB (1,440 GB per board), NVLink 5: 18 x 50 GB/s.
    "b200": GpuSpec("B200-SXM-180GB", peak_flops=2250 * TB, hbm_Bps=7700 * GB, memory_bytes=180 * GB,
                    nvlink_Bps=900 * GB, compute_units=148),
    # Ascend 910A (LocMoE's cluster): 320 TFLOP/s fp16, ~1.07 TB/s (the paper's figure), 32 GB.
    # HCCS: 3 links x 30 GB/s to the other NPUs of its group of 4 (Huawei Atlas 800 public
    # figures, not an NVIDIA-style datasheet: check against a real machine before relying on it).
    "ascend910a": GpuSpec("Ascend-910A", peak_flops=320 * TB, hbm_Bps=1070 * GB, memory_bytes=32 * GB,
                          nvlink_Bps=90 * GB, compute_units=32),
}


def get_gpu(name: str) -> GpuSpec:
    """The spec of a known accelerator, by case-insensitive name.

    >>> get_gpu("H200").memory_bytes / 1e9
    141.0
    """
    key = str(name).lower()
    if key not in GPUS:
        raise ValueError(f"gpu={name!r} is unknown; known: {', '.join(sorted(GPUS))}")
    return GPUS[key]


def gpu_from_dict(spec: dict) -> GpuSpec:
    """A GpuSpec from an inline dict (YAML `gpu: {name: ..., peak_flops: ..., ...}`).

    A `base:` key starts from a known GPU and overrides the fields given.

    >>> gpu_from_dict({"base": "h100", "name": "H100-PCIe", "hbm_Bps": 2.0e12}).hbm_Bps
    2000000000000.0
    """
    spec = dict(spec)
    base = spec.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ValueError(f"gpu.base={base!r} must be the name of a known GPU; known: {', '.join(sorted(GPUS))}")
    fields = asdict(get_gpu(base)) if base is not None else {}
    known = set(GpuSpec.__dataclass_fields__)
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"gpu.{unknown[0]} is not a GPU field; known: {', '.join(sorted(known))}")
    fields.update(spec)
    missing = sorted(known - set(fields) - {"nvlink_Bps", "gemm_efficiency", "hbm_efficiency", "compute_units"})
    if missing:
        raise ValueError(f"gpu.{missing[0]} is missing (inline gpu needs name, peak_flops, hbm_Bps, "
                         f"memory_bytes, or base: <known gpu>)")
    for key, value in fields.items():
        if key == "name":
            if not isinstance(value, str) or not value:
                raise ValueError(f"gpu.name={value!r} must be a non-empty string")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"gpu.{key}={value!r} must be a finite number")
        elif key == "compute_units":
            if value != int(value) or value < 0:
                raise ValueError(f"gpu.compute_units={value!r} must be a non-negative integer (SMs)")
            fields[key] = int(value)
        else:
            bounds.check_field(f"gpu.{key}", value)      # peak_flops, *_Bps, memory_bytes: lshsim.bounds
            fields[key] = float(value)
    return GpuSpec(**fields)
