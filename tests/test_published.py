"""The published cases (data/published/), their split, the byte counts under each source's definition,
the calibration fit (recovers known parameters, refuses test cases) and `lshsim validate --published`."""
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lshsim.cli import main
from lshsim.sim.dispatch_formats import DedupTraffic
from lshsim.sim.published import (PUBLISHED_DIR, Case, CaseRun, EFFICIENCY_GRID, alltoall_per_peer_bytes,
                                  case_traffic, counted_bytes, routing_counts, routing_key,
                                  deepep_routing, demonstrated_efficiency, fit_calibration, load_cases, load_fresh,
                                  load_split, simulate_case, simulation_key, source_group, traffic_key,
                                  validate_published)


NINTH = ("aws-b200-", "mori-sop-mi355x-ainic-normal-16k", "mori-sop-mi355x-ainic-normal-32k",
         "mori-sop-mi355x-ainic-normal-64k")                                       # the ninth round's files (pub14i)
TENTH = ("nebius-h200-deepep-normal", "gcp-b200-deepep-normal")                   # the tenth round's files (pub14j)
ELEVENTH = ("azure-h100-deepep-normal",)                                          # the eleventh round's file (pub14k)
TWELFTH = ("nccl-b300kit-alltoall", "b300kit-deepep-v1-normal")                    # the twelfth round's files (pub14l)
THIRTEENTH = ("nccl-ntc-h100-",)                            # NCCL all-to-all over ConnectX, H100 (a2a14m): ib_nccl
FOURTEENTH = ("rccl-oci-mi355x-",)            # RCCL all-to-all on OCI MI355X + Pollara (pub14m): ib_nccl stands in
FIFTEENTH = ("rccl-amdkit-mi355x-",)          # RCCL all-to-all on 2 x 8 MI355X + AINIC, 256 B - 4 GiB (pub15): the same
SIXTEENTH = ("nccl-nig-v100-",)               # NCCL all-to-all on 2 x 2 V100 + one EDR NIC per node, 16 B - 128 MiB (pub16)
SEVENTEENTH = ("nccl-a100pcie-",)             # NCCL all-to-all on 2 x 1 A100 PCIe + one 200 Gb/s IB port, 1 - 512 KiB (pub17)
EIGHTEENTH = ("nccl-orcd-b200-",)             # NCCL all-to-all on 2 x 8 B200 + 8 NDR 400 Gb/s rails per node, 1 MiB - 16 GiB (pub18)
TWENTIETH = ("deepep-pr521-h100-",)           # DeepEP V1 normal kernels, H100 + 8 x 400 Gb/s IB, NVSHMEM / NCCL GIN (pub22)
PR521 = ("https://github.com/deepseek-ai/DeepEP/blob/db6a02914922f8e98058c53140bd222782ea0a8d/README.md"
         "#normal-kernels-with-nvlink-and-rdma-forwarding")
ORCD = "https://github.com/mit-orcd/orcd-benchmarks/blob/bca7147f4f8d1335d373a29bd20c439af7316ced/"
A100PCIE = ("https://github.com/thomaslie210/NCCL_Test_Results/blob/83dd17d1e2bfb3ef047b1845efcf5116e3b42636/"
            "NCCL_Benchmarks/GDR_On/n013_n014_GDR_ON_Small/result_small_alltoall_perf.txt")
AMDKIT = "https://github.com/prasad-nair-amd/alibaba/blob/5410faae975d9948ccc5482b91c42188179a1f97/README.md"
NIG = ("https://github.com/nig-sc/nigsc_homepage2/blob/14e0abd2b7bacb77d2b922417e94d28d5d636338/i18n/en/"
       "docusaurus-plugin-content-docs/current/guides/050_software/050_DevelopmentEnvironment/pgi_compiler/pgi_compiler.md")
OCI = ("https://github.com/oracle-quickstart/oci-gpu-quickstarts/blob/6a0abdc78b574b28eb10926387615c8414ed8c1d/"
       "amd/MI355X/README-MI355X-Pollara.md")
NTC = "https://github.com/xxrjun/nccl-tests-cluster/blob/455de4f8dee2fa94cd4044a7109fd8c576f9e6c1/"


