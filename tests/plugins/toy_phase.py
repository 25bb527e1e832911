"""A toy phase plugin: a fixed-cost synchronisation of the router's statistics after the gate.

One module and one registry entry (`register`): a "router_sync" phase of kind "overhead" in the
MoE block, right after the gate, in both passes, costing a constant SYNC_S on every rank. Its cost
reads nothing from the context, so `lshsim validate` can predict it from a measured trace too
(`predicted=True`); the executor does not run it (`timed` is empty).
"""
from __future__ import annotations

from lshsim.sim.phases import CostContext, PhaseCost, PhaseSpec, register_phase, unregister_phase

NAME = "router_sync"
SYNC_S = 20e-6


def router_sync_cost(ctx: CostContext, direction: str, chunks: int = 1) -> PhaseCost:
    """SYNC_S on every rank, in either direction."""
    return PhaseCost(SYNC_S)


def spec(kind: str = "overhead") -> PhaseSpec:
    return PhaseSpec(NAME, kind, "moe", router_sync_cost, predicted=True,
                     description="toy: a fixed-cost synchronisation of the router's statistics")


def register(kind: str = "overhead") -> PhaseSpec:
    """The one registry entry."""
    return register_phase(spec(kind), after="gate")


def unregister() -> PhaseSpec:
    return unregister_phase(NAME)
