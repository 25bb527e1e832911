"""Diagnostic (not a fit, not shipped as a setting): LocMoE's relative figures under variants of the
steps they compare, to see which mechanism moves them (benchmarks/HISTORY.md, issue 13, branch dp13).

    PYTHONPATH=. python benchmarks/diag_locmoe_variants.py            # the 64-NPU figures
    PYTHONPATH=. python benchmarks/diag_locmoe_variants.py 256npu     # the figures whose id contains 256npu

Each variant adds StepConfig fields to the figure's setting (LocMoE's step) and baseline. Takes
about 1.5 min on 2 cores for the 64-NPU figures.
"""
from __future__ import annotations

import dataclasses
import sys

from lshsim import reproduce as R
from lshsim.models import load_model

VARIANTS = {
    "as in figures.yaml": ({}, {}),
    "LocMoE without overlap": ({"overlap": False}, {}),
    "LocMoE with overlap": ({"overlap": True}, {}),
    # a capacity-padded layer on both steps (MindSpore's MoE of the time is padded), LocMoE without overlap
    "moe_layer tutel (both), no overlap": ({"moe_layer": "tutel", "overlap": False}, {"moe_layer": "tutel"}),
    "moe_layer gshard-einsum-loop (both), no overlap": ({"moe_layer": "gshard-einsum-loop", "overlap": False},
                                                        {"moe_layer": "gshard-einsum-loop"}),
    "grad_sync off (both), no overlap": ({"grad_sync": "off", "overlap": False}, {"grad_sync": "off"}),
}


def main(which: str = "64npu") -> None:
    figures = [f for f in R.select(R.load_figures(), "locmoe") if f.baseline is not None and which in f.id]
    planner = R.Planner(load_model)
    for name, (setting, baseline) in VARIANTS.items():
        print(name)
        for f in figures:
            g = dataclasses.replace(f, setting={**f.setting, **setting}, baseline={**f.baseline, **baseline})
            r = R.predict(g, planner)
            s, b = r.details["setting"], r.details["baseline"]
            value = f"{r.predicted:.3f}x" if f.quantity == "speedup" else f"{100 * r.predicted:.1f}%"
            print(f"    {f.id}: {value} (paper {f.value:g}); step {s['step_ms']:.1f} vs {b['step_ms']:.1f} ms, "
                  f"all-to-all {s['a2a_ms']:.1f} vs {b['a2a_ms']:.1f} ms, drops {s['dropped_fraction']:.4f} vs "
                  f"{b['dropped_fraction']:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
