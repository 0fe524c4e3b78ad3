"""Reading and writing weight files as ``{name: numpy array}``, the container found from content.

This module holds the PyTorch zip (``.pth``/``.pt``, ``torch.save``), numpy ``.npz`` and
``.safetensors`` containers (sniffer, reader, writer each); MindSpore ``.ckpt`` and Caffe2
``.pkl`` have modules of their own. Which containers exist, and in which order their
sniffers are tried, is :data:`harness.checkpoints.formats.CONTAINERS`; ``formats.read_raw`` and
``formats.sniff_container`` read that table (this module, below it, imports none of it). The
content, not the extension, decides.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from harness import files
from harness.files import atomic_path

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A weight file that cannot be read or does not fit: always a one-line reason."""


class DamagedFile(CheckpointError):
    """A file whose bytes do not match the checksum it carries (``reason`` says how)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: damaged: {reason}")
        self.path, self.reason = path, reason


@dataclass
class RawCheckpoint:
    """A file's arrays under their own (foreign) names, before any renaming."""

    path: str
    container: str                    # torch | npz | safetensors | ckpt | pickle
    arrays: Dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)
    # what guards the bytes against damage, as checked on reading: "crc32 ok" (a MindSpore
    # CRC trailer), "zip crc32 ok" (every member of a .pth / .npz), or NO_CHECKSUM
    integrity: str = ""


NO_CHECKSUM = "none in file"
NO_CHECKSUM_NOTE = "a flipped bit inside tensor data cannot be detected"


def describe_integrity(integrity: str) -> str:
    """How a message states a file's integrity check, in words."""
    if integrity == NO_CHECKSUM:
        return f"{NO_CHECKSUM} ({NO_CHECKSUM_NOTE})"
    return integrity or "not checked"


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    try:
        return files.sha256_file(path, chunk)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None


def _c_order(value: np.ndarray) -> np.ndarray:
    return np.require(value, requirements="C")  # unlike ascontiguousarray, keeps 0-d arrays 0-d


def arrays_sha256(arrays: Dict[str, np.ndarray]) -> str:
    """A digest of the weights themselves (names, dtypes, shapes, bytes), independent of
    the container: two .npz files holding the same arrays differ in their zip timestamps."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = _c_order(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------- detection
ZIP_MAGIC = b"PK\x03\x04"
HEAD_BYTES = 16   # what every sniffer is shown of a file's start


def _zip_members(path: str) -> List[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path} is a damaged zip archive (truncated download?)") from None


# a zip's members may expand to at most this many times the file's size, plus ZIP_SLACK:
# torch.save and np.savez store their members uncompressed (ratio 1), and even
# savez_compressed of float weights stays near 1; a deflate bomb is 1000
ZIP_EXPANSION, ZIP_SLACK = 16, 256 << 20


def check_zip_sizes(path: str) -> Dict[str, int]:
    """Refuse a zip whose members declare more bytes than the file could justify (before
    anything is read or allocated); returns ``{member name: uncompressed size}``."""
    from harness.checkpoints.safe_pickle import _human

    try:
        with zipfile.ZipFile(path) as z:
            sizes = {info.filename: info.file_size for info in z.infolist()}
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path} is a damaged zip archive (truncated download?)") from None
    total, size = sum(sizes.values()), os.path.getsize(path)
    if total > ZIP_EXPANSION * size + ZIP_SLACK:
        raise CheckpointError(f"refusing {path}: its zip members declare {_human(total)} from a file of "
                              f"{_human(size)} (a decompression bomb, or a damaged directory)")
    return sizes


def check_zip_crc(path: str) -> str:
    """Every member's bytes against the CRC-32 the zip records for it (torch.load does not
    check them): ``"zip crc32 ok"``, or a one-line CheckpointError naming the member."""
    name = ""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename.split("/", 1)[-1] if "/" in info.filename else info.filename
                with z.open(info) as member:
                    while member.read(1 << 22):
                        pass
    except zipfile.BadZipFile as exc:
        if "CRC" in str(exc):
            raise DamagedFile(path, f"the CRC-32 does not match the content of {name} "
                                    "(a flipped bit or a bad copy)") from None
        raise CheckpointError(f"{path} is a damaged zip archive ({exc})") from None
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # a damaged deflated member
        raise CheckpointError(f"{path}: damaged zip archive ({name}: {exc})") from None
    return "zip crc32 ok"


def looks_like_torch(path: str, head: bytes) -> bool:
    """A ``torch.save`` zip: a zip archive holding a ``data.pkl``."""
    return head[:4] == ZIP_MAGIC and any(n.endswith("data.pkl") for n in _zip_members(path))


def looks_like_npz(path: str, head: bytes) -> bool:
    """An ``.npz``: a zip archive of ``.npy`` members only."""
    if head[:4] != ZIP_MAGIC:
        return False
    names = _zip_members(path)
    return bool(names) and all(n.endswith(".npy") for n in names)


def looks_like_safetensors(path: str, head: bytes) -> bool:
    """A little-endian u64 header length, then the JSON header's ``{``."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len < 100_000_000 and head[8:9] == b"{"