def test_shipped_cases_and_split():
    cases = load_cases()
    assert len(cases) == 438 and len({c.id for c in cases}) == 438
    test = load_split(PUBLISHED_DIR, cases)      # the cases read once, handed to each reader
    third = {c.id for c in cases if c.file.startswith(("uccl-ep-mi", "deepep-h200-"))}   # the third round: fresh2
    fourth = {c.id for c in cases if c.file.startswith("aws-") and not c.file.startswith(NINTH)}   # the fourth round: fresh3
    first = [c for c in cases if c.file.startswith(("deepep-v1-", "uccl-")) and c.id not in third]  # the test split's 44
    assert len(first) == 44 and len(test) * 3 >= len(first)  # at least a third set aside ...
    fresh = load_fresh(PUBLISHED_DIR, cases)
    later = {c.id for c in cases if c.file.startswith(("deepep-v2-", "deepep-pcie-", "hybridep-"))}
    assert fresh == later and len(fresh) == 19 and not fresh & test      # every later case is fresh, none a test case
    fresh2 = load_fresh(PUBLISHED_DIR, cases, key="fresh2")
    assert fresh2 == third and len(fresh2) == 29 and not fresh2 & (test | fresh)     # every third-round case, alone
    fresh3 = load_fresh(PUBLISHED_DIR, cases, key="fresh3")
    moved = {c.id for c in cases if c.file.startswith("aws-p5-uccl-")}    # to fitting in pub14f (efa_v1's fitting cases)
    assert fresh3 == fourth - moved and len(fresh3) == 29 and len(moved) == 8 and not fresh3 & (test | fresh | fresh2)
    fresh4 = load_fresh(PUBLISHED_DIR, cases, key="fresh4")
    fifth = {c.id for c in cases if c.file.startswith("efa-bench-uccl-")}               # the fifth round: fresh4
    assert fresh4 == fifth and len(fresh4) == 10 and not fresh4 & (test | fresh | fresh2 | fresh3)
    fresh5 = load_fresh(PUBLISHED_DIR, cases, key="fresh5")
    sixth = {c.id for c in cases if c.file.startswith("efa-bench5-")}                  # the sixth round: fresh5
    assert fresh5 == sixth and len(fresh5) == 14 and not fresh5 & (test | fresh | fresh2 | fresh3 | fresh4)
    # the plain all-to-all cases (a2a14g): fresh6 is their test draw, the rule of split.yaml redone here
    fresh6 = load_fresh(PUBLISHED_DIR, cases, key="fresh6")
    a2a = [c for c in cases if c.kind == "alltoall" and not c.file.startswith(TWELFTH + THIRTEENTH + FOURTEENTH + FIFTEENTH
                                                                                  + SIXTEENTH + SEVENTEENTH
                                                                                  + EIGHTEENTH)]  # a2a14g's
    groups = {}
    for c in a2a:
        groups.setdefault((c.file, c.nodes), []).append(c.id)
    rng = np.random.default_rng(16)
    drawn = {g[i] for key in sorted(groups) for g in [groups[key]]
             for i in rng.choice(len(g), math.ceil(len(g) / 3), replace=False)}
    assert fresh6 == drawn and len(a2a) == 49 and len(fresh6) == 22 and 3 * len(fresh6) >= len(a2a)
    assert not fresh6 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5)
    fresh7 = load_fresh(PUBLISHED_DIR, cases, key="fresh7")
    seventh = {c.id for c in cases if c.file.startswith("mori-") and not c.file.startswith(NINTH)}  # the seventh round (pub14g)
    assert fresh7 == seventh and len(fresh7) == 10 and not fresh7 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6)
    fresh8 = load_fresh(PUBLISHED_DIR, cases, key="fresh8")
    eighth = {c.id for c in cases if c.file.startswith("p5en-a2a-")}                  # the eighth round (pub14h)
    assert fresh8 == eighth and len(fresh8) == 18
    assert not fresh8 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7)
    fresh9 = load_fresh(PUBLISHED_DIR, cases, key="fresh9")
    ninth = {c.id for c in cases if c.file.startswith(NINTH)}
    assert fresh9 == ninth and len(fresh9) == 21                                      # the ninth round (pub14i)
    assert not fresh9 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8)
    fresh10 = load_fresh(PUBLISHED_DIR, cases, key="fresh10")
    tenth = {c.id for c in cases if c.file.startswith(TENTH)}
    assert fresh10 == tenth and len(fresh10) == 9                                     # the tenth round (pub14j)
    assert not fresh10 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8 | fresh9)
    fresh11 = load_fresh(PUBLISHED_DIR, cases, key="fresh11")
    eleventh = {c.id for c in cases if c.file.startswith(ELEVENTH)}
    assert fresh11 == eleventh and len(fresh11) == 3                                  # the eleventh round (pub14k)
    assert not fresh11 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8 | fresh9 | fresh10)
    fresh12 = load_fresh(PUBLISHED_DIR, cases, key="fresh12")
    twelfth = {c.id for c in cases if c.file.startswith(TWELFTH)}
    small = {c.id for c in cases if c.kind == "alltoall" and c.size_bytes < 32 << 20}   # moved to fitting (tenth session)
    assert fresh12 == twelfth - small and len(fresh12) == 3 and len(twelfth & small) == 3   # the twelfth round (pub14l)
    assert not fresh12 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8 | fresh9 | fresh10
                          | fresh11)
    fresh13 = load_fresh(PUBLISHED_DIR, cases, key="fresh13")
    fresh14 = load_fresh(PUBLISHED_DIR, cases, key="fresh14")
    fourteenth = {c.id for c in cases if c.file.startswith(FOURTEENTH)}
    assert fresh14 == fourteenth and len(fresh14) == 4                                # the fourteenth round (pub14m)
    assert not fresh14 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8 | fresh9 | fresh10
                          | fresh11 | fresh12 | fresh13)
    fresh15 = load_fresh(PUBLISHED_DIR, cases, key="fresh15")
    fifteenth = {c.id for c in cases if c.file.startswith(FIFTEENTH)}
    assert fresh15 == fifteenth - small and len(fresh15) == 8 and len(fifteenth & small) == 17   # fifteenth (pub15)
    assert not fresh15 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8 | fresh9 | fresh10
                          | fresh11 | fresh12 | fresh13 | fresh14)
    fresh16 = load_fresh(PUBLISHED_DIR, cases, key="fresh16")
    sixteenth = {c.id for c in cases if c.file.startswith(SIXTEENTH)}
    assert fresh16 == sixteenth - small and len(fresh16) == 3 and len(sixteenth & small) == 21   # sixteenth (pub16)
    assert not fresh16 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8 | fresh9 | fresh10
                          | fresh11 | fresh12 | fresh13 | fresh14 | fresh15)
    fresh17 = load_fresh(PUBLISHED_DIR, cases, key="fresh17")
    seventeenth = {c.id for c in cases if c.file.startswith(SEVENTEENTH)}
    assert not fresh17 and len(seventeenth & small) == 10     # pub17's rows, all below 32 MiB: fitting since the eleventh session
    assert not fresh17 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8 | fresh9 | fresh10
                          | fresh11 | fresh12 | fresh13 | fresh14 | fresh15 | fresh16)
    fresh18 = load_fresh(PUBLISHED_DIR, cases, key="fresh18")
    eighteenth = {c.id for c in cases if c.file.startswith(EIGHTEENTH)}
    assert fresh18 == eighteenth and len(fresh18) == 32 and len(eighteenth & small) == 12   # the eighteenth round (pub18)
    assert not fresh18 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8 | fresh9 | fresh10
                          | fresh11 | fresh12 | fresh13 | fresh14 | fresh15 | fresh16 | fresh17)
    fresh20 = load_fresh(PUBLISHED_DIR, cases, key="fresh20")
    twentieth = {c.id for c in cases if c.file.startswith(TWENTIETH)}
    assert fresh20 == twentieth and len(fresh20) == 12                              # the set fresh20 (pub22)
    assert not fresh20 & (test | fresh | fresh2 | fresh3 | fresh4 | fresh5 | fresh6 | fresh7 | fresh8 | fresh9 | fresh10
                          | fresh11 | fresh12 | fresh13 | fresh14 | fresh15 | fresh16 | fresh17 | fresh18)
    for family, held in (("efa_nccl", 5), ("efa_v1_nccl", 17)):    # each family has test and fitting cases
        mine = {c.id for c in a2a if c.nic_family == family}
        assert len(mine & fresh6) == held and mine - fresh6
    new = [c for c in cases if c.file.startswith("uccl-") and c.id not in third]
    assert len(new) == 24 and 3 * len(test & {c.id for c in new}) >= len(new)   # ... of the new cases too
    by_id = {c.id: c for c in cases}
    assert by_id["deepep-normal-inter-ep32-dispatch"].published_GBps == 58
    assert by_id["deepep-ll-ep256-combine"].published_latency_us == 360
    assert by_id["uccl-p5en-normal-ep24-combine"].published_GBps == 26
    assert by_id["uccl-p6b200-ll-ep32-dispatch"].published_latency_us == 406
    assert by_id["nvshmem-efa-p5-ll-ep16-dispatch"].published_GBps == 9.9          # the sweep's 'default' row, rank 0
    assert by_id["nvshmem-efa-p5en-ep16-combine"].published_GBps == 58.48
    kit = ("https://github.com/terrificdm/p6b300-efa-deepep-nccl-testkit/blob/0ec5d151a88c4d795f98fe6ad5d9c3856f3587ae/"
           "examples/report-sample.md")
    for c in cases:                                           # every case has a source and a topology that loads
        if c.file.startswith(TWELFTH):                        # the twelfth round (pub14l): fresh12, a p6-b300 EFA kit
            assert c.source == kit and (c.ep, c.nodes) == (16, 2) and c.topology == "published/p6-b300-efa-2x8"
            if c.kind == "alltoall":                          # its NCCL curve, 64 KiB - 1 GiB (8 GiB is a seen case)
                assert c.group == "b300kit-nccl" and c.nic_family == "efa_nccl" and c.counts == "busbw"
                assert c.size_bytes in (2 ** 16, 2 ** 20, 2 ** 24, 2 ** 28, 2 ** 30)
            else:                                             # DeepEP V1 over amazon NVSHMEM, the FP8 dispatch line
                assert c.group == "b300kit-deepep" and c.nic_family == "efa_nvshmem" and c.kind == "normal"
                assert (c.op, c.format, c.counts, c.published_GBps) == ("dispatch", "fp8", "rdma", 87.25)
                assert c.workload["tokens_per_rank"] == 4096 and c.workload["experts"] == 256
        elif c.file.startswith(THIRTEENTH):                   # a2a14m: NCCL over ConnectX, an H100 cluster (fresh13)
            gpus = c.ep // c.nodes
            assert c.kind == "alltoall" and c.counts == "busbw" and c.nic_family == "ib_nccl" and c.group == "ntc-nccl"
            assert c.file == f"nccl-ntc-h100-g{gpus}-alltoall.yaml" and gpus in (1, 2, 4, 8) and c.nodes in (2, 10)
            assert c.topology == f"published/h100-ib-{c.nodes}x{gpus}" and c.element_bytes == 8
            assert c.source == NTC + ("benchmarks/example-cluster01/nccl-benchmark-results/multi-node/runs/"
                                      f"20260129-180219/without-debug/logs/nccl_N10_G{gpus}.log")
            assert c.size_bytes % (c.ep * 8) == 0 and c.size_bytes > 31 << 20      # 32 MiB rounded down, doubles
        elif c.file.startswith(FOURTEENTH):                   # pub14m: RCCL on OCI MI355X + Pollara (fresh14)
            assert c.kind == "alltoall" and c.counts == "busbw" and c.nic_family == "ib_nccl" and c.group == "oci-rccl"
            assert c.source == OCI and (c.ep, c.nodes) in ((16, 2), (32, 4)) and c.element_bytes == 4
            assert c.topology == f"published/oci-mi355x-pollara-{c.nodes}x8" and c.size_bytes in (2 ** 33, 2 ** 34)
        elif c.file.startswith(FIFTEENTH):                    # pub15: RCCL on 2 x 8 MI355X + AINIC (fresh15)
            assert c.kind == "alltoall" and c.counts == "busbw" and c.nic_family == "ib_nccl" and c.group == "amdkit-rccl"
            assert c.source == AMDKIT and (c.ep, c.nodes) == (16, 2) and c.element_bytes == 4
            assert c.topology == "published/amdkit-mi355x-ainic-2x8" and c.size_bytes in [2 ** k for k in range(8, 33)]
        elif c.file.startswith(SIXTEENTH):                    # pub16: NCCL on 2 x 2 V100 + one EDR NIC per node (fresh16)
            assert c.kind == "alltoall" and c.counts == "busbw" and c.nic_family == "ib_nccl" and c.group == "nig-nccl"
            assert c.source == NIG and (c.ep, c.nodes) == (4, 2) and c.element_bytes == 4
            assert c.topology == "published/nig-v100-edr-2x2" and c.size_bytes in [2 ** k for k in range(4, 28)]
        elif c.file.startswith(SEVENTEENTH):                  # pub17: NCCL on 2 x 1 A100 PCIe + one 200 Gb/s IB port (fresh17)
            assert c.kind == "alltoall" and c.counts == "busbw" and c.nic_family == "ib_nccl" and c.group == "a100pcie-nccl"
            assert c.source == A100PCIE and (c.ep, c.nodes) == (2, 2) and c.element_bytes == 4
            assert c.topology == "published/a100pcie-ib-2x1" and c.size_bytes in [2 ** k for k in range(10, 20)]
        elif c.file.startswith(EIGHTEENTH):                   # pub18: NCCL on 2 x 8 B200 + 8 NDR rails per node (fresh18)
            assert c.kind == "alltoall" and c.counts == "busbw" and c.nic_family == "ib_nccl" and c.group == "orcd-b200-nccl"
            assert c.source == ORCD + "b200-nodes/out-nccl-2node/nccl-2node-5500-5501-19791438.out"
            assert (c.ep, c.nodes) == (16, 2) and c.element_bytes == 4
            assert c.topology == "published/orcd-b200-ib-2x8" and c.size_bytes in [2 ** k for k in range(20, 35, 2)]
        elif c.file.startswith(TWENTIETH):                    # pub22: DeepEP PR #521's H100 tables (fresh20)
            assert c.kind == "normal" and c.counts == "rdma" and c.nic_family == "ib" and c.published_latency_us is None
            assert c.source == PR521 and c.group in ("deepep-pr521-nvshmem", "deepep-pr521-nccl")
            assert (c.ep, c.nodes) in ((16, 2), (32, 4), (64, 8)) and c.topology == f"published/pr521-h100-ib-{c.nodes}x8"
            assert (c.op, c.format) in (("dispatch", "fp8"), ("combine", "bf16"))
            assert (c.workload["tokens_per_rank"], c.workload["experts"], c.workload["topk_groups"]) == \
                (4096, 256, "min(nodes, 4)")
        elif c.kind == "alltoall":                            # nccl-tests alltoall_perf rows (a2a14g)
            assert c.file.startswith("nccl-") and c.counts == "busbw" and c.size_bytes % (c.ep * 4) == 0
            assert c.source.startswith(("https://github.com/awslabs/awsome-distributed-ai/blob/",
                                        "https://github.com/crazyguitar/aws-gpu-communication-benchmark/blob/a77f70d"))
            assert (c.nic_family, c.topology) in (("efa_nccl", f"published/p6-b300-efa-{c.nodes}x8"),
                                                  ("efa_v1_nccl", f"published/p5-h100-efa-{c.nodes}x8"))
        elif c.file.startswith(ELEVENTH):                      # the eleventh round (pub14k): fresh11, DeepEP V1 on Azure
            assert c.kind == "normal" and c.counts == "rdma" and c.nic_family == "ib" and c.published_latency_us is None
            assert c.source == ("https://github.com/vinil-v/DeepEP-Azure-buildsuite/blob/"
                                "96a77f025840a0570a7f37b79337954ec1f70571/README.md")
            assert c.group == "azure-deepep" and (c.ep, c.nodes) == (16, 2)
            assert c.topology == "published/azure-ndv5-h100-ib-2x8" and c.workload["tokens_per_rank"] == 4096
            assert c.workload["experts"] == 256 and c.workload["topk_groups"] == "min(nodes, 4)"
        elif c.file.startswith(TENTH):                         # the tenth round (pub14j): fresh10, DeepEP V1 on ConnectX
            assert c.kind == "normal" and c.counts == "rdma" and c.nic_family == "ib" and c.published_latency_us is None
            assert c.workload["experts"] == 256 and c.workload["topk_groups"] == "min(nodes, 4)"
            if c.file.startswith("nebius-"):                   # uccl#444's 'Best' lines, Nebius H200 + CX7 (uccl#531)
                assert c.source == "https://github.com/uccl-project/uccl/pull/444#issuecomment-3408540251"
                assert c.group == "nebius-deepep" and (c.ep, c.nodes) == (16, 2) and c.topology == "published/h200-ib-2x8"
                assert c.workload["tokens_per_rank"] == 4096
            else:                                              # a Google engineer's DeepEP guide, GCP B200 + RoCE
                assert c.source == ("https://github.com/yangwhale/gpu-tpu-pedia/blob/9b90c7615a58f26542e84a890b1d4df308bc89f4/"
                                    "gpu/deepep/DEEPEP_GUIDE.md")
                assert c.group == "gcp-deepep" and (c.ep, c.nodes) in ((16, 2), (32, 4))
                assert c.topology == f"published/gcp-b200-roce-{c.nodes}x8" and c.workload["tokens_per_rank"] == 2048
        elif c.file.startswith(NINTH):                         # the ninth round (pub14i): fresh9
            assert c.kind == "normal" and c.counts == "rdma" and c.published_latency_us is None
            if c.file.startswith("aws-b200-"):                 # AWS's matched B200 campaign, 'Prefill comparison'
                assert c.source == ("https://github.com/awslabs/awsome-distributed-ai/blob/46793a8d47446418333a501540c7cbb1f437566d/"
                                    "micro-benchmarks/expert-parallelism/ep-backend-comparison/RESULTS-b200.md")
                assert c.group in ("aws-b200-deepep", "aws-b200-uccl")
                assert c.nic_family == ("efa_nvshmem" if c.group == "aws-b200-deepep" else "efa")
                assert (c.ep, c.nodes) in ((16, 2), (32, 4)) and c.topology == f"published/p6-b200-efa-{c.nodes}x8"
                assert (c.workload["tokens_per_rank"], c.workload["experts"]) == (4096, 256)
            else:                                              # MORI's EP16 SOP, the rows fresh7 kept for later
                assert c.source == "https://github.com/ROCm/mori/blob/ac97b1d6de1b155dfd1982cde6fea7f813f709fb/docs/EP16.en.md"
                assert c.group == "mori-sop" and c.nic_family == "ib" and c.workload["topk_groups"] == "none"
                assert c.workload["tokens_per_rank"] in (16384, 32768, 65536) and c.topology == "published/mi355x-pollara-2x8"
        elif c.id in third:
            assert c.source.startswith(("https://github.com/uccl-project/uccl/blob/da914a2",
                                        "https://github.com/deepseek-ai/DeepEP/issues/493")) and c.nic_family == "ib"
            assert c.group in ("uccl-amd", "deepep-user") and c.topology.startswith(("published/mi3", "published/mi355x-",
                                                                                   "published/h200-ib-"))
        elif c.id in fourth:
            assert c.source.startswith("https://github.com/awslabs/awsome-distributed-ai/blob/")
            # DeepEP over NVSHMEM's libfabric host proxy: its own family since pub14e; UCCL-EP stays efa
            assert c.nic_family == ("efa_nvshmem" if c.group == "aws-deepep" else "efa_v1" if "-p5-" in c.id else "efa")
            assert c.group in ("aws-deepep", "aws-uccl") and c.topology in (f"published/p6-b300-efa-{c.nodes}x8",
                                                                            f"published/p5-h100-efa-{c.nodes}x8")
        elif c.id in fifth:
            assert c.source == ("https://github.com/whn09/ep-benchmarks-efa/blob/3ebc18860776c39fdbcc7ad841c9a310ea123429/"
                                "uccl-ep-efa/README.md") and c.group == "efa-bench-uccl"
            assert c.nic_family == ("efa_v1" if "-p5-" in c.id else "efa")      # UCCL-EP over EFA v1: efa_v1 (pub14f)
            assert c.ep == 16 and c.topology in ("published/p5-h100-efa-2x8", "published/p5en-h200-efa-2x8")
        elif c.id in sixth:                                     # whn09's top README at 13fde92 (pub14f)
            assert c.source == "https://github.com/whn09/ep-benchmarks-efa/blob/13fde92084516c3206e82c842ce944a8a6dd6e2d/README.md"
            assert c.group == "efa-bench5" and c.ep == 16 and c.nodes == 2
            assert c.nic_family == ("efa_nvshmem" if "-deepep-" in c.id else "efa")
            assert c.topology in ("published/p6-b300-efa-2x8", "published/p5-h100-efa-2x8", "published/p5en-h200-efa-2x8")
        elif c.file.startswith("nvshmem-efa-"):                 # the efa_nvshmem family's fitting cases (pub14e)
            assert c.source == ("https://github.com/whn09/ep-benchmarks-efa/blob/3ebc18860776c39fdbcc7ad841c9a310ea123429/"
                                "deepep-v1-efa/README.md") and c.nic_family == "efa_nvshmem" and c.group == "nvshmem-efa"
            assert c.ep == 16 and c.nodes == 2 and c.topology in ("published/p5-h100-efa-2x8", "published/p5en-h200-efa-2x8")
            assert c.id not in test | fresh | fresh2 | fresh3 | fresh4 | fresh5  # fitting cases, never held out
        elif c.file.startswith("mori-"):                       # MORI-EP on AMD MI300X / MI355X (pub14g)
            assert c.source in ("https://github.com/ROCm/mori/blob/99bc0a3a6e7a70aacc6372cd9a4275ccfb4de567/README.md",
                                "https://github.com/ROCm/mori/blob/ac97b1d6de1b155dfd1982cde6fea7f813f709fb/docs/EP16.en.md")
            assert c.group in ("mori-readme", "mori-sop") and c.nic_family == "ib" and c.kind == "normal"
            assert c.ep == 16 and c.counts == "rdma" and c.workload["topk_groups"] == "none"
            assert c.topology in ("published/mi300x-cx7-ib-2x8", "published/mi355x-pollara-2x8")
        elif c.file.startswith("p5en-a2a-"):                   # UCCL-EP LL at 4-128 tokens, whn09/deepseek-v4-sglang (pub14h)
            assert c.source.startswith("https://github.com/whn09/deepseek-v4-sglang/blob/41495f8f89807d0bdfd39538567eb96fc3effa36/"
                                       "results/p5en-a2a/a2a-uccl-")
            assert c.group == "p5en-a2a" and c.nic_family == "efa" and c.kind == "low_latency"
            assert c.ep == 16 and c.nodes == 2 and c.topology == "published/p5en-h200-efa-2x8"
            assert c.workload["masked_choices"] == 0 and c.workload["experts"] == 256
            assert (c.workload["hidden"], c.workload["top_k"]) in ((7168, 8), (4096, 6))
        elif c.file.startswith(("deepep-v2-", "deepep-pcie-", "hybridep-")):
            assert c.source.startswith("https://github.com/deepseek-ai/DeepEP/blob/") and c.nic_family == "ib"
            assert c.kind == "normal" and c.counts == "rdma" and c.group is not None
        elif c.file.startswith("deepep-"):
            assert c.source.startswith("https://github.com/deepseek-ai/DeepEP/blob/")
            assert c.topology == f"published/h800-ib-{c.nodes}x8" and c.nic_family == "ib"
        else:
            assert c.source.startswith("https://github.com/uccl-project/uccl/blob/")
            cluster = "p5en-h200" if "p5en" in c.id else "p6-b200"
            assert c.topology == f"published/{cluster}-efa-{c.nodes}x8" and c.nic_family == "efa"
    # the low-latency figures are bytes / latency: 1014 selections x 7408 B (fp8) or 14336 B (bf16); UCCL's p5en
    # table pairs two rows' bandwidth and latency from different runs (data/published/uccl-ep-p5en-low-latency.yaml)
    for c in cases:
        if c.id in fourth:                                    # the aws tables give bandwidth only, no latency
            assert c.published_latency_us is None
        elif c.id == "efa-bench-uccl-p5-ll-ep16-combine":          # the source gives '~21 GB/s' only, no latency
            assert c.published_latency_us is None
        elif c.file.startswith("p5en-a2a-"):                   # no masking: tokens x top-k selections, the script's bytes
            w = c.workload
            per = w["hidden"] + w["hidden"] // 128 * 4 + 16 if c.op == "dispatch" else w["hidden"] * 2
            assert c.published_GBps * c.published_latency_us * 1e3 == pytest.approx(w["tokens_per_rank"] * w["top_k"] * per,
                                                                                   rel=1e-3)
        elif c.kind == "low_latency" and c.id not in ("uccl-p5en-ll-ep16-dispatch", "uccl-p5en-ll-ep32-combine",
                                                     "uccl-mi300x-cx7-ll-ep32-dispatch"):   # -10%, noted in its file
            per = 7408 if c.op == "dispatch" else 14336
            assert c.published_GBps * c.published_latency_us * 1e3 == pytest.approx(1014 * per, rel=0.011 if c.file.startswith("deepep-") else 0.04)


