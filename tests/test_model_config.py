"""ModelConfig: validation messages and construction from an ml_collections ConfigDict."""

import dataclasses

import ml_collections
import pytest

from jaxpretrain.model import ModelConfig

TINY = dict(
    vocab_size=64,
    num_layers=2,
    embed_dim=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    max_seq_len=16,
)


def test_from_config_uses_resolved_vocab_size_and_defaults():
    model_cfg = ml_collections.ConfigDict({**TINY, "vocab_size": -1, "remat_policy": "full"})
    cfg = ModelConfig.from_config(model_cfg, vocab_size=100)
    assert cfg.vocab_size == 100
    assert cfg.remat_policy == "full"
    assert cfg.dtype == "bfloat16" and cfg.param_dtype == "float32" and cfg.tie_embeddings


def test_from_config_accepts_every_field():
    every_field = {
        field.name: getattr(ModelConfig(**TINY), field.name)
        for field in dataclasses.fields(ModelConfig)
    }
    cfg = ModelConfig.from_config(ml_collections.ConfigDict(every_field), vocab_size=64)
    assert cfg == ModelConfig(**TINY)


def test_from_config_rejects_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="unknown key.*'num_experts'"):
        ModelConfig.from_config(ml_collections.ConfigDict({**TINY, "num_experts": 8}), 64)
    without_mlp = {key: value for key, value in TINY.items() if key != "mlp_dim"}
    with pytest.raises(ValueError, match="missing required key.*'mlp_dim'"):
        ModelConfig.from_config(ml_collections.ConfigDict(without_mlp), 64)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_kv_heads": 3}, r"num_heads=4 must be a multiple of model.num_kv_heads=3"),
        ({"remat_policy": "some"}, r"remat_policy='some' is not a known policy"),
        ({"dtype": "fp8"}, r"model.dtype='fp8' is not a known dtype"),
        ({"param_dtype": "int8"}, r"model.param_dtype='int8' is not a known dtype"),
        ({"embed_dim": 0}, r"model.embed_dim=0 must be a positive integer"),
        ({"num_layers": -2}, r"model.num_layers=-2 must be a positive integer"),
        ({"head_dim": 7}, r"model.head_dim=7 must be even"),
        ({"norm_eps": 0.0}, r"model.norm_eps=0.0 must be a positive number"),
    ],
)
def test_invalid_values_name_the_key_and_value(override, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**TINY, **override})
