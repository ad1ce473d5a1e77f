"""Test setup: 8 fake CPU devices so every sharding path runs on a laptop-class machine."""

import os

# Must happen before jax is imported anywhere: XLA reads the flag once at backend start.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
