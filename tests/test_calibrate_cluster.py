"""`lshsim calibrate --nccl-tests LOG --cluster TOPOLOGY` (lshsim.calibration.internode): a log of several nodes
fitted onto a multi-node topology, its NIC rate and the start-up of an all-to-all across nodes; checked against logs
written by the planner's own model at known values (recovered), and every refusal naming the file, field and value
with nothing written."""
from __future__ import annotations

import pytest
import yaml

from lshsim.cli import main
from lshsim.sim.collectives import estimate_collective, uniform_traffic
from lshsim.topology import build_topology, load_topology
from lshsim.topology.spec import read_spec


def _truth(spec: dict, hosts: int, eff: float, start_up: float, source):
    """The topology `spec` cut to `hosts` nodes, its NICs at eff x 400 Gb/s, alpha_s 0, the start-up across nodes
    `start_up` (L) beside its own cost per remote peer and that cost's ramp: the planner's model at known values."""
    cal = {k: v for k, v in spec["calibration"].items() if k in ("a2a_remote_peer_s", "a2a_remote_peer_ramp_bytes")}
    return build_topology({**spec, "nodes": hosts, "alpha_s": 0.0, "calibration": {
        **cal, "alpha_s": 0.0, "nic_Bps": eff * 50e9, "a2a_internode_alpha_s": start_up}}, source=source)


def _log(eff: float, start_up: float, *, hosts: int = 2, per_host: int = 8, noise=None, spec=None) -> str:
    """An alltoall_perf log of 1 KiB - 1 GiB on `hosts` x `per_host` ranks whose times are the model's:
    h100-ib-rail-8x8 (or `spec`) cut to `hosts` nodes, its NICs at eff x 400 Gb/s, the start-up across nodes
    L = `start_up` beside the topology's own ramped cost per remote peer (`_truth`)."""
    spec, source = (spec, "spec") if spec is not None else read_spec("h100-ib-rail-8x8")
    G = _truth(spec, hosts, eff, start_up, source)
    world = hosts * per_host
    lines = [f"# nThread 1 nGpus {per_host} minBytes 1024 maxBytes 1073741824 step: 4(factor) warmup iters: 5 "
             f"iters: 20 agg iters: 1 validation: 1 graph: 0", "#", "# Using devices"]
    lines += [f"#  Rank {r:2d} Group  0 Pid  {1000 + r // per_host} on  gpu{r // per_host:03d} device {r % per_host:2d} "
              f"[0x18] NVIDIA H100 80GB HBM3" for r in range(world)]
    lines += ["#", "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   "
              "algbw   busbw #wrong"]
    size, i = 1024, 0
    while size <= 1 << 30:
        t = estimate_collective(G, uniform_traffic(world, float(size)), "direct").time_s * 1e6
        t *= 1.0 + (noise[i] if noise is not None else 0.0)
        alg = size / t / 1e3
        lines.append(f"{size:12d} {size // 4 // world:12d}     float    none      -1 {t:9.2f} {alg:7.2f} "
                     f"{alg * (world - 1) / world:7.2f}      0 {t:9.2f} {alg:7.2f} {alg * (world - 1) / world:7.2f}      0")
        size, i = size * 4, i + 1
    return "\n".join(lines) + "\n"


def _few(log: str, sizes=("1024", "1048576", "1073741824")) -> str:
    """`log` with its rows of `sizes` alone (1 KiB, 1 MiB, 1 GiB: a fit of three rows is fast)."""
    return "\n".join(row for row in log.splitlines() if row.startswith("#") or row.split()[0] in sizes) + "\n"


