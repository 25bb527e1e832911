"""Output helpers shared by the sub-commands: JSON, rich tables and consoles, seaborn line plots.

Every import of rich, matplotlib or seaborn happens inside a function, so that importing a
command module (to build the parser) stays cheap.
"""
from __future__ import annotations

import json
import sys

__all__ = ["console", "wide_console", "print_json", "table", "line_plot", "g", "arg_seed", "SEED_HELP",
           "arg_element_size", "save_figure"]

from lshsim.checks import SEED_MAX  # noqa: E402  (one rule: lshsim.checks)
SEED_HELP = f"a whole number in [0, {SEED_MAX}]"


ELEMENT_SIZES = (1, 2, 4, 8)


def arg_element_size(text: str) -> int:
    """argparse type of --bytes-per-element: 1, 2, 4 or 8.

    >>> arg_element_size("2")
    2
    """
    import argparse

    if text.strip() not in {str(size) for size in ELEMENT_SIZES}:
        raise argparse.ArgumentTypeError(f"{text!r} must be one of {', '.join(map(str, ELEMENT_SIZES))}")
    return int(text)


def arg_seed(text: str) -> int:
    """argparse type of every --seed: a whole number in [0, 2^32 - 1] (numpy's and torch's seeds alike).

    >>> arg_seed("7")
    7
    """
    from lshsim.checks import arg_int

    return arg_int(0, SEED_MAX)(text)


def console():
    """A rich Console on standard output."""
    from rich.console import Console

    return Console()


def wide_console():
    """A console for wide tables: the terminal's width, or 140 columns when writing to a file or pipe
    (rich's default of 80 there would squeeze the tables)."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=140)


def emit(args, result: dict, render, plot=None) -> int:
    """The common end of a command: with `--plot`, draw it (`plot()`) and add its path to the
    result; then print the result as JSON (`--json`) or `render(result)` as tables, and say where
    the plot went. Returns the exit code 0."""
    path = getattr(args, "plot", None)
    if path and plot is not None:
        plot()
        result["plot"] = path
    if getattr(args, "json", False):
        print_json(result)
        return 0
    render(result)
    if path:
        console().print(f"wrote {path}", soft_wrap=True, markup=False)   # one line, whatever its length
    return 0


def print_json(payload: object) -> None:
    """`payload` as indented JSON on standard output."""
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print a table: the first column left-aligned, the others right-aligned."""
    from rich.table import Table

    out = Table(title=title)
    for i, column in enumerate(columns):
        out.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*row)
    console().print(out)


def g(value: float, digits: int = 4) -> str:
    """`value` with `digits` significant digits (format 'g').

    >>> g(3.14159265), g(2.5e-7, 2)
    ('3.142', '2.5e-07')
    """
    return f"{value:.{digits}g}"


def line_plot(path: str, data: dict, x: str, y: str, hue: str | None, title: str, xlabel: str, ylabel: str,
              logx: bool = False, logy: bool = False, marker: tuple[float, str] | None = None,
              points: bool = False) -> None:
    """Write a seaborn line plot of `data` (dict of equal-length lists) to `path` (PNG, Agg backend).

    hue: the column that splits the lines (None: one line); marker: (x, label) of a dashed
    vertical line, e.g. the value the command was run at; points: a marker of its own per hue value
    at every point (lines that lie on each other stay apart to the eye).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (NullFormatter below)
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if points and hue is not None:
        sns.lineplot(data=data, x=x, y=y, hue=hue, style=hue, markers=True, dashes=False, ax=ax, linewidth=1.5,
                     markersize=7)
    else:
        sns.lineplot(data=data, x=x, y=y, hue=hue, ax=ax, linewidth=2)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on short decades
    if logy:
        ax.set_yscale("log")
    if marker is not None:
        ax.axvline(marker[0], color="grey", linestyle="--", linewidth=1)
        ax.text(marker[0], ax.get_ylim()[1], f" {marker[1]}", va="top", ha="left", fontsize=9, color="dimgrey")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if hue is not None:
        ax.legend(title=None, frameon=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def save_figure(fig, path, **options) -> None:
    """`fig.savefig` to `path` written whole (`lshsim.io.atomic_output`); the format follows the
    file's suffix (png if it has none that matplotlib knows)."""
    from pathlib import Path

    from lshsim.io import atomic_output

    suffix = Path(path).suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format=suffix if suffix in supported else "png", **options)
