"""Parity's drill-down: each framework's sub-operation trace of a canonical layer ends in
exactly the layer's own output, under the names the spec lists, and the two frameworks'
traces agree step by step on the same input and weights."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from frameworks.spec.arch import get_preset, layer_names, subop_names
from frameworks.torch.model import I3DNL
from frameworks.torch.subops import trace
from frameworks.torch.weights import randomize
from tests.conftest import ROOT

SHAPE = (1, 3, 8, 64, 64)


@pytest.mark.parametrize("preset", ["i3d_nl_dot_product_r50", "i3d_nl_embedded_gaussian_r50", "i3d_nl_gaussian_r50",
                                    "i3d_nl_caffe2_r50", "i3d_nl_mindvideo_r50"])
def test_torch_trace_ends_in_the_layer_output_bit_for_bit(preset):
    cfg = get_preset(preset)
    shape = (1, 3, 8, 224, 224) if cfg.head == "conv_softmax_avg" else SHAPE
    clip = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    model = I3DNL(cfg).eval()
    randomize(model, clip, 1)
    with torch.no_grad():
        outputs = model.forward_intermediates(clip)
        previous = clip
        for name in layer_names(cfg):
            steps = trace(model, name, previous)
            assert list(steps) == subop_names(cfg, name), name
            last = list(steps.values())[-1]
            assert torch.equal(last, outputs[name]), name
            previous = outputs[name]


@pytest.mark.mindspore
def test_mindspore_trace_matches_torch_step_by_step(tmp_path):
    """Both frameworks trace res3.1 (a block) and res3.1.non_local on the same input."""
    cfg = get_preset("i3d_nl_dot_product_r50")
    clip = torch.from_numpy(np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32))
    model = I3DNL(cfg).eval()
    randomize(model, clip, 2)
    from frameworks.torch.weights import to_canonical
    from harness.checkpoints.io import write_npz

    write_npz(str(tmp_path / "w.npz"), to_canonical(model))
    with torch.no_grad():
        outputs = model.forward_intermediates(clip)
    np.save(tmp_path / "x_block.npy", outputs["res3.0"].numpy())
    np.save(tmp_path / "x_nl.npy", outputs["res3.1"].numpy())
    code = f"""
import numpy as np
from harness.runners.mindspore_runner import MindSporeRunner
from frameworks.spec.arch import get_preset
from harness.checkpoints.io import write_npz
r = MindSporeRunner(threads=1)
r.build(get_preset("i3d_nl_dot_product_r50"))
with np.load(r"{tmp_path / 'w.npz'}") as z:
    r.load({{k: z[k] for k in z.files}})
write_npz(r"{tmp_path / 'block.npz'}", r.forward_subops("res3.1", np.load(r"{tmp_path / 'x_block.npy'}")))
write_npz(r"{tmp_path / 'nl.npz'}", r.forward_subops("res3.1.non_local", np.load(r"{tmp_path / 'x_nl.npy'}")))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for layer, x, out in (("res3.1", "x_block.npy", "block.npz"), ("res3.1.non_local", "x_nl.npy", "nl.npz")):
        with torch.no_grad():
            ref = {k: v.numpy() for k, v in trace(model, layer, torch.from_numpy(np.load(tmp_path / x))).items()}
        with np.load(tmp_path / out) as z:
            got = {k: z[k] for k in z.files}
        assert list(got) == list(ref) == subop_names(cfg, layer)
        for step in ref:
            scale = np.abs(ref[step]).max()
            # one step, one framework against the other: float32 rounding of a single op (< 1e-6 of its max)
            assert np.abs(got[step] - ref[step]).max() <= 1e-5 * scale, (layer, step)
