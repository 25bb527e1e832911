"""Hugging Face MoE config.json files: read into the catalog's ModelConfig, equal to the catalog's
models, bad files refused naming the file and the field, and `lshsim plan --model config.json`."""
import json
from pathlib import Path

import pytest

from lshsim.cli import main
from lshsim.models import load_model
from lshsim.models.hf_config import load_hf_config, model_from_hf_config

HF = Path(__file__).parent / "data" / "hf"
NAMES = ["deepseek-v3", "deepseek-v2-lite", "mixtral-8x7b", "qwen3-30b-a3b", "dbrx", "switch-base-128", "kimi-k2",
         "glm-4.5", "glm-4.5-air", "gpt-oss-120b", "gpt-oss-20b", "llama-4-scout", "llama-4-maverick"]
#: what the files say, independently of the reader: (layers, MoE layers, experts, shared, k, router)
EXPECTED = {
    "deepseek-v3": (61, 58, 256, 1, 8, "node_limited"),
    "deepseek-v2-lite": (27, 26, 64, 2, 6, "topk"),
    "mixtral-8x7b": (32, 32, 8, 0, 2, "topk"),
    "qwen3-30b-a3b": (48, 48, 128, 0, 8, "topk"),
    "dbrx": (40, 40, 16, 0, 4, "topk"),
    "switch-base-128": (24, 12, 128, 0, 1, "topk"),
    "kimi-k2": (61, 60, 384, 1, 8, "topk"),
    "glm-4.5": (92, 89, 160, 1, 8, "topk"),
    "glm-4.5-air": (46, 45, 128, 1, 8, "topk"),
    "gpt-oss-120b": (36, 36, 128, 0, 4, "topk"),
    "gpt-oss-20b": (24, 24, 32, 0, 4, "topk"),
    "llama-4-scout": (48, 48, 16, 1, 1, "topk"),
    "llama-4-maverick": (48, 24, 128, 1, 1, "topk"),
}


@pytest.mark.parametrize("name", NAMES)
def test_config_json_equals_the_catalog_model(name):
    from_json = load_model(HF / f"{name}.json")
    catalog = load_model(name)
    layers, moe, experts, shared, k, router = EXPECTED[name]
    assert (from_json.num_layers, from_json.num_moe_layers, from_json.num_experts, from_json.num_shared_experts,
            from_json.top_k, from_json.router) == (layers, moe, experts, shared, k, router)
    for field in ("d_model", "d_ffn", "dense_d_ffn", "moe_layers", "attention", "ffn_matrices", "vocab_size",
                  "tie_embeddings", "router_options", "cross_attention_layers"):
        assert getattr(from_json, field) == getattr(catalog, field), field
    assert from_json.num_parameters == catalog.num_parameters
    assert {"seq_len", "tokens_per_gpu"} <= set(from_json.assumed)
    assert from_json.name == name and f"{name}.json" in from_json.source


