"""Batch norm folded into the convolution before it, for inference: numpy only, so both
frameworks fold with the same arithmetic.

In eval mode ``BN(conv(x)) = s * (W x + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``,
which is one convolution with weight ``s W`` and bias ``s (b - mean) + beta``. The fold is
computed in float64 and rounded once to float32.

The folded weights are a separate set of names (:func:`folded_parameter_specs`): every
BN's four arrays disappear and the convolution before it gains ``.bias``. Canonical
checkpoints, state dicts and MindSpore parameter names never change: a folded network is
an inference object built *from* the canonical weights (``build_folded`` in each model).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from frameworks.spec.arch import BN_FIELDS, I3DNLConfig, check_weights, parameter_specs


def conv_bn_pairs(cfg: I3DNLConfig) -> List[Tuple[str, str]]:
    """``(conv, bn)`` module names of every convolution followed by a batch norm."""
    pairs = [("stem.conv", "stem.bn")]
    for blk in cfg.blocks():
        p = blk.name
        pairs += [(f"{p}.conv1", f"{p}.bn1"), (f"{p}.conv2", f"{p}.bn2"), (f"{p}.conv3", f"{p}.bn3")]
        if blk.downsample_stride is not None:
            pairs.append((f"{p}.downsample.conv", f"{p}.downsample.bn"))
        if blk.non_local:
            pairs.append((f"{p}.non_local.out", f"{p}.non_local.bn"))
    return pairs


def folded_parameter_specs(cfg: I3DNLConfig) -> Dict[str, Tuple[int, ...]]:
    """The folded network's parameters with their shapes: no BN, a bias on every conv that had one."""
    specs = parameter_specs(cfg)
    bn_keys = {f"{bn}.{f}" for _, bn in conv_bn_pairs(cfg) for f in BN_FIELDS}
    out = {}
    for name, shape in specs.items():
        if name in bn_keys:
            continue
        out[name] = shape
        if name.endswith(".weight"):
            conv = name[: -len(".weight")]
            if any(conv == c for c, _ in conv_bn_pairs(cfg)):
                out[f"{conv}.bias"] = (shape[0],)
    return out


def fold_batchnorm(cfg: I3DNLConfig, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Canonical arrays -> the folded network's arrays (float32), strict about the input keys."""
    check_weights(cfg, {k: np.shape(v) for k, v in arrays.items()}, context="BN folding")
    out: Dict[str, np.ndarray] = {}
    folded = set()
    for conv, bn in conv_bn_pairs(cfg):
        gamma, beta, mean, var = (np.asarray(arrays[f"{bn}.{f}"], np.float64) for f in BN_FIELDS)
        scale = gamma / np.sqrt(var + cfg.bn_eps)
        weight = np.asarray(arrays[f"{conv}.weight"], np.float64)
        bias = np.asarray(arrays.get(f"{conv}.bias", np.zeros(weight.shape[0])), np.float64)
        out[f"{conv}.weight"] = (weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        out[f"{conv}.bias"] = ((bias - mean) * scale + beta).astype(np.float32)
        folded.update({f"{conv}.weight", f"{conv}.bias"} | {f"{bn}.{f}" for f in BN_FIELDS})
    for name, value in arrays.items():
        if name not in folded:
            out[name] = np.asarray(value, np.float32)
    expected = folded_parameter_specs(cfg)
    assert set(out) == set(expected), sorted(set(out) ^ set(expected))
    return {name: out[name] for name in expected}
