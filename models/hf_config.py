"""Read a Hugging Face MoE `config.json` into a `ModelConfig` (`load_model("path/config.json")`).

Supported `model_type`s and the fields each reads (the Hugging Face names):

==========================  =====================================================================
model_type                  fields
==========================  =====================================================================
deepseek_v2, deepseek_v3    hidden_size, intermediate_size (dense layers), moe_intermediate_size,
                            n_routed_experts, n_shared_experts, num_experts_per_tok,
                            first_k_dense_replace, moe_layer_freq (1), num_hidden_layers,
                            num_attention_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim,
                            qk_rope_head_dim, v_head_dim, n_group, topk_group (-> node_limited
                            with max_nodes = topk_group when topk_group < n_group)
kimi_k2                     as deepseek_v3 (Kimi K2 ships DeepSeek-V3's architecture under its own name)
glm4_moe                    hidden_size, intermediate_size (dense layers), moe_intermediate_size,
                            n_routed_experts, n_shared_experts, num_experts_per_tok,
                            first_k_dense_replace, num_hidden_layers, num_attention_heads,
                            num_key_value_heads, head_dim, n_group, topk_group (as deepseek)
mixtral                     hidden_size, intermediate_size, num_local_experts, num_experts_per_tok,
                            num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim
llama4_text (llama4: its    hidden_size, intermediate_size (experts and the shared expert),
text_config)                intermediate_size_mlp (dense layers), num_local_experts, num_experts_per_tok,
                            interleave_moe_layer_step, moe_layers (checked against the step),
                            num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim;
                            one shared expert; llama4's vision_config is not counted
gpt_oss                     as mixtral, and experts_per_token (must equal num_experts_per_tok);
                            layer_types / sliding_window (banded layers) are not read: every layer
                            is planned with full attention
qwen3_moe (and qwen2_moe    hidden_size, moe_intermediate_size, num_experts, num_experts_per_tok,
without shared experts)     decoder_sparse_step, mlp_only_layers ([] only), num_hidden_layers,
                            num_attention_heads, num_key_value_heads, head_dim
dbrx                        d_model, n_heads, n_layers, attn_config.kv_n_heads,
                            ffn_config.{ffn_hidden_size, moe_num_experts, moe_top_k, ffn_act_fn}
switch_transformers         d_model, d_ff, d_kv, num_heads, num_layers, num_decoder_layers,
                            num_experts, num_sparse_{encoder,decoder}_layers or
                            {encoder,decoder}_sparse_step, feed_forward_proj / dense_act_fn
==========================  =====================================================================

All of them: vocab_size, tie_word_embeddings, hidden_act (silu / swiglu / gated-<act> -> 3 FFN matrices,
relu / gelu / ... -> 2; an activation not listed in `_GATED` / `_PLAIN` is refused). Fields
that do not change the parameter counts or the all-to-all (norm epsilons, RoPE, dropout, token ids,
loss coefficients, ...) are ignored by name (`IGNORED`); any other field is refused with an error
naming the file, the field and its value, and so is a missing required field or a value the
catalog cannot represent (e.g. moe_layer_freq 2 with dense layers first). A config.json holds no
training sequence length nor batch: seq_len is min(4096, max_position_embeddings) and
tokens_per_gpu 4096, both listed under `assumed`; capacity is not in the file either (dropless
False, the catalog's default; `lshsim plan --capacity-factor none` plans dropless routing).
"""
from __future__ import annotations

import re
from pathlib import Path

from lshsim import bounds as _bounds

__all__ = ["load_hf_config", "model_from_hf_config", "MODEL_TYPES", "IGNORED", "GENERIC"]

#: assumed when the file does not say (it never does): tokens per sequence and per GPU
DEFAULT_SEQ_LEN = 4096
DEFAULT_TOKENS_PER_GPU = 4096

