"""Physical plausibility limits of the values in input files (`lshsim.bounds`, branch bounds).

A well-typed but absurd value (a latency of 5e6 s meant as 5e-6, a link of 25e18 B/s, a model with
10^12 heads, a workload skew of 1e30) was accepted by every reader before this branch and simulated
into absurd numbers. Each case here ran with exit 0 (or failed later, in a grid's rows, without the
file) before; now the command ends with exit code 2 and one line naming the file, the field, the
value and the limit, and leaves nothing behind. The last tests load every committed input file: all
of them are within the limits.
"""
from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from lshsim import bounds
from lshsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
DGX1 = (ROOT / "data" / "topologies" / "dgx1-v100.yaml").read_text()
RAIL = (ROOT / "data" / "topologies" / "h100-ib-rail-8x8.yaml").read_text()
CALIBRATED = (ROOT / "data" / "topologies" / "calibrated" / "h200-x2.yaml").read_text()
WORKLOAD = (ROOT / "data" / "workloads" / "cal-uniform-d2048-t128.yaml").read_text()
DEEPSEEK = (ROOT / "models" / "configs" / "deepseek-v3.yaml").read_text()
HF = (ROOT / "tests" / "data" / "hf" / "mixtral-8x7b.json").read_text()
FIGURES = (ROOT / "data" / "papers" / "figures.yaml").read_text()
PUBLISHED = (ROOT / "data" / "published" / "nccl-aws-p5-alltoall.yaml").read_text()
DEEPEP = (ROOT / "data" / "published" / "deepep-v1-normal.yaml").read_text()
RAW = json.loads((ROOT / "data" / "measured" / "h200" / "run-a" / "calibration-x2.json").read_text())
GRID = (ROOT / "data" / "sweeps" / "nic-vs-size.yaml").read_text()

SIMULATE = ["simulate", "--topology", "{FILE}", "--traffic", "uniform:1MB", "--fidelity", "estimate", "--json"]
PLAN_MODEL = ["plan", "--model", "{FILE}", "--cluster", "h100-ib-rail-8x8", "--tokens-per-gpu", "64",
              "--fidelity", "estimate", "--json", "--plot", "{OUT}.png"]
RUN = ["run", "--workload", "{FILE}", "--device", "cpu", "--out", "{OUT}.json"]
FROM_RAW = ["calibrate", "--from-raw", "{FILE}", "--out", "{OUT}.yaml", "--raw", "{OUT}.json"]
REPRODUCE = ["reproduce", "--figures", "{FILE}", "--json", "--plot", "{OUT}.png"]
SWEEP = ["sweep", "{FILE}", "--out", "{OUT}.csv", "--jobs", "0", "--quiet"]


def _sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _raw(edit) -> str:
    raw = json.loads(json.dumps(RAW))
    edit(raw)
    return json.dumps(raw)


def _traffic(value) -> str:
    matrix = [[1e6] * 8 for _ in range(8)]
    matrix[2][5] = value
    return json.dumps({"traffic_bytes": matrix})


