"""`lshsim catalog`: the shipped models and clusters a user can name, with their sizes."""
import json

import pytest

from lshsim.cli import main
from lshsim.models import list_models
from lshsim.topology.spec import list_topologies


def _json(capsys, *argv):
    assert main(["catalog", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_model_and_top_level_cluster_listed(capsys):
    out = _json(capsys)
    assert [m["name"] for m in out["models"]] == list_models()
    assert [c["name"] for c in out["clusters"]] == [t for t in list_topologies() if "/" not in t]


def test_sizes_against_the_published_figures(capsys):
    models = {m["name"]: m for m in _json(capsys, "--models")["models"]}
    v3 = models["deepseek-v3"]      # DeepSeek-V3 technical report: 671B in all, 37B activated per token
    assert abs(v3["parameters"] / 671e9 - 1) < 0.01 and abs(v3["active_parameters"] / 37e9 - 1) < 0.03
    assert (v3["experts"], v3["shared_experts"], v3["top_k"], v3["router"], v3["dropless"]) == \
        (256, 1, 8, "node_limited", True)
    mixtral = models["mixtral-8x7b"]  # Mistral's announcement: 46.7B in all, 12.9B per token
    assert abs(mixtral["parameters"] / 46.7e9 - 1) < 0.01 and abs(mixtral["active_parameters"] / 12.9e9 - 1) < 0.01
    assert models["swin-moe-l"]["active_parameters"] is None        # staged: not counted


def test_clusters_sizes_and_sub_folders(capsys):
    clusters = {c["name"]: c for c in _json(capsys, "--clusters")["clusters"]}
    rail = clusters["h100-ib-rail-8x8"]
    assert (rail["gpus"], rail["gpu"], rail["intra"]) == (64, "h100", "nvswitch")
    assert rail["inter"] == {"kind": "rail", "nics_per_node": 8, "nic_gbps": 400, "oversubscription": 1.0}
    assert clusters["h100-nvswitch"]["inter"] is None
    assert clusters["lshmoe-a100-4x8"]["gpu"] == "a100 (edited)"
    every = [c["name"] for c in _json(capsys, "--clusters", "--all")["clusters"]]
    assert every == list_topologies() and any(name.startswith("published/") for name in every)


def test_tables_and_refusals(capsys):
    assert main(["catalog"]) == 0
    text = capsys.readouterr().out
    assert "deepseek-v3" in text and "256 + 1 shared" in text and "671B" in text and "1.03T" in text
    assert "h200-ib-fattree-16x8-os2" in text and "oversubscribed 2:1" in text and "--all adds" in text
    with pytest.raises(SystemExit) as stop:
        main(["catalog", "--models", "--clusters"])
    assert stop.value.code == 2


def test_one_entry_shows_its_sizes_and_file(capsys):
    assert main(["catalog", "deepseek-v3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("model deepseek-v3: 61 layers (58 MoE), 256 + 1 shared experts, top-8")
    assert "config.json n_routed_experts 256" in text             # the file's own source comments
    assert main(["catalog", "published/p5en-h200-efa-2x8"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("cluster published/p5en-h200-efa-2x8: 16 GPUs (2 x 8), h200") and "UCCL-EP" in text
    (item,) = _json(capsys, "h100-ib-rail-8x8")
    assert item["kind"] == "cluster" and item["sizes"]["gpus"] == 64 and item["text"].startswith("name: h100-ib-rail")


def test_an_unknown_entry_and_a_name_with_list_options_are_refused(capsys):
    for argv, words in ((["catalog", "nope"], "catalog 'nope': no model or cluster of that name; models: dbrx"),
                        (["catalog", "deepseek-v3", "--models"], "with a NAME, catalog shows that entry")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and words in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_quietly(monkeypatch):
    """`lshsim catalog NAME | head -1`: standard output's reader closes it; exit 1, no BrokenPipeError traceback."""
    import io
    import sys

    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["catalog", "deepseek-v3"]) == 1
