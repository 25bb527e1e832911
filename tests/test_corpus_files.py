"""Issue 17: a corpus of malformed input FILES, every format, each refused with one line naming the
file, the field and the value (a ValueError in the library; exit code 2 and one line, no traceback,
through the command line).

Formats: topology YAML (with its `calibration:` block and inline GPUs), executor workload YAML,
model YAML, traffic JSON (a [W][W] matrix or `lshsim route --json` output), executor trace JSON
(its measured meta), nccl-tests `alltoall_perf` logs, the executor's microbenchmark raw JSON, and
the workload's `inputs` file. Each case is (id, file name, text, expected substrings): the reader
must raise ValueError whose message is one line and contains the file's name and every substring.
A few hypothesis strategies mutate the numbers of valid files at random.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lshsim.calibration.sources import read_microbenchmarks, read_nccl_tests, read_traces
from lshsim.executor.workload import load_workload
from lshsim.models import load_model
from lshsim.readers import dump_yaml, load_yaml
from lshsim.sim.trace import Trace
from lshsim.sim.traffic import load_traffic
from lshsim.topology import load_topology

DATA = Path(__file__).parent / "data"
NCCL_LOG = (DATA / "nccl_tests_alltoall_perf.txt").read_text()

# ---- valid bases ---------------------------------------------------------------------------------
TOPOLOGY = {
    "name": "t", "gpu": "h100", "nodes": 2, "gpus_per_node": 4, "alpha_s": 1.0e-5,
    "intra": {"kind": "nvswitch", "link_Bps": 450.0e9, "latency_s": 1.0e-6, "pcie_Bps": 50.0e9,
              "pcie_latency_s": 1.0e-6},
    "inter": {"kind": "fat_tree", "nics_per_node": 4, "nic_gbps": 400, "servers_per_leaf": 2,
              "oversubscription": 1.0, "latency_s": 1.0e-6},
    "calibration": {"alpha_s": 2.0e-5, "nvlink_Bps": 3.7e11, "nic_Bps": 4.8e10, "pcie_Bps": 2.4e10,
                    "expert_flops": 7.0e14, "hbm_Bps": 2.9e12,
                    "a2a_busbw_curve": [[2.1e6, 9.0e10], [1.2e9, 3.3e11]], "a2a_link_headroom": 1.2,
                    "a2a_link_max_Bps": 3.5e11, "provenance": {"who": "test"}},
}
WORKLOAD = {"name": "w", "tokens_per_rank": 64, "d_model": 16, "d_ffn": 32, "num_experts": 4,
            "router": {"name": "topk", "k": 2, "capacity_factor": 1.25, "locality_bonus": 1.0},
            "skew": 0.0, "seed": 0, "input_noise": 0.0, "warmup": 1, "iterations": 2, "world_size": 2,
            "gpus_per_node": 2, "backward": True, "sync_phases": True, "dtype": "auto",
            "alltoall": "direct", "placement": "contiguous", "role": "calibration",
            "lsh": {"num_hashes": 4}}
MODEL = {"name": "m", "num_layers": 4, "d_model": 64, "d_ffn": 128, "num_experts": 8, "seq_len": 128,
         "tokens_per_gpu": 256, "top_k": 2, "moe_every": 2, "vocab_size": 1000, "bytes_per_element": 2,
         "attention_window": 64, "source": "test", "notes": "", "assumed": ["seq_len"]}
TRACE = {"schema": "lshsim.trace/1", "meta": {
    "source": "measured",
    "workload": {"name": "cal-x", "world_size": 2, "d_model": 8, "d_ffn": 16, "num_experts": 2, "skew": 0.0,
                 "alltoall": "direct", "role": "calibration"},
    "cluster": {"gpu": "NVIDIA H200", "gpus": 2},
    "provenance": {"gpu": "NVIDIA H200", "count": 2, "torch": "t", "nccl": "n", "date": "d", "command": "c"},
    "measured": {"traffic_bytes": [[0, 4096], [4096, 0]], "combine_traffic_bytes": [[0, 4096], [4096, 0]],
                 "bytes_per_token": 16,
                 "phases_s": {"forward": {"dispatch_a2a": 1e-4, "combine_a2a": 1e-4, "expert": 2e-4},
                              "backward": {"dispatch_a2a": 1e-4, "combine_a2a": 1e-4}}}},
    "phases": [{"name": "dispatch_a2a", "rank": 0, "start_s": 0.0, "end_s": 1e-4, "bytes": 4096, "layer": 0,
                "direction": "forward"}]}
RAW = {"results": {"world_size": 2, "a2a": [{"bytes_per_rank": 4096, "time_s": 1e-5},
                                            {"bytes_per_rank": 1 << 20, "time_s": 2e-5}],
                   "p2p": [{"bytes": 1 << 20, "time_s": 1e-5, "Bps": 1e11}],
                   "ffn": {"flops_per_s": 7e14, "dtype": "bfloat16", "d_model": 4096}, "hbm": {"Bps": 4e12}},
       "provenance": {"gpu": "NVIDIA H200"}}


def _set(doc: dict, path: str, value) -> dict:
    """A deep copy of `doc` with the dotted `path` set to `value` (a missing value: DELETE)."""
    out = copy.deepcopy(doc)
    keys = path.split(".")
    node = out
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


DELETE = object()

# bad values and the text each message must show (YAML text, repr in the message)
NAN, INF = float("nan"), float("inf")
BAD_FLOATS = [(NAN, "nan"), (INF, "inf"), (-1.0, "-1"), (True, "True"), ("1000000", "'1000000'"),
              ([1], "[1]")]
BAD_INTS = [(0, "0"), (-3, "-3"), (2.5, "2.5"), (True, "True"), ("4", "'4'"), (NAN, "nan")]

TOPOLOGY_FLOATS = {  # field: zero allowed
    "alpha_s": True, "intra.link_Bps": False, "intra.latency_s": True, "intra.pcie_Bps": False,
    "intra.pcie_latency_s": True, "inter.nic_gbps": False, "inter.oversubscription": False,
    "inter.latency_s": True, "calibration.alpha_s": True, "calibration.nvlink_Bps": False,
    "calibration.nic_Bps": False, "calibration.pcie_Bps": False, "calibration.expert_flops": False,
    "calibration.hbm_Bps": False, "calibration.a2a_link_headroom": False, "calibration.a2a_link_max_Bps": False}
TOPOLOGY_INTS = ["nodes", "gpus_per_node", "inter.nics_per_node", "inter.servers_per_leaf"]


def _yaml(doc) -> str:
    """YAML text of `doc`; a string such as '1e9' is quoted (text), as `dump_yaml` writes it."""
    return dump_yaml(doc)


def _cases():
    cases = []

    def add(fmt, case_id, text, *expect, name=None):
        cases.append(pytest.param(fmt, name or {"topology": "topo.yaml", "workload": "work.yaml",
                                                "model": "model.yaml", "traffic": "traffic.json",
                                                "trace": "trace.json", "nccl": "nccl.log",
                                                "raw": "raw.json"}[fmt], text, expect, id=f"{fmt}-{case_id}"))

    # ---- topology: every number field x every bad value ------------------------------------------
    for field, zero_ok in TOPOLOGY_FLOATS.items():
        for value, shown in BAD_FLOATS + ([] if zero_ok else [(0, "0")]):
            add("topology", f"{field}={shown}", _yaml(_set(TOPOLOGY, field, value)), field, shown)
    for field in TOPOLOGY_INTS:
        for value, shown in BAD_INTS:
            add("topology", f"{field}={shown}", _yaml(_set(TOPOLOGY, field, value)), field, shown)
    sizes = [("gpus_per_node", 100000, "100000"), ("nodes", 100000, "100000"), ("inter.nics_per_node", 5, "5")]
    for field, value, shown in sizes:
        add("topology", f"size-{field}={shown}", _yaml(_set(TOPOLOGY, field, value)), field, shown)
    curve = "calibration.a2a_busbw_curve"
    for case_id, value, expect in [
            ("one-point", [[1e6, 5e10]], (curve,)), ("not-increasing", [[1e9, 5e10], [1e6, 6e10]], (curve + "[1][0]",)),
            ("nan-entry", [[1e6, NAN], [1e9, 3e11]], (curve + "[0][1]", "nan")),
            ("text-entry", [[1e6, "5e10"], [1e9, 3e11]], (curve + "[0][1]", "'5e10'")),
            ("bool-entry", [[True, 5e10], [1e9, 3e11]], (curve + "[0][0]", "True")),
            ("zero-size", [[0, 5e10], [1e9, 3e11]], (curve + "[0][0]", "0")),
            ("triple", [[1e6, 5e10, 1], [1e9, 3e11]], (curve + "[0]",)), ("scalar", 5, (curve, "5"))]:
        add("topology", f"curve-{case_id}", _yaml(_set(TOPOLOGY, curve, value)), *expect)
    for case_id, path, value, expect in [
            ("name-missing", "name", DELETE, ("name", "None")), ("name-number", "name", 5, ("name", "5")),
            ("gpu-missing", "gpu", DELETE, ("gpu", "None")), ("gpu-unknown", "gpu", "h300", ("gpu", "'h300'")),
            ("gpu-list", "gpu", ["h100"], ("gpu", "['h100']")),
            ("gpu-inline-bool", "gpu", {"base": "h100", "peak_flops": True}, ("gpu.peak_flops", "True")),
            ("gpu-inline-text", "gpu", {"base": "h100", "hbm_Bps": "3e12"}, ("gpu.hbm_Bps", "'3e12'")),
            ("gpu-inline-inf", "gpu", {"base": "h100", "peak_flops": INF}, ("gpu.peak_flops", "inf")),
            ("gpu-inline-eff", "gpu", {"base": "h100", "gemm_efficiency": 1.5}, ("gpu.gemm_efficiency", "1.5")),
            ("gpu-inline-field", "gpu", {"base": "h100", "tflops": 1}, ("gpu.tflops",)),
            ("gpu-inline-missing", "gpu", {"name": "x", "peak_flops": 1e12}, ("gpu.hbm_Bps",)),
            ("gpu-inline-base", "gpu", {"base": 7}, ("gpu.base", "7")),
            ("gpus_per_node-missing", "gpus_per_node", DELETE, ("gpus_per_node", "None")),
            ("intra-missing", "intra", DELETE, ("intra", "None")), ("intra-list", "intra", [1], ("intra", "[1]")),
            ("intra-kind-unknown", "intra.kind", "torus", ("intra.kind", "'torus'")),
            ("intra-kind-list", "intra.kind", ["nvswitch"], ("intra.kind", "['nvswitch']")),
            ("intra-unknown-field", "intra.rign_Bps", 1e9, ("intra.rign_Bps", "1000000000.0")),
            ("intra-other-family", "intra.group_size", 2, ("intra.group_size", "2", "full_mesh")),
            ("inter-missing", "inter", DELETE, ("inter", "None")),
            ("inter-kind-unknown", "inter.kind", "dragonfly", ("inter.kind", "'dragonfly'")),
            ("inter-nic_gbps-missing", "inter.nic_gbps", DELETE, ("inter.nic_gbps", "None")),
            ("top-unknown-field", "gpus", 8, ("gpus", "8")),
            ("description-number", "description", 5, ("description", "5")),
            ("calibration-list", "calibration", [1], ("calibration", "[1]")),
            ("calibration-unknown", "calibration.nvlink_bps", 1e9, ("calibration.nvlink_bps",)),
            ("provenance-list", "calibration.provenance", [1], ("calibration.provenance", "[1]")),
            ("headroom-below-1", "calibration.a2a_link_headroom", 0.5, ("calibration.a2a_link_headroom", "0.5")),
            ("links-unknown-class", "calibration.links", {"warp": {"busbw_curve": [[1e6, 1e9], [1e9, 2e9]]}},
             ("calibration.links",)),
            ("links-both-nvlink", "calibration.links", {"nvlink": {"busbw_curve": [[1e6, 1e9], [1e9, 2e9]]}},
             ("calibration.links",))]:
        add("topology", case_id, _yaml(_set(TOPOLOGY, path, value)), *expect)
    text = _yaml(TOPOLOGY)
    for case_id, bad, expect in [
            ("dup-top-key", text + "gpus_per_node: 8\n", ("gpus_per_node", "given twice")),
            ("dup-nested-key", text.replace("  kind: nvswitch\n", "  kind: nvswitch\n  kind: pcie\n"),
             ("'kind'", "given twice")),
            ("syntax", "name: [t\n", ("not valid YAML",)), ("tab", "name: t\n\tgpu: h100\n", ("not valid YAML",)),
            ("empty", "", ("empty",)), ("comment-only", "# nothing\n", ("empty",)),
            ("top-list", "- 1\n- 2\n", ("mapping", "list")), ("top-scalar", "42\n", ("mapping", "int")),
            ("binary", "\x00\x01", ("not valid YAML",))]:
        add("topology", case_id, bad, *expect)

    # ---- workload ----------------------------------------------------------------------------------
    for field in ("tokens_per_rank", "d_model", "d_ffn", "num_experts", "iterations"):
        for value, shown in BAD_INTS:
            add("workload", f"{field}={shown}", _yaml(_set(WORKLOAD, field, value)), field, shown)
    for case_id, path, value, expect in [
            ("warmup-neg", "warmup", -1, ("warmup", "-1")), ("warmup-bool", "warmup", True, ("warmup", "True")),
            ("seed-float", "seed", 1.5, ("seed", "1.5")), ("seed-huge", "seed", 2 ** 70, ("seed", str(2 ** 70))),
            ("world_size-0", "world_size", 0, ("world_size", "0")),
            ("gpus_per_node-text", "gpus_per_node", "2", ("gpus_per_node", "'2'")),
            ("skew-nan", "skew", NAN, ("skew", "nan")), ("skew-neg", "skew", -0.5, ("skew", "-0.5")),
            ("skew-text", "skew", "0.5", ("skew", "'0.5'")), ("skew-bool", "skew", True, ("skew", "True")),
            ("noise-inf", "input_noise", INF, ("input_noise", "inf")),
            ("clusters-0", "input_clusters", 0, ("input_clusters", "0")),
            ("k-0", "router.k", 0, ("router.k", "0")), ("k-bool", "router.k", True, ("router.k", "True")),
            ("cf-nan", "router.capacity_factor", NAN, ("router.capacity_factor", "nan")),
            ("cf-neg", "router.capacity_factor", -1.0, ("router.capacity_factor", "-1")),
            ("bonus-inf", "router.locality_bonus", INF, ("router.locality_bonus", "inf")),
            ("router-unknown", "router.name", "nope", ("router.name", "'nope'")),
            ("router-name-list", "router.name", ["topk"], ("router.name", "['topk']")),
            ("router-field", "router.topk", 2, ("router.topk", "2")),
            ("router-list", "router", [1], ("router", "[1]")),
            ("router-options-list", "router.options", [1], ("router.options", "[1]")),
            ("drop-unknown", "router.drop_policy", "random", ("drop_policy", "'random'")),
            ("backward-text", "backward", "yes", ("backward", "'yes'")),
            ("sync-int", "sync_phases", 1, ("sync_phases", "1")),
            ("dtype-unknown", "dtype", "fp8", ("dtype", "'fp8'")), ("dtype-list", "dtype", ["auto"], ("dtype", "['auto']")),
            ("placement-unknown", "placement", "random", ("placement", "'random'")),
            ("role-unknown", "role", "train", ("role", "'train'")),
            ("alltoall-unknown", "alltoall", "ring", ("alltoall", "'ring'")),
            ("inputs-ext", "inputs", "tokens.csv", ("inputs", "'tokens.csv'")),
            ("lsh-list", "lsh", [1], ("lsh", "[1]")), ("lsh-field", "lsh.buckets", 4, ("lsh.buckets",)),
            ("lsh-hashes-0", "lsh.num_hashes", 0, ("num_hashes", "0")),
            ("name-dotdot", "name", "../x", ("name", "'../x'")), ("name-slash", "name", "a/b", ("name", "'a/b'")),
            ("name-hidden", "name", ".hidden", ("name", "'.hidden'")), ("name-empty", "name", "", ("name", "''")),
            ("name-number", "name", 7, ("name", "7")), ("name-inner-dotdot", "name", "a..b", ("name", "'a..b'")),
            ("name-backslash", "name", "a\\b", ("name", "a\\\\b")),
            ("d_model-1e12", "d_model", 1e12, ("d_model", "1000000000000.0")),
            ("d_model-huge-int", "d_model", 10 ** 12, ("d_model", "1000000000000", "limit")),
            ("tokens-2e9", "tokens_per_rank", 2_000_000_000, ("tokens_per_rank", "2000000000", "limit")),
            ("experts-huge", "num_experts", 1 << 20, ("num_experts", str(1 << 20), "limit")),
            ("experts-not-divisible", "num_experts", 3, ("num_experts", "3")),
            ("unknown-field", "tokens", 5, ("tokens", "5")),
            ("required-missing", "d_ffn", DELETE, ("d_ffn", "missing"))]:
        add("workload", case_id, _yaml(_set(WORKLOAD, path, value)), *expect)
    text = _yaml(WORKLOAD)
    for case_id, bad, expect in [("dup", text + "d_model: 32\n", ("d_model", "given twice")),
                                 ("syntax", "d_model: {\n", ("not valid YAML",)), ("empty", "", ("empty",)),
                                 ("list", "[1, 2]\n", ("mapping", "list"))]:
        add("workload", case_id, bad, *expect)

    # ---- model -------------------------------------------------------------------------------------
    for field in ("num_layers", "d_model", "d_ffn", "num_experts", "seq_len", "tokens_per_gpu", "top_k",
                  "vocab_size"):
        for value, shown in [(0, "0"), (True, "True"), ("768", "'768'"), (1.5, "1.5")]:
            add("model", f"{field}={shown}", _yaml(_set(MODEL, field, value)), field, shown)
    for case_id, path, value, expect in [
            ("layers-million", "num_layers", 1_000_000, ("num_layers", "1000000", "limit")),
            ("d_model-1e12", "d_model", 1e12, ("d_model", "1000000000000.0")),
            ("d_model-huge", "d_model", 10 ** 12, ("d_model", "1000000000000", "limit")),
            ("bpe-3", "bytes_per_element", 3, ("bytes_per_element", "3")),
            ("top_k-over", "top_k", 16, ("top_k", "16")), ("moe_every-over", "moe_every", 9, ("moe_every", "9")),
            ("window-over", "attention_window", 256, ("attention_window", "256")),
            ("window-0", "attention_window", 0, ("attention_window", "0")),
            ("assumed-text", "assumed", "seq_len", ("assumed", "'seq_len'")),
            ("assumed-unknown", "assumed", ["depth"], ("assumed", "depth")),
            ("source-number", "source", 5, ("source", "5")), ("unknown", "layers", 4, ("layers", "4")),
            ("missing", "seq_len", DELETE, ("seq_len",))]:
        add("model", case_id, _yaml(_set(MODEL, path, value)), *expect)
    text = _yaml(MODEL)
    for case_id, bad, expect in [("dup", text + "d_model: 32\n", ("d_model", "given twice")),
                                 ("syntax", "a: b: c\n", ("not valid YAML",)), ("empty", "", ("empty",)),
                                 ("scalar", "7\n", ("mapping", "int"))]:
        add("model", case_id, bad, *expect)

    # ---- traffic JSON (W = 4) --------------------------------------------------------------------------
    good = [[0, 1, 2, 3], [1, 0, 2, 3], [1, 2, 0, 3], [1, 2, 3, 0]]
    for case_id, value, shown in [("true", True, "True"), ("text", "1000000", "'1000000'"), ("neg", -1, "-1"),
                                  ("null", None, "None"), ("list", [1], "[1]"), ("dict", {}, "{}")]:
        add("traffic", f"entry-{case_id}", json.dumps(_set({"m": good}, "m.1.2", value)["m"]),
            f"traffic[1][2]={shown}")
        add("traffic", f"route-entry-{case_id}",
            json.dumps({"router": "topk", "traffic_bytes": _set({"m": good}, "m.3.0", value)["m"]}),
            f"traffic_bytes[3][0]={shown}")
    for case_id, text_, expect in [
            ("nan", json.dumps(good).replace("2", "NaN", 1), ("nan",)),
            ("inf", json.dumps(good).replace("3", "Infinity", 1), ("inf",)),
            ("shape", json.dumps([[0, 1], [1, 0]]), ("shape (2, 2)", "(4, 4)")),
            ("ragged", json.dumps([[0, 1, 2, 3], [1, 0], [1, 2, 0, 3], [1, 2, 3, 0]]), ("rows of [2, 4]",)),
            ("flat", json.dumps([0, 1, 2, 3]), ("traffic=[0, 1, 2, 3]",)), ("scalar", "5", ("traffic=5",)),
            ("no-field", json.dumps({"traffic": good}), ("traffic_bytes",)),
            ("dup", '{"traffic_bytes": [[0]], "traffic_bytes": [[1]]}', ("traffic_bytes", "given twice")),
            ("syntax", "[[0, 1],", ("not valid JSON",)), ("empty", "", ("empty",)),
            ("deep", json.dumps([[[0]] * 4] * 4), ("traffic[0][0]=[0]",))]:
        add("traffic", case_id, text_, *expect)

    # ---- trace JSON ----------------------------------------------------------------------------------
    for case_id, path, value, expect in [
            ("world-missing", "meta.workload.world_size", DELETE, ("meta.workload.world_size", "missing")),
            ("world-0", "meta.workload.world_size", 0, ("meta.workload.world_size", "0")),
            ("world-bool", "meta.workload.world_size", True, ("meta.workload.world_size", "True")),
            ("world-text", "meta.workload.world_size", "2", ("meta.workload.world_size", "'2'")),
            ("world-huge", "meta.workload.world_size", 1 << 30, ("meta.workload.world_size", str(1 << 30))),
            ("d_model-missing", "meta.workload.d_model", DELETE, ("meta.workload.d_model", "missing")),
            ("d_model-0", "meta.workload.d_model", 0, ("meta.workload.d_model", "0")),
            ("d_model-float", "meta.workload.d_model", 8.0, ("meta.workload.d_model", "8.0")),
            ("d_ffn-missing", "meta.workload.d_ffn", DELETE, ("meta.workload.d_ffn", "missing")),
            ("experts-neg", "meta.workload.num_experts", -2, ("meta.workload.num_experts", "-2")),
            ("skew-nan", "meta.workload.skew", NAN, ("meta.workload.skew", "nan")),
            ("bpt-missing", "meta.measured.bytes_per_token", DELETE, ("meta.measured.bytes_per_token", "missing")),
            ("bpt-0", "meta.measured.bytes_per_token", 0, ("meta.measured.bytes_per_token", "0")),
            ("bpt-odd", "meta.measured.bytes_per_token", 12, ("meta.measured.bytes_per_token", "12")),
            ("bpt-small", "meta.measured.bytes_per_token", 4, ("meta.measured.bytes_per_token", "4")),
            ("time-neg", "meta.measured.phases_s.forward.dispatch_a2a", -1e-4,
             ("meta.measured.phases_s.forward.dispatch_a2a", "-0.0001")),
            ("time-nan", "meta.measured.phases_s.backward.combine_a2a", NAN,
             ("meta.measured.phases_s.backward.combine_a2a", "nan")),
            ("time-inf", "meta.measured.phases_s.forward.expert", INF, ("meta.measured.phases_s.forward.expert", "inf")),
            ("time-0", "meta.measured.phases_s.forward.combine_a2a", 0, ("meta.measured.phases_s.forward.combine_a2a", "0")),
            ("time-text", "meta.measured.phases_s.forward.expert", "2e-4", ("meta.measured.phases_s.forward.expert", "'2e-4'")),
            ("time-bool", "meta.measured.phases_s.forward.expert", True, ("meta.measured.phases_s.forward.expert", "True")),
            ("phase-unknown", "meta.measured.phases_s.forward.warp", 1e-4, ("meta.measured.phases_s.forward", "'warp'")),
            ("direction-unknown", "meta.measured.phases_s.sideways", {}, ("meta.measured.phases_s", "'sideways'")),
            ("phases_s-list", "meta.measured.phases_s", [1], ("meta.measured.phases_s", "[1]")),
            ("matrix-missing", "meta.measured.combine_traffic_bytes", DELETE, ("combine_traffic_bytes", "missing")),
            ("matrix-shape", "meta.measured.traffic_bytes", [[0]], ("traffic_bytes", "(1, 1)")),
            ("matrix-neg", "meta.measured.traffic_bytes.0.1", -5, ("traffic_bytes[0][1]=-5",)),
            ("matrix-nan", "meta.measured.combine_traffic_bytes.1.0", NAN, ("combine_traffic_bytes[1][0]=nan",)),
            ("matrix-bool", "meta.measured.traffic_bytes.1.0", True, ("traffic_bytes[1][0]=True",)),
            ("measured-list", "meta.measured", [1], ("meta.measured", "[1]")),
            ("source-unknown", "meta.source", "guessed", ("meta['source']", "'guessed'")),
            ("provenance-gpu-missing", "meta.provenance.gpu", DELETE, ("provenance", "gpu")),
            ("workload-list", "meta.workload", [1], ("meta['workload']", "list")),
            ("meta-missing", "meta", DELETE, ("meta",)), ("schema", "schema", "lshsim.trace/0", ("schema", "'lshsim.trace/0'")),
            ("record-rank", "phases.0.rank", -1, ("phases[0]", "rank=-1")),
            ("record-end", "phases.0.end_s", -1.0, ("phases[0]", "end_s=-1.0")),
            ("record-nan", "phases.0.start_s", NAN, ("phases[0]", "start_s=nan")),
            ("record-name", "phases.0.name", "warp", ("phases[0]", "name='warp'")),
            ("record-bytes", "phases.0.bytes", 1.5, ("phases[0]", "bytes=1.5")),
            ("record-direction", "phases.0.direction", "up", ("phases[0]", "direction='up'"))]:
        add("trace", case_id, json.dumps(_set(TRACE, path, value)), *expect)
    for case_id, text_, expect in [("syntax", '{"schema": ', ("not valid JSON",)), ("empty", "  \n", ("empty",)),
                                   ("dup", '{"schema": "lshsim.trace/1", "schema": "x"}', ("schema", "given twice")),
                                   ("list", "[]", ("dict", "list"))]:
        add("trace", case_id, text_, *expect)

    # ---- nccl-tests logs -------------------------------------------------------------------------------
    row = "        4096          1024     float    none      -1    20.01    0.20    0.15      0    20.21    0.20    0.15      0"
    for case_id, replacement, expect in [
            ("time-nan", row.replace("20.01", "nan"), ("time='nan'",)), ("time-neg", row.replace("20.01", "-20.01"), ("time='-20.01'",)),
            ("time-zero", row.replace("20.01", " 0.00"), ("time='0.00'",)), ("time-inf", row.replace("20.01", "inf"), ("time='inf'",)),
            ("time-text", row.replace("20.01", "N/A"), ("time='N/A'",)),
            ("size-neg", row.replace("        4096", "       -4096"), ("size='-4096'",)),
            ("size-nan", row.replace("        4096", "         nan"), ("size='nan'",)),
            ("size-float", row.replace("        4096", "      4096.5"), ("size='4096.5'",)),
            ("size-exp", row.replace("        4096", "         4e3"), ("size='4e3'",)),
            ("short-row", "        4096          1024", ("fields",))]:
        add("nccl", case_id, NCCL_LOG.replace(row, replacement), *expect)
    for case_id, text_, expect in [
            ("all-rows-nan", "\n".join(line if line.lstrip().startswith("#") else
                                       " ".join(["1024", "256", "float", "none", "-1", "nan"] + ["0"] * 7)
                                       for line in NCCL_LOG.splitlines()), ("time='nan'",)),
            ("no-header", "hello\n1 2 3\n", ("no nccl-tests header",)),
            ("no-rows", "\n".join(line for line in NCCL_LOG.splitlines() if line.lstrip().startswith("#")),
             ("no data rows",)),
            ("no-ranks", "\n".join(line for line in NCCL_LOG.splitlines() if "Rank" not in line and "nGpus" not in line),
             ("number of ranks", "--world-size")),
            ("no-device", "\n".join(line.split("[")[0] if "Rank" in line else line for line in NCCL_LOG.splitlines()),
             ("--gpu", "h200, h100")),
            ("unknown-device", NCCL_LOG.replace("NVIDIA H100 80GB HBM3", "Tesla K80"), ("'Tesla K80'", "--gpu")),
            ("mixed-devices", NCCL_LOG.replace("[0x18] NVIDIA H100 80GB HBM3", "[0x18] NVIDIA A100"), ("--gpu",)),
            ("empty", "", ("no nccl-tests header",)), ("header-no-time", "#  size  count  type  algbw\n", ("time",))]:
        add("nccl", case_id, text_, *expect)

    # ---- microbenchmark raw JSON ------------------------------------------------------------------------
    for case_id, path, value, expect in [
            ("results-missing", "results", DELETE, ("results", "None")),
            ("provenance-list", "provenance", [1], ("provenance", "[1]")),
            ("world-missing", "results.world_size", DELETE, ("results.world_size", "missing")),
            ("world-0", "results.world_size", 0, ("results.world_size", "0")),
            ("world-bool", "results.world_size", True, ("results.world_size", "True")),
            ("a2a-time-neg", "results.a2a.0.time_s", -1e-5, ("results.a2a[0].time_s", "-1e-05")),
            ("a2a-time-nan", "results.a2a.1.time_s", NAN, ("results.a2a[1].time_s", "nan")),
            ("a2a-time-0", "results.a2a.1.time_s", 0, ("results.a2a[1].time_s", "0")),
            ("a2a-time-text", "results.a2a.0.time_s", "1e-5", ("results.a2a[0].time_s", "'1e-5'")),
            ("a2a-time-missing", "results.a2a.0.time_s", DELETE, ("results.a2a[0].time_s", "missing")),
            ("a2a-bytes-neg", "results.a2a.0.bytes_per_rank", -5, ("results.a2a[0].bytes_per_rank", "-5")),
            ("a2a-bytes-float", "results.a2a.0.bytes_per_rank", 4096.5, ("results.a2a[0].bytes_per_rank", "4096.5")),
            ("a2a-dict", "results.a2a", {"a": 1}, ("results.a2a", "{'a': 1}")),
            ("p2p-bytes-0", "results.p2p.0.bytes", 0, ("results.p2p[0].bytes", "0")),
            ("p2p-Bps-nan", "results.p2p.0.Bps", NAN, ("results.p2p[0].Bps", "nan")),
            ("p2p-time-inf", "results.p2p.0.time_s", INF, ("results.p2p[0].time_s", "inf")),
            ("ffn-flops-0", "results.ffn.flops_per_s", 0, ("results.ffn.flops_per_s", "0")),
            ("ffn-dtype-missing", "results.ffn.dtype", DELETE, ("results.ffn.dtype", "missing")),
            ("ffn-list", "results.ffn", [1], ("results.ffn", "[1]")),
            ("hbm-neg", "results.hbm.Bps", -1.0, ("results.hbm.Bps", "-1.0")),
            ("gpu-number", "provenance.gpu", 7, ("provenance.gpu", "7"))]:
        add("raw", case_id, json.dumps(_set(RAW, path, value)), *expect)
    for case_id, text_, expect in [("syntax", "{", ("not valid JSON",)), ("empty", "", ("empty",)),
                                   ("list", "[1]", ("results",)),
                                   ("dup", '{"results": {}, "results": {}}', ("results", "given twice"))]:
        add("raw", case_id, text_, *expect)
    return cases


CASES = _cases()


def _read(fmt: str, path: Path):
    if fmt == "topology":
        return load_topology(path)
    if fmt == "workload":
        return load_workload(path)
    if fmt == "model":
        return load_model(str(path))
    if fmt == "traffic":
        return load_traffic(str(path), 4)
    if fmt == "trace":
        return Trace.from_json(path)
    if fmt == "nccl":
        return read_nccl_tests([path])
    if fmt == "raw":
        return read_microbenchmarks([path])
    raise AssertionError(fmt)


def _refused(fmt: str, path: Path, expect) -> str:
    with pytest.raises(ValueError) as info:
        _read(fmt, path)
    message = str(info.value)
    assert "\n" not in message, message
    assert path.name in message, message
    for text in expect:
        assert text in message, (text, message)
    return message


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 300


@pytest.mark.parametrize("fmt, name, text, expect", CASES)
def test_malformed_file_is_refused_naming_file_field_value(tmp_path, fmt, name, text, expect):
    path = tmp_path / name
    path.write_text(text)
    _refused(fmt, path, expect)


# ---- whole-file problems, the same for every format ---------------------------------------------------
FORMATS = ["topology", "workload", "model", "traffic", "trace", "nccl", "raw"]
SUFFIX = {"topology": ".yaml", "workload": ".yaml", "model": ".yaml", "traffic": ".json", "trace": ".json",
          "nccl": ".log", "raw": ".json"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_file_folder_and_non_utf8_are_refused(tmp_path, fmt):
    missing = tmp_path / f"absent{SUFFIX[fmt]}"
    message = _refused(fmt, missing, ())
    assert "does not exist" in message or "no such file" in message
    folder = tmp_path / f"folder{SUFFIX[fmt]}"
    folder.mkdir()
    message = _refused(fmt, folder, ())
    assert "folder" in message or "does not exist" in message
    binary = tmp_path / f"binary{SUFFIX[fmt]}"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "UTF-8" in _refused(fmt, binary, ())


def test_valid_bases_load():
    """The corpus's bases are valid: each malformed case differs from a valid file by one field."""
    assert load_topology  # noqa: the bases are loaded through the readers below
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "t.yaml").write_text(_yaml(TOPOLOGY))
        (folder / "w.yaml").write_text(_yaml(WORKLOAD))
        (folder / "m.yaml").write_text(_yaml(MODEL))
        (folder / "tr.json").write_text(json.dumps(TRACE))
        (folder / "raw.json").write_text(json.dumps(RAW))
        (folder / "n.log").write_text(NCCL_LOG)
        (folder / "x.json").write_text(json.dumps([[0, 1, 2, 3]] * 4))
        assert load_topology(folder / "t.yaml").graph["num_nodes"] == 2
        assert load_workload(folder / "w.yaml").name == "w"
        assert load_model(str(folder / "m.yaml")).num_layers == 4
        assert Trace.from_json(folder / "tr.json").meta["workload"]["world_size"] == 2
        assert read_microbenchmarks([folder / "raw.json"]).world_size == 2
        inp = read_nccl_tests([folder / "n.log"])                     # the GPU from the log's Rank lines
        assert inp.gpu == "NVIDIA H100 80GB HBM3" and inp.world_size == 4
        assert load_traffic(str(folder / "x.json"), 4).shape == (4, 4)
        assert read_traces([folder / "tr.json"]).world_size == 2


