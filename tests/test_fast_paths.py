"""The fast paths against the exact path, layer by layer at parity's default tolerances, in
both frameworks, on every preset each applies to; and what they must never change
(parameter names, state_dict keys, the exact path itself).

Every fast path is exact in real arithmetic (a reassociated product, a folded affine map,
in-place writes, another kernel for the same convolution or max pool), so the only
difference allowed is float32 rounding: the default per-stage tolerances, which are
3-6x the torch-vs-MindSpore error.
"""
from __future__ import annotations

import gc
from typing import Dict

import numpy as np
import pytest

from frameworks.spec.arch import PRESETS, I3DNLConfig, layer_names, parameter_specs
from frameworks.spec.fold import conv_bn_pairs, fold_batchnorm, folded_parameter_specs
from frameworks.spec.naming import mindspore_names
from harness.comparator import compare_outputs, format_report

torch = pytest.importorskip("torch")

from frameworks.torch.model import EXECUTION_OPTIONS, I3DNL, build_folded  # noqa: E402
from frameworks.torch.weights import randomize, to_canonical  # noqa: E402

DOT_PRODUCT = [n for n, c in PRESETS.items() if c.nonlocal_cfg.mode == "dot_product" and any(map(any, c.non_local))]


def clip_shape(cfg: I3DNLConfig):
    # Caffe2's test head averages a 7x7 window of res5: it needs a 224x224 input.
    return (1, 3, 8, 224, 224) if cfg.head == "conv_softmax_avg" else (1, 3, 8, 64, 64)


def seeded(cfg: I3DNLConfig, seed: int = 0):
    """The project's seeded, BN-calibrated weights, the clip and the exact path's outputs."""
    clip = np.random.default_rng(seed).standard_normal(clip_shape(cfg)).astype(np.float32)
    torch.manual_seed(seed)
    model = I3DNL(cfg).eval()
    randomize(model, torch.from_numpy(clip), seed)
    with torch.no_grad():
        exact = {k: v.numpy().copy() for k, v in model.forward_intermediates(torch.from_numpy(clip)).items()}
    return model, clip, to_canonical(model), exact


def assert_parity(cfg, exact: Dict[str, np.ndarray], fast: Dict[str, np.ndarray], label: str):
    report = compare_outputs(exact, fast, layer_names(cfg), reference_name="exact", candidate_name=label)
    assert report.passed, "\n" + format_report(report)
    return report


def _torch_outputs(model, clip):
    with torch.no_grad():
        return {k: v.numpy().copy() for k, v in model.forward_intermediates(torch.from_numpy(clip)).items()}


# --------------------------------------------------------------------------- torch
# the heavier graphs at test size (Caffe2's head needs 224x224; mindvideo keeps 8 frames to res5)
HEAVY = ("i3d_nl_caffe2_r50", "i3d_nl_mindvideo_r50")


@pytest.mark.parametrize("preset", [p if p not in HEAVY else pytest.param(p, marks=pytest.mark.slow)
                                    for p in PRESETS])
def test_torch_fast_paths_match_the_exact_path(preset):
    """Every execution option together, then the BN-folded network with them, in both
    memory layouts; each option alone on the default preset (below)."""
    cfg = PRESETS[preset]
    model, clip, weights, exact = seeded(cfg)
    keys = list(model.state_dict())
    assert_parity(cfg, exact, _torch_outputs(model.set_execution(**dict.fromkeys(EXECUTION_OPTIONS, True)), clip),
                  "all")
    for layout in (False, True):   # channels_last_3d: the same function on NTHWC memory
        folded = build_folded(cfg, weights).set_execution(**dict.fromkeys(EXECUTION_OPTIONS, True))
        x = torch.from_numpy(clip)
        if layout:
            folded, x = folded.to(memory_format=torch.channels_last_3d), x.contiguous(
                memory_format=torch.channels_last_3d)
        with torch.no_grad():
            out = {k: v.contiguous().numpy() for k, v in folded.forward_intermediates(x).items()}
        assert_parity(cfg, exact, out, "fold_bn+all" + ("+channels_last" if layout else ""))
    # the exact path again, bit for bit, and nothing renamed
    model.set_execution(**dict.fromkeys(EXECUTION_OPTIONS, False))
    again = _torch_outputs(model, clip)
    assert all(np.array_equal(again[k], exact[k]) for k in exact)
    assert list(model.state_dict()) == keys


def test_each_torch_execution_option_alone():
    cfg = PRESETS["i3d_nl_dot_product_r50"]
    model, clip, _, exact = seeded(cfg)
    for option in EXECUTION_OPTIONS:
        out = _torch_outputs(model.set_execution(**{o: o == option for o in EXECUTION_OPTIONS}), clip)
        assert_parity(cfg, exact, out, option)


