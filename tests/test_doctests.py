"""Every docstring example of the library runs as part of `make test`.

The modules are found by walking the installed packages (`lshsim` and the two folders mapped into
it, `lshsim.executor` and `lshsim.models`), so a new module's examples are collected without
being listed here. The count test guards the collection itself: if an import error or a packaging
change made the walk miss modules, it fails instead of silently running fewer examples.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import lshsim

# Lower bounds, raised when examples are added: a drop means examples stopped being collected.
MIN_MODULES_WITH_EXAMPLES = 35
MIN_EXAMPLES = 200


def _module_names() -> list[str]:
    names = ["lshsim"]
    for package in ("lshsim", "lshsim.executor", "lshsim.models"):
        module = importlib.import_module(package)
        names.append(package) if package != "lshsim" else None
        names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
    # a __main__ module runs its command when imported: it holds no examples by design
    return sorted(name for name in set(names) if not name.endswith(".__main__"))


def _doctests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    return [t for t in tests if t.examples]


MODULES = [name for name in _module_names() if _doctests(name)]


def test_collection_finds_the_examples():
    examples = sum(len(t.examples) for name in MODULES for t in _doctests(name))
    assert len(MODULES) >= MIN_MODULES_WITH_EXAMPLES, MODULES
    assert examples >= MIN_EXAMPLES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with np.printoptions(legacy=False):
        for test in _doctests(name):
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name} (output above)"
