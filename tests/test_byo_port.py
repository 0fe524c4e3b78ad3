"""Bring your own port: your weights against the originals (harness.diff, parity --weights),
your model against ours (a saved-outputs file, a plug-in), and a failure read without
guessing (isolated rerun, drill-down, noise floor, statistics-only outputs).

Test size: 1x3x8x64x64 through the real network, seeded weights from parity itself."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from harness.checkpoints import from_canonical
from harness.checkpoints.io import write_npz
from harness.checkpoints.mindspore_ckpt import write_ckpt
from frameworks.spec.arch import get_preset

SMALL = ["--input-shape", "1,3,8,64,64", "--seed", "3"]
PLANTED = "res3.2.bn2.running_var"


def _lines(text):
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Seeded weights kept by parity (with the sidecar naming their arch), and a copy with
    one BN variance x1.5."""
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("byo")
    proc = run_cli("harness.parity", "--frameworks", "torch", "--reference", "mmaction2", *SMALL, "-q",
                   "--save-weights", root / "seeded.npz")
    assert proc.returncode == 0, proc.stderr
    with np.load(root / "seeded.npz") as z:
        arrays = {k: z[k] for k in z.files}
    planted = dict(arrays)
    planted[PLANTED] = planted[PLANTED] * np.float32(1.5)
    write_npz(str(root / "planted.npz"), planted)
    return root, arrays, planted


