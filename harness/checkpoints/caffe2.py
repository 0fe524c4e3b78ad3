"""Caffe2 ``.pkl`` of facebookresearch/video-nonlocal-net <-> canonical names.

The authors' ``lib/utils/checkpoints.py`` pickles ``{"blobs": {name: ndarray}}`` with
Python 2's cPickle (read it with ``encoding="latin1"``); training checkpoints also hold
``<param>_momentum`` for every trainable blob, ``model_iter`` and ``lr``, which carry no
weights. Blob names (``resnet_video_org.py``, ``resnet_helper.py``, ``nonlocal_helper.py``):

* ``conv1_w``, stem BN ``res_conv1_bn_{s,b,rm,riv}``
* ``res{S}_{B}_branch2{a,b,c}_w`` + ``_bn_*``; projection shortcut ``res{S}_{B}_branch1_*``
* ``nonlocal_conv{S}_{B}_{theta,phi,g,out}_{w,b}`` + ``nonlocal_conv{S}_{B}_bn_*``
* ``pred_w`` (400, 2048) and ``pred_b``: an FC in training, reshaped by the test net into a
  1x1x1 conv applied at every position.

BN blobs: ``_s`` scale, ``_b`` shift, ``_rm`` running mean, ``_riv`` running *variance*
despite its name (the repo's ``bn_helper.py``: "riv is acutally running var").
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Dict, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from frameworks.spec.naming import RenameTable
from harness.checkpoints.io import NO_CHECKSUM, CheckpointError, RawCheckpoint, refusal
from harness.checkpoints.safe_pickle import SLACK, PickleTooLarge, RefusedGlobal, bounded_global, fix_imports
from harness.files import atomic_path

BN_SUFFIX = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
BRANCHES = {"1": "branch2a", "2": "branch2b", "3": "branch2c"}  # canonical conv{k}/bn{k}


def _rules():
    rules = [(r"stem\.conv\.weight", "conv1_w"), (r"head\.fc\.weight", "pred_w"), (r"head\.fc\.bias", "pred_b"),
             (r"res(\d)\.(\d+)\.downsample\.conv\.weight", r"res\1_\2_branch1_w"),
             (r"res(\d)\.(\d+)\.non_local\.(theta|phi|g|out)\.weight", r"nonlocal_conv\1_\2_\3_w"),
             (r"res(\d)\.(\d+)\.non_local\.(theta|phi|g|out)\.bias", r"nonlocal_conv\1_\2_\3_b")]
    for k, branch in BRANCHES.items():
        rules.append((rf"res(\d)\.(\d+)\.conv{k}\.weight", rf"res\1_\2_{branch}_w"))
    for field, suffix in BN_SUFFIX.items():
        rules += [(rf"stem\.bn\.{field}", f"res_conv1_bn_{suffix}"),
                  (rf"res(\d)\.(\d+)\.downsample\.bn\.{field}", rf"res\1_\2_branch1_bn_{suffix}"),
                  (rf"res(\d)\.(\d+)\.non_local\.bn\.{field}", rf"nonlocal_conv\1_\2_bn_{suffix}")]
        rules += [(rf"res(\d)\.(\d+)\.bn{k}\.{field}", rf"res\1_\2_{branch}_bn_{suffix}")
                  for k, branch in BRANCHES.items()]
    return rules


RENAME = RenameTable(_rules(), ignore=[r".*_momentum", r"model_iter", r"lr"])


def looks_like_caffe2(keys) -> bool:
    keys = set(keys)
    return "conv1_w" in keys and "pred_w" in keys


def to_canonical(blobs: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    """Caffe2 blobs -> canonical arrays (``pred_w`` as the (classes, channels) FC matrix,
    whichever of its FC or 1x1x1-conv shapes was stored)."""
    def transform(name: str, value: np.ndarray) -> np.ndarray:
        value = np.asarray(value)
        if name == "head.fc.weight" and value.ndim == 5:
            value = value.reshape(value.shape[:2])
        return value

    return RENAME.to_canonical(blobs, cfg, context="Caffe2 blobs", transform=transform)


def from_canonical(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    return RENAME.from_canonical(arrays)


# --------------------------------------------------------------------------- reading
def looks_like_pickle(path: str, head: bytes) -> bool:
    """A pickle of protocol 2 or later starts with its PROTO opcode."""
    return head[:1] == b"\x80"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """A pickle of numpy arrays and plain containers, nothing else: a checkpoint from the
    internet must not run code when read."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("collections", "OrderedDict"), ("builtins", "bytearray"), ("copy_reg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
        ("__builtin__", "bytes"), ("builtins", "bytes"),  # ... and an empty array's b"" (bytes())
    }

    budget = -1   # bytes the size-taking constructors may build (the file's size): see safe_pickle

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            found = super().find_class(module, name)
            return bounded_global(*fix_imports(module, name), found, self.budget) if self.budget >= 0 else found
        raise RefusedGlobal(*fix_imports(module, name))


def read_pickle(path: str, trust: bool = False) -> RawCheckpoint:
    """Blobs from a pickle that may hold numpy arrays and plain containers only; ``trust``
    unpickles anything (a pickle can run arbitrary code: only for files you trust)."""
    unpickler = pickle.Unpickler if trust else _NumpyOnlyUnpickler
    try:
        with open(path, "rb") as f:
            reader = unpickler(io.BufferedReader(f), encoding="latin1")
            reader.budget = os.fstat(f.fileno()).st_size + SLACK
            obj = reader.load()
    except RefusedGlobal as exc:
        raise refusal(path, f"{exc.module}.{exc.name}") from None
    except PickleTooLarge as exc:
        raise CheckpointError(f"refusing {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any damage is a one-line reason
        raise CheckpointError(f"{path}: not a readable Caffe2 blob pickle ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(obj, dict) and isinstance(obj.get("blobs"), dict):
        obj = obj["blobs"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of blobs")
    arrays = {k: v for k, v in obj.items() if isinstance(v, np.ndarray) and not k.endswith("_momentum")}
    meta = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obj.items()
            if k in ("model_iter", "lr")}
    return RawCheckpoint(path, "pickle", arrays, meta, NO_CHECKSUM)


def write_pickle(path: str, arrays: Dict[str, np.ndarray], meta: Optional[dict] = None) -> None:
    """Write blobs as the authors' tool does (protocol 2, ``{"blobs": ...}``); ``meta``
    (``model_iter``, ``lr``) goes beside them, where :func:`read_pickle` finds it."""
    blobs = dict(arrays)
    blobs.update(meta or {})
    with atomic_path(path, suffix=".pkl") as tmp:
        with open(tmp, "wb") as f:
            pickle.dump({"blobs": blobs}, f, protocol=2)
