"""Config validation: each bad value stops with one sentence naming the key before compiling."""

import pytest

from jaxpretrain import config as config_lib


def tiny_config():
    config = config_lib.default_config()
    config.train.batch_size = 8
    config.train.seq_len = 64
    config.model.max_seq_len = 128
    return config


def test_defaults_validate_on_eight_devices():
    assert config_lib.validate(tiny_config(), num_devices=8) == {
        "data": 8,
        "fsdp": 1,
        "tensor": 1,
        "pipe": 1,
    }


def test_fill_axis_takes_the_remaining_devices():
    config = tiny_config()
    config.mesh.data, config.mesh.fsdp = 2, -1
    assert config_lib.validate(config, num_devices=8)["fsdp"] == 4


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mesh.fsdp", 3, "mesh axes"),
        ("train.batch_size", 12, "train.batch_size=12"),
        ("train.seq_len", 256, "train.seq_len=256 exceeds model.max_seq_len=128"),
        ("objective.name", "nope", "objective.name='nope'"),
        ("model.num_kv_heads", 3, "model.num_kv_heads=3"),
        ("model.remat_policy", "some", "model.remat_policy='some'"),
        ("model.dtype", "int8", "model.dtype='int8'"),
        ("train.steps", 0, "train.steps=0"),
        ("mesh.tensor", 8, "model.num_heads=4 does not split over mesh.tensor=8"),
        ("mesh.pipe", 8, "model.num_layers=4 does not split into mesh.pipe=8"),
        ("mesh.pipeline_repeats", 2, "apply to pipeline parallelism only"),
        ("train.grad_accum_steps", 3, "train.grad_accum_steps=3"),
        ("eval.steps", 0, "eval.steps=0"),
        ("model.dtype", "float16", "model.dtype='float16' needs loss scaling"),
        ("train.anomaly.action", "ignore", "train.anomaly.action='ignore'"),
        ("train.anomaly.loss_spike_factor", 0.5, "train.anomaly.loss_spike_factor=0.5"),
        ("train.anomaly.ema_decay", 1.0, "train.anomaly.ema_decay=1.0"),
        ("train.anomaly.max_rollbacks", -1, "train.anomaly.max_rollbacks=-1"),
        ("train.z_loss", -1e-4, "train.z_loss=-0.0001"),
        ("data.num_streams", -2, "data.num_streams=-2"),
    ],
)
def test_invalid_values_name_the_key(key, value, message):
    config = tiny_config()
    *sections, name = key.split(".")
    if key == "mesh.fsdp":
        config.mesh.data = 1
    section = config
    for part in sections:
        section = section[part]
    section[name] = value
    with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")):
        config_lib.validate(config, num_devices=8)


def test_mesh_must_match_device_count():
    config = tiny_config()
    config.mesh.data, config.mesh.fsdp = 2, 2
    with pytest.raises(config_lib.ConfigError, match="multiply to 4 but there are 8 devices"):
        config_lib.validate(config, num_devices=8)


def test_two_fill_axes_rejected():
    config = tiny_config()
    config.mesh.fsdp = -1
    with pytest.raises(config_lib.ConfigError, match="at most one mesh axis may be -1"):
        config_lib.validate(config, num_devices=8)


def test_config_json_is_the_resolved_config(tmp_path):
    import json

    config = tiny_config()
    path = config_lib.write_config_json(config, str(tmp_path))
    with open(path) as f:
        written = json.load(f)
    assert written["train"]["batch_size"] == 8
    assert written["mesh"]["rules"][0] == ["batch", ["data", "fsdp"]]


def test_circular_pipeline_needs_a_microbatch_per_stage():
    config = tiny_config()
    config.mesh.update(pipe=2, pipeline_repeats=2, microbatches=1)
    with pytest.raises(config_lib.ConfigError, match="mesh.microbatches=1 is fewer than mesh.pipe"):
        config_lib.validate(config, num_devices=8)
    config.mesh.microbatches = 2
    assert config_lib.validate(config, num_devices=8)["pipe"] == 2


def test_batch_must_split_into_micro_steps_microbatches_and_shards():
    config = tiny_config()  # batch 8 on data=8: one row per device
    config.train.grad_accum_steps = 2
    with pytest.raises(config_lib.ConfigError, match="use a multiple of 16"):
        config_lib.validate(config, num_devices=8)
    config.mesh.update(data=2, pipe=4, microbatches=2)
    assert config_lib.validate(config, num_devices=8) == {
        "data": 2,
        "fsdp": 1,
        "tensor": 1,
        "pipe": 4,
    }


def test_bfloat16_parameters_are_allowed_with_a_warning(caplog):
    config = tiny_config()
    config.model.param_dtype = "bfloat16"
    with caplog.at_level("WARNING"):
        config_lib.validate(config, num_devices=8)
    assert "keeps no float32 master weights" in caplog.text
