"""The framework-free spec: presets, canonical names and shapes, strict checking."""
from __future__ import annotations

import json

import pytest

from frameworks.spec.arch import (PRESETS, I3DNLConfig, WeightMismatchError, arch_hash, check_weights,
                                  get_preset, layer_names, layer_shapes, parameter_count, parameter_specs)

REAL = (1, 3, 32, 224, 224)


def test_default_preset_is_mmaction2_i3d_nl_dot_product():
    cfg = get_preset("i3d_nl_dot_product_r50")
    assert cfg.nonlocal_cfg.mode == "dot_product" and cfg.nonlocal_cfg.sub_sample
    assert cfg.inflate == ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
    assert cfg.non_local == ((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0))
    # Hand count: 5 non-local blocks, 16 bottlenecks, 4 shortcut projections.
    names = layer_names(cfg)
    assert len(names) == 2 + 16 + 5 + 1 + 2
    assert [n for n in names if n.endswith("non_local")] == [
        "res3.1.non_local", "res3.3.non_local", "res4.1.non_local", "res4.3.non_local", "res4.5.non_local"]
    assert names[:6] == ["stem", "pool1", "res2.0", "res2.1", "res2.2", "pool2"]
    assert names[-2:] == ["pool", "logits"]


@pytest.mark.parametrize("preset,res5", [
    ("i3d_nl_dot_product_r50", (4, 7, 7)), ("i3d_nl_caffe2_r50", (4, 7, 7)),
    ("i3d_nl_mindvideo_r50", (16, 7, 7)), ("c2d_r50", (4, 7, 7))])
def test_res5_shape_of_a_32_frame_clip(preset, res5):
    shapes = layer_shapes(get_preset(preset), REAL)
    assert shapes["res5.2"] == (1, 2048, *res5)


def test_caffe2_stem_floors_to_55_and_tests_fully_convolutionally():
    cfg = get_preset("i3d_nl_caffe2_r50")
    assert layer_shapes(cfg, REAL)["pool1"] == (1, 64, 8, 55, 55)
    shapes = layer_shapes(cfg, (1, 3, 32, 256, 256))
    assert shapes["res5.2"] == (1, 2048, 4, 8, 8) and shapes["pool"] == (1, 2048, 1, 2, 2)
    # theta/phi/g/out all biased, out conv too
    specs = parameter_specs(cfg)
    assert specs["res3.1.non_local.out.bias"] == (512,)


def test_parameter_names_and_shapes_of_the_default_preset():
    specs = parameter_specs(get_preset("i3d_nl_dot_product_r50"))
    assert specs["stem.conv.weight"] == (64, 3, 5, 7, 7)
    assert specs["res2.0.conv1.weight"] == (64, 64, 3, 1, 1)
    assert specs["res3.1.conv1.weight"] == (128, 512, 1, 1, 1)
    assert specs["res3.0.downsample.conv.weight"] == (512, 256, 1, 1, 1)
    assert specs["res4.1.non_local.theta.weight"] == (512, 1024, 1, 1, 1)
    assert "res4.1.non_local.out.bias" not in specs
    assert specs["head.fc.weight"] == (400, 2048)
    assert parameter_count(get_preset("i3d_nl_dot_product_r50")) == 35_397_840


def test_gaussian_has_no_theta_phi_and_depth_101_extends_the_patterns():
    assert not any(".theta." in k for k in parameter_specs(get_preset("i3d_nl_gaussian_r50")))
    r101 = get_preset("i3d_nl_dot_product_r50", depth=101)
    assert r101.stage_blocks == (3, 4, 23, 3)
    assert r101.non_local[2][:6] == (0, 1, 0, 1, 0, 1) and len(r101.non_local[2]) == 23
    assert "res4.22.conv3.weight" in parameter_specs(r101)


def test_configs_roundtrip_json_and_hash_tells_presets_apart():
    hashes = set()
    for cfg in PRESETS.values():
        assert I3DNLConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        hashes.add(arch_hash(cfg))
    assert len(hashes) == len(PRESETS)


