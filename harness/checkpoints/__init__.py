"""Weight files in, canonical arrays out: containers and naming schemes (``formats``), registry.

``load_weights(path, cfg)`` reads any supported file, recognises its naming scheme from
its keys, renames it to the canonical names of ``cfg`` and checks every key and shape.
Which containers and schemes exist is :mod:`harness.checkpoints.formats`, the one table;
importers are pure functions over dicts of arrays, so each is testable without a file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable

import numpy as np

from frameworks.spec.arch import I3DNLConfig, WeightMismatchError, check_weights
from harness.checkpoints import caffe2, mindspore_ckpt, mindvideo, mmaction2  # noqa: F401 - public submodules
from harness.checkpoints.formats import SCHEMES, Scheme, find_scheme
from harness.checkpoints.io import CheckpointError, RawCheckpoint, sha256_file
from harness.checkpoints.formats import read_raw

__all__ = ["CheckpointError", "LoadedWeights", "SchemeCannotName", "WeightsDoNotFit", "detect_scheme",
           "from_canonical", "load_weights", "to_canonical", "SCHEMES"]


class SchemeCannotName(CheckpointError):
    """A naming scheme that has no name for a parameter of the arch asked for (mindvideo's
    names have no bias for the non-local output conv of ``i3d_nl_caffe2_r50``)."""


@dataclass
class LoadedWeights:
    arrays: Dict[str, np.ndarray]
    path: str
    container: str
    scheme: str
    sha256: str
    meta: dict = field(default_factory=dict)
    # entries of the file that carry no weights and were dropped, by family: {"accum.*": 206, ...}
    ignored: Dict[str, int] = field(default_factory=dict)
    integrity: str = ""      # the file's own check as read: "crc32 ok", "zip crc32 ok", "none in file"

    def describe(self) -> str:
        from harness.checkpoints.io import describe_integrity
        from harness.text import printable

        text = (f"{printable(self.path)} ({self.scheme} weights in a {self.container} file, sha256 {self.sha256[:12]}, "
                f"integrity: {describe_integrity(self.integrity)}")
        if self.ignored:
            families = ", ".join(f"{family} {n}" for family, n in self.ignored.items())
            what = ("optimiser-state entries" if any("num_batches" not in f and "preprocessor" not in f
                                                      for f in self.ignored) else "entries that hold no weights")
            text += f", ignored {sum(self.ignored.values())} {what}: {families}"
        return text + ")"


def ignored_entries(keys: Iterable[str], scheme: str) -> Dict[str, int]:
    """The training-state entries a scheme's importer drops, counted by family."""
    return find_scheme(scheme).ignored(keys)


def detect_scheme(keys: Iterable[str]) -> str:
    keys = list(keys)
    for scheme in SCHEMES.values():
        if scheme.detect(keys):
            return scheme.name
    sample = ", ".join(keys[:3])
    raise CheckpointError(f"unrecognised parameter names (first keys: {sample})")


def _cannot_name(scheme: Scheme, cfg: I3DNLConfig, exc: KeyError) -> SchemeCannotName:
    return SchemeCannotName(f"{scheme.name} names cannot express {cfg.name} ({exc.args[0]})")


def to_canonical(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig, scheme: str = "auto") -> Dict[str, np.ndarray]:
    """Pure: foreign arrays -> canonical arrays for ``cfg``, strictly checked."""
    found = find_scheme(detect_scheme(arrays) if scheme == "auto" else scheme)
    try:
        canonical = found.to_canonical(arrays, cfg)
    except KeyError as exc:   # a rename table with no rule for one of cfg's parameters
        raise _cannot_name(found, cfg, exc) from None
    check_weights(cfg, {k: np.shape(v) for k, v in canonical.items()}, context=f"{found.name} weights")
    return canonical


def from_canonical(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig, scheme: str) -> Dict[str, np.ndarray]:
    """Pure: canonical arrays -> ``scheme``'s names (the values are the same objects)."""
    found = find_scheme(scheme)
    try:
        return found.from_canonical(arrays, cfg)
    except KeyError as exc:
        raise _cannot_name(found, cfg, exc) from None


class WeightsDoNotFit(CheckpointError):
    """A readable weight file whose names or shapes are not those of the arch asked for."""


def load_weights(path: str, cfg: I3DNLConfig, scheme: str = "auto", *, trust: bool = False) -> LoadedWeights:
    """Read ``path`` (a file, or a registry name already fetched into the cache) and return
    canonical arrays for ``cfg``; any problem is a :class:`CheckpointError` with a one-line
    reason. No code from the file runs unless ``trust`` (full unpickling: a pickle can run
    arbitrary code, so only for files you trust)."""
    from harness.checkpoints.registry import resolve

    path = resolve(path)
    return weights_from_raw(read_raw(path, trust=trust), path, cfg, scheme)


def weights_from_raw(raw: RawCheckpoint, path: str, cfg: I3DNLConfig, scheme: str = "auto") -> LoadedWeights:
    """:func:`load_weights` for a file already read (``read_raw(path)``), for a caller that
    looks into the file before it knows the arch (e.g. its number of classes)."""
    try:
        found = detect_scheme(raw.arrays) if scheme == "auto" else find_scheme(scheme).name
        arrays = to_canonical(raw.arrays, cfg, found)
    except (WeightMismatchError, SchemeCannotName) as exc:
        raise WeightsDoNotFit(f"{path} does not fit arch {cfg.name!r} (depth {cfg.depth}): {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return LoadedWeights(arrays, path, raw.container, found, sha256_file(path), raw.meta,
                         ignored_entries(raw.arrays, found), raw.integrity)


def non_finite(arrays: Dict[str, np.ndarray]) -> Dict[str, int]:
    """``{name: count}`` of the tensors holding NaN or inf, in order."""
    return {k: int((~np.isfinite(v)).sum()) for k, v in arrays.items() if not np.isfinite(v).all()}


def check_runnable(arrays: Dict[str, np.ndarray], what: str, allow_non_finite: bool = False) -> None:
    """Weights the models can run: float32 (the formats' dtype policy) and, unless
    ``allow_non_finite`` (parity compares them all the same), finite."""
    from harness.checkpoints.formats import check_dtypes

    try:
        check_dtypes(arrays, require="float32")
    except CheckpointError as exc:
        raise CheckpointError(f"{what}: {exc}") from None
    bad = {} if allow_non_finite else non_finite(arrays)
    if bad:
        name = next(iter(bad))
        raise CheckpointError(f"{what}: {sum(bad.values())} non-finite values in {len(bad)} tensors "
                              f"(first: {name}, {bad[name]})")

