"""I3D Non-local ResNet in MindSpore, built from :class:`frameworks.spec.arch.I3DNLConfig`.

A field-by-field mirror of :mod:`frameworks.torch.model`: the same cells under the same
attribute paths, so a parameter's MindSpore name is its canonical name except inside
batch norms (``stem.bn.bn2d.gamma`` for ``stem.bn.weight``; the one table that says so is
in :mod:`frameworks.mindspore.weights`).

Padding is explicit and symmetric everywhere (``pad_mode="pad"``): MindSpore's default
``"same"`` pads the bottom/right more than the top/left on even sizes, which would shift
every strided layer by one pixel against PyTorch. BN momentum is PyTorch's converted
(MindSpore's ``momentum`` weighs the running statistic, PyTorch's the new batch).

The same code runs in ``GRAPH_MODE`` and ``PYNATIVE_MODE``, on CPU and GPU. Graph mode
compiles a Cell's ``construct`` only, so the entry points that return several tensors are
small wrapper Cells (:class:`IntermediatesNet`, :class:`IsolatedStagesNet`) compiled once
each; they hold the network without renaming its parameters. Every entry point runs the
same chain of cells, built once from :func:`frameworks.spec.arch.stage_plan`.

Exact reformulations, off by default and never renaming a parameter (as in the torch
model): :meth:`I3DNL.set_execution` (``reassociate_nonlocal``: the dot-product block as
``(g phi^T / L') theta`` in the (N, C', L) layout, no transposes; set it before the first
call in graph mode, which compiles attributes as constants), and :func:`build_folded`, a
separate inference network with each batch norm folded into its convolution.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import mindspore as ms
from mindspore import nn, ops

from frameworks.spec.arch import BlockSpec, I3DNLConfig, Stage, feature_info, stage_plan


EXECUTION_OPTIONS = ("reassociate_nonlocal",)


def _bn(channels: int, cfg: I3DNLConfig, folded: bool = False) -> nn.Cell:
    if folded:
        return nn.Identity()
    # PyTorch: running = (1 - m) * running + m * batch; MindSpore: running = m * running + (1 - m) * batch.
    return nn.BatchNorm3d(channels, eps=cfg.bn_eps, momentum=1.0 - cfg.bn_momentum)


def _conv(cin: int, cout: int, kernel, stride=(1, 1, 1), padding=(0, 0, 0), bias: bool = False) -> nn.Conv3d:
    pt, ph, pw = padding
    return nn.Conv3d(cin, cout, kernel_size=tuple(kernel), stride=tuple(stride), pad_mode="pad",
                     padding=(pt, pt, ph, ph, pw, pw), has_bias=bias)


class MaxPool3d(nn.Cell):
    """PyTorch's ``MaxPool3d(kernel, stride, padding, ceil_mode)`` with symmetric padding.

    Built on the ``MaxPool3D`` primitive directly: ``nn.MaxPool3d``'s ``pad_mode`` is
    deprecated after MindSpore 2.9, and the primitive's ``pad_list`` is the explicit
    (front, back, top, bottom, left, right) padding we want.
    """

    def __init__(self, kernel, stride, padding=(0, 0, 0), ceil_mode: bool = False):
        super().__init__()
        pt, ph, pw = padding
        self.pool = ops.MaxPool3D(kernel_size=tuple(kernel), strides=tuple(stride), pad_mode="pad",
                                  pad_list=(pt, pt, ph, ph, pw, pw), ceil_mode=True if ceil_mode else None)

    def construct(self, x):
        return self.pool(x)


class Stem(nn.Cell):
    """conv1 (5x7x7 for I3D) -> BN -> ReLU."""

    def __init__(self, cfg: I3DNLConfig, folded: bool = False):
        super().__init__()
        self.conv = _conv(cfg.in_channels, cfg.base_channels, cfg.conv1_kernel, cfg.conv1_stride, cfg.conv1_padding,
                          bias=folded)
        self.bn = _bn(cfg.base_channels, cfg, folded)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(x)))


class Downsample(nn.Cell):
    def __init__(self, blk: BlockSpec, cfg: I3DNLConfig, folded: bool = False):
        super().__init__()
        self.conv = _conv(blk.in_channels, blk.out_channels, (1, 1, 1), blk.downsample_stride, bias=folded)
        self.bn = _bn(blk.out_channels, cfg, folded)

    def construct(self, x):
        return self.bn(self.conv(x))


class NonLocalBlock(nn.Cell):
    """Non-local block; ``z = x + BN(W_out y)``, ``y = f(theta(x), phi(x)) g(x)``.

    Shapes for input ``x: (N, C, T, H, W)``, ``L = T*H*W``, ``C' = C / reduction`` and
    ``L'`` the positions left after sub-sampling the phi / g paths::

        theta: (N, L, C')   phi: (N, C', L')   g: (N, L', C')
        f = theta @ phi: (N, L, L')  ->  /L' (dot product) or softmax (Gaussian forms)
        y = f @ g: (N, L, C')  ->  (N, C', T, H, W)

    The Gaussian form has no theta / phi convolutions: x itself is embedded. With
    ``reassociate`` (dot product only), the same y in the layout the convolutions give::

        context = g @ phi^T / L': (N, C', C')     y^T = context @ theta^T: (N, C', L)
    """

    def __init__(self, channels: int, cfg: I3DNLConfig, folded: bool = False):
        super().__init__()
        self.reassociate = False
        nl = cfg.nonlocal_cfg
        self.embedded = nl.mode != "gaussian"
        self.dot_product = nl.mode == "dot_product"
        self.use_scale = nl.use_scale
        self.inter = max(channels // nl.reduction, 1)
        self.sub_sample = nl.sub_sample
        self.pool_before_conv = nl.pool_before_conv
        if nl.sub_sample:
            self.pool = MaxPool3d(nl.pool_kernel, nl.pool_kernel)
        if self.embedded:
            self.theta = _conv(channels, self.inter, (1, 1, 1), bias=True)
            self.phi = _conv(channels, self.inter, (1, 1, 1), bias=True)
        self.g = _conv(channels, self.inter, (1, 1, 1), bias=True)
        self.out = _conv(self.inter, channels, (1, 1, 1), bias=nl.out_bias or folded)
        self.bn = _bn(channels, cfg, folded)
        self.matmul_nt = ops.BatchMatMul(transpose_b=True)

    def _phi_path(self, x):
        if not self.sub_sample:
            return self.phi(x)
        if self.pool_before_conv:
            return self.phi(self.pool(x))
        return self.pool(self.phi(x))

    def _g_path(self, x):
        if not self.sub_sample:
            return self.g(x)
        if self.pool_before_conv:
            return self.g(self.pool(x))
        return self.pool(self.g(x))

    def construct(self, x):
        n, c, t, h, w = x.shape
        if self.reassociate and self.dot_product:
            theta = self.theta(x).reshape(n, self.inter, -1)                            # (N, C', L)
            phi = self._phi_path(x).reshape(n, self.inter, -1)                          # (N, C', L')
            g = self._g_path(x).reshape(n, self.inter, -1)                              # (N, C', L')
            context = self.matmul_nt(g, phi) / phi.shape[-1]                            # (N, C', C')
            y = ops.matmul(context, theta).reshape(n, self.inter, t, h, w)              # (N, C', T, H, W)
            return x + self.bn(self.out(y))
        if self.embedded:
            theta = self.theta(x).reshape(n, self.inter, -1).transpose(0, 2, 1)     # (N, L, C')
            phi = self._phi_path(x).reshape(n, self.inter, -1)                       # (N, C', L')
        else:
            theta = x.reshape(n, c, -1).transpose(0, 2, 1)                           # (N, L, C)
            phi = (self.pool(x) if self.sub_sample else x).reshape(n, c, -1)         # (N, C, L')
        g = self._g_path(x).reshape(n, self.inter, -1).transpose(0, 2, 1)            # (N, L', C')
        affinity = ops.matmul(theta, phi)                                            # (N, L, L')
        if self.dot_product:
            affinity = affinity / affinity.shape[-1]
        else:
            if self.use_scale:  # Caffe2's embedded Gaussian: 1/sqrt(C') (the spec refuses a scaled Gaussian)
                affinity = affinity / self.inter ** 0.5
            affinity = ops.softmax(affinity, axis=-1)
        y = ops.matmul(affinity, g)                                                  # (N, L, C')
        y = y.transpose(0, 2, 1).reshape(n, self.inter, t, h, w)
        return x + self.bn(self.out(y))


class Bottleneck(nn.Cell):
    """conv1 (1x1x1 or 3x1x1) -> conv2 (1x3x3) -> conv3 (1x1x1), shortcut, ReLU.

    The optional ``non_local`` block that follows is a stage of its own (see
    :meth:`I3DNL.stages`), so parity can tell the two apart; ``construct`` runs the
    bottleneck alone.
    """

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
        self.relu = nn.ReLU()
        self.has_downsample = blk.downsample_stride is not None
        if self.has_downsample:
            self.downsample = Downsample(blk, cfg, folded)
        if blk.non_local:
            self.non_local = NonLocalBlock(blk.out_channels, cfg, folded)

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.has_downsample else x
        return self.relu(out + identity)


class GlobalPool(nn.Cell):
    """``pool`` of the head: the mean over T, H, W (``fc`` head), or Caffe2's average
    over all frames and a 7x7 window at stride 1 (the fully convolutional test head;
    maps smaller than 7x7, at test shapes, are pooled whole, as in the torch model)."""

    def __init__(self, kind: str):
        super().__init__()
        self.fully_convolutional = kind == "conv_softmax_avg"

    def construct(self, x):
        if not self.fully_convolutional:
            return x.mean(axis=(2, 3, 4))
        # A (T, 7, 7) window at stride 1 is the mean over T, then a 7x7 mean per frame.
        n, c, t, h, w = x.shape
        pooled = ops.avg_pool2d(x.mean(axis=2), kernel_size=(min(7, h), min(7, w)), stride=1)
        return pooled.reshape(n, c, 1, pooled.shape[2], pooled.shape[3])


class Head(nn.Cell):
    """Global average pool -> dropout -> fc (mmaction2's I3DHead, mindvideo's dense head),
    or Caffe2's test head: ``fc`` applied at every position of the pooled map as a 1x1x1
    conv, softmax over classes per position, then the mean over positions."""

    def __init__(self, cfg: I3DNLConfig):
        super().__init__()
        self.fully_convolutional = cfg.head == "conv_softmax_avg"
        self.has_dropout = cfg.dropout > 0
        if self.has_dropout:
            self.dropout = nn.Dropout(p=cfg.dropout)
        self.pool = GlobalPool(cfg.head)
        self.fc = nn.Dense(cfg.feature_channels, cfg.num_classes)

    def classify(self, pooled):
        if self.has_dropout:
            pooled = self.dropout(pooled)
        if not self.fully_convolutional:
            return self.fc(pooled)
        n, c, t, h, w = pooled.shape
        positions = pooled.transpose(0, 2, 3, 4, 1).reshape(-1, c)                 # (N*T*H*W, C)
        scores = ops.softmax(self.fc(positions), axis=-1)                           # (N*T*H*W, K)
        return scores.reshape(n, t * h * w, -1).mean(axis=1)

    def construct(self, x):
        return self.classify(self.pool(x))


class _HeadClassify(nn.Cell):
    """The ``logits`` stage alone (dropout + classifier on pooled features)."""

    def __init__(self, head: Head):
        super().__init__(auto_prefix=False)
        self.head = head

    def construct(self, x):
        return self.head.classify(x)


class I3DNL(nn.Cell):
    """ResNet3D-50/101 with non-local blocks, as configured by ``cfg``.

    ``fold_bn=True`` builds the inference network of :func:`build_folded` (no batch norm,
    a bias on every convolution that had one after it; not the canonical names).
    """

    def __init__(self, cfg: I3DNLConfig, fold_bn: bool = False):
        super().__init__()
        self.cfg = cfg
        self.folded = fold_bn
        self.stem = Stem(cfg, fold_bn)
        self.pool1 = MaxPool3d(cfg.pool1_kernel, cfg.pool1_stride, cfg.pool1_padding, cfg.pool1_ceil_mode)
        blocks = cfg.blocks()
        self.res2 = nn.CellList([Bottleneck(b, cfg, fold_bn) for b in blocks if b.name.startswith("res2.")])
        self.res3 = nn.CellList([Bottleneck(b, cfg, fold_bn) for b in blocks if b.name.startswith("res3.")])
        self.res4 = nn.CellList([Bottleneck(b, cfg, fold_bn) for b in blocks if b.name.startswith("res4.")])
        self.res5 = nn.CellList([Bottleneck(b, cfg, fold_bn) for b in blocks if b.name.startswith("res5.")])
        if cfg.pool2_kernel is not None:
            self.pool2 = MaxPool3d(cfg.pool2_kernel, cfg.pool2_kernel)
        self.head = Head(cfg)
        self.feature_info = feature_info(cfg)
        # The chain every entry point runs, in the spec's order. Tuples, not an attribute
        # Cell: assigning a CellList would prefix every parameter's name with its own
        # ("layers.0.conv.weight"); graph mode unrolls a loop over a tuple of cells.
        plan = stage_plan(cfg)
        layers = tuple(_CELL_OF_KIND[stage.kind](self, stage) for stage in plan)
        self.layer_names: Tuple[str, ...] = tuple(stage.name for stage in plan)
        self.layer_cells: Tuple[nn.Cell, ...] = layers
        self.feature_cells: Tuple[nn.Cell, ...] = tuple(c for c, st in zip(layers, plan) if not st.is_head)

    def set_train(self, mode: bool = True):
        if mode and getattr(self, "folded", False):
            raise RuntimeError("a BN-folded network is for inference only; train the canonical one")
        return super().set_train(mode)

    # ------------------------------------------------------------------ execution
    def set_execution(self, **options: bool) -> "I3DNL":
        """Switch exact reformulations on or off (:data:`EXECUTION_OPTIONS`); parameters and
        their names never change. In graph mode, before the first call."""
        unknown = sorted(set(options) - set(EXECUTION_OPTIONS))
        if unknown:
            raise ValueError(f"unknown execution option(s) {', '.join(unknown)}; one of {', '.join(EXECUTION_OPTIONS)}")
        for option, value in options.items():
            for _, cell in self.cells_and_names():
                if isinstance(cell, NonLocalBlock):
                    cell.reassociate = bool(value)
        self._execution = {**self.execution(), **{k: bool(v) for k, v in options.items()}}
        return self

    def execution(self) -> Dict[str, bool]:
        return dict(getattr(self, "_execution", dict.fromkeys(EXECUTION_OPTIONS, False)))

    # ------------------------------------------------------------------ stages
    def stages(self) -> List[Tuple[str, nn.Cell]]:
        """Every canonical layer as ``(name, cell)`` in execution order, each cell taking
        the previous layer's output; the last two are the head's ``pool`` and ``logits``."""
        return list(zip(self.layer_names, self.layer_cells))

    def forward_stage(self, name: str, x):
        """Run one canonical layer on its input (the previous layer's output)."""
        return dict(self.stages())[name](x)

    # ------------------------------------------------------------------ timm-style API
    def forward_features(self, x):
        for cell in self.feature_cells:
            x = cell(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        pooled = self.head.pool(x)
        return pooled if pre_logits else self.head.classify(pooled)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x, names: Optional[Sequence[str]] = None) -> Dict[str, ms.Tensor]:
        """Every canonical layer's output (or only ``names``), keyed by canonical name.

        Runs :class:`IntermediatesNet` (one compiled graph in GRAPH_MODE); keep and reuse
        one ``IntermediatesNet`` yourself to avoid recompiling on every call.
        """
        outputs = dict(zip(self.layer_names, IntermediatesNet(self)(x)))
        return outputs if names is None else {k: outputs[k] for k in names}


class IntermediatesNet(nn.Cell):
    """``construct(x)`` -> a tuple of every canonical layer's output, in
    :func:`frameworks.spec.arch.layer_names` order (``logits`` last)."""

    def __init__(self, net: I3DNL):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x):
        outs = []
        for cell in self.net.layer_cells:
            x = cell(x)
            outs.append(x)
        return tuple(outs)


class IsolatedStagesNet(nn.Cell):
    """``construct(*inputs)`` -> every canonical layer run on its own given input.

    ``inputs[i]`` is the input of layer ``i`` of :func:`layer_names` (the clip, then the
    reference's output of the layer before), so one compiled graph shows each layer's
    own error apart from what it inherits.
    """

    def __init__(self, net: I3DNL):
        super().__init__(auto_prefix=False)
        self.net = net
        self.stage_cells = nn.CellList([cell for _, cell in net.stages()], auto_prefix=False)

    def construct(self, *inputs):
        outs = []
        for i, cell in enumerate(self.stage_cells):
            outs.append(cell(inputs[i]))
        return tuple(outs)


# Where each kind of stage in the spec's plan lives in the network.
_CELL_OF_KIND: Dict[str, Callable[[I3DNL, Stage], nn.Cell]] = {
    "stem": lambda net, stage: net.stem,
    "pool1": lambda net, stage: net.pool1,
    "block": lambda net, stage: getattr(net, stage.block.stage)[stage.block.index],
    "non_local": lambda net, stage: getattr(net, stage.block.stage)[stage.block.index].non_local,
    "pool2": lambda net, stage: net.pool2,
    "pool": lambda net, stage: net.head.pool,
    "logits": lambda net, stage: _HeadClassify(net.head),
}


def build_model(cfg: I3DNLConfig) -> I3DNL:
    net = I3DNL(cfg)
    net.set_train(False)
    return net


def build_folded(cfg: I3DNLConfig, arrays: Dict[str, object]) -> I3DNL:
    """An inference network with every batch norm folded into the convolution before it,
    from canonical arrays (:func:`frameworks.spec.fold.fold_batchnorm`). Loading is strict."""
    import numpy as np

    from frameworks.spec.fold import fold_batchnorm

    folded = fold_batchnorm(cfg, arrays)
    net = I3DNL(cfg, fold_bn=True)
    net.set_train(False)
    params = {p.name for p in net.get_parameters()}
    if params != set(folded):  # the cell tree disagrees with the spec: a bug here, not in the weights
        raise ValueError(f"folded network vs spec: missing {sorted(set(folded) - params)[:4]}, "
                         f"unexpected {sorted(params - set(folded))[:4]}")
    param_dict = {k: ms.Parameter(ms.Tensor(np.ascontiguousarray(v)), name=k) for k, v in folded.items()}
    not_loaded, unused = ms.load_param_into_net(net, param_dict, strict_load=True)
    if not_loaded or unused:
        raise ValueError(f"folded network: {len(not_loaded)} parameters not loaded, {len(unused)} unused")
    return net
