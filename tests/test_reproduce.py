"""`lshsim reproduce` and `lshsim.reproduce`: the figures file, its validation, the arithmetic of the
comparison and of the LSH-MoE consistency check, and the command on a tiny figures file.

No test here asserts that a prediction matches a paper: the figures are a held-out test set, and
the planner's agreement with them is a measurement (README, benchmarks/RESULTS.md), not a test.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import replace

import pytest
import yaml

from lshsim import reproduce as R
from lshsim.cli import main
from lshsim.models import list_models
from lshsim.readers import load_yaml
from lshsim.topology.spec import list_topologies
from test_cli_plan import TINY_YAML  # the plan tests' tiny model


@pytest.fixture(scope="module")
def shipped():
    return load_yaml(R.figures_path())


# ---- the shipped figures ------------------------------------------------------------------------
def test_the_shipped_figures_load_and_name_catalogued_models_and_clusters(shipped):
    figure_set = R.load_figures()
    R.check_references(figure_set, list_models(), list_topologies())
    assert set(figure_set.papers) == {"lsh-moe", "locmoe"}
    ids = [f.id for f in figure_set.figures]
    assert len(ids) == len(set(ids)) == len(shipped["figures"])
    for figure in figure_set.figures:
        assert figure.model in list_models() and figure.cluster in list_topologies(), figure.id
        assert figure.source["arxiv"] == figure_set.papers[figure.paper].arxiv
        assert figure.id.startswith(figure.paper + "/")
    by_paper = {paper: len(R.select(figure_set, paper)) for paper in ("lsh-moe", "locmoe")}
    assert sum(by_paper.values()) == len(ids) and min(by_paper.values()) > 0


def test_the_shipped_figures_hold_the_published_numbers():
    """The file against the papers' text (copied by hand; a typo here would be a wrong test set)."""
    figures = {f.id: f for f in R.load_figures().figures}
    expected = {
        "lsh-moe/fig3a/gpt-moe-15b/a2a-share": 0.30, "lsh-moe/fig3a/roberta-moe/a2a-share": 0.40,
        "lsh-moe/fig3a/swin-moe-l/a2a-share": 0.70, "lsh-moe/table3/swin-moe-l/speedup": 1.28,
        "lsh-moe/fig6/roberta-moe/speedup": 1.6, "lsh-moe/fig6/t5-moe/speedup": 2.2,
        "locmoe/128npu/hash/a2a-share": 0.1810, "locmoe/256npu/hash/a2a-share": 0.2874,
        "locmoe/64npu/vs-hash/step-reduction": 0.1268, "locmoe/64npu/vs-switch/step-reduction": 0.2224,
        "locmoe/64npu/vs-hash/a2a-reduction": 0.0513, "locmoe/256npu/vs-hash/speedup": 1.0,
    }
    for figure_id, value in expected.items():
        assert figures[figure_id].value == value, figure_id
    assert figures["lsh-moe/table2/gpt-moe-15b/speedup"].range == (1.3, 1.4)
    assert figures["lsh-moe/table2/gpt-moe-52b/speedup"].range == (1.2, 1.5)
    assert figures["lsh-moe/table3/swin-moe-l/speedup"].setting["lsh_rate"] == 0.117
    locmoe = [f for f in figures.values() if f.paper == "locmoe"]
    # LocMoE App. D's layout on every step (expert parallel 16, model parallel 8 in MindSpore's layout), no
    # stand-in; at 64 NPUs expert parallel 8 (MindSpore: it must divide the data-parallel degree 64 / 8)
    assert all(f.model == "locmoe-pangu" and f.stand_in is None for f in locmoe)
    for f in locmoe:
        ep = 8 if f.cluster == "locmoe-8x8" else 16
        for step in (f.setting, f.baseline or {}):
            assert step == {} or (step["ep"], step["tp"], step["tp_layout"], step["top_k"]) == \
                (ep, 8, "replicated", 1), f.id


# ---- validation: a bad field is refused, naming it ---------------------------------------------------
def _mutate(document: dict, index: int, **changes) -> dict:
    out = copy.deepcopy(document)
    for key, value in changes.items():
        if value is _DELETE:
            del out["figures"][index][key]
        else:
            out["figures"][index][key] = value
    return out