def test_yaml_numbers_plain_and_quoted(tmp_path):
    """A plain 25e9 is a number (YAML 1.2), a quoted one is text and refused; dump_yaml quotes such text."""
    spec = _yaml(TOPOLOGY).replace("link_Bps: 450000000000.0", "link_Bps: 45e10")
    (tmp_path / "plain.yaml").write_text(spec)
    assert load_topology(tmp_path / "plain.yaml").edges["n0.gpu0", "n0.nvswitch"]["bandwidth_Bps"] == 3.7e11
    assert load_yaml(text=dump_yaml({"commit": "12e45"}), source="x") == {"commit": "12e45"}


@pytest.mark.parametrize("option, value, expect", [
    ("gpu", "h300", ["gpu='h300'", "known: h200, h100, a100, v100"]),
    ("gpu", True, ["gpu=True"]), ("gpu", "cpu", ["gpu='cpu'"]),
    ("world_size", 1, ["world_size=1", ">= 2"]), ("world_size", True, ["world_size=True"]),
    ("world_size", "4", ["world_size='4'"])])
def test_nccl_tests_options_are_checked(option, value, expect):
    with pytest.raises(ValueError) as info:
        read_nccl_tests([DATA / "nccl_tests_alltoall_perf.txt"], **{option: value})
    for text in expect:
        assert text in str(info.value)


