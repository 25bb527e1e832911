"""`calibrate` on measured files: read them through a calibration source, fit, write the topology.

The half of the `calibrate` command that measures nothing and imports no torch (the measuring
half is `lshsim.executor.calibrate`; both end in `finish`). Every way of naming files is one
source read, `lshsim.calibration.read_source(name, paths, options)`:

    --source NAME FILE... [--source-option KEY=VALUE]...   SOURCES[NAME](FILEs, KEY=VALUE, ...)
    --nccl-tests LOG [--world-size W] [--gpu G]            the "nccl-tests" source
    --from-raw RAW.json                                    the "microbenchmarks" source
    --from-traces TRACE.json...                            the "traces" source (in situ: its
                                                           all-to-alls, the rest of --from-raw)

`--world-size` and `--gpu` are passed to every source read as its options world_size and gpu.
The shipped sources take them only where the files do not say (a log without `# Rank` lines, a
device no calibration knows) and refuse one that contradicts the files (naming the option, the
file and both values); what an option set is noted in the provenance ("overrides") and the
summary. A source
registered by a plugin module is named like a shipped one once the module is imported
(`lshsim --plugin MODULE calibrate --source NAME ...`). The fit (`fit_calibration`) includes the
bus bandwidth curve (and, with skewed all-to-alls, the headroom and cap) for `--source` and
`--from-traces` unless `--no-curve`; `--nccl-tests` and `--from-raw` alone fit alpha-beta. The
topology YAML (and the `--raw` JSON) is written only after the fit succeeded, through a temporary
file in the same folder renamed into place, so a failure leaves no half-written file.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

__all__ = ["SourceRead", "source_reads", "reads_files", "calibration_input", "finish", "calibrate_from_files",
           "calibrate_cluster",
           "arg_source_option", "write_atomically", "input_files"]

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def arg_source_option(text: str) -> tuple[str, object]:
    """argparse type of `--source-option KEY=VALUE`: (KEY, VALUE read as YAML: 4, 1e9, true, text,
    [1, 2]; a number YAML 1.1 leaves as text, such as 1e9, becomes a float).

    >>> arg_source_option("world_size=4"), arg_source_option("gpu=NVIDIA H200"), arg_source_option("min=1e9")
    (('world_size', 4), ('gpu', 'NVIDIA H200'), ('min', 1000000000.0))
    """
    import argparse

    import yaml

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE with KEY a Python identifier")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str) and _NUMBER.match(parsed.strip()):
        parsed = float(parsed)
    return key, parsed


class SourceRead(NamedTuple):
    """One read through `lshsim.calibration.read_source(name, paths, options)`."""

    name: str
    paths: list
    options: dict


def source_reads(args) -> tuple[SourceRead | None, SourceRead | None]:
    """(base, a2a): the source reads the arguments ask for; (None, None) to measure. `a2a` (the
    traces of --from-traces) replaces the base's all-to-alls (`merge_inputs`)."""
    source = getattr(args, "source", None)
    files = list(getattr(args, "files", None) or [])
    shorthands = [flag for flag, value in (("--nccl-tests", args.nccl_tests), ("--from-raw", args.from_raw),
                                           ("--from-traces", args.from_traces)) if value]
    if source is None:
        if files:
            raise ValueError(f"FILE arguments ({' '.join(files)}) need --source NAME, the calibration source "
                             f"that reads them")
        if getattr(args, "source_options", None):
            raise ValueError("--source-option needs --source NAME")
    else:
        if shorthands:
            raise ValueError(f"--source reads one source; {', '.join(shorthands)} "
                             f"{'is a shorthand' if len(shorthands) == 1 else 'are shorthands'} for a shipped one: "
                             f"give one of the two")
        if not files:
            raise ValueError(f"--source {source} needs the files to read (FILE...)")
        options: dict = {}
        for key, value in getattr(args, "source_options", None) or []:
            if key in options:
                raise ValueError(f"--source-option {key} is given twice")
            options[key] = value
        for key in ("world_size", "gpu"):
            flag = "--" + key.replace("_", "-")
            if getattr(args, key, None) is not None:
                if key in options:
                    raise ValueError(f"{flag} and --source-option {key}=... both give the source's {key}")
                options[key] = getattr(args, key)
        return SourceRead(source, files, options), None
    if args.nccl_tests and args.from_raw:
        raise ValueError("--nccl-tests and --from-raw are two base sources (the all-to-all from an nccl-tests log, "
                         "or every rate from an earlier --raw JSON): give one of the two")
    base = None
    if args.nccl_tests:
        base = SourceRead("nccl-tests", [args.nccl_tests], {"world_size": args.world_size, "gpu": args.gpu})
    elif args.from_raw:
        # --world-size / --gpu are checked against the file (a contradiction refused, not ignored)
        base = SourceRead("microbenchmarks", [args.from_raw], {"world_size": args.world_size, "gpu": args.gpu})
    a2a = None
    if args.from_traces:
        # in situ: the all-to-alls of the executor's own (calibration) workloads; with a curve, the
        # uniform ones give the points and the skewed ones the headroom's cases
        a2a = SourceRead("traces", list(args.from_traces), {"split_skewed": not getattr(args, "no_curve", False),
                                                       "gpu": args.gpu, "world_size": args.world_size})
    return base, a2a


