"""`lshsim plan`: JSON output, tables, refusals with the known names, placement refusal, plot, sweep."""
import json

import pytest

from lshsim.cli import main
from lshsim.sim.trace import Trace

TINY_YAML = """\
num_layers: 2
d_model: 256
d_ffn: 4096
num_experts: 16
seq_len: 256
tokens_per_gpu: 512
vocab_size: 1000
"""
V100 = "lshmoe-v100-2x8"  # 16 GPUs: 2 nodes x 8


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return str(path)


def _run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json(capsys, tiny):
    out = _run_json(capsys, ["plan", "--model", tiny, "--cluster", V100, "--json"])
    labels = [row["label"] for row in out["options"]]
    assert labels == ["baseline", "lsh 0.2", "locmoe", "2d", "groupwise", "overlap"]
    assert out["selected"] == "baseline"
    base = out["options"][0]
    assert base["speedup"] == pytest.approx(1.0)
    b = base["breakdown"]
    assert 0 < b["a2a_share"] < 1
    assert b["step_s"] == pytest.approx(sum(b["phases_s"].values()))
    for row in out["options"]:
        assert row["speedup"] == pytest.approx(b["step_s"] / row["breakdown"]["step_s"])
    by_label = {row["label"]: row["breakdown"] for row in out["options"]}
    assert by_label["lsh 0.2"]["dispatch_bytes_per_layer"] < 0.25 * b["dispatch_bytes_per_layer"]
    # the V100 paper cluster runs the era's fairseq layer (software.moe_layer): capacity-padded buffers,
    # the same bytes whatever the routing, so LocMoE's locality cannot shrink them
    assert b["moe_layer"] == "gshard-einsum-loop"
    assert by_label["locmoe"]["inter_node_bytes_per_layer"] == b["inter_node_bytes_per_layer"]
    assert by_label["overlap"]["step_s"] <= b["step_s"]
    assert out["cluster"]["gpus"] == 16 and out["model"]["name"] == "tiny"


def test_plan_user_option_is_marked(capsys, tiny):
    out = _run_json(capsys, ["plan", "--model", tiny, "--cluster", V100, "--router", "hash", "--lsh-rate", "0.3",
                             "--algorithm", "groupwise", "--json"])
    assert out["selected"] == "yours: hash + lsh 0.3, groupwise"
    labels = [row["label"] for row in out["options"]]
    assert labels[:3] == ["baseline", "yours: hash + lsh 0.3, groupwise", "lsh 0.3"]


def test_plan_tables(capsys, tiny):
    assert main(["plan", "--model", tiny, "--cluster", V100, "--tokens-per-gpu", "256"]) == 0
    text = capsys.readouterr().out
    for expected in ("Predicted step", "dispatch_a2a", "all-to-all:", "speedup", "locmoe", "groupwise"):
        assert expected in text
    assert "traffic: routed synthetic tokens (--traffic-model)" in " ".join(text.split())


