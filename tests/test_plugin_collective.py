"""A toy collective (two phases by rank parity) registered as one module + one registry entry runs
in the simulator and in the analytic model under one name."""
import numpy as np
import pytest

from lshsim.algorithms import COLLECTIVES, canonical_algorithm, register_collective
from lshsim.analytic.comm import A2A_ALGORITHMS, ClusterParams, a2a_time
from lshsim.sim.collectives import ALGORITHMS, simulate_all_to_all, uniform_traffic
from lshsim.topology import load_topology
from plugins import toy_collective


@pytest.fixture
def parity():
    entry = toy_collective.register()
    yield entry
    toy_collective.unregister()
    assert toy_collective.NAME not in COLLECTIVES and toy_collective.NAME not in ALGORITHMS


def test_toy_collective_in_the_simulator(parity):
    G = load_topology("h100-nvswitch")                                   # 8 GPUs, 450 GB/s ports
    traffic = uniform_traffic(8, 8 * 450e6)
    result = simulate_all_to_all(G, traffic, toy_collective.NAME, local_copy=False)
    assert result.algorithm == toy_collective.NAME
    assert [s.name for s in result.stages] == ["same_parity", "cross_parity"]
    assert [s.flows for s in result.stages] == [8 * 3, 8 * 4]           # 3 same-parity peers, 4 others
    assert sum(s.bytes for s in result.stages) == pytest.approx(8 * 7 * 450e6)
    direct = simulate_all_to_all(G, traffic, "direct", local_copy=False)
    # two phases of 3/7 and 4/7 of the bytes each pay alpha and the hops: slower than direct by one alpha + 2 hops
    alpha, hops = G.graph["alpha_s"], 2e-6
    assert result.time_s == pytest.approx(direct.time_s + alpha + hops, rel=1e-6)
    assert toy_collective.NAME in ALGORITHMS and list(ALGORITHMS)[-1] == toy_collective.NAME


def test_toy_collective_in_the_analytic_model(parity):
    cluster = ClusterParams(gpus_per_node=4, intra_bandwidth_Bps=100e9, inter_bandwidth_Bps=10e9, alpha_s=1e-5)
    traffic = np.full((8, 8), 1e8)
    expected = sum(a2a_time("direct", traffic * mask, cluster) for mask in
                   (toy_collective._same_parity(8), ~toy_collective._same_parity(8)))
    assert a2a_time(toy_collective.NAME, traffic, cluster) == pytest.approx(expected)
    assert toy_collective.NAME in A2A_ALGORITHMS
    assert canonical_algorithm(toy_collective.NAME) == toy_collective.NAME


def test_register_collective_refuses_taken_names():
    with pytest.raises(ValueError, match="'2d' is already registered"):
        register_collective("ring", simulate=toy_collective.simulate_parity, aliases=("2d",))
    with pytest.raises(ValueError, match="'direct' is already registered"):
        register_collective("direct", simulate=toy_collective.simulate_parity)
    with pytest.raises(ValueError, match="needs a simulate or an analytic implementation"):
        register_collective("ring")
    assert "ring" not in COLLECTIVES
