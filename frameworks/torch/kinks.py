"""Where float32 may take a ReLU or a max-pool decision the other way: the kinks of a step.

A ReLU whose input lies within float32 rounding of 0, or a max-pool window whose two
largest inputs lie within rounding of each other, can be decided one way by one run and
the other way by the next. The forward value hardly moves (both sides are ~0, or ~equal),
but the backward pass routes the gradient differently: one such element moved a res5
channel's gradient by 1-5% on test-sized clips. Training parity therefore finds these
elements explicitly instead of allowing every gradient a blanket tolerance:

1. :class:`Watch` records, on one forward pass of an :class:`~frameworks.torch.model.I3DNL`,
   the input of every ReLU (``stem:relu``, ``res3.1:relu1``, ``res3.1:relu2``,
   ``res3.1:relu``: the names of :func:`frameworks.spec.arch.subop_names`) and of every
   max-pool (``pool1``, ``pool2``, and a non-local block's two: ``res3.1.non_local.pool:phi``
   and ``:g``);
2. :func:`find_kinks` compares a float32 and a float64 pass of the same step: per site,
   the float32 noise is ``max |x32 - x64|``, and an element is a kink if ``|x64|`` (a
   ReLU) or the gap between a window's two largest inputs (a max-pool) is within
   :data:`MARGIN` times that noise;
3. :class:`Watch` with ``flips`` runs the step again with every kink decided the other
   way (a ReLU passes the gradient it blocked, and blocks the one it passed; a window
   routes its gradient to the runner-up): the difference of the two float64 gradients is
   each gradient element's *exposure* to the kinks, and the comparison leaves out, by
   name, exactly the elements a flip could move by more than a share of their tolerance.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import model as model_module

# a kink: within this many times the site's measured float32 noise (MindSpore's float32
# noise is of the same size as torch's in every layer parity measures; 8 leaves room for
# both sides' rounding and for a candidate noisier than torch)
MARGIN = 8.0
# ... and never less than a few ulps of the site's largest value
ULPS = 8 * 2.0 ** -24


class _FlippedRelu(torch.autograd.Function):
    """ReLU whose backward mask is ``(x > 0) XOR flip``."""

    @staticmethod
    def forward(ctx, x, flip):
        mask = (x > 0) ^ flip
        ctx.save_for_backward(mask)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None


def _windows(module: torch.nn.MaxPool3d, x: torch.Tensor) -> torch.Tensor:
    """Every pooling window of ``x`` as the last axis: (N, C, T', H', W', k)."""
    kernel = _triple(module.kernel_size)
    stride = _triple(module.stride or module.kernel_size)
    padding = _triple(module.padding)
    pads = []
    for axis in (4, 3, 2):   # F.pad lists the last axis first
        i = axis - 2
        size = x.shape[axis] + 2 * padding[i]
        steps = -(-(size - kernel[i]) // stride[i]) if module.ceil_mode else (size - kernel[i]) // stride[i]
        if module.ceil_mode and steps * stride[i] >= x.shape[axis] + padding[i]:
            steps -= 1   # PyTorch: the last window must start inside the input or its left padding
        extra = max(0, steps * stride[i] + kernel[i] - size)
        pads += [padding[i], padding[i] + extra]
    xp = F.pad(x, pads, value=float("-inf"))
    w = xp.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1]).unfold(4, kernel[2], stride[2])
    return w.reshape(*w.shape[:5], -1)


