"""Write the fresh held-out set of 4-GPU all-to-alls at and near NCCL's per-peer channel thresholds.

    python benchmarks/make_channel_heldout.py data/heldout/nccl-channels/a2a-cases-x4-channels.json \
        --topology after=data/topologies/calibrated/h200-x4.yaml \
                   no-term=data/topologies/calibrated/archive/h200-x4-run-g-threshold-points.yaml

Cases (bytes, 4 ranks; 16 KiB rows, so every chunk is aligned): equal chunks on both sides of
2^27 and 2^28 bytes; rotated patterns (rank r sends pattern[(d - r) mod 4] rows to rank d) whose
chunks straddle a threshold in ways the chunk sweeps did not; near-uniform matrices drawn around
and near the thresholds (seeded); a hot destination above 2^27 with the others below (the send
side uneven) and its transpose (the receive side uneven); LocMoE-like (every rank sends more to
rank 0) and its transpose. The predictions of each topology given are written into the file
(device time of `simulate_all_to_all`), so the commit that adds the file records them before
any run measures the cases. Measure on 4 GPUs:

    torchrun --nproc_per_node 4 benchmarks/bench_a2a_conventions.py measure \
        data/heldout/nccl-channels/a2a-cases-x4-channels.json OUT.json --max-bytes 2GiB

and compare (device convention): python benchmarks/eval_channel_term.py fresh OUT.json --topology NAME=YAML ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROW = 16384                     # bytes per row (d_model 8192, bf16)
T27, T28 = 2 ** 27 // ROW, 2 ** 28 // ROW   # 8192 and 16384 rows


def rotated(pattern):
    return [[pattern[(d - r) % 4] * ROW for d in range(4)] for r in range(4)]


def cases() -> tuple[list, list]:
    rng = np.random.default_rng(20261201)
    equal = [{"bytes_per_rank": 4 * mib * 2 ** 20} for mib in (124, 132, 250, 262)]
    matrices = [
        ("p27-self-below-peers-above", rotated([8100, 8250, 8250, 8250])),
        ("p27-one-peer-above", rotated([8150, 8150, 8250, 8150])),
        ("p28-two-adjacent-above", rotated([16300, 16450, 16450, 16300])),
        ("p28-one-peer-below", rotated([16450, 16300, 16450, 16450])),
        ("p28-wide", rotated([14500, 19000, 14500, 19000])),
    ]
    for name, mean in (("uniform-at-2^27", T27), ("uniform-at-2^28", T28), ("uniform-0.97x2^28", 0.97 * T28),
                       ("uniform-1.03x2^28", 1.03 * T28)):
        rows = np.rint(mean * (1 + 0.008 * rng.standard_normal((4, 4)))).astype(int)
        matrices.append((name, (rows * ROW).tolist()))
    hot = np.array([[3000, 6000, 4500, 9600], [3100, 6100, 4400, 9500], [2900, 5900, 4600, 9700],
                    [3050, 6050, 4450, 9650]])
    matrices += [("hot-destination-2^27", (hot * ROW).tolist()), ("hot-source-2^27", (hot.T * ROW).tolist())]
    loc = np.full((4, 4), 7700)
    loc[:, 0] = 8700
    matrices += [("locmoe-like-2^27", (loc * ROW).tolist()), ("locmoe-like-2^27-transposed", (loc.T * ROW).tolist())]
    return equal, [{"name": n, "rows": [[int(x) for x in row] for row in m]} for n, m in matrices]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--topology", nargs="*", default=[], metavar="NAME=YAML")
    args = parser.parse_args(argv)
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.sim.nccl import channel_send_ratio
    from lshsim.topology import load_topology

    equal, matrices = cases()
    predictions = {}
    for item in args.topology:
        name, _, path = item.partition("=")
        G = load_topology(path)
        out = {}
        for case in equal:
            chunk = case["bytes_per_rank"] // 4
            out[f"equal-{case['bytes_per_rank']}"] = simulate_all_to_all(G, np.full((4, 4), float(chunk))).time_s
        for m in matrices:
            out[m["name"]] = simulate_all_to_all(G, np.asarray(m["rows"], dtype=float)).time_s
        predictions[name] = {"topology": path, "device_s": out}
    ratios = {m["name"]: channel_send_ratio(m["rows"]) for m in matrices}
    doc = {"world_size": 4,
           "purpose": "fresh held-out set: 4-GPU all-to-alls straddling and near NCCL's per-peer channel thresholds "
                      "(2^27, 2^28 bytes), written with the channel term's predictions before any run measures them "
                      "(benchmarks/make_channel_heldout.py)",
           "equal": equal, "matrices": matrices, "channel_send_ratio": ratios, "predictions": predictions}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for name, p in predictions.items():
        print(name, {k: round(v * 1e3, 3) for k, v in p["device_s"].items()})
    print("send ratios", {k: round(v, 3) for k, v in ratios.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
