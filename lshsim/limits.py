"""Sizes too large for the machine, refused before the work starts, with the estimate and the limit.

Each `estimate_*` function returns an `Estimate` (bytes of memory at the peak, seconds of work,
and the formula in words) from the arguments of a command alone, without allocating anything;
`refuse_if_too_large(what, estimate, limit_bytes)` raises a ValueError naming the estimate, the
formula and the limit when the estimate exceeds the limit. The limit is the memory this machine has
available now (`available_memory_bytes`: psutil if installed, else /proc/meminfo's MemAvailable,
else os.sysconf), so a size that fits is never refused because of a constant.

The per-element constants were measured on the reference machine (CPU, float32, 2 cores) with
`/usr/bin/time -f %M` on the commands below and rounded up; they are estimates, meant to be right
within a factor of about two, so that a run 100x too large is refused in milliseconds instead of
failing on an allocation after minutes.

- routing synthetic tokens (`lshsim route`, the routing of `lshsim plan`), T tokens in all, hidden
  width d, E experts: hidden states T*d*4 bytes plus the gate logits and their softmax/top-k copies
  T*E*16 plus 64 bytes of indices per token; time about 1.3e-8 s per T*d element
  (`route --tokens 200000 --world 8`: 1.6M tokens x 1024: 7.2 GB, 20 s);
- a flow-level all-to-all on W ranks (`lshsim simulate`, each all-to-all of `plan`): W^2 flows of
  about 512 bytes each (the flow objects, their paths and the (W, W) matrices); about 10 us per flow
  (512 ranks: 262,144 flows, 0.1 GB, 2 s);
- the trace of a simulated step (`lshsim plan`): about 1.1 kB and 20 us per (layer, rank, option)
  (12 -> 120 layers of gpt-moe-15b on 32 GPUs, 7 options: +26 MB, +0.5 s);
- one executor rank (`lshsim run`): the tokens, the dispatch/combine buffers and the bare
  all-to-all's (k copies each, sent and received), the expert activations and the weights with
  their gradients, at the workload's element size (see `estimate_executor_rank`).

>>> e = estimate_route(tokens=2_000_000_000, d_model=1024, num_experts=16, k=2)
>>> round(e.bytes / 2 ** 40)
8
>>> refuse_if_too_large("route", e, 24 * 2 ** 30)
Traceback (most recent call last):
...
ValueError: route needs about 8.1 TiB of memory ... this machine has 24.0 GiB available ...
"""
from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Estimate", "available_memory_bytes", "refuse_if_too_large", "format_size", "format_duration",
           "estimate_route", "estimate_flows", "estimate_plan", "estimate_executor_rank",
           "estimate_plan_routing", "HIDDEN_VALUES_IN_BLOCKS",
           "ROUTE_BYTES_PER_HIDDEN", "ROUTE_BYTES_PER_LOGIT", "ROUTE_BYTES_PER_TOKEN", "ROUTE_S_PER_ELEMENT",
           "FLOW_BYTES", "FLOW_S", "TIME_LIMIT_S", "refuse_if_too_slow", "estimate_monte_carlo",
           "estimate_matrix", "NORMAL_S_PER_ELEMENT", "TRACE_BYTES_PER_RECORD", "TRACE_S_PER_RECORD", "MEMORY_FRACTION"]

ROUTE_BYTES_PER_HIDDEN = 4      # float32 hidden states, per (token, feature)
ROUTE_BYTES_PER_LOGIT = 16      # logits, softmax and top-k copies, per (token, expert)
ROUTE_BYTES_PER_TOKEN = 64      # token ids, ranks, slots, kept flags, per token
ROUTE_S_PER_ELEMENT = 1.3e-8    # seconds per (token, feature) of hidden state drawn and projected
FLOW_BYTES = 512                # per flow of a flow-level all-to-all
FLOW_S = 1e-5                   # seconds per flow
TRACE_BYTES_PER_RECORD = 1100   # per (layer, rank, option) of a simulated step
TRACE_S_PER_RECORD = 2e-5
#: a command whose estimated time exceeds this is refused (`refuse_if_too_slow`): one hour
TIME_LIMIT_S = 3600.0
NORMAL_S_PER_ELEMENT = 1.5e-8   # numpy: one standard normal draw and its share of a dot product and norm
#: the share of the available memory a command may plan to use (the rest: Python, libraries, the OS)
MEMORY_FRACTION = 0.9


@dataclass(frozen=True)
class Estimate:
    """What a piece of work needs: `bytes` of memory at the peak, `seconds` of work, `formula` in words."""
    bytes: float
    seconds: float
    formula: str

    def __add__(self, other: "Estimate") -> "Estimate":
        return Estimate(self.bytes + other.bytes, self.seconds + other.seconds, f"{self.formula}; {other.formula}")


