"""mmaction2 ``.pth`` (v0.x and 1.x) <-> canonical names.

Both generations save ``backbone.*`` / ``cls_head.*`` keys built from mmcv ``ConvModule``
(``.conv`` / ``.bn``) and mmcv ``NonLocal3d``; with ``sub_sample=True`` its g and phi
paths are ``nn.Sequential(conv, maxpool)``, hence ``g.0.conv``. Published files wrap the
weights as ``{"state_dict": ..., "meta": ...}`` (1.x adds ``message_hub``, ``optimizer``).
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from frameworks.spec.naming import RenameTable

def rename_table(cfg: I3DNLConfig) -> RenameTable:
    sub = ".0" if cfg.nonlocal_cfg.sub_sample else ""
    # canonical stage resS is mmaction2's layer{S-1}
    rules = [
        (r"stem\.conv\.weight", "backbone.conv1.conv.weight"),
        (r"stem\.bn\.(\w+)", r"backbone.conv1.bn.\1"),
        (r"head\.fc\.(\w+)", r"cls_head.fc_cls.\1"),
    ]
    for s in (2, 3, 4, 5):
        layer = f"backbone.layer{s - 1}"
        rules += [
            (rf"res{s}\.(\d+)\.conv(\d)\.weight", rf"{layer}.\1.conv\2.conv.weight"),
            (rf"res{s}\.(\d+)\.bn(\d)\.(\w+)", rf"{layer}.\1.conv\2.bn.\3"),
            (rf"res{s}\.(\d+)\.downsample\.(conv|bn)\.(\w+)", rf"{layer}.\1.downsample.\2.\3"),
            (rf"res{s}\.(\d+)\.non_local\.theta\.(\w+)", rf"{layer}.\1.non_local_block.theta.conv.\2"),
            (rf"res{s}\.(\d+)\.non_local\.(phi|g)\.(\w+)", rf"{layer}.\1.non_local_block.\2{sub}.conv.\3"),
            (rf"res{s}\.(\d+)\.non_local\.out\.(\w+)", rf"{layer}.\1.non_local_block.conv_out.conv.\2"),
            (rf"res{s}\.(\d+)\.non_local\.bn\.(\w+)", rf"{layer}.\1.non_local_block.conv_out.bn.\2"),
        ]
    return RenameTable(rules, ignore=[r".*num_batches_tracked", r"data_preprocessor\..*"])


def looks_like_mmaction2(keys) -> bool:
    keys = list(keys)
    return bool(keys) and all(k.startswith(("backbone.", "cls_head.", "data_preprocessor.")) for k in keys)


def to_canonical(state_dict: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    return rename_table(cfg).to_canonical(state_dict, cfg, context="mmaction2 checkpoint")


def from_canonical(arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    return rename_table(cfg).from_canonical(arrays)
