"""MindSpore ``.ckpt`` files as ``{name: numpy array}``, on the ``protobuf`` runtime (no MindSpore import).

The message layout is MindSpore's ``checkpoint.proto``, rebuilt in :mod:`harness.checkpoints.ckpt_proto`
(a ``Checkpoint`` of repeated ``Value`` {``tag``, ``TensorProto`` {``dims``, ``tensor_type``,
``tensor_content``}}). ``mindspore.save_checkpoint`` serialises one single-Value ``Checkpoint``
per parameter and concatenates them (concatenated protobuf messages merge into one), cuts a
tensor's bytes into 512 MiB pieces written as consecutive Values with the same tag (each
carrying the full ``dims``), and, with ``save_checkpoint(..., crc_check=True)``, appends a CRC
trailer: ``b"crc_num"`` + the CRC-32 (``binascii.crc32``, chained over each serialized Value as
it is written, i.e. the CRC-32 of every byte before the trailer) as 10 big-endian bytes. The
reader checks the trailer where there is one and says where there is none
(:data:`~harness.checkpoints.io.NO_CHECKSUM`: a flipped bit inside tensor data then cannot
be detected); a damaged trailer or a mismatch is a one-line error. The writer below
produces the bytes of ``save_checkpoint(..., crc_check=True)`` for the same arrays (without
the trailer, :func:`serialize_ckpt` gives ``save_checkpoint``'s default bytes); the reader
accepts packed ``dims`` too. Encrypted checkpoints and map parameters are refused with a
one-line reason.

protobuf parses a message whole, building every sub-message and repeated element before
the caller sees any, so the reader does not hand it the file: a bounded pre-scan of the top
level (:func:`_value_spans`) checks each Value's length against the file and protobuf parses
one Value at a time (see there for what that bounds). Sizes declared inside a Value are
checked before an array is made: ``dims`` against the bytes actually present.

This module is the ``ckpt`` container (sniffer, reader, writer) and the ``mindspore``
naming scheme, the parameter names of *our* MindSpore model
(:data:`frameworks.spec.naming.MINDSPORE_RENAME`); :mod:`harness.checkpoints.formats`
lists both in its tables.
"""
from __future__ import annotations

import binascii
import itertools
import math
import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

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
_TRAILER = len(_CRC_MARK) + 10
_VALUE_KEY = 1 << 3 | 2          # Checkpoint.value: field 1, length-delimited
_MAX_DIMS = 32                   # numpy 1.x's NPY_MAXDIMS: no array has more


def _proto():
    """:mod:`~harness.checkpoints.ckpt_proto`, imported on first use: the rest of the
    harness runs without protobuf, and a .ckpt without it is a one-line refusal."""
    try:
        from harness.checkpoints import ckpt_proto
    except ImportError:
        raise CheckpointError("reading or writing a MindSpore .ckpt needs the 'protobuf' package "
                              "(pip install protobuf)") from None
    return ckpt_proto


def _read_varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    """A base-128 varint at ``pos``: (value, position after it). Only the pre-scan and the
    sniffer read the wire format by hand; protobuf reads everything else."""
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


# --------------------------------------------------------------------------- reading
class DamagedCheckpoint(ValueError):
    """The file's CRC does not match its bytes, or its CRC trailer is itself damaged."""


def crc_trailer(crc: int) -> bytes:
    """What ``save_checkpoint(..., crc_check=True)`` appends: the mark and 10 big-endian bytes."""
    return _CRC_MARK + crc.to_bytes(10, "big")


def check_crc(data: bytes) -> Tuple[memoryview, str]:
    """(the protobuf bytes without the trailer, as a view of ``data``; ``"crc32 ok"`` or
    ``NO_CHECKSUM``); raises :class:`DamagedCheckpoint` when the CRC does not match, or
    when the last 17 bytes are a trailer with a damaged mark (5 or 6 of its 7 bytes right)."""
    view = memoryview(data)
    if len(data) >= _TRAILER:
        mark = bytes(view[-_TRAILER:-10])
        if mark == _CRC_MARK:
            stored, content = int.from_bytes(view[-10:], "big"), view[:-_TRAILER]
            computed = binascii.crc32(content)
            if computed != stored:
                raise DamagedCheckpoint(f"its CRC-32 is {computed:08x} but the file records {stored:08x} "
                                        "(a flipped bit or a bad copy)")
            return content, "crc32 ok"
        if sum(a == b for a, b in zip(mark, _CRC_MARK)) >= len(_CRC_MARK) - 2:
            raise DamagedCheckpoint(f"its CRC trailer reads {mark!r}, not {_CRC_MARK!r}")
    return view, NO_CHECKSUM