def test_fresh_case_files_read_as_their_sources_count():
    """The later sources' workload fields: no node limit, experts per rank, bytes beside the values, group."""
    by_id = {c.id: c for c in load_cases()}
    v2 = by_id["deepep-v2-sm90-ep32-dispatch"]
    t = case_traffic(dataclasses.replace(v2, workload={**v2.workload, "tokens_per_rank": 64}))
    assert t.bytes_per_token == 7168 + 224 + 64 + 32                  # fp8 values, scales, top-k ids and weights
    combine = by_id["deepep-v2-sm90-ep32-combine"]
    assert case_traffic(dataclasses.replace(combine, workload={**combine.workload, "tokens_per_rank": 64})
                        ).bytes_per_token == 7168 * 2 + 32
    assert source_group(v2) == "deepep-v2" and source_group(by_id["deepep-normal-inter-ep16-dispatch"]) == "deepep"
    # no node limit: tokens reach all 4 nodes (the V1 workload's min(nodes, 4) would allow it too; at 8 nodes not)
    h = by_id["hybridep-h100-ep64-combine"]
    h = dataclasses.replace(h, workload={**h.workload, "tokens_per_rank": 256})      # the file's fields, fewer tokens
    th = case_traffic(h)
    assert th.choice_traffic.shape == (64, 64) and th.node_tokens.shape == (64, 8)
    assert (th.node_tokens > 0).sum(axis=1).max() == 8
    # 8 experts per rank: 512 experts; a token's 8 distinct experts give 8 (token, expert) pairs
    assert th.choice_tokens.sum() == 64 * 256 * 8
    # one-GPU nodes (no NVLink): (token, node) pairs are (token, rank) pairs
    p = case_traffic(dataclasses.replace(by_id["deepep-pcie-h20-ep8-dispatch"],
                                         workload={**by_id["deepep-pcie-h20-ep8-dispatch"].workload, "tokens_per_rank": 256}))
    assert np.array_equal(p.node_tokens, p.rank_tokens)


@pytest.mark.parametrize("workload, message", [
    ({"topk_groups": "all"}, "a.yaml: workload.topk_groups='all' must be 'min(nodes, 4)', 'none'"),
    ({"experts_per_rank": 0}, "a.yaml: workload.experts_per_rank=0 must be an integer >= 1"),
    ({"experts_per_rank": 2, "experts": 32}, "a.yaml: workload.experts and workload.experts_per_rank: give one"),
    ({"dispatch_metadata_bytes": -1}, "a.yaml: workload.dispatch_metadata_bytes=-1 must be an integer >= 0"),
    # robust5: a typo of a workload field was ignored (experts fell back to 256, topk_groups to min(nodes, 4))
    ({"expert": 128}, "a.yaml: workload.expert=128 is not a known field; known: tokens_per_rank"),
    ({"topk_group": 2}, "a.yaml: workload.topk_group=2 is not a known field"),
    # robust5: experts 4 at ep 16 became 16 experts silently; top_k above the experts was a numpy error (no file)
    ({"experts": 4}, "a.yaml: workload.experts=4 is fewer than cases[0].ep=16 (case x): every rank holds at least one"),
    ({"top_k": 40}, "a.yaml: workload.top_k=40 exceeds the 32 experts of cases[0] (case x, ep=16)"),
    ({"experts_per_rank": 1, "top_k": 17}, "a.yaml: workload.top_k=17 exceeds the 16 experts of cases[0]"),
])
def test_bad_workload_names_file_field_and_value(tmp_path, workload, message):
    _write_case_file(tmp_path)
    doc = json.loads((tmp_path / "a.yaml").read_text())
    doc["workload"] = {k: v for k, v in {**doc["workload"], **workload}.items()
                       if not ("experts_per_rank" in workload and k == "experts" and "experts" not in workload)}
    (tmp_path / "a.yaml").write_text(json.dumps(doc))
    with pytest.raises(ValueError) as error:
        load_cases(tmp_path)
    assert message in str(error.value)


def _write_case_file(folder: Path, **override):
    case = {"id": "x", "kind": "normal", "ep": 16, "nodes": 2, "op": "dispatch", "format": "fp8",
            "published_GBps": 40, "counts": "rdma", **override}
    text = {"source": {"url": "https://example.org/table"},
            "workload": {"tokens_per_rank": 32, "hidden": 256, "top_k": 4, "experts": 32},
            "cases": [case]}
    (folder / "a.yaml").write_text(json.dumps(text))


@pytest.mark.parametrize("override, message", [
    ({"ep": 12, "nodes": 5}, "a.yaml: cases[0].nodes=5 must be an integer >= 1 dividing ep=12"),
    ({"op": "reduce"}, "a.yaml: cases[0].op='reduce' must be one of ('dispatch', 'combine')"),
    ({"published_GBps": -3}, "a.yaml: cases[0].published_GBps=-3 must be a number > 0"),
    ({"counts": "nvlink"}, "a.yaml: cases[0].counts='nvlink': a normal kernel counts nvlink bytes on one node"),
    # robust5: a typo of a field of a normal or low-latency case was ignored (the case read without it)
    ({"published_latncy_us": 120}, "a.yaml: cases[0].published_latncy_us=120: not a field of a normal case"),
    ({"kind": "low_latency", "size_bytes": 4096}, "a.yaml: cases[0].size_bytes=4096: not a field of a low_latency case"),
])
def test_bad_case_files_name_file_field_and_value(tmp_path, override, message):
    _write_case_file(tmp_path, **override)
    with pytest.raises(ValueError) as error:
        load_cases(tmp_path)
    assert message in str(error.value)


@pytest.mark.parametrize("top, message", [
    # robust5: a KeyError traceback; "Single '{' encountered in format string" naming no file; a case that is a list
    # was reported as a missing workload
    ({"topology": "published/p5-{foo}-{nodes}x8"},
     "a.yaml: topology='published/p5-{foo}-{nodes}x8' is not a usable name template ('foo')"),
    ({"topology": "published/h800-ib-{nodes}x8{"},
     "a.yaml: topology='published/h800-ib-{nodes}x8{' is not a usable name template (Single '{'"),
    ({"cases": [[1, 2]]}, "a.yaml: cases[0]=[1, 2] must be a mapping (id, kind, ep, nodes, ...)"),
])
def test_a_bad_topology_template_or_case_names_the_file(tmp_path, top, message):
    _write_case_file(tmp_path)
    doc = json.loads((tmp_path / "a.yaml").read_text())
    (tmp_path / "a.yaml").write_text(json.dumps({**doc, **top}))
    with pytest.raises(ValueError) as error:
        load_cases(tmp_path)
    assert message in str(error.value)


def test_split_names_only_known_cases(tmp_path):
    _write_case_file(tmp_path)
    (tmp_path / "split.yaml").write_text("test: [x, nope]\n")
    with pytest.raises(ValueError, match=r"split.yaml: test\[1\]='nope' is not a case id"):
        load_split(tmp_path)
    (tmp_path / "split.yaml").write_text("test: [x]\nfresh: [nope]\n")
    with pytest.raises(ValueError, match=r"split.yaml: fresh\[0\]='nope' is not a case id"):
        load_fresh(tmp_path)
    (tmp_path / "split.yaml").write_text("test: [x]\nfresh: [x]\n")
    with pytest.raises(ValueError, match=r"split.yaml: fresh\[0\]='x' is also a test case"):
        load_fresh(tmp_path)
    for earlier, later in [("fresh", "fresh2"), ("fresh2", "fresh3"), ("fresh3", "fresh4"), ("fresh4", "fresh5"),
                           ("fresh5", "fresh6"), ("fresh6", "fresh7"), ("fresh7", "fresh8"),
                           ("fresh8", "fresh9"), ("fresh9", "fresh10"), ("fresh10", "fresh11"),
                           ("fresh11", "fresh12"), ("fresh12", "fresh13"), ("fresh13", "fresh14"),
                           ("fresh14", "fresh15"), ("fresh15", "fresh16"), ("fresh16", "fresh17"),
                           ("fresh17", "fresh18"), ("fresh18", "fresh20")]:
        (tmp_path / "split.yaml").write_text(f"{earlier}: [x]\n{later}: [x]\n")
        with pytest.raises(ValueError, match=rf"split.yaml: {later}\[0\]='x' is also in {earlier}"):
            load_fresh(tmp_path, key=later)
    (tmp_path / "split.yaml").write_text("test: [x]\nfresh5: [x]\n")
    with pytest.raises(ValueError, match=r"split.yaml: fresh5\[0\]='x' is also a test case"):
        load_fresh(tmp_path, key="fresh5")
    with pytest.raises(ValueError, match=r"key='fresh21' must be one of"):
        load_fresh(tmp_path, key="fresh21")


def test_published_takes_a_folder(tmp_path):
    """robust4: a case file or a missing folder given to --published read "no case files (*.yaml)"."""
    _write_case_file(tmp_path)
    with pytest.raises(ValueError, match=r"a.yaml: is a file; --published takes the folder"):
        load_cases(tmp_path / "a.yaml")
    with pytest.raises(ValueError, match=r"nope: no such folder of published cases"):
        load_cases(tmp_path / "nope")


def test_split_refuses_an_unknown_set_and_an_id_listed_twice(tmp_path, capsys):
    """robust4: a held-out set under a name no reader knows (a typo, a future fresh14) was ignored, so its cases were
    fitted on (exit 0); an id listed twice was taken once. Both refused, by the command too, before any simulation."""
    _write_case_file(tmp_path)
    (tmp_path / "split.yaml").write_text("test: [x]\nfresh99: [x]\n")
    with pytest.raises(ValueError, match=r"split.yaml: fresh99=\['x'\] is not a held-out set of split.yaml; known: "
                                         r"test, fresh, fresh2"):
        load_split(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["validate", "--published", str(tmp_path), "--jobs", "1", "--quiet"])
    assert info.value.code == 2 and "fresh99" in capsys.readouterr().err
    (tmp_path / "split.yaml").write_text("test: [x, x]\n")
    with pytest.raises(ValueError, match=r"split.yaml: test\[1\]='x' is listed twice \(first at test\[0\]\)"):
        load_split(tmp_path)
    (tmp_path / "split.yaml").write_text("fresh3: [x, x]\n")
    with pytest.raises(ValueError, match=r"split.yaml: fresh3\[1\]='x' is listed twice"):
        load_fresh(tmp_path, key="fresh3")


def test_ib_nccl_cases_load_and_fresh13_is_their_seeded_draw(tmp_path):
    """a2a14m: the 52 nccl-tests alltoall_perf rows of an H100 cluster with a 400 Gb/s ConnectX-class NIC per GPU
    (nic_family ib_nccl, 10 nodes x 1/2/4/8 GPUs and the first pair of nodes): the files load with their figures,
    fresh13 is split.yaml's rule redone (numpy default_rng(17), ceil(n / 3) per (file, nodes)), apart from every
    other held-out set, and the fit refuses its cases."""
    from lshsim.sim.published import FRESH_SETS
    cases = load_cases()
    ntc = [c for c in cases if c.file.startswith(THIRTEENTH)]
    assert len(ntc) == 52 and {c.nic_family for c in ntc} == {"ib_nccl"}
    # the only other ib_nccl cases: pub14m's and pub15's RCCL rows, where the family stands in, pub16's NCCL rows on
    # V100 + EDR, pub17's on A100 PCIe + a 200 Gb/s IB port and pub18's on 2 x 8 B200 + 8 NDR rails: held out but for
    # pub15's and pub16's rows below 32 MiB, calibration points since the tenth session, and pub17's (all below 32 MiB),
    # calibration points since the eleventh (pub18's rows, those below 32 MiB included, stay held out)
    others = [c for c in cases if c.nic_family == "ib_nccl" and not c.file.startswith(THIRTEENTH)]
    assert {c.id for c in others if c.size_bytes >= 32 << 20 or not c.file.startswith(FIFTEENTH + SIXTEENTH
                                                                                     + SEVENTEENTH)} == \
        load_fresh(PUBLISHED_DIR, cases, key="fresh14") | load_fresh(PUBLISHED_DIR, cases, key="fresh15") \
        | load_fresh(PUBLISHED_DIR, cases, key="fresh16") | load_fresh(PUBLISHED_DIR, cases, key="fresh17") \
        | load_fresh(PUBLISHED_DIR, cases, key="fresh18")
    by_id = {c.id: c for c in ntc}
    assert (by_id["ntc-h100-g8-ep80-32MiB"].size_bytes, by_id["ntc-h100-g8-ep80-32MiB"].published_GBps) == (33553920, 34.15)
    assert by_id["ntc-h100-g8-ep16-16GiB"].published_GBps == 92.04 and by_id["ntc-h100-g1-ep10-16GiB"].published_GBps == 44.66
    assert by_id["ntc-h100-g4-ep40-2GiB"].size_bytes == 2147483520 and by_id["ntc-h100-g2-ep4-8GiB"].nodes == 2
    assert "fresh13" in FRESH_SETS
    fresh13 = load_fresh(PUBLISHED_DIR, cases, key="fresh13")
    groups = {}
    for c in ntc:
        groups.setdefault((c.file, c.nodes), []).append(c.id)
    rng = np.random.default_rng(17)
    drawn = {g[i] for key in sorted(groups) for g in [groups[key]]
             for i in rng.choice(len(g), math.ceil(len(g) / 3), replace=False)}
    assert fresh13 == drawn and len(fresh13) == 20 and 3 * len(fresh13) >= len(ntc) and len(groups) == 8
    others = load_split(PUBLISHED_DIR, cases).union(*(load_fresh(PUBLISHED_DIR, cases, key=k)
                                                      for k in FRESH_SETS if k != "fresh13"))
    assert not fresh13 & others and fresh13 <= set(by_id)
    for key, ids in groups.items():                       # every group keeps fitting cases
        assert set(ids) - fresh13, key
    # the fit refuses a fresh13 case, and a folder whose only case is in fresh13 has nothing to fit on
    held = sorted(fresh13)[0]
    run = CaseRun(by_id[held], 1e9, 0.0, {e: 1e-2 for e in GRID}, messages=8.0)
    with pytest.raises(ValueError, match=rf"held-out\) cases must never be fitted on: {held}"):
        fit_calibration([run], fresh13, GRID)
    other = next(cid for cid in groups[(by_id[held].file, by_id[held].nodes)] if cid not in fresh13)
    doc = yaml.safe_load((PUBLISHED_DIR / by_id[held].file).read_text())
    doc["cases"] = [raw for raw in doc["cases"] if raw["id"] in (held, other)]
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "split.yaml").write_text(f"test: [{other}]\nfresh13: [{held}]\n")   # fresh13 counts as held out
    with pytest.raises(ValueError, match="every one of the 2 cases is held out"):
        validate_published(tmp_path)