def reads_files(args) -> bool:
    """Whether the arguments name files to fit (a source read) rather than asking to measure."""
    return bool(getattr(args, "source", None) or getattr(args, "files", None) or args.nccl_tests or args.from_raw
                or args.from_traces)


def calibration_input(args):
    """The `CalibrationInput` of the arguments' source reads (`source_reads`)."""
    from lshsim.calibration import merge_inputs, read_source

    base, a2a = source_reads(args)
    if base is None and a2a is None:
        raise ValueError("nothing to read: give --source NAME FILE..., --nccl-tests, --from-raw or --from-traces")
    base_input = None if base is None else read_source(*base)
    if a2a is None:
        return base_input
    return merge_inputs(base_input, read_source(*a2a))


def input_files(args) -> str:
    """The files the arguments read, for an error message: 'a.log', or 'a.json (and 13 more files)'."""
    paths = [str(path) for read in source_reads(args) if read is not None for path in read.paths]
    return paths[0] + (f" (and {len(paths) - 1} more file{'s' if len(paths) > 2 else ''})" if len(paths) > 1 else "")


def fits_curve(args) -> bool:
    """The bus bandwidth curve is fitted for --source and --from-traces, unless --no-curve."""
    return bool(getattr(args, "source", None) or args.from_traces) and not getattr(args, "no_curve", False)


