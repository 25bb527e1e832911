"""Discrete-event simulation (simpy) on `lshsim.topology` graphs.

- `lshsim.sim.network`: FlowNetwork (flow-level, max-min fair sharing), simulate_flows, Transfer.
- `lshsim.sim.collectives`: simulate_all_to_all, ALGORITHMS (direct, pairwise, hierarchical
  (alias 2d), groupwise; the registry is `lshsim.algorithms`), CollectiveResult, uniform_traffic.
- `lshsim.sim.reference`: the slow per-flow reference the tests compare the fast path with.
- `lshsim.sim.phases`: the phase table (PhaseSpec, PHASES, register_phase) that the step simulator
  (`lshsim.sim.moe_step`), the Trace schema (`lshsim.sim.trace`), `lshsim.sim.validate` and the
  executor's timer read.
"""
from lshsim.sim.collectives import ALGORITHMS, CollectiveResult, Stage, simulate_all_to_all, uniform_traffic
from lshsim.sim.network import FlowNetwork, FlowResult, Transfer, simulate_flows

__all__ = ["ALGORITHMS", "CollectiveResult", "Stage", "simulate_all_to_all", "uniform_traffic", "FlowNetwork",
           "FlowResult", "Transfer", "simulate_flows"]