def _write(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _mixtral():
    return json.loads((HF / "mixtral-8x7b.json").read_text())


@pytest.mark.parametrize("change, fragments", [
    ({"model_type": "llama"}, ["model_type='llama'", "supported"]),
    ({"num_local_experts": None}, ["num_local_experts=None", "integer"]),
    ({"hidden_size": -4}, ["hidden_size=-4"]),
    ({"expert_parallel_magic": 3}, ["unknown field expert_parallel_magic=3", "mixtral"]),
    ({"tie_word_embeddings": "no"}, ["tie_word_embeddings='no'"]),
    # the catalog's own checks, named by the config.json's fields (robust4: "top_k=9 exceeds num_experts=8" before)
    ({"num_experts_per_tok": 9}, ["num_experts_per_tok=9 exceeds num_local_experts=8"]),
    ({"num_key_value_heads": 5}, ["num_key_value_heads=5 must divide num_attention_heads=32"]),
    # robust4: accepted before (an unknown activation planned with 2 FFN matrices; head width 4096 // 3 = 1365)
    ({"hidden_act": "relu7"}, ["hidden_act='relu7' is not an activation"]),
    ({"num_attention_heads": 3, "num_key_value_heads": 3}, ["num_attention_heads=3 does not divide hidden_size=4096"]),
])
def test_bad_fields_are_named_with_the_file(tmp_path, change, fragments):
    path = _write(tmp_path, {**_mixtral(), **change})
    with pytest.raises(ValueError) as info:
        load_model(path)
    text = str(info.value)
    assert str(path) in text
    for fragment in fragments:
        assert fragment in text


def test_missing_field_is_named(tmp_path):
    data = _mixtral()
    del data["intermediate_size"]
    with pytest.raises(ValueError, match="'intermediate_size' is missing"):
        load_hf_config(_write(tmp_path, data))


@pytest.mark.parametrize("name, change, fragment", [
    ("deepseek-v3", {"moe_layer_freq": 2}, "moe_layer_freq=2 is not supported"),
    ("deepseek-v3", {"topk_group": 9}, "topk_group=9 exceeds n_group=8"),
    # robust4: the first two were accepted before (groups of 256 / 3 experts), the last two named catalog fields
    ("deepseek-v3", {"n_group": 3, "topk_group": 2}, "n_group=3 must divide n_routed_experts=256"),
    ("dbrx", {"n_heads": 7}, "n_heads=7 does not divide d_model=6144"),
    ("deepseek-v2-lite", {"first_k_dense_replace": 27}, "first_k_dense_replace=27 leaves no MoE layer among "
                                                        "num_hidden_layers=27"),
    ("dbrx", {"ffn_config": {"ffn_hidden_size": 8, "moe_num_experts": 4, "moe_top_k": 5}},
     "ffn_config.moe_top_k=5 exceeds ffn_config.moe_num_experts=4"),
    ("glm-4.5", {"topk_group": 2}, "topk_group=2 exceeds n_group=1"),
    ("gpt-oss-120b", {"experts_per_token": 2}, "experts_per_token=2 disagrees with num_experts_per_tok=4"),
    ("kimi-k2", {"moe_layer_freq": 2}, "moe_layer_freq=2 is not supported"),
    ("llama-4-maverick", {"moe_layers": [0, 2]}, "moe_layers=[0, 2] is not every 2-th layer"),
    ("llama-4-scout", {"image_size": 336}, "unknown field image_size=336 for model_type 'llama4'"),
    ("qwen3-30b-a3b", {"mlp_only_layers": [0, 5]}, "mlp_only_layers=[0, 5] is not supported"),
    ("switch-base-128", {"encoder_sparse_step": 3}, "encoder_sparse_step=3 disagrees"),
    ("dbrx", {"ffn_config": {"ffn_hidden_size": 8, "moe_num_experts": 4, "moe_top_k": 1, "experts_per_gpu": 2}},
     "unknown field ffn_config.experts_per_gpu=2"),
])
def test_unsupported_layouts_are_refused(tmp_path, name, change, fragment):
    data = {**json.loads((HF / f"{name}.json").read_text()), **change}
    with pytest.raises(ValueError) as info:
        load_hf_config(_write(tmp_path, data))
    assert fragment in str(info.value) and "config.json" in str(info.value)


@pytest.mark.parametrize("name, key, value, matrices", [
    ("switch-base-128", "feed_forward_proj", "gated-relu", 3),     # robust4: T5's gated-relu counted 2 matrices
    ("switch-base-128", "feed_forward_proj", "gated-gelu", 3),
    ("switch-base-128", "feed_forward_proj", "relu", 2),
    ("mixtral-8x7b", "hidden_act", "gelu_pytorch_tanh", 2),
])
def test_activation_names_count_the_ffn_matrices(tmp_path, name, key, value, matrices):
    data = {**json.loads((HF / f"{name}.json").read_text()), key: value}
    assert load_hf_config(_write(tmp_path, data)).ffn_matrices == matrices


def test_an_unknown_dbrx_activation_is_refused(tmp_path):
    data = json.loads((HF / "dbrx.json").read_text())
    data["ffn_config"]["ffn_act_fn"] = {"name": "swishy"}
    with pytest.raises(ValueError, match=r"config.json: ffn_config.ffn_act_fn.name='swishy' is not an activation"):
        load_hf_config(_write(tmp_path, data))


def test_not_json_and_not_an_object(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{\"model_type\": ")
    with pytest.raises(ValueError, match="broken.json:1: not valid JSON"):
        load_model(bad)
    with pytest.raises(ValueError, match="must be a JSON object"):
        model_from_hf_config([1, 2], "x", "list.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.json")


def test_name_of_a_config_json_is_its_folder_or_name_or_path(tmp_path):
    folder = tmp_path / "My-MoE"
    folder.mkdir()
    assert load_hf_config(_write(folder, _mixtral())).name == "My-MoE"
    assert load_hf_config(_write(folder, {**_mixtral(), "_name_or_path": "org/Other"})).name == "Other"


def test_plan_reads_a_config_json(tmp_path, capsys):
    tiny = {"model_type": "deepseek_v3", "hidden_size": 256, "intermediate_size": 1024, "moe_intermediate_size": 128,
            "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4, "first_k_dense_replace": 1,
            "moe_layer_freq": 1, "num_hidden_layers": 3, "num_attention_heads": 4, "q_lora_rank": None,
            "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32, "n_group": 2,
            "topk_group": 1, "vocab_size": 1000, "max_position_embeddings": 256}
    path = _write(tmp_path, tiny, "tiny-ds.json")
    assert main(["plan", "--model", str(path), "--cluster", "lshmoe-v100-2x8", "--router", "node_limited",
                 "--capacity-factor", "none", "--tokens-per-gpu", "256", "--moe-layer", "grouped", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["name"] == "tiny-ds" and out["model"]["router"] == "node_limited"
    assert out["model"]["num_shared_experts"] == 1 and out["selected"].startswith("yours: node_limited")
    assert all(row["breakdown"]["step_s"] > 0 for row in out["options"])


def test_generic_pretrained_config_fields_are_ignored_also_in_nested_configs(tmp_path):
    # a re-saved DBRX config.json repeats transformers' generic fields inside ffn_config / attn_config
    data = json.loads((HF / "dbrx.json").read_text())
    data["ffn_config"].update(return_dict=True, temperature=1.0, id2label={"0": "LABEL_0"}, model_type="")
    data["attn_config"].update(top_k=50, attn_pdrop=0)
    data.update(output_router_logits=False, initializer_range=0.02)
    assert load_hf_config(_write(tmp_path, data, "dbrx.json")).num_parameters == load_model("dbrx").num_parameters


def test_a_byte_order_mark_is_read_as_the_same_file(tmp_path):
    """A config.json or model YAML saved with a UTF-8 byte-order mark (some Windows editors write one) reads as the
    file without it (robust4: it was refused, 'Unexpected UTF-8 BOM')."""
    import dataclasses

    from lshsim.models.catalog import _config_files

    bom = b"\xef\xbb\xbf"
    (tmp_path / "mixtral-8x7b.json").write_bytes(bom + (HF / "mixtral-8x7b.json").read_bytes())
    with_bom, plain = load_model(tmp_path / "mixtral-8x7b.json"), load_model(HF / "mixtral-8x7b.json")
    assert dataclasses.replace(with_bom, source=plain.source) == plain     # the source names the file read
    (tmp_path / "dbrx.yaml").write_bytes(bom + _config_files()["dbrx"].read_bytes())
    assert load_model(tmp_path / "dbrx.yaml") == load_model("dbrx")
