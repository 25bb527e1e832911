"""The model catalog: the papers' MoE models as validated configs (`configs/*.yaml`).

`load_model("gpt-moe-15b")` reads `models/configs/gpt-moe-15b.yaml` (package data) and returns a
frozen `ModelConfig`; `load_model("path/to/my.yaml")` reads any file with the same fields;
`list_models()` names the shipped ones. The simulator (`lshsim.sim.moe_step`) reads a config by
duck typing: it never imports this package, so imports flow one way (the catalog above the simulator).

Shipped models (LSH-MoE, Nie et al., NeurIPS 2024, Table 1; top-2 gating). The number of MoE
layers is derived from Table 1's MoE parameter counts (each YAML shows the arithmetic):

==============  ======  =======  =====  =======  ==========
name            blocks  d_model  d_ffn  experts  MoE blocks
==============  ======  =======  =====  =======  ==========
roberta-moe     12      768      3072   16       4 (every 3rd)
t5-moe          32**    1024     16384  16       16 (every 2nd)
gpt-moe-15b     12      768      3072   512      6 (every 2nd)
gpt-moe-52b     24      1024     4096   512      12 (every 2nd)
swin-moe-l      24      512*     2048*  32       10 (`stages`)
==============  ======  =======  =====  =======  ==========

(*) Table 1 gives '-' for Swin-MoE-L because the width changes per stage: `stages` lists the four
stages (blocks, width, MoE blocks) for the parameter counts; d_model / d_ffn are the stage-3 block
the simulator costs every block as. (**) Table 1's 16 layers per stack, encoder + decoder.
Sequence length and tokens per GPU are not in Table 1 either; each YAML says what it assumes
(`assumed:` lists the fields that are our choice).

Today's MoE models, from their published Hugging Face config.json files (each YAML cites every
number; `lshsim.models.hf_config` reads such a config.json directly):

================  ======  =======  =====  ================  =====  ==========================
name              layers  d_model  d_ffn  experts (shared)  top-k  MoE layers, routing
================  ======  =======  =====  ================  =====  ==========================
deepseek-v3       61      7168     2048   256 (+1)          8      58 (3 dense first), node-limited M = 4, dropless
deepseek-v2-lite  27      2048     1408   64 (+2)           6      26 (1 dense first)
mixtral-8x7b      32      4096     14336  8                 2      32, dropless
mixtral-8x22b     56      6144     16384  8                 2      56, dropless
qwen3-30b-a3b     48      2048     768    128               8      48, dropless
qwen3-235b-a22b   94      4096     1536   128               8      94, dropless
dbrx              40      6144     10752  16                4      40, dropless
switch-base-128   12+12   768      3072   128               1      12 (every other), capacity
kimi-k2           61      7168     2048   384 (+1)          8      60 (1 dense first), dropless
glm-4.5           92      5120     1536   160 (+1)          8      89 (3 dense first), dropless
glm-4.5-air       46      4096     1408   128 (+1)          8      45 (1 dense first), dropless
gpt-oss-120b      36      2880     2880   128               4      36, dropless
gpt-oss-20b       24      2880     2880   32                4      24, dropless
llama-4-scout     48      5120     8192   16 (+1)           1      48, dropless
llama-4-maverick  48      5120     8192   128 (+1)          1      24 (every other), dropless
================  ======  =======  =====  ================  =====  ==========================

LocMoE's model (`locmoe-pangu`; LocMoE App. D, arXiv 2401.13920, with PanGu-alpha 13B's widths, which
PanGu-Sigma inherits: its YAML cites each number and lists the PanGu-alpha ones under `assumed:`):
40 layers, d_model 5120, d_ffn 20480, 16 experts, top-1, 8 MoE layers (every 5th), 40 heads.

Their parameter counts (`num_parameters`, `active_parameters`) use the attention layout
(`attention`: GQA or DeepSeek's MLA), gated FFNs (`ffn_matrices: 3`, SwiGLU), untied embeddings,
shared experts and the dense layers before the first MoE layer; tests/test_models_catalog.py checks
them against the published totals and active counts (3%).

What the step simulator (`lshsim.sim.moe_step`) reads of a model is `MODEL_FIELDS` and, where a
model has them, `OPTIONAL_MODEL_FIELDS`: the dense first layers (`first_dense_layers`, at
`dense_d_ffn`), `ffn_matrices` (SwiGLU's third matrix in every FFN) and the shared experts (costed in
the expert phase). MLA and GQA attention are costed as standard attention. It routes with `lshsim
plan`'s router and capacity factor; `--router model` takes the model's `router`, `router_options`
and `dropless` instead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from lshsim import bounds
from lshsim.checks import positive_int
from lshsim.readers import load_yaml, read_text
from lshsim.sim.phases import attention_parameters  # re-exported: the rule lives with the costs that use it

__all__ = ["ModelConfig", "Stage", "load_model", "list_models", "model_from_dict", "CONFIG_PACKAGE", "LIMITS",
           "ATTENTION_FIELDS", "attention_parameters"]

CONFIG_PACKAGE = "lshsim.models"
CONFIG_DIR = "configs"


#: plausible ranges of a model's sizes, from the one table `lshsim.bounds`, checked when a config is
#: read (a larger value is a typo or a unit error; whether a machine can simulate it is the commands'
#: check): the largest published models have ~100-200 layers, d_model ~ 2^14-2^15, d_ffn ~ 2^16-2^17,
#: 8-128 heads, a few thousand experts, vocabularies of ~2^18 and sequences of ~2^20 tokens. The
#: attention fields (heads, head and LoRA dimensions) and a stage's sizes are checked by the same table.
LIMITS = {name: int(bounds.maximum(bounds.kind_of(name)))
          for name in ("num_layers", "d_model", "d_ffn", "num_experts", "seq_len", "tokens_per_gpu", "vocab_size",
                       "top_k", "dense_d_ffn", "num_shared_experts", "attention_window")}


def _plausible(name: str, value) -> None:
    """ValueError 'NAME = VALUE is above LIMIT, the limit for ...' (`lshsim.bounds`) for a value above
    its kind's limit; None and non-numbers pass (the type checks say why)."""
    kind = bounds.kind_of(name)
    text = None if kind is None or value is None else bounds.describe(kind, value)
    if text is not None:
        raise ValueError(f"{name} = {text}")


