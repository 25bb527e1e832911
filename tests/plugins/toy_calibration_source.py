"""A toy calibration source: a CSV of uniform all-to-all timings, `bytes_per_rank,time_s` per row.

One module and one registry entry (`register`: SOURCES["csv-a2a"]). It follows the source
contract of `lshsim.calibration.sources`: it receives the files and its own options (the ranks of
the measurement, the GPU name) and returns one CalibrationInput whose points feed the alpha-beta
and bus bandwidth curve fits.
"""
from __future__ import annotations

import csv
from pathlib import Path

from lshsim.calibration import SOURCES, A2APoint, CalibrationInput

NAME = "csv-a2a"


def read_csv_a2a(paths, *, world_size: int, gpu: str | None = None) -> CalibrationInput:
    """Every row of every file: an all-to-all of equal splits of bytes_per_rank on world_size ranks."""
    points = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    points.append(A2APoint(int(row["bytes_per_rank"]), float(row["time_s"]), world_size))
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"{path}:{line}: expected bytes_per_rank,time_s, got {row}") from None
    return CalibrationInput(source=NAME, world_size=world_size, gpu=gpu, points=tuple(points),
                            provenance={"tool": "csv", "files": [Path(p).name for p in paths]})


def register():
    SOURCES[NAME] = read_csv_a2a
    return read_csv_a2a


def unregister():
    SOURCES.pop(NAME, None)