def write_atomically(path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder renamed into place: the
    file is either the old one or the whole new one."""
    from lshsim.io import prepare_output, write_text_atomically

    prepare_output(path, "output")                        # the output rule of lshsim.io
    return write_text_atomically(path, text)


def plot_calibration(path: str, points, alpha_beta, curve, title: str) -> None:
    """The all-to-all's bus bandwidth (off-diagonal bytes per rank over time) against the size per
    rank: the measured points, the (alpha, B) fit's and the bus bandwidth curve's at the same sizes
    (`calibrate --plot`)."""
    from lshsim.calibration import curve_busbw_Bps
    from lshsim.cli._render import line_plot

    data = {"bytes per rank": [], "GB/s": [], "what": []}

    def add(point, Bps, what):
        data["bytes per rank"].append(point.bytes_per_rank)
        data["GB/s"].append(Bps / 1e9)
        data["what"].append(what)

    for point in points:
        add(point, point.busbw_Bps, "measured")
        if alpha_beta:
            add(point, point.offdiag_bytes / alpha_beta.predict_s(point.offdiag_bytes), "(alpha, B) fit")
        if curve is not None:
            add(point, curve_busbw_Bps(curve.curve, point.bytes_per_rank), "bus bandwidth curve")
    line_plot(path, data, "bytes per rank", "GB/s", "what", title, "bytes per rank (log)", "bus bandwidth, GB/s",
              logx=True, points=True)


def finish(args, inp) -> int:
    """Fit `inp`, write `--raw` and `--out` (the topology, named `--name` or after the GPU) and
    print the summary; the end of every `calibrate`, measured or read."""
    from lshsim.calibration import fit_calibration, gpu_key
    from lshsim.calibration.fits import THRESHOLD_WINDOW
    from lshsim.topology import build_topology, write_topology_yaml

    results, source, world = inp.record, inp.provenance, inp.world_size
    measured = not reads_files(args)
    if args.raw and measured:  # the measurements first: a failed fit must not lose them
        write_atomically(args.raw, json.dumps({"results": results, "provenance": source}, indent=1) + "\n")
    window = getattr(args, "threshold_window", None)
    try:
        fit = fit_calibration(inp, fit_min_bytes=args.fit_min_bytes, curve=fits_curve(args),
                              channels=not getattr(args, "no_channel_term", False),
                              threshold_window=THRESHOLD_WINDOW if window is None else window)
    except ValueError as error:
        if measured:
            raise
        raise ValueError(f"{input_files(args)}: {error}") from None
    fit_info = fit.info()
    prov = {**source, "fit": fit_info}
    name = args.name or f"{gpu_key(inp.gpu) or 'cpu'}-x{world}-calibrated"
    spec = fit.topology_spec(name, prov)
    try:      # before any file is written: a fit whose topology is refused (a rate past lshsim.bounds) leaves none
        build_topology(spec, source="the fitted topology")
    except ValueError as error:
        if measured:
            raise
        raise ValueError(f"{input_files(args)}: {error}") from None
    phase_model = fit_phases(args, inp, spec)
    if phase_model is not None:
        spec["calibration"]["phase_model"] = phase_model.to_block()
        try:    # the block as the topology will read it, before any file is written
            build_topology(spec, source="the fitted topology")
        except ValueError as error:
            if measured:
                raise
            raise ValueError(f"{input_files(args)}: results.phases: {error}") from None
    if args.raw:   # read files: written only once the fit succeeded (a refusal leaves no file)
        write_atomically(args.raw, json.dumps({"results": results, "provenance": source, "fit": fit_info},
                                              indent=1) + "\n")
    if args.out:
        write_topology_yaml(spec, args.out)      # validated, then written atomically
    alpha_beta, curve, headroom = fit.alpha_beta, fit.curve, fit.headroom
    lines = [f"calibration on {world} x {inp.gpu or 'CPU'}"]
    lines += [f"  note: {note}" for note in (inp.provenance or {}).get("overrides", [])]
    for point in inp.points:
        model = f"  model {alpha_beta.predict_s(point.offdiag_bytes) * 1e6:10.1f} us" if alpha_beta else ""
        lines.append(f"  all-to-all {point.bytes_per_rank:>12d} B/rank  {point.time_s * 1e6:10.1f} us  "
                     f"busbw {point.busbw_Bps / 1e9:7.2f} GB/s{model}")
    for p in results.get("p2p") or []:
        lines.append(f"  p2p {p['bytes']:>12d} B  {p['Bps'] / 1e9:7.2f} GB/s")
    if results.get("ffn"):
        lines.append(f"  expert FFN {results['ffn']['flops_per_s'] / 1e12:.1f} TFLOP/s "
                     f"({results['ffn']['dtype']}, d={results['ffn']['d_model']})")
    if results.get("hbm"):
        lines.append(f"  copy {results['hbm']['Bps'] / 1e9:.1f} GB/s (read + write)")
    if alpha_beta:
        lines.append(f"  fit: alpha {alpha_beta.alpha_s * 1e6:.2f} us, B {alpha_beta.bandwidth_Bps / 1e9:.1f} GB/s, "
                     f"max |residual| {alpha_beta.max_rel_residual:.3f}, median {alpha_beta.median_rel_residual:.3f} "
                     f"({alpha_beta.points_used} sizes >= {args.fit_min_bytes} B)")
    if curve is not None:
        lines.append(f"  bus bandwidth curve ({curve.points} sizes, alpha 0): "
                     + ", ".join(f"{m / 1e6:.1f} MB {b / 1e9:.0f} GB/s" for m, b in curve.curve))
        lines.append(f"  curve: max |residual| {curve.max_rel_residual:.3f}, median {curve.median_rel_residual:.3f}")
        if curve.threshold_window is not None:
            lines.append(f"  curve leaves out the sizes within {curve.threshold_window:.0%} of NCCL's channel thresholds: "
                         + (", ".join(f"{m / 1e6:.1f} MB" for m in curve.excluded_sizes) or "none"))
    if headroom is not None:
        info = fit_info["link_headroom"]
        lines.append(f"  link headroom {headroom.headroom:.3f} on {headroom.phases} all-to-alls of "
                     f"{info['traces']} skewed traces: |error| median {headroom.median_rel_error:.3f}, "
                     f"max {headroom.max_rel_error:.3f} (curve alone: median {headroom.curve_only_median_rel_error:.3f}, "
                     f"max {headroom.curve_only_max_rel_error:.3f})"
                     + (f"; links capped at {headroom.link_max_Bps / 1e9:.0f} GB/s (fitted between the curve's top "
                        f"{max(b for _, b in curve.curve) / 1e9:.0f} and the fastest p2p send "
                        f"{info['p2p_max_Bps'] / 1e9:.0f})" if headroom.link_max_Bps else ""))
    if fit.channel is not None:
        c = fit.channel
        lines.append(f"  NCCL channel term: headroom {c.headroom:.3f} on {c.phases} skewed all-to-alls ({c.bound_phases} "
                     f"bound): |error| mean {c.mean_rel_error:.3f}, median {c.median_rel_error:.3f}, max "
                     f"{c.max_rel_error:.3f} (without: mean {c.without_mean_rel_error:.3f}, median "
                     f"{c.without_median_rel_error:.3f}, max {c.without_max_rel_error:.3f}); chunk "
                     f"{c.term.config.chunk_bytes} B")
    if phase_model is not None:
        lines.extend(phase_model_lines(phase_model))
    if args.out:
        lines.append(f"  topology written to {args.out}")
    if getattr(args, "plot", None):
        if inp.points:
            plot_calibration(args.plot, inp.points, alpha_beta, curve, f"all-to-all on {world} x {inp.gpu or 'CPU'}")
            lines.append(f"  plot written to {args.plot}")
        else:
            lines.append(f"  no plot: this calibration has no all-to-all sizes ({args.plot} not written)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def fit_phases(args, inp, spec: dict):
    """The `PhaseModel` of the calibration's phase measurements (results["phases"]), or None.

    The transport is read from the run's NCCL environment (provenance.nccl_env); the split-size
    exchange's all-to-all is simulated on the topology `spec` just fitted. With --phase-base, the
    compute parts of that earlier raw JSON fill in what this one did not measure."""
    from lshsim.calibration.phase_model import check_phase_results, fit_phase_model, transport_of_env

    phases = (inp.record or {}).get("phases")
    base_path = getattr(args, "phase_base", None)
    if not phases and not base_path:
        return None
    from lshsim.readers import load_json
    from lshsim.sim.collectives import simulate_all_to_all
    from lshsim.topology import build_topology

    G = build_topology(spec, source="the fitted topology")

    def small_a2a_s(traffic):
        return float(simulate_all_to_all(G, traffic).time_s)

    base: dict = {"expert": None, "layers": []}
    for path in base_path or []:
        raw = load_json(path, what="phase base file")
        results = raw.get("results") if isinstance(raw, dict) else None
        phases_of = results.get("phases") if isinstance(results, dict) else None
        if not phases_of:
            raise ValueError(f"{path}: results.phases is missing: not the --raw JSON of a calibration with --phases")
        check_phase_results(phases_of, f"{path}: results.phases")
        base["expert"] = base["expert"] or phases_of.get("expert")
        base["layers"] += phases_of.get("layers") or []
    transport = transport_of_env((inp.provenance or {}).get("nccl_env"))
    source = (inp.provenance or {}).get("refit_from")
    check_phase_results(phases or {}, f"{source}: results.phases" if source else "results.phases")
    try:
        return fit_phase_model(phases or {}, transport=transport, small_a2a_s=small_a2a_s, base=base)
    except (KeyError, TypeError, ValueError) as error:
        # the fit joins this calibration's phases with the bases': name every file it read
        bases = f"--phase-base {' '.join(map(str, base_path))}" if base_path else ""
        named = f"{source} (with {bases})" if source and bases else (source or bases)
        raise ValueError(f"{named + ': ' if named else ''}results.phases: {error}") from None


def phase_model_lines(model) -> list[str]:
    lines = [f"  phase model ({model.transport}), excess over the device time by size:"]
    for direction, floor in (model.info.get("expert_floor") or {}).items():
        lines.append(f"  expert {direction}: floor {floor['floor_s'] * 1e3:.3f} ms on {floor['layers']} layers, |error| "
                     f"median {100 * floor['median']:.1f}% worst {100 * floor['worst']:.1f}%"
                     + ("" if floor["loo_median"] is None else      # none to report: not 0%
                        f", leave-one-out median {100 * floor['loo_median']:.1f}% "
                        f"worst {100 * floor['loo_worst']:.1f}%"))
    for label, curve in (("as-run", model.excess_as_run), ("back-to-back", model.excess_back_to_back)):
        if curve:
            lines.append(f"  {label}: " + ", ".join(f"{m / 2**20:.2g} MiB {t * 1e6:+.0f} us" for m, t in curve[::3]))
    if model.self_copy:
        lines.append("  self-chunk copy (mostly-diagonal all-to-alls), read + write: "
                     + ", ".join(f"{m / 2**20:.0f} MiB {v / 1e9:.0f} GB/s" for m, v in model.self_copy))
    if model.unaligned:
        lines.append("  unaligned chunks: " + ", ".join(f"{m / 2**20:.2f} MiB x{f:.2f}" for m, f in model.unaligned))
    if model.expert is not None:
        lines.append(f"  expert grid: {model.expert.forward_s.size} points")
    for (phase, direction), fit in sorted(model.kernels.items()):
        loo = "" if fit.loo_median_rel_error is None else \
            f", leave-one-out median {100 * fit.loo_median_rel_error:.1f}% worst {100 * fit.loo_max_rel_error:.1f}%"
        lines.append(f"  {phase} {direction}: {fit.points} layers, |error| median {100 * fit.median_rel_error:.1f}% "
                     f"worst {100 * fit.max_rel_error:.1f}%{loo}")
    if model.exchange_s is not None:
        lines.append(f"  split-size exchange beyond its all-to-all: {model.exchange_s * 1e6:.1f} us")
    if model.exchange_single_s is not None:
        lines.append(f"  split-size handling on one rank: {model.exchange_single_s * 1e6:.1f} us")
    return lines


def calibrate_from_files(args) -> int:
    """`calibrate` with files to read (`reads_files(args)`): read, fit, write, report."""
    if getattr(args, "cluster", None):
        return calibrate_cluster(args)
    return finish(args, calibration_input(args))


def calibrate_cluster(args) -> int:
    """`calibrate --nccl-tests LOG --cluster TOPOLOGY`: a log of several nodes fitted onto the cluster's topology
    (`lshsim.calibration.internode.fit_internode`); `--out` (if given) gets the topology with calibration.nic_Bps and
    calibration.a2a_internode_alpha_s, written whole once the fit succeeded; `--plot` the measured and fitted bus
    bandwidth against the size."""
    from lshsim.calibration.internode import fit_internode
    from lshsim.calibration.sources import parse_nccl_tests
    from lshsim.readers import read_text
    from lshsim.topology.spec import read_spec, write_topology_yaml

    run = parse_nccl_tests(read_text(args.nccl_tests, "nccl-tests log"), args.world_size, source=str(args.nccl_tests))
    spec, source = read_spec(args.cluster)
    spec = dict(spec)
    if args.name:
        spec["name"] = args.name
    fit = fit_internode(run, spec, cluster=str(source), log=str(args.nccl_tests))
    lines = [f"  {len(fit.hosts)} hosts ({', '.join(fit.hosts[:4])}{', ...' if len(fit.hosts) > 4 else ''}), "
             f"{run.world_size} ranks, onto {source}"]
    for size, measured, model in fit.rows:
        lines.append(f"  all-to-all {size:>12d} B/rank  measured {measured * 1e6:11.1f} us  model {model * 1e6:11.1f} us"
                     f"  {100 * (measured / model - 1):+7.1f}% busbw")
    info = fit.info()
    cal = fit.spec.get("calibration") or {}
    per_peer = float(cal.get("a2a_remote_peer_s") or 0.0)
    ramp_bytes = float(cal.get("a2a_remote_peer_ramp_bytes") or 0.0)
    remote = run.world_size - run.world_size // len(fit.hosts)
    ramp = f" x s / (s + {ramp_bytes / 1e6:.3g} MB), s the bytes a rank sends" if ramp_bytes > 0 else ""
    total = fit.internode_alpha_s + (0.0 if ramp_bytes > 0 else per_peer * remote)
    lines.append(f"  fit: NIC efficiency {fit.efficiency:.2f} (nic_Bps {fit.nic_Bps / 1e9:.2f} GB/s), start-up across "
                 f"nodes {total * 1e6:.1f} us" + ("" if ramp_bytes > 0 else f" at {remote} remote peers")
                 + (f" (a2a_internode_alpha_s {fit.internode_alpha_s * 1e6:.1f} us + the topology's "
                    f"{per_peer * 1e6:.2f} us per remote peer{ramp})" if per_peer else "")
                 + f"; |error| median {100 * info['median_abs_rel_error']:.1f}%, "
                 f"worst {100 * info['max_abs_rel_error']:.1f}% ({len(fit.rows)} sizes)")
    if args.plot:
        from lshsim.cli._render import line_plot

        data = {"bytes per rank": [], "GB/s": [], "what": []}
        for size, measured, model in fit.rows:
            for what, t in (("measured", measured), ("fitted model", model)):
                data["bytes per rank"].append(size)
                data["GB/s"].append(size * (run.world_size - 1) / run.world_size / t / 1e9)
                data["what"].append(what)
        line_plot(args.plot, data, "bytes per rank", "GB/s", "what", f"{Path(args.nccl_tests).name} onto {spec['name']}",
                  "all-to-all bytes per rank", "bus bandwidth (GB/s)", logx=True, points=True)
        lines.append(f"  plot written to {args.plot}")
    if args.out:
        write_topology_yaml(fit.spec, args.out)          # validated, then written whole (a temporary file renamed)
        lines.append(f"  topology written to {args.out}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
