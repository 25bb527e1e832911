"""The model catalog (`lshsim.models.catalog`: the papers' MoE models as validated configs).

>>> from lshsim.models import load_model
>>> load_model("roberta-moe").num_moe_layers
4
"""
from lshsim.models.catalog import ModelConfig, list_models, load_model, model_from_dict

__all__ = ["ModelConfig", "load_model", "list_models", "model_from_dict"]