def test_plan_phase_share_says_what_it_is_a_share_of(capsys, tiny):
    """With overlap the phases' summed time exceeds the step: the phase table's 'share' column is of that sum,
    and the text says so (without overlap the sum is the step and nothing is added)."""
    assert main(["plan", "--model", tiny, "--cluster", V100, "--tokens-per-gpu", "2048", "--overlap"]) == 0  # 2-4 chunks
    text = " ".join(capsys.readouterr().out.split())
    assert "share: of the phases' summed time (" in text and "the lines below give shares of the step" in text
    assert main(["plan", "--model", tiny, "--cluster", V100, "--tokens-per-gpu", "256"]) == 0
    assert "summed time" not in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, known", [
    ("--model", "gpt-3", "gpt-moe-15b"),
    ("--cluster", "my-laptop", "lshmoe-a100-4x8"),
    ("--algorithm", "ring", "groupwise"),
    ("--router", "random", "locmoe"),
])
def test_unknown_names_refused_with_known_list(capsys, flag, value, known):
    with pytest.raises(SystemExit) as info:
        main(["plan", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert value in err and known in err


def test_placement_refusal_has_the_numbers(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--model", "roberta-moe", "--cluster", "lshmoe-a100-4x8"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "num_experts=16" in err and "32 GPUs" in err


@pytest.mark.slow  # importing matplotlib + seaborn and drawing: about 5 s on a loaded 2-core machine
def test_plot_trace_and_chrome_trace(tmp_path, capsys, tiny):
    png, trace_path, chrome = tmp_path / "plan.png", tmp_path / "trace.json", tmp_path / "chrome.json"
    assert main(["plan", "--model", tiny, "--cluster", V100, "--tokens-per-gpu", "256", "--plot", str(png),
                 "--trace", str(trace_path), "--chrome-trace", str(chrome), "--json"]) == 0
    capsys.readouterr()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    trace = Trace.from_json(trace_path)
    assert trace.meta["source"] == "simulated" and trace.meta["cluster"]["name"] == V100
    events = json.loads(chrome.read_text())["traceEvents"]
    assert any(event["name"] == "dispatch_a2a" and event["ph"] == "X" for event in events)


def test_sweep_json_with_refusals(capsys, tiny):
    out = _run_json(capsys, ["plan", "--sweep", "--models", f"{tiny},roberta-moe", "--clusters",
                             f"{V100},lshmoe-a100-4x8", "--tokens-per-gpu", "256", "--json"])
    results = {(item["model"], item["cluster"]): item for item in out["sweep"]}
    assert len(results) == 4
    assert "options" in results[(tiny, V100)] and "options" in results[("roberta-moe", V100)]
    refused = results[("roberta-moe", "lshmoe-a100-4x8")]["refused"]
    assert "16" in refused and "32" in refused
    roberta = results[("roberta-moe", V100)]["options"]
    assert roberta[0]["breakdown"]["tokens_per_gpu"] == 256


def test_sweep_flags_need_sweep(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--models", "gpt-moe-15b"])
    assert info.value.code == 2
    assert "--sweep" in capsys.readouterr().err


def test_moe_layer_flag_overrides_the_clusters_software(capsys):
    # the LSH-MoE A100 cluster's software runs fairseq's padded layer; --moe-layer grouped plans today's
    common = ["plan", "--max-routed-tokens", "4096", "--json"]
    assert main(common) == 0
    software = json.loads(capsys.readouterr().out)
    assert main(common + ["--moe-layer", "grouped"]) == 0
    grouped = json.loads(capsys.readouterr().out)
    layer = lambda out, label: next(o for o in out["options"] if o["label"] == label)["breakdown"]["moe_layer"]
    assert layer(software, "baseline") == "gshard-einsum-loop" and layer(grouped, "baseline") == "grouped"
    locmoe = lambda out: next(o for o in out["options"] if o["label"] == "locmoe")["breakdown"]
    baseline = lambda out: out["options"][0]["breakdown"]
    # padded buffers: LocMoE's locality moves no bytes off the network; routed rows: it does, by its
    # default share (1.25 / 4 nodes = 0.3125 of the copies on their node against about 0.25: 0.6875 / 0.75
    # of the inter-node bytes), or by nearly all of them with the all-or-nothing bonus (--locality-share none)
    assert locmoe(software)["inter_node_bytes_per_layer"] == baseline(software)["inter_node_bytes_per_layer"]
    ratio = locmoe(grouped)["inter_node_bytes_per_layer"] / baseline(grouped)["inter_node_bytes_per_layer"]
    assert 0.88 < ratio < 0.95 and locmoe(grouped)["locality_share"] == 0.3125
    assert main(common + ["--moe-layer", "grouped", "--locality-share", "none"]) == 0
    bonus = json.loads(capsys.readouterr().out)
    assert locmoe(bonus)["inter_node_bytes_per_layer"] < 0.5 * baseline(bonus)["inter_node_bytes_per_layer"]
    assert main(common + ["--moe-layer", "grouped", "--locality-share", "0.5"]) == 0
    half = json.loads(capsys.readouterr().out)
    assert locmoe(half)["locality_share"] == 0.5
    assert locmoe(bonus)["inter_node_bytes_per_layer"] < locmoe(half)["inter_node_bytes_per_layer"] \
        < locmoe(grouped)["inter_node_bytes_per_layer"]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half", "nan"])
def test_locality_share_refuses_a_bad_value(capsys, value):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--locality-share", value])
    assert info.value.code == 2
    assert "--locality-share" in capsys.readouterr().err


def test_plan_figure_stacks_the_step(capsys, tiny):
    """`plan --plot`'s bars: the solid segments of an option without overlap add up to its step (the gradient
    all-reduce drawn with only its exposed part solid), the hatched one is the all-reduce hidden behind the
    backward, and the step tick sits at the step."""
    from lshsim.cli.plan import plan_figure

    out = _run_json(capsys, ["plan", "--model", tiny, "--cluster", V100, "--tokens-per-gpu", "256", "--json"])
    rows = out["options"]
    fig = plan_figure(rows, "t")
    ax = fig.axes[0]
    solid, hidden = [0.0] * len(rows), [0.0] * len(rows)
    for patch in ax.patches:
        gid = patch.get_gid() or ""
        target = hidden if gid.startswith("hidden/") else solid
        target[round(patch.get_x() + patch.get_width() / 2)] += patch.get_height()
    steps = next(c for c in ax.collections if c.get_gid() == "step").get_offsets()[:, 1]
    checked = 0
    for i, row in enumerate(rows):
        b = row["breakdown"]
        assert steps[i] == pytest.approx(b["step_s"] * 1e3)
        grad = b["phases_s"].get("grad_allreduce", 0.0)
        assert hidden[i] == pytest.approx(max(grad - b["exposed_grad_sync_s"], 0.0) * 1e3, abs=1e-9)
        if b["exposed_a2a_s"] >= b["a2a_s"] - 1e-12:          # no all-to-all hidden behind compute
            assert solid[i] == pytest.approx(b["step_s"] * 1e3, rel=1e-9)
            checked += 1
        else:
            assert solid[i] > b["step_s"] * 1e3
    assert checked >= 1
    # an all-reduce half hidden behind the backward (the overlapped mode's case): half solid, half hatched
    rows[0]["breakdown"]["exposed_grad_sync_s"] = rows[0]["breakdown"]["phases_s"]["grad_allreduce"] / 2
    ax = plan_figure(rows[:1], "t").axes[0]
    parts = {patch.get_gid(): patch.get_height() for patch in ax.patches}
    half = rows[0]["breakdown"]["phases_s"]["grad_allreduce"] * 1e3 / 2
    assert half > 0 and parts["phase/grad_allreduce"] == pytest.approx(half)
    assert parts["hidden/grad_allreduce"] == pytest.approx(half)


def test_router_option_collapses_the_gate_and_bad_options_are_refused(capsys, tiny):
    """--router-option NAME=VALUE reaches the router: topk_collapsed over 4 of the 16 experts sends every kept
    choice to the ranks of experts 0-3 (fewer bytes kept, more dropped than top-k at the same capacity)."""
    out = _run_json(capsys, ["plan", "--model", tiny, "--cluster", V100, "--moe-layer", "grouped", "--router",
                             "topk_collapsed", "--router-option", "active_experts=4", "--json"])
    rows = {row["label"]: row for row in out["options"]}
    mine = rows[out["selected"]]
    assert mine["config"]["router_options"] == [["active_experts", 4]]
    assert mine["breakdown"]["dropped_fraction"] > 0.5 > rows["baseline"]["breakdown"]["dropped_fraction"]
    for argv, fragment in ((["--router-option", "active_experts"], "must be NAME=VALUE"),
                           (["--router-option", "active_experts=9"], "not an option of the topk router"),
                           (["--router", "topk_collapsed", "--router-option", "active_experts=-1"],
                            "--router-option active_experts=-1: option active_experts=-1"),
                           (["--router", "node_limited", "--router-option", "max_nodes=0"],
                            "--router-option max_nodes=0: option max_nodes=0 of the node_limited router must be >= 1"),
                           (["--router", "nosuch", "--router-option", "max_nodes=2"], "error: unknown router 'nosuch'")):
        with pytest.raises(SystemExit) as info:
            main(["plan", "--model", tiny, "--cluster", V100] + argv)
        assert info.value.code == 2
        assert fragment in capsys.readouterr().err


def test_grouped_notes_name_the_options_once_per_text():
    from lshsim.cli.plan import _grouped_notes

    labels = ["baseline", "lsh 0.2", "overlap"]
    notes = [(label, "routed 256 of 512 tokens per GPU") for label in labels]
    notes += [("lsh 0.2", "drops 30% of the expert choices"), ("overlap", "drops 30% of the expert choices"),
              (None, "the cluster's software runs the MoE layer as 'x'")]
    assert _grouped_notes(notes, labels) == [
        "every option: routed 256 of 512 tokens per GPU",
        "lsh 0.2; overlap: drops 30% of the expert choices",
        "the cluster's software runs the MoE layer as 'x'"]


def test_plan_text_prints_a_shared_note_once_and_names_its_files(tmp_path, capsys, tiny):
    # 16 GPUs x 512 tokens routed from a sample of 4,096: every option scales its counts by 2
    trace_path = tmp_path / "out" / "trace.json"
    assert main(["plan", "--model", tiny, "--cluster", V100, "--max-routed-tokens", "4096",
                 "--trace", str(trace_path)]) == 0
    text = capsys.readouterr().out
    assert text.count("scaled the counts by 2") == 1
    assert "note: every option: routed 256 of 512 tokens per GPU" in " ".join(text.split())
    assert f"wrote {trace_path}" in text and trace_path.exists()


def test_plan_says_expert_per_gpu_in_the_singular(capsys, tiny):
    # 16 experts over EP groups of 16 on 32 GPUs: one expert per GPU
    assert main(["plan", "--model", tiny, "--cluster", "lshmoe-a100-4x8", "--ep", "16",
                 "--tokens-per-gpu", "256"]) == 0
    text = " ".join(capsys.readouterr().out.split())          # the header line wraps at the console's width
    assert "EP 16 x DP 2 (1 expert per GPU)" in text


def test_plan_sizes_change_unit_past_five_digits():
    """The step summary's byte counts stay in MB up to 99,999.9 MB, then GB, then TB (a 2^24-token plan printed
    '479539675.3 MB per dispatch')."""
    from lshsim.cli.plan import _megabytes

    assert [_megabytes(v) for v in (487.6e6, 99_999.9e6, 1e11, 479_539_675.3e6)] == \
        ["487.6 MB", "99999.9 MB", "100.0 GB", "479.5 TB"]