_DELETE = object()


@pytest.mark.parametrize("changes, message", [
    ({"quantity": "latency"}, "figures[0] (lsh-moe/fig3a/gpt-moe-15b/a2a-share): quantity='latency' must be one of"),
    ({"value": -0.3}, "value=-0.3 must be a finite number > 0"),
    ({"value": 30}, "value=30 must be a fraction below 1 for a2a_share"),
    ({"value": "30%"}, "value='30%' must be a finite number"),
    ({"source": _DELETE}, "the field 'source' is missing"),
    ({"paper": "moe-lsh"}, "paper='moe-lsh' is not a key of papers"),
    ({"setting": {"router": "topk", "lsh_ratio": 0.2}}, "setting.lsh_ratio is not a setting"),
    ({"setting": {"router": "topk", "lsh_rate": 2}}, "setting: lsh_rate=2 must be in (0, 1]"),
    ({"setting": {"router": "nearest"}}, "setting: unknown router 'nearest'"),
    ({"setting": {"top_k": 0}}, "setting.top_k=0 must be a positive integer"),
    ({"baseline": {"router": "topk"}}, "baseline is given, but quantity a2a_share compares nothing"),
    ({"range": [0.4, 0.5]}, "range=[0.4, 0.5] must hold value=0.3"),
    ({"approximate": "yes"}, "approximate='yes' must be true or false"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"source": {"paper": "lsh-moe", "where": "Fig. 3", "arxiv": "2401.13920"}}, "source.arxiv='2401.13920' differs"),
])
def test_a_bad_field_is_refused_naming_it(shipped, changes, message):
    with pytest.raises(ValueError) as error:
        R.figures_from_dict(_mutate(shipped, 0, **changes), source="figures.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("figures.yaml: ")


def test_a_speedup_needs_a_baseline_and_per_task_values_must_average_to_the_value(shipped):
    index = next(i for i, f in enumerate(shipped["figures"]) if f["id"] == "lsh-moe/table2/gpt-moe-15b/speedup")
    with pytest.raises(ValueError, match="quantity speedup needs a baseline"):
        R.figures_from_dict(_mutate(shipped, index, baseline=_DELETE))
    with pytest.raises(ValueError, match=r"value=1.4 must be the mean of per_task \(1.33"):
        R.figures_from_dict(_mutate(shipped, index, value=1.4))


def test_a_repeated_id_and_an_unknown_model_are_refused(shipped):
    doubled = copy.deepcopy(shipped)
    doubled["figures"].append(copy.deepcopy(doubled["figures"][0]))
    with pytest.raises(ValueError, match="the figure id 'lsh-moe/fig3a/gpt-moe-15b/a2a-share' is given twice"):
        R.figures_from_dict(doubled)
    figure_set = R.figures_from_dict(_mutate(shipped, 1, model="roberta-xl"), source="f.yaml")
    with pytest.raises(ValueError, match="f.yaml: lsh-moe/fig3a/roberta-moe/a2a-share: model='roberta-xl' is not in "
                                         "the catalog"):
        R.check_references(figure_set, list_models(), list_topologies())
    figure_set = R.figures_from_dict(_mutate(shipped, 1, cluster="v100-2x8"), source="f.yaml")
    with pytest.raises(ValueError, match="cluster='v100-2x8' is not in the catalog"):
        R.check_references(figure_set, list_models(), list_topologies())


@pytest.mark.parametrize("edits, message", [
    ({"nodes": 0}, "nodes=0 must be >= 1"),
    ({"bogus.field": 1}, "cluster_edits 'bogus.field': the spec has no field 'bogus'"),
])
def test_a_cluster_edit_the_cluster_refuses_names_the_figures_file(shipped, edits, message, tmp_path, refused):
    """A figure's cluster_edits that its cluster refuses ended `reproduce` with the cluster's file alone
    ("lshmoe-a100-4x8.yaml: nodes=0 must be >= 1"): not the figures file, not the figure (branch robust)."""
    figure_set = R.figures_from_dict(_mutate(shipped, 1, cluster_edits=edits), source="f.yaml")
    figure_id = figure_set.figures[1].id
    with pytest.raises(ValueError, match=f"f.yaml: {re.escape(figure_id)}: cluster_edits .*: lshmoe-a100-4x8.yaml: "
                                         f"{re.escape(message)}"):
        R.check_references(figure_set, list_models(), list_topologies())
    raw = _mutate(shipped, 1, cluster_edits=edits)
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    refused(["reproduce", "--figures", "{FILE}", "--quiet", "--plot", "{OUT}.png"], "f.yaml", [figure_id, message])


def test_an_unknown_paper_selection_is_refused():
    with pytest.raises(ValueError, match="paper 'gshard' is unknown; known: lsh-moe, locmoe, all"):
        R.select(R.load_figures(), "gshard")


def test_cluster_edits_change_only_existing_fields():
    spec = {"nodes": 4, "inter": {"nic_gbps": 100}, "gpu": {"base": "a100", "gemm_efficiency": 0.8}}
    edited = R.apply_edits(spec, {"nodes": 2, "inter.nic_gbps": 50.0})
    assert edited == {"nodes": 2, "inter": {"nic_gbps": 50.0}, "gpu": {"base": "a100", "gemm_efficiency": 0.8}}
    assert spec["nodes"] == 4 and spec["inter"]["nic_gbps"] == 100           # the input is not touched
    with pytest.raises(ValueError, match="x.yaml: cluster_edits 'inter.nic_gbs': the spec has no field "
                                         "'inter.nic_gbs'"):
        R.apply_edits(spec, {"inter.nic_gbs": 50}, "x.yaml")
    with pytest.raises(ValueError, match="the spec has no field 'intra'"):
        R.apply_edits(spec, {"intra.link_Bps": 1e9})


# ---- arithmetic against hand-computed values --------------------------------------------------------------
def test_relative_error():
    assert R.relative_error(0.45, 0.30) == pytest.approx(0.5)
    assert R.relative_error(2.27, 1.333) == pytest.approx(0.937 / 1.333)
    assert R.relative_error(1.0, 1.0) == 0.0
    assert R.relative_error(0.7811944527494498, 0.0513) == pytest.approx(14.228, abs=1e-3)
    with pytest.raises(ValueError, match="published=0.0 must be a finite, non-zero number"):
        R.relative_error(0.1, 0.0)


def test_implied_a2a_share():
    # (1 - 1/S) / (1 - r), by hand: 1 - 1/1.28 = 0.21875, / 0.883 = 0.247735
    assert R.implied_a2a_share(1.28, 0.117) == pytest.approx(0.21875 / 0.883)
    assert R.implied_a2a_share(1.3, 0.2) == pytest.approx((3 / 13) / 0.8)          # 0.288462
    assert R.implied_a2a_share(1.4, 0.2) == pytest.approx((2 / 7) / 0.8)           # 0.357143
    assert R.implied_a2a_share(1.6, 0.2) == pytest.approx(0.375 / 0.8)             # 0.46875
    assert R.implied_a2a_share(1.0, 0.5) == 0.0
    with pytest.raises(ValueError, match="rate=1.0 must be in"):
        R.implied_a2a_share(1.3, 1.0)
    with pytest.raises(ValueError, match="speedup=0 must be"):
        R.implied_a2a_share(0, 0.2)


def test_the_quantities_from_two_steps():
    measured = {"step_s": 0.008, "a2a_s": 0.003, "a2a_share": 0.375}
    baseline = {"step_s": 0.010, "a2a_s": 0.004, "a2a_share": 0.4}
    assert R._quantity("a2a_share", measured, None) == 0.375
    assert R._quantity("speedup", measured, baseline) == pytest.approx(1.25)
    assert R._quantity("step_reduction", measured, baseline) == pytest.approx(0.2)
    assert R._quantity("a2a_reduction", measured, baseline) == pytest.approx(0.25)


def _result(figure, predicted, baseline_share=None):
    details = {"baseline": {"a2a_share": baseline_share}} if baseline_share is not None else {}
    return R.FigureResult(figure, "ok", predicted=predicted, error=R.relative_error(predicted, figure.value),
                          details=details)


def test_summary_and_consistency_on_hand_made_results():
    figures = {f.id: f for f in R.load_figures().figures}
    share3 = figures["lsh-moe/fig3a/swin-moe-l/a2a-share"]          # paper 0.70
    swin = figures["lsh-moe/table3/swin-moe-l/speedup"]             # paper 1.28 at r = 0.117
    t5 = figures["lsh-moe/fig6/t5-moe/speedup"]
    results = [_result(share3, 0.77),                               # +10%
               _result(swin, 1.6, baseline_share=0.30),              # +25%
               R.FigureResult(t5, "not plannable", reason="no")]
    summary = R.summarize(results)
    assert summary["predicted"] == 2 and summary["within"] == 1 and summary["not_plannable"] == [t5.id]
    assert summary["median_abs_error"] == pytest.approx((0.1 + 0.25) / 2)
    assert summary["worst"] == swin.id and summary["worst_abs_error"] == pytest.approx(0.25)
    rows = {row["id"]: row for row in R.consistency(results)}
    row = rows[swin.id]
    assert row["paper_implied_share"] == pytest.approx(0.247735, abs=1e-6)
    assert row["fig3_share"] == 0.70 and row["paper_consistent"] is False      # 25% against 70%
    assert row["predicted_implied_share"] == pytest.approx((1 - 1 / 1.6) / 0.883)
    assert row["follows"] == "neither (nearer: implied)"                        # 0.30 is +21% of 0.2477
    assert rows[t5.id]["status"] == "not plannable" and rows[t5.id]["follows"] is None
    results[1] = _result(swin, 1.6, baseline_share=0.66)
    assert R.consistency(results)[0]["follows"] == "fig3"                       # -6% of 0.70


# ---- the command, on a tiny figures file ---------------------------------------------------------------
TINY_MODEL = "name: tiny\n" + TINY_YAML     # the plan tests' tiny model, named


@pytest.fixture
def tiny_figures(tmp_path, shipped):
    model = tmp_path / "tiny.yaml"
    model.write_text(TINY_MODEL)
    source = {"paper": "lsh-moe", "where": "a test", "arxiv": "2411.08446"}
    figures = [
        {"id": "lsh-moe/t/tiny/a2a-share", "paper": "lsh-moe", "quantity": "a2a_share", "value": 0.3,
         "model": str(model), "cluster": "lshmoe-v100-2x8", "setting": {"router": "topk"}, "source": source},
        {"id": "lsh-moe/t/tiny/speedup", "paper": "lsh-moe", "quantity": "speedup", "value": 1.3, "range": [1.2, 1.4],
         "model": str(model), "cluster": "lshmoe-v100-2x8", "setting": {"router": "topk", "lsh_rate": 0.2},
         "baseline": {"router": "topk"}, "assumed": {"lsh_rate": "a test"}, "source": source},
        {"id": "lsh-moe/t/tiny-32/speedup", "paper": "lsh-moe", "quantity": "speedup", "value": 2.0,
         "model": str(model), "cluster": "lshmoe-a100-4x8", "setting": {"router": "topk", "lsh_rate": 0.2},
         "baseline": {"router": "topk"}, "source": source},
        {"id": "locmoe/t/tiny/step-reduction", "paper": "locmoe", "quantity": "step_reduction", "value": 0.2,
         "model": str(model), "cluster": "lshmoe-v100-2x8", "setting": {"router": "locmoe", "algorithm": "groupwise",
                                                                  "capacity_factor": 1.0, "locality_share": 0.5},
         "baseline": {"router": "hash"}, "source": {**source, "paper": "locmoe", "arxiv": "2401.13920"}},
    ]
    path = tmp_path / "figures.yaml"
    path.write_text(json.dumps({"papers": shipped["papers"], "figures": figures}))   # JSON is YAML
    return str(path)


def test_reproduce_text_names_its_plot_even_when_quiet(capsys, tiny_figures, tmp_path):
    """`reproduce --quiet --plot P` wrote P and said nothing of it (the `wrote` line was a progress line
    only); the text output names it on stdout, as every other command's --plot does."""
    plot = tmp_path / "reproduce.png"
    assert main(["reproduce", "--figures", tiny_figures, "--paper", "lsh-moe", "--quiet", "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and f"wrote {plot}" in captured.out.splitlines()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_json_on_one_paper(capsys, tiny_figures, tmp_path):
    plot = tmp_path / "out" / "reproduce.png"
    assert main(["reproduce", "--figures", tiny_figures, "--paper", "lsh-moe", "--json", "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "reproduce: figure 1/3" in captured.err                       # progress on stderr only
    rows = {row["id"]: row for row in out["figures"]}
    assert list(rows) == ["lsh-moe/t/tiny/a2a-share", "lsh-moe/t/tiny/speedup", "lsh-moe/t/tiny-32/speedup"]
    share, speedup, refused = rows.values()
    assert 0 < share["predicted"] < 1 and share["status"] == "ok"
    for row in (share, speedup):
        assert row["relative_error"] == pytest.approx((row["predicted"] - row["published"]) / row["published"])
    details = speedup["details"]
    assert speedup["predicted"] == pytest.approx(details["baseline"]["step_ms"] / details["setting"]["step_ms"])
    assert share["predicted"] == pytest.approx(details["baseline"]["a2a_share"])   # the same baseline step
    assert refused["status"] == "not plannable" and refused["predicted"] is None
    assert "16 % 32 = 16" in refused["reason"]
    assert out["summary"]["predicted"] == 2 and out["summary"]["not_plannable"] == [refused["id"]]
    assert [c["id"] for c in out["consistency"]] == [speedup["id"], refused["id"]]
    check = out["consistency"][0]
    assert check["paper_implied_share"] == pytest.approx((1 - 1 / 1.3) / 0.8)
    assert check["fig3_share"] == 0.3                                   # the tiny model's share figure
    assert out["fidelity"]["lshmoe-v100-2x8"]["mode"] == "exact"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_tables_and_sweep(capsys, tiny_figures):
    assert main(["reproduce", "--figures", tiny_figures, "--paper", "locmoe", "--sweep", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    text = " ".join(captured.out.split())
    assert "locmoe/t/tiny/step-reduction" in text and "of 1 predicted figures within 15%" in text
    assert "One unknown at a time" in text and "NIC x0.5" in text


def test_reproduce_sweep_json_moves(capsys, tiny_figures):
    assert main(["reproduce", "--figures", tiny_figures, "--paper", "locmoe", "--sweep", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {row["variant"]: row for row in out["sweep"]}
    assert list(rows) == [label for label, _, _ in R.SWEEP_VARIANTS]
    base = out["figures"][0]["predicted"]
    for row in rows.values():
        assert row["base"] == base
        assert row["move"] == pytest.approx(row["predicted"] / base - 1)
    from lshsim.topology.spec import read_spec

    cluster = R.load_figures(tiny_figures).figures[0].cluster
    efficiency = read_spec(cluster)[0]["software"]["gemm_efficiency"]      # the cluster's named software calibration
    assert rows["NIC x0.5"]["value"] == "50 Gb/s" and rows["eff x2 (<= 1)"]["value"] == f"{min(1.0, 2 * efficiency):g}"
    assert rows["tokens x2"]["value"] == "1024 tokens/GPU"
    # the sequence length (the attention span) at the same tokens per GPU: a longer span, more attention work
    assert rows["seq x2"]["value"] == "seq_len 512" and rows["seq x0.5"]["value"] == "seq_len 128"
    assert rows["seq x2"]["predicted"] != base and rows["seq x0.5"]["predicted"] != base
    # LocMoE's unstated capacity reduction: its capacity factor and, by the figures' rule, its locality share
    assert rows["LocMoE cf x0.8"]["value"] == "capacity factor 0.8, share 0.4"
    assert rows["LocMoE cf x0.8"]["predicted"] != base


def test_algorithm_check_reruns_the_baseline_on_the_steps_all_to_all(capsys, tiny_figures):
    """Only figures whose step and baseline run different all-to-alls get a row; its second reading is
    the figure with the baseline on the step's algorithm, predicted by `predict` itself."""
    from lshsim.models import load_model

    assert main(["reproduce", "--figures", tiny_figures, "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["algorithm_check"]
    assert [row["id"] for row in rows] == ["locmoe/t/tiny/step-reduction"]      # the LSH-MoE ones run direct on both
    row = rows[0]
    assert (row["algorithm"], row["baseline_algorithm"]) == ("groupwise", "direct")
    figure = R.load_figures(tiny_figures).by_id(row["id"])
    planner = R.Planner(load_model)
    shipped = R.predict(figure, planner)
    same = R.predict(replace(figure, baseline={**figure.baseline, "algorithm": "groupwise"}), planner)
    assert row["predicted"] == shipped.predicted and row["predicted_same"] == same.predicted
    assert row["error_same"] == pytest.approx(same.predicted / figure.value - 1)
    assert main(["reproduce", "--figures", tiny_figures, "--paper", "locmoe", "--quiet"]) == 0
    assert "baseline on it too" in capsys.readouterr().out


def test_capacity_variant_only_on_locmoe_settings(tiny_figures):
    """The sweep's capacity variant scales LocMoE's capacity factor and locality share (capped at 1),
    leaves the baseline alone, and refuses settings of other routers or without a capacity factor."""
    figure = R.load_figures(tiny_figures).by_id("locmoe/t/tiny/step-reduction")
    varied, text = R._capacity_variant(figure, 0.5)
    assert varied.setting["capacity_factor"] == 0.5 and varied.setting["locality_share"] == 0.25
    assert varied.baseline == figure.baseline and text == "capacity factor 0.5, share 0.25"
    capped, _ = R._capacity_variant(figure, 3.0)
    assert capped.setting["locality_share"] == 1.0
    other = R.load_figures(tiny_figures).figures[0]
    assert R._capacity_variant(other, 0.8) == (None, "not LocMoE's capacity")


def test_sweep_seq_scales_the_attention_span_only(tiny_figures):
    """seq x2 doubles the model's seq_len and nothing else of the step; a windowed model is not swept."""
    from lshsim.models import load_model

    planner = R.Planner(load_model)
    figure = R.load_figures(tiny_figures).figures[0]
    plain, longer = planner.model(figure.model), planner.model(figure.model, None, 2.0)
    assert longer.seq_len == 2 * plain.seq_len and longer.tokens_per_gpu == plain.tokens_per_gpu
    one = planner.step(figure.model, figure.cluster, {}, figure.setting)
    two = planner.step(figure.model, figure.cluster, {}, figure.setting, 2.0)
    assert two["phases_s"]["attention"] > one["phases_s"]["attention"]
    assert two["a2a_s"] == pytest.approx(one["a2a_s"], rel=1e-12)      # the same all-to-alls and experts
    assert two["phases_s"]["expert"] == pytest.approx(one["phases_s"]["expert"], rel=1e-12)
    windowed = dataclasses.replace(plain, name="tiny-windowed", attention_window=128)
    swin = R.Planner(lambda name: windowed)
    rows = R.sweep([figure], swin, {figure.id: R.predict(figure, swin)}, variants=(("seq x2", "seq", 2.0),))
    assert rows[0]["value"] == "windowed attention" and rows[0]["predicted"] is None


def test_reproduce_refuses_a_bad_figures_file(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("papers: {}\nfigures: []\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--figures", str(path)])
    assert exit_info.value.code == 2
    assert "lshsim reproduce: error: bad.yaml: figures=[] must be a non-empty list" in capsys.readouterr().err


# ---- --fit: one set of assumptions per cluster, fitted on its figures --------------------------------
def test_best_point_counts_then_median_then_nearest_the_documented_pair():
    table = {(0.1, 1.0): {"a": 0.10, "b": -0.12, "c": 0.5},    # two within 15%
             (0.5, 0.5): {"a": 0.30, "b": 0.01, "c": 0.02},    # two within, smaller median
             (0.4, 0.4): {"a": 0.30, "b": 0.01, "c": 0.02},    # the same errors, farther from (0.5, 0.3)
             (1.0, 0.2): {"a": 0.01, "b": None, "c": 0.0}}     # not plannable for b: skipped
    assert R.best_point(table, ["a", "b", "c"], documented=(0.5, 0.3)) == (0.5, 0.5)
    assert R.best_point(table, ["a", "b", "c"], documented=(0.4, 0.4)) == (0.4, 0.4)
    assert R.best_point(table, ["a", "b", "c"], "minimax") == (0.5, 0.5)
    assert R.best_point(table, ["a", "c"]) == (1.0, 0.2)
    assert R.best_point(table, ["b"], documented=(1.0, 1.0)) == (0.5, 0.5)
    assert R.best_point({(0.5,): {"a": None}}, ["a"]) is None


def test_fit_on_a_cluster_group_is_the_brute_force_optimum_and_leave_one_out_refits(tiny_figures):
    from lshsim.models import load_model

    figure_set = R.load_figures(tiny_figures)
    figures = [f for f in figure_set.figures if f.cluster == "lshmoe-v100-2x8" and f.paper == "lsh-moe"]
    planner = R.Planner(load_model)
    base = {f.id: R.predict(f, planner) for f in figures}
    grid = (0.2, 1.0, 0.5)
    groups = R.fit(figures, planner, base, grid=grid)
    assert len(groups) == 1
    group = groups[0]
    assert group["group"] == "pytorch-1.11-nccl-2.12-v100" and group["clusters"] == ["lshmoe-v100-2x8"]
    assert group["grid"] == [0.2, 0.5, 1.0]
    assert group["documented"] == {"software.gemm_efficiency": 0.384, "software.a2a_efficiency": 0.807}
    # brute force, independently of best_point: every pair, its errors from a fresh planner
    fresh = R.Planner(load_model)
    errors = {}
    for gemm in (0.2, 0.5, 1.0):
        for a2a in (0.2, 0.5, 1.0):
            edits = {"software.gemm_efficiency": gemm, "software.a2a_efficiency": a2a}
            errors[(gemm, a2a)] = [R.predict(f, fresh, edits=edits).error for f in figures]
    fitted = (group["fitted"]["software.gemm_efficiency"], group["fitted"]["software.a2a_efficiency"])
    rows = {r["id"]: r for r in group["rows"]}
    for f, e in zip(figures, errors[fitted]):
        assert rows[f.id]["fitted_error"] == pytest.approx(e)
        assert rows[f.id]["documented_error"] == pytest.approx(base[f.id].error)
    within = lambda point: sum(abs(e) <= R.WITHIN for e in errors[point])        # noqa: E731
    assert within(fitted) == max(within(p) for p in errors) == group["within"]
    for point in errors:                                 # no pair as good in count has a smaller median (to 0.01)
        if within(point) == within(fitted):
            median = sorted(abs(e) for e in errors[point])[len(figures) // 2]
            assert round(median, 2) >= round(group["median_abs_error"], 2)
    for i, f in enumerate(figures):                      # leave-one-out: the best pair for the other figure
        loo = rows[f.id]["loo_point"]
        point = (loo["software.gemm_efficiency"], loo["software.a2a_efficiency"])
        other = errors[point][1 - i]
        assert abs(other) == pytest.approx(min(abs(errors[p][1 - i]) for p in errors), abs=0.005)
        assert rows[f.id]["loo_error"] == pytest.approx(errors[point][i])
    summary = R.fit_summary(groups)
    assert summary["fitted"]["figures"] == 2 and summary["fitted"]["within"] == group["within"]
    assert summary["documented"]["worst_abs_error"] == pytest.approx(max(abs(base[f.id].error) for f in figures))


def test_fit_refuses_a_bad_grid(tiny_figures):
    with pytest.raises(ValueError, match=r"every efficiency must be in \(0, 1\]"):
        R.fit([], None, {}, grid=(0.5, 1.5))


def test_reproduce_fit_table(capsys, tiny_figures, monkeypatch):
    monkeypatch.setattr(R, "FIT_GRID", (0.3, 1.0))
    assert main(["reproduce", "--figures", tiny_figures, "--paper", "lsh-moe", "--fit", "--quiet"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "One set of assumptions for pytorch-1.11-nccl-2.12-v100" in text and "leave-one-out" in text
    assert "documented GEMM 0.384, all-to-all 0.807" in text and "fitted (in-sample):" in text