# ------------------------------------------------------------------------- readers
def _torch_to_numpy(obj):
    import torch

    if isinstance(obj, torch.Tensor):   # unbound: an unpickled instance's attributes cannot intervene
        return torch.Tensor.numpy(torch.Tensor.cpu(torch.Tensor.detach(obj)))
    return obj


def refusal(path: str, what: str) -> CheckpointError:
    """The one-line error for a file that would need code run to be read."""
    from harness.checkpoints.safe_pickle import REFUSAL_ADVICE

    return CheckpointError(f"refusing to unpickle {what} from {path}: {REFUSAL_ADVICE}")


def _torch_load(path: str, trust: bool):
    """``torch.load`` that runs no code from the file unless ``trust``: see
    :mod:`harness.checkpoints.safe_pickle`; returns (object, globals left as placeholders)."""
    import torch

    from harness.checkpoints import safe_pickle

    if trust:
        return torch.load(path, map_location="cpu", weights_only=False), set()
    with zipfile.ZipFile(path) as z:
        if any(n.endswith("constants.pkl") for n in z.namelist()):
            # torch.load hands TorchScript archives to torch.jit.load: code, not a state dict
            raise CheckpointError(f"{path} is a TorchScript archive (a program, not a state dict); "
                                  "save the model's state_dict() instead")
    sizes = check_zip_sizes(path)
    records = {name.rsplit("/data/", 1)[1]: size for name, size in sizes.items() if "/data/" in name}
    module, placeholders = safe_pickle.pickle_module(records=records)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module), placeholders
    except RuntimeError as exc:
        if "explicit pickle_module" not in str(exc):   # TORCH_FORCE_WEIGHTS_ONLY_LOAD is set:
            raise                                       # torch's own restricted unpickler then
        return torch.load(path, map_location="cpu", weights_only=True), set()


