"""The `lshsim` command: one module per sub-command, listed once in SUBCOMMANDS.

A sub-command is a module of this package with two functions:

    add_parser(subparsers) -> argparse.ArgumentParser
        declares the sub-command and its arguments on the `add_subparsers()` object it receives;
    run(args: argparse.Namespace) -> int
        does the work and returns the exit code. A ValueError it raises ends the command with exit
        code 2 and the message `lshsim NAME: error: MESSAGE`.

A command module parses, calls the library and renders (`lshsim.cli._render`); the models live in
the library. At the module's top it imports only the standard library and the light argument
helpers (`lshsim.checks`, `lshsim.units`): everything heavy (torch, numpy, the simulator, plotting)
is imported inside `run`, so that `lshsim --help` and the closed-form commands start fast. The
executor's commands (`run`, `calibrate`, `check`, `launch`) reuse the argument definitions of
`lshsim.executor.commands`, shared with `python -m lshsim.executor` and torchrun.

Adding a sub-command: write `lshsim/cli/my_command.py` with `add_parser` and `run`, and add
`"my-command": "lshsim.cli.my_command"` to SUBCOMMANDS at the place it should take in `--help`.

Plugins: `lshsim --plugin MODULE COMMAND ...` imports MODULE (a dotted module name on the Python
path, or a .py file) before the command runs and calls its `register()` if it has one
(`load_plugin`); that is how a router, a topology family, a collective, a phase or a calibration
source that a module adds to its registry reaches every sub-command, e.g.
`lshsim --plugin my_sources calibrate --source csv-a2a a2a.csv --world-size 4 --out t.yaml`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from types import ModuleType

from lshsim.checks import OneLineArgumentParser

__all__ = ["main", "build_parser", "load_plugin", "SUBCOMMANDS", "one_line", "OUTPUT_RULE_HELP"]

#: the output rule of every command (lshsim.io), for --help
OUTPUT_RULE_HELP = ("the folder of an output file, or an output folder, is created if missing, and checked "
                    "before any work starts; one that cannot be created or written is refused (exit 2).")


def one_line(error: BaseException) -> str:
    """An error's message on one line (a ValueError's text, or an OSError's with its file name)."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error)
    return " ".join(text.split()) or type(error).__name__

#: sub-command name -> module (with add_parser and run), in the order of `lshsim --help`
SUBCOMMANDS: dict[str, str] = {
    "route": "lshsim.cli.route",
    "capacity": "lshsim.cli.capacity",
    "collision": "lshsim.cli.collision",
    "tokens": "lshsim.cli.tokens",
    "a2a-cost": "lshsim.cli.a2a_cost",
    "breakeven": "lshsim.cli.breakeven",
    "simulate": "lshsim.cli.simulate",
    "catalog": "lshsim.cli.catalog",
    "plan": "lshsim.cli.plan",
    "sweep": "lshsim.cli.sweep",
    "reproduce": "lshsim.cli.reproduce",
    "validate": "lshsim.cli.validate",
    "run": "lshsim.cli.run",
    "calibrate": "lshsim.cli.calibrate",
    "check": "lshsim.cli.check",
    "launch": "lshsim.cli.launch",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(SUBCOMMANDS[name])


def load_plugin(name: str) -> ModuleType:
    """Import a plugin module, a dotted name on the Python path or a path to a .py file, and call its
    `register()` if it has one; returns the module. A module that cannot be found or imported is
    a ValueError naming it (what it raises while importing or registering passes through)."""
    from pathlib import Path

    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"--plugin {name}: {'is a folder, not a .py file' if path.is_dir() else 'no such file'}")
        spec = importlib.util.spec_from_file_location(f"lshsim_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as error:   # not Python source (or not UTF-8): one line, not the compiler's traceback
            sys.modules.pop(spec.name, None)
            where = f"line {error.lineno}: " if error.lineno else ""
            raise ValueError(f"--plugin {name}: not a Python module: {where}{error.msg}") from None
    else:
        if not name or name.startswith(".") or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"--plugin {name!r}: not a module name (a dotted module name on the Python path, "
                             f"e.g. my_package.plugin, or a .py file)")
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is None or not (name == error.name or name.startswith(error.name + ".")):
                raise
            raise ValueError(f"--plugin {name}: no module named {error.name!r} (a dotted module name on the "
                             f"Python path, or a .py file)") from None
    register = getattr(module, "register", None)
    if callable(register):
        register()
    return module


def build_parser() -> argparse.ArgumentParser:
    """The parser of `lshsim` with every registered sub-command."""
    parser = OneLineArgumentParser(prog="lshsim", description="Communication cost of MoE training: "
                                   "analytic models, a simulator and an executor (LSH-MoE, LocMoE). Errors: one "
                                   "line on standard error, exit code 2. Output files (--plot, --trace, --out, "
                                   "...) are written whole (a temporary file renamed into place); " + OUTPUT_RULE_HELP)
    from lshsim import __version__

    parser.add_argument("--version", action="version", version=f"lshsim {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (a dotted name, or a .py file) before the command and call its "
                             "register() if it has one: how a plugin adds routers, topology families, "
                             "collectives, phases or calibration sources (repeatable)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        added = _module(name).add_parser(subparsers)
        if added.prog.split()[-1] != name:
            raise RuntimeError(f"{SUBCOMMANDS[name]}.add_parser added {added.prog!r}, registered as {name!r}")
    return parser


#: what a command may raise for a bad input: one line on standard error, exit code 2
INPUT_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, run, label: str) -> int:
    """Parse `argv`, import the `--plugin` modules, then `run(args)`; a bad input (INPUT_ERRORS)
    ends the process with exit code 2 and one line, `LABEL COMMAND: error: MESSAGE`. Shared by
    `lshsim` and `python -m lshsim.executor`."""
    args = parser.parse_args(argv)
    from lshsim.io import CREATED_FOLDERS, remove_created_empty_folders

    CREATED_FOLDERS.clear()  # only this command's new folders are removed on its refusal
    try:
        for name in args.plugin:
            load_plugin(name)
        return run(args)
    except INPUT_ERRORS as error:
        remove_created_empty_folders()  # an output check's new folder, still empty: not left behind
        parser.exit(2, f"{label} {args.command}: error: {one_line(error)}\n")
    except BrokenPipeError:
        # the reader of standard output went away (`lshsim catalog | head`): stop quietly, as a Unix tool does, with
        # no traceback; standard output goes to /dev/null so that the interpreter's own flush at exit cannot fail
        _silence_stdout()
        return 1
    return 0


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):      # not a real file (a test's stand-in): nothing to redirect
        pass


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments) and run the sub-command; returns its exit code."""
    return run_command(build_parser(), argv, lambda args: _module(args.command).run(args), "lshsim")


if __name__ == "__main__":
    sys.exit(main())
