"""`lshsim launch`: the executor's `launch`: start N local ranks of `python -m lshsim.executor`
and watch them.

The arguments and the work are those of `lshsim.executor.commands` (`add_launch`, `cmd_launch`), shared
with `python -m lshsim.executor launch`; torch is imported when the command runs, not when the parser
is built.
"""
from __future__ import annotations


def add_parser(subparsers):
    from lshsim.executor.commands import add_launch

    return add_launch(subparsers)


def run(args) -> int:
    from lshsim.executor.commands import execute

    return execute(args)