def read_torch(path: str, trust: bool = False) -> RawCheckpoint:
    """A ``torch.save`` zip: its ``state_dict`` (or the dict itself) as arrays, and ``meta``.
    Without ``trust`` nothing from the file is imported or run (see
    :mod:`harness.checkpoints.safe_pickle`): mmengine's ``message_hub``, ``optimizer`` and
    other entries beside the state dict may hold objects of any class; they become inert
    placeholders and are dropped."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CheckpointError(f"{path} is a PyTorch file; install torch to read it") from None
    from harness.checkpoints.safe_pickle import Placeholder, PickleTooLarge, RefusedGlobal, inert_copy

    integrity = check_zip_crc(path) if zipfile.is_zipfile(path) else ""
    try:
        obj, placeholders = _torch_load(path, trust)
    except CheckpointError:
        raise
    except RefusedGlobal as exc:
        raise refusal(path, f"{exc.module}.{exc.name}") from None
    except PickleTooLarge as exc:
        raise CheckpointError(f"refusing {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any damage is a one-line reason
        text = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: unreadable PyTorch file ({type(exc).__name__}"
                              f"{': ' + text[0] if text else ''})") from None
    if placeholders:
        log.info("%s: left as inert placeholders (not imported): %s", path, ", ".join(sorted(placeholders)))
    meta = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = obj.get("meta") or {}
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        what = repr(obj) if isinstance(obj, Placeholder) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{path}: holds {what}, not a state dict")
    odd_keys = [repr(k) for k in obj if not isinstance(k, str)]
    if odd_keys:
        raise CheckpointError(f"{path}: state dict keys that are not names: {', '.join(odd_keys[:5])}")
    try:
        arrays = {k: _torch_to_numpy(v) for k, v in obj.items()}
    except (TypeError, RuntimeError) as exc:   # e.g. bfloat16, which numpy lacks
        raise CheckpointError(f"{path}: a tensor numpy cannot hold ({str(exc).splitlines()[0]})") from None
    if arrays and all(k.startswith("module.") for k in arrays):
        arrays = {k[len("module."):]: v for k, v in arrays.items()}
    bad = [f"{k} ({v!r})" if isinstance(v, Placeholder) else str(k)
           for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(bad[:5])}")
    try:
        meta = inert_copy(meta) if isinstance(meta, dict) else {}
    except PickleTooLarge as exc:
        raise CheckpointError(f"refusing {path}: {exc}") from None
    return RawCheckpoint(path, "torch", arrays, meta, integrity)


def _check_npy_headers(path: str) -> None:
    """Each ``.npy`` member's header may not declare more bytes than the member holds (numpy
    allocates the declared array before reading it)."""
    from harness.checkpoints.safe_pickle import _human

    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            try:
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = reader(f)
            except Exception:  # noqa: BLE001 - np.load names what is wrong with it
                continue
            if dtype.hasobject:
                continue
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared > info.file_size:
                raise CheckpointError(f"refusing {path}: {info.filename} declares {_human(declared)} of "
                                      f"{dtype} {list(shape)}, but holds {_human(info.file_size)}")


def read_npz(path: str, trust: bool = False) -> RawCheckpoint:
    """An ``.npz``; object arrays (pickles) only with ``trust``. Sizes are checked before
    anything is allocated, and every member's CRC-32 as it is read (``zipfile`` does)."""
    check_zip_sizes(path)
    _check_npy_headers(path)
    integrity = check_zip_crc(path)
    try:
        with np.load(path, allow_pickle=trust) as z:
            arrays = {}
            for k in z.files:
                try:
                    arrays[k] = z[k]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise refusal(path, f"the object array {k!r}") from None
                    raise
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: unreadable .npz ({exc})") from None
    return RawCheckpoint(path, "npz", arrays, integrity=integrity)


def read_safetensors(path: str, trust: bool = False) -> RawCheckpoint:
    """``.safetensors`` is a JSON header and raw bytes: there is no code to run."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise CheckpointError("reading .safetensors needs the 'safetensors' package") from None
    try:
        arrays = load_file(path)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: unreadable .safetensors ({exc})") from None
    return RawCheckpoint(path, "safetensors", dict(arrays), integrity=NO_CHECKSUM)


def zip_integrity(path: str) -> str:
    """A zip container's (``.pth``, ``.npz``) own check: its sizes and CRC-32s."""
    check_zip_sizes(path)
    return check_zip_crc(path)


# ------------------------------------------------------------------------- writers
# Each writes through harness.files.atomic_path: a failure leaves neither a partial file
# nor a temporary one, and an existing file is replaced only by a complete one.
def read_arrays(path: str) -> Dict[str, np.ndarray]:
    """An ``.npz`` of plain arrays this tool wrote itself (a child's outputs), read whole;
    object arrays are refused (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def open_arrays(path: str):
    """The same file, each array read when it is asked for (a mapping: ``arrays[name]``,
    ``.items()``): training parity's files hold a network's weights several times over, and a
    reader that needs a few of them should not hold them all."""
    return np.load(path, allow_pickle=False)


def write_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """An ``.npz`` that ``np.load`` reads like ``np.savez``'s, but with fixed zip timestamps,
    so that the same arrays always give the same bytes; replaced atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, value in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o600 << 16
                archive.writestr(info, buffer.getvalue())


def write_torch(path: str, arrays: Dict[str, np.ndarray], meta: Optional[dict] = None) -> None:
    """A ``torch.save`` state dict (under ``"state_dict"`` beside ``meta`` when there is one)."""
    import torch

    state = {k: torch.from_numpy(_c_order(v)) for k, v in arrays.items()}
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save({"state_dict": state, "meta": meta} if meta else state, tmp)


def write_safetensors(path: str, arrays: Dict[str, np.ndarray], meta: Optional[dict] = None) -> None:
    """``.safetensors``; ``meta`` goes into its string metadata, each value as JSON."""
    from safetensors.numpy import save_file

    tensors = {k: _c_order(v) for k, v in arrays.items()}
    metadata = {k: json.dumps(v) for k, v in (meta or {}).items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata=metadata)
