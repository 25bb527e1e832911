"""`lshsim calibrate`: the executor's `calibrate`: measure the microbenchmarks that parameterise a
topology (or read measured files through a calibration source: `--source NAME FILE...`, a
plugin's source registered with `lshsim --plugin MODULE`), fit and write it.

The arguments and the work are those of `lshsim.executor.commands` (`add_calibrate`, `cmd_calibrate`), shared
with `python -m lshsim.executor calibrate`; torch is imported when the command runs, not when the parser
is built.
"""
from __future__ import annotations


def add_parser(subparsers):
    from lshsim.executor.commands import add_calibrate

    return add_calibrate(subparsers)


def run(args) -> int:
    from lshsim.executor.commands import execute

    return execute(args)
