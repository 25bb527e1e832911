"""The incremental max-min solver (lshsim.sim.incremental, numba) against the vectorised solver and
the per-flow reference: per-flow finish times within 1e-9 (relative) on random flows and on MoE
all-to-alls (skewed, uniform, dropless, heavy-tailed), with and without GPU engines, on fat-tree,
oversubscribed fat-tree, rail, NVSwitch and NVLink-mesh topologies; the switch of solver="auto"
mid-run; the fallback without numba."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import simpy

from lshsim.sim import incremental, network
from lshsim.sim.collectives import simulate_all_to_all, uniform_traffic
from lshsim.sim.network import FlowNetwork, simulate_flows
from lshsim.sim.reference import reference_simulate_flows
from lshsim.topology import Routes, build_topology, gpu_vertices, load_topology

pytestmark = pytest.mark.skipif(not incremental.numba_available(), reason="numba is not installed")

RTOL = 1e-9     # per flow finish time, incremental vs vectorised / reference


def fat_tree(nodes=4, gpus=4, nics=4, oversubscription=None):
    inter = {"kind": "fat_tree", "nics_per_node": nics, "nic_gbps": 400, "servers_per_leaf": 2}
    if oversubscription:
        inter["oversubscription"] = oversubscription
    return build_topology({"name": f"ft-{nodes}x{gpus}", "gpu": "h100", "nodes": nodes, "gpus_per_node": gpus,
                           "intra": {"kind": "nvswitch"}, "inter": inter})


def moe_traffic(world, kind, seed, tokens=512, k=2, capacity_factor=1.25, bytes_per_token=8192):
    """(W, W) bytes of one MoE dispatch drawn from a skewed expert popularity (one expert per GPU):
    skewed = top-k copies multinomial over Dirichlet^1 popularity, clipped at the capacity;
    dropless = the same without the clip; uniform = equal popularity; heavy = Pareto(1.5) pair sizes."""
    rng = np.random.default_rng(seed)
    if kind == "heavy":
        return (rng.pareto(1.5, (world, world)) + 0.05) * 4e6
    popularity = np.full(world, 1.0 / world) if kind == "uniform" else rng.dirichlet(np.ones(world))
    counts = rng.multinomial(tokens * k, popularity, size=world).astype(float)          # (W, W)
    if kind != "dropless":
        counts = np.minimum(counts, math.ceil(capacity_factor * tokens * k / world))
    return counts * bytes_per_token


def run_flows(G, flows, solver, engines=None):
    """Per-flow finish times of flows (src, dst, bytes, start) with one transfer per start time."""
    return simulate_flows(G, flows, gpu_engine_Bps=engines, solver=solver)


def random_flows(world, count, seed, starts=(0.0, 2e-4, 1e-3)):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, world, count)
    dst = (src + rng.integers(1, world, count)) % world
    size = rng.uniform(1e5, 2e7, count)
    size[:3], src[:3], dst[:3] = size[3], src[3], dst[3]          # identical flows: one class
    return np.c_[src, dst, size, rng.choice(starts, count)]


@pytest.mark.parametrize("name, engines", [
    ("lshmoe-v100-2x8", None), ("lshmoe-a100-4x8", None), ("h100-rail-4x8", None), ("pcie-a100", None),
    ("dgx1-v100", None), ("h100-nvswitch", 400e9), ("lshmoe-v100-2x8", 20e9), ("h100-rail-4x8", 50e9),
])
def test_incremental_equals_the_per_flow_reference(name, engines):
    G = load_topology(name)
    world = len(gpu_vertices(G))
    flows = random_flows(world, 90, seed=world + (engines is not None))
    fast = run_flows(G, flows, "incremental", engines)
    finish, link_bytes = reference_simulate_flows(G, flows, gpu_engine_Bps=engines)
    assert fast.stats["solver"] == "incremental"
    np.testing.assert_allclose(fast.finish_s, finish, rtol=RTOL)
    fast_bytes = fast.link_bytes_dict()
    assert set(fast_bytes) == set(link_bytes)


CASES = [  # (topology, traffic kind, engines)
    ("fat", "skewed", None), ("fat", "dropless", None), ("fat", "uniform", None), ("fat", "heavy", None),
    ("fat", "skewed", 700e9), ("fat", "heavy", 500e9),
    ("oversubscribed", "skewed", None), ("oversubscribed", "heavy", None),
    ("h100-rail-4x8", "skewed", None), ("h100-rail-4x8", "dropless", 600e9), ("h100-rail-4x8", "heavy", None),
    ("h100-nvswitch", "skewed", None), ("h100-nvswitch", "heavy", 400e9),
    ("lshmoe-a100-4x8", "skewed", None), ("lshmoe-a100-4x8", "heavy", None),
    ("dgx1-v100", "dropless", None), ("dgx1-v100", "heavy", 60e9),
]


def case_graph(name):
    if name == "fat":
        return fat_tree()
    if name == "oversubscribed":
        return fat_tree(nodes=4, gpus=4, nics=2, oversubscription=3.0)
    return load_topology(name)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name, kind, engines", CASES)
def test_incremental_equals_vectorised_on_moe_all_to_alls(name, kind, engines, seed):
    """Every flow of one direct all-to-all (plus a second transfer entering mid-way, so classes
    enter while others drain) finishes at the same time under both solvers."""
    G = case_graph(name)
    world = len(gpu_vertices(G))
    traffic = moe_traffic(world, kind, seed=seed + 10 * world)
    src, dst = np.nonzero(traffic > 0)
    keep = src != dst
    flows = np.c_[src[keep], dst[keep], traffic[src[keep], dst[keep]], np.zeros(keep.sum())]
    late = np.c_[flows[:, :3][::5], np.full(len(flows[::5]), 2e-4)]
    flows = np.vstack([flows, late])
    old = run_flows(G, flows, "vectorised", engines)
    new = run_flows(G, flows, "incremental", engines)
    assert old.stats["solver"] == "vectorised" and new.stats["solver"] == "incremental"
    np.testing.assert_allclose(new.finish_s, old.finish_s, rtol=RTOL)
    assert np.array_equal(new.link_bytes, old.link_bytes)
    assert new.stats["refilled_classes"] <= old.stats["classes"] * old.stats["rate_updates"]


@pytest.mark.parametrize("algorithm, options", [("direct", {}), ("hierarchical", {"chunks": 3}),
                                                ("groupwise", {}), ("pairwise", {})])
def test_collectives_are_the_same_under_both_solvers(algorithm, options):
    G = load_topology("h100-rail-4x8")
    traffic = moe_traffic(32, "skewed", seed=5)
    routes = Routes(G)
    old = simulate_all_to_all(G, traffic, algorithm, routes=routes, solver="vectorised", **options)
    new = simulate_all_to_all(G, traffic, algorithm, routes=routes, solver="incremental", **options)
    assert new.time_s == pytest.approx(old.time_s, rel=RTOL)
    assert [s.name for s in new.stages] == [s.name for s in old.stages]
    np.testing.assert_allclose([s.end_s for s in new.stages], [s.end_s for s in old.stages], rtol=RTOL)
    gap = simulate_all_to_all(G, traffic, algorithm, routes=routes, solver="incremental", message_gap_s=2e-6,
                              **options)
    gap_old = simulate_all_to_all(G, traffic, algorithm, routes=routes, solver="vectorised", message_gap_s=2e-6,
                                  **options)
    assert gap.time_s == pytest.approx(gap_old.time_s, rel=RTOL)


def test_uniform_all_to_all_needs_two_rate_updates():
    G = fat_tree(nodes=8, gpus=8, nics=8)
    result = simulate_all_to_all(G, uniform_traffic(64, 64e6), solver="incremental")
    assert result.stats["rate_updates"] <= 2 and result.stats["solver"] == "incremental"


def test_drain_tolerance_close_to_the_vectorised_solver():
    """With drain_tolerance > 0 a class near the tolerance's edge may drain one event earlier or later
    under the other solver's rounding; the all-to-all times stay within the tolerance."""
    G = fat_tree()
    traffic = moe_traffic(16, "heavy", seed=3)
    old = simulate_all_to_all(G, traffic, drain_tolerance=0.01, solver="vectorised")
    new = simulate_all_to_all(G, traffic, drain_tolerance=0.01, solver="incremental")
    exact = simulate_all_to_all(G, traffic, solver="incremental")
    assert new.time_s == pytest.approx(old.time_s, rel=1e-9)
    assert exact.time_s * (1 - 0.011) <= new.time_s <= exact.time_s * (1 + 1e-12)


