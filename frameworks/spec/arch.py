"""The I3D Non-local network as data: one frozen config, named presets, canonical names.

This module is the single source of truth for the architecture. The PyTorch and the
MindSpore implementations are both built from an :class:`I3DNLConfig`, and every
weight converter maps foreign names onto the canonical parameter names listed by
:func:`parameter_specs`. Parity compares the intermediates named by :func:`layer_names`.

Conventions (shared by both frameworks):

* Layout is NCTHW; convolution weights are ``(out, in, kT, kH, kW)``.
* Padding is always explicit and symmetric, ``(pT, pH, pW)`` on both sides of each
  axis (MindSpore: ``pad_mode="pad"``; never ``"same"``, which pads asymmetrically
  on even sizes).
* Batch norm parameters are named as in PyTorch: ``weight``, ``bias``,
  ``running_mean``, ``running_var``; the MindSpore names are a table in its
  ``weights.py``. ``bn_momentum`` is PyTorch's (MindSpore's is ``1 - momentum``).

Canonical names (for the default preset)::

    stem.conv.weight                          (64, 3, 5, 7, 7)
    stem.bn.{weight,bias,running_mean,running_var}
    res2.0.conv1.weight, res2.0.bn1.*, ..., res2.0.downsample.conv.weight, ...bn.*
    res3.1.non_local.{theta,phi,g}.{weight,bias}, res3.1.non_local.out.weight,
    res3.1.non_local.bn.*
    head.fc.{weight,bias}                     (400, 2048), (400,)

Canonical layers (intermediates, in execution order)::

    stem, pool1, res2.0, res2.1, res2.2, pool2, res3.0, res3.1, res3.1.non_local, ...,
    res5.2, pool, logits

Each layer's input is the previous layer's output, so a single stage can be run on
its own (the "isolated" parity mode relies on this). That order is written once, in
:func:`stage_plan`; :func:`layer_names`, :func:`layer_shapes`, :func:`feature_info` and
both models' stage tables are read from it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

Triple = Tuple[int, int, int]

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
EXPANSION = 4
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")

NONLOCAL_MODES = ("dot_product", "embedded_gaussian", "gaussian")
HEAD_KINDS = ("fc", "conv_softmax_avg")
STAGE_KINDS = ("stem", "pool1", "block", "non_local", "pool2", "pool", "logits")
HEAD_STAGE_KINDS = ("pool", "logits")


@dataclass(frozen=True)
class NonLocalConfig:
    """One non-local block (Wang et al. 2018, Sec. 3), as each codebase builds it.

    mode: ``dot_product`` (f = theta^T phi / N), ``embedded_gaussian`` (softmax of
      theta^T phi, optionally scaled by 1/sqrt(inter_channels)) or ``gaussian``
      (softmax of x^T x: no theta / phi convolutions).
    sub_sample: max-pool ``pool_kernel`` (stride = kernel) on the phi and g paths.
    pool_before_conv: Caffe2 pools the block input once, then applies phi and g;
      mmaction2 / mindvideo apply the convolution first, then pool.
    out_bias: whether the output 1x1x1 conv (before its BN) has a bias (Caffe2 only).
    """

    mode: str = "dot_product"
    reduction: int = 2
    sub_sample: bool = True
    pool_kernel: Triple = (1, 2, 2)
    pool_before_conv: bool = False
    use_scale: bool = False
    out_bias: bool = False


@dataclass(frozen=True)
class I3DNLConfig:
    """ResNet3D with optional non-local blocks, in the vocabulary of mmaction2's ResNet3d.

    ``inflate[s][b]`` says whether bottleneck ``b`` of stage ``s`` has a temporal
    kernel (``3x1x1`` on conv1, mmaction2's ``inflate_style='3x1x1'``);
    ``non_local[s][b]`` whether a non-local block follows it.
    """

    name: str = "i3d_nl_dot_product_r50"
    depth: int = 50
    num_classes: int = 400
    in_channels: int = 3
    base_channels: int = 64
    # stem
    conv1_kernel: Triple = (5, 7, 7)
    conv1_stride: Triple = (2, 2, 2)
    pool1_kernel: Triple = (1, 3, 3)
    pool1_stride: Triple = (2, 2, 2)
    pool1_padding: Triple = (0, 1, 1)
    pool1_ceil_mode: bool = False
    pool2_kernel: Optional[Triple] = (2, 1, 1)  # None: no pool after res2
    # stages
    inflate: Tuple[Tuple[int, ...], ...] = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
    non_local: Tuple[Tuple[int, ...], ...] = ((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0))
    nonlocal_cfg: NonLocalConfig = field(default_factory=NonLocalConfig)
    spatial_strides: Tuple[int, ...] = (1, 2, 2, 2)
    # 'conv2': stride on the 3x3 conv (torchvision / mmaction2 "pytorch" style);
    # 'conv1': stride on the first 1x1 conv (ResNet v1 "caffe" style (MSRA), used by no preset;
    # video-nonlocal-net's Caffe2 model puts it on branch2b, the 3x3, i.e. 'conv2').
    stride_on: str = "conv2"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    # head
    head: str = "fc"
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.depth not in STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}")
        for label, pattern in (("inflate", self.inflate), ("non_local", self.non_local)):
            got = tuple(len(p) for p in pattern)
            if got != self.stage_blocks:
                raise ValueError(f"{label} has {got} blocks per stage; depth {self.depth} needs "
                                 f"{self.stage_blocks}")
        if self.nonlocal_cfg.mode not in NONLOCAL_MODES:
            raise ValueError(f"non-local mode must be one of {NONLOCAL_MODES}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}")
        if self.stride_on not in ("conv1", "conv2"):
            raise ValueError("stride_on must be 'conv1' or 'conv2'")
        if self.nonlocal_cfg.mode == "gaussian" and self.nonlocal_cfg.use_scale:
            # mmcv's NonLocal3d.gaussian() never scales its affinities, whatever use_scale says
            raise ValueError("non-local mode 'gaussian' with use_scale=True has no upstream model "
                             "(mmcv never scales Gaussian affinities); set use_scale=False")

    # ----------------------------------------------------------------- derived facts
    @property
    def stage_blocks(self) -> Tuple[int, ...]:
        return STAGE_BLOCKS[self.depth]

    @property
    def conv1_padding(self) -> Triple:
        return tuple((k - 1) // 2 for k in self.conv1_kernel)  # type: ignore[return-value]

    @property
    def feature_channels(self) -> int:
        return self.base_channels * 8 * EXPANSION

    def replace(self, **changes) -> "I3DNLConfig":
        """A copy with some fields changed; changing ``depth`` alone re-derives the
        per-block patterns (see :func:`_pattern_for_depth`)."""
        if "depth" in changes and changes["depth"] != self.depth:
            blocks = STAGE_BLOCKS[changes["depth"]]
            changes.setdefault("inflate", _pattern_for_depth(self.inflate, blocks))
            changes.setdefault("non_local", _pattern_for_depth(self.non_local, blocks))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "I3DNLConfig":
        """Inverse of :meth:`to_dict` (JSON turns tuples into lists; this turns them back)."""
        def tup(v):
            return tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v
        d = dict(d)
        d["nonlocal_cfg"] = NonLocalConfig(**{k: tup(v) for k, v in d["nonlocal_cfg"].items()})
        return cls(**{k: (v if k == "nonlocal_cfg" else tup(v)) for k, v in d.items()})

    def blocks(self) -> List["BlockSpec"]:
        """Every bottleneck in execution order, with its channels, kernels and strides."""
        specs = []
        in_ch = self.base_channels
        for s, (stage, n) in enumerate(zip(STAGE_NAMES, self.stage_blocks)):
            planes = self.base_channels * 2 ** s
            for b in range(n):
                stride = self.spatial_strides[s] if b == 0 else 1
                inflated = bool(self.inflate[s][b])
                specs.append(BlockSpec(
                    name=f"{stage}.{b}",
                    in_channels=in_ch,
                    planes=planes,
                    out_channels=planes * EXPANSION,
                    conv1_kernel=(3, 1, 1) if inflated else (1, 1, 1),
                    conv1_padding=(1, 0, 0) if inflated else (0, 0, 0),
                    conv1_stride=(1, stride, stride) if self.stride_on == "conv1" else (1, 1, 1),
                    conv2_stride=(1, stride, stride) if self.stride_on == "conv2" else (1, 1, 1),
                    downsample_stride=(1, stride, stride) if (stride != 1 or in_ch != planes * EXPANSION) else None,
                    non_local=bool(self.non_local[s][b]),
                ))
                in_ch = planes * EXPANSION
        return specs


@dataclass(frozen=True)
class BlockSpec:
    """One bottleneck: 1x1 (or 3x1x1) -> 1x3x3 -> 1x1, BN after each, ReLU after add."""

    name: str
    in_channels: int
    planes: int
    out_channels: int
    conv1_kernel: Triple
    conv1_padding: Triple
    conv1_stride: Triple
    conv2_stride: Triple
    downsample_stride: Optional[Triple]  # None: identity shortcut
    non_local: bool

    @property
    def conv2_kernel(self) -> Triple:
        return (1, 3, 3)

    @property
    def conv2_padding(self) -> Triple:
        return (0, 1, 1)

    @property
    def stage(self) -> str:
        """The stage this block belongs to (``res3`` for ``res3.1``)."""
        return self.name.split(".")[0]

    @property
    def index(self) -> int:
        """The block's position in its stage (``1`` for ``res3.1``)."""
        return int(self.name.split(".")[1])


def _pattern_for_depth(pattern, blocks) -> Tuple[Tuple[int, ...], ...]:
    """Stretch a per-block pattern to another depth by repeating each stage's cycle.

    ResNet-101's res4 has 23 blocks; the alternating R50 patterns (1,0,1,0,1,0) and
    (0,1,0,1,0,1) continue alternating, as in the paper's R101 models.
    """
    out = []
    for stage, n in zip(pattern, blocks):
        period = 2 if len(stage) >= 2 and all(stage[i] == stage[i % 2] for i in range(len(stage))) else len(stage)
        out.append(tuple(stage[i % period] for i in range(n)))
    return tuple(out)


_NO_NL = ((0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0, 0, 0), (0, 0, 0))

# The presets: each public checkpoint runs on the graph it was trained on.
PRESETS: Dict[str, I3DNLConfig] = {
    # mmaction2 configs/recognition/i3d/i3d_imagenet-pretrained-r50-nl-dot-product_8xb8-32x2x1-...
    "i3d_nl_dot_product_r50": I3DNLConfig(),
    "i3d_nl_embedded_gaussian_r50": I3DNLConfig(
        name="i3d_nl_embedded_gaussian_r50", nonlocal_cfg=NonLocalConfig(mode="embedded_gaussian")),
    "i3d_nl_gaussian_r50": I3DNLConfig(
        name="i3d_nl_gaussian_r50", nonlocal_cfg=NonLocalConfig(mode="gaussian")),
    # The seed's Table 1 baselines, as mmaction2's ResNet3d expresses them.
    "i3d_r50": I3DNLConfig(name="i3d_r50", non_local=_NO_NL),
    "c2d_r50": I3DNLConfig(
        name="c2d_r50", conv1_kernel=(1, 7, 7), non_local=_NO_NL,
        inflate=((0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0, 0, 0), (0, 0, 0))),
    # facebookresearch/video-nonlocal-net resnet_video_org.py (arc 2), run_i3d_nlnet_400k_32f.sh:
    # pool1 2x3x3 stride 2 unpadded (Caffe2 floors: 112 -> 55), embedded Gaussian scaled by
    # 1/sqrt(C'), max-pool before phi and g, biased out conv; pred applied per position.
    "i3d_nl_caffe2_r50": I3DNLConfig(
        name="i3d_nl_caffe2_r50",
        pool1_kernel=(2, 3, 3), pool1_stride=(2, 2, 2), pool1_padding=(0, 0, 0),
        nonlocal_cfg=NonLocalConfig(mode="embedded_gaussian", use_scale=True,
                                    pool_before_conv=True, out_bias=True),
        bn_eps=1.0000001e-5, head="conv_softmax_avg"),
    # ZJUT-ERCISS/zjut_mindvideo mindvideo/models/nonlocal3d.py (the seed): mmaction2's graph
    # but no temporal stride in the stem, so a 32-frame clip reaches res5 as 16x7x7.
    "i3d_nl_mindvideo_r50": I3DNLConfig(
        name="i3d_nl_mindvideo_r50", conv1_stride=(1, 2, 2), pool1_stride=(1, 2, 2)),
}
DEFAULT_PRESET = "i3d_nl_dot_product_r50"


def lookup(table: dict, name: str, kind: str, overrides: dict):
    """``table[name]`` with ``overrides`` applied through its ``replace``; an unknown name is a
    ``KeyError`` that lists the choices. One lookup for every named spec table (arch presets,
    data and train presets, training recipes)."""
    try:
        entry = table[name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; choose from {', '.join(table)}") from None
    return entry.replace(**overrides) if overrides else entry


def get_preset(name: str, **overrides) -> I3DNLConfig:
    """The named preset, optionally with fields changed (``depth=101``, ``num_classes=...``)."""
    return lookup(PRESETS, name, "arch preset", overrides)


# --------------------------------------------------------------------- canonical names
def _bn(prefix: str, channels: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(f"{prefix}.{f}", (channels,)) for f in BN_FIELDS]


def parameter_specs(cfg: I3DNLConfig) -> Dict[str, Tuple[int, ...]]:
    """Every canonical parameter (weights and BN buffers) with its shape, in build order."""
    specs: List[Tuple[str, Tuple[int, ...]]] = []
    specs.append(("stem.conv.weight", (cfg.base_channels, cfg.in_channels, *cfg.conv1_kernel)))
    specs += _bn("stem.bn", cfg.base_channels)
    nl = cfg.nonlocal_cfg
    for blk in cfg.blocks():
        p = blk.name
        specs.append((f"{p}.conv1.weight", (blk.planes, blk.in_channels, *blk.conv1_kernel)))
        specs += _bn(f"{p}.bn1", blk.planes)
        specs.append((f"{p}.conv2.weight", (blk.planes, blk.planes, *blk.conv2_kernel)))
        specs += _bn(f"{p}.bn2", blk.planes)
        specs.append((f"{p}.conv3.weight", (blk.out_channels, blk.planes, 1, 1, 1)))
        specs += _bn(f"{p}.bn3", blk.out_channels)
        if blk.downsample_stride is not None:
            specs.append((f"{p}.downsample.conv.weight", (blk.out_channels, blk.in_channels, 1, 1, 1)))
            specs += _bn(f"{p}.downsample.bn", blk.out_channels)
        if blk.non_local:
            c, inter = blk.out_channels, max(blk.out_channels // nl.reduction, 1)
            paths = ("g",) if nl.mode == "gaussian" else ("theta", "phi", "g")
            for path in paths:
                specs.append((f"{p}.non_local.{path}.weight", (inter, c, 1, 1, 1)))
                specs.append((f"{p}.non_local.{path}.bias", (inter,)))
            specs.append((f"{p}.non_local.out.weight", (c, inter, 1, 1, 1)))
            if nl.out_bias:
                specs.append((f"{p}.non_local.out.bias", (c,)))
            specs += _bn(f"{p}.non_local.bn", c)
    specs.append(("head.fc.weight", (cfg.num_classes, cfg.feature_channels)))
    specs.append(("head.fc.bias", (cfg.num_classes,)))
    return dict(specs)


def layer_names(cfg: I3DNLConfig) -> List[str]:
    """The canonical intermediates, in execution order; each is the next one's input."""
    return [stage.name for stage in stage_plan(cfg)]


def parameter_count(cfg: I3DNLConfig) -> int:
    """Trainable parameters (BN running statistics excluded), as ``sum(p.numel())`` counts."""
    total = 0
    for name, shape in parameter_specs(cfg).items():
        if name.endswith(("running_mean", "running_var")):
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _conv_out(size: int, kernel: int, stride: int, pad: int, ceil: bool = False) -> int:
    span = size + 2 * pad - kernel
    return (-(-span // stride) if ceil else span // stride) + 1


@dataclass(frozen=True)
class Window:
    """A sliding window over (T, H, W) (a convolution's or a pool's): how a layer resizes its input."""

    kernel: Triple
    stride: Triple
    padding: Triple = (0, 0, 0)
    ceil_mode: bool = False

    def output_size(self, thw) -> List[int]:
        return [_conv_out(x, k, s, p, self.ceil_mode)
                for x, k, s, p in zip(thw, self.kernel, self.stride, self.padding)]


@dataclass(frozen=True)
class Stage:
    """One canonical layer: what runs, on what, and what it makes of its input's shape.

    ``kind`` is one of :data:`STAGE_KINDS`: ``stem`` (conv1, BN, ReLU), ``pool1``, ``block``
    (a bottleneck without its non-local block), ``non_local`` (the block after bottleneck
    ``block``), ``pool2``, and the head's ``pool`` and ``logits``. ``window`` is the layer's
    strided window (``None``: the layer keeps (T, H, W), or is in the head, whose size
    follows ``head``).
    """

    name: str
    kind: str
    out_channels: int
    block: Optional[BlockSpec] = None  # "block" and "non_local": the bottleneck
    window: Optional[Window] = None
    head: Optional[str] = None  # "pool" and "logits": cfg.head

    @property
    def is_head(self) -> bool:
        return self.kind in HEAD_STAGE_KINDS

    def output_shape(self, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        """This layer's output shape, given its input's (N, C, T, H, W)."""
        n, thw = shape[0], shape[2:]
        if self.kind == "logits" or (self.kind == "pool" and self.head == "fc"):
            return (n, self.out_channels)
        window = self.window
        if self.kind == "pool":
            # Caffe2: average over all frames and a 7x7 window (smaller maps: all of it), stride 1
            t, h, w = thw
            window = Window((t, min(7, h), min(7, w)), (1, 1, 1))
        return (n, self.out_channels, *(window.output_size(thw) if window is not None else thw))


def stage_plan(cfg: I3DNLConfig) -> List[Stage]:
    """Every canonical layer, in execution order: the one place that order is written.

    The models look each stage's module up by its ``kind``; :func:`layer_names`,
    :func:`layer_shapes` and :func:`feature_info` are read from this list.
    """
    plan = [
        Stage("stem", "stem", cfg.base_channels,
              window=Window(cfg.conv1_kernel, cfg.conv1_stride, cfg.conv1_padding)),
        Stage("pool1", "pool1", cfg.base_channels,
              window=Window(cfg.pool1_kernel, cfg.pool1_stride, cfg.pool1_padding, cfg.pool1_ceil_mode)),
    ]
    for blk in cfg.blocks():
        # Whether the stride sits on conv1 (1x1) or conv2 (3x3, padded), H and W go to
        # floor((H - 1) / stride) + 1; T is never strided inside a block.
        stride = max(blk.conv1_stride[1], blk.conv2_stride[1])
        plan.append(Stage(blk.name, "block", blk.out_channels, block=blk,
                          window=Window((1, 3, 3), (1, stride, stride), (0, 1, 1))))
        if blk.non_local:
            plan.append(Stage(f"{blk.name}.non_local", "non_local", blk.out_channels, block=blk))
        if (blk.stage == STAGE_NAMES[0] and blk.index == cfg.stage_blocks[0] - 1
                and cfg.pool2_kernel is not None):
            plan.append(Stage("pool2", "pool2", blk.out_channels,
                              window=Window(cfg.pool2_kernel, cfg.pool2_kernel)))
    plan.append(Stage("pool", "pool", cfg.feature_channels, head=cfg.head))
    plan.append(Stage("logits", "logits", cfg.num_classes, head=cfg.head))
    return plan


def layer_shapes(cfg: I3DNLConfig, input_shape: Tuple[int, int, int, int, int]) -> Dict[str, Tuple[int, ...]]:
    """The shape of every canonical intermediate for an ``(N, C, T, H, W)`` input."""
    shape, shapes = tuple(input_shape), {}
    for stage in stage_plan(cfg):
        shape = shapes[stage.name] = stage.output_shape(shape)
    return shapes


def subop_names(cfg: I3DNLConfig, name: str) -> List[str]:
    """The sub-operations of canonical layer ``name``, in execution order, as both models'
    tracers name them (parity's drill-down compares them one by one)."""
    stage = next((s for s in stage_plan(cfg) if s.name == name), None)
    if stage is None:
        raise KeyError(f"no canonical layer {name!r} in {cfg.name}")
    if stage.kind == "stem":
        return ["conv", "bn", "relu"]
    if stage.kind in ("pool1", "pool2", "pool"):
        return ["pool"]
    if stage.kind == "logits":
        return ["logits"]
    if stage.kind == "non_local":
        embedded = cfg.nonlocal_cfg.mode != "gaussian"
        return (["theta"] if embedded else []) + ["phi", "g", "affinity", "y", "out", "bn", "add"]
    steps = ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3"]
    if stage.block.downsample_stride is not None:
        steps += ["downsample.conv", "downsample.bn"]
    return steps + ["add", "relu"]


def kink_sites(cfg: I3DNLConfig) -> Dict[str, List[str]]:
    """Every ReLU and max-pool of the network (a *kink*: float32 can decide it the other way)
    -> the parameters whose rows (axis 0: the site's channels) its decision touches first.

    A ReLU after a BN (``stem:relu``, ``res3.1:relu1``, ``:relu2``) touches that BN's scale
    and shift and the convolution before it, channel by channel; the ReLU after a block's
    sum (``res3.1:relu``) touches ``bn3``, ``conv3`` and the downsample path's BN and
    convolution; ``pool1`` and ``pool2`` route the gradient of the ReLU before them; a
    non-local block's sub-sampling pools (``res3.1.non_local.pool:phi``, ``:g``) that of
    the convolution they follow (or, pooling first, the block's input: the bottleneck's
    sum). Names as :class:`frameworks.torch.kinks.Watch` records them."""
    def after_sum(blk: BlockSpec) -> List[str]:
        names = [f"{blk.name}.bn3.weight", f"{blk.name}.bn3.bias", f"{blk.name}.conv3.weight"]
        if blk.downsample_stride is not None:
            names += [f"{blk.name}.downsample.bn.weight", f"{blk.name}.downsample.bn.bias",
                      f"{blk.name}.downsample.conv.weight"]
        return names

    stem = ["stem.bn.weight", "stem.bn.bias", "stem.conv.weight"]
    sites: Dict[str, List[str]] = {"stem:relu": stem, "pool1": stem}
    last: Optional[BlockSpec] = None
    nl = cfg.nonlocal_cfg
    for stage in stage_plan(cfg):
        blk = stage.block
        if stage.kind == "block":
            for k in ("1", "2"):
                sites[f"{blk.name}:relu{k}"] = [f"{blk.name}.bn{k}.weight", f"{blk.name}.bn{k}.bias",
                                                f"{blk.name}.conv{k}.weight"]
            sites[f"{blk.name}:relu"] = after_sum(blk)
            last = blk
        elif stage.kind == "pool2" and last is not None:
            sites["pool2"] = after_sum(last)
        elif stage.kind == "non_local" and nl.sub_sample:
            for path in ("phi", "g"):
                pooled_first = nl.pool_before_conv or (path == "phi" and nl.mode == "gaussian")
                sites[f"{blk.name}.non_local.pool:{path}"] = (
                    after_sum(blk) if pooled_first else [f"{blk.name}.non_local.{path}.weight",
                                                         f"{blk.name}.non_local.{path}.bias"])
    return sites


def feature_info(cfg: I3DNLConfig) -> List[dict]:
    """timm's ``feature_info``: per stage res2..res5, the channels of its output
    (``num_chs``), its spatial stride against the input (``reduction``), the module that
    holds its blocks (``module``) and the canonical layer whose output is the stage's
    output (``layer``: what ``forward_intermediates`` returns it under, a non-local block
    where one ends the stage)."""
    info: Dict[str, dict] = {}
    reduction = 1
    for stage in stage_plan(cfg):
        if stage.window is not None:
            reduction *= stage.window.stride[1]
        if stage.kind in ("block", "non_local"):
            name = stage.block.stage
            info[name] = dict(num_chs=stage.out_channels, reduction=reduction, module=name, layer=stage.name)
    return list(info.values())


def arch_hash(cfg: I3DNLConfig) -> str:
    """A short, stable digest of everything that defines the graph."""
    blob = json.dumps(cfg.to_dict(), sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------- strict checking
class WeightMismatchError(ValueError):
    """A set of weights does not fit a config; the message lists every offending key."""

    def __init__(self, missing=(), unexpected=(), misshaped=(), context: str = ""):
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("mis-shaped", self.misshaped)):
            if items:
                shown = ", ".join(str(i) for i in items[:6])
                more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
                parts.append(f"{len(items)} {label}: {shown}{more}")
        prefix = f"{context}: " if context else ""
        super().__init__(prefix + "; ".join(parts))


def check_weights(cfg: I3DNLConfig, shapes: Dict[str, Tuple[int, ...]], context: str = "") -> None:
    """Raise :class:`WeightMismatchError` unless ``shapes`` (name -> shape) has exactly
    the canonical parameters of ``cfg`` with their shapes."""
    expected = parameter_specs(cfg)
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    misshaped = [f"{k} {tuple(shapes[k])} != {tuple(v)}" for k, v in expected.items()
                 if k in shapes and tuple(shapes[k]) != tuple(v)]
    if missing or unexpected or misshaped:
        raise WeightMismatchError(missing, unexpected, misshaped, context)
