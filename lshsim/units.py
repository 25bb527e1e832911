"""Byte sizes as people write them: one parser for every command of lshsim and the executor.

Accepted: a plain number of bytes (`65536`, `64e6`, `1.5e9`), or a number with a unit, with or
without a space, in any letter case:

- SI (powers of 1000): `B`, `kB`, `MB`, `GB`, `TB` (so `64MB` = 64,000,000 bytes);
- IEC (powers of 1024): `KiB`, `MiB`, `GiB`, `TiB` (so `64MiB` = 67,108,864 bytes).

A bare `k`, `M` or `G` is refused as ambiguous (it meant 1000 in one tool and 1024 in another).

>>> parse_bytes("64MB"), parse_bytes("64MiB"), parse_bytes("1.5e9"), parse_bytes("4 KiB")
(64000000.0, 67108864.0, 1500000000.0, 4096.0)
>>> parse_bytes("4k")
Traceback (most recent call last):
...
ValueError: '4k' is an ambiguous size: write 4kB (powers of 1000) or 4KiB (powers of 1024)
"""
from __future__ import annotations

import argparse
import math
import re

__all__ = ["parse_bytes", "arg_bytes", "arg_int_bytes", "format_bytes", "BYTE_UNITS", "BYTES_HELP"]

BYTE_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
              "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_AMBIGUOUS = {"k", "m", "g", "t", "ki", "mi", "gi"}
BYTES_HELP = "bytes: a number (65536, 64e6) or with a unit, SI (64MB = 64e6) or IEC (64MiB = 2^26)"
_PATTERN = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+\.)\s*([A-Za-z]*)\s*")


def parse_bytes(text: str | float | int, *, minimum: float = 0.0) -> float:
    """Bytes from `text` (module docstring); a finite number >= `minimum`, else ValueError.

    A number (not a bool) passes through the same range check.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _PATTERN.fullmatch(str(text))
        if not match:
            raise ValueError(f"{text!r} is not a size ({BYTES_HELP})")
        unit = match.group(2).lower()
        if unit in _AMBIGUOUS:
            number = match.group(1)
            si, iec = {"k": ("kB", "KiB"), "m": ("MB", "MiB"), "g": ("GB", "GiB"), "t": ("TB", "TiB")}[unit[0]]
            raise ValueError(f"{text!r} is an ambiguous size: write {number}{si} (powers of 1000) "
                             f"or {number}{iec} (powers of 1024)")
        if unit not in BYTE_UNITS:
            raise ValueError(f"{text!r}: unknown unit {match.group(2)!r} ({BYTES_HELP})")
        value = float(match.group(1)) * BYTE_UNITS[unit]
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{text!r} must be a finite size >= {minimum:g} bytes")
    return value


def _plausible_bytes(text: str, value: float) -> float:
    """`value` within the plausibility limit of a size (`lshsim.bounds`, 2^50 B), else ArgumentTypeError."""
    from lshsim import bounds

    problem = bounds.describe("bytes", value, hint=False)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} ({value:g} B) {problem.split(' ', 1)[1]}")
    return value


def arg_bytes(text: str) -> float:
    """argparse type: bytes as a float (`parse_bytes`), at most 2^50 (`lshsim.bounds`)."""
    try:
        return _plausible_bytes(text, parse_bytes(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def arg_int_bytes(text: str) -> int:
    """argparse type: a whole number of bytes >= 1 (`parse_bytes`, which must give an integer).

    >>> arg_int_bytes("1GiB")
    1073741824
    """
    try:
        value = parse_bytes(text, minimum=1.0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is {value:g} bytes, not a whole number of bytes")
    return int(_plausible_bytes(text, value))


def format_bytes(value: float) -> str:
    """Short IEC form for tables.

    >>> format_bytes(64 * 2 ** 20), format_bytes(1500)
    ('64.0 MiB', '1.5 KiB')
    """
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"