#: fields read nowhere but known to change neither the parameter counts nor the all-to-all traffic
IGNORED = frozenset({
    "_name_or_path", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "model_type",
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "initializer_range",
    "initializer_factor", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "rope_scaling",
    "rope_parameters", "rope_interleave", "attention_dropout", "attention_bias", "use_cache", "output_router_logits",
    "router_aux_loss_coef", "router_jitter_noise", "router_z_loss_coef", "router_bias", "router_dtype",
    "router_ignore_padding_tokens", "add_router_probs", "sliding_window", "use_sliding_window", "max_window_layers",
    "quantization_config", "pretraining_tp", "aux_loss_alpha", "seq_aux", "ep_size", "norm_topk_prob",
    "num_nextn_predict_layers", "routed_scaling_factor", "scoring_func", "topk_method", "num_key_value_heads_dense",
    "qkv_bias", "use_qk_norm", "resid_pdrop", "emb_pdrop", "dropout_rate", "relative_attention_num_buckets",
    "relative_attention_max_distance", "is_encoder_decoder", "is_gated_act", "expert_capacity",
    "max_position_embeddings", "max_seq_len", "n_positions", "hidden_act", "dense_act_fn", "feed_forward_proj",
    "tie_word_embeddings", "vocab_size", "head_dim", "num_key_value_heads", "model_max_length",
    # glm4_moe: attention and RoPE details that change neither the counts lshsim makes nor the all-to-all
    "partial_rotary_factor",
    # gpt_oss: the SwiGLU clamp, RoPE's pre-YaRN length and the banded-attention layout (see the table above)
    "swiglu_limit", "initial_context_length", "layer_types",
    # llama4_text: attention chunking, NoPE layers, temperature tuning (neither counts nor the all-to-all)
    "attention_chunk_size", "attn_scale", "attn_temperature_tuning", "floor_scale", "no_rope_layers",
    "no_rope_layer_interval", "for_llm_compressor", "cache_implementation",
})
#: the multimodal llama4 wrapper's own fields besides text_config (the image tokens and the vision tower)
LLAMA4_WRAPPER = frozenset({"boi_token_index", "eoi_token_index", "image_token_index", "vision_config",
                            "text_config"})

#: the generic fields of transformers' PretrainedConfig (generation defaults, labels, output flags), which a
#: re-saved config.json repeats at the top level and inside nested configs (DBRX's ffn_config / attn_config)
GENERIC = frozenset({
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "pruned_heads", "chunk_size_feed_forward", "is_decoder", "cross_attention_hidden_size", "add_cross_attention",
    "tie_encoder_decoder", "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix", "sep_token_id", "task_specific_params",
    "problem_type", "quantization",
})
IGNORED = IGNORED | GENERIC

_GATED = ("silu", "swiglu", "swish", "gated-gelu", "gated-silu")
#: activations of one input matrix (transformers' ACT2FN names and T5's feed_forward_proj): any other name is refused,
#: rather than planned with 2 matrices whatever it is; a T5-style "gated-<act>" is gated whatever <act> is
_PLAIN = ("relu", "gelu", "gelu_new", "gelu_fast", "gelu_python", "gelu_pytorch_tanh", "gelu_accurate", "gelu_10",
          "quick_gelu", "relu2", "relu6", "leaky_relu", "tanh", "sigmoid", "mish", "linear", "laplace", "prelu")


#: a config.json field -> its kind in `lshsim.bounds` (where its name does not say it); the limits are checked on
#: the config's own field, so a refusal names the field as the file has it
HF_KINDS = {"hidden_size": "dim", "d_model": "dim", "intermediate_size": "dim", "moe_intermediate_size": "dim",
            "shared_expert_intermediate_size": "dim", "ffn_hidden_size": "dim", "d_ff": "dim",
            "num_attention_heads": "heads", "num_key_value_heads": "heads", "n_heads": "heads", "num_heads": "heads",
            "kv_n_heads": "heads", "n_routed_experts": "experts", "n_shared_experts": "experts",
            "num_local_experts": "experts", "num_experts": "experts", "num_experts_per_tok": "experts",
            "experts_per_token": "experts",
            "moe_num_experts": "experts", "moe_top_k": "experts", "n_group": "experts", "topk_group": "experts",
            "num_hidden_layers": "layers", "n_layers": "layers", "num_layers": "layers",
            "num_decoder_layers": "layers", "first_k_dense_replace": "layers"}


