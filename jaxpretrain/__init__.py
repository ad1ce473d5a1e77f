"""jaxpretrain: pretrain language models end to end in JAX/Flax (see README.md).

`jaxpretrain.load(workdir, step=None)` returns a trained checkpoint's model (`pretrained.load`);
it is imported on first use, so `import jaxpretrain` stays free of JAX.
"""

from typing import Any

__all__ = ["load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from jaxpretrain.pretrained import load

        return load
    raise AttributeError(f"module 'jaxpretrain' has no attribute {name!r}")
