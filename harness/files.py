"""Writing result files so that nothing half-written is ever left behind.

Every file a command writes goes through :func:`atomic_path`: the content is written to a
temporary file in the destination's folder and moved over the destination only once it
is complete (``os.replace`` is atomic on one file system). A failure removes the
temporary file, so a full disk, a read-only folder or an interrupted run never leaves a
partial file or a stray ``.tmp`` of the size of a checkpoint.

:func:`check_output_path` is called *before* long work starts, so an unwritable output is
refused in one line instead of losing an hour's results at the end.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator


class OutputPathError(ValueError):
    """An output path that cannot be written: one line, exit 2 at the command boundary."""


def check_output_path(path: str, what: str = "output") -> str:
    """Refuse an output file whose folder is missing or not writable, or that is a folder."""
    if not path:
        raise OutputPathError(f"empty {what} path")
    if os.path.isdir(path):
        raise OutputPathError(f"cannot write {what} {path}: it is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputPathError(f"cannot write {what} {path}: no such directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {what} {path}: {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputPathError(f"cannot write {what} {path}: the file is read-only")
    return path


def check_output_dir(path: str, what: str = "output folder") -> str:
    """A folder that exists and is writable, or can be created under a writable parent."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"cannot use {what} {path}: it is a file")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == os.path.abspath(probe):
            break
        probe = parent
    if not os.path.isdir(probe):
        raise OutputPathError(f"cannot write {what} {path}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {what} {path}: {probe} is not writable")
    return path


@contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any
    failure it is removed. ``suffix`` keeps an extension some writers insist on."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the rest of the group
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def json_safe(obj):
    """``obj`` with every non-finite float replaced by ``None``: bare ``NaN`` and
    ``Infinity`` are not JSON, and strict parsers refuse the whole file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str, doc, indent: int = 2) -> None:
    """Strict JSON (non-finite numbers become ``null``), replaced atomically and synced."""
    text = json.dumps(json_safe(doc), indent=indent, default=str, allow_nan=False)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
