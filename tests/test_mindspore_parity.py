"""MindSpore vs PyTorch, layer by layer: every preset at the default tolerance, graph mode ==
PyNative, planted faults found and named, and `python -m harness.parity --frameworks torch,ms`.

The weights are seeded random ones whose BN statistics are calibrated on the compared clip
*and* keep the random network well conditioned (see ``frameworks.torch.weights.randomize``),
so that the comparison measures the frameworks' float32 rounding, not its amplification.
"""
from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from typing import Dict

import numpy as np
import pytest

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, I3DNLConfig, NonLocalConfig, get_preset, layer_names
from harness.runners.mindspore_runner import configure_onednn_isa
from harness.comparator import compare_outputs, format_report

configure_onednn_isa()  # before MindSpore is imported (see harness.runners.mindspore_runner)
ms = pytest.importorskip("mindspore")
torch = pytest.importorskip("torch")

from frameworks.torch.model import I3DNL  # noqa: E402
from frameworks.torch.weights import randomize, to_canonical  # noqa: E402
from harness.runners.mindspore_runner import MindSporeRunner  # noqa: E402

pytestmark = pytest.mark.mindspore
SMALL = (1, 3, 8, 64, 64)
FULL = (1, 3, 32, 224, 224)


# ------------------------------------------------------------------------ weights
@dataclass
class Case:
    cfg: I3DNLConfig
    clip: np.ndarray
    weights: Dict[str, np.ndarray]
    torch_out: Dict[str, np.ndarray]
    ms_out: Dict[str, Dict[str, np.ndarray]]   # by MindSpore mode


def clip_shape(cfg: I3DNLConfig, base=SMALL):
    # Caffe2's test head averages a 7x7 window of res5: it needs a 224x224 input.
    return base[:3] + (224, 224) if cfg.head == "conv_softmax_avg" else base


def torch_reference(cfg: I3DNLConfig, shape, seed: int = 0):
    torch.manual_seed(seed)
    clip = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    model = I3DNL(cfg).eval()
    randomize(model, torch.from_numpy(clip), seed)
    with torch.no_grad():
        out = {k: v.numpy() for k, v in model.forward_intermediates(torch.from_numpy(clip)).items()}
    return clip, to_canonical(model), out


def run_case(cfg: I3DNLConfig, shape, modes=("graph", "pynative"), keep_runners: bool = False):
    clip, weights, ref = torch_reference(cfg, shape)
    outs, runners = {}, {}
    for mode in modes:
        runner = MindSporeRunner(mode=mode)
        runner.build(cfg)
        runner.load(weights)
        outs[mode] = runner.forward_intermediates(clip)
        if keep_runners:
            runners[mode] = runner
    case = Case(cfg, clip, weights, ref, outs)
    gc.collect()
    return (case, runners) if keep_runners else case


def assert_passes(reference, candidate, cfg, **kwargs):
    report = compare_outputs(reference, candidate, layer_names(cfg), **kwargs)
    assert report.passed, "\n" + format_report(report)
    return report


@pytest.fixture(scope="module")
def default():
    """The default preset, with its graph and PyNative runners kept for the fault tests."""
    case, runners = run_case(get_preset(DEFAULT_PRESET), SMALL, keep_runners=True)
    case.runners = runners
    return case


@pytest.fixture(scope="module", params=list(PRESETS))
def preset_case(request, default):
    if request.param == DEFAULT_PRESET:
        return default
    cfg = get_preset(request.param)
    return run_case(cfg, clip_shape(cfg))


# ------------------------------------------------------------------------ every preset
def test_every_layer_matches_torch_at_the_default_tolerance(preset_case):
    for mode, out in preset_case.ms_out.items():
        report = assert_passes(preset_case.torch_out, out, preset_case.cfg,
                               reference_name="torch", candidate_name=f"ms-{mode}")
        assert report.logits["top1_agreement"] == 1.0


