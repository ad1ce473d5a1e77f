"""Test setup: 8 fake CPU devices so every sharding path runs on a laptop-class machine."""

import os

# Must happen before jax is imported anywhere: XLA reads the flag once at backend start.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402 - after the flags above, which must precede jax


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Prepared data (60 stdlib documents, a 512-token vocabulary) for tiny training runs."""
    from jaxpretrain.curate import prepare

    path = tmp_path_factory.mktemp("data")
    prepare.prepare(str(path), "stdlib", vocab_size=512, max_documents=60, shard_bytes=1 << 14)
    return str(path)
