"""Floating-point operations of the network, counted from the spec's stage plan.

The count follows the convention of ``torch.utils.flop_counter.FlopCounterMode`` (and of
fvcore / timm's ``gmacs`` times two): a multiply-accumulate is two FLOPs, and only
convolutions and matrix products count (bias adds, batch norm, activations, pools and
softmax are memory-bound and left out). A convolution producing ``P`` output positions
of ``C_out`` channels from a ``C_in x kT x kH x kW`` window costs ``2 P C_out C_in kT kH kW``.

The non-local block's two products depend on how they are associated: the paper's order
``(theta phi^T) g`` costs ``2 L L' C'`` twice (``L`` positions, ``L'`` after sub-sampling,
``C'`` the embedding width); the dot-product form is linear in its affinity, so
``theta (phi^T g)`` computes the same function in ``2 L' C'^2 + 2 L C'^2``
(``reassociate=True``, the fast path of both models).

    stage_flops(cfg, (1, 3, 32, 224, 224))          # {canonical layer: FLOPs}
    gflops_per_clip(cfg, (3, 32, 224, 224))          # one number, for benchmarks
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

from frameworks.spec.arch import I3DNLConfig, Stage, Window, stage_plan


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def conv_flops(batch: int, c_in: int, c_out: int, kernel: Sequence[int], out_thw: Sequence[int]) -> int:
    """``2 x`` multiply-accumulates of a dense convolution (bias excluded)."""
    return 2 * batch * c_out * c_in * _prod(kernel) * _prod(out_thw)


def _block_flops(stage: Stage, n: int, c_in: int, thw: Sequence[int]) -> int:
    blk = stage.block
    pos1 = Window(blk.conv1_kernel, blk.conv1_stride, blk.conv1_padding).output_size(thw)
    pos2 = Window(blk.conv2_kernel, blk.conv2_stride, blk.conv2_padding).output_size(pos1)
    total = conv_flops(n, c_in, blk.planes, blk.conv1_kernel, pos1)
    total += conv_flops(n, blk.planes, blk.planes, blk.conv2_kernel, pos2)
    total += conv_flops(n, blk.planes, blk.out_channels, (1, 1, 1), pos2)
    if blk.downsample_stride is not None:
        pos_ds = Window((1, 1, 1), blk.downsample_stride).output_size(thw)
        total += conv_flops(n, c_in, blk.out_channels, (1, 1, 1), pos_ds)
    return total


def _nonlocal_flops(cfg: I3DNLConfig, n: int, c: int, thw: Sequence[int], reassociate: bool) -> int:
    nl = cfg.nonlocal_cfg
    inter = max(c // nl.reduction, 1)
    positions = _prod(thw)
    pooled = Window(nl.pool_kernel, nl.pool_kernel).output_size(thw) if nl.sub_sample else list(thw)
    sub = _prod(pooled)
    # phi and g: convolved at every position then pooled (mmaction2), or on the pooled map (Caffe2)
    path_positions = sub if (nl.sub_sample and nl.pool_before_conv) else positions
    total = 0
    if nl.mode == "gaussian":
        embed = c                                       # x itself is theta and phi
        total += 2 * n * inter * c * path_positions     # g
    else:
        embed = inter
        total += 2 * n * inter * c * positions          # theta
        total += 2 * 2 * n * inter * c * path_positions  # phi, g
    if reassociate and nl.mode == "dot_product":
        total += 2 * n * sub * embed * inter            # phi^T g: (C', L') x (L', C')
        total += 2 * n * positions * embed * inter      # theta (C' x C'): (L, C') x (C', C')
    else:
        total += 2 * n * positions * embed * sub        # theta phi: (L, C') x (C', L')
        total += 2 * n * positions * sub * inter        # f g: (L, L') x (L', C')
    total += 2 * n * c * inter * positions              # out
    return total


def stage_flops(cfg: I3DNLConfig, input_shape: Sequence[int], reassociate: bool = False) -> Dict[str, int]:
    """FLOPs of every canonical layer for an ``(N, C, T, H, W)`` input, in execution order."""
    shape: Tuple[int, ...] = tuple(int(x) for x in input_shape)
    out: Dict[str, int] = {}
    for stage in stage_plan(cfg):
        n, c = shape[0], shape[1]
        thw = shape[2:]
        next_shape = stage.output_shape(shape)
        if stage.kind == "stem":
            flops = conv_flops(n, c, stage.out_channels, cfg.conv1_kernel, next_shape[2:])
        elif stage.kind == "block":
            flops = _block_flops(stage, n, c, thw)
        elif stage.kind == "non_local":
            flops = _nonlocal_flops(cfg, n, c, thw, reassociate)
        elif stage.kind == "logits":
            # fc on pooled features; Caffe2's head applies it at every pooled position
            positions = _prod(shape[2:]) if len(shape) == 5 else 1
            flops = 2 * n * positions * cfg.feature_channels * cfg.num_classes
        else:  # pools
            flops = 0
        out[stage.name] = flops
        shape = next_shape
    return out


def forward_flops(cfg: I3DNLConfig, input_shape: Sequence[int], reassociate: bool = False) -> int:
    """FLOPs of one forward pass on an ``(N, C, T, H, W)`` batch."""
    return sum(stage_flops(cfg, input_shape, reassociate).values())


def gflops_per_clip(cfg: I3DNLConfig, clip_shape: Sequence[int], reassociate: bool = False) -> float:
    """GFLOPs of one forward pass per ``(C, T, H, W)`` clip (the network's work: compare
    implementations by this number, whatever association they run)."""
    return forward_flops(cfg, (1, *clip_shape), reassociate) / 1e9


def train_gflops_per_clip(cfg: I3DNLConfig, clip_shape: Sequence[int]) -> float:
    """A training step's GFLOPs per clip by the usual convention: forward + backward =
    3x the forward (the backward computes a gradient for the input and for the weights)."""
    return 3.0 * gflops_per_clip(cfg, clip_shape)
