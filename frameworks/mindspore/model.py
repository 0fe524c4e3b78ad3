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
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import mindspore as ms
from mindspore import nn, ops

from frameworks.spec.arch import BlockSpec, I3DNLConfig, Stage, feature_info, stage_plan


def _bn(channels: int, cfg: I3DNLConfig) -> nn.BatchNorm3d:
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

    def __init__(self, cfg: I3DNLConfig):
        super().__init__()
        self.conv = _conv(cfg.in_channels, cfg.base_channels, cfg.conv1_kernel, cfg.conv1_stride, cfg.conv1_padding)
        self.bn = _bn(cfg.base_channels, cfg)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(x)))


class Downsample(nn.Cell):
    def __init__(self, blk: BlockSpec, cfg: I3DNLConfig):
        super().__init__()
        self.conv = _conv(blk.in_channels, blk.out_channels, (1, 1, 1), blk.downsample_stride)
        self.bn = _bn(blk.out_channels, cfg)

    def construct(self, x):
        return self.bn(self.conv(x))


class NonLocalBlock(nn.Cell):
    """Non-local block; ``z = x + BN(W_out y)``, ``y = f(theta(x), phi(x)) g(x)``.

    Shapes for input ``x: (N, C, T, H, W)``, ``L = T*H*W``, ``C' = C / reduction`` and
    ``L'`` the positions left after sub-sampling the phi / g paths::

        theta: (N, L, C')   phi: (N, C', L')   g: (N, L', C')
        f = theta @ phi: (N, L, L')  ->  /L' (dot product) or softmax (Gaussian forms)
        y = f @ g: (N, L, C')  ->  (N, C', T, H, W)

    The Gaussian form has no theta / phi convolutions: x itself is embedded.
    """

    def __init__(self, channels: int, cfg: I3DNLConfig):
        super().__init__()
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
        self.out = _conv(self.inter, channels, (1, 1, 1), bias=nl.out_bias)
        self.bn = _bn(channels, cfg)

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

    def __init__(self, blk: BlockSpec, cfg: I3DNLConfig):
        super().__init__()
        self.conv1 = _conv(blk.in_channels, blk.planes, blk.conv1_kernel, blk.conv1_stride, blk.conv1_padding)
        self.bn1 = _bn(blk.planes, cfg)
        self.conv2 = _conv(blk.planes, blk.planes, blk.conv2_kernel, blk.conv2_stride, blk.conv2_padding)
        self.bn2 = _bn(blk.planes, cfg)
        self.conv3 = _conv(blk.planes, blk.out_channels, (1, 1, 1))
        self.bn3 = _bn(blk.out_channels, cfg)
        self.relu = nn.ReLU()
        self.has_downsample = blk.downsample_stride is not None
        if self.has_downsample:
            self.downsample = Downsample(blk, cfg)
        if blk.non_local:
            self.non_local = NonLocalBlock(blk.out_channels, cfg)

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
    """ResNet3D-50/101 with non-local blocks, as configured by ``cfg``."""

    def __init__(self, cfg: I3DNLConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = Stem(cfg)
        self.pool1 = MaxPool3d(cfg.pool1_kernel, cfg.pool1_stride, cfg.pool1_padding, cfg.pool1_ceil_mode)
        blocks = cfg.blocks()
        self.res2 = nn.CellList([Bottleneck(b, cfg) for b in blocks if b.name.startswith("res2.")])
        self.res3 = nn.CellList([Bottleneck(b, cfg) for b in blocks if b.name.startswith("res3.")])
        self.res4 = nn.CellList([Bottleneck(b, cfg) for b in blocks if b.name.startswith("res4.")])
        self.res5 = nn.CellList([Bottleneck(b, cfg) for b in blocks if b.name.startswith("res5.")])
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
