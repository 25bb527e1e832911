"""Within-cluster calibration (`lshsim validate --published --within-cluster`, lshsim.sim.published_within): toy
clusters whose NIC efficiency is known by construction (a simulated time that is the network bytes at eff x line
rate, a known start-up), the leave-one-out that never reads the predicted case's own figure, the downward extension
of the simulated efficiencies, and the command line (the standard report unchanged, the output labelled)."""
import dataclasses
import json

import pytest

from lshsim.cli import main
from lshsim.sim.published import EFFICIENCY_GRID, Calibration, Case, CaseRun, validate_published
from lshsim.sim.published_within import (NOTE, cluster_key, extend_efficiencies, fit_cluster_efficiency,
                                         monotone_violations, within_cluster)

LINE = 50e9          # B/s of one GPU's NIC
ALPHA = 20e-6        # the family's normal start-up (s)


def _case(cid, figure, group="a", template="published/h800-ib-{nodes}x8", family="ib", nodes=2, op="dispatch"):
    return Case(cid, "normal", 8 * nodes, nodes, op, "bf16", figure, "rdma" if nodes > 1 else "nvlink", {}, "", f"{group}-x.yaml",
                None, template, family, group)


def _run(cid, network_MB, eff, effs=EFFICIENCY_GRID, figure=None, **where):
    """A run whose simulated time is its network bytes at eff x LINE (the NIC alone: an independent reference), and
    whose published figure is what the model gives at `eff` with the start-up ALPHA (unless `figure` is given)."""
    network = network_MB * 1e6
    counted = 1.5 * network
    sim = {e: network / (e * LINE) for e in effs}
    if figure is None:
        figure = counted / (network / (eff * LINE) + ALPHA) / 1e9
    return CaseRun(_case(cid, figure, **where), counted, network, sim, nic_gpu_Bps=LINE)


def _cal(eff=0.8, family="ib"):
    """The family's standard calibration: efficiency `eff`, the normal start-up ALPHA."""
    return Calibration({family: eff}, {family: {"normal": {"dispatch": ALPHA, "combine": ALPHA}}})


def test_cluster_efficiency_recovered_with_the_family_terms_fixed():
    runs = [_run(f"a{i}", mb, 0.6) for i, mb in enumerate((20, 40, 80))]
    assert fit_cluster_efficiency(runs, _cal(0.8), EFFICIENCY_GRID) == 0.6
    assert fit_cluster_efficiency(runs[:1], _cal(0.8), EFFICIENCY_GRID) == 0.6      # one measured case is enough
    # the prediction at the fitted efficiency is the published figure (the model made it)
    cal = dataclasses.replace(_cal(0.8), nic_efficiency={"ib": 0.6})
    for r in runs:
        assert cal.predict_GBps(r) == pytest.approx(r.case.published_GBps, rel=1e-12)
    # only the simulated efficiencies are candidates: 0.6 missing, the nearest in loss
    assert fit_cluster_efficiency(runs, _cal(0.8), (0.5, 0.7, 0.9)) in (0.5, 0.7)
    # a one-node case carries no NIC information: alone, the family's efficiency; beside others, no weight
    one = CaseRun(_case("one", 999.0, nodes=1), 1e6, 0.0, {e: 1e-5 for e in EFFICIENCY_GRID})
    assert fit_cluster_efficiency([one], _cal(0.8), EFFICIENCY_GRID) == 0.8
    assert fit_cluster_efficiency(runs + [one], _cal(0.8), EFFICIENCY_GRID) == 0.6
    # nor does a run with no NIC line rate (nic_gpu_Bps 0: one node) whatever bytes it states and however its
    # simulated time moves with the efficiency (the highest would fit its figure best)
    stated = CaseRun(_case("stated", 999.0, nodes=1), 1e6, 1e6, {e: 1e-3 / e for e in EFFICIENCY_GRID})
    assert fit_cluster_efficiency([stated], _cal(0.8), EFFICIENCY_GRID) == 0.8
    with pytest.raises(ValueError, match="one NIC family"):
        fit_cluster_efficiency([runs[0], _run("e", 20, 0.6, family="efa")], _cal(0.8), EFFICIENCY_GRID)


