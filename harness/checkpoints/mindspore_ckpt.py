"""MindSpore ``.ckpt`` files as ``{name: numpy array}``, in pure Python (no MindSpore import).

The layout, from MindSpore's own ``checkpoint.proto`` (proto2)::

    message Checkpoint {
      message Value {
        required string tag = 1;
        oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; }
      }
      repeated Value value = 1;
    }
    message TensorProto {
      repeated int64 dims = 1;          // unpacked varints, as proto2 writes them
      required string tensor_type = 2;  // "Float32", "Int64", ... or "str"
      required bytes tensor_content = 3;
    }

``mindspore.save_checkpoint`` serialises one single-Value ``Checkpoint`` per parameter
and concatenates them (concatenated protobuf messages merge into one), cuts a tensor's
bytes into 512 MiB pieces written as consecutive Values with the same tag (each carrying
the full ``dims``), and, with ``save_checkpoint(..., crc_check=True)``, appends a CRC trailer:
``b"crc_num"`` + the CRC-32 (``binascii.crc32``, chained over each serialized Value as it is
written, i.e. the CRC-32 of every byte before the trailer) as 10 big-endian bytes. The
reader checks the trailer where there is one and says where there is none
(:data:`~harness.checkpoints.io.NO_CHECKSUM`: a flipped bit inside tensor data then cannot
be detected); a damaged trailer or a mismatch is a one-line error. The writer below
produces the bytes of ``save_checkpoint(..., crc_check=True)`` for the same arrays (without
the trailer, :func:`serialize_ckpt` gives ``save_checkpoint``'s default bytes); the reader
accepts packed ``dims`` too. Encrypted checkpoints and map parameters are refused with a
one-line reason.

This module is the ``ckpt`` container (sniffer, reader, writer) and the ``mindspore``
naming scheme, the parameter names of *our* MindSpore model
(:data:`frameworks.spec.naming.MINDSPORE_RENAME`); :mod:`harness.checkpoints.formats`
lists both in its tables.
"""
from __future__ import annotations

import binascii
import os
import re
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from frameworks.spec.naming import MINDSPORE_RENAME
from harness.checkpoints.io import NO_CHECKSUM, CheckpointError, DamagedFile, RawCheckpoint
from harness.files import atomic_path

# tensor_type strings, as MindSpore's serialization.py spells them.
_NUMPY_OF = {
    "Float16": np.float16, "Float32": np.float32, "Float64": np.float64,
    "Int8": np.int8, "Int16": np.int16, "Int32": np.int32, "Int64": np.int64,
    "UInt8": np.uint8, "UInt16": np.uint16, "UInt32": np.uint32, "UInt64": np.uint64,
    "Bool": np.bool_,
}
_TYPE_OF = {np.dtype(v): k for k, v in _NUMPY_OF.items()}
_SLICE_KIB = 512 * 1024          # MindSpore's SLICE_SIZE (KiB): tensors are written in 512 MiB slices
_CRC_MARK = b"crc_num"
_MASK64 = (1 << 64) - 1

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


# ------------------------------------------------------------------------ wire format
def _read_varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: memoryview, start: int, end: int):
    """Yield ``(field number, wire type, value)``; LEN values are ``(start, end)`` offsets."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _LEN:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise ValueError("a length-delimited field runs past its message")
            value, pos = (pos, pos + length), pos + length
        elif wire == _I64:
            value, pos = bytes(buf[pos:pos + 8]), pos + 8
        elif wire == _I32:
            value, pos = bytes(buf[pos:pos + 4]), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        yield number, wire, value


def _varint_bytes(value: int) -> bytes:
    value &= _MASK64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint_bytes(number << 3 | _LEN) + _varint_bytes(len(payload)) + payload


# --------------------------------------------------------------------------- reading
def _parse_tensor(buf: memoryview, span: Tuple[int, int]) -> Tuple[List[int], str, memoryview]:
    dims: List[int] = []
    tensor_type, content = None, None
    for number, wire, value in _fields(buf, *span):
        if number == 1 and wire == _VARINT:
            dims.append(_signed64(value))
        elif number == 1 and wire == _LEN:                    # packed dims
            pos, end = value
            while pos < end:
                dim, pos = _read_varint(buf, pos)
                dims.append(_signed64(dim))
        elif number == 2 and wire == _LEN:
            tensor_type = bytes(buf[value[0]:value[1]]).decode("utf-8")
        elif number == 3 and wire == _LEN:
            content = buf[value[0]:value[1]]
    if tensor_type is None or content is None:
        raise ValueError("a TensorProto lacks its tensor_type or tensor_content")
    return dims, tensor_type, content


class DamagedCheckpoint(ValueError):
    """The file's CRC does not match its bytes, or its CRC trailer is itself damaged."""