def test_auto_switches_to_incremental_mid_run(monkeypatch):
    """solver="auto" starts vectorised and hands the classes in flight to the incremental solver when
    a transfer brings them to AUTO_INCREMENTAL_CLASSES: the same finish times as either solver alone."""
    monkeypatch.setattr(network, "AUTO_INCREMENTAL_CLASSES", 60)
    G = load_topology("lshmoe-a100-4x8")
    flows = random_flows(32, 100, seed=4, starts=(0.0, 3e-4, 9e-4))
    auto = run_flows(G, flows, "auto")
    old = run_flows(G, flows, "vectorised")
    assert auto.stats["solver"] == "incremental"
    np.testing.assert_allclose(auto.finish_s, old.finish_s, rtol=RTOL)
    monkeypatch.setattr(network, "AUTO_INCREMENTAL_CLASSES", 10**9)
    assert run_flows(G, flows, "auto").stats["solver"] == "vectorised"


def test_incremental_is_deterministic():
    G = fat_tree()
    traffic = moe_traffic(16, "dropless", seed=9)
    a = simulate_all_to_all(G, traffic, solver="incremental")
    b = simulate_all_to_all(G, traffic, solver="incremental")
    assert a.time_s == b.time_s and a.stats == b.stats


def test_bad_solver_is_refused(monkeypatch):
    G = load_topology("h100-nvswitch")
    with pytest.raises(ValueError, match="solver='fast' must be one of auto, incremental, vectorised"):
        FlowNetwork(G, solver="fast")
    monkeypatch.setattr(incremental, "numba_available", lambda: False)
    with pytest.raises(ValueError, match="solver='incremental' needs numba"):
        FlowNetwork(G, solver="incremental")
    monkeypatch.setattr(network, "AUTO_INCREMENTAL_CLASSES", 1)
    assert simulate_flows(G, [(0, 1, 1e6, 0.0), (1, 2, 2e6, 0.0)]).stats["solver"] == "vectorised"


