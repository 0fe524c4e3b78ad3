"""Every weight-file format, declared in one place: three read-only tables and a dtype policy.

* :data:`CONTAINERS`: how a file's bytes become ``{name: array}`` and back. Each has
  ``sniff(path, head)`` (``head``: the file's first :data:`~harness.checkpoints.io.HEAD_BYTES`
  bytes), ``read(path, trust=False)`` (runs no code from the file unless ``trust``),
  ``write(path, arrays, meta=None)`` (atomic: :func:`harness.files.atomic_path`) and its
  extensions. Sniffers are tried in table order; the content decides, never the extension.
* :data:`SCHEMES`: how a model names its parameters. Each has ``detect(keys)``,
  ``to_canonical(arrays, cfg)``, ``from_canonical(arrays, cfg)`` (one signature for every
  scheme) and ``ignored(keys)``, the training-state entries its importer drops, counted.
  Detection is in table order: ``mindspore`` before ``canonical``, whose prefixes it shares.
* :data:`FORMATS` (and :data:`ALIASES`): what ``python -m harness.convert`` calls a format,
  a container and a scheme.

:func:`check_dtypes` is the one policy on the dtypes a set of weights may have.

Only this module builds the tables, from the functions of :mod:`~harness.checkpoints.io`,
:mod:`~harness.checkpoints.mindspore_ckpt`, :mod:`~harness.checkpoints.caffe2`,
:mod:`~harness.checkpoints.mmaction2` and :mod:`~harness.checkpoints.mindvideo`; they are
read-only (``MappingProxyType`` of frozen dataclasses), and no module adds to them when it
is imported. A new format is one more row here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, TypeVar

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from harness.checkpoints import caffe2, io, mindspore_ckpt, mindvideo, mmaction2
from harness.checkpoints.io import HEAD_BYTES, ZIP_MAGIC, CheckpointError, RawCheckpoint

Arrays = Dict[str, np.ndarray]


@dataclass(frozen=True)
class Container:
    name: str
    label: str                                      # how a message names it: "MindSpore .ckpt"
    sniff: Callable[[str, bytes], bool]             # may raise CheckpointError for a damaged file of its kind
    read: Callable[..., RawCheckpoint]              # read(path, trust=False)
    write: Callable[..., None]                      # write(path, arrays, meta=None), atomically
    extensions: Tuple[str, ...]
    integrity: Callable[[str], str] = lambda path: io.NO_CHECKSUM   # the file's own check, tensors unread


@dataclass(frozen=True)
class Scheme:
    name: str
    detect: Callable[[Iterable[str]], bool]
    to_canonical: Callable[[Arrays, I3DNLConfig], Arrays]     # strict: unknown keys raise
    from_canonical: Callable[[Arrays, I3DNLConfig], Arrays]
    ignored: Callable[[Iterable[str]], Dict[str, int]]        # {family: count} the importer drops


@dataclass(frozen=True)
class Format:
    name: str
    container: Container
    scheme: Scheme                   # the names written; on reading, insisted on only if `strict`
    extensions: Tuple[str, ...]      # what DST's extension implies (the first format listing it wins)
    help: str
    strict: bool = False             # reading: the file must hold `scheme`'s names (else found from its keys)

    @property
    def read_scheme(self) -> Optional[Scheme]:
        """The scheme a file of this format must have, or None: any, found from its keys."""
        return self.scheme if self.strict else None


T = TypeVar("T", Container, Scheme, Format)


def _table(*rows: T) -> Mapping[str, T]:
    return MappingProxyType({row.name: row for row in rows})


# ---------------------------------------------------------------------- containers
def _write_npz(path: str, arrays: Arrays, meta: Optional[dict] = None) -> None:
    io.write_npz(path, arrays)   # an .npz has no place for meta


CONTAINERS: Mapping[str, Container] = _table(
    Container("torch", "torch .pth", io.looks_like_torch, io.read_torch, io.write_torch, (".pth", ".pt"),
              io.zip_integrity),
    Container("npz", ".npz", io.looks_like_npz, io.read_npz, _write_npz, (".npz",), io.zip_integrity),
    Container("safetensors", ".safetensors", io.looks_like_safetensors, io.read_safetensors,
              io.write_safetensors, (".safetensors",)),
    Container("pickle", "Caffe2 .pkl", caffe2.looks_like_pickle, caffe2.read_pickle, caffe2.write_pickle, (".pkl",)),
    Container("ckpt", "MindSpore .ckpt", mindspore_ckpt.looks_like_ckpt, mindspore_ckpt.read_ckpt,
              mindspore_ckpt.write_ckpt, (".ckpt",), mindspore_ckpt.ckpt_integrity),
)


def sniff_container(path: str) -> str:
    """Which container a file is, from its first bytes (and a zip's member names): the
    first of :data:`harness.checkpoints.formats.CONTAINERS` whose sniffer says yes."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    if not os.path.isfile(path):
        what = "no such checkpoint file" if not os.path.exists(path) else "not a regular file (a device or a pipe)"
        raise CheckpointError(f"{what}: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty")
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:  # unreadable (chmod 000, a FIFO, a vanished file)
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    for container in CONTAINERS.values():
        if container.sniff(path, head):
            return container.name
    if head[:4] == ZIP_MAGIC:
        raise CheckpointError(f"{path} is a zip archive but neither a torch.save file nor an .npz")
    kinds = ", ".join(c.label for c in CONTAINERS.values())
    raise CheckpointError(f"{path}: not a weight file this tool reads ({kinds})")


def integrity_of(path: str) -> str:
    """The file's own integrity check, made without reading its tensors: a MindSpore CRC
    trailer or a zip's CRC-32s verified ("crc32 ok", "zip crc32 ok"), or :data:`NO_CHECKSUM`.
    A mismatch is a one-line :class:`CheckpointError`."""
    return CONTAINERS[sniff_container(path)].integrity(path)


def read_raw(path: str, trust: bool = False) -> RawCheckpoint:
    """``path``'s arrays under their own names. Reading runs no code from the file; ``trust``
    allows full unpickling (a pickle can run arbitrary code: only for files you trust).
    Every container's reader keeps that rule: see :class:`harness.checkpoints.formats.Container`."""
    return CONTAINERS[sniff_container(path)].read(path, trust=trust)


# ---------------------------------------------------------------------- naming schemes
def looks_canonical(keys: Iterable[str]) -> bool:
    keys = list(keys)
    return bool(keys) and all(k.startswith(("stem.", "pool", "res", "head.")) for k in keys)


def canonical_to_canonical(arrays: Arrays, cfg: I3DNLConfig) -> Arrays:
    return {k: v for k, v in arrays.items() if not k.endswith("num_batches_tracked")}


def canonical_from_canonical(arrays: Arrays, cfg: I3DNLConfig) -> Arrays:
    return dict(arrays)


def nothing_ignored(keys: Iterable[str]) -> Dict[str, int]:
    return {}


def dropped_buffers(keys: Iterable[str]) -> Dict[str, int]:
    """torch's BatchNorm ``num_batches_tracked`` counters (and mmaction2's preprocessor
    buffers), which carry no weights: dropped on import, and said so."""
    counts: Dict[str, int] = {}
    for key in keys:
        family = ("num_batches_tracked" if key.endswith("num_batches_tracked") else
                  "data_preprocessor.*" if key.startswith("data_preprocessor.") else None)
        if family:
            counts[family] = counts.get(family, 0) + 1
    return counts


SCHEMES: Mapping[str, Scheme] = _table(
    Scheme("mindspore", mindspore_ckpt.looks_like_mindspore, mindspore_ckpt.to_canonical,
           mindspore_ckpt.from_canonical, mindspore_ckpt.ignored_training_entries),
    Scheme("canonical", looks_canonical, canonical_to_canonical, canonical_from_canonical, dropped_buffers),
    Scheme("mmaction2", mmaction2.looks_like_mmaction2, mmaction2.to_canonical, mmaction2.from_canonical,
           dropped_buffers),
    Scheme("caffe2", caffe2.looks_like_caffe2, caffe2.to_canonical, caffe2.from_canonical, nothing_ignored),
    Scheme("mindvideo", mindvideo.looks_like_mindvideo, mindvideo.to_canonical, mindvideo.from_canonical,
           mindspore_ckpt.ignored_training_entries),
)


# ---------------------------------------------------------------------- formats
FORMATS: Mapping[str, Format] = _table(
    Format("torch", CONTAINERS["torch"], SCHEMES["canonical"], (".pth", ".pt"),
           "torch.save state dict, canonical names (our PyTorch model's)"),
    Format("ms", CONTAINERS["ckpt"], SCHEMES["mindspore"], (".ckpt",),
           "MindSpore checkpoint, our MindSpore model's names"),
    Format("npz", CONTAINERS["npz"], SCHEMES["canonical"], (".npz",), "numpy archive, canonical names"),
    Format("safetensors", CONTAINERS["safetensors"], SCHEMES["canonical"], (".safetensors",), "canonical names"),
    Format("mmaction2", CONTAINERS["torch"], SCHEMES["mmaction2"], (),
           "mmaction2's names (backbone.* / cls_head.*), v0.x and 1.x", strict=True),
    Format("caffe2", CONTAINERS["pickle"], SCHEMES["caffe2"], (".pkl",),
           "video-nonlocal-net blobs", strict=True),
    Format("mindvideo", CONTAINERS["ckpt"], SCHEMES["mindvideo"], (),
           "the seed's zjut_mindvideo names", strict=True),
)
ALIASES: Mapping[str, str] = MappingProxyType(
    {"pt": "torch", "pytorch": "torch", "pth": "torch", "mindspore": "ms", "ckpt": "ms", "pkl": "caffe2"})


def find_format(text: str) -> Format:
    """A format by its name or an alias, any case."""
    name = ALIASES.get(text.lower(), text.lower())
    if name not in FORMATS:
        raise CheckpointError(f"unknown format {text!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[name]


def format_for_path(path: str) -> Format:
    """The format a destination's extension implies."""
    lower = path.lower()
    for fmt in FORMATS.values():
        if fmt.extensions and lower.endswith(fmt.extensions):
            return fmt
    raise CheckpointError(f"cannot tell the output format from {os.path.basename(path)!r}; pass --to "
                          f"({', '.join(FORMATS)})")


def find_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise CheckpointError(f"unknown naming scheme {name!r}; choose from {', '.join(SCHEMES)}")
    return SCHEMES[name]


def describe_formats() -> str:
    """The formats, one a line, as ``--help`` lists them."""
    rows = []
    for fmt in FORMATS.values():
        ext = "/".join(fmt.extensions) or "-"
        rows.append(f"    {fmt.name:<12} {ext:<13} {fmt.container.name:<12} {fmt.help}")
    aliases = ", ".join(f"{alias} = {name}" for alias, name in ALIASES.items())
    return ("    FMT          extension     container    names\n" + "\n".join(rows)
            + f"\n\n    aliases: {aliases}")


# ---------------------------------------------------------------------- dtype policy
# The floating-point dtypes every container stores and reads back as they were
# (float128 has no torch, safetensors or MindSpore equivalent; numpy has no bfloat16).
WEIGHT_DTYPES = tuple(np.dtype(d) for d in ("float16", "float32", "float64"))


def check_dtypes(arrays: Mapping[str, np.ndarray], require: Optional[str] = None) -> np.dtype:
    """The dtype policy for weights: one dtype for every tensor, one of :data:`WEIGHT_DTYPES`
    (a mix, or integers, means a damaged or foreign file), and ``require`` where the consumer
    runs only that one (the models run float32). Returns the dtype; anything else is a
    :class:`~harness.checkpoints.io.CheckpointError` beginning ``dtype mismatch:``."""
    dtypes: Dict[str, list] = {}
    for name, value in arrays.items():
        dtype = np.asarray(value).dtype
        dtypes.setdefault(str(dtype) if dtype.isnative else dtype.str, []).append(name)
    if not dtypes:
        raise CheckpointError("dtype mismatch: no tensors to check")
    if len(dtypes) > 1:
        counts = ", ".join(f"{len(v)} {k} (e.g. {v[0]})" for k, v in sorted(dtypes.items(), key=lambda kv: len(kv[1])))
        raise CheckpointError(f"dtype mismatch: the tensors mix dtypes: {counts}")
    dtype = np.dtype(next(iter(dtypes)))
    if not dtype.isnative and dtype.newbyteorder("=") in WEIGHT_DTYPES:   # str() hides the byte order
        raise CheckpointError(f"dtype mismatch: weights are big-endian {dtype.newbyteorder('=')} ({dtype.str}); "
                              "the formats here hold native little-endian arrays")
    if dtype not in WEIGHT_DTYPES:
        raise CheckpointError(f"dtype mismatch: weights are {dtype}, expected a floating-point dtype "
                              f"({', '.join(map(str, WEIGHT_DTYPES))})")
    if require is not None and dtype != np.dtype(require):
        raise CheckpointError(f"dtype mismatch: the weights hold {dtype}; the models run {np.dtype(require)} "
                              f"(convert the weights to {np.dtype(require)} first)")
    return dtype
