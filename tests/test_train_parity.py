"""Training parity (`python -m harness.parity --train-steps K`, harness/train_parity.py).

The default suite runs the command once (torch vs MindSpore, the default 2x3x8x64x64 batch)
and checks each part on its own, on numbers worked out here: the optimiser's rounding
bound against a float32 simulation of SGD, the search that names the kinks a float32 run
decided the other way, the verdict's ordering and the rule that a share over 100% of a
tolerance never passes. The planted bugs and the multi-seed runs are in
tests/test_train_parity_mutants.py (slow).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from frameworks.spec.arch import get_preset, kink_sites, parameter_specs
from frameworks.spec.train import get_recipe, parameter_family, sgd_reference, trainable_names
from harness import train_compare
from harness.train_parity import (RUNGS, TOLERANCES, Entry, Rung, TrainParityRequest, make_inputs, summary,
                                  verdict)
from tests.conftest import run_cli

CFG = get_preset("i3d_nl_dot_product_r50", num_classes=4)


# ------------------------------------------------------------------ the command, once
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_parity") / "train_parity.json"
    proc = run_cli("harness.parity", "--train-steps", "3", "--frameworks", "torch,ms", "--num-classes", "4",
                   "--json", out)
    return proc, out


@pytest.mark.mindspore
def test_mindspore_trains_like_torch_at_every_check(cli_run):
    proc, out = cli_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "PASSED: ms trains like torch" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["kind"] == "train_parity" and doc["verdict"] == "PASS" and doc["first_failure"] is None
    assert set(doc["rungs"]) == set(RUNGS) and all(r["status"] == "PASS" for r in doc["rungs"].values())
    assert doc["steps"] == 3 and doc["input_shape"] == [2, 3, 8, 64, 64] and "provenance" in doc
    columns = doc["rungs"]["optimizer"]["entries"]["columns"]
    rows = [dict(zip(columns, row)) for row in doc["rungs"]["optimizer"]["entries"]["rows"]]
    # every trainable parameter's decay, buffer and update, in both frameworks
    assert len(rows) == 2 + 3 * 2 * len(trainable_names(CFG))
    step = [dict(zip(columns, row)) for row in doc["rungs"]["step"]["entries"]["rows"]]
    grads = {r["name"] for r in step if r["quantity"] == "grad"}
    assert grads == set(trainable_names(CFG))
    # the floor (torch float32 against float64) is measured, non-zero, and inside every tolerance it justifies
    floors = [r["floor"] for r in step if r["floor"] is not None]
    assert min(floors) >= 0 and max(floors) > 0 and all(r["floor"] <= r["tolerance"] for r in step)
    # the report's rows agree with the verdict: no family over 100% of its tolerance passes
    for row in doc["summary"]:
        assert (row["worst_share"] > 1) == (row["status"] == "FAIL"), row


@pytest.mark.mindspore
def test_what_each_framework_applied_is_reported(cli_run):
    doc = json.loads(cli_run[1].read_text())
    for role in ("reference", "candidate"):
        lr = doc["conventions"][role]["lr_applied"]
        np.testing.assert_allclose(lr["applied"], lr["expected"], rtol=1e-5)
        np.testing.assert_allclose(lr["expected"], [7.5e-5, 1.5e-4, 2.25e-4], rtol=1e-6)   # one warm-up epoch of 4
    assert doc["conventions"]["reference"]["bn_momentum"]["new_batch_weight"] == [0.1]
    assert doc["conventions"]["candidate"]["bn_momentum"]["constructor"] == [0.9]   # MindSpore's 1 - m
    assert doc["recipe"]["dropout"] == 0.5


# ------------------------------------------------------------------ the optimiser's bound
def _float32_sgd(params, grads, lrs, momentum, decay, *, nesterov=False):
    """SGD as a framework runs it, every operation rounded to float32."""
    f = np.float32
    p = {n: v.astype(np.float32) for n, v in params.items()}
    buf, out = {}, []
    for k, g_k in enumerate(grads):
        for n in p:
            d = (g_k[n] + f(decay[n]) * p[n]).astype(np.float32)
            buf[n] = d if n not in buf else (f(momentum) * buf[n] + d).astype(np.float32)
            step = d + f(momentum) * buf[n] if nesterov else buf[n]
            p[n] = (p[n] - f(lrs[k]) * step).astype(np.float32)
        out.append({n: (p[n].copy(), buf[n].copy()) for n in p})
    return out


def test_float32_sgd_stays_inside_the_rounding_bound_and_a_bug_leaves_it():
    shapes = {"stem.conv.weight": (16, 3, 1, 3, 3), "stem.bn.weight": (16,), "head.fc.bias": (4,)}
    params, grads = train_compare.optimizer_inputs(shapes, 3, seed=1)
    recipe = get_recipe()
    decay = {"stem.conv.weight": 1e-4, "stem.bn.weight": 0.0, "head.fc.bias": 1e-4}
    lrs = [1e-4, 2e-4, 3e-4]
    good = train_compare.optimizer_errors(params, grads, lrs, recipe, decay, _float32_sgd(params, grads, lrs, 0.9, decay))
    for name in shapes:
        assert good[name]["buf"] <= 1 and good[name]["param"] <= 1, good[name]
        assert good[name]["decay"] == pytest.approx(decay[name], rel=1e-6, abs=1e-12)
    np.testing.assert_allclose(good["__lr__"]["applied"], lrs, rtol=1e-4)
    for bug, quantity in ((dict(momentum=0.85), "buf"), (dict(nesterov=True), "param")):
        got = _float32_sgd(params, grads, lrs, bug.get("momentum", 0.9), decay, nesterov=bug.get("nesterov", False))
        bad = train_compare.optimizer_errors(params, grads, lrs, recipe, decay, got)
        assert bad["stem.conv.weight"][quantity] > 1e3 * TOLERANCES["optimizer"], (bug, bad["stem.conv.weight"])
    doubled = train_compare.optimizer_errors(params, grads, lrs, recipe, decay, _float32_sgd(
        params, grads, lrs, 0.9, {n: 2 * v for n, v in decay.items()}))
    assert doubled["stem.conv.weight"]["decay"] == pytest.approx(2e-4, rel=1e-6)


def test_sgd_reference_is_the_recipes_update():
    p = {"w": np.array([1.0, -2.0])}
    g = [{"w": np.array([0.5, 0.0])}, {"w": np.array([0.0, 1.0])}]
    (p1, b1), = sgd_reference(p, g[:1], [0.1], get_recipe(), {"w": 0.01})[0].values()
    np.testing.assert_allclose(b1, [0.5 + 0.01, -0.02])
    np.testing.assert_allclose(p1, [1.0 - 0.1 * 0.51, -2.0 + 0.1 * 0.02])
    second = sgd_reference(p, g, [0.1, 0.2], get_recipe(), {"w": 0.01})[1]["w"]
    np.testing.assert_allclose(second[1], 0.9 * b1 + np.array([0.0, 1.0]) + 0.01 * p1)


# ------------------------------------------------------------------ naming the kinks a run flipped
def test_the_search_names_the_kink_a_run_decided_differently_and_nothing_else():
    """A toy model of a step: flipping kink (site A, channel c) moves channel c of A's first
    parameters by a known amount and everything upstream a little. A run that flipped one
    kink is explained by exactly that kink; a run with a real bug is not explained away."""
    rng = np.random.default_rng(0)
    order = ["up.weight", "a.bn.weight", "a.bn.bias", "a.conv.weight"]
    base = {n: rng.standard_normal((8, 3)) for n in order}
    kinks = {"a:relu": np.zeros((1, 8, 2), dtype=bool)}
    kinks["a:relu"][0, 2, 1] = kinks["a:relu"][0, 5, 0] = True
    effect = {(2, 1): 0.4, (5, 0): -0.3}

    def gradients_with(flips):
        out = {n: v.copy() for n, v in base.items()}
        for (c, t), size in effect.items():
            if "a:relu" in flips and flips["a:relu"][0, c, t]:
                for n in ("a.bn.weight", "a.bn.bias", "a.conv.weight"):
                    out[n][c] += size
                out["up.weight"] += size * 1e-2
        return out

    sites = {"a:relu": ["a.bn.weight", "a.bn.bias", "a.conv.weight"]}
    scales = train_compare.module_scales(base)
    flipped = gradients_with({"a:relu": np.isin(np.arange(16).reshape(1, 8, 2), [5])})   # channel 2, t 1 only
    flipped = {n: v + 1e-7 * rng.standard_normal(v.shape) for n, v in flipped.items()}
    flips, truth, found = train_compare.explain_flips(flipped, base, gradients_with, kinks, sites, 1e-4, scales, order)
    assert found == [{"site": "a:relu", "channel": 2, "kinks": 1}]
    assert max(train_compare.scaled_errors(flipped, truth, scales).values()) < 1e-4
    buggy = {n: v * 1.01 for n, v in base.items()}                      # a real bug: no kink explains it
    flips, truth, found = train_compare.explain_flips(buggy, base, gradients_with, kinks, sites, 1e-4, scales, order)
    assert found == [] and max(train_compare.scaled_errors(buggy, truth, scales).values()) > 1e-3


def test_every_relu_and_pool_of_the_network_is_a_named_site():
    sites = kink_sites(CFG)
    assert {"stem:relu", "pool1", "pool2", "res2.0:relu1", "res2.0:relu2", "res2.0:relu",
            "res3.1.non_local.pool:phi", "res3.1.non_local.pool:g"} <= set(sites)
    params = set(parameter_specs(CFG))
    assert all(set(p) <= params for p in sites.values())
    assert sites["res2.0:relu"][-1] == "res2.0.downsample.conv.weight" and "res2.1.downsample" not in str(
        sites["res2.1:relu"])


@pytest.mark.parametrize("name, family", [("stem.conv.weight", "conv"), ("res3.1.non_local.g.weight", "nonlocal"),
                                          ("res3.1.non_local.g.bias", "bias"), ("head.fc.weight", "fc"),
                                          ("res2.0.bn1.weight", "bn"), ("res4.3.non_local.bn.bias", "bn"),
                                          ("stem.bn.running_var", "bn_stat")])
def test_parameter_families(name, family):
    assert parameter_family(name) == family


# ------------------------------------------------------------------ verdicts agree with their numbers
def test_a_share_over_100_percent_never_passes_and_nan_fails():
    assert Entry("step", "conv", "grad", "w", "ms", 1.0, 1.0).passed
    assert not Entry("step", "conv", "grad", "w", "ms", 1.0001, 1.0).passed
    assert not Entry("step", "conv", "grad", "w", "ms", math.nan, 1.0).passed
    assert not Entry("step", "conv", "grad", "w", "ms", math.inf, 1.0).passed


def test_the_verdict_names_the_first_failing_check_in_ladder_order_and_is_never_pass_when_unjudged():
    ok = Entry("components", "loss", "cross_entropy", "loss", "ms", 0.0, 1.0)
    step_bad = Entry("step", "conv", "grad", "w", "ms", 2.0, 1.0)
    opt_bad = Entry("optimizer", "bn", "decay", "b", "ms", 5.0, 1.0)
    rungs = {"components": Rung("components", [ok]), "optimizer": Rung("optimizer", [opt_bad]),
             "step": Rung("step", [step_bad])}
    status, first = verdict(rungs)
    assert status == "FAIL" and first is opt_bad
    unjudged = Entry("step", "conv", "grad", "w", "ms", 0.5, 1.0, floor=3.0, judged=False)
    status, first = verdict({"components": Rung("components", [ok]), "step": Rung("step", [unjudged])})
    assert status == "INCONCLUSIVE" and first is None
    rows = {(r["rung"], r["family"]): r for r in summary({"step": Rung("step", [step_bad, unjudged])})}
    assert rows[("step", "conv")]["status"] == "FAIL" and rows[("step", "conv")]["worst_share"] == 2.0


def test_inputs_are_a_function_of_the_seed():
    req = TrainParityRequest(cfg=CFG, steps=2, shape=(2, 3, 4, 16, 16))
    a, b = make_inputs(req), make_inputs(req)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert int(a["optimizer/steps"]) == 3 and int(a["optimizer/seed"]) == 0
    c = make_inputs(TrainParityRequest(cfg=CFG, steps=2, shape=(2, 3, 4, 16, 16), seed=1))
    assert not np.array_equal(a["x0"], c["x0"])
    shapes = {"w": (64, 3, 3), "b": (4,)}
    p1, g1 = train_compare.optimizer_inputs(shapes, 3, seed=0)
    p2, g2 = train_compare.optimizer_inputs(shapes, 3, seed=0)
    assert all(np.array_equal(g1[k][n], g2[k][n]) for k in range(3) for n in shapes)
    assert (g1[0]["w"] == 0).mean() == pytest.approx(0.1, abs=0.03) and g1[0]["b"].flat[0] == 0
