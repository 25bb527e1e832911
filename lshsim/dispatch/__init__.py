"""The dispatch core: routing plans, routers, placement, LSH compression, reference dispatch.

One implementation, device-agnostic torch, called by both the simulator (on CPU, to obtain the
exact traffic of a workload) and the executor (on GPU or CPU processes, to move the real bytes).
"""
from lshsim.dispatch.placement import (Placement, contiguous_placement, make_placement,
                                       round_robin_placement)
from lshsim.dispatch.plan import DispatchPlan
from lshsim.dispatch.reference import combine, dispatch
from lshsim.dispatch.routers import (ROUTERS, RouterConfig, aux_loss, get_router, grap_weights,
                                     locality_loss, route, route_expert_choice, route_hash,
                                     route_locmoe, route_topk)

__all__ = [
    "Placement", "contiguous_placement", "round_robin_placement", "make_placement", "DispatchPlan",
    "dispatch", "combine", "ROUTERS", "RouterConfig", "route", "get_router", "route_topk", "route_hash",
    "route_expert_choice", "route_locmoe", "grap_weights", "aux_loss", "locality_loss",
]
