"""One canonical layer's sub-operations, traced step by step (for parity's drill-down).

The MindSpore twin of :mod:`frameworks.torch.subops`: ``trace(net, name, x)`` runs canonical
layer ``name`` of an :class:`~frameworks.mindspore.model.I3DNL` on its input ``x`` and
returns every step under the names of :func:`frameworks.spec.arch.subop_names`, each the
operation the Cell's own ``construct`` runs, in the same order (PyNative: one step at a time).
"""
from __future__ import annotations

from typing import Dict

from mindspore import ops

from frameworks.spec.arch import stage_plan


def _nonlocal(m, x) -> Dict[str, object]:
    n, c, t, h, w = x.shape
    steps: Dict[str, object] = {}
    if m.embedded:
        steps["theta"] = m.theta(x)
        steps["phi"] = m._phi_path(x)
        theta = steps["theta"].reshape(n, m.inter, -1).transpose(0, 2, 1)
        phi = steps["phi"].reshape(n, m.inter, -1)
    else:
        steps["phi"] = m.pool(x) if m.sub_sample else x
        theta = x.reshape(n, c, -1).transpose(0, 2, 1)
        phi = steps["phi"].reshape(n, c, -1)
    steps["g"] = m._g_path(x)
    g = steps["g"].reshape(n, m.inter, -1).transpose(0, 2, 1)
    affinity = ops.matmul(theta, phi)
    if m.dot_product:
        affinity = affinity / affinity.shape[-1]
    else:
        if m.use_scale:
            affinity = affinity / m.inter ** 0.5
        affinity = ops.softmax(affinity, axis=-1)
    steps["affinity"] = affinity
    steps["y"] = ops.matmul(affinity, g).transpose(0, 2, 1).reshape(n, m.inter, t, h, w)
    steps["out"] = m.out(steps["y"])
    steps["bn"] = m.bn(steps["out"])
    steps["add"] = x + steps["bn"]
    return steps


def _block(m, x) -> Dict[str, object]:
    steps: Dict[str, object] = {}
    out = x
    for k in ("1", "2"):
        steps[f"conv{k}"] = getattr(m, f"conv{k}")(out)
        steps[f"bn{k}"] = getattr(m, f"bn{k}")(steps[f"conv{k}"])
        steps[f"relu{k}"] = out = m.relu(steps[f"bn{k}"])
    steps["conv3"] = m.conv3(out)
    steps["bn3"] = m.bn3(steps["conv3"])
    if m.has_downsample:
        steps["downsample.conv"] = m.downsample.conv(x)
        steps["downsample.bn"] = identity = m.downsample.bn(steps["downsample.conv"])
    else:
        identity = x
    steps["add"] = steps["bn3"] + identity
    steps["relu"] = m.relu(steps["add"])
    return steps


def trace(net, name: str, x) -> Dict[str, object]:
    """Every sub-operation of canonical layer ``name`` on input ``x`` (a Tensor), in order."""
    stage = next((s for s in stage_plan(net.cfg) if s.name == name), None)
    if stage is None:
        raise KeyError(f"no canonical layer {name!r} in {net.cfg.name}")
    if stage.kind == "stem":
        conv = net.stem.conv(x)
        bn = net.stem.bn(conv)
        return {"conv": conv, "bn": bn, "relu": net.stem.relu(bn)}
    if stage.kind in ("pool1", "pool2"):
        return {"pool": getattr(net, stage.kind)(x)}
    if stage.kind == "pool":
        return {"pool": net.head.pool(x)}
    if stage.kind == "logits":
        return {"logits": net.head.classify(x)}
    block = getattr(net, stage.block.stage)[stage.block.index]
    return _nonlocal(block.non_local, x) if stage.kind == "non_local" else _block(block, x)