def test_bad_configs_and_unknown_presets_are_refused():
    with pytest.raises(KeyError, match="unknown arch preset"):
        get_preset("resnet18")
    with pytest.raises(ValueError, match="depth"):
        I3DNLConfig(depth=34)
    with pytest.raises(ValueError, match="non_local"):
        I3DNLConfig(non_local=((0, 0, 0),) * 4)


def test_gaussian_with_scale_is_refused_because_mmcv_never_scales_it():
    import dataclasses

    from frameworks.spec.arch import NonLocalConfig

    gaussian = get_preset("i3d_nl_gaussian_r50")
    assert gaussian.nonlocal_cfg.mode == "gaussian" and not gaussian.nonlocal_cfg.use_scale
    with pytest.raises(ValueError, match="gaussian.*use_scale"):
        dataclasses.replace(gaussian, nonlocal_cfg=dataclasses.replace(gaussian.nonlocal_cfg, use_scale=True))
    with pytest.raises(ValueError, match="use_scale"):
        I3DNLConfig(nonlocal_cfg=NonLocalConfig(mode="gaussian", use_scale=True))
    # the scaled softmax forms stay allowed: Caffe2's embedded Gaussian divides by sqrt(C')
    assert get_preset("i3d_nl_caffe2_r50").nonlocal_cfg.use_scale
    I3DNLConfig(nonlocal_cfg=NonLocalConfig(mode="embedded_gaussian", use_scale=True))


def test_check_weights_names_every_offending_key():
    cfg = get_preset("i3d_nl_dot_product_r50")
    shapes = dict(parameter_specs(cfg))
    del shapes["res3.1.non_local.g.bias"]
    shapes["res4.22.conv1.weight"] = (256, 1024, 1, 1, 1)
    shapes["head.fc.weight"] = (101, 2048)
    with pytest.raises(WeightMismatchError) as err:
        check_weights(cfg, shapes)
    message = str(err.value)
    assert "res3.1.non_local.g.bias" in message and "res4.22.conv1.weight" in message
    assert "head.fc.weight (101, 2048) != (400, 2048)" in message


