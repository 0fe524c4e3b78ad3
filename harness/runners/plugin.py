"""Your model against ours: a user's own torch or MindSpore network as a parity candidate.

``python -m harness.parity --candidate myport=mypkg.port:build`` imports ``build`` in a child
process and calls it as ``build(cfg, weights)``, with the arch config
(:class:`frameworks.spec.arch.I3DNLConfig`) and the weights every framework runs (canonical
names, numpy float32). It returns the network, ready to run (eval mode, weights loaded
with the user's own converter), and a layer map, either as a pair ``(net, layer_map)`` or
as the attribute ``net.nlparity_layers``::

    {"stem": "backbone.conv1",                  # the output of that module
     "res2.0": "backbone.layer1.0",
     "res3.1": "in:backbone.layer2.1.nl",      # "in:": the module's *input* (a block whose
     "res3.1.non_local": "backbone.layer2.1.nl", #   non-local block sits inside it)
     ...}

Forward hooks capture those modules' outputs (or inputs) while the network runs the clip;
``logits`` is the network's output. Canonical layers the map leaves out are reported as
missing, not failed. A MindSpore network is named with the ``ms:`` prefix
(``--candidate myport=ms:mypkg.port:build``) so that its process can set MindSpore's oneDNN
ISA before import; it runs in PyNative mode, where Cells take hooks.

An exported graph is a candidate too: ``--candidate myport=model.onnx`` runs it in onnxruntime
(:meth:`harness.runners.onnx_runner.OnnxRunner.run_plugin`), its layers named by a JSON layer map
``{canonical layer: tensor name | node name | "in:" node name}`` kept beside it as
``model.onnx.layers.json`` or given in the spec as ``model.onnx:map.json``; without a map, the
graph's outputs that carry canonical layer names are compared.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from harness.runners import RunnerError

FRAMEWORK_PREFIXES = {"torch": "torch", "pt": "torch", "ms": "ms", "mindspore": "ms"}
ONNX_SUFFIX, MAP_SUFFIX = ".onnx", ".json"


def parse_spec(spec: str) -> Tuple[str, str]:
    """``[torch:|ms:]module.path:function`` -> (framework, "module.path:function");
    ``model.onnx[:map.json]`` -> ("onnx", the same with absolute paths)."""
    graph = onnx_target(spec)
    if graph is not None:
        return "onnx", graph
    head, _, rest = spec.partition(":")
    framework = "torch"
    if head in FRAMEWORK_PREFIXES and rest.count(":") == 1:
        framework, spec = FRAMEWORK_PREFIXES[head], rest
    module, sep, name = spec.partition(":")
    if not sep or not module or not name or ":" in name:
        raise RunnerError(f"a candidate plug-in is [torch:|ms:]module:function, got {spec!r}")
    return framework, spec


def onnx_target(spec: str) -> Optional[str]:
    """``model.onnx`` or ``model.onnx:map.json`` as absolute paths (the child runs in a folder of its
    own), each checked to exist; None for any other spec (``pkg.onnx:build`` is a module's function)."""
    path, sep, layer_map = spec.rpartition(":")
    if not (sep and path.lower().endswith(ONNX_SUFFIX) and layer_map.lower().endswith(MAP_SUFFIX)):
        if not spec.lower().endswith(ONNX_SUFFIX):
            return None
        path, layer_map = spec, ""
    for what, name in (("graph", path), ("layer map", layer_map)):
        if name and not os.path.isfile(name):
            raise RunnerError(f"the candidate's {what} {name}: no such file")
    return os.path.abspath(path) + (":" + os.path.abspath(layer_map) if layer_map else "")


def load_factory(spec: str) -> Callable:
    module_name, name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RunnerError(f"cannot import the candidate's module {module_name!r} ({exc})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise RunnerError(f"{module_name} has no function {name!r}")
    return factory


def _build(spec: str, cfg: I3DNLConfig, weights: Dict[str, np.ndarray]):
    built = load_factory(spec)(cfg, weights)
    net, layer_map = built if isinstance(built, tuple) else (built, getattr(built, "nlparity_layers", None))
    if not isinstance(layer_map, dict) or not layer_map:
        raise RunnerError(f"{spec} returned no layer map (return (net, layer_map) or set net.nlparity_layers)")
    return net, layer_map


def _resolve(named: Dict[str, object], layer_map: Dict[str, str]) -> Dict[str, Tuple[object, str]]:
    """canonical layer -> (module, "in" | "out"); an unknown path is an error that names it."""
    out = {}
    for layer, path in layer_map.items():
        where, path = ("in", path[3:]) if path.startswith("in:") else ("out", path)
        if path not in named:
            raise RunnerError(f"the layer map sends {layer!r} to {path!r}, which the candidate network does not have")
        out[layer] = (named[path], where)
    return out


def _hook(named: Dict[str, object], layer_map: Dict[str, str], keep: Callable) -> list:
    """Forward hooks that keep each mapped layer's input (``in``) or output: torch modules and
    MindSpore cells register them alike. Returns the handles to remove."""
    handles = []
    for layer, (node, where) in _resolve(named, layer_map).items():
        if where == "in":
            handles.append(node.register_forward_pre_hook(lambda _, args, layer=layer: keep(layer, args[0])))
        else:
            handles.append(node.register_forward_hook(lambda _, args, result, layer=layer: keep(layer, result)))
    return handles


def run_torch(spec: str, cfg: I3DNLConfig, weights: Dict[str, np.ndarray], clip: np.ndarray) -> Dict[str, np.ndarray]:
    import torch

    net, layer_map = _build(spec, cfg, weights)
    if not isinstance(net, torch.nn.Module):
        raise RunnerError(f"{spec} returned a {type(net).__name__}, not a torch.nn.Module (use the ms: prefix "
                          "for a MindSpore Cell)")
    outputs: Dict[str, np.ndarray] = {}
    keep = lambda layer, t: outputs.__setitem__(layer, t.detach().cpu().numpy().copy())  # noqa: E731
    handles = _hook(dict(net.named_modules()), layer_map, keep)
    try:
        with torch.no_grad():
            logits = net.eval()(torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    outputs["logits"] = logits.detach().cpu().numpy()
    return outputs


def run_mindspore(spec: str, cfg: I3DNLConfig, weights: Dict[str, np.ndarray], clip: np.ndarray) -> Dict[str, np.ndarray]:
    import mindspore as ms

    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, layer_map = _build(spec, cfg, weights)
    if not isinstance(net, ms.nn.Cell):
        raise RunnerError(f"{spec} returned a {type(net).__name__}, not a MindSpore Cell")
    outputs: Dict[str, np.ndarray] = {}
    keep = lambda layer, t: outputs.__setitem__(layer, t.asnumpy().copy())  # noqa: E731
    handles = _hook(dict(net.cells_and_names()), layer_map, keep)
    try:
        net.set_train(False)
        logits = net(ms.Tensor(np.ascontiguousarray(clip, dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    outputs["logits"] = logits.asnumpy()
    return outputs
