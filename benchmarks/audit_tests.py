"""Scan tests/ for test functions that cannot fail or check nothing real (a static, AST-based audit).

Each test function (a `test_*` function or method in tests/test_*.py) is flagged by kind:

- ``no_check``: no assert statement, no pytest.raises / warns, no assert_* / approx call, and no call of a
  helper of the same file (or of tests/conftest.py) that itself checks something (followed transitively).
- ``tautology``: an assert comparing an expression with itself (``a == a``, ``np.allclose(x, x)``).
- ``weak_only``: every assert is only an existence check (``is not None``, ``len(y) > 0``, ``isinstance``,
  a bare name or attribute) and nothing else checks a value.
- ``loose_tolerance``: an rtol / atol / rel / abs / tol keyword with a constant >= 0.5 (a bound written as
  ``abs(a - b) <= k * b`` is not parsed; those were read by hand).
- ``swallow``: a try/except in the test whose handler is bare, or catches Exception / BaseException, and does
  not re-raise or assert (a failure inside would pass silently).
- ``unseeded``: np.random.* / random.* / torch.rand* calls or default_rng() / Generator() without a seed, in a
  test that does not seed (np.random.seed / torch.manual_seed / random.seed / a seeded default_rng).
- ``empty_param``: a parametrize whose values are an empty literal list or tuple.
- ``sign_only`` (a looser net than weak_only, for reading): every assert only checks existence, type,
  membership or a comparison with the constants 0 or 1 (``x > 0``, ``0 <= p <= 1``), and no other check
  (approx, assert_*, raises, a checking helper) is called.
- ``redundant_or``: ``assert A or B`` where A or B was already asserted alone earlier in the test (the
  assert cannot fail once the earlier one passed).

The scan is a candidate list: every flag was then read by hand (benchmarks/HISTORY.md, "The test suite
audited"). Usage: python benchmarks/audit_tests.py [tests_dir] [--json]
"""
from __future__ import annotations

import ast
import json
import sys
from collections import Counter
from pathlib import Path

CHECK_CALLS = {"raises", "warns", "approx", "deprecated_call", "fail", "assert_close", "assert_allclose",
               "assert_array_equal", "assert_equal", "assert_almost_equal", "assert_array_almost_equal",
               "assert_array_less", "assert_frame_equal", "assert_series_equal"}
TOL_KEYWORDS = {"rtol", "atol", "rel", "abs", "tol", "rel_tol", "abs_tol"}
RNG_FUNCS = {"rand", "randn", "randint", "random", "choice", "normal", "uniform", "shuffle", "permutation",
             "randperm", "multinomial", "exponential", "poisson", "zipf", "gauss", "sample"}
