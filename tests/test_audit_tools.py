"""benchmarks/audit_tests.py and benchmarks/mutate_tests.py on small made-up test folders: each kind the scan
names is flagged where it is and nowhere else; a mutation is "caught" exactly when the test fails, and the
mutated file is restored either way."""
from __future__ import annotations

import textwrap

import pytest

from benchmarks import audit_tests, mutate_tests

MADE_UP = '''
import numpy as np
import pytest


def _check(x):
    assert x == 3


def test_good():
    assert np.sqrt(9.0) == pytest.approx(3.0, rel=1e-12)


def test_through_a_helper():
    _check(3)


def test_raises_only():
    with pytest.raises(ValueError):
        int("x")


def test_nothing():
    np.sqrt(9.0)


def test_self():
    x = np.sqrt(9.0)
    assert x == x


def test_exists():
    x = np.sqrt(9.0)
    assert x is not None


def test_sign():
    assert np.sqrt(9.0) > 0


def test_loose():
    assert np.sqrt(9.0) == pytest.approx(2.0, rel=1.0)


def test_swallow():
    try:
        assert np.sqrt(9.0) == 4
    except Exception:
        pass


def test_unseeded():
    assert np.random.rand() < 2


@pytest.mark.parametrize("x", [])
def test_empty(x):
    assert x == 1


def test_redundant():
    z = 1
    assert z == 1
    assert z == 1 or z == 2
'''


def test_the_scan_flags_each_kind_where_it_is(tmp_path):
    (tmp_path / "test_made_up.py").write_text(MADE_UP)
    rows = {row["test"]: row["kinds"] for row in audit_tests.Scan(tmp_path).run()}
    assert rows == {"test_good": [], "test_through_a_helper": [], "test_raises_only": [],
                    "test_nothing": ["no_check"], "test_self": ["tautology"], "test_exists": ["weak_only"],
                    "test_sign": ["sign_only"], "test_loose": ["loose_tolerance"],
                    "test_swallow": ["swallow"], "test_unseeded": ["unseeded"], "test_empty": ["empty_param"],
                    "test_redundant": ["redundant_or"]}
    assert audit_tests.main([str(tmp_path / "missing")]) == 2


def test_a_mutation_is_caught_only_when_a_test_fails_and_the_file_comes_back(tmp_path, monkeypatch):
    (tmp_path / "lib.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "test_lib.py").write_text(textwrap.dedent("""
        from lib import double


        def test_double():
            assert double(3) == 6
    """))
    monkeypatch.setattr(mutate_tests, "ROOT", tmp_path)
    caught = mutate_tests.run_one("m1", "lib.py", "return 2 * x", "return x + x + 1", ["test_lib.py"], None)
    survived = mutate_tests.run_one("m2", "lib.py", "return 2 * x", "return x + x", ["test_lib.py"], None)
    assert caught["caught"] and caught["first_failure"] == "test_lib.py::test_double"
    assert not survived["caught"] and survived["first_failure"] is None
    assert (tmp_path / "lib.py").read_text() == "def double(x):\n    return 2 * x\n"
    with pytest.raises(SystemExit, match="holds the snippet 0 times"):
        mutate_tests.run_one("m3", "lib.py", "return 3 * x", "return x", ["test_lib.py"], None)
    with pytest.raises(SystemExit, match="pytest exited 4"):          # a missing test file is no catch
        mutate_tests.run_one("m4", "lib.py", "return 2 * x", "return x", ["test_missing.py"], None)
    assert (tmp_path / "lib.py").read_text() == "def double(x):\n    return 2 * x\n"


def test_every_listed_mutation_still_applies():
    """Each mutation of benchmarks/mutate_tests.py (MUTATIONS and HELD_OUT) names a snippet that occurs exactly once
    in its file and differs from its replacement, test files that exist, and a unique id: a library edit that moves a
    snippet makes the audit stop at that mutation, found here instead."""
    ids = [m[0] for m in mutate_tests.MUTATIONS + mutate_tests.HELD_OUT]
    assert len(ids) == len(set(ids))
    for mid, rel, old, new, tests, _ in mutate_tests.MUTATIONS + mutate_tests.HELD_OUT:
        assert (mutate_tests.ROOT / rel).read_text().count(old) == 1 and old != new, mid
        assert tests and all((mutate_tests.ROOT / t).is_file() for t in tests), mid