def test_cluster_efficiency_never_below_what_the_calibrating_cases_demonstrate():
    """A case showing 40 of 50 GB/s on its NIC forbids efficiencies below 0.8, even where a lower one fits the
    calibrating cases' figures better."""
    fast = _run("fast", 50, 0.0, figure=1.5 * 50e6 / (50e6 / 40e9) / 1e9)      # its NIC carried 40 GB/s
    slow = _run("slow", 50, 0.5)
    assert fit_cluster_efficiency([slow], _cal(0.9), EFFICIENCY_GRID) == 0.5
    assert fit_cluster_efficiency([fast, slow], _cal(0.9), EFFICIENCY_GRID) >= 0.8


def test_leave_one_out_never_reads_the_predicted_case():
    """Cluster a (3 cases made at eff 0.6 and one bad figure), cluster b (2 cases at 0.9, another topology),
    one single case; the family calibration at 0.8. Each case is predicted from its cluster-mates alone: its own
    figure changed, its prediction is the same."""
    a = [_run(f"a{i}", mb, 0.6) for i, mb in enumerate((20, 40, 80))]
    bad = _run("a-bad", 30, 0.6, figure=5.0)
    b = [_run(f"b{i}", mb, 0.9, group="b", template="published/h100-ib-{nodes}x8") for i, mb in enumerate((30, 60))]
    alone = _run("c0", 30, 0.7, group="c")
    runs = a + [bad] + b + [alone]
    assert cluster_key(a[0].case) == ("a", "ib", "published/h800-ib-{nodes}x8") != cluster_key(b[0].case)
    roles = {"a0": "fitting", "a1": "test", "a2": "fresh3", "a-bad": "fresh11", "b0": "fitting", "b1": "fresh"}
    out = within_cluster(runs, _cal(0.8), lambda cid: roles.get(cid, "fitting"), EFFICIENCY_GRID)
    rows = {r["id"]: r for r in out["rows"]}
    assert set(rows) == {"a0", "a1", "a2", "a-bad", "b0", "b1"} and out["single_case_clusters"] == ["c0"]
    # a's good cases: calibrated on the two others and the bad figure, which pulls lower, where the floor the
    # good figures demonstrate (0.58-0.60: their NICs carried that much) forbids going
    for cid in ("a0", "a1", "a2"):
        others = [r for r in a + [bad] if r.case.id != cid]
        assert rows[cid]["efficiency"] == fit_cluster_efficiency(others, _cal(0.8), EFFICIENCY_GRID) == 0.6
        assert abs(rows[cid]["rel_error"]) < 1e-9
        assert abs(rows[cid]["standard_rel_error"]) > 0.2          # the family's 0.8 is wrong for this cluster
        one = {x["calibrated_on"]: x for x in rows[cid]["one_point"]}
        assert set(one) == {r.case.id for r in others}
        for good in set(one) - {"a-bad"}:                          # one good measured case: 0.6 and no error
            assert one[good]["efficiency"] == 0.6 and abs(one[good]["rel_error"]) < 1e-9
        assert one["a-bad"]["efficiency"] < 0.6 and rows[cid]["one_point_median_abs_rel_error"] < 1e-9
        assert rows[cid]["one_point_max_abs_rel_error"] == pytest.approx(abs(one["a-bad"]["rel_error"]))
    # the bad case: fitted on a0-a2 (0.6), so predicted as the model gives it at 0.6, far from its figure
    expected = bad.counted / (bad.network_bytes / (0.6 * LINE) + ALPHA) / 1e9
    assert rows["a-bad"]["efficiency"] == 0.6 and rows["a-bad"]["predicted_GBps"] == pytest.approx(expected, rel=1e-12)
    assert rows["a-bad"]["rel_error"] == pytest.approx(expected / 5.0 - 1, rel=1e-12)
    for cid in ("b0", "b1"):
        assert rows[cid]["efficiency"] == 0.9 and abs(rows[cid]["rel_error"]) < 1e-9
        assert abs(rows[cid]["standard_rel_error"]) > 0.05
        assert [x["calibrated_on"] for x in rows[cid]["one_point"]] == [{"b0": "b1", "b1": "b0"}[cid]]
    # the sets: each case under its own; the standard error of the same cases beside it
    assert out["test"]["cases"] == 1 and out["fresh11"]["cases"] == 1 and out["fitting"]["cases"] == 2
    assert out["fresh"]["cases"] == 1 and out["fresh"]["median_abs_rel_error"] < 1e-9
    assert out["fresh"]["standard_median_abs_rel_error"] == pytest.approx(abs(rows["b1"]["standard_rel_error"]))
    assert out["fitting"]["one_point_median_abs_rel_error"] < 1e-9
    assert out["all"]["cases"] == 6 and "NOT a held-out" in out["note"] == NOTE
    clusters = {c["cluster"]: c for c in out["clusters"]}
    assert clusters["b/ib/published/h100-ib-{nodes}x8"]["efficiency_all_cases"] == 0.9
    assert clusters["a/ib/published/h800-ib-{nodes}x8"]["roles"] == {"fitting": 1, "test": 1, "fresh3": 1, "fresh11": 1}
    # the predicted case's own figure is never read: change it, and its predictions stay
    for changed in (0.1, 1e3):
        runs2 = [dataclasses.replace(r, case=dataclasses.replace(r.case, published_GBps=changed)) if r.case.id == "a1"
                 else r for r in runs]
        again = {r["id"]: r for r in within_cluster(runs2, _cal(0.8), lambda cid: "fitting", EFFICIENCY_GRID)["rows"]}
        assert again["a1"]["predicted_GBps"] == rows["a1"]["predicted_GBps"]
        assert [x["rel_error"] for x in again["a1"]["one_point"]] == pytest.approx(
            [(1 + x["rel_error"]) * rows["a1"]["published_GBps"] / changed - 1 for x in rows["a1"]["one_point"]])