def test_oci_rccl_cases_read_as_the_page_prints_them(tmp_path):
    """pub14m: the four out-of-place rows of OCI's MI355X + Pollara 'All 2 All - 2 / 4 Nodes' tables (rccl-tests
    alltoall_perf, floats): each row's count column gives its ranks (size / 4 B / count = 8 per node x nodes), its busbw
    is its algbw x (n - 1) / n, the topology holds the stated 8 x 400 Gb/s per node, every case is in fresh14 only, and
    the fit refuses them."""
    from lshsim.sim.published import FRESH_SETS
    from lshsim.topology.spec import read_spec

    cases = load_cases()
    oci = {c.id: c for c in cases if c.file.startswith(FOURTEENTH)}
    # (id, size, count column, out-of-place algbw, busbw) as the page prints them
    rows = [("oci-mi355x-ep16-8GiB", 8589934592, 134217728, 92.38, 86.60),
            ("oci-mi355x-ep16-16GiB", 17179869184, 268435456, 92.51, 86.73),
            ("oci-mi355x-ep32-8GiB", 8589934592, 67108864, 51.82, 50.20),
            ("oci-mi355x-ep32-16GiB", 17179869184, 134217728, 52.26, 50.63)]
    assert sorted(oci) == sorted(r[0] for r in rows)
    for cid, size, count, algbw, busbw in rows:
        c = oci[cid]
        assert (c.size_bytes, c.published_GBps) == (size, busbw)
        assert size // 4 // count == c.ep == 8 * c.nodes                  # the count column: size / float / ranks
        assert busbw == pytest.approx(algbw * (c.ep - 1) / c.ep, abs=0.01)    # both printed to 0.01
        assert alltoall_per_peer_bytes(c) * c.ep == size                 # even split, nothing rounded away
        spec, _ = read_spec(c.topology)
        assert (spec["nodes"], spec["gpus_per_node"]) == (c.nodes, 8)
        assert (spec["inter"]["nics_per_node"], spec["inter"]["nic_gbps"]) == (8, 400)
    fresh14 = load_fresh(PUBLISHED_DIR, cases, key="fresh14")
    assert fresh14 == set(oci)
    held = sorted(fresh14)[0]
    _assert_held_out_alone(cases, fresh14, "fresh14", oci[held])
    # a malformed copy of the file is refused, naming the file, the field and the value
    doc = yaml.safe_load((PUBLISHED_DIR / oci[held].file).read_text())
    doc["cases"][0]["element_bytes"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"bad.yaml: cases\[0\].element_bytes=3"):
        load_cases(tmp_path)




def _assert_held_out_alone(cases, ids: set, key: str, held) -> None:
    """The held-out set `key` (its case `ids`) shares no case with the test list or any other fresh set, and the fit
    refuses `held`, one of its cases."""
    from lshsim.sim.published import FRESH_SETS

    others = load_split(PUBLISHED_DIR, cases).union(*(load_fresh(PUBLISHED_DIR, cases, key=k)
                                                      for k in FRESH_SETS if k != key))
    assert held.id in ids and not ids & others
    run = CaseRun(held, 1e9, 0.0, {e: 1e-2 for e in GRID}, messages=8.0)
    with pytest.raises(ValueError, match=rf"held-out\) cases must never be fitted on: {held.id}"):
        fit_calibration([run], ids, GRID)

def _assert_rows_as_printed(by_size: dict, rows, *, ranks: int, busbw_tolerance: float) -> None:
    """Each (size, count column, out-of-place time us, printed busbw) row of an alltoall_perf log (floats, 2 nodes):
    the count column gives `ranks`, the case's figure is size x (ranks - 1) / ranks / time to 4 significant figures and
    agrees with the printed busbw within `busbw_tolerance` (the log's rounding), and the per-peer bytes add up."""
    for size, count, time_us, busbw in rows:
        c = by_size[size]
        assert size // 4 // count == c.ep == ranks and c.nodes == 2
        assert c.published_GBps == float(f"{size * (ranks - 1) / ranks / time_us / 1e3:.4g}")
        assert c.published_GBps == pytest.approx(busbw, abs=busbw_tolerance + 1e-9)
        assert alltoall_per_peer_bytes(c) * c.ep == size

def test_amdkit_rccl_cases_read_as_the_log_prints_them():
    """pub15: the 25 out-of-place rows (256 B - 4 GiB) of the multi-node rccl-tests alltoall_perf log of an MI355X + AINIC
    validation guide (16 ranks, floats): each figure is size x 15 / 16 / the printed time (4 significant figures) and
    agrees with the printed busbw within its 0.01 rounding, the count column gives 16 ranks, the topology holds 8 x 400
    Gb/s per node, every case is in fresh15 only, and the fit refuses them."""
    from lshsim.sim.published import FRESH_SETS
    from lshsim.topology.spec import read_spec

    cases = load_cases()
    kit = {c.size_bytes: c for c in cases if c.file.startswith(FIFTEENTH)}
    # (size, count column, out-of-place time us, printed out-of-place busbw) as the log prints them (a few rows)
    rows = [(256, 4, 38.61, 0.01), (65536, 1024, 36.97, 1.66), (1048576, 16384, 54.99, 17.88),
            (4194304, 65536, 87.84, 44.76), (8388608, 131072, 160.22, 49.09), (33554432, 524288, 401.10, 78.43),
            (4294967296, 67108864, 44361.2, 90.77)]
    assert sorted(kit) == [2 ** k for k in range(8, 33)]          # 256 B - 4 GiB, 8 / 16 GiB left out (fresh14's)
    _assert_rows_as_printed(kit, rows, ranks=16, busbw_tolerance=0.01)
    spec, _ = read_spec("published/amdkit-mi355x-ainic-2x8")
    assert (spec["nodes"], spec["gpus_per_node"], spec["inter"]["nics_per_node"], spec["inter"]["nic_gbps"]) == (2, 8, 8, 400)
    fresh15 = load_fresh(PUBLISHED_DIR, cases, key="fresh15")
    assert fresh15 == {c.id for size, c in kit.items() if size >= 32 << 20}     # below: fitting since the tenth session
    _assert_held_out_alone(cases, fresh15, "fresh15", kit[32 << 20])


def test_nig_nccl_cases_read_as_the_log_prints_them():
    """pub16: the 24 out-of-place rows (16 B - 128 MiB) of the nccl-tests alltoall_perf log of the NIG supercomputer's
    user guide (2 nodes x 2 V100 SXM2, one 100 Gb/s InfiniBand EDR NIC per node, 4 ranks, floats): each figure is size
    x 3 / 4 / the printed time (4 significant figures) and agrees with the printed busbw within its 0.01 rounding, the
    count column gives 4 ranks, the topology holds one 100 Gb/s NIC for the node's 2 GPUs, every case is in fresh16
    only, and the fit refuses them."""
    from lshsim.sim.published import FRESH_SETS
    from lshsim.topology.spec import read_spec

    cases = load_cases()
    nig = {c.size_bytes: c for c in cases if c.file.startswith(SIXTEENTH)}
    # (size, count column, out-of-place time us, printed out-of-place busbw) as the log prints them (a few rows)
    rows = [(16, 1, 24.52, 0.00), (1024, 64, 24.48, 0.03), (65536, 4096, 41.02, 1.20), (524288, 32768, 107.4, 3.66),
            (1048576, 65536, 209.0, 3.76), (16777216, 1048576, 1993.1, 6.31), (134217728, 8388608, 17761, 5.67)]
    assert sorted(nig) == [2 ** k for k in range(4, 28)]           # 16 B - 128 MiB, the three size-0 rows left out
    _assert_rows_as_printed(nig, rows, ranks=4, busbw_tolerance=0.005)
    spec, _ = read_spec("published/nig-v100-edr-2x2")
    assert (spec["nodes"], spec["gpus_per_node"], spec["inter"]["nics_per_node"], spec["inter"]["nic_gbps"]) == (2, 2, 1, 100)
    fresh16 = load_fresh(PUBLISHED_DIR, cases, key="fresh16")
    assert "fresh16" in FRESH_SETS and fresh16 == {c.id for size, c in nig.items() if size >= 32 << 20}
    _assert_held_out_alone(cases, fresh16, "fresh16", nig[32 << 20])


def test_a100pcie_nccl_cases_read_as_the_log_prints_them():
    """pub17: the 10 power-of-two out-of-place rows (1 KiB - 512 KiB) of one nccl-tests alltoall_perf log of
    thomaslie210/NCCL_Test_Results (2 nodes x 1 A100-PCIE-40GB, one InfiniBand port per node, 2 ranks, floats): each
    figure is size x 1 / 2 / the printed time (4 significant figures) and agrees with the printed busbw within its 0.01
    rounding, the count column gives 2 ranks, the topology holds one 200 Gb/s NIC for the node's one GPU; held out in
    fresh17 until their one prediction (tenth session), fitting cases (calibration points) since the eleventh: in no
    held-out set."""
    from lshsim.sim.published import FRESH_SETS
    from lshsim.topology.spec import read_spec

    cases = load_cases()
    a100 = {c.size_bytes: c for c in cases if c.file.startswith(SEVENTEENTH)}
    # (size, count column, out-of-place time us, printed out-of-place busbw) as the log prints them (a few rows)
    rows = [(1024, 128, 35.08, 0.01), (8192, 1024, 34.07, 0.12), (32768, 4096, 33.63, 0.49),
            (65536, 8192, 27.78, 1.18), (131072, 16384, 33.70, 1.94), (524288, 65536, 48.29, 5.43)]
    assert sorted(a100) == [2 ** k for k in range(10, 20)]      # 1 KiB - 512 KiB, the power-of-two rows of the sweep
    _assert_rows_as_printed(a100, rows, ranks=2, busbw_tolerance=0.005)
    assert a100[1024].published_GBps == 0.0146 and a100[524288].published_GBps == 5.429
    spec, _ = read_spec("published/a100pcie-ib-2x1")
    assert (spec["nodes"], spec["gpus_per_node"], spec["inter"]["nics_per_node"], spec["inter"]["nic_gbps"]) == (2, 1, 1, 200)
    assert spec["gpu"]["name"] == "A100-PCIE-40GB" and spec["intra"]["kind"] == "pcie"
    fresh17 = load_fresh(PUBLISHED_DIR, cases, key="fresh17")
    assert "fresh17" in FRESH_SETS and not fresh17
    held = load_split(PUBLISHED_DIR, cases).union(*(load_fresh(PUBLISHED_DIR, cases, key=k) for k in FRESH_SETS))
    assert not held & {c.id for c in a100.values()}


def test_orcd_b200_nccl_cases_read_as_the_logs_print_them():
    """pub18: every out-of-place row (1 MiB - 16 GiB, x4) of the four 2-node 16-rank alltoall_perf tables of
    mit-orcd/orcd-benchmarks (2 x 8 B200, eight NDR 400 Gb/s InfiniBand rails per node, floats): each figure is
    size x 15 / 16 / the printed time (4 significant figures) and agrees with the printed busbw within its 0.01 rounding
    (15.0 against 14.99 on the one row where the time's own rounding shows), the count column gives 16 ranks, the topology holds one
    400 Gb/s NIC per GPU, every case is in fresh18 only, and the fit refuses them."""
    from lshsim.sim.published import FRESH_SETS
    from lshsim.topology.spec import read_spec

    cases = load_cases()
    orcd = {c.id: c for c in cases if c.file.startswith(EIGHTEENTH)}
    pairs = ("rocky-5500-5501", "rocky-5500-5502", "rocky-5501-5502", "ubuntu-5700-5701")
    labels = {2 ** 20: "1MiB", 2 ** 22: "4MiB", 2 ** 24: "16MiB", 2 ** 26: "64MiB", 2 ** 28: "256MiB", 2 ** 30: "1GiB",
              2 ** 32: "4GiB", 2 ** 34: "16GiB"}
    assert set(orcd) == {f"orcd-b200-{p}-ep16-{label}" for p in pairs for label in labels.values()}
    # (pair, size, count column, out-of-place time us, printed out-of-place busbw) as the logs print them (a few rows)
    rows = [("rocky-5500-5501", 1048576, 16384, 712.8, 1.38), ("rocky-5500-5501", 17179869184, 268435456, 339089, 47.50),
            ("rocky-5500-5502", 16777216, 262144, 2018.9, 7.79), ("rocky-5501-5502", 4194304, 65536, 538.5, 7.30),
            ("rocky-5501-5502", 16777216, 262144, 1048.9, 14.99), ("ubuntu-5700-5701", 1048576, 16384, 285.3, 3.45),
            ("ubuntu-5700-5701", 67108864, 1048576, 1808.9, 34.78), ("ubuntu-5700-5701", 17179869184, 268435456, 290607, 55.42)]
    for pair, size, count, time_us, busbw in rows:
        c = orcd[f"orcd-b200-{pair}-ep16-{labels[size]}"]
        assert c.size_bytes == size and size // 4 // count == c.ep == 16 and c.nodes == 2
        assert c.published_GBps == float(f"{size * 15 / 16 / time_us / 1e3:.4g}")
        assert c.published_GBps == pytest.approx(busbw, abs=0.005 + 1e-9 if (pair, size) != ("rocky-5501-5502", 1 << 24)
                                                 else 0.01 + 1e-9)      # 2 decimals by the log; 14.995 -> 15.0 vs 14.99
        assert alltoall_per_peer_bytes(c) * c.ep == size
    spec, _ = read_spec("published/orcd-b200-ib-2x8")
    assert (spec["nodes"], spec["gpus_per_node"], spec["inter"]["nics_per_node"], spec["inter"]["nic_gbps"]) == (2, 8, 8, 400)
    assert spec["gpu"] == "b200" and spec["intra"]["kind"] == "nvswitch"
    fresh18 = load_fresh(PUBLISHED_DIR, cases, key="fresh18")
    assert "fresh18" in FRESH_SETS and fresh18 == set(orcd)
    _assert_held_out_alone(cases, fresh18, "fresh18", orcd["orcd-b200-rocky-5500-5501-ep16-1MiB"])


