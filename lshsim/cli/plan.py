"""`lshsim plan`: predict one MoE training step and compare LSH-MoE, LocMoE and all-to-all options.

The model: `lshsim.sim.moe_step` (`StepConfig`, `plan_options`, `compare_options`) on a model of
`lshsim.models` and a cluster of `lshsim.topology`; `--sweep` runs every model on every cluster.
"""
from __future__ import annotations

import argparse

import math

from lshsim.checks import CAPACITY_FACTOR_MAX, arg_finite_number, arg_int_within, arg_name, arg_within
from lshsim.cli import _render
from lshsim.cli._progress import OptionProgress
from lshsim.cli._render import SEED_HELP, arg_seed

_PLAN_DEFAULT_MODEL = "gpt-moe-15b"
_PLAN_DEFAULT_CLUSTER = "lshmoe-a100-4x8"


def _capacity_factor(text: str) -> float | None:
    if text.lower() in ("none", "inf", "no"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0 (or 'none' for no limit)")
    if value > CAPACITY_FACTOR_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} must be <= {CAPACITY_FACTOR_MAX:g} (or 'none' for no limit)")
    return value


def _locality_share(text: str) -> float | str | None:
    """--locality-share: 'auto', 'none' or a share of token copies in [0, 1]."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto', 'none' or a number in [0, 1]") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1] (a share of token copies), 'auto' or 'none'")
    return value


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing (expected a,b,c)")
    return names


def add_parser(subparsers):
    p = subparsers.add_parser("plan", help="predict an MoE training step; compare LSH-MoE, LocMoE, all-to-all options",
                              description="Simulate one training step (forward + backward) of a catalogued MoE model "
                                          "on a modelled cluster: routing by lshsim.dispatch on synthetic tokens, "
                                          "flow-level all-to-alls, roofline compute. Prints the step per phase, the "
                                          "all-to-all share, and the speedup of each option over the baseline (top-k, "
                                          "no LSH, direct all-to-all).")
    p.add_argument("--model", default=_PLAN_DEFAULT_MODEL, type=arg_name,
                   help=f"a model of the catalog (models/configs; `lshsim catalog --models` lists them), a model "
                        f"YAML or a Hugging Face config.json (default {_PLAN_DEFAULT_MODEL})")
    p.add_argument("--cluster", default=_PLAN_DEFAULT_CLUSTER, type=arg_name,
                   help=f"a topology of data/topologies (`lshsim catalog --clusters` lists them) or a topology "
                        f"YAML (default {_PLAN_DEFAULT_CLUSTER})")
    p.add_argument("--router", default="topk",
                   help="topk | hash | expert_choice | locmoe | node_limited | topk_collapsed, or a registered router "
                        "(lshsim.dispatch.ROUTERS; default topk), or 'model': the model's published routing "
                        "(its router and options, e.g. DeepSeek-V3's node-limited M = 4; a dropless model "
                        "routes without capacity)")
    p.add_argument("--router-option", action="append", default=[], metavar="NAME=VALUE", type=_router_option,
                   help="an option of the router, repeatable: node_limited max_nodes=4 / scores_per_node=0, "
                        "topk_collapsed active_experts=9 (top-k over experts 0..8 only); with --router model it "
                        "overrides the model's option of that name")
    p.add_argument("--lsh-rate", type=arg_finite_number(0.0, exclusive=True, maximum=1.0), default=None,
                   help="LSH-MoE compression rate in (0, 1] (centroids / tokens; the paper reports 0.117-0.2); "
                        "default: no LSH for your option, 0.2 for the comparison's lsh row")
    p.add_argument("--algorithm", default="direct",
                   help="all-to-all: direct | pairwise | hierarchical (alias 2d) | groupwise | node_dedup (alias "
                        "deepep: DeepEP's normal kernels, a token once per destination node), or a registered "
                        "one (lshsim.algorithms; default direct)")
    p.add_argument("--moe-layer", default="software", choices=("software", "grouped", "tutel", "gshard-einsum-loop"),
                   help="how the MoE layer runs (lshsim.sim.moe_layers): software (default: the cluster's "
                        "software.moe_layer, e.g. the 2022 fairseq layer on the LSH-MoE paper clusters, else grouped), "
                        "grouped (today's: routed rows, grouped GEMM), tutel or gshard-einsum-loop (capacity-padded "
                        "buffers; the latter with dense one-hot dispatch and a loop over local experts)")
    p.add_argument("--grad-sync", default="software", choices=("software", "after", "overlapped", "off"),
                   help="the data-parallel gradient all-reduce (phase grad_allreduce: ring all-reduce of the "
                        "replicated weights' gradients over all GPUs, the experts' over their replicas when EP < GPUs): "
                        "software (default: the cluster's software.grad_sync, e.g. after on the LSH-MoE paper "
                        "clusters, else overlapped), after (once the backward has ended), overlapped (25 MiB DDP "
                        "buckets behind the backward), off (not simulated)")
    p.add_argument("--dispatch-format", choices=("model", "bf16", "fp8"), default="model",
                   help="bytes per token of the forward dispatch: model (the model's precision, default), bf16, "
                        "or fp8 (one byte a value plus a float32 scale per 128 values, as DeepEP counts it); the "
                        "combine and the gradients stay in the model's precision. With --algorithm node_dedup "
                        "(alias deepep) a token crosses the network once per destination node, then NVLink "
                        "forwards it to each of its experts' GPUs there")
    p.add_argument("--overlap", action="store_true",
                   help="pipeline dispatch / experts / combine in chunks (Tutel-style)")
    p.add_argument("--tokens-per-gpu", type=arg_int_within("tokens"), default=None,
                   help="tokens per GPU per step, 1 to 16777216 (default: the model's); with --tp N, the tokens of one TP group's "
                        "micro-batch (each of its N GPUs holds 1 / N of them)")
    p.add_argument("--capacity-factor", type=_capacity_factor, default=1.25,
                   help="expert capacity factor in (0, 1e6], or 'none' for no limit (default 1.25)")
    p.add_argument("--locality-share", type=_locality_share, default="auto",
                   help="locmoe: LocMoE's locality loss as the share of token copies kept on their own node, in "
                        "[0, 1]; auto (default): the most the node's experts accept at the capacity, min(1, capacity "
                        "factor / nodes), with --ep groups the group's experts on the rank's node over the group's "
                        "(plain GrAP routing with node_dedup, where a share is not modelled); none: route with "
                        "--locality-bonus instead")
    p.add_argument("--locality-bonus", type=arg_within("locality_bonus"), default=1.0,
                   help="locmoe with --locality-share none: own-node preference added to the GrAP score, 0 to 1000 "
                        "(default 1.0; a large bonus keeps every token on its node)")
    p.add_argument("--seed", type=arg_seed, default=0, help=f"seed of the synthetic tokens (default 0; {SEED_HELP})")
    p.add_argument("--max-routed-tokens", type=arg_int_within("routed_tokens"), default=1 << 17,
                   help="route at most this many tokens in all (1 to 2^32), else subsample per rank and scale "
                        "(default 131072)")
    p.add_argument("--ep", type=arg_int_within("gpus"), default=None,
                   help="expert-parallel group size EP, dividing the GPU count W and the experts (default W: every "
                        "expert once over all GPUs). EP < W: W / EP data-parallel groups of EP consecutive GPUs, each "
                        "holding all experts; every group's all-to-all runs at the same time on the shared fabric")
    p.add_argument("--tp", type=arg_int_within("gpus"), default=1,
                   help="tensor-parallel degree TP inside a node (default 1: none), dividing the GPUs per node. "
                        "Megatron-Core's layout with sequence parallelism and expert-TP 1 (MoE parallel folding): "
                        "attention, dense FFN, shared experts and the output layer split over TP consecutive GPUs "
                        "with an all-gather and a reduce-scatter per block each way (the tp_* phases); the experts "
                        "stay whole (EP groups over the world, EP x TP may exceed W); --tokens-per-gpu is then the "
                        "micro-batch of one TP group, each GPU dispatching 1 / TP of it")
    p.add_argument("--tp-layout", choices=("sequence", "replicated"), default="sequence",
                   help="how the TP ranks share the MoE layer: sequence (default, Megatron-Core's, above) or "
                        "replicated (MindSpore's model parallelism, LocMoE's and PanGu-Sigma's: every TP rank "
                        "dispatches all tokens of its TP group to the rank of its own TP index holding the expert, "
                        "EP groups strided over the TP index with --ep dividing GPUs / TP, each expert split over "
                        "the TP ranks and its output all-reduced over them: phase tp_expert)")
    p.add_argument("--traffic-model", choices=("auto", "routed", "popularity"), default="auto",
                   help="routed: route synthetic tokens on every group; popularity: the expected counts from the "
                        "expert popularity the router induces on one group's routed sample (no per-rank noise, no "
                        "W x T tokens to route). Default auto: popularity with several EP groups (--ep < W) or above 1,024 GPUs, "
                        "routed otherwise")
    p.add_argument("--fidelity", choices=("auto", "exact", "tolerance", "estimate"), default="auto",
                   help="all-to-all simulation: exact, tolerance (FlowNetwork's drain_tolerance: flows that "
                        "would drain within tol x now drain together, completion up to that much early; much "
                        "faster on uneven traffic over many GPUs), or estimate (every phase from its link "
                        "loads without simulating, with the correction for few flows per port: "
                        "lshsim.sim.collectives.estimate_collective; algorithms it does not know at tolerance). "
                        "Default auto: exact up to 64 GPUs, tolerance up to 256, estimate above. The level used "
                        "is printed, in the JSON (\"fidelity\") and in the trace's provenance")
    p.add_argument("--drain-tolerance", type=arg_finite_number(0.0, exclusive=True, maximum=0.5), default=None,
                   help="the tolerance of --fidelity tolerance, in (0, 0.5] (default 0.01); giving it selects "
                        "--fidelity tolerance")
    p.add_argument("--no-a2a-cache", action="store_true",
                   help="simulate each option's all-to-alls on their own instead of sharing one cache between "
                        "the options (the same results, slower; for benchmarking)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (progress goes to stderr)")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="draw the options' step breakdown as stacked bars")
    p.add_argument("--trace", metavar="FILE.json", default=None, help="write your option's Trace (lshsim schema)")
    p.add_argument("--chrome-trace", metavar="FILE.json", default=None,
                   help="write your option's Trace as Chrome trace-event JSON (open in ui.perfetto.dev)")
    p.epilog = ("Outputs (--plot, --trace, --chrome-trace) are written whole (a temporary file renamed into "
                "place); their folders are created if missing, checked before any simulation. Sizes: a model on a "
                "cluster whose estimate (lshsim.limits.estimate_plan: the routed tokens, W^2 flows per all-to-all, "
                "about 1.1 kB per layer x GPU x option of trace) exceeds the memory available is refused before "
                "the simulation starts.")
    p.add_argument("--sweep", action="store_true", help="run every model of --models on every cluster of --clusters")
    p.add_argument("--models", type=_name_list, default=None, help="--sweep: comma-separated models (default --model)")
    p.add_argument("--clusters", type=_name_list, default=None,
                   help="--sweep: comma-separated clusters (default --cluster)")
    return p


def _router_option(text: str) -> tuple[str, object]:
    """NAME=VALUE of --router-option: VALUE as an integer, a number, true / false, or else the string."""
    import argparse

    name, sep, raw = text.partition("=")
    if not sep or not name.strip() or not raw.strip():
        raise argparse.ArgumentTypeError(f"{text!r} must be NAME=VALUE (e.g. active_experts=9)")
    raw = raw.strip()
    for convert in (int, float):
        try:
            value = convert(raw)
        except ValueError:
            continue
        if convert is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: the value must be finite")
        return name.strip(), value
    lowered = raw.lower()
    return name.strip(), True if lowered == "true" else False if lowered == "false" else raw


def _megabytes(value: float) -> str:
    """Bytes as MB (decimal, one decimal place) up to 99,999.9 MB, then GB, then TB: '487.6 MB', '479.5 TB'."""
    for unit, size in (("MB", 1e6), ("GB", 1e9)):
        if value / size < 99_999.95:
            return f"{value / size:.1f} {unit}"
    return f"{value / 1e12:.1f} TB"


def _plan_config(args, model=None):
    """The user's StepConfig; `--router model` takes the model's published router, its options and
    (for a dropless model) no capacity limit."""
    from lshsim.sim.moe_step import StepConfig, share_for_router

    router, options, capacity = args.router, (), args.capacity_factor
    if router == "model":
        if model is None:
            raise ValueError("--router model needs one --model (not with --sweep)")
        router, options = model.router, tuple(getattr(model, "router_options", ()))
        capacity = None if getattr(model, "dropless", False) else capacity
    given = getattr(args, "router_option", None) or []
    if given:
        options = tuple(sorted({**dict(options), **dict(given)}.items()))
        StepConfig(router=router)           # the router itself first (its own message), then its options alone,
        try:                                # so that a bad option is named by the flag that gave it
            StepConfig(router=router, router_options=options)
        except ValueError as error:
            text = str(error).removeprefix("router_options: ")
            raise ValueError(f"--router-option {' '.join(f'{n}={v}' for n, v in given)}: {text}") from None
    return StepConfig(router=router, router_options=options, lsh_rate=args.lsh_rate, algorithm=args.algorithm, overlap=args.overlap,
                      tokens_per_gpu=args.tokens_per_gpu, capacity_factor=capacity,
                      locality_bonus=args.locality_bonus, seed=args.seed, max_routed_tokens=args.max_routed_tokens,
                      locality_share=share_for_router(router, getattr(args, "locality_share", "auto")),
                      ep=args.ep, traffic_model=None if args.traffic_model == "auto" else args.traffic_model,
                      dispatch_format=None if args.dispatch_format == "model" else args.dispatch_format,
                      moe_layer=None if args.moe_layer == "software" else args.moe_layer, tp=getattr(args, "tp", 1),
                      tp_layout=getattr(args, "tp_layout", "sequence"),
                      grad_sync=None if getattr(args, "grad_sync", "software") == "software" else args.grad_sync)


def _fidelity(args, world_size: int) -> dict:
    """The fidelity of the all-to-alls: {"mode", "drain_tolerance", "chosen"} (chosen: "auto (...)" or "flag")."""
    from lshsim.sim.moe_step import AUTO_EXACT_MAX_GPUS, AUTO_TOLERANCE_MAX_GPUS, DEFAULT_DRAIN_TOLERANCE, auto_fidelity

    tolerance = DEFAULT_DRAIN_TOLERANCE if args.drain_tolerance is None else args.drain_tolerance
    mode = args.fidelity
    if mode == "exact" and args.drain_tolerance is not None:
        raise ValueError("--drain-tolerance goes with --fidelity tolerance, not --fidelity exact")
    if mode == "estimate":
        return {"mode": "estimate", "drain_tolerance": float(tolerance), "chosen": "flag"}
    if mode == "auto" and args.drain_tolerance is not None:
        mode = "tolerance"
    if mode == "auto":
        mode = auto_fidelity(world_size)
        return {"mode": mode, "drain_tolerance": 0.0 if mode == "exact" else float(tolerance),
                "chosen": f"auto ({world_size} GPUs; exact up to {AUTO_EXACT_MAX_GPUS}, tolerance up to "
                          f"{AUTO_TOLERANCE_MAX_GPUS}, estimate above)"}
    return {"mode": mode, "drain_tolerance": 0.0 if mode == "exact" else float(tolerance), "chosen": "flag"}


def _warn_slow_exact(progress, fidelity: dict, world_size: int) -> None:
    """A line on stderr before an explicit `--fidelity exact` above the GPUs where auto picks exact:
    each all-to-all is then simulated flow by flow, a minute or more each at 256 GPUs."""
    from lshsim.sim.moe_step import AUTO_EXACT_MAX_GPUS, DEFAULT_DRAIN_TOLERANCE, auto_fidelity

    if fidelity["mode"] != "exact" or fidelity["chosen"] != "flag" or world_size <= AUTO_EXACT_MAX_GPUS:
        return
    auto = auto_fidelity(world_size)
    progress.line(f"--fidelity exact on {world_size} GPUs simulates every flow of every all-to-all: this can take "
                  f"many minutes (auto would use {auto}{f' {DEFAULT_DRAIN_TOLERANCE:g}' if auto == 'tolerance' else ''}"
                  "); each option's done line says about how long is left")


def _world_size(graph) -> int:
    return sum(1 for _, data in graph.nodes(data=True) if data.get("kind") == "gpu")


def _plan_rows_json(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "result"} for row in rows]


def run(args) -> int:
    import time

    from lshsim.sim.moe_step import compare_options, plan_options
    from lshsim.io import check_distinct_outputs, prepare_output
    from lshsim.models import load_model

    for option in ("plot", "trace", "chrome_trace"):
        prepare_output(getattr(args, option), "--" + option.replace("_", "-"))
    check_distinct_outputs([("--plot", args.plot), ("--trace", args.trace), ("--chrome-trace", args.chrome_trace)],
                           [("--model", args.model), ("--cluster", args.cluster)])
    if args.sweep:
        if args.trace or args.chrome_trace or args.plot:
            raise ValueError("--plot, --trace and --chrome-trace draw or write one plan; they do not go with --sweep")
        return _plan_sweep(args)
    if args.models or args.clusters:
        raise ValueError("--models and --clusters go with --sweep; for one plan use --model and --cluster")
    model = load_model(args.model)
    selected = _plan_config(args, model)
    options = plan_options(selected, locmoe_share=args.locality_share)
    graph = _load_cluster(args.cluster, [model], selected, options)
    world_size = _world_size(graph)
    fidelity = _fidelity(args, world_size)
    started = time.perf_counter()
    progress = OptionProgress(started)
    _warn_slow_exact(progress, fidelity, world_size)
    cache_stats: dict = {}
    rows = compare_options(model, graph, options, drain_tolerance=fidelity["drain_tolerance"],
                           share_cache=not args.no_a2a_cache, progress=progress, cache_stats=cache_stats,
                           estimate=fidelity["mode"] == "estimate")
    elapsed_s = time.perf_counter() - started
    fidelity["a2a_cache"] = cache_stats
    chosen = next(row for row in rows if row["result"].config == selected)
    if args.trace:
        chosen["result"].trace.to_json(args.trace)              # written whole (lshsim.io)
    if args.chrome_trace:
        chosen["result"].trace.to_chrome_trace(args.chrome_trace)
    if args.plot:
        _plot_plan(rows, args.plot, f"{model.name} on {graph.graph['name']}")
    summary = {"model": model.to_dict(), "cluster": chosen["result"].trace.meta["cluster"],
               "selected": chosen["label"], "options": _plan_rows_json(rows), "fidelity": fidelity,
               "elapsed_s": elapsed_s}
    if args.json:
        _render.print_json(summary)
        return 0
    _render_plan(model, graph, chosen, rows, elapsed_s, args, fidelity)
    for path in (args.trace, args.chrome_trace, args.plot):   # as the other commands say where their files went
        if path:
            _render.console().print(f"wrote {path}", soft_wrap=True, markup=False)
    return 0


def _load_cluster(name: str, models: list, config, plan_options: list):
    """The cluster's graph, refused before it is built when the plan of one of `models` on it would not fit
    in memory (`lshsim.limits.estimate_plan`; `plan_options` the (label, StepConfig) pairs it runs)."""
    from lshsim.cli.simulate import world_of_spec
    from lshsim.limits import estimate_plan, refuse_if_too_large
    from lshsim.sim.moe_step import draws_whole_hidden, model_dict
    from lshsim.topology import build_topology
    from lshsim.topology.spec import read_spec

    options = len(plan_options)
    whole_hidden = any(draws_whole_hidden(option) for _, option in plan_options)

    spec, source = read_spec(name)
    world = world_of_spec(spec) if isinstance(spec, dict) else None
    for model in models if world is not None else []:
        m = model_dict(model)
        if config.ep is not None and config.ep < world:
            estimate = _grouped_plan_estimate(world, config, m, options, whole_hidden)
        else:
            estimate = estimate_plan(world_size=world, num_layers=m["num_layers"], d_model=m["d_model"],
                                     num_experts=m["num_experts"], k=m["top_k"],
                                     tokens_per_gpu=config.tokens_per_gpu or m["tokens_per_gpu"],
                                     max_routed_tokens=config.max_routed_tokens, options=options,
                                     whole_hidden=whole_hidden)
        refuse_if_too_large(f"{m['name']} ({m['num_layers']} layers, d_model {m['d_model']}, "
                            f"{m['num_experts']} experts) on {name} ({world} GPUs)", estimate,
                            hint="use a smaller model or cluster, or a lower --max-routed-tokens")
    return build_topology(spec, source=source)


def _grouped_plan_estimate(world: int, config, m: dict, options: int, whole_hidden: bool = True):
    """`lshsim.limits.estimate_plan` for EP groups (ep < W): one group's routing (the popularity sample,
    or W / EP groups of the same routed tokens), W x EP flows per all-to-all instead of W^2, eight dense
    (W, W) float64 matrices of the step (counts, bytes, their temporaries), and trace records of one rank
    per position in a group (rank classes)."""
    from lshsim.limits import FLOW_BYTES, FLOW_S, TRACE_BYTES_PER_RECORD, TRACE_S_PER_RECORD, Estimate, \
        estimate_plan_routing

    ep = config.ep
    tokens = config.tokens_per_gpu or m["tokens_per_gpu"]
    routed = max(1, min(tokens, config.max_routed_tokens // ep)) * ep
    gate_width = m["num_experts"] * -(-m["d_model"] // m["num_experts"])
    flows = float(world) * ep
    dense = 8.0 * 8.0 * float(world) ** 2
    records = float(m["num_layers"]) * min(world, ep) * options
    return (estimate_plan_routing(routed, gate_width, m["num_experts"], m["top_k"], whole_hidden)
            + Estimate(flows * FLOW_BYTES + dense, flows * FLOW_S * options,
                       f"{flows:.3g} flows (W={world} x EP={ep}) x {FLOW_BYTES} B + 8 (W, W) float64 matrices")
            + Estimate(records * TRACE_BYTES_PER_RECORD, records * TRACE_S_PER_RECORD,
                       f"{records:.3g} trace records ({m['num_layers']} layers x {min(world, ep)} rank classes x "
                       f"{options} options) x {TRACE_BYTES_PER_RECORD} B"))


def _grouped_notes(notes: list[tuple[str | None, str]], labels: list[str]) -> list[str]:
    """One line per distinct note text: the options it concerns in front ('every option' when it
    concerns all of them), in the order the texts first appear, so a note shared by every option
    is printed once, not once per option."""
    options: dict[str, list[str]] = {}
    for label, text in notes:
        concerned = options.setdefault(text, [])
        if label is not None and label not in concerned:
            concerned.append(label)
    lines = []
    for text, concerned in options.items():
        if not concerned:
            lines.append(text)
        elif len(labels) > 1 and set(concerned) == set(labels):
            lines.append(f"every option: {text}")
        else:
            lines.append("; ".join(concerned) + f": {text}")
    return lines


def _experts_per_gpu(count: int) -> str:
    return f"{count} expert per GPU" if count == 1 else f"{count} experts per GPU"


def _render_plan(model, graph, chosen: dict, rows: list[dict], elapsed_s: float, args, fidelity: dict) -> None:
    from rich.table import Table

    console = _render.wide_console()
    b = chosen["breakdown"]
    cluster = chosen["result"].trace.meta["cluster"]
    replicated = chosen["config"].get("tp_layout") == "replicated" and b.get("tp", 1) > 1
    groups = "" if b["ep"] == b["world_size"] else \
        f", EP {b['ep']} x DP {b['world_size'] // b['ep']} ({_experts_per_gpu(model.num_experts // b['ep'])})"
    if replicated:   # MindSpore's layout: one EP group per TP index, each expert split over the TP ranks
        groups = (f", EP {b['ep']} groups strided over the TP index ({b['world_size'] // b['ep']} groups, "
                  f"{_experts_per_gpu(model.num_experts // b['ep'])}, each split over TP {b['tp']}), TP {b['tp']} x DP "
                  f"{b['world_size'] // b['tp']} (replicated: every TP rank holds its group's {b['tokens_per_gpu']} "
                  f"tokens)")
    elif b.get("tp", 1) > 1:
        groups += (f", TP {b['tp']} x DP {b['world_size'] // b['tp']} for attention and dense layers (sequence "
                   f"parallel: {b['tokens_per_gpu'] * b['tp']} tokens per TP group)")
    console.print(f"[bold]{model.name}[/bold] ({model.num_layers} layers, {model.num_moe_layers} MoE x "
                  f"{model.num_experts} experts, top-{model.top_k}, d={model.d_model}, ffn={model.d_ffn}) on "
                  f"[bold]{cluster['name']}[/bold] ({cluster['nodes']} x {cluster['gpus_per_node']} {cluster['gpu']}), "
                  f"{b['tokens_per_gpu']} tokens per GPU{groups}; traffic: "
                  + ("routed synthetic tokens" if b["traffic_model"] == "routed" else
                     "expected counts from the router's expert popularity" if b["traffic_model"] == "popularity"
                     else str(b["traffic_model"])) + " (--traffic-model)")
    table = Table(title=f"Predicted step: {chosen['description']}")
    for column in ("phase", "forward ms", "backward ms", "total ms", "share"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    phases, forward, backward = b["phases_s"], b["phases_forward_s"], b["phases_backward_s"]
    busy = sum(phases.values())
    from lshsim.sim.phases import TP_PHASES

    for name, seconds in phases.items():
        if name in TP_PHASES and seconds == 0:      # tp_shared_expert of a model without shared experts
            continue
        table.add_row(name, f"{forward.get(name, 0.0) * 1e3:.3f}", f"{backward.get(name, 0.0) * 1e3:.3f}",
                      f"{seconds * 1e3:.3f}", f"{100 * seconds / busy:.1f}%")
    table.add_row("[bold]step[/bold]", f"{b['forward_s'] * 1e3:.3f}", f"{b['backward_s'] * 1e3:.3f}",
                  f"[bold]{b['step_s'] * 1e3:.3f}[/bold]", "")
    console.print(table)
    if busy > b["step_s"] * (1 + 1e-9):
        console.print(f"[dim]share: of the phases' summed time ({busy * 1e3:.3f} ms), which with overlap is "
                      f"more than the {b['step_s'] * 1e3:.3f} ms step; the lines below give shares of the step[/dim]")
    hidden = "" if b["exposed_a2a_s"] >= b["a2a_s"] - 1e-12 else \
        f" ({(b['a2a_s'] - b['exposed_a2a_s']) * 1e3:.3f} ms hidden behind compute)"
    if b.get("tp", 1) > 1:
        console.print(f"tensor parallel collectives (tp_*): [bold]{b['tp_s'] * 1e3:.3f} ms = {100 * b['tp_share']:.1f}%"
                      f"[/bold] of the step; {b['tokens_per_s']:,.0f} tokens/s over the cluster "
                      f"({b['tokens_per_step']:,} tokens per step)")
    console.print(f"all-to-all: [bold]{b['exposed_a2a_s'] * 1e3:.3f} ms of {b['step_s'] * 1e3:.3f} ms = "
                  f"{100 * b['a2a_share']:.1f}%[/bold] of the step{hidden}; "
                  f"{_megabytes(b['dispatch_bytes_per_layer'])} per dispatch, "
                  f"{_megabytes(b['inter_node_bytes_per_layer'])} of it between nodes; "
                  f"{100 * b['dropped_fraction']:.1f}% of choices dropped at capacity")
    if b.get("grad_sync", "off") != "off":
        console.print(f"gradient all-reduce ({b['grad_sync']}): [bold]{b['exposed_grad_sync_s'] * 1e3:.3f} ms "
                      f"exposed = {100 * b['grad_sync_share']:.1f}%[/bold] of the step (all of it "
                      f"{b['grad_sync_s'] * 1e3:.3f} ms, {b['grad_buckets']} all-reduce(s)); "
                      f"{_megabytes(b['grad_bytes_replicated'])} of replicated gradients per GPU over all GPUs"
                      + (f", {_megabytes(b['grad_bytes_expert'])} of expert gradients over each expert's replicas"
                         if b["grad_bytes_expert"] and b["ep"] * (b["tp"] if replicated else 1) < b["world_size"]
                         else ""))
    else:
        console.print("gradient all-reduce: off (not simulated)")
    compare = Table(title="Options vs the baseline (topk, no LSH, direct all-to-all)")
    for column in ("option", "step ms", "a2a ms", "a2a %", "grad sync %", "inter-node MB", "dropped", "speedup"):
        compare.add_column(column, justify="left" if column == "option" else "right")
    for row in rows:
        rb = row["breakdown"]
        mark = " *" if row is chosen else ""
        compare.add_row(row["label"] + mark, f"{rb['step_s'] * 1e3:.3f}",
                        f"{rb['exposed_a2a_s'] * 1e3:.3f}", f"{100 * rb['a2a_share']:.1f}%",
                        f"{100 * rb.get('grad_sync_share', 0.0):.1f}%",
                        f"{rb['inter_node_bytes_per_layer'] / 1e6:.1f}", f"{100 * rb['dropped_fraction']:.1f}%",
                        f"{row['speedup']:.2f}x")
    console.print(compare)
    console.print("[dim]options: " + "; ".join(f"{row['label']} = {row['description']}" for row in rows
                                              if not row["label"].startswith("yours")) + "[/dim]")
    notes = []                                  # (option label or None, text)
    base_drop = rows[0]["breakdown"]["dropped_fraction"]
    for row in rows:
        rb = row["breakdown"]
        if rb["dropped_fraction"] > max(2 * base_drop, base_drop + 0.05):
            notes.append((row["label"], f"drops {100 * rb['dropped_fraction']:.0f}% of the expert choices at capacity "
                          f"factor {row['config']['capacity_factor']} (baseline {100 * base_drop:.0f}%), so its "
                          "experts compute less; compare with --capacity-factor none"
                          + (" or a smaller --locality-bonus" if row["config"].get("locality_share") is None
                             and row["config"].get("router") == "locmoe" else "")))
        if rb["gate_width"] != model.d_model:
            notes.append((row["label"], f"d_model={model.d_model} is not a multiple of {model.num_experts} "
                          "experts, so "
                          f"the GrAP gate read synthetic hidden states of width {rb['gate_width']}"))
        if rb["count_scale"] != 1.0:
            notes.append((row["label"], f"routed {rb['routed_tokens_per_rank']} of {rb['tokens_per_gpu']} tokens "
                          f"per GPU and scaled the counts by {rb['count_scale']:g} (--max-routed-tokens)"))
    from lshsim.sim.moe_layers import PADDED_LAYERS

    layer = rows[0]["breakdown"].get("moe_layer")
    if layer in PADDED_LAYERS:
        notes.append((None, f"the cluster's software runs the MoE layer as {layer!r} (capacity-padded buffers: every "
                      f"rank sends and its experts compute capacity x experts rows whatever the routing), so a router "
                      f"option (locmoe) changes neither the bytes nor the expert work; --moe-layer grouped plans "
                      f"today's grouped layer"))
    for note in _grouped_notes(notes, [row["label"] for row in rows]):
        console.print(f"[dim]note: {note}[/dim]")
    console.print(f"[dim]* your option; a2a % = all-to-all time not hidden behind compute / step time (the step "
                  f"includes the exposed gradient all-reduce); grad sync % = gradient all-reduce past the backward / "
                  f"step; "
                  f"simulated in {elapsed_s:.1f} s[/dim]")
    cache = fidelity.get("a2a_cache", {})
    exactness = "exact" if fidelity["mode"] == "exact" else \
        (f"estimate (all-to-alls from link loads, phase by phase, corrected for few flows per port; other "
         f"algorithms at drain tolerance {fidelity['drain_tolerance']:g})" if fidelity["mode"] == "estimate" else
         f"tolerance, drain_tolerance {fidelity['drain_tolerance']:g} (all-to-alls up to that fraction early)")
    console.print(f"fidelity: {exactness}; chosen: {fidelity['chosen']}; all-to-all cache: "
                  f"{cache.get('misses', 0)} simulated, {cache.get('hits', 0)} reused")


def _plan_tick(row: dict) -> str:
    """x label of one option: its name, then its configuration wrapped to fit under the bar."""
    import textwrap

    name = "yours" if row["label"].startswith("yours") else row["label"]
    return name + "\n" + textwrap.fill(row["description"], 18)


def plan_figure(rows: list[dict], title: str):
    """Stacked bars: per option, the time of each phase (ms, forward + backward) and a tick at the step.

    The data-parallel gradient all-reduce is drawn as two segments: the part past the backward (exposed,
    solid, part of the step) and the part hidden behind it (hatched, light), so that the solid stack adds
    up to the step unless an all-to-all hides behind compute (the overlap options), which the step tick shows.
    Returns the matplotlib Figure (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lshsim.sim.trace import PHASES

    order = [name for name in PHASES if any(name in row["breakdown"]["phases_s"] for row in rows)]
    order += sorted({name for row in rows for name in row["breakdown"]["phases_s"]} - set(order))
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
               "#64b5cd"]
    color = {name: palette[i % len(palette)] for i, name in enumerate(order)}
    fig = Figure(figsize=(max(7.0, 1.7 * len(rows)), 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(axis="y", color="#dddddd", zorder=0)
    x = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    for name in order:
        heights, hidden = [], []
        for row in rows:
            b = row["breakdown"]
            ms = b["phases_s"].get(name, 0.0) * 1e3
            if name == "grad_allreduce" and "exposed_grad_sync_s" in b:
                exposed = min(ms, b["exposed_grad_sync_s"] * 1e3)
                heights.append(exposed)
                hidden.append(ms - exposed)
            else:
                heights.append(ms)
                hidden.append(0.0)
        if any(heights):
            ax.bar(x, heights, bottom=bottom, width=0.75, color=color[name], edgecolor="white", linewidth=0.5,
                   label=name if name != "grad_allreduce" else "grad_allreduce, exposed", zorder=3,
                   gid=f"phase/{name}")
            bottom = [b + h for b, h in zip(bottom, heights)]
        if any(hidden):
            ax.bar(x, hidden, bottom=bottom, width=0.75, color=color[name], alpha=0.3, hatch="//",
                   edgecolor=color[name], linewidth=0.5, label="grad_allreduce, hidden behind the backward",
                   zorder=3, gid=f"hidden/{name}")
            bottom = [b + h for b, h in zip(bottom, hidden)]
    step_ms = [row["breakdown"]["step_s"] * 1e3 for row in rows]
    ax.scatter(x, step_ms, marker="_", s=900, color="black", zorder=5, gid="step")
    for i, (row, ms, top) in enumerate(zip(rows, step_ms, bottom)):
        ax.annotate(f"{ms:.1f} ms\n{row['speedup']:.2f}x", (i, max(ms, top)), xytext=(0, 6),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([_plan_tick(row) for row in rows], fontsize=8)
    ax.set_ylabel("time per training step, ms (forward + backward)")
    ax.set_title(f"Predicted step breakdown: {title}")
    ax.set_ylim(0, max(step_ms + bottom) * 1.18)
    ax.legend(title="phase", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    fig.text(0.01, 0.01, "black line: step time (below the solid stack's top where an all-to-all hides behind "
             "compute); label: step and speedup over the baseline", fontsize=7, color="dimgray")
    fig.tight_layout()
    return fig


def _plot_plan(rows: list[dict], path: str, title: str) -> None:
    """`plan_figure` written whole into `path` (lshsim.io)."""
    _render.save_figure(plan_figure(rows, title), path, dpi=130)


def _plan_sweep(args) -> int:
    from rich.progress import Progress

    from lshsim.sim.moe_step import compare_options, plan_options
    from lshsim.models import load_model

    model_names = args.models or [args.model]
    cluster_names = args.clusters or [args.cluster]
    models = {name: load_model(name) for name in model_names}  # unknown names fail before any work
    selected = _plan_config(args)
    options = plan_options(selected, locmoe_share=args.locality_share)
    graphs = {name: _load_cluster(name, list(models.values()), selected, options) for name in cluster_names}
    results = []
    with Progress(console=_render.wide_console(), transient=True, disable=args.json) as progress:
        task = progress.add_task("simulating", total=len(models) * len(graphs) * len(options))
        for model_name, model in models.items():
            for cluster_name, graph in graphs.items():
                progress.update(task, description=f"{model_name} on {cluster_name}")
                fidelity = _fidelity(args, _world_size(graph))
                try:
                    rows = compare_options(model, graph, options, on_done=lambda _label: progress.advance(task),
                                           drain_tolerance=fidelity["drain_tolerance"],
                                           share_cache=not args.no_a2a_cache,
                                           estimate=fidelity["mode"] == "estimate")
                except ValueError as error:  # e.g. experts that cannot be placed on this cluster
                    progress.advance(task, len(options))
                    results.append({"model": model_name, "cluster": cluster_name, "refused": str(error)})
                    continue
                results.append({"model": model_name, "cluster": cluster_name, "fidelity": fidelity,
                                "options": _plan_rows_json(rows)})
    if args.json:
        _render.print_json({"sweep": results})
        return 0
    _render_sweep(results, [label for label, _ in options], options)
    return 0


def _render_sweep(results: list[dict], labels: list[str], options: list) -> None:
    from rich.table import Table

    from lshsim.sim.moe_step import describe

    console = _render.wide_console()
    table = Table(title="Sweep: baseline step and the speedup of each option over it")
    for column in ("model", "cluster", "baseline ms", "a2a share", *labels[1:]):
        table.add_column(column, justify="left" if column in ("model", "cluster") else "right")
    refused = []
    for item in results:
        if "refused" in item:
            table.add_row(item["model"], item["cluster"], "refused", *([""] * (len(labels))))
            refused.append(f"{item['model']} on {item['cluster']}: {item['refused']}")
            continue
        by_label = {row["label"]: row for row in item["options"]}
        base = by_label["baseline"]["breakdown"]
        table.add_row(item["model"], item["cluster"], f"{base['step_s'] * 1e3:.2f}", f"{100 * base['a2a_share']:.1f}%",
                      *(f"{by_label[label]['speedup']:.2f}x" for label in labels[1:]))
    console.print(table)
    console.print("[dim]options: " + "; ".join(f"{label} = {describe(config)}" for label, config in options) + "[/dim]")
    fidelities = {item["cluster"]: item["fidelity"] for item in results if "fidelity" in item}
    for cluster, fidelity in fidelities.items():
        exactness = {"exact": "exact", "estimate": "estimate"}.get(fidelity["mode"],
                                                                   f"tolerance {fidelity['drain_tolerance']:g}")
        console.print(f"[dim]fidelity on {cluster}: {exactness} ({fidelity['chosen']})[/dim]")
    for line in refused:
        console.print(f"[dim]refused: {line}[/dim]")