def test_without_numba_auto_falls_back_to_vectorised():
    """In a process where numba cannot be imported, solver="auto" runs the vectorised solver (same
    time as the incremental one here) and "incremental" is refused with the install hint."""
    G = fat_tree()
    traffic = moe_traffic(16, "skewed", seed=2)
    expected = simulate_all_to_all(G, traffic, solver="incremental").time_s
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np, json\n"
        "from lshsim.sim import network\n"
        "network.AUTO_INCREMENTAL_CLASSES = 1\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_sim_incremental import fat_tree, moe_traffic\n"
        "from lshsim.sim.collectives import simulate_all_to_all\n"
        "r = simulate_all_to_all(fat_tree(), moe_traffic(16, 'skewed', seed=2))\n"
        "try:\n"
        "    network.FlowNetwork(fat_tree(), solver='incremental'); refused = ''\n"
        "except ValueError as error:\n"
        "    refused = str(error)\n"
        "print(json.dumps([r.time_s, r.stats['solver'], refused]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)], capture_output=True, text=True,
                         env=env, check=True)
    import json
    time_s, solver, refused = json.loads(out.stdout.strip().splitlines()[-1])
    assert solver == "vectorised" and "needs numba" in refused
    assert time_s == pytest.approx(expected, rel=RTOL)


