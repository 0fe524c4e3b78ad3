"""Weight files in, canonical arrays out: containers (``io``), naming schemes, registry.

``load_weights(path, cfg)`` reads any supported file, recognises its naming scheme from
its keys, renames it to the canonical names of ``cfg`` and checks every key and shape.
Importers are pure functions over dicts of arrays, so each is testable without a file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Tuple

import numpy as np

from frameworks.spec.arch import I3DNLConfig, WeightMismatchError, check_weights
from harness.checkpoints import caffe2, mindspore_ckpt, mindvideo, mmaction2
from harness.checkpoints.io import READERS, WRITERS, CheckpointError, RawCheckpoint, read_raw, sha256_file

__all__ = ["CheckpointError", "LoadedWeights", "load_weights", "to_canonical", "SCHEMES"]


def _looks_canonical(keys: Iterable[str]) -> bool:
    keys = list(keys)
    return bool(keys) and all(k.startswith(("stem.", "pool", "res", "head.")) for k in keys)


def _canonical(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if not k.endswith("num_batches_tracked")}


# name -> (detect(keys) -> bool, to_canonical(arrays, cfg) -> arrays); tried in order.
SCHEMES: Dict[str, Tuple[Callable[[Iterable[str]], bool],
                         Callable[[Dict[str, np.ndarray], I3DNLConfig], Dict[str, np.ndarray]]]] = {
    # before "canonical": our MindSpore names share its prefixes (BN parameters differ)
    "mindspore": (mindspore_ckpt.looks_like_mindspore, mindspore_ckpt.to_canonical),
    "canonical": (_looks_canonical, _canonical),
    "mmaction2": (mmaction2.looks_like_mmaction2, mmaction2.to_canonical),
    "caffe2": (caffe2.looks_like_caffe2, caffe2.to_canonical),
    "mindvideo": (mindvideo.looks_like_mindvideo, mindvideo.to_canonical),
}

READERS["pickle"] = caffe2.read_pickle
WRITERS["pickle"] = caffe2.write_pickle


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

    def describe(self) -> str:
        text = f"{self.path} ({self.scheme} weights in a {self.container} file, sha256 {self.sha256[:12]}"
        if self.ignored:
            families = ", ".join(f"{family} {n}" for family, n in self.ignored.items())
            text += f", ignored {sum(self.ignored.values())} optimiser-state entries: {families}"
        return text + ")"


def ignored_entries(keys: Iterable[str], scheme: str) -> Dict[str, int]:
    """The training-state entries a scheme's importer drops, counted by family."""
    if scheme in ("mindspore", "mindvideo"):
        return mindspore_ckpt.ignored_training_entries(keys)
    return {}


def detect_scheme(keys: Iterable[str]) -> str:
    keys = list(keys)
    for name, (detect, _) in SCHEMES.items():
        if detect(keys):
            return name
    sample = ", ".join(keys[:3])
    raise CheckpointError(f"unrecognised parameter names (first keys: {sample})")


def to_canonical(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig, scheme: str = "auto") -> Dict[str, np.ndarray]:
    """Pure: foreign arrays -> canonical arrays for ``cfg``, strictly checked."""
    scheme = detect_scheme(arrays) if scheme == "auto" else scheme
    canonical = SCHEMES[scheme][1](arrays, cfg)
    check_weights(cfg, {k: np.shape(v) for k, v in canonical.items()}, context=f"{scheme} weights")
    return canonical


class WeightsDoNotFit(CheckpointError):
    """A readable weight file whose names or shapes are not those of the arch asked for."""


def load_weights(path: str, cfg: I3DNLConfig, scheme: str = "auto", *, trust: bool = False) -> LoadedWeights:
    """Read ``path`` (a file, or a registry name already fetched into the cache) and return
    canonical arrays for ``cfg``; any problem is a :class:`CheckpointError` with a one-line
    reason. No code from the file runs unless ``trust`` (full unpickling: a pickle can run
    arbitrary code, so only for files you trust)."""
    from harness.checkpoints.registry import resolve

    path = resolve(path)
    raw: RawCheckpoint = read_raw(path, trust=trust)
    try:
        found = detect_scheme(raw.arrays) if scheme == "auto" else scheme
        arrays = to_canonical(raw.arrays, cfg, found)
    except WeightMismatchError as exc:
        raise WeightsDoNotFit(f"{path} does not fit arch {cfg.name!r} (depth {cfg.depth}): {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return LoadedWeights(arrays, path, raw.container, found, sha256_file(path), raw.meta,
                         ignored_entries(raw.arrays, found))