@dataclass(frozen=True)
class Stage:
    """One stage of a hierarchical model (Swin): `blocks` blocks of width d_model / d_ffn, of which
    the 0-based `moe_blocks` are MoE blocks. Used for the parameter counts only."""

    blocks: int
    d_model: int
    d_ffn: int
    moe_blocks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("blocks", "d_model", "d_ffn"):
            positive_int(f"stages.{name}", getattr(self, name))
            _plausible(f"stages.{name}", getattr(self, name))
        if isinstance(self.moe_blocks, (str, bytes)) or not isinstance(self.moe_blocks, (tuple, list)):
            raise ValueError(f"stages.moe_blocks={self.moe_blocks!r} must be a list of block indices")
        for index in self.moe_blocks:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.blocks:
                raise ValueError(f"stages.moe_blocks={list(self.moe_blocks)!r}: {index!r} is not a block index "
                                 f"in [0, {self.blocks})")
        if len(set(self.moe_blocks)) != len(self.moe_blocks):
            raise ValueError(f"stages.moe_blocks={list(self.moe_blocks)!r} repeats a block")
        object.__setattr__(self, "moe_blocks", tuple(self.moe_blocks))


#: the fields of `attention:` per kind: "mha" (default when absent: 4 d^2 per layer), "gqa" (grouped
#: query attention: heads of head_dim, num_kv_heads key/value heads) and "mla" (DeepSeek's multi-head
#: latent attention; q_lora_rank None = a direct query projection, as DeepSeek-V2-Lite).
ATTENTION_FIELDS = {
    "mha": {"kind": True},
    "gqa": {"kind": True, "num_heads": True, "num_kv_heads": True, "head_dim": True},
    "mla": {"kind": True, "num_heads": True, "q_lora_rank": False, "kv_lora_rank": True, "qk_nope_head_dim": True,
            "qk_rope_head_dim": True, "v_head_dim": True},
}


