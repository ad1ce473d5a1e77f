"""tools/torch_baseline.py: it trains, it reports sane figures, and its model is ours.

The PyTorch model must have the parameters and FLOPs of `jaxpretrain.model.Transformer` (so the
side-by-side MFU compares like with like) and, given our weights, compute our logits (RoPE
convention, GQA grouping, SwiGLU, norms, tying). Tiny shapes on CPU without torch.compile; needs
torch, which only the hf environment has.
"""

import importlib.util
import json
import math
import pathlib

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402 - after the importorskip, which must come first
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxpretrain import flops  # noqa: E402
from jaxpretrain.model import ModelConfig  # noqa: E402
from jaxpretrain.model.transformer import Transformer, param_count  # noqa: E402

_TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "torch_baseline.py"

# GQA (2 query heads per key/value head) and heads * head_dim != dim, so a transposed or
# mis-grouped shape cannot pass unnoticed.
SHAPES = dict(layers=2, dim=32, heads=4, kv_heads=2, head_dim=16, mlp_dim=48, vocab=64)
SEQ_LEN, BATCH = 16, 4
TINY = [f"--{name}={value}" for name, value in SHAPES.items()]
TINY += [f"--seq_len={SEQ_LEN}", f"--batch={BATCH}", "--device=cpu", "--no-compile"]


@pytest.fixture(scope="module")
def baseline():
    spec = importlib.util.spec_from_file_location("torch_baseline", _TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_config(tie: bool, dtype: str = "bfloat16") -> ModelConfig:
    return ModelConfig(
        vocab_size=SHAPES["vocab"],
        num_layers=SHAPES["layers"],
        embed_dim=SHAPES["dim"],
        num_heads=SHAPES["heads"],
        num_kv_heads=SHAPES["kv_heads"],
        head_dim=SHAPES["head_dim"],
        mlp_dim=SHAPES["mlp_dim"],
        max_seq_len=SEQ_LEN,
        tie_embeddings=tie,
        dtype=dtype,
    )


def test_json_figures_are_sane(baseline, capsys):
    baseline.main([*TINY, "--warmup=2", "--steps=2", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["device"] == "cpu" and result["compile"] is False
    assert result["steps"] == 2 and result["warmup"] == 2
    times = [result[f"step_time_{k}_s"] for k in ("min", "p25", "median", "p75", "max")]
    assert times[0] > 0 and times == sorted(times)
    assert result["tokens_per_second"] == pytest.approx(
        BATCH * SEQ_LEN / result["step_time_median_s"]
    )
    assert result["achieved_tflops"] == pytest.approx(
        result["tokens_per_second"] * result["flops_per_token"] / 1e12
    )
    assert result["compile_seconds"] > 0
    # CPU: no known peak, so no MFU, and no CUDA memory figure.
    assert result["peak_tflops"] is None and result["mfu"] is None
    assert result["peak_memory_gib"] is None
    assert math.isfinite(result["loss_first"]) and math.isfinite(result["loss_last"])
    # Random tokens over 64 ids: the untrained loss is close to ln(64).
    assert result["loss_first"] == pytest.approx(math.log(SHAPES["vocab"]), abs=0.3)

    # An explicit peak gives an MFU, and the human line prints.
    result = baseline.run([*TINY, "--warmup=1", "--steps=1", "--peak_tflops=1e-3"])
    assert result["mfu"] == pytest.approx(result["achieved_tflops"] / 1e-3)
    baseline.main([*TINY, "--warmup=1", "--steps=1"])
    assert "tokens/s" in capsys.readouterr().out


def test_training_step_lowers_the_loss_on_a_fixed_batch(baseline):
    result = baseline.run([*TINY, "--warmup=1", "--steps=10", "--lr=3e-3"])
    assert math.isfinite(result["loss_last"])
    assert result["loss_last"] < result["loss_first"] - 0.3


@pytest.mark.parametrize("tie", [True, False])
def test_params_and_flops_equal_jaxpretrain(baseline, tie):
    tie_flag = "--tie" if tie else "--no-tie"
    args = baseline.parse_args([*TINY, tie_flag])
    cfg = model_config(tie)
    torch_model = baseline.Transformer(args)
    torch_params = sum(p.numel() for p in torch_model.parameters())
    jax_model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    jax_params = sum(x.size for x in jax.tree.leaves(nnx.state(jax_model, nnx.Param)))
    assert torch_params == jax_params == param_count(cfg)
    assert baseline.matmul_params(args) == flops.matmul_params(cfg)
    assert baseline.train_flops_per_token(args) == flops.train_flops_per_token(cfg, SEQ_LEN)


@pytest.mark.parametrize("tie", [True, False])
def test_logits_equal_jaxpretrain_with_the_same_weights(baseline, tie):
    """float32 on both sides: our weights copied into the PyTorch model give our logits."""
    cfg = model_config(tie, dtype="float32")
    jax_model = Transformer(cfg, rngs=nnx.Rngs(1))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, SEQ_LEN), dtype=np.int32)
    ones, zeros = np.ones_like(tokens), np.zeros_like(tokens)
    positions = np.broadcast_to(np.arange(SEQ_LEN, dtype=np.int32), tokens.shape)
    jax_logits = np.asarray(jax_model(tokens, ones, positions, zeros))

    args = baseline.parse_args([*TINY, "--tie" if tie else "--no-tie"])
    torch_model = baseline.Transformer(args)

    def t(x) -> torch.Tensor:
        return torch.from_numpy(np.array(x[...], dtype=np.float32))

    d = cfg.embed_dim
    with torch.no_grad():
        torch_model.embed.weight.copy_(t(jax_model.embed.embedding))
        if not tie:
            torch_model.lm_head.weight.copy_(t(jax_model.lm_head.kernel).T)
        torch_model.final_norm.weight.copy_(t(jax_model.final_norm.scale))
        stack = jax_model.layers  # every parameter has a leading `layers` axis
        for i, layer in enumerate(torch_model.layers):
            attention, mlp = stack.attention, stack.mlp
            qkv = [t(p)[i].reshape(d, -1) for p in (attention.query.kernel, attention.key.kernel)]
            qkv.append(t(attention.value.kernel)[i].reshape(d, -1))
            layer.attention.qkv.weight.copy_(torch.cat(qkv, dim=1).T)
            layer.attention.out.weight.copy_(t(attention.out.kernel)[i].reshape(-1, d).T)
            layer.mlp.gate.weight.copy_(t(mlp.gate.kernel)[i].T)
            layer.mlp.up.weight.copy_(t(mlp.up.kernel)[i].T)
            layer.mlp.down.weight.copy_(t(mlp.down.kernel)[i].T)
            layer.attention_norm.weight.copy_(t(stack.attention_norm.scale)[i])
            layer.mlp_norm.weight.copy_(t(stack.mlp_norm.scale)[i])
        torch_logits = torch_model(torch.from_numpy(tokens).long()).numpy()
    np.testing.assert_allclose(torch_logits, jax_logits, rtol=1e-4, atol=1e-4)
