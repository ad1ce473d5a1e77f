"""A local Google Cloud Storage for tests: gcp-storage-emulator, plus the two GCS behaviours
TensorStore's GCS driver (Orbax's array writer) relies on and the emulator lacks.

- Generation preconditions: `ifGenerationMatch` (0: the object must not exist) answers 412 and
  `ifGenerationNotMatch` on a read answers 304, as GCS does. OCDBT commits its manifest with
  conditional writes; without them concurrent commits would silently overwrite each other.
- The `x-goog-generation` header on media downloads, from which TensorStore learns the
  generation it read.

`start()` returns the server and the environment that points gcsfs (epath's gs:// backend),
TensorStore and ArrayRecord's reader at it; no credentials are looked up. `serving()` is the
context manager tests use: the emulator, with this process's environment pointing at it, for the
duration of a `with` block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from http import HTTPStatus

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import NotFound


def _object_generation(storage, bucket: str | None, name: str | None) -> str:
    if not bucket or not name:
        return "0"
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"


def _with_preconditions(handler):
    def handle(request, response, storage, *args, **kwargs):
        bucket = request.params.get("bucket_name")
        name = request.params.get("object_id") or (request.query.get("name") or [None])[0]
        current = _object_generation(storage, bucket, name)
        match = request.query.get("ifGenerationMatch")
        if match is not None and match[0] != current:
            response.status = HTTPStatus.PRECONDITION_FAILED
            return None
        not_match = request.query.get("ifGenerationNotMatch")
        if not_match is not None and not_match[0] == current:
            response.status = HTTPStatus.NOT_MODIFIED
            return None
        if current != "0":
            response["x-goog-generation"] = current
        return handler(request, response, storage, *args, **kwargs)

    return handle


_patched = False


def _patch_emulator() -> None:
    global _patched
    if _patched:
        return
    emulator_server.HANDLERS = tuple(
        (pattern, {method: _with_preconditions(fn) for method, fn in methods.items()})
        for pattern, methods in emulator_server.HANDLERS
    )
    _patched = True


def start(bucket: str) -> tuple[object, dict[str, str]]:
    """Starts an in-memory emulator holding `bucket`; returns (server, environment)."""
    _patch_emulator()
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # 404s are expected
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    server = emulator_server.create_server("localhost", port, in_memory=True, default_bucket=bucket)
    server.start()
    url = f"http://localhost:{port}"
    environment = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # google-cloud-cpp, inside ArrayRecord
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore: no credential lookup
    }
    return server, environment


def _forget_gcsfs_instances() -> None:
    """Drops gcsfs's cached instances (epath's among them): one made for another emulator would
    point at a port that is gone. Nothing is cached if gcsfs was never imported."""
    gcsfs = sys.modules.get("gcsfs")
    if gcsfs is not None:
        gcsfs.GCSFileSystem.clear_instance_cache()


@contextlib.contextmanager
def serving(bucket: str) -> Iterator[dict[str, str]]:
    """An emulator holding `bucket` for the duration of the block, with `os.environ` pointing at
    it (so subprocesses started inside inherit it); yields that environment, for `env=` too.

    On exit the server stops, each variable is back as it was (removed if it was unset) and
    gcsfs's cached instances are dropped.
    """
    server, environment = start(bucket)
    saved = {key: os.environ.get(key) for key in environment}
    _forget_gcsfs_instances()
    try:
        os.environ.update(environment)
        yield environment
    finally:
        _forget_gcsfs_instances()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