class _Reader:
    """Typed reads of one config.json mapping; errors name the file, the field and the value."""

    def __init__(self, data: dict, source: str, prefix: str = "") -> None:
        self.data, self.source, self.prefix = data, source, prefix

    def fail(self, key: str, value, why: str) -> ValueError:
        return ValueError(f"{self.source}: {self.prefix}{key}={value!r} {why}")

    def integer(self, key: str, default=None, *, required: bool = True, minimum: int = 1, allow_none: bool = False):
        if key not in self.data:
            if required and default is None:
                raise ValueError(f"{self.source}: the field {self.prefix}{key!r} is missing (required for "
                                 f"model_type {self.data.get('model_type', '?')!r})")
            return default
        value = self.data[key]
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, value, f"must be an integer >= {minimum}")
        kind = HF_KINDS.get(key) or _bounds.kind_of(key)
        if kind is not None:      # the plausibility limit, named by the config's own field (lshsim.bounds)
            _bounds.check(kind, f"{self.prefix}{key}", value, source=self.source)
        return value

    def mapping(self, key: str) -> "_Reader":
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, value, "must be an object")
        return _Reader(value, self.source, f"{self.prefix}{key}.")

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, value, "must be true or false")
        return value

    def refuse_unknown(self, read: set[str], ignored: frozenset = IGNORED) -> None:
        unknown = sorted(key for key in self.data if key not in read and key not in ignored)
        if unknown:
            key = unknown[0]
            raise ValueError(f"{self.source}: unknown field {self.prefix}{key}={self.data[key]!r} for model_type "
                             f"{self.data.get('model_type', '?')!r} (lshsim.models.hf_config reads "
                             f"{', '.join(sorted(read))}; ignores fields that change neither the parameters nor "
                             f"the all-to-all)")


def _ffn_matrices(reader: _Reader, *keys: str) -> int:
    for key in keys:
        if key in reader.data:
            value = reader.data[key]
            if not isinstance(value, str):
                raise reader.fail(key, value, "must be an activation name")
            name = value.lower()
            if name in _GATED or (name.startswith("gated-") and name[6:] in _PLAIN):
                return 3
            if name in _PLAIN:
                return 2
            raise reader.fail(key, value, f"is not an activation lshsim knows (gated, 3 FFN matrices: "
                              f"{', '.join(_GATED)}, gated-<act>; plain, 2: {', '.join(_PLAIN)})")
    return 3


def _common(reader: _Reader, d_model_key: str = "hidden_size") -> dict:
    data = reader.data
    positions = next((data[k] for k in ("max_position_embeddings", "max_seq_len", "n_positions") if k in data), None)
    if positions is not None and (isinstance(positions, bool) or not isinstance(positions, int) or positions < 1):
        raise reader.fail("max_position_embeddings", positions, "must be an integer >= 1")
    return {"vocab_size": reader.integer("vocab_size"),
            "tie_embeddings": reader.boolean("tie_word_embeddings", False),
            "seq_len": min(DEFAULT_SEQ_LEN, positions or DEFAULT_SEQ_LEN),
            "tokens_per_gpu": DEFAULT_TOKENS_PER_GPU}


#: the MoE fields DeepSeek's config.json names, which GLM-4.5's shares
_DEEPSEEK_MOE = {"hidden_size", "intermediate_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
                 "num_experts_per_tok", "first_k_dense_replace", "num_hidden_layers", "num_attention_heads", "n_group",
                 "topk_group"}


def _deepseek_moe(r: _Reader, attention: dict) -> dict:
    """The layers and MoE of a DeepSeek-style config (routed and shared experts, dense layers first at
    intermediate_size) with the given attention; group-limited routing (n_group groups, a token's experts in its
    best topk_group) as the node_limited router with max_nodes = topk_group where fewer groups are kept than exist."""
    groups, kept = r.integer("n_group", 1), r.integer("topk_group", 1)
    if kept > groups:
        raise r.fail("topk_group", kept, f"exceeds n_group={groups}")
    experts = r.integer("n_routed_experts")
    if experts % groups:      # the router splits the experts' scores into n_group equal groups
        raise r.fail("n_group", groups, f"must divide n_routed_experts={experts} (the router scores n_group equal "
                     "groups of experts)")
    out = {"num_layers": r.integer("num_hidden_layers"), "d_model": r.integer("hidden_size"),
           "d_ffn": r.integer("moe_intermediate_size"), "dense_d_ffn": r.integer("intermediate_size"),
           "num_experts": r.integer("n_routed_experts"), "num_shared_experts": r.integer("n_shared_experts", 0, minimum=0),
           "top_k": r.integer("num_experts_per_tok"), "moe_every": 1,
           "first_dense_layers": r.integer("first_k_dense_replace", 0, minimum=0), "attention": attention,
           "ffn_matrices": _ffn_matrices(r, "hidden_act")}
    if kept < groups:
        out["router"], out["router_options"] = "node_limited", {"max_nodes": kept}
    return out