def _value_spans(buf: memoryview) -> Iterator[Tuple[int, int]]:
    """Where each top-level ``Checkpoint.Value`` lies: the bounded pre-scan in front of protobuf.

    Handed a whole file, protobuf builds all of it before we can look: measured, 20 MB of
    empty Values (``0a 00``) made 120 MB of messages, where the first one is already an
    error. Here each Value's length is checked against the file before anything is parsed,
    and each Value is parsed alone, as it is found: protobuf builds one Value at a time, and
    a bad one ends the read. Within a Value only ``dims`` multiplies (refused above
    :data:`_MAX_DIMS` once parsed), bounded by that Value's own bytes: a 20 MB Value of
    packed dims peaks at 225 MB here, at 191 MB in the hand-written reader this replaced."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        if key != _VALUE_KEY:
            raise ValueError(f"unexpected top-level field {key >> 3} (wire type {key & 7})")
        length, pos = _read_varint(buf, pos)
        if pos + length > len(buf):
            raise ValueError("a Checkpoint.Value runs past the end of the file")
        yield pos, pos + length
        pos += length


def _parse_value(buf: memoryview, start: int, end: int) -> Tuple[str, List[int], str, bytes]:
    """One serialized Value -> (tag, dims, tensor_type, tensor_content), each field checked."""
    proto = _proto()
    try:
        value = proto.Value.FromString(buf[start:end])
    except proto.DecodeError:
        raise ValueError(f"the Checkpoint.Value at byte {start} is not a valid protobuf message") from None
    tag = value.tag.decode("utf-8") if value.HasField("tag") else None
    if value.HasField("maptensor"):
        raise ValueError(f"{tag or 'an entry'} is a MapTensor (embedding table), not supported")
    if tag is None or not value.HasField("tensor"):
        raise ValueError("a Checkpoint.Value lacks its tag or tensor")
    tensor = value.tensor
    if not (tensor.HasField("tensor_type") and tensor.HasField("tensor_content")):
        raise ValueError(f"{tag}: its TensorProto lacks its tensor_type or tensor_content")
    if len(tensor.dims) > _MAX_DIMS:
        raise ValueError(f"{tag}: {len(tensor.dims)} dims, more than an array can have ({_MAX_DIMS})")
    return tag, list(tensor.dims), tensor.tensor_type.decode("utf-8"), tensor.tensor_content


def _entry(tag: str, dims: List[int], tensor_type: str, content: bytes) -> Union[np.ndarray, str]:
    """One parameter's bytes -> its array (a writable copy), or its text for a ``"str"`` entry."""
    if tensor_type == "str":
        return str(np.frombuffer(content, dtype=f"<U{len(content) // 4}")[0]) if content else ""
    if tensor_type not in _NUMPY_OF:
        raise ValueError(f"{tag}: tensor type {tensor_type!r} has no numpy equivalent here")
    flat = np.frombuffer(content, dtype=_NUMPY_OF[tensor_type])
    if dims == [0] and flat.size == 1:   # how MindSpore marks some scalars
        dims = []
    if min(dims, default=0) < 0 or math.prod(dims) != flat.size:   # checked before any array is made
        raise ValueError(f"{tag}: {flat.size} elements of {tensor_type} do not fill dims {dims}")
    return flat.reshape(dims).copy()