_TRAILER = len(_CRC_MARK) + 10


def crc_trailer(crc: int) -> bytes:
    """What ``save_checkpoint(..., crc_check=True)`` appends: the mark and 10 big-endian bytes."""
    return _CRC_MARK + crc.to_bytes(10, "big")


def check_crc(data: bytes) -> Tuple[bytes, str]:
    """(the protobuf bytes without the trailer, ``"crc32 ok"`` or ``NO_CHECKSUM``); raises
    :class:`DamagedCheckpoint` when the CRC does not match, or when the last 17 bytes are
    a trailer with a damaged mark (5 or 6 of its 7 bytes right)."""
    if len(data) >= _TRAILER:
        mark = data[-_TRAILER:-10]
        if mark == _CRC_MARK:
            stored, content = int.from_bytes(data[-10:], "big"), data[:-_TRAILER]
            computed = binascii.crc32(content)
            if computed != stored:
                raise DamagedCheckpoint(f"its CRC-32 is {computed:08x} but the file records {stored:08x} "
                                        "(a flipped bit or a bad copy)")
            return content, "crc32 ok"
        if sum(a == b for a, b in zip(mark, _CRC_MARK)) >= len(_CRC_MARK) - 2:
            raise DamagedCheckpoint(f"its CRC trailer reads {mark!r}, not {_CRC_MARK!r}")
    return data, NO_CHECKSUM


