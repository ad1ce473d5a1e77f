"""Hugging Face export and import, and `jaxpretrain.load`.

Tests that need the `hf` extra (safetensors, tokenizers, transformers, torch) skip without it;
CI runs this file again in an environment that has it (.venv-hf). The rest run everywhere.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import ml_dtypes
import numpy as np
import pytest
from test_remote_workdir import gcs  # noqa: F401 - the GCS emulator fixture
from test_remote_workdir import storage as gcs_storage
from test_train import tiny_config  # pytest puts tests/ on sys.path

import jaxpretrain
from jaxpretrain import state as state_lib
from jaxpretrain import train
from jaxpretrain.hf import layout
from jaxpretrain.model import ModelConfig

_ROOT = pathlib.Path(__file__).parent.parent


def hf_config(data_dir, *, tie: bool, steps: int = 6):
    """The tiny test model (GQA: 4 query heads, 2 key/value heads), float32 compute."""
    config = tiny_config(data_dir, steps=steps)
    config.model.tie_embeddings = tie
    return config


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """trained(tie) -> a workdir trained 6 steps (checkpoints 3 and 6), made once per module."""
    workdirs = {}

    def make(tie: bool) -> str:
        if tie not in workdirs:
            workdir = str(tmp_path_factory.mktemp(f"trained_tie_{tie}"))
            train.train_and_evaluate(hf_config(data_dir, tie=tie), workdir)
            workdirs[tie] = workdir
        return workdirs[tie]

    return make


def export_folder(workdir: str, output, **options) -> str:
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    from jaxpretrain.hf import export

    return export.export(workdir, str(output), **options)


def read_tensors(folder) -> dict[str, np.ndarray]:
    from jaxpretrain.hf import safetensors_io

    tensors = safetensors_io.SafetensorsFolder(folder)
    return {name: tensors.read(name) for name in tensors.names()}


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def sharpened_llama(tie: bool):
    """A randomly initialised transformers Llama of the tiny test model's shape whose attention
    is far from uniform (large q/k weights), so a RoPE or head-order mistake shows in the
    logits; norm weights are not all ones, so a norm mix-up shows too."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                parameter.normal_(0.0, 0.25)
            elif "proj" in name:
                parameter.normal_(0.0, 0.08)
            elif "norm" in name:
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, 1.0)
    return model


def test_tensor_maps_invert_and_lay_out_heads_as_llama_does():
    cfg = ModelConfig(
        vocab_size=96,
        num_layers=2,
        embed_dim=8,
        num_heads=4,
        num_kv_heads=2,
        head_dim=6,
        mlp_dim=10,
        max_seq_len=16,
        tie_embeddings=False,
    )
    abstract = state_lib.abstract_model(cfg)[1]
    rng = np.random.default_rng(0)
    hf_shapes = {}
    for name, tensor_map, _ in layout.hf_tensors(cfg):
        shape = layout.param_at(abstract, tensor_map.path).shape
        ours = rng.normal(size=shape[1:] if tensor_map.per_layer else shape).astype(np.float32)
        theirs = tensor_map.to_hf(ours)
        hf_shapes[name] = theirs.shape
        assert theirs.flags.c_contiguous
        np.testing.assert_array_equal(tensor_map.from_hf(theirs, ours.shape), ours)
        if name == "model.layers.1.self_attn.q_proj.weight":  # row n * head_dim + h, column d
            np.testing.assert_array_equal(theirs[2 * 6 + 5, 7], ours[7, 2, 5])
        if name == "model.layers.1.self_attn.o_proj.weight":  # [embed, heads * head_dim]
            np.testing.assert_array_equal(theirs[7, 3 * 6 + 1], ours[3, 1, 7])
    layer0 = {name[len("model.layers.0.") :]: shape for name, shape in hf_shapes.items()}
    assert layer0["self_attn.q_proj.weight"] == (4 * 6, 8)
    assert layer0["self_attn.k_proj.weight"] == layer0["self_attn.v_proj.weight"] == (2 * 6, 8)
    assert layer0["self_attn.o_proj.weight"] == (8, 4 * 6)
    assert layer0["mlp.gate_proj.weight"] == layer0["mlp.up_proj.weight"] == (10, 8)
    assert layer0["mlp.down_proj.weight"] == (8, 10)
    assert hf_shapes["model.embed_tokens.weight"] == hf_shapes["lm_head.weight"] == (96, 8)
    assert len(hf_shapes) == 2 + 2 * 9 + 1  # embedding, lm_head, 9 per layer, final norm


