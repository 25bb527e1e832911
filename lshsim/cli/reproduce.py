"""`lshsim reproduce`: every published figure of LSH-MoE and LocMoE, paper against predicted.

The figures and the comparison: `lshsim.reproduce` (figures file `data/papers/figures.yaml`); the
steps are `lshsim plan`'s (`lshsim.sim.moe_step`), the models the catalog's (`lshsim.models`).
"""
from __future__ import annotations

from lshsim.checks import arg_finite_number
from lshsim.cli import _render

_PAPERS = ("lsh-moe", "locmoe", "all")


def add_parser(subparsers):
    p = subparsers.add_parser("reproduce", help="the papers' published figures against the planner's predictions",
                              description="Predict every published figure of LSH-MoE (Nie et al., NeurIPS 2024) "
                                          "and LocMoE (Li et al., IJCAI 2024) with the step simulator of "
                                          "`lshsim plan`, on the papers' models and clusters, and print paper "
                                          "against predicted with the relative error (predicted - paper) / "
                                          "paper, a summary, and the LSH-MoE consistency check (the all-to-all "
                                          "share a speedup implies against the paper's Fig. 3). The figures "
                                          "(data/papers/figures.yaml) are a held-out test set: nothing is "
                                          "fitted on them, except by --fit, which says so.")
    p.add_argument("--paper", choices=_PAPERS, default="all", help="the figures of one paper, or all (default all)")
    p.add_argument("--figures", metavar="FILE.yaml", default=None,
                   help="a figures file (default: the shipped data/papers/figures.yaml)")
    p.add_argument("--fidelity", choices=("auto", "exact", "tolerance"), default="auto",
                   help="all-to-all simulation: auto (lshsim plan's: exact up to 64 GPUs, drain tolerance above; "
                        "default), exact, or tolerance (--drain-tolerance everywhere; faster)")
    p.add_argument("--drain-tolerance", type=arg_finite_number(0.0, exclusive=True, maximum=0.5), default=0.01,
                   help="the tolerance of --fidelity tolerance and of auto above 64 GPUs, in (0, 0.5] "
                        "(default 0.01)")
    p.add_argument("--sweep", action="store_true",
                   help="also move one unknown at a time (tokens per GPU x0.5 / x2, the sequence length x0.5 / x2 "
                        "at the same tokens per GPU, the NIC line rate x0.5 / x2, "
                        "the GEMM efficiency x0.5 / x2 capped at 1) and show how far each moves each prediction "
                        "(several times the run time)")
    p.add_argument("--fit", action="store_true",
                   help="also fit one set of assumptions per cluster on that cluster's figures: the GEMM and "
                        "all-to-all efficiencies of its software calibration, every pair of a grid from 0.05 to 1; "
                        "prints the pair that brings the most figures within 15%%, its in-sample errors and the "
                        "leave-one-figure-out errors (a consistency check, not a prediction; slow: the all-to-alls "
                        "are simulated at every all-to-all efficiency, about 2 minutes for --paper lsh-moe)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (progress goes to stderr)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw paper against predicted, one bar pair per figure (written whole; its folder is "
                        "created if missing, checked before any simulation)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _drain_tolerance(args) -> float | None:
    if args.fidelity == "auto":
        return None
    return 0.0 if args.fidelity == "exact" else float(args.drain_tolerance)


def run(args) -> int:
    import time

    from lshsim import reproduce as R
    from lshsim.cli._progress import ProgressLines
    from lshsim.io import check_distinct_outputs, prepare_output
    from lshsim.models import list_models, load_model
    from lshsim.topology.spec import list_topologies

    prepare_output(args.plot, "--plot")
    check_distinct_outputs([("--plot", args.plot)], [("--figures", args.figures)])
    figure_set = R.load_figures(args.figures)
    R.check_references(figure_set, list_models(), list_topologies())
    figures = R.select(figure_set, args.paper)
    if not figures:
        raise ValueError(f"{figure_set.source} has no figures of paper {args.paper!r}")
    started = time.perf_counter()
    progress = ProgressLines("reproduce", quiet=args.quiet, started=started)
    planner = R.Planner(load_model, drain_tolerance=_drain_tolerance(args), auto_tolerance=args.drain_tolerance,
                        progress=progress.line)
    results = []
    for index, figure in enumerate(figures, start=1):
        progress.line(f"figure {index}/{len(figures)} {figure.id}")
        results.append(R.predict(figure, planner))
    predict_s = time.perf_counter() - started
    progress.line("baselines on the figures' own all-to-all (where the paper's method changes it)")
    algorithm_rows = R.algorithm_check(results, planner)
    sweep_rows = None
    if args.sweep:
        progress.line(f"sweep: {len(R.SWEEP_VARIANTS)} variants x {sum(r.status == 'ok' for r in results)} figures")
        sweep_rows = R.sweep(figures, planner, {r.figure.id: r for r in results})
    fit_groups = None
    if args.fit:
        fit_groups = R.fit(figures, planner, {r.figure.id: r for r in results}, progress=progress.line)
    elapsed_s = time.perf_counter() - started
    summary = R.summarize(results)
    checks = R.consistency(results)
    out = {"figures_file": figure_set.source, "paper": args.paper, "figures": [r.to_dict() for r in results],
           "summary": summary, "consistency": checks, "algorithm_check": algorithm_rows, "fidelity": planner.fidelity,
           "cache": planner.cache_stats(),
           "predict_s": predict_s, "elapsed_s": elapsed_s}
    if sweep_rows is not None:
        out["sweep"] = sweep_rows
    if fit_groups is not None:
        out["fit"] = {"groups": fit_groups, "summary": R.fit_summary(fit_groups)}
    if args.plot:
        _plot(results, args.plot)
        progress.wrote(args.plot)
        out["plot"] = args.plot
    if args.json:
        _render.print_json(out)
        return 0
    _render_tables(results, summary, checks, sweep_rows, planner, out)
    if args.plot:        # on stdout too, as every other command's --plot: --quiet silences only the progress lines
        _render.console().print(f"wrote {args.plot}", soft_wrap=True, markup=False)
    return 0


# ---- text ---------------------------------------------------------------------------------------
def _fmt(quantity: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if quantity == "speedup" else f"{100 * value:.1f}%"


def _published(figure) -> str:
    text = ("~" if figure.approximate else "") + _fmt(figure.quantity, figure.value)
    if figure.range is not None:
        text += f" ({_fmt(figure.quantity, figure.range[0])}-{_fmt(figure.quantity, figure.range[1])})"
    return text


def _drops(result) -> str:
    """The dropped share of expert choices of each step, when any step drops more than 1%."""
    parts = []
    for name in ("baseline", "setting"):
        step = result.details.get(name)
        if step is not None and step["dropped_fraction"] > 0.01:
            parts.append(f"{name} drops {100 * step['dropped_fraction']:.0f}%")
    return ", ".join(parts)


def _grad(result) -> str:
    """The exposed gradient all-reduce's share of the measured step, and its mode."""
    step = result.details.get("setting")
    if step is None or step.get("grad_sync", "off") == "off":
        return ""
    return f"grad all-reduce {100 * step['grad_sync_share']:.0f}% ({step['grad_sync']})"


def _render_tables(results, summary, checks, sweep_rows, planner, out) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _render.wide_console()
    table = Table(title="Published figures against lshsim's predictions (error = (predicted - paper) / paper)")
    for column in ("figure (model on cluster)", "paper", "predicted", "error", "note"):
        table.add_column(column, justify="right" if column in ("paper", "predicted", "error") else "left",
                         no_wrap=column != "note")
    for r in results:
        f = r.figure
        where = escape(f"{f.model}{' (stand-in)' if f.stand_in else ''} on {r.cluster_label}")
        name = f"{f.id}\n[dim]{where}[/dim]"
        if r.status != "ok":
            table.add_row(name, _published(f), "[yellow]not plannable[/yellow]", "-", escape(_short_reason(r.reason)))
            continue
        mark = "green" if r.within else "red"
        note = ", ".join(part for part in (_grad(r), _drops(r)) if part)
        if r.in_range is not None:
            within_range = "in the paper's range" if r.in_range else "outside the paper's range"
            note = within_range + (f"; {note}" if note else "")
        table.add_row(name, _published(f), _fmt(f.quantity, r.predicted), f"[{mark}]{100 * r.error:+.0f}%[/{mark}]",
                      note)
    console.print(table)
    s = summary
    if s["predicted"]:
        console.print(f"[bold]{s['within']} of {s['predicted']} predicted figures within {100 * s['tolerance']:.0f}% "
                      f"of the paper[/bold]; median |error| {100 * s['median_abs_error']:.0f}%, worst "
                      f"{100 * s['worst_abs_error']:.0f}% ({s['worst']})"
                      + (f"; {s['in_range']} of {s['with_range']} inside the paper's range" if s["with_range"] else ""))
    console.print("[dim]shares are of the whole step time: the all-to-all share is the all-to-all time not hidden "
                  "behind compute / step; the step includes the data-parallel gradient all-reduce's exposed part "
                  "(grad all-reduce %: its part past the backward / step, in the cluster's software.grad_sync mode)[/dim]")
    for figure_id in s["not_plannable"]:
        reason = next(r.reason for r in results if r.figure.id == figure_id)
        console.print(escape(f"not plannable: {figure_id}: {reason}"))
    stand_ins = {r.figure.stand_in for r in results if r.figure.stand_in}
    for text in stand_ins:
        models = sorted({r.figure.model for r in results if r.figure.stand_in == text})
        console.print(f"[dim]stand-in: {', '.join(models)}: {escape(text)}[/dim]")
    if checks:
        _render_consistency(console, checks)
    if out["algorithm_check"]:
        _render_algorithm_check(console, out["algorithm_check"])
    if sweep_rows is not None:
        _render_sweep(console, results, sweep_rows)
    if "fit" in out:
        _render_fit(console, out["fit"])
    modes: dict = {}
    for v in out["fidelity"].values():
        mode = "exact" if v["mode"] == "exact" else f"drain tolerance {v['drain_tolerance']:g}"
        modes.setdefault(mode, set()).add(v["gpus"])
    fidelity = "; ".join(f"{mode} on {', '.join(str(g) for g in sorted(gpus))} GPUs" for mode, gpus in modes.items())
    cache = out["cache"]
    console.print(f"[dim]fidelity: {escape(fidelity)}. {cache['steps']} steps, {cache['routings']} routings, "
                  f"{cache['misses']} all-to-alls simulated ({cache['simulated_s']:.1f} s), {cache['hits']} reused; "
                  f"predicted in {out['predict_s']:.1f} s, {out['elapsed_s']:.1f} s in all[/dim]")


def _short_reason(reason: str) -> str:
    if "expert parallelism needs" in reason:
        head = reason.split(";")
        return "experts do not divide over the GPUs: " + head[0].split("has ")[-1] + " on " + \
            head[1].strip().split("has ")[-1] + " (no expert replicas in lshsim)"
    return reason


def _render_consistency(console, checks) -> None:
    from rich.table import Table

    table = Table(title="LSH-MoE consistency: the all-to-all share a speedup S at rate r implies, (1 - 1/S) / (1 - r)")
    for column in ("speedup figure", "paper S", "r", "implied share", "Fig. 3", "agree", "lshsim share", "lshsim S",
                   "its implied", "lshsim follows"):
        table.add_column(column, justify="left" if column in ("speedup figure", "lshsim follows", "agree") else "right",
                         no_wrap=column in ("speedup figure", "implied share", "lshsim follows"))
    for c in checks:
        implied = f"{100 * c['paper_implied_share']:.0f}%"
        if c["paper_implied_range"]:
            low, high = c["paper_implied_range"]
            implied += f" ({100 * low:.0f}-{100 * high:.0f}%)"
        agrees = "-" if c["paper_consistent"] is None else ("yes" if c["paper_consistent"] else "[red]no[/red]")
        pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"                         # noqa: E731
        short = c["id"].removeprefix("lsh-moe/").removesuffix("/speedup")
        table.add_row(short, f"{c['paper_speedup']:.2f}x", f"{c['rate']:g}" + ("*" if c["rate_assumed"] else ""),
                      implied, pct(c["fig3_share"]), agrees, pct(c["predicted_share"]),
                      "-" if c["predicted_speedup"] is None else f"{c['predicted_speedup']:.2f}x",
                      pct(c["predicted_implied_share"]), c["follows"] or c["status"])
    console.print(table)
    console.print("[dim]r*: assumed (the paper gives no rate for the figure). lshsim share: the planner's all-to-all "
                  "share of the figure's baseline step; its implied: the share its own speedup implies; 'follows': "
                  "the paper number (Fig. 3, or the share implied by the paper's speedup) the planner's share is "
                  "within 15% of[/dim]")


def _render_algorithm_check(console, rows) -> None:
    from rich.table import Table

    table = Table(title="The baselines' all-to-all: the figures again with the baseline on the step's all-to-all")
    for column in ("figure", "paper", "all-to-all (step / baseline)", "lshsim", "error", "baseline on it too",
                   "error "):
        table.add_column(column, justify="left" if column in ("figure", "all-to-all (step / baseline)") else "right",
                         no_wrap=column == "figure")
    for row in rows:
        fmt = (lambda v: "-" if v is None else f"{v:.2f}x") if row["quantity"] == "speedup" else \
            (lambda v: "-" if v is None else f"{100 * v:.1f}%")                                   # noqa: E731
        err = lambda v: "-" if v is None else f"{100 * v:+.0f}%"                                 # noqa: E731
        table.add_row(row["id"], fmt(row["paper"]), f"{row['algorithm']} / {row['baseline_algorithm']}",
                      fmt(row["predicted"]), err(row["error"]), fmt(row["predicted_same"]), err(row["error_same"]))
    console.print(table)
    console.print("[dim]lshsim follows the first reading: the paper names the all-to-all among its method's changes, "
                  "so its baselines run without it. LocMoE: the all-to-all cut and the step reductions cannot both "
                  "come near the paper's in either reading (benchmarks/RESULTS.md)[/dim]")


def _render_sweep(console, results, rows) -> None:
    from rich.table import Table

    from lshsim.reproduce import SWEEP_VARIANTS

    labels = [label for label, _, _ in SWEEP_VARIANTS]
    table = Table(title="One unknown at a time: how far each moves the prediction (predicted / base - 1)")
    for column in ("figure", "paper", "base", *labels):
        table.add_column(column, justify="left" if column == "figure" else "right", no_wrap=column == "figure")
    by_figure: dict = {}
    for row in rows:
        by_figure.setdefault(row["id"], {})[row["variant"]] = row
    for r in results:
        if r.status != "ok":
            continue
        q = r.figure.quantity
        cells = []
        for label in labels:
            row = by_figure.get(r.figure.id, {}).get(label)
            if row is None or row["predicted"] is None:
                cells.append("-" if row is None else row["value"][:20])
            else:
                cells.append(f"{100 * row['move']:+.0f}%")
        table.add_row(r.figure.id, _published(r.figure), _fmt(q, r.predicted), *cells)
    console.print(table)
    console.print("[dim]tokens: tokens per GPU of both steps; seq: the model's sequence length (the attention span; "
                  "the tokens per GPU stay; none for windowed attention); NIC: inter.nic_gbps of the cluster spec; GEMM eff: "
                  "gpu.gemm_efficiency (x2 stops at 1.0). Each is edited in memory, one at a time; the predictions "
                  "themselves are in --json (\"sweep\").[/dim]")


def _render_fit(console, fit) -> None:
    from rich.markup import escape
    from rich.table import Table

    from lshsim.reproduce import FIT_FIELDS

    short = {"software.gemm_efficiency": "GEMM", "software.a2a_efficiency": "all-to-all"}

    def pair(values) -> str:
        return ", ".join(f"{short[name]} {values[name]:g}" for name in FIT_FIELDS) if values else "-"

    def err(value) -> str:
        if value is None:
            return "-"
        mark = "green" if abs(value) <= 0.15 else "red"
        return f"[{mark}]{100 * value:+.0f}%[/{mark}]"

    for group in fit["groups"]:
        if group["fitted"] is None:
            console.print(escape(f"fit {group['group']}: not fitted ({group.get('reason', 'no plannable figure')})"))
            continue
        table = Table(title=escape(f"One set of assumptions for {group['group']} ({', '.join(group['clusters'])}): "
                                   f"documented {pair(group['documented'])}; fitted {pair(group['fitted'])}"))
        for column in ("figure", "paper", "documented", "fitted", "leave-one-out", "its pair"):
            table.add_column(column, justify="left" if column in ("figure", "its pair") else "right",
                             no_wrap=column == "figure")
        for row in group["rows"]:
            table.add_row(row["id"], _fmt(row["quantity"], row["paper"]), err(row["documented_error"]),
                          err(row["fitted_error"]), err(row["loo_error"]), pair(row["loo_point"]))
        console.print(table)
        console.print(f"[dim]fitted: {group['within']} of {len(group['rows'])} within 15%, median "
                      f"{100 * group['median_abs_error']:.0f}%, worst {100 * group['worst_abs_error']:.0f}%; the pair "
                      f"with the smallest worst error ({escape(pair(group['minimax']))}) reaches "
                      f"{100 * group['minimax_worst_abs_error']:.0f}%[/dim]")
    s = fit["summary"]
    parts = []
    for kind, label in (("documented", "documented"), ("fitted", "fitted (in-sample)"), ("loo", "leave-one-out")):
        k = s[kind]
        if k["figures"]:
            parts.append(f"{label}: {k['within']} of {k['figures']} within 15%, median {100 * k['median_abs_error']:.0f}%, "
                         f"worst {100 * k['worst_abs_error']:.0f}%")
    console.print("[bold]" + "; ".join(parts) + "[/bold]")
    console.print("[dim]The fit moves the two efficiencies of each cluster's software calibration over a grid and keeps "
                  "the pair that brings the most of that cluster's figures within 15% (then the smallest median; ties: "
                  "the pair nearest the documented one). It is a consistency check, not a prediction: the figures are "
                  "what it fits; leave-one-out refits without each figure. A fitted pair at the grid's edge, or far from "
                  "the documented measurements, says the model or the papers' numbers need more than a calibration."
                  "[/dim]")


# ---- plot ---------------------------------------------------------------------------------------
def _plot(results, path: str) -> None:
    """Two panels of horizontal bar pairs (paper, predicted) per figure: fractions (%) and speedups (x);
    a whisker marks the paper's range; a not-plannable figure has its paper bar only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [("share or reduction, %", [r for r in results if r.figure.quantity != "speedup"], 100.0),
              ("speedup, x", [r for r in results if r.figure.quantity == "speedup"], 1.0)]
    panels = [p for p in panels if p[1]]
    sns.set_theme(style="whitegrid")
    heights = [max(2.0, 0.42 * len(p[1]) + 1.0) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11.0, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    colours = sns.color_palette("tab10")
    for ax, (xlabel, rows, scale) in zip(axes[:, 0], panels):
        for i, r in enumerate(rows):
            y = len(rows) - 1 - i
            f = r.figure
            ax.barh(y + 0.2, f.value * scale, height=0.38, color=colours[0], label="paper" if i == 0 else None)
            if f.range is not None:
                ax.errorbar(f.value * scale, y + 0.2, xerr=[[(f.value - f.range[0]) * scale],
                                                            [(f.range[1] - f.value) * scale]],
                            color="black", capsize=3, linewidth=1)
            if r.predicted is not None:
                ax.barh(y - 0.2, r.predicted * scale, height=0.38, color=colours[1],
                        label="lshsim" if not any(x.predicted is not None for x in rows[:i]) else None)
                ax.annotate(f"{100 * r.error:+.0f}%", (r.predicted * scale, y - 0.2), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=8)
            else:
                ax.annotate("not plannable", (0, y - 0.2), xytext=(4, 0), textcoords="offset points", va="center",
                            fontsize=8, color="dimgray")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([r.figure.id for r in reversed(rows)], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        largest = max([r.figure.value for r in rows] + [r.figure.range[1] for r in rows if r.figure.range]
                      + [r.predicted for r in rows if r.predicted is not None])
        ax.set_xlim(0, largest * scale * 1.15)
        if scale == 1.0:
            ax.axvline(1.0, color="gray", linewidth=0.8)
    axes[0, 0].set_title("Published figures (paper) against lshsim's prediction; label: relative error")
    fig.tight_layout()
    _render.save_figure(fig, path, dpi=120)       # written whole (lshsim.io)
    plt.close(fig)
