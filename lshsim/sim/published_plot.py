"""`lshsim validate --published --plot`: predicted against published bandwidth, by set.

Two panels from the result of `lshsim.sim.published.validate_published`:
- left, predicted against published GB/s (log-log, each case under its source's own definition of
  bandwidth), y = x with the +-10% and +-25% bands of the issue's targets; colour = the case's set
  (fitting, test, each fresh set), marker = the operation (dispatch, combine, plain all-to-all),
  hollow = a low-latency kernel;
- right, |error| of every case by set (and leave-one-out where it was computed), on a log axis,
  with each set's median and the target lines (median 10%, worst 25%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lshsim.sim.published import FRESH_SETS

#: the sets in the order a reader meets them: fitted on, then the held-out sets as they were drawn
SET_ORDER = ("fitting", "test", *FRESH_SETS)
MARKERS = {"dispatch": "o", "combine": "s", "alltoall": "^"}
#: one colour a set, in SET_ORDER's order (black is leave-one-out's); more colours than known sets, so that
#: every shipped set gets its own (tab10 alone gave the eleventh set, fresh9, the fitting set's gray)
PALETTE = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:olive", "tab:cyan", "navy", "goldenrod", "teal", "crimson", "indigo", "yellowgreen",
           "magenta", "darkkhaki", "sienna", "slateblue", "darkcyan")


def set_order(rows: list[dict]) -> list[str]:
    """The roles present in `rows`, known ones first in SET_ORDER, any other after them by name."""
    roles = {row["role"] for row in rows}
    return [r for r in SET_ORDER if r in roles] + sorted(roles - set(SET_ORDER))


def published_figure(out: dict):
    """The figure (matplotlib Figure, no pyplot) of one `validate_published` result."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = out["rows"]
    if not rows:
        raise ValueError("no predicted case to plot")
    roles = set_order(rows)
    color = {role: PALETTE[i % len(PALETTE)] for i, role in enumerate(roles)}
    fig = Figure(figsize=(12.5, 5.8))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})

    for role in roles:
        for op, marker in MARKERS.items():
            for hollow in (False, True):
                mine = [r for r in rows if r["role"] == role and r["op"] == op
                        and (r["kind"] == "low_latency") == hollow]
                if not mine:
                    continue
                left.scatter([r["published_GBps"] for r in mine], [r["predicted_GBps"] for r in mine],
                             marker=marker, s=30, alpha=0.8, linewidths=1.2,
                             facecolors="none" if hollow else color[role], edgecolors=color[role],
                             gid=f"{role}/{op}/{'low_latency' if hollow else 'other'}")
    values = np.array([[r["published_GBps"], r["predicted_GBps"]] for r in rows], dtype=float)
    low, high = values.min() / 1.6, values.max() * 1.6
    line = np.geomspace(low, high, 64)
    left.plot(line, line, color="black", lw=1)
    left.fill_between(line, line * 0.75, line * 1.25, color="gray", alpha=0.10, label="within 25%")
    left.fill_between(line, line * 0.90, line * 1.10, color="gray", alpha=0.18, label="within 10%")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlim(low, high)
    left.set_ylim(low, high)
    left.set_xlabel("published GB/s (each source's own definition)")
    left.set_ylabel("predicted GB/s")
    for role in roles:
        left.scatter([], [], marker="o", color=color[role], label=role)
    for op, marker in MARKERS.items():
        if any(r["op"] == op for r in rows):
            left.scatter([], [], marker=marker, color="black", label=op)
    if any(r["kind"] == "low_latency" for r in rows):
        left.scatter([], [], marker="o", facecolors="none", edgecolors="black", label="low-latency kernel")
    left.legend(fontsize=7, loc="upper left", ncol=2)
    left.set_title(f"{len(rows)} published cases, predicted against published", fontsize=10)

    groups = [(role, [abs(r["rel_error"]) for r in rows if r["role"] == role]) for role in roles]
    loo = out.get("leave_one_out")
    if loo and loo.get("rows"):
        groups.append(("leave-one-out", [abs(r["rel_error"]) for r in loo["rows"]]))
    rng = np.random.default_rng(0)                       # a fixed jitter: the same file for the same result
    floor = 1e-3                                         # 0.1%: an exact prediction still shows on the log axis
    labels = []                                          # beside each set: its name, median / worst, count
    for i, (role, errors) in enumerate(groups):          # one row a set, the first on top
        errors = np.maximum(np.asarray(errors, dtype=float), floor) * 100.0
        y = i + rng.uniform(-0.2, 0.2, errors.size)
        right.scatter(errors, y, s=14, alpha=0.75, color=color.get(role, "black"), gid=f"errors/{role}")
        median = float(np.median(errors))
        right.plot([median, median], [i - 0.32, i + 0.32], color="black", lw=2)
        labels.append(f"{role}: {median:.1f}% / {errors.max():.0f}%, {errors.size} cases")
    right.axvline(10, color="tab:green", lw=1, ls="--")
    right.axvline(25, color="tab:red", lw=1, ls="--")
    right.set_xscale("log")
    right.set_yticks(range(len(groups)))
    right.set_yticklabels(labels, fontsize=8)
    right.set_ylim(len(groups) - 0.5, -0.5)
    right.set_xlabel("|error| %  (bar: the set's median; beside each set: median / worst)")
    right.set_xlim(floor * 100 / 1.5, None)
    for value, text, colour, align in ((10, "median target 10% ", "tab:green", "right"),
                                       (25, " worst target 25%", "tab:red", "left")):
        right.text(value, 1.0, text, color=colour, fontsize=7, ha=align, va="bottom",
                   transform=right.get_xaxis_transform())
    right.set_title("|error| by set (held-out sets never fitted on)", fontsize=10, pad=14)
    fig.tight_layout()
    return fig


def plot_published(out: dict, path: str | Path) -> Path:
    """Draw `published_figure(out)` into `path`, written whole; the format follows the suffix (else PNG)."""
    from lshsim.io import atomic_output

    fig = published_figure(out)
    path = Path(path)
    suffix = path.suffix.lstrip(".").lower()
    image_format = suffix if suffix in fig.canvas.get_supported_filetypes() else "png"
    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format=image_format, dpi=110)
    return path