TEXTS = [
    "Hello, world!",
    "  two leading spaces, two trailing  ",
    "tabs\tand\nnewlines\r\n\n\n",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "naïve café — “quotes” ✓ 日本語テキスト 😀 \u200b \x00",
    "</s> <s> <pad> <unk> <mask> [NLU] <extra_id_0> <0x41>",  # specials as plain text
    "12345 3.14159 -1e-9",
    "",
    " ",
    "ababababa",
]


def test_exported_tokenizer_encodes_and_decodes_like_ours(data_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from jaxpretrain.data import manifest as manifest_lib
    from jaxpretrain.hf import tokenizer as hf_tokenizer
    from jaxpretrain.tokenizer import Tokenizer

    ours = Tokenizer.load(manifest_lib.read_manifest(data_dir).tokenizer_path)
    for file_name, content in hf_tokenizer.tokenizer_files(ours, 64).items():
        (tmp_path / file_name).write_bytes(content)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    stdlib = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:100]
    texts = TEXTS + [path.read_text(errors="replace") for path in stdlib]
    for text in texts:
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == ids, text[:60]
        assert theirs.decode(ids) == ours.decode(ids)
    specials = ours.special_ids
    assert (theirs.pad_token_id, theirs.eos_token_id, theirs.bos_token_id, theirs.unk_token_id) == (
        specials.pad,
        specials.eos,
        specials.bos,
        specials.unk,
    )
    with_specials = [specials.bos, specials.mask, specials.sentinels[0], *ours.encode("hi"), 1]
    assert theirs.decode(with_specials, skip_special_tokens=True) == ours.decode(with_specials)


