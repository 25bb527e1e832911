"""`python -m lshsim.executor {run, calibrate, check, launch}` (also under `torchrun -m lshsim.executor`).

The commands and their arguments are defined once in `lshsim.executor.commands`; `lshsim run |
calibrate | check | launch` reads the same ones. `--plugin MODULE` (before the command) imports a
plugin module first, as `lshsim --plugin` does (`lshsim.cli.load_plugin`).
"""
from __future__ import annotations

import argparse
import sys

from lshsim.checks import OneLineArgumentParser
from lshsim.cli import OUTPUT_RULE_HELP, run_command
from lshsim.executor.commands import add_subcommands, execute


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m lshsim.executor`."""
    parser = OneLineArgumentParser(prog="python -m lshsim.executor", description="Run lshsim.dispatch on real "
                                   "devices under torch.distributed (torchrun, or `launch`). Errors: one line on "
                                   "standard error, exit code 2. Output files are written whole (a temporary file "
                                   "renamed into place); " + OUTPUT_RULE_HELP)
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (a dotted name, or a .py file) before the command and call its "
                             "register() if it has one (lshsim.cli.load_plugin; repeatable)")
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the command; a bad input ends it with exit code 2 and one line."""
    return run_command(build_parser(), argv, execute, "executor")


if __name__ == "__main__":
    sys.exit(main())
