"""The model catalog: shipped YAMLs load, match the LSH-MoE paper's Table 1, and bad configs are refused."""
import pytest

from lshsim.models import ModelConfig, list_models, load_model, model_from_dict

# LSH-MoE (Nie et al., NeurIPS 2024) Table 1: layers, d_model, d_ffn, experts ('-' = differs per layer)
TABLE_1 = {
    "roberta-moe": (12, 768, 3072, 16),
    "t5-moe": (16, 1024, 16384, 16),
    "gpt-moe-15b": (12, 768, 3072, 512),
    "gpt-moe-52b": (24, 1024, 4096, 512),
    "swin-moe-l": (24, None, None, 32),
}


#: blocks and MoE layers as derived from Table 1's MoE parameter counts (T5: 16 layers per stack)
DERIVED = {"roberta-moe": (12, 4), "t5-moe": (32, 16), "gpt-moe-15b": (12, 6), "gpt-moe-52b": (24, 12),
           "swin-moe-l": (24, 12)}


def test_shipped_models_match_table_1():
    assert set(TABLE_1) <= set(list_models())
    for name, (layers, d_model, d_ffn, experts) in TABLE_1.items():
        model = load_model(name)
        assert model.name == name
        blocks, moe_layers = DERIVED[name]
        assert blocks == layers * (2 if name == "t5-moe" else 1)
        assert (model.num_layers, model.num_experts, model.top_k, model.num_moe_layers) == (blocks, experts, 2, moe_layers)
        if d_model is not None:
            assert (model.d_model, model.d_ffn) == (d_model, d_ffn)
        else:  # Swin: representative values are our choice and must say so
            assert {"d_model", "d_ffn"} <= set(model.assumed)
        assert model.source and "tokens_per_gpu" in model.assumed


#: LocMoE (arXiv 2401.13920) App. D: experts, top-k, MoE layers, attention heads; PanGu-alpha 13B's
#: config.json (huggingface.co/sunzeyeah/pangu-13B): hidden_size, num_layers, num_heads,
#: max_position_embeddings, vocab_size (intermediate_size null: 4 x hidden_size). Copied by hand.
LOCMOE_APP_D = {"num_experts": 16, "top_k": 1, "num_moe_layers": 8, "num_heads": 40}
PANGU_ALPHA_13B = {"d_model": 5120, "num_layers": 40, "num_heads": 40, "seq_len": 1024, "vocab_size": 40064}


def test_locmoe_pangu_holds_the_cited_numbers():
    model = load_model("locmoe-pangu")
    heads = dict(model.attention)["num_heads"]
    assert (model.num_experts, model.top_k, model.num_moe_layers, heads) == tuple(LOCMOE_APP_D.values())
    assert (model.d_model, model.num_layers, heads, model.seq_len, model.vocab_size) == tuple(PANGU_ALPHA_13B.values())
    assert model.d_ffn == 4 * PANGU_ALPHA_13B["d_model"]
    assert dict(model.attention)["num_kv_heads"] == heads and dict(model.attention)["head_dim"] * heads == model.d_model
    assert model.d_model % model.num_experts == 0          # LocMoE's GrAP gate routes at the real width
    # the widths are PanGu-alpha's, not PanGu-Sigma's own table: the config must say so
    assert {"num_layers", "d_model", "d_ffn", "seq_len", "vocab_size", "moe_every", "tokens_per_gpu"} <= set(model.assumed)


def test_parameter_counts_match_the_names():
    # GPT-MoE-15B and -52B: the names are the parameter counts (every other layer MoE)
    assert load_model("gpt-moe-15b").num_parameters == pytest.approx(15e9, rel=0.05)
    assert load_model("gpt-moe-52b").num_parameters == pytest.approx(52e9, rel=0.05)


def test_moe_layers_every_other():
    model = load_model("gpt-moe-15b")
    assert model.moe_layers == (1, 3, 5, 7, 9, 11)
    every = ModelConfig("x", 3, 8, 16, 4, seq_len=8, tokens_per_gpu=8, moe_every=1)
    assert every.moe_layers == (0, 1, 2)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as info:
        load_model("gpt-7")
    for name in TABLE_1:
        assert name in str(info.value)


def test_load_from_path(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("num_layers: 2\nd_model: 64\nd_ffn: 128\nnum_experts: 8\nseq_len: 32\ntokens_per_gpu: 64\n")
    model = load_model(path)
    assert model.name == "tiny" and model.num_experts == 8
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.yaml")


@pytest.mark.parametrize("bad, field", [
    ({"num_layers": 0}, "num_layers"),
    ({"d_model": -1}, "d_model"),
    ({"top_k": 9}, "top_k"),
    ({"moe_every": 5}, "moe_every"),
    ({"bytes_per_element": 3}, "bytes_per_element"),
    ({"attention_window": 100}, "attention_window"),
    ({"d_ffn": 2.5}, "d_ffn"),
])
def test_validation_names_the_value(bad, field):
    base = dict(name="x", num_layers=4, d_model=8, d_ffn=16, num_experts=8, seq_len=16, tokens_per_gpu=32)
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**base, **bad})


