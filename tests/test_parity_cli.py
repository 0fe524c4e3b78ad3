"""`python -m harness.parity` as a user runs it: exit codes, JSON, saved outputs, bad input."""
from __future__ import annotations

import json

import numpy as np
import torch

from frameworks.spec.arch import get_preset, layer_names, parameter_specs

SMALL = "1,3,8,64,64"


def _one_line_error(proc):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_torch_vs_mmaction2_random_weights_pass_with_json_and_saved_outputs(cli, tmp_path):
    out_json, out_dir = tmp_path / "parity.json", tmp_path / "outputs"
    proc = cli("harness.parity", "--frameworks", "torch", "--reference", "mmaction2", "--input-shape", SMALL,
               "--seed", "3", "--json", out_json, "--save-outputs", out_dir)
    assert proc.returncode == 0, proc.stderr
    assert "PASSED" in proc.stdout and "res4.5.non_local" in proc.stdout
    doc = json.loads(out_json.read_text())
    names = layer_names(get_preset("i3d_nl_dot_product_r50"))
    assert doc["passed"] is True and [layer["name"] for layer in doc["layers"]] == names
    assert {"atol", "rtol"} <= set(doc["tolerance"]) and doc["logits"]["top1_agreement"] == 1.0
    for fw in ("torch", "mmaction2"):
        with np.load(out_dir / f"{fw}.npz") as z:   # harness.outputs' schema: layers, input, and its metadata
            assert set(names) | {"input"} == {k for k in z.files if not k.startswith("__")}
            assert str(z["__schema__"]) == "nlparity.outputs/1" and str(z["__layout__"]) == "NCTHW"
            assert str(z["__framework__"]) == fw and str(z["__mode__"]) == "full"
            assert z["input"].shape == (1, 3, 8, 64, 64)
    # Saved outputs compare again without running anything.
    again = cli("harness.parity", "--frameworks", "torch", "--reference", "mmaction2",
                "--load-outputs", out_dir)
    assert again.returncode == 0 and "PASSED" in again.stdout


def test_given_input_clip_and_checkpoint_are_used(cli, tmp_path):
    cfg = get_preset("i3d_r50")
    from frameworks.torch.model import I3DNL
    from frameworks.torch.weights import randomize

    clip = np.random.default_rng(5).standard_normal((1, 3, 8, 48, 48)).astype(np.float32)
    model = I3DNL(cfg)
    randomize(model, torch.from_numpy(clip), seed=5)
    torch.save({k: v for k, v in model.state_dict().items()}, tmp_path / "ours.pth")
    np.save(tmp_path / "clip.npy", clip)
    proc = cli("harness.parity", "--arch", "i3d_r50", "--frameworks", "torch", "--reference", "mmaction2",
               "--input", tmp_path / "clip.npy", "--checkpoint", tmp_path / "ours.pth",
               "--save-outputs", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "o" / "torch.npz") as z:
        np.testing.assert_array_equal(z["input"], clip)
        with torch.no_grad():
            expected = model.eval()(torch.from_numpy(clip)).numpy()
        np.testing.assert_allclose(z["logits"], expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_missing_checkpoint_is_one_line_exit_2(cli, tmp_path):
    line = _one_line_error(cli("harness.parity", "--frameworks", "torch", "--reference", "mmaction2",
                               "--input-shape", SMALL, "--checkpoint", tmp_path / "nope.pth"))
    assert "no such checkpoint file" in line


def test_truncated_checkpoint_is_one_line_exit_2(cli, tmp_path):
    full = tmp_path / "full.pth"
    torch.save({k: torch.zeros(v) for k, v in list(parameter_specs(get_preset("i3d_r50")).items())[:20]}, full)
    data = full.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    line = _one_line_error(cli("harness.parity", "--arch", "i3d_r50", "--frameworks", "torch",
                               "--reference", "mmaction2", "--input-shape", SMALL,
                               "--checkpoint", tmp_path / "cut.pth"))
    assert "cut.pth" in line and ("damaged" in line or "unreadable" in line)


def test_resnet101_checkpoint_into_r50_names_the_extra_keys(cli, tmp_path):
    from harness.checkpoints.mmaction2 import from_canonical

    r101 = get_preset("i3d_nl_dot_product_r50", depth=101)
    state = {k: torch.zeros(v) for k, v in from_canonical(parameter_specs(r101), r101).items()}
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "r101.pth")
    line = _one_line_error(cli("harness.parity", "--frameworks", "torch", "--reference", "mmaction2",
                               "--input-shape", SMALL, "--checkpoint", tmp_path / "r101.pth"))
    assert "unexpected" in line and "backbone.layer3.6." in line


def test_unknown_arch_and_framework_exit_2(cli):
    proc = cli("harness.parity", "--arch", "resnet18")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
    line = _one_line_error(cli("harness.parity", "--frameworks", "tf,torch", "--input-shape", SMALL))
    assert "unknown framework 'tf'" in line


def test_preset_without_mmaction2_counterpart_is_refused(cli):
    line = _one_line_error(cli("harness.parity", "--arch", "i3d_nl_caffe2_r50", "--frameworks", "torch",
                               "--reference", "mmaction2", "--input-shape", SMALL))
    assert "no mmaction2 counterpart" in line