def test_torch_fast_paths_train_to_the_same_gradients():
    """Reassociation, in-place activations and the 2D pools in a training step: the loss and
    every gradient differ from the exact path's by no more than float32 rounding does
    (the exact path in float32 against float64, x3)."""
    cfg = PRESETS["i3d_nl_dot_product_r50"].replace(dropout=0.0)
    model, clip, weights, _ = seeded(cfg)
    model.train()
    labels = torch.tensor([3])
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def grads(options, dtype=torch.float32):
        model.load_state_dict(state)   # BN running statistics move in a step: start each where the first did
        model.to(dtype).set_execution(**options)
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(clip).to(dtype)), labels)
        loss.backward()
        out = loss.item(), {n: p.grad.double().clone() for n, p in model.named_parameters()}
        model.float()
        return out

    loss64, ref = grads(dict.fromkeys(EXECUTION_OPTIONS, False), torch.float64)
    loss_exact, exact = grads(dict.fromkeys(EXECUTION_OPTIONS, False))
    loss_fast, fast = grads(dict.fromkeys(EXECUTION_OPTIONS, True))
    assert abs(loss_fast - loss_exact) <= 3 * abs(loss_exact - loss64) + 1e-6 * abs(loss64)
    # Gradients that are zero in exact arithmetic are rounding noise in any summation order:
    # the non-local theta / phi / g biases (a training-mode BN after the block removes any
    # constant they add). They must stay at that level; every other gradient is compared.
    floor = 1e-6 * max(g.abs().max().item() for g in ref.values())
    compared = 0
    for name, g in ref.items():
        scale = g.abs().max().item()
        if scale < floor:
            assert fast[name].abs().max().item() < 10 * floor, name
            continue
        noise = (exact[name] - g).abs().max().item() / scale
        error = (fast[name] - exact[name]).abs().max().item() / scale
        assert error <= max(3 * noise, 1e-6), f"{name}: fast vs exact {error:.2e}, float32 vs float64 {noise:.2e}"
        compared += 1
    assert compared > 0.9 * len(ref)


def test_folding_is_a_separate_network_and_leaves_the_canonical_names_alone():
    cfg = PRESETS["i3d_nl_caffe2_r50"]   # biased non-local output conv: the fold keeps its bias
    model, clip, weights, _ = seeded(cfg)
    folded_arrays = fold_batchnorm(cfg, weights)
    assert list(folded_arrays) == list(folded_parameter_specs(cfg))
    assert not any(".bn" in k for k in folded_arrays)
    assert all(f"{conv}.bias" in folded_arrays for conv, _ in conv_bn_pairs(cfg))
    folded = build_folded(cfg, weights)
    assert set(folded.state_dict()) == set(folded_arrays)
    with pytest.raises(RuntimeError, match="inference only"):
        folded.train()
    assert set(to_canonical(model)) == set(parameter_specs(cfg))   # the canonical network is untouched
    with pytest.raises(ValueError, match="unknown execution option"):
        model.set_execution(turbo=True)


# --------------------------------------------------------------------------- MindSpore
def _ms_cases(presets):
    from harness.runners.mindspore_runner import MindSporeRunner

    for preset in presets:
        cfg = PRESETS[preset]
        _, clip, weights, _ = seeded(cfg)
        runs = {"exact": {}, "reassociate": {"execution": {"reassociate_nonlocal": True}},
                "fold_bn": {"fold_bn": True},
                "fold_bn+reassociate": {"fold_bn": True, "execution": {"reassociate_nonlocal": True}}}
        if preset not in DOT_PRODUCT:
            runs = {k: v for k, v in runs.items() if "reassociate" not in k}
        outputs, names = {}, {}
        for label, options in runs.items():
            runner = MindSporeRunner(mode="graph", **options)
            runner.build(cfg)
            runner.load(weights)
            outputs[label] = runner.forward_intermediates(clip)
            names[label] = sorted(p.name for p in runner.net.get_parameters())
            del runner
            gc.collect()
        for label in runs:
            if label != "exact":
                assert_parity(cfg, outputs["exact"], outputs[label], label)
        assert names["exact"] == sorted(mindspore_names(cfg))       # the fast paths rename nothing
        for label in runs:
            if "fold_bn" not in label:
                assert names[label] == names["exact"]


@pytest.mark.mindspore
@pytest.mark.parametrize("preset", ["i3d_nl_dot_product_r50", "i3d_nl_caffe2_r50"])
def test_mindspore_fast_paths_match_the_exact_path(preset):
    pytest.importorskip("harness.runners.mindspore_runner").configure_onednn_isa()
    pytest.importorskip("mindspore")
    _ms_cases([preset])


@pytest.mark.mindspore
@pytest.mark.slow
def test_mindspore_fast_paths_match_the_exact_path_on_every_preset():
    pytest.importorskip("harness.runners.mindspore_runner").configure_onednn_isa()
    pytest.importorskip("mindspore")
    _ms_cases([p for p in PRESETS if p not in ("i3d_nl_dot_product_r50", "i3d_nl_caffe2_r50")])