def test_cli_simulate_solver_flag(tmp_path, capsys):
    """`lshsim simulate --solver`: both solvers print the same time and say which one ran."""
    import json

    from lshsim.cli import main

    path = tmp_path / "t.json"
    path.write_text(json.dumps(moe_traffic(32, "skewed", seed=8).tolist()))
    times = {}
    for solver in ("vectorised", "incremental"):
        assert main(["simulate", "--topology", "h100-rail-4x8", "--traffic", str(path), "--solver", solver,
                     "--json", "--quiet"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["stats"]["solver"] == solver
        times[solver] = out["time_s"]
    assert times["incremental"] == pytest.approx(times["vectorised"], rel=RTOL)


# ---- the vectorised solver's compiled rate update: the numpy numbers, bit for bit ---------------
def _vectorised_both_ways(monkeypatch, run):
    """run() with the vectorised solver's rate updates in numpy, then compiled; the number of
    compiled updates."""
    monkeypatch.setattr(network, "COMPILED_VECTORISED", False)
    numpy_result = run()
    calls = []
    kernel = incremental._kernels().vectorised_rates

    def counted(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setattr(network, "COMPILED_VECTORISED", True)
    monkeypatch.setattr(network, "_vectorised_kernel", lambda: counted)
    return numpy_result, run(), len(calls)


@pytest.mark.parametrize("tolerance", [0.0, 0.01])
@pytest.mark.parametrize("name, kind, engines", CASES[::2])
def test_compiled_vectorised_rates_equal_numpy_bit_for_bit(monkeypatch, name, kind, engines, tolerance):
    """The vectorised solver gives the same finish times, link bytes and counters, to the last bit,
    whether its rate updates run in numpy or compiled (`_incremental_kernels.vectorised_rates`):
    one direct all-to-all plus a second transfer entering mid-way (drains refill part of the
    classes, entries all of them), exact and with a drain tolerance."""
    G = case_graph(name)
    world = len(gpu_vertices(G))
    traffic = moe_traffic(world, kind, seed=3 + world)
    src, dst = np.nonzero(traffic > 0)
    keep = src != dst
    flows = np.c_[src[keep], dst[keep], traffic[src[keep], dst[keep]], np.zeros(keep.sum())]
    flows = np.vstack([flows, np.c_[flows[:, :3][::5], np.full(len(flows[::5]), 2e-4)]])

    def run():
        net = FlowNetwork(G, drain_tolerance=tolerance, gpu_engine_Bps=engines, solver="vectorised")
        procs = []
        for start in np.unique(flows[:, 3]):
            rows = flows[flows[:, 3] == start]

            def launch(start=start, rows=rows):
                yield net.env.timeout(start)
                tr = net.transfer(rows[:, 0], rows[:, 1], rows[:, 2])
                yield tr.done
                return tr.finish_s
            procs.append(net.env.process(launch()))
        net.env.run(until=simpy.AllOf(net.env, procs))
        return np.concatenate([p.value for p in procs]), net.link_bytes.copy(), net.stats

    (old_t, old_b, old_s), (new_t, new_b, new_s), compiled = _vectorised_both_ways(monkeypatch, run)
    assert compiled == new_s["rate_updates"] > 2            # every update ran compiled
    assert np.array_equal(new_t, old_t) and np.array_equal(new_b, old_b)
    assert new_s == old_s


@pytest.mark.parametrize("algorithm, options", [("hierarchical", {"chunks": 3}), ("groupwise", {}),
                                                ("node_dedup", {"chunks": 4})])
def test_compiled_vectorised_collectives_equal_numpy_bit_for_bit(monkeypatch, algorithm, options):
    """Whole collectives (several transfers, compute gaps) on the vectorised solver: the same time and
    stage ends, to the last bit, with numpy or compiled rate updates."""
    G = load_topology("h100-rail-4x8")
    traffic = moe_traffic(32, "skewed", seed=7)
    if algorithm == "node_dedup":
        options = {**options, "node_bytes": traffic.reshape(32, 4, 8).sum(axis=2) * 0.6}
    routes = Routes(G)

    def run():
        result = simulate_all_to_all(G, traffic, algorithm, routes=routes, solver="vectorised", **options)
        return result.time_s, [s.end_s for s in result.stages]

    old, new, compiled = _vectorised_both_ways(monkeypatch, run)
    assert compiled > 0
    assert new == old


@pytest.mark.parametrize("max_rounds", [0, 1, 2, 1000])
@pytest.mark.parametrize("seed", range(6))
def test_heap_filling_equals_the_reference_on_random_class_sets(seed, max_rounds):
    """`_incremental_kernels._fill` (rounds, at most max_rounds, then one bottleneck at a time with a
    lazy heap: 0 = the heap alone, 1000 = rounds alone) against the per-flow
    progressive filling of `reference_max_min_rates` on random classes: multiplicities, padding with
    the sentinel, repeated hop sets, a class on no resource, ties (equal capacities), a subset of the
    class ids on capacity partly used by others; every rate within 1e-12 and every class's recorded
    bottleneck saturated with no faster class of the subset on it."""
    from lshsim.sim import _incremental_kernels as kernels
    from lshsim.sim.reference import reference_max_min_rates

    rng = np.random.default_rng(seed)
    links = int(rng.integers(5, 40))
    sentinel = links
    n, width = int(rng.integers(20, 200)), 4
    E = np.full((n, width), sentinel, dtype=np.int32)
    for i in range(n):
        hops = int(rng.integers(1, width + 1))
        E[i, :hops] = rng.choice(links, hops, replace=False)
    E[5] = E[3]                                   # two classes on the same resources
    E[7] = sentinel                               # a class that nothing binds
    mult = rng.integers(1, 5, n).astype(float)
    capacity = np.r_[rng.choice([1e9, 2e9, 5e9], links) * rng.choice([1.0, 1.0, rng.uniform(0.5, 2.0)], links),
                     np.inf]
    cap_left = capacity.copy()
    cap_left[:links] *= rng.uniform(0.3, 1.0, links)        # what the classes outside the subset leave
    ids = np.sort(rng.choice(n, int(rng.integers(10, n)), replace=False)).astype(np.int64)
    ids = np.union1d(ids, [3, 5, 7]).astype(np.int64)
    rate = np.full(n, -1.0)
    bott = np.full(len(ids), -2, dtype=np.int64)
    stats = np.zeros(8, dtype=np.int64)
    given = cap_left.copy()
    smallest = kernels._fill(ids, E, mult, cap_left, rate, bott, stats, max_rounds)
    assert np.array_equal(cap_left, given)                   # not changed
    paths, owner = [], []
    for p, i in enumerate(ids):
        hops = [int(e) for e in E[i] if e != sentinel]
        if not hops:
            continue                              # (the reference needs a resource per flow)
        paths += [[(e,) for e in hops]] * int(mult[i])
        owner += [p] * int(mult[i])
    want = reference_max_min_rates(paths, {(e,): float(cap_left[e]) for e in range(links)})
    for p, i in enumerate(ids):
        expected = [w for w, o in zip(want, owner) if o == p]
        if not any(e != sentinel for e in E[i]):
            assert rate[i] == np.inf and bott[p] == sentinel
            continue
        assert max(expected) == min(expected)
        assert rate[i] == pytest.approx(expected[0], rel=1e-12)
        # the bottleneck: one of its resources, saturated, and no class of the subset on it is faster
        b = bott[p]
        assert b in E[i]
        on_b = [j for j in ids if b in E[j]]
        used = sum(mult[j] * rate[j] for j in on_b)
        assert used == pytest.approx(cap_left[b], rel=1e-12)
        assert max(rate[j] for j in on_b) <= rate[i] * (1 + 1e-12)
    assert rate[np.setdiff1d(np.arange(n), ids)].max() == -1.0       # only the subset is written
    finite = [rate[i] for i in ids if np.isfinite(rate[i])]
    assert smallest == min(finite)
    assert stats[2] >= 1


def test_filling_switches_from_rounds_to_the_heap_with_the_same_rates():
    """A chain of resources whose fair shares rise along it needs one round per class (each round's
    only local bottleneck is the chain's first unsaturated resource): `_fill` with the engine's
    FILL_ROUNDS runs that many rounds, then the heap for the rest; rounds alone, the heap alone and
    the switch at every point in between give the reference's rates (within 1e-12) and the same
    bottlenecks."""
    from lshsim.sim import _incremental_kernels as kernels
    from lshsim.sim.reference import reference_max_min_rates

    links = 12
    sentinel = links
    E = np.full((links, 2), sentinel, dtype=np.int32)
    for i in range(links):                        # class i crosses resources i and i + 1
        E[i, 0] = i
        if i + 1 < links:
            E[i, 1] = i + 1
    mult = np.array([1.0, 2.0, 1.0, 3.0] * 3)
    capacity = np.r_[1e9 * 4.0 ** np.arange(links), np.inf]
    ids = np.arange(links, dtype=np.int64)
    paths, owner = [], []
    for i in ids:
        hops = [int(e) for e in E[i] if e != sentinel]
        paths += [[(e,) for e in hops]] * int(mult[i])
        owner += [i] * int(mult[i])
    want = reference_max_min_rates(paths, {(e,): float(capacity[e]) for e in range(links)})
    expected = np.array([[w for w, o in zip(want, owner) if o == i][0] for i in ids])
    runs = {}
    for max_rounds in (0, 1, kernels.FILL_ROUNDS, 5, 1000):
        rate = np.full(links, -1.0)
        bott = np.full(links, -2, dtype=np.int64)
        stats = np.zeros(8, dtype=np.int64)
        kernels._fill(ids, E, mult, capacity.copy(), rate, bott, stats, max_rounds)
        np.testing.assert_allclose(rate, expected, rtol=1e-12, atol=0)
        runs[max_rounds] = (rate, bott, int(stats[2]))
    rounds_alone = runs[1000][2]
    assert rounds_alone > max(kernels.FILL_ROUNDS, 5)      # so the switch happens in the runs before
    assert runs[0][2] == links                              # the heap alone: one saturated resource per class
    for max_rounds, (rate, bott, steps) in runs.items():
        assert np.array_equal(bott, runs[1000][1])
        # rounds taken, then one heap step per class left
        assert steps == (rounds_alone if max_rounds >= rounds_alone else max_rounds + links - max_rounds)