def test_traces_gpu_option_and_inputs_file(tmp_path):
    (tmp_path / "tr.json").write_text(json.dumps(TRACE))
    with pytest.raises(ValueError, match=r"gpu='tpu' is not a known GPU; known: h200"):
        read_traces([tmp_path / "tr.json"], gpu="tpu")
    with pytest.raises(ValueError, match=r"split_skewed='maybe' must be true or false"):
        read_traces([tmp_path / "tr.json"], split_skewed="maybe")
    np = pytest.importorskip("numpy")
    pytest.importorskip("torch")
    from lshsim.executor.run import _load_file_tokens
    from lshsim.executor.workload import WorkloadConfig

    for name, payload, expect in [("nan.npy", np.full((4, 16), np.nan), "NaN or infinite"),
                                  ("text.npy", np.array([["a"] * 16] * 4), "not real numbers"),
                                  ("junk.npy", b"not numpy", "cannot be read"), ("junk.pt", b"not torch", "cannot be read")]:
        path = tmp_path / name
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            np.save(path, payload)
        workload = WorkloadConfig(tokens_per_rank=2, d_model=16, d_ffn=16, num_experts=2, inputs=str(path))
        with pytest.raises(ValueError, match=expect) as info:
            _load_file_tokens(workload)
        assert name in str(info.value) and "\n" not in str(info.value)


