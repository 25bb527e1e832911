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
"""
from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

#: sub-command name -> module (with add_parser and run), in the order of `lshsim --help`
SUBCOMMANDS: dict[str, str] = {
    "route": "lshsim.cli.route",
    "capacity": "lshsim.cli.capacity",
    "collision": "lshsim.cli.collision",
    "a2a-cost": "lshsim.cli.a2a_cost",
    "breakeven": "lshsim.cli.breakeven",
    "simulate": "lshsim.cli.simulate",
    "plan": "lshsim.cli.plan",
    "validate": "lshsim.cli.validate",
    "run": "lshsim.cli.run",
    "calibrate": "lshsim.cli.calibrate",
    "check": "lshsim.cli.check",
    "launch": "lshsim.cli.launch",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(SUBCOMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    """The parser of `lshsim` with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="lshsim", description="Communication cost of MoE training: "
                                     "analytic models, a simulator and an executor (LSH-MoE, LocMoE).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        added = _module(name).add_parser(subparsers)
        if added.prog.split()[-1] != name:
            raise RuntimeError(f"{SUBCOMMANDS[name]}.add_parser added {added.prog!r}, registered as {name!r}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments) and run the sub-command; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _module(args.command).run(args)
    except ValueError as error:
        parser.exit(2, f"lshsim {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
