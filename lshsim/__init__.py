"""lshsim: communication cost of Mixture-of-Experts training (LSH-MoE, LocMoE).

Subpackages: `dispatch` (routers, plans, LSH; torch), `analytic` (closed forms), `topology` and
`sim` (discrete-event simulation), and the `lshsim` command (`lshsim.cli`).
"""
__version__ = "0.1.0"