def test_a_unigram_tokenizer_is_refused_in_one_line(tmp_path):
    from jaxpretrain.hf import tokenizer as hf_tokenizer
    from jaxpretrain.tokenizer import train_tokenizer

    stdlib = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:15]
    texts = [path.read_text(errors="replace") for path in stdlib]
    unigram = train_tokenizer(texts, tmp_path / "u.model", vocab_size=600, model_type="unigram")
    with pytest.raises(ValueError, match="model_type='unigram', but only model_type='bpe'") as err:
        hf_tokenizer.tokenizer_files(unigram, 64, source="u.model")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_export_gives_transformers_our_logits(trained, tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    workdir = trained(tie)
    # Small files: the sharded layout with its index, as a large model gets.
    output = export_folder(workdir, tmp_path / "hf", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert ("lm_head.weight" in index["weight_map"]) == (not tie)

    theirs = transformers.LlamaForCausalLM.from_pretrained(output).eval()
    assert theirs.config.tie_word_embeddings == tie
    assert theirs.config.num_key_value_heads == 2 < theirs.config.num_attention_heads
    ours = jaxpretrain.load(workdir)
    ids = np.random.default_rng(0).integers(0, 512, (3, 64))
    expected = torch_logits(theirs, ids)
    np.testing.assert_allclose(ours.logits(ids), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_a_transformers_llama_imports_and_exports_unchanged(data_dir, tmp_path, tie):
    """transformers' own Llama -> import -> same logits here -> export -> the same files."""
    model = sharpened_llama(tie)
    model.save_pretrained(tmp_path / "theirs")
    from jaxpretrain.hf import importer

    workdir = str(tmp_path / "run")
    importer.import_checkpoint(str(tmp_path / "theirs"), hf_config(data_dir, tie=tie), workdir)
    ours = jaxpretrain.load(workdir)
    assert ours.step == 0
    ids = np.random.default_rng(1).integers(0, 512, (3, 64))
    expected = torch_logits(model, ids)
    scale = float(np.abs(expected).max())
    assert scale > 20  # attention far from uniform: a RoPE mistake would be visible
    # float32 rounding only: measured 2.1e-5 at logits up to 71 (a wrong RoPE pairing: 26).
    np.testing.assert_allclose(ours.logits(ids), expected, rtol=0, atol=1e-6 * scale)

    export_folder(workdir, tmp_path / "ours")
    assert_bit_identical(read_tensors(tmp_path / "ours"), read_tensors(tmp_path / "theirs"))


def test_import_then_export_is_bit_identical_and_bfloat16_rounds(data_dir, trained, tmp_path):
    from jaxpretrain.hf import importer

    exported = export_folder(trained(True), tmp_path / "first")
    workdir = str(tmp_path / "imported")
    importer.import_checkpoint(exported, hf_config(data_dir, tie=True), workdir)
    again = export_folder(workdir, tmp_path / "second")
    assert_bit_identical(read_tensors(exported), read_tensors(again))
    with pytest.raises(FileExistsError, match="already holds exported weights"):
        export_folder(workdir, tmp_path / "second")  # stale shards would mix with new ones

    halved = export_folder(workdir, tmp_path / "bf16", dtype="bfloat16")
    rounded = {name: x.astype(ml_dtypes.bfloat16) for name, x in read_tensors(exported).items()}
    assert_bit_identical(read_tensors(halved), rounded)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_generate_at_temperature_zero_is_the_greedy_decode_of_logits(trained):
    model = jaxpretrain.load(trained(True))
    prompt, new_tokens = "def ", 12
    text = model.generate(prompt, max_new_tokens=new_tokens, temperature=0.0)
    assert text == model.generate(prompt, max_new_tokens=new_tokens, temperature=0.0, seed=9)

    special = model.tokenizer.special_ids
    ids = [special.bos, *model.tokenizer.encode(prompt)]
    prompt_length = len(ids)
    # A fixed-length buffer (one compiled shape); causal attention ignores the padding after.
    buffer = np.full((1, model.config.train.seq_len), special.pad, np.int32)
    buffer[0, :prompt_length] = ids
    for index in range(prompt_length, prompt_length + new_tokens):
        buffer[0, index] = int(np.argmax(model.logits(buffer)[0, index - 1]))
    greedy = buffer[0, prompt_length : prompt_length + new_tokens].tolist()
    if special.eos in greedy:
        greedy = greedy[: greedy.index(special.eos)]
    assert text == model.tokenizer.decode(greedy)


def test_load_picks_a_step_and_needs_no_training_data(data_dir, trained, tmp_path):
    source = trained(True)
    newest = jaxpretrain.load(source)
    earlier = jaxpretrain.load(source, step=3)
    assert (newest.step, earlier.step) == (6, 3)
    ids = np.arange(40, 80).reshape(2, 20)
    assert not np.allclose(newest.logits(ids), earlier.logits(ids))
    with pytest.raises(FileNotFoundError, match=r"has no checkpoint 4 \(it has \[3, 6\]\)"):
        jaxpretrain.load(source, step=4)

    # The same run with its prepared data gone: the workdir's own copy of the tokenizer serves.
    workdir = tmp_path / "moved"
    shutil.copytree(source, workdir)
    config = json.loads((workdir / "config.json").read_text())
    config["data"]["dir"] = str(tmp_path / "gone")
    (workdir / "config.json").write_text(json.dumps(config))
    np.testing.assert_array_equal(jaxpretrain.load(str(workdir)).logits(ids), newest.logits(ids))
    # Without that copy too: a clear error, or the tokenizer given.
    (workdir / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="data.dir=.*gone.*tokenizer_path") as error:
        jaxpretrain.load(str(workdir))
    assert "\n" not in str(error.value)
    tokenizer_path = os.path.join(data_dir, "tokenizer.model")
    moved = jaxpretrain.load(str(workdir), tokenizer_path=tokenizer_path)
    np.testing.assert_array_equal(moved.logits(ids), newest.logits(ids))
    with pytest.raises(ValueError, match=r"\[batch, length\] integer array"):
        moved.logits(np.zeros(5, np.int32))


def test_import_errors_name_the_key_or_tensor_and_both_values(data_dir, trained, tmp_path):
    from jaxpretrain.hf import importer, safetensors_io

    exported = export_folder(trained(True), tmp_path / "hf")

    def import_error(folder, config, workdir) -> str:
        with pytest.raises(ValueError) as error:
            importer.import_checkpoint(str(folder), config, str(workdir))
        assert "\n" not in str(error.value)
        return str(error.value)

    wider = hf_config(data_dir, tie=True)
    wider.model.mlp_dim = 96
    message = import_error(exported, wider, tmp_path / "a")
    assert "model.mlp_dim=96 vs intermediate_size=128" in message

    # config.json agrees, one tensor does not: named with its file and both shapes.
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    tensors = read_tensors(broken)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((128, 32), np.float32)
    (broken / "model.safetensors").unlink()
    writer = safetensors_io.ShardedWriter(
        broken, [(name, x.nbytes) for name, x in tensors.items()], 10**9
    )
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    writer.close()
    message = import_error(broken, hf_config(data_dir, tie=True), tmp_path / "b")
    assert "model.safetensors: model.layers.1.mlp.up_proj.weight has shape [128, 32]" in message
    assert "needs [128, 64]" in message

    config = hf_config(data_dir, tie=True)
    importer.import_checkpoint(exported, config, str(tmp_path / "c"))
    message = import_error(exported, config, tmp_path / "c")
    assert "already holds checkpoints [0]" in message


def run_python(*args: str, cwd) -> subprocess.CompletedProcess:
    """A tool or the main job as a user runs it: one CPU device (no XLA_FLAGS)."""
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


CONFIG_FILE = """
from jaxpretrain.config import default_config


def get_config():
    config = default_config()
    config.model.update(num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2, head_dim=16,
                        mlp_dim=128, max_seq_len=64, dtype="float32")
    config.train.update(steps=4, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=2, log_every=2)
    config.checkpoint.update(every=2)
    config.eval.update(every=2, steps=2)
    config.data.dir = {data_dir!r}
    return config
"""


@pytest.mark.slow
def test_export_import_tools_and_the_main_job_continue_from_the_weights(
    data_dir, trained, tmp_path
):
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    source = trained(True)
    exported = run_python(
        str(_ROOT / "tools" / "export_hf.py"), f"--workdir={source}", "--output=hf", cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    (tmp_path / "config.py").write_text(CONFIG_FILE.format(data_dir=data_dir))
    config_args = ("--config=config.py", "--workdir=run")
    imported = run_python(
        str(_ROOT / "tools" / "import_hf.py"), "--hf=hf", *config_args, cwd=tmp_path
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert "wrote checkpoint 0" in imported.stdout
    trained_on = run_python("-m", "jaxpretrain.main", *config_args, cwd=tmp_path)
    assert trained_on.returncode == 0, trained_on.stderr[-3000:]

    with open(tmp_path / "run" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records[0]["event"] == "resume" and records[0]["step"] == 0
    eval_losses = {r["step"]: r["eval/loss"] for r in records if "eval/loss" in r}
    # Step 0 evaluates the imported weights: the source run's validation loss at its checkpoint.
    source_loss = train.evaluate_checkpoint(hf_config(data_dir, tie=True), source)["eval/loss"]
    assert eval_losses[0] == pytest.approx(source_loss, rel=1e-5)
    assert sorted(eval_losses) == [0, 2, 4] and eval_losses[4] < eval_losses[0]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints"))[-1] == "4"


@pytest.mark.slow
def test_a_gs_workdir_exports_to_gs_and_loads(gcs, data_dir, tmp_path):  # noqa: F811
    """Checkpoints read by Orbax from gs://, tensors written through epath to gs://."""
    workdir = "gs://bucket/hf_runs/tiny"
    train.train_and_evaluate(hf_config(data_dir, tie=True, steps=3), workdir)
    remote = export_folder(workdir, "gs://bucket/hf_runs/tiny/hf", max_shard_bytes=100_000)
    local = export_folder(workdir, tmp_path / "local", max_shard_bytes=100_000)
    remote_files = gcs_storage().ls(remote.removeprefix("gs://"))
    assert sorted(path.rsplit("/", 1)[-1] for path in remote_files) == sorted(os.listdir(local))
    gcs_storage().get(f"{remote}/", str(tmp_path / "downloaded") + "/", recursive=True)
    assert_bit_identical(read_tensors(tmp_path / "downloaded"), read_tensors(local))
    assert jaxpretrain.load(workdir).step == 3
