"""Workload YAML schema (executor/workload.py): valid files load, every error names its field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lshsim.executor.workload import WorkloadConfig, load_workload

REPO = Path(__file__).resolve().parents[1]
BASE = {"tokens_per_rank": 64, "d_model": 32, "d_ffn": 64, "num_experts": 4}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_workloads_load_and_round_trip():
    files = sorted((REPO / "data" / "workloads").glob("*.yaml"))
    assert len(files) >= 14
    for path in files:
        workload = load_workload(path)
        assert WorkloadConfig.from_dict(workload.to_dict()) == workload
        assert workload.name == path.stem


def test_defaults_and_hash_router_gets_k1(tmp_path):
    workload = load_workload(_write(tmp_path, {**BASE, "router": {"name": "hash", "capacity_factor": None}}))
    assert workload.router.k == 1 and workload.router.capacity_factor is None
    assert workload.alltoall == "direct" and workload.backward and workload.iterations == 5


@pytest.mark.parametrize("change, field", [
    ({"d_model": 0}, "d_model"),
    ({"tokens_per_rank": "many"}, "tokens_per_rank"),
    ({"dtype": "fp8"}, "dtype"),
    ({"alltoall": "ring"}, "alltoall"),
    ({"placement": "random"}, "placement"),
    ({"skew": -1.0}, "skew"),
    ({"warmup": -1}, "warmup"),
    ({"backward": "yes"}, "backward"),
    ({"inputs": "hidden.csv"}, "inputs"),
    ({"input_clusters": 0}, "input_clusters"),
    ({"input_noise": float("nan")}, "input_noise"),
    ({"colour": "blue"}, "colour"),
    ({"router": {"name": "topk", "k": 0}}, "router.k"),
    ({"router": {"name": "nope"}}, "router.name"),
    ({"router": {"name": "topk", "capacity_factor": -2}}, "router.capacity_factor"),
    ({"router": {"name": "topk", "drop_policy": "random"}}, "router.drop_policy"),
    ({"router": {"name": "topk", "temperature": 1.0}}, "router.temperature"),
    ({"router": {"name": "locmoe"}, "d_model": 30}, "d_model"),
    ({"world_size": 3}, "num_experts"),
])
def test_schema_errors_name_the_field(tmp_path, change, field):
    with pytest.raises(ValueError, match=f"workload field '{field}'"):
        load_workload(_write(tmp_path, {**BASE, **change}))


def test_missing_required_field_and_bad_yaml(tmp_path):
    with pytest.raises(ValueError, match="workload field 'd_ffn': missing"):
        load_workload(_write(tmp_path, {k: v for k, v in BASE.items() if k != "d_ffn"}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens_per_rank: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_workload(bad)
    with pytest.raises(ValueError, match="must be a mapping"):
        load_workload(_write(tmp_path, [1, 2, 3]))


def test_lsh_block_is_checked_against_lshconfig(tmp_path):
    ok = load_workload(_write(tmp_path, {**BASE, "lsh": {"num_hashes": 2, "proj_dim": 4}}))
    assert ok.lsh_config().num_hashes == 2
    with pytest.raises(ValueError, match="workload field 'lsh.buckets'"):
        load_workload(_write(tmp_path, {**BASE, "lsh": {"buckets": 3}})).lsh_config()
    with pytest.raises(ValueError, match="workload field 'lsh'"):
        load_workload(_write(tmp_path, {**BASE, "lsh": {"num_hashes": 0}})).lsh_config()


def test_check_world(tmp_path):
    workload = load_workload(_write(tmp_path, {**BASE, "gpus_per_node": 2}))
    workload.check_world(4)
    assert workload.ranks_per_node(4) == 2 and workload.ranks_per_node(1) == 1
    with pytest.raises(ValueError, match="workload field 'num_experts'"):
        workload.check_world(3)
    pinned = load_workload(_write(tmp_path, {**BASE, "world_size": 2}))
    with pytest.raises(ValueError, match="workload field 'world_size'"):
        pinned.check_world(4)


def test_a_plugin_router_with_options_and_a_fixed_k(tmp_path):
    """A registered router's options travel through the workload file; its fixed k is filled in."""
    from lshsim.dispatch.routers import register_router, route_topk, unregister_router

    def sharp_top3(logits, placement, *, token_rank=None, capacity_factor, temperature):
        return route_topk(logits / temperature, placement, k=3, capacity_factor=capacity_factor, token_rank=token_rank)

    register_router("sharp", sharp_top3, "logits", params=("capacity_factor",), options={"temperature": 1.0},
                    fixed_k=3)
    try:
        workload = load_workload(_write(tmp_path, {**BASE, "router": {"name": "sharp",
                                                                      "options": {"temperature": 0.5}}}))
        assert workload.router.k == 3 and dict(workload.router.options) == {"temperature": 0.5}
        assert workload.to_dict()["router"]["options"] == {"temperature": 0.5}
        assert WorkloadConfig.from_dict(workload.to_dict()) == workload
        with pytest.raises(ValueError, match="workload field 'router.options'"):
            load_workload(_write(tmp_path, {**BASE, "router": {"name": "sharp", "options": {"heat": 2}}}))
    finally:
        unregister_router("sharp")
    assert "options" not in load_workload(_write(tmp_path, BASE)).to_dict()["router"]
