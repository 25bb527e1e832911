"""All-to-all algorithms: one name per algorithm across the analytic model, the simulator and the executor.

`COLLECTIVES` maps a canonical name to a `CollectiveAlgorithm`, which holds the algorithm's
implementations on each side (any of them may be absent):

- simulate: a generator `fn(run, traffic, **options)` for `lshsim.sim.collectives.simulate_all_to_all`.
  `run` is a `CollectiveRun` (the flow network and the stages so far); `traffic` is the (W, W) float
  array of bytes, row = source rank, column = destination rank; the function runs its phases with
  `yield from run.phase(name, matrix, mask)` and returns nothing (the stages it ran are the result).
  `options` are the keyword arguments of `simulate_all_to_all` that the algorithm takes (hierarchical:
  chunks).
- analytic: `fn(traffic, cluster) -> seconds` for `lshsim.analytic.comm.a2a_time`, `traffic` (..., W, W)
  bytes and `cluster` a `ClusterParams`; returns a float or an array of the batch shape.
- executor: True when the executor implements it (the workload's `alltoall:` field).

A built-in implementation is named by "module:attribute" and imported on first use, so this module
imports neither the simulator nor numpy. `canonical_algorithm` maps an accepted alias to its
canonical name; `register_collective` adds an algorithm (refusing a taken name or alias).

==================  ======  ==========================================================================
name                alias   algorithm
==================  ======  ==========================================================================
direct                      every rank sends to every peer at once (NCCL's grouped send/recv)
pairwise                    W - 1 synchronous steps, step k: r -> (r + k) mod W (pairwise exchange)
hierarchical        2d      Tutel 2DH / DeepSpeed-MoE: gather by destination inside each node, then
                            the inter-node exchange between GPUs on the same rail (NIC proxies)
groupwise                   LocMoE: the intra-node part first, then the inter-node remainder
groupwise_overlap           LocMoE with the two groups overlapped (analytic only)
node_dedup          deepep  DeepEP normal kernels: a token crosses the network once per destination
                            node (to the GPU of its rail), then NVLink forwarding inside the node
                            (simulator: lshsim.sim.dispatch_formats, options node_bytes, chunks,
                            combine; executor: lshsim.executor.dedup)
==================  ======  ==========================================================================

"2d" is the name the simulator and `lshsim simulate --algorithm` used for the hierarchical
algorithm; it stays accepted everywhere a name is read and resolves to "hierarchical".

>>> canonical_algorithm("2d")
'hierarchical'
>>> algorithm_names("simulate")
['direct', 'pairwise', 'hierarchical', 'groupwise', 'node_dedup']
>>> algorithm_names("executor")
['direct', 'groupwise', 'node_dedup']
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator, Union

__all__ = ["CollectiveAlgorithm", "COLLECTIVES", "SIDES", "canonical_algorithm", "get_collective",
           "register_collective", "unregister_collective", "algorithm_names", "AlgorithmTable"]

SIDES = ("simulate", "analytic", "executor")

Implementation = Union[Callable, str, None]


def _resolve(ref: Implementation) -> Callable | None:
    if ref is None or callable(ref):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class CollectiveAlgorithm:
    """One all-to-all algorithm (contract: module docstring).

    name: canonical name. description: one line. aliases: other accepted names. simulate /
    analytic: the implementations, as callables or "module:attribute" references (None: that side
    does not have it). executor: the executor implements it.
    """

    name: str
    description: str
    simulate: Implementation = None
    analytic: Implementation = None
    executor: bool = False
    aliases: tuple[str, ...] = ()

    def implementation(self, side: str) -> Callable | None:
        """The callable of `side` ("simulate" or "analytic"), imported on first use; None if absent."""
        if side not in ("simulate", "analytic"):
            raise ValueError(f"side={side!r} must be 'simulate' or 'analytic'")
        return _resolve(getattr(self, side))

    def has(self, side: str) -> bool:
        if side not in SIDES:
            raise ValueError(f"side={side!r} must be one of {SIDES}")
        return bool(getattr(self, side))


COLLECTIVES: dict[str, CollectiveAlgorithm] = {
    "direct": CollectiveAlgorithm(
        "direct", "every rank sends to every peer at once", simulate="lshsim.sim.collectives:direct",
        analytic="lshsim.analytic.comm:analytic_direct", executor=True),
    "pairwise": CollectiveAlgorithm(
        "pairwise", "W - 1 synchronous steps, step k: r -> (r + k) mod W",
        simulate="lshsim.sim.collectives:pairwise", analytic="lshsim.analytic.comm:analytic_pairwise"),
    "hierarchical": CollectiveAlgorithm(
        "hierarchical", "intra-node gather by destination, then inter-node exchange on the rails (Tutel 2DH)",
        simulate="lshsim.sim.collectives:hierarchical", analytic="lshsim.analytic.comm:analytic_hierarchical",
        aliases=("2d",)),
    "groupwise": CollectiveAlgorithm(
        "groupwise", "intra-node part first, then the inter-node remainder (LocMoE)",
        simulate="lshsim.sim.collectives:groupwise", analytic="lshsim.analytic.comm:analytic_groupwise",
        executor=True),
    "groupwise_overlap": CollectiveAlgorithm(
        "groupwise_overlap", "LocMoE group-wise with the intra- and inter-node parts overlapped",
        analytic="lshsim.analytic.comm:analytic_groupwise_overlap"),
    "node_dedup": CollectiveAlgorithm(
        "node_dedup", "one network copy per (token, destination node), then NVLink forwarding (DeepEP normal kernels)",
        simulate="lshsim.sim.dispatch_formats:node_dedup", analytic="lshsim.sim.dispatch_formats:analytic_node_dedup",
        executor=True, aliases=("deepep",)),
}


def _aliases() -> dict[str, str]:
    return {alias: entry.name for entry in COLLECTIVES.values() for alias in entry.aliases}


def _known(side: str | None = None) -> str:
    names = ", ".join(algorithm_names(side))
    aliases = [f"{alias} = {name}" for alias, name in _aliases().items() if side is None or COLLECTIVES[name].has(side)]
    return names + (f" (alias: {', '.join(aliases)})" if aliases else "")


def algorithm_names(side: str | None = None) -> list[str]:
    """Canonical names in registration order, those with an implementation on `side` if given."""
    return [name for name, entry in COLLECTIVES.items() if side is None or entry.has(side)]


def canonical_algorithm(name: str, side: str | None = None) -> str:
    """The canonical name of `name` (itself, or the algorithm it is an alias of).

    With `side`, the algorithm must also have that side ("simulate", "analytic" or "executor").
    ValueError names the value and lists what is known.

    >>> canonical_algorithm("groupwise", side="executor")
    'groupwise'
    >>> canonical_algorithm("pairwise", side="executor")
    Traceback (most recent call last):
    ...
    ValueError: algorithm='pairwise' is not implemented by the executor; known: direct, groupwise, node_dedup (alias: deepep = node_dedup)
    """
    if not isinstance(name, str):    # a list or a mapping from a file: unhashable, a TypeError before
        raise ValueError(f"algorithm={name!r} must be the name of an algorithm; known: {_known(side)}")
    canonical = name if name in COLLECTIVES else _aliases().get(name)
    if canonical is None:
        raise ValueError(f"algorithm={name!r} is unknown; known: {_known(side)}")
    if side is not None and not COLLECTIVES[canonical].has(side):
        where = {"simulate": "the simulator", "analytic": "the analytic model", "executor": "the executor"}[side]
        raise ValueError(f"algorithm={name!r} is not implemented by {where}; known: {_known(side)}")
    return canonical


def get_collective(name: str) -> CollectiveAlgorithm:
    """The registered algorithm of a name or alias."""
    return COLLECTIVES[canonical_algorithm(name)]


def register_collective(name: str, *, description: str = "", simulate: Implementation = None,
                        analytic: Implementation = None, executor: bool = False,
                        aliases: tuple[str, ...] = ()) -> CollectiveAlgorithm:
    """Add an algorithm (contract: module docstring); refuses a name or alias already taken.

    `executor=True` only declares what the executor implements; the executor's all-to-all code
    must implement the name as well.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"algorithm name={name!r} must be a non-empty string")
    taken = set(COLLECTIVES) | set(_aliases())
    for new in (name, *aliases):
        if new in taken:
            raise ValueError(f"algorithm name {new!r} is already registered")
    if simulate is None and analytic is None:
        raise ValueError(f"algorithm {name!r} needs a simulate or an analytic implementation")
    for side, ref in (("simulate", simulate), ("analytic", analytic)):
        if ref is not None and not (callable(ref) or (isinstance(ref, str) and ":" in ref)):
            raise ValueError(f"{side}={ref!r} must be a callable or a 'module:attribute' reference")
    entry = CollectiveAlgorithm(name, description, simulate=simulate, analytic=analytic, executor=bool(executor),
                                aliases=tuple(aliases))
    COLLECTIVES[name] = entry
    return entry


