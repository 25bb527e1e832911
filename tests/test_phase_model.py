"""The phase model (lshsim/calibration/phase_model.py), its topology block (lshsim/topology/spec.py,
calibration.phase_model) and the validation that uses it (lshsim/sim/validate.py), against
independent references: synthetic data with known answers, scipy / numpy solvers and
interpolators, and the committed run-m H200 traces with their calibrated topologies."""
from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.interpolate import RegularGridInterpolator
from scipy.optimize import nnls

from lshsim.calibration.phase_model import (KERNEL_TERMS, ExpertTable, PhaseModel, fit_conventions, fit_expert_floor,
                                            fit_linear, parse_phase_model, transport_of_env, workload_features)
from lshsim.cli import main
from lshsim.sim.trace import Trace
from lshsim.sim.validate import check_transport, layer_errors, phase_errors, topology_for_trace, validate_trace_file
from lshsim.topology import build_topology

REPO = Path(__file__).resolve().parents[1]
CALIBRATED = REPO / "data" / "topologies" / "calibrated"
TOPO_NVLINK = CALIBRATED / "h200-x2-phases-nvlink.yaml"
TOPO_SHM = CALIBRATED / "h200-x2-phases-shm.yaml"
RUN_M = REPO / "data" / "measured" / "h200" / "run-m"
TRACE_NVLINK = RUN_M / "traces-nvlink-x2" / "ho3-h16-t9k-d2048-e12.json"
TRACE_NVLINK_LSH = RUN_M / "traces-nvlink-x2" / "ho3-p5-t10k-d3072-e8-lsh-L2p8.json"
TRACE_SHM = RUN_M / "traces-shm-x2" / "ho3-p5-t10k-d3072-e8-nolsh.json"
PM = "calibration.phase_model"


def _spec(path: Path = TOPO_NVLINK) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def nvlink_spec() -> dict:
    return _spec()


