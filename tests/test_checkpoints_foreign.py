"""The foreign checkpoints, written in their own formats by these tests, imported, run, and
checked against a numpy non-local block written from each author's description."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from frameworks.spec.arch import get_preset, layer_names, parameter_specs
from frameworks.torch.model import I3DNL
from frameworks.torch.weights import load_canonical, randomize, to_canonical
from harness.checkpoints import CheckpointError, caffe2, load_weights, mindvideo

SHAPE = (1, 3, 8, 64, 64)


@pytest.fixture(scope="module")
def clip():
    return np.random.default_rng(11).standard_normal(SHAPE).astype(np.float32)


def _calibrated(preset: str, clip: np.ndarray, seed: int = 4):
    cfg = get_preset(preset)
    model = I3DNL(cfg)
    randomize(model, torch.from_numpy(clip), seed)
    return cfg, to_canonical(model)


def _write_caffe2_pkl(path, canonical, cfg, extra=None):
    """As video-nonlocal-net's checkpoints.py saves: {'blobs': ...}, protocol 2, momentum
    blobs for trainable params, model_iter and lr."""
    blobs = caffe2.from_canonical(canonical, cfg)
    blobs["pred_w"] = blobs["pred_w"].astype(np.float32)
    momentum = {f"{k}_momentum": np.zeros_like(v) for k, v in blobs.items() if not k.endswith(("_rm", "_riv"))}
    blobs.update(momentum)
    blobs["model_iter"] = 400000
    blobs["lr"] = np.array([0.0001], dtype=np.float32)
    blobs.update(extra or {})
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)


def _torch_outputs(cfg, arrays, clip):
    model = I3DNL(cfg).eval()
    load_canonical(model, arrays, cfg)
    with torch.no_grad():
        return {k: v.numpy() for k, v in model.forward_intermediates(torch.from_numpy(clip)).items()}


def _nonlocal_float64(cfg, arrays, stage, x):
    """Our block alone, in float64: the numpy oracles below are float64 too, so the softmax's
    float32 conditioning (sharp affinities) cannot blur a real difference."""
    model = I3DNL(cfg).eval()
    load_canonical(model, arrays, cfg)
    model.double()
    with torch.no_grad():
        return model.forward_stage(f"{stage}.non_local", torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------------- numpy oracles
def _conv1x1(x, w, b=None):
    y = np.einsum("nctwh,oc->notwh", x, w.reshape(w.shape[:2]).astype(np.float64))
    return y if b is None else y + b.astype(np.float64)[None, :, None, None, None]


def _maxpool_1x2x2(x):
    n, c, t, h, w = x.shape
    return x[..., : h // 2 * 2, : w // 2 * 2].reshape(n, c, t, h // 2, 2, w // 2, 2).max(axis=(4, 6))


def _bn(x, scale, shift, mean, var, eps):
    r = lambda v: v.astype(np.float64)[None, :, None, None, None]  # noqa: E731
    return (x - r(mean)) / np.sqrt(r(var) + eps) * r(scale) + r(shift)


def caffe2_nonlocal(x, blobs, prefix, eps=1.0000001e-5):
    """video-nonlocal-net nonlocal_helper.spacetime_nonlocal, from its description: theta on
    x; one 1x2x2 max-pool of x feeds phi and g; softmax over phi positions of
    theta^T phi * C'^-0.5; y = g p^T; z = x + BN(out(y)), every conv biased."""
    n, c = x.shape[:2]
    theta = _conv1x1(x, blobs[f"{prefix}_theta_w"], blobs[f"{prefix}_theta_b"]).reshape(n, c // 2, -1)
    pooled = _maxpool_1x2x2(x)
    phi = _conv1x1(pooled, blobs[f"{prefix}_phi_w"], blobs[f"{prefix}_phi_b"]).reshape(n, c // 2, -1)
    g = _conv1x1(pooled, blobs[f"{prefix}_g_w"], blobs[f"{prefix}_g_b"]).reshape(n, c // 2, -1)
    affinity = np.einsum("nci,ncj->nij", theta, phi) * (c // 2) ** -0.5
    p = np.exp(affinity - affinity.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    y = np.einsum("ncj,nij->nci", g, p).reshape(n, c // 2, *x.shape[2:])
    out = _conv1x1(y, blobs[f"{prefix}_out_w"], blobs[f"{prefix}_out_b"])
    return x + _bn(out, blobs[f"{prefix}_bn_s"], blobs[f"{prefix}_bn_b"], blobs[f"{prefix}_bn_rm"],
                   blobs[f"{prefix}_bn_riv"], eps)


def mindvideo_nonlocal(x, params, prefix, eps=1e-5):
    """mindvideo NonLocalBlockND(mode='dot'): theta conv; phi and g conv then 1x2x2 max-pool;
    f = theta^T phi / N_phi; y = f g; z = x + BN(w.0(y)) with an unbiased w.0."""
    n, c = x.shape[:2]
    get = lambda name: params[f"{prefix}.{name}"]  # noqa: E731
    theta = _conv1x1(x, get("theta.weight"), get("theta.bias")).reshape(n, c // 2, -1)
    phi = _maxpool_1x2x2(_conv1x1(x, get("phi.0.weight"), get("phi.0.bias"))).reshape(n, c // 2, -1)
    g = _maxpool_1x2x2(_conv1x1(x, get("g.0.weight"), get("g.0.bias"))).reshape(n, c // 2, -1)
    f = np.einsum("nci,ncj->nij", theta, phi) / phi.shape[-1]
    y = np.einsum("nij,ncj->nci", f, g).reshape(n, c // 2, *x.shape[2:])
    out = _conv1x1(y, get("w.0.weight"))
    return x + _bn(out, get("w.1.bn2d.gamma"), get("w.1.bn2d.beta"), get("w.1.bn2d.moving_mean"),
                   get("w.1.bn2d.moving_variance"), eps)


# --------------------------------------------------------------------------- Caffe2
def test_caffe2_pkl_imports_and_matches_the_authors_nonlocal_block(clip, tmp_path):
    cfg, canonical = _calibrated("i3d_nl_caffe2_r50", clip)
    path = tmp_path / "i3d_nonlocal_32x2_IN_pretrain_400k.pkl"
    _write_caffe2_pkl(path, canonical, cfg)
    loaded = load_weights(str(path), cfg)
    assert (loaded.container, loaded.scheme) == ("pickle", "caffe2")
    assert loaded.meta == {"model_iter": 400000, "lr": [pytest.approx(1e-4)]}
    for k, v in canonical.items():
        np.testing.assert_array_equal(loaded.arrays[k], v)

    outputs = _torch_outputs(cfg, loaded.arrays, clip)
    with open(path, "rb") as f:
        blobs = pickle.load(f, encoding="latin1")["blobs"]
    for stage, prefix in (("res3.1", "nonlocal_conv3_1"), ("res4.5", "nonlocal_conv4_5")):
        x = outputs[stage].astype(np.float64)
        expected = caffe2_nonlocal(x, blobs, prefix)
        got = _nonlocal_float64(cfg, loaded.arrays, stage, x)
        assert np.abs(got - expected).max() <= 1e-10 * np.abs(expected).max(), stage
        # and in float32, end to end, within float32 conditioning of a sharp softmax
        assert np.abs(outputs[f"{stage}.non_local"] - expected).max() <= 1e-3 * np.abs(expected).max()
        assert np.abs(got - outputs[stage]).max() > 0.05 * np.abs(outputs[stage]).max()
    # The head is Caffe2's test head: per-position softmax, averaged: probabilities.
    assert np.allclose(outputs["logits"].sum(axis=1), 1.0, atol=1e-5)


def test_caffe2_pred_stored_as_a_1x1x1_conv_is_accepted(clip):
    cfg, canonical = _calibrated("i3d_nl_caffe2_r50", clip)
    blobs = caffe2.from_canonical(canonical, cfg)
    blobs["pred_w"] = blobs["pred_w"].reshape(400, 2048, 1, 1, 1)
    arrays = caffe2.to_canonical(blobs, cfg)
    np.testing.assert_array_equal(arrays["head.fc.weight"], canonical["head.fc.weight"])


@pytest.mark.parametrize("fault,named", [
    ("missing", "nonlocal_conv4_3_phi_b"), ("extra", "nonlocal_conv5_1_theta_w"),
    ("misshaped", "res3_2_branch2b_w")])
def test_caffe2_faults_name_the_blob(fault, named, clip, tmp_path):
    cfg, canonical = _calibrated("i3d_nl_caffe2_r50", clip)
    blobs = caffe2.from_canonical(canonical, cfg)
    if fault == "missing":
        del blobs[named]
    elif fault == "extra":
        blobs[named] = np.zeros((1024, 2048, 1, 1, 1), np.float32)
    else:
        blobs[named] = blobs[named][:, :, :, :2, :2].copy()
    path = tmp_path / "bad.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    with pytest.raises(CheckpointError, match=named):
        load_weights(str(path), cfg)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": Exploit()}}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle builtins\.print from .*evil\.pkl: a checkpoint may not run code"):
        load_weights(str(path), get_preset("i3d_nl_caffe2_r50"))


# --------------------------------------------------------------------------- mindvideo
def test_mindvideo_names_cover_the_graph_and_match_the_authors_nonlocal_block(clip):
    cfg, canonical = _calibrated("i3d_nl_mindvideo_r50", clip)
    params = mindvideo.from_canonical(canonical, cfg)
    assert len(params) == 322 and "backbone.layer3.5.non_local_block.w.1.bn2d.moving_variance" in params
    assert params["backbone.conv1.features.0.weight"].shape == (64, 3, 5, 7, 7)
    arrays = mindvideo.to_canonical(params, cfg)
    outputs = _torch_outputs(cfg, arrays, clip)
    assert outputs["res5.2"].shape[2] == SHAPE[2] // 2  # the stem keeps every frame; pool2 halves
    for stage, prefix in (("res3.3", "backbone.layer2.3.non_local_block"),
                          ("res4.1", "backbone.layer3.1.non_local_block")):
        x = outputs[stage].astype(np.float64)
        expected = mindvideo_nonlocal(x, params, prefix)
        got = _nonlocal_float64(cfg, arrays, stage, x)
        assert np.abs(got - expected).max() <= 1e-10 * np.abs(expected).max(), stage
        assert np.abs(outputs[f"{stage}.non_local"] - expected).max() <= 1e-5 * np.abs(expected).max()


def test_mindvideo_ckpt_file_imports(clip, tmp_path):
    """A .ckpt written by MindSpore itself, with the optimiser state ModelCheckpoint adds."""
    ms = pytest.importorskip("mindspore")
    cfg, canonical = _calibrated("i3d_nl_mindvideo_r50", clip)
    params = mindvideo.from_canonical(canonical, cfg)
    params["moments.head.dense.weight"] = np.zeros((400, 2048), np.float32)
    params["learning_rate"] = np.array(3e-4, np.float32)
    params["global_step"] = np.array([4975], np.int32)
    path = tmp_path / "nonlocal_kinetics400_mindspore.ckpt"
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], str(path))
    loaded = load_weights(str(path), cfg)
    assert loaded.scheme == "mindvideo"
    for k, v in canonical.items():
        np.testing.assert_array_equal(loaded.arrays[k], v)


def test_mindvideo_class_order_maps_onto_alphabetical():
    labels = ["riding a bike", "abseiling", "riding a bike", "zumba", "abseiling", "bowling"]
    order = mindvideo.first_appearance_order(labels)
    assert order == ["riding a bike", "abseiling", "zumba", "bowling"]
    arrays = {"head.fc.weight": np.arange(8, dtype=np.float32).reshape(4, 2),
              "head.fc.bias": np.arange(4, dtype=np.float32)}
    out = mindvideo.reorder_classes(arrays, order, sorted(order))
    # alphabetical: abseiling (was 1), bowling (3), riding a bike (0), zumba (2)
    np.testing.assert_array_equal(out["head.fc.bias"], [1, 3, 0, 2])
    np.testing.assert_array_equal(out["head.fc.weight"][0], [2, 3])
    with pytest.raises(ValueError, match="class sets differ"):
        mindvideo.reorder_classes(arrays, order, ["abseiling", "bowling", "zumba", "yoga"])


def test_every_scheme_covers_exactly_the_canonical_names():
    for preset, module in (("i3d_nl_caffe2_r50", caffe2), ("i3d_nl_mindvideo_r50", mindvideo)):
        cfg = get_preset(preset)
        names = module.RENAME.mapping(cfg)
        assert sorted(names.values()) == sorted(parameter_specs(cfg))
        assert len(set(names)) == len(names)
    assert "pool" in layer_names(get_preset("i3d_nl_caffe2_r50"))


# --------------------------------------------------------------------------- both frameworks
@pytest.mark.parametrize("fmt", ["caffe2", "mindvideo"])
def test_foreign_checkpoint_runs_in_torch_and_mindspore_with_parity(fmt, clip, tmp_path, cli):
    """The file as its authors write it, through `harness.parity --checkpoint`: the format is
    recognised from its content and both frameworks agree at every layer."""
    pytest.importorskip("mindspore")
    preset = "i3d_nl_caffe2_r50" if fmt == "caffe2" else "i3d_nl_mindvideo_r50"
    cfg, canonical = _calibrated(preset, clip)
    if fmt == "caffe2":
        path = tmp_path / "i3d_nonlocal_32x2_IN_pretrain_400k.pkl"
        _write_caffe2_pkl(path, canonical, cfg)
    else:
        from harness.checkpoints.formats import CONTAINERS

        path = tmp_path / "nonlocal_kinetics400_mindspore.ckpt"
        CONTAINERS["ckpt"].write(str(path), mindvideo.from_canonical(canonical, cfg))
    np.save(tmp_path / "clip.npy", clip)
    proc = cli("harness.parity", "--arch", preset, "--frameworks", "torch,ms", "--checkpoint", path,
               "--input", tmp_path / "clip.npy", "--json", tmp_path / "parity.json", "-v")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{fmt} weights in a" in proc.stdout  # what was recognised is said
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and len(report["layers"]) == len(layer_names(cfg))
