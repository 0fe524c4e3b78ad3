"""Training-step parity (`python -m harness.parity --train-steps K`): MindSpore's SGD steps
against PyTorch's on the same weights and batches, the float64 floor beside them, and
each classic porting mistake, planted, found and named at the first parameter it touches.

Why the tolerances are what they are (harness.train_parity.TOLERANCES, measured at the
default batch 2x3x8x64x64, seeds 0-2, torch float32 vs float64 and MindSpore vs torch):
loss@1 <= 1.7e-7, BN statistics after one step <= 4.3e-6, the weight decay and lr each
optimiser applied exact to 5.8e-5 and 8.7e-3 of their value (float32's last bits of
``g + wd p`` and ``p - lr b``); gradients 1e-5 to 4e-5 of their module's scale unless a ReLU
input within rounding of 0 flips (then up to 6e-2), and after three steps, with 0.1% of a
tensor's elements allowed beyond (the flips), updates and momentum within 0.2, BN statistics
within 2e-3, losses within 1e-4. The tests below assert that the floor itself passes the
tolerances it justifies, and that each planted fault exceeds a tight one by 5x or more.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from frameworks.spec.arch import get_preset
from frameworks.spec.train import lr_schedule
from harness.train_parity import (TIGHT, TOLERANCES, TrainParityRequest, first_failing_parameter, kind_summary,
                                  measured_decay, run)
from tests.conftest import run_cli

pytestmark = pytest.mark.mindspore
CFG = get_preset("i3d_nl_dot_product_r50", num_classes=4)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_parity") / "train_parity.json"
    proc = run_cli("harness.parity", "--train-steps", "3", "--frameworks", "torch,ms", "--num-classes", "4",
                   "--json", out)
    return proc, out


def test_mindspore_trains_like_torch_within_the_float64_justified_tolerances(cli_run):
    proc, out = cli_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "PASSED: ms trains like torch" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["kind"] == "train_parity" and doc["passed"] and doc["first_failing_parameter"] is None
    assert doc["steps"] == 3 and doc["input_shape"] == [2, 3, 8, 64, 64] and "provenance" in doc
    names = [layer["name"] for layer in doc["layers"]]
    assert names[:5] == ["stem.conv.weight@grad1", "stem.conv.weight@decay", "stem.conv.weight@lr",
                         "stem.conv.weight@final", "stem.conv.weight@momentum"]
    assert names[-3:] == ["loss@1", "loss@2", "loss@3"]
    assert {"stem.bn.running_mean@running1", "stem.bn.running_var@final", "head.fc.bias@grad1"} <= set(names)
    # the float64 floor is reported beside it and passes the very tolerances it justifies
    assert doc["floor"]["passed"], [r for r in doc["floor_kinds"] if r["failed"]]
    floor = {row["kind"]: row for row in doc["floor_kinds"]}
    assert floor["loss1"]["worst"] < 1e-5 and floor["running1"]["worst"] < 1e-4
    assert 0 < floor["grad1"]["median"] < 1e-3
    kinds = {row["kind"]: row for row in doc["kinds"]}
    assert kinds["loss1"]["worst"] < TOLERANCES["loss1"] and kinds["running1"]["worst"] < TOLERANCES["running1"]


def test_the_conventions_are_reported_and_the_same(cli_run):
    _, out = cli_run
    doc = json.loads(out.read_text())
    spec = doc["lr_schedule"]
    np.testing.assert_allclose(spec, [1e-4, 2e-4, 3e-4], rtol=1e-6)   # one warm-up epoch of 3 steps
    for role in ("reference", "candidate", "float64"):
        conv = doc["conventions"][role]
        assert conv["lr_used"] == pytest.approx(spec, rel=1e-6)
        np.testing.assert_allclose(conv["lr_measured"], spec, rtol=1e-3)
        measured = conv["weight_decay_measured"]
        assert measured["bn"] == [0.0, 0.0]                       # the seed's rule: no decay on BN
        for kind in ("weight", "bias"):                            # ... and 1e-4 on everything else
            assert measured[kind] == pytest.approx([1e-4, 1e-4], rel=1e-2)
        configured = conv["weight_decay_configured"]   # what the optimiser holds (MindSpore: a float32)
        assert configured["bn"] == [0.0] and configured["weight"] == configured["bias"] == [pytest.approx(1e-4)]
        assert conv["bn_momentum_measured"] == pytest.approx(0.1, rel=1e-3)
    assert doc["conventions"]["reference"]["bn_momentum"]["constructor"] == [0.1]
    assert doc["conventions"]["candidate"]["bn_momentum"]["constructor"] == [0.9]   # MindSpore's 1 - m
    assert doc["runs"]["candidate"]["framework"] == "ms" and doc["runs"]["float64"]["float64"]


# ------------------------------------------------------------------ planted faults
@pytest.fixture(scope="module")
def planted_runs(tmp_path_factory):
    """Each fault planted in a torch candidate (the plant is the harness's, not the
    framework's: the recipe or the lr array the candidate receives); the reference and the
    float64 floor run once for all of them."""
    workdir, cache, results = tmp_path_factory.mktemp("plants"), {}, {}
    for plant in ("wd_on_bn", "bn_momentum", "lr_off_by_one"):
        req = TrainParityRequest(CFG, reference="torch", candidate="torch", plants=(plant,), floor=False)
        results[plant] = run(req, str(workdir), cache)
    return results


@pytest.mark.parametrize("plant, parameter, entry", [
    ("wd_on_bn", "stem.bn.weight", "decay"),                 # decay on BN in one framework only
    ("bn_momentum", "stem.bn.running_mean", "running1"),      # MindSpore given PyTorch's number
    ("lr_off_by_one", "stem.conv.weight", "lr"),             # the schedule one step ahead
])
def test_a_planted_fault_is_found_and_named(planted_runs, plant, parameter, entry):
    report = planted_runs[plant]["report"]
    assert not report.passed
    assert first_failing_parameter(report) == parameter
    assert report.first_failure == f"{parameter}@{entry}"
    # it fails the kink-free entries, far beyond their tolerance, not by a hair
    worst = {row["kind"]: row for row in kind_summary(report)}[entry]
    assert worst["failed"] > 0 and worst["worst"] > 5 * TOLERANCES[entry]


def test_the_float64_floor_is_measured_and_passes(cli_run):
    # the floor (float32 vs float64 of the same steps) is non-zero, so the comparison can
    # see a difference, and it passes the tolerances it justifies
    doc = json.loads(cli_run[1].read_text())
    floor = {row["kind"]: row for row in doc["floor_kinds"]}
    assert floor["grad1"]["worst"] > 0 and doc["floor"]["passed"]
    assert set(TIGHT) <= set(floor) and set(floor) == set(TOLERANCES)


def test_measured_decay_ignores_elements_float32_cannot_resolve():
    rng = np.random.default_rng(0)
    p = rng.standard_normal(1000).astype(np.float32)
    g = (rng.standard_normal(1000) * np.where(np.arange(1000) < 900, 0.1, 1e6)).astype(np.float32)
    buf = (g + np.float32(1e-4) * p).astype(np.float32)
    assert measured_decay(buf, g, p) == pytest.approx(1e-4, rel=1e-2)
    assert measured_decay(g, g, p) == 0.0


def test_parity_lr_schedule_gives_every_step_its_own_rate():
    req = TrainParityRequest(CFG)
    lrs = lr_schedule(req.recipe, req.steps_per_epoch, total_steps=req.steps + 1)
    assert len(set(lrs[:3].tolist())) == 3 and req.recipe.dropout == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("plant, parameter", [("wd_on_bn", "stem.bn.weight"), ("bn_momentum", "stem.bn.running_mean"),
                                              ("lr_off_by_one", "stem.conv.weight")])
def test_a_fault_planted_in_mindspore_is_named_by_the_command(tmp_path, plant, parameter):
    out = tmp_path / "planted.json"
    proc = run_cli("harness.parity", "--train-steps", "3", "--frameworks", "torch,ms", "--num-classes", "4",
                   "--train-plant", plant, "--json", out)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"first failing parameter: {parameter}" in proc.stdout
    assert json.loads(out.read_text())["first_failing_parameter"] == parameter
