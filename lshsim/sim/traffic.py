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

Every error is a ValueError that names the spec (the file), the field and the value: a missing or
empty file, invalid JSON, a key given twice, a matrix of the wrong shape, an entry that is not a
finite number of bytes >= 0 (`true`, "1000000", NaN, -1 are refused) and at most
`lshsim.bounds`' 2^50 (1 PiB).
"""
from __future__ import annotations

import math
import os

import numpy as np

from lshsim import bounds
from lshsim.readers import load_json
from lshsim.units import parse_bytes

__all__ = ["load_traffic", "check_matrix"]


def load_traffic(spec: str, world: int) -> np.ndarray:
    """The (world, world) traffic matrix named by `spec` (module docstring).

    >>> load_traffic("uniform:4KiB", 4)[0].tolist()
    [1024.0, 1024.0, 1024.0, 1024.0]
    >>> load_traffic("uniform:4k", 4)
    Traceback (most recent call last):
    ...
    ValueError: traffic 'uniform:4k': '4k' is an ambiguous size: write 4kB (powers of 1000) or 4KiB (powers of 1024)
    """
    from lshsim.sim.collectives import uniform_traffic

    if spec.startswith("uniform:"):
        try:
            size = parse_bytes(spec[len("uniform:"):])
        except ValueError as error:
            raise ValueError(f"traffic {spec!r}: {error}") from None
        from lshsim import bounds

        problem = bounds.describe("bytes", size)          # 1e30 bytes per rank: as a matrix entry would be
        if problem is not None:
            raise ValueError(f"traffic {spec!r}: {problem}")
        return uniform_traffic(world, size)
    if not os.path.exists(spec):
        raise ValueError(f"traffic {spec!r}: no such file (expected uniform:BYTES_PER_RANK or FILE.json)")
    payload = load_json(spec, source=spec, what="traffic file")
    field = "traffic"
    if isinstance(payload, dict):
        if "traffic_bytes" not in payload:
            raise ValueError(f"{spec}: a JSON object needs a 'traffic_bytes' [W][W] field (got keys "
                             f"{sorted(payload)[:8]})")
        payload, field = payload["traffic_bytes"], "traffic_bytes"
    return check_matrix(payload, world, source=spec, field=field)


def check_matrix(payload, world: int, *, source: str, field: str = "traffic") -> np.ndarray:
    """`payload` (lists of lists) as a (world, world) float array of bytes: every entry a finite
    number >= 0 (not a bool, not text); errors name the source, the field (with its index) and the value.

    >>> check_matrix([[0, 1], [2, True]], 2, source="t.json")
    Traceback (most recent call last):
    ...
    ValueError: t.json: traffic[1][1]=True must be a finite number of bytes >= 0 (a matrix of numbers)
    """
    if not isinstance(payload, list) or not all(isinstance(row, list) for row in payload):
        raise ValueError(f"{source}: {field}={_short(payload)} must be a [W][W] list of lists of numbers")
    lengths = sorted({len(row) for row in payload})
    if len(lengths) > 1:
        raise ValueError(f"{source}: {field} has rows of {lengths} entries: a [W][W] matrix has rows of one length")
    shape = (len(payload), lengths[0] if lengths else 0)
    if shape != (world, world):
        raise ValueError(f"{source}: {field} shape {shape} does not match the topology's {world} GPUs "
                         f"({world}, {world})")
    for i, row in enumerate(payload):
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{source}: {field}[{i}][{j}]={value!r} must be a finite number of bytes >= 0 (a matrix of numbers)")
            bounds.check("bytes", f"{field}[{i}][{j}]", value, source)     # lshsim.bounds: 1 PiB
    return np.asarray(payload, dtype=float)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
