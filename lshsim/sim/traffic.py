"""Traffic matrices for one all-to-all, from the ways a user names them.

A traffic matrix is a (W, W) float array of bytes, row = source rank, column = destination; the
diagonal is what a rank keeps (an HBM copy in the simulator). `load_traffic(spec, world)` reads
one of these kinds of `spec`:

- `uniform:BYTES_PER_RANK`: every rank sends BYTES_PER_RANK in all, split evenly over the W ranks,
  itself included (the expected traffic of balanced routing; `uniform_traffic`). BYTES_PER_RANK is
  a byte size of `lshsim.units.parse_bytes`: `64MB` = 64e6 bytes, `64MiB` = 2^26 bytes, `64e6`;
- `FILE.json` holding a [W][W] list of numbers;
- `FILE.json` holding an object with a `traffic_bytes` [W][W] field: the output of
  `lshsim route --json` (`lshsim.dispatch.summary.route_summary`) is one.

Every error is a ValueError that names the spec.
"""
from __future__ import annotations

import json

import numpy as np

from lshsim.units import parse_bytes

__all__ = ["load_traffic"]


def load_traffic(spec: str, world: int) -> np.ndarray:
    """The (world, world) traffic matrix named by `spec` (module docstring).

    >>> load_traffic("uniform:4KiB", 4)[0].tolist()
    [1024.0, 1024.0, 1024.0, 1024.0]
    >>> load_traffic("uniform:4k", 4)
    Traceback (most recent call last):
    ...
    ValueError: traffic 'uniform:4k': '4k' is an ambiguous size: write 4kB (1000 bytes each) or 4KiB (1024 bytes each)
    """
    from lshsim.sim.collectives import uniform_traffic

    if spec.startswith("uniform:"):
        try:
            size = parse_bytes(spec[len("uniform:"):])
        except ValueError as error:
            raise ValueError(f"traffic {spec!r}: {error}") from None
        return uniform_traffic(world, size)
    try:
        with open(spec, encoding="utf-8") as handle:
            payload = json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"traffic {spec!r}: no such file (expected uniform:BYTES_PER_RANK or FILE.json)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"traffic {spec!r}: not valid JSON: {error}") from None
    if isinstance(payload, dict):
        if "traffic_bytes" not in payload:
            raise ValueError(f"traffic {spec!r}: a JSON object needs a 'traffic_bytes' [W][W] field")
        payload = payload["traffic_bytes"]
    try:
        matrix = np.asarray(payload, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"traffic {spec!r}: must be a [W][W] matrix of numbers") from None
    if matrix.shape != (world, world):
        raise ValueError(f"traffic {spec!r}: shape {matrix.shape} does not match the topology's "
                         f"{world} GPUs ({world}, {world})")
    return matrix
