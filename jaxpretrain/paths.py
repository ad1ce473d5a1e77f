"""Workdir and data paths, local or gs://, through one library: etils.epath.

epath is what Orbax uses; for URLs it goes through fsspec (gcsfs for gs://) when TensorFlow is
absent. Object stores differ from a disk in three ways the helpers here account for: there are no
directories (a directory exists once it holds an object), no append, and no rename (a move is a
copy then a delete, done server side by `move`).
"""

from __future__ import annotations

import os

import fsspec
from etils import epath

# Every host writes into the workdir: a cached listing would hide the others' files (and a step
# another host just set aside would still be listed), so object store listings are not cached.
for _protocol in ("gs", "s3"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL (gs://bucket/run), false for a local path."""
    return "://" in os.fspath(path)


def check_supported(path: str | os.PathLike, key: str) -> None:
    """Refuses URLs other than gs://: Orbax writes checkpoint arrays through TensorStore and
    ArrayRecord reads shards through google-cloud-cpp, and both reach only Google Cloud Storage
    (an s3:// workdir would have its arrays written to a local folder named `s3:`)."""
    if is_remote(path) and not os.fspath(path).startswith("gs://"):
        raise ValueError(
            f"{key}={os.fspath(path)!r}: only local paths and gs:// URLs are supported; mount "
            "other object stores (s3fs, blobfuse) and pass the mount point."
        )


def resolve(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: URLs as given, local paths made absolute.

    epath's own `resolve()` would turn gs://b/x into ./gs:/b/x, which is how a pod's hosts each
    end up writing a partial checkpoint to their own disk.
    """
    if is_remote(path):
        return epath.Path(os.fspath(path))
    return epath.Path(os.path.abspath(os.fspath(path)))


def write_text_atomic(path: epath.Path, text: str) -> None:
    """Writes `path` so that readers see the old content or the new, never part of it.

    An object store's write is already all or nothing; on a disk, a temporary file is renamed.
    """
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: epath.Path, data: bytes) -> None:
    """`write_text_atomic` for bytes."""
    if is_remote(path):
        path.write_bytes(data)
        return
    temporary = path.parent / f"{path.name}.tmp"
    temporary.write_bytes(data)
    temporary.replace(path)


def files_under(root: epath.Path) -> list[tuple[str, epath.Path]]:
    """Every file below `root` as (path relative to root, path), on any file system.

    (epath's `walk` yields gs:// folders without their scheme, and its `rglob` refuses `**` on
    GCS, so this lists one level at a time.)
    """
    found: list[tuple[str, epath.Path]] = []
    pending = [("", root)]
    while pending:
        prefix, folder = pending.pop()
        for child in folder.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                pending.append((f"{name}/", child))
            else:
                found.append((name, child))
    return sorted(found)


def move(source: epath.Path, target: epath.Path, delete_first: tuple[str, ...] = ()) -> None:
    """Moves a file or a directory tree; `target` must not exist. On object stores every object
    is copied server side (no data passes through this host), then the source is deleted, the
    files named in `delete_first` (relative paths) before the rest: what marks the tree as
    complete goes first, so a move cut short leaves a tree that is visibly incomplete."""
    if not is_remote(source):
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
        return
    filesystem, source_path = fsspec.core.url_to_fs(os.fspath(source))
    _, target_path = fsspec.core.url_to_fs(os.fspath(target))
    if filesystem.isdir(source_path):
        files = files_under(source)
        for relative, path in files:
            _, path_in_fs = fsspec.core.url_to_fs(os.fspath(path))
            filesystem.copy(path_in_fs, f"{target_path}/{relative}")
        for relative, _ in files:
            if relative in delete_first:
                filesystem.rm(f"{source_path}/{relative}")
        filesystem.rm(source_path, recursive=True)
    else:
        filesystem.mv(source_path, target_path)
