"""lshsim.checks at its boundaries: every bound is probed at the bound and one float (or one integer) past
it, against the rule its docstring states; the messages name the argument and the value."""
from __future__ import annotations

import argparse
import math
import re

import pytest

from lshsim.checks import (arg_finite_number, arg_int, arg_non_negative_int, arg_positive_int, bounded_int,
                           env_int, file_name, finite_number, non_negative_int, positive_int)

UP, DOWN = math.inf, -math.inf


@pytest.mark.parametrize("minimum, exclusive, maximum", [(0.0, False, None), (0.0, True, None), (1.0, False, 1e6),
                                                          (-2.5, True, 3.0), (None, False, 1e-9)])
def test_finite_number_bounds_to_the_last_float(minimum, exclusive, maximum):
    if minimum is not None:
        below = math.nextafter(minimum, DOWN)
        with pytest.raises(ValueError, match=re.escape(f"x={below!r} must be {'>' if exclusive else '>='}")):
            finite_number("x", below, minimum=minimum, exclusive=exclusive, maximum=maximum)
        if exclusive:
            with pytest.raises(ValueError, match="must be >"):
                finite_number("x", minimum, minimum=minimum, exclusive=True, maximum=maximum)
            assert finite_number("x", math.nextafter(minimum, UP), minimum=minimum, exclusive=True,
                                 maximum=maximum) == math.nextafter(minimum, UP)
        else:
            assert finite_number("x", minimum, minimum=minimum, maximum=maximum) == minimum
    if maximum is not None:
        assert finite_number("x", maximum, minimum=minimum, exclusive=exclusive, maximum=maximum) == maximum
        above = math.nextafter(maximum, UP)
        with pytest.raises(ValueError, match=re.escape(f"x={above!r} must be <= {maximum:g}")):
            finite_number("x", above, minimum=minimum, exclusive=exclusive, maximum=maximum)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, False, "1", None, [1.0]])
def test_finite_number_refuses_what_is_not_a_finite_real(value):
    with pytest.raises(ValueError, match=r"^rate=.* must be a finite number$"):
        finite_number("rate", value)


def test_integer_checks_at_their_bounds():
    assert positive_int("k", 1) == 1 and non_negative_int("k", 0) == 0
    for check, bad in ((positive_int, 0), (non_negative_int, -1)):
        with pytest.raises(ValueError, match=f"k={bad} must be a"):
            check("k", bad)
    for bad in (1.0, True, "2", None):
        with pytest.raises(ValueError, match="k="):
            positive_int("k", bad)
    assert bounded_int("s", 5, minimum=5, maximum=9) == 5 and bounded_int("s", 9, minimum=5, maximum=9) == 9
    with pytest.raises(ValueError, match="s=4 must be an integer >= 5"):
        bounded_int("s", 4, minimum=5, maximum=9)
    with pytest.raises(ValueError, match="s=10 must be an integer <= 9"):
        bounded_int("s", 10, minimum=5, maximum=9)
    with pytest.raises(ValueError, match="s=5.0 must be an integer"):
        bounded_int("s", 5.0, minimum=5)


def test_argparse_types_parse_and_refuse_with_the_text_as_given():
    assert arg_positive_int("2e9") == 2_000_000_000 and arg_non_negative_int(" 0 ") == 0
    assert arg_int(0, 2 ** 32 - 1)(str(2 ** 32 - 1)) == 2 ** 32 - 1
    for text, message in (("1.5", "'1.5' is not a whole number"), ("nan", "'nan' is not a whole number"),
                          ("1e19", "'1e19' is not a whole number"), ("0", "'0' must be a positive integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{message}$"):
            arg_positive_int(text)
    with pytest.raises(argparse.ArgumentTypeError, match="^'4294967296' must be an integer <= 4294967295$"):
        arg_int(0, 2 ** 32 - 1)(str(2 ** 32))
    unit = arg_finite_number(minimum=0.0, exclusive=True, maximum=1.0)
    assert unit("1") == 1.0 and unit("5e-324") == 5e-324
    for text, message in (("0", "'0' must be > 0"), ("1.0000000000000002", "'1.0000000000000002' must be <= 1"),
                          ("inf", "'inf' must be a finite number"), ("x", "'x' is not a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{message}$"):
            unit(text)


def test_env_int_and_file_name(monkeypatch):
    monkeypatch.delenv("LSHSIM_TEST_RANK", raising=False)
    assert env_int("LSHSIM_TEST_RANK", 7) == 7
    monkeypatch.setenv("LSHSIM_TEST_RANK", "3")
    assert env_int("LSHSIM_TEST_RANK", 7) == 3
    monkeypatch.setenv("LSHSIM_TEST_RANK", "three")
    with pytest.raises(ValueError, match="LSHSIM_TEST_RANK='three' must be an integer"):
        env_int("LSHSIM_TEST_RANK", 7)
    assert file_name("name", "a" * 128) == "a" * 128 and file_name("name", "h200-x4.v2+fp8_b") == "h200-x4.v2+fp8_b"
    for bad in ("a" * 129, "-x", ".x", "a/b", "a..b", "", "a b", 3):
        with pytest.raises(ValueError, match="must be a file name"):
            file_name("name", bad)
