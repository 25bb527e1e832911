"""A toy collective plugin: a two-phase all-to-all by parity.

Phase "same_parity": every rank sends to the peers whose rank has its parity; phase
"cross_parity": then to the others. Simulator side: two `run.phase` calls. Analytic side: the
sum of the two phases' direct times on the same alpha-beta cluster.

One module and one registry entry (`register`).
"""
from __future__ import annotations

import numpy as np

from lshsim.algorithms import register_collective, unregister_collective
from lshsim.analytic.comm import ClusterParams, a2a_time_direct_multinode

NAME = "parity"


def _same_parity(world: int) -> np.ndarray:
    rank = np.arange(world)
    return (rank[:, None] % 2) == (rank[None, :] % 2)                                   # (W, W)


def simulate_parity(run, traffic: np.ndarray):
    """Same-parity peers first, then the other parity (each phase: every pair at once)."""
    same = _same_parity(traffic.shape[0])
    yield from run.phase("same_parity", traffic, same)
    yield from run.phase("cross_parity", traffic, ~same)


def analytic_parity(traffic, cluster: ClusterParams):
    """t = t_direct(same-parity part) + t_direct(cross-parity part)."""
    traffic = np.asarray(traffic, dtype=float)
    same = _same_parity(traffic.shape[-1])
    return sum(a2a_time_direct_multinode(traffic * mask, cluster.gpus_per_node, cluster.intra_bandwidth_Bps,
                                         cluster.inter_bandwidth_Bps, cluster.alpha_s, cluster.inter_alpha_s,
                                         cluster.nics_per_node)
               for mask in (same, ~same))


def register():
    """The one registry entry."""
    return register_collective(NAME, description="two phases by rank parity", simulate=simulate_parity,
                               analytic=analytic_parity)


def unregister():
    unregister_collective(NAME)