def test_pr521_deepep_cases_read_as_the_readme_prints_them():
    """pub22: every internode cell of the two normal-kernel tables of DeepEP pull request #521's README (db6a029; the
    same rows in README-NCCL.md at 6d29f34): DeepEP V1 on H100 + 8 x 400 Gbit/s InfiniBand per node, EP 16 / 32 / 64,
    FP8 dispatch and BF16 combine, 'NVSHMEM' and 'NCCL' backends, read as printed; the topologies hold 8 NICs of
    400 Gb/s and NVLink at 450 GB/s per direction; every case is in fresh20 only, and the fit refuses them."""
    from lshsim.sim.published import FRESH_SETS
    from lshsim.topology.spec import read_spec

    cases = load_cases()
    pr521 = {c.id: c for c in cases if c.file.startswith(TWENTIETH)}
    # (backend, EP, dispatch GB/s, combine GB/s) as the README's two tables print them
    rows = [("nvshmem", 16, 79.7, 66.4), ("nvshmem", 32, 62.9, 62.9), ("nvshmem", 64, 53.5, 53.2),
            ("nccl", 16, 76.9, 66.2), ("nccl", 32, 61.7, 62.3), ("nccl", 64, 52.7, 52.9)]
    assert set(pr521) == {f"pr521-{b}-h100-ep{ep}-{op}" for b, ep, _, _ in rows for op in ("dispatch-fp8", "combine")}
    for backend, ep, dispatch, combine in rows:
        d, c = pr521[f"pr521-{backend}-h100-ep{ep}-dispatch-fp8"], pr521[f"pr521-{backend}-h100-ep{ep}-combine"]
        assert (d.published_GBps, c.published_GBps) == (dispatch, combine) and d.nodes == c.nodes == ep // 8
        assert d.file == c.file == f"deepep-pr521-h100-{'nvshmem' if backend == 'nvshmem' else 'nccl-gin'}-normal.yaml"
        assert d.group == c.group == f"deepep-pr521-{backend}"
    for nodes in (2, 4, 8):
        spec, _ = read_spec(f"published/pr521-h100-ib-{nodes}x8")
        assert (spec["nodes"], spec["gpus_per_node"], spec["inter"]["nics_per_node"], spec["inter"]["nic_gbps"]) == \
            (nodes, 8, 8, 400)
        assert spec["gpu"] == "h100" and spec["intra"]["link_Bps"] == 450e9
    fresh20 = load_fresh(PUBLISHED_DIR, cases, key="fresh20")
    assert "fresh20" in FRESH_SETS and "fresh19" not in FRESH_SETS and fresh20 == set(pr521)
    _assert_held_out_alone(cases, fresh20, "fresh20", pr521["pr521-nccl-h100-ep64-combine"])