@pytest.mark.parametrize("preset", list(PRESETS))
def test_torch_model_gives_the_spec_shapes(preset):
    """Every preset builds, and each canonical layer has the shape the spec computes."""
    import numpy as np
    import torch

    from frameworks.torch.model import I3DNL

    cfg = get_preset(preset)
    shape = (1, 3, 8, 64, 64)
    with torch.no_grad():
        out = I3DNL(cfg).eval().forward_intermediates(torch.zeros(shape))
    assert {k: tuple(v.shape) for k, v in out.items()} == layer_shapes(cfg, shape)
    assert sum(int(np.prod(p.shape)) for p in I3DNL(cfg).parameters()) == parameter_count(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("preset,res5", [("i3d_nl_caffe2_r50", (4, 7, 7)), ("i3d_nl_mindvideo_r50", (16, 7, 7))])
def test_foreign_graphs_reach_res5_with_the_documented_shape(preset, res5):
    import torch

    from frameworks.torch.model import I3DNL

    with torch.no_grad():
        out = I3DNL(get_preset(preset)).eval().forward_intermediates(torch.zeros(REAL), names=["res5.2"])
    assert tuple(out["res5.2"].shape) == (1, 2048, *res5)


# ------------------------------------------------------------------ the stage plan
def _layer_names_before_the_stage_plan(cfg):
    """``layer_names`` as it was written before :func:`stage_plan` (kept to pin the plan)."""
    names = ["stem", "pool1"]
    for blk in cfg.blocks():
        names.append(blk.name)
        if blk.non_local:
            names.append(f"{blk.name}.non_local")
        if blk.name == f"res2.{cfg.stage_blocks[0] - 1}" and cfg.pool2_kernel is not None:
            names.append("pool2")
    names += ["pool", "logits"]
    return names


def _layer_shapes_before_the_stage_plan(cfg, input_shape):
    """``layer_shapes`` as it was written before :func:`stage_plan`."""
    def conv_out(size, kernel, stride, pad, ceil=False):
        span = size + 2 * pad - kernel
        return (-(-span // stride) if ceil else span // stride) + 1

    n, _, t, h, w = input_shape
    thw = [t, h, w]
    thw = [conv_out(x, k, s, p) for x, k, s, p in zip(thw, cfg.conv1_kernel, cfg.conv1_stride, cfg.conv1_padding)]
    shapes = {"stem": (n, cfg.base_channels, *thw)}
    thw = [conv_out(x, k, s, p, cfg.pool1_ceil_mode)
           for x, k, s, p in zip(thw, cfg.pool1_kernel, cfg.pool1_stride, cfg.pool1_padding)]
    shapes["pool1"] = (n, cfg.base_channels, *thw)
    for blk in cfg.blocks():
        stride = max(blk.conv1_stride[1], blk.conv2_stride[1])
        thw = [thw[0], conv_out(thw[1], 3, stride, 1), conv_out(thw[2], 3, stride, 1)]
        shapes[blk.name] = (n, blk.out_channels, *thw)
        if blk.non_local:
            shapes[f"{blk.name}.non_local"] = shapes[blk.name]
        if blk.name == f"res2.{cfg.stage_blocks[0] - 1}" and cfg.pool2_kernel is not None:
            thw = [conv_out(x, k, k, 0) for x, k in zip(thw, cfg.pool2_kernel)]
            shapes["pool2"] = (n, blk.out_channels, *thw)
    if cfg.head == "fc":
        shapes["pool"] = (n, cfg.feature_channels)
    else:
        shapes["pool"] = (n, cfg.feature_channels, 1, thw[1] - min(7, thw[1]) + 1, thw[2] - min(7, thw[2]) + 1)
    shapes["logits"] = (n, cfg.num_classes)
    return {name: shapes[name] for name in _layer_names_before_the_stage_plan(cfg)}


PLAN_SHAPES = [REAL, (1, 3, 8, 64, 64), (1, 3, 32, 256, 256), (2, 3, 16, 112, 112), (1, 3, 5, 97, 61)]


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_names_and_shapes_read_from_the_stage_plan_are_what_they_were(preset, depth):
    cfg = get_preset(preset, depth=depth)
    assert layer_names(cfg) == _layer_names_before_the_stage_plan(cfg)
    for shape in PLAN_SHAPES:
        got, before = layer_shapes(cfg, shape), _layer_shapes_before_the_stage_plan(cfg, shape)
        assert list(got) == list(before) and got == before, shape
    # variants no preset covers: no pool2, a ceil-mode pool1, strides on conv1
    for variant in (dict(pool2_kernel=None), dict(pool1_ceil_mode=True), dict(stride_on="conv1")):
        other = cfg.replace(**variant)
        assert layer_names(other) == _layer_names_before_the_stage_plan(other), variant
        assert layer_shapes(other, (1, 3, 8, 63, 65)) == _layer_shapes_before_the_stage_plan(other, (1, 3, 8, 63, 65))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_stage_plan_kinds_blocks_and_feature_info(preset):
    from frameworks.spec.arch import STAGE_KINDS, feature_info, stage_plan

    cfg = get_preset(preset)
    plan = stage_plan(cfg)
    assert all(s.kind in STAGE_KINDS for s in plan)
    assert [s.kind for s in plan[:2]] == ["stem", "pool1"] and [s.kind for s in plan[-2:]] == ["pool", "logits"]
    assert [s.block for s in plan if s.kind == "block"] == cfg.blocks()
    for stage in plan:
        if stage.kind == "non_local":
            assert stage.block.non_local and stage.name == f"{stage.block.name}.non_local"
        assert (stage.block is not None) == (stage.kind in ("block", "non_local"))
        assert stage.is_head == (stage.kind in ("pool", "logits"))
    # timm's feature_info, as both models held it before the spec owned it
    last_layer = {s: [n for n in layer_names(cfg) if n.startswith(s + ".")][-1] for s in ("res2", "res3", "res4", "res5")}
    assert feature_info(cfg) == [dict(num_chs=cfg.base_channels * 2 ** i * 4, reduction=4 * 2 ** i, module=s,
                                      layer=last_layer[s])
                                 for i, s in enumerate(("res2", "res3", "res4", "res5"))]
    assert feature_info(cfg)[-1]["num_chs"] == cfg.feature_channels
    # frozen: a plan cannot be edited in place by one model behind the other's back
    with pytest.raises(Exception):
        plan[0].name = "x"
