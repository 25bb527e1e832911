"""Argument checks shared by the library, the executor and the command line.

Each check returns the value it accepted and raises `ValueError` naming the argument and the
value it refused, so that a caller can write `k = positive_int("k", k)`. The `arg_*` variants are
argparse `type=` functions: they parse the command-line text and raise
`argparse.ArgumentTypeError` with the same message.

>>> positive_int("k", 2)
2
>>> positive_int("k", 0)
Traceback (most recent call last):
...
ValueError: k=0 must be a positive integer
>>> finite_number("alpha_s", 1e-6, minimum=0.0)
1e-06
"""
from __future__ import annotations

import argparse
import functools
import math
import re

from lshsim import bounds as _bounds

__all__ = ["positive_int", "non_negative_int", "finite_number", "arg_positive_int", "arg_non_negative_int",
           "arg_finite_number", "bounded_int", "arg_int", "arg_int_within", "arg_within", "CAPACITY_FACTOR_MAX", "SEED_MAX", "arg_name", "OneLineArgumentParser", "env_int", "file_name", "FILE_NAME_RULE"]


#: the largest capacity factor the command line takes: a factor above E / k already drops nothing, and
#: C = ceil(factor * T * k / E) must stay a 64-bit integer (1e30 overflowed the routers' int64 slots)
CAPACITY_FACTOR_MAX = _bounds.maximum("capacity_factor")    # 1e6, lshsim.bounds


#: the largest seed of every --seed and StepConfig.seed: numpy's and torch's seeds alike take [0, 2^32 - 1]
SEED_MAX = 2 ** 32 - 1


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int)


def positive_int(name: str, value: object) -> int:
    """`value` if it is an int >= 1 (not a bool, not a float), else ValueError."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def non_negative_int(name: str, value: object) -> int:
    """`value` if it is an int >= 0 (not a bool, not a float), else ValueError."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative integer")
    return value