# ---- through the command line: exit 2, one line, no traceback, nothing written ------------------------------
@pytest.mark.parametrize("argv, name, text, expect", [
    (["simulate", "--topology", "{}", "--traffic", "uniform:1MB"], "bad.yaml",
     _yaml(_set(TOPOLOGY, "inter.nic_gbps", NAN)), ["bad.yaml", "inter.nic_gbps", "nan"]),
    (["simulate", "--topology", "{}", "--traffic", "uniform:1MB"], "dup.yaml",
     _yaml(TOPOLOGY) + "nodes: 3\n", ["dup.yaml", "nodes", "given twice"]),
    (["simulate", "--topology", "h100-nvswitch", "--traffic", "{}"], "t.json",
     json.dumps([[0, True] + [0] * 6] + [[0] * 8] * 7), ["t.json", "traffic[0][1]=True"]),
    (["simulate", "--topology", "h100-nvswitch", "--traffic", "{}"], "t.json",
     json.dumps([[0, "1000000"] + [0] * 6] + [[0] * 8] * 7), ["t.json", "traffic[0][1]='1000000'"]),
    (["plan", "--model", "{}", "--json"], "m.yaml", _yaml(_set(MODEL, "num_layers", 1_000_000)),
     ["m.yaml", "num_layers", "1000000"]),
    (["plan", "--cluster", "{}", "--json"], "c.yaml", _yaml(_set(TOPOLOGY, "gpus_per_node", 100000)),
     ["c.yaml"]),          # refused by plan's size estimate (or the reader's gpus_per_node <= 1024)
    (["validate", "{}"], "tr.json", json.dumps(_set(TRACE, "meta.workload.d_model", 0)),
     ["tr.json", "meta.workload.d_model", "0"]),
    (["validate", "{}"], "tr.json", json.dumps(_set(TRACE, "meta.measured.phases_s.forward.dispatch_a2a", NAN)),
     ["tr.json", "dispatch_a2a", "nan"]),
    (["validate", "{}"], "sim.json", json.dumps(_set(TRACE, "meta.source", "simulated")),
     ["sim.json", "measured trace"]),
    (["calibrate", "--nccl-tests", "{}", "--out", "{out}"], "n.log",
     NCCL_LOG.replace("20.01", " -1.0"), ["n.log", "time='-1.0'"]),
    (["calibrate", "--nccl-tests", "{}", "--out", "{out}"], "n.log",
     NCCL_LOG.replace("NVIDIA H100 80GB HBM3", "Tesla K80"), ["n.log", "--gpu"]),
    (["calibrate", "--from-raw", "{}", "--out", "{out}"], "raw.json",
     json.dumps(_set(RAW, "results.a2a.0.time_s", -1)), ["raw.json", "results.a2a[0].time_s", "-1"]),
    (["calibrate", "--from-traces", "{}", "--out", "{out}"], "tr.json",
     json.dumps(_set(TRACE, "meta.measured.bytes_per_token", DELETE)), ["tr.json", "bytes_per_token"]),
])
def test_cli_refuses_with_one_line_and_writes_nothing(tmp_path, capsys, argv, name, text, expect):
    from lshsim.cli import main

    path = tmp_path / name
    path.write_text(text)
    out = tmp_path / "out.yaml"
    argv = [str(path) if arg == "{}" else str(out) if arg == "{out}" else arg for arg in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text_ in expect:
        assert text_ in err, (text_, err)
    assert not out.exists()


def test_cli_workload_name_cannot_leave_the_out_dir(tmp_path, capsys):
    from lshsim.cli import main

    path = tmp_path / "w.yaml"
    path.write_text(_yaml(_set(WORKLOAD, "name", "../escape")))
    with pytest.raises(SystemExit) as info:
        main(["run", "--workload", str(path), "--out-dir", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "w.yaml" in err and "'../escape'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "escape.json").exists()


# ---- the shipped files still load ------------------------------------------------------------------------
def test_every_shipped_file_loads():
    root = Path(__file__).parents[1]
    from lshsim.models import list_models
    from lshsim.topology import list_topologies

    assert all(load_topology(name).graph["name"] for name in list_topologies())
    assert all(load_model(name).name == name for name in list_models())
    assert all(load_workload(path).name == path.stem for path in sorted((root / "data" / "workloads").glob("*.yaml")))


# ---- hypothesis: random corruptions of valid files ---------------------------------------------------------
BAD_NUMBER = st.sampled_from([NAN, INF, -INF, -1.0, -1, True, False, "1e9", "12", None, [1.0], {"x": 1}])
_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


def _numbers(doc, prefix=""):
    """Dotted paths of every number in a document (ints and floats, not bools)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _numbers(value, f"{prefix}{key}.")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _numbers(value, f"{prefix}{i}.")
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
        yield prefix[:-1]


TOPOLOGY_NUMBERS = [p for p in _numbers(TOPOLOGY) if p not in ("alpha_s", "calibration.alpha_s",
                                                               "intra.latency_s", "inter.latency_s",
                                                               "intra.pcie_latency_s")]
TRACE_NUMBERS = [p for p in _numbers(TRACE["meta"]) if not p.startswith(("provenance", "cluster", "workload.skew"))]


@_SETTINGS
@given(field=st.sampled_from(TOPOLOGY_NUMBERS), value=BAD_NUMBER)
def test_hypothesis_topology_number_corrupted(tmp_path, field, value):
    if value is None and field in ("nodes", "intra.link_Bps", "intra.pcie_Bps", "inter.servers_per_leaf",
                                   "inter.oversubscription", "calibration.nvlink_Bps", "calibration.nic_Bps",
                                   "calibration.pcie_Bps", "calibration.expert_flops", "calibration.hbm_Bps",
                                   "calibration.a2a_link_headroom", "calibration.a2a_link_max_Bps"):
        return                                          # null means "the default" for an optional field
    path = tmp_path / "corrupt.yaml"
    path.write_text(_yaml(_set(TOPOLOGY, field, value)))
    message = _refused("topology", path, ())
    assert field.split(".")[-1].rstrip("0123456789") in message or "a2a_busbw_curve" in message, message


@_SETTINGS
@given(field=st.sampled_from(TRACE_NUMBERS), value=BAD_NUMBER)
def test_hypothesis_trace_number_corrupted(tmp_path, field, value):
    path = tmp_path / "corrupt.json"
    doc = _set(TRACE, "meta." + field, value)
    path.write_text(json.dumps(doc))
    _refused("trace", path, (field.split(".")[-1] if not field[-1].isdigit() else "traffic_bytes",))


@_SETTINGS
@given(field=st.sampled_from([p for p in _numbers(WORKLOAD) if p not in ("skew", "input_noise", "seed")]),
       value=BAD_NUMBER)
def test_hypothesis_workload_number_corrupted(tmp_path, field, value):
    if value is None and field in ("gpus_per_node", "world_size", "router.capacity_factor"):
        return                                          # null: no limit / no capacity
    if value is False and field in ("warmup",):
        return
    path = tmp_path / "corrupt.yaml"
    path.write_text(_yaml(_set(WORKLOAD, field, value)))
    message = _refused("workload", path, ())
    assert field.split(".")[-1] in message, message


@_SETTINGS
@given(cut=st.integers(min_value=1, max_value=400))
def test_hypothesis_truncated_trace_never_loads_silently(tmp_path, cut):
    """A trace cut short anywhere is refused (invalid JSON), never read as a different trace."""
    text = json.dumps(TRACE, indent=1)
    path = tmp_path / "cut.json"
    path.write_text(text[:len(text) - cut])
    _refused("trace", path, ())


@_SETTINGS
@given(rows=st.lists(st.tuples(st.integers(min_value=-10, max_value=1 << 30),
                               st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0))),
                     min_size=1, max_size=6))
def test_hypothesis_nccl_rows(tmp_path, rows):
    """Random rows: either every row is usable (size >= 0; unless the size is 0, which is skipped, a
    time finite, > 0 and at most an hour, `NCCL_TESTS_MAX_TIME_US`) and the log is read with exactly the
    rows of size > 0, or it is refused naming a row's line."""
    from lshsim.calibration.sources import NCCL_TESTS_MAX_TIME_US

    header = [line for line in NCCL_LOG.splitlines() if line.lstrip().startswith("#")][:13]
    body = [f"{size} 1 float none -1 {time!r} 0 0 0 0 0 0 0" for size, time in rows]
    path = tmp_path / "r.log"
    path.write_text("\n".join(header + body) + "\n")
    # a row of size 0 is skipped whatever its time (nccl-tests prints such rows); the others need a time
    usable = all(size >= 0 and (size == 0 or (math.isfinite(time) and 0 < time <= NCCL_TESTS_MAX_TIME_US))
                 for size, time in rows)
    if usable and any(size > 0 for size, _ in rows):
        inp = read_nccl_tests([path])
        assert len(inp.points) == sum(size > 0 for size, _ in rows)
        assert all(p.time_s > 0 and math.isfinite(p.time_s) for p in inp.points)
    else:
        _refused("nccl", path, ())