def _attention(value) -> tuple:
    """`attention:` as a sorted tuple of (field, value) pairs, validated (errors name the field)."""
    if value is None or (isinstance(value, (dict, tuple, list)) and not value):
        return ()
    items = dict(value) if isinstance(value, (dict, tuple, list)) else None
    if items is None:
        raise ValueError(f"attention={value!r} must be a mapping with a kind ({', '.join(ATTENTION_FIELDS)})")
    kind = items.get("kind")
    if kind not in ATTENTION_FIELDS:
        raise ValueError(f"attention.kind={kind!r} must be one of {', '.join(ATTENTION_FIELDS)}")
    fields = ATTENTION_FIELDS[kind]
    unknown = sorted(set(items) - set(fields), key=str)
    if unknown:
        raise ValueError(f"attention: unknown field {unknown[0]!r} for kind {kind}; known: {', '.join(fields)}")
    for name, required in fields.items():
        if name == "kind":
            continue
        if name not in items:
            if required:
                raise ValueError(f"attention (kind {kind}) lacks the field {name!r}")
            items[name] = None
        if items[name] is not None or required:
            positive_int(f"attention.{name}", items[name])
            _plausible(f"attention.{name}", items[name])      # heads <= 2^16, dimensions <= 2^20
    if kind == "gqa" and items["num_heads"] % items["num_kv_heads"] != 0:
        raise ValueError(f"attention.num_kv_heads={items['num_kv_heads']} must divide "
                         f"attention.num_heads={items['num_heads']}")
    return tuple(sorted(items.items()))


def _stage(value) -> Stage:
    if isinstance(value, Stage):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"stages: {value!r} must be a mapping of blocks, d_model, d_ffn, moe_blocks")
    unknown = sorted(set(value) - set(Stage.__dataclass_fields__), key=str)
    if unknown:
        raise ValueError(f"stages: unknown field {unknown[0]!r}; known: blocks, d_model, d_ffn, moe_blocks")
    missing = [key for key in ("blocks", "d_model", "d_ffn") if key not in value]
    if missing:
        raise ValueError(f"stages: {value!r} lacks the field {missing[0]!r}")
    return Stage(**value)


