"""`lshsim check`: the executor's `check`: compare the distributed MoE layer with the dense
single-process reference.

The arguments and the work are those of `lshsim.executor.commands` (`add_check`, `cmd_check`), shared
with `python -m lshsim.executor check`; torch is imported when the command runs, not when the parser
is built.
"""
from __future__ import annotations


def add_parser(subparsers):
    from lshsim.executor.commands import add_check

    return add_check(subparsers)


def run(args) -> int:
    from lshsim.executor.commands import execute

    return execute(args)
