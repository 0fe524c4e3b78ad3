"""Saved network outputs: one documented, versioned ``.npz`` schema that any program can write.

A parity candidate does not have to be one of our models. Write your port's outputs for a
clip in this schema, under any name, and compare them with ours
(``python -m harness.parity --candidate myport=myport.npz``)::

    np.savez("myport.npz",
             input=clip,                      # float32 (N, C, T, H, W): the clip the outputs are for
             logits=logits,                   # (N, classes): the network's output
             **{"res3.1.non_local": y, ...},  # any canonical layers (see below); missing ones are reported
             __schema__="nlparity.outputs/1", __layout__="NCTHW")

Keys:

``__schema__``  ``nlparity.outputs/1`` (optional for files written by hand; checked when present)
``__layout__``  ``NCTHW``: every 5-D layer is (N, C, T, H, W); ``pool`` is (N, C) (or (N, C, 1, h, w)
                for Caffe2's head); ``logits`` is (N, classes)
``__framework__``  who wrote it (free text, optional)
``__mode__``    ``full`` (arrays) or ``stats`` (see below)
``input``       the clip; a candidate must have run the reference's clip (checked bit for bit)
``<layer>``     the canonical layer names of :func:`frameworks.spec.arch.layer_names`, e.g. ``stem``,
                ``pool1``, ``res2.0`` ... ``res3.1.non_local`` ... ``pool``, ``logits``; float16/32/64

Statistics-only files (``__mode__ = stats``, written by ``--save-outputs DIR --stats-only``)
hold ``<layer>`` as a float64 vector of :data:`STATS` instead of the array: about 200x
smaller at full size, enough to tell which layer diverges, not to find the element.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from harness.errors import InputError

SCHEMA = "nlparity.outputs/1"
META_KEYS = ("__schema__", "__layout__", "__framework__", "__mode__")
STATS = ("min", "max", "mean", "std", "mean_abs", "non_finite")


def layer_stats(x: np.ndarray) -> np.ndarray:
    """:data:`STATS` of one layer's output, over its finite elements (float64)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    finite = x[np.isfinite(x)]
    if not finite.size:
        return np.array([np.nan] * 5 + [float(x.size)])
    return np.array([finite.min(), finite.max(), finite.mean(), finite.std(), np.abs(finite).mean(),
                     float(x.size - finite.size)])


def write_outputs(path: str, outputs: Dict[str, np.ndarray], framework: str = "", stats_only: bool = False) -> None:
    from harness.checkpoints.io import write_npz

    arrays = {}
    for name, value in outputs.items():
        arrays[name] = value if (name == "input" or not stats_only) else layer_stats(value)
    arrays.update(__schema__=np.array(SCHEMA), __layout__=np.array("NCTHW"), __framework__=np.array(framework),
                  __mode__=np.array("stats" if stats_only else "full"))
    write_npz(path, arrays)


def read_outputs(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """(layers by canonical name, with ``input``; the file's metadata). Bad input is one line."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read saved outputs {path}: {exc}") from None
    meta = {k[2:-2]: str(arrays.pop(k)) for k in META_KEYS if k in arrays}
    meta.setdefault("mode", "full")
    if "schema" in meta and meta["schema"] != SCHEMA:
        raise InputError(f"{path}: outputs schema {meta['schema']!r}; this version reads {SCHEMA!r}")
    if meta.get("layout", "NCTHW") != "NCTHW":
        raise InputError(f"{path}: layout {meta['layout']!r}; outputs must be NCTHW")
    if meta["mode"] not in ("full", "stats"):
        raise InputError(f"{path}: __mode__ {meta['mode']!r} is neither full nor stats")
    for name, value in arrays.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise InputError(f"{path}: {name} is {value.dtype}; outputs are floating point")
    return arrays, meta


def check_same_input(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray], ref_name: str, got_name: str) -> Optional[str]:
    """None when both ran the same clip (or either does not say), else why not."""
    a, b = ref.get("input"), got.get("input")
    if a is None or b is None:
        return None
    if a.shape != b.shape:
        return f"{got_name} ran a {'x'.join(map(str, b.shape))} clip, {ref_name} a {'x'.join(map(str, a.shape))} one"
    if not np.array_equal(a.astype(np.float32), b.astype(np.float32)):
        return f"{got_name} ran another clip than {ref_name} (same shape, other values)"
    return None
