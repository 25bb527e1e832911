"""lshsim: communication cost of Mixture-of-Experts training (LSH-MoE, LocMoE).

Subpackages: `dispatch` (routers, plans, LSH; torch), `analytic` (closed forms), `calibration`
(the link model and its fits; numpy only), `topology` and `sim` (flow-level simulation),
`executor` (torch.distributed runs of the same dispatch code), `models` (the model catalog) and
the `lshsim` command (`lshsim.cli`).

`lshsim.executor` and `lshsim.models` live in the top-level folders `executor/` and `models/` of
the source tree; an install (`pip install .`) places them inside this package, so that lshsim
adds no generic top-level names. In a source checkout (PYTHONPATH pointing at it, or an editable
install) the small finder below maps the two names onto those folders.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"

_CHECKOUT_SUBPACKAGES = ("executor", "models")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds `lshsim.executor` and `lshsim.models` in the source tree's top-level folders."""

    def __init__(self, root: str) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) != 2 or parts[0] != __name__ or parts[1] not in _CHECKOUT_SUBPACKAGES:
            return None
        init = os.path.join(self.root, parts[1], "__init__.py")
        if not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(fullname, init,
                                                      submodule_search_locations=[os.path.dirname(init)])


def _install_checkout_finder() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if all(os.path.isdir(os.path.join(here, name)) for name in _CHECKOUT_SUBPACKAGES):
        return  # an install: the subpackages are inside this package
    root = os.path.dirname(here)
    if any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        return
    # first: an editable install of another checkout must not supply this checkout's subpackages
    sys.meta_path.insert(0, _CheckoutFinder(root))


_install_checkout_finder()
