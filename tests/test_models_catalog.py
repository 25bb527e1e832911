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
    assert list_models() == sorted(TABLE_1)
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
