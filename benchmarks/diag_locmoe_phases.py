"""Diagnostic (not a fit): LocMoE's steps decomposed by phase, per figure, the figure's setting and
its baseline (benchmarks/HISTORY.md, issue 13, branch locmoe13d).

    PYTHONPATH=. python benchmarks/diag_locmoe_phases.py                 # every LocMoE figure
    PYTHONPATH=. python benchmarks/diag_locmoe_phases.py tp=8            # with StepConfig fields added
    PYTHONPATH=. python benchmarks/diag_locmoe_phases.py overlap_chunks=2,
    PYTHONPATH=. python benchmarks/diag_locmoe_phases.py setting.capacity_factor=1.0 only=64npu

Each phase is summed over layers, forward + backward (`_breakdown`'s phases_s); with overlap the
pipelined phases run concurrently, so the phases add up to more than the step. "exposed a2a" is the
all-to-all time not hidden behind compute (the share's numerator), "exposed grad" the gradient
all-reduce that runs past the backward. Extra arguments FIELD=VALUE are added to both steps of
every figure (a value with a comma is a tuple of ints); setting.FIELD=VALUE / baseline.FIELD=VALUE to
one of them only; only=TEXT keeps the figures whose id contains TEXT. About 1-3 min on 2 cores.
"""
from __future__ import annotations

import ast
import dataclasses
import sys

from lshsim import reproduce as R
from lshsim.models import load_model


def _value(text: str):
    if "," in text:
        return tuple(int(v) for v in text.split(",") if v)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str]) -> None:
    pairs = {k: _value(v) for k, v in (arg.split("=", 1) for arg in argv)}
    only = str(pairs.pop("only", ""))
    both = {k: v for k, v in pairs.items() if "." not in k}
    own = {side: {k.split(".", 1)[1]: v for k, v in pairs.items() if k.startswith(side + ".")}
           for side in ("setting", "baseline")}
    planner = R.Planner(load_model)
    for f in R.select(R.load_figures(), "locmoe"):
        if only not in f.id:
            continue
        g = dataclasses.replace(f, setting={**f.setting, **both, **own["setting"]},
                                baseline=None if f.baseline is None else {**f.baseline, **both, **own["baseline"]})
        r = R.predict(g, planner)
        if r.status != "ok":
            print(f"{f.id}: {r.status} ({r.reason})")
            continue
        value = f"{r.predicted:.3f}x" if f.quantity == "speedup" else f"{100 * r.predicted:.2f}%"
        print(f"{f.id}: predicted {value}, paper {f.value:g}")
        for which, raw in (("setting", g.setting), ("baseline", g.baseline)):
            if raw is None:
                continue
            b = planner.step(g.model, g.cluster, g.cluster_edits, raw)
            phases = ", ".join(f"{k} {1e3 * v:.1f}" for k, v in sorted(b["phases_s"].items(), key=lambda kv: -kv[1])
                               if v > 0)
            print(f"  {which:8s} {raw.get('router')}: step {1e3 * b['step_s']:.1f} ms (fwd {1e3 * b['forward_s']:.1f}, "
                  f"bwd {1e3 * b['backward_s']:.1f}); a2a {1e3 * b['a2a_s']:.1f}, exposed {1e3 * b['exposed_a2a_s']:.1f}; "
                  f"grad {1e3 * b['grad_sync_s']:.1f}, exposed {1e3 * b['exposed_grad_sync_s']:.1f}; "
                  f"chunks {b['overlap_chunks']}; drops {b['dropped_fraction']:.4f}; tokens/rank "
                  f"{b['routed_tokens_per_rank']}")
            print(f"           phases (ms, fwd+bwd): {phases}")


if __name__ == "__main__":
    main(sys.argv[1:])
