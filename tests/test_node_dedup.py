"""The executor's node-deduplicated dispatch (`alltoall: node_dedup`): what it sends, and its refusals.

Its numerics are checked against the dense reference by `executor check` (tests/test_executor_distributed.py,
cases topk-k4-node-dedup and topk-k2-node-dedup-fp8 on 2 and 4 ranks, with the expected bytes of both stages
counted from the global plan)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lshsim.algorithms import algorithm_names, canonical_algorithm
from lshsim.executor.launch import launch
from lshsim.executor.workload import WorkloadConfig

WORKLOAD = """\
name: {name}
tokens_per_rank: 96
d_model: 32
d_ffn: 48
num_experts: 8
gpus_per_node: 2
alltoall: {alltoall}
router: {{name: topk, k: 4, capacity_factor: null}}
dtype: float32
iterations: 1
warmup: 0
sync_phases: false
"""


def test_the_executor_implements_node_dedup_and_refuses_it_with_lsh():
    assert "node_dedup" in algorithm_names("executor")
    assert canonical_algorithm("deepep", side="executor") == "node_dedup"
    with pytest.raises(ValueError, match="'alltoall'.*nothing to deduplicate"):
        WorkloadConfig(tokens_per_rank=4, d_model=8, d_ffn=8, num_experts=4, alltoall="node_dedup",
                       lsh={"family": "hyperplane", "num_hashes": 2})


def test_node_dedup_sends_each_token_once_per_node_over_the_network(tmp_path):
    """4 ranks on 2 emulated nodes, top-4 of 8 experts: the same routing run direct and node_dedup.
    Between nodes, node_dedup sends each token once per destination node (at most the direct rows,
    and fewer when a token has two choices on one node); inside the nodes it adds the forwarded copies;
    the direct layer's rows per (source, destination) are the same in both runs."""
    paths = []
    for alltoall in ("direct", "node_dedup"):
        paths.append(tmp_path / f"{alltoall}.yaml")
        paths[-1].write_text(WORKLOAD.format(name=alltoall.replace("_", "-"), alltoall=alltoall))
    # both workloads in one launch (run one after another on the same 4 ranks, one trace each): one start-up
    result = launch(4, ["run", "--workload", *map(str, paths), "--out-dir", str(tmp_path / "out"), "--threads", "1"],
                    timeout_s=240, stall_timeout_s=120)
    assert result.exit_code == 0, result.message
    traces = {alltoall: json.loads((tmp_path / "out" / f"{alltoall.replace('_', '-')}.json").read_text())
              for alltoall in ("direct", "node_dedup")}
    row = 32 * 4
    direct = np.array(traces["direct"]["meta"]["measured"]["traffic_bytes"]) // row       # (src, dst) rows
    dedup = np.array(traces["node_dedup"]["meta"]["measured"]["traffic_bytes"]) // row
    tokens = np.array(traces["node_dedup"]["meta"]["measured"]["token_traffic_bytes"]) // row
    assert np.array_equal(tokens, direct)  # the same routing
    node = np.arange(4) // 2
    between = node[:, None] != node[None, :]
    rail = between & ((np.arange(4)[:, None] % 2) == (np.arange(4)[None, :] % 2))
    assert dedup[between & ~rail].sum() == 0          # the network carries rows to rail peers only
    for src in range(4):
        other = 1 - node[src]
        peer = other * 2 + src % 2
        direct_rows = direct[src, node == other].sum()
        assert 0 < dedup[src, peer] <= min(96, direct_rows)  # each token at most once per node
        assert dedup[src, peer] < direct_rows         # top-4 of 8: many tokens have 2+ choices on a node
    assert dedup[between].sum() < direct[between].sum()
