"""Llama-style decoder in Flax NNX: `Transformer(ModelConfig(...), rngs=nnx.Rngs(0))`."""

from jaxpretrain.model.config import REMAT_POLICIES, ModelConfig
from jaxpretrain.model.transformer import Transformer, param_count

__all__ = ["REMAT_POLICIES", "ModelConfig", "Transformer", "param_count"]
