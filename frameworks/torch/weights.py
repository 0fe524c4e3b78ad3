"""Canonical arrays <-> the PyTorch model, and seeded random weights that test something.

The model's module paths are the canonical names, so the only translation is dropping
``num_batches_tracked``. Loading is strict: :func:`load_canonical` fails with every
missing, unexpected and mis-shaped key before touching the model.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

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


# BatchNorms that end a residual branch (ours, and mmaction2's names for the same layers):
# trained networks keep each block close to identity, so these get small gains.
BRANCH_END_BNS = ("bn3", "non_local.bn", "conv3.bn", "conv_out.bn")


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, clip: torch.Tensor, seed: int,
                        forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                        branch_end_gain: Tuple[float, float] = (0.1, 0.3)) -> None:
    """Give every BatchNorm random affine parameters and running statistics taken from its
    own input on ``clip``, then perturb them a little.

    Random weights that test something must be finite *and* well conditioned. Naive
    statistics overflow: a dot-product non-local block is cubic in its input's scale, and
    five in a row reach inf. Statistics measured on the compared clip keep activations
    O(1-10); three more choices keep float32 rounding from being amplified layer after
    layer (without them torch float32 and float64 differed by 58% of res5's range on a
    1x3x8x64x64 clip; with them by < 2e-5):

    * a variance floor (the layer's mean second moment): at deep layers a small clip gives
      a BN only a few positions per channel, and a channel whose values happen to be nearly
      equal would get a gain of 1/std;
    * the BN that ends each residual branch (``bn3``, the non-local output BN) gets a gain
      in ``branch_end_gain`` (U[0.1, 0.3]): trained blocks stay close to identity, and the
      non-local blocks still change their input by several percent;
    * every other BN: gain U[0.5, 1.5], shift N(0, 0.2); then mean + 0.1 std noise and
      variance x U[0.8, 1.2], so no layer is an exact whitening.

    Works on any ``nn.Module`` (ours, or mmaction2's with its inference path passed as
    ``forward``), which is what lets both be randomised the same way.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    low, high = branch_end_gain
    for name, bn in bns:
        c = bn.num_features
        if name.endswith(BRANCH_END_BNS):
            bn.weight.copy_(low + (high - low) * torch.rand(c, generator=gen))
        else:
            bn.weight.copy_(0.5 + torch.rand(c, generator=gen))
        bn.bias.copy_(0.2 * torch.randn(c, generator=gen))

    def set_stats(bn, inputs):
        x = inputs[0].transpose(0, 1).reshape(bn.num_features, -1).double()
        mean, var = x.mean(dim=1), x.var(dim=1, unbiased=False)
        var = var + (var + mean ** 2).mean()
        noise = torch.randn(bn.num_features, generator=gen, dtype=torch.float64)
        bn.running_mean.copy_((mean + 0.1 * var.sqrt() * noise).float())
        scale = 0.8 + 0.4 * torch.rand(bn.num_features, generator=gen, dtype=torch.float64)
        bn.running_var.copy_((var * scale + bn.eps).float())

    handles = [bn.register_forward_pre_hook(set_stats) for _, bn in bns]
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
    """Seeded random weights for every conv / linear (He-normal, biases N(0, 0.1)), then
    :func:`calibrate_batchnorm` on ``clip``.

    Unscaled embedded-Gaussian blocks also get theta and phi scaled by C'^-1/4, so that
    their affinities are O(1) rather than a saturated softmax (the scaled variant divides
    by sqrt(C') itself).
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    for m in model.modules():
        if getattr(m, "mode", None) == "embedded_gaussian" and not m.use_scale:
            for conv in (m.theta, m.phi):
                conv.weight.mul_(m.inter ** -0.25)
                conv.bias.mul_(m.inter ** -0.25)
    calibrate_batchnorm(model, clip, seed + 1)
