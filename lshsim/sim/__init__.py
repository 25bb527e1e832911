"""Discrete-event simulation of MoE training: network, collectives, the MoE step, and traces.

Submodules are imported explicitly (`from lshsim.sim.trace import Trace`); this package imports
nothing at load time, so each submodule stays cheap to import.
"""
