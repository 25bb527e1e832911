"""A toy phase registered as one module + one registry entry runs end to end: the step schedule, the
trace, the breakdown (booked by its kind), lshsim validate's phase list and the executor's timer."""
import copy
from pathlib import Path

import pytest

from lshsim.models import ModelConfig
from lshsim.sim.moe_step import simulate_step
from lshsim.sim.phases import PHASES, step_schedule
from lshsim.sim.trace import PhaseRecord, Trace
from lshsim.sim.validate import validate_trace
from lshsim.topology import load_topology
from plugins import toy_phase

# 4 layers, every second one MoE: two MoE layers per step
TINY = ModelConfig("tiny", num_layers=4, d_model=256, d_ffn=1024, num_experts=16, seq_len=256, tokens_per_gpu=512,
                   vocab_size=1000)
DATA = Path(__file__).resolve().parent / "data" / "validate"


@pytest.fixture(scope="module")
def v100():
    return load_topology("lshmoe-v100-2x8")


@pytest.fixture(scope="module")
def plain(v100):
    """The step before any registration."""
    return simulate_step(TINY, v100)


@pytest.fixture
def router_sync():
    spec = toy_phase.register()
    yield spec
    toy_phase.unregister()
    assert toy_phase.NAME not in PHASES


@pytest.fixture
def router_sync_as_communication():
    spec = toy_phase.register(kind="communication")
    yield spec
    toy_phase.unregister()


def test_toy_phase_is_scheduled_after_the_gate_in_both_passes(router_sync):
    assert PHASES.index(toy_phase.NAME) == PHASES.index("gate") + 1
    names = [(direction, [spec.name for spec in phases], layer) for direction, phases, layer in step_schedule(2, 2)]
    forward = [n for d, n, _ in names if d == "forward"]
    assert forward == [["attention"], ["dense_ffn"], ["attention"], ["gate"], ["router_sync"],
                       ["dispatch_a2a", "expert", "combine_a2a"], ["other"]]
    backward = [n for d, n, _ in names if d == "backward"]
    assert backward[:4] == [["other"], ["combine_a2a", "expert", "dispatch_a2a"], ["router_sync"], ["gate"]]


def test_toy_phase_runs_end_to_end_in_the_step(v100, plain, router_sync):
    result = simulate_step(TINY, v100, traffic=plain.traffic)
    records = result.trace.select(name=toy_phase.NAME)
    moe_layers = [1, 3]
    assert {(r.layer, r.direction) for r in records} == {(l, d) for l in moe_layers for d in ("forward", "backward")}
    assert len(records) == 2 * len(moe_layers) * 16  # every rank
    durations = result.trace.phase_durations_s()
    assert durations[toy_phase.NAME] == pytest.approx(2 * len(moe_layers) * toy_phase.SYNC_S)
    # the step is the plain step plus the toy phase; nothing else moved
    breakdown = result.breakdown
    assert breakdown["step_s"] == pytest.approx(plain.breakdown["step_s"] + durations[toy_phase.NAME])
    assert breakdown["phases_s"][toy_phase.NAME] == durations[toy_phase.NAME]
    for name, seconds in plain.breakdown["phases_s"].items():
        assert breakdown["phases_s"][name] == pytest.approx(seconds)
    # booked by its kind: overhead runs on the compute stream, so the all-to-all time is unchanged
    assert breakdown["a2a_s"] == pytest.approx(plain.breakdown["a2a_s"])
    assert breakdown["exposed_a2a_s"] == pytest.approx(plain.breakdown["exposed_a2a_s"])
    # the trace of a registered phase round-trips through the schema
    assert Trace.from_dict(result.trace.to_dict()).phase_durations_s() == durations


def test_toy_phase_is_booked_by_its_kind(v100, plain, router_sync_as_communication):
    result = simulate_step(TINY, v100, traffic=plain.traffic)
    sync_s = result.trace.phase_durations_s()[toy_phase.NAME]
    assert result.breakdown["a2a_s"] == pytest.approx(plain.breakdown["a2a_s"] + sync_s)


def test_toy_phase_in_validates_phase_list(router_sync):
    trace = Trace.from_json(DATA / "x4" / "gpu-uniform-d1024-t4k.json")
    data = copy.deepcopy(trace.to_dict())
    measured_s = 3e-5
    data["meta"]["measured"]["phases_s"]["forward"][toy_phase.NAME] = measured_s
    data["phases"] += [PhaseRecord(toy_phase.NAME, rank, 0.0, measured_s).to_dict() for rank in range(4)]
    validation = validate_trace(Trace.from_dict(data), DATA / "h200-x4-insitu.yaml")
    forward = [row for row in validation.rows if row.direction == "forward"]
    assert [row.phase for row in forward] == [name for name in PHASES if name in {row.phase for row in forward}]
    row = next(row for row in forward if row.phase == toy_phase.NAME)
    assert row.measured_s == measured_s and row.predicted_s == toy_phase.SYNC_S
    assert row.rel_error == pytest.approx((toy_phase.SYNC_S - measured_s) / measured_s)


def test_executor_timer_times_only_timed_phases(router_sync):
    torch = pytest.importorskip("torch")
    from lshsim.executor.timing import PhaseTimer

    timer = PhaseTimer(torch.device("cpu"))
    timer.start_iteration()
    with pytest.raises(ValueError, match="router_sync.*not timed"):
        timer.begin(toy_phase.NAME)
    with pytest.raises(ValueError, match="not timed in the backward"):
        timer.begin("gate", "backward")


def test_unregistering_restores_the_original_step(v100, plain):
    toy_phase.register()
    toy_phase.unregister()
    again = simulate_step(TINY, v100, traffic=plain.traffic)
    assert again.trace.to_dict() == plain.trace.to_dict()
    assert again.breakdown == plain.breakdown
    with pytest.raises(ValueError, match="not a known phase"):
        PhaseRecord(toy_phase.NAME, 0, 0.0, 1.0)


def test_registry_refuses_duplicates_and_broken_sections():
    from lshsim.sim.phases import PhaseCost, PhaseSpec, register_phase

    with pytest.raises(ValueError, match="already registered"):
        register_phase(PHASES["gate"])
    with pytest.raises(ValueError, match="pipelined"):
        register_phase(PhaseSpec("extra_a2a", "communication", "moe", lambda ctx, d, n: PhaseCost(0.0),
                                 pipelined=True))
    with pytest.raises(ValueError, match="built in"):
        PHASES.unregister("gate")
    assert "extra_a2a" not in PHASES