# ------------------------------------------------------------------ harness.diff
def test_diff_names_the_planted_parameter_across_formats_and_schemes(cli, weights, tmp_path):
    root, arrays, planted = weights
    cfg = get_preset("i3d_nl_dot_product_r50")
    mine = from_canonical(planted, cfg, "mindspore")
    del mine["res5.2.conv3.weight"]                            # a tensor the port forgot
    mine["backbone.extra.weight"] = np.zeros(3, np.float32)     # one it invented
    mine["moments.stem.conv.weight"] = np.zeros(1, np.float32)  # optimiser state: ignored, counted
    write_ckpt(str(tmp_path / "mine.ckpt"), mine)
    proc = cli("harness.diff", root / "seeded.npz", tmp_path / "mine.ckpt", "--json", tmp_path / "d.json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["kind"] == "weights_diff" and doc["first_difference"] == PLANTED
    rows = {r["name"]: r for r in doc["parameters"]}
    assert rows[PLANTED]["verdict"] == "DIFFERS" and abs(rows[PLANTED]["max_rel"] - 0.5) < 1e-6
    assert rows[PLANTED]["names"] == {"B": "res3.2.bn2.bn2d.moving_variance"}
    assert rows["res5.2.conv3.weight"]["verdict"] == "missing in B"
    assert doc["b"]["extra"] == ["backbone.extra.weight"] and doc["b"]["ignored"] == {"moments.*": 1}
    others = [r for n, r in rows.items() if n not in (PLANTED, "res5.2.conv3.weight")]
    assert len(others) == 320 and all(r["verdict"] == "identical" for r in others)
    text = proc.stdout
    assert f"{PLANTED}" in text and "DIFFERS" in text and "only in B (no canonical name): backbone.extra.weight" in text


def test_diff_of_the_same_weights_in_two_formats_is_identical(cli, weights, tmp_path):
    root, arrays, _ = weights
    converted = cli("harness.convert", root / "seeded.npz", tmp_path / "w.ckpt")
    assert converted.returncode == 0, converted.stderr
    proc = cli("harness.diff", root / "seeded.npz", tmp_path / "w.ckpt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _lines(proc.stdout)[-1] == "SAME: 322 parameters: 322 identical"


def test_diff_tolerance_is_scaled_like_parity(cli, weights, tmp_path):
    """A float16 round trip changes every tensor by ~5e-4 of its max: within --atol 1e-3, not 1e-6."""
    root, arrays, _ = weights
    write_npz(str(tmp_path / "f16.npz"), {k: v.astype(np.float16).astype(np.float32) for k, v in arrays.items()})
    strict = cli("harness.diff", root / "seeded.npz", tmp_path / "f16.npz")
    loose = cli("harness.diff", root / "seeded.npz", tmp_path / "f16.npz", "--atol", "1e-3")
    assert strict.returncode == 1 and loose.returncode == 0, loose.stdout[-2000:]


# ------------------------------------------------------------------ parity with your weights
def test_parity_names_the_planted_layer_and_its_sub_operation(cli, weights, tmp_path):
    root, _, _ = weights
    out = tmp_path / "p.json"
    proc = cli("harness.parity", "--frameworks", "torch,ms", *SMALL, "--weights", f"torch={root / 'seeded.npz'}",
               "--weights", f"ms={root / 'planted.npz'}", "--only-failures", "--json", out)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["first_failure"] == "res3.2"
    why = doc["explanations"]["ms"]
    assert why["layer"] == "res3.2" and why["isolated"]["first_failure"] == "res3.2"
    failing = [s["name"] for s in why["subops"] if not s["passed"]]
    assert failing[0] == "res3.2:bn2"                         # the BN whose variance was planted
    assert [s["passed"] for s in why["subops"][:4]] == [True] * 4   # conv1, bn1, relu1, conv2 are fine
    assert "first failing sub-operation: res3.2:bn2" in proc.stdout
    assert "arch: i3d_nl_dot_product_r50 (from seeded.npz.nlparity.json)" in proc.stdout


def test_a_failure_that_isolated_mode_clears_is_called_float32_noise(cli, tmp_path):
    """At an atol below the float32 noise of deep layers (3e-6), propagated parity fails while
    every layer passes on the reference's input: the verdict says so instead of blaming a layer."""
    out = tmp_path / "p.json"
    proc = cli("harness.parity", "--frameworks", "torch,ms", *SMALL, "--atol", "3e-6", "--json", out)
    assert proc.returncode == 1, proc.stderr
    why = json.loads(out.read_text())["explanations"]["ms"]
    assert why["isolated"]["passed"] and "accumulated float32 noise" in why["verdict"] and "subops" not in why


def test_noise_floor_calibrates_each_layer_from_torch_float64(cli, tmp_path):
    out = tmp_path / "p.json"
    proc = cli("harness.parity", "--frameworks", "torch,ms", *SMALL, "--noise-floor", "--json", out)
    assert proc.returncode == 0, proc.stdout[-3000:]
    layers = json.loads(out.read_text())["layers"]
    for layer in layers:
        assert 0 < layer["floor"] < 1e-4, layer["name"]          # float32 rounding, not a fault
        assert layer["atol"] == pytest.approx(max(5 * layer["floor"], 1e-7))
    assert "f32 floor" in proc.stdout


# ------------------------------------------------------------------ your model against ours
def test_a_renamed_port_passes_and_a_perturbed_one_fails_at_its_layer(cli, tmp_path):
    good = cli("harness.parity", "--frameworks", "torch", "--candidate", "myport=tests.byo_port:build", *SMALL)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr
    assert "PASSED: myport matches torch at every one of 25 layers" in good.stdout
    assert "myport gives no output for: pool" in good.stdout
    bad = cli("harness.parity", "--frameworks", "torch", "--candidate", "myport=tests.byo_port:build_perturbed",
              *SMALL, "--json", tmp_path / "p.json")
    assert bad.returncode == 1
    assert json.loads((tmp_path / "p.json").read_text())["first_failure"] == "res4.2"


def test_outputs_another_program_saved_are_a_candidate_under_any_name(cli, tmp_path):
    saved = tmp_path / "saved"
    proc = cli("harness.parity", "--frameworks", "torch", "--reference", "mmaction2", *SMALL, "-q",
               "--save-outputs", saved)
    assert proc.returncode == 0, proc.stderr
    with np.load(saved / "torch.npz") as z:   # as a user's program would write it: plain np.savez
        mine = {k: z[k] for k in z.files if not k.startswith("__")}
    np.savez(tmp_path / "port.npz", **mine)
    ok = cli("harness.parity", "--frameworks", "torch", "--candidate", f"port={tmp_path / 'port.npz'}", *SMALL, "-q")
    assert ok.returncode == 0 and "PASSED: port matches torch" in ok.stdout, ok.stdout + ok.stderr
    mine["input"] = mine["input"] + 1.0
    np.savez(tmp_path / "other.npz", **mine)
    other = cli("harness.parity", "--frameworks", "torch", "--candidate", f"port={tmp_path / 'other.npz'}", *SMALL)
    assert other.returncode == 2 and "another clip" in other.stderr and "Traceback" not in other.stderr


def test_statistics_only_outputs_are_small_and_compare_later(cli, tmp_path):
    full, stats = tmp_path / "full", tmp_path / "stats"
    for folder, extra in ((full, []), (stats, ["--stats-only"])):
        proc = cli("harness.parity", "--frameworks", "torch,ms", "--input-shape", "1,3,8,112,112", "--seed", "3",
                   "-q", "--save-outputs", folder, *extra)
        assert proc.returncode == 0, proc.stderr
    clip_bytes = 3 * 8 * 112 * 112 * 4   # the input clip is kept in both
    full_bytes = os.path.getsize(full / "ms.npz") - clip_bytes
    stats_bytes = os.path.getsize(stats / "ms.npz") - clip_bytes
    assert full_bytes / stats_bytes > 100, (full_bytes, stats_bytes)
    again = cli("harness.parity", "--frameworks", "torch,ms", "--load-outputs", stats)
    assert again.returncode == 0 and "statistics only" in again.stdout, again.stdout[-2000:]
    shutil.copy(stats / "ms.npz", tmp_path / "keep.npz")
    with np.load(stats / "ms.npz") as z:
        doctored = {k: z[k] for k in z.files}
    doctored["res4.1"] = doctored["res4.1"] * 1.01   # every statistic 1% off
    np.savez(stats / "ms.npz", **doctored)
    failed = cli("harness.parity", "--frameworks", "torch,ms", "--load-outputs", stats, "--json", tmp_path / "j.json")
    assert failed.returncode == 1 and json.loads((tmp_path / "j.json").read_text())["first_failure"] == "res4.1"
