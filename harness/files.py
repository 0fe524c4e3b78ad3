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

import errno
import json
import math
import os
import tempfile
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional


class OutputPathError(ValueError):
    """An output path that cannot be written: one line, exit 2 at the command boundary."""


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (a symlink, a hard link, ``./x`` and ``x`` included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwriting_inputs(path: str, what: str, inputs: Iterable[Optional[str]]) -> None:
    """No command writes over one of its inputs: ``path`` may not be (or link to) any of them."""
    for source in inputs:
        if source and os.path.exists(source) and os.path.exists(path) and same_file(path, source):
            raise OutputPathError(f"refusing to write {what} {path}: it is one of this command's inputs ({source})")
        if source and not os.path.exists(path) and os.path.realpath(path) == os.path.realpath(source):
            raise OutputPathError(f"refusing to write {what} {path}: it is one of this command's inputs ({source})")


def _make_parents(path: str, what: str) -> str:
    """Create the missing folders above ``path`` (the one rule for every output path);
    returns the nearest folder."""
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise OutputPathError(f"cannot write {what} {path}: {probe} is a file, not a folder")
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"cannot write {what} {path}: cannot create {folder} ({os_reason(exc)})") from None
    return folder


def check_output_path(path: str, what: str = "output", inputs: Iterable[Optional[str]] = ()) -> str:
    """Refuse an output file that is a folder, one of ``inputs``, or not writable; create
    its missing parent folders."""
    if not path:
        raise OutputPathError(f"empty {what} path")
    if os.path.isdir(path):
        raise OutputPathError(f"cannot write {what} {path}: it is a folder, not a file")
    refuse_overwriting_inputs(path, what, inputs)
    folder = _make_parents(path, what)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {what} {path}: {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputPathError(f"cannot write {what} {path}: the file is read-only")
    return path


def check_output_dir(path: str, what: str = "output folder", inputs: Iterable[Optional[str]] = ()) -> str:
    """A folder that exists and is writable, or can be created under a writable parent;
    never one of ``inputs`` (a data folder a run reads)."""
    if not path:
        raise OutputPathError(f"empty {what} path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"cannot use {what} {path}: it is a file, not a folder")
    refuse_overwriting_inputs(path, what, inputs)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == os.path.abspath(probe):
            break
        probe = parent
    if not os.path.isdir(probe):
        raise OutputPathError(f"cannot write {what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {what} {path}: {probe} is not writable")
    return path


def check_input_file(path: str, what: str = "input") -> str:
    """An input that must be a readable file: a folder, a missing path and an unreadable file
    are each named for what they are."""
    if not path:
        raise OutputPathError(f"empty {what} path")
    if os.path.isdir(path):
        raise OutputPathError(f"{what} {path} is a folder, not a file")
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        where = "" if os.path.isdir(parent) else f" (the folder {parent} does not exist either)"
        raise OutputPathError(f"{what} {path}: no such file{where}")
    if not os.access(path, os.R_OK):
        raise OutputPathError(f"{what} {path} is not readable (permission denied)")
    return path


# errno -> the words a user reads (never a raw "[Errno 28]")
_OS_REASONS = {errno.ENOSPC: "no space left on the disk", errno.EFBIG: "file too large (the file-size limit, "
               "ulimit -f)", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
               errno.EPERM: "not permitted", errno.EROFS: "the file system is read-only",
               errno.ENOENT: "no such file or folder", errno.EISDIR: "it is a folder, not a file",
               errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EEXIST: "it exists already",
               errno.ENAMETOOLONG: "the name is too long", errno.EIO: "input/output error",
               errno.ENOMEM: "out of memory"}


def os_reason(exc: OSError) -> str:
    """An OSError's reason in words, without its ``[Errno N]`` prefix."""
    return _OS_REASONS.get(exc.errno) or (exc.strerror or str(exc)).lower()


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes, read a block at a time (OSError as it comes)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_json_input(path: str, what: str, error=None):
    """An input file holding JSON, read whole: a missing or unreadable file and text that is not
    JSON are each one line (``error``, default :class:`harness.errors.InputError`) naming
    ``what`` it should have been; the caller checks the shape it needs."""
    from harness.errors import InputError
    from harness.text import printable

    error = error or InputError
    try:
        check_input_file(path, what)
    except OutputPathError as exc:
        raise error(str(exc)) from None
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as exc:
        raise error(f"cannot read {what} {printable(path)}: {os_reason(exc)}") from None
    except ValueError as exc:
        raise error(f"{printable(path)} is not {what} (not JSON: {str(exc).splitlines()[0]})") from None


def describe_os_error(exc: OSError) -> str:
    """One line: which file, and what went wrong, in words (``x.json: no space left on the disk``)."""
    name = exc.filename if isinstance(exc.filename, str) else ""
    return f"{name}: {os_reason(exc)}" if name else os_reason(exc)


@contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any
    failure it is removed. ``suffix`` keeps an extension some writers insist on."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=suffix + ".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or os_reason(exc), path) from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the rest of the group
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename in (tmp, None):   # name the file the user asked for
            raise OSError(exc.errno, exc.strerror or os_reason(exc), path) from None
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


class MadeFolders(list):
    """The folders an output check created (the missing parents of an output path), so
    that a run refused or failed afterwards removes them again when they are still empty:
    a refused run leaves no trace, not even an empty folder."""

    def check_path(self, path: str, what: str, inputs=()) -> str:
        self._note(os.path.dirname(os.path.abspath(path)))
        return check_output_path(path, what, inputs=inputs)

    def _note(self, folder: str) -> None:
        chain = []
        while folder and not os.path.exists(folder) and folder != os.path.dirname(folder):
            chain.append(folder)
            folder = os.path.dirname(folder)
        self.extend(reversed(chain))   # parents first

    def remove_empty(self) -> None:
        for folder in reversed(self):
            try:
                os.rmdir(folder)   # only if empty: never a file of anyone's
            except OSError:
                pass
        self.clear()


@contextmanager
def undone_on_failure(made: MadeFolders):
    """Run the block; if it raises, remove the (still empty) folders its checks made."""
    try:
        yield made
    except BaseException:
        made.remove_empty()
        raise