def parse_ckpt(data: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """The bytes of a ``.ckpt`` file -> (arrays by tag, string entries by tag); a CRC
    trailer is checked (:func:`check_crc`)."""
    return _parse_values(check_crc(data)[0])


def _parse_values(data: Union[bytes, memoryview]) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """The protobuf bytes (no trailer) -> (arrays by tag, string entries by tag). Each
    parameter becomes an array as soon as its last Value is read: the copies protobuf makes
    (its message, then the field's ``bytes``) are of one parameter at a time."""
    buf = memoryview(data)
    values = (_parse_value(buf, start, end) for start, end in _value_spans(buf))
    arrays: Dict[str, np.ndarray] = {}
    strings: Dict[str, str] = {}
    for tag, group in itertools.groupby(values, key=lambda value: value[0]):
        slices = list(group)   # consecutive Values with one tag: the slices of one tensor
        if tag in arrays or tag in strings:
            raise ValueError(f"parameter {tag!r} appears twice")
        _, dims, tensor_type, _ = slices[0]
        entry = _entry(tag, dims, tensor_type, b"".join(content for *_, content in slices))
        (strings if isinstance(entry, str) else arrays)[tag] = entry
    return arrays, strings


def read_ckpt(path: str, trust: bool = False) -> RawCheckpoint:
    """Read a MindSpore ``.ckpt`` without MindSpore. A protobuf parse that only ever builds
    numpy arrays and strings: no code can run, so ``trust`` changes nothing."""
    _proto()   # without protobuf, say so (not "damaged") before reading anything
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    try:
        content, integrity = check_crc(data)
    except DamagedCheckpoint as exc:
        raise DamagedFile(path, str(exc)) from None
    try:
        arrays, strings = _parse_values(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({exc}; encrypted or damaged?)") from None
    if not arrays:
        raise CheckpointError(f"{path}: a MindSpore checkpoint with no tensors")
    return RawCheckpoint(path, "ckpt", arrays, {"strings": strings} if strings else {}, integrity)


# --------------------------------------------------------------------------- writing
def _serialized_values(arrays: Dict[str, np.ndarray]) -> Iterator[bytes]:
    """Each parameter as ``save_checkpoint`` writes it: a one-Value ``Checkpoint`` per
    512 MiB slice of its bytes (one with empty content for an empty array)."""
    proto = _proto()
    for name, value in arrays.items():
        array = np.asarray(value)   # not ascontiguousarray: it turns a 0-d array into shape (1,)
        if array.dtype.byteorder == ">":   # the format is little-endian; the values stay the same
            array = array.astype(array.dtype.newbyteorder("<"))
        tensor_type = _TYPE_OF.get(array.dtype)
        if tensor_type is None:
            raise CheckpointError(f"{name}: dtype {array.dtype} cannot be stored in a MindSpore checkpoint")
        content, chunk = array.tobytes(), _SLICE_KIB * 1024
        for start in range(0, max(len(content), 1), chunk):
            checkpoint = proto.Checkpoint()
            entry = checkpoint.value.add(tag=name.encode("utf-8"))
            entry.tensor.dims.extend(array.shape)
            entry.tensor.tensor_type = tensor_type.encode()
            entry.tensor.tensor_content = content[start:start + chunk]
            yield checkpoint.SerializeToString()


def _ckpt_pieces(arrays: Dict[str, np.ndarray], crc: bool) -> Iterator[bytes]:
    """The file's bytes in pieces, the CRC trailer last when ``crc``."""
    crc_num = 0
    for piece in _serialized_values(arrays):
        crc_num = binascii.crc32(piece, crc_num)
        yield piece
    if crc:
        yield crc_trailer(crc_num)


def serialize_ckpt(arrays: Dict[str, np.ndarray], crc: bool = False) -> bytes:
    """``{name: array}`` -> the bytes ``mindspore.save_checkpoint(..., crc_check=crc)``
    writes for them."""
    return b"".join(_ckpt_pieces(arrays, crc))


def write_ckpt(path: str, arrays: Dict[str, np.ndarray], meta: Optional[dict] = None, crc: bool = True) -> None:
    """Write ``arrays`` as a MindSpore ``.ckpt`` (``meta`` has no place in the format), with
    the CRC trailer of ``save_checkpoint(..., crc_check=True)`` unless ``crc`` is False, so
    that a later flipped bit is found on reading. Written a parameter at a time."""
    with atomic_path(path, suffix=".ckpt") as tmp, open(tmp, "wb") as f:
        for piece in _ckpt_pieces(arrays, crc):
            f.write(piece)


# --------------------------------------------------------------------------- sniffing
def looks_like_ckpt(path: str, head: bytes) -> bool:
    """A serialized Checkpoint starts with ``value`` (field 1, LEN) whose first field is
    the ``tag`` string (field 1, LEN) holding a parameter name."""
    if len(head) < 4 or head[0] != _VALUE_KEY:
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


def ckpt_integrity(path: str) -> str:
    """The file's CRC-32 trailer checked ("crc32 ok"), or :data:`NO_CHECKSUM` when it has none;
    a mismatch is a one-line :class:`DamagedFile`."""
    try:
        with open(path, "rb") as f:
            return check_crc(f.read())[1]
    except DamagedCheckpoint as exc:
        raise DamagedFile(path, str(exc)) from None
