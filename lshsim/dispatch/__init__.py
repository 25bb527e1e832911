"""The dispatch core: routing plans, routers, placement, LSH compression, reference dispatch.

One implementation, device-agnostic torch, called by both the simulator (on CPU, to obtain the
exact traffic of a workload) and the executor (on GPU or CPU processes, to move the real bytes).
"""
from lshsim.dispatch.placement import (Placement, contiguous_placement, make_placement,
                                       round_robin_placement)
from lshsim.dispatch.plan import DispatchPlan
from lshsim.dispatch.reference import combine, dispatch
from lshsim.dispatch.routers import (ROUTERS, RouterConfig, RouterSpec, aux_loss, effective_k, gate_cost,
                                     get_router, grap_weights, locality_loss, register_router, route,
                                     route_expert_choice, route_hash, route_locmoe, route_node_limited,
                                     route_topk, unregister_router, validate_router_params)

__all__ = [
    "Placement", "contiguous_placement", "round_robin_placement", "make_placement", "DispatchPlan",
    "dispatch", "combine", "ROUTERS", "RouterConfig", "RouterSpec", "route", "get_router", "register_router",
    "unregister_router", "effective_k", "validate_router_params", "gate_cost", "route_topk", "route_hash",
    "route_expert_choice", "route_locmoe", "route_node_limited", "grap_weights", "aux_loss", "locality_loss",
]
