"""Canonical arrays <-> the PyTorch model, and seeded random weights that test something.

The model's module paths are the canonical names, so the only translation is dropping
``num_batches_tracked``. Loading is strict: :func:`load_canonical` fails with every
missing, unexpected and mis-shaped key before touching the model.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

from frameworks.spec.arch import I3DNLConfig, check_weights

_SKIPPED_SUFFIXES = ("num_batches_tracked",)


def to_canonical(model: nn.Module) -> Dict[str, np.ndarray]:
    """The model's weights and BN statistics as canonical numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()
            if not k.endswith(_SKIPPED_SUFFIXES)}


def load_canonical(model: nn.Module, arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> None:
    """Load canonical arrays into ``model``; the key set and shapes must match ``cfg`` exactly."""
    check_weights(cfg, {k: np.shape(v) for k, v in arrays.items()}, context="torch model")
    state = model.state_dict()
    for name, value in arrays.items():
        target = state[name]
        if np.asarray(value).dtype != np.float32:
            raise TypeError(f"{name}: dtype {np.asarray(value).dtype}, the model holds float32")
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, clip: torch.Tensor, seed: int,
                        forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
    """Give every BatchNorm random affine parameters and running statistics taken from its
    own input on ``clip``, then perturb them a little.

    Naive random statistics overflow: a dot-product non-local block is cubic in its
    input's scale, and five of them in a row reach inf. Statistics measured on the clip
    that will be compared keep activations O(1-10), while the random affine parameters and
    the perturbation (mean + 0.1 std noise, variance x U[0.8, 1.2]) keep every layer,
    including the non-local output BN, doing real work. Works on any ``nn.Module`` (ours
    or mmaction2's, whose inference path is passed as ``forward``), which is what lets
    both be randomised the same way.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        c = bn.num_features
        bn.weight.copy_(0.5 + torch.rand(c, generator=gen))
        bn.bias.copy_(0.2 * torch.randn(c, generator=gen))

    def set_stats(bn, inputs):
        x = inputs[0].transpose(0, 1).reshape(bn.num_features, -1).double()
        mean, var = x.mean(dim=1), x.var(dim=1, unbiased=False)
        noise = torch.randn(bn.num_features, generator=gen, dtype=torch.float64)
        bn.running_mean.copy_((mean + 0.1 * var.sqrt() * noise).float())
        scale = 0.8 + 0.4 * torch.rand(bn.num_features, generator=gen, dtype=torch.float64)
        bn.running_var.copy_((var * scale + bn.eps).float())

    handles = [bn.register_forward_pre_hook(set_stats) for bn in bns]
    was_training = model.training
    try:
        model.eval()
        (forward or model)(clip)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


@torch.no_grad()
def randomize(model: nn.Module, clip: torch.Tensor, seed: int) -> None:
    """Seeded random weights for every conv / linear, then :func:`calibrate_batchnorm`."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    calibrate_batchnorm(model, clip, seed + 1)