#: (id, file name, text, argv, words the one line must hold besides the file's name)
CASES = [
    # topology YAML (simulate --topology, plan --cluster, validate --topology)
    ("alpha_s 5e6", "c.yaml", _sub(DGX1, "alpha_s: 1.0e-5", "alpha_s: 5.0e+6"), SIMULATE,
     ["alpha_s = 5e+06 is above 1 s", "per-message or per-hop latency", "did you mean 5e-06?"]),
    ("intra latency 1e30", "c.yaml", _sub(DGX1, "latency_s: 1.0e-6", "latency_s: 1.0e+30"), SIMULATE,
     ["intra.latency_s = 1e+30 is above 1 s"]),
    ("intra latency 5 (us as s)", "c.yaml", _sub(DGX1, "latency_s: 1.0e-6", "latency_s: 5"), SIMULATE,
     ["intra.latency_s = 5 is above 1 s", "in seconds: 5 us is 5e-06 s"]),
    ("link 25e18", "c.yaml", _sub(DGX1, "per_link_Bps: 25.0e+9", "per_link_Bps: 25.0e+18"), SIMULATE,
     ["intra.per_link_Bps = 2.5e+19 is above 1e+14 B/s", "bandwidth"]),
    # below the lower limit of a rate: the exponent's sign flipped (25e-9 for 25e9)
    ("link 25e-9", "c.yaml", _sub(DGX1, "per_link_Bps: 25.0e+9", "per_link_Bps: 25.0e-9"), SIMULATE,
     ["intra.per_link_Bps = 2.5e-08 is below 1000 B/s", "the lower limit for", "bandwidth"]),
    ("nic 400e-9 Gb/s", "c.yaml", _sub(RAIL, "nic_gbps: 400", "nic_gbps: 400.0e-9"), SIMULATE,
     ["inter.nic_gbps = 4e-07 is below 0.001 Gb/s"]),
    ("nic 400e9 Gb/s", "c.yaml", _sub(RAIL, "nic_gbps: 400", "nic_gbps: 400.0e+9"), SIMULATE,
     ["inter.nic_gbps = 4e+11 is above 800000 Gb/s", "did you mean 400?"]),
    ("nvlink links 1e12", "c.yaml", _sub(RAIL, "links: 18", "links: 1000000000000"), SIMULATE,
     ["intra.links = 1000000000000 is above 1024", "links of one GPU"]),
    ("inline gpu flops 1e30", "c.yaml", _sub(DGX1, "gpu: v100", "gpu: {base: v100, peak_flops: 1.0e+30}"), SIMULATE,
     ["gpu.peak_flops = 1e+30 is above 1e+18 FLOP/s"]),
    # calibration block of a topology (executor calibrate writes it; every command reads it)
    ("calibration nvlink 1e30", "c.yaml", _sub(CALIBRATED, "nvlink_Bps: 281793446588.34454", "nvlink_Bps: 1.0e+30"),
     SIMULATE, ["calibration.nvlink_Bps = 1e+30 is above 1e+14 B/s"]),
    ("calibration curve 1e30", "c.yaml", _sub(CALIBRATED, "- - 999424.0", "- - 1.0e+60"),
     SIMULATE, ["calibration.a2a_busbw_curve[0][0] = 1e+60 is above 1125899906842624 B"]),
    # traffic JSON (simulate --traffic FILE)
    ("traffic 1e30", "t.json", _traffic(1e30), ["simulate", "--topology", "dgx1-v100", "--traffic", "{FILE}", "--json"],
     ["traffic_bytes[2][5] = 1e+30 is above", "B, the limit for"]),
    # model YAML and Hugging Face config.json (plan --model)
    ("model heads 1e12", "m.yaml", _sub(DEEPSEEK, "num_heads: 128", "num_heads: 1000000000000"), PLAN_MODEL,
     ["attention.num_heads = 1000000000000 is above 65536", "attention heads"]),
    ("model dense_d_ffn 1e12", "m.yaml", _sub(DEEPSEEK, "dense_d_ffn: 18432", "dense_d_ffn: 1000000000000"), PLAN_MODEL,
     ["dense_d_ffn = 1000000000000 is above 1048576"]),
    ("hf heads 1e12", "config.json", _sub(HF, '"num_attention_heads": 32', '"num_attention_heads": 1000000000000'),
     PLAN_MODEL, ["num_attention_heads = 1000000000000 is above 65536"]),      # the config's own field name
    ("hf experts 1e12", "config.json", _sub(HF, '"num_local_experts": 8', '"num_local_experts": 1000000000000'),
     PLAN_MODEL, ["num_local_experts = 1000000000000 is above 65536", "experts of one MoE layer"]),
    # workload YAML (run --workload)
    ("workload skew 1e30", "w.yaml", _sub(WORKLOAD, "skew: 0.0", "skew: 1.0e+30"), RUN,
     ["'skew'", "1e+30 is above 100", "popularity skew"]),
    ("workload noise 1e30", "w.yaml", _sub(WORKLOAD, "skew: 0.0", "skew: 0.0\ninput_noise: 1.0e+30"), RUN,
     ["'input_noise'", "1e+30 is above 100"]),
    # raw microbenchmark JSON (calibrate --from-raw): rates were fitted as given
    ("raw p2p Bps 1e30", "raw.json", _raw(lambda raw: raw["results"]["p2p"][0].update(Bps=1e30)), FROM_RAW,
     ["results.p2p[0].Bps = 1e+30 is above 1e+14 B/s"]),
    ("raw hbm 1e30", "raw.json", _raw(lambda raw: raw["results"]["hbm"].update(Bps=1e30)), FROM_RAW,
     ["results.hbm.Bps = 1e+30"]),
    # figures YAML (reproduce --figures)
    ("figure tokens 1e12", "f.yaml", _sub(FIGURES, "setting: {router: topk, capacity_factor: 1.0}",
                                          "setting: {router: topk, capacity_factor: 1.0, tokens_per_gpu: 1000000000000}"),
     REPRODUCE, ["figures[0]", "tokens_per_gpu = 1000000000000 is above 16777216"]),
    ("figure cluster nodes 1e12", "f.yaml", _sub(FIGURES, "cluster_edits: {nodes: 2}", "cluster_edits: {nodes: 1000000000000}"),
     REPRODUCE, ["figures[0]", "cluster_edits.nodes = 1000000000000 is above 65536"]),
    ("figure capacity 1e30", "f.yaml", _sub(FIGURES, "setting: {router: topk, capacity_factor: 1.0}",
                                            "setting: {router: topk, capacity_factor: 1.0e+30}"),
     REPRODUCE, ["figures[0]", "capacity_factor = 1e+30 is above 1000000"]),
    # sweep grid YAML (sweep GRID): each point failed in its own row before, the file not named
    ("grid nodes 1e12", "g.yaml", _sub(GRID, "nodes: [1, 2, 4]", "nodes: [1, 2, 1000000000000]"), SWEEP,
     ["grid.nodes[2] = 1000000000000 is above 65536", "servers"]),
    ("grid nic 1e30", "g.yaml", _sub(GRID, "nic_gbps: [12.5,", "nic_gbps: [1.0e+30,"), SWEEP,
     ["grid.nic_gbps[0] = 1e+30 is above 800000 Gb/s"]),
]


