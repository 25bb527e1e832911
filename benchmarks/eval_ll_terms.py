"""Low-latency kernels: alternative start-up / per-message / per-peer terms, fitted on the fitting cases only.

`lshsim validate --published` predicts a low-latency dispatch or combine as

    t = t_sim(eff) + a_op + b x messages          (a_op per operation, b per remote (token, expert) message)

per NIC family (`lshsim.sim.published._fit_low_latency`). Every low-latency fitting case sits at 128 tokens per
rank, so a start-up and a per-message cost are nearly interchangeable in that fit. This script refits the
low-latency cases of each NIC family under other term sets, at the family's NIC efficiency of the shipped
calibration (fitted on the fitting cases of every kind, `validate_published(fitting_only=True)`):

    op+msg        the shipped form
    op+msg+peer   + g x (remote peers of a rank = EP - GPUs per node)
    one+msg+peer  one start-up for both operations, + messages, + peers
    op+peer       per-operation start-ups and peers, no per-message term
    one+msg       one start-up and messages

and reports, per family and form, the fitted values, the fitting cases' median / worst |error|, leave-one-out
(each fitting case predicted by the fit without it) and, only for the sets named with --report (held-out sets
already predicted and reported before, never a set not yet predicted), their errors. The fits use the fitting
cases only, plus, with --fit-also SET, the low-latency cases of held-out sets that were predicted and reported
before (moved to fitting for this experiment, as `data/published/README.md` records for earlier moves): what more
fitting data across token counts would do. Never name a set that has not had its one prediction.

    PYTHONPATH=. python benchmarks/eval_ll_terms.py [--report test,fresh,...] [--fit-also fresh8] [--jobs 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from lshsim.sim import published as P

FORMS = {"op+msg": (True, True, False), "op+msg+peer": (True, True, True), "one+msg+peer": (False, True, True),
         "op+peer": (True, False, True), "one+msg": (False, True, False)}


def _unpack(x, ops, form):
    per_op, msg, peer = FORMS[form]
    i, alpha = 0, {}
    if per_op:
        for op in ops:
            alpha[op] = x[i]
            i += 1
    else:
        alpha = {op: x[0] for op in ops}
        i = 1
    beta = x[i] if msg else 0.0
    i += int(msg)
    gamma = x[i] if peer else 0.0
    return alpha, beta, gamma


def predict_s(run, x, ops, form, eff) -> float:
    alpha, beta, gamma = _unpack(x, ops, form)
    case = run.case
    return run.sim_s[eff] + alpha[case.op] + beta * run.messages + gamma * (case.ep - case.gpus_per_node)


def rel_error(run, t) -> float:
    return run.counted / t / 1e9 / run.case.published_GBps - 1.0


def fit(runs, form, eff):
    """Bounded robust least squares of log(pred / published) (soft L1, as the shipped fit); a few starts."""
    from scipy.optimize import least_squares

    ops = sorted({r.case.op for r in runs})
    per_op, msg, peer = FORMS[form]
    # (upper bound, scale) of each parameter, in `_unpack`'s order; every lower bound is 0
    terms = ([(P.ALPHA_MAX_S, 1e-5)] * (len(ops) if per_op else 1) + [(P.MESSAGE_MAX_S, 1e-7)] * msg
             + [(P.PEER_MAX_S, 1e-6)] * peer)
    lower, upper, scale = [0.0] * len(terms), [u for u, _ in terms], [s for _, s in terms]

    def residuals(x):
        return [math.log(r.counted / predict_s(r, x, ops, form, eff) / 1e9 / r.case.published_GBps) for r in runs]

    best = None
    for share in (0.0, 0.03, 0.1):
        x0 = [lo + share * (hi - lo) for lo, hi in zip(lower, upper)]
        result = least_squares(residuals, x0, bounds=(lower, upper), x_scale=scale, loss="soft_l1",
                               f_scale=P.ROBUST_SCALE, xtol=1e-12, ftol=1e-12)
        cost = P._robust(residuals(result.x))
        if best is None or cost < best[0]:
            best = (cost, result.x)
    return best[1], ops


def _stats(errors) -> dict:
    a = np.abs(np.asarray(errors, dtype=float))
    return {"n": int(a.size), "median": float(np.median(a)) if a.size else None,
            "worst": float(a.max()) if a.size else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default="", help="held-out sets to report (comma-separated; already-seen sets only)")
    parser.add_argument("--fit-also", default="", help="already-predicted held-out sets fitted on too (comma-separated)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    report = [s for s in args.report.split(",") if s]
    also = [s for s in args.fit_also.split(",") if s]
    for option, named in (("--report", report), ("--fit-also", also)):
        unknown = [s for s in named if s not in ("test",) + P.FRESH_SETS]
        if unknown:
            parser.error(f"{option}: unknown set(s) {', '.join(unknown)} (known: test, {', '.join(P.FRESH_SETS)})")
    print("fitting-only calibration (all kinds) ...", file=sys.stderr)
    shipped = P.validate_published(fitting_only=True, leave_one_out=False, jobs=args.jobs)["calibration"]
    cases = P.load_cases()
    test_ids = P.load_split(P.PUBLISHED_DIR, cases)
    fresh = {k: P.load_fresh(P.PUBLISHED_DIR, cases, k) for k in P.FRESH_SETS}
    held = lambda cid: "test" if cid in test_ids else next((k for k in P.FRESH_SETS if cid in fresh[k]), "fitting")
    role = lambda cid: "fitting" if held(cid) in also else held(cid)
    chosen = [c for c in cases if c.kind == "low_latency" and role(c.id) in ("fitting", *report)]
    out = {"shipped_efficiency": shipped["nic_efficiency"], "fit_also": also, "families": {}}
    for family in sorted({c.nic_family for c in chosen}):
        eff = shipped["nic_efficiency"].get(family)
        if eff is None:
            continue
        mine = []
        for case in (c for c in chosen if c.nic_family == family):
            run, traffic = P._prepare(case, 0)
            run.sim_s[eff] = P.simulate_case(case, traffic, eff)
            mine.append((role(case.id), run))
        fitting = [r for k, r in mine if k == "fitting"]
        if len(fitting) < 2:
            continue
        print(f"== {family}: {len(fitting)} low-latency fitting cases, NIC efficiency {eff}")
        out["families"][family] = {}
        for form in FORMS:
            x, ops = fit(fitting, form, eff)
            alpha, beta, gamma = _unpack(x, ops, form)
            fit_err = [rel_error(r, predict_s(r, x, ops, form, eff)) for r in fitting]
            loo = []
            for r in fitting:
                rest = [q for q in fitting if q is not r]
                if {q.case.op for q in rest} != set(ops):
                    continue
                x2, _ = fit(rest, form, eff)
                loo.append(rel_error(r, predict_s(r, x2, ops, form, eff)))
            sets = {}
            for k, r in mine:
                if k != "fitting":
                    sets.setdefault(k, []).append(rel_error(r, predict_s(r, x, ops, form, eff)))
            row = {"start_up_us": {op: alpha[op] * 1e6 for op in ops}, "message_us": beta * 1e6,
                   "peer_us": gamma * 1e6, "fitting": _stats(fit_err), "leave_one_out": _stats(loo),
                   "sets": {k: _stats(v) for k, v in sorted(sets.items())}}
            out["families"][family][form] = row
            pct = lambda s: f"{s['median'] * 100:.1f}% / {s['worst'] * 100:.1f}%" if s["n"] else "-"
            terms = ", ".join(f"a_{op} {alpha[op] * 1e6:.1f}" for op in ops)
            print(f"  {form:13s} {terms}, b {beta * 1e6:.3f}, g {gamma * 1e6:.2f} us | fitting {pct(row['fitting'])}"
                  f" | loo {pct(row['leave_one_out'])}"
                  + "".join(f" | {k} ({s['n']}) {pct(s)}" for k, s in row["sets"].items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