def format_size(num_bytes: float) -> str:
    """Bytes in IEC units, one decimal.

    >>> format_size(3 * 2 ** 30), format_size(512)
    ('3.0 GiB', '512 B')
    """
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(value) < 1024 or unit == "EiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"  # pragma: no cover


def format_duration(seconds: float) -> str:
    """Seconds as s, min, h or days.

    >>> format_duration(12.3), format_duration(7200)
    ('12 s', '2.0 h')
    """
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.3g} days"


def available_memory_bytes() -> int:
    """Memory available to a new allocation now: psutil's `available`, else /proc/meminfo's
    MemAvailable, else physical pages x page size."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil not installed or not supported here
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def refuse_if_too_large(what: str, estimate: Estimate, limit_bytes: float | None = None, *,
                        limit_name: str = "this machine has", hint: str = "") -> None:
    """ValueError `what: ... needs about X of memory (estimate: FORMULA), about T; LIMIT` when
    `estimate.bytes` exceeds MEMORY_FRACTION of `limit_bytes` (default: `available_memory_bytes()`)."""
    if limit_bytes is None:
        limit_bytes = available_memory_bytes()
    if estimate.bytes <= MEMORY_FRACTION * limit_bytes:
        return
    duration = "" if estimate.seconds <= 0 else " and under 1 s" if estimate.seconds < 1 else \
        f" and about {format_duration(estimate.seconds)}"         # not "about under 1 s"
    raise ValueError(f"{what} needs about {format_size(estimate.bytes)} of memory{duration} "
                     f"(estimate: {estimate.formula}); {limit_name} "
                     f"{format_size(limit_bytes)} available (at most {MEMORY_FRACTION:.0%} of it is planned for)"
                     + (f"; {hint}" if hint else ""))


def refuse_if_too_slow(what: str, estimate: Estimate, limit_s: float = TIME_LIMIT_S, hint: str = "") -> None:
    """ValueError naming the estimated time, the formula and the limit when `estimate.seconds` > `limit_s`."""
    if estimate.seconds <= limit_s:
        return
    raise ValueError(f"{what} would take about {format_duration(estimate.seconds)} (estimate: {estimate.formula}); "
                     f"the limit is {format_duration(limit_s)}" + (f"; {hint}" if hint else ""))


def estimate_monte_carlo(samples: int, dim: int, draws_per_sample: int = 1) -> Estimate:
    """A Monte Carlo over `samples` Gaussian vectors of `dim` coordinates (`draws_per_sample` vectors
    each), drawn in chunks of about 16 MiB: time NORMAL_S_PER_ELEMENT per coordinate."""
    elements = float(samples) * dim * draws_per_sample
    return Estimate(min(elements * 8.0, 64.0 * 2 ** 20), elements * NORMAL_S_PER_ELEMENT,
                    f"{samples:.3g} samples x {draws_per_sample} x {dim} coordinates x {NORMAL_S_PER_ELEMENT:g} s")


def estimate_matrix(rows: float, columns: float, copies: int = 8, bytes_per_element: int = 8) -> Estimate:
    """`copies` dense (rows, columns) arrays of `bytes_per_element` (e.g. a (W, W) traffic matrix
    and its per-algorithm derivatives)."""
    elements = float(rows) * float(columns)
    return Estimate(elements * copies * bytes_per_element, elements * copies * 1e-9,
                    f"{copies} arrays of {rows:.3g} x {columns:.3g} x {bytes_per_element} B")


def estimate_route(tokens: int, d_model: int, num_experts: int, k: int = 1) -> Estimate:
    """Routing `tokens` synthetic tokens in all (every rank's together) of width `d_model` over
    `num_experts` experts (module docstring)."""
    t, d, e = float(tokens), float(d_model), float(num_experts)
    memory = t * (ROUTE_BYTES_PER_HIDDEN * d + ROUTE_BYTES_PER_LOGIT * e + ROUTE_BYTES_PER_TOKEN * max(k, 1)) \
        + ROUTE_BYTES_PER_HIDDEN * d * e
    return Estimate(memory, t * d * ROUTE_S_PER_ELEMENT,
                    f"routing {t:.3g} tokens x (4 B x d_model {d:.0f} + 16 B x {e:.0f} experts + 64 B x k {k})")


def estimate_flows(world_size: int, collectives: int = 1) -> Estimate:
    """One flow-level all-to-all on `world_size` ranks (W^2 flows), `collectives` distinct ones in time."""
    flows = float(world_size) ** 2
    return Estimate(flows * FLOW_BYTES, flows * FLOW_S * max(collectives, 1),
                    f"{flows:.3g} flows (W={world_size} ranks squared) x {FLOW_BYTES} B")


#: the most hidden-state values `lshsim.dispatch.synthetic_router_inputs` holds at once when a shipped
#: router reads only the logits or the group means: two row blocks of under 2 x its BLOCK_VALUES (2^25) each
HIDDEN_VALUES_IN_BLOCKS = 4 * 2 ** 25


def _check_sizes(function: str, whole_hidden: object, **sizes) -> None:
    """A plan estimate's arguments: whole numbers >= 1 and whole_hidden True or False; anything else
    (0, -1, NaN, 1.5, "no") gave a negative or meaningless estimate that no limit could refuse."""
    import numbers

    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{function}: {name}={value!r} must be a whole number >= 1")
    if not isinstance(whole_hidden, bool):
        raise ValueError(f"{function}: whole_hidden={whole_hidden!r} must be True or False")


def estimate_plan_routing(routed: int, gate_width: int, num_experts: int, k: int,
                          whole_hidden: bool = True) -> Estimate:
    """The routing of a plan's `routed` synthetic tokens (`estimate_route`). whole_hidden=False: every
    option's router is a shipped one, which gets the hidden states' (T, E) group means, not the (T, d)
    states (`lshsim.sim.moe_step._draw_inputs`): the states are drawn in row blocks, at most
    HIDDEN_VALUES_IN_BLOCKS values held, plus the (T, E) means; the work is the same. Every size a
    whole number >= 1 (ValueError naming it)."""
    _check_sizes("estimate_plan_routing", whole_hidden, routed=routed, gate_width=gate_width,
                 num_experts=num_experts, k=k)
    route = estimate_route(routed, gate_width, num_experts, k)
    whole = float(routed) * gate_width
    held = min(whole, float(HIDDEN_VALUES_IN_BLOCKS)) + float(routed) * num_experts
    if whole_hidden or held >= whole:
        return route
    return Estimate(route.bytes - ROUTE_BYTES_PER_HIDDEN * (whole - held), route.seconds,
                    f"{route.formula}, the hidden states held as their (T, E) group means and row blocks of "
                    f"at most {HIDDEN_VALUES_IN_BLOCKS:.3g} values")


def estimate_plan(*, world_size: int, num_layers: int, d_model: int, num_experts: int, k: int,
                  tokens_per_gpu: int, max_routed_tokens: int, options: int = 7,
                  whole_hidden: bool = True) -> Estimate:
    """`lshsim plan` of one model on one cluster: the routing of the subsampled tokens (as
    `lshsim.sim.moe_step.route_traffic` subsamples; `estimate_plan_routing`, whole_hidden=False when
    every option routes with a shipped router), the flow-level all-to-alls and the step traces of
    `options` options. Every size a whole number >= 1 (ValueError naming it)."""
    _check_sizes("estimate_plan", whole_hidden, world_size=world_size, num_layers=num_layers, d_model=d_model,
                 num_experts=num_experts, k=k, tokens_per_gpu=tokens_per_gpu, max_routed_tokens=max_routed_tokens,
                 options=options)
    routed = max(1, min(tokens_per_gpu, max_routed_tokens // max(world_size, 1))) * world_size
    gate_width = num_experts * -(-d_model // num_experts)    # the widest (locmoe) synthetic hidden state
    records = float(num_layers) * world_size * options
    trace = Estimate(records * TRACE_BYTES_PER_RECORD, records * TRACE_S_PER_RECORD,
                     f"{records:.3g} trace records ({num_layers} layers x {world_size} GPUs x {options} options) "
                     f"x {TRACE_BYTES_PER_RECORD} B")
    return (estimate_plan_routing(routed, gate_width, num_experts, k, whole_hidden)
            + estimate_flows(world_size, options) + trace)


def estimate_executor_rank(*, tokens_per_rank: int, d_model: int, d_ffn: int, num_experts: int, world_size: int,
                           k: int, bytes_per_element: int = 4, backward: bool = True) -> Estimate:
    """The peak memory of one executor rank running a workload: the tokens (and their gradient), the
    dispatch and combine buffers and the bare all-to-all's (T*k rows each, sent and received), the
    expert FFN activations (T*k x d_ffn) and the rank's experts' two weight matrices (and gradients)."""
    t, d, f, b = float(tokens_per_rank), float(d_model), float(d_ffn), float(bytes_per_element)
    grad = 2.0 if backward else 1.0
    experts_here = max(1.0, num_experts / max(world_size, 1))
    rows = t * max(k, 1)
    memory = b * (grad * t * d + 6.0 * rows * d + grad * 2.0 * rows * f + grad * 2.0 * experts_here * d * f)
    return Estimate(memory, 0.0,
                    f"{b:.0f} B x ({grad:.0f} x T {t:.0f} x d {d:.0f} + 6 x T*k {rows:.0f} x d + {2 * grad:.0f} x "
                    f"T*k x d_ffn {f:.0f} + {2 * grad:.0f} x {experts_here:g} experts x d x d_ffn)")
