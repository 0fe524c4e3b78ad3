"""A user's own port, as the parity tests build it: our network's layers, re-parented under
other module paths (mmaction2-like names), with its own loading code and a layer map.
``build`` is what ``--candidate NAME=tests.byo_port:build`` imports; ``build_perturbed``
is the same port with one convolution off by 1%."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import nn

from frameworks.spec.arch import STAGE_NAMES, I3DNLConfig
from frameworks.torch.model import I3DNL


class Port(nn.Module):
    def __init__(self, cfg: I3DNLConfig):
        super().__init__()
        ours = I3DNL(cfg)
        self.backbone = nn.Module()
        self.backbone.conv1, self.backbone.maxpool, self.backbone.pool2 = ours.stem, ours.pool1, ours.pool2
        self.backbone.layers = nn.ModuleList(getattr(ours, s) for s in STAGE_NAMES)
        self.cls_head = ours.head

    def forward(self, x):
        b = self.backbone
        x = b.maxpool(b.conv1(x))
        for i, layer in enumerate(b.layers):
            for block in layer:
                x = block(x)
                if block.non_local is not None:
                    x = block.non_local(x)
            if i == 0 and b.pool2 is not None:
                x = b.pool2(x)
        return self.cls_head(x)


def _port_name(canonical: str) -> str:
    if canonical.startswith("stem."):
        return "backbone.conv1." + canonical[len("stem."):]
    if canonical.startswith("head."):
        return "cls_head." + canonical[len("head."):]
    stage, rest = canonical.split(".", 1)
    return f"backbone.layers.{STAGE_NAMES.index(stage)}.{rest}"


def layer_map(cfg: I3DNLConfig) -> Dict[str, str]:
    from frameworks.spec.arch import layer_names

    out = {"stem": "backbone.conv1", "pool1": "backbone.maxpool", "pool2": "backbone.pool2"}
    for name in layer_names(cfg):
        if name.startswith("res"):
            out[name] = _port_name(name)
    return out


def build(cfg: I3DNLConfig, weights: Dict[str, np.ndarray]):
    port = Port(cfg).eval()
    state = {_port_name(k): torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    missing, unexpected = port.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return port, layer_map(cfg)


def build_perturbed(cfg: I3DNLConfig, weights: Dict[str, np.ndarray]):
    port, layers = build(cfg, weights)
    with torch.no_grad():
        port.backbone.layers[2][2].conv2.weight.mul_(1.01)   # res4.2's 3x3 convolution
    return port, layers
