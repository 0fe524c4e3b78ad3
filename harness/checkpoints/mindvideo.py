"""The seed's MindSpore ``.ckpt`` (ZJUT-ERCISS/zjut_mindvideo ``nonlocal3d``) <-> canonical.

mindvideo builds every conv as ``Unit3D`` (``features = SequentialCell(conv, BN, ReLU)``,
so ``features.0`` is the conv and ``features.1.bn2d`` its BatchNorm3d), the first two
convs of a bottleneck as ``conv12.conv{1,2}``, the shortcut as ``down_sample``, and the
non-local block as ``non_local_block.{theta, phi.0, g.0, w.0, w.1}`` (phi and g are
``SequentialCell(conv, maxpool)``, ``w`` is ``SequentialCell(conv, BN)``); the head is
``head.dense``. The graph is ``i3d_nl_mindvideo_r50``.

Its classifier rows follow mindvideo's class ids: the order in which labels first
appear in ``kinetics-400_train.csv``. :func:`reorder_classes` maps them onto another
order (e.g. the alphabetical Kinetics-400 label map) when that CSV is at hand.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from frameworks.spec.naming import MINDSPORE_BN_FIELDS, RenameTable
from harness.checkpoints.mindspore_ckpt import TRAINING_KEY_PATTERNS

UNIT = {"conv1": "conv12.conv1", "conv2": "conv12.conv2", "conv3": "conv3"}


def _rules():
    rules = [(r"stem\.conv\.weight", "backbone.conv1.features.0.weight"),
             (r"head\.fc\.(weight|bias)", r"head.dense.\1")]
    for s in (2, 3, 4, 5):
        layer = f"backbone.layer{s - 1}"
        rules += [(rf"res{s}\.(\d+)\.{conv}\.weight", rf"{layer}.\1.{unit}.features.0.weight")
                  for conv, unit in UNIT.items()]
        rules += [
            (rf"res{s}\.(\d+)\.downsample\.conv\.weight", rf"{layer}.\1.down_sample.features.0.weight"),
            (rf"res{s}\.(\d+)\.non_local\.theta\.(weight|bias)", rf"{layer}.\1.non_local_block.theta.\2"),
            (rf"res{s}\.(\d+)\.non_local\.(phi|g)\.(weight|bias)", rf"{layer}.\1.non_local_block.\2.0.\3"),
            (rf"res{s}\.(\d+)\.non_local\.out\.weight", rf"{layer}.\1.non_local_block.w.0.weight"),
        ]
        for field, ms_field in MINDSPORE_BN_FIELDS.items():
            rules += [(rf"res{s}\.(\d+)\.bn{k}\.{field}", rf"{layer}.\1.{UNIT[f'conv{k}']}.features.1.bn2d.{ms_field}")
                      for k in "123"]
            rules += [
                (rf"res{s}\.(\d+)\.downsample\.bn\.{field}", rf"{layer}.\1.down_sample.features.1.bn2d.{ms_field}"),
                (rf"res{s}\.(\d+)\.non_local\.bn\.{field}", rf"{layer}.\1.non_local_block.w.1.bn2d.{ms_field}"),
            ]
    rules += [(rf"stem\.bn\.{field}", f"backbone.conv1.features.1.bn2d.{ms_field}")
              for field, ms_field in MINDSPORE_BN_FIELDS.items()]
    return rules


# Optimiser state and step counters that MindSpore's ModelCheckpoint saves beside weights
# (the seed's nn.SGD with momentum writes accum.* and stat.* copies of every parameter).
RENAME = RenameTable(_rules(), ignore=TRAINING_KEY_PATTERNS)


def looks_like_mindvideo(keys) -> bool:
    keys = set(keys)
    return "backbone.conv1.features.0.weight" in keys and "head.dense.weight" in keys


def to_canonical(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    return RENAME.to_canonical(arrays, cfg, context="mindvideo checkpoint")


def from_canonical(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    return RENAME.from_canonical(arrays)


def first_appearance_order(csv_labels: Sequence[str]) -> list:
    """mindvideo's class ids: labels in the order they first appear in the train CSV."""
    seen: Dict[str, int] = {}
    for label in csv_labels:
        seen.setdefault(label, len(seen))
    return list(seen)


def reorder_classes(arrays: Dict[str, np.ndarray], from_order: Sequence[str],
                    to_order: Sequence[str]) -> Dict[str, np.ndarray]:
    """Permute the classifier rows from one class order to another (same class set)."""
    if sorted(from_order) != sorted(to_order):
        missing = sorted(set(to_order) - set(from_order))[:5]
        extra = sorted(set(from_order) - set(to_order))[:5]
        raise ValueError(f"class sets differ (missing {missing}, extra {extra})")
    index = {name: i for i, name in enumerate(from_order)}
    perm = np.array([index[name] for name in to_order])
    out = dict(arrays)
    out["head.fc.weight"] = arrays["head.fc.weight"][perm]
    out["head.fc.bias"] = arrays["head.fc.bias"][perm]
    return out