@pytest.mark.parametrize("name, text, argv, words", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_an_implausible_value_is_one_line_and_exit_2(name, text, argv, words, tmp_path, monkeypatch, refused):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    out, _ = refused(argv, name, ["limit for", *words])
    assert out == ""


#: published-case files, read from a folder with its split.yaml: (id, file text, split, words)
PUBLISHED_CASES = [
    ("size_bytes 2^60", _sub(PUBLISHED, "size_bytes: 67108864, published_GBps: 45.1",
                             f"size_bytes: {2 ** 60}, published_GBps: 45.1"), "test: [nccl-p5-ep32-peak]\n",
     ["cases[0].size_bytes = 1152921504606846976 is above"]),
    ("hidden 1e12", _sub(DEEPEP, "hidden: 7168", "hidden: 1000000000000"), "test: []\n",
     ["workload.hidden = 1000000000000 is above 1048576"]),
]


@pytest.mark.parametrize("text, split, words", [pytest.param(*case[1:], id=case[0]) for case in PUBLISHED_CASES])
def test_an_implausible_published_case_is_refused(text, split, words, tmp_path, capsys):
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "p.yaml").write_text(text)
    (folder / "split.yaml").write_text(split)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--published", str(folder), "--json", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "p.yaml" in err and "the limit for" in err, err
    for word in words:
        assert word in err, (word, err)


def test_a_phase_model_time_of_an_hour_or_more_is_refused():
    """The calibration's phase model (executor calibrate --phases): an exchange of 1e30 s."""
    from lshsim.calibration.phase_model import parse_phase_model

    with pytest.raises(ValueError, match=r"^c\.yaml: calibration\.phase_model\.compute\.exchange_s = 1e\+30 is "
                                         r"above 3600 s, the limit for one collective"):
        parse_phase_model({"compute": {"exchange_s": 1e30}}, source="c.yaml")
    assert parse_phase_model({"compute": {"exchange_s": 3e-5}}, source="c.yaml").exchange_s == 3e-5