def test_graph_mode_and_pynative_agree(preset_case):
    graph, pynative = preset_case.ms_out["graph"], preset_case.ms_out["pynative"]
    assert_passes(graph, pynative, preset_case.cfg, reference_name="ms-graph", candidate_name="ms-pynative")


VARIANTS = {
    # fields no preset exercises, each honoured by the torch model
    "pool1_ceil_unpadded": get_preset(DEFAULT_PRESET).replace(
        name="pool1_ceil_unpadded", pool1_padding=(0, 0, 0), pool1_ceil_mode=True, pool1_kernel=(2, 3, 3)),
    "no_pool2_no_subsample_no_dropout": get_preset(DEFAULT_PRESET).replace(
        name="no_pool2_no_subsample_no_dropout", pool2_kernel=None, dropout=0.0,
        nonlocal_cfg=NonLocalConfig(sub_sample=False)),
    "caffe2_block_fc_head": get_preset("i3d_nl_caffe2_r50").replace(name="caffe2_block_fc_head", head="fc"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_fields_beyond_the_presets(variant):
    cfg = VARIANTS[variant]
    case = run_case(cfg, clip_shape(cfg), modes=("graph",))
    assert_passes(case.torch_out, case.ms_out["graph"], cfg)


def test_isolated_mode_passes_on_correct_weights(default):
    runner = default.runners["graph"]
    isolated = runner.forward_isolated(default.clip, default.torch_out)
    assert_passes(default.torch_out, isolated, default.cfg, mode="isolated")


# ------------------------------------------------------------------------ planted faults
def _faulty_outputs(case, mode, faulty):
    runner = case.runners[mode]
    runner.load(faulty)
    try:
        return (runner.forward_intermediates(case.clip), runner.forward_isolated(case.clip, case.torch_out))
    finally:
        runner.load(case.weights)


def _assert_localised(case, propagated, isolated, layer):
    names = layer_names(case.cfg)
    prop = compare_outputs(case.torch_out, propagated, names)
    assert not prop.passed and prop.first_failure == layer, format_report(prop)
    assert all(lc.passed for lc in prop.layers[:names.index(layer)])
    iso = compare_outputs(case.torch_out, isolated, names, mode="isolated")
    assert [lc.name for lc in iso.layers if not lc.passed] == [layer], format_report(iso)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_a_perturbed_nonlocal_weight_is_named_first(default, mode):
    faulty = dict(default.weights)
    name = "res4.1.non_local.g.weight"
    weight = faulty[name].copy()
    weight[3, 5, 0, 0, 0] += 0.05 * np.abs(weight).max()   # one weight of one block
    faulty[name] = weight
    propagated, isolated = _faulty_outputs(default, mode, faulty)
    _assert_localised(default, propagated, isolated, "res4.1.non_local")


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_swapped_bn_mean_and_variance_are_named_first(default, mode):
    faulty = dict(default.weights)
    faulty["res3.2.bn2.running_mean"] = default.weights["res3.2.bn2.running_var"]
    faulty["res3.2.bn2.running_var"] = default.weights["res3.2.bn2.running_mean"]
    propagated, isolated = _faulty_outputs(default, mode, faulty)
    _assert_localised(default, propagated, isolated, "res3.2")


# ------------------------------------------------------------------------ the CLI
def _one_line_error(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_parity_cli_torch_vs_ms_from_a_ckpt(cli, default, tmp_path):
    from harness.checkpoints.io import write_npz
    from harness.checkpoints.mindspore_ckpt import from_canonical, write_ckpt

    write_ckpt(str(tmp_path / "w.ckpt"), from_canonical(default.weights))
    np.save(tmp_path / "clip.npy", default.clip)
    proc = cli("harness.parity", "--frameworks", "torch,ms", "--checkpoint", tmp_path / "w.ckpt",
               "--input", tmp_path / "clip.npy", "--json", tmp_path / "p.json", "--save-outputs", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED: ms matches torch" in proc.stdout
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["passed"] and [lc["name"] for lc in doc["layers"]] == layer_names(default.cfg)
    assert doc["logits"]["top1_agreement"] == 1.0 and doc["runs"]["ms"]["versions"]["ms_mode"] == "graph"
    assert "onednn_max_cpu_isa" in doc["runs"]["ms"]["hardware"]
    with np.load(tmp_path / "out" / "ms.npz") as z:
        np.testing.assert_array_equal(z["logits"], default.ms_out["graph"]["logits"])
    # a planted fault, compared from saved outputs: exit 1, the block named
    faulty = dict(default.weights)
    faulty["res4.3.non_local.theta.weight"] = faulty["res4.3.non_local.theta.weight"] * 1.01
    runner = default.runners["graph"]
    runner.load(faulty)
    try:
        bad = runner.forward_intermediates(default.clip)
    finally:
        runner.load(default.weights)
    (tmp_path / "bad").mkdir()
    write_npz(str(tmp_path / "bad" / "ms.npz"), {**bad, "input": default.clip})
    (tmp_path / "bad" / "torch.npz").write_bytes((tmp_path / "out" / "torch.npz").read_bytes())
    again = cli("harness.parity", "--frameworks", "torch,ms", "--load-outputs", tmp_path / "bad")
    assert again.returncode == 1 and "first failing layer: res4.3.non_local" in again.stdout, again.stdout


def test_parity_cli_isolated_in_pynative(cli, default, tmp_path):
    np.savez(tmp_path / "w.npz", **default.weights)
    np.save(tmp_path / "clip.npy", default.clip)
    proc = cli("harness.parity", "--frameworks", "ms,torch", "--reference", "torch", "--mode", "isolated",
               "--ms-mode", "pynative", "--checkpoint", tmp_path / "w.npz", "--input", tmp_path / "clip.npy")
    assert proc.returncode == 0 and "ms vs torch (isolated)" in proc.stdout, proc.stdout + proc.stderr


def test_parity_cli_bad_input_is_one_line_exit_2(cli, default, tmp_path):
    from harness.checkpoints.mindspore_ckpt import from_canonical, write_ckpt

    other = {k: v for k, v in default.weights.items() if ".non_local." not in k}  # an i3d_r50's weights
    write_ckpt(str(tmp_path / "i3d.ckpt"), from_canonical(other))
    line = _one_line_error(cli("harness.parity", "--frameworks", "torch,ms", "--checkpoint", tmp_path / "i3d.ckpt",
                               "--input-shape", "1,3,8,64,64"))
    assert "does not fit arch 'i3d_nl_dot_product_r50'" in line and "missing" in line
    np.savez(tmp_path / "half.npz", **{k: v.astype(np.float16) for k, v in default.weights.items()})
    line = _one_line_error(cli("harness.parity", "--frameworks", "torch,ms", "--checkpoint", tmp_path / "half.npz",
                               "--input-shape", "1,3,8,64,64"))
    assert "dtype mismatch" in line and "float16" in line
    assert "invalid choice: 'r18'" in _one_line_error(cli("harness.parity", "--arch", "r18"))


def test_parity_cli_default_random_weights_small_clip(cli):
    proc = cli("harness.parity", "--frameworks", "torch,ms", "--input-shape", "1,3,8,64,64")
    assert proc.returncode == 0, proc.stdout


# ------------------------------------------------------------------------ real size (slow)
@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_at_full_size(preset):
    cfg = get_preset(preset)
    case = run_case(cfg, FULL)
    for mode, out in case.ms_out.items():
        assert_passes(case.torch_out, out, cfg, reference_name="torch", candidate_name=f"ms-{mode}")
    assert_passes(case.ms_out["graph"], case.ms_out["pynative"], cfg)


@pytest.mark.slow
def test_resnet101_small_clip():
    cfg = get_preset(DEFAULT_PRESET, depth=101)
    case = run_case(cfg, SMALL, modes=("graph",))
    assert_passes(case.torch_out, case.ms_out["graph"], cfg)