def _deepseek(r: _Reader) -> tuple[dict, set]:
    read = _DEEPSEEK_MOE | {"moe_layer_freq", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                            "v_head_dim"}
    frequency = r.integer("moe_layer_freq", 1)
    if frequency != 1:
        raise r.fail("moe_layer_freq", frequency, "is not supported (the catalog places MoE layers at (l + 1) % "
                     "moe_every == 0, DeepSeek at l % moe_layer_freq == 0: they agree only for 1)")
    attention = {"kind": "mla", "num_heads": r.integer("num_attention_heads"),
                 "q_lora_rank": r.integer("q_lora_rank", required=False, allow_none=True),
                 "kv_lora_rank": r.integer("kv_lora_rank"), "qk_nope_head_dim": r.integer("qk_nope_head_dim"),
                 "qk_rope_head_dim": r.integer("qk_rope_head_dim"), "v_head_dim": r.integer("v_head_dim")}
    return _deepseek_moe(r, attention), read


def _glm4_moe(r: _Reader) -> tuple[dict, set]:
    """GLM-4.5: DeepSeek's MoE fields with grouped-query attention instead of MLA."""
    return _deepseek_moe(r, _gqa(r, r.integer("hidden_size"))), set(_DEEPSEEK_MOE)


def _llama4_text(r: _Reader) -> tuple[dict, set]:
    """Llama 4's text model: top-k over num_local_experts plus one shared expert of the routed width, MoE
    every interleave_moe_layer_step-th layer (layers step - 1, 2 step - 1, ...: the catalog's moe_every)."""
    read = {"hidden_size", "intermediate_size", "intermediate_size_mlp", "num_local_experts", "num_experts_per_tok",
            "interleave_moe_layer_step", "moe_layers", "num_hidden_layers", "num_attention_heads"}
    layers, step = r.integer("num_hidden_layers"), r.integer("interleave_moe_layer_step", 1)
    expected = list(range(step - 1, layers, step))
    if "moe_layers" in r.data and r.data["moe_layers"] != expected:
        raise r.fail("moe_layers", r.data["moe_layers"], f"is not every {step}-th layer ({expected[:4]}...): "
                     "the catalog has moe_every only")
    d = r.integer("hidden_size")
    return {"num_layers": layers, "d_model": d, "d_ffn": r.integer("intermediate_size"),
            "dense_d_ffn": r.integer("intermediate_size_mlp", required=False),
            "num_experts": r.integer("num_local_experts"), "num_shared_experts": 1,
            "top_k": r.integer("num_experts_per_tok"), "moe_every": step, "attention": _gqa(r, d),
            "ffn_matrices": _ffn_matrices(r, "hidden_act")}, read


def _gpt_oss(r: _Reader) -> tuple[dict, set]:
    """gpt-oss: Mixtral's fields; its config.json also says the top-k as experts_per_token."""
    fields, read = _mixtral(r)
    if "experts_per_token" in r.data:
        k = r.integer("experts_per_token")
        if k != fields["top_k"]:
            raise r.fail("experts_per_token", k, f"disagrees with num_experts_per_tok={fields['top_k']}")
    return fields, read | {"experts_per_token"}


def _gqa(r: _Reader, d_model: int, heads_key: str = "num_attention_heads", kv_key: str = "num_key_value_heads") -> dict:
    heads = r.integer(heads_key)
    kv = r.integer(kv_key, heads)
    head_dim = r.integer("head_dim", required=False, allow_none=True)
    if head_dim is None:
        if d_model % heads:
            raise r.fail(heads_key, heads, f"does not divide hidden_size={d_model} and the file gives no head_dim "
                         f"(the head width would be {d_model} / {heads})")
        head_dim = d_model // heads
    return {"kind": "gqa", "num_heads": heads, "num_kv_heads": kv, "head_dim": head_dim}