def test_every_limit_has_its_reason_and_every_field_kind_a_limit():
    for kind, limit in bounds.LIMITS.items():
        assert limit.maximum > 0 and limit.what and limit.why, kind
    assert set(bounds.FIELD_KINDS.values()) | {kind for _, kind in bounds.FIELD_SUFFIXES} <= set(bounds.LIMITS)
    # a value at the limit passes, just above it does not; not-a-number values are the type checks'
    assert bounds.check("latency_s", "alpha_s", 1.0) == 1.0
    with pytest.raises(ValueError, match="alpha_s = 1.5 is above 1 s"):
        bounds.check("latency_s", "alpha_s", 1.5)
    assert bounds.describe("dim", "abc") is None and bounds.describe("dim", True) is None


def test_every_committed_input_file_is_within_the_limits():
    """Topologies, models (catalog and Hugging Face configs), workloads, published cases and their
    split, the paper figures, the sweep grids and the raw calibration records all load."""
    from lshsim.calibration.sources import check_microbenchmarks
    from lshsim.executor.workload import load_workload
    from lshsim.models import list_models, load_model
    from lshsim.reproduce import load_figures
    from lshsim.sim.published import FRESH_SETS, load_cases, load_fresh, load_split
    from lshsim.sweep import load_grid
    from lshsim.topology import list_topologies, load_topology

    topologies = list_topologies()
    for name in topologies:
        load_topology(name)
    models = list_models() + sorted(glob.glob(str(ROOT / "tests" / "data" / "hf" / "*.json")))
    for name in models:
        load_model(name)
    workloads = sorted(glob.glob(str(ROOT / "data" / "workloads" / "**" / "*.yaml"), recursive=True))
    for path in workloads:
        load_workload(path)
    cases = load_cases(ROOT / "data" / "published")
    load_split(ROOT / "data" / "published", cases)
    for key in FRESH_SETS:
        load_fresh(ROOT / "data" / "published", cases, key)
    assert len(load_figures(ROOT / "data" / "papers" / "figures.yaml").figures) >= 17
    grids = sorted(glob.glob(str(ROOT / "data" / "sweeps" / "*.yaml")))
    for path in grids:
        load_grid(path, resolve_model=load_model)
    raws = 0
    for path in sorted(glob.glob(str(ROOT / "data" / "measured" / "**" / "*.json"), recursive=True)):
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict) and isinstance(data.get("results"), dict) and "world_size" in data["results"]:
            check_microbenchmarks(data)
            raws += 1
    assert len(topologies) >= 75 and len(models) >= 19 and len(workloads) >= 97 and len(cases) >= 212
    assert grids and raws >= 35


@pytest.mark.parametrize("argv, words", [
    (["simulate", "--topology", "h200-nvswitch", "--traffic", "uniform:1MB", "--alpha-s", "5e6"],
     ["--alpha-s: '5e6' is above 1 s", "did you mean 5e-06?"]),
    (["simulate", "--topology", "h200-nvswitch", "--traffic", "uniform:1MB", "--message-gap-s", "1e30"],
     ["--message-gap-s: '1e30' is above 1 s"]),
    (["a2a-cost", "--alpha-us", "1e12"], ["--alpha-us: '1e12' (1e+06 s) is above 1 s"]),
    (["a2a-cost", "--inter-GBps", "25e-9"], ["--inter-GBps: '25e-9' (25 B/s) is below 1000 B/s"]),
    (["a2a-cost", "--intra-GBps", "1e30"], ["--intra-GBps: '1e30' (1e+39 B/s) is above 1e+14 B/s"]),
    (["breakeven", "--bandwidth-GBps", "1e30"], ["--bandwidth-GBps: '1e30' (1e+39 B/s) is above 1e+14 B/s"]),
    (["breakeven", "--tflops", "1e30"], ["--tflops: '1e30' (1e+42 FLOP/s) is above 1e+18 FLOP/s"]),
])
def test_an_implausible_option_value_is_refused_as_in_a_file(argv, words, capsys):
    """The options that set what a topology file would (a latency, a bandwidth, a compute rate) are held to the
    same limits (`checks.arg_within`); a unit hint only where the option's unit is the kind's."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "limit for" in err, err
    for word in words:
        assert word in err, (word, err)
    if "--alpha-us" in argv:
        assert "did you mean" not in err                 # 1e-06 would be seconds, the option is microseconds
