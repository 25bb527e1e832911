"""UCCL-EP's low-latency kernels on EFA: remote copies, proxy channels and the per-channel in-flight window, per case.

A diagnosis aid for issue 14 (benchmarks/HISTORY.md, "UCCL-EP's low-latency kernels on EFA from 2 to 3+ nodes"): the
published times of these kernels jump 1.8-1.9x from 2 to 3 nodes, more than their remote (token, expert) copies grow.
In UCCL-EP's code (uccl-project/uccl at bd7e82a6 / b9ef2050, the commits the README tables were written at) each
remote copy is one RDMA write posted by a CPU proxy; the proxy FIFO ("channel") a write takes is chosen by the expert
index, not the destination (dispatch: the destination's local expert index; combine: the global expert index, mod 32),
so a GPU uses L = experts / EP channels, each with at most 32 writes in flight (kMaxInflight, low-latency).

For every `efa` low-latency case of data/published/ this prints, from lshsim's own routing draw of the case (seed 0, as
`lshsim validate --published` routes it): the published time (counted bytes / published GB/s), the remote copies per
rank, the time per remote copy, the copies per channel and the busiest channel (mean over ranks) and the rounds of the
32-write window that channel needs. It fits nothing and changes no model; roles (fitting / test / freshN) are printed
so that held-out rows are never read as fitting evidence.

    python benchmarks/diag_uccl_ll_channels.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lshsim.sim.published import (FRESH_SETS, _experts, case_traffic, counted_bytes, deepep_routing,  # noqa: E402
                                  load_cases, load_fresh, load_split)

WINDOW = 32     # kMaxInflightLowLatency: writes in flight per proxy FIFO
CHANNELS = 32   # kNumThBlocks 4 x kChannelPerProxy 8 FIFOs per GPU


def channel_rows() -> list[dict]:
    """One dict per `efa` low-latency case (module docstring)."""
    cases = [c for c in load_cases() if c.kind == "low_latency" and c.nic_family == "efa"]
    test = load_split()
    fresh = {cid: key for key in FRESH_SETS for cid in load_fresh(key=key)}
    return [case_row(c, "test" if c.id in test else fresh.get(c.id, "fitting")) for c in cases]


def case_row(c, role: str) -> dict:
    """The channel loads of one low-latency case `c` (a `lshsim.sim.published` case); `role` is printed as given."""
    w = c.workload
    experts = _experts(c)
    local = experts // c.ep
    idx = np.stack([deepep_routing(r, int(w["tokens_per_rank"]), experts, c.nodes, int(w["top_k"]), None, 0,
                                   int(w.get("masked_choices", 0))) for r in range(c.ep)])
    copies = np.zeros((c.ep, c.ep, local), int)          # (source rank, destination rank, local expert)
    for r in range(c.ep):
        e = idx[r].ravel()
        e = e[e >= 0]
        np.add.at(copies, (r, e // local, e % local), 1)
    node = np.arange(c.ep) // c.gpus_per_node
    remote = node[:, None] != node[None, :]
    if c.op == "dispatch":   # the source posts; channel = the destination's local expert index
        per = (copies * remote[:, :, None]).sum(axis=1)  # (sender, local expert)
    else:                    # the expert's rank posts back; channel = global expert index mod 32
        per = (copies * remote[:, :, None]).sum(axis=0)
    channel = np.zeros((c.ep, CHANNELS), int)
    for e in range(local):
        if c.op == "dispatch":
            channel[:, e % CHANNELS] += per[:, e]
        else:
            for d in range(c.ep):
                channel[d, (d * local + e) % CHANNELS] += per[d, e]
    remote_copies = per.sum(axis=1).mean()
    published_us = counted_bytes(c, case_traffic(c)).mean() / (c.published_GBps * 1e9) * 1e6
    busiest = channel.max(axis=1)
    return {"id": c.id, "role": role, "ep": c.ep, "experts": experts, "channels": min(local, CHANNELS),
            "published_us": published_us, "remote_copies": remote_copies,
            "us_per_remote_copy": published_us / remote_copies,
            "copies_per_channel": remote_copies / min(local, CHANNELS), "busiest_channel": busiest.mean(),
            "window_rounds": np.ceil(busiest / WINDOW).mean()}


def main() -> int:
    print("| case | role | EP | experts | channels | published us | remote copies / rank | us / remote copy | "
          "copies / channel | busiest channel | window rounds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in channel_rows():
        print(f"| {r['id']} | {r['role']} | {r['ep']} | {r['experts']} | {r['channels']} | {r['published_us']:.0f} | "
              f"{r['remote_copies']:.0f} | {r['us_per_remote_copy']:.3f} | {r['copies_per_channel']:.1f} | "
              f"{r['busiest_channel']:.1f} | {r['window_rounds']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
