"""Canonical arrays <-> the MindSpore model, by one rename table.

The model's cell paths are the canonical module names, so the table only renames batch
norm parameters (MindSpore's ``BatchNorm3d`` wraps a ``bn2d`` and calls its parameters
``gamma``/``beta``/``moving_mean``/``moving_variance``); every other name is unchanged.
Both directions follow from :data:`RENAME_TABLE`.

This module imports MindSpore only inside the functions that touch a Cell, so the table
is usable (by converters writing ``.ckpt`` files) where MindSpore is not installed.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from frameworks.spec.arch import I3DNLConfig, WeightMismatchError, check_weights, parameter_specs
from frameworks.spec.naming import MINDSPORE_BN_FIELDS, RenameTable

_BN = r"(.+\.bn\d?)"  # stem.bn, res2.0.bn1, ...downsample.bn, ...non_local.bn
RENAME_TABLE = RenameTable(
    [(rf"{_BN}\.{field}", rf"\1.bn2d.{ms_field}") for field, ms_field in MINDSPORE_BN_FIELDS.items()]
    + [(r"(.+)", r"\1")])   # every other name is the canonical one


def mindspore_names(cfg: I3DNLConfig) -> Dict[str, str]:
    """``{MindSpore parameter name: canonical name}`` for every parameter of ``cfg``."""
    return RENAME_TABLE.mapping(cfg)


def from_canonical(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Canonical names -> MindSpore names (values untouched)."""
    return RENAME_TABLE.from_canonical(arrays)


def to_canonical_names(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig, context: str = "MindSpore weights"
                       ) -> Dict[str, np.ndarray]:
    """MindSpore names -> canonical names, strict about the key set (values untouched)."""
    return RENAME_TABLE.to_canonical(arrays, cfg, context=context)


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