SEED_CALLS = {"seed", "manual_seed", "set_seed"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return _dotted(node.value) + "." + node.attr
    if isinstance(node, ast.Call):
        return _dotted(node.func) + "()"
    return "?"


def _is_check_call(call: ast.Call) -> bool:
    name = _name(call.func)
    return name in CHECK_CALLS or name.startswith("assert") or name.startswith("_assert")


def _is_weak_assert(test: ast.AST) -> bool:
    """An assert that only says that something exists."""
    if isinstance(test, (ast.Name, ast.Attribute)):
        return True
    if isinstance(test, ast.Call) and _name(test.func) in {"isinstance", "hasattr", "callable", "len", "bool"}:
        return True
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        op, right = test.ops[0], test.comparators[0]
        if isinstance(op, ast.IsNot) and isinstance(right, ast.Constant) and right.value is None:
            return True
        if (isinstance(test.left, ast.Call) and _name(test.left.func) == "len" and isinstance(right, ast.Constant)
                and ((isinstance(op, ast.Gt) and right.value == 0) or (isinstance(op, ast.GtE) and right.value == 1)
                     or (isinstance(op, ast.NotEq) and right.value == 0))):
            return True
    return False


def _sign_only(test: ast.AST) -> bool:
    """Existence, type, membership or a comparison with 0 / 1 only (chains and and/or of those too)."""
    if isinstance(test, ast.BoolOp):
        return all(_sign_only(v) for v in test.values)
    if isinstance(test, ast.UnaryOp):
        return _sign_only(test.operand)
    if isinstance(test, (ast.Name, ast.Attribute)):
        return True
    if isinstance(test, ast.Call):
        if _name(test.func) in {"all", "any"} and test.args:     # what is checked for all / any elements
            arg = test.args[0]
            return _sign_only(arg.elt if isinstance(arg, (ast.GeneratorExp, ast.ListComp)) else arg)
        return _name(test.func) in {"isinstance", "hasattr", "callable", "isfinite", "exists",
                                    "is_file", "is_dir", "bool"}
    if isinstance(test, ast.Compare):
        for op, right in zip(test.ops, test.comparators):
            if isinstance(op, (ast.Is, ast.IsNot, ast.In, ast.NotIn)):
                continue
            sides = [test.left, right]
            if isinstance(op, (ast.Gt, ast.GtE, ast.Lt, ast.LtE)) and any(
                    isinstance(x, ast.Constant) and x.value in (0, 1) for x in sides):
                continue
            return False
        return True
    return False


def _tautology(test: ast.AST) -> bool:
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and not isinstance(test.ops[0], (ast.In, ast.NotIn)):
        return ast.dump(test.left) == ast.dump(test.comparators[0])
    if isinstance(test, ast.Call) and len(test.args) >= 2:
        if _name(test.func) in {"allclose", "array_equal", "isclose", "equal"}:
            return ast.dump(test.args[0]) == ast.dump(test.args[1])
    return False


def _const_value(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _const_value(node.operand)
        return None if v is None else -v
    return None


class Scan:
    def __init__(self, tests_dir: Path):
        self.tests_dir = tests_dir
        self.helpers_checking: dict[str, bool] = {}

    def _helper_table(self, trees: list[ast.Module]) -> dict[str, ast.AST]:
        table = {}
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("test"):
                    table.setdefault(node.name, node)
        return table

    def _checks(self, fn: ast.AST, table: dict[str, ast.AST], seen: set[str]) -> bool:
        for node in ast.walk(fn):
            if isinstance(node, ast.Assert):
                return True
            if isinstance(node, ast.Raise) and fn is not None:
                # a test (or helper) that raises AssertionError / pytest.fail by hand
                if isinstance(node.exc, ast.Call) and _name(node.exc.func) == "AssertionError":
                    return True
            if isinstance(node, ast.Call):
                if _is_check_call(node):
                    return True
                name = _name(node.func)
                if name in table and name not in seen:
                    seen.add(name)
                    if self._checks(table[name], table, seen):
                        return True
        return False

    def scan_function(self, fn: ast.FunctionDef, table: dict[str, ast.AST]) -> list[str]:
        kinds = []
        if not self._checks(fn, table, set()):
            kinds.append("no_check")
        asserts = [n for n in ast.walk(fn) if isinstance(n, ast.Assert)]
        other_checks = any(isinstance(n, ast.Call) and (_is_check_call(n) or (_name(n.func) in table
                                                                               and self._checks(table[_name(n.func)], table, set())))
                           for n in ast.walk(fn))
        if any(_tautology(a.test) for a in asserts):
            kinds.append("tautology")
        if asserts and all(_is_weak_assert(a.test) for a in asserts) and not other_checks:
            kinds.append("weak_only")
        elif asserts and all(_sign_only(a.test) for a in asserts) and not other_checks:
            kinds.append("sign_only")
        seen_alone = set()
        for a in sorted(asserts, key=lambda n: (n.lineno, n.col_offset)):
            if isinstance(a.test, ast.BoolOp) and isinstance(a.test.op, ast.Or) and \
                    any(ast.dump(v) in seen_alone for v in a.test.values):
                kinds.append("redundant_or")
                break
            seen_alone.add(ast.dump(a.test))
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg in TOL_KEYWORDS:
                        v = _const_value(kw.value)
                        if v is not None and v >= 0.5:
                            kinds.append("loose_tolerance")
                            break
        for node in ast.walk(fn):
            if isinstance(node, ast.ExceptHandler):
                broad = node.type is None or _name(node.type) in {"Exception", "BaseException"}
                reraises = any(isinstance(n, (ast.Raise, ast.Assert)) or (isinstance(n, ast.Call) and _is_check_call(n))
                               for b in node.body for n in ast.walk(b))
                if broad and not reraises:
                    kinds.append("swallow")
                    break
        seeded = False
        unseeded = False
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                name, dotted = _name(node.func), _dotted(node.func)
                if name in SEED_CALLS:
                    seeded = True
                if name in {"default_rng", "Generator", "RandomState", "Random"}:
                    if node.args or node.keywords:
                        seeded = True
                    else:
                        unseeded = True
                if name in RNG_FUNCS and (dotted.startswith("np.random.") or dotted.startswith("numpy.random.")
                                          or dotted.startswith("random.") or dotted.startswith("torch.")):
                    if "generator" not in {k.arg for k in node.keywords}:
                        unseeded = True
        if unseeded and not seeded:
            kinds.append("unseeded")
        for dec in fn.decorator_list:
            if isinstance(dec, ast.Call) and _name(dec.func) == "parametrize" and len(dec.args) >= 2:
                vals = dec.args[1]
                if isinstance(vals, (ast.List, ast.Tuple)) and not vals.elts:
                    kinds.append("empty_param")
        return list(dict.fromkeys(kinds))

    def run(self) -> list[dict]:
        conftest = self.tests_dir / "conftest.py"
        conf_tree = ast.parse(conftest.read_text()) if conftest.exists() else ast.Module(body=[], type_ignores=[])
        rows = []
        for path in sorted(self.tests_dir.glob("test_*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            table = self._helper_table([tree, conf_tree])
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                    rows.append({"file": path.name, "line": node.lineno, "test": node.name,
                                 "kinds": self.scan_function(node, table)})
        return rows


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    tests_dir = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "tests"
    if not tests_dir.is_dir():
        print(f"audit_tests: {tests_dir} is not a folder", file=sys.stderr)
        return 2
    rows = Scan(tests_dir).run()
    flagged = [r for r in rows if r["kinds"]]
    if "--json" in argv:
        print(json.dumps({"scanned": len(rows), "flagged": flagged}, indent=1))
        return 0
    counts = Counter(k for r in flagged for k in r["kinds"])
    print(f"{len(rows)} test functions scanned in {tests_dir}; {len(flagged)} flagged")
    for kind, n in sorted(counts.items()):
        print(f"  {kind}: {n}")
    for r in flagged:
        print(f"{r['file']}:{r['line']} {r['test']} {','.join(r['kinds'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
