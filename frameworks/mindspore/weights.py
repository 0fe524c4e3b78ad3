"""Canonical arrays <-> the MindSpore model, by one rename table.

The model's cell paths are the canonical module names, so the one rename table
(:data:`frameworks.spec.naming.MINDSPORE_RENAME`, framework-free so that converters can
use it where MindSpore is not installed) only renames batch norm parameters; both
directions follow from it. MindSpore is imported only inside the functions that touch a Cell.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from frameworks.spec.arch import I3DNLConfig, WeightMismatchError, check_weights, parameter_specs
from frameworks.spec.naming import MINDSPORE_RENAME, mindspore_names

def from_canonical(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Canonical names -> MindSpore names (values untouched)."""
    return MINDSPORE_RENAME.from_canonical(arrays)


def to_canonical_names(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig, context: str = "MindSpore weights"
                       ) -> Dict[str, np.ndarray]:
    """MindSpore names -> canonical names, strict about the key set (values untouched)."""
    return MINDSPORE_RENAME.to_canonical(arrays, cfg, context=context)


def _check_dtypes(arrays: Dict[str, np.ndarray], expected: Dict[str, np.dtype], context: str) -> None:
    wrong = [f"{k} {np.asarray(v).dtype} != {np.dtype(expected[k])}" for k, v in arrays.items()
             if np.asarray(v).dtype != expected[k]]
    if wrong:
        more = f" (+{len(wrong) - 4} more)" if len(wrong) > 4 else ""
        raise TypeError(f"{context}: dtype mismatch: {', '.join(wrong[:4])}{more}")


def load_canonical(net, arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> None:
    """Load canonical arrays into ``net`` (an :class:`frameworks.mindspore.model.I3DNL`).

    Strict in three steps: the key set and shapes must be exactly ``cfg``'s, the dtypes
    must be the Cell's own (no silent cast), and ``load_param_into_net`` must report no
    parameter of the network and no array left unloaded.
    """
    import mindspore as ms

    check_weights(cfg, {k: np.shape(v) for k, v in arrays.items()}, context="MindSpore model")
    params = {p.name: p for p in net.get_parameters()}
    table = mindspore_names(cfg)
    missing = [ms_name for ms_name in table if ms_name not in params]
    unexpected = [name for name in params if name not in table]
    if missing or unexpected:  # the Cell disagrees with the spec: a bug in model.py, not in the file
        raise WeightMismatchError(missing, unexpected, (), context="MindSpore Cell vs spec")
    _check_dtypes({table_name: arrays[canonical] for table_name, canonical in table.items()},
                  {name: np.dtype(str(p.dtype).lower()) for name, p in params.items()}, "MindSpore model")
    param_dict = {ms_name: ms.Parameter(ms.Tensor(np.ascontiguousarray(arrays[canonical])), name=ms_name)
                  for ms_name, canonical in table.items()}
    not_loaded, unused = ms.load_param_into_net(net, param_dict, strict_load=True)
    if not_loaded or unused:
        raise WeightMismatchError(not_loaded, unused, (), context="load_param_into_net left parameters unloaded")


def to_canonical(net, cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    """The Cell's weights and BN statistics as canonical numpy arrays (copies, dtype kept)."""
    params = {p.name: p for p in net.get_parameters()}
    arrays = to_canonical_names(params, cfg, context="MindSpore Cell")
    out = {name: arrays[name].asnumpy().copy() for name in parameter_specs(cfg)}
    check_weights(cfg, {k: v.shape for k, v in out.items()}, context="MindSpore Cell")
    return out