def _mixtral(r: _Reader) -> tuple[dict, set]:
    read = {"hidden_size", "intermediate_size", "num_local_experts", "num_experts_per_tok", "num_hidden_layers",
            "num_attention_heads"}
    d = r.integer("hidden_size")
    return {"num_layers": r.integer("num_hidden_layers"), "d_model": d, "d_ffn": r.integer("intermediate_size"),
            "num_experts": r.integer("num_local_experts"), "top_k": r.integer("num_experts_per_tok"), "moe_every": 1,
            "attention": _gqa(r, d), "ffn_matrices": _ffn_matrices(r, "hidden_act")}, read


def _qwen_moe(r: _Reader) -> tuple[dict, set]:
    read = {"hidden_size", "intermediate_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok",
            "decoder_sparse_step", "mlp_only_layers", "num_hidden_layers", "num_attention_heads"}
    only_dense = r.data.get("mlp_only_layers", [])
    if only_dense:
        raise r.fail("mlp_only_layers", only_dense, "is not supported (dense layers at arbitrary indices; the catalog "
                     "has first_dense_layers and moe_every only)")
    for key in ("shared_expert_intermediate_size",):
        if r.data.get(key):
            raise r.fail(key, r.data[key], "is not supported (a shared expert of another width than the routed ones)")
    d = r.integer("hidden_size")
    return {"num_layers": r.integer("num_hidden_layers"), "d_model": d, "d_ffn": r.integer("moe_intermediate_size"),
            "num_experts": r.integer("num_experts"), "top_k": r.integer("num_experts_per_tok"),
            "moe_every": r.integer("decoder_sparse_step", 1), "attention": _gqa(r, d),
            "ffn_matrices": _ffn_matrices(r, "hidden_act")}, read


