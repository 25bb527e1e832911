"""`lshsim run`: the executor's `run`: time workloads on the ranks of this process group
and write one measured Trace JSON per workload.

The arguments and the work are those of `lshsim.executor.commands` (`add_run`, `cmd_run`), shared
with `python -m lshsim.executor run`; torch is imported when the command runs, not when the parser
is built.
"""
from __future__ import annotations


def add_parser(subparsers):
    from lshsim.executor.commands import add_run

    return add_run(subparsers)


def run(args) -> int:
    from lshsim.executor.commands import execute

    return execute(args)
