"""The MindSpore I3D-NL Cell against the spec: names, shapes, padding, BN momentum, entry
points, strict loading, and the runner's oneDNN set-up. (Numbers against torch: see
test_mindspore_parity.py.)"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from frameworks.spec.arch import PRESETS, WeightMismatchError, get_preset, layer_names, layer_shapes, parameter_specs
from frameworks.spec.naming import mindspore_names
from harness.runners.mindspore_runner import configure_onednn_isa, detect_cpu_isa

configure_onednn_isa()  # before MindSpore is imported (see harness.runners.mindspore_runner)
ms = pytest.importorskip("mindspore")
from frameworks.mindspore import model as ms_model  # noqa: E402
from frameworks.mindspore import weights as ms_weights  # noqa: E402

pytestmark = pytest.mark.mindspore
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = "i3d_nl_dot_product_r50"


def clip_shape(preset: str):
    # Caffe2's test head averages a 7x7 window of res5, which needs a 224x224 input.
    return (1, 3, 8, 224, 224) if get_preset(preset).head == "conv_softmax_avg" else (1, 3, 8, 64, 64)


def random_canonical(cfg, seed: int = 0):
    """Weights that keep activations bounded (convs at half He's gain, BN near identity):
    no calibration needed, which is all structural tests want."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in parameter_specs(cfg).items():
        if name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith(("running_mean", "bias")):
            out[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("non_local.bn.weight"):  # near-zero, as mmaction2 initialises it: a
            out[name] = rng.uniform(0.01, 0.05, shape).astype(np.float32)  # dot product is cubic
        elif len(shape) == 1:  # BN weight
            out[name] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) * np.sqrt(1.0 / np.prod(shape[1:]))).astype(np.float32)
    return out