def test_the_fit_recovers_the_nic_rate_and_the_start_up_across_nodes(tmp_path, capsys):
    for hosts, eff, start_up in ((2, 0.80, 35e-6), (4, 0.62, 58e-6)):
        log = tmp_path / f"log{hosts}.txt"
        log.write_text(_log(eff, start_up, hosts=hosts))
        out = tmp_path / f"cluster{hosts}.yaml"
        assert main(["calibrate", "--nccl-tests", str(log), "--cluster", "h100-ib-rail-8x8", "--out", str(out),
                     "--quiet"]) == 0
        printed = capsys.readouterr().out
        assert f"NIC efficiency {eff:.2f}" in printed and f"start-up across nodes {start_up * 1e6:.1f} us" in printed
        written = yaml.safe_load(out.read_text())
        assert written["nodes"] == 8 and written["calibration"]["nic_Bps"] == pytest.approx(eff * 50e9)
        # the topology's cost per remote peer (6.8 us) and its ramp (88 MB) are kept; L is fitted beside them
        g, ramp = written["calibration"]["a2a_remote_peer_s"], written["calibration"]["a2a_remote_peer_ramp_bytes"]
        assert (g, ramp) == (6.8e-6, 8.8e7)
        assert written["calibration"]["a2a_internode_alpha_s"] == pytest.approx(start_up, rel=1e-3)
        fit = written["calibration"]["provenance"]["nccl_tests_internode"]
        assert fit["hosts"] == [f"gpu{h:03d}" for h in range(hosts)] and fit["ranks"] == 8 * hosts
        assert fit["replaced"] == {"a2a_internode_alpha_s": 3.1e-05}
        # the catalog's reason for its 31 us moves with the value it explained; its other assumptions stay
        assumed = written["calibration"]["provenance"]["assumed"]
        assert "a2a_internode_alpha_s" not in assumed and "alpha_s" in assumed
        assert fit["replaced_assumed"]["a2a_internode_alpha_s"].startswith("31 us + 6.8 us per remote peer")
        # the written topology, cut to the log's nodes, gives the log's times back (the planner's own model)
        spec, source = read_spec(str(out))
        G = build_topology({**spec, "nodes": hosts}, source=source)
        for size in (1024.0, 1 << 20, 1 << 30):
            truth = estimate_collective(_truth(spec, hosts, eff, start_up, source), uniform_traffic(8 * hosts, size),
                                        "direct")
            assert estimate_collective(G, uniform_traffic(8 * hosts, size), "direct").time_s == \
                pytest.approx(truth.time_s, rel=1e-3)
        assert load_topology(str(out)).graph["a2a_remote_peer_s"] == g


def test_a_noisy_log_is_fitted_within_its_noise():
    """+-5% alternating noise on every row: the efficiency within 0.03 and the start-up within 10%."""
    from lshsim.calibration.internode import fit_internode
    from lshsim.calibration.sources import parse_nccl_tests

    noise = [0.05 * (-1) ** i for i in range(11)]
    run = parse_nccl_tests(_log(0.7, 40e-6, noise=noise), source="noisy.txt")
    spec, source = read_spec("h100-ib-rail-8x8")
    fit = fit_internode(run, dict(spec), cluster=str(source), log="noisy.txt")
    assert abs(fit.efficiency - 0.7) <= 0.03 and fit.internode_alpha_s == pytest.approx(40e-6, rel=0.1)
    assert fit.info()["max_abs_rel_error"] < 0.08


