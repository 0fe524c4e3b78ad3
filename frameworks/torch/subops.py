"""One canonical layer's sub-operations, traced step by step (for parity's drill-down).

``trace(model, name, x)`` runs canonical layer ``name`` of an :class:`~frameworks.torch.model.I3DNL`
on its input ``x`` and returns every intermediate step in order, under names both
frameworks share (:func:`frameworks.spec.arch.subop_names`): a bottleneck's ``conv1``, ``bn1``,
``relu1`` ... ``add``, ``relu``; a non-local block's ``theta``, ``phi``, ``g`` (after the
sub-sampling pool), ``affinity`` (after ``/N`` or the softmax), ``y``, ``out``, ``bn``,
``add``. Each step is exactly the operation the module's own ``forward`` runs, in the same
order, so the last step equals the layer's output bit for bit (tested).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from frameworks.spec.arch import stage_plan


def _nonlocal(m, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    n, c = x.shape[:2]
    steps: Dict[str, torch.Tensor] = {}
    if m.mode == "gaussian":
        steps["phi"] = m._subsampled(x, None)
        theta = x.reshape(n, c, -1).transpose(1, 2)
        phi = steps["phi"].reshape(n, c, -1)
    else:
        steps["theta"] = m.theta(x)
        steps["phi"] = m._subsampled(x, m.phi)
        theta = steps["theta"].reshape(n, m.inter, -1).transpose(1, 2)
        phi = steps["phi"].reshape(n, m.inter, -1)
    steps["g"] = m._subsampled(x, m.g)
    g = steps["g"].reshape(n, m.inter, -1).transpose(1, 2)
    affinity = torch.matmul(theta, phi)
    if m.mode == "dot_product":
        affinity = affinity / affinity.shape[-1]
    else:
        if m.use_scale:
            affinity = affinity / m.inter ** 0.5
        affinity = affinity.softmax(dim=-1)
    steps["affinity"] = affinity
    steps["y"] = torch.matmul(affinity, g).transpose(1, 2).reshape(n, m.inter, *x.shape[2:])
    steps["out"] = m.out(steps["y"])
    steps["bn"] = m.bn(steps["out"])
    steps["add"] = x + steps["bn"]
    return steps


def _block(m, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    steps: Dict[str, torch.Tensor] = {}
    out = x
    for k in ("1", "2"):
        steps[f"conv{k}"] = getattr(m, f"conv{k}")(out)
        steps[f"bn{k}"] = getattr(m, f"bn{k}")(steps[f"conv{k}"])
        steps[f"relu{k}"] = out = F.relu(steps[f"bn{k}"])
    steps["conv3"] = m.conv3(out)
    steps["bn3"] = m.bn3(steps["conv3"])
    if m.downsample is not None:
        steps["downsample.conv"] = m.downsample.conv(x)
        steps["downsample.bn"] = identity = m.downsample.bn(steps["downsample.conv"])
    else:
        identity = x
    steps["add"] = steps["bn3"] + identity
    steps["relu"] = F.relu(steps["add"])
    return steps


def trace(model, name: str, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Every sub-operation of canonical layer ``name`` on input ``x``, in execution order."""
    stage = next((s for s in stage_plan(model.cfg) if s.name == name), None)
    if stage is None:
        raise KeyError(f"no canonical layer {name!r} in {model.cfg.name}")
    if stage.kind == "stem":
        conv = model.stem.conv(x)
        bn = model.stem.bn(conv)
        return {"conv": conv, "bn": bn, "relu": F.relu(bn)}
    if stage.kind in ("pool1", "pool2"):
        return {"pool": getattr(model, stage.kind)(x)}
    if stage.kind == "pool":
        return {"pool": model.head.pool(x)}
    if stage.kind == "logits":
        return {"logits": model.head.classify(x)}
    block = getattr(model, stage.block.stage)[stage.block.index]
    return _nonlocal(block.non_local, x) if stage.kind == "non_local" else _block(block, x)