def test_model_from_dict_refuses_unknown_and_missing_fields():
    with pytest.raises(ValueError, match="hidden"):
        model_from_dict({"name": "x", "hidden": 3})
    with pytest.raises(ValueError, match="d_ffn"):
        model_from_dict({"name": "x", "num_layers": 2, "d_model": 8, "num_experts": 2, "seq_len": 4,
                         "tokens_per_gpu": 4})


def test_placement_refusal_gives_numbers():
    model = load_model("roberta-moe")
    model.check_placement(16)
    with pytest.raises(ValueError) as info:
        model.check_placement(32)
    text = str(info.value)
    assert "16" in text and "32" in text and "roberta-moe" in text


def test_stages_count_parameters_per_stage():
    stages = [{"blocks": 1, "d_model": 4, "d_ffn": 8, "moe_blocks": []},
              {"blocks": 1, "d_model": 8, "d_ffn": 16, "moe_blocks": [0]}]
    model = ModelConfig("x", 2, 8, 16, 2, seq_len=4, tokens_per_gpu=4, vocab_size=10, stages=stages)
    # MoE: 2 experts x (2 x 8 x 16) + gate 8 x 2; attention 4 x 16 + 4 x 64; dense 2 x 4 x 8;
    # merging 4 x 4 x 8; head 10 x 8
    assert model.moe_parameters == 2 * 256 + 16
    assert model.num_parameters == 528 + 64 + 256 + 64 + 128 + 80
    assert model.to_dict()["stages"][1] == {"blocks": 1, "d_model": 8, "d_ffn": 16, "moe_blocks": [0]}
    assert model_from_dict(model.to_dict()) == model