# ---- transport_of_env -------------------------------------------------------------------------------
@pytest.mark.parametrize("env, transport", [
    (None, "nvlink"),
    ({}, "nvlink"),
    ({"NCCL_P2P_DISABLE": "0"}, "nvlink"),
    ({"NCCL_SHM_DISABLE": "1"}, "nvlink"),                      # SHM off alone: P2P (NVLink) still used
    ({"NCCL_P2P_DISABLE": "1"}, "shm"),
    ({"NCCL_P2P_DISABLE": "true"}, "shm"),
    ({"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "0"}, "shm"),
    ({"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1"}, "socket"),
    ({"NCCL_P2P_DISABLE": "true", "NCCL_SHM_DISABLE": "true"}, "socket"),
    ({"NCCL_P2P_DISABLE": "0", "NCCL_SHM_DISABLE": "1"}, "nvlink"),
])
def test_transport_of_env(env, transport):
    assert transport_of_env(env) == transport


# ---- fit_linear -------------------------------------------------------------------------------------
def _design(n: int, seed: int = 0):
    """Rows of three features of different magnitudes (as in the kernel fits: const, a count, bytes)."""
    rng = np.random.default_rng(seed)
    rows = [{"const": 1.0, "a": float(rng.uniform(1e3, 1e5)), "b": float(rng.uniform(1e6, 1e9))} for _ in range(n)]
    X = np.array([[r["const"], r["a"], r["b"]] for r in rows])
    return rows, X


def test_fit_linear_recovers_exact_non_negative_coefficients():
    rows, X = _design(12)
    true = np.array([3e-5, 0.0, 2e-12])                   # one coefficient exactly zero: on the constraint
    fit = fit_linear(("const", "a", "b"), rows, X @ true)
    assert fit.terms == ("const", "a", "b") and fit.points == 12
    assert fit.coef[0] == pytest.approx(true[0], rel=1e-9)
    assert fit.coef[1] == pytest.approx(0.0, abs=1e-20)
    assert fit.coef[2] == pytest.approx(true[2], rel=1e-9)
    assert fit.max_rel_error < 1e-9 and fit.loo_max_rel_error < 1e-9
    for row in rows:
        assert fit.predict_s(row) == pytest.approx(float(np.dot([row["const"], row["a"], row["b"]], true)), rel=1e-9)


def test_fit_linear_on_noisy_data_matches_independent_solvers():
    rows, X = _design(30, seed=1)
    true = np.array([3e-5, 1e-9, 2e-12])
    rng = np.random.default_rng(2)
    y = X @ true * (1 + 0.05 * rng.standard_normal(len(rows)))
    fit = fit_linear(("const", "a", "b"), rows, y)
    # the relative least squares: rows divided by their target; the unconstrained optimum is positive
    # here, so numpy's least squares is the same problem, and scipy's nnls on column-scaled rows too
    A, b = X / y[:, None], np.ones(len(y))
    lstsq = np.linalg.lstsq(A, b, rcond=None)[0]
    assert (lstsq > 0).all()
    scale = np.abs(A).max(axis=0)
    reference_nnls = nnls(A / scale, b)[0] / scale
    # tolerance: 1e-6 relative (both solve the same well-conditioned 3-unknown problem)
    assert np.asarray(fit.coef) == pytest.approx(lstsq, rel=1e-6)
    assert np.asarray(fit.coef) == pytest.approx(reference_nnls, rel=1e-6)
    errors = np.abs(A @ lstsq - 1.0)
    assert fit.median_rel_error == pytest.approx(np.median(errors), rel=1e-6)
    assert fit.max_rel_error == pytest.approx(errors.max(), rel=1e-6)
    # leave-one-out of a linear least squares: residual_i / (1 - h_ii), never smaller than in sample
    hat = np.diag(A @ np.linalg.pinv(A))
    loo = errors / (1 - hat)
    assert fit.loo_median_rel_error == pytest.approx(np.median(loo), rel=1e-6)
    assert fit.loo_max_rel_error == pytest.approx(loo.max(), rel=1e-6)
    assert fit.loo_median_rel_error >= fit.median_rel_error and fit.loo_max_rel_error >= fit.max_rel_error
    # the fit is closer to the noise-free truth than the 5% noise itself
    truth = X @ true
    assert np.median(np.abs(X @ np.asarray(fit.coef) - truth) / truth) < 0.05


def test_fit_linear_active_constraint_matches_scipy_nnls():
    """A term whose unconstrained coefficient would be negative is held at zero, as scipy's nnls does."""
    rows, X = _design(25, seed=3)
    true = np.array([3e-5, 0.0, 2e-12])
    y = X @ true - 2e-10 * X[:, 1]                        # a pull towards a negative coefficient of "a"
    y = np.where(y > 0, y, 1e-6)
    fit = fit_linear(("const", "a", "b"), rows, y)
    A = X / y[:, None]
    assert np.linalg.lstsq(A, np.ones(len(y)), rcond=None)[0][1] < 0   # the constraint is active
    scale = np.abs(A).max(axis=0)
    reference = nnls(A / scale, np.ones(len(y)))[0] / scale
    assert fit.coef[1] == 0.0 and min(fit.coef) >= 0.0
    assert np.asarray(fit.coef) == pytest.approx(reference, rel=1e-6, abs=1e-30)


def test_fit_linear_scale_changes_the_weighting():
    """Relative to the target, a point with a tiny target dominates; relative to `scale` it does not."""
    xs = np.arange(1.0, 11.0)
    rows = [{"const": 1.0, "x": float(x)} for x in xs] + [{"const": 1.0, "x": 0.5}]
    y = np.concatenate([10.0 + xs, [1e-3]])               # the last point: a near-zero remainder
    relative = fit_linear(("const", "x"), rows, y)
    assert relative.coef[0] < 0.1                          # the tiny point pins the constant near 0
    scaled = fit_linear(("const", "x"), rows, y, scale=np.full(len(y), 20.0))
    # uniform scale: ordinary least squares (independent: numpy), the constant near the bulk's 10
    X = np.array([[r["const"], r["x"]] for r in rows])
    ols = np.linalg.lstsq(X, y, rcond=None)[0]
    assert np.asarray(scaled.coef) == pytest.approx(ols, rel=1e-6)
    assert scaled.coef[0] > 5.0
    # errors are relative to the scale
    assert scaled.max_rel_error == pytest.approx(np.abs(X @ ols - y).max() / 20.0, rel=1e-6)
    assert relative.max_rel_error > scaled.max_rel_error


def test_fit_linear_refuses_no_points_and_skips_loo_without_spare_points():
    with pytest.raises(ValueError, match="no points"):
        fit_linear(("const",), [], [])
    rows = [{"const": 1.0, "lsh": 0.0, "x": x} for x in (1.0, 2.0, 4.0)]
    fit = fit_linear(("const", "lsh", "x"), rows, [3.0, 5.0, 9.0])
    assert fit.coef == pytest.approx((1.0, 0.0, 2.0)) and fit.loo_median_rel_error is None
    assert fit.loo_max_rel_error is None


def test_fit_linear_refuses_a_fit_without_degrees_of_freedom():
    """As many points as independent terms: the fit passes through them whatever they are, and reported
    0% error (branch robust3; before: two points, two terms, coefficients (1, 2) and |error| 0)."""
    with pytest.raises(ValueError, match=r"2 point\(s\) for 2 independent term\(s\) of const, x: the fit passes "
                                         r"through every point whatever they are .* at least 3 points"):
        fit_linear(("const", "x"), [{"const": 1.0, "x": 1.0}, {"const": 1.0, "x": 2.0}], [3.0, 5.0])
    with pytest.raises(ValueError, match=r"1 point\(s\) for 1 independent term\(s\) of const"):
        fit_linear(("const",), [{"const": 1.0}], [2.0])
    # one spare point: a real fit (its error can be other than 0)
    fit = fit_linear(("const", "x"), [{"const": 1.0, "x": x} for x in (1.0, 2.0, 3.0)], [3.0, 5.0, 8.0])
    assert fit.max_rel_error > 0.01


def test_fit_linear_refuses_points_of_one_shape_for_a_size_term(tmp_path, capsys):
    """Calibration layers of one shape (one layer, or one layer twice) fitted the gate's four terms exactly:
    0% error, and a growth with the size that nothing determined (branch robust). A term that is 0 on every
    point (no LSH layer) plays no part; a constant alone may be fitted on repeats of one shape."""
    one_shape = [{"const": 1.0, "x": 2.0}, {"const": 1.0, "x": 2.0}]
    with pytest.raises(ValueError, match=r"2 point\(s\) of 1 distinct shape\(s\) cannot fit the terms const, x"):
        fit_linear(("const", "x"), one_shape, [3.0, 3.1])
    assert fit_linear(("const",), [{"const": 1.0}] * 3, [2.0, 2.0, 2.0]).coef == pytest.approx((2.0,))
    assert fit_linear(("const", "lsh", "x"), [{"const": 1.0, "lsh": 0.0, "x": x} for x in (1.0, 2.0, 3.0)],
                      [3.0, 5.0, 7.5]).points == 3
    # through `calibrate --from-raw`: the refusal names the file and the phase, nothing is written
    from lshsim.cli import main

    raw = json.loads((Path(__file__).resolve().parents[1] / "data" / "measured" / "h200" / "run-l"
                      / "cal-nvlink-raw.json").read_text())
    raw["results"]["phases"]["layers"] = raw["results"]["phases"]["layers"][:1]
    (tmp_path / "r.json").write_text(json.dumps(raw))
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--from-raw", str(tmp_path / "r.json"), "--out", str(tmp_path / "o" / "c.yaml"),
              "--raw", str(tmp_path / "o" / "raw.json"), "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert "r.json: results.phases: the layers' gate forward: 1 point(s) of 1 distinct shape(s)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# ---- ExpertTable --------------------------------------------------------------------------------------
AXES = {"experts": (1, 4, 16), "rows_per_expert": (64, 256, 1024), "d_model": (256, 1024), "d_ffn": (512, 2048)}
C = 1e-13


def _power_law(e, r, d, f, direction="forward"):
    return C * e * r * d * f * (1.0 if direction == "forward" else 2.0)


def _grid_points(fn=_power_law) -> list[dict]:
    return [{"experts": e, "rows_per_expert": r, "d_model": d, "d_ffn": f, "forward_s": fn(e, r, d, f),
             "backward_s": fn(e, r, d, f, "backward")}
            for e, r, d, f in itertools.product(*AXES.values())]


def test_expert_table_reproduces_a_power_law_on_and_between_grid_points():
    table = ExpertTable.from_points(_grid_points())
    assert table.axes == tuple(AXES.values())
    for point in _grid_points():
        args = (point["experts"], point["rows_per_expert"], point["d_model"], point["d_ffn"])
        assert table.device_s(*args) == pytest.approx(point["forward_s"], rel=1e-12)
        assert table.device_s(*args, direction="backward") == pytest.approx(point["backward_s"], rel=1e-12)
    # log-multilinear interpolation of a power law is exact between the grid points
    for args in [(2, 100, 500, 1000), (3.5, 700.0, 300, 1999), (12, 65, 1000, 600)]:
        assert table.device_s(*args) == pytest.approx(_power_law(*args), rel=1e-9)
        assert table.device_s(*args, direction="backward") == pytest.approx(_power_law(*args, "backward"), rel=1e-9)


def test_expert_table_interpolates_log_multilinearly_like_scipy():
    rng = np.random.default_rng(5)
    values = {key: float(v) for key, v in zip(itertools.product(*AXES.values()),
                                               rng.uniform(1e-4, 1e-2, size=3 * 3 * 2 * 2))}
    table = ExpertTable.from_points(_grid_points(lambda e, r, d, f, direction="forward":
                                                 values[(e, r, d, f)] * (1 if direction == "forward" else 3)))
    log_axes = [np.log(np.asarray(a, dtype=float)) for a in AXES.values()]
    log_values = np.log(np.array([values[k] for k in itertools.product(*AXES.values())]).reshape(3, 3, 2, 2))
    reference = RegularGridInterpolator(log_axes, log_values, method="linear")
    for point in rng.uniform([1, 64, 256, 512], [16, 1024, 1024, 2048], size=(20, 4)):
        expected = math.exp(float(reference(np.log(point))[0]))
        assert table.device_s(*point) == pytest.approx(expected, rel=1e-9)
        assert table.device_s(*point, direction="backward") == pytest.approx(3 * expected, rel=1e-9)


def test_expert_table_scales_above_the_grid_and_clamps_below():
    rng = np.random.default_rng(6)
    table = ExpertTable.from_points(_grid_points(lambda e, r, d, f, direction="forward":
                                                 float(rng.uniform(1e-4, 1e-2))))
    # above the largest value of an axis: linear with the slope of the last grid interval (a fixed
    # cost plus a marginal one), never decreasing
    def linear(top_s, prev_s, top, prev, value):
        return top_s + max((top_s - prev_s) / (top - prev), 0.0) * (value - top)

    assert table.device_s(64, 300, 512, 1024) == pytest.approx(
        linear(table.device_s(16, 300, 512, 1024), table.device_s(4, 300, 512, 1024), 16, 4, 64), rel=1e-12)
    assert table.device_s(8, 4096, 512, 1024) == pytest.approx(
        linear(table.device_s(8, 1024, 512, 1024), table.device_s(8, 256, 512, 1024), 1024, 256, 4096), rel=1e-12)
    assert table.device_s(8, 300, 512, 8192) == pytest.approx(
        linear(table.device_s(8, 300, 512, 2048), table.device_s(8, 300, 512, 1024), 2048, 1024, 8192), rel=1e-12)
    assert table.device_s(64, 300, 512, 1024) >= table.device_s(16, 300, 512, 1024)
    # below the smallest: clamped to it
    assert table.device_s(0.5, 300, 512, 1024) == pytest.approx(table.device_s(1, 300, 512, 1024), rel=1e-12)
    assert table.device_s(8, 10, 512, 1024) == pytest.approx(table.device_s(8, 64, 512, 1024), rel=1e-12)
    assert table.device_s(8, 300, 16, 100) == pytest.approx(table.device_s(8, 300, 256, 512), rel=1e-12)
    # the power law: exact above the grid too
    law = ExpertTable.from_points(_grid_points())
    assert law.device_s(64, 4096, 2048, 8192) == pytest.approx(_power_law(64, 4096, 2048, 8192), rel=1e-9)


def test_expert_table_floor_and_empty_load():
    table = ExpertTable.from_points(_grid_points())
    floored = table.with_floor((1e-3, 2e-3))
    small, large = (1, 64, 256, 512), (16, 1024, 1024, 2048)
    assert floored.predict_s(*small) == 1e-3                    # device time 1.7e-6: the floor
    assert floored.predict_s(*small, direction="backward") == 2e-3
    assert floored.predict_s(*large) == pytest.approx(table.device_s(*large))     # above the floor
    assert floored.predict_s(*large, direction="backward") == pytest.approx(table.device_s(*large, "backward"))
    assert floored.device_s(*small) == pytest.approx(_power_law(*small))          # device_s has no floor
    assert table.predict_s(*small) == pytest.approx(_power_law(*small))           # default floor 0
    assert floored.predict_s(4, 0, 256, 512) == 0.0 and floored.predict_s(0, 64, 256, 512) == 0.0
    again = ExpertTable.from_points(floored.to_points())
    assert again.axes == table.axes and np.array_equal(again.forward_s, table.forward_s)
    assert np.array_equal(again.backward_s, table.backward_s)


@pytest.mark.parametrize("change, message", [
    (lambda p: p[3].update(forward_s=-1.0), r"compute\.expert\[3\]\.forward_s=-1\.0"),
    (lambda p: p[5].update(backward_s=float("nan")), r"compute\.expert\[5\]\.backward_s=nan"),
    (lambda p: p[0].update(forward_s=True), r"compute\.expert\[0\]\.forward_s=True"),
    (lambda p: p[2].update(d_model=256.0), r"compute\.expert\[2\]\.d_model=256\.0"),
    (lambda p: p[7].update(experts=0), r"compute\.expert\[7\]\.experts=0"),
    (lambda p: p.pop(4), r"compute\.expert: the grid of 3 x 3 x 2 x 2 .* misses 1 points"),
    # branch robust: one point was a table that predicted every expert shape at that point's time
    (lambda p: p.__delitem__(slice(1, None)), r"compute\.expert holds one grid point"),
])
def test_expert_table_refuses_bad_points_naming_the_field(change, message):
    points = _grid_points()
    change(points)
    with pytest.raises(ValueError, match=message):
        ExpertTable.from_points(points, "compute.expert")
    with pytest.raises(ValueError, match="non-empty list"):
        ExpertTable.from_points([], "compute.expert")


# ---- fit_conventions ------------------------------------------------------------------------------------
W = 2
CHUNKS = [4096 * 2 ** i for i in range(8)]
AS_RUN, B2B = 20e-6, 5e-6


def _device(size: float) -> float:
    return 10e-6 + size / 50e9


def _records(ratio=lambda m: 1.25, as_run_extra=None, unaligned_extra=None) -> list[dict]:
    out = []
    for i, chunk in enumerate(CHUNKS):
        size = chunk * W
        device = _device(size)
        extra = (as_run_extra or {}).get(i, 0.0)
        out.append({"bytes_per_rank": size, "world_size": W, "aligned": True, "device": device,
                    "as_run": device + AS_RUN + extra, "back_to_back": device + B2B})
        factor = ratio(size) * (unaligned_extra or {}).get(i, 1.0)
        udevice = device * factor
        out.append({"bytes_per_rank": (chunk + 2) * W, "world_size": W, "aligned": False, "device": udevice,
                    "as_run": udevice + AS_RUN, "back_to_back": udevice + B2B})
    return out


def test_fit_conventions_recovers_offsets_and_unaligned_ratio():
    records = _records()
    records.append({"name": "held-out", "bytes_per_rank": 3 * 4096, "world_size": W, "aligned": True,
                    "device": 1.0, "as_run": 5.0, "back_to_back": 9.0})      # named cases are not fitted
    out = fit_conventions(records)
    sizes = [float(c * W) for c in CHUNKS]
    assert [m for m, _ in out["as_run"]] == sizes and [m for m, _ in out["back_to_back"]] == sizes
    assert [v for _, v in out["as_run"]] == pytest.approx([AS_RUN] * len(CHUNKS), rel=1e-9)
    assert [v for _, v in out["back_to_back"]] == pytest.approx([B2B] * len(CHUNKS), rel=1e-6)
    assert [m for m, _ in out["unaligned"]] == sizes                       # keyed by the aligned size
    assert [v for _, v in out["unaligned"]] == pytest.approx([1.25] * len(CHUNKS), rel=1e-12)


def test_fit_conventions_interior_follows_a_monotone_ratio():
    """A running median of a monotone sequence is the sequence itself (away from the ends)."""
    ratio = lambda m: 1.0 + 0.1 * math.log2(m / (4096 * W))             # noqa: E731
    out = fit_conventions(_records(ratio=ratio))
    for m, v in out["unaligned"][1:-1]:
        assert v == pytest.approx(ratio(m), rel=1e-12)


def test_fit_conventions_one_outlier_size_does_not_move_the_curves():
    out = fit_conventions(_records(as_run_extra={3: 1e-3}, unaligned_extra={4: 5.0}))
    assert [v for _, v in out["as_run"]] == pytest.approx([AS_RUN] * len(CHUNKS), rel=1e-9)
    assert [v for _, v in out["unaligned"]] == pytest.approx([1.25] * len(CHUNKS), rel=1e-12)
    out = fit_conventions(_records(as_run_extra={0: 1e-3}))                # an outlier at the first size
    assert [v for _, v in out["as_run"]] == pytest.approx([AS_RUN] * len(CHUNKS), rel=1e-9)


def test_fit_conventions_without_aligned_or_unaligned_records():
    with pytest.raises(ValueError, match="no aligned all-to-all records"):
        fit_conventions([r for r in _records() if not r["aligned"]])
    assert fit_conventions([r for r in _records() if r["aligned"]])["unaligned"] is None


# ---- PhaseModel.a2a_s ---------------------------------------------------------------------------------
def _model(**kwargs) -> PhaseModel:
    curves = {"excess_as_run": ((1e3, AS_RUN), (1e9, AS_RUN)), "excess_back_to_back": ((1e3, B2B), (1e9, B2B)),
              "unaligned": ((1e3, 1.5), (1e9, 1.5))}
    curves.update(kwargs)
    return PhaseModel(**curves)


ALIGNED = np.array([[0, 65536], [65536, 0]])
UNALIGNED = np.array([[0, 65538], [65538, 0]])


def test_a2a_conventions():
    pm, device = _model(), 1e-4
    assert pm.a2a_s(device, ALIGNED) == device and pm.a2a_s(device, ALIGNED, "device") == device
    assert pm.a2a_s(device, np.array([[3, 65536], [65536, 7]])) == device     # the diagonal never moves
    assert pm.a2a_s(device, UNALIGNED) == pytest.approx(1.5 * device)
    assert pm.a2a_s(device, np.array([[0, 65536], [65544, 0]])) == pytest.approx(1.5 * device)  # one chunk
    assert pm.a2a_s(device, ALIGNED, "as_run") == pytest.approx(device + AS_RUN)
    assert pm.a2a_s(device, ALIGNED, "back_to_back") == pytest.approx(device + B2B)
    assert pm.a2a_s(device, UNALIGNED, "as_run") == pytest.approx(1.5 * device + AS_RUN)
    assert pm.a2a_s(device, UNALIGNED, "back_to_back") == pytest.approx(1.5 * device + B2B)
    assert pm.latency_as_run_s == AS_RUN
    with pytest.raises(ValueError, match="convention='nccl_tests'"):
        pm.a2a_s(device, ALIGNED, "nccl_tests")
    bare = PhaseModel()
    for convention in ("device", "as_run", "back_to_back"):
        assert bare.a2a_s(device, UNALIGNED, convention) == device
    assert bare.latency_as_run_s == 0.0


def test_a2a_curves_interpolate_log_linearly_in_the_size():
    pm = _model(unaligned=((1e4, 1.0), (1e6, 2.0)), excess_as_run=((1e4, 10e-6), (1e6, 30e-6)))
    traffic = np.array([[0, 50002], [50002, 0]])               # M = 2 * 50002 = 100004 B/rank, unaligned
    frac = (math.log(100004) - math.log(1e4)) / (math.log(1e6) - math.log(1e4))
    assert pm.a2a_s(1e-4, traffic) == pytest.approx(1e-4 * (1.0 + frac), rel=1e-12)
    aligned = np.array([[0, 50000], [50000, 0]])
    assert pm.a2a_s(1e-4, aligned, "as_run") == pytest.approx(1e-4 + 20e-6, rel=1e-12)
    huge = np.array([[0, 2 ** 31], [2 ** 31 + 2, 0]])          # beyond the curve: its end value
    assert pm.a2a_s(1e-4, huge, "as_run") == pytest.approx(2e-4 + 30e-6, rel=1e-12)


# ---- the topology block ---------------------------------------------------------------------------------
def _kernels(spec):
    return spec["calibration"]["phase_model"]["compute"]["kernels"]


BAD_FIELDS = [
    (lambda pm: pm.update(transport="infiniband"), rf"{PM}\.transport='infiniband'"),
    (lambda pm: pm.update(bogus=1), rf"{PM}\.bogus is not a known field"),
    (lambda pm: pm["a2a_excess_s"]["as_run"].insert(1, list(pm["a2a_excess_s"]["as_run"][0])),
     rf"{PM}\.a2a_excess_s\.as_run: sizes must be strictly increasing"),
    (lambda pm: pm["a2a_excess_s"]["back_to_back"].reverse(),
     rf"{PM}\.a2a_excess_s\.back_to_back: sizes must be strictly increasing"),
    (lambda pm: pm["a2a_unaligned"][2].__setitem__(1, 0.0), rf"{PM}\.a2a_unaligned\[2\]\[1\]=0\.0"),
    (lambda pm: pm["compute"]["kernels"].update({"attention.forward": {"terms": ["const"], "coef": [1e-5]}}),
     rf"{PM}\.compute\.kernels\.attention\.forward: not a known phase\.direction"),
    (lambda pm: pm["compute"]["kernels"]["gate.forward"]["coef"].__setitem__(0, -1e-6),
     rf"{PM}\.compute\.kernels\.gate\.forward\.coef\[0\]=-1e-06"),
    (lambda pm: pm["compute"]["kernels"]["glue.forward"]["terms"].__setitem__(1, "flops"),
     rf"{PM}\.compute\.kernels\.glue\.forward\.terms: 'flops' is not a feature"),
    (lambda pm: pm["compute"]["expert"][3].update(forward_s=-2.0), rf"{PM}\.compute\.expert\[3\]\.forward_s=-2\.0"),
    (lambda pm: pm["compute"].update(exchange_s=float("inf")), rf"{PM}\.compute\.exchange_s=inf"),
]


@pytest.mark.parametrize("change, message", BAD_FIELDS)
def test_topology_refuses_a_bad_phase_model_naming_source_and_field(nvlink_spec, change, message):
    spec = copy.deepcopy(nvlink_spec)
    change(spec["calibration"]["phase_model"])
    with pytest.raises(ValueError, match=rf"^x\.yaml: {message}"):
        build_topology(spec, source="x.yaml")


def test_committed_topologies_build_with_their_transport():
    for path, transport in ((TOPO_NVLINK, "nvlink"), (TOPO_SHM, "shm"),
                            (CALIBRATED / "h200-x2-phases-socket.yaml", "socket")):
        pm = build_topology(_spec(path), source=path.name).graph["phase_model"]
        assert isinstance(pm, PhaseModel) and pm.transport == transport
        assert set(pm.kernels) <= set(KERNEL_TERMS) and pm.expert is not None
    assert build_topology(_spec(CALIBRATED / "h200-x2.yaml"), source="h200-x2.yaml").graph["phase_model"] is None


def test_to_block_round_trip_gives_the_same_predictions(nvlink_spec):
    pm = build_topology(copy.deepcopy(nvlink_spec), source="x.yaml").graph["phase_model"]
    block = pm.to_block()
    again = parse_phase_model(yaml.safe_load(yaml.safe_dump(block)), source="round-trip")
    assert again.to_block() == block
    assert again.transport == pm.transport and again.exchange_s == pm.exchange_s
    assert again.exchange_single_s == pm.exchange_single_s and again.latency_as_run_s == pm.latency_as_run_s
    rng = np.random.default_rng(7)
    for _ in range(10):
        chunk = int(rng.integers(1, 2 ** 26))
        traffic = np.array([[0, chunk], [chunk + int(rng.integers(0, 3)), 0]])
        for convention in ("device", "as_run", "back_to_back"):
            assert again.a2a_s(1e-4, traffic, convention) == pm.a2a_s(1e-4, traffic, convention)
        e, r, d, f = rng.uniform([1, 32, 512, 512], [32, 32768, 16384, 32768])
        for direction in ("forward", "backward"):
            assert again.expert.predict_s(e, r, d, f, direction) == pm.expert.predict_s(e, r, d, f, direction)
    features = workload_features({"tokens_per_rank": 8192, "d_model": 2048, "num_experts": 16, "world_size": 2,
                                  "router": {"k": 2}, "lsh": {"num_hashes": 4, "proj_dim": 16}})
    assert set(pm.kernels) == set(again.kernels)
    for phase, direction in pm.kernels:
        assert again.kernel_s(phase, direction, features) == pm.kernel_s(phase, direction, features) > 0
    # and the YAML spec with the re-written block builds to the same model
    spec = copy.deepcopy(nvlink_spec)
    spec["calibration"]["phase_model"] = block
    rebuilt = build_topology(spec, source="y.yaml").graph["phase_model"]
    assert rebuilt.to_block() == block


# ---- validation on the committed run-m traces -------------------------------------------------------------
@pytest.fixture(scope="module")
def validation_nvlink():
    return validate_trace_file(TRACE_NVLINK, TOPO_NVLINK)


def test_validate_predicts_every_phase_and_the_layer(validation_nvlink):
    v = validation_nvlink
    trace = Trace.from_json(TRACE_NVLINK)
    measured = trace.meta["measured"]
    rows = {(r.phase, r.direction): r for r in v.rows}
    assert v.world_size == 2 and v.topology == "h200-x2-phases-nvlink"
    for direction, phases in measured["phases_s"].items():
        for phase, seconds in phases.items():
            row = rows[(phase, direction)]
            assert row.measured_s == seconds and row.predicted_s is not None and row.predicted_s > 0
    for direction in ("forward", "backward", "total"):
        row = rows[("layer", direction)]
        assert row.measured_s == measured["layer_s"][direction] and row.predicted_s > 0
        assert row.rel_error == pytest.approx((row.predicted_s - row.measured_s) / row.measured_s)
    assert rows[("layer", "total")].predicted_s == pytest.approx(
        rows[("layer", "forward")].predicted_s + rows[("layer", "backward")].predicted_s, rel=1e-12)
    assert len(v.rows) == sum(len(p) for p in measured["phases_s"].values()) + 3


def test_validate_layer_is_phases_plus_glue_plus_launch_latency(validation_nvlink):
    """The layer rows recomputed from the phase model's parts (independently of validate's loop)."""
    v = validation_nvlink
    trace = Trace.from_json(TRACE_NVLINK)
    measured, workload = trace.meta["measured"], trace.meta["workload"]
    pm = topology_for_trace(TOPO_NVLINK, 2).graph["phase_model"]
    features = workload_features({**workload, "bytes_per_token": measured["bytes_per_token"]})
    rows = {(r.phase, r.direction): r for r in v.rows}
    for direction in ("forward", "backward"):
        phases = sum(rows[(p, direction)].predicted_s for p in measured["phases_s"][direction])
        expected = phases + pm.kernel_s("glue", direction, features) + (
            pm.latency_as_run_s if direction == "forward" else 0.0)
        assert rows[("layer", direction)].predicted_s == pytest.approx(expected, rel=1e-12)
    # the gate: the fitted linear model on the workload's features
    gate = pm.kernels[("gate", "forward")]
    assert rows[("gate", "forward")].predicted_s == pytest.approx(
        sum(c * features[t] for t, c in zip(gate.terms, gate.coef)), rel=1e-12)
    # the split exchange: its fixed part and an as-run all-to-all of E/W * 8 bytes per peer
    G = topology_for_trace(TOPO_NVLINK, 2)
    from lshsim.sim.collectives import simulate_all_to_all

    counts = np.full((2, 2), workload["num_experts"] // 2 * 8.0)
    device = float(simulate_all_to_all(G, counts).time_s)
    assert rows[("other", "forward")].predicted_s == pytest.approx(
        pm.exchange_s + pm.a2a_s(device, counts, "as_run"), rel=1e-9)


def test_layer_and_phase_errors(validation_nvlink):
    lsh = validate_trace_file(TRACE_NVLINK_LSH, TOPO_NVLINK)
    validations = [validation_nvlink, lsh]
    expected = [r.rel_error for v in validations for r in v.rows if r.phase == "layer" and r.direction == "total"]
    assert layer_errors(validations).tolist() == pytest.approx(expected) and len(expected) == 2
    forward = [r.rel_error for v in validations for r in v.rows if r.phase == "layer" and r.direction == "forward"]
    assert layer_errors(validations, "forward").tolist() == pytest.approx(forward)
    errors = phase_errors(validations)
    assert {"layer/total", "layer/forward", "layer/backward", "gate/forward", "expert/backward",
            "lsh_compress/forward", "lsh_restore/backward", "other/forward", "dispatch_a2a/forward"} <= set(errors)
    assert errors["layer/total"].tolist() == pytest.approx(expected)
    assert len(errors["gate/forward"]) == 2 and len(errors["lsh_compress/forward"]) == 1
    assert sum(len(values) for values in errors.values()) == sum(
        r.rel_error is not None for v in validations for r in v.rows)


def test_validate_refuses_another_transport():
    with pytest.raises(ValueError, match=r"ho3-p5-t10k-d3072-e8-nolsh\.json: .*transport 'shm'.*"
                                         r"h200-x2-phases-nvlink was calibrated over 'nvlink'"):
        validate_trace_file(TRACE_SHM, TOPO_NVLINK)
    shm = validate_trace_file(TRACE_SHM, TOPO_SHM)                        # the same transport: validated
    assert any(r.phase == "layer" and r.predicted_s for r in shm.rows)


def test_check_transport_reads_the_trace_environment():
    G = topology_for_trace(TOPO_NVLINK, 2)
    trace = Trace.from_json(TRACE_NVLINK)
    check_transport(trace, G)                                              # nvlink on nvlink
    trace.meta["provenance"]["nccl_env"] = {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1"}
    with pytest.raises(ValueError, match=r"transport 'socket' \(NCCL_P2P_DISABLE=1, NCCL_SHM_DISABLE=1\)"):
        check_transport(trace, G)
    check_transport(trace, topology_for_trace("h200-nvswitch", 2))        # no phase model: not checked
    trace.meta["workload"]["world_size"] = 1
    check_transport(trace, G)                                              # one rank: no NCCL transport


def test_validate_without_a_phase_model_has_no_layer_rows():
    v = validate_trace_file(TRACE_NVLINK, "h200-nvswitch")
    assert not any(r.phase == "layer" for r in v.rows)
    rows = {(r.phase, r.direction): r for r in v.rows}
    assert rows[("gate", "forward")].predicted_s is None and rows[("other", "forward")].predicted_s is None
    assert rows[("dispatch_a2a", "forward")].predicted_s is not None
    assert layer_errors([v]).size == 0 and not any(key.startswith("layer/") for key in phase_errors([v]))


def test_cli_validate_json_summary(validation_nvlink, capsys):
    lsh = validate_trace_file(TRACE_NVLINK_LSH, TOPO_NVLINK)
    assert main(["validate", str(TRACE_NVLINK), str(TRACE_NVLINK_LSH), "--topology", str(TOPO_NVLINK), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    summary = out["summary"]
    totals = np.abs(layer_errors([validation_nvlink, lsh]))
    assert summary["layer_predictions"] == 2
    assert summary["layer_median_abs_rel_error"] == pytest.approx(float(np.median(totals)))
    assert summary["layer_max_abs_rel_error"] == pytest.approx(float(totals.max()))
    assert [v["name"] for v in out["validations"]] == [validation_nvlink.name, lsh.name]
    assert main(["validate", str(TRACE_NVLINK), "--topology", "h200-nvswitch", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["layer_predictions"] == 0 and summary["layer_median_abs_rel_error"] is None


def test_unaligned_curve_end_ignores_one_outlier():
    """The running median keeps a full window at the curve's ends: one noisy largest size cannot set them."""
    records = []
    for i in range(6):
        chunk, device = 4096 * 2 ** i, 1e-4
        records.append(dict(bytes_per_rank=2 * chunk, world_size=2, aligned=True, device=device, as_run=device,
                            back_to_back=device))
        records.append(dict(bytes_per_rank=2 * (chunk + 2), world_size=2, aligned=False,
                            device=device * (1.2 if i < 5 else 12.0), as_run=device, back_to_back=device))
    assert [round(v, 6) for _, v in fit_conventions(records)["unaligned"]] == [1.2] * 6


def test_expert_grid_refuses_a_repeated_point():
    points = [dict(experts=e, rows_per_expert=r, d_model=64, d_ffn=64, forward_s=1e-3, backward_s=2e-3)
              for e in (1, 2) for r in (8, 16)]
    points.append(dict(points[0], forward_s=5e-3))
    with pytest.raises(ValueError, match=r"compute.expert\[4\] repeats the grid point of compute.expert\[0\]"):
        ExpertTable.from_points(points)


def test_excess_band_from_the_calibration_spread_and_its_interval():
    """The band is the 10th / 90th percentile of the raw excess around its smoothed curve; the
    interval of a prediction is the prediction plus the band (device time: the point itself)."""
    rng = np.random.default_rng(11)
    offsets = rng.uniform(20e-6, 60e-6, size=12)
    records = [dict(bytes_per_rank=2 * 4096 * 2 ** i, world_size=2, aligned=True, device=1e-4,
                    as_run=1e-4 + offsets[i], back_to_back=1e-4) for i in range(12)]
    fitted = fit_conventions(records)
    residuals = [offsets[i] - fitted["as_run"][i][1] for i in range(12)]
    assert fitted["band"]["as_run"] == pytest.approx([np.quantile(residuals, 0.1), np.quantile(residuals, 0.9)])
    pm = PhaseModel(excess_as_run=tuple(map(tuple, fitted["as_run"])), excess_band={"as_run": (-1e-5, 2e-5)})
    traffic = np.full((2, 2), 4096.0)
    middle = pm.a2a_s(1e-4, traffic, "as_run")
    assert pm.a2a_interval_s(1e-4, traffic, "as_run") == pytest.approx((middle - 1e-5, middle + 2e-5))
    assert pm.a2a_interval_s(1e-4, traffic, "device") == (1e-4, 1e-4)
    block = pm.to_block()
    assert parse_phase_model(block).excess_band == {"as_run": (-1e-5, 2e-5)}
    block["a2a_excess_band_s"] = {"as_run": [2e-5, -1e-5]}
    with pytest.raises(ValueError, match=r"x.yaml: calibration.phase_model.a2a_excess_band_s.as_run=.*low must be <= high"):
        parse_phase_model(block, source="x.yaml")


def test_calibrate_refuses_a_bad_phase_record_naming_the_file_and_field(tmp_path, capsys):
    raw = json.loads((RUN_M / "cal-shm-raw.json").read_text())
    del raw["results"]["phases"]["a2a"][3]["device"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    out = tmp_path / "t.yaml"
    for args in (["--source", "microbenchmarks", str(bad)],
                 ["--source", "microbenchmarks", str(RUN_M / "cal-shm-raw.json"), "--phase-base", str(bad)]):
        with pytest.raises(SystemExit) as raised:
            main(["calibrate", *args, "--out", str(out), "--quiet"])
        assert raised.value.code == 2
        assert f"{bad}: results.phases.a2a[3].device is missing" in capsys.readouterr().err
        assert not out.exists()                                  # nothing half-written


# ---- fits without a degree of freedom (branch robust3) ----------------------------------------------
def _aligned(sizes, excess=40e-6):
    return [{"bytes_per_rank": m, "world_size": W, "aligned": True, "device": 1e-4, "as_run": 1e-4 + excess,
             "back_to_back": 1e-4 + excess / 2} for m in sizes]


def test_excess_curves_need_two_sizes_and_one_record_per_size():
    """Before: one aligned record gave a one-point excess curve with the band [0, 0] (a spread of 0 that
    could not be other), and one size twice a curve the topology then refused, naming the output and
    leaving the --raw JSON behind."""
    with pytest.raises(ValueError, match=r"the aligned all-to-alls cover one size \(65536 B per rank, a2a\[0\]\)"):
        fit_conventions(_aligned([65536]))
    with pytest.raises(ValueError, match=r"a2a\[1\] and a2a\[2\] are both aligned all-to-alls of 65536 B per rank"):
        fit_conventions(_aligned([4096, 65536, 65536]))
    out = fit_conventions(_aligned([4096, 65536]))                         # two sizes: a curve and its band
    assert [m for m, _ in out["as_run"]] == [4096.0, 65536.0]


@pytest.mark.parametrize("keep, message", [
    (lambda aligned: aligned[3:4], "the aligned all-to-alls cover one size"),
    (lambda aligned: [aligned[3], aligned[3], aligned[5]], "are both aligned all-to-alls of"),
])
def test_calibrate_refuses_degenerate_excess_records_and_writes_nothing(keep, message, tmp_path, capsys):
    raw = json.loads((RUN_M / "cal-shm-raw.json").read_text())
    records = raw["results"]["phases"]["a2a"]
    aligned = [r for r in records if r.get("aligned", True) and "name" not in r and not r.get("self")]
    raw["results"]["phases"]["a2a"] = keep(aligned)
    (tmp_path / "r.json").write_text(json.dumps(raw))
    with pytest.raises(SystemExit) as raised:
        main(["calibrate", "--from-raw", str(tmp_path / "r.json"), "--out", str(tmp_path / "o" / "t.yaml"),
              "--raw", str(tmp_path / "o" / "raw.json"), "--quiet"])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path / 'r.json'}: results.phases: " in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_calibrate_refuses_lsh_kernels_fitted_exactly_on_two_layers(tmp_path, capsys):
    """Two LSH layers among the calibration's: lsh_compress forward (4 terms, 2 independent on them) printed
    "2 layers, |error| median 0.0% worst 0.0%" (branch robust3). Now refused, nothing written."""
    raw = json.loads((RUN_M / "cal-nvlink-raw.json").read_text())
    layers = raw["results"]["phases"]["layers"]
    raw["results"]["phases"]["layers"] = [r for r in layers if not r["workload"].get("lsh")] + \
        [r for r in layers if r["workload"].get("lsh")][:2]
    (tmp_path / "r.json").write_text(json.dumps(raw))
    with pytest.raises(SystemExit) as raised:
        main(["calibrate", "--from-raw", str(tmp_path / "r.json"), "--out", str(tmp_path / "o" / "t.yaml"), "--quiet"])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and err.count("\n") == 1, err
    assert "r.json: results.phases: the layers' lsh_compress forward: 2 point(s) for 2 independent term(s)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_expert_floor_needs_two_layers():
    """The floor is one of the layers' measured expert times: on one layer it matched it (0% error)."""
    table = ExpertTable.from_points(_grid_points())
    layer = {"workload": {"d_model": 256, "d_ffn": 512}, "rows_per_expert": [[64, 64], [64, 64]],
             "phases_s": {"forward": {"expert": 1e-3}}}
    with pytest.raises(ValueError, match=r"the expert floor \(forward\) .* from one layer it matches that layer"):
        fit_expert_floor(table, [layer])
    other = copy.deepcopy(layer)
    other["phases_s"]["forward"]["expert"] = 2e-3
    floors, info = fit_expert_floor(table, [layer, other])
    assert info["forward"]["layers"] == 2 and info["forward"]["loo_median"] is not None
