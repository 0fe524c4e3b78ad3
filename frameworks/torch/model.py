"""I3D Non-local ResNet in PyTorch, built from :class:`frameworks.spec.arch.I3DNLConfig`.

Module paths are the canonical names of the spec, so ``state_dict()`` keys are canonical
(``num_batches_tracked`` aside). The network is a chain of named stages, in
the order of :func:`frameworks.spec.arch.stage_plan` (:meth:`I3DNL.stages`);
``forward_intermediates`` returns each stage's output under its canonical layer name, and
``forward_stage`` runs one stage on a given input.

Execution options (:meth:`I3DNL.set_execution`) change how the same function is computed,
never the parameters or their names; every one is exact in real arithmetic and off by
default (the exact path, which mmaction2 matches bit for bit):

* ``reassociate_nonlocal``: the dot-product block as ``(g phi^T / L') theta`` in the
  (N, C', L) layout, O(L C'^2) instead of O(L L' C'), with no transposes;
* ``inplace``: ReLU and the residual add write into their input (inference and training);
* ``fast_pools``: a temporal-only max pool (pool2) as an elementwise maximum of frames
  (``max_pool3d`` computes an index tensor even under ``no_grad``, and is slow on it);
* ``direct_mkldnn``: every CPU float32 convolution through oneDNN (torch sends batch-1
  3D convolutions on small maps to an im2col fallback several times slower).

:func:`build_folded` makes a separate inference network with every batch norm folded
into the convolution before it (:mod:`frameworks.spec.fold`).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _triple

from frameworks.spec.arch import BlockSpec, I3DNLConfig, STAGE_NAMES, Stage, feature_info, stage_plan

# set_execution's options; all off is the exact path
EXECUTION_OPTIONS = ("reassociate_nonlocal", "inplace", "fast_pools", "direct_mkldnn")


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same names) that can call oneDNN directly on CPU."""

    direct_mkldnn = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.direct_mkldnn and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_grad_enabled() and not torch.compiler.is_compiling()):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super().forward(x)


class MaxPool3d(nn.MaxPool3d):
    """``nn.MaxPool3d`` that, with ``fast``, runs a temporal-only window as a maximum of frames."""

    fast = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and not self.ceil_mode:
            y = _pool_by_frames(x, self.kernel_size, self.stride, self.padding)
            if y is not None:
                return y
        return super().forward(x)


def _pool_by_frames(x: torch.Tensor, kernel, stride, padding) -> Optional[torch.Tensor]:
    """A max pool over time only (I3D's pool2, 2x1x1) as an elementwise maximum of frames,
    or None for any other window. ``max_pool3d`` computes an index tensor even under
    ``no_grad``: measured 8 ms against 91 ms on a contiguous 1x256x8x56x56 map. (Spatial
    windows stay ``max_pool3d``: as 2D pools over frames they were no faster, and much
    slower in channels_last_3d.) Max is exact: so is this."""
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = _triple(kernel), _triple(stride), _triple(padding)
    if (kh, kw, sh, sw, ph, pw, pt) != (1, 1, 1, 1, 0, 0, 0):
        return None
    t_out = (x.shape[2] - kt) // st + 1
    span = (t_out - 1) * st + 1
    y = x[:, :, 0:span:st]
    for i in range(1, kt):
        y = torch.maximum(y, x[:, :, i:i + span:st])
    return y


def _bn(channels: int, cfg: I3DNLConfig, folded: bool = False) -> nn.Module:
    if folded:
        return nn.Identity()
    return nn.BatchNorm3d(channels, eps=cfg.bn_eps, momentum=cfg.bn_momentum)


def _conv(cin: int, cout: int, kernel, stride=(1, 1, 1), padding=(0, 0, 0), bias=False) -> nn.Conv3d:
    return Conv3d(cin, cout, kernel_size=tuple(kernel), stride=tuple(stride),
                  padding=tuple(padding), bias=bias)