@pytest.mark.parametrize("stages, match", [
    ([{"blocks": 1, "d_model": 4, "d_ffn": 8}], "stages hold 1 blocks in all, but num_layers=2"),
    ([{"blocks": 2, "d_model": 4, "d_ffn": 8, "moe_blocks": [2]}], "not a block index"),
    ([{"blocks": 2, "d_model": 4, "d_ffn": 8, "moe_blocks": [1, 1]}], "repeats a block"),
    ([{"blocks": 2, "d_model": 0, "d_ffn": 8}], "stages.d_model"),
    ([{"blocks": 2, "d_model": 4, "width": 8}], "unknown field 'width'"),
    ([{"blocks": 2, "d_model": 4}], "lacks the field 'd_ffn'"),
    ("2 stages", "must be a list of stages"),
])
def test_stages_validation(stages, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig("x", 2, 8, 16, 2, seq_len=4, tokens_per_gpu=4, stages=stages)


# ---- today's MoE models, from their published configs ------------------------------------------
#: name -> (total, active, whether the published active count includes the input embedding,
#: published source). Vendors count "active" differently: DeepSeek leaves the input embedding out
#: (V2-Lite's 2.4B only fits that way), the others count every weight a token touches.
PUBLISHED = {
    "deepseek-v3": (671e9, 37e9, False, "DeepSeek-V3 report, arXiv 2412.19437"),
    "deepseek-v2-lite": (15.7e9, 2.4e9, False, "DeepSeek-V2 paper, arXiv 2405.04434, App. B"),
    "mixtral-8x7b": (46.7e9, 12.9e9, True, "Mistral AI, Mixtral of experts announcement"),
    "mixtral-8x22b": (141e9, 39e9, True, "Mistral AI, Mixtral 8x22B announcement"),
    "qwen3-30b-a3b": (30.5e9, 3.3e9, True, "Qwen3 report, arXiv 2505.09388, Table 2"),
    "qwen3-235b-a22b": (235e9, 22e9, True, "Qwen3 report, arXiv 2505.09388, Table 2"),
    "dbrx": (132e9, 36e9, True, "Databricks, Introducing DBRX"),
    "switch-base-128": (7.4e9, 223e6, True, "Switch Transformers Table 9; T5-Base 223M (FLOP-matched)"),
    "kimi-k2": (1.04e12, 32e9, False, "Kimi K2 report, arXiv 2507.20534"),
    "glm-4.5": (355e9, 32e9, False, "GLM-4.5 report, arXiv 2508.06471, Table 1"),
    "glm-4.5-air": (106e9, 12e9, False, "GLM-4.5 report, arXiv 2508.06471, Table 1"),
    "gpt-oss-120b": (116.83e9, 5.13e9, False, "gpt-oss model card, arXiv 2508.10925, Table 1"),
    "gpt-oss-20b": (20.91e9, 3.61e9, False, "gpt-oss model card, arXiv 2508.10925, Table 1"),
    "llama-4-scout": (109e9, 17e9, True, "Meta, Llama 4 announcement and model card"),
    "llama-4-maverick": (400e9, 17e9, True, "Meta, Llama 4 announcement and model card"),
}
#: whose published active count also leaves out the output layer (GLM-4.5's; the others count it)
WITHOUT_OUTPUT_HEAD = {"glm-4.5", "glm-4.5-air"}
#: the published figures are rounded (to 0.1B, or to 1B for 671B/141B/132B/39B/37B/36B/22B): 3%
PARAMETER_TOLERANCE = 0.03

#: from the config.json files: layers, d_model, expert d_ffn, routed experts, shared, top-k, MoE layers
CONFIGS = {
    "deepseek-v3": (61, 7168, 2048, 256, 1, 8, 58),
    "deepseek-v2-lite": (27, 2048, 1408, 64, 2, 6, 26),
    "mixtral-8x7b": (32, 4096, 14336, 8, 0, 2, 32),
    "mixtral-8x22b": (56, 6144, 16384, 8, 0, 2, 56),
    "qwen3-30b-a3b": (48, 2048, 768, 128, 0, 8, 48),
    "qwen3-235b-a22b": (94, 4096, 1536, 128, 0, 8, 94),
    "dbrx": (40, 6144, 10752, 16, 0, 4, 40),
    "switch-base-128": (24, 768, 3072, 128, 0, 1, 12),
    "kimi-k2": (61, 7168, 2048, 384, 1, 8, 60),
    "glm-4.5": (92, 5120, 1536, 160, 1, 8, 89),
    "glm-4.5-air": (46, 4096, 1408, 128, 1, 8, 45),
    "gpt-oss-120b": (36, 2880, 2880, 128, 0, 4, 36),
    "gpt-oss-20b": (24, 2880, 2880, 32, 0, 4, 24),
    "llama-4-scout": (48, 5120, 8192, 16, 1, 1, 48),
    "llama-4-maverick": (48, 5120, 8192, 128, 1, 1, 24),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_published_totals_and_active(name):
    total, active, with_input_embedding, _ = PUBLISHED[name]
    model = load_model(name)
    assert model.num_parameters == pytest.approx(total, rel=PARAMETER_TOLERANCE)
    counted = model.active_parameters(input_embedding=with_input_embedding, output_head=name not in WITHOUT_OUTPUT_HEAD)
    assert counted == pytest.approx(active, rel=PARAMETER_TOLERANCE)
    assert model.source and "config.json" in model.source


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fields_match_the_published_configs(name):
    layers, d_model, d_ffn, experts, shared, k, moe_layers = CONFIGS[name]
    model = load_model(name)
    assert (model.num_layers, model.d_model, model.d_ffn, model.num_experts, model.num_shared_experts, model.top_k,
            model.num_moe_layers) == (layers, d_model, d_ffn, experts, shared, k, moe_layers)


def test_deepseek_v3_layout_and_routing():
    model = load_model("deepseek-v3")
    assert model.moe_layers[0] == 3 and model.moe_layers[-1] == 60          # first_k_dense_replace 3
    assert model.router == "node_limited" and dict(model.router_options)["max_nodes"] == 4
    assert model.dropless and model.dense_d_ffn == 18432
    # an independent count of one MLA block (DeepSeek-V3 config): q_a, q_b, kv_a, kv_b, o
    mla = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168
    expert = 3 * 7168 * 2048
    by_hand = (61 * mla + 3 * 3 * 7168 * 18432 + 58 * (257 * expert + 256 * 7168) + 2 * 129280 * 7168)
    assert model.num_parameters == by_hand
    assert model.active_parameters() == 61 * mla + 3 * 3 * 7168 * 18432 + 58 * (9 * expert + 256 * 7168) + 2 * 129280 * 7168


def test_gpt_oss_120b_components_match_the_model_card():
    """gpt-oss model card (arXiv 2508.10925) Table 1 splits gpt-oss-120b's 116.83B: MLP 114.71B (experts,
    router and the expert biases lshsim does not count: 36 x 128 x 3 x 2880 = 31.9M), attention 0.96B,
    embedding + unembedding 1.16B; counted here by hand from the config.json numbers."""
    model = load_model("gpt-oss-120b")
    mlp = 36 * (128 * 3 * 2880 * 2880 + 2880 * 128)
    attention = 36 * (2880 * 64 * 64 + 2 * 2880 * 8 * 64 + 64 * 64 * 2880)
    embeddings = 2 * 201088 * 2880
    assert model.num_parameters == mlp + attention + embeddings
    assert model.moe_parameters == mlp
    assert mlp + 36 * 128 * 3 * 2880 == pytest.approx(114.71e9, rel=1e-3)
    assert attention == pytest.approx(0.96e9, rel=0.01) and embeddings == pytest.approx(1.16e9, rel=0.01)


def test_active_parameters_leave_out_the_input_and_output_tables():
    base = dict(name="x", num_layers=2, d_model=4, d_ffn=8, num_experts=4, seq_len=4, tokens_per_gpu=4,
                vocab_size=10, top_k=1)
    untied = ModelConfig(**base, tie_embeddings=False)
    full = untied.active_parameters()
    assert untied.active_parameters(input_embedding=False) == full - 40
    assert untied.active_parameters(output_head=False) == full - 40
    assert untied.active_parameters(input_embedding=False, output_head=False) == full - 80
    tied = ModelConfig(**base)       # one table for both: counted only when neither flag leaves it out
    assert tied.active_parameters() - tied.active_parameters(input_embedding=False) == 40
    assert tied.active_parameters(output_head=False) == tied.active_parameters(input_embedding=False)


def test_shared_experts_and_dense_first_layers_in_the_counts():
    base = dict(name="x", num_layers=4, d_model=4, d_ffn=8, num_experts=4, seq_len=4, tokens_per_gpu=4,
                vocab_size=10, moe_every=1, top_k=2)
    plain = ModelConfig(**base)
    assert plain.moe_layers == (0, 1, 2, 3)
    shared = ModelConfig(**base, num_shared_experts=1, first_dense_layers=1, dense_d_ffn=16, ffn_matrices=3,
                         tie_embeddings=False)
    assert shared.moe_layers == (1, 2, 3)
    expert = 3 * 4 * 8
    assert shared.moe_parameters == 3 * (4 * expert + 4 * 4 + expert)
    assert shared.num_parameters == 4 * 64 + 3 * 4 * 16 + shared.moe_parameters + 2 * 10 * 4
    assert shared.active_parameters() == 4 * 64 + 3 * 4 * 16 + 3 * (3 * expert + 16) + 80
    assert shared.active_parameters(input_embedding=False) == shared.active_parameters() - 40


@pytest.mark.parametrize("bad, match", [
    ({"first_dense_layers": -1}, "first_dense_layers"),
    ({"first_dense_layers": 4}, "leaves no MoE layer"),
    ({"num_shared_experts": 1.5}, "num_shared_experts"),
    ({"ffn_matrices": 4}, "ffn_matrices"),
    ({"attention": {"kind": "gqa", "num_heads": 4}}, "lacks the field 'num_kv_heads'"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 3, "head_dim": 2}}, "must divide"),
    ({"attention": {"kind": "mla", "heads": 4}}, "unknown field 'heads'"),
    ({"attention": {"kind": "flash"}}, "attention.kind"),
    ({"router": "nope"}, "unknown router 'nope'"),
    ({"router": "node_limited", "router_options": {"max_node": 2}}, "max_node"),
    ({"dropless": "yes"}, "dropless"),
])
def test_new_fields_refuse_bad_values_by_name(bad, match):
    base = dict(name="x", num_layers=4, d_model=8, d_ffn=16, num_experts=8, seq_len=16, tokens_per_gpu=32, moe_every=1)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**base, **bad})


def test_new_models_round_trip_through_to_dict():
    for name in PUBLISHED:
        model = load_model(name)
        assert model_from_dict(model.to_dict()) == model


def test_llama_4_maverick_interleaves_moe_and_dense_layers():
    """interleave_moe_layer_step 2: layers 1, 3, ..., 47 are MoE (transformers' Llama4 moe_layers), the others
    dense FFNs of intermediate_size_mlp 16384; one shared expert beside the top-1 routed one. By hand:
    attention 48 x (2 x 5120 x 40 x 128 + 2 x 5120 x 8 x 128), MoE 24 x (129 experts + router), dense 24 x
    3 x 5120 x 16384, embeddings 2 x 202048 x 5120."""
    model = load_model("llama-4-maverick")
    assert model.moe_layers[:3] == (1, 3, 5) and model.moe_layers[-1] == 47
    expert = 3 * 5120 * 8192
    by_hand = (48 * (2 * 5120 * 40 * 128 + 2 * 5120 * 8 * 128) + 24 * (129 * expert + 5120 * 128)
               + 24 * 3 * 5120 * 16384 + 2 * 202048 * 5120)
    assert model.num_parameters == by_hand