def parse_ckpt(data: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """The bytes of a ``.ckpt`` file -> (arrays by tag, string entries by tag); a CRC
    trailer is checked (:func:`check_crc`)."""
    return _parse_values(check_crc(data)[0])


def _parse_values(data: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """The protobuf bytes (no trailer) -> (arrays by tag, string entries by tag)."""
    buf = memoryview(data)
    # Values in file order; consecutive Values with one tag are slices of one array.
    entries: List[Tuple[str, List[int], str, List[memoryview]]] = []
    for number, wire, value in _fields(buf, 0, len(buf)):
        if number != 1 or wire != _LEN:
            raise ValueError(f"unexpected top-level field {number} (wire type {wire})")
        tag, tensor = None, None
        for vnum, vwire, vval in _fields(buf, *value):
            if vnum == 1 and vwire == _LEN:
                tag = bytes(buf[vval[0]:vval[1]]).decode("utf-8")
            elif vnum == 2 and vwire == _LEN:
                tensor = _parse_tensor(buf, vval)
            elif vnum == 3:
                raise ValueError(f"{tag or 'an entry'} is a MapTensor (embedding table), not supported")
        if tag is None or tensor is None:
            raise ValueError("a Checkpoint.Value lacks its tag or tensor")
        dims, tensor_type, content = tensor
        if entries and entries[-1][0] == tag:
            entries[-1][3].append(content)
        else:
            entries.append((tag, dims, tensor_type, [content]))
    arrays: Dict[str, np.ndarray] = {}
    strings: Dict[str, str] = {}
    for tag, dims, tensor_type, pieces in entries:
        if tag in arrays or tag in strings:
            raise ValueError(f"parameter {tag!r} appears twice")
        content = b"".join(pieces)
        if tensor_type == "str":
            strings[tag] = np.frombuffer(content, dtype=f"<U{len(content) // 4}")[0] if content else ""
            continue
        if tensor_type not in _NUMPY_OF:
            raise ValueError(f"{tag}: tensor type {tensor_type!r} has no numpy equivalent here")
        flat = np.frombuffer(content, dtype=_NUMPY_OF[tensor_type])
        if dims == [0] and flat.size == 1:   # how MindSpore marks some scalars
            dims = []
        if int(np.prod(dims, dtype=np.int64)) != flat.size:
            raise ValueError(f"{tag}: {flat.size} elements of {tensor_type} do not fill dims {dims}")
        arrays[tag] = flat.reshape(dims).copy()
    return arrays, strings


def read_ckpt(path: str, trust: bool = False) -> RawCheckpoint:
    """Read a MindSpore ``.ckpt`` without MindSpore. A pure-Python protobuf parse that
    only ever builds numpy arrays and strings: no code can run, so ``trust`` changes nothing."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data, integrity = check_crc(data)
    except DamagedCheckpoint as exc:
        raise DamagedFile(path, str(exc)) from None
    try:
        arrays, strings = _parse_values(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({exc}; encrypted or damaged?)") from None
    if not arrays:
        raise CheckpointError(f"{path}: a MindSpore checkpoint with no tensors")
    return RawCheckpoint(path, "ckpt", arrays, {"strings": strings} if strings else {}, integrity)


# --------------------------------------------------------------------------- writing
def serialize_ckpt(arrays: Dict[str, np.ndarray], crc: bool = False) -> bytes:
    """``{name: array}`` -> the bytes ``mindspore.save_checkpoint(..., crc_check=crc)``
    writes for them."""
    out = bytearray()
    for name, value in arrays.items():
        array = np.asarray(value)   # not ascontiguousarray: it turns a 0-d array into shape (1,)
        if array.dtype.byteorder == ">":   # the format is little-endian; the values stay the same
            array = array.astype(array.dtype.newbyteorder("<"))
        tensor_type = _TYPE_OF.get(array.dtype)
        if tensor_type is None:
            raise CheckpointError(f"{name}: dtype {array.dtype} cannot be stored in a MindSpore checkpoint")
        dims = b"".join(_varint_bytes(1 << 3 | _VARINT) + _varint_bytes(d) for d in array.shape)
        content, chunk = array.tobytes(), _SLICE_KIB * 1024
        # MindSpore cuts a tensor's bytes into 512 MiB pieces (and writes nothing for an empty one)
        for start in range(0, max(len(content), 1), chunk):
            tensor = dims + _len_field(2, tensor_type.encode()) + _len_field(3, content[start:start + chunk])
            entry = _len_field(1, name.encode("utf-8")) + _len_field(2, tensor)
            out += _len_field(1, entry)
    if crc:
        out += crc_trailer(binascii.crc32(out))
    return bytes(out)


def write_ckpt(path: str, arrays: Dict[str, np.ndarray], meta: Optional[dict] = None, crc: bool = True) -> None:
    """Write ``arrays`` as a MindSpore ``.ckpt`` (``meta`` has no place in the format), with
    the CRC trailer of ``save_checkpoint(..., crc_check=True)`` unless ``crc`` is False, so
    that a later flipped bit is found on reading."""
    data = serialize_ckpt(arrays, crc=crc)
    with atomic_path(path, suffix=".ckpt") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


# --------------------------------------------------------------------------- sniffing
def looks_like_ckpt(path: str, head: bytes) -> bool:
    """A serialized Checkpoint starts with ``value`` (field 1, LEN) whose first field is
    the ``tag`` string (field 1, LEN) holding a parameter name."""
    if len(head) < 4 or head[0] != 0x0A:
        return False
    try:
        buf = memoryview(head)
        length, pos = _read_varint(buf, 1)
        if pos >= len(buf) or buf[pos] != 0x0A or pos + length > os.path.getsize(path):
            return False
        tag_len, pos = _read_varint(buf, pos + 1)
    except ValueError:
        return False
    tag = bytes(head[pos:pos + tag_len])
    return 0 < tag_len < length and all(32 < b < 127 for b in tag)


# ------------------------------------------------------------------------ the scheme
# What MindSpore training saves beside the weights: ``save_checkpoint(train_cell)`` and
# ``ModelCheckpoint`` write every Parameter of the TrainOneStepCell, i.e. the optimiser's
# state (one copy of each trainable parameter per family, named ``<family>.<parameter>``),
# its hyper-parameters and counters, loss-scale state, and ``append_info``. The names below
# are the ones MindSpore 2.10 writes (tests/test_checkpoint_safety.py has it write them):
OPTIMIZER_STATE_FAMILIES = {
    "accum": "SGD, Adagrad, ProximalAdagrad, Adadelta",
    "stat": "SGD",
    "moments": "Momentum, LARS, FTRL",
    "moment1": "Adam, LazyAdam, AdaMax", "moment2": "Adam, LazyAdam, AdaMax",
    "vhat": "Adam(use_amsgrad=True)",
    "adam_m": "AdamWeightDecay", "adam_v": "AdamWeightDecay",
    "lamb_m": "Lamb", "lamb_v": "Lamb",
    "moment": "RMSProp", "mean_square": "RMSProp", "mean_grad": "RMSProp(centered=True)",
    "accum_update": "Adadelta",
    "linear": "FTRL",
    "prev": "Rprop", "step_size": "Rprop",
    "ax_": "ASGD",
    "accu_grads": "gradient accumulation (model zoo training cells)",
}
# ASGD joins these to the parameter name without a dot (``eta_conv.weight``)
OPTIMIZER_STATE_UNDOTTED = {"eta_": "ASGD", "mu_": "ASGD"}
# single entries: optimiser hyper-parameters and counters, loss scale, ModelCheckpoint's append_info
TRAINING_SCALARS = {
    "global_step": "every optimiser", "learning_rate": "every optimiser", "momentum": "SGD, Momentum, LARS",
    "beta1_power": "Adam, LazyAdam, AdaMax", "beta2_power": "Adam, LazyAdam",
    "fake_lr": "LARS", "fake_param": "LARS",
    "scale_sense": "TrainOneStepWithLossScaleCell", "loss_scale": "loss-scale managers",
    "current_iterator_step": "DynamicLossScaleUpdateCell", "last_overflow_iterator_step": "DynamicLossScaleUpdateCell",
    "epoch_num": "ModelCheckpoint append_info", "step_num": "ModelCheckpoint append_info",
    "cur_step_num": "training callbacks", "cur_epoch_num": "training callbacks",
}
TRAINING_KEY_PATTERNS = ([rf"{re.escape(f)}\..+" for f in OPTIMIZER_STATE_FAMILIES]
                         + [rf"{re.escape(f)}.+" for f in OPTIMIZER_STATE_UNDOTTED]
                         + [re.escape(k) for k in TRAINING_SCALARS])
_TRAINING_RE = re.compile("|".join(f"(?:{p})" for p in TRAINING_KEY_PATTERNS))


def training_family(key: str) -> Optional[str]:
    """The optimiser-state family (``"accum.*"``) or bookkeeping entry (``"global_step"``)
    ``key`` belongs to, or None for a model parameter."""
    if not _TRAINING_RE.fullmatch(key):
        return None
    if key in TRAINING_SCALARS:
        return key
    for family in OPTIMIZER_STATE_FAMILIES:
        if key.startswith(family + "."):
            return family + ".*"
    return next(f + "*" for f in OPTIMIZER_STATE_UNDOTTED if key.startswith(f))


def ignored_training_entries(keys: Iterable[str]) -> Dict[str, int]:
    """``{family: count}`` of the training-state entries among ``keys``, largest first."""
    counts: Dict[str, int] = {}
    for key in keys:
        family = training_family(key)
        if family:
            counts[family] = counts.get(family, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _is_training_key(key: str) -> bool:
    return training_family(key) is not None


def looks_like_mindspore(keys: Iterable[str]) -> bool:
    """Our MindSpore model's names: canonical prefixes, BN parameters inside ``bn2d``."""
    keys = [k for k in keys if not _is_training_key(k)]
    return (bool(keys) and all(k.startswith(("stem.", "res", "head.")) for k in keys)
            and any(".bn2d." in k for k in keys))


def to_canonical(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    """MindSpore names (ours) -> canonical names; strict about the key set."""
    kept = {k: v for k, v in arrays.items() if not _is_training_key(k)}
    return MINDSPORE_RENAME.to_canonical(kept, cfg, context="MindSpore checkpoint")


def from_canonical(arrays: Dict[str, np.ndarray], cfg: Optional[I3DNLConfig] = None) -> Dict[str, np.ndarray]:
    """Canonical names -> our MindSpore model's names. The signature of every scheme's
    ``from_canonical``; these names do not depend on ``cfg``, which callers written before
    it had one may leave out."""
    return MINDSPORE_RENAME.from_canonical(arrays)
