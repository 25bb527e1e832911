"""Physical plausibility limits of the values in input files: one table, used by every reader.

A value of the right type can still be absurd: `alpha_s: 5e6` (meant 5e-6), a link of `25e18` B/s, a
model with 10^12 heads. Such a value is a typo or a unit slip, and simulating it only turns it into
absurd numbers, so every reader of an input file refuses a value above its kind's limit with one
line naming the file, the field, the value, the limit and why (`check`), and suggests the slip where
it is obvious (an exponent whose sign was dropped, b/s for Gb/s, B/s for GB/s).

The limits are generous: no real configuration comes near them (every committed file is well below,
the nearest being a B200's 8e12 B/s of HBM, 12x under its limit, and DeepSeek-V3's dense d_ffn of
18,432, 57x under; tests/test_input_limits.py loads them all). They are judgement, not measurements:
they say "no such hardware or model exists", not "this is slow". Whether this machine can simulate a size is
a different check, `lshsim.limits` (memory and time estimates).

==================  =============  ==============================================================
kind                limit          why
==================  =============  ==============================================================
latency_s           1 s            a per-message or per-hop latency (alpha_s, *latency_s, the
                                   start-up across nodes a2a_internode_alpha_s and its cost per
                                   remote peer a2a_remote_peer_s): links, switches and collectives
                                   start in microseconds; a round trip around the earth takes 0.2 s
duration_s          3600 s         one collective, send, kernel or phase (a measured or fitted time,
                                   a2a_excess_s, exchange_s): no single operation of a training
                                   step lasts an hour
duration_us         3.6e9 us       the same in microseconds (published_latency_us, nccl-tests' time)
rate_Bps            1e14 B/s       a link, NIC, PCIe, memory or copy bandwidth (*_Bps, a bus
                                   bandwidth curve): 100 TB/s; the fastest today are HBM3e (8e12)
                                   and NVLink 5 (1.8e12 per GPU)
nic_gbps            8e5 Gb/s       a NIC line rate (*_gbps; = 1e14 B/s): NICs run 400-800 Gb/s
published_GBps      1e4 GB/s       a published per-GPU bandwidth (= 1e13 B/s, above any link)
flops               1e18 FLOP/s    one GPU's compute rate (*flops): the fastest dense peak is
                                   about 1e16 (FP4)
bytes               2^50 B         a memory, buffer, chunk, message or traffic size (*_bytes, a
                                   traffic matrix entry): 1 PiB; a GPU holds at most 288 GB
ratio               1024           an oversubscription or headroom factor (*oversubscription,
                                   *headroom): fabrics are oversubscribed 1-8x, headrooms are 1-2
channels            1024           NCCL channels (p2p_channels, channels_per_peer): NCCL has 64
links               1024           NVLink / HCCS links of one GPU (intra.links): GPUs have 18
dim                 2^20           a model width (d_model, hidden, d_ffn, dense_d_ffn, head_dim,
                                   LoRA ranks, lsh_dim): published models reach 2^15 / 2^17
heads               2^16           attention heads (num_heads, num_kv_heads): models use 8-128
experts             2^16           experts of one MoE layer (num_experts, shared experts, top-k):
                                   published models have at most a few thousand
layers              2^14           transformer layers: published models have 100-200
tokens              2^24           tokens per GPU, per rank, per sequence (seq_len,
                                   tokens_per_gpu, tokens_per_rank, input_clusters): 16 M
vocab               2^24           vocabulary entries: published models use about 2^18
gpus                2^20           GPUs or ranks in all (world_size, ep, tp): clusters have 1e5
nodes               65536          servers of a cluster
gpus_per_node       1024           GPUs of one server (the largest NVLink domain announced: 576)
count               2^20           warm-up steps, iterations
skew                100            a workload's popularity skew (logits += skew log Dirichlet):
                                   at 100 the log-popularity gaps of about 1 become logit gaps
                                   of 100, a softmax ratio e^-100 below float32's smallest normal
                                   number: every token already goes to the same experts
noise               100            a workload's input_noise (token = centre + noise N(0, I/d)):
                                   at 100 the centre is 1% of the token; near 2^8 it drops below
                                   bfloat16's precision and the clusters are plain noise
lsh_hashes          64             LSH hash functions per token (the paper uses 6; the bucket
                                   count grows as (2 d')^L)
capacity_factor     1e6            a router's capacity factor: above E / k it drops nothing, and
                                   C = ceil(factor T k / E) must stay a 64-bit integer
speedup             1000           a published speedup (a figure's value)
routed_tokens       2^32           tokens routed in all by the step simulator (max_routed_tokens):
                                   the routing holds (tokens, experts) float32 scores, 128 GiB at
                                   2^32 tokens of 8 experts; a step routes at most W x T
chunks              1024           pipeline chunks of one all-to-all (overlap_chunks, simulate
                                   --chunks): Tutel's adaptive pipelining tries 1-8; each chunk
                                   is a simulated phase and a kernel launch
locality_bonus      1000           LocMoE's own-node bonus added to the GrAP scores, ReLU logits
                                   of order 1 (at most 1.15 on the simulator's synthetic tokens
                                   of width 1024; the default bonus is 1); at 1e12 float32 no
                                   longer tells the scores beside it apart (ties)
element_bytes       64 B           bytes per element (bytes_per_element, grad_bytes_per_element):
                                   fp8 to fp64 are 1-8
rotation_rounds     64             H D rounds of an LSH Hadamard rotation (lsh.rounds): FALCONN
                                   uses 3; each round is one pass over the tokens
jobs                4096           worker processes of one command (sweep --jobs): the largest
                                   servers have a few hundred cores (1e12 overflowed a C int)
steps_per_octave    64             sizes per doubling of a calibration sweep: nccl-tests steps by
                                   2x; 64 is a 1% step, below the run-to-run noise
copy_rate           1e12 /s        token copies hashed or restored per second (breakeven
                                   --hash-Mtps, --restore-Mtps): one GPU moves at most its HBM
                                   rate, 8e12 B/s over 2 kB tokens = 4e9/s; an H100 does 2e7-7e7
==================  =============  ==============================================================

Four kinds also have a lower limit for positive values, where a rate typed with its exponent's sign
flipped (`25e-9` for `25e9`) would otherwise simulate for centuries: rate_Bps 1 kB/s, nic_gbps 1e-3 Gb/s
(1 Mb/s), published_GBps 1e-6 GB/s (1 kB/s), flops 1e6 FLOP/s. Zero and negative values stay the readers'
own checks.

`FIELD_KINDS` maps a field's name (its last dotted part) to its kind, by exact name and then by
suffix, so that a reader that checks numbers generically (a topology's fields, a family's own
fields) needs no list of its own: `kind_of("intra.pcie_latency_s")` is "latency_s".

>>> check("latency_s", "intra.latency_s", 1e-6, source="c.yaml")
1e-06
>>> check("latency_s", "alpha_s", 5e6, source="c.yaml")
Traceback (most recent call last):
...
ValueError: c.yaml: alpha_s = 5e+06 is above 1 s, the limit for a per-message or per-hop latency (links, switches and collectives start in microseconds; a round trip around the earth takes 0.2 s); did you mean 5e-06?
>>> check("rate_Bps", "inter.link_Bps", 25e-9, source="c.yaml")
Traceback (most recent call last):
...
ValueError: c.yaml: inter.link_Bps = 2.5e-08 is below 1000 B/s, the lower limit for a link, NIC, PCIe, memory or copy bandwidth (1 kB/s; 10 Mb/s Ethernet moves 1.25e6 B/s)
>>> kind_of("inter.nic_gbps"), kind_of("calibration.links.nic.link_max_Bps"), kind_of("name")
('nic_gbps', 'rate_Bps', None)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Limit", "LIMITS", "FIELD_KINDS", "FIELD_SUFFIXES", "kind_of", "describe", "check", "check_field",
           "maximum"]


@dataclass(frozen=True)
class Limit:
    """The largest plausible value of a kind: `maximum` in `unit`, `what` the kind is, `why` the limit."""

    maximum: float
    unit: str
    what: str
    why: str
    #: the smallest plausible positive value (0: none); zero and negative values are the readers' checks
    minimum: float = 0.0
    minimum_why: str = ""

    def text(self, bound: float | None = None) -> str:
        """A limit as written in messages (the maximum unless `bound`): '1 s', '1e+14 B/s', '1048576' (a power
        of two in full)."""
        bound = self.maximum if bound is None else bound
        whole = float(bound).is_integer()
        power_of_two = whole and bound >= 1 and int(bound) & (int(bound) - 1) == 0
        value = f"{int(bound)}" if power_of_two or (whole and bound < 1e7) else f"{bound:g}"
        return f"{value} {self.unit}".strip()


#: kind -> Limit (the module docstring's table)
LIMITS: dict[str, Limit] = {
    "latency_s": Limit(1.0, "s", "a per-message or per-hop latency",
                       "links, switches and collectives start in microseconds; a round trip around the earth "
                       "takes 0.2 s"),
    "duration_s": Limit(3600.0, "s", "one collective, send, kernel or phase",
                        "no single operation of a training step lasts an hour"),
    "duration_us": Limit(3.6e9, "us", "one collective, send, kernel or phase",
                         "no single operation of a training step lasts an hour"),
    "rate_Bps": Limit(1e14, "B/s", "a link, NIC, PCIe, memory or copy bandwidth",
                      "100 TB/s; the fastest today are HBM3e, 8e12, and NVLink 5, 1.8e12 per GPU",
                      minimum=1e3, minimum_why="1 kB/s; 10 Mb/s Ethernet moves 1.25e6 B/s"),
    "nic_gbps": Limit(8e5, "Gb/s", "a NIC line rate", "800,000 Gb/s = 1e14 B/s; NICs run 400-800 Gb/s",
                      minimum=1e-3, minimum_why="1 Mb/s; the slowest Ethernet runs 10 Mb/s"),
    "published_GBps": Limit(1e4, "GB/s", "a published per-GPU bandwidth", "1e13 B/s, above any link",
                            minimum=1e-6, minimum_why="1 kB/s"),
    "flops": Limit(1e18, "FLOP/s", "one GPU's compute rate", "the fastest dense peak is about 1e16 FLOP/s (FP4)",
                   minimum=1e6, minimum_why="1 MFLOP/s, a 1980s processor; GPUs run 1e13-1e16"),
    "bytes": Limit(float(2 ** 50), "B", "a memory, buffer, chunk, message or traffic size",
                   "1 PiB; a GPU holds at most 288 GB"),
    "ratio": Limit(1024.0, "", "an oversubscription or headroom factor",
                   "fabrics are oversubscribed 1-8x, link headrooms are 1-2"),
    "channels": Limit(1024.0, "", "NCCL channels", "NCCL has at most 64"),
    "links": Limit(1024.0, "", "NVLink or HCCS links of one GPU", "GPUs have at most 18"),
    "dim": Limit(float(2 ** 20), "", "a model width (d_model, d_ffn, a head or LoRA dimension)",
                 "published models reach d_model 2^15 and d_ffn 2^17"),
    "heads": Limit(float(2 ** 16), "", "attention heads", "models use 8-128 heads"),
    "experts": Limit(float(2 ** 16), "", "experts of one MoE layer", "published models have at most a few thousand"),
    "layers": Limit(float(2 ** 14), "", "transformer layers", "published models have 100-200"),
    "tokens": Limit(float(2 ** 24), "", "tokens per GPU, per rank or per sequence",
                    "16 M tokens; published steps use 4 k-128 k per GPU"),
    "vocab": Limit(float(2 ** 24), "", "vocabulary entries", "published models use about 2^18"),
    "gpus": Limit(float(2 ** 20), "", "GPUs or ranks in all", "the largest clusters hold about 1e5 GPUs"),
    "nodes": Limit(65536.0, "", "servers of a cluster", "the largest clusters hold about 1e4 servers"),
    "gpus_per_node": Limit(1024.0, "", "GPUs of one server", "the largest NVLink domain announced holds 576"),
    "count": Limit(float(2 ** 20), "", "warm-up steps or timed iterations", "a measurement repeats 1-1000 times"),
    "skew": Limit(100.0, "", "a popularity skew (logits += skew x log Dirichlet)",
                  "at 100 the logit gaps give softmax ratios of e^-100, below float32's smallest normal number: "
                  "every token already goes to the same experts"),
    "noise": Limit(100.0, "", "an input noise (token = centre + noise x N(0, I/d))",
                   "at 100 the centre is 1% of the token; near 2^8 it is below bfloat16's precision"),
    "lsh_hashes": Limit(64.0, "", "LSH hash functions per token",
                        "the paper uses 6; the bucket count grows as (2 d')^L"),
    "capacity_factor": Limit(1e6, "", "a router's capacity factor",
                             "above E / k it drops nothing, and C = ceil(factor T k / E) must stay a 64-bit integer"),
    "speedup": Limit(1000.0, "", "a published speedup", "papers report 1-10x"),
    "routed_tokens": Limit(float(2 ** 32), "", "tokens routed in all by the step simulator",
                           "the routing holds (tokens, experts) float32 scores, 128 GiB at 2^32 tokens of 8 experts; "
                           "a step routes at most W x T tokens"),
    "chunks": Limit(1024.0, "", "pipeline chunks of one all-to-all",
                    "Tutel's adaptive pipelining tries 1-8; each chunk is a simulated phase and a kernel launch"),
    "locality_bonus": Limit(1000.0, "", "LocMoE's own-node bonus added to the GrAP scores",
                            "the scores are ReLU logits of order 1, at most 1.15 on the simulator's synthetic tokens of "
                            "width 1024 (the default bonus is 1); at 1e12 float32 no longer tells the scores beside it "
                            "apart"),
    "element_bytes": Limit(64.0, "B", "bytes per element", "fp8 to fp64 take 1-8 bytes"),
    "rotation_rounds": Limit(64.0, "", "H D rounds of an LSH Hadamard rotation",
                             "FALCONN uses 3; each round is one pass over the tokens"),
    "jobs": Limit(4096.0, "", "worker processes of one command",
                  "the largest servers have a few hundred cores; 1e12 overflowed a C int"),
    "steps_per_octave": Limit(64.0, "", "sizes per doubling of a calibration sweep",
                              "nccl-tests steps by 2x; 64 is a 1% step, below the run-to-run noise"),
    "copy_rate": Limit(1e12, "/s", "token copies hashed or restored per second",
                       "one GPU moves at most its HBM rate, 8e12 B/s over 2 kB tokens = 4e9/s; an H100 does 2e7-7e7"),
}

#: field name (the last dotted part) -> kind, for names the suffixes below do not give
FIELD_KINDS: dict[str, str] = {
    "alpha_s": "latency_s", "kernel_launch_s": "latency_s", "dedup_kernel_alpha_s": "latency_s",
    "a2a_internode_alpha_s": "latency_s", "a2a_remote_peer_s": "latency_s",
    "time_s": "duration_s", "a2a_excess_s": "duration_s", "exchange_s": "duration_s",
    "exchange_single_s": "duration_s", "expert_floor_s": "duration_s", "published_latency_us": "duration_us",
    "peak_flops": "flops", "expert_flops": "flops", "flops_per_s": "flops",
    "memory_bytes": "bytes", "size_bytes": "bytes", "bytes": "bytes", "bytes_per_rank": "bytes",
    "chunk_bytes": "bytes", "grad_bucket_bytes": "bytes", "Bps": "rate_Bps",
    "oversubscription": "ratio", "core_oversubscription": "ratio", "headroom": "ratio",
    "a2a_link_headroom": "ratio",
    "p2p_channels": "channels", "channels_per_peer": "channels", "links": "links",
    "d_model": "dim", "hidden": "dim", "d_ffn": "dim", "dense_d_ffn": "dim", "head_dim": "dim",
    "q_lora_rank": "dim", "kv_lora_rank": "dim", "qk_nope_head_dim": "dim", "qk_rope_head_dim": "dim",
    "v_head_dim": "dim", "lsh_dim": "dim", "proj_dim": "dim",
    "num_heads": "heads", "num_kv_heads": "heads",
    "num_experts": "experts", "experts": "experts", "experts_per_rank": "experts", "num_shared_experts": "experts",
    "top_k": "experts", "k": "experts",
    "num_layers": "layers", "blocks": "layers",
    "seq_len": "tokens", "tokens_per_gpu": "tokens", "tokens_per_rank": "tokens", "attention_window": "tokens",
    "input_clusters": "tokens",
    "vocab_size": "vocab",
    "world_size": "gpus", "ep": "gpus", "tp": "gpus",
    "nodes": "nodes", "servers_per_leaf": "nodes", "leaves_per_pod": "nodes",
    "gpus_per_node": "gpus_per_node", "nics_per_node": "gpus_per_node", "group_size": "gpus_per_node",
    "warmup": "count", "iterations": "count",
    "skew": "skew", "input_noise": "noise",
    "num_hashes": "lsh_hashes", "lsh_hashes": "lsh_hashes", "dispatch_metadata_bytes": "bytes",
    "combine_metadata_bytes": "bytes",
    "capacity_factor": "capacity_factor",
    "published_GBps": "published_GBps",
    "max_routed_tokens": "routed_tokens", "overlap_chunks": "chunks", "chunks": "chunks",
    "locality_bonus": "locality_bonus", "bytes_per_element": "element_bytes", "grad_bytes_per_element": "element_bytes",
    "rounds": "rotation_rounds", "max_nodes": "nodes", "scores_per_node": "experts",
}
#: (suffix, kind): a field whose name ends so is of that kind (after FIELD_KINDS)
FIELD_SUFFIXES: tuple[tuple[str, str], ...] = (("latency_s", "latency_s"), ("_Bps", "rate_Bps"), ("_gbps", "nic_gbps"),
                                               ("flops", "flops"), ("_bytes", "bytes"))


def kind_of(field: str) -> str | None:
    """The kind of a field by its name (the last dotted part, without an index), or None."""
    name = str(field).rsplit(".", 1)[-1].split("[", 1)[0]
    if name in FIELD_KINDS:
        return FIELD_KINDS[name]
    return next((kind for suffix, kind in FIELD_SUFFIXES if name.endswith(suffix)), None)


def maximum(kind: str) -> float:
    """The limit of a kind (`LIMITS`)."""
    return LIMITS[kind].maximum


def _number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:g}"


def _hint(kind: str, value: float) -> str:
    """'; did you mean ...?' where the slip is obvious, else ''."""
    if not value > 0:
        return ""
    if kind == "latency_s":
        if 1e3 <= value < 1e10:     # 5e6 for 5e-6: the exponent's sign dropped (1e-10 s and up is plausible)
            exponent = math.floor(math.log10(value))
            mantissa = round(value / 10 ** exponent, 6)
            return f"; did you mean {mantissa:g}e-{exponent:02d}?"
        if value < 1e3:             # 5 for 5 us
            return f"; the field is in seconds: {_number(value)} us is {value * 1e-6:g} s"
        return ""
    if kind == "nic_gbps" and 1e9 <= value <= LIMITS[kind].maximum * 1e9:
        return f"; the field is in Gb/s: did you mean {value / 1e9:g}?"
    if kind == "published_GBps" and 1e9 <= value <= LIMITS[kind].maximum * 1e9:
        return f"; the field is in GB/s: did you mean {value / 1e9:g}?"
    return ""


def describe(kind: str, value, hint: bool = True) -> str | None:
    """None when `value` is within the kind's limit in magnitude (or not a number: the readers'
    type checks say so), else 'VALUE is above LIMIT, the limit for WHAT (WHY)[; did you mean ...?]'
    (the slip's hint only with `hint`: it is in the kind's unit)."""
    limit = LIMITS[kind]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    if 0 < abs(value) < limit.minimum:   # a rate typed with its exponent's sign flipped (25e-9 for 25e9)
        return (f"{_number(value)} is below {limit.text(limit.minimum)}, the lower limit for {limit.what} "
                f"({limit.minimum_why})")
    if abs(value) <= limit.maximum:       # (a negative value's sign is the readers' check)
        return None
    return (f"{_number(value)} is above {limit.text()}, the limit for {limit.what} ({limit.why})"
            f"{_hint(kind, value) if hint else ''}")


def check(kind: str, field: str, value, source: str | None = None):
    """`value` when within the limit of `kind`; else ValueError 'SOURCE: FIELD = VALUE is above ...'."""
    text = describe(kind, value)
    if text is None:
        return value
    raise ValueError(f"{source + ': ' if source else ''}{field} = {text}")


def check_field(field: str, value, source: str | None = None):
    """`check` with the kind of the field's name (`kind_of`); a field of no kind is returned as it is."""
    kind = kind_of(field)
    return value if kind is None else check(kind, field, value, source)
