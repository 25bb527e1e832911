"""The per-class `calibration.links:` block of a topology: a link model for the NICs, PCIe or any
edge kind, parsed once when the topology is loaded, equal to the same model passed explicitly;
the top-level a2a_* keys mean links.nvlink; errors name file, field and value."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from lshsim.calibration import LinkModels, curve_busbw_Bps
from lshsim.sim.collectives import simulate_all_to_all, uniform_traffic
from lshsim.topology import build_topology, load_topology

NIC_CURVE = [[1.0e6, 5.0e9], [1.0e8, 20.0e9], [1.0e9, 45.0e9]]          # bytes per rank, B/s per NIC
NVLINK_CURVE = [[1.0e6, 50.0e9], [1.0e9, 330.0e9]]

FAT_TREE = {"name": "ft-2x4", "gpu": "h100", "nodes": 2, "gpus_per_node": 4, "alpha_s": 1.0e-5,
            "intra": {"kind": "nvswitch"},
            "inter": {"kind": "fat_tree", "nics_per_node": 4, "nic_gbps": 400, "servers_per_leaf": 1}}


def _with_calibration(spec: dict, calibration: dict) -> dict:
    spec = copy.deepcopy(spec)
    spec["calibration"] = calibration
    return spec


def _load(tmp_path, spec: dict, name: str = "t.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_topology(path)


def test_a_nic_curve_in_the_yaml_equals_the_explicit_link_model(tmp_path):
    G0 = build_topology(FAT_TREE)
    G = _load(tmp_path, _with_calibration(FAT_TREE, {"links": {"nic": {"busbw_curve": NIC_CURVE}}}))
    links = LinkModels.from_topology(G)
    explicit = LinkModels.from_topology(G0).replace("nic", busbw_curve=NIC_CURVE)
    assert links == explicit
    assert links["nic"].nominal_Bps == 50e9 and links["nvlink"].busbw_curve is None
    for size in (3e6, 4e8):                                              # below and above 50 GB/s nominal
        traffic = uniform_traffic(8, size)
        loaded = simulate_all_to_all(G, traffic, local_copy=False)
        passed = simulate_all_to_all(G0, traffic, local_copy=False, links=explicit)
        assert loaded.time_s == passed.time_s and loaded.options == passed.options
        assert loaded.options["nic_a2a_busbw_Bps"] == pytest.approx(curve_busbw_Bps(NIC_CURVE, size), rel=1e-12)
        nominal = simulate_all_to_all(G0, traffic, local_copy=False)
        assert loaded.time_s != nominal.time_s                           # the NICs bind: the curve matters


def test_the_top_level_keys_mean_links_nvlink(tmp_path):
    single = {"name": "h", "gpu": "h200", "gpus_per_node": 4, "intra": {"kind": "nvswitch"}}
    legacy = build_topology(_with_calibration(single, {"a2a_busbw_curve": NVLINK_CURVE, "a2a_link_headroom": 1.2,
                                                       "a2a_link_max_Bps": 3.5e11}))
    block = build_topology(_with_calibration(single, {"links": {"nvlink": {
        "busbw_curve": NVLINK_CURVE, "headroom": 1.2, "link_max_Bps": 3.5e11}}}))
    assert legacy.graph["link_models"] == block.graph["link_models"]
    skewed = np.array([[0, 3e7, 3e7, 3e7], [9e7, 0, 0, 0], [9e7, 0, 0, 0], [9e7, 0, 0, 0]])
    assert simulate_all_to_all(legacy, skewed).time_s == simulate_all_to_all(block, skewed).time_s


def test_pcie_and_trunk_classes_scale_against_their_nominal_bandwidth():
    pcie = build_topology({"name": "p", "gpu": "a100", "gpus_per_node": 4, "intra": {"kind": "pcie", "link_Bps": 20e9},
                           "calibration": {"links": {"pcie": {"busbw_curve": [[1e6, 5e9], [1e9, 15e9]]}}}})
    links = LinkModels.from_topology(pcie)
    assert links["pcie"].nominal_Bps == 20e9                             # the GPU's port on the PCIe switch
    rates = links.rates(np.full((4, 4), 25e6))
    assert rates.bandwidth_scale_by_kind == {"pcie": pytest.approx(curve_busbw_Bps([[1e6, 5e9], [1e9, 15e9]], 1e8) / 20e9)}
    trunk = build_topology(_with_calibration(FAT_TREE, {"links": {"trunk": {"busbw_curve": NIC_CURVE}}}))
    assert LinkModels.from_topology(trunk)["trunk"].nominal_Bps == 4 * 50e9   # a leaf's uplinks: 4 NICs
    assert LinkModels.from_topology(build_topology(FAT_TREE)).classes == ("nvlink", "pcie", "nic", "trunk")


@pytest.mark.parametrize("calibration, message", [
    ({"links": {"nic": {"busbw_curve": NIC_CURVE}}},
     r"^x.yaml: calibration.links.nic=\{.*\} names a link class the topology has no edges of; its classes: nvlink$"),
    ({"links": {"nvlink": {"curve": NVLINK_CURVE}}},
     r"^x.yaml: calibration.links.nvlink.curve=\[.*\] is not a known field; known: busbw_curve, headroom, "
     r"link_max_Bps, nccl_channels$"),
    ({"a2a_busbw_curve": NVLINK_CURVE, "links": {"nvlink": {"busbw_curve": NVLINK_CURVE}}},
     r"^x.yaml: calibration.links.nvlink=\{.*\} gives the NVLink class, which calibration.a2a_busbw_curve already "
     r"give"),
    ({"links": [["nvlink", NVLINK_CURVE]]}, r"^x.yaml: calibration.links=\[.*\] must be a mapping"),
    ({"links": {"nvlink": NVLINK_CURVE}}, r"^x.yaml: calibration.links.nvlink=\[.*\] must be a mapping with"),
    ({"links": {"nvlink": {"headroom": 1.2}}},
     r"^x.yaml: calibration.links.nvlink.headroom=1.2 is only allowed together with calibration.links.nvlink.busbw_curve"),
    ({"links": {"nvlink": {"busbw_curve": NVLINK_CURVE, "headroom": 0.9}}},
     r"^x.yaml: calibration.links.nvlink.headroom=0.9 must be >= 1"),
    ({"links": {"nvlink": {"busbw_curve": [[1e6, 5e9]]}}},
     r"^x.yaml: calibration.links.nvlink.busbw_curve=\[\[1000000.0, 5000000000.0\]\] must be a list of at least 2"),
])
def test_bad_links_blocks_name_file_field_and_value(calibration, message):
    spec = {"name": "h", "gpu": "h200", "gpus_per_node": 4, "intra": {"kind": "nvswitch"}, "calibration": calibration}
    with pytest.raises(ValueError, match=message):
        build_topology(spec, source="x.yaml")


def test_two_classes_with_a_headroom_are_refused():
    spec = _with_calibration(FAT_TREE, {"a2a_busbw_curve": NVLINK_CURVE, "a2a_link_headroom": 1.1,
                                        "links": {"nic": {"busbw_curve": NIC_CURVE, "headroom": 1.2}}})
    with pytest.raises(ValueError, match=r"^f.yaml: calibration: at most one link class may have a headroom"):
        build_topology(spec, source="f.yaml")