def unregister_collective(name: str) -> CollectiveAlgorithm:
    """Remove a registered algorithm by its canonical name (tests undo their registrations with it)."""
    if name not in COLLECTIVES:
        raise ValueError(f"algorithm {name!r} is not registered")
    return COLLECTIVES.pop(name)


class AlgorithmTable(Mapping):
    """A live, read-only view of the algorithms of one side: name -> implementation.

    Iterates over canonical names (registration order); lookups and `in` also accept aliases
    ("2d" -> the hierarchical implementation). `lshsim.sim.collectives.ALGORITHMS` and
    `lshsim.analytic.comm.A2A_ALGORITHMS` are the two tables.
    """

    def __init__(self, side: str):
        if side not in ("simulate", "analytic"):
            raise ValueError(f"side={side!r} must be 'simulate' or 'analytic'")
        self.side = side

    def __getitem__(self, name: str) -> Callable:
        try:
            canonical = canonical_algorithm(name, self.side)
        except ValueError:
            raise KeyError(name) from None
        return COLLECTIVES[canonical].implementation(self.side)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            canonical_algorithm(name, self.side)
        except ValueError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(algorithm_names(self.side))

    def __len__(self) -> int:
        return len(algorithm_names(self.side))

    def canonical(self, name: str) -> str:
        """canonical_algorithm(name, side) of this table's side."""
        return canonical_algorithm(name, self.side)

    def __repr__(self) -> str:
        return f"AlgorithmTable({self.side!r}: {', '.join(self)})"