def test_lower_efficiencies_simulated_until_no_lower_one_can_win():
    """The runs simulated at the family's range only (0.86-1.00); the cluster made at 0.6: the extension simulates
    the calibrating runs downwards and the fits come out as on the whole grid; a one-node case (predicted, never
    calibrating) is simulated at its fits' efficiency only; a cluster the family fits needs nothing more."""
    high = [e for e in EFFICIENCY_GRID if e >= 0.86]
    sizes = (20, 40, 80)
    calls = []

    def simulate(requests):
        calls.append(sorted({e for _, e in requests}))
        for run, e in requests:
            assert e not in run.sim_s                              # nothing simulated twice
            run.sim_s[e] = run.network_bytes / (e * LINE)
        return len(requests)

    runs = [_run(f"a{i}", mb, 0.6, effs=high) for i, mb in enumerate(sizes)]
    one = CaseRun(_case("one", 100.0, nodes=1), 1e6, 0.0, {e: 0.0 for e in high})
    done = extend_efficiencies([runs + [one]], _cal(0.9), EFFICIENCY_GRID, simulate, step=3)
    assert calls[0] == [0.8, 0.82, 0.84]                         # the three grid points below the simulated ones
    assert all(0.56 <= min(r.sim_s) <= 0.6 for r in runs)
    assert sorted(one.sim_s) == sorted(high + [0.6])              # predicted at 0.6 (every fit), nothing searched
    assert done == sum(len(r.sim_s) - len(high) for r in runs + [one])
    whole = [_run(f"a{i}", mb, 0.6) for i, mb in enumerate(sizes)]
    for subset in ([0], [1], [0, 2], [0, 1, 2]):
        assert (fit_cluster_efficiency([runs[i] for i in subset], _cal(0.9))
                == fit_cluster_efficiency([whole[i] for i in subset], _cal(0.9), EFFICIENCY_GRID) == 0.6)
    assert monotone_violations(runs) == []
    # published between the NIC time at 0.86 and the model's (start-up included): the floor (< 0.86) allows lower
    # efficiencies, but the model is already too slow at 0.86, so none can fit better
    fine, fine_whole = ([_run(f"f{i}", mb, 0.0, effs=effs, figure=1.5 * mb * 1e6 / (mb * 1e6 / (0.86 * LINE) + ALPHA / 2)
                              / 1e9) for i, mb in enumerate(sizes)] for effs in (high, EFFICIENCY_GRID))
    assert all(r.network_bytes / (r.counted / (r.case.published_GBps * 1e9)) / LINE < 0.86 for r in fine)
    calls.clear()
    assert extend_efficiencies([fine], _cal(0.9), EFFICIENCY_GRID, simulate) == 0 and calls == []
    for subset in ([0], [1], [2], [0, 1, 2]):
        assert (fit_cluster_efficiency([fine[i] for i in subset], _cal(0.9))
                == fit_cluster_efficiency([fine_whole[i] for i in subset], _cal(0.9), EFFICIENCY_GRID))
    bumpy = _run("bumpy", 20, 0.6, effs=(0.8, 0.9))
    bumpy.sim_s[0.9] = 2 * bumpy.sim_s[0.8]
    assert monotone_violations([bumpy]) == [["bumpy", 0.8, 0.9, bumpy.sim_s[0.8], bumpy.sim_s[0.9]]]