@pytest.fixture(scope="module", autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield


@pytest.fixture(scope="module")
def nets():
    """One built Cell per preset, shared by the module's tests."""
    cache = {}

    def get(preset):
        if preset not in cache:
            cfg = get_preset(preset)
            cache[preset] = (cfg, ms_model.build_model(cfg))
        return cache[preset]
    return get


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_names_are_the_canonical_ones_through_one_table(nets, preset):
    cfg, net = nets(preset)
    got = {p.name: tuple(p.shape) for p in net.get_parameters()}
    expected = {ms_name: parameter_specs(cfg)[canonical] for ms_name, canonical in mindspore_names(cfg).items()}
    assert got == expected
    assert all(n.endswith((".weight", ".bias", ".gamma", ".beta", ".moving_mean", ".moving_variance")) for n in got)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_padding_is_explicit_and_symmetric_and_bn_momentum_converted(nets, preset):
    cfg, net = nets(preset)
    convs = bns = pools = 0
    for name, cell in net.cells_and_names():
        if isinstance(cell, ms.nn.Conv3d):
            convs += 1
            pad = cell.padding
            assert cell.pad_mode == "pad" and pad[0::2] == pad[1::2], name
        elif isinstance(cell, ms.nn.BatchNorm3d):
            bns += 1
            # nn.BatchNorm3d takes MindSpore's momentum (weight of the running statistic) and
            # stores the kernel's, which is PyTorch's: the round trip lands on cfg.bn_momentum
            assert cell.bn2d.momentum == pytest.approx(cfg.bn_momentum) and cell.bn2d.eps == cfg.bn_eps, name
        elif isinstance(cell, ms_model.MaxPool3d):
            pools += 1
            prim = cell.pool
            # "pad" is recorded as CALCULATED: the explicit pad_list, never SAME
            assert prim.pad_mode.upper() in ("PAD", "CALCULATED"), name
            assert tuple(prim.pad_list[0::2]) == tuple(prim.pad_list[1::2]), name
    names = parameter_specs(cfg)
    assert convs == sum(n.endswith(".weight") and len(s) == 5 for n, s in names.items())
    assert bns == sum(n.endswith("running_var") for n in names)
    assert pools >= 1
    # the stem's conv pads as the spec says
    assert net.stem.conv.padding == tuple(p for p in cfg.conv1_padding for _ in (0, 1))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_intermediates_have_the_spec_names_and_shapes(nets, preset):
    cfg, net = nets(preset)
    ms_weights.load_canonical(net, random_canonical(cfg), cfg)
    shape = clip_shape(preset)
    x = ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    out = net.forward_intermediates(x)
    assert list(out) == layer_names(cfg)
    assert {k: tuple(v.shape) for k, v in out.items()} == layer_shapes(cfg, shape)
    assert all(np.isfinite(v.asnumpy()).all() for v in out.values())


def test_entry_points_agree(nets):
    cfg, net = nets(DEFAULT)
    ms_weights.load_canonical(net, random_canonical(cfg, seed=1), cfg)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((1, 3, 8, 64, 64)).astype(np.float32))
    out = {k: v.asnumpy() for k, v in net.forward_intermediates(x).items()}
    features = net.forward_features(x)
    np.testing.assert_array_equal(features.asnumpy(), out["res5.2"])
    np.testing.assert_array_equal(net.forward_head(features, pre_logits=True).asnumpy(), out["pool"])
    np.testing.assert_array_equal(net.forward_head(features).asnumpy(), out["logits"])
    np.testing.assert_array_equal(net(x).asnumpy(), out["logits"])
    np.testing.assert_array_equal(net(x).asnumpy(), out["logits"])  # eval mode: dropout is off
    previous = x
    for name in layer_names(cfg):  # each stage on the previous one's output gives the same chain
        previous = net.forward_stage(name, previous)
        np.testing.assert_array_equal(previous.asnumpy(), out[name], err_msg=name)
    assert list(net.forward_intermediates(x, names=["pool1", "logits"])) == ["pool1", "logits"]
    assert [f["module"] for f in net.feature_info] == ["res2", "res3", "res4", "res5"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_entry_point_runs_the_spec_stage_plan_without_renaming(nets, preset):
    from frameworks.spec.arch import feature_info, stage_plan

    cfg, net = nets(preset)
    plan = stage_plan(cfg)
    assert [name for name, _ in net.stages()] == [s.name for s in plan] == layer_names(cfg)
    # the chain holds the network's own cells (at their canonical paths), not copies
    paths = dict(net.cells_and_names())
    for (name, cell), stage in zip(net.stages(), plan):
        if stage.kind == "logits":  # the head's classifier, on its own
            assert cell.head is paths["head"]
        else:
            assert cell is paths["head.pool" if stage.kind == "pool" else name], name
    assert net.feature_cells == tuple(c for (_, c), s in zip(net.stages(), plan) if not s.is_head)
    assert net.feature_info == feature_info(cfg)
    # neither the chain nor the wrappers that graph mode compiles add a cell path or rename
    # a parameter, and MindSpore's own strict loader finds every one
    names = [p.name for p in net.get_parameters()]
    assert all(path.split(".")[0] in ("stem", "pool1", "res2", "res3", "res4", "res5", "pool2", "head")
               for path, _ in net.cells_and_names() if path)
    for wrapper in (ms_model.IntermediatesNet(net), ms_model.IsolatedStagesNet(net)):
        assert [p.name for p in wrapper.get_parameters()] == names
    params = {p.name: ms.Parameter(ms.Tensor(p.asnumpy()), name=p.name) for p in net.get_parameters()}
    assert ms.load_param_into_net(net, params, strict_load=True) == ([], [])


def test_weights_round_trip_bit_exact_and_match_mindspores_own_checkpoint(nets, tmp_path):
    from harness.checkpoints import load_weights

    cfg, net = nets(DEFAULT)
    arrays = random_canonical(cfg, seed=2)
    ms_weights.load_canonical(net, arrays, cfg)
    back = ms_weights.to_canonical(net, cfg)
    assert list(back) == list(parameter_specs(cfg))
    assert all(back[k].dtype == arrays[k].dtype and back[k].tobytes() == arrays[k].tobytes() for k in arrays)
    ms.save_checkpoint(net, str(tmp_path / "net.ckpt"))  # MindSpore's own writer and names
    loaded = load_weights(str(tmp_path / "net.ckpt"), cfg)
    assert loaded.scheme == "mindspore" and loaded.container == "ckpt"
    assert all(loaded.arrays[k].tobytes() == arrays[k].tobytes() for k in arrays)


def test_loading_is_strict(nets):
    cfg, net = nets(DEFAULT)
    good = random_canonical(cfg)
    missing = {k: v for k, v in good.items() if k != "res3.1.non_local.phi.bias"}
    with pytest.raises(WeightMismatchError, match="1 missing: res3.1.non_local.phi.bias"):
        ms_weights.load_canonical(net, missing, cfg)
    with pytest.raises(WeightMismatchError, match="unexpected: extra"):
        ms_weights.load_canonical(net, {**good, "extra": np.zeros(1, np.float32)}, cfg)
    misshaped = {**good, "head.fc.bias": np.zeros(10, np.float32)}
    with pytest.raises(WeightMismatchError, match="mis-shaped: head.fc.bias"):
        ms_weights.load_canonical(net, misshaped, cfg)
    half = {**good, "stem.bn.running_var": good["stem.bn.running_var"].astype(np.float16)}
    with pytest.raises(TypeError, match="dtype mismatch: stem.bn.bn2d.moving_variance float16"):
        ms_weights.load_canonical(net, half, cfg)
    other_cfg, other = nets("i3d_r50")  # a Cell without the non-local blocks of cfg
    with pytest.raises(WeightMismatchError, match="MindSpore Cell vs spec"):
        ms_weights.load_canonical(other, good, cfg)


def test_what_load_param_into_net_leaves_unloaded_is_an_error(nets, monkeypatch):
    cfg, net = nets(DEFAULT)
    real = ms.load_param_into_net

    def leaves_one_out(cell, params, strict_load=False):
        params = dict(params)
        params.pop("res4.1.non_local.out.weight")
        return real(cell, params, strict_load=strict_load)

    monkeypatch.setattr(ms, "load_param_into_net", leaves_one_out)
    with pytest.raises(WeightMismatchError, match="res4.1.non_local.out.weight"):
        ms_weights.load_canonical(net, random_canonical(cfg), cfg)


def test_cpu_isa_detection():
    assert detect_cpu_isa({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}) == "AVX512_CORE"
    assert detect_cpu_isa({"avx", "avx2", "fma"}) == "AVX2"
    assert detect_cpu_isa(set()) == "unknown"


def test_runner_caps_onednn_before_importing_mindspore_and_says_so():
    code = ("import os, json; from harness.runners.mindspore_runner import MindSporeRunner; r = MindSporeRunner(threads=1); "
            "print(json.dumps({'env': os.environ.get('ONEDNN_MAX_CPU_ISA'), **r.hardware(), **r.versions()}))")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    import json

    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["cpu_isa"] == detect_cpu_isa() and info["threads"] == "1" and info["ms_mode"] == "graph"
    if info["cpu_isa"] == "AVX512_CORE":
        assert info["env"] == "AVX2" and info["onednn_max_cpu_isa"] == "AVX2"
        assert "set by the runner" in info["onednn_isa_source"]
    user = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "ONEDNN_MAX_CPU_ISA": "AVX"},
                          text=True, capture_output=True)
    assert json.loads(user.stdout.strip().splitlines()[-1])["onednn_isa_source"] == "set by the user"


@pytest.mark.gpu
def test_same_code_on_gpu_matches_cpu():
    from harness.runners import RunnerError
    from harness.runners.mindspore_runner import MindSporeRunner

    try:
        gpu = MindSporeRunner(device="gpu", mode="graph")
    except RunnerError as exc:
        pytest.skip(str(exc))
    cfg = get_preset(DEFAULT)
    arrays = random_canonical(cfg, seed=4)
    clip = np.random.default_rng(4).standard_normal((1, 3, 8, 64, 64)).astype(np.float32)
    gpu.build(cfg)
    gpu.load(arrays)
    on_gpu = gpu.forward_intermediates(clip)
    cpu = MindSporeRunner(device="cpu", mode="graph")
    cpu.build(cfg)
    cpu.load(arrays)
    from harness.comparator import compare_outputs

    report = compare_outputs(cpu.forward_intermediates(clip), on_gpu, layer_names(cfg))
    assert report.passed, report.first_failure