def finite_number(name: str, value: object, *, minimum: float | None = None, exclusive: bool = False,
                  maximum: float | None = None) -> float:
    """`value` as a float if it is a finite real number (not a bool) within the bounds, else ValueError.

    minimum: lower bound (inclusive unless `exclusive`); maximum: inclusive upper bound.

    >>> finite_number("h", 1.2, minimum=1.0)
    1.2
    >>> finite_number("rate", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: rate=nan must be a finite number
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ValueError(f"{name}={value!r} must be {'>' if exclusive else '>='} {minimum:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value!r} must be <= {maximum:g}")
    return float(value)


def _parse_int(text: str) -> int:
    """A whole number as people write it: `4096`, or in scientific notation with an integral value
    (`2e9`); `1.5`, `nan`, `inf` and `true` are refused (ValueError).

    >>> _parse_int("2e9"), _parse_int(" 16 ")
    (2000000000, 16)
    """
    try:
        return int(text)
    except ValueError:
        value = float(text)            # ValueError for text that is no number
        if not math.isfinite(value) or not value.is_integer() or abs(value) >= 2 ** 63:
            raise ValueError(text) from None
        return int(value)


def _argparse(check, name: str, parse, text: str):
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {name}") from None
    try:
        return check(value)
    except ValueError as err:  # "value=1.5 must be <= 1" -> "'1.5' must be <= 1": the text as given
        message = str(err)
        prefix = f"value={value!r} "
        detail = message[len(prefix):] if message.startswith(prefix) else message.split("=", 1)[-1]
        raise argparse.ArgumentTypeError(f"{text!r} {detail}") from None


def arg_positive_int(text: str) -> int:
    """argparse type: a positive integer.

    >>> arg_positive_int("8")
    8
    """
    return _argparse(lambda v: positive_int("value", v), "whole number", _parse_int, text)


def arg_non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _argparse(lambda v: non_negative_int("value", v), "whole number", _parse_int, text)


@functools.lru_cache(maxsize=None)   # one function per set of bounds: parsers built twice compare equal
def arg_finite_number(minimum: float | None = None, exclusive: bool = False, maximum: float | None = None):
    """argparse type factory: a finite number, optionally bounded below and above (NaN and inf refused).

    >>> arg_finite_number(minimum=0.0, exclusive=True)("0.5")
    0.5
    >>> arg_finite_number(minimum=0.0, maximum=1.0)("2")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '2' must be <= 1
    """
    def parse(text: str) -> float:
        return _argparse(lambda v: finite_number("value", v, minimum=minimum, exclusive=exclusive,
                                                 maximum=maximum), "number", float, text)
    return parse


def arg_within(kind: str, minimum: float = 0.0, exclusive: bool = False, scale: float = 1.0):
    """argparse type factory: a finite number >= minimum (> with `exclusive`) that, times `scale` (the option's
    unit in the kind's: 1e-6 for microseconds, 1e9 for GB/s), is within the plausibility limits of
    `lshsim.bounds` for `kind`, as the same value in an input file would be.

    >>> arg_within("latency_s", scale=1e-6)("10")
    10.0
    >>> arg_within("latency_s")("5e6")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '5e6' is above 1 s, the limit for a per-message or per-hop latency (links, switches and collectives start in microseconds; a round trip around the earth takes 0.2 s); did you mean 5e-06?
    """
    number = arg_finite_number(minimum, exclusive=exclusive)

    def parse(text: str) -> float:
        value = number(text)
        problem = _bounds.describe(kind, value * scale, hint=scale == 1.0)   # a hint would be in the kind's unit
        if problem is None:
            return value
        detail = problem.split(" ", 1)[1]          # "5e+06 is above ..." -> "is above ..."
        shown = f"{text!r}" if scale == 1.0 else f"{text!r} ({value * scale:g} {_bounds.LIMITS[kind].unit})"
        raise argparse.ArgumentTypeError(f"{shown} {detail}")
    return parse


@functools.lru_cache(maxsize=None)
def arg_int_within(kind: str, minimum: int = 1):
    """argparse type factory: a whole number >= minimum within the plausibility limit of `lshsim.bounds` for
    `kind`, as the same value in an input file would be (refused while the options are read, naming the
    option, not later by the reader with the file's field name).

    >>> arg_int_within("tokens")("4096")
    4096
    >>> arg_int_within("chunks")("1e12")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '1e12' is above 1024, the limit for pipeline chunks of one all-to-all (Tutel's adaptive pipelining tries 1-8; each chunk is a simulated phase and a kernel launch)
    """
    number = arg_positive_int if minimum == 1 else arg_int(minimum, None)

    def parse(text: str) -> int:
        value = number(text)
        problem = _bounds.describe(kind, value, hint=False)
        if problem is None:
            return value
        raise argparse.ArgumentTypeError(f"{text!r} {problem.split(' ', 1)[1]}")
    return parse


def bounded_int(name: str, value: object, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` if it is an int (not a bool, not a float) within [minimum, maximum], else ValueError.

    >>> bounded_int("seed", 3, minimum=0)
    3
    >>> bounded_int("seed", -1, minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: seed=-1 must be an integer >= 0
    """
    if not _is_int(value):
        raise ValueError(f"{name}={value!r} must be an integer")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value!r} must be an integer <= {maximum}")
    return value


@functools.lru_cache(maxsize=None)
def arg_int(minimum: int | None = None, maximum: int | None = None):
    """argparse type factory: a whole number within [minimum, maximum] (either bound optional).

    >>> arg_int(0, 2 ** 32 - 1)("42")
    42
    """
    def parse(text: str) -> int:
        return _argparse(lambda v: bounded_int("value", v, minimum=minimum, maximum=maximum),
                         "whole number", _parse_int, text)
    return parse


def arg_name(text: str) -> str:
    """argparse type: a registry name or a file path, any text but an empty or blank one (an empty path
    reads as the current folder, '.', and the error named neither the option nor the value).

    >>> arg_name("h100-nvswitch")
    'h100-nvswitch'
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: an empty name (a shipped name or a file)")
    return text


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ONE line on standard error, `PROG: error: MESSAGE (see
    PROG --help)`, exit code 2, without the usage block (sub-parsers inherit the class)."""

    def _get_values(self, action, arg_strings):
        # `--opt=--`: argparse (3.11) drops the '--' and hands the option an empty list, its type never called
        if action.option_strings and action.nargs is None and list(arg_strings) == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: '--' is not a value")
        return super()._get_values(action, arg_strings)

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        # argparse hands a sub-command's unknown options up to the top parser, whose message names
        # `lshsim`, not the sub-command: refuse them in the sub-command's name, with the nearest option
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen_subparser(parsed)
            parser.error(f"unrecognized arguments: {' '.join(extras)}{parser._nearest_options(extras)}")
        return parsed

    def _chosen_subparser(self, parsed) -> "argparse.ArgumentParser":
        """The innermost sub-command parser that `parsed` went through (self when there is none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
                if chosen is not None:
                    return chosen._chosen_subparser(parsed) if isinstance(chosen, OneLineArgumentParser) else chosen
        return self

    def _nearest_options(self, extras: list[str]) -> str:
        """' (did you mean --x?)' for the unknown options that are close to a known one, else ''."""
        import difflib

        known = [option for action in self._actions for option in action.option_strings if option.startswith("--")]
        guesses = []
        for extra in extras:
            if extra.startswith("--"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], known, n=1, cutoff=0.75)
                guesses += close
        return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def env_int(name: str, default: int) -> int:
    """The integer in environment variable `name` (`default` when unset); ValueError naming the
    variable and its text otherwise (e.g. RANK, WORLD_SIZE set by torchrun or the launcher)."""
    import os

    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} must be an integer") from None


#: a name that becomes a file name (a workload's trace, a calibrated topology): no separators
FILE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
FILE_NAME_RULE = ("a file name: letters, digits, '.', '_', '+', '-', starting with a letter or a digit, "
                  "at most 128 characters, no '..'")


def file_name(name: str, value: object) -> str:
    """`value` if it is safe as a file name inside an output folder (FILE_NAME_RULE), else ValueError.

    >>> file_name("name", "h100-x8-calibrated")
    'h100-x8-calibrated'
    >>> file_name("name", "../x")
    Traceback (most recent call last):
    ...
    ValueError: name='../x' must be a file name: letters, digits, '.', '_', '+', '-', starting with a letter or a digit, at most 128 characters, no '..'
    """
    if not isinstance(value, str) or not FILE_NAME_PATTERN.match(value) or ".." in value:
        raise ValueError(f"{name}={value!r} must be {FILE_NAME_RULE}")
    return value
