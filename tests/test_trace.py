"""The Trace schema: validation, JSON round trip, phase durations, Chrome trace export."""
import json

import pytest

from lshsim.sim.trace import PHASES, SCHEMA, PhaseRecord, Trace


def _meta(source="simulated", **provenance):
    return {"source": source, "workload": {"model": "toy"}, "cluster": {"name": "toy", "gpus": 2},
            "provenance": provenance}


def _toy_trace() -> Trace:
    records = [
        PhaseRecord("gate", 0, 0.0, 1.0e-3),
        PhaseRecord("gate", 1, 0.0, 1.5e-3),
        PhaseRecord("dispatch_a2a", 0, 1.5e-3, 4.0e-3, bytes=1000),
        PhaseRecord("dispatch_a2a", 1, 1.5e-3, 3.0e-3, bytes=2000),
        # two chunks of expert compute on rank 0, one on rank 1, in layer 1
        PhaseRecord("expert", 0, 4.0e-3, 5.0e-3, layer=1),
        PhaseRecord("expert", 0, 5.0e-3, 6.5e-3, layer=1),
        PhaseRecord("expert", 1, 4.0e-3, 6.0e-3, layer=1),
        PhaseRecord("dispatch_a2a", 0, 7.0e-3, 9.0e-3, bytes=1000, direction="backward"),
        PhaseRecord("dispatch_a2a", 1, 7.0e-3, 10.0e-3, bytes=2000, direction="backward"),
    ]
    return Trace(records, _meta())


def test_phase_durations_max_over_ranks_sum_over_instances():
    trace = _toy_trace()
    durations = trace.phase_durations_s()
    assert durations["gate"] == pytest.approx(1.5e-3)
    # forward instance: max(2.5, 1.5) ms; backward instance: max(2, 3) ms
    assert durations["dispatch_a2a"] == pytest.approx(2.5e-3 + 3.0e-3)
    # rank 0 sums its two chunks (2.5 ms) and beats rank 1 (2 ms)
    assert durations["expert"] == pytest.approx(2.5e-3)
    assert list(durations) == [name for name in PHASES if name in durations]
    forward = trace.phase_durations_s("forward")
    assert forward["dispatch_a2a"] == pytest.approx(2.5e-3)
    assert trace.phase_durations_s("backward") == {"dispatch_a2a": pytest.approx(3.0e-3)}
    assert trace.total_time_s() == pytest.approx(10.0e-3)
    assert trace.total_time_s("backward") == pytest.approx(3.0e-3)
    assert trace.phase_bytes()["dispatch_a2a"] == 6000
    assert trace.num_ranks == 2


def test_json_round_trip(tmp_path):
    trace = _toy_trace()
    path = tmp_path / "trace.json"
    trace.to_json(path)
    again = Trace.from_json(path)
    assert again.phases == trace.phases
    assert again.meta == trace.meta
    assert Trace.from_dict(trace.to_dict()).phases == trace.phases
    assert json.loads(path.read_text())["schema"] == SCHEMA


def test_rows_are_tidy():
    rows = _toy_trace().rows()
    assert len(rows) == 9
    assert set(rows[0]) == {"name", "rank", "start_s", "end_s", "bytes", "layer", "direction", "duration_s",
                            "source"}
    assert rows[2]["duration_s"] == pytest.approx(2.5e-3)


def test_chrome_trace_structure(tmp_path):
    trace = _toy_trace()
    path = tmp_path / "chrome.json"
    trace.to_chrome_trace(path)
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(trace.phases)
    for event, record in zip(complete, trace.phases):
        assert event["name"] == record.name
        assert event["pid"] == record.rank
        assert event["tid"] == PHASES.index(record.name)
        assert event["ts"] == pytest.approx(record.start_s * 1e6)
        assert event["dur"] == pytest.approx((record.end_s - record.start_s) * 1e6)
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
    names = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert (0, "dispatch_a2a") in names and (1, "expert") in names
    processes = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert processes == {0: "rank 0", 1: "rank 1"}


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "warp"}, "name"),
    ({"rank": -1}, "rank"),
    ({"end_s": -1.0}, "end_s"),
    ({"start_s": float("nan")}, "start_s"),
    ({"bytes": -5}, "bytes"),
    ({"bytes": 1.5}, "bytes"),
    ({"layer": -2}, "layer"),
    ({"direction": "sideways"}, "direction"),
])
def test_record_validation_names_field(kwargs, field):
    base = {"name": "gate", "rank": 0, "start_s": 0.0, "end_s": 1.0}
    with pytest.raises(ValueError, match=field):
        PhaseRecord(**{**base, **kwargs})


def test_meta_validation():
    with pytest.raises(ValueError, match="source"):
        Trace([], {"workload": {}, "cluster": {}, "provenance": {}})
    with pytest.raises(ValueError, match="source"):
        Trace([], _meta(source="guessed"))
    with pytest.raises(ValueError, match="nccl"):
        Trace([], _meta(source="measured", gpu="A100", count=8, torch="2.13", date="2026-01-01", command="x"))
    measured = Trace([], _meta(source="measured", gpu="A100", count=8, torch="2.13", nccl=None,
                               date="2026-01-01", command="torchrun ..."))
    assert measured.total_time_s() == 0.0


def test_from_dict_names_bad_field():
    data = _toy_trace().to_dict()
    data["phases"][3]["direction"] = "up"
    with pytest.raises(ValueError, match=r"phases\[3\].*direction"):
        Trace.from_dict(data)
    data = _toy_trace().to_dict()
    del data["phases"][0]["end_s"]
    with pytest.raises(ValueError, match="end_s"):
        Trace.from_dict(data)
    with pytest.raises(ValueError, match="schema"):
        Trace.from_dict({"meta": _meta(), "phases": []})


def test_from_json_rejects_garbage(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        Trace.from_json(path)
