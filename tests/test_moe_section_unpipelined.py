"""`_moe_section` with one chunk runs without simpy (`_moe_section_unpipelined`): the records, their
order and the end time equal the simpy simulation's to the bit."""
import numpy as np
import pytest

from lshsim.sim.moe_step import _moe_section, _moe_section_simpy, _moe_section_unpipelined


def _cases():
    rng = np.random.default_rng(4)
    yield 0.0, 4, 1e-3, np.array([2e-3, 1e-3, 2e-3, 0.5e-3]), 3e-3                # ties between ranks
    yield 0.0, 3, 0.0, np.zeros(3), 0.0                                              # nothing takes time
    yield 1.234567, 1, 0.1, np.array([0.3]), 0.2
    for _ in range(20):
        world = int(rng.integers(1, 70))
        compute = rng.choice([0.0, 1e-4, 7e-4], size=world) if rng.random() < 0.3 else rng.exponential(1e-3, world)
        yield float(rng.exponential(1.0)), world, float(rng.exponential(1e-3)), compute, float(rng.exponential(1e-3))


@pytest.mark.parametrize("case", list(_cases()))
def test_one_chunk_without_simpy_equals_simpy(case):
    t0, world, first_s, compute, second_s = case
    sent = np.arange(world) * 1000.0 + 7
    ids = [int(r) * 2 for r in range(world)]
    first, second = ("dispatch_a2a", first_s, sent), ("combine_a2a", second_s, sent[::-1])
    a, end_a = _moe_section_simpy(t0, world, first, compute, second, 1, 3, "forward", ids)
    b, end_b = _moe_section_unpipelined(t0, world, first, compute, second, 3, "forward", ids)
    assert end_a == end_b
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    c, end_c = _moe_section(t0, world, first, compute, second, 1, 3, "forward", ranks=np.array(ids))
    assert end_c == end_a and [r.to_dict() for r in c] == [r.to_dict() for r in a]


def test_negative_times_still_reach_simpy():
    with pytest.raises(ValueError):
        _moe_section(0.0, 2, ("dispatch_a2a", 1e-3, np.ones(2)), np.array([1e-3, -1e-3]),
                     ("combine_a2a", 1e-3, np.ones(2)), 1, 0, "forward")
