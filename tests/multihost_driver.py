"""Runs `train.train_and_evaluate` as one process of a localhost CPU cluster (for tests).

    python tests/multihost_driver.py PROCESS_ID NUM_PROCESSES PORT DEVICES CONFIG_JSON WORKDIR

Each process gets DEVICES fake CPU devices and joins the cluster through
`jax.distributed.initialize` (gloo collectives), as one host of a pod would. CONFIG_JSON is a
file holding `{"config": <config.to_dict()>}`. Prints one JSON line: the run's history.
"""

import json
import os
import sys


def main() -> None:
    process_id, num_processes, port, devices = (int(value) for value in sys.argv[1:5])
    config_path, workdir = sys.argv[5:7]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if num_processes > 1:
        jax.distributed.initialize(
            f"localhost:{port}", num_processes=num_processes, process_id=process_id
        )
    import ml_collections

    from jaxpretrain import config as config_lib
    from jaxpretrain import train

    with open(config_path) as f:
        saved = json.load(f)["config"]
    config = config_lib.default_config()
    config.update_from_flattened_dict(_flatten(saved))
    config.mesh.rules = tuple((name, _axes(axes)) for name, axes in saved["mesh"]["rules"])
    assert isinstance(config, ml_collections.ConfigDict)
    result = train.train_and_evaluate(config, workdir)
    print(json.dumps({"history": result.history, "preempted": result.preempted}), flush=True)


def _axes(axes):
    return tuple(axes) if isinstance(axes, list) else axes


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if key == "rules":
            continue
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


if __name__ == "__main__":
    main()