@dataclass(frozen=True)
class ModelConfig:
    """One MoE transformer, as the simulator and the executor need it.

    name:              catalog name (the YAML file's stem).
    num_layers:        transformer layers (blocks); encoder + decoder together for T5.
    d_model:           hidden size d (the width of the tokens the all-to-alls move).
    d_ffn:             FFN inner size of one expert (and of the dense FFN layers).
    num_experts:       experts E per MoE layer.
    top_k:             experts per token (2 = GShard top-2, the paper's setting).
    moe_every:         an MoE layer every `moe_every` layers: layer l (0-based) is MoE when
                       (l + 1) % moe_every == 0 (moe_every = 2: layers 1, 3, 5, ... as in
                       GShard / Switch); 1 = every layer is MoE.
    seq_len:           tokens per sequence (the attention span, unless `attention_window`).
    tokens_per_gpu:    tokens per GPU per step (micro-batch sequences x seq_len): the default
                       workload of the simulator.
    vocab_size:        output classes of the head (vocabulary; 1000 ImageNet classes for Swin).
    bytes_per_element: 2 for bf16/fp16 activations on the wire.
    attention_window:  tokens each token attends to when smaller than seq_len (Swin's windows);
                       None = seq_len.
    source:            where the numbers come from.
    notes:             choices made where the source gives no number.
    assumed:           the fields whose values are our choice, not the source's. In YAML either a list
                       of names or a mapping {field: reason} (the reasons are kept in `assumptions`).
    assumptions:       ((field, reason), ...): why each assumed value was chosen (from an `assumed:`
                       mapping; empty for a list).
    stages:            optional, a hierarchical model's stages (Swin): a list of {blocks, d_model,
                       d_ffn, moe_blocks} whose blocks add up to num_layers. Only the parameter
                       counts read it; the simulator costs num_layers blocks of d_model / d_ffn with
                       an MoE block every moe_every.
    first_dense_layers: the first layers are dense FFN layers whatever moe_every says (DeepSeek's
                       first_k_dense_replace); default 0.
    dense_d_ffn:       FFN inner size of the dense layers when it differs from an expert's (DeepSeek:
                       intermediate_size 18432 vs moe_intermediate_size 2048); None = d_ffn.
    num_shared_experts: always-on experts of width d_ffn in every MoE layer (DeepSeek): every token
                       runs them on its own GPU, so they cost compute but no all-to-all.
    ffn_matrices:      2 (up, down: ReLU / GELU FFN) or 3 (gate, up, down: SwiGLU).
    attention:         optional mapping, the attention layout for the parameter counts
                       (`ATTENTION_FIELDS`: mha (default, 4 d^2), gqa, mla).
    cross_attention_layers: decoder layers with a cross-attention block (T5 / Switch); default 0.
    tie_embeddings:    the output head shares the input embedding (default True; False counts
                       vocab_size x d twice).
    router:            the published routing as a registered router name (`lshsim.dispatch.ROUTERS`;
                       topk, node_limited, ...); router_options its options (node_limited: max_nodes).
    dropless:          the model is trained without capacity (no token dropped: MegaBlocks, DeepSeek-V3).
    """

    name: str
    num_layers: int
    d_model: int
    d_ffn: int
    num_experts: int
    seq_len: int
    tokens_per_gpu: int
    top_k: int = 2
    moe_every: int = 2
    vocab_size: int = 50257
    bytes_per_element: int = 2
    attention_window: int | None = None
    source: str = ""
    notes: str = ""
    assumed: tuple[str, ...] = field(default_factory=tuple)
    assumptions: tuple = ()
    stages: tuple[Stage, ...] = field(default_factory=tuple)
    first_dense_layers: int = 0
    dense_d_ffn: int | None = None
    num_shared_experts: int = 0
    ffn_matrices: int = 2
    attention: tuple = ()
    cross_attention_layers: int = 0
    tie_embeddings: bool = True
    router: str = "topk"
    router_options: tuple = ()
    dropless: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name={self.name!r} must be a non-empty string")
        for name in ("num_layers", "d_model", "d_ffn", "num_experts", "seq_len", "tokens_per_gpu", "top_k",
                     "moe_every", "vocab_size", "bytes_per_element"):
            positive_int(name, getattr(self, name))
        for name in LIMITS:
            _plausible(name, getattr(self, name))        # lshsim.bounds (the optional ones checked below)
        for name in ("source", "notes"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r} must be text")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.moe_every > self.num_layers:
            raise ValueError(f"moe_every={self.moe_every} exceeds num_layers={self.num_layers}: "
                             "the model has no MoE layer")
        if self.bytes_per_element not in (1, 2, 4, 8):
            raise ValueError(f"bytes_per_element={self.bytes_per_element} must be 1, 2, 4 or 8")
        if self.attention_window is not None:
            positive_int("attention_window", self.attention_window)
            if self.attention_window > self.seq_len:
                raise ValueError(f"attention_window={self.attention_window} exceeds seq_len={self.seq_len}")
        if isinstance(self.assumed, str) or not isinstance(self.assumed, (tuple, list)):
            raise ValueError(f"assumed={self.assumed!r} must be a list of field names")
        if not all(isinstance(item, str) for item in self.assumed):
            raise ValueError(f"assumed={list(self.assumed)!r} must be a list of field names")
        if not isinstance(self.assumed, tuple):
            object.__setattr__(self, "assumed", tuple(self.assumed))
        unknown = sorted(set(self.assumed) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"assumed names unknown fields {unknown}")
        pairs = tuple(tuple(pair) for pair in (self.assumptions.items() if isinstance(self.assumptions, dict)
                                                else self.assumptions))
        for pair in pairs:
            if len(pair) != 2 or not isinstance(pair[1], str) or not pair[1].strip():
                raise ValueError(f"assumed.{pair[0] if pair else '?'}={pair[1] if len(pair) > 1 else None!r} "
                                 "must be the reason for the value (non-empty text)")
            if pair[0] not in self.assumed:
                raise ValueError(f"assumptions name {pair[0]!r}, which is not in assumed={list(self.assumed)!r}")
        object.__setattr__(self, "assumptions", pairs)
        if isinstance(self.stages, (str, bytes, dict)) or not isinstance(self.stages, (tuple, list)):
            raise ValueError(f"stages={self.stages!r} must be a list of stages")
        stages = tuple(_stage(stage) for stage in self.stages)
        if stages and sum(stage.blocks for stage in stages) != self.num_layers:
            raise ValueError(f"stages hold {sum(stage.blocks for stage in stages)} blocks in all, "
                             f"but num_layers={self.num_layers}")
        object.__setattr__(self, "stages", stages)
        self._check_moe_extensions()

    def _check_moe_extensions(self) -> None:
        for name in ("first_dense_layers", "num_shared_experts", "cross_attention_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        if self.dense_d_ffn is not None:
            positive_int("dense_d_ffn", self.dense_d_ffn)
        if self.ffn_matrices not in (2, 3):
            raise ValueError(f"ffn_matrices={self.ffn_matrices!r} must be 2 (up, down) or 3 (gate, up, down: SwiGLU)")
        if self.cross_attention_layers > self.num_layers:
            raise ValueError(f"cross_attention_layers={self.cross_attention_layers} exceeds num_layers={self.num_layers}")
        for name in ("tie_embeddings", "dropless"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        object.__setattr__(self, "attention", _attention(self.attention))
        if self.first_dense_layers and not self.moe_layers:
            raise ValueError(f"first_dense_layers={self.first_dense_layers} leaves no MoE layer among "
                             f"num_layers={self.num_layers} (moe_every={self.moe_every})")
        if not isinstance(self.router, str) or not self.router:
            raise ValueError(f"router={self.router!r} must be a router name")
        options = self.router_options
        if isinstance(options, dict):
            options = tuple(options.items())
        if isinstance(options, (str, bytes)) or not isinstance(options, (tuple, list)):
            raise ValueError(f"router_options={self.router_options!r} must be a mapping of option -> value")
        from lshsim.dispatch.routers import validate_router_params   # torch; the catalog sits above dispatch
        try:
            filled = validate_router_params(self.router, k=self.top_k, capacity_factor=None,
                                            options=dict(tuple(pair) for pair in options))
        except ValueError as error:
            raise ValueError(f"router={self.router!r}, router_options={dict(options)!r}: {error}") from None
        from lshsim import bounds

        for name, value in dict(tuple(pair) for pair in options).items():   # max_nodes: nodes (lshsim.bounds)
            bounds.check_field(f"router_options.{name}", value)
        object.__setattr__(self, "router_options", tuple(sorted(filled.items())))

    # ---- derived sizes -----------------------------------------------------------------------
    @property
    def moe_layers(self) -> tuple[int, ...]:
        """0-based indices of the MoE layers.

        >>> ModelConfig("x", 4, 8, 16, 4, seq_len=8, tokens_per_gpu=8).moe_layers
        (1, 3)
        """
        return tuple(layer for layer in range(self.first_dense_layers, self.num_layers)
                     if (layer + 1) % self.moe_every == 0)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def expert_parameters(self) -> int:
        """Weights of one expert FFN: ffn_matrices x d d_ffn (2: up and down; 3: SwiGLU; biases ignored)."""
        return self.ffn_matrices * self.d_model * self.d_ffn

    @property
    def dense_ffn_parameters(self) -> int:
        """Weights of one dense FFN layer: ffn_matrices x d x (dense_d_ffn or d_ffn)."""
        return self.ffn_matrices * self.d_model * (self.dense_d_ffn or self.d_ffn)

    @property
    def embedding_parameters(self) -> int:
        """The input embedding and the output head: vocab_size x d, twice when not tied."""
        return self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)

    def active_parameters(self, input_embedding: bool = True, output_head: bool = True) -> int:
        """Weights one token uses: every attention and dense FFN weight, per MoE layer its top_k routed
        experts, the shared experts and the gate, and the embeddings (`input_embedding=False` leaves
        out the input embedding table, a lookup rather than a matmul: DeepSeek's and gpt-oss's
        convention; `output_head=False` leaves out the output layer, and both GLM-4.5's convention; a
        tied table is counted only when neither flag leaves it out).

        >>> ModelConfig("x", 2, 4, 8, 4, seq_len=4, tokens_per_gpu=4, vocab_size=10, top_k=1).active_parameters()
        312
        """
        if self.stages:
            raise ValueError(f"model {self.name!r}: active_parameters does not count staged (Swin) models")
        dense_layers = self.num_layers - self.num_moe_layers
        attention = (self.num_layers + self.cross_attention_layers) * attention_parameters(self.d_model, self.attention)
        per_moe = (self.top_k + self.num_shared_experts) * self.expert_parameters + self.d_model * self.num_experts
        table = self.vocab_size * self.d_model
        if self.tie_embeddings:   # one table serves as both: counted only when neither is left out
            embedding = self.embedding_parameters if input_embedding and output_head else 0
        else:
            embedding = self.embedding_parameters - (0 if input_embedding else table) - (0 if output_head else table)
        return attention + dense_layers * self.dense_ffn_parameters + self.num_moe_layers * per_moe + embedding

    @property
    def num_parameters(self) -> int:
        """All weights: per layer attention 4 d^2, FFN 2 d d_ffn (dense) or E * 2 d d_ffn + d E
        (MoE: experts + gate), plus one embedding of vocab_size x d (tied head). Biases and norms
        are ignored (under 0.1% of these models). With `stages`, counted per stage instead
        (`_staged_parameters`).

        >>> ModelConfig("x", 2, 4, 8, 2, seq_len=4, tokens_per_gpu=4, vocab_size=10).num_parameters
        368
        """
        if self.stages:
            return self._staged_parameters()
        dense_layers = self.num_layers - self.num_moe_layers
        attention = (self.num_layers + self.cross_attention_layers) * attention_parameters(self.d_model, self.attention)
        dense_ffn = dense_layers * self.dense_ffn_parameters
        return attention + dense_ffn + self.moe_parameters + self.embedding_parameters

    @property
    def moe_parameters(self) -> int:
        """Weights of the MoE layers: per MoE layer E routed and the shared experts of
        ffn_matrices x d d_ffn plus the gate's d E (per stage with `stages`). Table 1's 'MoE params'.

        >>> ModelConfig("x", 2, 4, 8, 2, seq_len=4, tokens_per_gpu=4, vocab_size=10).moe_parameters
        136
        """
        if self.stages:
            return sum(len(s.moe_blocks) * self.num_experts * (2 * s.d_model * s.d_ffn + s.d_model) for s in self.stages)
        return self.num_moe_layers * (self.num_experts * (self.expert_parameters + self.d_model)
                                      + self.num_shared_experts * self.expert_parameters)

    def _staged_parameters(self) -> int:
        """num_parameters with `stages`: per stage its blocks (attention 4 d^2, dense FFN 2 d f or
        MoE), a patch merging of 4 d_i x d_(i+1) between stages (Swin), and a head of
        vocab_size x the last width."""
        total = self.moe_parameters
        for stage in self.stages:
            total += stage.blocks * 4 * stage.d_model ** 2
            total += (stage.blocks - len(stage.moe_blocks)) * 2 * stage.d_model * stage.d_ffn
        for first, second in zip(self.stages, self.stages[1:]):
            total += 4 * first.d_model * second.d_model
        return total + self.vocab_size * self.stages[-1].d_model

    @property
    def bytes_per_token(self) -> int:
        """Bytes of one token on the wire: d_model * bytes_per_element."""
        return self.d_model * self.bytes_per_element

    def check_placement(self, world_size: int) -> None:
        """Refuse a GPU count the experts cannot be spread over evenly (E % W != 0).

        Every rank holds E / W experts (expert parallelism, no replicas). E < W would need expert
        replicas or sharding, which the simulator does not model.
        """
        positive_int("world_size", world_size)
        if self.num_experts % world_size != 0:
            raise ValueError(
                f"model {self.name!r} has num_experts={self.num_experts} per MoE layer, which cannot be placed "
                f"on {world_size} GPUs: expert parallelism needs num_experts % gpus == 0 "
                f"({self.num_experts} % {world_size} = {self.num_experts % world_size}); "
                f"use a cluster whose GPU count divides {self.num_experts}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["assumed"] = dict(self.assumptions) if self.assumptions else list(self.assumed)
        out.pop("assumptions")
        out["stages"] = [{**stage, "moe_blocks": list(stage["moe_blocks"])} for stage in out["stages"]]
        out["attention"] = dict(self.attention)
        out["router_options"] = dict(self.router_options)
        return out


_FIELDS = set(ModelConfig.__dataclass_fields__)


def model_from_dict(data: dict, name: str | None = None) -> ModelConfig:
    """A ModelConfig from a YAML mapping; unknown keys are refused by name."""
    if not isinstance(data, dict):
        raise ValueError(f"a model config must be a mapping, got {type(data).__name__}")
    data = dict(data)
    if name is not None:
        data.setdefault("name", name)
    unknown = sorted((key for key in data if key not in _FIELDS), key=str)
    if unknown:
        raise ValueError(f"model config has unknown field {unknown[0]!r} (given {data[unknown[0]]!r}); "
                         f"known: {', '.join(sorted(_FIELDS))}")
    required = ("name", "num_layers", "d_model", "d_ffn", "num_experts", "seq_len", "tokens_per_gpu")
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(f"model config lacks the field {missing[0]!r} (required: {', '.join(required)})")
    if "assumed" in data and data["assumed"] is None:
        data["assumed"] = ()
    if isinstance(data.get("assumed"), dict):          # {field: reason}: the names and their reasons
        reasons = data["assumed"]
        for key, reason in reasons.items():
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"assumed.{key}={reason!r} must be the reason for the value (non-empty text)")
        data["assumed"], data["assumptions"] = tuple(reasons), tuple(reasons.items())
    elif "assumptions" in data:
        raise ValueError("assumptions is derived from an assumed: mapping; give assumed: {field: reason}")
    for key in ("stages", "attention", "router_options"):
        if key in data and data[key] is None:
            data[key] = ()
    for key in ("source", "notes"):
        if key in data and data[key] is None:
            data[key] = ""
    return ModelConfig(**data)


def _config_files() -> dict[str, object]:
    """name -> Traversable of every shipped YAML."""
    folder = resources.files(CONFIG_PACKAGE).joinpath(CONFIG_DIR)
    return {entry.name[:-len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def list_models() -> list[str]:
    """Names of the shipped models, sorted."""
    return sorted(_config_files())


def load_model(name_or_path: str | Path) -> ModelConfig:
    """A shipped model by name, any YAML file by path, or a Hugging Face MoE config.json by path
    (a path ending in .json: `lshsim.models.hf_config`).

    >>> load_model("gpt-moe-15b").num_experts
    512
    """
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".json"):                     # a Hugging Face MoE config.json
        from lshsim.models.hf_config import load_hf_config

        return load_hf_config(path)
    if text.endswith((".yaml", ".yml")) or path.exists():
        return _parse(read_text(path, "model file"), path.stem, text)
    files = _config_files()
    if text not in files:
        raise ValueError(f"unknown model {text!r}; known: {', '.join(sorted(files))} (or a path to a .yaml file "
                         "or to a Hugging Face config.json; `lshsim catalog --models` lists them with their sizes)")
    return _parse(files[text].read_text(), text, text)


def _parse(text: str, stem: str, where: str) -> ModelConfig:
    data = load_yaml(text=text, source=where)      # syntax errors, duplicate keys, an empty file: refused
    try:
        return model_from_dict(data, name=stem)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from None
