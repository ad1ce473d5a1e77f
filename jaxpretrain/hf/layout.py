"""Our parameters <-> Hugging Face `LlamaForCausalLM` tensors; `config.json` <-> `ModelConfig`.

The model computes what transformers' `modeling_llama` computes, so the mapping is names,
transposes and the layer axis only (tests/test_hf.py compares logits):

- Kernels are [in, ...out] (`x @ kernel`); torch `Linear.weight` is [out, in]: transpose, with
  the head axes flattened as out = head * head_dim + feature, the order in which Llama views its
  q/k/v projections' outputs and o_proj's input.
- RoPE: `apply_rope` pairs feature i with i + head_dim/2 (rotate_half), as Llama does, with the
  same inverse frequencies, so q/k rows need no permutation (checkpoints from Meta's original
  code, which pairs neighbours, are permuted by transformers' own converter before they reach
  this format).
- GQA: query head n reads key/value head n // (num_heads / num_kv_heads), as `repeat_kv` does.
- RMSNorm: x * rsqrt(mean(x^2) + eps) * scale in float32 in both; `scale` is `weight`.
- Our block parameters are stacked on a leading `layers` axis (one scanned layer); Llama has one
  tensor per layer, `model.layers.{i}.*`.
- Tied embeddings: no `lm_head.weight` and `tie_word_embeddings: true`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from jaxpretrain.model import ModelConfig
from jaxpretrain.tokenizer import SpecialIds

# ModelConfig field -> its LlamaConfig key.
CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "num_layers": "num_hidden_layers",
    "embed_dim": "hidden_size",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "mlp_dim": "intermediate_size",
    "max_seq_len": "max_position_embeddings",
    "rope_theta": "rope_theta",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
}
# Fields that decide the parameters' shapes: a difference makes an import impossible.
SHAPE_FIELDS = (
    "vocab_size",
    "num_layers",
    "embed_dim",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "tie_embeddings",
)


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One of our parameters and its Hugging Face tensor(s).

    `input_axes` is None when both sides have the same layout; otherwise our array (without the
    layer axis) is [in..., out...] with `input_axes` leading input axes and Hugging Face's is the
    transposed 2-D [prod(out), prod(in)].
    """

    hf_name: str  # with "{layer}" where `per_layer`
    path: tuple[str, ...]  # keys into our params pure dict
    per_layer: bool
    input_axes: int | None = None

    def name(self, layer: int | None = None) -> str:
        return self.hf_name.format(layer=layer)

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Hugging Face's shape for our (per-layer) `shape`."""
        if self.input_axes is None:
            return tuple(shape)
        return (math.prod(shape[self.input_axes :]), math.prod(shape[: self.input_axes]))

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        """Our (per-layer) array -> Hugging Face's, C-contiguous (as safetensors stores it)."""
        if self.input_axes is None:
            return np.ascontiguousarray(ours)
        inputs = math.prod(ours.shape[: self.input_axes])
        return np.ascontiguousarray(ours.reshape(inputs, -1).T)

    def from_hf(self, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Hugging Face's array -> ours of (per-layer) `shape`; inverse of `to_hf`."""
        if self.input_axes is None:
            return np.ascontiguousarray(tensor).reshape(shape)
        return np.ascontiguousarray(tensor.T).reshape(shape)


EMBED_NAME = "model.embed_tokens.weight"
LM_HEAD_NAME = "lm_head.weight"
_EMBED = TensorMap(EMBED_NAME, ("embed", "embedding"), per_layer=False)


def _layer(name: str, path: str, input_axes: int | None = None) -> TensorMap:
    """A per-layer tensor `model.layers.{layer}.NAME` and our stacked parameter layers/PATH."""
    hf_name = "model.layers.{layer}." + name
    return TensorMap(hf_name, ("layers", *path.split("/")), per_layer=True, input_axes=input_axes)


_LAYER_MAPS = (
    _layer("input_layernorm.weight", "attention_norm/scale"),
    _layer("self_attn.q_proj.weight", "attention/query/kernel", input_axes=1),
    _layer("self_attn.k_proj.weight", "attention/key/kernel", input_axes=1),
    _layer("self_attn.v_proj.weight", "attention/value/kernel", input_axes=1),
    _layer("self_attn.o_proj.weight", "attention/out/kernel", input_axes=2),
    _layer("post_attention_layernorm.weight", "mlp_norm/scale"),
    _layer("mlp.gate_proj.weight", "mlp/gate/kernel", input_axes=1),
    _layer("mlp.up_proj.weight", "mlp/up/kernel", input_axes=1),
    _layer("mlp.down_proj.weight", "mlp/down/kernel", input_axes=1),
)
_FINAL_NORM = TensorMap("model.norm.weight", ("final_norm", "scale"), per_layer=False)
_LM_HEAD = TensorMap(LM_HEAD_NAME, ("lm_head", "kernel"), per_layer=False, input_axes=1)


def tensor_maps(tie_embeddings: bool) -> tuple[TensorMap, ...]:
    """Every parameter's map; an untied model adds `lm_head`."""
    maps = (_EMBED, *_LAYER_MAPS, _FINAL_NORM)
    return maps if tie_embeddings else (*maps, _LM_HEAD)


def hf_tensors(model_cfg: ModelConfig) -> Iterator[tuple[str, TensorMap, int | None]]:
    """(Hugging Face name, map, layer or None) of every tensor, in the order they are written:
    embedding, layer 0, layer 1, ..., final norm, lm_head (transformers' own order)."""
    yield _EMBED.name(), _EMBED, None
    for layer in range(model_cfg.num_layers):
        for tensor_map in _LAYER_MAPS:
            yield tensor_map.name(layer), tensor_map, layer
    yield _FINAL_NORM.name(), _FINAL_NORM, None
    if not model_cfg.tie_embeddings:
        yield _LM_HEAD.name(), _LM_HEAD, None


def param_at(params: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        params = params[key]
    return params


def hf_config(model_cfg: ModelConfig, special_ids: SpecialIds, dtype: str) -> dict[str, Any]:
    """The `config.json` of a `LlamaForCausalLM` computing what `model_cfg` computes.

    `rope_theta` is written both at the top level (transformers 4.x) and in `rope_parameters`
    (5.x), and the dtype under both of their names, so either major version reads it.
    """
    config = {hf_key: getattr(model_cfg, field) for field, hf_key in CONFIG_KEYS.items()}
    config.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": model_cfg.rope_theta},
        initializer_range=model_cfg.init_std,
        bos_token_id=special_ids.bos,
        eos_token_id=special_ids.eos,
        pad_token_id=special_ids.pad,
        use_cache=True,
        torch_dtype=dtype,
        dtype=dtype,
    )
    return config


def model_fields(hf_cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our model fields (`CONFIG_KEYS`) from a Llama `config.json`, with LlamaConfig's defaults.

    Raises ValueError (one sentence naming `source` and the key) for what our model cannot
    compute: another architecture, biases, another activation, RoPE scaling.
    """
    model_type = hf_cfg.get("model_type")
    if model_type != "llama":
        raise ValueError(
            f"{source}: model_type={model_type!r}, but only 'llama' (LlamaForCausalLM) imports; "
            "convert the model to the Llama layout first."
        )
    unsupported = {
        "hidden_act": (hf_cfg.get("hidden_act", "silu"), "silu"),
        "attention_bias": (hf_cfg.get("attention_bias", False), False),
        "mlp_bias": (hf_cfg.get("mlp_bias", False), False),
        "rope type": (_rope_type(hf_cfg), "default"),
    }
    for key, (value, supported) in unsupported.items():
        if value != supported:
            raise ValueError(
                f"{source}: {key}={value!r}, but the model here supports only {supported!r}; "
                "this checkpoint cannot be imported."
            )
    hidden, heads = int(hf_cfg["hidden_size"]), int(hf_cfg["num_attention_heads"])
    rope = hf_cfg.get("rope_parameters") or {}
    return {
        "vocab_size": int(hf_cfg["vocab_size"]),
        "num_layers": int(hf_cfg["num_hidden_layers"]),
        "embed_dim": hidden,
        "num_heads": heads,
        "num_kv_heads": int(hf_cfg.get("num_key_value_heads") or heads),
        "head_dim": int(hf_cfg.get("head_dim") or hidden // heads),
        "mlp_dim": int(hf_cfg["intermediate_size"]),
        "max_seq_len": int(hf_cfg.get("max_position_embeddings", 2048)),
        "rope_theta": float(hf_cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        "norm_eps": float(hf_cfg.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf_cfg.get("tie_word_embeddings", False)),
    }


def _rope_type(hf_cfg: Mapping[str, Any]) -> str:
    scaling = hf_cfg.get("rope_scaling") or hf_cfg.get("rope_parameters") or {}
    return scaling.get("rope_type", scaling.get("type", "default"))


def config_differences(
    fields: Mapping[str, Any], model_cfg: ModelConfig
) -> tuple[list[str], list[str]]:
    """(shape differences, other differences) as 'model.KEY=ours vs HF_KEY=theirs' strings.

    Shape differences make the weights unusable; the others (RoPE base, norm epsilon, context
    length) change what the imported model computes, which can be intended.
    """
    shape, other = [], []
    for field, hf_key in CONFIG_KEYS.items():
        ours, theirs = getattr(model_cfg, field), fields[field]
        if ours != theirs:
            text = f"model.{field}={ours!r} vs {hf_key}={theirs!r}"
            (shape if field in SHAPE_FIELDS else other).append(text)
    return shape, other
