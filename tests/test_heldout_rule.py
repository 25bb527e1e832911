"""Calibration and held-out workloads stay apart (a machine-checked rule on the committed data).

Every executor workload in data/workloads/ has one role, written in its file name and in its
`role:` field: `cal-*` workloads (role: calibration) are the only ones a calibration may be
fitted on; `gpu-*` workloads (role: held-out) only ever measure the predictions. Every calibrated
topology in data/topologies/calibrated/ (current and archive) names the traces it was fitted on in
`calibration.provenance`; none of them may come from a held-out workload.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = sorted((REPO / "data" / "workloads").glob("*.yaml"))
CALIBRATED = sorted((REPO / "data" / "topologies" / "calibrated").rglob("*.yaml"))
PREFIX_ROLE = {"cal-": "calibration", "gpu-": "held-out"}


def _role_by_name(name: str) -> str | None:
    return next((role for prefix, role in PREFIX_ROLE.items() if name.startswith(prefix)), None)


def _fitted_traces(path: Path) -> list[str]:
    provenance = (yaml.safe_load(path.read_text()).get("calibration") or {}).get("provenance") or {}
    names = list(provenance.get("traces") or []) + list(provenance.get("skewed_traces") or [])
    return [Path(name).stem for name in names]


def test_there_is_data_to_check():
    assert len(WORKLOADS) >= 40 and len(CALIBRATED) >= 2


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_every_workload_has_one_role(path):
    spec = yaml.safe_load(path.read_text())
    by_name = _role_by_name(path.stem)
    assert by_name is not None, f"{path.name}: name must start with one of {sorted(PREFIX_ROLE)}"
    assert spec.get("name") == path.stem, f"{path.name}: name field {spec.get('name')!r} differs from the file name"
    assert spec.get("role") == by_name, f"{path.name}: role {spec.get('role')!r}, the file name says {by_name!r}"


@pytest.mark.parametrize("path", CALIBRATED, ids=lambda p: str(p.relative_to(REPO)))
def test_no_calibration_is_fitted_on_a_held_out_workload(path):
    known = {p.stem: yaml.safe_load(p.read_text()).get("role") for p in WORKLOADS}
    for name in _fitted_traces(path):
        role = known.get(name, _role_by_name(name))
        assert role == "calibration", f"{path.name} was fitted on trace {name!r}, whose workload role is {role!r}"