def _dbrx(r: _Reader) -> tuple[dict, set]:
    read = {"d_model", "n_heads", "n_layers", "attn_config", "ffn_config"}
    attn, ffn = r.mapping("attn_config"), r.mapping("ffn_config")
    attn.refuse_unknown({"kv_n_heads"}, GENERIC | {"clip_qkv", "rope_theta", "attn_pdrop", "model_type",
                                                   "_name_or_path", "transformers_version", "architectures",
                                                   "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                                                   "tie_word_embeddings", "is_encoder_decoder", "torch_dtype"})
    ffn.refuse_unknown({"ffn_hidden_size", "moe_num_experts", "moe_top_k", "ffn_act_fn"},
                       GENERIC | {"moe_jitter_eps", "moe_loss_weight", "moe_normalize_expert_weights", "model_type",
                                  "uniform_expert_assignment", "ffn_weight_decay", "_name_or_path",
                                  "transformers_version", "architectures", "bos_token_id", "eos_token_id",
                                  "pad_token_id", "decoder_start_token_id", "tie_word_embeddings",
                                  "is_encoder_decoder", "torch_dtype"})
    act = ffn.data.get("ffn_act_fn", {"name": "silu"})
    if not isinstance(act, dict) or not isinstance(act.get("name"), str):
        raise ffn.fail("ffn_act_fn", act, "must be an object with a name")
    matrices = _ffn_matrices(_Reader({"ffn_act_fn.name": act["name"]}, ffn.source, ffn.prefix), "ffn_act_fn.name")
    d, heads = r.integer("d_model"), r.integer("n_heads")
    if d % heads:
        raise r.fail("n_heads", heads, f"does not divide d_model={d} (DBRX's head width is d_model / n_heads)")
    return {"num_layers": r.integer("n_layers"), "d_model": d, "d_ffn": ffn.integer("ffn_hidden_size"),
            "num_experts": ffn.integer("moe_num_experts"), "top_k": ffn.integer("moe_top_k"), "moe_every": 1,
            "attention": {"kind": "gqa", "num_heads": heads, "num_kv_heads": attn.integer("kv_n_heads", heads),
                          "head_dim": d // heads},
            "ffn_matrices": matrices}, read


def _switch(r: _Reader) -> tuple[dict, set]:
    read = {"d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers", "num_experts",
            "num_sparse_encoder_layers", "num_sparse_decoder_layers", "encoder_sparse_step", "decoder_sparse_step"}
    encoder = r.integer("num_layers")
    decoder = r.integer("num_decoder_layers", encoder)
    steps = []
    for stack, layers in (("encoder", encoder), ("decoder", decoder)):
        sparse = r.integer(f"num_sparse_{stack}_layers", required=False, minimum=0)
        step = r.integer(f"{stack}_sparse_step", required=False, minimum=0)
        derived = layers // sparse if sparse else None
        if step is not None and derived is not None and step != derived:
            raise r.fail(f"{stack}_sparse_step", step, f"disagrees with num_sparse_{stack}_layers={sparse} "
                         f"({layers} // {sparse} = {derived})")
        step = step if step is not None else derived
        if not step:
            raise ValueError(f"{r.source}: the field 'num_sparse_{stack}_layers' (or '{stack}_sparse_step') is missing "
                             f"or 0: no MoE layer in the {stack}")
        steps.append(step)
    if steps[0] != steps[1] or encoder % steps[0] != 0:
        raise r.fail("decoder_sparse_step", steps[1], f"with encoder step {steps[0]} and {encoder} encoder layers is "
                     "not supported (one stack of encoder + decoder layers with one moe_every)")
    d, heads = r.integer("d_model"), r.integer("num_heads")
    out = {"num_layers": encoder + decoder, "d_model": d, "d_ffn": r.integer("d_ff"),
           "num_experts": r.integer("num_experts"), "top_k": 1, "moe_every": steps[0],
           "attention": {"kind": "gqa", "num_heads": heads, "num_kv_heads": heads, "head_dim": r.integer("d_kv")},
           "cross_attention_layers": decoder, "ffn_matrices": _ffn_matrices(r, "feed_forward_proj", "dense_act_fn")}
    return out, read


_GQA_NAMES = {"attention.num_heads": "num_attention_heads", "attention.num_kv_heads": "num_key_value_heads",
              "attention.head_dim": "head_dim"}
_MIXTRAL_NAMES = {"num_layers": "num_hidden_layers", "d_model": "hidden_size", "d_ffn": "intermediate_size",
                  "num_experts": "num_local_experts", "top_k": "num_experts_per_tok", **_GQA_NAMES}
_DEEPSEEK_NAMES = {"num_layers": "num_hidden_layers", "d_model": "hidden_size", "d_ffn": "moe_intermediate_size",
                   "dense_d_ffn": "intermediate_size", "num_experts": "n_routed_experts",
                   "num_shared_experts": "n_shared_experts", "top_k": "num_experts_per_tok",
                   "first_dense_layers": "first_k_dense_replace", "attention.num_heads": "num_attention_heads"}
#: model_type -> {the catalog's field: the config.json field it came from}: a refusal of the catalog's checks (top_k
#: above num_experts, kv heads not dividing the heads, no MoE layer left) names the field as the file has it
CONFIG_NAMES = {"deepseek_v2": _DEEPSEEK_NAMES, "deepseek_v3": _DEEPSEEK_NAMES, "kimi_k2": _DEEPSEEK_NAMES,
                "glm4_moe": {**_DEEPSEEK_NAMES, **_GQA_NAMES}, "mixtral": _MIXTRAL_NAMES, "gpt_oss": _MIXTRAL_NAMES,
                "llama4_text": {**_MIXTRAL_NAMES, "dense_d_ffn": "intermediate_size_mlp",
                                "moe_every": "interleave_moe_layer_step"},
                "qwen3_moe": {**_MIXTRAL_NAMES, "d_ffn": "moe_intermediate_size", "num_experts": "num_experts",
                              "moe_every": "decoder_sparse_step"},
                "dbrx": {"num_layers": "n_layers", "d_ffn": "ffn_config.ffn_hidden_size",
                         "num_experts": "ffn_config.moe_num_experts", "top_k": "ffn_config.moe_top_k",
                         "attention.num_heads": "n_heads", "attention.num_kv_heads": "attn_config.kv_n_heads"},
                "switch_transformers": {"d_ffn": "d_ff", "attention.num_heads": "num_heads",
                                        "attention.head_dim": "d_kv"}}
CONFIG_NAMES["llama4"] = {key: f"text_config.{name}" for key, name in CONFIG_NAMES["llama4_text"].items()}
CONFIG_NAMES["qwen2_moe"] = CONFIG_NAMES["qwen3_moe"]


def _config_names(message: str, model_type: str) -> str:
    """`message` (a catalog refusal) with each `field=` of the catalog renamed to the config.json field it came from."""
    names = CONFIG_NAMES.get(model_type, {})
    if not names:
        return message
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(key) for key in sorted(names, key=len, reverse=True))
                         + r")=")
    return pattern.sub(lambda match: f"{names[match.group(1)]}=", message)


#: model_type -> reader of the MoE fields (returns the ModelConfig fields and the config fields it read)
MODEL_TYPES = {"deepseek_v2": _deepseek, "deepseek_v3": _deepseek, "kimi_k2": _deepseek, "glm4_moe": _glm4_moe,
               "mixtral": _mixtral, "gpt_oss": _gpt_oss, "llama4_text": _llama4_text, "llama4": _llama4_text,
               "qwen3_moe": _qwen_moe, "qwen2_moe": _qwen_moe,
               "dbrx": _dbrx, "switch_transformers": _switch}


def model_from_hf_config(data: dict, name: str, source: str = "<config.json>") -> "ModelConfig":
    """A ModelConfig from a parsed Hugging Face config.json (`source` names the file in errors)."""
    from lshsim.models.catalog import ModelConfig

    if not isinstance(data, dict):
        raise ValueError(f"{source}: a Hugging Face config.json must be a JSON object, got {type(data).__name__}")
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:   # a list: unhashable (a traceback)
        raise ValueError(f"{source}: model_type={model_type!r} is not a supported MoE config; supported: "
                         f"{', '.join(sorted(MODEL_TYPES))}")
    if model_type == "llama4":       # the multimodal wrapper: its text model, in text_config
        unknown = sorted(key for key in data if key not in LLAMA4_WRAPPER and key not in IGNORED)
        if unknown:
            raise ValueError(f"{source}: unknown field {unknown[0]}={data[unknown[0]]!r} for model_type 'llama4' "
                             f"(lshsim.models.hf_config reads text_config; ignores {', '.join(sorted(LLAMA4_WRAPPER))})")
        text = data.get("text_config")
        if not isinstance(text, dict):
            raise ValueError(f"{source}: text_config={text!r} must be an object (model_type 'llama4')")
        data = {"tie_word_embeddings": data.get("tie_word_embeddings", False), **text}
    reader = _Reader(data, source, "text_config." if model_type == "llama4" else "")
    fields, read = MODEL_TYPES[model_type](reader)
    if model_type == "switch_transformers":
        fields.update(_common(reader), tie_embeddings=reader.boolean("tie_word_embeddings", True))
    else:
        fields.update(_common(reader))
    reader.refuse_unknown(read)
    fields.update(name=name, source=f"{source} (Hugging Face config.json, model_type {model_type}, "
                                    f"read by lshsim.models.hf_config)",
                  notes="seq_len and tokens_per_gpu are not in a config.json; capacity neither (dropless false: "
                        "plan dropless routing with --capacity-factor none)",
                  assumed=("seq_len", "tokens_per_gpu", "dropless"))
    try:
        return ModelConfig(**fields)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {_config_names(str(error), model_type)}") from None


def _name_of(path: Path, data) -> str:
    if path.name == "config.json":
        given = data.get("_name_or_path") if isinstance(data, dict) else None
        if isinstance(given, str) and given.strip("/"):
            return given.rstrip("/").rsplit("/", 1)[-1]
        return path.resolve().parent.name or "model"
    return path.stem


def load_hf_config(path: str | Path) -> "ModelConfig":
    """The ModelConfig of a Hugging Face config.json file. Its name: the file's stem, or for a file
    called config.json its `_name_or_path` (last part) or its folder's name."""
    from lshsim.readers import load_json

    path = Path(path)
    data = load_json(path, what="model file")
    return model_from_hf_config(data, _name_of(path, data), str(path))
