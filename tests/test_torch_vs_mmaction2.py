"""Our PyTorch I3D-NL against mmaction2's own model (the oracle), for every preset that
mmaction2 can express: random weights with calibrated BN statistics, saved as mmaction2
saves them, imported through our importer, compared stage by stage."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from frameworks.spec.arch import get_preset, layer_names, parameter_count
from frameworks.torch.model import I3DNL
from frameworks.torch.weights import calibrate_batchnorm, load_canonical
from harness.runners.mmaction2_runner import CONFIGS, MMAction2Runner
from harness.checkpoints import load_weights
from harness.comparator import compare_outputs

MMACTION2_PRESETS = list(CONFIGS)


def _mmaction2_checkpoint(preset: str, clip: torch.Tensor, path, seed: int = 0):
    """An mmaction2 model with random weights and calibrated BN statistics, written the way
    mmaction2's runner writes checkpoints (``state_dict`` + ``meta``)."""
    runner = MMAction2Runner()
    runner.build(get_preset(preset))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in runner.model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn_like(p) * (2.0 / p[0].numel()) ** 0.5)
            elif "bn" not in name:
                p.copy_(0.1 * torch.randn_like(p))
    model = runner.model
    calibrate_batchnorm(model, clip, seed, forward=lambda x: model.cls_head(model.backbone(x)))
    torch.save({"meta": {"mmaction2_version": "1.1.0", "epoch": 100},
                "state_dict": runner.model.state_dict()}, path)
    return runner


@pytest.fixture(scope="module")
def small_clip():
    return torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 8, 64, 64)).astype(np.float32))


@pytest.mark.parametrize("preset", MMACTION2_PRESETS)
def test_every_stage_matches_mmaction2(preset, small_clip, tmp_path):
    path = tmp_path / "mm.pth"
    reference = _mmaction2_checkpoint(preset, small_clip, path)
    cfg = get_preset(preset)
    loaded = load_weights(str(path), cfg)
    assert loaded.scheme == "mmaction2" and loaded.container == "torch"

    model = I3DNL(cfg).eval()
    load_canonical(model, loaded.arrays, cfg)
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in reference.model.parameters()) == parameter_count(cfg)

    ref = reference.forward_intermediates(small_clip.numpy())
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in model.forward_intermediates(small_clip).items()}
    assert list(ours) == layer_names(cfg) == list(ref)
    report = compare_outputs(ref, ours, layer_names(cfg), atol=1e-5, rtol=1e-5)
    assert report.passed, report.first_failure
    scale = np.abs(ref["logits"]).max()
    assert np.abs(ours["logits"] - ref["logits"]).max() <= 1e-5 * scale
    # The randomisation is not degenerate: activations are finite and O(1-10), and every
    # non-local block changes its input.
    for name in layer_names(cfg):
        assert np.isfinite(ours[name]).all() and 0.5 < np.abs(ours[name]).max() < 100, name
    for name in (n for n in layer_names(cfg) if n.endswith(".non_local")):
        block = name.rsplit(".", 1)[0]
        change = np.abs(ours[name] - ours[block]).max() / np.abs(ours[block]).max()
        assert change > 0.05, (name, change)


def test_default_preset_is_35_4_million_parameters():
    cfg = get_preset("i3d_nl_dot_product_r50")
    assert round(parameter_count(cfg) / 1e6, 1) == 35.4
    runner = MMAction2Runner()
    runner.build(cfg)
    assert sum(p.numel() for p in runner.model.parameters()) == parameter_count(cfg)


def test_planted_fault_fails_and_is_localised(small_clip, tmp_path):
    """One BN variance scaled in our copy: parity fails, naming that block first."""
    path = tmp_path / "mm.pth"
    reference = _mmaction2_checkpoint("i3d_nl_dot_product_r50", small_clip, path)
    cfg = get_preset("i3d_nl_dot_product_r50")
    arrays = dict(load_weights(str(path), cfg).arrays)
    arrays["res3.2.bn2.running_var"] = arrays["res3.2.bn2.running_var"] * 1.5
    model = I3DNL(cfg).eval()
    load_canonical(model, arrays, cfg)
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in model.forward_intermediates(small_clip).items()}
    report = compare_outputs(reference.forward_intermediates(small_clip.numpy()), ours, layer_names(cfg))
    assert not report.passed
    assert report.first_failure == "res3.2"
    assert all(layer.passed for layer in report.layers[:layer_names(cfg).index("res3.2")])


@pytest.mark.slow
@pytest.mark.parametrize("preset", MMACTION2_PRESETS)
def test_real_size_matches_mmaction2(preset, tmp_path):
    clip = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 32, 224, 224)).astype(np.float32))
    path = tmp_path / "mm.pth"
    reference = _mmaction2_checkpoint(preset, clip, path, seed=1)
    cfg = get_preset(preset)
    model = I3DNL(cfg).eval()
    load_canonical(model, load_weights(str(path), cfg).arrays, cfg)
    ref = reference.forward_intermediates(clip.numpy())
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in model.forward_intermediates(clip).items()}
    assert ours["res5.2"].shape == (1, 2048, 4, 7, 7)
    report = compare_outputs(ref, ours, layer_names(cfg), atol=1e-5, rtol=1e-5)
    assert report.passed, report.first_failure
    assert np.abs(ours["logits"] - ref["logits"]).max() <= 1e-5 * np.abs(ref["logits"]).max()