def test_routing_as_deepep_draws_it():
    idx = deepep_routing(3, 500, 64, 8, 8, 4, seed=1)
    assert idx.shape == (500, 8)
    assert all(len(set(row)) == 8 for row in idx.tolist())                 # 8 distinct experts
    assert max(len(set((row // 8).tolist())) for row in idx) <= 4          # on at most 4 of the 8 nodes
    assert np.array_equal(idx, deepep_routing(3, 500, 64, 8, 8, 4, seed=1))
    assert not np.array_equal(idx, deepep_routing(4, 500, 64, 8, 8, 4, seed=1))
    masked = deepep_routing(0, 128, 64, 8, 8, None, masked_choices=10)
    assert 1 <= (masked == -1).sum() <= 10                                 # 10 draws, a repeat possible


def test_counted_bytes_under_each_definition():
    # 2 nodes x 2 ranks, hand-made counts of rank 0: one token to ranks 1 (own node), 2 and 3 (node 1),
    # three choices (2 on rank 2)
    choice = np.zeros((4, 4), int)
    choice[0, [1, 2, 3]] = [1, 2, 1]
    rank = np.zeros((4, 4), int)
    rank[0, [1, 2, 3]] = 1
    node = np.zeros((4, 2), int)
    node[0] = [1, 1]
    t = DedupTraffic(choice, rank, node, 2, 100.0)
    mk = lambda counts, kind="normal": Case("c", kind, 4, 2, "dispatch", "fp8", 1.0, counts, {}, "", "")
    assert counted_bytes(mk("rdma"), t).tolist() == [200.0, 0, 0, 0]      # (token, node) pairs, own node too
    assert counted_bytes(mk("nvlink"), t).tolist() == [0, 100.0, 100.0, 100.0]   # received per rank
    assert counted_bytes(mk("choices", "low_latency"), t).tolist() == [400.0, 0, 0, 0]


GRID = (0.76, 0.8, 0.84, 0.9)          # a few efficiencies of EFFICIENCY_GRID (fast)


def _run(case, eff, alpha, beta=0.0):
    """A CaseRun whose published figure the model itself produced at (eff, alpha, beta): the fit's reference."""
    traffic = case_traffic(case)
    counted = float(counted_bytes(case, traffic).mean())
    sim = {e: simulate_case(case, traffic, e) for e in GRID}
    node = np.arange(case.ep) // case.gpus_per_node
    messages = float((traffic.choice_tokens * (node[:, None] != node[None, :])).sum(axis=1).mean())
    figure = counted / (sim[eff] + alpha[case.op] + beta * messages) / 1e9
    case = Case(case.id, case.kind, case.ep, case.nodes, case.op, case.format, figure, case.counts, case.workload,
                case.source, case.file, None, case.topology_template, case.nic_family)
    return CaseRun(case, counted, 0.0, sim, messages=messages)


def test_fit_recovers_known_parameters_per_family_and_refuses_held_out_cases():
    """Two NIC families with their own known (efficiency, start-ups, cost per message): each is recovered from its
    own low-latency cases (EP 16, 32, 64: the remote share of the messages grows, which separates beta from alpha)."""
    assert set(GRID) <= set(EFFICIENCY_GRID)
    workload = {"tokens_per_rank": 128, "hidden": 7168, "top_k": 8, "experts": 256, "masked_choices": 10}
    known = {"ib": ("published/h800-ib-{nodes}x8", 0.84, {"dispatch": 25e-6, "combine": 60e-6}, 0.05e-6),
             "efa": ("published/p6-b200-efa-{nodes}x8", 0.76, {"dispatch": 90e-6, "combine": 40e-6}, 0.3e-6)}
    runs = [_run(Case(f"{family}-{op}{ep}", "low_latency", ep, ep // 8, op, fmt, 1.0, "choices", workload, "", "",
                      None, template.replace("{nodes}x8", "{nodes}x8"), family), eff, alpha, beta)
            for family, (template, eff, alpha, beta) in known.items()
            for ep in ((16, 32, 64) if family == "ib" else (16, 24, 32))
            for op, fmt in (("dispatch", "fp8"), ("combine", "bf16"))]
    cal = fit_calibration(runs, set())
    for family, (_, eff, alpha, beta) in known.items():
        assert cal.nic_efficiency[family] == eff
        for op in ("dispatch", "combine"):
            assert cal.alpha_s[family]["low_latency"][op] == pytest.approx(alpha[op], abs=2e-7)
        assert cal.message_s[family] == pytest.approx(beta, abs=2e-9)
        assert cal.alpha_s[family]["normal"] == {}                       # no normal case: no normal start-up
    for r in runs:
        assert cal.predict_GBps(r) == pytest.approx(r.case.published_GBps, rel=1e-4)
    # the efficiency scales each topology's own NIC rate: p5en's 2 x 200 Gb/s per GPU = H800's 1 x 400 Gb/s
    # (were it 50 GB/s per NIC, p5en's GPUs would get 100 GB/s and half the time)
    p5en = Case("p5en", "low_latency", 16, 2, "dispatch", "fp8", 1.0, "choices", workload, "", "", None,
                "published/p5en-h200-efa-{nodes}x8", "efa")
    assert simulate_case(p5en, case_traffic(p5en), 0.84) == pytest.approx(runs[0].sim_s[0.84], rel=1e-6)
    with pytest.raises(ValueError, match=r"held-out\) cases must never be fitted on: ib-dispatch16"):
        fit_calibration(runs, {"ib-dispatch16"})
    only_ib = fit_calibration(runs[:6], set())
    with pytest.raises(ValueError, match="case efa-dispatch16: nic_family='efa' has no fitting case"):
        only_ib.predict_GBps(runs[6])


def test_demonstrated_efficiency_bounds_the_fit():
    """The floor: a rank's NIC carried its mean network bytes in the published time. A case showing 45 of 50 GB/s
    forbids efficiencies below 0.9, even where a lower one would fit the others better."""
    case = lambda cid, figure: Case(cid, "normal", 16, 2, "dispatch", "fp8", figure, "rdma", {}, "", "")
    fast = CaseRun(case("fast", 90.0), counted=100e6, network_bytes=50e6, sim_s={0.8: 1.25e-3, 0.9: 1.111e-3,
                   1.0: 1.0e-3}, nic_gpu_Bps=50e9)                        # 50 MB in 100/90 ms ... 45 GB/s: eff >= 0.9
    slow = CaseRun(case("slow", 40.0), counted=100e6, network_bytes=50e6, sim_s={0.8: 2.5e-3, 0.9: 2.22e-3,
                   1.0: 2.0e-3}, nic_gpu_Bps=50e9)
    assert demonstrated_efficiency([fast, slow]) == {"ib": pytest.approx(0.9)}
    assert demonstrated_efficiency([slow]) == {"ib": pytest.approx(0.4)}
    assert demonstrated_efficiency([CaseRun(case("one", 90.0), 1e6, 0.0, {})]) == {}     # one node: no bound
    cal = fit_calibration([fast, slow], set())
    assert cal.nic_efficiency["ib"] >= 0.9 and cal.efficiency_floor["ib"] == pytest.approx(0.9)
    assert fit_calibration([slow], set()).nic_efficiency["ib"] == 0.8          # the best fit where nothing forbids it
    # a figure above the line rate (110 GB/s of counted bytes: its NIC would carry 55 of 50 GB/s) allows no
    # efficiency of the grid: the highest, line rate, is taken (not the lowest)
    over = dataclasses.replace(fast, case=case("over", 110.0))
    assert demonstrated_efficiency([over]) == {"ib": pytest.approx(1.1)}
    assert fit_calibration([over], set()).nic_efficiency["ib"] == 1.0


def test_validate_published_command(tmp_path, capsys):
    """A small folder of two sources (deepep: two fitting cases and one test case; other: one fitting case on
    the p6-b200 EFA topology, its own family), through the command line."""
    cases = {"source": {"url": "https://example.org/table"},
             "workload": {"tokens_per_rank": 64, "hidden": 512, "top_k": 8, "experts": 64},
             "cases": [{"id": f"n{ep}-{op}", "kind": "normal", "ep": ep, "nodes": ep // 8, "op": op,
                        "format": "fp8" if op == "dispatch" else "bf16", "published_GBps": 40,
                        "counts": "rdma" if ep > 8 else "nvlink"}
                       for ep, op in ((16, "dispatch"), (16, "combine"), (8, "dispatch"))]}
    (tmp_path / "deepep-cases.yaml").write_text(json.dumps(cases))
    other = {**cases, "topology": "published/p6-b200-efa-{nodes}x8", "nic_family": "efa",
             "cases": [{**cases["cases"][0], "id": "o16-dispatch", "published_GBps": 1}]}
    (tmp_path / "other-cases.yaml").write_text(json.dumps(other))
    (tmp_path / "split.yaml").write_text("test: [n8-dispatch]\n")
    assert main(["validate", "--published", str(tmp_path), "--efficiency-grid", "0.8:0.9:0.1", "--json"]) == 0     # the default --jobs (a pool)
    out = json.loads(capsys.readouterr().out)
    assert out["test"]["cases"] == 1 and out["fitting"]["cases"] == 3
    assert "n8-dispatch" not in out["calibration"]["fitted_on"]
    assert set(out["calibration"]["nic_efficiency"]) == {"ib", "efa"}
    assert out["calibration"]["nic_Bps"]["efa"] == pytest.approx(out["calibration"]["nic_efficiency"]["efa"] * 50e9)
    assert out["by_source"]["deepep"]["test"]["cases"] == 1 and out["by_source"]["other"]["fitting"]["cases"] == 1
    by_id = {row["id"]: row for row in out["rows"]}
    assert by_id["o16-dispatch"]["topology"] == "published/p6-b200-efa-2x8" and by_id["o16-dispatch"]["nic_family"] == "efa"
    # one fitting case with its start-up and efficiency: reproduced up to the grid (the fit matches it)
    assert abs(by_id["o16-dispatch"]["rel_error"]) < 0.05
    for row in out["rows"]:
        assert row["rel_error"] == pytest.approx(row["predicted_GBps"] / row["published_GBps"] - 1)
        assert row["predicted_GBps"] * row["predicted_us"] * 1e3 == pytest.approx(row["counted_MB"] * 1e6, rel=1e-9)
    assert out["calibration"]["efficiency_grid"] == [0.8, 0.9]
    # leave-one-out skips the only fitting case of the efa family
    assert [r["id"] for r in out["leave_one_out"]["rows"]] == ["n16-dispatch", "n16-combine"]
    assert main(["validate", "--published", str(tmp_path), "--efficiency-grid", "0.8:0.9:0.1", "--fitting-only",
                 "--json", "--jobs", "1"]) == 0
    only = json.loads(capsys.readouterr().out)                  # the held-out case is neither predicted nor shown
    assert [r["id"] for r in only["rows"]] == ["n16-dispatch", "n16-combine", "o16-dispatch"]
    assert only["test"]["cases"] == 0 and only["calibration"] == out["calibration"]
    assert main(["validate", "--published", str(tmp_path), "--efficiency-grid", "0.9:0.9:0.1", "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "test: 1 cases" in text and "fitting: 3 cases" in text
    assert "source deepep (deepep-cases.yaml)" in text and "source other (other-cases.yaml)" in text
    assert text.index("source deepep") < text.index("source other")          # one table per source, in order
    assert "calibration efa (fitting cases only)" in text and "deepep test: 1 cases" in text
    (tmp_path / "split.yaml").write_text("test: [n8-dispatch]\nfresh2: [n16-combine]\n")   # a later held-out set
    assert main(["validate", "--published", str(tmp_path), "--efficiency-grid", "0.9:0.9:0.1", "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "fresh2: 1 cases" in text and "deepep fresh2: 1 cases" in text and "fitting: 2 cases" in text
    (tmp_path / "split.yaml").write_text("test: [n8-dispatch]\nfresh3: [n16-combine]\n")   # the fourth round's set
    assert main(["validate", "--published", str(tmp_path), "--efficiency-grid", "0.9:0.9:0.1", "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "fresh3: 1 cases" in text and "deepep fresh3: 1 cases" in text and "fitting: 2 cases" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["validate"])
    assert exit_info.value.code == 2 and "give trace files, or --published" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--fitting-only", "t.json"])
    assert exit_info.value.code == 2 and "--fitting-only, --within-cluster, --jobs and --quiet go with --published" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--published", str(tmp_path), "--efficiency-grid", "0.9:0.8:0.1"])
    assert exit_info.value.code == 2 and "needs 0 < LO <= HI <= 1" in capsys.readouterr().err


def test_normal_kernels_share_one_start_up():
    """The normal kernels' start-up is one value for dispatch and combine (fitted on both), recovered when the
    figures follow it, and never below 0."""
    case = lambda cid, op, figure: Case(cid, "normal", 16, 2, op, "fp8" if op == "dispatch" else "bf16", figure,
                                        "rdma", {}, "", "")
    sims = {"d1": 1.0e-3, "d2": 2.0e-3, "c1": 1.5e-3, "c2": 3.0e-3}
    runs = [CaseRun(case(cid, "dispatch" if cid[0] == "d" else "combine", 100e6 / (t + 150e-6) / 1e9), 100e6, 0.0,
                    {1.0: t}) for cid, t in sims.items()]
    cal = fit_calibration(runs, set())
    alpha = cal.alpha_s["ib"]["normal"]
    assert alpha["dispatch"] == alpha["combine"] == pytest.approx(150e-6, rel=1e-4)
    for r in runs:
        assert cal.predict_GBps(r) == pytest.approx(r.case.published_GBps, rel=1e-6)
    fast = [CaseRun(case(r.case.id, r.case.op, 100e6 / r.sim_s[1.0] / 1e9 * 1.1), 100e6, 0.0, r.sim_s) for r in runs]
    assert fit_calibration(fast, set()).alpha_s["ib"]["normal"] == {"dispatch": 0.0, "combine": 0.0}   # bounded at 0


def test_uccl_hopper_combine_ceiling_by_hand():
    """UCCL-EP's normal combine on Hopper: t = max(network model, kernel_bytes / C), C the geometric mean of what the
    limited fitting cases show (lshsim.sim.published's docstring); numbers worked by hand."""
    from lshsim.sim.published import Calibration, combine_ceiling, combine_limited

    base = Case("h1", "normal", 16, 2, "combine", "bf16", 20.0, "rdma", {"tokens_per_rank": 8, "hidden": 8, "top_k": 2},
                "https://x", "f.yaml", None, "published/p5en-h200-efa-{nodes}x8", "efa")
    assert combine_limited(base)                                            # efa, normal combine, H200, 2 nodes
    assert combine_limited(dataclasses.replace(base, nic_family="efa_v1", topology_template="published/p5-h100-efa-{nodes}x8"))
    assert not combine_limited(dataclasses.replace(base, op="dispatch"))
    assert not combine_limited(dataclasses.replace(base, nic_family="ib"))           # other kernels: no ceiling
    assert not combine_limited(dataclasses.replace(base, nic_family="efa_nvshmem"))
    assert not combine_limited(dataclasses.replace(base, topology_template="published/p6-b200-efa-{nodes}x8"))  # B200
    assert not combine_limited(dataclasses.replace(base, kind="low_latency", counts="choices"))
    # one node: no network, nothing of the UCCL-EP combine's limit (an H800 node: a Hopper GPU all the same)
    assert not combine_limited(dataclasses.replace(base, ep=8, nodes=1, counts="nvlink",
                                                   topology_template="published/h800-ib-{nodes}x8"))
    # two limited fitting runs: 100 MB counted at 20 GB/s = 5 ms over 300 MB of kernel bytes -> 60 GB/s shown;
    # 100 MB at 25 GB/s = 4 ms over 200 MB -> 50 GB/s; C = sqrt(60 x 50) GB/s = 54.772 GB/s
    a = CaseRun(base, counted=100e6, network_bytes=50e6, sim_s={1.0: 1e-3}, kernel_bytes=300e6, limited=True)
    b = CaseRun(dataclasses.replace(base, id="h2", published_GBps=25.0), counted=100e6, network_bytes=50e6,
                sim_s={1.0: 1e-3}, kernel_bytes=200e6, limited=True)
    assert combine_ceiling([a, b]) == pytest.approx(54.772256e9, rel=1e-6)
    assert combine_ceiling([dataclasses.replace(a, limited=False)]) is None
    cal = Calibration({"efa": 1.0}, {"efa": {"normal": {"dispatch": 0.0, "combine": 0.0}}}, combine_Bps={"efa": 54.772256e9})
    assert cal.time_s(a) == pytest.approx(300e6 / 54.772256e9, rel=1e-6)            # 5.477 ms, not the network's 1 ms
    assert cal.predict_GBps(a) == pytest.approx(100e6 / (300e6 / 54.772256e9) / 1e9, rel=1e-6)   # 18.26 GB/s
    assert cal.time_s(dataclasses.replace(a, limited=False)) == pytest.approx(1e-3)  # not limited: the network model
    fast = dataclasses.replace(a, sim_s={1.0: 9e-3})                                  # network slower than the ceiling
    assert cal.time_s(fast) == pytest.approx(9e-3)
    fit = fit_calibration([a, b], set(), grid=(1.0,))
    assert fit.combine_Bps == {"efa": pytest.approx(54.772256e9, rel=1e-6)}
    assert fit.time_s(a) == pytest.approx(300e6 / 54.772256e9, rel=1e-6)     # the fitted start-up stays under it


def _small_folder(path: Path, extra: list | None = None) -> Path:
    """Two sources, two NIC families (ib: normal EP 16 fitting, EP 8 test; efa: normal and low-latency EP 16
    fitting), small workloads; `extra`: more case files {name: document}."""
    path.mkdir(parents=True, exist_ok=True)
    workload = {"tokens_per_rank": 64, "hidden": 512, "top_k": 8, "experts": 64}
    ib = {"source": {"url": "https://example.org/table"}, "workload": workload,
          "cases": [{"id": f"n{ep}-{op}", "kind": "normal", "ep": ep, "nodes": ep // 8, "op": op,
                     "format": "fp8" if op == "dispatch" else "bf16", "published_GBps": figure,
                     "counts": "rdma" if ep > 8 else "nvlink"}
                    for ep, op, figure in ((16, "dispatch", 40), (16, "combine", 35), (8, "dispatch", 150))]}
    efa = {"source": {"url": "https://example.org/efa"}, "workload": workload, "nic_family": "efa",
           "topology": "published/p6-b200-efa-{nodes}x8",
           "cases": [{"id": f"e16-{kind}-{op}", "kind": kind, "ep": 16, "nodes": 2, "op": op,
                      "format": "bf16", "published_GBps": figure, **({"counts": "rdma"} if kind == "normal" else {})}
                     for kind, op, figure in (("normal", "dispatch", 30), ("normal", "combine", 25),
                                              ("low_latency", "dispatch", 20), ("low_latency", "combine", 18))]}
    (path / "ib-cases.yaml").write_text(json.dumps(ib))
    (path / "efa-cases.yaml").write_text(json.dumps(efa))
    for name, doc in (extra or {}).items():
        (path / name).write_text(json.dumps(doc))
    (path / "split.yaml").write_text("test: [n8-dispatch]\n")
    return path


def test_validate_published_jobs_give_equal_results(tmp_path, capsys):
    """1 and 2 worker processes: the same rows, calibration and leave-one-out, to the bit (the same computations,
    gathered in the cases' order whatever order the workers finish in); the command line's --jobs too."""
    folder = _small_folder(tmp_path / "cases")
    grid = (0.8, 0.9)
    seen, steps = [], []
    one = validate_published(folder, efficiency_grid=grid, jobs=1, progress=seen.append,
                             simulation_progress=lambda done, total: steps.append((done, total)))
    two = validate_published(folder, efficiency_grid=grid, jobs=2)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
    assert sorted(seen) == sorted(r["id"] for r in one["rows"]) and len(one["leave_one_out"]["rows"]) == 6
    # one call per simulation, counting up to the total (every case needs at least one)
    total = steps[-1][1]
    assert steps == [(i, total) for i in range(1, total + 1)] and total >= len(seen)
    assert main(["validate", "--published", str(folder), "--efficiency-grid", "0.8:0.9:0.1", "--json",
                 "--jobs", "2"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"] == json.loads(json.dumps(one["rows"]))
    assert "7 cases simulated, calibration and leave-one-out fitted" in captured.err     # progress on stderr only
    assert "drawing the cases' traffic, then simulating (2 worker processes)" in captured.err
    with pytest.raises(ValueError, match="jobs=0 must be an integer >= 1"):
        validate_published(folder, efficiency_grid=grid, jobs=0)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--published", str(folder), "--jobs", "0"])
    assert exit_info.value.code == 2


def test_shared_traffic_and_simulations_equal_fresh_ones(tmp_path):
    """Cases of equal inputs share one traffic draw and one simulation per efficiency: a held-out case that
    repeats a test case's inputs (another file, id and figure) is predicted as the test case is in a folder where
    nothing is shared, and a case differing in one input (the format) does not share (a different prediction).
    The keys tell every input apart."""
    folder = _small_folder(tmp_path / "alone")
    twin = {"source": {"url": "https://example.org/twin"}, "group": "twin",
            "workload": {"tokens_per_rank": 64, "hidden": 512, "top_k": 8, "experts": 64},
            "cases": [{"id": "twin-n8-dispatch", "kind": "normal", "ep": 8, "nodes": 1, "op": "dispatch",
                       "format": "fp8", "published_GBps": 99, "counts": "nvlink"},
                      {"id": "twin-n8-dispatch-bf16", "kind": "normal", "ep": 8, "nodes": 1, "op": "dispatch",
                       "format": "bf16", "published_GBps": 99, "counts": "nvlink"}]}
    shared = _small_folder(tmp_path / "shared", {"twin-cases.yaml": twin})
    (shared / "split.yaml").write_text("test: [n8-dispatch]\nfresh: [twin-n8-dispatch, twin-n8-dispatch-bf16]\n")
    grid = (0.8, 0.9)
    alone = {r["id"]: r for r in validate_published(folder, efficiency_grid=grid, jobs=1)["rows"]}
    both = {r["id"]: r for r in validate_published(shared, efficiency_grid=grid, jobs=1)["rows"]}
    assert both["n8-dispatch"] == alone["n8-dispatch"]                  # held-out cases do not move the fit
    assert both["twin-n8-dispatch"]["predicted_us"] == alone["n8-dispatch"]["predicted_us"]
    assert both["twin-n8-dispatch-bf16"]["predicted_us"] > alone["n8-dispatch"]["predicted_us"]
    # the shared simulation is the fresh one
    cases = {c.id: c for c in load_cases(shared)}
    a, b = cases["n8-dispatch"], cases["twin-n8-dispatch"]
    assert traffic_key(a, 0) == traffic_key(b, 0) and simulation_key(a, 0) == simulation_key(b, 0)
    assert simulate_case(b, case_traffic(b), 0.9) == simulate_case(a, case_traffic(a), 0.9)
    # every input the traffic or the simulation reads changes the key
    for change in ({"ep": 16, "nodes": 2}, {"nodes": 2}, {"kind": "low_latency"}, {"op": "combine"},
                   {"format": "bf16"}, {"workload": {**a.workload, "hidden": 1024}},
                   {"workload": {**a.workload, "dispatch_metadata_bytes": 4}}):
        other = dataclasses.replace(a, **change)
        assert traffic_key(other, 0) != traffic_key(a, 0)
    assert traffic_key(a, 1) != traffic_key(a, 0)                         # the seed
    moved = dataclasses.replace(a, topology_template="published/p6-b200-efa-{nodes}x8")
    assert traffic_key(moved, 0) == traffic_key(a, 0) and simulation_key(moved, 0) != simulation_key(a, 0)


def test_shared_routing_draws_equal_fresh_traffic():
    """`validate_published` draws one routing per `routing_key` (a kernel's dispatch and combine, its bf16 and fp8
    dispatch share one) and gives each case its bytes per token: the traffic of every shipped case sharing a draw is
    its fresh `case_traffic`, to the last bit (small token counts; the draw's inputs are the key's), and every input
    of the draw changes the key."""
    by_key = {}
    for case in load_cases():
        small = dataclasses.replace(case, workload={**case.workload, "tokens_per_rank": 24})
        if routing_key(small) is not None:
            by_key.setdefault(routing_key(small), []).append(small)
    shared = [cases for cases in by_key.values() if len({(c.op, c.format) for c in cases}) > 1]
    assert len(shared) >= 20
    for cases in shared:
        counts = routing_counts(cases[0])
        for case in cases:
            fresh, reused = case_traffic(case), case_traffic(case, counts=counts)
            assert reused.bytes_per_token == fresh.bytes_per_token
            for name in ("choice_tokens", "rank_tokens", "node_tokens"):
                assert getattr(reused, name).tobytes() == getattr(fresh, name).tobytes()
    a = next(c for cases in shared for c in cases if c.kind == "normal" and c.nodes > 1)
    for change in ({"ep": 2 * a.ep, "nodes": 2 * a.nodes}, {"nodes": 2 * a.nodes}, {"kind": "low_latency"},
                   {"workload": {**a.workload, "top_k": a.workload["top_k"] + 1}},
                   {"workload": {**a.workload, "tokens_per_rank": 25}},
                   {"workload": {**a.workload, "masked_choices": 3}},
                   {"workload": {**a.workload, "topk_groups": 1}}):
        assert routing_key(dataclasses.replace(a, **change)) != routing_key(a), change
    assert routing_key(a, 1) != routing_key(a, 0)


def test_leave_one_out_refits_one_family_as_a_refit_of_all():
    """`fit_calibration` fits each family on its own runs alone: a family's calibration from its runs only is the
    same (to the bit) as from every family's runs, which lets the leave-one-out refits fit the left-out case's
    family only."""
    workload = {"tokens_per_rank": 128, "hidden": 7168, "top_k": 8, "experts": 256, "masked_choices": 10}
    known = {"ib": ("published/h800-ib-{nodes}x8", 0.84, {"dispatch": 25e-6, "combine": 60e-6}, 0.05e-6),
             "efa": ("published/p6-b200-efa-{nodes}x8", 0.76, {"dispatch": 90e-6, "combine": 40e-6}, 0.3e-6)}
    runs = [_run(Case(f"{family}-{op}{ep}", "low_latency", ep, ep // 8, op, fmt, 1.0, "choices", workload, "", "",
                      None, template, family), eff, alpha, beta)
            for family, (template, eff, alpha, beta) in known.items()
            for ep in ((16, 32) if family == "ib" else (16, 24))
            for op, fmt in (("dispatch", "fp8"), ("combine", "bf16"))]
    for left in runs:
        rest = [r for r in runs if r is not left]
        family = left.case.nic_family
        every = fit_calibration(rest, set(), GRID)
        alone = fit_calibration([r for r in rest if r.case.nic_family == family], set(), GRID)
        assert every.predict_GBps(left) == alone.predict_GBps(left)
        for part in ("nic_efficiency", "alpha_s", "message_s", "efficiency_floor", "combine_Bps"):
            assert getattr(every, part).get(family) == getattr(alone, part).get(family)


def _write_alltoall_file(folder: Path, name: str = "n.yaml", doc: dict | None = None, **override):
    case = {"id": "a2a", "kind": "alltoall", "ep": 16, "nodes": 2, "size_bytes": 1 << 20, "published_GBps": 40,
            **override}
    text = {"source": {"url": "https://example.org/nccl"}, "topology": "published/p5-h100-efa-{nodes}x8",
            "nic_family": "efa_v1_nccl", "cases": [case], **(doc or {})}
    (folder / name).write_text(json.dumps(text))


def test_alltoall_cases_load_with_their_fields_checked(tmp_path):
    """A plain all-to-all case (kind alltoall): size_bytes, published_GBps (busbw), no token workload; a bad field
    names the file, the field and the value."""
    _write_alltoall_file(tmp_path)
    (case,) = load_cases(tmp_path)
    assert (case.kind, case.op, case.counts, case.size_bytes, case.element_bytes) == ("alltoall", "alltoall", "busbw",
                                                                                      1 << 20, 4)
    assert case.topology == "published/p5-h100-efa-2x8" and case.workload == {} and case.nic_family == "efa_v1_nccl"
    for override, message in [
            ({"size_bytes": 32}, "n.yaml: cases[0].size_bytes=32 must be an integer >= ep x element_bytes = 64"),
            ({"size_bytes": 1.5e6}, "n.yaml: cases[0].size_bytes=1500000.0 must be an integer"),
            ({"published_GBps": 0}, "n.yaml: cases[0].published_GBps=0 must be a number > 0"),
            ({"counts": "algbw"}, "n.yaml: cases[0].counts='algbw' must be busbw"),
            ({"op": "dispatch"}, "n.yaml: cases[0].op='dispatch' must be alltoall"),
            ({"element_bytes": 3}, "n.yaml: cases[0].element_bytes=3 must be 1, 2, 4 or 8"),
            ({"format": "bf16"}, "n.yaml: cases[0].format='bf16': not a field of an alltoall case"),
            ({"ep": 24, "nodes": 5}, "n.yaml: cases[0].nodes=5 must be an integer >= 1 dividing ep=24")]:
        _write_alltoall_file(tmp_path, **override)
        with pytest.raises(ValueError) as error:
            load_cases(tmp_path)
        assert message in str(error.value), (override, str(error.value))
    _write_alltoall_file(tmp_path, doc={"workload": {"tokens_per_rank": 8}})
    with pytest.raises(ValueError, match=r"n.yaml: workload=\{'tokens_per_rank': 8\}: a file of plain all-to-all cases"):
        load_cases(tmp_path)
    _write_alltoall_file(tmp_path, ep=24, nodes=3)         # no 3 x 8 p5 topology
    with pytest.raises(ValueError, match=r"n.yaml: topology='published/p5-h100-efa-\{nodes\}x8' \(case a2a\)"):
        load_cases(tmp_path)


def test_alltoall_busbw_counts_the_bytes_sent_to_other_ranks():
    """nccl-tests: algbw = size / time, busbw = algbw x (n - 1) / n. By hand, 4 ranks, size 1,024 B of floats: 256 B per
    peer; a rank sends 3 x 256 = 768 B to the others; in 1 us that is algbw 1.024 GB/s, busbw 0.768 GB/s = 768 B / 1 us.
    A size not divisible: 1,000 B = 250 floats, 62 per peer (nccl-tests' count / nranks), 248 B."""
    case = Case("a", "alltoall", 4, 2, "alltoall", "none", 1.0, "busbw", {}, "", "", size_bytes=1024)
    t = case_traffic(case)
    assert t.per_peer_bytes == 256 and t.traffic.shape == (4, 4) and (t.traffic == 256).all()
    assert counted_bytes(case, t).tolist() == [768.0] * 4
    algbw = case.size_bytes / 1e-6 / 1e9
    assert algbw * (4 - 1) / 4 == pytest.approx(counted_bytes(case, t)[0] / 1e-6 / 1e9) == pytest.approx(0.768)
    odd = dataclasses.replace(case, size_bytes=1000)
    assert alltoall_per_peer_bytes(odd) == 248 and counted_bytes(odd, case_traffic(odd)).tolist() == [744.0] * 4
    assert alltoall_per_peer_bytes(dataclasses.replace(case, size_bytes=1000, element_bytes=2)) == 250


def test_alltoall_simulated_time_by_hand():
    """2 x 8 H100 (published/p5-h100-efa-2x8: 4 x 100 Gb/s EFA per GPU = 50 GB/s, NVLink 450 GB/s, PCIe 64 GB/s),
    64 MiB per rank: a GPU sends 8 of its 16 peers' 4 MiB over its NICs, 32 MiB at eff x 50 GB/s (NVLink's 7 x 4 MiB
    at 450 GB/s and PCIe's 32 MiB at 64 GB/s take less), plus the longest path's latency: 2 PCIe hops of 1 us and 2
    network hops of 2 us = 6 us. The flow simulation of the same matrix gives the same time."""
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.topology import build_topology
    from lshsim.topology.spec import read_spec

    case = Case("a", "alltoall", 16, 2, "alltoall", "none", 1.0, "busbw", {}, "", "", None,
                "published/p5-h100-efa-{nodes}x8", "efa_v1_nccl", size_bytes=64 << 20)
    traffic = case_traffic(case)
    for eff in (1.0, 0.8):
        hand = (64 << 20) / 2 / (eff * 50e9) + 6e-6
        assert simulate_case(case, traffic, eff) == pytest.approx(hand, rel=1e-9)
    spec, source = read_spec(case.topology)
    spec = {**spec, "calibration": {**(spec.get("calibration") or {}), "nic_Bps": 0.8 * 12.5e9}}
    flow = simulate_all_to_all(build_topology(spec, source=source), traffic.traffic, "direct", local_copy=False)
    assert flow.time_s == pytest.approx(simulate_case(case, traffic, 0.8), rel=1e-9)


def test_alltoall_fit_recovers_start_up_ramp_floor_and_cost_per_peer():
    """Plain all-to-all runs made by the model at known (efficiency, start-up a, its ramp S0, latency floor L, cost per
    remote peer g) on 2-8 p5 nodes and five sizes from 64 KiB to 256 MiB: the fit recovers all five (the remote peers
    grow with the nodes, which separates g from a; the small sizes separate L from the ramped a); the family gets an
    alltoall start-up, ramp, floor and per-peer cost, the other families none."""
    eff, alpha, gamma, floor, ramp = 0.84, 120e-6, 3e-6, 25e-6, 8e6
    runs = []
    for nodes in (2, 4, 8):
        for size in (64 << 10, 1 << 20, 8 << 20, 32 << 20, 256 << 20):
            case = Case(f"a{nodes}-{size}", "alltoall", 8 * nodes, nodes, "alltoall", "none", 1.0, "busbw", {}, "",
                        "", None, "published/p5-h100-efa-{nodes}x8", "efa_v1_nccl", size_bytes=size)
            traffic = case_traffic(case)
            counted = float(counted_bytes(case, traffic).mean())
            sim = {e: simulate_case(case, traffic, e) for e in GRID}
            remote = float(case.ep - 8)
            t = sim[eff] + floor + (alpha + gamma * remote) * size / (size + ramp)      # written out, not the module's
            runs.append(CaseRun(dataclasses.replace(case, published_GBps=counted / t / 1e9), counted, 0.0, sim,
                                messages=remote))
    cal = fit_calibration(runs, set(), GRID)
    assert cal.nic_efficiency["efa_v1_nccl"] == eff
    assert cal.alpha_s["efa_v1_nccl"]["alltoall"]["alltoall"] == pytest.approx(alpha, rel=1e-3)
    assert cal.alltoall_peer_s["efa_v1_nccl"] == pytest.approx(gamma, rel=1e-3)
    assert cal.alltoall_floor_s["efa_v1_nccl"] == pytest.approx(floor, rel=1e-3)
    assert cal.alltoall_ramp_bytes["efa_v1_nccl"] == pytest.approx(ramp, rel=1e-3)
    for r in runs:
        assert cal.predict_GBps(r) == pytest.approx(r.case.published_GBps, rel=1e-4)
    workload = {"tokens_per_rank": 128, "hidden": 7168, "top_k": 8, "experts": 256, "masked_choices": 10}
    ll = [_run(Case(f"ll-{op}{ep}", "low_latency", ep, ep // 8, op, "bf16", 1.0, "choices", workload, "", "", None,
                    "published/p6-b200-efa-{nodes}x8", "efa"), 0.8, {"dispatch": 50e-6, "combine": 40e-6}, 0.1e-6)
          for ep in (16, 32) for op in ("dispatch", "combine")]
    both = fit_calibration(runs + ll, set(), GRID)
    assert "alltoall" not in both.alpha_s["efa"] and "efa" not in both.alltoall_peer_s
    assert "efa" not in both.alltoall_floor_s and "efa" not in both.alltoall_ramp_bytes
    assert both.alltoall_peer_s == cal.alltoall_peer_s and both.alltoall_floor_s == cal.alltoall_floor_s


def test_validate_published_command_with_alltoall_cases(tmp_path, capsys):
    """Made-up all-to-all cases (2 and 4 p5 nodes, two sizes, one held out) with a split: the command predicts them,
    reports the held-out one apart, and prints the family's start-up and cost per remote peer."""
    cases = [{"id": f"m{nodes}-{mib}", "kind": "alltoall", "ep": 8 * nodes, "nodes": nodes, "size_bytes": mib << 20,
              "published_GBps": figure}
             for nodes, mib, figure in ((2, 32, 45.0), (2, 256, 75.0), (4, 32, 35.0), (4, 256, 54.0))]
    _write_alltoall_file(tmp_path, doc={"cases": cases})
    (tmp_path / "split.yaml").write_text("test: [m4-256]\n")
    assert main(["validate", "--published", str(tmp_path), "--efficiency-grid", "0.8:0.9:0.02", "--json", "--jobs", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    roles = {r["id"]: r["role"] for r in out["rows"]}
    assert roles == {"m2-32": "fitting", "m2-256": "fitting", "m4-32": "fitting", "m4-256": "test"}
    assert out["calibration"]["fitted_on"] == ["m2-32", "m2-256", "m4-32"] and out["test"]["cases"] == 1
    assert {r["size_bytes"] for r in out["rows"]} == {32 << 20, 256 << 20} and "efa_v1_nccl" in out["calibration"]["alltoall_peer_s"]
    assert main(["validate", "--published", str(tmp_path), "--efficiency-grid", "0.8:0.9:0.02", "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "calibration efa_v1_nccl" in text and "us per remote peer" in text and "m4-256" in text


@pytest.mark.slow  # a `python -m lshsim.cli validate --published --jobs 2` process and its two spawned workers
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_a_terminated_validation_leaves_no_worker_behind():
    """SIGTERM to `lshsim validate --published --jobs 2` ends it without clean-up; its spawned pool workers used to
    stay behind for good (idle, waiting on the dead command's queue). They end with it now."""
    import os
    import subprocess
    import sys
    import time

    from conftest import alive, assert_workers_end_with, children, kill_leftovers

    command = [sys.executable, "-m", "lshsim.cli", "validate", "--published", "--jobs", "2", "--quiet", "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 3 and time.monotonic() < deadline:  # two workers and multiprocessing's resource tracker
            time.sleep(0.5)
            workers = alive(children(process.pid))
        assert len(workers) >= 2, workers
        time.sleep(3)                          # the workers past their start-up, at work
        assert_workers_end_with(process, workers, "validation")
    finally:
        kill_leftovers(process, workers)


def test_every_shipped_set_gets_its_own_colour_in_the_plot():
    """`--plot` colours each set apart: every set of SET_ORDER (fitting, test, each fresh set) has a colour of
    its own in both panels, none of them leave-one-out's black."""
    from matplotlib.colors import to_rgba

    from lshsim.sim.published_plot import PALETTE, SET_ORDER, published_figure

    assert len(PALETTE) >= len(SET_ORDER)
    rows = [{"role": role, "op": "dispatch", "kind": "normal", "published_GBps": 10.0 + i,
             "predicted_GBps": 11.0 + i, "rel_error": 0.1} for i, role in enumerate(SET_ORDER)]
    fig = published_figure({"rows": rows})
    colours = {}
    for ax in fig.axes:
        for coll in ax.collections:
            gid = coll.get_gid() or ""
            if gid.startswith("errors/"):
                colours[gid.split("/", 1)[1]] = tuple(coll.get_facecolor()[0][:3])
            elif gid.endswith("/dispatch/other"):
                assert tuple(coll.get_facecolor()[0][:3]) == tuple(to_rgba(PALETTE[SET_ORDER.index(gid.split("/")[0])])[:3])
    assert sorted(colours) == sorted(SET_ORDER)
    assert len(set(colours.values())) == len(SET_ORDER)
    assert (0.0, 0.0, 0.0) not in colours.values()


def test_validate_published_plot(tmp_path, capsys):
    """`validate --published DIR --plot F.png`: the file is written, and the figure's points are the cases'
    (published, predicted) GB/s and |error|, each in its set's series."""
    from lshsim.sim.published_plot import published_figure, set_order

    cases = {"source": {"url": "https://example.org/table"},
             "workload": {"tokens_per_rank": 64, "hidden": 512, "top_k": 8, "experts": 64},
             "cases": [{"id": f"n{ep}-{op}", "kind": "normal", "ep": ep, "nodes": ep // 8, "op": op,
                        "format": "fp8" if op == "dispatch" else "bf16", "published_GBps": gbps,
                        "counts": "rdma" if ep > 8 else "nvlink"}
                       for ep, op, gbps in ((16, "dispatch", 40), (16, "combine", 30), (32, "dispatch", 35),
                                            (8, "dispatch", 150))]}
    (tmp_path / "deepep-cases.yaml").write_text(json.dumps(cases))
    (tmp_path / "split.yaml").write_text("test: [n8-dispatch]\nfresh2: [n32-dispatch]\n")
    image = tmp_path / "out" / "published.png"
    assert main(["validate", "--published", str(tmp_path), "--efficiency-grid", "0.8:0.9:0.1", "--json",
                 "--plot", str(image), "--quiet", "--jobs", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set_order(out["rows"]) == ["fitting", "test", "fresh2"]
    fig = published_figure(out)
    scatter, errors = {}, {}
    for ax in fig.axes:
        for coll in ax.collections:
            gid = coll.get_gid()
            if gid and gid.startswith("errors/"):
                errors[gid.split("/", 1)[1]] = sorted(coll.get_offsets()[:, 0].tolist())
            elif gid:
                scatter[gid] = sorted(map(tuple, coll.get_offsets().tolist()))
    by_role = {}
    for row in out["rows"]:
        by_role.setdefault(f"{row['role']}/{row['op']}/other", []).append((row["published_GBps"], row["predicted_GBps"]))
    assert scatter == {k: sorted(v) for k, v in by_role.items()}
    for role in ("fitting", "test", "fresh2"):
        expected = sorted(max(abs(r["rel_error"]), 1e-3) * 100 for r in out["rows"] if r["role"] == role)
        assert errors[role] == pytest.approx(expected)
    assert errors["leave-one-out"] == pytest.approx(sorted(max(abs(r["rel_error"]), 1e-3) * 100
                                                          for r in out["leave_one_out"]["rows"]))
    with pytest.raises(SystemExit) as exit_info:                # still refused: traces or a topology with it
        main(["validate", "--published", str(tmp_path), "--topology", "dgx-h100"])
    assert exit_info.value.code == 2 and "--published takes no traces or --topology" in capsys.readouterr().err


def test_fitting_ranges_mark_the_held_out_cases_a_fit_extrapolates_to():
    """A case is within its fit's range when its size (tokens per rank; bytes for a plain all-to-all) lies between
    the smallest and largest of its NIC family's fitting cases of the same kernel kind; the summary counts the
    others and gives the median / worst of those within."""
    from lshsim.sim.published import Case, CaseRun, _summary, case_size, fitting_ranges

    def run(cid, kind, tokens, family="efa", size=None):
        workload = {"tokens_per_rank": tokens, "hidden": 1024, "top_k": 8, "experts": 64}
        case = Case(id=cid, kind=kind, ep=16, nodes=2, op="dispatch", format="bf16", published_GBps=10.0,
                    counts="rdma", workload=workload, source="s", file="f.yaml", nic_family=family, size_bytes=size)
        return CaseRun(case=case, counted=1.0, network_bytes=1.0)

    fitting = [run("a", "low_latency", 128), run("b", "low_latency", 256), run("c", "normal", 4096),
               run("d", "alltoall", 0, "nccl", 2 ** 25), run("e", "alltoall", 0, "nccl", 2 ** 30)]
    ranges = fitting_ranges(fitting)
    assert ranges == {("efa", "low_latency"): (128.0, 256.0), ("efa", "normal"): (4096.0, 4096.0),
                      ("nccl", "alltoall"): (2.0 ** 25, 2.0 ** 30)}
    assert case_size(fitting[3].case) == 2 ** 25
    rows = [{"rel_error": 0.5, "within_fitting_range": False}, {"rel_error": -0.1, "within_fitting_range": True},
            {"rel_error": 0.3, "within_fitting_range": True}, {"rel_error": 2.0, "within_fitting_range": False}]
    summary = _summary(rows)
    assert summary["cases"] == 4 and summary["outside_fitting_range"] == 2
    assert summary["within_range_median_abs_rel_error"] == pytest.approx(0.2)
    assert summary["within_range_max_abs_rel_error"] == pytest.approx(0.3)
    assert "outside_fitting_range" not in _summary([{"rel_error": 0.1}])   # rows without the mark: as before


def test_validate_published_stars_a_held_out_case_outside_its_fit_sizes(tmp_path, capsys):
    """The table stars a held-out case whose tokens per rank lie outside its family's fitting cases' (64 here),
    explains the star once, and the set's line counts it; `--json` marks every row."""
    def cases(tokens, rows):
        return json.dumps({"source": {"url": "https://example.org/table"},
                           "workload": {"tokens_per_rank": tokens, "hidden": 512, "top_k": 8, "experts": 64},
                           "cases": [{"id": cid, "kind": "normal", "ep": ep, "nodes": ep // 8, "op": op,
                                      "format": "fp8" if op == "dispatch" else "bf16", "published_GBps": gbps,
                                      "counts": "rdma"} for cid, ep, op, gbps in rows]})
    (tmp_path / "deepep-a.yaml").write_text(cases(64, [("a16d", 16, "dispatch", 40), ("a16c", 16, "combine", 30),
                                                       ("a32d", 32, "dispatch", 35), ("a32c", 32, "combine", 28)]))
    (tmp_path / "deepep-b.yaml").write_text(cases(512, [("b16d", 16, "dispatch", 45)]))
    (tmp_path / "split.yaml").write_text("test: [b16d, a32c]\n")
    argv = ["validate", "--published", str(tmp_path), "--efficiency-grid", "0.8:0.9:0.1", "--quiet", "--jobs", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    starred = [line for line in text.splitlines() if line.rstrip(" │").endswith("% *")]
    assert len(starred) == 1 and "b16d" in starred[0]
    assert "* outside the sizes (tokens per rank" in text
    assert "test: 2 cases" in text and "1 outside the fitting sizes (the 1 within" in text
    assert main(argv + ["--json"]) == 0
    rows = {r["id"]: r["within_fitting_range"] for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows == {"a16d": True, "a16c": True, "a32d": True, "a32c": True, "b16d": False}


def test_a_family_with_no_more_cases_than_fitted_values_is_reported(tmp_path, capsys):
    """A user's folder whose family has 3 fitting all-to-all cases for its 5 fitted values (efficiency, start-up, its
    ramp, latency floor, cost per remote peer): validate says its fitting error is no measure of accuracy; no shipped
    family is so."""
    from types import SimpleNamespace

    import yaml

    from lshsim.cli import main as cli_main
    from lshsim.sim.published import FRESH_SETS, combine_limited, exact_fits

    doc = yaml.safe_load((PUBLISHED_DIR / "nccl-b300kit-alltoall.yaml").read_text())
    doc["cases"] = doc["cases"][:4]
    (tmp_path / "kit.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "split.yaml").write_text(f"test: [{doc['cases'][3]['id']}]\n")
    out = validate_published(tmp_path, efficiency_grid=(0.8, 0.9, 1.0), leave_one_out=False)
    assert out["exact_fits"] == {doc["nic_family"]: {"cases": 3, "fitted_values": 5}}
    assert cli_main(["validate", "--published", str(tmp_path), "--quiet"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"note: NIC family {doc['nic_family']} has 3 fitting case(s) for 5 fitted values" in printed
    cases = load_cases(PUBLISHED_DIR)
    held = load_split(PUBLISHED_DIR, cases).union(*(load_fresh(PUBLISHED_DIR, cases, k) for k in FRESH_SETS))
    runs = [SimpleNamespace(case=c, limited=combine_limited(c)) for c in cases if c.id not in held]
    assert exact_fits(runs) == {}


def test_prepared_runs_count_remote_peers_and_remote_messages_by_hand():
    """What the fit reads of a case besides its simulated time (`_prepare`), by hand. A plain all-to-all on 2 x 8 p5
    GPUs (4 x 100 Gb/s EFA per GPU), 1 MiB per rank: 64 KiB per peer; a rank's remote peers are the 8 ranks of the
    other node (not its 15 peers), its network bytes 8 x 64 KiB, its busbw bytes 15 x 64 KiB. A low-latency dispatch
    on 2 x 8 H800 with hand-made counts: rank 0 sends one choice to rank 1 (its own node), two to rank 8 and one to
    rank 9 (the other node): 3 remote messages of 16 ranks' mean 3 / 16, the own-node one not among them."""
    from lshsim.sim.published import _prepare

    case = Case("a", "alltoall", 16, 2, "alltoall", "none", 1.0, "busbw", {}, "", "", None,
                "published/p5-h100-efa-{nodes}x8", "efa_v1_nccl", size_bytes=1 << 20)
    run, _ = _prepare(case, 0)
    assert run.messages == 8.0 and run.network_bytes == 8 * 65536.0 and run.counted == 15 * 65536.0
    assert run.nic_gpu_Bps == 4 * 100e9 / 8
    choice = np.zeros((16, 16), int)
    choice[0, [1, 8, 9]] = [1, 2, 1]
    rank = (choice > 0).astype(int)
    node = np.zeros((16, 2), int)
    node[0] = [1, 1]
    traffic = DedupTraffic(choice, rank, node, 8, 1000.0)
    ll = Case("l", "low_latency", 16, 2, "dispatch", "bf16", 1.0, "choices", {"hidden": 500}, "", "")
    run, _ = _prepare(ll, 0, traffic)
    assert run.messages == pytest.approx(3 / 16) and run.network_bytes == pytest.approx(3000 / 16)
    assert run.counted == pytest.approx(4000 / 16) and run.nic_gpu_Bps == 400e9 / 8


def test_no_held_out_set_is_ever_fitted_on(tmp_path):
    """One plain all-to-all case in each held-out set of split.yaml (test and every key of FRESH_SETS, the last one
    too) beside three fitting cases: the fit is made on the three alone, with or without the held-out cases
    simulated, and each held-out case is reported under its own set."""
    from lshsim.sim.published import FRESH_SETS

    sets = ("test",) + FRESH_SETS
    fitting = [f"f{i}" for i in range(3)]
    cases = [{"id": cid, "kind": "alltoall", "ep": 16, "nodes": 2, "size_bytes": (1 + i) << 20, "published_GBps": 30.0}
             for i, cid in enumerate(fitting + [f"h-{key}" for key in sets])]
    _write_alltoall_file(tmp_path, doc={"cases": cases})
    (tmp_path / "split.yaml").write_text("".join(f"{key}: [h-{key}]\n" for key in sets))
    for fitting_only in (True, False):
        out = validate_published(tmp_path, efficiency_grid=(0.8,), leave_one_out=False, fitting_only=fitting_only)
        assert out["calibration"]["fitted_on"] == fitting
        roles = {r["id"]: r["role"] for r in out["rows"]}
        assert roles == {**{cid: "fitting" for cid in fitting},
                         **({} if fitting_only else {f"h-{key}": key for key in sets})}


def test_case_bytes_per_token_by_format_and_kernel():
    """`case_traffic`'s bytes per token, by hand (hidden 7168): bf16 2 x 7168 = 14336; fp8 7168 + 56 scales x 4 B =
    7392; DeepEP's low-latency fp8 dispatch counts 16 B more (7408), its bf16 combine none; a workload's
    dispatch_metadata_bytes replaces the 16."""
    workload = {"tokens_per_rank": 4, "hidden": 7168, "top_k": 2, "experts": 16}
    case = lambda kind, op, fmt, w=workload: Case("c", kind, 16, 2, op, fmt, 1.0, "choices" if kind == "low_latency"
                                                  else "rdma", w, "", "")
    assert case_traffic(case("low_latency", "dispatch", "fp8")).bytes_per_token == 7408
    assert case_traffic(case("low_latency", "combine", "bf16")).bytes_per_token == 14336
    assert case_traffic(case("low_latency", "dispatch", "bf16")).bytes_per_token == 14336
    assert case_traffic(case("normal", "dispatch", "fp8")).bytes_per_token == 7392
    assert case_traffic(case("low_latency", "dispatch", "fp8", {**workload, "dispatch_metadata_bytes": 0})
                        ).bytes_per_token == 7392


def test_a_normal_kernel_across_nodes_is_pipelined_in_its_chunks():
    """2 x 8 H800 (NIC 50 GB/s, NVLink 160 GB/s per GPU), one 100 MB token from rank 0 to every rank of the other
    node: one network copy to rank 8 (100 MB at 50 GB/s, 2 ms), which forwards 7 x 100 MB over its NVLink (4.375 ms).
    In NORMAL_CHUNKS = 8 pipelined chunks the forwarding of one chunk overlaps the network copy of the next:
    2 / 8 + 4.375 = 4.625 ms (one after the other, whole: 6.375 ms), within the hops' microseconds."""
    from lshsim.sim.published import NORMAL_CHUNKS

    assert NORMAL_CHUNKS == 8
    rank = np.zeros((16, 16), int)
    rank[0, 8:] = 1
    node = np.zeros((16, 2), int)
    node[0, 1] = 1
    traffic = DedupTraffic(rank, rank, node, 8, 1e8)
    case = Case("n", "normal", 16, 2, "dispatch", "bf16", 1.0, "rdma", {}, "", "")
    assert simulate_case(case, traffic, 1.0) == pytest.approx(1e8 / 50e9 / 8 + 7e8 / 160e9, rel=5e-3)


def test_normal_kernels_route_to_at_most_four_nodes_by_default():
    """DeepEP's normal-kernel tests limit a token to min(nodes, 4) nodes (topk_groups left out or 'min(nodes, 4)'):
    on 8 nodes, top-8 of 64 experts, each token reaches at most 4 nodes (unlimited, about 5.3 on average); 'none' and
    the low-latency kernels have no limit, an integer is its own."""
    workload = {"tokens_per_rank": 32, "hidden": 128, "top_k": 8, "experts": 64}
    case = lambda kind="normal", **w: Case("c", kind, 64, 8, "dispatch", "bf16", 1.0,
                                           "rdma" if kind == "normal" else "choices", {**workload, **w}, "", "")
    for normal in (case(), case(topk_groups="min(nodes, 4)")):
        assert routing_key(normal)[4] == 4
        counts = routing_counts(normal)
        assert counts.node_tokens.sum() <= 4 * 64 * 32 and counts.node_tokens.max() <= 32
    assert routing_key(case(topk_groups="none"))[4] is None and routing_key(case("low_latency"))[4] is None
    assert routing_key(case(topk_groups=2))[4] == 2
    assert routing_counts(case(topk_groups="none")).node_tokens.sum() / (64 * 32) > 5


def test_exact_fits_at_the_boundary():
    """A family with as many fitting cases as fitted values (5 all-to-all cases: efficiency, start-up, its ramp,
    latency floor, cost per remote peer) is an exact fit; with one case more it is not."""
    from types import SimpleNamespace

    from lshsim.sim.published import exact_fits

    run = lambda: SimpleNamespace(case=SimpleNamespace(kind="alltoall", op="alltoall", nic_family="x"), limited=False)
    assert exact_fits([run() for _ in range(5)]) == {"x": {"cases": 5, "fitted_values": 5}}
    assert exact_fits([run() for _ in range(6)]) == {}