def _folder(tmp_path):
    """Two clusters of one family (ib): source a at 40 and 35 GB/s on h800, source b's two cases on h100; b1 held
    out (test)."""
    workload = {"tokens_per_rank": 64, "hidden": 2048, "top_k": 8, "experts": 64}
    for group, template, figures in (("a", "published/h800-ib-{nodes}x8", (40, 35)),
                                     ("b", "published/h100-ib-{nodes}x8", (20, 15))):
        doc = {"source": {"url": "https://example.org/table"}, "workload": workload, "topology": template,
               "cases": [{"id": f"{group}{i}", "kind": "normal", "ep": 16, "nodes": 2, "op": op,
                          "format": "bf16", "published_GBps": figure, "counts": "rdma"}
                         for i, (op, figure) in enumerate(zip(("dispatch", "combine"), figures))]}
        (tmp_path / f"{group}-cases.yaml").write_text(json.dumps(doc))
    (tmp_path / "split.yaml").write_text("test: [b1]\n")
    return tmp_path


def test_validate_published_within_cluster_command(tmp_path, capsys):
    folder = _folder(tmp_path)
    grid = "0.4:1.0:0.2"
    assert main(["validate", "--published", str(folder), "--efficiency-grid", grid, "--json", "--jobs", "1"]) == 0
    standard = json.loads(capsys.readouterr().out)
    assert "within_cluster" not in standard
    assert main(["validate", "--published", str(folder), "--efficiency-grid", grid, "--json", "--jobs", "1",
                 "--within-cluster"]) == 0
    out = json.loads(capsys.readouterr().out)
    within = out.pop("within_cluster")
    assert out == standard                                       # the standard report unchanged
    assert within["note"] == NOTE and {r["id"] for r in within["rows"]} == {"a0", "a1", "b0", "b1"}
    assert within["test"]["cases"] == 1 and within["fitting"]["cases"] == 3
    by_id = {r["id"]: r for r in standard["rows"]}
    for row in within["rows"]:                                   # the standard error of the same case beside it
        assert row["standard_rel_error"] == pytest.approx(by_id[row["id"]]["rel_error"], rel=1e-12)
        assert [x["calibrated_on"] for x in row["one_point"]] == [{"a0": "a1", "a1": "a0", "b0": "b1", "b1": "b0"}[row["id"]]]
    assert main(["validate", "--published", str(folder), "--efficiency-grid", grid, "--jobs", "1",
                 "--within-cluster", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "NOT a held-out (test or fresh) result" in text and "how accurate is lshsim after you measure" in text
    assert "Within-cluster calibration (NOT held-out)" in text and "a/ib/h800-ib-{nodes}x8" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--within-cluster", "t.json"])
    assert exit_info.value.code == 2 and "--within-cluster" in capsys.readouterr().err


def test_within_cluster_jobs_give_equal_results(tmp_path):
    folder = _folder(tmp_path)
    one = validate_published(folder, efficiency_grid=(0.4, 0.6, 0.8, 1.0), jobs=1, within_cluster=True)
    two = validate_published(folder, efficiency_grid=(0.4, 0.6, 0.8, 1.0), jobs=2, within_cluster=True)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_a_loss_flat_in_the_efficiency_keeps_the_family_s():
    """A multi-node case whose simulated time does not depend on the NIC efficiency (its loss is the same at every
    one, all allowed: it demonstrates 2% of its NIC) says nothing of the NIC: the tie goes to the family's efficiency,
    not to the lowest or the highest of the grid; where the family's is not simulated, to the nearest one."""
    flat = CaseRun(_case("flat", 1.0), 1.5e6, 1e6, {e: 1e-3 for e in EFFICIENCY_GRID}, nic_gpu_Bps=LINE)
    for family_eff in (0.8, 0.9, 0.5):
        assert fit_cluster_efficiency([flat], _cal(family_eff), EFFICIENCY_GRID) == family_eff
    assert fit_cluster_efficiency([flat], _cal(0.8), (0.4, 0.7, 0.86, 1.0)) == 0.86