def _relu(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    # every ReLU of the network goes through here (frameworks.torch.kinks watches them)
    return F.relu_(x) if inplace else F.relu(x)


class Stem(nn.Module):
    """conv1 (5x7x7 for I3D) -> BN -> ReLU."""

    inplace = False

    def __init__(self, cfg: I3DNLConfig, folded: bool = False):
        super().__init__()
        self.conv = _conv(cfg.in_channels, cfg.base_channels, cfg.conv1_kernel,
                          cfg.conv1_stride, cfg.conv1_padding, bias=folded)
        self.bn = _bn(cfg.base_channels, cfg, folded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _relu(self.bn(self.conv(x)), self.inplace)


class Downsample(nn.Module):
    def __init__(self, blk: BlockSpec, cfg: I3DNLConfig, folded: bool = False):
        super().__init__()
        self.conv = _conv(blk.in_channels, blk.out_channels, (1, 1, 1), blk.downsample_stride, bias=folded)
        self.bn = _bn(blk.out_channels, cfg, folded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class NonLocalBlock(nn.Module):
    """Non-local block; ``z = x + BN(W_out y)``, ``y = f(theta(x), phi(x)) g(x)``.

    Shapes for input ``x: (N, C, T, H, W)``, ``L = T*H*W``, ``C' = C / reduction`` and
    ``L'`` the positions left after sub-sampling the phi / g paths::

        theta: (N, L, C')   phi: (N, C', L')   g: (N, L', C')
        f = theta @ phi: (N, L, L')  ->  /L' (dot product) or softmax (Gaussian forms)
        y = f @ g: (N, L, C')  ->  (N, C', T, H, W)

    With ``reassociate`` (dot product only), the same y in the (N, C', L) layout the
    convolutions produce, with no transposes::

        context = g @ phi^T / L': (N, C', C')     y^T = context @ theta^T: (N, C', L)
    """

    reassociate = False
    inplace = False

    def __init__(self, channels: int, cfg: I3DNLConfig, folded: bool = False):
        super().__init__()
        nl = cfg.nonlocal_cfg
        self.mode, self.use_scale = nl.mode, nl.use_scale
        self.inter = max(channels // nl.reduction, 1)
        self.pool_before_conv = nl.pool_before_conv
        if self.mode != "gaussian":
            self.theta = _conv(channels, self.inter, (1, 1, 1), bias=True)
            self.phi = _conv(channels, self.inter, (1, 1, 1), bias=True)
        self.g = _conv(channels, self.inter, (1, 1, 1), bias=True)
        self.out = _conv(self.inter, channels, (1, 1, 1), bias=nl.out_bias or folded)
        self.bn = _bn(channels, cfg, folded)
        self.pool = MaxPool3d(nl.pool_kernel, nl.pool_kernel) if nl.sub_sample else None

    def _subsampled(self, x: torch.Tensor, conv: Optional[nn.Module]) -> torch.Tensor:
        if self.pool is None:
            return conv(x) if conv is not None else x
        if conv is None:
            return self.pool(x)
        return conv(self.pool(x)) if self.pool_before_conv else self.pool(conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        if self.reassociate and self.mode == "dot_product":
            return self._forward_reassociated(x)
        if self.mode == "gaussian":
            theta = x.reshape(n, c, -1).transpose(1, 2)                       # (N, L, C)
            phi = self._subsampled(x, None).reshape(n, c, -1)                 # (N, C, L')
        else:
            theta = self.theta(x).reshape(n, self.inter, -1).transpose(1, 2)  # (N, L, C')
            phi = self._subsampled(x, self.phi).reshape(n, self.inter, -1)    # (N, C', L')
        g = self._subsampled(x, self.g).reshape(n, self.inter, -1).transpose(1, 2)  # (N, L', C')
        affinity = torch.matmul(theta, phi)                                   # (N, L, L')
        if self.mode == "dot_product":
            affinity = affinity / affinity.shape[-1]
        else:
            if self.use_scale:  # Caffe2's embedded Gaussian: 1/sqrt(C') (the spec refuses a scaled Gaussian)
                affinity = affinity / self.inter ** 0.5
            affinity = affinity.softmax(dim=-1)
        y = torch.matmul(affinity, g)                                         # (N, L, C')
        y = y.transpose(1, 2).reshape(n, self.inter, *x.shape[2:])
        return self._residual(x, y)

    def _forward_reassociated(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        theta = self.theta(x).reshape(n, self.inter, -1)                       # (N, C', L)
        phi = self._subsampled(x, self.phi).reshape(n, self.inter, -1)         # (N, C', L')
        g = self._subsampled(x, self.g).reshape(n, self.inter, -1)             # (N, C', L')
        context = torch.matmul(g, phi.transpose(1, 2)) / phi.shape[-1]         # (N, C', C')
        y = torch.matmul(context, theta).reshape(n, self.inter, *x.shape[2:])  # (N, C', T, H, W)
        return self._residual(x, y)

    def _residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.bn(self.out(y))
        return z.add_(x) if self.inplace else x + z


class Bottleneck(nn.Module):
    """conv1 (1x1x1 or 3x1x1) -> conv2 (1x3x3) -> conv3 (1x1x1), shortcut, ReLU.

    The optional ``non_local`` block that follows is a stage of its own (see
    :meth:`I3DNL.stages`), so parity can tell the two apart.
    """

    inplace = False

    def __init__(self, blk: BlockSpec, cfg: I3DNLConfig, folded: bool = False):
        super().__init__()
        self.conv1 = _conv(blk.in_channels, blk.planes, blk.conv1_kernel, blk.conv1_stride, blk.conv1_padding,
                           bias=folded)
        self.bn1 = _bn(blk.planes, cfg, folded)
        self.conv2 = _conv(blk.planes, blk.planes, blk.conv2_kernel, blk.conv2_stride, blk.conv2_padding,
                           bias=folded)
        self.bn2 = _bn(blk.planes, cfg, folded)
        self.conv3 = _conv(blk.planes, blk.out_channels, (1, 1, 1), bias=folded)
        self.bn3 = _bn(blk.out_channels, cfg, folded)
        self.downsample = Downsample(blk, cfg, folded) if blk.downsample_stride is not None else None
        self.non_local = NonLocalBlock(blk.out_channels, cfg, folded) if blk.non_local else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _relu(self.bn1(self.conv1(x)), self.inplace)
        out = _relu(self.bn2(self.conv2(out)), self.inplace)
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return _relu(out.add_(identity) if self.inplace else out + identity, self.inplace)


class Head(nn.Module):
    """Global average pool -> dropout -> fc (mmaction2's I3DHead, mindvideo's dense head),
    or Caffe2's test head: ``fc`` applied at every position of the pooled map as a 1x1x1
    conv, softmax over classes per position, then the mean over positions."""

    def __init__(self, cfg: I3DNLConfig):
        super().__init__()
        self.kind = cfg.head
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cfg.feature_channels, cfg.num_classes)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "fc":
            return x.mean(dim=(2, 3, 4))
        # Caffe2: average over all frames and a 7x7 window, stride 1 (fully convolutional:
        # a 256 crop gives a 2x2 map); maps smaller than 7x7 (test shapes) are pooled whole.
        t, h, w = x.shape[2:]
        return F.avg_pool3d(x, kernel_size=(t, min(7, h), min(7, w)), stride=1)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(pooled)
        if self.kind == "fc":
            return self.fc(pooled)
        scores = torch.einsum("ncthw,kc->nkthw", pooled, self.fc.weight) + self.fc.bias[:, None, None, None]
        return scores.softmax(dim=1).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool(x)
        return pooled if pre_logits else self.classify(pooled)


class I3DNL(nn.Module):
    """ResNet3D-50/101 with non-local blocks, as configured by ``cfg``.

    ``fold_bn=True`` builds the inference network of :func:`build_folded` (no batch norm,
    a bias on every convolution that had one after it); its parameter names are not the
    canonical ones, and it refuses ``train()``.
    """

    def __init__(self, cfg: I3DNLConfig, fold_bn: bool = False):
        super().__init__()
        self.cfg = cfg
        self.folded = fold_bn
        self.stem = Stem(cfg, fold_bn)
        self.pool1 = MaxPool3d(cfg.pool1_kernel, cfg.pool1_stride, cfg.pool1_padding,
                               ceil_mode=cfg.pool1_ceil_mode)
        blocks = cfg.blocks()
        for stage in STAGE_NAMES:
            self.add_module(stage, nn.ModuleList(
                Bottleneck(b, cfg, fold_bn) for b in blocks if b.name.startswith(stage + ".")))
        self.pool2 = (MaxPool3d(cfg.pool2_kernel, cfg.pool2_kernel)
                      if cfg.pool2_kernel is not None else None)
        self.head = Head(cfg)
        # Plain lists, not registered modules: each module already has its canonical path.
        plan = stage_plan(cfg)
        self._layers: List[Tuple[str, Callable]] = [(s.name, _LAYER_OF_KIND[s.kind](self, s)) for s in plan]
        self._stage_table: List[Tuple[str, nn.Module]] = [
            layer for layer, s in zip(self._layers, plan) if not s.is_head]
        self.feature_info = feature_info(cfg)

    def train(self, mode: bool = True) -> "I3DNL":
        if mode and self.folded:
            raise RuntimeError("a BN-folded network is for inference only; train the canonical one")
        return super().train(mode)

    # ------------------------------------------------------------------ execution
    def set_execution(self, **options: bool) -> "I3DNL":
        """Switch exact reformulations on or off (:data:`EXECUTION_OPTIONS`; see the module
        docstring); the parameters and their names never change."""
        unknown = sorted(set(options) - set(EXECUTION_OPTIONS))
        if unknown:
            raise ValueError(f"unknown execution option(s) {', '.join(unknown)}; one of {', '.join(EXECUTION_OPTIONS)}")
        attribute = {"reassociate_nonlocal": ("reassociate", NonLocalBlock),
                     "inplace": ("inplace", (Stem, Bottleneck, NonLocalBlock)),
                     "fast_pools": ("fast", MaxPool3d), "direct_mkldnn": ("direct_mkldnn", Conv3d)}
        for option, value in options.items():
            name, kinds = attribute[option]
            for module in self.modules():
                if isinstance(module, kinds):
                    setattr(module, name, bool(value))
        self._execution = {**self.execution(), **{k: bool(v) for k, v in options.items()}}
        return self

    def execution(self) -> Dict[str, bool]:
        """The execution options in force."""
        return dict(getattr(self, "_execution", dict.fromkeys(EXECUTION_OPTIONS, False)))

    # ------------------------------------------------------------------ stages
    def stages(self) -> List[Tuple[str, Callable]]:
        """Every canonical layer as ``(name, callable)`` in execution order, each taking the
        previous layer's output; the last two are the head's ``pool`` and ``logits`` (as in
        the MindSpore model)."""
        return list(self._layers)

    def forward_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Run one canonical layer on its input (the previous layer's output)."""
        return dict(self._layers)[name](x)

    # ------------------------------------------------------------------ timm-style API
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self._stage_table:
            x = module(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor,
                              names: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
        """Every canonical layer's output (or only ``names``), keyed by canonical name."""
        wanted = set(names) if names is not None else None
        out: Dict[str, torch.Tensor] = {}
        for name, layer in self._layers:
            x = layer(x)
            if wanted is None or name in wanted:
                out[name] = x
        return out


# Where each kind of stage in the spec's plan lives in the model (the head's two are methods).
_LAYER_OF_KIND: Dict[str, Callable[[I3DNL, Stage], Callable]] = {
    "stem": lambda net, stage: net.stem,
    "pool1": lambda net, stage: net.pool1,
    "block": lambda net, stage: getattr(net, stage.block.stage)[stage.block.index],
    "non_local": lambda net, stage: getattr(net, stage.block.stage)[stage.block.index].non_local,
    "pool2": lambda net, stage: net.pool2,
    "pool": lambda net, stage: net.head.pool,
    "logits": lambda net, stage: net.head.classify,
}


def build_model(cfg: I3DNLConfig) -> I3DNL:
    return I3DNL(cfg)


def build_folded(cfg: I3DNLConfig, arrays: Dict[str, object]) -> I3DNL:
    """An inference network with every batch norm folded into the convolution before it,
    from canonical arrays (:func:`frameworks.spec.fold.fold_batchnorm`), in eval mode on
    the CPU. Loading is strict: every folded parameter, nothing else."""
    from frameworks.spec.fold import fold_batchnorm

    folded = fold_batchnorm(cfg, arrays)
    model = I3DNL(cfg, fold_bn=True).eval()
    state = {k: torch.from_numpy(v) for k, v in folded.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:  # the module tree disagrees with the spec: a bug here, not in the weights
        raise ValueError(f"folded network vs spec: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model