@pytest.mark.parametrize("argv, message", [
    (["--cluster", "h100-ib-rail-8x8"], r"--cluster h100-ib-rail-8x8 goes with --nccl-tests LOG"),
    (["--nccl-tests", "LOG", "--cluster", "h100-ib-rail-8x8", "--raw", "r.json"],
     r"--raw r.json does not go with it"),
    (["--nccl-tests", "ONE", "--cluster", "h100-ib-rail-8x8"], r"--cluster fits a log of several nodes; its '# Rank' "
                                                                 r"lines name 1 host \(node01\)"),
    (["--nccl-tests", "LOG", "--cluster", "h100-nvswitch"], r"h100-nvswitch.yaml: inter is not given: --cluster needs "
                                                             r"a topology of several nodes"),
    (["--nccl-tests", "LOG", "--cluster", "h100-rail-4x8"], r"h100-rail-4x8.yaml: nodes=4, but the log's ranks run on "
                                                             r"8 hosts"),
    (["--nccl-tests", "SMALL", "--cluster", "h100-ib-rail-8x8"], r"h100-ib-rail-8x8.yaml: gpus_per_node=8, but the log "
                                                                  r"runs 2 ranks on each of its 2 hosts"),
    # robust5: each of these was fitted and written, exit 0
    (["--nccl-tests", "ONESIZE", "--cluster", "h100-ib-rail-8x8"], r"one.txt: --cluster fits two values .* the log has "
                                                                    r"one size \(65536 B per rank\)"),
    (["--nccl-tests", "B200", "--cluster", "h100-ib-rail-8x8"], r"h100-ib-rail-8x8.yaml: gpu='h100', but the log's "
                                                                 r"'# Rank' lines name the device 'NVIDIA B200' \(b200"),
    (["--nccl-tests", "SLOW", "--cluster", "h100-ib-rail-8x8"], r"slow.txt: the fit's NIC efficiency sits at the edge "
                                                                 r"of its grid \(0.20 of h100-ib-rail-8x8.yaml's "
                                                                 r"inter.nic_gbps=400\) .* the log is slower than"),
    (["--nccl-tests", "FAST", "--cluster", "h100-ib-rail-8x8"], r"fast.txt: the fit's NIC efficiency sits at the edge "
                                                                 r"of its grid \(1.00 of h100-ib-rail-8x8.yaml's "
                                                                 r"inter.nic_gbps=400\) .* the log is faster than"),
])
def test_bad_cluster_calibrations_are_refused_and_write_nothing(tmp_path, capsys, argv, message):
    from pathlib import Path

    data = Path(__file__).resolve().parent / "data" / "nccl_tests_alltoall_perf.txt"
    files = {"LOG": tmp_path / "eight.txt", "ONE": data, "SMALL": tmp_path / "small.txt",
             "ONESIZE": tmp_path / "one.txt", "B200": tmp_path / "b200.txt", "SLOW": tmp_path / "slow.txt",
             "FAST": tmp_path / "fast.txt"}
    files["LOG"].write_text(_log(0.8, 30e-6, hosts=8))
    two = _log(0.8, 30e-6)
    files["ONESIZE"].write_text("\n".join(row for row in two.splitlines()
                                          if row.startswith("#") or row.split()[0] == "65536") + "\n")
    files["B200"].write_text(two.replace("NVIDIA H100 80GB HBM3", "NVIDIA B200"))
    files["SLOW"].write_text(_log(0.02, 30e-6))      # NICs at 2% of 400 Gb/s: below the grid's 0.20
    files["FAST"].write_text(_few(_log(1.0, 10e-6, noise=[-0.75] * 11)))   # a quarter of the line rate's times
    files["SMALL"].write_text(data.read_text().replace("on     node01 device  2", "on     node02 device  0")
                              .replace("on     node01 device  3", "on     node02 device  1"))
    out = tmp_path / "t.yaml"
    argv = [str(files.get(a, a)) if a in files else a for a in argv]
    with pytest.raises(SystemExit) as info:
        main(["calibrate", *argv, "--out", str(out), "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2
    import re
    assert re.search(message, err), err
    assert not out.exists()


def test_a_bad_field_of_the_cluster_is_named_before_the_fit(tmp_path, capsys):
    """robust5: a topology whose ramp was text ('lots') failed in the fit as "could not convert string to float:
    'lots'" (no file, no field): the spec is now checked whole first; nothing is written."""
    log = tmp_path / "log.txt"
    log.write_text(_log(0.8, 35e-6))
    text = read_spec("h100-ib-rail-8x8")[0]
    text = dict(text, calibration={**text["calibration"], "a2a_remote_peer_ramp_bytes": "lots"})
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump(text))
    out = tmp_path / "o.yaml"
    with pytest.raises(SystemExit) as info:
        main(["calibrate", "--nccl-tests", str(log), "--cluster", str(cluster), "--out", str(out), "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2
    assert "c.yaml: calibration.a2a_remote_peer_ramp_bytes='lots' must be a finite number" in err, err
    assert not out.exists()


def test_the_output_onto_the_cluster_file_is_refused(tmp_path, capsys, monkeypatch):
    """robust5: `--out` naming the --cluster file replaced the user's topology with the fitted one (exit 0); a
    shipped name is its file under data/topologies."""
    log = tmp_path / "log.txt"
    log.write_text(_log(0.8, 35e-6))
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump(read_spec("h100-ib-rail-8x8")[0]))
    before = cluster.read_text()
    import lshsim.topology.spec as spec_module

    shipped_dir = tmp_path / "shipped"             # the shipped folder, copied: a failure must not write the real one
    shipped_dir.mkdir()
    (shipped_dir / "h100-ib-rail-8x8.yaml").write_text((spec_module.topology_dir() / "h100-ib-rail-8x8.yaml").read_text())
    monkeypatch.setattr(spec_module, "topology_dir", lambda: shipped_dir)
    for name, out in ((str(cluster), cluster), ("h100-ib-rail-8x8", shipped_dir / "h100-ib-rail-8x8.yaml")):
        shipped = out.read_text()
        with pytest.raises(SystemExit) as info:
            main(["calibrate", "--nccl-tests", str(log), "--cluster", name, "--out", str(out), "--quiet"])
        err = " ".join(capsys.readouterr().err.split())
        assert info.value.code == 2 and "is the file --cluster reads" in err, err
        assert out.read_text() == shipped
    assert cluster.read_text() == before


def test_a_start_up_below_alpha_s_is_fitted_at_the_floor_that_keeps_alpha_s():
    """The planner's start-up across nodes is max(alpha_s, L + g p s / (s + S0)): the fit keeps L at least
    alpha_s - g p s / (s + S0) at the log's smallest row, so that the written L is the one the planner uses. A log
    made with no start-up of its own (L 0, alpha_s 0) onto a topology of alpha_s 100 us, g 2 us per remote peer and
    S0 1 kB: the fit lands on the floor, written out here: 2 x 8 ranks, p = 8 remote peers, the smallest row 1 KiB per
    rank of which s = 1024 x 15 / 16 = 960 B go to the other ranks, L = 100 - 2 x 8 x 960 / 1960 us (92.16 us)."""
    from lshsim.calibration.internode import fit_internode
    from lshsim.calibration.sources import parse_nccl_tests

    spec, source = read_spec("h100-ib-rail-8x8")
    spec = {**spec, "alpha_s": 100e-6,
            "calibration": {**spec["calibration"], "a2a_remote_peer_s": 2e-6, "a2a_remote_peer_ramp_bytes": 1e3}}
    spec["calibration"].pop("alpha_s", None)
    run = parse_nccl_tests(_few(_log(0.8, 0.0, spec=spec)), source="floor.txt")
    fit = fit_internode(run, spec, cluster=str(source), log="floor.txt")
    assert fit.internode_alpha_s == pytest.approx(100e-6 - 2e-6 * 8 * 960 / (960 + 1e3), rel=1e-9)


def test_the_printed_start_up_counts_the_remote_peers_of_a_rank(tmp_path, capsys):
    """A cluster whose cost per remote peer does not ramp (2 us per remote peer, no S0): the summary prints the whole
    start-up across nodes, L + g p with p the remote peers of a rank: 2 x 8 ranks, p = 8 (not the 15 other ranks),
    30 + 2 x 8 = 46 us."""
    spec, _ = read_spec("h100-ib-rail-8x8")
    spec = {**spec, "calibration": {**spec["calibration"], "a2a_remote_peer_s": 2e-6}}
    spec["calibration"].pop("a2a_remote_peer_ramp_bytes")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(spec))
    log = tmp_path / "log.txt"
    log.write_text(_few(_log(0.8, 30e-6, spec=spec)))
    assert main(["calibrate", "--nccl-tests", str(log), "--cluster", str(cluster), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "start-up across nodes 46.0 us at 8 remote peers (a2a_internode_alpha_s 30.0 us + the topology's 2.00 us " \
           "per remote peer)" in printed, printed