def _triple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class Watch:
    """Records every ReLU and max-pool input of the model's forward passes while active;
    with ``flips`` (site -> boolean array, a ReLU input's or a pool output's shape), the
    backward pass takes those decisions the other way.

        with Watch(model) as watch:
            loss = criterion(model(x), y)
        watch.inputs["res3.1:relu1"]       # float64 numpy
    """

    def __init__(self, model: torch.nn.Module, flips: Optional[Dict[str, np.ndarray]] = None):
        self.model = model
        self.flips = flips or {}
        self.inputs: Dict[str, np.ndarray] = {}
        self._block = ""
        self._count = 0
        self._pool_calls: Dict[str, int] = {}
        self._handles = []

    # -------------------------------------------------------------- naming the sites
    def _enter_block(self, name: str):
        def hook(module, args):
            self._block, self._count = name, 0
        return hook

    def _enter_nonlocal(self, name: str):
        def hook(module, args):
            self._pool_calls.pop(f"{name}.pool", None)
        return hook

    def _relu(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        self._count += 1
        suffix = "relu" if self._block == "stem" else ("relu1", "relu2", "relu")[min(self._count, 3) - 1]
        site = f"{self._block}:{suffix}"
        self.inputs[site] = x.detach().double().cpu().numpy()
        flip = self.flips.get(site)
        if flip is None:
            return F.relu(x)
        return _FlippedRelu.apply(x, torch.from_numpy(flip).to(x.device))

    def _pool_hook(self, name: str):
        def hook(module, args, output):
            x = args[0]
            if name.endswith("non_local.pool"):   # one module pools phi's path, then g's: two sites
                calls = self._pool_calls.get(name, 0)
                self._pool_calls[name] = calls + 1
                site = f"{name}:{('phi', 'g')[calls % 2]}"
            else:
                site = name
            self.inputs[site] = x.detach().double().cpu().numpy()
            flip = self.flips.get(site)
            if flip is None or not flip.any():
                return None
            windows = _windows(module, x)
            top = windows.topk(2, dim=-1).indices
            chosen = torch.where(torch.from_numpy(flip).to(x.device)[..., None], top[..., 1:2], top[..., 0:1])
            return windows.gather(-1, chosen).squeeze(-1)
        return hook

    # -------------------------------------------------------------- the context
    def __enter__(self) -> "Watch":
        for name, module in self.model.named_modules():
            if isinstance(module, (model_module.Stem, model_module.Bottleneck)):
                self._handles.append(module.register_forward_pre_hook(self._enter_block(name)))
            elif isinstance(module, model_module.NonLocalBlock):
                self._handles.append(module.register_forward_pre_hook(self._enter_nonlocal(name)))
            elif isinstance(module, torch.nn.MaxPool3d):
                self._handles.append(module.register_forward_hook(self._pool_hook(name)))
        self._saved_relu = model_module._relu
        model_module._relu = self._relu
        return self

    def __exit__(self, *exc) -> None:
        model_module._relu = self._saved_relu
        for handle in self._handles:
            handle.remove()
        self._handles = []


def pool_gaps(model: torch.nn.Module, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Per max-pool site: each window's gap between its two largest inputs (float64); a window
    whose largest input is exactly 0 (every input a ReLU's 0: an exact tie that routes the
    gradient into a ReLU that blocks it, whichever element takes it) counts as no tie (inf)."""
    modules = dict(model.named_modules())
    out = {}
    for site, x in inputs.items():
        module = modules.get(site.partition(":")[0])
        if isinstance(module, torch.nn.MaxPool3d):
            top = _windows(module, torch.from_numpy(x)).topk(2, dim=-1).values
            gap = (top[..., 0] - top[..., 1]).numpy()
            gap[top[..., 0].numpy() == 0] = np.inf
            out[site] = gap
    return out


def find_kinks(model: torch.nn.Module, x32: Dict[str, np.ndarray], x64: Dict[str, np.ndarray]
               ) -> Dict[str, dict]:
    """Per site: ``{"kind", "noise", "margin", "elements", "count", "flip"}``: the float32
    noise measured there, the margin it implies, how many inputs (ReLU) or windows
    (max-pool) it has, and the boolean array of the kinks."""
    gaps = pool_gaps(model, x64)
    out = {}
    for site, ref in x64.items():
        noise = float(np.abs(x32[site] - ref).max()) if site in x32 else 0.0
        margin = max(MARGIN * noise, ULPS * float(np.abs(ref).max()))
        if site in gaps:
            flip = gaps[site] <= margin
            kind = "max-pool"
        else:
            flip = np.abs(ref) <= margin
            kind = "relu"
        out[site] = {"kind": kind, "noise": noise, "margin": margin, "elements": int(flip.size),
                     "count": int(flip.sum()), "flip": flip}
    return out
